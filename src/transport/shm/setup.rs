//! Making shm links: each rank listens on an abstract-namespace Unix socket (its name is in the
//! rank's card; nothing is created in the file system), the lower rank of a pair dials it and
//! passes the segment and its doorbell with SCM_RIGHTS, and the listener answers with its own
//! doorbell. Both ends prove knowledge of the job's secret first (HMAC-SHA256 over both nonces
//! and the hello), because any local process can connect to an abstract socket.
//!
//! ```text
//! dialer -> listener  HELLO  "OXSM" version comm from to nonce_c[32]         56 bytes
//! listener -> dialer  nonce_s[32] mac_s[32]                                   64 bytes
//! dialer -> listener  mac_c[32] pid u32 nslots u32 slot u64 + [segment, bell]  48 bytes
//! listener -> dialer  status u8 | len u8 | reason[..] (+ [bell] when accepted)  up to 256 bytes
//! mac_x = HMAC-SHA256(secret, "oxccl-shm-v1" role_x HELLO nonce_s)
//! ```
//!
//! The listener thread answers by itself, so a dial never waits for the peer's main thread; a
//! refused segment (status 0) makes the dialer fall back to TCP, and the accepting rank takes
//! whichever of the two arrives.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::Mac;

use super::{Doorbell, Geometry, Segment, ShmLink};
use crate::bootstrap::handshake::{HmacSha256, keyed_mac};
use crate::error::Error;
use crate::error::Result;
use crate::sys::shm as sys;
use crate::transport::wire;

const MAGIC: &[u8; 4] = b"OXSM";
/// 2: posted receives carry where a registered destination lies (64-byte entries).
const VERSION: u32 = 2;
const HELLO: usize = 56;
const PROOF: usize = 48;
const REPLY: usize = 256;
const LABEL: &[u8] = b"oxccl-shm-v1";
/// Bound on one incoming connection's exchange (slow or silent clients are dropped).
const ACCEPT_LIMIT: Duration = Duration::from_secs(10);

fn mac(secret: &[u8; 16], role: &[u8], hello: &[u8; HELLO], nonce_s: &[u8; 32]) -> HmacSha256 {
    keyed_mac(secret, &[LABEL, role, hello, nonce_s])
}

fn nonce() -> Result<[u8; 32]> {
    let mut n = [0u8; 32];
    crate::sys::random_bytes(&mut n).map_err(|e| Error::io("getrandom for an shm nonce", e))?;
    Ok(n)
}

/// What arrived from a lower rank: the socket (kept for liveness), the segment, its doorbell.
struct Arrival {
    sock: UnixStream,
    seg: OwnedFd,
    bell: OwnedFd,
}

type Pending = Arc<(Mutex<HashMap<usize, Arrival>>, Condvar)>;

/// This rank's shm endpoint: its doorbell and the listener that accepts segments from lower
/// ranks (on a background thread, until dropped).
pub struct ShmEndpoint {
    name: String,
    bell: Arc<Doorbell>,
    pending: Pending,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ShmEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmEndpoint")
            .field("name", &self.name)
            .finish()
    }
}

fn abstract_addr(name: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

impl ShmEndpoint {
    /// Creates the doorbell and starts listening for communicator `comm` at `rank`.
    pub fn start(secret: [u8; 16], comm: u64, rank: usize, nranks: usize) -> Result<ShmEndpoint> {
        let bell = Arc::new(Doorbell::create()?);
        let name = format!(
            "oxccl-{}-{:016x}",
            std::process::id(),
            crate::sys::random_u64()
        );
        let addr = abstract_addr(&name).map_err(|e| Error::io("abstract Unix socket name", e))?;
        let listener = UnixListener::bind_addr(&addr)
            .map_err(|e| Error::io(format!("bind the shm socket @{name}"), e))?;
        let pending: Pending = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p2, s2, b2) = (pending.clone(), stop.clone(), bell.clone());
        let thread = std::thread::Builder::new()
            .name(format!("oxccl-shm-{rank}"))
            .stack_size(256 << 10)
            .spawn(move || accept_loop(&listener, &p2, &s2, &b2, secret, comm, rank, nranks))
            .map_err(|e| Error::io("spawn the shm accept thread", e))?;
        Ok(ShmEndpoint {
            name,
            bell,
            pending,
            stop,
            thread: Some(thread),
        })
    }

    /// The abstract socket name (without the leading NUL) that goes in the card.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This rank's doorbell.
    pub fn doorbell(&self) -> &Arc<Doorbell> {
        &self.bell
    }

    /// Takes the link rank `from` dialed, if it has arrived; otherwise waits up to `wait` for
    /// any arrival and returns `Ok(None)`.
    pub fn try_take(&self, from: usize, wait: Duration) -> Result<Option<ShmLink>> {
        let (lock, cv) = &*self.pending;
        let poisoned = || Error::internal("shm listener lock poisoned");
        let mut map = lock.lock().map_err(|_| poisoned())?;
        if !map.contains_key(&from) && !wait.is_zero() {
            map = cv.wait_timeout(map, wait).map_err(|_| poisoned())?.0;
        }
        let Some(a) = map.remove(&from) else {
            return Ok(None);
        };
        drop(map);
        let seg = Segment::open(a.seg.as_fd())?;
        let peer_bell = Doorbell::open(a.bell)?;
        Ok(Some(ShmLink::new(
            from,
            1,
            seg,
            self.bell.clone(),
            peer_bell,
            Some(a.sock),
        )?))
    }
}

