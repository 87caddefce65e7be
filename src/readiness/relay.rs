//! The relay: sd_notify between the program and conjure's own supervisor, in one place.
//!
//! When conjure stays resident under a `Type=notify` unit it is the service's main process, so
//! only its datagrams count (`NotifyAccess=main`). The program gets a socket conjure hosts as
//! its `NOTIFY_SOCKET`, and [`Relay`] passes what arrives there on, as conjure's own:
//! - `MAINPID=` is dropped: conjure is the main process, and stays it.
//! - `READY=1` is held back until conjure has said `READY=1` itself, which it does when its
//!   own readiness source says so (with `--ready-on notify`, that is the program's `READY=1`).
//!   After that the program's `READY=1` passes (it ends a `RELOADING=1`).
//! - everything else passes unchanged and in order (`STATUS`, `ERRNO`, `BUSERROR`, `RELOADING`
//!   and `MONOTONIC_USEC`, `STOPPING`, `EXTEND_TIMEOUT_USEC`, `WATCHDOG=1`, `WATCHDOG=trigger`,
//!   `WATCHDOG_USEC`, `FDSTORE`, `FDSTOREREMOVE`, `FDNAME`, `FDPOLL`, `BARRIER`, and keys
//!   conjure does not know), with the fds that came with the datagram (`SCM_RIGHTS`).
//!
//! Input is hostile until proven otherwise: anyone in the network namespace can send to the
//! hosted socket. Each datagram is stamped with its sender's pid (`SO_PASSCRED`); only the
//! program's tree counts (the event loop decides who that is). Every fd that arrives is owned
//! from the instant it arrives (`sys::recv_with_fds`, with room for the kernel's maximum of 253
//! per message, so that nothing is truncated by size) and is either passed on or closed before
//! the next datagram is read: conjure's fd count does not grow, whatever anyone sends.
//!
//! Sending never blocks the event loop: one socket connected to the supervisor, non-blocking,
//! and a bounded queue that the loop flushes when the socket is writable. While that queue is
//! nearly full the loop stops reading the program's socket, so the program's messages wait in
//! the kernel, and a program that outpaces its supervisor is slowed down as it would be without
//! conjure, losing nothing; signals are still forwarded meanwhile. conjure's own messages keep
//! [`RESERVED`] places; a supervisor that stops reading altogether costs at most [`MAX_QUEUED`]
//! messages and [`MAX_QUEUED_FDS`] fds, and past that the oldest status lines go first, then
//! other droppable messages, never `READY`, `STOPPING`, `RELOADING` or `WATCHDOG` while a
//! droppable one is queued (repeats of a queued one collapse into it).
//!
//! The hot path allocates nothing per datagram: one receive buffer of systemd's own limit
//! (4096 bytes; a longer datagram, which systemd would ignore, is dropped with its fds), one
//! control buffer, one buffer for a rewritten message (written only when a line is dropped:
//! a message that passes unchanged is sent from the receive buffer), one pass over its lines
//! (what conjure acts on, what is dropped, how much it matters if it must wait), and the fds
//! handed to `sendmsg` from the stack.
//!
//! The other direction is the program's environment: [`watchdog_env`] says what becomes of
//! `WATCHDOG_USEC` and `WATCHDOG_PID`, which systemd sets for the main process (conjure), so
//! that the program either sees them naming itself or not at all.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

use crate::process::timeout_until;
use crate::readiness::notify::{NOTIFY_SOCKET, NotifyHost};
use crate::sys::{self, Ancillary};

/// Largest datagram relayed: systemd reads at most `NOTIFY_BUFFER_MAX` (`PIPE_BUF`, 4096)
/// bytes and ignores a longer datagram (its payload truncated), so conjure drops one as well,
/// with its fds, rather than pass on what would be lost anyway. (`recv_with_fds` asks with
/// `MSG_TRUNC`, which reports a longer one's true length: a buffer of exactly this size tells.)
const MAX_DATAGRAM: usize = 4096;
/// Messages waiting for a supervisor that does not read.
const MAX_QUEUED: usize = 64;
/// Of those, the places kept for conjure's own messages (`READY=1`, `WATCHDOG=1`): the
/// program's wait in the hosted socket once the rest is taken.
const RESERVED: usize = 8;
/// Fds waiting with them.
const MAX_QUEUED_FDS: usize = 512;
/// Datagrams read in one go before the event loop looks at everything else again.
const BATCH: usize = 32;
/// Longest `STATUS=` kept for a failure message.
const MAX_STATUS: usize = 512;
/// How long a one-shot message (a background launcher's `READY=1`) may wait for a supervisor
/// whose socket is full.
const SEND_PATIENCE: Duration = Duration::from_secs(5);

