//! What every test needs: finding the binaries, running a command and explaining its failure,
//! reading a process through `/proc`, waiting with a deadline, and cleaning up.
//!
//! Tests run in parallel threads of one process, so nothing here changes process-wide state
//! (cwd, environment, signal dispositions): environment goes to children through
//! `Command::env`, and every fd this process opens is close-on-exec, so a child spawned by one
//! test never inherits what another test opened.
//!
//! Cleanup is by pid and in two layers. [`Daemon`] kills the process it was made for and every
//! process that holds its pidfile open. [`Scratch`] (each test's temporary directory) kills, when
//! dropped, every process that still refers to the directory: through its command line, its
//! open files or its working directory. Every daemon a test starts names a path in its scratch
//! directory, so even a test that panics halfway leaves nothing running.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails. Generous: it bounds a hang, it does not
/// measure speed.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The `conjure` binary under test.
pub fn conjure_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conjure"))
}

/// A helper program built as an example (`testprog`, `libdaemon`): `cargo test` builds examples
/// into `target/debug/examples/`, next to the `deps/` directory this test binary runs from.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a directory");
    let path = deps.parent().expect("deps has a parent").join("examples").join(name);
    assert!(path.exists(), "helper {} is missing; run `cargo test`, which builds examples", path.display());
    assert_fresh(&path, name);
    path
}

/// `cargo test --test integration` builds the test and the binary but not the examples, so a
/// helper can be older than the library it links: fail loudly instead of testing old code.
/// The binary's own files (`src/main.rs` and the modules it declares) are not the library's,
/// and a change there leaves the helpers as they are.
fn assert_fresh(helper: &Path, name: &str) {
    fn newest(dir: &Path, skip: &[PathBuf]) -> std::time::SystemTime {
        let mut t = std::time::SystemTime::UNIX_EPOCH;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if skip.contains(&p) {
                continue;
            }
            let m = if p.is_dir() { newest(&p, skip) } else { e.metadata().and_then(|m| m.modified()).unwrap_or(t) };
            t = t.max(m);
        }
        t
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let main = root.join("src/main.rs");
    let binary_only: Vec<PathBuf> = std::fs::read_to_string(&main)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';').map(|m| root.join(format!("src/{m}.rs"))))
        .chain([main.clone()])
        .collect();
    let sources = newest(&root.join("src"), &binary_only).max(
        std::fs::metadata(root.join("integration/helpers").join(format!("{name}.rs")))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH),
    );
    let built = std::fs::metadata(helper).and_then(|m| m.modified()).expect("helper mtime");
    assert!(
        built >= sources,
        "helper {} is older than its sources; run `cargo test` (which builds examples) or `cargo build --examples`",
        helper.display()
    );
}

/// `testprog`'s path.
pub fn testprog() -> PathBuf {
    example_bin("testprog")
}

/// `libdaemon`'s path.
pub fn libdaemon() -> PathBuf {
    example_bin("libdaemon")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns from the test, loudly, when it needs root and this is not root. CI runs as root, so
/// there these tests run; a developer's `cargo test` says what it skipped.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::support::is_root() {
            $crate::support::say_skipped("needs root");
            return;
        }
    };
}

