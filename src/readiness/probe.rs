//! The sources that must ask rather than be told: `tcp:`, `unix:` and `cmd:`.
//!
//! They probe on a backoff that starts small, so a program that is ready almost at once is
//! seen within milliseconds, and doubles up to a cap, so a program that takes a minute costs a
//! few dozen probes, not thousands. Every other source is event-driven.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// First delay between probes.
const FIRST: Duration = Duration::from_millis(2);
/// Longest delay between probes.
const CAP: Duration = Duration::from_millis(100);
/// Longest a single TCP connect may take before it counts as "not yet".
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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

/// Whether a TCP connect to `host:port` succeeds now.
pub(crate) fn tcp(host: &str, port: u16) -> bool {
    let Ok(addrs) = (host, port).to_socket_addrs() else { return false };
    addrs.into_iter().any(|a| TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).is_ok())
}

/// Whether a connect to the Unix stream socket at `path` succeeds now.
pub(crate) fn unix(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
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

    #[test]
    fn probes_see_listeners() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(tcp("127.0.0.1", port));
        drop(l);
        assert!(!tcp("127.0.0.1", port));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        assert!(!unix(&path));
        let _u = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(unix(&path));
    }
}
