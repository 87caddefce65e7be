//! `stop` and `status`: acting on a daemon through its pidfile, trusting only its lock.
//!
//! A pid read from a file is a guess: the daemon may have died and the number been reused by
//! an unrelated process. The lock is not a guess: a `flock` belongs to one open file
//! description, which only the process that opened it and its descendants can hold, and
//! `/proc/PID/fdinfo` shows which fds hold it. So:
//! - `stop` signals only processes that hold the pidfile's lock, and their trees (through
//!   `Process::terminate`): the daemon the pidfile names, or, when that one is gone (a
//!   resident conjure killed with SIGKILL), the program that still holds the lock. A `tail -f`
//!   of the pidfile or a monitoring agent that merely opened it holds no lock and is never
//!   touched. The lock alone is trusted only where `/proc` cannot show holders (another user's
//!   processes, seen by a non-root caller), and then only for the pid the file names.
//! - a pidfile nobody holds a lock on (`--no-lock`, or a stale one) names a pid nothing vouches
//!   for: `stop` signals nobody. `status` checks what can be checked: a live pid that started
//!   before the pidfile was written is reported running; one that started after (a stranger
//!   that reused the number, or a clock that jumped) is "unknown", never "dead".
//! - only a pidfile is ever removed: a regular file owned by the launching user or root,
//!   empty or holding one pid. `conjure stop -p /etc/app.conf` leaves the file alone.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::daemon::pidfile::{self, Inspection};
use crate::error::{DaemonizeError, why};
use crate::process::{KILL_WAIT, Process};

/// What `conjure status` found, with its LSB exit code ([`Status::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The daemon runs: the pidfile's lock is held (or, without a lock, the pid it names runs
    /// and started before the pidfile was written).
    Running {
        /// The daemon's pid: the one the pidfile names, or the process holding its lock.
        pid: Option<i32>,
    },
    /// The pidfile exists but nobody holds its lock.
    Dead {
        /// The pid the stale pidfile names.
        pid: Option<i32>,
    },
    /// There is no pidfile.
    NotRunning,
    /// conjure cannot tell: the pidfile cannot be read, is not a pidfile, or names a live
    /// process that nothing proves to be the daemon.
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
///
/// ```no_run
/// use conjure::control::{self, Status};
/// match control::status("/run/myapp.pid".as_ref()) {
///     Status::Running { pid } => println!("running as {pid:?}"),
///     other => std::process::exit(other.code()),
/// }
/// ```
pub fn status(pidfile: &Path) -> Status {
    let found = match pidfile::inspect(pidfile) {
        Ok(None) => return Status::NotRunning,
        Ok(Some(found)) => found,
        Err(e) => return Status::Unknown(format!("cannot read pidfile `{}`: {}", pidfile.display(), why(&e))),
    };
    if found.locked {
        // The daemon is whoever holds the lock: the pid the file names when it is one of them.
        let holders = lock_holders(&found.file);
        let pid = match found.pid {
            Some(p) if holders.contains(&p) || (holders.is_empty() && alive(p)) => Some(p),
            named => holders.first().copied().or(named),
        };
        return Status::Running { pid };
    }
    match found.pid {
        Some(pid) if alive(pid) => match started_before(pid, &found.file) {
            Some(true) => Status::Running { pid: Some(pid) },
            _ => Status::Unknown(format!(
                "pidfile `{}` is not locked and names pid {pid}, which runs but cannot be shown to be the daemon",
                pidfile.display()
            )),
        },
        pid => Status::Dead { pid },
    }
}

/// What `stop` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing ran: no pidfile, or a stale one (which is removed).
    NotRunning,
    /// The daemon exited after the signal (`killed`: only after SIGKILL); its pidfile is gone.
    Stopped {
        /// Its pid.
        pid: i32,
        /// Whether the timeout passed and SIGKILL was needed.
        killed: bool,
    },
}

