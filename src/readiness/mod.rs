//! Readiness: how conjure learns that the program is ready ([`Source`]) and how the supervisor
//! hears it ([`Sink`]).
//!
//! The two are independent and chosen at run time, so one binary serves a `Type=forking` unit
//! (pipe sink), a `Type=notify` unit (notify sink), an init script and s6 (fd sink), whatever
//! the program itself speaks: sd_notify, s6's notification fd, a listening port, a file, or
//! nothing but a successful `exec`.
//!
//! Which process runs what:
//! - parsing and validation: the launcher, before any fork;
//! - hosting the notify socket (`notify.rs`), the fd pipe, inotify and probes (`source.rs`,
//!   `probe.rs`, `listeners.rs`): the launcher while it waits in the engine's event loop (or
//!   resident conjure, which is the launcher staying alive);
//! - relaying the program's sd_notify to conjure's supervisor (`relay.rs`) and feeding the
//!   supervisor's watchdog from a check (`watchdog.rs`): resident conjure, in the same loop;
//! - the sinks (`sink.rs`): the launcher once the source said "ready", except the pipe sink of a
//!   library daemon, which the daemon itself writes through
//!   [`DaemonContext::notify_parent`](crate::DaemonContext::notify_parent).

pub(crate) mod listeners;
pub(crate) mod notify;
pub(crate) mod probe;
pub(crate) mod relay;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod watchdog;

use std::fmt;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How conjure learns that the program is ready (`--ready-on`). Parsed from the command
/// line's spelling:
///
/// ```
/// use conjure::readiness::Source;
/// let s: Source = "tcp:127.0.0.1:8080".parse().unwrap();
/// assert_eq!(s, Source::Tcp("127.0.0.1".into(), 8080));
/// assert_eq!("notify".parse::<Source>(), Ok(Source::Notify));
/// assert!("tcp:nowhere".parse::<Source>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Source {
    /// The program was exec'd successfully.
    #[default]
    Exec,
    /// The program sends sd_notify `READY=1` to a socket conjure hosts (`NOTIFY_SOCKET`).
    Notify,
    /// The program writes a newline to fd N (s6's notification-fd convention).
    Fd(RawFd),
    /// A socket listening at `host:port` (the host resolved before anything starts) is held by
    /// the program or its tree; one that someone else holds is a failure, not readiness.
    Tcp(String, u16),
    /// A Unix stream socket listening at this path is held by the program or its tree; one
    /// that someone else holds is a failure, not readiness.
    Unix(PathBuf),
    /// This path exists.
    File(PathBuf),
    /// This shell command exits 0.
    Cmd(String),
}

/// The lowest fd a program can be told to be ready on, or a supervisor to hear it on: 0–2 are
/// stdio.
pub(crate) const FIRST_NOTIFICATION_FD: RawFd = 3;

/// The N of `fd:N` (`text`), as a readiness `what` (source or sink): a number, not stdio.
fn parse_fd(text: &str, what: &str) -> Result<RawFd, String> {
    match text.strip_prefix("fd:").map(str::parse::<RawFd>) {
        Some(Ok(n)) if n >= FIRST_NOTIFICATION_FD => Ok(n),
        _ => Err(format!("invalid readiness {what} `{text}`: the fd must be a number above 2")),
    }
}

/// `path` made absolute against the current directory, before the fork (the daemon's is `/`).
pub(crate) fn absolute(path: &Path) -> Result<PathBuf, crate::error::DaemonizeError> {
    std::path::absolute(path)
        .map_err(|e| crate::error::DaemonizeError::invalid(format!("invalid path `{}`: {e}", path.display())))
}

