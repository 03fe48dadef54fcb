//! The shared-memory transport end to end.
//!
//! - `threads_*`: all-reduce over shm links between threads-as-ranks (1 to 8 ranks; the links
//!   still go through the full memfd + SCM_RIGHTS setup), several types and operators, in and
//!   out of place, counts 0, 1, a prime and a multi-chunk prime.
//! - `procs_large_*`: calls above 8 MiB, odd counts, pulled from the senders' buffers or not.
//! - `procs_registered_memory`: calls on `oxccl::SharedMem` between processes, read and
//!   written through mappings of the peers' buffers (or, switched off, through the kernel).
//! - `procs_*`: processes as ranks (the test binary re-executes itself, `common::ProcGroup`):
//!   forced shm, auto (shm for everyone here), a mix of shm and TCP links forced by the
//!   test-only knob `OXCCL_SHM_DENY`, and forced TCP; each child checks its own results and its
//!   log says which transport each link got.
//! - `procs_killed_rank_*`: a rank SIGKILLed mid-collective (also while large messages are being
//!   pulled from its buffers, or it pulls, or its registered buffers are mapped by its peers)
//!   makes every other rank fail naming it well within the
//!   timeout; the survivors' descriptor counts return to their baseline once
//!   the communicator is dropped, and nothing named oxccl appears in /dev/shm.
//! - `procs_oversubscribed_*`: 4 and 8 process ranks on this machine's cores complete 1,000
//!   all-reduces of 1 KiB each well inside the limit.

mod common;

use std::time::{Duration, Instant};

use common::*;
use oxccl::{Communicator, Config, DataType, ErrorKind, ReduceOp, TransportKind};

/// A prime above the default chunk (in f32 elements), so large calls are pipelined.
const BIG_PRIME: usize = 262_147;

fn shm_cfg(timeout_ms: u64) -> Config {
    Config {
        transport: Some(TransportKind::Shm),
        ..test_cfg(timeout_ms)
    }
}

fn case<T: TestElem>(comm: &Communicator, op: ReduceOp, counts: &[usize]) -> Result<(), String> {
    for &count in counts {
        let salt = count as u64 ^ 0xC0FFEE;
        let want = expected::<T>(op, comm.size(), count, salt);
        for in_place in [true, false] {
            all_reduce_checked(comm, op, count, salt, in_place, &want)?;
        }
    }
    Ok(())
}

/// The correctness cases every group runs: (type, operator, counts).
fn cases(n: usize) -> Vec<(DataType, ReduceOp, Vec<usize>)> {
    let small = vec![0, 1, n + 1, 1031];
    vec![
        (DataType::F32, ReduceOp::Sum, {
            let mut c = small.clone();
            c.push(BIG_PRIME);
            c
        }),
        (DataType::I32, ReduceOp::Prod, small.clone()),
        (DataType::F64, ReduceOp::Max, small.clone()),
        (DataType::BF16, ReduceOp::Avg, small.clone()),
        (DataType::U8, ReduceOp::Min, small.clone()),
        (DataType::I64, ReduceOp::Sum, small),
    ]
}

fn run_cases(comm: &Communicator) -> Result<(), String> {
    for (dt, op, counts) in cases(comm.size()) {
        with_dtype!(dt, case(comm, op, &counts))?;
    }
    Ok(())
}

#[test]
fn threads_all_reduce_1_to_8_ranks() {
    for n in 1..=8 {
        let out = run_ranks(n, shm_cfg(30_000), Duration::from_secs(120), |comm| {
            run_cases(&comm)
        });
        for (r, res) in out.into_iter().enumerate() {
            if let Err(e) = res {
                panic!("{n} ranks, rank {r}: {e}");
            }
        }
    }
}

/// Every all-reduce algorithm on 2 and 3 thread ranks with messages far above the pull size,
/// in and out of place: a rank whose later step overwrites what it sends (the direct and
/// doubling exchanges in place) must not have its send held for the peer's receive, which
/// waits for the peer's own held send (both ranks waited until the timeout before).
#[test]
fn threads_every_algorithm_large_in_place() {
    for n in [2, 3] {
        for algo in ["ring", "tree", "rhd", "direct", "doubling", "ordered"] {
            let cfg = Config {
                algo: Some(format!("allreduce:{algo}")),
                ..shm_cfg(20_000)
            };
            let out = run_ranks(n, cfg, Duration::from_secs(60), |comm| {
                case::<f32>(&comm, ReduceOp::Sum, &[BIG_PRIME])
            });
            for (r, res) in out.into_iter().enumerate() {
                if let Err(e) = res {
                    panic!("{n} ranks, {algo}, rank {r}: {e}");
                }
            }
        }
    }
}

