//! The RDMA link protocol, over any [`Nic`]: the shm link's slot/credit protocol carried by RDMA
//! writes.
//!
//! ```text
//! region (one registration per link, page aligned, remote-writable):
//!   ctrl page:  credit_in (u64, the peer writes its consumed count here) | credit_out (u64,
//!               the source of our credit writes) | abort_out (1 KiB) | abort_in (1 KiB)
//!   tx staging: nslots x [ header 64 B | slot_size ]      (what we write from)
//!   rx slots:   nslots x [ header 64 B | slot_size ]      (what the peer writes into)
//! header:       seq u64 | len u32 | 0 u32 | Tag (24 B)
//! immediate:    kind (2 bits: data, credit, abort, close) | 30 bits: seq, count or length
//! ```
//!
//! Send `k` (when `k - credit < nslots`): small messages are copied behind a header into
//! staging slot `k % nslots` and complete at once; messages of at least `zcopy_min` bytes go
//! straight from the caller's buffer (registered through the [`RegCache`]) with the header as a
//! second scatter/gather entry, and complete when the NIC reports the write done. Either way
//! one RDMA WRITE_WITH_IMM puts header and data into the peer's rx slot `k % nslots`; the
//! immediate's completion tells the receiver that slot `k` is complete (RC writes land in
//! order, and the completion follows the data). The receiver consumes in place and returns the
//! credit with an 8-byte WRITE_WITH_IMM of its consumed count into our `credit_in` (the
//! immediate wakes a sender asleep on its completion channel).
//!
//! Every incoming immediate consumes a posted receive; at most `nslots` data and `nslots` credit
//! immediates can be unpolled at once, so `2 nslots + 4` receives, reposted as they are used,
//! never run out. Waiting: the executor spins on [`Link::progress`] / [`Link::peek_recv`]
//! (which poll the CQ), then calls [`Link::before_wait`] (arm the CQ, poll once more) and sleeps
//! in poll(2) on the completion channel's descriptor.
//!
//! Failure: an error completion fails the link with [`ErrorKind::PeerLost`](crate::error::ErrorKind::PeerLost) naming the peer (after
//! the NIC's own retries). An abort travels as a write-with-immediate of the error into the
//! peer's `abort_in` (after the messages posted before it, as RC orders them); a clean close as
//! an immediate of its own. A peer that waits on us and hears nothing probes us with a
//! zero-length write (the NIC's retries then tell a dead peer from a slow one), and the
//! bootstrap TCP connection stays open as a second liveness signal: EOF means the process died.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::nic::{Completion, CompletionKind, Mr, Nic, QpAddress, Remote, Sge, status};
use super::regcache::RegCache;

mod sock;
use crate::error::Error;
use crate::error::Result;
use crate::transport::wire;
use crate::transport::{self, Link, Tag};
pub(crate) use sock::Awaiting;
use sock::{SOCK_BUF, SetupState};

/// Default slots per direction.
pub(crate) const DEFAULT_SLOTS: usize = 4;
/// Most slots a link may have.
pub(crate) const MAX_SLOTS: usize = 64;
/// Largest slot.
pub(crate) const MAX_SLOT_BYTES: usize = 64 << 20;
const HDR: usize = 64;
const CTRL: usize = 4096;
const CREDIT_IN: usize = 0;
const CREDIT_OUT: usize = 64;
const ABORT_OUT: usize = 1024;
const ABORT_IN: usize = 2048;
/// Largest abort body.
pub(crate) const ABORT_MAX: usize = 1024;

const IMM_BITS: u32 = 30;
const IMM_MASK: u32 = (1 << IMM_BITS) - 1;
const K_DATA: u32 = 0;
const K_CREDIT: u32 = 1;
const K_ABORT: u32 = 2;
const K_CLOSE: u32 = 3;

/// Encodes an immediate: `kind` in the top 2 bits, the low 30 bits of `v` below.
pub(crate) fn imm(kind: u32, v: u64) -> u32 {
    (kind << IMM_BITS) | (v as u32 & IMM_MASK)
}

/// Splits an immediate into (kind, value).
pub(crate) fn imm_parts(imm: u32) -> (u32, u32) {
    (imm >> IMM_BITS, imm & IMM_MASK)
}

