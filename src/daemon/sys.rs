//! The one module with `unsafe` in it: fork, the code that runs between fork and exec, and
//! the few raw syscalls nix does not wrap.
//!
//! # Why this module exists
//!
//! After `fork` in a process that may have other threads, the child owns copies of locks that
//! other threads held at that instant (the allocator's, stdio's, the environment's). Touching
//! any of them can deadlock the child forever. So everything the child needs is prepared by
//! the launcher *before* the fork, in a [`ChildPlan`] of plain integers and NUL-terminated
//! buffers, and the child runs [`setup`] and [`exec`] only: raw syscalls that are
//! async-signal-safe, no allocation, no locks, no tracing, no panics. A failure in the child is
//! reported to the launcher as a fixed-size record ([`Stage`] and errno) written to the report
//! pipe with a raw `write`; the launcher turns it into a message, since formatting would
//! allocate.
//!
//! A grep for `allow(unsafe_code)` finds this file and nothing else. Every `unsafe` block says
//! why it is sound in a `// SAFETY:` comment; every `unsafe fn` says what its caller must
//! guarantee.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};

use crate::error::DaemonizeError;

/// The result of [`fork`](crate::process::fork), as the `fork` crate spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// Creates a child process (`fork(2)`).
///
/// # Safety
///
/// In a multi-threaded process the child may only call async-signal-safe functions until it
/// calls `exec` or `_exit`: no allocation, no locks, no `println!`, no panics. In a
/// single-threaded process the child may do anything the parent could.
pub unsafe fn fork() -> io::Result<Fork> {
    // SAFETY: the caller upholds the contract above; fork itself has no preconditions.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// Daemonizes the calling process: validate, lock, fork, `setsid`, fork, set up, and return
/// in the daemon. The original process never returns: it waits until the daemon calls
/// [`DaemonContext::notify_parent`](crate::DaemonContext::notify_parent) (exit 0), reports an
/// error (its code), or goes away or drops its context first (exit 70), and exits.
///
/// Errors found before the fork (validation, locks, output files) are returned in the calling
/// process, with nothing started. In foreground mode nothing forks: the calling process is set
/// up in place and gets the context.
///
/// # Safety
///
/// The process must run exactly one thread: `fork` copies only the calling thread, and the
/// daemon goes on to run ordinary code (allocation, locks) that another thread's held locks
/// would deadlock. [`daemonize_checked`](crate::daemonize_checked) checks this instead.
pub unsafe fn daemonize(config: &crate::DaemonConfig) -> Result<crate::DaemonContext, DaemonizeError> {
    // SAFETY: the caller promises one thread, as this function's contract requires.
    crate::daemon::daemonize_with(config, unsafe { SingleThreaded::promised() })
}

/// Proof that the process runs one thread, so that after `fork` the child may allocate.
///
/// Only this module can make one: [`SingleThreaded::checked`] counts threads;
/// [`crate::daemonize`]'s caller promises it through that function's `unsafe` contract.
#[derive(Debug)]
pub(crate) struct SingleThreaded(());

impl SingleThreaded {
    /// Counts the entries of `/proc/self/task` and refuses more than one.
    pub(crate) fn checked() -> Result<Self, DaemonizeError> {
        match std::fs::read_dir("/proc/self/task") {
            Ok(dir) => match dir.count() {
                1 => Ok(SingleThreaded(())),
                n => Err(DaemonizeError::MultiThreaded(n)),
            },
            Err(err) => Err(DaemonizeError::SystemError { call: "reading /proc/self/task", source: err }),
        }
    }

    /// Takes the caller's word for it.
    ///
    /// # Safety
    ///
    /// The process must run exactly one thread.
    pub(crate) unsafe fn promised() -> Self {
        SingleThreaded(())
    }
}

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
}

