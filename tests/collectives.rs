//! Every collective against a plain reference, over real links (threads as ranks), with every
//! algorithm forced in turn: counts 0, 1, odd and prime, roots 0 and last, several types and
//! operators, in and out of place.

mod common;
use common::*;
use oxccl::{Call, Collective, Communicator, Config, DataType, Element, ReduceOp};
use std::time::Duration;

const COUNTS: [usize; 4] = [0, 1, 7, 1009];

/// Config forcing the `k`-th algorithm of every collective (wrapping around), over `transport`.
fn forced_on(k: usize, transport: oxccl::TransportKind) -> Config {
    Config {
        transport: Some(transport),
        ..forced(k)
    }
}

/// The OXCCL_ALGO value forcing the `k`-th algorithm of every collective.
fn algo_spec(k: usize) -> String {
    forced(k).algo.unwrap()
}

/// Config forcing the `k`-th algorithm of every collective (wrapping around).
fn forced(k: usize) -> Config {
    let spec: Vec<String> = Collective::ALL
        .iter()
        .filter(|c| !matches!(c, Collective::Send | Collective::Recv))
        .map(|c| {
            format!(
                "{}:{}",
                c.key(),
                c.algorithms()[k % c.algorithms().len()].name()
            )
        })
        .collect();
    Config {
        algo: Some(spec.join(",")),
        chunk_bytes: Some(256),
        ..test_cfg(20_000)
    }
}

fn inp<T: TestElem>(op: ReduceOp, rank: usize, count: usize, salt: u64) -> Vec<T> {
    input(op, rank, count, salt)
}

fn reference<T: TestElem>(op: ReduceOp, ins: &[Vec<T>]) -> Vec<T> {
    let refs: Vec<&[T]> = ins.iter().map(Vec::as_slice).collect();
    oxccl::internals::reduce::reference(op, &refs)
}

