//! The container examples, `examples/docker/Dockerfile` and `examples/kubernetes/pod.yaml`, run
//! the way a container runtime would run them, without one: conjure's static binary (from
//! `cargo xtask dist`) as PID 1 of new PID and mount namespaces (and a network namespace for the
//! pod), chrooted into a directory that holds nothing but what the example puts there, a static
//! test program (`readyprog` built for musl) as `/app`, and what every runtime provides:
//! `/proc` of the new PID namespace and `/dev/null`. No C library, no shell: what `FROM
//! scratch` gives. A binary that needed a dynamic loader could not start there.
//!
//! The commands come from the example files as written (ENTRYPOINT, COPY, the pod's command,
//! args and readiness probe, its emptyDir); only the test program's own arguments are added,
//! as `docker run IMAGE ARGS` would. Each container lives in the test's scratch directory and
//! under `unshare --kill-child`, so nothing outlives the test.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::*;

fn example(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A flow sequence of double-quoted strings, as both files write their commands:
/// `["/conjure", "-f", "--"]`.
fn string_array(text: &str) -> Vec<String> {
    let inner = text.trim().strip_prefix('[').and_then(|t| t.strip_suffix(']'));
    let inner = inner.unwrap_or_else(|| panic!("not a [\"…\", …] list: {text:?}"));
    inner
        .split(',')
        .map(|item| {
            let item = item.trim();
            let s = item.strip_prefix('"').and_then(|i| i.strip_suffix('"'));
            s.unwrap_or_else(|| panic!("not a plain quoted string: {item:?} in {text:?}")).to_string()
        })
        .collect()
}

/// The tools that set up a container by hand; `None` (skipped, or failed under CI) when one
/// is missing.
struct Tools {
    unshare: PathBuf,
    chroot: PathBuf,
    ip: PathBuf,
    nsenter: PathBuf,
}

fn tools() -> Option<Tools> {
    Some(Tools {
        unshare: find_tool("unshare", "util-linux")?,
        chroot: find_tool("chroot", "coreutils")?,
        ip: find_tool("ip", "iproute2")?,
        nsenter: find_tool("nsenter", "util-linux")?,
    })
}

/// What every test here needs: root, the tools, the directory of `cargo xtask dist` and the
/// static test program. `None`, after saying what is missing, when something is.
fn prerequisites() -> Option<(Tools, PathBuf, PathBuf)> {
    if !is_root() {
        say_skipped("needs root");
        return None;
    }
    let t = tools()?;
    Some((t, dist_dir()?, static_example("readyprog")?))
}

/// A root directory in the scratch dir: empty mount points for `/proc` and `/dev/null`, and
/// `files` (host path, absolute path inside).
fn root_with(s: &Scratch, files: &[(PathBuf, String)]) -> PathBuf {
    let root = s.join("root");
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("dev/null"), "").unwrap();
    for (from, to) in files {
        let dest = root.join(to.strip_prefix('/').unwrap_or_else(|| panic!("{to} is not absolute")));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), dest.display()));
    }
    set_mode(&root, 0o755);
    root
}

