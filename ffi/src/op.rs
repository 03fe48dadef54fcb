//! A collective call as C described it, checked and turned into raw parts that outlive the C
//! call (for groups and non-blocking requests), then into the core's [`Call`] when it runs.
//!
//! NCCL's in-place conventions are recognised: `sendbuff == recvbuff` for all-reduce, broadcast,
//! reduce and all-to-all; `sendbuff == recvbuff + rank*count` for all-gather (and gather on the
//! root, all-gather-v); `recvbuff == sendbuff + rank*count` for reduce-scatter (and scatter on
//! the root). Any other overlap of the two buffers is an invalid argument.

use std::ffi::c_void;

use core_oxccl::Collective;
use core_oxccl::internals::algo::Shape;
use core_oxccl::{Call, DataType, Error, ReduceOp};

use crate::boundary::null;

/// Which collective, with its scalar arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    AllReduce(ReduceOp),
    Broadcast(usize),
    Reduce(ReduceOp, usize),
    AllGather,
    ReduceScatter(ReduceOp),
    AllToAll,
    Gather(usize),
    Scatter(usize),
    AllGatherV,
    ReduceScatterV(ReduceOp),
    AllToAllV,
    Send(usize, u32),
    Recv(usize, u32),
    Barrier,
}

/// A checked call: raw buffer parts (valid while the C caller keeps its promise), owned copies
/// where a core call needs a buffer the C call did not give separately, and counts.
pub(crate) struct Op {
    pub kind: Kind,
    pub dtype: DataType,
    /// `None`: in place (the core reads the receive buffer).
    send: Option<(*const u8, usize)>,
    recv: (*mut u8, usize),
    /// Owned bytes that `send` or `recv` may point into (their heap memory never moves).
    _owned: Vec<u8>,
    /// Per-rank counts of the v-variants (all-to-all-v: send counts, then receive counts).
    counts: Vec<usize>,
}

/// The communicator facts a call needs to check its buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who {
    pub rank: usize,
    pub nranks: usize,
}

/// Bytes in `count` elements of `dtype` times `factor`; overflow (a negative count cast to
/// size_t, say) is an invalid argument.
pub(crate) fn span(
    count: usize,
    dtype: DataType,
    factor: usize,
    what: &str,
) -> Result<usize, Error> {
    count
        .checked_mul(dtype.size())
        .and_then(|b| b.checked_mul(factor))
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "{what}: {count} elements of {} (x{factor}) overflow the address space; is the count negative?",
                dtype.name()
            ))
        })
}

/// Bytes of the send and receive buffers (0 for one this rank ignores) of a call of `count`
/// elements per block, as [`Shape::buffers`] states the collective's rule (the one the core
/// checks calls against); overflow is an invalid argument, as in [`span`].
fn sizes(
    coll: Collective,
    count: usize,
    dtype: DataType,
    root: usize,
    who: Who,
    what: &str,
) -> Result<(usize, usize), Error> {
    let block = span(count, dtype, 1, what)?;
    let mut shape = Shape::new(coll, who.nranks, who.rank, block, false, 1);
    shape.root = root;
    match shape.buffers() {
        Ok((s, r)) if s.max(r).unwrap_or(0) <= isize::MAX as usize => {
            Ok((s.unwrap_or(0), r.unwrap_or(0)))
        }
        _ => Err(span(count, dtype, who.nranks, what)
            .err()
            .unwrap_or_else(|| Error::invalid_argument(format!("{what}: {count} overflows")))),
    }
}

/// As [`sizes`] for a call whose buffers do not depend on the rank or the number of ranks
/// (all-reduce, send, receive): `(send, recv)` bytes.
fn sizes_any_rank(
    coll: Collective,
    count: usize,
    dtype: DataType,
    what: &str,
) -> Result<(usize, usize), Error> {
    sizes(coll, count, dtype, 0, Who { rank: 0, nranks: 1 }, what)
}

