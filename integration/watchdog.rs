//! `--watchdog CHECK`: conjure feeds the supervisor's watchdog from a check of a program that
//! does not speak sd_notify, and, with `--watchdog-timeout`, stops a program that fails it for
//! too long. The check here is `file:`, which the test flips at a moment it chooses; the real
//! systemd with `WatchdogSec=` and a `tcp:` check is in `systemd/units.rs`.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use crate::support::*;

/// `conjure -f -p PIDFILE FLAGS -- readyprog MODE`.
fn conjure(s: &Scratch, flags: &[&str], mode: &[&str]) -> TestCommand {
    let mut c = TestCommand::conjure(["-f", "-p"]);
    c.args([s.join("d.pid")]).args(flags).args(["--"]).args([example_bin("readyprog")]);
    c.args([OsString::from("--marker"), s.join("marker").into()]).args(mode);
    c
}

#[test]
fn watchdog_pings_while_the_check_passes_and_stops_within_an_interval_after_it_fails() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let alive = s.join("alive");
    std::fs::write(&alive, "").unwrap();
    let check = format!("file:{}", alive.display());
    // WATCHDOG_USEC of 400 ms: a check, and a ping, every 200 ms.
    let interval = Duration::from_millis(200);
    let mut c = conjure(&s, &["--watchdog", &check], &["never"]);
    c.env("NOTIFY_SOCKET", &sup.path).env("WATCHDOG_USEC", "400000");
    let running = c.spawn();
    let conjure = running.pid();
    assert_eq!(sup.next(), "READY=1\n");
    let mut pings = Vec::new();
    while pings.len() < 4 {
        let m = sup.next_message();
        assert_eq!((m.text.as_str(), m.pid), ("WATCHDOG=1\n", Some(conjure)), "a ping from the main process");
        pings.push(Instant::now());
    }
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("watchdog pings every {gaps:?} (interval {interval:?})");
    assert!(gaps.iter().all(|g| *g < interval * 3), "pings too far apart: {gaps:?}");

    std::fs::remove_file(&alive).unwrap();
    let failed_at = Instant::now();
    let mut last = None;
    // Pings that were on their way may still come, then none for three intervals.
    while let Some(m) = sup.receive(interval * 3) {
        assert_eq!(m.text, "WATCHDOG=1\n");
        last = Some(Instant::now());
    }
    if let Some(last) = last {
        let late = last - failed_at;
        eprintln!("last ping {late:?} after the check began to fail");
        assert!(late <= interval, "a ping came {late:?} after the check failed (interval {interval:?})");
    }
    assert!(Proc(conjure).alive(), "without --watchdog-timeout, the supervisor decides, not conjure");
    drop(running);
}

/// Without pidfds, resident conjure's orphan reaper took the `cmd:` check's child before the
/// watchdog looked at it: every check that passed counted as failed, and nothing was pinged.
#[test]
fn a_passing_cmd_check_pings_while_conjure_reaps_orphans_without_pidfds() {
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let mut c = TestCommand::conjure_without_pidfds(["-f", "-p"]);
    c.args([s.join("d.pid")]).args(["--watchdog", "cmd:true", "--"]).args([example_bin("readyprog")]);
    c.args(["--orphan", "50", "never"]);
    c.env("NOTIFY_SOCKET", &sup.path).env("WATCHDOG_USEC", "200000");
    let running = c.spawn();
    assert_eq!(sup.next(), "READY=1\n");
    for _ in 0..3 {
        let Some(m) = sup.receive(PATIENCE) else { panic!("no WATCHDOG=1 within {PATIENCE:?}\n{}", running.kill()) };
        assert_eq!(m.text, "WATCHDOG=1\n");
    }
    drop(running);
}

#[test]
fn watchdog_timeout_stops_the_program_and_exits_70_saying_so() {
    let s = Scratch::new();
    let alive = s.join("alive");
    std::fs::write(&alive, "").unwrap();
    let check = format!("file:{}", alive.display());
    let running =
        conjure(&s, &["--watchdog", &check, "--watchdog-timeout", "400ms", "--kill-after", "1s"], &["never"]).spawn();
    let conjure = running.pid();
    let program = wait_until(PATIENCE, "the program", || children(conjure).first().copied());
    std::thread::sleep(Duration::from_millis(600));
    assert!(Proc(program).alive(), "stopped while the check passed");
    std::fs::remove_file(&alive).unwrap();
    let failed_at = Instant::now();
    let out = running.wait();
    let took = failed_at.elapsed();
    out.assert_code(70);
    let line = out.one_line_of_stderr();
    assert!(line.contains(&format!("failed its watchdog check {check} for")) && line.ends_with("stopped it"), "{out}");
    eprintln!("--watchdog-timeout 400ms: stopped {took:?} after the check began to fail");
    assert!(took >= Duration::from_millis(400), "stopped after only {took:?}");
    wait_dead(program);
    assert!(!s.join("d.pid").exists(), "pidfile left behind");
    s.wait_no_process_left();
}

#[test]
fn a_watchdog_with_nothing_to_do_or_in_the_background_is_refused() {
    let s = Scratch::new();
    let file = format!("file:{}", s.join("alive").display());
    // No WATCHDOG_USEC and no --watchdog-timeout.
    let out = conjure(&s, &["--watchdog", &file], &["never"]).expect_code(64);
    assert!(out.one_line_of_stderr().contains("WATCHDOG_USEC"), "{out}");
    // Checks that cannot be repeated.
    for bad in ["exec", "notify", "fd:3"] {
        conjure(&s, &["--watchdog", bad, "--watchdog-timeout", "1s"], &["never"]).expect_code(64);
    }
    // conjure must stay to check: not in the background.
    let mut c = TestCommand::conjure(["-p"]);
    c.args([s.join("d.pid")]).args(["--watchdog", &file, "--watchdog-timeout", "1s", "--", "sleep", "30"]);
    let out = c.expect_code(64);
    assert!(out.one_line_of_stderr().contains("-f"), "{out}");
    assert!(!s.join("d.pid").exists());
    s.wait_no_process_left();
}
