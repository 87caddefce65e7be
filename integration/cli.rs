//! `conjure [OPTIONS] -- PROGRAM`: what a started daemon looks like, flag by flag.
//!
//! Each test starts a real daemon through the real binary and inspects it through `/proc`, its
//! pidfile and its output files. Where a property is only meaningful against a hostile starting
//! state (a controlling terminal, leaked fds, ignored and blocked signals), the launcher is
//! started through `testprog wrap`, which sets that state up, writes a report about itself and
//! then execs `conjure` in its own process; the report proves the precondition, /proc proves the
//! outcome. Daemons that must show pristine signal state are the system's `sleep`, because a
//! Rust program ignores SIGPIPE on its own at startup.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::support::*;

/// Starts `conjure ARGS` and expects it to report ready (exit 0), then guards the daemon.
fn start(args: Vec<OsString>, pidfile: &Path) -> Daemon {
    TestCommand::conjure(args).expect_success();
    let daemon = Daemon::from_pidfile(pidfile);
    assert!(daemon.proc().alive(), "the daemon (pid {}) is not running", daemon.pid);
    daemon
}

/// `testprog wrap OPTIONS -- conjure ARGS`.
fn wrapped(wrap: Vec<OsString>, conjure: Vec<OsString>) -> TestCommand {
    let mut c = TestCommand::new(testprog());
    c.args(argv!["wrap"]).args(wrap).args(argv!["--", conjure_bin()]).args(conjure);
    c
}

/// A pseudo-terminal pair; both ends close-on-exec, so no other test's child inherits them.
pub struct Pty {
    _master: std::fs::File,
    /// The terminal side.
    pub slave: std::fs::File,
    /// Its device number, as `/proc/PID/stat` shows a controlling terminal.
    pub rdev: u64,
}

pub fn open_pty() -> Pty {
    let (master, slave) = pty_pair();
    let rdev = slave.metadata().expect("stat pty").rdev();
    Pty { _master: master, slave, rdev }
}

/// `setsid --ctty testprog wrap --report REPORT -- PROGRAM ARGS` with stdin on the pty: the
/// wrapper becomes a session leader with the pty as its controlling terminal, reports that,
/// and execs PROGRAM, which keeps both.
pub fn on_a_terminal(pty: &Pty, report: &Path, program: &Path, args: Vec<OsString>) -> TestCommand {
    let mut c = TestCommand::new("setsid");
    c.args(argv!["--ctty", testprog(), "wrap", "--report", report, "--", program]).args(args);
    c.command().stdin(pty.slave.try_clone().expect("dup pty"));
    c
}

/// Checks the report of a launcher started by [`on_a_terminal`]: it was `pid`, led its own
/// session and had the pty as its controlling terminal.
pub fn assert_launcher_had_the_terminal(report: &str, pid: i32, pty: &Pty) {
    assert_eq!(reported(report, "pid"), pid.to_string(), "setsid forked; the launcher is not the spawned process");
    assert_eq!(reported(report, "sid"), pid.to_string(), "the launcher did not lead its session");
    assert_eq!(reported(report, "tty_nr"), pty.rdev.to_string(), "the launcher had no controlling terminal");
}

/// Checks that `daemon` was double-forked away from `launcher`: reparented, in a session of
/// its own that it does not lead, whose leader (the intermediate child) is gone, without a
/// controlling terminal.
pub fn assert_detached(daemon: Proc, launcher: i32) {
    let stat = daemon.stat().expect("the daemon is gone");
    assert_ne!(stat.ppid, launcher, "the daemon is still the launcher's child");
    assert_ne!(stat.sid, launcher, "the daemon is still in the launcher's session");
    assert_ne!(stat.sid, daemon.0, "the daemon leads its session, so it could acquire a terminal");
    assert_ne!(stat.ppid, stat.sid, "the daemon's parent is the intermediate child, which should have exited");
    assert!(!Proc(stat.sid).alive(), "the intermediate child (pid {}) still runs", stat.sid);
    assert_eq!(stat.pgid, stat.sid, "the daemon left the intermediate child's process group");
    assert_eq!(stat.tty_nr, 0, "the daemon has a controlling terminal");
}

