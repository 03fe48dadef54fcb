//! Bruck's algorithms: all-gather by recursive doubling and its dual, reduce-scatter by
//! recursive halving, for any rank count, in ceil(log2 n) steps.
//!
//! All-gather step k (d = 2^k): rank r holds blocks r .. r+d-1 (mod n); it sends the first
//! min(d, n-d) of them to r-d and receives blocks r+d .. from r+d. Blocks land straight in
//! their final place; a run of blocks that is contiguous in the buffer travels as one message
//! (split only where it wraps past the last rank), so small all-gathers take log n messages.
//! Reduce-scatter runs the same steps backwards with the direction reversed, reducing partial
//! sums on the way, in a scratch copy of the input.

use super::{Buf, Builder, Layout, Range, Shape, slices};

/// The contiguous buffer ranges holding absolute blocks `first, first+1, ..` (`cnt` of them,
/// modulo n), split where they wrap.
fn runs(lay: &Layout, n: usize, first: usize, cnt: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let a = first % n;
    let head = cnt.min(n - a);
    let span = |from: usize, k: usize| {
        let last = from + k - 1;
        (lay.off(from), lay.off(last) + lay.len(last) - lay.off(from))
    };
    if head > 0 {
        v.push(span(a, head));
    }
    if cnt > head {
        v.push(span(0, cnt - head));
    }
    v
}

fn steps(n: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut d = 1;
    while d < n {
        v.push((d, d.min(n - d)));
        d <<= 1;
    }
    v
}

/// One rank's Bruck all-gather.
pub(crate) fn all_gather(s: &Shape) -> Builder {
    let (n, r) = (s.nranks, s.rank);
    let lay = s.blocks();
    let mut b = Builder::new(s);
    if !s.in_place {
        b.copy(
            Range::new(Buf::Input, 0, lay.len(r)),
            Range::new(Buf::Output, lay.off(r), lay.len(r)),
        );
    }
    for (d, cnt) in steps(n) {
        for (o, l) in runs(&lay, n, r, cnt) {
            for (so, sl) in slices(o, l, s.chunk) {
                b.send((r + n - d) % n, Range::new(Buf::Output, so, sl));
            }
        }
        for (o, l) in runs(&lay, n, r + d, cnt) {
            for (so, sl) in slices(o, l, s.chunk) {
                b.recv((r + d) % n, Range::new(Buf::Output, so, sl));
            }
        }
    }
    b
}

/// One rank's Bruck reduce-scatter.
pub(crate) fn reduce_scatter(s: &Shape) -> Builder {
    let (n, r) = (s.nranks, s.rank);
    let lay = s.blocks();
    let mut b = Builder::new(s);
    let total = lay.total();
    let acc = b.scratch(total);
    for (o, l) in slices(0, total, s.chunk) {
        b.copy(s.input_range(o, l), acc.sub(o, l));
    }
    for (d, cnt) in steps(n).into_iter().rev() {
        for (o, l) in runs(&lay, n, r + d, cnt) {
            for (so, sl) in slices(o, l, s.chunk) {
                b.send((r + d) % n, acc.sub(so, sl));
            }
        }
        for (o, l) in runs(&lay, n, r, cnt) {
            for (so, sl) in slices(o, l, s.chunk) {
                b.recv_reduce((r + n - d) % n, acc.sub(so, sl), None);
            }
        }
    }
    let result = if s.in_place { lay.off(r) } else { 0 };
    for (o, l) in slices(0, lay.len(r), s.chunk) {
        let dst = Range::new(Buf::Output, result + o, l);
        b.copy(acc.sub(lay.off(r) + o, l), dst);
        b.finish(dst);
    }
    b
}
