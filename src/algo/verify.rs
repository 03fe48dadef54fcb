//! The symbolic verifier: runs every rank's Program together, with no data, tracking for each
//! element the set of ranks whose contribution it holds.
//!
//! It proves, for one (collective, nranks, count, chunk):
//! - every output element ends holding exactly one contribution from every rank, finished once
//!   (no double counting, no missing rank, no uninitialised read);
//! - every send is matched by a receive of the same length, in order;
//! - no deadlock when each link holds at most `credits` messages in flight (the executor's limit);
//! - no race: any two steps of one rank that touch overlapping elements, one of them writing, are
//!   ordered by the dependency graph (so any execution order the executor picks is correct).
//!
//! The ready steps are executed in a pseudo-random order chosen by `seed`, so repeated runs with
//! different seeds explore different interleavings.

use std::collections::VecDeque;

use super::{Buf, Op, Program, Range};

/// One element's symbolic value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct V {
    /// Bit r set: holds rank r's contribution. 0: undefined.
    mask: u64,
    /// Finished (divided for Avg).
    fin: bool,
}

struct RankState<'p> {
    prog: &'p Program,
    bufs: [Vec<V>; 3],
    done: Vec<bool>,
    ndone: usize,
    /// Per peer: queue of step indices of sends / receives, in program order.
    sends: Vec<VecDeque<usize>>,
    recvs: Vec<VecDeque<usize>>,
}

fn bi(b: Buf) -> usize {
    match b {
        Buf::Input => 0,
        Buf::Output => 1,
        Buf::Scratch => 2,
    }
}

impl RankState<'_> {
    fn get(&self, r: Range) -> Result<Vec<V>, String> {
        let b = &self.bufs[bi(r.buf)];
        if r.end() > b.len() {
            return Err(format!("range {r:?} out of bounds ({} elements)", b.len()));
        }
        Ok(b[r.off..r.end()].to_vec())
    }

    fn put(&mut self, r: Range, v: &[V]) -> Result<(), String> {
        let b = &mut self.bufs[bi(r.buf)];
        if r.end() > b.len() {
            return Err(format!("range {r:?} out of bounds ({} elements)", b.len()));
        }
        b[r.off..r.end()].copy_from_slice(v);
        Ok(())
    }
}

fn combine(a: &[V], b: &[V], what: &str) -> Result<Vec<V>, String> {
    if a.len() != b.len() {
        return Err(format!("{what}: length {} vs {}", a.len(), b.len()));
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.mask == 0 || y.mask == 0 {
                Err(format!("{what}: reads an undefined element"))
            } else if x.fin || y.fin {
                Err(format!("{what}: reduces an already finished element"))
            } else if x.mask & y.mask != 0 {
                Err(format!("{what}: counts ranks {:#x} twice", x.mask & y.mask))
            } else {
                Ok(V {
                    mask: x.mask | y.mask,
                    fin: false,
                })
            }
        })
        .collect()
}

/// Checks that every pair of conflicting steps in `p` is ordered by its dependencies.
pub fn check_races(p: &Program) -> Result<(), String> {
    let n = p.steps.len();
    let words = n.div_ceil(64);
    let mut reach = vec![0u64; n * words]; // reach[i] = set of steps that must precede i
    for (i, s) in p.steps.iter().enumerate() {
        for &d in &s.deps {
            let d = d as usize;
            if d >= i {
                return Err(format!("step {i} depends on later step {d}"));
            }
            reach[i * words + d / 64] |= 1 << (d % 64);
            let (lo, hi) = reach.split_at_mut(i * words);
            for w in 0..words {
                hi[w] |= lo[d * words + w];
            }
        }
    }
    let overlap = |a: Range, b: Range| a.buf == b.buf && a.off < b.end() && b.off < a.end();
    for i in 0..n {
        let wi = p.steps[i].op.writes();
        for j in 0..i {
            let wj = p.steps[j].op.writes();
            let conflict = wi
                .is_some_and(|w| p.steps[j].op.reads().chain(wj).any(|r| overlap(w, r)))
                || wj.is_some_and(|w| p.steps[i].op.reads().any(|r| overlap(w, r)));
            if conflict && reach[i * words + j / 64] & (1 << (j % 64)) == 0 {
                return Err(format!(
                    "rank {}: steps {j} ({:?}) and {i} ({:?}) touch the same elements unordered",
                    p.shape.rank, p.steps[j].op, p.steps[i].op
                ));
            }
        }
    }
    Ok(())
}

