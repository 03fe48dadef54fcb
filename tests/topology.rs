//! Schedules laid over a host map, run for real: every all-reduce algorithm (the hierarchical
//! ones included) and the placed rings, chains and trees on thread-ranks whose host map is
//! forced with the test knob OXCCL_TOPO_HOSTS, checked against the reference; and
//! `Communicator::topology`.

mod common;

use std::time::Duration;

use common::{expected, input, run_ranks, test_cfg};
use oxccl::{Algorithm, Collective, Config, DataType, ReduceOp};

/// Six ranks on three uneven, interleaved hosts: {0, 2, 5}, {1, 3}, {4}.
const HOSTS: &str = "0,1,0,1,2,0";

fn cfg(algo: &str) -> Config {
    Config {
        algo: Some(algo.to_string()),
        chunk_bytes: Some(256),
        ..test_cfg(20_000)
    }
}

fn check_all_reduce(comm: &oxccl::Communicator, what: &str) -> Result<(), String> {
    let n = comm.size();
    for count in [0usize, 1, 5, 97, 1000] {
        for (salt, op) in [
            (1u64, ReduceOp::Sum),
            (2, ReduceOp::Max),
            (3, ReduceOp::Avg),
        ] {
            let want: Vec<f32> = expected(op, n, count, salt);
            let mut buf: Vec<f32> = input(op, comm.rank(), count, salt);
            comm.all_reduce(&mut buf, op)
                .map_err(|e| format!("{what} rank {}: {e}", comm.rank()))?;
            common::check(&format!("{what} count {count} {op}"), op, &buf, &want)?;
            let send: Vec<i64> = input(ReduceOp::Sum, comm.rank(), count, salt);
            let mut recv = vec![0i64; count];
            comm.all_reduce_into(&send, &mut recv, ReduceOp::Sum)
                .map_err(|e| format!("{what} rank {}: {e}", comm.rank()))?;
            common::check(
                &format!("{what} out of place i64 count {count}"),
                ReduceOp::Sum,
                &recv,
                &expected::<i64>(ReduceOp::Sum, n, count, salt),
            )?;
        }
    }
    Ok(())
}

fn check_others(comm: &oxccl::Communicator, what: &str) -> Result<(), String> {
    let (n, r) = (comm.size(), comm.rank());
    let fail = |e: oxccl::Error| format!("{what} rank {r}: {e}");
    for count in [1usize, 33, 700] {
        let root = (count + 1) % n;
        let mut b: Vec<u32> = if r == root {
            (0..count as u32).map(|i| i * 7 + 1).collect()
        } else {
            vec![0; count]
        };
        comm.broadcast(&mut b, root).map_err(fail)?;
        if b.iter().enumerate().any(|(i, &v)| v != i as u32 * 7 + 1) {
            return Err(format!("{what}: broadcast from {root} wrong on rank {r}"));
        }
        let mine: Vec<u32> = (0..count as u32).map(|i| i + r as u32 * 1000).collect();
        let mut all = vec![0u32; count * n];
        comm.all_gather(&mine, &mut all).map_err(fail)?;
        for q in 0..n {
            for i in 0..count {
                if all[q * count + i] != i as u32 + q as u32 * 1000 {
                    return Err(format!("{what}: all-gather block {q} wrong on rank {r}"));
                }
            }
        }
        let full: Vec<i64> = (0..(count * n) as i64)
            .map(|i| i * (r as i64 + 1))
            .collect();
        let mut part = vec![0i64; count];
        comm.reduce_scatter(&full, &mut part, ReduceOp::Sum)
            .map_err(fail)?;
        let tri = (n * (n + 1) / 2) as i64;
        for (i, &v) in part.iter().enumerate() {
            if v != (r * count + i) as i64 * tri {
                return Err(format!("{what}: reduce-scatter wrong on rank {r}"));
            }
        }
        let own: Vec<i64> = (0..count as i64).map(|i| i + r as i64).collect();
        let mut red = vec![0i64; count];
        comm.reduce(&own, &mut red, ReduceOp::Sum, root)
            .map_err(fail)?;
        if r == root {
            let s = (n * (n - 1) / 2) as i64;
            if red
                .iter()
                .enumerate()
                .any(|(i, &v)| v != i as i64 * n as i64 + s)
            {
                return Err(format!("{what}: reduce to {root} wrong"));
            }
        }
        comm.barrier().map_err(fail)?;
    }
    Ok(())
}

