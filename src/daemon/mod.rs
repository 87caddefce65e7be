//! The engine: one sequence, used by the library's [`daemonize`](crate::daemonize) and by the
//! [`Launcher`] behind the command line.
//!
//! ```text
//! validate ─► lock ─► open outputs ─► plan ─► fork ─► setsid ─► fork ─► setup ─► exec / return
//! ```
//!
//! Everything that can fail for a reason an operator can fix (paths, users, locks, output
//! files) fails in the launcher, before any fork, with nothing started. What remains for the
//! child is a list of syscalls on numbers prepared here (see `sys/child.rs`); their failures come
//! back over the report pipe (see `report.rs`) and are turned into the same errors.
//!
//! The lock is taken before any output file is opened, so that a second start that loses the
//! race for the lock has truncated nothing.

mod context;
pub mod control;
pub(crate) mod ids;
pub mod launcher;
mod output;
pub(crate) mod pidfile;
pub(crate) mod report;
mod resident;
pub(crate) mod watch;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use context::DaemonContext;

use crate::config::{DaemonConfig, Validated};
use crate::error::DaemonizeError;
use crate::process::Process;
use crate::readiness::{Sink, sink};
use crate::sys::{self, ChildPlan, Failure, Stage};
use ids::Identity;
use pidfile::{Guard, Role};
use watch::{Event, Watch};

/// Files and facts gathered before the fork. Dropping it closes the launcher's copies; the
/// daemon keeps its own.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The config with every path absolute.
    pub config: DaemonConfig,
    pub identity: Option<Identity>,
    /// The locked lockfile, when it is not the pidfile.
    pub lockfile: Option<Guard>,
    /// The pidfile (locked, unless locking is off).
    pub pidfile: Option<Guard>,
    pub devnull: OwnedFd,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// Where the program's errors go (stderr's file, else stdout's) and its size before the
    /// program wrote anything: what the program says there is shown if it dies before it is
    /// ready.
    pub tail_from: Option<u64>,
}

/// How the pidfile comes into being.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PidfileMode {
    /// Created and locked before the fork, written by the daemon before it execs or returns.
    Direct,
    /// The pidfile sink: a locked temporary file is written and renamed over the pidfile only
    /// when the daemon is ready, so a watcher never sees a pidfile before then.
    Atomic,
}

impl Prepared {
    /// Locks and opens what a validated configuration names, in that order. A failure leaves
    /// nothing behind: not even the empty pidfile the lock created.
    pub(crate) fn new(validated: Validated, mode: PidfileMode) -> Result<Prepared, DaemonizeError> {
        let Validated { config, identity } = validated;
        tracing::debug!(?config, "configuration validated");
        ensure_stdio_open()?;

        let lockfile = match (&config.lockfile, config.lock) {
            (Some(path), true) if Some(path) != config.pidfile.as_ref() => {
                Some(Guard::acquire(path, Role::Lockfile, true, None)?)
            }
            _ => None,
        };
        let pidfile = match &config.pidfile {
            Some(path) if mode == PidfileMode::Atomic => {
                if let Ok(Some(found)) = pidfile::inspect(path)
                    && found.locked
                {
                    return Err(DaemonizeError::LockConflict { path: path.clone(), pid: found.pid });
                }
                // An unpublished instance holds the temporary file's lock: the conflict is
                // about the pidfile, whatever the file's name.
                let guard = Guard::acquire(path, Role::Pidfile, config.lock, Some(Guard::temp_path(path)));
                Some(guard.map_err(|e| match e {
                    DaemonizeError::LockConflict { pid, .. } => {
                        DaemonizeError::LockConflict { path: path.clone(), pid }
                    }
                    e => e,
                })?)
            }
            Some(path) => Some(Guard::acquire(path, Role::Pidfile, config.lock, None)?),
            None => None,
        };
        let mut prepared = Prepared {
            devnull: open_devnull()?,
            stdout: None,
            stderr: None,
            tail_from: None,
            config,
            identity,
            lockfile,
            pidfile,
        };
        match prepared.open_outputs() {
            Ok((stdout, stderr)) => {
                let errors = stderr.as_ref().or(stdout.as_ref());
                prepared.tail_from = errors.and_then(|f| f.metadata().ok()).map(|m| m.len());
                prepared.stdout = stdout;
                prepared.stderr = stderr;
                Ok(prepared)
            }
            Err(e) => Err(prepared.abandon(e)),
        }
    }

