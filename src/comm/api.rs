//! The collective calls: byte-level [`Call`]s (what the C ABI uses), their validation and
//! execution, typed wrappers, and groups. Non-blocking calls are in `nonblocking.rs`.
//!
//! Every call, blocking or not, takes a ticket when it is issued and runs in ticket order, so
//! the order in which a rank issues calls is the order in which it executes them — the order
//! every rank must agree on.

use super::{Communicator, Inner};
use crate::algo::{self, Algorithm, Collective, Program, Shape};
use crate::error::{Error, Result};
use crate::exec::{self, Job, Params};
use crate::reduce::{DataType, Element, ReduceOp};
use crate::transport::Tag;
use crate::transport::mem::CallMem;
use std::sync::Arc;

/// Declares blocking [`Communicator`] methods, each running the one [`Call`] its row builds:
/// `fn name<T>(args) => constructor(exprs);` (with `<T>`, `T: Element`).
macro_rules! calls {
    ($(
        $(#[$doc:meta])*
        fn $name:ident $(<$t:ident>)? ($($arg:ident: $ty:ty),* $(,)?) => $call:ident($($e:expr),* $(,)?);
    )+) => {
        $(
            $(#[$doc])*
            pub fn $name $(<$t: Element>)? (&self, $($arg: $ty),*) -> Result<()> {
                self.run_calls(&mut [Call::$call($($e),*)])
            }
        )+
    };
}

/// A typed slice as the bytes a [`Call`] takes.
pub(super) fn el<T: Element>(s: &[T]) -> &[u8] {
    bytemuck::cast_slice(s)
}

/// A typed mutable slice as the bytes a [`Call`] takes.
pub(super) fn el_mut<T: Element>(s: &mut [T]) -> &mut [u8] {
    bytemuck::cast_slice_mut(s)
}

/// One collective call over raw bytes. Build it with the constructors; lengths are in bytes and
/// must be whole elements of `dtype`. `send: None` means in place (see each constructor).
#[derive(Debug)]
pub struct Call<'a> {
    coll: Collective,
    send: Option<&'a [u8]>,
    recv: Option<&'a mut [u8]>,
    dtype: DataType,
    op: ReduceOp,
    root: usize,
    counts: Vec<usize>,
    tag: u32,
}

impl<'a> Call<'a> {
    fn new(
        coll: Collective,
        send: Option<&'a [u8]>,
        recv: Option<&'a mut [u8]>,
        dtype: DataType,
    ) -> Call<'a> {
        Call {
            coll,
            send,
            recv,
            dtype,
            op: ReduceOp::Sum,
            root: 0,
            counts: Vec::new(),
            tag: 0,
        }
    }

    /// All-reduce; `send: None` reduces `recv` in place.
    pub fn all_reduce(
        send: Option<&'a [u8]>,
        recv: &'a mut [u8],
        dtype: DataType,
        op: ReduceOp,
    ) -> Call<'a> {
        Call {
            op,
            ..Call::new(Collective::AllReduce, send, Some(recv), dtype)
        }
    }

    /// Broadcast from `root` into every rank's `recv`; the root's data is `send`, or `recv` itself
    /// when `send` is `None`. Other ranks' `send` is ignored.
    pub fn broadcast(
        send: Option<&'a [u8]>,
        recv: &'a mut [u8],
        dtype: DataType,
        root: usize,
    ) -> Call<'a> {
        Call {
            root,
            ..Call::new(Collective::Broadcast, send, Some(recv), dtype)
        }
    }

    /// Reduce into the root's `recv`; every rank's input is `send`, or `recv` when `send` is
    /// `None`. Other ranks' `recv` is not written.
    pub fn reduce(
        send: Option<&'a [u8]>,
        recv: &'a mut [u8],
        dtype: DataType,
        op: ReduceOp,
        root: usize,
    ) -> Call<'a> {
        Call {
            op,
            root,
            ..Call::new(Collective::Reduce, send, Some(recv), dtype)
        }
    }

    /// All-gather: `recv` (n blocks) gets every rank's `send` block in rank order; with `send:
    /// None` this rank's block is already at its place in `recv`.
    pub fn all_gather(send: Option<&'a [u8]>, recv: &'a mut [u8], dtype: DataType) -> Call<'a> {
        Call::new(Collective::AllGather, send, Some(recv), dtype)
    }

    /// Reduce-scatter: `recv` gets block `rank` of the reduction of every rank's `send` (n
    /// blocks); with `send: None`, `recv` holds all n blocks and the result lands in block `rank`.
    pub fn reduce_scatter(
        send: Option<&'a [u8]>,
        recv: &'a mut [u8],
        dtype: DataType,
        op: ReduceOp,
    ) -> Call<'a> {
        Call {
            op,
            ..Call::new(Collective::ReduceScatter, send, Some(recv), dtype)
        }
    }

    /// All-to-all: block `p` of `send` goes to rank `p`; block `p` of `recv` comes from rank `p`.
    /// `send: None` works in place in `recv`.
    pub fn all_to_all(send: Option<&'a [u8]>, recv: &'a mut [u8], dtype: DataType) -> Call<'a> {
        Call::new(Collective::AllToAll, send, Some(recv), dtype)
    }

    /// Gather every rank's `send` block into the root's `recv` (n blocks; ignored elsewhere).
    pub fn gather(send: &'a [u8], recv: &'a mut [u8], dtype: DataType, root: usize) -> Call<'a> {
        Call {
            root,
            ..Call::new(Collective::Gather, Some(send), Some(recv), dtype)
        }
    }

    /// Scatter the root's `send` (n blocks; ignored elsewhere): rank `p` gets block `p` in `recv`.
    pub fn scatter(send: &'a [u8], recv: &'a mut [u8], dtype: DataType, root: usize) -> Call<'a> {
        Call {
            root,
            ..Call::new(Collective::Scatter, Some(send), Some(recv), dtype)
        }
    }

    /// All-gather with per-rank element counts (`counts[p]` from rank p; `recv` holds them all).
    pub fn all_gatherv(
        send: &'a [u8],
        recv: &'a mut [u8],
        counts: &[usize],
        dtype: DataType,
    ) -> Call<'a> {
        Call {
            counts: counts.to_vec(),
            ..Call::new(Collective::AllGatherV, Some(send), Some(recv), dtype)
        }
    }

    /// Reduce-scatter with per-rank element counts (`send` holds all blocks; `recv` block `rank`).
    pub fn reduce_scatterv(
        send: &'a [u8],
        recv: &'a mut [u8],
        counts: &[usize],
        dtype: DataType,
        op: ReduceOp,
    ) -> Call<'a> {
        Call {
            op,
            counts: counts.to_vec(),
            ..Call::new(Collective::ReduceScatterV, Some(send), Some(recv), dtype)
        }
    }

    /// All-to-all with per-peer element counts: `send_counts[p]` elements go to rank p (blocks
    /// contiguous in rank order), `recv_counts[p]` arrive from rank p.
    pub fn all_to_allv(
        send: &'a [u8],
        send_counts: &[usize],
        recv: &'a mut [u8],
        recv_counts: &[usize],
        dtype: DataType,
    ) -> Call<'a> {
        let mut counts = send_counts.to_vec();
        counts.extend_from_slice(recv_counts);
        Call {
            counts,
            ..Call::new(Collective::AllToAllV, Some(send), Some(recv), dtype)
        }
    }

    /// Point-to-point send to `peer` with a user `tag` (the receiver must post the matching
    /// receive with the same tag, in the same order).
    pub fn send(buf: &'a [u8], dtype: DataType, peer: usize, tag: u32) -> Call<'a> {
        Call {
            root: peer,
            tag,
            ..Call::new(Collective::Send, Some(buf), None, dtype)
        }
    }

    /// Point-to-point receive from `peer` with a user `tag`.
    pub fn recv(buf: &'a mut [u8], dtype: DataType, peer: usize, tag: u32) -> Call<'a> {
        Call {
            root: peer,
            tag,
            ..Call::new(Collective::Recv, None, Some(buf), dtype)
        }
    }

    /// A barrier.
    pub fn barrier() -> Call<'a> {
        Call {
            op: ReduceOp::Max,
            ..Call::new(Collective::Barrier, None, None, DataType::U8)
        }
    }

    /// Which collective.
    pub fn collective(&self) -> Collective {
        self.coll
    }
}

