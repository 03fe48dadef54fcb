//! Smoke test: all-reduce end to end over threads-as-ranks.
mod common;
use common::*;
use oxccl::ReduceOp;
use std::time::Duration;

#[test]
fn two_ranks_sum_f32() {
    for (n, count) in [(1, 5), (2, 10), (3, 100_000), (4, 7)] {
        let res = run_ranks(n, test_cfg(20_000), Duration::from_secs(60), move |comm| {
            let r = comm.rank() as f32;
            let mut v: Vec<f32> = (0..count).map(|i| r + i as f32).collect();
            comm.all_reduce(&mut v, ReduceOp::Sum).unwrap();
            comm.barrier().unwrap();
            v
        });
        let ranks_sum: f32 = (0..n).map(|r| r as f32).sum();
        for v in res {
            for (i, x) in v.iter().enumerate() {
                assert_eq!(*x, ranks_sum + (n * i) as f32, "n={n} i={i}");
            }
        }
    }
}
