//! Algorithm selection: an α-β-γ cost model per transport, evaluated on the real Programs.
//!
//! # The model
//!
//! Per transport ([`Transport`]): α, seconds of latency per message; β, seconds per byte moved
//! over a link; γ, seconds per byte reduced ([`Costs`]). A CPU transport needs two terms
//! besides: `overhead`, CPU seconds per message on each side whatever its size (system calls,
//! slot bookkeeping), and `wake`, latency added per message for every rank beyond one per core.
//! Per host ([`Model`]): the cores its ranks share — with fewer cores than ranks, every byte a
//! rank moves or reduces and every message it handles waits for a core, which is what makes
//! the direct all-reduce's `n − 1` messages per rank lose to a tree's two or three long before
//! the latency terms say so — and a cache: calls whose working set fits move and reduce faster.
//!
//! # The cost of a call
//!
//! The cost of (collective, algorithm, nranks, bytes, chunk) is the time the simulator
//! ([`crate::sim`]) predicts for the algorithm's real Programs on a one-host network made of the
//! transport's costs ([`Model::network`]): the critical path through the steps, with message
//! latency, port and CPU contention, credits and pipelining as the executor runs them. Sizes
//! above [`SIM_CAP`] cost the cost at [`SIM_CAP`] scaled by size (every algorithm is in its
//! bandwidth regime there, so the ranking no longer changes). Beyond [`SIM_MAX_RANKS`] ranks the
//! textbook formulas of [`formula`] stand in (tests check they agree with the simulator).
//!
//! [`choose`] returns the cheapest algorithm; every rank computes the same answer from the same
//! inputs (collective, nranks, size, chunk, transport and model), so they agree without talking.
//! Answers are cached per (collective, nranks, size bucket, chunk, transport, model); a bucket
//! is a quarter of an octave (a size rounded down to 3 significant bits).
//!
//! # Defaults
//!
//! [`SHM`], [`TCP`], [`CACHE`] and [`CACHE_SPEEDUP`] were measured on the development VM
//! (2 vCPUs) with `benches/validate_tuner.sh` — `target/release/oxccl-perf -N K --transport T
//! -a ALGO -b 8 -e 64M -f 4 -c 0 -n 5 -w 2` for K = 2, 4, 8, both transports and every
//! all-reduce algorithm — and fitted to those measurements with `benches/fit_tuner.py` (see
//! each constant). On this VM every rank's thread does its own copies and the ranks share two
//! cores, so per-message CPU (`overhead`) and the core count decide most choices; on a machine
//! with a core per rank the same model reduces to α-β-γ. With `OXCCL_TUNE=1`, a communicator
//! re-measures α, β and γ at init (`Communicator::measure_model`: ping-pongs and a local
//! reduction, a few milliseconds; [`measured`] makes the model) and keeps the result as its own
//! model. This module is pure: it holds no communicator and no per-communicator state (its one
//! cache memoises [`choose_on`] by all of its inputs).
//!
//! # Agreement
//!
//! Ranks never negotiate an algorithm, so everything a choice depends on must be the same on
//! every rank: the call, the transport and whether all ranks share a host (from the cards every
//! rank holds), the processors online on the host ([`host_cores`], used only when all ranks are
//! on one host), and the model (the defaults, or rank 0's measurement broadcast to all).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::algo::{Algorithm, Collective, Shape};
use crate::reduce::{DataType, ReduceOp};
use crate::sim::{self, Link, Network};

mod formula;
pub use formula::formula;

