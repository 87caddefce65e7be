//! [`Launcher`]: start a program as a daemon and wait until it is ready; the type behind the
//! `conjure` command.
//!
//! Unlike [`daemonize`](crate::daemonize), the launcher never runs user code after the fork:
//! the child only performs the prepared setup and `execve`s the program. So a launcher may be
//! used from a multi-threaded program, and needs no `unsafe` from its caller; what it changes
//! in the process meanwhile is listed on [`Launcher`].
//!
//! Modes, as design section 2 lays them out:
//! - background: double fork, then wait in the event loop (`watch.rs`) for the exec and, with
//!   a source other than `exec`, for readiness, as the program's child subreaper so that its
//!   death is seen at once with its status;
//! - foreground, `exec` source: set up in place and exec: conjure becomes the program;
//! - resident (foreground with a source to watch, `--supervise`, or PID 1): see `resident.rs`.
//!
//! Once the program exists, every failure (a failed exec, a death or a timeout before
//! readiness, a signal that interrupts the start, a supervisor that cannot be told) goes
//! through [`abort`]: the program's whole tree is stopped and the pidfile removed before the
//! error is reported.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::DaemonConfig;
use crate::daemon::resident::Resident;
use crate::daemon::watch::{Event, Signals, Watch, interrupts_start};
use crate::daemon::{PidfileMode, Prepared, cstring, reap};
use crate::error::{DaemonizeError, why};
use crate::process::{Process, State, describe_status};
use crate::readiness::notify::{self, NotifyHost};
use crate::readiness::relay::{self, Relay, Upstream, WatchdogEnv};
use crate::readiness::source::{Armed, waited};
use crate::readiness::watchdog::Watchdog;
use crate::readiness::{Sink, SinkChoice, Source, sink};
use crate::sys::{self, ChildPlan, ExecPlan};

/// `LISTEN_FDS` fds start here (sd_listen_fds(3)).
const LISTEN_FDS_START: i32 = 3;

/// A program to start as a daemon, with the config that says how.
///
/// ```no_run
/// use std::time::Duration;
/// use conjure::{DaemonConfig, Launcher, Outcome};
///
/// let mut config = DaemonConfig::new();
/// config.pidfile("/run/web.pid").stdout("/var/log/web.log").user("www-data");
/// let mut launcher = Launcher::new(config, "/usr/bin/web-server");
/// launcher.args(["--port", "8080"]).ready_on("tcp:127.0.0.1:8080".parse()?);
/// launcher.ready_timeout(Some(Duration::from_secs(30)));
/// match launcher.run()? {
///     Outcome::Ready { pid } => println!("listening, pid {pid}"),
///     other => println!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Threads
///
/// The child between fork and exec runs only async-signal-safe code prepared before the fork,
/// so `run` may be called from a multi-threaded program. What it does to the process as a whole
/// while it runs, and puts back afterwards: it is the process's child subreaper while it waits
/// for readiness (another thread's orphans would be adopted meanwhile); the calling thread has
/// INT, TERM, HUP and QUIT blocked (process-directed ones may still go to another thread); a
/// SIGCHLD disposition of `SIG_IGN` is reset to the default for good. Resident mode
/// (`foreground` with a source to watch, `supervise`) makes the process the program's
/// supervisor: it takes over every signal of the calling thread and reaps every child of the
/// process. The pidfile sink in the background detaches a copy of the process, which needs a
/// single-threaded caller and is refused otherwise.
///
/// The program's environment is this process's own (`environ`, passed by pointer rather than
/// copied), with the launcher's variables set. So, as with any code that reads the environment
/// other than through `std::env`, no other thread may call `std::env::set_var` or `remove_var`
/// (or C's `setenv`, `putenv`, `unsetenv`) while `run` starts the program: `set_var`'s safety
/// contract already forbids that.
///
/// # Foreground exec
///
/// `foreground` without a source to watch replaces this process with the program: `run`
/// returns only if that fails. By then the process has been set up for the program (its
/// signals, session, directory, umask, stdio and identity are the program's), but no fd was
/// closed: those the program was not to inherit are only marked close-on-exec, so every `File`
/// and `OwnedFd` still owns its own.
#[derive(Debug, Clone)]
pub struct Launcher {
    config: DaemonConfig,
    program: OsString,
    args: Vec<OsString>,
    source: Source,
    /// As set with [`Launcher::readiness`]; `None`: the config's sink, else `auto`.
    sink: Option<SinkChoice>,
    ready_timeout: Option<Duration>,
    kill_after: Duration,
    supervise: bool,
    signal_group: bool,
    rewrite: Vec<(i32, i32)>,
    watchdog: Option<Source>,
    watchdog_timeout: Option<Duration>,
    progress: bool,
}