/// Every file (not directory) under `root`, as absolute paths inside it.
fn files_in(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(format!("/{}", p.strip_prefix(root).unwrap().display()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A container: `argv` run as PID 1 of new namespaces, chrooted into `root`.
struct Container {
    running: Running,
    /// The host pid of its PID 1.
    pid1: i32,
}

impl Container {
    /// Starts `argv` in new PID and mount namespaces (and a network namespace with loopback up,
    /// like a pod's, when `net`), with the new `/proc` and the host's `/dev/null` mounted in
    /// `root`, then `chroot`: the shell that prepares this execs `chroot`, which execs `argv[0]`
    /// inside, so that is PID 1.
    fn start(t: &Tools, root: &Path, argv: &[String], net: bool) -> Container {
        let setup = r#"set -e
if [ -n "$NET" ]; then "$IP" link set lo up; fi
mount -t proc proc "$ROOT/proc"
mount --bind /dev/null "$ROOT/dev/null"
exec "$CHROOT" "$ROOT" "$@""#;
        let mut c = TestCommand::new(&t.unshare);
        c.args(["--pid", "--fork", "--mount", "--kill-child"]);
        if net {
            c.args(["--net"]);
        }
        c.args(["--", "/bin/sh", "-c", setup, "sh"]).args(argv);
        c.env("ROOT", root).env("CHROOT", &t.chroot).env("IP", &t.ip).env("NET", if net { "1" } else { "" });
        let running = c.spawn();
        let unshare = running.pid();
        let pid1 = wait_until(PATIENCE, &format!("{} as PID 1", argv[0]), || {
            all_pids().into_iter().find(|&p| {
                let proc = Proc(p);
                proc.stat().is_some_and(|st| st.ppid == unshare)
                    && proc.status("NSpid").split_whitespace().last() == Some("1")
                    && proc.exe().is_some_and(|e| e.ends_with(argv[0].trim_start_matches('/')))
            })
        });
        Container { running, pid1 }
    }

    /// Host pids of PID 1's children.
    fn children(&self) -> Vec<i32> {
        all_pids().into_iter().filter(|&p| Proc(p).stat().is_some_and(|st| st.ppid == self.pid1)).collect()
    }

    /// Runs `argv` inside: in the container's PID, mount and network namespaces and its root,
    /// as a container runtime runs an exec probe.
    fn exec(&self, t: &Tools, argv: &[String]) -> Output {
        let mut c = TestCommand::new(&t.nsenter);
        c.args(["-t".to_string(), self.pid1.to_string()]).args(["-p", "-m", "-n", "-r", "-w", "--"]).args(argv);
        c.run()
    }
}

/// What the Dockerfile says: COPY (source, destination) pairs, ENTRYPOINT and CMD.
struct Dockerfile {
    copies: Vec<(String, String)>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

fn dockerfile() -> Dockerfile {
    let text = example("examples/docker/Dockerfile");
    let mut d = Dockerfile { copies: Vec::new(), entrypoint: Vec::new(), cmd: Vec::new() };
    let mut from = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        match instruction {
            "FROM" => from = Some(rest.to_string()),
            "COPY" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let [src, dest] = parts.as_slice() else { panic!("COPY with other than one source: {line}") };
                d.copies.push((src.to_string(), dest.to_string()));
            }
            "ENTRYPOINT" => d.entrypoint = string_array(rest),
            "CMD" => d.cmd = string_array(rest),
            _ => panic!("the test does not know the Dockerfile instruction {instruction}: extend it"),
        }
    }
    assert_eq!(from.as_deref(), Some("scratch"), "the Dockerfile is not FROM scratch");
    d
}

/// The host file for a COPY source: the artefacts of `cargo xtask dist`, and the static test
/// program for `app` (which stands for the user's program).
fn copy_source(src: &str, dist: &Path, app: &Path) -> PathBuf {
    match src.strip_prefix("target/dist/") {
        Some(name) => {
            let p = dist.join(name);
            assert!(p.is_file(), "the Dockerfile copies {src}, which `cargo xtask dist` did not make");
            p
        }
        None if src == "app" => app.to_path_buf(),
        None => panic!("the Dockerfile copies {src}, which the test does not know"),
    }
}

#[test]
fn dockerfile_from_scratch_runs_conjure_as_pid1_which_reaps_forwards_term_and_exits_143() {
    let d = dockerfile();
    let Some((t, dist, app)) = prerequisites() else { return };
    let s = Scratch::new();
    let files: Vec<(PathBuf, String)> =
        d.copies.iter().map(|(src, dest)| (copy_source(src, &dist, &app), dest.clone())).collect();
    let root = root_with(&s, &files);
    let mut expected: Vec<String> = d.copies.iter().map(|(_, dest)| dest.clone()).chain(["/dev/null".into()]).collect();
    expected.sort();
    assert_eq!(files_in(&root), expected, "the root holds more than the image would");

    // `docker run IMAGE /app --orphan 300 listen-tcp PORT`: the program leaves an orphan that
    // lives 300 ms, then listens (anything that keeps it running would do).
    assert_eq!(d.cmd, ["/app"], "the test replaces CMD as `docker run` would; update it with the Dockerfile");
    let port = free_port().to_string();
    let mut argv = d.entrypoint.clone();
    argv.extend(["/app", "--orphan", "300", "listen-tcp", &port].map(String::from));
    let c = Container::start(&t, &root, &argv, false);
    assert_eq!(Proc(c.pid1).exe().map(|e| e.ends_with("conjure")), Some(true));

    // The orphan is adopted by PID 1 (it is not the program: its command line says `exit`),
    // then, once it exits, reaped: no zombie stays.
    let orphan = wait_until(PATIENCE, "the orphan to be adopted by PID 1", || {
        c.children().into_iter().find(|p| Proc(*p).cmdline().iter().any(|a| a == "exit"))
    });
    wait_until(PATIENCE, "the orphan to exit and be reaped", || {
        (Proc(orphan).stat().is_none()
            && c.children().iter().all(|p| Proc(*p).stat().is_some_and(|st| st.state != 'Z')))
        .then_some(())
    });
    let program = c.children();
    assert_eq!(program.len(), 1, "PID 1 should have only the program left: {program:?}");

    kill(Pid::from_raw(c.pid1), Signal::SIGTERM).unwrap();
    let out = c.running.wait();
    // PID 1 cannot die of the program's SIGTERM: it exits 128+15, and unshare passes it on.
    out.assert_code(143);
    wait_dead(program[0]);
    s.wait_no_process_left();
}

/// What the pod manifest says about its one container.
struct Pod {
    command: Vec<String>,
    args: Vec<String>,
    probe: Vec<String>,
    mount_paths: Vec<String>,
}

fn pod() -> Pod {
    let text = example("examples/kubernetes/pod.yaml");
    let mut pod = Pod { command: Vec::new(), args: Vec::new(), probe: Vec::new(), mount_paths: Vec::new() };
    let mut in_probe = false;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if line == "readinessProbe:" {
            in_probe = true;
        } else if let Some(list) = line.strip_prefix("command:") {
            if in_probe { pod.probe = string_array(list) } else { pod.command = string_array(list) }
        } else if let Some(list) = line.strip_prefix("args:") {
            pod.args = string_array(list);
        } else if let Some(path) = line.strip_prefix("mountPath:") {
            pod.mount_paths.push(path.trim().to_string());
        }
    }
    assert!(!pod.command.is_empty() && !pod.probe.is_empty(), "no command or no probe command in pod.yaml");
    pod
}

#[test]
fn kubernetes_probe_conjure_status_answers_3_until_the_program_listens_then_0() {
    let pod = pod();
    let Some((t, dist, app)) = prerequisites() else { return };
    let s = Scratch::new();
    let root = root_with(&s, &[(dist.join("conjure"), "/conjure".into()), (app, "/app".into())]);
    for dir in &pod.mount_paths {
        std::fs::create_dir_all(root.join(dir.trim_start_matches('/'))).unwrap();
    }
    let pidfile = pod.command.windows(2).find(|w| w[0] == "-p").map(|w| w[1].clone()).expect("the command's -p");
    let port = pod
        .command
        .iter()
        .find_map(|a| a.strip_prefix("tcp:127.0.0.1:"))
        .expect("the command's --ready-on tcp:127.0.0.1:PORT")
        .to_string();

    // The program listens on the manifest's port 1.5 s after it starts, writing its marker
    // (inside the root) just before.
    assert_eq!(pod.args, ["/app"], "the test adds the program's own arguments to args; update it with pod.yaml");
    let marker = root.join("ready-marker");
    let mut argv = pod.command.clone();
    argv.extend(pod.args.iter().cloned());
    argv.extend(["--marker", "/ready-marker", "--delay", "1500", "listen-tcp", &port].map(String::from));
    let c = Container::start(&t, &root, &argv, true);

    let probe = || c.exec(&t, &pod.probe);
    let before = probe();
    // Only proof if the program was not ready yet when the probe answered.
    assert!(!marker.exists(), "the program became ready before the first probe: the test proves nothing");
    before.assert_code(3);
    assert!(!root.join(pidfile.trim_start_matches('/')).exists(), "the pidfile is published before ready");

    let after =
        wait_until(PATIENCE, "the readiness probe to answer 0", || Some(probe()).filter(|o| o.code() == Some(0)));
    assert!(marker.exists(), "the probe said ready before the program listened\n{after}");
    assert!(after.stdout.contains("running (pid 1)"), "the pidfile should name conjure, PID 1\n{after}");

    // Pod deletion: SIGTERM to PID 1, forwarded; the pidfile goes with the program.
    kill(Pid::from_raw(c.pid1), Signal::SIGTERM).unwrap();
    c.running.wait().assert_code(143);
    assert!(!root.join(pidfile.trim_start_matches('/')).exists(), "the pidfile outlived the pod's program");
    s.wait_no_process_left();
}

/// `unshare`, when this test may use it: as root, and installed (else the test is skipped,
/// saying why).
fn unshare_as_root() -> Option<PathBuf> {
    if !is_root() {
        say_skipped("needs root");
        return None;
    }
    find_tool("unshare", "util-linux")
}

/// conjure as PID 1 of a PID namespace that has no `/proc` of its own (`unshare --pid --fork`
/// without `--mount-proc`) sees the host's `/proc`. It once took every host process whose
/// parent is the host's init for an orphan of its own: when the program ended it signalled
/// them, by numbers that in its namespace may name other processes, and waited out the grace
/// period twice (15 s for a program that exits at once). It must stop nothing and end at once.
#[test]
fn pid1_under_the_hosts_proc_stops_no_stranger_when_the_program_ends() {
    let Some(unshare) = unshare_as_root() else { return };
    // The premise: in such a namespace, /proc/self is not conjure's pid 1.
    let premise =
        TestCommand::new(&unshare).args(["--pid", "--fork", "--kill-child", "--", "readlink", "/proc/self"]).run();
    assert_ne!(premise.stdout.trim(), "1", "unshare gave the namespace a /proc of its own");
    let out = TestCommand::new(&unshare)
        .args(argv!["--pid", "--fork", "--kill-child", "--", conjure_bin(), "-v", "-f", "--", testprog(), "exit", "0"])
        .run();
    assert!(out.status.success(), "conjure as PID 1 failed\n{out}");
    assert!(out.stderr.contains("program ended"), "no trace of the program's end\n{out}");
    for stray in ["stopping what is left", "cannot signal", "survived"] {
        assert!(!out.stderr.contains(stray), "conjure went after processes that are not its own ({stray:?})\n{out}");
    }
}

/// Under the host's `/proc` the program's listener shows under the program's host pid, which
/// conjure cannot tell from a stranger's: it once failed its own program with "port N is
/// already in use by pid X (readyprog)". With no process there that it could name, a listener
/// at the address is the program's.
#[test]
fn pid1_under_the_hosts_proc_takes_the_listener_for_its_programs() {
    let Some(unshare) = unshare_as_root() else { return };
    let s = Scratch::new();
    let sup = FakeSupervisor::new(&s);
    let port = free_port().to_string();
    let mut c = TestCommand::new(&unshare);
    c.args(argv!["--pid", "--fork", "--kill-child", "--", conjure_bin(), "-f", "--ready-on"]);
    c.args([format!("tcp:127.0.0.1:{port}")]).args(argv!["--", example_bin("readyprog"), "listen-tcp", &port]);
    c.env("NOTIFY_SOCKET", &sup.path);
    let running = c.spawn();
    let Some(ready) = sup.receive(PATIENCE) else { panic!("no READY=1 within {PATIENCE:?}\n{}", running.kill()) };
    assert_eq!(ready.text, "READY=1\n");
    drop(running);
    s.wait_no_process_left();
}
