//! Who listens where: the listening sockets at a TCP address or a Unix socket path, and which
//! processes hold them.
//!
//! A connect that succeeds proves that *someone* listens, not that the program does: with
//! another server already on the port, a connect probe would call a program ready that will
//! never get its port, and a supervisor would send traffic to the stranger. So `tcp:` and
//! `unix:` look at the listening sockets themselves, by inode, and count only one that the
//! program's tree holds (`socket:[INODE]` among its fds in `/proc/PID/fd`): the program's own
//! fds first, then one walk of every process's, whose few holders are asked whether they are
//! the program's (`Process::contains`).
//!
//! The kernel is asked through sock_diag (`NETLINK_SOCK_DIAG`): listeners only, so a busy host's
//! thousands of connections are never walked, and for Unix sockets with the inode of the file
//! they are bound to, which identifies a path however the program spelled it in `bind()`.
//! Where sock_diag is missing (a container that cannot load `inet_diag` or `unix_diag`),
//! `/proc/net/tcp`, `tcp6` and `unix` are read instead (a Unix socket then matches by the path
//! it was bound with).
//!
//! conjure must be able to read the program's `/proc/PID/fd` (it runs as root, or as the
//! program's user): a program that made itself non-dumpable hides its fds from its own user,
//! and then a listener no visible process holds is taken to be the program's. So is any
//! listener when `/proc` is another PID namespace's (conjure as PID 1 without a `/proc` of its
//! own): no process there is one conjure could name.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use crate::error::DaemonizeError;
use crate::process::{self, Process};
use crate::readiness::{Source, absolute};

/// `TCP_LISTEN`, the state of a listening socket (TCP and Unix alike in sock_diag).
const TCP_LISTEN: u32 = 10;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_VFS: u32 = 2;
const UNIX_DIAG_VFS: u16 = 1;

/// An address the program is expected to listen on, and the means to look at it.
#[derive(Debug)]
pub(crate) struct Target {
    address: Address,
    diag: Diag,
}

#[derive(Debug)]
enum Address {
    /// `tcp:HOST:PORT`, with HOST's addresses, resolved before the fork.
    Tcp { port: u16, addrs: Vec<IpAddr> },
    /// `unix:PATH`, absolute.
    Unix(PathBuf),
}

/// Who holds the listeners at a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Nobody listens there.
    Nobody,
    /// The program's tree (or conjure itself, which hands its sockets to the program).
    Program,
    /// Someone else: these processes (none, when conjure cannot see the holder).
    Other(Vec<i32>),
}

impl Target {
    /// The address a `tcp:` or `unix:` source names (`None` for the other sources), a path
    /// made absolute, a host resolved. Runs before the fork: a host that does not resolve is
    /// a usage error now, not a timeout later, and the event loop never waits for a resolver.
    pub(crate) fn from_source(source: &Source) -> Result<Option<Target>, DaemonizeError> {
        Ok(match source {
            Source::Tcp(host, port) => Some(Target::tcp(host, *port).map_err(|why| {
                DaemonizeError::invalid(format!("invalid address `{source}`: cannot resolve host `{host}`: {why}"))
            })?),
            Source::Unix(path) => Some(Target::unix(absolute(path)?)),
            _ => None,
        })
    }

    /// A Unix socket target at `path` (absolute).
    pub(crate) fn unix(path: PathBuf) -> Target {
        Target { address: Address::Unix(path), diag: Diag::default() }
    }

    /// A TCP target: `host` resolved now (blocking), to at least one address.
    pub(crate) fn tcp(host: &str, port: u16) -> Result<Target, String> {
        let addrs: Vec<IpAddr> = (host, port).to_socket_addrs().map_err(|e| e.to_string())?.map(|a| a.ip()).collect();
        if addrs.is_empty() {
            return Err("it has no address".to_string());
        }
        Ok(Target { address: Address::Tcp { port, addrs }, diag: Diag::default() })
    }

    /// Inodes of the sockets listening at this address now.
    pub(crate) fn listeners(&mut self) -> Vec<u64> {
        match &self.address {
            Address::Tcp { port, addrs } => {
                let matches = |ip: IpAddr, p: u16| p == *port && addrs.iter().any(|a| covers(ip, *a));
                let all = tcp_listeners(&mut self.diag);
                all.into_iter().filter(|(ip, p, _)| matches(*ip, *p)).map(|(.., ino)| ino).collect()
            }
            Address::Unix(path) => unix_listeners(&mut self.diag, path),
        }
    }

