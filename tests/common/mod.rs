//! Shared helpers for integration tests: run closures as ranks on threads, with a deadline.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

use oxccl::{Communicator, Config, UniqueId};

/// Runs `f(comm)` on `n` threads-as-ranks over a fresh loopback UniqueId and returns each rank's
/// result in rank order. Panics (failing the test) if the ranks do not all finish within `limit`.
pub fn run_ranks<T: Send + 'static>(
    n: usize,
    cfg: Config,
    limit: Duration,
    f: impl Fn(Communicator) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).expect("unique id");
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for rank in 0..n {
        let (id, cfg, f, tx) = (id.clone(), cfg.clone(), f.clone(), tx.clone());
        handles.push(std::thread::spawn(move || {
            let comm = Communicator::init(rank, n, &id, cfg)
                .unwrap_or_else(|e| panic!("rank {rank} init: {e}"));
            let out = f(comm);
            let _ = tx.send((rank, out));
        }));
    }
    drop(tx);
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let deadline = std::time::Instant::now() + limit;
    for _ in 0..n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((r, v)) => out[r] = Some(v),
            Err(_) => {
                // A rank panicked (its sender dropped) or the deadline passed.
                for (r, h) in handles.into_iter().enumerate() {
                    if h.is_finished() {
                        if let Err(p) = h.join() {
                            std::panic::resume_unwind(p);
                        }
                    } else {
                        eprintln!("rank {r} still running");
                    }
                }
                panic!("ranks did not finish within {limit:?}");
            }
        }
    }
    for h in handles {
        h.join().expect("rank thread");
    }
    out.into_iter()
        .map(|v| v.expect("every rank reported"))
        .collect()
}

/// A config with a short timeout for tests.
pub fn test_cfg(timeout_ms: u64) -> Config {
    Config {
        timeout: Some(Duration::from_millis(timeout_ms)),
        ..Config::default()
    }
}
