//! Communicator management: abort, revoke, split, shrink and grow.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Communicator, Config};
use crate::bootstrap::UniqueId;
use crate::bootstrap::id::UNIQUE_ID_BYTES;
use crate::error::{Error, ErrorKind, Result};

/// `split` color meaning "not in any new communicator" (like NCCL_SPLIT_NOCOLOR).
pub const NO_COLOR: Option<u32> = None;

impl Communicator {
    /// Aborts the communicator: a call in flight on another thread fails within about 100 ms,
    /// peers are told (they fail their calls with this error instead of waiting for a timeout),
    /// links are closed, and every later call returns an error at once. Never blocks for long.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        let err = Error::invalid_usage(format!(
            "rank {} aborted the communicator (abort() was called)",
            self.rank
        ));
        // A call in flight notices the flag on its next idle round and gives the lock back.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.inner.try_lock() {
                Ok(mut inner) => {
                    let revoked_by = inner.revoked.clone();
                    inner.revoked.get_or_insert(err.clone());
                    // Peers learn the failure that led here (shrink after a lost rank, say), or,
                    // for a spontaneous abort, a remote failure naming this rank (NCCL's "remote
                    // error").
                    let cause = self
                        .failure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    let remote = cause.or(revoked_by).unwrap_or_else(|| {
                        Error::peer_lost(
                            self.rank,
                            format!("rank {} aborted the communicator", self.rank),
                        )
                    });
                    for l in inner.links.iter_mut() {
                        if let Some(mut link) = l.take() {
                            link.cancel_recvs();
                            link.send_abort(&remote);
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
        // Never waits for a running call: the failure is recorded on its own.
        if let Some(e) = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(e);
        }
        self.aborted
            .load(Ordering::SeqCst)
            .then(|| Error::invalid_usage(format!("rank {} aborted the communicator", self.rank)))
    }

    /// Splits the communicator (collective: every rank calls it): ranks with the same `color`
    /// form a new communicator, ordered by `key` then by old rank. A rank passing `None`
    /// (NO_COLOR) joins none and gets `Ok(None)`. The new communicators use `cfg` (fields left
    /// unset are taken from this communicator's settings).
    ///
    /// On a revoked communicator (after [`Communicator::revoke`], or a failure), the ranks
    /// still alive first agree on who they are, as [`Communicator::shrink`] does, and split
    /// that; a rank whose split fails because a peer revoked the communicator meanwhile does
    /// the same, so every rank ends in the same place.
    pub fn split(&self, color: Option<u32>, key: u32, cfg: Config) -> Result<Option<Communicator>> {
        if self.async_error().is_none() {
            match self.split_live(color, key, cfg.clone()) {
                Ok(r) => return Ok(r),
                Err(e) if self.async_error().is_none() => return Err(e),
                Err(_) => {}
            }
        }
        self.shrink()?.split(color, key, cfg)
    }

    fn split_live(
        &self,
        color: Option<u32>,
        key: u32,
        cfg: Config,
    ) -> Result<Option<Communicator>> {
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
            let ip = self.ends.listener().addr().ip();
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
            .map_err(|_| Error::internal("split: bad id blob"))?;
        let id = UniqueId::from_bytes(theirs)?;
        let new_rank = members
            .iter()
            .position(|&(_, p)| p == self.rank)
            .ok_or_else(|| Error::internal("split: this rank is missing from its own color"))?;
        Communicator::init(new_rank, members.len(), &id, self.inherit(cfg)).map(Some)
    }
}

impl Communicator {
    /// Builds a new communicator of the ranks that are still alive, renumbered in rank order,
    /// with the same settings (collective over the survivors: every survivor calls it, typically
    /// after a call failed with `PeerLost` or `Timeout`). It does not rely on rank 0 or the store:
    /// every survivor dials every other rank directly (a dead process refuses at once), the
    /// survivors exchange the sets of ranks they found dead until they agree, and the lowest
    /// survivor hands out a fresh communicator id. This communicator is aborted first.
    pub fn shrink(&self) -> Result<Communicator> {
        self.shrink_excluding(&[])
    }