    fn open_outputs(&self) -> Result<(Option<File>, Option<File>), DaemonizeError> {
        let open = |path: &Path| output::open(path, self.identity.as_ref(), self.config.append);
        let out = self.config.stdout.as_deref().map(open).transpose()?;
        // One open file for both when they name the same file, so that the two streams share
        // one offset instead of writing over each other.
        let err = match (&self.config.stderr, &self.config.stdout, &out) {
            (Some(e), Some(o), Some(f)) if e == o => {
                Some(f.try_clone().map_err(|source| DaemonizeError::OutputFileError { path: e.clone(), source })?)
            }
            (Some(e), _, _) => Some(open(e)?),
            _ => None,
        };
        Ok((out, err))
    }

    /// The child's plan: stdio, pidfile, inherited fds, identity. `exec` is filled by the caller.
    /// For the `library`'s daemon, which returns to Rust code, identity is left to
    /// [`DaemonContext::drop_privileges`] and the library's reset flavour applies (see
    /// [`ChildPlan::library`]).
    pub(crate) fn plan(&self, report: Option<&OwnedFd>, inherit_extra: &[i32], library: bool) -> ChildPlan {
        let null = self.devnull.as_raw_fd();
        let inherited = |f: &Option<File>, fallback: i32| f.as_ref().map_or(fallback, |f| f.as_raw_fd());
        let keep_stdio = if self.config.foreground { -1 } else { null };
        // The read-only fds that hold the locks: all the program gets of them.
        let mut inherit: Vec<i32> = Vec::new();
        inherit.extend(self.lockfile.as_ref().and_then(Guard::lock_fd).map(|f| f.as_raw_fd()));
        inherit.extend(self.pidfile.as_ref().and_then(Guard::lock_fd).map(|f| f.as_raw_fd()));
        inherit.extend_from_slice(&self.config.keep_fds);
        inherit.extend_from_slice(inherit_extra);
        ChildPlan {
            report: report.map_or(-1, |r| r.as_raw_fd()),
            umask: self.config.umask.map(|m| m as libc::mode_t),
            chdir: self.config.chdir.as_ref().map(|d| cstring(d.as_os_str().as_bytes())),
            // In the foreground stdin stays the caller's (`echo cmd | conjure -f -- sh`).
            stdio: [keep_stdio, inherited(&self.stdout, keep_stdio), inherited(&self.stderr, keep_stdio)],
            pidfile: self.pidfile.as_ref().and_then(Guard::write_fd).map_or(-1, |f| f.as_raw_fd()),
            inherit,
            moves: Vec::new(),
            keep: Vec::new(),
            close_fds: self.config.close_fds,
            new_pgrp: false,
            tty: -1,
            library,
            ids: if library { None } else { self.identity.as_ref().map(|i| i.ids.clone()) },
            sigmax: 0,
            held: Vec::new(),
        }
    }

    /// Turns a failure reported by the child into the error an operator reads.
    pub(crate) fn failure_error(&self, failure: Failure, program: Option<&Path>) -> DaemonizeError {
        let source = io::Error::from_raw_os_error(failure.errno);
        let c = &self.config;
        match failure.stage {
            Stage::Setsid => DaemonizeError::SetsidFailed(source),
            Stage::Fork => DaemonizeError::ForkFailed(source),
            Stage::Chdir => DaemonizeError::ChdirFailed { path: c.chdir.clone().unwrap_or_default(), source },
            Stage::Stdio => DaemonizeError::OutputFileError {
                path: c.stdout.clone().unwrap_or_else(|| PathBuf::from("/dev/null")),
                source,
            },
            Stage::Pidfile => DaemonizeError::PidfileError { path: c.pidfile.clone().unwrap_or_default(), source },
            Stage::Setgroups | Stage::Setgid | Stage::Setuid | Stage::Identity | Stage::RegainedRoot => {
                let (uid, gid) = self.identity.as_ref().map(|i| (i.ids.uid, i.ids.gid)).unwrap_or_default();
                ids::drop_failed(failure, uid, gid)
            }
            Stage::CloseFds => DaemonizeError::SystemError { call: "close_range", source },
            Stage::Fds => DaemonizeError::SystemError { call: "dup2", source },
            Stage::Relocate => DaemonizeError::SystemError { call: sys::RELOCATE_CALL, source },
            Stage::ProcessGroup => DaemonizeError::SystemError { call: "setpgid/tcsetpgrp", source },
            Stage::Exec => {
                let path = program.map(Path::to_path_buf).unwrap_or_default();
                match failure.errno {
                    libc::ENOENT | libc::EACCES | libc::ENOTDIR | libc::ELOOP => {
                        DaemonizeError::ProgramNotFound { path, source }
                    }
                    _ => DaemonizeError::ExecFailed { path, source },
                }
            }
        }
    }

