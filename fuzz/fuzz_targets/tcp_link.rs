//! The TCP link's receive path (frame headers, bodies into slots, abort frames) fed from a real
//! socket: it delivers bounded messages or fails; it never panics or hangs.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use oxccl::internals::transport::Link;
use oxccl::internals::transport::tcp::TcpLink;

fn listener() -> &'static TcpListener {
    static L: OnceLock<TcpListener> = OnceLock::new();
    L.get_or_init(|| TcpListener::bind("127.0.0.1:0").unwrap())
}

fuzz_target!(|data: &[u8]| {
    let l = listener();
    let mut tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (rx, _) = l.accept().unwrap();
    let slot = 512;
    let mut link = TcpLink::new(0, vec![rx], slot, 4).unwrap();
    let wire = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = tx.write_all(&wire);
        let _ = tx.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = tx.read_to_end(&mut sink);
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "the link neither failed nor finished"
        );
        if link.progress().is_err() {
            break;
        }
        match link.peek_recv() {
            Ok(Some((_, body))) => {
                assert!(body.len() <= slot);
                link.release_recv();
            }
            Ok(None) => std::thread::yield_now(),
            Err(_) => break,
        }
    }
    drop(link);
    writer.join().unwrap();
});
