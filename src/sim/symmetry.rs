//! Symmetry: which ranks' Programs are images of each other under a map of ranks that also
//! preserves the network, and how exactly (see the parent module's docs).

use super::{Network, Options, Symmetry, build_one};
use crate::algo::{Algorithm, Collective, Op, Program};

/// A symmetry of ranks: which ranks are replayed, and how a rank maps onto its representative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// Every rank is its own representative.
    Identity,
    /// Rank `r` is represented by `r % p`; the map is a rotation by a multiple of `p`.
    Rotate(usize),
    /// Rank `r` is represented by `r % p` (`p` a power of two); the map XORs a multiple of `p`.
    Xor(usize),
    /// Hosts of `p` ranks numbered in the mixed radix `Radix` (`hier-mul`'s groups): rank `r` is
    /// represented by `r % p`, and the map subtracts a host number digit by digit (no carry),
    /// local ranks unchanged.
    Digits(usize, Radix),
}

/// Up to [`Radix::MAX`] digits' radices, lowest digit first (a `Copy` stand-in for a `Vec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Radix {
    len: usize,
    r: [u32; Radix::MAX],
}

impl Radix {
    const MAX: usize = 32;

    /// The radices, lowest digit first; `None` beyond [`Radix::MAX`] digits or with a radix 0.
    pub(crate) fn new(rads: &[usize]) -> Option<Radix> {
        if rads.len() > Radix::MAX || rads.iter().any(|&x| x == 0 || x > u32::MAX as usize) {
            return None;
        }
        let mut r = [1u32; Radix::MAX];
        for (d, &x) in r.iter_mut().zip(rads) {
            *d = x as u32;
        }
        Some(Radix { len: rads.len(), r })
    }

    /// `a - b` digit by digit, each digit modulo its radix.
    fn sub(&self, mut a: usize, mut b: usize) -> usize {
        let (mut out, mut stride) = (0, 1);
        for &x in &self.r[..self.len] {
            let x = x as usize;
            let (da, db) = (a % x, b % x);
            out += ((da + x - db) % x) * stride;
            stride *= x;
            a /= x;
            b /= x;
        }
        out
    }
}

impl Group {
    /// Ranks replayed.
    pub(crate) fn reps(self, n: usize) -> usize {
        match self {
            Group::Identity => n,
            Group::Rotate(p) | Group::Xor(p) | Group::Digits(p, _) => p,
        }
    }

    /// The representative of rank `r`.
    pub(crate) fn rep(self, r: usize) -> usize {
        match self {
            Group::Identity => r,
            Group::Rotate(p) | Group::Xor(p) | Group::Digits(p, _) => r % p,
        }
    }

    /// Applies to `a` the map that carries `q` to its representative.
    pub(crate) fn carry(self, n: usize, q: usize, a: usize) -> usize {
        match self {
            Group::Identity => a,
            Group::Rotate(_) => (a + n - (q - self.rep(q))) % n,
            Group::Xor(_) => a ^ (q - self.rep(q)),
            Group::Digits(p, rad) => rad.sub(a / p, q / p) * p + a % p,
        }
    }
}

/// The symmetry the algorithm's Programs promise, if the network shares it.
pub(super) fn candidate(coll: Collective, algo: Algorithm, n: usize, net: &Network) -> Group {
    use Algorithm as A;
    use Collective as C;
    let p = net.ranks_per_host;
    if p == 0 || p >= n || n % p != 0 {
        return Group::Identity;
    }
    match (coll, algo) {
        (C::AllReduce, A::Ring | A::Direct | A::Ordered)
        | (C::AllGather | C::ReduceScatter, A::Ring)
        | (C::AllToAll, A::Pairwise)
        | (C::Barrier, A::Dissemination) => Group::Rotate(p),
        (C::AllReduce, A::Rhd | A::Doubling) if n.is_power_of_two() && p.is_power_of_two() => {
            Group::Xor(p)
        }
        // Hosts map to hosts and local ranks to themselves: the intra-host rings are unchanged
        // and the inter-host Program is the flat one's image over host indices.
        (C::AllReduce, A::Hier) => Group::Rotate(p),
        (C::AllReduce, A::HierRhd) if n.is_power_of_two() && p.is_power_of_two() => Group::Xor(p),
        // Recursive multiplying: every round pairs hosts a digit apart, so subtracting a host
        // number digit by digit maps the Programs onto each other (its canonical fold order
        // is not, which makes the symmetry approximate). Without radices it is `hier-rhd`.
        (C::AllReduce, A::HierMul) => {
            match crate::algo::multiply::radices(n / p, p + 1).and_then(|r| Radix::new(&r)) {
                Some(r) => Group::Digits(p, r),
                None if n.is_power_of_two() && p.is_power_of_two() => Group::Xor(p),
                None => Group::Identity,
            }
        }
        _ => Group::Identity,
    }
}

