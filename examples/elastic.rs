//! Elastic data-parallel training: a rank dies, the job shrinks, a replacement joins, the job
//! grows back to full size, and the final weights are those of a run without failure.
//!
//! ```sh
//! cargo run --release --example elastic            # 4 ranks; rank 2 dies at step 20
//! ```
//!
//! The driver (this program without `ELASTIC_ROLE`) serves the rendezvous store, starts 4 worker
//! processes (this program again) and plays the cluster manager:
//!
//! 1. The workers train a linear model by data-parallel SGD: at step `s` the global batch is
//!    [`BATCH`] samples; the live ranks split it (sample `i` goes to rank `i mod live`), each sums
//!    its samples' gradients, one all-reduce (sum) adds them up, and every rank divides by
//!    [`BATCH`]. The update is the full batch's gradient whatever the number of live ranks, so
//!    the weights follow single-process training (to rounding: the summation order changes).
//! 2. Worker 2 SIGKILLs itself at step [`KILL_AT`]. The survivors' all-reduce fails naming it;
//!    they `shrink` to 3 ranks and redo that step. Rank 0 of the shrunk communicator makes a
//!    join id (`grow_id`) and prints `JOIN <id> <rank> <size>`.
//! 3. The driver starts a replacement with that id. Once it runs, the driver tells rank 0 (a line
//!    on its stdin); at the next step rank 0 raises a flag carried in the step's all-reduce, so
//!    every survivor calls `grow` at the same step, while the replacement joins with the id.
//!    Meanwhile the survivors train on at 3 ranks, until step [`GROW_BY`], where rank 0 waits
//!    for the replacement (a cluster manager would bound how long).
//!    Rank 0 then broadcasts the step number and the weights, and all 4 train on.
//! 4. At the end rank 0 prints the weights; the driver compares them with training in one
//!    process and prints the time from the replacement's start to its first collective.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use oxccl::{Communicator, Config, ReduceOp, UniqueId};

/// Model size.
pub(crate) const DIM: usize = 16;
/// Samples per step (divisible by 1..=4 ranks; any split works).
pub(crate) const BATCH: usize = 48;
/// Training steps.
pub(crate) const STEPS: usize = 60;
/// The step at which worker 2 dies.
pub(crate) const KILL_AT: usize = 20;
/// Rank 0 waits for the replacement, if it has not come yet, from this step on.
pub(crate) const GROW_BY: usize = KILL_AT + 10;
/// Learning rate.
pub(crate) const LR: f64 = 0.05;
/// Ranks at full size.
pub(crate) const RANKS: usize = 4;

const ROLE: &str = "ELASTIC_ROLE";
const JOIN: &str = "ELASTIC_JOIN";

