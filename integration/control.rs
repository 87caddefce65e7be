//! `conjure stop` and `conjure status` in every state a pidfile can be in: a running daemon
//! (lock held), a dead one (stale pidfile), none (no file), an unreadable file, and a stale
//! pidfile that names a live process which has nothing to do with it.
//!
//! Status answers with LSB codes and one line on stdout; stop exits 0 when the daemon is
//! stopped or was not running and must never signal a process the pidfile's lock does not vouch
//! for. The tests check the codes, the lines, and the processes themselves through `/proc`.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

fn start(args: Vec<OsString>, pidfile: &Path) -> Daemon {
    TestCommand::conjure(args).expect_success();
    Daemon::from_pidfile(pidfile)
}

fn status(pidfile: &Path) -> Output {
    TestCommand::conjure(argv!["status", "-p", pidfile]).run()
}

fn stop(args: Vec<OsString>) -> Output {
    let mut c = TestCommand::conjure(argv!["stop"]);
    c.args(args);
    c.run()
}

/// A process unrelated to any pidfile: a plain child of the test, killed and reaped on drop.
struct Stranger(std::process::Child);

impl Stranger {
    fn new() -> Stranger {
        Stranger(Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().expect("spawn sleep"))
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn status_of_a_running_daemon_is_0_and_names_its_pid() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["-p", &pidfile, "--", "sleep", "60"], &pidfile);
    let out = status(&pidfile);
    out.assert_code(0);
    assert_eq!(out.stdout, format!("{}: running (pid {})\n", pidfile.display(), daemon.pid));
}

#[test]
fn status_of_a_dead_daemon_with_a_stale_pidfile_is_1() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["-p", &pidfile, "--", "sleep", "60"], &pidfile);
    let pid = daemon.pid;
    drop(daemon);
    wait_dead(pid);
    let out = status(&pidfile);
    out.assert_code(1);
    assert_eq!(out.stdout, format!("{}: dead, but the pidfile remains (pid {pid})\n", pidfile.display()));
}

#[test]
fn status_without_a_pidfile_is_3() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = status(&pidfile);
    out.assert_code(3);
    assert_eq!(out.stdout, format!("{}: not running\n", pidfile.display()));
}

#[test]
fn status_of_an_unreadable_pidfile_is_4() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    std::fs::create_dir(&pidfile).unwrap();
    let out = status(&pidfile);
    out.assert_code(4);
    assert!(out.stdout.starts_with(&format!("{}: unknown: cannot read pidfile", pidfile.display())), "{out}");
    assert_eq!(out.stdout.lines().count(), 1, "{out}");
}

#[test]
fn status_of_a_pidfile_it_may_not_open_is_4() {
    require_root!();
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let _daemon = start(argv!["-p", &pidfile, "--", "sleep", "60"], &pidfile);
    set_mode(&pidfile, 0o600);
    let out = as_unprivileged(64999, &conjure_bin(), argv!["status", "-p", &pidfile]).run();
    out.assert_code(4);
    assert!(out.stdout.contains("Permission denied"), "{out}");
}

#[test]
fn stop_terminates_a_running_daemon_and_removes_its_pidfile() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["-p", &pidfile, "--", "sleep", "60"], &pidfile);
    let out = stop(argv!["-p", &pidfile]);
    out.assert_code(0);
    assert_eq!(out.stdout, format!("{}: stopped pid {}\n", pidfile.display(), daemon.pid));
    assert!(!daemon.proc().alive(), "stop returned before the daemon was gone");
    assert!(!pidfile.exists(), "stop left the pidfile");
    status(&pidfile).assert_code(3);
}

