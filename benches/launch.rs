//! What conjure costs, as ratios against baselines measured in the same run, interleaved (each
//! round runs every case once, in a rotating order, so that the machine's drift and the load of
//! other processes fall on all cases alike), and as deterministic counts. `cargo bench`.
//!
//! Baselines are built here, at bench time, from `benches/floor.c`: the C floor of a launch (a
//! close-on-exec pipe, fork, setsid, fork, exec; nothing else), once with the system's gcc
//! against glibc, dynamically linked, and once with `musl-gcc -static` (Debian's `musl-tools`),
//! which is how conjure's shipped binary is linked. The shipped binary itself (profile
//! `release-static`, target `x86_64-unknown-linux-musl`, what `cargo xtask dist` ships) is built
//! here with nested cargo; so is the same build unstripped, for callgrind. Tools that are missing
//! (`musl-gcc`, the musl target, `tini`, `dumb-init`, `start-stop-daemon`, `valgrind`, `strace`,
//! root for PID 1 in a PID namespace) drop their rows, saying so.
//!
//! Sections: launch to exec; 32 launches at once; fd closing under `RLIMIT_NOFILE` 1024 and the
//! hard limit; 100 KB of environment and of argv; instructions before the fork (callgrind),
//! syscalls before the exec (strace) and binary sizes; resident RSS next to tini and dumb-init;
//! `READY=1` to the launcher's exit (against `start-stop-daemon --notify-await`) and to the
//! datagram at a fake systemd socket (against the program sending there itself); `listen()` to
//! ready through `tcp:`; relaying 100,000 sd_notify datagrams (rate and loss, against the
//! direct path); 10,000 orphans reaped by conjure as PID 1 against tini.
//!
//! Benchmarks report; they do not assert. `CONJURE_BENCH_ROUNDS=N` scales the rounds;
//! `CONJURE_BENCH_ONLY=launch,concurrent,counts,rss,ready,listen,relay,orphans` picks sections;
//! `CONJURE_BENCH_EXTRA=/path/a,/path/b` adds launch rows for other conjure builds, and
//! `CONJURE_BENCH_CONJURE=/path` puts another build in the shipped binary's place (to compare
//! profiles).

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The musl target of the shipped binary.
const MUSL: &str = "x86_64-unknown-linux-musl";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let scale: f64 = std::env::var("CONJURE_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let rounds = |n: usize| ((n as f64 * scale).round() as usize).max(3);
    let t = Tools::find();
    // Orphans of a launch (the daemonized program) come back here, to be waited for before the
    // next sample: a program still running on one of the CPUs would slow the next case down.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    println!("conjure benchmarks, {} (load average at start: {})", machine(), load());
    println!("{}", t.notes.join("\n"));
    let mut readme = Vec::new();

    let only = std::env::var("CONJURE_BENCH_ONLY").unwrap_or_default();
    let run = |section: &str| only.is_empty() || only.split(',').any(|s| s == section);
    if run("launch") {
        launch(&t, rounds(200), &mut readme);
    }
    if run("concurrent") {
        concurrent(&t, rounds(30), &mut readme);
    }
    if run("counts") {
        counts(&t);
    }
    if run("rss") {
        rss(&t, &mut readme);
    }
    if run("ready") {
        ready_latency(&t, rounds(60), &mut readme);
    }
    if run("listen") {
        listen_latency(&t, rounds(60), &mut readme);
    }
    if run("relay") {
        relay(&t, rounds(3), &mut readme);
    }
    if run("orphans") {
        orphans(&t, rounds(3), &mut readme);
    }

    println!("\n## Summary (medians; ratios within this run; load average at the end: {})\n", load());
    println!("| measure | ratio | against |");
    println!("|---|---|---|");
    for line in &readme {
        println!("{line}");
    }
    let _ = std::fs::remove_dir_all(&t.scratch);
}

// ------------------------------------------------------------------------------------------
// Tools and builds

/// Everything the cases run, found or built at start.
struct Tools {
    /// The bench's own conjure (cargo's bench profile, glibc, dynamic).
    conjure_dyn: PathBuf,
    /// The shipped binary (release-static, musl, static), and the same unstripped.
    conjure_static: Option<PathBuf>,
    conjure_static_symbols: Option<PathBuf>,
    floor_dyn: Option<PathBuf>,
    floor_static: Option<PathBuf>,
    tini: Option<PathBuf>,
    tini_static: Option<PathBuf>,
    dumb_init: Option<PathBuf>,
    sdd: Option<PathBuf>,
    valgrind: Option<PathBuf>,
    strace: Option<PathBuf>,
    unshare: Option<PathBuf>,
    root: bool,
    /// Other conjure builds to time (`CONJURE_BENCH_EXTRA`).
    extra: Vec<PathBuf>,
    scratch: PathBuf,
    notes: Vec<String>,
}