/// A built Program and what every call needs of it, computed once.
pub(super) struct Cached {
    pub(super) prog: Program,
    /// The Program compiled for the executor.
    pub(super) plan: exec::Plan,
    /// The ranks it talks to, sorted.
    pub(super) peers: Vec<usize>,
    /// Its largest message, in elements.
    pub(super) max_message: usize,
}

/// One of the communicator's last few (shape, type) -> Program answers.
pub(super) struct Recent {
    pub(super) shape: Shape,
    pub(super) dtype: DataType,
    pub(super) algo: Algorithm,
    pub(super) cached: Arc<Cached>,
}

/// `a == b`, scalars first: `Vec`'s `==` calls memcmp even for the empty `counts` of every
/// collective but the v-variants, and this runs on every call.
fn same_shape(a: &Shape, b: &Shape) -> bool {
    // Destructured so that a new field of Shape cannot be forgotten here.
    let Shape {
        coll,
        nranks,
        rank,
        count,
        root,
        in_place,
        chunk,
        counts,
    } = a;
    *coll == b.coll
        && *count == b.count
        && *nranks == b.nranks
        && *rank == b.rank
        && *root == b.root
        && *in_place == b.in_place
        && *chunk == b.chunk
        && counts.len() == b.counts.len()
        && (counts.is_empty() || *counts == b.counts)
}

