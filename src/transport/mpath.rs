//! The multi-path TCP link (opt-in: used when `OXCCL_SOCKET_IFNAME` lists two or more
//! interfaces on both ranks). Its sockets are striped over the paths; when one dies, the link
//! carries on over the others with a WARN, and only fails when none is left.
//!
//! Unlike [`tcp`](super::tcp), where a message belongs to the socket `k % nsocks` and a send is
//! complete once written, here every frame carries the message's own sequence number and
//! the receiver's cumulative state, so that a message can be sent again on another path:
//!
//! ```text
//! magic u16 "OM" | kind u8 | 0 u8 | len u32 | seq u64 | recv u64 | credit u64 | Tag (24 B)
//! kinds: DATA (seq = message number, len <= slot), ACK (len 0), DEAD (seq = a dead socket's
//!        index, len 0), ABORT (len <= 4 KiB: code, peer, message)
//! recv   = messages the sender of the frame has received without a gap
//! credit = messages it has released (their slots are free again)
//! ```
//!
//! A sender keeps each message (the caller's memory: the send is not complete) until the peer's
//! `recv` covers it, and sends message `s` only while `s < credit + nslots`, so the receiver
//! always has a free slot for it. A socket is dead on an I/O error or EOF, or when its kernel
//! gives up (TCP_USER_TIMEOUT: data unacknowledged for a third of the communicator's timeout —
//! a cut cable raises no error otherwise). Then the side that noticed tells the peer over every
//! surviving socket (DEAD), both stop using it, and each re-sends, over the survivors, the
//! messages it had assigned to it that the other's `recv` does not cover: that cumulative
//! count is what the two sides agree on. The receiver places messages by sequence and drops
//! duplicates. ACKs go out on every live socket, so one on a dead path is never the only one.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::framing::{RxEvent, RxFramer, TxFramer};
use super::wire::{self, ABORT, ACK, DATA, DEAD, MAX_ABORT};
use super::{Link, Region, RegionMut, Tag};
use crate::error::Error;
use crate::error::Result;
use crate::sys::AlignedBuf;

/// A parsed frame header.
pub use super::wire::MpathHeader as Header;

/// Frame header size.
pub const MHDR: usize = Header::LEN;
const DISCARD: usize = 64 << 10;
/// How far ahead of the next message to hand out a receive may be posted (the executor offers
/// up to 16 ahead, beyond the slots' credit).
const POST_WINDOW: usize = 32;
/// Why a socket that read EOF died.
const CLOSED: &str = "closed by the peer";

fn encode(kind: u8, len: usize, seq: u64, recv: u64, credit: u64, tag: &Tag) -> [u8; MHDR] {
    Header {
        kind,
        len,
        seq,
        recv,
        credit,
        tag: *tag,
    }
    .encode()
}

/// Parses a frame header from untrusted bytes; never panics ([`Header::new_checked`]).
pub fn decode_header(h: &[u8; MHDR], max_data: usize) -> std::result::Result<Header, String> {
    Ok(Header::new_checked(h, max_data)?)
}

#[derive(Clone, Copy)]
struct Pending {
    tag: Tag,
    data: *const u8,
    len: usize,
    /// The socket it was (last) assigned to.
    path: usize,
}

struct Path {
    sock: TcpStream,
    /// "local -> remote", for messages (a failed socket may no longer know its peer).
    name: String,
    alive: bool,
    /// Messages to send on this socket, in order.
    queue: VecDeque<u64>,
    /// Control frames to send at the next frame boundary: (kind, seq).
    ctrl: VecDeque<(u8, u64)>,
    tx: TxFramer<Header>,
    /// The body of the frame `tx` writes (the caller's memory; its length is in the header).
    tx_body: *const u8,
    rx: RxFramer<Header>,
    /// Whether the body `rx` is reading goes to its message's posted destination (decided at
    /// its first byte; else to the slot).
    rx_placed: bool,
}

/// A TCP link to one peer over several paths (see the module documentation).
pub struct MultipathLink {
    peer: usize,
    paths: Vec<Path>,
    slot_size: usize,
    nslots: usize,
    slots: AlignedBuf,
    /// Per slot: the message in it (seq, tag, len) once fully arrived, and whether it arrived
    /// at its posted destination instead (`posted_rx`).
    ready: Vec<Option<(u64, Tag, usize)>>,
    placed: Vec<bool>,
    /// Receives posted for the next [`POST_WINDOW`] messages, at `seq % POST_WINDOW`: (seq,
    /// destination, length), valid until that message is released or the receives are
    /// cancelled.
    posted_rx: Vec<Option<(u64, *mut u8, usize)>>,
    /// Gap-free count of arrived messages; `released` <= `received`.
    received: u64,
    released: u64,
    /// What we last told the peer.
    adv_recv: u64,
    adv_credit: u64,
    discard: Vec<u8>,
    abort_body: Vec<u8>,
    pending: Vec<Pending>,
    posted: u64,
    /// What the peer last told us.
    peer_recv: u64,
    peer_credit: u64,
    reported: u64,
    next_path: usize,
    failed: Option<Error>,
    /// Every path is gone while the peer owed us nothing and we owed it nothing (it finished
    /// and exited, or every cable was cut at rest): messages already received are still
    /// handed out; whatever needs the peer fails with this.
    gone: Option<Error>,
}