/// As [`sizes`] for all-gather-v and reduce-scatter-v: `recvcounts` per rank, whose sum `total`
/// C gave without overflow.
fn sizes_v(
    coll: Collective,
    counts: &[usize],
    total: usize,
    dtype: DataType,
    who: Who,
) -> Result<(usize, usize), Error> {
    let what = "recvcounts";
    let mut shape = Shape::new(coll, who.nranks, who.rank, 0, false, 1);
    shape.counts = counts
        .iter()
        .map(|&c| span(c, dtype, 1, what))
        .collect::<Result<_, _>>()?;
    match shape.buffers() {
        Ok((s, r)) if s.max(r).unwrap_or(0) <= isize::MAX as usize => {
            Ok((s.unwrap_or(0), r.unwrap_or(0)))
        }
        _ => Err(span(total, dtype, 1, &format!("the sum of {what}"))
            .err()
            .unwrap_or_else(|| Error::invalid_argument(format!("the sum of {what} overflows")))),
    }
}

fn check_ptr(p: *const c_void, len: usize, what: &str) -> Result<*const u8, Error> {
    if len > 0 && p.is_null() {
        return Err(null(what));
    }
    if (p as usize).checked_add(len).is_none() {
        return Err(Error::invalid_argument(format!(
            "{what} + {len} bytes wraps around the address space"
        )));
    }
    Ok(p.cast())
}

fn overlap(a: *const u8, alen: usize, b: *const u8, blen: usize) -> bool {
    let (a, b) = (a as usize, b as usize);
    alen > 0 && blen > 0 && a < b + blen && b < a + alen
}

fn no_overlap(s: *const u8, slen: usize, r: *const u8, rlen: usize) -> Result<(), Error> {
    if overlap(s, slen, r, rlen) {
        return Err(Error::invalid_argument(format!(
            "sendbuff ({slen} bytes) and recvbuff ({rlen} bytes) overlap, and not in the in-place \
             layout this collective accepts (see the header)"
        )));
    }
    Ok(())
}

/// A root or peer argument: an int in 0..nranks.
pub(crate) fn rank_arg(v: i32, who: Who, what: &str) -> Result<usize, Error> {
    usize::try_from(v)
        .ok()
        .filter(|&r| r < who.nranks)
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "{what} {v} is not a rank of this {}-rank communicator",
                who.nranks
            ))
        })
}

/// Reads `n` counts from C, checking the pointer, and their sum.
///
/// # Safety
/// `p` is NULL or readable for `n` size_t values.
pub(crate) unsafe fn counts_arg(
    p: *const usize,
    n: usize,
    what: &str,
) -> Result<(Vec<usize>, usize), Error> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null and readable for n values (caller's contract); copied at once.
    let v = unsafe { std::slice::from_raw_parts(p, n) }.to_vec();
    let total = v
        .iter()
        .try_fold(0usize, |a, &c| a.checked_add(c))
        .ok_or_else(|| Error::invalid_argument(format!("the sum of {what} overflows")))?;
    Ok((v, total))
}

