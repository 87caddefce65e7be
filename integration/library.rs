//! The library API, driven through `libdaemon` (a small program built on `DaemonConfig`,
//! `daemonize_checked` and `DaemonContext`): the daemon it makes, the launcher's exit code and
//! message for every error that can be provoked, and pidfile cleanup.
//!
//! As for the command line, the daemon is inspected through `/proc`, its pidfile and its output
//! files; a hostile launcher (terminal, leaked fds, ignored and blocked signals) is set up by
//! `testprog wrap`, which then execs `libdaemon` in its own process. Unlike the command line,
//! the launcher here is the original process inside `daemonize`, and it prints the error
//! without a prefix when the daemon fails after the fork.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cli::{assert_detached, assert_launcher_had_the_terminal, on_a_terminal, open_pty};
use crate::support::*;

fn lib(args: Vec<OsString>) -> TestCommand {
    let mut c = TestCommand::new(libdaemon());
    c.args(args);
    c
}

fn start(args: Vec<OsString>, pidfile: &Path) -> Daemon {
    lib(args).expect_success();
    let daemon = Daemon::from_pidfile(pidfile);
    assert!(daemon.proc().alive(), "the daemon (pid {}) is not running", daemon.pid);
    daemon
}

/// Asserts a clean failure of the launcher: `code`, one line on stderr equal to `line` (or
/// starting with it, when it ends in `…`), no pidfile and no process left.
fn assert_failed_cleanly(out: &Output, code: i32, line: &str, s: &Scratch, pidfile: &Path) {
    out.assert_code(code);
    let got = out.one_line_of_stderr();
    match line.strip_suffix('…') {
        Some(prefix) => assert!(got.starts_with(prefix), "expected a line starting {prefix:?}\n{out}"),
        None => assert_eq!(got, line, "\n{out}"),
    }
    assert!(std::fs::symlink_metadata(pidfile).is_err(), "a pidfile was left behind\n{out}");
    s.wait_no_process_left();
}

#[test]
fn library_daemon_started_from_a_terminal_is_reparented_in_a_new_session_without_a_terminal() {
    let s = Scratch::new();
    let (pidfile, report) = (s.join("d.pid"), s.join("report"));
    let pty = open_pty();
    let out = on_a_terminal(&pty, &report, &libdaemon(), argv!["--pidfile", &pidfile, "ready"]).expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    assert_launcher_had_the_terminal(&wait_for_file(&report), out.pid, &pty);
    assert_detached(daemon.proc(), out.pid);
}

#[test]
fn library_daemon_has_only_stdio_and_its_lock_and_pristine_signals_after_a_hostile_launcher() {
    let s = Scratch::new();
    let (pidfile, report, leak) = (s.join("d.pid"), s.join("report"), s.join("leak.txt"));
    let o9 = format!("9={}", leak.display());
    let mut c = TestCommand::new(testprog());
    c.args(argv![
        "wrap",
        "--ignore",
        "TERM",
        "--ignore",
        "HUP",
        "--ignore",
        "RTMIN+1",
        "--block",
        "USR1",
        "--block",
        "RTMIN+5",
        "--open-fd",
        "5",
        "--open-fd",
        &o9,
        "--report",
        &report,
        "--",
        libdaemon(),
        "--pidfile",
        &pidfile,
        "ready"
    ]);
    c.expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    let r = wait_for_file(&report);
    let fds = reported_fds(&r);
    assert!(fds.contains_key(&5) && fds.contains_key(&9), "precondition: leaked fds in the launcher: {fds:?}");
    let ign = u64::from_str_radix(&reported(&r, "SigIgn"), 16).unwrap();
    let blk = u64::from_str_radix(&reported(&r, "SigBlk"), 16).unwrap();
    assert_ne!(ign & sigbit(libc::SIGRTMIN() + 1), 0, "precondition: RTMIN+1 ignored");
    assert_ne!(blk & sigbit(libc::SIGRTMIN() + 5), 0, "precondition: RTMIN+5 blocked");

    let p = daemon.proc();
    // SIGPIPE stays ignored, as in every Rust program: a write to a closed socket must return
    // EPIPE, not kill the daemon without a word.
    assert_eq!(p.sigset("SigIgn"), sigbit(libc::SIGPIPE), "the daemon ignores signals other than SIGPIPE");
    assert_eq!(p.sigset("SigBlk"), 0, "the daemon blocks signals");
    let fds = p.fds();
    let extra: Vec<_> = fds.iter().filter(|(fd, _)| **fd > 2).collect();
    assert_eq!(extra.len(), 1, "expected the lock fd and nothing else above 2: {fds:?}");
    assert_eq!(extra[0].1, &pidfile);
    for fd in 0..3 {
        assert_eq!(fds.get(&fd).map(PathBuf::as_path), Some(Path::new("/dev/null")), "fd {fd}: {fds:?}");
    }
}

