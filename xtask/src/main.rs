//! Project automation, run as `cargo xtask <task>` (alias in .cargo/config.toml).
//!
//! - `codegen`: regenerate committed generated files (schema/cluster.schema.json).
//! - `ci`: install the Debian packages the tests need, then run the whole test suite and
//!   each fuzz target for 60 s (cargo-fuzz, installed when missing). README.md's test
//!   command and .ci/run both call exactly this.
//! - `fuzz [SECONDS]`: each fuzz target of fuzz/ for SECONDS (60), as `ci` runs them.
//! - `bench install`: on a 50-node lab, a no-op install (every boot.sh step `true`) against
//!   the floor of plain SSH (a round of new connections plus a round of commands over open
//!   ones per round of the plan; target ≤ 1.3x), the SSH processes per step, and a full
//!   install (wall time, peak memory).
//! - `bench render`: `hakube render` (release build) of 10^3, 10^4 and 10^5 nodes and
//!   `hakube validate` of as many nodes with an error each: wall time and peak memory, and
//!   a failure when either grows faster than linearly; the re-render of 1000 nodes.
//!   Target: under 1 s each for 1000 nodes on a 2-core machine.
//! - `lab up|exec|link|sshd|reboot|fault|status|down`: the local test lab (crates/lab; see
//!   xtask/src/lab.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod bench_install;
mod lab;

/// Debian packages the test suite uses, with what for.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("shellcheck", "lints every rendered boot script and provisioning script"),
    ("etcd-server", "a real 3-member etcd cluster for the external-topology certificates"),
    ("etcd-client", "etcdctl, the client of that cluster"),
    ("ruby", "`ruby -c` on the Vagrantfile"),
    ("openssh-client", "ssh-keygen checks the rendered SSH keys; install's transport"),
    ("openssh-server", "a real sshd on 127.0.0.1 for the transport tests"),
    ("iproute2", "network namespaces and the bridge of the lab"),
    ("systemd-container", "systemd-nspawn: every lab node is a booted Debian container"),
    ("debootstrap", "builds the lab's Debian 12 and 13 images from this machine's Debian mirror"),
    ("python3", "the lab mirror's HTTP server (http.server)"),
    ("gnupg", "signs the lab mirror's apt repositories"),
    ("dpkg-dev", "dpkg-scanpackages for the lab mirror's package indexes"),
    ("apt-utils", "apt-ftparchive for the lab mirror's Release files"),
    ("openssl", "independent recomputation of the discovery token CA cert hash"),
    ("age", "the age CLI decrypts the encrypted assets, as users' own tools would"),
    ("git", "assets committed, cloned and grepped for secrets"),
    ("g++", "builds libFuzzer for the fuzz targets (fuzz/)"),
];

/// The fuzz targets of fuzz/ (cargo-fuzz), each run for [`FUZZ_SECONDS`] by `ci`.
const FUZZ_TARGETS: &[&str] = &["definition", "manifest"];

