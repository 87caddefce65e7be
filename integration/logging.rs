//! conjure's own lines: syslog priority prefixes when stderr is the journal, the `CONJURE_LOG`
//! filter, and that a stderr or stdout that cannot be written never changes the exit code.
//!
//! The journal is faked the way systemd announces it: `JOURNAL_STREAM` holds the device and
//! inode of the file the command's stderr goes to ([`TestCommand::stderr_is_journal`]).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use crate::support::*;

/// `conjure -v -p PIDFILE -- sleep 60`, which traces several steps and succeeds.
fn traced_start(s: &Scratch, name: &str) -> (TestCommand, std::path::PathBuf) {
    let pidfile = s.join(name);
    let c = TestCommand::conjure(argv!["-v", "-p", &pidfile, "--", "sleep", "60"]);
    (c, pidfile)
}

#[test]
fn under_the_journal_every_line_carries_its_syslog_priority() {
    let s = Scratch::new();
    let (mut c, pidfile) = traced_start(&s, "d.pid");
    let out = c.stderr_is_journal().expect_success();
    let _d = Daemon::from_pidfile(&pidfile);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(lines.len() >= 3, "expected trace lines\n{out}");
    for l in &lines {
        assert!(l.starts_with("<7>") && l.contains("DEBUG"), "a debug trace without the <7> prefix: {l:?}\n{out}");
    }

    let missing = s.join("missing/d.pid");
    let mut c = TestCommand::conjure(argv!["-p", &missing, "--", "sleep", "60"]);
    let out = c.stderr_is_journal().expect_code(73);
    assert!(out.one_line_of_stderr().starts_with("<3>conjure: "), "a failure is an error (<3>)\n{out}");

    let mut c = TestCommand::conjure(argv!["--pidfle", "x.pid", "--", "sleep", "1"]);
    let out = c.stderr_is_journal().expect_code(64);
    assert!(out.one_line_of_stderr().starts_with("<3>conjure: unexpected argument"), "{out}");

    let (mut c, pidfile) = traced_start(&s, "e.pid");
    let out = c.env("CONJURE_LOG", "conjure=loud").stderr_is_journal().expect_success();
    let _d = Daemon::from_pidfile(&pidfile);
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("<4>conjure: ignoring CONJURE_LOG"), "a bad filter is a warning (<4>)\n{out}");
}

#[test]
fn a_journal_stream_that_is_not_stderr_adds_no_prefix() {
    // Inherited from a unit, then stderr redirected elsewhere: JOURNAL_STREAM names another file.
    let s = Scratch::new();
    let elsewhere = s.join("journal-stand-in");
    std::fs::write(&elsewhere, "").unwrap();
    let meta = std::fs::metadata(&elsewhere).unwrap();
    let (mut c, pidfile) = traced_start(&s, "d.pid");
    let out = c.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())).expect_success();
    let _d = Daemon::from_pidfile(&pidfile);
    assert!(out.stderr.lines().count() >= 3, "expected trace lines\n{out}");
    assert!(!out.stderr.lines().any(|l| l.starts_with('<')), "a priority prefix outside the journal\n{out}");
}

#[test]
fn conjure_log_takes_target_directives() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let mut c = TestCommand::conjure(argv!["-p", &pidfile, "--", "sleep", "60"]);
    let out = c.env("CONJURE_LOG", "warn,conjure::daemon::launcher=debug").expect_success();
    let _d = Daemon::from_pidfile(&pidfile);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(!lines.is_empty(), "the launcher's debug traces are missing\n{out}");
    for l in lines {
        assert!(
            l.contains("conjure::daemon::launcher:"),
            "a trace from a target the filter did not ask for: {l:?}\n{out}"
        );
    }

    let pidfile = s.join("e.pid");
    let mut c = TestCommand::conjure(argv!["-p", &pidfile, "--", "sleep", "60"]);
    let out = c.env("CONJURE_LOG", "conjure=info").expect_success();
    let _d = Daemon::from_pidfile(&pidfile);
    assert!(!out.stderr.contains("DEBUG"), "CONJURE_LOG=conjure=info let debug traces through\n{out}");
}

/// Runs `conjure ARGS` with stdout and/or stderr on `/dev/full` (every write fails with ENOSPC)
/// and returns its exit code.
fn with_full(args: Vec<std::ffi::OsString>, stdout_full: bool, stderr_full: bool) -> Option<i32> {
    let full = || File::options().write(true).open("/dev/full").expect("open /dev/full");
    let mut cmd = Command::new(conjure_bin());
    cmd.args(&args).env_remove("CONJURE_LOG").env_remove("JOURNAL_STREAM").stdin(Stdio::null());
    cmd.stdout(if stdout_full { Stdio::from(full()) } else { Stdio::null() });
    cmd.stderr(if stderr_full { Stdio::from(full()) } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn conjure");
    let status = wait_until(PATIENCE, "conjure to exit", || child.try_wait().expect("try_wait"));
    status.code()
}

#[test]
fn a_stderr_or_stdout_that_cannot_be_written_does_not_change_the_exit_code() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    // Traces that cannot be written: the start still succeeds.
    assert_eq!(with_full(argv!["-v", "-p", &pidfile, "--", "sleep", "60"], false, true), Some(0));
    let d = Daemon::from_pidfile(&pidfile);
    assert!(d.proc().alive(), "the daemon is not running");
    // A failure whose line cannot be written keeps its code.
    assert_eq!(with_full(argv!["-p", s.join("missing/d.pid"), "--", "sleep", "60"], false, true), Some(73));
    // `status` and `stop` answer with their codes even when their line is lost.
    assert_eq!(with_full(argv!["status", "-p", &pidfile], true, true), Some(0));
    assert_eq!(with_full(argv!["-v", "stop", "-p", &pidfile], true, true), Some(0));
    wait_dead(d.pid);
    assert_eq!(with_full(argv!["status", "-p", &pidfile], true, false), Some(3));
}
