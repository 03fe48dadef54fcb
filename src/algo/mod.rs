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

pub(crate) mod bruck;
pub(crate) mod builder;
pub(crate) mod chain;
pub(crate) mod direct;
pub(crate) mod doubling;
pub(crate) mod hier;
pub(crate) mod misc;
pub(crate) mod multiply;
pub(crate) mod ordered;
pub(crate) mod rhd;
pub(crate) mod ring;
pub(crate) mod tree;
#[cfg(test)]
pub(crate) mod verify;

#[cfg(test)]
mod topo_tests;

pub(crate) use builder::Builder;

use crate::topo::HostMap;

/// Default chunk (slot) size in bytes: the largest message a Program step moves at once,
/// unless the configuration says otherwise.
pub const DEFAULT_CHUNK: usize = 512 << 10;

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

enum_table! {
    /// The collectives; the code is the byte a [`Tag`](crate::transport::Tag) carries.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Collective: u8, fn from_u8 {
        /// All-reduce: everyone gets the reduction of everyone's buffer.
        AllReduce = 1 => "all_reduce",
        /// Barrier: nobody leaves before everyone has arrived.
        Barrier = 2 => "barrier",
        /// Broadcast: everyone gets the root's buffer.
        Broadcast = 3 => "broadcast",
        /// Reduce: the root gets the reduction of everyone's buffer.
        Reduce = 4 => "reduce",
        /// All-gather: everyone gets the concatenation of everyone's block.
        AllGather = 5 => "all_gather",
        /// Reduce-scatter: rank r gets block r of the reduction.
        ReduceScatter = 6 => "reduce_scatter",
        /// All-to-all: rank r gets block r of everyone's buffer, in rank order.
        AllToAll = 7 => "all_to_all",
        /// Gather: the root gets the concatenation of everyone's block.
        Gather = 8 => "gather",
        /// Scatter: rank r gets block r of the root's buffer.
        Scatter = 9 => "scatter",
        /// Point-to-point send (the peer is `Shape::root`).
        Send = 10 => "send",
        /// Point-to-point receive (the peer is `Shape::root`).
        Recv = 11 => "recv",
        /// All-gather with per-rank block sizes (`Shape::counts`).
        AllGatherV = 12 => "all_gatherv",
        /// Reduce-scatter with per-rank block sizes (`Shape::counts`).
        ReduceScatterV = 13 => "reduce_scatterv",
        /// All-to-all with per-peer sizes (`Shape::counts` = n send counts, then n receive
        /// counts).
        AllToAllV = 14 => "all_to_allv",
    }
}

impl Collective {
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
            Collective::Gather | Collective::Scatter => &[Linear, Tree],
            Collective::Send | Collective::Recv => &[Linear],
        }
    }
}

