//! A harness that boots a real systemd (257, Debian trixie) in a `systemd-nspawn` container, so
//! that conjure's unit files are tested under the supervisor they are written for, not against a
//! fake notify socket.
//!
//! The measured facts this builds on are in `shared/notes/systemd-in-nspawn.md`; the choices:
//!
//! - **One cached root filesystem, one overlay per container.** `mkrootfs.sh` debootstraps trixie
//!   once into `/var/cache/conjure-test/` (a `tar.zst`, extracted into a lower dir). Every
//!   container mounts an overlayfs over it with a fresh upper dir, so the cache is never
//!   modified, a test starts from a pristine system, and containers can run in parallel. The
//!   unit files of a test are written into the upper dir before boot, so systemd loads them at
//!   boot without a `daemon-reload`.
//! - **A private mount namespace per container.** nspawn runs under `unshare --mount`; the
//!   overlay (and a tmpfs on `/run/systemd/nspawn`, which silences nspawn's complaint about the
//!   host's non-tmpfs `/run`) is mounted inside it. The mounts exist only while the container's
//!   processes do, so even a `kill -9` of the test run cannot leave a stale mount on the host.
//! - **A cgroup per container.** `--keep-unit` (there is no host systemd to make a scope) makes
//!   nspawn create `payload` and `supervisor` cgroups under its caller's cgroup and leave them
//!   behind; parallel containers would collide there. So nspawn first moves itself into a fresh
//!   cgroup named after the container, in every hierarchy systemd uses (`name=systemd` and
//!   `unified` on these hybrid hosts). That cgroup is also how leftovers are found: every process
//!   of a container lives in it.
//! - **Parent-death signals.** nspawn is started under `setpriv --pdeathsig TERM`, and
//!   `--kill-signal=SIGRTMIN+4` turns that SIGTERM into an orderly poweroff of the container:
//!   when the test thread dies, its container goes too. Commands run inside get
//!   `--pdeathsig KILL`: systemd SIGSTOPs every process in the container at shutdown, and a
//!   stopped `nsenter` whose caller is gone would hang the shutdown. Because Linux delivers the
//!   parent-death signal when the *thread* that forked exits, a [`Container`] is `!Send`: it
//!   lives and dies on the thread that booted it.
//! - **`nsenter` instead of `machinectl`.** `machinectl`, `systemctl -M` and `systemd-run -M`
//!   talk to `systemd-machined` through the host's systemd, and these hosts run none (hence also
//!   `--register=no`). `nsenter -t PID1 -a -r -w` enters all the container's namespaces and its
//!   root directly; `systemctl` inside then talks to the container's systemd on its private bus.
//! - **Names as markers.** A container is named `conjure-test-<pid>.<starttime>-<n>` after the
//!   test process that booted it. The same name is its machine name (in nspawn's command line),
//!   its cgroup and its scratch dir. At start the harness sweeps what earlier, interrupted runs
//!   left (processes, cgroups, scratch dirs) — only things with that prefix whose owning test
//!   process no longer exists, never anything else.
//!
//! Every wait has a deadline and says what it waited for, with nspawn's console output, when it
//! gives up.
//!
//! Use: call [`suite_available`] first (it prints `SKIPPED: systemd suite: <why>` and returns
//! false where the suite cannot run; with `CI=true` it fails instead), then [`Container::boot`].

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write as _};
use std::marker::PhantomData;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod deb;
mod selftest;
mod units;

/// The prefix of every container name, cgroup and scratch dir this harness makes.
const PREFIX: &str = "conjure-test-";
/// From starting nspawn to `systemctl is-system-running` answering. A boot takes well under
/// a second; the margin is for a loaded 2-core machine building the rootfs meanwhile.
const BOOT_DEADLINE: Duration = Duration::from_secs(60);
/// Default bound of one command run inside a container.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// From asking for poweroff to nspawn having exited (a poweroff takes about 0.2 s).
const POWEROFF_DEADLINE: Duration = Duration::from_secs(30);
/// PATH for nspawn and for commands run inside the container.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host tools the harness runs (debootstrap and zstd are checked by `mkrootfs.sh`).
const HOST_TOOLS: &[&str] =
    &["systemd-nspawn", "debootstrap", "zstd", "setpriv", "unshare", "nsenter", "timeout", "mount", "umount"];

