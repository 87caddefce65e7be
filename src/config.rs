//! [`DaemonConfig`]: what a daemon should look like, checked before anything forks.
//!
//! Setters are infallible and chain on `&mut Self`, so a config can be built in pieces (the CLI
//! does). Everything that can be checked without forking is checked by
//! [`DaemonConfig::validate`], which the engine calls first: a launcher that fails there has
//! touched nothing.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::DaemonizeError;
use crate::readiness::Sink;

/// The umask of a daemon in the background unless told otherwise: systemd's `UMask=` default.
/// blivet's 0 would make every file the daemon creates with mode 0666 world-writable.
const DEFAULT_UMASK: u32 = 0o022;

/// Settings of a daemon: files, identity, mode and how readiness is reported.
///
/// ```
/// let mut config = conjure::DaemonConfig::new();
/// config.pidfile("/run/myapp.pid").stdout("/var/log/myapp.out").umask(0o022);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DaemonConfig {
    pub(crate) pidfile: Option<PathBuf>,
    pub(crate) lockfile: Option<PathBuf>,
    pub(crate) lock: bool,
    pub(crate) chdir: Option<PathBuf>,
    pub(crate) umask: Option<u32>,
    pub(crate) stdout: Option<PathBuf>,
    pub(crate) stderr: Option<PathBuf>,
    pub(crate) append: bool,
    pub(crate) user: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) foreground: bool,
    pub(crate) close_fds: bool,
    pub(crate) cleanup_on_drop: bool,
    pub(crate) env: Vec<(OsString, OsString)>,
    /// As set with [`readiness`](Self::readiness); `None`: the default (the pipe for
    /// [`daemonize`](crate::daemonize), the launcher's own choice for a [`Launcher`](crate::Launcher)).
    pub(crate) readiness: Option<Sink>,
    pub(crate) keep_fds: Vec<RawFd>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            pidfile: None,
            lockfile: None,
            lock: true,
            chdir: None,
            umask: None,
            stdout: None,
            stderr: None,
            append: false,
            user: None,
            group: None,
            foreground: false,
            close_fds: true,
            cleanup_on_drop: true,
            env: Vec::new(),
            readiness: None,
            keep_fds: Vec::new(),
        }
    }
}

impl DaemonConfig {
    /// A config with the defaults: in the background, directory `/` and umask `022` (systemd's
    /// `UMask=` default); in the foreground, the caller's directory and umask. Stdin on
    /// `/dev/null` in the background, fds closed, readiness reported on the launcher's pipe.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the daemon's pid (and a newline) to this file, locked, before readiness is reported.
    /// The pidfile is also the lockfile unless [`lockfile`](Self::lockfile) names another.
    pub fn pidfile(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.pidfile = Some(path.into());
        self
    }

    /// Takes an exclusive `flock` on this file for the daemon's lifetime (default: the pidfile).
    pub fn lockfile(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.lockfile = Some(path.into());
        self
    }

    /// Whether to lock at all (default true). Without a lock, nothing stops a second instance
    /// and `conjure stop` refuses to signal.
    pub fn lock(&mut self, lock: bool) -> &mut Self {
        self.lock = lock;
        self
    }

    /// No lockfile and no lock at all (blivet's name for `lock(false)`, which also forgets a
    /// [`lockfile`](Self::lockfile) set earlier).
    pub fn no_lockfile(&mut self) -> &mut Self {
        self.lockfile = None;
        self.lock = false;
        self
    }

    /// Working directory of the daemon (default: `/` in the background, the caller's in the
    /// foreground).
    pub fn chdir(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.chdir = Some(path.into());
        self
    }

    /// File mode creation mask of the daemon, at most `0o777` (default: `0o022` in the
    /// background, the caller's in the foreground).
    pub fn umask(&mut self, mode: u32) -> &mut Self {
        self.umask = Some(mode);
        self
    }

    /// Sends stdout to this file. Also stderr, unless [`stderr`](Self::stderr) is set: then a
    /// name ending in `.stdout` gives `.stderr`, `.out` gives `.err`, any other the same file.
    pub fn stdout(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.stdout = Some(path.into());
        self
    }

    /// Sends stderr to this file.
    pub fn stderr(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.stderr = Some(path.into());
        self
    }

    /// Appends to the output files instead of truncating them.
    pub fn append(&mut self, append: bool) -> &mut Self {
        self.append = append;
        self
    }

    /// Runs as this user (name or numeric uid); needs root.
    pub fn user(&mut self, user: impl Into<String>) -> &mut Self {
        self.user = Some(user.into());
        self
    }

    /// Runs as this group (name or numeric gid); needs root. Default: the user's primary group.
    pub fn group(&mut self, group: impl Into<String>) -> &mut Self {
        self.group = Some(group.into());
        self
    }

