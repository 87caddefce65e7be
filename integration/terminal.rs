//! conjure on a terminal: an interactive shell on a real pseudo-terminal runs it as a job.
//!
//! The shell is `bash -i` with the pty as its controlling terminal, so job control is real:
//! the terminal sends Ctrl-C and Ctrl-Z to its foreground process group, and `fg` hands the
//! terminal back. What the tests type goes through the pty master; what they check is what a
//! user would see (the shell's "Stopped", the prompt) and `/proc` (who owns the terminal).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crate::support::*;

const PROMPT: &str = "PROMPT> ";

/// An interactive bash on a fresh pty, in the scratch directory.
struct Shell {
    master: File,
    shell: Child,
    /// Everything the terminal showed, from where the last `expect` stopped.
    seen: String,
}

impl Shell {
    fn start(s: &Scratch) -> Shell {
        let (master, slave) = pty_pair();
        let shell = Command::new("setsid")
            .args(["--ctty", "bash", "--norc", "--noprofile", "-i"])
            .current_dir(s.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PS1", PROMPT)
            .env("TERM", "dumb")
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("bash on a pty");
        let mut sh = Shell { master, shell, seen: String::new() };
        sh.expect(PROMPT);
        sh
    }

    /// Types `text` on the terminal.
    fn send(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("write to the pty");
    }

    /// Reads the terminal until `needle` shows up (deadline: [`PATIENCE`]); consumes up to it.
    fn expect(&mut self, needle: &str) {
        let end = Instant::now() + PATIENCE;
        loop {
            if let Some(i) = self.seen.find(needle) {
                self.seen.drain(..i + needle.len());
                return;
            }
            assert!(Instant::now() < end, "the terminal never showed {needle:?}; it showed:\n{}", self.seen);
            let mut fds = [nix::poll::PollFd::new(self.master.as_fd(), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16));
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.master.read(&mut buf) {
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

/// The process whose command line mentions `path`, once there is one and it owns the terminal
/// (its process group is the terminal's foreground group) and sleeps (waits for input).
fn reading_with_the_terminal(path: &Path) -> i32 {
    let needle = path.to_string_lossy().into_owned();
    wait_until(PATIENCE, "the program to own the terminal and wait for input", || {
        all_pids().into_iter().find(|p| {
            let named = Proc(*p).cmdline().iter().any(|a| a.contains(&needle));
            let st = Proc(*p).stat();
            named
                && !Proc(*p).cmdline().iter().any(|a| a.ends_with("conjure"))
                && st.is_some_and(|st| st.tpgid == st.pgid && st.state == 'S')
        })
    })
}

fn conjure_line(flags: &str, program: &str) -> String {
    format!("{} -f --supervise {flags} -- {program}\n", conjure_bin().display())
}

#[test]
fn with_signal_group_the_program_can_set_and_read_the_terminal() {
    let s = Scratch::new();
    let out = s.join("out");
    let mut sh = Shell::start(&s);
    let program = format!("sh -c 'stty sane </dev/tty && read x </dev/tty && echo \"got $x\" > {}'", out.display());
    sh.send(&conjure_line("--signal-group", &program));
    reading_with_the_terminal(&out);
    sh.send("hello\n");
    wait_for_content(&out, "got hello\n");
    sh.expect(PROMPT);
}

#[test]
fn one_ctrl_c_reaches_the_program_once() {
    let s = Scratch::new();
    let file = s.join("signals");
    let mut sh = Shell::start(&s);
    sh.send(&conjure_line("", &format!("{} record-signals {}", testprog().display(), file.display())));
    wait_until(PATIENCE, "the program to record signals", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.starts_with("ready")).then_some(())
    });
    let program = reading_with_the_terminal(&file);
    let conjure = Proc(program).stat().expect("the program runs").ppid;
    sh.send("\x03");
    wait_until(PATIENCE, "SIGINT to reach the program", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.lines().any(|l| l == "2")).then_some(())
    });
    // TERM, forwarded by conjure, comes after anything conjure may have forwarded before.
    send_signal(conjure, libc::SIGTERM);
    sh.expect(PROMPT);
    let lines: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines, ["ready", "2", "15"], "the program saw these signals");
}

#[test]
fn ctrl_z_then_fg_finish_the_job() {
    let s = Scratch::new();
    let out = s.join("out");
    let mut sh = Shell::start(&s);
    sh.send(&conjure_line("", &format!("sh -c 'read x; echo \"got $x\" > {}'", out.display())));
    let program = reading_with_the_terminal(&out);
    let conjure = Proc(program).stat().expect("the program runs").ppid;
    sh.send("\x1a");
    sh.expect("Stopped");
    sh.expect(PROMPT);
    wait_until(PATIENCE, "conjure and the program to be stopped", || {
        let stopped = |p: i32| Proc(p).stat().is_some_and(|st| st.state == 'T');
        (stopped(conjure) && stopped(program)).then_some(())
    });
    sh.send("fg\n");
    reading_with_the_terminal(&out);
    sh.send("hello\n");
    wait_for_content(&out, "got hello\n");
    sh.expect(PROMPT);
    wait_dead(conjure);
}

#[test]
fn a_long_wait_shows_one_updating_line_on_a_terminal_and_erases_it() {
    let s = Scratch::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let (mut master, slave) = pty_pair();
    let mut c = TestCommand::conjure(argv![
        "-p",
        s.join("d.pid"),
        "--ready-on",
        format!("tcp:127.0.0.1:{port}"),
        "--ready-timeout",
        "30s",
        "--",
        example_bin("readyprog"),
        "--delay",
        "2300",
        "listen-tcp",
        &port
    ]);
    c.command().stderr(slave);
    let mut child = c.command().spawn().expect("spawn conjure");
    let status = wait_until(PATIENCE, "conjure to report ready", || child.try_wait().expect("try_wait"));
    assert_eq!(status.code(), Some(0));
    let _daemon = Daemon::from_pidfile(&s.join("d.pid"));
    let mut seen = Vec::new();
    let _ = master.read_to_end(&mut seen);
    let seen = String::from_utf8_lossy(&seen);
    let line = format!("\r\x1b[Kconjure: waiting for tcp:127.0.0.1:{port}: ");
    assert!(seen.contains(&format!("{line}1s (timeout 30s)")), "no status line on the terminal: {seen:?}");
    assert!(seen.contains(&format!("{line}2s (timeout 30s)")), "the line was not updated: {seen:?}");
    assert!(seen.ends_with("\r\x1b[K"), "the line was not erased at the end: {seen:?}");
    assert!(!seen.contains('\n'), "more than one line: {seen:?}");
}

#[test]
fn a_long_wait_is_silent_when_stderr_is_not_a_terminal() {
    let s = Scratch::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let out = TestCommand::conjure(argv![
        "-p",
        s.join("d.pid"),
        "--ready-on",
        format!("tcp:127.0.0.1:{port}"),
        "--",
        example_bin("readyprog"),
        "--delay",
        "1300",
        "listen-tcp",
        &port
    ])
    .run();
    out.assert_code(0);
    let _daemon = Daemon::from_pidfile(&s.join("d.pid"));
    assert_eq!(out.stderr, "", "the launcher wrote to a stderr that is no terminal");
}
