//! The shared-memory link: two rings in one memfd segment per peer pair.
//!
//! The lower rank creates the segment (an anonymous, size-sealed memfd), maps it and hands the
//! descriptor to the higher rank over an abstract Unix socket with SCM_RIGHTS ([`setup`]); both
//! map it, so nothing is ever created on disk or in /dev/shm and the kernel frees it when both
//! processes are gone, even after `kill -9`.
//!
//! ```text
//! segment:  header (4 KiB: geometry, pids, one abort area per side)
//!           ring 0 (side 0 -> side 1)   ring 1 (side 1 -> side 0)
//! ring:     tail (released count, written by the receiver; cache-line padded)
//!           nslots x [ slot header (64 B: seq, len, tag) | data (slot size, 64 B aligned) ]
//! ```
//!
//! The sender copies message `k` into slot `k % nslots` when `k - tail < nslots` (the credit),
//! then publishes it with a release store of `seq = k + 1` in the slot header. The receiver
//! polls the next slot's `seq` (one cache line carries flag, length and tag), reads in place —
//! the executor reduces straight out of the slot — and returns the credit with a release store
//! of `tail`. A send therefore completes as soon as it is posted.
//!
//! Single-copy paths for large messages: a receive whose destination is known is placed there
//! by the sender (`place.rs`); a message the receiver will reduce may instead stay in the
//! sender's buffer (kind REMOTE, its address in the slot header) once the receiver has said it
//! can read it (`pulls` in the header, after a probe read): the receiver reads it in
//! cache-sized pieces ([`Link::pull_recv`]) and the send completes when it releases the
//! message. A sender whose call ends early takes such a message back (REMOTE -> REVOKED), or
//! waits while the receiver is reading it (PULLING). A sender with an arrived message whose
//! receive waits for such a send copies its held messages into their slots after all (REMOTE ->
//! COPYING -> DATA, [`Link::settle_sends`], which the executor calls after 20 us idle in that
//! state, or 5 ms idle in any): two ranks exchanging in place would otherwise each hold their
//! send until the other's receive, which waits for its own held send.
//!
//! Between threads both paths are plain copies. Between processes they go through the kernel
//! (process_vm_writev / process_vm_readv, which pin every page), unless the buffer is registered
//! memory ([`reg`], `SharedMem`, `oxcclMemAlloc`): then the slot or the posted entry also
//! carries the buffer's memory-file descriptor number, id and offset, the peer duplicates the
//! descriptor with pidfd_getfd and maps the file once, and reads the message from, or writes it
//! into, its mapping: one pass over memory between processes. Registered messages are left for
//! the receiver to pull by default; unregistered ones between processes only with
//! `OXCCL_SHM_PULL=1`.
//!
//! Waiting: each rank owns a [`Doorbell`] (a futex word in a page of its own memfd, mapped by
//! every shm peer). A rank about to sleep announces itself in the doorbell's `waiting` word,
//! looks at its links once more, then sleeps on the futex; a peer that publishes a message or
//! returns a credit bumps the word and calls FUTEX_WAKE only when a waiter has announced itself.
//!
//! Failure: `send_abort` fills this side's abort area (error code, named peer, message; the
//! same encoding as TCP abort frames) and the peer's `peek_recv`/`post_send` turn it into the
//! same error. The Unix socket stays open as a liveness signal: EOF means the peer process (or
//! its communicator) is gone, which becomes [`ErrorKind::PeerLost`](crate::error::ErrorKind::PeerLost) naming it once a message from
//! it is still expected.

mod doorbell;
mod place;
pub mod reg;
pub mod setup;

pub use doorbell::Doorbell;

use std::cell::UnsafeCell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crossbeam_utils::CachePadded;

use place::{POSTS, Post, Posted, Writer};

use super::{Link, Region, RegionMut, Tag};
use crate::error::Error;
use crate::error::Result;
use crate::sys::shm::{self as sys, Mapping};

const MAGIC: u64 = 0x4d48_534c_4343_584f; // "OXCCLSHM"
const VERSION: u32 = 3;
const HDR_BYTES: usize = 4096;
const SLOT_HDR: usize = 64;
/// Ring header: the tail (one padded cache line pair), then the posted-receive table.
const RING_HDR: usize = 128 + POSTS * size_of::<Post>();
const ABORT_MAX: usize = 1024;

/// Default number of slots per ring.
pub const DEFAULT_SLOTS: usize = 4;
/// Largest slot count a segment may declare.
pub const MAX_SLOTS: usize = 64;
/// Largest slot size a segment may declare.
pub const MAX_SLOT_BYTES: usize = 64 << 20;

/// Abort area states.
const OPEN: u32 = 0;
const ABORTED: u32 = 1;
const CLOSED: u32 = 2;

/// The segment header. Geometry and pids are written by the creator before the descriptor is
/// passed on (the socket orders them); the abort areas are written by their side at any time.
#[repr(C, align(64))]
struct Header {
    magic: u64,
    version: u32,
    nslots: u32,
    slot_size: u64,
    total: u64,
    pid: [u32; 2],
    /// Each side's address of its own `pid` field, in its own address space: the peer reads it
    /// with process_vm_readv to find out whether it may read this side's memory.
    probe: [AtomicU64; 2],
    /// Set by a side that can read the other's memory: the other may then leave large
    /// messages in its own buffers for this side to pull (see [`ShmLink::pull_recv`]).
    pulls: [AtomicU32; 2],
    abort: [Abort; 2],
}

#[repr(C, align(64))]
struct Abort {
    /// OPEN, ABORTED (body filled) or CLOSED (the side dropped its link cleanly).
    state: AtomicU32,
    len: AtomicU32,
    /// Written by its side before `state` is released; shared memory, hence the cell.
    body: UnsafeCell<[u8; ABORT_MAX]>,
}