/// The α-β-γ costs of one transport, and two terms a CPU transport needs besides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// Seconds of latency per message (α).
    pub alpha: f64,
    /// Seconds per byte moved over a link (β): the sender's thread copies it (shm, TCP).
    pub beta: f64,
    /// Seconds per byte reduced (γ).
    pub gamma: f64,
    /// Seconds of CPU per message on each side, whatever its size (system calls, slot
    /// bookkeeping).
    pub overhead: f64,
    /// Seconds added to α for every rank beyond one per core on a host: a rank that waits for a
    /// message has given its core away, and gets one back only after the ranks queued there
    /// have had their turn.
    pub wake: f64,
    /// Seconds to set one link up on its first use (TCP: connect, accept and the handshake;
    /// shm: mapping the ring). Paid once per peer per communicator; the tuner spreads it over
    /// [`SETUP_CALLS`] calls ([`Model::setup_charge`]), so an algorithm that talks to every
    /// rank is not modelled as free of its `n − 1` links.
    pub setup: f64,
}

/// The calls a communicator's link setup is spread over in the tuner's per-call costs: a link
/// is made once, on first use, and then serves every later call.
pub(crate) const SETUP_CALLS: f64 = 100.0;

/// The transports the model knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Shared memory (every rank on one host).
    Shm,
    /// TCP (or a mix: the slowest link decides).
    Tcp,
}

impl Transport {
    /// The name links report (`Link::transport`).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Shm => "shm",
            Transport::Tcp => "tcp",
        }
    }

    /// Parses `shm` / `tcp`.
    pub fn parse(s: &str) -> Option<Transport> {
        match s.trim().to_ascii_lowercase().as_str() {
            "shm" => Some(Transport::Shm),
            "tcp" => Some(Transport::Tcp),
            _ => None,
        }
    }
}

/// Shared memory on the development VM (2 vCPUs).
///
/// Measured with `benches/validate_tuner.sh -r 3 --iters 10`, which runs
/// `target/release/oxccl-perf -N K --transport shm -a ALGO -f 4 -c 0 -w 2` for K = 2, 4, 8 and
/// every all-reduce algorithm (200 timed iterations per size up to 32 KiB, 10 above, best of 3
/// runs), then fitted with `FIX=cache,speedup benches/fit_tuner.py DIR shm` (a coordinate
/// search that replays every measured point in the simulator), refitted after the per-call
/// overhead came down from ~1.5 µs to ~0.13 µs. What pins each number down:
///
/// - `alpha` 0.5 µs, `overhead` 0: an 8-byte all-reduce of 2 ranks takes 0.4–0.5 µs whatever
///   the algorithm (one message each way); the per-message CPU cost is now below what the
///   fit can separate from α.
/// - `wake` 2 µs per hop for every rank beyond one per core: with 4 ranks on 2 cores an
///   8-byte direct all-reduce (one round) takes 4.7 µs and a tree (four hops deep) 9.7–10.8
///   µs; with 8 ranks 20 µs against 32 µs. A waiting rank yields its core, and the rank it
///   waits for runs only when the scheduler comes back to it.
/// - `beta` 1/8 GB/s, `gamma` 1/16 GB/s: out-of-cache copies and reductions, two ranks per
///   core: 32 MiB with 8 ranks, 43–46 ms by ring, tree and halving-doubling alike.
pub const SHM: Costs = Costs {
    alpha: 0.5e-6,
    beta: 1.0 / 8.0e9,
    gamma: 1.0 / 16.0e9,
    overhead: 0.0,
    wake: 2.0e-6,
    setup: SHM_SETUP,
};

/// [`Costs::setup`] of shm: a few system calls and a mapping, about nothing beside TCP's (an
/// estimate, not fitted).
const SHM_SETUP: f64 = 10.0e-6;

/// [`Costs::setup`] of TCP: a connection (SYN round trip, accept, the oxccl handshake and the
/// link's threads) takes a few hundred microseconds per peer (an estimate, not fitted).
const TCP_SETUP: f64 = 300.0e-6;

