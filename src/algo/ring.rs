//! Ring all-reduce: a reduce-scatter around the ring, then an all-gather around it.
//!
//! The buffer is cut into `nranks` chunks. In reduce-scatter step `s`, rank `r` sends chunk
//! `r - s` to `r + 1` and reduces chunk `r - s - 1` arriving from `r - 1` into its output; after
//! `n - 1` steps it owns the fully reduced chunk `r + 1`. The all-gather then passes owned chunks
//! around for another `n - 1` steps. Each chunk is cut into slices of at most `shape.chunk`
//! elements, which are independent, so slice `j + 1` travels while slice `j` is being reduced.
//! Out of place, the first reduction reads the input directly, so there is no initial copy.

use super::{Buf, Builder, Program, Range, Shape, split};

/// One rank's ring all-reduce Program.
pub fn all_reduce(shape: Shape) -> Program {
    let Shape {
        nranks: n,
        rank: r,
        count,
        in_place,
        chunk,
    } = shape;
    let mut b = Builder::new(shape);
    let out = |off, len| Range::new(Buf::Output, off, len);
    let inp = |off, len| Range::new(Buf::Input, off, len);
    if n == 1 {
        if !in_place {
            b.copy(inp(0, count), out(0, count));
        }
        b.finish(out(0, count));
        return b.build();
    }
    let next = (r + 1) % n;
    let prev = (r + n - 1) % n;
    // Every chunk is cut into the same number of slices, so message k on every link is slice
    // (k % slices) of the same step on both sides.
    let slices = split(count, n, 0).1.div_ceil(chunk.max(1)).max(1);
    let piece = |c: usize, j: usize| {
        let (co, cl) = split(count, n, c);
        let (so, sl) = split(cl, slices, j);
        (co + so, sl)
    };
    // Reduce-scatter.
    for s in 0..n - 1 {
        let send_c = (r + n - s) % n;
        let recv_c = (r + 2 * n - s - 1) % n;
        for j in 0..slices {
            let (o, l) = piece(send_c, j);
            let src = if s == 0 && !in_place {
                inp(o, l)
            } else {
                out(o, l)
            };
            b.send(next, src);
            let (o, l) = piece(recv_c, j);
            let acc = (!in_place).then(|| inp(o, l));
            b.recv_reduce(prev, out(o, l), acc);
            if s == n - 2 {
                b.finish(out(o, l));
            }
        }
    }
    // All-gather.
    for s in 0..n - 1 {
        let send_c = (r + 1 + n - s) % n;
        let recv_c = (r + n - s) % n;
        for j in 0..slices {
            let (o, l) = piece(send_c, j);
            b.send(next, out(o, l));
            let (o, l) = piece(recv_c, j);
            b.recv(prev, out(o, l));
        }
    }
    b.build()
}
