//! The rendezvous store: a small authenticated key-value server that rank 0 serves and every
//! rank uses to exchange addresses ("cards"), counters and barriers at init.
//!
//! # Wire protocol (all integers little-endian)
//!
//! After the [`handshake`](super::handshake) with purpose
//! [`PURPOSE_STORE`](super::handshake::PURPOSE_STORE), the client sends
//! requests and the server answers each in order:
//!
//! ```text
//! request  op u8 | key_len u32 | key | value_len u32 | value | timeout_ms u32
//! reply    status u8 (0 ok, 1 timeout, 2 error) | len u32 | payload
//! ```
//!
//! | op        | key     | value                    | ok payload                     |
//! |-----------|---------|--------------------------|--------------------------------|
//! | 1 SET     | the key | the value                | empty                          |
//! | 2 GET     | the key | empty                    | the value (waits up to timeout)|
//! | 3 ADD     | the key | delta, i64               | the new value, i64             |
//! | 4 WAIT    | empty   | key list                 | empty (waits up to timeout)    |
//! | 5 DELETE  | the key | empty                    | 1 byte: 1 if it existed        |
//! | 6 CHECK   | empty   | key list                 | 1 byte: 1 if all exist         |
//!
//! A key list is `count u32` then `count` times `len u32 | key`. Keys are at most
//! [`MAX_KEY_LEN`] bytes and values at most [`MAX_VALUE_LEN`]; every length is checked before
//! anything is allocated, and a client that breaks a bound is disconnected with a WARN. A timed
//! out WAIT's payload lists the missing keys; an error's payload is a UTF-8 message.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

mod client;
mod server;

pub use client::StoreClient;
pub use server::{StoreServer, StoreStats};

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 4 << 10;
/// Longest value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 << 20;
/// How long a connecting client has to complete the handshake, by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const OP_SET: u8 = 1;
const OP_GET: u8 = 2;
const OP_ADD: u8 = 3;
const OP_WAIT: u8 = 4;
const OP_DELETE: u8 = 5;
const OP_CHECK: u8 = 6;

const ST_OK: u8 = 0;
const ST_TIMEOUT: u8 = 1;
const ST_ERROR: u8 = 2;

/// `start + timeout`, or a year from `start` if that overflows (`Duration::MAX` = "no limit").
pub(crate) fn deadline_after(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .or_else(|| start.checked_add(Duration::from_secs(365 * 86400)))
        .unwrap_or(start)
}

fn op_name(op: u8) -> &'static str {
    match op {
        OP_SET => "set",
        OP_GET => "get",
        OP_ADD => "add",
        OP_WAIT => "wait",
        OP_DELETE => "delete",
        OP_CHECK => "check",
        _ => "unknown op",
    }
}

struct Request {
    op: u8,
    key: Vec<u8>,
    value: Vec<u8>,
    timeout: Duration,
}

enum ReqError {
    Io(io::Error),
    Violation(String),
}

