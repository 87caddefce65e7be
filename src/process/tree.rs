//! [`Process`]: a program conjure started (or a daemon `stop` was asked to end), and the one way
//! anything is stopped.
//!
//! Stopping only the main pid leaves half a service behind: `sh -c 'sleep 300 & exec server'`
//! keeps `sleep`, and the pidfile lock it inherited, once `server` is gone. So a program is
//! always stopped with its tree, found the way the kernel records it in `/proc`: every process
//! that descends from it, every member of the session or process group conjure made for it,
//! and, where conjure is their subreaper, the orphans it adopted. [`Process::terminate`] sends
//! the first signal to all of them (and SIGCONT, so that a stopped one can act on it), waits for
//! the grace period, then SIGKILLs whatever is left. Failed starts, interrupted starts,
//! `conjure stop`, resident conjure and PID 1 all stop programs through it and nothing else.
//!
//! The program itself is signalled through its pidfd, so a recycled pid is never hit; other
//! members by pid, read from `/proc` a moment before (the kernel never reuses a pid while it
//! names a live session or group, and a member that died and was replaced in that moment would
//! have to join the same tree to be signalled). Waiting polls the pidfds of at most a few
//! members at a time, so no program can grow conjure's fd table by forking.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::process::WaitStatus;
use crate::sys;

/// How long processes may take to die after SIGKILL before conjure gives up on them.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(10);

/// At most this many members are waited for through pidfds at once.
const WATCHED: usize = 8;

/// The fields of `/proc/PID/stat` that place a process in a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub pid: i32,
    /// State letter: `R`, `S`, `T`, `Z`, …
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// When it started, in clock ticks since boot.
    pub start_ticks: u64,
}

impl Stat {
    /// Whether the process has exited (a zombie waiting to be reaped, or on its way out).
    pub(crate) fn dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// `/proc/PID/stat`, read after the last `)` since the command name may hold spaces and
/// parentheses. `None` when the process is gone, or when `/proc` is not this process's
/// ([`proc_is_ours`]).
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    if !proc_is_ours() {
        return None;
    }
    // One open, one read, into the stack: a survey reads this for every process on the
    // machine, and `std::fs::read` costs a path and a buffer allocation, an fstat and a read
    // per doubling of its buffer (procfs reports size 0): nine syscalls instead of four.
    use std::io::{Read as _, Write as _};
    let mut path = [0u8; 32];
    let mut cursor = &mut path[..];
    write!(cursor, "/proc/{pid}/stat").ok()?;
    let len = 32 - cursor.len();
    let path = std::ffi::OsStr::from_bytes(path.get(..len)?);
    let mut file = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 2048];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(buf.get_mut(filled..)?) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    if filled == buf.len() {
        // Longer than any stat line seen; read it the slow way.
        return parse_stat(pid, &std::fs::read(path).ok()?);
    }
    parse_stat(pid, buf.get(..filled)?)
}

fn parse_stat(pid: i32, bytes: &[u8]) -> Option<Stat> {
    let close = bytes.iter().rposition(|b| *b == b')')?;
    let mut rest = std::str::from_utf8(&bytes[close + 1..]).ok()?.split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    let mut num = || rest.next()?.parse::<i32>().ok();
    let (ppid, pgrp, session) = (num()?, num()?, num()?);
    // Fields 7 to 21 (tty_nr … itrealvalue), then starttime.
    let start_ticks = rest.nth(15).and_then(|t| t.parse().ok()).unwrap_or(0);
    Some(Stat { pid, state, ppid, pgrp, session, start_ticks })
}

/// Whether `/proc` shows this process's own PID namespace: `/proc/self` names our pid.
///
/// conjure as PID 1 of a PID namespace started without a `/proc` of its own (`unshare --pid
/// --fork` without `--mount-proc`, a hand-made container) sees the host's `/proc`: its pids
/// and parents are another namespace's. Read as ours, every host process whose parent is the
/// host's init looked like an orphan of conjure's (PID 1) to be stopped, by numbers that, in
/// conjure's namespace, may name other processes; and each exit waited out the grace period.
/// A `/proc` that is not ours shows no process at all: conjure then knows its tree through
/// `waitpid` and pidfds alone.
pub(crate) fn proc_is_ours() -> bool {
    static OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // The answer is the mount's and the namespace's, which no later fork changes; a process
    // that cannot read the link (no /proc) finds no process in it either.
    *OURS.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            .is_some_and(|pid| pid == std::process::id())
    })
}

