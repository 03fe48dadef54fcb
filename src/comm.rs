//! The communicator: the Rust API every user (and the C ABI) goes through.
//!
//! `init` meets the other ranks at the root's store, agrees on a communicator id and exchanges
//! cards (address, host, pid) over a tree of the ranks (`bootstrap::exchange`: two store
//! requests per rank); links to peers are connected lazily, the first time a Program
//! needs them (lower rank dials). Each collective picks an algorithm (or honours OXCCL_ALGO),
//! builds — or reuses — this rank's Program, and hands it to the executor. After any failure the
//! communicator is revoked: later calls return the same error instead of hanging.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::algo::{Algorithm, Collective, Shape};
use crate::bootstrap::{self, StoreClient, StoreServer, UniqueId};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::connect::{self, PeerListener};
use crate::transport::links::{self, Endpoints};

mod api;
mod liveness;
mod manage;
mod nonblocking;
mod topology;
mod tuning;
use crate::transport::Link;
pub use crate::transport::TransportKind;
pub use api::Call;
pub use manage::NO_COLOR;
pub use nonblocking::{Request, Scope};

/// Per-communicator settings. Fields left `None` are filled from the environment
/// (`OXCCL_TIMEOUT_MS`, `OXCCL_TRANSPORT`, `OXCCL_NSOCKS`, `OXCCL_ALGO`, `OXCCL_CHUNK_BYTES`),
/// then from defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Give up on any wait after this long without progress (default 300 s).
    pub timeout: Option<Duration>,
    /// Transport for links (default auto).
    pub transport: Option<TransportKind>,
    /// Sockets per TCP link (default 2).
    pub nsocks: Option<usize>,
    /// Force an algorithm: `ring` or `direct`, optionally per collective (`allreduce:ring`).
    pub algo: Option<String>,
    /// Largest message (pipelining grain) in bytes (default 512 KiB).
    pub chunk_bytes: Option<usize>,
    /// Bitwise-reproducible reductions: every element folded in rank order by one owner
    /// (the `ordered` algorithm), whatever the size (default false; OXCCL_DETERMINISTIC=1).
    pub deterministic: Option<bool>,
}

/// Default no-progress timeout.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default sockets per TCP link.
pub(crate) const DEFAULT_NSOCKS: usize = 2;
pub use crate::algo::DEFAULT_CHUNK;

fn env_parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map(Some).map_err(|_| {
            Error::invalid_argument(format!(
                "{name}={v:?} is not a whole number: give plain digits, with no unit or suffix \
                 (K, M, ms); unset it or fix it"
            ))
        }),
        _ => Ok(None),
    }
}

impl Config {
    /// A config with every field read from the environment (where set).
    pub fn from_env() -> Result<Config> {
        Config::default().with_env()
    }