    /// Removes the pidfile after a failure before anything was started, and passes the error on.
    pub(crate) fn abandon(&self, err: DaemonizeError) -> DaemonizeError {
        self.remove_pidfile();
        err
    }

    /// What an operator needs next to "the program died before it was ready": the last lines
    /// the program wrote to its output file (at most [`TAIL_LINES`], each cut at
    /// [`TAIL_WIDTH`], marked), or, when its output went to `/dev/null`, how to keep it. Nothing
    /// in the foreground, where the output is the caller's own.
    pub(crate) fn output_note(&self) -> String {
        let file = self.stderr.as_ref().or(self.stdout.as_ref());
        let (Some(file), Some(start)) = (file, self.tail_from) else {
            return if self.config.foreground {
                String::new()
            } else {
                " (its output went to /dev/null; keep it with -o FILE)".to_string()
            };
        };
        let path = self.config.stderr.as_ref().or(self.config.stdout.as_ref()).cloned().unwrap_or_default();
        match tail(file, start) {
            Some(lines) if !lines.is_empty() => {
                let mut note = format!("; its last output, in `{}`:", path.display());
                for l in lines {
                    note.push_str("\n  | ");
                    note.push_str(&l);
                }
                note
            }
            _ => format!(" (it wrote nothing to `{}`)", path.display()),
        }
    }

    /// Removes the pidfile (or its temporary file) after a failed start; the launcher still
    /// holds the lock.
    pub(crate) fn remove_pidfile(&self) {
        if let Some(guard) = &self.pidfile {
            guard.remove();
        }
    }

    /// The pidfile sink's moment: renames the temporary pidfile over the pidfile, unless another
    /// instance locked that one in the meantime.
    pub(crate) fn publish_pidfile(&mut self) -> Result<(), DaemonizeError> {
        match &mut self.pidfile {
            Some(guard) => guard.publish(),
            None => Ok(()),
        }
    }

    /// Writes this process's own pid into the locked pidfile (resident mode: conjure is the main
    /// process the supervisor should signal).
    pub(crate) fn write_own_pid(&self) -> Result<(), DaemonizeError> {
        match &self.pidfile {
            Some(guard) => guard.write_pid(std::process::id()),
            None => Ok(()),
        }
    }
}

/// How many lines of the program's output a failure shows, at most.
pub(crate) const TAIL_LINES: usize = 5;
/// How wide each of those lines may be, in characters.
pub(crate) const TAIL_WIDTH: usize = 200;

/// The last lines written to `file` after offset `start`, read through a read-only reopening
/// of the very same file (`/proc/self/fd`, never its path, which the daemon's user may have
/// swapped for a link to something conjure must not show), from its last 4 KiB at most.
fn tail(file: &File, start: u64) -> Option<Vec<String>> {
    use std::os::unix::fs::FileExt;
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()?;
    let meta = reader.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let end = meta.len();
    let from = start.max(end.saturating_sub(4096));
    let mut buf = vec![0u8; (end - from) as usize];
    let n = reader.read_at(&mut buf, from).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let clean: String = l.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
            match clean.char_indices().nth(TAIL_WIDTH) {
                Some((i, _)) => format!("{}…", &clean[..i]),
                None => clean,
            }
        })
        .collect();
    let skip = lines.len().saturating_sub(TAIL_LINES);
    lines.drain(..skip);
    Some(lines)
}

/// A C string from bytes already checked for NUL by validation.
pub(crate) fn cstring(bytes: &[u8]) -> std::ffi::CString {
    // Validation rejects NUL in every path, argument and variable before this is called; a NUL
    // here would be a bug, and truncating at it is the least surprising outcome.
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    std::ffi::CString::new(&bytes[..end]).unwrap_or_default()
}

fn open_devnull() -> Result<OwnedFd, DaemonizeError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|source| DaemonizeError::SystemError { call: "open /dev/null", source })
}

/// Puts `/dev/null` on any of fds 0–2 that is closed, so that no file the launcher opens
/// lands there and is later mistaken for stdio.
fn ensure_stdio_open() -> Result<(), DaemonizeError> {
    for fd in 0..3 {
        if !sys::fd_is_open(fd) {
            // The lowest free number is taken, which is `fd` itself; keep it open for good.
            let null = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|source| DaemonizeError::SystemError { call: "open /dev/null", source })?;
            std::mem::forget(null);
        }
    }
    Ok(())
}

