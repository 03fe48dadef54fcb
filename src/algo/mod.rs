//! Schedules: pure functions from (collective, nranks, rank, count, chunking) to a [`Program`].
//!
//! A Program is one rank's part of a collective, written as data: an ordered list of steps over
//! element ranges of named buffers, each step listing the earlier steps it depends on. No
//! algorithm touches a socket, a lock or a clock; the executor (`crate::exec`) runs Programs over
//! links, the verifier ([`verify`]) runs all ranks' Programs symbolically, and the simulator and
//! tuner replay them.
//!
//! Matching rule: between two ranks, messages are matched in order. The k-th `Send` that rank `a`
//! addresses to rank `b` is received by the k-th `Recv`/`RecvReduce` that rank `b` posts from
//! rank `a`; both must have the same length.

pub mod bruck;
pub mod builder;
pub mod chain;
pub mod direct;
pub mod doubling;
pub mod hier;
pub mod misc;
pub mod multiply;
pub mod ordered;
pub mod rhd;
pub mod ring;
pub mod tree;
#[cfg(test)]
pub mod verify;

#[cfg(test)]
mod topo_tests;

pub use builder::Builder;

use crate::topo::HostMap;

/// The buffers a Program names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Buf {
    /// The caller's send buffer (read-only). In place, it is the same memory as `Output`, and
    /// Programs built for in-place calls never name it.
    Input,
    /// The caller's receive buffer.
    Output,
    /// Scratch space owned by the executor, `Program::scratch_len` elements.
    Scratch,
}

/// A range of elements in one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Range {
    /// Which buffer.
    pub buf: Buf,
    /// First element.
    pub off: usize,
    /// Number of elements.
    pub len: usize,
}

impl Range {
    /// A range of `len` elements at `off` in `buf`.
    pub fn new(buf: Buf, off: usize, len: usize) -> Range {
        Range { buf, off, len }
    }

    /// One past the last element.
    pub fn end(&self) -> usize {
        self.off + self.len
    }

    /// The sub-range `[off, off+len)` relative to this one.
    pub fn sub(&self, off: usize, len: usize) -> Range {
        debug_assert!(off + len <= self.len);
        Range {
            buf: self.buf,
            off: self.off + off,
            len,
        }
    }
}

/// One step of a Program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Send the elements of `src` to `peer`.
    Send {
        /// Destination rank.
        peer: usize,
        /// What to send.
        src: Range,
    },
    /// Receive the next message from `peer` into `dst` (overwriting it).
    Recv {
        /// Source rank.
        peer: usize,
        /// Where it lands.
        dst: Range,
    },
    /// Receive the next message from `peer` and reduce it: `dst = acc (op) message`, where `acc`
    /// is `dst` itself unless given (out-of-place calls reduce the input straight into the output).
    RecvReduce {
        /// Source rank.
        peer: usize,
        /// Where the result lands.
        dst: Range,
        /// The local operand, when it is not `dst`.
        acc: Option<Range>,
    },
    /// Copy `src` to `dst` locally.
    Copy {
        /// Source.
        src: Range,
        /// Destination (same length).
        dst: Range,
    },
    /// Reduce locally: `dst = dst (op) src`.
    Reduce {
        /// Second operand.
        src: Range,
        /// First operand and result.
        dst: Range,
    },
    /// Finish a fully reduced range: divides by nranks for `Avg`, nothing for other operators.
    Finish {
        /// The range to finish.
        dst: Range,
    },
}

impl Op {
    /// The peer this step talks to, if any.
    pub fn peer(&self) -> Option<usize> {
        match *self {
            Op::Send { peer, .. } | Op::Recv { peer, .. } | Op::RecvReduce { peer, .. } => {
                Some(peer)
            }
            _ => None,
        }
    }

    /// Ranges this step reads.
    pub fn reads(&self) -> impl Iterator<Item = Range> {
        let (a, b) = match *self {
            Op::Send { src, .. } => (Some(src), None),
            Op::Recv { .. } => (None, None),
            Op::RecvReduce { dst, acc, .. } => (Some(acc.unwrap_or(dst)), None),
            Op::Copy { src, .. } => (Some(src), None),
            Op::Reduce { src, dst } => (Some(src), Some(dst)),
            Op::Finish { dst } => (Some(dst), None),
        };
        a.into_iter().chain(b)
    }

