//! `testprog`: the program the integration tests start as a daemon, and the wrapper that puts
//! the launcher in a hostile starting state.
//!
//! ```text
//! testprog sleep SECS                  sleep, then exit 0
//! testprog exit CODE                   exit with CODE at once
//! testprog output TAG N [SECS]         write N lines, odd ones to stdout, even ones to stderr
//!                                      ("TAG out 1", "TAG err 2", ...), then sleep SECS (default 0)
//! testprog fds-to FILE                 write "pid P" and one "fd N TARGET" line per open fd, then sleep
//! testprog listen-fds FILE             write LISTEN_PID, LISTEN_FDS, the pid and whether fd 3 is a
//!                                      socket, then accept on fd 3 and answer "hello from PID\n"
//! testprog ignore-term SECS            ignore SIGTERM, then sleep
//! testprog tree FILE N [CODE]          fork N children that sleep (their command line is this
//!                                      one), write "pids P C1 .. CN" to FILE, then sleep, or
//!                                      exit with CODE and leave the children orphaned
//! testprog ppid                       print "ppid P sid S": the parent pid read before main ran
//!                                      (a constructor), and the session id
//! testprog record-signals FILE         take every signal through sigwaitinfo: write "ready",
//!                                      then one line per signal received ("15"); exit 0 after
//!                                      SIGTERM
//! testprog wrap [OPTIONS] -- CMD ARGS  set up the state below, then exec CMD
//!     --ignore SIG        SIG_IGN for SIG (name, number, or RTMIN+N)
//!     --block SIG         block SIG in the signal mask
//!     --open-fd N[=PATH]  open PATH (default /dev/null) at fd N, inheritable
//!     --socket N=PATH     bind a listening Unix stream socket at PATH, put it at fd N, inheritable
//!     --listen-pid        set LISTEN_PID to this process's pid (which CMD keeps after exec)
//!     --report FILE       write "pid", "sid", "tty_nr", "SigIgn", "SigBlk" and "fd N TARGET"
//!                         lines about this process to FILE, just before exec
//!     --no-pidfd          make pidfd_open fail with ENOSYS for CMD and everything it starts
//!                         (a seccomp filter): a kernel before 5.3, as far as CMD can tell
//! ```
//!
//! Every sleeping mode writes its files completely (write to a temporary name, then rename), so
//! a test that sees the file sees all of it.

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

/// `getppid()` as soon as this program runs: read by a constructor, before std's runtime set-up
/// and `main`, so that a program exec'd before it was reparented is caught in the act.
static FIRST_PPID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn read_ppid_first() {
    // SAFETY: getppid has no preconditions and cannot fail.
    FIRST_PPID.store(unsafe { libc::getppid() }, std::sync::atomic::Ordering::Relaxed);
}

#[used]
#[unsafe(link_section = ".init_array")]
static READ_PPID_FIRST: extern "C" fn() = read_ppid_first;

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let strs: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let mode = strs.first().map(String::as_str).unwrap_or("");
    match mode {
        "sleep" => sleep(arg(&strs, 1).parse().unwrap_or_else(|_| usage())),
        "exit" => std::process::exit(arg(&strs, 1).parse().unwrap_or_else(|_| usage())),
        "output" => {
            let tag = arg(&strs, 1);
            let n: u32 = arg(&strs, 2).parse().unwrap_or_else(|_| usage());
            for i in 1..=n {
                // Unbuffered, one write per line, so the order in a shared file is the order here.
                if i % 2 == 1 {
                    let _ = std::io::stdout().write_all(format!("{tag} out {i}\n").as_bytes());
                } else {
                    let _ = std::io::stderr().write_all(format!("{tag} err {i}\n").as_bytes());
                }
            }
            sleep(strs.get(3).and_then(|s| s.parse().ok()).unwrap_or(0));
        }
        "fds-to" => {
            write_atomically(Path::new(arg(&strs, 1)), &describe_self());
            sleep(600);
        }
        "listen-fds" => listen_fds(Path::new(arg(&strs, 1))),
        "ignore-term" => {
            // SAFETY: SIG_IGN installs no handler; nothing else in this process touches signals.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            sleep(arg(&strs, 1).parse().unwrap_or_else(|_| usage()));
        }
        "tree" => tree(Path::new(arg(&strs, 1)), arg(&strs, 2).parse().unwrap_or_else(|_| usage()), strs.get(3)),
        "ppid" => {
            // SAFETY: getsid(0) has no preconditions.
            let sid = unsafe { libc::getsid(0) };
            let ppid = FIRST_PPID.load(std::sync::atomic::Ordering::Relaxed);
            let _ = std::io::stdout().write_all(format!("ppid {ppid} sid {sid}\n").as_bytes());
        }
        "record-signals" => record_signals(Path::new(arg(&strs, 1))),
        "wrap" => wrap(&args[1..]),
        _ => usage(),
    }
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i).map(String::as_str).unwrap_or_else(|| usage())
}