/// Says whether the systemd suite can run here, preparing it on the first call: checks root and
/// the host tools, builds or extracts the cached root filesystem (`mkrootfs.sh`) and sweeps
/// leftovers of earlier interrupted runs.
///
/// When it cannot run this prints `SKIPPED: systemd suite: <why>` to stderr and returns false,
/// so a test just returns; but when `CI=true` (CI installs everything), it panics instead. Set
/// `CONJURE_SKIP_SYSTEMD=1` to skip the suite on purpose (this skips under CI too, loudly).
pub fn suite_available() -> bool {
    match prepared() {
        Ok(_) => true,
        Err(why) => {
            let opted_out = std::env::var_os("CONJURE_SKIP_SYSTEMD").is_some();
            if std::env::var("CI").as_deref() == Ok("true") && !opted_out {
                panic!("systemd suite cannot run, and CI=true requires it: {why}");
            }
            // Straight to fd 2: libtest captures `eprintln!` of passing tests, and a skip
            // must not be silent.
            let _ = writeln!(io::stderr(), "SKIPPED: systemd suite: {why}");
            false
        }
    }
}

/// The lower dir (extracted root filesystem), once per test process.
fn prepared() -> Result<&'static Path, String> {
    static PREPARED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PREPARED
        .get_or_init(|| {
            if std::env::var_os("CONJURE_SKIP_SYSTEMD").is_some() {
                return Err("CONJURE_SKIP_SYSTEMD is set".into());
            }
            if !nix::unistd::geteuid().is_root() {
                return Err("not root (nspawn, overlay mounts and cgroups need it)".into());
            }
            for tool in HOST_TOOLS {
                if which(tool).is_none() {
                    return Err(format!("`{tool}` not found (apt-get install systemd-container debootstrap zstd)"));
                }
            }
            if hierarchies().is_empty() {
                return Err("no cgroup hierarchy found under /sys/fs/cgroup".into());
            }
            let lower = build_rootfs()?;
            sweep();
            Ok(lower)
        })
        .as_deref()
        .map_err(Clone::clone)
}

fn which(tool: &str) -> Option<PathBuf> {
    PATH.split(':').map(|dir| Path::new(dir).join(tool)).find(|p| p.is_file())
}

/// Runs `mkrootfs.sh`, which builds the cache if needed (about 35 s, once per machine) and
/// extracts it if the tarball changed, and prints the lower dir as its last line.
fn build_rootfs() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/systemd/mkrootfs.sh");
    let started = Instant::now();
    // Its stderr (progress, or debootstrap's log tail) goes straight to the test's stderr.
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({}); its output is above", script.display(), out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lower = PathBuf::from(stdout.lines().last().unwrap_or_default());
    if !lower.join("usr/lib/systemd/systemd").exists() {
        return Err(format!("{} printed {lower:?}, which holds no systemd", script.display()));
    }
    eprintln!("systemd harness: root filesystem ready at {} in {:?}", lower.display(), started.elapsed());
    Ok(lower)
}

/// Where containers keep their overlay upper/work dirs and nspawn's log.
fn scratch_root() -> PathBuf {
    std::env::var_os("CONJURE_SYSTEMD_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/conjure-systemd"))
}

/// The cgroup hierarchies a container gets its own cgroup in: `name=systemd` and `unified` on a
/// hybrid host (as here), or the one root of a pure cgroup v2 host.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    ["systemd", "unified"].iter().map(|h| root.join(h)).filter(|p| p.join("cgroup.procs").exists()).collect()
}