#[test]
fn stop_escalates_to_kill_when_the_program_ignores_term() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["-p", &pidfile, "--", testprog(), "ignore-term", "60"], &pidfile);
    // The program ignores TERM only once it has run that far; exec alone is not enough.
    wait_until(PATIENCE, "the daemon to ignore SIGTERM", || {
        (daemon.proc().sigset("SigIgn") & sigbit(libc::SIGTERM) != 0).then_some(())
    });
    let out = stop(argv!["-p", &pidfile, "--timeout", "300ms"]);
    out.assert_code(0);
    assert_eq!(out.stdout, format!("{}: stopped pid {} (killed after the timeout)\n", pidfile.display(), daemon.pid));
    assert!(!daemon.proc().alive());
    assert!(!pidfile.exists());
}

/// `stop --signal SIG` on a daemon that ignores TERM (which would end in a KILL after a
/// minute): SIG ends it at once.
fn stops_a_term_ignoring_daemon_with(signal: &str) {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["-p", &pidfile, "--", testprog(), "ignore-term", "60"], &pidfile);
    wait_until(PATIENCE, "the daemon to ignore SIGTERM", || {
        (daemon.proc().sigset("SigIgn") & sigbit(libc::SIGTERM) != 0).then_some(())
    });
    let out = stop(argv!["-p", &pidfile, "--signal", signal, "--timeout", "60s"]);
    out.assert_code(0);
    assert_eq!(out.stdout, format!("{}: stopped pid {}\n", pidfile.display(), daemon.pid));
    assert!(!daemon.proc().alive());
}

#[test]
fn stop_sends_the_signal_it_is_given() {
    stops_a_term_ignoring_daemon_with("INT");
}

/// `--signal` reads what `--rewrite` reads: real-time signals too (their default action ends
/// the process).
#[test]
fn stop_sends_a_real_time_signal_by_name() {
    stops_a_term_ignoring_daemon_with("RTMIN+3");
}

#[test]
fn stop_with_a_stale_pidfile_exits_0_and_removes_it() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["-p", &pidfile, "--", "sleep", "60"], &pidfile);
    let pid = daemon.pid;
    drop(daemon);
    wait_dead(pid);
    let out = stop(argv!["-p", &pidfile]);
    out.assert_code(0);
    assert_eq!(out.stdout, format!("{}: not running\n", pidfile.display()));
    assert!(!pidfile.exists(), "the stale pidfile was kept");
}

#[test]
fn stop_without_a_pidfile_exits_0_not_running() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = stop(argv!["-p", &pidfile]);
    out.assert_code(0);
    assert_eq!(out.stdout, format!("{}: not running\n", pidfile.display()));
}

#[test]
fn an_unlocked_pidfile_naming_a_live_unrelated_process_is_unknown_and_stop_signals_nobody() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let stranger = Stranger::new();
    // The stranger started well before this pidfile was written: nothing shows it is a daemon.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    std::fs::write(&pidfile, format!("{}\n", stranger.pid())).unwrap();
    let st = status(&pidfile);
    st.assert_code(4);
    let out = stop(argv!["-p", &pidfile, "--timeout", "100ms"]);
    out.assert_code(1);
    assert!(out.one_line_of_stderr().contains("not locked"), "{out}");
    assert!(Proc(stranger.pid()).alive(), "stop killed a process the pidfile's lock did not vouch for");
    assert_eq!(read_pidfile(&pidfile), stranger.pid(), "stop removed the pidfile of a live process");
}

#[test]
fn stop_signals_the_holder_of_the_lock_never_a_pid_the_file_names_that_does_not_hold_it() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let stranger = Stranger::new();
    std::fs::write(&pidfile, format!("{}\n", stranger.pid())).unwrap();
    // `flock` holds the lock (and its child `sleep` shares it); the file names the stranger.
    let holder = TestCommand::new("flock").args(argv![&pidfile, "sh", "-c", "sleep 60", "sh", &pidfile]).spawn();
    wait_until(PATIENCE, "flock to take the lock", || lock_is_held(&pidfile).then_some(()));
    let out = stop(argv!["-p", &pidfile, "--timeout", "5s"]);
    out.assert_code(0);
    assert!(Proc(stranger.pid()).alive(), "stop killed a process that does not hold the pidfile's lock");
    let done = holder.wait();
    assert!(done.code() != Some(0), "the lock holder was not stopped\n{done}");
    assert!(!pidfile.exists(), "the pidfile of the stopped holder remains");
}