/// Polls `f` until it returns `Some`, panicking with `what` once `deadline` has passed.
pub fn wait_until<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A test's temporary directory. Dropping it kills every process that still refers to it.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A fresh directory, readable and traversable by everyone (tests that run as `nobody` need
    /// to reach paths in it).
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new().prefix("conjure-it-").tempdir().expect("tempdir");
        set_mode(dir.path(), 0o755);
        Scratch { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Pids of every process (but this one) whose command line, open files or working
    /// directory name something in this directory.
    pub fn processes(&self) -> Vec<i32> {
        let root = self.dir.path().as_os_str().as_encoded_bytes();
        let me = std::process::id() as i32;
        all_pids()
            .into_iter()
            .filter(|&pid| pid != me)
            .filter(|&pid| {
                let p = Proc(pid);
                if !p.alive() {
                    return false;
                }
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let by_cmdline = cmdline.split(|b| *b == 0).any(|arg| mentions(arg, root));
                let by_cwd = p.cwd().is_some_and(|c| mentions(c.as_os_str().as_encoded_bytes(), root));
                let by_fd = p.fds().values().any(|t| mentions(t.as_os_str().as_encoded_bytes(), root));
                by_cmdline || by_cwd || by_fd
            })
            .collect()
    }

    /// Waits (bounded) until no process refers to this directory any more: a child that
    /// failed may still be on its way out when its launcher reports. Nothing is killed here.
    pub fn wait_no_process_left(&self) {
        let end = Instant::now() + PATIENCE;
        loop {
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= end {
                let who: Vec<String> = left.iter().map(|p| describe(*p)).collect();
                panic!("processes still refer to {} after {PATIENCE:?}: {}", self.path().display(), who.join("; "));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for pid in self.processes() {
            kill_and_wait(pid);
        }
    }
}

/// Whether `hay` contains the path `dir` itself or a path below it.
fn mentions(hay: &[u8], dir: &[u8]) -> bool {
    (0..hay.len())
        .any(|i| hay[i..].starts_with(dir) && matches!(hay.get(i + dir.len()), None | Some(b'/') | Some(b' ')))
}

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc").expect("/proc").flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// SIGKILLs `pid` and waits (bounded) until it is gone or a zombie.
pub fn kill_and_wait(pid: i32) {
    if pid <= 1 || pid == std::process::id() as i32 {
        return;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let end = Instant::now() + PATIENCE;
    while Proc(pid).alive() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sets a file's permission bits.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A daemon started by a test: SIGKILLed on drop, with every process holding its pidfile.
pub struct Daemon {
    /// Its pid.
    pub pid: i32,
    pidfile: Option<PathBuf>,
}

impl Daemon {
    /// Guards `pid`.
    pub fn new(pid: i32, pidfile: Option<&Path>) -> Daemon {
        Daemon { pid, pidfile: pidfile.map(Path::to_path_buf) }
    }

    /// Guards the process named by `pidfile` (which must name one).
    pub fn from_pidfile(pidfile: &Path) -> Daemon {
        let pid = read_pidfile(pidfile);
        Daemon::new(pid, Some(pidfile))
    }

    /// Its `/proc` entry.
    pub fn proc(&self) -> Proc {
        Proc(self.pid)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_and_wait(self.pid);
        if let Some(p) = &self.pidfile {
            for holder in holders(p) {
                kill_and_wait(holder);
            }
        }
    }
}

/// Reads a pidfile and checks its format: decimal pid and one newline.
pub fn read_pidfile(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read pidfile {}: {e}", path.display()));
    let pid = text.strip_suffix('\n').and_then(|t| t.parse::<i32>().ok());
    pid.unwrap_or_else(|| panic!("pidfile {} holds {text:?}, not \"PID\\n\"", path.display()))
}

/// Processes (but this one) that have `path` open.
pub fn holders(path: &Path) -> Vec<i32> {
    let Ok(meta) = std::fs::metadata(path) else { return Vec::new() };
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me && Proc(pid).alive())
        .filter(|&pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
                d.flatten()
                    .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino()))
            })
        })
        .collect()
}

/// One line about a process, for failure messages.
pub fn describe(pid: i32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    format!("pid {pid}: {}", cmd.join(" ").trim())
}

/// The fields of `/proc/PID/stat` the tests use.
#[derive(Debug, Clone)]
pub struct Stat {
    /// Single-letter state (`R`, `S`, `Z`, …).
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
    /// Controlling terminal (0: none).
    pub tty_nr: u64,
    /// The foreground process group of its controlling terminal (-1: none).
    pub tpgid: i32,
}

/// A process, seen through `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc(pub i32);