/// Default readiness timeout: systemd's default start timeout.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Default grace between TERM and KILL when a program that is not ready is stopped.
pub const DEFAULT_KILL_AFTER: Duration = Duration::from_secs(5);

/// How a launch ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Background: the daemon is ready and runs on its own.
    Ready {
        /// The daemon's pid (the program's, after exec).
        pid: i32,
    },
    /// The pidfile sink in the background, with a source other than `exec`: this is the
    /// original launcher, which returns at once; `watcher` (a detached copy of this process)
    /// waits for readiness and publishes the pidfile. `run` returns in both processes, like
    /// `fork`.
    Detached {
        /// The watcher's pid.
        watcher: i32,
    },
    /// Resident: the program ran and exited with this code.
    Exited(i32),
    /// Resident: the program was killed by this signal. A command-line caller should die of
    /// the same signal ([`crate::process::die_of`]), or exit 128+N as PID 1.
    Killed(i32),
}

impl Launcher {
    /// A launcher for `program` (searched on `PATH` when it has no slash) with `config`.
    pub fn new(config: DaemonConfig, program: impl Into<OsString>) -> Self {
        Launcher {
            config,
            program: program.into(),
            args: Vec::new(),
            source: Source::Exec,
            sink: None,
            ready_timeout: Some(DEFAULT_READY_TIMEOUT),
            kill_after: DEFAULT_KILL_AFTER,
            supervise: false,
            signal_group: false,
            rewrite: Vec::new(),
            watchdog: None,
            watchdog_timeout: None,
            progress: false,
        }
    }

    /// How conjure learns that the program is ready (default: it was exec'd).
    pub fn ready_on(&mut self, source: Source) -> &mut Self {
        self.source = source;
        self
    }

    /// How the supervisor hears it (default: the config's
    /// [`readiness`](DaemonConfig::readiness) if it set one, else auto, see [`SinkChoice`]).
    pub fn readiness(&mut self, sink: SinkChoice) -> &mut Self {
        self.sink = Some(sink);
        self
    }

