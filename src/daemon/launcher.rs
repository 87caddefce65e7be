//! [`Launcher`]: start a program as a daemon and wait until it is ready; the type behind the
//! `conjure` command.
//!
//! Unlike [`daemonize`](crate::daemonize), the launcher never runs user code after the fork:
//! the child only performs the prepared setup and `execve`s the program. So a launcher may be
//! used from a multi-threaded program, and needs no `unsafe` from its caller. (One exception:
//! the pidfile sink in the background detaches the launcher itself, which needs one thread.)
//!
//! Modes, as design section 2 lays them out:
//! - background, `exec` source: double fork, wait for the exec, return;
//! - background, any other source: the same, then wait for readiness as the program's child
//!   subreaper, so its death is seen at once with its status;
//! - foreground, `exec` source: set up in place and exec: conjure becomes the program;
//! - resident (foreground with a source to watch, `--supervise`, or PID 1): see `resident.rs`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use crate::config::DaemonConfig;
use crate::daemon::resident::Resident;
use crate::daemon::{Chown, PidfileMode, Prepared, cstring, reap, report};
use crate::error::DaemonizeError;
use crate::readiness::notify::{self, NotifyHost};
use crate::readiness::wait::{Armed, NotReady, Waiter};
use crate::readiness::{Sink, SinkChoice, Source, sink};
use crate::sys::{self, ExecPlan};

/// Background launch with the `exec` source: reads the report pipe until the exec closes it.
fn wait_for_exec(
    read_end: std::os::fd::OwnedFd,
    prepared: &Prepared,
    program: &Path,
) -> Result<Outcome, DaemonizeError> {
    let mut pid = None;
    let mut failure = None;
    report::read_until_eof(read_end, |record| {
        match record {
            report::Record::Pid(p) => pid = Some(p),
            report::Record::Failed(f) => failure = Some(f),
            other => tracing::debug!(?other, "unexpected record from the child"),
        }
        failure.is_none()
    })
    .map_err(|source| DaemonizeError::SystemError { call: "read from the daemon", source })?;
    match (failure, pid) {
        (Some(f), _) => Err(prepared.failure_error(f, Some(program))),
        (None, Some(pid)) => Ok(Outcome::Ready { pid }),
        (None, None) => Err(DaemonizeError::NotReady("the daemon died before it could start the program".into())),
    }
}

/// The error for a program that did not become ready.
pub(crate) fn not_ready_error(
    why: NotReady,
    prepared: &Prepared,
    program: &Path,
    timeout: Option<Duration>,
) -> DaemonizeError {
    match why {
        NotReady::Died(how) => DaemonizeError::NotReady(format!("`{}` {how} before it was ready", name(program))),
        NotReady::TimedOut(t) => DaemonizeError::ReadyTimeout(format!(
            "`{}` was not ready after {}; stopped it",
            name(program),
            crate::duration::format(timeout.map_or(t, |d| d.max(t)))
        )),
        NotReady::ExecFailed(f) => prepared.failure_error(f, Some(program)),
        NotReady::Error(e) => e,
    }
}

/// A program's name as an operator knows it: the file name of its resolved path.
fn name(program: &Path) -> String {
    program.file_name().unwrap_or(program.as_os_str()).to_string_lossy().into_owned()
}

/// `LISTEN_FDS` fds start here (sd_listen_fds(3)).
const LISTEN_FDS_START: i32 = 3;