/// TCP over loopback on the development VM, measured and fitted as [`SHM`] (`--transport tcp`).
///
/// - `overhead` 5 µs: system calls and poll wake-ups per message and side: an 8-byte direct
///   all-reduce takes 11–12 µs with 2 ranks, 73–78 µs with 4 ranks and 500–590 µs with 8 ranks
///   (56 messages on 2 cores), a tree of 8 ranks 370–400 µs.
/// - `alpha` 1 µs: the latency that is not CPU time.
/// - `wake` 7 µs per hop per rank beyond one per core: a rank woken from poll(2) waits for a
///   core.
/// - `beta` 1/8 GB/s, `gamma` 1/6 GB/s: the sender's `write` copies at memory speed; the
///   receiver's copy out of the socket falls on the reduction (γ).
pub const TCP: Costs = Costs {
    alpha: 1.0e-6,
    beta: 1.0 / 8.0e9,
    gamma: 1.0 / 6.0e9,
    overhead: 5.0e-6,
    wake: 7.0e-6,
    setup: TCP_SETUP,
};

/// Messages a link holds in flight (the executor's slots per ring: `transport::shm` and the
/// TCP link both default to 4).
pub(crate) const CREDITS: usize = 4;

/// Sizes above this cost their cost at this size, scaled (see the module docs).
pub(crate) const SIM_CAP: usize = 64 << 20;

/// Beyond this many ranks, [`formula`] stands in for the simulator.
pub(crate) const SIM_MAX_RANKS: usize = 64;

/// Step budget of the simulations the tuner runs (they coarsen the chunk beyond it).
const SIM_STEPS: usize = 200_000;

/// A cost model: costs per transport, the cores that a host's ranks share, and the cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    /// Shared memory.
    pub shm: Costs,
    /// TCP.
    pub tcp: Costs,
    /// Cores per host (0: as many as ranks).
    pub cores: usize,
    /// Bytes of cache the ranks of a host share: a call whose working set (three buffers of
    /// the call's size per rank: input, output, slots or scratch) fits moves and reduces
    /// [`Model::cache_speedup`] times faster than β and γ say.
    pub cache: usize,
    /// How much faster in cache.
    pub cache_speedup: f64,
    /// The NICs each host's ranks spread over between hosts and their speed, from the cards
    /// (`nics` 0: unknown, a port per rank at the transport's speed). With them the model
    /// shares each NIC among the local ranks bound to it (`l mod nics`) and caps every port at
    /// the NIC's speed, which is what makes rail-aligned hierarchical schedules win.
    pub rails: crate::topo::Rails,
}

/// Effective cache of the development VM: its two cores have 2 MiB of L2 each (its L3 is
/// shared with other tenants). Fitted with [`SHM`] and [`TCP`] (held at 2 MiB while they were
/// refitted: earlier fits put it between 2 and 4 MiB).
pub(crate) const CACHE: usize = 2 << 20;

/// How much faster bytes move and reduce in cache than out of it, fitted with [`CACHE`] (held
/// at 1.5 in the last refit of [`SHM`] and [`TCP`]).
pub(crate) const CACHE_SPEEDUP: f64 = 1.5;

impl Default for Model {
    /// The measured defaults, with this host's core count.
    fn default() -> Model {
        Model {
            shm: SHM,
            tcp: TCP,
            cores: host_cores(),
            cache: CACHE,
            cache_speedup: CACHE_SPEEDUP,
            rails: crate::topo::Rails::default(),
        }
    }
}

/// The processors online on this host: the same for every process of the host whatever its
/// affinity, so every rank of a host models it alike.
pub(crate) fn host_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(crate::sys::cpus_online)
}

impl Model {
    /// The costs of a transport.
    pub fn costs(&self, t: Transport) -> Costs {
        match t {
            Transport::Shm => self.shm,
            Transport::Tcp => self.tcp,
        }
    }

