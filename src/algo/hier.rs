//! Hierarchical all-reduce over a [`HostMap`] (NCCL's rail-aligned channels, Open MPI's HAN).
//!
//! The buffer is cut into `S` slices, `S` the largest number of ranks on a host. On a host with
//! `L` ranks, local rank `l` owns the slices `j` with `j mod L = l` (one each when every host
//! has `S` ranks).
//!
//! 1. **Intra-host reduce-scatter**: a ring over the host's ranks, by local rank; afterwards
//!    each local rank holds its slices reduced over its host.
//! 2. **Inter-host all-reduce** of each slice among its owners, one per host: the ranks of the
//!    same local rank (the same rail), with a flat algorithm over host indices (ring, double
//!    binary tree or halving-doubling: [`Algorithm::Hier`], [`Algorithm::HierTree`],
//!    [`Algorithm::HierRhd`]). Every local rank does this at once for its own slice, so every
//!    rail carries `1/S` of the data at the same time, and inter-host traffic never leaves the
//!    rail.
//! 3. **Intra-host all-gather**: the ring again, passing the finished slices around.
//!
//! Each rank sends about `2(L-1)/L` of the buffer to a host neighbour and `2(H-1)/H/S` of it
//! (ring) to other hosts: at `L = 8`, an eighth of a flat ring's inter-host bytes per port. Uneven
//! hosts work: a host with fewer ranks gives each of them several slices.
//!
//! Step 2 is a flat Program built for `H` ranks and embedded: its peers mapped to the slice's
//! owners, its ranges shifted to the slice. The builder recomputes every dependency from the
//! ranges, so the phases pipeline slice by slice wherever the data allows.

use super::{Algorithm, Buf, Builder, Op, Range, Shape, build, slices, split};
use crate::topo::HostMap;

/// The flat algorithm a hierarchical one runs between hosts.
pub fn inter(algo: Algorithm) -> Algorithm {
    match algo {
        Algorithm::HierTree => Algorithm::Tree,
        Algorithm::HierRhd => Algorithm::Rhd,
        _ => Algorithm::Ring,
    }
}

/// One rank's hierarchical all-reduce on `map`, with `inter_algo` between hosts.
pub fn all_reduce(s: &Shape, map: &HostMap, inter_algo: Algorithm) -> Result<Builder, String> {
    let (r, count, chunk) = (s.rank, s.count, s.chunk);
    let h = map.host_of(r);
    let loc = map.ranks(h);
    let nl = loc.len();
    let l = map.local_rank(r);
    let nh = map.nhosts();
    let ns = map.max_local().max(1);
    let mut b = Builder::new(s);
    let out = |o, len| Range::new(Buf::Output, o, len);
    let own = |o, len| s.input_range(o, len);
    // The slices of local group g, as (offset, len).
    let group = |g: usize| -> Vec<(usize, usize)> {
        (0..ns)
            .filter(|j| j % nl == g)
            .map(|j| split(count, ns, j))
            .collect()
    };
    let pieces = |g: usize| -> Vec<(usize, usize)> {
        group(g)
            .into_iter()
            .flat_map(|(o, len)| slices(o, len, chunk))
            .collect()
    };
    let next = loc[(l + 1) % nl];
    let prev = loc[(l + nl - 1) % nl];
    // 1. Reduce-scatter around the host: after it, group l is reduced over the host.
    for st in 0..nl.saturating_sub(1) {
        for (o, len) in pieces((l + 2 * nl - st - 1) % nl) {
            let src = if st == 0 { own(o, len) } else { out(o, len) };
            b.send(next, src);
        }
        for (o, len) in pieces((l + 2 * nl - st - 2) % nl) {
            let acc = own(o, len);
            b.recv_reduce(prev, out(o, len), (acc != out(o, len)).then_some(acc));
        }
    }
    // 2. All-reduce each owned slice between hosts, on this rail.
    for j in (0..ns).filter(|j| j % nl == l) {
        let (so, sl) = split(count, ns, j);
        if nh == 1 {
            for (o, len) in slices(so, sl, chunk) {
                if nl == 1 && own(o, len) != out(o, len) {
                    b.copy(own(o, len), out(o, len));
                }
                b.finish(out(o, len));
            }
            continue;
        }
        // With one rank on this host the data is still in Input; otherwise the reduce-scatter
        // left it in Output.
        let sub_in_place = nl > 1 || s.in_place;
        let sub = Shape::all_reduce(nh, h, sl, sub_in_place, chunk);
        // Halving a slice smaller than the host count only adds rounds.
        let a = if inter_algo == Algorithm::Rhd && sl < nh {
            Algorithm::Doubling
        } else {
            inter_algo
        };
        let p = build(a, &sub)?;
        let scratch = b.scratch(p.scratch_len);
        let place = |x: Range| match x.buf {
            Buf::Input => Range::new(Buf::Input, so + x.off, x.len),
            Buf::Output => out(so + x.off, x.len),
            Buf::Scratch => scratch.sub(x.off, x.len),
        };
        let owner = |host: usize| map.on_rail(host, j);
        for st in &p.steps {
            let op = match st.op {
                Op::Send { peer, src } => Op::Send {
                    peer: owner(peer),
                    src: place(src),
                },
                Op::Recv { peer, dst } => Op::Recv {
                    peer: owner(peer),
                    dst: place(dst),
                },
                Op::RecvReduce { peer, dst, acc } => Op::RecvReduce {
                    peer: owner(peer),
                    dst: place(dst),
                    acc: acc.map(place),
                },
                Op::Copy { src, dst } => Op::Copy {
                    src: place(src),
                    dst: place(dst),
                },
                Op::Reduce { src, dst } => Op::Reduce {
                    src: place(src),
                    dst: place(dst),
                },
                Op::Finish { dst } => Op::Finish { dst: place(dst) },
            };
            b.push(op);
        }
    }
    // 3. All-gather around the host.
    for st in 0..nl.saturating_sub(1) {
        for (o, len) in pieces((l + nl - st) % nl) {
            b.send(next, out(o, len));
        }
        for (o, len) in pieces((l + 2 * nl - st - 1) % nl) {
            b.recv(prev, out(o, len));
        }
    }
    Ok(b)
}
