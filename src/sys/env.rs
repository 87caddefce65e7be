//! The program's environment, passed without copying the launcher's.
//!
//! A program inherits conjure's environment but for a few variables that conjure sets (`-E`,
//! `USER`/`LOGNAME`/`HOME` under `-u`, `NOTIFY_SOCKET`) or rewrites (`LISTEN_PID`). Copying the
//! whole environment into owned strings and back into C strings for that costs an allocation or
//! three per variable, at every launch (a tenth of the launcher's instructions before the fork,
//! under musl's allocator). Instead the envp array points at the process's own `environ`
//! strings, skipping the variables conjure replaces, and only the few entries conjure adds are
//! owned here.
//!
//! # Who may change the environment meanwhile
//!
//! The pointers are read from `environ` when [`Envp::inherit`] runs and used by `execve`, in the
//! child or in place, later. They stay valid as long as nothing changes the environment in
//! between: `setenv` may free a string it had allocated (musl does) or move the array (glibc
//! does). The command changes nothing. A library caller's other threads must not call
//! `std::env::set_var`, `remove_var` (or C's `setenv`, `putenv`, `unsetenv`) while a
//! [`Launcher`](crate::Launcher) runs: `set_var`'s own contract already forbids it while any
//! thread reads the environment other than through `std::env`, which `execve` and every C
//! library call that reads a variable do. The launcher's documentation says so.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::c_char;

// SAFETY: the C library defines `environ` with exactly this type (POSIX, environ(7)); it is
// only read, never written, here.
unsafe extern "C" {
    /// The process's environment (environ(7)): a NULL-terminated array of `KEY=VALUE` strings.
    static environ: *const *const c_char;
}

/// Room for a pid in decimal, and its NUL.
const PID_ROOM: usize = 12;

/// A NULL-terminated envp array: the inherited entries by pointer, conjure's own entries owned.
#[derive(Debug)]
pub(crate) struct Envp {
    /// Entries conjure adds, each `KEY=VALUE` and a NUL, on the heap (their addresses do not
    /// move when this struct does).
    own: Vec<Box<[u8]>>,
    /// Indexes into `own` of the entries whose value is the exec'd process's own pid, and the
    /// offset where its digits go (written by the child).
    pid_slots: Vec<(usize, usize)>,
    /// The array `execve` takes: inherited pointers, then `own`'s, then NULL.
    ptrs: Vec<*const c_char>,
}

impl Envp {
    /// The launcher's environment without the variables named in `drop` (and without those
    /// that `add` sets), then `add` (`KEY=VALUE` byte strings without NUL), then one variable per
    /// name of `pid_vars`, whose value the child fills with its pid ([`Envp::fill_pid`]).
    ///
    /// See the module documentation for who may change the environment while the result lives.
    pub(crate) fn inherit(drop: &[&[u8]], add: Vec<Vec<u8>>, pid_vars: &[&str]) -> Envp {
        let mut own: Vec<Box<[u8]>> = Vec::with_capacity(add.len() + pid_vars.len());
        let mut pid_slots = Vec::with_capacity(pid_vars.len());
        for mut entry in add {
            entry.push(0);
            own.push(entry.into_boxed_slice());
        }
        for var in pid_vars {
            let mut entry = Vec::with_capacity(var.len() + 1 + PID_ROOM);
            entry.extend_from_slice(var.as_bytes());
            entry.push(b'=');
            pid_slots.push((own.len(), entry.len()));
            entry.resize(entry.len() + PID_ROOM, 0);
            own.push(entry.into_boxed_slice());
        }
        // A variable set here replaces every inherited one of that name. Only the names are
        // compared, byte by byte from the start of each entry: an entry's value is never read
        // (100 KB of environment cost nothing more than its pointers).
        let mut names: Vec<&[u8]> = drop.to_vec();
        names.extend(own.iter().map(|e| e.split(|b| *b == b'=').next().unwrap_or(&[])));
        let inherited = inherited_entries();
        let mut ptrs = Vec::with_capacity(inherited.len() + own.len() + 1);
        for &entry in inherited {
            // SAFETY: every element before the NULL is a NUL-terminated string (environ(7)),
            // valid while nothing changes the environment (module documentation).
            if !names.iter().any(|name| unsafe { names_variable(entry, name) }) {
                ptrs.push(entry);
            }
        }
        ptrs.extend(own.iter().map(|e| e.as_ptr().cast::<c_char>()));
        ptrs.push(std::ptr::null());
        Envp { own, pid_slots, ptrs }
    }

