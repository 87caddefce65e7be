//! File descriptors and locks: probing, reserving and taking fds by number, `flock`.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::child::retry;

/// Sets or clears `O_NONBLOCK` on the open file description of `fd`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on { flags | OFlag::O_NONBLOCK } else { flags - OFlag::O_NONBLOCK };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
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

/// A close-on-exec copy of `fd` at the lowest free number at least `floor` (`F_DUPFD_CLOEXEC`:
/// the kernel picks and takes the number in one step, whatever other threads open meanwhile).
pub(crate) fn dup_above(fd: RawFd, floor: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl with integer arguments; the new fd is ours alone.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just made this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
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

/// Writes all of `bytes` to fd `fd` without taking it (EINTR retried): the s6 newline, on an
/// fd the caller may own, and the child's records on the report pipe. Async-signal-safe: an
/// OS error is an integer, and nothing is allocated.
pub(crate) fn write_all_raw(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: a valid buffer for its length; write does not keep the pointer.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = bytes.get(n as usize..).unwrap_or(&[]);
    }
    Ok(())
}
