//! The store server: accepts on a background thread, one thread per connection.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    HANDSHAKE_TIMEOUT, OP_ADD, OP_CHECK, OP_DELETE, OP_GET, OP_SET, OP_WAIT, ReqError, Request,
    ST_ERROR, ST_OK, ST_TIMEOUT, deadline_after, parse_key_list, read_request,
};
use crate::bootstrap::handshake::{self, PURPOSE_STORE};
use crate::error::{Error, Result};

/// How long the server waits for a client to take a reply before dropping the connection.
const SERVER_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// The accept queue asked for (the kernel caps it at net.core.somaxconn).
const ACCEPT_BACKLOG: i32 = 4096;

/// Stack of a connection thread: it only parses frames and copies values on the heap.
const CONN_STACK: usize = 256 << 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a panicking holder does no harm.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Data {
    map: HashMap<Vec<u8>, Vec<u8>>,
    stopped: bool,
    /// Requests served, per key namespace (see [`StoreStats`]).
    counts: HashMap<Vec<u8>, u64>,
}

/// What a store has served so far: how to see that the bootstrap's load on the root grows
/// linearly with the rank count (`Communicator::store_stats`, `tests/scale.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Connections accepted (authenticated or not).
    pub connections: u64,
    /// Requests answered, all kinds.
    pub requests: u64,
    /// Requests per key namespace: the key up to its first `/` (`comm` for the card exchange,
    /// `live` for heartbeats); for WAIT and CHECK, the first key of the list.
    pub by_namespace: BTreeMap<String, u64>,
}

impl StoreStats {
    /// Requests under namespace `ns` (0 if none).
    pub fn under(&self, ns: &str) -> u64 {
        self.by_namespace.get(ns).copied().unwrap_or(0)
    }
}

/// Namespaces counted separately; the rest are counted together as `(other)`.
const MAX_NAMESPACES: usize = 64;

/// The namespace a request is counted under.
fn namespace(req: &Request) -> &[u8] {
    let key: &[u8] = match req.op {
        OP_WAIT | OP_CHECK => parse_key_list(&req.value)
            .and_then(|k| k.first().copied())
            .unwrap_or(b""),
        _ => &req.key,
    };
    key.split(|&b| b == b'/').next().unwrap_or(b"")
}

struct Conns {
    closed: bool,
    /// Connections accepted so far (the next connection's id).
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

impl std::fmt::Debug for StoreServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl StoreServer {
    /// Serves the store on `listener` (e.g. from [`UniqueId::take_listener`](crate::bootstrap::UniqueId::take_listener));
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
        // Every rank connects at init, all at once.
        crate::sys::set_listen_backlog(&listener, ACCEPT_BACKLOG)
            .map_err(|e| Error::io("deepening the store listener's accept queue", e))?;
        let shared = Arc::new(Shared {
            secret,
            handshake_timeout,
            stopping: AtomicBool::new(false),
            data: Mutex::new(Data {
                map: HashMap::new(),
                stopped: false,
                counts: HashMap::new(),
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

    /// Connections and requests served so far.
    pub fn stats(&self) -> StoreStats {
        let connections = lock(&self.shared.conns).next_id;
        let d = lock(&self.shared.data);
        StoreStats {
            connections,
            requests: d.counts.values().sum(),
            by_namespace: d
                .counts
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), *v))
                .collect(),
        }
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
        // The fd belongs to `self.listener`, which is alive (we hold an Arc to it), so it cannot
        // have been closed or reused; shutdown(2) wakes the accept thread with an error.
        crate::sys::shutdown_socket(self.listener.as_fd());
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

/// Reads one request under a deadline that starts at the server's handshake limit and grows by
/// 1 µs per byte received (1 MB/s): a client that starts a request and then stalls or trickles
/// (a slowloris that knows the secret) is disconnected, while a large value still arrives over a
/// slow link.
struct Paced<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl io::Read for Paced<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request did not arrive in time (a stalled or trickling client)",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        let n = io::Read::read(&mut &*self.stream, buf)?;
        self.deadline += Duration::from_micros(n as u64);
        Ok(n)
    }
}

fn serve_requests(shared: &Shared, stream: &mut TcpStream, peer: SocketAddr) {
    loop {
        // Between requests a client may stay idle as long as it likes (ranks keep their
        // connection for the whole job); once a request has begun, it must arrive in time.
        if stream.set_read_timeout(None).is_err() {
            return;
        }
        match stream.peek(&mut [0u8; 1]) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        let mut paced = Paced {
            stream,
            deadline: deadline_after(Instant::now(), shared.handshake_timeout),
        };
        let req = match read_request(&mut paced) {
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
    {
        let mut d = lock(&shared.data);
        // A bounded table: namespaces past the first 64 share one entry.
        let ns = namespace(req);
        let ns = if d.counts.len() < MAX_NAMESPACES || d.counts.contains_key(ns) {
            ns
        } else {
            b"(other)"
        };
        *d.counts.entry(ns.to_vec()).or_insert(0) += 1;
    }
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