/// Reaps the intermediate child of a double fork, which exits at once.
pub(crate) fn reap(child: i32) {
    let _ = crate::process::waitpid(child);
}

/// The library's double fork (or, in foreground mode, the setup in place). In the original
/// process this never returns: it waits for the daemon's report and exits with its outcome.
pub(crate) fn daemonize_impl(
    config: &DaemonConfig,
    one_thread: sys::SingleThreaded,
) -> Result<DaemonContext, DaemonizeError> {
    let sink = config.readiness_sink();
    let mode = if sink == Sink::Pidfile { PidfileMode::Atomic } else { PidfileMode::Direct };
    crate::readiness::sink::validate(sink)?;
    let prepared = Prepared::new(config.validated()?, mode)?;
    // The s6 notification fd belongs to the daemon, which writes it when ready.
    let sink_fd: Vec<i32> = match sink {
        Sink::Fd(n) => vec![n],
        _ => Vec::new(),
    };
    if prepared.config.foreground {
        let mut plan = prepared.plan(None, &sink_fd, true);
        sys::setup_in_place(&mut plan).map_err(|f| prepared.failure_error(f, None))?;
        tracing::debug!(pid = std::process::id(), "set up in the foreground");
        return Ok(prepared.into_context(None, &one_thread));
    }
    let (read_end, write_end) = launcher::report_pipe().map_err(|e| prepared.abandon(e))?;
    let mut plan = prepared.plan(Some(&write_end), &sink_fd, true);
    // Interrupts are blocked across the fork (the daemon clears its mask in setup) and read
    // from a signalfd in the original process only, so that none is lost in between.
    let interrupts = watch::interrupt_set();
    let mask = watch::Signals::block(&interrupts).map_err(|e| prepared.abandon(e))?;
    tracing::debug!("forking the daemon");
    match sys::fork_daemon(&mut plan, &one_thread).map_err(|e| prepared.abandon(e))? {
        sys::Side::Launcher { child } => {
            drop(write_end);
            reap(child);
            let mut watch = Watch::new(Process::in_session(child), Some(read_end));
            let waited = watch::Signals::read_blocked(mask, &interrupts).and_then(|signals| {
                watch.signals(signals);
                wait_for_library_daemon(&mut watch, &prepared)
            });
            let code = match waited {
                Ok(()) => 0,
                Err(err) => {
                    let err = launcher::abort(&mut watch.process, &prepared, launcher::DEFAULT_KILL_AFTER, err);
                    // Prefixed like any command's complaint: the launcher is the user's program.
                    let me = std::env::args_os().next().map(PathBuf::from);
                    let name = me.as_deref().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
                    let _ = writeln!(io::stderr(), "{}: {err}", name.unwrap_or_else(|| "daemon".into()));
                    if let Some(signal) = err.signal() {
                        let _ = crate::process::die_of(signal);
                    }
                    err.exit_code()
                }
            };
            std::process::exit(code.into())
        }
        sys::Side::Daemon => {
            mask.forget();
            // The library's setup leaves close-on-exec fds alone, the launcher's end among them.
            drop(read_end);
            tracing::debug!(pid = std::process::id(), "daemon set up");
            Ok(prepared.into_context(Some(write_end), &one_thread))
        }
    }
}

/// The original process of [`daemonize_with`]: waits for "ready", an error, the daemon's end,
/// or an interrupt. With the notify sink it is the supervisor's main process until it exits:
/// it passes the daemon's status lines on, and says `READY=1` with `MAINPID=` naming the daemon
/// (`NotifyAccess=main` takes nothing from the daemon before then).
fn wait_for_library_daemon(watch: &mut Watch, prepared: &Prepared) -> Result<(), DaemonizeError> {
    let notify = prepared.config.readiness_sink() == Sink::Notify;
    loop {
        match watch.next()? {
            Event::DaemonReady if notify => return sink::ready(Sink::Notify, Some(watch.process.pid()), None),
            Event::DaemonReady => return Ok(()),
            Event::DaemonStatus(s) if notify => sink::notify(&[sd_notify::NotifyState::Status(&s)])?,
            Event::DaemonStatus(s) => tracing::info!(status = %s, "daemon status"),
            Event::DaemonError { code, message } => return Err(DaemonizeError::Reported { code, message }),
            Event::Failed(f) => return Err(prepared.failure_error(f, None)),
            Event::Closed | Event::Ended(_) => {
                return Err(DaemonizeError::NotReady(match watch.process.pid() {
                    0 => "daemon exited before it started".to_string(),
                    p => format!("daemon (pid {p}) exited or dropped its context before it was ready"),
                }));
            }
            Event::Signal(r) if watch::interrupts_start(&r) => {
                return Err(DaemonizeError::Interrupted { signal: r.signo, program: "daemon".into() });
            }
            _ => {}
        }
    }
}

