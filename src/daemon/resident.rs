//! Resident mode: conjure stays as the program's parent.
//!
//! Some jobs need conjure alive after the program starts: a readiness source in the
//! foreground (someone must watch the socket, the port, the file), the notify sink as the
//! main process (so that `NotifyAccess=main` accepts it), and PID 1 in a container, where
//! nobody else reaps orphans or turns a `docker stop` into a signal the program sees.
//!
//! conjure then does what tini does, and a little more:
//! - every signal it receives is forwarded, by number (real-time ones included; `--rewrite`
//!   turns one into another), to the program or its process group, from the first instant:
//!   a TERM before readiness reaches the program like any other. A fault signal that another
//!   process sent is forwarded too; a SIGPIPE conjure caused itself is not;
//! - it reaps every zombie (as PID 1, or as the child subreaper of the program's orphans);
//! - it relays the program's sd_notify messages to the real `NOTIFY_SOCKET`, as its own (the
//!   [`Relay`](crate::readiness::relay::Relay)), and with `--watchdog` feeds the supervisor's
//!   watchdog from a check of the program, or stops a program that fails it for too long;
//! - on a terminal, the program gets its own process group, made the terminal's foreground
//!   group, so that a Ctrl-C reaches it once, from the terminal; when the program is stopped
//!   from the terminal (Ctrl-Z), conjure stops too, so the shell gets its prompt back, and
//!   `fg` resumes both;
//! - when the program exits, whatever is left of its tree gets TERM, then KILL after
//!   `--kill-after`, the pidfile goes, and conjure ends the way the program ended.
//!
//! Signals arrive through a signalfd and everything waits in the one event loop without a
//! timeout, so idle conjure makes no wakeups (but for `--watchdog`'s checks).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::daemon::Prepared;
use crate::daemon::launcher::{Outcome, Subreaper, abort, name, report_pipe, said, until_ready};
use crate::daemon::watch::{Event, Received, Signals, Watch};
use crate::error::DaemonizeError;
use crate::process::Process;
use crate::readiness::relay::Relay;
use crate::readiness::source::Armed;
use crate::readiness::watchdog::Watchdog;
use crate::readiness::{Sink, sink};
use crate::sys::{self, ChildPlan, ExecPlan};

/// How long the supervisor has to take what the program said last, once it ended.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// The resident launch: everything [`Launcher`](crate::Launcher) prepared, and how to behave.
pub(crate) struct Resident<'a> {
    pub prepared: &'a mut Prepared,
    pub plan: ChildPlan,
    pub exec: ExecPlan,
    pub armed: Armed,
    /// The program's `NOTIFY_SOCKET`, hosted by conjure, and the way to the supervisor.
    pub relay: Option<Relay>,
    /// `--watchdog`, started once the program is ready.
    pub watchdog: Option<Watchdog>,
    pub sink: Sink,
    pub timeout: Option<Duration>,
    pub kill_after: Duration,
    pub signal_group: bool,
    /// Signals forwarded as others: `(received, sent)`.
    pub rewrite: &'a [(i32, i32)],
    pub program: &'a Path,
}

