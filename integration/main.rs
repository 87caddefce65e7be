//! Black-box tests of the real `conjure` binary.

mod systemd;