impl Proc {
    /// `/proc/PID/stat`, parsed after the last `)`, since the command name may hold spaces
    /// and parentheses. `None` when the process is gone.
    pub fn stat(&self) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).ok()?;
        let rest = &text[text.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        Some(Stat {
            state: f.first()?.chars().next()?,
            ppid: f.get(1)?.parse().ok()?,
            pgid: f.get(2)?.parse().ok()?,
            sid: f.get(3)?.parse().ok()?,
            tty_nr: f.get(4)?.parse().ok()?,
            tpgid: f.get(5)?.parse().ok()?,
        })
    }

    /// Whether the process exists and is not a zombie.
    pub fn alive(&self) -> bool {
        self.stat().is_some_and(|s| s.state != 'Z' && s.state != 'X')
    }

    /// A field of `/proc/PID/status`, trimmed (`Uid`, `SigIgn`, …).
    pub fn status(&self, field: &str) -> String {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.0))
            .unwrap_or_else(|e| panic!("read /proc/{}/status: {e}", self.0));
        let prefix = format!("{field}:");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.0))
    }

    /// A signal-set field of `/proc/PID/status` (`SigIgn`, `SigBlk`) as a bit mask.
    pub fn sigset(&self, field: &str) -> u64 {
        u64::from_str_radix(&self.status(field), 16).expect("hex signal set")
    }

    /// Numbers of a whitespace-separated status field (`Uid`, `Gid`, `Groups`).
    pub fn ids(&self, field: &str) -> Vec<u32> {
        self.status(field).split_whitespace().map(|n| n.parse().expect("id")).collect()
    }

    /// The working directory.
    pub fn cwd(&self) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{}/cwd", self.0)).ok()
    }

    /// The executable.
    pub fn exe(&self) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{}/exe", self.0)).ok()
    }

    /// The command line.
    pub fn cmdline(&self) -> Vec<String> {
        let raw = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
    }

    /// Open fds and what they point to.
    pub fn fds(&self) -> BTreeMap<i32, PathBuf> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.0)) else { return BTreeMap::new() };
        dir.flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, std::fs::read_link(e.path()).ok()?)))
            .collect()
    }

    /// The environment it was started with.
    pub fn environ(&self) -> BTreeMap<String, String> {
        let raw = std::fs::read(format!("/proc/{}/environ", self.0)).unwrap_or_default();
        raw.split(|b| *b == 0)
            .filter_map(|e| {
                let e = String::from_utf8_lossy(e);
                let (k, v) = e.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect()
    }
}

/// The bit of signal `sig` in a `/proc` signal set.
pub fn sigbit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// A command under test. Stdout and stderr go to anonymous files, not pipes, so that a daemon
/// that wrongly kept them open cannot make the test hang waiting for end of file.
pub struct TestCommand {
    cmd: Command,
    shown: String,
    journal: bool,
}

/// A finished command: its status and output.
pub struct Output {
    /// What ran, for messages.
    pub shown: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Its pid.
    pub pid: i32,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

impl TestCommand {
    /// `program` with no arguments yet; `CONJURE_LOG` and `JOURNAL_STREAM` are removed from its
    /// environment so that a developer's setting (or a test run under systemd) does not change
    /// what tests see.
    pub fn new(program: impl AsRef<OsStr>) -> TestCommand {
        let mut cmd = Command::new(program.as_ref());
        cmd.env_remove("CONJURE_LOG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null());
        TestCommand { cmd, shown: program.as_ref().to_string_lossy().into_owned(), journal: false }
    }

    /// `conjure ARGS`.
    pub fn conjure<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> TestCommand {
        let mut c = TestCommand::new(conjure_bin());
        c.args(args);
        c
    }

    /// `conjure ARGS` on a kernel without pidfds, as far as conjure can tell: `testprog wrap
    /// --no-pidfd` makes `pidfd_open` fail with ENOSYS, as before Linux 5.3.
    pub fn conjure_without_pidfds<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> TestCommand {
        let mut c = TestCommand::new(testprog());
        c.args(["wrap", "--no-pidfd", "--"]).args([conjure_bin()]).args(args);
        c
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Self {
        for a in args {
            self.shown.push(' ');
            self.shown.push_str(&a.as_ref().to_string_lossy());
            self.cmd.arg(a);
        }
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(&mut self, key: &str, value: impl AsRef<OsStr>) -> &mut Self {
        self.shown = format!("{key}={} {}", value.as_ref().to_string_lossy(), self.shown);
        self.cmd.env(key, value);
        self
    }

    /// The program and its arguments.
    pub fn argv(&self) -> Vec<OsString> {
        std::iter::once(self.cmd.get_program()).chain(self.cmd.get_args()).map(OsStr::to_owned).collect()
    }

    /// The underlying command, for stdin and other settings.
    pub fn command(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Makes its stderr look like systemd's journal: `JOURNAL_STREAM` names the device and
    /// inode of the file its stderr goes to, as systemd does for `StandardError=journal`.
    pub fn stderr_is_journal(&mut self) -> &mut Self {
        self.journal = true;
        self
    }

    /// Starts it without waiting.
    pub fn spawn(&mut self) -> Running {
        let out = tempfile::tempfile().expect("tempfile");
        let err = tempfile::tempfile().expect("tempfile");
        if self.journal {
            let meta = err.metadata().expect("fstat stderr file");
            self.cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
            self.shown = format!("JOURNAL_STREAM=<its stderr> {}", self.shown);
        }
        self.cmd.stdout(out.try_clone().expect("dup")).stderr(err.try_clone().expect("dup"));
        let child = self.cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.shown));
        Running { child: Some(child), out, err, shown: self.shown.clone() }
    }

    /// Runs it to completion (bounded by [`PATIENCE`]).
    pub fn run(&mut self) -> Output {
        self.spawn().wait()
    }

    /// Runs it and asserts its exit code, showing everything about it when that fails.
    pub fn expect_code(&mut self, code: i32) -> Output {
        let out = self.run();
        out.assert_code(code);
        out
    }

    /// Runs it and asserts exit 0.
    pub fn expect_success(&mut self) -> Output {
        self.expect_code(0)
    }
}

/// A command that is running; killed on drop if still running.
pub struct Running {
    child: Option<Child>,
    out: File,
    err: File,
    shown: String,
}

impl Running {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits (bounded by [`PATIENCE`]) for it to exit.
    pub fn wait(mut self) -> Output {
        let mut child = self.child.take().expect("waited once");
        let pid = child.id() as i32;
        let shown = self.shown.clone();
        let status = wait_until(PATIENCE, &format!("`{shown}` to exit"), || child.try_wait().expect("try_wait"));
        let read = |f: &mut File| {
            let mut s = String::new();
            f.rewind().expect("rewind");
            f.read_to_string(&mut s).expect("read output");
            s
        };
        Output { shown, status, pid, stdout: read(&mut self.out), stderr: read(&mut self.err) }
    }

    /// Its stdin, when the command was set up with a piped one.
    pub fn stdin(&mut self) -> &mut std::process::ChildStdin {
        self.child.as_mut().and_then(|c| c.stdin.as_mut()).expect("a piped stdin (set it with `command().stdin`)")
    }

    /// What it wrote on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        let mut s = String::new();
        let mut f = self.out.try_clone().expect("dup");
        f.rewind().expect("rewind");
        f.read_to_string(&mut s).expect("read output");
        s
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(mut self) -> Output {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.wait()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Output {
    /// Its exit code (`None`: killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics, showing the command, status and output, unless it exited with `code`.
    pub fn assert_code(&self, code: i32) {
        if self.status.code() != Some(code) {
            panic!("expected exit code {code}\n{self}");
        }
    }

    /// Asserts that stderr is exactly one line, and returns it.
    pub fn one_line_of_stderr(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(lines.len() == 1 && self.stderr.ends_with('\n'), "expected exactly one line on stderr\n{self}");
        lines[0]
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.shown, self.status, self.stdout, self.stderr
        )
    }
}

/// `conjure ARGS`, run through `setpriv` as an unprivileged user (uid/gid `id`), so that tests
/// of "permission denied" work as root, where root would be allowed everything. Not root: the
/// command runs as is, already unprivileged.
pub fn as_unprivileged(id: u32, program: &Path, args: Vec<OsString>) -> TestCommand {
    if is_root() {
        let mut c = TestCommand::new("setpriv");
        c.args([
            OsString::from(format!("--reuid={id}")),
            OsString::from(format!("--regid={id}")),
            OsString::from("--clear-groups"),
            OsString::from("--"),
            program.as_os_str().to_owned(),
        ]);
        c.args(args);
        c
    } else {
        let mut c = TestCommand::new(program);
        c.args(args);
        c
    }
}

/// `flock -n PATH true`: whether someone else holds an exclusive-incompatible lock on it.
pub fn lock_is_held(path: &Path) -> bool {
    let out = TestCommand::new("flock").args([OsStr::new("-n"), path.as_os_str(), OsStr::new("true")]).run();
    match out.code() {
        Some(0) => false,
        Some(1) => true,
        _ => panic!("flock failed\n{out}"),
    }
}

/// The inode of `path` (not followed).
pub fn inode(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).ino()
}

/// Waits until the file exists and returns its content (files written by `testprog` appear
/// complete, by rename).
pub fn wait_for_file(path: &Path) -> String {
    wait_until(PATIENCE, &format!("{} to appear", path.display()), || std::fs::read_to_string(path).ok())
}

/// Waits until the file holds exactly `expected` (output written by a daemon).
pub fn wait_for_content(path: &Path, expected: &str) {
    let end = Instant::now() + PATIENCE;
    loop {
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now == expected {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {PATIENCE:?}: {} never held {expected:?}; last seen: {now:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `pid` is gone (or a zombie).
pub fn wait_dead(pid: i32) {
    wait_until(PATIENCE, &format!("pid {pid} to exit"), || (!Proc(pid).alive()).then_some(()));
}

/// The `fd N TARGET` lines of a `testprog` report, as a map.
pub fn reported_fds(report: &str) -> BTreeMap<i32, String> {
    report
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("fd ")?;
            let (n, t) = rest.split_once(' ')?;
            Some((n.parse().ok()?, t.to_string()))
        })
        .collect()
}

/// A `key value` line of a `testprog` report.
pub fn reported(report: &str, key: &str) -> String {
    report
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).map(str::to_string))
        .unwrap_or_else(|| panic!("no {key} in report:\n{report}"))
}

/// An argument list from anything path- or string-like: `argv!["-p", &pidfile, "--", "sleep"]`.
#[macro_export]
macro_rules! argv {
    ($($x:expr),* $(,)?) => {
        vec![$(::std::ffi::OsString::from(::std::convert::AsRef::<::std::ffi::OsStr>::as_ref(&$x))),*]
    };
}

/// The direct children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    all_pids().into_iter().filter(|p| Proc(*p).stat().is_some_and(|st| st.ppid == pid)).collect()
}

/// `unshare --pid --fork --mount-proc conjure -f -p SCRATCH/d.pid FLAGS -- PROGRAM`: conjure
/// is PID 1 of a new PID namespace.
pub fn as_pid1(s: &Scratch, flags: &[&str], program: Vec<OsString>) -> Running {
    let mut c = TestCommand::new("unshare");
    c.args(["--pid", "--fork", "--mount-proc", "--kill-child"]).args([conjure_bin()]);
    c.args(["-f", "-p"]).args([s.join("d.pid")]).args(flags).args(["--"]).args(program);
    c.spawn()
}

/// The host pid of the process that is PID 1 in a namespace under `unshare` (its child).
pub fn pid1_under(unshare: i32) -> i32 {
    wait_until(PATIENCE, "conjure as PID 1", || {
        children(unshare).into_iter().find(|p| Proc(*p).status("NSpid").split_whitespace().last() == Some("1"))
    })
}

/// Sends `signal` (a raw number: real-time ones too) to `pid`.
pub fn send_signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) with plain integers.
    let r = unsafe { libc::kill(pid, signal) };
    assert_eq!(r, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// The `cargo` that runs this test (`$CARGO`), or the one on `PATH`. When there is none, says
/// `SKIPPED` (and fails under `CI=true`) and returns `None`.
pub fn cargo_bin() -> Option<PathBuf> {
    let found = std::env::var_os("CARGO").map(PathBuf::from).filter(|p| p.is_file()).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|d| d.join("cargo")).find(|p| p.is_file())
    });
    if found.is_none() {
        skip_or_fail("`cargo` not found (neither $CARGO nor on PATH)");
    }
    found
}

