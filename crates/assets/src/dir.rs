//! The assets directory on disk, opened safely: [`AssetsDir`] (every path below it opened
//! one component at a time without following links), [`verify`] (install's gate), atomic
//! writes ([`write_atomic`], [`stage`]) that hakube-render's writer builds on.
//!
//! Writes are atomic per file (a temporary file in the same directory, fsync, rename),
//! so an interrupted render leaves every file either old or new, never half-written.
//! `manifest.json` is written last, so an interruption leaves the old manifest, which
//! `hakube render --check` then reports as stale. Secret files are 0600 and every
//! directory holding one is 0700.
//!
//! Nothing below the assets directory is trusted ([`AssetsDir`]): every path under it
//! is opened one component at a time from the directory's file descriptor without
//! following symbolic links (`openat` with `O_NOFOLLOW`), so a link such as
//! `assets/ssh -> ~/.ssh` is refused by name instead of letting render write the
//! operator's own files; and the previous manifest names files to remove only after
//! [`Manifest::validate`] accepted it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::layout;
use crate::manifest::{sha256_hex, Manifest, ManifestError};

/// The files of an assets directory as read from disk: relative `/`-separated path →
/// bytes ([`read_existing`]).
pub type Existing = BTreeMap<String, Vec<u8>>;

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
    /// A directory or file below the assets directory is a symbolic link. hakube never
    /// follows one there: `assets/ssh -> ~/.ssh` would have it overwrite the operator's
    /// own key.
    #[error("{0} is a symbolic link; hakube never follows links inside the assets directory (one could make it read or overwrite files elsewhere): replace it with the real directory or file (e.g. `rm {0}`, then run `hakube render` again)")]
    Symlink(PathBuf),
    /// Something below the assets directory is not what the layout has there (a file
    /// where a directory belongs, a device or a FIFO where a file belongs).
    #[error("{path} is not {expected}; move it out of the assets directory and run `hakube render` again")]
    NotKind {
        /// The path.
        path: PathBuf,
        /// `a directory` or `a regular file`.
        expected: &'static str,
    },
    /// A relative path that is not one component after another (empty, `.`, `..`, or
    /// with a NUL byte): never produced by the layout, so never opened.
    #[error("{0:?} is not a path inside the assets directory")]
    BadPath(String),
    /// A file of the assets is not what its manifest records ([`verify`]): its bytes (or
    /// mode) changed since render wrote it, or it is missing.
    #[error("{path}: {problem}; run `hakube render` to bring the assets up to date (or restore them from git), then install again")]
    Unverified {
        /// The file.
        path: PathBuf,
        /// `does not match the sha256 in manifest.json`, `missing`, `mode 0644, manifest.json says 0600`.
        problem: String,
    },
    /// `manifest.json` is missing or does not parse.
    #[error("failed to read {path}: {problem}; run `hakube render` first")]
    NoManifest {
        /// The manifest's path.
        path: PathBuf,
        /// Why it cannot be read.
        problem: String,
    },
    /// A file to read (a secret, or any file install ships) could have been replaced by
    /// another local user: it, or a directory on the way to it from the assets directory,
    /// is writable by group or others, or owned by someone else ([`Guard`]).
    #[error("refusing to read {file}: {problem}")]
    Exposed {
        /// The file that was to be read.
        file: PathBuf,
        /// Which place is exposed, how, and the command that fixes it.
        problem: String,
    },
    /// Another render holds the assets directory's lock.
    #[error("{0} is being written by another `hakube render` right now; wait for it to finish and run this one again")]
    Locked(PathBuf),
}

/// An [`AssetsError::Io`] maker for `action` on `path` (`.map_err(io("read", path))`).
pub fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AssetsError {
    let path = path.to_path_buf();
    move |source| AssetsError::Io { action, path, source }
}

/// [`io`] for a rustix [`Errno`].
pub fn errno(action: &'static str, path: &Path) -> impl FnOnce(Errno) -> AssetsError {
    let f = io(action, path);
    move |e| f(e.into())
}

/// Splits a relative `/`-separated path into its components.
///
/// # Errors
///
/// [`AssetsError::BadPath`] for an empty, `.` or `..` component, or a NUL byte.
pub fn components(rel: &str) -> Result<Vec<&str>, AssetsError> {
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0')) {
        return Err(AssetsError::BadPath(rel.to_string()));
    }
    Ok(parts)
}

/// Prefix of the temporary files render stages its writes in.
const TEMP_PREFIX: &str = ".hakube-";