/// Stops the daemon behind `pidfile`: `signal` to it and its descendants, then SIGKILL to what
/// is left once `timeout` has passed; then removes the pidfile. Signals only processes that
/// hold the pidfile's lock and their trees; errors (exit code 1) when it signals nobody while
/// something may run, when the daemon survives, or when the pidfile cannot be removed.
///
/// ```no_run
/// use std::time::Duration;
/// use conjure::control::{self, Stopped};
/// match control::stop("/run/myapp.pid".as_ref(), libc::SIGTERM, Duration::from_secs(10))? {
///     Stopped::Stopped { pid, killed } => println!("stopped {pid} (SIGKILL needed: {killed})"),
///     Stopped::NotRunning => println!("was not running"),
/// }
/// # Ok::<(), conjure::DaemonizeError>(())
/// ```
pub fn stop(pidfile: &Path, signal: i32, timeout: Duration) -> Result<Stopped, DaemonizeError> {
    let fail = |msg: String| DaemonizeError::StopFailed(msg);
    let shown = pidfile.display();
    let found = match pidfile::inspect(pidfile) {
        Ok(None) => return Ok(Stopped::NotRunning),
        Ok(Some(found)) => found,
        Err(e) => return Err(fail(format!("cannot read pidfile `{shown}`: {}; nothing signalled", why(&e)))),
    };
    if !found.locked {
        // Nothing vouches for the pid: a stranger that reused the number, or a daemon started
        // with --no-lock. Neither is signalled; the file is removed only if its pid is gone.
        return match found.pid {
            Some(pid) if alive(pid) => Err(fail(format!(
                "pidfile `{shown}` is not locked; pid {pid} runs, but conjure signals only the holder of a pidfile's lock"
            ))),
            _ => {
                tracing::debug!(pid = ?found.pid, "stale pidfile; removing it");
                found
                    .remove_stale(pidfile)
                    .map_err(|e| fail(format!("pidfile `{shown}` is stale, but cannot be removed: {e}")))?;
                Ok(Stopped::NotRunning)
            }
        };
    }
    let targets = targets(&found);
    let Some(&first) = targets.first() else {
        return Err(fail(format!(
            "pidfile `{shown}` is locked, but by no process conjure can see (pid {}); nothing signalled",
            found.pid.map_or_else(|| "none named".to_string(), |p| p.to_string())
        )));
    };
    let pid = found.pid.filter(|p| targets.contains(p)).unwrap_or(first);
    let mut killed = false;
    let mut round = targets;
    // A child forked while its parent was being stopped can outlive it, reparented away from
    // the tree, and still hold the lock: whoever holds it then is the daemon's too, and is
    // stopped in a further round.
    for _ in 0..ROUNDS {
        for target in &round {
            let mut process =
                Process::existing(*target).map_err(|e| fail(format!("cannot watch pid {target}: {}", why(&e))))?;
            tracing::debug!(pid = target, signal, "stopping the daemon and its descendants");
            let stopped = process.terminate(signal, timeout);
            killed |= stopped.killed;
            if stopped.survivors > 0 {
                return Err(fail(format!(
                    "pid {target} (or {} of its descendants) survived SIGKILL for {KILL_WAIT:?}",
                    stopped.survivors
                )));
            }
        }
        match settled(pidfile) {
            Ok(Some((now, holders))) if now.locked => {
                round = roots(holders);
                if round.is_empty() {
                    break;
                }
            }
            Ok(Some((now, _))) => {
                return match now.remove_stale(pidfile) {
                    Ok(()) => Ok(Stopped::Stopped { pid, killed }),
                    Err(e) => Err(fail(format!("stopped pid {pid}, but cannot remove `{shown}`: {e}"))),
                };
            }
            _ => return Ok(Stopped::Stopped { pid, killed }),
        }
    }
    let left = pidfile::inspect(pidfile).ok().flatten().map(|now| lock_holders(&now.file)).unwrap_or_default();
    let left: Vec<String> = left.iter().map(i32::to_string).collect();
    Err(fail(format!("stopped pid {pid}, but `{shown}` is still locked (by pid {})", left.join(", "))))
}

/// How many times `stop` goes after the lock's holders before it gives up.
const ROUNDS: usize = 3;