#[test]
fn library_daemon_runs_in_the_given_directory_with_the_given_umask_and_environment() {
    let s = Scratch::new();
    let (pidfile, out) = (s.join("d.pid"), s.join("lib.log"));
    let daemon = start(
        argv![
            "--pidfile",
            &pidfile,
            "--chdir",
            s.path(),
            "--umask",
            "027",
            "--stdout",
            &out,
            "--env",
            "CONJURE_TEST_ENV=first",
            "--env",
            "CONJURE_TEST_ENV=last",
            "ready"
        ],
        &pidfile,
    );
    assert_eq!(daemon.proc().cwd().as_deref(), Some(s.path()));
    assert_eq!(daemon.proc().status("Umask"), "0027");
    wait_for_content(&out, "libdaemon out\nlibdaemon err\nenv CONJURE_TEST_ENV=last\n");
}

#[test]
fn library_daemon_defaults_to_the_root_directory_and_umask_022() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    // The test process's umask is whatever it is; a daemon that kept it would show it.
    let daemon = start(argv!["--pidfile", &pidfile, "ready"], &pidfile);
    assert_eq!(daemon.proc().cwd().as_deref(), Some(Path::new("/")));
    assert_eq!(daemon.proc().status("Umask"), "0022");
}

#[test]
fn library_pidfile_holds_the_daemon_pid_and_its_lock_is_held() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["--pidfile", &pidfile, "ready"], &pidfile);
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", daemon.pid));
    assert_eq!(daemon.proc().exe(), Some(std::fs::canonicalize(libdaemon()).unwrap()));
    assert!(lock_is_held(&pidfile));
    let out = TestCommand::conjure(argv!["status", "-p", &pidfile]).expect_success();
    assert!(out.stdout.contains(&format!("running (pid {})", daemon.pid)), "{out}");
}

#[test]
fn library_separate_lockfile_is_locked() {
    let s = Scratch::new();
    let (pidfile, lock) = (s.join("d.pid"), s.join("d.lock"));
    let daemon = start(argv!["--pidfile", &pidfile, "--lockfile", &lock, "ready"], &pidfile);
    assert!(lock_is_held(&lock));
    assert!(holders(&lock).contains(&daemon.pid));
    let other = s.join("other.pid");
    let out = lib(argv!["--pidfile", &other, "--lockfile", &lock, "ready"]).expect_code(69);
    let prefix = format!("libdaemon: cannot lock `{}`: held by another instance", lock.display());
    assert!(out.one_line_of_stderr().starts_with(&prefix), "{out}");
    assert!(!other.exists(), "the losing start created its pidfile");
    assert_eq!(holders(&lock), vec![daemon.pid], "a second daemon holds the lockfile");
}

#[test]
fn library_output_is_redirected_with_stderr_derived_from_stdout() {
    let s = Scratch::new();
    let (pidfile, out) = (s.join("d.pid"), s.join("lib.out"));
    let _d = start(argv!["--pidfile", &pidfile, "--stdout", &out, "ready"], &pidfile);
    wait_for_content(&out, "libdaemon out\n");
    wait_for_content(&s.join("lib.err"), "libdaemon err\n");
}

