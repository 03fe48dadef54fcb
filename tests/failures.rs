//! Failure handling: every failure is a prompt, precise error on every rank, never a hang, a
//! panic or wrong data.
//!
//! - `wrong_secret_*`: an impostor holding the right address but the wrong secret is refused
//!   (`Error::Auth`, or `Timeout`), and neither it nor a raw connection sending garbage to the
//!   store disturbs the real ranks, before or after they have formed their communicator.
//! - `mismatch_*`: ranks calling all-reduce with a different count, type, operator (or a different
//!   collective) all get `Error::Mismatch` well within the timeout, under both algorithms and both
//!   transports, and the communicator is revoked afterwards (the next call fails at once instead
//!   of hanging). A count-0 call on one rank is caught by that rank's next call.
//! - `peer_killed_mid_collective_{tcp,shm}`: processes as ranks; one is SIGKILLed while all loop
//!   4 MiB all-reduces, and the survivors exit with an error naming it within timeout + 5 s.
//! - `silent_rank_is_revoked_everywhere_{tcp,shm}`: processes as ranks, between calls; one
//!   stops (SIGSTOP: sockets open, no EOF, no exit) and every other rank, including one with no
//!   link to it, learns from the heartbeats that it is lost (PeerLost naming it) within
//!   timeout + 3 s without making a call, and its next call fails at once with that error.
//! - `invalid_*`: bad arguments are `Error::InvalidArgument`, not panics, and do not disturb the
//!   communicator.
//! - Ignored until fixed: `mismatch_while_streaming_reports_mismatch_on_every_rank` (a TCP bug).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use common::*;
use oxccl::{Communicator, Config, DataType, Error, ReduceOp, TransportKind, UniqueId};

/// Receives from `rx` or panics naming `what` once `limit` has passed.
fn recv<T>(rx: &mpsc::Receiver<T>, limit: Duration, what: &str) -> T {
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("{what}: nothing within {limit:?} ({e})"))
}

// ---------------------------------------------------------------------------------------------
// Wrong secret, garbage at the store.

/// Connects to the store at `addr`, sends bytes that are no handshake, and checks that the store
/// hangs up on us (EOF or reset) rather than waiting for more or crashing.
fn send_garbage(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // A plausible-looking frame that claims 4 GiB, then noise. Write errors are fine: the store
    // may hang up before it has read it all.
    let mut junk = vec![0xFFu8; 8];
    junk.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let _ = s.write_all(&junk);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    match s.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Err(e) => panic!("the store did not hang up on garbage: {e}"),
    }
}

/// An impostor joins as rank 1 of 2 with the right store address and a wrong secret.
fn impostor(id: &UniqueId) {
    let mut secret = id.secret;
    secret.iter_mut().for_each(|b| *b ^= 0x5A);
    let bad = UniqueId {
        addr: id.addr,
        secret,
    };
    let timeout = Duration::from_secs(3);
    let t0 = Instant::now();
    let r = Communicator::init(1, 2, &bad, test_cfg(timeout.as_millis() as u64));
    let took = t0.elapsed();
    match r {
        Err(e) if matches!(e.kind(), oxccl::ErrorKind::Auth | oxccl::ErrorKind::Timeout) => {}
        Err(e) => panic!("impostor: expected an authentication failure, got {e}"),
        Ok(_) => panic!("impostor with a wrong secret joined the communicator"),
    }
    assert!(took < 2 * timeout, "impostor refused only after {took:?}");
}

