//! The daemon's user, and any bystander, is hostile: nothing they plant or do can be turned
//! against root.
//!
//! These tests run as root and hand the daemon to `nobody`, who owns a directory where it can
//! plant symlinks, symlinked directories, hard links, FIFOs and directories. The victim is a
//! root-owned file that must come out byte for byte (and owner for owner) unchanged, while
//! conjure either fails with one line and 73, or writes only where `nobody` could have.
//! Then the pidfile: the lock fd the daemon inherits is read-only, a pidfile someone else
//! owns is refused, a file that is not a pidfile is never touched, and `stop` leaves alone a
//! bystander that merely has the pidfile open.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::support::*;

const NOBODY: u32 = 65534;

/// A root-owned file with mode 0600 and known content.
struct Victim {
    path: PathBuf,
}

impl Victim {
    fn new(dir: &Path) -> Victim {
        let path = dir.join("victim");
        std::fs::write(&path, "root's secret\n").unwrap();
        set_mode(&path, 0o600);
        Victim { path }
    }

    fn assert_untouched(&self) {
        let meta = std::fs::metadata(&self.path).expect("the victim is gone");
        assert_eq!(std::fs::read_to_string(&self.path).unwrap(), "root's secret\n", "the victim's content changed");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "the victim was chowned");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "the victim's mode changed");
    }
}

/// A directory that `nobody` owns (its log directory), inside the scratch directory.
fn nobodys_dir(s: &Scratch) -> PathBuf {
    let dir = s.join("logs");
    std::fs::create_dir(&dir).unwrap();
    nix::unistd::chown(&dir, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    dir
}

/// `conjure -u nobody -p PIDFILE -o LOG -- sleep 60`, expected to fail with 73, one line naming
/// the log, leaving no process and no pidfile.
fn start_refused(s: &Scratch, log: &Path) -> Output {
    let pidfile = s.join("d.pid");
    let out = TestCommand::conjure(argv!["-u", "nobody", "-p", &pidfile, "-o", log, "--", "sleep", "60"]).run();
    out.assert_code(73);
    let line = out.one_line_of_stderr();
    assert!(line.contains(&log.display().to_string()), "the error does not name the log\n{out}");
    assert!(!pidfile.exists(), "a refused start left its pidfile\n{out}");
    s.wait_no_process_left();
    out
}

#[test]
fn a_log_symlinked_to_roots_file_gets_the_daemon_user_nothing() {
    require_root!();
    let s = Scratch::new();
    let victim = Victim::new(s.path());
    let log = nobodys_dir(&s).join("out.log");
    std::os::unix::fs::symlink(&victim.path, &log).unwrap();
    start_refused(&s, &log);
    victim.assert_untouched();
}

#[test]
fn a_symlinked_directory_in_the_log_path_gets_the_daemon_user_nothing() {
    require_root!();
    let s = Scratch::new();
    let rootdir = s.join("root-only");
    std::fs::create_dir(&rootdir).unwrap();
    let victim = Victim::new(&rootdir);
    let link = nobodys_dir(&s).join("sub");
    std::os::unix::fs::symlink(&rootdir, &link).unwrap();
    // Through the planted directory link: an existing root file, and a new file in root's
    // directory.
    start_refused(&s, &link.join("victim"));
    start_refused(&s, &link.join("new.log"));
    victim.assert_untouched();
    assert!(!rootdir.join("new.log").exists(), "a file was created in root's directory");
}

#[test]
fn a_hard_link_to_roots_file_gets_the_daemon_user_nothing() {
    require_root!();
    let s = Scratch::new();
    let victim = Victim::new(s.path());
    let log = nobodys_dir(&s).join("out.log");
    std::fs::hard_link(&victim.path, &log).unwrap();
    start_refused(&s, &log);
    victim.assert_untouched();
}

#[test]
fn a_fifo_or_a_directory_as_log_is_refused_without_hanging() {
    require_root!();
    let s = Scratch::new();
    let dir = nobodys_dir(&s);
    let fifo = dir.join("fifo.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    nix::unistd::chown(&fifo, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    start_refused(&s, &fifo);
    // With a reader on the FIFO (this test, non-blocking) the open succeeds; the type still
    // refuses it.
    use std::os::unix::fs::OpenOptionsExt;
    let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let pidfile = s.join("d.pid");
    let out = TestCommand::conjure(argv!["-u", "nobody", "-p", &pidfile, "-o", &fifo, "--", "sleep", "60"]).run();
    out.assert_code(73);
    assert!(out.one_line_of_stderr().contains("not a regular file or a character device"), "{out}");
    drop(reader);
    s.wait_no_process_left();
    let subdir = dir.join("dir.log");
    std::fs::create_dir(&subdir).unwrap();
    start_refused(&s, &subdir);
}

#[test]
fn a_log_the_daemon_user_may_write_is_opened_as_that_user() {
    require_root!();
    let s = Scratch::new();
    let dir = nobodys_dir(&s);
    let log = dir.join("out.log");
    let pidfile = s.join("d.pid");
    TestCommand::conjure(argv!["-u", "nobody", "-p", &pidfile, "-o", &log, "--", testprog(), "output", "t", "1", "60"])
        .expect_success();
    let _daemon = Daemon::from_pidfile(&pidfile);
    wait_for_content(&log, "t out 1\n");
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "the log is not the daemon user's");
}

#[test]
fn dev_stdout_under_a_user_keeps_its_owner() {
    require_root!();
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let out = s.join("callers-stdout");
    std::fs::write(&out, "").unwrap();
    let mut c = TestCommand::conjure(argv!["-u", "nobody", "-p", &pidfile, "-o", "/dev/stdout", "--", "sleep", "60"]);
    c.command().stdout(std::fs::OpenOptions::new().append(true).open(&out).unwrap());
    c.command().status().expect("run conjure");
    let _daemon = Daemon::from_pidfile(&pidfile);
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "the caller's stdout was chowned to the daemon user");
}

