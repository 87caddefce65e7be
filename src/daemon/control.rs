//! `stop` and `status`: acting on a daemon through its pidfile, trusting only its lock.
//!
//! A pid read from a file is a guess: the daemon may have died and the number been reused by
//! an unrelated process. conjure signals a pid only when (1) somebody holds the pidfile's lock,
//! (2) that pid is alive and, where `/proc` lets us see it, has the pidfile open, and (3) the
//! signal goes through a pidfd opened before those checks, so that even a pid reused in between
//! cannot be hit.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use crate::daemon::pidfile::{self, Probe, Role};
use crate::error::{DaemonizeError, why};
use crate::sys;

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
    let pidfd = match sys::pidfd_open(pid) {
        Ok(Some(fd)) => Some(fd),
        Ok(None) if !alive(pid) => {
            return Err(fail(format!(
                "pidfile `{}` names pid {pid}, which is not running, yet its lock is held",
                pidfile.display()
            )));
        }
        Ok(None) => None,
        Err(e) => return Err(DaemonizeError::SystemError { call: "pidfd_open", source: e }),
    };
    if holds_file(pid, pidfile) == Some(false) {
        return Err(fail(format!(
            "pid {pid} named by `{}` does not hold that file open; refusing to signal it",
            pidfile.display()
        )));
    }
    if !matches!(pidfile::probe(pidfile), Ok(Probe::Locked(Some(p))) if p == pid) {
        return Err(fail(format!("pidfile `{}` changed while stopping; try again", pidfile.display())));
    }
    let deadline = Instant::now() + timeout;
    tracing::debug!(pid, ?signal, "signalling");
    send(pidfd.as_ref(), pid, signal as i32).map_err(|e| fail(format!("cannot signal pid {pid}: {}", why(&e))))?;
    let mut killed = false;
    if !wait_exit(pidfd.as_ref(), pid, deadline) {
        tracing::debug!(pid, "still running after {timeout:?}; sending SIGKILL");
        send(pidfd.as_ref(), pid, libc::SIGKILL).map_err(|e| fail(format!("cannot kill pid {pid}: {}", why(&e))))?;
        if !wait_exit(pidfd.as_ref(), pid, Instant::now() + KILL_WAIT) {
            return Err(fail(format!("pid {pid} survived SIGKILL for {KILL_WAIT:?}")));
        }
        killed = true;
    }
    // Descendants that inherited the lock keep it, and with it the daemon "running", after the
    // main process is gone. They hold the pidfile open, which makes them part of this daemon and
    // nothing else: they get the same treatment.
    let stragglers: Vec<(i32, Option<OwnedFd>)> =
        holders(pidfile).into_iter().filter(|p| *p != pid).map(|p| (p, sys::pidfd_open(p).ok().flatten())).collect();
    for (p, fd) in &stragglers {
        tracing::debug!(pid = p, "signalling a descendant that still holds the lock");
        let _ = send(fd.as_ref(), *p, signal as i32);
    }
    for (p, fd) in &stragglers {
        if !wait_exit(fd.as_ref(), *p, deadline) {
            let _ = send(fd.as_ref(), *p, libc::SIGKILL);
            killed = true;
            if !wait_exit(fd.as_ref(), *p, Instant::now() + KILL_WAIT) {
                return Err(fail(format!("pid {p}, holding `{}`, survived SIGKILL", pidfile.display())));
            }
        }
    }
    remove_if_unlocked(pidfile);
    Ok(Stopped::Stopped { pid, killed })
}

/// How long a process may take to die after SIGKILL before `stop` gives up.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Processes that have `path` open, found through `/proc/*/fd` (those this user may read).
fn holders(path: &Path) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| holds_file(*p, path) == Some(true))
        .collect()
}

/// Signals `pid` through its pidfd when there is one (never a reused pid), else with kill(2).
pub(crate) fn send(pidfd: Option<&OwnedFd>, pid: i32, signal: i32) -> io::Result<()> {
    match pidfd {
        Some(fd) => sys::pidfd_send_signal(fd.as_fd(), signal),
        None => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::try_from(signal).ok())
            .map_err(io::Error::from),
    }
}

/// Whether `pid` runs: it exists and is not a zombie waiting for its parent to reap it.
fn alive(pid: i32) -> bool {
    let exists = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let zombie = crate::process::proc_state_and_parent(pid).is_some_and(|(state, _)| state == 'Z');
    exists && !zombie
}

/// Waits until the process exits: poll on its pidfd, or (old kernels) on `kill(pid, 0)`.
fn wait_exit(pidfd: Option<&OwnedFd>, pid: i32, deadline: Instant) -> bool {
    match pidfd {
        Some(fd) => wait_readable(fd, deadline),
        None => {
            while alive(pid) {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        }
    }
}

/// Waits until `fd` is readable or `deadline` passes; `true` when readable.
pub(crate) fn wait_readable(fd: &OwnedFd, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(0) if left.is_zero() => return false,
            Ok(0) => continue,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
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
