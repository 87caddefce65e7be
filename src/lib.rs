//! conjure starts a program as a correct Unix daemon, a foreground service or a container's
//! PID 1, and tells its supervisor exactly when the program is ready, or exactly why it failed.
//!
//! # Anatomy
//!
//! - [`DaemonConfig`]: what the daemon looks like (pidfile, lock, directory, umask, output
//!   files, user, environment, mode, how readiness is reported), checked before any fork.
//! - [`daemonize`]: turn the calling process into a daemon (it checks that the process runs one
//!   thread; [`daemonize_unchecked`] takes the caller's word); the daemon gets a
//!   [`DaemonContext`] and tells its launcher when it is ready with
//!   [`DaemonContext::notify_parent`]. The original process waits and exits with the outcome.
//!   [`daemonize_with`] runs an initialization step while still privileged, then drops them.
//! - [`Launcher`]: start another program as a daemon and wait until it is ready; the engine of
//!   the `conjure` command.
//! - [`control`]: `stop` and `status` through a locked pidfile.
//! - [`process`]: the building blocks (`fork`, `setsid`, `waitpid`, …) the engine is made of.
//! - [`DaemonizeError`]: every failure, each with its sysexits code in one table.
//!
//! # Guarantees
//!
//! - Between `fork` and `exec` the child runs only async-signal-safe syscalls prepared before
//!   the fork: no allocation, no locks, no logging.
//! - All `unsafe` lives in one module (`src/sys/`); this crate denies it elsewhere.
//! - The library exits a process only where its contract says so: the original process inside
//!   [`daemonize`], once the daemon is ready or failed, and the daemon of [`daemonize_with`] or
//!   [`DaemonContext::report_error`] after reporting a failure. It never installs a tracing
//!   subscriber.
//! - The daemon goes on running Rust: SIGPIPE stays ignored, and only inheritable fds are
//!   closed, so a `File` or socket opened before [`daemonize`] (close-on-exec, as Rust opens
//!   everything) is still the same file after it.
//!
//! # Features
//!
//! `cli` (default) builds the `conjure` command, with clap and tracing-subscriber. A library
//! user needs neither: `conjure-daemon = { version = "…", default-features = false }`.
//!
//! # Portability
//!
//! Linux first: `close_range`, pidfds and `/proc` are used where present, with fallbacks for
//! older kernels. Other Unix systems are not yet supported.
//!
//! # Example
//!
//! ```no_run
//! let mut config = conjure::DaemonConfig::new();
//! config.pidfile("/run/myapp.pid").stdout("/var/log/myapp.out");
//! let mut ctx = conjure::daemonize(&config)?;
//! // ... open sockets, load state ...
//! ctx.notify_parent()?;
//! # Ok::<(), conjure::DaemonizeError>(())
//! ```
//!
//! # Coming from blivet
//!
//! Code written against blivet 0.4 compiles as it is, `daemonize_checked` and split-phase
//! privilege drop included. Its `unsafe` block around [`daemonize`], which is safe now, only
//! draws an `unused_unsafe` warning (the test suite builds such code); drop the block:
//!
//! ```no_run
//! use conjure::{DaemonConfig, daemonize, daemonize_checked};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut config = DaemonConfig::new();
//!     config.pidfile("/var/run/myapp.pid").lockfile("/var/run/myapp.lock").user("www-data");
//!     config.stdout("/var/log/myapp.out").stderr("/var/log/myapp.err").chdir("/var/lib/myapp");
//!     let mut ctx = daemonize(&config)?;
//!     ctx.chown_paths()?;
//!     ctx.drop_privileges()?;
//!     ctx.set_cleanup_on_drop(true);
//!     let _lock = ctx.lockfile_fd();
//!     ctx.notify_parent()?;
//!     ctx.cleanup();
//!     let _other = daemonize_checked(&DaemonConfig::new());
//!     Ok(())
//! }
//! ```
//!
//! So does code written against blivet 0.15's shapes:
//!
//! ```no_run
//! use std::process::ExitCode;
//! use conjure::{DaemonConfig, DaemonizeError, daemonize, daemonize_with};
//!
//! fn main() -> ExitCode {
//!     let mut config = DaemonConfig::new();
//!     config.pidfile("/run/myapp.pid").no_lockfile().user("nobody");
//!     let same: std::collections::HashSet<DaemonConfig> = [config.clone(), config.clone()].into();
//!     assert_eq!(same.len(), 1);
//!     let (mut ctx, port) = match daemonize_with(&config, |_ctx| Ok::<u16, std::io::Error>(80)) {
//!         Ok(daemon) => daemon,
//!         Err(e) => return ExitCode::from(e.exit_code()),
//!     };
//!     ctx.cleanup_on_term_signals().ok();
//!     ctx.cleanup_on_signals(&[libc::SIGUSR1]).ok();
//!     if port == 0 {
//!         ctx.report_error_msg(78, "no port");
//!     }
//!     if let Err(e) = ctx.notify_parent_or_report(Ok::<(), std::io::Error>(())) {
//!         ctx.report_error(&e);
//!     }
//!     let _ = daemonize(&DaemonConfig::new());
//!     let _: Result<(), DaemonizeError> = Ok(());
//!     ExitCode::SUCCESS
//! }
//! ```
//!
//! blivet 0.15's [`daemonize_unchecked`] is here too, for callers that know they run one thread
//! where the check cannot be made.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod daemon;
mod duration;
mod error;
pub mod process;
pub mod readiness;
mod sys;

#[cfg(fuzzing)]
pub mod fuzz;

pub use config::DaemonConfig;
pub use daemon::control;
pub use daemon::launcher::{DEFAULT_KILL_AFTER, DEFAULT_READY_TIMEOUT, Launcher, Outcome};
pub use daemon::{DaemonContext, daemonize, daemonize_checked, daemonize_with};
pub use duration::parse_duration;
pub use error::{DaemonizeError, exit};
pub use sys::daemonize_unchecked;