/// Where a tool a test needs is installed (the sbin and bin directories, whatever this
/// process's `PATH`: a normal user's may lack `/usr/sbin`). When it is missing, says `SKIPPED`
/// and returns `None`; under `CI=true`, where everything must be installed, it fails instead.
pub fn find_tool(tool: &str, package: &str) -> Option<PathBuf> {
    let found =
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.is_file());
    if found.is_none() {
        skip_or_fail(&format!("`{tool}` not found (apt-get install {package})"));
    }
    found
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Says `SKIPPED: <test>: <why>` straight to fd 2: libtest captures `eprintln!` of passing
/// tests, and a skip must not be silent.
pub fn say_skipped(why: &str) {
    // libtest names each test's thread after the test.
    let name = std::thread::current().name().unwrap_or("integration").to_string();
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("SKIPPED: {name}: {why}\n").as_bytes());
}

/// Skips loudly ([`say_skipped`]) or, under `CI=true`, where everything is installed, fails:
/// for what a test needs but cannot have here.
pub fn skip_or_fail(why: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}, and CI=true requires it");
    say_skipped(why);
}

/// Runs `cargo ARGS` in the repository, once per test process for the same arguments; false
/// (after saying why: skipped, or failed under `CI=true`) when it fails.
fn cargo_once(args: &'static [&'static str]) -> bool {
    use std::sync::{Mutex, OnceLock};
    /// Each `cargo` command run so far, and how it went.
    type Runs = BTreeMap<&'static [&'static str], Result<(), String>>;
    static DONE: OnceLock<Mutex<Runs>> = OnceLock::new();
    let Some(cargo) = cargo_bin() else {
        return false;
    };
    let done = DONE.get_or_init(Default::default);
    // One build at a time: cargo would serialize them anyway, and a second caller with the same
    // arguments waits here for the first one's result.
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    let result = done.entry(args).or_insert_with(|| {
        let out = Command::new(&cargo)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", cargo.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        Err(format!("`cargo {}` failed ({}):\n{}", args.join(" "), out.status, tail.join("\n")))
    });
    match result {
        Ok(()) => true,
        Err(why) => {
            skip_or_fail(why);
            false
        }
    }
}