/// The system's `sleep`, resolved (what `/proc/PID/exe` shows for it).
fn sleep_exe() -> PathBuf {
    let found = ["/usr/bin/sleep", "/bin/sleep"].into_iter().map(Path::new).find(|p| p.exists());
    std::fs::canonicalize(found.expect("sleep(1) is installed")).expect("canonicalize sleep")
}

#[test]
fn daemon_started_from_a_terminal_is_reparented_in_a_new_session_without_a_terminal() {
    let s = Scratch::new();
    let (pidfile, report) = (s.join("d.pid"), s.join("report"));
    let pty = open_pty();
    let out = on_a_terminal(&pty, &report, &conjure_bin(), argv!["-p", &pidfile, "--", "sleep", "60"]).expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    assert_launcher_had_the_terminal(&wait_for_file(&report), out.pid, &pty);
    assert_detached(daemon.proc(), out.pid);
    drop(pty);
    assert!(daemon.proc().alive(), "the daemon died when its launcher's terminal hung up");
}

#[test]
fn daemon_has_only_stdio_on_dev_null_and_its_lock_when_the_launcher_leaked_fds() {
    let s = Scratch::new();
    let (pidfile, report, leak) = (s.join("d.pid"), s.join("report"), s.join("leak.txt"));
    let o9 = format!("9={}", leak.display());
    wrapped(
        argv!["--open-fd", "5", "--open-fd", &o9, "--open-fd", "63", "--report", &report],
        argv!["-p", &pidfile, "--", "sleep", "60"],
    )
    .expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    let before = reported_fds(&wait_for_file(&report));
    for fd in [5, 9, 63] {
        assert!(before.contains_key(&fd), "precondition: the launcher should have fd {fd} open: {before:?}");
    }
    let fds = daemon.proc().fds();
    let extra: Vec<_> = fds.iter().filter(|(fd, _)| **fd > 2).collect();
    assert_eq!(extra.len(), 1, "expected the lock fd and nothing else above 2: {fds:?}");
    assert_eq!(extra[0].1, &pidfile, "the one extra fd is not the pidfile: {fds:?}");
    for fd in 0..3 {
        assert_eq!(fds.get(&fd).map(PathBuf::as_path), Some(Path::new("/dev/null")), "fd {fd}: {fds:?}");
    }
}

#[test]
fn daemon_has_default_signal_dispositions_and_an_empty_mask_when_the_launcher_ignored_and_blocked_signals() {
    let s = Scratch::new();
    let (pidfile, report) = (s.join("d.pid"), s.join("report"));
    let rt = libc::SIGRTMIN();
    wrapped(
        argv![
            "--ignore", "TERM", "--ignore", "HUP", "--ignore", "USR1", "--ignore", "RTMIN+2", "--block", "USR2",
            "--block", "INT", "--block", "CHLD", "--block", "RTMIN+4", "--report", &report
        ],
        argv!["-p", &pidfile, "--", "sleep", "60"],
    )
    .expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    let r = wait_for_file(&report);
    let ign = u64::from_str_radix(&reported(&r, "SigIgn"), 16).expect("hex");
    let blk = u64::from_str_radix(&reported(&r, "SigBlk"), 16).expect("hex");
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, rt + 2] {
        assert_ne!(ign & sigbit(sig), 0, "precondition: the launcher should ignore signal {sig} ({ign:x})");
    }
    for sig in [libc::SIGUSR2, libc::SIGINT, libc::SIGCHLD, rt + 4] {
        assert_ne!(blk & sigbit(sig), 0, "precondition: the launcher should block signal {sig} ({blk:x})");
    }
    assert_eq!(daemon.proc().sigset("SigIgn"), 0, "the daemon ignores signals");
    assert_eq!(daemon.proc().sigset("SigBlk"), 0, "the daemon blocks signals");
}