    /// Stays in the foreground: no fork, no new session; stdout and stderr stay inherited
    /// unless redirected. Every other step applies.
    pub fn foreground(&mut self, foreground: bool) -> &mut Self {
        self.foreground = foreground;
        self
    }

    /// Closes every inherited fd above 2 (default true), except those kept on purpose.
    pub fn close_fds(&mut self, close: bool) -> &mut Self {
        self.close_fds = close;
        self
    }

    /// Removes the pidfile when the [`DaemonContext`](crate::DaemonContext) is dropped (default true).
    pub fn cleanup_on_drop(&mut self, cleanup: bool) -> &mut Self {
        self.cleanup_on_drop = cleanup;
        self
    }

    /// Sets an environment variable in the daemon; repeated keys: the last one wins.
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// How the supervisor hears that the daemon is ready (default: the launcher's pipe). A
    /// [`Launcher`](crate::Launcher) given this config uses it too, unless told otherwise with
    /// [`Launcher::readiness`](crate::Launcher::readiness).
    pub fn readiness(&mut self, sink: Sink) -> &mut Self {
        self.readiness = Some(sink);
        self
    }

    /// The readiness sink, as [`readiness`](Self::readiness) set it (default: the pipe).
    pub fn readiness_sink(&self) -> Sink {
        self.readiness.unwrap_or_default()
    }

    /// Keeps fd `fd` open in the daemon (repeatable), e.g. a socket handed over by a supervisor.
    pub fn keep_fd(&mut self, fd: RawFd) -> &mut Self {
        if !self.keep_fds.contains(&fd) {
            self.keep_fds.push(fd);
        }
        self
    }

    /// The pidfile, if any.
    pub fn pidfile_path(&self) -> Option<&Path> {
        self.pidfile.as_deref()
    }

    /// The file that is locked: the lockfile, else the pidfile; none with `lock(false)`.
    pub fn lock_path(&self) -> Option<&Path> {
        if !self.lock {
            return None;
        }
        self.lockfile.as_deref().or(self.pidfile.as_deref())
    }

    /// Where stderr goes: as set, or derived from stdout (see [`stdout`](Self::stdout)).
    pub fn stderr_path(&self) -> Option<PathBuf> {
        if let Some(err) = &self.stderr {
            return Some(err.clone());
        }
        let out = self.stdout.as_ref()?;
        let name = out.file_name()?.as_bytes();
        let derived = if let Some(stem) = name.strip_suffix(b".stdout") {
            [stem, b".stderr"].concat()
        } else if let Some(stem) = name.strip_suffix(b".out") {
            [stem, b".err"].concat()
        } else {
            return Some(out.clone());
        };
        Some(out.with_file_name(OsStr::from_bytes(&derived)))
    }

    /// Checks everything that can be checked before forking: paths and their directories, roles
    /// that would collide, env keys, the umask, users, groups, and root for `-u/-g`.
    pub fn validate(&self) -> Result<(), DaemonizeError> {
        self.validated().map(|_| ())
    }