impl Tools {
    fn find() -> Tools {
        let conjure_dyn = PathBuf::from(env!("CARGO_BIN_EXE_conjure"));
        // target/release/conjure → target/
        let target = conjure_dyn.ancestors().nth(2).map(Path::to_path_buf).unwrap_or_else(|| "target".into());
        let scratch = std::env::temp_dir().join(format!("conjure-bench-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).expect("bench scratch dir");
        let out = target.join("bench");
        std::fs::create_dir_all(&out).expect("target/bench");
        let mut notes = Vec::new();
        let floor_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/floor.c");
        let mut cc = |compiler: &str, args: &[&str], name: &str| -> Option<PathBuf> {
            let exe = out.join(name);
            let ok = Command::new(compiler)
                .args(args)
                .arg("-o")
                .arg(&exe)
                .arg(&floor_src)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                notes.push(format!("note: no {name}: `{compiler}` failed or is missing (Debian: gcc, musl-tools)"));
            }
            ok.then_some(exe)
        };
        let floor_dyn = cc("gcc", &["-O2"], "floor-glibc");
        let floor_static = cc("musl-gcc", &["-O2", "-static"], "floor-musl-static");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = |profile: &str| -> Option<PathBuf> {
            let ok = Command::new(&cargo)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["build", "--quiet", "--package", "conjure-daemon", "--bin", "conjure", "--target", MUSL])
                .args(["--profile", profile])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                notes.push(format!("note: no static conjure ({profile}): `rustup target add {MUSL}`?"));
            }
            ok.then(|| target.join(MUSL).join(profile).join("conjure"))
        };
        // CONJURE_BENCH_CONJURE: another build in the shipped binary's place (profile trials).
        let conjure_static = match std::env::var_os("CONJURE_BENCH_CONJURE") {
            Some(path) => Some(PathBuf::from(path)),
            None => build("release-static"),
        };
        let conjure_static_symbols = build("release-static-symbols");
        let which = |name: &str| -> Option<PathBuf> {
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        };
        let mut tool = |name: &str, why: &str| {
            let found = which(name);
            if found.is_none() {
                notes.push(format!("note: no {name} ({why})"));
            }
            found
        };
        let tini = tool("tini", "apt-get install tini");
        let tini_static = tool("tini-static", "apt-get install tini");
        let dumb_init = tool("dumb-init", "apt-get install dumb-init");
        let sdd = tool("start-stop-daemon", "Debian's dpkg");
        let valgrind = tool("valgrind", "instruction counts");
        let strace = tool("strace", "syscall counts");
        let unshare = tool("unshare", "util-linux; PID 1 rows");
        let root = nix::unistd::geteuid().is_root();
        if !root {
            notes.push("note: not root: no PID 1 rows".into());
        }
        let extra = std::env::var("CONJURE_BENCH_EXTRA")
            .map(|v| v.split(',').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
            .unwrap_or_default();
        Tools {
            conjure_dyn,
            conjure_static,
            conjure_static_symbols,
            floor_dyn,
            floor_static,
            tini,
            tini_static,
            dumb_init,
            sdd,
            valgrind,
            strace,
            unshare,
            root,
            extra,
            scratch,
            notes,
        }
    }

    /// The conjure the headline rows use: the shipped static binary, else the bench's own.
    fn conjure(&self) -> &Path {
        self.conjure_static.as_deref().unwrap_or(&self.conjure_dyn)
    }

