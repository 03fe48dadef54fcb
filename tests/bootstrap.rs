//! Bootstrap: unique id, handshake, rendezvous store and environment discovery, on 127.0.0.1
//! with ephemeral ports. Every wait is bounded; nothing sleeps to synchronise.

#[path = "common/counting.rs"]
mod counting;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use counting::LARGEST;
use oxccl::internals::bootstrap::{
    EnvInfo, PURPOSE_PEER, PURPOSE_STORE, StoreClient, StoreServer, UniqueId, barrier,
    discover_from, handshake,
};
use oxccl::{Error, ErrorKind};
use proptest::prelude::*;

const T: Duration = Duration::from_secs(10);
const SECRET: [u8; 16] = *b"0123456789abcdef";

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn server() -> StoreServer {
    StoreServer::start(TcpListener::bind(local()).unwrap(), SECRET).unwrap()
}

fn client(s: &StoreServer) -> StoreClient {
    StoreClient::connect(s.addr(), &SECRET, T).unwrap()
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(local()).unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// Reads until EOF or error; returns how long that took. Panics if the peer keeps it open past `limit`.
fn wait_closed(s: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("connection still open after {limit:?}")
            }
            Err(_) => return start.elapsed(),
        }
    }
}

// ------------------------------------------------------------------------------------- UniqueId

#[test]
fn unique_id_round_trips_and_serves_store() {
    let id = UniqueId::bind(local()).unwrap();
    assert_eq!(UniqueId::from_bytes(&id.to_bytes()).unwrap(), id);
    assert_eq!(id.to_string().parse::<UniqueId>().unwrap(), id);
    assert!(!format!("{id:?}").contains(&oxccl::internals::bootstrap::secret_hex(&id.secret)));

    let store = StoreServer::start(
        id.take_listener().expect("bind registers the listener"),
        id.secret,
    )
    .unwrap();
    assert_eq!(store.addr(), id.addr);
    let mut c = StoreClient::connect(id.addr, &id.secret, T).unwrap();
    c.set("k", b"v").unwrap();
    assert_eq!(c.get("k", T).unwrap(), b"v");
}

#[test]
fn unique_id_new_picks_an_address() {
    let id = UniqueId::new().unwrap();
    assert!(id.addr.is_ipv4());
    assert_ne!(id.addr.port(), 0);
    assert!(id.take_listener().is_some());
}

