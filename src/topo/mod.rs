//! Topology: which ranks share a host, each rank's local rank, and this host's NICs (rails).
//!
//! [`HostMap`] is pure data, the input the schedules ([`crate::algo::build_on`]), the tuner and
//! the simulator take besides the rank count. A communicator derives it at init from the cards
//! every rank publishes (boot id + host name + network namespace: the same test that decides
//! "shared memory is possible"), so every rank holds the same map without another exchange.
//! Hosts are numbered in the order of their lowest rank; a host's ranks, in rank order, are its
//! local ranks 0, 1, ...
//!
//! The **topology order** ([`HostMap::order`]) lists the hosts one after the other, each host's
//! ranks by local rank. Rings, chains and trees are laid over that order instead of over rank
//! numbers, so a launcher that places ranks round-robin (`srun --distribution=cyclic`,
//! `mpirun --map-by node`) gets the same schedule, up to renaming, as one that places them host
//! by host: one network crossing per host boundary, not one per hop.
//!
//! **Rails.** Local rank `l` of a host with `k` NICs uses NIC `l mod k` (RDMA's "rank r takes
//! port r mod n" rule); the hierarchical Programs send a local rank's inter-host traffic only to
//! ranks of the same local rank on other hosts, so with one NIC per local rank every NIC carries
//! its own share at once ([`Topology::rail`]).

use std::collections::HashMap;
use std::hash::Hash;

mod nics;
pub use nics::{Nic, NicKind};
pub(crate) use nics::{Rails, local_nics};

/// Which ranks share a host. Pure data; every rank of a communicator holds the same one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostMap {
    host_of: Vec<usize>,
    hosts: Vec<Vec<usize>>,
}

impl HostMap {
    /// The map of ranks whose host keys are `keys` (rank r's key at index r): ranks with equal
    /// keys share a host. Hosts are numbered by their lowest rank.
    pub fn from_keys<K: Eq + Hash>(keys: &[K]) -> HostMap {
        let mut ids: HashMap<&K, usize> = HashMap::new();
        let mut host_of = Vec::with_capacity(keys.len());
        let mut hosts: Vec<Vec<usize>> = Vec::new();
        for (r, k) in keys.iter().enumerate() {
            let next = ids.len();
            let h = *ids.entry(k).or_insert(next);
            if h == hosts.len() {
                hosts.push(Vec::new());
            }
            hosts[h].push(r);
            host_of.push(h);
        }
        HostMap { host_of, hosts }
    }

    /// The map whose rank r lives on host `host_of[r]` (any numbering; renumbered by lowest
    /// rank).
    pub fn from_hosts(host_of: &[usize]) -> HostMap {
        HostMap::from_keys(host_of)
    }

    /// `n` ranks on one host.
    pub fn flat(n: usize) -> HostMap {
        HostMap::from_hosts(&vec![0; n])
    }

    /// `n` ranks placed host by host, `per_host` per host (the last host may have fewer).
    pub fn block(n: usize, per_host: usize) -> HostMap {
        let p = per_host.max(1);
        HostMap::from_hosts(&(0..n).map(|r| r / p).collect::<Vec<_>>())
    }

    /// `n` ranks dealt round-robin over `hosts` hosts (cyclic placement).
    pub fn cyclic(n: usize, hosts: usize) -> HostMap {
        let h = hosts.max(1);
        HostMap::from_hosts(&(0..n).map(|r| r % h).collect::<Vec<_>>())
    }

    /// Number of ranks.
    pub fn nranks(&self) -> usize {
        self.host_of.len()
    }

    /// Number of hosts.
    pub fn nhosts(&self) -> usize {
        self.hosts.len()
    }

    /// The host of rank `r`.
    pub fn host_of(&self, r: usize) -> usize {
        self.host_of[r]
    }

    /// The ranks of host `h`, by local rank.
    pub fn ranks(&self, h: usize) -> &[usize] {
        &self.hosts[h]
    }

    /// Every host's ranks.
    pub fn hosts(&self) -> &[Vec<usize>] {
        &self.hosts
    }

    /// Rank `r`'s index among its host's ranks.
    pub fn local_rank(&self, r: usize) -> usize {
        let h = &self.hosts[self.host_of[r]];
        h.binary_search(&r).unwrap_or(0)
    }

    /// The number of ranks on rank `r`'s host.
    pub fn local_size(&self, r: usize) -> usize {
        self.hosts[self.host_of[r]].len()
    }

    /// The most ranks any host has.
    pub fn max_local(&self) -> usize {
        self.hosts.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The ranks per host when every host has as many, else `None`.
    pub fn uniform(&self) -> Option<usize> {
        let m = self.max_local();
        self.hosts.iter().all(|h| h.len() == m).then_some(m)
    }

    /// The topology order: position -> rank, hosts one after the other, each by local rank.
    pub fn order(&self) -> Vec<usize> {
        self.hosts.iter().flatten().copied().collect()
    }

    /// Whether the topology order is the rank order (ranks placed host by host).
    pub fn is_blocked(&self) -> bool {
        self.hosts
            .iter()
            .flatten()
            .enumerate()
            .all(|(i, &r)| i == r)
    }

    /// The rank with local rank `l mod local size` on host `h`: who serves slice `l` there.
    pub fn on_rail(&self, h: usize, l: usize) -> usize {
        let hr = &self.hosts[h];
        hr[l % hr.len()]
    }
}

/// What a rank knows about where it runs: the host map, the hosts' names and this host's NICs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    rank: usize,
    map: HostMap,
    names: Vec<String>,
    nics: Vec<Nic>,
    rails: Rails,
}

