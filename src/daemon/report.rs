//! The report pipe: how a daemon tells the process that launched it what became of it.
//!
//! The launcher keeps the read end; the daemon the write end (close-on-exec). Records are
//! small and binary, so that the child between fork and exec can send its own with a single
//! raw `write` of a stack buffer (see `sys/child.rs`): its pid, then the stage that failed and
//! the errno, or a last record just before `execve`. A library daemon, which runs ordinary
//! code, may also send "ready", an error with its exit code and message, or a status line.
//! End of file without "ready" means the daemon is gone or dropped its context; after the exec
//! record it means the exec happened (without it, the child died before its exec).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::{EXEC_TAG, FAILURE_TAG, Failure, PID_TAG, Stage, failure_record, pid_record};

const READY_TAG: u8 = b'R';
const ERROR_TAG: u8 = b'E';
const STATUS_TAG: u8 = b'S';

/// One record on the report pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// The daemon's pid, sent first.
    Pid(i32),
    /// A step between fork and exec failed.
    Failed(Failure),
    /// The child is about to exec (sent by the child itself, just before `execve`).
    Exec,
    /// The daemon is ready.
    Ready,
    /// The daemon failed and asks the launcher to exit with `code`, printing `message`.
    Error { code: u8, message: String },
    /// A status line for the supervisor.
    Status(String),
}

/// Encodes a record. The child's own (pid, failure, exec) are laid out by `sys/child.rs`, which
/// sends them from between fork and exec; the library daemon's are laid out here.
pub(crate) fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    let text = |out: &mut Vec<u8>, s: &str| {
        let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    match record {
        Record::Pid(pid) => out.extend_from_slice(&pid_record(*pid)),
        Record::Failed(f) => out.extend_from_slice(&failure_record(*f)),
        Record::Ready => out.push(READY_TAG),
        Record::Exec => out.push(EXEC_TAG),
        Record::Error { code, message } => {
            out.push(ERROR_TAG);
            out.extend_from_slice(&u32::from(*code).to_le_bytes());
            text(&mut out, message);
        }
        Record::Status(s) => {
            out.push(STATUS_TAG);
            text(&mut out, s);
        }
    }
    out
}

/// Sends one record; a daemon whose launcher is gone gets EPIPE, which callers may ignore.
pub(crate) fn send(fd: &OwnedFd, record: &Record) -> io::Result<()> {
    crate::sys::write_all_raw(fd.as_raw_fd(), &encode(record))
}

/// Reassembles records from the bytes read so far.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds bytes read from the pipe.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete record, if any. Garbage ends decoding with an error.
    pub(crate) fn next(&mut self) -> io::Result<Option<Record>> {
        let Some(&tag) = self.buf.first() else { return Ok(None) };
        let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        let (record, used) = match tag {
            PID_TAG => match u32_at(&self.buf, 1) {
                Some(p) => (Record::Pid(p as i32), 5),
                None => return Ok(None),
            },
            FAILURE_TAG => match (self.buf.get(1), u32_at(&self.buf, 2)) {
                (Some(&stage), Some(errno)) => {
                    let stage = Stage::from_u8(stage).ok_or_else(|| bad("unknown stage"))?;
                    (Record::Failed(Failure { stage, errno: errno as i32 }), 6)
                }
                _ => return Ok(None),
            },
            READY_TAG => (Record::Ready, 1),
            EXEC_TAG => (Record::Exec, 1),
            ERROR_TAG | STATUS_TAG => {
                let head = if tag == ERROR_TAG { 5 } else { 1 };
                let Some(len) = u32_at(&self.buf, head) else { return Ok(None) };
                // The encoder caps texts at 64 KiB; a longer one is garbage, not a reason to
                // buffer gigabytes.
                if len > u16::MAX as u32 {
                    return Err(bad("record too long"));
                }
                let start = head + 4;
                let Some(text) = self.buf.get(start..start + len as usize) else { return Ok(None) };
                let text = String::from_utf8_lossy(text).into_owned();
                let record = if tag == ERROR_TAG {
                    let code = u8::try_from(u32_at(&self.buf, 1).unwrap_or(1)).unwrap_or(u8::MAX);
                    Record::Error { code, message: text }
                } else {
                    Record::Status(text)
                };
                (record, start + len as usize)
            }
            _ => return Err(bad("unknown record")),
        };
        self.buf.drain(..used);
        Ok(Some(record))
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("report pipe: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_byte_at_a_time() {
        let records = vec![
            Record::Pid(4242),
            Record::Status("warming up".into()),
            Record::Failed(Failure { stage: Stage::Exec, errno: 2 }),
            Record::Error { code: 73, message: "cannot write `x`".into() },
            Record::Exec,
            Record::Ready,
        ];
        let bytes: Vec<u8> = records.iter().flat_map(encode).collect();
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in bytes {
            d.feed(&[b]);
            while let Some(r) = d.next().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, records);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = Decoder::default();
        d.feed(b"Zjunk");
        assert!(d.next().is_err());
        let mut d = Decoder::default();
        d.feed(&[ERROR_TAG, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next().is_err(), "a 4 GiB record must not be waited for");
    }
}
