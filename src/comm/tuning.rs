//! The communicator's cost model: the tuner's defaults, or (`OXCCL_TUNE=1`) the links and the
//! reduction measured at init. The model (`crate::tune`) is pure; the measuring, which needs the
//! communicator's links, is here.

use std::time::Instant;

use super::Communicator;
use crate::error::Result;
use crate::tune::{self, Model};

impl Communicator {
    /// Measures this communicator's links and this host's reduction: every rank must call it,
    /// together, as a collective.
    ///
    /// Rank 0 and rank 1 ping-pong 8-byte messages (half the round trip is α plus the
    /// per-message overhead on both sides) and 1 MiB messages (β from the rest of the round
    /// trip); rank 0 times a 4 MiB f32 sum (γ) and broadcasts its three numbers so that every
    /// rank gets the same model (`tune::measured`). A few milliseconds.
    pub fn measure_model(&self) -> Result<Model> {
        let (rank, n) = (self.rank(), self.size());
        let mut vals = [0f64; 3];
        if rank == 0 {
            vals[2] = tune::time_reduce();
        }
        if n > 1 && rank < 2 {
            let peer = 1 - rank;
            let small = [0u8; 8];
            let mut small_in = [0u8; 8];
            let big = vec![0u8; 1 << 20];
            let mut big_in = vec![0u8; 1 << 20];
            let ping = |out: &[u8], inp: &mut [u8], reps: usize| -> Result<f64> {
                let mut best = f64::INFINITY;
                for _ in 0..reps {
                    let t = Instant::now();
                    if rank == 0 {
                        self.send(out, peer, 0)?;
                        self.recv(inp, peer, 0)?;
                    } else {
                        self.recv(inp, peer, 0)?;
                        self.send(out, peer, 0)?;
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                Ok(best / 2.0)
            };
            ping(&small, &mut small_in, 3)?;
            let alpha = ping(&small, &mut small_in, 20)?;
            let one_way = ping(&big, &mut big_in, 4)?;
            vals[0] = alpha;
            vals[1] = ((one_way - alpha) / big.len() as f64).max(1e-12);
        }
        self.broadcast(&mut vals, 0)?;
        Ok(tune::measured(vals[0], vals[1], vals[2], n))
    }

    /// The cost model this communicator's calls are chosen with.
    pub(super) fn model(&self) -> Model {
        self.model.get().copied().unwrap_or_default()
    }

    /// What init runs last, on every rank, once its links are up: with `OXCCL_TUNE=1`,
    /// [`Communicator::measure_model`], kept as this communicator's model; otherwise nothing.
    /// Every rank keeps the same numbers (rank 0's), before any call of its own can consult them.
    pub(super) fn tune_at_init(&self) -> Result<()> {
        if std::env::var("OXCCL_TUNE").is_ok_and(|v| v.trim() == "1") {
            let t = Instant::now();
            let m = self.measure_model()?;
            crate::info!(
                Some(self.rank()),
                "OXCCL_TUNE: alpha {:.2} us, 1/beta {:.2} GB/s, 1/gamma {:.2} GB/s ({:.1} ms)",
                m.shm.alpha * 1e6,
                1e-9 / m.shm.beta,
                1e-9 / m.shm.gamma,
                t.elapsed().as_secs_f64() * 1e3
            );
            let _ = self.model.set(m);
        }
        Ok(())
    }
}
