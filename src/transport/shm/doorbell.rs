//! A rank's doorbell: a process-shared futex word in a page of its own memfd, which every shm
//! peer maps. The owner announces itself before it sleeps; a peer that has just published
//! something (a message, a credit) bumps the word and wakes it only when it has announced itself,
//! so the common, busy case costs the peer one load after a fence and no system call.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::error::Error;
use crate::error::Result;
use crate::sys::shm::{self as sys, Mapping};

/// Memory of a doorbell: the futex word peers bump, and the word that says someone sleeps on it.
#[repr(C)]
struct BellMem {
    waiting: CachePadded<AtomicU32>,
    bell: CachePadded<AtomicU32>,
}

const BELL_BYTES: usize = 4096;
const _: () = assert!(size_of::<BellMem>() <= BELL_BYTES);

/// A process-shared futex that one rank sleeps on and all of its shm peers ring.
pub struct Doorbell {
    map: Mapping,
    /// Kept by the owner, to hand to new peers; `None` for a peer's doorbell.
    fd: Option<OwnedFd>,
}

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell")
            .field("at", &self.map.as_ptr())
            .finish()
    }
}

impl Doorbell {
    /// Creates this rank's doorbell.
    pub fn create() -> Result<Doorbell> {
        let fd = sys::memfd_sealed("oxccl-bell", BELL_BYTES)
            .map_err(|e| Error::io("memfd_create for the shm doorbell", e))?;
        let map = Mapping::new(fd.as_raw_fd(), BELL_BYTES)
            .map_err(|e| Error::io("mmap of the shm doorbell", e))?;
        Ok(Doorbell { map, fd: Some(fd) })
    }

    /// Maps a peer's doorbell from its descriptor.
    pub fn open(fd: OwnedFd) -> Result<Doorbell> {
        let size =
            sys::sealed_size(fd.as_fd()).map_err(|e| Error::io("the peer's shm doorbell", e))?;
        if size != BELL_BYTES {
            return Err(Error::system(format!(
                "the peer's shm doorbell has {size} bytes, not {BELL_BYTES}"
            )));
        }
        let map = Mapping::new(fd.as_raw_fd(), BELL_BYTES)
            .map_err(|e| Error::io("mmap of the peer's shm doorbell", e))?;
        Ok(Doorbell { map, fd: None })
    }

    /// The descriptor to pass to peers (only for this rank's own doorbell).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// A new descriptor for this rank's own doorbell (`None` for a peer's).
    pub fn clone_fd(&self) -> Option<OwnedFd> {
        self.fd.as_ref().and_then(|f| f.try_clone().ok())
    }

    fn mem(&self) -> &BellMem {
        // SAFETY: the mapping is page aligned, BELL_BYTES long and lives as long as `self`;
        // BellMem holds only atomics, which may be shared with other processes.
        unsafe { &*self.map.as_ptr().cast::<BellMem>() }
    }

    /// Announces that the owner is about to sleep and returns the value to sleep on. The owner
    /// must look at its links once more after this, and only then [`Doorbell::sleep`].
    pub fn announce(&self) -> u32 {
        let m = self.mem();
        let seen = m.bell.load(Ordering::Acquire);
        m.waiting.store(1, Ordering::Relaxed);
        // Pairs with the fence in `ring_if_waiting`: either the peer sees `waiting`, or our
        // re-check sees what the peer published.
        fence(Ordering::SeqCst);
        seen
    }

    /// Withdraws an announcement.
    pub fn retract(&self) {
        let m = self.mem();
        if m.waiting.load(Ordering::Relaxed) != 0 {
            m.waiting.store(0, Ordering::Relaxed);
        }
    }

    /// Sleeps until a peer rings (the bell differs from `seen`) or `timeout` passes.
    pub fn sleep(&self, seen: u32, timeout: Duration) {
        sys::futex_wait(&self.mem().bell, seen, timeout);
    }

    /// Wakes the owner if it announced itself. The caller has just published something with a
    /// release store and must have issued a SeqCst fence after it. Of several peers ringing at
    /// once only the one that takes the announcement back pays for the system call.
    pub(super) fn ring_if_waiting(&self) {
        let m = self.mem();
        if m.waiting.load(Ordering::Relaxed) != 0 && m.waiting.swap(0, Ordering::AcqRel) != 0 {
            m.bell.fetch_add(1, Ordering::Release);
            sys::futex_wake(&m.bell);
        }
    }

    /// Wakes the owner whether or not it announced itself (aborts, closes).
    pub(super) fn ring(&self) {
        let m = self.mem();
        m.bell.fetch_add(1, Ordering::Release);
        sys::futex_wake(&m.bell);
    }
}

/// The executor's waiter sleeps on a doorbell through this, knowing no shm.
impl crate::transport::wait::Bell for Doorbell {
    fn announce(&self) -> u32 {
        Doorbell::announce(self)
    }

    fn retract(&self) {
        Doorbell::retract(self)
    }

    fn sleep(&self, seen: u32, timeout: Duration) {
        Doorbell::sleep(self, seen, timeout)
    }
}
