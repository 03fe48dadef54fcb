//! Link construction: this rank's endpoints (the TCP listener, extra paths, the shm endpoint,
//! the RDMA device) and the choice, per peer, of the link to make: RDMA when both ranks want
//! it, shared memory for a peer on this host (falling back to TCP under `auto`), TCP otherwise
//! (multi-path when both ranks listen on several interfaces). The lower rank dials, the higher
//! rank accepts. The communicator says what it knows of the peer (its card) as a [`Peer`].

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::connect::{self, Hello, PeerListener};
use super::mpath::MultipathLink;
use super::paths::Paths;
use super::shm::setup::{self as shm_setup, DialError, ShmEndpoint};
use super::shm::{DEFAULT_SLOTS, Geometry};
use super::tcp::TcpLink;
use super::{Link, TransportKind};
use crate::error::{Error, Result};

/// How links are made: the communicator's settings that matter here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// `OXCCL_TRANSPORT` (auto when unset).
    pub transport: TransportKind,
    /// TCP sockets per link.
    pub nsocks: usize,
    /// Slot (largest message) size in bytes.
    pub slot: usize,
    /// The communicator's no-progress timeout (a multi-path link gives a path up well before).
    pub timeout: Duration,
}

/// What this rank knows of a peer, from the card it published.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer<'a> {
    /// Its rank.
    pub rank: usize,
    /// Its listening address.
    pub addr: SocketAddr,
    /// Its host name and process id (for messages).
    pub host: &'a str,
    /// Its process id.
    pub pid: u32,
    /// The name of its shm endpoint (empty: none).
    pub shm: &'a str,
    /// Its RDMA card word (see `transport::rdma`; empty: none).
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))] // read by the rdma transport only
    pub rdma: &'a str,
    /// Why shared memory cannot reach it (another host, no endpoint...), if it cannot.
    pub not_same_host: Option<&'static str>,
}