    /// The range this step writes, if any.
    pub fn writes(&self) -> Option<Range> {
        match *self {
            Op::Send { .. } => None,
            Op::Recv { dst, .. }
            | Op::RecvReduce { dst, .. }
            | Op::Copy { dst, .. }
            | Op::Reduce { dst, .. }
            | Op::Finish { dst } => Some(dst),
        }
    }
}

/// A step and the earlier steps it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What to do.
    pub op: Op,
    /// Indices of earlier steps that must complete first.
    pub deps: Vec<u32>,
}

/// The collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Collective {
    /// All-reduce: everyone gets the reduction of everyone's buffer.
    AllReduce = 1,
    /// Barrier: nobody leaves before everyone has arrived.
    Barrier = 2,
    /// Broadcast: everyone gets the root's buffer.
    Broadcast = 3,
    /// Reduce: the root gets the reduction of everyone's buffer.
    Reduce = 4,
    /// All-gather: everyone gets the concatenation of everyone's block.
    AllGather = 5,
    /// Reduce-scatter: rank r gets block r of the reduction.
    ReduceScatter = 6,
    /// All-to-all: rank r gets block r of everyone's buffer, in rank order.
    AllToAll = 7,
    /// Gather: the root gets the concatenation of everyone's block.
    Gather = 8,
    /// Scatter: rank r gets block r of the root's buffer.
    Scatter = 9,
    /// Point-to-point send (the peer is `Shape::root`).
    Send = 10,
    /// Point-to-point receive (the peer is `Shape::root`).
    Recv = 11,
    /// All-gather with per-rank block sizes (`Shape::counts`).
    AllGatherV = 12,
    /// Reduce-scatter with per-rank block sizes (`Shape::counts`).
    ReduceScatterV = 13,
    /// All-to-all with per-peer sizes (`Shape::counts` = n send counts, then n receive counts).
    AllToAllV = 14,
}

impl Collective {
    /// Every collective.
    pub const ALL: [Collective; 14] = [
        Collective::AllReduce,
        Collective::Barrier,
        Collective::Broadcast,
        Collective::Reduce,
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllToAll,
        Collective::Gather,
        Collective::Scatter,
        Collective::Send,
        Collective::Recv,
        Collective::AllGatherV,
        Collective::ReduceScatterV,
        Collective::AllToAllV,
    ];

    /// The name as users know it.
    pub fn name(self) -> &'static str {
        match self {
            Collective::AllReduce => "all_reduce",
            Collective::Barrier => "barrier",
            Collective::Broadcast => "broadcast",
            Collective::Reduce => "reduce",
            Collective::AllGather => "all_gather",
            Collective::ReduceScatter => "reduce_scatter",
            Collective::AllToAll => "all_to_all",
            Collective::Gather => "gather",
            Collective::Scatter => "scatter",
            Collective::Send => "send",
            Collective::Recv => "recv",
            Collective::AllGatherV => "all_gatherv",
            Collective::ReduceScatterV => "reduce_scatterv",
            Collective::AllToAllV => "all_to_allv",
        }
    }

    /// The key used by OXCCL_ALGO (`allreduce`, `broadcast`, ...).
    pub fn key(self) -> &'static str {
        match self {
            Collective::AllReduce => "allreduce",
            Collective::Barrier => "barrier",
            Collective::Broadcast => "broadcast",
            Collective::Reduce => "reduce",
            Collective::AllGather | Collective::AllGatherV => "allgather",
            Collective::ReduceScatter | Collective::ReduceScatterV => "reducescatter",
            Collective::AllToAll | Collective::AllToAllV => "alltoall",
            Collective::Gather => "gather",
            Collective::Scatter => "scatter",
            Collective::Send | Collective::Recv => "sendrecv",
        }
    }

    /// Decodes the wire byte.
    pub fn from_u8(v: u8) -> Option<Collective> {
        Collective::ALL.into_iter().find(|c| *c as u8 == v)
    }

    /// Whether it combines values with a reduction operator.
    pub fn reduces(self) -> bool {
        matches!(
            self,
            Collective::AllReduce
                | Collective::Reduce
                | Collective::ReduceScatter
                | Collective::ReduceScatterV
        )
    }

    /// Whether it has a root.
    pub fn rooted(self) -> bool {
        matches!(
            self,
            Collective::Broadcast | Collective::Reduce | Collective::Gather | Collective::Scatter
        )
    }

    /// The algorithms that implement it; the first is the default for large messages.
    pub fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            Collective::AllReduce => &[
                Ring, Tree, Rhd, Direct, Ordered, Hier, HierRhd, HierTree, Doubling, HierMul,
            ],
            Collective::Barrier => &[Dissemination],
            Collective::Broadcast => &[Chain, Tree, Hier, HierTree],
            Collective::Reduce => &[Chain, Tree, Ordered, Hier, HierTree],
            Collective::AllGather | Collective::AllGatherV => &[Ring, Bruck, Hier],
            Collective::ReduceScatter | Collective::ReduceScatterV => &[Ring, Bruck, Ordered, Hier],
            Collective::AllToAll | Collective::AllToAllV => &[Pairwise],
            Collective::Gather | Collective::Scatter => &[Linear],
            Collective::Send | Collective::Recv => &[Linear],
        }
    }
}

