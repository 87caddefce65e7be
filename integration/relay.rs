//! Resident conjure as the main process of a `Type=notify` service: what it relays of the
//! program's sd_notify, with which pid and which fds, what the program's environment says about
//! the supervisor's watchdog, and that neither a hostile sender nor a supervisor that stops
//! reading can hurt it. Checked against a fake supervisor socket with `SO_PASSCRED` (every
//! message says who sent it, as systemd sees it); the real systemd is in `systemd/units.rs`.

use std::ffi::OsString;
use std::io::{IoSlice, Read, Seek};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use crate::support::*;

fn readyprog() -> PathBuf {
    example_bin("readyprog")
}

/// `conjure -f -p PIDFILE FLAGS -- readyprog MODE` under the fake supervisor, with `env` set.
fn resident(s: &Scratch, sup: &FakeSupervisor, flags: &[&str], env: &[(&str, &str)], mode: &[&str]) -> Running {
    let mut c = TestCommand::conjure(["-f", "-p"]);
    c.args([s.join("d.pid")]).args(flags).args(["--"]).args([readyprog()]);
    c.args([OsString::from("--marker"), s.join("marker").into()]).args(mode);
    c.env("NOTIFY_SOCKET", &sup.path);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn()
}

/// The one child of resident conjure: the program.
fn program_of(conjure: i32) -> i32 {
    wait_until(PATIENCE, "the program under conjure", || children(conjure).first().copied())
}

#[test]
fn watchdog_pid_reaches_the_program_naming_the_program() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    // As systemd sets them for the main process: WATCHDOG_PID names conjure ($$ becomes conjure).
    let mut c = TestCommand::new("sh");
    c.args(["-c", r#"WATCHDOG_PID=$$ exec "$@""#, "sh"]).args([conjure_bin()]);
    c.args(["-f", "-p"]).args([s.join("d.pid")]).args(["--ready-on", "notify", "--"]).args([readyprog()]);
    c.args(["notify", "READY=1"]).env("NOTIFY_SOCKET", &sup.path).env("WATCHDOG_USEC", "5000000");
    let running = c.spawn();
    assert_eq!(sup.next(), "READY=1\n");
    let conjure = running.pid();
    let env = Proc(conjure).environ();
    assert_eq!(env.get("WATCHDOG_PID"), Some(&conjure.to_string()), "the test set WATCHDOG_PID to conjure's pid");
    let program = program_of(conjure);
    let env = Proc(program).environ();
    assert_eq!(env.get("WATCHDOG_PID"), Some(&program.to_string()), "the program's WATCHDOG_PID");
    assert_eq!(env.get("WATCHDOG_USEC").map(String::as_str), Some("5000000"));
    drop(running);
}

#[test]
fn watchdog_variables_meant_for_another_process_are_removed() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let env = [("WATCHDOG_USEC", "5000000"), ("WATCHDOG_PID", "1")];
    let running = resident(&s, &sup, &["--ready-on", "notify"], &env, &["notify", "READY=1"]);
    assert_eq!(sup.next(), "READY=1\n");
    let env = Proc(program_of(running.pid())).environ();
    assert!(!env.contains_key("WATCHDOG_PID") && !env.contains_key("WATCHDOG_USEC"), "{env:?}");
}

#[test]
fn the_programs_watchdog_ping_reaches_the_supervisor_from_conjures_pid() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let msgs = ["notify", "READY=1", "@SLEEP:50", "MAINPID=1\\nWATCHDOG=1", "WATCHDOG=trigger"];
    let running = resident(&s, &sup, &["--ready-on", "notify"], &[("WATCHDOG_USEC", "5000000")], &msgs);
    let conjure = running.pid();
    let ready = sup.next_message();
    assert_eq!((ready.text.as_str(), ready.pid), ("READY=1\n", Some(conjure)));
    let ping = sup.next_message();
    assert_eq!(ping.text, "WATCHDOG=1", "MAINPID= is dropped: conjure is the main process");
    assert_eq!(ping.pid, Some(conjure), "the ping must come from the main process");
    assert_eq!(sup.next_message().text, "WATCHDOG=trigger");
}