/// `target/dist/` after `cargo xtask dist` (which `.ci/run` runs first). The test runs it
/// itself, once per test process, so that the artefacts are those of the sources under test:
/// quick when they are current, about a minute the first time. `None` when it cannot be built
/// here (say, without `rustup target add x86_64-unknown-linux-musl`): skipped loudly.
pub fn dist_dir() -> Option<PathBuf> {
    if !cargo_once(&["xtask", "dist"]) {
        return None;
    }
    Some(target_dir().join("dist"))
}

/// A helper program (`readyprog`, …) built static for x86_64-unknown-linux-musl, like the
/// shipped binary (same target and profile, so the library is built once for both), for roots
/// that hold no C library. `None` when it cannot be built here: skipped loudly.
pub fn static_example(name: &'static str) -> Option<PathBuf> {
    let args: &'static [&'static str] = match name {
        "readyprog" => &[
            "build",
            "--quiet",
            "--package",
            "conjure-daemon",
            "--example",
            "readyprog",
            "--profile",
            "release-static",
            "--target",
            "x86_64-unknown-linux-musl",
        ],
        "testprog" => &[
            "build",
            "--quiet",
            "--package",
            "conjure-daemon",
            "--example",
            "testprog",
            "--profile",
            "release-static",
            "--target",
            "x86_64-unknown-linux-musl",
        ],
        _ => panic!("no static build of {name} is set up"),
    };
    if !cargo_once(args) {
        return None;
    }
    Some(target_dir().join("x86_64-unknown-linux-musl/release-static/examples").join(name))
}