#[test]
fn library_output_is_appended_when_asked_and_truncated_otherwise() {
    let s = Scratch::new();
    let (p1, p2, appended, truncated) = (s.join("1.pid"), s.join("2.pid"), s.join("a.log"), s.join("t.log"));
    std::fs::write(&appended, "old\n").unwrap();
    std::fs::write(&truncated, "old line, longer than what comes next\n").unwrap();
    let _a = start(argv!["--pidfile", &p1, "--stdout", &appended, "--append", "ready"], &p1);
    let _t = start(argv!["--pidfile", &p2, "--stdout", &truncated, "ready"], &p2);
    wait_for_content(&appended, "old\nlibdaemon out\nlibdaemon err\n");
    wait_for_content(&truncated, "libdaemon out\nlibdaemon err\n");
}

#[test]
fn library_foreground_sets_up_in_place_and_keeps_stdio() {
    let s = Scratch::new();
    let pidfile = s.join("fg.pid");
    let running = lib(argv!["--foreground", "--pidfile", &pidfile, "--umask", "077", "ready"]).spawn();
    let pid = running.pid();
    let me = Proc(std::process::id() as i32).stat().unwrap();
    wait_until(PATIENCE, "the foreground daemon's output", || {
        (running.stdout_so_far() == "libdaemon out\n").then_some(())
    });
    assert_eq!(read_pidfile(&pidfile), pid, "the pidfile should name the process itself");
    let stat = Proc(pid).stat().unwrap();
    assert_eq!(stat.ppid, std::process::id() as i32, "foreground mode forked");
    assert_eq!(stat.sid, me.sid, "foreground mode started a new session");
    assert_eq!(Proc(pid).status("Umask"), "0077");
    assert_eq!(Proc(pid).cwd(), std::env::current_dir().ok(), "the foreground daemon left the caller's directory");
    assert!(lock_is_held(&pidfile));
    running.kill();
}

#[test]
fn library_no_close_fds_keeps_inherited_fds() {
    let s = Scratch::new();
    let (pidfile, leak) = (s.join("d.pid"), s.join("leak.txt"));
    let o9 = format!("9={}", leak.display());
    let mut c = TestCommand::new(testprog());
    c.args(argv!["wrap", "--open-fd", &o9, "--", libdaemon(), "--no-close-fds", "--pidfile", &pidfile, "ready"]);
    c.expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    assert_eq!(daemon.proc().fds().get(&9), Some(&leak));
}

#[test]
fn library_unsafe_daemonize_makes_the_same_daemon() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = lib(argv!["--pidfile", &pidfile, "unsafe-ready"]).expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    assert_detached(daemon.proc(), out.pid);
}

/// Code written for blivet 0.4 keeps its `unsafe` block around `daemonize`: it compiles (the
/// helper is built with it) and makes the same daemon.
#[test]
fn blivet_0_4_code_with_its_unsafe_block_makes_the_same_daemon() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = lib(argv!["--pidfile", &pidfile, "blivet-0.4"]).expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    assert_detached(daemon.proc(), out.pid);
}

#[test]
fn daemonize_checked_refuses_a_process_with_a_second_thread() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = lib(argv!["--pidfile", &pidfile, "thread"]).run();
    assert_failed_cleanly(
        &out,
        70,
        "libdaemon: cannot daemonize: the process runs 2 threads, and fork would copy only one",
        &s,
        &pidfile,
    );
}

#[test]
fn report_error_carries_its_code_and_message_to_the_launcher() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = lib(argv!["--pidfile", &pidfile, "error", "42", "the disk is on fire"]).run();
    assert_failed_cleanly(&out, 42, "libdaemon: the disk is on fire", &s, &pidfile);
}

#[test]
fn dropped_context_makes_the_launcher_exit_70_and_say_so() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = lib(argv!["--pidfile", &pidfile, "drop"]).run();
    out.assert_code(70);
    let line = out.one_line_of_stderr();
    let pid: i32 = line
        .strip_prefix("libdaemon: daemon (pid ")
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the message should name the daemon\n{out}"));
    let _daemon = Daemon::new(pid, None);
    assert!(line.ends_with("dropped its context before it was ready"), "{out}");
    // A failed start leaves nothing: the daemon, which lives on after dropping its context,
    // was stopped by the launcher.
    wait_dead(pid);
    assert!(!pidfile.exists(), "the pidfile was left behind");
}

