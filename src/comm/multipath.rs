//! Multi-path TCP between ranks (opt-in): when `OXCCL_SOCKET_IFNAME` lists two or more
//! interfaces (`eth0,eth1`), a rank listens on each one's address too, lists the extra
//! addresses in its card (exchanged at init like the rest of the card), and a link to a peer that did the
//! same stripes its sockets over the paths (socket `k` on path `k % npaths`, path 0 being the
//! card's address) and uses [`MultipathLink`], which survives the loss of a path. Without it
//! nothing changes: no listener, no extra address, the plain TCP link.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{Communicator, DEFAULT_CHUNK};
use crate::error::{Error, Result};
use crate::transport::Link;
use crate::transport::connect::{self, Hello, PeerListener};
use crate::transport::mpath::MultipathLink;

/// This rank's extra paths and every rank's extra addresses.
#[derive(Default)]
pub(super) struct Paths {
    /// One listener per extra path (path 1, 2, ...).
    listeners: Vec<PeerListener>,
    /// Per rank: its extra addresses (empty: one path).
    addrs: Vec<Vec<SocketAddr>>,
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
        })
    }

    /// This rank's extra addresses (path 1, 2, ...), for its card; empty without multi-path.
    pub(super) fn extra_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(PeerListener::addr).collect()
    }

    /// Learns every rank's extra addresses from the cards (only a rank with paths of its own
    /// keeps them).
    pub(super) fn learn(&mut self, addrs: Vec<Vec<SocketAddr>>) {
        if !self.listeners.is_empty() {
            self.addrs = addrs;
        }
    }

    /// The paths shared with rank `p`: how many both have (0 or 1: not multi-path).
    fn shared(&self, p: usize) -> usize {
        if self.listeners.is_empty() {
            return 0;
        }
        let theirs = self.addrs.get(p).map_or(0, Vec::len);
        1 + self.listeners.len().min(theirs)
    }
}

impl Communicator {
    /// Sockets for a link to `p`: `nsocks`, or over several paths a multiple of their number.
    fn mp_nsocks(&self, p: usize, nsocks: usize) -> (usize, usize) {
        let n = self.paths.shared(p);
        if n < 2 {
            (nsocks, 1)
        } else {
            (nsocks.max(n).next_multiple_of(n), n)
        }
    }

    /// The dialing side of a TCP link to `p` (over every shared path when there are several).
    pub(super) fn dial_tcp(
        &self,
        p: usize,
        hello: Hello,
        deadline: Instant,
    ) -> Result<Vec<TcpStream>> {
        let (nsocks, npaths) = self.mp_nsocks(p, hello.nsocks as usize);
        if npaths < 2 {
            return connect::dial(self.cards[p].addr, &self.secret, hello, deadline);
        }
        let mut addrs = vec![self.cards[p].addr];
        addrs.extend_from_slice(&self.paths.addrs[p][..npaths - 1]);
        let hello = Hello {
            nsocks: nsocks as u32,
            ..hello
        };
        connect::dial_paths(&addrs, &self.secret, hello, deadline)
    }

    /// The accepting side: socket `k` from rank `p` arrives on path `k % npaths`'s listener.
    pub(super) fn take_tcp(
        &self,
        p: usize,
        nsocks: usize,
        deadline: Instant,
    ) -> Result<Vec<TcpStream>> {
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

    /// The link over `socks` to `p` when it spans several paths.
    pub(super) fn multipath_link(
        &self,
        p: usize,
        socks: &mut Option<Vec<TcpStream>>,
    ) -> Result<Option<Box<dyn Link>>> {
        let n = self.paths.shared(p);
        if n < 2 {
            return Ok(None);
        }
        let socks = socks
            .take()
            .ok_or_else(|| Error::Internal("multi-path link without sockets".into()))?;
        let nsocks = socks.len();
        let slot = self.cfg.chunk_bytes.unwrap_or(DEFAULT_CHUNK).max(64);
        let nslots = (2 * nsocks).max(4);
        // A path must be given up well before the communicator's own timeout fires.
        let path_timeout =
            (self.cfg.timeout() / 3).clamp(Duration::from_millis(200), Duration::from_secs(10));
        crate::info!(
            Some(self.rank),
            "link to rank {p} ({} pid {}): multi-path tcp over {n} paths ({} and {:?}), {nsocks} sockets, \
             {nslots} slots of {} KiB, a path is given up after {} ms without acknowledgement",
            self.cards[p].host,
            self.cards[p].pid,
            self.cards[p].addr,
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
