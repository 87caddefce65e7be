//! Telling the supervisor: the sinks, run by the launcher (or resident conjure) once the source
//! said "ready".
//!
//! The pipe sink needs nothing here: the launcher exiting 0 *is* the message. The pidfile sink
//! is a rename done by the engine, which owns the pidfile. What remains is sd_notify from a
//! process about to exit (resident conjure tells its supervisor through its relay instead) and
//! the s6 notification fd.

use std::os::fd::RawFd;

use sd_notify::NotifyState;

use crate::error::DaemonizeError;
use crate::readiness::relay;
use crate::readiness::{FIRST_NOTIFICATION_FD, Sink};

/// Reports "ready" through `sink`. `mainpid` is sent when the main process is not the one
/// notifying (the launcher exits and the program stays); `status` is the program's last
/// `STATUS=`.
pub(crate) fn ready(sink: Sink, mainpid: Option<i32>, status: Option<&str>) -> Result<(), DaemonizeError> {
    match sink {
        Sink::Pipe | Sink::Pidfile => Ok(()),
        Sink::Notify => {
            let mut states = Vec::new();
            if let Some(pid) = mainpid {
                states.push(NotifyState::MainPid(pid as u32));
            }
            if let Some(s) = status {
                states.push(NotifyState::Status(s));
            }
            states.push(NotifyState::Ready);
            if relay::supervisor_address().is_none() {
                tracing::warn!("readiness sink is notify, but NOTIFY_SOCKET is not set: nobody to tell");
            }
            notify(&states)
        }
        Sink::Fd(n) => write_newline(n),
    }
}

/// Sends `states` to the supervisor (`NOTIFY_SOCKET`) from a process that does not stay to
/// relay (a background launcher, the library's original process, a library daemon): nothing
/// set is success, as with sd_notify(3).
pub(crate) fn notify(states: &[NotifyState<'_>]) -> Result<(), DaemonizeError> {
    relay::notify_supervisor(states)
        .map_err(|source| DaemonizeError::SystemError { call: "sd_notify to NOTIFY_SOCKET", source })
}

/// s6's convention: one newline on fd `n`. The fd is written through, not taken: in a library
/// caller it may belong to a `File` or `OwnedFd`; it closes with the process.
fn write_newline(n: RawFd) -> Result<(), DaemonizeError> {
    crate::sys::write_all_raw(n, b"\n")
        .map_err(|source| DaemonizeError::SystemError { call: "write to the readiness fd", source })
}

/// Checks before the fork that a sink can work: the fd of `fd:N` is open.
pub(crate) fn validate(sink: Sink) -> Result<(), DaemonizeError> {
    match sink {
        // A sink the library was given as a value, not parsed, may name stdio.
        Sink::Fd(n) if n < FIRST_NOTIFICATION_FD || !crate::sys::fd_is_open(n) => {
            Err(DaemonizeError::invalid(format!("invalid readiness sink `fd:{n}`: fd {n} is not open (or is stdio)")))
        }
        _ => Ok(()),
    }
}
