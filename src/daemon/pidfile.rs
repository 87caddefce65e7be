//! Pidfiles and lockfiles: [`Guard`], the one owner of a pidfile from the moment it is locked
//! until it is published or removed.
//!
//! The lock, not the file, says whether a daemon runs: a file can outlive its daemon (SIGKILL,
//! a crash), but the kernel drops a `flock` with the last fd of the open file description. So
//! a stale pidfile never blocks a start, and `stop` never signals a pid whose file is unlocked.
//!
//! What conjure trusts and what it hands out:
//! - The file is opened without following links and must be a regular file; a pidfile must be
//!   owned by the launching user or root, and be empty or hold one pid. Anything else (a typo
//!   naming `/etc/app.conf`, a FIFO, a file another user planted) is refused and left exactly
//!   as it was.
//! - The lock is held by a *read-only* open file description: that fd is the one thing the
//!   program inherits, so the lock lives exactly as long as the program, and a daemon running
//!   as another user (`-u`) cannot rewrite the root-owned pidfile to name another process.
//!   conjure writes the pid through a separate read-write fd that never leaves it.
//! - One race needs care: a daemon that stops unlinks its pidfile while a new launcher may
//!   already have opened that same inode and be waiting to lock it. The new launcher would then
//!   lock a file that no longer has a name, and a third could create and lock a fresh one: two
//!   daemons. So after locking, [`Guard::acquire`] checks that the path still names the inode it
//!   locked, and starts over when it does not.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::DaemonizeError;
use crate::sys;

/// Which role a locked file plays, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Pidfile,
    Lockfile,
}

impl Role {
    fn error(self, path: &Path, source: io::Error) -> DaemonizeError {
        let path = path.to_path_buf();
        match self {
            Role::Pidfile => DaemonizeError::PidfileError { path, source },
            Role::Lockfile => DaemonizeError::LockfileError { path, source },
        }
    }
}

/// The most a pidfile holds: a pid in decimal, a newline, and some slack for whitespace.
const MAX_PIDFILE: usize = 32;

/// What a file that may be a pidfile holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content {
    /// Nothing (a pidfile being written, or created and never written).
    Empty,
    /// One pid (greater than 0), as decimal digits, with optional surrounding whitespace.
    Pid(i32),
    /// Anything else: not a pidfile.
    Other,
}

/// Reads what a pidfile holds, from its first bytes (at most [`MAX_PIDFILE`] + 1 are needed).
pub(crate) fn parse(bytes: &[u8]) -> Content {
    if bytes.len() > MAX_PIDFILE {
        return Content::Other;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.trim_matches(|c: char| c.is_ascii_whitespace()),
        Err(_) => return Content::Other,
    };
    if text.is_empty() {
        return Content::Empty;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Content::Other;
    }
    match text.parse::<i32>() {
        Ok(pid) if pid > 0 => Content::Pid(pid),
        _ => Content::Other,
    }
}

/// Reads the content of an open pidfile.
fn read_content(file: &File) -> io::Result<Content> {
    let mut buf = [0u8; MAX_PIDFILE + 1];
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(parse(&buf[..n]))
}

/// Why a file is not one conjure may treat as a pidfile, or `None` when it may.
fn not_a_pidfile(meta: &std::fs::Metadata, content: Option<Content>) -> Option<String> {
    if !meta.is_file() {
        return Some("not a regular file".into());
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        return Some(format!("owned by uid {}, neither root nor the launching user (uid {euid})", meta.uid()));
    }
    if content == Some(Content::Other) {
        return Some("it holds something other than a pid: not a pidfile".into());
    }
    None
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Opens `path` read-only without following a final symlink, creating it with `create`.
/// Non-blocking, so that a FIFO planted at the path cannot hang the launcher in `open()`.
fn open_read_only(path: &Path, create: bool) -> io::Result<File> {
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
    let mut opts = OpenOptions::new();
    // std refuses create without write access; O_CREAT with O_RDONLY is what is meant.
    opts.read(true).custom_flags(if create { flags | libc::O_CREAT } else { flags }).mode(0o644);
    opts.open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => refused("it is a symbolic link".into()),
        _ => e,
    })
}

/// A second, read-write open file description of the file open as `file` (whose metadata is
/// `meta`): through `/proc/self/fd` (no path lookup at all), else through `path` checked to be
/// the same inode.
fn reopen_read_write(file: &File, meta: &Metadata, path: &Path) -> io::Result<File> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
    let rw = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
    {
        Ok(f) => f,
        Err(_) => OpenOptions::new().read(true).write(true).custom_flags(flags | libc::O_NOFOLLOW).open(path)?,
    };
    let b = rw.metadata()?;
    if meta.dev() != b.dev() || meta.ino() != b.ino() {
        return Err(refused("the file was replaced while opening it".into()));
    }
    Ok(rw)
}

