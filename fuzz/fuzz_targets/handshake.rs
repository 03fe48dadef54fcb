//! Both sides of the HMAC handshake, fed by a peer that sends the fuzz input: always refused
//! (nobody can forge the MAC), within the deadline, without a panic. The first byte picks the
//! side; with bit 1 set the input is prefixed with a HELLO header that passes the first checks.
#![no_main]

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use oxccl::internals::bootstrap::{PURPOSE_STORE, handshake};

fn listener() -> &'static TcpListener {
    static L: OnceLock<TcpListener> = OnceLock::new();
    L.get_or_init(|| TcpListener::bind("127.0.0.1:0").unwrap())
}

const SECRET: [u8; 16] = *b"fuzzfuzzfuzzfuzz";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::new();
    if mode & 2 != 0 {
        input.extend_from_slice(b"OXHS\x01");
        input.push(PURPOSE_STORE);
    }
    input.extend_from_slice(rest);
    let l = listener();
    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut s, _) = l.accept().unwrap();
    let (fuzzer, victim) = if mode & 1 == 0 {
        (&mut c, &mut s)
    } else {
        (&mut s, &mut c)
    };
    let _ = fuzzer.write_all(&input);
    let _ = fuzzer.shutdown(Shutdown::Write);
    let t0 = Instant::now();
    let limit = Duration::from_secs(2);
    let r = if mode & 1 == 0 {
        handshake::server(victim, &SECRET, PURPOSE_STORE, limit)
    } else {
        handshake::client(victim, &SECRET, PURPOSE_STORE, limit)
    };
    assert!(r.is_err(), "fuzz input passed the handshake");
    assert!(t0.elapsed() < limit + Duration::from_secs(1));
});
