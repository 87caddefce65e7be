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
use crate::error::DaemonizeError;
use crate::readiness::Sink;
use crate::sys;

/// What a daemon holds after [`daemonize`](crate::daemonize): its lock, its pidfile, the pipe
/// to its launcher, and the identity it will drop to.
#[derive(Debug)]
pub struct DaemonContext {
    pub(crate) config: DaemonConfig,
    pub(crate) identity: Option<Identity>,
    pub(crate) report: Option<OwnedFd>,
    pub(crate) pidfile: Option<Guard>,
    pub(crate) lockfile: Option<Guard>,
    pub(crate) notified: bool,
    pub(crate) cleanup_on_drop: bool,
    pub(crate) signal_ids: Vec<signal_hook::SigId>,
}

impl DaemonContext {
    /// Tells the supervisor the daemon is ready: the launcher exits 0 (pipe sink).
    /// Calling it again does nothing.
    pub fn notify_parent(&mut self) -> Result<(), DaemonizeError> {
        if self.notified {
            return Ok(());
        }
        match self.config.readiness {
            Sink::Pipe => {}
            // In the background the original process is the supervisor's main process: it sends
            // READY=1 with MAINPID= naming this daemon once told below, then exits.
            Sink::Notify if !self.config.foreground => {}
            Sink::Notify => crate::readiness::sink::ready(Sink::Notify, None, None)?,
            Sink::Fd(n) => crate::readiness::sink::ready(Sink::Fd(n), None, None)?,
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

    /// Sends a status line: `STATUS=` to the supervisor with the notify sink; to the launcher,
    /// which logs it (and, with the notify sink, passes it on as the main process), while it
    /// still waits.
    pub fn status(&mut self, text: &str) -> Result<(), DaemonizeError> {
        // Until the launcher is told, it is the main process, and says it for the daemon.
        let launcher_relays = self.report.is_some() && !self.config.foreground;
        if self.config.readiness == Sink::Notify && !launcher_relays {
            crate::readiness::relay::notify_supervisor(&[sd_notify::NotifyState::Status(text)])
                .map_err(|source| DaemonizeError::SystemError { call: "sd_notify to NOTIFY_SOCKET", source })?;
        }
        if let Some(fd) = &self.report {
            report::send(fd, &Record::Status(text.to_string()))
                .map_err(|source| DaemonizeError::SystemError { call: "write to the launcher", source })?;
        }
        Ok(())
    }

    /// Reports `err` to the launcher, which prints it and exits with its code, then removes the
    /// pidfile and ends this process with the same code (`_exit`: no destructors run).
    pub fn report_error(mut self, err: &DaemonizeError) -> ! {
        let code = err.exit_code();
        if let Some(fd) = self.report.take() {
            let _ = report::send(&fd, &Record::Error { code, message: err.to_string() });
        }
        self.cleanup();
        sys::exit_immediately(code)
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
    /// checks that root cannot be regained. Does nothing when neither is configured.
    pub fn drop_privileges(&mut self) -> Result<(), DaemonizeError> {
        match &self.identity {
            Some(identity) => {
                ids::drop_to(&identity.ids)?;
                tracing::debug!(uid = identity.ids.uid, gid = identity.ids.gid, "privileges dropped");
                Ok(())
            }
            None => Ok(()),
        }
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
        self.cleanup_on_drop = cleanup;
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
    /// the default disposition would. Opt-in, so a daemon that owns its signals is not surprised;
    /// built on signal-hook, so other handlers registered through it still run first.
    pub fn cleanup_on_signals(&mut self) -> Result<(), DaemonizeError> {
        let Some(path) = self.config.pidfile.clone() else { return Ok(()) };
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            let id = sys::register_pidfile_cleanup(signal, &path)
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
        if self.cleanup_on_drop {
            self.cleanup();
        }
    }
}