/// A locked pidfile or lockfile, owned by conjure.
#[derive(Debug)]
pub(crate) struct Guard {
    role: Role,
    /// Where the file is published (the pidfile's path).
    path: PathBuf,
    /// The pidfile sink: the temporary name the file has until it is published.
    temp: Option<PathBuf>,
    /// Read-only; holds the lock; the one fd the program inherits (none with `--no-lock`).
    lock: Option<File>,
    /// Read-write, close-on-exec, never handed out: how conjure writes the pid (pidfiles only).
    write: Option<File>,
}

impl Guard {
    /// Opens (creating it) and, with `lock`, locks the file at `path`. A pidfile must be a
    /// regular file owned by the launching user or root, and empty or hold a pid; a lockfile
    /// must be a regular file. With `temp` (the pidfile sink), the file is made under that
    /// name and renamed to `path` by [`publish`](Self::publish).
    pub(crate) fn acquire(path: &Path, role: Role, lock: bool, temp: Option<PathBuf>) -> Result<Guard, DaemonizeError> {
        let at = temp.as_deref().unwrap_or(path);
        for _ in 0..100 {
            let file = open_read_only(at, true).map_err(|e| role.error(at, e))?;
            let meta = file.metadata().map_err(|e| role.error(at, e))?;
            let why = match role {
                Role::Pidfile => not_a_pidfile(&meta, None),
                Role::Lockfile => (!meta.is_file()).then(|| "not a regular file".to_string()),
            };
            if let Some(why) = why {
                return Err(role.error(at, refused(why)));
            }
            if lock && !sys::try_lock(file.as_fd()).map_err(|e| role.error(at, e))? {
                let pid = match read_content(&file) {
                    Ok(Content::Pid(p)) => Some(p),
                    _ => None,
                };
                return Err(DaemonizeError::LockConflict { path: at.to_path_buf(), pid });
            }
            if !names(at, &meta) {
                tracing::debug!(path = %at.display(), "locked file was replaced while locking; retrying");
                continue;
            }
            let write = match role {
                Role::Lockfile => None,
                Role::Pidfile => {
                    // Checked under the lock, so that a live daemon is not caught mid-write.
                    let content = read_content(&file).map_err(|e| role.error(at, e))?;
                    if let Some(why) = not_a_pidfile(&meta, Some(content)) {
                        return Err(role.error(at, refused(why)));
                    }
                    Some(reopen_read_write(&file, &meta, at).map_err(|e| role.error(at, e))?)
                }
            };
            tracing::debug!(path = %at.display(), ?role, lock, "opened");
            return Ok(Guard { role, path: path.to_path_buf(), temp, lock: lock.then_some(file), write });
        }
        Err(role.error(at, io::Error::other("the file kept being replaced while locking it")))
    }

    /// The pidfile sink's temporary name for `path`: in the same directory (so the rename is
    /// atomic), hidden, short whatever the pidfile's own name, and the same for every start of
    /// the same pidfile. So its lock is the instance's lock until it is published: a second
    /// start while the first is not ready yet (or never will be: its watcher was killed, and the
    /// program runs unpublished) finds it held, and fails naming that program's pid.
    pub(crate) fn temp_path(path: &Path) -> PathBuf {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let name = path.file_name().map_or(&[][..], |n| n.as_encoded_bytes());
        let hash =
            name.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        path.with_file_name(format!(".conjure-{hash:016x}.pid.tmp"))
    }

    /// The fd that holds the lock, which the program inherits (read-only).
    pub(crate) fn lock_fd(&self) -> Option<BorrowedFd<'_>> {
        self.lock.as_ref().map(AsFd::as_fd)
    }

    /// The read-write fd the child writes its pid through (close-on-exec: it never reaches the
    /// program).
    pub(crate) fn write_fd(&self) -> Option<BorrowedFd<'_>> {
        self.write.as_ref().map(AsFd::as_fd)
    }

    /// Closes the read-write fd (the library's daemon, once set up, keeps only the lock): a
    /// daemon that drops privileges can then not rewrite its root-owned pidfile.
    pub(crate) fn close_write(&mut self) {
        if self.lock.is_some() {
            self.write = None;
        }
    }

    fn file(&self) -> Option<&File> {
        self.write.as_ref().or(self.lock.as_ref())
    }

    /// The names the file may have (its temporary one until published, then its own) and its
    /// device and inode: what a signal handler needs to remove it only if it is still this one.
    pub(crate) fn identity(&self) -> Option<(Vec<&Path>, u64, u64)> {
        let meta = self.file()?.metadata().ok()?;
        Some((self.temp.iter().map(PathBuf::as_path).chain([self.path.as_path()]).collect(), meta.dev(), meta.ino()))
    }

    /// Writes `pid` and a newline, replacing what the file held.
    pub(crate) fn write_pid(&self, pid: u32) -> Result<(), DaemonizeError> {
        let Some(file) = &self.write else { return Ok(()) };
        let line = format!("{pid}\n");
        // Over what is there, then cut to length: see `sys::setup` for why not truncate first.
        file.write_all_at(line.as_bytes(), 0)
            .and_then(|()| file.set_len(line.len() as u64))
            .map_err(|source| DaemonizeError::PidfileError { path: self.path.clone(), source })
    }

    /// The pidfile sink's moment: renames the temporary file over the pidfile, unless another
    /// instance holds the pidfile's lock by now, or what is there is not a pidfile.
    pub(crate) fn publish(&mut self) -> Result<(), DaemonizeError> {
        let Some(temp) = &self.temp else { return Ok(()) };
        match inspect(&self.path) {
            Ok(Some(found)) if found.locked => {
                return Err(DaemonizeError::LockConflict { path: self.path.clone(), pid: found.pid });
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(self.role.error(&self.path, e)),
            _ => {}
        }
        std::fs::rename(temp, &self.path).map_err(|source| self.role.error(&self.path, source))?;
        tracing::debug!(path = %self.path.display(), "pidfile published");
        self.temp = None;
        Ok(())
    }

    /// Unlinks the file (under its temporary name, if not yet published) if its path still
    /// names the file this guard holds. Best effort: a failure is logged.
    pub(crate) fn remove(&self) {
        let at = self.temp.as_deref().unwrap_or(&self.path);
        let Some(file) = self.file() else { return };
        if names_same_inode(at, file) {
            match std::fs::remove_file(at) {
                Ok(()) => tracing::debug!(path = %at.display(), "removed"),
                Err(e) => tracing::debug!(path = %at.display(), error = %e, "cannot remove"),
            }
        }
    }
}