impl Stage {
    pub(crate) fn from_u8(b: u8) -> Option<Stage> {
        use Stage::*;
        [Setsid, Fork, Chdir, Stdio, Pidfile, Setgroups, Setgid, Setuid, RegainedRoot, CloseFds, Exec, Fds]
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

fn fail(stage: Stage) -> Failure {
    Failure { stage, errno: Errno::last_raw() }
}

/// Identity to switch to: prepared before the fork (names resolved, groups listed).
#[derive(Debug, Clone)]
pub(crate) struct Ids {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// What to exec: every pointer array built before the fork.
#[derive(Debug)]
pub(crate) struct ExecPlan {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env: Vec<Vec<u8>>,
    envp: Vec<*const libc::c_char>,
    /// Entries of `env` that end in a pid the child fills in (`LISTEN_PID=`): index and the
    /// offset where the digits go.
    pid_slots: Vec<(usize, usize)>,
}

/// Room for a pid in decimal, and its NUL.
const PID_ROOM: usize = 12;

impl ExecPlan {
    /// Builds the argv and envp arrays. `env` entries are `KEY=VALUE` byte strings without NUL;
    /// `pid_vars` name the variables whose value is the exec'd process's own pid.
    pub(crate) fn new(path: CString, argv: Vec<CString>, env: Vec<Vec<u8>>, pid_vars: &[&str]) -> Self {
        let mut env = env;
        let mut pid_slots = Vec::new();
        for var in pid_vars {
            let mut entry = format!("{var}=").into_bytes();
            let offset = entry.len();
            entry.resize(offset + PID_ROOM, 0);
            pid_slots.push((env.len(), offset));
            env.push(entry);
        }
        for entry in &mut env {
            if entry.last() != Some(&0) {
                entry.push(0);
            }
        }
        let argv_ptrs = argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let envp = env.iter().map(|e| e.as_ptr().cast()).chain(std::iter::once(std::ptr::null())).collect();
        ExecPlan { path, _argv: argv, argv_ptrs, env, envp, pid_slots }
    }
}

/// Everything the child does after the fork, as plain data prepared before it.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    /// Write end of the report pipe (close-on-exec), or -1.
    pub report: RawFd,
    pub umask: libc::mode_t,
    pub chdir: CString,
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
    /// Put the program in a process group of its own (`--signal-group`).
    pub new_pgrp: bool,
    pub ids: Option<Ids>,
    pub exec: Option<ExecPlan>,
    /// `SIGRTMAX`, read before the fork.
    pub sigmax: libc::c_int,
}

impl ChildPlan {
    /// Finishes the plan: sorts and dedups the keep list. Call after the last change.
    pub(crate) fn seal(&mut self) {
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
    }
}

/// Fixed-size record the child writes on the report pipe.
pub(crate) const FAILURE_TAG: u8 = b'F';
/// Record carrying the daemon's pid.
pub(crate) const PID_TAG: u8 = b'P';

/// `write(2)` of a whole buffer, retried on EINTR. Async-signal-safe.
fn raw_write_all(fd: RawFd, mut buf: &[u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        // SAFETY: buf is a valid readable slice; write does not keep the pointer.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = Errno::last_raw();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Sends a failure record to the launcher; async-signal-safe.
fn report_failure(fd: RawFd, failure: Failure) {
    if fd < 0 {
        return;
    }
    let e = failure.errno.to_le_bytes();
    let _ = raw_write_all(fd, &[FAILURE_TAG, failure.stage as u8, e[0], e[1], e[2], e[3]]);
}

/// Sends the child's own pid to the launcher; async-signal-safe.
fn report_pid(fd: RawFd, pid: libc::pid_t) -> Result<(), i32> {
    let p = pid.to_le_bytes();
    raw_write_all(fd, &[PID_TAG, p[0], p[1], p[2], p[3]])
}

/// Formats `n` in decimal into `buf`, returns the length. No allocation.
fn decimal(mut n: u32, buf: &mut [u8; 11]) -> usize {
    let mut tmp = [0u8; 10];
    let mut i = 0;
    loop {
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        i += 1;
        if n == 0 {
            break;
        }
    }
    for j in 0..i {
        buf[j] = tmp[i - 1 - j];
    }
    i
}

fn check(ret: libc::c_int, stage: Stage) -> Result<(), Failure> {
    if ret == -1 { Err(fail(stage)) } else { Ok(()) }
}

/// Retries a syscall returning -1/EINTR.
fn retry(mut f: impl FnMut() -> libc::c_int) -> libc::c_int {
    loop {
        let r = f();
        if r != -1 || Errno::last_raw() != libc::EINTR {
            return r;
        }
    }
}

/// Puts every signal disposition back to default (real-time ones too) and clears the mask.
fn reset_signals(sigmax: libc::c_int) {
    // SAFETY: an all-zero sigaction is a valid value: SIG_DFL handler, empty mask, no flags.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    for sig in 1..=sigmax {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `dfl` is a valid sigaction; the old action is not asked for. Signals the C
        // library reserves for itself answer EINVAL; see `unignore_reserved`.
        if unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) } == -1 {
            unignore_reserved(sig);
        }
    }
    // SAFETY: an empty set, then sigprocmask with a valid pointer and no old set.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// The kernel's `struct sigaction` on the architectures whose layout is the generic one.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64"
))]
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Resets a signal the C library reserves for itself (glibc: 32 and 33) from SIG_IGN to
/// SIG_DFL, through the raw system call, since `sigaction(3)` refuses them.
///
/// glibc's `posix_spawn` sets them to SIG_IGN in the child when the parent is multi-threaded;
/// a launcher started that way (by a Rust `Command`, for one) would otherwise hand them on to
/// the program ignored. A reserved signal with a handler belongs to the C library and is left
/// alone, so the library's own daemon, which keeps running on the same C library, is not
/// disturbed. Async-signal-safe: two raw syscalls on stack values.
fn unignore_reserved(sig: libc::c_int) {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64"
    ))]
    {
        const SIGSET_SIZE: usize = 8;
        let mut old = KernelSigaction { handler: 0, flags: 0, restorer: 0, mask: 0 };
        // SAFETY: rt_sigaction with no new action and a valid out-pointer of the kernel's layout.
        let r = unsafe {
            libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<KernelSigaction>(), &mut old, SIGSET_SIZE)
        };
        if r == 0 && old.handler == libc::SIG_IGN {
            let dfl = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
            // SAFETY: rt_sigaction with a valid SIG_DFL action of the kernel's layout.
            unsafe {
                libc::syscall(libc::SYS_rt_sigaction, sig, &dfl, std::ptr::null_mut::<KernelSigaction>(), SIGSET_SIZE)
            };
        }
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64"
    )))]
    let _ = sig;
}

