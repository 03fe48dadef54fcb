//! The simulator: replays the real `Program`s of a collective (from [`algo::build`]) on a
//! modelled network, with no data, for up to tens of thousands of ranks.
//!
//! # The model
//!
//! Ranks sit on hosts, [`Network::ranks_per_host`] each (rank `r` is on host `r / rph`). A message
//! between two ranks of one host uses the intra-host [`Link`] parameters, else the inter-host
//! ones. Each rank has, per link class, a send port and a receive port, and one CPU:
//!
//! - **send** of `s` bytes: the sender's port (and, with [`Network::host_driven`], its CPU: the
//!   thread copies the bytes itself, as on shm and TCP) is busy for `overhead + s / bw`; the
//!   step completes when it is free again. The head of the message reaches the receiver `lat`
//!   after it started; the receiver's port takes it at `s / bw`, after the messages it took
//!   before (incast serialises there). With [`Network::oversub`] `f > 1`, inter-host messages
//!   also cross a shared core of bandwidth `nranks · inter.bw / f`, first come first served.
//! - **receive**: once the message has arrived *and* the step's dependencies are done (its
//!   destination is free), the receiver's CPU takes `overhead + s / reduce_bw` for a
//!   `RecvReduce`, `overhead + s / copy_bw` for a `Recv`; then the slot's credit travels back to
//!   the sender in `lat`. With [`Network::posted_recv`], a `Recv` whose destination was already
//!   free (and within the executor's 16-receive window) when the message's head came was
//!   posted: the message landed in place and costs the receiver only `overhead`.
//!   With [`Network::duplex`] `d > 1`, an inter-host send that starts while its peer is still
//!   sending to this rank, or whose next send to it is ready, takes `d` times its wire time.
//! - **local** steps use the CPU: `Copy` `s / copy_bw`, `Reduce` `s / reduce_bw`, `Finish` free.
//! - Each CPU runs one step at a time, first come first served; with
//!   [`Network::cores_per_host`] set, the ranks of a host also share that many cores.
//!
//! It replays the executor's rules (`crate::exec`): a step starts when its dependencies are
//! done; sends to one peer leave in program order and at most [`Network::credits`] of them are
//! unconsumed at a time; receives from one peer are consumed in order.
//!
//! With `overhead = 0`, infinite reduction and copy bandwidth and enough credits, one message of
//! `s` bytes takes exactly `lat + s / bw`: the closed forms in the tests.
//!
//! # Scale: symmetry, then coarse chunks
//!
//! A 16,384-rank ring all-reduce has 2·16,383 messages per rank: 16,384 Programs of ~65,000
//! steps are 10^9 steps, too many to build or replay. Two things keep it small:
//!
//! 1. **Symmetry (exact).** The ring, direct, pairwise and dissemination Programs of rank
//!    `r + P` are those of rank `r` with every peer shifted by `P` (rotation); the recursive
//!    halving-doubling Programs of rank `r ^ x` are those of `r` with every peer XOR-ed by `x`
//!    (`n` a power of two). With `P = ranks_per_host` (a power of two for XOR) and whole hosts,
//!    that map also carries hosts to hosts, so the network is symmetric too: a deterministic
//!    replay from a symmetric start stays symmetric, and every rank does what its
//!    representative among ranks `0..P` does, at the same times. So only the `P` ranks of host 0
//!    are built and replayed; a message to rank `q` is delivered to `q`'s representative, on the
//!    link that the same map carries it to. The shared core is charged for all `n / P` copies
//!    of each representative message. Before relying on it the simulator builds sample ranks'
//!    Programs and checks the map step by step ([`Symmetry`]): same steps, same mapped peers,
//!    same dependencies, sizes within one element (`split` gives some blocks one element more:
//!    that element is the only approximation). Two algorithms are only *approximately*
//!    symmetric: the direct all-reduce reduces in rank order, so its local steps differ between
//!    ranks; halving-doubling pipelined over several chunks sends the lower or the upper half
//!    first depending on the rank's bits, so its dependencies differ (with one message per
//!    exchange it is exact). Approximate symmetry is used only when a full replay would exceed
//!    the step budget, and the report says so.
//! 2. **Coarse chunks (approximation).** Where no symmetry applies (trees, chains, Bruck,
//!    rooted collectives) and the Programs would exceed [`Options::max_steps`], the chunk is
//!    doubled until they fit. Fewer, larger pipeline slices make the pipeline fill slower, so
//!    the prediction errs high by about `depth × chunk / bw`; the report gives the chunk used.
//!
//! A 16,384-rank ring all-reduce of 1 GiB on 8 ranks per host replays 8 Programs (one host).

