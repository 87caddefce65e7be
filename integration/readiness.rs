//! Readiness sources and sinks, driven through the real binary.
//!
//! `readyprog` becomes ready in the way each source watches, after a delay, and writes a marker
//! file just *before* it does: a launcher that reported ready while the marker was missing
//! reported too early. Promptness is bounded by generous deadlines only (an early death must
//! be reported well within a readiness timeout set far longer), never by tight timings.
//! The notify sink is checked against a fake `NOTIFY_SOCKET` listener here; the real systemd
//! comes in the systemd suite.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::*;

fn readyprog() -> PathBuf {
    example_bin("readyprog")
}

/// `conjure -p PIDFILE FLAGS -- readyprog --marker MARKER --delay DELAY MODE ARGS`.
fn launch(s: &Scratch, flags: &[&str], delay_ms: u64, mode: &[&str]) -> TestCommand {
    let mut c = TestCommand::conjure(["-p"]);
    c.args([s.join("d.pid")]).args(flags).args(["--"]).args([readyprog()]);
    c.args([OsString::from("--marker"), s.join("marker").into()]);
    c.args(["--delay".to_string(), delay_ms.to_string()]).args(mode);
    c
}

/// Asserts the pidfile sink left no hidden temporary file behind.
fn assert_no_temporary_pidfile(s: &Scratch) {
    let hidden: Vec<_> = std::fs::read_dir(s.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "temporary pidfile left behind: {hidden:?}");
}

/// Asserts the launcher said ready only after the program was: the marker exists.
fn assert_ready_in_order(s: &Scratch) {
    assert!(s.join("marker").exists(), "the launcher reported ready before the program wrote its marker");
}

#[test]
fn notify_source_reports_ready_only_after_ready_1() {
    let s = Scratch::new();
    launch(&s, &["--ready-on", "notify"], 300, &["notify", "STATUS=warming up", "READY=1"]).expect_success();
    assert_ready_in_order(&s);
    let d = Daemon::from_pidfile(&s.join("d.pid"));
    assert!(d.proc().alive());
    assert!(d.proc().environ()["NOTIFY_SOCKET"].starts_with('@'), "the hosted socket is abstract");
}

#[test]
fn notify_from_a_descendant_of_the_program_counts() {
    let s = Scratch::new();
    launch(&s, &["--ready-on", "notify"], 100, &["notify-child", "READY=1"]).expect_success();
    assert_ready_in_order(&s);
    let _d = Daemon::from_pidfile(&s.join("d.pid"));
}

#[test]
fn notify_from_a_foreign_process_is_ignored() {
    let s = Scratch::new();
    let running =
        launch(&s, &["--ready-on", "notify", "--ready-timeout", "2s", "--kill-after", "1s"], 0, &["never"]).spawn();
    let pid = wait_until(PATIENCE, "the pidfile", || {
        std::fs::read_to_string(s.join("d.pid")).ok()?.trim().parse::<i32>().ok()
    });
    let socket =
        wait_until(PATIENCE, "the program's NOTIFY_SOCKET", || Proc(pid).environ().get("NOTIFY_SOCKET").cloned());
    // This test process is no descendant of the program: its READY=1 must not count.
    let name = socket.strip_prefix('@').expect("abstract socket");
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    UnixDatagram::unbound().unwrap().send_to_addr(b"READY=1", &addr).unwrap();
    let out = running.wait();
    out.assert_code(75);
    assert!(out.one_line_of_stderr().contains("was not ready after 2s"), "{out}");
    wait_dead(pid);
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
}

#[test]
fn garbage_datagrams_are_survived() {
    let s = Scratch::new();
    let msgs = ["notify", "@EMPTY", "@HUGE", "@BINARY", "NO_EQUALS", "EXTEND_TIMEOUT_USEC=zz", "READY=1"];
    launch(&s, &["--ready-on", "notify"], 0, &msgs).expect_success();
    let _d = Daemon::from_pidfile(&s.join("d.pid"));
}

