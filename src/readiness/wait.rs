//! Waiting for readiness: one `poll` loop over the report pipe, the program's pidfd, the
//! source's fd (notify socket, notification pipe, inotify) and, for probing sources, a timer.
//!
//! The loop learns of every outcome the moment it happens: "ready" from the source, a failed
//! `exec` from the report pipe, the program's death from its pidfd (its status from `waitpid`,
//! since the launcher is its parent or its subreaper), and the timeout from `poll`'s own
//! timeout. Nothing sleeps; only `tcp:`, `unix:` and `cmd:` wake up on their backoff.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::daemon::report::{Decoder, Record};
use crate::error::DaemonizeError;
use crate::readiness::Source;
use crate::readiness::notify::{self, NotifyHost};
use crate::readiness::probe::{self, Backoff};
use crate::sys::{self, Failure};

/// A source with what it needs set up before the fork (socket bound, pipe made).
#[derive(Debug)]
pub(crate) enum Armed {
    Exec,
    Notify(NotifyHost),
    Fd { read: OwnedFd, write: Option<OwnedFd>, target: RawFd, seen: Vec<u8> },
    Tcp { host: String, port: u16, backoff: Backoff },
    Unix { path: PathBuf, backoff: Backoff },
    File { path: PathBuf, inotify: Inotify },
    Cmd { command: String, backoff: Backoff, running: Option<(Child, Option<OwnedFd>)> },
}

