//! The one error type, and the one table that maps each failure to its exit code.
//!
//! Every failure a launcher or a daemon can meet is a [`DaemonizeError`] variant. Messages
//! are lowercase and concrete, naming the path or call and the OS error
//! ("cannot write pidfile `/run/x.pid`: Permission denied"), because they end up as the one
//! line an operator reads in a journal. [`DaemonizeError::exit_code`] is the only place that
//! turns a failure into a sysexits code; the README and `--help` show the same table.

use std::io;
use std::path::{Path, PathBuf};

/// sysexits.h codes used by conjure (design section 4).
pub mod exit {
    /// Bad flags or configuration.
    pub const USAGE: u8 = 64;
    /// Program not found or not executable.
    pub const NOINPUT: u8 = 66;
    /// Unknown user or group.
    pub const NOUSER: u8 = 67;
    /// The lock is held by another instance, or the address the program is to listen on by
    /// another process.
    pub const UNAVAILABLE: u8 = 69;
    /// The program exited or was killed before it was ready, or failed its watchdog check.
    pub const SOFTWARE: u8 = 70;
    /// fork, setsid, chdir or exec failed.
    pub const OSERR: u8 = 71;
    /// A pidfile, lockfile or output file cannot be created, written or chowned.
    pub const CANTCREAT: u8 = 73;
    /// Readiness timed out.
    pub const TEMPFAIL: u8 = 75;
    /// Not root for `-u/-g`, or setuid/setgid failed.
    pub const NOPERM: u8 = 77;
}

