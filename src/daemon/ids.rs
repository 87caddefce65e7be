//! Users and groups: resolved before the fork, dropped in the child.
//!
//! Name lookups go through NSS (`getpwnam`, `getgrouplist`), which allocates and may take locks,
//! so they happen in the launcher; the child only calls `setgroups`, `setgid`, `setuid` with the
//! numbers resolved here.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User, geteuid, getgrouplist};

use crate::error::DaemonizeError;
use crate::sys::{self, Failure, Ids, Stage};

/// A user and group resolved to numbers, with what the daemon's environment should say.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub ids: Ids,
    /// The user's name and home directory, when `-u` named a user with a passwd entry.
    pub name: Option<String>,
    pub home: Option<PathBuf>,
}

/// Resolves `-u` / `-g` (names or numeric ids). `Ok(None)` when neither is given.
pub(crate) fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, DaemonizeError> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let lookup_err = |what: &str, e: nix::Error| DaemonizeError::SystemError {
        call: if what == "user" { "getpwnam" } else { "getgrnam" },
        source: e.into(),
    };
    let entry = match user {
        None => None,
        Some(u) => {
            let by_name = User::from_name(u).map_err(|e| lookup_err("user", e))?;
            match (by_name, u.parse::<u32>()) {
                (Some(entry), _) => Some(Ok(entry)),
                (None, Ok(uid)) => match User::from_uid(Uid::from_raw(uid)).map_err(|e| lookup_err("user", e))? {
                    Some(entry) => Some(Ok(entry)),
                    None => Some(Err(uid)),
                },
                (None, Err(_)) => return Err(DaemonizeError::UserNotFound(u.to_string())),
            }
        }
    };
    let gid = match group {
        Some(g) => match Group::from_name(g).map_err(|e| lookup_err("group", e))? {
            Some(grp) => Some(grp.gid),
            None => match g.parse::<u32>() {
                Ok(n) => Some(Gid::from_raw(n)),
                Err(_) => return Err(DaemonizeError::GroupNotFound(g.to_string())),
            },
        },
        None => None,
    };
    let identity = match entry {
        Some(Ok(pw)) => {
            let gid = gid.unwrap_or(pw.gid);
            let cname = CString::new(pw.name.as_bytes()).map_err(|_| DaemonizeError::UserNotFound(pw.name.clone()))?;
            // As initgroups(3) with the user's own primary group, like blivet and su: with -g,
            // that group is the process's group and the user's primary group stays among the
            // supplementary ones.
            let groups = getgrouplist(&cname, pw.gid).map_err(|e| DaemonizeError::sys("getgrouplist", e))?;
            Identity {
                ids: Ids::new(pw.uid.as_raw(), gid.as_raw(), groups.into_iter().map(Gid::as_raw).collect()),
                name: Some(pw.name),
                home: Some(pw.dir),
            }
        }
        Some(Err(uid)) => {
            // A numeric uid without a passwd entry: allowed, but its group must be named.
            let Some(gid) = gid else {
                return Err(DaemonizeError::UserNotFound(format!("{uid}` (no passwd entry; name a group with `-g")));
            };
            Identity { ids: Ids::new(uid, gid.as_raw(), vec![gid.as_raw()]), name: None, home: None }
        }
        None => {
            // Only a group: keep the current user, switch the group.
            let gid = gid.expect("a group was given, since user is None and not both are None");
            let uid = geteuid().as_raw();
            Identity { ids: Ids::new(uid, gid.as_raw(), vec![gid.as_raw()]), name: None, home: None }
        }
    };
    if !geteuid().is_root() {
        return Err(DaemonizeError::PermissionDenied(format!(
            "cannot switch to uid {} gid {}: running as uid {}, and only root can change identity",
            identity.ids.uid,
            identity.ids.gid,
            geteuid()
        )));
    }
    Ok(Some(identity))
}

/// Drops to `ids` in the calling process (library daemons, after their privileged setup), as
/// the child does before its exec: [`sys::drop_identity`].
pub(crate) fn drop_to(ids: &Ids) -> Result<(), DaemonizeError> {
    sys::drop_identity(ids).map_err(|failure| drop_failed(failure, ids.uid, ids.gid))
}

/// The error of a privilege drop to `uid` and `gid` that failed at `failure`'s stage (or did
/// not stick).
pub(crate) fn drop_failed(failure: Failure, uid: u32, gid: u32) -> DaemonizeError {
    let why = crate::error::why(&std::io::Error::from_raw_os_error(failure.errno));
    DaemonizeError::PermissionDenied(match failure.stage {
        Stage::Setgroups => format!("setgroups failed: {why}"),
        Stage::Setgid => format!("setgid({gid}) failed: {why}"),
        Stage::Setuid => format!("setuid({uid}) failed: {why}"),
        Stage::RegainedRoot => format!("privilege drop to uid {uid} did not stick: setuid(0) succeeded afterwards"),
        _ => format!(
            "privilege drop to uid {uid} gid {gid} did not stick: the user, group or supplementary groups differ afterwards"
        ),
    })
}
