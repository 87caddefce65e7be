//! How `conjure` fails: the documented exit code, exactly one line on stderr naming the path
//! (or flag) and the OS error, and nothing left behind: no process, no pidfile.
//!
//! "No process" is checked through `/proc`: nothing may still refer to the test's scratch
//! directory (every start names its pidfile there). A child that failed its exec may still be
//! on its way out when the launcher reports, so that check waits, with a deadline, for the
//! process to go by itself; nothing is killed before it.

use std::ffi::OsString;
use std::path::Path;

use crate::support::*;

/// Users the permission tests run as: ids nothing else on the machine uses, so that no other
/// process counts against `RLIMIT_NPROC` or shares files with them.
const UNPRIVILEGED: u32 = 64999;
const UNPRIVILEGED_NPROC: u32 = 64998;

/// Asserts a clean failure: `code`, one stderr line starting `conjure: ` that contains every
/// needle, no pidfile, and no process left.
fn assert_failed_cleanly(out: &Output, code: i32, needles: &[&str], s: &Scratch, pidfile: &Path) {
    out.assert_code(code);
    let line = out.one_line_of_stderr();
    assert!(line.starts_with("conjure: "), "the message should say who speaks\n{out}");
    for n in needles {
        assert!(line.contains(n), "the message should contain {n:?}\n{out}");
    }
    assert!(std::fs::symlink_metadata(pidfile).is_err(), "a pidfile was left behind at {}\n{out}", pidfile.display());
    s.wait_no_process_left();
}

fn conjure(args: Vec<OsString>) -> Output {
    TestCommand::conjure(args).run()
}

#[test]
fn program_not_found_exits_66() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let missing = s.join("no-such-program");
    let out = conjure(argv!["-p", &pidfile, "--", &missing]);
    assert_failed_cleanly(&out, 66, &[&missing.display().to_string(), "No such file or directory"], &s, &pidfile);
}

#[test]
fn program_not_found_on_path_exits_66() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = conjure(argv!["-p", &pidfile, "--", "conjure-no-such-program"]);
    assert_failed_cleanly(&out, 66, &["`conjure-no-such-program`", "No such file or directory"], &s, &pidfile);
}

#[test]
fn program_without_execute_permission_exits_66() {
    let s = Scratch::new();
    let (pidfile, prog) = (s.join("d.pid"), s.join("not-executable"));
    std::fs::write(&prog, "#!/bin/sh\nsleep 60\n").unwrap();
    set_mode(&prog, 0o644);
    let out = conjure(argv!["-p", &pidfile, "--", &prog]);
    assert_failed_cleanly(&out, 66, &[&prog.display().to_string(), "Permission denied"], &s, &pidfile);
}

#[test]
fn exec_of_a_file_in_no_executable_format_exits_71() {
    let s = Scratch::new();
    let (pidfile, prog) = (s.join("d.pid"), s.join("garbage"));
    std::fs::write(&prog, b"\x01\x02\x03\x04 not a program\n").unwrap();
    set_mode(&prog, 0o755);
    let out = conjure(argv!["-p", &pidfile, "--", &prog]);
    assert_failed_cleanly(&out, 71, &[&prog.display().to_string(), "Exec format error"], &s, &pidfile);
}

#[test]
fn pidfile_in_a_missing_directory_exits_73() {
    let s = Scratch::new();
    let pidfile = s.join("missing/d.pid");
    let out = conjure(argv!["-p", &pidfile, "--", "sleep", "60"]);
    assert_failed_cleanly(&out, 73, &[&pidfile.display().to_string(), "No such file or directory"], &s, &pidfile);
}

#[test]
fn pidfile_in_an_unwritable_directory_exits_73() {
    let s = Scratch::new();
    let dir = s.join("readonly");
    std::fs::create_dir(&dir).unwrap();
    if !is_root() {
        set_mode(&dir, 0o555);
    }
    let pidfile = dir.join("d.pid");
    let out = as_unprivileged(UNPRIVILEGED, &conjure_bin(), argv!["-p", &pidfile, "--", "sleep", "60"]).run();
    assert_failed_cleanly(&out, 73, &[&pidfile.display().to_string(), "Permission denied"], &s, &pidfile);
}

#[test]
fn symlinked_pidfile_is_refused_with_73_and_its_target_untouched() {
    let s = Scratch::new();
    let (link, target) = (s.join("d.pid"), s.join("precious"));
    std::fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = conjure(argv!["-p", &link, "--", "sleep", "60"]);
    out.assert_code(73);
    let line = out.one_line_of_stderr();
    assert!(line.contains(&link.display().to_string()) && line.contains("symbolic link"), "{out}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n", "the symlink's target was written");
    assert_eq!(std::fs::read_link(&link).unwrap(), target, "the symlink was replaced");
    assert!(!lock_is_held(&target));
    s.wait_no_process_left();
}