mod engine;
mod symmetry;

use symmetry::{Group, candidate, verify};

use crate::algo::{self, Algorithm, Collective, Program, Shape, hier};
use crate::topo::HostMap;

/// Bytes per element the simulator assumes (float).
pub const ELEM: usize = 4;

/// Default step budget of a replay (see [`Options::max_steps`]).
pub const MAX_STEPS: usize = 6_000_000;

/// One class of link: latency, bandwidth and a per-message overhead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Seconds from the start of a send to the head of the message at the receiver (α).
    pub lat: f64,
    /// Bytes per second of each rank's port (1/β).
    pub bw: f64,
    /// Seconds of port (and, host-driven, CPU) time per message on each side, whatever its size.
    pub overhead: f64,
}

impl Link {
    /// A link of `lat` seconds and `bw` bytes/s, no per-message overhead.
    pub fn new(lat: f64, bw: f64) -> Link {
        Link {
            lat,
            bw,
            overhead: 0.0,
        }
    }
}

/// Which link class a message uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Both ranks on one host.
    Intra = 0,
    /// Different hosts.
    Inter = 1,
}

/// The modelled machine: hosts of ranks, links, reduction and copy speed, credits.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Ranks per host (ranks are placed in order: rank r on host r / ranks_per_host).
    pub ranks_per_host: usize,
    /// Links between ranks of one host.
    pub intra: Link,
    /// Links between hosts.
    pub inter: Link,
    /// Bytes per second one rank reduces (1/γ).
    pub reduce_bw: f64,
    /// Bytes per second one rank copies locally (and out of a receive slot).
    pub copy_bw: f64,
    /// Core oversubscription: inter-host traffic shares `nranks · inter.bw / oversub`.
    pub oversub: f64,
    /// Messages a link holds in flight (the executor's slots per ring).
    pub credits: usize,
    /// Cores per host that the ranks of a host share (0: a core per rank).
    pub cores_per_host: usize,
    /// Whether a send occupies the sender's CPU (its thread copies the bytes: shm, TCP) rather
    /// than only a NIC or DMA engine.
    pub host_driven: bool,
    /// Whether plain receives whose destination is free when the message comes are posted, so
    /// the message lands in place and the receiver copies nothing (shm's single copy, TCP's
    /// posted bodies, RDMA); otherwise every receive copies out of a slot.
    pub posted_recv: bool,
    /// NICs per host, each a send and a receive port of `inter.bw` that local rank `l` uses
    /// when `l mod nics_per_host` is its index (0: a NIC per rank, its own rail). The core
    /// then carries `hosts · nics_per_host · inter.bw / oversub`.
    pub nics_per_host: usize,
    /// How much slower an inter-host send goes on the wire while the same peer is sending back
    /// (1: not at all). A TCP connection carrying data both ways at once over rate-limited
    /// ports queues each direction's ACKs behind the other's data, which stalls both windows.
    pub duplex: f64,
}

impl Network {
    /// One host of ranks joined by `link`, reducing and copying at `reduce_bw` bytes/s, four
    /// credits, a core per rank, sends driven by the NIC.
    pub fn flat(link: Link, reduce_bw: f64) -> Network {
        Network {
            ranks_per_host: usize::MAX,
            intra: link,
            inter: link,
            reduce_bw,
            copy_bw: reduce_bw,
            oversub: 1.0,
            credits: 4,
            cores_per_host: 0,
            host_driven: false,
            posted_recv: true,
            nics_per_host: 0,
            duplex: 1.0,
        }
    }

    /// The inter-host port of `rank`: (host, NIC), or (rank, 0) with a NIC per rank.
    pub fn port(&self, rank: usize) -> (usize, usize) {
        match self.nics_per_host {
            0 => (rank, 0),
            k => (self.host(rank), (rank % self.ranks_per_host.max(1)) % k),
        }
    }

    /// The host of `rank`.
    pub fn host(&self, rank: usize) -> usize {
        rank / self.ranks_per_host.max(1)
    }

    /// The class of the link between `a` and `b`.
    pub fn class(&self, a: usize, b: usize) -> Class {
        if self.host(a) == self.host(b) {
            Class::Intra
        } else {
            Class::Inter
        }
    }

