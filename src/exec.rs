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
//! [`Error::Mismatch`] naming both calls. On any error the executor sends an abort to every
//! peer, so ranks that are not talking to the failed one learn of it too.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Error;
use crate::algo::{Buf, Collective, Op, Program, Range};
use crate::error::Result;
use crate::reduce::{self, DataType, ReduceOp};
use crate::transport::wait::{self, Waiter};
use crate::transport::{Link, Tag};

/// The memory one collective works on. Lengths are in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Mem {
    /// The send buffer (never written). Equal to `output` for in-place calls.
    pub input: *const u8,
    /// Its length in bytes.
    pub input_len: usize,
    /// The receive buffer.
    pub output: *mut u8,
    /// Its length in bytes.
    pub output_len: usize,
    /// Scratch space of at least the Program's `scratch_len` elements.
    pub scratch: *mut u8,
    /// Its length in bytes.
    pub scratch_len: usize,
}

/// What the executor needs besides the Program and the links.
#[derive(Debug, Clone, Copy)]
pub struct Params {
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
pub fn describe(tag: &Tag) -> String {
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
    if e.peer() != Some(me) || !crate::transport::tcp::is_remote(&e) {
        return e;
    }
    let msg = e.message().to_string();
    Error::from_parts(e.code(), Some(from), msg)
}

/// Prefixes an error's message with where it happened.
fn in_context(e: Error, p: &Params) -> Error {
    let prefix = format!("{} on rank {}", describe(&p.tag), p.rank);
    let msg = format!("{prefix}: {}", e.message());
    match e {
        Error::PeerLost { peer, .. } => Error::PeerLost { peer, msg },
        Error::Timeout { peer, .. } => Error::Timeout { peer, msg },
        Error::Mismatch { peer, .. } => Error::Mismatch { peer, msg },
        other => Error::from_parts(other.code(), other.peer(), msg),
    }
}

#[derive(Default)]
struct PeerQ {
    peer: usize,
    sends: Vec<u32>,
    next_send: usize,
    inflight: VecDeque<u32>,
    recvs: Vec<u32>,
    next_recv: usize,
    /// Receives up to this index have been considered for posting.
    posted: usize,
    /// The link's count of released messages when this run began: receive k of this run is
    /// the link's message `base + k` (the index `Link::post_recv` takes).
    base: u64,
}

/// The executor's working tables, kept per thread between calls (see [`Tables::take`]).
#[derive(Default)]
struct Tables {
    base: Vec<usize>,
    job_of: Vec<u32>,
    remaining: Vec<u32>,
    dep_start: Vec<u32>,
    dep_list: Vec<u32>,
    queues: Vec<PeerQ>,
    /// Cleared queues whose vectors keep their capacity.
    spare: Vec<PeerQ>,
    /// Peer -> index in `queues`, usize::MAX for none; all usize::MAX between runs.
    qidx: Vec<usize>,
    ready_local: Vec<u32>,
}

thread_local! {
    static TABLES: std::cell::Cell<Option<Box<Tables>>> = const { std::cell::Cell::new(None) };
}

/// Tables for at most this many steps and ranks are kept for the thread's next call: small
/// calls are the ones whose time allocation would show in; keeping big tables alive between
/// calls only fragments the heap.
const KEEP_STEPS: usize = 1024;
const KEEP_RANKS: usize = 1 << 16;

impl Tables {
    /// This thread's tables, empty (or new ones).
    fn take() -> Box<Tables> {
        TABLES.with(|c| c.take()).unwrap_or_default()
    }

    /// Clears the tables, keeping their memory, and keeps them for the thread's next call.
    fn give_back(mut self: Box<Self>) {
        if self.remaining.capacity() > KEEP_STEPS || self.qidx.len() > KEEP_RANKS {
            return;
        }
        for mut q in self.queues.drain(..) {
            self.qidx[q.peer] = usize::MAX;
            q.sends.clear();
            q.recvs.clear();
            q.inflight.clear();
            q.next_send = 0;
            q.next_recv = 0;
            q.posted = 0;
            self.spare.push(q);
        }
        self.base.clear();
        self.job_of.clear();
        self.remaining.clear();
        self.dep_start.clear();
        self.dep_list.clear();
        self.ready_local.clear();
        TABLES.with(|c| c.set(Some(self)));
    }
}

/// How many receives ahead of the next one the executor offers destinations for.
const POST_AHEAD: usize = 16;

/// Spin this many idle rounds before yielding, and yield this long before sleeping in poll.
const SPIN_ROUNDS: u32 = 64;
const YIELD_FOR: Duration = Duration::from_micros(2000);

/// One Program with its memory and parameters: an element of a group run by [`run_jobs`].
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// This rank's part of the call.
    pub prog: &'a Program,
    /// The call's buffers.
    pub mem: Mem,
    /// The call's type, operator and signature.
    pub params: Params,
}

