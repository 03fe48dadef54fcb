//! Heartbeats on the bootstrap plane, and revoke.
//!
//! Links see a dead peer by EOF, a reset or (shm) its pid exiting, but only while a call waits
//! on that peer. A rank that hangs with its sockets open (stopped, swapping, its host cut off
//! without a reset), or dies while the others are between calls or talking to other ranks, is
//! seen by nobody until someone's call times out. So every rank of a communicator runs a small
//! thread that, once a period, over its rendezvous-store connection:
//!
//! 1. beats: adds 1 to its counter `live/hb/<rank>`;
//! 2. watches the next rank's counter (rank r watches r + 1 mod n: one read per rank per
//!    period, whatever n), and when it has not moved for the threshold and that rank did not
//!    leave cleanly (`live/bye/<rank>`, written by a communicator being destroyed), declares it
//!    lost by setting `live/revoke`;
//! 3. reads `live/revoke`. Once set, by itself or by any other rank, the communicator is
//!    revoked: the failure (PeerLost naming the silent rank) is recorded, a call in flight is
//!    interrupted within a few milliseconds, and every later call fails with it at once.
//!
//! The threshold is the communicator's timeout (at least 2 s, so a rank descheduled on a busy
//! host is not declared dead): a silent rank is named everywhere within about timeout +
//! period, even on ranks with no link to it. A rank that is merely slow (computing, not
//! calling) keeps beating and is never declared lost; a call waiting for it fails with
//! Timeout as before. Rank 0 serves the store: if it goes away the beats stop quietly, and its
//! loss is seen on the links.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bootstrap::StoreClient;
use crate::error::Error;

/// Key under which the first rank to see a silent peer records it.
const REVOKE: &str = "live/revoke";

/// What a revoke changes in the communicator: the same flag `abort()` raises (the executor
/// watches it) and the recorded failure (which tells the executor and later calls why).
pub(super) struct Revoke {
    pub(super) flag: Arc<AtomicBool>,
    pub(super) failure: Arc<Mutex<Option<Error>>>,
}

impl Revoke {
    fn apply(&self, e: Error) {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        self.flag.store(true, Ordering::SeqCst);
    }
}

/// The heartbeat thread; dropping it writes this rank's goodbye and joins the thread.
pub(super) struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    /// Kept when no thread runs (one rank): the store connection lives as long as the
    /// communicator.
    _idle: Option<StoreClient>,
}

/// How often a rank beats for a communicator of `nranks` with this timeout: timeout / 8
/// between 50 ms and 1 s, slower beyond 1,024 ranks so that rank 0's store serves at most
/// about 3,000 heartbeat requests a second, but at least four beats per threshold.
pub(super) fn period(timeout: Duration, nranks: usize) -> Duration {
    let base = (timeout / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let scaled = base * (nranks.div_ceil(1024).max(1) as u32);
    scaled.min(threshold(timeout) / 4).max(base)
}

/// How long one store request of the heartbeat thread may take.
fn io_timeout(timeout: Duration) -> Duration {
    (timeout / 8)
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
        .max(Duration::from_millis(500))
}

/// How long a rank's counter may stand still before it is declared lost.
pub(super) fn threshold(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(2))
}

