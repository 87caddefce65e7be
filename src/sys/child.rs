//! The child between fork and exec: the plan prepared before the fork, the straight line of
//! raw syscalls that carries it out ([`setup`], [`exec`]), and the fixed-size failure record.
//!
//! Everything here may run in a child forked from a multi-threaded process: async-signal-safe
//! calls only, no allocation, no locks, no panics.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::env::Envp;
use super::fds::write_all_raw;
use super::signals::reset_signals;

/// Where in the child a step failed; sent to the launcher with the errno.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Setsid = 1,
    Fork = 2,
    Chdir = 3,
    Stdio = 4,
    Pidfile = 5,
    Setgroups = 6,
    Setgid = 7,
    Setuid = 8,
    RegainedRoot = 9,
    CloseFds = 10,
    Exec = 11,
    Fds = 12,
    ProcessGroup = 13,
    Identity = 14,
    /// Moving conjure's fds out of the way of the program's (`F_DUPFD_CLOEXEC`), before setup.
    Relocate = 15,
}

impl Stage {
    pub(crate) fn from_u8(b: u8) -> Option<Stage> {
        use Stage::*;
        [
            Setsid,
            Fork,
            Chdir,
            Stdio,
            Pidfile,
            Setgroups,
            Setgid,
            Setuid,
            RegainedRoot,
            CloseFds,
            Exec,
            Fds,
            ProcessGroup,
            Identity,
            Relocate,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }
}

/// A step of the child that failed, and its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    pub stage: Stage,
    pub errno: i32,
}

pub(super) fn fail(stage: Stage) -> Failure {
    Failure { stage, errno: Errno::last_raw() }
}

/// Identity to switch to: prepared before the fork (names resolved, groups listed).
#[derive(Debug, Clone)]
pub(crate) struct Ids {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups, sorted and without duplicates (as the kernel reports them back).
    pub groups: Vec<libc::gid_t>,
}

impl Ids {
    /// `uid`, `gid` and the supplementary `groups` in the kernel's order.
    pub(crate) fn new(uid: libc::uid_t, gid: libc::gid_t, mut groups: Vec<libc::gid_t>) -> Ids {
        groups.sort_unstable();
        groups.dedup();
        Ids { uid, gid, groups }
    }
}

/// What to exec: every pointer array built before the fork.
#[derive(Debug)]
pub(crate) struct ExecPlan {
    path: CString,
    /// Every argument and its NUL, one after the other: one allocation, however many there are.
    _args: Box<[u8]>,
    /// Pointers into `_args`, then NULL.
    argv_ptrs: Vec<*const libc::c_char>,
    env: Envp,
}

impl ExecPlan {
    /// Builds the argv array from `argv` (without NUL bytes, which validation refused); `env`
    /// is the environment, built by [`Envp::inherit`].
    pub(crate) fn new<'a>(path: CString, argv: impl Iterator<Item = &'a [u8]> + Clone, env: Envp) -> Self {
        let len = argv.clone().map(|a| a.len() + 1).sum();
        let mut args = Vec::with_capacity(len);
        let mut starts = Vec::new();
        for arg in argv {
            starts.push(args.len());
            // A NUL inside (validation refuses them) would only cut that argument short.
            args.extend_from_slice(arg);
            args.push(0);
        }
        let args = args.into_boxed_slice();
        let base: *const libc::c_char = args.as_ptr().cast();
        // `wrapping_add` stays inside `args` (every start is below its length).
        let argv_ptrs =
            starts.iter().map(|&at| base.wrapping_add(at)).chain(std::iter::once(std::ptr::null())).collect();
        ExecPlan { path, _args: args, argv_ptrs, env }
    }
}