#[test]
fn stop_of_an_unreadable_pidfile_fails_with_a_message() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    std::fs::create_dir(&pidfile).unwrap();
    let out = stop(argv!["-p", &pidfile]);
    assert_ne!(out.code(), Some(0), "{out}");
    let line = out.one_line_of_stderr();
    assert!(line.starts_with("conjure: ") && line.contains(&pidfile.display().to_string()), "{out}");
}

#[test]
fn stop_never_signals_a_daemon_started_without_a_lock() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let daemon = start(argv!["--no-lock", "-p", &pidfile, "--", "sleep", "60"], &pidfile);
    // Not locked, but the pid it names started just before the pidfile was written: running.
    let st = status(&pidfile);
    st.assert_code(0);
    assert_eq!(st.stdout, format!("{}: running (pid {})\n", pidfile.display(), daemon.pid));
    let out = stop(argv!["-p", &pidfile, "--timeout", "100ms"]);
    out.assert_code(1);
    assert!(out.one_line_of_stderr().contains("not locked"), "{out}");
    assert!(daemon.proc().alive(), "stop signalled a pid without a lock vouching for it");
    assert_eq!(read_pidfile(&pidfile), daemon.pid, "stop deleted the pidfile of a live process");
}

#[test]
fn stop_also_stops_descendants_that_inherited_the_lock() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    // sh keeps the lock fd and so does its child sleep; sh is the daemon, sleep the straggler.
    let daemon = start(argv!["-p", &pidfile, "--", "sh", "-c", "sleep 60 & wait"], &pidfile);
    wait_until(PATIENCE, "the daemon's child to hold the pidfile", || (holders(&pidfile).len() == 2).then_some(()));
    let child = holders(&pidfile).into_iter().find(|p| *p != daemon.pid).unwrap();
    let out = stop(argv!["-p", &pidfile, "--timeout", "5s"]);
    out.assert_code(0);
    assert!(!daemon.proc().alive());
    assert!(!Proc(child).alive(), "the daemon's child kept running with the lock");
    assert!(!pidfile.exists());
    status(&pidfile).assert_code(3);
}

#[test]
fn stop_stops_the_program_of_a_resident_conjure_killed_with_sigkill() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let report = s.join("report");
    let running =
        TestCommand::conjure(argv!["-f", "--supervise", "-p", &pidfile, "--", testprog(), "fds-to", &report]).spawn();
    let program: i32 = reported(&wait_for_file(&report), "pid").parse().unwrap();
    assert_eq!(read_pidfile(&pidfile), running.pid(), "the pidfile names resident conjure");
    running.kill();
    assert!(Proc(program).alive() && lock_is_held(&pidfile), "the orphaned program should hold the lock");
    status(&pidfile).assert_code(0);
    let out = stop(argv!["-p", &pidfile, "--timeout", "5s"]);
    out.assert_code(0);
    wait_dead(program);
    assert!(!pidfile.exists(), "pidfile left behind");
}

#[test]
fn stop_that_cannot_remove_the_pidfile_says_so_and_fails() {
    require_root!();
    let s = Scratch::new();
    let dir = s.join("run");
    std::fs::create_dir(&dir).unwrap();
    nix::unistd::chown(&dir, Some(65534.into()), Some(65534.into())).unwrap();
    let pidfile = dir.join("d.pid");
    as_unprivileged(65534, &conjure_bin(), argv!["-p", &pidfile, "--", "sleep", "60"]).expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    set_mode(&dir, 0o555);
    let out = as_unprivileged(65534, &conjure_bin(), argv!["stop", "-p", &pidfile, "--timeout", "5s"]).run();
    set_mode(&dir, 0o755);
    out.assert_code(1);
    assert!(out.one_line_of_stderr().contains(&format!("stopped pid {}, but cannot remove", daemon.pid)), "{out}");
    wait_dead(daemon.pid);
}
