//! Pipelined chains for broadcast and reduce: data flows along root, root+1, ..., root-1 (reduce:
//! the other way), cut into slices so every link is busy at once. Bandwidth-optimal for large
//! messages; latency grows with n.

use super::{Buf, Builder, Range, Shape, slices};

fn positions(s: &Shape) -> (usize, impl Fn(usize) -> usize) {
    let (n, root) = (s.nranks, s.root);
    ((s.rank + n - root) % n, move |p: usize| (p + root) % n)
}

/// One rank's chain broadcast.
pub(crate) fn broadcast(s: &Shape) -> Builder {
    let n = s.nranks;
    let (pos, real) = positions(s);
    let mut b = Builder::new(s);
    let ip = s.in_place && pos == 0;
    for (o, l) in slices(0, s.count, s.chunk) {
        let out = Range::new(Buf::Output, o, l);
        let src = if pos == 0 && !ip {
            Range::new(Buf::Input, o, l)
        } else {
            out
        };
        if pos == 0 && !ip {
            b.copy(src, out);
        }
        if pos > 0 {
            b.recv(real(pos - 1), out);
        }
        if pos + 1 < n {
            b.send(real(pos + 1), src);
        }
    }
    b
}

/// One rank's chain reduce (towards the root).
pub(crate) fn reduce(s: &Shape) -> Builder {
    let n = s.nranks;
    let (pos, real) = positions(s);
    let mut b = Builder::new(s);
    let ip = s.in_place && pos == 0;
    let scratch = if pos != 0 && pos + 1 < n {
        Some(b.scratch(s.count))
    } else {
        None
    };
    for (o, l) in slices(0, s.count, s.chunk) {
        let (own, acc) = Builder::reduce_chunk(ip, scratch, o, l);
        let partial = if pos + 1 < n {
            b.recv_reduce(real(pos + 1), acc, (own != acc).then_some(own));
            acc
        } else {
            own
        };
        b.pass_up((pos > 0).then(|| real(pos - 1)), partial, acc);
    }
    b
}
