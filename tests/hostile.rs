//! Hostile clients against a live job.
//!
//! Three ranks (threads of this process, TCP links) loop checked all-reduces while hostile
//! clients attack both the rendezvous store (served by rank 0, in this process) and rank 1's peer
//! listener (found through its card in the store, `comm/card/1`):
//!
//! | attack | store | peer |
//! |---|---|---|
//! | 4 KiB of random garbage | x | x |
//! | an HTTP request | x | x |
//! | the handshake with a wrong secret (wrong HMAC) | x | x |
//! | the handshake for the other purpose (store <-> peer) | x | x |
//! | a valid handshake, then a request whose key length is 4 GiB | x | |
//! | a valid handshake, then a request whose value length is 4 GiB | x | |
//! | a valid handshake, then a malformed key list claiming 2^30 keys | x | |
//! | a valid handshake, then a garbage hello | | x |
//! | a valid handshake, then silence (no hello) | | x |
//! | slowloris: a valid-looking handshake, one byte per 100 ms | x | x |
//! | slowloris: one byte per second (the trickle) | x | x |
//! | a flood of 64 concurrent garbage connections | x | x |
//!
//! Checked: every all-reduce of the job stays correct; the job's mean iteration time during the
//! attacks stays within a generous bound of its time before them, and no iteration stalls; every
//! client is disconnected (EOF or reset) within the server's deadline (10 s handshake limit, plus
//! 2 s of slack) — garbage within 2 s; the largest single allocation while under attack stays far
//! below the lengths the attackers announce; the process's threads and descriptors return to
//! their level before the attacks once the clients are gone. Times to disconnection are printed.

mod common;
#[path = "common/counting.rs"]
mod counting;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{all_reduce_checked, expected};
use counting::LARGEST;
use oxccl::internals::bootstrap::{PURPOSE_PEER, PURPOSE_STORE, StoreClient, handshake};
use oxccl::{Communicator, Config, ReduceOp, TransportKind, UniqueId};

const NRANKS: usize = 3;
/// The servers' handshake limit (store: `HANDSHAKE_TIMEOUT`; peer listener: its accept limit).
const SERVER_DEADLINE: Duration = Duration::from_secs(10);
/// Slack on top of a server deadline before a client counts as not refused.
const SLACK: Duration = Duration::from_secs(2);
/// Largest allocation the job itself makes (its 512 KiB slots, 100k-element buffers, scratch),
/// with room to spare; an attacker announcing more must not cause an allocation this large.
const ALLOC_BOUND: usize = 16 << 20;

fn proc_status(field: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Reads (and discards) until the server closes the connection or resets it; returns how long
/// that took from `since`, or `Err` if the connection is still open at `deadline`.
fn wait_closed(s: &mut TcpStream, since: Instant, deadline: Instant) -> Result<Duration, String> {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("still open after {:?}", since.elapsed()));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(since.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("still open after {:?}", since.elapsed()));
            }
            // Reset, broken pipe...: disconnected.
            Err(_) => return Ok(since.elapsed()),
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Pseudo-random bytes (SplitMix64), deterministic per seed.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (common::mix(&[seed, i as u64]) >> 24) as u8)
        .collect()
}

/// A handshake HELLO for `purpose` that looks valid (magic, version), with a random nonce.
fn fake_hello(purpose: u8) -> Vec<u8> {
    let mut h = b"OXHS".to_vec();
    h.push(1);
    h.push(purpose);
    h.extend(noise(7, 32));
    h
}

/// Sends `bytes` one at a time, `gap` apart, until the server hangs up; then keeps trickling
/// random bytes (a slowloris never stops on its own). Returns the time to disconnection.
fn trickle(
    addr: SocketAddr,
    bytes: &[u8],
    gap: Duration,
    limit: Duration,
) -> Result<Duration, String> {
    let mut s = connect(addr);
    let t0 = Instant::now();
    let deadline = t0 + limit;
    s.set_nonblocking(true).unwrap();
    let tail = noise(11, 4096);
    let mut scratch = [0u8; 256];
    for &b in bytes.iter().chain(tail.iter()) {
        // Drain whatever the server sent (its HELLO), and notice its hang-up.
        loop {
            match s.read(&mut scratch) {
                Ok(0) => return Ok(t0.elapsed()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(t0.elapsed()),
            }
        }
        match s.write(&[b]) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return Ok(t0.elapsed()),
        }
        if Instant::now() >= deadline {
            return Err(format!("still open after {:?}", t0.elapsed()));
        }
        // Wait `gap` for the hang-up, without sleeping blind: poll the socket for input.
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&s),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, gap.as_millis() as i32) };
    }
    Err("the trickle ran out before the server hung up".into())
}