/// `WATCHDOG_USEC`: the supervisor's watchdog interval, when it is meant for this process
/// (`WATCHDOG_PID` names it, or is absent, as `sd_watchdog_enabled(3)` reads them).
pub(crate) fn supervisor_watchdog() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?.trim().parse::<u64>().ok().filter(|u| *u > 0)?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.trim().parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// What becomes of `WATCHDOG_USEC` and `WATCHDOG_PID` in the program's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchdogEnv {
    /// Neither is set: nothing to do.
    Absent,
    /// Keep `WATCHDOG_USEC`; `WATCHDOG_PID` becomes the program's own pid.
    ForProgram,
    /// Remove both: they are not conjure's to hand on, or the program's pings could not reach
    /// the supervisor.
    Remove,
}

/// Decides [`WatchdogEnv`]: `reaches` says whether what the program sends over sd_notify
/// reaches the supervisor as the main process's (relayed by resident conjure, or the program
/// talking to the supervisor itself once it is the main process).
pub(crate) fn watchdog_env(reaches: bool) -> WatchdogEnv {
    let set = std::env::var_os("WATCHDOG_USEC").is_some() || std::env::var_os("WATCHDOG_PID").is_some();
    match supervisor_watchdog() {
        Some(_) if reaches => WatchdogEnv::ForProgram,
        Some(_) => WatchdogEnv::Remove,
        None if set => WatchdogEnv::Remove,
        None => WatchdogEnv::Absent,
    }
}

/// The supervisor's socket from `NOTIFY_SOCKET`, if set: a path, or `@name` in the abstract
/// namespace.
pub(crate) fn supervisor_address() -> Option<OsString> {
    std::env::var_os(NOTIFY_SOCKET).filter(|v| !v.is_empty())
}