    /// The parameters of a class.
    pub fn link(&self, c: Class) -> Link {
        match c {
            Class::Intra => self.intra,
            Class::Inter => self.inter,
        }
    }
}

/// How one replay is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Largest message in bytes (the pipelining grain), as `Config::chunk_bytes`.
    pub chunk_bytes: usize,
    /// In-place call.
    pub in_place: bool,
    /// Root of rooted collectives.
    pub root: usize,
    /// Most steps to build and replay; beyond it the chunk is coarsened (see the module docs).
    pub max_steps: usize,
    /// Use symmetry where it is proven (off: replay every rank).
    pub symmetry: bool,
    /// Ranks per host the hierarchical Programs are built for; [`simulate`] sets it from the
    /// network.
    pub per_host: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            chunk_bytes: crate::algo::DEFAULT_CHUNK,
            in_place: false,
            root: 0,
            max_steps: MAX_STEPS,
            symmetry: true,
            per_host: usize::MAX,
        }
    }
}

/// How far the representatives' Programs matched their images (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Symmetry {
    /// Every rank was replayed.
    None,
    /// Same steps, peers, dependencies and sizes: exact.
    Exact,
    /// As exact, but message sizes differ by up to one element between ranks.
    Near,
    /// Same steps, peers and sizes, different dependencies (the direct all-reduce's reduction
    /// order): an approximation, used only beyond the step budget.
    Approx,
    /// Symmetric only once the buffer is padded to a multiple of the rank count: the call was
    /// replayed at [`Report::simulated`] bytes (an upper bound), from [`PAD_MIN_RANKS`] ranks
    /// on, where a full replay of uneven blocks would take minutes.
    Padded,
}

/// The result of one replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Seconds from the start until the last rank finishes.
    pub time: f64,
    /// The chunk actually used (larger than asked when coarsened).
    pub chunk_bytes: usize,
    /// Ranks whose Programs were built and replayed.
    pub replayed: usize,
    /// Steps replayed.
    pub steps: usize,
    /// Symmetry used.
    pub symmetry: Symmetry,
    /// The size actually replayed: the call's, or larger with [`Symmetry::Padded`].
    pub simulated: usize,
}

/// The bytes a call of `size` bytes (nccl-tests' size column) moves per rank block, and the
/// Shape of rank `rank`'s part of it.
///
/// Sizes follow nccl-tests: all-reduce, broadcast, reduce: the buffer; all-gather, gather: the
/// whole output; reduce-scatter, scatter, all-to-all: the whole input (so a rank block is
/// `size / nranks`).
pub fn shape(coll: Collective, nranks: usize, rank: usize, size: usize, o: &Options) -> Shape {
    let elems = size / ELEM;
    let count = match coll {
        Collective::AllGather
        | Collective::ReduceScatter
        | Collective::AllToAll
        | Collective::Gather
        | Collective::Scatter => elems / nranks.max(1),
        Collective::Barrier => 1,
        _ => elems,
    };
    let chunk = (o.chunk_bytes / ELEM).max(1);
    let mut s = Shape::new(coll, nranks, rank, count, o.in_place, chunk);
    s.root = o.root;
    if matches!(coll, Collective::Barrier) {
        s.in_place = false;
    }
    s
}

/// nccl-tests' bus-bandwidth factor: busbw = algbw × factor.
pub fn busbw_factor(coll: Collective, nranks: usize) -> f64 {
    let n = nranks.max(1) as f64;
    match coll {
        Collective::AllReduce => 2.0 * (n - 1.0) / n,
        Collective::AllGather
        | Collective::AllGatherV
        | Collective::ReduceScatter
        | Collective::ReduceScatterV
        | Collective::AllToAll
        | Collective::AllToAllV
        | Collective::Gather
        | Collective::Scatter => (n - 1.0) / n,
        _ => 1.0,
    }
}

/// The collectives the simulator replays (those whose Shape a size determines).
pub fn supported(coll: Collective) -> bool {
    !matches!(
        coll,
        Collective::Send
            | Collective::Recv
            | Collective::AllGatherV
            | Collective::ReduceScatterV
            | Collective::AllToAllV
    )
}

/// A rough count of one rank's steps, to size the replay before building anything.
fn estimate_steps(coll: Collective, algo: Algorithm, n: usize, count: usize, chunk: usize) -> f64 {
    estimate_steps_on(coll, algo, n, usize::MAX, count, chunk)
}

