//! The tools under a reader that goes away (`oxccl-sim ... | head -1`): Rust ignores SIGPIPE, so
//! a write to the closed pipe fails with BrokenPipe; the tools must then stop quietly with status
//! 0, not panic ("failed printing to stdout"). Every wait has a deadline: a child still running
//! then is killed and reaped, and the test fails instead of hanging.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SIM: &str = env!("CARGO_BIN_EXE_oxccl-sim");
const PERF: &str = env!("CARGO_BIN_EXE_oxccl-perf");
const LIMIT: Duration = Duration::from_secs(120);

/// Starts `exe args` with stdout the write end of a fresh pipe (of `pipe_size` bytes, if given)
/// and stderr captured; returns the child and the pipe's read end.
fn spawn_into_pipe(exe: &str, args: &[&str], pipe_size: Option<i32>) -> (Child, File) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, an array of two c_ints that outlives the
    // call. (std::io::pipe would do, but is newer than this crate's MSRV.)
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created by pipe2 and nothing else owns them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if let Some(size) = pipe_size {
        // SAFETY: fcntl(F_SETPIPE_SZ) on a pipe descriptor this function owns (`w`, open until
        // it moves into the Command below); it takes an integer argument, no pointers.
        let got = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        assert!(
            got >= size,
            "F_SETPIPE_SZ {size}: {got} ({})",
            std::io::Error::last_os_error()
        );
    }
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(w)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {exe}: {e}"));
    // The Command (and with it this process's copy of the write end) is gone here: the child
    // holds the only one.
    (child, File::from(r))
}

/// Waits for `child` until `deadline` and checks that it stopped quietly: status 0 and nothing
/// on stderr about a panic or the broken pipe.
fn assert_quiet_exit(mut child: Child, deadline: Instant, what: &str) {
    let err_rx = common::drain(child.stderr.take().expect("piped stderr"));
    let status = common::wait_until(&mut child, deadline);
    let err = err_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_default();
    let Some(status) = status else {
        panic!("{what} still running after its deadline; killed.\nstderr:\n{err}");
    };
    assert!(
        !err.contains("panicked") && !err.to_lowercase().contains("broken pipe"),
        "{what} complained about its closed stdout:\n{err}"
    );
    assert!(status.success(), "{what}: {status}\nstderr:\n{err}");
}

#[test]
fn sim_stops_quietly_when_stdout_closes_after_the_first_line() {
    // About 34 KB of table into a 4 KiB pipe, of which only the first line is read: the child
    // cannot finish without writing into the pipe after its read end has been closed.
    let args = ["-N", "2", "--algo", "all", "-b", "8", "-e", "1G", "-f", "2"];
    let (mut child, mut r) = spawn_into_pipe(SIM, &args, Some(4096));
    let deadline = Instant::now() + LIMIT;
    // The first line, a byte at a time (nothing past it is taken out of the pipe); then the
    // thread ends and drops `r`, closing the read end.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut b = [0u8];
        while let Ok(1) = r.read(&mut b) {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
    });
    let first = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("oxccl-sim {args:?} printed no first line within {LIMIT:?}; killed");
        }
    };
    assert!(
        first.starts_with("# oxccl-sim: all_reduce, 2 ranks"),
        "{first:?}"
    );
    assert_quiet_exit(child, deadline, "oxccl-sim");
}

#[test]
fn help_into_a_closed_pipe_is_quiet() {
    for exe in [SIM, PERF] {
        let (child, r) = spawn_into_pipe(exe, &["--help"], None);
        // Closed before the child writes anything (it may not even have started): every write
        // of the help text fails.
        drop(r);
        assert_quiet_exit(child, Instant::now() + LIMIT, exe);
    }
}
