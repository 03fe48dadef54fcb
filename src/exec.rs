//! The executor: runs one rank's [`Program`] over its links.
//!
//! Steps start as soon as their dependencies are done: sends are posted in program order per
//! peer while the link has credits, receives are consumed in order per peer as messages arrive
//! (reduced straight out of the link's slot into the destination), local steps run immediately.
//! It never blocks on one peer while another has work ready. When nothing moves it spins
//! briefly, then yields, then sleeps (on the shm doorbell futex, or in poll(2) on the links'
//! descriptors: see [`crate::transport::wait`]); if nothing moves for
//! the communicator's timeout it fails with an error naming the peers it was waiting for.
//!
//! Every message carries the collective's [`Tag`]; a message whose tag differs from ours is an
//! [`ErrorKind::Mismatch`](crate::error::ErrorKind::Mismatch) naming both calls. On any error the executor sends an abort to every
//! peer, so ranks that are not talking to the failed one learn of it too.
//!
//! The executor holds no raw pointers: a call's buffers come as a [`CallMem`] (made from the
//! caller's borrows), every step's range becomes a bounds-checked region of it (checked once per
//! run against how far the Program reaches, see [`Plan`]), and the links take regions. Why the
//! regions' slices may overlap in time only as the Program orders them is in
//! [`crate::transport::mem`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::algo::{Buf, Collective, Op, Program, Range};
use crate::error::Error;
use crate::error::Result;
use crate::reduce::{self, DataType, ReduceOp};
use crate::transport::mem::{CallMem, Region, RegionMut};
use crate::transport::wait::{self, Waiter};
use crate::transport::{Link, Tag};

/// What the executor needs besides the Program and the links.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// Element type.
    pub dtype: DataType,
    /// Reduction operator.
    pub op: ReduceOp,
    /// This rank.
    pub rank: usize,
    /// Ranks in the communicator.
    pub nranks: usize,
    /// Give up after this long without progress.
    pub timeout: Duration,
    /// The signature every message of this collective carries.
    pub tag: Tag,
}

/// Describes a tag as a call, e.g. `all_reduce #3 (count 10, float, sum)`.
pub(crate) fn describe(tag: &Tag) -> String {
    let coll = Collective::from_u8(tag.coll)
        .map(|c| c.name())
        .unwrap_or("unknown collective");
    let dt = DataType::from_i32(tag.dtype as i32)
        .map(|d| d.name())
        .unwrap_or("?");
    let op = ReduceOp::from_i32(tag.op as i32)
        .map(|o| o.name())
        .unwrap_or("-");
    let root = if tag.root == u32::MAX {
        String::new()
    } else {
        format!(", root {}", tag.root)
    };
    format!(
        "{coll} #{} (count {}, {dt}, {op}{root})",
        tag.seq, tag.count
    )
}

/// A peer's abort that names this very rank (it gave up waiting for us, say): from here the
/// rank to name is the one that reported it, not ourselves.
fn relayed(e: Error, me: usize, from: usize) -> Error {
    // Only a peer's report: a link's own error naming this rank (its NIC died) stays as it is.
    if e.peer() != Some(me) || e.reported_by().is_none() {
        return e;
    }
    e.with_peer(Some(from))
}

/// Prefixes an error's message with where it happened.
fn in_context(e: Error, p: &Params) -> Error {
    let prefix = format!("{} on rank {}", describe(&p.tag), p.rank);
    let msg = format!("{prefix}: {}", e.message());
    e.with_message(msg)
}

/// Programs compiled for the executor: their steps in one table (job `j`'s step `i` is step
/// `base[j] + i`), each step's dependents in CSR form, each peer's sends and receives in order,
/// and how far every job's steps reach into each buffer (so a run checks its memory with three
/// comparisons per job). Built once per cached Program (see [`Plan::new`]) and reused by every
/// call of that shape; a group's is built per call in a per-thread spare.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    ops: Vec<Op>,
    base: Vec<usize>,
    job_of: Vec<u32>,
    /// Each step's number of dependencies.
    deps: Vec<u32>,
    dep_start: Vec<u32>,
    dep_list: Vec<u32>,
    peers: Vec<PeerSteps>,
    /// Local steps with no dependencies.
    ready: Vec<u32>,
    /// Per job: one past the largest element index named in Input, Output and Scratch.
    ends: Vec<[usize; 3]>,
    /// The largest message, in elements.
    max_message: usize,
    /// One job whose steps can run in program order, each waited for in turn (see
    /// [`Plan::straight`]).
    straight: bool,
}

/// One peer's steps, in program order.
#[derive(Debug, Default, Clone)]
struct PeerSteps {
    peer: usize,
    sends: Vec<u32>,
    recvs: Vec<u32>,
}

fn buf_index(b: Buf) -> usize {
    match b {
        Buf::Input => 0,
        Buf::Output => 1,
        Buf::Scratch => 2,
    }
}

impl Plan {
    /// Compiles Programs that run together (one, or a group's in call order).
    pub(crate) fn new(progs: &[&Program]) -> Plan {
        let mut p = Plan::default();
        p.rebuild(progs);
        p
    }

    /// The number of Programs it was built from.
    pub(crate) fn jobs(&self) -> usize {
        self.ends.len()
    }

