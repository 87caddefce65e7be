//! Receiving a datagram with what travels beside it: the sender's credentials and the file
//! descriptors it passed (`SCM_CREDENTIALS`, `SCM_RIGHTS`).
//!
//! nix's `recvmsg` hands back the fds of a control message only when the control data was not
//! truncated; a sender that passes more fds than the buffer holds (`MSG_CTRUNC`) would leave the
//! ones that did arrive open in conjure, unowned, forever. Here every fd the kernel installed is
//! turned into an [`OwnedFd`] at once, truncated or not, so that it is closed unless someone
//! keeps it: the caller's fd count cannot grow, whatever a sender does.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most fds one message can carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// Room for the control data of one datagram: the sender's credentials and [`MAX_FDS`] fds.
/// Allocated once and reused; `u64` words keep it aligned for `cmsghdr`.
#[derive(Debug)]
pub(crate) struct Ancillary {
    words: Box<[u64]>,
}

impl Ancillary {
    /// A buffer large enough that no sender can truncate the control data with fds alone.
    pub(crate) fn new() -> Ancillary {
        // SAFETY: CMSG_SPACE only computes a size from its argument.
        let bytes = unsafe {
            libc::CMSG_SPACE(size_of::<libc::ucred>() as u32) as usize
                + libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) as usize
        };
        Ancillary { words: vec![0u64; bytes.div_ceil(8)].into_boxed_slice() }
    }

    fn len(&self) -> usize {
        self.words.len() * 8
    }
}

impl Default for Ancillary {
    fn default() -> Self {
        Ancillary::new()
    }
}

/// One datagram received by [`recv_with_fds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Datagram {
    /// Its length (at most the buffer's).
    pub len: usize,
    /// It was longer than the buffer (`MSG_TRUNC`), or its control data was cut (`MSG_CTRUNC`):
    /// what arrived is incomplete.
    pub truncated: bool,
    /// The sender's pid, when the socket has `SO_PASSCRED` on.
    pub pid: Option<i32>,
}

/// Receives one datagram without blocking: `Ok(None)` when none is queued. Every fd that came
/// with it is pushed onto `fds` (which the caller clears), close-on-exec.
pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    ancillary: &mut Ancillary,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Option<Datagram>> {
    let control_len = ancillary.len();
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths, padding included).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ancillary.words.as_mut_ptr().cast();
    msg.msg_controllen = control_len as _;
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC;
    let n = loop {
        // SAFETY: msg points at `iov` (valid for `buf`) and at the control buffer, valid for
        // `control_len` bytes; both outlive the call.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EINTR) => continue,
            e if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(None),
            e => return Err(e),
        }
    };
    let mut pid = None;
    let start = ancillary.words.as_ptr() as usize;
    // What the kernel wrote, never more than the buffer.
    let end = start + (msg.msg_controllen as usize).min(control_len);
    // SAFETY: msg describes the control buffer the kernel filled; CMSG_FIRSTHDR reads only the
    // msghdr.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return only headers that lie whole within
        // msg_controllen bytes of the (aligned) buffer.
        let (level, kind, len) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len as usize) };
        // SAFETY: as above; CMSG_DATA is pointer arithmetic on a valid header.
        let data = unsafe { libc::CMSG_DATA(cmsg) } as usize;
        let data_end = (cmsg as usize).saturating_add(len).min(end);
        let data_len = data_end.saturating_sub(data);
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            for i in 0..data_len / size_of::<RawFd>() {
                // SAFETY: the int lies within the control data the kernel wrote (bounded by
                // data_end); read unaligned, as CMSG_DATA promises no alignment.
                let fd = unsafe { std::ptr::read_unaligned((data as *const RawFd).add(i)) };
                if fd >= 0 {
                    // SAFETY: the kernel just installed this fd in our table for this message;
                    // nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        } else if level == libc::SOL_SOCKET && kind == libc::SCM_CREDENTIALS && data_len >= size_of::<libc::ucred>() {
            // SAFETY: a whole ucred lies within the control data (checked just above).
            let cred = unsafe { std::ptr::read_unaligned(data as *const libc::ucred) };
            pid = Some(cred.pid);
        }
        // SAFETY: msg and cmsg are as above; CMSG_NXTHDR returns null past msg_controllen.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    let truncated = msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 || n > buf.len();
    Ok(Some(Datagram { len: n.min(buf.len()), truncated, pid }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg, setsockopt, sockopt};

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
    }

    #[test]
    fn every_passed_fd_is_owned_even_when_the_control_data_is_cut() {
        let (a, b) = UnixDatagram::pair().unwrap();
        setsockopt(&b, sockopt::PassCred, &true).unwrap();
        let passed: Vec<OwnedFd> = (0..20).map(|_| std::fs::File::open("/dev/null").unwrap().into()).collect();
        let raw: Vec<RawFd> = passed.iter().map(AsRawFd::as_raw_fd).collect();
        let send = |text: &[u8]| {
            let rights = [ControlMessage::ScmRights(&raw)];
            sendmsg::<()>(a.as_raw_fd(), &[IoSlice::new(text)], &rights, MsgFlags::empty(), None).unwrap();
        };
        let before = open_fds();
        send(b"FDSTORE=1");
        let mut buf = [0u8; 64];
        let mut ancillary = Ancillary::new();
        let mut fds = Vec::new();
        let d = recv_with_fds(b.as_fd(), &mut buf, &mut ancillary, &mut fds).unwrap().unwrap();
        assert_eq!(&buf[..d.len], b"FDSTORE=1");
        assert_eq!(d.pid, Some(std::process::id() as i32));
        assert!(!d.truncated);
        assert_eq!(fds.len(), 20);
        fds.clear();
        assert_eq!(open_fds(), before, "the received fds were closed");

        // A control buffer too small for the credentials and 20 fds: cut, and still nothing leaks.
        send(b"X");
        let mut small = Ancillary { words: vec![0u64; 8].into_boxed_slice() };
        let d = recv_with_fds(b.as_fd(), &mut buf, &mut small, &mut fds).unwrap().unwrap();
        assert!(d.truncated);
        assert!(fds.len() < 20);
        fds.clear();
        assert_eq!(open_fds(), before, "a truncated control message leaked fds");
        assert!(recv_with_fds(b.as_fd(), &mut buf, &mut ancillary, &mut fds).unwrap().is_none());
    }

    #[test]
    fn a_datagram_longer_than_the_buffer_is_marked_truncated() {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.send(&[b'x'; 100]).unwrap();
        let mut buf = [0u8; 10];
        let mut fds = Vec::new();
        let d = recv_with_fds(b.as_fd(), &mut buf, &mut Ancillary::new(), &mut fds).unwrap().unwrap();
        assert!(d.truncated);
        assert_eq!(d.len, 10);
    }
}
