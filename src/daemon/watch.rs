//! The one event loop: every mode of conjure waits here, and nowhere else.
//!
//! A background launcher, a resident conjure and the library's original process wait for the
//! same few things, and must learn of each the moment it happens: the child's report (its pid,
//! the step that failed, end of file once it exec'd; a library daemon's "ready", error or
//! status), the program's end (its pidfd, or SIGCHLD where conjure reaps), the readiness source
//! (a pipe, inotify, a probe's timer), signals sent to conjure (a signalfd), the program's
//! sd_notify datagrams and room on the supervisor's socket (the [`Relay`]), and the
//! `--watchdog` check's timer. [`Watch::next`] polls them all at once and hands out one
//! [`Event`] at a time; the modes are thin callers that decide what each event means to them.
//! Nothing sleeps, and a loop with nothing to wait for but events has no timeout: idle conjure
//! makes no wakeups (the watchdog, when asked for, wakes it once per interval).
//!
//! Order matters when several things happen at once, and the queue keeps the order in which
//! they are learnt within one wake-up: the report pipe first (an exec that failed must not read
//! as a death, nor a death as readiness), then the source, notify datagrams, signals, and the
//! program's end last.
//!
//! The exec is known to have happened only when the report pipe reaches end of file *after*
//! the child's last record, written just before `execve`: an end of file without it is a child
//! that died (or was killed) before its exec, whatever pid it reported. Probing, and any
//! "ready", wait for that.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::daemon::report::{Decoder, Record};
use crate::error::DaemonizeError;
use crate::process::{Process, State, WaitStatus, timeout_until};
use crate::readiness::relay::Relay;
use crate::readiness::source::{Armed, Probe};
use crate::readiness::watchdog::{Verdict, Watchdog};
use crate::sys::{Failure, MaskGuard};

/// Something that happened, for the caller to act on.
#[derive(Debug)]
pub(crate) enum Event {
    /// The child reported the program's pid.
    Pid(i32),
    /// The report pipe reached end of file: after the child's exec record, the exec happened
    /// ([`Watch::exec_done`]); otherwise the child died before it, or a library daemon is gone
    /// or dropped its context.
    Closed,
    /// A step between fork and exec failed.
    Failed(Failure),
    /// A library daemon said it is ready.
    DaemonReady,
    /// A library daemon reported its own failure.
    DaemonError { code: u8, message: String },
    /// A library daemon's status line.
    DaemonStatus(String),
    /// The readiness source said ready (only ever after the exec).
    Ready,
    /// The program ended; its wait status when conjure could reap it.
    Ended(Option<WaitStatus>),
    /// The program was stopped by this signal (job control; only when asked for).
    Stopped(i32),
    /// A signal was sent to conjure.
    Signal(Received),
    /// The readiness timeout passed.
    TimedOut,
    /// Someone else holds the address the program is to listen on (who, for the message).
    Taken(String),
    /// The `--watchdog` check has failed for this long, past `--watchdog-timeout`.
    Unhealthy(Duration),
    /// Another interval of [`Watch::ticks`] passed while waiting.
    Tick,
}

/// A signal conjure received, with who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub signo: i32,
    /// `si_code`: `SI_USER` (0) and other values ≤ 0 mean another process sent it.
    pub code: i32,
    /// The sender's pid, for signals another process sent.
    pub pid: i32,
}

/// Signals delivered through a signalfd instead of their dispositions, while this lives.
#[derive(Debug)]
pub(crate) struct Signals {
    fd: SignalFd,
    _mask: MaskGuard,
}

impl Signals {
    /// Takes over `set`: blocks it in the calling thread (checking that the mask really
    /// changed) and reads it from a signalfd.
    pub(crate) fn take(set: &SigSet) -> Result<Signals, DaemonizeError> {
        Self::read_blocked(Self::block(set)?, set)
    }

    /// The first half of [`take`](Self::take), for a caller that forks in between and whose
    /// child goes on running (the library's daemon): only the mask, which the child inherits
    /// and clears, and no signalfd the child would inherit too.
    pub(crate) fn block(set: &SigSet) -> Result<MaskGuard, DaemonizeError> {
        MaskGuard::block(set).map_err(|source| DaemonizeError::SystemError { call: "pthread_sigmask", source })
    }

    /// The second half of [`take`](Self::take): reads the signals `mask` blocked.
    pub(crate) fn read_blocked(mask: MaskGuard, set: &SigSet) -> Result<Signals, DaemonizeError> {
        let fd = SignalFd::with_flags(set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| DaemonizeError::sys("signalfd", e))?;
        Ok(Signals { fd, _mask: mask })
    }