#[test]
fn daemon_runs_in_the_given_directory_with_the_given_umask_and_environment() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(
        argv![
            "-p",
            &pidfile,
            "-c",
            s.path(),
            "-m",
            "027",
            "-E",
            "CONJURE_A=1",
            "-E",
            "CONJURE_B=x=y",
            "-E",
            "CONJURE_A=2",
            "--",
            "sleep",
            "60"
        ],
        &pidfile,
    );
    let p = daemon.proc();
    assert_eq!(p.cwd().as_deref(), Some(s.path()));
    assert_eq!(p.status("Umask"), "0027");
    let env = p.environ();
    assert_eq!(env.get("CONJURE_A").map(String::as_str), Some("2"), "-E: the last one wins");
    assert_eq!(env.get("CONJURE_B").map(String::as_str), Some("x=y"), "-E: the value keeps its `=`");
    assert!(env.contains_key("PATH"), "the launcher's environment is passed on: {env:?}");
}

#[test]
fn daemon_defaults_to_the_root_directory_and_umask_022_whatever_the_launchers() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let mut c = with_umask("077", argv![conjure_bin(), "-p", &pidfile, "--", "sleep", "60"]);
    c.command().current_dir(s.path());
    c.expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    assert_eq!(daemon.proc().cwd().as_deref(), Some(Path::new("/")));
    assert_eq!(daemon.proc().status("Umask"), "0022");
}

#[test]
fn foreground_program_keeps_the_callers_directory_and_umask() {
    let s = Scratch::new();
    let report = s.join("report");
    let mut c = with_umask("027", argv![conjure_bin(), "-f", "--", testprog(), "fds-to", &report]);
    c.command().current_dir(s.path());
    let running = c.spawn();
    wait_for_file(&report);
    let program = Proc(running.pid());
    assert_eq!(
        program.cwd().as_deref(),
        Some(s.path()),
        "the foreground program moved away from the caller's directory"
    );
    assert_eq!(program.status("Umask"), "0027");
    running.kill();
}

#[test]
fn foreground_program_reads_the_callers_stdin() {
    let s = Scratch::new();
    let out = s.join("out");
    let mut c = TestCommand::conjure(argv!["-f", "-o", &out, "--", "sh", "-c", "read line && echo got $line"]);
    c.command().stdin(std::process::Stdio::piped());
    let mut running = c.spawn();
    use std::io::Write;
    running.stdin().write_all(b"hello\n").expect("write to conjure's stdin");
    let done = running.wait();
    done.assert_code(0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "got hello\n");
}

/// `ARGV` run by `sh` with the umask set first.
fn with_umask(mask: &str, argv: Vec<OsString>) -> TestCommand {
    let mut c = TestCommand::new("sh");
    c.args(["-c".into(), format!("umask {mask} && exec \"$@\""), "sh".into()]);
    c.args(argv);
    c
}

#[test]
fn relative_paths_are_resolved_against_the_launchers_directory() {
    let s = Scratch::new();
    let mut c =
        TestCommand::conjure(argv!["-p", "rel.pid", "-o", "rel.log", "--", testprog(), "output", "rel", "2", "60"]);
    c.command().current_dir(s.path());
    c.expect_success();
    let _daemon = Daemon::from_pidfile(&s.join("rel.pid"));
    wait_for_content(&s.join("rel.log"), "rel out 1\nrel err 2\n");
}

#[test]
fn pidfile_holds_the_daemon_pid_and_a_newline_and_its_lock_is_held() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["-p", &pidfile, "--", "sleep", "60"], &pidfile);
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", daemon.pid));
    assert_eq!(daemon.proc().exe(), Some(sleep_exe()), "the pid is not the program's");
    assert!(lock_is_held(&pidfile), "nobody holds the pidfile's lock");
    assert_eq!(holders(&pidfile), vec![daemon.pid], "the lock should be held by the daemon alone");
}

#[test]
fn stdout_and_stderr_go_to_the_named_files() {
    let s = Scratch::new();
    let (pidfile, out, err) = (s.join("d.pid"), s.join("o.txt"), s.join("e.txt"));
    let _d = start(argv!["-p", &pidfile, "-o", &out, "-e", &err, "--", testprog(), "output", "t", "4", "60"], &pidfile);
    wait_for_content(&out, "t out 1\nt out 3\n");
    wait_for_content(&err, "t err 2\nt err 4\n");
}