/// Closes every fd from `lo` to `hi` inclusive.
fn close_span(lo: RawFd, hi: RawFd) -> Result<(), Failure> {
    if lo > hi {
        return Ok(());
    }
    // SAFETY: close_range takes plain integers; closing fds this process owns is its business.
    let r = unsafe { libc::syscall(libc::SYS_close_range, lo as libc::c_uint, hi as libc::c_uint, 0 as libc::c_uint) };
    if r == 0 {
        return Ok(());
    }
    if Errno::last_raw() != libc::ENOSYS && Errno::last_raw() != libc::EINVAL {
        return Err(fail(Stage::CloseFds));
    }
    close_span_fallback(lo, hi)
}

/// For kernels without `close_range` (before 5.9): the fds listed in `/proc/self/fd`, read with
/// raw `getdents64` into a stack buffer, else every fd below `RLIMIT_NOFILE`.
fn close_span_fallback(lo: RawFd, hi: RawFd) -> Result<(), Failure> {
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
            let mut off = 0usize;
            while off < n as usize {
                // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name (NUL-terminated).
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                let name = &buf[off + 19..off + reclen];
                let mut fd: i64 = 0;
                let mut digits = false;
                for &c in name.iter().take_while(|c| **c != 0) {
                    if c.is_ascii_digit() {
                        fd = fd * 10 + (c - b'0') as i64;
                        digits = true;
                    } else {
                        digits = false;
                        break;
                    }
                }
                if digits && fd >= lo as i64 && fd <= hi as i64 && fd != dir as i64 {
                    // SAFETY: closing an fd number; EBADF is harmless.
                    unsafe { libc::close(fd as RawFd) };
                }
                off += reclen;
            }
        }
        // SAFETY: dir is our own fd.
        unsafe { libc::close(dir) };
        return Ok(());
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
        // SAFETY: closing an fd number; EBADF is harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Closes every fd above 2 not in `keep` (sorted).