impl std::fmt::Debug for MultipathLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipathLink")
            .field("peer", &self.peer)
            .field("paths", &self.paths.len())
            .field("slot_size", &self.slot_size)
            .field("nslots", &self.nslots)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers in `pending`/`tx` point into caller memory that the Region's contract
// keeps valid until completion; the link is used by one thread at a time (&mut self).
unsafe impl Send for MultipathLink {}

impl MultipathLink {
    /// Wraps connected, authenticated sockets to `peer` (socket `k` on path `k % npaths`) as a
    /// link with `nslots` slots of `slot_size` bytes. A socket whose sent data stays
    /// unacknowledged for `path_timeout` is dead.
    pub fn new(
        peer: usize,
        socks: Vec<TcpStream>,
        slot_size: usize,
        nslots: usize,
        path_timeout: Duration,
    ) -> Result<MultipathLink> {
        if socks.is_empty() {
            return Err(Error::invalid_argument(
                "a TCP link needs at least one socket",
            ));
        }
        let nslots = nslots.max(2);
        let mut paths = Vec::with_capacity(socks.len());
        for s in socks {
            let e = |e| {
                Error::io(
                    format!("configuring a socket of the link to rank {peer}"),
                    e,
                )
            };
            s.set_nonblocking(true).map_err(e)?;
            s.set_nodelay(true).map_err(e)?;
            crate::sys::set_tcp_user_timeout(std::os::fd::AsFd::as_fd(&s), path_timeout)
                .map_err(e)?;
            let addr =
                |a: io::Result<std::net::SocketAddr>| a.map_or("?".into(), |a| a.to_string());
            paths.push(Path {
                name: format!("{} -> {}", addr(s.local_addr()), addr(s.peer_addr())),
                sock: s,
                alive: true,
                queue: VecDeque::with_capacity(2 * nslots),
                ctrl: VecDeque::with_capacity(8),
                tx: TxFramer::default(),
                tx_body: std::ptr::null(),
                rx: RxFramer::new(slot_size),
                rx_placed: false,
            });
        }
        Ok(MultipathLink {
            peer,
            paths,
            slot_size,
            nslots,
            slots: AlignedBuf::new(slot_size * nslots),
            ready: vec![None; nslots],
            placed: vec![false; nslots],
            posted_rx: vec![None; POST_WINDOW],
            received: 0,
            released: 0,
            adv_recv: 0,
            adv_credit: 0,
            discard: vec![0; DISCARD],
            abort_body: Vec::with_capacity(MAX_ABORT),
            pending: vec![
                Pending {
                    tag: Tag::default(),
                    data: std::ptr::null(),
                    len: 0,
                    path: 0,
                };
                nslots
            ],
            posted: 0,
            peer_recv: 0,
            peer_credit: 0,
            reported: 0,
            next_path: 0,
            failed: None,
            gone: None,
        })
    }

    /// How many of its sockets are still in use.
    pub fn live_paths(&self) -> usize {
        self.paths.iter().filter(|p| p.alive).count()
    }

    fn protocol(&self, what: String) -> Error {
        Error::peer_lost(
            self.peer,
            format!("protocol error on the link from rank {}: {what}", self.peer),
        )
    }

