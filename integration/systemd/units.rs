//! The example units of `systemd/`, booted unchanged under a real systemd with the freshly built
//! `conjure` (linked at `/usr/bin/conjure`, where the examples expect it and the `.deb`
//! installs it) and the test programs that stand for the user's program (`readyprog` and
//! `testprog`, linked in `/usr/local/bin/`).
//! What is asserted is what systemd itself reports.
//!
//! Start timing is checked by order only: `readyprog` writes the CLOCK_MONOTONIC moment it
//! became ready into its marker file, and systemd's `ActiveEnterTimestampMonotonic` (the same
//! clock: a container has no time namespace) must come after it.

use std::path::Path;
use std::time::Duration;

use super::{Container, payload, suite_available, wait_for};

const FORKING: (&str, &str) = ("conjure-forking.service", include_str!("../../systemd/conjure-forking.service"));
const FORKING_PIDFILE: &str = "/run/conjure-forking.pid";
const MISSING_PROGRAM: (&str, &str) =
    ("conjure-missing-program.service", include_str!("../../systemd/conjure-missing-program.service"));
const MISSING_PROGRAM_PIDFILE: &str = "/run/conjure-missing-program.pid";
const FORKING_READY_TCP: (&str, &str) =
    ("conjure-forking-ready-tcp.service", include_str!("../../systemd/conjure-forking-ready-tcp.service"));
const NOTIFY_READY_TCP: (&str, &str) =
    ("conjure-notify-ready-tcp.service", include_str!("../../systemd/conjure-notify-ready-tcp.service"));
const NOTIFY_RELAY: (&str, &str) =
    ("conjure-notify-relay.service", include_str!("../../systemd/conjure-notify-relay.service"));
const NOTIFY_RELOAD: (&str, &str) =
    ("conjure-notify-reload.service", include_str!("../../systemd/conjure-notify-reload.service"));
const ACTIVATED_SOCKET: (&str, &str) =
    ("conjure-activated.socket", include_str!("../../systemd/conjure-activated.socket"));
const ACTIVATED_SERVICE: (&str, &str) =
    ("conjure-activated.service", include_str!("../../systemd/conjure-activated.service"));
const WATCHDOG: (&str, &str) = ("conjure-watchdog.service", include_str!("../../systemd/conjure-watchdog.service"));
const FDSTORE: (&str, &str) = ("conjure-fdstore.service", include_str!("../../systemd/conjure-fdstore.service"));

/// Every unit file in `systemd/`; a tidy test fails when a new file is not listed here (and
/// so, in all likelihood, not booted by any test below).
const ALL_UNITS: &[(&str, &str)] = &[
    FORKING,
    MISSING_PROGRAM,
    FORKING_READY_TCP,
    NOTIFY_READY_TCP,
    NOTIFY_RELAY,
    NOTIFY_RELOAD,
    ACTIVATED_SOCKET,
    ACTIVATED_SERVICE,
    WATCHDOG,
    FDSTORE,
];

/// The helper programs the example units run in place of the user's program.
const HELPERS: &[&str] = &["readyprog", "testprog"];

/// A payload with the freshly built conjure and the helper programs, which must outlive the
/// container that uses it (declare it first, so it drops last).
fn conjure_payload() -> tempfile::TempDir {
    let helpers: Vec<_> = HELPERS.iter().map(|h| crate::support::example_bin(h)).collect();
    let mut files = vec![Path::new(env!("CARGO_BIN_EXE_conjure"))];
    files.extend(helpers.iter().map(|p| p.as_path()));
    payload(&files)
}

fn boot(payload: &tempfile::TempDir, units: &[(&str, &str)]) -> Container {
    let builder = units
        .iter()
        .fold(Container::builder(), |b, (name, text)| b.unit(name, text))
        .symlink("/usr/bin/conjure", "/payload/conjure");
    HELPERS
        .iter()
        .fold(builder, |b, h| b.symlink(&format!("/usr/local/bin/{h}"), &format!("/payload/{h}")))
        .payload(payload.path())
        .boot()
}