#[test]
fn stderr_is_derived_from_a_stdout_ending_in_out_as_err() {
    let s = Scratch::new();
    let (pidfile, out) = (s.join("d.pid"), s.join("app.out"));
    let _d = start(argv!["-p", &pidfile, "-o", &out, "--", testprog(), "output", "t", "2", "60"], &pidfile);
    wait_for_content(&out, "t out 1\n");
    wait_for_content(&s.join("app.err"), "t err 2\n");
}

#[test]
fn stderr_is_derived_from_a_stdout_ending_in_stdout_as_stderr() {
    let s = Scratch::new();
    let (pidfile, out) = (s.join("d.pid"), s.join("app.stdout"));
    let _d = start(argv!["-p", &pidfile, "-o", &out, "--", testprog(), "output", "t", "2", "60"], &pidfile);
    wait_for_content(&out, "t out 1\n");
    wait_for_content(&s.join("app.stderr"), "t err 2\n");
}

#[test]
fn stdout_and_derived_stderr_in_one_file_interleave_without_overwriting() {
    let s = Scratch::new();
    let (pidfile, log) = (s.join("d.pid"), s.join("app.log"));
    let _d = start(argv!["-p", &pidfile, "-o", &log, "--", testprog(), "output", "t", "6", "60"], &pidfile);
    wait_for_content(&log, "t out 1\nt err 2\nt out 3\nt err 4\nt out 5\nt err 6\n");
}

#[test]
fn output_files_are_truncated_by_default() {
    let s = Scratch::new();
    let (pidfile, log) = (s.join("d.pid"), s.join("app.log"));
    std::fs::write(&log, "an old line that is longer than the new output\n").unwrap();
    let _d = start(argv!["-p", &pidfile, "-o", &log, "--", testprog(), "output", "t", "2", "60"], &pidfile);
    wait_for_content(&log, "t out 1\nt err 2\n");
}

#[test]
fn append_flag_appends_to_the_output_files() {
    let s = Scratch::new();
    let (pidfile, out) = (s.join("d.pid"), s.join("app.out"));
    std::fs::write(&out, "old out\n").unwrap();
    std::fs::write(s.join("app.err"), "old err\n").unwrap();
    let _d = start(argv!["-p", &pidfile, "-a", "-o", &out, "--", testprog(), "output", "t", "2", "60"], &pidfile);
    wait_for_content(&out, "old out\nt out 1\n");
    wait_for_content(&s.join("app.err"), "old err\nt err 2\n");
}

#[test]
fn second_start_with_locked_pidfile_exits_69() {
    let s = Scratch::new();
    let (pidfile, log) = (s.join("d.pid"), s.join("app.log"));
    let first = start(argv!["-p", &pidfile, "-o", &log, "--", testprog(), "output", "first", "1", "60"], &pidfile);
    wait_for_content(&log, "first out 1\n");
    let (content, ino) = (std::fs::read_to_string(&pidfile).unwrap(), inode(&pidfile));

    let out = TestCommand::conjure(argv!["-p", &pidfile, "-o", &log, "--", testprog(), "output", "second", "1", "60"])
        .expect_code(69);
    let line = out.one_line_of_stderr();
    assert!(line.contains(&pidfile.display().to_string()) && line.contains("held by another instance"), "{out}");
    assert!(line.contains(&format!("pid {}", first.pid)), "the message should name the holder: {out}");

    assert!(first.proc().alive(), "the first daemon died");
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), content, "the pidfile was rewritten");
    assert_eq!(inode(&pidfile), ino, "the pidfile was replaced");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "first out 1\n", "the losing start touched the log");
    assert_eq!(holders(&pidfile), vec![first.pid], "a second daemon holds the pidfile");
}

#[test]
fn stale_pidfile_of_a_sigkilled_daemon_does_not_block_the_next_start() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let first = start(argv!["-p", &pidfile, "--", "sleep", "60"], &pidfile);
    let old = first.pid;
    drop(first);
    wait_dead(old);
    assert_eq!(read_pidfile(&pidfile), old, "precondition: the stale pidfile remains");
    assert!(!lock_is_held(&pidfile));

    let second = start(argv!["-p", &pidfile, "--", "sleep", "60"], &pidfile);
    assert_ne!(second.pid, old);
    assert!(lock_is_held(&pidfile));
}

