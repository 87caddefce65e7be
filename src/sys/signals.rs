//! Signal dispositions and masks: the reset before exec, the mask held across fork, dying of a
//! program's signal, and the library daemon's pidfile cleanup handler.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::CString;
use std::io;

use nix::sys::signal::SigSet;

/// Puts every signal disposition back to default (real-time ones too) and clears the mask.
/// With `keep_sigpipe_ignored` (the library's daemon, which goes on running Rust code), SIGPIPE
/// is ignored instead, as Rust programs start: a write to a closed socket returns EPIPE rather
/// than killing the daemon without a word.
///
/// Before an exec (`keep_sigpipe_ignored == false`) each reset is one raw `rt_sigaction`
/// where the kernel's layout is known: the C library's wrapper adds work per signal (musl
/// blocks and restores every signal around SIGABRT's, and refuses its reserved ones), which
/// made the reset the child's costliest step. The library's daemon keeps the C library's
/// view: it goes on running on it, and its reserved signals' handlers stay its own.
pub(super) fn reset_signals(sigmax: libc::c_int, keep_sigpipe_ignored: bool) {
    if !keep_sigpipe_ignored && reset_raw(sigmax) {
        clear_mask();
        return;
    }
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
    if keep_sigpipe_ignored {
        // SAFETY: as above, with SIG_IGN.
        unsafe {
            let mut ign: libc::sigaction = std::mem::zeroed();
            ign.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(libc::SIGPIPE, &ign, std::ptr::null_mut());
        }
    }
    clear_mask();
}

/// Clears the calling thread's signal mask.
fn clear_mask() {
    // SAFETY: an empty set, then sigprocmask with a valid pointer and no old set.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Sets every signal from 1 to `sigmax` (but KILL and STOP) to SIG_DFL with one raw
/// `rt_sigaction` each, the C library's reserved ones included (the process is about to exec,
/// which would reset their handlers anyway). `false` where the kernel's layout is not known
/// here: then nothing was done. Async-signal-safe.
fn reset_raw(sigmax: libc::c_int) -> bool {
    for sig in 1..=sigmax {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // An error (none is expected) leaves that signal as it was.
        if raw_sigaction(sig, Some(libc::SIG_DFL), None).is_none() {
            return false;
        }
    }
    true
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
    let mut old = 0;
    if raw_sigaction(sig, None, Some(&mut old)) == Some(0) && old == libc::SIG_IGN {
        raw_sigaction(sig, Some(libc::SIG_DFL), None);
    }
}

use kernel::raw_sigaction;

/// The raw system call on the architectures whose kernel `struct sigaction` has the generic
/// layout.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64"
))]
mod kernel {
    /// The kernel's `struct sigaction`: handler, flags, a restorer where the architecture
    /// defines `SA_RESTORER` (not riscv64 nor loongarch64), and a 64-signal mask in longs (so
    /// 4-aligned on 32-bit arm and x86, as the kernel lays it out).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        #[cfg(not(any(target_arch = "riscv64", target_arch = "loongarch64")))]
        restorer: usize,
        mask: [libc::c_ulong; MASK_LONGS],
    }

    const MASK_LONGS: usize = 64 / libc::c_ulong::BITS as usize;

    impl KernelSigaction {
        /// `handler`, with no flags and an empty mask.
        fn new(handler: usize) -> Self {
            KernelSigaction {
                handler,
                flags: 0,
                #[cfg(not(any(target_arch = "riscv64", target_arch = "loongarch64")))]
                restorer: 0,
                mask: [0; MASK_LONGS],
            }
        }
    }

    /// `rt_sigaction(2)` itself, past the C library: sets the handler of `sig` to `handler` (no
    /// flags, empty mask) if given, and reads the old one into `old` if asked. The syscall's
    /// result, or `None` where the kernel's layout is not known here (nothing was done).
    /// Async-signal-safe.
    pub(super) fn raw_sigaction(
        sig: libc::c_int,
        handler: Option<libc::sighandler_t>,
        old: Option<&mut usize>,
    ) -> Option<i64> {
        const SIGSET_SIZE: usize = 8;
        let new = handler.map(KernelSigaction::new);
        let mut was = KernelSigaction::new(0);
        let new_ptr = new.as_ref().map_or(std::ptr::null(), |n| n as *const KernelSigaction);
        let old_ptr = if old.is_some() { &mut was as *mut KernelSigaction } else { std::ptr::null_mut() };
        // SAFETY: rt_sigaction with pointers that are null or to valid values of the kernel's
        // layout, which live across the call.
        let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, new_ptr, old_ptr, SIGSET_SIZE) };
        if let Some(old) = old {
            *old = was.handler;
        }
        Some(r as i64)
    }
}

