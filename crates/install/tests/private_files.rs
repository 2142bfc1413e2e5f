//! What install writes on the operator's machine is private whatever the umask (issue 11,
//! item 5: under umask 000 the SSH control directory was 0777 and a local user swapped the
//! ControlMaster socket): the control directory 0700 and owned by the caller, in
//! $XDG_RUNTIME_DIR where there is a usable one; the logs directory 0700 and its log files
//! 0600; `known_hosts.accepted` 0600.
//!
//! One test in its own process, since the umask is the whole process's.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use hakube_install::runner::{create_log_dir, create_private_file, open_log};
use hakube_install::transport::control_directory;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn install_files_are_private_under_umask_000() {
    rustix::process::umask(rustix::fs::Mode::empty());
    let me = rustix::process::getuid().as_raw();
    let scratch = tempfile::Builder::new().prefix("hkp").tempdir_in("/tmp").unwrap();

    // The control directory: 0700, ours; in $XDG_RUNTIME_DIR when it is a private directory
    // of ours (the XDG Base Directory spec: owned by the user, mode 0700), else in /tmp.
    let runtime = scratch.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let control = control_directory(Some(runtime.as_os_str())).unwrap();
    assert_eq!(control.path().parent(), Some(runtime.as_path()));
    assert_eq!(mode(control.path()), 0o700, "{}", control.path().display());
    assert_eq!(std::fs::metadata(control.path()).unwrap().uid(), me);
    // A runtime directory others may write to is not used.
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o777)).unwrap();
    let fallback = control_directory(Some(runtime.as_os_str())).unwrap();
    assert_eq!(fallback.path().parent(), Some(Path::new("/tmp")));
    assert_eq!(mode(fallback.path()), 0o700);
    let unset = control_directory(None).unwrap();
    assert_eq!((unset.path().parent(), mode(unset.path())), (Some(Path::new("/tmp")), 0o700));

    // The logs directory, new or already there with loose modes, and its files.
    let logs = scratch.path().join("logs/nested");
    create_log_dir(&logs).unwrap();
    assert_eq!(mode(&logs), 0o700);
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).unwrap();
    create_log_dir(&logs).unwrap();
    assert_eq!(mode(&logs), 0o700);
    let log = logs.join("w0.log");
    drop(open_log(&log).await.unwrap());
    assert_eq!(mode(&log), 0o600);
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(open_log(&log).await.unwrap());
    assert_eq!(mode(&log), 0o600, "a log file of an earlier run is made private");

    // known_hosts.accepted: created 0600, an existing one made 0600 and kept.
    let accepted = scratch.path().join("known_hosts.accepted");
    create_private_file(&accepted).unwrap();
    assert_eq!(mode(&accepted), 0o600);
    std::fs::write(&accepted, "10.0.0.1 ssh-ed25519 AAAA\n").unwrap();
    std::fs::set_permissions(&accepted, std::fs::Permissions::from_mode(0o666)).unwrap();
    create_private_file(&accepted).unwrap();
    assert_eq!(mode(&accepted), 0o600);
    assert_eq!(std::fs::read_to_string(&accepted).unwrap(), "10.0.0.1 ssh-ed25519 AAAA\n");
}