impl Topology {
    /// Rank `rank`'s topology: `map`, each host's name (by host index) and this host's NICs.
    pub fn new(rank: usize, map: HostMap, names: Vec<String>, nics: Vec<Nic>) -> Topology {
        Topology {
            rank,
            map,
            names,
            nics,
            rails: Rails::default(),
        }
    }

    /// The same topology, with the rails every rank can count on (`Rails::common` of the
    /// cards).
    pub fn with_rails(mut self, rails: Rails) -> Topology {
        self.rails = rails;
        self
    }

    /// The rails every host's ranks spread over and their speed, the same on every rank
    /// (`nics` 0 when nothing is known).
    pub fn rails(&self) -> Rails {
        self.rails
    }

    /// The host map.
    pub fn host_map(&self) -> &HostMap {
        &self.map
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of hosts.
    pub fn nhosts(&self) -> usize {
        self.map.nhosts()
    }

    /// This rank's host (index into [`HostMap::hosts`]).
    pub fn host(&self) -> usize {
        self.map.host_of(self.rank)
    }

    /// Host `h`'s name (as its first rank reported it).
    pub fn host_name(&self, h: usize) -> &str {
        self.names.get(h).map_or("", String::as_str)
    }

    /// This rank's local rank.
    pub fn local_rank(&self) -> usize {
        self.map.local_rank(self.rank)
    }

    /// The number of ranks on this host.
    pub fn local_size(&self) -> usize {
        self.map.local_size(self.rank)
    }

    /// This host's NICs (TCP interfaces, and RDMA ports where the OS lists them).
    pub fn nics(&self) -> &[Nic] {
        &self.nics
    }

    /// This rank's rail: the NIC index its inter-host traffic should use, local rank mod the
    /// number of TCP NICs (0 when none is known).
    pub fn rail(&self) -> usize {
        let k = self
            .nics
            .iter()
            .filter(|n| n.kind == NicKind::Tcp)
            .count()
            .max(1);
        self.local_rank() % k
    }

    /// One line per host, as `OXCCL_DEBUG=INFO` prints them at init.
    pub fn describe(&self) -> Vec<String> {
        (0..self.nhosts())
            .map(|h| {
                let ranks = self.map.ranks(h);
                let mut line = format!(
                    "host {h} {:?}: {} rank{} [{}]",
                    self.host_name(h),
                    ranks.len(),
                    if ranks.len() == 1 { "" } else { "s" },
                    compact(ranks)
                );
                if h == self.host() {
                    let nics: Vec<String> = self.nics.iter().map(Nic::to_string).collect();
                    line.push_str(&format!(
                        "; this rank {} local {}/{}; NICs: {}",
                        self.rank,
                        self.local_rank(),
                        self.local_size(),
                        if nics.is_empty() {
                            "none found".to_string()
                        } else {
                            nics.join(", ")
                        }
                    ));
                    if self.rails.nics > 0 {
                        line.push_str(&format!(
                            "; every host: {} rail{} of {}",
                            self.rails.nics,
                            if self.rails.nics == 1 { "" } else { "s" },
                            self.rails
                                .mbps
                                .map_or("unknown speed".to_string(), |m| format!("{m} Mbit/s"))
                        ));
                    }
                }
                line
            })
            .collect()
    }
}

/// `0-3,8,10-11`: a sorted rank list in ranges.
fn compact(ranks: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        parts.push(if j == i {
            ranks[i].to_string()
        } else {
            format!("{}-{}", ranks[i], ranks[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_numbered_by_lowest_rank() {
        let m = HostMap::from_keys(&["b", "a", "b", "c", "a"]);
        assert_eq!(m.nhosts(), 3);
        assert_eq!(m.hosts(), &[vec![0, 2], vec![1, 4], vec![3]]);
        assert_eq!(m.local_rank(4), 1);
        assert_eq!(m.local_size(3), 1);
        assert_eq!(m.order(), vec![0, 2, 1, 4, 3]);
        assert!(!m.is_blocked());
        assert_eq!(m.uniform(), None);
        assert_eq!(m.on_rail(2, 5), 3);
    }

    #[test]
    fn block_and_cyclic_placements() {
        let b = HostMap::block(8, 2);
        assert!(b.is_blocked());
        assert_eq!(b.uniform(), Some(2));
        let c = HostMap::cyclic(8, 4);
        assert_eq!(c.hosts()[1], vec![1, 5]);
        assert_eq!(c.order(), vec![0, 4, 1, 5, 2, 6, 3, 7]);
        assert_eq!(HostMap::flat(3).nhosts(), 1);
        assert_eq!(compact(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn describe_names_every_host_once() {
        let t = Topology::new(
            5,
            HostMap::cyclic(8, 4),
            (0..4).map(|h| format!("n{h}")).collect(),
            vec![Nic {
                name: "eth0".into(),
                kind: NicKind::Tcp,
                speed_mbps: Some(1000),
                addr: None,
            }],
        );
        let lines = t.describe();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].contains("this rank 5 local 1/2"), "{}", lines[1]);
        assert!(lines[1].contains("eth0 1000 Mbit/s"), "{}", lines[1]);
        assert_eq!(t.rail(), 0);
    }
}
