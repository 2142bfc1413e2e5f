//! Writing the assets directory: the small I/O step after [`crate::render`].
//!
//! Writes are atomic per file (a temporary file in the same directory, fsync, rename),
//! so an interrupted render leaves every file either old or new, never half-written.
//! `manifest.json` is written last, so an interruption leaves the old manifest, which
//! `hakube render --check` then reports as stale. Secret files are 0600 and every
//! directory holding one is 0700. Reading, [`verify`] and the atomic primitives are
//! hakube-assets' ([`hakube_assets::dir`], re-exported here): every path below the
//! assets directory is opened without following links.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode};

pub use hakube_assets::dir::*;

use crate::layout;
use crate::manifest::{sha256_hex, Manifest};
use crate::render::{Asset, AssetSet};

/// What a write did, by relative path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Files that did not exist.
    pub created: Vec<String>,
    /// Files whose bytes or mode changed.
    pub changed: Vec<String>,
    /// Files left byte-identical.
    pub kept: Vec<String>,
    /// Files the previous manifest listed that render no longer produces (a removed
    /// node's files), now deleted.
    pub removed: Vec<String>,
    /// Temporary files (`.hakube-` and random letters and digits) an interrupted render
    /// left, now deleted: one could hold a copy of a secret.
    pub stale: Vec<String>,
}

/// The files [`write`] puts into one directory: `(relative path, file name, asset)`.
type DirFiles<'s> = Vec<(&'s str, &'s str, &'s Asset)>;

/// How many directories [`write`] holds open at a time.
const OPEN_DIRS: usize = 256;

/// A file staged in directory `parent` (relative to the assets directory) under the
/// temporary name `temp`, its directory closed: renamed to `name` by
/// [`Unpersisted::persist`].
struct StagedFile<'a> {
    parent: &'a str,
    temp: String,
    name: &'a str,
    shown: PathBuf,
}

/// The files [`write`] staged and has not renamed yet; the temporary files of those left
/// when dropped (an error on the way) are removed, each directory opened again without
/// following links.
struct Unpersisted<'d, 'a> {
    assets: &'d AssetsDir,
    files: Vec<StagedFile<'a>>,
}

impl Unpersisted<'_, '_> {
    /// Renames every staged file over its target (a link there is replaced, never
    /// followed), one directory open at a time.
    fn persist(&mut self) -> Result<(), AssetsError> {
        // From the end, so that what is renamed leaves the list without moving the rest.
        self.files.sort_by(|a, b| b.parent.cmp(a.parent));
        while let Some(last) = self.files.last() {
            let parent = last.parent;
            let shown = self.assets.shown(parent);
            let fd = self
                .assets
                .dir(parent, None)?
                .ok_or_else(|| io("open directory", &shown)(std::io::ErrorKind::NotFound.into()))?;
            while let Some(f) = self.files.last().filter(|f| f.parent == parent) {
                rfs::renameat(&fd, f.temp.as_str(), &fd, f.name).map_err(errno("replace", &f.shown))?;
                self.files.pop();
            }
        }
        Ok(())
    }
}

impl Drop for Unpersisted<'_, '_> {
    fn drop(&mut self) {
        self.files.sort_by(|a, b| a.parent.cmp(b.parent));
        let mut open: Option<(&str, Option<OwnedFd>)> = None;
        for f in &self.files {
            if open.as_ref().is_none_or(|(p, _)| *p != f.parent) {
                open = Some((f.parent, self.assets.dir(f.parent, None).ok().flatten()));
            }
            if let Some((_, Some(fd))) = &open {
                let _ = rfs::unlinkat(fd, f.temp.as_str(), AtFlags::empty());
            }
        }
    }
}