/// Elsewhere the layout is not known here: nothing is done.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64"
)))]
mod kernel {
    /// See the other architectures' `raw_sigaction`: nothing is done here.
    pub(super) fn raw_sigaction(
        _sig: libc::c_int,
        _handler: Option<libc::sighandler_t>,
        _old: Option<&mut usize>,
    ) -> Option<i64> {
        None
    }
}

/// A signal mask of the calling thread that is put back when dropped.
///
/// nix's `pthread_sigmask` reports success whatever happens (the call returns an error number,
/// not -1), so a mask that was never set would go unnoticed and a TERM meant to be forwarded
/// would kill conjure instead. This checks the result itself.
#[derive(Debug)]
pub(crate) struct MaskGuard {
    old: libc::sigset_t,
}

impl MaskGuard {
    /// Blocks `set` (in addition to what is blocked) in the calling thread.
    pub(crate) fn block(set: &SigSet) -> io::Result<MaskGuard> {
        Self::apply(libc::SIG_BLOCK, set)
    }

    /// Blocks every signal in the calling thread, so that no handler of the parent runs in a
    /// child before it resets dispositions.
    pub(crate) fn block_all() -> io::Result<MaskGuard> {
        Self::apply(libc::SIG_SETMASK, &SigSet::all())
    }

    fn apply(how: libc::c_int, set: &SigSet) -> io::Result<MaskGuard> {
        // SAFETY: an all-zero sigset_t is a valid (empty) set; it is filled by the call below.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to a set and an out-set; pthread_sigmask returns an error number.
        let r = unsafe { libc::pthread_sigmask(how, set.as_ref(), &mut old) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(MaskGuard { old })
    }

    /// Keeps the current mask for good (a forked child that resets its own mask).
    pub(crate) fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for MaskGuard {
    fn drop(&mut self) {
        // SAFETY: restores a mask read from the kernel by `apply`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// Makes sure children are waitable: a SIGCHLD disposition inherited as `SIG_IGN` (or with
/// `SA_NOCLDWAIT`) makes the kernel reap children itself, and their statuses are lost. A
/// handler installed by the caller (library users) is left alone.
pub(crate) fn make_children_waitable() -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid out-value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: reads the current action into a valid out-pointer.
    if unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) } == -1 {
        return Err(io::Error::last_os_error());
    }
    if old.sa_sigaction != libc::SIG_IGN && old.sa_flags & libc::SA_NOCLDWAIT == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: installs SIG_DFL from a valid sigaction.
    if unsafe { libc::sigaction(libc::SIGCHLD, &dfl, std::ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Dies of `signal` the way a process killed by it would, so that the parent sees the same
/// death: the disposition goes back to default, the signal is unblocked and raised. No core of
/// conjure is ever dumped (the program's core, if any, is the one that matters): the process
/// is made non-dumpable and its core limit zero first. SIGKILL, which has no disposition, is
/// sent to ourselves. Returns only if the signal does not kill (SIGCHLD, a stop signal), or on
/// error.
pub(crate) fn die_of(signal: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments; setrlimit with a valid struct.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
    if signal != libc::SIGKILL {
        // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
        let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        dfl.sa_sigaction = libc::SIG_DFL;
        // SAFETY: valid pointers; no old action asked for.
        if unsafe { libc::sigaction(signal, &dfl, std::ptr::null_mut()) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a set holding only `signal`, built on the stack.
        let r = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    // SAFETY: a signal to this very thread; tgkill cannot reach another process.
    if unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Registers, through signal-hook, a handler for `signal` that unlinks whichever of `names`
/// still names the file `dev`/`ino` (the pidfile, as the pidfile guard removes it: never a
/// file someone put in its place), then lets the signal do what its default disposition does
/// (for TERM, INT and HUP: end the process).
pub(crate) fn register_pidfile_cleanup(
    signal: i32,
    names: &[&std::path::Path],
    dev: u64,
    ino: u64,
) -> io::Result<signal_hook::SigId> {
    use std::os::unix::ffi::OsStrExt;
    let names = names
        .iter()
        .map(|n| CString::new(n.as_os_str().as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let action = move || {
        for name in &names {
            // SAFETY: an all-zero stat is a valid out-value; lstat fills it.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: lstat and unlink of NUL-terminated paths prepared before registration,
            // with a valid out-pointer.
            unsafe {
                if libc::lstat(name.as_ptr(), &mut st) == 0 && st.st_dev as u64 == dev && st.st_ino as u64 == ino {
                    libc::unlink(name.as_ptr());
                }
            }
        }
        let _ = signal_hook::low_level::emulate_default_handler(signal);
    };
    // SAFETY: the action is async-signal-safe, as signal-hook requires: lstat(2) and unlink(2)
    // on data prepared before registration (iterating a Vec allocates nothing), then
    // signal-hook's own emulate_default_handler, which only resets the disposition and raises.
    unsafe { signal_hook::low_level::register(signal, action) }
}