    /// [`Communicator::shrink`] that also leaves out the ranks in `exclude`, alive or not (like
    /// `ncclCommShrink`'s exclude list; torch's `shrink_group` passes one). The excluded ranks do
    /// not call it; every other rank does, with the same list.
    pub fn shrink_excluding(&self, exclude: &[usize]) -> Result<Communicator> {
        use crate::transport::connect;
        use std::io::{Read, Write};
        let (n, me) = (self.nranks, self.rank);
        let mut dead = vec![false; n];
        for &x in exclude {
            if x >= n {
                return Err(Error::invalid_argument(format!(
                    "shrink on rank {me}: excluded rank {x} is not in this communicator of {n}"
                )));
            }
            if x == me {
                return Err(Error::invalid_usage(format!(
                    "shrink on rank {me}: this rank is in the exclude list; excluded ranks do not call shrink"
                )));
            }
            dead[x] = true;
        }
        let chan = self.shrinks.fetch_add(1, Ordering::SeqCst) as u32;
        // Survivors notice a failure at different times (at once by EOF, or only at their
        // timeout), so the agreement allows for one full timeout of skew.
        let deadline = Instant::now() + self.cfg.timeout() * 2 + Duration::from_secs(5);
        // The rank the revoking failure names: lost, or just the one that aborted. It gets a
        // short time to answer the dial below (a live process answers in milliseconds; a
        // stopped one, whose kernel still accepts, would hold us until the deadline).
        let suspect = self
            .async_error()
            .and_then(|e| e.peer())
            .filter(|&p| p < n && p != me);
        let quick = Instant::now()
            + (self.cfg.timeout() / 4).clamp(Duration::from_millis(200), Duration::from_secs(1));
        self.abort();
        // Everyone dials everyone: what I dial carries my messages, what I accept carries theirs.
        let mut out: Vec<Option<std::net::TcpStream>> = (0..n).map(|_| None).collect();
        for p in 0..n {
            if p == me || dead[p] {
                continue;
            }
            match connect::dial_control(
                self.cards[p].addr,
                &self.secret,
                self.comm_id,
                me,
                p,
                chan,
                if Some(p) == suspect {
                    quick.min(deadline)
                } else {
                    deadline
                },
            ) {
                Ok(s) => out[p] = Some(s),
                Err(e) => {
                    crate::info!(Some(me), "shrink: rank {p} is gone ({e})");
                    dead[p] = true;
                }
            }
        }
        let mut inc: Vec<Option<std::net::TcpStream>> = (0..n).map(|_| None).collect();
        for p in 0..n {
            if p == me || dead[p] {
                continue;
            }
            match self.ends.listener().take_control(p, chan, deadline) {
                Ok(s) => inc[p] = Some(s),
                Err(_) => dead[p] = true,
            }
        }
        let set_timeouts = |s: &std::net::TcpStream| {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10));
            let _ = s.set_read_timeout(Some(left));
            let _ = s.set_write_timeout(Some(left));
        };
        let nbytes = n.div_ceil(8);
        let encode = |d: &[bool]| -> Vec<u8> {
            let mut b = vec![0u8; nbytes];
            for (i, &x) in d.iter().enumerate() {
                if x {
                    b[i / 8] |= 1 << (i % 8);
                }
            }
            b
        };
        // Flood the dead sets until a round in which every survivor reported the same set.
        for round in 0..8 {
            let mine = encode(&dead);
            let mut agreed = true;
            for p in 0..n {
                if p == me || dead[p] {
                    continue;
                }
                let ok = out[p].as_mut().is_some_and(|s| {
                    set_timeouts(s);
                    s.write_all(&mine).is_ok()
                });
                if !ok {
                    dead[p] = true;
                    agreed = false;
                }
            }
            let mut buf = vec![0u8; nbytes];
            for p in 0..n {
                if p == me || dead[p] {
                    continue;
                }
                let ok = inc[p].as_mut().is_some_and(|s| {
                    set_timeouts(s);
                    s.read_exact(&mut buf).is_ok()
                });
                if !ok {
                    dead[p] = true;
                    agreed = false;
                    continue;
                }
                if buf != mine {
                    agreed = false;
                }
                for (i, d) in dead.iter_mut().enumerate() {
                    if buf[i / 8] & (1 << (i % 8)) != 0 && i != me {
                        *d = true;
                    }
                }
            }
            if agreed {
                break;
            }
            if round == 7 {
                return Err(Error::timed_out(
                    None,
                    format!("shrink on rank {me}: the survivors did not agree on who is alive"),
                ));
            }
        }
        let survivors: Vec<usize> = (0..n).filter(|&p| !dead[p]).collect();
        let leader = survivors[0];
        let new_rank = survivors
            .iter()
            .position(|&p| p == me)
            .expect("we are alive");
        let id = if leader == me {
            let id = UniqueId::bind(SocketAddr::new(self.ends.listener().addr().ip(), 0))?;
            let blob = id.to_bytes();
            for &p in &survivors[1..] {
                if let Some(s) = out[p].as_mut() {
                    set_timeouts(s);
                    s.write_all(&blob).map_err(|e| {
                        Error::io(format!("shrink: send the new id to rank {p}"), e)
                    })?;
                }
            }
            id
        } else {
            let s = inc[leader]
                .as_mut()
                .ok_or_else(|| Error::internal("shrink: no connection from the leader"))?;
            set_timeouts(s);
            let mut blob = [0u8; UNIQUE_ID_BYTES];
            s.read_exact(&mut blob).map_err(|e| {
                Error::peer_lost(
                    leader,
                    format!("shrink: rank {leader} did not send the new communicator id: {e}"),
                )
            })?;
            UniqueId::from_bytes(&blob)?
        };
        crate::info!(
            Some(me),
            "shrink: {} of {n} ranks survive ({:?}); this rank becomes {new_rank}",
            survivors.len(),
            survivors
        );
        Communicator::init(new_rank, survivors.len(), &id, self.cfg.clone())
    }
}

