//! Spare cores for large reductions: a reduction of at least [`PAR_MIN`] bytes is split into
//! cache-line-aligned pieces run at once on a small thread pool (rayon), the calling thread
//! taking one piece itself.
//!
//! How many threads: `OXCCL_THREADS` when set (1 turns the pool off), else the CPUs this
//! process may use divided by the ranks on this host (as links learn it), at least 1: one rank
//! per host with 16 cores reduces with 16 threads, 8 ranks on 2 cores with 1.
//! [`set_threads`] overrides both (benchmarks, tests).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Smaller reductions are not split: a piece must outweigh waking a thread (a few µs).
pub const PAR_MIN: usize = 512 * 1024;

/// 0: decide from the environment and the host (see the module docs).
static FORCED: AtomicUsize = AtomicUsize::new(0);

/// Uses `n` threads (the caller included) for large reductions from now on; 0 goes back to the
/// default.
pub fn set_threads(n: usize) {
    FORCED.store(n, Ordering::Relaxed);
}

/// The number of threads a large reduction uses now.
pub fn threads() -> usize {
    let forced = FORCED.load(Ordering::Relaxed);
    if forced > 0 {
        return forced;
    }
    static ENV: OnceLock<Option<usize>> = OnceLock::new();
    let env = *ENV.get_or_init(|| {
        std::env::var("OXCCL_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n >= 1)
    });
    if let Some(n) = env {
        return n;
    }
    static CPUS: OnceLock<usize> = OnceLock::new();
    let cpus = *CPUS.get_or_init(|| crate::sys::allowed_cpus().map_or(1, |c| c.len().max(1)));
    let ranks = crate::sys::ranks_on_host().max(1);
    (cpus / ranks).max(1)
}

/// The pool for `n` threads (it has `n - 1`: the caller works too), made once per size.
fn pool(n: usize) -> Option<&'static rayon::ThreadPool> {
    static POOLS: Mutex<Vec<(usize, &'static rayon::ThreadPool)>> = Mutex::new(Vec::new());
    let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&(_, p)) = pools.iter().find(|(k, _)| *k == n) {
        return Some(p);
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(n - 1)
        .thread_name(|i| format!("oxccl-reduce-{i}"))
        .build()
        .ok()?;
    // One pool per thread count, kept for the process's life (a handful at most).
    let p: &'static rayon::ThreadPool = Box::leak(Box::new(p));
    pools.push((n, p));
    Some(p)
}

/// Runs `f` over matching pieces of `dst` and `srcs` (each as long as `dst`), split across the
/// pool when `dst` is large and more than one thread is allowed; else runs `f` once on the
/// whole. Pieces are multiples of 64 bytes (a multiple of every element size), so each starts
/// at the same alignment as the whole.
/// Small reductions (the latency path) cost one length check and a direct, inlinable call.
#[inline]
pub fn split<const K: usize, F>(dst: &mut [u8], srcs: [&[u8]; K], f: &F)
where
    F: Fn(&mut [u8], [&[u8]; K]) + Sync,
{
    if dst.len() < PAR_MIN {
        return f(dst, srcs);
    }
    let n = threads();
    let pool = if n > 1 { pool(n) } else { None };
    let Some(pool) = pool else {
        return f(dst, srcs);
    };
    let piece = dst.len().div_ceil(n).next_multiple_of(64);
    pool.in_place_scope(|s| {
        let mut rest = dst;
        let mut off = 0;
        let mut first = None;
        while !rest.is_empty() {
            let take = piece.min(rest.len());
            let (d, tail) = rest.split_at_mut(take);
            rest = tail;
            let src: [&[u8]; K] = srcs.map(|x| &x[off..off + take]);
            off += take;
            if first.is_none() {
                first = Some((d, src));
            } else {
                s.spawn(move |_| f(d, src));
            }
        }
        if let Some((d, src)) = first {
            f(d, src);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_everything_once() {
        let n = 3 * PAR_MIN + 100;
        let mut dst = vec![0u8; n];
        let a: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        for t in [1, 2, 3, 4] {
            set_threads(t);
            dst.fill(0);
            split(&mut dst, [&a], &|d, [s]| {
                for (x, y) in d.iter_mut().zip(s) {
                    *x = x.wrapping_add(*y).wrapping_add(1);
                }
            });
            assert!(
                dst.iter().zip(&a).all(|(x, y)| *x == y.wrapping_add(1)),
                "{t} threads"
            );
        }
        set_threads(0);
    }
}