/// Algorithms. Which apply to which collective: [`Collective::algorithms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ring: for all-reduce, reduce-scatter then all-gather, chunked and pipelined
    /// (bandwidth-optimal); for all-gather / reduce-scatter, one ring pass.
    Ring,
    /// One-shot direct all-reduce: every rank sends its buffer to every other and reduces
    /// locally in rank order. One message latency; for small messages.
    Direct,
    /// All-reduce: double binary tree (two trees, each reducing and broadcasting half the data,
    /// pipelined); broadcast / reduce: binomial tree.
    Tree,
    /// All-reduce: recursive halving-doubling (Rabenseifner), any rank count.
    Rhd,
    /// Broadcast / reduce: a pipelined chain from (to) the root.
    Chain,
    /// All-gather / reduce-scatter: Bruck's recursive doubling (halving), any rank count.
    Bruck,
    /// All-to-all: pairwise exchange.
    Pairwise,
    /// Barrier: dissemination (log n rounds).
    Dissemination,
    /// Gather / scatter / send / recv: direct messages to (from) the root or peer.
    Linear,
    /// All-reduce / reduce / reduce-scatter folding every element in rank order at one owner:
    /// bitwise reproducible whatever the size or chunking (OXCCL_DETERMINISTIC=1).
    Ordered,
    /// Hierarchical over the host map (`hier`). All-reduce: intra-host reduce-scatter, a ring
    /// between hosts on each local rank's rail, intra-host all-gather; broadcast / reduce: the
    /// slices scattered (reduce-scattered) over the root's (every) host, a chain between hosts
    /// per rail; all-gather / reduce-scatter: rings per rail between hosts and per host.
    Hier,
    /// As [`Algorithm::Hier`] with a double binary tree between hosts (broadcast / reduce: a
    /// binomial tree).
    HierTree,
    /// As [`Algorithm::Hier`] with recursive halving-doubling between hosts (recursive
    /// doubling where a slice has fewer elements than there are hosts).
    HierRhd,
    /// All-reduce: recursive doubling, the whole buffer every round (`doubling`); for small
    /// messages at scale.
    Doubling,
    /// All-reduce: recursive multiplying across rails (`multiply`): every local rank of a host
    /// exchanges with another host at once, about log_k(hosts) rounds; for small messages over
    /// many hosts.
    HierMul,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 15] = [
        Algorithm::Ring,
        Algorithm::Direct,
        Algorithm::Tree,
        Algorithm::Rhd,
        Algorithm::Chain,
        Algorithm::Bruck,
        Algorithm::Pairwise,
        Algorithm::Dissemination,
        Algorithm::Linear,
        Algorithm::Ordered,
        Algorithm::Hier,
        Algorithm::HierTree,
        Algorithm::HierRhd,
        Algorithm::Doubling,
        Algorithm::HierMul,
    ];

    /// The name used by OXCCL_ALGO and printed by tools.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
            Algorithm::Direct => "direct",
            Algorithm::Tree => "tree",
            Algorithm::Rhd => "rhd",
            Algorithm::Chain => "chain",
            Algorithm::Bruck => "bruck",
            Algorithm::Pairwise => "pairwise",
            Algorithm::Dissemination => "dissemination",
            Algorithm::Linear => "linear",
            Algorithm::Ordered => "ordered",
            Algorithm::Hier => "hier",
            Algorithm::HierTree => "hier-tree",
            Algorithm::HierRhd => "hier-rhd",
            Algorithm::Doubling => "doubling",
            Algorithm::HierMul => "hier-mul",
        }
    }

    /// Whether it is one of the hierarchical algorithms (which need a [`HostMap`]).
    pub fn is_hier(self) -> bool {
        matches!(
            self,
            Algorithm::Hier | Algorithm::HierTree | Algorithm::HierRhd | Algorithm::HierMul
        )
    }

    /// Parses a name (a few aliases accepted).
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ring" => Some(Algorithm::Ring),
            "direct" | "oneshot" | "one-shot" => Some(Algorithm::Direct),
            "tree" | "dbtree" | "binomial" => Some(Algorithm::Tree),
            "rhd" | "rabenseifner" | "halving-doubling" => Some(Algorithm::Rhd),
            "chain" | "pipeline" => Some(Algorithm::Chain),
            "bruck" | "recursive-doubling" | "rd" => Some(Algorithm::Bruck),
            "pairwise" => Some(Algorithm::Pairwise),
            "dissemination" => Some(Algorithm::Dissemination),
            "linear" => Some(Algorithm::Linear),
            "ordered" | "deterministic" => Some(Algorithm::Ordered),
            "hier" | "hier-ring" | "hierarchical" => Some(Algorithm::Hier),
            "hier-tree" => Some(Algorithm::HierTree),
            "hier-rhd" => Some(Algorithm::HierRhd),
            "doubling" | "recursive-doubling-allreduce" => Some(Algorithm::Doubling),
            "hier-mul" | "multiply" => Some(Algorithm::HierMul),
            _ => None,
        }
    }
}