#[repr(C, align(64))]
struct SlotHdr {
    /// Index + 1 of the message in this slot; written last, with release ordering.
    seq: AtomicU64,
    len: AtomicU32,
    /// DATA (in the slot), PLACED (already in the receiver's posted buffer) or REMOTE (still
    /// in the sender's buffer, whose address is in `inline`; the receiver turns it PULLING
    /// while it reads, the sender REVOKED when it gives the buffer back unread, or COPYING
    /// and then DATA when it copies it into the slot after all: [`Link::settle_sends`]).
    kind: AtomicU32,
    /// Written by the sender before `seq` is released.
    tag: UnsafeCell<[u8; Tag::LEN]>,
    /// Messages of at most INLINE bytes travel here, in the header's cache line.
    inline: UnsafeCell<[u8; INLINE]>,
}

const DATA: u32 = 0;
const PLACED: u32 = 1;
const REMOTE: u32 = 2;
const PULLING: u32 = 3;
const REVOKED: u32 = 4;
/// The sender is copying a REMOTE message into its slot; it turns DATA when done.
const COPYING: u32 = 5;

/// Messages from this size on stay in the sender's buffer for the receiver to pull, once the
/// receiver has said it can (`OXCCL_SHM_PULL_MIN` overrides). Between threads of one process
/// the receiver then reduces straight out of the sender's buffer: no copy at all. Between
/// processes it reads cache-sized pieces with process_vm_readv and reduces each while it is in
/// cache; measured on a 2-vCPU VM that was no faster than the sender's copy into a slot (the
/// 2 MiB slot ring stays in cache, and the kernel pins every 4 KiB page it copies, which costs
/// about what the copy saves), and slower with 4 ranks on 2 CPUs, so between processes it is
/// opt-in for unregistered memory: `OXCCL_SHM_PULL=1` (and `0` turns it off everywhere). A
/// registered buffer ([`reg`]) is pulled through a mapping whenever the receiver can map it.
const PULL_MIN: usize = 32 << 10;
/// Bytes read per process_vm_readv when pulling: a piece stays in L2 until it is reduced
/// (`OXCCL_SHM_PULL_PIECE` overrides).
const PULL_PIECE: usize = 128 << 10;

/// Largest message carried inside the slot header.
const INLINE: usize = 24;
/// Offset of the inline bytes in a slot (8-byte aligned, so any element type is aligned).
const INLINE_OFF: usize = 40;

const _: () = assert!(size_of::<Header>() <= HDR_BYTES);
const _: () = assert!(size_of::<SlotHdr>() == SLOT_HDR);
const _: () = assert!(std::mem::offset_of!(SlotHdr, inline) == INLINE_OFF);
const _: () = assert!(size_of::<CachePadded<AtomicU64>>() <= 128);
const _: () = assert!(RING_HDR % 64 == 0);

/// The shape of a segment: `nslots` slots of `slot_size` bytes per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Slots per ring.
    pub nslots: usize,
    /// Bytes per slot (the largest message).
    pub slot_size: usize,
}

impl Geometry {
    fn stride(&self) -> usize {
        SLOT_HDR + self.slot_size.next_multiple_of(64)
    }

    fn ring_bytes(&self) -> usize {
        RING_HDR + self.nslots * self.stride()
    }

    fn ring_off(&self, dir: usize) -> usize {
        HDR_BYTES + dir * self.ring_bytes()
    }

    /// Total segment size in bytes (page aligned).
    pub fn total(&self) -> usize {
        (HDR_BYTES + 2 * self.ring_bytes()).next_multiple_of(4096)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if !(1..=MAX_SLOTS).contains(&self.nslots) || self.slot_size > MAX_SLOT_BYTES {
            return Err(format!(
                "{} slots of {} bytes is out of bounds (1..={MAX_SLOTS} slots of at most {MAX_SLOT_BYTES} bytes)",
                self.nslots, self.slot_size
            ));
        }
        Ok(())
    }
}

/// A segment's memory: a shared mapping of the memfd.
pub struct Segment {
    map: Mapping,
    geo: Geometry,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("geo", &self.geo)
            .finish_non_exhaustive()
    }
}

impl Segment {
    /// Creates and maps a fresh segment, as side 0 (this process, the lower rank). Returns the
    /// segment and the descriptor to hand to the peer.
    pub fn create(geo: Geometry) -> Result<(Segment, OwnedFd)> {
        geo.check().map_err(Error::invalid_argument)?;
        let total = geo.total();
        let fd = sys::memfd_sealed("oxccl-shm", total)
            .map_err(|e| Error::io("memfd_create for a shared-memory link", e))?;
        let map = Mapping::new(fd.as_raw_fd(), total)
            .map_err(|e| Error::io("mmap of a shared-memory segment", e))?;
        let h = map.as_ptr().cast::<Header>();
        // SAFETY: the mapping is fresh, zeroed, page aligned and at least HDR_BYTES long, and no
        // other process has it yet, so plain writes to the header fields race with nothing.
        unsafe {
            (*h).magic = MAGIC;
            (*h).version = VERSION;
            (*h).nslots = geo.nslots as u32;
            (*h).slot_size = geo.slot_size as u64;
            (*h).total = total as u64;
            (*h).pid[0] = std::process::id();
        }
        Ok((Segment { map, geo }, fd))
    }

