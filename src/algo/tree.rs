//! Tree algorithms.
//!
//! All-reduce: a double binary tree, as in NCCL. Tree A is the heap-ordered binary tree over
//! ranks 0..n (position p has children 2p+1 and 2p+2); tree B is the same tree shifted by n/2
//! ranks, so that the interior nodes of one tree are (roughly) the leaves of the other. Each tree
//! carries half of the data: slices are reduced up to the tree's root and broadcast back down,
//! pipelined, so every rank sends and receives about the data size once per tree direction and
//! the latency grows with log n instead of n.
//!
//! Broadcast / reduce: binomial trees rooted at the root (in root-relative rank numbering).
//! Gather / scatter: binomial trees too, over the topology order, each message a subtree.

use super::{Buf, Builder, Collective, Range, Shape, slices, split};

/// Parent and children of `rank` in the heap tree over `n` ranks shifted by `shift`.
fn heap_links(n: usize, rank: usize, shift: usize) -> (Option<usize>, Vec<usize>) {
    let pos = (rank + n - shift) % n;
    let real = |p: usize| (p + shift) % n;
    let parent = (pos > 0).then(|| real((pos - 1) / 2));
    let children = [2 * pos + 1, 2 * pos + 2]
        .into_iter()
        .filter(|&c| c < n)
        .map(real)
        .collect();
    (parent, children)
}

/// Slices the up phase runs ahead of the down phase.
const LOOKAHEAD: usize = 4;

/// Reduces one slice towards the tree's root (and finishes it there).
fn up(b: &mut Builder, s: &Shape, tree: &(Option<usize>, Vec<usize>), o: usize, l: usize) {
    let out = Range::new(Buf::Output, o, l);
    let (parent, children) = tree;
    let own = s.input_range(o, l);
    let mut partial = own;
    for (k, &c) in children.iter().enumerate() {
        let acc = (k == 0 && own != out).then_some(own);
        b.recv_reduce(c, out, acc);
        partial = out;
    }
    match parent {
        Some(p) => {
            b.send(*p, partial);
        }
        None => {
            if partial != out {
                b.copy(partial, out);
            }
            b.finish(out);
        }
    }
}

/// Broadcasts one reduced slice down the tree.
fn down(b: &mut Builder, tree: &(Option<usize>, Vec<usize>), o: usize, l: usize) {
    let out = Range::new(Buf::Output, o, l);
    let (parent, children) = tree;
    if let Some(p) = parent {
        b.recv(*p, out);
    }
    for &c in children {
        b.send(c, out);
    }
}

/// One rank's double-binary-tree all-reduce.
pub(crate) fn all_reduce(s: &Shape) -> Builder {
    let (n, r, count) = (s.nranks, s.rank, s.count);
    let mut b = Builder::new(s);
    let trees = [heap_links(n, r, 0), heap_links(n, r, n / 2)];
    let ntrees = if n > 1 { 2 } else { 1 };
    let halves: Vec<(usize, usize)> = (0..ntrees).map(|t| split(count, ntrees, t)).collect();
    let per: Vec<Vec<(usize, usize)>> = halves
        .iter()
        .map(|&(o, l)| slices(o, l, s.chunk).collect())
        .collect();
    let most = per.iter().map(Vec::len).max().unwrap_or(0);
    // On a link that both trees use, one tree's up messages and the other's down messages share
    // one ordered queue: emitting the up phase LOOKAHEAD slices ahead of the down phase keeps the
    // reduction streaming instead of waiting for each slice's round trip through the root.
    let look = LOOKAHEAD.min(most);
    for k in 0..most + look {
        if k < most {
            for t in 0..ntrees {
                if let Some(&(o, l)) = per[t].get(k) {
                    up(&mut b, s, &trees[t], o, l);
                }
            }
        }
        if k >= look {
            for t in 0..ntrees {
                if let Some(&(o, l)) = per[t].get(k - look) {
                    down(&mut b, &trees[t], o, l);
                }
            }
        }
    }
    b
}

/// Root-relative rank helpers.
fn rel(s: &Shape) -> (usize, impl Fn(usize) -> usize) {
    let (n, root) = (s.nranks, s.root);
    ((s.rank + n - root) % n, move |v: usize| (v + root) % n)
}

fn lowbit(v: usize) -> usize {
    v & v.wrapping_neg()
}

/// One rank's binomial-tree broadcast.
pub(crate) fn broadcast(s: &Shape) -> Builder {
    let n = s.nranks;
    let (v, real) = rel(s);
    let mut b = Builder::new(s);
    let ip = s.in_place && v == 0;
    let top = if v == 0 {
        n.next_power_of_two()
    } else {
        lowbit(v)
    };
    for (o, l) in slices(0, s.count, s.chunk) {
        let out = Range::new(Buf::Output, o, l);
        let src = if v == 0 && !ip {
            Range::new(Buf::Input, o, l)
        } else {
            out
        };
        if v == 0 && !ip {
            b.copy(src, out);
        }
        if v != 0 {
            b.recv(real(v - lowbit(v)), out);
        }
        let mut m = top >> 1;
        while m > 0 {
            if v + m < n {
                b.send(real(v + m), src);
            }
            m >>= 1;
        }
    }
    b
}

/// One rank's binomial-tree reduce.
pub(crate) fn reduce(s: &Shape) -> Builder {
    debug_assert_eq!(s.coll, Collective::Reduce);
    let n = s.nranks;
    let (v, real) = rel(s);
    let mut b = Builder::new(s);
    let ip = s.in_place && v == 0;
    let top = if v == 0 {
        n.next_power_of_two()
    } else {
        lowbit(v)
    };
    let scratch = if v != 0 {
        Some(b.scratch(s.count))
    } else {
        None
    };
    for (o, l) in slices(0, s.count, s.chunk) {
        let (own, acc) = Builder::reduce_chunk(ip, scratch, o, l);
        let mut partial = own;
        let mut m = 1;
        while m < top {
            if v + m < n {
                let first = partial == own;
                b.recv_reduce(real(v + m), acc, (first && own != acc).then_some(own));
                partial = acc;
            }
            m <<= 1;
        }
        b.pass_up((v != 0).then(|| real(v - lowbit(v))), partial, acc);
    }
    b
}