    /// The C floor linked like `conjure()`.
    fn floor(&self) -> Option<&Path> {
        if self.conjure_static.is_some() { self.floor_static.as_deref() } else { self.floor_dyn.as_deref() }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    format!(
        "{}, {} CPUs ({cpu}), Linux {}",
        date.unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// Statistics

/// Median and spread (10th and 90th percentiles) of samples, in the samples' unit, and the
/// samples themselves, by round (NaN where a round failed), for paired ratios.
#[derive(Clone, Default)]
struct Stats {
    median: f64,
    p10: f64,
    p90: f64,
    n: usize,
    by_round: Vec<f64>,
}

impl Stats {
    fn of(samples: &[f64]) -> Stats {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Stats { median: at(0.5), p10: at(0.1), p90: at(0.9), n: v.len(), by_round: samples.to_vec() }
    }

    /// This against `base`: the median of the ratios of samples taken in the same round (next
    /// to each other in time, so under the same load), or of the medians when the two were not
    /// taken in rounds together. `None` without a baseline.
    fn ratio(&self, base: &Stats) -> Option<f64> {
        if base.median <= 0.0 {
            return None;
        }
        if self.by_round.len() == base.by_round.len() {
            let paired: Vec<f64> = self.by_round.iter().zip(&base.by_round).map(|(a, b)| a / b).collect();
            let s = Stats::of(&paired);
            if s.n > 0 {
                return Some(s.median);
            }
        }
        Some(self.median / base.median)
    }
}

/// Prints one row: the name, median and spread, and ratios against the named baselines.
fn row(name: &str, unit: &str, s: &Stats, baselines: &[(&str, Stats)]) {
    let ratios: Vec<String> = baselines.iter().filter_map(|(n, b)| Some(format!("{:.2}× {n}", s.ratio(b)?))).collect();
    println!(
        "  {name:<52} {:>9.1}{unit} [{:>8.1} – {:>8.1}] n={:<4} {}",
        s.median,
        s.p10,
        s.p90,
        s.n,
        ratios.join(", ")
    );
}

/// A case: a name and how to run one sample of it (a duration or a measured value).
type Case<'a> = (String, Box<dyn FnMut() -> Option<f64> + 'a>);

/// Runs `rounds` rounds of every case, interleaved (the order rotates each round), and returns
/// each case's samples.
fn interleave(cases: &mut [Case<'_>], rounds: usize) -> Vec<Vec<f64>> {
    let mut samples = vec![Vec::with_capacity(rounds); cases.len()];
    // One warm-up round: page cache, first-run costs.
    for (_, run) in cases.iter_mut() {
        let _ = run();
    }
    for r in 0..rounds {
        for k in 0..cases.len() {
            let i = (k + r) % cases.len();
            samples[i].push((cases[i].1)().unwrap_or(f64::NAN));
        }
    }
    samples
}

/// Runs a command to its end; the wall time in µs, or `None` if it failed.
fn timed(cmd: &mut Command) -> Option<f64> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let status = cmd.status().ok()?;
    let us = start.elapsed().as_secs_f64() * 1e6;
    reap_leftovers();
    status.success().then_some(us)
}

/// Waits (up to 5 s) until every process this one adopted as a subreaper has exited, and reaps
/// them: not timed, so that no program of one sample still runs during the next.
fn reap_leftovers() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < end => std::thread::sleep(Duration::from_micros(100)),
            Ok(WaitStatus::StillAlive) => return,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// CLOCK_MONOTONIC in ns, comparable with what `floor` writes.
fn mono_ns() -> i64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// Reads "NS PID" written by `floor`, waiting up to 5 s for it.
fn read_stamp(file: &Path) -> Option<(i64, i32)> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            let mut w = text.split_whitespace();
            if let (Some(Ok(ns)), Some(Ok(pid))) = (w.next().map(str::parse), w.next().map(str::parse)) {
                return Some((ns, pid));
            }
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Kills `pid` and waits (bounded) until it is gone.
fn kill_wait(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let end = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
        // A zombie of ours would never go; reap it if it is.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn ends(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ------------------------------------------------------------------------------------------
// Launch

fn launch(t: &Tools, rounds: usize, readme: &mut Vec<String>) {
    println!("\n## Launch to exec (µs: median [p10 – p90]); `/bin/true` as the program");
    let conjure = t.conjure();
    let pidfile = t.scratch.join("launch.pid");
    let big_env: Vec<(String, String)> = (0..1000).map(|i| (format!("BENCH_VAR_{i:04}"), "x".repeat(86))).collect();
    let big_args: Vec<String> = (0..1000).map(|i| format!("{i:04}{}", "y".repeat(96))).collect();
    let cmd = |exe: &Path, args: &[&str]| {
        let mut c = Command::new(exe);
        c.args(args);
        c
    };
    let mut cases: Vec<Case<'_>> = Vec::new();
    fn push<'a>(cases: &mut Vec<Case<'a>>, name: String, mut make: Box<dyn FnMut() -> Command + 'a>) {
        cases.push((name, Box::new(move || timed(&mut make()))));
    }
    if let Some(f) = &t.floor_dyn {
        push(&mut cases, "C floor, glibc dynamic".into(), Box::new(move || cmd(f, &["floor", "/bin/true"])));
    }
    if let Some(f) = &t.floor_static {
        push(&mut cases, "C floor, musl static".into(), Box::new(move || cmd(f, &["floor", "/bin/true"])));
    }
    if t.conjure_static.is_some() {
        push(
            &mut cases,
            "conjure -- /bin/true (shipped: musl static)".into(),
            Box::new(move || cmd(conjure, &["--", "/bin/true"])),
        );
    }
    let dynamic = &t.conjure_dyn;
    push(
        &mut cases,
        "conjure -- /bin/true (glibc dynamic)".into(),
        Box::new(move || cmd(dynamic, &["--", "/bin/true"])),
    );
    for extra in &t.extra {
        push(
            &mut cases,
            format!("conjure -- /bin/true ({})", extra.display()),
            Box::new(move || cmd(extra, &["--", "/bin/true"])),
        );
    }
    push(
        &mut cases,
        "conjure -p PIDFILE -- /bin/true".into(),
        Box::new(move || {
            let mut c = Command::new(conjure);
            c.arg("-p").arg(&pidfile).args(["--", "/bin/true"]);
            c
        }),
    );
    push(
        &mut cases,
        "conjure -f -- /bin/true (exec in place)".into(),
        Box::new(move || cmd(conjure, &["-f", "--", "/bin/true"])),
    );
    push(
        &mut cases,
        "conjure -f --supervise -- /bin/true (resident)".into(),
        Box::new(move || cmd(conjure, &["-f", "--supervise", "--", "/bin/true"])),
    );
    if let Some(tini) = &t.tini {
        push(&mut cases, "tini -s -- /bin/true".into(), Box::new(move || cmd(tini, &["-s", "--", "/bin/true"])));
    }
    if let Some(sdd) = &t.sdd {
        push(
            &mut cases,
            "start-stop-daemon --start --background".into(),
            Box::new(move || cmd(sdd, &["--start", "--background", "--quiet", "--exec", "/bin/true"])),
        );
    }
    // 100 KB of environment and of argv, for the C floor and for conjure alike.
    let heavy: Vec<(&str, &Path, &[&str])> = t
        .floor()
        .map(|f| ("C floor", f, &["floor", "/bin/true"][..]))
        .into_iter()
        .chain([("conjure", conjure, &["--", "/bin/true"][..])])
        .collect();
    for (who, exe, base) in heavy {
        let env = &big_env;
        push(
            &mut cases,
            format!("{who}, 100 KB of environment"),
            Box::new(move || {
                let mut c = cmd(exe, base);
                c.envs(env.iter().map(|(k, v)| (k, v)));
                c
            }),
        );
        let args = &big_args;
        push(
            &mut cases,
            format!("{who}, 100 KB of argv"),
            Box::new(move || {
                let mut c = cmd(exe, base);
                c.args(args);
                c
            }),
        );
    }
    // fd closing: the same launch under RLIMIT_NOFILE 1024 and the hard limit (raised to
    // nr_open where root may), set in the spawned launcher before it execs.
    let hard = raise_nofile_hard();
    for limit in [1024u64, hard] {
        push(
            &mut cases,
            format!("conjure, RLIMIT_NOFILE {limit}"),
            Box::new(move || {
                let mut c = cmd(conjure, &["--", "/bin/true"]);
                // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
                unsafe {
                    c.pre_exec(move || {
                        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                            .map_err(std::io::Error::from)
                    })
                };
                c
            }),
        );
    }
    let samples = interleave(&mut cases, rounds);
    let stats: Vec<(String, Stats)> =
        cases.iter().map(|(n, _)| n.clone()).zip(samples.iter().map(|s| Stats::of(s))).collect();
    let get = |prefix: &str| stats.iter().find(|(n, _)| n.starts_with(prefix)).map(|(_, s)| s.clone());
    let floor_dyn = get("C floor, glibc");
    let floor_static = get("C floor, musl");
    let mut bases: Vec<(&str, Stats)> = Vec::new();
    bases.extend(floor_static.clone().map(|s| ("C musl static", s)));
    bases.extend(floor_dyn.clone().map(|s| ("C glibc", s)));
    for (name, s) in &stats {
        row(name, "µs", s, &bases);
    }
    let ratio = |a: Option<Stats>, b: Option<Stats>| a?.ratio(&b?);
    let mut say = |what: &str, r: Option<f64>, against: &str| {
        if let Some(r) = r {
            readme.push(format!("| {what} | {r:.2}× | {against} |"));
        }
    };
    let shipped = get("conjure -- /bin/true (shipped");
    say("launch to exec, shipped binary", ratio(shipped.clone(), floor_static), "C floor, musl static (goal ≤ 1.10)");
    say(
        "launch to exec, shipped binary",
        ratio(shipped.clone(), floor_dyn.clone()),
        "C floor, glibc dynamic (goal ≤ 1.0)",
    );
    say(
        "launch to exec, glibc dynamic build",
        ratio(get("conjure -- /bin/true (glibc"), floor_dyn),
        "C floor, glibc dynamic",
    );
    say("resident conjure running /bin/true", ratio(get("conjure -f --supervise"), get("tini -s")), "tini -s");
    say("launch, start-stop-daemon --background", ratio(get("start-stop-daemon"), shipped), "conjure (shipped)");
    say(
        "100 KB of environment, conjure/floor",
        ratio(get("conjure, 100 KB of env"), get("C floor, 100 KB of env")),
        "the same ratio without it: see launch (goal ≤ 1.05)",
    );
    say(
        "100 KB of argv, conjure/floor",
        ratio(get("conjure, 100 KB of argv"), get("C floor, 100 KB of argv")),
        "the same ratio without it: see launch (goal ≤ 1.05)",
    );
    say(
        &format!("fd closing, RLIMIT_NOFILE {hard}"),
        ratio(get(&format!("conjure, RLIMIT_NOFILE {hard}")), get("conjure, RLIMIT_NOFILE 1024")),
        "RLIMIT_NOFILE 1024 (goal: flat)",
    );
}

/// Raises this process's hard `RLIMIT_NOFILE` to `fs.nr_open` where allowed (root); returns
/// the hard limit the bench can use.
fn raise_nofile_hard() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let nr_open: u64 =
        std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(hard);
    if nr_open > hard && setrlimit(Resource::RLIMIT_NOFILE, soft, nr_open).is_ok() {
        return nr_open;
    }
    hard
}

fn concurrent(t: &Tools, rounds: usize, readme: &mut Vec<String>) {
    const AT_ONCE: usize = 32;
    println!("\n## {AT_ONCE} launches at once (µs for all {AT_ONCE} to return)");
    let burst = |exe: &Path, args: &[&str]| -> Option<f64> {
        let start = Instant::now();
        let mut children: Vec<Child> = (0..AT_ONCE)
            .filter_map(|_| {
                Command::new(exe)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        let ok = children.iter_mut().all(|c| c.wait().is_ok_and(|s| s.success()));
        let us = start.elapsed().as_secs_f64() * 1e6;
        reap_leftovers();
        (ok && children.len() == AT_ONCE).then_some(us)
    };
    let conjure = t.conjure();
    let mut cases: Vec<Case<'_>> =
        vec![("conjure -- /bin/true ×32".into(), Box::new(move || burst(conjure, &["--", "/bin/true"])))];
    if let Some(f) = t.floor() {
        cases.push(("C floor ×32".into(), Box::new(move || burst(f, &["floor", "/bin/true"]))));
    }
    let line = against_the_second(&mut cases, rounds, "µs", "C floor");
    readme.extend(line.map(|r| format!("| 32 concurrent launches | {r:.2}× | C floor, same linking (goal ≤ 1.0) |")));
}

/// Runs two cases interleaved, prints both against the second (`base`), and returns the first's
/// ratio to it (none without a second case).
fn against_the_second(cases: &mut [Case<'_>], rounds: usize, unit: &str, base: &str) -> Option<f64> {
    let samples = interleave(cases, rounds);
    let stats: Vec<Stats> = samples.iter().map(|s| Stats::of(s)).collect();
    let bases: Vec<(&str, Stats)> = stats.get(1).map(|s| (base, s.clone())).into_iter().collect();
    for ((name, _), s) in cases.iter().zip(&stats) {
        row(name, unit, s, &bases);
    }
    stats.get(1).and_then(|b| stats.first()?.ratio(b))
}

// ------------------------------------------------------------------------------------------
// Deterministic counts

fn counts(t: &Tools) {
    println!("\n## Deterministic counts (`-- /bin/true`, this environment)");
    let plain: &[&str] = &["--", "/bin/true"];
    let floor: &[&str] = &["floor", "/bin/true"];
    if let Some(v) = &t.valgrind {
        println!("  instructions before the first fork (callgrind):");
        let pidfile_args: &[&str] = &["-p", "/tmp/conjure-bench-count.pid", "-o", "/dev/null", "--", "/bin/true"];
        let rows = [
            ("conjure, shipped code (musl static, unstripped)", t.conjure_static_symbols.as_deref(), plain),
            ("conjure -p P -o O (musl static, unstripped)", t.conjure_static_symbols.as_deref(), pidfile_args),
            ("conjure, glibc dynamic", Some(t.conjure_dyn.as_path()), plain),
            ("C floor, musl static", t.floor_static.as_deref(), floor),
            ("C floor, glibc dynamic", t.floor_dyn.as_deref(), floor),
        ];
        show_counts(&rows, |exe, args| instructions_before_fork(v, exe, args, &t.scratch));
    }
    if let Some(s) = &t.strace {
        println!("  syscalls before the program's exec, all processes (strace -f):");
        let rows = [
            ("conjure (shipped)", t.conjure_static.as_deref(), plain),
            ("conjure, glibc dynamic", Some(t.conjure_dyn.as_path()), plain),
            ("C floor, musl static", t.floor_static.as_deref(), floor),
            ("C floor, glibc dynamic", t.floor_dyn.as_deref(), floor),
        ];
        show_counts(&rows, |exe, args| syscalls_before_exec(s, exe, args, &t.scratch).map(|n| n as u64));
    }
    println!("  binary sizes:");
    for (name, exe) in [
        ("conjure, shipped (release-static)", t.conjure_static.as_deref()),
        ("conjure, glibc (bench profile, with symbols)", Some(t.conjure_dyn.as_path())),
        ("tini-static", t.tini_static.as_deref()),
    ] {
        if let Some(len) = exe.and_then(|e| std::fs::metadata(e).ok()).map(|m| m.len()) {
            println!("    {name:<46} {len:>9} bytes");
        }
    }
}

/// Prints one count per row (name, binary if built, arguments).
fn show_counts(rows: &[(&str, Option<&Path>, &[&str])], count: impl Fn(&Path, &[&str]) -> Option<u64>) {
    for (name, exe, args) in rows {
        if let Some(exe) = exe {
            match count(exe, args) {
                Some(n) => println!("    {name:<46} {n:>9}"),
                None => println!("    {name:<46} (no count)"),
            }
        }
    }
}

/// Instructions `exe` runs before its first fork, from program start (callgrind's dump at the
/// entry of `fork`; needs symbols).
fn instructions_before_fork(valgrind: &Path, exe: &Path, args: &[&str], scratch: &Path) -> Option<u64> {
    let dir = scratch.join("callgrind");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let mut tool = Command::new(valgrind);
    tool.current_dir(&dir).args([
        "--tool=callgrind",
        "--dump-before=fork",
        "--dump-before=_Fork",
        "--dump-before=__libc_fork",
    ]);
    run_under(tool, exe, args)?;
    // The launcher is the lowest pid; its first part is up to the first fork.
    let mut firsts: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let pid = name.strip_prefix("callgrind.out.")?.strip_suffix(".1")?.parse().ok()?;
            Some((pid, p))
        })
        .collect();
    firsts.sort();
    let (_, first) = firsts.first()?;
    let text = std::fs::read_to_string(first).ok()?;
    text.lines().find_map(|l| l.strip_prefix("summary: ")).and_then(|n| n.trim().parse().ok())
}

/// Runs `exe args` under `tool` (already given its own arguments), quietly, to its end.
fn run_under(mut tool: Command, exe: &Path, args: &[&str]) -> Option<()> {
    tool.arg(exe).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().ok().map(drop)
}

/// Syscalls made by every process of a launch before the program's own `execve`.
fn syscalls_before_exec(strace: &Path, exe: &Path, args: &[&str], scratch: &Path) -> Option<usize> {
    let log = scratch.join("strace.log");
    let mut tool = Command::new(strace);
    tool.args(["-f", "-qq", "-o"]).arg(&log);
    run_under(tool, exe, args)?;
    std::thread::sleep(Duration::from_millis(50));
    let text = std::fs::read_to_string(&log).ok()?;
    let mut n = 0;
    for line in text.lines() {
        // "PID name(args) = r", or its "<unfinished ...>" half; the "resumed" half is the same call.
        let call = line.split_once(' ').map(|x| x.1.trim_start()).unwrap_or("");
        if call.starts_with("<...") || call.starts_with("+++") || call.starts_with("---") {
            continue;
        }
        if call.starts_with("execve(\"/bin/true\"") {
            return Some(n);
        }
        n += 1;
    }
    None
}

// ------------------------------------------------------------------------------------------
// Resident footprint

fn rss(t: &Tools, readme: &mut Vec<String>) {
    println!("\n## Resident footprint, while the program runs (KiB)");
    let Some(floor) = t.floor() else { return };
    let mut rows: Vec<(String, u64, u64)> = Vec::new();
    let mut measure = |name: &str, exe: &Path, args: &[&str]| {
        let Ok(mut child) = Command::new(exe).args(args).arg(floor).arg("pause").stdin(Stdio::null()).spawn() else {
            return;
        };
        let pid = child.id() as i32;
        // Wait until the program runs under it (its child exists).
        let end = Instant::now() + Duration::from_secs(5);
        while children_of(pid).is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(50));
        let vmrss = status_kib(pid, "VmRSS:");
        let private = smaps_private_kib(pid);
        for c in children_of(pid) {
            kill_wait(c);
        }
        ends(&mut child);
        if let (Some(r), Some(p)) = (vmrss, private) {
            println!("  {name:<52} VmRSS {r:>6}  private {p:>6}");
            rows.push((name.to_string(), r, p));
        }
    };
    measure("conjure -f --supervise (shipped)", t.conjure(), &["-f", "--supervise", "--"]);
    measure("conjure -f --supervise (glibc dynamic)", &t.conjure_dyn, &["-f", "--supervise", "--"]);
    if let Some(x) = &t.tini {
        measure("tini -s", x, &["-s", "--"]);
    }
    if let Some(x) = &t.tini_static {
        measure("tini-static -s", x, &["-s", "--"]);
    }
    if let Some(x) = &t.dumb_init {
        measure("dumb-init", x, &["--"]);
    }
    let get = |p: &str| rows.iter().find(|(n, _, _)| n.starts_with(p)).map(|(_, r, p)| (*r, *p));
    if let Some((r, p)) = get("conjure -f --supervise (shipped)") {
        readme.push(format!(
            "| resident VmRSS / private, shipped binary | {:.2} / {:.2} MiB | absolute (goal VmRSS ≤ 1.0 MiB) |",
            r as f64 / 1024.0,
            p as f64 / 1024.0
        ));
        if let Some((tr, tp)) = get("tini-static") {
            readme.push(format!(
                "| resident VmRSS / private | {:.2}× / {:.2}× | tini-static |",
                r as f64 / tr as f64,
                p as f64 / tp as f64
            ));
        }
        if let Some((tr, tp)) = get("tini -s") {
            readme.push(format!(
                "| resident VmRSS / private | {:.2}× / {:.2}× | tini (dynamic) |",
                r as f64 / tr as f64,
                p as f64 / tp as f64
            ));
        }
    }
}

fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn smaps_private_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |f: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(f))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some(field("Private_Clean:") + field("Private_Dirty:"))
}