/// Runs `prog` to completion.
///
/// # Safety
/// `mem` must describe live, properly sized buffers that nothing else reads or writes during the
/// call (input may only be read); `input` and `output` may be the same memory only if the Program
/// was built in place (then it never names `Input`).
pub unsafe fn run(
    prog: &Program,
    mem: &Mem,
    links: &mut [Option<Box<dyn Link>>],
    p: &Params,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        run_jobs(
            &[Job {
                prog,
                mem: *mem,
                params: *p,
            }],
            links,
        )
    }
}

/// Runs several Programs together (a group): they progress concurrently and share the links.
/// On each link, messages keep job order (all of job 0's sends to a peer precede job 1's), which
/// every rank agrees on because it issued the calls in the same order.
///
/// # Safety
/// As [`run`], for every job; the jobs' buffers must not overlap each other (except a job's own
/// input and output when it is in place).
pub unsafe fn run_jobs(jobs: &[Job<'_>], links: &mut [Option<Box<dyn Link>>]) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe { run_jobs_abortable(jobs, links, None) }
}

/// What interrupts a running call: `flag` becoming true (checked whenever the executor would
/// wait, and every few thousand rounds). `why` holds the reason when it is a revoke (a peer
/// found lost by heartbeats, say): the call fails with it and peers are sent it; with `why`
/// empty it is `abort()` on this rank.
#[derive(Clone, Copy)]
pub struct Interrupt<'a> {
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
                Error::InvalidUsage(format!(
                    "the call was interrupted by abort() on rank {rank}"
                ))
            })
    }
}

/// [`run_jobs`], giving up with an error soon after `abort` is raised (see [`Interrupt`]).
///
/// # Safety
/// As [`run_jobs`].
pub unsafe fn run_jobs_abortable(
    jobs: &[Job<'_>],
    links: &mut [Option<Box<dyn Link>>],
    abort: Option<Interrupt<'_>>,
) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let mut failed_job = 0;
    let mut t = Tables::take();
    // SAFETY: forwarded from this function's contract.
    let r = unsafe { run_inner(jobs, links, &mut t, &mut failed_job, abort) };
    // No posted destination may outlive the call: the caller's buffers are only borrowed.
    // Only the links this run used can hold one.
    for q in &t.queues {
        if let Some(l) = links.get_mut(q.peer).and_then(|l| l.as_mut()) {
            l.cancel_recvs();
        }
    }
    t.give_back();
    if let Err(e) = &r {
        // A call interrupted by abort() tells peers that this rank gave up (a remote failure
        // naming it); any other error, a revoke's included, travels as it is.
        let interrupted =
            abort.is_some_and(|a| a.raised() && a.why.lock().is_ok_and(|w| w.is_none()));
        let wire = if interrupted {
            let rank = jobs[0].params.rank;
            Error::PeerLost {
                peer: rank,
                msg: format!("rank {rank} aborted the communicator"),
            }
        } else {
            e.clone()
        };
        for l in links.iter_mut().flatten() {
            l.send_abort(&wire);
        }
    }
    r.map_err(|e| in_context(e, &jobs[failed_job.min(jobs.len() - 1)].params))
}