    /// The target as an operator names it: `port 8000`, `` `/run/app.sock` ``.
    pub(crate) fn describe(&self) -> String {
        match &self.address {
            Address::Tcp { port, .. } => format!("port {port}"),
            Address::Unix(path) => format!("`{}`", path.display()),
        }
    }

    /// `port 8000 is already in use by pid 123 (python3)`.
    pub(crate) fn taken(&self, holders: &[i32]) -> String {
        let who = if holders.is_empty() {
            "another process".to_string()
        } else {
            holders.iter().map(|p| describe_process(*p)).collect::<Vec<_>>().join(", ")
        };
        format!("{} is already in use by {who}", self.describe())
    }

    /// Who holds what listens here: the program (`tree`, whose members count) or someone
    /// else. `Other` is only ever answered when some listener is there.
    pub(crate) fn owner(&mut self, tree: Option<&Process>) -> Owner {
        let inodes = self.listeners();
        if inodes.is_empty() {
            return Owner::Nobody;
        }
        let is_listener =
            |fd: &Path| std::fs::read_link(fd).ok().and_then(|t| socket_inode(&t)).is_some_and(|i| inodes.contains(&i));
        // The program itself first: the common case costs its fd table alone.
        let program = tree.map_or(0, Process::pid);
        let mut hidden = false;
        if program > 0 {
            match process::holds_fd(program, is_listener) {
                Ok(true) => return Owner::Program,
                Ok(false) => {}
                Err(_) => hidden = true,
            }
        }
        if process::holds_fd(std::process::id() as i32, is_listener).unwrap_or(false) {
            return Owner::Program;
        }
        // Then one walk of every process's fds, and the few holders it finds are asked whether
        // they are the program's.
        let holders = process::fd_holders(is_listener);
        if let Some(tree) = tree {
            if holders.found.iter().any(|p| tree.contains(*p)) {
                return Owner::Program;
            }
            if holders.found.is_empty() && (hidden || holders.unreadable.iter().any(|p| tree.contains(*p))) {
                tracing::debug!(
                    "a listener nobody visible holds, and the program's fds cannot be read: taken as the program's"
                );
                return Owner::Program;
            }
        }
        Owner::Other(holders.found)
    }
}

/// Whether a listener bound to `bound` takes connections to `target`: the same address, the
/// wildcard of its family (`::` takes IPv4 too, unless `IPV6_V6ONLY`, which conjure cannot
/// see), or an IPv4-mapped IPv6 address.
fn covers(bound: IpAddr, target: IpAddr) -> bool {
    let mapped = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (bound, target) = (mapped(bound), mapped(target));
    bound == target
        || match bound {
            IpAddr::V4(b) => b.is_unspecified() && target.is_ipv4(),
            IpAddr::V6(b) => b.is_unspecified(),
        }
}

/// `pid 123 (python3)`, or `pid 123` when its name cannot be read.
fn describe_process(pid: i32) -> String {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => format!("pid {pid} ({})", comm.trim_end()),
        Err(_) => format!("pid {pid}"),
    }
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Listening TCP sockets: (address, port, inode).
fn tcp_listeners(diag: &mut Diag) -> Vec<(IpAddr, u16, u64)> {
    let mut found = Vec::new();
    let mut diag_ok = true;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let mut req = [0u8; 56];
        req[0] = family;
        req[1] = libc::IPPROTO_TCP as u8;
        req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        let each = |m: &[u8]| {
            // inet_diag_msg: family, state, timer, retrans; sockid (sport, dport, src[16],
            // dst[16], if, cookie[2]); expires, rqueue, wqueue, uid, inode.
            if m.len() < 72 || u32::from(m[1]) != TCP_LISTEN {
                return;
            }
            let port = u16::from_be_bytes([m[4], m[5]]);
            let ip = match m[0] as i32 {
                libc::AF_INET => IpAddr::V4(Ipv4Addr::new(m[8], m[9], m[10], m[11])),
                _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&m[8..24]).unwrap_or_default())),
            };
            found.push((ip, port, u64::from(u32_at(m, 68))));
        };
        if let Err(e) = diag.dump(&req, each) {
            tracing::debug!(error = %e, "sock_diag unavailable for TCP; reading /proc/net");
            diag_ok = false;
            break;
        }
    }
    if diag_ok {
        return found;
    }
    let mut found = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        found.extend(text.lines().skip(1).filter_map(parse_proc_tcp));
    }
    found
}

