//! The daemon's side of the library API: [`DaemonContext`], returned by
//! [`daemonize`](crate::daemonize) in the daemon.
//!
//! Until the daemon calls [`DaemonContext::notify_parent`], its launcher is still waiting. A
//! context dropped without notifying closes the report pipe, and the launcher exits non-zero:
//! forgetting to say "ready" is a failure, never a silent success.

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::config::DaemonConfig;
use crate::daemon::ids::{self, Identity};
use crate::daemon::pidfile::Guard;
use crate::daemon::report::{self, Record};
use crate::error::{DaemonizeError, exit};
use crate::readiness::Sink;
use crate::sys;

/// What a daemon holds after [`daemonize`](crate::daemonize): its lock, its pidfile, the pipe
/// to its launcher, and the identity it will drop to.
///
/// ```no_run
/// let mut config = conjure::DaemonConfig::new();
/// config.pidfile("/run/myapp.pid").user("myapp");
/// let mut ctx = conjure::daemonize(&config)?;
/// // Still root: bind privileged ports, read root-only keys. Then:
/// ctx.drop_privileges()?;
/// ctx.cleanup_on_term_signals()?;
/// ctx.status("loading")?;
/// ctx.notify_parent()?; // the launcher exits 0
/// # Ok::<(), conjure::DaemonizeError>(())
/// ```
#[derive(Debug)]
pub struct DaemonContext {
    pub(crate) config: DaemonConfig,
    pub(crate) identity: Option<Identity>,
    pub(crate) report: Option<OwnedFd>,
    pub(crate) pidfile: Option<Guard>,
    pub(crate) lockfile: Option<Guard>,
    pub(crate) notified: bool,
    pub(crate) signal_ids: Vec<signal_hook::SigId>,
}

impl DaemonContext {
    /// Tells the supervisor the daemon is ready: the launcher exits 0 (pipe sink). Calling it
    /// again does nothing.
    ///
    /// Refused while the daemon still runs with the identity it started with although
    /// [`user`](DaemonConfig::user) or [`group`](DaemonConfig::group) was configured: a daemon
    /// must not report ready as root when it was meant to run as someone else. Call
    /// [`drop_privileges`](Self::drop_privileges) first, or use
    /// [`daemonize_with`](crate::daemonize_with), which does.
    pub fn notify_parent(&mut self) -> Result<(), DaemonizeError> {
        if self.notified {
            return Ok(());
        }
        if let Some(id) = &self.identity {
            let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
            if uid != id.ids.uid || gid != id.ids.gid {
                return Err(DaemonizeError::PermissionDenied(format!(
                    "cannot report ready as uid {uid} gid {gid}: the daemon was configured to run as uid {} gid {}; \
                     call drop_privileges() first",
                    id.ids.uid, id.ids.gid
                )));
            }
        }
        match self.config.readiness_sink() {
            Sink::Pipe => {}
            // In the background the original process is the supervisor's main process: it sends
            // READY=1 with MAINPID= naming this daemon once told below, then exits.
            Sink::Notify if !self.config.foreground => {}
            sink @ (Sink::Notify | Sink::Fd(_)) => crate::readiness::sink::ready(sink, None, None)?,
            Sink::Pidfile => self.publish_pidfile()?,
        }
        if let Some(fd) = self.report.take() {
            report::send(&fd, &Record::Ready)
                .map_err(|source| DaemonizeError::SystemError { call: "write to the launcher", source })?;
        }
        self.notified = true;
        tracing::debug!(pid = std::process::id(), "readiness reported");
        Ok(())
    }

    /// Ends initialization with its result: on `Ok`, [`notify_parent`](Self::notify_parent)
    /// and the value back; on `Err`, the error goes to the launcher (with its own code for a
    /// [`DaemonizeError`], 70 for any other) and this process exits, as with
    /// [`report_error`](Self::report_error).
    ///
    /// ```no_run
    /// fn init() -> std::io::Result<std::net::TcpListener> {
    ///     std::net::TcpListener::bind("127.0.0.1:8080")
    /// }
    /// let mut ctx = conjure::daemonize(&conjure::DaemonConfig::new())?;
    /// let listener = ctx.notify_parent_or_report(init())?;
    /// # drop(listener);
    /// # Ok::<(), conjure::DaemonizeError>(())
    /// ```
    pub fn notify_parent_or_report<T, E>(&mut self, result: Result<T, E>) -> Result<T, DaemonizeError>
    where
        E: std::fmt::Display + 'static,
    {
        match result {
            Ok(value) => self.notify_parent().map(|()| value),
            Err(e) => self.report_any(&e),
        }
    }

    /// Sends a status line: `STATUS=` to the supervisor with the notify sink; to the launcher,
    /// which logs it (and, with the notify sink, passes it on as the main process), while it
    /// still waits.
    pub fn status(&mut self, text: &str) -> Result<(), DaemonizeError> {
        // Until the launcher is told, it is the main process, and says it for the daemon.
        let launcher_relays = self.report.is_some() && !self.config.foreground;
        if self.config.readiness_sink() == Sink::Notify && !launcher_relays {
            crate::readiness::sink::notify(&[sd_notify::NotifyState::Status(text)])?;
        }
        if let Some(fd) = &self.report {
            report::send(fd, &Record::Status(text.to_string()))
                .map_err(|source| DaemonizeError::SystemError { call: "write to the launcher", source })?;
        }
        Ok(())
    }