// ------------------------------------------------------------------------------------------
// Readiness latency

/// A fake systemd: a datagram socket the program or conjure sends to, and the moment each
/// datagram arrived.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
}

impl FakeSystemd {
    fn bind(dir: &Path, name: &str) -> FakeSystemd {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the fake systemd socket");
        let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
        FakeSystemd { socket, path }
    }

    /// Waits (up to `patience`) for a datagram containing `what`; returns when it arrived.
    fn wait_for(&self, what: &str, patience: Duration) -> Option<i64> {
        let end = Instant::now() + patience;
        let mut buf = [0u8; 4096];
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            self.socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
            let n = self.socket.recv(&mut buf).ok()?;
            let at = mono_ns();
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == what) {
                return Some(at);
            }
        }
    }

    /// Starts `cmd` quietly with `NOTIFY_SOCKET` naming this socket.
    fn spawn_for(&self, cmd: &mut Command) -> Option<Child> {
        cmd.env("NOTIFY_SOCKET", &self.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    }

    fn drain(&self) {
        let _ = self.socket.set_nonblocking(true);
        let mut buf = [0u8; 4096];
        while self.socket.recv(&mut buf).is_ok() {}
        let _ = self.socket.set_nonblocking(false);
    }
}

fn ready_latency(t: &Tools, rounds: usize, readme: &mut Vec<String>) {
    println!("\n## READY=1 to ready (µs from the program's send)");
    let Some(floor) = t.floor() else { return };
    let conjure = t.conjure();
    let stamp = t.scratch.join("ready.stamp");
    let fake = FakeSystemd::bind(&t.scratch, "notify.sock");
    let pidfile = t.scratch.join("ready.pid");
    let mut cases: Vec<Case<'_>> = Vec::new();
    cases.push((
        "launcher exit: conjure --ready-on notify".into(),
        Box::new(|| {
            exit_after_ready(
                Command::new(conjure)
                    .arg("-p")
                    .arg(&pidfile)
                    .args(["--ready-on", "notify", "--"])
                    .arg(floor)
                    .arg("ready")
                    .arg(&stamp),
                &stamp,
            )
        }),
    ));
    if let Some(sdd) = &t.sdd {
        let stamp = &stamp;
        cases.push((
            "launcher exit: start-stop-daemon --notify-await".into(),
            Box::new(move || {
                exit_after_ready(
                    Command::new(sdd)
                        .args([
                            "--start",
                            "--background",
                            "--notify-await",
                            "--notify-timeout",
                            "5",
                            "--quiet",
                            "--exec",
                        ])
                        .arg(floor)
                        .args(["--", "ready"])
                        .arg(stamp),
                    stamp,
                )
            }),
        ));
    }
    cases.push((
        "datagram: conjure -f --ready-on notify (relayed)".into(),
        Box::new(|| {
            datagram_after_ready(
                Command::new(conjure).args(["-f", "--ready-on", "notify", "--"]).arg(floor).arg("ready").arg(&stamp),
                &stamp,
                &fake,
            )
        }),
    ));
    cases.push((
        "datagram: the program itself (direct)".into(),
        Box::new(|| datagram_after_ready(Command::new(floor).arg("ready").arg(&stamp), &stamp, &fake)),
    ));
    let samples = interleave(&mut cases, rounds);
    let stats: Vec<Stats> = samples.iter().map(|s| Stats::of(s)).collect();
    let find = |p: &str| cases.iter().position(|(n, _)| n.starts_with(p)).map(|i| stats[i].clone());
    let sdd = find("launcher exit: start-stop");
    let direct = find("datagram: the program");
    for ((name, _), s) in cases.iter().zip(&stats) {
        let base: Vec<(&str, Stats)> = if name.starts_with("launcher") {
            sdd.clone().map(|s| ("sdd", s))
        } else {
            direct.clone().map(|s| ("direct", s))
        }
        .into_iter()
        .collect();
        row(name, "µs", s, &base);
    }
    if let (Some(c), Some(s)) = (find("launcher exit: conjure"), sdd) {
        readme.push(format!(
            "| READY=1 to launcher exit | {:.2}× | start-stop-daemon --notify-await (goal ≤ 1.0) |",
            c.ratio(&s).unwrap_or(f64::NAN)
        ));
    }
    if let (Some(c), Some(d)) = (find("datagram: conjure"), direct) {
        readme.push(format!(
            "| READY=1 to the datagram at systemd's socket | {:.0} µs vs {:.0} µs | the program sending directly |",
            c.median, d.median
        ));
    }
}

