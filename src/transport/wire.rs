//! What links put on the wire, in one place: little-endian field readers that never panic, the
//! TCP and multi-path frame headers, and the abort body every transport shares.
//!
//! Parsing follows smoltcp's `new_checked` style: a view or header is only built from bytes it
//! has checked (length, magic, kind, bounds), and bad bytes come back as a [`Malformed`] error,
//! never a panic. Encoding is the exact inverse (the tests and `tests/parsers.rs` round-trip it).
//!
//! ```text
//! TCP frame:        magic u16 "OX" | kind u8 | 0 u8 | len u32 | Tag (24 B), then len bytes
//! multi-path frame: magic u16 "OM" | kind u8 | 0 u8 | len u32 | seq u64 | recv u64
//!                   | credit u64 | Tag (24 B), then len bytes
//! abort body:       code u8 | named peer u32 (u32::MAX: none) | message (UTF-8, truncated)
//! ```

use std::fmt;

use super::Tag;
use crate::Error;

/// Bytes that do not parse as what they claim to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Malformed> for String {
    fn from(m: Malformed) -> String {
        m.0
    }
}

/// The `N` bytes of `b` at `at`, or `None` past its end.
pub fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The little-endian u16 at `at`, or `None` past the end.
pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    bytes_at(b, at).map(u16::from_le_bytes)
}

/// The little-endian u32 at `at`, or `None` past the end.
pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    bytes_at(b, at).map(u32::from_le_bytes)
}

/// The little-endian u64 at `at`, or `None` past the end.
pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    bytes_at(b, at).map(u64::from_le_bytes)
}

fn short(what: &str, need: usize, got: usize) -> Malformed {
    Malformed(format!("{what} of {got} bytes, need {need}"))
}

/// Frame kind: a message (TCP and multi-path).
pub const DATA: u8 = 1;
/// Frame kind: an abort body follows (TCP and multi-path).
pub const ABORT: u8 = 2;
/// Frame kind: a multi-path acknowledgement (no body).
pub const ACK: u8 = 3;
/// Frame kind: a multi-path socket died (`seq` = its index; no body).
pub const DEAD: u8 = 4;
/// Largest abort body a frame may carry.
pub const MAX_ABORT: usize = 4096;

/// Checks magic, kind and length bound of a frame header's first 8 bytes: (kind, len).
fn check_prefix(
    h: &[u8],
    magic: u16,
    need: usize,
    bound: impl Fn(u8) -> Option<usize>,
) -> Result<(u8, usize), Malformed> {
    if h.len() < need {
        return Err(short("frame header", need, h.len()));
    }
    let m = u16_at(h, 0).unwrap_or(0);
    if m != magic {
        return Err(Malformed(format!("bad frame magic {m:#06x}")));
    }
    let kind = h[2];
    let len = u32_at(h, 4).unwrap_or(0) as usize;
    let Some(bound) = bound(kind) else {
        return Err(Malformed(format!("unknown frame kind {kind}")));
    };
    if len > bound {
        return Err(Malformed(format!(
            "frame of {len} bytes exceeds the {bound}-byte limit"
        )));
    }
    Ok((kind, len))
}

fn put_prefix(h: &mut [u8], magic: u16, kind: u8, len: usize) {
    h[0..2].copy_from_slice(&magic.to_le_bytes());
    h[2] = kind;
    h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
}

/// A TCP frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader {
    /// [`DATA`] or [`ABORT`].
    pub kind: u8,
    /// Body length.
    pub len: usize,
    /// The message's tag (DATA).
    pub tag: Tag,
}

impl TcpHeader {
    /// Encoded size.
    pub const LEN: usize = 8 + Tag::LEN;
    const MAGIC: u16 = 0x584f; // "OX"

    /// Parses a header from untrusted bytes: bodies are bounded by `max_data` (DATA) or
    /// [`MAX_ABORT`] (ABORT). Never panics.
    pub fn new_checked(h: &[u8], max_data: usize) -> Result<TcpHeader, Malformed> {
        let (kind, len) = check_prefix(h, Self::MAGIC, Self::LEN, |k| match k {
            DATA => Some(max_data),
            ABORT => Some(MAX_ABORT),
            _ => None,
        })?;
        let tag = Tag::parse(&h[8..]).ok_or_else(|| short("tag", Tag::LEN, h.len() - 8))?;
        Ok(TcpHeader { kind, len, tag })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; TcpHeader::LEN] {
        let mut h = [0u8; TcpHeader::LEN];
        put_prefix(&mut h, Self::MAGIC, self.kind, self.len);
        h[8..].copy_from_slice(&self.tag.encode());
        h
    }
}