#[test]
fn program_exiting_before_ready_exits_70_at_once_with_its_status() {
    let s = Scratch::new();
    let started = Instant::now();
    let out = launch(&s, &["--ready-on", "notify", "--ready-timeout", "60s"], 100, &["exit", "3"]).expect_code(70);
    assert!(started.elapsed() < Duration::from_secs(30), "death noticed only after {:?}", started.elapsed());
    let line = out.one_line_of_stderr();
    assert!(line.contains("readyprog") && line.contains("exited with status 3 before it was ready"), "{out}");
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
    s.wait_no_process_left();
}

#[test]
fn program_killed_before_ready_exits_70_naming_the_signal() {
    let s = Scratch::new();
    let out = launch(&s, &["--ready-on", "tcp:127.0.0.1:1", "--ready-timeout", "60s"], 100, &["kill-self", "9"])
        .expect_code(70);
    assert!(out.one_line_of_stderr().contains("was killed by signal 9 (SIGKILL) before it was ready"), "{out}");
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
    s.wait_no_process_left();
}

#[test]
fn readiness_timeout_stops_the_program_and_exits_75() {
    let s = Scratch::new();
    let out = launch(&s, &["--ready-on", "notify", "--ready-timeout", "500ms"], 0, &["never"]).expect_code(75);
    assert!(out.one_line_of_stderr().contains("was not ready after 500ms; stopped it"), "{out}");
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
    s.wait_no_process_left();
}

#[test]
fn readiness_timeout_kills_a_program_that_ignores_term() {
    let s = Scratch::new();
    let mut c = TestCommand::conjure(["-p"]);
    c.args([s.join("d.pid")]).args(["--ready-on", "notify", "--ready-timeout", "300ms", "--kill-after", "300ms", "--"]);
    c.args([testprog()]).args(["ignore-term", "60"]);
    c.expect_code(75);
    s.wait_no_process_left();
}

#[test]
fn extend_timeout_usec_extends_the_readiness_timeout() {
    let s = Scratch::new();
    let msgs = ["notify", "EXTEND_TIMEOUT_USEC=5000000", "@SLEEP:1500", "READY=1"];
    launch(&s, &["--ready-on", "notify", "--ready-timeout", "1s"], 0, &msgs).expect_success();
    let _d = Daemon::from_pidfile(&s.join("d.pid"));
}

#[test]
fn tcp_source_waits_for_the_listener() {
    let s = Scratch::new();
    let port = free_port().to_string();
    launch(&s, &["--ready-on", &format!("tcp:127.0.0.1:{port}")], 300, &["listen-tcp", &port]).expect_success();
    assert_ready_in_order(&s);
    let _d = Daemon::from_pidfile(&s.join("d.pid"));
}

#[test]
fn unix_source_waits_for_the_listener() {
    let s = Scratch::new();
    let sock = s.join("app.sock");
    let source = format!("unix:{}", sock.display());
    launch(&s, &["--ready-on", &source], 300, &["listen-unix", sock.to_str().unwrap()]).expect_success();
    assert_ready_in_order(&s);
    let _d = Daemon::from_pidfile(&s.join("d.pid"));
}

#[test]
fn fd_source_waits_for_a_newline_on_that_fd() {
    let s = Scratch::new();
    launch(&s, &["--ready-on", "fd:5"], 300, &["fd-write", "5"]).expect_success();
    assert_ready_in_order(&s);
    let d = Daemon::from_pidfile(&s.join("d.pid"));
    assert!(d.proc().fds().contains_key(&5), "the program keeps its notification fd");
}