/// A fresh temporary file name: [`TEMP_PREFIX`] and 16 random hex digits.
fn temp_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("{TEMP_PREFIX}{:016x}", h.finish())
}

/// Whether `name` is one of render's temporary files: [`TEMP_PREFIX`] then 1 to 32 ASCII
/// letters and digits (this render's 16 hex digits, or the 6 random characters earlier
/// renders used).
pub fn is_temporary(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .is_some_and(|rest| (1..=32).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// What an open of a name in a directory found instead of what was asked for: a link
/// ([`AssetsError::Symlink`]) or something else ([`AssetsError::NotKind`]).
fn wrong_kind(parent: BorrowedFd<'_>, name: &str, shown: &Path, expected: &'static str) -> AssetsError {
    match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => AssetsError::Symlink(shown.to_path_buf()),
        _ => AssetsError::NotKind { path: shown.to_path_buf(), expected },
    }
}

/// Opens directory `name` in `parent` without following a link; `None` when missing.
pub fn open_dir_at(parent: BorrowedFd<'_>, name: &str, shown: &Path) -> Result<Option<OwnedFd>, AssetsError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rfs::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(wrong_kind(parent, name, shown, "a directory")),
        Err(e) => Err(errno("open directory", shown)(e)),
    }
}

/// Opens regular file `name` in `parent` for reading without following a link; `None`
/// when missing. Never blocks on a FIFO.
fn open_file_at(parent: BorrowedFd<'_>, name: &str, shown: &Path) -> Result<Option<fs::File>, AssetsError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match rfs::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err(AssetsError::Symlink(shown.to_path_buf())),
        Err(e) => return Err(errno("open", shown)(e)),
    };
    let st = rfs::fstat(&fd).map_err(errno("inspect", shown))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(AssetsError::NotKind { path: shown.to_path_buf(), expected: "a regular file" });
    }
    Ok(Some(fs::File::from(fd)))
}

/// Which files [`AssetsDir`] reads only when no other local user could have replaced
/// them: the file and every directory from the assets directory down to it must be owned
/// by the user running hakube (the effective uid) and not writable by group or others.
/// Otherwise the read fails with [`AssetsError::Exposed`], saying to `chmod go-w` or
/// `chown` the place (issue 11: another user swapped their own CA into a world-writable
/// assets directory, and the next render by root reused it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// The secrets, the files [`layout::file`] marks secret (keys, the bootstrap token,
    /// the admin kubeconfig): what render reuses.
    Secrets,
    /// Every file: what install ships to the nodes and runs there as root.
    All,
}

/// Why `st` (of `shown`) would let another user than `euid` replace what is below it.
fn exposure(st: &rfs::Stat, euid: u32, shown: &Path) -> Option<String> {
    let shown = shown.display();
    let mode = Mode::from_raw_mode(st.st_mode).bits() & 0o7777;
    if st.st_uid != euid {
        return Some(format!(
            "{shown} is owned by uid {}, not by the user running hakube (uid {euid}), who could have put it there; check it, then `chown {euid} {shown}` (or run hakube as its owner)",
            st.st_uid
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "{shown} is writable by group or others (mode {mode:04o}), so another user could have replaced what it holds; run `chmod go-w {shown}` and check its contents"
        ));
    }
    None
}

/// The assets directory, opened once: every path below it is opened from this file
/// descriptor, one component at a time, never following a symbolic link (a link is
/// refused with [`AssetsError::Symlink`] naming it). The directory itself may be a link:
/// the operator names it. Files its [`Guard`] covers are read only when no other user
/// could have replaced them.
#[derive(Debug)]
pub struct AssetsDir {
    /// The directory as the operator named it, for messages (`assets/ssh`).
    path: PathBuf,
    root: OwnedFd,
    guard: Guard,
    euid: u32,
}

impl AssetsDir {
    /// Opens the assets directory at `path`, guarding the secrets ([`Guard::Secrets`]);
    /// `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// [`AssetsError::Io`] when it cannot be opened (or is not a directory).
    pub fn open(path: &Path) -> Result<Option<AssetsDir>, AssetsError> {
        AssetsDir::open_guarded(path, Guard::Secrets)
    }