#[test]
fn daemon_that_exits_before_ready_makes_the_launcher_exit_70() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = lib(argv!["--pidfile", &pidfile, "die"]).run();
    assert_failed_cleanly(&out, 70, "libdaemon: daemon (pid …", &s, &pidfile);
}

#[test]
fn pidfile_is_removed_on_sigterm_with_signal_cleanup() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["--pidfile", &pidfile, "signal-cleanup"], &pidfile);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_dead(daemon.pid);
    assert!(!pidfile.exists(), "the pidfile survived SIGTERM with cleanup_on_signals");
}

/// The signal handler removes the pidfile as the pidfile guard does: only while its path still
/// names the daemon's file, never a file another process put there since.
#[test]
fn signal_cleanup_leaves_a_file_that_replaced_the_pidfile() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["--pidfile", &pidfile, "signal-cleanup"], &pidfile);
    let other = s.join("other.pid");
    std::fs::write(&other, "4242\n").unwrap();
    std::fs::rename(&other, &pidfile).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_dead(daemon.pid);
    assert_eq!(
        std::fs::read_to_string(&pidfile).ok().as_deref(),
        Some("4242\n"),
        "another file at the path was removed"
    );
}

#[test]
fn pidfile_is_not_removed_on_sigterm_without_signal_cleanup() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["--pidfile", &pidfile, "ready"], &pidfile);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_dead(daemon.pid);
    assert_eq!(read_pidfile(&pidfile), daemon.pid, "the pidfile should remain, stale");
    TestCommand::conjure(argv!["status", "-p", &pidfile]).expect_code(1);
}

#[test]
fn library_second_start_exits_69_and_leaves_the_first_untouched() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let first = start(argv!["--pidfile", &pidfile, "ready"], &pidfile);
    let ino = inode(&pidfile);
    let out = lib(argv!["--pidfile", &pidfile, "ready"]).expect_code(69);
    assert_eq!(
        out.one_line_of_stderr(),
        format!("libdaemon: cannot lock `{}`: held by another instance (pid {})", pidfile.display(), first.pid)
    );
    assert!(first.proc().alive());
    assert_eq!(inode(&pidfile), ino);
    assert_eq!(read_pidfile(&pidfile), first.pid);
}

/// Every error found before the fork: (flags, exit code, the line).
#[test]
fn library_errors_before_the_fork_have_their_codes_and_one_line() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let missing = s.join("missing");
    let cases: Vec<(Vec<OsString>, i32, String)> = vec![
        (argv!["--umask", "1000"], 64, "libdaemon: invalid umask 1000: must be at most 777".into()),
        (
            argv!["--env", "=x"],
            64,
            "libdaemon: invalid environment variable name ``: must be non-empty, without `=` or NUL".into(),
        ),
        (
            argv!["--stdout", &pidfile],
            64,
            format!("libdaemon: the pidfile and stdout cannot both be `{}`", pidfile.display()),
        ),
        (argv!["--user", "conjure-no-such-user"], 67, "libdaemon: unknown user `conjure-no-such-user`".into()),
        (argv!["--group", "conjure-no-such-group"], 67, "libdaemon: unknown group `conjure-no-such-group`".into()),
        (
            argv!["--chdir", &missing],
            71,
            format!("libdaemon: cannot change directory to `{}`: No such file or directory", missing.display()),
        ),
        (
            argv!["--stdout", missing.join("o")],
            73,
            format!("libdaemon: cannot open output file `{}`: No such file or directory", missing.join("o").display()),
        ),
        (
            argv!["--lockfile", missing.join("l")],
            73,
            format!("libdaemon: cannot open lockfile `{}`: No such file or directory", missing.join("l").display()),
        ),
    ];
    for (flags, code, line) in cases {
        let mut c = lib(argv!["--pidfile", &pidfile]);
        c.args(flags).args(["ready"]);
        assert_failed_cleanly(&c.run(), code, &line, &s, &pidfile);
    }
    let bad_pidfile = missing.join("d.pid");
    let out = lib(argv!["--pidfile", &bad_pidfile, "ready"]).run();
    let line = format!("libdaemon: cannot write pidfile `{}`: No such file or directory", bad_pidfile.display());
    assert_failed_cleanly(&out, 73, &line, &s, &bad_pidfile);
}

