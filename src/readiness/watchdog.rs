//! `--watchdog CHECK`: liveness for a program that does not speak sd_notify.
//!
//! systemd's `WatchdogSec=` restarts a service whose main process stops sending `WATCHDOG=1`;
//! a program that knows nothing of sd_notify never sends it. Resident conjure, which is the
//! main process, looks at the program instead, with a check like a readiness source (`tcp:`,
//! `unix:`, `file:`, `cmd:`), every half of `WATCHDOG_USEC`, and pings while the check passes.
//! When it fails, conjure stops pinging (it does not send `WATCHDOG=trigger`: a check that
//! fails once and passes again within `WatchdogSec=` is tolerated, as a late ping is), and
//! systemd restarts the service when its own timer runs out.
//!
//! Where there is no supervisor watchdog (a container's PID 1, an init script),
//! `--watchdog-timeout DUR` makes conjure act itself: once the check has failed for that long,
//! the program is stopped and conjure exits 70, for the orchestrator to restart it.
//!
//! The checks run inside the one event loop: its timer says when the next is due, and a
//! `cmd:` check's pidfd when it finished. A `cmd:` check still running at the next tick has
//! failed, and is killed.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::DaemonizeError;
use crate::process::Process;
use crate::readiness::listeners::{Owner, Target};
use crate::readiness::probe::CmdCheck;
use crate::readiness::{Source, absolute};

/// Checks never run more often than this.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug)]
enum Check {
    Listen(Target),
    File(PathBuf),
    Cmd(String),
}

/// What a check's outcome asks the event loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The check passed: send `WATCHDOG=1` (when a supervisor watchdog is fed).
    Passed,
    /// The check failed; nothing to do yet.
    Failed,
    /// The check has failed for this long, past `--watchdog-timeout`: stop the program.
    Expired(Duration),
}

/// A liveness check on a schedule.
#[derive(Debug)]
pub(crate) struct Watchdog {
    check: Check,
    label: String,
    /// The supervisor's watchdog interval (`WATCHDOG_USEC`), when conjure feeds it.
    supervisor: Option<Duration>,
    timeout: Option<Duration>,
    interval: Duration,
    next: Option<Instant>,
    failing_since: Option<Instant>,
    running: Option<CmdCheck>,
}

impl Watchdog {
    /// A watchdog for `check`, feeding a supervisor watchdog of interval `supervisor` and/or
    /// stopping the program after `timeout`. Refuses checks that cannot be repeated (`exec`,
    /// `notify`, `fd:N`) and a watchdog with nothing to do.
    pub(crate) fn new(
        check: &Source,
        supervisor: Option<Duration>,
        timeout: Option<Duration>,
    ) -> Result<Watchdog, DaemonizeError> {
        let kind = match (Target::from_source(check)?, check) {
            (Some(target), _) => Check::Listen(target),
            (None, Source::File(path)) => Check::File(absolute(path)?),
            (None, Source::Cmd(command)) => Check::Cmd(command.clone()),
            (None, other) => {
                return Err(DaemonizeError::invalid(format!(
                    "invalid watchdog check `{other}`: expected tcp:HOST:PORT, unix:PATH, file:PATH or cmd:COMMAND"
                )));
            }
        };
        if supervisor.is_none() && timeout.is_none() {
            return Err(DaemonizeError::invalid(
                "--watchdog has nothing to do: no supervisor watchdog (WATCHDOG_USEC is not set for conjure) and no --watchdog-timeout",
            ));
        }
        let mut w = Watchdog {
            check: kind,
            label: check.to_string(),
            supervisor,
            timeout,
            interval: MIN_INTERVAL,
            next: None,
            failing_since: None,
            running: None,
        };
        w.interval = w.compute_interval();
        Ok(w)
    }