impl Resident<'_> {
    /// Starts the program as conjure's child, waits for readiness, reports it, supervises the
    /// program until it ends, stops what is left of its tree, and says how it ended.
    pub(crate) fn run(self) -> Result<Outcome, DaemonizeError> {
        let Resident {
            prepared,
            mut plan,
            mut exec,
            mut armed,
            relay,
            watchdog,
            sink,
            timeout,
            kill_after,
            signal_group,
            rewrite,
            program,
        } = self;
        let pid1 = std::process::id() == 1;
        let _subreaper = if pid1 { None } else { Some(Subreaper::set().map_err(|e| prepared.abandon(e))?) };
        // Every signal, taken over before the fork so that none is lost before the loop reads it.
        let signals = Signals::all().map_err(|e| prepared.abandon(e))?;
        let terminal = Terminal::foreground();
        let (read_end, write_end) = report_pipe().map_err(|e| prepared.abandon(e))?;
        plan.report = write_end.as_raw_fd();
        plan.new_pgrp = signal_group || terminal.is_some();
        plan.tty = terminal.as_ref().map_or(-1, |t| t.fd.as_raw_fd());
        tracing::debug!(terminal = terminal.is_some(), "starting the program as conjure's child (resident)");
        let pid = sys::spawn(&mut plan, &mut exec, false).map_err(|e| prepared.abandon(e))?;
        drop(write_end);
        armed.forked();
        if plan.new_pgrp {
            // The child does the same; doing it here too means no signal for the group can
            // arrive before the group exists.
            let _ = nix::unistd::setpgid(Pid::from_raw(pid), Pid::from_raw(pid));
        }
        let process = Process::child(pid, plan.new_pgrp.then_some(pid), true);
        let exec_source = matches!(armed, Armed::Exec);
        let mut watch = Watch::new(process, Some(read_end));
        // Job control needs a shell above conjure to take the terminal back and resume the job:
        // PID 1 has none (and cannot stop itself), so there a stopped program stays its own.
        let job_control = terminal.is_some() && !pid1;
        watch.source(armed, timeout).signals(signals).stops(job_control);
        if let Some(relay) = relay {
            watch.relay(relay);
        }
        let mut forwarder = Forwarder {
            signal_group: signal_group || terminal.is_some(),
            rewrite,
            terminal,
            job_control,
            forwarded: false,
        };

        let started = until_ready(&mut watch, exec_source, prepared, program, |watch, event| {
            forwarder.other(watch, event);
            Ok(())
        })
        .and_then(|()| {
            watch.disarm();
            tracing::debug!(pid, "program ready");
            prepared.publish_pidfile()?;
            if sink == Sink::Notify && watch.relays() {
                // In order after what the program said; its status lines reached the
                // supervisor already.
                watch
                    .tell_supervisor(&[sd_notify::NotifyState::Ready])
                    .map_err(|source| DaemonizeError::SystemError { call: "sd_notify to NOTIFY_SOCKET", source })
            } else {
                sink::ready(sink, None, watch.status())
            }
        });
        let stopped_before_ready = match started {
            Ok(()) => None,
            // A stop request conjure passed on ended the program before it was ready (`docker
            // stop`, `systemctl stop` during a slow start): conjure ends the way the program
            // did, as the program alone would have, not with "failed to start".
            Err(DaemonizeError::NotReady(_)) if forwarder.forwarded => match watch.process.state(false) {
                crate::process::State::Ended(status) => Some(status),
                _ => None,
            },
            Err(e) => {
                forwarder.release_terminal();
                return Err(abort(&mut watch.process, prepared, kill_after, e));
            }
        };
        let check = watchdog.map(|w| {
            tracing::debug!(check = w.label(), interval = ?w.interval(), pings = w.pings(), "watchdog started");
            let label = w.label().to_string();
            watch.watchdog(w);
            label
        });

        let status = if let Some(status) = stopped_before_ready {
            status
        } else {
            loop {
                let failed = match watch.next() {
                    Ok(Event::Ended(status)) => break status,
                    Ok(Event::Unhealthy(failed_for)) => DaemonizeError::Unhealthy(format!(
                        "`{}` failed its watchdog check {} for {}; stopped it{}",
                        name(program),
                        check.as_deref().unwrap_or_default(),
                        crate::duration::format(failed_for),
                        said(&watch)
                    )),
                    Ok(event) => {
                        forwarder.other(&mut watch, event);
                        continue;
                    }
                    Err(e) => e,
                };
                forwarder.release_terminal();
                return Err(abort(&mut watch.process, prepared, kill_after, failed));
            }
        };
        tracing::debug!(pid, ?status, "program ended");
        // What the program said last must not be lost with it.
        watch.finish_relay(Instant::now().checked_add(LAST_WORDS));
        // What is left of the program's tree (nothing, usually: terminate's first look says so).
        watch.process.terminate(libc::SIGTERM, kill_after);
        forwarder.release_terminal();
        watch.discard_signals();
        prepared.remove_pidfile();
        Ok(match status {
            Some(s) => match (crate::process::exit_code(s), crate::process::signal(s)) {
                (Some(code), _) => Outcome::Exited(code),
                (None, Some(sig)) => Outcome::Killed(sig),
                _ => Outcome::Exited(1),
            },
            None => Outcome::Exited(1),
        })
    }
}