fn raw_attack(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Result<Duration, String> {
    let mut s = connect(addr);
    let t0 = Instant::now();
    // The server may hang up before reading it all: a failed write is fine.
    let _ = s.write_all(bytes);
    wait_closed(&mut s, t0, t0 + limit)
}

fn wrong_secret(addr: SocketAddr, purpose: u8, secret: [u8; 16]) -> Result<Duration, String> {
    let mut s = connect(addr);
    let t0 = Instant::now();
    let mut wrong = secret;
    wrong[0] ^= 1;
    match handshake::client(&mut s, &wrong, purpose, SERVER_DEADLINE) {
        Err(e) if matches!(e.kind(), oxccl::ErrorKind::Auth | oxccl::ErrorKind::System) => {}
        Err(e) => return Err(format!("expected an authentication failure, got {e}")),
        Ok(()) => return Err("a wrong secret passed the handshake".into()),
    }
    wait_closed(&mut s, t0, t0 + SLACK)
}

fn wrong_purpose(addr: SocketAddr, purpose: u8, secret: [u8; 16]) -> Result<Duration, String> {
    let mut s = connect(addr);
    let t0 = Instant::now();
    match handshake::client(&mut s, &secret, purpose, SERVER_DEADLINE) {
        Err(e) if matches!(e.kind(), oxccl::ErrorKind::Auth | oxccl::ErrorKind::System) => {}
        Err(e) => return Err(format!("expected a refusal, got {e}")),
        Ok(()) => return Err("the wrong purpose passed the handshake".into()),
    }
    wait_closed(&mut s, t0, t0 + SLACK)
}

/// A valid handshake (the attacker knows the secret), then `bytes`.
fn authed_then(
    addr: SocketAddr,
    purpose: u8,
    secret: [u8; 16],
    bytes: &[u8],
    limit: Duration,
) -> Result<Duration, String> {
    let mut s = connect(addr);
    handshake::client(&mut s, &secret, purpose, SERVER_DEADLINE)
        .map_err(|e| format!("handshake with the right secret failed: {e}"))?;
    let t0 = Instant::now();
    let _ = s.write_all(bytes);
    wait_closed(&mut s, t0, t0 + limit)
}

/// A valid handshake to the store, then a SET announcing a 1 MiB value whose bytes trickle in
/// one per `gap` (an insider's slowloris: it holds a store thread unless requests have a deadline).
fn authed_trickle(
    addr: SocketAddr,
    secret: [u8; 16],
    gap: Duration,
    limit: Duration,
) -> Result<Duration, String> {
    let mut s = connect(addr);
    handshake::client(&mut s, &secret, PURPOSE_STORE, SERVER_DEADLINE)
        .map_err(|e| format!("handshake with the right secret failed: {e}"))?;
    let head = store_request(1, 3, b"key", 1 << 20, b"");
    let t0 = Instant::now();
    s.write_all(&head).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(gap)).unwrap();
    let mut buf = [0u8; 64];
    while t0.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Ok(t0.elapsed()),
            Ok(_) => return Err("the store answered a request it cannot have received".into()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Ok(t0.elapsed()),
        }
        if s.write(&[0]).is_err() {
            return Ok(t0.elapsed());
        }
    }
    Err(format!("still open after {:?}", t0.elapsed()))
}

fn store_request(op: u8, klen: u32, key: &[u8], vlen: u32, value: &[u8]) -> Vec<u8> {
    let mut r = vec![op];
    r.extend_from_slice(&klen.to_le_bytes());
    r.extend_from_slice(key);
    r.extend_from_slice(&vlen.to_le_bytes());
    r.extend_from_slice(value);
    r
}