    /// The ranks its Programs exchange messages with, in first-use order.
    #[cfg(test)]
    pub(crate) fn peers(&self) -> impl Iterator<Item = usize> + '_ {
        self.peers.iter().map(|q| q.peer)
    }

    /// Builds the plan for `progs` in place, keeping this one's memory.
    fn rebuild(&mut self, progs: &[&Program]) {
        let Plan {
            ops,
            base,
            job_of,
            deps,
            dep_start,
            dep_list,
            peers,
            ready,
            ends,
            max_message,
            straight,
        } = self;
        ops.clear();
        base.clear();
        job_of.clear();
        deps.clear();
        dep_start.clear();
        dep_list.clear();
        peers.clear();
        ready.clear();
        ends.clear();
        base.push(0usize);
        for (j, prog) in progs.iter().enumerate() {
            base.push(base[j] + prog.steps.len());
            job_of.extend(std::iter::repeat_n(j as u32, prog.steps.len()));
            let mut end = [0usize; 3];
            for s in &prog.steps {
                ops.push(s.op);
                deps.push(s.deps.len() as u32);
                for r in s.op.reads().chain(s.op.writes()) {
                    let e = &mut end[buf_index(r.buf)];
                    *e = (*e).max(r.off.saturating_add(r.len));
                }
            }
            ends.push(end);
        }
        let n = base[progs.len()];
        // Dependents in CSR form: step g's are dep_list[dep_start[g]..dep_start[g + 1]].
        dep_start.resize(n + 1, 0);
        for (j, prog) in progs.iter().enumerate() {
            for s in &prog.steps {
                for &d in &s.deps {
                    dep_start[base[j] + d as usize + 1] += 1;
                }
            }
        }
        for g in 0..n {
            dep_start[g + 1] += dep_start[g];
        }
        dep_list.resize(dep_start[n] as usize, 0);
        // Fill using dep_start[g] as g's cursor (it ends at g + 1's start), then shift back.
        for (j, prog) in progs.iter().enumerate() {
            for (i, s) in prog.steps.iter().enumerate() {
                for &d in &s.deps {
                    let at = &mut dep_start[base[j] + d as usize];
                    dep_list[*at as usize] = (base[j] + i) as u32;
                    *at += 1;
                }
            }
        }
        for g in (1..=n).rev() {
            dep_start[g] = dep_start[g - 1];
        }
        dep_start[0] = 0;
        for (g, op) in ops.iter().enumerate() {
            match op.peer() {
                Some(peer) => {
                    let q = match peers.iter().position(|q| q.peer == peer) {
                        Some(i) => &mut peers[i],
                        None => {
                            peers.push(PeerSteps {
                                peer,
                                ..PeerSteps::default()
                            });
                            peers.last_mut().expect("just pushed")
                        }
                    };
                    if matches!(op, Op::Send { .. }) {
                        q.sends.push(g as u32)
                    } else {
                        q.recvs.push(g as u32)
                    }
                }
                None if deps[g] == 0 => ready.push(g as u32),
                None => {}
            }
        }
        *max_message = ops
            .iter()
            .filter_map(|op| match *op {
                Op::Send { src, .. } => Some(src.len),
                Op::Recv { dst, .. } | Op::RecvReduce { dst, .. } => Some(dst.len),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        *straight = progs.len() == 1 && Self::in_order(ops, peers);
    }

    /// Whether running the steps one after another in program order, each waited for before
    /// the next starts, cannot deadlock: at most one send and one receive per peer, and every
    /// send before every receive. (Every rank then posts all its sends before it waits for
    /// anything; a send that finds no credit waits only for the peer to take this rank's
    /// message of the previous call, which the peer's previous call does without us.)
    fn in_order(ops: &[Op], peers: &[PeerSteps]) -> bool {
        let first_recv = ops
            .iter()
            .position(|op| matches!(op, Op::Recv { .. } | Op::RecvReduce { .. }))
            .unwrap_or(ops.len());
        peers
            .iter()
            .all(|q| q.sends.len() <= 1 && q.recvs.len() <= 1)
            && !ops[first_recv..]
                .iter()
                .any(|op| matches!(op, Op::Send { .. }))
    }
}

/// A run's progress with one peer (the peer is `Plan::peers[i]` for cursor `i`).
#[derive(Default)]
struct Cursor {
    next_send: usize,
    inflight: VecDeque<u32>,
    next_recv: usize,
    /// Receives up to this index have been considered for posting.
    posted: usize,
    /// The link's count of released messages when this run began: receive k of this run is
    /// the link's message `base + k` (the index `Link::post_recv` takes).
    base: u64,
}

/// A run's changing state, kept per thread between calls (see [`State::take`]), with a spare
/// plan for groups.
#[derive(Default)]
struct State {
    remaining: Vec<u32>,
    ready_local: Vec<u32>,
    cursors: Vec<Cursor>,
    group: Plan,
}

thread_local! {
    static STATE: std::cell::Cell<Option<Box<State>>> = const { std::cell::Cell::new(None) };
}

/// State for at most this many steps is kept for the thread's next call: small calls are the
/// ones whose time allocation would show in; keeping big tables alive between calls only
/// fragments the heap.
const KEEP_STEPS: usize = 1024;

impl State {
    /// This thread's state, empty (or new).
    fn take() -> Box<State> {
        STATE.with(|c| c.take()).unwrap_or_default()
    }

    /// Clears the state, keeping its memory, and keeps it for the thread's next call.
    fn give_back(mut self: Box<Self>) {
        if self.remaining.capacity() > KEEP_STEPS || self.group.ops.capacity() > KEEP_STEPS {
            return;
        }
        self.remaining.clear();
        self.ready_local.clear();
        for c in &mut self.cursors {
            c.inflight.clear();
        }
        STATE.with(|c| c.set(Some(self)));
    }
}

/// How many receives ahead of the next one the executor offers destinations for.
const POST_AHEAD: usize = 16;

/// Spin this many idle rounds before yielding, and yield this long before sleeping in poll.
const SPIN_ROUNDS: u32 = 64;
const YIELD_FOR: Duration = Duration::from_micros(2000);
/// Idle this long with a message arrived for a receive that waits for a send its link holds
/// for the peer to take ([`blocked_arrival`]), the executor has the link copy the held sends
/// out ([`Link::settle_sends`]): the peer is then most likely waiting the same way (two ranks
/// exchanging in place), so this only lets a peer that is merely busy take it first. 2 ranks,
/// registered memory, `-a direct` in place at 64 KiB: 220 us per call settling after 200 us,
/// 39 us after 20 us, 24-31 us after 2 us.
const SETTLE_AFTER: Duration = Duration::from_micros(20);
/// Idle this long, the executor settles held sends even when no arrived message is waiting on
/// them (see [`blocked_arrival`]): the backstop for any other shape of mutual waiting.
const SETTLE_ANYWAY: Duration = Duration::from_millis(5);
/// How long to yield when some link waited on has descriptors (TCP): poll(2) wakes the moment
/// its data lands, and yielding for milliseconds while a slow network link drains only burns
/// the CPU the other ranks of the host need. 4 namespace hosts x 2 ranks on 2 loaded cores,
/// 2 rails of 1 Gbit/s, 16 MiB `hier` all-reduce: 151-180 ms yielding 2 ms, 116-146 ms
/// yielding 0.1 ms (`benches/multihost.sh`); `oxccl-perf -N 4 --transport tcp` at 8 B: 53-73
/// us against 26-27 us.
const YIELD_NET: Duration = Duration::from_micros(100);

/// One Program with its memory and parameters: an element of a group run by [`run_jobs_abortable`].
#[derive(Debug)]
pub(crate) struct Job<'a> {
    /// This rank's part of the call.
    pub prog: &'a Program,
    /// The call's buffers.
    pub mem: CallMem<'a>,
    /// The call's type, operator and signature.
    pub params: Params,
}

