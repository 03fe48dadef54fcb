//! The verifier over host maps: every collective and algorithm built with [`build_on`] on block,
//! cyclic, random and uneven placements, and the placement-independence property.

use proptest::prelude::*;

use super::verify::run;
use super::{
    Algorithm, COLLS, Collective, Op, Program, Shape, build_on, pick_case, shapes, xorshift,
};
use crate::topo::HostMap;

/// A random map of `n` ranks on at most `hosts` hosts (some may end up uneven).
fn random_map(n: usize, hosts: usize, seed: u64) -> HostMap {
    let mut next = xorshift(seed);
    let h = hosts.max(1);
    HostMap::from_hosts(&(0..n).map(|_| (next() as usize) % h).collect::<Vec<_>>())
}

#[allow(clippy::too_many_arguments)]
fn check(
    coll: Collective,
    algo: Algorithm,
    map: &HostMap,
    count: usize,
    root: usize,
    in_place: bool,
    chunk: usize,
    credits: usize,
    seed: u64,
) -> Result<(), String> {
    let n = map.nranks();
    let progs: Vec<Program> = shapes(coll, n, count, root, in_place, chunk, seed)
        .into_iter()
        .map(|mut s| {
            if coll == Collective::Barrier {
                s.in_place = false;
            }
            build_on(algo, &s, map)
        })
        .collect::<Result<_, _>>()?;
    run(&progs, credits, seed).map_err(|e| {
        format!(
            "{} {} hosts {:?} count={count} root={root} in_place={in_place} chunk={chunk}: {e}",
            coll.name(),
            algo.name(),
            map.hosts()
        )
    })
}

fn maps(n: usize) -> Vec<HostMap> {
    let mut v = vec![HostMap::cyclic(n, 2), random_map(n, 3, n as u64 * 77)];
    if n >= 4 {
        // Uneven: three ranks on one host, the rest one per host.
        v.push(HostMap::from_hosts(
            &(0..n).map(|r| r.saturating_sub(2)).collect::<Vec<_>>(),
        ));
    }
    v
}