    /// Fills the fields that are `None` from the environment.
    pub fn with_env(mut self) -> Result<Config> {
        if self.timeout.is_none() {
            self.timeout = env_parse::<u64>("OXCCL_TIMEOUT_MS")?.map(Duration::from_millis);
        }
        if self.transport.is_none() {
            if let Ok(v) = std::env::var("OXCCL_TRANSPORT") {
                self.transport = Some(TransportKind::parse(&v).ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "OXCCL_TRANSPORT={v:?}: expected auto, tcp, shm or rdma"
                    ))
                })?);
            }
        }
        if self.nsocks.is_none() {
            self.nsocks = env_parse("OXCCL_NSOCKS")?;
        }
        if self.algo.is_none() {
            self.algo = std::env::var("OXCCL_ALGO")
                .ok()
                .filter(|s| !s.trim().is_empty());
        }
        if self.deterministic.is_none() {
            if let Ok(v) = std::env::var("OXCCL_DETERMINISTIC") {
                self.deterministic = Some(match v.trim() {
                    "1" | "true" | "yes" | "on" => true,
                    "0" | "false" | "no" | "off" | "" => false,
                    _ => {
                        return Err(Error::invalid_argument(format!(
                            "OXCCL_DETERMINISTIC={v:?}: expected 0 or 1"
                        )));
                    }
                });
            }
        }
        if self.chunk_bytes.is_none() {
            self.chunk_bytes = env_parse("OXCCL_CHUNK_BYTES")?;
        }
        Ok(self)
    }

    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The algorithm forced for `coll`, if any. Accepts `ring`, or `allreduce:ring,barrier:direct`.
    fn forced(&self, coll: Collective) -> Result<Option<Algorithm>> {
        let Some(spec) = &self.algo else {
            return Ok(None);
        };
        let key = coll.key();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (c, a) = match part.split_once(':') {
                Some((c, a)) => (Some(c.trim().replace('_', "").to_ascii_lowercase()), a),
                None => (None, part),
            };
            if c.as_deref().is_some_and(|c| c != key) {
                continue;
            }
            return Algorithm::parse(a).map(Some).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "OXCCL_ALGO / Config.algo {spec:?}: unknown algorithm {a:?} (ring, direct)"
                ))
            });
        }
        Ok(None)
    }

    fn validate(&self) -> Result<()> {
        if self.nsocks.is_some_and(|n| n == 0 || n > 64) {
            return Err(Error::invalid_argument(format!(
                "nsocks {:?} must be 1..=64",
                self.nsocks
            )));
        }
        if self
            .chunk_bytes
            .is_some_and(|c| !(64..=(64 << 20)).contains(&c))
        {
            return Err(Error::invalid_argument(format!(
                "chunk_bytes {:?} must be 64 B..=64 MiB",
                self.chunk_bytes
            )));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid_argument("timeout must be positive"));
        }
        self.forced(Collective::AllReduce)?;
        Ok(())
    }
}

/// One rank's card, published in the store at init: where to reach it, and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Card {
    addr: SocketAddr,
    host: String,
    pid: u32,
    /// The kernel's boot id (empty if unknown).
    boot: String,
    /// The network namespace (`net:[inode]`; empty if unknown): abstract sockets are per namespace.
    netns: String,
    /// The abstract Unix socket name of the rank's shm endpoint (empty: no shm).
    shm: String,
    /// Whether the rank offers RDMA (`-`, `a:<device>`, `f:<device>`: see transport::rdma).
    rdma: String,
    /// Its extra listening addresses (multi-path TCP; empty normally).
    paths: Vec<SocketAddr>,
    /// The NICs its host's ranks spread over and their speed (for the tuner).
    rails: crate::topo::Rails,
}

impl Card {
    fn encode(&self) -> Vec<u8> {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let paths: Vec<String> = self.paths.iter().map(|a| a.to_string()).collect();
        format!(
            "5 {} {} {} {} {} {} {} {} {}",
            self.addr,
            self.pid,
            dash(&self.boot),
            dash(&self.netns),
            dash(&self.shm),
            dash(&self.rdma),
            dash(&paths.join(",")),
            self.rails.encode(),
            self.host
        )
        .into_bytes()
    }

    fn decode(b: &[u8], rank: usize) -> Result<Card> {
        let bad = || Error::internal(format!("rank {rank} published an unreadable card"));
        let s = std::str::from_utf8(b).map_err(|_| bad())?;
        let mut it = s.splitn(10, ' ');
        if it.next() != Some("5") {
            return Err(bad());
        }
        let addr = it.next().and_then(|a| a.parse().ok()).ok_or_else(bad)?;
        let pid = it.next().and_then(|a| a.parse().ok()).ok_or_else(bad)?;
        let mut word = || -> Result<String> {
            let w = it.next().ok_or_else(bad)?;
            Ok(if w == "-" {
                String::new()
            } else {
                w.to_string()
            })
        };
        let (boot, netns, shm, rdma, paths) = (word()?, word()?, word()?, word()?, word()?);
        let paths = paths
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().map_err(|_| bad()))
            .collect::<Result<Vec<SocketAddr>>>()?;
        let rails = it
            .next()
            .and_then(crate::topo::Rails::decode)
            .ok_or_else(bad)?;
        let host = it.next().unwrap_or("").to_string();
        Ok(Card {
            addr,
            host,
            pid,
            boot,
            netns,
            shm,
            rdma,
            paths,
            rails,
        })
    }

    /// What link construction needs to know of rank `rank`, whose card this is, seen from the
    /// rank whose card is `me`.
    fn peer<'a>(&'a self, rank: usize, me: &Card) -> links::Peer<'a> {
        links::Peer {
            rank,
            addr: self.addr,
            host: &self.host,
            pid: self.pid,
            shm: &self.shm,
            rdma: &self.rdma,
            not_same_host: me.not_same_host(self),
        }
    }

    /// Why shared memory cannot work between the ranks of these cards, if it cannot.
    fn not_same_host(&self, other: &Card) -> Option<&'static str> {
        if self.shm.is_empty() || other.shm.is_empty() {
            Some("no shm endpoint")
        } else if self.boot.is_empty() || self.boot != other.boot || self.host != other.host {
            Some("another host")
        } else if self.netns.is_empty() || self.netns != other.netns {
            Some("another network namespace")
        } else {
            None
        }
    }
}