impl Op {
    fn new(kind: Kind, dtype: DataType) -> Op {
        Op {
            kind,
            dtype,
            send: None,
            recv: (std::ptr::null_mut(), 0),
            _owned: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// Same-size send and receive buffers, in place when the pointers are equal
    /// (all-reduce, all-to-all, broadcast on the root).
    fn same_size(
        mut self,
        send: *const c_void,
        recv: *mut c_void,
        bytes: usize,
    ) -> Result<Op, Error> {
        let s = check_ptr(send, bytes, "sendbuff")?;
        let r = check_ptr(recv, bytes, "recvbuff")?.cast_mut();
        self.recv = (r, bytes);
        if s != r.cast_const() || s.is_null() {
            no_overlap(s, bytes, r, bytes)?;
            self.send = Some((s, bytes));
        }
        Ok(self)
    }

    /// Makes this reduction a pre-multiplied sum: its input becomes a copy the op owns,
    /// multiplied by `scalar` (one element of the op's type), and the operator a sum. The
    /// caller's buffers are never scaled in place; an in-place call becomes out-of-place.
    ///
    /// # Safety
    /// The input is readable (the op's own contract).
    pub(crate) unsafe fn premultiply(mut self, scalar: &[u8], who: Who) -> Result<Op, Error> {
        let (input, len) = self.send.unwrap_or((self.recv.0.cast_const(), self.recv.1));
        let mut owned = if len == 0 {
            Vec::new()
        } else {
            // SAFETY: the input is readable for len bytes (caller's contract).
            unsafe { std::slice::from_raw_parts(input, len) }.to_vec()
        };
        core_oxccl::internals::reduce::scale_bytes(self.dtype, &mut owned, scalar);
        self.kind = match self.kind {
            Kind::AllReduce(_) => Kind::AllReduce(ReduceOp::Sum),
            Kind::Reduce(_, root) => Kind::Reduce(ReduceOp::Sum, root),
            Kind::ReduceScatter(_) => {
                if self.send.is_none() {
                    // In place: the result is block `rank` of the whole buffer.
                    let b = len / who.nranks.max(1);
                    self.recv = (self.recv.0.wrapping_add(who.rank * b), b);
                }
                Kind::ReduceScatter(ReduceOp::Sum)
            }
            k => {
                return Err(Error::invalid_argument(format!(
                    "{k:?}: a pre-multiplied sum is taken by all-reduce, reduce and reduce-scatter"
                )));
            }
        };
        self._owned = owned;
        self.send = Some((self._owned.as_ptr(), len));
        Ok(self)
    }

    /// A copy of `len` bytes at `p`, owned by the op; returns where the copy lives.
    ///
    /// # Safety
    /// `p` is readable for `len` bytes.
    unsafe fn own_copy(&mut self, p: *const u8, len: usize) -> *const u8 {
        // SAFETY: readable for len bytes (caller's contract).
        self._owned = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
        self._owned.as_ptr()
    }

    pub(crate) fn all_reduce(
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        op: ReduceOp,
    ) -> Result<Op, Error> {
        let (b, _) = sizes_any_rank(Collective::AllReduce, count, dtype, "count")?;
        Op::new(Kind::AllReduce(op), dtype).same_size(send, recv, b)
    }

    pub(crate) fn all_to_all(
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        who: Who,
    ) -> Result<Op, Error> {
        let (b, _) = sizes(Collective::AllToAll, count, dtype, 0, who, "count")?;
        Op::new(Kind::AllToAll, dtype).same_size(send, recv, b)
    }

    /// Only the root's `sendbuff` is read; other ranks' is ignored (may be NULL).
    pub(crate) fn broadcast(
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        root: usize,
        who: Who,
    ) -> Result<Op, Error> {
        let (_, b) = sizes(Collective::Broadcast, count, dtype, root, who, "count")?;
        let send = if who.rank == root {
            send
        } else {
            recv.cast_const()
        };
        Op::new(Kind::Broadcast(root), dtype).same_size(send, recv, b)
    }

    /// Only the root's `recvbuff` is written; other ranks' is ignored (may be NULL) unless it
    /// equals `sendbuff` (in place).
    pub(crate) fn reduce(
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        op: ReduceOp,
        root: usize,
        who: Who,
    ) -> Result<Op, Error> {
        let (b, _) = sizes(Collective::Reduce, count, dtype, root, who, "count")?;
        let o = Op::new(Kind::Reduce(op, root), dtype);
        if who.rank == root || send == recv.cast_const() {
            return o.same_size(send, recv, b);
        }
        let mut o = o;
        o.send = Some((check_ptr(send, b, "sendbuff")?, b));
        Ok(o)
    }

    /// `recvbuff` holds nranks blocks of `count`; in place when `sendbuff` is this rank's block.
    pub(crate) fn all_gather(
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        who: Who,
    ) -> Result<Op, Error> {
        let (b, total) = sizes(Collective::AllGather, count, dtype, 0, who, "sendcount")?;
        let mut o = Op::new(Kind::AllGather, dtype);
        let s = check_ptr(send, b, "sendbuff")?;
        let r = check_ptr(recv, total, "recvbuff")?.cast_mut();
        o.recv = (r, total);
        if b > 0 && s == r.cast_const().wrapping_add(who.rank * b) {
            return Ok(o);
        }
        no_overlap(s, b, r, total)?;
        o.send = Some((s, b));
        Ok(o)
    }

    /// `sendbuff` holds nranks blocks of `count`; in place when `recvbuff` is this rank's block.
    pub(crate) fn reduce_scatter(
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        op: ReduceOp,
        who: Who,
    ) -> Result<Op, Error> {
        let (total, b) = sizes(Collective::ReduceScatter, count, dtype, 0, who, "recvcount")?;
        let mut o = Op::new(Kind::ReduceScatter(op), dtype);
        let s = check_ptr(send, total, "sendbuff")?;
        let r = check_ptr(recv, b, "recvbuff")?.cast_mut();
        if b > 0 && r.cast_const() == s.wrapping_add(who.rank * b) {
            // The core's in-place form: the whole buffer, result in block `rank`.
            o.recv = (s.cast_mut(), total);
            return Ok(o);
        }
        no_overlap(s, total, r, b)?;
        o.send = Some((s, total));
        o.recv = (r, b);
        Ok(o)
    }

    /// Every rank sends `count`; the root's `recvbuff` holds nranks blocks (others' is ignored).
    pub(crate) fn gather(
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        root: usize,
        who: Who,
    ) -> Result<Op, Error> {
        let (b, total) = sizes(Collective::Gather, count, dtype, root, who, "count")?;
        let mut o = Op::new(Kind::Gather(root), dtype);
        let s = check_ptr(send, b, "sendbuff")?;
        if who.rank != root {
            o.send = Some((s, b));
            return Ok(o);
        }
        let r = check_ptr(recv, total, "recvbuff")?.cast_mut();
        o.recv = (r, total);
        if b > 0 && s == r.cast_const().wrapping_add(who.rank * b) {
            // In place on the root: the core wants a separate send block, so copy it.
            // SAFETY: `s` is this rank's block inside recvbuff, readable for b bytes.
            let c = unsafe { o.own_copy(s, b) };
            o.send = Some((c, b));
            return Ok(o);
        }
        no_overlap(s, b, r, total)?;
        o.send = Some((s, b));
        Ok(o)
    }

    /// The root's `sendbuff` holds nranks blocks (others' is ignored); every rank receives
    /// `count`.
    pub(crate) fn scatter(
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        dtype: DataType,
        root: usize,
        who: Who,
    ) -> Result<Op, Error> {
        let (total, b) = sizes(Collective::Scatter, count, dtype, root, who, "count")?;
        let mut o = Op::new(Kind::Scatter(root), dtype);
        let r = check_ptr(recv, b, "recvbuff")?.cast_mut();
        if who.rank != root {
            o.send = Some((std::ptr::null(), 0));
            o.recv = (r, b);
            return Ok(o);
        }
        let s = check_ptr(send, total, "sendbuff")?;
        o.send = Some((s, total));
        if b > 0 && r.cast_const() == s.wrapping_add(who.rank * b) {
            // In place on the root: its block is already where it belongs; the core writes it
            // (the same bytes) into a private buffer instead.
            o._owned = vec![0; b];
            o.recv = (o._owned.as_mut_ptr(), b);
            return Ok(o);
        }
        no_overlap(s, total, r, b)?;
        o.recv = (r, b);
        Ok(o)
    }

    /// Rank p contributes `counts[p]` elements; `recvbuff` holds them all, in rank order.
    pub(crate) fn all_gatherv(
        send: *const c_void,
        recv: *mut c_void,
        counts: Vec<usize>,
        total: usize,
        dtype: DataType,
        who: Who,
    ) -> Result<Op, Error> {
        let before: usize = counts[..who.rank].iter().sum();
        let (b, tb) = sizes_v(Collective::AllGatherV, &counts, total, dtype, who)?;
        let off = span(before, dtype, 1, "recvcounts")?;
        let mut o = Op::new(Kind::AllGatherV, dtype);
        o.counts = counts;
        let s = check_ptr(send, b, "sendbuff")?;
        let r = check_ptr(recv, tb, "recvbuff")?.cast_mut();
        o.recv = (r, tb);
        if b > 0 && s == r.cast_const().wrapping_add(off) {
            // SAFETY: `s` is this rank's block inside recvbuff, readable for b bytes.
            let c = unsafe { o.own_copy(s, b) };
            o.send = Some((c, b));
            return Ok(o);
        }
        no_overlap(s, b, r, tb)?;
        o.send = Some((s, b));
        Ok(o)
    }

    /// `sendbuff` holds every rank's block (`counts[p]` elements each, in rank order); this rank
    /// receives `counts[rank]`. Not in place.
    pub(crate) fn reduce_scatterv(
        send: *const c_void,
        recv: *mut c_void,
        counts: Vec<usize>,
        total: usize,
        dtype: DataType,
        op: ReduceOp,
        who: Who,
    ) -> Result<Op, Error> {
        let (tb, b) = sizes_v(Collective::ReduceScatterV, &counts, total, dtype, who)?;
        let mut o = Op::new(Kind::ReduceScatterV(op), dtype);
        o.counts = counts;
        let s = check_ptr(send, tb, "sendbuff")?;
        let r = check_ptr(recv, b, "recvbuff")?.cast_mut();
        no_overlap(s, tb, r, b)?;
        o.send = Some((s, tb));
        o.recv = (r, b);
        Ok(o)
    }

    /// `sendcounts[p]` elements go to rank p, `recvcounts[p]` come from it (blocks contiguous in
    /// rank order). Not in place.
    pub(crate) fn all_to_allv(
        send: *const c_void,
        send_counts: (Vec<usize>, usize),
        recv: *mut c_void,
        recv_counts: (Vec<usize>, usize),
        dtype: DataType,
        who: Who,
    ) -> Result<Op, Error> {
        // Element sums by the collective's rule (C gave them without overflow), then bytes.
        let mut shape = Shape::new(Collective::AllToAllV, who.nranks, who.rank, 0, false, 1);
        shape.counts = [send_counts.0, recv_counts.0].concat();
        let (s, r) = shape.buffers().map_err(Error::invalid_argument)?;
        let sb = span(s.unwrap_or(0), dtype, 1, "the sum of sendcounts")?;
        let rb = span(r.unwrap_or(0), dtype, 1, "the sum of recvcounts")?;
        let mut o = Op::new(Kind::AllToAllV, dtype);
        let s = check_ptr(send, sb, "sendbuff")?;
        let r = check_ptr(recv, rb, "recvbuff")?.cast_mut();
        no_overlap(s, sb, r, rb)?;
        o.send = Some((s, sb));
        o.recv = (r, rb);
        o.counts = shape.counts;
        Ok(o)
    }

    pub(crate) fn send(
        buf: *const c_void,
        count: usize,
        dtype: DataType,
        peer: usize,
        tag: u32,
    ) -> Result<Op, Error> {
        let (b, _) = sizes_any_rank(Collective::Send, count, dtype, "count")?;
        let mut o = Op::new(Kind::Send(peer, tag), dtype);
        o.send = Some((check_ptr(buf, b, "sendbuff")?, b));
        Ok(o)
    }

    pub(crate) fn recv(
        buf: *mut c_void,
        count: usize,
        dtype: DataType,
        peer: usize,
        tag: u32,
    ) -> Result<Op, Error> {
        let (_, b) = sizes_any_rank(Collective::Recv, count, dtype, "count")?;
        let mut o = Op::new(Kind::Recv(peer, tag), dtype);
        o.recv = (check_ptr(buf, b, "recvbuff")?.cast_mut(), b);
        Ok(o)
    }

    pub(crate) fn barrier() -> Op {
        Op::new(Kind::Barrier, DataType::U8)
    }

    /// The byte ranges this op reads and writes: `(ptr, len, written)`.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
        let s = self.send.map(|(p, l)| (p as usize, l, false));
        let r = Some((self.recv.0 as usize, self.recv.1, true));
        s.into_iter().chain(r).filter(|&(_, l, _)| l > 0)
    }

    /// The core call over this op's buffers, borrowing them for `'a` (which the caller picks:
    /// `'static` for a call started detached, see `Communicator::start_detached`).
    ///
    /// # Safety
    /// For all of `'a`: the buffers the op was built from are valid (send readable, recv
    /// writable), nothing else accesses the receive buffer, and no other live call's buffers
    /// overlap this one's receive buffer.
    pub(crate) unsafe fn call<'a>(&self) -> Call<'a> {
        // SAFETY: (for both) non-null when the length is non-zero (checked at build), valid by
        // the caller's contract; a zero length uses an empty slice, whatever the pointer.
        let send: Option<&[u8]> = self.send.map(|(p, l)| {
            if l == 0 {
                &[][..]
            } else {
                // SAFETY: see above.
                unsafe { std::slice::from_raw_parts(p, l) }
            }
        });
        let recv: &mut [u8] = if self.recv.1 == 0 {
            &mut []
        } else {
            // SAFETY: see above; the send slice does not overlap it (checked at build, except
            // for the in-place forms, where `send` is None).
            unsafe { std::slice::from_raw_parts_mut(self.recv.0, self.recv.1) }
        };
        let dt = self.dtype;
        match self.kind {
            Kind::AllReduce(op) => Call::all_reduce(send, recv, dt, op),
            Kind::Broadcast(root) => Call::broadcast(send, recv, dt, root),
            Kind::Reduce(op, root) => Call::reduce(send, recv, dt, op, root),
            Kind::AllGather => Call::all_gather(send, recv, dt),
            Kind::ReduceScatter(op) => Call::reduce_scatter(send, recv, dt, op),
            Kind::AllToAll => Call::all_to_all(send, recv, dt),
            Kind::Gather(root) => Call::gather(send.unwrap_or(&[]), recv, dt, root),
            Kind::Scatter(root) => Call::scatter(send.unwrap_or(&[]), recv, dt, root),
            Kind::AllGatherV => Call::all_gatherv(send.unwrap_or(&[]), recv, &self.counts, dt),
            Kind::ReduceScatterV(op) => {
                Call::reduce_scatterv(send.unwrap_or(&[]), recv, &self.counts, dt, op)
            }
            Kind::AllToAllV => {
                let (sc, rc) = self.counts.split_at(self.counts.len() / 2);
                Call::all_to_allv(send.unwrap_or(&[]), sc, recv, rc, dt)
            }
            Kind::Send(peer, tag) => Call::send(send.unwrap_or(&[]), dt, peer, tag),
            Kind::Recv(peer, tag) => Call::recv(recv, dt, peer, tag),
            Kind::Barrier => Call::barrier(),
        }
    }
}

/// Fails when one op's receive buffer overlaps any other op's buffer (calls run together in a
/// group must not race on memory).
pub(crate) fn check_disjoint(ops: &[&Op]) -> Result<(), Error> {
    let mut all: Vec<(usize, usize, bool, usize)> = Vec::new();
    for (k, op) in ops.iter().enumerate() {
        all.extend(op.ranges().map(|(p, l, w)| (p, l, w, k)));
    }
    all.sort_unstable();
    // Sweep: any overlap between ranges of different ops, where one of them is written.
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if b.0 >= a.0 + a.1 {
                break;
            }
            if a.3 != b.3 && (a.2 || b.2) {
                return Err(Error::invalid_argument(format!(
                    "calls {} and {} of this group use overlapping buffers, and one of them writes \
                     there",
                    a.3.min(b.3) + 1,
                    a.3.max(b.3) + 1
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Who = Who { rank: 1, nranks: 4 };

    #[test]
    fn span_overflow() {
        assert_eq!(span(3, DataType::F32, 2, "x").unwrap(), 24);
        assert!(span(usize::MAX, DataType::U8, 1, "x").is_err());
        assert!(span(usize::MAX / 4, DataType::F64, 1, "x").is_err());
        assert!(span(1 << 40, DataType::F32, 1 << 30, "x").is_err());
    }

    /// Buffer sizes come from the core's rule (`Shape::buffers`), in bytes, overflow checked.
    #[test]
    fn sizes_follow_the_core_rule() {
        let f = DataType::F32;
        let c = |coll, root| sizes(coll, 3, f, root, W, "count").unwrap();
        assert_eq!(c(Collective::AllGather, 0), (12, 48));
        assert_eq!(c(Collective::ReduceScatter, 0), (48, 12));
        assert_eq!(c(Collective::AllToAll, 0), (48, 48));
        assert_eq!(c(Collective::Gather, 0), (12, 0));
        assert_eq!(c(Collective::Gather, 1), (12, 48));
        assert_eq!(c(Collective::Scatter, 0), (0, 12));
        assert_eq!(c(Collective::Scatter, 1), (48, 12));
        assert_eq!(c(Collective::Broadcast, 0), (0, 12));
        let e = sizes(Collective::AllGather, usize::MAX / 8, f, 0, W, "sendcount").unwrap_err();
        assert_eq!(e.kind(), core_oxccl::ErrorKind::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("(x4) overflow the address space"),
            "{e:?}"
        );
        assert!(sizes(Collective::Gather, usize::MAX, DataType::U8, 1, W, "count").is_err());
        let k = [1, 2, 3, 4];
        let v = |coll| sizes_v(coll, &k, 10, f, W).unwrap();
        assert_eq!(v(Collective::AllGatherV), (8, 40));
        assert_eq!(v(Collective::ReduceScatterV), (40, 8));
        let big = [usize::MAX / 8; 4];
        assert!(sizes_v(Collective::AllGatherV, &big, usize::MAX, f, W).is_err());
    }

    #[test]
    fn in_place_layouts() {
        let mut a = [0u8; 64];
        let p = a.as_mut_ptr();
        let f = DataType::F32;
        let same = Op::all_reduce(p.cast(), p.cast(), 4, f, ReduceOp::Sum).unwrap();
        assert!(same.send.is_none());
        assert!(Op::all_reduce(p.wrapping_add(4).cast(), p.cast(), 4, f, ReduceOp::Sum).is_err());
        let apart = Op::all_reduce(p.cast(), p.wrapping_add(16).cast(), 4, f, ReduceOp::Sum);
        assert!(apart.unwrap().send.is_some());
        // all-gather: rank 1's block of 2 floats starts 8 bytes in.
        let ag = Op::all_gather(p.wrapping_add(8).cast(), p.cast(), 2, f, W).unwrap();
        assert!(ag.send.is_none());
        assert!(Op::all_gather(p.wrapping_add(4).cast(), p.cast(), 2, f, W).is_err());
        // reduce-scatter: the receive block is rank 1's block of the send buffer.
        let rs = Op::reduce_scatter(p.cast(), p.wrapping_add(8).cast(), 2, f, ReduceOp::Sum, W);
        let rs = rs.unwrap();
        assert!(rs.send.is_none());
        assert_eq!(rs.recv.1, 32);
        // gather on the root, in place: a private copy of the send block.
        let root = Who { rank: 1, nranks: 4 };
        let g = Op::gather(p.wrapping_add(8).cast(), p.cast(), 2, f, 1, root).unwrap();
        assert_ne!(g.send.unwrap().0, p.wrapping_add(8).cast_const());
        // broadcast off the root ignores sendbuff, even NULL.
        let b = Op::broadcast(std::ptr::null(), p.cast(), 4, f, 0, W).unwrap();
        assert!(b.send.is_none());
        // reduce off the root ignores recvbuff.
        let r = Op::reduce(p.cast(), std::ptr::null_mut(), 4, f, ReduceOp::Sum, 0, W).unwrap();
        assert_eq!(r.recv.1, 0);
    }

    #[test]
    fn nulls_and_zero_counts() {
        let f = DataType::F32;
        let nul = std::ptr::null_mut::<c_void>();
        assert!(Op::all_reduce(nul, nul, 0, f, ReduceOp::Sum).is_ok());
        assert!(Op::all_reduce(nul, nul, 1, f, ReduceOp::Sum).is_err());
        assert!(Op::send(nul, 0, f, 0, 0).is_ok());
        assert!(Op::recv(nul, 3, f, 0, 0).is_err());
        assert!(rank_arg(-1, W, "root").is_err());
        assert!(rank_arg(4, W, "root").is_err());
        assert_eq!(rank_arg(3, W, "root").unwrap(), 3);
    }

    #[test]
    fn group_overlap() {
        let mut a = [0u8; 64];
        let p = a.as_mut_ptr();
        let f = DataType::U8;
        let x = Op::send(p.cast(), 16, f, 0, 0).unwrap();
        let y = Op::send(p.cast(), 16, f, 2, 0).unwrap();
        let z = Op::recv(p.wrapping_add(8).cast(), 16, f, 2, 0).unwrap();
        let w = Op::recv(p.wrapping_add(32).cast(), 16, f, 2, 0).unwrap();
        assert!(check_disjoint(&[&x, &y, &w]).is_ok());
        assert!(check_disjoint(&[&x, &z]).is_err());
        assert!(check_disjoint(&[&w, &w]).is_err());
    }
}