/// A call's memory and parameters, for a Program already compiled into a [`Plan`].
#[derive(Debug)]
pub(crate) struct Call<'a> {
    /// The call's buffers.
    pub mem: CallMem<'a>,
    /// The call's type, operator and signature.
    pub params: Params,
}

/// What interrupts a running call: `flag` becoming true (checked whenever the executor would
/// wait, and every few thousand rounds). `why` holds the reason when it is a revoke (a peer
/// found lost by heartbeats, say): the call fails with it and peers are sent it; with `why`
/// empty it is `abort()` on this rank.
#[derive(Clone, Copy)]
pub(crate) struct Interrupt<'a> {
    /// Raised to interrupt.
    pub flag: &'a std::sync::atomic::AtomicBool,
    /// The failure behind it, if any.
    pub why: &'a std::sync::Mutex<Option<Error>>,
}

impl Interrupt<'_> {
    fn raised(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The error a raised interrupt fails the call with.
    fn error(&self, rank: usize) -> Error {
        self.why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| {
                Error::invalid_usage(format!(
                    "the call was interrupted by abort() on rank {rank}"
                ))
            })
    }
}

/// Runs several Programs together (a group): they progress concurrently and share the links.
/// On each link, messages keep job order (all of job 0's sends to a peer precede job 1's), which
/// every rank agrees on because it issued the calls in the same order. Gives up with an error soon after `abort` is raised (see [`Interrupt`]).
///
/// Each job's memory is a [`CallMem`], whose maker vouched that it is live, sized as it says and
/// not otherwise accessed for the call; the Programs must come from `algo` (whose verifier proves
/// every overlapping pair of steps ordered), as every caller's do.
pub(crate) fn run_jobs_abortable(
    jobs: Vec<Job<'_>>,
    links: &mut [Option<Box<dyn Link>>],
    abort: Option<Interrupt<'_>>,
) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let mut st = State::take();
    let mut plan = std::mem::take(&mut st.group);
    let progs: Vec<&Program> = jobs.iter().map(|j| j.prog).collect();
    plan.rebuild(&progs);
    let calls: Vec<Call<'_>> = jobs
        .into_iter()
        .map(|j| Call {
            mem: j.mem,
            params: j.params,
        })
        .collect();
    let r = run_plan(&plan, &calls, links, abort, Some(&mut st));
    st.group = plan;
    st.give_back();
    r
}

/// Runs calls compiled into `plan` (one call per Program it was built from, in order), giving
/// up soon after `abort` is raised: the fast path of a call whose Program is cached. As
/// [`run_jobs_abortable`]; memory smaller than the plan reaches is refused before anything runs.
pub(crate) fn run_planned(
    plan: &Plan,
    calls: &[Call<'_>],
    links: &mut [Option<Box<dyn Link>>],
    abort: Option<Interrupt<'_>>,
) -> Result<()> {
    if calls.is_empty() && plan.jobs() == 0 {
        return Ok(());
    }
    run_plan(plan, calls, links, abort, None)
}

/// Runs a plan over its calls' memory. Before returning, however it ends, no link holds a
/// region of that memory: posted receives are cancelled, and on failure every link is aborted
/// (a send posted but not complete is never read again). Completed runs completed every send.
fn run_plan(
    plan: &Plan,
    calls: &[Call<'_>],
    links: &mut [Option<Box<dyn Link>>],
    abort: Option<Interrupt<'_>>,
    st: Option<&mut State>,
) -> Result<()> {
    if calls.len() != plan.jobs() || calls.is_empty() {
        return Err(Error::internal(format!(
            "{} calls for a plan of {} programs",
            calls.len(),
            plan.jobs()
        )));
    }
    let mut failed_job = 0;
    let r = Bufs::checked(plan, calls, links).and_then(|bufs| {
        let es = calls[0].params.dtype.size();
        if plan.straight
            && plan.max_message.saturating_mul(es) <= STRAIGHT_MAX
            && plan.peers.iter().all(|q| {
                links[q.peer]
                    .as_ref()
                    .is_some_and(|l| l.completes_on_post())
            })
        {
            run_straight(plan, &bufs, links, abort)
        } else if let Some(st) = st {
            run_inner(plan, &bufs, links, st, &mut failed_job, abort)
        } else {
            let mut st = State::take();
            let r = run_inner(plan, &bufs, links, &mut st, &mut failed_job, abort);
            st.give_back();
            r
        }
    });
    // No posted destination may outlive the call: the caller's buffers are only borrowed.
    // Only the links this run used can hold one.
    for q in &plan.peers {
        if let Some(l) = links.get_mut(q.peer).and_then(|l| l.as_mut()) {
            l.cancel_recvs();
        }
    }
    if let Err(e) = &r {
        // A call interrupted by abort() tells peers that this rank gave up (a remote failure
        // naming it); any other error, a revoke's included, travels as it is.
        let interrupted =
            abort.is_some_and(|a| a.raised() && a.why.lock().is_ok_and(|w| w.is_none()));
        let wire = if interrupted {
            let rank = calls[0].params.rank;
            Error::peer_lost(rank, format!("rank {rank} aborted the communicator"))
        } else {
            e.clone()
        };
        for l in links.iter_mut().flatten() {
            l.send_abort(&wire);
        }
    }
    r.map_err(|e| in_context(e, &calls[failed_job.min(calls.len() - 1)].params))
}

/// Messages up to this size may run a Program in order (see [`Plan::straight`]); larger ones
/// go through the general loop, which overlaps them and places them in posted buffers.
const STRAIGHT_MAX: usize = 16 << 10;

/// The calls' memory, as the steps name it. Made only by [`Bufs::checked`], so every range of
/// the plan lies within its buffer (the regions check again, one comparison each).
struct Bufs<'a> {
    calls: &'a [Call<'a>],
}

