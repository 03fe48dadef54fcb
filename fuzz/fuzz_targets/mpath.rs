//! The multi-path TCP link's frames (`mpath::decode_header`) and its receive path: the input
//! arrives on socket 1 of a two-socket `MultipathLink` (socket 0 healthy and silent). Never
//! panics or hangs; delivers bounded messages or fails.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use oxccl::internals::transport::Link;
use oxccl::internals::transport::mpath::{MHDR, MultipathLink, decode_header};

fn listener() -> &'static TcpListener {
    static L: OnceLock<TcpListener> = OnceLock::new();
    L.get_or_init(|| TcpListener::bind("127.0.0.1:0").unwrap())
}

fn pair() -> (TcpStream, TcpStream) {
    let l = listener();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = <[u8; MHDR]>::try_from(data.get(..MHDR).unwrap_or(&[])) {
        if let Ok(d) = decode_header(&h, 512) {
            assert!(d.len <= 4096);
        }
    }
    let (mut tx0, rx0) = pair();
    let (mut tx1, rx1) = pair();
    let mut link = MultipathLink::new(0, vec![rx0, rx1], 512, 4, Duration::from_secs(5)).unwrap();
    let _ = tx1.write_all(data);
    let _ = tx1.shutdown(Shutdown::Write);
    for _ in 0..100 {
        if link.progress().is_err() {
            break;
        }
        match link.peek_recv() {
            Ok(Some((_, body))) => {
                assert!(body.len() <= 512);
                link.release_recv();
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
    drop(link);
    tx0.set_nonblocking(true).unwrap();
    let mut sink = [0u8; 4096];
    while matches!(tx0.read(&mut sink), Ok(n) if n > 0) {}
});