impl Communicator {
    /// Revokes the communicator here (like `ncclCommRevoke`): a call in flight on another thread
    /// fails within about 100 ms, peers are told (idle ones through liveness), and every later
    /// call fails at once; unlike dropping it, the communicator stays a valid parent for
    /// [`Communicator::shrink`], [`Communicator::shrink_excluding`] and
    /// [`Communicator::split`] (which every live rank calls).
    pub fn revoke(&self) {
        self.abort();
    }

    /// On rank 0: a fresh id for [`Communicator::grow`] (like `ncclCommGetUniqueId`). Rank 0
    /// passes it to `grow`; the new processes get it out of band (as text:
    /// `id.to_string()`) together with their new rank, and call [`Communicator::join`] with it.
    /// It holds a new secret: treat it like a password.
    pub fn grow_id(&self) -> Result<UniqueId> {
        if self.rank != 0 {
            return Err(Error::invalid_usage(format!(
                "grow_id on rank {}: only rank 0 makes the id (it serves the grown communicator's store)",
                self.rank
            )));
        }
        UniqueId::bind(SocketAddr::new(self.ends.listener().addr().ip(), 0))
    }

    /// Grows to `new_size` ranks (collective over this communicator, like `ncclCommGrow`): every
    /// rank here keeps its number in the new communicator, and `new_size - size()` new
    /// processes join as ranks `size()..new_size` by calling
    /// [`Communicator::join`]`(rank, new_size, &id, cfg)` with rank 0's [`Communicator::grow_id`].
    /// It returns once every member, old and new, is in the grown communicator; if one is lost
    /// on the way it fails, and this communicator is the one to shrink.
    /// Rank 0 passes that id here; the others pass `None` (they learn it from rank 0). Links are
    /// made on first use. This communicator stays valid. Settings left unset in `cfg` are
    /// inherited.
    pub fn grow(
        &self,
        new_size: usize,
        id: Option<&UniqueId>,
        cfg: Config,
    ) -> Result<Communicator> {
        let (n, me) = (self.nranks, self.rank);
        if new_size < n {
            return Err(Error::invalid_argument(format!(
                "grow on rank {me}: new size {new_size} is smaller than the current {n}; use shrink_excluding to leave ranks out"
            )));
        }
        let mut blob = [0u8; UNIQUE_ID_BYTES];
        if me == 0 {
            let id = id.ok_or_else(|| {
                Error::invalid_usage(
                    "grow on rank 0: pass the id from grow_id (the new processes join with it)",
                )
            })?;
            blob = id.to_bytes();
        }
        self.broadcast(&mut blob, 0)?;
        let inherited = self.inherit(cfg);
        let grown = if me == 0 {
            // Rank 0 serves the new store on the listener grow_id bound (held in this process).
            let id = id.ok_or_else(|| Error::internal("grow: rank 0 lost its id"))?;
            Communicator::init(0, new_size, id, inherited)?
        } else {
            Communicator::init(me, new_size, &UniqueId::from_bytes(&blob)?, inherited)?
        };
        grown.commit()?;
        Ok(grown)
    }

    /// A new process joins a communicator being grown (see [`Communicator::grow`]) as `rank` of
    /// `size`, with the id rank 0 published. Like [`Communicator::init`], and it returns only
    /// once every member, old and new, is in the grown communicator.
    pub fn join(rank: usize, size: usize, id: &UniqueId, cfg: Config) -> Result<Communicator> {
        let c = Communicator::init(rank, size, id, cfg)?;
        c.commit()?;
        Ok(c)
    }

    /// The first collective of a grown communicator: until it is done, a member lost during the
    /// grow leaves the survivors on the communicator they had (the old one stays valid), not
    /// some on the old and some on the new.
    fn commit(&self) -> Result<()> {
        self.barrier().map_err(|e| match e {
            e if e.kind() == ErrorKind::PeerLost => {
                let msg = format!("grow to {} ranks: {}", self.nranks, e.message());
                e.with_message(msg)
            }
            e => e,
        })
    }

    /// `cfg` with the fields it leaves unset taken from this communicator's settings.
    fn inherit(&self, cfg: Config) -> Config {
        Config {
            timeout: cfg.timeout.or(self.cfg.timeout),
            transport: cfg.transport.or(self.cfg.transport),
            nsocks: cfg.nsocks.or(self.cfg.nsocks),
            algo: cfg.algo.clone().or_else(|| self.cfg.algo.clone()),
            chunk_bytes: cfg.chunk_bytes.or(self.cfg.chunk_bytes),
            deterministic: cfg.deterministic.or(self.cfg.deterministic),
        }
    }
}