/// conjure's own message, in the wire format of the sd-notify crate (`KEY=VALUE\n` each),
/// written into `text` (cleared first; reused, it allocates nothing once large enough).
fn write_states(states: &[sd_notify::NotifyState<'_>], text: &mut String) {
    use std::fmt::Write as _;
    text.clear();
    for state in states {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{state}");
    }
}

/// Sends one message of conjure's own to the supervisor (`NOTIFY_SOCKET`) and waits, at most
/// [`SEND_PATIENCE`], for a full socket to take it. Nothing set is success, as with
/// sd_notify(3). For a process about to exit (a background launcher, the library's original
/// process); resident conjure sends through its [`Relay`] instead.
pub(crate) fn notify_supervisor(states: &[sd_notify::NotifyState<'_>]) -> io::Result<()> {
    let Some(address) = supervisor_address() else { return Ok(()) };
    let mut text = String::new();
    write_states(states, &mut text);
    tracing::debug!(message = %text.trim_end().replace('\n', " "), "notifying the supervisor");
    let mut upstream = Upstream::new(address);
    upstream.send(text.as_bytes(), &mut Vec::new())?;
    upstream.flush_within(Instant::now().checked_add(SEND_PATIENCE))
}

/// What a program's datagrams said that conjure itself acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Heard {
    /// `READY=1`.
    pub ready: bool,
    /// The last `EXTEND_TIMEOUT_USEC=`.
    pub extend: Option<Duration>,
    /// The last `WATCHDOG_USEC=`: the supervisor's watchdog changes.
    pub watchdog_usec: Option<Duration>,
    /// Nothing more waited on the program's socket (or it could not be read).
    pub emptied: bool,
}

/// The program's sd_notify messages in, the supervisor's out.
#[derive(Debug)]
pub(crate) struct Relay {
    host: Option<NotifyHost>,
    upstream: Option<Upstream>,
    /// conjure has told the supervisor `READY=1`: the program's own `READY=1` passes now.
    ready_sent: bool,
    buf: Box<[u8]>,
    out: Vec<u8>,
    /// conjure's own messages, formatted.
    text: String,
    ancillary: Ancillary,
    fds: Vec<OwnedFd>,
    status: Option<String>,
    errno: Option<i32>,
}

impl Relay {
    /// Hosts `host` for the program (if any) and, with `upstream`, passes what the program's
    /// tree says on to conjure's supervisor.
    pub(crate) fn new(host: Option<NotifyHost>, upstream: Option<Upstream>) -> Relay {
        Relay {
            host,
            upstream,
            ready_sent: false,
            buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
            out: Vec::with_capacity(MAX_DATAGRAM),
            text: String::with_capacity(64),
            ancillary: Ancillary::new(),
            fds: Vec::with_capacity(sys::MAX_FDS),
            status: None,
            errno: None,
        }
    }

    /// The hosted socket, to poll for input: only while the supervisor keeps up. When it does
    /// not, what the program sends waits in the hosted socket instead, and a program that
    /// sends faster than the supervisor reads is slowed down exactly as it would be sending
    /// to the supervisor itself: nothing is dropped on its way.
    pub(crate) fn host_fd(&self) -> Option<BorrowedFd<'_>> {
        self.host.as_ref().filter(|_| self.accepts()).map(AsFd::as_fd)
    }

    /// Whether the program's messages are read now: the supervisor's queue has room for them,
    /// and for conjure's own ([`RESERVED`] are kept for those).
    fn accepts(&self) -> bool {
        self.upstream.as_ref().is_none_or(Upstream::has_room)
    }

    /// The supervisor's socket, to poll for room, while messages wait.
    pub(crate) fn upstream_fd(&self) -> Option<BorrowedFd<'_>> {
        self.upstream.as_ref().filter(|u| u.pending()).and_then(Upstream::fd)
    }

    /// Whether there is a supervisor to tell.
    pub(crate) fn relays(&self) -> bool {
        self.upstream.is_some()
    }

    /// The last `STATUS=` the program sent.
    pub(crate) fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }

    /// The last `ERRNO=` the program sent.
    pub(crate) fn errno(&self) -> Option<i32> {
        self.errno
    }

    /// Receives what is queued on the hosted socket (at most a batch: the caller polls again),
    /// keeps the datagrams whose sender `owns` says is the program's, and relays them. Every fd
    /// that arrived is passed on or closed before this returns. With `pause_on_ready`, a
    /// `READY=1` held back ends the batch: conjure's own `READY=1` (which it stands for) must
    /// reach the supervisor before what the program said after it.
    pub(crate) fn receive(&mut self, owns: impl Fn(i32) -> bool, pause_on_ready: bool) -> Heard {
        let mut heard = Heard::default();
        let Relay { host, upstream, ready_sent, buf, out, ancillary, fds, status, errno, .. } = self;
        let Some(host) = host.as_ref() else { return heard };
        for _ in 0..BATCH {
            if upstream.as_ref().is_some_and(|u| !u.has_room()) {
                break;
            }
            fds.clear();
            let d = match sys::recv_with_fds(host.as_fd(), buf, ancillary, fds) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    heard.emptied = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the notify socket");
                    heard.emptied = true;
                    break;
                }
            };
            if d.truncated {
                tracing::debug!(len = d.len, fds = fds.len(), "dropping a truncated notify datagram");
                continue;
            }
            match d.pid {
                Some(pid) if owns(pid) => {}
                sender => {
                    tracing::debug!(?sender, fds = fds.len(), "ignoring a notify datagram from outside the program");
                    continue;
                }
            }
            let bytes = &buf[..d.len];
            let reading = read_message(bytes, *ready_sent, out, &mut heard, status, errno);
            let held_ready = heard.ready && !*ready_sent;
            if let Some(up) = upstream.as_mut()
                && reading.content
            {
                let message: &[u8] = if reading.rewritten { out } else { bytes };
                if let Err(e) = up.send_as(message, fds, Some(reading.class)) {
                    tracing::debug!(error = %e, "cannot relay a notify message");
                }
            }
            if held_ready && pause_on_ready {
                break;
            }
        }
        fds.clear();
        heard
    }

    /// Sends a message of conjure's own (`READY=1`, `WATCHDOG=1`) through the queue. Nothing to
    /// do without a supervisor. A `READY=1` lets the program's own `READY=1` through afterwards.
    pub(crate) fn tell(&mut self, states: &[sd_notify::NotifyState<'_>]) -> io::Result<()> {
        if states.iter().any(|s| matches!(s, sd_notify::NotifyState::Ready)) {
            self.ready_sent = true;
        }
        let Some(up) = self.upstream.as_mut() else { return Ok(()) };
        write_states(states, &mut self.text);
        tracing::debug!(message = %self.text.trim_end().replace('\n', " "), "notifying the supervisor");
        up.send(self.text.as_bytes(), &mut Vec::new())
    }

    /// The supervisor's socket has room: sends what waits.
    pub(crate) fn flush(&mut self) {
        if let Some(up) = self.upstream.as_mut() {
            up.flush();
        }
    }

    /// The program ended: relays everything still waiting on its socket (held back there while
    /// the supervisor's queue was full) and sends what waits, for at most until `deadline`:
    /// what it said last must not be lost, but conjure must not hang on a supervisor that does
    /// not read, nor on a tree that goes on talking.
    pub(crate) fn finish(&mut self, owns: impl Fn(i32) -> bool, deadline: Option<Instant>) {
        loop {
            let heard = self.receive(&owns, false);
            if let Some(up) = self.upstream.as_mut()
                && let Err(e) = up.flush_within(deadline)
            {
                tracing::debug!(error = %e, left = up.queue.len(), "notify messages not delivered");
                return;
            }
            if heard.emptied || deadline.is_none_or(|d| Instant::now() >= d) {
                return;
            }
        }
    }
}