impl<'a> Bufs<'a> {
    /// Checks the calls' memory against how far the plan's steps reach, and that every peer
    /// has a link.
    fn checked(
        plan: &Plan,
        calls: &'a [Call<'a>],
        links: &[Option<Box<dyn Link>>],
    ) -> Result<Bufs<'a>> {
        for (call, end) in calls.iter().zip(&plan.ends) {
            let (lens, es) = (call.mem.lens(), call.params.dtype.size());
            for ((e, len), what) in end.iter().zip(lens).zip(["input", "output", "scratch"]) {
                let e = *e;
                if e.checked_mul(es).is_none_or(|b| b > len) {
                    return Err(Error::internal(format!(
                        "the Program reaches element {e} of the {what} buffer, which holds {len} bytes"
                    )));
                }
            }
        }
        for q in &plan.peers {
            if links.get(q.peer).is_none_or(|l| l.is_none()) {
                return Err(Error::internal(format!("no link to rank {}", q.peer)));
            }
        }
        Ok(Bufs { calls })
    }

    fn es(&self, j: usize) -> usize {
        self.calls[j].params.dtype.size()
    }

    /// Range `r` of job `j`'s memory, to read (or send from).
    #[inline]
    fn src(&self, j: usize, r: Range) -> Region<'a> {
        let (mem, es) = (&self.calls[j].mem, self.es(j));
        let (off, len) = (r.off * es, r.len * es);
        match r.buf {
            Buf::Input => mem.input(off, len),
            Buf::Output => mem.output(off, len).map(RegionMut::read),
            Buf::Scratch => mem.scratch(off, len).map(RegionMut::read),
        }
        .expect("within the buffer (Bufs::checked)")
    }

    /// Range `r` of job `j`'s memory, to write (or receive into). Programs never write Input.
    #[inline]
    fn dst(&self, j: usize, r: Range) -> RegionMut<'a> {
        let (mem, es) = (&self.calls[j].mem, self.es(j));
        let (off, len) = (r.off * es, r.len * es);
        match r.buf {
            Buf::Input => None,
            Buf::Output => mem.output(off, len),
            Buf::Scratch => mem.scratch(off, len),
        }
        .expect("within a writable buffer (Bufs::checked, algo::verify)")
    }

    /// While a step reads this range nothing writes it (program order: see
    /// [`crate::transport::mem`]).
    fn slice(&self, j: usize, r: Range) -> &'a [u8] {
        self.src(j, r).bytes()
    }

    /// While a step writes this range no other live access aliases it (program order).
    fn slice_mut(&self, j: usize, r: Range) -> &'a mut [u8] {
        self.dst(j, r).bytes_mut()
    }

    /// Runs local step `op` of job `j`.
    fn local(&self, j: usize, op: Op) {
        let p = &self.calls[j].params;
        match op {
            Op::Copy { src, dst } => self.slice_mut(j, dst).copy_from_slice(self.slice(j, src)),
            Op::Reduce { src, dst } => {
                reduce::reduce_bytes(p.dtype, p.op, self.slice_mut(j, dst), self.slice(j, src))
            }
            Op::Finish { dst } => {
                if p.op == ReduceOp::Avg {
                    reduce::finish_avg_bytes(p.dtype, self.slice_mut(j, dst), p.nranks)
                }
            }
            Op::Send { .. } | Op::Recv { .. } | Op::RecvReduce { .. } => {}
        }
    }

    /// Consumes message `data` from `peer` for receive step `op` of job `j`.
    fn deliver(&self, j: usize, op: Op, peer: usize, data: &[u8]) -> Result<()> {
        let p = &self.calls[j].params;
        let es = self.es(j);
        match op {
            Op::Recv { dst, .. } if data.len() == dst.len * es => {
                if data.as_ptr() != self.dst(j, dst).as_mut_ptr().cast_const() {
                    self.slice_mut(j, dst).copy_from_slice(data)
                }
            }
            Op::RecvReduce { dst, acc: None, .. } if data.len() == dst.len * es => {
                reduce::reduce_bytes(p.dtype, p.op, self.slice_mut(j, dst), data)
            }
            Op::RecvReduce {
                dst, acc: Some(a), ..
            } if data.len() == dst.len * es => reduce::reduce3_bytes(
                p.dtype,
                p.op,
                self.slice_mut(j, dst),
                self.slice(j, a),
                data,
            ),
            op => return Err(wrong_length(op, peer, data.len(), es)),
        }
        Ok(())
    }

    /// [`Bufs::deliver`] for a message the link left in the sender's memory
    /// ([`Link::pull_len`]): each piece the link reads is copied or reduced while in cache.
    fn deliver_pulled(&self, j: usize, op: Op, peer: usize, link: &mut dyn Link) -> Result<()> {
        let len = link.pull_len();
        if len == 0 {
            return self.deliver(j, op, peer, &[]);
        }
        let p = &self.calls[j].params;
        let es = self.es(j);
        match op {
            Op::Recv { dst, .. } if len == dst.len * es => {
                let d = self.slice_mut(j, dst);
                link.pull_recv(&mut |o, b| d[o..o + b.len()].copy_from_slice(b))
            }
            Op::RecvReduce { dst, acc: None, .. } if len == dst.len * es => {
                let d = self.slice_mut(j, dst);
                link.pull_recv(&mut |o, b| {
                    reduce::reduce_bytes(p.dtype, p.op, &mut d[o..o + b.len()], b)
                })
            }
            Op::RecvReduce {
                dst, acc: Some(a), ..
            } if len == dst.len * es => {
                let (d, a) = (self.slice_mut(j, dst), self.slice(j, a));
                link.pull_recv(&mut |o, b| {
                    let r = o..o + b.len();
                    reduce::reduce3_bytes(p.dtype, p.op, &mut d[r.clone()], &a[r], b)
                })
            }
            op => Err(wrong_length(op, peer, len, es)),
        }
    }
}

/// The error for a message of `len` bytes from `peer` that does not fit receive step `op`.
fn wrong_length(op: Op, peer: usize, len: usize, es: usize) -> Error {
    Error::mismatch(
        peer,
        format!(
            "rank {peer} sent {len} bytes where this rank expects {} ({op:?}); the ranks passed \
             different counts",
            op.writes().map(|r| r.len * es).unwrap_or(0),
        ),
    )
}

/// What an executor does when a round moved nothing: spin a while, then yield, then sleep on
/// the links (see [`crate::transport::wait`]); fail on an interrupt or at the timeout.
struct Idle<'a> {
    rounds: u32,
    /// When this idle stretch began, read from the clock only once spinning is over (a call
    /// that keeps moving never reads it).
    since: Option<Instant>,
    spin: u32,
    /// Made only when it first sleeps.
    waiter: Option<Waiter>,
    /// How long to yield before sleeping: [`YIELD_FOR`] while every link waited on is shm,
    /// [`YIELD_NET`] once one is not (worked out at the first yield).
    yield_for: Option<Duration>,
    abort: Option<Interrupt<'a>>,
    p: &'a Params,
}

