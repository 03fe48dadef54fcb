//! Ordered (deterministic) reductions: every element is folded strictly in rank order,
//! `((c0 op c1) op c2) ... op c(n-1)`, by one owner, and then only moved. The result is therefore
//! bitwise identical whatever the message size, chunking, algorithm elsewhere or run — the
//! reduction order never depends on them. Used when OXCCL_DETERMINISTIC=1.
//!
//! Cost: all-reduce sends each rank's chunk c to its owner c (n-1 messages of count/n per rank,
//! the same bytes as a ring reduce-scatter but all-to-all) and then runs a ring all-gather; the
//! owner needs (n-1)·count/n scratch elements and folds with one extra copy. Reduce sends every
//! input to the root (count·(n-1) bytes into one rank), so it is slower than a tree for large
//! messages.

use super::{Buf, Builder, Range, Shape, slices, split};

/// Folds `contrib` (one range per rank, in rank order, all of `dst.len` elements) into `dst`
/// slice by slice: dst = contrib[0]; dst op= contrib[1]; ...; then finishes it.
fn fold(b: &mut Builder, contrib: &[Range], dst: Range, chunk: usize) {
    for (o, l) in slices(0, dst.len, chunk) {
        let d = dst.sub(o, l);
        b.copy(contrib[0].sub(o, l), d);
        for c in &contrib[1..] {
            b.reduce(c.sub(o, l), d);
        }
        b.finish(d);
    }
}

/// Own contribution `own`, which the result `dst` may overlap (in place): copy it aside first.
fn own_contribution(b: &mut Builder, own: Range, dst: Range, chunk: usize) -> Range {
    if own.buf != dst.buf || own.end() <= dst.off || dst.end() <= own.off {
        return own;
    }
    let sc = b.scratch(own.len);
    for (o, l) in slices(0, own.len, chunk) {
        b.copy(own.sub(o, l), sc.sub(o, l));
    }
    sc
}

/// Deterministic all-reduce: reduce each chunk at its owner in rank order, then ring all-gather.
pub(crate) fn all_reduce(s: &Shape) -> Builder {
    let (n, r, count) = (s.nranks, s.rank, s.count);
    let mut b = Builder::new(s);
    let out = |o, l| Range::new(Buf::Output, o, l);
    let chunk_of = |c: usize| split(count, n, c);
    let (mo, ml) = chunk_of(r);
    // Send every other chunk of our input to its owner.
    for k in 1..n {
        let to = (r + k) % n;
        let (o, l) = chunk_of(to);
        for (so, sl) in slices(o, l, s.chunk) {
            b.send(to, s.input_range(so, sl));
        }
    }
    let own = own_contribution(&mut b, s.input_range(mo, ml), out(mo, ml), s.chunk);
    let mut contrib = vec![own; n];
    for k in 1..n {
        let from = (r + n - k) % n;
        let sc = b.scratch(ml);
        for (so, sl) in slices(0, ml, s.chunk) {
            b.recv(from, sc.sub(so, sl));
        }
        contrib[from] = sc;
    }
    fold(&mut b, &contrib, out(mo, ml), s.chunk);
    // Ring all-gather of the owned chunks.
    let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
    for st in 0..n.saturating_sub(1) {
        let (so, sl) = chunk_of((r + n - st) % n);
        for (o, l) in slices(so, sl, s.chunk) {
            b.send(next, out(o, l));
        }
        let (ro, rl) = chunk_of((r + 2 * n - st - 1) % n);
        for (o, l) in slices(ro, rl, s.chunk) {
            b.recv(prev, out(o, l));
        }
    }
    b
}

/// Deterministic reduce: every rank sends its input to the root, which folds in rank order.
pub(crate) fn reduce(s: &Shape) -> Builder {
    let (n, r, root, count) = (s.nranks, s.rank, s.root, s.count);
    let mut b = Builder::new(s);
    if r != root {
        for (o, l) in slices(0, count, s.chunk) {
            b.send(root, Range::new(Buf::Input, o, l));
        }
        return b;
    }
    let dst = Range::new(Buf::Output, 0, count);
    let own = own_contribution(&mut b, s.input_range(0, count), dst, s.chunk);
    let mut contrib = vec![own; n];
    for k in 1..n {
        let from = (root + k) % n;
        let sc = b.scratch(count);
        for (o, l) in slices(0, count, s.chunk) {
            b.recv(from, sc.sub(o, l));
        }
        contrib[from] = sc;
    }
    fold(&mut b, &contrib, dst, s.chunk);
    b
}

/// Deterministic reduce-scatter(v): block p of every rank goes to rank p, which folds in rank order.
pub(crate) fn reduce_scatter(s: &Shape) -> Builder {
    let (n, r) = (s.nranks, s.rank);
    let lay = s.blocks();
    let mut b = Builder::new(s);
    for k in 1..n {
        let to = (r + k) % n;
        for (o, l) in slices(lay.off(to), lay.len(to), s.chunk) {
            b.send(to, s.input_range(o, l));
        }
    }
    let dst = Range::new(
        Buf::Output,
        if s.in_place { lay.off(r) } else { 0 },
        lay.len(r),
    );
    let own = own_contribution(&mut b, s.input_range(lay.off(r), lay.len(r)), dst, s.chunk);
    let mut contrib = vec![own; n];
    for k in 1..n {
        let from = (r + n - k) % n;
        let sc = b.scratch(lay.len(r));
        for (o, l) in slices(0, lay.len(r), s.chunk) {
            b.recv(from, sc.sub(o, l));
        }
        contrib[from] = sc;
    }
    fold(&mut b, &contrib, dst, s.chunk);
    b
}