struct Inner {
    links: Vec<Option<Box<dyn Link>>>,
    /// Collectives issued so far (every message carries its call's number).
    seq: u64,
    /// Point-to-point messages sent to / received from each peer so far.
    p2p_sent: HashMap<usize, u64>,
    p2p_recvd: HashMap<usize, u64>,
    revoked: Option<Error>,
    scratch: Vec<u64>,
    programs: HashMap<(Algorithm, Shape), std::sync::Arc<api::Cached>>,
    /// The last few calls' Programs, looked up before `programs` (see `program_for`).
    recent: Vec<api::Recent>,
    /// The last few single calls, fully prepared (see `api::Memo`).
    memos: Vec<api::Memo>,
    logged: Vec<(Collective, Algorithm)>,
}

/// A group of ranks that run collectives together. `Send + Sync`; calls are serialised.
pub struct Communicator {
    rank: usize,
    nranks: usize,
    cfg: Config,
    comm_id: u64,
    secret: [u8; 16],
    cards: Vec<Card>,
    /// The host map and this host's NICs, from the cards (see `topology`).
    topo: crate::topo::Topology,
    /// This rank's listener, paths, shm and RDMA endpoints: where links come from.
    ends: Endpoints,
    inner: Mutex<Inner>,
    sched: nonblocking::Sched,
    worker: Mutex<Option<nonblocking::Worker>>,
    aborted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The error that revoked the communicator, readable without waiting for a running call.
    failure: std::sync::Arc<Mutex<Option<Error>>>,
    /// The liveness thread and its ring connections (see `liveness`).
    _live: liveness::Heartbeat,
    shrinks: std::sync::atomic::AtomicU64,
    /// The cost model (the defaults, or with `OXCCL_TUNE=1` what init measured: see `tuning`).
    model: std::sync::OnceLock<crate::tune::Model>,
    /// The transport calls are modelled on and whether all ranks share one host, computed on
    /// first use from the cards every rank holds (see `api::choose`).
    placement: std::sync::OnceLock<(crate::tune::Transport, bool)>,
    // Dropped last: rank 0 serves the store until everything else is closed.
    _server: Option<StoreServer>,
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // Detached calls hold an owner of the communicator, so none is queued now (unless this
        // runs on their worker, dropping the last owner): stop the worker thread.
        self.stop_worker();
    }
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.rank)
            .field("nranks", &self.nranks)
            .finish()
    }
}

/// The local address peers reach this rank on: the interface OXCCL_SOCKET_IFNAME names, or
/// else the one that routes to `root` (no packet is sent).
fn local_ip_towards(root: SocketAddr) -> Result<IpAddr> {
    if std::env::var("OXCCL_SOCKET_IFNAME").is_ok_and(|v| !v.trim().is_empty()) {
        return bootstrap::net::local_ipv4();
    }
    Ok(route_to(root))
}

