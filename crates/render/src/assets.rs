//! Reading and writing the assets directory: the small I/O step after [`crate::render`].
//!
//! Writes are atomic per file (a temporary file in the same directory, fsync, rename),
//! so an interrupted render leaves every file either old or new, never half-written.
//! `manifest.json` is written last, so an interruption leaves the old manifest, which
//! `hakube render --check` then reports as stale. Secret files are 0600 and every
//! directory holding one is 0700.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::layout;
use crate::manifest::{sha256_hex, Manifest, ManifestError};
use crate::render::{AssetSet, Existing};

/// Why reading or writing the assets directory failed.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    /// A file system operation failed on `path`.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done: `read`, `write`, `create directory`, ...
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A path inside the assets directory is not valid UTF-8 (render names every file
    /// itself, so this is a file someone else put there).
    #[error("failed to read {0}: its name is not UTF-8")]
    NonUtf8(PathBuf),
    /// The manifest on disk lists something render never produces
    /// ([`Manifest::validate`]): render refuses before writing anything, so that a
    /// tampered manifest cannot make it remove (or install ship) a file of its choosing.
    #[error("{path}: {problem}; it was edited or is not hakube's: restore it (e.g. from git), or delete it and run `hakube render` again (which rewrites it, but then cannot remove the files of nodes no longer in the definition)")]
    Manifest {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong with it.
        problem: ManifestError,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AssetsError {
    let path = path.to_path_buf();
    move |source| AssetsError::Io { action, path, source }
}

/// Reads every file of the assets directory (hidden entries such as `.git` skipped) by
/// relative `/`-separated path. A missing directory reads as empty.
///
/// # Errors
///
/// [`AssetsError`] naming the file that could not be read.
pub fn read_existing(dir: &Path) -> Result<Existing, AssetsError> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in fs::read_dir(&current).map_err(io("read directory", &current))? {
            let entry = entry.map_err(io("read directory", &current))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(io("inspect", &path))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let rel = path
                    .strip_prefix(dir)
                    .expect("walked from dir")
                    .to_str()
                    .ok_or_else(|| AssetsError::NonUtf8(path.clone()))?
                    .to_string();
                let bytes = fs::read(&path).map_err(io("read", &path))?;
                out.insert(rel, bytes);
            }
        }
    }
    Ok(out)
}

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
}

/// Writes `set` and its manifest into `dir`, atomically per file, touching only files
/// whose bytes or mode differ; deletes files the previous manifest listed that are no
/// longer rendered. Files render never wrote are left alone.
///
/// # Errors
///
/// [`AssetsError`] naming the file; files written before the failure are complete.
pub fn write(dir: &Path, set: &AssetSet, existing: &Existing) -> Result<WriteSummary, AssetsError> {
    let mut summary = WriteSummary::default();
    // The previous manifest says what to remove: untrusted, so checked before anything is written.
    let old = previous_manifest(dir, existing)?;
    create_dir(dir, 0o700)?;
    let manifest = set.manifest();
    // Every directory that holds a secret, up to the assets directory, is 0700.
    let mut secret_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for rel in set.files.iter().filter(|(_, a)| a.secret).map(|(rel, _)| rel) {
        let mut p = dir.join(rel).parent().map(Path::to_path_buf);
        while let Some(d) = p.filter(|d| d != dir) {
            p = d.parent().map(Path::to_path_buf);
            secret_dirs.insert(d);
        }
    }
    let mut pending = Vec::new();
    for (rel, asset) in &set.files {
        let path = dir.join(rel);
        let same_bytes = existing.get(rel) == Some(&asset.bytes);
        let same_mode = same_bytes && fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o7777 == asset.mode);
        match (existing.contains_key(rel), same_mode) {
            (_, true) => summary.kept.push(rel.clone()),
            (false, false) => {
                summary.created.push(rel.clone());
                pending.push((path, asset));
            }
            (true, false) => {
                summary.changed.push(rel.clone());
                pending.push((path, asset));
            }
        }
    }
    // Each file is staged as a temporary file next to its target; one syncfs makes all of
    // them durable, then each is renamed over its target. Every file is replaced
    // atomically, without one fsync per file (thousands on a large cluster).
    // Creating inodes is latency-bound, so a few threads stage side by side.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = pending.len().clamp(1, 8);
    let staged: Vec<(&PathBuf, tempfile::TempPath)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<Vec<(&PathBuf, tempfile::TempPath)>, AssetsError> {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((path, asset)) = pending.get(i) else { return Ok(mine) };
                        let parent = path.parent().expect("files live below dir");
                        if !parent.is_dir() {
                            let mode = if secret_dirs.contains(parent) { 0o700 } else { 0o755 };
                            fs::DirBuilder::new()
                                .recursive(true)
                                .mode(mode)
                                .create(parent)
                                .map_err(io("create directory", parent))?;
                        }
                        mine.push((path, stage(path, asset.mode, |f| f.write_all(&asset.bytes))?));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
        }
        Ok::<_, AssetsError>(all)
    })?;
    if !staged.is_empty() {
        let handle = fs::File::open(dir).map_err(io("open", dir))?;
        rustix::fs::syncfs(&handle).map_err(|e| io("sync the file system of", dir)(e.into()))?;
    }
    for (path, temp) in staged {
        temp.persist(path).map_err(|e| io("replace", path)(e.error))?;
    }
    for d in &secret_dirs {
        let mode = fs::metadata(d).map_err(io("inspect", d))?.permissions().mode() & 0o7777;
        if mode != 0o700 {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(io("set permissions of", d))?;
        }
    }
    if let Some(old) = old {
        for rel in old.files.keys().filter(|p| !set.files.contains_key(*p)) {
            let path = dir.join(rel);
            match fs::remove_file(&path) {
                Ok(()) => summary.removed.push(rel.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path)(e)),
            }
            // Drop directories the removal emptied (e.g. nodes/<removed node>/).
            let mut p = path.parent();
            while let Some(d) = p.filter(|d| *d != dir) {
                if fs::remove_dir(d).is_err() {
                    break;
                }
                p = d.parent();
            }
        }
    }
    let bytes = manifest.to_bytes();
    if existing.get(layout::MANIFEST) != Some(&bytes) {
        write_atomic(&dir.join(layout::MANIFEST), 0o644, &bytes)?;
    }
    Ok(summary)
}