/// How many recent answers a communicator keeps (a training step's few distinct calls).
const RECENT: usize = 8;

/// A validated call: its shape and the bytes per rank block.
struct Planned {
    shape: Shape,
    bytes: usize,
}

/// A call's buffers (scratch not yet given), borrowed from it: in place, the input is the
/// output.
fn call_mem<'c>(call: &'c mut Call<'_>) -> CallMem<'c> {
    CallMem::from_slices(call.send, call.recv.as_deref_mut())
}

/// The first `len` bytes of the communicator's scratch, grown to hold them if need be.
fn scratch_bytes(scratch: &mut Vec<u64>, len: usize) -> &mut [u8] {
    if scratch.len() * 8 < len {
        scratch.resize(len.div_ceil(8), 0);
    }
    &mut bytemuck::cast_slice_mut::<u64, u8>(scratch)[..len]
}

/// What decides everything `prepare` works out for a call on a given communicator: the same
/// key gives the same validation outcome, shape, Program and tag (but for the sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MemoKey {
    coll: Collective,
    dtype: DataType,
    op: ReduceOp,
    root: usize,
    send_len: Option<usize>,
    recv_len: usize,
}

impl MemoKey {
    /// The key of a call that can be memoised: a collective with neither per-rank counts, nor
    /// per-peer sequence numbers (send/recv), nor a barrier's private byte.
    fn of(call: &Call<'_>) -> Option<MemoKey> {
        if !call.counts.is_empty()
            || matches!(
                call.coll,
                Collective::Send | Collective::Recv | Collective::Barrier
            )
        {
            return None;
        }
        Some(MemoKey {
            coll: call.coll,
            dtype: call.dtype,
            op: call.op,
            root: call.root,
            send_len: call.send.map(|s| s.len()),
            recv_len: call.recv.as_ref().map_or(0, |r| r.len()),
        })
    }
}

/// A single call made before, prepared (validated, Program found, links connected): a repeat
/// with the same [`MemoKey`] goes straight to the executor. The fast path of training loops,
/// which make the same few calls over and over.
pub(super) struct Memo {
    key: MemoKey,
    cached: Arc<Cached>,
    /// The call's parameters; the tag's sequence number is set per call.
    params: Params,
}

/// How many prepared calls a communicator keeps.
const MEMOS: usize = 4;

fn bad(call: &Call<'_>, rank: usize, what: impl std::fmt::Display) -> Error {
    Error::invalid_argument(format!("{} on rank {rank}: {what}", call.coll.name()))
}

