//! Direct placement: single-copy receives over shared memory.
//!
//! When the executor knows where a message will end up ([`Link::post_recv`]), the receiver
//! publishes that destination in a small table in the ring it receives on. A sender that finds
//! its next message's destination there claims the entry, copies the message straight into
//! the receiver's buffer — with `process_vm_writev` (cross-memory attach) between processes, a
//! plain copy between threads of one process — and publishes the slot as "placed", without
//! data. The receiver then hands out its own buffer: one copy instead of two.
//!
//! An entry's state word is `(index + 1) << 2 | st`, st = POSTED, CLAIMED (the sender is
//! writing), DONE. The receiver withdraws an unused entry with a CAS from POSTED, so a sender
//! can never write into a buffer once its receive was cancelled; a cancel that finds CLAIMED
//! waits for DONE and then fails the link (a message landed in a buffer being given back).
//! Addresses read from the table are only ever used as remote addresses, which the kernel
//! checks against the receiver's mappings; the receiver trusts only its own record of what it
//! posted.
//!
//! [`Link::post_recv`]: crate::transport::Link::post_recv

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use super::reg;
use crate::sys::shm as sys;

/// Entries in a ring's table (the executor posts at most 16 receives ahead).
pub(super) const POSTS: usize = 16;
/// Messages smaller than this go through a slot: a second copy of a small message is cheaper
/// than the system call and the posting.
pub(super) const PLACE_MIN: usize = 32 << 10;

const POSTED: u64 = 1;
const CLAIMED: u64 = 2;
const DONE: u64 = 3;

/// One posted destination, in shared memory.
#[repr(C, align(64))]
pub(super) struct Post {
    state: AtomicU64,
    addr: AtomicU64,
    len: AtomicU64,
    /// Where the destination lies when it is registered memory ([`reg`]): the offset in its
    /// file, and `id << 32 | fd`; 0 when it is not.
    reg_off: AtomicU64,
    reg_id_fd: AtomicU64,
}

fn word(index: u64, st: u64) -> u64 {
    ((index + 1) << 2) | st
}

/// How this side can write into the peer's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Writer {
    /// The peer is a thread of this process: a plain copy.
    Same,
    /// The peer is process `pid` (in our pid namespace): process_vm_writev.
    Process(i32),
    /// Not possible (or switched off after a failure, or by OXCCL_SHM_PLACE=0).
    Off,
}

impl Writer {
    /// Finds out who is at the other end of the link's socket.
    pub(super) fn for_socket(sock: Option<&UnixStream>) -> Writer {
        let off = std::env::var("OXCCL_SHM_PLACE").is_ok_and(|v| v.trim() == "0");
        match sock.and_then(|s| sys::peer_pid(s.as_fd())) {
            _ if off => Writer::Off,
            Some(pid) if pid as u32 == std::process::id() => Writer::Same,
            Some(pid) => Writer::Process(pid),
            None => Writer::Off,
        }
    }

    /// Copies `len` bytes from `src` to the peer's address `dst`; false if it could not.
    ///
    /// # Safety
    /// `src..src + len` must be readable. For `Same`, `dst..dst + len` must be memory of this
    /// process that nothing else accesses during the call (the claimed posting guarantees it).
    unsafe fn write(&self, src: *const u8, dst: u64, len: usize) -> bool {
        match *self {
            Writer::Same => {
                // SAFETY: per this function's contract.
                unsafe { std::ptr::copy_nonoverlapping(src, dst as usize as *mut u8, len) };
                true
            }
            Writer::Process(pid) => {
                // SAFETY: src is readable per the contract; the kernel checks dst in the target.
                unsafe { sys::write_process(pid, src, dst, len) }.is_ok_and(|n| n == len)
            }
            Writer::Off => false,
        }
    }
}

/// Sender side: places message `index` straight into the receiver's posted buffer if it posted
/// one of exactly `len` bytes: a copy into our mapping of it when it is registered memory
/// (`maps`, see [`reg`]), else through `writer`. Returns whether it did; on a failed copy
/// `writer` is switched off (and the entry given back, so the message goes through a slot as
/// usual).
///
/// # Safety
/// `table` must point at the ring's POSTS entries; `src..src + len` must be readable.
pub(super) unsafe fn try_place(
    table: *const Post,
    writer: &mut Writer,
    maps: &mut reg::PeerMaps,
    pidfd: Option<&std::os::fd::OwnedFd>,
    index: u64,
    src: *const u8,
    len: usize,
) -> bool {
    if *writer == Writer::Off || len < PLACE_MIN {
        return false;
    }
    // SAFETY: index % POSTS < POSTS entries, inside the mapping (the caller's contract).
    let p = unsafe { &*table.add((index % POSTS as u64) as usize) };
    let posted = word(index, POSTED);
    if p.state.load(Ordering::Acquire) != posted || p.len.load(Ordering::Relaxed) != len as u64 {
        return false;
    }
    let dst = p.addr.load(Ordering::Relaxed);
    if p.state
        .compare_exchange(
            posted,
            word(index, CLAIMED),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return false;
    }
    let registered = match (*writer, p.reg_id_fd.load(Ordering::Relaxed)) {
        (Writer::Process(pid), idfd) if idfd != 0 => maps
            .get_ptr(
                pidfd,
                pid,
                reg::Remote {
                    offset: p.reg_off.load(Ordering::Relaxed),
                    id: (idfd >> 32) as u32,
                    fd: idfd as u32,
                },
                len,
            )
            .map(|d| (pid, d)),
        _ => None,
    };
    if let Some((_, d)) = registered {
        // SAFETY: src is readable (contract); d..d + len lies in our writable mapping of the
        // receiver's registered buffer (bounds checked by get_ptr), which it posted for this
        // message and cannot withdraw while we hold the claim; nothing in this process
        // aliases that mapping.
        unsafe { std::ptr::copy_nonoverlapping(src, d, len) };
        p.state.store(word(index, DONE), Ordering::Release);
        return true;
    }
    // SAFETY: src is readable (contract); the receiver posted dst..dst+len for this message and
    // cannot withdraw it while we hold the claim; for a thread peer that is its live buffer.
    if unsafe { writer.write(src, dst, len) } {
        p.state.store(word(index, DONE), Ordering::Release);
        true
    } else {
        *writer = Writer::Off;
        p.state.store(posted, Ordering::Release);
        false
    }
}

