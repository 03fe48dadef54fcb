//! Framing of one byte stream, without I/O (in quinn-proto's style): the TCP and multi-path
//! links read and write their sockets, and these state machines say where the bytes go and what
//! they complete. So the framing logic is tested (and fuzzed) by feeding bytes, no sockets.
//!
//! Receiving: while [`RxFramer::header_buf`] is `Some`, the caller reads into it; otherwise it
//! reads the current frame's body (whose header and progress [`RxFramer::body`] gives) into
//! wherever that body belongs. Either way it then reports the count with
//! [`RxFramer::advance`], which parses a completed header (never panicking on bad bytes) and
//! says when a header or a whole frame is complete.
//!
//! Sending: [`TxFramer::start`] a frame, write what [`TxFramer::rest`] returns (the header's
//! and the body's unwritten tails), report the count with [`TxFramer::advance`].

use super::wire::{Malformed, MpathHeader, TcpHeader};

/// Largest header a framer holds.
const MAX_HDR: usize = 64;

/// A frame header as a framer needs it.
pub trait FrameHeader: Copy {
    /// Encoded size (at most 64).
    const LEN: usize;
    /// Parses untrusted bytes (exactly `LEN` of them); data bodies are bounded by `max_data`.
    fn parse(b: &[u8], max_data: usize) -> Result<Self, Malformed>;
    /// Writes the header's `LEN` bytes.
    fn write(&self, out: &mut [u8]);
    /// Length of the body that follows.
    fn body_len(&self) -> usize;
}

/// Both headers are built the same way: `new_checked`, `encode`, `len`.
macro_rules! frame_header {
    ($($h:ty),+) => {$(
        impl FrameHeader for $h {
            const LEN: usize = <$h>::LEN;
            fn parse(b: &[u8], max_data: usize) -> Result<Self, Malformed> {
                <$h>::new_checked(b, max_data)
            }
            fn write(&self, out: &mut [u8]) {
                out[..Self::LEN].copy_from_slice(&self.encode());
            }
            fn body_len(&self) -> usize {
                self.len
            }
        }
    )+};
}
frame_header!(TcpHeader, MpathHeader);

/// What a receive completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxEvent<H> {
    /// A header arrived; its body comes next. If the body is empty, the frame is complete too
    /// and the framer already waits for the next header.
    Header(H),
    /// The current frame's body is complete; the framer waits for the next header.
    Body(H),
}

/// One stream's receive framing (see the module documentation).
#[derive(Debug, Clone)]
pub struct RxFramer<H> {
    hdr: [u8; MAX_HDR],
    got: usize,
    cur: Option<H>,
    max_data: usize,
}

impl<H: FrameHeader> RxFramer<H> {
    /// A framer at a frame boundary, accepting data bodies up to `max_data` bytes.
    pub fn new(max_data: usize) -> RxFramer<H> {
        RxFramer {
            hdr: [0; MAX_HDR],
            got: 0,
            cur: None,
            max_data,
        }
    }

    /// The rest of the header to read into; `None` while a body is due.
    pub fn header_buf(&mut self) -> Option<&mut [u8]> {
        match self.cur {
            None => Some(&mut self.hdr[self.got..H::LEN]),
            Some(_) => None,
        }
    }

    /// The frame whose body is due, and how many of its bytes arrived already.
    pub fn body(&self) -> Option<(H, usize)> {
        self.cur.map(|h| (h, self.got))
    }

    /// Whether the stream is between frames (nothing of the next one has arrived).
    pub fn at_boundary(&self) -> bool {
        self.cur.is_none() && self.got == 0
    }

    /// `n` more bytes arrived, into [`Self::header_buf`] or the body. A header that does not
    /// parse is an error (and the stream is beyond repair).
    pub fn advance(&mut self, n: usize) -> Result<Option<RxEvent<H>>, Malformed> {
        self.got += n;
        match self.cur {
            None if self.got >= H::LEN => {
                let h = H::parse(&self.hdr[..H::LEN], self.max_data)?;
                self.got = 0;
                if h.body_len() > 0 {
                    self.cur = Some(h);
                }
                Ok(Some(RxEvent::Header(h)))
            }
            Some(h) if self.got >= h.body_len() => {
                self.got = 0;
                self.cur = None;
                Ok(Some(RxEvent::Body(h)))
            }
            _ => Ok(None),
        }
    }
}

/// One stream's send framing: the frame being written and how far (see the module
/// documentation). The body stays in the caller's memory.
#[derive(Debug, Clone)]
pub struct TxFramer<H> {
    hdr: [u8; MAX_HDR],
    off: usize,
    cur: Option<H>,
}

impl<H: FrameHeader> Default for TxFramer<H> {
    fn default() -> Self {
        TxFramer {
            hdr: [0; MAX_HDR],
            off: 0,
            cur: None,
        }
    }
}

impl<H: FrameHeader> TxFramer<H> {
    /// Whether no frame is being written.
    pub fn idle(&self) -> bool {
        self.cur.is_none()
    }

    /// Whether nothing of the current frame (if any) has been written: a frame may be put on
    /// the stream now without cutting another.
    pub fn at_boundary(&self) -> bool {
        self.off == 0
    }

    /// The header of the frame being written.
    pub fn current(&self) -> Option<H> {
        self.cur
    }

    /// Starts writing a frame with header `h` (the previous one must be complete).
    pub fn start(&mut self, h: &H) {
        debug_assert!(self.cur.is_none());
        h.write(&mut self.hdr);
        self.off = 0;
        self.cur = Some(*h);
    }