impl<'a> Idle<'a> {
    fn new(p: &'a Params, abort: Option<Interrupt<'a>>) -> Idle<'a> {
        Idle {
            rounds: 0,
            since: None,
            // Worked out at the first idle round (a call that never waits never asks).
            spin: u32::MAX,
            waiter: None,
            yield_for: None,
            abort,
            p,
        }
    }

    /// How long this idle stretch has lasted (zero while still spinning).
    fn idle_for(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    fn interrupted(&self) -> Result<()> {
        match self.abort {
            Some(a) if a.raised() => Err(a.error(self.p.rank)),
            _ => Ok(()),
        }
    }

    /// Something moved: the next idle round starts a new stretch.
    fn moved(&mut self) {
        self.rounds = 0;
        self.since = None;
    }

    /// Waits a little after a round that moved nothing; `stalled` says what the call is waiting
    /// for when the timeout passes.
    fn wait(
        &mut self,
        links: &mut [Option<Box<dyn Link>>],
        peers: &[PeerSteps],
        stalled: impl FnOnce() -> Error,
    ) -> Result<()> {
        self.interrupted()?;
        if self.rounds == 0 {
            self.spin = wait::spin_rounds(SPIN_ROUNDS);
        }
        self.rounds += 1;
        if self.rounds <= self.spin {
            if let Some(w) = &mut self.waiter {
                w.disarm();
            }
            std::hint::spin_loop();
            return Ok(());
        }
        let now = Instant::now();
        let waited = now.duration_since(*self.since.get_or_insert(now));
        if waited >= self.p.timeout {
            return Err(stalled());
        }
        let yield_for = *self.yield_for.get_or_insert_with(|| {
            let net = peers.iter().any(|q| {
                links[q.peer]
                    .as_deref()
                    .is_some_and(|l| l.doorbell().is_none())
            });
            if net { YIELD_NET } else { YIELD_FOR }
        });
        if waited < yield_for || wait::never_sleep() {
            crate::sys::yield_now();
            return Ok(());
        }
        // Sleep: on this rank's shm doorbell when every link waited on is shm (the first call
        // only announces us, so the loop looks at every link once more), else in poll(2).
        let waiter = self.waiter.get_or_insert_with(Waiter::default);
        waiter.begin();
        for q in peers {
            waiter.add(links[q.peer].as_deref_mut().expect("checked"));
        }
        waiter.wait(self.p.timeout - waited)
    }
}

/// Runs a one-job plan step by step in program order (see [`Plan::in_order`]): a send is
/// complete once posted (the caller checked that the links say so), a receive is waited for
/// before the next step. The short path of a small call: none of the general loop's tables.
fn run_straight(
    plan: &Plan,
    bufs: &Bufs<'_>,
    links: &mut [Option<Box<dyn Link>>],
    abort: Option<Interrupt<'_>>,
) -> Result<()> {
    let p = &bufs.calls[0].params;
    let mut idle = Idle::new(p, abort);
    for (g, &op) in plan.ops.iter().enumerate() {
        match op {
            Op::Send { peer, src } => loop {
                let link = links[peer].as_mut().expect("checked");
                // Nothing writes the range while the send is in flight: the link copies it out
                // before post_send returns true.
                if link.post_send(&p.tag, bufs.src(0, src))? {
                    if link.take_send_completions() != 1 {
                        return Err(Error::internal(format!(
                            "the link to rank {peer} did not complete a send on posting"
                        )));
                    }
                    idle.moved();
                    break;
                }
                link.progress().map_err(|e| relayed(e, p.rank, peer))?;
                idle.wait(links, &plan.peers, || {
                    Error::timeout(
                        Some(peer),
                        format!("waiting for rank {peer} to take a send"),
                        p.timeout,
                    )
                })?;
            },
            Op::Recv { peer, .. } | Op::RecvReduce { peer, .. } => loop {
                let link = links[peer].as_mut().expect("checked");
                if let Some((tag, data)) = link.peek_recv().map_err(|e| relayed(e, p.rank, peer))? {
                    if tag != p.tag {
                        return Err(mismatch(peer, &tag, p));
                    }
                    bufs.deliver(0, op, peer, data)?;
                    link.release_recv();
                    idle.moved();
                    break;
                }
                link.progress().map_err(|e| relayed(e, p.rank, peer))?;
                if idle.rounds >= idle.spin {
                    later_mismatch(&plan.ops[g + 1..], links, p)?;
                }
                idle.wait(links, &plan.peers, || {
                    Error::timeout(
                        Some(peer),
                        format!("waiting for a message from rank {peer}"),
                        p.timeout,
                    )
                })?;
            },
            local => bufs.local(0, local),
        }
    }
    Ok(())
}

/// A message already waiting for one of the receives `rest` that is not for this call: a
/// mismatch to report now rather than at the timeout (in-order plans receive once per peer).
fn later_mismatch(rest: &[Op], links: &mut [Option<Box<dyn Link>>], p: &Params) -> Result<()> {
    for op in rest {
        if let Op::Recv { peer, .. } | Op::RecvReduce { peer, .. } = *op {
            let link = links[peer].as_mut().expect("checked");
            if let Some((tag, _)) = link.peek_recv().map_err(|e| relayed(e, p.rank, peer))? {
                if tag != p.tag {
                    return Err(mismatch(peer, &tag, p));
                }
            }
        }
    }
    Ok(())
}

