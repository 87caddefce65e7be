//! [`Launcher`]: start a program as a daemon and wait until it is ready; the type behind the
//! `conjure` command.
//!
//! Unlike [`daemonize`](crate::daemonize), the launcher never runs user code after the fork:
//! the child only performs the prepared setup and `execve`s the program. So a launcher may be
//! used from a multi-threaded program, and needs no `unsafe` from its caller.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::DaemonConfig;
use crate::daemon::sys::{self, ExecPlan};
use crate::daemon::{Chown, Prepared, cstring, reap, report};
use crate::error::DaemonizeError;

/// `LISTEN_FDS` fds start here (sd_listen_fds(3)).
const LISTEN_FDS_START: i32 = 3;

/// A program to start as a daemon, with the config that says how.
#[derive(Debug, Clone)]
pub struct Launcher {
    config: DaemonConfig,
    program: OsString,
    args: Vec<OsString>,
}

/// A daemon that was started and is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The daemon's pid (the program's, after exec).
    pub pid: i32,
}

impl Launcher {
    /// A launcher for `program` (searched on `PATH` when it has no slash) with `config`.
    pub fn new(config: DaemonConfig, program: impl Into<OsString>) -> Self {
        Launcher { config, program: program.into(), args: Vec::new() }
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

    /// Starts the program and waits until it is ready (for now: exec'd).
    ///
    /// In the background (the default) this returns [`Started`] once the program was exec'd,
    /// with the pidfile complete. In the foreground the program replaces the calling process,
    /// so this returns only on failure. Every failure leaves no process and no pidfile behind.
    pub fn run(&self) -> Result<Started, DaemonizeError> {
        self.config.validate()?;
        let program = resolve_program(&self.program, self.search_path().as_deref())?;
        tracing::debug!(program = %program.display(), "program resolved");
        let prepared = Prepared::new(&self.config, Chown::Now)?;
        let listen_fds = listen_fds();
        let exec = self.exec_plan(&program, &prepared, !listen_fds.is_empty())?;

        if prepared.config.foreground {
            let mut plan = prepared.plan(None, &listen_fds, true);
            plan.exec = Some(exec);
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

        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| prepared.abandon(DaemonizeError::sys("pipe2", e)))?;
        let mut plan = prepared.plan(Some(&write_end), &listen_fds, true);
        plan.exec = Some(exec);
        tracing::debug!("forking");
        let spawned = sys::spawn(&mut plan, true).map_err(|e| prepared.abandon(e))?;
        drop(write_end);
        reap(spawned.child);

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

        let result = match (failure, pid) {
            (Some(f), _) => Err(prepared.failure_error(f, Some(&program))),
            (None, Some(pid)) => Ok(Started { pid }),
            (None, None) => Err(DaemonizeError::NotReady("the daemon died before it could start the program".into())),
        };
        match &result {
            Ok(s) => tracing::debug!(pid = s.pid, "program exec'd"),
            Err(_) => prepared.remove_pidfile(),
        }
        result
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
