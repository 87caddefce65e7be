//! Tests of the harness itself, with plain units that need nothing but the root filesystem: they
//! prove that units load at boot, that what systemd reports is readable, that the payload is
//! there and read-only, that containers run in parallel, and that a container leaves nothing
//! behind.

use std::fs;
use std::path::{Path, PathBuf};

use std::time::Duration;

use super::{Container, suite_available, wait_for};

const SLEEP_UNIT: &str = "\
[Unit]
Description=harness self-test: a simple service

[Service]
Type=simple
ExecStart=/bin/sleep infinity
";

/// A payload holding one file, `marker`, made with [`super::payload`] as tests of conjure do.
fn payload_with_marker() -> tempfile::TempDir {
    let src = tempfile::tempdir().expect("temp dir");
    let marker = src.path().join("marker");
    fs::write(&marker, "from the host\n").expect("write marker");
    super::payload(&[&marker])
}

#[test]
fn simple_unit_installed_before_boot_runs_and_stops_cleanly() {
    if !suite_available() {
        return;
    }
    let payload = payload_with_marker();
    let c = Container::boot(&[("sleep.service", SLEEP_UNIT)], payload.path());
    eprintln!("booted in {:?}", c.boot_time());

    c.start("sleep.service");
    let s = c.show("sleep.service", &["ActiveState", "SubState", "MainPID", "Type"]);
    assert_eq!(s["ActiveState"], "active", "{s:?}");
    assert_eq!(s["Type"], "simple", "{s:?}");
    let main_pid: u32 = s["MainPID"].parse().expect("MainPID is a number");
    assert_ne!(main_pid, 0, "{s:?}");

    // The MainPID systemd names is the live sleep, both inside and on the host. Type=simple is
    // active once forked, when the child may still be systemd's "(sleep)" on its way to exec.
    wait_for("MainPID to exec sleep", Duration::from_secs(10), || {
        let comm = c.read_file(&format!("/proc/{main_pid}/comm"));
        (comm.as_deref() != Some("(sleep)\n")).then_some(())
    });
    let comm = c.read_file(&format!("/proc/{main_pid}/comm"));
    assert_eq!(comm.as_deref(), Some("sleep\n"));
    let host = c.host_pid(main_pid).expect("MainPID has a host pid");
    let host_comm = fs::read_to_string(format!("/proc/{host}/comm")).expect("host comm");
    assert_eq!(host_comm, "sleep\n");

    c.stop("sleep.service");
    // `systemctl stop` waits for the stop job; the wait is only a bound, should that change.
    wait_for("sleep.service to be inactive", Duration::from_secs(30), || {
        (c.prop("sleep.service", "ActiveState") == "inactive").then_some(())
    });
    let s = c.show("sleep.service", &["ActiveState", "Result", "MainPID"]);
    assert_eq!(s["ActiveState"], "inactive", "{s:?}");
    assert_eq!(s["Result"], "success", "{s:?}");
    assert_eq!(s["MainPID"], "0", "{s:?}");
    assert!(
        !Path::new(&format!("/proc/{host}")).exists()
            || fs::read_to_string(format!("/proc/{host}/comm")).ok().as_deref() != Some("sleep\n"),
        "the stopped service's process {host} still runs"
    );

    let journal = c.journal("sleep.service");
    assert!(
        journal.contains("Started sleep.service") && journal.contains("Stopped sleep.service"),
        "journal of sleep.service: {journal:?}"
    );
}

#[test]
fn payload_is_mounted_read_only() {
    if !suite_available() {
        return;
    }
    let payload = payload_with_marker();
    let c = Container::boot(&[], payload.path());
    assert_eq!(c.read_file("/payload/marker").as_deref(), Some("from the host\n"));
    let touch = c.exec(&["touch", "/payload/new"]);
    assert!(!touch.status.success(), "writing into /payload succeeded");
    assert!(!payload.path().join("new").exists());
}

/// Everything a container made, as seen from the host.
struct Traces {
    name: String,
    nspawn: u32,
    pid1: u32,
    service: u32,
    scratch: PathBuf,
    cgroups: Vec<PathBuf>,
}

#[test]
fn dropping_a_container_leaves_no_process_mount_or_cgroup() {
    if !suite_available() {
        return;
    }
    let payload = payload_with_marker();
    let traces = {
        let c = Container::boot(&[("sleep.service", SLEEP_UNIT)], payload.path());
        c.start("sleep.service");
        let main_pid: u32 = c.prop("sleep.service", "MainPID").parse().unwrap();
        let t = Traces {
            name: c.name().to_owned(),
            nspawn: c.nspawn_pid(),
            pid1: c.pid1(),
            service: c.host_pid(main_pid).expect("host pid of the service"),
            scratch: c.scratch_dir().to_path_buf(),
            cgroups: c.cgroups().to_vec(),
        };
        // While it runs, all of it is there: the checks below can see what they look for.
        assert!(t.scratch.is_dir());
        for cg in &t.cgroups {
            assert!(cg.is_dir(), "{} missing while running", cg.display());
        }
        assert!(process_named(&t.name).is_some());
        t
    };

    for (what, pid) in [("nspawn", traces.nspawn), ("container init", traces.pid1), ("service", traces.service)] {
        // A pid may be reused by then; what must not exist is the same process.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || !in_cgroups(pid, &traces.name),
            "{what} (pid {pid}) survived the drop"
        );
    }
    assert_eq!(process_named(&traces.name), None, "a process naming {} survived", traces.name);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&traces.name), "a mount of {} remains:\n{mountinfo}", traces.name);
    for cg in &traces.cgroups {
        assert!(!cg.exists(), "cgroup {} remains", cg.display());
    }
    assert!(!traces.scratch.exists(), "scratch dir {} remains", traces.scratch.display());
}

#[test]
fn two_containers_boot_in_parallel() {
    if !suite_available() {
        return;
    }
    let payload = payload_with_marker();
    // Each container lives on the thread that booted it (it is bound to that thread's life).
    let results: Vec<(String, u32, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let payload = payload.path();
                s.spawn(move || {
                    let c = Container::boot(&[("sleep.service", SLEEP_UNIT)], payload);
                    c.start("sleep.service");
                    let state = c.prop("sleep.service", "ActiveState");
                    (c.name().to_owned(), c.pid1(), state)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(results[0].0, results[1].0);
    assert_ne!(results[0].1, results[1].1);
    for (name, _, state) in &results {
        assert_eq!(state, "active", "sleep.service in {name}");
    }
}

/// A process whose command line mentions `needle` (the machine name is in nspawn's).
fn process_named(needle: &str) -> Option<u32> {
    super::all_pids().into_iter().find(|pid| {
        fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

/// Whether a process is in a cgroup named `name` (in any hierarchy).
fn in_cgroups(pid: u32, name: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(name))
}