/// What [`read_message`] made of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    /// What passes on differs from the datagram, and was written out.
    rewritten: bool,
    /// What passes on has a line that is not empty: it is worth sending.
    content: bool,
    /// What passes on, classified (without its fds).
    class: Class,
}

/// Reads one datagram in one pass: notes what conjure acts on, classifies what passes on, and,
/// only once a line is dropped (a `MAINPID=`, a held `READY=1`), writes into `out` the message
/// to pass on instead: the lines kept, joined by newlines. A datagram that passes unchanged,
/// the common case, is not copied.
fn read_message(
    bytes: &[u8],
    ready_sent: bool,
    out: &mut Vec<u8>,
    heard: &mut Heard,
    status: &mut Option<String>,
    errno: &mut Option<i32>,
) -> Reading {
    out.clear();
    let mut reading = Reading { rewritten: false, content: false, class: Class::Status };
    let mut class = Classifier::default();
    let mut at = 0;
    for line in bytes.split(|b| *b == b'\n') {
        let start = at;
        at += line.len() + 1;
        let (key, value) = match line.iter().position(|b| *b == b'=') {
            Some(eq) => (&line[..eq], &line[eq + 1..]),
            None => (line, &b""[..]),
        };
        let number = || std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<u64>().ok());
        let keep = match key {
            b"MAINPID" => false,
            b"READY" if value == b"1" => {
                heard.ready = true;
                ready_sent
            }
            b"STATUS" => {
                clean_status(value, status.get_or_insert_with(String::new));
                true
            }
            b"ERRNO" => {
                *errno = number().and_then(|n| i32::try_from(n).ok());
                true
            }
            b"EXTEND_TIMEOUT_USEC" => {
                heard.extend = number().map(Duration::from_micros);
                true
            }
            b"WATCHDOG_USEC" => {
                heard.watchdog_usec = number().filter(|u| *u > 0).map(Duration::from_micros);
                true
            }
            _ => true,
        };
        if !keep {
            if !reading.rewritten {
                // The lines before this one, all kept: joined as below, which leaves out the
                // empty ones in front.
                reading.rewritten = true;
                let before = bytes.get(..start.saturating_sub(1)).unwrap_or_default();
                let first = before.iter().position(|b| *b != b'\n').unwrap_or(before.len());
                out.extend_from_slice(&before[first..]);
            }
            continue;
        }
        reading.content |= !line.is_empty();
        class.line(line, key);
        if reading.rewritten {
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(line);
        }
    }
    reading.class = class.class(0);
    reading
}

/// For the fuzz target (`src/fuzz.rs`): reads a datagram as the relay does, before and after
/// conjure's own `READY=1`.
#[cfg(fuzzing)]
pub(crate) fn fuzz(bytes: &[u8]) {
    let (mut out, mut status, mut errno) = (Vec::new(), None, None);
    for ready_sent in [false, true] {
        let _ = read_message(bytes, ready_sent, &mut out, &mut Heard::default(), &mut status, &mut errno);
        let _ = classify(bytes, 0);
    }
}

/// Keeps a status line in `into` (reused: no allocation once it is large enough), fit for a
/// one-line failure message: lossy UTF-8, control characters as spaces, at most
/// [`MAX_STATUS`] characters.
fn clean_status(value: &[u8], into: &mut String) {
    into.clear();
    into.extend(String::from_utf8_lossy(value).chars().take(MAX_STATUS).map(|c| if c.is_control() { ' ' } else { c }));
}

/// How much a queued message matters, for choosing what to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Only `STATUS=`, `ERRNO=`, `BUSERROR=`: the next one says more.
    Status,
    /// Anything else that may be lost without changing the service's state.
    Other,
    /// `READY`, `STOPPING`, `RELOADING`, `WATCHDOG`: never dropped while something else can be.
    Essential,
}

/// A message's [`Class`], learnt a line at a time (`line` and its key, the part before `=`).
#[derive(Debug, Clone, Copy)]
struct Classifier {
    essential: bool,
    status_only: bool,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier { essential: false, status_only: true }
    }
}

