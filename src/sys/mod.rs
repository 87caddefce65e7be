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
//! A grep for `allow(unsafe_code)` finds the files of this folder and nothing else. Every `unsafe` block says
//! why it is sound in a `// SAFETY:` comment; every `unsafe fn` says what its caller must
//! guarantee.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::io;
use std::os::fd::AsRawFd;

use crate::error::DaemonizeError;

mod child;
mod creds;
mod env;
mod fds;
mod pids;
mod signals;
mod sockets;

pub(crate) use child::{
    ChildPlan, EXEC_TAG, ExecPlan, FAILURE_TAG, Failure, Ids, PID_TAG, Stage, drop_identity, failure_record, pid_record,
};
use child::{exec, fail, report_exec, report_failure, setup};
pub(crate) use creds::with_fs_identity;
pub(crate) use env::Envp;
pub(crate) use fds::*;
pub(crate) use pids::*;
pub(crate) use signals::*;
pub(crate) use sockets::{Ancillary, MAX_FDS, recv_with_fds};

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

/// [`daemonize`](crate::daemonize) without its check that the process runs one thread: for
/// callers that know, on systems where the check cannot be made.
///
/// ```no_run
/// let config = conjure::DaemonConfig::new();
/// // SAFETY: `main` has started no thread, and no crate it calls has either.
/// let mut ctx = unsafe { conjure::daemonize_unchecked(&config)? };
/// ctx.notify_parent()?;
/// # Ok::<(), conjure::DaemonizeError>(())
/// ```
///
/// # Safety
///
/// The process must run exactly one thread: `fork` copies only the calling thread, and the
/// daemon goes on to run ordinary code (allocation, locks) that another thread's held locks
/// would deadlock.
pub unsafe fn daemonize_unchecked(config: &crate::DaemonConfig) -> Result<crate::DaemonContext, DaemonizeError> {
    // SAFETY: the caller promises one thread, as this function's contract requires.
    crate::daemon::daemonize_impl(config, unsafe { SingleThreaded::promised() })
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

/// `_exit(2)`: ends the process at once, without running destructors or atexit handlers: for
/// children, and for a daemon that reported its failure.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// In the first child of a double fork: `setsid`, fork again, and let the intermediate process
/// exit, so that the grandchild is no session leader and is reparented. Returns only in the
/// grandchild, with the intermediate's pid (the session id `setsid` returned, so it costs no
/// syscall) for [`await_reparent`]; failures are reported on the pipe. Async-signal-safe.
fn second_fork(plan: &ChildPlan) -> libc::pid_t {
    // SAFETY: setsid has no preconditions.
    let intermediate = unsafe { libc::setsid() };
    if intermediate == -1 {
        report_failure(plan.report, fail(Stage::Setsid));
        exit_immediately(1);
    }
    // SAFETY: the grandchild runs only async-signal-safe code until it execs or, in the library's
    // single-threaded case, returns.
    match unsafe { fork() } {
        Err(_) => {
            report_failure(plan.report, fail(Stage::Fork));
            exit_immediately(1);
        }
        Ok(Fork::Parent(_)) => exit_immediately(0),
        Ok(Fork::Child) => intermediate,
    }
}

/// How long, at most, the grandchild waits for the intermediate process to be gone, in ms. It
/// does nothing but `_exit(0)`; only a stopped or starved intermediate takes longer, and then
/// the program starts anyway rather than hang.
const REPARENT_PATIENCE_MS: libc::c_int = 1000;

/// In the grandchild of a double fork, just before it execs (or returns, in the library):
/// waits until the intermediate process has exited, so that the program never sees it as its
/// parent. Without this, a program that reads `getppid()` at once sometimes (a few in a
/// thousand launches) sees the intermediate, which has not finished exiting.
///
/// Usually the intermediate is long gone by then, and this is one `getppid`. Otherwise the
/// grandchild waits on a pidfd of its parent, which becomes readable only once the parent has
/// exited, after the kernel handed its children to their new parent; bounded by
/// [`REPARENT_PATIENCE_MS`]. Without pidfds (Linux before 5.3) it looks again every
/// millisecond, as long. Async-signal-safe; allocates nothing.
fn await_reparent(intermediate: libc::pid_t) {
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = || unsafe { libc::getppid() };
    if parent() != intermediate {
        return;
    }
    if let Ok(Some(pidfd)) = pids::pidfd_open(intermediate) {
        let fd = pidfd.as_raw_fd();
        // Between the two getppid calls the intermediate may have exited, been reaped and its
        // pid reused: then the fd names a stranger, but the parent is no longer `intermediate`
        // and nothing waits. While the parent is still `intermediate`, it has not yet handed
        // its children over, so it is not reaped and the fd is its own.
        if parent() == intermediate {
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, as the count says.
            let _ = unsafe { libc::poll(&mut pfd, 1, REPARENT_PATIENCE_MS) };
        }
        return;
    }
    let pause = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
    for _ in 0..REPARENT_PATIENCE_MS {
        // SAFETY: a valid timespec; no remainder wanted.
        unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
        if parent() != intermediate {
            return;
        }
    }
}

/// The system call that moves conjure's fds out of the way of the program's (see
/// [`ChildPlan::seal`]), for its error message.
pub(crate) const RELOCATE_CALL: &str = "fcntl(F_DUPFD_CLOEXEC)";

/// Seals `plan`, blocks every signal, forks and, in the child, makes the double fork (with
/// `double_fork`), runs [`setup`] (a failure is reported and ends the child) and waits to be
/// reparented. `Some(pid)` of the direct child in the original process, whose signal mask is
/// back; `None` in the program's process, set up, with every signal unblocked by setup.
///
/// # Safety
///
/// In the program's process (`None`) the caller may run only async-signal-safe code unless
/// the process runs one thread: `fork` copied only the calling thread.
unsafe fn fork_set_up(plan: &mut ChildPlan, double_fork: bool) -> Result<Option<i32>, DaemonizeError> {
    plan.seal().map_err(|source| DaemonizeError::SystemError { call: RELOCATE_CALL, source })?;
    let guard =
        MaskGuard::block_all().map_err(|source| DaemonizeError::SystemError { call: "pthread_sigmask", source })?;
    // SAFETY: until it returns, the child runs only async-signal-safe code (second_fork,
    // setup, a pidfd wait, write, _exit) on the plan sealed above; after, the caller's
    // contract holds.
    match unsafe { fork() }.map_err(DaemonizeError::ForkFailed)? {
        Fork::Parent(child) => {
            drop(guard);
            Ok(Some(child))
        }
        Fork::Child => {
            let intermediate = if double_fork { Some(second_fork(plan)) } else { None };
            // SAFETY: in a child right after fork, with a plan sealed before the fork.
            if let Err(failure) = unsafe { setup(plan, false) } {
                report_failure(plan.report, failure);
                exit_immediately(1);
            }
            if let Some(intermediate) = intermediate {
                await_reparent(intermediate);
            }
            // The guard's saved mask is the launcher's; setup already cleared the program's.
            guard.forget();
            Ok(None)
        }
    }
}

/// Starts the program described by `plan` and `exec` as a new process and returns, in the
/// launcher, the pid of the direct child: the intermediate process of a double fork (it exits
/// at once), or the program itself with `double_fork == false` (resident mode).
///
/// With `double_fork`, the child calls `setsid` and forks again so the program is not a session
/// leader and is reparented when the intermediate child exits. In the program's process:
/// [`setup`], then [`exec`]; a failure is written to the report pipe. Safe to call from a
/// multi-threaded process: the child runs only async-signal-safe code.
pub(crate) fn spawn(plan: &mut ChildPlan, exec_plan: &mut ExecPlan, double_fork: bool) -> Result<i32, DaemonizeError> {
    // SAFETY: the program's process below runs only async-signal-safe code (write, execve,
    // _exit).
    match unsafe { fork_set_up(plan, double_fork) }? {
        Some(child) => Ok(child),
        None => {
            report_exec(plan.report);
            // SAFETY: in the child, on its own copy of the plan.
            let failure = unsafe { exec(exec_plan) };
            report_failure(plan.report, failure);
            exit_immediately(127)
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
pub(crate) fn fork_daemon(plan: &mut ChildPlan, _one_thread: &SingleThreaded) -> Result<Side, DaemonizeError> {
    // SAFETY: the process is single-threaded (the token proves it), so the daemon may run
    // ordinary code.
    Ok(match unsafe { fork_set_up(plan, true) }? {
        Some(child) => Side::Launcher { child },
        None => Side::Daemon,
    })
}

/// Seals `plan` and runs [`setup`] in the calling process itself (foreground mode).
pub(crate) fn setup_in_place(plan: &mut ChildPlan) -> Result<(), Failure> {
    plan.seal().map_err(|e| Failure { stage: Stage::Relocate, errno: e.raw_os_error().unwrap_or(libc::EIO) })?;
    // SAFETY: setup only makes syscalls on the plan's fds and paths. In place it closes no fd
    // (it marks them close-on-exec), so the `File`s and `OwnedFd`s of this process still own
    // theirs if the exec fails; the fds it dup2s onto (0-2 and the plan's targets) are the
    // numbers the caller asked the program to find there.
    unsafe { setup(plan, true) }
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

/// fork, setsid, fork; both parents `_exit(0)`. Refuses a multi-threaded process, since the
/// daemon goes on to run ordinary code.
pub(crate) fn classic_daemon() -> io::Result<()> {
    let _one_thread = SingleThreaded::checked().map_err(io::Error::from)?;
    for step in 0..2 {
        // SAFETY: the process runs one thread (checked above), so the child may run any code.
        match unsafe { fork() }? {
            Fork::Parent(_) => exit_immediately(0),
            Fork::Child if step == 0 => {
                nix::unistd::setsid()?;
            }
            Fork::Child => {}
        }
    }
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