/// The pid is written over the stale one and the file cut to its length (not truncated first,
/// which costs a wait for the disk on ext4): a shorter pid must leave nothing of a longer one.
#[test]
fn a_stale_pidfile_with_a_longer_pid_is_rewritten_to_exactly_the_new_one() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    // The highest pid Linux hands out: longer than any this test will get, and not running.
    std::fs::write(&pidfile, "4194304\n").unwrap();
    assert_eq!(read_pidfile(&pidfile), 4_194_304, "precondition: the long stale pid is there");
    let daemon = start(argv!["-p", &pidfile, "--", "sleep", "60"], &pidfile);
    assert!(daemon.pid < 4_194_304);
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", daemon.pid));
}

#[test]
fn thirty_two_simultaneous_starts_on_one_pidfile_leave_exactly_one_daemon() {
    let s = Scratch::new();
    let pidfile = s.join("race.pid");
    for round in 0..5 {
        let starts: Vec<Running> =
            (0..32).map(|_| TestCommand::conjure(argv!["-p", &pidfile, "--", "sleep", "60"]).spawn()).collect();
        let outputs: Vec<Output> = starts.into_iter().map(Running::wait).collect();
        let winners: Vec<&Output> = outputs.iter().filter(|o| o.code() == Some(0)).collect();
        for o in &outputs {
            assert!(matches!(o.code(), Some(0 | 69)), "round {round}: a start neither won nor lost cleanly\n{o}");
        }
        assert_eq!(winners.len(), 1, "round {round}: {} starts reported ready", winners.len());
        let daemon = Daemon::from_pidfile(&pidfile);
        assert_eq!(holders(&pidfile), vec![daemon.pid], "round {round}: not exactly one daemon holds the pidfile");
        let sleepers = s.processes();
        assert_eq!(sleepers, vec![daemon.pid], "round {round}: more processes than the daemon remain");
        TestCommand::conjure(argv!["stop", "-p", &pidfile]).expect_success();
        wait_dead(daemon.pid);
        assert!(!pidfile.exists(), "round {round}: stop left the pidfile");
    }
}

#[test]
fn separate_lockfile_is_locked_and_blocks_a_second_start_with_another_pidfile() {
    let s = Scratch::new();
    let (pidfile, lock, other) = (s.join("d.pid"), s.join("d.lock"), s.join("other.pid"));
    let daemon = start(argv!["-p", &pidfile, "-l", &lock, "--", "sleep", "60"], &pidfile);
    assert!(lock_is_held(&lock), "the lockfile is not locked");
    assert!(holders(&lock).contains(&daemon.pid), "the daemon does not hold the lockfile");
    let out = TestCommand::conjure(argv!["-p", &other, "-l", &lock, "--", "sleep", "60"]).expect_code(69);
    assert!(out.one_line_of_stderr().contains(&lock.display().to_string()), "{out}");
    assert!(!other.exists(), "the losing start created its pidfile");
}

#[test]
fn no_lock_writes_the_pidfile_without_locking_it() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let first = start(argv!["-p", &pidfile, "--no-lock", "--", "sleep", "60"], &pidfile);
    assert!(!lock_is_held(&pidfile), "--no-lock locked the pidfile");
    assert!(holders(&pidfile).is_empty(), "the daemon keeps the unlocked pidfile open");
    // Nothing stops a second instance: that is what --no-lock means.
    let second = start(argv!["-p", &pidfile, "--no-lock", "--", "sleep", "60"], &pidfile);
    assert_ne!(first.pid, second.pid);
    assert!(first.proc().alive() && second.proc().alive());
}

#[test]
fn no_pidfile_at_all_still_starts_a_detached_daemon() {
    let s = Scratch::new();
    let fds = s.join("fds");
    let out = TestCommand::conjure(argv!["--", testprog(), "fds-to", &fds]).expect_success();
    let pid: i32 = reported(&wait_for_file(&fds), "pid").parse().unwrap();
    let daemon = Daemon::new(pid, None);
    assert_detached(daemon.proc(), out.pid);
    let extra: Vec<_> = daemon.proc().fds().into_iter().filter(|(fd, _)| *fd > 2).collect();
    assert!(extra.is_empty(), "without a pidfile no fd beyond stdio should remain: {extra:?}");
}