    /// Maps a segment received from the peer, checking its seals, size and header.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Segment> {
        let bad = |m: String| Error::system(format!("shared-memory segment from the peer: {m}"));
        let size = sys::sealed_size(fd).map_err(|e| bad(e.to_string()))?;
        if size < HDR_BYTES {
            return Err(bad(format!("{size} bytes is too small")));
        }
        let map = Mapping::new(fd.as_raw_fd(), size).map_err(|e| bad(format!("mmap: {e}")))?;
        let h = map.as_ptr().cast::<Header>();
        // SAFETY: the mapping is at least HDR_BYTES long and page aligned; the peer wrote these
        // fields before passing the descriptor and does not change them afterwards; a peer that
        // did could only make us reject the segment, never read out of bounds (checked below).
        let (magic, version, nslots, slot_size, total) = unsafe {
            (
                std::ptr::read_volatile(&raw const (*h).magic),
                std::ptr::read_volatile(&raw const (*h).version),
                std::ptr::read_volatile(&raw const (*h).nslots),
                std::ptr::read_volatile(&raw const (*h).slot_size),
                std::ptr::read_volatile(&raw const (*h).total),
            )
        };
        if magic != MAGIC || version != VERSION {
            return Err(bad(format!(
                "not an oxccl v{VERSION} segment (magic {magic:#x}, version {version})"
            )));
        }
        let geo = Geometry {
            nslots: nslots as usize,
            slot_size: usize::try_from(slot_size).unwrap_or(usize::MAX),
        };
        geo.check().map_err(bad)?;
        if geo.total() != size || total != size as u64 {
            return Err(bad(format!(
                "size {size} does not match its geometry ({} expected)",
                geo.total()
            )));
        }
        // SAFETY: as above; side 1 is the only writer of pid[1].
        unsafe { (*h).pid[1] = std::process::id() };
        Ok(Segment { map, geo })
    }

    /// The geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    fn header(&self) -> *mut Header {
        self.map.as_ptr().cast()
    }

    fn abort(&self, side: usize) -> &Abort {
        // SAFETY: the header lies within the mapping, which lives as long as `self`; only the
        // atomic fields are read through this reference, the body through raw pointers.
        unsafe { &(*self.header()).abort[side] }
    }

    fn probe(&self, side: usize) -> &AtomicU64 {
        // SAFETY: in bounds (header), 8-byte aligned; only accessed atomically.
        unsafe { &(*self.header()).probe[side] }
    }

    fn pulls(&self, side: usize) -> &AtomicU32 {
        // SAFETY: in bounds (header), 4-byte aligned; only accessed atomically.
        unsafe { &(*self.header()).pulls[side] }
    }

    fn pid(&self, side: usize) -> u32 {
        // SAFETY: in bounds (header); written once by its side before the link was made.
        unsafe { std::ptr::read_volatile(&raw const (*self.header()).pid[side]) }
    }

    /// The tail counter, the posted-receive table and the first slot of ring `dir`.
    fn ring(&self, dir: usize) -> (*const AtomicU64, *const Post, *mut u8) {
        let off = self.geo.ring_off(dir);
        // SAFETY: ring_off(dir) + ring_bytes <= total == the mapping's length (checked in open,
        // by construction in create); the table lies between the tail's 128 bytes and the slots.
        unsafe {
            let base = self.map.as_ptr().add(off);
            (
                base.cast::<AtomicU64>(),
                base.add(128).cast::<Post>(),
                base.add(RING_HDR),
            )
        }
    }
}

/// One end of a shared-memory link.
pub struct ShmLink {
    peer: usize,
    side: usize,
    seg: Segment,
    tx_tail: *const AtomicU64,
    tx_posts: *const Post,
    tx_slots: *mut u8,
    rx_tail: *const AtomicU64,
    rx_posts: *const Post,
    rx_slots: *mut u8,
    /// How we can write into the peer's posted buffers.
    writer: Writer,
    /// How we can read the peer's buffers (pull); Off unless it works and is wanted.
    reader: Writer,
    /// Whether this side has tried reading the peer (and published the result in `pulls`).
    probed: bool,
    /// Smallest message we leave in our buffer for the peer to pull (usize::MAX: never).
    pull_min: usize,
    /// The peer said it can pull from us.
    peer_pulls: bool,
    /// Our messages left for the peer to pull and not yet released by it, oldest first: index,
    /// and the caller's bytes (address, length), valid until the send completes.
    pulls: std::collections::VecDeque<(u64, usize, usize)>,
    /// Sends reported complete so far.
    reported: u64,
    /// The message peek_recv last returned, if the peer left it for us to pull: address,
    /// length, and where it lies if the peer registered it ([`reg`]).
    pull: Option<(u64, usize, Option<reg::Remote>)>,
    /// The peer's registered buffers mapped here, read-only (pulls) and writable (placing).
    maps: reg::PeerMaps,
    wmaps: reg::PeerMaps,
    /// Where pulled pieces land (allocated at the first pull from another process).
    piece: Vec<u8>,
    piece_bytes: usize,
    /// The buffers we posted.
    posted: Posted,
    nslots: u64,
    slot_size: usize,
    stride: usize,
    /// Messages published so far.
    sent: u64,
    /// The slot of message `sent` (`sent % nslots`, kept without dividing).
    tx_i: usize,
    /// The receiver's `tail` as last read.
    tail_cache: u64,
    /// Messages consumed (released) so far.
    consumed: u64,
    /// The slot of message `consumed`.
    rx_i: usize,
    bell: Arc<dyn super::wait::Bell>,
    peer_bell: Doorbell,
    sock: Option<UnixStream>,
    /// The peer process (another process only): readable once it has exited, even when a child
    /// it forked still holds the socket open.
    pidfd: Option<OwnedFd>,
    gone: bool,
    /// The peer's abort or close was already reported to a waiter as news.
    state_seen: bool,
    ticks: u32,
    abort_sent: bool,
    failed: Option<Error>,
}

impl std::fmt::Debug for ShmLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLink")
            .field("peer", &self.peer)
            .field("side", &self.side)
            .field("seg", &self.seg)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers point into `seg`'s mapping, which the link owns; the link is used by