/// Everything that can keep a daemon from starting, or a launcher from reporting it ready.
///
/// The first fourteen variants keep the names of blivet's error type, so code written against
/// it reads the same; the rest cover what conjure adds (readiness, timeouts, foreign threads).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonizeError {
    /// The configuration is invalid (paths, env keys, umask, overlapping roles, flags).
    #[error("{0}")]
    ValidationError(String),
    /// The program to run does not exist or is not executable.
    #[error("cannot execute `{}`: {}", path.display(), why(source))]
    ProgramNotFound {
        /// The program as given or as resolved on `PATH`.
        path: PathBuf,
        /// Why it cannot be executed.
        source: io::Error,
    },
    /// The user named by `-u` does not exist.
    #[error("unknown user `{0}`")]
    UserNotFound(String),
    /// The group named by `-g` does not exist.
    #[error("unknown group `{0}`")]
    GroupNotFound(String),
    /// The lockfile is locked by another instance.
    #[error("cannot lock `{}`: held by another instance{}", path.display(), pid_suffix(*pid))]
    LockConflict {
        /// The lockfile.
        path: PathBuf,
        /// The pid the file names, when it names one.
        pid: Option<i32>,
    },
    /// The lockfile cannot be opened or locked.
    #[error("cannot open lockfile `{}`: {}", path.display(), why(source))]
    LockfileError {
        /// The lockfile.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The pidfile cannot be created or written.
    #[error("cannot write pidfile `{}`: {}", path.display(), why(source))]
    PidfileError {
        /// The pidfile.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An output file cannot be opened or put in place of stdout/stderr.
    #[error("cannot open output file `{}`: {}", path.display(), why(source))]
    OutputFileError {
        /// The output file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file cannot be handed to the target user or group.
    #[error("cannot chown `{}`: {}", path.display(), why(source))]
    ChownError {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `fork` failed.
    #[error("cannot fork: {}", why(.0))]
    ForkFailed(io::Error),
    /// `setsid` failed.
    #[error("cannot start a new session (setsid): {}", why(.0))]
    SetsidFailed(io::Error),
    /// `chdir` failed.
    #[error("cannot change directory to `{}`: {}", path.display(), why(source))]
    ChdirFailed {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Root is needed and missing, or a privilege drop failed or did not stick.
    #[error("{0}")]
    PermissionDenied(String),
    /// `execve` of the program failed for a reason other than "not found / not executable".
    #[error("cannot execute `{}`: {}", path.display(), why(source))]
    ExecFailed {
        /// The program.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Some other system call failed (pipe, socket, poll, …).
    #[error("{call} failed: {}", why(source))]
    SystemError {
        /// The call, as an operator would search for it.
        call: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// [`crate::daemonize_checked`] refused a process that runs more than one thread.
    #[error("cannot daemonize: the process runs {0} threads, and fork would copy only one")]
    MultiThreaded(usize),
    /// The program (or daemon) exited or was killed before it was ready.
    #[error("{0}")]
    NotReady(String),
    /// Readiness did not come within the timeout; the program was stopped.
    #[error("{0}")]
    ReadyTimeout(String),
    /// `stop` could not stop the daemon, or refused to signal what the pidfile names.
    #[error("{0}")]
    StopFailed(String),
    /// A signal (INT, TERM, HUP or QUIT) interrupted the start before the program was ready;
    /// the program and its descendants were stopped. A command-line launcher dies of the same
    /// signal after saying so ([`DaemonizeError::signal`]).
    #[error("interrupted by {} before `{program}` was ready; stopped it", crate::process::signal_name(*signal))]
    Interrupted {
        /// The signal.
        signal: i32,
        /// The program's name.
        program: String,
    },
    /// The address the program is to listen on (`--ready-on tcp:`/`unix:`) is held by
    /// another process; the message names it when conjure can see it.
    #[error("{0}")]
    AddressInUse(String),
    /// The program failed its `--watchdog` check for longer than `--watchdog-timeout`; it was
    /// stopped.
    #[error("{0}")]
    Unhealthy(String),
    /// The daemon reported its own failure through [`crate::DaemonContext::report_error`].
    #[error("{message}")]
    Reported {
        /// The exit code the daemon asked for.
        code: u8,
        /// Its one-line message.
        message: String,
    },
}

/// An OS error as an operator reads it: the C library's wording ("Permission denied"),
/// without Rust's " (os error 13)".
pub(crate) fn why(err: &io::Error) -> String {
    let text = err.to_string();
    match err.raw_os_error() {
        Some(code) => text.strip_suffix(&format!(" (os error {code})")).unwrap_or(&text).to_string(),
        None => text,
    }
}

fn pid_suffix(pid: Option<i32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

impl DaemonizeError {
    /// The sysexits code a launcher exits with for this error: the one table of design
    /// section 4. A `u8`, as exit codes are, so that `ExitCode::from(err.exit_code())` works.
    pub fn exit_code(&self) -> u8 {
        use DaemonizeError::*;
        match self {
            ValidationError(_) => exit::USAGE,
            ProgramNotFound { .. } => exit::NOINPUT,
            UserNotFound(_) | GroupNotFound(_) => exit::NOUSER,
            LockConflict { .. } | AddressInUse(_) => exit::UNAVAILABLE,
            LockfileError { .. } | PidfileError { .. } | OutputFileError { .. } => exit::CANTCREAT,
            ChownError { .. } => exit::CANTCREAT,
            ForkFailed(_) | SetsidFailed(_) | ChdirFailed { .. } | ExecFailed { .. } => exit::OSERR,
            SystemError { .. } => exit::OSERR,
            PermissionDenied(_) => exit::NOPERM,
            MultiThreaded(_) | NotReady(_) | Unhealthy(_) => exit::SOFTWARE,
            ReadyTimeout(_) => exit::TEMPFAIL,
            StopFailed(_) => 1,
            // What a shell reports for a process killed by the signal, where dying of it fails.
            Interrupted { signal, .. } => u8::try_from(128 + signal).unwrap_or(u8::MAX),
            Reported { code, .. } => *code,
        }
    }

    /// The signal a launcher should die of after reporting this error, so that its parent sees
    /// the death it would have seen without conjure: the interrupting signal.
    pub fn signal(&self) -> Option<i32> {
        match self {
            DaemonizeError::Interrupted { signal, .. } => Some(*signal),
            _ => None,
        }
    }

    /// The file this error is about, when it is about one.
    pub fn path(&self) -> Option<&Path> {
        use DaemonizeError::*;
        match self {
            ProgramNotFound { path, .. }
            | LockConflict { path, .. }
            | LockfileError { path, .. }
            | PidfileError { path, .. }
            | OutputFileError { path, .. }
            | ChownError { path, .. }
            | ChdirFailed { path, .. }
            | ExecFailed { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Shorthand for [`DaemonizeError::ValidationError`].
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        DaemonizeError::ValidationError(msg.into())
    }

    /// Shorthand for [`DaemonizeError::SystemError`] from a nix errno.
    pub(crate) fn sys(call: &'static str, errno: nix::errno::Errno) -> Self {
        DaemonizeError::SystemError { call, source: errno.into() }
    }
}

impl From<DaemonizeError> for io::Error {
    /// Keeps the message (and so the path) when the error crosses into `io::Error` land.
    fn from(err: DaemonizeError) -> Self {
        io::Error::other(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_path_and_the_os_error() {
        let err = DaemonizeError::PidfileError {
            path: "/run/x.pid".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(err.to_string(), "cannot write pidfile `/run/x.pid`: Permission denied");
        assert_eq!(err.exit_code(), 73);
        assert_eq!(err.path(), Some(Path::new("/run/x.pid")));
    }

    #[test]
    fn lock_conflict_names_the_holder() {
        let err = DaemonizeError::LockConflict { path: "/run/x.pid".into(), pid: Some(42) };
        assert_eq!(err.to_string(), "cannot lock `/run/x.pid`: held by another instance (pid 42)");
        assert_eq!(err.exit_code(), 69);
    }
}
