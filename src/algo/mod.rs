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

pub mod builder;
pub mod direct;
pub mod ring;
pub mod verify;

pub use builder::Builder;

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
    /// All-reduce.
    AllReduce = 1,
    /// Barrier (an all-reduce of nothing, as far as the wire is concerned).
    Barrier = 2,
}

impl Collective {
    /// The name as users know it.
    pub fn name(self) -> &'static str {
        match self {
            Collective::AllReduce => "all_reduce",
            Collective::Barrier => "barrier",
        }
    }

    /// Decodes the wire byte.
    pub fn from_u8(v: u8) -> Option<Collective> {
        match v {
            1 => Some(Collective::AllReduce),
            2 => Some(Collective::Barrier),
            _ => None,
        }
    }
}

/// The all-reduce algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ring: reduce-scatter then all-gather, chunked and pipelined. Bandwidth-optimal.
    Ring,
    /// One-shot direct: every rank sends its whole buffer to every other rank and reduces
    /// locally, in rank order. One message latency; for small messages.
    Direct,
}

impl Algorithm {
    /// The name used by OXCCL_ALGO and printed by tools.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
            Algorithm::Direct => "direct",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ring" => Some(Algorithm::Ring),
            "direct" | "oneshot" | "one-shot" => Some(Algorithm::Direct),
            _ => None,
        }
    }
}

/// Parameters every schedule takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Number of ranks.
    pub nranks: usize,
    /// This rank.
    pub rank: usize,
    /// Elements per rank buffer.
    pub count: usize,
    /// Whether input and output are the same memory.
    pub in_place: bool,
    /// Largest message in elements (the pipelining grain); at least 1.
    pub chunk: usize,
}

/// One rank's part of a collective.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The shape it was built for.
    pub shape: Shape,
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

/// Builds one rank's all-reduce Program with `algo`.
pub fn all_reduce(algo: Algorithm, shape: Shape) -> Program {
    match algo {
        Algorithm::Ring => ring::all_reduce(shape),
        Algorithm::Direct => direct::all_reduce(shape),
    }
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