impl Heartbeat {
    pub(super) fn start(
        mut store: StoreClient,
        secret: [u8; 16],
        rank: usize,
        nranks: usize,
        timeout: Duration,
        revoke: Revoke,
    ) -> Heartbeat {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        if nranks < 2 {
            return Heartbeat {
                stop,
                thread: None,
                _idle: Some(store),
            };
        }
        // A request that takes longer than this is abandoned: the connection is made again
        // and the beat retried (the store's answer to a late request would be out of step).
        store.set_io_timeout(io_timeout(timeout));
        let s = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("oxccl-live-{rank}"))
            .spawn(move || beat(store, &secret, rank, nranks, timeout, revoke, &s));
        match spawned {
            Ok(t) => Heartbeat {
                stop,
                thread: Some(t),
                _idle: None,
            },
            Err(e) => {
                // Not fatal: links and timeouts still detect failures, only more slowly.
                crate::warn!(
                    Some(rank),
                    "cannot start the heartbeat thread ({e}); failures are detected by links and timeouts only"
                );
                Heartbeat {
                    stop,
                    thread: None,
                    _idle: None,
                }
            }
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let (m, cv) = &*self.stop;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The revoke record: "<lost rank> <detecting rank> <silent ms>".
fn encode(lost: usize, by: usize, silent: Duration) -> Vec<u8> {
    format!("{lost} {by} {}", silent.as_millis()).into_bytes()
}

fn decode(b: &[u8], me: usize) -> Error {
    let s = String::from_utf8_lossy(b);
    let mut it = s.split_whitespace().map(|w| w.parse::<u64>().ok());
    match (
        it.next().flatten(),
        it.next().flatten(),
        it.next().flatten(),
    ) {
        (Some(lost), Some(by), Some(ms)) => Error::PeerLost {
            peer: lost as usize,
            msg: format!(
                "rank {lost} stopped answering: no heartbeat from it for {ms} ms (noticed by rank \
                 {by}, seen by rank {me}); the communicator is revoked: destroy it or shrink it"
            ),
        },
        _ => Error::Internal(format!(
            "rank {me}: unreadable revoke record {s:?} in the store"
        )),
    }
}

fn beat(
    mut store: StoreClient,
    secret: &[u8; 16],
    rank: usize,
    nranks: usize,
    timeout: Duration,
    revoke: Revoke,
    stop: &(Mutex<bool>, Condvar),
) {
    let (p, limit) = (period(timeout, nranks), threshold(timeout));
    let mine = format!("live/hb/{rank}");
    let watched = (rank + 1) % nranks;
    let (theirs, their_bye) = (format!("live/hb/{watched}"), format!("live/bye/{watched}"));
    let mut watching = true;
    // The watched counter's last value and when we saw it change (or first looked).
    let mut seen: Option<(i64, Instant)> = None;
    loop {
        {
            let (m, cv) = stop;
            let g = m.lock().unwrap_or_else(|e| e.into_inner());
            let (g, _) = cv
                .wait_timeout_while(g, p, |stopped| !*stopped)
                .unwrap_or_else(|e| e.into_inner());
            if *g {
                drop(g);
                // A clean exit: our watcher must not take the silence that follows for a death.
                let _ = store.set(&format!("live/bye/{rank}"), b"1");
                return;
            }
        }
        let step = (|| -> crate::Result<bool> {
            store.add(&mine, 1)?;
            if store.check(&[REVOKE])? {
                let rec = store.get(REVOKE, Duration::ZERO)?;
                revoke.apply(decode(&rec, rank));
                return Ok(true);
            }
            if !watching {
                return Ok(false);
            }
            let v = store.add(&theirs, 0)?;
            let now = Instant::now();
            match seen {
                Some((last, since)) if last == v => {
                    let silent = now - since;
                    if silent >= limit {
                        if store.check(&[their_bye.as_str()])? {
                            watching = false;
                            return Ok(false);
                        }
                        crate::warn!(
                            Some(rank),
                            "rank {watched} has not beaten for {} ms (limit {} ms): revoking the communicator",
                            silent.as_millis(),
                            limit.as_millis()
                        );
                        store.set(REVOKE, &encode(watched, rank, silent))?;
                        let rec = store.get(REVOKE, Duration::ZERO)?;
                        revoke.apply(decode(&rec, rank));
                        return Ok(true);
                    }
                }
                _ => seen = Some((v, now)),
            }
            Ok(false)
        })();
        match step {
            Ok(true) => return,
            Ok(false) => {}
            // A slow store: connect again and retry next period. The watched rank's beats may
            // have been held up the same way, so its silence is measured afresh.
            Err(Error::Timeout { .. }) => {
                seen = None;
                if let Ok(mut s) = StoreClient::connect(store.addr(), secret, io_timeout(timeout)) {
                    s.set_io_timeout(io_timeout(timeout));
                    store = s;
                }
            }
            Err(e) => {
                // The store is gone: rank 0 left or died; its links report that.
                crate::info!(
                    Some(rank),
                    "heartbeats stopped: the rendezvous store is unreachable ({e})"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_records_round_trip_and_garbage_is_internal() {
        match decode(&encode(7, 6, Duration::from_millis(2500)), 3) {
            Error::PeerLost { peer: 7, msg } => {
                assert!(msg.contains("2500 ms") && msg.contains("rank 6"), "{msg}")
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(decode(b"x y", 0), Error::Internal(_)));
    }

    #[test]
    fn period_and_threshold_scale_with_the_timeout() {
        assert_eq!(period(Duration::from_secs(300), 8), Duration::from_secs(1));
        assert_eq!(
            period(Duration::from_millis(80), 8),
            Duration::from_millis(50)
        );
        // 16,384 ranks: 16 s between beats, within the 300 s threshold's quarter.
        assert_eq!(
            period(Duration::from_secs(300), 16384),
            Duration::from_secs(16)
        );
        assert_eq!(
            period(Duration::from_secs(8), 16384),
            Duration::from_secs(2)
        );
        assert_eq!(
            threshold(Duration::from_millis(100)),
            Duration::from_secs(2)
        );
        assert_eq!(threshold(Duration::from_secs(30)), Duration::from_secs(30));
    }
}