    /// Gives up on readiness after this long (`None`: wait forever); the program may extend it
    /// with `EXTEND_TIMEOUT_USEC=`. Default 90 s. Does not apply to the `exec` source.
    pub fn ready_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.ready_timeout = timeout;
        self
    }

    /// Grace between TERM and KILL when a program that is not ready is stopped (default 5 s).
    pub fn kill_after(&mut self, grace: Duration) -> &mut Self {
        self.kill_after = grace;
        self
    }

    /// Stays resident as the program's parent even when nothing else needs it (`--supervise`).
    pub fn supervise(&mut self, supervise: bool) -> &mut Self {
        self.supervise = supervise;
        self
    }

    /// Resident mode forwards signals to the program's process group instead of the program.
    pub fn signal_group(&mut self, group: bool) -> &mut Self {
        self.signal_group = group;
        self
    }

    /// Resident mode forwards signal `from`, when conjure receives it, as signal `to` (nginx
    /// stops gracefully on QUIT, a container runtime sends TERM). Repeatable; the last rule for
    /// a signal wins.
    pub fn rewrite(&mut self, from: i32, to: i32) -> &mut Self {
        self.rewrite.retain(|(f, _)| *f != from);
        self.rewrite.push((from, to));
        self
    }

    /// Checks the program once it is ready with `check` (`--watchdog`: `tcp:`, `unix:`,
    /// `file:`, `cmd:`), every half of the supervisor's `WATCHDOG_USEC`, and sends `WATCHDOG=1`
    /// while it passes. conjure stays resident for it (in the foreground).
    pub fn watchdog(&mut self, check: Option<Source>) -> &mut Self {
        self.watchdog = check;
        self
    }

    /// With [`watchdog`](Self::watchdog): once the check has failed this long, conjure stops the
    /// program itself and fails with [`DaemonizeError::Unhealthy`] (exit 70), for a
    /// supervisor without a watchdog of its own (`--watchdog-timeout`).
    pub fn watchdog_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.watchdog_timeout = timeout;
        self
    }

    /// While a background launch waits for readiness, shows one status line on stderr (the
    /// source, the time waited, the timeout), rewritten in place each second and erased when
    /// the wait ends. Meant for a terminal: the command turns it on when stderr is one.
    pub fn progress(&mut self, progress: bool) -> &mut Self {
        self.progress = progress;
        self
    }

    /// Appends arguments (after `argv[0]`, which is the program as given).
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The config, to adjust after construction.
    pub fn config_mut(&mut self) -> &mut DaemonConfig {
        &mut self.config
    }

    /// Starts the program and waits until it is ready.
    ///
    /// In the background (the default) this returns [`Outcome::Ready`] once the source said so,
    /// with the pidfile complete and the sink told. In the foreground with the `exec` source the
    /// program replaces the calling process, so this returns only on failure. Resident, it
    /// returns when the program has ended. Every failure leaves no process and no pidfile.
    ///
    /// While it waits, the calling thread has SIGINT, SIGTERM, SIGHUP and SIGQUIT blocked and
    /// reads them itself: one of them before the program is ready stops the program and its
    /// descendants and comes back as [`DaemonizeError::Interrupted`]. (Resident, every signal
    /// is taken over and forwarded to the program.) The mask and the child-subreaper flag are
    /// the caller's again when this returns.
    pub fn run(&self) -> Result<Outcome, DaemonizeError> {
        let validated = self.config.validated()?;
        let program = resolve_program(&self.program, self.search_path().as_deref())?;
        tracing::debug!(program = %program.display(), source = %self.source, "program resolved");
        let foreground = self.config.foreground;
        let choice = self.sink.or(self.config.readiness.map(SinkChoice::Sink)).unwrap_or_default();
        let supervisor = relay::supervisor_address();
        if choice == SinkChoice::Sink(Sink::Notify) && supervisor.is_none() {
            return Err(DaemonizeError::invalid(
                "--readiness notify needs NOTIFY_SOCKET, which is not set (run conjure from a Type=notify unit, or choose another sink)",
            ));
        }
        // The watchdog's check, validated before anything is started; it needs conjure alive.
        let watchdog = match &self.watchdog {
            Some(check) => {
                let interval = supervisor.as_ref().and(relay::supervisor_watchdog());
                Some(Watchdog::new(check, interval, self.watchdog_timeout)?)
            }
            None => None,
        };
        // Resident because of the source or the flags; a sink may add to it (below).
        let stays = self.supervise
            || watchdog.is_some()
            || std::process::id() == 1
            || (foreground && self.source.needs_watch());
        let sink = choice.resolve(foreground, stays);
        sink::validate(sink)?;
        if sink == Sink::Pidfile && self.config.pidfile.is_none() {
            return Err(DaemonizeError::invalid("the pidfile readiness sink needs a pidfile (-p)"));
        }
        let listen_fds = listen_fds();
        if let Source::Fd(n) = self.source
            && (self.config.keep_fds.contains(&n) || listen_fds.contains(&n))
        {
            return Err(DaemonizeError::invalid(format!("readiness fd {n} is already an fd the program keeps")));
        }
        let resident = stays || (foreground && matches!(sink, Sink::Fd(_) | Sink::Pidfile));
        if resident && !foreground {
            return Err(DaemonizeError::invalid(match watchdog {
                Some(_) => "--watchdog runs in the foreground (-f): conjure stays to check the program",
                None => "--supervise runs in the foreground (-f); a supervised background daemon is not supported yet",
            }));
        }
        tracing::debug!(?sink, resident, foreground, "mode chosen");
        // The source armed (a host resolved, a path made absolute), and an address the program
        // is to listen on that someone else holds already refused: nothing is started, nothing
        // is touched.
        let mut armed = Armed::arm(&self.source)?;
        armed.check_free()?;
        // Children whose statuses the kernel throws away cannot be waited for.
        sys::make_children_waitable()
            .map_err(|source| DaemonizeError::SystemError { call: "sigaction(SIGCHLD)", source })?;

        let mode = if sink == Sink::Pidfile { PidfileMode::Atomic } else { PidfileMode::Direct };
        let mut prepared = Prepared::new(validated, mode)?;
        // Resident conjure notifying as the main process relays what the program says over
        // sd_notify, which must come through conjure to count (and feeds the supervisor's
        // watchdog, with --watchdog).
        let relaying = resident && sink == Sink::Notify;
        let upstream =
            if relaying || watchdog.as_ref().is_some_and(Watchdog::pings) { Upstream::from_env() } else { None };
        // The program's NOTIFY_SOCKET: conjure's own socket with the notify source, and when
        // conjure relays.
        let host = if matches!(armed, Armed::Notify) || relaying {
            let host = NotifyHost::bind().map_err(|source| {
                prepared.abandon(DaemonizeError::SystemError { call: "binding the notify socket", source })
            })?;
            Some(host)
        } else {
            None
        };
        let source_env = host.as_ref().map(|h| (notify::NOTIFY_SOCKET, h.env_value()));
        // What the program sends over sd_notify reaches the supervisor unless it goes to a
        // socket of conjure's that nobody relays.
        let watchdog_env = relay::watchdog_env(host.is_none() || relaying);
        let mut exec = self
            .exec_plan(&program, &prepared, !listen_fds.is_empty(), source_env, watchdog_env)
            .map_err(|e| prepared.abandon(e))?;
        let mut plan = prepared.plan(None, &listen_fds, false);
        plan.moves.extend(armed.child_fd());
        let relay = (host.is_some() || upstream.is_some()).then(|| Relay::new(host, upstream));

        if resident {
            prepared.write_own_pid().map_err(|e| prepared.abandon(e))?;
            plan.pidfile = -1;
            return Resident {
                prepared: &mut prepared,
                plan,
                exec,
                armed,
                relay,
                watchdog,
                sink,
                timeout: self.ready_timeout,
                kill_after: self.kill_after,
                signal_group: self.signal_group,
                rewrite: &self.rewrite,
                program: &program,
            }
            .run();
        }

        if foreground {
            tracing::debug!("setting up in place and exec'ing (foreground)");
            let failure = match sys::setup_in_place(&mut plan) {
                Err(f) => f,
                Ok(()) => sys::exec_in_place(&mut exec),
            };
            return Err(prepared.abandon(prepared.failure_error(failure, Some(&program))));
        }

        // The pidfile sink does not keep the caller waiting for a source to say ready: a
        // detached copy waits and publishes. The exec is quick, and is waited for here, so
        // that the pidfile is published by the process the caller started (see NOTES.md).
        if sink == Sink::Pidfile
            && self.source.needs_watch()
            && let Some(watcher) = sys::detach()
                .map_err(|source| prepared.abandon(DaemonizeError::SystemError { call: "fork", source }))?
        {
            tracing::debug!(watcher, "detached; the watcher publishes the pidfile when ready");
            return Ok(Outcome::Detached { watcher });
        }
        self.background(&mut prepared, (plan, exec), armed, relay, sink, &program)
    }

    /// The double fork of the program `plan` and `exec` describe, then the wait: for the exec,
    /// and for readiness with a source to watch.
    fn background(
        &self,
        prepared: &mut Prepared,
        (mut plan, mut exec): (ChildPlan, ExecPlan),
        mut armed: Armed,
        relay: Option<Relay>,
        sink: Sink,
        program: &Path,
    ) -> Result<Outcome, DaemonizeError> {
        // Adopt the program when the intermediate child exits, so that its death is ours to see
        // with its status. The caller's own setting comes back when the guard goes.
        let _subreaper = match self.source.needs_watch() {
            true => Some(Subreaper::set().map_err(|e| prepared.abandon(e))?),
            false => None,
        };
        // Taken over before the fork, so that no interrupt between fork and wait is lost.
        let signals = Signals::interrupts().map_err(|e| prepared.abandon(e))?;
        let (read_end, write_end) = report_pipe().map_err(|e| prepared.abandon(e))?;
        plan.report = write_end.as_raw_fd();
        tracing::debug!("forking");
        let intermediate = sys::spawn(&mut plan, &mut exec, true).map_err(|e| prepared.abandon(e))?;
        drop(write_end);
        armed.forked();
        reap(intermediate);

        // The intermediate child made a session for the program: until its pid is reported,
        // that session is how the program is known, and stopped.
        let mut watch = Watch::new(Process::in_session(intermediate), Some(read_end));
        watch.source(armed, self.ready_timeout).signals(signals);
        if let Some(relay) = relay {
            watch.relay(relay);
        }
        let mut progress = self.progress.then(|| Progress::new(&self.source));
        if progress.is_some() && self.source.needs_watch() {
            watch.ticks(Some(Duration::from_secs(1)));
        }
        let waited =
            until_ready(&mut watch, !self.source.needs_watch(), prepared, program, |watch, event| match event {
                Event::Signal(r) if interrupts_start(&r) => {
                    Err(DaemonizeError::Interrupted { signal: r.signo, program: name(program) })
                }
                Event::Tick => {
                    if let Some(p) = progress.as_mut() {
                        p.show(watch.timeout());
                    }
                    Ok(())
                }
                _ => Ok(()),
            });
        if let Some(p) = progress {
            p.erase();
        }
        let ready = waited.and_then(|()| {
            watch.disarm();
            let pid = watch.process.pid();
            prepared.publish_pidfile()?;
            sink::ready(sink, (sink == Sink::Notify).then_some(pid), watch.status())?;
            Ok(Outcome::Ready { pid })
        });
        match ready {
            Ok(outcome) => {
                tracing::debug!(?outcome, "ready");
                watch.discard_signals();
                Ok(outcome)
            }
            Err(e) => Err(abort(&mut watch.process, prepared, self.kill_after, e)),
        }
    }

    /// `PATH` as the program will see it: `-E PATH=…` if given, else the launcher's.
    fn search_path(&self) -> Option<OsString> {
        self.config
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os("PATH"))
    }

    /// argv, envp and the resolved path, built before the fork.
    fn exec_plan(
        &self,
        program: &Path,
        prepared: &Prepared,
        rewrite_listen_pid: bool,
        source_env: Option<(&'static str, String)>,
        watchdog: WatchdogEnv,
    ) -> Result<ExecPlan, DaemonizeError> {
        let argv = std::iter::once(&self.program).chain(&self.args).map(|a| a.as_bytes());
        if let Some(arg) = argv.clone().find(|a| a.contains(&0)) {
            return Err(DaemonizeError::invalid(format!(
                "invalid argument `{}`: contains NUL",
                String::from_utf8_lossy(arg)
            )));
        }
        // What conjure sets, last setting first wins: the source's socket, then `-E`, then the
        // identity's variables; everything else is the launcher's own environment, passed by
        // pointer (see `sys::Envp`).
        let mut add: Vec<(&[u8], &[u8])> = Vec::new();
        if let Some((k, v)) = &source_env {
            set_once(&mut add, k.as_bytes(), v.as_bytes());
        }
        for (k, v) in prepared.config.env.iter().rev() {
            set_once(&mut add, k.as_bytes(), v.as_bytes());
        }
        let mut drop: Vec<&[u8]> = Vec::new();
        if rewrite_listen_pid {
            drop.push(b"LISTEN_PID");
        }
        // systemd's watchdog variables name conjure: the program sees them naming itself, or
        // not at all.
        if watchdog != WatchdogEnv::Absent {
            drop.push(b"WATCHDOG_PID");
        }
        if watchdog == WatchdogEnv::Remove {
            drop.push(b"WATCHDOG_USEC");
        }
        if let Some(identity) = &prepared.identity {
            if let Some(name) = &identity.name {
                set_once(&mut add, b"USER", name.as_bytes());
                set_once(&mut add, b"LOGNAME", name.as_bytes());
            }
            if let Some(home) = &identity.home {
                set_once(&mut add, b"HOME", home.as_os_str().as_bytes());
            }
        }
        // Validation refused NUL in `-E`; a user name or home with one is dropped, not cut.
        let entries =
            add.iter().filter(|(k, v)| !k.contains(&0) && !v.contains(&0)).map(|(k, v)| [*k, b"=", *v].concat());
        let mut pid_vars: Vec<&str> = Vec::new();
        if rewrite_listen_pid {
            pid_vars.push("LISTEN_PID");
        }
        // `-E WATCHDOG_PID=…` is the operator's word and stands.
        let watchdog_pid_set = prepared.config.env.iter().any(|(k, _)| k == "WATCHDOG_PID");
        if watchdog == WatchdogEnv::ForProgram && !watchdog_pid_set {
            pid_vars.push("WATCHDOG_PID");
        }
        let env = sys::Envp::inherit(&drop, entries.collect(), &pid_vars);
        Ok(ExecPlan::new(cstring(program.as_os_str().as_bytes()), argv, env))
    }
}

