//! The rendezvous store: a small authenticated key-value server that rank 0 serves and every
//! rank uses to exchange addresses ("cards"), counters and barriers at init.
//!
//! # Wire protocol (all integers little-endian)
//!
//! After the [`handshake`](super::handshake) with purpose [`PURPOSE_STORE`], the client sends
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

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::handshake::{self, PURPOSE_STORE};
use crate::error::{Error, Result};

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

/// Longest reply payload a client accepts (a value, or a message listing missing keys).
const MAX_REPLY_LEN: usize = MAX_VALUE_LEN + (1 << 20);
/// How long the server waits for a client to take a reply before dropping the connection.
const SERVER_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// The least time a client waits for a non-blocking reply, and the margin added to blocking ones.
const MIN_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Stack of a connection thread: it only parses frames and copies values on the heap.
const CONN_STACK: usize = 256 << 10;

/// `start + timeout`, or a year from `start` if that overflows (`Duration::MAX` = "no limit").
pub(crate) fn deadline_after(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .or_else(|| start.checked_add(Duration::from_secs(365 * 86400)))
        .unwrap_or(start)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a panicking holder does no harm.
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

struct Data {
    map: HashMap<Vec<u8>, Vec<u8>>,
    stopped: bool,
}

struct Conns {
    closed: bool,
    next_id: u64,
    streams: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    secret: [u8; 16],
    handshake_timeout: Duration,
    stopping: AtomicBool,
    data: Mutex<Data>,
    changed: Condvar,
    conns: Mutex<Conns>,
}

/// The store server rank 0 runs: accepts on a background thread, one thread per connection.
///
/// Dropping it stops accepting, closes every client connection (their next request fails with
/// "rank 0 went away") and joins all its threads; that never hangs.
pub struct StoreServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Arc<TcpListener>,
    accept: Option<JoinHandle<()>>,
}

impl StoreServer {
    /// Serves the store on `listener` (e.g. from [`UniqueId::take_listener`](super::UniqueId::take_listener));
    /// every connection must prove knowledge of `secret`.
    pub fn start(listener: TcpListener, secret: [u8; 16]) -> Result<StoreServer> {
        StoreServer::start_with_timeout(listener, secret, HANDSHAKE_TIMEOUT)
    }

    /// Like [`StoreServer::start`] with a given handshake timeout: a connection that has not
    /// authenticated within it is closed.
    pub fn start_with_timeout(
        listener: TcpListener,
        secret: [u8; 16],
        handshake_timeout: Duration,
    ) -> Result<StoreServer> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("getsockname on the store listener", e))?;
        listener
            .set_nonblocking(false)
            .map_err(|e| Error::io("configuring the store listener", e))?;
        let shared = Arc::new(Shared {
            secret,
            handshake_timeout,
            stopping: AtomicBool::new(false),
            data: Mutex::new(Data {
                map: HashMap::new(),
                stopped: false,
            }),
            changed: Condvar::new(),
            conns: Mutex::new(Conns {
                closed: false,
                next_id: 0,
                streams: HashMap::new(),
                threads: Vec::new(),
            }),
        });
        let listener = Arc::new(listener);
        let accept = {
            let (shared, listener) = (shared.clone(), listener.clone());
            std::thread::Builder::new()
                .name("oxccl-store".into())
                .spawn(move || accept_loop(&shared, &listener))
                .map_err(|e| Error::io("spawning the store thread", e))?
        };
        crate::info!(None, "store: serving on {addr}");
        Ok(StoreServer {
            addr,
            shared,
            listener,
            accept: Some(accept),
        })
    }

    /// The address the store listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        {
            let mut d = lock(&self.shared.data);
            d.stopped = true;
            self.shared.changed.notify_all();
        }
        // SAFETY: the fd belongs to `self.listener`, which is alive (we hold an Arc to it), so it
        // cannot have been closed or reused; shutdown(2) only changes the socket's state, which
        // wakes the accept thread with an error.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads = {
            let mut c = lock(&self.shared.conns);
            c.closed = true;
            for s in c.streams.values() {
                let _ = s.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut c.threads)
        };
        for t in threads {
            let _ = t.join();
        }
        crate::info!(None, "store: stopped serving on {}", self.addr);
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: say so and back off instead of spinning.
                crate::warn!(
                    None,
                    "store: accept on {:?} failed: {e}",
                    listener.local_addr()
                );
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let mut c = lock(&shared.conns);
        if c.closed {
            return;
        }
        c.threads.retain(|t| !t.is_finished());
        let id = c.next_id;
        c.next_id += 1;
        match stream.try_clone() {
            Ok(clone) => {
                c.streams.insert(id, clone);
            }
            Err(e) => {
                crate::warn!(None, "store: dropping connection from {peer}: {e}");
                continue;
            }
        }
        let sh = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("oxccl-store-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || serve_connection(&sh, stream, peer, id));
        match spawned {
            Ok(t) => c.threads.push(t),
            Err(e) => {
                crate::warn!(None, "store: no thread for the connection from {peer}: {e}");
                c.streams.remove(&id);
            }
        }
    }
}

