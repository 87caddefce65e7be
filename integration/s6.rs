//! The s6 service directory of `examples/s6/`, run unchanged by a real `s6-svscan` (Debian's
//! `s6`): s6 must see the service "up" as soon as conjure runs, and "ready" only once the
//! program listens, because conjure writes the newline on the notification fd only then.
//! `readyprog` stands for the user's program: it listens after a delay and writes its marker
//! file just before, so a "ready" seen while the marker is missing came too early.
//!
//! The settings reach the run script through s6-svscan's environment, as the script allows.
//! Everything runs as the test's user (s6 needs no root) in the scratch directory, so
//! [`Scratch`] kills s6-svscan, its supervisors and the service should the test fail.

use std::path::{Path, PathBuf};

use crate::support::*;

/// `s6-svstat -o up,ready,pid,signal DIR`, parsed. `None` while s6-supervise has not started.
#[derive(Debug)]
struct Svstat {
    up: bool,
    ready: bool,
    pid: i32,
    signal: String,
}

fn svstat(tool: &Path, service: &Path) -> Option<Svstat> {
    let out = TestCommand::new(tool)
        .args([Path::new("-o").as_os_str(), "up,ready,pid,signal".as_ref()])
        .args([service])
        .run();
    if out.code() != Some(0) {
        return None;
    }
    let f: Vec<&str> = out.stdout.split_whitespace().collect();
    let [up, ready, pid, signal] = f.as_slice() else {
        panic!("s6-svstat printed {:?}", out.stdout);
    };
    Some(Svstat {
        up: *up == "true",
        ready: *ready == "true",
        pid: pid.parse().unwrap_or(-1),
        signal: signal.to_string(),
    })
}

/// Copies a service directory (its files, with their modes) to `to`.
fn copy_service(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn s6_sees_the_service_up_at_once_and_ready_only_once_it_listens() {
    let tools: Vec<Option<PathBuf>> =
        ["s6-svscan", "s6-svstat", "s6-svc", "s6-svscanctl"].iter().map(|t| find_tool(t, "s6")).collect();
    let [Some(svscan), Some(svstat_bin), Some(svc), Some(svscanctl)] = tools.as_slice() else {
        return;
    };
    let s = Scratch::new();
    let scan = s.join("scan");
    let service = scan.join("conjure-example");
    copy_service(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/s6/conjure-example"), &service);
    let port = free_port();
    let marker = s.join("marker");
    let args = format!("--marker {} --delay 1500 listen-tcp {port}", marker.display());

    let mut c = TestCommand::new(svscan);
    c.args([&scan])
        .env("CONJURE", conjure_bin())
        .env("DAEMON", example_bin("readyprog"))
        .env("DAEMON_ARGS", &args)
        .env("READY_ON", format!("tcp:127.0.0.1:{port}"));
    let running = c.spawn();

    // Up, with conjure as the supervised process, and not ready while the program is not.
    // s6 reports the service up as soon as it forked the run script: wait until the script has
    // exec'd conjure (in the same process).
    let up = wait_until(PATIENCE, "s6 to start the service and its run script to exec conjure", || {
        svstat(svstat_bin, &service).filter(|st| st.up && Proc(st.pid).exe() == Some(conjure_bin()))
    });
    let mut seen_up_not_ready = false;
    let ready = wait_until(PATIENCE, "s6 to see the service ready", || {
        let st = svstat(svstat_bin, &service)?;
        if !st.ready {
            seen_up_not_ready |= st.up && !marker.exists();
            return None;
        }
        // The first time s6 says ready, the program must already have been ready.
        assert!(marker.exists(), "s6 saw the service ready before the program listened: {st:?}");
        Some(st)
    });
    assert!(seen_up_not_ready, "s6 never showed the service up but not ready during the program's 1.5 s delay");
    assert_eq!(ready.pid, up.pid, "the service restarted on the way to ready");
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the program listens once s6 says ready");

    // s6-svc -d: SIGTERM to conjure, forwarded to the program; conjure dies of it too.
    let program = wait_until(PATIENCE, "the program under conjure", || {
        all_pids().into_iter().find(|p| Proc(*p).stat().is_some_and(|st| st.ppid == up.pid))
    });
    TestCommand::new(svc).args(["-d".as_ref(), service.as_os_str()]).expect_success();
    let down = wait_until(PATIENCE, "s6 to see the service down", || svstat(svstat_bin, &service).filter(|st| !st.up));
    assert_eq!(down.signal, "SIGTERM", "conjure should die of the SIGTERM it forwarded: {down:?}");
    wait_dead(program);

    TestCommand::new(svscanctl).args(["-t".as_ref(), scan.as_os_str()]).expect_success();
    let out = running.wait();
    assert_eq!(out.code(), Some(0), "s6-svscan did not exit cleanly\n{out}");
    s.wait_no_process_left();
}