#[test]
fn dangling_symlinked_pidfile_is_refused_and_creates_nothing() {
    let s = Scratch::new();
    let (link, target) = (s.join("d.pid"), s.join("created-through-the-link"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = conjure(argv!["-p", &link, "--", "sleep", "60"]);
    out.assert_code(73);
    assert!(out.one_line_of_stderr().contains(&link.display().to_string()), "{out}");
    assert!(!target.exists(), "the pidfile was created through the symlink");
}

#[test]
fn lockfile_in_a_missing_directory_exits_73() {
    let s = Scratch::new();
    let (pidfile, lock) = (s.join("d.pid"), s.join("missing/d.lock"));
    let out = conjure(argv!["-p", &pidfile, "-l", &lock, "--", "sleep", "60"]);
    assert_failed_cleanly(&out, 73, &[&lock.display().to_string(), "No such file or directory"], &s, &pidfile);
}

#[test]
fn output_file_in_a_missing_directory_exits_73() {
    let s = Scratch::new();
    let (pidfile, log) = (s.join("d.pid"), s.join("missing/app.log"));
    let out = conjure(argv!["-p", &pidfile, "-o", &log, "--", "sleep", "60"]);
    assert_failed_cleanly(&out, 73, &[&log.display().to_string(), "No such file or directory"], &s, &pidfile);
}

#[test]
fn missing_working_directory_exits_71() {
    let s = Scratch::new();
    let (pidfile, dir) = (s.join("d.pid"), s.join("missing"));
    let out = conjure(argv!["-p", &pidfile, "-c", &dir, "--", "sleep", "60"]);
    assert_failed_cleanly(&out, 71, &[&dir.display().to_string(), "No such file or directory"], &s, &pidfile);
}

#[test]
fn pidfile_that_is_also_stdout_exits_64() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = conjure(argv!["-p", &pidfile, "-o", &pidfile, "--", "sleep", "60"]);
    assert_failed_cleanly(&out, 64, &[&pidfile.display().to_string(), "pidfile and stdout"], &s, &pidfile);
}

#[test]
fn unknown_user_exits_67() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = conjure(argv!["-u", "conjure-no-such-user", "-p", &pidfile, "--", "sleep", "60"]);
    assert_failed_cleanly(&out, 67, &["unknown user `conjure-no-such-user`"], &s, &pidfile);
}

#[test]
fn unknown_group_exits_67() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = conjure(argv!["-g", "conjure-no-such-group", "-p", &pidfile, "--", "sleep", "60"]);
    assert_failed_cleanly(&out, 67, &["unknown group `conjure-no-such-group`"], &s, &pidfile);
}

#[test]
fn user_flag_without_root_exits_77() {
    let s = Scratch::new();
    let dir = s.join("rw");
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o777);
    let pidfile = dir.join("d.pid");
    let out =
        as_unprivileged(UNPRIVILEGED, &conjure_bin(), argv!["-u", "root", "-p", &pidfile, "--", "sleep", "60"]).run();
    assert_failed_cleanly(&out, 77, &["only root can change identity"], &s, &pidfile);
}

#[test]
fn keep_fd_that_is_not_open_exits_64() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = conjure(argv!["--keep-fd", "7", "-p", &pidfile, "--", "sleep", "60"]);
    assert_failed_cleanly(&out, 64, &["cannot keep fd 7: it is not open"], &s, &pidfile);
}

#[test]
fn fork_failure_exits_71_and_leaves_no_pidfile() {
    // RLIMIT_NPROC of 1 for a user that already runs this one process: fork fails with EAGAIN.
    // Root ignores the limit, so as root conjure runs as an otherwise unused uid.
    let s = Scratch::new();
    let dir = s.join("rw");
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o777);
    let pidfile = dir.join("d.pid");
    let inner = as_unprivileged(UNPRIVILEGED_NPROC, &conjure_bin(), argv!["-p", &pidfile, "--", "sleep", "60"]);
    let mut c = TestCommand::new("prlimit");
    c.args(argv!["--nproc=1:1", "--"]).args(inner.argv());
    let out = c.run();
    assert_failed_cleanly(&out, 71, &["cannot fork"], &s, &pidfile);
}