    /// Writes `digits` (a pid in decimal, at most 11 bytes) and a NUL into every pid slot.
    /// Async-signal-safe: no allocation, no indexing that can fail. Runs in the child, on its
    /// own copy of the plan.
    pub(super) fn fill_pid(&mut self, digits: &[u8]) {
        for &(index, offset) in &self.pid_slots {
            if let Some(slot) = self.own.get_mut(index).and_then(|e| e.get_mut(offset..offset + digits.len() + 1))
                && let Some((nul, head)) = slot.split_last_mut()
            {
                head.copy_from_slice(digits);
                *nul = 0;
            }
        }
    }

    /// The NULL-terminated array for `execve`.
    pub(super) fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

/// Whether the `KEY=VALUE` string at `entry` is the variable `name` (its bytes, then `=`).
/// Reads at most `name.len() + 1` bytes, and none past the string's NUL.
///
/// # Safety
///
/// `entry` must point to a NUL-terminated string.
unsafe fn names_variable(entry: *const c_char, name: &[u8]) -> bool {
    // A name with a NUL names no variable (and would let the loop below read past the string).
    if name.contains(&0) {
        return false;
    }
    for (i, &want) in name.iter().chain(b"=").enumerate() {
        // SAFETY: the bytes before `i` matched `name`, which holds no NUL, so the string goes on
        // at least to `i` (its NUL, at the latest, is there).
        let got = unsafe { *entry.add(i) } as u8;
        if got != want {
            return false;
        }
    }
    true
}

/// The entries of `environ`, up to its NULL, as a slice of pointers.
fn inherited_entries() -> &'static [*const c_char] {
    // SAFETY: environ is set up by the C runtime before main and is either NULL (after
    // clearenv) or a NULL-terminated array of pointers; it is read here, while nothing changes
    // the environment (module documentation), and the slice ends before the NULL.
    unsafe {
        let base = environ;
        if base.is_null() {
            return &[];
        }
        let mut n = 0;
        while !(*base.add(n)).is_null() {
            n += 1;
        }
        std::slice::from_raw_parts(base, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(envp: &Envp) -> Vec<String> {
        envp.ptrs
            .iter()
            .take_while(|p| !p.is_null())
            // SAFETY: test only; the pointers are NUL-terminated strings that live as long as envp.
            .map(|p| unsafe { std::ffi::CStr::from_ptr(*p) }.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn inherits_drops_replaces_and_adds() {
        let envp =
            Envp::inherit(&[b"PATH"], vec![b"HOME=/nowhere".to_vec(), b"CONJURE_ENV_TEST=1".to_vec()], &["LISTEN_PID"]);
        let got = entries(&envp);
        assert!(!got.iter().any(|e| e.starts_with("PATH=")), "{got:?}");
        assert_eq!(got.iter().filter(|e| e.starts_with("HOME=")).collect::<Vec<_>>(), ["HOME=/nowhere"]);
        assert!(got.contains(&"CONJURE_ENV_TEST=1".to_string()));
        let inherited = std::env::vars_os().filter(|(k, _)| k != "PATH" && k != "HOME").count();
        assert_eq!(got.len(), inherited + 3, "{got:?}");
        assert_eq!(envp.ptrs.last(), Some(&std::ptr::null()));
    }

    #[test]
    fn pid_slots_take_the_digits() {
        let mut envp = Envp::inherit(&[], Vec::new(), &["LISTEN_PID"]);
        envp.fill_pid(b"4194304");
        assert_eq!(entries(&envp).last().map(String::as_str), Some("LISTEN_PID=4194304"));
        envp.fill_pid(b"12");
        assert_eq!(entries(&envp).last().map(String::as_str), Some("LISTEN_PID=12"));
    }
}