/// Writes `set` and its manifest into `dir`, atomically per file, touching only files
/// whose bytes or mode differ; deletes files the previous manifest listed that are no
/// longer rendered, and the temporary files an interrupted render left. Files render
/// never wrote are left alone. Every path below `dir` is opened through [`AssetsDir`],
/// never following a link.
///
/// # Errors
///
/// [`AssetsError`] naming the file; files written before the failure are complete.
/// [`AssetsError::Manifest`] (before anything is written) when the previous manifest
/// lists a file outside the layout; [`AssetsError::Symlink`] for a link on the way to a
/// file; [`AssetsError::Locked`] while another render writes the same directory.
pub fn write(dir: &Path, set: &AssetSet, existing: &Existing) -> Result<WriteSummary, AssetsError> {
    let mut summary = WriteSummary::default();
    // The previous manifest says what to remove: untrusted, so checked before anything is written.
    let old = previous_manifest(dir, existing)?;
    let assets = AssetsDir::create(dir)?;
    assets.lock()?;
    // Under the lock, every temporary file is a leftover of a render that was killed.
    summary.stale = assets.remove_temporaries()?;
    let manifest = set.manifest();
    // Every directory that holds a secret, up to the assets directory, is 0700.
    let mut secret_dirs: BTreeSet<&str> = BTreeSet::new();
    for rel in set.files.iter().filter(|(_, a)| a.secret && !a.encrypted).map(|(rel, _)| rel.as_str()) {
        let mut d = rel;
        while let Some((parent, _)) = d.rsplit_once('/') {
            secret_dirs.insert(parent);
            d = parent;
        }
    }
    let dir_mode = |rel: &str| if secret_dirs.contains(rel) { 0o700 } else { 0o755 };
    // The files by directory. At most OPEN_DIRS directories are open at a time (a cluster
    // has two per node, and the soft limit of open files is often 1024): each batch is
    // opened (and created), its changed files staged, and closed; after one syncfs each
    // directory is opened once more to rename its files into place.
    let mut by_dir: BTreeMap<&str, DirFiles<'_>> = BTreeMap::new();
    for (rel, asset) in &set.files {
        components(rel)?;
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        by_dir.entry(parent).or_default().push((rel.as_str(), name, asset));
    }
    let groups: Vec<(&str, DirFiles<'_>)> = by_dir.into_iter().collect();
    let mut staged = Unpersisted { assets: &assets, files: Vec::new() };
    for batch in groups.chunks(OPEN_DIRS) {
        let mut fds = Vec::with_capacity(batch.len());
        for (parent, _) in batch {
            fds.push(assets.dir(parent, Some(&dir_mode))?.expect("created"));
        }
        let mut pending = Vec::new();
        for ((parent, files), fd) in batch.iter().zip(&fds) {
            let fd = fd.as_fd();
            for &(rel, name, asset) in files {
                let same_bytes = existing.get(rel) == Some(&asset.bytes);
                let same_mode = same_bytes
                    && rfs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                        FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                            && Mode::from_raw_mode(st.st_mode).bits() & 0o7777 == asset.mode
                    });
                match (existing.contains_key(rel), same_mode) {
                    (_, true) => summary.kept.push(rel.to_string()),
                    (false, false) => {
                        summary.created.push(rel.to_string());
                        pending.push((*parent, fd, name, assets.shown(rel), asset));
                    }
                    (true, false) => {
                        summary.changed.push(rel.to_string());
                        pending.push((*parent, fd, name, assets.shown(rel), asset));
                    }
                }
            }
        }
        // Each file is staged as a temporary file next to its target; one syncfs makes all
        // of them durable, then each is renamed over its target. Every file is replaced
        // atomically, without one fsync per file (thousands on a large cluster).
        // Creating inodes is latency-bound, so a few threads stage side by side.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = pending.len().clamp(1, 8);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| -> (Vec<StagedFile<'_>>, Result<(), AssetsError>) {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((parent, fd, name, shown, asset)) = pending.get(i) else { return (mine, Ok(())) };
                            match stage(*fd, name, shown, asset.mode, |f| f.write_all(&asset.bytes)) {
                                Ok(temp) => mine.push(StagedFile {
                                    parent,
                                    temp: temp.keep(),
                                    name,
                                    shown: shown.to_path_buf(),
                                }),
                                Err(e) => return (mine, Err(e)),
                            }
                        }
                    })
                })
                .collect();
            let mut first_error = None;
            for h in handles {
                // On an error, what was staged is removed with the rest when `staged` drops.
                let (mine, result) = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                staged.files.extend(mine);
                if let Err(e) = result {
                    first_error = first_error.or(Some(e));
                }
            }
            first_error.map_or(Ok(()), Err)
        })?;
    }
    if !staged.files.is_empty() {
        rfs::syncfs(assets.root()).map_err(errno("sync the file system of", dir))?;
    }
    staged.persist()?;
    for list in [&mut summary.kept, &mut summary.created, &mut summary.changed] {
        list.sort();
    }
    for d in &secret_dirs {
        let shown = assets.shown(d);
        let fd =
            assets.dir(d, None)?.ok_or_else(|| io("open directory", &shown)(std::io::ErrorKind::NotFound.into()))?;
        let mode = Mode::from_raw_mode(rfs::fstat(&fd).map_err(errno("inspect", &shown))?.st_mode).bits() & 0o7777;
        if mode != 0o700 {
            rfs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(errno("set permissions of", &shown))?;
        }
    }
    if let Some(old) = old {
        for rel in old.files.keys().filter(|p| !set.files.contains_key(*p)) {
            if remove(&assets, rel)? {
                summary.removed.push(rel.clone());
            }
        }
    }
    let bytes = manifest.to_bytes();
    if existing.get(layout::MANIFEST) != Some(&bytes) {
        let root = assets.root();
        let shown = assets.shown(layout::MANIFEST);
        let staged = stage(root, layout::MANIFEST, &shown, 0o644, |f| {
            f.write_all(&bytes)?;
            f.sync_all()
        })?;
        staged.persist()?;
    }
    Ok(summary)
}