/// `<pid>.<starttime>` of this test process: unique across pid reuse.
fn owner_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let pid = std::process::id();
        let start = start_time(pid).expect("read /proc/self/stat");
        format!("{pid}.{start}")
    })
}

/// Field 22 of `/proc/PID/stat`: the start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a name of ours belongs to a test process that is gone (so its leftovers are fair
/// game). Names of live test processes, and names we cannot parse, are left alone.
fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let Some((tag, _n)) = rest.rsplit_once('-') else {
        return false;
    };
    let Some((pid, start)) = tag.split_once('.') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) != Some(start)
}

/// Removes what earlier, interrupted test runs left behind: their nspawn processes, every
/// process in their cgroups, the cgroups, and their scratch dirs. Only names with our prefix
/// whose owning test process is gone are touched.
fn sweep() {
    let marker = format!("--machine={PREFIX}");
    for pid in all_pids() {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        for arg in cmdline.split(|&b| b == 0) {
            let arg = String::from_utf8_lossy(arg);
            if let Some(name) = arg.strip_prefix("--machine=")
                && arg.starts_with(&marker)
                && is_stale(name)
            {
                eprintln!("systemd harness: killing stray nspawn {pid} ({name})");
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
    for hierarchy in hierarchies() {
        for name in names_in(&hierarchy) {
            if is_stale(&name) {
                eprintln!("systemd harness: removing stale cgroup {name}");
                remove_cgroup(&hierarchy.join(&name));
            }
        }
    }
    let scratch = scratch_root();
    for name in names_in(&scratch) {
        if is_stale(&name) {
            eprintln!("systemd harness: removing stale scratch dir {name}");
            let dir = scratch.join(&name);
            // Its mounts lived in a private mount namespace that died with its processes; a
            // mount on the host would be a bug, but unmount it rather than delete through it.
            if is_mounted_under(&dir) {
                let _ = Command::new("umount").arg("-l").arg(dir.join("merged")).status();
            }
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(PREFIX)).collect()
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Whether any mount point of this host lies under `dir`.
fn is_mounted_under(dir: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.to_string_lossy();
    mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).any(|mp| mp == dir || mp.starts_with(&format!("{dir}/")))
}

/// Every pid in a cgroup and its descendants.
fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(cgroup) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_pids(&e.path()));
            }
        }
    }
    pids
}

