//! Registered memory: buffers oxccl allocates in sealed memory files (memfd), so that a peer
//! process on the same host can map them and read a message straight out of them: one pass
//! over memory between processes, as between threads (NCCL's `ncclMemAlloc`).
//!
//! A buffer made by [`SharedMem::new`] is one memory file: a 4 KiB header page (magic, owner
//! pid, a process-unique id) followed by the caller's bytes. While it lives, its range sits in
//! this process's registry. A send of at least `place::PLACE_MIN` bytes whose data
//! lies inside a registered buffer is left there for the receiver (as a pull, see
//! [`super::ShmLink`]): the slot carries the address, the offset in the file, the id and the
//! descriptor number. The receiver duplicates that descriptor out of the sender with
//! pidfd_getfd(2), maps the file read-only once (`PeerMaps`, a few per link), checks the
//! header names the sender and the id, and reduces or copies straight from the mapping. When
//! anything of that fails it reads with process_vm_readv instead, as an unregistered pull.
//!
//! The file's size is sealed, so a mapping can never fault on a truncation; a buffer freed
//! while a peer still has it mapped stays allocated until the peer unmaps it (its id is never
//! reused, so the peer never reads a new buffer through an old mapping).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::sys::shm as sys;

/// Bytes before the caller's data: the header page.
const HDR: usize = 4096;
/// First word of a registered file.
const MAGIC: u64 = u64::from_le_bytes(*b"OXCCLREG");
/// Mappings of peer buffers a link keeps (least recently used goes first).
const MAPS_PER_LINK: usize = 16;

/// The header page's first bytes.
#[repr(C)]
struct SegHdr {
    magic: u64,
    pid: u32,
    id: u32,
}

/// One registered buffer of this process.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The caller's first byte.
    base: usize,
    /// The caller's length.
    len: usize,
    id: u32,
    fd: RawFd,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
/// How many buffers are registered: a send looks in the registry (a lock) only when some are.
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static NEXT_ID: AtomicU32 = AtomicU32::new(1);
/// Peer buffers mapped by this process so far (tests check the path was taken).
static MAPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many peer buffers this process has mapped so far (each link maps a buffer once).
pub fn peer_buffers_mapped() -> u64 {
    MAPPED.load(Ordering::Relaxed)
}

/// Memory that peers on this host can read directly: what [`SharedMem::new`] allocates.
/// Dereferences to its bytes; page aligned, so any element type fits.
#[derive(Debug)]
pub struct SharedMem {
    map: sys::Mapping,
    _fd: OwnedFd,
    len: usize,
}

impl SharedMem {
    /// Allocates `len` zeroed bytes (at least 1) in a memory file of their own.
    pub fn new(len: usize) -> Result<SharedMem> {
        if len == 0 {
            return Err(Error::invalid_argument(
                "registered memory of 0 bytes: allocate at least one byte",
            ));
        }
        let total = len
            .checked_next_multiple_of(4096)
            .and_then(|l| l.checked_add(HDR))
            .ok_or_else(|| Error::invalid_argument(format!("registered memory of {len} bytes")))?;
        let what = || format!("allocate {len} bytes of registered memory (memfd)");
        let fd = sys::memfd_sealed("oxccl-reg", total).map_err(|e| Error::io(what(), e))?;
        let map = sys::Mapping::new(fd.as_raw_fd(), total).map_err(|e| Error::io(what(), e))?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            return Err(Error::internal("registered buffer ids ran out"));
        }
        // SAFETY: the mapping is at least HDR bytes, page aligned, and ours alone so far.
        unsafe {
            map.as_ptr().cast::<SegHdr>().write(SegHdr {
                magic: MAGIC,
                pid: std::process::id(),
                id,
            })
        };
        let base = map.as_ptr() as usize + HDR;
        REGISTRY
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Entry {
                base,
                len,
                id,
                fd: fd.as_raw_fd(),
            });
        LIVE.fetch_add(1, Ordering::Release);
        Ok(SharedMem { map, _fd: fd, len })
    }

    /// The caller's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: HDR + len bytes of the mapping, which lives as long as self; shared access
        // is what &self gives.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(HDR), self.len) }
    }

    /// The caller's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusive through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(HDR), self.len) }
    }

    /// The first byte (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.as_slice().as_ptr().cast_mut()
    }
}

impl std::ops::Deref for SharedMem {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for SharedMem {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        let base = self.map.as_ptr() as usize + HDR;
        REGISTRY
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|e| e.base != base);
        LIVE.fetch_sub(1, Ordering::Release);
        // The mapping and the descriptor go with the fields.
    }
}

/// Where a registered message lies: what a slot carries for the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Remote {
    /// Offset of the message's first byte in the memory file.
    pub offset: u64,
    pub id: u32,
    /// The descriptor number in the sender.
    pub fd: u32,
}

/// The registered buffer holding all of `addr..addr + len`, if any.
pub(super) fn lookup(addr: usize, len: usize) -> Option<Remote> {
    if LIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let end = addr.checked_add(len)?;
    reg.iter()
        .find(|e| addr >= e.base && end <= e.base + e.len)
        .map(|e| Remote {
            offset: (addr - e.base + HDR) as u64,
            id: e.id,
            fd: e.fd as u32,
        })
}

/// A peer's registered buffers, mapped here: read-only for pulling, read-write for placing
/// messages in its posted buffers. `OXCCL_SHM_MAP=0` turns mapping off (the kernel copies
/// instead).
#[derive(Debug)]
pub(super) struct PeerMaps {
    /// (id, mapping), most recently used last.
    maps: Vec<(u32, sys::Mapping)>,
    /// Mapped read-write.
    writable: bool,
    /// Set once mapping failed (no pidfd_getfd, not permitted): the caller goes through the
    /// kernel (process_vm_readv/writev) instead.
    off: bool,
}

