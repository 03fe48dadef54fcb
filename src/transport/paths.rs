//! Multi-path TCP between ranks (opt-in): when `OXCCL_SOCKET_IFNAME` lists two or more
//! interfaces (`eth0,eth1`), a rank listens on each one's address too, lists the extra
//! addresses in its card (exchanged at init like the rest of the card), and a link to a peer that did the
//! same stripes its sockets over the paths (socket `k` on path `k % npaths`, path 0 being the
//! card's address) and uses [`MultipathLink`], which survives the loss of a path. Without it
//! nothing changes: no listener, no extra address, the plain TCP link.
//!
//! Rails (`OXCCL_SOCKET_BIND=rail` with such a list): every rank still listens on every listed
//! interface, but nothing is striped: **local rank `r` takes interface `r mod k`** (`k`
//! interfaces; local ranks number a host's ranks in rank order, as the cards tell), and a
//! link to rank `p` is made entirely to `p`'s own interface. So each local rank receives on its
//! own NIC, as RDMA ports are assigned, and a schedule that pairs same-local-rank peers across
//! hosts keeps each rail's traffic on its own NIC (the dialer's kernel sends it out of its
//! interface on that rail's network). Every rank must list the same interfaces in the same
//! order. The same binding by hand: set `OXCCL_SOCKET_IFNAME` to one interface per rank.

use std::net::SocketAddr;

use super::connect::PeerListener;
use crate::error::{Error, Result};

/// This rank's extra paths and every rank's extra addresses.
#[derive(Default)]
pub(super) struct Paths {
    /// One listener per extra path (path 1, 2, ...).
    pub(super) listeners: Vec<PeerListener>,
    /// Per rank: its extra addresses (empty: one path).
    pub(super) addrs: Vec<Vec<SocketAddr>>,
    /// `OXCCL_SOCKET_BIND=rail`: one interface per local rank instead of striping.
    rails: bool,
    /// Per rank: its local rank (rail mode only).
    local: Vec<usize>,
}

/// Whether `OXCCL_SOCKET_BIND` asks for rails (`rail`) rather than striping (`stripe`, the
/// default).
fn rail_mode(rank: usize) -> Result<bool> {
    match std::env::var("OXCCL_SOCKET_BIND") {
        Err(_) => Ok(false),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "stripe" => Ok(false),
            "rail" | "rails" => Ok(true),
            _ => Err(Error::invalid_argument(format!(
                "rank {rank}: OXCCL_SOCKET_BIND={v:?}: expected `rail` (local rank r takes interface r mod n \
                 of OXCCL_SOCKET_IFNAME) or `stripe` (every link over every interface)"
            ))),
        },
    }
}

impl Paths {
    /// Listens on the extra paths OXCCL_SOCKET_IFNAME names, if it names two or more; `primary`
    /// is the listener already bound on the first.
    pub(super) fn start(
        primary: SocketAddr,
        secret: [u8; 16],
        comm: u64,
        rank: usize,
        nranks: usize,
    ) -> Result<Paths> {
        let rails = rail_mode(rank)?;
        let ips = crate::bootstrap::net::local_paths()?;
        if ips.len() < 2 {
            return Ok(Paths::default());
        }
        let mut listeners = Vec::new();
        for ip in ips.into_iter().filter(|ip| *ip != primary.ip()) {
            listeners.push(PeerListener::start(ip, secret, comm, rank, nranks)?);
        }
        Ok(Paths {
            listeners,
            addrs: Vec::new(),
            rails,
            local: Vec::new(),
        })
    }

    /// This rank's extra addresses (path 1, 2, ...), for its card; empty without multi-path.
    pub(super) fn extra_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(PeerListener::addr).collect()
    }

    /// Learns every rank's extra addresses and local rank from the cards (only a rank with
    /// paths of its own keeps them).
    pub(super) fn learn(&mut self, addrs: Vec<Vec<SocketAddr>>, local: Vec<usize>) {
        if !self.listeners.is_empty() {
            self.addrs = addrs;
            if self.rails {
                self.local = local;
            }
        }
    }

    /// Rail mode: the interface index rank `p` is reached on (its local rank mod the number of
    /// interfaces), when both this rank and `p` have several.
    pub(super) fn rail_of(&self, p: usize) -> Option<usize> {
        if !self.rails || self.listeners.is_empty() {
            return None;
        }
        let theirs = 1 + self.addrs.get(p)?.len();
        (theirs > 1).then(|| self.local.get(p).copied().unwrap_or(0) % theirs)
    }

    /// Rail mode: this rank's interface index and address, to log.
    pub(super) fn my_rail(&self, me: usize, primary: SocketAddr) -> Option<(usize, SocketAddr)> {
        let k = self.rail_of(me)?;
        Some((
            k,
            if k == 0 {
                primary
            } else {
                self.listeners[k - 1].addr()
            },
        ))
    }

    /// The paths shared with rank `p`: how many both have (0 or 1: not multi-path).
    pub(super) fn shared(&self, p: usize) -> usize {
        if self.listeners.is_empty() || self.rails {
            return 0;
        }
        let theirs = self.addrs.get(p).map_or(0, Vec::len);
        1 + self.listeners.len().min(theirs)
    }
}