enum_table! {
    /// Algorithms. Which apply to which collective: [`Collective::algorithms`]. Names as
    /// OXCCL_ALGO takes them and tools print them, with a few aliases.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Algorithm: u8, fn from_u8 {
        /// Ring: for all-reduce, reduce-scatter then all-gather, chunked and pipelined
        /// (bandwidth-optimal); for all-gather / reduce-scatter, one ring pass.
        Ring = 0 => "ring",
        /// One-shot direct all-reduce: every rank sends its buffer to every other and reduces
        /// locally in rank order. One message latency; for small messages.
        Direct = 1 => "direct" | "oneshot" | "one-shot",
        /// All-reduce: double binary tree (two trees, each reducing and broadcasting half the
        /// data, pipelined); broadcast / reduce / gather / scatter: binomial tree (a gather or
        /// scatter message carries a child's whole subtree of blocks).
        Tree = 2 => "tree" | "dbtree" | "binomial",
        /// All-reduce: recursive halving-doubling (Rabenseifner), any rank count.
        Rhd = 3 => "rhd" | "rabenseifner" | "halving-doubling",
        /// Broadcast / reduce: a pipelined chain from (to) the root.
        Chain = 4 => "chain" | "pipeline",
        /// All-gather / reduce-scatter: Bruck's recursive doubling (halving), any rank count.
        Bruck = 5 => "bruck" | "recursive-doubling" | "rd",
        /// All-to-all: pairwise exchange.
        Pairwise = 6 => "pairwise",
        /// Barrier: dissemination (log n rounds).
        Dissemination = 7 => "dissemination",
        /// Gather / scatter / send / recv: direct messages to (from) the root or peer.
        Linear = 8 => "linear",
        /// All-reduce / reduce / reduce-scatter folding every element in rank order at one
        /// owner: bitwise reproducible whatever the size or chunking (OXCCL_DETERMINISTIC=1).
        Ordered = 9 => "ordered" | "deterministic",
        /// Hierarchical over the host map (`hier`). All-reduce: intra-host reduce-scatter, a
        /// ring between hosts on each local rank's rail, intra-host all-gather; broadcast /
        /// reduce: the slices scattered (reduce-scattered) over the root's (every) host, a chain
        /// between hosts per rail; all-gather / reduce-scatter: rings per rail between hosts and
        /// per host.
        Hier = 10 => "hier" | "hier-ring" | "hierarchical",
        /// As [`Algorithm::Hier`] with a double binary tree between hosts (broadcast / reduce: a
        /// binomial tree).
        HierTree = 11 => "hier-tree",
        /// As [`Algorithm::Hier`] with recursive halving-doubling between hosts (recursive
        /// doubling where a slice has fewer elements than there are hosts).
        HierRhd = 12 => "hier-rhd",
        /// All-reduce: recursive doubling, the whole buffer every round (`doubling`); for
        /// small messages at scale.
        Doubling = 13 => "doubling" | "recursive-doubling-allreduce",
        /// All-reduce: recursive multiplying across rails (`multiply`): every local rank of a
        /// host exchanges with another host at once, about log_k(hosts) rounds; for small
        /// messages over many hosts.
        HierMul = 14 => "hier-mul" | "multiply",
    }
}