#[test]
fn bad_umask_is_a_usage_error_64() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = conjure(argv!["-m", "888", "-p", &pidfile, "--", "sleep", "60"]);
    out.assert_code(64);
    let line = out.one_line_of_stderr();
    assert!(line.starts_with("conjure: ") && line.contains("888") && line.contains("umask"), "{out}");
    assert!(!pidfile.exists());
    assert!(s.processes().is_empty());
}

#[test]
fn usage_errors_exit_64() {
    for args in [
        argv![],
        argv!["-p"],
        argv!["-E", "=VALUE", "--", "sleep", "1"],
        argv!["-E", "=x", "--", "sleep", "1"],
        argv!["-l", "/tmp/x.lock", "--no-lock", "--", "sleep", "1"],
        argv!["--keep-fd", "three", "--", "sleep", "1"],
        argv!["stop"],
        argv!["stop", "-p", "/tmp/x.pid", "--signal", "NOPE"],
        argv!["stop", "-p", "/tmp/x.pid", "--timeout", "soon"],
        argv!["status"],
    ] {
        let out = TestCommand::conjure(args).run();
        out.assert_code(64);
        let line = out.one_line_of_stderr();
        assert!(line.starts_with("conjure: ") && line.ends_with("(see `conjure --help`)"), "{out}");
    }
}

#[test]
fn unknown_flag_is_a_usage_error_not_a_program_name() {
    let out = TestCommand::conjure(argv!["--pidfle", "/tmp/x.pid", "--", "sleep", "1"]).run();
    out.assert_code(64);
    assert!(out.stderr.contains("--pidfle"), "{out}");
}

/// Asserts a usage error: 64, and one line that says who speaks, holds every needle and
/// points at `--help`.
fn assert_usage_error(args: Vec<OsString>, needles: &[&str]) {
    let out = TestCommand::conjure(args).run();
    out.assert_code(64);
    let line = out.one_line_of_stderr();
    assert!(line.starts_with("conjure: ") && line.ends_with("(see `conjure --help`)"), "{out}");
    for n in needles {
        assert!(line.contains(n), "the usage error should contain {n:?}\n{out}");
    }
}

#[test]
fn usage_error_for_a_missing_program_names_it() {
    assert_usage_error(argv!["-p", "x.pid"], &["required arguments were not provided: <PROGRAM>"]);
}

#[test]
fn usage_error_for_a_subcommand_without_its_pidfile_names_the_flag() {
    assert_usage_error(argv!["stop"], &["required arguments were not provided: --pidfile <PATH>"]);
    assert_usage_error(argv!["status"], &["--pidfile <PATH>"]);
}

#[test]
fn usage_error_for_a_misspelt_flag_keeps_claps_suggestion() {
    assert_usage_error(
        argv!["--pidfle", "x.pid", "--", "sleep", "1"],
        &["unexpected argument '--pidfle' found", "a similar argument exists: '--pidfile'"],
    );
    assert_usage_error(argv!["stop", "--sigal", "TERM", "-p", "x.pid"], &["a similar argument exists: '--signal'"]);
}

#[test]
fn usage_error_for_a_bad_value_names_the_flag_and_why() {
    assert_usage_error(
        argv!["stop", "-p", "x.pid", "--signal", "NOPE"],
        &["invalid value 'NOPE' for '--signal <SIG>'", "invalid signal `NOPE`"],
    );
}

#[test]
fn verbose_before_a_subcommand_runs_the_subcommand_with_tracing() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    TestCommand::conjure(argv!["-p", &pidfile, "--", testprog(), "sleep", "600"]).expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    assert!(daemon.proc().alive());

    let out = TestCommand::conjure(argv!["-v", "status", "-p", &pidfile]).expect_success();
    assert!(out.stdout.contains("running"), "{out}");
    let out = TestCommand::conjure(argv!["-v", "stop", "-p", &pidfile]).expect_success();
    assert!(out.stdout.contains(&format!("stopped pid {}", daemon.pid)), "{out}");
    assert!(out.stderr.contains("DEBUG conjure::daemon::control"), "-v before `stop` did not turn tracing on\n{out}");
    wait_dead(daemon.pid);
    // After the name, as before.
    let out = TestCommand::conjure(argv!["status", "-p", &pidfile, "--verbose"]).expect_code(3);
    assert!(out.stdout.contains("not running"), "{out}");
}

#[test]
fn a_program_named_like_a_subcommand_still_runs_after_options() {
    // Only global flags move behind a subcommand's name: after a start option, `stop` is the
    // program, as it always was.
    let out = TestCommand::conjure(argv!["-f", "-v", "stop"]).expect_code(66);
    assert!(out.stderr.contains("cannot execute `stop`"), "{out}");
}