    /// [`AssetsDir::open`] with the given [`Guard`].
    ///
    /// # Errors
    ///
    /// [`AssetsError::Io`] when it cannot be opened (or is not a directory).
    pub fn open_guarded(path: &Path, guard: Guard) -> Result<Option<AssetsDir>, AssetsError> {
        let euid = rustix::process::geteuid().as_raw();
        match rfs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(root) => Ok(Some(AssetsDir { path: path.to_path_buf(), root, guard, euid })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(errno("open directory", path)(e)),
        }
    }

    /// Whether [`AssetsDir`]'s guard covers file `rel`.
    fn guards(&self, rel: &str) -> bool {
        match self.guard {
            Guard::All => true,
            Guard::Secrets => layout::file(rel).is_some_and(|f| f.secret),
        }
    }

    /// [`exposure`] of the open directory or file `fd`.
    fn exposure_of(&self, fd: BorrowedFd<'_>, shown: &Path) -> Result<Option<String>, AssetsError> {
        Ok(exposure(&rfs::fstat(fd).map_err(errno("inspect", shown))?, self.euid, shown))
    }

    /// The first exposed directory from the assets directory down to file `rel`'s
    /// directory, when the guard covers `rel`.
    fn chain_exposure(&self, rel: &str) -> Result<Option<String>, AssetsError> {
        if !self.guards(rel) {
            return Ok(None);
        }
        let parts = components(rel)?;
        let mut fd = self.dir("", None)?.expect("the root exists");
        if let Some(problem) = self.exposure_of(fd.as_fd(), &self.path)? {
            return Ok(Some(problem));
        }
        for i in 0..parts.len() - 1 {
            let shown = self.shown(&parts[..=i].join("/"));
            let Some(next) = open_dir_at(fd.as_fd(), parts[i], &shown)? else { return Ok(None) };
            if let Some(problem) = self.exposure_of(next.as_fd(), &shown)? {
                return Ok(Some(problem));
            }
            fd = next;
        }
        Ok(None)
    }

    /// Reads `file` (already open as `rel`), refusing it when the guard covers `rel` and
    /// `chain` (the exposure of its directories) or the file itself is exposed.
    fn read_guarded(&self, rel: &str, mut file: fs::File, chain: Option<String>) -> Result<Vec<u8>, AssetsError> {
        let shown = self.shown(rel);
        if self.guards(rel) {
            let problem = match chain {
                Some(problem) => Some(problem),
                None => self.exposure_of(file.as_fd(), &shown)?,
            };
            if let Some(problem) = problem {
                return Err(AssetsError::Exposed { file: shown, problem });
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io("read", &shown))?;
        Ok(bytes)
    }

    /// Opens the assets directory at `path`, creating it (and its parents) mode 0700 when
    /// it does not exist.
    ///
    /// # Errors
    ///
    /// [`AssetsError::Io`] when it cannot be created or opened.
    pub fn create(path: &Path) -> Result<AssetsDir, AssetsError> {
        if let Some(dir) = AssetsDir::open(path)? {
            return Ok(dir);
        }
        fs::create_dir_all(path).map_err(io("create directory", path))?;
        let dir =
            AssetsDir::open(path)?.ok_or_else(|| io("open directory", path)(std::io::ErrorKind::NotFound.into()))?;
        rfs::fchmod(&dir.root, Mode::from_raw_mode(0o700)).map_err(errno("set permissions of", path))?;
        Ok(dir)
    }

    /// The assets directory's own descriptor (for `syncfs`, or `openat` at its root).
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The path of `rel` as the operator would type it (`assets/ssh/known_hosts`).
    pub fn shown(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// Opens directory `rel` (`""` is the assets directory itself), never following a
    /// link. With `create`, missing directories are made with the mode it gives for
    /// their relative path; without, a missing one is `None`.
    pub fn dir(&self, rel: &str, create: Option<&dyn Fn(&str) -> u32>) -> Result<Option<OwnedFd>, AssetsError> {
        let mut fd = rfs::openat(&self.root, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno("open directory", &self.path))?;
        if rel.is_empty() {
            return Ok(Some(fd));
        }
        let parts = components(rel)?;
        for i in 0..parts.len() {
            let sub = parts[..=i].join("/");
            let shown = self.shown(&sub);
            fd = match (open_dir_at(fd.as_fd(), parts[i], &shown)?, create) {
                (Some(next), _) => next,
                (None, None) => return Ok(None),
                (None, Some(mode)) => {
                    match rfs::mkdirat(&fd, parts[i], Mode::from_raw_mode(mode(&sub))) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(errno("create directory", &shown)(e)),
                    }
                    open_dir_at(fd.as_fd(), parts[i], &shown)?
                        .ok_or_else(|| io("open directory", &shown)(std::io::ErrorKind::NotFound.into()))?
                }
            };
        }
        Ok(Some(fd))
    }

    /// The directory holding `rel` and `rel`'s last component.
    fn parent_of<'r>(&self, rel: &'r str) -> Result<(Option<OwnedFd>, &'r str), AssetsError> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        components(rel)?;
        Ok((self.dir(parent, None)?, name))
    }

