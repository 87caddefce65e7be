//! The command line: clap's definition of `conjure`, its subcommands and their value parsers.
//!
//! It lives apart from `main.rs` so that `xtask` can include this very file (`#[path]`) and
//! generate the man page and shell completions from the definition the binary parses with:
//! the two cannot drift, and the library gains no public CLI type.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use conjure::readiness::{SinkChoice, Source};

const AFTER_HELP: &str = "\
Exit codes:
  0   ready (foreground: the program's own status)
  64  bad flags or configuration             (EX_USAGE)
  66  program not found or not executable    (EX_NOINPUT)
  67  unknown user or group                  (EX_NOUSER)
  69  the lock is held by another instance,  (EX_UNAVAILABLE)
      or the readiness address by another process
  70  the program died before it was ready,  (EX_SOFTWARE)
      or failed its watchdog check
  71  fork, setsid, chdir or exec failed     (EX_OSERR)
  73  pidfile, lockfile or output file error (EX_CANTCREAT)
  75  readiness timed out                    (EX_TEMPFAIL)
  77  not root for -u/-g, or setuid failed   (EX_NOPERM)
`status` answers with LSB codes: 0 running, 1 dead but pidfile exists, 3 not running, 4 unknown.

Examples:
  A Type=forking unit:
    ExecStart=/usr/bin/conjure -p /run/myapp.pid -o /var/log/myapp.log -u myapp -- /usr/bin/myapp
    PIDFile=/run/myapp.pid
  An init script:
    conjure -p /run/myapp.pid -- /usr/bin/myapp --port 8080 || exit $?
    conjure stop -p /run/myapp.pid --timeout 10s
    conjure status -p /run/myapp.pid
  A container entrypoint:
    ENTRYPOINT [\"conjure\", \"-f\", \"--\", \"/usr/bin/myapp\"]

Set CONJURE_LOG=debug (or pass -v) to trace every step on stderr.";

/// Start a program as a correct Unix daemon and report exactly when it is ready or why it failed.
#[derive(Debug, Parser)]
#[command(
    name = "conjure",
    version,
    propagate_version = true,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    override_usage = "conjure [OPTIONS] -- PROGRAM [ARGS]...\n       conjure stop -p PIDFILE [--signal SIG] [--timeout DUR]\n       conjure status -p PIDFILE"
)]
pub struct Cli {
    /// Trace each step on stderr (also CONJURE_LOG=debug); accepted before or after a subcommand.
    #[arg(short = 'v', long = "verbose", global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub start: Start,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stop the daemon whose locked pidfile is given: the signal, then KILL after the timeout.
    Stop {
        /// The daemon's pidfile.
        #[arg(short = 'p', long = "pidfile", value_name = "PATH")]
        pidfile: PathBuf,
        /// The signal to send first (a name like TERM, a number, or RTMIN+N).
        #[arg(long, value_name = "SIG", default_value = "TERM", value_parser = conjure::process::parse_signal)]
        signal: i32,
        /// How long to wait before SIGKILL.
        #[arg(long, value_name = "DUR", default_value = "10s", value_parser = conjure::parse_duration)]
        timeout: Duration,
    },
    /// Report whether the daemon runs (LSB codes: 0 running, 1 dead, 3 not running, 4 unknown).
    Status {
        /// The daemon's pidfile.
        #[arg(short = 'p', long = "pidfile", value_name = "PATH")]
        pidfile: PathBuf,
    },
}