/// Adds `key=value` to the program's variables unless a setting that wins already named `key`.
fn set_once<'a>(add: &mut Vec<(&'a [u8], &'a [u8])>, key: &'a [u8], value: &'a [u8]) {
    if !add.iter().any(|(k, _)| *k == key) {
        add.push((key, value));
    }
}

/// Waits until the program is ready: exec'd, with the `exec` source; else the source said so.
/// Either way only once the exec is known to have happened (the report pipe's end of file after
/// the child's exec record), never on a pid alone. Events that are not about readiness go to
/// `other`, which may end the wait with an error.
pub(crate) fn until_ready(
    watch: &mut Watch,
    exec_source: bool,
    prepared: &Prepared,
    program: &Path,
    mut other: impl FnMut(&mut Watch, Event) -> Result<(), DaemonizeError>,
) -> Result<(), DaemonizeError> {
    loop {
        match watch.next()? {
            Event::Pid(pid) => tracing::debug!(pid, "program started"),
            Event::Closed if watch.exec_done() && exec_source => return Ok(()),
            Event::Closed if watch.exec_done() => {
                tracing::debug!(pid = watch.process.pid(), "program exec'd; watching for readiness")
            }
            Event::Closed => {
                // End of file without the exec record: the child died before its exec. Its end
                // (with its status, where conjure may reap it) follows from the pidfd.
                if watch.process.pid() <= 0 {
                    return Err(DaemonizeError::NotReady(format!("`{}` ended before it started", name(program))));
                }
                if let State::Ended(status) = watch.process.state(false) {
                    return Err(died(program, status, watch, prepared));
                }
                tracing::debug!(pid = watch.process.pid(), "report pipe closed before the exec");
            }
            Event::Ready => return Ok(()),
            Event::Failed(f) => return Err(prepared.failure_error(f, Some(program))),
            Event::Ended(status) => return Err(died(program, status, watch, prepared)),
            Event::TimedOut => {
                return Err(DaemonizeError::ReadyTimeout(format!(
                    "`{}` was not ready after {}; stopped it{}",
                    name(program),
                    waited(watch.timeout()),
                    said(watch)
                )));
            }
            Event::Taken(who) => {
                return Err(DaemonizeError::AddressInUse(format!("{who}; stopped `{}`", name(program))));
            }
            other_event => other(watch, other_event)?,
        }
    }
}