// one thread at a time (&mut self) and everything shared with the peer goes through atomics.
unsafe impl Send for ShmLink {}

impl ShmLink {
    /// Makes a link to `peer` over `seg`, on `side` (0: the segment's creator, the lower rank).
    /// `bell` is this rank's doorbell, `peer_bell` the peer's; `sock`, when given, is the Unix
    /// socket the segment came over, kept open so that EOF tells us the peer is gone.
    pub fn new(
        peer: usize,
        side: usize,
        seg: Segment,
        bell: Arc<Doorbell>,
        peer_bell: Doorbell,
        sock: Option<UnixStream>,
    ) -> Result<ShmLink> {
        if side > 1 {
            return Err(Error::invalid_argument(format!("shm side {side}")));
        }
        if let Some(s) = &sock {
            s.set_nonblocking(true)
                .map_err(|e| Error::io("set nonblocking on the shm liveness socket", e))?;
        }
        let writer = Writer::for_socket(sock.as_ref());
        let env = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        let pull_env = env("OXCCL_SHM_PULL");
        // Reading the peer's memory is set up between processes too: registered buffers are
        // pulled whenever it works; unregistered ones only with OXCCL_SHM_PULL=1 (pull_min).
        let reader = match (pull_env, writer) {
            (Some(0), _) => Writer::Off,
            (_, w) => w,
        };
        let pull_min = match (pull_env, writer) {
            (None, Writer::Process(_)) => usize::MAX,
            _ => env("OXCCL_SHM_PULL_MIN")
                .unwrap_or(PULL_MIN)
                .max(place::PLACE_MIN),
        };
        let piece_bytes = env("OXCCL_SHM_PULL_PIECE")
            .unwrap_or(PULL_PIECE)
            .clamp(4096, 64 << 20)
            .next_multiple_of(64);
        let h = seg.header();
        // SAFETY: in bounds (header); this side's pid was written before the link was made and
        // is never written again, so its address is what the peer's probe reads.
        let own_pid = unsafe { &raw const (*h).pid[side] } as u64;
        seg.probe(side).store(own_pid, Ordering::Release);
        let peer_pid = sock.as_ref().and_then(|s| sys::peer_pid(s.as_fd()));
        // A peer that is a thread of this process cannot exit without us, and closes or aborts
        // through the segment's state: its socket would only cost a descriptor per link, which
        // is what keeps hundreds of thread-ranks inside one process's descriptor limit.
        let sock = sock.filter(|_| peer_pid.is_none_or(|pid| pid as u32 != std::process::id()));
        let geo = seg.geometry();
        let (tx_tail, tx_posts, tx_slots) = seg.ring(side);
        let (rx_tail, rx_posts, rx_slots) = seg.ring(1 - side);
        let mut link = ShmLink {
            peer,
            side,
            tx_tail,
            tx_posts,
            tx_slots,
            rx_tail,
            rx_posts,
            rx_slots,
            writer,
            reader,
            probed: false,
            pull_min,
            peer_pulls: false,
            pulls: std::collections::VecDeque::with_capacity(geo.nslots),
            reported: 0,
            pull: None,
            maps: reg::PeerMaps::default(),
            wmaps: reg::PeerMaps::writable(),
            piece: Vec::new(),
            piece_bytes,
            pidfd: peer_pid
                .filter(|&pid| pid as u32 != std::process::id())
                .and_then(|pid| sys::pidfd_open(pid).ok()),
            posted: Posted::default(),
            nslots: geo.nslots as u64,
            slot_size: geo.slot_size,
            stride: geo.stride(),
            seg,
            sent: 0,
            tx_i: 0,
            tail_cache: 0,
            consumed: 0,
            rx_i: 0,
            bell,
            peer_bell,
            sock,
            gone: false,
            state_seen: false,
            ticks: 0,
            abort_sent: false,
            failed: None,
        };
        link.offer_pull();
        Ok(link)
    }

    /// Tells the peer, once, whether it may leave large messages for this side to pull: only
    /// if reading its memory works (a thread of this process; or another process whose probe
    /// word process_vm_readv reads back right, which ptrace restrictions or another pid
    /// namespace can forbid). Tries again later while the peer has not published its probe.
    fn offer_pull(&mut self) {
        if self.probed {
            return;
        }
        let peer = 1 - self.side;
        let ok = match self.reader {
            Writer::Same => true,
            Writer::Process(pid) => {
                let addr = self.seg.probe(peer).load(Ordering::Acquire);
                if addr == 0 {
                    return;
                }
                let mut v = [0u8; 4];
                // SAFETY: v is 4 writable local bytes; the remote address is checked by the kernel.
                let n = unsafe { sys::read_process(pid, addr, v.as_mut_ptr(), 4) };
                n.is_ok_and(|n| n == 4) && u32::from_ne_bytes(v) == self.seg.pid(peer)
            }
            Writer::Off => false,
        };
        self.probed = true;
        if !ok {
            self.reader = Writer::Off;
        }
        self.seg
            .pulls(self.side)
            .store(u32::from(ok), Ordering::Release);
    }

    /// Whether the peer can pull our messages (it said so in the header).
    fn peer_pulls(&mut self) -> bool {
        if !self.peer_pulls {
            self.peer_pulls = self.seg.pulls(1 - self.side).load(Ordering::Acquire) == 1;
        }
        self.peer_pulls
    }

    /// How many of our sends are complete: all but those from the oldest message the peer has
    /// yet to pull (a message in a slot or placed is complete once posted).
    fn send_frontier(&mut self) -> u64 {
        if self.pulls.is_empty() {
            return self.sent;
        }
        let tail = self
            .tail(self.tx_tail)
            .load(Ordering::Acquire)
            .min(self.sent);
        self.tail_cache = self.tail_cache.max(tail);
        while self.pulls.front().is_some_and(|&(k, ..)| k < tail) {
            self.pulls.pop_front();
        }
        self.pulls.front().map_or(self.sent, |&(k, ..)| k)
    }