#[test]
fn wrong_secret_and_garbage_do_not_disturb_real_ranks() {
    const LIMIT: Duration = Duration::from_secs(60);
    let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let n = 2;
    let count = 1000;
    let (done_tx, done_rx) = mpsc::channel();
    let mut go = Vec::new();
    let mut handles = Vec::new();
    let spawn_rank = |rank: usize, go_rx: mpsc::Receiver<()>| {
        let (id, done_tx) = (id.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let comm = Communicator::init(rank, n, &id, test_cfg(20_000))
                .unwrap_or_else(|e| panic!("rank {rank} init: {e}"));
            let want = expected::<f32>(ReduceOp::Sum, n, count, 1);
            let a = all_reduce_checked(&comm, ReduceOp::Sum, count, 1, true, &want);
            let _ = done_tx.send((rank, a));
            // Phase 2 starts when the main thread has attacked the live communicator's store.
            if go_rx.recv_timeout(LIMIT).is_err() {
                return;
            }
            let want = expected::<i64>(ReduceOp::Max, n, count, 2);
            let b = all_reduce_checked(&comm, ReduceOp::Max, count, 2, false, &want);
            let _ = done_tx.send((rank, b));
        })
    };
    // Rank 0 starts serving the store (or is about to: the listener is bound, so connections
    // queue) and waits for rank 1; meanwhile garbage and an impostor arrive.
    let (tx, rx) = mpsc::channel();
    go.push(tx);
    handles.push(spawn_rank(0, rx));
    send_garbage(id.addr);
    impostor(&id);
    let (tx, rx) = mpsc::channel();
    go.push(tx);
    handles.push(spawn_rank(1, rx));
    for _ in 0..n {
        let (r, res) = recv(&done_rx, LIMIT, "first all-reduce");
        res.unwrap_or_else(|e| panic!("rank {r}, first all-reduce: {e}"));
    }
    // Again while the communicator is live and rank 0's store still serves.
    send_garbage(id.addr);
    impostor(&id);
    for tx in &go {
        tx.send(()).unwrap();
    }
    for _ in 0..n {
        let (r, res) = recv(&done_rx, LIMIT, "second all-reduce");
        res.unwrap_or_else(|e| panic!("rank {r}, second all-reduce: {e}"));
    }
    for h in handles {
        h.join().expect("rank thread");
    }
}

// ---------------------------------------------------------------------------------------------
// Mismatched calls.

/// One rank's call: all_reduce of `count` elements of `dtype` with `op`, or a barrier.
#[derive(Debug, Clone, Copy)]
enum Call {
    AllReduce(DataType, ReduceOp, usize),
    Barrier,
}

impl Call {
    fn run(self, comm: &Communicator) -> oxccl::Result<()> {
        match self {
            Call::AllReduce(dt, op, count) => {
                let mut buf = vec![0u8; count * dt.size()];
                comm.all_reduce_bytes(None, &mut buf, dt, op)
            }
            Call::Barrier => comm.barrier(),
        }
    }
}

/// 3 ranks; rank 1 makes `odd`, the others `call`, with the all-reduce algorithm and the
/// transport of `setup`. Every rank must get `Error::Mismatch` within the timeout, and then an
/// error at once from the next (matching) call.
fn mismatch(setup: Setup, call: Call, odd: Call) {
    let timeout = Duration::from_secs(5);
    let cfg = Config {
        chunk_bytes: Some(4096),
        ..setup_cfg(setup, timeout)
    };
    let all_returned = Arc::new(Barrier::new(3));
    let res = run_ranks(3, cfg, 4 * timeout, move |comm| {
        let mine = if comm.rank() == 1 { odd } else { call };
        let t0 = Instant::now();
        let first = mine.run(&comm);
        let took = t0.elapsed();
        // Keep every communicator open until all ranks have returned: a rank that closes its
        // sockets early can turn a peer's Mismatch into PeerLost.
        all_returned.wait();
        let t1 = Instant::now();
        let next = call.run(&comm);
        (first, took, next, t1.elapsed())
    });
    for (rank, (first, took, next, next_took)) in res.into_iter().enumerate() {
        let what = format!("{setup:?}: {call:?} vs {odd:?} on rank 1; rank {rank}");
        match &first {
            Err(e) if e.kind() == oxccl::ErrorKind::Mismatch => {
                assert!(!e.message().is_empty(), "{what}: empty message");
            }
            other => panic!("{what}: expected a mismatch error, got {other:?}"),
        }
        assert!(took < timeout, "{what}: mismatch reported after {took:?}");
        assert!(
            next.is_err(),
            "{what}: the call after a mismatch succeeded; the communicator should be revoked"
        );
        assert!(
            next_took < timeout,
            "{what}: the call after a mismatch took {next_took:?}"
        );
    }
}

