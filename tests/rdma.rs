//! The RDMA transport (cargo feature `rdma`), end to end over the emulated NIC: threads as
//! ranks, each holding the test's [`Fabric`] while it initialises its communicator, so the real
//! executor runs real collectives over RDMA links (`OXCCL_TRANSPORT=rdma` semantics: every peer).
//!
//! - collectives against references: all-reduce of many sizes (copy and zero-copy sends, one
//!   and many chunks), every all-reduce algorithm, and the other collectives;
//! - transport faults: lost packets (retransmitted, results exact); a rank whose NIC dies
//!   mid-collective (`Fabric::kill`: its thread and TCP connections stay up) is `PeerLost`
//!   naming it on every survivor, well within the timeout; a rank that drops its communicator;
//!   `abort()` and a mismatch propagate to every rank; a rank insisting on RDMA with a peer that
//!   does not offer it fails on both sides;
//!
//! The binary's behaviour without RDMA (fallback, one-line refusal) is tested with the tools:
//! tools/tests/rdma_cli.rs.
#![cfg(feature = "rdma")]

mod common;

use std::time::{Duration, Instant};

use common::{all_reduce_checked, check, expected, init_rank, input, run_threads};
use oxccl::internals::transport::rdma::emu::Fabric;
use oxccl::{Communicator, Config, Error, ErrorKind, ReduceOp, TransportKind, UniqueId};

/// A config forcing RDMA links, with a short timeout.
fn rdma_cfg(timeout_ms: u64) -> Config {
    Config {
        timeout: Some(Duration::from_millis(timeout_ms)),
        transport: Some(TransportKind::Rdma),
        ..Config::default()
    }
}

/// Runs `f(comm)` on `n` rank threads whose communicators use `fabric` for RDMA; `cfgs[r]` (or
/// the last one) is rank r's config. Returns each rank's result; panics if they do not all
/// finish within `limit`.
fn run_on<T: Send + 'static>(
    fabric: &Fabric,
    n: usize,
    cfgs: Vec<Config>,
    limit: Duration,
    f: impl Fn(Communicator) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    run_ranks_on(Some(fabric), n, cfgs, limit, f)
}

/// [`run_on`], or with `None` on this machine's real RDMA device (verbs).
fn run_ranks_on<T: Send + 'static>(
    fabric: Option<&Fabric>,
    n: usize,
    cfgs: Vec<Config>,
    limit: Duration,
    f: impl Fn(Communicator) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).expect("unique id");
    let fabric = fabric.cloned();
    run_threads(n, limit, move |rank| {
        let _g = fabric.as_ref().map(Fabric::enter);
        let cfg = cfgs[rank.min(cfgs.len() - 1)].clone();
        f(init_rank(rank, n, &id, cfg))
    })
}

fn all_ok(results: Vec<Result<(), String>>) {
    let bad: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Nothing is left on the fabric once every communicator is gone.
fn assert_clean(f: &Fabric) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while (f.queue_pairs(), f.registrations()) != (0, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        (f.queue_pairs(), f.registrations()),
        (0, 0),
        "leaked QPs / MRs"
    );
}

#[test]
fn all_reduce_of_many_sizes_matches_the_reference() {
    let fabric = Fabric::new();
    // Sizes: tiny (direct), one chunk, many 512 KiB chunks (zero-copy sends from the caller's
    // buffer), and an odd count; f32 and i64, in and out of place.
    const COUNTS: [usize; 5] = [1, 7, 3000, 100_003, 1_000_003];
    let n = 4;
    let r = run_on(
        &fabric,
        n,
        vec![rdma_cfg(30_000)],
        Duration::from_secs(180),
        move |c| {
            for (i, &count) in COUNTS.iter().enumerate() {
                for op in [ReduceOp::Sum, ReduceOp::Max] {
                    let salt = i as u64 * 10 + op as u64;
                    let want: Vec<f32> = expected(op, n, count, salt);
                    all_reduce_checked(&c, op, count, salt, i % 2 == 0, &want)?;
                    let want: Vec<i64> = expected(op, n, count, salt);
                    all_reduce_checked(&c, op, count, salt, i % 2 == 1, &want)?;
                }
            }
            Ok(())
        },
    );
    all_ok(r);
    assert_clean(&fabric);
}