impl Algorithm {
    /// Whether it is one of the hierarchical algorithms (which need a [`HostMap`]).
    pub fn is_hier(self) -> bool {
        matches!(
            self,
            Algorithm::Hier | Algorithm::HierTree | Algorithm::HierRhd | Algorithm::HierMul
        )
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

    /// The buffers a caller passes for this call when not in place, in elements: (send,
    /// receive), `None` for a buffer this rank ignores (a non-root's receive buffer of reduce and
    /// gather, its send buffer of broadcast and scatter; recv's send and send's receive buffer;
    /// both of barrier's). The one statement of each collective's buffer-length rule: the API
    /// checks calls against it ([`Shape::from_buffers`]), the C ABI sizes its buffers with it, and
    /// [`Shape::in_len`] / [`Shape::out_len`] (the executor's and verifier's view) follow from it.
    /// `Err` when a length overflows `usize` (counts from C may be anything).
    pub fn buffers(&self) -> Result<(Option<usize>, Option<usize>), String> {
        let (r, n, c) = (self.rank, self.nranks, self.count);
        let root = r == self.root;
        let all = || {
            c.checked_mul(n)
                .ok_or_else(|| format!("{n} blocks of {c} elements overflow"))
        };
        let sum = |counts: &[usize]| {
            counts
                .iter()
                .try_fold(0usize, |a, &x| a.checked_add(x))
                .ok_or_else(|| "the sum of counts overflows".to_string())
        };
        let mine = |counts: &[usize]| counts.get(r).copied().unwrap_or(0);
        let k = &self.counts;
        Ok(match self.coll {
            Collective::AllReduce => (Some(c), Some(c)),
            Collective::Broadcast => (root.then_some(c), Some(c)),
            Collective::Reduce => (Some(c), root.then_some(c)),
            Collective::AllGather => (Some(c), Some(all()?)),
            Collective::ReduceScatter => (Some(all()?), Some(c)),
            Collective::AllToAll => (Some(all()?), Some(all()?)),
            Collective::Gather => (Some(c), if root { Some(all()?) } else { None }),
            Collective::Scatter => (if root { Some(all()?) } else { None }, Some(c)),
            Collective::AllGatherV => (Some(mine(k)), Some(sum(k)?)),
            Collective::ReduceScatterV => (Some(sum(k)?), Some(mine(k))),
            Collective::AllToAllV => {
                let (sc, rc) = k.split_at(n.min(k.len()));
                (Some(sum(sc)?), Some(sum(rc)?))
            }
            Collective::Send => (Some(c), None),
            Collective::Recv => (None, Some(c)),
            Collective::Barrier => (None, None),
        })
    }

    /// The shape of a call on `rank` of `nranks` whose buffers hold `send` (`None`: in place) and
    /// `recv` elements, with `root` (the peer of send / recv) and the v-variants' `counts`; or
    /// why the buffers do not fit the collective (checked against [`Shape::buffers`]).
    #[allow(clippy::too_many_arguments)]
    pub fn from_buffers(
        coll: Collective,
        nranks: usize,
        rank: usize,
        root: usize,
        counts: &[usize],
        send: Option<usize>,
        recv: usize,
        chunk: usize,
    ) -> Result<Shape, String> {
        let (n, r) = (nranks, rank);
        let p2p = matches!(coll, Collective::Send | Collective::Recv);
        if (coll.rooted() || p2p) && root >= n {
            return Err(format!(
                "root/peer {root} is not a rank of this {n}-rank communicator"
            ));
        }
        if p2p && root == r {
            return Err("a rank cannot send to or receive from itself".into());
        }
        let whole = |len: usize, what: &str| {
            if len % n != 0 {
                Err(format!("{what} of {len} elements is not {n} equal blocks"))
            } else {
                Ok(len / n)
            }
        };
        let need = |k: usize, what: String| if counts.len() != k { Err(what) } else { Ok(()) };
        // The count follows from one buffer; `buffers` then says what the others must hold.
        let count = match coll {
            Collective::AllReduce | Collective::Broadcast | Collective::Recv => recv,
            Collective::Reduce if r == root => recv,
            Collective::Reduce => send.unwrap_or(recv),
            Collective::Send => send.unwrap_or(0),
            Collective::AllGather => match send {
                Some(s) => s,
                None => whole(recv, "receive buffer")?,
            },
            Collective::ReduceScatter => match send {
                Some(_) => recv,
                None => whole(recv, "buffer")?,
            },
            Collective::AllToAll => match send {
                Some(s) if s != recv => {
                    return Err(format!(
                        "send and receive buffers differ: {s} vs {recv} elements"
                    ));
                }
                _ => whole(recv, "receive buffer")?,
            },
            Collective::Gather => send.unwrap_or(0),
            Collective::Scatter => recv,
            Collective::AllGatherV | Collective::ReduceScatterV => {
                need(
                    n,
                    format!("{} counts given, need one per rank ({n})", counts.len()),
                )?;
                counts[r]
            }
            Collective::AllToAllV => {
                need(
                    2 * n,
                    format!("need {n} send counts and {n} receive counts"),
                )?;
                counts[r]
            }
            Collective::Barrier => 1,
        };
        let in_place = send.is_none();
        let mut shape = Shape::new(coll, n, r, count, in_place && !p2p, chunk);
        shape.root = root;
        if matches!(
            coll,
            Collective::AllGatherV | Collective::ReduceScatterV | Collective::AllToAllV
        ) {
            shape.counts = counts.to_vec();
        }
        if coll == Collective::Barrier {
            shape.in_place = false;
            return Ok(shape);
        }
        let (want_send, want_recv) = shape.buffers()?;
        let (send_rule, recv_rule) = match coll {
            Collective::AllGather => ("", "the receive buffer must hold nranks send buffers"),
            Collective::ReduceScatter => ("the send buffer must hold nranks receive buffers", ""),
            Collective::Gather => (
                "",
                "the root's receive buffer must hold nranks send buffers",
            ),
            Collective::Scatter => (
                "the root's send buffer must hold nranks receive buffers",
                "",
            ),
            Collective::AllGatherV => (
                "send buffer vs counts[rank]",
                "receive buffer vs the sum of counts",
            ),
            Collective::ReduceScatterV => (
                "send buffer vs the sum of counts",
                "receive buffer vs counts[rank]",
            ),
            Collective::AllToAllV => (
                "send buffer vs the sum of send counts",
                "receive buffer vs the sum of receive counts",
            ),
            _ => ("send and receive buffers differ", ""),
        };
        // In place, the send buffer is the receive buffer (checked above); the v-variants and
        // gather / scatter have no in-place form here and read an absent send buffer as empty.
        let given_send = match coll {
            Collective::AllGatherV
            | Collective::ReduceScatterV
            | Collective::AllToAllV
            | Collective::Gather
            | Collective::Scatter
            | Collective::Send => Some(send.unwrap_or(0)),
            _ => send,
        };
        // In place, reduce-scatter's receive buffer is the whole buffer (its blocks checked above).
        let given_recv = (!(coll == Collective::ReduceScatter && in_place)).then_some(recv);
        for (given, want, rule) in [
            (given_send, want_send, send_rule),
            (given_recv, want_recv, recv_rule),
        ] {
            if let (Some(g), Some(w)) = (given, want) {
                if g != w {
                    return Err(format!("{rule}: {g} vs {w} elements"));
                }
            }
        }
        if coll == Collective::AllToAllV && counts[r] != counts[n + r] {
            return Err(format!(
                "send_counts[rank] and recv_counts[rank] (this rank's own block): {} vs {} elements",
                counts[r],
                counts[n + r]
            ));
        }
        Ok(shape)
    }

    /// Elements of Input this rank provides (0 where Input is unused).
    pub fn in_len(&self) -> usize {
        self.buffers()
            .map_or(usize::MAX, |(send, _)| send.unwrap_or(0))
    }

    /// Elements of Output this rank needs (0 where Output is unused): the receive buffer of
    /// [`Shape::buffers`], except that in place it is the whole buffer for reduce-scatter and
    /// the root of scatter, and barrier has a byte.
    pub fn out_len(&self) -> usize {
        let root = self.rank == self.root;
        match self.coll {
            Collective::ReduceScatter | Collective::ReduceScatterV if self.in_place => {
                self.blocks().total()
            }
            Collective::Scatter if self.in_place && root => self.nranks * self.count,
            Collective::Barrier => 1,
            _ => self
                .buffers()
                .map_or(usize::MAX, |(_, recv)| recv.unwrap_or(0)),
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
        (C::Gather, A::Tree) => tree::gather_over(s, &(0..s.nranks).collect::<Vec<_>>()),
        (C::Scatter, A::Tree) => tree::scatter_over(s, &(0..s.nranks).collect::<Vec<_>>()),
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
/// place; the tree gather and scatter build their binomial tree over the order and keep each
/// block at its rank's place. The others (Bruck, pairwise, linear, ordered) keep rank order:
/// Bruck's exchanges and the ordered fold are defined by rank numbers. Hierarchical algorithms
/// (`hier`) compose intra-host and inter-host steps on the map.
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
        (C::Gather, A::Tree) => tree::gather_over(shape, &map.order()),
        (C::Scatter, A::Tree) => tree::scatter_over(shape, &map.order()),
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
pub(crate) fn split(count: usize, parts: usize, i: usize) -> (usize, usize) {
    let base = count / parts;
    let extra = count % parts;
    let off = i * base + i.min(extra);
    let len = base + usize::from(i < extra);
    (off, len)
}

/// Cuts `len` elements at `off` into slices of at most `chunk` elements: (offset, len) pairs.
pub(crate) fn slices(off: usize, len: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..len.div_ceil(chunk)).map(move |j| (off + j * chunk, chunk.min(len - j * chunk)))
}

/// For tests: every collective a program is built for on all ranks (all but send and receive),
/// in table order.
#[cfg(test)]
pub(crate) const COLLS: [Collective; 12] = [
    Collective::AllReduce,
    Collective::Barrier,
    Collective::Broadcast,
    Collective::Reduce,
    Collective::AllGather,
    Collective::ReduceScatter,
    Collective::AllToAll,
    Collective::Gather,
    Collective::Scatter,
    Collective::AllGatherV,
    Collective::ReduceScatterV,
    Collective::AllToAllV,
];

/// For property tests: collective `ci` of [`COLLS`] and its algorithm `ai` (both modulo the
/// choices), with `n`, `count` and `chunk` bounded so a symbolic run stays fast: direct
/// all-reduce (n^2 messages) to 16 ranks, all-to-all to 8 elements, at most 8 slices per block
/// (pipelining is exercised all the same; a 64-rank ring all-gather of 199 elements in
/// 1-element chunks took 6 minutes in a debug build). Returns (coll, algo, n, count, chunk).
#[cfg(test)]
pub(crate) fn pick_case(
    ci: usize,
    ai: usize,
    n: usize,
    count: usize,
    chunk: usize,
) -> (Collective, Algorithm, usize, usize, usize) {
    let coll = COLLS[ci % COLLS.len()];
    let algos = coll.algorithms();
    let algo = algos[ai % algos.len()];
    let n = if algo == Algorithm::Direct {
        n.min(16)
    } else {
        n
    };
    let count = if matches!(coll, Collective::AllToAll | Collective::AllToAllV) {
        count.min(8)
    } else {
        count
    };
    (coll, algo, n, count, chunk.max(count.div_ceil(8)))
}

/// For tests: a xorshift64 generator from `seed`.
#[cfg(test)]
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// For tests: the shapes of every rank for one call; `seed` draws the v-variants' counts.
#[cfg(test)]
pub(crate) fn shapes(
    coll: Collective,
    n: usize,
    count: usize,
    root: usize,
    in_place: bool,
    chunk: usize,
    seed: u64,
) -> Vec<Shape> {
    let mut next = xorshift(seed);
    // All-to-allv: a random matrix m[src][dst] of sizes.
    let mut m: Vec<Vec<usize>> = (0..n)
        .map(|_| (0..n).map(|_| (next() as usize) % (count + 1)).collect())
        .collect();
    if in_place {
        // In place needs equal send and receive sizes per rank: a symmetric matrix.
        #[allow(clippy::needless_range_loop)]
        for a in 0..n {
            for b in 0..a {
                m[a][b] = m[b][a];
            }
        }
    }
    let v: Vec<usize> = (0..n).map(|_| (next() as usize) % (count + 1)).collect();
    (0..n)
        .map(|rank| {
            let mut s = Shape::new(coll, n, rank, count, in_place, chunk);
            s.root = root % n;
            match coll {
                Collective::AllGatherV | Collective::ReduceScatterV => s.counts = v.clone(),
                Collective::AllToAllV => {
                    s.counts = m[rank].clone();
                    s.counts.extend((0..n).map(|src| m[src][rank]));
                }
                _ => {}
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod buffer_tests {
    use super::{Collective as C, Shape};

    fn check(
        c: C,
        rank: usize,
        root: usize,
        counts: &[usize],
        send: Option<usize>,
        recv: usize,
    ) -> Result<Shape, String> {
        Shape::from_buffers(c, 4, rank, root, counts, send, recv, 8)
    }

    /// Bad buffers are refused with the messages the API has always given.
    #[test]
    fn bad_lengths_say_which_rule() {
        type Case = (
            C,
            usize,
            usize,
            &'static [usize],
            Option<usize>,
            usize,
            &'static str,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (C::AllReduce, 0, 0, &[], Some(3), 4,
                "send and receive buffers differ: 3 vs 4 elements"),
            (C::Broadcast, 1, 1, &[], Some(3), 4,
                "send and receive buffers differ: 3 vs 4 elements"),
            (C::Reduce, 2, 2, &[], Some(3), 4,
                "send and receive buffers differ: 3 vs 4 elements"),
            (C::AllToAll, 0, 0, &[], Some(3), 4,
                "send and receive buffers differ: 3 vs 4 elements"),
            (C::AllToAll, 0, 0, &[], None, 6,
                "receive buffer of 6 elements is not 4 equal blocks"),
            (C::AllGather, 0, 0, &[], Some(2), 7,
                "the receive buffer must hold nranks send buffers: 7 vs 8 elements"),
            (C::AllGather, 0, 0, &[], None, 7,
                "receive buffer of 7 elements is not 4 equal blocks"),
            (C::ReduceScatter, 0, 0, &[], Some(7), 2,
                "the send buffer must hold nranks receive buffers: 7 vs 8 elements"),
            (C::ReduceScatter, 0, 0, &[], None, 7,
                "buffer of 7 elements is not 4 equal blocks"),
            (C::Gather, 1, 1, &[], Some(2), 7,
                "the root's receive buffer must hold nranks send buffers: 7 vs 8 elements"),
            (C::Scatter, 1, 1, &[], Some(7), 2,
                "the root's send buffer must hold nranks receive buffers: 7 vs 8 elements"),
            (C::AllGatherV, 0, 0, &[1, 2], Some(1), 3,
                "2 counts given, need one per rank (4)"),
            (C::AllGatherV, 1, 0, &[1, 2, 3, 4], Some(1), 10,
                "send buffer vs counts[rank]: 1 vs 2 elements"),
            (C::AllGatherV, 1, 0, &[1, 2, 3, 4], Some(2), 9,
                "receive buffer vs the sum of counts: 9 vs 10 elements"),
            (C::ReduceScatterV, 1, 0, &[1, 2, 3, 4], Some(9), 2,
                "send buffer vs the sum of counts: 9 vs 10 elements"),
            (C::ReduceScatterV, 1, 0, &[1, 2, 3, 4], Some(10), 3,
                "receive buffer vs counts[rank]: 3 vs 2 elements"),
            (C::AllToAllV, 0, 0, &[1, 2, 3, 4], Some(10), 10,
                "need 4 send counts and 4 receive counts"),
            (C::AllToAllV, 0, 0, &[1, 2, 3, 4, 5, 1, 1, 1], Some(9), 8,
                "send buffer vs the sum of send counts: 9 vs 10 elements"),
            (C::AllToAllV, 0, 0, &[1, 2, 3, 4, 5, 1, 1, 1], Some(10), 9,
                "receive buffer vs the sum of receive counts: 9 vs 8 elements"),
            (C::AllToAllV, 0, 0, &[1, 2, 3, 4, 5, 1, 1, 1], Some(10), 8,
                "send_counts[rank] and recv_counts[rank] (this rank's own block): 1 vs 5 elements"),
            (C::Send, 0, 4, &[], Some(1), 0,
                "root/peer 4 is not a rank of this 4-rank communicator"),
            (C::Recv, 2, 2, &[], None, 1,
                "a rank cannot send to or receive from itself"),
        ];
        for &(c, rank, root, counts, send, recv, want) in cases {
            let got = check(c, rank, root, counts, send, recv).unwrap_err();
            assert_eq!(got, want, "{c:?} rank {rank} root {root} {send:?}/{recv}");
        }
    }

    /// Good buffers give the shape the executor expects; ignored buffers are not checked.
    #[test]
    fn good_lengths_make_the_shape() {
        let s = check(C::AllGather, 1, 0, &[], None, 8).unwrap();
        assert_eq!(
            (s.count, s.in_place, s.in_len(), s.out_len()),
            (2, true, 2, 8)
        );
        let s = check(C::ReduceScatter, 1, 0, &[], None, 8).unwrap();
        assert_eq!((s.count, s.in_place, s.out_len()), (2, true, 8));
        let s = check(C::ReduceScatter, 1, 0, &[], Some(8), 2).unwrap();
        assert_eq!(
            (s.count, s.in_place, s.in_len(), s.out_len()),
            (2, false, 8, 2)
        );
        // Non-roots' ignored buffers may be anything.
        assert!(check(C::Reduce, 1, 0, &[], Some(3), 0).is_ok());
        assert!(check(C::Gather, 1, 0, &[], Some(3), 99).is_ok());
        assert!(check(C::Scatter, 1, 0, &[], Some(99), 3).is_ok());
        assert!(check(C::Broadcast, 1, 0, &[], Some(99), 3).is_ok());
        let s = check(C::Send, 0, 1, &[], Some(5), 0).unwrap();
        assert_eq!((s.count, s.in_place, s.root), (5, false, 1));
        let s = check(C::Barrier, 0, 0, &[], None, 0).unwrap();
        assert_eq!((s.count, s.in_place, s.out_len()), (1, false, 1));
        let s = check(C::AllToAllV, 0, 0, &[1, 2, 3, 4, 1, 1, 1, 1], Some(10), 4).unwrap();
        assert_eq!((s.count, s.in_len(), s.out_len()), (1, 10, 4));
        // Counts from C may be anything: an overflow is an error, not a panic.
        let mut big = Shape::new(C::AllGather, 4, 0, usize::MAX / 2, false, 1);
        assert!(big.buffers().is_err());
        big.coll = C::AllGatherV;
        big.counts = vec![usize::MAX; 4];
        assert!(big.buffers().is_err());
    }
}