#[test]
fn keep_fd_keeps_that_fd_and_closes_the_others() {
    let s = Scratch::new();
    let (pidfile, kept, dropped) = (s.join("d.pid"), s.join("kept.txt"), s.join("dropped.txt"));
    let (o5, o6) = (format!("5={}", kept.display()), format!("6={}", dropped.display()));
    wrapped(argv!["--open-fd", &o5, "--open-fd", &o6], argv!["--keep-fd", "5", "-p", &pidfile, "--", "sleep", "60"])
        .expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    let fds = daemon.proc().fds();
    assert_eq!(fds.get(&5), Some(&kept), "--keep-fd 5 was not kept: {fds:?}");
    assert!(!fds.contains_key(&6), "fd 6 leaked: {fds:?}");
}

#[test]
fn no_close_fds_keeps_inherited_fds() {
    let s = Scratch::new();
    let (pidfile, leak) = (s.join("d.pid"), s.join("leak.txt"));
    let o9 = format!("9={}", leak.display());
    wrapped(argv!["--open-fd", "5", "--open-fd", &o9], argv!["--no-close-fds", "-p", &pidfile, "--", "sleep", "60"])
        .expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    let fds = daemon.proc().fds();
    assert_eq!(fds.get(&5).map(PathBuf::as_path), Some(Path::new("/dev/null")), "{fds:?}");
    assert_eq!(fds.get(&9), Some(&leak), "{fds:?}");
}

#[test]
fn listen_fds_are_passed_through_with_listen_pid_rewritten_to_the_daemon() {
    let s = Scratch::new();
    let (pidfile, sock, info) = (s.join("d.pid"), s.join("listen.sock"), s.join("info"));
    let o3 = format!("3={}", sock.display());
    let mut c =
        wrapped(argv!["--socket", &o3, "--listen-pid"], argv!["-p", &pidfile, "--", testprog(), "listen-fds", &info]);
    c.env("LISTEN_FDS", "1");
    let out = c.expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    let text = wait_for_file(&info);
    assert!(
        text.contains(&format!("LISTEN_PID={}\n", daemon.pid)),
        "LISTEN_PID not rewritten (launcher was {}):\n{text}",
        out.pid
    );
    assert!(text.contains("LISTEN_FDS=1\n"), "{text}");
    assert!(text.contains("fd3_socket=true\n"), "fd 3 is not the socket:\n{text}");
    // The daemon answers on the very socket the launcher was given.
    let stream = UnixStream::connect(&sock).expect("connect to the passed socket");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("read");
    assert_eq!(line, format!("hello from {}\n", daemon.pid));
}

#[test]
fn listen_fds_meant_for_another_process_are_not_passed() {
    let s = Scratch::new();
    let (pidfile, sock, info) = (s.join("d.pid"), s.join("listen.sock"), s.join("info"));
    let o3 = format!("3={}", sock.display());
    let mut c = wrapped(argv!["--socket", &o3], argv!["-p", &pidfile, "--", testprog(), "listen-fds", &info]);
    c.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
    c.expect_success();
    let _daemon = Daemon::from_pidfile(&pidfile);
    let text = wait_for_file(&info);
    assert!(text.contains("fd3_socket=false\n"), "another process's fd 3 was passed on:\n{text}");
    assert!(text.contains("LISTEN_PID=1\n"), "LISTEN_PID for another process was rewritten:\n{text}");
}

