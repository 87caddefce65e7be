//! conjure: start a program as a correct Unix daemon (work in progress).
#![deny(unsafe_code)]