fn run_inner(
    plan: &Plan,
    bufs: &Bufs<'_>,
    links: &mut [Option<Box<dyn Link>>],
    st: &mut State,
    failed_job: &mut usize,
    abort: Option<Interrupt<'_>>,
) -> Result<()> {
    let mut rounds = 0u32;
    let jobs = bufs.calls;
    let p0 = jobs[0].params;
    let Plan {
        ops,
        job_of,
        deps,
        dep_start,
        dep_list,
        peers,
        ready,
        ..
    } = plan;
    let State {
        remaining,
        ready_local,
        cursors,
        ..
    } = st;
    let n = ops.len();
    let op_of = |g: u32| -> (usize, Op) { (job_of[g as usize] as usize, ops[g as usize]) };
    remaining.clear();
    remaining.extend_from_slice(deps);
    ready_local.clear();
    ready_local.extend_from_slice(ready);
    if cursors.len() < peers.len() {
        cursors.resize_with(peers.len(), Cursor::default);
    }
    for (c, q) in cursors.iter_mut().zip(peers) {
        c.next_send = 0;
        c.next_recv = 0;
        c.posted = 0;
        c.inflight.clear();
        c.base = links[q.peer].as_ref().map_or(0, |l| l.released());
    }
    let mut done = 0usize;
    let dependents =
        |g: u32| &dep_list[dep_start[g as usize] as usize..dep_start[g as usize + 1] as usize];
    let complete =
        |g: u32, remaining: &mut Vec<u32>, ready_local: &mut Vec<u32>, done: &mut usize| {
            *done += 1;
            for &d in dependents(g) {
                remaining[d as usize] -= 1;
                if remaining[d as usize] == 0 && op_of(d).1.peer().is_none() {
                    ready_local.push(d);
                }
            }
        };

    let mut idle = Idle::new(&p0, abort);
    while done < n {
        let mut moved = false;
        while let Some(g) = ready_local.pop() {
            let (j, op) = op_of(g);
            bufs.local(j, op);
            complete(g, remaining, ready_local, &mut done);
            moved = true;
        }
        for (q, c) in peers.iter().zip(cursors.iter_mut()) {
            let link = links[q.peer].as_mut().expect("validated above");
            moved |= link.progress().map_err(|e| relayed(e, p0.rank, q.peer))?;
            while let Some(&g) = q.sends.get(c.next_send) {
                if remaining[g as usize] > 0 {
                    break;
                }
                let (j, Op::Send { src, .. }) = op_of(g) else {
                    unreachable!()
                };
                *failed_job = j;
                // The range stays valid and unwritten until the send completes: later writers
                // of it depend on this step, which completes only on link completion.
                if !link.post_send(&jobs[j].params.tag, bufs.src(j, src))? {
                    break;
                }
                c.inflight.push_back(g);
                c.next_send += 1;
                moved = true;
            }
            // Completions after posting: a link that completes a send as it posts it (shm)
            // then frees the memory it read at once, so a receive into that memory is offered
            // below, before this round spends its time reducing what already arrived (else the
            // peer's message would beat the offer, and take the slot and a second copy).
            for _ in 0..link.take_send_completions() {
                let g = c
                    .inflight
                    .pop_front()
                    .ok_or_else(|| Error::internal("phantom send completion"))?;
                complete(g, remaining, ready_local, &mut done);
                moved = true;
            }
            // Offer final destinations for plain receives whose memory is free, so the link can
            // place them directly (RDMA's posted receive): no copy out of a slot.
            c.posted = c.posted.max(c.next_recv);
            while c.posted < (c.next_recv + POST_AHEAD).min(q.recvs.len()) {
                let g = q.recvs[c.posted];
                if remaining[g as usize] > 0 {
                    break;
                }
                if let (j, Op::Recv { dst, .. }) = op_of(g) {
                    // dst is free (its dependencies are done); nothing else touches it until
                    // this receive completes, and cancel_recvs runs before this call returns.
                    link.post_recv(c.base + c.posted as u64, bufs.dst(j, dst));
                }
                c.posted += 1;
            }
            // A message that arrived for a call this rank is not making is a mismatch, and is
            // one even if the receive it would match is not ready yet: say so now, not at the
            // timeout (the peer is owed a message, so its next one must be for this call).
            // (A receive that is ready compares the tag below; only a blocked one looks here.)
            if let Some(&g) = q
                .recvs
                .get(c.next_recv)
                .filter(|&&g| remaining[g as usize] > 0)
            {
                let j = op_of(g).0;
                let peeked = link.peek_recv().map_err(|e| relayed(e, p0.rank, q.peer))?;
                if let Some((tag, _)) = peeked {
                    if tag != jobs[j].params.tag {
                        *failed_job = j;
                        return Err(mismatch(q.peer, &tag, &jobs[j].params));
                    }
                }
            }
            while let Some(&g) = q.recvs.get(c.next_recv) {
                if remaining[g as usize] > 0 {
                    break;
                }
                let (j, op) = op_of(g);
                *failed_job = j;
                let p = &jobs[j].params;
                let Some((tag, data)) =
                    link.peek_recv().map_err(|e| relayed(e, p0.rank, q.peer))?
                else {
                    break;
                };
                if tag != p.tag {
                    return Err(mismatch(q.peer, &tag, p));
                }
                if data.is_empty() {
                    bufs.deliver_pulled(j, op, q.peer, &mut **link)?;
                } else {
                    bufs.deliver(j, op, q.peer, data)?;
                }
                link.release_recv();
                c.next_recv += 1;
                complete(g, remaining, ready_local, &mut done);
                moved = true;
            }
        }
        rounds = rounds.wrapping_add(1);
        if moved {
            if rounds % 4096 == 0 {
                idle.interrupted()?;
            }
            idle.moved();
            continue;
        }
        if done == n {
            break;
        }
        // A send the link holds for its peer to take (shm's single-copy paths) that a receive
        // of ours waits for while its own message has arrived: after a short while idle, have
        // the links copy their held sends out. The peer is then most likely waiting for us the
        // same way (both exchanging in place), and neither would move. Idle much longer, do it
        // whatever we wait for (a backstop for any other shape of mutual waiting).
        let idle_for = idle.idle_for();
        if idle_for >= SETTLE_AFTER
            && (idle_for >= SETTLE_ANYWAY
                || blocked_arrival(
                    p0.rank,
                    peers,
                    cursors,
                    remaining,
                    // Whether step g waits for a send in flight on any link.
                    |g| {
                        cursors
                            .iter()
                            .flat_map(|c| c.inflight.iter())
                            .any(|&s| dependents(s).contains(&g))
                    },
                    links,
                )?)
        {
            let mut settled = false;
            for (q, c) in peers.iter().zip(cursors.iter()) {
                let waited_on = c.inflight.iter().any(|&g| {
                    let g = g as usize;
                    dep_start[g + 1] > dep_start[g]
                });
                if waited_on {
                    let link = links[q.peer].as_mut().expect("validated above");
                    settled |= link
                        .settle_sends()
                        .map_err(|e| relayed(e, p0.rank, q.peer))?;
                }
            }
            if settled {
                idle.moved();
                continue;
            }
        }
        idle.wait(links, peers, || {
            timeout_error(peers, cursors, remaining, &p0)
        })?;
    }
    Ok(())
}