const WR_SHIFT: u32 = 56;
const WR_DATA: u64 = 1;
const WR_CREDIT: u64 = 2;
const WR_ABORT: u64 = 3;
const WR_CLOSE: u64 = 4;
const WR_PROBE: u64 = 5;
const WR_RECV: u64 = 6;
const WR_SEQ_MASK: u64 = (1 << WR_SHIFT) - 1;

/// How long dropping a link waits for its last writes to be acknowledged by a live peer.
const DRAIN_AT_DROP: Duration = Duration::from_secs(1);

/// Send-queue entries kept free for control writes (abort, close, probe).
const CTRL_RESERVE: usize = 3;

/// Slots per direction and bytes per slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Slots per direction.
    pub nslots: usize,
    /// Bytes per slot (the largest message).
    pub slot_size: usize,
}

impl Geometry {
    fn stride(&self) -> usize {
        HDR + self.slot_size.next_multiple_of(64)
    }

    fn tx_off(&self) -> usize {
        CTRL
    }

    fn rx_off(&self) -> usize {
        CTRL + self.nslots * self.stride()
    }

    /// Bytes of the registered region.
    pub(crate) fn total(&self) -> usize {
        (CTRL + 2 * self.nslots * self.stride()).next_multiple_of(4096)
    }

    /// Checks the bounds.
    pub(crate) fn check(&self) -> Result<()> {
        if !(2..=MAX_SLOTS).contains(&self.nslots)
            || !(1..=MAX_SLOT_BYTES).contains(&self.slot_size)
        {
            return Err(Error::invalid_argument(format!(
                "RDMA link geometry: {} slots of {} bytes is out of bounds (2..={MAX_SLOTS} slots of 1..={MAX_SLOT_BYTES} bytes)",
                self.nslots, self.slot_size
            )));
        }
        Ok(())
    }

    /// Send and receive queue depths this geometry needs.
    pub(crate) fn caps(&self) -> super::nic::QpCaps {
        super::nic::QpCaps {
            send_depth: (2 * self.nslots + 8) as u32,
            recv_depth: (2 * self.nslots + 4) as u32,
        }
    }
}

/// Tuning of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkParams {
    /// Messages of at least this many bytes are sent from the caller's buffer (registered);
    /// smaller ones are copied into a registered staging slot.
    pub zcopy_min: usize,
    /// Registrations kept per link.
    pub reg_max: usize,
    /// Keep registrations across calls (`OXCCL_IB_REG_PERSIST`).
    pub reg_persist: bool,
    /// How long a waiting receiver hears nothing before it probes the peer.
    pub probe_every: Duration,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            zcopy_min: 128 << 10,
            reg_max: 64,
            reg_persist: false,
            probe_every: Duration::from_secs(1),
        }
    }
}

/// Where the peer's memory is: what a link sends the other side at setup (with its
/// [`QpAddress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MemInfo {
    /// The first rx slot.
    pub rx_slots: u64,
    /// The abort area.
    pub abort_in: u64,
    /// The credit word.
    pub credit_in: u64,
    /// Remote key of the region.
    pub rkey: u32,
    /// Slots.
    pub nslots: u32,
    /// Bytes per slot.
    pub slot_size: u32,
}