impl Prepared {
    /// The daemon's context. Fds the setup closed (stdio sources, `/dev/null`) are forgotten,
    /// never closed a second time: their numbers may already be reused.
    fn into_context(self, report: Option<OwnedFd>, one_thread: &sys::SingleThreaded) -> DaemonContext {
        for (key, value) in &self.config.env {
            sys::set_env(one_thread, key, value);
        }
        // The output files and /dev/null are on fds 0-2 now; their original (close-on-exec)
        // fds go with `self`.
        let Prepared { config, identity, lockfile, mut pidfile, .. } = self;
        if let Some(guard) = pidfile.as_mut() {
            guard.close_write();
        }
        DaemonContext { config, identity, report, pidfile, lockfile, notified: false, signal_ids: Vec::new() }
    }
}

/// Daemonizes the calling process: validate, lock, fork, `setsid`, fork, set up, and return
/// in the daemon, still privileged. First checks that the process runs a single thread (Linux:
/// `/proc/self/task`): `fork` copies only the calling thread, and the daemon goes on running
/// ordinary code, so a process with more threads gets [`DaemonizeError::MultiThreaded`].
///
/// The original process never returns: it waits until the daemon calls
/// [`DaemonContext::notify_parent`] (exit 0), reports an error (its code), goes away or drops
/// its context first (exit 70), and exits. Errors found before the fork (validation, locks,
/// output files) come back in the calling process, with nothing started. In foreground mode
/// nothing forks: the calling process is set up in place and gets the context.
///
/// ```no_run
/// let mut config = conjure::DaemonConfig::new();
/// config.pidfile("/run/myapp.pid").stdout("/var/log/myapp.log");
/// let mut ctx = conjure::daemonize(&config)?;
/// // ... open sockets, load state ...
/// ctx.notify_parent()?;
/// # Ok::<(), conjure::DaemonizeError>(())
/// ```
pub fn daemonize(config: &DaemonConfig) -> Result<DaemonContext, DaemonizeError> {
    daemonize_impl(config, sys::SingleThreaded::checked()?)
}

/// [`daemonize`] under its blivet 0.4 name, kept so that code written against it compiles.
pub fn daemonize_checked(config: &DaemonConfig) -> Result<DaemonContext, DaemonizeError> {
    daemonize(config)
}

/// [`daemonize`], then, in the daemon and still privileged, `init` (bind a privileged port,
/// open a root-only file, set resource limits); then the switch to the configured user and
/// group ([`DaemonContext::drop_privileges`]). Returns the context, not yet ready, and what
/// `init` returned: the daemon calls [`DaemonContext::notify_parent`] when it is.
///
/// When `init` fails, or the switch does, the error goes to the launcher, which prints it and
/// exits with its code (a [`DaemonizeError`]'s own, else 70), and the daemon exits with it:
/// a daemon that could not initialize has nothing to return to.
///
/// ```no_run
/// let mut config = conjure::DaemonConfig::new();
/// config.pidfile("/run/echo.pid").user("nobody");
/// let (mut ctx, listener) = conjure::daemonize_with(&config, |_ctx| std::net::TcpListener::bind("0.0.0.0:7"))?;
/// // Running as nobody here, with the privileged port bound.
/// ctx.notify_parent()?;
/// # drop(listener);
/// # Ok::<(), conjure::DaemonizeError>(())
/// ```
pub fn daemonize_with<T, E>(
    config: &DaemonConfig,
    init: impl FnOnce(&mut DaemonContext) -> Result<T, E>,
) -> Result<(DaemonContext, T), DaemonizeError>
where
    E: std::fmt::Display + 'static,
{
    let mut ctx = daemonize(config)?;
    let value = match init(&mut ctx) {
        Ok(v) => v,
        Err(e) => ctx.report_any(&e),
    };
    if let Err(e) = ctx.chown_paths().and_then(|()| ctx.drop_privileges()) {
        ctx.report_error(&e);
    }
    Ok((ctx, value))
}