/// Every process in `/proc`, with its place in the tree (none when `/proc` is not ours).
pub(crate) fn all() -> Vec<Stat> {
    if !proc_is_ours() {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter_map(stat).collect()
}

/// `pid` and its ancestors, nearest first, by parent links in `/proc` (none when `/proc` is not
/// ours); at most 4096 of them, so a table changing underneath cannot make it loop.
pub(crate) fn lineage(pid: i32) -> impl Iterator<Item = Stat> {
    let mut next = (pid > 0).then_some(pid);
    std::iter::from_fn(move || {
        let s = stat(next?)?;
        next = (s.ppid > 0 && s.ppid != s.pid).then_some(s.ppid);
        Some(s)
    })
    .take(4096)
}

/// Whether `pid` descends from `ancestor` (its child, grandchild, …), by parent links in `/proc`.
pub(crate) fn descends(pid: i32, ancestor: i32) -> bool {
    lineage(pid).any(|s| s.ppid == ancestor)
}

/// Whether `pid` has an fd that `matches` (given the fd's `/proc/PID/fd/N` link). An error when
/// its fds cannot be read: another user's process, a non-dumpable one, or any but this one when
/// `/proc` is not ours ([`proc_is_ours`]: its pids are another namespace's); `Ok(false)` when
/// it is gone. This process's own are read through `/proc/self`, which is right in any case.
pub(crate) fn holds_fd(pid: i32, matches: impl Fn(&Path) -> bool) -> io::Result<bool> {
    let dir = if pid == std::process::id() as i32 {
        PathBuf::from("/proc/self/fd")
    } else if proc_is_ours() {
        PathBuf::from(format!("/proc/{pid}/fd"))
    } else {
        return Err(io::Error::other("/proc shows another PID namespace"));
    };
    let fds = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(fds.flatten().any(|fd| matches(&fd.path())))
}

/// What [`fd_holders`] found.
#[derive(Debug, Default)]
pub(crate) struct FdHolders {
    /// The processes with a matching fd, in pid order.
    pub found: Vec<i32>,
    /// The processes whose fds could not be read.
    pub unreadable: Vec<i32>,
}

/// Every process but this one with an fd that `matches` (see [`holds_fd`]), in one walk of
/// `/proc/*/fd`; nothing when `/proc` is not ours.
pub(crate) fn fd_holders(matches: impl Fn(&Path) -> bool) -> FdHolders {
    let mut holders = FdHolders::default();
    let me = std::process::id() as i32;
    let Some(dir) = proc_is_ours().then(|| std::fs::read_dir("/proc").ok()).flatten() else { return holders };
    let mut pids: Vec<i32> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    for pid in pids.into_iter().filter(|p| *p != me) {
        match holds_fd(pid, &matches) {
            Ok(true) => holders.found.push(pid),
            Ok(false) => {}
            Err(_) => holders.unreadable.push(pid),
        }
    }
    holders
}

/// What became of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// It runs.
    Running,
    /// It was stopped by this signal (job control).
    Stopped(i32),
    /// It ended; its wait status when conjure could reap it (its parent or subreaper).
    Ended(Option<WaitStatus>),
}

/// What [`Process::terminate`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Terminated {
    /// Whether SIGKILL was needed.
    pub killed: bool,
    /// Members still alive when conjure gave up (0: the whole tree is gone).
    pub survivors: usize,
}

/// A program and the tree of processes it leads.
#[derive(Debug)]
pub(crate) struct Process {
    /// 0 until known (the double fork reports the grandchild's pid a moment later).
    pid: i32,
    pidfd: Option<OwnedFd>,
    /// A session whose members are all the program's (the one `setsid` made for it).
    session: Option<i32>,
    /// A process group whose members are all the program's.
    group: Option<i32>,
    /// conjure's own children are the program's orphans (resident conjure, their subreaper),
    /// and conjure reaps every child that exits.
    adopts: bool,
    ended: Option<Option<WaitStatus>>,
}

