//! The sources that must ask rather than be told: `tcp:`, `unix:` (which look for the
//! program's listener, see `listeners.rs`) and `cmd:`.
//!
//! They probe on a backoff that starts small, so a program that is ready almost at once is
//! seen within milliseconds, and doubles up to a cap, so a program that takes a minute costs a
//! few dozen probes, not thousands. Every other source is event-driven.

use std::io;
use std::os::fd::BorrowedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{self, OwnChild};

/// First delay between probes.
const FIRST: Duration = Duration::from_millis(2);
/// Longest delay between probes.
const CAP: Duration = Duration::from_millis(100);

/// Doubling delays from [`FIRST`] to [`CAP`].
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST }
    }
}

impl Backoff {
    /// The delay before the next probe; each call doubles the following one, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(CAP);
        d
    }
}

/// One run of a `cmd:` check (a readiness source, or `--watchdog`): `sh -c COMMAND`, stdin and
/// stdout on `/dev/null`, stderr inherited so that its complaints reach the operator. A child
/// of conjure's own ([`OwnChild`]): resident conjure's orphan reaper leaves it to this. Dropped
/// while it runs, it is killed and reaped.
#[derive(Debug)]
pub(crate) struct CmdCheck {
    child: OwnChild,
}

impl CmdCheck {
    /// Starts `command`.
    pub(crate) fn start(command: &str) -> io::Result<CmdCheck> {
        let child =
            Command::new("/bin/sh").arg("-c").arg(command).stdin(Stdio::null()).stdout(Stdio::null()).spawn()?;
        Ok(CmdCheck { child: OwnChild::new(child) })
    }

    /// An fd that is readable once the command exited (none without pidfds: look again on the
    /// backoff), while it runs.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.child.fd()
    }

    /// `None` while the command runs; then `Ok` when it exited 0, or why it failed
    /// (`exited with status 1`).
    pub(crate) fn finished(&mut self) -> Option<Result<(), String>> {
        Some(match self.child.try_wait()? {
            Some(status) if process::exit_code(status) == Some(0) => Ok(()),
            Some(status) => Err(process::describe_status(status)),
            None => Err("ended, with its status lost".to_string()),
        })
    }
}

/// When the next probe is due, from now.
pub(crate) fn due(backoff: &mut Backoff) -> Instant {
    Instant::now() + backoff.next_delay()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], FIRST);
        assert_eq!(delays[1], FIRST * 2);
        assert_eq!(*delays.last().unwrap(), CAP);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    }
}