    /// Reads file `rel`; `None` when it (or a directory on the way) does not exist.
    ///
    /// # Errors
    ///
    /// [`AssetsError::Symlink`] when it or a directory on the way is a link,
    /// [`AssetsError::NotKind`] when it is not a regular file, [`AssetsError::Exposed`]
    /// when the guard covers it and another user could have replaced it,
    /// [`AssetsError::Io`] when it cannot be read.
    pub fn read_optional(&self, rel: &str) -> Result<Option<Vec<u8>>, AssetsError> {
        let (Some(parent), name) = self.parent_of(rel)? else { return Ok(None) };
        let shown = self.shown(rel);
        let Some(file) = open_file_at(parent.as_fd(), name, &shown)? else { return Ok(None) };
        let chain = self.chain_exposure(rel)?;
        Ok(Some(self.read_guarded(rel, file, chain)?))
    }

    /// Reads file `rel`, which must exist (see [`AssetsDir::read_optional`]).
    ///
    /// # Errors
    ///
    /// As [`AssetsDir::read_optional`], and [`AssetsError::Io`] (not found) when missing.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, AssetsError> {
        self.read_optional(rel)?.ok_or_else(|| io("read", &self.shown(rel))(std::io::ErrorKind::NotFound.into()))
    }

    /// The permission bits of regular file `rel`; `None` when missing.
    ///
    /// # Errors
    ///
    /// [`AssetsError::Symlink`] or [`AssetsError::NotKind`] when it is not a regular
    /// file, [`AssetsError::Io`] when it cannot be inspected.
    pub fn mode(&self, rel: &str) -> Result<Option<u32>, AssetsError> {
        let (Some(parent), name) = self.parent_of(rel)? else { return Ok(None) };
        let shown = self.shown(rel);
        match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                Ok(Some(Mode::from_raw_mode(st.st_mode).bits() & 0o7777))
            }
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => Err(AssetsError::Symlink(shown)),
            Ok(_) => Err(AssetsError::NotKind { path: shown, expected: "a regular file" }),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(errno("inspect", &shown)(e)),
        }
    }

    /// Every regular file below the directory (hidden entries such as `.git` skipped)
    /// by relative path.
    ///
    /// One directory is open at a time: a directory still to read waits by its relative
    /// path (with the exposure of its parent) and is opened, from the assets directory
    /// without following links, when its turn comes; holding every one open ran out of
    /// file descriptors with thousands of nodes.
    pub fn read_all(&self) -> Result<Existing, AssetsError> {
        let mut out = BTreeMap::new();
        let mut stack: Vec<(String, Option<String>)> = vec![(String::new(), None)];
        while let Some((rel, parent_exposed)) = stack.pop() {
            let shown_dir = self.shown(&rel);
            let fd = self
                .dir(&rel, None)?
                .ok_or_else(|| io("open directory", &shown_dir)(std::io::ErrorKind::NotFound.into()))?;
            let exposed = match parent_exposed {
                Some(problem) => Some(problem),
                None => self.exposure_of(fd.as_fd(), &shown_dir)?,
            };
            for (name, kind) in list(&fd, &shown_dir)? {
                let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                let shown = self.shown(&child);
                // Hidden entries (`.git`, render's temporaries) are not assets; the
                // `.gitignore` render writes at the root is.
                if name.starts_with('.') && !(rel.is_empty() && name == layout::GITIGNORE) {
                    continue;
                }
                match kind {
                    FileType::Directory => stack.push((child, exposed.clone())),
                    FileType::Symlink => return Err(AssetsError::Symlink(shown)),
                    FileType::RegularFile => {
                        let Some(file) = open_file_at(fd.as_fd(), &name, &shown)? else { continue };
                        let bytes = self.read_guarded(&child, file, exposed.clone())?;
                        out.insert(child, bytes);
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// Removes the temporary files an interrupted render left ([`is_temporary`] names,
    /// regular files only) anywhere below the directory, not descending into hidden
    /// directories such as `.git` nor following links; their relative paths, sorted.
    pub fn remove_temporaries(&self) -> Result<Vec<String>, AssetsError> {
        let mut removed = Vec::new();
        // One directory open at a time, as in `read_all`.
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let Some(fd) = self.dir(&rel, None)? else { continue };
            for (name, kind) in list(&fd, &self.shown(&rel))? {
                let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                let shown = self.shown(&child);
                match kind {
                    FileType::RegularFile if is_temporary(&name) => {
                        match rfs::unlinkat(&fd, name.as_str(), AtFlags::empty()) {
                            Ok(()) => removed.push(child),
                            Err(Errno::NOENT) => {}
                            Err(e) => return Err(errno("remove", &shown)(e)),
                        }
                    }
                    FileType::Directory if !name.starts_with('.') => stack.push(child),
                    _ => {}
                }
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// Takes the directory's lock for this render (released when `self` is dropped).
    pub fn lock(&self) -> Result<(), AssetsError> {
        match rfs::flock(&self.root, rfs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(()),
            Err(Errno::WOULDBLOCK) => Err(AssetsError::Locked(self.path.clone())),
            Err(e) => Err(errno("lock", &self.path)(e)),
        }
    }
}

/// The entries of directory `fd` (without `.` and `..`), names and types, the type from
/// `lstat` when the directory listing does not say.
fn list(fd: &OwnedFd, shown: &Path) -> Result<Vec<(String, FileType)>, AssetsError> {
    let mut out = Vec::new();
    let mut dir = rfs::Dir::read_from(fd).map_err(errno("read directory", shown))?;
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(errno("read directory", shown))?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let name = std::str::from_utf8(bytes)
            .map_err(|_| {
                AssetsError::NonUtf8(shown.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes)))
            })?
            .to_string();
        let kind = match entry.file_type() {
            FileType::Unknown => rfs::statat(fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode))
                .map_err(errno("inspect", &shown.join(&name)))?,
            kind => kind,
        };
        out.push((name, kind));
    }
    Ok(out)
}

/// Reads every file of the assets directory (hidden entries such as `.git` skipped) by
/// relative `/`-separated path. A missing directory reads as empty.
///
/// # Errors
///
/// [`AssetsError`] naming the file that could not be read; [`AssetsError::Symlink`]
/// naming any link below the directory (render would otherwise write through it);
/// [`AssetsError::Exposed`] for a secret another user could have replaced
/// ([`Guard::Secrets`]).
pub fn read_existing(dir: &Path) -> Result<Existing, AssetsError> {
    match AssetsDir::open(dir)? {
        Some(assets) => assets.read_all(),
        None => Ok(BTreeMap::new()),
    }
}

/// Verifies the assets directory at `dir` before install ships anything from it, and
/// returns its manifest: the same checks `hakube render --check` makes of the files the
/// manifest records, without needing the definition.
///
/// Every path is read through [`AssetsDir`] (a link is refused) with [`Guard::All`]:
/// install runs these files as root on the nodes, so none may be replaceable by another
/// local user. The manifest must pass
/// [`Manifest::validate`], so its entries are exactly paths of the layout and its
/// destinations only the ones render gives them, below [`layout::REMOTE_DIR`]; and every
/// file it lists must exist with the sha256 and mode it records.
///
/// # Errors
///
/// [`AssetsError::NoManifest`] when there is no (parsable) manifest,
/// [`AssetsError::Manifest`] when it lists anything the layout does not,
/// [`AssetsError::Unverified`] naming the first file that does not match,
/// [`AssetsError::Symlink`] and the other read errors naming the path.
pub fn verify(dir: &Path) -> Result<Manifest, AssetsError> {
    let path = dir.join(layout::MANIFEST);
    let no_manifest = |problem: String| AssetsError::NoManifest { path: path.clone(), problem };
    let assets = AssetsDir::open_guarded(dir, Guard::All)?
        .ok_or_else(|| no_manifest(format!("{} does not exist", dir.display())))?;
    let bytes = assets.read_optional(layout::MANIFEST)?.ok_or_else(|| no_manifest("it does not exist".into()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| no_manifest("it is not UTF-8".into()))?;
    let manifest = Manifest::parse(text).map_err(|e| no_manifest(e.to_string()))?;
    manifest.validate().map_err(|problem| AssetsError::Manifest { path: path.clone(), problem })?;
    for (rel, entry) in &manifest.files {
        let unverified = |problem: String| AssetsError::Unverified { path: assets.shown(rel), problem };
        let bytes = assets.read_optional(rel)?.ok_or_else(|| unverified("missing".into()))?;
        if sha256_hex(&bytes) != entry.sha256 {
            return Err(unverified("does not match the sha256 in manifest.json".into()));
        }
        let mode = assets.mode(rel)?.ok_or_else(|| unverified("missing".into()))?;
        if Some(mode) != crate::manifest::parse_mode(&entry.mode) {
            return Err(unverified(format!("mode {mode:04o}, manifest.json says {}", entry.mode)));
        }
    }
    Ok(manifest)
}

/// A file staged under a temporary name in its directory; removed when dropped
/// unpersisted, so a failed write leaves no temporary behind.
pub struct Staged<'a> {
    dir: BorrowedFd<'a>,
    temp: String,
    name: &'a str,
    shown: PathBuf,
    persisted: bool,
}

impl Staged<'_> {
    /// The temporary file's name, no longer removed when this is dropped (the caller
    /// renames or removes it).
    pub fn keep(mut self) -> String {
        self.persisted = true;
        std::mem::take(&mut self.temp)
    }

    /// Renames the temporary file over its target (a link there is replaced, never followed).
    pub fn persist(mut self) -> Result<(), AssetsError> {
        rfs::renameat(self.dir, self.temp.as_str(), self.dir, self.name).map_err(errno("replace", &self.shown))?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = rfs::unlinkat(self.dir, self.temp.as_str(), AtFlags::empty());
        }
    }
}

