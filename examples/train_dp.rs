//! Data-parallel training of a small two-layer MLP on synthetic data, in pure Rust.
//!
//! Every rank holds the same model (rank 0's initial weights, broadcast), computes the gradient
//! of the mean squared error on its own shard of the data, and the ranks average their gradients
//! with one all-reduce (`ReduceOp::Avg`) per step, DDP-style. With equal shards the averaged
//! gradient is the full-batch gradient, so the loss curve equals single-process full-batch
//! training (`tests/train_dp.rs` checks it to 1e-5).
//!
//! ```sh
//! cargo run --release --example train_dp -- -n 4            # 4 ranks as threads
//! cargo run --release --example train_dp -- -n 4 --steps 200
//! OXCCL_RANK=.. OXCCL_WORLD_SIZE=.. OXCCL_ROOT=.. target/release/examples/train_dp   # as processes, under a launcher
//! ```

use std::time::Instant;

use oxccl::{Communicator, Config, ReduceOp, UniqueId};

#[path = "common/splitmix.rs"]
mod splitmix;
use splitmix::Rng;

/// Input features.
pub(crate) const D: usize = 8;
/// Hidden units.
pub(crate) const H: usize = 16;
/// Samples in the whole data set (divisible by 1..=6 and 8 ranks, so shards are equal).
pub(crate) const N: usize = 240;
/// Learning rate.
pub(crate) const LR: f64 = 0.1;

/// The whole synthetic data set: inputs (N x D, row-major) and targets from a fixed "teacher".
pub(crate) fn dataset() -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng(42);
    let x: Vec<f64> = (0..N * D).map(|_| rng.uniform()).collect();
    let teacher: Vec<f64> = (0..D).map(|_| rng.uniform()).collect();
    let y = (0..N)
        .map(|i| {
            let s: f64 = (0..D).map(|j| x[i * D + j] * teacher[j]).sum();
            s.sin() + 0.5 * x[i * D] * x[i * D + 1]
        })
        .collect();
    (x, y)
}

/// Model parameters, flat: W1 (H x D), b1 (H), w2 (H), b2 (1).
pub(crate) const P: usize = H * D + H + H + 1;

/// Initial parameters (small random weights; rank 0's are broadcast to the others).
pub(crate) fn init_params(seed: u64) -> Vec<f64> {
    let mut rng = Rng(seed);
    let mut p: Vec<f64> = (0..P).map(|_| 0.5 * rng.uniform()).collect();
    p[H * D..H * D + H].iter_mut().for_each(|b| *b = 0.0);
    p[P - 1] = 0.0;
    p
}

/// Mean squared error on `rows` of the data and its gradient: returns (loss, grad).
pub(crate) fn loss_and_grad(
    p: &[f64],
    x: &[f64],
    y: &[f64],
    rows: std::ops::Range<usize>,
) -> (f64, Vec<f64>) {
    let (w1, rest) = p.split_at(H * D);
    let (b1, rest) = rest.split_at(H);
    let (w2, b2) = rest.split_at(H);
    let m = rows.len() as f64;
    let mut g = vec![0.0; P];
    let mut loss = 0.0;
    let mut h = [0.0; H];
    for i in rows {
        let xi = &x[i * D..(i + 1) * D];
        for k in 0..H {
            let z: f64 = b1[k] + (0..D).map(|j| w1[k * D + j] * xi[j]).sum::<f64>();
            h[k] = z.tanh();
        }
        let out: f64 = b2[0] + (0..H).map(|k| w2[k] * h[k]).sum::<f64>();
        let err = out - y[i];
        loss += err * err / m;
        let dout = 2.0 * err / m;
        let (gw1, grest) = g.split_at_mut(H * D);
        let (gb1, grest) = grest.split_at_mut(H);
        let (gw2, gb2) = grest.split_at_mut(H);
        gb2[0] += dout;
        for k in 0..H {
            gw2[k] += dout * h[k];
            let dz = dout * w2[k] * (1.0 - h[k] * h[k]);
            gb1[k] += dz;
            for j in 0..D {
                gw1[k * D + j] += dz * xi[j];
            }
        }
    }
    (loss, g)
}

/// Trains for `steps` steps as rank `comm.rank()` of `comm.size()` (or alone with `None`) and
/// returns the loss curve: the full-data loss before each step, the same on every rank.
pub(crate) fn train(comm: Option<&Communicator>, steps: usize) -> oxccl::Result<Vec<f64>> {
    let (rank, n) = comm.map(|c| (c.rank(), c.size())).unwrap_or((0, 1));
    assert!(N % n == 0, "{N} samples do not split evenly over {n} ranks");
    let (x, y) = dataset();
    // Every rank starts from rank 0's weights (as DDP does at construction).
    let mut p = init_params(7 + rank as u64);
    if let Some(c) = comm {
        c.broadcast(&mut p, 0)?;
    }
    let shard = rank * (N / n)..(rank + 1) * (N / n);
    let mut curve = Vec::with_capacity(steps);
    // One buffer per step, as DDP's gradient bucket: the gradient, then the loss.
    let mut bucket = vec![0.0f64; P + 1];
    for _ in 0..steps {
        let (loss, g) = loss_and_grad(&p, &x, &y, shard.clone());
        bucket[..P].copy_from_slice(&g);
        bucket[P] = loss;
        if let Some(c) = comm {
            c.all_reduce(&mut bucket, ReduceOp::Avg)?;
        }
        curve.push(bucket[P]);
        for (w, gw) in p.iter_mut().zip(&bucket[..P]) {
            *w -= LR * gw;
        }
    }
    Ok(curve)
}

/// Runs `n` ranks as threads (over loopback, a fresh unique id) and returns every rank's curve.
pub(crate) fn train_threads(n: usize, steps: usize) -> oxccl::Result<Vec<Vec<f64>>> {
    let id = UniqueId::bind("127.0.0.1:0".parse().expect("addr"))?;
    let handles: Vec<_> = (0..n)
        .map(|r| {
            let id = id.clone();
            std::thread::spawn(move || {
                let comm = Communicator::init(r, n, &id, Config::default())?;
                train(Some(&comm), steps)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread panicked"))
        .collect()
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v}: not a number"))
        })
        .unwrap_or(default)
}

fn main() -> oxccl::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps = arg(&args, "--steps", 100);
    let t = Instant::now();
    let launched = ["OXCCL_RANK", "RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    let (curve, n) = if launched {
        let comm = Communicator::from_env()?;
        let c = train(Some(&comm), steps)?;
        if comm.rank() != 0 {
            return Ok(());
        }
        (c, comm.size())
    } else {
        let n = arg(&args, "-n", 4);
        let mut curves = train_threads(n, steps)?;
        (curves.swap_remove(0), n)
    };
    let single = train(None, steps)?;
    for (s, (l, r)) in curve.iter().zip(&single).enumerate() {
        if s % 10 == 0 || s + 1 == steps {
            println!("step {s:4}  loss {l:.6}  (single process {r:.6})");
        }
    }
    let diff = curve
        .iter()
        .zip(&single)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!(
        "{n} ranks, {steps} steps in {:.2?}: loss {:.6} -> {:.6}; largest difference from single-process training {diff:.2e}",
        t.elapsed(),
        curve[0],
        curve[steps - 1]
    );
    Ok(())
}