impl Process {
    /// A program in the session a double fork made for it (the intermediate child's pid is its
    /// id), whose own pid is learnt later with [`attach`](Self::attach). Until then the session
    /// alone says which processes are its.
    pub(crate) fn in_session(session: i32) -> Process {
        Process { pid: 0, pidfd: None, session: Some(session), group: Some(session), adopts: false, ended: None }
    }

    /// conjure's own child `pid` (resident mode), leading process group `group` when it has one
    /// of its own. With `adopts`, conjure is the subreaper of its orphans: every other child of
    /// conjure belongs to the program's tree, and conjure reaps them all.
    ///
    /// A child's pid cannot be reused before conjure reaps it, so a pidfd that cannot be opened
    /// (no fd left, say) only costs the wait its `poll`: the program runs on without one.
    pub(crate) fn child(pid: i32, group: Option<i32>, adopts: bool) -> Process {
        let pidfd = sys::pidfd_open(pid).unwrap_or_else(|error| {
            tracing::debug!(pid, %error, "no pidfd for the program; waiting without one");
            None
        });
        Process { pid, pidfd, session: None, group, adopts, ended: None }
    }

    /// A process conjure did not start (`conjure stop`). Its session and process group count as
    /// its tree only when it leads them, or when their leader is gone, which is what a double
    /// fork leaves behind; never a login shell's session that it merely runs in.
    pub(crate) fn existing(pid: i32) -> io::Result<Process> {
        let mut p = Process { pid: 0, pidfd: None, session: None, group: None, adopts: false, ended: None };
        p.attach(pid)?;
        if let (Some(st), Some(me)) = (stat(pid), stat(std::process::id() as i32)) {
            let owned = |id: i32| id > 1 && id != me.session && id != me.pgrp && (id == pid || stat(id).is_none());
            p.session = owned(st.session).then_some(st.session);
            p.group = owned(st.pgrp).then_some(st.pgrp);
        }
        Ok(p)
    }

    /// Learns the program's pid and opens its pidfd (none on kernels before 5.3).
    pub(crate) fn attach(&mut self, pid: i32) -> io::Result<()> {
        if self.pid == pid {
            return Ok(());
        }
        self.pid = pid;
        self.pidfd = sys::pidfd_open(pid)?;
        Ok(())
    }