#[test]
fn program_arguments_that_look_like_flags_go_to_the_program() {
    let out = TestCommand::conjure(argv!["-f", testprog(), "output", "-x", "1"]).expect_success();
    assert_eq!(out.stdout, "-x out 1\n");
    let out = TestCommand::conjure(argv!["-f", "--", testprog(), "output", "--y", "1"]).expect_success();
    assert_eq!(out.stdout, "--y out 1\n");
}

#[test]
fn help_lists_the_exit_codes_and_examples() {
    let out = TestCommand::conjure(argv!["--help"]).expect_success();
    for code in ["64", "66", "67", "69", "70", "71", "73", "75", "77"] {
        assert!(
            out.stdout.lines().any(|l| l.trim_start().starts_with(code)),
            "--help does not list exit code {code}\n{out}"
        );
    }
    for needle in ["Type=forking", "conjure stop", "conjure status", "CONJURE_LOG"] {
        assert!(out.stdout.contains(needle), "--help does not mention {needle}\n{out}");
    }
}

/// Starts `sh -c script` with `flags`, waiting for a port nothing listens on (so the program
/// ends before it is ready), and returns what conjure did.
fn never_ready(s: &Scratch, flags: Vec<OsString>, script: &str) -> Output {
    let mut args = argv!["-p", s.join("d.pid")];
    args.extend(flags);
    args.extend(argv!["--ready-on", "tcp:127.0.0.1:1", "--", "sh", "-c", script]);
    TestCommand::conjure(args).run()
}

#[test]
fn a_program_that_dies_before_it_is_ready_shows_what_it_last_wrote() {
    let s = Scratch::new();
    let log = s.join("app.log");
    std::fs::write(&log, "from an earlier run\n").unwrap();
    let script = "for i in 1 2 3 4 5 6 7; do echo line $i; done; echo 'fatal: cannot bind 0.0.0.0:80' >&2; exit 3";
    let out = never_ready(&s, argv!["-a", "-o", &log], script);
    out.assert_code(70);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let head =
        format!("conjure: `sh` exited with status 3 before it was ready; its last output, in `{}`:", log.display());
    assert_eq!(lines.first().copied(), Some(head.as_str()), "{out}");
    assert_eq!(
        &lines[1..],
        ["  | line 4", "  | line 5", "  | line 6", "  | line 7", "  | fatal: cannot bind 0.0.0.0:80"]
    );
    s.wait_no_process_left();
}

#[test]
fn the_output_shown_is_this_runs_only_cut_and_cleaned() {
    let s = Scratch::new();
    let log = s.join("app.log");
    std::fs::write(&log, "from an earlier run\n").unwrap();
    let script = "printf 'x%.0s' $(seq 1 300); printf '\\033[31m red\\n'; exit 4";
    let out = never_ready(&s, argv!["-a", "-o", &log], script);
    out.assert_code(70);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "only this run's one line is shown\n{out}");
    let shown = lines[1].strip_prefix("  | ").expect("marked");
    assert_eq!(shown.chars().count(), 201, "cut at 200 characters and an ellipsis: {shown:?}");
    assert!(shown.ends_with('…') && !shown.contains('\x1b'), "{shown:?}");
}

#[test]
fn a_program_that_dies_before_it_is_ready_without_output_says_where_output_went() {
    let s = Scratch::new();
    let out = never_ready(&s, argv![], "exit 3");
    out.assert_code(70);
    assert!(
        out.one_line_of_stderr().ends_with("before it was ready (its output went to /dev/null; keep it with -o FILE)"),
        "{out}"
    );
    let log = s.join("quiet.log");
    let out = never_ready(&s, argv!["-o", &log], "exit 3");
    assert!(out.one_line_of_stderr().ends_with(&format!("(it wrote nothing to `{}`)", log.display())), "{out}");
}

#[test]
fn an_output_path_that_is_a_directory_fails_with_73_and_leaves_no_empty_pidfile() {
    let s = Scratch::new();
    let (pidfile, dir) = (s.join("d.pid"), s.join("logs"));
    std::fs::create_dir(&dir).unwrap();
    let out = conjure(argv!["-p", &pidfile, "-o", &dir, "--", "sleep", "60"]);
    assert_failed_cleanly(&out, 73, &[&dir.display().to_string(), "Is a directory"], &s, &pidfile);
}

#[test]
fn a_missing_directory_for_a_file_source_leaves_no_empty_pidfile() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let source = format!("file:{}", s.join("missing/ready").display());
    let out = conjure(argv!["-p", &pidfile, "--ready-on", source, "--", "sleep", "60"]);
    assert_failed_cleanly(&out, 64, &["missing"], &s, &pidfile);
}
