//! The LSB init script example, `examples/init.d/conjure-example`, driven on the host the way
//! `service` and `/etc/init.d` users drive it, with a real daemon (`testprog sleep`): its exit
//! codes per action, and that the pidfile conjure writes is one Debian's `start-stop-daemon`
//! can use.
//!
//! The script takes its settings from the environment (conjure, program, pidfile), so each
//! test points it at its own scratch directory; every daemon it starts holds a pidfile there,
//! so [`Scratch`] kills it, by pid, should a test fail halfway.

use std::path::{Path, PathBuf};

use crate::support::{Output, Proc, Scratch, TestCommand, conjure_bin, find_tool, read_pidfile, testprog, wait_dead};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/init.d/conjure-example")
}

/// A daemon, started through the init script, that lives in one scratch dir.
struct Service {
    scratch: Scratch,
    daemon: PathBuf,
}

impl Service {
    fn new() -> Service {
        Service { scratch: Scratch::new(), daemon: testprog() }
    }

    fn pidfile(&self) -> PathBuf {
        self.scratch.join("example.pid")
    }

    /// `conjure-example ACTION` with this service's settings.
    fn run(&self, action: &str) -> Output {
        let mut c = TestCommand::new("/bin/sh");
        c.args([script().as_os_str(), action.as_ref()])
            .env("CONJURE", conjure_bin())
            .env("DAEMON", &self.daemon)
            .env("DAEMON_ARGS", "sleep 600")
            .env("PIDFILE", self.pidfile())
            .env("STOP_TIMEOUT", "5s");
        c.run()
    }

    fn expect(&self, action: &str, code: i32) -> Output {
        let out = self.run(action);
        out.assert_code(code);
        out
    }

    /// The pid in the pidfile, which must be a live daemon.
    fn running_pid(&self) -> i32 {
        let pid = read_pidfile(&self.pidfile());
        assert!(Proc(pid).alive(), "pidfile names pid {pid}, which is not running");
        pid
    }
}

#[test]
fn init_script_start_status_stop_answer_with_lsb_exit_codes() {
    let s = Service::new();

    s.expect("status", 3);
    s.expect("start", 0);
    let pid = s.running_pid();
    assert_eq!(Proc(pid).exe(), Some(s.daemon.clone()), "the pidfile does not name the program");
    s.expect("status", 0);

    // LSB: starting a running service succeeds, and must not start a second one.
    s.expect("start", 0);
    assert_eq!(s.running_pid(), pid, "a second start replaced the daemon");

    s.expect("stop", 0);
    wait_dead(pid);
    s.expect("status", 3);
    assert!(!s.pidfile().exists(), "the pidfile outlived the daemon");
    // LSB: stopping a stopped service succeeds.
    s.expect("stop", 0);
    s.scratch.wait_no_process_left();
}

#[test]
fn init_script_restart_replaces_the_daemon_and_starts_a_stopped_one() {
    let s = Service::new();

    s.expect("restart", 0);
    let first = s.running_pid();
    s.expect("restart", 0);
    let second = s.running_pid();
    assert_ne!(first, second, "restart kept the old daemon");
    assert!(!Proc(first).alive(), "restart left the old daemon {first} running");

    s.expect("force-reload", 0);
    let third = s.running_pid();
    assert_ne!(third, second, "force-reload did not restart the daemon");

    s.expect("try-restart", 0);
    assert_ne!(s.running_pid(), third, "try-restart did not restart a running daemon");
    s.expect("stop", 0);
    // LSB: try-restart of a stopped service succeeds and leaves it stopped.
    s.expect("try-restart", 0);
    s.expect("status", 3);
    s.scratch.wait_no_process_left();
}

#[test]
fn init_script_rejects_unknown_and_unimplemented_actions() {
    let s = Service::new();
    let out = s.expect("frobnicate", 2);
    assert!(out.stderr.contains("usage:"), "no usage line\n{out}");
    s.expect("reload", 3);
    s.expect("status", 3);
}

#[test]
fn init_script_start_of_a_missing_program_exits_5_and_leaves_nothing() {
    let mut s = Service::new();
    s.daemon = s.scratch.join("no-such-program");
    let out = s.expect("start", 5);
    assert!(out.stderr.contains("no-such-program"), "the failure does not name the program\n{out}");
    s.expect("status", 3);
    assert!(!s.pidfile().exists(), "a failed start left a pidfile");
}

#[test]
fn start_stop_daemon_stops_and_checks_a_daemon_by_the_pidfile_conjure_wrote() {
    // Found in /usr/sbin and run from there: a normal user's PATH may lack the sbin dirs.
    let Some(start_stop_daemon) = find_tool("start-stop-daemon", "dpkg") else {
        return;
    };
    let s = Service::new();
    s.expect("start", 0);
    let pid = s.running_pid();
    let pidfile = s.pidfile();

    let ssd = |args: &[&str]| {
        let mut c = TestCommand::new(&start_stop_daemon);
        c.args(args).args([pidfile.as_os_str()]);
        c.run()
    };
    // --status: 0 running, 1 dead with a pidfile, 3 not running, 4 unknown.
    ssd(&["--status", "--pidfile"]).assert_code(0);
    ssd(&["--stop", "--retry", "5", "--pidfile"]).assert_code(0);
    assert!(!Proc(pid).alive(), "start-stop-daemon said stopped, but pid {pid} runs");

    // start-stop-daemon leaves the pidfile behind; both tools call that "dead".
    ssd(&["--status", "--pidfile"]).assert_code(1);
    let out = s.expect("status", 1);
    assert!(out.stdout.contains("dead"), "{out}");
    // And the script starts over that stale pidfile.
    s.expect("start", 0);
    let again = s.running_pid();
    assert_ne!(again, pid);
    ssd(&["--status", "--pidfile"]).assert_code(0);
    s.expect("stop", 0);
    wait_dead(again);
    ssd(&["--status", "--pidfile"]).assert_code(3);
    s.scratch.wait_no_process_left();
}
