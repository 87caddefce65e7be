//! A TCP echo server that daemonizes itself with conjure's library: a pidfile, an output file,
//! a port bound while still root, and the rest of its life as an unprivileged user.
//!
//! ```text
//! cargo run --example echo_server -- PIDFILE LOG PORT [USER]
//! echo hello | nc -q1 127.0.0.1 PORT        # hello
//! conjure stop -p PIDFILE                   # or: kill $(cat PIDFILE)
//! ```
//!
//! The command returns once the server listens (or says why it could not), with the pidfile
//! written and locked: a `Type=forking` unit or an init script can start it as it is.

use std::io::{Read, Write};
use std::net::TcpListener;

use conjure::{DaemonConfig, DaemonizeError};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pidfile, log, port, rest @ ..] = args.as_slice() else {
        eprintln!("usage: echo_server PIDFILE LOG PORT [USER]");
        return std::process::ExitCode::from(64);
    };
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("echo_server: invalid port `{port}`");
        return std::process::ExitCode::from(64);
    };
    let mut config = DaemonConfig::new();
    config.pidfile(pidfile).stdout(log);
    if let Some(user) = rest.first() {
        config.user(user);
    }
    // Still root inside the closure: a port below 1024 can be bound. Then conjure switches to
    // the user; an error anywhere is reported to the launching command, which exits with it.
    let started = conjure::daemonize_with(&config, |_ctx| TcpListener::bind(("127.0.0.1", port)));
    let (mut ctx, listener) = match started {
        Ok(daemon) => daemon,
        // Before the fork: nothing started, the command says why.
        Err(err) => return fail(&err),
    };
    ctx.cleanup_on_term_signals().unwrap_or_else(|err| ctx.report_error(&err));
    ctx.notify_parent().unwrap_or_else(|err| ctx.report_error(&err));
    println!("echo server {} listening", std::process::id());
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

fn fail(err: &DaemonizeError) -> std::process::ExitCode {
    eprintln!("echo_server: {err}");
    std::process::ExitCode::from(err.exit_code())
}