/// A program that closes its readiness fd without a newline will never be ready by it: conjure
/// lets go of the pipe. It once swapped in a fresh pipe and kept both of its ends for the rest
/// of its life.
#[test]
fn fd_source_closed_without_a_newline_leaves_conjure_holding_no_pipe() {
    let s = Scratch::new();
    let go = s.join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.01; done; exec 5>&-; exec sleep 30", go.display());
    let mut c = TestCommand::conjure(["-f", "-p"]);
    c.args([s.join("d.pid")]).args(["--ready-on", "fd:5", "--", "sh", "-c", &script]);
    let running = c.spawn();
    let conjure = running.pid();
    let program = wait_until(PATIENCE, "the program", || children(conjure).first().copied());
    let pipe = wait_until(PATIENCE, "the program's readiness fd", || Proc(program).fds().get(&5).cloned());
    assert!(pipe.to_string_lossy().starts_with("pipe:"), "fd 5 is {}", pipe.display());
    // Pipes conjure had before (its report pipe, one it inherited) are none of this test's
    // business; one it takes after the program closed its fd is.
    let pipes = || -> Vec<PathBuf> {
        Proc(conjure).fds().into_values().filter(|t| t.to_string_lossy().starts_with("pipe:") && *t != pipe).collect()
    };
    let before = pipes();
    std::fs::write(&go, "").unwrap();
    wait_until(PATIENCE, "conjure to let go of the readiness pipe", || {
        (!Proc(conjure).fds().values().any(|t| *t == pipe)).then_some(())
    });
    let new: Vec<PathBuf> = pipes().into_iter().filter(|p| !before.contains(p)).collect();
    assert!(new.is_empty(), "conjure took pipes it has no use for: {new:?}");
    drop(running);
}

#[test]
fn fd_source_at_the_lowest_free_fd_does_not_collide_with_conjures_own_fds() {
    // With a pidfile, /dev/null and the report pipe, conjure's own fds would take 3, 4, 5, …
    for n in ["3", "4", "5", "6"] {
        let s = Scratch::new();
        launch(&s, &["--ready-on", &format!("fd:{n}"), "--ready-timeout", "10s"], 0, &["fd-write", n]).expect_success();
        let d = Daemon::from_pidfile(&s.join("d.pid"));
        assert!(d.proc().fds().contains_key(&n.parse().unwrap()), "fd {n}: the program lacks its readiness fd");
    }
}

#[test]
fn file_source_waits_for_the_file() {
    let s = Scratch::new();
    let file = s.join("ready-file");
    let source = format!("file:{}", file.display());
    launch(&s, &["--ready-on", &source], 300, &["touch", file.to_str().unwrap()]).expect_success();
    assert_ready_in_order(&s);
    let _d = Daemon::from_pidfile(&s.join("d.pid"));
}

#[test]
fn cmd_source_waits_for_the_command_to_succeed() {
    let s = Scratch::new();
    let file = s.join("ready-file");
    let source = format!("cmd:test -e {}", file.display());
    launch(&s, &["--ready-on", &source], 300, &["touch", file.to_str().unwrap()]).expect_success();
    assert_ready_in_order(&s);
    let _d = Daemon::from_pidfile(&s.join("d.pid"));
}

/// Resident conjure reaps the orphans it adopts with `waitpid(-1)`, which takes whichever
/// child ended, a `cmd:` check's too. Without pidfds (before Linux 5.3) the loop learns of the
/// check's end from SIGCHLD, and reaped it as an orphan every time: the check never finished,
/// and the program never became ready.
#[test]
fn a_cmd_source_becomes_ready_while_resident_conjure_reaps_orphans_without_pidfds() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let file = s.join("ready-file");
    let mut c = TestCommand::conjure_without_pidfds(["-f", "-p"]);
    c.args([s.join("d.pid")]).args(["--ready-on", &format!("cmd:test -e {}", file.display()), "--ready-timeout", "5s"]);
    c.args(["--".into(), readyprog(), "--marker".into(), s.join("marker")]);
    c.args(["--orphan", "100", "--delay", "300", "touch"]).args([&file]);
    c.env("NOTIFY_SOCKET", &sup.path);
    let running = c.spawn();
    let Some(ready) = sup.receive(PATIENCE) else { panic!("no READY=1 within {PATIENCE:?}\n{}", running.kill()) };
    assert_eq!(ready.text, "READY=1\n");
    assert_ready_in_order(&s);
    drop(running);
}

