//! The textbook fast path of the cost model, for rank counts the tuner does not simulate.

use crate::algo::{Algorithm, Collective};
use crate::sim::{Link, Network};

/// Textbook costs, for any rank count, on `net` with ranks placed in order (`ranks_per_host`
/// consecutive ranks per host). `s` is the rank block in bytes, `c` the chunk, `p` the largest
/// power of two ≤ n, `d` the depth of the binary trees. A hop between ranks `k` apart costs
/// α = lat + 2·overhead and β = 1/bw of the intra-host links when `k < ranks_per_host`, else of
/// the inter-host ones (β times `oversub` where every rank crosses the core at once); `max`
/// means the slowest class in use.
///
/// | all-reduce | time |
/// |---|---|
/// | ring | 2(n−1)·ᾱ + 2(n−1)/n·s·β_max + (n−1)/n·s·γ, ᾱ the mean over the ring's hops |
/// | direct | α_max + max over classes of (messages × (overhead + s·β)) + (n−1)·s·γ |
/// | rhd | Σ 2α_m + max over classes of Σ 2·s_m·β_m + Σ s_m·γ, over the log p exchanges at distance m = p/2, …, 1 (s_m the half exchanged; classes use their own ports, so they overlap); + 2(α + s·β) + s·γ when n ≠ p |
/// | tree | Σ over the d levels of 2(α_ℓ + min(c, s/2)·β_ℓ) + 2·s·β_max + s·γ (β_max with the core's share across hosts) |
/// | doubling | Σ α_m + max(Σ s·β_m per class, log p·s·γ) over the log p rounds at distance m (slices pipeline across rounds) |
/// | hier, hier-tree, hier-rhd | the larger of: a ring inside the host, 2(r−1)·α_i + 2(r−1)/r·s·β_i + (r−1)/r·s·γ (r ranks per host); the ring, tree or rhd formula over the hosts for a slice s/r, every rank crossing the core at once (β·oversub); plus 2(r−1)·α_i (the phases pipeline slice by slice) |
///
/// The tree's bandwidth term is the textbook 2s·β because its Programs emit the up phase a few
/// slices ahead of the down phase (on a link both trees use, one tree's down messages would
/// otherwise hold up the other's up messages). `tests/sim.rs` checks these formulas against the
/// simulator.
///
/// hier-mul (all-reduce): (R + 1)·(⌈log r⌉ + 1)·(α_i + s·β_i + s·γ) + R·(α_e + s·β_e·oversub + s·γ)
/// for R rounds of radix ≤ r + 1 between the hosts (else hier-rhd's).
///
/// Hierarchical broadcast / reduce: 2(r−1)·α_i + 2(r−1)/r·s·β_i (+ γ) inside the host plus
/// the chain or tree formula between hosts for s/r; all-gather / reduce-scatter: (H−1)·(α_e +
/// s·β_e·oversub) between hosts plus (r−1)·(α_i + H·s·β_i) inside (+ γ per byte reduced).
///
/// Broadcast / reduce: chain (n−1)·(α + c·β) + s·β (+ s·γ); binomial tree ⌈log n⌉·(α + s·β).
/// All-gather / reduce-scatter: ring (n−1)·(α + s·β (+ s·γ)); Bruck ⌈log n⌉·α + (n−1)·s·β
/// (+ γ). Gather / scatter: binomial tree ⌈log n⌉·α + (n−1)·s·β (the root moves every block
/// once, over ⌈log n⌉ links). Others (linear gather / scatter, all-to-all): (n−1)·(α + s·β),
/// barrier ⌈log n⌉·α; these use the slowest class throughout.
pub fn formula(
    coll: Collective,
    algo: Algorithm,
    nranks: usize,
    block: usize,
    chunk: usize,
    net: &Network,
) -> f64 {
    use Algorithm as A;
    use Collective as C;
    if nranks <= 1 {
        return 0.0;
    }
    let n = nranks as f64;
    let rph = net.ranks_per_host.clamp(1, nranks);
    let hosts = nranks.div_ceil(rph);
    let crowd = if hosts > 1 { net.oversub.max(1.0) } else { 1.0 };
    let hop = |l: Link| (l.lat + 2.0 * l.overhead, 1.0 / l.bw);
    let (ai, bi) = hop(net.intra);
    let (ae, be) = if hosts > 1 { hop(net.inter) } else { (ai, bi) };
    // A hop between ranks `k` apart; `all` when every rank makes one at once (the core's share).
    let at = |k: usize, all: bool| {
        if hosts > 1 && k >= rph {
            (ae, if all { be * crowd } else { be })
        } else {
            (ai, bi)
        }
    };
    let (alpha, beta) = (ae, be);
    let gamma = 1.0 / net.reduce_bw;
    let s = block as f64;
    let c = chunk.max(1) as f64;
    let lg = n.log2().ceil();
    match (coll, algo) {
        (C::AllReduce, A::Ring) => {
            let h = (hosts as f64).min(n);
            let mean = if hosts > 1 {
                ((n - h) * ai + h * ae) / n
            } else {
                ai
            };
            2.0 * (n - 1.0) * mean + 2.0 * (n - 1.0) / n * s * beta + (n - 1.0) / n * s * gamma
        }
        (C::AllReduce, A::Direct) => {
            let intra = (rph - 1) as f64 * (net.intra.overhead + s * bi);
            let inter = if hosts > 1 {
                (nranks - rph) as f64 * (net.inter.overhead + s * be * crowd)
            } else {
                0.0
            };
            alpha + intra.max(inter) + (n - 1.0) * s * gamma
        }
        (C::AllReduce, A::Rhd) => {
            // Latencies add up; the bytes of different link classes travel on different ports
            // and overlap (the exchanges are pipelined), so the busier class decides.
            let p = 1usize << (usize::BITS - 1 - nranks.leading_zeros());
            let (mut lat, mut wire, mut red) = (0.0, [0.0f64; 2], 0.0);
            let (mut m, mut part) = (p / 2, s / 2.0);
            while m > 0 {
                let (a, b) = at(m, true);
                lat += 2.0 * a;
                wire[usize::from(hosts > 1 && m >= rph)] += 2.0 * part * b;
                red += part * gamma;
                m /= 2;
                part /= 2.0;
            }
            let fold = if p < nranks {
                2.0 * (ai + s * bi) + s * gamma
            } else {
                0.0
            };
            lat + wire[0].max(wire[1]) + red + fold
        }
        (C::AllReduce, A::Doubling) => {
            // log p rounds of the whole buffer (distances p/2 .. 1), plus the fold.
            // Slices pipeline across rounds: each class's port and the reduction stream.
            let p = 1usize << (usize::BITS - 1 - nranks.leading_zeros());
            let (mut lat, mut wire, mut red, mut m) = (0.0, [0.0f64; 2], 0.0, p / 2);
            // One slice's way through every round: what is left when nothing pipelines.
            let mut one = 0.0;
            while m > 0 {
                let (a, b) = at(m, true);
                lat += a;
                one += c.min(s) * (b + gamma);
                wire[usize::from(hosts > 1 && m >= rph)] += s * b;
                red += s * gamma;
                m /= 2;
            }
            let fold = if p < nranks {
                2.0 * (ai + s * bi) + s * gamma
            } else {
                0.0
            };
            lat + wire[0].max(wire[1]).max(red).max(one) + fold
        }
        (C::AllReduce, A::Tree) => {
            let d = n.log2().floor() as u32;
            let slice = c.min(s / 2.0);
            let fill: f64 = (1..=d)
                .map(|l| {
                    let (a, b) = at(1 << (l - 1), false);
                    2.0 * (a + slice * b)
                })
                .sum();
            // With the up phase emitted ahead of the down phase (algo::tree), each tree streams:
            // a rank moves about its data twice (up and down, half per tree); across hosts every
            // rank does at once, through the core's share.
            let b = if hosts > 1 { bi.max(be * crowd) } else { bi };
            fill + 2.0 * s * b + s * gamma
        }
        (C::AllReduce, A::Hier | A::HierTree | A::HierRhd) => {
            // A ring inside each host over the whole buffer (reduce-scatter, then all-gather),
            // and the flat algorithm between hosts on a 1/rph slice, every rank on its own port
            // at once (so through the core's share).
            let l = rph as f64;
            let intra = if rph > 1 {
                2.0 * (l - 1.0) * ai + 2.0 * (l - 1.0) / l * s * bi + (l - 1.0) / l * s * gamma
            } else {
                0.0
            };
            // With fewer NICs than ranks per host, the ranks sharing one split its bandwidth.
            let share = match net.nics_per_host {
                0 => 1.0,
                k => (k as f64 / l).min(1.0),
            };
            let rail = Network {
                ranks_per_host: 1,
                inter: Link {
                    bw: net.inter.bw * share / crowd,
                    ..net.inter
                },
                oversub: 1.0,
                ..net.clone()
            };
            let inner = crate::algo::hier::inter(algo);
            let inter = formula(coll, inner, hosts, block.div_ceil(rph), chunk, &rail);
            // The phases pipeline slice by slice: the busier one decides, plus the intra-host
            // hops' latency.
            intra.max(inter) + 2.0 * (l - 1.0) * ai
        }
        (C::AllReduce, A::HierMul) => {
            // Rounds between hosts, each followed by a doubling all-reduce inside the host (and
            // one before the first).
            match crate::algo::multiply::radices(hosts, rph + 1) {
                Some(rads) if hosts > 1 => {
                    let lgl = (rph as f64).log2().ceil() + 1.0;
                    let inside = lgl * (ai + s * bi + s * gamma);
                    let between = ae + s * be * crowd + s * gamma;
                    inside + rads.len() as f64 * (between + inside)
                }
                _ => formula(coll, A::HierRhd, nranks, block, chunk, net),
            }
        }
        (C::Broadcast | C::Reduce, A::Hier | A::HierTree) => {
            // Scatter (reduce-scatter) inside the host, the slice s/r between hosts on each rail,
            // all-gather (gather) inside the host.
            let l = rph as f64;
            let red = if coll == C::Reduce { gamma } else { 0.0 };
            let intra = if rph > 1 {
                2.0 * (l - 1.0) * ai + 2.0 * (l - 1.0) / l * s * bi + (l - 1.0) / l * s * red
            } else {
                0.0
            };
            let rail = Network {
                ranks_per_host: 1,
                oversub: 1.0,
                ..net.clone()
            };
            let inner = if algo == A::HierTree {
                A::Tree
            } else {
                A::Chain
            };
            intra + formula(coll, inner, hosts, block.div_ceil(rph), chunk, &rail)
        }
        (C::AllGather | C::ReduceScatter, A::Hier) => {
            // A ring of hosts per rail (each rank's block, through the core's share), then a ring
            // of the host's ranks passing every host's blocks.
            let (l, h) = (rph as f64, hosts as f64);
            let red = if coll == C::ReduceScatter { gamma } else { 0.0 };
            let inter = (h - 1.0) * (ae + s * (be * crowd + red));
            let intra = (l - 1.0) * (ai + h * s * (bi + red));
            inter + intra
        }
        (C::Broadcast, A::Chain) => (n - 1.0) * (alpha + c.min(s) * beta) + s * beta,
        (C::Reduce, A::Chain) => {
            (n - 1.0) * (alpha + c.min(s) * (beta + gamma)) + s * (beta + gamma)
        }
        (C::Broadcast, _) => lg * (alpha + s * beta),
        (C::Reduce, _) => lg * (alpha + s * (beta + gamma)),
        (C::AllGather, A::Ring) => (n - 1.0) * (alpha + s * beta),
        (C::ReduceScatter, A::Ring) => (n - 1.0) * (alpha + s * (beta + gamma)),
        (C::AllGather, _) => lg * alpha + (n - 1.0) * s * beta,
        (C::ReduceScatter, _) => lg * alpha + (n - 1.0) * s * (beta + gamma),
        (C::Gather | C::Scatter, A::Tree) => lg * alpha + (n - 1.0) * s * beta,
        (C::AllToAll, _) => (n - 1.0) * (alpha + s * beta * crowd),
        (C::Barrier, _) => lg * alpha,
        _ => (n - 1.0) * (alpha + s * beta),
    }
}
