//! sd_notify, both ways: the socket conjure hosts for a program (`--ready-on notify`), and the
//! messages conjure sends to its own supervisor (`--readiness notify`).
//!
//! The hosted socket lives in the abstract namespace: it needs no directory, no cleanup, and
//! no permissions that a program running under `-u` would lack. Anyone in the network
//! namespace can send to it, so every datagram is checked: the kernel stamps each one with the
//! sender's credentials (`SO_PASSCRED`), and only the program or one of its descendants
//! counts (the event loop, which knows the program, decides). A sender that exited before its datagram was read cannot be placed in the tree and
//! is ignored, as systemd ignores it for `NotifyAccess=main`.
//!
//! Datagrams come from programs conjure does not control: any size, any bytes. Parsing never
//! fails; unknown keys and invalid UTF-8 are ignored, a truncated datagram is dropped, and
//! file descriptors passed along are closed at once.

use std::ffi::OsString;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, UnixCredentials, bind, recvmsg,
    setsockopt, socket, sockopt,
};

/// The environment variable systemd and conjure pass the socket address in.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Largest datagram read whole; systemd's own limit is lower.
const MAX_DATAGRAM: usize = 64 * 1024;

/// What one datagram said. Fields absent from it are `None` / `false`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Message {
    pub ready: bool,
    pub reloading: bool,
    pub stopping: bool,
    pub status: Option<String>,
    pub extend_timeout: Option<Duration>,
    pub errno: Option<i32>,
    pub mainpid: Option<i32>,
}

/// Parses `KEY=VALUE` lines; never fails.
pub(crate) fn parse(bytes: &[u8]) -> Message {
    let mut m = Message::default();
    for line in bytes.split(|b| *b == b'\n') {
        let Some(eq) = line.iter().position(|b| *b == b'=') else { continue };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        let number = || std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<u64>().ok());
        match key {
            b"READY" => m.ready |= value == b"1",
            b"RELOADING" => m.reloading |= value == b"1",
            b"STOPPING" => m.stopping |= value == b"1",
            b"STATUS" => m.status = Some(String::from_utf8_lossy(value).into_owned()),
            b"EXTEND_TIMEOUT_USEC" => m.extend_timeout = number().map(Duration::from_micros),
            b"ERRNO" => m.errno = number().and_then(|n| i32::try_from(n).ok()),
            b"MAINPID" => m.mainpid = number().and_then(|n| i32::try_from(n).ok()),
            _ => {}
        }
    }
    m
}

/// A datagram received on the hosted socket, with the sender's pid as the kernel saw it.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub pid: Option<i32>,
    pub bytes: Vec<u8>,
}

/// The socket conjure hosts for the program.
#[derive(Debug)]
pub(crate) struct NotifyHost {
    socket: OwnedFd,
    name: String,
}

impl NotifyHost {
    /// Binds a fresh abstract datagram socket with `SO_PASSCRED` on.
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

    /// Receives one datagram without blocking: `Ok(None)` when none is queued.
    pub(crate) fn recv(&self) -> io::Result<Option<Datagram>> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!(UnixCredentials, [std::os::fd::RawFd; 16]);
            let msg = match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut pid = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                        ControlMessageOwned::ScmRights(fds) => {
                            // Nobody asked for them: close each at once, or a chatty sender
                            // could exhaust conjure's fd table.
                            for fd in fds {
                                let _ = crate::sys::close_raw(fd);
                            }
                        }
                        _ => {}
                    }
                }
            }
            let len = msg.bytes;
            if msg.flags.contains(MsgFlags::MSG_TRUNC) || len > MAX_DATAGRAM {
                tracing::debug!(len, "dropping an oversized notify datagram");
                continue;
            }
            return Ok(Some(Datagram { pid, bytes: buf[..len].to_vec() }));
        }
    }
}

impl AsFd for NotifyHost {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// The supervisor's socket from `NOTIFY_SOCKET`, if set: a path, or `@name` in the abstract
/// namespace.
pub(crate) fn supervisor_address() -> Option<OsString> {
    std::env::var_os(NOTIFY_SOCKET).filter(|v| !v.is_empty())
}

/// Sends one datagram to `address` (path or `@abstract`).
pub(crate) fn send_to(address: &std::ffi::OsStr, bytes: &[u8]) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let raw = address.as_bytes();
    let addr = match raw.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(address))?,
    };
    let n = sock.send_to_addr(bytes, &addr)?;
    if n != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write to NOTIFY_SOCKET"));
    }
    Ok(())
}

/// Sends `states` to the supervisor (`NOTIFY_SOCKET`); nothing set is success, as with
/// sd_notify(3). The wire format comes from the sd-notify crate.
pub(crate) fn notify_supervisor(states: &[sd_notify::NotifyState<'_>]) -> io::Result<()> {
    let Some(address) = supervisor_address() else { return Ok(()) };
    let text: String = states.iter().map(|s| format!("{s}\n")).collect();
    tracing::debug!(message = %text.trim_end().replace('\n', " "), "notifying the supervisor");
    send_to(&address, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_understands_the_keys() {
        let m = parse(b"READY=1\nSTATUS=warming up\nEXTEND_TIMEOUT_USEC=2500000\nERRNO=2\nMAINPID=42\nX=y\n");
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("warming up"));
        assert_eq!(m.extend_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(m.errno, Some(2));
        assert_eq!(m.mainpid, Some(42));
    }

    #[test]
    fn parse_survives_garbage() {
        for bytes in [
            &b""[..],
            b"\n\n\n",
            b"READY",
            b"READY=0",
            b"=\xff\xfe",
            b"STATUS=\xff\xfe",
            b"EXTEND_TIMEOUT_USEC=x",
            b"ERRNO=99999999999",
        ] {
            let m = parse(bytes);
            assert!(!m.ready);
        }
        assert_eq!(parse(b"STATUS=\xffok").status.as_deref(), Some("\u{fffd}ok"));
        let huge = vec![b'A'; 1 << 20];
        assert_eq!(parse(&huge), Message::default());
    }

    #[test]
    fn hosted_socket_receives_with_credentials() {
        let host = NotifyHost::bind().unwrap();
        send_to(OsString::from(host.env_value()).as_os_str(), b"READY=1\nSTATUS=hi").unwrap();
        let d = host.recv().unwrap().expect("a datagram");
        assert_eq!(d.pid, Some(std::process::id() as i32));
        let m = parse(&d.bytes);
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("hi"));
        assert!(host.recv().unwrap().is_none());
    }
}