/// Everything the child does after the fork, as plain data prepared before it.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    /// Write end of the report pipe (close-on-exec), or -1.
    pub report: RawFd,
    /// The umask to set, or none to keep the caller's (foreground).
    pub umask: Option<libc::mode_t>,
    /// The directory to change to, or none to keep the caller's (foreground).
    pub chdir: Option<CString>,
    /// For each of fds 0, 1, 2: the fd to put in its place, or -1 to leave it.
    pub stdio: [RawFd; 3],
    /// The locked pidfile fd the child writes its pid into, or -1.
    pub pidfile: RawFd,
    /// Fds the exec'd program inherits (close-on-exec cleared): locks, `--keep-fd`, `LISTEN_FDS`.
    pub inherit: Vec<RawFd>,
    /// Pairs `(from, to)`: `to` becomes a copy of `from` that the program inherits.
    pub moves: Vec<(RawFd, RawFd)>,
    /// Sorted fds above 2 that survive the close (includes `inherit`, `report`, targets of `moves`).
    pub keep: Vec<RawFd>,
    pub close_fds: bool,
    /// The library's daemon, which returns to Rust code instead of exec'ing: SIGPIPE stays
    /// ignored (as Rust programs start), only inheritable fds are closed, and no fd's
    /// close-on-exec flag is cleared.
    pub library: bool,
    /// Put the program in a process group of its own (`--signal-group`, a terminal).
    pub new_pgrp: bool,
    /// With `new_pgrp`: the controlling terminal, whose foreground group the program's becomes.
    pub tty: RawFd,
    pub ids: Option<Ids>,
    /// `SIGRTMAX`, read before the fork.
    pub sigmax: libc::c_int,
    /// Copies made by [`seal`](Self::seal) to keep fds out of the way of `moves`: closed with
    /// the plan, in the launcher; close-on-exec in the child.
    pub held: Vec<OwnedFd>,
}

impl ChildPlan {
    /// Finishes the plan: moves the fds the child needs out of the way of the numbers it must
    /// give the program, then sorts and dedups the keep list. Call after the last change.
    ///
    /// A readiness pipe the program must find at fd 3 (`--ready-on fd:3`) would otherwise be
    /// `dup2`ed over whatever of conjure's sits at 3 in the child (the lock, the report pipe),
    /// and reserving the number beforehand would race with other threads of a library caller
    /// opening files. So an fd in the way gets a copy above every target number (the kernel
    /// picks a free one, atomically), held until the plan is dropped.
    ///
    /// The entry points of this module (`spawn`, `fork_daemon`, `setup_in_place`) seal the plan
    /// they are given, so it is never used unsealed nor sealed twice.
    pub(super) fn seal(&mut self) -> io::Result<()> {
        let targets: Vec<RawFd> = self.moves.iter().map(|m| m.1).collect();
        if let Some(floor) = targets.iter().max().map(|t| t + 1) {
            let mut held = std::mem::take(&mut self.held);
            let mut relocate = |fd: &mut RawFd| -> io::Result<()> {
                if *fd >= 0 && targets.contains(fd) {
                    let copy = super::dup_above(*fd, floor)?;
                    *fd = copy.as_raw_fd();
                    held.push(copy);
                }
                Ok(())
            };
            relocate(&mut self.report)?;
            relocate(&mut self.pidfile)?;
            relocate(&mut self.tty)?;
            for fd in self.stdio.iter_mut().chain(self.inherit.iter_mut()) {
                relocate(fd)?;
            }
            for (from, to) in self.moves.iter_mut() {
                if *from != *to {
                    relocate(from)?;
                }
            }
            self.held = held;
        }
        let mut keep: Vec<RawFd> = self.inherit.clone();
        keep.extend(self.moves.iter().map(|m| m.1));
        if self.report >= 0 {
            keep.push(self.report);
        }
        if self.pidfile >= 0 {
            keep.push(self.pidfile);
        }
        keep.retain(|fd| *fd > 2);
        keep.sort_unstable();
        keep.dedup();
        self.keep = keep;
        self.sigmax = libc::SIGRTMAX();
        Ok(())
    }
}

