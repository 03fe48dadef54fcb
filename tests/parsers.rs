//! Every parser of untrusted bytes, under proptest (the CI counterpart of the cargo-fuzz
//! targets in `fuzz/`): random input never panics, never hangs and never allocates what a
//! length field announces; valid input round-trips.
//!
//! | parser | reached through | round trip |
//! |---|---|---|
//! | TCP frame header (`tcp::decode_hdr`) | the function | hand-encoded headers |
//! | TCP abort body (`tcp::decode_abort`) | the function | code, peer and message |
//! | TCP link receive path (headers, bodies, aborts) | a `TcpLink` fed from a socket | valid frames arrive intact before the garbage |
//! | multi-path frame header (`mpath::decode_header`) | the function | hand-encoded headers |
//! | multi-path link receive path (data, ACK, DEAD, abort frames) | a `MultipathLink` fed from one of its two sockets | — |
//! | `Tag` | `Tag::decode` | `Tag::encode` |
//! | peer hello (`Hello::decode`) | the function | hand-encoded hellos |
//! | handshake, both sides | `handshake::server` / `client` over loopback | — |
//! | store request (`store::parse_request`) | the function, and a live `StoreServer` | hand-encoded requests |
//! | store key list (`store::parse_key_list`) | the function | `store::encode_key_list` |
//! | `UniqueId` string and 128-byte blob, `parse_secret_hex` | the functions | `Display` / `to_bytes` |
//! | launcher environment (`discover_from`) | the function | — |
//! | shm segment header (`Segment::open`) | a memfd with random / mutated header bytes | `Segment::create` |
//! | shm ring contents (slot headers, tails, posted-receive table, abort areas) | an `ShmLink` whose segment is corrupted at the bytes a real exchange touched | messages before the corruption |
//! | shm setup hello (the endpoint's listener) | an abstract Unix socket | a real dial works afterwards |

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxccl::Error;
use oxccl::internals::bootstrap::store::{
    MAX_KEY_LEN, MAX_VALUE_LEN, encode_key_list, parse_key_list, parse_request,
};
use oxccl::internals::bootstrap::{
    PURPOSE_PEER, PURPOSE_STORE, StoreClient, StoreServer, UniqueId, discover_from, handshake,
    parse_secret_hex, secret_hex,
};
use oxccl::internals::transport::connect::Hello;
use oxccl::internals::transport::mpath::{MHDR, MultipathLink, decode_header};
use oxccl::internals::transport::shm::{Doorbell, Geometry, Segment, ShmLink, setup};
use oxccl::internals::transport::tcp::{self, HDR, TcpLink};
use oxccl::internals::transport::{Link, Region, RegionMut, Tag};
use proptest::prelude::*;

const SECRET: [u8; 16] = *b"fedcba9876543210";

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_tag() -> impl Strategy<Value = Tag> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u32>(),
    )
        .prop_map(|(seq, count, coll, dtype, op, root)| Tag {
            seq,
            count,
            coll,
            dtype,
            op,
            root,
        })
}

/// A TCP frame header as documented in `transport::tcp`:
/// `magic u16 | kind u8 | 0 u8 | len u32 | Tag (24 B)`, little-endian.
fn frame_hdr(kind: u8, len: u32, tag: &Tag) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[0..2].copy_from_slice(&0x584fu16.to_le_bytes());
    h[2] = kind;
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..].copy_from_slice(&tag.encode());
    h
}

/// A peer hello as documented in `transport::connect`: magic "OXHE" (u32 0x4f584845), comm u64,
/// from, to, idx, nsocks (u32 each), little-endian.
fn hello_bytes(h: &Hello) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&0x4f58_4845u32.to_le_bytes());
    b[4..12].copy_from_slice(&h.comm.to_le_bytes());
    b[12..16].copy_from_slice(&h.from.to_le_bytes());
    b[16..20].copy_from_slice(&h.to.to_le_bytes());
    b[20..24].copy_from_slice(&h.idx.to_le_bytes());
    b[24..28].copy_from_slice(&h.nsocks.to_le_bytes());
    b
}