    /// One host of `nranks` ranks joined by transport `t`, for calls of `bytes` bytes per rank,
    /// as the simulator models it: links of latency α (+ `wake` per rank beyond one per core)
    /// and bandwidth 1/β, `overhead` per message; reduction at 1/γ; local copies at 1/β (both
    /// [`Model::cache_speedup`] faster when the call fits in [`Model::cache`]); every send
    /// copied by its rank's thread; `CREDITS` credits; [`Model::cores`] cores shared by the
    /// ranks.
    pub fn network(&self, t: Transport, nranks: usize, bytes: usize) -> Network {
        let c = self.costs(t);
        let crowd = if self.cores > 0 {
            (nranks as f64 / self.cores as f64 - 1.0).max(0.0)
        } else {
            0.0
        };
        let fast = if nranks.saturating_mul(3).saturating_mul(bytes) <= self.cache {
            self.cache_speedup.max(1.0)
        } else {
            1.0
        };
        let link = Link {
            lat: c.alpha + c.wake * crowd,
            bw: fast / c.beta,
            overhead: c.overhead,
        };
        Network {
            ranks_per_host: nranks.max(1),
            copy_bw: fast / c.beta,
            credits: CREDITS,
            cores_per_host: self.cores,
            host_driven: true,
            ..Network::flat(link, fast / c.gamma)
        }
    }

    /// [`Model::network`] for `nranks` ranks on hosts of `per_host` ranks: links inside a host
    /// are shared memory, links between hosts transport `t` (TCP); each rank has its own port
    /// between hosts, or with known [`Model::rails`] shares its host's NIC `l mod nics` capped
    /// at the NIC's speed. With `per_host ≥ nranks`, [`Model::network`].
    pub fn network_on(
        &self,
        t: Transport,
        nranks: usize,
        per_host: usize,
        bytes: usize,
    ) -> Network {
        if per_host >= nranks {
            return self.network(t, nranks, bytes);
        }
        let host = self.network(Transport::Shm, per_host.max(1), bytes);
        let c = self.costs(t);
        // Known rails: local rank l sends on NIC l mod nics, each at most the NIC's speed.
        let (nics_per_host, nic_bw) = match self.rails {
            r if r.nics == 0 => (0, f64::INFINITY),
            r => (
                r.nics.min(per_host.max(1)),
                r.mbps.map_or(f64::INFINITY, |m| m as f64 * 1e6 / 8.0),
            ),
        };
        Network {
            ranks_per_host: per_host.max(1),
            inter: Link {
                lat: c.alpha + host.intra.lat - self.shm.alpha,
                bw: (host.copy_bw * self.shm.beta / c.beta).min(nic_bw),
                overhead: c.overhead,
            },
            nics_per_host,
            ..host
        }
    }

    /// The per-call share of the link setup `algo` needs for `coll` over `nranks` ranks on
    /// hosts of `per_host` ranks (peers inside a host over shm, the others over `t`; one host:
    /// every link over `t`): its [`fanout`] in links, each [`Costs::setup`], spread over
    /// [`SETUP_CALLS`] calls.
    pub fn setup_charge(
        &self,
        t: Transport,
        coll: Collective,
        algo: Algorithm,
        nranks: usize,
        per_host: usize,
    ) -> f64 {
        let peers = fanout(coll, algo, nranks, per_host).min(nranks.saturating_sub(1));
        let per_host = per_host.clamp(1, nranks.max(1));
        let (local, remote) = if per_host >= nranks {
            (0, peers)
        } else {
            let l = peers.min(per_host - 1);
            (l, peers - l)
        };
        (local as f64 * self.shm.setup + remote as f64 * self.costs(t).setup) / SETUP_CALLS
    }