/// Fixed-size record the child writes on the report pipe.
pub(crate) const FAILURE_TAG: u8 = b'F';
/// Record carrying the daemon's pid.
pub(crate) const PID_TAG: u8 = b'P';
/// Record written just before `execve`: an end of file after it means the exec happened, one
/// without it that the child died before its exec.
pub(crate) const EXEC_TAG: u8 = b'X';

/// The record of a step that failed: its tag, the stage, the errno (little-endian).
pub(crate) fn failure_record(failure: Failure) -> [u8; 6] {
    let e = failure.errno.to_le_bytes();
    [FAILURE_TAG, failure.stage as u8, e[0], e[1], e[2], e[3]]
}

/// The record of the child's pid: its tag and the pid (little-endian).
pub(crate) fn pid_record(pid: libc::pid_t) -> [u8; 5] {
    let p = pid.to_le_bytes();
    [PID_TAG, p[0], p[1], p[2], p[3]]
}

/// Sends a failure record to the launcher; async-signal-safe.
pub(super) fn report_failure(fd: RawFd, failure: Failure) {
    if fd < 0 {
        return;
    }
    let _ = write_all_raw(fd, &failure_record(failure));
}

/// Tells the launcher the child is about to exec; async-signal-safe. A write that fails is
/// ignored: the launcher then learns the outcome from the end of file, or a failure record.
pub(super) fn report_exec(fd: RawFd) {
    if fd >= 0 {
        let _ = write_all_raw(fd, &[EXEC_TAG]);
    }
}

/// Sends the child's own pid to the launcher; async-signal-safe.
fn report_pid(fd: RawFd, pid: libc::pid_t) -> Result<(), i32> {
    write_all_raw(fd, &pid_record(pid)).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Formats `n` in decimal into `buf`, returns the length. No allocation.
/// Cannot panic: no indexing (a `buf` shorter than the number keeps its lowest digits' room
/// unwritten, which the callers' 10-byte buffers never are).
fn decimal(n: u32, buf: &mut [u8]) -> usize {
    let mut len = 1;
    let mut rest = n / 10;
    while rest > 0 {
        len += 1;
        rest /= 10;
    }
    let mut rest = n;
    for slot in buf.iter_mut().take(len).rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    len.min(buf.len())
}

fn check(ret: libc::c_int, stage: Stage) -> Result<(), Failure> {
    if ret == -1 { Err(fail(stage)) } else { Ok(()) }
}

/// Retries a syscall returning -1/EINTR.
pub(super) fn retry(mut f: impl FnMut() -> libc::c_int) -> libc::c_int {
    loop {
        let r = f();
        if r != -1 || Errno::last_raw() != libc::EINTR {
            return r;
        }
    }
}

/// What becomes of the fds the program must not inherit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// Closed now: a child's copies, which nothing else owns.
    Now,
    /// Marked close-on-exec: in the calling process itself (foreground), where they may belong
    /// to live `File`s and `OwnedFd`s, and stay theirs if the exec fails.
    AtExec,
}

/// Closes (or marks close-on-exec) every fd from `lo` to `hi` inclusive.
fn close_span(lo: RawFd, hi: RawFd, how: Close) -> Result<(), Failure> {
    if lo > hi {
        return Ok(());
    }
    /// `CLOSE_RANGE_CLOEXEC` (Linux 5.11).
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let flags = if how == Close::AtExec { CLOSE_RANGE_CLOEXEC } else { 0 };
    // SAFETY: close_range takes plain integers; closing (or marking) fds this process holds
    // is its business, and in place they are only marked.
    let r = unsafe { libc::syscall(libc::SYS_close_range, lo as libc::c_uint, hi as libc::c_uint, flags) };
    if r == 0 {
        return Ok(());
    }
    if Errno::last_raw() != libc::ENOSYS && Errno::last_raw() != libc::EINVAL {
        return Err(fail(Stage::CloseFds));
    }
    // Kernels without close_range (before 5.9, or 5.11 for the flag): one fd at a time, those
    // `/proc/self/fd` lists in the range, else every fd below `RLIMIT_NOFILE`.
    for_each_open_fd(lo, hi, |fd| match how {
        // SAFETY: closing an fd number; EBADF is harmless.
        Close::Now => unsafe {
            libc::close(fd);
        },
        // SAFETY: fcntl on an fd number with integer arguments; EBADF is harmless.
        Close::AtExec => unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        },
    });
    Ok(())
}