fn close_all_but(keep: &[RawFd]) -> Result<(), Failure> {
    let mut lo: RawFd = 3;
    for &k in keep {
        if k > lo {
            close_span(lo, k - 1)?;
        }
        lo = lo.max(k + 1);
    }
    close_span(lo, RawFd::MAX)
}

fn clear_cloexec(fd: RawFd) -> Result<(), Failure> {
    // SAFETY: fcntl on an fd number with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    check(flags, Stage::Fds)?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) }, Stage::Fds)
}

/// The child's setup after the fork, in the order of design section 1: signals, umask, chdir,
/// stdio, pidfile, fd moves, identity, fd close. Reports the pid first when `report_pid` is set.
///
/// # Safety
///
/// Runs between fork and exec: it may be called in a child forked from a multi-threaded
/// process. It calls only async-signal-safe functions, allocates nothing and cannot panic
/// (no indexing that can fail, no unwrap); `plan` must have been sealed before the fork and
/// every fd in it must be open.
pub(crate) unsafe fn setup(plan: &ChildPlan, send_pid: bool) -> Result<(), Failure> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if send_pid && plan.report >= 0 {
        report_pid(plan.report, pid).map_err(|errno| Failure { stage: Stage::Fds, errno })?;
    }
    reset_signals(plan.sigmax);
    if plan.new_pgrp {
        // SAFETY: setpgid on ourselves.
        check(unsafe { libc::setpgid(0, 0) }, Stage::Fds)?;
    }
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(plan.umask) };
    // SAFETY: chdir reads a NUL-terminated path.
    check(unsafe { libc::chdir(plan.chdir.as_ptr()) }, Stage::Chdir)?;
    for (target, &from) in plan.stdio.iter().enumerate() {
        if from >= 0 && from != target as RawFd {
            // SAFETY: dup2 on fd numbers.
            check(retry(|| unsafe { libc::dup2(from, target as RawFd) }), Stage::Stdio)?;
        }
    }
    if plan.pidfile >= 0 {
        let mut buf = [0u8; 11];
        let n = decimal(pid as u32, &mut buf);
        let mut line = [0u8; 12];
        line[..n].copy_from_slice(&buf[..n]);
        line[n] = b'\n';
        // SAFETY: ftruncate and pwrite on an fd we hold, with a valid buffer.
        check(unsafe { libc::ftruncate(plan.pidfile, 0) }, Stage::Pidfile)?;
        // SAFETY: as above.
        let w = unsafe { libc::pwrite(plan.pidfile, line.as_ptr().cast(), n + 1, 0) };
        if w != (n + 1) as isize {
            return Err(fail(Stage::Pidfile));
        }
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
    }
    if plan.close_fds {
        close_all_but(&plan.keep)?;
    }
    for &fd in &plan.inherit {
        clear_cloexec(fd)?;
    }
    Ok(())
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
    for &(index, offset) in &plan.pid_slots {
        if let Some(entry) = plan.env.get_mut(index) {
            if let Some(slot) = entry.get_mut(offset..offset + n + 1) {
                slot[..n].copy_from_slice(&digits[..n]);
                slot[n] = 0;
            }
        }
    }
    // SAFETY: path, argv and envp are NUL-terminated strings in NULL-terminated arrays that
    // live as long as `plan`; execve only returns on failure.
    unsafe { libc::execve(plan.path.as_ptr(), plan.argv_ptrs.as_ptr(), plan.envp.as_ptr()) };
    fail(Stage::Exec)
}

