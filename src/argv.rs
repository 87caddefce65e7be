//! The plain start command line, read without building clap's command.
//!
//! clap builds the whole command tree (every argument, its help text, the subcommands) before
//! it reads a single argument, and drops it after: about 220 k instructions, three quarters of
//! what the static launcher runs before its fork. Most launches are plain: options with their
//! values as separate arguments, `--`, the program. This reader takes exactly those and returns
//! the very [`Cli`] clap would, or `None` for anything else (help, version, subcommands,
//! `--opt=value`, `-abc` clusters, an option twice, conflicts, a value that does not parse or is
//! not UTF-8, …), which then goes to clap, so that clap's interface, help and errors stay
//! exactly what they were. The value parsers are the ones clap is given (`cli.rs`); the tests
//! below compare both readers on many command lines.

use std::ffi::OsString;
use std::str::FromStr as _;

use crate::cli::{Cli, Start, parse_env, parse_rewrite, parse_umask};

/// `Ok(cli)` when `args` (with `argv[0]`) is a start command line this reader fully
/// understands, exactly as clap would parse it; else `Err(args)`, untouched, for clap. The
/// program's arguments are moved into the `Cli`, not copied (100 KB of them cost a copy and an
/// allocation each).
pub fn parse(mut args: Vec<OsString>) -> Result<Cli, Vec<OsString>> {
    match read(&args) {
        Some((mut cli, at)) => {
            cli.start.command = args.split_off(at);
            Ok(cli)
        }
        None => Err(args),
    }
}

/// The options of a plain start line, and where the program starts in `args`; the program's
/// arguments are left to the caller.
fn read(args: &[OsString]) -> Option<(Cli, usize)> {
    // The library's defaults, which clap's attributes spell out (`cli.rs`; the tests compare
    // the two readers, defaults included).
    let mut start = Start {
        ready_timeout: conjure::DEFAULT_READY_TIMEOUT,
        kill_after: conjure::DEFAULT_KILL_AFTER,
        ..Start::default()
    };
    let mut verbose = false;
    let mut seen = Seen::default();
    let mut rest = args.get(1..)?.iter();
    loop {
        let arg = rest.next()?.to_str()?;
        if arg == "--" {
            break;
        }
        match arg {
            "-v" | "--verbose" => flag(&mut verbose, &mut seen.verbose)?,
            "-f" | "--foreground" => flag(&mut start.foreground, &mut seen.foreground)?,
            "-a" | "--append" => flag(&mut start.append, &mut seen.append)?,
            "--no-lock" => flag(&mut start.no_lock, &mut seen.no_lock)?,
            "--no-close-fds" => flag(&mut start.no_close_fds, &mut seen.no_close_fds)?,
            "--supervise" => flag(&mut start.supervise, &mut seen.supervise)?,
            "--signal-group" => flag(&mut start.signal_group, &mut seen.signal_group)?,
            "-p" | "--pidfile" => once(&mut start.pidfile, value(&mut rest)?.into())?,
            "-l" | "--lock" => once(&mut start.lock, value(&mut rest)?.into())?,
            "-c" | "--chdir" => once(&mut start.chdir, value(&mut rest)?.into())?,
            "-o" | "--stdout" => once(&mut start.stdout, value(&mut rest)?.into())?,
            "-e" | "--stderr" => once(&mut start.stderr, value(&mut rest)?.into())?,
            "-u" | "--user" => once(&mut start.user, value(&mut rest)?.into())?,
            "-g" | "--group" => once(&mut start.group, value(&mut rest)?.into())?,
            "-m" | "--umask" => once(&mut start.umask, parse_umask(value(&mut rest)?).ok()?)?,
            "-E" | "--env" => start.env.push(parse_env(value(&mut rest)?).ok()?),
            "--keep-fd" => start.keep_fd.push(i32::try_from(value(&mut rest)?.parse::<i64>().ok()?).ok()?),
            "--rewrite" => start.rewrite.push(parse_rewrite(value(&mut rest)?).ok()?),
            "--watchdog" => once(&mut start.watchdog, conjure::readiness::Source::from_str(value(&mut rest)?).ok()?)?,
            "--watchdog-timeout" => {
                once(&mut start.watchdog_timeout, conjure::parse_duration(value(&mut rest)?).ok()?)?
            }
            "--ready-on" => {
                seen.ready_on = once_more(seen.ready_on)?;
                start.ready_on = conjure::readiness::Source::from_str(value(&mut rest)?).ok()?;
            }
            "--readiness" => {
                seen.readiness = once_more(seen.readiness)?;
                start.readiness = conjure::readiness::SinkChoice::from_str(value(&mut rest)?).ok()?;
            }
            "--ready-timeout" => {
                seen.ready_timeout = once_more(seen.ready_timeout)?;
                start.ready_timeout = conjure::parse_duration(value(&mut rest)?).ok()?;
            }
            "--kill-after" => {
                seen.kill_after = once_more(seen.kill_after)?;
                start.kill_after = conjure::parse_duration(value(&mut rest)?).ok()?;
            }
            _ => return None,
        }
    }
    // `--lock` and `--no-lock` conflict, `--watchdog-timeout` requires `--watchdog`: clap says
    // so.
    if (start.no_lock && start.lock.is_some()) || (start.watchdog_timeout.is_some() && start.watchdog.is_none()) {
        return None;
    }
    // The program and its arguments: whatever follows `--`, at least the program.
    let at = args.len() - rest.len();
    if at == args.len() {
        return None;
    }
    Some((Cli { verbose, command: None, start }, at))
}