    /// The program's pid (0 while unknown).
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// An fd that is readable once the program has exited, when the kernel has pidfds.
    pub(crate) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().filter(|_| self.ended.is_none()).map(AsFd::as_fd)
    }

    /// Whether conjure reaps every child it has (resident: it adopts the program's orphans).
    pub(crate) fn reaps_all(&self) -> bool {
        self.adopts
    }

    /// The process group that is the program's own, if any.
    pub(crate) fn group(&self) -> Option<i32> {
        self.group
    }

    /// Sends `signal` (any number, real-time ones included) to the program alone.
    pub(crate) fn signal(&self, signal: i32) -> io::Result<()> {
        if self.pid <= 0 || self.ended.is_some() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        match &self.pidfd {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), signal),
            None => sys::kill_raw(self.pid, signal),
        }
    }

    /// Sends `signal` to the program's own process group, or to the program when it has none.
    pub(crate) fn signal_group(&self, signal: i32) -> io::Result<()> {
        match self.group {
            Some(g) => sys::kill_raw(-g, signal),
            None => self.signal(signal),
        }
    }

    /// What became of the program, without blocking; reaps it when conjure may. With `stops`,
    /// a stop by a signal is reported too (job control).
    pub(crate) fn state(&mut self, stops: bool) -> State {
        if let Some(status) = self.ended {
            return State::Ended(status);
        }
        if self.pid <= 0 {
            return State::Running;
        }
        let flags = libc::WNOHANG | if stops { libc::WUNTRACED } else { 0 };
        let mut status = 0;
        match sys::waitpid_raw(self.pid, &mut status, flags) {
            Ok(0) => State::Running,
            Ok(_) if libc::WIFSTOPPED(status) => State::Stopped(libc::WSTOPSIG(status)),
            Ok(_) => {
                self.ended = Some(Some(status));
                State::Ended(Some(status))
            }
            Err(nix::errno::Errno::EINTR) => State::Running,
            Err(_) => {
                // Not conjure's child (no subreaper, or `stop`): gone when its pidfd says so, or
                // (old kernels) when it no longer exists or is a zombie.
                let gone = match &self.pidfd {
                    Some(fd) => readable(fd.as_fd()),
                    None => stat(self.pid).is_none_or(|s| s.dead()),
                };
                if gone {
                    self.ended = Some(None);
                    State::Ended(None)
                } else {
                    State::Running
                }
            }
        }
    }

    /// Reaps every child conjure has that exited (resident conjure, as PID 1 or subreaper),
    /// noting the program's status when it is among them, and keeping an [`OwnChild`]'s for
    /// it. Does nothing unless conjure adopts.
    pub(crate) fn reap_orphans(&mut self) {
        if !self.adopts {
            return;
        }
        loop {
            let mut status = 0;
            match sys::waitpid_raw(-1, &mut status, libc::WNOHANG) {
                Ok(0) => return,
                Ok(pid) if pid == self.pid => {
                    if self.ended.is_none() {
                        self.ended = Some(Some(status));
                    }
                }
                // `waitpid(-1)` takes whichever child ended, one conjure waits for itself too.
                Ok(pid) => keep_for_owner(pid, status),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }

    /// The living members of the program's tree (the program included while it runs), and the
    /// zombies among conjure's own children that belong to it.
    fn survey(&self) -> (Vec<i32>, Vec<i32>) {
        let me = std::process::id() as i32;
        let table = all();
        let own = own_children();
        let mut members: HashSet<i32> = HashSet::new();
        let mut zombies = Vec::new();
        for s in &table {
            if s.pid == me || !self.in_tree_by_itself(s, me, |pid| own.contains(&pid)) {
                continue;
            }
            if s.dead() {
                if s.ppid == me {
                    zombies.push(s.pid);
                }
            } else {
                members.insert(s.pid);
            }
        }
        // Descendants by parent links, to a fixed point (a tree is at most as deep as it is big).
        loop {
            let before = members.len();
            for s in &table {
                if !s.dead() && s.pid != me && members.contains(&s.ppid) {
                    members.insert(s.pid);
                }
            }
            if members.len() == before {
                break;
            }
        }
        (members.into_iter().collect(), zombies)
    }

    /// Whether `s` belongs to the program's tree by itself, not as a descendant: the program,
    /// a member of its session or group, or an orphan conjure adopted (`me`'s child, but none
    /// of the children conjure started for itself, which `own` tells).
    fn in_tree_by_itself(&self, s: &Stat, me: i32, own: impl Fn(i32) -> bool) -> bool {
        (s.pid == self.pid && self.pid > 0)
            || Some(s.session) == self.session
            || Some(s.pgrp) == self.group
            || (self.adopts && s.ppid == me && !own(s.pid))
    }

    /// Whether `pid` is in the program's tree as [`members`](Self::members) counts it (a
    /// member's descendant is one): one walk up its parents, not a survey of every process,
    /// and no allocation (it runs for every datagram relayed).
    pub(crate) fn contains(&self, pid: i32) -> bool {
        if pid <= 0 {
            return false;
        }
        if pid == self.pid {
            return true;
        }
        let me = std::process::id() as i32;
        let own = |pid: i32| own().iter().any(|(p, _)| *p == pid);
        lineage(pid).take_while(|s| s.pid != me).any(|s| self.in_tree_by_itself(&s, me, own))
    }

    /// Stops the program and its whole tree: `signal` to every member (and SIGCONT, so that a
    /// stopped one can act on it), then SIGKILL to whatever is left once `grace` has passed,
    /// then up to [`KILL_WAIT`] for them to die. Members that appear meanwhile get the same
    /// treatment. Reaps what conjure may reap.
    pub(crate) fn terminate(&mut self, signal: i32, grace: Duration) -> Terminated {
        let mut signal = signal;
        let mut deadline = Instant::now().checked_add(grace);
        let mut signalled: HashSet<i32> = HashSet::new();
        let mut killed = false;
        let mut pause = Duration::from_millis(1);
        tracing::debug!(pid = self.pid, signal, ?grace, "stopping the program and its descendants");
        loop {
            let _ = self.state(false);
            self.reap_orphans();
            let (members, zombies) = self.survey();
            for z in zombies {
                let mut status = 0;
                if sys::waitpid_raw(z, &mut status, libc::WNOHANG) == Ok(z) && z == self.pid && self.ended.is_none() {
                    self.ended = Some(Some(status));
                }
            }
            if members.is_empty() {
                return Terminated { killed, survivors: 0 };
            }
            for &m in &members {
                if signalled.insert(m) {
                    self.send(m, signal);
                    if signal != libc::SIGKILL && signal != libc::SIGCONT {
                        self.send(m, libc::SIGCONT);
                    }
                }
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                if killed {
                    tracing::debug!(left = members.len(), "processes survived SIGKILL");
                    return Terminated { killed, survivors: members.len() };
                }
                tracing::debug!(left = members.len(), "still running after the grace period: SIGKILL");
                killed = true;
                signal = libc::SIGKILL;
                signalled.clear();
                deadline = now.checked_add(KILL_WAIT);
                continue;
            }
            self.wait_for_some(&members, deadline, pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Signals member `pid`: the program through its pidfd, the others by pid.
    fn send(&self, pid: i32, signal: i32) {
        let sent = if pid == self.pid { self.signal(signal) } else { sys::kill_raw(pid, signal) };
        if let Err(e) = sent {
            tracing::debug!(pid, signal, error = %e, "cannot signal");
        }
    }

    /// Waits until one of `members` exits, `deadline` passes, or (when some member cannot be
    /// watched through a pidfd) `pause` has passed.
    fn wait_for_some(&self, members: &[i32], deadline: Option<Instant>, pause: Duration) {
        let mut owned = Vec::new();
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        if let Some(fd) = self.pidfd().filter(|_| members.contains(&self.pid)) {
            fds.push(fd);
        }
        for &m in members.iter().filter(|m| **m != self.pid).take(WATCHED) {
            if let Ok(Some(fd)) = sys::pidfd_open(m) {
                owned.push(fd);
            }
        }
        fds.extend(owned.iter().map(AsFd::as_fd));
        let all_watched = fds.len() == members.len();
        let mut wake = deadline;
        if !all_watched {
            let soon = Instant::now() + pause;
            wake = Some(wake.map_or(soon, |w| w.min(soon)));
        }
        let mut polled: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)).collect();
        let _ = poll(&mut polled, timeout_until(wake));
    }
}

/// The children conjure started for itself ([`OwnChild`]), by pid, with the status the orphan
/// reaper collected for one that ended before its owner looked.
static OWN: Mutex<Vec<(i32, Option<WaitStatus>)>> = Mutex::new(Vec::new());

fn own() -> MutexGuard<'static, Vec<(i32, Option<WaitStatus>)>> {
    // A panic elsewhere cannot leave the list half-changed: each change is one push or remove.
    OWN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The pids of the [`OwnChild`]ren alive.
fn own_children() -> Vec<i32> {
    own().iter().map(|(pid, _)| *pid).collect()
}

/// The reaper took child `pid`: when it is an [`OwnChild`], its status is kept for its owner.
fn keep_for_owner(pid: i32, status: WaitStatus) {
    if let Some(entry) = own().iter_mut().find(|(p, _)| *p == pid) {
        entry.1 = Some(status);
    }
}

/// The status the reaper kept for [`OwnChild`] `pid`, if it took it.
fn kept_for(pid: i32) -> Option<WaitStatus> {
    own().iter().find(|(p, _)| *p == pid).and_then(|(_, status)| *status)
}

/// A child conjure started for itself (a `cmd:` check), not the program's: its pid and pidfd.
///
/// Resident conjure reaps its adopted orphans with `waitpid(-1)`, which takes whichever child
/// ended, this one too (always without pidfds, where the loop learns of its end from SIGCHLD;
/// otherwise when it ends between a `poll` and the reaping). Its owner, asking by pid, would
/// then never learn that it ended, and would signal a pid that may have been reused. So an
/// `OwnChild` is listed while it lives: the reaper keeps its status for it, and the program's
/// tree ([`Process::terminate`], membership) leaves it out. Peeking (`waitid` with `WNOWAIT`)
/// to leave it unreaped would not do: the next peek shows the same child again, and every
/// orphan behind it would stay a zombie until its owner looked.
///
/// Dropped while it runs, it is killed (SIGKILL) and reaped.
#[derive(Debug)]
pub(crate) struct OwnChild {
    pid: i32,
    pidfd: Option<OwnedFd>,
    /// Its status once it ended (`None` inside: ended, but its status was lost).
    ended: Option<Option<WaitStatus>>,
}

impl OwnChild {
    /// Takes charge of `child`, which conjure just spawned and nobody waited for yet.
    pub(crate) fn new(child: std::process::Child) -> OwnChild {
        let pid = i32::try_from(child.id()).unwrap_or(0);
        own().push((pid, None));
        // Without pidfds (before 5.3) the owner looks again on its own schedule.
        let pidfd = sys::pidfd_open(pid).ok().flatten();
        OwnChild { pid, pidfd, ended: None }
    }

    /// An fd that is readable once it exited, while it runs (and the kernel has pidfds).
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().filter(|_| self.ended.is_none()).map(AsFd::as_fd)
    }

    /// `None` while it runs; once it ended, its wait status, or `Some(None)` when that was lost
    /// (someone else reaped it): it ended all the same.
    pub(crate) fn try_wait(&mut self) -> Option<Option<WaitStatus>> {
        if self.ended.is_none() {
            self.ended = self.look();
        }
        self.ended
    }

    fn look(&self) -> Option<Option<WaitStatus>> {
        if let Some(status) = kept_for(self.pid) {
            return Some(Some(status));
        }
        let mut status = 0;
        match sys::waitpid_raw(self.pid, &mut status, libc::WNOHANG) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => None,
            Ok(_) => Some(Some(status)),
            // Not a child any more: reaped a moment ago (by another thread's reaper, which kept
            // its status), or by someone who did not.
            Err(_) => Some(kept_for(self.pid)),
        }
    }
}

