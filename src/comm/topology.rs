//! The communicator's topology: derived at init from the cards every rank holds.

use super::{Card, Communicator};
use crate::topo::{HostMap, Topology};

/// Rank `rank`'s topology from all ranks' cards: ranks share a host when their boot id, host
/// name and network namespace agree (the test shared memory uses), so every rank derives the
/// same host map. Only this host's NICs are listed; the cards carry each rank's rails (count and
/// speed), of which every rank keeps the common part.
pub(super) fn from_cards(rank: usize, cards: &[Card]) -> Topology {
    let keys: Vec<(&str, &str, &str)> = cards
        .iter()
        .map(|c| (c.boot.as_str(), c.host.as_str(), c.netns.as_str()))
        .collect();
    let map = match forced_hosts(cards.len()) {
        Some(m) => m,
        None => HostMap::from_keys(&keys),
    };
    let names = map
        .hosts()
        .iter()
        .map(|h| cards[h[0]].host.clone())
        .collect();
    let rails = crate::topo::Rails::common(cards.iter().map(|c| c.rails));
    Topology::new(rank, map, names, crate::topo::local_nics()).with_rails(rails)
}

/// The test-only knob `OXCCL_TOPO_HOSTS` (`0,1,0,1`: rank r's host index), which lays the
/// schedules over that host map whatever the cards say, so that hierarchical and placed
/// schedules can be tested with the ranks of one machine (links still follow the cards). Ignored
/// with a warning when it does not name a host for every rank.
fn forced_hosts(n: usize) -> Option<HostMap> {
    let v = std::env::var("OXCCL_TOPO_HOSTS").ok()?;
    let hosts: Vec<usize> = v
        .split(',')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<_>>()
        .filter(|h: &Vec<usize>| h.len() == n)
        .or_else(|| {
            crate::warn!(
                None,
                "OXCCL_TOPO_HOSTS={v:?} does not give a host index for each of the {n} ranks; ignored"
            );
            None
        })?;
    Some(HostMap::from_hosts(&hosts))
}

impl Communicator {
    /// Where this communicator's ranks run: which share a host, this rank's local rank and local
    /// size, and this host's NICs. Schedules are laid over it (see `oxccl::topo`).
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// Prints, at `OXCCL_DEBUG=INFO`, this host's line of the topology (once per host: by its
    /// local rank 0).
    pub(super) fn log_topology(&self) {
        let t = &self.topo;
        if t.local_rank() == 0 && crate::log::enabled(crate::log::Level::Info) {
            if let Some(line) = t.describe().get(t.host()) {
                crate::info!(Some(self.rank), "topology: {} hosts; {line}", t.nhosts());
            }
        }
    }
}