/// Compares the Program of `rank` with its representative's: the symmetry level it supports,
/// or `None` when it is not an image at all. Message steps must match one to one (kind, carried
/// peer, size within one element); local steps that differ in kind, order or dependencies
/// (the direct all-reduce's rank-order reduction) make it approximate.
fn compare(g: Group, n: usize, rep: &Program, other: &Program) -> Option<Symmetry> {
    let q = other.shape.rank;
    let msgs = |p: &Program| -> Vec<(u8, usize, usize)> {
        p.steps
            .iter()
            .filter_map(|s| s.op.peer().map(|peer| (kind(&s.op), peer, op_len(&s.op))))
            .collect()
    };
    let (ma, mb) = (msgs(rep), msgs(other));
    if ma.len() != mb.len() {
        return None;
    }
    let mut level = Symmetry::Exact;
    for (&(ka, pa, la), &(kb, pb, lb)) in ma.iter().zip(&mb) {
        if ka != kb || pa != g.carry(n, q, pb) || la.abs_diff(lb) > 1 {
            return None;
        }
        if la != lb {
            level = Symmetry::Near;
        }
    }
    let same_shape = rep.steps.len() == other.steps.len()
        && rep
            .steps
            .iter()
            .zip(&other.steps)
            .all(|(a, b)| kind(&a.op) == kind(&b.op) && a.deps == b.deps);
    if !same_shape {
        level = Symmetry::Approx;
    }
    Some(level)
}

pub(super) fn kind(op: &Op) -> u8 {
    match op {
        Op::Send { .. } => 0,
        Op::Recv { .. } => 1,
        Op::RecvReduce { .. } => 2,
        Op::Copy { .. } => 3,
        Op::Reduce { .. } => 4,
        Op::Finish { .. } => 5,
    }
}

/// Elements an op moves or touches.
pub(super) fn op_len(op: &Op) -> usize {
    match *op {
        Op::Send { src, .. } | Op::Copy { src, .. } | Op::Reduce { src, .. } => src.len,
        Op::Recv { dst, .. } | Op::RecvReduce { dst, .. } | Op::Finish { dst } => dst.len,
    }
}