#[test]
fn verbose_flag_and_conjure_log_trace_each_step_on_stderr() {
    let s = Scratch::new();
    for (i, how) in ["-v", "CONJURE_LOG"].into_iter().enumerate() {
        let pidfile = s.join(&format!("d{i}.pid"));
        let mut c = TestCommand::conjure(if how == "-v" { argv!["-v"] } else { argv![] });
        c.args(argv!["-p", &pidfile, "--", "sleep", "60"]);
        if how == "CONJURE_LOG" {
            c.env("CONJURE_LOG", "debug");
        }
        let out = c.expect_success();
        let _d = Daemon::from_pidfile(&pidfile);
        let traces = out.stderr.lines().filter(|l| l.contains("DEBUG") && l.contains("conjure")).count();
        assert!(traces >= 3, "{how}: expected trace lines on stderr\n{out}");
        assert!(out.stderr.contains(&pidfile.display().to_string()), "{how}: the trace should name the pidfile\n{out}");
    }
    let pidfile = s.join("quiet.pid");
    let out = TestCommand::conjure(argv!["-p", &pidfile, "--", "sleep", "60"]).expect_success();
    let _d = Daemon::from_pidfile(&pidfile);
    assert_eq!(out.stderr, "", "without -v or CONJURE_LOG conjure should be silent");
}

#[test]
fn foreground_execs_the_program_in_place() {
    let s = Scratch::new();
    let pidfile = s.join("fg.pid");
    let running = TestCommand::conjure(argv!["-f", "-p", &pidfile, "--", "sleep", "60"]).spawn();
    let pid = running.pid();
    let me = Proc(std::process::id() as i32).stat().unwrap();
    // exec switches /proc/PID/exe before it sets up the new command line: wait for both.
    wait_until(PATIENCE, "the foreground conjure to become `sleep 60`", || {
        (Proc(pid).exe() == Some(sleep_exe()) && Proc(pid).cmdline() == ["sleep", "60"]).then_some(())
    });
    assert_eq!(read_pidfile(&pidfile), pid, "the pidfile should name the process conjure became");
    let stat = Proc(pid).stat().unwrap();
    assert_eq!(stat.ppid, std::process::id() as i32, "foreground mode forked");
    assert_eq!(stat.sid, me.sid, "foreground mode started a new session");
    assert!(lock_is_held(&pidfile));
    let out = running.kill();
    assert_eq!(out.code(), None);
}

#[test]
fn foreground_exits_with_the_programs_status_and_keeps_stdio() {
    let out = TestCommand::conjure(argv!["-f", "--", testprog(), "exit", "7"]).expect_code(7);
    assert_eq!(out.stderr, "");
    let out = TestCommand::conjure(argv!["-f", "--", testprog(), "output", "fg", "2"]).expect_success();
    assert_eq!(out.stdout, "fg out 1\n");
    assert_eq!(out.stderr, "fg err 2\n");
}

#[test]
fn foreground_redirects_output_when_asked() {
    let s = Scratch::new();
    let log = s.join("fg.log");
    let out = TestCommand::conjure(argv!["-f", "-o", &log, "--", testprog(), "output", "fg", "2"]).expect_success();
    assert_eq!(out.stdout, "");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "fg out 1\nfg err 2\n");
}

#[test]
fn program_is_searched_on_the_path_given_with_env() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let bin = s.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(testprog(), bin.join("conjure-test-prog")).unwrap();
    let path = format!("PATH={}", bin.display());
    let daemon = start(argv!["-E", &path, "-p", &pidfile, "--", "conjure-test-prog", "sleep", "60"], &pidfile);
    assert_eq!(daemon.proc().exe(), Some(std::fs::canonicalize(testprog()).unwrap()));
}

#[test]
fn privileges_are_dropped_to_the_user_and_group() {
    require_root!();
    let s = Scratch::new();
    let (pidfile, log) = (s.join("d.pid"), s.join("app.log"));
    let daemon = start(
        argv!["-u", "nobody", "-g", "nogroup", "-p", &pidfile, "-o", &log, "--", testprog(), "output", "t", "2", "60"],
        &pidfile,
    );
    let p = daemon.proc();
    assert_eq!(p.ids("Uid"), [65534; 4], "real, effective, saved and fs uid");
    assert_eq!(p.ids("Gid"), [65534; 4], "real, effective, saved and fs gid");
    let groups = p.ids("Groups");
    assert!(!groups.is_empty() && groups.iter().all(|g| *g != 0), "root's groups were kept: {groups:?}");
    assert_eq!(groups, nobody_groups(), "the supplementary groups are not nobody's");
    let env = p.environ();
    assert_eq!(env.get("USER").map(String::as_str), Some("nobody"));
    assert_eq!(env.get("HOME").map(String::as_str), Some("/nonexistent"));
    wait_for_content(&log, "t out 1\nt err 2\n");
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "the output file was not chowned");
    let meta = std::fs::metadata(&pidfile).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "the pidfile should stay root's");
    assert!(lock_is_held(&pidfile), "the unprivileged daemon lost its lock");
}