#[test]
fn bad_readiness_values_exit_64_and_start_nothing() {
    for flags in [
        &["--ready-on", "bogus"][..],
        &["--ready-on", "fd:2"],
        &["--ready-on", "tcp:host"],
        &["--readiness", "bogus"],
        &["--readiness", "fd:99"],
        &["--ready-timeout", "soon"],
        &["--kill-after", "-1s"],
        &["--readiness", "pidfile", "-f", "--no-lock", "-p"],
    ] {
        let s = Scratch::new();
        let out = launch(&s, flags, 0, &["never"]).run();
        out.assert_code(64);
        assert!(!s.join("d.pid").exists(), "pidfile created for {flags:?}");
        s.wait_no_process_left();
    }
}

/// A host that does not resolve is a usage error before anything starts, naming the host; it
/// was a timeout 90 s later (and a resolver queried inside the event loop on every probe).
#[test]
fn a_tcp_host_that_does_not_resolve_exits_64_at_once_naming_it() {
    for flags in [
        &["--ready-on", "tcp:nonexistent.invalid:80"][..],
        &["-f", "--watchdog", "tcp:nonexistent.invalid:80", "--watchdog-timeout", "1s"],
    ] {
        let s = Scratch::new();
        let started = Instant::now();
        let out = launch(&s, flags, 0, &["never"]).run();
        out.assert_code(64);
        assert!(out.one_line_of_stderr().contains("`nonexistent.invalid`"), "{out}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert!(!s.join("d.pid").exists(), "pidfile created for {flags:?}");
        s.wait_no_process_left();
    }
}

#[test]
fn pidfile_sink_publishes_the_pidfile_only_when_ready_without_waiting() {
    let s = Scratch::new();
    let out =
        launch(&s, &["--ready-on", "notify", "--readiness", "pidfile"], 800, &["notify", "READY=1"]).expect_success();
    assert!(!s.join("marker").exists(), "the launcher waited for readiness\n{out}");
    assert!(!s.join("d.pid").exists(), "the pidfile appeared before the program was ready");
    let pid = wait_until(PATIENCE, "the pidfile", || std::fs::read_to_string(s.join("d.pid")).ok());
    assert_ready_in_order(&s);
    let d = Daemon::from_pidfile(&s.join("d.pid"));
    assert_eq!(pid.trim().parse::<i32>().unwrap(), d.pid);
    assert!(d.proc().cmdline().iter().any(|a| a.ends_with("readyprog")));
    assert!(lock_is_held(&s.join("d.pid")), "the published pidfile is locked");
    assert_no_temporary_pidfile(&s);
}

#[test]
fn fd_sink_writes_a_newline_once_ready_and_closes_it() {
    let s = Scratch::new();
    let sink = s.join("sink");
    let mut c = TestCommand::new("sh");
    c.args(["-c", r#"exec "$@" 5>"$SINK""#, "sh"]).env("SINK", &sink);
    c.args([conjure_bin()]).args(["-p"]).args([s.join("d.pid")]).args([
        "--ready-on",
        "notify",
        "--readiness",
        "fd:5",
        "--",
    ]);
    c.args([readyprog()]).args([OsString::from("--marker"), s.join("marker").into()]);
    c.args(["--delay", "300", "notify", "READY=1"]);
    c.expect_success();
    assert_ready_in_order(&s);
    assert_eq!(std::fs::read_to_string(&sink).unwrap(), "\n");
    let d = Daemon::from_pidfile(&s.join("d.pid"));
    assert!(!d.proc().fds().contains_key(&5), "the program inherited the supervisor's notification fd");
}

#[test]
fn notify_sink_sends_mainpid_status_and_ready_from_the_background() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let mut c =
        launch(&s, &["--ready-on", "notify", "--readiness", "notify"], 200, &["notify", "STATUS=listening", "READY=1"]);
    c.env("NOTIFY_SOCKET", &sup.path);
    c.expect_success();
    let d = Daemon::from_pidfile(&s.join("d.pid"));
    let m = sup.next();
    assert_eq!(m, format!("MAINPID={}\nSTATUS=listening\nREADY=1\n", d.pid));
}

#[test]
fn notify_sink_works_with_an_abstract_notify_socket() {
    let s = Scratch::new();
    use std::os::linux::net::SocketAddrExt;
    let name = format!("conjure-test-{}-{}", std::process::id(), free_port());
    let sock =
        UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let port = free_port().to_string();
    let mut c = launch(
        &s,
        &["--ready-on", &format!("tcp:127.0.0.1:{port}"), "--readiness", "notify"],
        0,
        &["listen-tcp", &port],
    );
    c.env("NOTIFY_SOCKET", format!("@{name}"));
    c.expect_success();
    let d = Daemon::from_pidfile(&s.join("d.pid"));
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 on the abstract socket");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("MAINPID={}\nREADY=1\n", d.pid));
}

/// Starts `conjure -f` under a fake supervisor; returns it running.
fn resident(s: &Scratch, sup: &FakeSupervisor, flags: &[&str], delay_ms: u64, mode: &[&str]) -> Running {
    let mut c = TestCommand::conjure(["-f", "-p"]);
    c.args([s.join("d.pid")]).args(flags).args(["--"]).args([readyprog()]);
    c.args([OsString::from("--marker"), s.join("marker").into()]);
    c.args(["--delay".to_string(), delay_ms.to_string()]).args(mode);
    c.env("NOTIFY_SOCKET", &sup.path);
    c.spawn()
}

#[test]
fn foreground_with_a_source_stays_resident_notifies_as_main_and_dies_of_the_programs_signal() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let port = free_port().to_string();
    let running = resident(&s, &sup, &["--ready-on", &format!("tcp:127.0.0.1:{port}")], 300, &["listen-tcp", &port]);
    let conjure = running.pid();
    assert_eq!(sup.next(), "READY=1\n", "resident conjure is the main process: no MAINPID");
    assert_ready_in_order(&s);
    assert_eq!(read_pidfile(&s.join("d.pid")), conjure, "the pidfile names resident conjure");
    let kids = children(conjure);
    assert_eq!(kids.len(), 1, "one child: the program");
    let program = Daemon::new(kids[0], None);
    assert!(program.proc().cmdline().iter().any(|a| a.ends_with("readyprog")));
    assert_eq!(
        Proc(conjure).sigset("SigBlk") & sigbit(libc::SIGTERM),
        sigbit(libc::SIGTERM),
        "signals arrive via signalfd"
    );
    assert_eq!(program.proc().sigset("SigBlk"), 0, "the program's mask is clear");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(conjure), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = running.wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "conjure dies of the signal its program died of\n{out}");
    wait_dead(program.pid);
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
}

