//! Establishing peer connections: a listener thread that authenticates incoming sockets, and a
//! dialer. The lower rank dials, the higher rank accepts. Every connection first runs the HMAC
//! handshake (bootstrap::handshake) and then a hello naming the communicator, both ranks and the
//! socket index; anything else is refused with a WARN and changes nothing.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bootstrap::handshake::{self, PURPOSE_PEER};
use crate::error::Error;
use crate::error::Result;

const HELLO_MAGIC: u32 = 0x4f58_4845; // "OXHE"
const HELLO_LEN: usize = 28;
/// Bound on the handshake of one incoming connection (slow or silent clients are dropped).
const ACCEPT_HANDSHAKE: Duration = Duration::from_secs(10);

/// Who a connection is from, as its hello says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Communicator id.
    pub comm: u64,
    /// Dialing rank.
    pub from: u32,
    /// Accepting rank.
    pub to: u32,
    /// Socket index within the link.
    pub idx: u32,
    /// Sockets in the link.
    pub nsocks: u32,
}

impl Hello {
    fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        b[4..12].copy_from_slice(&self.comm.to_le_bytes());
        b[12..16].copy_from_slice(&self.from.to_le_bytes());
        b[16..20].copy_from_slice(&self.to.to_le_bytes());
        b[20..24].copy_from_slice(&self.idx.to_le_bytes());
        b[24..28].copy_from_slice(&self.nsocks.to_le_bytes());
        b
    }

    /// Parses a hello; never panics.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Option<Hello> {
        let u32_at = |i| super::wire::u32_at(b, i);
        if u32_at(0)? != HELLO_MAGIC {
            return None;
        }
        Some(Hello {
            comm: super::wire::u64_at(b, 4)?,
            from: u32_at(12)?,
            to: u32_at(16)?,
            idx: u32_at(20)?,
            nsocks: u32_at(24)?,
        })
    }
}

type Pending = Arc<(Mutex<HashMap<(usize, usize), TcpStream>>, Condvar)>;

/// Accepts authenticated peer connections on a background thread until dropped.
pub struct PeerListener {
    addr: SocketAddr,
    pending: Pending,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    listener: Arc<TcpListener>,
}

