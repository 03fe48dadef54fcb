//! Ring algorithms.
//!
//! All-reduce: the buffer is cut into `nranks` chunks. In reduce-scatter step `s`, rank `r`
//! sends chunk `r - s` to `r + 1` and reduces chunk `r - s - 1` arriving from `r - 1` into its
//! output; after `n - 1` steps it owns the fully reduced chunk `r + 1`. The all-gather then
//! passes owned chunks around for another `n - 1` steps. Each chunk is cut into slices of at most
//! `chunk` elements, which are independent, so slice `j + 1` travels while slice `j` is being
//! reduced. Out of place, the first reduction reads the input directly: no initial copy.
//!
//! All-gather and reduce-scatter are one pass of the same ring over per-rank blocks (of any
//! sizes, for the v-variants).

use super::{Buf, Builder, Range, Shape, slices, split};

/// Slices one step of the ring runs ahead of the next (see the wavefront in [`all_reduce`]).
const LAG: usize = 2;

/// One rank's ring all-reduce.
pub(crate) fn all_reduce(s: &Shape) -> Builder {
    let (n, r, count, in_place, chunk) = (s.nranks, s.rank, s.count, s.in_place, s.chunk);
    let mut b = Builder::new(s);
    let out = |off, len| Range::new(Buf::Output, off, len);
    let inp = |off, len| Range::new(Buf::Input, off, len);
    if n == 1 {
        if !in_place {
            b.copy(inp(0, count), out(0, count));
        }
        b.finish(out(0, count));
        return b;
    }
    let next = (r + 1) % n;
    let prev = (r + n - 1) % n;
    // Every chunk is cut into the same number of slices, so every rank's wavefront (below) has
    // the same shape.
    let nslices = split(count, n, 0).1.div_ceil(chunk).max(1);
    let piece = |c: usize, j: usize| {
        let (co, cl) = split(count, n, c);
        let (so, sl) = split(cl, nslices, j);
        (co + so, sl)
    };
    // Wavefront order: slice j's step st is emitted at time j + st * LAG, so a slice reduced in
    // one step is sent on in the next while it is still in cache (LAG slices later, about
    // 2 (n - 1) LAG slices of traffic), instead of after the whole chunk has gone through the
    // step (a chunk of a 64 MiB call is megabytes: out of the cache by then). Every rank emits
    // in the same order, so the k-th message on each link is the same (slice, step) at both
    // ends; a step depends only on steps of earlier times, so the order cannot deadlock.
    let steps = 2 * (n - 1);
    let lag = LAG.min(nslices);
    for t in 0..nslices + (steps - 1) * lag {
        for st in 0..steps {
            let Some(j) = t.checked_sub(st * lag).filter(|&j| j < nslices) else {
                continue;
            };
            if st < n - 1 {
                // Reduce-scatter.
                let send_c = (r + n - st) % n;
                let recv_c = (r + 2 * n - st - 1) % n;
                let (o, l) = piece(send_c, j);
                let src = if st == 0 && !in_place {
                    inp(o, l)
                } else {
                    out(o, l)
                };
                b.send(next, src);
                let (o, l) = piece(recv_c, j);
                let acc = (!in_place).then(|| inp(o, l));
                b.recv_reduce(prev, out(o, l), acc);
                if st == n - 2 {
                    b.finish(out(o, l));
                }
            } else {
                // All-gather.
                let ag = st - (n - 1);
                let send_c = (r + 1 + n - ag) % n;
                let recv_c = (r + n - ag) % n;
                let (o, l) = piece(send_c, j);
                b.send(next, out(o, l));
                let (o, l) = piece(recv_c, j);
                b.recv(prev, out(o, l));
            }
        }
    }
    b
}

/// One rank's ring all-gather (uniform or per-rank block sizes).
pub(crate) fn all_gather(s: &Shape) -> Builder {
    all_gather_over(s, &identity(s.nranks))
}

/// The ring all-gather laid over `order` (position -> rank): rank `order[i]` passes blocks to
/// `order[i + 1]`; every block still lands at its owner's place in Output.
pub(crate) fn all_gather_over(s: &Shape, order: &[usize]) -> Builder {
    let (n, r) = (s.nranks, s.rank);
    let pos = order.iter().position(|&x| x == r).unwrap_or(0);
    let at = |i: usize| order[i % n];
    let lay = s.blocks();
    let mut b = Builder::new(s);
    let out = |blk: usize| Range::new(Buf::Output, lay.off(blk), lay.len(blk));
    if !s.in_place {
        b.copy(Range::new(Buf::Input, 0, lay.len(r)), out(r));
    }
    let next = at(pos + 1);
    let prev = at(pos + n - 1);
    for st in 0..n.saturating_sub(1) {
        let send_b = at(pos + n - st);
        let recv_b = at(pos + 2 * n - st - 1);
        for (o, l) in slices(0, lay.len(send_b), s.chunk) {
            let src = if send_b == r && !s.in_place {
                Range::new(Buf::Input, o, l)
            } else {
                out(send_b).sub(o, l)
            };
            b.send(next, src);
        }
        for (o, l) in slices(0, lay.len(recv_b), s.chunk) {
            b.recv(prev, out(recv_b).sub(o, l));
        }
    }
    b
}

fn identity(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// One rank's ring reduce-scatter (uniform or per-rank block sizes).
pub(crate) fn reduce_scatter(s: &Shape) -> Builder {
    reduce_scatter_over(s, &identity(s.nranks))
}

/// The ring reduce-scatter laid over `order` (position -> rank), as [`all_gather_over`].
pub(crate) fn reduce_scatter_over(s: &Shape, order: &[usize]) -> Builder {
    let (n, r) = (s.nranks, s.rank);
    let pos = order.iter().position(|&x| x == r).unwrap_or(0);
    let at = |i: usize| order[i % n];
    let lay = s.blocks();
    let mut b = Builder::new(s);
    let input = |blk: usize| s.input_range(lay.off(blk), lay.len(blk));
    let result = if s.in_place {
        Range::new(Buf::Output, lay.off(r), lay.len(r))
    } else {
        Range::new(Buf::Output, 0, lay.len(r))
    };
    let scratch = b.scratch(lay.total());
    let partial = |blk: usize| scratch.sub(lay.off(blk), lay.len(blk));
    if n == 1 {
        if !s.in_place {
            b.copy(input(0), result);
        }
        b.finish(result);
        return b;
    }
    let next = at(pos + 1);
    let prev = at(pos + n - 1);
    for st in 0..n - 1 {
        let send_b = at(pos + 2 * n - st - 1);
        let recv_b = at(pos + 2 * n - st - 2);
        for (o, l) in slices(0, lay.len(send_b), s.chunk) {
            let src = if st == 0 {
                input(send_b)
            } else {
                partial(send_b)
            };
            b.send(next, src.sub(o, l));
        }
        for (o, l) in slices(0, lay.len(recv_b), s.chunk) {
            let own = input(recv_b).sub(o, l);
            if recv_b == r {
                let dst = result.sub(o, l);
                b.recv_reduce(prev, dst, (dst != own).then_some(own));
                b.finish(dst);
            } else {
                b.recv_reduce(prev, partial(recv_b).sub(o, l), Some(own));
            }
        }
    }
    b
}