impl Communicator {
    /// Checks a call's buffers against the collective's rules and works out its shape.
    fn plan(&self, call: &Call<'_>, chunk_bytes: usize) -> Result<Planned> {
        let (n, r) = (self.nranks, self.rank);
        let es = call.dtype.size();
        let chunk = (chunk_bytes / es).max(1);
        let send_len = call.send.map(|s| s.len());
        let recv_len = call.recv.as_ref().map(|s| s.len()).unwrap_or(0);
        for (what, len) in [
            ("send buffer", send_len.unwrap_or(0)),
            ("receive buffer", recv_len),
        ] {
            if len % es != 0 {
                return Err(bad(
                    call,
                    r,
                    format!(
                        "{what} of {len} bytes is not a whole number of {} elements",
                        call.dtype.name()
                    ),
                ));
            }
        }
        let shape = Shape::from_buffers(
            call.coll,
            n,
            r,
            call.root,
            &call.counts,
            send_len.map(|l| l / es),
            recv_len / es,
            chunk,
        )
        .map_err(|m| bad(call, r, m))?;
        let count = shape.count;
        Ok(Planned {
            bytes: count * es,
            shape,
        })
    }

    /// The algorithm this communicator runs for a call of `shape` moving `bytes` bytes per rank
    /// block: deterministic mode's `ordered`, else the forced one (Config.algo / OXCCL_ALGO), else
    /// the cost model's pick. What tools print; every rank gets the same answer.
    pub fn algorithm_for(&self, shape: &Shape, bytes: usize) -> Result<Algorithm> {
        self.choose(shape, bytes)
    }

    /// The algorithm for a call: forced by the config, else the cost model's (`crate::tune`).
    fn choose(&self, shape: &Shape, bytes: usize) -> Result<Algorithm> {
        if self.cfg.deterministic == Some(true)
            && shape.coll.algorithms().contains(&Algorithm::Ordered)
        {
            return Ok(Algorithm::Ordered);
        }
        if let Some(a) = self.cfg.forced(shape.coll)? {
            if shape.coll.algorithms().contains(&a) {
                return Ok(a);
            }
        }
        // Every rank must pick the same algorithm, so the model sees only what all ranks share:
        // the cards (same host? shm?), the config and the communicator's model.
        let &(transport, one_host) = self.placement.get_or_init(|| {
            let c0 = &self.cards[0];
            let one_host = self
                .cards
                .iter()
                .all(|c| c.boot == c0.boot && c.host == c0.host);
            let shm = one_host
                && self.cfg.transport != Some(super::TransportKind::Tcp)
                && self.cards.iter().all(|c| c0.not_same_host(c).is_none());
            let t = if shm {
                crate::tune::Transport::Shm
            } else {
                crate::tune::Transport::Tcp
            };
            (t, one_host)
        });
        let mut model = self.model();
        if !one_host {
            // Hosts may differ in cores; the ranks of different hosts must still agree.
            model.cores = 0;
        }
        // The NICs every host's ranks spread over between hosts, and their speed (the cards').
        model.rails = self.topo.rails();
        // Ranks per host from the host map every rank derived from the same cards; schedules
        // are laid over the topology order, so the placement itself does not matter.
        let per_host = self.topo.host_map().max_local();
        Ok(crate::tune::choose_on(
            shape,
            bytes,
            self.nranks,
            per_host,
            transport,
            &model,
        ))
    }

    /// The algorithm and built Program for a call: from the last few calls' (no hashing, no
    /// lock), else the cost model's choice and the communicator's Program cache.
    fn program_for(
        &self,
        inner: &mut Inner,
        call: &Call<'_>,
        shape: &Shape,
        bytes: usize,
    ) -> Result<(Algorithm, Arc<Cached>)> {
        if let Some(r) = inner
            .recent
            .iter()
            .find(|r| r.dtype == call.dtype && same_shape(&r.shape, shape))
        {
            return Ok((r.algo, r.cached.clone()));
        }
        let algo = self.choose(shape, bytes)?;
        let key = (algo, shape.clone());
        let cached = match inner.programs.get(&key) {
            Some(c) => c.clone(),
            None => {
                let prog = algo::build_on(algo, shape, self.topo.host_map())
                    .map_err(|e| bad(call, self.rank, e))?;
                let c = Arc::new(Cached {
                    peers: prog.peers(),
                    max_message: prog.max_message(),
                    plan: exec::Plan::new(&[&prog]),
                    prog,
                });
                if inner.programs.len() > 256 {
                    inner.programs.clear();
                }
                inner.programs.insert(key, c.clone());
                c
            }
        };
        if inner.recent.len() >= RECENT {
            inner.recent.remove(0);
        }
        inner.recent.push(Recent {
            shape: shape.clone(),
            dtype: call.dtype,
            algo,
            cached: cached.clone(),
        });
        Ok((algo, cached))
    }