unsafe fn run_inner(
    jobs: &[Job<'_>],
    links: &mut [Option<Box<dyn Link>>],
    t: &mut Tables,
    failed_job: &mut usize,
    abort: Option<Interrupt<'_>>,
) -> Result<()> {
    let aborted = || abort.is_some_and(|a| a.raised());
    let mut rounds = 0u32;
    let p0 = jobs[0].params;
    // Global step ids: job j's step i is base[j] + i. The tables live on in this thread
    // (`Tables`) so a call allocates nothing once the thread has run one like it.
    let Tables {
        base,
        job_of,
        remaining,
        dep_start,
        dep_list,
        queues,
        spare,
        qidx,
        ready_local,
    } = t;
    base.push(0usize);
    for (j, job) in jobs.iter().enumerate() {
        base.push(base[j] + job.prog.steps.len());
        job_of.extend(std::iter::repeat_n(j as u32, job.prog.steps.len()));
    }
    let n = base[jobs.len()];
    let op_of = |g: u32| -> (usize, Op) {
        let j = job_of[g as usize] as usize;
        (j, jobs[j].prog.steps[g as usize - base[j]].op)
    };
    // Validate every range up front: after this, slices built from `mem` are in bounds.
    for job in jobs {
        let (mem, es) = (&job.mem, job.params.dtype.size());
        let blen = |b: Buf| match b {
            Buf::Input => mem.input_len,
            Buf::Output => mem.output_len,
            Buf::Scratch => mem.scratch_len,
        };
        for s in &job.prog.steps {
            for r in s.op.reads().chain(s.op.writes()) {
                if r.end().checked_mul(es).is_none_or(|e| e > blen(r.buf)) {
                    return Err(Error::Internal(format!(
                        "step {:?} is outside its buffer",
                        s.op
                    )));
                }
            }
            if let Some(peer) = s.op.peer() {
                if links.get(peer).is_none_or(|l| l.is_none()) {
                    return Err(Error::Internal(format!(
                        "no link to rank {peer} for step {:?}",
                        s.op
                    )));
                }
            }
        }
    }
    let es = |j: usize| jobs[j].params.dtype.size();
    let ptr = |j: usize, r: Range| -> *mut u8 {
        let mem = &jobs[j].mem;
        let base = match r.buf {
            Buf::Input => mem.input.cast_mut(),
            Buf::Output => mem.output,
            Buf::Scratch => mem.scratch,
        };
        // SAFETY: validated above to be within the buffer.
        unsafe { base.add(r.off * es(j)) }
    };
    let slice = |j: usize, r: Range| -> &[u8] {
        // SAFETY: ranges are in bounds (validated above); the Program orders every pair of steps
        // touching overlapping memory (proven by algo::verify), and jobs do not overlap, so
        // while a step reads this range nothing writes it.
        unsafe { std::slice::from_raw_parts(ptr(j, r), r.len * es(j)) }
    };
    #[allow(clippy::mut_from_ref)]
    let slice_mut = |j: usize, r: Range| -> &mut [u8] {
        // SAFETY: as above; while a step writes this range no other live access aliases it.
        unsafe { std::slice::from_raw_parts_mut(ptr(j, r), r.len * es(j)) }
    };

    // Dependents in CSR form: step g's are dep_list[dep_start[g]..dep_start[g + 1]].
    dep_start.resize(n + 1, 0);
    for (j, job) in jobs.iter().enumerate() {
        for s in &job.prog.steps {
            remaining.push(s.deps.len() as u32);
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
    for (j, job) in jobs.iter().enumerate() {
        for (i, s) in job.prog.steps.iter().enumerate() {
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
    if qidx.len() < p0.nranks {
        qidx.resize(p0.nranks, usize::MAX);
    }
    for g in 0..n as u32 {
        let (_, op) = op_of(g);
        match op.peer() {
            Some(peer) => {
                if qidx[peer] == usize::MAX {
                    qidx[peer] = queues.len();
                    let mut q = spare.pop().unwrap_or_default();
                    q.peer = peer;
                    q.base = links[peer].as_ref().map_or(0, |l| l.released());
                    queues.push(q);
                }
                let q = &mut queues[qidx[peer]];
                if matches!(op, Op::Send { .. }) {
                    q.sends.push(g)
                } else {
                    q.recvs.push(g)
                }
            }
            None if remaining[g as usize] == 0 => ready_local.push(g),
            None => {}
        }
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

    let mut idle = 0u32;
    // When this idle stretch began, read from the clock only once spinning is over (a call
    // that keeps moving never reads it).
    let mut idle_since: Option<Instant> = None;
    let mut waiter = Waiter::new(SPIN_ROUNDS);
    while done < n {
        let mut moved = false;
        while let Some(g) = ready_local.pop() {
            let (j, op) = op_of(g);
            let p = &jobs[j].params;
            match op {
                Op::Copy { src, dst } => slice_mut(j, dst).copy_from_slice(slice(j, src)),
                Op::Reduce { src, dst } => {
                    reduce::reduce_bytes(p.dtype, p.op, slice_mut(j, dst), slice(j, src))
                }
                Op::Finish { dst } => {
                    if p.op == ReduceOp::Avg {
                        reduce::finish_avg_bytes(p.dtype, slice_mut(j, dst), p.nranks)
                    }
                }
                _ => unreachable!("only local steps are queued here"),
            }
            complete(g, remaining, ready_local, &mut done);
            moved = true;
        }
        for q in queues.iter_mut() {
            let link = links[q.peer].as_mut().expect("validated above");
            moved |= link.progress().map_err(|e| relayed(e, p0.rank, q.peer))?;
            for _ in 0..link.take_send_completions() {
                let g = q
                    .inflight
                    .pop_front()
                    .ok_or_else(|| Error::Internal("phantom send completion".into()))?;
                complete(g, remaining, ready_local, &mut done);
                moved = true;
            }
            while let Some(&g) = q.sends.get(q.next_send) {
                if remaining[g as usize] > 0 {
                    break;
                }
                let (j, Op::Send { src, .. }) = op_of(g) else {
                    unreachable!()
                };
                *failed_job = j;
                // SAFETY: the range stays valid and unwritten until the send completes: later
                // writers of it depend on this step, which completes only on link completion.
                if !unsafe { link.post_send(&jobs[j].params.tag, ptr(j, src), src.len * es(j))? } {
                    break;
                }
                q.inflight.push_back(g);
                q.next_send += 1;
                moved = true;
            }
            // Offer final destinations for plain receives whose memory is free, so the link can
            // place them directly (RDMA's posted receive): no copy out of a slot.
            q.posted = q.posted.max(q.next_recv);
            while q.posted < (q.next_recv + POST_AHEAD).min(q.recvs.len()) {
                let g = q.recvs[q.posted];
                if remaining[g as usize] > 0 {
                    break;
                }
                if let (j, Op::Recv { dst, .. }) = op_of(g) {
                    // SAFETY: dst is in bounds and free (its dependencies are done); nothing
                    // else touches it until this receive completes, and cancel_recvs runs
                    // before this call returns.
                    unsafe {
                        link.post_recv(q.base + q.posted as u64, ptr(j, dst), dst.len * es(j))
                    };
                }
                q.posted += 1;
            }
            // A message that arrived for a call this rank is not making is a mismatch, and is
            // one even if the receive it would match is not ready yet: say so now, not at the
            // timeout (the peer is owed a message, so its next one must be for this call).
            // (A receive that is ready compares the tag below; only a blocked one looks here.)
            if let Some(&g) = q
                .recvs
                .get(q.next_recv)
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
            while let Some(&g) = q.recvs.get(q.next_recv) {
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
                let es = es(j);
                match op {
                    Op::Recv { dst, .. } if data.len() == dst.len * es => {
                        if data.as_ptr() != ptr(j, dst).cast_const() {
                            slice_mut(j, dst).copy_from_slice(data)
                        }
                    }
                    Op::RecvReduce { dst, acc: None, .. } if data.len() == dst.len * es => {
                        reduce::reduce_bytes(p.dtype, p.op, slice_mut(j, dst), data)
                    }
                    Op::RecvReduce {
                        dst, acc: Some(a), ..
                    } if data.len() == dst.len * es => {
                        reduce::reduce3_bytes(p.dtype, p.op, slice_mut(j, dst), slice(j, a), data)
                    }
                    op => {
                        return Err(Error::Mismatch {
                            peer: q.peer,
                            msg: format!(
                                "rank {} sent {} bytes where this rank expects {} ({:?}); the ranks \
                                 passed different counts",
                                q.peer,
                                data.len(),
                                op.writes().map(|r| r.len * es).unwrap_or(0),
                                op
                            ),
                        });
                    }
                }
                link.release_recv();
                q.next_recv += 1;
                complete(g, remaining, ready_local, &mut done);
                moved = true;
            }
        }
        rounds = rounds.wrapping_add(1);
        if (!moved || rounds % 4096 == 0) && aborted() {
            return Err(abort.map_or_else(
                || Error::Internal("interrupted without an interrupt".into()),
                |a| a.error(p0.rank),
            ));
        }
        if moved {
            idle = 0;
            idle_since = None;
            continue;
        }
        if done == n {
            break;
        }
        idle += 1;
        if waiter.spin(idle) {
            std::hint::spin_loop();
            continue;
        }
        let now = Instant::now();
        let waited = now.duration_since(*idle_since.get_or_insert(now));
        if waited >= p0.timeout {
            return Err(timeout_error(queues, remaining, &p0));
        }
        if waited < YIELD_FOR || wait::never_sleep() {
            waiter.yield_now();
            continue;
        }
        // Sleep: on this rank's shm doorbell when every link waited on is shm (the first call
        // only announces us, so the loop looks at every link once more), else in poll(2).
        waiter.begin();
        for q in queues.iter() {
            waiter.add(links[q.peer].as_deref_mut().expect("validated"));
        }
        waiter.wait(p0.timeout - waited)?;
    }
    Ok(())
}

fn mismatch(peer: usize, theirs: &Tag, p: &Params) -> Error {
    Error::Mismatch {
        peer,
        msg: format!(
            "rank {peer} called {} but rank {} called {}; every rank must make the same collective \
             calls in the same order with the same count, type, operator and root",
            describe(theirs),
            p.rank,
            describe(&p.tag)
        ),
    }
}

fn timeout_error(queues: &[PeerQ], remaining: &[u32], p: &Params) -> Error {
    let mut waiting: Vec<String> = Vec::new();
    let mut first = None;
    for q in queues {
        if let Some(&i) = q.recvs.get(q.next_recv) {
            if remaining[i as usize] == 0 {
                waiting.push(format!("a message from rank {}", q.peer));
                first.get_or_insert(q.peer);
            }
        }
        if !q.inflight.is_empty() {
            waiting.push(format!(
                "rank {} to take {} sends",
                q.peer,
                q.inflight.len()
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