/// Whether `path` (not followed) still names the file open as `file`.
pub(crate) fn names_same_inode(path: &Path, file: &File) -> bool {
    file.metadata().is_ok_and(|meta| names(path, &meta))
}

/// Whether `path` (not followed) names the file whose metadata is `meta`.
fn names(path: &Path, meta: &Metadata) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|p| p.dev() == meta.dev() && p.ino() == meta.ino())
}

/// What a pidfile says about its daemon, looked at without disturbing its owner: the lock is
/// tested with a shared, non-blocking `flock` that is dropped at once.
#[derive(Debug)]
pub(crate) struct Inspection {
    /// The pid it names.
    pub pid: Option<i32>,
    /// Whether somebody holds its lock.
    pub locked: bool,
    /// The file, open read-only.
    pub file: File,
}

/// Looks at the pidfile at `path`: `Ok(None)` when there is none; an `InvalidData` error when
/// what is there is not a pidfile (not a regular file, another user's, not holding a pid).
pub(crate) fn inspect(path: &Path) -> io::Result<Option<Inspection>> {
    let file = match open_read_only(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let content = if meta.is_file() { Some(read_content(&file)?) } else { None };
    if let Some(why) = not_a_pidfile(&meta, content) {
        return Err(refused(why));
    }
    let locked = sys::lock_is_held(file.as_fd())?;
    let pid = match content {
        Some(Content::Pid(p)) => Some(p),
        _ => None,
    };
    Ok(Some(Inspection { pid, locked, file }))
}

impl Inspection {
    /// Removes the pidfile inspected at `path` (a pidfile, as [`inspect`] checked), which
    /// nobody holds a lock on: takes the lock first, so that a daemon starting at this moment
    /// either keeps its file or has not locked it yet, and removes the name only while it
    /// still names the inspected file.
    pub(crate) fn remove_stale(&self, path: &Path) -> Result<(), DaemonizeError> {
        let file = &self.file;
        if !sys::try_lock(file.as_fd()).map_err(|e| Role::Pidfile.error(path, e))? || !names_same_inode(path, file) {
            return Err(DaemonizeError::LockConflict { path: path.to_path_buf(), pid: None });
        }
        std::fs::remove_file(path).map_err(|source| DaemonizeError::PidfileError { path: path.to_path_buf(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_pid_is_a_pidfile() {
        assert_eq!(parse(b""), Content::Empty);
        assert_eq!(parse(b"\n"), Content::Empty);
        assert_eq!(parse(b"42\n"), Content::Pid(42));
        assert_eq!(parse(b"42"), Content::Pid(42));
        assert_eq!(parse(b" 42 \n"), Content::Pid(42));
        assert_eq!(parse(b"0\n"), Content::Other, "0 is no pid: kill(0) would signal conjure's own group");
        assert_eq!(parse(b"-1\n"), Content::Other);
        assert_eq!(parse(b"+42\n"), Content::Other);
        assert_eq!(parse(b"42 43\n"), Content::Other);
        assert_eq!(parse(b"99999999999\n"), Content::Other);
        assert_eq!(parse(b"[server]\nport = 80\n"), Content::Other);
        assert_eq!(parse(b"\xff\n"), Content::Other);
        assert_eq!(parse(&[b'1'; MAX_PIDFILE + 1]), Content::Other);
    }

    #[test]
    fn the_temporary_name_is_short_whatever_the_pidfile_is_called() {
        let long = "x".repeat(250);
        let t = Guard::temp_path(&Path::new("/run").join(&long));
        assert!(t.file_name().unwrap().len() < 40);
        assert_eq!(t.parent(), Some(Path::new("/run")));
        assert_eq!(t, Guard::temp_path(&Path::new("/run").join(&long)), "the same for every start");
        assert_ne!(Guard::temp_path(Path::new("/run/a.pid")), Guard::temp_path(Path::new("/run/b.pid")));
    }
}