/// The pidfile once its lock is free, or held by processes `/proc` shows, with those holders:
/// a holder that is being reparented or exec'd is briefly invisible there, and a lock held by
/// no visible process is looked at again for a moment (bounded) before anything is concluded.
/// A lock cannot be polled: this is the one wait that sleeps.
fn settled(pidfile: &Path) -> std::io::Result<Option<(Inspection, Vec<i32>)>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let Some(found) = pidfile::inspect(pidfile)? else { return Ok(None) };
        let holders = if found.locked { lock_holders(&found.file) } else { Vec::new() };
        if !(found.locked && holders.is_empty()) || std::time::Instant::now() >= deadline {
            return Ok(Some((found, holders)));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The processes `stop` signals: the holders of the lock that no other holder descends from
/// (each is stopped with its tree). Where `/proc` shows no holder at all (another user's
/// processes, seen without root), the lock alone vouches for the pid the file names.
fn targets(found: &Inspection) -> Vec<i32> {
    let holders = lock_holders(&found.file);
    if holders.is_empty() {
        return found.pid.filter(|p| alive(*p)).into_iter().collect();
    }
    let mut roots = roots(holders);
    // The named pid first, when it is one of them.
    roots.sort_by_key(|p| Some(*p) != found.pid);
    roots
}

/// The holders that no other holder descends from: stopping each with its tree stops all.
fn roots(holders: Vec<i32>) -> Vec<i32> {
    holders
        .iter()
        .copied()
        .filter(|h| !holders.iter().any(|other| other != h && crate::process::descends(*h, *other)))
        .collect()
}

/// Processes (not this one) with an fd on the open file description that holds `file`'s
/// `flock`: `/proc/PID/fdinfo/N` lists a lock only for the fds that share the locking open
/// file description, so a process that merely opened the file is not among them.
pub(crate) fn lock_holders(file: &File) -> Vec<i32> {
    let Ok(target) = file.metadata() else { return Vec::new() };
    let holds_lock = |fd: &Path| {
        let info = || std::fs::read_to_string(fd.parent()?.parent()?.join("fdinfo").join(fd.file_name()?)).ok();
        std::fs::metadata(fd).is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
            && info().is_some_and(|info| info.lines().any(|l| l.starts_with("lock:") && l.contains("FLOCK")))
    };
    crate::process::fd_holders(holds_lock).found.into_iter().filter(|p| alive(*p)).collect()
}

/// Whether `pid` runs: it exists and is not a zombie waiting for its parent to reap it.
fn alive(pid: i32) -> bool {
    crate::process::stat(pid).is_some_and(|s| !s.dead())
}

/// How long before its pidfile was written a daemon's process may have started: conjure writes
/// the pidfile in the child right after the fork (or, resident, right after it starts).
const WRITTEN_WITHIN: f64 = 2.0;

/// Whether `pid` started shortly before `file` was last modified, as the process that wrote
/// its own pidfile did. Both are compared on the boot clock (`/proc/PID/stat`'s start time;
/// the file's mtime moved from the wall clock to the boot clock), to within one clock tick.
/// A process that started after (a stranger that reused the number) or long before (a pid
/// written by someone else) is not shown to be the daemon. `None` when either cannot be read.
fn started_before(pid: i32, file: &File) -> Option<bool> {
    let started = crate::process::stat(pid)?.start_ticks as f64 / clock_ticks()?;
    let uptime = seconds(std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?)?;
    let now = SystemTime::now();
    let modified = file.metadata().ok()?.modified().ok()?;
    let age = now.duration_since(modified).ok()?.as_secs_f64();
    let written = uptime - age;
    Some(started <= written + 0.011 && started >= written - WRITTEN_WITHIN)
}

/// `/proc/uptime`'s `12345.67` as seconds (parsed as integers: no float parser in the binary).
fn seconds(text: &str) -> Option<f64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let whole: u64 = whole.parse().ok()?;
    let fraction = fraction.get(..fraction.len().min(9)).unwrap_or("");
    let part: u64 = if fraction.is_empty() { 0 } else { fraction.parse().ok()? };
    Some(whole as f64 + part as f64 / 10f64.powi(fraction.len() as i32))
}

/// Clock ticks per second, the unit of `/proc/PID/stat`'s start time.
fn clock_ticks() -> Option<f64> {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => Some(n as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_seconds_read_without_a_float_parser() {
        assert_eq!(seconds("12345.67"), Some(12345.67));
        assert_eq!(seconds("7"), Some(7.0));
        assert_eq!(seconds("0.5"), Some(0.5));
        assert_eq!(seconds("x.5"), None);
        assert_eq!(seconds("1.x"), None);
    }
}