/// The binomial tree of a gather / scatter laid over `order` (position -> rank): positions are
/// numbered relative to the root's, so the subtree of relative position `v` is the positions
/// `[v, v + size(v))`, and a message between a child and its parent carries the child's whole
/// subtree. Blocks stay at their ranks' places in the root's buffer: a subtree is sent as the
/// runs of its positions whose ranks are consecutive (one run over rank order, two where it
/// wraps past the last rank), each run one contiguous range of blocks (chunked).
struct Blocks<'a> {
    n: usize,
    /// The root's position in `order`.
    base: usize,
    order: &'a [usize],
    /// This rank's relative position.
    v: usize,
    count: usize,
    chunk: usize,
}

impl<'a> Blocks<'a> {
    fn new(s: &Shape, order: &'a [usize]) -> Blocks<'a> {
        let n = s.nranks;
        let at = |r: usize| order.iter().position(|&x| x == r).unwrap_or(0);
        let base = at(s.root);
        Blocks {
            n,
            base,
            order,
            v: (at(s.rank) + n - base) % n,
            count: s.count,
            chunk: s.chunk,
        }
    }

    /// The rank at relative position `v`.
    fn real(&self, v: usize) -> usize {
        self.order[(v + self.base) % self.n]
    }

    /// How many positions the subtree of `v` covers.
    fn size(&self, v: usize) -> usize {
        let top = if v == 0 {
            self.n.next_power_of_two()
        } else {
            lowbit(v)
        };
        top.min(self.n - v)
    }

    /// This (non-root) rank's parent.
    fn parent(&self) -> usize {
        self.real(self.v - lowbit(self.v))
    }

    /// The children of this rank, nearest (smallest subtree) first.
    fn children(&self) -> Vec<usize> {
        let (v, top) = (self.v, self.size(self.v));
        (0..usize::BITS)
            .map(|k| 1usize << k)
            .take_while(|&m| m < top)
            .filter(|&m| v + m < self.n)
            .map(|m| v + m)
            .collect()
    }

    /// The messages of the subtree of `u`, in order: (element offset from the subtree's first
    /// block in relative order, element offset of the same data in the root's buffer, length).
    fn messages(&self, u: usize) -> Vec<(usize, usize, usize)> {
        let (c, end) = (self.count, u + self.size(u));
        let mut out = Vec::new();
        let mut a = u;
        while a < end {
            let mut k = 1;
            while a + k < end && self.real(a + k) == self.real(a) + k {
                k += 1;
            }
            for (o, l) in slices(0, k * c, self.chunk) {
                out.push(((a - u) * c + o, self.real(a) * c + o, l));
            }
            a += k;
        }
        out
    }
}

/// One rank's binomial-tree gather over `order` (position -> rank): every rank receives its
/// children's subtrees and sends its own subtree to its parent in one go, so a rank talks to
/// at most ⌈log2 n⌉ + 1 peers and the root receives all data over ⌈log2 n⌉ links.
pub(crate) fn gather_over(s: &Shape, order: &[usize]) -> Builder {
    let (t, mut b) = (Blocks::new(s, order), Builder::new(s));
    let (v, c) = (t.v, t.count);
    let own = Range::new(Buf::Input, 0, c);
    if v == 0 {
        if !s.in_place {
            b.copy(own, Range::new(Buf::Output, s.rank * c, c));
        }
        for u in t.children() {
            for (_, at, l) in t.messages(u) {
                b.recv(t.real(u), Range::new(Buf::Output, at, l));
            }
        }
        return b;
    }
    let src = if t.size(v) == 1 {
        own
    } else {
        let sc = b.scratch(t.size(v) * c);
        b.copy(own, sc.sub(0, c));
        for u in t.children() {
            for (rel, _, l) in t.messages(u) {
                b.recv(t.real(u), sc.sub((u - v) * c + rel, l));
            }
        }
        sc
    };
    for (rel, _, l) in t.messages(v) {
        b.send(t.parent(), src.sub(rel, l));
    }
    b
}

/// One rank's binomial-tree scatter over `order`: the mirror of [`gather_over`], the largest
/// subtree served first.
pub(crate) fn scatter_over(s: &Shape, order: &[usize]) -> Builder {
    let (t, mut b) = (Blocks::new(s, order), Builder::new(s));
    let (v, c) = (t.v, t.count);
    let out = Range::new(Buf::Output, 0, c);
    if v == 0 {
        let src = if s.in_place { Buf::Output } else { Buf::Input };
        for u in t.children().into_iter().rev() {
            for (_, at, l) in t.messages(u) {
                b.send(t.real(u), Range::new(src, at, l));
            }
        }
        if !s.in_place {
            b.copy(Range::new(Buf::Input, s.rank * c, c), out);
        }
        return b;
    }
    let leaf = t.size(v) == 1;
    let dst = if leaf { out } else { b.scratch(t.size(v) * c) };
    for (rel, _, l) in t.messages(v) {
        b.recv(t.parent(), dst.sub(rel, l));
    }
    if !leaf {
        b.copy(dst.sub(0, c), out);
        for u in t.children().into_iter().rev() {
            for (rel, _, l) in t.messages(u) {
                b.send(t.real(u), dst.sub((u - v) * c + rel, l));
            }
        }
    }
    b
}
