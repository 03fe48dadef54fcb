//! Survive a dead rank: 4 process ranks loop mixed collectives; one of them (each position in
//! turn, rank 0 — the first store host — included) is SIGKILLed. The survivors must fail within
//! timeout + 1 s with an error naming it, shrink to a 3-rank communicator without it, and
//! complete 100 more all-reduces correctly.

mod common;
use common::*;
use oxccl::{Communicator, ReduceOp};
use std::time::{Duration, Instant};

const CHILD: &str = "shrink_child";
const TIMEOUT: Duration = Duration::from_millis(3000);

#[test]
fn shrink_child() {
    if !is_child(CHILD) {
        return;
    }
    child_main(|| {
        let comm = Communicator::from_env().map_err(|e| e.to_string())?;
        let (n, r) = (comm.size(), comm.rank());
        let mut iter = 0u64;
        let failed_at;
        let err = loop {
            let mut a = vec![(r + 1) as f32; 1 << 18];
            let res = comm
                .all_reduce(&mut a, ReduceOp::Sum)
                .and_then(|()| {
                    let mut b = vec![r as u32; 100];
                    comm.broadcast(&mut b, (iter as usize) % n)
                })
                .and_then(|()| {
                    let mut g = vec![0u64; n];
                    comm.all_gather(&[r as u64], &mut g)
                });
            if let Err(e) = res {
                failed_at = Instant::now();
                break e;
            }
            if a[0] != (n * (n + 1) / 2) as f32 {
                return Err(format!("iter {iter}: wrong sum {}", a[0]));
            }
            println!("ITER {iter}");
            iter += 1;
        };
        println!("ERROR peer={:?} {err}", err.peer());
        let sub = comm.shrink().map_err(|e| format!("shrink: {e}"))?;
        println!(
            "SHRUNK rank {} of {} after {:?}",
            sub.rank(),
            sub.size(),
            failed_at.elapsed()
        );
        if sub.size() != n - 1 {
            return Err(format!("shrunk to {} ranks, want {}", sub.size(), n - 1));
        }
        for i in 0..100 {
            let mut v = vec![(sub.rank() + i) as i64; 1000];
            sub.all_reduce(&mut v, ReduceOp::Sum)
                .map_err(|e| format!("after shrink, iter {i}: {e}"))?;
            let want: i64 = (0..sub.size()).map(|k| (k + i) as i64).sum();
            if v.iter().any(|&x| x != want) {
                return Err(format!("after shrink, iter {i}: got {} want {want}", v[0]));
            }
        }
        println!("DONE");
        Ok(())
    });
}

fn kill_and_shrink(transport: &str, victim: usize) {
    let n = 4;
    let ms = TIMEOUT.as_millis().to_string();
    let mut g = ProcGroup::spawn(
        CHILD,
        n,
        &[
            ("OXCCL_TIMEOUT_MS", &ms),
            ("OXCCL_TRANSPORT", transport),
            ("OXCCL_ALGO", ""),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut iters = vec![0usize; n];
    while iters.iter().any(|&i| i < 2) {
        let Some((rank, line)) = g.next_line(deadline) else {
            panic!("no progress within 60 s:\n{}", g.report());
        };
        if line.starts_with("ITER ") {
            iters[rank] += 1;
        }
    }
    g.kill(victim);
    let killed = Instant::now();
    // Time to detection: until each survivor prints its error.
    let mut detected: Vec<Option<Duration>> = vec![None; n];
    detected[victim] = Some(Duration::ZERO);
    while detected.iter().any(Option::is_none) {
        let Some((rank, line)) = g.next_line(killed + TIMEOUT + Duration::from_secs(1)) else {
            panic!(
                "not every survivor reported an error within timeout + 1 s: {detected:?}\n{}",
                g.report()
            );
        };
        if line.starts_with("ERROR") && detected[rank].is_none() {
            detected[rank] = Some(killed.elapsed());
        }
    }
    eprintln!("{transport}: rank {victim} killed; detection per rank {detected:?}");
    // The victim counts as failed, so wait for everyone without stopping at the first failure.
    g.wait(killed + TIMEOUT * 3 + Duration::from_secs(30), false);
    let report = g.report();
    for r in (0..n).filter(|&r| r != victim) {
        assert_eq!(
            g.status(r).and_then(|s| s.code()),
            Some(0),
            "rank {r}:\n{report}"
        );
        let out = g.output(r);
        let err = out
            .lines()
            .find(|l| l.starts_with("ERROR"))
            .unwrap_or_else(|| panic!("rank {r} saw no error:\n{report}"));
        assert!(
            err.contains(&format!("rank {victim}")),
            "rank {r}'s error does not name rank {victim}: {err}"
        );
        assert!(
            out.contains("DONE"),
            "rank {r} did not finish after shrinking:\n{report}"
        );
        let took = g.exited_at(r).unwrap() - killed;
        assert!(
            took < TIMEOUT * 3 + Duration::from_secs(20),
            "rank {r} took {took:?}"
        );
    }
}

#[test]
fn kill_each_rank_then_shrink_tcp() {
    for victim in 0..4 {
        kill_and_shrink("tcp", victim);
    }
}

#[test]
fn kill_each_rank_then_shrink_shm() {
    for victim in 0..4 {
        kill_and_shrink("shm", victim);
    }
}