/// One line of `/proc/net/tcp{,6}`, when it is a listener: (address, port, inode).
fn parse_proc_tcp(line: &str) -> Option<(IpAddr, u16, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.get(3) != Some(&"0A") {
        return None;
    }
    let (addr, port) = f.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Each 32-bit word is printed in host order.
    let word = |i: usize| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port, f.get(9)?.parse().ok()?))
}

/// Listening Unix stream sockets bound to the file at `path`: inodes.
fn unix_listeners(diag: &mut Diag, path: &Path) -> Vec<u64> {
    let Ok(meta) = std::fs::metadata(path) else { return Vec::new() };
    let (major, minor) = (nix::sys::stat::major(meta.dev()), nix::sys::stat::minor(meta.dev()));
    let mut found = Vec::new();
    let mut req = [0u8; 24];
    req[0] = libc::AF_UNIX as u8;
    req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req[12..16].copy_from_slice(&UDIAG_SHOW_VFS.to_ne_bytes());
    let each = |m: &[u8]| {
        // unix_diag_msg: family, type, state, pad, ino, cookie[2]; then attributes.
        if m.len() < 16 || m[1] as i32 != libc::SOCK_STREAM || u32::from(m[2]) != TCP_LISTEN {
            return;
        }
        let ino = u32_at(m, 4);
        let mut at = 16;
        while at + 4 <= m.len() {
            let len = u16::from_ne_bytes([m[at], m[at + 1]]) as usize;
            let kind = u16::from_ne_bytes([m[at + 2], m[at + 3]]);
            if len < 4 || at + len > m.len() {
                break;
            }
            if kind == UNIX_DIAG_VFS && len >= 12 {
                // The device as the kernel keeps it: major << 20 | minor.
                let (vfs_ino, vfs_dev) = (u32_at(m, at + 4), u32_at(m, at + 8));
                if u64::from(vfs_ino) == meta.ino()
                    && u64::from(vfs_dev >> 20) == major
                    && u64::from(vfs_dev & 0xf_ffff) == minor
                {
                    found.push(u64::from(ino));
                }
            }
            at += len.div_ceil(4) * 4;
        }
    };
    match diag.dump(&req, each) {
        Ok(()) => found,
        Err(e) => {
            tracing::debug!(error = %e, "sock_diag unavailable for Unix sockets; reading /proc/net/unix");
            let Ok(text) = std::fs::read_to_string("/proc/net/unix") else { return Vec::new() };
            text.lines().skip(1).filter_map(|l| parse_proc_unix(l, path)).collect()
        }
    }
}

/// One line of `/proc/net/unix`, when it is a stream listener bound to `path`: its inode.
fn parse_proc_unix(line: &str, path: &Path) -> Option<u64> {
    // Num RefCount Protocol Flags Type St Inode Path
    let f: Vec<&str> = line.split_whitespace().collect();
    let listening = u32::from_str_radix(f.get(3)?, 16).ok()? & 0x10000 != 0;
    let stream = f.get(4)? == &"0001";
    (listening && stream && Path::new(f.get(7)?) == path).then(|| f.get(6)?.parse().ok()).flatten()
}