#[test]
fn an_fdstore_datagram_reaches_the_supervisor_with_its_fd() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let msgs = ["notify", "READY=1", "@FD:FDSTORE=1\\nFDNAME=state"];
    let running = resident(&s, &sup, &["--ready-on", "notify"], &[], &msgs);
    let conjure = running.pid();
    assert_eq!(sup.next(), "READY=1\n");
    let program = program_of(conjure);
    let stored = sup.next_message();
    assert_eq!(stored.text, "FDSTORE=1\nFDNAME=state");
    assert_eq!(stored.pid, Some(conjure));
    assert_eq!(stored.fds.len(), 1, "the fd did not come with the datagram");
    let mut file = std::fs::File::from(stored.fds.into_iter().next().unwrap());
    let mut content = String::new();
    file.rewind().unwrap();
    file.read_to_string(&mut content).unwrap();
    assert_eq!(content, format!("stored by pid {program}"), "the fd is the program's memfd");
    drop(running);
}

/// Sends `text` with `fds` to the abstract socket `name` (a stranger's sendmsg).
fn send_with_fds(name: &str, text: &[u8], fds: &[OwnedFd]) {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let sock = UnixDatagram::unbound().unwrap();
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let addr = UnixAddr::new_abstract(name.as_bytes()).unwrap();
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(text)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        Some(&addr),
    )
    .unwrap();
}

#[test]
fn a_strangers_datagrams_with_fds_leave_conjures_fd_count_unchanged() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let go = s.join("go");
    let msgs = ["notify".to_string(), "READY=1".into(), format!("@WAITFILE:{}", go.display()), "STATUS=after".into()];
    let msgs: Vec<&str> = msgs.iter().map(String::as_str).collect();
    let running = resident(&s, &sup, &["--ready-on", "notify"], &[], &msgs);
    let conjure = running.pid();
    assert_eq!(sup.next(), "READY=1\n");
    let program = program_of(conjure);
    let socket = Proc(program).environ()["NOTIFY_SOCKET"].clone();
    let name = socket.strip_prefix('@').expect("an abstract socket");
    let before = fd_count(conjure);
    // Three datagrams of 20 fds each: more than fit a 16-fd control buffer.
    for i in 0..3 {
        let fds: Vec<OwnedFd> = (0..20).map(|_| std::fs::File::open("/dev/null").unwrap().into()).collect();
        send_with_fds(name, format!("FDSTORE=1\nSTATUS=stranger {i}").as_bytes(), &fds);
    }
    // The program speaks after the stranger: once its datagram is relayed, conjure has read
    // the stranger's, which came first.
    std::fs::write(&go, "").unwrap();
    assert_eq!(sup.next(), "STATUS=after", "a stranger's datagram was relayed, or the program's lost");
    let after = fd_count(conjure);
    assert_eq!(after, before, "conjure's fds grew from {before} to {after}: {:?}", Proc(conjure).fds());
    eprintln!("conjure's fds: {before} before 3 x 20 fds from a stranger, {after} after");
    drop(running);
}

/// Resident conjure whose program sends 2000 status lines, then `READY=1`, to a supervisor
/// that does not read yet; returns once the program is held up sending (conjure stopped
/// reading its socket once the supervisor's queue was full).
fn flooding(s: &Scratch, sup: &FakeSupervisor) -> Running {
    let msgs = ["notify", "@FLOOD:2000", "READY=1"];
    let running = resident(s, sup, &["--ready-on", "notify"], &[], &msgs);
    let program = wait_until(PATIENCE, "the program", || children(running.pid()).first().copied());
    wait_until(PATIENCE, "the program to be held up sending to conjure", || {
        let wchan = std::fs::read_to_string(format!("/proc/{program}/wchan")).unwrap_or_default();
        (wchan == "unix_wait_for_peer").then_some(())
    });
    running
}