#[test]
fn library_user_without_root_exits_77() {
    let s = Scratch::new();
    let dir = s.join("rw");
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o777);
    let pidfile = dir.join("d.pid");
    let out = as_unprivileged(64999, &libdaemon(), argv!["--pidfile", &pidfile, "--user", "root", "ready"]).run();
    assert_failed_cleanly(&out, 77, "libdaemon: cannot switch to uid 0 gid 0: …", &s, &pidfile);
}

#[test]
fn library_fork_failure_exits_71_and_leaves_no_pidfile() {
    let s = Scratch::new();
    let dir = s.join("rw");
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o777);
    let pidfile = dir.join("d.pid");
    let inner = as_unprivileged(64997, &libdaemon(), argv!["--pidfile", &pidfile, "ready"]);
    let mut c = TestCommand::new("prlimit");
    c.args(argv!["--nproc=1:1", "--"]).args(inner.argv());
    assert_failed_cleanly(&c.run(), 71, "libdaemon: cannot fork: …", &s, &pidfile);
}

#[test]
fn library_privileges_are_dropped_and_output_files_chowned() {
    require_root!();
    let s = Scratch::new();
    let (pidfile, out) = (s.join("d.pid"), s.join("priv.log"));
    let daemon = start(
        argv!["--pidfile", &pidfile, "--stdout", &out, "--user", "nobody", "--group", "nogroup", "privdrop"],
        &pidfile,
    );
    let p = daemon.proc();
    assert_eq!(p.ids("Uid"), [65534; 4]);
    assert_eq!(p.ids("Gid"), [65534; 4]);
    let mut groups = p.ids("Groups");
    groups.sort();
    assert_eq!(groups, crate::cli::nobody_groups());
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "the output file was not chowned");
    let meta = std::fs::metadata(&pidfile).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "the pidfile should stay root's");
    wait_for_content(&out, "libdaemon out\nlibdaemon err\nUSER=nobody\nLOGNAME=nobody\nHOME=/nonexistent\n");
    assert!(lock_is_held(&pidfile));
}

/// Regression: the daemon's setup closed the report pipe's read end, and `daemonize` then
/// closed it again as an `OwnedFd`, which debug builds abort on ("IO Safety violation"): every
/// library daemon died before it could say it was ready, and its launcher exited 70.
#[test]
fn library_daemon_does_not_close_the_report_pipes_read_end_twice() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = lib(argv!["--pidfile", &pidfile, "ready"]).expect_success();
    assert_eq!(out.stderr, "", "the launcher should be silent on success");
    let daemon = Daemon::from_pidfile(&pidfile);
    assert!(daemon.proc().alive());
}

#[test]
fn library_daemon_keeps_a_file_it_opened_before_daemonizing() {
    let s = Scratch::new();
    let (pidfile, file) = (s.join("d.pid"), s.join("live.txt"));
    let _daemon = start(argv!["--pidfile", &pidfile, "live-file", &file], &pidfile);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "alive\n", "the File opened before daemonize was closed");
}

/// A foreground `Launcher` whose exec fails returns to its caller: the fds the program was not
/// to inherit were only marked close-on-exec, so the caller's `File`s still own theirs.
#[test]
fn a_failed_foreground_exec_leaves_the_callers_files_open() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let (file, program) = (s.join("live.txt"), s.join("not-a-program"));
    std::fs::write(&program, "neither ELF nor #!\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = lib(argv!["exec-fail", &file, &program]).run();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "alive\n",
        "the File opened before the launch was closed\n{out}"
    );
    assert!(out.stderr.contains("Exec format error"), "{out}");
}