/// Everything a schedule depends on.
///
/// Buffer layouts, in elements (`count` is per rank unless said otherwise; `n` ranks):
///
/// | collective | Input | Output | in place: input lives in Output at |
/// |---|---|---|---|
/// | all-reduce | count | count | 0 |
/// | broadcast | count (root) | count | 0 (root) |
/// | reduce | count | count (root only) | 0 (root) |
/// | all-gather(v) | block r | all blocks | block r |
/// | reduce-scatter(v) | all blocks | block r | 0 (Output is all blocks; result at block r) |
/// | all-to-all(v) | n send blocks | n receive blocks | 0 |
/// | gather | block | n blocks (root only) | block root (root) |
/// | scatter | n blocks (root only) | block | 0 (root; Output is all blocks, result at block root) |
/// | send / recv | count | count | — |
/// | barrier | — | 1 (a byte the executor owns) | — |
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Which collective.
    pub coll: Collective,
    /// Number of ranks.
    pub nranks: usize,
    /// This rank.
    pub rank: usize,
    /// Elements per rank block (see the table).
    pub count: usize,
    /// Root rank (rooted collectives), or the peer (send / recv); 0 otherwise.
    pub root: usize,
    /// Whether the input lives inside the output buffer (see the table).
    pub in_place: bool,
    /// Largest message in elements (the pipelining grain); at least 1.
    pub chunk: usize,
    /// Per-rank block sizes for the v-variants (all-to-allv: n send then n receive sizes).
    pub counts: Vec<usize>,
}

impl Shape {
    /// An all-reduce shape.
    pub fn all_reduce(
        nranks: usize,
        rank: usize,
        count: usize,
        in_place: bool,
        chunk: usize,
    ) -> Shape {
        Shape::new(Collective::AllReduce, nranks, rank, count, in_place, chunk)
    }

    /// A shape with root 0 and no per-rank counts.
    pub fn new(
        coll: Collective,
        nranks: usize,
        rank: usize,
        count: usize,
        in_place: bool,
        chunk: usize,
    ) -> Shape {
        Shape {
            coll,
            nranks,
            rank,
            count,
            root: 0,
            in_place,
            chunk: chunk.max(1),
            counts: Vec::new(),
        }
    }

    /// The block layout: per rank (offset, len) in elements.
    pub fn blocks(&self) -> Layout {
        match self.coll {
            Collective::AllGatherV | Collective::ReduceScatterV => {
                Layout::from_counts(&self.counts)
            }
            Collective::AllToAllV => {
                Layout::from_counts(&self.counts[..self.nranks.min(self.counts.len())])
            }
            _ => Layout::uniform(self.nranks, self.count),
        }
    }

    /// The receive layout of all-to-all(v).
    pub fn recv_blocks(&self) -> Layout {
        match self.coll {
            Collective::AllToAllV => {
                Layout::from_counts(self.counts.get(self.nranks..).unwrap_or(&[]))
            }
            _ => Layout::uniform(self.nranks, self.count),
        }
    }

