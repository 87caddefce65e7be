//! Pidfiles and lockfiles: opened without following links, locked with `flock`, written
//! through the locked fd, removed only by whoever holds the lock.
//!
//! The lock, not the file, says whether a daemon runs: a file can outlive its daemon (SIGKILL,
//! a crash), but the kernel drops a `flock` with the last fd of the open file description. So
//! a stale pidfile never blocks a start, and `stop` never signals a pid whose file is unlocked.
//!
//! One race needs care: a daemon that stops unlinks its pidfile while a new launcher may
//! already have opened that same inode and be waiting to lock it. The new launcher would then
//! lock a file that no longer has a name, and a third launcher could create and lock a fresh
//! one: two daemons. So after locking, [`acquire`] checks that the path still names the inode it
//! locked, and starts over when it does not.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::DaemonizeError;
use crate::sys;

/// Which role a locked file plays, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Pidfile,
    Lockfile,
}

impl Role {
    fn error(self, path: &Path, source: io::Error) -> DaemonizeError {
        let path = path.to_path_buf();
        match self {
            Role::Pidfile => DaemonizeError::PidfileError { path, source },
            Role::Lockfile => DaemonizeError::LockfileError { path, source },
        }
    }
}

fn open_no_follow(path: &Path, write: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .mode(0o644)
        // O_NONBLOCK: a FIFO planted at the path must not hang the launcher in open().
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Opens (creating it) and locks the file at `path`. With `lock == false` it is only opened.
pub(crate) fn acquire(path: &Path, role: Role, lock: bool) -> Result<File, DaemonizeError> {
    for _ in 0..100 {
        let file = open_no_follow(path, true).map_err(|e| role.error(path, e))?;
        if !lock {
            return Ok(file);
        }
        if !sys::try_lock(file.as_fd()).map_err(|e| role.error(path, e))? {
            return Err(DaemonizeError::LockConflict { path: path.to_path_buf(), pid: read_pid(path).ok().flatten() });
        }
        if names_same_inode(path, &file) {
            return Ok(file);
        }
        tracing::debug!(path = %path.display(), "locked file was replaced while locking; retrying");
    }
    Err(role.error(path, io::Error::other("the file kept being replaced while locking it")))
}

/// Locks an existing file without creating it, for removing a stale pidfile.
pub(crate) fn acquire_existing(path: &Path, role: Role) -> Result<File, DaemonizeError> {
    let file = open_no_follow(path, false).map_err(|e| role.error(path, e))?;
    if sys::try_lock(file.as_fd()).map_err(|e| role.error(path, e))? && names_same_inode(path, &file) {
        Ok(file)
    } else {
        Err(DaemonizeError::LockConflict { path: path.to_path_buf(), pid: None })
    }
}

/// The temporary name of the pidfile sink's pidfile: in the same directory (so the rename is
/// atomic), hidden, and unique to this launcher.
pub(crate) fn temp_path(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.conjure-{}", std::process::id()))
}

/// The pidfile sink's moment: renames the locked temporary pidfile `temp` over `path`, unless
/// another instance holds `path`'s lock by now.
pub(crate) fn publish(temp: &Path, path: &Path) -> Result<(), DaemonizeError> {
    if let Ok(Probe::Locked(pid)) = probe(path) {
        return Err(DaemonizeError::LockConflict { path: path.to_path_buf(), pid });
    }
    std::fs::rename(temp, path).map_err(|source| DaemonizeError::PidfileError { path: path.to_path_buf(), source })?;
    tracing::debug!(path = %path.display(), "pidfile published");
    Ok(())
}

/// Whether `path` (not followed) still names the file open as `file`.
pub(crate) fn names_same_inode(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(p), Ok(f)) => p.dev() == f.dev() && p.ino() == f.ino(),
        _ => false,
    }
}

/// Unlinks `path` if it still names `file` (whose lock the caller holds). Best effort.
pub(crate) fn remove(path: &Path, file: &File) {
    if names_same_inode(path, file) {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed pidfile"),
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "cannot remove pidfile"),
        }
    }
}

/// Reads the pid a pidfile names: `Ok(None)` when it exists but holds no valid pid.
pub(crate) fn read_pid(path: &Path) -> io::Result<Option<i32>> {
    let mut text = String::new();
    open_no_follow(path, false)?.take(64).read_to_string(&mut text)?;
    Ok(text.trim().parse::<i32>().ok().filter(|p| *p > 0))
}

/// What a pidfile says about its daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// No file at the path.
    Missing,
    /// The file exists and nobody holds its lock.
    Unlocked(Option<i32>),
    /// Somebody holds the lock; the pid the file names.
    Locked(Option<i32>),
}

/// Looks at a pidfile without disturbing its owner: the lock is tested with a shared,
/// non-blocking `flock` that is dropped at once.
pub(crate) fn probe(path: &Path) -> io::Result<Probe> {
    let file = match open_no_follow(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Missing),
        Err(e) => return Err(e),
    };
    let pid = read_pid(path).unwrap_or(None);
    if sys::lock_is_held(file.as_fd())? { Ok(Probe::Locked(pid)) } else { Ok(Probe::Unlocked(pid)) }
}