/// A store request as documented in `bootstrap::store`.
fn store_request(op: u8, key: &[u8], value: &[u8], timeout_ms: u32) -> Vec<u8> {
    let mut r = vec![op];
    r.extend_from_slice(&(key.len() as u32).to_le_bytes());
    r.extend_from_slice(key);
    r.extend_from_slice(&(value.len() as u32).to_le_bytes());
    r.extend_from_slice(value);
    r.extend_from_slice(&timeout_ms.to_le_bytes());
    r
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

// ---------------------------------------------------------------------------------------------
// TCP frames.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_header_random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), HDR), max in 0usize..1 << 20) {
        let h: [u8; HDR] = b.try_into().unwrap();
        if let Ok((kind, len, _)) = tcp::decode_hdr(&h, max) {
            // Whatever it accepts is bounded: data by the slot, aborts by 4 KiB.
            prop_assert!(kind == 1 || kind == 2);
            prop_assert!(len <= max.max(4096));
        }
    }

    #[test]
    fn frame_header_round_trip(tag in arb_tag(), len in 0u32..1 << 20, kind in 1u8..=2, slack in 0usize..16) {
        let h = frame_hdr(kind, len, &tag);
        let bound = if kind == 1 { len as usize + slack } else { 4096 };
        match tcp::decode_hdr(&h, bound) {
            Ok(got) if kind == 1 || len <= 4096 => prop_assert_eq!(got, (kind, len as usize, tag)),
            Ok(got) => prop_assert!(false, "an abort of {} bytes was accepted: {:?}", len, got),
            Err(e) => prop_assert!(kind == 2 && len > 4096, "refused: {}", e),
        }
        // One byte over the slot is refused, naming the limit.
        if kind == 1 && len > 0 {
            let e = tcp::decode_hdr(&h, len as usize - 1).unwrap_err();
            prop_assert!(e.contains("limit"), "{}", e);
        }
    }

    #[test]
    fn abort_body_random_bytes_never_panic(b in bytes(5000), peer in 0usize..1 << 20) {
        let e = tcp::decode_abort(&b, peer);
        // Whatever it says, it says who reported it (or that the frame was truncated).
        prop_assert!(e.message().contains(&format!("rank {peer}")), "{}", e);
    }

    #[test]
    fn abort_body_round_trip(code in 1u8..=9, named in proptest::option::of(0u32..1 << 20), msg in "[ -~]{0,200}", peer in 0usize..64) {
        let mut b = vec![code];
        b.extend_from_slice(&named.unwrap_or(u32::MAX).to_le_bytes());
        b.extend_from_slice(msg.as_bytes());
        let e = tcp::decode_abort(&b, peer);
        prop_assert!(e.message().starts_with(&msg), "{}", e);
        if code != 4 {
            prop_assert_eq!(e.code(), code);
        }
        if let (Some(n), 5..=7) = (named, code) {
            prop_assert_eq!(e.peer(), Some(n as usize));
        }
    }

    #[test]
    fn tag_round_trip(tag in arb_tag()) {
        prop_assert_eq!(Tag::decode(&tag.encode()), tag);
    }

    #[test]
    fn tag_random_bytes_decode(b in proptest::collection::vec(any::<u8>(), Tag::LEN)) {
        let raw: [u8; Tag::LEN] = b.try_into().unwrap();
        // Byte 19 is padding; every other byte is carried.
        let mut again = Tag::decode(&raw).encode();
        again[19] = raw[19];
        prop_assert_eq!(again, raw);
    }
}