impl Default for PeerMaps {
    fn default() -> PeerMaps {
        PeerMaps {
            maps: Vec::new(),
            writable: false,
            off: std::env::var("OXCCL_SHM_MAP").is_ok_and(|v| v.trim() == "0"),
        }
    }
}

impl PeerMaps {
    /// Maps for writing into the peer's buffers.
    pub(super) fn writable() -> PeerMaps {
        PeerMaps {
            writable: true,
            ..PeerMaps::default()
        }
    }

    /// The `len` bytes at `r` in the buffer of the process behind `pidfd` (pid `pid`), mapped
    /// here; `None` when they cannot be (the caller reads them another way).
    pub(super) fn get(
        &mut self,
        pidfd: Option<&OwnedFd>,
        pid: i32,
        r: Remote,
        len: usize,
    ) -> Option<&[u8]> {
        let p = self.get_ptr(pidfd, pid, r, len)?;
        // SAFETY: get_ptr checked p..p + len lies inside a mapping, which lives as long as the
        // returned borrow of self. The sender does not write it until this side releases the
        // message (the Region's contract on its side); the file's size is sealed, so no
        // truncation can make the read fault.
        Some(unsafe { std::slice::from_raw_parts(p.cast_const(), len) })
    }

    /// As [`PeerMaps::get`], as a pointer (writable when made by [`PeerMaps::writable`]).
    pub(super) fn get_ptr(
        &mut self,
        pidfd: Option<&OwnedFd>,
        pid: i32,
        r: Remote,
        len: usize,
    ) -> Option<*mut u8> {
        if self.off {
            return None;
        }
        let i = match self.maps.iter().position(|(id, _)| *id == r.id) {
            Some(i) => i,
            None => match Self::map(pidfd?, pid, r, self.writable) {
                Ok(m) => {
                    if self.maps.len() >= MAPS_PER_LINK {
                        self.maps.remove(0);
                    }
                    self.maps.push((r.id, m));
                    self.maps.len() - 1
                }
                Err(e) => {
                    crate::trace!(
                        None,
                        "cannot map a peer's registered buffer (pid {pid}): {e}; reading it with process_vm_readv"
                    );
                    self.off = true;
                    return None;
                }
            },
        };
        let last = self.maps.len() - 1;
        self.maps.swap(i, last);
        let m = &self.maps[last].1;
        let start = usize::try_from(r.offset).ok()?;
        if start < HDR || start.checked_add(len)? > m.len() {
            return None;
        }
        // SAFETY: start + len <= the mapping's length (checked just above).
        Some(unsafe { m.as_ptr().add(start) })
    }

    fn map(pidfd: &OwnedFd, pid: i32, r: Remote, writable: bool) -> io::Result<sys::Mapping> {
        let fd = sys::pidfd_getfd(pidfd.as_fd(), r.fd as RawFd)?;
        // Only a sealed memory file: anything else (a descriptor number reused for another
        // file) is refused before it is mapped.
        let size = sys::sealed_size(fd.as_fd())?;
        if size < HDR {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too small"));
        }
        let m = if writable {
            sys::Mapping::new(fd.as_raw_fd(), size)?
        } else {
            sys::Mapping::new_read_only(fd.as_raw_fd(), size)?
        };
        // SAFETY: the mapping holds at least HDR bytes; the header was written before the
        // buffer was registered and is never written again.
        let h = unsafe { m.as_ptr().cast::<SegHdr>().read() };
        if h.magic != MAGIC || h.pid != pid as u32 || h.id != r.id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "descriptor names another buffer",
            ));
        }
        MAPPED.fetch_add(1, Ordering::Relaxed);
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_finds_whole_ranges_only() {
        let mut a = SharedMem::new(10_000).unwrap();
        a.as_mut_slice()[9_999] = 7;
        assert_eq!(a.len(), 10_000);
        assert_eq!(a.as_ptr() as usize % 4096, 0);
        let base = a.as_ptr() as usize;
        let r = lookup(base + 100, 500).unwrap();
        assert_eq!(r.offset, (HDR + 100) as u64);
        assert!(lookup(base + 9_000, 1_001).is_none(), "past the end");
        assert!(lookup(base - 1, 10).is_none(), "before the start");
        let id = r.id;
        drop(a);
        assert!(lookup(base + 100, 500).is_none_or(|r| r.id != id));
        assert!(SharedMem::new(0).is_err());
    }

    #[test]
    fn a_peer_maps_the_buffer_by_descriptor() {
        // This process plays the peer: pidfd of itself, the buffer's own descriptor.
        let mut a = SharedMem::new(1 << 20).unwrap();
        for (i, b) in a.as_mut_slice().iter_mut().enumerate() {
            *b = i as u8;
        }
        let pid = std::process::id() as i32;
        let Ok(pidfd) = sys::pidfd_open(pid) else {
            eprintln!("skipped: pidfd_open is not available here");
            return;
        };
        let r = lookup(a.as_ptr() as usize + 4096, 8192).unwrap();
        let mut maps = PeerMaps::default();
        let Some(got) = maps.get(Some(&pidfd), pid, r, 8192) else {
            eprintln!("skipped: pidfd_getfd is not available or not permitted here");
            return;
        };
        assert_eq!(got, &a.as_slice()[4096..4096 + 8192]);
        // A wrong id is refused (and turns mapping off for the link).
        let bad = Remote {
            id: r.id + 1000,
            ..r
        };
        assert!(maps.get(Some(&pidfd), pid, bad, 16).is_none());
    }
}
