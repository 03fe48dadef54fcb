//! Communicator management: abort and split.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Communicator, Config};
use crate::bootstrap::UniqueId;
use crate::bootstrap::id::UNIQUE_ID_BYTES;
use crate::error::{Error, Result};

/// `split` color meaning "not in any new communicator" (like NCCL_SPLIT_NOCOLOR).
pub const NO_COLOR: Option<u32> = None;

impl Communicator {
    /// Aborts the communicator: a call in flight on another thread fails within about 100 ms,
    /// peers are told (they fail their calls with this error instead of waiting for a timeout),
    /// links are closed, and every later call returns an error at once. Never blocks for long.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        let err = Error::InvalidUsage(format!(
            "rank {} aborted the communicator (abort() was called)",
            self.rank
        ));
        // A call in flight notices the flag on its next idle round and gives the lock back.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.inner.try_lock() {
                Ok(mut inner) => {
                    inner.revoked.get_or_insert(err.clone());
                    for l in inner.links.iter_mut() {
                        if let Some(mut link) = l.take() {
                            link.cancel_recvs();
                            link.send_abort(&err);
                        }
                    }
                    return;
                }
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    p.into_inner().revoked.get_or_insert(err.clone());
                    return;
                }
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    crate::warn!(
                        Some(self.rank),
                        "abort: a call is still running; it will fail when it next waits"
                    );
                    return;
                }
            }
        }
    }

    /// Whether [`Communicator::abort`] was called or a failure revoked the communicator; the
    /// error, if so (like ncclCommGetAsyncError).
    pub fn async_error(&self) -> Option<Error> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.revoked.clone().or_else(|| {
            self.aborted.load(Ordering::SeqCst).then(|| {
                Error::InvalidUsage(format!("rank {} aborted the communicator", self.rank))
            })
        })
    }

    /// Splits the communicator (collective: every rank calls it): ranks with the same `color`
    /// form a new communicator, ordered by `key` then by old rank. A rank passing `None`
    /// (NO_COLOR) joins none and gets `Ok(None)`. The new communicators use `cfg` (fields left
    /// unset are taken from this communicator's settings).
    pub fn split(&self, color: Option<u32>, key: u32, cfg: Config) -> Result<Option<Communicator>> {
        let n = self.nranks;
        // 1. Everyone's (color, key).
        let mine = [color.map(u64::from).unwrap_or(u64::MAX), u64::from(key)];
        let mut all = vec![0u64; 2 * n];
        self.all_gather(&mine, &mut all)?;
        let mut members: Vec<(u64, usize)> = (0..n)
            .filter(|&p| color.is_some() && all[2 * p] == mine[0])
            .map(|p| (all[2 * p + 1], p))
            .collect();
        members.sort_unstable();
        // 2. The lowest old rank of each color... rather the first member by (key, rank) serves
        //    the new store; everyone learns its id through one all-gather of id blobs.
        let leader = members.first().map(|&(_, p)| p);
        let mut blob = [0u8; UNIQUE_ID_BYTES];
        if leader == Some(self.rank) {
            let ip = self.listener.addr().ip();
            blob = UniqueId::bind(SocketAddr::new(ip, 0))?.to_bytes();
        }
        let mut blobs = vec![0u8; UNIQUE_ID_BYTES * n];
        self.all_gather(&blob, &mut blobs)?;
        let Some(leader) = leader else {
            return Ok(None);
        };
        let theirs: &[u8; UNIQUE_ID_BYTES] = blobs
            [leader * UNIQUE_ID_BYTES..(leader + 1) * UNIQUE_ID_BYTES]
            .try_into()
            .map_err(|_| Error::Internal("split: bad id blob".into()))?;
        let id = UniqueId::from_bytes(theirs)?;
        let new_rank = members
            .iter()
            .position(|&(_, p)| p == self.rank)
            .ok_or_else(|| {
                Error::Internal("split: this rank is missing from its own color".into())
            })?;
        let inherited = Config {
            timeout: cfg.timeout.or(self.cfg.timeout),
            transport: cfg.transport.or(self.cfg.transport),
            nsocks: cfg.nsocks.or(self.cfg.nsocks),
            algo: cfg.algo.clone().or_else(|| self.cfg.algo.clone()),
            chunk_bytes: cfg.chunk_bytes.or(self.cfg.chunk_bytes),
            deterministic: cfg.deterministic.or(self.cfg.deterministic),
            ..cfg
        };
        Communicator::init(new_rank, members.len(), &id, inherited).map(Some)
    }
}
