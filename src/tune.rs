//! Algorithm selection: an α-β-γ cost model per transport, evaluated on the real Programs.
//!
//! # The model
//!
//! Per transport ([`Transport`]): α, seconds of latency per message; β, seconds per byte moved
//! over a link; γ, seconds per byte reduced ([`Costs`]). Plus the cores the ranks of a host
//! share ([`Model::cores`]): on a host with fewer cores than ranks, every byte a rank moves or
//! reduces waits for a core, which is what makes the direct all-reduce's `n - 1` copies lose to
//! the ring's two well before the latency terms say so.
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
//! [`SHM`] and [`TCP`] were measured on the development VM (2 vCPUs, 32 MiB L3) with
//! `target/release/oxccl-perf -N 2 --transport T -a ALGO -b 8 -e 64M -f 4 -c 0 -n 5 -w 2`
//! (see each constant), then adjusted with `benches/validate_tuner.sh` so that the choice is
//! within 10% of the fastest measured all-reduce algorithm for 2, 4 and 8 ranks. With
//! `OXCCL_TUNE=1`, [`measure`] re-measures them at init (a few ping-pongs and a local
//! reduction, a few milliseconds) and [`install`] makes them the communicator's model.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::Communicator;
use crate::algo::{Algorithm, Collective, Shape};
use crate::error::Result;
use crate::reduce::{DataType, ReduceOp};
use crate::sim::{self, Link, Network};

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
}

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

/// Shared memory on the development VM.
///
/// α: 8-byte all-reduce, 2 ranks: direct (one message each way) 1.4 µs, ring and halving-
/// doubling (two dependent exchanges) 8.2 µs, so about 4 µs per dependent message once a
/// waiting rank has had to yield; β: 2 ranks, 32 KiB direct all-reduce 5.8 µs; 2 MiB ring
/// 1.3–1.6 ms (each rank moves 1 MiB): 1.5 GB/s once the data leaves the L2; γ: the AVX2 sum
/// out of cache.
pub const SHM: Costs = Costs {
    alpha: 1.0e-6,
    beta: 1.0 / 4.3e9,
    gamma: 1.0 / 4.3e9,
    overhead: 0.3e-6,
    wake: 3.5e-6,
};

/// TCP over loopback on the development VM.
///
/// α: 8-byte all-reduce, 2 ranks: direct 5.8 µs, tree 10 µs; β: 2 MiB ring 1.2–1.7 ms,
/// 32 MiB 50–66 ms (0.5–0.7 GB/s: the kernel copies every byte twice); γ as for shm.
pub const TCP: Costs = Costs {
    alpha: 5.0e-6,
    beta: 1.0 / 2.0e9,
    gamma: 1.0 / 4.3e9,
    overhead: 2.0e-6,
    wake: 10.0e-6,
};

/// Messages a link holds in flight (the executor's slots per ring: `transport::shm` and the
/// TCP link both default to 4).
pub const CREDITS: usize = 4;

/// Sizes above this cost their cost at this size, scaled (see the module docs).
pub const SIM_CAP: usize = 64 << 20;

/// Beyond this many ranks, [`formula`] stands in for the simulator.
pub const SIM_MAX_RANKS: usize = 64;

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
}

/// Effective cache of the development VM (2 MiB of L2 per core; the L3 is shared with the other
/// tenants): where the measured bandwidth falls off.
pub const CACHE: usize = 4 << 20;

/// How much faster bytes move and reduce in cache than out of it, measured on the development
/// VM (2 ranks: 2.5 µs per 8 KiB moved and reduced in cache, against 3.2 ms per 8 MiB out).
pub const CACHE_SPEEDUP: f64 = 3.0;

impl Default for Model {
    /// The measured defaults, with this host's core count.
    fn default() -> Model {
        Model {
            shm: SHM,
            tcp: TCP,
            cores: host_cores(),
            cache: CACHE,
            cache_speedup: CACHE_SPEEDUP,
        }
    }
}