/// This rank's endpoints, from which links to peers are made.
pub(crate) struct Endpoints {
    rank: usize,
    comm_id: u64,
    secret: [u8; 16],
    listener: PeerListener,
    /// Extra paths (multi-path TCP, OXCCL_SOCKET_IFNAME=eth0,eth1); empty normally.
    paths: Paths,
    shm: Option<ShmEndpoint>,
    #[cfg(feature = "rdma")]
    rdma: Option<super::rdma::Endpoint>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("rank", &self.rank)
            .field("addr", &self.listener.addr())
            .field("shm", &self.shm.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether the test-only knob `OXCCL_SHM_DENY` (e.g. `0-1,2-3`) forbids shm between `a` and `b`.
fn shm_denied(a: usize, b: usize) -> bool {
    let Ok(v) = std::env::var("OXCCL_SHM_DENY") else {
        return false;
    };
    v.split(',').any(|pair| {
        let mut it = pair.split('-').map(|x| x.trim().parse::<usize>());
        match (it.next(), it.next()) {
            (Some(Ok(x)), Some(Ok(y))) => (x, y) == (a, b) || (y, x) == (a, b),
            _ => false,
        }
    })
}

impl Endpoints {
    /// Opens this rank's endpoints: the peer listener on `ip`, the extra paths
    /// OXCCL_SOCKET_IFNAME names, the shm endpoint (unless `kind` rules it out; under `auto` a
    /// failure only means TCP) and the RDMA device (feature `rdma`).
    pub(crate) fn open(
        rank: usize,
        nranks: usize,
        secret: [u8; 16],
        comm_id: u64,
        ip: IpAddr,
        kind: TransportKind,
        timeout: Duration,
    ) -> Result<Endpoints> {
        let listener = PeerListener::start(ip, secret, comm_id, rank, nranks)?;
        let paths = Paths::start(listener.addr(), secret, comm_id, rank, nranks)?;
        let shm = match kind {
            TransportKind::Tcp | TransportKind::Rdma => None,
            kind => match ShmEndpoint::start(secret, comm_id, rank, nranks) {
                Ok(ep) => Some(ep),
                Err(e) if kind == TransportKind::Auto => {
                    crate::info!(Some(rank), "shared memory is unavailable ({e}); using tcp");
                    None
                }
                Err(e) => {
                    return Err(Error::unavailable(format!(
                        "rank {rank}: OXCCL_TRANSPORT=shm, but shared memory is unavailable here: {e}"
                    )));
                }
            },
        };
        #[cfg(feature = "rdma")]
        let rdma = super::rdma::Endpoint::open(rank, kind, timeout)?;
        #[cfg(not(feature = "rdma"))]
        {
            let _ = timeout;
            if kind == TransportKind::Rdma {
                return Err(Error::unavailable(format!(
                    "rank {rank}: OXCCL_TRANSPORT=rdma, but this oxccl was built without RDMA support (cargo feature rdma)"
                )));
            }
        }
        Ok(Endpoints {
            rank,
            comm_id,
            secret,
            listener,
            paths,
            shm,
            #[cfg(feature = "rdma")]
            rdma,
        })
    }

    /// The peer listener (also used for the communicator's control channels).
    pub(crate) fn listener(&self) -> &PeerListener {
        &self.listener
    }

    /// The shm endpoint's name for this rank's card (empty: no shm).
    pub(crate) fn shm_name(&self) -> String {
        self.shm
            .as_ref()
            .map(|e| e.name().to_string())
            .unwrap_or_default()
    }

    /// The RDMA word for this rank's card (empty: no RDMA).
    pub(crate) fn rdma_word(&self) -> String {
        #[cfg(feature = "rdma")]
        return self.rdma.as_ref().map_or(String::new(), |e| e.card_word());
        #[cfg(not(feature = "rdma"))]
        String::new()
    }

    /// This rank's extra addresses (multi-path), for its card; empty without multi-path.
    pub(crate) fn extra_addrs(&self) -> Vec<SocketAddr> {
        self.paths.extra_addrs()
    }

    /// Learns every rank's extra addresses and local rank from the cards.
    pub(crate) fn learn_paths(&mut self, addrs: Vec<Vec<SocketAddr>>, local: Vec<usize>) {
        self.paths.learn(addrs, local);
    }

    /// Rail mode: this rank's interface index and address, to log.
    pub(crate) fn my_rail(&self) -> Option<(usize, SocketAddr)> {
        self.paths.my_rail(self.rank, self.listener.addr())
    }

    /// Whether `peer` may be reached over shared memory: `Ok(None)` yes, `Ok(Some(why))` no
    /// (use TCP), `Err` when OXCCL_TRANSPORT=shm and it cannot be.
    fn shm_refusal(&self, set: &Settings, peer: &Peer<'_>) -> Result<Option<String>> {
        if set.transport == TransportKind::Tcp {
            return Ok(Some("OXCCL_TRANSPORT=tcp".into()));
        }
        match (peer.not_same_host, set.transport) {
            (None, _) => Ok(None),
            (Some(why), TransportKind::Shm) => Err(self.shm_impossible(peer, why)),
            (Some(why), _) => Ok(Some(why.into())),
        }
    }

    fn shm_impossible(&self, peer: &Peer<'_>, why: &str) -> Error {
        Error::unavailable(format!(
            "rank {}: OXCCL_TRANSPORT=shm, but rank {} ({} pid {}) cannot be reached over shared memory: {why}; \
             use OXCCL_TRANSPORT=auto to use TCP for it",
            self.rank, peer.rank, peer.host, peer.pid
        ))
    }

    fn shm_geometry(set: &Settings) -> Geometry {
        Geometry {
            nslots: std::env::var("OXCCL_SHM_SLOTS")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|n| (2..=super::shm::MAX_SLOTS).contains(n))
                .unwrap_or(DEFAULT_SLOTS),
            slot_size: set.slot.max(64),
        }
    }

    fn shm_link(
        &self,
        set: &Settings,
        peer: &Peer<'_>,
        link: super::shm::ShmLink,
    ) -> Box<dyn Link> {
        let geo = Self::shm_geometry(set);
        crate::info!(
            Some(self.rank),
            "link to rank {} ({} pid {}): shm, {} slots of {} KiB each way",
            peer.rank,
            peer.host,
            peer.pid,
            geo.nslots,
            geo.slot_size >> 10
        );
        Box::new(link)
    }

    fn hello(&self, p: usize, nsocks: usize) -> Hello {
        Hello {
            comm: self.comm_id,
            from: self.rank as u32,
            to: p as u32,
            idx: 0,
            nsocks: nsocks as u32,
        }
    }

    /// The link to `peer`: RDMA when both ranks want it, else the lower rank dials and the
    /// higher one accepts a shm or TCP link.
    pub(crate) fn connect(
        &self,
        set: &Settings,
        peer: &Peer<'_>,
        deadline: Instant,
    ) -> Result<Box<dyn Link>> {
        let dialer = self.rank < peer.rank;
        #[cfg(feature = "rdma")]
        if let Some(link) = self.rdma_link(set, peer, dialer, deadline)? {
            return Ok(link);
        }
        if dialer {
            self.dial(set, peer, deadline)
        } else {
            self.accept(set, peer, deadline)
        }
    }

    /// The lower rank's side: shm when possible (falling back to TCP under auto), else TCP.
    fn dial(&self, set: &Settings, peer: &Peer<'_>, deadline: Instant) -> Result<Box<dyn Link>> {
        let p = peer.rank;
        let mut why = self.shm_refusal(set, peer)?;
        if why.is_none() && shm_denied(self.rank, p) {
            why = Some("OXCCL_SHM_DENY".into());
        }
        if let (None, Some(ep)) = (&why, &self.shm) {
            let r = shm_setup::dial(
                ep,
                peer.shm,
                &self.secret,
                self.comm_id,
                self.rank,
                p,
                Self::shm_geometry(set),
                deadline,
            );
            match r {
                Ok(link) => return Ok(self.shm_link(set, peer, link)),
                Err(DialError::Failed(e)) => return Err(e),
                Err(DialError::Fallback(w)) => {
                    if set.transport == TransportKind::Shm {
                        // Tell the peer at once (it waits for shm or tcp and fails on tcp)
                        // rather than let it wait for its timeout.
                        let _ = connect::dial(
                            peer.addr,
                            &self.secret,
                            self.hello(p, set.nsocks),
                            deadline,
                        );
                        return Err(self.shm_impossible(peer, &w));
                    }
                    crate::info!(
                        Some(self.rank),
                        "shared memory with rank {p} failed ({w}); falling back to tcp"
                    );
                    why = Some("descriptor passing failed".into());
                }
            }
        }
        let socks = self.dial_tcp(peer, self.hello(p, set.nsocks), deadline)?;
        self.new_link(set, peer, socks, why.as_deref())
    }

    /// The higher rank's side: takes whichever link the lower rank made, shm or TCP.
    fn accept(&self, set: &Settings, peer: &Peer<'_>, deadline: Instant) -> Result<Box<dyn Link>> {
        let p = peer.rank;
        let why = self.shm_refusal(set, peer)?;
        let (None, Some(ep)) = (&why, &self.shm) else {
            let socks = self.take_tcp(p, set.nsocks, deadline)?;
            return self.new_link(set, peer, socks, why.as_deref());
        };
        loop {
            if let Some(link) = ep.try_take(p, Duration::from_millis(1))? {
                return Ok(self.shm_link(set, peer, link));
            }
            let now = Instant::now();
            match self.take_tcp(p, set.nsocks, now.min(deadline)) {
                Ok(socks) if set.transport == TransportKind::Shm => {
                    drop(socks);
                    return Err(self.shm_impossible(peer, "it connected over tcp (see its log)"));
                }
                Ok(socks) => return self.new_link(set, peer, socks, Some("the peer chose tcp")),
                Err(e) if now >= deadline => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// The RDMA link to `peer` when both ranks choose one (transport::rdma::wanted): the lower
    /// rank dials one authenticated socket, over which the queue pairs are set up and which
    /// then stays open as the link's liveness signal.
    #[cfg(feature = "rdma")]
    fn rdma_link(
        &self,
        set: &Settings,
        peer: &Peer<'_>,
        dialer: bool,
        deadline: Instant,
    ) -> Result<Option<Box<dyn Link>>> {
        use super::rdma;
        let p = peer.rank;
        let same_host = peer.not_same_host.is_none();
        let ep = self.rdma.as_ref();
        if !rdma::wanted(ep, self.rank, p, peer.rdma, same_host)? {
            return Ok(None);
        }
        let ep = ep.ok_or_else(|| Error::internal("rdma wanted without an endpoint"))?;
        let socks = if dialer {
            connect::dial(peer.addr, &self.secret, self.hello(p, 1), deadline)?
        } else {
            self.listener.take(p, 1, deadline)?
        };
        let sock = socks
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal(format!("no bootstrap socket to rank {p}")))?;
        let slot = set.slot.max(64);
        let link = ep.connect(p, sock, dialer, slot, deadline)?;
        crate::info!(
            Some(self.rank),
            "link to rank {p} ({} pid {}): rdma on {} to {}, {} KiB slots",
            peer.host,
            peer.pid,
            ep.device_name(),
            peer.rdma,
            slot >> 10
        );
        Ok(Some(Box::new(link)))
    }

    fn new_link(
        &self,
        set: &Settings,
        peer: &Peer<'_>,
        socks: Vec<TcpStream>,
        not_shm: Option<&str>,
    ) -> Result<Box<dyn Link>> {
        let p = peer.rank;
        let mut socks = Some(socks);
        if let Some(link) = self.multipath_link(set, peer, &mut socks)? {
            return Ok(link);
        }
        let socks = socks
            .ok_or_else(|| Error::internal(format!("tcp link to rank {p} without sockets")))?;
        let nsocks = socks.len();
        let slot = set.slot.max(64);
        let nslots = (2 * nsocks).max(4);
        let rail = self
            .link_rail(p)
            .map_or(String::new(), |k| format!(", on rail {k}"));
        crate::info!(
            Some(self.rank),
            "link to rank {p} ({} pid {} at {}): tcp ({}), {nsocks} sockets, {nslots} slots of {} KiB{rail}",
            peer.host,
            peer.pid,
            peer.addr,
            not_shm.unwrap_or("tcp"),
            slot >> 10
        );
        Ok(Box::new(TcpLink::new(p, socks, slot, nslots)?))
    }

    /// Sockets for a link to `p`: `nsocks`, or over several paths a multiple of their number.
    fn mp_nsocks(&self, p: usize, nsocks: usize) -> (usize, usize) {
        let n = self.paths.shared(p);
        if n < 2 {
            (nsocks, 1)
        } else {
            (nsocks.max(n).next_multiple_of(n), n)
        }
    }

    /// Rail mode: the interface index a TCP link with `p` runs over (the higher rank's: the
    /// lower dials it), for the log.
    fn link_rail(&self, p: usize) -> Option<usize> {
        let (lo, hi) = (self.rank.min(p), self.rank.max(p));
        self.paths.rail_of(lo)?;
        self.paths.rail_of(hi)
    }

    /// The dialing side of a TCP link to `peer` (over every shared path when there are several).
    fn dial_tcp(&self, peer: &Peer<'_>, hello: Hello, deadline: Instant) -> Result<Vec<TcpStream>> {
        let p = peer.rank;
        if let Some(k) = self.paths.rail_of(p) {
            let addr = if k == 0 {
                peer.addr
            } else {
                self.paths.addrs[p][k - 1]
            };
            return connect::dial(addr, &self.secret, hello, deadline);
        }
        let (nsocks, npaths) = self.mp_nsocks(p, hello.nsocks as usize);
        if npaths < 2 {
            return connect::dial(peer.addr, &self.secret, hello, deadline);
        }
        let mut addrs = vec![peer.addr];
        addrs.extend_from_slice(&self.paths.addrs[p][..npaths - 1]);
        let hello = Hello {
            nsocks: nsocks as u32,
            ..hello
        };
        connect::dial_paths(&addrs, &self.secret, hello, deadline)
    }

    /// The accepting side: socket `k` from rank `p` arrives on path `k % npaths`'s listener.
    fn take_tcp(&self, p: usize, nsocks: usize, deadline: Instant) -> Result<Vec<TcpStream>> {
        // Rail mode: whoever dials this rank comes in on its own interface.
        if let Some(k) = self
            .paths
            .rail_of(self.rank)
            .filter(|_| self.paths.rail_of(p).is_some())
        {
            let l = if k == 0 {
                &self.listener
            } else {
                &self.paths.listeners[k - 1]
            };
            return l.take(p, nsocks, deadline);
        }
        let (nsocks, npaths) = self.mp_nsocks(p, nsocks);
        if npaths < 2 {
            return self.listener.take(p, nsocks, deadline);
        }
        let mut per_path: Vec<Vec<Option<TcpStream>>> = Vec::with_capacity(npaths);
        for path in 0..npaths {
            let idxs: Vec<usize> = (path..nsocks).step_by(npaths).collect();
            let l = if path == 0 {
                &self.listener
            } else {
                &self.paths.listeners[path - 1]
            };
            per_path.push(
                l.take_indices(p, &idxs, deadline)?
                    .into_iter()
                    .map(Some)
                    .collect(),
            );
        }
        Ok((0..nsocks)
            .map(|k| per_path[k % npaths][k / npaths].take().expect("taken once"))
            .collect())
    }

    /// The link over `socks` to `peer` when it spans several paths.
    fn multipath_link(
        &self,
        set: &Settings,
        peer: &Peer<'_>,
        socks: &mut Option<Vec<TcpStream>>,
    ) -> Result<Option<Box<dyn Link>>> {
        let p = peer.rank;
        let n = self.paths.shared(p);
        if n < 2 {
            return Ok(None);
        }
        let socks = socks
            .take()
            .ok_or_else(|| Error::internal("multi-path link without sockets"))?;
        let nsocks = socks.len();
        let slot = set.slot.max(64);
        let nslots = (2 * nsocks).max(4);
        // A path must be given up well before the communicator's own timeout fires.
        let path_timeout =
            (set.timeout / 3).clamp(Duration::from_millis(200), Duration::from_secs(10));
        crate::info!(
            Some(self.rank),
            "link to rank {p} ({} pid {}): multi-path tcp over {n} paths ({} and {:?}), {nsocks} sockets, \
             {nslots} slots of {} KiB, a path is given up after {} ms without acknowledgement",
            peer.host,
            peer.pid,
            peer.addr,
            self.paths.addrs[p],
            slot >> 10,
            path_timeout.as_millis()
        );
        Ok(Some(Box::new(MultipathLink::new(
            p,
            socks,
            slot,
            nslots,
            path_timeout,
        )?)))
    }
}