/// The launcher's exit after the program's READY=1 (conjure's pipe sink, start-stop-daemon
/// --notify-await), in µs after the program sent it.
fn exit_after_ready(cmd: &mut Command, stamp: &Path) -> Option<f64> {
    let _ = std::fs::remove_file(stamp);
    let ok = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().ok()?.success();
    let exited = mono_ns();
    let (sent, pid) = read_stamp(stamp)?;
    kill_wait(pid);
    ok.then_some((exited - sent) as f64 / 1e3)
}

/// The READY=1 datagram at the fake systemd socket (relayed by resident conjure, or sent by the
/// program itself), in µs after the program sent it.
fn datagram_after_ready(cmd: &mut Command, stamp: &Path, fake: &FakeSystemd) -> Option<f64> {
    let _ = std::fs::remove_file(stamp);
    fake.drain();
    let mut child = fake.spawn_for(cmd)?;
    let got = fake.wait_for("READY=1", Duration::from_secs(5));
    let stamped = read_stamp(stamp);
    for c in children_of(child.id() as i32) {
        kill_wait(c);
    }
    ends(&mut child);
    let (sent, _) = stamped?;
    Some((got? - sent) as f64 / 1e3)
}

fn listen_latency(t: &Tools, rounds: usize, readme: &mut Vec<String>) {
    println!("\n## listen() to ready through tcp: (µs from the program's listen() to the launcher's exit)");
    let Some(floor) = t.floor() else { return };
    let conjure = t.conjure();
    let stamp = t.scratch.join("listen.stamp");
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let mut cases: Vec<Case<'_>> = vec![(
        format!("conjure --ready-on tcp:127.0.0.1:{port}"),
        Box::new(|| {
            let _ = std::fs::remove_file(&stamp);
            let ok = Command::new(conjure)
                .arg("--ready-on")
                .arg(format!("tcp:127.0.0.1:{port}"))
                .arg("--")
                .arg(floor)
                .args(["listen", &port.to_string()])
                .arg(&stamp)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?
                .success();
            let exited = mono_ns();
            let (listened, pid) = read_stamp(&stamp)?;
            kill_wait(pid);
            ok.then_some((exited - listened) as f64 / 1e3)
        }),
    )];
    let samples = interleave(&mut cases, rounds);
    let s = Stats::of(&samples[0]);
    row(&cases[0].0, "µs", &s, &[]);
    readme.push(format!("| listen() to ready (tcp:) | {:.2} ms | absolute (goal ≤ 1 ms) |", s.median / 1e3));
}

