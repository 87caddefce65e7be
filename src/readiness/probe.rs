//! The sources that must ask rather than be told: `tcp:`, `unix:` (which look for the
//! program's listener, see `listeners.rs`) and `cmd:`.
//!
//! They probe on a backoff that starts small, so a program that is ready almost at once is
//! seen within milliseconds, and doubles up to a cap, so a program that takes a minute costs a
//! few dozen probes, not thousands. Every other source is event-driven.

use std::io;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Starts one run of a `cmd:` check: `sh -c COMMAND`, stdin and stdout on `/dev/null`,
/// stderr inherited so that its complaints reach the operator.
pub(crate) fn spawn_check(command: &str) -> io::Result<Child> {
    Command::new("/bin/sh").arg("-c").arg(command).stdin(Stdio::null()).stdout(Stdio::null()).spawn()
}

/// Stops a check command that outlived its use, and reaps it.
pub(crate) fn stop_check(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
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