impl Drop for OwnChild {
    fn drop(&mut self) {
        if self.pid > 0 && self.try_wait().is_none() {
            // Not reaped yet, so the pid is still its own.
            let killed = match &self.pidfd {
                Some(fd) => sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL),
                None => sys::kill_raw(self.pid, libc::SIGKILL),
            };
            if let Err(e) = killed {
                tracing::debug!(pid = self.pid, error = %e, "cannot kill a check");
            }
            // Bounded: SIGKILL cannot be caught.
            let mut status = 0;
            while sys::waitpid_raw(self.pid, &mut status, 0) == Err(nix::errno::Errno::EINTR) {}
        }
        own().retain(|(pid, _)| *pid != self.pid);
    }
}

/// Whether `fd` is readable now.
fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// A `poll` timeout that ends at `wake` (rounded up, so that poll never wakes a hair early and
/// spins), or never.
pub(crate) fn timeout_until(wake: Option<Instant>) -> PollTimeout {
    match wake {
        None => PollTimeout::NONE,
        Some(w) => {
            let ms = w.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000);
            PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_read_after_the_last_parenthesis() {
        let s = parse_stat(7, b"7 (a) b) (c) S 1 7 7 0 -1").unwrap();
        assert_eq!(s, Stat { pid: 7, state: 'S', ppid: 1, pgrp: 7, session: 7, start_ticks: 0 });
        let line = b"7 (x) S 1 7 7 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 100 1";
        assert_eq!(parse_stat(7, line).unwrap().start_ticks, 123456);
        assert!(parse_stat(7, b"7 (x) Z").is_none());
        assert!(parse_stat(7, b"garbage").is_none());
        assert!(parse_stat(7, b"7 (x) Z 1 2 3").unwrap().dead());
    }

    #[test]
    fn a_child_descends_and_belongs_to_its_tree_and_its_parent_does_not() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let tree = Process::child(pid, None, false);
        assert!(descends(pid, me));
        assert!(!descends(me, pid));
        assert!(tree.contains(pid));
        assert!(!tree.contains(me), "the program's parent is not in its tree");
        assert!(!tree.contains(0));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn this_process_is_in_the_table() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw());
        assert!(all().iter().any(|s| s.pid == me));
    }
}