fn usage() -> ! {
    eprintln!("testprog: bad arguments; see integration/helpers/testprog.rs");
    std::process::exit(2)
}

fn sleep(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).expect("testprog: write");
    std::fs::rename(&tmp, path).expect("testprog: rename");
}

/// "pid P" and "fd N TARGET" lines about this process.
fn describe_self() -> String {
    let mut out = format!("pid {}\n", std::process::id());
    let mut fds: Vec<(i32, String)> = std::fs::read_dir("/proc/self/fd")
        .expect("testprog: /proc/self/fd")
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    for (fd, target) in fds {
        // The directory listing itself shows up as an fd that is gone by now; skip it.
        if target.starts_with("/proc/") && target.ends_with("/fd") {
            continue;
        }
        out.push_str(&format!("fd {fd} {target}\n"));
    }
    out
}

fn tree(file: &Path, n: u32, code: Option<&String>) {
    let mut pids = vec![std::process::id()];
    for _ in 0..n {
        // SAFETY: this process runs one thread; the child only sleeps.
        match unsafe { libc::fork() } {
            -1 => panic!("testprog: fork: {}", std::io::Error::last_os_error()),
            0 => loop {
                std::thread::sleep(Duration::from_secs(600));
            },
            child => pids.push(child as u32),
        }
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    write_atomically(file, &format!("pids {}\n", list.join(" ")));
    match code {
        Some(c) => std::process::exit(c.parse().unwrap_or_else(|_| usage())),
        None => sleep(600),
    }
}

fn record_signals(file: &Path) {
    // SAFETY: a full set, blocked in this single-threaded process, then waited for.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(file).expect("testprog: open");
    out.write_all(b"ready\n").expect("testprog: write");
    loop {
        // SAFETY: a valid set and a null info pointer.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig < 0 {
            continue;
        }
        out.write_all(format!("{sig}\n").as_bytes()).expect("testprog: write");
        if sig == libc::SIGTERM {
            std::process::exit(0);
        }
    }
}

fn listen_fds(out: &Path) {
    let mut stat: libc::stat = unsafe_zeroed_stat();
    // SAFETY: fstat with a valid out-pointer; a closed fd 3 just gives EBADF.
    let is_socket = unsafe { libc::fstat(3, &mut stat) } == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFSOCK;
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "-".into());
    let text = format!(
        "LISTEN_PID={}\nLISTEN_FDS={}\npid={}\nfd3_socket={}\n",
        var("LISTEN_PID"),
        var("LISTEN_FDS"),
        std::process::id(),
        is_socket
    );
    write_atomically(out, &text);
    if !is_socket {
        sleep(600);
        return;
    }
    // SAFETY: fd 3 is a socket this process inherited and nothing else in it owns.
    let listener = unsafe { <UnixListener as std::os::fd::FromRawFd>::from_raw_fd(3) };
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        let _ = stream.write_all(format!("hello from {}\n", std::process::id()).as_bytes());
    }
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn parse_signal(name: &str) -> i32 {
    if let Ok(n) = name.parse() {
        return n;
    }
    let name = name.strip_prefix("SIG").unwrap_or(name);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off: i32 = rest.strip_prefix('+').map_or(0, |n| n.parse().unwrap_or_else(|_| usage()));
        return libc::SIGRTMIN() + off;
    }
    match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CHLD" => libc::SIGCHLD,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "WINCH" => libc::SIGWINCH,
        _ => usage(),
    }
}