#[test]
fn threads_many_small_calls_interleaved_with_large() {
    // Back-to-back calls of alternating sizes: message order per link and slot reuse across
    // calls, with the default chunk and with tiny 4 KiB slots (many chunks in flight).
    for chunk in [None, Some(4096)] {
        let cfg = Config {
            chunk_bytes: chunk,
            ..shm_cfg(30_000)
        };
        let out = run_ranks(
            3,
            cfg,
            Duration::from_secs(120),
            |comm| -> Result<(), String> {
                for i in 0..200usize {
                    let count = if i % 10 == 9 { 70_001 } else { i % 17 };
                    case::<f32>(&comm, ReduceOp::Sum, &[count])?;
                }
                Ok(())
            },
        );
        for (r, res) in out.into_iter().enumerate() {
            if let Err(e) = res {
                panic!("chunk {chunk:?}, rank {r}: {e}");
            }
        }
    }
}

/// Two thread ranks, 16 MiB all-reduces: the receiver reducing straight out of the sender's
/// buffer (pull, the default between threads) against copies through slots, interleaved. A
/// benchmark: `cargo test --release --test shm threads_pull_bench -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark"]
fn threads_pull_bench() {
    for round in 0..3 {
        for pull in ["0", "1"] {
            // SAFETY: run alone (ignored, by name); the links read it when they are made.
            unsafe { std::env::set_var("OXCCL_SHM_PULL", pull) };
            let out = run_ranks(2, shm_cfg(30_000), LIMIT, |comm| {
                let mut buf = vec![1.0f32; 4 << 20];
                comm.all_reduce(&mut buf, ReduceOp::Sum)
                    .map_err(|e| e.to_string())?;
                let t = Instant::now();
                for _ in 0..20 {
                    comm.all_reduce(&mut buf, ReduceOp::Sum)
                        .map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(t.elapsed() / 20)
            });
            let t = out.into_iter().map(|r| r.unwrap()).max().unwrap();
            // busbw for 2 ranks = algbw = bytes / time.
            let gbs = (16u64 << 20) as f64 / t.as_secs_f64() / 1e9;
            println!("round {round} OXCCL_SHM_PULL={pull}: {t:?} per call, busbw {gbs:.2} GB/s");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes as ranks.

const CHILD: &str = "child_rank";
const LIMIT: Duration = Duration::from_secs(120);

/// What a child does, from OXCCL_SHM_TEST_MODE.
fn child_mode() -> String {
    std::env::var("OXCCL_SHM_TEST_MODE").unwrap_or_default()
}

/// Descriptors this process has open now.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The body of each child rank. Not a test on its own: without the marker it returns at once.
#[test]
#[ignore = "a child process of this file's tests (they run it with --include-ignored)"]
fn child_rank() {
    if !is_child(CHILD) {
        return;
    }
    child_main(|| match child_mode().as_str() {
        "cases" => {
            let comm = Communicator::from_env().map_err(|e| format!("from_env: {e}"))?;
            run_cases(&comm)?;
            comm.barrier().map_err(|e| format!("final barrier: {e}"))?;
            println!("rank {}: all cases passed", comm.rank());
            Ok(())
        }
        "loop_until_killed" => loop_until_killed(),
        "large" => {
            // Above 8 MiB, odd counts: many pulled (or slot) messages and a short last one.
            let comm = Communicator::from_env().map_err(|e| format!("from_env: {e}"))?;
            case::<f32>(&comm, ReduceOp::Sum, &[2_097_155])?;
            case::<f64>(&comm, ReduceOp::Max, &[1_048_579])?;
            comm.barrier().map_err(|e| format!("final barrier: {e}"))?;
            println!("rank {}: large cases passed", comm.rank());
            Ok(())
        }
        "registered" => registered_cases(),
        "many_small" => {
            let comm = Communicator::from_env().map_err(|e| format!("from_env: {e}"))?;
            let mut buf = vec![1.0f32; 256];
            let t = Instant::now();
            for i in 0..1000 {
                buf.fill(1.0);
                comm.all_reduce(&mut buf, ReduceOp::Sum)
                    .map_err(|e| format!("call {i}: {e}"))?;
                if buf.iter().any(|&x| x != comm.size() as f32) {
                    return Err(format!("call {i}: wrong result {}", buf[0]));
                }
            }
            println!(
                "rank {}: 1000 all-reduces of 1 KiB in {:?}",
                comm.rank(),
                t.elapsed()
            );
            Ok(())
        }
        m => Err(format!("unknown OXCCL_SHM_TEST_MODE {m:?}")),
    });
}

/// Calls on registered memory (`oxccl::SharedMem`): peers read the sender's buffer and write
/// the receiver's through mappings. Odd counts above 8 MiB, in and out of place, and calls where
/// only the send or only the receive buffer is registered; every result checked. Then whether
/// this rank mapped a peer's buffer at all (where pidfd_getfd works).
fn registered_cases() -> Result<(), String> {
    let comm = Communicator::from_env().map_err(|e| format!("from_env: {e}"))?;
    let (n, rank) = (comm.size(), comm.rank());
    for (count, op) in [(2_097_155usize, ReduceOp::Sum), (65_537, ReduceOp::Max)] {
        let salt = count as u64 ^ 0xBEEF;
        let want = expected::<f32>(op, n, count, salt);
        let bytes = count * 4;
        let fill = |m: &mut oxccl::SharedMem, vals: &[f32]| {
            m[..bytes].copy_from_slice(bytemuck::cast_slice(vals));
        };
        let mine = input::<f32>(op, rank, count, salt);
        let garbage = input::<f32>(ReduceOp::Max, rank + 1000, count, salt);
        let mut send = oxccl::SharedMem::new(bytes).map_err(|e| e.to_string())?;
        let mut recv = oxccl::SharedMem::new(bytes).map_err(|e| e.to_string())?;
        // In place on registered memory.
        fill(&mut recv, &mine);
        comm.all_reduce_bytes(None, &mut recv, oxccl::DataType::F32, op)
            .map_err(|e| format!("in place, count {count}: {e}"))?;
        check(
            "registered, in place",
            op,
            bytemuck::cast_slice(&recv[..]),
            &want,
        )?;
        // Out of place: both registered, only the send buffer, only the receive buffer.
        for (send_reg, recv_reg) in [(true, true), (true, false), (false, true)] {
            let what = format!("registered send {send_reg} recv {recv_reg}, count {count}");
            fill(&mut send, &mine);
            fill(&mut recv, &garbage);
            let mut plain_recv: Vec<f32> = garbage.clone();
            let r = match (send_reg, recv_reg) {
                (true, true) => {
                    comm.all_reduce_bytes(Some(&send), &mut recv, oxccl::DataType::F32, op)
                }
                (true, false) => comm.all_reduce_bytes(
                    Some(&send),
                    bytemuck::cast_slice_mut(&mut plain_recv),
                    oxccl::DataType::F32,
                    op,
                ),
                _ => comm.all_reduce_bytes(
                    Some(bytemuck::cast_slice(&mine)),
                    &mut recv,
                    oxccl::DataType::F32,
                    op,
                ),
            };
            r.map_err(|e| format!("{what}: {e}"))?;
            let got: &[f32] = if recv_reg {
                bytemuck::cast_slice(&recv[..])
            } else {
                &plain_recv
            };
            check(&what, op, got, &want)?;
            if send_reg {
                check(
                    &format!("{what} (send buffer)"),
                    ReduceOp::Sum,
                    bytemuck::cast_slice(&send[..]),
                    &mine,
                )?;
            }
        }
    }
    comm.barrier().map_err(|e| format!("final barrier: {e}"))?;
    let mapped = oxccl::internals::transport::shm::reg::peer_buffers_mapped();
    println!("rank {rank}: registered cases passed, {mapped} peer buffers mapped");
    Ok(())
}

/// Loops 1 MiB all-reduces (OXCCL_SHM_TEST_ELEMS floats) until a peer is killed; then the
/// error must name the killed rank (OXCCL_SHM_TEST_VICTIM), and dropping the communicator must
/// give back every descriptor.
fn loop_until_killed() -> Result<(), String> {
    let victim: usize = std::env::var("OXCCL_SHM_TEST_VICTIM")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("no victim")?;
    let elems = std::env::var("OXCCL_SHM_TEST_ELEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256 << 10);
    // OXCCL_SHM_TEST_REGISTERED=1: the buffer is registered memory, which the peers map (made
    // before the descriptor baseline: its own descriptor lives as long as it does).
    let mut reg = std::env::var("OXCCL_SHM_TEST_REGISTERED")
        .is_ok_and(|v| v == "1")
        .then(|| oxccl::SharedMem::new(elems * 4))
        .transpose()
        .map_err(|e| e.to_string())?;
    let baseline = open_fds();
    let comm = Communicator::from_env().map_err(|e| format!("from_env: {e}"))?;
    let mut buf = vec![1.0f32; elems];
    let mut calls = 0u64;
    let err = loop {
        let r = match reg.as_mut() {
            Some(m) => comm.all_reduce_bytes(None, m, DataType::F32, ReduceOp::Sum),
            None => comm.all_reduce(&mut buf, ReduceOp::Sum),
        };
        match r {
            Ok(()) => {
                calls += 1;
                if calls == 3 {
                    if comm.rank() == victim
                        && std::env::var("OXCCL_SHM_TEST_FORK_HOLD").is_ok_and(|v| v == "1")
                    {
                        fork_holder();
                    }
                    println!("looping");
                }
            }
            Err(e) => break e,
        }
    };
    let named = err.peer() == Some(victim) || err.to_string().contains(&format!("rank {victim}"));
    if !named {
        return Err(format!(
            "after {calls} calls: error does not name rank {victim}: {err}"
        ));
    }
    if !matches!(err.kind(), ErrorKind::PeerLost | ErrorKind::Timeout) {
        eprintln!("note: error kind {}", err.kind_name());
    }
    println!("failed as expected after {calls} calls: {err}");
    drop(comm);
    let after = open_fds();
    if after > baseline {
        let list: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        format!(
                            "{} -> {:?}",
                            e.file_name().to_string_lossy(),
                            std::fs::read_link(e.path()).unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        return Err(format!(
            "{after} descriptors open after dropping the communicator, {baseline} before init: {list:?}"
        ));
    }
    println!("descriptors back to {after} (baseline {baseline})");
    Ok(())
}

/// Forks a child that holds copies of every descriptor (like a data-loader worker forked by a
/// training script) and outlives this process by 5 s: the peers must notice this process's
/// death from its pid, not from EOF on the sockets, which the child keeps open.
fn fork_holder() {
    // SAFETY: after fork the child only calls async-signal-safe functions (close, getppid,
    // nanosleep, _exit) and touches no Rust state.
    unsafe {
        let parent = libc::getpid();
        if libc::fork() == 0 {
            libc::close(1);
            libc::close(2);
            let tick = libc::timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            while libc::getppid() == parent {
                libc::nanosleep(&tick, std::ptr::null_mut());
            }
            let linger = libc::timespec {
                tv_sec: 5,
                tv_nsec: 0,
            };
            libc::nanosleep(&linger, std::ptr::null_mut());
            libc::_exit(0);
        }
    }
}

fn oxccl_in_dev_shm() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.to_ascii_lowercase().contains("oxccl"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the correctness cases on `n` processes with `env`, and returns the group for log checks.
fn procs_cases(n: usize, env: &[(&str, &str)]) -> ProcGroup {
    let mut vars = vec![
        ("OXCCL_SHM_TEST_MODE", "cases"),
        ("OXCCL_TIMEOUT_MS", "30000"),
        ("OXCCL_DEBUG", "INFO"),
        ("OXCCL_ALGO", ""),
        ("OXCCL_CHUNK_BYTES", ""),
        ("OXCCL_SHM_DENY", ""),
    ];
    vars.extend_from_slice(env);
    let mut g = ProcGroup::spawn(CHILD, n, &vars);
    let ok = g.wait(Instant::now() + LIMIT, true);
    let all_zero = (0..n).all(|r| g.status(r).is_some_and(|s| s.success()));
    assert!(ok && all_zero, "{n} ranks with {env:?}:\n{}", g.report());
    g
}

/// The transport rank `r`'s log says its link to `p` got ("shm" or "tcp").
fn link_transport(g: &ProcGroup, r: usize, p: usize) -> String {
    let out = g.report();
    let section = out
        .split("=== rank ")
        .find(|s| s.starts_with(&format!("{r}:")))
        .unwrap_or("");
    let key = format!("link to rank {p} (");
    let line = section
        .lines()
        .find(|l| l.contains(&key))
        .unwrap_or_else(|| panic!("rank {r} logged no link to rank {p}:\n{out}"));
    let after = &line[line.find("): ").map(|i| i + 3).unwrap_or(0)..];
    after[..3].to_string()
}

#[test]
fn procs_forced_shm_2_to_4_ranks() {
    for n in 2..=4 {
        let g = procs_cases(n, &[("OXCCL_TRANSPORT", "shm")]);
        for r in 0..n {
            for p in (0..n).filter(|&p| p != r) {
                assert_eq!(link_transport(&g, r, p), "shm");
            }
        }
    }
}

/// Calls above 8 MiB, in and out of place, with the receivers pulling large messages from the
/// senders' buffers (OXCCL_SHM_PULL=1) or taking them from slots (0), on 2 and 4 processes.
#[test]
fn procs_large_calls_pulled_and_through_slots() {
    for (n, algo, pull) in [
        (2, "ring", "1"),
        (2, "tree", "1"),
        (2, "ring", "0"),
        (4, "ring", "1"),
        (4, "direct", "1"),
        (2, "direct", "1"),
        (2, "doubling", "1"),
    ] {
        let mut g = ProcGroup::spawn(
            CHILD,
            n,
            &[
                ("OXCCL_SHM_TEST_MODE", "large"),
                ("OXCCL_TIMEOUT_MS", "30000"),
                ("OXCCL_TRANSPORT", "shm"),
                ("OXCCL_ALGO", algo),
                ("OXCCL_CHUNK_BYTES", ""),
                ("OXCCL_SHM_PULL", pull),
            ],
        );
        let ok = g.wait(Instant::now() + LIMIT, true);
        let all_zero = (0..n).all(|r| g.status(r).is_some_and(|s| s.success()));
        assert!(
            ok && all_zero,
            "{n} ranks, {algo}, pull {pull}:\n{}",
            g.report()
        );
    }
}

/// Registered memory between processes (2 and 4 ranks; ring, tree, direct): every result
/// right, and every rank read or wrote a peer's buffer through a mapping (unless pidfd_getfd
/// is refused here, which the test then says); with mapping switched off (OXCCL_SHM_MAP=0)
/// the same calls go through the kernel's copies.
#[test]
fn procs_registered_memory() {
    for (n, algo, map) in [
        (2, "ring", "1"),
        (2, "tree", "1"),
        (4, "ring", "1"),
        (4, "direct", "1"),
        (2, "direct", "1"),
        (2, "doubling", "1"),
        (2, "ring", "0"),
    ] {
        let mut g = ProcGroup::spawn(
            CHILD,
            n,
            &[
                ("OXCCL_SHM_TEST_MODE", "registered"),
                ("OXCCL_TIMEOUT_MS", "30000"),
                ("OXCCL_TRANSPORT", "shm"),
                ("OXCCL_ALGO", algo),
                ("OXCCL_SHM_MAP", map),
            ],
        );
        let ok = g.wait(Instant::now() + LIMIT, true);
        let all_zero = (0..n).all(|r| g.status(r).is_some_and(|s| s.success()));
        let report = g.report();
        assert!(ok && all_zero, "{n} ranks, {algo}:\n{report}");
        let mapped: Vec<u64> = report
            .lines()
            .filter_map(|l| {
                l.split(", ")
                    .nth(1)?
                    .strip_suffix(" peer buffers mapped")?
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(mapped.len(), n, "{report}");
        if map == "0" {
            // Mapping off: the kernel copies, with the same results.
            assert!(mapped.iter().all(|&m| m == 0), "{mapped:?}\n{report}");
            continue;
        }
        if mapped.iter().all(|&m| m == 0) && !pidfd_getfd_works() {
            eprintln!("skipped the mapping check: pidfd_getfd is refused here");
            continue;
        }
        assert!(
            mapped.iter().all(|&m| m > 0),
            "{n} ranks, {algo}: {mapped:?}\n{report}"
        );
    }
}

/// Whether this process may duplicate its own descriptors through a pidfd (kernel 5.6+).
fn pidfd_getfd_works() -> bool {
    use oxccl::internals::sys::shm::{pidfd_getfd, pidfd_open};
    use std::os::fd::{AsFd, AsRawFd};
    let (Ok(me), Ok(f)) = (
        pidfd_open(std::process::id() as i32),
        std::fs::File::open("/proc/self/stat"),
    ) else {
        return false;
    };
    pidfd_getfd(me.as_fd(), f.as_raw_fd()).is_ok()
}

#[test]
fn procs_auto_uses_shm_on_one_host() {
    let g = procs_cases(3, &[("OXCCL_TRANSPORT", "auto")]);
    assert_eq!(link_transport(&g, 0, 2), "shm");
    assert_eq!(link_transport(&g, 2, 1), "shm");
}

#[test]
fn procs_mixed_shm_and_tcp_links() {
    // Pairs 0-1 and 2-3 use TCP, every other pair shm; both algorithms cross both kinds.
    for algo in ["ring", "direct"] {
        let g = procs_cases(
            4,
            &[
                ("OXCCL_TRANSPORT", "auto"),
                ("OXCCL_SHM_DENY", "0-1,2-3"),
                ("OXCCL_ALGO", algo),
                ("OXCCL_CHUNK_BYTES", "65536"),
            ],
        );
        for (a, b) in [(0, 1), (1, 0), (2, 3), (3, 2)] {
            assert_eq!(link_transport(&g, a, b), "tcp", "{algo}");
        }
        for (a, b) in [(0, 2), (3, 1), (1, 2), (0, 3)] {
            assert_eq!(link_transport(&g, a, b), "shm", "{algo}");
        }
    }
}

#[test]
fn procs_refused_descriptors_fall_back_to_tcp_or_fail_clearly() {
    // Under auto, a listener that refuses the segment makes the pair use TCP (one INFO line).
    let g = procs_cases(
        3,
        &[("OXCCL_TRANSPORT", "auto"), ("OXCCL_SHM_TEST_REFUSE", "1")],
    );
    assert_eq!(link_transport(&g, 0, 1), "tcp");
    assert_eq!(link_transport(&g, 2, 1), "tcp");
    assert!(g.report().contains("falling back to tcp"), "{}", g.report());
    // Forced shm: every rank fails with an error that says why, instead of hanging.
    let mut g = ProcGroup::spawn(
        CHILD,
        2,
        &[
            ("OXCCL_SHM_TEST_MODE", "cases"),
            ("OXCCL_TIMEOUT_MS", "30000"),
            ("OXCCL_TRANSPORT", "shm"),
            ("OXCCL_SHM_TEST_REFUSE", "1"),
        ],
    );
    g.wait(Instant::now() + LIMIT, false);
    for r in 0..2 {
        assert!(
            g.status(r).is_some_and(|s| !s.success()) && !g.was_killed(r),
            "rank {r} should fail by itself:\n{}",
            g.report()
        );
    }
    let report = g.report();
    assert!(report.contains("OXCCL_TRANSPORT=shm"), "{report}");
    assert!(report.contains("refused"), "{report}");
}

#[test]
fn procs_forced_tcp() {
    let g = procs_cases(3, &[("OXCCL_TRANSPORT", "tcp")]);
    assert_eq!(link_transport(&g, 0, 1), "tcp");
    assert_eq!(link_transport(&g, 2, 0), "tcp");
}

fn killed_rank(n: usize, victim: usize, algo: &str, fork_hold: bool) {
    killed_rank_with(
        n,
        victim,
        algo,
        fork_hold,
        &[("OXCCL_CHUNK_BYTES", "65536")],
    );
}

fn killed_rank_with(n: usize, victim: usize, algo: &str, fork_hold: bool, env: &[(&str, &str)]) {
    let before = oxccl_in_dev_shm();
    let mut env = env.to_vec();
    let victim_s = victim.to_string();
    env.extend_from_slice(&[
        ("OXCCL_SHM_TEST_FORK_HOLD", if fork_hold { "1" } else { "" }),
        ("OXCCL_SHM_TEST_MODE", "loop_until_killed"),
        ("OXCCL_SHM_TEST_VICTIM", &victim_s),
        ("OXCCL_TIMEOUT_MS", "60000"),
        ("OXCCL_TRANSPORT", "shm"),
        ("OXCCL_ALGO", algo),
    ]);
    let mut g = ProcGroup::spawn(CHILD, n, &env);
    let deadline = Instant::now() + LIMIT;
    let mut looping = vec![false; n];
    while !looping.iter().all(|&l| l) {
        match g.next_line(deadline) {
            Some((r, l)) if l.ends_with("looping") => looping[r] = true,
            Some(_) => {}
            None => panic!("ranks did not start looping:\n{}", g.report()),
        }
    }
    let killed_at = Instant::now();
    g.kill(victim);
    // Well within the 60 s timeout: EOF on the victim's sockets is noticed in milliseconds.
    let ok = g.wait(killed_at + Duration::from_secs(20), false);
    assert!(
        !ok,
        "the victim was killed, so not all exited by themselves"
    );
    for r in (0..n).filter(|&r| r != victim) {
        let st = g.status(r);
        assert!(
            st.is_some_and(|s| s.success()) && !g.was_killed(r),
            "{algo}: rank {r} did not fail cleanly naming rank {victim}:\n{}",
            g.report()
        );
        let took = g.exited_at(r).unwrap() - killed_at;
        // With a forked child holding the sockets, only the pid tells (the child lingers 5 s).
        let bound = Duration::from_secs(if fork_hold { 4 } else { 20 });
        assert!(took < bound, "rank {r} took {took:?}");
    }
    let after = oxccl_in_dev_shm();
    assert!(
        after.iter().all(|f| before.contains(f)),
        "oxccl files appeared in /dev/shm: {after:?}"
    );
}

#[test]
fn procs_killed_rank_ring() {
    killed_rank(4, 2, "ring", false);
}

#[test]
fn procs_killed_rank_direct() {
    killed_rank(3, 0, "direct", false);
}

/// 16 MiB calls in 512 KiB messages, which the receivers pull from the senders' buffers: the
/// victim dies with its messages being read, or reading its peer's.
#[test]
fn procs_killed_rank_while_large_messages_are_pulled() {
    for (n, victim, algo) in [(2, 1, "ring"), (2, 0, "tree"), (4, 3, "ring")] {
        killed_rank_with(
            n,
            victim,
            algo,
            false,
            &[("OXCCL_SHM_TEST_ELEMS", "4194305"), ("OXCCL_SHM_PULL", "1")],
        );
    }
    // The same on registered memory, which the peers read and write through their mappings.
    for (n, victim, algo) in [(2, 1, "ring"), (4, 0, "ring")] {
        killed_rank_with(
            n,
            victim,
            algo,
            false,
            &[
                ("OXCCL_SHM_TEST_ELEMS", "4194305"),
                ("OXCCL_SHM_TEST_REGISTERED", "1"),
            ],
        );
    }
}

#[test]
fn procs_killed_rank_whose_child_holds_its_sockets() {
    killed_rank(3, 1, "ring", true);
}

fn oversubscribed(n: usize) {
    let t = Instant::now();
    let mut g = ProcGroup::spawn(
        CHILD,
        n,
        &[
            ("OXCCL_SHM_TEST_MODE", "many_small"),
            ("OXCCL_TIMEOUT_MS", "60000"),
            ("OXCCL_TRANSPORT", "shm"),
            ("OXCCL_ALGO", ""),
            ("OXCCL_CHUNK_BYTES", ""),
        ],
    );
    let limit = Duration::from_secs(60);
    let ok = g.wait(Instant::now() + limit, true);
    let all_zero = (0..n).all(|r| g.status(r).is_some_and(|s| s.success()));
    assert!(ok && all_zero, "{n} ranks:\n{}", g.report());
    eprintln!(
        "{n} ranks: 1000 all-reduces of 1 KiB, spawn to exit {:?}",
        t.elapsed()
    );
}

#[test]
fn procs_oversubscribed_4_ranks() {
    oversubscribed(4);
}

#[test]
fn procs_oversubscribed_8_ranks() {
    oversubscribed(8);
}