/// Checks the symmetry on sample ranks: the first and last representative, carried halfway
/// round (and once round, for rotations).
pub(super) fn verify(
    coll: Collective,
    algo: Algorithm,
    n: usize,
    size: usize,
    g: Group,
    o: &Options,
    reps: &[Program],
) -> Result<Option<Symmetry>, String> {
    let p = reps.len();
    let copies = n / p;
    let mut ks = vec![copies / 2, 1, copies - 1];
    ks.sort_unstable();
    ks.dedup();
    ks.retain(|&k| k > 0);
    let mut level = Symmetry::Exact;
    for r in [0, p - 1] {
        for &k in &ks {
            let other = build_one(coll, algo, n, r + k * p, size, o)?;
            match compare(g, n, &reps[r], &other) {
                Some(l) => level = level.max(l),
                None => return Ok(None),
            }
        }
    }
    Ok(Some(level))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Link, build_reps};

    #[test]
    fn groups_carry_peers_to_representatives() {
        let n = 16;
        let g = Group::Rotate(4);
        assert_eq!(g.rep(13), 1);
        // Rank 12 sends to 13; carried by -12 that is rank 0 sending to 1.
        assert_eq!(g.carry(n, 12, 13), 1);
        // Rank 3's link to rank 4 is rank 15's link to rank 0 carried by +4... seen from rep 0.
        assert_eq!(g.carry(n, 4, 3), 15);
        let x = Group::Xor(4);
        assert_eq!(x.rep(13), 1);
        assert_eq!(x.carry(n, 13, 9), 9 ^ 12);
        // Hosts 0..6 in radix (3, 2): host 5 = digits (2, 1); host 4 = (1, 1); 4 - 5 = (2, 0) = 2.
        let d = Group::Digits(2, Radix::new(&[3, 2]).unwrap());
        assert_eq!(d.rep(11), 1);
        assert_eq!(d.carry(12, 10, 9), 2 * 2 + 1);
        assert_eq!(d.carry(12, 10, 10), 0);
    }

    #[test]
    fn recursive_multiplying_is_a_digit_translation() {
        // 12 hosts of 2 ranks: radices (3, 2, 2); no carry, so rotations would not do.
        let net = Network {
            ranks_per_host: 2,
            ..Network::flat(Link::new(1e-6, 1e10), 1e10)
        };
        let o = Options {
            per_host: 2,
            ..Options::default()
        };
        let g = candidate(Collective::AllReduce, Algorithm::HierMul, 24, &net);
        assert!(matches!(g, Group::Digits(2, _)), "{g:?}");
        let (c, a) = (Collective::AllReduce, Algorithm::HierMul);
        let lvl = verify(
            c,
            a,
            24,
            4096,
            g,
            &o,
            &build_reps(c, a, 24, 4096, g, &o).unwrap(),
        );
        assert!(matches!(lvl, Ok(Some(_))), "{lvl:?}");
        let all_reduce = |o: &Options| crate::sim::simulate(c, a, 24, 4096, &net, o);
        // The replay of one host agrees with the full one. (An approximate symmetry is used only
        // where a full replay would not fit the budget.)
        let full = all_reduce(&Options {
            symmetry: false,
            ..o.clone()
        })
        .unwrap();
        let sym = all_reduce(&Options {
            max_steps: 300,
            ..o.clone()
        })
        .unwrap();
        assert_eq!(sym.replayed, 2);
        // Host 0 folds its own sum first and waits least: the replay of its ranks is a little
        // early at small sizes (12.6 us against 13.8 here), hence `Approx`.
        assert_eq!(sym.symmetry, Symmetry::Approx);
        assert!(
            (sym.time - full.time).abs() <= 0.15 * full.time,
            "{sym:?} vs {full:?}"
        );
    }

    #[test]
    fn ring_programs_are_rotations_of_each_other() {
        let net = Network {
            ranks_per_host: 4,
            ..Network::flat(Link::new(1e-6, 1e10), 1e10)
        };
        let o = Options::default();
        let g = candidate(Collective::AllReduce, Algorithm::Ring, 32, &net);
        assert_eq!(g, Group::Rotate(4));
        let reps = build_reps(Collective::AllReduce, Algorithm::Ring, 32, 4096, g, &o).unwrap();
        let lvl = verify(
            Collective::AllReduce,
            Algorithm::Ring,
            32,
            4096,
            g,
            &o,
            &reps,
        );
        assert_eq!(lvl, Ok(Some(Symmetry::Exact)));
        let lvl = verify(
            Collective::AllReduce,
            Algorithm::Ring,
            32,
            4100,
            g,
            &o,
            &reps,
        );
        assert!(matches!(lvl, Ok(None) | Ok(Some(Symmetry::Near))));
    }

    #[test]
    fn rhd_programs_are_xor_images() {
        let net = Network {
            ranks_per_host: 4,
            ..Network::flat(Link::new(1e-6, 1e10), 1e10)
        };
        let o = Options::default();
        let g = candidate(Collective::AllReduce, Algorithm::Rhd, 64, &net);
        assert_eq!(g, Group::Xor(4));
        let reps = build_reps(Collective::AllReduce, Algorithm::Rhd, 64, 1 << 16, g, &o).unwrap();
        let lvl = verify(
            Collective::AllReduce,
            Algorithm::Rhd,
            64,
            1 << 16,
            g,
            &o,
            &reps,
        );
        assert_eq!(lvl, Ok(Some(Symmetry::Exact)));
    }

    #[test]
    fn direct_is_only_approximately_symmetric() {
        let net = Network {
            ranks_per_host: 2,
            ..Network::flat(Link::new(1e-6, 1e10), 1e10)
        };
        let o = Options::default();
        let g = candidate(Collective::AllReduce, Algorithm::Direct, 8, &net);
        let reps = build_reps(Collective::AllReduce, Algorithm::Direct, 8, 64, g, &o).unwrap();
        let lvl = verify(
            Collective::AllReduce,
            Algorithm::Direct,
            8,
            64,
            g,
            &o,
            &reps,
        );
        assert_eq!(lvl, Ok(Some(Symmetry::Approx)));
    }
}