/// Terminates the child at once, without running atexit handlers or destructors.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// In the first child of a double fork: `setsid`, fork again, and let the intermediate process
/// exit, so that the grandchild is no session leader and is reparented. Returns only in the
/// grandchild; failures are reported on the pipe. Async-signal-safe.
fn second_fork(plan: &ChildPlan) {
    // SAFETY: setsid has no preconditions.
    if unsafe { libc::setsid() } == -1 {
        report_failure(plan.report, fail(Stage::Setsid));
        exit_now(1);
    }
    // SAFETY: the grandchild runs only async-signal-safe code until it execs or, in the library's
    // single-threaded case, returns.
    match unsafe { fork() } {
        Err(_) => {
            report_failure(plan.report, fail(Stage::Fork));
            exit_now(1);
        }
        Ok(Fork::Parent(_)) => exit_now(0),
        Ok(Fork::Child) => {}
    }
}

/// Runs [`setup`] in a freshly forked child; a failure is reported and ends the child.
fn set_up_or_die(plan: &ChildPlan) {
    // SAFETY: called only in a child right after fork, with a plan sealed before the fork.
    if let Err(failure) = unsafe { setup(plan, true) } {
        report_failure(plan.report, failure);
        exit_now(1);
    }
}

/// What [`spawn`] returns in the launcher.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// The direct child: the intermediate process of a double fork (it exits at once), or the
    /// program itself with `double_fork == false`.
    pub child: i32,
}

/// Blocks every signal in the calling thread, so that no handler of the parent runs in the
/// child before it resets dispositions, and restores the mask when dropped.
struct SignalsBlocked(SigSet);

impl SignalsBlocked {
    fn new() -> Result<Self, DaemonizeError> {
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old))
            .map_err(|e| DaemonizeError::sys("pthread_sigmask", e))?;
        Ok(SignalsBlocked(old))
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

/// Starts the program described by `plan` as a new process and returns in the launcher.
///
/// With `double_fork`, the child calls `setsid` and forks again so the program is not a session
/// leader and is reparented when the intermediate child exits; without it, the child is the
/// program itself (resident mode). In the program's process: [`setup`], then [`exec`]; a failure
/// is written to the report pipe. Safe to call from a multi-threaded process: the child runs
/// only async-signal-safe code.
pub(crate) fn spawn(plan: &mut ChildPlan, double_fork: bool) -> Result<Spawned, DaemonizeError> {
    let guard = SignalsBlocked::new()?;
    // SAFETY: the child below runs only async-signal-safe code (setup, exec, write, _exit).
    match unsafe { fork() }.map_err(DaemonizeError::ForkFailed)? {
        Fork::Parent(child) => {
            drop(guard);
            Ok(Spawned { child })
        }
        Fork::Child => {
            if double_fork {
                second_fork(plan);
            }
            set_up_or_die(plan);
            let failure = match plan.exec.as_mut() {
                // SAFETY: in the child, on its own copy of the plan.
                Some(exec_plan) => unsafe { exec(exec_plan) },
                None => Failure { stage: Stage::Exec, errno: libc::ENOEXEC },
            };
            report_failure(plan.report, failure);
            exit_now(127)
        }
    }
}

/// Which side of [`fork_daemon`] this is.
#[derive(Debug)]
pub(crate) enum Side {
    /// The original process; `child` is the intermediate child to reap.
    Launcher { child: i32 },
    /// The daemon, set up and running the caller's code.
    Daemon,
}