/// Frames for the link tests: each (tag, body) becomes one data frame.
fn frames(msgs: &[(Tag, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, body) in msgs {
        out.extend_from_slice(&frame_hdr(1, body.len() as u32, tag));
        out.extend_from_slice(body);
    }
    out
}

/// Feeds `wire` to a TcpLink (1 socket, 4 slots of `slot` bytes) and drains it until it fails.
/// Returns the messages it delivered and its final error. Panics if it neither fails nor makes
/// progress for 5 s (a hang).
fn feed_link(wire: &[u8], slot: usize) -> (Vec<(Tag, Vec<u8>)>, Error) {
    let (mut tx, rx) = tcp_pair();
    let mut link = TcpLink::new(0, vec![rx], slot, 4).unwrap();
    // The peer writes everything and goes away (writes may fail once the link hangs up).
    let wire = wire.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = tx.write_all(&wire);
        let _ = tx.shutdown(Shutdown::Write);
        // Keep the socket until the link is done reading (dropping it early could reset it).
        let mut sink = Vec::new();
        let _ = tx.read_to_end(&mut sink);
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        assert!(
            Instant::now() < deadline,
            "the link neither failed nor finished"
        );
        if let Err(e) = link.progress() {
            break e;
        }
        match link.peek_recv() {
            Ok(Some((tag, body))) => {
                got.push((tag, body.to_vec()));
                link.release_recv();
            }
            Ok(None) => std::thread::yield_now(),
            Err(e) => break e,
        }
    };
    drop(link);
    writer.join().unwrap();
    (got, err)
}

fn arb_msgs(slot: usize) -> impl Strategy<Value = Vec<(Tag, Vec<u8>)>> {
    proptest::collection::vec((arb_tag(), bytes(slot + 1)), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn tcp_link_random_bytes_fail_cleanly(wire in bytes(4096)) {
        let (_, err) = feed_link(&wire, 1024);
        let named = (err.kind() == oxccl::ErrorKind::PeerLost && err.peer() == Some(0)) || err.message().contains("rank 0");
        prop_assert!(named, "{}", err);
    }

    #[test]
    fn tcp_link_valid_frames_then_garbage(msgs in arb_msgs(512), garbage in bytes(256)) {
        let mut wire = frames(&msgs);
        wire.extend_from_slice(&garbage);
        let (got, err) = feed_link(&wire, 512);
        // What arrives is intact and in order; the garbage fails the link (which may then drop
        // messages that arrived but were not yet taken: a failed link is failed). Without
        // garbage, every frame arrives, then the EOF is reported as the peer lost.
        prop_assert!(got.len() <= msgs.len() || !garbage.is_empty(), "{} of {}", got.len(), msgs.len());
        if garbage.is_empty() {
            prop_assert_eq!(got.len(), msgs.len(), "then {}", err);
        }
        for (i, ((t1, b1), (t2, b2))) in got.iter().zip(&msgs).enumerate() {
            prop_assert_eq!(t1, t2, "message {}", i);
            prop_assert_eq!(b1, b2, "message {}", i);
        }
        if garbage.is_empty() {
            let lost = err.kind() == oxccl::ErrorKind::PeerLost && err.peer() == Some(0);
            prop_assert!(lost, "{}", err);
        }
    }

    #[test]
    fn tcp_link_oversized_frame_is_refused(tag in arb_tag(), over in 1u32..u32::MAX - 512) {
        // A header announcing more than the slot: refused at once, nothing allocated or read.
        let wire = frame_hdr(1, 512 + over, &tag);
        let (got, err) = feed_link(&wire, 512);
        prop_assert!(got.is_empty());
        prop_assert!(err.message().contains("limit"), "{}", err);
    }
}

// ---------------------------------------------------------------------------------------------
// Peer hello, handshake.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hello_random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 28)) {
        let raw: [u8; 28] = b.clone().try_into().unwrap();
        if let Some(h) = Hello::decode(&raw) {
            prop_assert_eq!(hello_bytes(&h), raw);
        }
    }

    #[test]
    fn hello_round_trip(comm in any::<u64>(), from in any::<u32>(), to in any::<u32>(), idx in any::<u32>(), nsocks in any::<u32>()) {
        let h = Hello { comm, from, to, idx, nsocks };
        prop_assert_eq!(Hello::decode(&hello_bytes(&h)), Some(h));
    }
}

