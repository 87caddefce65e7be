//! conjure's own lines on stderr: its one-line failures and, when asked for, its traces.
//!
//! Under systemd, stderr is often the journal: `JOURNAL_STREAM` then holds the device and inode
//! of that stream (systemd.exec(5)). When it names what fd 2 really is, every line starts with
//! a syslog priority prefix (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug, as in
//! sd-daemon(3)), which journald strips and records as the line's priority, and traces carry no
//! timestamp of their own (the journal has one). A variable inherited from a service whose
//! stderr was since redirected names another file, so it is ignored.
//!
//! Logging never stops conjure: a line that cannot be written (a closed pipe, a full disk) is
//! dropped, where `eprintln!` would panic and turn a clean exit code into 101.

use std::io::{self, Write};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::str::FromStr as _;

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The environment variable of the trace filter.
const FILTER_VAR: &str = "CONJURE_LOG";
/// What `-v` turns on, and how it reads.
const VERBOSE: (&str, Level) = ("conjure", Level::DEBUG);
const VERBOSE_TEXT: &str = "conjure=debug";

/// Whether stderr is the journal: `JOURNAL_STREAM` is `DEV:INODE` of fd 2.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // fstat of fd 2, through a duplicate (std's metadata wants an owned file).
    let meta = io::stderr().as_fd().try_clone_to_owned().and_then(|fd| std::fs::File::from(fd).metadata());
    meta.is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The syslog priority of a tracing level.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Writes one line (`line` and a newline) to stderr, with the priority prefix of `level` when
/// stderr is the journal. A failed write is ignored.
pub fn line(journal: bool, level: Level, line: std::fmt::Arguments<'_>) {
    let text = if journal { format!("<{}>{line}\n", priority(level)) } else { format!("{line}\n") };
    let _ = io::stderr().write_all(text.as_bytes());
}

/// Stderr for the trace subscriber: every write "succeeds", whether or not it did.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The default trace format, behind the journal's priority prefix.
struct Prefixed<T> {
    format: Format<Full, T>,
}

impl<S, N, T> FormatEvent<S, N> for Prefixed<T>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.format.format_event(ctx, writer, event)
    }
}

/// Installs a trace subscriber on stderr when `-v` or `CONJURE_LOG` asks for one, and only
/// then (building one costs time at every launch). `CONJURE_LOG` holds `target=level`
/// directives or a bare level (`debug`, `conjure::readiness=trace,warn`); one that does not
/// parse is reported as a warning and `-v`'s filter is used instead.
pub fn init(verbose: bool, journal: bool) {
    let targets = match std::env::var(FILTER_VAR) {
        Ok(text) if !text.is_empty() => Targets::from_str(&text).unwrap_or_else(|e| {
            line(
                journal,
                Level::WARN,
                format_args!("conjure: ignoring {FILTER_VAR}={text:?} ({e}); tracing {VERBOSE_TEXT} instead"),
            );
            Targets::new().with_target(VERBOSE.0, VERBOSE.1)
        }),
        _ if verbose => Targets::new().with_target(VERBOSE.0, VERBOSE.1),
        _ => return,
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(|| Stderr).with_ansi(false).log_internal_errors(false);
    let format = tracing_subscriber::fmt::format().with_ansi(false);
    let subscriber = tracing_subscriber::registry().with(targets);
    if journal {
        let layer = layer.event_format(Prefixed { format: format.without_time() });
        let _ = subscriber.with(layer).try_init();
    } else {
        let _ = subscriber.with(layer.event_format(format)).try_init();
    }
}