#[test]
fn every_all_reduce_algorithm_over_small_chunks() {
    let fabric = Fabric::new();
    for algo in ["ring", "tree", "rhd", "direct", "ordered"] {
        for n in [3, 4] {
            let cfg = Config {
                algo: Some(format!("allreduce:{algo}")),
                // 16 KiB chunks: many copied messages per call, credits cycling.
                chunk_bytes: Some(16 << 10),
                ..rdma_cfg(30_000)
            };
            let r = run_on(&fabric, n, vec![cfg], Duration::from_secs(120), move |c| {
                for (k, count) in [5usize, 40_000].into_iter().enumerate() {
                    let want: Vec<f32> = expected(ReduceOp::Sum, n, count, k as u64);
                    all_reduce_checked(&c, ReduceOp::Sum, count, k as u64, k == 0, &want)
                        .map_err(|e| format!("{algo}: {e}"))?;
                }
                Ok(())
            });
            all_ok(r);
        }
    }
    assert_clean(&fabric);
}

#[test]
fn other_collectives_match_their_references() {
    let fabric = Fabric::new();
    let n = 3;
    let r = run_on(
        &fabric,
        n,
        vec![rdma_cfg(30_000)],
        Duration::from_secs(120),
        move |c| {
            let rank = c.rank();
            let count = 50_001;
            let e = |w: &str, x: oxccl::Result<()>| x.map_err(|e| format!("rank {rank} {w}: {e}"));
            let ins: Vec<Vec<f32>> = (0..n).map(|p| input(ReduceOp::Sum, p, count, 1)).collect();
            // Broadcast from rank 1.
            let mut b = if rank == 1 {
                ins[1].clone()
            } else {
                vec![0.0; count]
            };
            e("broadcast", c.broadcast(&mut b, 1))?;
            check("broadcast", ReduceOp::Sum, &b, &ins[1])?;
            // Reduce to rank 2.
            let mut out = vec![0.0f32; if rank == 2 { count } else { 0 }];
            e("reduce", c.reduce(&ins[rank], &mut out, ReduceOp::Sum, 2))?;
            if rank == 2 {
                check(
                    "reduce",
                    ReduceOp::Sum,
                    &out,
                    &expected(ReduceOp::Sum, n, count, 1),
                )?;
            }
            // All-gather.
            let mut ag = vec![0.0f32; n * count];
            e("all_gather", c.all_gather(&ins[rank], &mut ag))?;
            check("all_gather", ReduceOp::Sum, &ag, &ins.concat())?;
            // Reduce-scatter.
            let big: Vec<Vec<f32>> = (0..n)
                .map(|p| input(ReduceOp::Sum, p, n * count, 2))
                .collect();
            let full: Vec<f32> = expected(ReduceOp::Sum, n, n * count, 2);
            let mut rs = vec![0.0f32; count];
            e(
                "reduce_scatter",
                c.reduce_scatter(&big[rank], &mut rs, ReduceOp::Sum),
            )?;
            check(
                "reduce_scatter",
                ReduceOp::Sum,
                &rs,
                &full[rank * count..(rank + 1) * count],
            )?;
            // All-to-all.
            let want: Vec<f32> = (0..n)
                .flat_map(|p| big[p][rank * count..(rank + 1) * count].to_vec())
                .collect();
            let mut a2a = vec![0.0f32; n * count];
            e("all_to_all", c.all_to_all(&big[rank], &mut a2a))?;
            check("all_to_all", ReduceOp::Sum, &a2a, &want)?;
            // Send/recv around the ring, then a barrier.
            let (next, prev) = ((rank + 1) % n, (rank + n - 1) % n);
            let mut got = vec![0.0f32; count];
            e(
                "send/recv",
                c.group(vec![
                    oxccl::Call::send(
                        bytemuck::cast_slice(&ins[rank]),
                        oxccl::DataType::F32,
                        next,
                        9,
                    ),
                    oxccl::Call::recv(
                        bytemuck::cast_slice_mut(&mut got),
                        oxccl::DataType::F32,
                        prev,
                        9,
                    ),
                ]),
            )?;
            check("send/recv", ReduceOp::Sum, &got, &ins[prev])?;
            e("barrier", c.barrier())?;
            Ok(())
        },
    );
    all_ok(r);
    assert_clean(&fabric);
}