    /// Copies every message still left for the peer to pull into its slot (REMOTE -> COPYING
    /// -> DATA), which completes those sends without the peer. One the peer is reading
    /// (PULLING) stays: it completes when the peer releases it. Whether any send completed.
    fn settle(&mut self) -> bool {
        self.send_frontier();
        let mut settled = false;
        let mut kept = std::collections::VecDeque::with_capacity(self.pulls.len());
        while let Some((k, src, len)) = self.pulls.pop_front() {
            let (hdr, body) = self.slot(self.tx_slots, k, len);
            if hdr
                .kind
                .compare_exchange(REMOTE, COPYING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                kept.push_back((k, src, len));
                continue;
            }
            // SAFETY: src..src+len is the caller's memory of send k, valid and unwritten until
            // the send completes (post_send's contract), which it has not; the slot's data area
            // has room for len (<= slot_size) bytes and the receiver does not read it while
            // the message is COPYING (it waits for DATA, whose release store follows).
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, body, len) };
            hdr.kind.store(DATA, Ordering::Release);
            settled = true;
        }
        self.pulls = kept;
        if settled {
            fence(Ordering::SeqCst);
            self.peer_bell.ring_if_waiting();
        }
        settled
    }

    /// Takes back every message still left for the peer to pull (the call is ending without
    /// it: an error here or there). One the peer is reading is waited for while it lives.
    fn revoke_pulls(&mut self) {
        self.send_frontier();
        if self.pulls.is_empty() {
            return;
        }
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Some((k, ..)) = self.pulls.pop_front() {
            let (hdr, _) = self.slot(self.tx_slots, k, 0);
            if hdr
                .kind
                .compare_exchange(REMOTE, REVOKED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                continue;
            }
            // PULLING: the peer is reading our buffer; it must be done before we return it.
            // (Its socket may outlive it in a forked child: the pid tells, check_alive.)
            while self.tail(self.tx_tail).load(Ordering::Acquire) <= k
                && !self.check_alive(true)
                && std::time::Instant::now() < end
            {
                std::thread::yield_now();
            }
        }
        if self.failed.is_none() {
            self.failed = Some(Error::internal(format!(
                "shared-memory link to rank {} abandoned with a message left for it to read",
                self.peer
            )));
        }
    }

    /// The slot header of message `k` in a ring, and where a message of `len` bytes lies in it
    /// (in the header's own cache line when it is small, else after the header).
    fn slot(&self, slots: *mut u8, k: u64, len: usize) -> (&SlotHdr, *mut u8) {
        self.slot_at(slots, (k % self.nslots) as usize, len)
    }

    /// [`ShmLink::slot`] by slot index (`i < nslots`).
    fn slot_at(&self, slots: *mut u8, i: usize, len: usize) -> (&SlotHdr, *mut u8) {
        debug_assert!((i as u64) < self.nslots);
        let i = i.min(self.nslots as usize - 1);
        let off = if len <= INLINE { INLINE_OFF } else { SLOT_HDR };
        // SAFETY: i < nslots, so the slot (header + data) lies inside the ring, inside the
        // mapping owned by self.seg. SlotHdr is 64-byte aligned there (stride and ring offsets
        // are multiples of 64). Only its atomics are accessed through the reference; the
        // inline bytes and the data only through raw pointers.
        unsafe {
            let p = slots.add(i * self.stride);
            (&*p.cast::<SlotHdr>(), p.add(off))
        }
    }

    /// The slot index after `i`.
    fn next_slot(&self, i: usize) -> usize {
        if i + 1 == self.nslots as usize {
            0
        } else {
            i + 1
        }
    }

    fn tail(&self, p: *const AtomicU64) -> &AtomicU64 {
        // SAFETY: points at a ring's tail inside the mapping owned by self.seg, 64-byte aligned.
        unsafe { &*p }
    }

    fn lost(&self, what: &str) -> Error {
        Error::peer_lost(
            self.peer,
            format!(
                "shared-memory link to rank {} (pid {}) {what} (the process exited or was killed, or \
                 destroyed its communicator; see its log)",
                self.peer,
                self.seg.pid(1 - self.side)
            ),
        )
    }

    fn fail(&mut self, e: Error) -> Error {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    /// The peer's abort, if it sent one; `Some(None)` if it closed cleanly.
    fn peer_state(&self) -> Option<Option<Error>> {
        let a = self.seg.abort(1 - self.side);
        match a.state.load(Ordering::Acquire) {
            OPEN => None,
            ABORTED => {
                let len = (a.len.load(Ordering::Relaxed) as usize).min(ABORT_MAX);
                let mut body = vec![0u8; len];
                // SAFETY: `body` has room for len <= ABORT_MAX bytes, the source is the abort
                // area's body inside the mapping; the peer wrote it before its release store of
                // `state`, which our acquire load saw.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        a.body.get().cast::<u8>(),
                        body.as_mut_ptr(),
                        len,
                    );
                }
                Some(Some(super::tcp::decode_abort(&body, self.peer)))
            }
            _ => Some(None),
        }
    }

    /// Checks (at most every few thousand calls, or when `now`) whether the peer's socket hit EOF.
    fn check_alive(&mut self, now: bool) -> bool {
        self.ticks = self.ticks.wrapping_add(1);
        if self.gone || !(now || self.ticks % 4096 == 0) {
            return false;
        }
        let closed = self
            .sock
            .as_ref()
            .is_some_and(|s| sys::peer_closed(s.as_fd()));
        let exited = self
            .pidfd
            .as_ref()
            .is_some_and(|p| sys::pidfd_exited(p.as_raw_fd()));
        self.gone = closed || exited;
        self.gone
    }

    /// Hands `f` the current message, which its sender copied into the slot after all
    /// (COPYING, then DATA: see `settle`), once the copy it is making now is done.
    fn copied_into_slot(&mut self, len: usize, f: &mut dyn FnMut(usize, &[u8])) -> Result<()> {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (hdr, _) = self.slot_at(self.rx_slots, self.rx_i, 0);
            if hdr.kind.load(Ordering::Acquire) == DATA {
                break;
            }
            self.check_alive(true);
            if let Some(e) = self.dead_end("it copied a message into its slot") {
                return Err(e);
            }
            if std::time::Instant::now() >= end {
                let e = self.lost("took more than 5 s to copy a message into its slot");
                return Err(self.fail(e));
            }
            std::thread::yield_now();
        }
        let (_, body) = self.slot_at(self.rx_slots, self.rx_i, len);
        // SAFETY: the sender copied len (<= slot_size, checked at peek) bytes into the slot's
        // data area before its release store of DATA, which we acquired; it does not touch the
        // slot again until we release the message.
        f(0, unsafe {
            std::slice::from_raw_parts(body.cast_const(), len)
        });
        Ok(())
    }

    /// The error for "nothing from the peer and it can send nothing more", if that is the case.
    fn dead_end(&mut self, waiting_for: &str) -> Option<Error> {
        match self.peer_state() {
            Some(Some(e)) => return Some(self.fail(e)),
            Some(None) => {
                let e = self.lost(&format!(
                    "was closed by rank {} while {waiting_for}",
                    self.peer
                ));
                return Some(self.fail(e));
            }
            None => {}
        }
        if self.gone {
            let e = self.lost(&format!(
                "lost its peer (socket EOF or process exit) while {waiting_for}"
            ));
            return Some(self.fail(e));
        }
        None
    }
}

