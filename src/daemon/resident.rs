//! Resident mode: conjure stays as the program's parent.
//!
//! Some jobs need conjure alive after the program starts: a readiness source in the
//! foreground (someone must watch the socket, the port, the file), the notify sink as the
//! main process (so that `NotifyAccess=main` accepts it), and PID 1 in a container, where
//! nobody else reaps orphans or turns a `docker stop` into a signal the program sees.
//!
//! conjure then does what tini does, and no more: it forwards every signal a supervisor or a
//! terminal sends (to the program, or its process group with `--signal-group`), reaps every
//! zombie (as PID 1, or as a child subreaper elsewhere), relays the program's sd_notify
//! messages to the real `NOTIFY_SOCKET`, removes the pidfile when the program exits, waits for
//! the remaining descendants, and ends the way the program ended. Signals arrive through a
//! signalfd and everything waits in one `poll` without a timeout, so idle conjure makes no
//! wakeups.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::daemon::launcher::Outcome;
use crate::daemon::{Prepared, reap_all};
use crate::error::DaemonizeError;
use crate::readiness::notify;
use crate::readiness::wait::{Armed, Progress, Waiter};
use crate::readiness::{Sink, sink};
use crate::sys::{self, ChildPlan};

/// Signals conjure does not forward: those only the kernel sends to a faulting thread, the
/// ones that cannot be caught, and SIGCHLD, which is conjure's own business.
const NOT_FORWARDED: [Signal; 10] = [
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGKILL,
    Signal::SIGSTOP,
    Signal::SIGCHLD,
];

/// The resident launch: everything [`Launcher`](crate::Launcher) prepared, and how to behave.
pub(crate) struct Resident<'a> {
    pub prepared: &'a mut Prepared,
    pub plan: ChildPlan,
    pub armed: Armed,
    /// With the notify sink and another source: the socket the program's sd_notify messages
    /// come to, to be relayed.
    pub relay_host: Option<notify::NotifyHost>,
    pub sink: Sink,
    pub timeout: Option<Duration>,
    pub kill_after: Duration,
    pub signal_group: bool,
    pub program: &'a std::path::Path,
}

impl Resident<'_> {
    /// Starts the program as conjure's child, waits for readiness, reports it, supervises the
    /// program until it and its descendants are gone, and says how it ended.
    pub(crate) fn run(mut self) -> Result<Outcome, DaemonizeError> {
        let pid1 = std::process::id() == 1;
        if !pid1 {
            nix::sys::prctl::set_child_subreaper(true)
                .map_err(|e| DaemonizeError::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
        }
        let mut mask = SigSet::all();
        for s in [Signal::SIGFPE, Signal::SIGILL, Signal::SIGSEGV, Signal::SIGBUS, Signal::SIGTRAP, Signal::SIGSYS] {
            mask.remove(s);
        }
        mask.thread_block().map_err(|e| DaemonizeError::sys("pthread_sigmask", e))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| DaemonizeError::sys("signalfd", e))?;

        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| DaemonizeError::sys("pipe2", e))?;
        self.plan.report = std::os::fd::AsRawFd::as_raw_fd(&write_end);
        self.plan.new_pgrp = self.signal_group;
        self.plan.seal();
        tracing::debug!("starting the program as conjure's child (resident)");
        let spawned = sys::spawn(&mut self.plan, false)?;
        drop(write_end);
        self.armed.forked();
        let pid = spawned.child;
        let target = if self.signal_group { -pid } else { pid };

        let relay = self.sink == Sink::Notify;
        let mut waiter = Waiter::new(Some(pid), Some(read_end), self.timeout)?;
        let mut forward = || forward_pending(&signals, target);
        let waited = waiter.wait(
            &mut self.armed,
            |Progress::Notify(bytes)| {
                if relay {
                    relay_to_supervisor(bytes, false);
                }
            },
            Some((signals.as_fd(), &mut forward)),
        );
        Waiter::disarm(&mut self.armed);
        if let Err(why) = waited {
            waiter.stop(self.kill_after);
            self.prepared.remove_pidfile();
            return Err(crate::daemon::launcher::not_ready_error(why, self.prepared, self.program, self.timeout));
        }
        tracing::debug!(pid, "program ready");
        if let Err(e) = self.prepared.publish_pidfile() {
            waiter.stop(self.kill_after);
            self.prepared.remove_pidfile();
            return Err(e);
        }
        // Relayed status lines already reached the supervisor; others ride along with READY=1.
        sink::ready(self.sink, None, if relay { None } else { waiter.status.as_deref() })?;
        let notify_host = match &self.armed {
            Armed::Notify(host) => Some(host),
            _ => self.relay_host.as_ref(),
        };
        let ended = supervise(pid, target, &signals, notify_host, relay, waiter.reaped);
        self.prepared.remove_pidfile();
        Ok(ended)
    }
}

