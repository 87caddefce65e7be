//! The `fork` crate's building blocks, which the engine itself is built on.
//!
//! They are thin and safe (but for [`fork`]): each is one or two syscalls with errors as
//! `io::Error`, EINTR retried where a signal could otherwise fail a call spuriously.

use std::io;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::wait::WaitPidFlag;
use nix::unistd::Pid;

pub use crate::sys::{Fork, fork};

mod tree;
pub(crate) use tree::{KILL_WAIT, OwnChild, Process, State, descends, fd_holders, holds_fd, stat, timeout_until};

/// A raw wait status, as `waitpid(2)` reports it; inspect it with [`exited`], [`exit_code`],
/// [`signaled`] and [`signal`].
pub type WaitStatus = i32;

fn raw_waitpid(pid: i32, flags: WaitPidFlag) -> io::Result<Option<WaitStatus>> {
    loop {
        let mut status: libc::c_int = 0;
        match crate::sys::waitpid_raw(pid, &mut status, flags.bits()) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(status)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for child `pid` to change state and returns its raw status; retries on EINTR.
pub fn waitpid(pid: i32) -> io::Result<WaitStatus> {
    raw_waitpid(pid, WaitPidFlag::empty()).map(|s| s.unwrap_or(0))
}

/// Returns the status of child `pid` if it has exited, `None` if it still runs.
pub fn waitpid_nohang(pid: i32) -> io::Result<Option<WaitStatus>> {
    raw_waitpid(pid, WaitPidFlag::WNOHANG)
}

/// Whether the status is a normal exit.
pub fn exited(status: WaitStatus) -> bool {
    libc::WIFEXITED(status)
}

/// The exit code, if the status is a normal exit.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    exited(status).then(|| libc::WEXITSTATUS(status))
}

/// Whether the status is a death by signal.
pub fn signaled(status: WaitStatus) -> bool {
    libc::WIFSIGNALED(status)
}

/// The terminating signal, if the status is a death by signal.
pub fn signal(status: WaitStatus) -> Option<i32> {
    signaled(status).then(|| libc::WTERMSIG(status))
}

/// Starts a new session with the calling process as its leader; returns the session id.
pub fn setsid() -> io::Result<i32> {
    nix::unistd::setsid().map(Pid::as_raw).map_err(Into::into)
}

/// The calling process's process group id.
pub fn getpgrp() -> i32 {
    nix::unistd::getpgrp().as_raw()
}

/// The calling process's pid.
pub fn getpid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// The parent's pid.
pub fn getppid() -> i32 {
    nix::unistd::getppid().as_raw()
}

/// Changes the working directory to `/`.
pub fn chdir() -> io::Result<()> {
    nix::unistd::chdir("/").map_err(Into::into)
}

/// Puts `/dev/null` on stdin, stdout and stderr (EINTR retried). Prefer this to [`close_fd`]:
/// fds 0–2 stay occupied, so no file opened later lands there by accident.
pub fn redirect_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    for target in 0..3 {
        crate::sys::dup2_retry(null.as_raw_fd(), target)?;
    }
    Ok(())
}

/// Closes stdin, stdout and stderr (EINTR not retried: close must not be). Legacy; see
/// [`redirect_stdio`].
pub fn close_fd() -> io::Result<()> {
    for fd in 0..3 {
        crate::sys::close_raw(fd)?;
    }
    Ok(())
}

/// The classic `daemon(3)`: fork, `setsid`, fork, then `chdir("/")` unless `nochdir` and
/// stdio to `/dev/null` unless `noclose`. Returns [`Fork::Child`] in the daemon; the two
/// parents `_exit(0)`.
///
/// It runs ordinary code in the daemon after the forks, so call it from a single-threaded
/// process; [`daemonize_checked`](crate::daemonize_checked) is the full-featured form.
pub fn daemon(nochdir: bool, noclose: bool) -> io::Result<Fork> {
    crate::sys::classic_daemon()?;
    if !nochdir {
        chdir()?;
    }
    if !noclose {
        redirect_stdio()?;
    }
    Ok(Fork::Child)
}

/// Dies of `signal`: resets its disposition to default, unblocks it and raises it, so that the
/// parent sees the same death as a program's. Returns only if the signal does not kill (for
/// example SIGCHLD), or on error. What a resident `conjure` does when its program was killed.
pub fn die_of(signal: i32) -> io::Result<()> {
    crate::sys::die_of(signal)
}

/// Parses a signal as operators write it: a number (`15`), a name with or without `SIG` in any
/// case (`TERM`, `sigterm`), or a real-time signal (`RTMIN`, `RTMIN+3`, `RTMAX-1`).
///
/// ```
/// assert_eq!(conjure::process::parse_signal("TERM"), Ok(libc::SIGTERM));
/// assert_eq!(conjure::process::parse_signal("sigquit"), Ok(libc::SIGQUIT));
/// assert_eq!(conjure::process::parse_signal("RTMIN+3"), Ok(libc::SIGRTMIN() + 3));
/// assert!(conjure::process::parse_signal("KILLL").is_err());
/// ```
pub fn parse_signal(text: &str) -> Result<i32, String> {
    let bad = || format!("invalid signal `{text}`: expected a name like TERM, a number, or RTMIN+N");
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if let Ok(n) = text.parse::<i32>() {
        return (1..=max).contains(&n).then_some(n).ok_or_else(bad);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let offset = |rest: &str| -> Option<i32> { if rest.is_empty() { Some(0) } else { rest.parse::<i32>().ok() } };
    let rt = if let Some(rest) = name.strip_prefix("RTMIN") {
        offset(rest.strip_prefix('+').unwrap_or(rest)).map(|n| min + n)
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        offset(rest.strip_prefix('-').unwrap_or(rest)).map(|n| max - n)
    } else {
        return format!("SIG{name}").parse::<nix::sys::signal::Signal>().map(|s| s as i32).map_err(|_| bad());
    };
    rt.filter(|n| (min..=max).contains(n)).ok_or_else(bad)
}

/// "exited with status 3", "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe_status(status: WaitStatus) -> String {
    if let Some(code) = exit_code(status) {
        format!("exited with status {code}")
    } else if let Some(sig) = signal(status) {
        format!("was killed by signal {sig} ({})", signal_name(sig))
    } else {
        format!("changed state ({status:#x})")
    }
}

/// `SIGTERM`, `SIGRTMIN+3`, or `signal 99`.
pub(crate) fn signal_name(sig: i32) -> String {
    if let Ok(s) = nix::sys::signal::Signal::try_from(sig) {
        return s.as_str().to_string();
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&sig) {
        return if sig - min <= max - sig {
            format!("SIGRTMIN+{}", sig - min)
        } else {
            format!("SIGRTMAX-{}", max - sig)
        };
    }
    format!("signal {sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named_real_time_ones_too() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
        assert_eq!(signal_name(libc::SIGRTMAX()), "SIGRTMAX-0");
        assert_eq!(signal_name(99), "signal 99");
    }
}
