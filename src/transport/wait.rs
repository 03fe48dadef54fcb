//! How the executor sleeps once spinning and yielding have found nothing to do.
//!
//! When every link it waits on is a shm link (they all share this rank's [`Doorbell`]), it
//! announces itself on the doorbell, looks at its links once more, and only then sleeps on the
//! futex, until a peer rings it or a short while passes (to notice a peer that died: shm has no
//! descriptor that would tell). Otherwise it sleeps in poll(2) on the links' descriptors; when
//! some of those links are shm links, whose news poll cannot see, for at most a millisecond.
//!
//! How long to spin is learnt: a wait that outlasts the spin halves it (the peer was not about
//! to answer, so the CPU was better given away at once: on a busy or oversubscribed host that is
//! most waits), a wait that ends within it grows it back by a quarter, up to 64 rounds, or 4
//! when this host runs more ranks than it has CPUs.
//!
//! ```text
//! executor idle:  spin ─► yield ─► wait():  all shm?  ── announce, return (caller looks again)
//!                                                      └─ announced: futex sleep, retract
//!                                          otherwise  ── poll(fds, 1 ms if any shm else ≤100 ms)
//! ```

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::Link;
use super::shm::Doorbell;
use crate::Error;
use crate::error::Result;

/// Longest futex sleep: how late a dead shm peer may be noticed.
const SHM_SLEEP: Duration = Duration::from_millis(10);
/// Longest poll when some links are shm links (their news does not wake poll).
const MIXED_POLL: Duration = Duration::from_millis(1);
/// Longest poll when every link has descriptors.
const POLL_MAX: Duration = Duration::from_millis(100);

/// Whether `OXCCL_NOPOLL` asks the executor never to sleep (only spin and yield).
pub fn never_sleep() -> bool {
    static NOPOLL: OnceLock<bool> = OnceLock::new();
    *NOPOLL.get_or_init(|| std::env::var_os("OXCCL_NOPOLL").is_some())
}

/// Idle rounds to spin before yielding when this host has more busy ranks than CPUs: a peer
/// that is not running cannot answer, so spinning only delays the yield that lets it run.
const SPIN_OVERSUBSCRIBED: u32 = 4;

static RANKS_HERE: AtomicUsize = AtomicUsize::new(0);

/// Records that `n` ranks (of some communicator) run on this host; with more of them than CPUs
/// an idle executor yields almost at once instead of spinning.
pub fn note_ranks_on_host(n: usize) {
    RANKS_HERE.fetch_max(n, Ordering::Relaxed);
}

fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Fewest idle rounds to spin, however often spinning failed.
const SPIN_MIN: u32 = 2;

/// Spin rounds learnt from this process's recent waits (0: nothing learnt yet).
static LEARNT: AtomicU32 = AtomicU32::new(0);

/// The spin after a wait that ended within `cur` rounds (or outlasted them), at most `cap`.
fn next_spin(cur: u32, cap: u32, ended_within: bool) -> u32 {
    if ended_within {
        (cur + cur / 4 + 1).min(cap)
    } else {
        (cur / 2).max(SPIN_MIN)
    }
}