#[test]
fn schedules_over_a_forced_host_map_compute_the_reference() {
    // SAFETY: this binary's only test sets the variable before it starts any thread, so no
    // other thread reads or writes the environment meanwhile.
    unsafe { std::env::set_var("OXCCL_TOPO_HOSTS", HOSTS) };
    let n = 6;
    // The topology every rank sees.
    let res = run_ranks(n, test_cfg(20_000), Duration::from_secs(60), |comm| {
        let t = comm.topology();
        (
            t.nhosts(),
            t.host(),
            t.local_rank(),
            t.local_size(),
            t.host_map().order(),
        )
    });
    let want_local = [
        (0, 0, 3),
        (1, 0, 2),
        (0, 1, 3),
        (1, 1, 2),
        (2, 0, 1),
        (0, 2, 3),
    ];
    for (r, (nh, h, l, ls, order)) in res.into_iter().enumerate() {
        assert_eq!(nh, 3);
        assert_eq!((h, l, ls), want_local[r], "rank {r}");
        assert_eq!(order, vec![0, 2, 5, 1, 3, 4]);
    }
    // Every all-reduce algorithm, forced; and every rank ends with the same bits for floats
    // whose sum depends on the order of additions.
    for &algo in Collective::AllReduce.algorithms() {
        let spec = format!("allreduce:{}", algo.name());
        let res = run_ranks(n, cfg(&spec), Duration::from_secs(120), move |comm| {
            check_all_reduce(&comm, &spec)?;
            let mut x: Vec<f32> = (0..300)
                .map(|i| 1.0 / (1 + i + 7 * comm.rank()) as f32 + 1e7 * (i % 3) as f32)
                .collect();
            comm.all_reduce(&mut x, ReduceOp::Sum)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>())
        });
        let bits: Vec<Vec<u32>> = res
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert!(
            bits.iter().all(|b| *b == bits[0]),
            "{}: ranks disagree on the bits of a float sum",
            algo.name()
        );
    }
    // The placed flat schedules of the other collectives.
    for spec in [
        "broadcast:chain,reduce:chain,allgather:ring,reducescatter:ring",
        "broadcast:tree,reduce:tree,allgather:bruck,reducescatter:bruck",
        "broadcast:hier,reduce:hier,allgather:hier,reducescatter:hier",
        "broadcast:hier-tree,reduce:hier-tree",
    ] {
        let res = run_ranks(n, cfg(spec), Duration::from_secs(120), move |comm| {
            check_others(&comm, spec)
        });
        for r in res {
            r.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    // The tuner's own choices across these hosts, and what it says it runs.
    let res = run_ranks(n, test_cfg(20_000), Duration::from_secs(120), |comm| {
        check_all_reduce(&comm, "default")?;
        check_others(&comm, "default")?;
        let shape =
            oxccl::internals::algo::Shape::all_reduce(6, comm.rank(), 1 << 20, false, 1 << 17);
        comm.algorithm_for(&shape, 4 << 20)
            .map_err(|e| e.to_string())
    });
    let picks: Vec<Algorithm> = res
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert!(
        picks.iter().all(|&a| a == picks[0]),
        "ranks disagree: {picks:?}"
    );
    let _ = DataType::F32;
    // Recursive multiplying needs hosts of at least two ranks: two more maps (radix 3; radix 2
    // twice), run for real, all ranks agreeing bit for bit.
    for (hosts, n) in [("0,0,1,1,2,2", 6), ("0,1,2,3,0,1,2,3", 8)] {
        // SAFETY: as above: every rank thread of the previous run has been joined, and none of
        // this run's has started.
        unsafe { std::env::set_var("OXCCL_TOPO_HOSTS", hosts) };
        let res = run_ranks(
            n,
            cfg("allreduce:hier-mul"),
            Duration::from_secs(120),
            |comm| {
                check_all_reduce(&comm, "hier-mul")?;
                let mut x: Vec<f32> = (0..77)
                    .map(|i| 1.0 / (3 + i + 5 * comm.rank()) as f32)
                    .collect();
                comm.all_reduce(&mut x, ReduceOp::Sum)
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>())
            },
        );
        let bits: Vec<Vec<u32>> = res
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{hosts}: {e}")))
            .collect();
        assert!(
            bits.iter().all(|b| *b == bits[0]),
            "{hosts}: ranks disagree"
        );
    }
}