impl Armed {
    /// Prepares `source` in the launcher, before the fork.
    pub(crate) fn arm(source: &Source) -> Result<Armed, DaemonizeError> {
        Ok(match source {
            Source::Exec => Armed::Exec,
            Source::Notify => Armed::Notify(
                NotifyHost::bind()
                    .map_err(|source| DaemonizeError::SystemError { call: "binding the notify socket", source })?,
            ),
            Source::Fd(n) => {
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                    .map_err(|e| DaemonizeError::sys("pipe2", e))?;
                // The program's end must block like any ordinary pipe.
                let flags = nix::fcntl::OFlag::from_bits_truncate(
                    nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_GETFL)
                        .map_err(|e| DaemonizeError::sys("fcntl", e))?,
                );
                nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(flags - nix::fcntl::OFlag::O_NONBLOCK))
                    .map_err(|e| DaemonizeError::sys("fcntl", e))?;
                Armed::Fd { read, write: Some(write), target: *n, seen: Vec::new() }
            }
            Source::Tcp(host, port) => Armed::Tcp { host: host.clone(), port: *port, backoff: Backoff::default() },
            Source::Unix(path) => Armed::Unix { path: absolute(path)?, backoff: Backoff::default() },
            Source::File(path) => {
                let path = absolute(path)?;
                let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
                    .map_err(|e| DaemonizeError::sys("inotify_init1", e))?;
                let dir = path.parent().unwrap_or(Path::new("/"));
                inotify
                    .add_watch(
                        dir,
                        AddWatchFlags::IN_CREATE
                            | AddWatchFlags::IN_MOVED_TO
                            | AddWatchFlags::IN_ATTRIB
                            | AddWatchFlags::IN_CLOSE_WRITE,
                    )
                    .map_err(|e| {
                        DaemonizeError::invalid(format!(
                            "cannot watch `{}` for readiness file `{}`: {}",
                            dir.display(),
                            path.display(),
                            e.desc()
                        ))
                    })?;
                Armed::File { path, inotify }
            }
            Source::Cmd(command) => Armed::Cmd { command: command.clone(), backoff: Backoff::default(), running: None },
        })
    }

    /// The variable the program must find in its environment, if any.
    pub(crate) fn env(&self) -> Option<(&'static str, String)> {
        match self {
            Armed::Notify(host) => Some((notify::NOTIFY_SOCKET, host.env_value())),
            _ => None,
        }
    }

    /// The fd the program must find at a fixed number, if any: `(ours, its number)`.
    pub(crate) fn child_fd(&self) -> Option<(RawFd, RawFd)> {
        match self {
            Armed::Fd { write: Some(w), target, .. } => Some((w.as_raw_fd(), *target)),
            _ => None,
        }
    }

    /// After the fork: the launcher closes its copy of the program's end, so that the program
    /// closing it shows as end of file.
    pub(crate) fn forked(&mut self) {
        if let Armed::Fd { write, .. } = self {
            *write = None;
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, DaemonizeError> {
    std::path::absolute(path).map_err(|e| DaemonizeError::invalid(format!("invalid path `{}`: {e}", path.display())))
}

/// Why the program is not ready.
#[derive(Debug)]
pub(crate) enum NotReady {
    /// It exited or was killed; the text says how ("exited with status 3").
    Died(String),
    /// The timeout passed.
    TimedOut(Duration),
    /// The exec failed.
    ExecFailed(Failure),
    /// Waiting itself failed.
    Error(DaemonizeError),
}

/// Something the caller may want to act on while waiting: relay to the supervisor, log.
#[derive(Debug)]
pub(crate) enum Progress<'a> {
    /// A notify datagram from the program, as it came.
    Notify(&'a [u8]),
}

/// The program being waited for.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub pid: i32,
    pidfd: Option<OwnedFd>,
    report: Option<OwnedFd>,
    decoder: Decoder,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    next_probe: Option<Instant>,
    /// The last `ERRNO=` the program sent, for the failure message.
    pub errno: Option<i32>,
    /// The last `STATUS=` the program sent.
    pub status: Option<String>,
    /// The program's wait status, once it was reaped here.
    pub reaped: Option<crate::process::WaitStatus>,
}

impl Waiter {
    /// Watches the program behind the report pipe `report`: `pid` when known (our child),
    /// else learnt from the pipe's first record (the grandchild, adopted as its subreaper).
    pub(crate) fn new(
        pid: Option<i32>,
        report: Option<OwnedFd>,
        timeout: Option<Duration>,
    ) -> Result<Waiter, DaemonizeError> {
        let mut w = Waiter {
            pid: 0,
            pidfd: None,
            report,
            decoder: Decoder::default(),
            deadline: timeout.map(|t| Instant::now() + t),
            timeout,
            next_probe: None,
            errno: None,
            status: None,
            reaped: None,
        };
        if let Some(pid) = pid {
            w.watch(pid).map_err(|e| match e {
                NotReady::Error(e) => e,
                _ => DaemonizeError::invalid("unexpected"),
            })?;
        }
        Ok(w)
    }

    fn watch(&mut self, pid: i32) -> Result<(), NotReady> {
        if self.pid == pid {
            return Ok(());
        }
        self.pid = pid;
        self.pidfd = sys::pidfd_open(pid)
            .map_err(|source| NotReady::Error(DaemonizeError::SystemError { call: "pidfd_open", source }))?;
        Ok(())
    }

    /// Waits until `source` says ready, or why it will not. `extra` is one more fd to watch
    /// (resident mode: its signalfd) with what to do when it is readable.
    pub(crate) fn wait(
        &mut self,
        source: &mut Armed,
        mut on_progress: impl FnMut(Progress<'_>),
        mut extra: Option<(BorrowedFd<'_>, &mut dyn FnMut())>,
    ) -> Result<(), NotReady> {
        loop {
            let exec_done = self.report.is_none();
            if exec_done && self.next_probe.is_none() && self.probe_source(source)? {
                return Ok(());
            }
            let source_fd = if exec_done { source_fd(source) } else { None };
            let mut fds = Vec::with_capacity(4);
            let report_idx = self.report.as_ref().map(|r| {
                fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let pidfd_idx = self.pidfd.as_ref().map(|p| {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let source_idx = source_fd.map(|fd| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            let extra_idx = extra.as_ref().map(|(fd, _)| {
                fds.push(PollFd::new(*fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            let wake = [self.deadline, self.next_probe.filter(|_| exec_done)].into_iter().flatten().min();
            // Without a pidfd (kernels before 5.3), death is noticed by checking every 100 ms.
            let wake = if self.pidfd.is_none() && self.pid > 0 {
                Some(wake.map_or(Instant::now() + Duration::from_millis(100), |w| {
                    w.min(Instant::now() + Duration::from_millis(100))
                }))
            } else {
                wake
            };
            let timeout = match wake {
                None => PollTimeout::NONE,
                Some(w) => {
                    // Rounded up, so that poll never wakes a hair before the deadline and spins.
                    let ms =
                        w.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000).min(i32::MAX as u128);
                    PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
                }
            };
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(NotReady::Error(DaemonizeError::sys("poll", e))),
            }
            let ready = |i: Option<usize>| i.and_then(|i| fds[i].revents()).is_some_and(|r| !r.is_empty());
            let (report_ready, pid_ready, source_ready, extra_ready) =
                (ready(report_idx), ready(pidfd_idx), ready(source_idx), ready(extra_idx));
            drop(fds);

            if extra_ready {
                if let Some((_, f)) = extra.as_mut() {
                    f();
                }
            }
            if report_ready {
                self.read_report()?;
                // The exec source is satisfied by the exec alone, even if the program then
                // exited in the same instant.
                if self.report.is_none() && matches!(source, Armed::Exec) {
                    return Ok(());
                }
            }
            if source_ready && self.handle_source(source, &mut on_progress)? {
                return Ok(());
            }
            if self.pid > 0 && (pid_ready || self.pidfd.is_none()) {
                if let Some(how) = self.exited() {
                    // Its end of the report pipe is closed now: what is left in it is all.
                    while self.report.is_some() {
                        self.read_report()?;
                    }
                    if matches!(source, Armed::Exec) {
                        // Exec'd, then exited: the exec source is satisfied all the same.
                        return Ok(());
                    }
                    return Err(NotReady::Died(how));
                }
            }
            if self.next_probe.is_some_and(|t| Instant::now() >= t) {
                self.next_probe = None;
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(NotReady::TimedOut(self.timeout.unwrap_or_default()));
            }
        }
    }

    /// Reads the report pipe: a failure record ends the wait, end of file means exec'd.
    fn read_report(&mut self) -> Result<(), NotReady> {
        let Some(fd) = self.report.as_ref() else { return Ok(()) };
        let mut buf = [0u8; 256];
        let n = match std::fs::File::from(fd.try_clone().map_err(io_err)?).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(io_err(e)),
        };
        if n == 0 {
            tracing::debug!(pid = self.pid, "program exec'd; watching for readiness");
            self.report = None;
            return Ok(());
        }
        self.decoder.feed(&buf[..n]);
        while let Some(record) = self.decoder.next().map_err(io_err)? {
            match record {
                Record::Pid(p) => self.watch(p)?,
                Record::Failed(f) => {
                    // Reap it now, so that no zombie stays behind.
                    let _ = self.exited();
                    return Err(NotReady::ExecFailed(f));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Probes a probing source when due; schedules the next probe. `true` when ready.
    fn probe_source(&mut self, source: &mut Armed) -> Result<bool, NotReady> {
        match source {
            Armed::Tcp { host, port, backoff } => {
                if probe::tcp(host, *port) {
                    return Ok(true);
                }
                self.next_probe = Some(probe::due(backoff));
            }
            Armed::Unix { path, backoff } => {
                if probe::unix(path) {
                    return Ok(true);
                }
                self.next_probe = Some(probe::due(backoff));
            }
            Armed::File { path, .. } => {
                // Checked once after exec; from then on inotify says when to look again.
                if path.exists() {
                    return Ok(true);
                }
                self.next_probe = Some(Instant::now() + Duration::from_secs(86400 * 365));
            }
            Armed::Cmd { command, backoff, running } => {
                if running.is_none() {
                    let child = probe::spawn_check(command).map_err(|source| {
                        NotReady::Error(DaemonizeError::SystemError { call: "starting the readiness command", source })
                    })?;
                    let fd = sys::pidfd_open(child.id() as i32).ok().flatten();
                    *running = Some((child, fd));
                }
                // Checked again when its pidfd says it exited (or on the backoff without one).
                self.next_probe = Some(probe::due(backoff));
                if let Some((child, _)) = running.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        *running = None;
                        if status.success() {
                            return Ok(true);
                        }
                        tracing::debug!(%status, "readiness command not yet successful");
                    }
                }
            }
            // exec'd is all the exec source asks for.
            Armed::Exec => return Ok(true),
            Armed::Notify(_) | Armed::Fd { .. } => {
                self.next_probe = Some(Instant::now() + Duration::from_secs(86400 * 365));
            }
        }
        Ok(false)
    }

    /// Handles the source's fd becoming readable. `true` when ready.
    fn handle_source(
        &mut self,
        source: &mut Armed,
        on_progress: &mut impl FnMut(Progress<'_>),
    ) -> Result<bool, NotReady> {
        match source {
            Armed::Notify(host) => {
                let mut ready = false;
                while let Some(d) = host.recv().map_err(io_err)? {
                    let Some(sender) = d.pid else { continue };
                    if !notify::is_descendant(sender, self.pid) {
                        tracing::debug!(
                            sender,
                            program = self.pid,
                            "ignoring a notify datagram from outside the program"
                        );
                        continue;
                    }
                    let m = notify::parse(&d.bytes);
                    if let Some(usec) = m.extend_timeout {
                        let new = Instant::now() + usec;
                        self.deadline = self.deadline.map(|d| d.max(new));
                        self.timeout = self.timeout.map(|t| t.max(usec));
                    }
                    if m.errno.is_some() {
                        self.errno = m.errno;
                    }
                    if let Some(s) = &m.status {
                        self.status = Some(s.clone());
                    }
                    on_progress(Progress::Notify(&d.bytes));
                    ready |= m.ready;
                }
                Ok(ready)
            }
            Armed::Fd { read, seen, target, .. } => {
                let mut buf = [0u8; 512];
                match nix::unistd::read(read.as_fd(), &mut buf) {
                    Ok(0) => {
                        tracing::debug!(fd = *target, "the program closed its readiness fd without a newline");
                        // Keep it out of the poll set: replace it by a pipe nobody writes to.
                        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                            .map_err(|e| NotReady::Error(DaemonizeError::sys("pipe2", e)))?;
                        std::mem::forget(w);
                        *read = r;
                        Ok(false)
                    }
                    Ok(n) => {
                        seen.extend_from_slice(&buf[..n]);
                        Ok(seen.contains(&b'\n'))
                    }
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(false),
                    Err(e) => Err(NotReady::Error(DaemonizeError::sys("read", e))),
                }
            }
            Armed::File { path, inotify } => {
                let _ = inotify.read_events();
                Ok(path.exists())
            }
            Armed::Cmd { running, .. } => {
                let Some((child, _)) = running.as_mut() else { return Ok(false) };
                match child.try_wait() {
                    Ok(Some(status)) => {
                        *running = None;
                        if !status.success() {
                            tracing::debug!(%status, "readiness command not yet successful");
                        }
                        Ok(status.success())
                    }
                    _ => Ok(false),
                }
            }
            _ => Ok(false),
        }
    }

    /// Whether the program has exited; reaps it and says how.
    fn exited(&mut self) -> Option<String> {
        if let Some(status) = self.reaped {
            return Some(describe_status(status));
        }
        match crate::process::waitpid_nohang(self.pid) {
            Ok(Some(status)) => {
                self.reaped = Some(status);
                Some(describe_status(status))
            }
            Ok(None) => None,
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                // Not our child (no subreaper): the pidfd still says it is gone.
                (self.pidfd.is_some() || nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), None).is_err())
                    .then(|| "exited".to_string())
            }
            Err(_) => None,
        }
    }

    /// Stops the program: TERM, then KILL after `grace`; reaps it.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if self.pid <= 0 {
            return;
        }
        let signal = |w: &Waiter, sig: i32| crate::daemon::control::send(w.pidfd.as_ref(), w.pid, sig).is_ok();
        if !signal(self, libc::SIGTERM) {
            let _ = self.exited();
            return;
        }
        tracing::debug!(pid = self.pid, ?grace, "stopping the program: SIGTERM");
        let deadline = Instant::now() + grace;
        while self.exited().is_none() {
            if Instant::now() >= deadline {
                tracing::debug!(pid = self.pid, "still running after the grace period: SIGKILL");
                signal(self, libc::SIGKILL);
                let _ = crate::process::waitpid(self.pid);
                return;
            }
            match &self.pidfd {
                Some(fd) => {
                    crate::daemon::control::wait_readable(fd, deadline);
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Stops a `cmd:` check still running.
    pub(crate) fn disarm(source: &mut Armed) {
        if let Armed::Cmd { running, .. } = source {
            if let Some((child, _)) = running.take() {
                probe::stop_check(child);
            }
        }
    }
}

fn io_err(source: io::Error) -> NotReady {
    NotReady::Error(DaemonizeError::SystemError { call: "read", source })
}

/// The fd to poll for `source`, if it has one.
fn source_fd(source: &Armed) -> Option<BorrowedFd<'_>> {
    match source {
        Armed::Notify(host) => Some(host.as_fd()),
        Armed::Fd { read, .. } => Some(read.as_fd()),
        Armed::File { inotify, .. } => Some(inotify.as_fd()),
        Armed::Cmd { running: Some((_, Some(fd))), .. } => Some(fd.as_fd()),
        _ => None,
    }
}

/// "exited with status 3", "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe_status(status: crate::process::WaitStatus) -> String {
    if let Some(code) = crate::process::exit_code(status) {
        format!("exited with status {code}")
    } else if let Some(sig) = crate::process::signal(status) {
        let name = nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("unknown");
        format!("was killed by signal {sig} ({name})")
    } else {
        format!("changed state ({status:#x})")
    }
}