/// A `*TimestampMonotonic` property of a unit, in microseconds; 0 means "never".
fn monotonic(c: &Container, unit: &str, prop: &str) -> u64 {
    let v = c.prop(unit, prop);
    v.parse().unwrap_or_else(|_| panic!("{unit}: {prop}={v:?} is not a number"))
}

/// The CLOCK_MONOTONIC microseconds `readyprog` wrote into its marker just before it became
/// ready (the first line of the file), or None when it has not written it yet.
fn ready_at(c: &Container, marker: &str) -> Option<u64> {
    let text = c.read_file(marker)?;
    let first = text.lines().next().unwrap_or_default();
    Some(first.parse().unwrap_or_else(|_| panic!("marker {marker} holds {text:?}, not microseconds")))
}

/// Asserts the unit (which must be active now) went active only after its program became
/// ready, and started before.
fn assert_active_only_after_ready(c: &Container, unit: &str, marker: &str) {
    let Some(ready) = ready_at(c, marker) else {
        panic!("{unit} is active, but its program is not ready yet: no marker {marker}")
    };
    let began = monotonic(c, unit, "InactiveExitTimestampMonotonic");
    let active = monotonic(c, unit, "ActiveEnterTimestampMonotonic");
    assert!(began != 0 && active != 0, "{unit}: InactiveExit {began}, ActiveEnter {active}");
    // The program is started by the unit: if this fails, the clocks are not comparable and the
    // next assertion would prove nothing.
    assert!(began < ready, "{unit}: start began at {began} µs, after the program was ready at {ready} µs");
    assert!(
        active > ready,
        "{unit}: systemd saw the unit active at {active} µs, before the program was ready at {ready} µs"
    );
}

/// Pids (inside the container) of its processes named `comm`.
fn pids_named(c: &Container, comm: &str) -> Vec<u32> {
    c.processes().into_iter().filter(|(_, n)| n == comm).map(|(pid, _)| pid).collect()
}

/// The parent (inside the container) of a process of the container.
fn parent_of(c: &Container, pid: u32) -> u32 {
    let status = c.read_file(&format!("/proc/{pid}/status")).unwrap_or_else(|| panic!("pid {pid} is gone"));
    let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).expect("PPid line");
    ppid.trim().parse().expect("PPid is a number")
}

/// Processes of the example programs (or conjure) still in the container.
fn leftovers(c: &Container) -> Vec<(u32, String)> {
    c.processes()
        .into_iter()
        .filter(|(_, comm)| ["conjure", "readyprog", "testprog", "sleep"].contains(&comm.as_str()))
        .collect()
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
    // Its stderr is the journal (JOURNAL_STREAM), so the line carries <3>: journald files it as
    // an error, not as the info of ordinary output.
    let errors =
        c.run(&["journalctl", "--no-pager", "-o", "cat", "-p", "err", "-u", unit, "SYSLOG_IDENTIFIER=conjure"]);
    assert_eq!(
        errors.trim(),
        lines[0],
        "conjure's error is not filed with priority err (3)\nwhole journal:\n{journal}"
    );
    assert_eq!(c.read_file(MISSING_PROGRAM_PIDFILE), None, "pidfile left behind");
    let left: Vec<_> = c.processes().into_iter().filter(|(_, comm)| comm == "conjure").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn every_unit_file_in_the_systemd_dir_is_listed_for_booting() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("read systemd/")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = ALL_UNITS.iter().map(|(name, _)| name.to_string()).collect();
    known.sort();
    assert_eq!(on_disk, known, "unit files in systemd/ vs the ones units.rs boots");
}

#[test]
fn forking_unit_with_tcp_readiness_goes_active_only_once_the_server_listens() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let c = boot(&payload, &[FORKING_READY_TCP]);
    let unit = FORKING_READY_TCP.0;
    let pidfile = "/run/conjure-forking-ready-tcp.pid";

    c.start(unit);
    let s = c.show(unit, &["ActiveState", "SubState", "MainPID", "Type"]);
    assert_eq!((s["ActiveState"].as_str(), s["SubState"].as_str()), ("active", "running"), "{s:?}");
    assert_eq!(s["Type"], "forking", "{s:?}");
    assert_active_only_after_ready(&c, unit, "/run/conjure-forking-ready-tcp.marker");

    let main_pid: u32 = s["MainPID"].parse().expect("MainPID is a number");
    assert_eq!(pids_named(&c, "readyprog"), [main_pid], "MainPID {main_pid} is not the one live server");
    assert_eq!(c.read_file(pidfile), Some(format!("{main_pid}\n")), "pidfile {pidfile}");
    assert!(pids_named(&c, "conjure").is_empty(), "the launcher is still there");
    assert_systemd_silent_about_pidfile(&c, unit, pidfile);
}