    /// The signals that interrupt a start: INT, TERM, HUP, QUIT.
    pub(crate) fn interrupts() -> Result<Signals, DaemonizeError> {
        Self::take(&interrupt_set())
    }

    /// Every signal that can be caught, real-time ones and the fault signals included: a fault
    /// signal the kernel raises for conjure's own fault is delivered whatever the mask, while
    /// one that another process sent is forwarded like any other.
    pub(crate) fn all() -> Result<Signals, DaemonizeError> {
        Self::take(&SigSet::all())
    }

    fn read(&self) -> Option<Received> {
        match self.fd.read_signal() {
            Ok(Some(info)) => {
                Some(Received { signo: info.ssi_signo as i32, code: info.ssi_code, pid: info.ssi_pid as i32 })
            }
            _ => None,
        }
    }
}

/// Signals that interrupt a start that is not ready yet.
pub(crate) const INTERRUPTS: [Signal; 4] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT];

/// [`INTERRUPTS`] as a set.
pub(crate) fn interrupt_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in INTERRUPTS {
        set.add(s);
    }
    set
}

/// Whether `r` is one of the [`INTERRUPTS`].
pub(crate) fn interrupts_start(r: &Received) -> bool {
    INTERRUPTS.iter().any(|s| *s as i32 == r.signo)
}

/// The program being waited for, and everything that can wake the wait.
#[derive(Debug)]
pub(crate) struct Watch {
    /// The program and its tree.
    pub process: Process,
    report: Option<OwnedFd>,
    decoder: Decoder,
    /// The child's last record before `execve` arrived.
    exec_started: bool,
    /// The readiness source, until it said ready.
    source: Option<Armed>,
    /// `READY=1` heard before the exec was known: counts once it is.
    early_ready: bool,
    relay: Option<Relay>,
    watchdog: Option<Watchdog>,
    signals: Option<Signals>,
    /// Report job-control stops of the program.
    stops: bool,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    next_probe: Option<Instant>,
    probing: bool,
    /// With [`Watch::ticks`]: the interval and the next tick.
    tick: Option<(Duration, Instant)>,
    queue: VecDeque<Event>,
    ended_reported: bool,
}

impl Watch {
    /// Watches `process`, with the read end of its report pipe, which must be non-blocking
    /// (see [`report_pipe`](crate::daemon::launcher::report_pipe)).
    pub(crate) fn new(process: Process, report: Option<OwnedFd>) -> Watch {
        Watch {
            process,
            report,
            decoder: Decoder::default(),
            exec_started: false,
            source: None,
            early_ready: false,
            relay: None,
            watchdog: None,
            signals: None,
            stops: false,
            deadline: None,
            timeout: None,
            next_probe: None,
            probing: false,
            tick: None,
            queue: VecDeque::new(),
            ended_reported: false,
        }
    }

    /// Waits for `source` once the program exec'd, for at most `timeout` from now (`None`:
    /// forever; a timeout too large to represent is forever too).
    pub(crate) fn source(&mut self, source: Armed, timeout: Option<Duration>) -> &mut Self {
        self.source = Some(source);
        self.timeout = timeout;
        self.deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        self
    }

    /// Reads the program's sd_notify through `relay` (its hosted socket is the program's
    /// `NOTIFY_SOCKET`): datagrams from the program's tree are relayed to the supervisor, if
    /// the relay has one, and `READY=1` is readiness with the notify source.
    pub(crate) fn relay(&mut self, relay: Relay) -> &mut Self {
        self.relay = Some(relay);
        self
    }

    /// Runs `watchdog` from now on: its checks are scheduled in this loop, a passed one is
    /// followed by `WATCHDOG=1` to the supervisor, and one failed for too long is
    /// [`Event::Unhealthy`].
    pub(crate) fn watchdog(&mut self, mut watchdog: Watchdog) -> &mut Self {
        watchdog.start();
        self.watchdog = Some(watchdog);
        self
    }

    /// The last `STATUS=` the program sent.
    pub(crate) fn status(&self) -> Option<&str> {
        self.relay.as_ref().and_then(Relay::status)
    }

    /// The last `ERRNO=` the program sent.
    pub(crate) fn errno(&self) -> Option<i32> {
        self.relay.as_ref().and_then(Relay::errno)
    }

    /// Whether conjure relays to a supervisor of its own.
    pub(crate) fn relays(&self) -> bool {
        self.relay.as_ref().is_some_and(Relay::relays)
    }