#[test]
fn a_pidfile_owned_by_another_user_in_a_sticky_directory_is_refused() {
    require_root!();
    let s = Scratch::new();
    let tmp = s.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    set_mode(&tmp, 0o1777);
    let pidfile = tmp.join("d.pid");
    std::fs::write(&pidfile, "123\n").unwrap();
    nix::unistd::chown(&pidfile, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let out = TestCommand::conjure(argv!["-p", &pidfile, "--", "sleep", "60"]).run();
    out.assert_code(73);
    assert!(out.one_line_of_stderr().contains("owned by uid 65534"), "{out}");
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), "123\n", "the pidfile was rewritten");
    assert_eq!(std::fs::metadata(&pidfile).unwrap().uid(), NOBODY);
    s.wait_no_process_left();
}

#[test]
fn the_daemon_inherits_only_a_read_only_lock_fd() {
    require_root!();
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let report = nobodys_dir(&s).join("fds");
    TestCommand::conjure(argv!["-u", "nobody", "-p", &pidfile, "--", testprog(), "fds-to", &report]).expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    let fds = reported_fds(&wait_for_file(&report));
    let lock_fds: Vec<i32> =
        fds.iter().filter(|(_, t)| *t == &pidfile.display().to_string()).map(|(n, _)| *n).collect();
    assert_eq!(lock_fds.len(), 1, "the daemon should hold the pidfile once: {fds:?}");
    let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/{}", daemon.pid, lock_fds[0])).unwrap();
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).expect("flags").trim();
    let flags = u32::from_str_radix(flags, 8).unwrap();
    assert_eq!(flags & libc::O_ACCMODE as u32, libc::O_RDONLY as u32, "the inherited lock fd is writable: {info}");
    assert!(info.contains("FLOCK"), "the inherited fd does not hold the lock: {info}");
    // And the daemon user indeed cannot point the pidfile elsewhere through it.
    assert!(lock_is_held(&pidfile));
}

#[test]
fn stop_leaves_a_bystander_that_has_the_pidfile_open_alive() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    TestCommand::conjure(argv!["-p", &pidfile, "--", "sleep", "60"]).expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    let bystander = TestCommand::new("tail").args(argv!["-f", &pidfile]).spawn();
    wait_until(PATIENCE, "tail to open the pidfile", || holders(&pidfile).contains(&bystander.pid()).then_some(()));
    TestCommand::conjure(argv!["stop", "-p", &pidfile, "--timeout", "5s"]).expect_success();
    wait_dead(daemon.pid);
    assert!(Proc(bystander.pid()).alive(), "stop killed a process that merely had the pidfile open");
}