#[test]
fn small_cases_on_host_maps() {
    for n in 1usize..=8 {
        for map in maps(n) {
            for coll in COLLS {
                for &algo in coll.algorithms() {
                    for count in [0, 1, 2 * n + 1, 37] {
                        for in_place in [false, true] {
                            for chunk in [3, 64] {
                                check(coll, algo, &map, count, n - 1, in_place, chunk, 1, 5)
                                    .unwrap_or_else(|e| panic!("{e}"));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn hierarchical_collectives_on_even_and_uneven_hosts() {
    let layouts: [&[usize]; 6] = [
        &[0, 0, 0, 1],
        &[0, 1, 0, 1, 0, 1, 0, 1],
        &[0, 0, 1, 1, 2, 2, 3, 3],
        &[0, 1, 2, 0, 1, 2, 0],
        &[0, 0, 0, 0, 1, 2, 2, 3, 3, 3],
        &[5, 5, 5, 5, 5, 5],
    ];
    for hosts in layouts {
        let map = HostMap::from_hosts(hosts);
        let cases = COLLS.iter().flat_map(|&c| {
            c.algorithms()
                .iter()
                .filter(|a| a.is_hier())
                .map(move |&a| (c, a))
        });
        for (coll, algo) in cases {
            for count in [0, 1, 5, 64, 101] {
                for in_place in [false, true] {
                    for chunk in [3, 1000] {
                        for credits in [1, 4] {
                            check(
                                coll,
                                algo,
                                &map,
                                count,
                                count % hosts.len(),
                                in_place,
                                chunk,
                                credits,
                                count as u64 + 3,
                            )
                            .unwrap_or_else(|e| panic!("{e}"));
                        }
                    }
                }
            }
        }
    }
}

/// Each rank's messages as (kind, position of the peer in the topology order, length).
fn messages(p: &Program, pos: &[usize]) -> Vec<(u8, usize, usize)> {
    p.steps
        .iter()
        .filter_map(|s| match s.op {
            Op::Send { peer, src } => Some((0, pos[peer], src.len)),
            Op::Recv { peer, dst } => Some((1, pos[peer], dst.len)),
            Op::RecvReduce { peer, dst, .. } => Some((2, pos[peer], dst.len)),
            _ => None,
        })
        .collect()
}

/// The schedule does not depend on the placement: under a cyclic placement, the rank at each
/// position of the topology order runs the same messages (peers as positions) as the rank at
/// that position under a block placement.
#[test]
fn placement_does_not_change_the_schedule() {
    let (hosts, per) = (4, 3);
    let n = hosts * per;
    let block = HostMap::block(n, per);
    let cyclic = HostMap::cyclic(n, hosts);
    let shuffled = {
        let mut next = xorshift(99);
        let mut ranks: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            ranks.swap(i, (next() as usize) % (i + 1));
        }
        let mut host_of = vec![0; n];
        for (i, &r) in ranks.iter().enumerate() {
            host_of[r] = i / per;
        }
        HostMap::from_hosts(&host_of)
    };
    let cases = [
        (Collective::AllReduce, Algorithm::Ring),
        (Collective::AllReduce, Algorithm::Tree),
        (Collective::AllReduce, Algorithm::Rhd),
        (Collective::AllReduce, Algorithm::Direct),
        (Collective::AllReduce, Algorithm::Hier),
        (Collective::AllReduce, Algorithm::HierTree),
        (Collective::AllReduce, Algorithm::HierRhd),
        (Collective::Broadcast, Algorithm::Chain),
        (Collective::Broadcast, Algorithm::Tree),
        (Collective::Reduce, Algorithm::Chain),
        (Collective::Reduce, Algorithm::Tree),
        (Collective::AllGather, Algorithm::Ring),
        (Collective::ReduceScatter, Algorithm::Ring),
        (Collective::Barrier, Algorithm::Dissemination),
    ];
    for other in [&cyclic, &shuffled] {
        let (ob, oo) = (block.order(), other.order());
        let mut pb = vec![0; n];
        let mut po = vec![0; n];
        for i in 0..n {
            pb[ob[i]] = i;
            po[oo[i]] = i;
        }
        for (coll, algo) in cases {
            for i in 0..n {
                let shape = |rank: usize, root: usize| {
                    let mut s = Shape::new(coll, n, rank, 4 * n + 1, false, 4);
                    s.root = root;
                    s
                };
                // The root sits at the same position in both.
                let a = build_on(algo, &shape(ob[i], ob[5]), &block).unwrap();
                let b = build_on(algo, &shape(oo[i], oo[5]), other).unwrap();
                assert_eq!(
                    messages(&a, &pb),
                    messages(&b, &po),
                    "{} {} position {i}",
                    coll.name(),
                    algo.name()
                );
            }
        }
    }
}

/// Inter-host messages of the hierarchical all-reduce stay on their rail: between ranks of the
/// same local rank.
#[test]
fn hierarchical_traffic_stays_on_rails() {
    let map = HostMap::cyclic(32, 4);
    for coll in COLLS {
        for &algo in coll.algorithms().iter().filter(|a| a.is_hier()) {
            for r in 0..32 {
                let mut shape = Shape::new(coll, 32, r, 1000, false, 16);
                shape.root = 13;
                if matches!(coll, Collective::AllGatherV | Collective::ReduceScatterV) {
                    shape.counts = (0..32).map(|q| q * 3 % 7).collect();
                }
                let p = build_on(algo, &shape, &map).unwrap();
                for peer in p.peers() {
                    if map.host_of(peer) != map.host_of(r) {
                        assert_eq!(
                            map.local_rank(peer),
                            map.local_rank(r),
                            "{} {}",
                            coll.name(),
                            algo.name()
                        );
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn every_collective_on_random_host_maps(ci in 0usize..12, ai in 0usize..8, n in 1usize..=64,
                                            hosts in 1usize..9, map_seed: u64, count in 0usize..160,
                                            root in 0usize..64, chunk in 1usize..48, in_place: bool,
                                            credits in 1usize..4, seed: u64) {
        let (coll, algo, n, count, chunk) = pick_case(ci, ai, n, count, chunk);
        let map = random_map(n, hosts, map_seed);
        prop_assert_eq!(check(coll, algo, &map, count, root, in_place, chunk, credits, seed), Ok(()));
    }

    #[test]
    fn hierarchical_collectives_on_random_host_maps(ci in 0usize..12, ai in 0usize..3, n in 1usize..=64,
                                                   hosts in 1usize..12, map_seed: u64, count in 0usize..300,
                                                   root in 0usize..64, chunk in 1usize..64, in_place: bool,
                                                   credits in 1usize..4, seed: u64) {
        let coll = COLLS[ci];
        let hier: Vec<Algorithm> = coll.algorithms().iter().copied().filter(|a| a.is_hier()).collect();
        prop_assume!(!hier.is_empty());
        let algo = hier[ai % hier.len()];
        let chunk = chunk.max(count.div_ceil(8));
        let map = random_map(n, hosts, map_seed);
        prop_assert_eq!(check(coll, algo, &map, count, root, in_place, chunk, credits, seed), Ok(()));
    }
}

#[test]
fn tree_gather_and_scatter_for_every_rank_count_and_root() {
    // 1..=64 ranks, every root, on rank order (one host) and on a random map of 3 hosts (a
    // topology order that is not rank order, so subtrees split into several runs of blocks);
    // 3 elements per block in chunks of 4, so messages cross block boundaries.
    for coll in [Collective::Gather, Collective::Scatter] {
        for n in 1usize..=64 {
            let one = HostMap::from_hosts(&vec![0; n]);
            for map in [one, random_map(n, 3, n as u64 * 31)] {
                for root in 0..n {
                    let in_place = root % 2 == 1;
                    check(
                        coll,
                        Algorithm::Tree,
                        &map,
                        3,
                        root,
                        in_place,
                        4,
                        1 + root % 3,
                        5,
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                }
            }
        }
    }
}

#[test]
fn tree_gather_and_scatter_talk_to_log_n_peers() {
    for coll in [Collective::Gather, Collective::Scatter] {
        for n in [2usize, 5, 33, 64, 100] {
            let lg = (usize::BITS - (n - 1).leading_zeros()) as usize;
            let map = random_map(n, 4, 9);
            for root in [0, n / 2, n - 1] {
                for rank in 0..n {
                    let mut s = Shape::new(coll, n, rank, 5, false, 8);
                    s.root = root;
                    let p = build_on(Algorithm::Tree, &s, &map).unwrap();
                    let mut peers: Vec<usize> =
                        p.steps.iter().filter_map(|s| s.op.peer()).collect();
                    peers.sort_unstable();
                    peers.dedup();
                    let most = if rank == root { lg } else { lg + 1 };
                    assert!(
                        peers.len() <= most,
                        "{coll:?} n={n} root={root} rank={rank}: {} peers",
                        peers.len()
                    );
                }
            }
        }
    }
}
