//! Processes by pid and by pidfd: `waitpid`, `pidfd_open`, `pidfd_send_signal`.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `waitpid(2)` with a raw status out-parameter; returns the pid (0 with WNOHANG and no change).
pub(crate) fn waitpid_raw(pid: i32, status: &mut libc::c_int, flags: libc::c_int) -> Result<i32, Errno> {
    // SAFETY: status is a valid, exclusive out-pointer for the duration of the call.
    let r = unsafe { libc::waitpid(pid, status, flags) };
    if r == -1 { Err(Errno::last()) } else { Ok(r) }
}

/// `pidfd_open(2)`: an fd that becomes readable when `pid` exits; `Ok(None)` when the kernel
/// lacks it (before 5.3) or the process is already gone. Async-signal-safe.
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

/// `kill(2)` with a raw signal number (nix's `kill` takes only the classic signals, not the
/// real-time ones). `pid` may be negative: a process group.
pub(crate) fn kill_raw(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    if unsafe { libc::kill(pid, signal) } == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