fn ok<E: std::fmt::Display>(what: &str, r: Result<(), E>) -> Result<(), String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// All collectives for one type and operator on one communicator.
fn all_collectives<T: TestElem>(
    comm: &Communicator,
    op: ReduceOp,
    salt: u64,
) -> Result<(), String> {
    let (n, r) = (comm.size(), comm.rank());
    for (ci, &count) in COUNTS.iter().enumerate() {
        let salt = salt + ci as u64 * 100;
        for root in [0, n - 1] {
            let w = |c: &str| {
                format!(
                    "rank {r}/{n} {c} {} {op:?} count {count} root {root}",
                    T::DTYPE.name()
                )
            };
            // Broadcast, in and out of place.
            let want: Vec<T> = inp(op, root, count, salt);
            let mut buf: Vec<T> = if r == root {
                want.clone()
            } else {
                inp(op, r + 50, count, salt)
            };
            ok(&w("broadcast"), comm.broadcast(&mut buf, root))?;
            check(&w("broadcast"), ReduceOp::Sum, &buf, &want)?;
            let mut out: Vec<T> = inp(op, r + 50, count, salt);
            let send = if r == root {
                Some(bytemuck::cast_slice(&want[..]))
            } else {
                None
            };
            ok(
                &w("broadcast_bytes"),
                comm.broadcast_bytes(send, bytemuck::cast_slice_mut(&mut out), T::DTYPE, root),
            )?;
            check(&w("broadcast out of place"), ReduceOp::Sum, &out, &want)?;
            // Reduce.
            let ins: Vec<Vec<T>> = (0..n).map(|p| inp(op, p, count, salt)).collect();
            let want = reference(op, &ins);
            let mut out: Vec<T> = if r == root {
                vec![T::from_i64(3); count]
            } else {
                Vec::new()
            };
            ok(&w("reduce"), comm.reduce(&ins[r], &mut out, op, root))?;
            if r == root {
                check(&w("reduce"), op, &out, &want)?;
            }
            let mut inplace = ins[r].clone();
            ok(
                &w("reduce in place"),
                comm.reduce_bytes(
                    None,
                    bytemuck::cast_slice_mut(&mut inplace),
                    T::DTYPE,
                    op,
                    root,
                ),
            )?;
            check(
                &w("reduce in place"),
                op,
                &inplace,
                if r == root { &want } else { &ins[r] },
            )?;
            // Gather and scatter.
            let blocks: Vec<Vec<T>> = (0..n).map(|p| inp(op, p + 7, count, salt)).collect();
            let mut g: Vec<T> = if r == root {
                vec![T::from_i64(1); n * count]
            } else {
                Vec::new()
            };
            ok(&w("gather"), comm.gather(&blocks[r], &mut g, root))?;
            if r == root {
                check(&w("gather"), ReduceOp::Sum, &g, &blocks.concat())?;
            }
            let all: Vec<T> = if r == root {
                blocks.concat()
            } else {
                Vec::new()
            };
            let mut s: Vec<T> = vec![T::from_i64(1); count];
            ok(&w("scatter"), comm.scatter(&all, &mut s, root))?;
            check(&w("scatter"), ReduceOp::Sum, &s, &blocks[r])?;
        }
        let w = |c: &str| format!("rank {r}/{n} {c} {} {op:?} count {count}", T::DTYPE.name());
        // All-reduce, in and out of place.
        let ins: Vec<Vec<T>> = (0..n).map(|p| inp(op, p, count, salt)).collect();
        let want = reference(op, &ins);
        let mut out = vec![T::from_i64(5); count];
        ok(
            &w("all_reduce_into"),
            comm.all_reduce_into(&ins[r], &mut out, op),
        )?;
        check(&w("all_reduce_into"), op, &out, &want)?;
        let mut buf = ins[r].clone();
        ok(&w("all_reduce"), comm.all_reduce(&mut buf, op))?;
        check(&w("all_reduce"), op, &buf, &want)?;
        // All-gather, out of place and in place.
        let mut ag = vec![T::from_i64(2); n * count];
        ok(&w("all_gather"), comm.all_gather(&ins[r], &mut ag))?;
        check(&w("all_gather"), ReduceOp::Sum, &ag, &ins.concat())?;
        let mut ag2 = vec![T::from_i64(2); n * count];
        ag2[r * count..(r + 1) * count].copy_from_slice(&ins[r]);
        ok(
            &w("all_gather in place"),
            comm.all_gather_bytes(None, bytemuck::cast_slice_mut(&mut ag2), T::DTYPE),
        )?;
        check(
            &w("all_gather in place"),
            ReduceOp::Sum,
            &ag2,
            &ins.concat(),
        )?;
        // Reduce-scatter, out of place and in place.
        let big: Vec<Vec<T>> = (0..n).map(|p| inp(op, p + 20, n * count, salt)).collect();
        let full = reference(op, &big);
        let mut rs = vec![T::from_i64(2); count];
        ok(
            &w("reduce_scatter"),
            comm.reduce_scatter(&big[r], &mut rs, op),
        )?;
        check(
            &w("reduce_scatter"),
            op,
            &rs,
            &full[r * count..(r + 1) * count],
        )?;
        let mut rs2 = big[r].clone();
        ok(
            &w("reduce_scatter in place"),
            comm.reduce_scatter_bytes(None, bytemuck::cast_slice_mut(&mut rs2), T::DTYPE, op),
        )?;
        check(
            &w("reduce_scatter in place"),
            op,
            &rs2[r * count..(r + 1) * count],
            &full[r * count..(r + 1) * count],
        )?;
        // All-to-all, out of place and in place.
        let a2a_want: Vec<T> = (0..n)
            .flat_map(|p| big[p][r * count..(r + 1) * count].to_vec())
            .collect();
        let mut a2a = vec![T::from_i64(2); n * count];
        ok(&w("all_to_all"), comm.all_to_all(&big[r], &mut a2a))?;
        check(&w("all_to_all"), ReduceOp::Sum, &a2a, &a2a_want)?;
        let mut a2a2 = big[r].clone();
        ok(
            &w("all_to_all in place"),
            comm.all_to_all_bytes(None, bytemuck::cast_slice_mut(&mut a2a2), T::DTYPE),
        )?;
        check(&w("all_to_all in place"), ReduceOp::Sum, &a2a2, &a2a_want)?;
        // V-variants: rank p has (count + p) % 5 + p elements.
        let counts: Vec<usize> = (0..n).map(|p| (count + p) % 5 + p).collect();
        let total: usize = counts.iter().sum();
        let vin: Vec<Vec<T>> = (0..n).map(|p| inp(op, p + 30, counts[p], salt)).collect();
        let mut agv = vec![T::from_i64(2); total];
        ok(
            &w("all_gatherv"),
            comm.all_gatherv(&vin[r], &mut agv, &counts),
        )?;
        check(&w("all_gatherv"), ReduceOp::Sum, &agv, &vin.concat())?;
        let vbig: Vec<Vec<T>> = (0..n).map(|p| inp(op, p + 40, total, salt)).collect();
        let vfull = reference(op, &vbig);
        let off: usize = counts[..r].iter().sum();
        let mut rsv = vec![T::from_i64(2); counts[r]];
        ok(
            &w("reduce_scatterv"),
            comm.reduce_scatterv(&vbig[r], &mut rsv, &counts, op),
        )?;
        check(
            &w("reduce_scatterv"),
            op,
            &rsv,
            &vfull[off..off + counts[r]],
        )?;
        // All-to-allv: rank s sends m(s, d) = (s + 2d + count) % 4 elements to rank d.
        let m = |s: usize, d: usize| (s + 2 * d + count) % 4;
        let sc: Vec<usize> = (0..n).map(|d| m(r, d)).collect();
        let rc: Vec<usize> = (0..n).map(|s| m(s, r)).collect();
        let vsend = |s: usize| -> Vec<T> { inp(op, s + 60, (0..n).map(|d| m(s, d)).sum(), salt) };
        let mut a2av = vec![T::from_i64(2); rc.iter().sum()];
        ok(
            &w("all_to_allv"),
            comm.all_to_allv(&vsend(r), &sc, &mut a2av, &rc),
        )?;
        let want: Vec<T> = (0..n)
            .flat_map(|s| {
                let o: usize = (0..r).map(|d| m(s, d)).sum();
                vsend(s)[o..o + m(s, r)].to_vec()
            })
            .collect();
        check(&w("all_to_allv"), ReduceOp::Sum, &a2av, &want)?;
        // Point to point: a ring exchange in one group, tagged.
        if n > 1 {
            let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
            let mine: Vec<T> = inp(op, r + 80, count, salt);
            let mut got = vec![T::from_i64(2); count];
            ok(
                &w("send/recv"),
                comm.group(vec![
                    Call::send(bytemuck::cast_slice(&mine), T::DTYPE, next, 42),
                    Call::recv(bytemuck::cast_slice_mut(&mut got), T::DTYPE, prev, 42),
                ]),
            )?;
            check(
                &w("send/recv"),
                ReduceOp::Sum,
                &got,
                &inp(op, prev + 80, count, salt),
            )?;
        }
        ok(&w("barrier"), comm.barrier())?;
    }
    Ok(())
}

