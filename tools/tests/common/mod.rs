//! Shared helpers for the tools' end-to-end tests: run a binary with a deadline. A child that
//! outlives its deadline is killed and reaped, and the test fails with what it printed so far,
//! instead of hanging.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A finished child's status and its whole stdout and stderr (lossy UTF-8).
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Reads `r` to its end on a thread (a full pipe must not stall the child); the text comes back
/// over a channel, so that a grandchild holding the pipe open cannot hang the test either.
pub(crate) fn drain(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = r.read_to_end(&mut b);
        let _ = tx.send(String::from_utf8_lossy(&b).into_owned());
    });
    rx
}

/// Waits for `child` until `deadline`, polling `try_wait` (every 20 ms: an exit is noticed at
/// most that late). `None` if it was still running then; it has been killed and reaped.
pub(crate) fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) and returns its output; if it
/// has not exited after `timeout`, kills and reaps it and fails the test with what it printed.
/// `what` names it in that message.
pub(crate) fn run(mut cmd: Command, what: &str, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out_rx = drain(child.stdout.take().expect("piped stdout"));
    let err_rx = drain(child.stderr.take().expect("piped stderr"));
    let Some(status) = wait_until(&mut child, Instant::now() + timeout) else {
        let out = out_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        let err = err_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        panic!("{what} still running after {timeout:?}; killed.\nstdout:\n{out}\nstderr:\n{err}");
    };
    let stdout = out_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_default();
    let stderr = err_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_default();
    Output {
        status,
        stdout,
        stderr,
    }
}