/// Puts `fd` at number `n`, inheritable across exec.
fn place_fd(fd: RawFd, n: RawFd) {
    if fd == n {
        // SAFETY: fcntl on an fd this process owns.
        unsafe { libc::fcntl(n, libc::F_SETFD, 0) };
        return;
    }
    // SAFETY: dup2 on fds this process owns; the copy at `n` has close-on-exec cleared.
    if unsafe { libc::dup2(fd, n) } != n {
        panic!("testprog: dup2 to {n}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: closing the original, which nothing else refers to.
    unsafe { libc::close(fd) };
}

fn wrap(args: &[OsString]) {
    let mut i = 0;
    let mut report = None;
    let mut blocked = Vec::new();
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        let value = || args.get(i + 1).map(|v| v.to_string_lossy().into_owned()).unwrap_or_else(|| usage());
        match a.as_str() {
            "--" => {
                i += 1;
                break;
            }
            "--ignore" => {
                // SAFETY: SIG_IGN installs no handler.
                unsafe { libc::signal(parse_signal(&value()), libc::SIG_IGN) };
                i += 2;
            }
            "--block" => {
                blocked.push(parse_signal(&value()));
                i += 2;
            }
            "--open-fd" => {
                let v = value();
                let (n, path) = v.split_once('=').unwrap_or((&v, "/dev/null"));
                let n: RawFd = n.parse().unwrap_or_else(|_| usage());
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .expect("testprog: open");
                place_fd(file.into_raw_fd(), n);
                i += 2;
            }
            "--socket" => {
                let v = value();
                let (n, path) = v.split_once('=').unwrap_or_else(|| usage());
                let listener = UnixListener::bind(path).expect("testprog: bind");
                place_fd(listener.into_raw_fd(), n.parse().unwrap_or_else(|_| usage()));
                i += 2;
            }
            "--listen-pid" => {
                // SAFETY: this process runs one thread, so nothing reads the environment meanwhile.
                unsafe { std::env::set_var("LISTEN_PID", std::process::id().to_string()) };
                i += 1;
            }
            "--report" => {
                report = Some(value());
                i += 2;
            }
            "--no-pidfd" => {
                deny_pidfd_open();
                i += 1;
            }
            _ => usage(),
        }
    }
    let command = &args[i..];
    if command.is_empty() {
        usage();
    }
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset/sigprocmask get valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in &blocked {
            libc::sigaddset(&mut set, *sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    if let Some(path) = report {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("testprog: stat");
        let fields: Vec<&str> = stat[stat.rfind(')').expect("testprog: stat") + 2..].split(' ').collect();
        let status = std::fs::read_to_string("/proc/self/status").expect("testprog: status");
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string())).unwrap_or_default()
        };
        let mut text = format!("sid {}\ntty_nr {}\n", fields[3], fields[4]);
        text.push_str(&format!("SigIgn {}\nSigBlk {}\n", field("SigIgn:"), field("SigBlk:")));
        text.push_str(&describe_self());
        write_atomically(Path::new(&path), &text);
    }
    let cstrings: Vec<CString> =
        command.iter().map(|a| CString::new(a.clone().into_vec()).expect("testprog: NUL in argument")).collect();
    let mut argv: Vec<*const libc::c_char> = cstrings.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: argv is a NULL-terminated array of NUL-terminated strings that outlive the call;
    // execvp only returns on failure, and uses the (possibly updated) environment.
    unsafe { libc::execvp(argv[0], argv.as_ptr()) };
    eprintln!("testprog: exec {:?}: {}", command[0], std::io::Error::last_os_error());
    let _ = std::io::stderr().flush();
    std::process::exit(127);
}

/// Installs a seccomp filter under which `pidfd_open` fails with ENOSYS, as on kernels before
/// 5.3; inherited by everything this process execs and starts. The syscall number is the same
/// on every architecture (new syscalls share one table since 5.1), so the filter does not look
/// at the architecture.
fn deny_pidfd_open() {
    let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let filter = [
        // The syscall number: offset 0 of `struct seccomp_data`.
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_pidfd_open as u32,
        },
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: plain prctl calls; `prog` points at `filter`, which outlives them (the kernel
    // copies the program).
    let ok = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) == 0
    };
    if !ok {
        panic!("testprog: seccomp: {}", std::io::Error::last_os_error());
    }
}