    /// [`validate`](Self::validate), returning what it found: the config with every path made
    /// absolute against the current directory (so that the daemon's `chdir` cannot change what
    /// they name) and the identity resolved to numbers. The engine starts from this, so users
    /// and groups are looked up once per launch (NSS lookups read files, and may ask a network
    /// service).
    pub(crate) fn validated(&self) -> Result<Validated, DaemonizeError> {
        let mut c = self.clone();
        let cwd = std::env::current_dir().map_err(|e| {
            DaemonizeError::invalid(format!("cannot read the current directory: {}", crate::error::why(&e)))
        })?;
        let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) };
        c.pidfile = c.pidfile.as_deref().map(abs);
        c.lockfile = c.lockfile.as_deref().map(abs);
        c.stdout = c.stdout.as_deref().map(abs);
        c.stderr = self.stderr_path().as_deref().map(abs);
        if !c.foreground {
            c.chdir.get_or_insert_with(|| PathBuf::from("/"));
            c.umask.get_or_insert(DEFAULT_UMASK);
        }
        c.chdir = c.chdir.as_deref().map(abs);

        if let Some(mask) = c.umask.filter(|m| *m > 0o777) {
            return Err(DaemonizeError::invalid(format!("invalid umask {mask:o}: must be at most 777")));
        }
        for (key, value) in &c.env {
            let k = key.as_bytes();
            if k.is_empty() || k.contains(&b'=') || k.contains(&0) {
                return Err(DaemonizeError::invalid(format!(
                    "invalid environment variable name `{}`: must be non-empty, without `=` or NUL",
                    key.to_string_lossy()
                )));
            }
            if value.as_bytes().contains(&0) {
                return Err(DaemonizeError::invalid(format!(
                    "invalid value for environment variable `{}`: contains NUL",
                    key.to_string_lossy()
                )));
            }
        }
        for path in [&c.pidfile, &c.lockfile, &c.stdout, &c.stderr].into_iter().flatten() {
            if path.as_os_str().as_bytes().contains(&0) {
                return Err(DaemonizeError::invalid(format!("invalid path `{}`: contains NUL", path.display())));
            }
        }
        // Roles that may share a file: pidfile and lockfile; stdout and stderr. Any other pair
        // would have the pid written over a log, or a log truncated over a pid.
        let data = [("pidfile", &c.pidfile), ("lockfile", &c.lockfile)];
        let logs = [("stdout", &c.stdout), ("stderr", &c.stderr)];
        for (dn, dp) in data {
            for (ln, lp) in logs {
                if let (Some(d), Some(l)) = (dp, lp)
                    && same_file(d, l)
                {
                    return Err(DaemonizeError::invalid(format!("the {dn} and {ln} cannot both be `{}`", d.display())));
                }
            }
        }
        let parent_missing = |p: &Path| -> Option<std::io::Error> {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("/"));
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => None,
                Ok(_) => Some(std::io::Error::from_raw_os_error(libc::ENOTDIR)),
                Err(e) => Some(e),
            }
        };
        if let Some(p) = &c.pidfile
            && let Some(source) = parent_missing(p)
        {
            return Err(DaemonizeError::PidfileError { path: p.clone(), source });
        }
        if let Some(p) = &c.lockfile
            && let Some(source) = parent_missing(p)
        {
            return Err(DaemonizeError::LockfileError { path: p.clone(), source });
        }
        for p in [&c.stdout, &c.stderr].into_iter().flatten() {
            if let Some(source) = parent_missing(p) {
                return Err(DaemonizeError::OutputFileError { path: p.clone(), source });
            }
        }
        if let Some(dir) = &c.chdir {
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(DaemonizeError::ChdirFailed {
                        path: dir.clone(),
                        source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
                    });
                }
                Err(source) => return Err(DaemonizeError::ChdirFailed { path: dir.clone(), source }),
            }
        }
        for &fd in &c.keep_fds {
            if fd < 3 {
                return Err(DaemonizeError::invalid(format!("cannot keep fd {fd}: fds 0-2 are always kept")));
            }
            if !crate::sys::fd_is_open(fd) {
                return Err(DaemonizeError::invalid(format!("cannot keep fd {fd}: it is not open")));
            }
        }
        let identity = crate::daemon::ids::resolve(c.user.as_deref(), c.group.as_deref())?;
        Ok(Validated { config: c, identity })
    }
}

/// A configuration that passed [`DaemonConfig::validate`]: every path absolute, the user and
/// group resolved. Made only by [`DaemonConfig::validated`].
#[derive(Debug)]
pub(crate) struct Validated {
    pub config: DaemonConfig,
    pub identity: Option<crate::daemon::ids::Identity>,
}

/// Whether two paths name one file: the same path, or (when both exist) the same inode.
fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_derived_from_stdout() {
        let mut c = DaemonConfig::new();
        c.stdout("/var/log/app.stdout");
        assert_eq!(c.stderr_path(), Some(PathBuf::from("/var/log/app.stderr")));
        c.stdout("/var/log/app.out");
        assert_eq!(c.stderr_path(), Some(PathBuf::from("/var/log/app.err")));
        c.stdout("/var/log/app.log");
        assert_eq!(c.stderr_path(), Some(PathBuf::from("/var/log/app.log")));
        c.stderr("/tmp/e");
        assert_eq!(c.stderr_path(), Some(PathBuf::from("/tmp/e")));
    }

    #[test]
    fn env_last_write_wins() {
        let mut c = DaemonConfig::new();
        c.env("A", "1").env("B", "2").env("A", "3");
        assert_eq!(c.env, vec![("B".into(), "2".into()), ("A".into(), "3".into())]);
    }

    #[test]
    fn validate_rejects_bad_input() {
        let mut c = DaemonConfig::new();
        c.umask(0o1000);
        assert!(matches!(c.validate(), Err(DaemonizeError::ValidationError(_))));
        let mut c = DaemonConfig::new();
        c.env("A=B", "1");
        assert!(matches!(c.validate(), Err(DaemonizeError::ValidationError(_))));
        let mut c = DaemonConfig::new();
        c.pidfile("/tmp/x.pid").stdout("/tmp/x.pid");
        let err = c.validate().unwrap_err();
        assert_eq!(err.to_string(), "the pidfile and stdout cannot both be `/tmp/x.pid`");
        let mut c = DaemonConfig::new();
        c.pidfile("/nonexistent-dir/x.pid");
        assert_eq!(c.validate().unwrap_err().exit_code(), 73);
        let mut c = DaemonConfig::new();
        c.chdir("/nonexistent-dir");
        assert_eq!(c.validate().unwrap_err().exit_code(), 71);
        let mut c = DaemonConfig::new();
        c.user("no-such-user-conjure");
        assert_eq!(c.validate().unwrap_err().exit_code(), 67);
    }
}