fn sweep(comm: &Communicator, dtypes: &[DataType], ops: &[ReduceOp]) -> Result<(), String> {
    for (i, &dt) in dtypes.iter().enumerate() {
        for (j, &op) in ops.iter().enumerate() {
            with_dtype!(dt, all_collectives(comm, op, (i * 10 + j) as u64))?;
        }
    }
    Ok(())
}

fn run(n: usize, cfg: Config, dtypes: &'static [DataType], ops: &'static [ReduceOp]) {
    let res = run_ranks(n, cfg, Duration::from_secs(240), move |comm| {
        sweep(&comm, dtypes, ops)
    });
    for r in res {
        r.unwrap_or_else(|e| panic!("{e}"));
    }
}

const SOME_TYPES: [DataType; 4] = [DataType::F32, DataType::I32, DataType::BF16, DataType::U8];
const SOME_OPS: [ReduceOp; 3] = [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Avg];

#[test]
fn every_algorithm_small_rank_counts() {
    for t in [oxccl::TransportKind::Shm, oxccl::TransportKind::Tcp] {
        for n in [1, 2, 3] {
            for k in 0..5 {
                run(n, forced_on(k, t), &SOME_TYPES, &SOME_OPS);
            }
        }
    }
}

#[test]
fn every_algorithm_4_and_5_ranks() {
    for t in [oxccl::TransportKind::Shm, oxccl::TransportKind::Tcp] {
        for n in [4, 5] {
            for k in 0..5 {
                run(
                    n,
                    forced_on(k, t),
                    &[DataType::F32, DataType::I64],
                    &[ReduceOp::Sum, ReduceOp::Min],
                );
            }
        }
    }
}

const CHILD: &str = "collectives_child";