impl Source {
    /// Whether conjure must watch the program after `exec` to know (every source but `exec`).
    pub fn needs_watch(&self) -> bool {
        !matches!(self, Source::Exec)
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, arg) = text.split_once(':').unwrap_or((text, ""));
        let need = |what: &str| -> Result<(), String> {
            if arg.is_empty() {
                Err(format!("invalid readiness source `{text}`: `{kind}:` needs {what}"))
            } else {
                Ok(())
            }
        };
        match kind {
            "exec" if arg.is_empty() => Ok(Source::Exec),
            "notify" if arg.is_empty() => Ok(Source::Notify),
            "fd" => {
                need("an fd number")?;
                parse_fd(text, "source").map(Source::Fd)
            }
            "tcp" => {
                need("HOST:PORT")?;
                let (host, port) = arg
                    .rsplit_once(':')
                    .ok_or_else(|| format!("invalid readiness source `{text}`: expected tcp:HOST:PORT"))?;
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("invalid readiness source `{text}`: invalid port `{port}`"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(format!("invalid readiness source `{text}`: empty host"));
                }
                Ok(Source::Tcp(host.to_string(), port))
            }
            "unix" => need("a socket path").map(|()| Source::Unix(arg.into())),
            "file" => need("a path").map(|()| Source::File(arg.into())),
            "cmd" => need("a command").map(|()| Source::Cmd(arg.to_string())),
            _ => Err(format!(
                "invalid readiness source `{text}`: expected exec, notify, fd:N, tcp:HOST:PORT, unix:PATH, file:PATH or cmd:COMMAND"
            )),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Exec => write!(f, "exec"),
            Source::Notify => write!(f, "notify"),
            Source::Fd(n) => write!(f, "fd:{n}"),
            Source::Tcp(h, p) if h.contains(':') => write!(f, "tcp:[{h}]:{p}"),
            Source::Tcp(h, p) => write!(f, "tcp:{h}:{p}"),
            Source::Unix(p) => write!(f, "unix:{}", p.display()),
            Source::File(p) => write!(f, "file:{}", p.display()),
            Source::Cmd(c) => write!(f, "cmd:{c}"),
        }
    }
}

/// How the supervisor hears that the daemon is ready (`--readiness`,
/// [`DaemonConfig::readiness`](crate::DaemonConfig::readiness)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Sink {
    /// The launching process blocks and exits 0 once ready, or prints why it failed and exits
    /// with the sysexits code. The pidfile is complete before it exits.
    #[default]
    Pipe,
    /// sd_notify `READY=1` to `NOTIFY_SOCKET` (with `MAINPID=` when the main process is not the
    /// one notifying, and `STATUS=` lines).
    Notify,
    /// The pidfile appears, atomically, only when the daemon is ready; the launcher does not
    /// wait.
    Pidfile,
    /// A newline is written to fd N, which is then closed (s6-supervise).
    Fd(RawFd),
}

/// `--readiness`: a sink, or `auto` to choose as design section 1 says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkChoice {
    /// Notify in the foreground when `NOTIFY_SOCKET` is set and conjure stays resident (a
    /// source to watch, `--supervise`, PID 1); otherwise the pipe.
    #[default]
    Auto,
    /// This sink.
    Sink(Sink),
}

impl SinkChoice {
    /// The sink this choice means for a launch in `foreground` mode, `resident` or not.
    pub fn resolve(self, foreground: bool, resident: bool) -> Sink {
        match self {
            SinkChoice::Sink(s) => s,
            SinkChoice::Auto if foreground && resident && std::env::var_os("NOTIFY_SOCKET").is_some() => Sink::Notify,
            SinkChoice::Auto => Sink::Pipe,
        }
    }
}

impl FromStr for SinkChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let sink = match text {
            "auto" => return Ok(SinkChoice::Auto),
            "pipe" => Sink::Pipe,
            "notify" => Sink::Notify,
            "pidfile" => Sink::Pidfile,
            _ if text.starts_with("fd:") => Sink::Fd(parse_fd(text, "sink")?),
            _ => {
                return Err(format!("invalid readiness sink `{text}`: expected auto, pipe, notify, pidfile or fd:N"));
            }
        };
        Ok(SinkChoice::Sink(sink))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print_back() {
        for text in [
            "exec",
            "notify",
            "fd:3",
            "tcp:127.0.0.1:8080",
            "tcp:[::1]:80",
            "unix:/run/x.sock",
            "file:/tmp/r",
            "cmd:true",
        ] {
            let s: Source = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
        }
        assert_eq!("tcp:localhost:1".parse(), Ok(Source::Tcp("localhost".into(), 1)));
        assert_eq!("cmd:a:b".parse(), Ok(Source::Cmd("a:b".into())));
    }

    #[test]
    fn bad_sources_say_why() {
        for bad in
            ["", "nope", "fd:", "fd:2", "fd:x", "tcp:host", "tcp:host:0", "tcp::80", "unix:", "file:", "cmd:", "exec:1"]
        {
            let err = bad.parse::<Source>().unwrap_err();
            assert!(err.starts_with("invalid readiness source"), "{bad}: {err}");
        }
    }

    #[test]
    fn sinks_parse() {
        assert_eq!("auto".parse(), Ok(SinkChoice::Auto));
        assert_eq!("fd:5".parse(), Ok(SinkChoice::Sink(Sink::Fd(5))));
        for bad in ["fd:x", "fd:", "fd:2", "fd:-1"] {
            let err = bad.parse::<SinkChoice>().unwrap_err();
            assert!(err.starts_with("invalid readiness sink"), "{bad}: {err}");
        }
        assert!("tcp".parse::<SinkChoice>().is_err());
    }
}