#[test]
fn notify_unit_with_resident_conjure_goes_active_once_the_program_listens_and_stops_cleanly() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let c = boot(&payload, &[NOTIFY_READY_TCP]);
    let unit = NOTIFY_READY_TCP.0;

    c.start(unit);
    let s = c.show(unit, &["ActiveState", "SubState", "MainPID", "Type", "NotifyAccess"]);
    assert_eq!((s["ActiveState"].as_str(), s["SubState"].as_str()), ("active", "running"), "{s:?}");
    assert_eq!((s["Type"].as_str(), s["NotifyAccess"].as_str()), ("notify", "main"), "{s:?}");
    assert_active_only_after_ready(&c, unit, "/run/conjure-notify-ready-tcp.marker");

    // conjure is the main process (so NotifyAccess=main took its READY=1), the program its child.
    let main_pid: u32 = s["MainPID"].parse().expect("MainPID is a number");
    assert_eq!(pids_named(&c, "conjure"), [main_pid], "MainPID {main_pid} is not the resident conjure");
    let program = pids_named(&c, "readyprog");
    assert_eq!(program.len(), 1, "programs running: {program:?}");
    assert_eq!(parent_of(&c, program[0]), main_pid, "the program is not conjure's child");

    // KillMode=mixed: systemd's SIGTERM reaches only conjure, which must forward it (or the
    // stop would time out and end in SIGKILL, Result=timeout).
    assert_eq!(c.prop(unit, "KillMode"), "mixed");
    c.stop(unit);
    let s = c.show(unit, &["ActiveState", "Result", "MainPID"]);
    assert_eq!((s["ActiveState"].as_str(), s["Result"].as_str()), ("inactive", "success"), "{s:?}");
    assert_eq!(leftovers(&c), [], "left behind after stop");
}

#[test]
fn notify_unit_shows_the_status_text_the_program_sent_through_conjure() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let c = boot(&payload, &[NOTIFY_RELAY]);
    let unit = NOTIFY_RELAY.0;

    c.start(unit);
    let s = c.show(unit, &["ActiveState", "StatusText", "MainPID"]);
    assert_eq!(s["ActiveState"], "active", "{s:?}");
    assert_eq!(s["StatusText"], "serving", "{s:?}");
    let main_pid: u32 = s["MainPID"].parse().expect("MainPID is a number");
    assert_eq!(pids_named(&c, "conjure"), [main_pid], "MainPID {main_pid} is not the resident conjure");
    // Had systemd heard the program directly (not through conjure), NotifyAccess=main would
    // have dropped it, with a note in the journal.
    let journal = c.journal(unit);
    assert!(!journal.contains("reception only permitted"), "systemd dropped a message:\n{journal}");
}

#[test]
fn notify_reload_unit_reloads_the_program_through_conjure() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let c = boot(&payload, &[NOTIFY_RELOAD]);
    let unit = NOTIFY_RELOAD.0;
    let marker = "/run/conjure-notify-reload.marker";

    c.start(unit);
    let s = c.show(unit, &["ActiveState", "Type", "MainPID"]);
    assert_eq!((s["ActiveState"].as_str(), s["Type"].as_str()), ("active", "notify-reload"), "{s:?}");
    let program = pids_named(&c, "readyprog");
    assert!(!c.read_file(marker).unwrap_or_default().contains("reloaded"), "reloaded before any reload");

    // `systemctl reload` returns only once systemd has seen RELOADING=1 and then READY=1.
    let out = c.exec_timeout(&["systemctl", "reload", unit], std::time::Duration::from_secs(30));
    assert!(
        out.status.success(),
        "systemctl reload failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        c.journal(unit)
    );
    let reloads = c.read_file(marker).unwrap_or_default().matches("reloaded").count();
    assert_eq!(reloads, 1, "the program answered {reloads} SIGHUPs");
    let after = c.show(unit, &["ActiveState", "SubState", "MainPID", "Result"]);
    assert_eq!((after["ActiveState"].as_str(), after["SubState"].as_str()), ("active", "running"), "{after:?}");
    assert_eq!(after["MainPID"], s["MainPID"], "the main process changed");
    assert_eq!(pids_named(&c, "readyprog"), program, "the program was restarted, not reloaded");
    let journal = c.journal(unit);
    assert!(journal.contains("Reloaded"), "systemd logged no finished reload:\n{journal}");
}