/// [`estimate_steps`] with `per_host` ranks per host (the hierarchical algorithms need it).
fn estimate_steps_on(
    coll: Collective,
    algo: Algorithm,
    n: usize,
    per_host: usize,
    count: usize,
    chunk: usize,
) -> f64 {
    use Algorithm as A;
    use Collective as C;
    let sl = |elems: usize| elems.div_ceil(chunk.max(1)).max(1) as f64;
    let (nf, lg) = (n as f64, (n.max(2) as f64).log2().ceil());
    match (coll, algo) {
        (C::AllReduce, A::Ring) => 2.0 * (nf - 1.0) * 2.5 * sl(count.div_ceil(n)),
        (C::AllReduce, A::Ordered) => 6.0 * nf * sl(count.div_ceil(n)),
        (C::Reduce | C::ReduceScatter, A::Ordered) => 3.0 * nf * sl(count),
        (C::AllReduce, A::Direct) => 3.0 * nf * sl(count),
        (C::AllReduce, A::Tree) => 12.0 * sl(count.div_ceil(2)),
        (C::AllReduce, A::Rhd) => 6.0 * sl(count) + 4.0 * lg,
        (C::AllReduce, A::Doubling) => 4.0 * lg * sl(count),
        (C::AllReduce, A::HierMul) => {
            // An exchange inside the host, then per round two messages between hosts, the
            // received sum handed round the host and a fold of the group: all of the buffer.
            let rph = per_host.clamp(1, n);
            let hosts = n.div_ceil(rph) as f64;
            let rounds = (hosts.ln() / ((rph + 1) as f64).ln()).ceil().max(0.0) + 1.0;
            // (Counted three times over: its Programs replay slowly, and it matters only for small
            // calls, where one slice is all there is.)
            3.0 * (3.0 * rph as f64 + rounds * (2.0 * rph as f64 + 10.0)) * sl(count)
        }
        (C::AllReduce, A::Hier | A::HierTree | A::HierRhd) => {
            // Ring steps inside the host, the inter-host algorithm on a slice between hosts.
            let (rph, hosts) = (per_host.clamp(1, n), n.div_ceil(per_host.clamp(1, n)));
            let slice = count.div_ceil(rph);
            let inter = estimate_steps(coll, hier::inter(algo), hosts, slice, chunk);
            5.0 * rph as f64 * sl(slice) + inter
        }
        (C::Broadcast | C::Reduce, _) => 4.0 * sl(count) + lg,
        (C::AllGather | C::ReduceScatter, A::Ring) => 2.0 * (nf - 1.0) * sl(count),
        (C::AllGather | C::ReduceScatter, _) => 2.0 * lg + 3.0 * sl(count * n),
        (C::AllToAll | C::Gather | C::Scatter, _) => 2.0 * nf * sl(count),
        _ => 4.0 * lg + 4.0,
    }
}

