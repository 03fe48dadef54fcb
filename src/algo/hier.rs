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
pub(crate) fn inter(algo: Algorithm) -> Algorithm {
    match algo {
        Algorithm::HierTree => Algorithm::Tree,
        Algorithm::HierRhd => Algorithm::Rhd,
        Algorithm::HierMul => Algorithm::Doubling,
        _ => Algorithm::Ring,
    }
}

/// Where rank `r` sits on `map`: (its host `h`, that host's ranks `loc`, their number `nl`,
/// its local rank `l`, the number of hosts `nh`, the number of slices (rails) `ns`).
fn seat(map: &HostMap, r: usize) -> (usize, &[usize], usize, usize, usize, usize) {
    let h = map.host_of(r);
    let loc = map.ranks(h);
    let ns = map.max_local().max(1);
    (h, loc, loc.len(), map.local_rank(r), map.nhosts(), ns)
}

/// One rank's hierarchical all-reduce on `map`, with `inter_algo` between hosts.
pub(crate) fn all_reduce(
    s: &Shape,
    map: &HostMap,
    inter_algo: Algorithm,
) -> Result<Builder, String> {
    let (r, count, chunk) = (s.rank, s.count, s.chunk);
    let (h, loc, nl, l, nh, ns) = seat(map, r);
    let mut b = Builder::new(s);
    let out = |o, len| Range::new(Buf::Output, o, len);
    let own = |o, len| s.input_range(o, len);
    let pieces = |g: usize| pieces(count, ns, nl, chunk, g);
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
        embed(&mut b, &p, |host| map.on_rail(host, j), place);
    }
    // 3. All-gather around the host.
    gather_slices(&mut b, s, map);
    Ok(b)
}

/// The messages of local group `g`'s slices (slice `j` of `ns` belongs to group `j % nl`), as
/// (offset, len) in elements, each slice cut into `chunk`-element pieces.
fn pieces(count: usize, ns: usize, nl: usize, chunk: usize, g: usize) -> Vec<(usize, usize)> {
    (0..ns)
        .filter(|j| j % nl == g)
        .flat_map(|j| {
            let (o, len) = split(count, ns, j);
            slices(o, len, chunk)
        })
        .collect()
}

