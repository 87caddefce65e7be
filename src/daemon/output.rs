//! Output files (`-o`, `-e`), opened with no more power than the daemon's user has.
//!
//! conjure runs as root and hands these files to a user (`-u`) who must be treated as hostile.
//! That user typically owns its log directory, so it can plant `out.log -> /etc/shadow`, a
//! symlinked directory, a hard link, a FIFO. Opened by root and chowned by path, any of those
//! made root empty a file the user could not touch and give it to them. So, with `-u`/`-g`:
//!
//! - The file is first opened with the daemon user's filesystem identity (fsuid, fsgid and
//!   groups, for the calling thread only; see `sys/creds.rs`). Whatever the path resolves to,
//!   the open succeeds only where the user could open it themselves, and a file it creates is
//!   the user's already. Nothing is ever chowned by path.
//! - Only where the user may not create the file (a root-owned `/var/log`), and only when no
//!   one but root or the launching user can change any directory on the way (so nothing in them
//!   was planted; symlinks count only if such a user owns them), does root open it. A file root
//!   creates there is handed to the user through the fd (`fchown`); one that existed keeps its
//!   owner.
//! - What was opened must be a regular file or a character device (`/dev/null`, a terminal): a
//!   FIFO, a socket or a directory is refused. It is truncated only then (unless `-a`).
//!
//! Without `-u`/`-g` the launching user opens its own files as any tool would. Either way the
//! file is opened with `O_APPEND`, so that logrotate's `copytruncate` leaves no hole of NUL
//! bytes behind the daemon's next write.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::daemon::ids::Identity;
use crate::error::DaemonizeError;
use crate::sys;

/// How many symlinks a trusted path may go through (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Opens output file `path` for the daemon: as its user when `identity` is set.
pub(crate) fn open(path: &Path, identity: Option<&Identity>, append: bool) -> Result<File, DaemonizeError> {
    let error = |source: io::Error| DaemonizeError::OutputFileError { path: path.to_path_buf(), source };
    let file = match identity {
        None => plain(path, append).map_err(error)?,
        Some(id) => as_user(path, id, append).map_err(error)?,
    };
    tracing::debug!(path = %path.display(), append, "output file opened");
    Ok(file)
}

fn options(create_new: bool) -> OpenOptions {
    let mut opts = OpenOptions::new();
    opts.append(true).mode(0o644).custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true);
    }
    opts
}

/// The launching user's own file, as any tool opens it (a FIFO waits for its reader).
fn plain(path: &Path, append: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    if !append && file.metadata()?.is_file() {
        file.set_len(0)?;
    }
    Ok(file)
}

fn as_user(path: &Path, id: &Identity, append: bool) -> io::Result<File> {
    let attempt = sys::with_fs_identity(&id.ids, || options(false).open(path))?;
    let file = match attempt {
        Ok(f) => f,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            if let Some(why) = untrusted(path) {
                let user = id.name.clone().unwrap_or_else(|| id.ids.uid.to_string());
                return Err(io::Error::new(e.kind(), format!("{} as user `{user}`, and {why}", crate::error::why(&e))));
            }
            as_root(path, id)?
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let kind = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    if !(kind.is_file() || kind.is_char_device()) {
        return Err(io::Error::other("not a regular file or a character device; refusing it as an output file"));
    }
    // The daemon writes as an ordinary blocking file.
    crate::sys::set_nonblocking(file.as_fd(), false)?;
    if !append && kind.is_file() {
        file.set_len(0)?;
    }
    Ok(file)
}

/// Root's open, in a place the daemon user cannot have tampered with: a file created here is
/// handed to the user through its fd; one that existed keeps its owner.
fn as_root(path: &Path, id: &Identity) -> io::Result<File> {
    match options(true).open(path) {
        Ok(f) => {
            nix::unistd::fchown(f.as_fd(), Some(id.ids.uid.into()), Some(id.ids.gid.into()))
                .map_err(io::Error::from)?;
            Ok(f)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => options(false).open(path),
        Err(e) => Err(e),
    }
}

/// Why root may not open `path` for the daemon user, or `None` when it may: every directory on
/// the way (symlinks followed) can be changed by root or the launching user only, and every
/// symlink is owned by one of them.
fn untrusted(path: &Path) -> Option<String> {
    let trusted_owner = |uid: u32| uid == 0 || uid == nix::unistd::geteuid().as_raw();
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut at = PathBuf::from("/");
    let mut links = 0;
    // Whether entries of `at` can be trusted whoever owns them (false: a sticky directory
    // anyone may write to, where only root's and the launcher's own entries count).
    let mut any_owner = true;
    while let Some(name) = pending.pop() {
        let next = at.join(&name);
        let meta = match std::fs::symlink_metadata(&next) {
            Ok(m) => m,
            // Not there yet: root would create it in `at`, which is trusted.
            Err(e) if e.kind() == io::ErrorKind::NotFound && pending.is_empty() => return None,
            Err(e) => return Some(format!("`{}` cannot be checked: {}", next.display(), crate::error::why(&e))),
        };
        if !any_owner && !trusted_owner(meta.uid()) {
            return Some(format!(
                "`{}` is owned by uid {} in a directory anyone may write to",
                next.display(),
                meta.uid()
            ));
        }
        if meta.file_type().is_symlink() {
            if !trusted_owner(meta.uid()) {
                return Some(format!("the symbolic link `{}` is owned by uid {}", next.display(), meta.uid()));
            }
            links += 1;
            if links > MAX_LINKS {
                return Some(format!("`{}` goes through too many symbolic links", path.display()));
            }
            let target = std::fs::read_link(&next).ok()?;
            if target.is_absolute() {
                at = PathBuf::from("/");
            }
            // A magic link of /proc that names no path (`pipe:[123]`): root's own fd, nothing
            // on the filesystem to tamper with.
            if !target.is_absolute() && target.as_os_str().as_bytes().contains(&b':') && next.starts_with("/proc") {
                return None;
            }
            push_components(&mut pending, &target);
            any_owner = true;
            continue;
        }
        if pending.is_empty() {
            return None;
        }
        if !meta.is_dir() {
            return Some(format!("`{}` is not a directory", next.display()));
        }
        let mode = meta.permissions().mode();
        let shared = mode & 0o022 != 0;
        if !trusted_owner(meta.uid()) || (shared && mode & 0o1000 == 0) {
            return Some(format!("the directory `{}` is writable by users other than root", next.display()));
        }
        any_owner = !shared;
        at = next;
    }
    None
}

/// Pushes the components of `path` onto `stack` so that the first component is popped first.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    let mut parts: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_os_string()),
            Component::ParentDir => parts.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    stack.extend(parts.into_iter().rev());
}