/// Kills every process in a cgroup tree (they are all ours: the cgroup is named after one of
/// our containers) and removes the tree, children first. Bounded: gives up after 10 s.
fn remove_cgroup(cgroup: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for pid in cgroup_pids(cgroup) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if rmdir_tree(cgroup) {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("systemd harness: WARNING: cannot remove cgroup {}", cgroup.display());
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// rmdir of a cgroup tree, children first (cgroup dirs hold only virtual files, which rmdir
/// takes with them). True when it is gone.
fn rmdir_tree(dir: &Path) -> bool {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// `PPid` and the `NSpid` chain (outermost first) of a process.
fn proc_ids(pid: u32) -> Option<(u32, Vec<u32>)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut ppid = None;
    let mut nspid = Vec::new();
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("PPid:") {
            ppid = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("NSpid:") {
            nspid = v.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        }
    }
    Some((ppid?, nspid))
}

/// Polls `probe` until it yields a value, sleeping a little longer each time, and panics with
/// `what` once `timeout` has passed. For tests that wait on the container's state.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A directory to bind-mount read-only at `/payload` in a container, holding copies of
/// `files` (by their file names). Copies, so that a concurrent `cargo build` cannot change a
/// binary under a running container. It lives in the scratch root under a name of ours, so
/// the sweep removes it if the test process is killed.
pub fn payload(files: &[&Path]) -> tempfile::TempDir {
    let root = scratch_root();
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-payload", owner_tag()))
        .rand_bytes(8)
        .tempdir_in(&root)
        .expect("create payload dir");
    for f in files {
        let name = f.file_name().expect("payload file has a name");
        fs::copy(f, dir.path().join(name)).unwrap_or_else(|e| panic!("copy {} into payload: {e}", f.display()));
    }
    dir
}

/// What to boot: unit files and other files to place in the container, and the payload dir.
#[derive(Default)]
pub struct Builder {
    files: Vec<(PathBuf, String)>,
    symlinks: Vec<(PathBuf, PathBuf)>,
    payload: Option<PathBuf>,
}

impl Builder {
    /// Installs a unit file as `/etc/systemd/system/<name>`, loaded at boot.
    pub fn unit(self, name: &str, contents: &str) -> Self {
        assert!(!name.contains('/'), "unit name {name:?} holds a '/'");
        self.file(&format!("/etc/systemd/system/{name}"), contents)
    }

    /// Places a file at an absolute path inside the container before boot.
    pub fn file(mut self, path: &str, contents: &str) -> Self {
        let rel = path.strip_prefix('/').unwrap_or_else(|| panic!("container path {path:?} is not absolute"));
        self.files.push((PathBuf::from(rel), contents.to_owned()));
        self
    }

    /// Places a symlink at an absolute path inside the container before boot, for example
    /// `/usr/bin/conjure` → `/payload/conjure`, so that example units run unchanged.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let rel = path.strip_prefix('/').unwrap_or_else(|| panic!("container path {path:?} is not absolute"));
        self.symlinks.push((PathBuf::from(rel), PathBuf::from(target)));
        self
    }

    /// Bind-mounts a host directory read-only at `/payload` (see [`payload`]).
    pub fn payload(mut self, dir: &Path) -> Self {
        self.payload = Some(dir.to_path_buf());
        self
    }

    /// Boots the container and waits until systemd reports `running` (or `degraded`).
    /// Panics, with nspawn's output, when it does not within a minute.
    pub fn boot(self) -> Container {
        Container::launch(self)
    }
}

/// A booted systemd container. Dropping it powers it off and removes everything it made.
///
/// Not `Send`: the parent-death signal that takes the container down with its test is bound
/// to the thread that booted it.
pub struct Container {
    name: String,
    dir: PathBuf,
    cgroups: Vec<PathBuf>,
    nspawn: Child,
    pid1: u32,
    booted_in: Duration,
    _not_send: PhantomData<*const ()>,
}

impl Container {
    /// Boots a container with `units` (file name, contents) installed in
    /// `/etc/systemd/system/` and `payload_dir` bind-mounted read-only at `/payload`.
    pub fn boot(units: &[(&str, &str)], payload_dir: &Path) -> Container {
        units.iter().fold(Self::builder(), |b, (name, contents)| b.unit(name, contents)).payload(payload_dir).boot()
    }

    /// For more than units and a payload: files anywhere, no payload.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn launch(spec: Builder) -> Container {
        let lower = prepared()
            .unwrap_or_else(|why| panic!("systemd suite not available ({why}); call suite_available() first"));
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("{PREFIX}{}-{}", owner_tag(), SEQ.fetch_add(1, Ordering::Relaxed));
        let dir = scratch_root().join(&name);
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        for (rel, contents) in &spec.files {
            let path = upper.join(rel);
            fs::create_dir_all(path.parent().expect("file has a parent"))
                .and_then(|()| fs::write(&path, contents))
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        for (rel, target) in &spec.symlinks {
            let path = upper.join(rel);
            fs::create_dir_all(path.parent().expect("symlink has a parent"))
                .and_then(|()| std::os::unix::fs::symlink(target, &path))
                .unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
        }
        // Overlay options are comma-separated, lowerdir lists colon-separated: our own paths
        // never hold either, but a CONJURE_* override might.
        for p in [lower, &upper, &work] {
            let s = p.to_string_lossy();
            assert!(!s.contains([',', ':']), "overlay path {s:?} holds ',' or ':'");
        }

        let cgroups: Vec<PathBuf> = hierarchies().iter().map(|h| h.join(&name)).collect();
        for cg in &cgroups {
            fs::create_dir(cg).unwrap_or_else(|e| panic!("create cgroup {}: {e}", cg.display()));
        }
        // nspawn's mount point for its propagation dirs, which we cover with a tmpfs.
        fs::create_dir_all("/run/systemd/nspawn").expect("create /run/systemd/nspawn");

        let log_path = dir.join("nspawn.log");
        let log = fs::File::create(&log_path).expect("create nspawn log");
        // In the fresh mount namespace: join our cgroups, mount the overlay and the tmpfs, then
        // become nspawn. Paths come in through the environment, so nothing is quoted.
        let setup = r#"set -e
for cg in $CONJURE_CGROUPS; do echo $$ > "$cg/cgroup.procs"; done
mount -t overlay overlay -o "lowerdir=$CONJURE_LOWER,upperdir=$CONJURE_UPPER,workdir=$CONJURE_WORK" "$CONJURE_MERGED"
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
exec "$@""#;
        let cgroup_list: Vec<String> = cgroups.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "TERM", "--"])
            .args(["unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", setup, "sh"])
            .arg("systemd-nspawn")
            .args(["--register=no", "--keep-unit", "--boot", "--private-network"])
            .args(["--console=read-only", "--kill-signal=SIGRTMIN+4"])
            .arg(format!("--machine={name}"))
            .arg("--directory")
            .arg(&merged);
        if let Some(p) = &spec.payload {
            let p = p.canonicalize().unwrap_or_else(|e| panic!("payload dir {}: {e}", p.display()));
            cmd.arg(format!("--bind-ro={}:/payload", p.display()));
        }
        cmd.env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("CONJURE_CGROUPS", cgroup_list.join(" "))
            .env("CONJURE_LOWER", lower)
            .env("CONJURE_UPPER", &upper)
            .env("CONJURE_WORK", &work)
            .env("CONJURE_MERGED", &merged)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);

        let started = Instant::now();
        let nspawn = cmd.spawn().expect("spawn systemd-nspawn");
        let mut c =
            Container { name, dir, cgroups, nspawn, pid1: 0, booted_in: Duration::ZERO, _not_send: PhantomData };
        // From here on, Drop cleans up whatever happens.
        c.wait_for_bus(started + BOOT_DEADLINE);
        let remaining = (started + BOOT_DEADLINE).saturating_duration_since(Instant::now());
        let out = c.exec_timeout(&["systemctl", "is-system-running", "--wait"], remaining.max(Duration::from_secs(1)));
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match state.as_str() {
            "running" => {}
            "degraded" => {
                // Not ours to fail: a unit of the base system failed. Say which, for the
                // record, and let the test judge the units it cares about.
                let failed = c.exec(&["systemctl", "--failed", "--no-legend", "--plain"]);
                eprintln!(
                    "systemd harness: {} booted degraded; failed units:\n{}",
                    c.name,
                    String::from_utf8_lossy(&failed.stdout)
                );
            }
            _ => c.fail(&format!(
                "systemd did not reach running within {BOOT_DEADLINE:?}: \
                 is-system-running said {state:?} ({}), stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
        c.booted_in = started.elapsed();
        eprintln!("systemd harness: {} booted in {:?}", c.name, c.booted_in);
        c
    }

    /// Waits until the container's PID 1 exists and its private bus socket is there: asked
    /// earlier, `is-system-running` answers `offline` and later calls fail.
    fn wait_for_bus(&mut self, deadline: Instant) {
        let nspawn = self.nspawn.id();
        loop {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                self.fail(&format!("systemd-nspawn exited during boot ({status})"));
            }
            if self.pid1 == 0 {
                self.pid1 = find_init(nspawn).unwrap_or(0);
            }
            if self.pid1 != 0 {
                let private = format!("/proc/{}/root/run/systemd/private", self.pid1);
                if fs::metadata(&private).is_ok_and(|m| m.file_type().is_socket()) {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "no systemd bus socket within {BOOT_DEADLINE:?} (container PID 1 on host: {})",
                    self.pid1
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics with `why` and nspawn's output so far. Drop then cleans up.
    fn fail(&self, why: &str) -> ! {
        let log = self.console_log();
        panic!("container {}: {why}\n--- systemd-nspawn output ---\n{log}--- end ---", self.name);
    }

    /// Runs a command inside the container (all its namespaces, its root and cwd) and returns
    /// its output, whatever its exit status. Bounded by a minute.
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.exec_timeout(argv, EXEC_TIMEOUT)
    }

    /// [`Container::exec`] with another bound: after `timeout` the command gets SIGTERM, five
    /// seconds later SIGKILL, and the result has `timeout`'s status 124 (or 137).
    pub fn exec_timeout(&self, argv: &[&str], timeout: Duration) -> Output {
        assert!(!argv.is_empty(), "exec of an empty command");
        let pid1 = self.pid1.to_string();
        let secs = format!("{:.3}", timeout.as_secs_f64());
        let out = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .args(["timeout", "-k", "5", &secs])
            .args(["setpriv", "--pdeathsig", "KILL", "--"])
            .args(["nsenter", "-t", &pid1, "-a", "-r", "-w", "--"])
            .args(argv)
            .env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .stdin(Stdio::null())
            .output()
            .expect("spawn nsenter");
        eprintln!("[{}] $ {} -> {}", self.name, argv.join(" "), out.status);
        out
    }

    /// Runs a command inside and returns its stdout; panics, with its stderr, unless it exits 0.
    pub fn run(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "in container {}: `{}` failed ({}): stdout {:?}, stderr {:?}",
            self.name,
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl start UNIT`; panics unless it succeeds, with the unit's status and journal.
    pub fn start(&self, unit: &str) {
        self.systemctl_or_explain("start", unit);
    }

    /// `systemctl stop UNIT`; panics unless it succeeds, with the unit's status and journal.
    pub fn stop(&self, unit: &str) {
        self.systemctl_or_explain("stop", unit);
    }

    fn systemctl_or_explain(&self, verb: &str, unit: &str) {
        let out = self.exec(&["systemctl", verb, "--", unit]);
        if !out.status.success() {
            let status = self.exec(&["systemctl", "status", "--no-pager", "--full", "--", unit]);
            panic!(
                "in container {}: `systemctl {verb} {unit}` failed ({}): {}\n\
                 --- systemctl status ---\n{}--- journal ---\n{}--- end ---",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end(),
                String::from_utf8_lossy(&status.stdout),
                self.journal(unit)
            );
        }
    }

    /// `systemctl show` of the given properties of a unit, as a map.
    pub fn show(&self, unit: &str, props: &[&str]) -> HashMap<String, String> {
        let props = format!("--property={}", props.join(","));
        self.run(&["systemctl", "show", &props, "--", unit])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// One property of a unit (empty when systemd does not know it).
    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.show(unit, &[prop]).remove(prop).unwrap_or_default()
    }

    /// The unit's journal (`journalctl -u UNIT -o cat`), after asking journald to write out
    /// what it has received so far.
    pub fn journal(&self, unit: &str) -> String {
        self.run(&["journalctl", "--sync"]);
        self.run(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
    }

    /// A file inside the container, read from inside (so absolute symlinks resolve in the
    /// container, which `/proc/PID1/root/...` would not do); None when it cannot be read.
    pub fn read_file(&self, path: &str) -> Option<String> {
        let out = self.exec(&["cat", "--", path]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The host pid of a process the container knows as `pid` (None when there is none).
    pub fn host_pid(&self, pid: u32) -> Option<u32> {
        let ns = |p: u32| fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        let container_ns = ns(self.pid1)?;
        all_pids().into_iter().find(|&p| {
            proc_ids(p).is_some_and(|(_, nspid)| nspid.len() >= 2 && nspid.last() == Some(&pid))
                && ns(p).as_ref() == Some(&container_ns)
        })
    }

    /// What nspawn and the container's console printed so far, without terminal escapes.
    pub fn console_log(&self) -> String {
        let raw = fs::read(self.dir.join("nspawn.log")).unwrap_or_default();
        strip_escapes(&String::from_utf8_lossy(&raw))
    }

    /// Every process of the container, as (pid inside, `comm`), seen from the host: the
    /// processes in the pid namespace of its init.
    pub fn processes(&self) -> Vec<(u32, String)> {
        let ns = |p: u32| fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        let Some(container_ns) = ns(self.pid1) else {
            return Vec::new();
        };
        all_pids()
            .into_iter()
            .filter(|&p| ns(p).as_ref() == Some(&container_ns))
            .filter_map(|p| {
                let (_, nspid) = proc_ids(p)?;
                let comm = fs::read_to_string(format!("/proc/{p}/comm")).ok()?;
                Some((*nspid.last()?, comm.trim_end().to_owned()))
            })
            .collect()
    }

    /// The container's machine name (also the name of its cgroup and scratch dir).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host pid of the container's init (systemd).
    pub fn pid1(&self) -> u32 {
        self.pid1
    }

    /// Host pid of systemd-nspawn.
    pub fn nspawn_pid(&self) -> u32 {
        self.nspawn.id()
    }

    /// The container's scratch dir on the host (overlay upper/work, nspawn's log).
    pub fn scratch_dir(&self) -> &Path {
        &self.dir
    }

    /// The container's cgroups on the host, one per hierarchy.
    pub fn cgroups(&self) -> &[PathBuf] {
        &self.cgroups
    }

    /// From spawning nspawn to systemd answering `running`.
    pub fn boot_time(&self) -> Duration {
        self.booted_in
    }

    /// Powers off (SIGTERM to nspawn, which `--kill-signal` turns into SIGRTMIN+4 to PID 1),
    /// waits a bounded time, then kills everything in the container's cgroups.
    fn power_off(&mut self) {
        if !matches!(self.nspawn.try_wait(), Ok(None)) {
            return;
        }
        let nspawn = Pid::from_raw(self.nspawn.id() as i32);
        let _ = kill(nspawn, Signal::SIGTERM);
        let deadline = Instant::now() + POWEROFF_DEADLINE;
        while Instant::now() < deadline {
            if !matches!(self.nspawn.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("systemd harness: WARNING: {} did not power off within {POWEROFF_DEADLINE:?}; killing it", self.name);
        for cg in &self.cgroups {
            for pid in cgroup_pids(cg) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.power_off();
        // What remains is a bug of the harness; warn, never panic in drop.
        for cg in &self.cgroups {
            remove_cgroup(cg);
        }
        if is_mounted_under(&self.dir) {
            eprintln!("systemd harness: WARNING: {} is still mounted; unmounting", self.dir.display());
            let _ = Command::new("umount").arg("-l").arg(self.dir.join("merged")).status();
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("systemd harness: WARNING: remove {}: {e}", self.dir.display());
        }
    }
}

/// The container's init as seen from the host: the descendant of nspawn whose innermost pid
/// (last `NSpid` entry) is 1.
fn find_init(nspawn: u32) -> Option<u32> {
    all_pids().into_iter().find(|&pid| {
        let Some((_, nspid)) = proc_ids(pid) else {
            return false;
        };
        if nspid.len() < 2 || nspid.last() != Some(&1) {
            return false;
        }
        // Walk up to nspawn (bounded: pid trees are shallow, and a loop must not hang us).
        let mut p = pid;
        for _ in 0..16 {
            match proc_ids(p) {
                Some((ppid, _)) if ppid == nspawn => return true,
                Some((ppid, _)) if ppid > 1 => p = ppid,
                _ => return false,
            }
        }
        false
    })
}

/// Removes terminal control sequences (systemd colours its console output) and carriage
/// returns, so a boot log reads well in a panic message.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            // CSI: parameters, then one final byte in '@'..='~'; any other escape is two
            // bytes long.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}