    /// Reports `err` to the launcher, which prints it and exits with its code, then removes the
    /// pidfile and ends this process with the same code (`_exit`: no destructors run).
    pub fn report_error(&mut self, err: &DaemonizeError) -> ! {
        self.report_error_msg(err.exit_code(), err)
    }

    /// Reports a failure of the daemon's own: the launcher prints `message` (one line) and exits
    /// with `code`; then the pidfile is removed and this process ends with the same code
    /// (`_exit`: no destructors run).
    pub fn report_error_msg(&mut self, code: u8, message: impl std::fmt::Display) -> ! {
        if let Some(fd) = self.report.take() {
            let _ = report::send(&fd, &Record::Error { code, message: message.to_string() });
        }
        self.cleanup();
        sys::exit_immediately(code.into())
    }

    /// [`report_error`](Self::report_error) for any error: a [`DaemonizeError`] keeps its
    /// code, any other gets 70 (`EX_SOFTWARE`).
    pub(crate) fn report_any<E: std::fmt::Display + 'static>(&mut self, err: &E) -> ! {
        let code =
            (err as &dyn std::any::Any).downcast_ref::<DaemonizeError>().map_or(exit::SOFTWARE, |e| e.exit_code());
        self.report_error_msg(code, err)
    }

    /// Hands the output files to the target user and group, as blivet's split-phase privilege
    /// drop does. conjure already opened them as that user (or, where only root could create
    /// them, handed them over through their fds), so nothing is left to do: this succeeds, and
    /// never follows a path with root's power. The pidfile and lockfile stay the launching
    /// user's.
    pub fn chown_paths(&self) -> Result<(), DaemonizeError> {
        Ok(())
    }

    /// Switches to the configured user and group: supplementary groups, group, user, then
    /// checks that root cannot be regained and that uid, gid and groups are what they should
    /// be. `USER`, `LOGNAME` and `HOME` then name the user (as `su` and the command set them),
    /// unless the process runs more than one thread by then, when changing the environment
    /// would be unsound and it is left alone. Does nothing when neither is configured.
    pub fn drop_privileges(&mut self) -> Result<(), DaemonizeError> {
        let Some(identity) = &self.identity else { return Ok(()) };
        ids::drop_to(&identity.ids)?;
        tracing::debug!(uid = identity.ids.uid, gid = identity.ids.gid, "privileges dropped");
        if let Ok(one) = sys::SingleThreaded::checked() {
            if let Some(name) = &identity.name {
                sys::set_env(&one, "USER".as_ref(), name.as_ref());
                sys::set_env(&one, "LOGNAME".as_ref(), name.as_ref());
            }
            if let Some(home) = &identity.home {
                sys::set_env(&one, "HOME".as_ref(), home.as_os_str());
            }
        }
        Ok(())
    }

    /// Removes the pidfile if it is still this daemon's. Idempotent, best effort.
    pub fn cleanup(&mut self) {
        if let Some(guard) = &self.pidfile {
            guard.remove();
        }
    }

    /// The pidfile sink: renames the locked temporary pidfile into place.
    fn publish_pidfile(&mut self) -> Result<(), DaemonizeError> {
        match &mut self.pidfile {
            Some(guard) => guard.publish(),
            None => Ok(()),
        }
    }

    /// Overrides the config's `cleanup_on_drop`.
    pub fn set_cleanup_on_drop(&mut self, cleanup: bool) {
        self.config.cleanup_on_drop = cleanup;
    }

    /// The locked lockfile's fd (the pidfile's, when it is the lockfile).
    pub fn lockfile_fd(&self) -> Option<BorrowedFd<'_>> {
        self.lockfile.as_ref().and_then(Guard::lock_fd).or_else(|| self.pidfile.as_ref().and_then(Guard::lock_fd))
    }

    /// The pidfile path, absolute.
    pub fn pidfile_path(&self) -> Option<&std::path::Path> {
        self.config.pidfile.as_deref()
    }

    /// Removes the pidfile when SIGTERM, SIGINT or SIGHUP arrives, then dies of that signal as
    /// the default disposition would (see [`cleanup_on_signals`](Self::cleanup_on_signals)).
    pub fn cleanup_on_term_signals(&mut self) -> Result<(), DaemonizeError> {
        self.cleanup_on_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
    }

    /// Removes the pidfile when one of `signals` arrives, then lets the signal do what its
    /// default disposition does (for TERM, INT and HUP: end the process). Opt-in, so a daemon
    /// that owns its signals is not surprised; built on signal-hook, so other handlers
    /// registered through it still run first. Undone when the context is dropped.
    pub fn cleanup_on_signals(&mut self, signals: &[i32]) -> Result<(), DaemonizeError> {
        let Some((names, dev, ino)) = self.pidfile.as_ref().and_then(Guard::identity) else { return Ok(()) };
        for &signal in signals {
            let id = sys::register_pidfile_cleanup(signal, &names, dev, ino)
                .map_err(|source| DaemonizeError::SystemError { call: "sigaction", source })?;
            self.signal_ids.push(id);
        }
        Ok(())
    }
}

impl Drop for DaemonContext {
    fn drop(&mut self) {
        for id in self.signal_ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        if !self.notified {
            tracing::debug!("context dropped before readiness; the launcher will fail");
        }
        if self.config.cleanup_on_drop {
            self.cleanup();
        }
    }
}
