//! The `conjure` command: parse arguments, set up tracing, run the library, map the outcome to
//! an exit code. Everything else lives in the library.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use conjure::control::{self, Stopped};
use conjure::readiness::{SinkChoice, Source};
use conjure::{DaemonConfig, DaemonizeError, Launcher, Outcome, exit};
use nix::sys::signal::Signal;

const AFTER_HELP: &str = "\
Exit codes:
  0   ready (foreground: the program's own status)
  64  bad flags or configuration             (EX_USAGE)
  66  program not found or not executable    (EX_NOINPUT)
  67  unknown user or group                  (EX_NOUSER)
  69  the lock is held by another instance   (EX_UNAVAILABLE)
  70  the program died before it was ready   (EX_SOFTWARE)
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
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    override_usage = "conjure [OPTIONS] -- PROGRAM [ARGS]...\n       conjure stop -p PIDFILE [--signal SIG] [--timeout DUR]\n       conjure status -p PIDFILE"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    start: Start,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stop the daemon whose locked pidfile is given: the signal, then KILL after the timeout.
    Stop {
        /// The daemon's pidfile.
        #[arg(short = 'p', long = "pidfile", value_name = "PATH")]
        pidfile: PathBuf,
        /// The signal to send first (name or number).
        #[arg(long, value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
        signal: Signal,
        /// How long to wait before SIGKILL.
        #[arg(long, value_name = "DUR", default_value = "10s", value_parser = conjure::parse_duration)]
        timeout: Duration,
        /// Trace each step on stderr.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Report whether the daemon runs (LSB codes: 0 running, 1 dead, 3 not running, 4 unknown).
    Status {
        /// The daemon's pidfile.
        #[arg(short = 'p', long = "pidfile", value_name = "PATH")]
        pidfile: PathBuf,
        /// Trace each step on stderr.
        #[arg(short, long)]
        verbose: bool,
    },
}

#[derive(Debug, Args)]
struct Start {
    /// Write the daemon's pid to this file, locked for its lifetime.
    #[arg(short = 'p', long = "pidfile", value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// Exclusive lockfile (default: the pidfile).
    #[arg(short = 'l', long = "lock", value_name = "PATH")]
    lock: Option<PathBuf>,
    /// Take no lock at all.
    #[arg(long = "no-lock", conflicts_with = "lock")]
    no_lock: bool,
    /// Working directory (default: / in the background, the current one with -f).
    #[arg(short = 'c', long = "chdir", value_name = "PATH")]
    chdir: Option<PathBuf>,
    /// File mode creation mask, in octal (default: 022 in the background, the current one with -f).
    #[arg(short = 'm', long = "umask", value_name = "MODE", value_parser = parse_umask)]
    umask: Option<u32>,
    /// Send stdout to this file (and stderr, unless -e: .stdout→.stderr, .out→.err, else the same).
    #[arg(short = 'o', long = "stdout", value_name = "PATH")]
    stdout: Option<PathBuf>,
    /// Send stderr to this file.
    #[arg(short = 'e', long = "stderr", value_name = "PATH")]
    stderr: Option<PathBuf>,
    /// Append to the output files instead of truncating them.
    #[arg(short = 'a', long = "append")]
    append: bool,
    /// Run as this user (name or uid); needs root.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,
    /// Run as this group (name or gid); needs root.
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    group: Option<String>,
    /// Stay in the foreground: no fork, no new session; exec in place.
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,
    /// Keep inherited fds open.
    #[arg(long = "no-close-fds")]
    no_close_fds: bool,
    /// Keep fd N open in the daemon (repeatable); LISTEN_FDS fds are kept without asking.
    #[arg(long = "keep-fd", value_name = "N")]
    keep_fd: Vec<i32>,
    /// How conjure learns the program is ready: exec, notify, fd:N, tcp:HOST:PORT, unix:PATH,
    /// file:PATH or cmd:COMMAND.
    #[arg(long = "ready-on", value_name = "SOURCE", default_value = "exec")]
    ready_on: Source,
    /// How the supervisor hears it: auto, pipe, notify, pidfile or fd:N.
    #[arg(long = "readiness", value_name = "SINK", default_value = "auto")]
    readiness: SinkChoice,
    /// Give up on readiness after this long and stop the program (0: wait forever).
    #[arg(long = "ready-timeout", value_name = "DUR", default_value = "90s", value_parser = conjure::parse_duration)]
    ready_timeout: Duration,
    /// Grace between TERM and KILL when stopping a program that did not become ready.
    #[arg(long = "kill-after", value_name = "DUR", default_value = "5s", value_parser = conjure::parse_duration)]
    kill_after: Duration,
    /// Stay resident as the program's parent: forward signals, reap, relay sd_notify (needs -f).
    #[arg(long = "supervise")]
    supervise: bool,
    /// Resident: forward signals to the program's process group, not just the program.
    #[arg(long = "signal-group")]
    signal_group: bool,
    /// Resident: forward signal FROM as signal TO (repeatable; names or numbers, e.g. TERM:QUIT).
    #[arg(long = "rewrite", value_name = "FROM:TO", value_parser = parse_rewrite)]
    rewrite: Vec<(i32, i32)>,
    /// Set an environment variable (repeatable).
    #[arg(short = 'E', long = "env", value_name = "NAME=VAL", value_parser = parse_env)]
    env: Vec<(OsString, OsString)>,
    /// Trace each step on stderr.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// The program and its arguments.
    #[arg(value_name = "PROGRAM", required = true, trailing_var_arg = true)]
    command: Vec<OsString>,
}

fn parse_umask(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("invalid umask `{text}`: expected an octal mode from 0 to 777"))
}

