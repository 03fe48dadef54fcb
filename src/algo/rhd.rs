//! Recursive halving-doubling all-reduce (Rabenseifner), for any rank count.
//!
//! With p the largest power of two <= n and rem = n - p: among the first 2·rem ranks, each even
//! rank hands its whole buffer to the odd rank after it and sits out; the p remaining ranks run
//! a reduce-scatter by recursive halving (exchange half of the current segment with the partner
//! at distance p/2, p/4, ..., 1, keeping the other half reduced), then an all-gather by
//! recursive doubling in reverse; finally each odd rank hands the result back to its even
//! neighbour. Cost: 2·log p·α + 2·(p-1)/p·n·β + (p-1)/p·n·γ, plus the fold for odd counts.

use super::{Buf, Builder, Range, Shape, slices, split};

/// One rank's Rabenseifner all-reduce.
pub(crate) fn all_reduce(s: &Shape) -> Builder {
    let (n, r, count) = (s.nranks, s.rank, s.count);
    let mut b = Builder::new(s);
    let out = |o, l| Range::new(Buf::Output, o, l);
    let own = |o, l| s.input_range(o, l);
    let p = if n == 0 {
        1
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    };
    let rem = n - p;
    let real = |nid: usize| if nid < rem { 2 * nid + 1 } else { nid + rem };
    // Moves a range in chunk-sized messages.
    let send = |b: &mut Builder, to: usize, rg: Range| {
        for (o, l) in slices(0, rg.len, s.chunk) {
            b.send(to, rg.sub(o, l));
        }
    };
    let recv_reduce = |b: &mut Builder, from: usize, dst: Range, acc: Option<Range>| {
        for (o, l) in slices(0, dst.len, s.chunk) {
            b.recv_reduce(from, dst.sub(o, l), acc.map(|a| a.sub(o, l)));
        }
    };
    let recv = |b: &mut Builder, from: usize, dst: Range| {
        for (o, l) in slices(0, dst.len, s.chunk) {
            b.recv(from, dst.sub(o, l));
        }
    };
    if r < 2 * rem && r % 2 == 0 {
        // Sits out: hands its data over, gets the result back.
        send(&mut b, r + 1, own(0, count));
        recv(&mut b, r + 1, out(0, count));
        return b;
    }
    // Whether Output holds this rank's current data (else it is still the input).
    let mut in_out = own(0, count) == out(0, count);
    if r < 2 * rem {
        let acc = (!in_out).then(|| own(0, count));
        recv_reduce(&mut b, r - 1, out(0, count), acc);
        in_out = true;
    }
    let nid = if r < 2 * rem { r / 2 } else { r - rem };
    let (mut lo, mut hi) = (0, count);
    // (partner, kept half, given half) of each halving step, as (offset, len) pairs.
    type Halving = (usize, (usize, usize), (usize, usize));
    let mut history: Vec<Halving> = Vec::new();
    let mut mask = p >> 1;
    while mask > 0 {
        let partner = real(nid ^ mask);
        let (_, l1) = split(hi - lo, 2, 0);
        let lower = (lo, l1);
        let upper = (lo + l1, hi - lo - l1);
        let (keep, give) = if nid & mask == 0 {
            (lower, upper)
        } else {
            (upper, lower)
        };
        let src = if in_out {
            out(give.0, give.1)
        } else {
            own(give.0, give.1)
        };
        send(&mut b, partner, src);
        let acc = (!in_out).then(|| own(keep.0, keep.1));
        recv_reduce(&mut b, partner, out(keep.0, keep.1), acc);
        history.push((partner, keep, give));
        lo = keep.0;
        hi = keep.0 + keep.1;
        mask >>= 1;
        in_out = true;
    }
    if p == 1 && !in_out {
        b.copy(own(0, count), out(0, count));
    }
    for (o, l) in slices(lo, hi - lo, s.chunk) {
        b.finish(out(o, l));
    }
    // All-gather by recursive doubling: undo the halving steps in reverse.
    for &(partner, keep, give) in history.iter().rev() {
        send(&mut b, partner, out(keep.0, keep.1));
        recv(&mut b, partner, out(give.0, give.1));
    }
    if r < 2 * rem {
        send(&mut b, r - 1, out(0, count));
    }
    b
}