#[derive(Debug, Default, Args)]
pub struct Start {
    /// Write the daemon's pid to this file, locked for its lifetime.
    #[arg(short = 'p', long = "pidfile", value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// Exclusive lockfile (default: the pidfile).
    #[arg(short = 'l', long = "lock", value_name = "PATH")]
    pub lock: Option<PathBuf>,
    /// Take no lock at all.
    #[arg(long = "no-lock", conflicts_with = "lock")]
    pub no_lock: bool,
    /// Working directory (default: / in the background, the current one with -f).
    #[arg(short = 'c', long = "chdir", value_name = "PATH")]
    pub chdir: Option<PathBuf>,
    /// File mode creation mask, in octal (default: 022 in the background, the current one with -f).
    #[arg(short = 'm', long = "umask", value_name = "MODE", value_parser = parse_umask)]
    pub umask: Option<u32>,
    /// Send stdout to this file (and stderr, unless -e: .stdout→.stderr, .out→.err, else the same).
    #[arg(short = 'o', long = "stdout", value_name = "PATH")]
    pub stdout: Option<PathBuf>,
    /// Send stderr to this file.
    #[arg(short = 'e', long = "stderr", value_name = "PATH")]
    pub stderr: Option<PathBuf>,
    /// Append to the output files instead of truncating them.
    #[arg(short = 'a', long = "append")]
    pub append: bool,
    /// Run as this user (name or uid); needs root.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Run as this group (name or gid); needs root.
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    pub group: Option<String>,
    /// Stay in the foreground: no fork, no new session, stdin kept; exec in place.
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    /// Keep inherited fds open.
    #[arg(long = "no-close-fds")]
    pub no_close_fds: bool,
    /// Keep fd N open in the daemon (repeatable); LISTEN_FDS fds are kept without asking.
    #[arg(long = "keep-fd", value_name = "N")]
    pub keep_fd: Vec<i32>,
    /// How conjure learns the program is ready: exec, notify, fd:N, tcp:HOST:PORT, unix:PATH,
    /// file:PATH or cmd:COMMAND.
    #[arg(long = "ready-on", value_name = "SOURCE", default_value = "exec")]
    pub ready_on: Source,
    /// How the supervisor hears it: auto, pipe, notify, pidfile or fd:N.
    #[arg(long = "readiness", value_name = "SINK", default_value = "auto")]
    pub readiness: SinkChoice,
    /// Give up on readiness after this long and stop the program (0: wait forever).
    #[arg(long = "ready-timeout", value_name = "DUR", default_value = "90s", value_parser = conjure::parse_duration)]
    pub ready_timeout: Duration,
    /// Grace between TERM and KILL when conjure stops a program's tree (a failed start, orphans).
    #[arg(long = "kill-after", value_name = "DUR", default_value = "5s", value_parser = conjure::parse_duration)]
    pub kill_after: Duration,
    /// Check the program once ready (tcp:, unix:, file:, cmd:) every half of WATCHDOG_USEC and
    /// send WATCHDOG=1 while it passes (stays resident; needs -f).
    #[arg(long = "watchdog", value_name = "CHECK")]
    pub watchdog: Option<Source>,
    /// With --watchdog: stop the program and exit 70 once the check has failed this long.
    #[arg(long = "watchdog-timeout", value_name = "DUR", requires = "watchdog", value_parser = conjure::parse_duration)]
    pub watchdog_timeout: Option<Duration>,
    /// Stay resident as the program's parent: forward signals, reap, relay sd_notify (needs -f).
    #[arg(long = "supervise")]
    pub supervise: bool,
    /// Resident: forward signals to the program's process group, not just the program.
    #[arg(long = "signal-group")]
    pub signal_group: bool,
    /// Resident: forward signal FROM as signal TO (repeatable; names or numbers, e.g. TERM:QUIT).
    #[arg(long = "rewrite", value_name = "FROM:TO", value_parser = parse_rewrite)]
    pub rewrite: Vec<(i32, i32)>,
    /// Set an environment variable (repeatable; NAME alone sets it empty).
    #[arg(short = 'E', long = "env", value_name = "NAME=VAL", value_parser = parse_env)]
    pub env: Vec<(OsString, OsString)>,
    /// The program and its arguments.
    #[arg(value_name = "PROGRAM", required = true, trailing_var_arg = true)]
    pub command: Vec<OsString>,
}

pub fn parse_umask(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("invalid umask `{text}`: expected an octal mode from 0 to 777"))
}

pub fn parse_env(text: &str) -> Result<(OsString, OsString), String> {
    // `NAME` alone sets it to the empty string, as blivet's `daemonize -E NAME` does.
    let (k, v) = text.split_once('=').unwrap_or((text, ""));
    if k.is_empty() {
        return Err(format!("invalid environment assignment `{text}`: expected NAME=VALUE"));
    }
    Ok((k.into(), v.into()))
}

pub fn parse_rewrite(text: &str) -> Result<(i32, i32), String> {
    let (from, to) = text
        .split_once(':')
        .ok_or_else(|| format!("invalid signal rewrite `{text}`: expected FROM:TO, like TERM:QUIT"))?;
    Ok((conjure::process::parse_signal(from)?, conjure::process::parse_signal(to)?))
}