/// 64 concurrent garbage connections; returns the slowest disconnection.
fn flood(addr: SocketAddr) -> Result<Duration, String> {
    let t0 = Instant::now();
    let socks: Vec<TcpStream> = (0..64)
        .map(|i| {
            let mut s = connect(addr);
            let _ = s.write_all(&noise(100 + i, 64));
            s
        })
        .collect();
    let mut worst = Duration::ZERO;
    for mut s in socks {
        worst = worst.max(wait_closed(&mut s, t0, t0 + SLACK * 2)?);
    }
    Ok(worst)
}

struct Outcome {
    name: String,
    target: &'static str,
    result: Result<Duration, String>,
    limit: Duration,
}

/// One rank's loop: checked all-reduces until every rank agrees to stop. Returns the duration of
/// each iteration, labelled with the phase it ran in.
fn rank_loop(comm: Communicator, phase: Arc<AtomicU32>) -> Result<Vec<(u32, Duration)>, String> {
    const COUNTS: [usize; 2] = [1024, 65536];
    let wants: Vec<Vec<Vec<f32>>> = COUNTS
        .iter()
        .map(|&c| {
            (0..4)
                .map(|salt| expected::<f32>(ReduceOp::Sum, NRANKS, c, salt))
                .collect()
        })
        .collect();
    let mut times = Vec::new();
    for iter in 0u64.. {
        let t0 = Instant::now();
        // Everyone agrees on the phase (and on stopping) through the job itself.
        let mut p = [phase.load(Ordering::SeqCst)];
        comm.all_reduce(&mut p, ReduceOp::Max)
            .map_err(|e| format!("iter {iter}: phase all-reduce: {e}"))?;
        if p[0] >= 2 {
            break;
        }
        let k = (iter % 2) as usize;
        let salt = iter % 4;
        all_reduce_checked(
            &comm,
            ReduceOp::Sum,
            COUNTS[k],
            salt,
            iter % 3 == 0,
            &wants[k][salt as usize],
        )
        .map_err(|e| format!("iter {iter}: {e}"))?;
        times.push((p[0], t0.elapsed()));
        if comm.rank() == 0 && p[0] == 0 && times.len() == 200 {
            // Baseline done: let the main thread start the attacks.
            phase.fetch_max(1, Ordering::SeqCst);
        }
    }
    Ok(times)
}

fn mean(v: &[Duration]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.iter().sum::<Duration>() / v.len() as u32
}

fn card_addr(card: &[u8]) -> SocketAddr {
    // "2 <addr> <pid> <boot> <netns> <shm> <host>"
    let s = std::str::from_utf8(card).expect("utf-8 card");
    s.split(' ')
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unreadable card {s:?}"))
}

