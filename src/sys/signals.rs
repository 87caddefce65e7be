//! Signal dispositions and masks: the reset before exec, the mask held across fork, dying of a
//! program's signal, and the library daemon's pidfile cleanup handler.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::CString;
use std::io;

use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};

use crate::error::DaemonizeError;

/// Puts every signal disposition back to default (real-time ones too) and clears the mask.
pub(super) fn reset_signals(sigmax: libc::c_int) {
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
/// Blocks every signal in the calling thread, so that no handler of the parent runs in the
/// child before it resets dispositions, and restores the mask when dropped.
pub(super) struct SignalsBlocked(SigSet);

impl SignalsBlocked {
    pub(super) fn new() -> Result<Self, DaemonizeError> {
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