/// Cargo's target directory (where this test binary was built: `target/debug/deps/..`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target/debug/deps/integration-HASH").to_path_buf()
}

/// A fake supervisor: a datagram socket in the scratch directory for `NOTIFY_SOCKET`, with
/// `SO_PASSCRED` on, so that each message says which process sent it, as systemd sees it.
pub struct FakeSupervisor {
    sock: std::os::unix::net::UnixDatagram,
    /// Its path, for `NOTIFY_SOCKET`.
    pub path: PathBuf,
}

/// A datagram the fake supervisor received.
pub struct Message {
    /// Its text.
    pub text: String,
    /// The sender's pid, as the kernel stamped it.
    pub pid: Option<i32>,
    /// The fds that came with it.
    pub fds: Vec<std::os::fd::OwnedFd>,
}

impl FakeSupervisor {
    /// Binds `notify.sock` in the scratch directory.
    pub fn new(s: &Scratch) -> FakeSupervisor {
        let path = s.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        FakeSupervisor { sock, path }
    }

    /// The next datagram, as text (panics after the deadline).
    pub fn next(&self) -> String {
        self.next_message().text
    }

    /// The next datagram with its sender and fds (panics after the deadline).
    pub fn next_message(&self) -> Message {
        self.receive(PATIENCE).unwrap_or_else(|| panic!("no notify datagram within {PATIENCE:?}"))
    }