/// Flags and defaulted options already given: clap refuses them twice.
#[derive(Default)]
struct Seen {
    verbose: bool,
    foreground: bool,
    append: bool,
    no_lock: bool,
    no_close_fds: bool,
    supervise: bool,
    signal_group: bool,
    ready_on: bool,
    readiness: bool,
    ready_timeout: bool,
    kill_after: bool,
}

/// Sets a flag, the first time only.
fn flag(value: &mut bool, seen: &mut bool) -> Option<()> {
    *seen = once_more(*seen)?;
    *value = true;
    Some(())
}

/// `Some(true)` unless it was seen already.
fn once_more(seen: bool) -> Option<bool> {
    (!seen).then_some(true)
}

/// Sets an option that takes one value, the first time only.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// The next argument as an option's value: UTF-8, not empty, and not something clap would take
/// for an option (a leading `-`).
fn value<'a>(rest: &mut std::slice::Iter<'a, OsString>) -> Option<&'a str> {
    rest.next()?.to_str().filter(|v| !v.is_empty() && !v.starts_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// What clap makes of `args`, as text (every field's `Debug`), or its error's kind.
    fn by_clap(args: &[OsString]) -> Result<String, clap::error::ErrorKind> {
        crate::Cli::try_parse_from(args).map(|cli| format!("{cli:?}")).map_err(|e| e.kind())
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        std::iter::once("conjure").chain(args.iter().copied()).map(OsString::from).collect()
    }

    /// Checks one command line: whatever the fast reader accepts, clap parses to the same.
    /// Returns whether the fast reader accepted it.
    fn agree(args: &[OsString]) -> bool {
        match parse(args.to_vec()).ok() {
            Some(fast) => {
                assert_eq!(by_clap(args), Ok(format!("{fast:?}")), "the readers differ on {args:?}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn plain_start_lines_are_read_as_clap_reads_them() {
        for line in [
            &["--", "/bin/true"][..],
            &["-f", "--", "sleep", "1"],
            &["-p", "/run/x.pid", "-o", "/var/log/x.log", "-u", "nobody", "--", "prog", "--flag", "-x"],
            &["--ready-on", "tcp:127.0.0.1:80", "--ready-timeout", "30s", "--", "prog"],
            &["-E", "A=1", "-E", "B", "--keep-fd", "3", "--keep-fd", "+4", "--", "p"],
            &["--rewrite", "TERM:QUIT", "--rewrite", "HUP:USR1", "-f", "--supervise", "--", "p"],
            &["-v", "-m", "027", "-c", "/tmp", "-a", "-e", "/tmp/e", "--readiness", "notify", "--", "p"],
            &["--no-lock", "--no-close-fds", "--signal-group", "--kill-after", "0", "--", "p", "--"],
            &["-f", "--watchdog", "tcp:127.0.0.1:80", "--watchdog-timeout", "3s", "--", "p"],
        ] {
            assert!(agree(&os(line)), "the fast reader refused {line:?}");
        }
    }

    #[test]
    fn anything_else_goes_to_clap() {
        for line in [
            &[][..],
            &["--help"],
            &["-h"],
            &["-V"],
            &["--version"],
            &["stop", "-p", "x"],
            &["-v", "status", "-p", "x"],
            &["prog"],
            &["-f", "prog"],
            &["--"],
            &["-f", "-f", "--", "p"],
            &["-p", "a", "-p", "b", "--", "p"],
            &["-l", "a", "--no-lock", "--", "p"],
            &["--pidfile=x", "--", "p"],
            &["-fa", "--", "p"],
            &["-p", "--", "p"],
            &["-p", "", "--", "p"],
            &["-m", "999", "--", "p"],
            &["--keep-fd", "x", "--", "p"],
            &["--keep-fd", "99999999999", "--", "p"],
            &["--ready-on", "nonsense", "--", "p"],
            &["--ready-timeout", "forever", "--", "p"],
            &["--pidfle", "x", "--", "p"],
            &["-E", "=x", "--", "p"],
            &["--watchdog-timeout", "3s", "--", "p"],
            &["--watchdog", "tcp:a:1", "--watchdog", "tcp:a:1", "--", "p"],
        ] {
            assert!(parse(os(line)).is_err(), "the fast reader took {line:?}");
        }
    }

    /// A small deterministic generator (xorshift), so the test needs no crate and repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    #[test]
    fn both_readers_agree_on_many_generated_command_lines() {
        const WORDS: &[&str] = &[
            "-v",
            "--verbose",
            "-f",
            "--foreground",
            "-a",
            "--append",
            "--no-lock",
            "--no-close-fds",
            "--supervise",
            "--signal-group",
            "-p",
            "--pidfile",
            "-l",
            "--lock",
            "-c",
            "--chdir",
            "-o",
            "--stdout",
            "-e",
            "--stderr",
            "-u",
            "--user",
            "-g",
            "--group",
            "-m",
            "--umask",
            "-E",
            "--env",
            "--keep-fd",
            "--rewrite",
            "--ready-on",
            "--readiness",
            "--ready-timeout",
            "--kill-after",
            "--",
            "--",
            "stop",
            "status",
            "help",
            "-h",
            "--help",
            "-V",
            "-x",
            "--bogus",
            "-pX",
            "--pidfile=/x",
            "-fv",
        ];
        const VALUES: &[&str] = &[
            "/tmp/a",
            "rel/b",
            "nobody",
            "0",
            "3",
            "-1",
            "+7",
            "022",
            "777",
            "778",
            "A=1",
            "A",
            "=x",
            "B=",
            "TERM:QUIT",
            "INT",
            "RTMIN+2:TERM",
            "exec",
            "notify",
            "fd:3",
            "tcp:127.0.0.1:80",
            "unix:/s",
            "file:/f",
            "cmd:true",
            "bad:x",
            "auto",
            "pipe",
            "pidfile",
            "1s",
            "500ms",
            "2m",
            "10",
            "forever",
            "",
            "-",
            "--",
            "x y",
            "é",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        const LINES: usize = 20_000;
        for _ in 0..LINES {
            let mut line: Vec<&str> = Vec::new();
            for _ in 0..(rng.next() % 9) {
                line.push(rng.pick(WORDS));
                if !rng.next().is_multiple_of(3) {
                    line.push(rng.pick(VALUES));
                }
            }
            if !rng.next().is_multiple_of(4) {
                line.push("--");
                for _ in 0..(rng.next() % 3) + 1 {
                    line.push(rng.pick(&["prog", "-x", "--", "stop", "a b"]));
                }
            }
            if agree(&os(&line)) {
                accepted += 1;
            }
        }
        // The comparison means something only if the fast reader took a fair share.
        assert!(accepted > LINES / 50, "the fast reader took only {accepted} of {LINES} lines");
    }

    #[test]
    fn non_utf8_values_go_to_clap_but_programs_may_be_anything() {
        use std::os::unix::ffi::OsStringExt as _;
        let bad = OsString::from_vec(vec![b'/', 0xff]);
        let mut line = os(&["-p"]);
        line.push(bad.clone());
        line.extend(os(&["--", "p"]).into_iter().skip(1));
        assert_eq!(parse(line.clone()).err(), Some(line));
        let mut line = os(&["--"]);
        line.push(bad);
        assert!(agree(&line));
    }
}
