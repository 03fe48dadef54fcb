//! Recursive multiplying across rails: a small-message all-reduce for many hosts of several
//! ranks, in about log_k(H) inter-host rounds instead of log_2(H), k − 1 being the ranks per
//! host that serve as ports (`hier-mul`).
//!
//! The hosts are numbered in mixed radix `r_0, r_1, ...` (each `r_t ≤ m + 1`, `m` the fewest
//! ranks on a host, `Π r_t = H`). First the ranks of each host exchange their inputs and each
//! folds them by local rank, so every rank holds the host's sum. In round `t` the hosts that
//! differ only in digit `t` form a group of `r_t`; the host's local rank `l < r_t − 1` sends the
//! host's sum to local rank `l` of the host `l + 1` digits up in the group, receives from the
//! host `l + 1` digits down (its rail) and hands that to the other ranks of its host; every rank
//! then folds the group's `r_t` sums in digit order. Every fold has the same operands in the same
//! order on every rank, so all ranks end with the same bits. After the last round every rank
//! holds the total: about log_k(H) network latencies and as many one-hop exchanges inside hosts.
//!
//! Every inter-host message stays on its rail; every rank talks to O(log H) hosts' ranks plus
//! its own host. Without a radix decomposition (a prime factor of H above `m + 1`) it falls
//! back to the hierarchical all-reduce with recursive doubling between hosts.

use super::{Algorithm, Buf, Builder, Range, Shape, hier, slices};
use crate::topo::HostMap;

/// The radices, largest first where it divides, each at most `most`, whose product is `h`;
/// `None` when a prime factor of `h` exceeds `most`.
pub(crate) fn radices(mut h: usize, most: usize) -> Option<Vec<usize>> {
    let mut v = Vec::new();
    while h > 1 {
        let r = (2..=most.min(h)).rev().find(|r| h % r == 0)?;
        v.push(r);
        h /= r;
    }
    Some(v)
}

/// Adds up `vals` (ranges of `count` elements, in this order) into `dst` at this rank: the same
/// order on every rank that folds the same values, so they all end with the same bits.
fn fold(b: &mut Builder, s: &Shape, vals: &[Range], dst: Range) {
    let acc = b.scratch(s.count);
    for (o, len) in slices(0, s.count, s.chunk) {
        b.copy(vals[0].sub(o, len), acc.sub(o, len));
        for v in &vals[1..] {
            b.reduce(v.sub(o, len), acc.sub(o, len));
        }
        b.copy(acc.sub(o, len), dst.sub(o, len));
    }
}

/// Sends `src` to every rank of `to`, and receives one message of `count` elements from every
/// rank of `from` into a fresh scratch range; returns those ranges in `from`'s order.
fn swap_all(b: &mut Builder, s: &Shape, src: Range, to: &[usize], from: &[usize]) -> Vec<Range> {
    for &q in to {
        for (o, len) in slices(0, s.count, s.chunk) {
            b.send(q, src.sub(o, len));
        }
    }
    from.iter()
        .map(|&q| {
            let dst = b.scratch(s.count);
            for (o, len) in slices(0, s.count, s.chunk) {
                b.recv(q, dst.sub(o, len));
            }
            dst
        })
        .collect()
}

/// One rank's recursive multiplying all-reduce on `map`.
///
/// Every sum is folded in a canonical order (inside a host by local rank, in a group by digit),
/// so every rank ends with the same bits even for floating point.
pub(crate) fn all_reduce(s: &Shape, map: &HostMap) -> Result<Builder, String> {
    let (r, count) = (s.rank, s.count);
    let nh = map.nhosts();
    let m = map.hosts().iter().map(Vec::len).min().unwrap_or(1);
    let Some(rads) = radices(nh, m + 1) else {
        return hier::all_reduce(s, map, Algorithm::Rhd);
    };
    let h = map.host_of(r);
    let loc = map.ranks(h).to_vec();
    let l = map.local_rank(r);
    let mut b = Builder::new(s);
    let out = Range::new(Buf::Output, 0, count);
    let own = s.input_range(0, count);
    // The host's sum, folded by local rank on every rank of the host.
    let others: Vec<usize> = loc.iter().copied().filter(|&q| q != r).collect();
    let got = swap_all(&mut b, s, own, &others, &others);
    let mut vals = got;
    vals.insert(l, own);
    fold(&mut b, s, &vals, out);
    let mut stride = 1;
    for &rt in &rads {
        let d = (h / stride) % rt;
        let host_at = |e: usize| h - d * stride + (e % rt) * stride;
        let ports = rt - 1;
        // Port l: the host's sum to the host l + 1 digits up, from the host l + 1 digits down.
        let mut from_port: Vec<Option<Range>> = vec![None; ports];
        if l < ports {
            let tmp = swap_all(
                &mut b,
                s,
                out,
                &[map.ranks(host_at(d + l + 1))[l]],
                &[map.ranks(host_at(d + rt - l - 1))[l]],
            )[0];
            // Every other rank of the host gets what this port received.
            let rest: Vec<usize> = loc.iter().copied().filter(|&q| q != r).collect();
            swap_all(&mut b, s, tmp, &rest, &[]);
            from_port[l] = Some(tmp);
        }
        for (k, slot) in from_port.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = Some(swap_all(&mut b, s, out, &[], &[loc[k]])[0]);
            }
        }
        // The group's sum by digit: digit d is this host, digit d − k − 1 came through port k.
        let vals: Vec<Range> = (0..rt)
            .map(|e| {
                if e == d {
                    out
                } else {
                    let k = (d + rt - e) % rt - 1;
                    from_port[k].expect("every port's value is here")
                }
            })
            .collect();
        fold(&mut b, s, &vals, out);
        stride *= rt;
    }
    for (o, len) in slices(0, count, s.chunk) {
        b.finish(out.sub(o, len));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::radices;

    #[test]
    fn radices_multiply_to_the_host_count() {
        assert_eq!(radices(2048, 9), Some(vec![8, 8, 8, 4]));
        assert_eq!(radices(12, 3), Some(vec![3, 2, 2]));
        assert_eq!(radices(1, 9), Some(vec![]));
        assert_eq!(radices(7, 4), None);
    }
}