/// A rank process: every collective with the algorithms OXCCL_ALGO forces, a few types.
#[test]
#[ignore = "a child process of this file's tests (they run it with --include-ignored)"]
fn collectives_child() {
    if !is_child(CHILD) {
        return;
    }
    child_main(|| {
        let comm = Communicator::from_env().map_err(|e| e.to_string())?;
        sweep(
            &comm,
            &[DataType::F32, DataType::BF16, DataType::U8],
            &[ReduceOp::Sum, ReduceOp::Max],
        )
    });
}

#[test]
fn every_algorithm_as_processes_over_shm_and_tcp() {
    for transport in ["shm", "tcp"] {
        for n in [2, 4] {
            for k in 0..5 {
                let spec = algo_spec(k);
                let mut g = ProcGroup::spawn(
                    CHILD,
                    n,
                    &[
                        ("OXCCL_TRANSPORT", transport),
                        ("OXCCL_ALGO", &spec),
                        ("OXCCL_CHUNK_BYTES", "256"),
                        ("OXCCL_TIMEOUT_MS", "20000"),
                    ],
                );
                let ok = g.wait(std::time::Instant::now() + Duration::from_secs(120), true);
                assert!(ok, "{transport} n={n} algorithms {spec}:\n{}", g.report());
                for r in 0..n {
                    assert_eq!(
                        g.status(r).and_then(|s| s.code()),
                        Some(0),
                        "rank {r}:\n{}",
                        g.report()
                    );
                }
            }
        }
    }
}

#[test]
fn default_choice_8_ranks_all_types_and_ops() {
    run(8, test_cfg(20_000), &DataType::ALL, &ReduceOp::ALL);
}

/// A scope whose closure panics after starting a call still finishes the call before the panic
/// goes on (the scope is a thread scope; its worker runs what was started). Detached calls (the
/// C ABI's form) borrow nothing and hold an owner of the communicator: dropping every other
/// owner while one runs leaves the communicator to the worker, which drops it when the call is
/// done, on its own thread, without joining itself.
#[test]
fn a_panicking_scope_finishes_its_calls_and_detached_calls_own_the_communicator() {
    let res = run_ranks(2, test_cfg(20_000), Duration::from_secs(60), |comm| {
        let rank = comm.rank();
        let mut v = vec![rank as f32 + 1.0; 64];
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            comm.scope(|s| {
                s.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                panic!("the scope's closure panics after starting a call");
            })
        }));
        let comm = std::sync::Arc::new(comm);
        if rank == 1 {
            // Rank 0's call is then still running when it drops its own owner below.
            std::thread::sleep(Duration::from_millis(300));
        }
        let send: &'static [u8] = vec![rank as u8 + 1; 16].leak();
        let recv: &'static mut [u8] = vec![0u8; 16].leak();
        let call = Call::all_reduce(Some(send), recv, DataType::U8, ReduceOp::Sum);
        let req = Communicator::start_detached(comm.clone(), vec![call]).unwrap();
        drop(comm);
        (unwound.is_err(), v, req.wait())
    });
    for (unwound, v, r) in res {
        assert!(unwound);
        assert!(v.iter().all(|&x| x == 3.0), "{v:?}");
        r.unwrap();
    }
}

#[test]
fn nonblocking_requests_and_scope() {
    let res = run_ranks(3, test_cfg(20_000), Duration::from_secs(60), |comm| {
        let r = comm.rank();
        let mut a = vec![r as f32 + 1.0; 1000];
        let mut b = vec![(r * 2) as i32; 77];
        let mut c = vec![0u8; 5];
        if r == 2 {
            c = vec![9u8; 5];
        }
        comm.scope(|s| {
            let ra = s.all_reduce(&mut a, ReduceOp::Sum)?;
            let rb = s.all_reduce(&mut b, ReduceOp::Max)?;
            let rc = s.broadcast(&mut c, 2)?;
            ra.wait()?;
            rb.wait_timeout(Duration::from_secs(30))?;
            rc.wait()?;
            assert!(rc.test().is_some_and(|r| r.is_ok()));
            Ok::<(), oxccl::Error>(())
        })
        .unwrap();
        // A blocking call after the scope runs after everything started in it.
        comm.barrier().unwrap();
        (a, b, c)
    });
    for (a, b, c) in res {
        assert!(a.iter().all(|&x| x == 6.0));
        assert!(b.iter().all(|&x| x == 4));
        assert_eq!(c, vec![9u8; 5]);
    }
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let res = run_ranks(2, test_cfg(5_000), Duration::from_secs(60), |comm| {
        let mut v = vec![0f32; 4];
        let errs = vec![
            comm.broadcast(&mut v, 2).unwrap_err(),
            comm.all_gather(&v[..3], &mut [0f32; 5]).unwrap_err(),
            comm.reduce_scatter(&v, &mut [0f32; 3], ReduceOp::Sum)
                .unwrap_err(),
            comm.all_gatherv(&v, &mut [0f32; 8], &[4]).unwrap_err(),
            comm.send(&v, comm.rank(), 0).unwrap_err(),
            comm.all_to_all(&v[..3], &mut [0f32; 3]).unwrap_err(),
        ];
        // The communicator still works afterwards: argument errors do not revoke it.
        comm.all_reduce(&mut v, ReduceOp::Sum).unwrap();
        errs
    });
    for errs in res {
        for e in errs {
            assert!(e.kind() == oxccl::ErrorKind::InvalidArgument, "{e}");
        }
    }
}

