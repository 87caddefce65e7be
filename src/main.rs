//! The `conjure` command: parse arguments, set up tracing, run the library, map the outcome to
//! an exit code. The clap definition is in `cli.rs`, stderr and tracing in `log.rs`; everything
//! else lives in the library.

mod argv;
mod cli;
mod log;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, Start};
use conjure::control::{self, Stopped};
use conjure::{DaemonConfig, DaemonizeError, Launcher, Outcome, exit};
use tracing::Level;

fn main() -> ExitCode {
    let journal = log::stderr_is_journal();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // A plain start line is read without clap; anything else goes to clap (see argv.rs).
    let parsed = argv::parse(args).or_else(|args| Cli::try_parse_from(subcommand_first(args)));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            log::line(journal, Level::ERROR, format_args!("conjure: {} (see `conjure --help`)", usage_error(&e)));
            return ExitCode::from(exit::USAGE);
        }
    };
    log::init(cli.verbose, journal);
    let code = match cli.command {
        Some(Command::Status { pidfile }) => {
            let status = control::status(&pidfile);
            say(format_args!("{}: {status}", pidfile.display()));
            status.code()
        }
        Some(Command::Stop { pidfile, signal, timeout }) => match control::stop(&pidfile, signal, timeout) {
            Ok(Stopped::NotRunning) => {
                say(format_args!("{}: not running", pidfile.display()));
                0
            }
            Ok(Stopped::Stopped { pid, killed }) => {
                let how = if killed { " (killed after the timeout)" } else { "" };
                say(format_args!("{}: stopped pid {pid}{how}", pidfile.display()));
                0
            }
            Err(err) => report(journal, &err),
        },
        None => {
            // One updating status line while a launch waits, for a person at a terminal only.
            let progress = !cli.verbose && !journal && std::io::stderr().is_terminal();
            match start(cli.start, progress) {
                Ok(Outcome::Ready { .. } | Outcome::Detached { .. }) => 0,
                Ok(Outcome::Exited(code)) => code,
                Ok(Outcome::Killed(signal)) => end_as(signal),
                Ok(_) => 0,
                Err(err) => report(journal, &err),
            }
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// clap's usage error on one line, like every other failure, with all its content: the
/// message, the missing arguments it lists and its tips ("a similar argument exists"), without
/// the usage block and the "For more information" line (`--help` is named by the caller).
/// Lines that end in `:` run on into the next with a space; other lines are joined by `; `.
fn usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut line = String::new();
    for part in text.lines().map(str::trim) {
        if part.starts_with("Usage:") || part.starts_with("For more information") {
            break;
        }
        if part.is_empty() {
            continue;
        }
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part.strip_prefix("error: ").unwrap_or(part));
    }
    if line.is_empty() { "invalid arguments".to_string() } else { line }
}

/// `-v` is global, but clap counts a flag before a subcommand's name as an argument of the
/// start command, after which (`args_conflicts_with_subcommands`) `stop` would be taken for the
/// program to run. So global flags in front of a subcommand's name move behind it:
/// `conjure -v stop -p P` parses as `conjure stop -v -p P`. Nothing after the name moves.
fn subcommand_first(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let is_global = |a: &std::ffi::OsString| a == "-v" || a == "--verbose";
    let globals = args.iter().skip(1).take_while(|a| is_global(a)).count();
    let Some(name) = args.get(1 + globals).filter(|_| globals > 0) else {
        return args;
    };
    let is_subcommand = name.to_str().is_some_and(<Command as clap::Subcommand>::has_subcommand);
    if is_subcommand {
        args[1..=1 + globals].rotate_right(1);
    }
    args
}

/// The one line of a failure, on stderr; returns its exit code. An interrupted start ends as
/// the interrupting signal would have ended it ([`end_as`]).
fn report(journal: bool, err: &DaemonizeError) -> i32 {
    log::line(journal, Level::ERROR, format_args!("conjure: {err}"));
    match err.signal() {
        Some(signal) => end_as(signal),
        None => err.exit_code().into(),
    }
}

/// Dies of `signal`, so that conjure's parent sees the death it would have seen without
/// conjure (the program's, or the interruption's); PID 1 cannot, and returns 128+N, what a
/// shell reports for it, as its exit code.
fn end_as(signal: i32) -> i32 {
    if std::process::id() != 1 {
        let _ = conjure::process::die_of(signal);
    }
    128 + signal
}

/// A line of `stop`'s or `status`'s answer on stdout. A reader that went away does not change
/// the exit code, which is the answer that counts.
fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn start(args: Start, progress: bool) -> Result<Outcome, DaemonizeError> {
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
        .signal_group(args.signal_group)
        .watchdog(args.watchdog)
        .watchdog_timeout(args.watchdog_timeout.filter(|t| !t.is_zero()))
        .progress(progress);
    for (from, to) in args.rewrite {
        launcher.rewrite(from, to);
    }
    launcher.run()
}