/// A HELLO that passes the header checks (magic, version, purpose) followed by random bytes, or
/// plain random bytes.
fn handshake_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(128),
        (any::<u8>(), bytes(128)).prop_map(|(p, rest)| {
            let mut v = b"OXHS\x01".to_vec();
            v.push(if p % 2 == 0 { PURPOSE_STORE } else { p });
            v.extend(rest);
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn handshake_server_refuses_random_clients(input in handshake_input()) {
        let (mut c, mut s) = tcp_pair();
        c.write_all(&input).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let t0 = Instant::now();
        let r = handshake::server(&mut s, &SECRET, PURPOSE_STORE, Duration::from_secs(2));
        prop_assert!(r.is_err(), "random bytes passed the handshake");
        prop_assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    }

    #[test]
    fn handshake_client_refuses_random_servers(input in handshake_input()) {
        let (mut c, mut s) = tcp_pair();
        s.write_all(&input).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let t0 = Instant::now();
        let r = handshake::client(&mut c, &SECRET, PURPOSE_PEER, Duration::from_secs(2));
        prop_assert!(r.is_err(), "random bytes passed the handshake");
        prop_assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    }
}

// ---------------------------------------------------------------------------------------------
// Store protocol.

/// Requests that are valid, or valid but cut short, or random.
fn store_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(256),
        (1u8..=6, bytes(64), bytes(64), any::<u32>(), any::<usize>()).prop_map(
            |(op, k, v, t, cut)| {
                let r = store_request(op, &k, &v, t);
                r[..cut % (r.len() + 1)].to_vec()
            }
        ),
        (any::<u32>(), any::<u32>()).prop_map(|(klen, vlen)| {
            // Huge announced lengths with nothing behind them.
            let mut r = vec![1u8];
            r.extend_from_slice(&klen.to_le_bytes());
            r.extend_from_slice(&vlen.to_le_bytes());
            r
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn store_request_random_bytes_never_panic(b in store_input()) {
        if let Ok(Some((op, key, value, _))) = parse_request(&b) {
            prop_assert!((1..=6).contains(&op));
            prop_assert!(key.len() <= MAX_KEY_LEN && value.len() <= MAX_VALUE_LEN);
            prop_assert!(key.len() + value.len() + 13 <= b.len());
        }
    }

    #[test]
    fn store_request_round_trip(op in 1u8..=6, key in bytes(300), value in bytes(300), t in any::<u32>(), trailing in bytes(8)) {
        let mut r = store_request(op, &key, &value, t);
        r.extend_from_slice(&trailing);
        let got = parse_request(&r).unwrap().unwrap();
        prop_assert_eq!(got, (op, key, value, Duration::from_millis(u64::from(t))));
    }

    #[test]
    fn store_key_list_random_bytes_never_panic(b in bytes(256)) {
        if let Some(keys) = parse_key_list(&b) {
            prop_assert!(keys.iter().all(|k| k.len() <= MAX_KEY_LEN));
        }
    }

    #[test]
    fn store_key_list_round_trip(keys in proptest::collection::vec("[a-z/0-9]{0,20}", 0..20)) {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let enc = encode_key_list(&refs);
        let dec = parse_key_list(&enc).unwrap();
        let want: Vec<&[u8]> = refs.iter().map(|k| k.as_bytes()).collect();
        prop_assert_eq!(dec, want);
    }
}

#[test]
fn store_request_bounds() {
    // A key one byte over the limit is a violation before any byte of it is read.
    let mut r = vec![1u8];
    r.extend_from_slice(&(MAX_KEY_LEN as u32 + 1).to_le_bytes());
    assert!(parse_request(&r).unwrap_err().contains("key of"));
    let mut r = store_request(1, b"k", b"", 0);
    r[6..10].copy_from_slice(&(MAX_VALUE_LEN as u32 + 1).to_le_bytes());
    assert!(parse_request(&r).unwrap_err().contains("value of"));
    assert!(parse_request(&[0]).unwrap_err().contains("unknown op"));
    assert!(parse_request(&[]).unwrap().is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A client that passed the handshake sends random requests: the server never crashes, keeps
    /// serving a well-behaved client, and still stops promptly (even with requests it is
    /// blocked on, such as a GET with a 49-day timeout).
    #[test]
    fn store_server_survives_random_requests(reqs in proptest::collection::vec(store_input(), 1..4)) {
        let server = StoreServer::start(TcpListener::bind("127.0.0.1:0").unwrap(), SECRET).unwrap();
        let mut raw = TcpStream::connect(server.addr()).unwrap();
        handshake::client(&mut raw, &SECRET, PURPOSE_STORE, Duration::from_secs(5)).unwrap();
        for r in &reqs {
            let _ = raw.write_all(r);
        }
        let _ = raw.shutdown(Shutdown::Write);
        let mut good = StoreClient::connect(server.addr(), &SECRET, Duration::from_secs(5)).unwrap();
        good.set("k", b"v").unwrap();
        prop_assert_eq!(good.get("k", Duration::from_secs(5)).unwrap(), b"v");
        let t0 = Instant::now();
        drop(server);
        prop_assert!(t0.elapsed() < Duration::from_secs(3), "stopping took {:?}", t0.elapsed());
    }
}

// ---------------------------------------------------------------------------------------------
// UniqueId, secret, environment.

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(std::net::Ipv4Addr::from(ip).into(), p)),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>()).prop_map(|(ip, p, s)| {
            SocketAddr::V6(std::net::SocketAddrV6::new(ip.into(), p, 0, s))
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn unique_id_random_blobs_never_panic(b in proptest::collection::vec(any::<u8>(), 128), hdr in any::<bool>()) {
        let mut blob: [u8; 128] = b.try_into().unwrap();
        if hdr {
            blob[..5].copy_from_slice(b"OXID\x01");
            blob[5] = if blob[5] % 2 == 0 { 4 } else { 6 };
        }
        if let Ok(id) = UniqueId::from_bytes(&blob) {
            // Accepted blobs are canonical: they re-encode to themselves.
            prop_assert_eq!(id.to_bytes(), blob);
        }
    }

    #[test]
    fn unique_id_random_strings_never_panic(s in "\\PC{0,100}", t in "[0-9a-fA-F:.#\\[\\]%]{0,90}") {
        for x in [&s, &t] {
            if let Ok(id) = x.parse::<UniqueId>() {
                prop_assert_eq!(id.to_string().parse::<UniqueId>().unwrap(), id);
            }
        }
        let _ = parse_secret_hex(&s);
    }

    #[test]
    fn unique_id_round_trips(addr in arb_addr(), secret in any::<[u8; 16]>()) {
        let id = UniqueId { addr, secret };
        prop_assert_eq!(&UniqueId::from_bytes(&id.to_bytes()).unwrap(), &id);
        prop_assert_eq!(&id.to_string().parse::<UniqueId>().unwrap(), &id);
        prop_assert_eq!(parse_secret_hex(&secret_hex(&secret)).unwrap(), secret);
    }

    #[test]
    fn launcher_environment_random_values_never_panic(vals in proptest::collection::vec(proptest::option::of("\\PC{0,40}"), 24)) {
        const KEYS: [&str; 24] = [
            "OXCCL_RANK", "OXCCL_WORLD_SIZE", "OXCCL_LOCAL_RANK", "OXCCL_ROOT", "OXCCL_SECRET",
            "OXCCL_ROOT_EXTERNAL", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
            "TORCHELASTIC_USE_AGENT_STORE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
            "SLURM_NPROCS", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "LOCAL_WORLD_SIZE",
            "SLURM_LAUNCH_NODE_IPADDR", "OXCCL_SOCKET_IFNAME",
        ];
        let get = |k: &str| KEYS.iter().position(|x| *x == k).and_then(|i| vals[i].clone());
        if let Ok(Some(info)) = discover_from(&get) {
            prop_assert!(info.rank < info.world_size);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared memory.

fn geo() -> Geometry {
    Geometry {
        nslots: 4,
        slot_size: 256,
    }
}

/// A zero-filled sealed memfd of `len` bytes with `header` copied to its start.
fn memfd_with(len: usize, header: &[u8]) -> std::os::fd::OwnedFd {
    let fd = oxccl::internals::sys::shm::memfd_sealed("oxccl-parsers", len).unwrap();
    if len > 0 {
        let map = oxccl::internals::sys::shm::Mapping::new(fd.as_raw_fd(), len).unwrap();
        let n = header.len().min(len);
        // SAFETY: the mapping is `len` >= n bytes long and nothing else uses it.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), map.as_ptr(), n) };
    }
    fd
}

/// The first `n` bytes of a real segment's header.
fn real_header(n: usize) -> (Vec<u8>, usize) {
    let (seg, fd) = Segment::create(geo()).unwrap();
    let total = geo().total();
    let map = oxccl::internals::sys::shm::Mapping::new(fd.as_raw_fd(), total).unwrap();
    let mut h = vec![0u8; n];
    // SAFETY: the mapping has `total` >= n bytes.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), h.as_mut_ptr(), n) };
    drop(seg);
    (h, total)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn shm_segment_random_headers_never_panic(header in bytes(128), len in prop_oneof![Just(0usize), Just(4096), Just(8192), 0usize..70000]) {
        let fd = memfd_with(len, &header);
        let _ = Segment::open(fd.as_fd());
    }

    #[test]
    fn shm_segment_mutated_headers(flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..6), grow in prop_oneof![Just(0usize), Just(4096)]) {
        let (mut h, total) = real_header(64);
        for (i, v) in flips {
            h[i] = v;
        }
        let fd = memfd_with(total + grow, &h);
        if let Ok(seg) = Segment::open(fd.as_fd()) {
            // Only a header that describes exactly this memfd is accepted.
            let g = seg.geometry();
            prop_assert_eq!(g.total(), total + grow);
            prop_assert!(g.nslots >= 1 && g.nslots <= oxccl::internals::transport::shm::MAX_SLOTS);
        }
    }
}

#[test]
fn shm_segment_round_trip() {
    let (seg, fd) = Segment::create(geo()).unwrap();
    let other = Segment::open(fd.as_fd()).unwrap();
    assert_eq!(other.geometry(), seg.geometry());
    // Not sealed, or not a memfd: refused.
    let plain = std::fs::File::open("/proc/self/status").unwrap();
    assert!(Segment::open(plain.as_fd()).is_err());
}

/// Two ends of one shm link in this process, plus a raw mapping of their segment.
fn shm_pair() -> (ShmLink, ShmLink, oxccl::internals::sys::shm::Mapping) {
    let (seg0, fd) = Segment::create(geo()).unwrap();
    let seg1 = Segment::open(fd.as_fd()).unwrap();
    let raw = oxccl::internals::sys::shm::Mapping::new(fd.as_raw_fd(), geo().total()).unwrap();
    let bell0 = Arc::new(Doorbell::create().unwrap());
    let bell1 = Arc::new(Doorbell::create().unwrap());
    let peer_of_0 = Doorbell::open(bell1.clone_fd().unwrap()).unwrap();
    let peer_of_1 = Doorbell::open(bell0.clone_fd().unwrap()).unwrap();
    let l0 = ShmLink::new(1, 0, seg0, bell0, peer_of_0, None).unwrap();
    let l1 = ShmLink::new(0, 1, seg1, bell1, peer_of_1, None).unwrap();
    (l0, l1, raw)
}

fn snapshot(m: &oxccl::internals::sys::shm::Mapping) -> Vec<u8> {
    let mut v = vec![0u8; m.len()];
    // SAFETY: the mapping is m.len() bytes; the links that share it are not running.
    unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), v.as_mut_ptr(), m.len()) };
    v
}

/// Sends `msg` from `a` and receives it on `b`, checking it.
fn exchange(a: &mut ShmLink, b: &mut ShmLink, tag: &Tag, msg: &[u8]) {
    // SAFETY: `msg` outlives the send, which completes before we return (we drain b).
    assert!(unsafe { a.post_send(tag, Region::from_raw(msg.as_ptr(), msg.len())) }.unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        a.progress().unwrap();
        if let Some((t, body)) = b.peek_recv().unwrap() {
            assert_eq!((&t, body), (tag, msg));
            b.release_recv();
            break;
        }
        assert!(Instant::now() < deadline, "shm message did not arrive");
    }
    let _ = a.take_send_completions();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The peer scribbles on shared memory: the slot headers (sequence, length, kind, tag), the
    /// tails, the posted-receive table and the abort areas — every byte a real exchange touched
    /// — with random values. The receiving end must fail cleanly or deliver bounded messages,
    /// never panic, read out of bounds or hang.
    #[test]
    fn shm_link_survives_a_scribbling_peer(
        lens in proptest::collection::vec(0usize..=256, 1..8),
        pending in proptest::collection::vec(0usize..=256, 0..3),
        scribbles in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<bool>()), 1..24),
    ) {
        let (mut l0, mut l1, raw) = shm_pair();
        let before = snapshot(&raw);
        let msgs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &n)| vec![i as u8 + 1; n]).collect();
        for (i, m) in msgs.iter().enumerate() {
            let tag = Tag { seq: i as u64, count: m.len() as u64, ..Tag::default() };
            exchange(&mut l0, &mut l1, &tag, m);
            exchange(&mut l1, &mut l0, &tag, m);
        }
        // Messages in flight when the scribbling starts.
        let tail: Vec<Vec<u8>> = pending.iter().map(|&n| vec![0xAB; n]).collect();
        for m in &tail {
            // SAFETY: `tail` outlives both links.
            let _ = unsafe { l0.post_send(&Tag::default(), Region::from_raw(m.as_ptr(), m.len())) };
        }
        let after = snapshot(&raw);
        let live: Vec<usize> = (0..after.len()).filter(|&i| after[i] != before[i]).collect();
        for (pick, val, anywhere) in scribbles {
            let off = if anywhere || live.is_empty() { pick % raw.len() } else { live[pick % live.len()] };
            // SAFETY: off < raw.len(); racing the links' atomics is the point (they are idle now).
            unsafe { raw.as_ptr().add(off).write_volatile(val) };
        }
        // Drive both ends for a while: each either keeps working or fails; neither may panic.
        let mut dst = vec![0u8; 64 << 10];
        for round in 0..64u64 {
            // SAFETY: `dst` outlives the links and is not touched until cancel_recvs below.
            unsafe { l1.post_recv(round, RegionMut::from_raw(dst.as_mut_ptr(), dst.len())) };
            let r1 = l1.progress().and_then(|_| match l1.peek_recv()? {
                Some((_, body)) => {
                    assert!(body.len() <= 64 << 10);
                    l1.release_recv();
                    Ok(())
                }
                None => Ok(()),
            });
            // Zero-length sends: they read the peer's (scribbled) tail and write headers only.
            let empty = std::ptr::NonNull::dangling().as_ptr();
            // SAFETY: a zero-length send reads no memory.
            let r0 = unsafe { l0.post_send(&Tag::default(), Region::from_raw(empty, 0)) }
                .and_then(|_| l0.progress());
            let _ = l0.take_send_completions();
            if r1.is_err() && r0.is_err() {
                break;
            }
        }
        l1.cancel_recvs();
        l0.cancel_recvs();
        l1.send_abort(&Error::internal("test over"));
        drop(dst);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random bytes to a rank's shm endpoint (any local process can connect to an abstract
    /// socket): refused, and a real dial afterwards still works.
    #[test]
    fn shm_endpoint_refuses_random_hellos(input in prop_oneof![
        bytes(200),
        bytes(150).prop_map(|rest| { let mut v = b"OXSM\x01\0\0\0".to_vec(); v.extend(rest); v }),
    ]) {
        use std::os::linux::net::SocketAddrExt;
        let a = setup::ShmEndpoint::start(SECRET, 5, 0, 2).unwrap();
        let b = setup::ShmEndpoint::start(SECRET, 5, 1, 2).unwrap();
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(b.name().as_bytes()).unwrap();
        let mut s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
        let _ = s.write_all(&input);
        let _ = s.shutdown(Shutdown::Write);
        s.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
        let t0 = Instant::now();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        prop_assert!(t0.elapsed() < Duration::from_secs(11), "held for {:?}", t0.elapsed());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut l0 = setup::dial(&a, b.name(), &SECRET, 5, 0, 1, geo(), deadline)
            .map_err(|e| format!("{e:?}")).unwrap();
        let mut l1 = loop {
            if let Some(l) = b.try_take(0, Duration::from_millis(50)).unwrap() {
                break l;
            }
            prop_assert!(Instant::now() < deadline, "the real dial never arrived");
        };
        exchange(&mut l0, &mut l1, &Tag::default(), b"still works");
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-path TCP frames.

/// A multi-path frame header as documented in `transport::mpath`.
fn mpath_hdr(kind: u8, len: u32, seq: u64, recv: u64, credit: u64, tag: &Tag) -> [u8; MHDR] {
    let mut h = [0u8; MHDR];
    h[0..2].copy_from_slice(&0x4d4fu16.to_le_bytes());
    h[2] = kind;
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&recv.to_le_bytes());
    h[24..32].copy_from_slice(&credit.to_le_bytes());
    h[32..].copy_from_slice(&tag.encode());
    h
}

