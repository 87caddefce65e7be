//! `stop` and `status`: acting on a daemon through its pidfile, trusting only its lock.
//!
//! A pid read from a file is a guess: the daemon may have died and the number been reused by
//! an unrelated process. conjure signals a pid only when (1) somebody holds the pidfile's lock,
//! (2) that pid is alive and, where `/proc` lets us see it, has the pidfile open, and (3) the
//! signal goes through a pidfd opened before those checks, so that even a pid reused in between
//! cannot be hit.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::daemon::pidfile::{self, Probe, Role};
use crate::error::{DaemonizeError, why};
use crate::process::{KILL_WAIT, Process};

/// What `conjure status` found, with its LSB exit code ([`Status::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The pidfile's lock is held: the daemon runs.
    Running {
        /// The pid the pidfile names, if it names one.
        pid: Option<i32>,
    },
    /// The pidfile exists but nobody holds its lock.
    Dead {
        /// The pid the stale pidfile names.
        pid: Option<i32>,
    },
    /// There is no pidfile.
    NotRunning,
    /// The pidfile cannot be read.
    Unknown(String),
}

impl Status {
    /// The LSB code: 0 running, 1 dead but the pidfile exists, 3 not running, 4 unknown.
    pub fn code(&self) -> i32 {
        match self {
            Status::Running { .. } => 0,
            Status::Dead { .. } => 1,
            Status::NotRunning => 3,
            Status::Unknown(_) => 4,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pid = |p: &Option<i32>| p.map_or_else(|| "no pid".to_string(), |p| format!("pid {p}"));
        match self {
            Status::Running { pid: p } => write!(f, "running ({})", pid(p)),
            Status::Dead { pid: p } => write!(f, "dead, but the pidfile remains ({})", pid(p)),
            Status::NotRunning => write!(f, "not running"),
            Status::Unknown(why) => write!(f, "unknown: {why}"),
        }
    }
}

/// Looks at the daemon behind `pidfile`.
pub fn status(pidfile: &Path) -> Status {
    match pidfile::probe(pidfile) {
        Ok(Probe::Missing) => Status::NotRunning,
        Ok(Probe::Unlocked(pid)) => Status::Dead { pid },
        Ok(Probe::Locked(pid)) => Status::Running { pid },
        Err(e) => Status::Unknown(format!("cannot read pidfile `{}`: {}", pidfile.display(), why(&e))),
    }
}

/// What `stop` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing ran: no pidfile, or a stale one (which is removed).
    NotRunning,
    /// The daemon exited after the signal (`killed`: only after SIGKILL).
    Stopped {
        /// Its pid.
        pid: i32,
        /// Whether the timeout passed and SIGKILL was needed.
        killed: bool,
    },
}

/// Stops the daemon behind `pidfile`: `signal`, then SIGKILL once `timeout` has passed. The
/// pidfile is removed afterwards if nobody holds its lock any more.
pub fn stop(pidfile: &Path, signal: Signal, timeout: Duration) -> Result<Stopped, DaemonizeError> {
    let fail = |msg: String| DaemonizeError::StopFailed(msg);
    let pid = match pidfile::probe(pidfile) {
        Ok(Probe::Missing) => return Ok(Stopped::NotRunning),
        Ok(Probe::Unlocked(pid)) => {
            // Nothing vouches for the pid. If it names a live process, that is a stranger that
            // reused the number or a daemon started with --no-lock: signal neither, and keep the
            // file, which may still be someone's. A pidfile naming a dead pid is removed.
            tracing::debug!(?pid, "pidfile is not locked; nothing to signal");
            if !pid.is_some_and(alive) {
                remove_if_unlocked(pidfile);
            }
            return Ok(Stopped::NotRunning);
        }
        Ok(Probe::Locked(Some(pid))) => pid,
        Ok(Probe::Locked(None)) => {
            return Err(fail(format!("pidfile `{}` is locked but names no pid", pidfile.display())));
        }
        Err(e) => return Err(fail(format!("cannot read pidfile `{}`: {}", pidfile.display(), why(&e)))),
    };
    let mut process = match Process::existing(pid) {
        Ok(p) => p,
        Err(e) => return Err(DaemonizeError::SystemError { call: "pidfd_open", source: e }),
    };
    if !alive(pid) {
        return Err(fail(format!(
            "pidfile `{}` names pid {pid}, which is not running, yet its lock is held",
            pidfile.display()
        )));
    }
    if holds_file(pid, pidfile) == Some(false) {
        return Err(fail(format!(
            "pid {pid} named by `{}` does not hold that file open; refusing to signal it",
            pidfile.display()
        )));
    }
    if !matches!(pidfile::probe(pidfile), Ok(Probe::Locked(Some(p))) if p == pid) {
        return Err(fail(format!("pidfile `{}` changed while stopping; try again", pidfile.display())));
    }
    tracing::debug!(pid, ?signal, "stopping the daemon and its descendants");
    // The daemon's whole tree: descendants that inherited the lock would otherwise keep the
    // daemon "running" after the main process is gone.
    let stopped = process.terminate(signal as i32, timeout);
    if stopped.survivors > 0 {
        return Err(fail(format!(
            "pid {pid} (or {} of its descendants) survived SIGKILL for {KILL_WAIT:?}",
            stopped.survivors
        )));
    }
    remove_if_unlocked(pidfile);
    Ok(Stopped::Stopped { pid, killed: stopped.killed })
}

/// Whether `pid` runs: it exists and is not a zombie waiting for its parent to reap it.
fn alive(pid: i32) -> bool {
    let exists = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let zombie = crate::process::stat(pid).is_some_and(|s| s.dead());
    exists && !zombie
}

/// Whether `pid` has `path` open: `None` when `/proc/PID/fd` cannot be read (another user's
/// process, no procfs), in which case the lock alone is trusted.
fn holds_file(pid: i32, path: &Path) -> Option<bool> {
    let target = std::fs::metadata(path).ok()?;
    let dir = std::fs::read_dir(PathBuf::from(format!("/proc/{pid}/fd"))).ok()?;
    Some(
        dir.flatten().any(|entry| {
            std::fs::metadata(entry.path()).is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        }),
    )
}

/// Removes a pidfile nobody holds a lock on, taking the lock first so that a daemon starting
/// at this moment either keeps its file or has not locked it yet.
fn remove_if_unlocked(path: &Path) {
    if let Ok(Probe::Unlocked(_)) = pidfile::probe(path) {
        if let Ok(file) = pidfile::acquire_existing(path, Role::Pidfile) {
            pidfile::remove(path, &file);
        }
    }
}