    /// Runs calls together, blocking, after every call issued before them.
    pub(super) fn run_calls(&self, calls: &mut [Call<'_>]) -> Result<()> {
        let ticket = self.sched.take();
        self.run_ticket(ticket, calls)
    }

    pub(super) fn run_ticket(&self, ticket: u64, calls: &mut [Call<'_>]) -> Result<()> {
        let r = self
            .sched
            .wait_turn(ticket, self.cfg.timeout())
            .and_then(|()| {
                let mut inner = self.lock()?;
                self.execute(&mut inner, calls)
            });
        self.sched.done(ticket);
        r
    }

    fn execute(&self, inner: &mut Inner, calls: &mut [Call<'_>]) -> Result<()> {
        if self.aborted.load(std::sync::atomic::Ordering::SeqCst) && inner.revoked.is_none() {
            // A revoke (liveness found a peer lost, or a peer's revoke reached us) records why;
            // abort() does not.
            let why = self
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(e) = why {
                // The first call to see a revoke fails with the failure itself (PeerLost
                // naming the lost rank); later ones as after any failure. Peers may still be
                // inside a call with this rank: they get the cause on the links, so that this
                // rank leaving does not pass for the failure.
                for l in inner.links.iter_mut() {
                    if let Some(mut link) = l.take() {
                        link.cancel_recvs();
                        link.send_abort(&e);
                    }
                }
                inner.revoked = Some(e.clone());
                return Err(e);
            }
            inner.revoked = Some(Error::invalid_usage(format!(
                "rank {} aborted the communicator",
                self.rank
            )));
        }
        if let Some(e) = &inner.revoked {
            let what: Vec<&str> = calls.iter().map(|c| c.coll.name()).collect();
            return Err(Error::invalid_usage(format!(
                "{} on rank {}: the communicator was revoked by an earlier failure ({e}); destroy it (or shrink it) and start again",
                what.join("+"),
                self.rank
            )));
        }
        let chunk_bytes = self.cfg.chunk_bytes.unwrap_or(super::DEFAULT_CHUNK);
        // A single call (the usual case) allocates nothing here; one made before skips
        // preparing.
        if let [call] = calls {
            let key = MemoKey::of(call);
            if let Some(i) = key.and_then(|k| inner.memos.iter().position(|m| m.key == k)) {
                return self.run_memo(inner, i, call);
            }
            let mut barrier_byte = 0u8;
            let (cached, one) = self.prepare(inner, call, chunk_bytes, &mut barrier_byte)?;
            self.connect(inner, &cached, &one.params)?;
            if let Some(key) = key {
                let memo = Memo {
                    key,
                    cached: cached.clone(),
                    params: one.params,
                };
                if inner.memos.len() < MEMOS {
                    inner.memos.push(memo);
                } else {
                    // Oldest out.
                    inner.memos.rotate_left(1);
                    inner.memos[MEMOS - 1] = memo;
                }
            }
            return self.launch_one(inner, &cached, one);
        }
        // The byte each barrier's Program writes.
        let mut barrier_bytes = vec![0u8; calls.len()];
        let mut planned = Vec::with_capacity(calls.len());
        for (call, byte) in calls.iter_mut().zip(&mut barrier_bytes) {
            planned.push(self.prepare(inner, call, chunk_bytes, byte)?);
        }
        for (cached, call) in &planned {
            self.connect(inner, cached, &call.params)?;
        }
        self.launch_group(inner, planned)
    }

    /// Runs a call whose key matches memo `i`.
    fn run_memo(&self, inner: &mut Inner, i: usize, call: &mut Call<'_>) -> Result<()> {
        inner.seq += 1;
        let Inner {
            memos,
            links,
            scratch,
            seq,
            ..
        } = inner;
        let m = &memos[i];
        let mut params = m.params;
        params.tag.seq = *seq;
        crate::trace!(
            Some(self.rank),
            "{}: {} (prepared before)",
            exec::describe(&params.tag),
            m.cached.prog.algo.name()
        );
        // The scratch was sized for this Program when the memo was made, and never shrinks.
        let scratch = scratch_bytes(scratch, m.cached.prog.scratch_len * params.dtype.size());
        // The plan was compiled from the call's Program (same key, same Program).
        let mem = call_mem(call).with_scratch(scratch);
        let r = exec::run_planned(
            &m.cached.plan,
            &[exec::Call { mem, params }],
            links,
            self.interrupt(),
        );
        self.record(inner, r)
    }

    fn interrupt(&self) -> Option<exec::Interrupt<'_>> {
        Some(exec::Interrupt {
            flag: &self.aborted,
            why: &self.failure,
        })
    }

    /// Notes a call's failure: the communicator is revoked.
    fn record(&self, inner: &mut Inner, r: Result<()>) -> Result<()> {
        if let Err(e) = &r {
            crate::warn!(Some(self.rank), "{e}");
            inner.revoked = Some(e.clone());
            self.failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e.clone());
        }
        r
    }

    /// Validates one call and finds its Program; gives it its sequence number and tag.
    /// `barrier_byte` is what a barrier's Program writes.
    fn prepare<'c>(
        &self,
        inner: &mut Inner,
        call: &'c mut Call<'_>,
        chunk_bytes: usize,
        barrier_byte: &'c mut u8,
    ) -> Result<(Arc<Cached>, exec::Call<'c>)> {
        let p = self.plan(call, chunk_bytes)?;
        let (algo, cached) = self.program_for(inner, call, &p.shape, p.bytes)?;
        let tag = match call.coll {
            Collective::Send | Collective::Recv => {
                let seqs = if call.coll == Collective::Send {
                    &mut inner.p2p_sent
                } else {
                    &mut inner.p2p_recvd
                };
                let s = seqs.entry(call.root).or_insert(0);
                *s += 1;
                Tag {
                    seq: *s,
                    count: p.shape.count as u64,
                    coll: Collective::Send as u8,
                    dtype: call.dtype as i32 as u8,
                    op: 0xff,
                    root: call.tag,
                }
            }
            c => {
                inner.seq += 1;
                // The count every rank agrees on: per-rank counts differ in the v-variants.
                let count = match c {
                    Collective::AllGatherV | Collective::ReduceScatterV => {
                        p.shape.counts.iter().sum()
                    }
                    Collective::AllToAllV => 0,
                    _ => p.shape.count,
                };
                Tag {
                    seq: inner.seq,
                    count: count as u64,
                    coll: c as u8,
                    dtype: call.dtype as i32 as u8,
                    op: if c.reduces() {
                        call.op as i32 as u8
                    } else {
                        0xff
                    },
                    root: if c.rooted() {
                        call.root as u32
                    } else {
                        u32::MAX
                    },
                }
            }
        };
        if !inner.logged.contains(&(call.coll, algo)) {
            inner.logged.push((call.coll, algo));
            crate::info!(
                Some(self.rank),
                "{} of {} bytes: algorithm {}",
                call.coll.name(),
                p.bytes,
                algo.name()
            );
        }
        crate::trace!(Some(self.rank), "{}: {}", exec::describe(&tag), algo.name());
        let params = Params {
            dtype: call.dtype,
            op: call.op,
            rank: self.rank,
            nranks: self.nranks,
            timeout: self.cfg.timeout(),
            tag,
        };
        let mem = if call.coll == Collective::Barrier {
            CallMem::from_slices(None, Some(std::slice::from_mut(barrier_byte)))
        } else {
            call_mem(call)
        };
        Ok((cached, exec::Call { mem, params }))
    }