/// Receiver side: the destinations this side posted, by table entry.
pub(super) struct Posted {
    local: [Option<(u64, *mut u8, usize)>; POSTS],
    /// How many entries of `local` are set (so a call that posted nothing cancels nothing).
    live: usize,
}

impl Default for Posted {
    fn default() -> Posted {
        Posted {
            local: [None; POSTS],
            live: 0,
        }
    }
}

impl Posted {
    /// Offers `dst..dst + len` for message `index`, given that `consumed` messages were consumed.
    ///
    /// # Safety
    /// `table` must point at the ring's POSTS entries.
    pub(super) unsafe fn post(
        &mut self,
        table: *const Post,
        consumed: u64,
        index: u64,
        dst: *mut u8,
        len: usize,
    ) {
        if len < PLACE_MIN || index < consumed || index >= consumed + POSTS as u64 {
            return;
        }
        let e = (index % POSTS as u64) as usize;
        if self.local[e].is_some() {
            return;
        }
        // SAFETY: e < POSTS, inside the table (the caller's contract).
        let p = unsafe { &*table.add(e) };
        if p.state.load(Ordering::Relaxed) != 0 {
            return;
        }
        p.addr.store(dst as u64, Ordering::Relaxed);
        p.len.store(len as u64, Ordering::Relaxed);
        let r = reg::lookup(dst as usize, len);
        p.reg_off
            .store(r.map_or(0, |r| r.offset), Ordering::Relaxed);
        p.reg_id_fd.store(
            r.map_or(0, |r| u64::from(r.id) << 32 | u64::from(r.fd)),
            Ordering::Relaxed,
        );
        p.state.store(word(index, POSTED), Ordering::Release);
        self.local[e] = Some((index, dst, len));
        self.live += 1;
    }

    /// Where message `index` was placed: the destination posted for it, if it was `len` bytes.
    pub(super) fn placed(&self, index: u64, len: usize) -> Option<*mut u8> {
        match self.local[(index % POSTS as u64) as usize] {
            Some((i, dst, l)) if i == index && l == len => Some(dst),
            _ => None,
        }
    }

    /// Message `index` was consumed: forget its posting, if any.
    ///
    /// # Safety
    /// As for [`Posted::post`].
    pub(super) unsafe fn consumed(&mut self, table: *const Post, index: u64) {
        let e = (index % POSTS as u64) as usize;
        if matches!(self.local[e], Some((i, ..)) if i == index) {
            self.local[e] = None;
            self.live -= 1;
            // SAFETY: e < POSTS (the caller's contract). The sender is done with this message.
            unsafe { &*table.add(e) }.state.store(0, Ordering::Release);
        }
    }

    /// Withdraws every posting. Returns false if a sender had already claimed one (the link is
    /// then unusable: a message went to a buffer that is being given back), after waiting for
    /// such a copy to finish while `alive()` says the sender may still be copying.
    ///
    /// # Safety
    /// As for [`Posted::post`].
    pub(super) unsafe fn cancel(
        &mut self,
        table: *const Post,
        mut alive: impl FnMut() -> bool,
    ) -> bool {
        let mut clean = true;
        if self.live == 0 {
            return clean;
        }
        self.live = 0;
        for e in 0..POSTS {
            let Some((index, ..)) = self.local[e].take() else {
                continue;
            };
            // SAFETY: e < POSTS (the caller's contract).
            let p = unsafe { &*table.add(e) };
            let posted = word(index, POSTED);
            if p.state
                .compare_exchange(posted, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                continue;
            }
            clean = false;
            // The sender holds a claim: its copy into our buffer must end before we return.
            while p.state.load(Ordering::Acquire) == word(index, CLAIMED) && alive() {
                std::thread::yield_now();
            }
            p.state.store(0, Ordering::Release);
        }
        clean
    }
}