/// Whether a receive whose message has arrived waits for a send of ours still in flight: the
/// shape of two ranks each holding a send for the other and receiving into its own source (an
/// exchange in place), where settling held sends is what lets both move. A receive still
/// waiting for its message does not count (the peer has not got there yet, and a held send
/// completes when the peer releases it), nor does one waiting only for other steps.
fn blocked_arrival(
    rank: usize,
    peers: &[PeerSteps],
    cursors: &[Cursor],
    remaining: &[u32],
    dependents: impl Fn(u32) -> bool,
    links: &mut [Option<Box<dyn Link>>],
) -> Result<bool> {
    for (q, c) in peers.iter().zip(cursors.iter()) {
        let Some(&g) = q.recvs.get(c.next_recv) else {
            continue;
        };
        if remaining[g as usize] == 0 || !dependents(g) {
            continue;
        }
        let link = links[q.peer].as_mut().expect("validated above");
        if link
            .peek_recv()
            .map_err(|e| relayed(e, rank, q.peer))?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn mismatch(peer: usize, theirs: &Tag, p: &Params) -> Error {
    Error::mismatch(
        peer,
        format!(
            "rank {peer} called {} but rank {} called {}; every rank must make the same collective \
             calls in the same order with the same count, type, operator and root",
            describe(theirs),
            p.rank,
            describe(&p.tag)
        ),
    )
}

fn timeout_error(peers: &[PeerSteps], cursors: &[Cursor], remaining: &[u32], p: &Params) -> Error {
    let mut waiting: Vec<String> = Vec::new();
    let mut first = None;
    for (q, c) in peers.iter().zip(cursors) {
        if let Some(&i) = q.recvs.get(c.next_recv) {
            if remaining[i as usize] == 0 {
                waiting.push(format!("a message from rank {}", q.peer));
                first.get_or_insert(q.peer);
            }
        }
        if !c.inflight.is_empty() {
            waiting.push(format!(
                "rank {} to take {} sends",
                q.peer,
                c.inflight.len()
            ));
            first.get_or_insert(q.peer);
        }
    }
    let what = if waiting.is_empty() {
        "progress".to_string()
    } else {
        waiting.join(", ")
    };
    Error::timeout(first, format!("waiting for {what}"), p.timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{self, Algorithm, Shape};

    #[test]
    fn a_relayed_error_naming_us_names_its_reporter() {
        // Rank 2 gave up waiting for rank 1 (us) and said so in its abort: from here the rank
        // to name is 2. The same words raised here (a link's own error) stay as they are.
        let report = Error::timed_out(Some(1), "waited for rank 1");
        let relayed_here = relayed(report.clone().reported_by_rank(2), 1, 2);
        assert_eq!(relayed_here.peer(), Some(2));
        assert_eq!(relayed_here.reported_by(), Some(2));
        assert_eq!(relayed_here.message(), "waited for rank 1");
        assert_eq!(relayed(report.clone(), 1, 2).peer(), Some(1));
        let other = Error::peer_lost(3, "rank 3 died").reported_by_rank(2);
        assert_eq!(relayed(other, 1, 2).peer(), Some(3));
    }

    fn params(nranks: usize) -> Params {
        Params {
            dtype: DataType::F32,
            op: ReduceOp::Sum,
            rank: 0,
            nranks,
            timeout: Duration::from_secs(5),
            tag: Tag {
                seq: 1,
                count: 4,
                coll: Collective::AllReduce as u8,
                dtype: DataType::F32 as i32 as u8,
                op: ReduceOp::Sum as i32 as u8,
                root: u32::MAX,
            },
        }
    }

    fn mem<'a>(input: &'a [f32], output: &'a mut [f32]) -> CallMem<'a> {
        CallMem::from_slices(
            Some(bytemuck::cast_slice(input)),
            Some(bytemuck::cast_slice_mut(output)),
        )
    }

    fn in_place(buf: &mut [f32]) -> CallMem<'_> {
        CallMem::from_slices(None, Some(bytemuck::cast_slice_mut(buf)))
    }

    #[test]
    fn a_plan_runs_its_program_and_refuses_memory_too_small_for_it() {
        let prog = algo::build(Algorithm::Ring, &Shape::all_reduce(1, 0, 4, false, 4)).unwrap();
        let plan = Plan::new(&[&prog]);
        assert_eq!((plan.jobs(), plan.peers().count()), (1, 0));
        let input = [1.0f32, 2.0, 3.0, 4.0];
        let mut links: Vec<Option<Box<dyn Link>>> = vec![None];
        let mut out = [0.0f32; 4];
        let call = Call {
            mem: mem(&input, &mut out),
            params: params(1),
        };
        run_planned(&plan, &[call], &mut links, None).unwrap();
        assert_eq!(out, input);
        // An output one element short: refused before anything is written.
        let mut short = [0.0f32; 3];
        let call = Call {
            mem: mem(&input, &mut short),
            params: params(1),
        };
        // The executor must refuse the short buffer without touching it.
        let e = run_planned(&plan, &[call], &mut links, None).unwrap_err();
        assert!(
            e.message()
                .contains("reaches element 4 of the output buffer"),
            "{e}"
        );
        assert_eq!(short, [0.0; 3]);
        // A plan for one Program takes exactly one call.
        let (mut out1, mut out2) = ([0.0f32; 4], [0.0f32; 4]);
        let calls = [
            Call {
                mem: mem(&input, &mut out1),
                params: params(1),
            },
            Call {
                mem: mem(&input, &mut out2),
                params: params(1),
            },
        ];
        let e = run_planned(&plan, &calls, &mut links, None).unwrap_err();
        assert!(e.message().contains("2 calls for a plan of 1"), "{e}");
    }

    #[test]
    fn a_plan_lists_its_peers_and_needs_a_link_to_each() {
        let prog = algo::build(Algorithm::Ring, &Shape::all_reduce(3, 0, 6, true, 6)).unwrap();
        let plan = Plan::new(&[&prog]);
        let mut peers: Vec<usize> = plan.peers().collect();
        peers.sort_unstable();
        assert_eq!(peers, prog.peers());
        let mut buf = [1.0f32; 6];
        let call = Call {
            mem: in_place(&mut buf),
            params: params(3),
        };
        let mut links: Vec<Option<Box<dyn Link>>> = vec![None, None, None];
        // Refused before any memory is looked at: there are no links.
        let e = run_planned(&plan, &[call], &mut links, None).unwrap_err();
        assert!(e.message().contains("no link to rank"), "{e}");
    }

    #[test]
    fn one_shot_programs_run_in_order_and_pipelined_ones_do_not() {
        let plan = |algo, n, count, chunk| {
            let progs: Vec<Program> = (0..n)
                .map(|r| algo::build(algo, &Shape::all_reduce(n, r, count, false, chunk)).unwrap())
                .collect();
            progs
                .iter()
                .map(|p| Plan::new(&[p]).straight)
                .collect::<Vec<bool>>()
        };
        // Direct, one slice: every rank sends to everyone, then receives from everyone.
        assert!(plan(Algorithm::Direct, 2, 5, 1 << 20).iter().all(|&s| s));
        assert!(plan(Algorithm::Direct, 5, 7, 1 << 20).iter().all(|&s| s));
        // Several slices send again after receiving; a ring forwards what it received.
        assert!(plan(Algorithm::Direct, 3, 64, 8).iter().all(|&s| !s));
        assert!(plan(Algorithm::Ring, 4, 64, 64).iter().all(|&s| !s));
        // A group is never run in order.
        let p = algo::build(Algorithm::Direct, &Shape::all_reduce(2, 0, 5, false, 64)).unwrap();
        assert!(!Plan::new(&[&p, &p]).straight);
    }

    /// A link whose peer has already sent everything: `inbox` in order, every send complete
    /// as it is posted (as over shm); it records offers and releases in `log`.
    struct Scripted {
        inbox: Vec<(Tag, Vec<u8>)>,
        next: usize,
        sent: usize,
        log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Link for Scripted {
        fn peer(&self) -> usize {
            1
        }
        fn max_message(&self) -> usize {
            1 << 20
        }
        fn post_send(&mut self, _: &Tag, _: Region<'_>) -> Result<bool> {
            self.sent += 1;
            Ok(true)
        }
        fn progress(&mut self) -> Result<bool> {
            Ok(false)
        }
        fn take_send_completions(&mut self) -> usize {
            std::mem::take(&mut self.sent)
        }
        fn completes_on_post(&self) -> bool {
            true
        }
        fn peek_recv(&mut self) -> Result<Option<(Tag, &[u8])>> {
            Ok(self.inbox.get(self.next).map(|(t, d)| (*t, &d[..])))
        }
        fn release_recv(&mut self) {
            self.log
                .lock()
                .unwrap()
                .push(format!("release {}", self.next));
            self.next += 1;
        }
        fn post_recv(&mut self, index: u64, _: RegionMut<'_>) {
            self.log.lock().unwrap().push(format!("offer {index}"));
        }
        fn released(&self) -> u64 {
            self.next as u64
        }
        fn wait_interest(&self, _: &mut Vec<libc::pollfd>) {}
        fn send_abort(&mut self, _: &Error) {}
        fn transport(&self) -> &'static str {
            "scripted"
        }
    }

    /// In place, a 2-rank ring's all-gather receive lands where this rank's reduce-scatter send
    /// read from: the send's completion (at posting, over shm) must make the receive's offer
    /// go out before the round spends its time reducing what already arrived, or the peer's
    /// message beats the offer and costs a second copy.
    #[test]
    fn a_receive_freed_by_a_send_is_offered_before_earlier_messages_are_reduced() {
        let count = 8;
        let prog = algo::build(Algorithm::Ring, &Shape::all_reduce(2, 0, count, true, 4)).unwrap();
        let plan = Plan::new(&[&prog]);
        let p = Params {
            tag: Tag {
                count: count as u64,
                ..params(2).tag
            },
            ..params(2)
        };
        let half = vec![0u8; count / 2 * 4];
        // One message for the reduce-scatter, one for the all-gather (index 1).
        let inbox = (0..2).map(|_| (p.tag, half.clone())).collect();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let link = Scripted {
            inbox,
            next: 0,
            sent: 0,
            log: log.clone(),
        };
        let mut links: Vec<Option<Box<dyn Link>>> = vec![None, Some(Box::new(link))];
        let mut buf = vec![1.0f32; count];
        let call = Call {
            mem: in_place(&mut buf),
            params: p,
        };
        run_planned(&plan, &[call], &mut links, None).unwrap();
        let log = log.lock().unwrap();
        let offer = log.iter().position(|e| e == "offer 1");
        let first_release = log.iter().position(|e| e == "release 0");
        assert!(
            offer.is_some() && offer < first_release,
            "the all-gather receive was offered late: {log:?}"
        );
        // Rank 0 reduced the peer's zeros into its second half and received its first.
        assert_eq!(buf, [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    }

    /// The settle trigger: a receive whose message has arrived but which waits for one of our
    /// held sends (two ranks exchanging in place) counts; the same receive with no message yet,
    /// or waiting for nothing, does not.
    #[test]
    fn only_an_arrived_receive_waiting_on_a_held_send_asks_for_settling() {
        // The direct pair in place, rank 0: send the buffer, then reduce the peer's into it.
        let prog = algo::build(Algorithm::Direct, &Shape::all_reduce(2, 0, 8, true, 8)).unwrap();
        let plan = Plan::new(&[&prog]);
        let q = &plan.peers[0];
        let (send, recv) = (q.sends[0], q.recvs[0]);
        let dependents = |g: u32| {
            &plan.dep_list
                [plan.dep_start[g as usize] as usize..plan.dep_start[g as usize + 1] as usize]
        };
        assert!(
            dependents(send).contains(&recv),
            "the receive must wait for the send"
        );
        let tag = params(2).tag;
        let link = |arrived: bool| -> Vec<Option<Box<dyn Link>>> {
            let inbox = if arrived {
                vec![(tag, vec![0u8; 32])]
            } else {
                Vec::new()
            };
            let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            vec![
                None,
                Some(Box::new(Scripted {
                    inbox,
                    next: 0,
                    sent: 0,
                    log,
                })),
            ]
        };
        // The send posted and still held; the receive next on the link, waiting for it.
        let cursors = vec![Cursor {
            next_send: 1,
            inflight: [send].into_iter().collect(),
            ..Cursor::default()
        }];
        let waits_on_held = |g: u32| {
            cursors
                .iter()
                .flat_map(|c| c.inflight.iter())
                .any(|&s| dependents(s).contains(&g))
        };
        let mut remaining = plan.deps.clone();
        remaining[send as usize] = 0;
        let ask = |remaining: &[u32], arrived: bool| {
            blocked_arrival(
                0,
                &plan.peers,
                &cursors,
                remaining,
                waits_on_held,
                &mut link(arrived),
            )
            .unwrap()
        };
        assert!(
            ask(&remaining, true),
            "arrived and blocked by the held send"
        );
        assert!(!ask(&remaining, false), "the peer has not sent yet");
        // Blocked by something other than a send in flight: not the exchange's shape.
        let other = blocked_arrival(
            0,
            &plan.peers,
            &cursors,
            &remaining,
            |_| false,
            &mut link(true),
        );
        assert!(!other.unwrap(), "blocked, but not by a held send");
        // Once the send completed the receive waits for nothing.
        remaining[recv as usize] = 0;
        assert!(!ask(&remaining, true), "nothing holds the receive");
    }
}
