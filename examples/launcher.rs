//! Starting another program as a daemon from Rust, and knowing when it is ready: what
//! `conjure -p PIDFILE --ready-on tcp:127.0.0.1:PORT -- PROGRAM ARGS` does, as a library call.
//!
//! ```text
//! cargo run --example launcher -- PIDFILE PORT PROGRAM [ARGS]...
//! cargo run --example launcher -- /tmp/web.pid 8361 python3 -m http.server 8361 --bind 127.0.0.1
//! ```
//!
//! It returns once the program accepts connections on the port, with its pid; or the reason it
//! did not (it died, naming how; it took longer than 30 s), with the program stopped and no
//! pidfile left behind.

use std::time::Duration;

use conjure::readiness::Source;
use conjure::{DaemonConfig, Launcher, Outcome};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pidfile, port, program, rest @ ..] = args.as_slice() else {
        eprintln!("usage: launcher PIDFILE PORT PROGRAM [ARGS]...");
        return std::process::ExitCode::from(64);
    };
    let mut config = DaemonConfig::new();
    config.pidfile(pidfile);
    let source: Source = match format!("tcp:127.0.0.1:{port}").parse() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("launcher: {why}");
            return std::process::ExitCode::from(64);
        }
    };
    let mut launcher = Launcher::new(config, program);
    launcher.args(rest).ready_on(source).ready_timeout(Some(Duration::from_secs(30)));
    match launcher.run() {
        Ok(Outcome::Ready { pid }) => {
            println!("{program} is ready as pid {pid}");
            std::process::ExitCode::SUCCESS
        }
        Ok(other) => {
            println!("{program}: {other:?}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("launcher: {err}");
            std::process::ExitCode::from(err.exit_code())
        }
    }
}