/// A multi-path frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpathHeader {
    /// [`DATA`], [`ABORT`], [`ACK`] or [`DEAD`].
    pub kind: u8,
    /// Body length.
    pub len: usize,
    /// Message sequence (DATA) or socket index (DEAD).
    pub seq: u64,
    /// The sender's gap-free received count.
    pub recv: u64,
    /// The sender's released count.
    pub credit: u64,
    /// The message's tag (DATA).
    pub tag: Tag,
}

impl MpathHeader {
    /// Encoded size.
    pub const LEN: usize = 32 + Tag::LEN;
    const MAGIC: u16 = 0x4d4f; // "OM"

    /// Parses a header from untrusted bytes: bodies are bounded by `max_data` (DATA) or
    /// [`MAX_ABORT`] (ABORT); ACK and DEAD carry none. Never panics.
    pub fn new_checked(h: &[u8], max_data: usize) -> Result<MpathHeader, Malformed> {
        let (kind, len) = check_prefix(h, Self::MAGIC, Self::LEN, |k| match k {
            DATA => Some(max_data),
            ABORT => Some(MAX_ABORT),
            ACK | DEAD => Some(0),
            _ => None,
        })?;
        let field = |at| u64_at(h, at).ok_or_else(|| short("frame header", Self::LEN, h.len()));
        Ok(MpathHeader {
            kind,
            len,
            seq: field(8)?,
            recv: field(16)?,
            credit: field(24)?,
            tag: Tag::parse(&h[32..]).ok_or_else(|| short("tag", Tag::LEN, h.len() - 32))?,
        })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; MpathHeader::LEN] {
        let mut h = [0u8; MpathHeader::LEN];
        put_prefix(&mut h, Self::MAGIC, self.kind, self.len);
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..24].copy_from_slice(&self.recv.to_le_bytes());
        h[24..32].copy_from_slice(&self.credit.to_le_bytes());
        h[32..].copy_from_slice(&self.tag.encode());
        h
    }
}

/// A checked view of an abort body: why a peer gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortBody<'a> {
    /// The error's code (`Error::code`).
    pub code: u8,
    /// The peer the error names, if any.
    pub peer: Option<usize>,
    /// The message bytes (UTF-8 unless truncated mid-character).
    pub message: &'a [u8],
}

impl<'a> AbortBody<'a> {
    /// Fixed part: code and named peer.
    pub const FIXED: usize = 5;

    /// Views `b` as an abort body; never panics.
    pub fn new_checked(b: &'a [u8]) -> Result<AbortBody<'a>, Malformed> {
        let (Some(&code), Some(p)) = (b.first(), u32_at(b, 1)) else {
            return Err(short("abort body", Self::FIXED, b.len()));
        };
        Ok(AbortBody {
            code,
            peer: (p != u32::MAX).then_some(p as usize),
            message: &b[Self::FIXED..],
        })
    }

    /// The message, with any bytes that are not UTF-8 replaced.
    pub fn message_lossy(&self) -> std::borrow::Cow<'a, str> {
        String::from_utf8_lossy(self.message)
    }
}