/// "`app` exited with status 1 before it was ready", with what it said last over sd_notify
/// and the end of its output (see [`Prepared::output_note`]).
fn died(
    program: &Path,
    status: Option<crate::process::WaitStatus>,
    watch: &Watch,
    prepared: &Prepared,
) -> DaemonizeError {
    let how = status.map_or_else(|| "exited".to_string(), describe_status);
    let (said, note) = (said(watch), prepared.output_note());
    DaemonizeError::NotReady(format!("`{}` {how} before it was ready{said}{note}", name(program)))
}

/// What the program said last over sd_notify, for a failure message: `; it said ERRNO=2 (No
/// such file or directory) and STATUS=cannot open config`, or nothing.
pub(crate) fn said(watch: &Watch) -> String {
    let mut parts = Vec::new();
    if let Some(errno) = watch.errno() {
        parts.push(format!("ERRNO={errno} ({})", why(&std::io::Error::from_raw_os_error(errno))));
    }
    if let Some(status) = watch.status() {
        parts.push(format!("STATUS={status}"));
    }
    if parts.is_empty() { String::new() } else { format!("; it said {}", parts.join(" and ")) }
}

/// The status line a launcher shows on a terminal while it waits for readiness.
struct Progress {
    source: String,
    started: std::time::Instant,
    shown: bool,
}