/// What the program says just before it exits reaches the supervisor, even when the
/// supervisor was slow: resident conjure relays what it held back on its own socket (it stops
/// reading there while the supervisor's queue is full) after the program is gone. 70 statuses
/// fill the supervisor's socket and conjure's queue, so the last ones still wait at conjure's
/// socket when the program ends; the supervisor reads only then.
#[test]
fn the_programs_last_words_reach_a_slow_supervisor_after_it_exits() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let msgs = ["--then-exit", "0", "notify", "READY=1", "@FLOOD:70", "STOPPING=1\\nSTATUS=bye"];
    let running = resident(&s, &sup, &["--ready-on", "notify"], &[], &msgs);
    let program = program_of(running.pid());
    wait_dead(program);
    let seen = sup.until("STATUS=bye");
    assert_eq!(seen.len(), 72, "READY=1, 70 statuses and the last words, none lost: {seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("STOPPING=1\nSTATUS=bye"));
    running.wait().assert_code(0);
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
}

/// Design: sending to the supervisor never blocks the loop. A supervisor that never reads
/// (its socket's queue is full after a few datagrams) must not stop signal forwarding.
#[test]
fn a_supervisor_that_does_not_read_does_not_block_signal_forwarding() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let running = flooding(&s, &sup);
    let conjure = running.pid();
    let program = program_of(conjure);
    send_signal(conjure, libc::SIGTERM);
    let out = running.wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "conjure did not forward TERM and end with it\n{out}");
    wait_dead(program);
    drop(sup);
}

/// A program that sends faster than its supervisor reads is held up, as it would be sending
/// to the supervisor itself: when the supervisor reads at last, every message arrives, in
/// order, conjure's `READY=1` after the program's statuses. Nothing is dropped.
#[test]
fn a_supervisor_that_reads_late_gets_every_message_in_order() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let running = flooding(&s, &sup);
    let seen = sup.until("READY=1");
    let numbers: Vec<usize> = seen[..seen.len() - 1]
        .iter()
        .map(|m| m.strip_prefix("STATUS=flood ").unwrap_or_else(|| panic!("not a status line: {m:?}")).parse().unwrap())
        .collect();
    assert_eq!(numbers, (0..2000).collect::<Vec<_>>(), "status lines lost or out of order");
    assert_eq!(seen.last().map(|m| m.trim_end()), Some("READY=1"));
    drop(running);
}

#[test]
fn readiness_notify_without_notify_socket_exits_64_naming_it() {
    let s = Scratch::new();
    let mut c = TestCommand::conjure(["-p"]);
    c.args([s.join("d.pid")]).args(["--readiness", "notify", "--", "sleep", "30"]);
    let out = c.expect_code(64);
    assert!(out.one_line_of_stderr().contains("NOTIFY_SOCKET"), "{out}");
    assert!(!s.join("d.pid").exists());
    s.wait_no_process_left();
}

/// The library's background `Sink::Notify`: the original process is the main process the
/// supervisor knows (`NotifyAccess=main`), so it says `READY=1`, with `MAINPID=` naming the
/// daemon, before it exits.
#[test]
fn library_notify_sink_says_ready_from_the_original_process_with_mainpid() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let mut c = TestCommand::new(libdaemon());
    c.args(["--pidfile"]).args([s.join("d.pid")]).args(["--notify", "ready"]).env("NOTIFY_SOCKET", &sup.path);
    let out = c.expect_success();
    let daemon = Daemon::from_pidfile(&s.join("d.pid"));
    // The daemon's status before it is ready, passed on by the original process too.
    let status = sup.next_message();
    assert_eq!((status.text.as_str(), status.pid), ("STATUS=starting\n", Some(out.pid)));
    let m = sup.next_message();
    assert_eq!(m.text, format!("MAINPID={}\nREADY=1\n", daemon.pid));
    assert_eq!(m.pid, Some(out.pid), "READY=1 came from pid {:?}, not from the original process", m.pid);
}

#[test]
fn an_unreachable_notify_socket_fails_the_start_saying_so() {
    // An abstract NOTIFY_SOCKET nobody listens on: the supervisor cannot be told.
    let s = Scratch::new();
    let mut c = TestCommand::conjure(["-f", "-p"]);
    c.args([s.join("d.pid")]).args(["--ready-on", "notify", "--"]).args([readyprog()]).args(["notify", "READY=1"]);
    c.env("NOTIFY_SOCKET", format!("@conjure-test-nobody-{}", std::process::id()));
    let out = c.run();
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.one_line_of_stderr().contains("NOTIFY_SOCKET"), "{out}");
    assert!(!s.join("d.pid").exists());
    s.wait_no_process_left();
}
