//! The TCP and multi-path receive framing (`transport::framing::RxFramer`), without sockets:
//! the input is read in pieces whose sizes it chooses itself. Never panics; every frame it
//! completes has the body its header announced, within the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxccl::internals::transport::framing::{FrameHeader, RxEvent, RxFramer};
use oxccl::internals::transport::wire::{MAX_ABORT, MpathHeader, TcpHeader};

fn run<H: FrameHeader>(data: &[u8], max: usize, len: impl Fn(&H) -> usize) {
    let mut rx = RxFramer::<H>::new(max);
    let (mut at, mut body) = (0, 0usize);
    let mut step = 1;
    while at < data.len() {
        // The first byte of each piece picks the next piece's size.
        step = 1 + (data[at] as usize + step) % 97;
        let n = match rx.header_buf() {
            Some(buf) => {
                let n = step.min(buf.len()).min(data.len() - at);
                buf[..n].copy_from_slice(&data[at..at + n]);
                n
            }
            None => {
                let (h, got) = rx.body().unwrap();
                assert!(got < len(&h));
                let n = step.min(len(&h) - got).min(data.len() - at);
                body += n;
                n
            }
        };
        at += n;
        match rx.advance(n) {
            Err(_) => return,
            Ok(Some(RxEvent::Header(h))) => {
                assert!(len(&h) <= max.max(MAX_ABORT));
                body = 0;
            }
            Ok(Some(RxEvent::Body(h))) => assert_eq!(body, len(&h)),
            Ok(None) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let max = data.first().map_or(0, |&b| usize::from(b) * 8);
    run::<TcpHeader>(data, max, |h| h.len);
    run::<MpathHeader>(data, max, |h| h.len);
});