    /// A stable key for caches: the bits of every number.
    fn key(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for c in [self.shm, self.tcp] {
            for v in [c.alpha, c.beta, c.gamma, c.overhead, c.wake, c.setup] {
                h = (h ^ v.to_bits()).wrapping_mul(0x0100_0000_01b3);
            }
        }
        for v in [
            self.cores as u64,
            self.cache as u64,
            self.cache_speedup.to_bits(),
            self.rails.nics as u64,
            self.rails.mbps.unwrap_or(0),
        ] {
            h = (h ^ v).wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

/// nccl-tests' size of a call whose rank block is `block` bytes (see [`sim::shape`]).
fn call_size(coll: Collective, nranks: usize, block: usize) -> usize {
    match coll {
        Collective::AllGather
        | Collective::ReduceScatter
        | Collective::AllToAll
        | Collective::Gather
        | Collective::Scatter => block.saturating_mul(nranks),
        _ => block,
    }
}

/// Predicted seconds for `algo` doing `coll` over `nranks` ranks with `block` bytes per rank
/// block (the all-reduce buffer; one rank's block of an all-gather) and `chunk` bytes per
/// message, on `net`: the simulator up to `SIM_MAX_RANKS` ranks, `formula` beyond.
pub fn cost(
    coll: Collective,
    algo: Algorithm,
    nranks: usize,
    block: usize,
    chunk: usize,
    net: &Network,
) -> f64 {
    if nranks > SIM_MAX_RANKS || !sim::supported(coll) {
        return formula(coll, algo, nranks, block, chunk, net);
    }
    let capped = block.min(SIM_CAP);
    let o = sim::Options {
        chunk_bytes: chunk.max(sim::ELEM),
        max_steps: SIM_STEPS,
        ..sim::Options::default()
    };
    let size = call_size(coll, nranks, capped);
    match sim::simulate(coll, algo, nranks, size, net, &o) {
        Ok(r) => r.time * (block.max(1) as f64 / capped.max(1) as f64).max(1.0),
        Err(_) => f64::INFINITY,
    }
}

/// Beyond this many ranks the tuner never picks an algorithm that has a rank talk to every
/// other (the direct all-reduce, the linear gather and scatter): each rank (the root) would
/// open `n − 1` links (descriptors, threads, link setup on first use) and send `n − 1`
/// messages per call. Every algorithm it may pick has a rank talk to O(log n) peers plus its
/// own host's ranks ([`fanout`]). (Below it, [`Model::setup_charge`] makes them pay for their
/// links.)
pub(crate) const DIRECT_MAX_RANKS: usize = 32;

/// The most peers one rank of `algo` talks to, as a bound: what `DIRECT_MAX_RANKS` keeps
/// small. `per_host` ranks per host. (The same for every collective an algorithm serves.)
pub fn fanout(_coll: Collective, algo: Algorithm, nranks: usize, per_host: usize) -> usize {
    let n = nranks.max(1);
    let local = per_host.clamp(1, n);
    let lg = (usize::BITS - (n - 1).leading_zeros()) as usize;
    match algo {
        Algorithm::Direct | Algorithm::Pairwise | Algorithm::Linear | Algorithm::Ordered => n - 1,
        Algorithm::Ring | Algorithm::Chain => 2,
        Algorithm::Tree => 3 + lg,
        Algorithm::Rhd | Algorithm::Bruck | Algorithm::Dissemination | Algorithm::Doubling => {
            2 * lg + 1
        }
        Algorithm::Hier | Algorithm::HierTree | Algorithm::HierRhd | Algorithm::HierMul => {
            local - 1 + 2 * lg + 3
        }
    }
}

/// Whether [`pick`] considers `algo` for `coll` over `nranks` ranks, `per_host` per host:
/// never `Ordered` (OXCCL_DETERMINISTIC's, not a speed pick); the hierarchical ones only across
/// hosts of several ranks (on one host they are the ring; with one rank per host, the flat
/// algorithm); the direct all-reduce and the linear gather / scatter only up to
/// [`DIRECT_MAX_RANKS`].
pub(crate) fn candidate(coll: Collective, algo: Algorithm, nranks: usize, per_host: usize) -> bool {
    let rph = per_host.clamp(1, nranks.max(1));
    match algo {
        Algorithm::Ordered => false,
        Algorithm::Direct => nranks <= DIRECT_MAX_RANKS,
        Algorithm::Linear if coll.algorithms().len() > 1 => nranks <= DIRECT_MAX_RANKS,
        a if a.is_hier() => rph > 1 && rph < nranks && coll.algorithms().contains(&a),
        _ => true,
    }
}

/// The cheapest algorithm for `coll` on `net` among the `candidate`s (ties go to the earlier
/// in [`Collective::algorithms`]), by [`cost`] alone (no link setup: `pick_charged`).
pub fn pick(
    coll: Collective,
    nranks: usize,
    block: usize,
    chunk: usize,
    net: &Network,
) -> Algorithm {
    pick_charged(coll, nranks, block, chunk, net, |_| 0.0)
}

/// [`pick`] with `charge(algo)` seconds added to each candidate's [`cost`] (the communicator's
/// choice adds [`Model::setup_charge`]). A sole candidate is not costed.
pub(crate) fn pick_charged(
    coll: Collective,
    nranks: usize,
    block: usize,
    chunk: usize,
    net: &Network,
    charge: impl Fn(Algorithm) -> f64,
) -> Algorithm {
    let algos = coll.algorithms();
    if algos.len() == 1 || nranks <= 1 {
        return algos[0];
    }
    let cands: Vec<Algorithm> = algos
        .iter()
        .copied()
        .filter(|&a| candidate(coll, a, nranks, net.ranks_per_host))
        .collect();
    if let [only] = cands[..] {
        return only;
    }
    let mut best = (f64::INFINITY, cands.first().copied().unwrap_or(algos[0]));
    for a in cands {
        let t = cost(coll, a, nranks, block, chunk, net) + charge(a);
        if t < best.0 {
            best = (t, a);
        }
    }
    best.1
}

/// `bytes` rounded down to 3 significant bits: the representative of its size bucket.
pub(crate) fn bucket(bytes: usize) -> usize {
    if bytes < 8 {
        return bytes;
    }
    let shift = usize::BITS - 3 - bytes.leading_zeros();
    (bytes >> shift) << shift
}

type Key = (Collective, usize, usize, usize, usize, Transport, u64);

fn cache() -> &'static Mutex<HashMap<Key, Algorithm>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Algorithm>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The algorithm for a call with `bytes` bytes per rank block over `nranks` ranks joined by
/// `transport`, under `model`: the cheapest, cached per size bucket.
pub fn choose_with(
    shape: &Shape,
    bytes: usize,
    nranks: usize,
    transport: Transport,
    model: &Model,
) -> Algorithm {
    choose_on(shape, bytes, nranks, nranks, transport, model)
}

/// [`choose_with`] for ranks on hosts of `per_host` ranks (the most any host has): shared memory
/// inside a host, `transport` between hosts ([`Model::network_on`]); the hierarchical
/// algorithms are candidates there.
pub(crate) fn choose_on(
    shape: &Shape,
    bytes: usize,
    nranks: usize,
    per_host: usize,
    transport: Transport,
    model: &Model,
) -> Algorithm {
    let per_host = per_host.clamp(1, nranks.max(1));
    let coll = shape.coll;
    let algos = coll.algorithms();
    if algos.len() == 1 || nranks <= 1 {
        return algos[0];
    }
    let es = bytes.checked_div(shape.count).unwrap_or(1).max(1);
    let chunk = shape.chunk.saturating_mul(es);
    let b = bucket(bytes);
    let key = (coll, nranks, per_host, b, chunk, transport, model.key());
    // Held while computing: the ranks of a threads-as-ranks job all miss at once, and one of them
    // computing the answer (milliseconds) is better than all of them computing it on shared cores.
    let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&a) = c.get(&key) {
        return a;
    }
    let net = model.network_on(transport, nranks, per_host, b);
    let a = pick_charged(coll, nranks, b, chunk, &net, |a| {
        model.setup_charge(transport, coll, a, nranks, per_host)
    });
    if c.len() > 1 << 14 {
        c.clear();
    }
    c.insert(key, a);
    a
}

/// The choice for a caller without a communicator at hand: [`choose_with`] for one host over
/// shm with the default model. (A communicator's calls use its own placement and model; tools
/// that have one ask `Communicator::algorithm_for`.)
pub fn choose(shape: &Shape, bytes: usize, nranks: usize) -> Algorithm {
    choose_with(shape, bytes, nranks, Transport::Shm, &Model::default())
}

/// The chunk (largest message) for a call: the tuner does not vary it yet, so this is the
/// configured one, `Config::chunk_bytes` or its default.
pub fn chunk(configured: Option<usize>) -> usize {
    configured.unwrap_or(crate::algo::DEFAULT_CHUNK)
}

/// The model a communicator measured (`OXCCL_TUNE=1`, see `Communicator::measure_model`):
/// `alpha` is half the round trip of an 8-byte message, `beta` seconds per byte of a large
/// one, `gamma` seconds per byte reduced; `nranks` the communicator's size. The defaults with
/// both transports' α, β and γ replaced by the measured ones (a communicator uses one
/// transport); `overhead`, `wake` and the cache stay the defaults, and the measured γ is the
/// reduction alone (the defaults' TCP γ also carries the receiver's copy out of the socket).
pub(crate) fn measured(alpha: f64, beta: f64, gamma: f64, nranks: usize) -> Model {
    let mut m = Model::default();
    if nranks > 1 {
        for c in [&mut m.shm, &mut m.tcp] {
            // A one-way message costs α plus the overhead on each side (the model's terms).
            c.alpha = (alpha - 2.0 * c.overhead).max(0.1e-6);
            c.beta = beta;
            c.gamma = gamma;
        }
    } else {
        m.shm.gamma = gamma;
        m.tcp.gamma = gamma;
    }
    m
}

/// Seconds per byte of a 4 MiB f32 sum on this core (best of 3).
pub(crate) fn time_reduce() -> f64 {
    let len = 4 << 20;
    let mut dst = vec![0u8; len];
    let src = vec![0u8; len];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        crate::reduce::reduce_bytes(DataType::F32, ReduceOp::Sum, &mut dst, &src);
        best = best.min(t.elapsed().as_secs_f64());
    }
    best / len as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_three_bits() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(7), 7);
        assert_eq!(bucket(8), 8);
        assert_eq!(bucket(15), 14);
        assert_eq!(bucket(1 << 20), 1 << 20);
        assert_eq!(bucket((1 << 20) + 12345), 1 << 20);
        assert_eq!(bucket((7 << 20) + 1), 7 << 20);
    }

    #[test]
    fn single_algorithm_collectives_need_no_model() {
        let s = Shape::new(Collective::AllToAll, 4, 0, 100, false, 1024);
        assert_eq!(choose(&s, 400, 4), Algorithm::Pairwise);
    }

    /// The choice on 4 hosts x 2 ranks over TCP, 16 MiB, rails `rails`, and 2 cores per host
    /// as on the namespace bench (the cores are 0 across hosts: every host may differ).
    fn pick_4x2(rails: crate::topo::Rails, bytes: usize) -> Algorithm {
        let m = Model {
            cores: 0,
            rails,
            ..Model::default()
        };
        let s = Shape::new(Collective::AllReduce, 8, 0, bytes / 4, false, 128 << 10);
        choose_on(&s, bytes, 8, 2, Transport::Tcp, &m)
    }

    #[test]
    fn gather_and_scatter_take_the_tree_beyond_the_direct_cap() {
        // Beyond DIRECT_MAX_RANKS the root of a linear gather / scatter would link to every
        // rank: the tree is the only candidate, on one host or many, small or large.
        for coll in [Collective::Gather, Collective::Scatter] {
            for n in [DIRECT_MAX_RANKS + 1, 64, 1024, 16384] {
                for (per_host, t) in [(n, Transport::Shm), (8, Transport::Tcp)] {
                    for bytes in [8, 64 << 10] {
                        let s = Shape::new(coll, n, 0, bytes / 4, false, 128 << 10);
                        let m = Model::default();
                        let a = choose_on(&s, bytes, n, per_host, t, &m);
                        assert_eq!(
                            a,
                            Algorithm::Tree,
                            "{coll:?} {n} ranks {per_host}/host {bytes} B"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn small_gathers_and_scatters_take_the_tree_over_tcp() {
        // 16 ranks over TCP, 8 B: the linear root's 15 messages in a row (and its 15
        // connections) cost more than the tree's 4 hops (about 126 µs against 65 µs modelled).
        for coll in [Collective::Gather, Collective::Scatter] {
            let s = Shape::new(coll, 16, 0, 2, false, 128 << 10);
            let m = Model {
                cores: 0,
                ..Model::default()
            };
            let a = choose_on(&s, 8, 16, 16, Transport::Tcp, &m);
            assert_eq!(a, Algorithm::Tree, "{coll:?}");
        }
    }

    #[test]
    fn direct_pays_for_a_link_to_every_rank() {
        let m = Model::default();
        let c = |algo, n, per_host, t| m.setup_charge(t, Collective::AllReduce, algo, n, per_host);
        // One host over TCP: n - 1 connections, each TCP's setup.
        for n in [2usize, 8, 32] {
            let want = (n - 1) as f64 * TCP.setup / SETUP_CALLS;
            let got = c(Algorithm::Direct, n, n, Transport::Tcp);
            assert!((got - want).abs() < 1e-12, "{n}: {got} vs {want}");
        }
        // Grows linearly with n; the ring's and the tree's stay bounded by their fanout.
        let d32 = c(Algorithm::Direct, 32, 32, Transport::Tcp);
        assert!(d32 > 10.0 * c(Algorithm::Ring, 32, 32, Transport::Tcp));
        assert!(d32 > 3.0 * c(Algorithm::Tree, 32, 32, Transport::Tcp));
        // Across hosts of 8: 7 peers over shm (about nothing), the other 24 over TCP.
        let want = (7.0 * SHM.setup + 24.0 * TCP.setup) / SETUP_CALLS;
        assert!((c(Algorithm::Direct, 32, 8, Transport::Tcp) - want).abs() < 1e-12);
        // Over shm the charge is small beside TCP's.
        assert!(c(Algorithm::Direct, 32, 32, Transport::Shm) < d32 / 10.0);
    }

    #[test]
    fn direct_is_not_free_at_the_cap() {
        // 32 ranks over shm with a core each (cores 0), 8 B: the replay has direct at one
        // latency whatever n (0.5 µs); its 31 links (3.1 µs a call) make another algorithm the
        // choice.
        let m = Model {
            cores: 0,
            ..Model::default()
        };
        let s = Shape::new(Collective::AllReduce, 32, 0, 2, false, 128 << 10);
        let a = choose_on(&s, 8, 32, 32, Transport::Shm, &m);
        assert_ne!(a, Algorithm::Direct);
    }

    #[test]
    fn known_rails_make_hierarchical_the_pick_at_large_sizes() {
        use crate::topo::Rails;
        let two = Rails {
            nics: 2,
            mbps: Some(1000),
        };
        for bytes in [4 << 20, 16 << 20] {
            let a = pick_4x2(two, bytes);
            assert!(a.is_hier(), "2 rails of 1 Gbit/s, {bytes} B: {a:?}");
        }
        // Unknown rails: a port per rank at loopback speed, where the flat ring is as good.
        let flat = pick_4x2(Rails::default(), 16 << 20);
        assert!(!flat.is_hier(), "unknown rails, 16 MiB: {flat:?}");
        // Small calls stay latency-bound: a hierarchical Program's extra intra-host hops do not
        // pay for themselves there.
        let tiny = pick_4x2(two, 8);
        assert!(
            !tiny.is_hier() || tiny == Algorithm::HierMul,
            "8 B: {tiny:?}"
        );
    }
}