    /// Tells the supervisor something of conjure's own, in order with what the program said
    /// (through the relay's queue; never blocks).
    pub(crate) fn tell_supervisor(&mut self, states: &[sd_notify::NotifyState<'_>]) -> std::io::Result<()> {
        match self.relay.as_mut() {
            Some(relay) => relay.tell(states),
            None => Ok(()),
        }
    }

    /// Delivers these signals as [`Event::Signal`].
    pub(crate) fn signals(&mut self, signals: Signals) -> &mut Self {
        self.signals = Some(signals);
        self
    }

    /// Sends [`Event::Tick`] every `interval` until the readiness source is disarmed (a
    /// launcher's progress line on a terminal); `None` stops them.
    pub(crate) fn ticks(&mut self, interval: Option<Duration>) -> &mut Self {
        self.tick = interval.map(|i| (i, Instant::now() + i));
        self
    }

    /// Reports the program's job-control stops as [`Event::Stopped`].
    pub(crate) fn stops(&mut self, stops: bool) -> &mut Self {
        self.stops = stops;
        self
    }

    /// Whether the exec is known to have happened: the report pipe reached end of file after
    /// the child's exec record.
    pub(crate) fn exec_done(&self) -> bool {
        self.report.is_none() && self.exec_started
    }

    /// The readiness timeout, as extended by the program.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Stops watching the readiness source (it said ready, or the wait is over).
    pub(crate) fn disarm(&mut self) {
        // A `cmd:` check still running is killed as it is dropped.
        self.source = None;
        self.deadline = None;
        self.next_probe = None;
        self.tick = None;
    }

    /// The next event. Blocks until there is one.
    pub(crate) fn next(&mut self) -> Result<Event, DaemonizeError> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(e);
            }
            self.wait_once()?;
        }
    }

    /// Reads and drops the signals that arrived since the loop last looked: the wait is over
    /// (the program is ready, or ended), and a signal still pending when the caller's mask comes
    /// back must not be delivered as if it had arrived now.
    pub(crate) fn discard_signals(&mut self) {
        if let Some(signals) = self.signals.as_ref() {
            while let Some(r) = signals.read() {
                if !self_inflicted(&r) {
                    tracing::debug!(signal = r.signo, "signal arrived after the wait; dropped");
                }
            }
        }
    }

    /// The program is gone: relays what it said last, and gives the supervisor until
    /// `deadline` to take what still waits for room.
    pub(crate) fn finish_relay(&mut self, deadline: Option<Instant>) {
        let process = &self.process;
        if let Some(relay) = self.relay.as_mut() {
            relay.finish(|sender| owns(process, sender), deadline);
        }
    }

    /// One poll over everything; queues what it learnt.
    fn wait_once(&mut self) -> Result<(), DaemonizeError> {
        // Probing starts once the program exec'd, never on a pid alone.
        if self.exec_done() && self.source.is_some() && !self.probing {
            self.probing = true;
            self.probe()?;
            if !self.queue.is_empty() {
                return Ok(());
            }
        }
        let source_fd = if self.exec_done() { self.source.as_ref().and_then(Armed::fd) } else { None };
        // On the stack, not in a Vec: this runs once per event, a relayed datagram included,
        // and musl's allocator is slow.
        let wanted = [
            (self.report.as_ref().map(AsFd::as_fd), PollFlags::POLLIN),
            (source_fd, PollFlags::POLLIN),
            (self.relay.as_ref().and_then(Relay::host_fd), PollFlags::POLLIN),
            (self.relay.as_ref().and_then(Relay::upstream_fd), PollFlags::POLLOUT),
            (self.watchdog.as_ref().and_then(Watchdog::fd), PollFlags::POLLIN),
            (self.signals.as_ref().map(|s| s.fd.as_fd()), PollFlags::POLLIN),
            (self.process.pidfd(), PollFlags::POLLIN),
        ];
        let mut fds = PollSet::new(&wanted);
        let [report_at, source_at, notify_at, upstream_at, check_at, signals_at, pidfd_at] =
            wanted.map(|(fd, events)| fds.add(fd, events));

        let probe_at = self.next_probe.filter(|_| self.exec_done());
        let check_due = self.watchdog.as_ref().and_then(Watchdog::due);
        let mut wake = [self.deadline, probe_at, check_due, self.tick.map(|t| t.1)].into_iter().flatten().min();
        // Without a pidfd (kernels before 5.3) and without SIGCHLD, the program's end is
        // noticed by looking every 100 ms.
        if pidfd_at.is_none() && self.process.pid() > 0 && !self.watches_sigchld() {
            let soon = Instant::now() + Duration::from_millis(100);
            wake = Some(wake.map_or(soon, |w| w.min(soon)));
        }
        match poll(fds.as_mut(), timeout_until(wake)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(DaemonizeError::sys("poll", e)),
        }
        let ready = |i: Option<usize>| fds.ready(i);
        let (report, source, notify, signals, pidfd) =
            (ready(report_at), ready(source_at), ready(notify_at), ready(signals_at), ready(pidfd_at));
        let (upstream, check) = (ready(upstream_at), ready(check_at));

        if report {
            self.read_report()?;
        }
        if source && self.source.as_mut().map(Armed::readable).transpose()? == Some(true) {
            self.queue.push_back(Event::Ready);
        }
        if probe_at.is_some_and(|t| Instant::now() >= t) {
            self.probe()?;
        }
        if notify {
            self.read_notify();
        }
        if upstream && let Some(relay) = self.relay.as_mut() {
            relay.flush();
        }
        if check || check_due.is_some_and(|t| Instant::now() >= t) {
            self.run_watchdog();
        }
        let mut child_changed = pidfd || (pidfd_at.is_none() && !self.watches_sigchld());
        if signals {
            child_changed |= self.read_signals();
        }
        if child_changed {
            self.check_program()?;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.deadline = None;
            self.queue.push_back(Event::TimedOut);
        }
        if let Some((interval, at)) = self.tick {
            let now = Instant::now();
            if now >= at {
                self.tick = Some((interval, now + interval));
                self.queue.push_back(Event::Tick);
            }
        }
        Ok(())
    }

    fn watches_sigchld(&self) -> bool {
        self.signals.is_some() && self.process.reaps_all()
    }

    /// Looks at the source now and schedules the next look.
    fn probe(&mut self) -> Result<(), DaemonizeError> {
        self.next_probe = None;
        let Some(source) = self.source.as_mut() else { return Ok(()) };
        match source.probe(&self.process)? {
            Probe::Ready => self.queue.push_back(Event::Ready),
            Probe::Again(at) => self.next_probe = at,
            Probe::Taken(who) => self.queue.push_back(Event::Taken(who)),
        }
        Ok(())
    }

    /// Runs the watchdog's check when due (or when its command exited) and acts on it.
    fn run_watchdog(&mut self) {
        let Some(watchdog) = self.watchdog.as_mut() else { return };
        match watchdog.poll(&self.process) {
            Some(Verdict::Passed) if watchdog.pings() => {
                if let Some(relay) = self.relay.as_mut()
                    && let Err(e) = relay.tell(&[sd_notify::NotifyState::Watchdog])
                {
                    tracing::debug!(error = %e, "cannot send WATCHDOG=1");
                }
            }
            Some(Verdict::Expired(failed_for)) => self.queue.push_back(Event::Unhealthy(failed_for)),
            _ => {}
        }
    }

    /// Reads what the report pipe holds, without blocking.
    fn read_report(&mut self) -> Result<(), DaemonizeError> {
        let Some(fd) = self.report.as_ref() else { return Ok(()) };
        let mut buf = [0u8; 512];
        loop {
            match nix::unistd::read(fd.as_fd(), &mut buf) {
                Ok(0) => {
                    tracing::debug!(pid = self.process.pid(), exec = self.exec_started, "report pipe closed");
                    self.report = None;
                    self.queue.push_back(Event::Closed);
                    if self.exec_done() && std::mem::take(&mut self.early_ready) {
                        self.queue.push_back(Event::Ready);
                    }
                    return Ok(());
                }
                Ok(n) => {
                    self.decoder.feed(&buf[..n]);
                    while let Some(record) = self.decoder.next().map_err(read_error)? {
                        let event = match record {
                            Record::Pid(p) => {
                                self.process
                                    .attach(p)
                                    .map_err(|source| DaemonizeError::SystemError { call: "pidfd_open", source })?;
                                Event::Pid(p)
                            }
                            Record::Exec => {
                                self.exec_started = true;
                                continue;
                            }
                            Record::Failed(f) => Event::Failed(f),
                            Record::Ready => Event::DaemonReady,
                            Record::Error { code, message } => Event::DaemonError { code, message },
                            Record::Status(s) => Event::DaemonStatus(s),
                        };
                        self.queue.push_back(event);
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(read_error(e.into())),
            }
        }
    }

    /// Receives what is queued on the hosted socket: the relay passes on what the program's
    /// tree said; conjure acts on `EXTEND_TIMEOUT_USEC=`, `WATCHDOG_USEC=` and `READY=1`.
    fn read_notify(&mut self) {
        let Some(relay) = self.relay.as_mut() else { return };
        let process = &self.process;
        let waits_for_ready = matches!(self.source, Some(Armed::Notify));
        let heard = relay.receive(|sender| owns(process, sender), waits_for_ready);
        let relays = relay.relays();
        if let Some(usec) = heard.extend
            && let Some(deadline) = self.deadline
        {
            let new = Instant::now().checked_add(usec);
            self.deadline = new.map(|n| n.max(deadline));
            self.timeout = self.timeout.map(|t| t.max(usec));
        }
        if let (Some(usec), Some(watchdog)) = (heard.watchdog_usec, self.watchdog.as_mut())
            && relays
        {
            watchdog.set_supervisor(usec);
        }
        if heard.ready && waits_for_ready {
            if self.exec_done() {
                self.queue.push_back(Event::Ready);
            } else {
                self.early_ready = true;
            }
        }
    }

    /// Reads every pending signal. SIGCHLD is conjure's own business (it says a child changed
    /// state: returns `true`); the rest become events.
    fn read_signals(&mut self) -> bool {
        let Some(signals) = self.signals.as_ref() else { return false };
        let mut child = false;
        while let Some(r) = signals.read() {
            if r.signo == libc::SIGCHLD {
                child = true;
            } else if !self_inflicted(&r) {
                self.queue.push_back(Event::Signal(r));
            }
            // A signal conjure caused itself (SIGPIPE from a log line written to a closed
            // stderr) is dropped without a word: logging it would cause the next one.
        }
        child
    }

    /// Looks at the program after a hint that it changed: reaps, and queues its end or stop.
    fn check_program(&mut self) -> Result<(), DaemonizeError> {
        match self.process.state(self.stops) {
            State::Running => {}
            State::Stopped(sig) => self.queue.push_back(Event::Stopped(sig)),
            State::Ended(status) => {
                // Its end of the report pipe is closed by now (or held only by a child of a
                // library daemon): what is left in it comes first.
                self.read_report()?;
                if !self.ended_reported {
                    self.ended_reported = true;
                    self.queue.push_back(Event::Ended(status));
                }
            }
        }
        // Resident conjure reaps every other child too (orphans it adopted).
        self.process.reap_orphans();
        Ok(())
    }
}

/// The fds of one `poll`, at most seven, in a fixed array: no allocation per wait.
struct PollSet<'a> {
    /// `None` when there is nothing to poll (then `poll` only waits).
    fds: Option<[PollFd<'a>; 7]>,
    len: usize,
}

impl<'a> PollSet<'a> {
    /// An empty set; unused slots hold a copy of the first fd of `wanted`, never polled.
    fn new(wanted: &[(Option<BorrowedFd<'a>>, PollFlags); 7]) -> PollSet<'a> {
        let fds = wanted
            .iter()
            .find_map(|(fd, _)| *fd)
            .map(|filler| std::array::from_fn(|i| PollFd::new(wanted[i].0.unwrap_or(filler), PollFlags::empty())));
        PollSet { fds, len: 0 }
    }

    /// Adds `fd`, if there is one, for `events`; returns its index.
    fn add(&mut self, fd: Option<BorrowedFd<'a>>, events: PollFlags) -> Option<usize> {
        let fd = fd?;
        let slot = self.fds.as_mut()?.get_mut(self.len)?;
        *slot = PollFd::new(fd, events);
        self.len += 1;
        Some(self.len - 1)
    }

    fn as_mut(&mut self) -> &mut [PollFd<'a>] {
        match self.fds.as_mut() {
            Some(fds) => &mut fds[..self.len],
            None => &mut [],
        }
    }

    /// Whether the fd at `index` had an event.
    fn ready(&self, index: Option<usize>) -> bool {
        let fd = index.and_then(|i| self.fds.as_ref()?.get(i));
        fd.and_then(PollFd::revents).is_some_and(|r| !r.is_empty())
    }
}

/// Whether `sender` belongs to the program's tree (see [`Process::contains`]), once the
/// program's pid is known.
fn owns(process: &Process, sender: i32) -> bool {
    process.pid() > 0 && process.contains(sender)
}

fn read_error(source: io::Error) -> DaemonizeError {
    DaemonizeError::SystemError { call: "read from the report pipe", source }
}

/// Whether a signal conjure received came from conjure itself (a SIGPIPE from a write to a
/// closed stderr, say): such a signal never reaches the program.
fn self_inflicted(r: &Received) -> bool {
    r.code <= 0 && r.pid == std::process::id() as i32
}
