//! `libdaemon`: a daemon written against the conjure library API, for the integration tests.
//!
//! ```text
//! libdaemon [CONFIG FLAGS] MODE [MODE ARGS]
//!   --pidfile P --lockfile L --chdir D --umask OCTAL --stdout O --stderr E --append
//!   --foreground --no-close-fds --env K=V --user U --group G
//!   --notify            report readiness over sd_notify (`Sink::Notify`)
//! modes:
//!   ready               notify_parent, write "libdaemon out"/"libdaemon err" (and
//!                       CONJURE_TEST_ENV's value) to stdout/stderr, sleep 60
//!   drop                drop the context without notifying, then sleep 60
//!   die                 exit 0 without notifying (the context is never dropped)
//!   error CODE MSG      report_error(Reported { code, message: MSG })
//!   thread              start a second thread, then daemonize_checked (which must refuse)
//!   signal-cleanup      cleanup_on_term_signals, notify, sleep 60
//!   privdrop            chown_paths, drop_privileges, write USER/LOGNAME/HOME to stdout,
//!                       notify, sleep 60
//!   with                daemonize_with: bind 127.0.0.1:PORT (the rest's first word) while
//!                       privileged, then notify, report the uid to stdout, sleep 60
//!   root-ready          notify_parent without dropping privileges (must be refused)
//!   live-file PATH      open PATH for appending before daemonizing; after, write "alive"
//!                       through that very File, notify, sleep 60
//!   unsafe-ready        like ready, but through the unsafe `daemonize_unchecked`
//!   exec-fail PATH PROG open PATH for appending, run a foreground `Launcher` of PROG (which
//!                       must fail to exec); then write "alive" through that very File,
//!                       print the error and exit with its code
//!   fd-sink PATH        open PATH for appending, launch `true` with that File's fd as the s6
//!                       readiness fd (`Sink::Fd`); then write "alive" through the File
//!   blivet-0.4          like ready, but written as for blivet 0.4: `daemonize` in an
//!                       `unsafe` block, which must still compile
//! ```
//!
//! A failure before the fork prints `libdaemon: {err}` and exits with `err.exit_code()`.

use std::io::Write;
use std::time::Duration;

