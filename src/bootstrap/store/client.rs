//! The store client.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{
    MAX_KEY_LEN, MAX_VALUE_LEN, OP_ADD, OP_CHECK, OP_DELETE, OP_GET, OP_SET, OP_WAIT, ST_ERROR,
    ST_OK, ST_TIMEOUT, deadline_after, encode_key_list, op_name, read_bytes,
};
use crate::bootstrap::handshake::{self, PURPOSE_STORE};
use crate::error::{Error, Result};

/// Longest reply payload a client accepts (a value, or a message listing missing keys).
const MAX_REPLY_LEN: usize = MAX_VALUE_LEN + (1 << 20);
/// The least time a client waits for a non-blocking reply, and the margin added to blocking ones.
const MIN_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the rendezvous store.
///
/// Every call is bounded: blocking calls by their timeout plus a margin, the others by the I/O
/// timeout (the `connect` timeout, at least 5 s). After an I/O error the connection is unusable
/// and every later call fails with the first error's cause.
pub struct StoreClient {
    stream: TcpStream,
    addr: SocketAddr,
    io_timeout: Duration,
    broken: Option<Error>,
}

impl std::fmt::Debug for StoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
    )
}

impl StoreClient {
    /// Connects to the store at `addr` and authenticates with `secret`, within `timeout`.
    ///
    /// A refused connection is retried with backoff until the deadline, because rank 0 may
    /// start after the others. A wrong secret fails at once with [`ErrorKind::Auth`](crate::error::ErrorKind::Auth); no store at
    /// all gives [`ErrorKind::Timeout`](crate::error::ErrorKind::Timeout) naming the address and the last error.
    pub fn connect(addr: SocketAddr, secret: &[u8; 16], timeout: Duration) -> Result<StoreClient> {
        let start = Instant::now();
        let deadline = deadline_after(start, timeout);
        let mut backoff = Duration::from_millis(5);
        let mut tries = 0u32;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            tries += 1;
            let err = if left.is_zero() {
                io::Error::from(io::ErrorKind::TimedOut)
            } else {
                match TcpStream::connect_timeout(&addr, left) {
                    Ok(mut stream) => {
                        let _ = stream.set_nodelay(true);
                        let left = deadline
                            .saturating_duration_since(Instant::now())
                            .max(Duration::from_millis(1));
                        handshake::client(&mut stream, secret, PURPOSE_STORE, left)?;
                        crate::trace!(None, "store: connected to {addr} after {tries} tries");
                        return Ok(StoreClient {
                            stream,
                            addr,
                            io_timeout: timeout.max(MIN_IO_TIMEOUT),
                            broken: None,
                        });
                    }
                    Err(e) if is_transient(&e) => e,
                    Err(e) => {
                        return Err(Error::io(
                            format!("connecting to the rendezvous store at {addr}"),
                            e,
                        ));
                    }
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::timeout(
                    Some(0),
                    format!(
                        "connecting to the rendezvous store at {addr} (served by rank 0; {tries} tries, last: {err}); \
                         is rank 0 running and is the address reachable from here?"
                    ),
                    timeout,
                ));
            }
            std::thread::sleep(backoff.min(left));
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// The store's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets how long a non-blocking request may take, and the margin added to blocking ones.
    pub fn set_io_timeout(&mut self, timeout: Duration) {
        self.io_timeout = timeout.max(Duration::from_millis(1));
    }

    /// Stores `value` under `key`, replacing any previous value, and wakes its waiters.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        check_key(key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(Error::invalid_argument(format!(
                "store set {key:?}: value of {} bytes exceeds the limit of {MAX_VALUE_LEN}",
                value.len()
            )));
        }
        self.expect_ok(OP_SET, key, key, value, None).map(drop)
    }

    /// The value of `key`, waiting until some rank sets it; [`ErrorKind::Timeout`](crate::error::ErrorKind::Timeout) naming the key
    /// if none does within `timeout`.
    pub fn get(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        check_key(key)?;
        self.expect_ok(OP_GET, key, key, &[], Some(timeout))
    }

    /// Adds `delta` to the counter `key` (missing = 0) and returns the new value.
    pub fn add(&mut self, key: &str, delta: i64) -> Result<i64> {
        check_key(key)?;
        let v = self.expect_ok(OP_ADD, key, key, &delta.to_le_bytes(), None)?;
        let b: [u8; 8] = v.try_into().map_err(|v: Vec<u8>| {
            self.protocol_error(format!("add answered {} bytes, not 8", v.len()))
        })?;
        Ok(i64::from_le_bytes(b))
    }

    /// Waits until every key in `keys` exists; [`ErrorKind::Timeout`](crate::error::ErrorKind::Timeout) naming the missing ones.
    pub fn wait(&mut self, keys: &[&str], timeout: Duration) -> Result<()> {
        let list = key_list(keys)?;
        let what = keys.join(", ");
        self.expect_ok(OP_WAIT, &what, "", &list, Some(timeout))
            .map(drop)
    }

    /// Removes `key`; returns whether it existed.
    pub fn delete(&mut self, key: &str) -> Result<bool> {
        check_key(key)?;
        Ok(self.expect_ok(OP_DELETE, key, key, &[], None)? == [1])
    }

    /// Whether every key in `keys` exists now (never waits).
    pub fn check(&mut self, keys: &[&str]) -> Result<bool> {
        let list = key_list(keys)?;
        let what = keys.join(", ");
        Ok(self.expect_ok(OP_CHECK, &what, "", &list, None)? == [1])
    }

    fn protocol_error(&mut self, msg: String) -> Error {
        let e = Error::internal(format!("rendezvous store at {}: {msg}", self.addr));
        self.broken = Some(e.clone());
        e
    }

    /// Sends one request and returns the payload of an ok reply; maps the other statuses.
    fn expect_ok(
        &mut self,
        op: u8,
        what: &str,
        key: &str,
        value: &[u8],
        wait: Option<Duration>,
    ) -> Result<Vec<u8>> {
        let (status, payload) = self.request(op, what, key, value, wait)?;
        match status {
            ST_OK => Ok(payload),
            ST_TIMEOUT => {
                let what = if op == OP_WAIT {
                    format!(
                        "store wait for keys [{}] (still missing)",
                        String::from_utf8_lossy(&payload)
                    )
                } else {
                    format!("store {} of key {what:?} (no rank set it)", op_name(op))
                };
                Err(Error::timeout(None, what, wait.unwrap_or_default()))
            }
            _ => Err(Error::system(format!(
                "rendezvous store at {} refused {} {what:?}: {}",
                self.addr,
                op_name(op),
                String::from_utf8_lossy(&payload)
            ))),
        }
    }

    fn request(
        &mut self,
        op: u8,
        what: &str,
        key: &str,
        value: &[u8],
        wait: Option<Duration>,
    ) -> Result<(u8, Vec<u8>)> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let timeout_ms = wait.map_or(0, |w| u32::try_from(w.as_millis()).unwrap_or(u32::MAX));
        let mut frame = Vec::with_capacity(13 + key.len() + value.len());
        frame.push(op);
        frame.extend_from_slice(&(key.len() as u32).to_le_bytes());
        frame.extend_from_slice(key.as_bytes());
        frame.extend_from_slice(&(value.len() as u32).to_le_bytes());
        frame.extend_from_slice(value);
        frame.extend_from_slice(&timeout_ms.to_le_bytes());
        // The server waits at most u32::MAX ms; we wait that long plus a margin for the reply.
        let read_timeout = wait.map_or(self.io_timeout, |_| {
            Duration::from_millis(u64::from(timeout_ms)).saturating_add(self.io_timeout)
        });
        let result = self.exchange(&frame, read_timeout);
        result.map_err(|e| {
            let err = self.io_error(op, what, e, read_timeout);
            self.broken = Some(err.clone());
            err
        })
    }

    fn exchange(&mut self, frame: &[u8], read_timeout: Duration) -> io::Result<(u8, Vec<u8>)> {
        self.stream.set_write_timeout(Some(self.io_timeout))?;
        self.stream.write_all(frame)?;
        self.stream.set_read_timeout(Some(read_timeout))?;
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if head[0] > ST_ERROR || len > MAX_REPLY_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed reply (status {}, length {len})", head[0]),
            ));
        }
        Ok((head[0], read_bytes(&mut self.stream, len)?))
    }

    fn io_error(&self, op: u8, what: &str, e: io::Error, waited: Duration) -> Error {
        let addr = self.addr;
        let op = op_name(op);
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::timeout(
                Some(0),
                format!("rendezvous store at {addr} (rank 0) did not answer {op} {what:?}"),
                waited,
            ),
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Error::peer_lost(
                0,
                format!(
                    "the rendezvous store at {addr} closed the connection during {op} {what:?}: \
                     rank 0, which serves it, went away (exited, crashed or was killed)"
                ),
            ),
            _ => Error::io(format!("rendezvous store at {addr}: {op} {what:?}"), e),
        }
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid_argument(format!(
            "store key of {} bytes exceeds the limit of {MAX_KEY_LEN} (starts {:?})",
            key.len(),
            key.chars().take(32).collect::<String>()
        )));
    }
    Ok(())
}

fn key_list(keys: &[&str]) -> Result<Vec<u8>> {
    for k in keys {
        check_key(k)?;
    }
    let list = encode_key_list(keys);
    if list.len() > MAX_VALUE_LEN {
        return Err(Error::invalid_argument(format!(
            "store: a list of {} keys is too long ({} bytes, limit {MAX_VALUE_LEN})",
            keys.len(),
            list.len()
        )));
    }
    Ok(list)
}
