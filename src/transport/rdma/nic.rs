//! The narrow interface between the RDMA protocol ([`super::link`]) and a NIC: register memory,
//! post RDMA writes (with or without an immediate), post receives that absorb immediates, poll
//! the completion queue, and a descriptor to sleep on. Two implementations: the verbs backend
//! ([`super::verbs`], libibverbs loaded at run time) and the in-process emulated NIC
//! ([`super::emu`]) that the tests drive.
//!
//! The rules every implementation obeys (those of an InfiniBand reliable connection):
//! - writes posted on one queue pair land in the target's registered memory in post order;
//! - a write with an immediate consumes one posted receive at the target and produces a
//!   completion there carrying the immediate, after all of the write's data is visible;
//! - a signalled write completes locally after the target acknowledged it, in post order;
//! - a write that cannot be delivered (the peer's queue pair is gone) is retried a bounded number
//!   of times and then completes with an error, after which every later request on that queue
//!   pair completes as flushed; a write that finds no posted receive is retried (RNR);
//! - a completion-channel descriptor becomes readable after [`Nic::arm`] once a completion
//!   arrives.

use std::os::fd::RawFd;

use crate::error::Result;

/// A memory registration: the range it covers and its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mr {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: usize,
    /// Key for local scatter/gather entries.
    pub lkey: u32,
    /// Key a peer names in its writes (valid only if registered for remote writes).
    pub rkey: u32,
    /// The implementation's handle (the `ibv_mr*`, or the emulated key).
    pub handle: u64,
}

impl Mr {
    /// Whether `addr..addr + len` lies inside this registration.
    pub fn covers(&self, addr: u64, len: usize) -> bool {
        addr >= self.addr
            && (addr - self.addr)
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.len as u64)
    }
}

/// One local scatter/gather entry of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sge {
    /// Address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Local key of the registration covering it.
    pub lkey: u32,
}

/// Where a write lands at the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// Address in the peer's registered memory.
    pub addr: u64,
    /// The peer's remote key for it.
    pub rkey: u32,
}

/// What a completion reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompletionKind {
    /// A write this side posted finished (or failed).
    #[default]
    Send,
    /// A peer's write with an immediate consumed one of our posted receives.
    RecvImm,
}

/// `ibv_wc_status` values the protocol distinguishes (the rest are reported by number).
pub(crate) mod status {
    /// Success.
    pub(crate) const SUCCESS: u32 = 0;
    /// Local protection error (an lkey does not cover the data).
    pub(crate) const LOC_PROT_ERR: u32 = 4;
    /// Flushed: the queue pair was already in the error state.
    pub(crate) const WR_FLUSH_ERR: u32 = 5;
    /// Remote access error (rkey or range refused by the peer).
    pub(crate) const REM_ACCESS_ERR: u32 = 10;
    /// Transport retries exhausted: no acknowledgement from the peer.
    pub(crate) const RETRY_EXC_ERR: u32 = 12;
}

/// The name `ibv_wc_status_str` gives a status, with what it usually means here.
pub(crate) fn status_str(s: u32) -> &'static str {
    match s {
        0 => "success",
        1 => "local length error",
        2 => "local QP operation error",
        4 => "local protection error",
        5 => "work request flushed (the queue pair had already failed)",
        7 => "bad response",
        8 => "local access error",
        9 => "remote invalid request",
        10 => "remote access error (the peer's registration is gone or refused the write)",
        11 => "remote operation error",
        12 => "transport retry counter exceeded: no answer from the peer",
        13 => "RNR retry counter exceeded (the peer posted no receive)",
        16 => "remote aborted",
        19 => "fatal error",
        20 => "response timeout",
        _ => "general error",
    }
}

/// One completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completion {
    /// The work request's id (for receives: the id the receive was posted with).
    pub wr_id: u64,
    /// `ibv_wc_status` (0 = success; see [`status`]).
    pub status: u32,
    /// Send or receive side.
    pub kind: CompletionKind,
    /// The immediate (host order), for [`CompletionKind::RecvImm`].
    pub imm: u32,
    /// The vendor's error detail (verbs only).
    pub vendor_err: u32,
}

/// What the two ends of a connection exchange to connect their queue pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QpAddress {
    /// Local identifier (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// The GID at the chosen index (RoCE, or InfiniBand across subnets).
    pub gid: [u8; 16],
    /// Queue pair number (24 bits).
    pub qpn: u32,
    /// First packet sequence number (24 bits).
    pub psn: u32,
    /// Active MTU as `ibv_mtu` (1 = 256 B ... 5 = 4096 B).
    pub mtu: u8,
    /// Link layer: 1 InfiniBand, 2 Ethernet (RoCE).
    pub link_layer: u8,
}

/// Queue depths a link asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Outstanding signalled writes.
    pub send_depth: u32,
    /// Posted receives.
    pub recv_depth: u32,
}

/// An opened device (one port): the factory of queue pairs. Shared by a communicator's links.
pub trait NicDevice: Send + Sync {
    /// `mlx5_0:1`, `emu:3`: for logs and cards.
    fn name(&self) -> String;

    /// The name with the port's particulars (link layer, GID index, MTU), for logs.
    fn describe(&self) -> String {
        self.name()
    }

    /// A new reliable-connection queue pair with its own completion queue and channel.
    fn open(&self, caps: QpCaps) -> Result<Box<dyn Nic>>;
}

/// One reliable-connection queue pair, its completion queue and completion channel.
pub trait Nic: Send {
    /// Registers `addr..addr + len` for local access and, with `remote_write`, for the peer's
    /// writes.
    ///
    /// # Safety
    /// The memory must stay allocated until [`Nic::deregister`] (or the Nic's drop), and while
    /// registered for remote writes nothing may rely on its contents except as the protocol
    /// allows (the peer may write it at any time).
    unsafe fn register(&mut self, addr: *mut u8, len: usize, remote_write: bool) -> Result<Mr>;

    /// Ends a registration. After it returns, neither this NIC nor the peer touches the memory.
    fn deregister(&mut self, mr: &Mr);

    /// This queue pair's address, to send to the peer.
    fn address(&self) -> QpAddress;

    /// Connects to the peer's queue pair (INIT -> RTR -> RTS). Receives should be posted first.
    fn connect(&mut self, remote: &QpAddress) -> Result<()>;

    /// Posts a signalled RDMA write of the `local` entries (at most 2; none for a zero-length
    /// write) to `remote`, with an immediate when `imm` is given.
    ///
    /// # Safety
    /// Every entry's memory must stay valid and unmodified until this request's completion has
    /// been polled (or the Nic is dropped); small writes may be copied at once (inline) but need
    /// not be.
    unsafe fn post_write(
        &mut self,
        wr_id: u64,
        local: &[Sge],
        remote: Remote,
        imm: Option<u32>,
    ) -> Result<()>;

    /// Posts one zero-length receive, consumed by one incoming write with an immediate.
    fn post_recv(&mut self, wr_id: u64) -> Result<()>;

    /// Moves up to `out.len()` completions into `out`; returns how many.
    fn poll(&mut self, out: &mut [Completion]) -> Result<usize>;

    /// Asks for the completion descriptor to become readable at the next completion. Poll once
    /// more after arming before sleeping on it.
    fn arm(&mut self) -> Result<()>;

    /// Consumes the events the descriptor reported (so it is not readable until re-armed).
    fn drain_events(&mut self);

    /// The completion channel's descriptor, if there is one.
    fn completion_fd(&self) -> Option<RawFd>;

    /// Bytes a write may carry inline (copied at post time).
    fn max_inline(&self) -> usize {
        0
    }
}