#[test]
fn socket_activated_forking_daemon_gets_the_socket_and_a_listen_pid_naming_it() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let c = boot(&payload, &[ACTIVATED_SOCKET, ACTIVATED_SERVICE]);
    let (socket, service) = (ACTIVATED_SOCKET.0, ACTIVATED_SERVICE.0);

    c.start(socket);
    assert_eq!(c.prop(service, "ActiveState"), "inactive", "the service started before any connection");
    // The first connection starts the service; the daemon answers on the inherited socket.
    // Connect from the host through the container's root: the socket lives in its /run.
    let path = format!("/proc/{}/root/run/conjure-activated.sock", c.pid1());
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap_or_else(|e| panic!("connect {path}: {e}"));
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).expect("set read timeout");
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut stream), &mut greeting)
        .unwrap_or_else(|e| panic!("no answer on the activated socket: {e}\n{}", c.journal(service)));

    let s = c.show(service, &["ActiveState", "MainPID"]);
    assert_eq!(s["ActiveState"], "active", "{s:?}");
    let main_pid = s["MainPID"].clone();
    assert_eq!(greeting, format!("hello from {main_pid}\n"), "the answer came from someone else");
    let report = c.read_file("/run/conjure-activated.report").expect("the daemon wrote no report");
    let expected = format!("LISTEN_PID={main_pid}\nLISTEN_FDS=1\npid={main_pid}\nfd3_socket=true\n");
    assert_eq!(report, expected, "what the daemon inherited");
    assert_eq!(c.read_file("/run/conjure-activated.pid"), Some(format!("{main_pid}\n")), "pidfile");
    assert_systemd_silent_about_pidfile(&c, service, "/run/conjure-activated.pid");
}

/// Design, section 2: resident conjure "relays sd_notify messages to the real `NOTIFY_SOCKET`
/// as the main process (so `NotifyAccess=main` works)". Not with `--supervise` and the default
/// `exec` source: the sink resolves to the pipe, conjure hosts no notify socket, and the
/// program inherits systemd's `NOTIFY_SOCKET` and talks to systemd directly, as a process that
/// is not the main one. systemd drops its messages, and the start times out.
#[test]
fn supervised_program_speaking_sd_notify_is_relayed_as_the_main_process() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let unit = "conjure-supervise-notify.service";
    let text = "\
[Service]
Type=notify
TimeoutStartSec=10s
ExecStart=/usr/bin/conjure -f --supervise -- /usr/local/bin/readyprog notify STATUS=serving READY=1
";
    let c = boot(&payload, &[(unit, text)]);
    let start = c.exec(&["systemctl", "start", unit]);
    let s = c.show(unit, &["ActiveState", "Result", "MainPID"]);
    assert!(start.status.success(), "start failed ({}): {s:?}\n{}", start.status, c.journal(unit));
    assert_eq!(s["ActiveState"], "active", "{s:?}");
    // conjure said READY=1 at exec; the program's own STATUS= follows through the relay.
    wait_for("StatusText=serving", std::time::Duration::from_secs(10), || {
        (c.prop(unit, "StatusText") == "serving").then_some(())
    });
}