    fn fail(&mut self, e: Error) -> Error {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    fn check(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// The next live socket, round robin.
    fn pick(&mut self) -> Option<usize> {
        let n = self.paths.len();
        for k in 0..n {
            let i = (self.next_path + k) % n;
            if self.paths[i].alive {
                self.next_path = i + 1;
                return Some(i);
            }
        }
        None
    }

    /// Socket `i` is dead: stop using it, tell the peer on the others, and hand the messages it
    /// still owed to them. When no socket is left: fails the link if the peer has not received
    /// everything we sent, else marks it gone ([`MultipathLink::gone`]).
    fn path_died(&mut self, i: usize, why: &str) -> Result<()> {
        if !self.paths[i].alive {
            return Ok(());
        }
        let p = &mut self.paths[i];
        let name = p.name.clone();
        p.alive = false;
        p.queue.clear();
        p.ctrl.clear();
        p.tx = TxFramer::default();
        p.rx = RxFramer::new(self.slot_size);
        p.rx_placed = false;
        let _ = p.sock.shutdown(Shutdown::Both);
        let left = self.live_paths();
        if left == 0 {
            let e = Error::peer_lost(
                self.peer,
                format!(
                    "every path to rank {} failed (the last, socket {i} {name}: {why})",
                    self.peer
                ),
            );
            if self.peer_recv >= self.posted && self.failed.is_none() {
                // Nothing of ours is lost: what arrived is still good (the usual end of a job,
                // where the peer left once it had what it needed).
                self.gone = Some(e);
                return Ok(());
            }
            return Err(self.fail(e));
        }
        if self.peer_recv >= self.posted && why == CLOSED {
            // Quiet: the peer closing its sockets at the end of the job (the other paths
            // follow at once); a path that fails with data in flight is warned of below.
            crate::info!(
                None,
                "link to rank {}: socket {i} ({name}) closed by the peer",
                self.peer
            );
        } else {
            crate::warn!(
                None,
                "link to rank {}: path of socket {i} ({name}) failed ({why}); \
                 continuing on {left} of {} sockets",
                self.peer,
                self.paths.len()
            );
        }
        for s in self.peer_recv..self.posted {
            let idx = (s % self.nslots as u64) as usize;
            if self.pending[idx].path == i {
                let j = self.pick().expect("a live path");
                self.pending[idx].path = j;
                self.paths[j].queue.push_back(s);
            }
        }
        for p in self.paths.iter_mut().filter(|p| p.alive) {
            p.ctrl.push_back((DEAD, i as u64));
            if !p.ctrl.iter().any(|c| c.0 == ACK) {
                p.ctrl.push_back((ACK, 0));
            }
        }
        Ok(())
    }

    /// An I/O error or EOF on socket `i`: the path is dead.
    fn io_failed(&mut self, i: usize, e: Option<io::Error>) -> Result<()> {
        let why = e.map_or_else(|| CLOSED.to_string(), |e| e.to_string());
        self.path_died(i, &why)
    }

    /// Writes what socket `i` has to send, as far as it takes it.
    fn pump_tx(&mut self, i: usize) -> Result<bool> {
        let mut moved = false;
        loop {
            if !self.paths[i].alive {
                return Ok(moved);
            }
            if self.paths[i].tx.idle() {
                let header = |kind, len, seq, tag| Header {
                    kind,
                    len,
                    seq,
                    recv: self.received,
                    credit: self.released,
                    tag,
                };
                let frame = if let Some((kind, seq)) = self.paths[i].ctrl.pop_front() {
                    Some((header(kind, 0, seq, Tag::default()), std::ptr::null()))
                } else {
                    let mut next = None;
                    while let Some(s) = self.paths[i].queue.pop_front() {
                        let p = self.pending[(s % self.nslots as u64) as usize];
                        // Already received (sent on another path), or reassigned meanwhile.
                        if s >= self.peer_recv && p.path == i {
                            next = Some((header(DATA, p.len, s, p.tag), p.data));
                            break;
                        }
                    }
                    next
                };
                let Some((h, body)) = frame else {
                    return Ok(moved);
                };
                self.adv_recv = self.adv_recv.max(self.received);
                self.adv_credit = self.adv_credit.max(self.released);
                self.paths[i].tx.start(&h);
                self.paths[i].tx_body = body;
            }
            let r = {
                let p = &mut self.paths[i];
                let len = p.tx.current().map_or(0, |h| h.len);
                let ptr = if len == 0 {
                    std::ptr::NonNull::<u8>::dangling().as_ptr().cast_const()
                } else {
                    p.tx_body
                };
                // SAFETY: the Region's contract keeps the body valid and unmodified until the
                // peer's `recv` covers it, which is after this frame is written; zero lengths
                // need only a non-null aligned pointer.
                let body = unsafe { std::slice::from_raw_parts(ptr, len) };
                let (hdr, body) = p.tx.rest(body);
                let r = if hdr.is_empty() {
                    p.sock.write(body)
                } else {
                    crate::sys::NoSigPipe::new(&p.sock)
                        .write_vectored(&[IoSlice::new(hdr), IoSlice::new(body)])
                };
                if let Ok(n) = r {
                    p.tx.advance(n);
                }
                r
            };
            match r {
                Ok(0) => {
                    self.io_failed(i, None)?;
                    return Ok(true);
                }
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.io_failed(i, Some(e))?;
                    return Ok(true);
                }
            }
        }
    }

    /// Whether message `s` still needs its bytes (not arrived, not released).
    fn wanted(&self, s: u64) -> bool {
        s >= self.released
            && s < self.released + self.nslots as u64
            && self.ready[(s % self.nslots as u64) as usize].is_none_or(|r| r.0 != s)
    }

    /// Reads what socket `i` has received.
    fn pump_rx(&mut self, i: usize) -> Result<bool> {
        let mut moved = false;
        loop {
            if !self.paths[i].alive {
                return Ok(moved);
            }
            let slot_size = self.slot_size;
            let r = match self.paths[i].rx.body() {
                None => {
                    let p = &mut self.paths[i];
                    p.sock.read(p.rx.header_buf().unwrap_or_default())
                }
                Some((h, got)) if h.kind == ABORT => {
                    self.abort_body.resize(h.len, 0);
                    self.paths[i].sock.read(&mut self.abort_body[got..])
                }
                Some((h, got)) if self.wanted(h.seq) => {
                    let slot = (h.seq % self.nslots as u64) as usize;
                    let w = (h.seq % POST_WINDOW as u64) as usize;
                    if got == 0 {
                        self.paths[i].rx_placed =
                            self.posted_rx[w].is_some_and(|(s, _, l)| s == h.seq && l == h.len);
                    }
                    match self.posted_rx[w] {
                        Some((_, dst, _)) if self.paths[i].rx_placed => {
                            // SAFETY: post_recv's contract: dst..dst + h.len (its length matched
                            // at the first byte) is ours to write until the message is released
                            // or the receives are cancelled, and cancel_recvs unbinds every
                            // body being read into it; got < h.len.
                            let buf = unsafe {
                                std::slice::from_raw_parts_mut(dst.add(got), h.len - got)
                            };
                            self.paths[i].sock.read(buf)
                        }
                        _ => {
                            let buf = &mut self.slots.as_mut_slice()
                                [slot * slot_size + got..slot * slot_size + h.len];
                            self.paths[i].sock.read(buf)
                        }
                    }
                }
                Some((h, got)) => {
                    // A duplicate (it came on another path too): read past it.
                    let n = (h.len - got).min(DISCARD);
                    self.paths[i].sock.read(&mut self.discard[..n])
                }
            };
            match r {
                Ok(0) => {
                    self.io_failed(i, None)?;
                    return Ok(true);
                }
                Ok(n) => {
                    moved = true;
                    let event = self.paths[i].rx.advance(n);
                    match event.map_err(|e| self.protocol(e.0))? {
                        Some(RxEvent::Header(h)) => self.on_header(h)?,
                        Some(RxEvent::Body(h)) => {
                            let placed = std::mem::take(&mut self.paths[i].rx_placed);
                            self.on_body(h, placed)?
                        }
                        None => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.io_failed(i, Some(e))?;
                    return Ok(true);
                }
            }
        }
    }

    fn on_header(&mut self, h: Header) -> Result<()> {
        if h.recv > self.posted || h.credit > h.recv {
            return Err(self.protocol(format!(
                "it claims {} messages received and {} released of the {} we sent",
                h.recv, h.credit, self.posted
            )));
        }
        if h.kind == DATA && h.seq >= self.released + self.nslots as u64 {
            return Err(self.protocol(format!(
                "message {} sent beyond the credit ({} released, {} slots)",
                h.seq, self.released, self.nslots
            )));
        }
        self.peer_recv = self.peer_recv.max(h.recv);
        self.peer_credit = self.peer_credit.max(h.credit);
        // The framer is in the body now, or back at a header if there is none.
        match h.kind {
            DATA | ABORT if h.len == 0 => self.on_body(h, false)?,
            DEAD => {
                let dead = usize::try_from(h.seq).unwrap_or(usize::MAX);
                if dead < self.paths.len() {
                    self.path_died(dead, "the peer found it dead")?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Message `h` has fully arrived, at its posted destination when `placed`.
    fn on_body(&mut self, h: Header, placed: bool) -> Result<()> {
        if h.kind == ABORT {
            return Err(super::tcp::decode_abort(&self.abort_body, self.peer));
        }
        if self.wanted(h.seq) {
            let slot = (h.seq % self.nslots as u64) as usize;
            self.ready[slot] = Some((h.seq, h.tag, h.len));
            self.placed[slot] = placed;
            while self.received < self.released + self.nslots as u64
                && self.ready[(self.received % self.nslots as u64) as usize]
                    .is_some_and(|r| r.0 == self.received)
            {
                self.received += 1;
            }
        }
        Ok(())
    }

    /// Queues an ACK on every live socket when the peer has not heard our latest state.
    fn advertise(&mut self) {
        if self.received == self.adv_recv && self.released == self.adv_credit {
            return;
        }
        for p in self.paths.iter_mut().filter(|p| p.alive) {
            if !p.ctrl.iter().any(|c| c.0 == ACK) {
                p.ctrl.push_back((ACK, 0));
            }
        }
        self.adv_recv = self.received;
        self.adv_credit = self.released;
    }
}

impl Link for MultipathLink {
    fn peer(&self) -> usize {
        self.peer
    }

    fn max_message(&self) -> usize {
        self.slot_size
    }

    fn post_send(&mut self, tag: &Tag, data: Region<'_>) -> Result<bool> {
        let (data, len) = (data.as_ptr(), data.len());
        self.check()?;
        if len > self.slot_size {
            return Err(Error::internal(format!(
                "message of {len} bytes exceeds the link's {}-byte slots",
                self.slot_size
            )));
        }
        if self.posted >= self.peer_credit + self.nslots as u64 {
            return Ok(false);
        }
        let Some(path) = self.pick() else {
            let e = self.gone.clone().unwrap_or_else(|| {
                Error::internal(format!("link to rank {}: no live path", self.peer))
            });
            return Err(self.fail(e));
        };
        let s = self.posted;
        self.pending[(s % self.nslots as u64) as usize] = Pending {
            tag: *tag,
            data,
            len,
            path,
        };
        self.posted += 1;
        self.paths[path].queue.push_back(s);
        self.pump_tx(path)?;
        Ok(true)
    }

    fn progress(&mut self) -> Result<bool> {
        self.check()?;
        let mut moved = false;
        for i in 0..self.paths.len() {
            for r in [self.pump_rx(i), self.pump_tx(i)] {
                match r {
                    Ok(m) => moved |= m,
                    Err(e) => return Err(self.fail(e)),
                }
            }
        }
        self.advertise();
        for i in 0..self.paths.len() {
            match self.pump_tx(i) {
                Ok(m) => moved |= m,
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(moved)
    }

    fn take_send_completions(&mut self) -> usize {
        let n = self.peer_recv - self.reported;
        self.reported = self.peer_recv;
        n as usize
    }

    fn peek_recv(&mut self) -> Result<Option<(Tag, &[u8])>> {
        self.check()?;
        let slot = (self.released % self.nslots as u64) as usize;
        match self.ready[slot] {
            Some((s, tag, len)) if s == self.released => {
                match self.posted_rx[(s % POST_WINDOW as u64) as usize] {
                    Some((_, dst, _)) if self.placed[slot] => {
                        // SAFETY: the message arrived at its posted destination, valid (and written
                        // by nothing else) until it is released or the receives are cancelled;
                        // the slice borrows self, which both need mutably.
                        Ok(Some((tag, unsafe {
                            std::slice::from_raw_parts(dst.cast_const(), len)
                        })))
                    }
                    _ => {
                        let off = slot * self.slot_size;
                        Ok(Some((tag, &self.slots.as_slice()[off..off + len])))
                    }
                }
            }
            _ => match self.gone.clone() {
                Some(e) => Err(self.fail(e)),
                None => Ok(None),
            },
        }
    }

    fn release_recv(&mut self) {
        let slot = (self.released % self.nslots as u64) as usize;
        if self.ready[slot].is_some_and(|r| r.0 == self.released) {
            self.ready[slot] = None;
            self.placed[slot] = false;
            let w = (self.released % POST_WINDOW as u64) as usize;
            if self.posted_rx[w].is_some_and(|(s, ..)| s == self.released) {
                self.posted_rx[w] = None;
            }
            self.released += 1;
        }
    }

    fn post_recv(&mut self, index: u64, dst: RegionMut<'_>) {
        let (dst, len) = (dst.as_mut_ptr(), dst.len());
        if len == 0 || index < self.released || index >= self.released + POST_WINDOW as u64 {
            return;
        }
        let slot = (index % self.nslots as u64) as usize;
        // Too late once any of its bytes went to the slot (or it has all arrived).
        let started = self.paths.iter().any(|p| {
            p.rx.body()
                .is_some_and(|(h, got)| h.kind == DATA && h.seq == index && got > 0)
        });
        if started || self.ready[slot].is_some_and(|r| r.0 == index) {
            return;
        }
        self.posted_rx[(index % POST_WINDOW as u64) as usize] = Some((index, dst, len));
    }

    fn cancel_recvs(&mut self) {
        for w in 0..POST_WINDOW {
            let Some((seq, dst, len)) = self.posted_rx[w].take() else {
                continue;
            };
            let slot = (seq % self.nslots as u64) as usize;
            let off = slot * self.slot_size;
            if self.placed[slot] && self.ready[slot].is_some_and(|r| r.0 == seq) {
                // Arrived but not taken: keep it, in the slot.
                // SAFETY: dst..dst + len holds the message and is still ours (until we return).
                let src = unsafe { std::slice::from_raw_parts(dst.cast_const(), len) };
                self.slots.as_mut_slice()[off..off + len].copy_from_slice(src);
                self.placed[slot] = false;
            }
            // Bodies still being read into dst go on in the slot, after what they have read.
            for p in self.paths.iter_mut().filter(|p| p.rx_placed) {
                if let Some((h, got)) = p.rx.body().filter(|(h, _)| h.seq == seq) {
                    // SAFETY: as above; got < h.len == len.
                    let src = unsafe { std::slice::from_raw_parts(dst.cast_const(), got) };
                    self.slots.as_mut_slice()[off..off + got].copy_from_slice(src);
                    debug_assert_eq!(h.len, len);
                    p.rx_placed = false;
                }
            }
        }
    }

    fn wait_interest(&self, out: &mut Vec<libc::pollfd>) {
        let credit_ok = self.posted < self.peer_credit + self.nslots as u64;
        for p in self.paths.iter().filter(|p| p.alive) {
            let mut events = libc::POLLIN;
            if !p.tx.idle() || !p.ctrl.is_empty() || (credit_ok && !p.queue.is_empty()) {
                events |= libc::POLLOUT;
            }
            out.push(libc::pollfd {
                fd: p.sock.as_raw_fd(),
                events,
                revents: 0,
            });
        }
    }

    fn before_wait(&mut self) -> bool {
        // Credit returned by release_recv since the last progress: tell the peer before we sleep.
        if self.released != self.adv_credit {
            self.advertise();
            return true;
        }
        false
    }

    fn send_abort(&mut self, err: &Error) {
        let mut buf = [0u8; MAX_ABORT];
        let n = wire::encode_abort(err, &mut buf);
        let body = &buf[..n];
        let hdr = encode(
            ABORT,
            body.len(),
            0,
            self.received,
            self.released,
            &Tag::default(),
        );
        for p in self.paths.iter_mut().filter(|p| p.alive) {
            if p.tx.at_boundary() {
                let _ = crate::sys::NoSigPipe::new(&p.sock)
                    .write_vectored(&[IoSlice::new(&hdr), IoSlice::new(body)]);
            }
            let _ = p.sock.shutdown(Shutdown::Write);
        }
        if self.failed.is_none() {
            self.failed = Some(err.clone());
        }
    }

    fn transport(&self) -> &'static str {
        "tcp"
    }
}

impl Drop for MultipathLink {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = p.sock.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Instant;

    fn pair(nsocks: usize) -> (MultipathLink, MultipathLink) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..nsocks {
            a.push(TcpStream::connect(addr).unwrap());
            b.push(l.accept().unwrap().0);
        }
        let t = Duration::from_secs(5);
        (
            MultipathLink::new(1, a, 4096, 4, t).unwrap(),
            MultipathLink::new(0, b, 4096, 4, t).unwrap(),
        )
    }

    /// Sends `msgs` from a to b; `kill` is called once, after `at` messages were received.
    fn run(
        a: &mut MultipathLink,
        b: &mut MultipathLink,
        msgs: &[Vec<u8>],
        at: usize,
        mut kill: impl FnMut(&mut MultipathLink, &mut MultipathLink),
    ) {
        let (mut sent, mut got, mut done, mut killed) = (0, 0, 0, false);
        // Every other message is received into a posted destination (they survive a path's
        // death too: a re-sent body binds anew).
        let mut dsts: Vec<Vec<u8>> = msgs.iter().map(|m| vec![0u8; m.len()]).collect();
        let mut offered = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while got < msgs.len() || done < msgs.len() {
            while offered < msgs.len() && offered < got + 4 {
                if offered % 2 == 0 {
                    let d = &mut dsts[offered];
                    // SAFETY: dsts outlives the loop; cancel_recvs runs before it drops.
                    unsafe {
                        b.post_recv(offered as u64, RegionMut::from_raw(d.as_mut_ptr(), d.len()))
                    };
                }
                offered += 1;
            }
            assert!(
                Instant::now() < deadline,
                "no progress: sent {sent} got {got} done {done}"
            );
            while sent < msgs.len() {
                let tag = Tag {
                    seq: sent as u64,
                    ..Tag::default()
                };
                // SAFETY: msgs outlives the loop and is not modified.
                if !unsafe {
                    a.post_send(
                        &tag,
                        Region::from_raw(msgs[sent].as_ptr(), msgs[sent].len()),
                    )
                }
                .unwrap()
                {
                    break;
                }
                sent += 1;
            }
            a.progress().unwrap();
            done += a.take_send_completions();
            b.progress().unwrap();
            while let Some((tag, data)) = b.peek_recv().unwrap() {
                assert_eq!(tag.seq, got as u64);
                assert_eq!(data, &msgs[got][..], "message {got}");
                b.release_recv();
                got += 1;
            }
            b.before_wait();
            if got >= at && !killed {
                killed = true;
                kill(a, b);
            }
        }
        b.cancel_recvs();
        for (k, d) in dsts.iter().enumerate().step_by(2) {
            assert!(
                d == &msgs[k] || d.iter().all(|&x| x == 0),
                "message {k}: torn"
            );
        }
    }

    fn msgs() -> Vec<Vec<u8>> {
        (0..200u32)
            .map(|i| vec![i as u8; (i as usize * 97) % 4097])
            .collect()
    }

    /// Sends `msgs` from a and runs both sides until b holds them all (unreleased).
    fn deliver_all(a: &mut MultipathLink, b: &mut MultipathLink, msgs: &[Vec<u8>]) {
        for (k, m) in msgs.iter().enumerate() {
            let tag = Tag {
                seq: k as u64,
                ..Tag::default()
            };
            // SAFETY: msgs outlives the links' use of it (the caller keeps it to the end).
            assert!(unsafe { a.post_send(&tag, Region::from_raw(m.as_ptr(), m.len())) }.unwrap());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.received < msgs.len() as u64 {
            assert!(Instant::now() < deadline, "received {}", b.received);
            a.progress().unwrap();
            b.progress().unwrap();
        }
    }

    /// Receives posted before their messages arrive land at the posted destination (peek
    /// hands out that memory: no copy out of a slot), also ones posted further ahead than the
    /// slots' credit; one posted with another length, or not posted, goes through the slot.
    #[test]
    fn posted_receives_land_in_place() {
        let (mut a, mut b) = pair(2);
        let n = 3 * b.nslots;
        let msgs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8 + 1; 1000 + 7 * i]).collect();
        let mut dsts: Vec<Vec<u8>> = msgs.iter().map(|m| vec![0u8; m.len()]).collect();
        dsts[2].push(0); // a length that does not match: ignored
        for (k, d) in dsts.iter_mut().enumerate().take(n - 1) {
            // SAFETY: dsts outlives the link's use (cancel_recvs below, before they drop).
            unsafe { b.post_recv(k as u64, RegionMut::from_raw(d.as_mut_ptr(), d.len())) };
        }
        let (mut sent, mut got) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while got < n {
            assert!(Instant::now() < deadline, "sent {sent} got {got}");
            while sent < n {
                let tag = Tag {
                    seq: sent as u64,
                    ..Tag::default()
                };
                let m = &msgs[sent];
                // SAFETY: msgs outlives the links' use of it.
                if !unsafe { a.post_send(&tag, Region::from_raw(m.as_ptr(), m.len())) }.unwrap() {
                    break;
                }
                sent += 1;
            }
            a.progress().unwrap();
            a.take_send_completions();
            b.progress().unwrap();
            while let Some((tag, data)) = b.peek_recv().unwrap() {
                assert_eq!((tag.seq, data), (got as u64, &msgs[got][..]));
                let in_place = data.as_ptr() == dsts[got].as_ptr();
                assert_eq!(in_place, got != 2 && got != n - 1, "message {got}");
                b.release_recv();
                got += 1;
            }
        }
        b.cancel_recvs();
        assert_eq!(dsts[n - 2], msgs[n - 2]);
    }

    /// Cancelling a receive whose message arrived at the posted destination but was not taken
    /// keeps the message (in the slot): the caller may reuse its memory at once.
    #[test]
    fn a_cancelled_receive_keeps_its_arrived_message() {
        let (mut a, mut b) = pair(2);
        let msgs = vec![vec![5u8; 3000]];
        let mut dst = vec![0u8; 3000];
        // SAFETY: dst outlives the link's use of it (until cancel_recvs).
        unsafe { b.post_recv(0, RegionMut::from_raw(dst.as_mut_ptr(), dst.len())) };
        deliver_all(&mut a, &mut b, &msgs);
        b.cancel_recvs();
        dst.fill(9);
        let (_, data) = b.peek_recv().unwrap().expect("kept");
        assert_eq!(data, &msgs[0][..]);
        assert_ne!(data.as_ptr(), dst.as_ptr());
    }

    #[test]
    fn header_round_trip_and_bounds() {
        let tag = Tag {
            seq: 3,
            count: 9,
            ..Tag::default()
        };
        let h = encode(DATA, 100, 7, 5, 4, &tag);
        let d = decode_header(&h, 100).unwrap();
        assert_eq!(
            (d.kind, d.len, d.seq, d.recv, d.credit, d.tag),
            (DATA, 100, 7, 5, 4, tag)
        );
        assert!(decode_header(&h, 99).is_err());
        assert!(decode_header(&encode(ACK, 1, 0, 0, 0, &tag), 100).is_err());
        assert!(decode_header(&[0; MHDR], 100).is_err());
    }

    #[test]
    fn messages_arrive_in_order_across_paths() {
        for n in [1, 2, 3] {
            let (mut a, mut b) = pair(n);
            run(&mut a, &mut b, &msgs(), usize::MAX, |_, _| {});
        }
    }

    #[test]
    fn a_dead_socket_is_survived() {
        // The receiver's socket 1 breaks mid-stream (reset both ways): everything still arrives.
        let (mut a, mut b) = pair(2);
        run(&mut a, &mut b, &msgs(), 37, |_, b| {
            let _ = b.paths[1].sock.shutdown(Shutdown::Both);
        });
        assert_eq!(a.live_paths(), 1);
        assert_eq!(b.live_paths(), 1);
    }

    #[test]
    fn the_sender_noticing_first_is_survived() {
        let (mut a, mut b) = pair(3);
        run(&mut a, &mut b, &msgs(), 11, |a, _| {
            a.path_died(0, "test").unwrap();
        });
        assert_eq!(a.live_paths(), 2);
    }

    fn is_peer_lost(e: &Error, peer: usize) -> bool {
        e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(peer)
    }

    /// Every path lost with nothing in flight: whatever needs the peer is PeerLost naming it,
    /// on both sides.
    #[test]
    fn losing_every_path_is_peer_lost() {
        let (mut a, mut b) = pair(2);
        a.path_died(0, "test").unwrap();
        a.path_died(1, "test").unwrap();
        let e = a.peek_recv().unwrap_err();
        assert!(is_peer_lost(&e, 1), "{e}");
        let x = [0u8; 8];
        // SAFETY: x outlives the call, which fails without reading it.
        let e =
            unsafe { a.post_send(&Tag::default(), Region::from_raw(x.as_ptr(), 8)) }.unwrap_err();
        assert!(is_peer_lost(&e, 1), "{e}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline);
            b.progress().unwrap();
            if let Err(e) = b.peek_recv() {
                assert!(is_peer_lost(&e, 0), "{e}");
                break;
            }
        }
    }

    /// Every path lost while a sent message is not yet acknowledged: the sender fails at once.
    #[test]
    fn losing_every_path_with_a_send_in_flight_fails() {
        let (mut a, _b) = pair(2);
        let x = [7u8; 64];
        // SAFETY: x outlives the link's use of it (the link fails below and is dropped first).
        assert!(unsafe { a.post_send(&Tag::default(), Region::from_raw(x.as_ptr(), 64)) }.unwrap());
        a.path_died(0, "test").unwrap();
        let e = a.path_died(1, "test").unwrap_err();
        assert!(is_peer_lost(&e, 1), "{e}");
    }

    /// The end of a job: the peer sends its last messages, has them acknowledged and closes
    /// every socket before this side has taken them. They are still handed out, in order; only
    /// then does the link report the peer gone.
    #[test]
    fn messages_received_before_the_peer_left_are_delivered() {
        let (mut a, mut b) = pair(2);
        let msgs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 100 + i as usize]).collect();
        for (k, m) in msgs.iter().enumerate() {
            let tag = Tag {
                seq: k as u64,
                ..Tag::default()
            };
            // SAFETY: msgs outlives a, which is dropped below.
            assert!(unsafe { a.post_send(&tag, Region::from_raw(m.as_ptr(), m.len())) }.unwrap());
        }
        let (mut done, deadline) = (0, Instant::now() + Duration::from_secs(10));
        while done < msgs.len() {
            assert!(Instant::now() < deadline, "acknowledged {done}");
            a.progress().unwrap();
            b.progress().unwrap();
            done += a.take_send_completions();
        }
        drop(a);
        while b.live_paths() > 0 {
            assert!(Instant::now() < deadline, "paths still up");
            b.progress().unwrap();
        }
        for (k, m) in msgs.iter().enumerate() {
            let (tag, data) = b.peek_recv().unwrap().expect("a message received before");
            assert_eq!((tag.seq, data), (k as u64, &m[..]));
            b.release_recv();
        }
        let e = b.peek_recv().unwrap_err();
        assert!(is_peer_lost(&e, 0), "{e}");
    }
}
