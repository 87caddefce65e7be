//! How much conjure costs over a plain fork and exec, measured as ratios against a baseline
//! taken in the same run (so the machine's speed cancels out). Run with `cargo bench`.
//!
//! - `spawn /bin/true`: the baseline, std's `Command` (fork/exec, wait).
//! - `conjure -f -- /bin/true`: foreground; conjure's setup then exec in place.
//! - `conjure -- /bin/true`: the full double fork; the launcher returns once the program exec'd.
//! - `conjure -p PIDFILE -- /bin/true`: the same with a locked pidfile.
//! - the fd close under `RLIMIT_NOFILE` at its hard limit against 1,024 (both through `prlimit`):
//!   `close_range` should make the ratio about 1, where a close loop would grow with the limit.
//!
//! Medians of interleaved rounds; no assertion here: benchmarks report, tests decide.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 150;

fn time(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let status = cmd.status().expect("spawn");
    let elapsed = start.elapsed();
    assert!(status.success(), "{cmd:?} failed: {status}");
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let conjure = env!("CARGO_BIN_EXE_conjure");
    let dir = std::env::temp_dir().join(format!("conjure-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let pidfile = dir.join("b.pid");
    let has_prlimit = Path::new("/usr/bin/prlimit").exists();

    type Case = (&'static str, Box<dyn Fn() -> Command>);
    let mut cases: Vec<Case> = vec![
        ("spawn /bin/true (baseline)", Box::new(|| Command::new("/bin/true"))),
        (
            "conjure -f -- /bin/true",
            Box::new(move || {
                let mut c = Command::new(conjure);
                c.args(["-f", "--", "/bin/true"]);
                c
            }),
        ),
        (
            "conjure -- /bin/true",
            Box::new(move || {
                let mut c = Command::new(conjure);
                c.args(["--", "/bin/true"]);
                c
            }),
        ),
        (
            "conjure -p PIDFILE -- /bin/true",
            Box::new({
                let pidfile = pidfile.clone();
                move || {
                    let mut c = Command::new(conjure);
                    c.arg("-p").arg(&pidfile).args(["--", "/bin/true"]);
                    c
                }
            }),
        ),
    ];
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |l| l.1);
    let hard = hard.min(1 << 20);
    if has_prlimit {
        for limit in [1024, hard] {
            let name: &'static str = Box::leak(format!("prlimit nofile={limit} conjure -f").into_boxed_str());
            cases.push((
                name,
                Box::new(move || {
                    let mut c = Command::new("/usr/bin/prlimit");
                    c.arg(format!("--nofile={limit}:{limit}")).args([conjure, "-f", "--", "/bin/true"]);
                    c
                }),
            ));
        }
    }

    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, make)) in cases.iter().enumerate() {
            samples[i].push(time(&mut make()));
        }
    }
    let medians: Vec<Duration> = samples.into_iter().map(median).collect();
    let base = medians[0].as_secs_f64();
    println!("{:<38} {:>12} {:>10}", "case", "median", "× baseline");
    for ((name, _), m) in cases.iter().zip(&medians) {
        println!("{name:<38} {:>10.1}µs {:>10.2}", m.as_secs_f64() * 1e6, m.as_secs_f64() / base);
    }
    if has_prlimit {
        let n = medians.len();
        println!(
            "fd close cost, RLIMIT_NOFILE {hard} vs 1024: {:.2}× (close_range: independent of the limit)",
            medians[n - 1].as_secs_f64() / medians[n - 2].as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