impl Link for ShmLink {
    fn peer(&self) -> usize {
        self.peer
    }

    fn max_message(&self) -> usize {
        self.slot_size
    }

    fn post_send(&mut self, tag: &Tag, data: Region<'_>) -> Result<bool> {
        let (data, len) = (data.as_ptr(), data.len());
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if len > self.slot_size {
            return Err(Error::internal(format!(
                "message of {len} bytes exceeds the link's {}-byte slots",
                self.slot_size
            )));
        }
        if self.sent - self.tail_cache >= self.nslots {
            // A tail beyond what we sent would be a corrupt peer: treat it as no credit.
            self.tail_cache = self
                .tail(self.tx_tail)
                .load(Ordering::Acquire)
                .min(self.sent);
            if self.sent - self.tail_cache >= self.nslots {
                if let Some(e) = self.dead_end("a send waited for a free slot") {
                    return Err(e);
                }
                return Ok(false);
            }
        }
        let k = self.sent;
        // SAFETY: tx_posts is the table of the ring we send on; data..data+len is readable per
        // the Region's contract.
        let placed = unsafe {
            place::try_place(
                self.tx_posts,
                &mut self.writer,
                &mut self.wmaps,
                self.pidfd.as_ref(),
                k,
                data,
                len,
            )
        };
        let registered = if !placed && len >= place::PLACE_MIN && self.writer != Writer::Same {
            reg::lookup(data as usize, len)
        } else {
            None
        };
        let remote = !placed && (len >= self.pull_min || registered.is_some()) && self.peer_pulls();
        let (hdr, body) = self.slot_at(self.tx_slots, self.tx_i, if remote { 0 } else { len });
        // SAFETY: the slot is free (the receiver's release of message k - nslots happened
        // before its tail store, which our acquire load saw), so nobody reads it; `body` has
        // room for len bytes (INLINE inline, else slot_size), or for the 8-byte address of a
        // remote message (inline, 8-byte aligned); `data..data+len` is valid per post_send's
        // contract, and stays so until the receiver releases a remote message (completion).
        unsafe {
            if remote {
                // Inline: the address, then (registered) the file offset, id and descriptor;
                // id 0 means not registered.
                let r = registered.unwrap_or(reg::Remote {
                    offset: 0,
                    id: 0,
                    fd: 0,
                });
                body.cast::<u64>().write(data as u64);
                body.add(8).cast::<u64>().write(r.offset);
                body.add(16).cast::<u32>().write(r.id);
                body.add(20).cast::<u32>().write(r.fd);
            } else if len > 0 && !placed {
                std::ptr::copy_nonoverlapping(data, body, len);
            }
            let t = tag.encode();
            std::ptr::copy_nonoverlapping(t.as_ptr(), hdr.tag.get().cast::<u8>(), Tag::LEN);
        }
        hdr.len.store(len as u32, Ordering::Relaxed);
        let kind = match (placed, remote) {
            (true, _) => PLACED,
            (false, true) => REMOTE,
            _ => DATA,
        };
        hdr.kind.store(kind, Ordering::Relaxed);
        hdr.seq.store(k + 1, Ordering::Release);
        if remote {
            self.pulls.push_back((k, data as usize, len));
        }
        self.sent = k + 1;
        self.tx_i = self.next_slot(self.tx_i);
        fence(Ordering::SeqCst);
        self.peer_bell.ring_if_waiting();
        Ok(true)
    }

