//! The registration cache: large sends go straight from the caller's buffer, which the NIC can
//! only read through a memory registration, and registering costs far more than a lookup.
//!
//! A miss registers the page-aligned window of `WINDOW` bytes around the message (so the other
//! chunks of the same buffer hit), or just the message's pages when the window is not all mapped.
//! Entries in use by an unfinished send are pinned; the least recently used unpinned entry is
//! evicted when the cache is full; a full cache of pinned entries makes the caller copy instead.
//!
//! Lifetime: a registration pins the pages that were mapped when it was made. If the caller
//! frees a buffer and a new one is mapped at the same address, a stale entry would send the old
//! pages. So by default the cache is flushed at the end of every collective call (during a call
//! the buffers are borrowed, hence mapped, for its whole length); `OXCCL_IB_REG_PERSIST=1` keeps
//! entries across calls for programs whose buffers stay allocated (gradient buckets), as NCCL's
//! user-buffer registration does.

use super::nic::{Mr, Nic};

/// Bytes registered around a message on a miss.
pub(crate) const WINDOW: usize = 8 << 20;
const PAGE: u64 = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    mr: Mr,
    last_use: u64,
    pins: u32,
}

/// A cache of local-read registrations of caller memory, owned by one link.
#[derive(Debug)]
pub(crate) struct RegCache {
    entries: Vec<Entry>,
    max: usize,
    persist: bool,
    clock: u64,
    /// Registrations made (misses), for tests and logs.
    pub misses: u64,
}

impl RegCache {
    /// A cache of at most `max` registrations; `persist` keeps them across calls.
    pub(crate) fn new(max: usize, persist: bool) -> RegCache {
        RegCache {
            entries: Vec::with_capacity(max),
            max: max.max(1),
            persist,
            clock: 0,
            misses: 0,
        }
    }

    /// The registration covering `addr..addr + len`, pinned until [`RegCache::unpin`] with its
    /// lkey; registers it on a miss. `None` when it cannot (the caller copies instead).
    ///
    /// # Safety
    /// The memory must stay mapped until the cache is flushed (the end of the current call, or
    /// for persistent caches as long as the caller keeps its promise).
    pub(crate) unsafe fn get(&mut self, nic: &mut dyn Nic, addr: u64, len: usize) -> Option<Mr> {
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.mr.covers(addr, len)) {
            e.last_use = self.clock;
            e.pins += 1;
            return Some(e.mr);
        }
        if self.entries.len() >= self.max {
            let victim = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(i, _)| i)?;
            let e = self.entries.swap_remove(victim);
            nic.deregister(&e.mr);
        }
        let end = addr.checked_add(len as u64)?;
        let w = WINDOW as u64;
        let page_lo = addr / PAGE * PAGE;
        let page_hi = end.div_ceil(PAGE) * PAGE;
        let wide = (addr / w * w, end.div_ceil(w) * w);
        let mut mr = None;
        for (lo, hi) in [wide, (page_lo, page_hi)] {
            if hi <= lo {
                continue;
            }
            // SAFETY: forwarded from this function's contract for the message's own pages; the
            // wider window is only read by the NIC when a later message lies inside it, and is
            // registered only if the kernel finds it all mapped.
            let r = unsafe { nic.register(lo as usize as *mut u8, (hi - lo) as usize, false) };
            if let Ok(m) = r {
                mr = Some(m);
                break;
            }
        }
        let mr = mr?;
        self.misses += 1;
        self.entries.push(Entry {
            mr,
            last_use: self.clock,
            pins: 1,
        });
        Some(mr)
    }

    /// Releases one pin taken by [`RegCache::get`] (its send finished).
    pub(crate) fn unpin(&mut self, lkey: u32) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.mr.lkey == lkey) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// The end of a collective call: forget everything unless persistent.
    pub(crate) fn end_of_call(&mut self, nic: &mut dyn Nic) {
        if !self.persist {
            self.flush(nic);
        }
    }

    /// Deregisters every entry.
    pub(crate) fn flush(&mut self, nic: &mut dyn Nic) {
        for e in self.entries.drain(..) {
            nic.deregister(&e.mr);
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::emu::Fabric;
    use super::super::nic::QpCaps;
    use super::*;

    #[test]
    fn hits_pins_evicts_and_flushes() {
        let f = Fabric::new();
        let mut nic = f
            .device(0)
            .open(QpCaps {
                send_depth: 4,
                recv_depth: 4,
            })
            .unwrap();
        let mut c = RegCache::new(2, false);
        // The emulated NIC only checks addresses when it moves bytes, and nothing moves here.
        let base = 0x7000_0000_0000u64;
        // SAFETY: the emulated NIC never touches these (fake) addresses: nothing is posted.
        unsafe {
            let m0 = c.get(nic.as_mut(), base, 1 << 20).unwrap();
            let m1 = c.get(nic.as_mut(), base + (1 << 20), 1 << 20).unwrap();
            assert_eq!(m0, m1, "the window covers the next chunk");
            assert_eq!(c.misses, 1);
            let b = c.get(nic.as_mut(), base + (64 << 20), 4096).unwrap();
            assert_ne!(b, m0);
            assert!(
                c.get(nic.as_mut(), base + (128 << 20), 4096).is_none(),
                "all pinned"
            );
            c.unpin(m0.lkey);
            c.unpin(m0.lkey);
            let x = c.get(nic.as_mut(), base + (128 << 20), 4096).unwrap();
            assert!(x.covers(base + (128 << 20), 4096));
            assert_eq!((c.len(), c.misses), (2, 3));
            assert!(
                c.get(nic.as_mut(), base, 1).is_none(),
                "m0 was evicted; the rest are pinned"
            );
        }
        c.end_of_call(nic.as_mut());
        assert!(c.is_empty());
        assert_eq!(f.registrations(), 0);
    }
}