/// Writes a temporary file in `dir` (created 0600 with `O_EXCL | O_NOFOLLOW`, so a
/// secret is never readable by others and nothing existing is opened, then set to
/// `mode`) for `name`, and closes it.
pub fn stage<'a>(
    dir: BorrowedFd<'a>,
    name: &'a str,
    shown: &Path,
    mode: u32,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<Staged<'a>, AssetsError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut attempts = 0;
    let (fd, temp) = loop {
        let temp = temp_name();
        match rfs::openat(dir, temp.as_str(), flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => break (fd, temp),
            Err(Errno::EXIST) if attempts < 16 => attempts += 1,
            Err(e) => return Err(errno("create a temporary file for", shown)(e)),
        }
    };
    let staged = Staged { dir, temp, name, shown: shown.to_path_buf(), persisted: false };
    let mut file = fs::File::from(fd);
    fill(&mut file).map_err(io("write", shown))?;
    rfs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(errno("set permissions of", shown))?;
    Ok(staged)
}

/// Removes file `rel` (a path of the layout) and the directories the removal emptied
/// (e.g. `nodes/<removed node>/`), never following a link; whether it existed.
pub fn remove(assets: &AssetsDir, rel: &str) -> Result<bool, AssetsError> {
    let parts = components(rel)?;
    let mut chain = vec![assets.dir("", None)?.expect("the root exists")];
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let shown = assets.shown(&parts[..=i].join("/"));
        match open_dir_at(chain[i].as_fd(), part, &shown)? {
            Some(fd) => chain.push(fd),
            None => return Ok(false),
        }
    }
    let shown = assets.shown(rel);
    let last = parts.len() - 1;
    match rfs::unlinkat(&chain[last], parts[last], AtFlags::empty()) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(errno("remove", &shown)(e)),
    }
    for i in (0..last).rev() {
        if rfs::unlinkat(&chain[i], parts[i], AtFlags::REMOVEDIR).is_err() {
            break;
        }
    }
    Ok(true)
}

/// The manifest among `existing`, when it parses (one that does not is rewritten and
/// names nothing to remove).
///
/// # Errors
///
/// [`AssetsError::Manifest`] when it lists anything [`Manifest::validate`] refuses.
pub fn previous_manifest(dir: &Path, existing: &Existing) -> Result<Option<Manifest>, AssetsError> {
    let Some(old) = Manifest::of_existing(existing) else {
        return Ok(None);
    };
    old.validate().map_err(|problem| AssetsError::Manifest { path: dir.join(layout::MANIFEST), problem })?;
    Ok(Some(old))
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
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<(), AssetsError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| AssetsError::NonUtf8(path.to_path_buf()))?;
    let dir = rfs::open(parent, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(errno("open directory", parent))?;
    let staged = stage(dir.as_fd(), name, path, mode, |f| {
        fill(f)?;
        f.sync_all()
    })?;
    staged.persist()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
