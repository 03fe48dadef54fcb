//! Communicator management: split into sub-communicators, and abort (which must never hang).

mod common;
use common::*;
use oxccl::{Config, ErrorKind, NO_COLOR, ReduceOp};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

#[test]
fn split_by_color_orders_by_key_and_works() {
    let res = run_ranks(6, test_cfg(20_000), Duration::from_secs(60), |comm| {
        let r = comm.rank();
        // Rank 5 opts out; the others split into evens and odds, ordered by descending rank.
        let color = if r == 5 {
            NO_COLOR
        } else {
            Some((r % 2) as u32)
        };
        let sub = comm
            .split(color, (10 - r) as u32, Config::default())
            .unwrap();
        let out = sub.as_ref().map(|c| {
            let mut v = vec![r as i64; 3];
            c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
            let mut who = vec![0i64; c.size()];
            c.all_gather(&[r as i64], &mut who).unwrap();
            (c.rank(), c.size(), v[0], who)
        });
        // The parent still works after the split.
        let mut x = [1u32];
        comm.all_reduce(&mut x, ReduceOp::Sum).unwrap();
        assert_eq!(x[0], 6);
        out
    });
    assert!(res[5].is_none());
    for (r, out) in res.iter().enumerate().take(5) {
        let (new_rank, size, sum, who) = out.clone().unwrap();
        let group: Vec<i64> = if r % 2 == 0 {
            vec![4, 2, 0]
        } else {
            vec![3, 1]
        };
        assert_eq!(size, group.len(), "rank {r}");
        assert_eq!(sum, group.iter().sum::<i64>(), "rank {r}");
        assert_eq!(who, group, "rank {r}: members ordered by key");
        assert_eq!(group[new_rank], r as i64);
    }
}

#[test]
fn abort_interrupts_a_call_in_flight_and_peers_learn_it() {
    // Rank 0 starts an all-reduce that rank 1 never joins, then aborts it from the same thread
    // that holds the scope; rank 1 joins afterwards and must get an error, not a hang.
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let start = Arc::new(Barrier::new(2));
    let res = run_ranks(2, test_cfg(30_000), Duration::from_secs(60), move |comm| {
        // One call together first, so the link exists (a peer that never connected learns of
        // an abort only through its timeout).
        let mut warm = [1u8; 4];
        comm.all_reduce(&mut warm, ReduceOp::Sum).unwrap();
        start.wait();
        if comm.rank() == 0 {
            let mut v = vec![1.0f32; 1 << 16];
            let t0 = Instant::now();
            let r = comm.scope(|s| {
                let req = s.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                assert!(req.test().is_none(), "cannot finish without rank 1");
                comm.abort();
                req.wait()
            });
            let took = t0.elapsed();
            tx.send(()).unwrap();
            // Later calls fail at once.
            let again = comm.barrier();
            (r, took, again)
        } else {
            rx.lock().unwrap().recv().unwrap();
            let t0 = Instant::now();
            let mut v = vec![1.0f32; 1 << 16];
            let r = comm.all_reduce(&mut v, ReduceOp::Sum);
            (r, t0.elapsed(), Ok(()))
        }
    });
    let (r0, took0, again) = &res[0];
    assert!(
        r0.as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::InvalidUsage && e.message().contains("abort")),
        "{r0:?}"
    );
    assert!(*took0 < Duration::from_secs(5), "abort took {took0:?}");
    assert!(again.is_err());
    let (r1, took1, _) = &res[1];
    assert!(
        r1.as_ref()
            .is_err_and(|e| e.kind() == oxccl::ErrorKind::PeerLost && e.peer() == Some(0)),
        "rank 1 must learn of rank 0's abort as a remote failure: {r1:?}"
    );
    assert!(
        *took1 < Duration::from_secs(10),
        "rank 1 took {took1:?}: {r1:?}"
    );
}