#[test]
fn resident_conjure_relays_status_and_reload_messages() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let msgs = [
        "notify",
        "STATUS=loading",
        "READY=1",
        "@SLEEP:100",
        "RELOADING=1\\nMONOTONIC_USEC=1",
        "STATUS=reloaded\\nREADY=1",
    ];
    let running = resident(&s, &sup, &["--ready-on", "notify"], 0, &msgs);
    let seen = sup.until("STATUS=reloaded");
    assert_eq!(seen, ["STATUS=loading", "READY=1\n", "RELOADING=1\nMONOTONIC_USEC=1", "STATUS=reloaded\nREADY=1"]);
    drop(running);
}

#[test]
fn resident_conjure_exits_with_the_programs_exit_code() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let out = resident(&s, &sup, &["--supervise"], 0, &["exit", "7"]).wait();
    out.assert_code(7);
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
}

#[test]
fn resident_conjure_reaps_orphans_as_subreaper() {
    let s = Scratch::new();
    let mut c = TestCommand::conjure(["-f", "--supervise", "-p"]);
    c.args([s.join("d.pid")]).args(["--", "sh", "-c", "sh -c 'sleep 0.2 &' ; exec sleep 30"]);
    let running = c.spawn();
    let conjure = running.pid();
    // The inner shell exits at once; its `sleep 0.2` is orphaned to conjure, then exits.
    wait_until(PATIENCE, "the orphan to be adopted and reaped", || {
        let kids = children(conjure);
        let zombies = kids.iter().filter(|p| Proc(**p).stat().is_some_and(|st| st.state == 'Z')).count();
        (kids.len() == 1 && zombies == 0).then_some(())
    });
    drop(running);
}