impl From<io::Error> for ReqError {
    fn from(e: io::Error) -> Self {
        ReqError::Io(e)
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads exactly `len` bytes, growing the buffer only as bytes arrive (a client announcing a
/// large value and sending nothing costs nothing).
fn read_bytes(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(len as u64).read_to_end(&mut v)?;
    if v.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(v)
}

/// One request, or `None` on a clean EOF between requests.
fn read_request(r: &mut impl Read) -> Result<Option<Request>, ReqError> {
    let mut op = [0u8; 1];
    loop {
        match r.read(&mut op) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let op = op[0];
    if !(OP_SET..=OP_CHECK).contains(&op) {
        return Err(ReqError::Violation(format!("unknown op {op}")));
    }
    let klen = read_u32(r)? as usize;
    if klen > MAX_KEY_LEN {
        return Err(ReqError::Violation(format!(
            "key of {klen} bytes (limit {MAX_KEY_LEN})"
        )));
    }
    let key = read_bytes(r, klen)?;
    let vlen = read_u32(r)? as usize;
    if vlen > MAX_VALUE_LEN {
        return Err(ReqError::Violation(format!(
            "value of {vlen} bytes (limit {MAX_VALUE_LEN})"
        )));
    }
    let value = read_bytes(r, vlen)?;
    let timeout = Duration::from_millis(u64::from(read_u32(r)?));
    Ok(Some(Request {
        op,
        key,
        value,
        timeout,
    }))
}

/// A request as [`parse_request`] returns it: `(op, key, value, timeout)`.
pub type ParsedRequest = (u8, Vec<u8>, Vec<u8>, Duration);

/// Parses one request from untrusted bytes exactly as the server does: every length is checked
/// against [`MAX_KEY_LEN`] / [`MAX_VALUE_LEN`] before anything is read, and buffers grow only
/// as bytes arrive. Returns `(op, key, value, timeout)`, `Ok(None)` for empty input, and `Err`
/// (why) for a protocol violation or input that ends early. Never panics. Public for the
/// protocol's tests and fuzz targets; clients use [`StoreClient`].
pub fn parse_request(bytes: &[u8]) -> Result<Option<ParsedRequest>, String> {
    match read_request(&mut &bytes[..]) {
        Ok(Some(r)) => Ok(Some((r.op, r.key, r.value, r.timeout))),
        Ok(None) => Ok(None),
        Err(ReqError::Io(e)) => Err(format!("truncated request: {e}")),
        Err(ReqError::Violation(why)) => Err(why),
    }
}

/// Parses a key list (`count u32`, then `len u32 | key` each, little-endian; the value of a
/// WAIT or CHECK request), bounds-checked: `None` for anything malformed, including trailing
/// bytes. Never panics. Public for the protocol's tests and fuzz targets.
pub fn parse_key_list(b: &[u8]) -> Option<Vec<&[u8]>> {
    let mut rest = b;
    let mut take = |n: usize| -> Option<&[u8]> {
        if rest.len() < n {
            return None;
        }
        let (h, t) = rest.split_at(n);
        rest = t;
        Some(h)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    // Each key needs at least 4 bytes, so a count larger than that is a lie.
    if count > b.len() / 4 {
        return None;
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        if len > MAX_KEY_LEN {
            return None;
        }
        keys.push(take(len)?);
    }
    if !rest.is_empty() {
        return None;
    }
    Some(keys)
}

/// Encodes a key list in the form [`parse_key_list`] reads.
pub fn encode_key_list(keys: &[&str]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + keys.iter().map(|k| 4 + k.len()).sum::<usize>());
    v.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for k in keys {
        v.extend_from_slice(&(k.len() as u32).to_le_bytes());
        v.extend_from_slice(k.as_bytes());
    }
    v
}

/// Waits until `nranks` ranks have called `barrier` with the same `name`, within `timeout`.
///
/// Each call adds 1 to `<name>/count`; the last arriving rank sets `<name>/done`, which the
/// others wait for. A name is good for one barrier: use a fresh one (e.g. with a generation
/// number) each time. On timeout the error says how many ranks arrived.
pub fn barrier(
    client: &mut StoreClient,
    name: &str,
    nranks: usize,
    timeout: Duration,
) -> Result<()> {
    let count_key = format!("{name}/count");
    let done_key = format!("{name}/done");
    let n = client.add(&count_key, 1)?;
    let nranks_i = i64::try_from(nranks).unwrap_or(i64::MAX);
    if n > nranks_i {
        return Err(Error::invalid_usage(format!(
            "barrier {name:?}: {n} arrivals for {nranks} ranks; a barrier name was reused or ranks \
             disagree on the world size"
        )));
    }
    if n == nranks_i {
        client.set(&done_key, b"1")?;
    }
    match client.get(&done_key, timeout) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == crate::error::ErrorKind::Timeout => {
            let arrived = client.add(&count_key, 0).unwrap_or(n);
            Err(Error::timeout(
                None,
                format!("barrier {name:?}: only {arrived} of {nranks} ranks arrived"),
                timeout,
            ))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_round_trip_and_reject_lies() {
        let enc = encode_key_list(&["a", "bc", ""]);
        let dec = parse_key_list(&enc).unwrap();
        assert_eq!(dec, vec![&b"a"[..], &b"bc"[..], &b""[..]]);
        assert!(parse_key_list(&[]).is_none());
        assert!(parse_key_list(&u32::MAX.to_le_bytes()).is_none());
        let mut trailing = enc.clone();
        trailing.push(0);
        assert!(parse_key_list(&trailing).is_none());
        let mut long = 1u32.to_le_bytes().to_vec();
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_key_list(&long).is_none());
    }

    #[test]
    fn request_bounds_are_checked_before_reading() {
        let mut big_key = vec![OP_SET];
        big_key.extend_from_slice(&(MAX_KEY_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(
            read_request(&mut &big_key[..]),
            Err(ReqError::Violation(_))
        ));
        let mut big_val = vec![OP_SET, 1, 0, 0, 0, b'k'];
        big_val.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_request(&mut &big_val[..]),
            Err(ReqError::Violation(_))
        ));
        assert!(matches!(
            read_request(&mut &[99u8][..]),
            Err(ReqError::Violation(_))
        ));
        assert!(matches!(read_request(&mut &[][..]), Ok(None)));
        // A value announced but not sent: an EOF error, not an allocation of its size.
        let mut short = vec![OP_SET, 1, 0, 0, 0, b'k'];
        short.extend_from_slice(&(MAX_VALUE_LEN as u32).to_le_bytes());
        assert!(matches!(
            read_request(&mut &short[..]),
            Err(ReqError::Io(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn random_requests_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = read_request(&mut &b[..]);
            let _ = parse_key_list(&b);
        }
    }
}