proptest! {
    #[test]
    fn garbage_ids_never_panic(bytes in proptest::collection::vec(any::<u8>(), 128), s in "\\PC*") {
        let mut b = [0u8; 128];
        b.copy_from_slice(&bytes);
        if let Err(e) = UniqueId::from_bytes(&b) {
            prop_assert!(e.kind() == oxccl::ErrorKind::InvalidArgument);
        }
        if let Err(e) = s.parse::<UniqueId>() {
            prop_assert!(e.kind() == oxccl::ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn ids_round_trip(ip in any::<[u8; 4]>(), port in any::<u16>(), secret in any::<[u8; 16]>()) {
        let id = UniqueId { addr: SocketAddr::from((ip, port)), secret };
        prop_assert_eq!(UniqueId::from_bytes(&id.to_bytes()).unwrap(), id.clone());
        prop_assert_eq!(id.to_string().parse::<UniqueId>().unwrap(), id);
    }
}

// ------------------------------------------------------------------------------------ handshake

#[test]
fn handshake_succeeds_and_restores_timeouts() {
    let (mut c, mut s) = tcp_pair();
    let t = thread::spawn(move || {
        // "No limit" must not overflow the deadline arithmetic.
        handshake::server(&mut s, &SECRET, PURPOSE_PEER, Duration::MAX).unwrap();
        assert_eq!(s.read_timeout().unwrap(), None);
        assert_eq!(s.write_timeout().unwrap(), None);
        s.write_all(b"after").unwrap();
    });
    handshake::client(&mut c, &SECRET, PURPOSE_PEER, T).unwrap();
    assert_eq!(c.read_timeout().unwrap(), None);
    assert_eq!(c.write_timeout().unwrap(), None);
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after");
    t.join().unwrap();
}

#[test]
fn handshake_wrong_secret_fails_on_both_sides() {
    let (mut c, mut s) = tcp_pair();
    let srv_addr = c.peer_addr().unwrap();
    let t = thread::spawn(move || handshake::server(&mut s, &SECRET, PURPOSE_PEER, T));
    let ce = handshake::client(&mut c, &[9; 16], PURPOSE_PEER, T).unwrap_err();
    let se = t.join().unwrap().unwrap_err();
    assert!(
        ce.kind() == oxccl::ErrorKind::Auth && {
            let m = ce.message();
            m.contains(&srv_addr.to_string())
        },
        "{ce}"
    );
    assert!(se.kind() == oxccl::ErrorKind::Auth, "{se}");
}

#[test]
fn handshake_slowloris_times_out() {
    let (mut c, mut s) = tcp_pair();
    c.write_all(b"O").unwrap();
    let start = Instant::now();
    let e =
        handshake::server(&mut s, &SECRET, PURPOSE_STORE, Duration::from_millis(200)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(s.read_timeout().unwrap(), None);
}

#[test]
fn handshake_silent_server_times_out() {
    let (mut c, _s) = tcp_pair();
    let start = Instant::now();
    let e =
        handshake::client(&mut c, &SECRET, PURPOSE_PEER, Duration::from_millis(200)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

// ---------------------------------------------------------------------------------------- store

#[test]
fn store_set_get_add_wait_across_threads() {
    let s = server();
    let n = 6;
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|r| {
            let (addr, start) = (s.addr(), start.clone());
            thread::spawn(move || {
                let mut c = StoreClient::connect(addr, &SECRET, T).unwrap();
                start.wait();
                // Rank r reads rank (r+1)'s card before it is necessarily written: get blocks.
                c.set(&format!("card/{r}"), format!("rank {r}").as_bytes())
                    .unwrap();
                let next = (r + 1) % n;
                assert_eq!(
                    c.get(&format!("card/{next}"), T).unwrap(),
                    format!("rank {next}").as_bytes()
                );
                let v = c.add("counter", 10).unwrap();
                assert!(v % 10 == 0 && (10..=10 * n as i64).contains(&v));
                let keys: Vec<String> = (0..n).map(|i| format!("card/{i}")).collect();
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                c.wait(&refs, T).unwrap();
                assert!(c.check(&refs).unwrap());
                barrier(&mut c, "b0", n, T).unwrap();
                assert_eq!(c.add("counter", 0).unwrap(), 10 * n as i64);
                barrier(&mut c, "b1", n, T).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = client(&s);
    assert!(c.delete("card/0").unwrap());
    assert!(!c.delete("card/0").unwrap());
    assert!(!c.check(&["card/0", "card/1"]).unwrap());
    assert!(c.check(&[]).unwrap());
    // A counter is 8 bytes; adding to a value that is not is a clear error, and the
    // connection keeps working.
    c.set("text", b"abc").unwrap();
    let e = c.add("text", 1).unwrap_err();
    assert!(is(&e, ErrorKind::System, "not a counter"), "{e}");
    c.set("empty", b"").unwrap();
    assert_eq!(c.get("empty", T).unwrap(), b"");
    let big = vec![7u8; 3 << 20];
    c.set("big", &big).unwrap();
    assert_eq!(c.get("big", T).unwrap(), big);
}

#[test]
fn store_get_and_wait_time_out_promptly() {
    let s = server();
    let mut c = client(&s);
    let start = Instant::now();
    let e = c.get("never/set", Duration::from_millis(150)).unwrap_err();
    let took = start.elapsed();
    assert!(is(&e, ErrorKind::Timeout, "never/set"), "{e}");
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(3),
        "{took:?}"
    );

    c.set("here", b"1").unwrap();
    let e = c
        .wait(&["here", "missing/one"], Duration::from_millis(100))
        .unwrap_err();
    assert!(
        is(&e, ErrorKind::Timeout, "missing/one") && !e.message().contains("\"here\""),
        "{e}"
    );
    // The connection is still usable after a timeout reply; a huge timeout is fine.
    assert_eq!(c.get("here", Duration::MAX).unwrap(), b"1");
    c.wait(&["here"], Duration::MAX).unwrap();

    let e = barrier(&mut c, "lonely", 2, Duration::from_millis(100)).unwrap_err();
    assert!(is(&e, ErrorKind::Timeout, "1 of 2"), "{e}");
}

#[test]
fn store_refuses_wrong_secret_and_keeps_serving() {
    let s = server();
    let mut good = client(&s);
    good.set("a", b"1").unwrap();
    let e = StoreClient::connect(s.addr(), &[0xee; 16], T).unwrap_err();
    assert!(
        e.kind() == oxccl::ErrorKind::Auth && {
            let m = e.message();
            m.contains(&s.addr().to_string())
        },
        "{e}"
    );

    // A raw client that skips the handshake and sends a SET frame is closed, and changes nothing.
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    let mut frame = vec![1u8];
    frame.extend_from_slice(&1u32.to_le_bytes());
    frame.push(b'a');
    frame.extend_from_slice(&4u32.to_le_bytes());
    frame.extend_from_slice(b"evil");
    frame.extend_from_slice(&0u32.to_le_bytes());
    let _ = raw.write_all(&frame);
    wait_closed(&mut raw, T);

    let mut good2 = client(&s);
    assert_eq!(good2.get("a", T).unwrap(), b"1");
    assert!(!good2.check(&["evil"]).unwrap());
    good.set("b", b"2").unwrap();
    assert_eq!(good2.get("b", T).unwrap(), b"2");
}

/// Authenticates a raw socket to the store, for tests that then misbehave.
fn authed_raw(s: &StoreServer) -> TcpStream {
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    handshake::client(&mut raw, &SECRET, PURPOSE_STORE, T).unwrap();
    raw
}

#[test]
fn store_disconnects_huge_lengths_without_allocating() {
    let s = server();
    let mut good = client(&s);
    good.set("x", b"1").unwrap();

    // Huge value length (4 GiB): over the 64 MiB bound.
    let before = LARGEST.load(Ordering::Relaxed);
    let mut raw = authed_raw(&s);
    let mut frame = vec![1u8];
    frame.extend_from_slice(&1u32.to_le_bytes());
    frame.push(b'k');
    frame.extend_from_slice(&u32::MAX.to_le_bytes());
    raw.write_all(&frame).unwrap();
    wait_closed(&mut raw, T);

    // Huge key length.
    let mut raw = authed_raw(&s);
    let mut frame = vec![2u8];
    frame.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
    raw.write_all(&frame).unwrap();
    wait_closed(&mut raw, T);

    // A value within bounds announced but never sent: nothing of its size is allocated upfront.
    let mut raw = authed_raw(&s);
    let mut frame = vec![1u8];
    frame.extend_from_slice(&1u32.to_le_bytes());
    frame.push(b'k');
    frame.extend_from_slice(&(60u32 << 20).to_le_bytes());
    frame.extend_from_slice(b"only a few bytes");
    raw.write_all(&frame).unwrap();
    assert_eq!(good.get("x", T).unwrap(), b"1");
    drop(raw);

    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest < (32 << 20),
        "the store allocated {largest} bytes (before: {before})"
    );
    assert_eq!(good.get("x", T).unwrap(), b"1");
    assert!(!good.check(&["k"]).unwrap());
}

#[test]
fn store_slowloris_does_not_block_others() {
    let s = StoreServer::start_with_timeout(
        TcpListener::bind(local()).unwrap(),
        SECRET,
        Duration::from_millis(300),
    )
    .unwrap();
    let mut slow = TcpStream::connect(s.addr()).unwrap();
    slow.write_all(b"O").unwrap();
    // Other clients connect and work while the slow one stalls its handshake.
    let start = Instant::now();
    let mut c = client(&s);
    c.set("k", b"v").unwrap();
    assert_eq!(c.get("k", T).unwrap(), b"v");
    assert!(start.elapsed() < Duration::from_secs(3));
    // And the slow one is cut off at the handshake deadline.
    let closed_after = wait_closed(&mut slow, T);
    assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");
    assert_eq!(c.get("k", T).unwrap(), b"v");
}

#[test]
fn dropping_the_server_is_prompt_and_clients_see_rank0_gone() {
    let s = server();
    let addr = s.addr();
    let mut idle = client(&s);
    idle.set("k", b"v").unwrap();
    // A client blocked in a long get, one mid-handshake, one mid-request.
    let blocked = thread::spawn(move || {
        let mut c = StoreClient::connect(addr, &SECRET, T).unwrap();
        c.add("ready", 1).unwrap();
        c.get("never", Duration::from_secs(60))
    });
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"OX").unwrap();
    let mut mid = authed_raw(&s);
    mid.write_all(&[1u8, 5, 0]).unwrap();
    // Wait (bounded) until the blocked client has registered.
    let mut probe = client(&s);
    probe.wait(&["ready"], T).unwrap();

    let start = Instant::now();
    drop(s);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "drop took {took:?}");

    let e = blocked.join().unwrap().unwrap_err();
    assert!(
        (e.kind() == ErrorKind::PeerLost && e.peer() == Some(0)) || e.kind() == ErrorKind::System,
        "{e}"
    );
    let e = idle.get("k", T).unwrap_err();
    assert!(
        is(&e, ErrorKind::PeerLost, "rank 0") && e.peer() == Some(0),
        "{e}"
    );
    // Every later call fails at once too.
    assert!(idle.set("k", b"v").is_err());
    wait_closed(&mut half, T);
    wait_closed(&mut mid, T);
    // Nothing listens any more.
    let e = StoreClient::connect(addr, &SECRET, Duration::from_millis(100)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
}

#[test]
fn client_retries_until_the_root_starts() {
    // Reserve a port, free it, and start the store there only after the client began dialling.
    let l = TcpListener::bind(local()).unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let dialing = Arc::new(Barrier::new(2));
    let d2 = dialing.clone();
    let t = thread::spawn(move || {
        d2.wait();
        let mut c = StoreClient::connect(addr, &SECRET, T).unwrap();
        c.get("k", T).unwrap()
    });
    dialing.wait();
    let s = StoreServer::start(TcpListener::bind(addr).unwrap(), SECRET).unwrap();
    let mut c = client(&s);
    c.set("k", b"late").unwrap();
    assert_eq!(t.join().unwrap(), b"late");
}

#[test]
fn store_rejects_peer_purpose() {
    let s = server();
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    let e = handshake::client(&mut raw, &SECRET, PURPOSE_PEER, T).unwrap_err();
    assert!(
        e.kind() == oxccl::ErrorKind::Auth && {
            let m = e.message();
            m.contains("store")
        },
        "{e}"
    );
}

#[test]
fn client_rejects_oversized_arguments_locally() {
    let s = server();
    let mut c = client(&s);
    let long = "k".repeat(5000);
    let e = c.set(&long, b"").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = c.wait(&[&long], T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    c.set("ok", b"1").unwrap();
}

// ------------------------------------------------------------------------------------------ env

fn env(vars: &[(&str, &str)]) -> oxccl::Result<Option<EnvInfo>> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    discover_from(&move |k| map.get(k).cloned())
}

fn invalid(vars: &[(&str, &str)], needle: &str) {
    match env(vars) {
        Err(e) if e.kind() == ErrorKind::InvalidArgument => {
            let m = e.message();
            assert!(m.contains(needle), "{m:?} should mention {needle:?}")
        }
        other => panic!("expected InvalidArgument mentioning {needle:?}, got {other:?}"),
    }
}

const HEX: &str = "00112233445566778899aabbccddeeff";

#[test]
fn env_oxccl() {
    let e = env(&[
        ("OXCCL_RANK", "2"),
        ("OXCCL_WORLD_SIZE", "4"),
        ("OXCCL_LOCAL_RANK", "0"),
        ("OXCCL_ROOT", "10.0.0.1:29500"),
        ("OXCCL_SECRET", HEX),
        ("OXCCL_ROOT_EXTERNAL", "1"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        (e.rank, e.world_size, e.local_rank, e.source),
        (2, 4, Some(0), "oxccl")
    );
    assert_eq!(e.root, "10.0.0.1:29500".parse().unwrap());
    assert_eq!(
        e.secret,
        Some(oxccl::internals::bootstrap::parse_secret_hex(HEX).unwrap())
    );
    assert!(e.root_external);

    let e = env(&[
        ("OXCCL_RANK", "0"),
        ("OXCCL_WORLD_SIZE", "1"),
        ("OXCCL_ROOT", "localhost:7"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(e.root.port(), 7);
    assert!(e.root.is_ipv4(), "prefers IPv4: {}", e.root);
    assert_eq!(
        (e.secret, e.root_external, e.local_rank),
        (None, false, None)
    );

    invalid(
        &[("OXCCL_RANK", "0"), ("OXCCL_WORLD_SIZE", "2")],
        "OXCCL_ROOT",
    );
    invalid(
        &[("OXCCL_RANK", "0"), ("OXCCL_ROOT", "h:1")],
        "OXCCL_WORLD_SIZE",
    );
    invalid(
        &[("OXCCL_WORLD_SIZE", "2"), ("OXCCL_ROOT", "h:1")],
        "OXCCL_RANK",
    );
    invalid(
        &[
            ("OXCCL_RANK", "x"),
            ("OXCCL_WORLD_SIZE", "2"),
            ("OXCCL_ROOT", "h:1"),
        ],
        "\"x\"",
    );
    invalid(
        &[
            ("OXCCL_RANK", "2"),
            ("OXCCL_WORLD_SIZE", "2"),
            ("OXCCL_ROOT", "h:1"),
        ],
        "OXCCL_RANK=2",
    );
    invalid(
        &[
            ("OXCCL_RANK", "0"),
            ("OXCCL_WORLD_SIZE", "0"),
            ("OXCCL_ROOT", "h:1"),
        ],
        "OXCCL_WORLD_SIZE=0",
    );
    invalid(
        &[
            ("OXCCL_RANK", "0"),
            ("OXCCL_WORLD_SIZE", "1"),
            ("OXCCL_ROOT", "nope"),
        ],
        "OXCCL_ROOT",
    );
    invalid(
        &[
            ("OXCCL_RANK", "0"),
            ("OXCCL_WORLD_SIZE", "1"),
            ("OXCCL_ROOT", "1.2.3.4:99999"),
        ],
        "OXCCL_ROOT",
    );
    invalid(
        &[
            ("OXCCL_RANK", "0"),
            ("OXCCL_WORLD_SIZE", "1"),
            ("OXCCL_ROOT", "1.1.1.1:1"),
            ("OXCCL_SECRET", "abc"),
        ],
        "OXCCL_SECRET",
    );
    invalid(
        &[
            ("OXCCL_RANK", "0"),
            ("OXCCL_WORLD_SIZE", "1"),
            ("OXCCL_ROOT", "1.1.1.1:1"),
            ("OXCCL_LOCAL_RANK", "-1"),
        ],
        "OXCCL_LOCAL_RANK",
    );
    invalid(
        &[
            ("OXCCL_RANK", "0"),
            ("OXCCL_WORLD_SIZE", "1"),
            ("OXCCL_ROOT", "1.1.1.1:1"),
            ("OXCCL_ROOT_EXTERNAL", "maybe"),
        ],
        "OXCCL_ROOT_EXTERNAL",
    );
    invalid(
        &[
            ("OXCCL_RANK", "0"),
            ("OXCCL_WORLD_SIZE", "1"),
            ("OXCCL_ROOT", "no-such-host.invalid:5"),
        ],
        "no-such-host.invalid",
    );
}

#[test]
fn env_secret_value_is_not_echoed() {
    let bad = "zz112233445566778899aabbccddeeff";
    match env(&[
        ("OXCCL_RANK", "0"),
        ("OXCCL_WORLD_SIZE", "1"),
        ("OXCCL_ROOT", "1.1.1.1:1"),
        ("OXCCL_SECRET", bad),
    ]) {
        Err(e) if e.kind() == ErrorKind::InvalidArgument => {
            assert!(!e.message().contains("112233"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_torchrun() {
    let base = [
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
    ];
    let e = env(&base).unwrap().unwrap();
    assert_eq!(
        (e.rank, e.world_size, e.local_rank, e.source),
        (3, 8, Some(1), "torchrun")
    );
    assert_eq!(e.root, "127.0.0.1:29500".parse().unwrap());
    assert_eq!(e.secret, None);

    // The elastic agent serves its own store on MASTER_PORT: ours goes on the next port.
    let mut v = base.to_vec();
    v.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
    assert_eq!(env(&v).unwrap().unwrap().root.port(), 29501);
    v.push(("OXCCL_ROOT", "127.0.0.1:4000"));
    v.push(("OXCCL_SECRET", HEX));
    let e = env(&v).unwrap().unwrap();
    assert_eq!(e.root.port(), 4000);
    assert!(e.secret.is_some());

    invalid(
        &[
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "65535"),
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ],
        "MASTER_PORT",
    );
    invalid(
        &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
        "MASTER_PORT",
    );
    invalid(
        &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")],
        "MASTER_ADDR",
    );
    invalid(&[("RANK", "0"), ("WORLD_SIZE", "2")], "MASTER_ADDR");
    invalid(
        &[("RANK", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")],
        "WORLD_SIZE",
    );
    invalid(
        &[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "http"),
        ],
        "MASTER_PORT=\"http\"",
    );
}

#[test]
fn env_slurm() {
    let e = env(&[
        ("SLURM_JOB_ID", "77"),
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "16"),
        ("SLURM_LOCALID", "1"),
        ("OXCCL_ROOT", "127.0.0.1:6000"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        (e.rank, e.world_size, e.local_rank, e.source),
        (5, 16, Some(1), "slurm")
    );
    assert_eq!(e.root.port(), 6000);

    let e = env(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NPROCS", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "6001"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!((e.world_size, e.root.port()), (2, 6001));

    invalid(
        &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")],
        "OXCCL_ROOT",
    );
    invalid(
        &[("SLURM_PROCID", "0"), ("OXCCL_ROOT", "127.0.0.1:1")],
        "SLURM_NTASKS",
    );
    invalid(
        &[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("MASTER_ADDR", "h"),
        ],
        "MASTER_PORT",
    );
}

#[test]
fn env_openmpi_and_pmi() {
    let e = env(&[
        ("OMPI_COMM_WORLD_RANK", "1"),
        ("OMPI_COMM_WORLD_SIZE", "2"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ("OXCCL_ROOT", "127.0.0.1:7000"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        (e.rank, e.world_size, e.local_rank, e.source),
        (1, 2, Some(1), "openmpi")
    );
    invalid(
        &[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")],
        "OXCCL_ROOT",
    );
    invalid(
        &[("OMPI_COMM_WORLD_RANK", "1"), ("OXCCL_ROOT", "127.0.0.1:1")],
        "OMPI_COMM_WORLD_SIZE",
    );

    let e = env(&[
        ("PMI_RANK", "0"),
        ("PMI_SIZE", "3"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "7001"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        (e.rank, e.world_size, e.local_rank, e.source),
        (0, 3, None, "pmi")
    );
    assert_eq!(e.root.port(), 7001);
    invalid(&[("PMI_RANK", "0"), ("PMI_SIZE", "3")], "OXCCL_ROOT");
    invalid(
        &[("PMI_SIZE", "3"), ("OXCCL_ROOT", "127.0.0.1:1")],
        "PMI_RANK",
    );
}

#[test]
fn env_nothing_set() {
    assert_eq!(env(&[]).unwrap(), None);
    assert_eq!(
        env(&[
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
            ("SLURM_JOB_ID", "1")
        ])
        .unwrap(),
        None
    );
}

/// Whether `e` is of `kind` and its message mentions `needle`.
fn is(e: &Error, kind: ErrorKind, needle: &str) -> bool {
    e.kind() == kind && e.message().contains(needle)
}