#[test]
fn a_file_that_is_not_a_pidfile_is_never_touched() {
    let s = Scratch::new();
    let conf = s.join("app.conf");
    std::fs::write(&conf, "[server]\nport = 80\n").unwrap();
    let start = TestCommand::conjure(argv!["-p", &conf, "--", "sleep", "60"]).run();
    start.assert_code(73);
    assert!(start.one_line_of_stderr().contains("not a pidfile"), "{start}");
    TestCommand::conjure(argv!["stop", "-p", &conf]).expect_code(1);
    TestCommand::conjure(argv!["status", "-p", &conf]).expect_code(4);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "[server]\nport = 80\n", "the file was changed");
    s.wait_no_process_left();
}

#[test]
fn a_fifo_as_pidfile_is_refused_without_hanging() {
    let s = Scratch::new();
    let fifo = s.join("d.pid");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let out = TestCommand::conjure(argv!["-p", &fifo, "--", "sleep", "60"]).run();
    out.assert_code(73);
    assert!(out.one_line_of_stderr().contains("not a regular file"), "{out}");
    TestCommand::conjure(argv!["status", "-p", &fifo]).expect_code(4);
    TestCommand::conjure(argv!["stop", "-p", &fifo]).expect_code(1);
    s.wait_no_process_left();
}

#[test]
fn a_pidfile_holding_0_signals_nobody() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    std::fs::write(&pidfile, "0\n").unwrap();
    // kill(0, TERM) would signal conjure's own process group: the stop itself among them.
    let out = TestCommand::conjure(argv!["stop", "-p", &pidfile]).run();
    assert_eq!(out.code(), Some(1), "stop should refuse, not be killed or succeed\n{out}");
    TestCommand::conjure(argv!["status", "-p", &pidfile]).expect_code(4);
    let locked = TestCommand::new("flock").args(argv![&pidfile, "sh", "-c", "sleep 60", "sh", &pidfile]).spawn();
    wait_until(PATIENCE, "flock to take the lock", || lock_is_held(&pidfile).then_some(()));
    TestCommand::conjure(argv!["stop", "-p", &pidfile]).expect_code(1);
    assert!(Proc(locked.pid()).alive());
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), "0\n");
}

#[test]
fn huge_durations_do_not_panic() {
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    let huge = "2562047788015216h";
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    TestCommand::conjure(argv![
        "-p",
        &pidfile,
        "--ready-timeout",
        huge,
        "--kill-after",
        huge,
        "--ready-on",
        format!("tcp:127.0.0.1:{port}"),
        "--",
        example_bin("readyprog"),
        "listen-tcp",
        &port
    ])
    .expect_success();
    let daemon = Daemon::from_pidfile(&pidfile);
    TestCommand::conjure(argv!["stop", "-p", &pidfile, "--timeout", huge]).expect_success();
    wait_dead(daemon.pid);
    let out =
        TestCommand::conjure(argv!["-p", &pidfile, "--ready-timeout", "99999999999999999999999h", "--", "true"]).run();
    out.assert_code(0);
}

#[test]
fn the_pidfile_replaced_between_open_and_lock_is_locked_anew() {
    // strace holds conjure's flock for a moment, while the test replaces the pidfile: a launcher
    // that did not check the inode after locking would lock (and write) the unlinked file.
    let Some(strace) = find_tool("strace", "strace") else { return };
    let s = Scratch::new();
    let pidfile = s.join("d.pid");
    std::fs::write(&pidfile, "").unwrap();
    let old_inode = inode(&pidfile);
    let mut c = TestCommand::new(&strace);
    c.args(argv!["-qq", "-e", "trace=flock", "-e", "inject=flock:delay_enter=700000:when=1", "-o", "/dev/null"]);
    c.args(argv![conjure_bin(), "-p", &pidfile, "--", "sleep", "60"]);
    let running = c.spawn();
    // While conjure waits in its first flock, the file it opened is replaced by another.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let tmp = s.join("replacement");
    std::fs::write(&tmp, "").unwrap();
    std::fs::rename(&tmp, &pidfile).unwrap();
    assert_ne!(inode(&pidfile), old_inode, "the pidfile was not replaced");
    running.wait().assert_code(0);
    let daemon = Daemon::from_pidfile(&pidfile);
    assert!(daemon.proc().alive());
    assert!(lock_is_held(&pidfile), "the daemon locked a file that no longer had the pidfile's name");
}
