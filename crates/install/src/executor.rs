//! The executor: what runs one node's steps (issue 12, item 5, split as nextest splits its
//! dispatcher from its executor). [`crate::runner`] dispatches (phases, concurrency,
//! containment, Ctrl-C); this module runs a group of one node's steps through the
//! [`crate::transport::Transport`]: the built-in steps (ship, versions, purge, the etcd
//! snapshot) and each boot.sh step detached on the node through the step runner, followed
//! by byte offset, reattached after a dropped connection, recorded in the run journal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hakube_assets::dir::AssetsDir;
use hakube_assets::layout;
use hakube_assets::manifest::{sha256_hex, Manifest, ManifestEntry};
use hakube_assets::secrets::Plaintexts;
use hakube_assets::steps;
use tokio::io::AsyncWriteExt;

use crate::events::{Event, StepOutcome};
use crate::plan::{Run, FETCH_SNAPSHOT, PURGE, SHIP, VERSIONS, VERSIONS_INSTALL};
use crate::runner::{open_log, unix_now, Settings, Shared};
use crate::transport::{NodeConnection, Stream, TransportError};
use crate::InstallError;

/// The result of one run.
enum RunResult {
    Ok,
    Skipped,
    Failed { exit_code: Option<i32>, message: String },
}

/// Opens the assets directory for reading (see [`AssetsDir`]).
fn open_assets(assets_dir: &Path) -> Result<AssetsDir, InstallError> {
    AssetsDir::open(assets_dir).map_err(|e| InstallError::Assets(e.to_string()))?.ok_or_else(|| {
        InstallError::Assets(format!("{} does not exist; run `hakube render` first", assets_dir.display()))
    })
}

/// A destination on the node and the sha256 (lowercase hex) of what was shipped there.
type ShippedSum = (String, String);

/// Builds the tar stream of `node`'s files at their destinations (directories 0700), and
/// the sha256 each destination must then have. Each file is read through [`AssetsDir`]
/// (never following a link) and must still match the manifest's sha256 when it is read;
/// an age ciphertext ships as its plaintext from `plaintexts` (mode 0600).
fn ship_archive(
    assets_dir: &Path,
    files: &[(&str, &ManifestEntry)],
    plaintexts: &Plaintexts,
) -> Result<(Vec<u8>, Vec<ShippedSum>), String> {
    let assets = open_assets(assets_dir).map_err(|e| e.to_string())?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (_, entry) in files {
        let dest = entry.destination.as_deref().unwrap_or_default();
        let mut p = Path::new(dest).parent();
        while let Some(d) = p.filter(|d| d.starts_with(layout::REMOTE_DIR)) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    let failed = |e: std::io::Error| format!("failed to build the archive: {e}");
    for dir in &dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o700);
        header.set_size(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        builder.append_data(&mut header, dir.strip_prefix("/").unwrap_or(dir), std::io::empty()).map_err(failed)?;
    }
    let mut sums = Vec::new();
    for (path, entry) in files {
        let mut bytes = assets.read(path).map_err(|e| e.to_string())?;
        if sha256_hex(&bytes) != entry.sha256 {
            return Err(format!(
                "{} changed since install checked it: it does not match the sha256 in manifest.json; run `hakube render`",
                assets.shown(path).display()
            ));
        }
        if entry.encrypted {
            bytes = plaintexts
                .0
                .get(*path)
                .cloned()
                .ok_or_else(|| format!("{} was not decrypted before the run", assets.shown(path).display()))?;
        }
        let dest = entry.destination.as_deref().unwrap_or_default();
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        // The manifest's mode, the layout's rule (validated): 0755 for a script, 0644 for
        // other public files, 0600 for a secret, and for the plaintext of a ciphertext.
        let mode =
            if entry.encrypted { 0o600 } else { hakube_assets::manifest::parse_mode(&entry.mode).unwrap_or(0o600) };
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        builder.append_data(&mut header, dest.trim_start_matches('/'), bytes.as_slice()).map_err(failed)?;
        sums.push((dest.to_string(), sha256_hex(&bytes)));
    }
    Ok((builder.into_inner().map_err(failed)?, sums))
}