/// For the fuzz target (`src/fuzz.rs`): the `/proc/net` line parsers.
#[cfg(fuzzing)]
pub(crate) fn fuzz(text: &str) {
    for line in text.lines() {
        let _ = parse_proc_tcp(line);
        let _ = parse_proc_unix(line, Path::new("/run/x.sock"));
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// A sock_diag socket and its receive buffer, kept from one probe to the next: made on first
/// use, and dropped after an error, so that a dump cut short leaves nothing for the next one.
#[derive(Debug, Default)]
struct Diag {
    socket: Option<OwnedFd>,
    buf: Vec<u8>,
}

/// The longest request payload (`inet_diag_req_v2`).
const MAX_REQUEST: usize = 56;

impl Diag {
    /// Sends one sock_diag dump request (`payload` after the netlink header) and hands each
    /// answer's payload to `each`, until the kernel says done. Bounded: a kernel that does not
    /// answer within a second is an error.
    fn dump(&mut self, payload: &[u8], each: impl FnMut(&[u8])) -> io::Result<()> {
        let result = self.dump_once(payload, each);
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    fn dump_once(&mut self, payload: &[u8], mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let sock = match self.socket.take() {
            Some(sock) => sock,
            None => {
                let sock = socket(
                    AddressFamily::Netlink,
                    SockType::Datagram,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::NetlinkSockDiag,
                )?;
                setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
                sock
            }
        };
        let sock = self.socket.insert(sock).as_raw_fd();
        let mut req = [0u8; 16 + MAX_REQUEST];
        let len = 16 + payload.len();
        let header = [
            &(len as u32).to_ne_bytes()[..],
            &SOCK_DIAG_BY_FAMILY.to_ne_bytes(),
            &(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes(),
            &1u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            payload,
        ];
        let mut at = 0;
        for part in header {
            let Some(slot) = req.get_mut(at..at + part.len()) else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "sock_diag: request too long"));
            };
            slot.copy_from_slice(part);
            at += part.len();
        }
        sendto(sock, &req[..len], &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        if self.buf.is_empty() {
            self.buf = vec![0u8; 32 * 1024];
        }
        let buf = &mut self.buf[..];
        loop {
            let n = match recv(sock, buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "sock_diag: no answer"));
            }
            let mut at = 0;
            while at + 16 <= n {
                let len = u32_at(buf, at) as usize;
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                if len < 16 || at + len > n {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "sock_diag: malformed answer"));
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = (u32_at(buf, at + 16) as i32).wrapping_neg();
                        return Err(io::Error::from_raw_os_error(errno.max(1)));
                    }
                    _ => each(&buf[at + 16..at + len]),
                }
                at += len.div_ceil(4) * 4;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_mapped_addresses_cover_their_family() {
        let v4 = |s: &str| IpAddr::V4(s.parse().unwrap());
        let v6 = |s: &str| IpAddr::V6(s.parse().unwrap());
        assert!(covers(v4("127.0.0.1"), v4("127.0.0.1")));
        assert!(covers(v4("0.0.0.0"), v4("127.0.0.1")));
        assert!(!covers(v4("0.0.0.0"), v6("::1")));
        assert!(covers(v6("::"), v4("127.0.0.1")));
        assert!(covers(v6("::ffff:127.0.0.1"), v4("127.0.0.1")));
        assert!(!covers(v4("127.0.0.2"), v4("127.0.0.1")));
    }

    #[test]
    fn proc_net_lines_parse() {
        let l =
            "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000";
        if cfg!(target_endian = "little") {
            assert_eq!(parse_proc_tcp(l), Some((IpAddr::V4(Ipv4Addr::LOCALHOST), 8080, 4242)));
        }
        assert_eq!(parse_proc_tcp(&l.replace(" 0A ", " 01 ")), None, "not a listener");
        assert_eq!(parse_proc_tcp("garbage"), None);
        let u = "0000000000000000: 00000002 00000000 00010000 0001 01 31337 /run/app.sock";
        assert_eq!(parse_proc_unix(u, Path::new("/run/app.sock")), Some(31337));
        assert_eq!(parse_proc_unix(u, Path::new("/run/other.sock")), None);
        assert_eq!(parse_proc_unix(&u.replace("00010000", "00000000"), Path::new("/run/app.sock")), None);
    }

    #[test]
    fn a_host_that_does_not_resolve_is_a_usage_error_naming_it() {
        let err = Target::from_source(&Source::Tcp("nonexistent.invalid".into(), 80)).unwrap_err();
        assert_eq!(err.exit_code(), 64);
        assert!(err.to_string().contains("`nonexistent.invalid`"), "{err}");
        let localhost = Target::from_source(&Source::Tcp("localhost".into(), 80)).unwrap();
        assert!(matches!(localhost, Some(Target { address: Address::Tcp { ref addrs, .. }, .. }) if !addrs.is_empty()));
    }

    #[test]
    fn a_listener_of_this_process_is_found_by_port_and_by_path() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut t = Target::tcp("127.0.0.1", port).unwrap();
        let inodes = t.listeners();
        assert_eq!(inodes.len(), 1);
        let is_listener = |fd: &Path| std::fs::read_link(fd).ok().and_then(|l| socket_inode(&l)) == Some(inodes[0]);
        assert!(process::holds_fd(std::process::id() as i32, is_listener).unwrap());
        assert_eq!(t.owner(None), Owner::Program, "conjure's own listener is handed to the program");
        drop(l);
        // Another test of this process may listen on the freed port at once: only this
        // listener's own socket must be gone.
        assert!(!t.listeners().contains(&inodes[0]), "a closed listener is still found");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut t = Target::unix(path.clone());
        assert!(t.listeners().is_empty());
        let u = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(t.listeners().len(), 1);
        drop(u);
        assert!(t.listeners().is_empty(), "a socket file nobody listens on is no listener");
    }
}
