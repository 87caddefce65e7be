//! The Debian package that `cargo xtask dist` builds, installed with `dpkg -i` into a booted
//! systemd 257 container the way an operator installs it, then used the way the package tells
//! them to: an example unit copied from `/usr/share/doc/conjure/examples/systemd/` runs the
//! packaged `/usr/bin/conjure` (the container has no other), and systemd reports it active with
//! the right main PID, then stops it cleanly.

use std::path::PathBuf;

use super::{Container, payload, suite_available};
use crate::support::{dist_dir, example_bin};

/// The example unit the test installs from the package: `Type=forking`, active only once
/// `readyprog` (at `/usr/local/bin/readyprog`, standing for the user's program) listens.
const UNIT: &str = "conjure-forking-ready-tcp.service";
const PIDFILE: &str = "/run/conjure-forking-ready-tcp.pid";
const MARKER: &str = "/run/conjure-forking-ready-tcp.marker";

/// `conjure_<version>_amd64.deb` in `target/dist/`.
fn the_deb(dist: &std::path::Path) -> PathBuf {
    let debs: Vec<PathBuf> = std::fs::read_dir(dist)
        .unwrap_or_else(|e| panic!("read {}: {e}", dist.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with("_amd64.deb")))
        .collect();
    let [deb] = debs.as_slice() else { panic!("expected one .deb in {}, found {debs:?}", dist.display()) };
    deb.clone()
}

#[test]
fn deb_installs_with_dpkg_and_its_example_unit_runs_the_packaged_conjure() {
    if !suite_available() {
        return;
    }
    let Some(dist) = dist_dir() else { return };
    let deb = the_deb(&dist);
    let deb_name = deb.file_name().expect("a name").to_string_lossy().into_owned();
    let readyprog = example_bin("readyprog");
    let payload = payload(&[deb.as_path(), readyprog.as_path()]);
    let c =
        Container::builder().symlink("/usr/local/bin/readyprog", "/payload/readyprog").payload(payload.path()).boot();

    // Nothing of conjure's before the package: whatever runs later came from it.
    assert!(!c.exec(&["test", "-e", "/usr/bin/conjure"]).status.success(), "the container already has conjure");
    c.run(&["dpkg", "-i", &format!("/payload/{deb_name}")]);
    let status = c.run(&["dpkg-query", "-W", "-f", "${Status} ${Version}", "conjure"]);
    assert!(status.starts_with("install ok installed "), "dpkg says {status:?}");
    let version = c.run(&["/usr/bin/conjure", "--version"]);
    assert!(version.contains(status.rsplit(' ').next().unwrap_or("?")), "{version:?} is not the package's {status:?}");
    for file in [
        "/usr/share/man/man1/conjure.1.gz",
        "/usr/share/bash-completion/completions/conjure",
        "/usr/share/zsh/vendor-completions/_conjure",
        "/usr/share/fish/vendor_completions.d/conjure.fish",
        "/usr/share/doc/conjure/copyright",
        "/usr/share/doc/conjure/examples/init.d/conjure-example",
        "/usr/share/doc/conjure/examples/s6/conjure-example/run",
    ] {
        assert!(c.exec(&["test", "-s", file]).status.success(), "the package did not install {file}");
    }
    // The man pages say the version they ship with (xtask once wrote its own, 0.0.0).
    let package_version = status.rsplit(' ').next().unwrap_or("?");
    for (page, name) in [("conjure", "conjure"), ("conjure-stop", "stop"), ("conjure-status", "status")] {
        let header = c.run(&["sh", "-c", &format!("zcat /usr/share/man/man1/{page}.1.gz | grep '^.TH'")]);
        assert!(header.contains(&format!("\"{name} {package_version}\"")), "{page}.1 says {header:?}");
    }
    let owner = c.run(&["dpkg-query", "-S", "/usr/bin/conjure"]);
    assert!(owner.starts_with("conjure: "), "/usr/bin/conjure belongs to {owner:?}");

    // The shipped example, installed as the package's documentation suggests.
    c.run(&["cp", &format!("/usr/share/doc/conjure/examples/systemd/{UNIT}"), "/etc/systemd/system/"]);
    c.run(&["systemctl", "daemon-reload"]);
    let exec_start = c.prop(UNIT, "ExecStart");
    assert!(exec_start.contains("path=/usr/bin/conjure "), "the unit does not run /usr/bin/conjure: {exec_start}");
    assert_eq!(c.prop(UNIT, "ActiveState"), "inactive");
    c.start(UNIT);

    let props = c.show(UNIT, &["ActiveState", "SubState", "MainPID"]);
    assert_eq!((props["ActiveState"].as_str(), props["SubState"].as_str()), ("active", "running"), "{props:?}");
    assert!(c.read_file(MARKER).is_some(), "{UNIT} is active but its program never became ready");
    let pidfile = c.read_file(PIDFILE).unwrap_or_else(|| panic!("no pidfile {PIDFILE}"));
    assert_eq!(props["MainPID"], pidfile.trim(), "MainPID is not the pid conjure wrote");
    let main_pid: u32 = props["MainPID"].parse().expect("MainPID is a number");
    let comm = c.read_file(&format!("/proc/{main_pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "readyprog", "MainPID {main_pid} is not the program");

    c.stop(UNIT);
    let props = c.show(UNIT, &["ActiveState", "Result"]);
    assert_eq!((props["ActiveState"].as_str(), props["Result"].as_str()), ("inactive", "success"), "{props:?}");
    assert!(c.read_file(&format!("/proc/{main_pid}/comm")).is_none(), "the program outlived its unit");
    let left: Vec<_> = c.processes().into_iter().filter(|(_, comm)| comm == "readyprog" || comm == "conjure").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