/// How long `ci` fuzzes each target.
const FUZZ_SECONDS: u32 = 60;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    match args.first().map(String::as_str) {
        Some("codegen") => codegen(&root),
        Some("ci") => ci(&root),
        Some("lab") => lab::run(&root, &args[1..]),
        Some("fuzz") => {
            let seconds = match args.get(1) {
                Some(text) => text.parse().with_context(|| format!("{text:?} is not a number of seconds"))?,
                None => FUZZ_SECONDS,
            };
            for target in FUZZ_TARGETS {
                fuzz(&root, target, seconds).with_context(|| format!("fuzz target {target}"))?;
            }
            Ok(())
        }
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("render") => bench_render(&root),
            Some("install") => bench_install::run(&root),
            _ => bail!("usage: cargo xtask bench render|install"),
        },
        _ => {
            eprintln!("usage: cargo xtask <codegen|ci|fuzz|bench render|lab up|down|status>\n\n  codegen       regenerate schema/cluster.schema.json\n  ci            install test dependencies (Debian), then run every test\n  fuzz [SECS]   run each fuzz target (fuzz/) for SECS seconds (60)\n  bench render  time and memory of render and validate at 10^3, 10^4, 10^5 nodes\n  bench install a no-op and a full install on a 50-node lab against plain ssh's floor\n  lab           the local test lab: up [--masters N] [--workers M] [--distro debian12|debian13] [--assets DIR] [--sudo-user], exec, link, sshd, reboot, fault, status, down");
            bail!("unknown or missing task")
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn codegen(root: &Path) -> Result<()> {
    let path = root.join("schema/cluster.schema.json");
    let schema = hakube_cluster::schema();
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old == schema {
        println!("{}: up to date", path.display());
    } else {
        std::fs::write(&path, schema).with_context(|| format!("failed to write {}", path.display()))?;
        println!("{}: regenerated", path.display());
    }
    Ok(())
}

fn ci(root: &Path) -> Result<()> {
    install_packages()?;
    // cargo test's own output goes through as it comes; its per-binary results are added up
    // into one closing line, so the last line says how many tests ran in all.
    let mut child = Command::new("cargo")
        .args(["test", "--workspace", "--locked", "--no-fail-fast"])
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("failed to start cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse::<u64>().ok())
            };
            passed += count("passed").unwrap_or(0);
            failed += count("failed").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    // Each fuzz target counts as one test: passed when it ran its time without a crash.
    for target in FUZZ_TARGETS {
        match fuzz(root, target, FUZZ_SECONDS) {
            Ok(()) => {
                println!("fuzz {target}: no crash in {FUZZ_SECONDS} s");
                passed += 1;
            }
            Err(e) => {
                println!("fuzz {target}: FAILED: {e:#}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    if failed > 0 {
        bail!("{failed} fuzz target(s) failed; the input that crashed is under fuzz/artifacts/");
    }
    Ok(())
}

/// Runs fuzz target `target` (fuzz/fuzz_targets/) for `seconds` with cargo-fuzz, installing
/// cargo-fuzz from crates.io first when it is missing. cargo-fuzz needs nightly features
/// (`-Z` flags), which `RUSTC_BOOTSTRAP=1` allows on the stable toolchain; no sanitizer
/// (the targets hunt panics, and the build stays short). New inputs go to a corpus under
/// the target directory, seeded from fuzz/seeds/<target>/; a crash is saved under
/// fuzz/artifacts/<target>/ and fails the run.
fn fuzz(root: &Path, target: &str, seconds: u32) -> Result<()> {
    let have = Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !have {
        println!("xtask ci: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let corpus = target_dir(root).join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    run(Command::new("cargo")
        .args(["fuzz", "run", target, "--sanitizer", "none"])
        .arg(&corpus)
        .arg(root.join("fuzz/seeds").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root))
}

/// Installs the missing [`TEST_PACKAGES`] with apt-get (root on Debian/Ubuntu), so a
/// fresh Debian 12 machine runs the whole suite. Elsewhere it only says what is missing.
fn install_packages() -> Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !Command::new("dpkg").args(["-s", p]).output().is_ok_and(|o| o.status.success()))
        .collect();
    if missing.is_empty() {
        println!("xtask ci: test packages present");
        return Ok(());
    }
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root || Command::new("apt-get").arg("--version").output().is_err() {
        for (p, why) in TEST_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
            eprintln!("xtask ci: missing Debian package {p} ({why})");
        }
        bail!("install the packages above (as root: apt-get install {}), then run again", missing.join(" "));
    }
    println!("xtask ci: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The address of node `i` of a big definition: 172.16.1.0 onwards in 172.16.0.0/12 (a
/// million addresses, clear of the default pod and service networks under 10.0.0.0/8).
fn big_address(i: usize) -> String {
    let n = i + 256;
    format!("172.{}.{}.{}", 16 + n / 65536, (n / 256) % 256, n % 256)
}

/// A definition with `masters` masters and `workers` workers on 172.16.0.0/12.
fn big_definition(masters: usize, workers: usize) -> serde_json::Value {
    let node = |name: String, i: usize| serde_json::json!({ "nodeName": name, "privateIP": big_address(i) });
    serde_json::json!({
        "clusterName": "bench",
        "masterLoadBalancerAddress": "172.16.0.1",
        "nodeNetworkCIDR": "172.16.0.0/12",
        "masters": (0..masters).map(|i| node(format!("master{i}"), i)).collect::<Vec<_>>(),
        "workers": (0..workers).map(|i| node(format!("worker{i}"), masters + i)).collect::<Vec<_>>(),
    })
}

/// A valid definition of 3 masters whose `bad` workers each carry one error (a privateIP
/// that is no IP address): `hakube validate` reports `bad` diagnostics.
fn bad_definition(bad: usize) -> serde_json::Value {
    let mut def = big_definition(3, 0);
    def["workers"] = (0..bad)
        .map(|i| serde_json::json!({ "nodeName": format!("worker{i}"), "privateIP": format!("no-ip-{i}") }))
        .collect::<Vec<_>>()
        .into();
    def
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR`, else `target/` of the workspace.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

/// Wall time, CPU time (user and system) and peak resident memory (bytes) of one run of
/// `cmd`, its output discarded but for stderr on failure, which is an error unless it
/// exited with `expect`. CPU and memory are the child's own, from wait4(2) (`ru_maxrss` is
/// in KiB on Linux, getrusage(2)).
fn measure(cmd: &mut Command, expect: i32) -> Result<(f64, f64, u64)> {
    let stderr = tempfile::tempfile()?;
    let start = std::time::Instant::now();
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr.try_clone()?)
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is a child of this process not yet waited for (std's Child is not waited).
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed().as_secs_f64();
    if waited != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != expect {
        let mut text = String::new();
        let mut stderr = stderr;
        // The child wrote through a clone sharing the offset: read from the start.
        std::io::Seek::rewind(&mut stderr).ok();
        std::io::Read::read_to_string(&mut stderr, &mut text).ok();
        let tail: String = text.lines().take(20).collect::<Vec<_>>().join("\n");
        bail!("{cmd:?} exited with wait status {status}, expected exit code {expect}:\n{tail}");
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    Ok((elapsed, cpu, u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024))
}

/// One size of a scaling benchmark.
struct Point {
    nodes: usize,
    /// Wall time.
    seconds: f64,
    /// User and system CPU time.
    cpu: f64,
    /// Peak resident memory.
    bytes: u64,
}

/// Prints each point's time and memory, per node and relative to the smallest, and judges
/// linearity on differences, which cancel the fixed part of both (start-up, the CAs' RSA
/// keys, the binary's own memory, the JSON Schema validate builds): the cost of each node
/// added from the middle size to the largest, `(x(L) - x(M)) / (L - M)`, may be at most 1.5
/// times the cost of each node added from the smallest size to the middle one,
/// `(x(M) - x(S)) / (M - S)`, plus a floor for measurement noise where that is next to
/// nothing (10 µs and 1 KiB a node: validate's memory grows by less than the allocator's
/// granularity from 10^3 to 10^4). Returns the problems found.
fn judge(label: &str, points: &[Point]) -> Vec<String> {
    let [s, m, l] = points else { return vec![format!("{label}: expected three sizes")] };
    for p in points {
        println!(
            "  {label:<8} {:>7} nodes  {:>8.3} s ({:>8.3} s CPU)  {:>7.1} MiB  {:>7.1} µs/node ({:>4.2}x)  {:>6.1} KiB/node ({:>4.2}x)",
            p.nodes,
            p.seconds,
            p.cpu,
            p.bytes as f64 / 1048576.0,
            p.seconds * 1e6 / p.nodes as f64,
            (p.seconds / p.nodes as f64) / (s.seconds / s.nodes as f64),
            p.bytes as f64 / 1024.0 / p.nodes as f64,
            (p.bytes as f64 / p.nodes as f64) / (s.bytes as f64 / s.nodes as f64),
        );
    }
    let mut problems = Vec::new();
    for (what, unit, scale, floor, small, middle, large) in [
        ("time", "µs", 1e6, 10.0, s.seconds, m.seconds, l.seconds),
        ("memory", "KiB", 1.0 / 1024.0, 1.0, s.bytes as f64, m.bytes as f64, l.bytes as f64),
    ] {
        let lower = (middle - small) * scale / (m.nodes - s.nodes) as f64;
        let upper = (large - middle) * scale / (l.nodes - m.nodes) as f64;
        let limit = 1.5 * lower.max(0.0) + floor;
        let verdict = if upper <= limit { "ok" } else { "NOT LINEAR" };
        println!(
            "  {label:<8} {what:<6} per node added: {:.1} {unit} from {} to {}, {:.1} {unit} from {} to {} (limit {limit:.1})  {verdict}",
            lower, s.nodes, m.nodes, upper, m.nodes, l.nodes
        );
        if upper > limit {
            problems
                .push(format!("{label} {what} per node grows from {lower:.1} to {upper:.1} {unit}, over {limit:.1}"));
        }
    }
    problems
}

/// `bench render`: a first render (new PKI) of 5 masters and 10^3, 10^4 and 10^5 nodes in
/// all, and `hakube validate` of 10^3, 10^4 and 10^5 nodes that each carry one error, each
/// its wall time and peak memory; fails when either grows faster than linearly
/// ([`judge`]). Also the re-render of the 5 + 1000 definition (target: under 1 s). The
/// work directory is under the target directory and removed afterwards.
fn bench_render(root: &Path) -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "--quiet", "-p", "hakube"]).current_dir(root))?;
    let target = target_dir(root);
    let hakube = target.join("release/hakube");
    let work = tempfile::Builder::new().prefix("hakube-bench-").tempdir_in(&target)?;
    println!("hakube render and validate, release build, in {}", work.path().display());
    let mut points = Vec::new();
    for nodes in [1_000, 10_000, 100_000] {
        let dir = work.path().join(format!("render-{nodes}"));
        std::fs::create_dir_all(&dir)?;
        let definition = dir.join("cluster.json");
        std::fs::write(&definition, serde_json::to_string(&big_definition(5, nodes - 5))?)?;
        let assets = dir.join("assets");
        let mut render = Command::new(&hakube);
        render.arg("render").arg(&definition).arg("--assets-dir").arg(&assets);
        let (seconds, cpu, bytes) = measure(&mut render, 0)?;
        if nodes == 1_000 {
            let (again, _, _) = measure(&mut render, 0)?;
            let verdict = if seconds < 1.0 && again < 1.0 { "ok" } else { "over 1 s" };
            println!(
                "  render   5 + 995: first {seconds:.3} s, re-render {again:.3} s (target under 1 s each): {verdict}, {} files",
                walk_count(&assets)
            );
        }
        std::fs::remove_dir_all(&dir)?;
        points.push(Point { nodes, seconds, cpu, bytes });
    }
    let mut problems = judge("render", &points);
    let mut points = Vec::new();
    for nodes in [1_000, 10_000, 100_000] {
        let definition = work.path().join(format!("bad-{nodes}.json"));
        std::fs::write(&definition, serde_json::to_string_pretty(&bad_definition(nodes))?)?;
        let (seconds, cpu, bytes) = measure(Command::new(&hakube).arg("validate").arg(&definition), 1)?;
        points.push(Point { nodes, seconds, cpu, bytes });
    }
    problems.extend(judge("validate", &points));
    if !problems.is_empty() {
        bail!("not linear: {}", problems.join("; "));
    }
    Ok(())
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { walk_count(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