    /// Elements of Input this rank provides (0 where Input is unused).
    pub fn in_len(&self) -> usize {
        let (r, n) = (self.rank, self.nranks);
        match self.coll {
            Collective::AllReduce | Collective::Send => self.count,
            Collective::Broadcast => {
                if r == self.root {
                    self.count
                } else {
                    0
                }
            }
            Collective::Reduce => self.count,
            Collective::AllGather | Collective::AllGatherV | Collective::Gather => {
                self.blocks().len(r)
            }
            Collective::ReduceScatter
            | Collective::ReduceScatterV
            | Collective::AllToAll
            | Collective::AllToAllV => self.blocks().total(),
            Collective::Scatter => {
                if r == self.root {
                    n * self.count
                } else {
                    0
                }
            }
            Collective::Recv | Collective::Barrier => 0,
        }
    }

    /// Elements of Output this rank needs (0 where Output is unused).
    pub fn out_len(&self) -> usize {
        let r = self.rank;
        match self.coll {
            Collective::AllReduce | Collective::Broadcast | Collective::Recv => self.count,
            Collective::Reduce => {
                if r == self.root {
                    self.count
                } else {
                    0
                }
            }
            Collective::AllGather | Collective::AllGatherV => self.blocks().total(),
            Collective::ReduceScatter | Collective::ReduceScatterV => {
                if self.in_place {
                    self.blocks().total()
                } else {
                    self.blocks().len(r)
                }
            }
            Collective::AllToAll | Collective::AllToAllV => self.recv_blocks().total(),
            Collective::Gather => {
                if r == self.root {
                    self.blocks().total()
                } else {
                    0
                }
            }
            Collective::Scatter => {
                if self.in_place && r == self.root {
                    self.nranks * self.count
                } else {
                    self.count
                }
            }
            Collective::Send => 0,
            Collective::Barrier => 1,
        }
    }

    /// Where the input lives inside Output when in place.
    pub fn in_off(&self) -> usize {
        match self.coll {
            Collective::AllGather | Collective::AllGatherV => self.blocks().off(self.rank),
            Collective::Gather => self.blocks().off(self.root),
            _ => 0,
        }
    }

    /// Whether this rank's call is in place in a way that matters (non-roots of rooted
    /// collectives ignore the flag for the buffers they do not have).
    pub fn input_range(&self, off: usize, len: usize) -> Range {
        if self.in_place {
            Range::new(Buf::Output, self.in_off() + off, len)
        } else {
            Range::new(Buf::Input, off, len)
        }
    }
}

/// Per-rank blocks of a buffer: rank i's block is `[off(i), off(i) + len(i))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    offs: Vec<usize>,
    lens: Vec<usize>,
}

impl Layout {
    /// `n` blocks of `count` elements.
    pub fn uniform(n: usize, count: usize) -> Layout {
        Layout {
            offs: (0..n).map(|i| i * count).collect(),
            lens: vec![count; n],
        }
    }

    /// Contiguous blocks of the given sizes.
    pub fn from_counts(counts: &[usize]) -> Layout {
        let mut offs = Vec::with_capacity(counts.len());
        let mut o = 0;
        for &c in counts {
            offs.push(o);
            o += c;
        }
        Layout {
            offs,
            lens: counts.to_vec(),
        }
    }

    /// Block i's offset.
    pub fn off(&self, i: usize) -> usize {
        self.offs.get(i).copied().unwrap_or(0)
    }

    /// Block i's length.
    pub fn len(&self, i: usize) -> usize {
        self.lens.get(i).copied().unwrap_or(0)
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Sum of all blocks.
    pub fn total(&self) -> usize {
        self.lens.iter().sum()
    }

    /// The largest block.
    pub fn max(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0)
    }
}

/// One rank's part of a collective.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The shape it was built for.
    pub shape: Shape,
    /// The algorithm that built it.
    pub algo: Algorithm,
    /// Steps in a valid execution order.
    pub steps: Vec<Step>,
    /// Scratch elements the executor must provide.
    pub scratch_len: usize,
}

