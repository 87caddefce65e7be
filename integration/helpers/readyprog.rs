//! `readyprog`: a program that becomes ready in one of the ways conjure's readiness sources
//! watch, at a moment the test chooses, so that tests can check order and promptness.
//!
//! ```text
//! readyprog [--marker PATH] [--delay MS] [--orphan MS] MODE ARGS...
//!   notify MSG...          send each MSG as one datagram to $NOTIFY_SOCKET (path or @abstract);
//!                          `@EMPTY`, `@HUGE`, `@BINARY` send garbage, `@SLEEP:MS` pauses
//!   notify-child MSG...    the same, from a child process that stays alive
//!   notify-reload MSG...   like notify, then answer every SIGHUP as Type=notify-reload wants:
//!                          `RELOADING=1` with `MONOTONIC_USEC=`, append `reloaded` to the
//!                          marker, then `READY=1`
//!   listen-tcp PORT        listen on 127.0.0.1:PORT
//!   listen-unix PATH       listen on a Unix stream socket
//!   fd-write N             write a newline to fd N
//!   touch PATH             create PATH
//!   exit CODE              exit with CODE (never ready)
//!   kill-self SIG          die of signal SIG (never ready)
//!   never                  do nothing (never ready)
//!   orphan MS              start `readyprog --delay MS exit 0` and exit at once, orphaning it
//! ```
//!
//! `--orphan MS` first runs `readyprog orphan MS` and waits for it: a grandchild that lives MS
//! milliseconds after its parent died, for the nearest subreaper (or PID 1) to adopt and reap.
//!
//! After `--delay` milliseconds it writes the marker file (if any), *then* becomes ready, then
//! sleeps for an hour. A launcher that reports ready while the marker is missing reported too
//! early. The marker holds the moment it was written, in CLOCK_MONOTONIC microseconds (one
//! decimal line), so that a supervisor's own monotonic timestamps (systemd's
//! `ActiveEnterTimestampMonotonic`) can be put in order with it.

use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut marker = None;
    let mut delay = 0u64;
    loop {
        match args.first().map(String::as_str) {
            Some("--marker") => {
                marker = Some(args[1].clone());
                args.drain(..2);
            }
            Some("--delay") => {
                delay = args[1].parse().expect("readyprog: --delay MS");
                args.drain(..2);
            }
            Some("--orphan") => {
                let status = std::process::Command::new(std::env::current_exe().expect("readyprog: exe"))
                    .args(["orphan", &args[1]])
                    .status()
                    .expect("readyprog: spawn");
                assert!(status.success(), "readyprog: orphan {status}");
                args.drain(..2);
            }
            _ => break,
        }
    }
    let mode = args.first().cloned().unwrap_or_default();
    let rest = &args[1.min(args.len())..];
    // Installed before anything can make us ready: a SIGHUP after READY=1 must find it.
    let hup = (mode == "notify-reload").then(|| {
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]).expect("readyprog: SIGHUP handler")
    });
    std::thread::sleep(Duration::from_millis(delay));
    if let Some(m) = &marker {
        std::fs::write(m, format!("{}\n", monotonic_usec())).expect("readyprog: marker");
    }
    // Whatever becomes ready must stay alive while the test looks at it.
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    match mode.as_str() {
        "notify" => send_all(rest),
        "notify-reload" => {
            send_all(rest);
            let mut hup = hup.expect("installed above for this mode");
            for _ in hup.forever() {
                send_all(&[format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec())]);
                if let Some(m) = &marker {
                    let mut f = std::fs::OpenOptions::new().append(true).open(m).expect("readyprog: marker");
                    f.write_all(b"reloaded\n").expect("readyprog: marker");
                }
                send_all(&["READY=1".to_owned()]);
            }
        }
        "notify-child" => {
            let child = std::process::Command::new(std::env::current_exe().expect("readyprog: exe"))
                .arg("notify")
                .args(rest)
                .spawn()
                .expect("readyprog: spawn");
            keep.push(Box::new(child));
        }
        "listen-tcp" => keep.push(Box::new(
            std::net::TcpListener::bind(("127.0.0.1", rest[0].parse::<u16>().expect("port"))).expect("readyprog: bind"),
        )),
        "listen-unix" => {
            keep.push(Box::new(std::os::unix::net::UnixListener::bind(&rest[0]).expect("readyprog: bind")))
        }
        "fd-write" => {
            let n: i32 = rest[0].parse().expect("fd");
            let path = format!("/proc/self/fd/{n}");
            let mut f = std::fs::OpenOptions::new().write(true).open(path).expect("readyprog: fd");
            f.write_all(b"\n").expect("readyprog: write");
        }
        "touch" => {
            std::fs::write(&rest[0], b"").expect("readyprog: touch");
        }
        "exit" => std::process::exit(rest[0].parse().expect("code")),
        "kill-self" => {
            let sig: i32 = rest[0].parse().expect("signal number");
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::try_from(sig).ok());
        }
        "never" => {}
        "orphan" => {
            std::process::Command::new(std::env::current_exe().expect("readyprog: exe"))
                .args(["--delay", &rest[0], "exit", "0"])
                .spawn()
                .expect("readyprog: spawn");
            std::process::exit(0);
        }
        other => {
            eprintln!("readyprog: unknown mode `{other}`");
            std::process::exit(2);
        }
    }
    std::thread::sleep(Duration::from_secs(3600));
    drop(keep);
}

/// CLOCK_MONOTONIC in microseconds, the clock of systemd's `*Monotonic` timestamps and of
/// `MONOTONIC_USEC=`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "readyprog: clock_gettime");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

fn send_all(messages: &[String]) {
    let address = std::env::var("NOTIFY_SOCKET").expect("readyprog: NOTIFY_SOCKET is not set");
    let addr = match address.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address"),
        None => SocketAddr::from_pathname(&address).expect("path address"),
    };
    let sock = UnixDatagram::unbound().expect("readyprog: socket");
    for m in messages {
        let bytes: Vec<u8> = match m.as_str() {
            "@EMPTY" => Vec::new(),
            "@HUGE" => vec![b'X'; 100_000],
            "@BINARY" => vec![0xff, 0xfe, 0, b'\n', b'=', 0x80],
            pause if pause.starts_with("@SLEEP:") => {
                std::thread::sleep(Duration::from_millis(pause[7..].parse().expect("@SLEEP:MS")));
                continue;
            }
            text => text.replace("\\n", "\n").into_bytes(),
        };
        sock.send_to_addr(&bytes, &addr).expect("readyprog: send");
    }
}