/// The processors online on this host: the same for every process of the host whatever its
/// affinity, so every rank of a host models it alike.
pub fn host_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        // SAFETY: sysconf only reads a system parameter.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if n > 0 { n as usize } else { 1 }
    })
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
    /// copied by its rank's thread; [`CREDITS`] credits; [`Model::cores`] cores shared by the
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

    /// A stable key for caches: the bits of every number.
    fn key(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for c in [self.shm, self.tcp] {
            for v in [c.alpha, c.beta, c.gamma, c.overhead, c.wake] {
                h = (h ^ v.to_bits()).wrapping_mul(0x0100_0000_01b3);
            }
        }
        for v in [
            self.cores as u64,
            self.cache as u64,
            self.cache_speedup.to_bits(),
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
/// message, on `net`: the simulator up to [`SIM_MAX_RANKS`] ranks, [`formula`] beyond.
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
/// | tree | Σ over the d levels of 2(α_ℓ + min(c, s/2)·β_ℓ) + (1 + d)·s·β_max + s·γ |
///
/// The tree's bandwidth term is not the textbook 2s·β: in its Programs (one rank sends to a peer
/// in program order) the down-phase send of slice j queues before the up-phase send of slice
/// j + 1 on the same link, so the two trees' pipelines stall on each other and every level adds
/// about s·β. The simulator shows it (`tests/sim.rs` checks these formulas against it).
///
/// Broadcast / reduce: chain (n−1)·(α + c·β) + s·β (+ s·γ); binomial tree ⌈log n⌉·(α + s·β).
/// All-gather / reduce-scatter: ring (n−1)·(α + s·β (+ s·γ)); Bruck ⌈log n⌉·α + (n−1)·s·β
/// (+ γ). Others (one algorithm): (n−1)·(α + s·β), barrier ⌈log n⌉·α; these use the slowest
/// class throughout.
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
        (C::AllReduce, A::Tree) => {
            let d = n.log2().floor() as u32;
            let slice = c.min(s / 2.0);
            let fill: f64 = (1..=d)
                .map(|l| {
                    let (a, b) = at(1 << (l - 1), false);
                    2.0 * (a + slice * b)
                })
                .sum();
            fill + (1.0 + f64::from(d)) * s * beta + s * gamma
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
        (C::AllToAll, _) => (n - 1.0) * (alpha + s * beta * crowd),
        (C::Barrier, _) => lg * alpha,
        _ => (n - 1.0) * (alpha + s * beta),
    }
}

/// The cheapest algorithm for `coll` on `net` (ties go to the earlier in
/// [`Collective::algorithms`]; `Ordered` is never picked).
pub fn pick(
    coll: Collective,
    nranks: usize,
    block: usize,
    chunk: usize,
    net: &Network,
) -> Algorithm {
    let algos = coll.algorithms();
    if algos.len() == 1 || nranks <= 1 {
        return algos[0];
    }
    let mut best = (f64::INFINITY, algos[0]);
    // The ordered algorithms are for OXCCL_DETERMINISTIC, never a speed pick.
    for &a in algos.iter().filter(|&&a| a != Algorithm::Ordered) {
        let t = cost(coll, a, nranks, block, chunk, net);
        if t < best.0 {
            best = (t, a);
        }
    }
    best.1
}

/// `bytes` rounded down to 3 significant bits: the representative of its size bucket.
pub fn bucket(bytes: usize) -> usize {
    if bytes < 8 {
        return bytes;
    }
    let shift = usize::BITS - 3 - bytes.leading_zeros();
    (bytes >> shift) << shift
}

type Key = (Collective, usize, usize, usize, Transport, u64);

fn cache() -> &'static Mutex<HashMap<Key, Algorithm>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Algorithm>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn installed() -> &'static Mutex<HashMap<u64, Model>> {
    static MODELS: OnceLock<Mutex<HashMap<u64, Model>>> = OnceLock::new();
    MODELS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The transport a communicator's calls are modelled on and whether all its ranks share one
/// host, computed once per communicator id by `f` (every rank computes the same from the
/// cards all ranks share).
pub fn placement(comm_id: u64, f: impl FnOnce() -> (Transport, bool)) -> (Transport, bool) {
    static PLACES: OnceLock<Mutex<HashMap<u64, (Transport, bool)>>> = OnceLock::new();
    let places = PLACES.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(&p) = places
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&comm_id)
    {
        return p;
    }
    let p = f();
    let mut m = places.lock().unwrap_or_else(|e| e.into_inner());
    if m.len() > 1024 {
        m.clear();
    }
    m.insert(comm_id, p);
    p
}

/// Makes `model` the model of the communicator whose id is `comm_id` (see [`measure`]).
pub fn install(comm_id: u64, model: Model) {
    let mut m = installed().lock().unwrap_or_else(|e| e.into_inner());
    if m.len() > 1024 {
        m.clear();
    }
    m.insert(comm_id, model);
}

/// The model of communicator `comm_id`: the installed one, else the defaults.
pub fn model_for(comm_id: u64) -> Model {
    let m = installed().lock().unwrap_or_else(|e| e.into_inner());
    m.get(&comm_id).copied().unwrap_or_default()
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
    let coll = shape.coll;
    let algos = coll.algorithms();
    if algos.len() == 1 || nranks <= 1 {
        return algos[0];
    }
    let es = bytes.checked_div(shape.count).unwrap_or(1).max(1);
    let chunk = shape.chunk.saturating_mul(es);
    let b = bucket(bytes);
    let key = (coll, nranks, b, chunk, transport, model.key());
    if let Some(&a) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return a;
    }
    let net = model.network(transport, nranks, b);
    let a = pick(coll, nranks, b, chunk, &net);
    let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
    if c.len() > 1 << 14 {
        c.clear();
    }
    c.insert(key, a);
    a
}