/// The double fork of the library's `daemonize`: like [`spawn`], but the daemon returns to the
/// caller instead of exec'ing. Setup failures in the daemon are reported and end it.
pub(crate) fn fork_daemon(plan: &ChildPlan, _one_thread: &SingleThreaded) -> Result<Side, DaemonizeError> {
    let guard = SignalsBlocked::new()?;
    // SAFETY: the process is single-threaded (the token proves it), so the daemon may run
    // ordinary code after setup; until then it runs only async-signal-safe code anyway.
    match unsafe { fork() }.map_err(DaemonizeError::ForkFailed)? {
        Fork::Parent(child) => {
            drop(guard);
            Ok(Side::Launcher { child })
        }
        Fork::Child => {
            second_fork(plan);
            set_up_or_die(plan);
            // The guard's saved mask is the launcher's; setup already cleared the daemon's.
            std::mem::forget(guard);
            Ok(Side::Daemon)
        }
    }
}

/// Runs [`setup`] in the calling process itself (foreground mode).
pub(crate) fn setup_in_place(plan: &ChildPlan) -> Result<(), Failure> {
    // SAFETY: setup only makes syscalls on the plan's fds and paths; in the calling process
    // that is as sound as in a child.
    unsafe { setup(plan, false) }
}

/// Replaces the calling process with the program (foreground mode). Returns only on failure.
pub(crate) fn exec_in_place(plan: &mut ExecPlan) -> Failure {
    // SAFETY: plain execve of prepared arrays; the process is ours to replace.
    unsafe { exec(plan) }
}

/// Sets an environment variable in the daemon of the library's `daemonize`.
pub(crate) fn set_env(_one_thread: &SingleThreaded, key: &std::ffi::OsStr, value: &std::ffi::OsStr) {
    // SAFETY: the token proves the process runs one thread, so nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var(key, value) };
}

/// `_exit(2)`: ends the process without running destructors or atexit handlers, for a daemon
/// that reported its failure, and for children.
pub(crate) fn exit_immediately(code: i32) -> ! {
    exit_now(code)
}

/// `waitpid(2)` with a raw status out-parameter; returns the pid (0 with WNOHANG and no change).
pub(crate) fn waitpid_raw(pid: i32, status: &mut libc::c_int, flags: libc::c_int) -> Result<i32, Errno> {
    // SAFETY: status is a valid, exclusive out-pointer for the duration of the call.
    let r = unsafe { libc::waitpid(pid, status, flags) };
    if r == -1 { Err(Errno::last()) } else { Ok(r) }
}

/// `dup2(2)`, retried on EINTR.
pub(crate) fn dup2_retry(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on fd numbers; replacing `to` is what the caller asks for.
    if retry(|| unsafe { libc::dup2(from, to) }) == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `close(2)` of a raw fd number nothing in this crate owns: fds 0-2 for the legacy
/// `close_fd`, and fds a notify sender passed along unasked.
pub(crate) fn close_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: the callers pass fds no OwnedFd or File of this process owns, so no double close.
    if unsafe { libc::close(fd) } == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// fork, setsid, fork; both parents `_exit(0)`. Refuses a multi-threaded process, since the
/// daemon goes on to run ordinary code.
pub(crate) fn classic_daemon() -> io::Result<()> {
    let _one_thread = SingleThreaded::checked().map_err(io::Error::from)?;
    for step in 0..2 {
        // SAFETY: the process runs one thread (checked above), so the child may run any code.
        match unsafe { fork() }? {
            Fork::Parent(_) => exit_now(0),
            Fork::Child if step == 0 => {
                nix::unistd::setsid()?;
            }
            Fork::Child => {}
        }
    }
    Ok(())
}

/// Takes ownership of fd `n`, which this process was handed by its supervisor (the s6
/// notification fd): fails with EBADF when it is not open.
pub(crate) fn take_fd(n: RawFd) -> io::Result<OwnedFd> {
    if !fd_is_open(n) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: fd n is open, and conjure holds it as no other File or OwnedFd: it is the fd
    // the supervisor passed for this purpose, and this is its only owner from now on.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Puts `/dev/null` at fd `n` if `n` is free, so that no file opened until the fork lands on
/// the number a readiness fd must take in the child. `Ok(None)` when `n` is already in use.
pub(crate) fn reserve_fd(n: RawFd) -> io::Result<Option<OwnedFd>> {
    if fd_is_open(n) {
        return Ok(None);
    }
    let null = std::fs::File::open("/dev/null")?;
    if null.as_raw_fd() == n {
        // It took the lowest free number, which was `n` itself.
        return Ok(Some(OwnedFd::from(null)));
    }
    // SAFETY: dup3 onto a number that is free (checked above; the launcher is the only
    // thread that opens fds at this point of a launch).
    if unsafe { libc::dup3(null.as_raw_fd(), n, libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd n was just created by dup3 and is owned by nothing else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(n) }))
}

/// Sets the disposition of `signal` to default, unblocks it and raises it: a resident conjure
/// dies of the signal its program died of, so its own parent sees the same death.
pub(crate) fn die_of(signal: i32) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: valid pointers; no old action asked for.
    if unsafe { libc::sigaction(signal, &dfl, std::ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let mut set = SigSet::empty();
    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
        set.add(sig);
    }
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)?;
    nix::sys::signal::raise(nix::sys::signal::Signal::try_from(signal)?)?;
    Ok(())
}