    /// The unwritten tails of the header and of `body` (the current frame's body, all of it).
    pub fn rest<'a>(&'a self, body: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        let hdr = &self.hdr[self.off.min(H::LEN)..H::LEN];
        let body = body.get(self.off.saturating_sub(H::LEN)..).unwrap_or(&[]);
        (hdr, body)
    }

    /// `n` more bytes were written; true when that completed the frame (the framer is idle).
    pub fn advance(&mut self, n: usize) -> bool {
        let Some(h) = self.cur else { return false };
        self.off += n;
        if self.off >= H::LEN + h.body_len() {
            self.off = 0;
            self.cur = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::Tag;
    use super::super::wire::{ABORT, ACK, DATA};
    use super::*;
    use proptest::prelude::*;

    /// Feeds `stream` to a framer in pieces of the given sizes: the frames it completes (header,
    /// body) or the error it stops with.
    fn feed<H: FrameHeader>(
        stream: &[u8],
        pieces: &[usize],
        max: usize,
    ) -> (Vec<(H, Vec<u8>)>, Option<Malformed>) {
        let mut rx = RxFramer::<H>::new(max);
        let (mut at, mut out, mut body) = (0, Vec::new(), Vec::new());
        let mut sizes = pieces.iter().cycle();
        while at < stream.len() {
            let want = *sizes.next().unwrap_or(&1);
            let n = match rx.header_buf() {
                Some(buf) => {
                    let n = want.max(1).min(buf.len()).min(stream.len() - at);
                    buf[..n].copy_from_slice(&stream[at..at + n]);
                    n
                }
                None => {
                    let (h, got) = rx.body().unwrap();
                    let n = want.max(1).min(h.body_len() - got).min(stream.len() - at);
                    body.extend_from_slice(&stream[at..at + n]);
                    n
                }
            };
            at += n;
            match rx.advance(n) {
                Err(e) => return (out, Some(e)),
                Ok(Some(RxEvent::Header(h))) if h.body_len() == 0 => out.push((h, Vec::new())),
                Ok(Some(RxEvent::Body(h))) => out.push((h, std::mem::take(&mut body))),
                Ok(_) => {}
            }
        }
        (out, None)
    }

    /// Writes frames through a TxFramer, `chunk` bytes per "write".
    fn write_all<H: FrameHeader>(frames: &[(H, Vec<u8>)], chunk: usize) -> Vec<u8> {
        let mut tx = TxFramer::<H>::default();
        let mut out = Vec::new();
        for (h, body) in frames {
            assert!(tx.idle() && tx.at_boundary());
            tx.start(h);
            loop {
                let (a, b) = tx.rest(body);
                let mut both = a.to_vec();
                both.extend_from_slice(b);
                let n = chunk.max(1).min(both.len());
                out.extend_from_slice(&both[..n]);
                if tx.advance(n) {
                    break;
                }
                assert!(!tx.at_boundary());
            }
        }
        out
    }

    fn tcp_frames() -> impl Strategy<Value = Vec<(TcpHeader, Vec<u8>)>> {
        proptest::collection::vec(
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)),
            0..8,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(seq, body)| {
                    let tag = Tag {
                        seq,
                        ..Tag::default()
                    };
                    let kind = if seq % 5 == 0 { ABORT } else { DATA };
                    (
                        TcpHeader {
                            kind,
                            len: body.len(),
                            tag,
                        },
                        body,
                    )
                })
                .collect()
        })
    }

    proptest! {
        /// Whatever the write and read sizes, the frames that go in come out, in order.
        #[test]
        fn frames_survive_any_chunking(frames in tcp_frames(), wchunk in 1usize..80,
                                       pieces in proptest::collection::vec(1usize..100, 1..5)) {
            let stream = write_all(&frames, wchunk);
            let (got, err) = feed::<TcpHeader>(&stream, &pieces, 300);
            prop_assert_eq!(err, None);
            prop_assert_eq!(got, frames);
        }

        /// Arbitrary bytes never panic either framer; what they deliver is bounded.
        #[test]
        fn arbitrary_bytes_never_panic(stream in proptest::collection::vec(any::<u8>(), 0..400),
                                       pieces in proptest::collection::vec(1usize..64, 1..4),
                                       max in 0usize..200) {
            for (h, body) in feed::<TcpHeader>(&stream, &pieces, max).0 {
                prop_assert_eq!(body.len(), h.len);
                prop_assert!(h.len <= max.max(4096));
            }
            for (h, body) in feed::<MpathHeader>(&stream, &pieces, max).0 {
                prop_assert_eq!(body.len(), h.len);
                prop_assert!(h.len <= max.max(4096));
            }
        }
    }

    #[test]
    fn multipath_frames_and_errors() {
        let ack = MpathHeader {
            kind: ACK,
            len: 0,
            seq: 0,
            recv: 3,
            credit: 2,
            tag: Tag::default(),
        };
        let data = MpathHeader {
            kind: DATA,
            len: 5,
            seq: 1,
            ..ack
        };
        let frames = vec![(ack, vec![]), (data, vec![1, 2, 3, 4, 5]), (ack, vec![])];
        let stream = write_all(&frames, 7);
        assert_eq!(
            feed::<MpathHeader>(&stream, &[3], 64),
            (frames.clone(), None)
        );
        // A body over the bound stops the stream at its header, with the reason.
        let (got, err) = feed::<MpathHeader>(&stream, &[1000], 4);
        assert_eq!(got, frames[..1].to_vec());
        assert!(err.unwrap().0.contains("exceeds the 4-byte limit"));
        // A TCP stream is not a multi-path one.
        let t = write_all(
            &[(
                TcpHeader {
                    kind: DATA,
                    len: 0,
                    tag: Tag::default(),
                },
                vec![],
            )],
            9,
        );
        assert!(
            feed::<MpathHeader>(&[t.clone(), t].concat(), &[64], 64)
                .1
                .is_some()
        );
    }
}