/// (all-reduce algorithm, transport).
type Setup = (&'static str, TransportKind);

/// Every algorithm over every transport.
const SETUPS: [Setup; 4] = [
    ("ring", TransportKind::Tcp),
    ("ring", TransportKind::Shm),
    ("direct", TransportKind::Tcp),
    ("direct", TransportKind::Shm),
];

fn setup_cfg((algo, transport): Setup, timeout: Duration) -> Config {
    Config {
        algo: Some(format!("allreduce:{algo}")),
        transport: Some(transport),
        ..test_cfg(timeout.as_millis() as u64)
    }
}

#[test]
fn mismatch_count() {
    for setup in SETUPS {
        let f = |n| Call::AllReduce(DataType::F32, ReduceOp::Sum, n);
        mismatch(setup, f(10), f(11));
        // Several chunks per ring step; larger counts: see
        // `mismatch_while_streaming_reports_mismatch_on_every_rank`.
        mismatch(setup, f(1000), f(1001));
    }
}

#[test]
fn mismatch_dtype() {
    for setup in SETUPS {
        let f = |dt| Call::AllReduce(dt, ReduceOp::Sum, 1000);
        // Same element size: only the signature tells them apart.
        mismatch(setup, f(DataType::F32), f(DataType::I32));
        // Different element size: different byte lengths too.
        mismatch(setup, f(DataType::F32), f(DataType::F64));
    }
}

#[test]
fn mismatch_op() {
    for setup in SETUPS {
        let f = |op| Call::AllReduce(DataType::F32, op, 1000);
        mismatch(setup, f(ReduceOp::Sum), f(ReduceOp::Max));
    }
}

#[test]
fn mismatch_collective() {
    for setup in SETUPS {
        mismatch(
            setup,
            Call::AllReduce(DataType::U8, ReduceOp::Max, 1),
            Call::Barrier,
        );
    }
}

/// `mismatch_count` at a count large enough that the ranks are still streaming chunks when the
/// odd rank gives up, repeated because the outcome is a race: every rank must still report
/// `Mismatch`. All communicators stay open until every rank has returned.
///
/// Fails today within a few rounds: a rank that is still sending to the odd rank gets
/// `PeerLost { msg: "connection to rank 1 failed while sending: Connection reset by peer" }` (or
/// "Broken pipe"), because after the odd rank's failure its TCP link shuts its sockets down for
/// reading too (`TcpLink::cancel_recvs`, `shutdown(Both)`), so the data still arriving makes its
/// kernel answer with a reset; the reset then overtakes the abort frame that carries the real
/// error. Dropping the communicator right after the error (as a program that exits does) hits
/// the same race.
#[test]
fn mismatch_while_streaming_reports_mismatch_on_every_rank() {
    for setup in SETUPS {
        for _round in 0..20 {
            let f = |n| Call::AllReduce(DataType::F32, ReduceOp::Sum, n);
            mismatch(setup, f(100_000), f(100_001));
        }
    }
}

/// A count-0 all-reduce moves no data, so the rank that makes it returns at once (as NCCL does)
/// and cannot see that the others passed 10. It still uses up a sequence number, so the mismatch
/// is caught: the others get `Mismatch` from the first call, and the odd rank gets `Mismatch`
/// from its next call at the latest. Nobody hangs and nobody gets wrong data.
#[test]
fn mismatch_count_zero_is_caught_by_the_next_call() {
    let timeout = Duration::from_secs(5);
    for setup in SETUPS {
        let cfg = setup_cfg(setup, timeout);
        let res = run_ranks(3, cfg, 4 * timeout, move |comm| {
            let count = if comm.rank() == 1 { 0 } else { 10 };
            let t0 = Instant::now();
            let first = Call::AllReduce(DataType::F32, ReduceOp::Sum, count).run(&comm);
            let next = Call::AllReduce(DataType::F32, ReduceOp::Sum, 10).run(&comm);
            (first, next, t0.elapsed())
        });
        for (rank, (first, next, took)) in res.into_iter().enumerate() {
            let what = format!("{setup:?}: rank {rank} (rank 1 passed count 0)");
            assert!(took < timeout, "{what}: took {took:?}");
            let kinds = (
                first.as_ref().map_err(Error::kind),
                next.as_ref().map_err(Error::kind),
            );
            match (rank, kinds.0, kinds.1) {
                (1, Ok(()), Err(oxccl::ErrorKind::Mismatch)) => {}
                (_, Err(oxccl::ErrorKind::Mismatch), Err(_)) => {}
                _ => panic!("{what}: got {first:?}, then {next:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A rank killed mid-collective (processes as ranks).

const KILL_CHILD: &str = "child_loop_all_reduce";
/// The survivors' OXCCL_TIMEOUT_MS.
const KILL_TIMEOUT: Duration = Duration::from_millis(5000);

/// Child entry: loops 4 MiB f32 all-reduces, printing `ITER <i>` after each; on an error prints
/// `ERROR peer=<peer> <error>` to stdout and stderr and exits 3.
#[test]
#[ignore = "a child process of this file's tests (they run it with --include-ignored)"]
fn child_loop_all_reduce() {
    if !is_child(KILL_CHILD) {
        return;
    }
    child_main(|| {
        let comm = Communicator::from_env().map_err(|e| format!("from_env: {e}"))?;
        let (rank, n) = (comm.rank(), comm.size());
        let count = 1 << 20;
        let mut buf = vec![0f32; count];
        // The parent kills a rank long before this; the bound only stops a runaway child.
        for iter in 0..1_000_000u64 {
            buf.fill((rank + 1) as f32);
            if let Err(e) = comm.all_reduce(&mut buf, ReduceOp::Sum) {
                let line = format!("ERROR peer={:?} {e}", e.peer());
                println!("{line}");
                eprintln!("{line}");
                std::process::exit(3);
            }
            let want = (n * (n + 1) / 2) as f32;
            if buf[0] != want || buf[count - 1] != want {
                return Err(format!("iter {iter}: got {} want {want}", buf[0]));
            }
            println!("ITER {iter}");
        }
        Err("the loop ended without losing a peer".into())
    });
}

#[test]
fn peer_killed_mid_collective_tcp() {
    peer_killed("tcp");
}

#[test]
fn peer_killed_mid_collective_shm() {
    peer_killed("shm");
}

/// 3 processes loop 4 MiB all-reduces over `transport`; once each has done two, rank 2 is
/// SIGKILLed. Ranks 0 and 1 must fail by themselves within timeout + 5 s, with an error that is
/// "peer lost" or "timeout" and names rank 2.
fn peer_killed(transport: &str) {
    let (n, victim) = (3, 2);
    let timeout_ms = KILL_TIMEOUT.as_millis().to_string();
    let mut g = ProcGroup::spawn(
        KILL_CHILD,
        n,
        &[
            ("OXCCL_TIMEOUT_MS", &timeout_ms),
            ("OXCCL_ALGO", ""),
            ("OXCCL_TRANSPORT", transport),
        ],
    );
    // Wait until every rank has finished two all-reduces: all links are up and data is flowing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut iters = vec![0usize; n];
    while iters.iter().any(|&i| i < 2) {
        let Some((rank, line)) = g.next_line(deadline) else {
            panic!(
                "the ranks did not report progress within 60 s:\n{}",
                g.report()
            );
        };
        if line.contains("ITER ") {
            iters[rank] += 1;
        }
        if line.contains("ERROR") {
            panic!("rank {rank} failed before the kill: {line}\n{}", g.report());
        }
    }
    g.kill(victim);
    let killed_at = Instant::now();
    let limit = KILL_TIMEOUT + Duration::from_secs(5);
    g.wait(killed_at + limit, false);
    let report = g.report();
    for r in (0..n).filter(|&r| r != victim) {
        assert!(
            !g.was_killed(r),
            "rank {r} was still running {limit:?} after rank {victim} was killed:\n{report}"
        );
        let st = g.status(r).expect("reaped");
        assert_eq!(
            st.code(),
            Some(3),
            "rank {r} should exit 3 after reporting the error, got {st}:\n{report}"
        );
        let took = g.exited_at(r).unwrap() - killed_at;
        assert!(took < limit, "rank {r} took {took:?} to fail");
        let out = g.output(r);
        let err = out
            .lines()
            .find(|l| l.contains("ERROR peer="))
            .unwrap_or_else(|| panic!("rank {r} printed no error:\n{report}"));
        assert!(
            err.contains(&format!("rank {victim}")),
            "rank {r}'s error does not name rank {victim}: {err}\n{report}"
        );
        assert!(
            err.contains("peer lost") || err.contains("timeout"),
            "rank {r}'s error is neither 'peer lost' nor 'timeout': {err}\n{report}"
        );
        assert!(
            err.contains(&format!("peer=Some({victim})")),
            "rank {r}'s error does not carry peer {victim}: {err}\n{report}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid arguments.

fn assert_invalid<T: std::fmt::Debug>(r: oxccl::Result<T>, what: &str) {
    match r {
        Err(e) if e.kind() == oxccl::ErrorKind::InvalidArgument => {
            assert!(!e.message().is_empty(), "{what}: empty message")
        }
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn invalid_init_arguments() {
    let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let cfg = test_cfg(2000);
    assert_invalid(Communicator::init(2, 2, &id, cfg.clone()), "rank == nranks");
    assert_invalid(Communicator::init(7, 3, &id, cfg.clone()), "rank > nranks");
    assert_invalid(
        Communicator::init(1, 0, &id, cfg.clone()),
        "nranks 0, rank 1",
    );
    // Rank 0 takes the id's listener; it must still fail cleanly.
    assert_invalid(Communicator::init(0, 0, &id, cfg.clone()), "nranks 0");
    let bad = |c: Config| Config {
        timeout: c.timeout.or(Some(Duration::from_secs(2))),
        ..c
    };
    let fresh = || UniqueId::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    for (what, c) in [
        (
            "nsocks 0",
            bad(Config {
                nsocks: Some(0),
                ..Config::default()
            }),
        ),
        (
            "chunk_bytes 8",
            bad(Config {
                chunk_bytes: Some(8),
                ..Config::default()
            }),
        ),
        (
            "algo bogus",
            bad(Config {
                algo: Some("bogus".into()),
                ..Config::default()
            }),
        ),
        (
            "timeout 0",
            Config {
                timeout: Some(Duration::ZERO),
                ..Config::default()
            },
        ),
    ] {
        assert_invalid(Communicator::init(1, 2, &fresh(), c), what);
    }
}

/// Bad buffers on a live communicator are rejected on the calling rank before anything is sent,
/// so they neither revoke the communicator nor desynchronise the ranks.
#[test]
fn invalid_buffers_are_rejected_and_harmless() {
    for n in [1, 2] {
        let res = run_ranks(n, test_cfg(10_000), Duration::from_secs(30), move |comm| {
            let mut out = [0f32; 5];
            assert_invalid(
                comm.all_reduce_into(&[1f32; 4], &mut out, ReduceOp::Sum),
                "send 4 elements, recv 5",
            );
            assert_invalid(
                comm.all_reduce_bytes(None, &mut [0u8; 7], DataType::F32, ReduceOp::Sum),
                "7 bytes of f32",
            );
            assert_invalid(
                comm.all_reduce_bytes(None, &mut [0u8; 3], DataType::BF16, ReduceOp::Max),
                "3 bytes of bf16",
            );
            assert_invalid(
                comm.all_reduce_bytes(
                    Some(&[0u8; 8]),
                    &mut [0u8; 12],
                    DataType::I32,
                    ReduceOp::Sum,
                ),
                "send 8 bytes, recv 12",
            );
            assert_invalid(
                comm.all_reduce_bytes(Some(&[0u8; 6]), &mut [0u8; 6], DataType::U64, ReduceOp::Sum),
                "6 bytes of u64",
            );
            // The communicator still works, in step with the other ranks.
            let want = expected::<i32>(ReduceOp::Sum, comm.size(), 33, 9);
            all_reduce_checked(&comm, ReduceOp::Sum, 33, 9, false, &want)
        });
        for r in res {
            r.unwrap_or_else(|e| panic!("{n} ranks: {e}"));
        }
    }
}

/// A mismatch whose wrong message sits behind a receive that is not ready yet (rank 0's tree
/// reduce waits for child 1 before child 2; ranks 1 and 2 call barrier instead) is reported at
/// once, not at the timeout.
#[test]
fn mismatch_behind_an_unready_receive_is_prompt() {
    let t0 = std::time::Instant::now();
    let cfg = oxccl::Config {
        algo: Some("reduce:tree".into()),
        ..test_cfg(20_000)
    };
    let res = run_ranks(3, cfg, Duration::from_secs(60), |comm| {
        if comm.rank() == 0 {
            let mut out = vec![0f32; 8];
            comm.reduce(&[1f32; 8], &mut out, oxccl::ReduceOp::Sum, 0)
        } else {
            comm.barrier()
        }
    });
    for r in res {
        assert!(r.is_err(), "{r:?}");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
}

/// The same for a one-shot (direct) all-reduce over shm, which runs its steps in order: rank 0
/// waits for rank 2 first, which makes no call until rank 0 has returned, while rank 1's
/// message (count 11 against 10) is already there. Rank 0 must report that mismatch at once,
/// not wait for rank 2 until the timeout.
#[test]
fn mismatch_behind_an_unready_receive_is_prompt_in_a_one_shot_call() {
    let timeout = Duration::from_secs(20);
    let cfg = Config {
        algo: Some("allreduce:direct".into()),
        transport: Some(TransportKind::Shm),
        ..test_cfg(timeout.as_millis() as u64)
    };
    let rank0_returned = Arc::new(Barrier::new(2));
    let res = run_ranks(3, cfg, 3 * timeout, move |comm| {
        let count = if comm.rank() == 1 { 11 } else { 10 };
        if comm.rank() == 2 {
            rank0_returned.wait();
        }
        let t0 = Instant::now();
        let mut buf = vec![1f32; count];
        let r = comm.all_reduce(&mut buf, ReduceOp::Sum);
        if comm.rank() == 0 {
            rank0_returned.wait();
        }
        (r, t0.elapsed())
    });
    let (first, took) = &res[0];
    assert!(
        first
            .as_ref()
            .is_err_and(|e| e.kind() == oxccl::ErrorKind::Mismatch && e.peer() == Some(1)),
        "rank 0: {first:?}"
    );
    assert!(*took < timeout / 4, "rank 0 took {took:?}");
    for (rank, (r, _)) in res.iter().enumerate() {
        assert!(r.is_err(), "rank {rank}: {r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// A rank goes silent between calls (processes as ranks): heartbeats and revoke.

const SILENT_CHILD: &str = "child_one_rank_goes_silent";
const SILENT_TIMEOUT: Duration = Duration::from_millis(3000);
const SILENT_VICTIM: usize = 2;

/// Child entry: one ring all-reduce (rank 0 then has links to 1 and 3 only), `READY`; then the
/// victim stops itself and the others wait, making no call, until `async_error` reports a
/// failure (`NOTICED ms=<ms> peer=<peer> <error>`), then make one more call (`NEXT peer=<peer>
/// <error>`) and exit 0.
#[test]
#[ignore = "a child process of this file's tests (they run it with --include-ignored)"]
fn child_one_rank_goes_silent() {
    if !is_child(SILENT_CHILD) {
        return;
    }
    child_main(|| {
        let comm = Communicator::from_env().map_err(|e| format!("from_env: {e}"))?;
        let (rank, n) = (comm.rank(), comm.size());
        let mut buf = vec![1f32; 4096];
        comm.all_reduce(&mut buf, ReduceOp::Sum)
            .map_err(|e| format!("first all-reduce: {e}"))?;
        if buf.iter().any(|&x| x != n as f32) {
            return Err(format!("first all-reduce: got {} want {n}", buf[0]));
        }
        println!("READY");
        if rank == SILENT_VICTIM {
            // The whole process stops, heartbeat thread included; its sockets stay open and it
            // does not exit, so no link can tell. The parent SIGKILLs it at the end.
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(libc::SIGSTOP) };
            return Err("the silent rank was resumed".into());
        }
        let t0 = Instant::now();
        let limit = SILENT_TIMEOUT + Duration::from_secs(30);
        // Poll the communicator's state (no call in flight) until it reports the failure.
        let e = loop {
            if let Some(e) = comm.async_error() {
                break e;
            }
            if t0.elapsed() > limit {
                return Err(format!("no failure noticed within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        println!(
            "NOTICED ms={} peer={:?} {e}",
            t0.elapsed().as_millis(),
            e.peer()
        );
        let t1 = Instant::now();
        match comm.all_reduce(&mut buf, ReduceOp::Sum) {
            Ok(()) => Err("the call after the revoke succeeded".into()),
            Err(e2) => {
                println!(
                    "NEXT ms={} peer={:?} {e2}",
                    t1.elapsed().as_millis(),
                    e2.peer()
                );
                Ok(())
            }
        }
    });
}

#[test]
fn silent_rank_is_revoked_everywhere_tcp() {
    silent_rank("tcp");
}

#[test]
fn silent_rank_is_revoked_everywhere_shm() {
    silent_rank("shm");
}

fn silent_rank(transport: &str) {
    let n = 4;
    let timeout_ms = SILENT_TIMEOUT.as_millis().to_string();
    let mut g = ProcGroup::spawn(
        SILENT_CHILD,
        n,
        &[
            ("OXCCL_TIMEOUT_MS", &timeout_ms),
            ("OXCCL_ALGO", "allreduce:ring"),
            ("OXCCL_TRANSPORT", transport),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut noticed: Vec<Option<String>> = vec![None; n];
    let mut next: Vec<Option<String>> = vec![None; n];
    while (0..n)
        .filter(|&r| r != SILENT_VICTIM)
        .any(|r| next[r].is_none())
    {
        let Some((rank, line)) = g.next_line(deadline) else {
            panic!("the survivors did not report within 90 s:\n{}", g.report());
        };
        if line.starts_with("NOTICED") {
            noticed[rank] = Some(line);
        } else if line.starts_with("NEXT") {
            next[rank] = Some(line);
        }
    }
    g.kill(SILENT_VICTIM);
    g.wait(Instant::now() + Duration::from_secs(30), false);
    let report = g.report();
    let victim = SILENT_VICTIM;
    for r in (0..n).filter(|&r| r != victim) {
        assert!(
            g.status(r).is_some_and(|s| s.success()),
            "rank {r} did not exit cleanly:\n{report}"
        );
        let seen = noticed[r].as_deref().unwrap_or_default();
        assert!(
            seen.contains(&format!("peer=Some({victim})")) && seen.contains("peer lost"),
            "rank {r} should learn that rank {victim} is lost: {seen}\n{report}"
        );
        let ms = ms_field(seen);
        assert!(
            ms <= (SILENT_TIMEOUT + Duration::from_secs(3)).as_millis() as u64,
            "rank {r} took {ms} ms to learn of it: {seen}"
        );
        println!("{transport} rank {r}: {seen}");
        let after = next[r].as_deref().unwrap_or_default();
        assert!(
            after.contains(&format!("peer=Some({victim})")),
            "rank {r}'s next call should fail naming rank {victim}: {after}"
        );
        let ms = ms_field(after);
        assert!(
            ms < 1000,
            "rank {r}'s next call took {ms} ms to fail: {after}"
        );
    }
}

/// The `ms=<n>` field of a child's report line (u64::MAX when absent).
fn ms_field(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}
