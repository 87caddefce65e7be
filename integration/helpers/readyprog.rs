//! `readyprog`: a program that becomes ready in one of the ways conjure's readiness sources
//! watch, at a moment the test chooses, so that tests can check order and promptness.
//!
//! ```text
//! readyprog [--marker PATH] [--delay MS] [--orphan MS] [--then-exit CODE] MODE ARGS...
//!   notify MSG...          send each MSG as one datagram to $NOTIFY_SOCKET (path or @abstract);
//!                          `\n` in a MSG is a newline; `@EMPTY`, `@HUGE`, `@BINARY` send
//!                          garbage, `@SLEEP:MS` pauses, `@FLOOD:N` sends N `STATUS=flood I`,
//!                          `@WAITFILE:PATH` waits (30 s at most) until PATH exists,
//!                          `@TOUCH:PATH` creates PATH, `@FD:MSG` sends MSG with one fd: a
//!                          memfd holding `stored by pid PID`
//!   notify-child MSG...    the same, from a child process that stays alive
//!   fdstore NAME REPORT    systemd's fd store: when started with a stored fd named NAME
//!                          (LISTEN_FDS, LISTEN_FDNAMES), append `restored CONTENT` to REPORT;
//!                          else store a memfd holding `stored by pid PID` (FDSTORE=1,
//!                          FDNAME=NAME) and append `stored stored by pid PID`; then READY=1
//!   notify-reload MSG...   like notify, then answer every SIGHUP as Type=notify-reload wants:
//!                          `RELOADING=1` with `MONOTONIC_USEC=`, append `reloaded` to the
//!                          marker, then `READY=1`
//!   listen-tcp PORT        listen on 127.0.0.1:PORT
//!   listen-unix PATH       listen on a Unix stream socket
//!   listen-tcp-then-close PORT MS ONCE
//!                          listen on 127.0.0.1:PORT; after MS ms, unless ONCE exists, write
//!                          the CLOCK_MONOTONIC µs into ONCE and close the listener while the
//!                          process runs on: a server that stopped answering (once)
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
//! sleeps for an hour (or, with `--then-exit`, exits with CODE). A launcher that reports ready while the marker is missing reported too
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
    let mut then_exit = None;
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
            Some("--then-exit") => {
                then_exit = Some(args[1].parse::<i32>().expect("readyprog: --then-exit CODE"));
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
        "listen-tcp-then-close" => {
            let port = rest[0].parse::<u16>().expect("port");
            let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("readyprog: bind");
            std::thread::sleep(Duration::from_millis(rest[1].parse().expect("MS")));
            let once = std::path::Path::new(&rest[2]);
            if once.exists() {
                keep.push(Box::new(listener));
            } else {
                std::fs::write(once, format!("{}\n", monotonic_usec())).expect("readyprog: once");
                drop(listener);
            }
        }
        "fdstore" => fdstore(&rest[0], &rest[1]),
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
    if let Some(code) = then_exit {
        std::process::exit(code);
    }
    std::thread::sleep(Duration::from_secs(3600));
    drop(keep);
}

/// A memfd holding `stored by pid PID`, for the fd store.
fn memfd_with_state() -> std::os::fd::OwnedFd {
    let fd = nix::sys::memfd::memfd_create(c"readyprog-state", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("readyprog: memfd_create");
    let mut file = std::fs::File::from(fd);
    write!(file, "stored by pid {}", std::process::id()).expect("readyprog: write memfd");
    file.into()
}

/// `fdstore NAME REPORT`: see the module docs.
fn fdstore(name: &str, report: &str) {
    use std::io::{Read, Seek};
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(report).expect("readyprog: report");
    let mine = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    let at = names.split(':').position(|n| n == name).map(|i| 3 + i as i32).filter(|fd| *fd < 3 + count);
    match at.filter(|_| mine) {
        Some(fd) => {
            let mut file = std::fs::File::open(format!("/proc/self/fd/{fd}")).expect("readyprog: stored fd");
            let mut content = String::new();
            file.rewind().expect("readyprog: rewind");
            file.read_to_string(&mut content).expect("readyprog: read stored fd");
            writeln!(log, "restored {content}").expect("readyprog: report");
        }
        None => {
            send_all(&[format!("@FD:FDSTORE=1\\nFDNAME={name}")]);
            writeln!(log, "stored stored by pid {}", std::process::id()).expect("readyprog: report");
        }
    }
    send_all(&["READY=1".to_owned()]);
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
            flood if flood.starts_with("@FLOOD:") => {
                let n: usize = flood[7..].parse().expect("@FLOOD:N");
                for i in 0..n {
                    sock.send_to_addr(format!("STATUS=flood {i}").as_bytes(), &addr).expect("readyprog: send");
                }
                continue;
            }
            wait if wait.starts_with("@WAITFILE:") => {
                let path = std::path::Path::new(&wait[10..]);
                let end = std::time::Instant::now() + Duration::from_secs(30);
                while !path.exists() && std::time::Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
                continue;
            }
            touch if touch.starts_with("@TOUCH:") => {
                std::fs::write(&touch[7..], b"").expect("readyprog: touch");
                continue;
            }
            with_fd if with_fd.starts_with("@FD:") => {
                use std::os::fd::AsRawFd;
                let fd = memfd_with_state();
                let text = with_fd[4..].replace("\\n", "\n");
                let sockaddr = match address.strip_prefix('@') {
                    Some(name) => nix::sys::socket::UnixAddr::new_abstract(name.as_bytes()),
                    None => nix::sys::socket::UnixAddr::new(address.as_str()),
                }
                .expect("readyprog: address");
                let fds = [fd.as_raw_fd()];
                nix::sys::socket::sendmsg(
                    sock.as_raw_fd(),
                    &[std::io::IoSlice::new(text.as_bytes())],
                    &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                    nix::sys::socket::MsgFlags::empty(),
                    Some(&sockaddr),
                )
                .expect("readyprog: sendmsg with an fd");
                continue;
            }
            text => text.replace("\\n", "\n").into_bytes(),
        };
        sock.send_to_addr(&bytes, &addr).expect("readyprog: send");
    }
}
