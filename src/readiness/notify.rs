//! The socket conjure hosts for the program's sd_notify (`--ready-on notify`, and resident
//! conjure relaying as the main process).
//!
//! It lives in the abstract namespace: it needs no directory, no cleanup, and no permissions
//! that a program running under `-u` would lack. Anyone in the network namespace can send to
//! it, so every datagram is stamped with its sender's credentials (`SO_PASSCRED`) and only the
//! program or one of its descendants counts (the event loop, which knows the program, decides).
//! A sender that exited before its datagram was read cannot be placed in the tree and is
//! ignored, as systemd ignores it for `NotifyAccess=main`. What arrives is read, relayed and
//! its fds passed on or closed by the [`Relay`](crate::readiness::relay::Relay).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, setsockopt, socket, sockopt};

/// The environment variable systemd and conjure pass the socket address in.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The socket conjure hosts for the program.
#[derive(Debug)]
pub(crate) struct NotifyHost {
    socket: OwnedFd,
    name: String,
}

impl NotifyHost {
    /// Binds a fresh abstract datagram socket with `SO_PASSCRED` on, non-blocking.
    pub(crate) fn bind() -> io::Result<NotifyHost> {
        let socket =
            socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
        setsockopt(&socket, sockopt::PassCred, &true)?;
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let name = format!("conjure/notify/{}/{:x}", std::process::id(), nonce);
        bind(socket.as_raw_fd(), &UnixAddr::new_abstract(name.as_bytes())?)?;
        Ok(NotifyHost { socket, name })
    }

    /// The value of `NOTIFY_SOCKET` for the program.
    pub(crate) fn env_value(&self) -> String {
        format!("@{}", self.name)
    }
}

impl AsFd for NotifyHost {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use crate::readiness::relay::relaying_in;

    #[test]
    fn hosted_socket_relays_the_programs_datagrams_and_ignores_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut relay, sup, sender) = relaying_in(dir.path());
        let me = std::process::id() as i32;
        sender.send(b"MAINPID=1\nSTATUS=hi\nREADY=1").unwrap();
        let heard = relay.receive(|pid| pid == me, false);
        assert!(heard.ready);
        assert_eq!(relay.status(), Some("hi"));
        let mut buf = [0u8; 64];
        let n = sup.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=hi", "MAINPID dropped, READY held back");
        sender.send(b"STATUS=stranger").unwrap();
        let heard = relay.receive(|_| false, false);
        assert!(!heard.ready);
        assert_eq!(relay.status(), Some("hi"), "a stranger's status is ignored");
        assert!(sup.recv(&mut buf).is_err(), "a stranger's datagram was relayed");
    }
}