    /// The next datagram within `timeout`, if one comes.
    pub fn receive(&self, timeout: Duration) -> Option<Message> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        let mut cmsg = nix::cmsg_space!(UnixCredentials, [std::os::fd::RawFd; 253]);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let flags = MsgFlags::MSG_CMSG_CLOEXEC;
            let msg = match recvmsg::<()>(self.sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return None,
                // A receive with a timeout is not restarted once this process was stopped and
                // continued (or frozen and thawed): what is left of the timeout is waited again.
                Err(nix::errno::Errno::EINTR) if !left.is_zero() => continue,
                Err(nix::errno::Errno::EINTR) => return None,
                Err(e) => panic!("recvmsg on the fake supervisor: {e}"),
            };
            let mut pid = None;
            let mut fds = Vec::new();
            for c in msg.cmsgs().expect("control data fits") {
                match c {
                    ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                    // SAFETY: the kernel just installed these fds for us; nothing else owns them.
                    ControlMessageOwned::ScmRights(raw) => {
                        fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }))
                    }
                    _ => {}
                }
            }
            let n = msg.bytes;
            return Some(Message { text: String::from_utf8_lossy(&buf[..n]).into_owned(), pid, fds });
        }
    }

    /// Datagrams until one contains `needle`; returns all of them.
    pub fn until(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let m = self.next();
            let done = m.contains(needle);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }
}

/// How many fds `pid` has open.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// A fresh pseudo-terminal: its master (non-blocking, close-on-exec) and its terminal side
/// (close-on-exec, not made anyone's controlling terminal).
pub fn pty_pair() -> (std::fs::File, std::fs::File) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).expect("posix_openpt");
    nix::pty::grantpt(&master).expect("grantpt");
    nix::pty::unlockpt(&master).expect("unlockpt");
    let name = nix::pty::ptsname_r(&master).expect("ptsname");
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .expect("open the pty");
    let master = File::from(OwnedFd::from(master));
    fcntl(master.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK | OFlag::O_RDWR)).expect("non-blocking master");
    (master, slave)
}