    /// Connects the links a prepared call needs; a failure revokes the communicator.
    fn connect(&self, inner: &mut Inner, cached: &Cached, params: &Params) -> Result<()> {
        let es = params.dtype.size();
        let r = self.connect_peers(&mut inner.links, &cached.peers, cached.max_message * es);
        self.record(inner, r)
    }

    /// Gives a prepared call (its links connected) scratch and runs it.
    fn launch_one(&self, inner: &mut Inner, cached: &Cached, call: exec::Call<'_>) -> Result<()> {
        let scratch = scratch_bytes(
            &mut inner.scratch,
            cached.prog.scratch_len * call.params.dtype.size(),
        );
        let call = exec::Call {
            mem: call.mem.with_scratch(scratch),
            params: call.params,
        };
        let r = exec::run_planned(
            &cached.plan,
            std::slice::from_ref(&call),
            &mut inner.links,
            self.interrupt(),
        );
        self.record(inner, r)
    }

    /// Gives prepared calls (their links connected) scratch and runs them together. Each
    /// call's memory is its own borrows (distinct calls' buffers are distinct borrows) and its
    /// own piece of the communicator's scratch.
    fn launch_group(
        &self,
        inner: &mut Inner,
        planned: Vec<(Arc<Cached>, exec::Call<'_>)>,
    ) -> Result<()> {
        // Scratch for all of them: one allocation, carved up in 64-byte aligned pieces.
        let (cached, calls): (Vec<Arc<Cached>>, Vec<exec::Call<'_>>) = planned.into_iter().unzip();
        let lens: Vec<usize> = cached
            .iter()
            .zip(&calls)
            .map(|(c, call)| c.prog.scratch_len * call.params.dtype.size())
            .collect();
        let total = lens.iter().map(|l| l.div_ceil(64) * 64).sum();
        let Inner { scratch, links, .. } = &mut *inner;
        let mut rest = scratch_bytes(scratch, total);
        let mut jobs = Vec::with_capacity(calls.len());
        for ((call, c), len) in calls.into_iter().zip(&cached).zip(lens) {
            let (mine, after) = std::mem::take(&mut rest).split_at_mut(len.div_ceil(64) * 64);
            rest = after;
            jobs.push(Job {
                prog: &c.prog,
                mem: call.mem.with_scratch(&mut mine[..len]),
                params: call.params,
            });
        }
        let r = exec::run_jobs_abortable(jobs, links, self.interrupt());
        self.record(inner, r)
    }

    // ---- blocking API ----
    //
    // Every blocking method is one row of this table: the [`Call`] it runs (typed methods view
    // their slices as bytes with `el`/`el_mut`), so each collective's rules live in its `Call`
    // constructor and in `plan`, once.
    calls! {
        /// All-reduce over raw bytes holding `dtype` elements (the C ABI's entry point).
        /// `send: None` is in place.
        fn all_reduce_bytes(send: Option<&[u8]>, recv: &mut [u8], dtype: DataType, op: ReduceOp)
            => all_reduce(send, recv, dtype, op);
        /// In-place all-reduce: every rank's `buf` becomes the element-wise reduction of all
        /// ranks' `buf`.
        fn all_reduce<T>(buf: &mut [T], op: ReduceOp)
            => all_reduce(None, el_mut(buf), T::DTYPE, op);
        /// Out-of-place all-reduce: `recv` becomes the reduction of all ranks' `send`.
        fn all_reduce_into<T>(send: &[T], recv: &mut [T], op: ReduceOp)
            => all_reduce(Some(el(send)), el_mut(recv), T::DTYPE, op);
        /// Blocks until every rank has called `barrier`.
        fn barrier() => barrier();
        /// Broadcast (bytes); see [`Call::broadcast`].
        fn broadcast_bytes(send: Option<&[u8]>, recv: &mut [u8], dtype: DataType, root: usize)
            => broadcast(send, recv, dtype, root);
        /// In-place broadcast: every rank's `buf` becomes the root's.
        fn broadcast<T>(buf: &mut [T], root: usize) => broadcast(None, el_mut(buf), T::DTYPE, root);
        /// Reduce (bytes); see [`Call::reduce`].
        fn reduce_bytes(send: Option<&[u8]>, recv: &mut [u8], dtype: DataType, op: ReduceOp,
                        root: usize)
            => reduce(send, recv, dtype, op, root);
        /// Reduce into the root's `recv` (other ranks' `recv` is not written and may be empty).
        fn reduce<T>(send: &[T], recv: &mut [T], op: ReduceOp, root: usize)
            => reduce(Some(el(send)), el_mut(recv), T::DTYPE, op, root);
        /// All-gather (bytes); see [`Call::all_gather`].
        fn all_gather_bytes(send: Option<&[u8]>, recv: &mut [u8], dtype: DataType)
            => all_gather(send, recv, dtype);
        /// All-gather: `recv` (nranks × `send.len()`) gets every rank's `send`, in rank order.
        fn all_gather<T>(send: &[T], recv: &mut [T])
            => all_gather(Some(el(send)), el_mut(recv), T::DTYPE);
        /// Reduce-scatter (bytes); see [`Call::reduce_scatter`].
        fn reduce_scatter_bytes(send: Option<&[u8]>, recv: &mut [u8], dtype: DataType, op: ReduceOp)
            => reduce_scatter(send, recv, dtype, op);
        /// Reduce-scatter: `recv` gets block `rank` of the reduction of every rank's `send`
        /// (nranks × `recv.len()` elements).
        fn reduce_scatter<T>(send: &[T], recv: &mut [T], op: ReduceOp)
            => reduce_scatter(Some(el(send)), el_mut(recv), T::DTYPE, op);
        /// All-to-all (bytes); see [`Call::all_to_all`].
        fn all_to_all_bytes(send: Option<&[u8]>, recv: &mut [u8], dtype: DataType)
            => all_to_all(send, recv, dtype);
        /// All-to-all: block p of `send` goes to rank p; block p of `recv` comes from rank p.
        fn all_to_all<T>(send: &[T], recv: &mut [T])
            => all_to_all(Some(el(send)), el_mut(recv), T::DTYPE);
        /// Gather (bytes); see [`Call::gather`].
        fn gather_bytes(send: &[u8], recv: &mut [u8], dtype: DataType, root: usize)
            => gather(send, recv, dtype, root);
        /// Gather every rank's `send` into the root's `recv` (nranks blocks; ignored elsewhere).
        fn gather<T>(send: &[T], recv: &mut [T], root: usize)
            => gather(el(send), el_mut(recv), T::DTYPE, root);
        /// Scatter (bytes); see [`Call::scatter`].
        fn scatter_bytes(send: &[u8], recv: &mut [u8], dtype: DataType, root: usize)
            => scatter(send, recv, dtype, root);
        /// Scatter the root's `send` (nranks blocks; ignored elsewhere): rank p gets block p.
        fn scatter<T>(send: &[T], recv: &mut [T], root: usize)
            => scatter(el(send), el_mut(recv), T::DTYPE, root);
        /// All-gather with per-rank counts: rank p contributes `counts[p]` elements.
        fn all_gatherv<T>(send: &[T], recv: &mut [T], counts: &[usize])
            => all_gatherv(el(send), el_mut(recv), counts, T::DTYPE);
        /// Reduce-scatter with per-rank counts: rank p gets `counts[p]` elements.
        fn reduce_scatterv<T>(send: &[T], recv: &mut [T], counts: &[usize], op: ReduceOp)
            => reduce_scatterv(el(send), el_mut(recv), counts, T::DTYPE, op);
        /// All-to-all with per-peer counts.
        fn all_to_allv<T>(send: &[T], send_counts: &[usize], recv: &mut [T],
                          recv_counts: &[usize])
            => all_to_allv(el(send), send_counts, el_mut(recv), recv_counts, T::DTYPE);
        /// Sends `buf` to `peer`, tagged (the receive must use the same tag, in the same order).
        fn send<T>(buf: &[T], peer: usize, tag: u32) => send(el(buf), T::DTYPE, peer, tag);
        /// Receives `buf` from `peer`, tagged.
        fn recv<T>(buf: &mut [T], peer: usize, tag: u32) => recv(el_mut(buf), T::DTYPE, peer, tag);
    }

    /// Runs several calls together (like ncclGroupStart/End): they share the links and progress
    /// concurrently; it returns when all are done. Every rank must pass its calls in the same order
    /// (a send and its receive may sit in different positions on the two ranks: point-to-point
    /// calls match per peer).
    pub fn group(&self, mut calls: Vec<Call<'_>>) -> Result<()> {
        self.run_calls(&mut calls)
    }

    /// Runs one call (what [`Communicator::group`] does with one, without the `Vec`: the C
    /// ABI's blocking calls use it, once per call).
    pub fn run(&self, call: Call<'_>) -> Result<()> {
        self.run_calls(&mut [call])
    }
}