#[test]
fn group_alone_changes_the_group_and_keeps_the_user() {
    require_root!();
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["-g", "nogroup", "-p", &pidfile, "--", "sleep", "60"], &pidfile);
    assert_eq!(daemon.proc().ids("Uid"), [0; 4]);
    assert_eq!(daemon.proc().ids("Gid"), [65534; 4]);
    assert_eq!(daemon.proc().ids("Groups"), [65534]);
}

#[test]
fn numeric_user_and_group_are_accepted() {
    require_root!();
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["-u", "65534", "-g", "65534", "-p", &pidfile, "--", "sleep", "60"], &pidfile);
    assert_eq!(daemon.proc().ids("Uid"), [65534; 4]);
    assert_eq!(daemon.proc().ids("Gid"), [65534; 4]);
}

/// `id -G nobody`, sorted: the groups `initgroups` gives nobody.
pub fn nobody_groups() -> Vec<u32> {
    let out = TestCommand::new("id").args(["-G", "nobody"]).expect_success();
    let mut g: Vec<u32> = out.stdout.split_whitespace().map(|n| n.parse().unwrap()).collect();
    g.sort();
    g
}

/// Regression: glibc's `posix_spawn`, used by a multi-threaded parent such as this test (Rust's
/// `Command`), starts the child with the signals glibc reserves (32 and 33) ignored, and
/// `sigaction(3)` refuses to touch them, so conjure handed them on to the program ignored.
#[test]
fn daemon_does_not_inherit_glibc_reserved_signals_ignored_by_posix_spawn() {
    let s = Scratch::new();
    let (pidfile, report) = (s.join("d.pid"), s.join("report"));
    wrapped(argv!["--report", &report], argv!["-p", &pidfile, "--", "sleep", "60"]).expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    let ign = u64::from_str_radix(&reported(&wait_for_file(&report), "SigIgn"), 16).unwrap();
    if ign & (sigbit(32) | sigbit(33)) == 0 {
        say_skipped("the launcher did not start with signals 32 and 33 ignored here");
        return;
    }
    assert_eq!(daemon.proc().sigset("SigIgn"), 0, "the daemon inherited ignored reserved signals");
}

#[test]
fn with_user_and_group_the_users_own_primary_group_stays_supplementary() {
    require_root!();
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    // nobody's primary group is 65534; -g daemon (gid 1) makes 1 the process's group.
    let daemon = start(argv!["-u", "nobody", "-g", "daemon", "-p", &pidfile, "--", "sleep", "60"], &pidfile);
    assert_eq!(daemon.proc().ids("Gid"), [1; 4]);
    assert_eq!(daemon.proc().ids("Groups"), [65534], "nobody's primary group is not a supplementary group");
}

#[test]
fn env_without_a_value_sets_the_variable_empty() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["-p", &pidfile, "-E", "EMPTY", "-E", "SET=1", "--", "sleep", "60"], &pidfile);
    let env = daemon.proc().environ();
    assert_eq!(env.get("EMPTY").map(String::as_str), Some(""));
    assert_eq!(env.get("SET").map(String::as_str), Some("1"));
}

#[test]
fn output_files_are_appended_to_so_that_copytruncate_leaves_no_hole() {
    let s = Scratch::new();
    let (pidfile, log) = (s.join("d.pid"), s.join("app.log"));
    nix::unistd::mkfifo(&s.join("go"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let script = "echo first; read x < \"$0\"; echo second";
    let daemon = start(argv!["-p", &pidfile, "-o", &log, "--", "sh", "-c", script, s.join("go")], &pidfile);
    wait_for_content(&log, "first\n");
    // logrotate's copytruncate: the file is emptied under the daemon's feet.
    std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    std::fs::write(s.join("go"), "\n").unwrap();
    wait_for_content(&log, "second\n");
    drop(daemon);
}