impl Classifier {
    fn line(&mut self, line: &[u8], key: &[u8]) {
        if line.is_empty() {
            return;
        }
        match key {
            b"READY" | b"STOPPING" | b"RELOADING" | b"WATCHDOG" => self.essential = true,
            b"STATUS" | b"ERRNO" | b"BUSERROR" => {}
            _ => self.status_only = false,
        }
    }

    /// The class of the message, sent with `fds` fds.
    fn class(&self, fds: usize) -> Class {
        if self.essential {
            Class::Essential
        } else if self.status_only && fds == 0 {
            Class::Status
        } else {
            Class::Other
        }
    }
}

fn classify(bytes: &[u8], fds: usize) -> Class {
    let mut class = Classifier::default();
    for line in bytes.split(|b| *b == b'\n') {
        class.line(line, line.split(|b| *b == b'=').next().unwrap_or(line));
    }
    class.class(fds)
}

#[derive(Debug)]
struct Pending {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    class: Class,
}

/// conjure's supervisor: one socket connected to `NOTIFY_SOCKET`, non-blocking, and the
/// messages waiting for it to have room.
#[derive(Debug)]
pub(crate) struct Upstream {
    address: OsString,
    socket: Option<UnixDatagram>,
    queue: VecDeque<Pending>,
    queued_fds: usize,
}

impl Upstream {
    /// The supervisor at `address` (a path, or `@name`); connected on first use.
    pub(crate) fn new(address: OsString) -> Upstream {
        Upstream { address, socket: None, queue: VecDeque::new(), queued_fds: 0 }
    }

    /// The supervisor of this process (`NOTIFY_SOCKET`), if it has one.
    pub(crate) fn from_env() -> Option<Upstream> {
        supervisor_address().map(Upstream::new)
    }

    fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether a program's message (with up to the kernel's most fds) still fits without
    /// taking a place kept for conjure's own.
    fn has_room(&self) -> bool {
        self.queue.len() < MAX_QUEUED - RESERVED && self.queued_fds + sys::MAX_FDS <= MAX_QUEUED_FDS
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.socket.as_ref().map(AsFd::as_fd)
    }

    /// A connected socket: connected, a datagram socket's `poll` says whether the peer's queue
    /// has room (unconnected, it would always say yes, and a full supervisor would spin the loop).
    fn connected(&mut self) -> io::Result<&UnixDatagram> {
        if self.socket.is_none() {
            let sock = UnixDatagram::unbound()?;
            let raw = self.address.as_bytes();
            match raw.strip_prefix(b"@") {
                Some(name) => sock.connect_addr(&SocketAddr::from_abstract_name(name)?)?,
                None => sock.connect(OsStr::from_bytes(raw))?,
            }
            sock.set_nonblocking(true)?;
            self.socket = Some(sock);
        }
        Ok(self.socket.as_ref().expect("connected just above"))
    }

    /// Sends `bytes` with `fds` (which are taken, whatever happens) now, or queues them while
    /// the supervisor has no room. An error means the message is lost.
    pub(crate) fn send(&mut self, bytes: &[u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
        self.send_as(bytes, fds, None)
    }

    /// [`send`](Self::send), with the message's class (without its fds) when the caller knows
    /// it already; otherwise it is read from `bytes` if the message must wait.
    fn send_as(&mut self, bytes: &[u8], fds: &mut Vec<OwnedFd>, class: Option<Class>) -> io::Result<()> {
        if self.queue.is_empty() {
            match self.try_send(bytes, fds) {
                Ok(true) => {
                    fds.clear();
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => {
                    fds.clear();
                    return Err(e);
                }
            }
        }
        self.enqueue(bytes, fds, class);
        self.flush();
        Ok(())
    }

    /// Queues a message, making room first.
    fn enqueue(&mut self, bytes: &[u8], fds: &mut Vec<OwnedFd>, class: Option<Class>) {
        let class = match class {
            // With fds, a status line is more than a status line.
            Some(Class::Status) if !fds.is_empty() => Class::Other,
            Some(class) => class,
            None => classify(bytes, fds.len()),
        };
        if class == Class::Essential
            && fds.is_empty()
            && self.queue.iter().any(|p| p.class == Class::Essential && p.fds.is_empty() && p.bytes == bytes)
        {
            // The same state is already on its way: a repeat says nothing more.
            fds.clear();
            return;
        }
        while self.queue.len() >= MAX_QUEUED || self.queued_fds + fds.len() > MAX_QUEUED_FDS {
            let victim = [Class::Status, Class::Other]
                .iter()
                .find_map(|c| self.queue.iter().position(|p| p.class == *c))
                .unwrap_or(0);
            let Some(dropped) = self.queue.remove(victim) else { break };
            self.queued_fds -= dropped.fds.len();
            tracing::debug!(class = ?dropped.class, fds = dropped.fds.len(), "supervisor does not read; dropped a notify message");
        }
        self.queued_fds += fds.len();
        self.queue.push_back(Pending { bytes: bytes.to_vec(), fds: std::mem::take(fds), class });
    }

    /// Sends queued messages until the supervisor has no room or none is left. A message that
    /// cannot be sent for another reason is dropped.
    pub(crate) fn flush(&mut self) {
        while let Some(front) = self.queue.pop_front() {
            let mut fds = front.fds;
            match self.try_send(&front.bytes, &fds) {
                Ok(true) => self.queued_fds -= fds.len(),
                Ok(false) => {
                    self.queue.push_front(Pending { bytes: front.bytes, fds, class: front.class });
                    return;
                }
                Err(e) => {
                    self.queued_fds -= fds.len();
                    fds.clear();
                    tracing::debug!(error = %e, "cannot send a notify message");
                }
            }
        }
    }

    /// Flushes, waiting for room until `deadline` (`None`: without waiting).
    pub(crate) fn flush_within(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        loop {
            self.flush();
            if self.queue.is_empty() {
                return Ok(());
            }
            if deadline.is_none_or(|d| Instant::now() >= d) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the supervisor does not read its notify socket"));
            }
            let Some(fd) = self.fd() else { return Ok(()) };
            let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
            match poll(&mut fds, timeout_until(deadline)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One attempt: `Ok(false)` when the supervisor has no room. A socket whose peer went
    /// away (the supervisor re-created its socket) is connected again, once; an interrupted
    /// send is retried, without using that up.
    fn try_send(&mut self, bytes: &[u8], fds: &[OwnedFd]) -> io::Result<bool> {
        // On the stack: no allocation per message.
        let mut raw = [0 as RawFd; sys::MAX_FDS];
        let Some(raw) = raw.get_mut(..fds.len()) else { return Err(io::Error::from_raw_os_error(libc::EINVAL)) };
        for (slot, fd) in raw.iter_mut().zip(fds) {
            *slot = fd.as_raw_fd();
        }
        let rights = [ControlMessage::ScmRights(raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let mut reconnected = false;
        loop {
            let sock = self.connected()?.as_raw_fd();
            match sendmsg::<UnixAddr>(sock, &[IoSlice::new(bytes)], cmsgs, flags, None) {
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::ECONNREFUSED | nix::errno::Errno::ENOTCONN) if !reconnected => {
                    reconnected = true;
                    self.socket = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A relay to test with: it hosts a fresh socket and relays to a supervisor's socket bound in
/// `dir`. Returns it, the supervisor's socket (non-blocking) and a socket connected to the
/// hosted one, to send as the program would.
#[cfg(test)]
pub(crate) fn relaying_in(dir: &std::path::Path) -> (Relay, UnixDatagram, UnixDatagram) {
    let path = dir.join("sup");
    let sup = UnixDatagram::bind(&path).unwrap();
    sup.set_nonblocking(true).unwrap();
    let host = NotifyHost::bind().unwrap();
    let addr = SocketAddr::from_abstract_name(&host.env_value().as_bytes()[1..]).unwrap();
    let sender = UnixDatagram::unbound().unwrap();
    sender.connect_addr(&addr).unwrap();
    (Relay::new(Some(host), Some(Upstream::new(path.into_os_string()))), sup, sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], ready_sent: bool) -> (Option<String>, Heard, Option<String>) {
        let mut out = Vec::new();
        let mut heard = Heard::default();
        let (mut status, mut errno) = (None, None);
        let reading = read_message(bytes, ready_sent, &mut out, &mut heard, &mut status, &mut errno);
        let passed = if reading.rewritten {
            String::from_utf8_lossy(&out).into_owned()
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        };
        let _ = errno;
        (Some(passed), heard, status)
    }

    #[test]
    fn mainpid_is_dropped_and_ready_held_until_conjure_said_it() {
        let (passed, heard, status) = read(b"MAINPID=42\nSTATUS=warming up\nREADY=1", false);
        assert_eq!(passed.as_deref(), Some("STATUS=warming up"));
        assert!(heard.ready);
        assert_eq!(status.as_deref(), Some("warming up"));
        let (passed, ..) = read(b"RELOADING=1\nMONOTONIC_USEC=5", true);
        assert_eq!(passed.as_deref(), Some("RELOADING=1\nMONOTONIC_USEC=5"), "passed verbatim");
        let (passed, ..) = read(b"STATUS=ok\nREADY=1\n", true);
        assert_eq!(passed.as_deref(), Some("STATUS=ok\nREADY=1\n"));
    }

    #[test]
    fn only_a_message_that_changes_is_copied_and_it_keeps_its_other_lines_as_they_were() {
        let (mut out, mut heard, mut status, mut errno) = (Vec::new(), Heard::default(), None, None);
        let mut reading = |bytes: &[u8], ready_sent: bool, out: &mut Vec<u8>| {
            read_message(bytes, ready_sent, out, &mut heard, &mut status, &mut errno)
        };
        let r = reading(b"STATUS=x\nWATCHDOG=1\n", true, &mut out);
        assert_eq!(r, Reading { rewritten: false, content: true, class: Class::Essential });
        assert!(out.is_empty(), "a message passed unchanged was copied");
        let r = reading(b"\nSTATUS=a\n\nMAINPID=1\nX=1\n", true, &mut out);
        assert_eq!(r, Reading { rewritten: true, content: true, class: Class::Other });
        assert_eq!(out, b"STATUS=a\n\nX=1\n");
        let r = reading(b"\n\nMAINPID=1\nSTATUS=a", true, &mut out);
        assert_eq!((r.class, out.as_slice()), (Class::Status, &b"STATUS=a"[..]));
        let r = reading(b"MAINPID=1\nREADY=1\n", false, &mut out);
        assert_eq!(r, Reading { rewritten: true, content: false, class: Class::Status }, "nothing left to send");
        assert!(!reading(b"\n\n", true, &mut out).content);
    }

    /// systemd ignores a datagram longer than 4096 bytes: one that long passes, a longer one is
    /// dropped here, and the fd it carried is closed.
    #[test]
    fn a_datagram_longer_than_systemd_reads_is_dropped_with_its_fds() {
        // systemd's own limit, whatever conjure's buffer.
        const NOTIFY_BUFFER_MAX: usize = 4096;
        let dir = tempfile::tempdir().unwrap();
        let (mut relay, sup, sender) = relaying_in(dir.path());
        let status = |len: usize| [b"STATUS=".as_slice(), &vec![b'x'; len - 7]].concat();
        // A file only this test opens: whether any fd of this process still points at it.
        let marked = dir.path().join("passed");
        let passed = std::fs::File::create(&marked).unwrap();
        let held = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).ok() == Some(marked.clone()))
        };
        let fds = [passed.as_raw_fd()];
        let rights = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            sender.as_raw_fd(),
            &[IoSlice::new(&status(NOTIFY_BUFFER_MAX + 1))],
            &rights,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(passed);
        sender.send(&status(NOTIFY_BUFFER_MAX)).unwrap();
        relay.receive(|_| true, false);
        let mut buf = vec![0u8; 2 * NOTIFY_BUFFER_MAX];
        assert_eq!(sup.recv(&mut buf).unwrap(), NOTIFY_BUFFER_MAX, "the longest datagram systemd reads was not passed");
        assert!(sup.recv(&mut buf).is_err(), "a datagram longer than systemd reads was passed on");
        assert!(!held(), "the fd of a dropped datagram was kept");
    }

    #[test]
    fn the_keys_conjure_acts_on_are_read() {
        let mut out = Vec::new();
        let mut heard = Heard::default();
        let (mut status, mut errno) = (None, None);
        read_message(
            b"EXTEND_TIMEOUT_USEC=2500000\nERRNO=2\nWATCHDOG_USEC=4000000\nSTATUS=a\x07b\nX=y",
            false,
            &mut out,
            &mut heard,
            &mut status,
            &mut errno,
        );
        assert_eq!(heard.extend, Some(Duration::from_millis(2500)));
        assert_eq!(heard.watchdog_usec, Some(Duration::from_secs(4)));
        assert_eq!(errno, Some(2));
        assert_eq!(status.as_deref(), Some("a b"));
    }

    #[test]
    fn garbage_is_survived() {
        for bytes in [&b""[..], b"\n\n\n", b"READY", b"READY=0", b"=\xff\xfe", b"STATUS=\xff\xfe", b"ERRNO=99999999999"]
        {
            let (_, heard, _) = read(bytes, false);
            assert!(!heard.ready);
        }
        let huge = vec![b'A'; 1 << 20];
        let (_, heard, status) = read(&huge, false);
        assert_eq!((heard, status), (Heard::default(), None));
        let (_, _, status) = read(&[b"STATUS=".as_slice(), &[b'x'; 4000]].concat(), false);
        assert_eq!(status.map(|s| s.len()), Some(MAX_STATUS));
    }

    #[test]
    fn classes() {
        assert_eq!(classify(b"STATUS=x", 0), Class::Status);
        assert_eq!(classify(b"STATUS=x\nERRNO=2", 0), Class::Status);
        assert_eq!(classify(b"STATUS=x", 1), Class::Other);
        assert_eq!(classify(b"FDSTORE=1\nFDNAME=a", 1), Class::Other);
        assert_eq!(classify(b"STATUS=x\nREADY=1", 0), Class::Essential);
        assert_eq!(classify(b"WATCHDOG=1", 0), Class::Essential);
        assert_eq!(classify(b"STOPPING=1", 0), Class::Essential);
    }

    /// Fds waiting for a supervisor that does not read are bounded too: conjure's fd count
    /// stays below a fixed cap whatever the program sends.
    #[test]
    fn queued_fds_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sup");
        let _sup = UnixDatagram::bind(&path).unwrap();
        let mut up = Upstream::new(path.into_os_string());
        let open = || std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
        let before = open();
        let mut capped = false;
        for _ in 0..40 {
            let mut fds: Vec<OwnedFd> = (0..100).map(|_| std::fs::File::open("/dev/null").unwrap().into()).collect();
            match up.send(b"FDSTORE=1", &mut fds) {
                Ok(()) => {}
                // Without CAP_SYS_RESOURCE the kernel caps the fds a user has in flight: the
                // message is lost, and its fds are closed all the same.
                Err(e) if e.raw_os_error() == Some(libc::ETOOMANYREFS) => capped = true,
                Err(e) => panic!("send: {e}"),
            }
            assert!(fds.is_empty(), "the fds were neither queued nor closed");
            assert!(up.queued_fds <= MAX_QUEUED_FDS);
        }
        assert!(up.pending() || capped, "the supervisor's socket never filled");
        assert_eq!(up.queued_fds, up.queue.iter().map(|p| p.fds.len()).sum::<usize>());
        let grown = open().saturating_sub(before);
        assert!(grown <= MAX_QUEUED_FDS + 1, "conjure holds {grown} more fds");
        drop(up);
        assert!(open() <= before + 1, "dropping the queue closes its fds");
    }

    /// A supervisor that does not read: the queue stays bounded, status lines go first, READY
    /// and WATCHDOG stay, and everything arrives in order once it reads.
    #[test]
    fn a_supervisor_that_does_not_read_costs_a_bounded_queue_and_never_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sup");
        let sup = UnixDatagram::bind(&path).unwrap();
        let mut up = Upstream::new(path.clone().into_os_string());
        let mut sent = 0;
        // Fill the supervisor's queue, then some.
        for i in 0..2000 {
            up.send(format!("STATUS=flood {i}").as_bytes(), &mut Vec::new()).unwrap();
            sent += 1;
            if up.queue.len() == MAX_QUEUED {
                break;
            }
        }
        assert_eq!(up.queue.len(), MAX_QUEUED, "the supervisor's socket never filled after {sent} messages");
        up.send(b"READY=1", &mut Vec::new()).unwrap();
        up.send(b"WATCHDOG=1", &mut Vec::new()).unwrap();
        up.send(b"WATCHDOG=1", &mut Vec::new()).unwrap();
        for i in 0..200 {
            up.send(format!("STATUS=late {i}").as_bytes(), &mut Vec::new()).unwrap();
        }
        assert!(up.queue.len() <= MAX_QUEUED);
        let essentials: Vec<&[u8]> =
            up.queue.iter().filter(|p| p.class == Class::Essential).map(|p| p.bytes.as_slice()).collect();
        assert_eq!(essentials, [&b"READY=1"[..], b"WATCHDOG=1"], "a repeated ping collapses into the queued one");
        // The supervisor reads: everything queued arrives, READY=1 among it, in order.
        sup.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let end = Instant::now() + Duration::from_secs(10);
        while up.pending() && Instant::now() < end {
            while let Ok(n) = sup.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            up.flush();
        }
        while let Ok(n) = sup.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let ready = got.iter().position(|m| m == "READY=1").expect("READY=1 was dropped");
        assert!(got.iter().position(|m| m == "WATCHDOG=1").expect("WATCHDOG=1 was dropped") > ready);
        assert_eq!(got.last().map(String::as_str), Some("STATUS=late 199"));
    }
}