fn parse_env(text: &str) -> Result<(OsString, OsString), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("invalid environment assignment `{text}`: expected NAME=VALUE")),
    }
}

fn parse_signal(text: &str) -> Result<Signal, String> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("invalid signal `{text}`"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map_err(|_| format!("invalid signal `{text}`"))
}

fn parse_rewrite(text: &str) -> Result<(i32, i32), String> {
    let (from, to) = text
        .split_once(':')
        .ok_or_else(|| format!("invalid signal rewrite `{text}`: expected FROM:TO, like TERM:QUIT"))?;
    Ok((conjure::process::parse_signal(from)?, conjure::process::parse_signal(to)?))
}

fn init_tracing(verbose: bool) {
    let filter = match std::env::var("CONJURE_LOG") {
        Ok(f) if !f.is_empty() => tracing_subscriber::EnvFilter::new(f),
        _ if verbose => tracing_subscriber::EnvFilter::new("conjure=debug"),
        _ => return,
    };
    // A log line that cannot be written (stderr closed, a full disk) is dropped: logging must
    // never stop conjure, nor panic in its place.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .log_internal_errors(false)
        .init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other failure: clap's first line, without its "error: ".
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("conjure: {} (see `conjure --help`)", first.trim_start_matches("error: "));
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    let code = match cli.command {
        Some(Command::Status { pidfile, verbose }) => {
            init_tracing(verbose);
            let status = control::status(&pidfile);
            say(format_args!("{}: {status}", pidfile.display()));
            status.code()
        }
        Some(Command::Stop { pidfile, signal, timeout, verbose }) => {
            init_tracing(verbose);
            match control::stop(&pidfile, signal, timeout) {
                Ok(Stopped::NotRunning) => {
                    say(format_args!("{}: not running", pidfile.display()));
                    0
                }
                Ok(Stopped::Stopped { pid, killed }) => {
                    let how = if killed { " (killed after the timeout)" } else { "" };
                    say(format_args!("{}: stopped pid {pid}{how}", pidfile.display()));
                    0
                }
                Err(err) => report(&err),
            }
        }
        None => {
            init_tracing(cli.start.verbose);
            match start(cli.start) {
                Ok(Outcome::Ready { .. } | Outcome::Detached { .. }) => 0,
                Ok(Outcome::Exited(code)) => code,
                Ok(Outcome::Killed(signal)) => {
                    // Die of the same signal, so that our parent sees what the program's would
                    // have; PID 1 cannot, and says 128+N instead.
                    if std::process::id() != 1 {
                        let _ = conjure::process::die_of(signal);
                    }
                    128 + signal
                }
                Ok(_) => 0,
                Err(err) => report(&err),
            }
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// One line on stdout; a failed write is ignored (the exit code still says what happened).
fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Says why conjure failed, in one line (a failed write is ignored: there is nobody left to
/// tell), and the exit code. An interrupted start dies of the interrupting signal instead.
fn report(err: &DaemonizeError) -> i32 {
    let _ = writeln!(std::io::stderr(), "conjure: {err}");
    if let Some(signal) = err.signal() {
        if std::process::id() != 1 {
            let _ = conjure::process::die_of(signal);
        }
    }
    err.exit_code()
}

fn start(args: Start) -> Result<Outcome, DaemonizeError> {
    let mut config = DaemonConfig::new();
    config.append(args.append).foreground(args.foreground).close_fds(!args.no_close_fds).lock(!args.no_lock);
    if let Some(p) = args.pidfile {
        config.pidfile(p);
    }
    if let Some(d) = args.chdir {
        config.chdir(d);
    }
    if let Some(p) = args.lock {
        config.lockfile(p);
    }
    if let Some(m) = args.umask {
        config.umask(m);
    }
    if let Some(p) = args.stdout {
        config.stdout(p);
    }
    if let Some(p) = args.stderr {
        config.stderr(p);
    }
    if let Some(u) = args.user {
        config.user(u);
    }
    if let Some(g) = args.group {
        config.group(g);
    }
    for (k, v) in args.env {
        config.env(k, v);
    }
    for fd in args.keep_fd {
        config.keep_fd(fd);
    }
    let mut command = args.command.into_iter();
    let program = command.next().unwrap_or_default();
    let mut launcher = Launcher::new(config, program);
    launcher
        .args(command)
        .ready_on(args.ready_on)
        .readiness(args.readiness)
        .ready_timeout((!args.ready_timeout.is_zero()).then_some(args.ready_timeout))
        .kill_after(args.kill_after)
        .supervise(args.supervise)
        .signal_group(args.signal_group);
    for (from, to) in args.rewrite {
        launcher.rewrite(from, to);
    }
    launcher.run()
}