use conjure::{DaemonConfig, DaemonContext, DaemonizeError};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = DaemonConfig::new();
    let mut i = 0;
    let value = |i: usize| args.get(i + 1).cloned().unwrap_or_else(|| usage());
    while i < args.len() {
        match args[i].as_str() {
            "--pidfile" => config.pidfile(value(i)),
            "--lockfile" => config.lockfile(value(i)),
            "--chdir" => config.chdir(value(i)),
            "--umask" => config.umask(u32::from_str_radix(&value(i), 8).unwrap_or_else(|_| usage())),
            "--stdout" => config.stdout(value(i)),
            "--stderr" => config.stderr(value(i)),
            "--user" => config.user(value(i)),
            "--group" => config.group(value(i)),
            "--env" => {
                let kv = value(i);
                let (k, v) = kv.split_once('=').unwrap_or_else(|| usage());
                config.env(k, v)
            }
            "--append" => {
                i += 1;
                config.append(true);
                continue;
            }
            "--foreground" => {
                i += 1;
                config.foreground(true);
                continue;
            }
            "--no-close-fds" => {
                i += 1;
                config.close_fds(false);
                continue;
            }
            "--notify" => {
                i += 1;
                config.readiness(conjure::readiness::Sink::Notify);
                continue;
            }
            _ => break,
        };
        i += 2;
    }
    let mode = args.get(i).map(String::as_str).unwrap_or_else(|| usage());
    let rest = &args[i + 1..];

    if mode == "thread" {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let result = conjure::daemonize_checked(&config);
        drop(tx);
        let _ = handle.join();
        match result {
            Ok(_) => {
                eprintln!("libdaemon: daemonize_checked accepted a process with two threads");
                std::process::exit(1)
            }
            Err(err) => fail(&err),
        }
    }

    if mode == "exec-fail" {
        let [path, program] = rest else { usage() };
        let mut live = std::fs::OpenOptions::new().append(true).create(true).open(path).expect("libdaemon: open");
        config.foreground(true);
        let err = match conjure::Launcher::new(config, program).run() {
            Ok(outcome) => panic!("libdaemon: {program} ran: {outcome:?}"),
            Err(err) => err,
        };
        // The File still owns its fd: the failed launch closed nothing it did not own.
        live.write_all(b"alive\n").expect("libdaemon: write through the File opened before");
        fail(&err)
    }

    if mode == "fd-sink" {
        use std::os::fd::AsRawFd;
        let path = rest.first().unwrap_or_else(|| usage());
        let mut live = std::fs::OpenOptions::new().append(true).create(true).open(path).expect("libdaemon: open");
        let mut launcher = conjure::Launcher::new(config, "true");
        launcher.readiness(conjure::readiness::SinkChoice::Sink(conjure::readiness::Sink::Fd(live.as_raw_fd())));
        launcher.run().unwrap_or_else(|err| fail(&err));
        // The File still owns its fd: the sink wrote its newline through it without taking it.
        live.write_all(b"alive\n").expect("libdaemon: write through the File after the launch");
        std::process::exit(0)
    }

    if mode == "with" {
        let port: u16 = rest.first().and_then(|p| p.parse().ok()).unwrap_or_else(|| usage());
        let (mut ctx, listener) =
            conjure::daemonize_with(&config, |_| std::net::TcpListener::bind(("127.0.0.1", port)))
                .unwrap_or_else(|err| fail(&err));
        ok(ctx.notify_parent());
        let _ =
            writeln!(std::io::stdout(), "uid {} listening {}", nix::unistd::geteuid(), listener.local_addr().is_ok());
        sleep_then_exit(ctx)
    }
    // Opened before daemonizing, as any Rust program opens files: close-on-exec.
    let live = (mode == "live-file").then(|| {
        let path = rest.first().cloned().unwrap_or_else(|| usage());
        std::fs::OpenOptions::new().append(true).create(true).open(path).expect("libdaemon: open")
    });

    let ctx = match mode {
        // SAFETY: this process runs exactly one thread (no mode but `thread` starts another).
        "unsafe-ready" => unsafe { conjure::daemonize_unchecked(&config) },
        // blivet 0.4's `daemonize` was unsafe; code written for it keeps its block.
        #[allow(unused_unsafe)]
        // SAFETY: as above (and `daemonize` is safe now: the block only draws a warning).
        "blivet-0.4" => unsafe { conjure::daemonize(&config) },
        _ => conjure::daemonize(&config),
    };
    let mut ctx = ctx.unwrap_or_else(|err| fail(&err));

    match mode {
        "ready" | "unsafe-ready" | "blivet-0.4" => {
            ok(ctx.status("starting"));
            ok(ctx.notify_parent());
            speak();
            sleep_then_exit(ctx)
        }
        "drop" => {
            drop(ctx);
            std::thread::sleep(Duration::from_secs(60));
        }
        "die" => std::process::exit(0),
        "error" => {
            let code = rest.first().and_then(|c| c.parse().ok()).unwrap_or_else(|| usage());
            let message = rest.get(1).cloned().unwrap_or_else(|| usage());
            ctx.report_error(&DaemonizeError::Reported { code, message })
        }
        "signal-cleanup" => {
            ok(ctx.cleanup_on_term_signals());
            ok(ctx.notify_parent());
            sleep_then_exit(ctx)
        }
        "privdrop" => {
            if let Err(err) = ctx.chown_paths() {
                ctx.report_error(&err)
            }
            if let Err(err) = ctx.drop_privileges() {
                ctx.report_error(&err)
            }
            ok(ctx.notify_parent());
            speak();
            for key in ["USER", "LOGNAME", "HOME"] {
                let value = std::env::var(key).unwrap_or_default();
                let _ = writeln!(std::io::stdout(), "{key}={value}");
            }
            sleep_then_exit(ctx)
        }
        "root-ready" => {
            if let Err(err) = ctx.notify_parent() {
                ctx.report_error(&err)
            }
            sleep_then_exit(ctx)
        }
        "live-file" => {
            let mut file = live.expect("opened above");
            if let Err(e) = file.write_all(b"alive\n") {
                ctx.report_error_msg(70, format!("the File opened before daemonize is unusable: {e}"));
            }
            ok(ctx.notify_parent());
            sleep_then_exit(ctx)
        }
        _ => usage(),
    }
}

/// Writes one line to each of stdout and stderr, so that tests can find the output files.
/// With `CONJURE_TEST_ENV` set (by `--env`), also writes its value to stdout: an environment
/// changed in the daemon does not show in `/proc/PID/environ`, which shows the one at exec.
fn speak() {
    let _ = std::io::stdout().write_all(b"libdaemon out\n");
    let _ = std::io::stderr().write_all(b"libdaemon err\n");
    if let Ok(v) = std::env::var("CONJURE_TEST_ENV") {
        let _ = std::io::stdout().write_all(format!("env CONJURE_TEST_ENV={v}\n").as_bytes());
    }
}

fn sleep_then_exit(mut ctx: DaemonContext) -> ! {
    // The lock fd must stay open while the daemon runs: it is what `status` looks at.
    assert!(ctx.lockfile_fd().is_some() || ctx.pidfile_path().is_none());
    std::thread::sleep(Duration::from_secs(60));
    ctx.set_cleanup_on_drop(true);
    drop(ctx);
    std::process::exit(0)
}

fn ok(result: Result<(), DaemonizeError>) {
    if let Err(err) = result {
        fail(&err)
    }
}

fn fail(err: &DaemonizeError) -> ! {
    eprintln!("libdaemon: {err}");
    std::process::exit(err.exit_code().into())
}

fn usage() -> ! {
    eprintln!("libdaemon: bad arguments; see integration/helpers/libdaemon.rs");
    std::process::exit(2)
}