/// Steps of a flat Program for `nh` host positions, embedded on rail `j`: peers become the
/// rail's ranks, each buffer's ranges go through `place`.
fn embed(
    b: &mut Builder,
    p: &super::Program,
    owner: impl Fn(usize) -> usize,
    place: impl Fn(Range) -> Range,
) {
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
                acc: acc.map(&place),
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

/// The flat algorithm hierarchical broadcast and reduce run between hosts.
pub(crate) fn inter_rooted(algo: Algorithm) -> Algorithm {
    match algo {
        Algorithm::HierTree => Algorithm::Tree,
        _ => Algorithm::Chain,
    }
}

/// One rank's hierarchical broadcast: the root hands slice `j` to its host's rank on rail `j`,
/// each rail broadcasts its slice between hosts (chain or binomial tree), and every host
/// all-gathers the slices around a ring.
pub(crate) fn broadcast(
    s: &Shape,
    map: &HostMap,
    inter_algo: Algorithm,
) -> Result<Builder, String> {
    let (r, count, chunk, root) = (s.rank, s.count, s.chunk, s.root);
    let (h, _, nl, l, nh, ns) = seat(map, r);
    let hr = map.host_of(root);
    let mut b = Builder::new(s);
    let out = |o, len| Range::new(Buf::Output, o, len);
    // 1. The root's slices to its host's rails (and its own data into Output).
    if r == root {
        if !s.in_place {
            for (o, len) in slices(0, count, chunk) {
                b.copy(Range::new(Buf::Input, o, len), out(o, len));
            }
        }
        for j in 0..ns {
            let to = map.on_rail(hr, j);
            if to != root {
                let (so, sl) = split(count, ns, j);
                for (o, len) in slices(so, sl, chunk) {
                    b.send(to, out(o, len));
                }
            }
        }
    } else if h == hr {
        for j in (0..ns).filter(|j| j % nl == l) {
            let (so, sl) = split(count, ns, j);
            for (o, len) in slices(so, sl, chunk) {
                b.recv(root, out(o, len));
            }
        }
    }
    // 2. Each rail broadcasts its slice from the root's host.
    if nh > 1 {
        for j in (0..ns).filter(|j| j % nl == l) {
            let (so, sl) = split(count, ns, j);
            let mut sub = Shape::new(super::Collective::Broadcast, nh, h, sl, true, chunk);
            sub.root = hr;
            let p = build(inter_algo, &sub)?;
            let scratch = b.scratch(p.scratch_len);
            let place = |x: Range| match x.buf {
                Buf::Scratch => scratch.sub(x.off, x.len),
                _ => out(so + x.off, x.len),
            };
            embed(&mut b, &p, |host| map.on_rail(host, j), place);
        }
    }
    // 3. All-gather the slices around each host.
    gather_slices(&mut b, s, map);
    Ok(b)
}

/// The intra-host ring all-gather of slices (all-reduce's and broadcast's last phase).
fn gather_slices(b: &mut Builder, s: &Shape, map: &HostMap) {
    let (r, count, chunk) = (s.rank, s.count, s.chunk);
    let (_, loc, nl, l, _, ns) = seat(map, r);
    let out = |o, len| Range::new(Buf::Output, o, len);
    let pieces = |g: usize| pieces(count, ns, nl, chunk, g);
    let next = loc[(l + 1) % nl];
    let prev = loc[(l + nl - 1) % nl];
    for st in 0..nl.saturating_sub(1) {
        for (o, len) in pieces((l + nl - st) % nl) {
            b.send(next, out(o, len));
        }
        for (o, len) in pieces((l + 2 * nl - st - 1) % nl) {
            b.recv(prev, out(o, len));
        }
    }
}

/// One rank's hierarchical reduce: an intra-host ring reduce-scatter into scratch, each rail
/// reduces its slice towards the root's host (chain or binomial tree), and the root's host
/// hands the slices to the root.
pub(crate) fn reduce(s: &Shape, map: &HostMap, inter_algo: Algorithm) -> Result<Builder, String> {
    let (r, count, chunk, root) = (s.rank, s.count, s.chunk, s.root);
    let (h, loc, nl, l, nh, ns) = seat(map, r);
    let hr = map.host_of(root);
    let mut b = Builder::new(s);
    let own = |o, len| {
        if s.in_place && r == root {
            Range::new(Buf::Output, o, len)
        } else {
            Range::new(Buf::Input, o, len)
        }
    };
    let part = b.scratch(count);
    let fin = b.scratch(count);
    let pieces = |g: usize| pieces(count, ns, nl, chunk, g);
    let next = loc[(l + 1) % nl];
    let prev = loc[(l + nl - 1) % nl];
    // 1. Reduce-scatter around the host into `part`.
    for st in 0..nl.saturating_sub(1) {
        for (o, len) in pieces((l + 2 * nl - st - 1) % nl) {
            let src = if st == 0 {
                own(o, len)
            } else {
                part.sub(o, len)
            };
            b.send(next, src);
        }
        for (o, len) in pieces((l + 2 * nl - st - 2) % nl) {
            b.recv_reduce(prev, part.sub(o, len), Some(own(o, len)));
        }
    }
    // What this rank holds of slice range (o, len) after the reduce-scatter.
    let cur = |o, len| {
        if nl > 1 {
            part.sub(o, len)
        } else {
            own(o, len)
        }
    };
    for j in (0..ns).filter(|j| j % nl == l) {
        let (so, sl) = split(count, ns, j);
        // 2. Reduce the slice along the rail into `fin` on the root's host.
        if nh > 1 {
            let mut sub = Shape::new(super::Collective::Reduce, nh, h, sl, false, chunk);
            sub.root = hr;
            let p = build(inter_algo, &sub)?;
            let scratch = b.scratch(p.scratch_len);
            let place = |x: Range| match x.buf {
                Buf::Input => cur(so + x.off, x.len),
                Buf::Output => fin.sub(so + x.off, x.len),
                Buf::Scratch => scratch.sub(x.off, x.len),
            };
            embed(&mut b, &p, |host| map.on_rail(host, j), place);
        } else {
            for (o, len) in slices(so, sl, chunk) {
                b.copy(cur(o, len), fin.sub(o, len));
                b.finish(fin.sub(o, len));
            }
        }
        // 3. The root's host hands the reduced slice to the root.
        if h == hr {
            for (o, len) in slices(so, sl, chunk) {
                if r == root {
                    b.copy(fin.sub(o, len), Range::new(Buf::Output, o, len));
                } else {
                    b.send(root, fin.sub(o, len));
                }
            }
        }
    }
    if r == root {
        for j in (0..ns).filter(|j| map.on_rail(hr, *j) != root) {
            let (so, sl) = split(count, ns, j);
            for (o, len) in slices(so, sl, chunk) {
                b.recv(map.on_rail(hr, j), Range::new(Buf::Output, o, len));
            }
        }
    }
    Ok(b)
}

/// The blocks of rail `j` (the ranks of local rank exactly `j`), by host: `None` where a host
/// has fewer ranks.
fn rail_blocks(map: &HostMap, j: usize) -> Vec<Option<usize>> {
    (0..map.nhosts())
        .map(|h| map.ranks(h).get(j).copied())
        .collect()
}

/// The blocks of local group `g` on a host of `nl` ranks: every rank whose local rank is
/// `g mod nl`, rail by rail.
fn group_blocks(map: &HostMap, nl: usize, g: usize) -> Vec<usize> {
    let ns = map.max_local().max(1);
    (0..ns)
        .filter(|j| j % nl == g)
        .flat_map(|j| rail_blocks(map, j).into_iter().flatten())
        .collect()
}

/// One rank's hierarchical all-gather (uniform or per-rank blocks): each rail passes its
/// ranks' blocks around a ring of hosts, then each host passes the rails' blocks around a ring
/// of its ranks. Inter-host traffic stays on its rail.
pub(crate) fn all_gather(s: &Shape, map: &HostMap) -> Builder {
    let (r, chunk) = (s.rank, s.chunk);
    let lay = s.blocks();
    let (h, loc, nl, l, nh, ns) = seat(map, r);
    let mut b = Builder::new(s);
    let blk = |q: usize, o: usize, len: usize| Range::new(Buf::Output, lay.off(q) + o, len);
    if !s.in_place {
        for (o, len) in slices(0, lay.len(r), chunk) {
            b.copy(Range::new(Buf::Input, o, len), blk(r, o, len));
        }
    }
    // 1. Around the hosts, rail by rail.
    for j in (0..ns).filter(|j| j % nl == l) {
        let owners = rail_blocks(map, j);
        let next = map.on_rail((h + 1) % nh, j);
        let prev = map.on_rail((h + nh - 1) % nh, j);
        for st in 0..nh.saturating_sub(1) {
            if let Some(q) = owners[(h + nh - st) % nh] {
                for (o, len) in slices(0, lay.len(q), chunk) {
                    b.send(next, blk(q, o, len));
                }
            }
            if let Some(q) = owners[(h + 2 * nh - st - 1) % nh] {
                for (o, len) in slices(0, lay.len(q), chunk) {
                    b.recv(prev, blk(q, o, len));
                }
            }
        }
    }
    // 2. Around the host, group by group.
    let next = loc[(l + 1) % nl];
    let prev = loc[(l + nl - 1) % nl];
    for st in 0..nl.saturating_sub(1) {
        for q in group_blocks(map, nl, (l + nl - st) % nl) {
            for (o, len) in slices(0, lay.len(q), chunk) {
                b.send(next, blk(q, o, len));
            }
        }
        for q in group_blocks(map, nl, (l + 2 * nl - st - 1) % nl) {
            for (o, len) in slices(0, lay.len(q), chunk) {
                b.recv(prev, blk(q, o, len));
            }
        }
    }
    b
}

/// One rank's hierarchical reduce-scatter (uniform or per-rank blocks): a ring of each host's
/// ranks reduces the rails' blocks over the host, then each rail reduce-scatters its blocks
/// around a ring of hosts.
pub(crate) fn reduce_scatter(s: &Shape, map: &HostMap) -> Builder {
    let (r, chunk) = (s.rank, s.chunk);
    let lay = s.blocks();
    let (h, loc, nl, l, nh, ns) = seat(map, r);
    let mut b = Builder::new(s);
    let input = |q: usize, o: usize, len: usize| s.input_range(lay.off(q) + o, len);
    let acc = b.scratch(lay.total());
    let part = |q: usize, o: usize, len: usize| acc.sub(lay.off(q) + o, len);
    let result = |o: usize, len: usize| {
        let at = if s.in_place { lay.off(r) } else { 0 };
        Range::new(Buf::Output, at + o, len)
    };
    // 1. Around the host: group g's blocks reduced over the host end at local rank g.
    let next = loc[(l + 1) % nl];
    let prev = loc[(l + nl - 1) % nl];
    for st in 0..nl.saturating_sub(1) {
        for q in group_blocks(map, nl, (l + 2 * nl - st - 1) % nl) {
            for (o, len) in slices(0, lay.len(q), chunk) {
                let src = if st == 0 {
                    input(q, o, len)
                } else {
                    part(q, o, len)
                };
                b.send(next, src);
            }
        }
        for q in group_blocks(map, nl, (l + 2 * nl - st - 2) % nl) {
            for (o, len) in slices(0, lay.len(q), chunk) {
                b.recv_reduce(prev, part(q, o, len), Some(input(q, o, len)));
            }
        }
    }
    // What this rank holds of block q after step 1.
    let cur = |q: usize, o: usize, len: usize| {
        if nl > 1 {
            part(q, o, len)
        } else {
            input(q, o, len)
        }
    };
    // 2. Around the hosts, rail by rail: block of host h' ends at host h'.
    for j in (0..ns).filter(|j| j % nl == l) {
        let owners = rail_blocks(map, j);
        let next = map.on_rail((h + 1) % nh, j);
        let prev = map.on_rail((h + nh - 1) % nh, j);
        for st in 0..nh.saturating_sub(1) {
            if let Some(q) = owners[(h + 2 * nh - st - 1) % nh] {
                for (o, len) in slices(0, lay.len(q), chunk) {
                    let src = if st == 0 {
                        cur(q, o, len)
                    } else {
                        part(q, o, len)
                    };
                    b.send(next, src);
                }
            }
            if let Some(q) = owners[(h + 2 * nh - st - 2) % nh] {
                for (o, len) in slices(0, lay.len(q), chunk) {
                    if q == r {
                        let dst = result(o, len);
                        let own = cur(q, o, len);
                        b.recv_reduce(prev, dst, (own != dst).then_some(own));
                    } else {
                        let own = cur(q, o, len);
                        let dst = part(q, o, len);
                        b.recv_reduce(prev, dst, (own != dst).then_some(own));
                    }
                }
            }
        }
    }
    // This rank's block: reduced over every host now (or over its host alone).
    for (o, len) in slices(0, lay.len(r), chunk) {
        if nh == 1 {
            let own = cur(r, o, len);
            if own != result(o, len) {
                b.copy(own, result(o, len));
            }
        }
        b.finish(result(o, len));
    }
    b
}
