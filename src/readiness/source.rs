//! A readiness source, armed: what it needs set up before the fork (a pipe made, an inotify
//! watch placed), and how it answers once the program exec'd.
//!
//! Which process runs what: [`Armed::arm`] runs in the launcher before the fork; the rest runs
//! in the launcher (or resident conjure) while it waits, inside the engine's one event loop,
//! which polls [`Armed::fd`] and calls [`Armed::probe`] when [`Armed::probe`] said to. The
//! `notify` source has nothing of its own here: the socket is hosted by the event loop, which
//! also relays what arrives on it, and says "ready" on `READY=1` from the program's tree.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::error::DaemonizeError;
use crate::process::Process;
use crate::readiness::listeners::{Owner, Target};
use crate::readiness::probe::{self, Backoff, CmdCheck};
use crate::readiness::{Source, absolute};

/// A source with what it needs set up before the fork.
#[derive(Debug)]
pub(crate) enum Armed {
    /// The exec is all it takes.
    Exec,
    /// `READY=1` on the socket the event loop hosts.
    Notify,
    /// `fd:N`: the pipe whose write end the program finds at `target`; the read end until
    /// the program closed it without a newline.
    Fd {
        read: Option<OwnedFd>,
        write: Option<OwnedFd>,
        target: RawFd,
    },
    /// `tcp:` and `unix:`: a listener of the program's at that address.
    Listen {
        target: Target,
        backoff: Backoff,
    },
    File {
        path: PathBuf,
        inotify: Inotify,
    },
    Cmd {
        command: String,
        backoff: Backoff,
        running: Option<CmdCheck>,
    },
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Ready.
    Ready,
    /// Not yet: probe again at this instant, or (`None`) when the source's fd says so.
    Again(Option<Instant>),
    /// Someone else holds the address the program should listen on (who, as an operator reads
    /// it: `port 8000 is already in use by pid 123 (python3)`).
    Taken(String),
}

impl Armed {
    /// Prepares `source` in the launcher, before anything is started (a host resolved, a path
    /// made absolute: see [`Target::from_source`]).
    pub(crate) fn arm(source: &Source) -> Result<Armed, DaemonizeError> {
        if let Some(target) = Target::from_source(source)? {
            return Ok(Armed::Listen { target, backoff: Backoff::default() });
        }
        Ok(match source {
            Source::Exec => Armed::Exec,
            Source::Notify => Armed::Notify,
            Source::Fd(n) => {
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                    .map_err(|e| DaemonizeError::sys("pipe2", e))?;
                // The program's end must block like any ordinary pipe.
                crate::sys::set_nonblocking(write.as_fd(), false)
                    .map_err(|source| DaemonizeError::SystemError { call: "fcntl(F_SETFL)", source })?;
                Armed::Fd { read: Some(read), write: Some(write), target: *n }
            }
            Source::File(path) => {
                let path = absolute(path)?;
                let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
                    .map_err(|e| DaemonizeError::sys("inotify_init1", e))?;
                let dir = path.parent().unwrap_or(Path::new("/"));
                inotify
                    .add_watch(
                        dir,
                        AddWatchFlags::IN_CREATE
                            | AddWatchFlags::IN_MOVED_TO
                            | AddWatchFlags::IN_ATTRIB
                            | AddWatchFlags::IN_CLOSE_WRITE,
                    )
                    .map_err(|e| {
                        DaemonizeError::invalid(format!(
                            "cannot watch `{}` for readiness file `{}`: {}",
                            dir.display(),
                            path.display(),
                            e.desc()
                        ))
                    })?;
                Armed::File { path, inotify }
            }
            Source::Cmd(command) => Armed::Cmd { command: command.clone(), backoff: Backoff::default(), running: None },
            // Every one is a Target, above.
            Source::Tcp(..) | Source::Unix(_) => {
                return Err(DaemonizeError::invalid(format!("invalid readiness source `{source}`")));
            }
        })
    }

    /// Before anything is started: an address the program is to listen on must not be taken
    /// already (a listener conjure itself holds, inherited through `LISTEN_FDS`, is the
    /// program's).
    pub(crate) fn check_free(&mut self) -> Result<(), DaemonizeError> {
        if let Armed::Listen { target, .. } = self
            && let Owner::Other(holders) = target.owner(None)
        {
            return Err(DaemonizeError::AddressInUse(target.taken(&holders)));
        }
        Ok(())
    }