/// A `Launcher` whose s6 readiness fd is one of the caller's own `File`s writes the newline
/// through it and leaves it to its owner.
#[test]
fn the_fd_sink_leaves_the_callers_file_open() {
    let s = Scratch::new();
    let file = s.join("ready.txt");
    lib(argv!["fd-sink", &file]).expect_success();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "\nalive\n");
}

#[test]
fn library_daemon_refuses_to_report_ready_while_still_root_when_a_user_was_configured() {
    require_root!();
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = lib(argv!["--pidfile", &pidfile, "--user", "nobody", "root-ready"]).run();
    assert_failed_cleanly(&out, 77, "libdaemon: cannot report ready as uid 0 gid 0: …", &s, &pidfile);
}

#[test]
fn library_drop_privileges_sets_user_logname_and_home() {
    require_root!();
    let s = Scratch::new();
    let (pidfile, out) = (s.join("d.pid"), s.join("d.out"));
    let daemon = start(argv!["--pidfile", &pidfile, "--user", "nobody", "--stdout", &out, "privdrop"], &pidfile);
    assert_eq!(daemon.proc().ids("Uid"), [65534; 4]);
    let home = nix::unistd::User::from_name("nobody").unwrap().unwrap().dir;
    let expected = format!("libdaemon out\nUSER=nobody\nLOGNAME=nobody\nHOME={}\n", home.display());
    wait_for_content(&out, &expected);
}

#[test]
fn daemonize_with_binds_a_privileged_port_as_root_then_runs_as_the_user() {
    require_root!();
    let s = Scratch::new();
    let (pidfile, out) = (s.join("d.pid"), s.join("d.out"));
    let port = free_privileged_port();
    let daemon =
        start(argv!["--pidfile", &pidfile, "--user", "nobody", "--stdout", &out, "with", port.to_string()], &pidfile);
    wait_for_content(&out, "uid 65534 listening true\n");
    assert_eq!(daemon.proc().ids("Uid"), [65534; 4], "the daemon did not drop to nobody");
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the daemon does not hold the privileged port");
}

#[test]
fn daemonize_with_reports_a_failing_init_to_the_launcher() {
    require_root!();
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    // A port someone else holds fails to bind in the daemon's init.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let out = lib(argv!["--pidfile", &pidfile, "--user", "nobody", "with", port.to_string()]).run();
    assert_failed_cleanly(&out, 70, "libdaemon: Address already in use (os error 98)", &s, &pidfile);
}

#[test]
fn the_echo_server_example_daemonizes_binds_as_root_and_echoes_as_nobody() {
    require_root!();
    let s = Scratch::new();
    let (pidfile, log) = (s.join("echo.pid"), s.join("echo.log"));
    let port = free_privileged_port();
    let mut c = TestCommand::new(example_bin("echo_server"));
    c.args(argv![&pidfile, &log, port.to_string(), "nobody"]);
    c.expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    assert_eq!(daemon.proc().ids("Uid"), [65534; 4]);
    wait_for_content(&log, &format!("echo server {} listening\n", daemon.pid));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the echo server");
    use std::io::{Read, Write};
    stream.write_all(b"hello\n").unwrap();
    let mut buf = [0u8; 6];
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello\n");
    TestCommand::conjure(argv!["stop", "-p", &pidfile]).expect_success();
    assert!(!pidfile.exists());
}

#[test]
fn the_launcher_example_returns_once_the_program_listens() {
    let s = Scratch::new();
    let pidfile = s.join("web.pid");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let mut c = TestCommand::new(example_bin("launcher"));
    c.args(argv![&pidfile, &port, example_bin("readyprog"), "--delay", "300", "listen-tcp", &port]);
    let out = c.expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    assert!(out.stdout.ends_with(&format!("is ready as pid {}\n", daemon.pid)), "{out}");
    std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).expect("ready, but not listening");
}

/// A TCP port below 1024 that nothing listens on now.
fn free_privileged_port() -> u16 {
    (900..1000).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free privileged port")
}