/// SplitMix64 in [-1, 1): deterministic data from (step, sample, feature).
fn data(step: usize, i: usize, j: usize) -> f64 {
    let mut z = ((step * 1_000_003 + i) * 131 + j) as u64;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn teacher(j: usize) -> f64 {
    (j as f64 * 0.37).sin()
}

/// The sum over this rank's samples of the squared-error gradient at step `step`, with `live`
/// ranks splitting the batch; `DIM` entries.
fn grad_sum(w: &[f64], step: usize, rank: usize, live: usize) -> Vec<f64> {
    let mut g = vec![0.0; DIM];
    for i in (rank..BATCH).step_by(live) {
        let x: Vec<f64> = (0..DIM).map(|j| data(step, i, j)).collect();
        let y: f64 = (0..DIM).map(|j| x[j] * teacher(j)).sum();
        let err: f64 = x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() - y;
        for j in 0..DIM {
            g[j] += err * x[j];
        }
    }
    g
}

/// Single-process training: the reference.
pub(crate) fn reference() -> Vec<f64> {
    let mut w = vec![0.0; DIM];
    for s in 0..STEPS {
        let g = grad_sum(&w, s, 0, 1);
        for j in 0..DIM {
            w[j] -= LR * g[j] / BATCH as f64;
        }
    }
    w
}

/// A worker: trains from `step` with `comm`, shrinking and growing as described above. Rank 0
/// prints `FINAL <weights>` at the end.
fn train(
    mut comm: Communicator,
    mut step: usize,
    mut w: Vec<f64>,
    grow_now: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut killer = std::env::var(ROLE).is_ok_and(|r| r == "worker") && comm.rank() == 2;
    while step < STEPS {
        if killer && step == KILL_AT {
            // SAFETY: raise has no preconditions; this process dies here, as a crash would.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        let pending = JOIN_ID.lock().unwrap().is_some();
        if pending && step >= GROW_BY {
            // Train on at reduced size for a while, but no longer: wait for the replacement.
            let t = Instant::now();
            while !grow_now.load(Ordering::SeqCst) {
                if t.elapsed() > Duration::from_secs(60) {
                    return Err("no replacement within 60 s".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let mut buf = grad_sum(&w, step, comm.rank(), comm.size());
        // The last element: rank 0's "a replacement is ready: grow after this step".
        let flag = comm.rank() == 0 && grow_now.load(Ordering::SeqCst);
        buf.push(if flag { 1.0 } else { 0.0 });
        match comm.all_reduce(&mut buf, ReduceOp::Sum) {
            Ok(()) => {
                for j in 0..DIM {
                    w[j] -= LR * buf[j] / BATCH as f64;
                }
                step += 1;
                if buf[DIM] > 0.0 {
                    grow_now.store(false, Ordering::SeqCst);
                    let id = std::mem::take(&mut *JOIN_ID.lock().unwrap());
                    comm = comm
                        .grow(RANKS, id.as_ref(), Config::default())
                        .map_err(|e| format!("grow: {e}"))?;
                    (step, w) = share_state(&comm, step, &w)?;
                    println!(
                        "GROWN rank {} of {} at step {step}",
                        comm.rank(),
                        comm.size()
                    );
                }
            }
            Err(e) => {
                println!("FAILED at step {step}: {e}");
                comm = comm.shrink().map_err(|e| format!("shrink: {e}"))?;
                killer = false;
                println!(
                    "SHRUNK rank {} of {} at step {step}",
                    comm.rank(),
                    comm.size()
                );
                if comm.rank() == 0 {
                    let id = comm.grow_id().map_err(|e| format!("grow_id: {e}"))?;
                    println!("JOIN {id} {} {RANKS}", comm.size());
                    *JOIN_ID.lock().unwrap() = Some(id);
                }
            }
        }
    }
    if comm.rank() == 0 {
        let text: Vec<String> = w.iter().map(|x| format!("{x:e}")).collect();
        println!("FINAL {}", text.join(" "));
    }
    Ok(())
}

/// Rank 0's join id, kept for its `grow` call.
static JOIN_ID: std::sync::Mutex<Option<UniqueId>> = std::sync::Mutex::new(None);

/// Rank 0's step and weights, broadcast to everyone (the replacement starts from them).
fn share_state(comm: &Communicator, step: usize, w: &[f64]) -> Result<(usize, Vec<f64>), String> {
    let mut state = vec![step as f64];
    state.extend_from_slice(w);
    comm.broadcast(&mut state, 0)
        .map_err(|e| format!("state broadcast: {e}"))?;
    Ok((state[0] as usize, state[1..].to_vec()))
}

/// A worker process (`ELASTIC_ROLE` set): from the launcher's environment, or joining with
/// `ELASTIC_JOIN="<id> <rank> <size>"`.
pub(crate) fn worker() -> Result<(), String> {
    let grow_now = Arc::new(AtomicBool::new(false));
    {
        // The driver says "READY" on stdin when a replacement runs.
        let g = grow_now.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) if l.trim() == "READY" => g.store(true, Ordering::SeqCst),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
    }
    if let Ok(join) = std::env::var(JOIN) {
        let v: Vec<&str> = join.split_whitespace().collect();
        let [id, rank, size] = v[..] else {
            return Err(format!("{JOIN}={join}: want \"<id> <rank> <size>\""));
        };
        let id: UniqueId = id.parse().map_err(|e| format!("join id: {e}"))?;
        let (rank, size): (usize, usize) = (
            rank.parse().map_err(|_| "bad rank")?,
            size.parse().map_err(|_| "bad size")?,
        );
        println!("STARTED");
        let comm = Communicator::join(rank, size, &id, Config::default())
            .map_err(|e| format!("join: {e}"))?;
        let (step, w) = share_state(&comm, 0, &[0.0; DIM])?;
        println!("JOINED rank {rank} of {size} at step {step}");
        return train(comm, step, w, grow_now);
    }
    let comm = Communicator::from_env().map_err(|e| format!("init: {e}"))?;
    train(comm, 0, vec![0.0; DIM], grow_now)
}

/// What the driver measured.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Rank 0's final weights.
    pub weights: Vec<f64>,
    /// From starting the replacement to its first collective (the state broadcast).
    pub replacement_to_first_collective: Duration,
    /// Largest difference from single-process training.
    pub max_diff: f64,
}

/// The driver: starts the workers with `worker_cmd` (a command that runs [`worker`] with
/// `ELASTIC_ROLE` set), plays the cluster manager and checks the result.
pub(crate) fn drive(worker_cmd: &dyn Fn() -> Command) -> Result<Outcome, String> {
    let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    let listener = id.take_listener().ok_or("no store listener")?;
    let _store = oxccl::internals::bootstrap::StoreServer::start(listener, id.secret)
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut kids: Vec<Child> = Vec::new();
    let start =
        |env: Vec<(&str, String)>, who: usize, kids: &mut Vec<Child>| -> Result<(), String> {
            let mut cmd = worker_cmd();
            cmd.env(ROLE, "worker")
                .envs(env)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = cmd.spawn().map_err(|e| format!("spawn a worker: {e}"))?;
            let out = child.stdout.take().ok_or("no stdout")?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send((who, line));
                }
            });
            kids.push(child);
            Ok(())
        };
    let secret = oxccl::internals::bootstrap::secret_hex(&id.secret);
    for r in 0..RANKS {
        start(
            vec![
                ("OXCCL_RANK", r.to_string()),
                ("OXCCL_WORLD_SIZE", RANKS.to_string()),
                ("OXCCL_ROOT", id.addr.to_string()),
                ("OXCCL_SECRET", secret.clone()),
                ("OXCCL_ROOT_EXTERNAL", "1".into()),
            ],
            r,
            &mut kids,
        )?;
    }
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut replacement_started = None;
        let mut first = None;
        let mut rank0 = 0; // which child is rank 0 now (it stays child 0: the lowest survivor)
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (who, line) = rx
                .recv_timeout(left)
                .map_err(|_| "the workers made no progress for 120 s".to_string())?;
            println!("[worker {who}] {line}");
            if let Some(rest) = line.strip_prefix("JOIN ") {
                rank0 = who;
                replacement_started = Some(Instant::now());
                start(vec![(JOIN, rest.to_string())], kids.len(), &mut kids)?;
            } else if line == "STARTED" {
                // The replacement runs: tell rank 0 to grow at the next step.
                let stdin = kids[rank0].stdin.as_mut().ok_or("no stdin")?;
                writeln!(stdin, "READY").map_err(|e| format!("tell rank 0: {e}"))?;
            } else if line.starts_with("JOINED") {
                first = replacement_started.map(|t| t.elapsed());
            } else if let Some(rest) = line.strip_prefix("FINAL ") {
                let weights: Vec<f64> = rest
                    .split_whitespace()
                    .map(|x| x.parse().map_err(|_| format!("bad weight {x}")))
                    .collect::<Result<_, String>>()?;
                let want = reference();
                let max_diff = weights
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                return Ok(Outcome {
                    weights,
                    replacement_to_first_collective: first.ok_or("no replacement joined")?,
                    max_diff,
                });
            }
        }
    })();
    // Every worker but the killed one exits by itself after FINAL; reap them all, with a bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in &mut kids {
        drop(k.stdin.take());
        loop {
            match k.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() < deadline && result.is_ok() => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = k.kill();
                    let _ = k.wait();
                    break;
                }
            }
        }
    }
    result
}

#[allow(dead_code)]
fn main() {
    if std::env::var(ROLE).is_ok() {
        if let Err(e) = worker() {
            eprintln!("worker: {e}");
            std::process::exit(1);
        }
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    match drive(&|| Command::new(&exe)) {
        Ok(o) => {
            println!(
                "the {} final weights differ from single-process training by at most {:.1e}; \
                 replacement start to its first collective: {:?}",
                o.weights.len(),
                o.max_diff,
                o.replacement_to_first_collective
            );
            if o.max_diff > 1e-9 {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("elastic: {e}");
            std::process::exit(1);
        }
    }
}