/// Forks the calling process into a detached copy in a new session: `Ok(Some(pid))` in the
/// original process, `Ok(None)` in the copy. Refuses a multi-threaded process, since the copy
/// goes on to run ordinary code.
pub(crate) fn detach() -> io::Result<Option<i32>> {
    let _one_thread = SingleThreaded::checked().map_err(io::Error::from)?;
    // SAFETY: one thread (checked above), so the child may run any code.
    match unsafe { fork() }? {
        Fork::Parent(pid) => Ok(Some(pid)),
        Fork::Child => {
            nix::unistd::setsid()?;
            Ok(None)
        }
    }
}

/// Whether `fd` is an open file descriptor of this process.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any integer is harmless: EBADF when it is not open.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Tries `flock(LOCK_EX | LOCK_NB)`. `Ok(false)` when another open file description holds it.
pub(crate) fn try_lock(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock on a borrowed, open fd.
    let r = retry(|| unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) });
    if r == 0 {
        return Ok(true);
    }
    match Errno::last_raw() {
        libc::EWOULDBLOCK => Ok(false),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Whether another open file description holds a `flock` on `fd`'s file: a shared,
/// non-blocking lock is tried and, when it is granted, released at once.
pub(crate) fn lock_is_held(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock on a borrowed, open fd.
    let r = retry(|| unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) });
    if r == 0 {
        // SAFETY: as above; this drops only the shared lock this call took.
        unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) };
        return Ok(false);
    }
    match Errno::last_raw() {
        libc::EWOULDBLOCK => Ok(true),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `pidfd_open(2)`: an fd that becomes readable when `pid` exits; `Ok(None)` when the kernel
/// lacks it (before 5.3) or the process is already gone.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<Option<OwnedFd>> {
    // SAFETY: plain integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: the kernel just gave us this fd; nobody else owns it.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }));
    }
    match Errno::last_raw() {
        libc::ENOSYS | libc::ESRCH => Ok(None),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `pidfd_send_signal(2)`: signals the process the pidfd refers to, never a reused pid.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: plain arguments; a null siginfo means "as kill(2) would".
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Registers, through signal-hook, a handler for `signal` that unlinks `path` and then lets the
/// signal do what its default disposition does (for TERM, INT and HUP: end the process).
pub(crate) fn register_pidfile_cleanup(signal: i32, path: &std::path::Path) -> io::Result<signal_hook::SigId> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let action = move || {
        // SAFETY: unlink of a NUL-terminated path prepared before registration.
        unsafe { libc::unlink(path.as_ptr()) };
        let _ = signal_hook::low_level::emulate_default_handler(signal);
    };
    // SAFETY: the action is async-signal-safe, as signal-hook requires: unlink(2), then
    // signal-hook's own emulate_default_handler, which only resets the disposition and raises.
    unsafe { signal_hook::low_level::register(signal, action) }
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
        assert_eq!(Stage::from_u8(0), None);
    }
}