/// Forwards every queued signal but SIGCHLD to `target` (a pid, or minus a process group).
fn forward_pending(signals: &SignalFd, target: i32) {
    while let Ok(Some(info)) = signals.read_signal() {
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
        if NOT_FORWARDED.contains(&sig) {
            continue;
        }
        tracing::debug!(signal = %sig, target, "forwarding");
        let _ = nix::sys::signal::kill(Pid::from_raw(target), sig);
    }
}

/// The supervision loop after readiness. Returns how the program ended, once it and every
/// descendant left to conjure are gone.
fn supervise(
    pid: i32,
    target: i32,
    signals: &SignalFd,
    notify_host: Option<&notify::NotifyHost>,
    relay: bool,
    already: Option<crate::process::WaitStatus>,
) -> Outcome {
    let mut ended = already;
    loop {
        // Zombies that died while conjure waited for readiness sent their SIGCHLD then.
        let (program, none_left) = reap_all(pid);
        if ended.is_none() {
            if let Some(status) = program {
                tracing::debug!(pid, status = %crate::readiness::wait::describe_status(status), "program ended");
                ended = Some(status);
            }
        }
        if none_left {
            break;
        }
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if let Some(host) = notify_host {
            fds.push(PollFd::new(host.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "poll failed while supervising");
                break;
            }
        }
        let notify_ready = fds.get(1).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        drop(fds);
        if notify_ready {
            if let Some(host) = notify_host {
                while let Ok(Some(d)) = host.recv() {
                    let ours = d.pid.is_some_and(|p| notify::is_descendant(p, pid));
                    if relay && ours {
                        relay_to_supervisor(&d.bytes, true);
                    }
                }
            }
        }
        if ended.is_none() {
            forward_pending(signals, target);
        } else {
            // The program is gone; what remains are its orphans. A stop request is theirs now.
            while let Ok(Some(info)) = signals.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
                if !NOT_FORWARDED.contains(&sig) {
                    for child in children_of(std::process::id() as i32) {
                        let _ = nix::sys::signal::kill(Pid::from_raw(child), sig);
                    }
                }
            }
        }
    }
    match ended {
        Some(status) => match (crate::process::exit_code(status), crate::process::signal(status)) {
            (Some(code), _) => Outcome::Exited(code),
            (None, Some(sig)) => Outcome::Killed(sig),
            _ => Outcome::Exited(1),
        },
        None => Outcome::Exited(1),
    }
}

/// Relays a program's datagram to conjure's own supervisor, as the main process. `MAINPID=`
/// is dropped (conjure is the main process); before readiness so is `READY=1`, which conjure
/// sends itself once its source says so.
fn relay_to_supervisor(bytes: &[u8], after_ready: bool) {
    let Some(address) = notify::supervisor_address() else { return };
    let kept: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty() && !l.starts_with(b"MAINPID=") && (after_ready || *l != b"READY=1"))
        .collect();
    if kept.is_empty() {
        return;
    }
    let message = kept.join(&b'\n');
    if let Err(e) = notify::send_to(&address, &message) {
        tracing::debug!(error = %e, "cannot relay a notify message");
    }
}

/// Direct children of `pid`, from `/proc`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| notify::parent_of(*p) == Some(pid))
        .collect()
}