/// The manifest among `existing`, when it parses (one that does not is rewritten and
/// names nothing to remove).
///
/// # Errors
///
/// [`AssetsError::Manifest`] when it lists anything [`Manifest::validate`] refuses.
fn previous_manifest(dir: &Path, existing: &Existing) -> Result<Option<Manifest>, AssetsError> {
    let Some(old) =
        existing.get(layout::MANIFEST).and_then(|b| std::str::from_utf8(b).ok()).and_then(|t| Manifest::parse(t).ok())
    else {
        return Ok(None);
    };
    old.validate().map_err(|problem| AssetsError::Manifest { path: dir.join(layout::MANIFEST), problem })?;
    Ok(Some(old))
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), AssetsError> {
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io("set permissions of", dir))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` at `mode`, atomically: the old file stays intact until
/// the new one is complete on disk.
///
/// # Errors
///
/// [`AssetsError::Io`] naming `path`; a temporary file is removed on failure.
pub fn write_atomic(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), AssetsError> {
    write_atomic_with(path, mode, |file| file.write_all(bytes))
}

/// [`write_atomic`] with the content produced by `fill`; when `fill` fails, `path` is
/// untouched and the temporary file is gone.
pub(crate) fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<(), AssetsError> {
    let temp = stage(path, mode, |f| {
        fill(f)?;
        f.sync_all()
    })?;
    temp.persist(path).map_err(|e| io("replace", path)(e.error))?;
    Ok(())
}

/// Writes a temporary file next to `path` (created 0600, so a secret is never readable
/// by others, then set to `mode`) and closes it; it is deleted if dropped unpersisted.
fn stage(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<tempfile::TempPath, AssetsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp =
        tempfile::Builder::new().prefix(".hakube-").tempfile_in(dir).map_err(io("create a temporary file in", dir))?;
    fill(temp.as_file_mut()).map_err(io("write", path))?;
    temp.as_file().set_permissions(fs::Permissions::from_mode(mode)).map_err(io("set permissions of", path))?;
    Ok(temp.into_temp_path())
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
    let on_disk_manifest =
        existing.get(layout::MANIFEST).and_then(|b| std::str::from_utf8(b).ok()).and_then(|t| Manifest::parse(t).ok());
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
                let path = dir.join(rel);
                let mode = fs::metadata(&path).map_err(io("inspect", &path))?.permissions().mode() & 0o7777;
                if mode != asset.mode {
                    out.push(Discrepancy::Mode(rel.clone(), asset.mode, mode));
                }
            }
        }
    }
    if existing.get(layout::MANIFEST) != Some(&set.manifest().to_bytes()) {
        out.push(Discrepancy::Manifest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_write_leaves_the_previous_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.key");
        write_atomic(&path, 0o600, b"old key\n").unwrap();
        let err = write_atomic_with(&path, 0o600, |f| {
            f.write_all(b"half of a new k")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("failed to write"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old key\n");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("ca.key")], "temporary file left behind");
    }

    #[test]
    fn atomic_writes_set_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        write_atomic(&path, 0o600, b"secret").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
        write_atomic(&path, 0o644, b"public").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o644);
    }
}