#[test]
fn as_pid1_conjure_forwards_term_and_exits_128_plus_n() {
    require_root!();
    let s = Scratch::new();
    let running = as_pid1(&s, &[], argv!["sleep", "30"]);
    let conjure = pid1_under(running.pid());
    wait_until(PATIENCE, "the program under PID 1", || children(conjure).first().copied());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(conjure), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = running.wait();
    // unshare --fork reports its child's exit: PID 1 cannot die of a signal, so 128+15.
    out.assert_code(143);
}

#[test]
fn as_pid1_conjure_reaps_zombies_and_exits_with_the_programs_code() {
    require_root!();
    let s = Scratch::new();
    let running = as_pid1(&s, &[], argv!["sh", "-c", "sh -c 'sleep 0.1 &'; sleep 0.5; exit 4"]);
    let conjure = pid1_under(running.pid());
    let program = wait_until(PATIENCE, "the program under PID 1", || children(conjure).first().copied());
    wait_until(PATIENCE, "the orphaned sleep to be reaped by PID 1", || {
        let zombies =
            children(conjure).into_iter().filter(|p| Proc(*p).stat().is_some_and(|st| st.state == 'Z')).count();
        (zombies == 0 && children(conjure).iter().all(|p| *p == program)).then_some(())
    });
    running.wait().assert_code(4);
}