impl Progress {
    fn new(source: &Source) -> Progress {
        Progress { source: source.to_string(), started: std::time::Instant::now(), shown: false }
    }

    /// Rewrites the line in place (carriage return, erase to the end of the line).
    fn show(&mut self, timeout: Option<Duration>) {
        use std::io::Write;
        let waited = crate::duration::format(Duration::from_secs(self.started.elapsed().as_secs()));
        let limit =
            timeout.map_or_else(|| "no timeout".to_string(), |t| format!("timeout {}", crate::duration::format(t)));
        let line = format!("\r\x1b[Kconjure: waiting for {}: {waited} ({limit})", self.source);
        // A terminal that went away is no reason to stop waiting.
        let _ = std::io::stderr().write_all(line.as_bytes());
        self.shown = true;
    }

    /// Erases the line, so that what follows (an error, the shell's prompt) starts clean.
    fn erase(self) {
        use std::io::Write;
        if self.shown {
            let _ = std::io::stderr().write_all(b"\r\x1b[K");
        }
    }
}

/// Every failure once the program exists ends here: its whole tree is stopped (TERM, then
/// KILL after `grace`) and the pidfile removed, before the error is reported.
pub(crate) fn abort(
    process: &mut Process,
    prepared: &Prepared,
    grace: Duration,
    err: DaemonizeError,
) -> DaemonizeError {
    tracing::debug!(error = %err, "start failed; stopping what was started");
    process.terminate(libc::SIGTERM, grace);
    prepared.remove_pidfile();
    err
}

