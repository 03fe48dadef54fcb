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

struct PeerQ {
    peer: usize,
    sends: Vec<u32>,
    next_send: usize,
    inflight: VecDeque<u32>,
    recvs: Vec<u32>,
    next_recv: usize,
    /// Receives up to this index have been considered for posting.
    posted: usize,
}

/// How many receives ahead of the next one the executor offers destinations for.
const POST_AHEAD: usize = 16;

/// Spin this many idle rounds before yielding, and yield this long before sleeping in poll.
const SPIN_ROUNDS: u32 = 64;
const YIELD_FOR: Duration = Duration::from_micros(2000);

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
    let r = unsafe { run_inner(prog, mem, links, p) };
    // No posted destination may outlive the call: the caller's buffers are only borrowed.
    for l in links.iter_mut().flatten() {
        l.cancel_recvs();
    }
    if let Err(e) = &r {
        for l in links.iter_mut().flatten() {
            l.send_abort(e);
        }
    }
    r.map_err(|e| in_context(e, p))
}

unsafe fn run_inner(
    prog: &Program,
    mem: &Mem,
    links: &mut [Option<Box<dyn Link>>],
    p: &Params,
) -> Result<()> {
    let es = p.dtype.size();
    // Validate every range up front: after this, slices built from `mem` are in bounds.
    let blen = |b: Buf| match b {
        Buf::Input => mem.input_len,
        Buf::Output => mem.output_len,
        Buf::Scratch => mem.scratch_len,
    };
    for s in &prog.steps {
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
    let ptr = |r: Range| -> *mut u8 {
        let base = match r.buf {
            Buf::Input => mem.input.cast_mut(),
            Buf::Output => mem.output,
            Buf::Scratch => mem.scratch,
        };
        // SAFETY: validated above to be within the buffer.
        unsafe { base.add(r.off * es) }
    };
    let slice = |r: Range| -> &[u8] {
        // SAFETY: ranges are in bounds (validated above); the Program orders every pair of steps
        // touching overlapping memory (proven by algo::verify), so while a step reads this range
        // nothing writes it.
        unsafe { std::slice::from_raw_parts(ptr(r), r.len * es) }
    };
    #[allow(clippy::mut_from_ref)]
    let slice_mut = |r: Range| -> &mut [u8] {
        // SAFETY: as above; while a step writes this range no other live access aliases it.
        unsafe { std::slice::from_raw_parts_mut(ptr(r), r.len * es) }
    };

    let n = prog.steps.len();
    let mut remaining: Vec<u32> = prog.steps.iter().map(|s| s.deps.len() as u32).collect();
    let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, s) in prog.steps.iter().enumerate() {
        for &d in &s.deps {
            dependents[d as usize].push(i as u32);
        }
    }
    let mut queues: Vec<PeerQ> = Vec::new();
    let mut qidx = vec![usize::MAX; p.nranks];
    let mut ready_local: Vec<u32> = Vec::new();
    for (i, s) in prog.steps.iter().enumerate() {
        match s.op.peer() {
            Some(peer) => {
                if qidx[peer] == usize::MAX {
                    qidx[peer] = queues.len();
                    queues.push(PeerQ {
                        peer,
                        sends: Vec::new(),
                        next_send: 0,
                        inflight: VecDeque::new(),
                        recvs: Vec::new(),
                        next_recv: 0,
                        posted: 0,
                    });
                }
                let q = &mut queues[qidx[peer]];
                if matches!(s.op, Op::Send { .. }) {
                    q.sends.push(i as u32)
                } else {
                    q.recvs.push(i as u32)
                }
            }
            None if s.deps.is_empty() => ready_local.push(i as u32),
            None => {}
        }
    }
    let mut done = 0usize;
    let complete =
        |i: u32, remaining: &mut Vec<u32>, ready_local: &mut Vec<u32>, done: &mut usize| {
            *done += 1;
            for &d in &dependents[i as usize] {
                remaining[d as usize] -= 1;
                if remaining[d as usize] == 0 && prog.steps[d as usize].op.peer().is_none() {
                    ready_local.push(d);
                }
            }
        };

    let mut idle = 0u32;
    let mut last_progress = Instant::now();
    let mut waiter = Waiter::new();
    while done < n {
        let mut moved = false;
        while let Some(i) = ready_local.pop() {
            match prog.steps[i as usize].op {
                Op::Copy { src, dst } => slice_mut(dst).copy_from_slice(slice(src)),
                Op::Reduce { src, dst } => {
                    reduce::reduce_bytes(p.dtype, p.op, slice_mut(dst), slice(src))
                }
                Op::Finish { dst } => {
                    if p.op == ReduceOp::Avg {
                        reduce::finish_avg_bytes(p.dtype, slice_mut(dst), p.nranks)
                    }
                }
                _ => unreachable!("only local steps are queued here"),
            }
            complete(i, &mut remaining, &mut ready_local, &mut done);
            moved = true;
        }
        for q in queues.iter_mut() {
            let link = links[q.peer].as_mut().expect("validated above");
            moved |= link.progress()?;
            for _ in 0..link.take_send_completions() {
                let i = q
                    .inflight
                    .pop_front()
                    .ok_or_else(|| Error::Internal("phantom send completion".into()))?;
                complete(i, &mut remaining, &mut ready_local, &mut done);
                moved = true;
            }
            while let Some(&i) = q.sends.get(q.next_send) {
                if remaining[i as usize] > 0 {
                    break;
                }
                let Op::Send { src, .. } = prog.steps[i as usize].op else {
                    unreachable!()
                };
                // SAFETY: the range stays valid and unwritten until the send completes: later
                // writers of it depend on this step, which completes only on link completion.
                if !unsafe { link.post_send(&p.tag, ptr(src), src.len * es)? } {
                    break;
                }
                q.inflight.push_back(i);
                q.next_send += 1;
                moved = true;
            }
            // Offer final destinations for plain receives whose memory is free, so the link can
            // place them directly (RDMA's posted receive): no copy out of a slot.
            q.posted = q.posted.max(q.next_recv);
            while q.posted < (q.next_recv + POST_AHEAD).min(q.recvs.len()) {
                let i = q.recvs[q.posted] as usize;
                if remaining[i] > 0 {
                    break;
                }
                if let Op::Recv { dst, .. } = prog.steps[i].op {
                    // SAFETY: dst is in bounds and free (its dependencies are done); nothing
                    // else touches it until this receive completes, and cancel_recvs runs
                    // before this call returns.
                    unsafe { link.post_recv(q.posted as u64, ptr(dst), dst.len * es) };
                }
                q.posted += 1;
            }
            while let Some(&i) = q.recvs.get(q.next_recv) {
                if remaining[i as usize] > 0 {
                    break;
                }
                let Some((tag, data)) = link.peek_recv()? else {
                    break;
                };
                if tag != p.tag {
                    return Err(Error::Mismatch {
                        peer: q.peer,
                        msg: format!(
                            "rank {} called {} but rank {} called {}; every rank must make the same \
                             collective calls in the same order with the same count, type, operator and root",
                            q.peer,
                            describe(&tag),
                            p.rank,
                            describe(&p.tag)
                        ),
                    });
                }
                match prog.steps[i as usize].op {
                    Op::Recv { dst, .. } if data.len() == dst.len * es => {
                        if data.as_ptr() != ptr(dst).cast_const() {
                            slice_mut(dst).copy_from_slice(data)
                        }
                    }
                    Op::RecvReduce { dst, acc: None, .. } if data.len() == dst.len * es => {
                        reduce::reduce_bytes(p.dtype, p.op, slice_mut(dst), data)
                    }
                    Op::RecvReduce {
                        dst, acc: Some(a), ..
                    } if data.len() == dst.len * es => {
                        reduce::reduce3_bytes(p.dtype, p.op, slice_mut(dst), slice(a), data)
                    }
                    op => {
                        return Err(Error::Mismatch {
                            peer: q.peer,
                            msg: format!(
                                "rank {} sent {} bytes where {:?} expects a different length (same call, \
                                 different buffer layout?)",
                                q.peer,
                                data.len(),
                                op
                            ),
                        });
                    }
                }
                link.release_recv();
                q.next_recv += 1;
                complete(i, &mut remaining, &mut ready_local, &mut done);
                moved = true;
            }
        }
        if moved {
            idle = 0;
            last_progress = Instant::now();
            continue;
        }
        if done == n {
            break;
        }
        idle += 1;
        if idle <= SPIN_ROUNDS {
            waiter.disarm();
            std::hint::spin_loop();
            continue;
        }
        let now = Instant::now();
        let waited = now.duration_since(last_progress);
        if waited >= p.timeout {
            return Err(timeout_error(prog, &queues, &remaining, p));
        }
        if waited < YIELD_FOR || wait::never_sleep() {
            crate::sys::yield_now();
            continue;
        }
        // Sleep: on this rank's shm doorbell when every link waited on is shm (the first call
        // only announces us, so the loop looks at every link once more), else in poll(2).
        waiter.begin();
        for q in &queues {
            waiter.add(links[q.peer].as_deref_mut().expect("validated"));
        }
        waiter.wait(p.timeout - waited)?;
    }
    Ok(())
}

fn timeout_error(prog: &Program, queues: &[PeerQ], remaining: &[u32], p: &Params) -> Error {
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
    let _ = prog;
    let what = if waiting.is_empty() {
        "progress".to_string()
    } else {
        waiting.join(", ")
    };
    Error::timeout(first, format!("waiting for {what}"), p.timeout)
}