/// What resident conjure does with a signal, a stop or a datagram.
struct Forwarder<'a> {
    signal_group: bool,
    rewrite: &'a [(i32, i32)],
    terminal: Option<Terminal>,
    /// Stop with the program, and resume with it (a terminal, and a shell above conjure).
    job_control: bool,
    /// Whether a signal was passed on to the program (what ends it then is the sender's doing).
    forwarded: bool,
}

impl Forwarder<'_> {
    fn other(&mut self, watch: &mut Watch, event: Event) {
        match event {
            Event::Signal(r) => self.forward(watch, r),
            Event::Stopped(sig) => self.stopped(watch, sig),
            _ => {}
        }
    }

    /// Forwards a signal conjure received to the program (or its group), rewritten if asked.
    fn forward(&mut self, watch: &Watch, r: Received) {
        let signal = self.rewrite.iter().find(|(from, _)| *from == r.signo).map_or(r.signo, |(_, to)| *to);
        if signal == libc::SIGCONT {
            // `fg` (or `bg`): hand the terminal back to the program if conjure is in front.
            if let Some(t) = &self.terminal {
                t.give_if_ours(watch.process.group());
            }
        }
        tracing::debug!(received = r.signo, signal, pid = watch.process.pid(), "forwarding");
        let sent = if self.signal_group { watch.process.signal_group(signal) } else { watch.process.signal(signal) };
        match sent {
            Ok(()) => self.forwarded = true,
            Err(e) => tracing::debug!(signal, error = %e, "cannot forward"),
        }
        if self.job_control && matches!(r.signo, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) {
            self.stop_with_the_program();
        }
    }

    /// The program was stopped: on a terminal (job control), conjure stops too, so that its
    /// shell sees the job stopped and gets its prompt back.
    fn stopped(&mut self, watch: &Watch, sig: i32) {
        tracing::debug!(pid = watch.process.pid(), sig, "program stopped");
        if self.job_control {
            self.stop_with_the_program();
        }
    }

    fn stop_with_the_program(&mut self) {
        if let Some(t) = &self.terminal {
            t.take_back();
        }
        tracing::debug!("stopping with the program (job control)");
        // SIGSTOP to itself, as a shell's job stops: the shell gets its prompt back, and this
        // returns once conjure is continued.
        if let Err(e) = sys::kill_raw(std::process::id() as i32, libc::SIGSTOP) {
            tracing::debug!(error = %e, "cannot stop");
        }
        // Continued: the SIGCONT that did it is in the signalfd, and forwarding it resumes the
        // program.
    }

    /// The terminal goes back to conjure's own process group, as the shell left it.
    fn release_terminal(&mut self) {
        if let Some(t) = self.terminal.take() {
            t.take_back();
        }
    }
}

/// conjure's controlling terminal, when it is in the terminal's foreground process group.
struct Terminal {
    fd: OwnedFd,
    own: Pid,
}

impl Terminal {
    /// The controlling terminal, if conjure has one and is in front on it (a job started in the
    /// background with `&` must not take the terminal from its shell).
    fn foreground() -> Option<Terminal> {
        let fd: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open("/dev/tty")
            .ok()?
            .into();
        let own = nix::unistd::getpgrp();
        (nix::unistd::tcgetpgrp(fd.as_fd()).ok()? == own).then_some(Terminal { fd, own })
    }

    /// Makes `group` the foreground group, if conjure's own group is in front now.
    fn give_if_ours(&self, group: Option<i32>) {
        if let Some(g) = group
            && nix::unistd::tcgetpgrp(self.fd.as_fd()).ok() == Some(self.own)
        {
            let _ = nix::unistd::tcsetpgrp(self.fd.as_fd(), Pid::from_raw(g));
        }
    }

    /// Makes conjure's own group the foreground group again (SIGTTOU is blocked: no stop).
    fn take_back(&self) {
        let _ = nix::unistd::tcsetpgrp(self.fd.as_fd(), self.own);
    }
}