async fn run_one(shared: &Shared, run: &Run) -> RunResult {
    let conn = match shared.connection(&run.host).await {
        Ok(c) => c,
        Err(e) => return RunResult::Failed { exit_code: None, message: e.to_string() },
    };
    let host_log = shared.log_path(&run.host);
    let log_line = |stream: Stream, line: &str| {
        let prefix = if stream == Stream::Stderr { "! " } else { "" };
        format!("{prefix}{line}\n")
    };
    let mut lines: Vec<String> = Vec::new();
    let mut skipped = false;
    let result = match run.step.as_str() {
        SHIP => {
            let files: Vec<(&str, &ManifestEntry)> = shared.manifest.files_for(&run.node).collect();
            let (archive, expected) =
                match ship_archive(&shared.settings.assets_dir, &files, &shared.settings.plaintexts) {
                    Ok(a) => a,
                    Err(message) => return RunResult::Failed { exit_code: None, message },
                };
            let code = conn
                .run(
                    "tar",
                    &["-x".into(), "-f".into(), "-".into(), "-C".into(), "/".into(), "--no-same-owner".into()],
                    Some(archive),
                    &mut |s, l| lines.push(log_line(s, l)),
                )
                .await;
            match code {
                Ok(Some(0)) => {
                    let dests: Vec<String> = files.iter().filter_map(|(_, e)| e.destination.clone()).collect();
                    let mut args = vec!["--".to_string()];
                    args.extend(dests.iter().cloned());
                    let mut sums = Vec::new();
                    match conn
                        .run("sha256sum", &args, None, &mut |s, l| {
                            if s == Stream::Stdout {
                                sums.push(l.to_string())
                            } else {
                                lines.push(log_line(s, l))
                            }
                        })
                        .await
                    {
                        Ok(Some(0)) => verify_sums(&expected, &sums),
                        Ok(code) => Err((code, "sha256sum failed on the node".to_string())),
                        Err(e) => Err((None, e.to_string())),
                    }
                }
                // A minimal image may lack tar (Rocky's minimal install does); the boot
                // scripts install what they need, but they arrive through it.
                Ok(code) if code == Some(127) || lines.iter().any(|l| l.contains("tar: command not found") || l.contains("tar: not found")) => Err((
                    code,
                    "unpacking the files failed: the node has no tar, which hakube ships files with; install it (apt-get install tar, dnf install -y tar) and run again".to_string(),
                )),
                Ok(code) => Err((code, "unpacking the files failed".to_string())),
                Err(e) => Err((None, e.to_string())),
            }
        }
        VERSIONS => {
            let mut out = Vec::new();
            match conn
                .run("sh", &["-c".into(), VERSION_PROBE.into()], None, &mut |s, l| match s {
                    Stream::Stdout => out.push(l.to_string()),
                    Stream::Stderr => lines.push(log_line(s, l)),
                })
                .await
            {
                Ok(Some(0)) => {
                    lines.extend(out.iter().map(|l| format!("{l}\n")));
                    let (expected, check) = (run.args.first().cloned().unwrap_or_default(), run.args.get(1).cloned());
                    judge_versions(&run.node, &out, &expected, check.as_deref() == Some(VERSIONS_INSTALL)).map_err(
                        |m| {
                            if let Ok(mut refused) = shared.refused.lock() {
                                refused.insert(run.node.clone());
                            }
                            (None, m)
                        },
                    )
                }
                Ok(code) => Err((code, "reading the Kubernetes versions failed".to_string())),
                Err(e) => Err((None, e.to_string())),
            }
        }
        FETCH_SNAPSHOT => match conn.read_file(layout::REMOTE_ETCD_SNAPSHOT, MAX_SNAPSHOT_BYTES).await {
            Ok(bytes) => match save_snapshot(&shared.settings, &shared.manifest, &bytes) {
                Ok(path) => {
                    lines.push(format!("etcd snapshot ({} bytes) saved to {}\n", bytes.len(), path.display()));
                    Ok(())
                }
                Err(message) => Err((None, message)),
            },
            Err(e) => Err((None, e.to_string())),
        },
        PURGE => match conn
            .run(
                "rm",
                &[
                    "-rf".into(),
                    "--".into(),
                    layout::REMOTE_DIR.into(),
                    steps::STATE_ROOT.into(),
                    steps::STEP_LOG_DIR.into(),
                ],
                None,
                &mut |s, l| lines.push(log_line(s, l)),
            )
            .await
        {
            Ok(Some(0)) => Ok(()),
            Ok(code) => Err((code, "removing hakube's files failed".to_string())),
            Err(e) => Err((None, e.to_string())),
        },
        _ => {
            // Lines go to the log file as they arrive; nothing is kept in memory.
            let file = match open_log(&host_log).await {
                Ok(file) => file,
                Err(e) => {
                    let message = format!("cannot write the log file {}: {e}", host_log.display());
                    return RunResult::Failed { exit_code: None, message };
                }
            };
            drop(conn);
            match run_detached(shared, run, file).await {
                Ok(was_skipped) => {
                    skipped = was_skipped;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    let logged = if lines.is_empty() { Ok(()) } else { shared.append_log(&run.host, &lines.concat()).await };
    let result = match (result, logged) {
        (Ok(()), Err(message)) => Err((None, message)),
        (result, _) => result,
    };
    match result {
        Ok(()) if skipped => RunResult::Skipped,
        Ok(()) => RunResult::Ok,
        Err((exit_code, message)) => RunResult::Failed { exit_code, message },
    }
}

/// How long a step's output may stay unreachable (the connection dropped, the node's link
/// down, a laptop asleep) before hakube stops waiting for it; the step goes on running on
/// the node and the next `hakube install` attaches to it again.
const REATTACH_BUDGET: Duration = Duration::from_secs(600);

/// A detached step's failure: the exit code (when known) and what happened.
type StepError = (Option<i32>, String);

/// Runs one boot.sh step detached on its node (issue 12, item 1), through the step runner
/// (`step.sh`, [`steps::STEP_SCRIPT`]): `step.sh start` makes it a transient systemd unit
/// named after the run and the step ([`steps::unit_name`]), or attaches to the unit of an
/// earlier run still running the same step ([`steps::Started::Attached`]: nothing new
/// starts; its log goes on from the offset the run journal has). Then [`follow_unit`]. The
/// exit code is the one boot.sh reported in its `::hakube:: step=NAME status=failed exit=N`
/// marker ([`steps::parse_marker`]), else the unit's (`step.sh status`). Whether the step
/// was skipped (already done) is the marker's.
async fn run_detached(shared: &Shared, run: &Run, log: tokio::fs::File) -> Result<bool, StepError> {
    run_detached_attempt(shared, run, log, 1).await
}

/// How many times a step whose process never started (the service manager failed to spawn
/// it, or its start was lost with the connection) is started.
const START_ATTEMPTS: u32 = 3;

/// Whether exit code `code` is the service manager's own, for a process that failed before
/// it ran the command (systemd.exec(5), "Process Exit Codes": 200 to 243, e.g. 219 `CGROUP`,
/// seen once in the lab on a loaded machine), rather than boot.sh's.
fn spawn_failure(code: i32) -> bool {
    (200..=243).contains(&code)
}

/// [`run_detached`], attempt `attempt` of [`START_ATTEMPTS`].
async fn run_detached_attempt(
    shared: &Shared,
    run: &Run,
    mut log: tokio::fs::File,
    attempt: u32,
) -> Result<bool, StepError> {
    let key = steps::step_key(&run.step, &run.args);
    let unit = steps::unit_name(&shared.run_id, &run.host, &key);
    let mut command = vec!["run".to_string(), unit.clone(), key, run.step.clone()];
    command.extend(run.args.iter().cloned());
    let entry = crate::journal::Entry { node: run.node.clone(), step: run.step.clone(), offset: 0 };
    shared.journal.record(&run.host, &unit, entry.clone()).map_err(|e| (None, e))?;
    // One command when nothing goes wrong: start, follow from byte 0, status, clear.
    let conn = shared.connection(&run.host).await.map_err(|e| (None, e.to_string()))?;
    let mut tracker = LogTracker::default();
    let (streamed, written) = stream_into(shared, &*conn, &run.host, &unit, &command, &mut tracker, &mut log).await;
    drop(conn);
    written?;
    let (code, errors) = streamed.map_err(|e| (None, e.to_string()))?;
    let said =
        |word: &str| errors.lines().find_map(|l| l.strip_prefix("step.sh: unit ")?.strip_prefix(word).map(str::trim));
    let (marker, status, followed) = match (said("attached "), said("started "), said("exited ")) {
        (Some(earlier), _, _) => {
            shared.journal.remove(&run.host, &unit).map_err(|e| (None, e))?;
            let earlier = earlier.to_string();
            let offset = shared.journal.offset(&run.host, &earlier).unwrap_or(0);
            let line = format!(
                "==> attached to {earlier}: boot.sh {} of an earlier run still runs on the node; its log goes on from byte {offset}\n",
                run.step
            );
            log.write_all(line.as_bytes()).await.map_err(|e| (None, format!("cannot write the log file: {e}")))?;
            shared
                .journal
                .record(&run.host, &earlier, crate::journal::Entry { offset, ..entry })
                .map_err(|e| (None, e))?;
            let (marker, status) = follow_unit(shared, &run.host, &earlier, offset, &mut log)
                .await
                .map_err(|e| left_running(run, &earlier, e))?;
            (marker, status, earlier)
        }
        (None, Some(_), Some(exited)) if code == Some(0) => {
            log.flush().await.map_err(|e| (None, format!("cannot write the log file: {e}")))?;
            shared.journal.remove(&run.host, &unit).map_err(|e| (None, e))?;
            (tracker.marker, steps::parse_status(&format!("exited {exited}")), unit)
        }
        // The step runner refused (a usage error, boot.sh missing): nothing started.
        (None, None, _) if matches!(code, Some(1..=2)) => {
            shared.journal.remove(&run.host, &unit).map_err(|e| (None, e))?;
            return Err((code, format!("the step runner could not start boot.sh {}: {}", run.step, errors.trim())));
        }
        // The connection dropped somewhere between starting and the end: reattach to our
        // unit from the byte we have (follow finds no log when it never started: then start
        // it again, once).
        _ => match reattach(shared, &run.host, &unit, tracker.offset, &mut log).await {
            Ok((marker, status)) => (tracker.marker.clone().or(marker), status, unit),
            Err(e) if e.1.starts_with(NO_LOG) && tracker.offset == 0 && attempt < START_ATTEMPTS => {
                shared.journal.remove(&run.host, &unit).map_err(|e| (None, e))?;
                return Box::pin(run_detached_attempt(shared, run, log, attempt + 1)).await;
            }
            Err(e) => return Err(left_running(run, &unit, e)),
        },
    };
    match verdict(&run.step, &followed, marker, status) {
        // Nothing of boot.sh ran (no byte of log, the service manager's exit code): start it again.
        Err((Some(code), _)) if spawn_failure(code) && tracker.offset == 0 && attempt < START_ATTEMPTS => {
            let line = format!(
                "==> the service manager could not start boot.sh {} (exit code {code}, systemd.exec(5)); starting it again\n",
                run.step
            );
            log.write_all(line.as_bytes()).await.map_err(|e| (None, format!("cannot write the log file: {e}")))?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Box::pin(run_detached_attempt(shared, run, log, attempt + 1)).await
        }
        verdict => verdict,
    }
}

/// After `step.sh run`'s stream was cut: says so, marks the connection to be checked, and
/// follows `unit` on from `offset` ([`follow_unit`]).
async fn reattach(
    shared: &Shared,
    host: &str,
    unit: &str,
    offset: u64,
    log: &mut tokio::fs::File,
) -> Result<(Option<steps::Marker>, Option<steps::UnitStatus>), StepError> {
    let line = format!("lost the connection while following {unit} at byte {offset}; reattaching");
    let _ = shared.events.send(Event::Connecting { node: host.to_string(), attempt: 0, last_error: Some(line) });
    shared.suspect(host).await;
    follow_unit(shared, host, unit, offset, log).await
}

/// A step's failure to follow it to its end, saying it may still run and how to attach.
fn left_running(run: &Run, unit: &str, (code, e): StepError) -> StepError {
    (
        code,
        format!(
            "{e}; boot.sh {} may still be running on the node as {unit}, and `hakube install` again attaches to it",
            run.step
        ),
    )
}

/// How a step ended, from the last marker line of its log and its unit's status: boot.sh's
/// `failed exit=N` first; else the unit's exit status; a unit already cleared (status
/// `unknown`, after `step.sh run` cleared it) by its log's `done` or `skipped` marker.
/// `Ok(true)` when boot.sh skipped it (already done).
fn verdict(
    step: &str,
    unit: &str,
    marker: Option<steps::Marker>,
    status: Option<steps::UnitStatus>,
) -> Result<bool, StepError> {
    let skipped = matches!(marker, Some(steps::Marker::Skipped(_)));
    match (&marker, status) {
        (Some(steps::Marker::Failed(_, code)), _) => Err((Some(*code), format!("boot.sh {step} failed"))),
        (_, Some(steps::UnitStatus::Exited(0))) => Ok(skipped),
        (_, Some(steps::UnitStatus::Exited(code))) => Err((Some(code), format!("boot.sh {step} failed"))),
        (Some(steps::Marker::Done(_) | steps::Marker::Skipped(_)), Some(steps::UnitStatus::Unknown)) => Ok(skipped),
        (_, other) => Err((None, format!("the step runner reported {other:?} for {unit} after its log ended"))),
    }
}

/// What [`stream_into`] has seen of a unit's log: the bytes written, the last marker.
#[derive(Default)]
struct LogTracker {
    offset: u64,
    pending: Vec<u8>,
    marker: Option<steps::Marker>,
}

/// The start of the error [`follow_unit`] gives when the node has no log of the unit.
const NO_LOG: &str = "the node has no log of";

/// Runs `command` (a step runner call) on `conn`, its standard output (the unit's log from
/// `tracker.offset`) written to `log` as it arrives, `tracker` advanced (offset, last marker)
/// and the journal's offset of `unit` after each chunk. The command's result, and whether
/// writing worked.
async fn stream_into(
    shared: &Shared,
    conn: &dyn NodeConnection,
    host: &str,
    unit: &str,
    command: &[String],
    tracker: &mut LogTracker,
    log: &mut tokio::fs::File,
) -> (Result<(Option<i32>, String), TransportError>, Result<(), StepError>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    // The sender moves into the stream's future, so the writer below ends when it does.
    let streamed = async move {
        let mut sink = move |bytes: &[u8]| {
            let _ = tx.send(bytes.to_vec());
        };
        conn.stream(steps::STEP_SCRIPT, command, &mut sink).await
    };
    let writer = async {
        while let Some(bytes) = rx.recv().await {
            tracker.pending.extend_from_slice(&bytes);
            while let Some(at) = tracker.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = tracker.pending.drain(..=at).collect();
                if let Some(m) = steps::parse_marker(&String::from_utf8_lossy(&line)) {
                    tracker.marker = Some(m);
                }
            }
            log.write_all(&bytes).await.map_err(|e| (None, format!("cannot write the log file: {e}")))?;
            tracker.offset += bytes.len() as u64;
            shared.journal.advance(host, unit, tracker.offset).map_err(|e| (None, e))?;
        }
        Ok::<(), StepError>(())
    };
    tokio::join!(streamed, writer)
}

/// Follows `unit` on `host` to its end: `step.sh follow UNIT OFFSET` streams its log from the
/// byte hakube has into `log` (`LOG_DIR/<node>.log`), the journal's offset advanced after
/// each chunk is written; when the connection drops, hakube reconnects with backoff (for up
/// to [`REATTACH_BUDGET`]) and follows on from the same offset, so the log is complete and
/// the step runs once. Then `step.sh status` and `step.sh clear`, and the journal forgets
/// it. The last marker line of the log and the unit's status.
async fn follow_unit(
    shared: &Shared,
    host: &str,
    unit: &str,
    offset: u64,
    log: &mut tokio::fs::File,
) -> Result<(Option<steps::Marker>, Option<steps::UnitStatus>), StepError> {
    let mut tracker = LogTracker { offset, ..LogTracker::default() };
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let conn = match shared.connection(host).await {
            Ok(conn) => conn,
            Err(e) if e.is_retryable() && unreachable_since.is_none_or(|t| t.elapsed() < REATTACH_BUDGET) => {
                unreachable_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err((None, e.to_string())),
        };
        let follow = ["follow".to_string(), unit.to_string(), tracker.offset.to_string()];
        let (streamed, written) = stream_into(shared, &*conn, host, unit, &follow, &mut tracker, log).await;
        drop(conn);
        written?;
        match streamed {
            Ok((Some(0), _)) => break,
            Ok((Some(3), errors)) => return Err((None, format!("{NO_LOG} {unit}: {errors}"))),
            Ok((Some(2), errors)) => return Err((None, format!("the step runner refused to follow {unit}: {errors}"))),
            // The connection dropped (or the follow was cut): reattach from the same offset.
            _ => {
                shared.suspect(host).await;
                unreachable_since.get_or_insert_with(Instant::now);
                let line =
                    format!("lost the connection while following {unit} at byte {}; reattaching", tracker.offset);
                let _ = shared.events.send(Event::Connecting {
                    node: host.to_string(),
                    attempt: 0,
                    last_error: Some(line),
                });
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    log.flush().await.map_err(|e| (None, format!("cannot write the log file: {e}")))?;
    // The unit's own exit status, and then its state is forgotten (the log stays on the node).
    let conn = shared.connection(host).await.map_err(|e| (None, e.to_string()))?;
    let status = unit_status(&*conn, unit).await;
    if matches!(status, Some(steps::UnitStatus::Exited(_) | steps::UnitStatus::Unknown)) {
        if matches!(status, Some(steps::UnitStatus::Exited(_))) {
            let _ = conn.run(steps::STEP_SCRIPT, &["clear".to_string(), unit.to_string()], None, &mut |_, _| {}).await;
        }
        shared.journal.remove(host, unit).map_err(|e| (None, e))?;
    }
    Ok((tracker.marker, status))
}

/// What `step.sh status UNIT` says of `unit` (`None` when it could not be asked or said
/// nothing the protocol knows).
async fn unit_status(conn: &dyn NodeConnection, unit: &str) -> Option<steps::UnitStatus> {
    let mut status = None;
    let _ = conn
        .run(steps::STEP_SCRIPT, &["status".to_string(), unit.to_string()], None, &mut |s, l| {
            if s == Stream::Stdout {
                status = steps::parse_status(l);
            }
        })
        .await;
    status
}

/// The steps an earlier run left in the journal on the nodes of this run (issue 12, item 2):
/// one still running stays in the journal (its step, when the plan reaches it, attaches to it
/// and goes on from the journal's offset); one that ended while hakube was away has the rest
/// of its log appended to its node's log and is reported with its exit code
/// ([`Event::EndedWhileAway`]). A node that cannot be reached keeps its entries.
pub(crate) async fn settle_left_steps(shared: &Shared, involved: &[String]) -> Result<(), InstallError> {
    for (host, units) in shared.journal.left() {
        if !involved.contains(&host) {
            continue;
        }
        let Ok(conn) = shared.connection(&host).await else { continue };
        for (unit, entry) in units {
            let status = unit_status(&*conn, &unit).await;
            // Running: the plan attaches to it. Ended, or cleared (the log's markers tell).
            if matches!(status, Some(steps::UnitStatus::Running) | None) {
                continue;
            }
            let path = shared.log_path(&host);
            let mut log = open_log(&path)
                .await
                .map_err(|e| InstallError::Logs(format!("cannot write the log file {}: {e}", path.display())))?;
            let line = format!("==> {unit} (boot.sh {} of an earlier run) ended while hakube was away; the rest of its log from byte {}:\n", entry.step, entry.offset);
            let _ = log.write_all(line.as_bytes()).await;
            let exit_code = match follow_unit(shared, &host, &unit, entry.offset, &mut log).await {
                Ok((marker, status)) => match verdict(&entry.step, &unit, marker, status) {
                    Ok(_) => Some(0),
                    Err((code, _)) => code,
                },
                Err((_, e)) if e.starts_with(NO_LOG) => {
                    shared.journal.remove(&host, &unit).map_err(InstallError::Logs)?;
                    continue;
                }
                Err(_) => None,
            };
            let _ = shared.events.send(Event::EndedWhileAway {
                node: entry.node.clone(),
                step: entry.step.clone(),
                exit_code,
                log: path,
            });
        }
    }
    Ok(())
}

/// What [`VERSIONS`] runs on a node (`sh -c`, as root): `kubelet vX.Y.Z` when a kubelet is
/// installed, `joined` when the node is in a cluster (kubeadm wrote its kubelet.conf), and
/// `apiserver vX.Y.Z` on a master whose API server static Pod exists (its image tag, which
/// kubeadm init and upgrade write). Reads only.
pub const VERSION_PROBE: &str = r#"if v=$(kubelet --version 2>/dev/null); then echo "kubelet ${v#Kubernetes }"; fi
if [ -f /etc/kubernetes/kubelet.conf ]; then echo joined; fi
f=/etc/kubernetes/manifests/kube-apiserver.yaml
if [ -f "$f" ]; then sed -n 's/^ *image: .*kube-apiserver:\(v[^ ]*\)$/apiserver /p' "$f"; fi"#;

/// Judges what [`VERSION_PROBE`] printed on `node` against the manifest's version
/// `expected`: a kubelet or API server newer than it is a downgrade, refused always; an API
/// server at another version means the cluster runs another version, which only `hakube
/// upgrade` changes (one minor at a time, control plane first: the version skew policy); and
/// for an install (`install`), a node in a cluster whose kubelet runs another version is
/// refused the same way. A node without a kubelet, or not in a cluster, passes.
///
/// # Errors
///
/// The sentence naming the node, both versions and `hakube upgrade`.
pub fn judge_versions(node: &str, probe: &[String], expected: &str, install: bool) -> Result<(), String> {
    use hakube_cluster::Version;
    let Some(want) = Version::parse(expected) else { return Ok(()) };
    let field = |key: &str| probe.iter().find_map(|l| l.strip_prefix(key)).and_then(|v| Version::parse(v.trim()));
    let (kubelet, apiserver) = (field("kubelet "), field("apiserver "));
    let joined = probe.iter().any(|l| l == "joined");
    for (what, found) in [("kubelet", kubelet), ("API server", apiserver)] {
        if let Some(found) = found.filter(|f| *f > want) {
            return Err(format!(
                "{node}'s {what} runs Kubernetes {found}, newer than kubernetesVersion {want}: Kubernetes does not support a downgrade and hakube never does one (set kubernetesVersion to {found} and render again)"
            ));
        }
    }
    let upgrade = "`hakube upgrade` changes a running cluster's version, one minor at a time, control plane first; nothing was changed";
    if let Some(found) = apiserver.filter(|a| *a != want) {
        return Err(format!(
            "{node}'s API server runs Kubernetes {found} and kubernetesVersion is {want}: hakube install never changes the version of a running cluster; {upgrade}"
        ));
    }
    if let (true, true, Some(found)) = (install, joined, kubelet.filter(|k| *k != want)) {
        return Err(format!(
            "{node} runs Kubernetes {found} in a cluster and kubernetesVersion is {want}: hakube install never changes a running node's version (its kubelet would be upgraded before the API servers); {upgrade}"
        ));
    }
    Ok(())
}

/// The largest etcd snapshot [`FETCH_SNAPSHOT`] copies: etcd's suggested maximum storage
/// quota (8 GiB, etcd docs "Space quota").
const MAX_SNAPSHOT_BYTES: u64 = 8 << 30;

/// Writes an etcd snapshot into `settings.snapshot_dir` (created 0700): mode 0600, encrypted
/// to the manifest's recipients when it has any; its path.
fn save_snapshot(settings: &Settings, manifest: &Manifest, bytes: &[u8]) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = settings.snapshot_dir.as_ref().ok_or("no directory for etcd snapshots was given")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
    let name = format!("{}-etcd-{}.db", manifest.cluster_name, unix_now());
    let (path, data) = if manifest.recipients.is_empty() {
        (dir.join(&name), bytes.to_vec())
    } else {
        let (recipients, _) =
            hakube_assets::secrets::parse_recipients(&manifest.recipients).map_err(|e| e.to_string())?;
        let sealed = hakube_assets::secrets::encrypt(bytes, &recipients, &name).map_err(|e| e.to_string())?;
        (dir.join(format!("{name}{}", layout::AGE_SUFFIX)), sealed)
    };
    hakube_assets::dir::write_atomic(&path, 0o600, &data).map_err(|e| e.to_string())?;
    Ok(path)
}

fn verify_sums(expected: &[ShippedSum], sums: &[String]) -> Result<(), (Option<i32>, String)> {
    let on_node: HashMap<&str, &str> =
        sums.iter().filter_map(|l| l.split_once("  ")).map(|(sum, path)| (path, sum)).collect();
    for (dest, sum) in expected {
        if on_node.get(dest.as_str()) != Some(&sum.as_str()) {
            return Err((None, format!("{dest} on the node does not match what was shipped (sha256)")));
        }
    }
    Ok(())
}

pub(crate) type GroupResult = (String, Result<(), (String, Option<i32>, String)>);

/// Runs one node's runs of a phase in order, stopping at the first failure.
pub(crate) async fn run_group(shared: &Shared, runs: &[Run]) -> GroupResult {
    let node = runs[0].node.clone();
    for run in runs {
        if shared.no_new_steps.is_cancelled() {
            break;
        }
        let _ = shared.events.send(Event::StepStarted { node: node.clone(), step: run.step.clone() });
        if let Ok(mut r) = shared.running.lock() {
            r.insert(node.clone(), run.step.clone());
        }
        let on = if run.host == run.node { String::new() } else { format!(" for {}", run.node) };
        let start = Instant::now();
        let result = match shared
            .append_log(&run.host, &format!("==> step {}{on} started at unix time {}\n", run.step, unix_now()))
            .await
        {
            Ok(()) => run_one(shared, run).await,
            Err(message) => RunResult::Failed { exit_code: None, message },
        };
        let elapsed = start.elapsed();
        if let Ok(mut r) = shared.running.lock() {
            r.remove(&node);
        }
        if let Ok(mut e) = shared.elapsed.lock() {
            *e.entry(node.clone()).or_default() += elapsed;
        }
        let result = match result {
            RunResult::Ok | RunResult::Skipped => {
                let word = if matches!(result, RunResult::Skipped) { "already done, skipped" } else { "finished" };
                let line = format!("==> step {} {word} after {:.1}s\n", run.step, elapsed.as_secs_f64());
                match shared.append_log(&run.host, &line).await {
                    Ok(()) => result,
                    Err(message) => RunResult::Failed { exit_code: None, message },
                }
            }
            failed => failed,
        };
        match result {
            RunResult::Ok | RunResult::Skipped => {
                let outcome =
                    if matches!(result, RunResult::Skipped) { StepOutcome::Skipped } else { StepOutcome::Done };
                let _ = shared.events.send(Event::StepFinished {
                    node: node.clone(),
                    step: run.step.clone(),
                    outcome,
                    elapsed,
                });
            }
            RunResult::Failed { exit_code, mut message } => {
                if let Err(e) =
                    shared.append_log(&run.host, &format!("==> step {} FAILED: {message}\n", run.step)).await
                {
                    if !message.contains(&e) {
                        message = format!("{message}; {e}");
                    }
                }
                let _ = shared.events.send(Event::StepFinished {
                    node: node.clone(),
                    step: run.step.clone(),
                    outcome: StepOutcome::Failed(exit_code),
                    elapsed,
                });
                return (node, Err((run.step.clone(), exit_code, message)));
            }
        }
    }
    (node, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: &[u8]) -> ManifestEntry {
        ManifestEntry {
            sha256: sha256_hex(bytes),
            mode: "0644".into(),
            secret: false,
            encrypted: false,
            nodes: vec!["w0".into()],
            destination: Some("/etc/hakube/kubeadm.yaml".into()),
        }
    }

    /// Issue 11, item 3: a file of the assets replaced by a link to a file with the same
    /// bytes elsewhere (so its sha256 still matches) is refused by name, not shipped.
    #[test]
    fn a_linked_asset_is_refused_not_shipped() {
        let temp = tempfile::tempdir().unwrap();
        let assets = temp.path().join("assets");
        std::fs::create_dir_all(assets.join("nodes")).unwrap();
        std::fs::create_dir_all(temp.path().join("elsewhere")).unwrap();
        std::fs::write(temp.path().join("elsewhere/kubeadm.yaml"), b"kind: x\n").unwrap();
        let e = entry(b"kind: x\n");
        let files = [("nodes/w0/kubeadm.yaml", &e)];
        std::os::unix::fs::symlink("../elsewhere", assets.join("nodes/w0")).unwrap();
        let err = ship_archive(&assets, &files, &Plaintexts::default()).expect_err("shipped through a link");
        assert!(err.contains(&format!("{} is a symbolic link", assets.join("nodes/w0").display())), "{err}");
        std::fs::remove_file(assets.join("nodes/w0")).unwrap();
        std::fs::create_dir(assets.join("nodes/w0")).unwrap();
        std::os::unix::fs::symlink("../../elsewhere/kubeadm.yaml", assets.join("nodes/w0/kubeadm.yaml")).unwrap();
        let err = ship_archive(&assets, &files, &Plaintexts::default()).expect_err("shipped a linked file");
        assert!(err.contains("nodes/w0/kubeadm.yaml is a symbolic link"), "{err}");
        std::fs::remove_file(assets.join("nodes/w0/kubeadm.yaml")).unwrap();
        std::fs::write(assets.join("nodes/w0/kubeadm.yaml"), b"kind: x\n").unwrap();
        assert!(ship_archive(&assets, &files, &Plaintexts::default()).is_ok());
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    fn probe(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn versions_are_judged_by_the_skew_policy() {
        let fresh = probe(&[]);
        assert!(judge_versions("w0", &fresh, "1.36.4", true).is_ok(), "a fresh node");
        let same = probe(&["kubelet v1.36.4", "joined", "apiserver v1.36.4"]);
        assert!(judge_versions("m0", &same, "1.36.4", true).is_ok());
        let older = probe(&["kubelet v1.35.4", "joined", "apiserver v1.35.4"]);
        let err = judge_versions("m0", &older, "1.36.4", true).unwrap_err();
        assert!(err.contains("m0's API server runs Kubernetes 1.35.4") && err.contains("hakube upgrade"), "{err}");
        let worker = probe(&["kubelet v1.35.4", "joined"]);
        assert!(judge_versions("w0", &worker, "1.36.4", true)
            .unwrap_err()
            .contains("w0 runs Kubernetes 1.35.4 in a cluster"));
        assert!(judge_versions("w0", &worker, "1.36.4", false).is_ok(), "a node about to be reset");
        let not_joined = probe(&["kubelet v1.35.4"]);
        assert!(judge_versions("w0", &not_joined, "1.36.4", true).is_ok(), "packages only, no cluster");
        let newer = probe(&["kubelet v1.36.4"]);
        for install in [true, false] {
            let err = judge_versions("w0", &newer, "1.35.4", install).unwrap_err();
            assert!(err.contains("downgrade"), "{err}");
        }
    }
}
