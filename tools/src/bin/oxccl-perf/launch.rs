//! `-N K`: serve the rendezvous store here, run K ranks as child processes of this binary, and
//! wait for them under a watchdog. A rank that fails or dies takes the others down with it
//! (SIGKILL), every child is reaped, and the exit status names the rank that failed.

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use oxccl::internals::bootstrap::{StoreServer, secret_hex};

use crate::args::{Bind, Options, unrunnable};

/// Exit status a rank uses when it ran to the end but some element was wrong.
pub(crate) const EXIT_WRONG: i32 = 2;

/// Set in each child's environment to the launcher's pid: the child exits when it is orphaned.
pub(crate) const PARENT_VAR: &str = "OXCCL_PERF_PARENT";

/// In a child of `-N`: a thread that ends this process as soon as the launcher that started it
/// is gone (killed, say, before it could kill its ranks), so no rank outlives its launcher.
pub(crate) fn watch_parent() {
    let Some(want) = std::env::var(PARENT_VAR)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            loop {
                let now = std::os::unix::process::parent_id();
                if now != want {
                    eprintln!("oxccl-perf: the launcher (pid {want}) is gone; rank exiting");
                    std::process::exit(1);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    if let Err(e) = spawned {
        eprintln!("oxccl-perf: cannot watch the launcher: {e}");
    }
}

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
pub(crate) fn default_watchdog(o: &Options, nranks: usize) -> Duration {
    let calls = 2.0 * (o.iters + o.warmup + 1) as f64;
    let passes = (o.ops_for().len() * o.roots_for(nranks).len()) as f64;
    let mut secs: f64 = 60.0;
    for &d in &o.dtypes {
        for (bytes, _) in o.rows_of(nranks, d) {
            secs += passes * (10.0 + calls * bytes as f64 * nranks as f64 / 1e8);
        }
    }
    Duration::from_secs_f64(secs.min(7.0 * 24.0 * 3600.0))
}

/// How long the other ranks may take to exit on their own once one has failed.
const FAILURE_GRACE: Duration = Duration::from_secs(1);

/// A rank that ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    /// The wait-loop pass that saw it end (earlier is closer to the cause).
    pass: usize,
    /// Killed by a signal (rather than exiting with an error after, say, losing a peer).
    signaled: bool,
    rank: usize,
    what: String,
}

/// Names the likely cause first: the earliest seen, and within one pass a rank killed by a
/// signal before ranks that exited with an error (typically because they lost that peer).
fn failure_summary(mut failures: Vec<Failure>) -> Option<String> {
    failures.sort_by_key(|f| (f.pass, !f.signaled, f.rank));
    let (first, rest) = failures.split_first()?;
    let mut s = format!("rank {} {}", first.rank, first.what);
    if !rest.is_empty() {
        let others: Vec<String> = rest
            .iter()
            .map(|f| format!("rank {} {}", f.rank, f.what))
            .collect();
        s.push_str(&format!(" (then {})", others.join(", ")));
    }
    Some(s)
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
pub(crate) fn run_local(o: &Options, k: usize) -> i32 {
    match launch(o, k) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("oxccl-perf: {msg}");
            1
        }
    }
}

/// The CPU each of `k` ranks is bound to under `bind` (empty: none is): with k ranks on n CPUs,
/// rank r on the (r·n/k)-th.
fn placement(bind: Bind, k: usize) -> Vec<usize> {
    let cpus = match oxccl::internals::sys::allowed_cpus() {
        Ok(c) if !c.is_empty() => c,
        _ => return Vec::new(),
    };
    match bind {
        Bind::None => Vec::new(),
        Bind::Auto if k <= cpus.len() => Vec::new(),
        // In blocks: consecutive ranks share a CPU (a ring's neighbours half the time), which
        // measured as fast as leaving large messages to the scheduler, where round-robin
        // (rank i on CPU i mod #CPUs) took 1.5 times as long from 128 KiB up, 4 ranks on 2.
        Bind::Auto | Bind::Core => (0..k).map(|r| cpus[r * cpus.len() / k]).collect(),
    }
}

