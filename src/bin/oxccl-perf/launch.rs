//! `-N K`: serve the rendezvous store here, run K ranks as child processes of this binary, and
//! wait for them under a watchdog. A rank that fails or dies takes the others down with it
//! (SIGKILL), every child is reaped, and the exit status names the rank that failed.

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use oxccl::bootstrap::{StoreServer, secret_hex};

use crate::args::{Options, rows_for, size_sweep};

/// Exit status a rank uses when it ran to the end but some element was wrong.
pub const EXIT_WRONG: i32 = 2;

/// Launcher variables of other launchers, removed from the children's environment so that they
/// find only the `OXCCL_*` ones set here.
const FOREIGN_LAUNCHER_VARS: &[&str] = &[
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "PMI_RANK",
    "PMI_SIZE",
];

/// A generous deadline for a whole run: a minute to start, ten seconds a row, plus the bytes
/// moved at a pessimistic 100 MB/s per rank (ranks may share a core).
pub fn default_watchdog(o: &Options, nranks: usize) -> Duration {
    let sizes = size_sweep(o.minbytes, o.maxbytes, o.step);
    let calls = 2.0 * (o.iters + o.warmup + 1) as f64;
    let mut secs: f64 = 60.0;
    for d in &o.dtypes {
        for (bytes, _) in rows_for(&sizes, d.size()) {
            secs += o.ops.len() as f64 * (10.0 + calls * bytes as f64 * nranks as f64 / 1e8);
        }
    }
    Duration::from_secs_f64(secs.min(7.0 * 24.0 * 3600.0))
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended ({status})"),
    }
}

/// Kills (SIGKILL) and reaps every child still running.
fn kill_all(children: &mut [(usize, Child)], done: &mut [bool]) {
    for (i, (_, c)) in children.iter_mut().enumerate() {
        if !done[i] {
            let _ = c.kill();
        }
    }
    for (i, (_, c)) in children.iter_mut().enumerate() {
        if !done[i] {
            let _ = c.wait();
            done[i] = true;
        }
    }
}

/// Runs `k` local ranks; returns the process exit status for this (parent) process.
pub fn run_local(o: &Options, k: usize) -> i32 {
    match launch(o, k) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("oxccl-perf: {msg}");
            1
        }
    }
}

fn launch(o: &Options, k: usize) -> Result<i32, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind the store: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("store address: {e}"))?;
    let mut secret = [0u8; 16];
    oxccl::sys::random_bytes(&mut secret).map_err(|e| format!("no random secret: {e}"))?;
    let store =
        StoreServer::start(listener, secret).map_err(|e| format!("cannot start the store: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let watchdog = o.watchdog.unwrap_or_else(|| default_watchdog(o, k));
    let deadline = (!watchdog.is_zero()).then(|| Instant::now() + watchdog);

    let mut children: Vec<(usize, Child)> = Vec::with_capacity(k);
    let mut done: Vec<bool> = Vec::with_capacity(k);
    for rank in 0..k {
        let mut cmd = Command::new(&exe);
        cmd.args(&o.child_args)
            .env("OXCCL_RANK", rank.to_string())
            .env("OXCCL_WORLD_SIZE", k.to_string())
            .env("OXCCL_ROOT", addr.to_string())
            .env("OXCCL_SECRET", secret_hex(&secret))
            .env("OXCCL_ROOT_EXTERNAL", "1")
            .stdin(Stdio::null());
        for v in FOREIGN_LAUNCHER_VARS {
            cmd.env_remove(v);
        }
        match cmd.spawn() {
            Ok(c) => {
                children.push((rank, c));
                done.push(false);
            }
            Err(e) => {
                kill_all(&mut children, &mut done);
                return Err(format!("cannot start rank {rank}: {e}"));
            }
        }
    }

    // Wait for all. The first rank to fail with an error (or a signal) brings the others down;
    // ranks that found wrong elements (EXIT_WRONG) ran to the end, so the others are let finish.
    let mut first_failure: Option<String> = None;
    let mut wrong = false;
    let mut sleep = Duration::from_millis(1);
    while done.iter().any(|d| !d) {
        let mut progressed = false;
        for (i, (rank, c)) in children.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            match c.try_wait() {
                Ok(Some(status)) => {
                    done[i] = true;
                    progressed = true;
                    if status.code() == Some(EXIT_WRONG) {
                        wrong = true;
                    } else if !status.success() && first_failure.is_none() {
                        first_failure = Some(format!("rank {rank} {}", describe(status)));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    done[i] = true;
                    first_failure.get_or_insert(format!("cannot wait for rank {rank}: {e}"));
                }
            }
        }
        if first_failure.is_some() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            first_failure = Some(format!(
                "watchdog: the run took longer than {:.0} s (raise it with --watchdog SECONDS)",
                watchdog.as_secs_f64()
            ));
            break;
        }
        sleep = if progressed {
            Duration::from_millis(1)
        } else {
            (sleep * 2).min(Duration::from_millis(50))
        };
        std::thread::sleep(sleep);
    }
    let killed = done.iter().filter(|d| !**d).count();
    kill_all(&mut children, &mut done);
    drop(store);
    match first_failure {
        Some(why) => {
            let tail = if killed > 0 {
                format!("; killed the other {killed} rank(s)")
            } else {
                String::new()
            };
            Err(format!("{why}{tail}"))
        }
        None if wrong => Ok(EXIT_WRONG),
        None => Ok(0),
    }
}
