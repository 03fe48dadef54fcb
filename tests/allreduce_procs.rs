//! All-reduce correctness with processes as ranks (2 to 4 processes), as a launcher runs them.
//!
//! The parent test serves the rendezvous store and re-executes this test binary once per rank
//! (`common::ProcGroup`); each child runs `child_rank`, which joins with
//! `Communicator::from_env()` (OXCCL_RANK, OXCCL_WORLD_SIZE, OXCCL_ROOT, OXCCL_SECRET,
//! OXCCL_ROOT_EXTERNAL=1), runs the cases below, checks every result against the reference
//! itself and exits non-zero (saying why on stderr) on any mismatch or error. The parent waits
//! with a deadline, kills and reaps every child on timeout or on the first failure, and asserts
//! that all of them exited 0.
//!
//! Cases: several types and operators, in place and out of place, counts 0, 1, nranks-1 and 1031,
//! and 1,000,003 elements of f32 sum; under the ring (with 4 KiB chunks, so large messages are
//! pipelined), the direct algorithm, and the default choice; over TCP and shared memory.

mod common;

use std::time::Duration;

use common::*;
use oxccl::{Communicator, DataType, ReduceOp};

/// Name of the child entry point, as `--exact` matches it.
const CHILD: &str = "child_rank";
/// Deadline for one group of processes, start to exit.
const LIMIT: Duration = Duration::from_secs(120);
/// A prime above one million.
const PRIME: usize = 1_000_003;

/// (type, operator, extra counts beyond 0, 1, nranks-1 and 1031).
const CASES: &[(DataType, ReduceOp, &[usize])] = &[
    (DataType::F32, ReduceOp::Sum, &[PRIME]),
    (DataType::I32, ReduceOp::Prod, &[]),
    (DataType::F64, ReduceOp::Max, &[]),
    (DataType::BF16, ReduceOp::Avg, &[]),
    (DataType::U8, ReduceOp::Sum, &[]),
    (DataType::I64, ReduceOp::Min, &[]),
    (DataType::F16, ReduceOp::Avg, &[]),
    (DataType::U64, ReduceOp::Prod, &[]),
];

fn case<T: TestElem>(
    comm: &Communicator,
    op: ReduceOp,
    counts: &[usize],
    errors: &mut Vec<String>,
) {
    for &count in counts {
        let salt = count as u64 ^ 0x5EED;
        let want = expected::<T>(op, comm.size(), count, salt);
        for in_place in [true, false] {
            if let Err(e) = all_reduce_checked(comm, op, count, salt, in_place, &want) {
                errors.push(e);
            }
        }
    }
}

/// The body of each child rank. Not a test on its own: without the marker it returns at once.
#[test]
#[ignore = "a child process of this file's tests (they run it with --include-ignored)"]
fn child_rank() {
    if !is_child(CHILD) {
        return;
    }
    child_main(|| {
        let comm = Communicator::from_env().map_err(|e| format!("from_env: {e}"))?;
        let n = comm.size();
        let mut errors = Vec::new();
        for &(dt, op, extra) in CASES {
            let mut counts = vec![0, 1, n - 1, 1031];
            counts.extend_from_slice(extra);
            counts.sort_unstable();
            counts.dedup();
            with_dtype!(dt, case(&comm, op, &counts, &mut errors));
        }
        if let Err(e) = comm.barrier() {
            errors.push(format!("final barrier: {e}"));
        }
        if errors.is_empty() {
            println!("rank {} of {n}: all cases passed", comm.rank());
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    });
}

/// Runs the child cases on 2, 3 and 4 processes over each of `transports`, with the all-reduce
/// algorithm `algo` forced ("" = the default choice) and `chunk` bytes per message ("" = default).
/// Empty values count as unset, so a developer's own OXCCL_* settings cannot leak in.
fn run_all(algo: &str, chunk: &str, transports: &[&str]) {
    let algo = if algo.is_empty() {
        String::new()
    } else {
        format!("allreduce:{algo}")
    };
    for transport in transports {
        for n in 2..=4 {
            let vars = [
                ("OXCCL_TIMEOUT_MS", "20000"),
                ("OXCCL_ALGO", algo.as_str()),
                ("OXCCL_CHUNK_BYTES", chunk),
                ("OXCCL_TRANSPORT", transport),
            ];
            ProcGroup::spawn(CHILD, n, &vars).expect_success(LIMIT);
        }
    }
}

#[test]
fn procs_ring() {
    run_all("ring", "4096", &["tcp", "shm"]);
}

#[test]
fn procs_direct() {
    run_all("direct", "", &["tcp", "shm"]);
}

#[test]
fn procs_default() {
    run_all("", "", &["", "tcp"]);
}