/// Replays `algo`'s Programs for `coll` over `nranks` ranks with a call of `size` bytes
/// (nccl-tests' size column, see [`shape`]) on `net`.
pub fn simulate(
    coll: Collective,
    algo: Algorithm,
    nranks: usize,
    size: usize,
    net: &Network,
    o: &Options,
) -> Result<Report, String> {
    if nranks == 0 {
        return Err("no ranks".into());
    }
    if !supported(coll) {
        return Err(format!("the simulator does not replay {}", coll.name()));
    }
    if !coll.algorithms().contains(&algo) {
        return Err(format!("{} has no {} algorithm", coll.name(), algo.name()));
    }
    if net.credits == 0 || !(net.intra.bw > 0.0 && net.inter.bw > 0.0) {
        return Err("credits and bandwidths must be positive".into());
    }
    let mut o = o.clone();
    o.per_host = net.ranks_per_host;
    let base = shape(coll, nranks, 0, size, &o);
    let total = base.count.max(base.in_len()).max(1) * ELEM;
    let sym = if o.symmetry {
        candidate(coll, algo, nranks, net)
    } else {
        Group::Identity
    };
    let budget = o.max_steps as f64;
    let steps_at = |chunk_bytes: usize, reps: usize| {
        reps as f64
            * estimate_steps_on(
                coll,
                algo,
                nranks,
                net.ranks_per_host,
                base.count,
                chunk_bytes / ELEM,
            )
    };
    // Prefer symmetry; fall back to a full replay, coarsening the chunk until it fits.
    let mut plan = None;
    if sym != Group::Identity {
        while steps_at(o.chunk_bytes, sym.reps(nranks)) > budget && o.chunk_bytes < total {
            o.chunk_bytes *= 2;
        }
        let programs = build_reps(coll, algo, nranks, size, sym, &o)?;
        match verify(coll, algo, nranks, size, sym, &o, &programs)? {
            Some(level)
                if level != Symmetry::Approx || steps_at(o.chunk_bytes, nranks) > budget =>
            {
                plan = Some((sym, level, programs));
            }
            _ => {}
        }
    }
    // Beyond PAD_MIN_RANKS ranks, a call whose blocks do not divide evenly (a few elements over
    // thousands of ranks) is replayed padded to the next size that does, with symmetry.
    let mut simulated = size;
    if plan.is_none() && sym != Group::Identity && nranks >= PAD_MIN_RANKS {
        if let Some(padded) = pad(coll, nranks, size) {
            let programs = build_reps(coll, algo, nranks, padded, sym, &o)?;
            if verify(coll, algo, nranks, padded, sym, &o, &programs)?.is_some() {
                plan = Some((sym, Symmetry::Padded, programs));
                simulated = padded;
            }
        }
    }
    let (group, level, programs) = match plan {
        Some(p) => p,
        None => {
            while steps_at(o.chunk_bytes, nranks) > budget && o.chunk_bytes < total {
                o.chunk_bytes *= 2;
            }
            let p = build_reps(coll, algo, nranks, size, Group::Identity, &o)?;
            (Group::Identity, Symmetry::None, p)
        }
    };
    let steps = programs.iter().map(|p| p.steps.len()).sum();
    let time = engine::run(&programs, group, nranks, net)?;
    Ok(Report {
        time,
        chunk_bytes: o.chunk_bytes,
        replayed: programs.len(),
        steps,
        symmetry: level,
        simulated,
    })
}

/// From this many ranks on, [`simulate`] pads calls to symmetry rather than replay every rank.
pub const PAD_MIN_RANKS: usize = 1024;

/// The smallest size ≥ `size` whose all-reduce buffer splits into `nranks` equal blocks, when
/// that is not `size`.
fn pad(coll: Collective, nranks: usize, size: usize) -> Option<usize> {
    if coll != Collective::AllReduce {
        return None;
    }
    let count = size / ELEM;
    let padded = count.div_ceil(nranks).max(1) * nranks;
    (padded != count).then_some(padded * ELEM)
}

/// Rank `r`'s Program; hierarchical algorithms are built on the block host map of `o.per_host`
/// ranks per host (the placement the network model has).
fn build_one(
    coll: Collective,
    algo: Algorithm,
    n: usize,
    r: usize,
    size: usize,
    o: &Options,
) -> Result<Program, String> {
    let s = shape(coll, n, r, size, o);
    if algo.is_hier() {
        let map = hosts(n, o.per_host);
        algo::build_on(algo, &s, &map)
    } else {
        algo::build(algo, &s)
    }
}

/// The block host map of `n` ranks, `per_host` per host; the last one is kept, since a replay
/// builds many Programs on one map.
fn hosts(n: usize, per_host: usize) -> std::sync::Arc<HostMap> {
    use std::sync::{Arc, Mutex};
    static LAST: Mutex<Option<(usize, usize, Arc<HostMap>)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((a, b, m)) = last.as_ref() {
        if (*a, *b) == (n, per_host) {
            return m.clone();
        }
    }
    let m = Arc::new(HostMap::block(n, per_host.clamp(1, n.max(1))));
    *last = Some((n, per_host, m.clone()));
    m
}

fn build_reps(
    coll: Collective,
    algo: Algorithm,
    n: usize,
    size: usize,
    g: Group,
    o: &Options,
) -> Result<Vec<Program>, String> {
    let mut out = Vec::with_capacity(g.reps(n));
    let mut steps = 0usize;
    for r in 0..g.reps(n) {
        let p = build_one(coll, algo, n, r, size, o)?;
        steps += p.steps.len();
        // The estimate that sized the chunk was rough; never let it run out of memory.
        if steps > o.max_steps.saturating_mul(4) {
            return Err(format!(
                "{} {} over {n} ranks needs more than {} steps at a {} KiB chunk; raise \
                 --max-steps or --chunk",
                coll.name(),
                algo.name(),
                4 * o.max_steps,
                o.chunk_bytes >> 10
            ));
        }
        out.push(p);
    }
    Ok(out)
}