/// Runs all ranks' Programs symbolically; see the module docs for what is proven.
/// `progs[r]` must be rank r's Program.
pub fn run(progs: &[Program], credits: usize, seed: u64) -> Result<(), String> {
    let n = progs.len();
    if n == 0 || n > 64 {
        return Err(format!("verifier handles 1..=64 ranks, got {n}"));
    }
    let count = progs[0].shape.count;
    let full = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    let mut ranks: Vec<RankState> = Vec::with_capacity(n);
    for (r, p) in progs.iter().enumerate() {
        if p.shape.rank != r || p.shape.nranks != n || p.shape.count != count {
            return Err(format!("program {r} was built for shape {:?}", p.shape));
        }
        let own = V {
            mask: 1 << r,
            fin: false,
        };
        let undef = V {
            mask: 0,
            fin: false,
        };
        let input = if p.shape.in_place {
            Vec::new()
        } else {
            vec![own; count]
        };
        let output = vec![if p.shape.in_place { own } else { undef }; count];
        let mut sends = vec![VecDeque::new(); n];
        let mut recvs = vec![VecDeque::new(); n];
        for (i, s) in p.steps.iter().enumerate() {
            match s.op {
                Op::Send { peer, .. } if peer < n && peer != r => sends[peer].push_back(i),
                Op::Recv { peer, .. } | Op::RecvReduce { peer, .. } if peer < n && peer != r => {
                    recvs[peer].push_back(i)
                }
                Op::Send { peer, .. } | Op::Recv { peer, .. } | Op::RecvReduce { peer, .. } => {
                    return Err(format!("rank {r} step {i}: bad peer {peer}"));
                }
                _ => {}
            }
        }
        check_races(p)?;
        ranks.push(RankState {
            prog: p,
            bufs: [input, output, vec![undef; p.scratch_len]],
            done: vec![false; p.steps.len()],
            ndone: 0,
            sends,
            recvs,
        });
    }
    // links[from][to]: messages in flight.
    let mut links: Vec<Vec<VecDeque<Vec<V>>>> = vec![vec![VecDeque::new(); n]; n];
    let mut rng = seed | 1;
    let mut next_rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut order: Vec<usize> = Vec::new();
    loop {
        let mut progress = false;
        let start = (next_rand() as usize) % n;
        for k in 0..n {
            let r = (start + k) % n;
            order.clear();
            {
                let st = &ranks[r];
                for (i, s) in st.prog.steps.iter().enumerate() {
                    if !st.done[i] && s.deps.iter().all(|&d| st.done[d as usize]) {
                        order.push(i);
                    }
                }
            }
            // Shuffle the ready steps.
            for i in (1..order.len()).rev() {
                let j = (next_rand() as usize) % (i + 1);
                order.swap(i, j);
            }
            for &i in &order {
                let op = ranks[r].prog.steps[i].op;
                let what = || format!("rank {r} step {i} {op:?}");
                match op {
                    Op::Send { peer, src } => {
                        if ranks[r].sends[peer].front() != Some(&i)
                            || links[r][peer].len() >= credits
                        {
                            continue;
                        }
                        let v = ranks[r].get(src).map_err(|e| format!("{}: {e}", what()))?;
                        if v.iter().any(|x| x.mask == 0) {
                            return Err(format!("{}: sends an undefined element", what()));
                        }
                        ranks[r].sends[peer].pop_front();
                        links[r][peer].push_back(v);
                    }
                    Op::Recv { peer, dst } | Op::RecvReduce { peer, dst, .. } => {
                        if ranks[r].recvs[peer].front() != Some(&i) || links[peer][r].is_empty() {
                            continue;
                        }
                        let msg = links[peer][r].pop_front().expect("checked non-empty");
                        ranks[r].recvs[peer].pop_front();
                        if msg.len() != dst.len {
                            return Err(format!(
                                "{}: expects {} elements, rank {peer} sent {}",
                                what(),
                                dst.len,
                                msg.len()
                            ));
                        }
                        let val = match op {
                            Op::RecvReduce { acc, .. } => {
                                let a = ranks[r]
                                    .get(acc.unwrap_or(dst))
                                    .map_err(|e| format!("{}: {e}", what()))?;
                                combine(&a, &msg, &what())?
                            }
                            _ => msg,
                        };
                        ranks[r]
                            .put(dst, &val)
                            .map_err(|e| format!("{}: {e}", what()))?;
                    }
                    Op::Copy { src, dst } => {
                        let v = ranks[r].get(src).map_err(|e| format!("{}: {e}", what()))?;
                        if src.len != dst.len {
                            return Err(format!("{}: length mismatch", what()));
                        }
                        ranks[r]
                            .put(dst, &v)
                            .map_err(|e| format!("{}: {e}", what()))?;
                    }
                    Op::Reduce { src, dst } => {
                        let a = ranks[r].get(dst).map_err(|e| format!("{}: {e}", what()))?;
                        let b = ranks[r].get(src).map_err(|e| format!("{}: {e}", what()))?;
                        let v = combine(&a, &b, &what())?;
                        ranks[r]
                            .put(dst, &v)
                            .map_err(|e| format!("{}: {e}", what()))?;
                    }
                    Op::Finish { dst } => {
                        let mut v = ranks[r].get(dst).map_err(|e| format!("{}: {e}", what()))?;
                        for x in &mut v {
                            if x.mask != full || x.fin {
                                return Err(format!(
                                    "{}: finishes a partial or finished element {x:?}",
                                    what()
                                ));
                            }
                            x.fin = true;
                        }
                        ranks[r]
                            .put(dst, &v)
                            .map_err(|e| format!("{}: {e}", what()))?;
                    }
                }
                ranks[r].done[i] = true;
                ranks[r].ndone += 1;
                progress = true;
            }
        }
        if ranks.iter().all(|s| s.ndone == s.prog.steps.len()) {
            break;
        }
        if !progress {
            let stuck: Vec<String> = ranks
                .iter()
                .enumerate()
                .filter(|(_, s)| s.ndone < s.prog.steps.len())
                .take(4)
                .map(|(r, s)| {
                    let i = s.done.iter().position(|d| !d).unwrap_or(0);
                    format!("rank {r} at step {i} {:?}", s.prog.steps[i].op)
                })
                .collect();
            return Err(format!(
                "deadlock with {credits} credits: {}",
                stuck.join("; ")
            ));
        }
    }
    for (from, row) in links.iter().enumerate() {
        for (to, q) in row.iter().enumerate() {
            if !q.is_empty() {
                return Err(format!(
                    "{} unmatched messages from rank {from} to rank {to}",
                    q.len()
                ));
            }
        }
    }
    for (r, st) in ranks.iter().enumerate() {
        for (i, v) in st.bufs[1].iter().enumerate() {
            if v.mask != full || !v.fin {
                return Err(format!(
                    "rank {r} output element {i} ends as {v:?}, want all {n} ranks, finished"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Algorithm, Shape, all_reduce};
    use super::*;
    use proptest::prelude::*;

    fn progs(
        algo: Algorithm,
        n: usize,
        count: usize,
        in_place: bool,
        chunk: usize,
    ) -> Vec<Program> {
        (0..n)
            .map(|rank| {
                all_reduce(
                    algo,
                    Shape {
                        nranks: n,
                        rank,
                        count,
                        in_place,
                        chunk,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn small_cases_exhaustive() {
        for algo in [Algorithm::Ring, Algorithm::Direct] {
            for n in 1usize..=9 {
                for count in [0, 1, 2, n.saturating_sub(1), n, 2 * n + 1, 37] {
                    for in_place in [false, true] {
                        for chunk in [1, 3, 64] {
                            let p = progs(algo, n, count, in_place, chunk);
                            run(&p, 1, 7).unwrap_or_else(|e| {
                                panic!("{algo:?} n={n} count={count} in_place={in_place} chunk={chunk}: {e}")
                            });
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn catches_a_missing_contribution() {
        let mut p = progs(Algorithm::Ring, 3, 6, false, 2);
        // Drop rank 1's first receive-reduce and the matching send: a rank's data goes missing.
        let i = p[1]
            .steps
            .iter()
            .position(|s| matches!(s.op, Op::RecvReduce { .. }))
            .unwrap();
        p[1].steps[i].op = match p[1].steps[i].op {
            Op::RecvReduce { peer, dst, .. } => Op::Recv { peer, dst },
            o => o,
        };
        assert!(run(&p, 4, 1).is_err());
    }

    #[test]
    fn catches_a_race() {
        let mut p = progs(Algorithm::Ring, 2, 4, true, 4);
        for s in &mut p[0].steps {
            s.deps.clear();
        }
        assert!(check_races(&p[0]).is_err());
    }

    #[test]
    fn catches_a_count_mismatch() {
        let mut p = progs(Algorithm::Ring, 2, 4, true, 4);
        p[1] = all_reduce(
            Algorithm::Ring,
            Shape {
                nranks: 2,
                rank: 1,
                count: 4,
                in_place: true,
                chunk: 1,
            },
        );
        assert!(run(&p, 4, 1).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
        #[test]
        fn ring_and_direct_are_correct(n in 1usize..=64, count in 0usize..400, chunk in 1usize..64,
                                       in_place: bool, credits in 1usize..4, seed: u64, direct: bool) {
            let algo = if direct && n <= 16 { Algorithm::Direct } else { Algorithm::Ring };
            let p = progs(algo, n, count, in_place, chunk);
            prop_assert_eq!(run(&p, credits, seed), Ok(()));
        }
    }
}