/// Feeds `wire` to socket 1 of a two-socket MultipathLink (socket 0 stays healthy and silent)
/// and drives it for a while: it must fail cleanly or stay usable, never panic or hang.
fn feed_mpath(wire: &[u8]) -> Option<Error> {
    let (mut tx0, rx0) = tcp_pair();
    let (mut tx1, rx1) = tcp_pair();
    let mut link = MultipathLink::new(0, vec![rx0, rx1], 512, 4, Duration::from_secs(5)).unwrap();
    let _ = tx1.write_all(wire);
    let _ = tx1.shutdown(Shutdown::Write);
    let mut err = None;
    for _ in 0..200 {
        if let Err(e) = link.progress() {
            err = Some(e);
            break;
        }
        match link.peek_recv() {
            Ok(Some((_, body))) => {
                assert!(body.len() <= 512);
                link.release_recv();
            }
            Ok(None) => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    drop(link);
    // Drain what the link wrote (ACK/DEAD frames) so nothing blocks; then close.
    tx0.set_nonblocking(true).unwrap();
    let mut sink = [0u8; 4096];
    while matches!(tx0.read(&mut sink), Ok(n) if n > 0) {}
    err
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mpath_header_random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), MHDR), max in 0usize..1 << 20) {
        let h: [u8; MHDR] = b.try_into().unwrap();
        if let Ok(d) = decode_header(&h, max) {
            prop_assert!((1..=4).contains(&d.kind));
            prop_assert!(d.len <= max.max(4096));
        }
    }

    #[test]
    fn mpath_header_round_trip(kind in 1u8..=4, len in 0u32..4096, seq in any::<u64>(), recv in any::<u64>(), credit in any::<u64>(), tag in arb_tag()) {
        let h = mpath_hdr(kind, len, seq, recv, credit, &tag);
        let bound = match kind { 1 => len as usize, 2 => 4096, _ => 0 };
        match decode_header(&h, 4096) {
            Ok(d) => {
                prop_assert!(len as usize <= bound);
                prop_assert_eq!((d.kind, d.len, d.seq, d.recv, d.credit, d.tag), (kind, len as usize, seq, recv, credit, tag));
            }
            Err(e) => prop_assert!(len as usize > bound, "refused: {}", e),
        }
    }
}

fn mpath_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(2048),
        // Plausible frames with random fields (bounds, claims about our sends, dead sockets).
        proptest::collection::vec(
            (1u8..=4, 0u32..600, 0u64..12, 0u64..3, 0u64..3, bytes(64)),
            1..6
        )
        .prop_map(|frames| {
            let mut w = Vec::new();
            for (kind, len, seq, recv, credit, body) in frames {
                let len = if kind == 1 || kind == 2 {
                    len.min(body.len() as u32)
                } else {
                    0
                };
                w.extend_from_slice(&mpath_hdr(kind, len, seq, recv, credit, &Tag::default()));
                w.extend_from_slice(&body[..len as usize]);
            }
            w
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn mpath_link_random_bytes_never_panic(wire in mpath_input()) {
        let _ = feed_mpath(&wire);
    }
}