/// Calls `f` with every open fd from `lo` to `hi`: those `/proc/self/fd` lists, read with raw
/// `getdents64` into a stack buffer, or (no `/proc`) every number below `RLIMIT_NOFILE`.
/// Async-signal-safe; no indexing that can fail.
fn for_each_open_fd(lo: RawFd, hi: RawFd, mut f: impl FnMut(RawFd)) {
    const PROC_FD: &[u8] = b"/proc/self/fd\0";
    // SAFETY: a NUL-terminated path and plain flags.
    let dir = unsafe { libc::open(PROC_FD.as_ptr().cast(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if dir >= 0 {
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: buf is writable for its length; getdents64 fills at most that many bytes.
            let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
            if n <= 0 {
                break;
            }
            let filled = buf.get(..n as usize).unwrap_or(&[]);
            let mut off = 0usize;
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name (NUL-terminated).
            while let Some(&[a, b]) = filled.get(off + 16..off + 18) {
                let reclen = u16::from_ne_bytes([a, b]) as usize;
                if reclen == 0 {
                    break;
                }
                let name = filled.get(off + 19..off + reclen).unwrap_or(&[]);
                let mut fd: i64 = 0;
                let mut digits = false;
                for &c in name.iter().take_while(|c| **c != 0) {
                    if c.is_ascii_digit() && fd < i64::from(i32::MAX) {
                        fd = fd * 10 + i64::from(c - b'0');
                        digits = true;
                    } else {
                        digits = false;
                        break;
                    }
                }
                if digits && fd >= i64::from(lo) && fd <= i64::from(hi) && fd != i64::from(dir) {
                    f(fd as RawFd);
                }
                off += reclen;
            }
        }
        // SAFETY: dir is our own fd.
        unsafe { libc::close(dir) };
        return;
    }
    // SAFETY: rlim is a valid out-pointer.
    let mut rlim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } == 0 {
        rlim.rlim_cur.min(1 << 20) as RawFd
    } else {
        1024
    };
    for fd in lo..=hi.min(max) {
        f(fd);
    }
}

/// The library daemon's close: it goes on running Rust code, whose own fds (and those of the
/// caller's live `File`s) are close-on-exec; only inheritable fds above 2 that are not in
/// `keep` (sorted) are closed, the ones a plain `fork` would leak to whatever the daemon execs.
fn close_inheritable_but(keep: &[RawFd]) {
    for_each_open_fd(3, RawFd::MAX, |fd| {
        // SAFETY: F_GETFD on an fd number; -1 (EBADF) means it is already gone.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 && keep.binary_search(&fd).is_err() {
            // SAFETY: closing an inheritable fd nothing in the daemon is meant to keep.
            unsafe { libc::close(fd) };
        }
    });
}

/// Closes (or marks close-on-exec) every fd above 2 not in `keep` (sorted).
fn close_all_but(keep: &[RawFd], how: Close) -> Result<(), Failure> {
    let mut lo: RawFd = 3;
    for &k in keep {
        if k > lo {
            close_span(lo, k - 1, how)?;
        }
        lo = lo.max(k + 1);
    }
    close_span(lo, RawFd::MAX, how)
}

fn clear_cloexec(fd: RawFd) -> Result<(), Failure> {
    // SAFETY: fcntl on an fd number with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    check(flags, Stage::Fds)?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) }, Stage::Fds)
}