impl Program {
    /// The peers this Program exchanges messages with, sorted.
    pub fn peers(&self) -> Vec<usize> {
        let mut p: Vec<usize> = self.steps.iter().filter_map(|s| s.op.peer()).collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// The largest message this Program sends or receives, in elements.
    pub fn max_message(&self) -> usize {
        self.steps
            .iter()
            .filter_map(|s| match s.op {
                Op::Send { src, .. } => Some(src.len),
                Op::Recv { dst, .. } | Op::RecvReduce { dst, .. } => Some(dst.len),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// Builds one rank's Program for `shape` with `algo`, or says why that algorithm does not
/// implement that collective or the shape is invalid.
///
/// This is the schedule for ranks that all share one host, laid over rank numbers; a
/// communicator spanning hosts calls [`build_on`] with its [`HostMap`].
pub fn build(algo: Algorithm, shape: &Shape) -> Result<Program, String> {
    check(algo, shape)?;
    if algo.is_hier() {
        return build_on(algo, shape, &HostMap::flat(shape.nranks));
    }
    dispatch(algo, shape)
}

/// Why `algo` cannot build `shape`, if it cannot.
fn check(algo: Algorithm, shape: &Shape) -> Result<(), String> {
    let s = shape;
    if s.nranks == 0 || s.rank >= s.nranks {
        return Err(format!("rank {} of {}", s.rank, s.nranks));
    }
    if (s.coll.rooted() || matches!(s.coll, Collective::Send | Collective::Recv))
        && s.root >= s.nranks
    {
        return Err(format!(
            "{} root/peer {} is not a rank of {}",
            s.coll.name(),
            s.root,
            s.nranks
        ));
    }
    let need = match s.coll {
        Collective::AllGatherV | Collective::ReduceScatterV => s.nranks,
        Collective::AllToAllV => 2 * s.nranks,
        _ => 0,
    };
    if s.counts.len() != need {
        return Err(format!(
            "{} needs {need} per-rank counts, got {}",
            s.coll.name(),
            s.counts.len()
        ));
    }
    if s.coll == Collective::AllToAllV && s.in_place && s.counts[..s.nranks] != s.counts[s.nranks..]
    {
        return Err(
            "all_to_allv in place needs each rank's send counts to equal its receive counts".into(),
        );
    }
    if !s.coll.algorithms().contains(&algo) {
        let names: Vec<&str> = s.coll.algorithms().iter().map(|a| a.name()).collect();
        return Err(format!(
            "{} has no {} algorithm (it has: {})",
            s.coll.name(),
            algo.name(),
            names.join(", ")
        ));
    }
    Ok(())
}

/// Builds a checked shape with a flat algorithm over rank numbers.
fn dispatch(algo: Algorithm, s: &Shape) -> Result<Program, String> {
    use Algorithm as A;
    use Collective as C;
    let b = match (s.coll, algo) {
        (C::AllReduce, A::Ring) => ring::all_reduce(s),
        (C::AllReduce, A::Direct) => direct::all_reduce(s),
        (C::AllReduce, A::Tree) => tree::all_reduce(s),
        (C::AllReduce, A::Rhd) => rhd::all_reduce(s),
        (C::AllReduce, A::Doubling) => doubling::all_reduce(s),
        (C::Broadcast, A::Chain) => chain::broadcast(s),
        (C::Broadcast, A::Tree) => tree::broadcast(s),
        (C::Reduce, A::Chain) => chain::reduce(s),
        (C::Reduce, A::Tree) => tree::reduce(s),
        (C::AllReduce, A::Ordered) => ordered::all_reduce(s),
        (C::Reduce, A::Ordered) => ordered::reduce(s),
        (C::ReduceScatter | C::ReduceScatterV, A::Ordered) => ordered::reduce_scatter(s),
        (C::AllGather | C::AllGatherV, A::Ring) => ring::all_gather(s),
        (C::AllGather | C::AllGatherV, A::Bruck) => bruck::all_gather(s),
        (C::ReduceScatter | C::ReduceScatterV, A::Ring) => ring::reduce_scatter(s),
        (C::ReduceScatter | C::ReduceScatterV, A::Bruck) => bruck::reduce_scatter(s),
        (C::AllToAll | C::AllToAllV, _) => misc::all_to_all(s),
        (C::Gather, _) => misc::gather(s),
        (C::Scatter, _) => misc::scatter(s),
        (C::Send | C::Recv, _) => misc::send_recv(s),
        (C::Barrier, _) => misc::barrier(s),
        _ => {
            return Err(format!(
                "{} {} needs a host map (algo::build_on)",
                s.coll.name(),
                algo.name()
            ));
        }
    };
    let mut p = b.build();
    p.algo = algo;
    Ok(p)
}

/// Builds one rank's Program for `shape` with `algo` on the hosts of `map`.
///
/// Flat algorithms are laid over the topology order ([`HostMap::order`]: hosts one after the
/// other, each by local rank) instead of over rank numbers, so that where a launcher placed the
/// ranks does not change the schedule: all-reduce, broadcast, reduce and barrier are built for
/// each rank's position in that order and their peers renamed back to ranks; the ring
/// all-gather and reduce-scatter pass blocks along the order and keep each block at its rank's
/// place. The others (Bruck, pairwise, linear, ordered) keep rank order: Bruck's exchanges and
/// the ordered fold are defined by rank numbers. Hierarchical algorithms (`hier`) compose
/// intra-host and inter-host steps on the map.
pub fn build_on(algo: Algorithm, shape: &Shape, map: &HostMap) -> Result<Program, String> {
    if map.nranks() != shape.nranks {
        return Err(format!(
            "a host map of {} ranks for a {} of {} ranks",
            map.nranks(),
            shape.coll.name(),
            shape.nranks
        ));
    }
    check(algo, shape)?;
    use Algorithm as A;
    use Collective as C;
    let b = match (shape.coll, algo) {
        (C::AllReduce, A::Hier | A::HierTree | A::HierRhd) => {
            hier::all_reduce(shape, map, hier::inter(algo))?
        }
        (C::AllReduce, A::HierMul) => multiply::all_reduce(shape, map)?,
        (C::Broadcast, A::Hier | A::HierTree) => {
            hier::broadcast(shape, map, hier::inter_rooted(algo))?
        }
        (C::Reduce, A::Hier | A::HierTree) => hier::reduce(shape, map, hier::inter_rooted(algo))?,
        (C::AllGather | C::AllGatherV, A::Hier) => hier::all_gather(shape, map),
        (C::ReduceScatter | C::ReduceScatterV, A::Hier) => hier::reduce_scatter(shape, map),
        _ if map.is_blocked() => return dispatch(algo, shape),
        (C::AllGather | C::AllGatherV, A::Ring) => ring::all_gather_over(shape, &map.order()),
        (C::ReduceScatter | C::ReduceScatterV, A::Ring) => {
            ring::reduce_scatter_over(shape, &map.order())
        }
        (C::AllReduce, A::Ring | A::Tree | A::Rhd | A::Direct | A::Doubling)
        | (C::Broadcast | C::Reduce, A::Chain | A::Tree)
        | (C::Barrier, _) => return relabel(algo, shape, &map.order()),
        _ => return dispatch(algo, shape),
    };
    let mut p = b.build();
    p.algo = algo;
    Ok(p)
}

/// Builds the Program of rank `shape.rank`'s position in `order` (position -> rank), as if
/// positions were ranks, then renames its peers back to ranks. Only for collectives whose
/// buffers do not depend on which rank is which, beyond the root.
fn relabel(algo: Algorithm, shape: &Shape, order: &[usize]) -> Result<Program, String> {
    let n = shape.nranks;
    let mut pos = vec![0; n];
    for (i, &r) in order.iter().enumerate() {
        pos[r] = i;
    }
    let mut v = shape.clone();
    v.rank = pos[shape.rank];
    v.root = pos[shape.root.min(n - 1)];
    let mut p = dispatch(algo, &v)?;
    for st in &mut p.steps {
        match &mut st.op {
            Op::Send { peer, .. } | Op::Recv { peer, .. } | Op::RecvReduce { peer, .. } => {
                *peer = order[*peer];
            }
            _ => {}
        }
    }
    p.shape = shape.clone();
    Ok(p)
}

/// Splits `count` elements into `parts` near-equal contiguous pieces; returns piece `i` as
/// (offset, len). The first `count % parts` pieces are one element longer.
pub fn split(count: usize, parts: usize, i: usize) -> (usize, usize) {
    let base = count / parts;
    let extra = count % parts;
    let off = i * base + i.min(extra);
    let len = base + usize::from(i < extra);
    (off, len)
}

/// Cuts `len` elements at `off` into slices of at most `chunk` elements: (offset, len) pairs.
pub fn slices(off: usize, len: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..len.div_ceil(chunk)).map(move |j| (off + j * chunk, chunk.min(len - j * chunk)))
}
