//! Liveness, peer to peer, and revoke.
//!
//! Links see a dead peer by EOF, a reset or (shm) its pid exiting, but only while a call waits
//! on that peer. A rank that hangs with its sockets open (stopped, swapping, its host cut off
//! without a reset), or dies while the others are between calls or talking to other ranks, is
//! seen by nobody until someone's call times out. So the ranks of a communicator form a ring of
//! small liveness connections (rank r to r + 1 mod n, made at init over the peer listeners,
//! authenticated like every link), and each rank runs one thread that:
//!
//! 1. beats: writes one byte to each of its (at most two) neighbours once a period;
//! 2. watches them: a neighbour whose connection closes without a goodbye (its process died:
//!    the kernel closes the socket at once), or that has sent nothing for the threshold (stopped,
//!    cut off), is lost: the communicator is revoked here, naming it;
//! 3. spreads revokes: a revoke (found here, received from one neighbour, a failed call on this
//!    rank or `abort()`) is sent to the neighbours that did not send it, so it travels both
//!    ways round the ring and reaches every rank, also those idle between calls, within a few
//!    hops' latency of the detection. A rank forwards a revoke once.
//!
//! Nothing goes through the rendezvous store, so no rank (not rank 0, which serves it) is a
//! single point of failure: the loss of any rank reaches every survivor within about timeout +
//! period (EOF: at once), and a communicator made by `shrink` builds a new ring. Each rank
//! holds two sockets and one thread for this, whatever n; a revoke crosses at most n/2 hops.
//!
//! The threshold is the communicator's timeout (at least 2 s, so a rank descheduled on a busy
//! host is not declared dead). A rank that is merely slow (computing, not calling) keeps beating
//! and is never declared lost; a call waiting for it fails with Timeout as before. A
//! communicator being destroyed says goodbye, so its neighbours do not take the silence for a
//! death (their next call that needs it fails on the links, naming it).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::transport::connect::{self, LIVENESS_CHAN as CHAN, PeerListener};
use crate::transport::wire;

/// Frame kinds on a liveness connection.
const BEAT: u8 = b'B';
const BYE: u8 = b'Y';
/// Followed by a u16 length and the revoke record (see `encode`).
const REVOKE: u8 = b'R';
/// Bound on a revoke record's length (longer messages are cut).
const MAX_RECORD: usize = 1024;

/// What a revoke changes in the communicator: the same flag `abort()` raises (the executor
/// watches it) and the recorded failure (which tells the executor and later calls why).
pub(super) struct Revoke {
    pub(super) flag: Arc<AtomicBool>,
    pub(super) failure: Arc<Mutex<Option<Error>>>,
}