fn serve_connection(shared: &Shared, mut stream: TcpStream, peer: SocketAddr, id: u64) {
    let _ = stream.set_nodelay(true);
    match handshake::server(
        &mut stream,
        &shared.secret,
        PURPOSE_STORE,
        shared.handshake_timeout,
    ) {
        Err(e) => {
            if !shared.stopping.load(Ordering::SeqCst) {
                crate::warn!(None, "store: refused connection from {peer}: {e}");
            }
        }
        Ok(()) => {
            crate::trace!(None, "store: client {peer} authenticated");
            let _ = stream.set_write_timeout(Some(SERVER_WRITE_TIMEOUT));
            serve_requests(shared, &mut stream, peer);
        }
    }
    lock(&shared.conns).streams.remove(&id);
}

fn serve_requests(shared: &Shared, stream: &mut TcpStream, peer: SocketAddr) {
    loop {
        let req = match read_request(stream) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(ReqError::Io(e)) => {
                if !shared.stopping.load(Ordering::SeqCst) {
                    crate::warn!(None, "store: connection from {peer} broke mid-request: {e}");
                }
                return;
            }
            Err(ReqError::Violation(why)) => {
                crate::warn!(None, "store: disconnecting client {peer}: {why}");
                return;
            }
        };
        let (status, payload) = handle(shared, &req);
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(status);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        if let Err(e) = stream.write_all(&out) {
            if !shared.stopping.load(Ordering::SeqCst) {
                crate::warn!(None, "store: could not answer client {peer}: {e}");
            }
            return;
        }
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

/// Parses a key list (`count u32`, then `len u32 | key` each), bounds-checked.
fn parse_key_list(b: &[u8]) -> Option<Vec<&[u8]>> {
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

fn encode_key_list(keys: &[&str]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + keys.iter().map(|k| 4 + k.len()).sum::<usize>());
    v.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for k in keys {
        v.extend_from_slice(&(k.len() as u32).to_le_bytes());
        v.extend_from_slice(k.as_bytes());
    }
    v
}

fn err_reply(msg: impl Into<String>) -> (u8, Vec<u8>) {
    (ST_ERROR, msg.into().into_bytes())
}

/// Waits until `ready` holds for the map, the deadline passes or the store stops.
fn wait_until(
    shared: &Shared,
    timeout: Duration,
    ready: impl Fn(&HashMap<Vec<u8>, Vec<u8>>) -> bool,
) -> (MutexGuard<'_, Data>, u8) {
    let deadline = deadline_after(Instant::now(), timeout);
    let mut d = lock(&shared.data);
    loop {
        if ready(&d.map) {
            return (d, ST_OK);
        }
        if d.stopped {
            return (d, ST_ERROR);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (d, ST_TIMEOUT);
        }
        d = shared
            .changed
            .wait_timeout(d, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

fn handle(shared: &Shared, req: &Request) -> (u8, Vec<u8>) {
    match req.op {
        OP_SET => {
            lock(&shared.data)
                .map
                .insert(req.key.clone(), req.value.clone());
            shared.changed.notify_all();
            (ST_OK, Vec::new())
        }
        OP_GET => {
            let (d, st) = wait_until(shared, req.timeout, |m| m.contains_key(&req.key));
            match st {
                ST_OK => (ST_OK, d.map.get(&req.key).cloned().unwrap_or_default()),
                ST_TIMEOUT => (ST_TIMEOUT, Vec::new()),
                _ => err_reply("the store is shutting down"),
            }
        }
        OP_ADD => {
            let Ok(delta) = <[u8; 8]>::try_from(&req.value[..]) else {
                return err_reply("add: the delta must be 8 bytes");
            };
            let delta = i64::from_le_bytes(delta);
            let mut d = lock(&shared.data);
            let cur = match d.map.get(&req.key) {
                None => 0,
                Some(v) => match <[u8; 8]>::try_from(&v[..]) {
                    Ok(b) => i64::from_le_bytes(b),
                    Err(_) => {
                        return err_reply(format!(
                            "add: key {:?} holds a {}-byte value, not a counter",
                            String::from_utf8_lossy(&req.key),
                            v.len()
                        ));
                    }
                },
            };
            let new = cur.wrapping_add(delta);
            d.map.insert(req.key.clone(), new.to_le_bytes().to_vec());
            drop(d);
            shared.changed.notify_all();
            (ST_OK, new.to_le_bytes().to_vec())
        }
        OP_WAIT | OP_CHECK => {
            let Some(keys) = parse_key_list(&req.value) else {
                return err_reply("malformed key list");
            };
            let timeout = if req.op == OP_CHECK {
                Duration::ZERO
            } else {
                req.timeout
            };
            let (d, st) = wait_until(shared, timeout, |m| keys.iter().all(|k| m.contains_key(*k)));
            match (req.op, st) {
                (OP_CHECK, ST_OK) => (ST_OK, vec![1]),
                (OP_CHECK, ST_TIMEOUT) => (ST_OK, vec![0]),
                (_, ST_OK) => (ST_OK, Vec::new()),
                (_, ST_TIMEOUT) => {
                    let missing: Vec<String> = keys
                        .iter()
                        .filter(|k| !d.map.contains_key(**k))
                        .map(|k| format!("{:?}", String::from_utf8_lossy(k)))
                        .collect();
                    (ST_TIMEOUT, missing.join(", ").into_bytes())
                }
                _ => err_reply("the store is shutting down"),
            }
        }
        OP_DELETE => {
            let existed = lock(&shared.data).map.remove(&req.key).is_some();
            (ST_OK, vec![u8::from(existed)])
        }
        _ => err_reply(format!("unknown op {}", req.op)),
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

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
    /// start after the others. A wrong secret fails at once with [`Error::Auth`]; no store at
    /// all gives [`Error::Timeout`] naming the address and the last error.
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
            return Err(Error::InvalidArgument(format!(
                "store set {key:?}: value of {} bytes exceeds the limit of {MAX_VALUE_LEN}",
                value.len()
            )));
        }
        self.expect_ok(OP_SET, key, key, value, None).map(drop)
    }

    /// The value of `key`, waiting until some rank sets it; [`Error::Timeout`] naming the key
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

    /// Waits until every key in `keys` exists; [`Error::Timeout`] naming the missing ones.
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
        let e = Error::Internal(format!("rendezvous store at {}: {msg}", self.addr));
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
            _ => Err(Error::System(format!(
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
            | io::ErrorKind::BrokenPipe => Error::PeerLost {
                peer: 0,
                msg: format!(
                    "the rendezvous store at {addr} closed the connection during {op} {what:?}: \
                     rank 0, which serves it, went away (exited, crashed or was killed)"
                ),
            },
            _ => Error::io(format!("rendezvous store at {addr}: {op} {what:?}"), e),
        }
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidArgument(format!(
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
        return Err(Error::InvalidArgument(format!(
            "store: a list of {} keys is too long ({} bytes, limit {MAX_VALUE_LEN})",
            keys.len(),
            list.len()
        )));
    }
    Ok(list)
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
        return Err(Error::InvalidUsage(format!(
            "barrier {name:?}: {n} arrivals for {nranks} ranks; a barrier name was reused or ranks \
             disagree on the world size"
        )));
    }
    if n == nranks_i {
        client.set(&done_key, b"1")?;
    }
    match client.get(&done_key, timeout) {
        Ok(_) => Ok(()),
        Err(Error::Timeout { .. }) => {
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