/// One way the assets on disk differ from what render would write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discrepancy {
    /// A file render would write is missing.
    Missing(String),
    /// A file's bytes differ from what render would write (stale, or edited by hand).
    Differs(String),
    /// A file's mode differs (`path`, expected, actual).
    Mode(String, u32, u32),
    /// A file's bytes do not match the sha256 its manifest records (tampered with).
    Tampered(String),
    /// manifest.json is missing, unreadable or out of date.
    Manifest,
    /// A file the manifest lists that this definition does not render.
    Unexpected(String),
    /// A file holds a plaintext secret where only ciphertexts may be: a secret path while
    /// recipients are set, or any file with a PEM or OpenSSH private key or a kubeconfig
    /// client key that is not an age file.
    Plaintext(String),
}

impl std::fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Discrepancy::Missing(p) => write!(f, "{p}: missing"),
            Discrepancy::Differs(p) => {
                write!(f, "{p}: differs from what render would write (stale, or edited by hand)")
            }
            Discrepancy::Mode(p, want, got) => write!(f, "{p}: mode {got:04o}, expected {want:04o}"),
            Discrepancy::Tampered(p) => write!(f, "{p}: does not match the sha256 in manifest.json"),
            Discrepancy::Manifest => write!(f, "{}: missing or out of date", layout::MANIFEST),
            Discrepancy::Unexpected(p) => write!(f, "{p}: listed in manifest.json but not rendered from this definition"),
            Discrepancy::Plaintext(p) => write!(
                f,
                "{p}: holds a plaintext secret; with secrets.recipients set, only its age ciphertext may be in the assets (remove it, and from git history if it was committed)"
            ),
        }
    }
}

/// Compares the assets in `dir` with `set` without writing anything (`render --check`).
///
/// # Errors
///
/// Only when file metadata cannot be read; differences are returned, not errors.
pub fn check(dir: &Path, set: &AssetSet, existing: &Existing) -> Result<Vec<Discrepancy>, AssetsError> {
    let mut out = Vec::new();
    let assets = AssetsDir::open(dir)?;
    let on_disk_manifest = Manifest::of_existing(existing);
    if let Some(m) = &on_disk_manifest {
        for (rel, entry) in &m.files {
            if let Some(bytes) = existing.get(rel) {
                if sha256_hex(bytes) != entry.sha256 {
                    out.push(Discrepancy::Tampered(rel.clone()));
                }
            }
        }
    }
    for (rel, asset) in &set.files {
        match existing.get(rel) {
            None => out.push(Discrepancy::Missing(rel.clone())),
            Some(bytes) if *bytes != asset.bytes => {
                if !out.contains(&Discrepancy::Tampered(rel.clone())) {
                    out.push(Discrepancy::Differs(rel.clone()));
                }
            }
            Some(_) => {
                let mode = match &assets {
                    Some(assets) => assets.mode(rel)?,
                    None => None,
                };
                if let Some(mode) = mode.filter(|m| *m != asset.mode) {
                    out.push(Discrepancy::Mode(rel.clone(), asset.mode, mode));
                }
            }
        }
    }
    if existing.get(layout::MANIFEST) != Some(&set.manifest().to_bytes()) {
        out.push(Discrepancy::Manifest);
    }
    out.extend(plaintext_secrets(existing, !set.recipients.is_empty()));
    Ok(out)
}