impl Revoke {
    /// Records `e` unless a failure is recorded already; returns the one that stands.
    fn apply(&self, e: Error) -> Error {
        let kept = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e)
            .clone();
        self.flag.store(true, Ordering::SeqCst);
        kept
    }

    fn recorded(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The liveness thread; dropping it says goodbye to the neighbours and joins the thread.
pub(super) struct Heartbeat {
    stop: Arc<AtomicBool>,
    /// The write end of a socket pair whose other end the thread always polls: shut on drop,
    /// it wakes the thread at once (a neighbour's socket would not: one already closed is no
    /// longer polled, and the thread would sleep out its period).
    wake: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

/// How often a rank beats: timeout / 8, between 50 ms and 1 s (at least four beats per
/// threshold). Whatever n: each rank beats only to its two neighbours.
pub(super) fn period(timeout: Duration) -> Duration {
    (timeout / 8)
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
        .min(threshold(timeout) / 4)
}

/// How long a neighbour may stay silent before it is declared lost.
pub(super) fn threshold(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(2))
}

/// This rank's ring neighbours (next, then previous; one when n = 2, none when n = 1).
fn neighbours(rank: usize, nranks: usize) -> Vec<usize> {
    let mut v = Vec::with_capacity(2);
    for q in [(rank + 1) % nranks, (rank + nranks - 1) % nranks] {
        if q != rank && !v.contains(&q) {
            v.push(q);
        }
    }
    v
}

/// Makes this rank's liveness connections (collective: every rank calls it after the card
/// exchange). The lower rank of each pair dials, the higher accepts, as for links.
pub(super) fn connect_ring(
    listener: &PeerListener,
    addrs: &[SocketAddr],
    secret: &[u8; 16],
    comm: u64,
    rank: usize,
    deadline: Instant,
) -> Result<Vec<(usize, TcpStream)>> {
    let nranks = addrs.len();
    let nb = neighbours(rank, nranks);
    let mut out = Vec::with_capacity(nb.len());
    for &q in nb.iter().filter(|&&q| rank < q) {
        let s = connect::dial_control(addrs[q], secret, comm, rank, q, CHAN, deadline)?;
        out.push((q, s));
    }
    for &q in nb.iter().filter(|&&q| rank > q) {
        let s = listener
            .take_control(q, CHAN, deadline)
            .map_err(|e| match e {
                e if e.kind() == crate::error::ErrorKind::Timeout => Error::timed_out(
                    Some(q),
                    format!(
                        "rank {rank}: rank {q} did not open its liveness connection during init"
                    ),
                ),
                e => e,
            })?;
        out.push((q, s));
    }
    Ok(out)
}

impl Heartbeat {
    /// Starts the thread over the connections `connect_ring` made.
    pub(super) fn start(
        socks: Vec<(usize, TcpStream)>,
        rank: usize,
        timeout: Duration,
        revoke: Revoke,
    ) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        if socks.is_empty() {
            return Heartbeat {
                stop,
                wake: None,
                thread: None,
            };
        }
        let now = Instant::now();
        let peers: Vec<Peer> = socks
            .into_iter()
            .map(|(q, s)| {
                let _ = s.set_nonblocking(true);
                let _ = s.set_nodelay(true);
                Peer {
                    rank: q,
                    sock: Arc::new(s),
                    buf: Vec::new(),
                    heard: now,
                    open: true,
                    bye: false,
                }
            })
            .collect();
        // Without a pair (descriptors exhausted) the drop waits up to one period.
        let (wake, woken) = match UnixStream::pair() {
            Ok((w, r)) => (Some(w), Some(r)),
            Err(_) => (None, None),
        };
        let s = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("oxccl-live-{rank}"))
            .spawn(move || {
                Watch {
                    rank,
                    peers,
                    revoke,
                    flooded: false,
                    period: period(timeout),
                    limit: threshold(timeout),
                }
                .run(&s, woken)
            });
        match spawned {
            Ok(t) => Heartbeat {
                stop,
                wake,
                thread: Some(t),
            },
            Err(e) => {
                // Not fatal: links and timeouts still detect failures, only more slowly.
                crate::warn!(
                    Some(rank),
                    "cannot start the liveness thread ({e}); failures are detected by links and timeouts only"
                );
                Heartbeat {
                    stop,
                    wake: None,
                    thread: None,
                }
            }
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = &self.wake {
            // The thread's end reads EOF: poll() reports it readable at once.
            let _ = w.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The revoke record: REVOKE, a u16 length, then an abort body (code, the rank it names, the
/// message: [`wire::encode_abort`]).
fn encode(e: &Error) -> Vec<u8> {
    let mut b = vec![0u8; 3 + MAX_RECORD];
    let n = wire::encode_abort(e, &mut b[3..]);
    b[0] = REVOKE;
    b[1..3].copy_from_slice(&(n as u16).to_le_bytes());
    b.truncate(3 + n);
    b
}

/// Parses a revoke record (the bytes after the length); never panics.
fn decode(rec: &[u8], from: usize, me: usize) -> Error {
    if rec.is_empty() {
        return Error::internal(format!("rank {me}: empty revoke record from rank {from}"));
    }
    let Ok(a) = wire::AbortBody::new_checked(rec) else {
        return Error::internal(format!(
            "rank {me}: truncated revoke record from rank {from}"
        ));
    };
    // Forwarded as it was found: the message names the lost rank and who noticed it.
    Error::from_parts(a.code, a.peer, a.message_lossy().into_owned())
}

struct Peer {
    rank: usize,
    sock: Arc<TcpStream>,
    /// Bytes received and not yet parsed.
    buf: Vec<u8>,
    heard: Instant,
    open: bool,
    /// It said goodbye: its silence or EOF is a clean exit.
    bye: bool,
}

impl Peer {
    /// Best effort, never blocks: a full socket buffer drops the frame (the next beat follows;
    /// a neighbour that reads nothing for so long is itself about to be declared lost).
    fn send(&self, frame: &[u8]) {
        if self.open {
            // std's TcpStream::write passes MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE.
            let _ = (&*self.sock).write(frame);
        }
    }
}

struct Watch {
    rank: usize,
    peers: Vec<Peer>,
    revoke: Revoke,
    /// This rank has sent a revoke to its neighbours.
    flooded: bool,
    period: Duration,
    limit: Duration,
}

impl Watch {
    fn run(mut self, stop: &AtomicBool, woken: Option<UnixStream>) {
        let mut next_beat = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                // An abort just before the drop still reaches the others.
                self.spread_local();
                for p in &self.peers {
                    p.send(&[BYE]);
                }
                return;
            }
            // Nothing left to watch or tell: every neighbour closed, said goodbye or was
            // declared lost.
            if self.peers.iter().all(|p| !p.open) {
                return;
            }
            let now = Instant::now();
            if now >= next_beat {
                for p in &self.peers {
                    p.send(&[BEAT]);
                }
                next_beat = now + self.period;
                self.spread_local();
            }
            for i in 0..self.peers.len() {
                let p = &self.peers[i];
                let silent = now.saturating_duration_since(p.heard);
                if p.open && !p.bye && silent >= self.limit {
                    let q = p.rank;
                    crate::warn!(
                        Some(self.rank),
                        "rank {q} has sent no heartbeat for {} ms (limit {} ms): revoking the communicator",
                        silent.as_millis(),
                        self.limit.as_millis()
                    );
                    self.peers[i].open = false;
                    self.lost(
                        q,
                        format!(
                            "rank {q} stopped answering: no heartbeat from it for {} ms (noticed by rank {})",
                            silent.as_millis(),
                            self.rank
                        ),
                    );
                }
            }
            let mut fds: Vec<libc::pollfd> = self
                .peers
                .iter()
                .map(|p| libc::pollfd {
                    fd: if p.open { p.sock.as_raw_fd() } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                })
                .chain(woken.iter().map(|w| libc::pollfd {
                    fd: w.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }))
                .collect();
            let wait = next_beat.saturating_duration_since(Instant::now());
            let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
            if crate::sys::poll(&mut fds, ms).is_err() {
                // Never expected; do not spin.
                std::thread::sleep(wait);
                continue;
            }
            for (i, fd) in fds.iter().enumerate().take(self.peers.len()) {
                if fd.revents != 0 && !stop.load(Ordering::SeqCst) {
                    self.read(i);
                }
            }
        }
    }

    /// Reads what neighbour `i` sent and acts on each frame.
    fn read(&mut self, i: usize) {
        let mut chunk = [0u8; 512];
        let q = self.peers[i].rank;
        let closed = loop {
            match (&*self.peers[i].sock).read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => {
                    let p = &mut self.peers[i];
                    p.heard = Instant::now();
                    p.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        // Frames: BEAT, BYE, REVOKE len:u16 record.
        loop {
            let buf = &self.peers[i].buf;
            let Some(&kind) = buf.first() else { break };
            let used = match kind {
                BEAT => 1,
                BYE => {
                    self.peers[i].bye = true;
                    1
                }
                REVOKE => {
                    let Some(len) = wire::u16_at(buf, 1) else {
                        break;
                    };
                    let len = usize::from(len);
                    if buf.len() < 3 + len {
                        if len > MAX_RECORD {
                            self.garbage(i);
                            return;
                        }
                        break;
                    }
                    let e = decode(&buf[3..3 + len], q, self.rank);
                    self.peers[i].buf.drain(..3 + len);
                    let kept = self.revoke.apply(e);
                    self.spread(&kept, Some(q));
                    continue;
                }
                _ => {
                    self.garbage(i);
                    return;
                }
            };
            self.peers[i].buf.drain(..used);
        }
        if closed {
            let p = &mut self.peers[i];
            p.open = false;
            if !p.bye {
                self.lost(
                    q,
                    format!(
                        "rank {q} is gone: its liveness connection to rank {} closed without a goodbye (the process exited or was killed)",
                        self.rank
                    ),
                );
            }
        }
    }

    /// A neighbour sent bytes that are no frame: a bug or a stranger; treat the pair as broken.
    fn garbage(&mut self, i: usize) {
        let q = self.peers[i].rank;
        self.peers[i].open = false;
        let _ = self.peers[i].sock.shutdown(Shutdown::Both);
        self.lost(
            q,
            format!(
                "rank {q}'s liveness connection to rank {} sent bytes that are no frame",
                self.rank
            ),
        );
    }

    /// Neighbour `q` is lost: revoke here and tell the other neighbour.
    fn lost(&mut self, q: usize, msg: String) {
        let kept = self.revoke.apply(Error::peer_lost(
            q,
            format!("{msg}; the communicator is revoked: destroy it or shrink it"),
        ));
        self.spread(&kept, Some(q));
    }

    /// A failure recorded here by a call, or an `abort()`, that the neighbours have not heard of.
    fn spread_local(&mut self) {
        if self.flooded {
            return;
        }
        if let Some(e) = self.revoke.recorded() {
            self.spread(&e, None);
        } else if self.revoke.flag.load(Ordering::SeqCst) {
            let e = Error::peer_lost(
                self.rank,
                format!(
                    "rank {} aborted the communicator; it is revoked: destroy it or shrink it",
                    self.rank
                ),
            );
            self.spread(&e, None);
        }
    }

    /// Sends `e` to every open neighbour but `from`, once per rank.
    fn spread(&mut self, e: &Error, from: Option<usize>) {
        if self.flooded {
            return;
        }
        self.flooded = true;
        let frame = encode(e);
        for p in self.peers.iter().filter(|p| Some(p.rank) != from) {
            p.send(&frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_records_round_trip_and_garbage_is_internal() {
        let e = Error::peer_lost(
            7,
            "rank 7 stopped answering: no heartbeat from it for 2500 ms",
        );
        let b = encode(&e);
        assert_eq!(b[0], REVOKE);
        let len = usize::from(wire::u16_at(&b, 1).unwrap());
        assert_eq!(len, b.len() - 3);
        match decode(&b[3..], 6, 3) {
            e if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(7) => {
                let msg = e.message();
                assert!(msg.contains("2500 ms") && msg.contains("rank 7"), "{msg}")
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(decode(b"", 1, 0).kind(), crate::error::ErrorKind::Internal);
        assert_eq!(
            decode(b"\x05ab", 1, 0).kind(),
            crate::error::ErrorKind::Internal
        );
        let long = Error::timed_out(None, "x".repeat(5000));
        let b = encode(&long);
        assert_eq!(b.len(), 3 + MAX_RECORD);
        let e = decode(&b[3..], 1, 0);
        assert!(
            e.kind() == crate::error::ErrorKind::Timeout && e.peer().is_none(),
            "{e:?}"
        );
    }

    #[test]
    fn period_and_threshold_scale_with_the_timeout() {
        assert_eq!(period(Duration::from_secs(300)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_millis(80)), Duration::from_millis(50));
        assert_eq!(period(Duration::from_secs(3)), Duration::from_millis(375));
        assert_eq!(
            threshold(Duration::from_millis(100)),
            Duration::from_secs(2)
        );
        assert_eq!(threshold(Duration::from_secs(30)), Duration::from_secs(30));
    }

    #[test]
    fn a_ring_of_neighbours() {
        assert_eq!(neighbours(0, 1), Vec::<usize>::new());
        assert_eq!(neighbours(0, 2), vec![1]);
        assert_eq!(neighbours(1, 2), vec![0]);
        assert_eq!(neighbours(0, 4), vec![1, 3]);
        assert_eq!(neighbours(3, 4), vec![0, 2]);
    }
}