fn learn(cap: u32, ended_within: bool) {
    let cur = match LEARNT.load(Ordering::Relaxed) {
        0 => cap,
        n => n.min(cap),
    };
    // Racing updates from other ranks' threads only lose a step of learning.
    LEARNT.store(next_spin(cur, cap, ended_within), Ordering::Relaxed);
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
/// the host is oversubscribed. `OXCCL_SPIN_ROUNDS` overrides both (and turns learning off).
pub fn spin_rounds(normal: u32) -> u32 {
    match forced_spin() {
        Some(n) => n,
        None if RANKS_HERE.load(Ordering::Relaxed) > cpus() => normal.min(SPIN_OVERSUBSCRIBED),
        None => normal,
    }
}

/// The executor's sleeping state across idle rounds. Dropping it withdraws any announcement.
#[derive(Default)]
pub struct Waiter {
    /// Idle rounds to spin before yielding now, and the most it may learn (see [`spin_rounds`]).
    spin: u32,
    cap: u32,
    learning: bool,
    /// An idle streak is under way, and whether it already outlasted the spin.
    streak: bool,
    outlasted: bool,
    /// The doorbell we announced ourselves on, and the value to sleep on.
    armed: Option<(Arc<Doorbell>, u32)>,
    /// This round's links: their common doorbell, if they all have the same one.
    bell: Option<Arc<Doorbell>>,
    mixed: bool,
    any_shm: bool,
    news: bool,
    pollfds: Vec<libc::pollfd>,
}

impl Waiter {
    /// A waiter that has announced nothing; it spins `normal_spin` idle rounds before yielding
    /// (fewer on an oversubscribed host, see [`spin_rounds`]).
    pub fn new(normal_spin: u32) -> Waiter {
        let mut w = Waiter::default();
        w.cap = spin_rounds(normal_spin);
        w.learning = forced_spin().is_none();
        w.spin = match LEARNT.load(Ordering::Relaxed) {
            n if n > 0 && w.learning => n.min(w.cap),
            _ => w.cap,
        };
        w
    }

    /// Idle rounds to spin before yielding, as learnt so far.
    pub fn spin_rounds(&self) -> u32 {
        self.spin
    }

    /// Called in every idle round, `idle` counting from 1 since the last progress: whether to
    /// spin (rather than yield or sleep) in this one. Learns from how each idle streak ends.
    pub fn spin(&mut self, idle: u32) -> bool {
        if idle == 1 {
            self.end_streak();
            self.streak = true;
        }
        if idle <= self.spin {
            self.disarm();
            return true;
        }
        if !self.outlasted {
            self.outlasted = true;
            if self.learning {
                learn(self.cap, false);
            }
        }
        false
    }

    fn end_streak(&mut self) {
        if self.streak && !self.outlasted && self.learning {
            learn(self.cap, true);
        }
        self.streak = false;
        self.outlasted = false;
    }

    /// Withdraws an announcement (the executor is busy again). Cheap when there is none.
    pub fn disarm(&mut self) {
        if let Some((b, _)) = self.armed.take() {
            b.retract();
        }
    }

    /// Starts a round: the links to wait on follow with [`Waiter::add`].
    pub fn begin(&mut self) {
        self.pollfds.clear();
        self.bell = None;
        self.mixed = false;
        self.any_shm = false;
        self.news = false;
    }

    /// Adds a link the executor is waiting on.
    pub fn add(&mut self, link: &mut dyn Link) {
        self.news |= link.before_wait();
        match link.doorbell() {
            Some(d) => {
                self.any_shm = true;
                match &self.bell {
                    None if !self.mixed => self.bell = Some(d.clone()),
                    Some(b) if Arc::ptr_eq(b, d) => {}
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
    pub fn wait(&mut self, budget: Duration) -> Result<()> {
        if self.news {
            self.disarm();
            return Ok(());
        }
        if !self.mixed {
            if let Some(bell) = self.bell.take() {
                match &self.armed {
                    Some((b, seen)) if Arc::ptr_eq(b, &bell) => {
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
        self.end_streak();
        self.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinning_is_learnt_down_and_back_up() {
        let mut n = 64;
        for _ in 0..10 {
            n = next_spin(n, 64, false);
        }
        assert_eq!(n, SPIN_MIN);
        for _ in 0..30 {
            n = next_spin(n, 64, true);
        }
        assert_eq!(n, 64);
        assert_eq!(next_spin(64, 4, true), 4, "never above the cap");
    }

    #[test]
    fn a_waiter_spins_its_rounds_then_stops() {
        let mut w = Waiter::default();
        (w.spin, w.cap) = (3, 3);
        assert!((1..=3).all(|i| w.spin(i)));
        assert!(!w.spin(4) && !w.spin(5));
        assert!(w.outlasted);
        // A new streak starts over.
        assert!(w.spin(1));
        assert!(!w.outlasted);
    }
}