/// A program that stops answering under `WatchdogSec=2` is restarted by systemd through
/// `--watchdog`: conjure's pings kept the first run alive past WatchdogSec (it hung only after
/// 2.5 s), stopped when it hung, and keep the second run alive.
#[test]
fn watchdog_unit_restarts_a_program_that_stops_answering() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let c = boot(&payload, &[WATCHDOG]);
    let unit = WATCHDOG.0;
    let hung = "/run/conjure-watchdog.hung";

    c.start(unit);
    let s = c.show(unit, &["ActiveState", "MainPID", "NRestarts", "WatchdogUSec"]);
    assert_eq!(
        (s["ActiveState"].as_str(), s["NRestarts"].as_str(), s["WatchdogUSec"].as_str()),
        ("active", "0", "2s"),
        "{s:?}"
    );
    let first: u32 = s["MainPID"].parse().expect("MainPID is a number");
    assert_eq!(pids_named(&c, "conjure"), [first], "MainPID {first} is not the resident conjure");
    let program = pids_named(&c, "readyprog");
    assert_eq!(program.len(), 1, "programs: {program:?}");
    let env = c.read_file(&format!("/proc/{}/environ", program[0])).unwrap_or_default();
    assert!(
        env.split('\0').any(|v| v == format!("WATCHDOG_PID={}", program[0])),
        "the program's WATCHDOG_PID does not name it: {env:?}"
    );
    assert!(c.read_file(hung).is_none(), "the program hung before it was ready");

    let restarted = wait_for("systemd to restart the hung program (NRestarts >= 1)", Duration::from_secs(30), || {
        let s = c.show(unit, &["ActiveState", "SubState", "MainPID", "NRestarts"]);
        let again = s["NRestarts"] != "0" && s["ActiveState"] == "active" && s["SubState"] == "running";
        (again && s["MainPID"] != first.to_string()).then_some(s)
    });
    // The first run lived until it hung, 2.5 s after it started: longer than WatchdogSec=2.
    assert!(c.read_file(hung).is_some(), "the first run never reached its hang");
    let journal = c.journal(unit);
    assert!(journal.contains("Watchdog timeout"), "systemd's watchdog did not fire:\n{journal}");
    assert_eq!(restarted["NRestarts"], "1", "restarted more than once: {restarted:?}\n{journal}");
    // The second run serves on, fed by conjure's pings, past WatchdogSec.
    std::thread::sleep(Duration::from_millis(2500));
    let later = c.show(unit, &["ActiveState", "MainPID", "NRestarts"]);
    assert_eq!(
        (later["ActiveState"].as_str(), later["MainPID"].as_str(), later["NRestarts"].as_str()),
        ("active", restarted["MainPID"].as_str(), "1"),
        "{later:?}\n{}",
        c.journal(unit)
    );
    eprintln!("watchdog unit: NRestarts={}, first MainPID {first}, now {}", later["NRestarts"], later["MainPID"]);
}

/// `FileDescriptorStoreMax=`: the fd the program stored (through conjure, the main process)
/// comes back to it after a restart.
#[test]
fn fdstore_unit_gets_the_programs_stored_fd_back_after_a_restart() {
    if !suite_available() {
        return;
    }
    let payload = conjure_payload();
    let c = boot(&payload, &[FDSTORE]);
    let unit = FDSTORE.0;
    let report = "/run/conjure-fdstore.report";

    c.start(unit);
    let program = pids_named(&c, "readyprog");
    assert_eq!(program.len(), 1, "programs: {program:?}");
    let stored = format!("stored by pid {}", program[0]);
    assert_eq!(c.read_file(report), Some(format!("stored {stored}\n")), "the first run's report");
    let n = wait_for("systemd to hold the stored fd", Duration::from_secs(10), || {
        let n = c.prop(unit, "NFileDescriptorStore");
        (n == "1").then_some(n)
    });
    assert_eq!(n, "1");
    let journal = c.journal(unit);
    assert!(!journal.contains("reception only permitted"), "systemd dropped a message:\n{journal}");

    c.run(&["systemctl", "restart", unit]);
    let again = pids_named(&c, "readyprog");
    assert!(again.len() == 1 && again != program, "the program was not restarted: {again:?}");
    assert_eq!(
        c.read_file(report),
        Some(format!("stored {stored}\nrestored {stored}\n")),
        "the second run did not get the first run's fd back\n{}",
        c.journal(unit)
    );
}