/// The child's setup after the fork, in the order of design section 1: signals, umask, chdir,
/// stdio, pidfile, fd moves, identity, fd close. A child reports its pid first; `in_place`
/// (foreground: the calling process itself becomes the program) reports nothing and only
/// marks the fds to close close-on-exec, so that they stay their owners' if the exec fails.
///
/// # Safety
///
/// Runs between fork and exec: it may be called in a child forked from a multi-threaded
/// process. It calls only async-signal-safe functions, allocates nothing and cannot panic
/// (no indexing that can fail, no unwrap); `plan` must have been sealed before the fork and
/// every fd in it must be open.
pub(crate) unsafe fn setup(plan: &ChildPlan, in_place: bool) -> Result<(), Failure> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if !in_place && plan.report >= 0 {
        report_pid(plan.report, pid).map_err(|errno| Failure { stage: Stage::Fds, errno })?;
    }
    if plan.new_pgrp {
        // SAFETY: setpgid on ourselves.
        check(unsafe { libc::setpgid(0, 0) }, Stage::ProcessGroup)?;
        if plan.tty >= 0 {
            // Every signal is still blocked (the launcher blocked them across the fork), so
            // taking the terminal from the background cannot stop us with SIGTTOU.
            // SAFETY: tcsetpgrp on an fd prepared before the fork, with our own pid.
            check(unsafe { libc::tcsetpgrp(plan.tty, pid) }, Stage::ProcessGroup)?;
        }
    }
    reset_signals(plan.sigmax, plan.library);
    if let Some(mask) = plan.umask {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(mask) };
    }
    if let Some(dir) = &plan.chdir {
        // SAFETY: chdir reads a NUL-terminated path.
        check(unsafe { libc::chdir(dir.as_ptr()) }, Stage::Chdir)?;
    }
    for (target, &from) in plan.stdio.iter().enumerate() {
        if from >= 0 && from != target as RawFd {
            // SAFETY: dup2 on fd numbers.
            check(retry(|| unsafe { libc::dup2(from, target as RawFd) }), Stage::Stdio)?;
        }
    }
    if plan.pidfile >= 0 {
        // Ten digits at most, and the newline.
        let mut line = [b'\n'; 11];
        let n = decimal(pid as u32, &mut line[..10]);
        // Written over what is there, then cut to its length: on ext4 a truncation to zero of
        // a file written moments ago waits for that data to reach the disk (hundreds of µs, at
        // every restart), where cutting to the length just written changes nothing unless the
        // old pid was longer. A reader sees the old pid, the new one, or the new one followed
        // by the tail of the old for an instant (it holds no lock; conjure's readers ask the
        // lock first), as it saw an empty file before.
        // SAFETY: pwrite and ftruncate on an fd we hold, with a valid buffer.
        let w = unsafe { libc::pwrite(plan.pidfile, line.as_ptr().cast(), n + 1, 0) };
        if w != (n + 1) as isize {
            return Err(fail(Stage::Pidfile));
        }
        // SAFETY: as above.
        check(unsafe { libc::ftruncate(plan.pidfile, (n + 1) as libc::off_t) }, Stage::Pidfile)?;
    }
    for &(from, to) in &plan.moves {
        if from == to {
            clear_cloexec(to)?;
        } else {
            // SAFETY: dup2 on fd numbers; the result does not have close-on-exec set.
            check(retry(|| unsafe { libc::dup2(from, to) }), Stage::Fds)?;
        }
    }
    if let Some(ids) = &plan.ids {
        drop_identity(ids)?;
    }
    if plan.library {
        if plan.close_fds {
            close_inheritable_but(&plan.keep);
        }
        return Ok(());
    }
    if plan.close_fds {
        close_all_but(&plan.keep, if in_place { Close::AtExec } else { Close::Now })?;
    }
    for &fd in &plan.inherit {
        clear_cloexec(fd)?;
    }
    Ok(())
}