/// [`choose_with`] on the default model over shared memory.
pub fn choose(shape: &Shape, bytes: usize, nranks: usize) -> Algorithm {
    choose_with(shape, bytes, nranks, Transport::Shm, &Model::default())
}

/// The chunk (largest message) for a call: the tuner does not vary it yet, so this is the
/// configured one, `Config::chunk_bytes` or its default.
pub fn chunk(configured: Option<usize>) -> usize {
    configured.unwrap_or(crate::comm::DEFAULT_CHUNK)
}

/// Measures this communicator's links and this host's reduction (`OXCCL_TUNE=1`): every rank
/// must call it, together, as a collective.
///
/// Rank 0 and rank 1 ping-pong 8-byte messages (α = half the round trip) and 1 MiB messages
/// (β from the rest of the round trip); every rank times a 4 MiB f32 sum (γ); rank 0 broadcasts
/// its three numbers so that every rank installs the same model. A few milliseconds.
/// Returns the model with both transports' costs replaced by the measured ones (a communicator
/// uses one transport).
pub fn measure(comm: &Communicator) -> Result<Model> {
    let (rank, n) = (comm.rank(), comm.size());
    let mut vals = [0f64; 3];
    if rank == 0 {
        vals[2] = time_reduce();
    }
    if n > 1 && rank < 2 {
        let peer = 1 - rank;
        let small = [0u8; 8];
        let mut small_in = [0u8; 8];
        let big = vec![0u8; 1 << 20];
        let mut big_in = vec![0u8; 1 << 20];
        let ping = |out: &[u8], inp: &mut [u8], reps: usize| -> Result<f64> {
            let mut best = f64::INFINITY;
            for _ in 0..reps {
                let t = Instant::now();
                if rank == 0 {
                    comm.send(out, peer, 0)?;
                    comm.recv(inp, peer, 0)?;
                } else {
                    comm.recv(inp, peer, 0)?;
                    comm.send(out, peer, 0)?;
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(best / 2.0)
        };
        ping(&small, &mut small_in, 3)?;
        let alpha = ping(&small, &mut small_in, 20)?;
        let one_way = ping(&big, &mut big_in, 4)?;
        vals[0] = alpha;
        vals[1] = ((one_way - alpha) / big.len() as f64).max(1e-12);
    }
    comm.broadcast(&mut vals, 0)?;
    let mut m = Model::default();
    if n > 1 {
        for c in [&mut m.shm, &mut m.tcp] {
            c.alpha = vals[0];
            c.beta = vals[1];
            c.gamma = vals[2];
        }
    } else {
        m.shm.gamma = vals[2];
        m.tcp.gamma = vals[2];
    }
    Ok(m)
}

/// What `Communicator::init` should run last, on every rank, once its links are up: with
/// `OXCCL_TUNE=1`, [`measure`] then [`install`] under the communicator's id; otherwise nothing.
/// Every rank installs the same numbers (rank 0's), before any call of its own can consult them.
pub fn on_init(comm: &Communicator, comm_id: u64) -> Result<()> {
    if std::env::var("OXCCL_TUNE").is_ok_and(|v| v.trim() == "1") {
        let t = Instant::now();
        let m = measure(comm)?;
        crate::info!(
            Some(comm.rank()),
            "OXCCL_TUNE: alpha {:.2} us, 1/beta {:.2} GB/s, 1/gamma {:.2} GB/s ({:.1} ms)",
            m.shm.alpha * 1e6,
            1e-9 / m.shm.beta,
            1e-9 / m.shm.gamma,
            t.elapsed().as_secs_f64() * 1e3
        );
        install(comm_id, m);
    }
    Ok(())
}

/// Seconds per byte of a 4 MiB f32 sum on this core (best of 3).
fn time_reduce() -> f64 {
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
}