    /// The fd the program must find at a fixed number, if any: `(ours, its number)`.
    pub(crate) fn child_fd(&self) -> Option<(RawFd, RawFd)> {
        match self {
            Armed::Fd { write: Some(w), target, .. } => Some((w.as_raw_fd(), *target)),
            _ => None,
        }
    }

    /// After the fork: the launcher closes its copy of the program's end, so that the program
    /// closing it shows as end of file.
    pub(crate) fn forked(&mut self) {
        if let Armed::Fd { write, .. } = self {
            *write = None;
        }
    }

    /// The fd to poll, if the source has one now.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Armed::Fd { read, .. } => read.as_ref().map(AsFd::as_fd),
            Armed::File { inotify, .. } => Some(inotify.as_fd()),
            Armed::Cmd { running: Some(check), .. } => check.fd(),
            _ => None,
        }
    }

    /// Looks once: probes a probing source, checks a file, starts or checks a command. `tree`
    /// is the program, whose listeners alone count.
    pub(crate) fn probe(&mut self, tree: &Process) -> Result<Probe, DaemonizeError> {
        Ok(match self {
            Armed::Exec => Probe::Ready,
            Armed::Notify | Armed::Fd { .. } => Probe::Again(None),
            Armed::Listen { target, backoff } => match target.owner(Some(tree)) {
                Owner::Program => Probe::Ready,
                Owner::Nobody => Probe::Again(Some(probe::due(backoff))),
                Owner::Other(holders) => Probe::Taken(target.taken(&holders)),
            },
            // Checked once after exec; from then on inotify says when to look again.
            Armed::File { path, .. } => {
                if path.exists() {
                    Probe::Ready
                } else {
                    Probe::Again(None)
                }
            }
            Armed::Cmd { command, backoff, running } => {
                if collect(running) == Some(true) {
                    return Ok(Probe::Ready);
                }
                if running.is_none() {
                    *running = Some(CmdCheck::start(command).map_err(|source| DaemonizeError::SystemError {
                        call: "starting the readiness command",
                        source,
                    })?);
                }
                // Looked at again when its pidfd says it exited (or on the backoff without one).
                Probe::Again(Some(probe::due(backoff)))
            }
        })
    }

    /// The source's fd became readable. `true` when that made it ready.
    pub(crate) fn readable(&mut self) -> Result<bool, DaemonizeError> {
        match self {
            Armed::Fd { read: reading, target, .. } => {
                let Some(read) = reading.as_ref() else { return Ok(false) };
                let mut buf = [0u8; 512];
                match nix::unistd::read(read.as_fd(), &mut buf) {
                    Ok(0) => {
                        tracing::debug!(fd = *target, "the program closed its readiness fd without a newline");
                        // Nothing more can come: out of the poll set, and closed.
                        *reading = None;
                        Ok(false)
                    }
                    // Only whether a newline came matters: nothing is kept, whatever the program writes.
                    Ok(n) => Ok(buf[..n].contains(&b'\n')),
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(false),
                    Err(e) => Err(DaemonizeError::sys("read", e)),
                }
            }
            Armed::File { path, inotify } => {
                let _ = inotify.read_events();
                Ok(path.exists())
            }
            // The check exited: ready if it succeeded; otherwise the next run waits for its probe.
            Armed::Cmd { running, .. } => Ok(collect(running) == Some(true)),
            _ => Ok(false),
        }
    }
}

/// A `cmd:` check that finished: whether it succeeded (it is gone either way); `None` while
/// it runs, or when none does.
fn collect(running: &mut Option<CmdCheck>) -> Option<bool> {
    let result = running.as_mut()?.finished()?;
    *running = None;
    if let Err(why) = &result {
        tracing::debug!(why, "readiness command not yet successful");
    }
    Some(result.is_ok())
}

/// How long the program was waited for, as the failure message says it.
pub(crate) fn waited(timeout: Option<Duration>) -> String {
    timeout.map_or_else(|| "ever".to_string(), crate::duration::format)
}