/// Drops the process to `ids`: supplementary groups, then group, then user (the C library's
/// calls, which POSIX makes async-signal-safe and which change every thread), then proof that
/// root cannot be regained and that every part of the identity is `ids`. The child's drop
/// before its exec, and the library daemon's after its privileged setup.
pub(crate) fn drop_identity(ids: &Ids) -> Result<(), Failure> {
    // SAFETY: the slice is valid for its length.
    check(unsafe { libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) }, Stage::Setgroups)?;
    // SAFETY: plain ids.
    check(unsafe { libc::setgid(ids.gid) }, Stage::Setgid)?;
    // SAFETY: plain ids.
    check(unsafe { libc::setuid(ids.uid) }, Stage::Setuid)?;
    // A drop that can be undone is no drop: regaining root must fail.
    // SAFETY: plain ids; getuid/geteuid cannot fail.
    if ids.uid != 0 && (unsafe { libc::setuid(0) } == 0 || unsafe { libc::geteuid() } != ids.uid) {
        return Err(Failure { stage: Stage::RegainedRoot, errno: libc::EPERM });
    }
    if !identity_is(ids) {
        return Err(Failure { stage: Stage::Identity, errno: libc::EPERM });
    }
    Ok(())
}

/// Whether the calling process now has exactly the user, group and supplementary groups of `ids`
/// (`ids.groups` sorted and without duplicates, as the kernel keeps them). Async-signal-safe:
/// a stack buffer; beyond its size only the number of groups is compared.
fn identity_is(ids: &Ids) -> bool {
    // SAFETY: getuid, getgid and getegid cannot fail.
    if unsafe { libc::getuid() } != ids.uid
        || unsafe { libc::getgid() } != ids.gid
        || unsafe { libc::getegid() } != ids.gid
    {
        return false;
    }
    let mut buf = [0 as libc::gid_t; 256];
    // SAFETY: the buffer holds 256 entries, as the call is told.
    let n = unsafe { libc::getgroups(buf.len() as libc::c_int, buf.as_mut_ptr()) };
    if n < 0 {
        // More than fit: compare the count alone.
        // SAFETY: size 0 asks for the count only.
        return unsafe { libc::getgroups(0, std::ptr::null_mut()) } as usize == ids.groups.len();
    }
    buf.get(..n as usize).is_some_and(|got| got == ids.groups.as_slice())
}

/// Fills the pid slots of the environment and execs. Returns only on failure.
///
/// # Safety
///
/// As for [`setup`]; `plan` must be the child's own copy (after fork), since the pid slots are
/// written in place.
pub(crate) unsafe fn exec(plan: &mut ExecPlan) -> Failure {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut digits = [0u8; 11];
    let n = decimal(pid as u32, &mut digits);
    plan.env.fill_pid(digits.get(..n).unwrap_or(&[]));
    // SAFETY: path, argv and envp are NUL-terminated strings in NULL-terminated arrays that
    // live as long as `plan` (the inherited environment entries: see `env.rs`); execve only
    // returns on failure.
    unsafe { libc::execve(plan.path.as_ptr(), plan.argv_ptrs.as_ptr(), plan.env.as_ptr()) };
    fail(Stage::Exec)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formats_without_allocating() {
        let mut b = [0u8; 11];
        let n = decimal(0, &mut b);
        assert_eq!(&b[..n], b"0");
        let n = decimal(4_194_304, &mut b);
        assert_eq!(&b[..n], b"4194304");
        let n = decimal(u32::MAX, &mut b);
        assert_eq!(&b[..n], b"4294967295");
    }

    #[test]
    fn stage_round_trips_through_its_byte() {
        for b in 0..=255u8 {
            if let Some(s) = Stage::from_u8(b) {
                assert_eq!(s as u8, b);
            }
        }
        assert_eq!(Stage::from_u8(11), Some(Stage::Exec));
        // Every stage the child can report comes back from its byte.
        assert_eq!((1..=255u8).filter_map(Stage::from_u8).count(), Stage::Relocate as usize);
        assert_eq!(Stage::from_u8(0), None);
    }
}