/// Elements of every type, for the macro above.
#[allow(dead_code)]
fn _types_are_elements<T: Element>() {}

#[test]
fn deterministic_mode_is_bitwise_reproducible() {
    // Values whose float sums depend on the order: results must not depend on chunking or size.
    let n = 5;
    let make = |r: usize, count: usize| -> Vec<f32> {
        (0..count)
            .map(|i| ((i * 7919 + r * 104729) % 1000) as f32 * 1.0e-3 + (r as f32) * 1.0e7)
            .collect()
    };
    let mut results = Vec::new();
    for chunk in [64usize, 4096, 1 << 20] {
        let cfg = Config {
            deterministic: Some(true),
            chunk_bytes: Some(chunk),
            ..test_cfg(20_000)
        };
        let res = run_ranks(n, cfg, Duration::from_secs(60), move |comm| {
            let mut a = make(comm.rank(), 3001);
            comm.all_reduce(&mut a, ReduceOp::Sum).unwrap();
            let mut big = make(comm.rank(), 3001 * 5);
            let mut rs = vec![0f32; 3001];
            comm.reduce_scatter(&big, &mut rs, ReduceOp::Sum).unwrap();
            comm.all_reduce(&mut big, ReduceOp::Sum).unwrap();
            (a, rs, big)
        });
        // Every rank agrees, and reduce-scatter's block equals the all-reduce's.
        for (r, (a, rs, big)) in res.iter().enumerate() {
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                res[0].0.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            let block: Vec<u32> = big[r * 3001..(r + 1) * 3001]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            assert_eq!(rs.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), block);
        }
        results.push(res[0].0.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }
    // ... and the result is the plain rank-order fold, whatever the chunk size.
    let want: Vec<u32> = (0..3001)
        .map(|i| {
            (1..n)
                .fold(make(0, 3001)[i], |acc, r| acc + make(r, 3001)[i])
                .to_bits()
        })
        .collect();
    for r in results {
        assert_eq!(r, want);
    }
}