/// A program to start as a daemon, with the config that says how.
#[derive(Debug, Clone)]
pub struct Launcher {
    config: DaemonConfig,
    program: OsString,
    args: Vec<OsString>,
    source: Source,
    sink: SinkChoice,
    ready_timeout: Option<Duration>,
    kill_after: Duration,
    supervise: bool,
    signal_group: bool,
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
    /// The pidfile sink in the background: this is the original launcher, which returns at
    /// once; `watcher` (a detached copy of this process) waits for readiness and publishes the
    /// pidfile. `run` returns in both processes, like `fork`.
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
            sink: SinkChoice::Auto,
            ready_timeout: Some(DEFAULT_READY_TIMEOUT),
            kill_after: DEFAULT_KILL_AFTER,
            supervise: false,
            signal_group: false,
        }
    }

    /// How conjure learns that the program is ready (default: it was exec'd).
    pub fn ready_on(&mut self, source: Source) -> &mut Self {
        self.source = source;
        self
    }

    /// How the supervisor hears it (default: auto, see [`SinkChoice`]).
    pub fn readiness(&mut self, sink: SinkChoice) -> &mut Self {
        self.sink = sink;
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
    pub fn run(&self) -> Result<Outcome, DaemonizeError> {
        self.config.validate()?;
        let program = resolve_program(&self.program, self.search_path().as_deref())?;
        tracing::debug!(program = %program.display(), source = %self.source, "program resolved");
        let foreground = self.config.foreground;
        // Resident because of the source or the flags; a sink may add to it (below).
        let stays = self.supervise || std::process::id() == 1 || (foreground && self.source.needs_watch());
        let sink = self.sink.resolve(foreground, stays);
        sink::validate(sink)?;
        if sink == Sink::Pidfile && self.config.pidfile.is_none() {
            return Err(DaemonizeError::invalid("the pidfile readiness sink needs a pidfile (-p)"));
        }
        if let Source::Fd(n) = self.source {
            if self.config.keep_fds.contains(&n) || listen_fds().contains(&n) {
                return Err(DaemonizeError::invalid(format!("readiness fd {n} is already an fd the program keeps")));
            }
        }
        let resident = stays || (foreground && matches!(sink, Sink::Fd(_) | Sink::Pidfile));
        if resident && !foreground {
            return Err(DaemonizeError::invalid(
                "--supervise runs in the foreground (-f); a supervised background daemon is not supported yet",
            ));
        }
        tracing::debug!(?sink, resident, foreground, "mode chosen");

        // Keep the number a readiness fd must take free of every file opened until the fork
        // (the report pipe and the signalfd included): held until this function returns.
        let _reserved = match self.source {
            Source::Fd(n) => {
                sys::reserve_fd(n).map_err(|source| DaemonizeError::SystemError { call: "dup3", source })?
            }
            _ => None,
        };
        let mode = if sink == Sink::Pidfile { PidfileMode::Atomic } else { PidfileMode::Direct };
        let mut prepared = Prepared::new(&self.config, Chown::Now, mode)?;
        let mut armed = Armed::arm(&self.source)?;
        // A resident conjure that notifies is the main process: whatever the program says over
        // sd_notify must come through conjure, so the program gets conjure's socket, not the
        // supervisor's, even when it is not the readiness source.
        let relay_host = if resident && sink == Sink::Notify && !matches!(armed, Armed::Notify(_)) {
            Some(
                NotifyHost::bind()
                    .map_err(|source| DaemonizeError::SystemError { call: "binding the notify socket", source })?,
            )
        } else {
            None
        };
        let source_env = armed.env().or_else(|| relay_host.as_ref().map(|h| (notify::NOTIFY_SOCKET, h.env_value())));
        let listen_fds = listen_fds();
        let exec = self.exec_plan(&program, &prepared, !listen_fds.is_empty(), source_env)?;
        let mut plan = prepared.plan(None, &listen_fds, true);
        plan.moves.extend(armed.child_fd());
        plan.exec = Some(exec);

        if resident {
            prepared.write_own_pid()?;
            plan.pidfile = -1;
            let ended = Resident {
                prepared: &mut prepared,
                plan,
                armed,
                relay_host,
                sink,
                timeout: self.ready_timeout,
                kill_after: self.kill_after,
                signal_group: self.signal_group,
                program: &program,
            }
            .run();
            if ended.is_err() {
                prepared.remove_pidfile();
            }
            return ended;
        }

        if foreground {
            plan.seal();
            tracing::debug!("setting up in place and exec'ing (foreground)");
            let failure = match sys::setup_in_place(&plan) {
                Err(f) => f,
                Ok(()) => match plan.exec.as_mut() {
                    Some(exec) => sys::exec_in_place(exec),
                    None => unreachable!("the exec plan was set just above"),
                },
            };
            prepared.remove_pidfile();
            return Err(prepared.failure_error(failure, Some(&program)));
        }

        if sink == Sink::Pidfile {
            if let Some(watcher) = sys::detach()
                .map_err(|source| prepared.abandon(DaemonizeError::SystemError { call: "fork", source }))?
            {
                tracing::debug!(watcher, "detached; the watcher publishes the pidfile when ready");
                return Ok(Outcome::Detached { watcher });
            }
        }
        // Adopt the daemon when the intermediate child exits, so that its death is ours to see,
        // with its status; the caller's own setting comes back afterwards.
        let was_subreaper = nix::sys::prctl::get_child_subreaper().unwrap_or(false);
        if self.source.needs_watch() {
            nix::sys::prctl::set_child_subreaper(true)
                .map_err(|e| prepared.abandon(DaemonizeError::sys("prctl(PR_SET_CHILD_SUBREAPER)", e)))?;
        }
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| prepared.abandon(DaemonizeError::sys("pipe2", e)))?;
        plan.report = std::os::fd::AsRawFd::as_raw_fd(&write_end);
        plan.seal();
        tracing::debug!("forking");
        let spawned = sys::spawn(&mut plan, true).map_err(|e| prepared.abandon(e))?;
        drop(write_end);
        armed.forked();
        reap(spawned.child);

        let result = if self.source.needs_watch() {
            self.watch(read_end, &mut armed, &mut prepared, sink, &program)
        } else {
            wait_for_exec(read_end, &prepared, &program)
        };
        if self.source.needs_watch() && !was_subreaper {
            let _ = nix::sys::prctl::set_child_subreaper(false);
        }
        match &result {
            Ok(outcome) => tracing::debug!(?outcome, "ready"),
            Err(_) => prepared.remove_pidfile(),
        }
        result
    }

    /// Background launch with a source to watch: waits, then tells the sink.
    fn watch(
        &self,
        read_end: std::os::fd::OwnedFd,
        armed: &mut Armed,
        prepared: &mut Prepared,
        sink: Sink,
        program: &Path,
    ) -> Result<Outcome, DaemonizeError> {
        let mut waiter = Waiter::new(None, Some(read_end), self.ready_timeout)?;
        let waited = waiter.wait(armed, |_| {}, None);
        Waiter::disarm(armed);
        if let Err(why) = waited {
            waiter.stop(self.kill_after);
            return Err(not_ready_error(why, prepared, program, self.ready_timeout));
        }
        let pid = waiter.pid;
        if let Err(e) = prepared
            .publish_pidfile()
            .and_then(|()| sink::ready(sink, (sink == Sink::Notify).then_some(pid), waiter.status.as_deref()))
        {
            waiter.stop(self.kill_after);
            return Err(e);
        }
        Ok(Outcome::Ready { pid })
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
    ) -> Result<ExecPlan, DaemonizeError> {
        let mut argv = Vec::with_capacity(self.args.len() + 1);
        for arg in std::iter::once(&self.program).chain(&self.args) {
            if arg.as_bytes().contains(&0) {
                return Err(DaemonizeError::invalid(format!(
                    "invalid argument `{}`: contains NUL",
                    arg.to_string_lossy()
                )));
            }
            argv.push(cstring(arg.as_bytes()));
        }
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        if rewrite_listen_pid {
            env.retain(|(k, _)| k != "LISTEN_PID");
        }
        if let Some(identity) = &prepared.identity {
            let mut set = |k: &str, v: &OsStr| {
                env.retain(|(key, _)| key != k);
                env.push((k.into(), v.into()));
            };
            if let Some(name) = &identity.name {
                set("USER", OsStr::new(name));
                set("LOGNAME", OsStr::new(name));
            }
            if let Some(home) = &identity.home {
                set("HOME", home.as_os_str());
            }
        }
        for (k, v) in &prepared.config.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        if let Some((k, v)) = source_env {
            env.retain(|(key, _)| key != k);
            env.push((k.into(), v.into()));
        }
        let entries = env
            .into_iter()
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .filter(|e| !e.contains(&0))
            .collect();
        let pid_vars: &[&str] = if rewrite_listen_pid { &["LISTEN_PID"] } else { &[] };
        Ok(ExecPlan::new(cstring(program.as_os_str().as_bytes()), argv, entries, pid_vars))
    }
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