fn route_to(root: SocketAddr) -> IpAddr {
    if root.ip().is_loopback() {
        return root.ip();
    }
    let any: SocketAddr = if root.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    UdpSocket::bind(any)
        .and_then(|s| s.connect(root).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(root.ip())
}

/// Each rank's local rank: its index among the ranks of its host (boot id, host name and
/// network namespace, as the cards say), in rank order.
fn local_ranks(cards: &[Card]) -> Vec<usize> {
    let mut seen: HashMap<(&str, &str, &str), usize> = HashMap::new();
    cards
        .iter()
        .map(|c| {
            let k = seen
                .entry((c.boot.as_str(), c.host.as_str(), c.netns.as_str()))
                .or_insert(0);
            *k += 1;
            *k - 1
        })
        .collect()
}

/// The card exchange (see `bootstrap::exchange`): this rank publishes its card in the store
/// (peers use it to dial; so do tools), reads only its parent's, and gets every other card from
/// the ranks over the exchange tree. The store serves two requests per rank, whatever `nranks`.
#[allow(clippy::too_many_arguments)]
fn exchange_cards(
    store: &mut StoreClient,
    listener: &PeerListener,
    me: &Card,
    rank: usize,
    nranks: usize,
    secret: [u8; 16],
    comm_id: u64,
    deadline: Instant,
) -> Result<Vec<Card>> {
    let key = |r: usize| format!("comm/card/{r}");
    store.set(&key(rank), &me.encode())?;
    let store = std::cell::RefCell::new(store);
    let raw = bootstrap::exchange::all_gather(
        rank,
        nranks,
        me.encode(),
        deadline,
        |p| {
            let left = deadline.saturating_duration_since(Instant::now());
            let b = store.borrow_mut().get(&key(p), left).map_err(|e| match e {
                e if e.kind() == ErrorKind::Timeout => Error::timed_out(
                    Some(p),
                    format!(
                        "rank {rank}: rank {p} never joined ({}); did all {nranks} ranks start?",
                        e.message()
                    ),
                ),
                e => e,
            })?;
            let card = Card::decode(&b, p)?;
            connect::dial_control(
                card.addr,
                &secret,
                comm_id,
                rank,
                p,
                connect::BOOTSTRAP_CHAN,
                deadline,
            )
        },
        |c| listener.take_control(c, connect::BOOTSTRAP_CHAN, deadline),
        // Only on failure: which rank of a silent subtree never published its card.
        |range| {
            let mut st = store.borrow_mut();
            range
                .into_iter()
                .find(|&r| st.check(&[&key(r)]).is_ok_and(|present| !present))
        },
    )?;
    raw.iter()
        .enumerate()
        .map(|(r, b)| Card::decode(b, r))
        .collect()
}

impl Communicator {
    /// Joins communicator `id` as `rank` of `nranks`. Rank 0 serves the rendezvous store (on the
    /// listener `UniqueId::new` opened, when it is in this process).
    pub fn init(rank: usize, nranks: usize, id: &UniqueId, cfg: Config) -> Result<Communicator> {
        // Validate before taking rank 0's listener, so a rejected call leaves the id usable.
        if nranks == 0 || rank >= nranks {
            return Err(Error::invalid_argument(format!(
                "rank {rank} of {nranks}: need 0 <= rank < nranks"
            )));
        }
        cfg.clone().with_env()?.validate()?;
        let listener = if rank == 0 {
            Some(id.take_listener())
        } else {
            None
        };
        Self::init_at(rank, nranks, id.addr, id.secret, listener, cfg)
    }

    /// Joins the communicator the launcher's environment describes (OXCCL_*, torchrun, Slurm,
    /// Open MPI, PMI), with settings from the environment.
    pub fn from_env() -> Result<Communicator> {
        Self::from_env_with(Config::default())
    }

    /// Like [`Communicator::from_env`], with explicit settings.
    pub fn from_env_with(cfg: Config) -> Result<Communicator> {
        let info = bootstrap::env::discover()?.ok_or_else(|| {
            Error::invalid_usage(
                "no launcher environment found: set OXCCL_RANK, OXCCL_WORLD_SIZE and OXCCL_ROOT (or run under \
                 torchrun, srun or mpirun), or use Communicator::init with a UniqueId",
            )
        })?;
        let secret = match info.secret {
            Some(s) => s,
            None => {
                // Once per process: a job that makes many communicators is told once.
                static TOLD: std::sync::Once = std::sync::Once::new();
                TOLD.call_once(|| {
                    crate::warn!(
                        Some(info.rank),
                        "no secret: OXCCL_SECRET and OXCCL_SECRET_FILE are unset, so connections are not \
                         authenticated and any process that can reach {} can join; set OXCCL_SECRET to the \
                         same 32 hex digits on every rank (e.g. `head -c16 /dev/urandom | xxd -p`), or \
                         OXCCL_SECRET_FILE to a file holding them",
                        info.root
                    )
                });
                [0u8; 16]
            }
        };
        let serve = if info.rank == 0 && !info.root_external {
            Some(None)
        } else {
            None
        };
        Self::init_at(info.rank, info.world_size, info.root, secret, serve, cfg)
    }

    /// `serve`: `Some(listener)` on rank 0 when it serves the store (`Some(None)`: bind `root`).
    fn init_at(
        rank: usize,
        nranks: usize,
        root: SocketAddr,
        secret: [u8; 16],
        serve: Option<Option<TcpListener>>,
        cfg: Config,
    ) -> Result<Communicator> {
        if nranks == 0 || rank >= nranks {
            return Err(Error::invalid_argument(format!(
                "rank {rank} of {nranks}: need 0 <= rank < nranks"
            )));
        }
        if nranks > u32::MAX as usize / 2 {
            return Err(Error::invalid_argument(format!(
                "{nranks} ranks is too many"
            )));
        }
        let cfg = cfg.with_env()?;
        cfg.validate()?;
        let timeout = cfg.timeout();
        let deadline = Instant::now() + timeout;
        let server = match serve {
            Some(l) => {
                let l = match l {
                    Some(l) => l,
                    None => TcpListener::bind(root)
                        .map_err(|e| Error::io(format!("rank 0: serve the store on {root}"), e))?,
                };
                Some(StoreServer::start(l, secret)?)
            }
            None => None,
        };
        let mut store = StoreClient::connect(root, &secret, timeout).map_err(|e| match e {
            e if e.kind() == ErrorKind::Timeout => Error::timed_out(
                Some(0),
                format!(
                    "rank {rank}: cannot reach the store of rank 0 at {root}: {}",
                    e.message()
                ),
            ),
            e => e,
        })?;
        let comm_id = if rank == 0 {
            let id = crate::sys::random_u64();
            store.set("comm/id", &id.to_le_bytes())?;
            id
        } else {
            let b = store.get("comm/id", timeout)?;
            u64::from_le_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| Error::internal("bad comm id in store"))?,
            )
        };
        let mut ends = Endpoints::open(
            rank,
            nranks,
            secret,
            comm_id,
            local_ip_towards(root)?,
            cfg.transport.unwrap_or(TransportKind::Auto),
            timeout,
        )?;
        let listener = ends.listener();
        let me = Card {
            addr: listener.addr(),
            host: crate::sys::hostname(),
            pid: std::process::id(),
            boot: crate::sys::boot_id(),
            netns: crate::sys::shm::net_namespace(),
            shm: ends.shm_name(),
            rdma: ends.rdma_word(),
            paths: ends.extra_addrs(),
            rails: crate::topo::Rails::for_card(ends.listener().addr(), &ends.extra_addrs()),
        };
        let cards = match exchange_cards(
            &mut store, listener, &me, rank, nranks, secret, comm_id, deadline,
        ) {
            Ok(cards) => cards,
            Err(e) => {
                if e.kind() == ErrorKind::Timeout && server.is_some() {
                    // The others give up at about the same moment (by their own clocks) and
                    // then ask the store which rank never published its card; gone, it would
                    // leave them naming a live neighbour instead. Serve a while longer.
                    let until = deadline + bootstrap::exchange::NEWS_GRACE;
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                }
                return Err(e);
            }
        };
        ends.learn_paths(
            cards.iter().map(|c| c.paths.clone()).collect(),
            local_ranks(&cards),
        );
        let listener = ends.listener();
        if let Some((k, addr)) = ends.my_rail() {
            crate::info!(
                Some(rank),
                "rails (OXCCL_SOCKET_BIND=rail): local rank {} takes interface {k} of OXCCL_SOCKET_IFNAME, {addr}",
                local_ranks(&cards)[rank]
            );
        }
        crate::info!(
            Some(rank),
            "init rank {rank} of {nranks}: transport {}, {} sockets per peer, {} KiB chunks, timeout {} ms, store {root}, listening on {}",
            cfg.transport.unwrap_or(TransportKind::Auto).name(),
            cfg.nsocks.unwrap_or(DEFAULT_NSOCKS),
            cfg.chunk_bytes.unwrap_or(DEFAULT_CHUNK) >> 10,
            timeout.as_millis(),
            listener.addr()
        );
        let mut links = Vec::with_capacity(nranks);
        links.resize_with(nranks, || None);
        let aborted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failure = std::sync::Arc::new(Mutex::new(None));
        // Liveness is peer to peer from here on (see `liveness`): the store is not needed again.
        drop(store);
        let addrs: Vec<SocketAddr> = cards.iter().map(|c| c.addr).collect();
        let ring = liveness::connect_ring(listener, &addrs, &secret, comm_id, rank, deadline)?;
        let live = liveness::Heartbeat::start(
            ring,
            rank,
            timeout,
            liveness::Revoke {
                flag: aborted.clone(),
                failure: failure.clone(),
            },
        );
        let comm = Communicator {
            rank,
            nranks,
            cfg,
            comm_id,
            secret,
            topo: topology::from_cards(rank, &cards),
            cards,
            ends,
            inner: Mutex::new(Inner {
                links,
                seq: 0,
                p2p_sent: HashMap::new(),
                p2p_recvd: HashMap::new(),
                revoked: None,
                scratch: Vec::new(),
                programs: HashMap::new(),
                recent: Vec::new(),
                memos: Vec::new(),
                logged: Vec::new(),
            }),
            sched: nonblocking::Sched::default(),
            worker: Mutex::new(None),
            aborted,
            failure,
            _live: live,
            shrinks: std::sync::atomic::AtomicU64::new(0),
            model: std::sync::OnceLock::new(),
            placement: std::sync::OnceLock::new(),
            _server: server,
        };
        comm.log_topology();
        // OXCCL_TUNE=1: measure the links and the reduction now (collective), so every rank
        // installs the same cost model before its first call.
        comm.tune_at_init()?;
        Ok(comm)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.nranks
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// What the rendezvous store has served so far, on the rank that serves it (rank 0 when
    /// it started the store; `None` elsewhere). The card exchange costs the store two requests
    /// per rank (namespace `comm`), plus one for the communicator id; heartbeats count under
    /// `live`.
    pub fn store_stats(&self) -> Option<bootstrap::StoreStats> {
        self._server.as_ref().map(StoreServer::stats)
    }

    /// The all-reduce algorithm policy, as tools print it (per call, ask
    /// [`Communicator::algorithm_for`]).
    pub fn algorithm_name(&self) -> String {
        match self.cfg.forced(Collective::AllReduce) {
            _ if self.cfg.deterministic == Some(true) => "ordered (deterministic)".to_string(),
            Ok(Some(a)) => a.name().to_string(),
            _ if self.nranks == 1 => "local".to_string(),
            _ => "chosen per call by the cost model (oxccl::tune)".to_string(),
        }
    }

    /// What link construction needs to know of rank `p` (from its card).
    fn peer(&self, p: usize) -> links::Peer<'_> {
        self.cards[p].peer(p, &self.cards[self.rank])
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::internal("communicator lock poisoned by a panic"))
    }

    /// Connects links to `peers` that are not connected yet (lower rank dials). Peers on this
    /// host get shm links unless OXCCL_TRANSPORT=tcp; the rest (and any pair whose descriptor
    /// passing fails, under auto) get TCP.
    fn connect_peers(
        &self,
        links: &mut [Option<Box<dyn Link>>],
        peers: &[usize],
        // The slot each link is made with is the configured chunk (`links::Settings::slot`).
        _slot: usize,
    ) -> Result<()> {
        if peers.iter().all(|&p| links[p].is_some()) {
            return Ok(());
        }
        let set = links::Settings {
            transport: self.cfg.transport.unwrap_or(TransportKind::Auto),
            nsocks: self.cfg.nsocks.unwrap_or(DEFAULT_NSOCKS),
            slot: self.cfg.chunk_bytes.unwrap_or(DEFAULT_CHUNK).max(64),
            timeout: self.cfg.timeout(),
        };
        let deadline = Instant::now() + self.cfg.timeout();
        let me = &self.cards[self.rank];
        let here = self
            .cards
            .iter()
            .filter(|c| c.boot == me.boot && c.host == me.host)
            .count();
        crate::sys::note_ranks_on_host(here.max(1));
        // Dial higher ranks first (their listener threads answer without them), then take
        // lower ranks'.
        for &p in peers.iter().filter(|&&p| p > self.rank) {
            if links[p].is_none() {
                links[p] = Some(self.ends.connect(&set, &self.peer(p), deadline)?);
            }
        }
        for &p in peers.iter().filter(|&&p| p < self.rank) {
            if links[p].is_none() {
                links[p] = Some(self.ends.connect(&set, &self.peer(p), deadline)?);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod card_tests {
    use super::*;

    fn card(host: &str, boot: &str, netns: &str, shm: &str) -> Card {
        Card {
            addr: "127.0.0.1:5000".parse().unwrap(),
            host: host.into(),
            pid: 42,
            boot: boot.into(),
            netns: netns.into(),
            shm: shm.into(),
            rdma: String::new(),
            paths: Vec::new(),
            rails: crate::topo::Rails {
                nics: 1,
                mbps: None,
            },
        }
    }

    #[test]
    fn cards_round_trip_and_reject_garbage() {
        for c in [
            card("node-1", "b0", "net:[1]", "oxccl-1-ab"),
            card("", "", "", ""),
            Card {
                rdma: "a:mlx5_0:1".into(),
                paths: vec![
                    "10.0.0.1:7".parse().unwrap(),
                    "[fe80::1]:8".parse().unwrap(),
                ],
                rails: crate::topo::Rails {
                    nics: 2,
                    mbps: Some(25_000),
                },
                ..card("node 2", "b", "n", "s")
            },
        ] {
            assert_eq!(Card::decode(&c.encode(), 3).unwrap(), c);
        }
        for bad in [
            &b"1 127.0.0.1:5000 42 host"[..],
            b"2 nonsense",
            b"",
            b"\xff\xfe",
        ] {
            assert!(Card::decode(bad, 3).is_err());
        }
    }

    #[test]
    fn local_ranks_number_each_hosts_ranks_in_rank_order() {
        // Cyclic placement over two hosts, and a third host in another namespace of host b.
        let cards = [
            card("a", "b1", "n1", "s"),
            card("b", "b2", "n1", "s"),
            card("a", "b1", "n1", "s"),
            card("b", "b2", "n1", "s"),
            card("b", "b2", "n2", "s"),
        ];
        assert_eq!(local_ranks(&cards), vec![0, 0, 1, 1, 0]);
    }

    #[test]
    fn same_host_needs_boot_id_host_name_namespace_and_endpoints() {
        let a = card("n1", "boot", "net:[1]", "s-a");
        assert_eq!(a.not_same_host(&card("n1", "boot", "net:[1]", "s-b")), None);
        assert!(
            a.not_same_host(&card("n2", "boot", "net:[1]", "s-b"))
                .is_some()
        );
        assert!(
            a.not_same_host(&card("n1", "other", "net:[1]", "s-b"))
                .is_some()
        );
        assert!(
            a.not_same_host(&card("n1", "boot", "net:[2]", "s-b"))
                .is_some()
        );
        assert!(
            a.not_same_host(&card("n1", "boot", "net:[1]", ""))
                .is_some()
        );
        // Unknown identities never match, even each other.
        let u = card("n1", "", "", "s");
        assert!(u.not_same_host(&u.clone()).is_some());
    }
}