impl Drop for ShmEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept() with a connection of our own; the loop then sees `stop`.
        if let Ok(addr) = abstract_addr(&self.name) {
            let _ = UnixStream::connect_addr(&addr);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn accept_loop(
    l: &UnixListener,
    pending: &Pending,
    stop: &AtomicBool,
    bell: &Arc<Doorbell>,
    secret: [u8; 16],
    comm: u64,
    rank: usize,
    nranks: usize,
) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    // Non-blocking, with a bounded poll: dropping the endpoint never depends on waking accept().
    if let Err(e) = l.set_nonblocking(true) {
        crate::warn!(
            Some(rank),
            "shm listener: {e}; shared memory is off for this rank"
        );
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        let mut p = [libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let _ = crate::sys::poll(&mut p, 200);
        let sock = match l.accept() {
            Ok((s, _)) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                continue;
            }
            Err(e) => {
                crate::warn!(Some(rank), "shm listener: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Err(e) = sock.set_nonblocking(false) {
            crate::warn!(Some(rank), "shm listener: {e}");
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        workers.retain(|w| !w.is_finished());
        let (pending, bell) = (pending.clone(), bell.clone());
        let w = std::thread::Builder::new()
            .name("oxccl-shm-hello".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let mut sock = sock;
                match serve(&mut sock, &bell, &secret, comm, rank, nranks) {
                    Ok((from, seg, peer_bell)) => {
                        let (lock, cv) = &*pending;
                        if let Ok(mut m) = lock.lock() {
                            m.insert(
                                from,
                                Arrival {
                                    sock,
                                    seg,
                                    bell: peer_bell,
                                },
                            );
                            cv.notify_all();
                        }
                    }
                    Err(e) => crate::warn!(Some(rank), "refused an shm connection: {e}"),
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

fn read_full(s: &mut UnixStream, buf: &mut [u8], what: &str) -> Result<()> {
    s.read_exact(buf)
        .map_err(|e| Error::io(format!("shm setup: reading the {what}"), e))
}

/// The listener's side of one connection. Returns the dialing rank, its segment and doorbell.
fn serve(
    s: &mut UnixStream,
    bell: &Doorbell,
    secret: &[u8; 16],
    comm: u64,
    rank: usize,
    nranks: usize,
) -> Result<(usize, OwnedFd, OwnedFd)> {
    let limit = Some(ACCEPT_LIMIT);
    s.set_read_timeout(limit)
        .and_then(|()| s.set_write_timeout(limit))
        .map_err(|e| Error::io("shm setup: socket timeouts", e))?;
    let mut hello = [0u8; HELLO];
    read_full(s, &mut hello, "hello")?;
    let field = |i| wire::u32_at(&hello, i).map_or(usize::MAX, |v| v as usize);
    if &hello[0..4] != MAGIC || wire::u32_at(&hello, 4) != Some(VERSION) {
        return Err(Error::auth("not an oxccl shm hello"));
    }
    let h_comm = wire::u64_at(&hello, 8).unwrap_or(0);
    let (from, to) = (field(16), field(20));
    if h_comm != comm || to != rank || from >= rank || rank >= nranks {
        return Err(Error::auth(format!(
            "unexpected shm hello (communicator {h_comm:#x}, from rank {from} to rank {to})"
        )));
    }
    let nonce_s = nonce()?;
    let mut msg = [0u8; 64];
    msg[..32].copy_from_slice(&nonce_s);
    msg[32..].copy_from_slice(
        &mac(secret, b"server", &hello, &nonce_s)
            .finalize()
            .into_bytes(),
    );
    s.write_all(&msg)
        .map_err(|e| Error::io("shm setup: writing the challenge", e))?;
    let mut proof = [0u8; PROOF];
    let (n, fds) = sys::recv_with_fds(s.as_fd(), &mut proof, 2)
        .map_err(|e| Error::io(format!("shm setup: descriptors from rank {from}"), e))?;
    if n == 0 {
        return Err(Error::system(format!(
            "shm setup: rank {from} closed the connection"
        )));
    }
    if n < PROOF {
        read_full(s, &mut proof[n..], "proof")?;
    }
    if mac(secret, b"client", &hello, &nonce_s)
        .verify_slice(&proof[..32])
        .is_err()
    {
        return Err(Error::auth(format!(
            "an shm connection claiming to be rank {from} does not know this job's secret"
        )));
    }
    let refuse = |s: &mut UnixStream, why: String| -> Error {
        let mut r = [0u8; REPLY];
        let b = why.as_bytes();
        let len = b.len().min(REPLY - 2);
        r[1] = len as u8;
        r[2..2 + len].copy_from_slice(&b[..len]);
        let _ = s.write_all(&r);
        Error::system(format!("shm setup with rank {from}: {why}"))
    };
    let mut fds = fds.into_iter();
    let (Some(seg), Some(peer_bell)) = (fds.next(), fds.next()) else {
        return Err(refuse(
            s,
            "the segment and doorbell descriptors did not arrive".into(),
        ));
    };
    // Check the segment now, so that a bad one makes the dialer fall back to TCP.
    if let Err(e) = Segment::open(seg.as_fd()).and_then(|_| {
        sys::sealed_size(peer_bell.as_fd())
            .map_err(|e| Error::io("doorbell", e))
            .map(|_| ())
    }) {
        return Err(refuse(s, e.to_string()));
    }
    // Test-only knob: behave as if the descriptors were unusable here.
    if std::env::var("OXCCL_SHM_TEST_REFUSE").is_ok_and(|v| v.trim() == "1") {
        return Err(refuse(s, "refused by OXCCL_SHM_TEST_REFUSE".into()));
    }
    let Some(my_bell) = bell.fd() else {
        return Err(refuse(s, "no doorbell".into()));
    };
    let mut r = [0u8; REPLY];
    r[0] = 1;
    sys::send_with_fds(s.as_fd(), &r, &[my_bell])
        .map_err(|e| Error::io(format!("shm setup: answering rank {from}"), e))?;
    s.set_read_timeout(None)
        .and_then(|()| s.set_write_timeout(None))
        .map_err(|e| Error::io("shm setup: socket timeouts", e))?;
    Ok((from, seg, peer_bell))
}

/// How a dial ended without a link.
#[derive(Debug)]
pub enum DialError {
    /// Shared memory does not work between the two ranks (the reason): use TCP instead.
    Fallback(String),
    /// The connection failed after the segment was handed over: an error.
    Failed(Error),
}

/// Dials rank `to`'s shm endpoint `name` as rank `from`, creating a segment of `geo` and
/// passing it with this rank's doorbell; returns the link once the peer has accepted it.
#[allow(clippy::too_many_arguments)]
pub fn dial(
    ep: &ShmEndpoint,
    name: &str,
    secret: &[u8; 16],
    comm: u64,
    from: usize,
    to: usize,
    geo: Geometry,
    deadline: Instant,
) -> std::result::Result<ShmLink, DialError> {
    let fallback =
        |what: &str, e: &dyn std::fmt::Display| DialError::Fallback(format!("{what}: {e}"));
    let (seg, seg_fd) = Segment::create(geo).map_err(|e| fallback("creating the segment", &e))?;
    let addr = abstract_addr(name).map_err(|e| fallback("socket name", &e))?;
    let mut s = UnixStream::connect_addr(&addr)
        .map_err(|e| fallback(&format!("connect to @{name}"), &e))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    s.set_read_timeout(Some(left))
        .and_then(|()| s.set_write_timeout(Some(left)))
        .map_err(|e| fallback("socket timeouts", &e))?;
    let mut hello = [0u8; HELLO];
    hello[0..4].copy_from_slice(MAGIC);
    hello[4..8].copy_from_slice(&VERSION.to_le_bytes());
    hello[8..16].copy_from_slice(&comm.to_le_bytes());
    hello[16..20].copy_from_slice(&(from as u32).to_le_bytes());
    hello[20..24].copy_from_slice(&(to as u32).to_le_bytes());
    hello[24..56].copy_from_slice(&nonce().map_err(|e| fallback("nonce", &e))?);
    s.write_all(&hello).map_err(|e| fallback("hello", &e))?;
    let mut ch = [0u8; 64];
    s.read_exact(&mut ch)
        .map_err(|e| fallback("reading the challenge (peer refused us?)", &e))?;
    let nonce_s: [u8; 32] = ch[..32].try_into().expect("32 bytes");
    if mac(secret, b"server", &hello, &nonce_s)
        .verify_slice(&ch[32..])
        .is_err()
    {
        return Err(DialError::Failed(Error::auth(format!(
            "rank {to}'s shm endpoint @{name} does not know this job's secret"
        ))));
    }
    let mut proof = [0u8; PROOF];
    proof[..32].copy_from_slice(
        &mac(secret, b"client", &hello, &nonce_s)
            .finalize()
            .into_bytes(),
    );
    proof[32..36].copy_from_slice(&std::process::id().to_le_bytes());
    proof[36..40].copy_from_slice(&(geo.nslots as u32).to_le_bytes());
    proof[40..48].copy_from_slice(&(geo.slot_size as u64).to_le_bytes());
    let Some(bell_fd) = ep.bell.fd() else {
        return Err(DialError::Fallback("no doorbell".into()));
    };
    sys::send_with_fds(s.as_fd(), &proof, &[seg_fd.as_fd(), bell_fd])
        .map_err(|e| fallback("passing the segment (SCM_RIGHTS)", &e))?;
    drop(seg_fd);
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        DialError::Failed(Error::peer_lost(
            to,
            format!("shm setup with rank {to}: {what}: {e}"),
        ))
    };
    let mut reply = [0u8; REPLY];
    let (n, fds) = sys::recv_with_fds(s.as_fd(), &mut reply, 1).map_err(|e| failed("reply", &e))?;
    if n == 0 {
        return Err(failed("reply", &"connection closed"));
    }
    if n < REPLY {
        s.read_exact(&mut reply[n..])
            .map_err(|e| failed("reply", &e))?;
    }
    if reply[0] != 1 {
        let len = (reply[1] as usize).min(REPLY - 2);
        return Err(DialError::Fallback(format!(
            "rank {to} refused the segment: {}",
            String::from_utf8_lossy(&reply[2..2 + len])
        )));
    }
    let Some(peer_bell) = fds.into_iter().next() else {
        return Err(failed("reply", &"no doorbell descriptor"));
    };
    let peer_bell = Doorbell::open(peer_bell).map_err(DialError::Failed)?;
    s.set_read_timeout(None)
        .and_then(|()| s.set_write_timeout(None))
        .map_err(|e| failed("socket timeouts", &e))?;
    ShmLink::new(to, 0, seg, ep.bell.clone(), peer_bell, Some(s)).map_err(DialError::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Link, Region, Tag};

    #[test]
    fn dial_accept_and_exchange() {
        let secret = [3u8; 16];
        let a = ShmEndpoint::start(secret, 9, 0, 2).unwrap();
        let b = ShmEndpoint::start(secret, 9, 1, 2).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let geo = Geometry {
            nslots: 2,
            slot_size: 4096,
        };
        // Wrong secret: refused before any descriptor is trusted.
        match dial(&a, b.name(), &[4u8; 16], 9, 0, 1, geo, deadline) {
            Err(DialError::Failed(e)) if e.kind() == crate::error::ErrorKind::Auth => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
        // Wrong communicator: the listener hangs up; the dialer falls back.
        assert!(matches!(
            dial(&a, b.name(), &secret, 8, 0, 1, geo, deadline),
            Err(DialError::Fallback(_))
        ));
        let mut l0 = dial(&a, b.name(), &secret, 9, 0, 1, geo, deadline).unwrap();
        let mut l1 = loop {
            if let Some(l) = b.try_take(0, Duration::from_millis(100)).unwrap() {
                break l;
            }
            assert!(Instant::now() < deadline);
        };
        let m = *b"hello shm";
        // SAFETY: `m` outlives the call.
        let sent = unsafe { l0.post_send(&Tag::default(), Region::from_raw(m.as_ptr(), m.len())) };
        assert!(sent.unwrap());
        let (_, got) = l1.peek_recv().unwrap().unwrap();
        assert_eq!(got, b"hello shm");
        l1.release_recv();
        assert!(std::ptr::addr_eq(
            Arc::as_ptr(l1.doorbell().unwrap()),
            Arc::as_ptr(b.doorbell())
        ));
    }
}