fn launch(o: &Options, k: usize) -> Result<i32, String> {
    if let Some(why) = unrunnable(o, k) {
        return Err(why);
    }
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind the store: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("store address: {e}"))?;
    let mut secret = [0u8; 16];
    oxccl::internals::sys::random_bytes(&mut secret)
        .map_err(|e| format!("no random secret: {e}"))?;
    let store =
        StoreServer::start(listener, secret).map_err(|e| format!("cannot start the store: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let watchdog = o.watchdog.unwrap_or_else(|| default_watchdog(o, k));
    let deadline = (!watchdog.is_zero()).then(|| Instant::now() + watchdog);

    let cpus = placement(o.bind, k);
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
            .env(PARENT_VAR, std::process::id().to_string())
            .stdin(Stdio::null());
        for v in FOREIGN_LAUNCHER_VARS {
            cmd.env_remove(v);
        }
        match cmd.spawn() {
            Ok(c) => {
                if let Some(cpu) = cpus.get(rank) {
                    // Set right after the start: the rank's own threads start later and
                    // inherit it.
                    if let Err(e) = oxccl::internals::sys::bind_to_cpu(c.id() as i32, *cpu) {
                        eprintln!("oxccl-perf: could not bind rank {rank} to CPU {cpu}: {e}");
                    }
                }
                children.push((rank, c));
                done.push(false);
            }
            Err(e) => {
                kill_all(&mut children, &mut done);
                return Err(format!("cannot start rank {rank}: {e}"));
            }
        }
    }

    // Wait for all. A rank that fails (an error exit or a signal) brings the others down, after
    // a short grace in which they may report their side of it; ranks that found wrong elements
    // (EXIT_WRONG) ran to the end, so the others are let finish.
    let mut failures: Vec<Failure> = Vec::new();
    let mut give_up: Option<Instant> = None;
    let mut watchdog_fired = false;
    let mut wrong = false;
    let mut sleep = Duration::from_millis(1);
    let mut pass = 0;
    while done.iter().any(|d| !d) {
        pass += 1;
        let mut progressed = false;
        for (i, (rank, c)) in children.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            let (rank, failure) = match c.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) if status.code() == Some(EXIT_WRONG) => {
                    wrong = true;
                    (*rank, None)
                }
                Ok(Some(status)) if status.success() => (*rank, None),
                Ok(Some(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    (*rank, Some((status.signal().is_some(), describe(status))))
                }
                Err(e) => (
                    *rank,
                    Some((false, format!("could not be waited for: {e}"))),
                ),
            };
            done[i] = true;
            progressed = true;
            if let Some((signaled, what)) = failure {
                failures.push(Failure {
                    pass,
                    signaled,
                    rank,
                    what,
                });
            }
        }
        let now = Instant::now();
        if !failures.is_empty() && give_up.is_none() {
            give_up = Some(now + FAILURE_GRACE);
        }
        if give_up.is_some_and(|g| now >= g) {
            break;
        }
        if deadline.is_some_and(|d| now >= d) {
            watchdog_fired = true;
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
    let tail = if killed > 0 {
        format!("; killed the other {killed} rank(s)")
    } else {
        String::new()
    };
    if watchdog_fired {
        return Err(format!(
            "watchdog: the run took longer than {:.0} s (raise it with --watchdog SECONDS){tail}",
            watchdog.as_secs_f64()
        ));
    }
    match failure_summary(failures) {
        Some(why) => Err(format!("{why}{tail}")),
        None if wrong => Ok(EXIT_WRONG),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pass: usize, signaled: bool, rank: usize, what: &str) -> Failure {
        Failure {
            pass,
            signaled,
            rank,
            what: what.into(),
        }
    }

    #[test]
    fn the_cause_is_named_first() {
        assert_eq!(failure_summary(vec![]), None);
        let s = failure_summary(vec![
            f(3, false, 0, "exited with status 1"),
            f(3, true, 1, "was killed by signal 9"),
            f(4, false, 2, "exited with status 1"),
        ])
        .unwrap();
        assert_eq!(
            s,
            "rank 1 was killed by signal 9 (then rank 0 exited with status 1, rank 2 exited with status 1)"
        );
        let s = failure_summary(vec![
            f(2, false, 2, "exited with status 1"),
            f(5, true, 0, "x"),
        ])
        .unwrap();
        assert!(s.starts_with("rank 2 exited with status 1"));
    }

    #[test]
    fn ranks_are_bound_in_blocks_when_they_outnumber_the_cpus() {
        let cpus = oxccl::internals::sys::allowed_cpus().unwrap();
        let n = cpus.len();
        assert!(n >= 1 && cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
        assert!(placement(Bind::Auto, n).is_empty());
        assert!(placement(Bind::None, n + 3).is_empty());
        // 2n ranks: two consecutive ranks per CPU, in order.
        let want: Vec<usize> = (0..2 * n).map(|r| cpus[r / 2]).collect();
        assert_eq!(placement(Bind::Auto, 2 * n), want);
        assert_eq!(placement(Bind::Core, 2 * n), want);
        // Every CPU used, each by a block of consecutive ranks.
        let p = placement(Bind::Auto, n + 3);
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{p:?}");
        assert!(cpus.iter().all(|c| p.contains(c)), "{p:?}");
        assert_eq!(placement(Bind::Core, 1), vec![cpus[0]]);
    }

    #[test]
    fn watchdog_grows_with_the_sweep() {
        let parse = |s: &str| match crate::args::parse_args(
            &s.split_whitespace().map(String::from).collect::<Vec<_>>(),
        ) {
            Ok(oxccl_tools::Flags::Given(o)) => *o,
            _ => unreachable!(),
        };
        let small = default_watchdog(&parse("-b 8 -e 1K"), 2);
        let big = default_watchdog(&parse("-b 8 -e 1G"), 2);
        assert!(small >= Duration::from_secs(60) && small < Duration::from_secs(200));
        assert!(big > small * 2);
        assert!(default_watchdog(&parse("-b 8 -e 1G"), 8) > big);
    }
}