    /// Every half of the supervisor's interval, or every quarter of `--watchdog-timeout`,
    /// whichever is shorter.
    fn compute_interval(&self) -> Duration {
        let halves = self.supervisor.map(|w| w / 2);
        let quarters = self.timeout.map(|t| t / 4);
        let interval = match (halves, quarters) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(Duration::from_secs(1)),
        };
        interval.max(MIN_INTERVAL)
    }

    /// The check as given (`tcp:127.0.0.1:8000`).
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// How often the check runs.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether a passed check is to be followed by `WATCHDOG=1`.
    pub(crate) fn pings(&self) -> bool {
        self.supervisor.is_some()
    }

    /// Starts the schedule: the first check one interval from now (the supervisor's watchdog
    /// starts when the service is ready, and so does this).
    pub(crate) fn start(&mut self) {
        self.next = Instant::now().checked_add(self.interval);
    }

    /// The supervisor's watchdog changed (`WATCHDOG_USEC=` from the program).
    pub(crate) fn set_supervisor(&mut self, usec: Duration) {
        self.supervisor = Some(usec);
        self.interval = self.compute_interval();
        if let Some(next) = self.next {
            self.next = Some(next.min(Instant::now().checked_add(self.interval).unwrap_or(next)));
        }
    }

    /// When the next check is due.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.next
    }

    /// A running `cmd:` check's pidfd, readable once it exits.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.running.as_ref().and_then(CmdCheck::fd)
    }

    /// Runs what is due: collects a finished `cmd:` check, starts the next check when its time
    /// has come. Returns the outcome of a check that completed, if one did.
    pub(crate) fn poll(&mut self, tree: &Process) -> Option<Verdict> {
        let now = Instant::now();
        let mut outcome = None;
        if let Some(result) = self.running.as_mut().and_then(CmdCheck::finished) {
            self.running = None;
            outcome = Some(result);
        }
        if self.next.is_some_and(|n| now >= n) {
            self.next = now.checked_add(self.interval);
            // Dropped, it is killed.
            if self.running.take().is_some() {
                outcome = Some(Err("still running after an interval".to_string()));
            }
            match &mut self.check {
                Check::Listen(target) => {
                    outcome = Some(match target.owner(Some(tree)) {
                        Owner::Program => Ok(()),
                        Owner::Nobody => Err(format!("nothing listens on {}", target.describe())),
                        Owner::Other(holders) => Err(target.taken(&holders)),
                    });
                }
                Check::File(path) => {
                    outcome = Some(if path.exists() { Ok(()) } else { Err("no such file".to_string()) });
                }
                Check::Cmd(command) => match CmdCheck::start(command) {
                    Ok(check) => self.running = Some(check),
                    Err(e) => outcome = Some(Err(format!("cannot start it: {e}"))),
                },
            }
        }
        let why = match outcome? {
            Ok(()) => {
                self.failing_since = None;
                return Some(Verdict::Passed);
            }
            Err(why) => why,
        };
        let since = *self.failing_since.get_or_insert(now);
        let failed_for = now.saturating_duration_since(since);
        tracing::debug!(check = %self.label, why, ?failed_for, "watchdog check failed");
        match self.timeout {
            Some(t) if failed_for >= t => Some(Verdict::Expired(failed_for)),
            _ => Some(Verdict::Failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_half_the_supervisors_or_a_quarter_of_the_timeout() {
        let file = Source::File("/nonexistent".into());
        let w = Watchdog::new(&file, Some(Duration::from_secs(2)), None).unwrap();
        assert_eq!(w.interval(), Duration::from_secs(1));
        assert!(w.pings());
        let w = Watchdog::new(&file, None, Some(Duration::from_secs(8))).unwrap();
        assert_eq!(w.interval(), Duration::from_secs(2));
        assert!(!w.pings());
        let w = Watchdog::new(&file, Some(Duration::from_secs(2)), Some(Duration::from_secs(1))).unwrap();
        assert_eq!(w.interval(), Duration::from_millis(250));
        let w = Watchdog::new(&file, Some(Duration::from_micros(1)), None).unwrap();
        assert_eq!(w.interval(), MIN_INTERVAL);
    }

    #[test]
    fn checks_that_cannot_repeat_and_a_watchdog_with_nothing_to_do_are_refused() {
        for bad in [Source::Exec, Source::Notify, Source::Fd(3)] {
            assert_eq!(Watchdog::new(&bad, Some(Duration::from_secs(1)), None).unwrap_err().exit_code(), 64);
        }
        let err = Watchdog::new(&Source::File("/x".into()), None, None).unwrap_err();
        assert!(err.to_string().contains("WATCHDOG_USEC"), "{err}");
    }

    #[test]
    fn a_failing_check_expires_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alive");
        std::fs::write(&file, "").unwrap();
        let mut w = Watchdog::new(&Source::File(file.clone()), None, Some(Duration::from_millis(40))).unwrap();
        let tree = Process::in_session(0);
        w.next = Some(Instant::now());
        assert_eq!(w.poll(&tree), Some(Verdict::Passed));
        assert_eq!(w.poll(&tree), None, "not due yet");
        std::fs::remove_file(&file).unwrap();
        w.next = Some(Instant::now());
        assert_eq!(w.poll(&tree), Some(Verdict::Failed));
        std::thread::sleep(Duration::from_millis(50));
        w.next = Some(Instant::now());
        assert!(matches!(w.poll(&tree), Some(Verdict::Expired(d)) if d >= Duration::from_millis(40)));
    }
}