// ------------------------------------------------------------------------------------------
// Relay

fn relay(t: &Tools, rounds: usize, readme: &mut Vec<String>) {
    const N: usize = 100_000;
    println!("\n## sd_notify relay: {N} datagrams (rate in thousands per second; loss)");
    let Some(floor) = t.floor() else { return };
    let conjure = t.conjure();
    let fake = FakeSystemd::bind(&t.scratch, "relay.sock");
    let mut losses: Vec<(usize, usize)> = Vec::new();
    let mut run = |relayed: bool| -> Option<f64> {
        fake.drain();
        let mut cmd = if relayed {
            let mut c = Command::new(conjure);
            c.args(["-f", "--ready-on", "notify", "--"]).arg(floor);
            c
        } else {
            Command::new(floor)
        };
        let mut child = fake.spawn_for(cmd.args(["flood", &N.to_string()]))?;
        let mut buf = [0u8; 4096];
        let (mut first, mut last, mut got) = (None, 0i64, 0usize);
        let _ = fake.socket.set_read_timeout(Some(Duration::from_secs(2)));
        while let Ok(n) = fake.socket.recv(&mut buf) {
            let at = mono_ns();
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.lines().any(|l| l.starts_with("STATUS=") && l != "STATUS=done") {
                first.get_or_insert(at);
                last = at;
                got += 1;
            }
            if text.lines().any(|l| l == "STATUS=done") {
                break;
            }
        }
        ends(&mut child);
        losses.push((usize::from(relayed), N - got.min(N)));
        let first = first?;
        (last > first).then(|| got as f64 / ((last - first) as f64 / 1e9) / 1e3)
    };
    let mut direct = Vec::new();
    let mut relayed = Vec::new();
    for r in 0..rounds {
        for k in 0..2 {
            let is_relayed = (k + r) % 2 == 1;
            if let Some(rate) = run(is_relayed) {
                if is_relayed { relayed.push(rate) } else { direct.push(rate) }
            }
        }
    }
    let (d, r) = (Stats::of(&direct), Stats::of(&relayed));
    let lost = |relayed: usize| losses.iter().filter(|(k, _)| *k == relayed).map(|(_, l)| *l).max().unwrap_or(0);
    row("direct: the program to the socket", "k/s", &d, &[]);
    row("relayed: through resident conjure", "k/s", &r, &[("direct", d.clone())]);
    println!("  most lost in a run: direct {}, relayed {}", lost(0), lost(1));
    if d.median > 0.0 {
        readme.push(format!(
            "| relay rate ({N} datagrams) | {:.2}× ({} lost at most) | the direct path (goal ≥ 0.5, none lost) |",
            r.median / d.median,
            lost(1)
        ));
    }
}

// ------------------------------------------------------------------------------------------
// Orphans

fn orphans(t: &Tools, rounds: usize, readme: &mut Vec<String>) {
    const N: &str = "10000";
    println!("\n## {N} orphans reaped as PID 1 (ms for the whole run, in a new PID namespace)");
    let (Some(unshare), Some(floor), true) = (&t.unshare, t.floor(), t.root) else { return };
    let conjure = t.conjure();
    let run = |pid1: &Path, args: &[&str]| -> Option<f64> {
        let mut c = Command::new(unshare);
        c.args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .arg(pid1)
            .args(args)
            .arg(floor)
            .args(["orphans", N]);
        timed(&mut c).map(|us| us / 1e3)
    };
    let mut cases: Vec<Case<'_>> = vec![("conjure -f as PID 1".into(), Box::new(|| run(conjure, &["-f", "--"])))];
    if let Some(tini) = &t.tini {
        cases.push(("tini as PID 1".into(), Box::new(move || run(tini, &["--"]))));
    }
    let line = against_the_second(&mut cases, rounds, "ms", "tini");
    readme.extend(line.map(|r| format!("| 10,000 orphans reaped as PID 1 | {r:.2}× | tini (goal ≤ 1.0) |")));
}
