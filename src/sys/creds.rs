//! Filesystem credentials of the calling thread: how conjure opens a file with no more power
//! than the daemon's user has, without forking.
//!
//! Linux checks file access against a thread's filesystem uid and gid and its supplementary
//! groups. Switching the fsuid away from 0 also drops the filesystem capabilities
//! (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`, …) from the effective set, and switching back restores
//! them. The raw system calls change the calling thread only (glibc's `setgroups` would
//! broadcast the change to every thread of the process), so other threads of a library
//! caller are never affected.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::io;

use super::Ids;

/// The system calls with 32-bit ids: on 32-bit arm and x86 the plain numbers are the old
/// 16-bit-id calls.
#[cfg(any(target_arch = "x86", target_arch = "arm"))]
mod nr {
    pub(super) use libc::{
        SYS_getgroups32 as GETGROUPS, SYS_setfsgid32 as SETFSGID, SYS_setfsuid32 as SETFSUID,
        SYS_setgroups32 as SETGROUPS,
    };
}
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
mod nr {
    pub(super) use libc::{
        SYS_getgroups as GETGROUPS, SYS_setfsgid as SETFSGID, SYS_setfsuid as SETFSUID, SYS_setgroups as SETGROUPS,
    };
}

/// The calling thread's supplementary groups.
fn groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: size 0 asks for the count only; no buffer is written.
    let n = unsafe { libc::syscall(nr::GETGROUPS, 0, std::ptr::null_mut::<libc::gid_t>()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut list = vec![0 as libc::gid_t; n as usize];
    // SAFETY: the buffer holds `n` entries, as the call is told.
    let m = unsafe { libc::syscall(nr::GETGROUPS, n, list.as_mut_ptr()) };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    list.truncate(m as usize);
    Ok(list)
}

/// Sets the calling thread's supplementary groups (raw: this thread only).
fn set_groups(list: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the slice is valid for its length.
    if unsafe { libc::syscall(nr::SETGROUPS, list.len(), list.as_ptr()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the fsuid, or (`u32::MAX`) only reads it; returns the previous one.
fn setfsuid(uid: libc::uid_t) -> libc::uid_t {
    // SAFETY: plain integer argument; the call cannot fail, it returns the previous fsuid.
    unsafe { libc::syscall(nr::SETFSUID, uid) as libc::uid_t }
}

/// Sets the fsgid, or (`u32::MAX`) only reads it; returns the previous one.
fn setfsgid(gid: libc::gid_t) -> libc::gid_t {
    // SAFETY: as for setfsuid.
    unsafe { libc::syscall(nr::SETFSGID, gid) as libc::gid_t }
}

/// Runs `f` with the calling thread's filesystem identity switched to `ids` (fsuid, fsgid,
/// supplementary groups), and switches back.
///
/// An identity that cannot be put back would leave the thread running with another user's
/// power (or root's where the user's was meant): that is no state to go on from, so the
/// process aborts, saying why.
pub(crate) fn with_fs_identity<R>(ids: &Ids, f: impl FnOnce() -> R) -> io::Result<R> {
    let old_groups = groups()?;
    let old_gid = setfsgid(u32::MAX);
    let old_uid = setfsuid(u32::MAX);
    set_groups(&ids.groups)?;
    setfsgid(ids.gid);
    setfsuid(ids.uid);
    let switched = setfsgid(u32::MAX) == ids.gid && setfsuid(u32::MAX) == ids.uid;
    let result = switched.then(f);
    setfsuid(old_uid);
    setfsgid(old_gid);
    let restored = set_groups(&old_groups).is_ok() && setfsuid(u32::MAX) == old_uid && setfsgid(u32::MAX) == old_gid;
    if !restored {
        const MSG: &[u8] =
            b"conjure: cannot restore the filesystem identity after opening a file as the daemon's user\n";
        // SAFETY: a raw write of a constant, then abort: nothing that could use the wrong
        // identity runs in between.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::abort();
        }
    }
    result.ok_or_else(|| io::Error::from_raw_os_error(libc::EPERM))
}
