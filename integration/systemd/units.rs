//! The example units of `systemd/`, booted unchanged under a real systemd with the freshly built
//! `conjure` (linked at `/usr/local/bin/conjure`, where the examples expect it). What is asserted
//! is what systemd itself reports.

use std::path::Path;

use super::{Container, payload, suite_available};

const FORKING: (&str, &str) = ("conjure-forking.service", include_str!("../../systemd/conjure-forking.service"));
const FORKING_PIDFILE: &str = "/run/conjure-forking.pid";
const MISSING_PROGRAM: (&str, &str) =
    ("conjure-missing-program.service", include_str!("../../systemd/conjure-missing-program.service"));
const MISSING_PROGRAM_PIDFILE: &str = "/run/conjure-missing-program.pid";

/// A payload with the freshly built conjure, which must outlive the container that uses it
/// (declare it first, so it drops last).
fn conjure_payload() -> tempfile::TempDir {
    payload(&[Path::new(env!("CARGO_BIN_EXE_conjure"))])
}

fn boot(payload: &tempfile::TempDir, units: &[(&str, &str)]) -> Container {
    units
        .iter()
        .fold(Container::builder(), |b, (name, text)| b.unit(name, text))
        .symlink("/usr/local/bin/conjure", "/payload/conjure")
        .payload(payload.path())
        .boot()
}

/// Whether some process holds a lock on the file (`flock -n` fails when it cannot take one).
fn is_locked(c: &Container, path: &str) -> bool {
    !c.exec(&["flock", "--nonblock", "--exclusive", path, "true"]).status.success()
}

/// systemd said nothing about the pidfile: it was complete when the launcher exited. Besides
/// the classic `(yet?) after start` (no file yet), an empty or half-written file makes 257 log
/// `Failed to create reference to PID  from file '…'` and fall back to guessing the main PID,
/// which can still end with the right MainPID: so any mention of the pidfile counts.
fn assert_systemd_silent_about_pidfile(c: &Container, unit: &str, pidfile: &str) {
    let journal = c.journal(unit);
    let complaints: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("(yet?)") || l.contains(pidfile) || l.to_lowercase().contains("pid file"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd complained about the pidfile of {unit}: {complaints:#?}\nwhole journal:\n{journal}"
    );
}

#[test]
fn forking_unit_is_active_with_the_daemon_from_its_pidfile_as_main_pid() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let c = boot(&payload, &[FORKING]);

    c.start(FORKING.0);
    let s = c.show(FORKING.0, &["ActiveState", "SubState", "MainPID", "Type"]);
    assert_eq!((s["ActiveState"].as_str(), s["SubState"].as_str()), ("active", "running"), "{s:?}");
    assert_eq!(s["Type"], "forking");
    let main_pid: u32 = s["MainPID"].parse().expect("MainPID is a number");
    assert_ne!(main_pid, 0, "systemd knows no main process: {s:?}");

    // MainPID is the live daemon itself (the program, after conjure's exec), and it is the
    // pid the pidfile names.
    assert_eq!(
        c.read_file(&format!("/proc/{main_pid}/comm")).as_deref(),
        Some("sleep\n"),
        "MainPID {main_pid} is not the daemon"
    );
    assert_eq!(c.read_file(FORKING_PIDFILE), Some(format!("{main_pid}\n")), "pidfile {FORKING_PIDFILE}");
    // The daemon holds the pidfile's lock for as long as it lives.
    assert!(is_locked(&c, FORKING_PIDFILE), "pidfile not locked while the daemon runs");
    // The launcher is gone: the only process of the unit is the daemon.
    let sleeps: Vec<u32> = c
        .processes()
        .into_iter()
        .filter(|(_, comm)| comm == "sleep" || comm == "conjure")
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(sleeps, [main_pid], "processes of the unit");
    assert_systemd_silent_about_pidfile(&c, FORKING.0, FORKING_PIDFILE);
}

#[test]
fn stopping_forking_unit_leaves_no_process_and_no_locked_pidfile() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let c = boot(&payload, &[FORKING]);

    c.start(FORKING.0);
    let main_pid = c.prop(FORKING.0, "MainPID");
    assert_ne!(main_pid, "0");
    c.stop(FORKING.0);

    let s = c.show(FORKING.0, &["ActiveState", "Result", "MainPID"]);
    // inactive, not failed: the daemon's death by systemd's SIGTERM is a clean stop.
    assert_eq!(s["ActiveState"], "inactive", "{s:?}");
    assert_eq!(s["Result"], "success", "{s:?}");
    let left: Vec<_> = c
        .processes()
        .into_iter()
        .filter(|(pid, comm)| pid.to_string() == main_pid || comm == "sleep" || comm == "conjure")
        .collect();
    assert!(left.is_empty(), "left behind after stop: {left:?}");
    // systemd removes a PIDFile= when the service is dead; if it is still there, nobody may
    // hold its lock.
    if c.read_file(FORKING_PIDFILE).is_some() {
        assert!(!is_locked(&c, FORKING_PIDFILE), "pidfile still locked after stop");
    }
    assert_systemd_silent_about_pidfile(&c, FORKING.0, FORKING_PIDFILE);
}

#[test]
fn unit_whose_program_is_missing_fails_with_conjures_one_line_error() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let c = boot(&payload, &[MISSING_PROGRAM]);
    let unit = MISSING_PROGRAM.0;

    let start = c.exec(&["systemctl", "start", unit]);
    assert!(!start.status.success(), "systemctl start of a unit whose program is missing succeeded");
    let s = c.show(unit, &["ActiveState", "Result", "MainPID"]);
    assert_eq!(s["ActiveState"], "failed", "{s:?}");
    assert_eq!(s["Result"], "exit-code", "{s:?}");
    assert_eq!(s["MainPID"], "0", "{s:?}");

    let journal = c.journal(unit);
    // EX_NOINPUT: the program was not found (design, section 4).
    assert!(journal.contains("status=66"), "systemd did not log conjure's exit code 66:\n{journal}");
    // What conjure itself wrote (its stderr reaches the journal under its name).
    c.run(&["journalctl", "--sync"]);
    let said = c.run(&["journalctl", "--no-pager", "-o", "cat", "-u", unit, "SYSLOG_IDENTIFIER=conjure"]);
    let lines: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "conjure's error is not one line:\n{said}\nwhole journal:\n{journal}");
    assert!(lines[0].contains("/nonexistent/program"), "conjure's error does not name the program: {:?}", lines[0]);
    assert_eq!(c.read_file(MISSING_PROGRAM_PIDFILE), None, "pidfile left behind");
    let left: Vec<_> = c.processes().into_iter().filter(|(_, comm)| comm == "conjure").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