/// Encodes `err` as an abort body into `out`, truncating its message to fit; returns the
/// length written (0 if `out` cannot hold even the fixed part). The one encoder every
/// transport's abort (TCP and multi-path frames, shm abort areas, RDMA writes) uses.
pub fn encode_abort(err: &Error, out: &mut [u8]) -> usize {
    if out.len() < AbortBody::FIXED {
        return 0;
    }
    let peer = err.peer().map_or(u32::MAX, |p| p as u32);
    out[0] = err.code();
    out[1..5].copy_from_slice(&peer.to_le_bytes());
    let msg = err.message().as_bytes();
    let n = msg.len().min(out.len() - AbortBody::FIXED);
    out[5..5 + n].copy_from_slice(&msg[..n]);
    5 + n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tag() -> impl Strategy<Value = Tag> {
        (any::<u64>(), any::<u64>(), any::<[u8; 3]>(), any::<u32>()).prop_map(|(s, c, b, r)| Tag {
            seq: s,
            count: c,
            coll: b[0],
            dtype: b[1],
            op: b[2],
            root: r,
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..96),
                                       max in 0usize..1 << 20, at in 0usize..100) {
            if let Ok(h) = TcpHeader::new_checked(&b, max) {
                prop_assert!(h.kind == DATA || h.kind == ABORT);
                prop_assert!(h.len <= max.max(MAX_ABORT));
                prop_assert_eq!(TcpHeader::new_checked(&h.encode(), max), Ok(h));
            }
            if let Ok(h) = MpathHeader::new_checked(&b, max) {
                prop_assert!((DATA..=DEAD).contains(&h.kind));
                prop_assert!(h.len <= max.max(MAX_ABORT));
                prop_assert_eq!(MpathHeader::new_checked(&h.encode(), max), Ok(h));
            }
            if let Ok(a) = AbortBody::new_checked(&b) {
                prop_assert_eq!(a.message.len(), b.len() - AbortBody::FIXED);
            } else {
                prop_assert!(b.len() < AbortBody::FIXED);
            }
            prop_assert_eq!(u16_at(&b, at).is_some(), at + 2 <= b.len());
            prop_assert_eq!(u32_at(&b, at).is_some(), at + 4 <= b.len());
            prop_assert_eq!(u64_at(&b, at).is_some(), at + 8 <= b.len());
            prop_assert_eq!(u64_at(&b, usize::MAX - 3), None);
        }

        #[test]
        fn headers_round_trip(kind in 1u8..=4, len in 0usize..=4096, seq in any::<u64>(),
                              recv in any::<u64>(), credit in any::<u64>(), tag in tag()) {
            let len = if kind > 2 { 0 } else { len };
            let m = MpathHeader { kind, len, seq, recv, credit, tag };
            prop_assert_eq!(MpathHeader::new_checked(&m.encode(), 4096), Ok(m));
            let t = TcpHeader { kind: 1 + kind % 2, len, tag };
            prop_assert_eq!(TcpHeader::new_checked(&t.encode(), 4096), Ok(t));
            // One byte over the bound is refused.
            let over = TcpHeader { kind: DATA, len: len + 1, tag };
            prop_assert!(TcpHeader::new_checked(&over.encode(), len).is_err());
        }

        #[test]
        fn abort_bodies_round_trip(peer in proptest::option::of(0usize..1 << 20),
                                   msg in "[a-zé ]{0,80}", room in 0usize..120) {
            let err = match peer {
                Some(peer) => Error::peer_lost(peer, msg),
                None => Error::invalid_argument(msg),
            };
            let mut out = vec![0u8; room];
            let n = encode_abort(&err, &mut out);
            if room < AbortBody::FIXED {
                prop_assert_eq!(n, 0);
            } else {
                let a = AbortBody::new_checked(&out[..n]).unwrap();
                prop_assert_eq!(a.code, err.code());
                prop_assert_eq!(a.peer, err.peer());
                let m = err.message().as_bytes();
                prop_assert_eq!(a.message, &m[..m.len().min(room - AbortBody::FIXED)]);
            }
        }
    }

    #[test]
    fn bad_headers_say_why() {
        let mut h = TcpHeader {
            kind: DATA,
            len: 10,
            tag: Tag::default(),
        }
        .encode();
        assert_eq!(
            TcpHeader::new_checked(&h[..10], 64).unwrap_err().0,
            "frame header of 10 bytes, need 32"
        );
        assert!(
            TcpHeader::new_checked(&h, 9)
                .unwrap_err()
                .0
                .contains("exceeds the 9-byte limit")
        );
        h[2] = 7;
        assert_eq!(
            TcpHeader::new_checked(&h, 64).unwrap_err().0,
            "unknown frame kind 7"
        );
        h[0] = 0;
        assert!(
            TcpHeader::new_checked(&h, 64)
                .unwrap_err()
                .0
                .starts_with("bad frame magic")
        );
        // A TCP header is not a multi-path one.
        let t = TcpHeader {
            kind: DATA,
            len: 0,
            tag: Tag::default(),
        }
        .encode();
        let mut m = [0u8; MpathHeader::LEN];
        m[..t.len()].copy_from_slice(&t);
        assert!(MpathHeader::new_checked(&m, 64).is_err());
        let ack = MpathHeader {
            kind: ACK,
            len: 1,
            seq: 0,
            recv: 0,
            credit: 0,
            tag: Tag::default(),
        };
        assert!(MpathHeader::new_checked(&ack.encode(), 64).is_err());
    }
}