/// Every source with every sink that makes sense in the background: the launcher (or, for the
/// pidfile sink, its watcher) reports ready only after the program is, through that sink.
#[test]
fn every_source_works_with_every_sink() {
    for source in ["notify", "fd:5", "tcp", "unix", "file", "cmd"] {
        for sink in ["pipe", "notify", "pidfile", "fd:6"] {
            let s = Scratch::new();
            let port = free_port().to_string();
            let file = s.join("ready-file");
            let sock = s.join("app.sock");
            let (source_arg, mode): (String, Vec<String>) = match source {
                "notify" => ("notify".into(), vec!["notify".into(), "READY=1".into()]),
                "fd:5" => ("fd:5".into(), vec!["fd-write".into(), "5".into()]),
                "tcp" => (format!("tcp:127.0.0.1:{port}"), vec!["listen-tcp".into(), port.clone()]),
                "unix" => (format!("unix:{}", sock.display()), vec!["listen-unix".into(), sock.display().to_string()]),
                "file" => (format!("file:{}", file.display()), vec!["touch".into(), file.display().to_string()]),
                _ => (format!("cmd:test -e {}", file.display()), vec!["touch".into(), file.display().to_string()]),
            };
            let sup = FakeSupervisor::new(&s);
            let sink_file = s.join("sink");
            let mut c = TestCommand::new("sh");
            c.args(["-c", r#"exec "$@" 6>"$SINK""#, "sh"]).env("SINK", &sink_file).env("NOTIFY_SOCKET", &sup.path);
            c.args([conjure_bin()]).args(["-p"]).args([s.join("d.pid")]);
            c.args(["--ready-on", &source_arg, "--readiness", sink, "--"]).args([readyprog()]);
            c.args([OsString::from("--marker"), s.join("marker").into()]).args(["--delay", "150"]).args(&mode);
            let out = c.run();
            out.assert_code(0);
            let what = format!("{source} -> {sink}");
            match sink {
                "pidfile" => {
                    wait_until(PATIENCE, &format!("{what}: the pidfile"), || s.join("d.pid").exists().then_some(()));
                }
                "notify" => {
                    let m = sup.next();
                    assert!(m.ends_with("READY=1\n") && m.starts_with("MAINPID="), "{what}: {m:?}");
                }
                "fd:6" => assert_eq!(std::fs::read_to_string(&sink_file).unwrap(), "\n", "{what}"),
                _ => {}
            }
            assert!(s.join("marker").exists(), "{what}: reported ready before the program was");
            let d = Daemon::from_pidfile(&s.join("d.pid"));
            assert!(d.proc().alive(), "{what}: the daemon is not running");
        }
    }
}

#[test]
fn idle_resident_conjure_makes_no_wakeups() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let running = resident(&s, &sup, &["--ready-on", "notify"], 0, &["notify", "READY=1"]);
    assert_eq!(sup.next(), "READY=1\n");
    let conjure = running.pid();
    let switches = || {
        let p = Proc(conjure);
        (p.status("voluntary_ctxt_switches"), p.status("nonvoluntary_ctxt_switches"))
    };
    // Once conjure has settled into its wait (two readings 100 ms apart agree), a whole second
    // must pass without it running at all.
    let mut last = switches();
    let before = wait_until(PATIENCE, "resident conjure to settle", || {
        std::thread::sleep(Duration::from_millis(100));
        let now = switches();
        let settled = now == last;
        last = now.clone();
        settled.then_some(now)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(switches(), before, "resident conjure woke up while nothing happened");
    drop(running);
}

#[test]
fn a_port_held_by_a_stranger_is_not_ready_and_the_holder_is_named() {
    let s = Scratch::new();
    let stranger = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stranger.local_addr().unwrap().port().to_string();
    let out = launch(&s, &["--ready-on", &format!("tcp:127.0.0.1:{port}")], 0, &["listen-tcp", &port]).expect_code(69);
    let line = out.one_line_of_stderr();
    let me = std::process::id();
    assert!(line.contains(&format!("port {port} is already in use by pid {me} (")), "{out}");
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
    assert!(!s.join("marker").exists(), "the program was started");
    s.wait_no_process_left();
}

#[test]
fn a_unix_path_held_by_a_stranger_is_not_ready_and_the_holder_is_named() {
    let s = Scratch::new();
    let sock = s.join("app.sock");
    let _stranger = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let source = format!("unix:{}", sock.display());
    let out = launch(&s, &["--ready-on", &source], 0, &["listen-unix", sock.to_str().unwrap()]).expect_code(69);
    let line = out.one_line_of_stderr();
    assert!(line.contains(&format!("`{}` is already in use by pid {} (", sock.display(), std::process::id())), "{out}");
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
    s.wait_no_process_left();
}

/// A stranger that takes the port after conjure started, before the program listens: seen on
/// the next probe, and the program is stopped.
#[test]
fn a_port_taken_by_a_stranger_after_the_start_is_a_failure_and_the_program_is_stopped() {
    let s = Scratch::new();
    let port = free_port();
    let running =
        launch(&s, &["--ready-on", &format!("tcp:127.0.0.1:{port}")], 1500, &["listen-tcp", &port.to_string()]).spawn();
    std::thread::sleep(Duration::from_millis(100));
    let _stranger = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = running.wait();
    out.assert_code(69);
    assert!(
        out.one_line_of_stderr().contains(&format!("port {port} is already in use by pid {}", std::process::id())),
        "{out}"
    );
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
    assert!(!s.join("marker").exists(), "the program ran on to its listen");
    s.wait_no_process_left();
}

#[test]
fn a_listener_held_by_a_descendant_of_the_program_counts() {
    let s = Scratch::new();
    let port = free_port().to_string();
    let mut c = TestCommand::conjure(["-p"]);
    c.args([s.join("d.pid")]).args(["--ready-on", &format!("tcp:127.0.0.1:{port}"), "--", "sh", "-c"]);
    // Not `exec`: the shell stays, and the listener is its child's.
    c.args([format!(
        "{} --marker {} --delay 200 listen-tcp {port}; :",
        readyprog().display(),
        s.join("marker").display()
    )]);
    c.expect_success();
    assert_ready_in_order(&s);
    let _d = Daemon::from_pidfile(&s.join("d.pid"));
}

#[test]
fn pidfile_sink_with_the_default_source_publishes_the_pidfile_before_returning() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let mut c = TestCommand::conjure(["-p"]);
    c.args([&pidfile]).args(["--readiness", "pidfile", "--"]).args([readyprog()]).args(["never"]);
    c.expect_success();
    let d = Daemon::from_pidfile(&pidfile);
    assert!(d.proc().cmdline().iter().any(|a| a.ends_with("readyprog")), "the pidfile names the program");
    assert!(lock_is_held(&pidfile), "the published pidfile is locked");
    let status = TestCommand::conjure(["status", "-p"]).args([&pidfile]).expect_success();
    assert!(status.stdout.contains(&format!("running (pid {})", d.pid)), "{status}");
    assert_no_temporary_pidfile(&s);
}

/// The pidfile sink's watcher killed before the program is ready: the program runs on with
/// its pidfile unpublished. That start failed (no pidfile ever appears), and loudly: the next
/// start is refused, naming the program that still holds the unpublished pidfile's lock.
#[test]
fn a_killed_pidfile_publisher_is_a_failed_start_that_the_next_start_names() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let mut c = TestCommand::conjure(["-p"]);
    c.args([&pidfile]).args(["--ready-on", "notify", "--readiness", "pidfile", "--"]).args([readyprog()]);
    c.args([OsString::from("--marker"), s.join("marker").into()]).args(["never"]);
    c.expect_success();
    let program = wait_until(PATIENCE, "the program", || {
        s.processes().into_iter().find(|p| Proc(*p).exe().is_some_and(|e| e.ends_with("readyprog")))
    });
    // Killed even if this test fails halfway: its pidfile is not published, so no other
    // guard finds it.
    let _guard = Daemon::new(program, None);
    let watcher = wait_until(PATIENCE, "the watcher", || {
        s.processes().into_iter().find(|p| *p != program && Proc(*p).exe() == Some(conjure_bin()))
    });
    kill_and_wait(watcher);
    assert!(Proc(program).alive());
    assert!(!pidfile.exists(), "published without being ready");
    let mut again = TestCommand::conjure(["-p"]);
    again.args([&pidfile]).args(["--readiness", "pidfile", "--", "sleep", "30"]);
    let out = again.expect_code(69);
    assert!(out.one_line_of_stderr().contains(&format!("(pid {program})")), "{out}");
    assert!(!pidfile.exists());
}

#[test]
fn a_failure_says_what_the_program_said_last_errno_and_status() {
    let s = Scratch::new();
    let msgs = ["--then-exit", "1", "notify", "STATUS=cannot open config", "ERRNO=2"];
    let out = launch(&s, &["--ready-on", "notify"], 0, &msgs).expect_code(70);
    let line = out.one_line_of_stderr();
    assert!(
        line.contains("exited with status 1 before it was ready; it said ERRNO=2 (No such file or directory) and STATUS=cannot open config"),
        "{out}"
    );
}
