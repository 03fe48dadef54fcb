//! How the executor sleeps once spinning and yielding have found nothing to do.
//!
//! When every link it waits on is a shm link (they all share this rank's doorbell, a [`Bell`]), it
//! announces itself on the doorbell, looks at its links once more, and only then sleeps on the
//! futex, until a peer rings it or a short while passes (to notice a peer that died: shm has no
//! descriptor that would tell). Otherwise it sleeps in poll(2) on the links' descriptors; when
//! some of those links are shm links, whose news poll cannot see, for at most a millisecond.
//!
//! Spinning pays when the peer is running on another CPU and about to answer; when this host
//! runs more ranks than it has CPUs the peer is often not running at all, so the executor spins
//! only a few rounds before it yields. (Learning the spin from slow yields was tried and
//! measured worse: under load from other programs the peer usually still runs on the other
//! CPU, and yielding early only loses our own CPU for a time slice.)
//!
//! ```text
//! executor idle:  spin ─► yield ─► wait():  all shm?  ── announce, return (caller looks again)
//!                                                      └─ announced: futex sleep, retract
//!                                          otherwise  ── poll(fds, 1 ms if any shm else ≤100 ms)
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::Link;
use crate::error::Error;
use crate::error::Result;

/// Longest futex sleep: how late a dead shm peer may be noticed.
const SHM_SLEEP: Duration = Duration::from_millis(10);
/// Longest poll when some links are shm links (their news does not wake poll).
const MIXED_POLL: Duration = Duration::from_millis(1);
/// Longest poll when every link has descriptors.
const POLL_MAX: Duration = Duration::from_millis(100);

/// Whether `OXCCL_NOPOLL` asks the executor never to sleep (only spin and yield).
pub(crate) fn never_sleep() -> bool {
    static NOPOLL: OnceLock<bool> = OnceLock::new();
    *NOPOLL.get_or_init(|| std::env::var_os("OXCCL_NOPOLL").is_some())
}

/// Idle rounds to spin before yielding when this host has more busy ranks than CPUs: a peer
/// that is not running cannot answer, so spinning only delays the yield that lets it run.
const SPIN_OVERSUBSCRIBED: u32 = 4;

fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The spin forced by `OXCCL_SPIN_ROUNDS` (for tuning), if any.
fn forced_spin() -> Option<u32> {
    static FORCED: OnceLock<Option<u32>> = OnceLock::new();
    *FORCED.get_or_init(|| {
        std::env::var("OXCCL_SPIN_ROUNDS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The most idle rounds the executor spins before it starts yielding: `normal`, or a few when
/// the host is oversubscribed. `OXCCL_SPIN_ROUNDS` overrides both (for tuning).
pub(crate) fn spin_rounds(normal: u32) -> u32 {
    match forced_spin() {
        Some(n) => n,
        None if crate::sys::ranks_on_host() > cpus() => normal.min(SPIN_OVERSUBSCRIBED),
        None => normal,
    }
}

/// A word that a link's peer rings when it publishes a message or returns a credit, for links
/// without descriptors to poll (shm's doorbell): the waiter announces itself, looks at its
/// links once more, then sleeps on it. All links of one rank that share a bell share one object.
pub trait Bell: Send + Sync {
    /// Announces that the owner is about to sleep; returns the value to sleep on.
    fn announce(&self) -> u32;
    /// Withdraws an announcement.
    fn retract(&self);
    /// Sleeps until a peer rings (the bell moves on from `seen`) or `timeout` passes.
    fn sleep(&self, seen: u32, timeout: Duration);
}

/// Whether two bells are the same object (their data, whatever the vtables).
fn same_bell(a: &Arc<dyn Bell>, b: &Arc<dyn Bell>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// The executor's sleeping state across idle rounds (made only once spinning and yielding
/// found nothing). Dropping it withdraws any announcement.
#[derive(Default)]
pub(crate) struct Waiter {
    /// The doorbell we announced ourselves on, and the value to sleep on.
    armed: Option<(Arc<dyn Bell>, u32)>,
    /// This round's links: their common doorbell, if they all have the same one.
    bell: Option<Arc<dyn Bell>>,
    mixed: bool,
    any_shm: bool,
    news: bool,
    pollfds: Vec<libc::pollfd>,
}

impl Waiter {
    /// Withdraws an announcement (the executor is busy again). Cheap when there is none.
    pub(crate) fn disarm(&mut self) {
        if let Some((b, _)) = self.armed.take() {
            b.retract();
        }
    }

    /// Starts a round: the links to wait on follow with [`Waiter::add`].
    pub(crate) fn begin(&mut self) {
        self.pollfds.clear();
        self.bell = None;
        self.mixed = false;
        self.any_shm = false;
        self.news = false;
    }

    /// Adds a link the executor is waiting on.
    pub(crate) fn add(&mut self, link: &mut dyn Link) {
        self.news |= link.before_wait();
        match link.doorbell() {
            Some(d) => {
                self.any_shm = true;
                match &self.bell {
                    None if !self.mixed => self.bell = Some(d.clone()),
                    Some(b) if same_bell(b, d) => {}
                    _ => self.mixed = true,
                }
            }
            None => self.mixed = true,
        }
        link.wait_interest(&mut self.pollfds);
    }

    /// Sleeps for at most `budget`, or returns at once: when a link had news, and the first
    /// time it could sleep on a doorbell (it then announces itself, and the caller must look at
    /// every link once more before calling again).
    pub(crate) fn wait(&mut self, budget: Duration) -> Result<()> {
        if self.news {
            self.disarm();
            return Ok(());
        }
        if !self.mixed {
            if let Some(bell) = self.bell.take() {
                match &self.armed {
                    Some((b, seen)) if same_bell(b, &bell) => {
                        b.sleep(*seen, budget.min(SHM_SLEEP));
                        self.disarm();
                    }
                    _ => {
                        self.disarm();
                        let seen = bell.announce();
                        self.armed = Some((bell, seen));
                    }
                }
                return Ok(());
            }
        }
        self.disarm();
        let cap = if self.any_shm { MIXED_POLL } else { POLL_MAX };
        let ms = budget.min(cap).as_millis().max(1) as i32;
        crate::sys::poll(&mut self.pollfds, ms).map_err(|e| Error::io("poll on links", e))?;
        Ok(())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.disarm();
    }
}