/// The report pipe: close-on-exec both ends, the launcher's read end non-blocking (the event
/// loop reads whatever is there), the child's write end blocking.
pub(crate) fn report_pipe() -> Result<(OwnedFd, OwnedFd), DaemonizeError> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| DaemonizeError::sys("pipe2", e))?;
    sys::set_nonblocking(read_end.as_fd(), true)
        .map_err(|source| DaemonizeError::SystemError { call: "fcntl(F_SETFL)", source })?;
    Ok((read_end, write_end))
}

/// The calling process is a child subreaper while this lives; the previous setting comes back
/// when it is dropped.
#[derive(Debug)]
pub(crate) struct Subreaper {
    was: bool,
}

impl Subreaper {
    /// Makes the calling process a child subreaper.
    pub(crate) fn set() -> Result<Subreaper, DaemonizeError> {
        let was = nix::sys::prctl::get_child_subreaper().unwrap_or(false);
        if !was {
            nix::sys::prctl::set_child_subreaper(true)
                .map_err(|e| DaemonizeError::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
        }
        Ok(Subreaper { was })
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        if !self.was {
            let _ = nix::sys::prctl::set_child_subreaper(false);
        }
    }
}

/// A program's name as an operator knows it: the file name of its resolved path.
pub(crate) fn name(program: &Path) -> String {
    program.file_name().unwrap_or(program.as_os_str()).to_string_lossy().into_owned()
}

/// The socket-activation fds handed to this process: fds 3 .. 3+`LISTEN_FDS`-1, when
/// `LISTEN_PID` names this process (or is absent, as when a wrapper already consumed it).
fn listen_fds() -> Vec<i32> {
    let Some(n) = std::env::var("LISTEN_FDS").ok().and_then(|v| v.parse::<i32>().ok()) else {
        return Vec::new();
    };
    let ours = match std::env::var("LISTEN_PID") {
        Ok(pid) => pid.parse::<u32>().ok() == Some(std::process::id()),
        Err(_) => true,
    };
    if !ours || !(1..=4096).contains(&n) {
        return Vec::new();
    }
    (LISTEN_FDS_START..LISTEN_FDS_START + n).filter(|fd| sys::fd_is_open(*fd)).collect()
}

/// Finds `program` the way `execvp` would, but before the fork, so that "not found" is an
/// error with the program's name and no process is ever started for it.
pub(crate) fn resolve_program(program: &OsStr, path: Option<&OsStr>) -> Result<PathBuf, DaemonizeError> {
    let not_found = |p: PathBuf, errno: i32| DaemonizeError::ProgramNotFound {
        path: p,
        source: std::io::Error::from_raw_os_error(errno),
    };
    if program.is_empty() {
        return Err(not_found(PathBuf::new(), libc::ENOENT));
    }
    let check = |p: &Path| -> Result<(), i32> {
        let meta = std::fs::metadata(p).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOENT))?;
        if meta.is_dir() {
            return Err(libc::EACCES);
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).map_err(|e| e as i32)
    };
    if program.as_bytes().contains(&b'/') {
        let p = std::path::absolute(program)
            .map_err(|e| not_found(program.into(), e.raw_os_error().unwrap_or(libc::ENOENT)))?;
        return check(&p).map(|()| p).map_err(|errno| not_found(program.into(), errno));
    }
    let default_path = OsStr::new("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut first_error = None;
    for dir in std::env::split_paths(path.unwrap_or(default_path)) {
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        let candidate = std::path::absolute(dir.join(program)).unwrap_or_else(|_| dir.join(program));
        match check(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(libc::ENOENT | libc::ENOTDIR) => {}
            Err(errno) => {
                first_error.get_or_insert((candidate, errno));
            }
        }
    }
    match first_error {
        Some((p, errno)) => Err(not_found(p, errno)),
        None => Err(not_found(program.into(), libc::ENOENT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::report::{self, Record};

    /// A child that reported its pid and then ended before its exec (killed, say): its end of
    /// the pipe closes without the exec record. Never ready; with the record, ready.
    // The child is conjure's to reap, through the `Process` below, as the program would be.
    #[allow(clippy::zombie_processes)]
    fn waits_for(exec_record: bool) -> Result<(), DaemonizeError> {
        let child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let (read_end, write_end) = report_pipe().unwrap();
        report::send(&write_end, &Record::Pid(pid)).unwrap();
        if exec_record {
            report::send(&write_end, &Record::Exec).unwrap();
        } else {
            sys::kill_raw(pid, libc::SIGKILL).unwrap();
        }
        drop(write_end);
        let prepared = Prepared::new(DaemonConfig::new().validated().unwrap(), PidfileMode::Direct).unwrap();
        let mut watch = Watch::new(Process::child(pid, None, false), Some(read_end));
        let result = until_ready(&mut watch, true, &prepared, Path::new("/bin/sleep"), |_, _| Ok(()));
        watch.process.terminate(libc::SIGKILL, Duration::ZERO);
        result
    }

    #[test]
    fn a_program_killed_between_its_pid_and_its_exec_is_not_ready() {
        let err = waits_for(false).unwrap_err();
        assert_eq!(err.exit_code(), 70);
        assert!(err.to_string().starts_with("`sleep` was killed by signal 9 (SIGKILL) before it was ready"), "{err}");
        waits_for(true).unwrap();
    }

    #[test]
    fn programs_are_found_on_path() {
        let p = resolve_program(OsStr::new("sh"), Some(OsStr::new("/nonexistent:/bin:/usr/bin"))).unwrap();
        assert!(p.ends_with("sh"));
        let err = resolve_program(OsStr::new("no-such-program-x"), Some(OsStr::new("/bin"))).unwrap_err();
        assert_eq!(err.exit_code(), 66);
        assert_eq!(err.to_string(), "cannot execute `no-such-program-x`: No such file or directory");
        let err = resolve_program(OsStr::new("/etc/passwd"), None).unwrap_err();
        assert_eq!(err.to_string(), "cannot execute `/etc/passwd`: Permission denied");
    }
}