    fn progress(&mut self) -> Result<bool> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.check_alive(false);
        // A message left for the peer to pull completes when the peer releases it: a peer
        // that can no longer do so fails the send.
        if self.send_frontier() < self.sent {
            if let Some(e) = self.dead_end("it still had to read a message of this rank") {
                return Err(e);
            }
        }
        Ok(false)
    }

    fn settle_sends(&mut self) -> Result<bool> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        Ok(self.settle())
    }

    fn take_send_completions(&mut self) -> usize {
        let frontier = self.send_frontier();
        let n = frontier - self.reported;
        self.reported = frontier;
        n as usize
    }

    fn completes_on_post(&self) -> bool {
        // The data is copied into a slot, or into the receiver's posted buffer, before
        // post_send returns; only messages of at least pull_min (far above what the executor
        // runs step by step) wait for the receiver to pull them.
        true
    }

    fn peek_recv(&mut self) -> Result<Option<(Tag, &[u8])>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let k = self.consumed;
        self.pull = None;
        let (hdr, _) = self.slot_at(self.rx_slots, self.rx_i, 0);
        if hdr.seq.load(Ordering::Acquire) != k + 1 {
            if !self.probed {
                self.offer_pull();
            }
            if let Some(e) = self.dead_end("a message was still expected") {
                return Err(e);
            }
            return Ok(None);
        }
        let len = hdr.len.load(Ordering::Relaxed) as usize;
        if len > self.slot_size {
            let e = Error::peer_lost(
                self.peer,
                format!(
                    "protocol error on the shared-memory link from rank {}: a {len}-byte message in a {}-byte slot",
                    self.peer, self.slot_size
                ),
            );
            return Err(self.fail(e));
        }
        let (_, mut body) = self.slot_at(self.rx_slots, self.rx_i, len);
        let (mut held, mut pull) = (len, None);
        // Acquire: a message the sender copied into the slot after publishing it (COPYING ->
        // DATA) is read only after that store.
        let kind = hdr.kind.load(Ordering::Acquire);
        if kind == COPYING {
            return Ok(None);
        }
        if matches!(kind, REMOTE | PULLING | REVOKED) && self.reader != Writer::Off {
            let (_, addr) = self.slot_at(self.rx_slots, self.rx_i, 0);
            // SAFETY: the inline area of the slot header (24 bytes, 8-byte aligned), written by
            // the sender before its release store of seq. The address is only ever handed to
            // the kernel (another process) or read as a thread peer's own buffer; the
            // registration fields are checked against a mapping's header and size before use.
            let (at, r) = unsafe {
                (
                    addr.cast::<u64>().read(),
                    reg::Remote {
                        offset: addr.add(8).cast::<u64>().read(),
                        id: addr.add(16).cast::<u32>().read(),
                        fd: addr.add(20).cast::<u32>().read(),
                    },
                )
            };
            pull = Some((at, len, (r.id != 0).then_some(r)));
            held = 0;
        } else if kind != DATA && kind != PLACED {
            let e = Error::peer_lost(
                self.peer,
                format!(
                    "protocol error on the shared-memory link from rank {}: message {k} of kind \
                     {kind}, which this rank did not offer to take",
                    self.peer
                ),
            );
            return Err(self.fail(e));
        } else if kind == PLACED {
            // Only a buffer we posted ourselves, never an address from shared memory.
            let Some(dst) = self.posted.placed(k, len) else {
                let e = Error::peer_lost(
                    self.peer,
                    format!(
                        "protocol error on the shared-memory link from rank {}: message {k} placed \
                         in a buffer that was not posted for it",
                        self.peer
                    ),
                );
                return Err(self.fail(e));
            };
            body = dst;
        }
        let mut t = [0u8; Tag::LEN];
        // SAFETY: the sender wrote the tag (and the data, in the slot or in our posted buffer)
        // before its release store of seq, which we saw; it does not touch either again until
        // we release the message. The posted buffer is valid until then (the RegionMut's contract).
        // The slice stays valid and unchanged while `self` is borrowed (release needs &mut).
        let data = unsafe {
            std::ptr::copy_nonoverlapping(
                hdr.tag.get().cast::<u8>().cast_const(),
                t.as_mut_ptr(),
                Tag::LEN,
            );
            std::slice::from_raw_parts(body.cast_const(), held)
        };
        self.pull = pull;
        Ok(Some((Tag::decode(&t), data)))
    }

    fn pull_len(&self) -> usize {
        self.pull.map_or(0, |(_, len, _)| len)
    }

    fn pull_recv(&mut self, f: &mut dyn FnMut(usize, &[u8])) -> Result<()> {
        let Some((addr, len, registered)) = self.pull else {
            return Ok(());
        };
        let (hdr, _) = self.slot_at(self.rx_slots, self.rx_i, 0);
        match hdr
            .kind
            .compare_exchange(REMOTE, PULLING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(PULLING) => {}
            Err(COPYING | DATA) => return self.copied_into_slot(len, f),
            Err(_) => {
                // Taken back: the sender's call failed, and its abort (which says why, naming
                // the rank really at fault) follows within microseconds; report that.
                let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while std::time::Instant::now() < end {
                    self.check_alive(true);
                    if let Some(e) = self.dead_end("a message was being read") {
                        return Err(e);
                    }
                    std::thread::yield_now();
                }
                let e = Error::peer_lost(
                    self.peer,
                    format!(
                        "rank {} took back a message before this rank read it (its call failed; \
                         see its error)",
                        self.peer
                    ),
                );
                return Err(self.fail(e));
            }
        }
        match self.reader {
            Writer::Same => {
                // SAFETY: a thread peer's buffer in this process, which it keeps valid and
                // unwritten until we release the message (the Region's contract on its side),
                // and which it cannot take back while we are PULLING.
                f(0, unsafe {
                    std::slice::from_raw_parts(addr as usize as *const u8, len)
                });
            }
            Writer::Process(pid) => {
                // A registered buffer: straight out of our mapping of it, in pieces (each is
                // reduced while in cache).
                if let Some(r) = registered {
                    if let Some(m) = self.maps.get(self.pidfd.as_ref(), pid, r, len) {
                        let mut off = 0;
                        while off < len {
                            let n = (len - off).min(self.piece_bytes);
                            f(off, &m[off..off + n]);
                            off += n;
                        }
                        return Ok(());
                    }
                }
                if self.piece.len() < self.piece_bytes {
                    self.piece = vec![0; self.piece_bytes];
                }
                let mut off = 0;
                while off < len {
                    let n = (len - off).min(self.piece_bytes);
                    // SAFETY: piece has room for n bytes and is ours alone; the remote range is
                    // checked by the kernel against the peer's mappings.
                    let r = unsafe {
                        sys::read_process(pid, addr + off as u64, self.piece.as_mut_ptr(), n)
                    };
                    if !r.as_ref().is_ok_and(|&got| got == n) {
                        let e = if self.check_alive(true) || self.gone {
                            self.lost("died while this rank read a message from its memory")
                        } else {
                            Error::peer_lost(
                                self.peer,
                                format!(
                                    "could not read a {len}-byte message from rank {}'s memory \
                                     (pid {pid}): {}",
                                    self.peer,
                                    r.map_or_else(|e| e.to_string(), |n| format!("{n} bytes read"))
                                ),
                            )
                        };
                        return Err(self.fail(e));
                    }
                    f(off, &self.piece[..n]);
                    off += n;
                }
            }
            Writer::Off => {
                return Err(Error::internal(
                    "a message to pull on a link that does not pull",
                ));
            }
        }
        Ok(())
    }

    fn release_recv(&mut self) {
        let k = self.consumed;
        let (hdr, _) = self.slot_at(self.rx_slots, self.rx_i, 0);
        if hdr.seq.load(Ordering::Relaxed) != k + 1 {
            return;
        }
        // SAFETY: rx_posts is the table of the ring we receive on.
        unsafe { self.posted.consumed(self.rx_posts, k) };
        self.pull = None;
        self.consumed = k + 1;
        self.rx_i = self.next_slot(self.rx_i);
        self.tail(self.rx_tail)
            .store(self.consumed, Ordering::Release);
        fence(Ordering::SeqCst);
        self.peer_bell.ring_if_waiting();
    }

    fn released(&self) -> u64 {
        self.consumed
    }

    fn post_recv(&mut self, index: u64, dst: RegionMut<'_>) {
        let (dst, len) = (dst.as_mut_ptr(), dst.len());
        // Small messages always travel through the slot: do not even look at it (its header
        // line is the one the sender is about to write).
        if len < place::PLACE_MIN {
            return;
        }
        // Not for a message that has already arrived in its slot.
        if index >= self.consumed && index < self.consumed + self.nslots {
            let (hdr, _) = self.slot(self.rx_slots, index, 0);
            if hdr.seq.load(Ordering::Relaxed) == index + 1 {
                return;
            }
        }
        // SAFETY: rx_posts is the table of the ring we receive on; dst stays valid until the
        // message is released or cancel_recvs (the RegionMut's contract).
        unsafe {
            self.posted
                .post(self.rx_posts, self.consumed, index, dst, len)
        };
    }

    fn cancel_recvs(&mut self) {
        self.revoke_pulls();
        let sock = self.sock.as_ref();
        // The clock is read only if a sender holds a claim on a posted buffer (rare).
        let mut give_up = None;
        let alive = || {
            let now = std::time::Instant::now();
            let end = *give_up.get_or_insert(now + std::time::Duration::from_secs(5));
            sock.is_none_or(|s| !sys::peer_closed(s.as_fd())) && now < end
        };
        // SAFETY: rx_posts is the table of the ring we receive on.
        let clean = unsafe { self.posted.cancel(self.rx_posts, alive) };
        if !clean && self.failed.is_none() {
            self.failed = Some(Error::internal(format!(
                "shared-memory link to rank {} abandoned with a receive in flight",
                self.peer
            )));
        }
    }

    fn wait_interest(&self, out: &mut Vec<libc::pollfd>) {
        if self.gone {
            return;
        }
        let fds = self.sock.as_ref().map(|s| s.as_raw_fd());
        for fd in fds
            .into_iter()
            .chain(self.pidfd.as_ref().map(|p| p.as_raw_fd()))
        {
            out.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
    }

    fn before_wait(&mut self) -> bool {
        // News only once: a peer that closed after its last message must not keep a rank that
        // still waits on others from sleeping.
        let closed = !self.state_seen && self.peer_state().is_some();
        self.state_seen |= closed;
        self.check_alive(true) || closed
    }

    fn doorbell(&self) -> Option<&Arc<dyn super::wait::Bell>> {
        Some(&self.bell)
    }

    fn send_abort(&mut self, err: &Error) {
        if !self.abort_sent {
            self.abort_sent = true;
            let a = self.seg.abort(self.side);
            let mut buf = [0u8; ABORT_MAX];
            let n = super::wire::encode_abort(err, &mut buf);
            let body = &buf[..n];
            // SAFETY: body.len() <= ABORT_MAX; only this side writes its abort area, and the
            // peer reads it only after the release store of `state` below.
            unsafe {
                std::ptr::copy_nonoverlapping(body.as_ptr(), a.body.get().cast::<u8>(), body.len());
            }
            a.len.store(body.len() as u32, Ordering::Relaxed);
            a.state.store(ABORTED, Ordering::Release);
            fence(Ordering::SeqCst);
            self.peer_bell.ring();
        }
        if self.failed.is_none() {
            self.failed = Some(err.clone());
        }
    }

    fn transport(&self) -> &'static str {
        "shm"
    }
}

impl Drop for ShmLink {
    fn drop(&mut self) {
        if !self.abort_sent {
            self.seg
                .abort(self.side)
                .state
                .store(CLOSED, Ordering::Release);
            fence(Ordering::SeqCst);
            self.peer_bell.ring();
        }
    }
}

#[cfg(test)]
mod tests;