/// Page-aligned memory the NIC reads and the peer writes: touched only through raw pointers.
struct Region {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the region is plain memory owned by one link; all access goes through the link (one
// thread at a time) or the NIC, as the protocol orders it.
unsafe impl Send for Region {}

impl Region {
    fn new(len: usize) -> Region {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Region { ptr, layout }
    }

    fn at(&self, off: usize) -> *mut u8 {
        debug_assert!(off < self.layout.size());
        // SAFETY: callers pass offsets inside the region (debug-checked).
        unsafe { self.ptr.as_ptr().add(off) }
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is one of the 8-byte aligned control words inside the region, which
        // lives as long as `self`; the NIC writes it with aligned 8-byte (atomic) writes.
        unsafe { &*self.at(off).cast::<AtomicU64>() }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// One end of an RDMA link. Field order matters: the NIC (queue pair, registrations) goes
/// before the memory it may touch.
pub(crate) struct RdmaLink {
    nic: Box<dyn Nic>,
    region: Region,
    mr: Mr,
    cache: RegCache,
    rank: usize,
    peer: usize,
    device: String,
    setup: SetupState,
    geo: Geometry,
    remote: MemInfo,
    params: LinkParams,
    sq_depth: usize,
    sq_used: usize,
    // Sending.
    sent: u64,
    credit: u64,
    /// Zero-copy sends not yet completed: (message, lkey of the registration it pins).
    zc_inflight: VecDeque<(u64, u32)>,
    reported: u64,
    // Receiving.
    arrived: u64,
    consumed: u64,
    credit_pending: bool,
    // Peer state and failure.
    peer_abort: Option<Error>,
    peer_closed: bool,
    qp_dead: bool,
    failed: Option<Error>,
    abort_sent: bool,
    connected: bool,
    sock: Option<TcpStream>,
    sock_buf: [u8; SOCK_BUF],
    sock_got: usize,
    gone: bool,
    ticks: u32,
    last_heard: Instant,
    probe_inflight: bool,
    wc: [Completion; 16],
}

impl RdmaLink {
    /// A link to `peer` over `nic`, not yet connected: allocates and registers its region and
    /// posts its receives. Exchange [`RdmaLink::address`] and [`RdmaLink::mem_info`] with the
    /// peer, then [`RdmaLink::connect`].
    pub(crate) fn new(
        rank: usize,
        peer: usize,
        mut nic: Box<dyn Nic>,
        device: String,
        geo: Geometry,
        params: LinkParams,
    ) -> Result<RdmaLink> {
        geo.check()?;
        let region = Region::new(geo.total());
        // SAFETY: the region lives in the link, whose NIC (dropped first) deregisters it; the
        // peer writes only rx slots, abort_in and credit_in, as the protocol orders.
        let mr = unsafe { nic.register(region.at(0), geo.total(), true)? };
        let caps = geo.caps();
        for _ in 0..caps.recv_depth {
            nic.post_recv(WR_RECV << WR_SHIFT)?;
        }
        Ok(RdmaLink {
            nic,
            region,
            mr,
            cache: RegCache::new(params.reg_max, params.reg_persist),
            rank,
            peer,
            device,
            setup: SetupState::Ready,
            geo,
            remote: MemInfo::default(),
            params,
            sq_depth: caps.send_depth as usize,
            sq_used: 0,
            sent: 0,
            credit: 0,
            zc_inflight: VecDeque::with_capacity(caps.send_depth as usize),
            reported: 0,
            arrived: 0,
            consumed: 0,
            credit_pending: false,
            peer_abort: None,
            peer_closed: false,
            qp_dead: false,
            failed: None,
            abort_sent: false,
            connected: false,
            sock: None,
            sock_buf: [0; SOCK_BUF],
            sock_got: 0,
            gone: false,
            ticks: 0,
            last_heard: Instant::now(),
            probe_inflight: false,
            wc: [Completion::default(); 16],
        })
    }

    /// The queue pair's address, for the peer.
    pub(crate) fn address(&self) -> QpAddress {
        self.nic.address()
    }

    /// Where the peer writes, for the peer.
    pub(crate) fn mem_info(&self) -> MemInfo {
        let base = self.mr.addr;
        MemInfo {
            rx_slots: base + self.geo.rx_off() as u64,
            abort_in: base + ABORT_IN as u64,
            credit_in: base + CREDIT_IN as u64,
            rkey: self.mr.rkey,
            nslots: self.geo.nslots as u32,
            slot_size: self.geo.slot_size as u32,
        }
    }

    /// Connects to the peer's queue pair and memory.
    pub(crate) fn connect(&mut self, qp: &QpAddress, mem: &MemInfo) -> Result<()> {
        if mem.nslots as usize != self.geo.nslots || mem.slot_size as usize != self.geo.slot_size {
            return Err(Error::invalid_usage(format!(
                "the RDMA link to rank {} cannot be set up: this rank uses {} slots of {} bytes, rank {} uses {} of {} \
                 (every rank must use the same OXCCL_CHUNK_BYTES and OXCCL_IB_SLOTS)",
                self.peer,
                self.geo.nslots,
                self.geo.slot_size,
                self.peer,
                mem.nslots,
                mem.slot_size
            )));
        }
        self.nic.connect(qp)?;
        self.remote = *mem;
        self.connected = true;
        self.last_heard = Instant::now();
        Ok(())
    }

    /// The device this link runs on.
    #[cfg(test)]
    pub(crate) fn device(&self) -> &str {
        &self.device
    }

    /// Registrations made for zero-copy sends (cache misses).
    #[cfg(test)]
    pub(crate) fn registrations_made(&self) -> u64 {
        self.cache.misses
    }

    /// The peer went away (EOF, close).
    fn lost(&self, what: &str) -> Error {
        Error::peer_lost(
            self.peer,
            format!(
                "RDMA link to rank {} (local device {}) {what} (the process exited or was killed, or destroyed its \
                 communicator; see its log)",
                self.peer, self.device
            ),
        )
    }

    /// The NIC reported a failure on the link.
    fn nic_failed(&self, what: &str) -> Error {
        Error::peer_lost(
            self.peer,
            format!(
                "RDMA link to rank {} (local device {}) {what} (rank {} or its NIC, port or queue pair is gone, or \
                 the fabric between us failed; see both ranks' logs)",
                self.peer, self.device, self.peer
            ),
        )
    }

    fn protocol(&self, what: String) -> Error {
        Error::peer_lost(
            self.peer,
            format!(
                "protocol error on the RDMA link from rank {} (device {}): {what}",
                self.peer, self.device
            ),
        )
    }

    fn fail(&mut self, e: Error) -> Error {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    fn sq_room(&self, reserve: usize) -> bool {
        self.sq_used + 1 + reserve <= self.sq_depth
    }

    fn remote_slot(&self, k: u64) -> u64 {
        self.remote.rx_slots + (k % self.geo.nslots as u64) * self.geo.stride() as u64
    }

    fn tx_slot(&self, k: u64) -> usize {
        self.geo.tx_off() + (k % self.geo.nslots as u64) as usize * self.geo.stride()
    }

    fn rx_slot(&self, k: u64) -> usize {
        self.geo.rx_off() + (k % self.geo.nslots as u64) as usize * self.geo.stride()
    }

    /// Posts a write and counts it against the send queue.
    ///
    /// # Safety
    /// As [`Nic::post_write`]: the entries stay valid until the completion is polled.
    unsafe fn post(
        &mut self,
        wr_id: u64,
        sges: &[Sge],
        remote: Remote,
        imm: Option<u32>,
    ) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        match unsafe { self.nic.post_write(wr_id, sges, remote, imm) } {
            Ok(()) => {
                self.sq_used += 1;
                Ok(())
            }
            Err(e) => {
                self.qp_dead = true;
                let e = self.nic_failed(&format!("could not post a write: {e}"));
                Err(self.fail(e))
            }
        }
    }

    /// Polls the completion queue dry. `Ok(true)` when anything the executor cares about
    /// happened (a message, a credit, a send completion, an abort or close).
    fn poll_cq(&mut self) -> Result<bool> {
        let mut any = false;
        loop {
            let mut wc = self.wc;
            let n = match self.nic.poll(&mut wc) {
                Ok(n) => n,
                Err(e) => {
                    self.qp_dead = true;
                    let e = self.nic_failed(&format!("could not poll its completion queue: {e}"));
                    return Err(self.fail(e));
                }
            };
            for c in &wc[..n] {
                self.handle(c)?;
                // Our own probes and credit writes completing is not progress for the executor
                // (a silent peer that answers probes must still time out).
                any |= !(c.kind == CompletionKind::Send
                    && c.status == status::SUCCESS
                    && matches!(c.wr_id >> WR_SHIFT, WR_PROBE | WR_CREDIT));
            }
            if n < wc.len() {
                break;
            }
        }
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        Ok(any)
    }

    fn handle(&mut self, c: &Completion) -> Result<()> {
        let kind = c.wr_id >> WR_SHIFT;
        if c.kind == CompletionKind::Send {
            self.sq_used = self.sq_used.saturating_sub(1);
        }
        if c.status != status::SUCCESS {
            self.qp_dead = true;
            if self.failed.is_some() {
                // Flushed after the link failed (that error was reported).
                return Ok(());
            }
            if c.status == status::WR_FLUSH_ERR {
                // Flushed with no error of its own first: our own queue pair went to the error
                // state, i.e. this rank's NIC or port failed. This rank is the one lost (so
                // that is what its abort tells the others).
                let e = self.peer_abort.clone().unwrap_or_else(|| Error::peer_lost(self.rank, format!(
                        "rank {}'s RDMA device {} failed: its queue pair to rank {} was flushed without an \
                         error of its own (the local NIC or port went down)",
                        self.rank, self.device, self.peer
                    )));
                return Err(self.fail(e));
            }
            if let Some(e) = self.peer_abort.clone() {
                return Err(self.fail(e));
            }
            if self.peer_closed {
                // The peer left cleanly: writes that were still on their way (a credit, a
                // probe) have nowhere to go, and nothing more is owed in either direction.
                return Ok(());
            }
            let what = match kind {
                WR_DATA => "a data write",
                WR_CREDIT => "a credit write",
                WR_PROBE => "a liveness probe",
                WR_ABORT => "an abort",
                WR_CLOSE => "a close notice",
                _ => "a request",
            };
            let vendor = if c.vendor_err != 0 {
                format!(", vendor error {:#x}", c.vendor_err)
            } else {
                String::new()
            };
            let e = self.nic_failed(&format!(
                "failed: {what} completed with status {} ({}{vendor})",
                c.status,
                super::nic::status_str(c.status),
            ));
            return Err(self.fail(e));
        }
        self.last_heard = Instant::now();
        match c.kind {
            CompletionKind::Send => match kind {
                WR_DATA => {
                    let k = c.wr_id & WR_SEQ_MASK;
                    if let Some(&(front, lkey)) = self.zc_inflight.front() {
                        if front == k {
                            self.zc_inflight.pop_front();
                            self.cache.unpin(lkey);
                        }
                    }
                }
                WR_PROBE => self.probe_inflight = false,
                _ => {}
            },
            CompletionKind::RecvImm => {
                if let Err(e) = self.nic.post_recv(WR_RECV << WR_SHIFT) {
                    let e = self.nic_failed(&format!("could not post a receive: {e}"));
                    return Err(self.fail(e));
                }
                let (k, v) = imm_parts(c.imm);
                match k {
                    K_DATA => {
                        if v != (self.arrived as u32 & IMM_MASK) {
                            let e = self.protocol(format!(
                                "message {} arrived where {} was expected",
                                v, self.arrived
                            ));
                            return Err(self.fail(e));
                        }
                        if self.arrived - self.consumed >= self.geo.nslots as u64 {
                            let e = self.protocol(format!(
                                "message {} arrived without a credit ({} slots, {} consumed)",
                                self.arrived, self.geo.nslots, self.consumed
                            ));
                            return Err(self.fail(e));
                        }
                        self.arrived += 1;
                    }
                    K_CREDIT => {
                        let w = self.region.word(CREDIT_IN).load(Ordering::Acquire);
                        if w < self.credit || w > self.sent {
                            let e = self.protocol(format!(
                                "credit {w} (had {}, sent {})",
                                self.credit, self.sent
                            ));
                            return Err(self.fail(e));
                        }
                        self.credit = w;
                    }
                    K_ABORT => {
                        let len = (v as usize).min(ABORT_MAX);
                        let mut body = [0u8; ABORT_MAX];
                        // SAFETY: abort_in is ABORT_MAX bytes inside the region; the peer
                        // wrote it before the completion we just polled and writes it once.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                self.region.at(ABORT_IN),
                                body.as_mut_ptr(),
                                len,
                            )
                        };
                        if self.peer_abort.is_none() {
                            self.peer_abort =
                                Some(crate::transport::tcp::decode_abort(&body[..len], self.peer));
                        }
                    }
                    _ => self.peer_closed = true,
                }
            }
        }
        Ok(())
    }

    /// Posts the pending credit write, if the send queue has room.
    fn flush_credit(&mut self) -> Result<()> {
        if !self.credit_pending
            || !self.connected
            || self.failed.is_some()
            || !self.sq_room(CTRL_RESERVE - 1)
        {
            return Ok(());
        }
        self.credit_pending = false;
        let sge = Sge {
            addr: self.mr.addr + CREDIT_OUT as u64,
            len: 8,
            lkey: self.mr.lkey,
        };
        let remote = Remote {
            addr: self.remote.credit_in,
            rkey: self.remote.rkey,
        };
        // SAFETY: credit_out lives in the region (freed after the NIC); the NIC may read a later
        // value than the one current now, which is as good (the count only grows).
        unsafe {
            self.post(
                WR_CREDIT << WR_SHIFT,
                &[sge],
                remote,
                Some(imm(K_CREDIT, self.consumed)),
            )
        }
    }

    /// The error for "nothing from the peer and nothing more can come", if that is the case.
    fn dead_end(&mut self, waiting_for: &str) -> Option<Error> {
        if let Some(e) = self.peer_abort.clone() {
            return Some(self.fail(e));
        }
        if self.peer_closed {
            let e = self.lost(&format!(
                "was closed by rank {} while {waiting_for}",
                self.peer
            ));
            return Some(self.fail(e));
        }
        if self.gone {
            let e = self.lost(&format!(
                "lost its bootstrap connection (EOF) while {waiting_for}"
            ));
            return Some(self.fail(e));
        }
        None
    }

    /// A zero-length write to the peer when we have heard nothing for a while: its completion
    /// (or the NIC's retry error) says whether the peer's queue pair is still there.
    fn maybe_probe(&mut self) {
        if self.probe_inflight
            || self.failed.is_some()
            || self.peer_closed
            || !self.is_ready()
            || self.last_heard.elapsed() < self.params.probe_every
            || !self.sq_room(CTRL_RESERVE - 1)
        {
            return;
        }
        let remote = Remote {
            addr: self.remote.credit_in,
            rkey: self.remote.rkey,
        };
        // SAFETY: a zero-length write names no local memory.
        if unsafe { self.post(WR_PROBE << WR_SHIFT, &[], remote, None) }.is_ok() {
            self.probe_inflight = true;
            self.last_heard = Instant::now();
        }
    }

    /// Posts a control write with an immediate from `len` bytes of the region at `off`
    /// (none when `len` is 0) into the peer's abort area; best effort.
    fn post_control(&mut self, wr: u64, kind: u32, off: usize, len: usize) -> bool {
        if self.qp_dead || !self.connected || self.sq_used >= self.sq_depth {
            return false;
        }
        let sge = Sge {
            addr: self.mr.addr + off as u64,
            len: len as u32,
            lkey: self.mr.lkey,
        };
        let sges: &[Sge] = if len == 0 {
            &[]
        } else {
            std::slice::from_ref(&sge)
        };
        let remote = Remote {
            addr: self.remote.abort_in,
            rkey: self.remote.rkey,
        };
        // SAFETY: the bytes are in the region (freed after the NIC) and written once.
        unsafe {
            self.nic
                .post_write(wr << WR_SHIFT, sges, remote, Some(imm(kind, len as u64)))
        }
        .map(|()| self.sq_used += 1)
        .is_ok()
    }
}

impl Link for RdmaLink {
    fn peer(&self) -> usize {
        self.peer
    }

    fn max_message(&self) -> usize {
        self.geo.slot_size
    }

    fn post_send(&mut self, tag: &Tag, data: transport::Region<'_>) -> Result<bool> {
        let (data, len) = (data.as_ptr(), data.len());
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if len > self.geo.slot_size {
            return Err(Error::internal(format!(
                "message of {len} bytes exceeds the RDMA link's {}-byte slots",
                self.geo.slot_size
            )));
        }
        if !self.is_ready() && !self.drive_setup()? {
            if let Some(e) = self.dead_end("a send waited for the link to be set up") {
                return Err(e);
            }
            return Ok(false);
        }
        let nslots = self.geo.nslots as u64;
        if self.sent - self.credit >= nslots || !self.sq_room(CTRL_RESERVE) {
            self.poll_cq()?;
            self.flush_credit()?;
            if self.sent - self.credit >= nslots {
                if let Some(e) = self.dead_end("a send waited for a free slot") {
                    return Err(e);
                }
                return Ok(false);
            }
            if !self.sq_room(CTRL_RESERVE) {
                return Ok(false);
            }
        }
        let k = self.sent;
        let off = self.tx_slot(k);
        let mut hdr = [0u8; HDR];
        hdr[0..8].copy_from_slice(&k.to_le_bytes());
        hdr[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        hdr[16..16 + Tag::LEN].copy_from_slice(&tag.encode());
        // SAFETY: staging slot k % nslots is free: message k - nslots used it, and its credit
        // (which we hold) says the peer consumed it, so the NIC has finished reading it.
        unsafe { std::ptr::copy_nonoverlapping(hdr.as_ptr(), self.region.at(off), HDR) };
        let remote = Remote {
            addr: self.remote_slot(k),
            rkey: self.remote.rkey,
        };
        let hdr_sge = Sge {
            addr: self.mr.addr + off as u64,
            len: HDR as u32,
            lkey: self.mr.lkey,
        };
        let zc = if len >= self.params.zcopy_min && len > 0 {
            // SAFETY: the Region's contract keeps the caller's bytes valid until this send is
            // reported complete; the cache is flushed at the end of the call (cancel_recvs) or
            // at drop, before the caller may free them.
            unsafe { self.cache.get(self.nic.as_mut(), data as u64, len) }
        } else {
            None
        };
        let wr = (WR_DATA << WR_SHIFT) | (k & WR_SEQ_MASK);
        let im = Some(imm(K_DATA, k));
        match zc {
            Some(m) => {
                let data_sge = Sge {
                    addr: data as u64,
                    len: len as u32,
                    lkey: m.lkey,
                };
                // SAFETY: the header is in the region; the data stays valid until this send is
                // reported complete, which happens only after its completion (zc_inflight).
                let r = unsafe { self.post(wr, &[hdr_sge, data_sge], remote, im) };
                if let Err(e) = r {
                    self.cache.unpin(m.lkey);
                    return Err(e);
                }
                self.zc_inflight.push_back((k, m.lkey));
            }
            None => {
                // SAFETY: the staging slot has room for slot_size bytes after its header and is
                // free (above); `data..data + len` is valid per this function's contract.
                unsafe {
                    if len > 0 {
                        std::ptr::copy_nonoverlapping(data, self.region.at(off + HDR), len);
                    }
                }
                let sge = Sge {
                    len: (HDR + len) as u32,
                    ..hdr_sge
                };
                // SAFETY: header and copy are in the region, untouched until the slot's credit.
                unsafe { self.post(wr, &[sge], remote, im)? };
            }
        }
        self.sent = k + 1;
        Ok(true)
    }

    fn progress(&mut self) -> Result<bool> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut moved = false;
        if !self.is_ready() {
            moved |= self.drive_setup()?;
        }
        moved |= self.poll_cq()?;
        self.flush_credit()?;
        self.check_sock(false);
        Ok(moved)
    }

    fn take_send_completions(&mut self) -> usize {
        let done = self.zc_inflight.front().map_or(self.sent, |&(k, _)| k);
        let n = done.saturating_sub(self.reported);
        self.reported = self.reported.max(done);
        n as usize
    }

    fn peek_recv(&mut self) -> Result<Option<(Tag, &[u8])>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.arrived == self.consumed {
            self.poll_cq()?;
        }
        if self.arrived == self.consumed {
            if let Some(e) = self.dead_end("a message was still expected") {
                return Err(e);
            }
            return Ok(None);
        }
        let k = self.consumed;
        let off = self.rx_slot(k);
        let mut hdr = [0u8; HDR];
        // SAFETY: the slot's write completed before we polled its immediate, and the peer does
        // not write the slot again until we return its credit (after release_recv).
        unsafe { std::ptr::copy_nonoverlapping(self.region.at(off), hdr.as_mut_ptr(), HDR) };
        let seq = wire::u64_at(&hdr, 0).unwrap_or(u64::MAX);
        let len = wire::u32_at(&hdr, 8).map_or(usize::MAX, |l| l as usize);
        if seq != k || len > self.geo.slot_size {
            let e = self.protocol(format!(
                "slot header says message {seq} of {len} bytes where message {k} (at most {} bytes) was due",
                self.geo.slot_size
            ));
            return Err(self.fail(e));
        }
        let tag = Tag::decode(hdr[16..16 + Tag::LEN].try_into().expect("tag bytes"));
        // SAFETY: as above; the slice borrows self, so release_recv (&mut self) ends it first.
        let data =
            unsafe { std::slice::from_raw_parts(self.region.at(off + HDR).cast_const(), len) };
        Ok(Some((tag, data)))
    }

    fn release_recv(&mut self) {
        if self.arrived == self.consumed {
            return;
        }
        self.consumed += 1;
        self.region
            .word(CREDIT_OUT)
            .store(self.consumed, Ordering::Release);
        self.credit_pending = true;
        // An error here surfaces at the next call.
        let _ = self.flush_credit();
    }

    fn cancel_recvs(&mut self) {
        // The end of a call. Zero-copy sends still in flight (only after a failure) must not
        // read the caller's memory once we return: deregistering stops the NIC.
        if !self.zc_inflight.is_empty() {
            let e = self.lost("was failed with zero-copy sends in flight");
            self.fail(e);
            self.cache.flush(self.nic.as_mut());
        } else {
            self.cache.end_of_call(self.nic.as_mut());
        }
    }

    fn wait_interest(&self, out: &mut Vec<libc::pollfd>) {
        if let Some(fd) = self.nic.completion_fd() {
            out.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let (Some(s), false) = (&self.sock, self.gone) {
            out.push(libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
    }

    fn before_wait(&mut self) -> bool {
        if self.failed.is_some() {
            return true;
        }
        self.nic.drain_events();
        if self.nic.arm().is_err() {
            return true;
        }
        let setup_news = !self.is_ready() && self.drive_setup().unwrap_or(true);
        let news = setup_news || self.poll_cq().unwrap_or(true);
        let _ = self.flush_credit();
        let alive_news = self.check_sock(true);
        self.maybe_probe();
        news || alive_news || self.peer_abort.is_some() || self.peer_closed
    }

    fn send_abort(&mut self, err: &Error) {
        if !self.abort_sent {
            self.abort_sent = true;
            let mut body = [0u8; ABORT_MAX];
            let n = crate::transport::wire::encode_abort(err, &mut body);
            // SAFETY: abort_out is ABORT_MAX bytes inside the region, written once, and read by
            // the NIC only after this post.
            unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), self.region.at(ABORT_OUT), n) };
            self.post_control(WR_ABORT, K_ABORT, ABORT_OUT, n);
            // Also on the bootstrap socket, for a peer whose RDMA path is not up (setup) or not
            // working (a dead NIC or port).
            self.abort_on_socket(err);
        }
        if self.failed.is_none() {
            self.failed = Some(err.clone());
        }
    }

    fn transport(&self) -> &'static str {
        "rdma"
    }
}

impl Drop for RdmaLink {
    fn drop(&mut self) {
        // A copied send counts as complete once posted, so writes may still be on their way:
        // let them (and a close notice after them, which RC orders last) finish before the
        // queue pair is destroyed, unless the peer is gone anyway.
        let peer_alive = !self.peer_closed && !self.gone && !self.qp_dead && self.is_ready();
        if peer_alive && !self.abort_sent {
            self.post_control(WR_CLOSE, K_CLOSE, 0, 0);
        }
        if peer_alive {
            let deadline = Instant::now() + DRAIN_AT_DROP;
            while self.sq_used > 0 && Instant::now() < deadline {
                let mut wc = self.wc;
                match self.nic.poll(&mut wc) {
                    Ok(n) => {
                        for c in &wc[..n] {
                            if c.kind == CompletionKind::Send {
                                self.sq_used = self.sq_used.saturating_sub(1);
                            }
                            if c.status != status::SUCCESS {
                                self.sq_used = 0;
                            }
                        }
                        if n == 0 {
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        self.cache.flush(self.nic.as_mut());
        let mr = self.mr;
        self.nic.deregister(&mr);
    }
}

#[cfg(test)]
mod tests;