impl std::fmt::Debug for PeerListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerListener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl PeerListener {
    /// Binds `ip:0` and starts accepting connections for communicator `comm` at `rank`.
    pub fn start(
        ip: std::net::IpAddr,
        secret: [u8; 16],
        comm: u64,
        rank: usize,
        nranks: usize,
    ) -> Result<PeerListener> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .map_err(|e| Error::io(format!("rank {rank}: bind a peer listener on {ip}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("peer listener address", e))?;
        // A rank may be dialed by every other at once (direct, all-to-all, several sockets
        // each): a deep queue instead of dropped SYNs retried a second later.
        crate::sys::set_listen_backlog(&listener, 4096)
            .map_err(|e| Error::io(format!("rank {rank}: peer listener accept queue"), e))?;
        let listener = Arc::new(listener);
        let pending: Pending = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, p2, s2) = (listener.clone(), pending.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("oxccl-accept-{rank}"))
            .spawn(move || accept_loop(&l2, &p2, &s2, secret, comm, rank, nranks))
            .map_err(|e| Error::io("spawn the peer accept thread", e))?;
        Ok(PeerListener {
            addr,
            pending,
            stop,
            thread: Some(thread),
            listener,
        })
    }

    /// The address peers dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the sockets with indices `idxs` from rank `from` have arrived on this
    /// listener, and takes them in that order (multi-path TCP: each path has its listener).
    pub fn take_indices(
        &self,
        from: usize,
        idxs: &[usize],
        deadline: Instant,
    ) -> Result<Vec<TcpStream>> {
        let (lock, cv) = &*self.pending;
        let mut map = lock
            .lock()
            .map_err(|_| Error::internal("peer listener lock poisoned"))?;
        loop {
            if idxs.iter().all(|i| map.contains_key(&(from, *i))) {
                return Ok(idxs
                    .iter()
                    .map(|i| map.remove(&(from, *i)).expect("checked"))
                    .collect());
            }
            let now = Instant::now();
            if now >= deadline {
                let have = idxs
                    .iter()
                    .filter(|i| map.contains_key(&(from, **i)))
                    .count();
                return Err(Error::timed_out(
                    Some(from),
                    format!(
                        "waiting for rank {from} to connect ({have} of {} sockets arrived at {})",
                        idxs.len(),
                        self.addr
                    ),
                ));
            }
            map = cv
                .wait_timeout(map, deadline - now)
                .map_err(|_| Error::internal("peer listener lock poisoned"))?
                .0;
        }
    }

    /// Waits until sockets `0..nsocks` from rank `from` have arrived, and takes them.
    pub fn take(&self, from: usize, nsocks: usize, deadline: Instant) -> Result<Vec<TcpStream>> {
        let (lock, cv) = &*self.pending;
        let mut map = lock
            .lock()
            .map_err(|_| Error::internal("peer listener lock poisoned"))?;
        loop {
            if (0..nsocks).all(|i| map.contains_key(&(from, i))) {
                return Ok((0..nsocks)
                    .map(|i| map.remove(&(from, i)).expect("checked"))
                    .collect());
            }
            let now = Instant::now();
            if now >= deadline {
                let have = (0..nsocks)
                    .filter(|i| map.contains_key(&(from, *i)))
                    .count();
                return Err(Error::timed_out(
                    Some(from),
                    format!(
                        "waiting for rank {from} to connect ({have} of {nsocks} sockets arrived); is it running, \
                         and can it reach {}?",
                        self.addr
                    ),
                ));
            }
            map = cv
                .wait_timeout(map, deadline - now)
                .map_err(|_| Error::internal("peer listener lock poisoned"))?
                .0;
        }
    }
}

impl Drop for PeerListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        crate::sys::shutdown_socket(self.listener.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    l: &TcpListener,
    pending: &Pending,
    stop: &AtomicBool,
    secret: [u8; 16],
    comm: u64,
    rank: usize,
    nranks: usize,
) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let (mut sock, from_addr) = match l.accept() {
            Ok(x) => x,
            Err(_) if stop.load(Ordering::SeqCst) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                crate::warn!(Some(rank), "peer listener: accept failed: {e}");
                if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EBADF)) {
                    break;
                }
                continue;
            }
        };
        workers.retain(|w| !w.is_finished());
        let pending = pending.clone();
        let w = std::thread::Builder::new()
            .name("oxccl-hello".into())
            .spawn(move || {
                let r = handshake::server(&mut sock, &secret, PURPOSE_PEER, ACCEPT_HANDSHAKE)
                    .and_then(|()| {
                        let mut b = [0u8; HELLO_LEN];
                        sock.set_read_timeout(Some(ACCEPT_HANDSHAKE))
                            .map_err(|e| Error::io("set timeout", e))?;
                        sock.read_exact(&mut b)
                            .map_err(|e| Error::io("read hello", e))?;
                        sock.set_read_timeout(None)
                            .map_err(|e| Error::io("clear timeout", e))?;
                        let h = Hello::decode(&b).ok_or_else(|| Error::auth("bad hello"))?;
                        if h.comm != comm
                            || h.to as usize != rank
                            || h.from as usize >= nranks
                            || h.idx >= h.nsocks
                        {
                            return Err(Error::auth(format!("unexpected hello {h:?}")));
                        }
                        Ok(h)
                    });
                match r {
                    Ok(h) => {
                        let (lock, cv) = &*pending;
                        if let Ok(mut m) = lock.lock() {
                            m.insert((h.from as usize, h.idx as usize), sock);
                            cv.notify_all();
                        }
                    }
                    Err(e) => crate::warn!(
                        Some(rank),
                        "refused a peer connection from {from_addr}: {e}"
                    ),
                }
            });
        if let Ok(w) = w {
            workers.push(w);
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

/// Dials `nsocks` authenticated sockets to rank `to` at `addr`.
pub fn dial(
    addr: SocketAddr,
    secret: &[u8; 16],
    hello: Hello,
    deadline: Instant,
) -> Result<Vec<TcpStream>> {
    dial_paths(std::slice::from_ref(&addr), secret, hello, deadline)
}

/// Like [`dial`] over several paths (multi-path TCP): socket `k` goes to `addrs[k % len]`.
pub fn dial_paths(
    addrs: &[SocketAddr],
    secret: &[u8; 16],
    hello: Hello,
    deadline: Instant,
) -> Result<Vec<TcpStream>> {
    let mut socks = Vec::with_capacity(hello.nsocks as usize);
    for idx in 0..hello.nsocks {
        let addr = addrs[idx as usize % addrs.len()];
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let mut s = TcpStream::connect_timeout(&addr, left).map_err(|e| {
            Error::peer_lost(
                hello.to as usize,
                format!("cannot connect to rank {} at {addr}: {e}", hello.to),
            )
        })?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        // The rank's card came from the authenticated store, so a connection that drops
        // mid-handshake means the rank went away: name it, as a refused connect does.
        handshake::client(&mut s, secret, PURPOSE_PEER, left).map_err(|e| match e {
            e if e.kind() == crate::error::ErrorKind::System => {
                let msg = format!("rank {}: {}", hello.to, e.message());
                e.with_message(msg)
                    .with_peer(Some(hello.to as usize))
                    .into_kind(crate::error::ErrorKind::PeerLost)
            }
            e => e,
        })?;
        s.write_all(&Hello { idx, ..hello }.encode()).map_err(|e| {
            Error::peer_lost(
                hello.to as usize,
                format!("hello to rank {} at {addr}: {e}", hello.to),
            )
        })?;
        socks.push(s);
    }
    Ok(socks)
}

/// `Hello::nsocks` of a control connection (used by shrink's agreement), not a link socket.
pub const CONTROL: u32 = u32::MAX;
const CONTROL_BASE: u32 = 1 << 24;
/// The control channel of the bootstrap's card exchange (shrink numbers its channels from 0).
pub const BOOTSTRAP_CHAN: u32 = 0x7f00_0000;
/// The control channel of the liveness ring (`comm::liveness`).
pub const LIVENESS_CHAN: u32 = 0x7e00_0000;

/// Dials one authenticated control connection (channel `chan`) to rank `to` at `addr`.
pub fn dial_control(
    addr: SocketAddr,
    secret: &[u8; 16],
    comm: u64,
    from: usize,
    to: usize,
    chan: u32,
    deadline: Instant,
) -> Result<TcpStream> {
    let hello = Hello {
        comm,
        from: from as u32,
        to: to as u32,
        idx: CONTROL_BASE + chan,
        nsocks: CONTROL,
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(&addr, left)
        .map_err(|e| Error::peer_lost(to, format!("cannot connect to rank {to} at {addr}: {e}")))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    handshake::client(&mut s, secret, PURPOSE_PEER, left)?;
    s.write_all(&hello.encode())
        .map_err(|e| Error::peer_lost(to, format!("hello to rank {to} at {addr}: {e}")))?;
    Ok(s)
}

impl PeerListener {
    /// Waits for rank `from`'s control connection on channel `chan`, and takes it.
    pub fn take_control(&self, from: usize, chan: u32, deadline: Instant) -> Result<TcpStream> {
        let key = (from, (CONTROL_BASE + chan) as usize);
        let (lock, cv) = &*self.pending;
        let mut map = lock
            .lock()
            .map_err(|_| Error::internal("peer listener lock poisoned"))?;
        loop {
            if let Some(s) = map.remove(&key) {
                return Ok(s);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timed_out(
                    Some(from),
                    format!("rank {from} did not connect for the agreement"),
                ));
            }
            map = cv
                .wait_timeout(map, deadline - now)
                .map_err(|_| Error::internal("peer listener lock poisoned"))?
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_garbage() {
        let h = Hello {
            comm: 77,
            from: 1,
            to: 2,
            idx: 0,
            nsocks: 3,
        };
        assert_eq!(Hello::decode(&h.encode()), Some(h));
        assert_eq!(Hello::decode(&[0u8; HELLO_LEN]), None);
    }

    #[test]
    fn dial_and_accept_with_auth() {
        let secret = [7u8; 16];
        let l = PeerListener::start("127.0.0.1".parse().unwrap(), secret, 5, 1, 2).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        // A wrong secret is refused and delivers nothing.
        let bad = dial(
            l.addr(),
            &[8u8; 16],
            Hello {
                comm: 5,
                from: 0,
                to: 1,
                idx: 0,
                nsocks: 1,
            },
            deadline,
        );
        assert!(bad.is_err());
        let got = dial(
            l.addr(),
            &secret,
            Hello {
                comm: 5,
                from: 0,
                to: 1,
                idx: 0,
                nsocks: 2,
            },
            deadline,
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        let taken = l.take(0, 2, deadline).unwrap();
        assert_eq!(taken.len(), 2);
        assert!(
            l.take(0, 1, Instant::now() + Duration::from_millis(50))
                .is_err()
        );
    }

    #[test]
    fn a_peer_that_goes_away_mid_handshake_is_lost_not_a_system_error() {
        // The "peer" accepts the connection and closes it at once, as a rank whose
        // communicator is dropped while we dial it does.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || drop(l.accept().unwrap()));
        let r = dial(
            addr,
            &[7u8; 16],
            Hello {
                comm: 5,
                from: 0,
                to: 3,
                idx: 0,
                nsocks: 1,
            },
            Instant::now() + Duration::from_secs(20),
        );
        t.join().unwrap();
        match r {
            Err(e) if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(3) => {
                let msg = e.message();
                assert!(msg.contains("rank 3"), "{msg}")
            }
            other => panic!("expected PeerLost naming rank 3, got {other:?}"),
        }
    }
}