/// Files among `existing` that hold a plaintext secret where none may be: with
/// `encrypted` (recipients set), every secret path of the layout that exists in plaintext;
/// always, any file other than an age ciphertext whose text holds a PEM or OpenSSH private
/// key (`PRIVATE KEY-----`) or a kubeconfig's `client-key-data`.
fn plaintext_secrets(existing: &Existing, encrypted: bool) -> Vec<Discrepancy> {
    existing
        .iter()
        .filter(|(rel, bytes)| {
            let layout = layout::file(rel);
            if layout.as_ref().is_some_and(|f| f.encrypted) {
                return false;
            }
            let secret_path = layout.is_some_and(|f| f.secret);
            let holds_key = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
            if secret_path && !encrypted {
                return false;
            }
            (secret_path && encrypted) || holds_key(b"PRIVATE KEY-----") || holds_key(b"client-key-data")
        })
        .map(|(rel, _)| Discrepancy::Plaintext(rel.clone()))
        .collect()
}

/// `render --check` without an identity, for assets whose secrets are encrypted: what
/// can be checked without decrypting anything. `fresh` is a render of the same
/// definition from no existing assets, sealed to the same recipients: it has the paths,
/// modes, nodes and recipients the assets must have, though not their contents.
///
/// Checked: manifest.json parses and lists only layout files
/// ([`Manifest::validate`]); every file it lists exists with the sha256 and mode it
/// records (a changed byte of a ciphertext is [`Discrepancy::Tampered`]); its files,
/// nodes, steps and recipients are the ones this definition renders; no plaintext secret
/// is present ([`Discrepancy::Plaintext`]).
///
/// # Errors
///
/// Only when file metadata cannot be read; differences are returned.
pub fn check_without_identity(
    dir: &Path,
    fresh: &AssetSet,
    existing: &Existing,
) -> Result<Vec<Discrepancy>, AssetsError> {
    let mut out = plaintext_secrets(existing, true);
    let Some(manifest) = Manifest::of_existing(existing).filter(|m| m.validate().is_ok()) else {
        out.insert(0, Discrepancy::Manifest);
        return Ok(out);
    };
    let assets = AssetsDir::open(dir)?;
    for (rel, entry) in &manifest.files {
        match existing.get(rel) {
            None => out.push(Discrepancy::Missing(rel.clone())),
            Some(bytes) if sha256_hex(bytes) != entry.sha256 => out.push(Discrepancy::Tampered(rel.clone())),
            Some(_) => {
                let mode = match &assets {
                    Some(assets) => assets.mode(rel)?,
                    None => None,
                };
                let want = crate::manifest::parse_mode(&entry.mode).unwrap_or_default();
                if let Some(mode) = mode.filter(|m| *m != want) {
                    out.push(Discrepancy::Mode(rel.clone(), want, mode));
                }
            }
        }
        if !fresh.files.contains_key(rel) {
            out.push(Discrepancy::Unexpected(rel.clone()));
        }
    }
    for rel in fresh.files.keys().filter(|r| !manifest.files.contains_key(*r)) {
        out.push(Discrepancy::Missing(rel.clone()));
    }
    let expected = fresh.manifest();
    if manifest.nodes != expected.nodes
        || manifest.recipients != expected.recipients
        || manifest.cluster_name != expected.cluster_name
    {
        out.push(Discrepancy::Manifest);
    }
    Ok(out)
}
