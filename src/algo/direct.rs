//! One-shot direct all-reduce: every rank sends its whole buffer to every other rank, then
//! reduces all contributions locally. One message latency instead of the ring's `2(n-1)`, at
//! `n - 1` times the traffic: the choice for small messages.
//!
//! Every rank folds the contributions in rank order `((c0 op c1) op c2) ...`, so all ranks get
//! bitwise identical results (the operators are commutative, so `c_r op acc == acc op c_r`).

use super::{Buf, Builder, Range, Shape, split};

/// One rank's direct all-reduce Program.
pub(crate) fn all_reduce(shape: &Shape) -> Builder {
    let (n, r, count, in_place, chunk) = (
        shape.nranks,
        shape.rank,
        shape.count,
        shape.in_place,
        shape.chunk,
    );
    if n == 2 {
        return pair(shape);
    }
    let mut b = Builder::new(shape);
    let out = |off, len| Range::new(Buf::Output, off, len);
    let own = |off, len| Range::new(if in_place { Buf::Output } else { Buf::Input }, off, len);
    let slices = count.div_ceil(chunk.max(1)).max(1);
    // Scratch: one buffer per peer, in rank order skipping ourselves.
    let scratch: Vec<Option<Range>> = {
        let mut v = Vec::with_capacity(n);
        for p in 0..n {
            v.push((p != r).then(|| b.scratch(count)));
        }
        v
    };
    for j in 0..slices {
        let (o, l) = split(count, slices, j);
        // Send to peers starting with the next rank so that not everyone hits rank 0 first.
        for k in 1..n {
            b.send((r + k) % n, own(o, l));
        }
        for k in 1..n {
            let p = (r + n - k) % n;
            b.recv(p, scratch[p].expect("peer has scratch").sub(o, l));
        }
        // acc = c0 op c1 op ... op c_{r-1}, accumulated in rank 0's scratch (or empty if r == 0).
        if r > 0 {
            let acc = scratch[0].expect("rank 0 is a peer").sub(o, l);
            for peer in &scratch[1..r] {
                b.reduce(peer.expect("peer").sub(o, l), acc);
            }
            if !in_place {
                b.copy(own(o, l), out(o, l));
            }
            b.reduce(acc, out(o, l));
        } else if !in_place {
            b.copy(own(o, l), out(o, l));
        }
        for peer in &scratch[r + 1..n] {
            b.reduce(peer.expect("peer").sub(o, l), out(o, l));
        }
        b.finish(out(o, l));
    }
    b
}

/// Two ranks: each sends its term and reduces the other's straight out of the link's slot into
/// its output (`c0 op c1` on both ranks: rank 0's term is the left operand), no scratch.
fn pair(shape: &Shape) -> Builder {
    let (r, count, in_place, chunk) = (shape.rank, shape.count, shape.in_place, shape.chunk);
    let mut b = Builder::new(shape);
    let out = |off, len| Range::new(Buf::Output, off, len);
    let own = |off, len| Range::new(if in_place { Buf::Output } else { Buf::Input }, off, len);
    let peer = 1 - r;
    for j in 0..count.div_ceil(chunk.max(1)).max(1) {
        let (o, l) = split(count, count.div_ceil(chunk.max(1)).max(1), j);
        b.send(peer, own(o, l));
        match (r, in_place) {
            // out = own op theirs.
            (0, false) => b.recv_reduce(peer, out(o, l), Some(own(o, l))),
            (0, true) => b.recv_reduce(peer, out(o, l), None),
            // out = theirs op own: receive rank 0's term into the output, then fold ours in
            // (in place, ours is first set aside: the receive overwrites it).
            (_, false) => {
                b.recv(peer, out(o, l));
                b.reduce(own(o, l), out(o, l))
            }
            (_, true) => {
                let s = b.scratch(l);
                b.copy(out(o, l), s);
                b.recv(peer, out(o, l));
                b.reduce(s, out(o, l))
            }
        };
        b.finish(out(o, l));
    }
    b
}
