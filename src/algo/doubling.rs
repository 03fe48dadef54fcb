//! Recursive doubling all-reduce: log p rounds, each exchanging the whole buffer with the
//! partner at distance p/2, ..., 1 and reducing it (MPICH's small-message all-reduce).
//!
//! Half the rounds of halving-doubling ([`super::rhd`]) at `log p · s` bytes per rank instead of
//! `2s`: for messages too small to halve. With p the largest power of two ≤ n, the first
//! `2(n − p)` ranks fold in pairs first (the even one hands its buffer to the odd one and gets
//! the result back), as in halving-doubling. Both partners of a round compute `a ⊕ b` from the
//! same two operands, so every rank ends with the same bits (⊕ is commutative).

use super::{Buf, Builder, Range, Shape, slices};

/// One rank's recursive doubling all-reduce.
pub(crate) fn all_reduce(s: &Shape) -> Builder {
    let (n, r, count) = (s.nranks, s.rank, s.count);
    let mut b = Builder::new(s);
    let out = Range::new(Buf::Output, 0, count);
    let own = s.input_range(0, count);
    let p = 1usize << (usize::BITS - 1 - n.max(1).leading_zeros());
    let rem = n - p;
    let real = |nid: usize| if nid < rem { 2 * nid + 1 } else { nid + rem };
    let pieces: Vec<(usize, usize)> = slices(0, count, s.chunk).collect();
    if r < 2 * rem && r % 2 == 0 {
        for &(o, l) in &pieces {
            b.send(r + 1, own.sub(o, l));
        }
        for &(o, l) in &pieces {
            b.recv(r + 1, out.sub(o, l));
        }
        return b;
    }
    // Whether Output holds this rank's partial result yet.
    let mut in_out = own == out;
    if r < 2 * rem {
        for &(o, l) in &pieces {
            b.recv_reduce(r - 1, out.sub(o, l), (!in_out).then(|| own.sub(o, l)));
        }
        in_out = true;
    }
    let nid = if r < 2 * rem { r / 2 } else { r - rem };
    let mut mask = p >> 1;
    while mask > 0 {
        let partner = real(nid ^ mask);
        let src = if in_out { out } else { own };
        for &(o, l) in &pieces {
            b.send(partner, src.sub(o, l));
        }
        for &(o, l) in &pieces {
            b.recv_reduce(partner, out.sub(o, l), (!in_out).then(|| own.sub(o, l)));
        }
        in_out = true;
        mask >>= 1;
    }
    if !in_out {
        for &(o, l) in &pieces {
            b.copy(own.sub(o, l), out.sub(o, l));
        }
    }
    for &(o, l) in &pieces {
        b.finish(out.sub(o, l));
    }
    if r < 2 * rem {
        for &(o, l) in &pieces {
            b.send(r - 1, out.sub(o, l));
        }
    }
    b
}