#[test]
fn hostile_clients_do_not_disturb_a_running_job() {
    let t_start = Instant::now();
    let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let secret = id.secret;
    let store = id.addr;
    let cfg = Config {
        timeout: Some(Duration::from_secs(30)),
        transport: Some(TransportKind::Tcp),
        ..Config::default()
    };
    let phase = Arc::new(AtomicU32::new(0));
    let (tx, rx) = mpsc::channel();
    let mut ranks = Vec::new();
    for rank in 0..NRANKS {
        let (id, cfg, phase, tx) = (id.clone(), cfg.clone(), phase.clone(), tx.clone());
        ranks.push(std::thread::spawn(move || {
            let r = Communicator::init(rank, NRANKS, &id, cfg)
                .map_err(|e| format!("rank {rank} init: {e}"))
                .and_then(|c| rank_loop(c, phase));
            let _ = tx.send((rank, r));
        }));
    }
    drop(tx);

    // Wait for the baseline (rank 0 moves the phase to 1 after 200 iterations).
    let limit = Instant::now() + Duration::from_secs(60);
    while phase.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < limit, "the job made no progress in 60 s");
        if let Ok((r, res)) = rx.recv_timeout(Duration::from_millis(20)) {
            panic!("rank {r} ended before the attacks: {res:?}");
        }
    }
    // Rank 1's peer listener, from its card (as a rank would find it).
    let mut client = StoreClient::connect(store, &secret, Duration::from_secs(10)).unwrap();
    let peer = card_addr(&client.get("comm/card/1", Duration::from_secs(10)).unwrap());
    drop(client);
    // Threads settle once the links are up; measure after the baseline.
    let threads0 = proc_status("Threads:");
    let fds0 = open_fds();
    let rss0 = proc_status("VmRSS:");
    LARGEST.store(0, Ordering::SeqCst);
    eprintln!(
        "baseline: store {store}, rank 1 listens on {peer}; {threads0} threads, {fds0} fds, {rss0} kB RSS"
    );

    // The attacks, all at once, each on its own thread.
    let quick = SLACK;
    let slow = SERVER_DEADLINE + SLACK;
    type Attack = Box<dyn FnOnce() -> Result<Duration, String> + Send>;
    let mut attacks: Vec<(String, &'static str, Duration, Attack)> = Vec::new();
    for (target, addr, purpose, other) in [
        ("store", store, PURPOSE_STORE, PURPOSE_PEER),
        ("peer", peer, PURPOSE_PEER, PURPOSE_STORE),
    ] {
        attacks.push((
            "4 KiB of garbage".into(),
            target,
            quick,
            Box::new(move || raw_attack(addr, &noise(1, 4096), quick)),
        ));
        attacks.push((
            "an HTTP request".into(),
            target,
            quick,
            Box::new(move || raw_attack(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", quick)),
        ));
        attacks.push((
            "wrong secret (wrong HMAC)".into(),
            target,
            quick,
            Box::new(move || wrong_secret(addr, purpose, secret)),
        ));
        attacks.push((
            "handshake for the other purpose".into(),
            target,
            quick,
            Box::new(move || wrong_purpose(addr, other, secret)),
        ));
        attacks.push((
            "slowloris, 1 byte / 100 ms".into(),
            target,
            slow,
            Box::new(move || trickle(addr, &fake_hello(purpose), Duration::from_millis(100), slow)),
        ));
        attacks.push((
            "slowloris, 1 byte / s".into(),
            target,
            slow,
            Box::new(move || trickle(addr, &fake_hello(purpose), Duration::from_secs(1), slow)),
        ));
        attacks.push((
            "64 concurrent garbage connections".into(),
            target,
            quick * 2,
            Box::new(move || flood(addr)),
        ));
    }
    attacks.push((
        "authenticated, then key length 4 GiB".into(),
        "store",
        quick,
        Box::new(move || {
            let req = store_request(1, u32::MAX, b"", 0, b"");
            authed_then(store, PURPOSE_STORE, secret, &req, quick)
        }),
    ));
    attacks.push((
        "authenticated, then value length 4 GiB".into(),
        "store",
        quick,
        Box::new(move || {
            let req = store_request(1, 1, b"k", u32::MAX, b"");
            authed_then(store, PURPOSE_STORE, secret, &req, quick)
        }),
    ));
    attacks.push((
        "authenticated, then a 1 MiB set trickled 1 byte / 100 ms".into(),
        "store",
        slow,
        Box::new(move || authed_trickle(store, secret, Duration::from_millis(100), slow)),
    ));
    attacks.push((
        "authenticated, then half a request and silence".into(),
        "store",
        slow,
        Box::new(move || {
            let req = store_request(1, 3, b"key", 1 << 20, &[0; 100]);
            authed_then(store, PURPOSE_STORE, secret, &req, slow)
        }),
    ));
    attacks.push((
        "authenticated, then unknown op 0xEE".into(),
        "store",
        quick,
        Box::new(move || authed_then(store, PURPOSE_STORE, secret, &[0xEE; 64], quick)),
    ));
    attacks.push((
        "authenticated, then a hello of garbage".into(),
        "peer",
        quick,
        Box::new(move || authed_then(peer, PURPOSE_PEER, secret, &noise(3, 28), quick)),
    ));
    attacks.push((
        "authenticated, then no hello (silence)".into(),
        "peer",
        slow,
        Box::new(move || authed_then(peer, PURPOSE_PEER, secret, &[], slow)),
    ));
    let (otx, orx) = mpsc::channel();
    let mut clients = Vec::new();
    for (name, target, limit, f) in attacks {
        let otx = otx.clone();
        clients.push(std::thread::spawn(move || {
            let result = f();
            let _ = otx.send(Outcome {
                name,
                target,
                result,
                limit,
            });
        }));
    }
    drop(otx);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let limit = Instant::now() + slow + Duration::from_secs(10);
    while outcomes.len() < clients.len() {
        let left = limit.saturating_duration_since(Instant::now());
        match orx.recv_timeout(left) {
            Ok(o) => outcomes.push(o),
            Err(_) => panic!("attack clients did not finish in time"),
        }
    }
    for c in clients {
        c.join().expect("attack thread");
    }
    let largest = LARGEST.load(Ordering::SeqCst);

    // While the job still runs: the servers dropped the refused connections, so threads and
    // descriptors are back to where they were. A refused connection's thread ends by itself
    // shortly after its client has seen the hang-up; poll for that, with a deadline.
    let settle = Instant::now() + Duration::from_secs(10);
    let (mut threads1, mut fds1) = (proc_status("Threads:"), open_fds());
    while (threads1 > threads0 || fds1 > fds0) && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(20));
        (threads1, fds1) = (proc_status("Threads:"), open_fds());
    }
    let rss1 = proc_status("VmRSS:");

    // A few more iterations after the attacks, then stop the job.
    phase.store(2, Ordering::SeqCst);
    let mut times: Vec<Vec<(u32, Duration)>> = vec![Vec::new(); NRANKS];
    let limit = Instant::now() + Duration::from_secs(60);
    for _ in 0..NRANKS {
        let left = limit.saturating_duration_since(Instant::now());
        let (r, res) = rx.recv_timeout(left).expect("the job did not stop in time");
        times[r] = res.unwrap_or_else(|e| panic!("rank {r}: {e}"));
    }
    for h in ranks {
        h.join().expect("rank thread");
    }

    println!("\n| target | attack | outcome | time to disconnection | limit |");
    println!("|---|---|---|---|---|");
    let mut failures = Vec::new();
    for o in &outcomes {
        let (outcome, t) = match &o.result {
            Ok(t) if *t <= o.limit => ("refused/disconnected", format!("{t:.3?}")),
            Ok(t) => ("disconnected too late", format!("{t:.3?}")),
            Err(e) => ("NOT REFUSED", e.clone()),
        };
        if outcome != "refused/disconnected" {
            failures.push(format!("{} / {}: {outcome} ({t})", o.target, o.name));
        }
        println!(
            "| {} | {} | {outcome} | {t} | {:?} |",
            o.target, o.name, o.limit
        );
    }
    let r0: &Vec<(u32, Duration)> = &times[0];
    let before: Vec<Duration> = r0.iter().filter(|t| t.0 == 0).map(|t| t.1).collect();
    let during: Vec<Duration> = r0.iter().filter(|t| t.0 == 1).map(|t| t.1).collect();
    let worst = during.iter().max().copied().unwrap_or_default();
    println!(
        "\njob (rank 0): {} iterations before the attacks, mean {:.3?}; {} during, mean {:.3?}, worst {:.3?}",
        before.len(),
        mean(&before),
        during.len(),
        mean(&during),
        worst
    );
    println!(
        "largest allocation under attack: {largest} B (bound {ALLOC_BOUND}); threads {threads0} -> {threads1}, \
         fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} kB; test took {:.1?}",
        t_start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "clients not refused in time:\n{}",
        failures.join("\n")
    );
    assert!(
        during.len() >= 10,
        "the job ran only {} iterations during {:?} of attacks",
        during.len(),
        slow
    );
    let bound = mean(&before) * 10 + Duration::from_millis(20);
    assert!(
        mean(&during) <= bound,
        "the job slowed down under attack: mean {:?} vs {:?} before (bound {bound:?})",
        mean(&during),
        mean(&before)
    );
    assert!(
        worst < Duration::from_secs(2),
        "an iteration stalled for {worst:?} under attack"
    );
    assert!(
        largest < ALLOC_BOUND,
        "an allocation of {largest} bytes happened under attack"
    );
    assert!(
        threads1 <= threads0,
        "threads grew: {threads0} -> {threads1}"
    );
    assert!(fds1 <= fds0, "descriptors leaked: {fds0} -> {fds1}");
    assert!(
        rss1 < rss0 + 64 * 1024,
        "RSS grew by more than 64 MiB: {rss0} -> {rss1} kB"
    );
}