#[test]
fn lost_packets_are_retried_and_results_stay_exact() {
    let fabric = Fabric::with_retries(7, Duration::from_millis(1));
    let n = 3;
    let f2 = fabric.clone();
    let cfg = Config {
        chunk_bytes: Some(32 << 10),
        ..rdma_cfg(30_000)
    };
    let r = run_on(&fabric, n, vec![cfg], Duration::from_secs(120), move |c| {
        for k in 0..6u64 {
            // Each rank loses a few of its packets before each call (at most 6 in a row, under
            // the retry count of 7).
            f2.lose_packets(c.rank(), 6);
            let want: Vec<f32> = expected(ReduceOp::Sum, n, 100_000, k);
            all_reduce_checked(&c, ReduceOp::Sum, 100_000, k, false, &want)?;
        }
        Ok(())
    });
    all_ok(r);
    assert_clean(&fabric);
}

/// What rank 2 does after its 3rd all-reduce (after `harm`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Keeps calling.
    Call,
    /// Stops calling and drops its communicator.
    Leave,
    /// Stops calling but keeps its communicator (its TCP connections stay up) until the others
    /// have failed: a hung process, or one whose NIC died under it.
    Hang,
}

/// Runs all-reduces on 3 ranks until one fails; rank 2 does `harm` after its 3rd call and then
/// what that returns. Returns each rank's first error and when it came.
fn until_failure(
    fabric: &Fabric,
    timeout_ms: u64,
    harm: impl Fn(&Fabric, &Communicator) -> Then + Send + Sync + Clone + 'static,
) -> Vec<(Option<Error>, Duration)> {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let f2 = fabric.clone();
    let t0 = Instant::now();
    let failed = std::sync::Arc::new(AtomicUsize::new(0));
    run_on(
        fabric,
        3,
        vec![rdma_cfg(timeout_ms)],
        Duration::from_secs(120),
        move |c| {
            let mut buf = vec![1.0f32; 300_000];
            let mut first = (None, Duration::ZERO);
            let mut then = Then::Call;
            for k in 0..1000 {
                if c.rank() == 2 && k == 3 {
                    then = harm(&f2, &c);
                    if then != Then::Call {
                        break;
                    }
                }
                if let Err(e) = c.all_reduce(&mut buf, ReduceOp::Sum) {
                    first = (Some(e), t0.elapsed());
                    break;
                }
                buf.iter_mut().for_each(|x| *x = 1.0);
            }
            if c.rank() < 2 {
                failed.fetch_add(1, SeqCst);
            } else if then != Then::Leave {
                let d = Instant::now() + Duration::from_secs(60);
                while failed.load(SeqCst) < 2 && Instant::now() < d {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            first
        },
    )
}

/// Survivors 0 and 1 failed with PeerLost naming rank 2, within `within`.
fn survivors_name_rank_2(r: &[(Option<Error>, Duration)], within: Duration) {
    for (rank, (e, at)) in r.iter().enumerate().take(2) {
        match e {
            Some(e) if e.kind() == ErrorKind::PeerLost && e.peer() == Some(2) => {
                assert!(e.message().contains("rank 2"), "rank {rank}: {e}")
            }
            other => panic!("rank {rank}: expected PeerLost naming rank 2, got {other:?}"),
        }
        assert!(*at < within, "rank {rank} noticed only after {at:?}");
    }
}

#[test]
fn a_rank_whose_nic_dies_is_peer_lost_on_every_survivor_within_the_timeout() {
    let fabric = Fabric::new();
    let timeout = Duration::from_secs(20);
    let ms = timeout.as_millis() as u64;
    // Rank 2's NIC dies and it keeps calling: it fails (its queue pairs flush), names itself,
    // and its abort reaches the others over the bootstrap connections.
    let r = until_failure(&fabric, ms, |f, c| {
        f.kill(c.rank());
        Then::Call
    });
    survivors_name_rank_2(&r, timeout / 2);
    assert!(
        r[2].0
            .as_ref()
            .is_some_and(|e| e.kind() == ErrorKind::PeerLost && e.peer() == Some(2)),
        "the rank with the dead NIC names itself: {:?}",
        r[2].0
    );
    // Rank 2's NIC dies and it goes quiet, its process and TCP connections up: the survivors'
    // writes and liveness probes go unanswered, and the NIC's retries give up.
    let r = until_failure(&fabric, ms, |f, c| {
        f.kill(c.rank());
        Then::Hang
    });
    survivors_name_rank_2(&r, timeout / 2);
    for (rank, (e, _)) in r.iter().enumerate().take(2) {
        let m = e.as_ref().map(|e| e.to_string()).unwrap_or_default();
        assert!(m.contains("retry counter exceeded"), "rank {rank}: {m}");
    }
    assert_clean(&fabric);
}

#[test]
fn a_slow_rank_is_a_timeout_not_a_lost_peer_and_survivors_shrink_onto_rdma() {
    let fabric = Fabric::new();
    // Rank 2 stops calling but its NIC answers: the probes succeed, so the survivors wait the
    // full timeout and report a Timeout (naming rank 2), not a lost peer.
    let timeout = Duration::from_millis(2500);
    let r = until_failure(&fabric, timeout.as_millis() as u64, |_, _| Then::Hang);
    for (rank, (e, at)) in r.iter().enumerate().take(2) {
        assert!(
            e.as_ref().is_some_and(|e| e.kind() == ErrorKind::Timeout),
            "rank {rank}: {e:?}"
        );
        assert!(*at >= timeout, "rank {rank} gave up after {at:?}");
    }
    // Rank 2 leaves; the survivors shrink to a 2-rank communicator, which runs over RDMA too.
    let f2 = fabric.clone();
    let r = run_on(
        &fabric,
        3,
        vec![rdma_cfg(20_000)],
        Duration::from_secs(120),
        move |c| {
            if c.rank() == 2 {
                return Ok(());
            }
            let mut buf = vec![1.0f32; 100_000];
            let e = c
                .all_reduce(&mut buf, ReduceOp::Sum)
                .expect_err("rank 2 left");
            assert!(
                (e.kind() == oxccl::ErrorKind::PeerLost && e.peer() == Some(2)),
                "{e}"
            );
            let s = c.shrink().map_err(|e| format!("shrink: {e}"))?;
            let want: Vec<f32> = expected(ReduceOp::Sum, 2, 100_000, 7);
            all_reduce_checked(&s, ReduceOp::Sum, 100_000, 7, true, &want)?;
            // The old communicator's links are gone (shrink aborts it); these are the new one's.
            assert!(
                f2.queue_pairs() >= 1,
                "the shrunk communicator uses RDMA links"
            );
            assert_eq!(s.config().transport, Some(TransportKind::Rdma));
            Ok::<(), String>(())
        },
    );
    all_ok(r);
    assert_clean(&fabric);
}

#[test]
fn a_rank_that_leaves_is_peer_lost_and_abort_and_mismatch_propagate() {
    let fabric = Fabric::new();
    // Rank 2 drops its communicator while the others call all-reduce.
    let r = until_failure(&fabric, 20_000, |_, _| Then::Leave);
    survivors_name_rank_2(&r, Duration::from_secs(10));
    // Rank 2 aborts its communicator instead of calling.
    let r = until_failure(&fabric, 20_000, |_, c| {
        c.abort();
        Then::Call
    });
    for (rank, (e, at)) in r.iter().enumerate() {
        let e = e
            .as_ref()
            .unwrap_or_else(|| panic!("rank {rank} did not fail"));
        assert!(e.to_string().contains("rank 2 aborted"), "rank {rank}: {e}");
        assert!(*at < Duration::from_secs(10), "rank {rank} after {at:?}");
    }
    // A mismatch (rank 0 passes another count) fails every rank, not just the ones that see it.
    let r = run_on(
        &fabric,
        3,
        vec![rdma_cfg(20_000)],
        Duration::from_secs(60),
        |c| {
            let mut buf = vec![1.0f32; if c.rank() == 0 { 1000 } else { 1001 }];
            c.all_reduce(&mut buf, ReduceOp::Sum)
        },
    );
    for (rank, e) in r.iter().enumerate() {
        assert!(
            e.as_ref().is_err_and(|e| e.kind() == ErrorKind::Mismatch),
            "rank {rank}: {e:?}"
        );
    }
    assert_clean(&fabric);
}

#[test]
fn insisting_on_rdma_with_a_peer_that_does_not_offer_it_fails_on_both_sides() {
    let fabric = Fabric::new();
    let tcp = Config {
        transport: Some(TransportKind::Tcp),
        ..rdma_cfg(20_000)
    };
    let t0 = Instant::now();
    // Neither drops its communicator (rank 0's serves the store) before both have their answer.
    let both = std::sync::Arc::new(std::sync::Barrier::new(2));
    let r = run_on(
        &fabric,
        2,
        vec![rdma_cfg(20_000), tcp],
        Duration::from_secs(60),
        move |c| {
            let mut buf = vec![1.0f32; 10];
            let r = c.all_reduce(&mut buf, ReduceOp::Sum);
            both.wait();
            r
        },
    );
    for (rank, e) in r.iter().enumerate() {
        match e {
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                assert!(e.message().contains("RDMA"), "rank {rank}: {e}")
            }
            other => panic!("rank {rank}: {other:?}"),
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    // Under auto, ranks on one host use shared memory, not the NIC.
    let auto = Config {
        transport: None,
        ..rdma_cfg(20_000)
    };
    let f2 = fabric.clone();
    let r = run_on(&fabric, 2, vec![auto], Duration::from_secs(60), move |c| {
        let mut buf = vec![1.0f32; 10];
        c.all_reduce(&mut buf, ReduceOp::Sum)
            .map(|()| f2.queue_pairs())
    });
    assert_eq!(r, vec![Ok(0), Ok(0)]);
}

// ---------------------------------------------------------------------------------------------
// Real hardware: runs only where libibverbs finds an active port (not on the machine this was
// written on, which has none); elsewhere it says it skipped.

#[test]
fn real_verbs_device_all_reduce_and_a_lost_peer() {
    if let Err(why) = oxccl::internals::transport::rdma::verbs::open_device(0) {
        eprintln!("skipped: no usable RDMA device here ({why})");
        return;
    }
    // Two ranks in this process, each with its own queue pairs on the device (loopback through
    // the HCA): every size class, then a rank that leaves mid-collective.
    let n = 2;
    let r = run_ranks_on(
        None,
        n,
        vec![rdma_cfg(60_000)],
        Duration::from_secs(300),
        move |c| {
            for (i, count) in [1usize, 1000, 100_003, 4_000_000].into_iter().enumerate() {
                let want: Vec<f32> = expected(ReduceOp::Sum, n, count, i as u64);
                all_reduce_checked(&c, ReduceOp::Sum, count, i as u64, i % 2 == 0, &want)?;
            }
            let mut ag = vec![0.0f32; n * 300_000];
            let mine: Vec<f32> = input(ReduceOp::Sum, c.rank(), 300_000, 9);
            c.all_gather(&mine, &mut ag).map_err(|e| e.to_string())?;
            if c.rank() == 1 {
                return Ok(());
            }
            let mut buf = vec![1.0f32; 1_000_000];
            match c.all_reduce(&mut buf, ReduceOp::Sum) {
                Err(e) if e.kind() == oxccl::ErrorKind::PeerLost && e.peer() == Some(1) => Ok(()),
                other => Err(format!("expected PeerLost naming rank 1, got {other:?}")),
            }
        },
    );
    all_ok(r);
}