/// A communicator remembers its last few calls, fully prepared, and runs a repeat straight
/// away. Cycling through more distinct calls than it keeps (different counts, operators, types,
/// roots, in and out of place), each with fresh inputs in fresh buffers, every result must still
/// be right, over both transports and with 2 and 3 ranks.
#[test]
fn repeated_calls_of_alternating_shapes_are_correct() {
    for t in [oxccl::TransportKind::Shm, oxccl::TransportKind::Tcp] {
        for n in [2, 3] {
            let cfg = Config {
                transport: Some(t),
                ..test_cfg(20_000)
            };
            let res = run_ranks(n, cfg, Duration::from_secs(120), move |comm| {
                let r = comm.rank();
                // Neighbours differ in one thing only, so that a memo keyed too loosely would
                // be taken for the next shape.
                let shapes = [
                    (1usize, ReduceOp::Sum, true),
                    (1, ReduceOp::Min, true),
                    (1, ReduceOp::Min, false),
                    (7, ReduceOp::Min, false),
                    (7, ReduceOp::Max, false),
                    (300, ReduceOp::Sum, false),
                ];
                for round in 0..4u64 {
                    for (i, &(count, op, in_place)) in shapes.iter().enumerate() {
                        // Each call twice with fresh inputs: the repeat runs from the memo.
                        for again in 0..2u64 {
                            let salt = round * 100 + i as u64 * 10 + again;
                            let what =
                                format!("{t:?} rank {r}/{n} round {round} shape {i} ({again})");
                            let mine: Vec<f32> = input(op, r, count, salt);
                            let mut out = vec![0f32; count];
                            let res = if in_place {
                                out.copy_from_slice(&mine);
                                comm.all_reduce(&mut out, op)
                            } else {
                                comm.all_reduce_into(&mine, &mut out, op)
                            };
                            ok(&what, res)?;
                            check(&what, op, &out, &expected::<f32>(op, n, count, salt))?;
                        }
                        let salt = round * 100 + i as u64 * 10 + 5;
                        let what = format!("{t:?} rank {r}/{n} round {round} shape {i}");
                        // The same lengths as an f32 call, another type: not the same call.
                        let mine: Vec<i32> = input(op, r, count, salt);
                        let mut out = vec![0i32; count];
                        ok(&what, comm.all_reduce_into(&mine, &mut out, op))?;
                        check(&what, op, &out, &expected::<i32>(op, n, count, salt))?;
                        // Broadcast from a root that changes between rounds.
                        let root = (round as usize + i) % n;
                        let want: Vec<f32> = input(op, root, count, salt);
                        let mut buf = if r == root {
                            want.clone()
                        } else {
                            vec![0f32; count]
                        };
                        ok(&what, comm.broadcast(&mut buf, root))?;
                        check(&format!("{what} broadcast"), ReduceOp::Sum, &buf, &want)?;
                    }
                }
                Ok::<(), String>(())
            });
            for r in res {
                r.unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

/// 128 thread-ranks, the default algorithm choice, every collective checked (issue 11: fan-out
/// at scale must not break correctness).
#[test]
fn default_choice_128_thread_ranks_every_collective() {
    run(128, test_cfg(120_000), &[DataType::F32], &[ReduceOp::Sum]);
}

/// The binomial-tree gather and scatter, forced (`OXCCL_ALGO=gather:tree,scatter:tree`), on 2, 3,
/// 5 and 8 thread-ranks over shm and TCP, every root, odd counts, in chunks of 16 elements (the
/// smallest chunk) so that a subtree's message splits inside and across blocks and (with the
/// root not 0) where its run of blocks wraps past the last rank.
#[test]
fn tree_gather_and_scatter_every_root() {
    for t in [oxccl::TransportKind::Shm, oxccl::TransportKind::Tcp] {
        for n in [2usize, 3, 5, 8] {
            let cfg = Config {
                transport: Some(t),
                algo: Some("gather:tree,scatter:tree".into()),
                chunk_bytes: Some(64),
                ..test_cfg(20_000)
            };
            let res = run_ranks(n, cfg, Duration::from_secs(120), move |comm| {
                let r = comm.rank();
                for root in 0..n {
                    for count in [1usize, 7, 33] {
                        let w =
                            |c: &str| format!("rank {r}/{n} {t:?} {c} root {root} count {count}");
                        let shape = oxccl::internals::algo::Shape::new(
                            Collective::Gather,
                            n,
                            r,
                            count,
                            false,
                            16,
                        );
                        let a = comm
                            .algorithm_for(&shape, 4 * count)
                            .map_err(|e| w(&e.to_string()))?;
                        if n > 1 && a.name() != "tree" {
                            return Err(w(&format!("forced tree, got {}", a.name())));
                        }
                        let blocks: Vec<Vec<i32>> = (0..n)
                            .map(|p| {
                                (0..count)
                                    .map(|i| (1000 * p + i + 17 * root) as i32)
                                    .collect()
                            })
                            .collect();
                        let mut g = if r == root {
                            vec![-1i32; n * count]
                        } else {
                            Vec::new()
                        };
                        ok(&w("gather"), comm.gather(&blocks[r], &mut g, root))?;
                        if r == root && g != blocks.concat() {
                            return Err(w(&format!("gather: {g:?}")));
                        }
                        let all = if r == root {
                            blocks.concat()
                        } else {
                            Vec::new()
                        };
                        let mut s = vec![-1i32; count];
                        ok(&w("scatter"), comm.scatter(&all, &mut s, root))?;
                        if s != blocks[r] {
                            return Err(w(&format!("scatter: {s:?}")));
                        }
                    }
                }
                Ok::<(), String>(())
            });
            for r in res {
                r.unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}
