//! This host's NICs: the TCP interfaces (getifaddrs) with the speed `/sys/class/net/*/speed`
//! gives, and RDMA ports (`/sys/class/infiniband/*/ports/*/rate`) where there are any.

use std::net::{IpAddr, Ipv4Addr};

/// What kind of port a NIC is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NicKind {
    /// An IP interface TCP links can use.
    Tcp,
    /// An RDMA (verbs) port.
    Rdma,
}

/// One network port of this host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nic {
    /// The interface name (`eth0`), or `device:port` for RDMA (`mlx5_0:1`).
    pub name: String,
    /// TCP interface or RDMA port.
    pub kind: NicKind,
    /// Link speed in Mbit/s where the OS gives it (virtual interfaces often do not).
    pub speed_mbps: Option<u64>,
    /// Its IPv4 address (TCP interfaces).
    pub addr: Option<IpAddr>,
}

impl std::fmt::Display for Nic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(a) = self.addr {
            write!(f, " {a}")?;
        }
        match self.speed_mbps {
            Some(s) => write!(f, " {s} Mbit/s"),
            None => write!(f, " speed unknown"),
        }
    }
}

/// Parses `/sys/class/net/X/speed` (Mbit/s; `-1` or garbage when unknown).
fn parse_speed(s: &str) -> Option<u64> {
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|&v| v > 0)
        .map(|v| v as u64)
}

/// Parses an RDMA port's `rate` (`100 Gb/sec (4X EDR)`) into Mbit/s.
fn parse_rate(s: &str) -> Option<u64> {
    let mut it = s.split_whitespace();
    let v: f64 = it.next()?.parse().ok()?;
    match it.next()? {
        "Gb/sec" => Some((v * 1000.0) as u64),
        "Mb/sec" => Some(v as u64),
        _ => None,
    }
    .filter(|&m| m > 0)
}

/// The NICs of this host, in the kernel's order: every up, non-loopback IPv4 interface (with
/// its speed where given) and every RDMA port. Interfaces the OS cannot list give an empty list,
/// never an error: the topology is advice for schedules, not a requirement.
pub fn local_nics() -> Vec<Nic> {
    let mut out: Vec<Nic> = Vec::new();
    if let Ok(ifaces) = crate::bootstrap::net::ipv4_interfaces() {
        for i in ifaces.iter().filter(|i| i.up && !i.loopback) {
            if out.iter().any(|n| n.name == i.name) {
                continue;
            }
            let speed = std::fs::read_to_string(format!("/sys/class/net/{}/speed", i.name))
                .ok()
                .and_then(|s| parse_speed(&s));
            out.push(Nic {
                name: i.name.clone(),
                kind: NicKind::Tcp,
                speed_mbps: speed,
                addr: (i.addr != Ipv4Addr::UNSPECIFIED).then_some(IpAddr::V4(i.addr)),
            });
        }
    }
    if let Ok(devs) = std::fs::read_dir("/sys/class/infiniband") {
        let mut names: Vec<String> = devs
            .filter_map(|d| d.ok())
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for dev in names {
            let Ok(ports) = std::fs::read_dir(format!("/sys/class/infiniband/{dev}/ports")) else {
                continue;
            };
            let mut ps: Vec<String> = ports
                .filter_map(|p| p.ok())
                .map(|p| p.file_name().to_string_lossy().into_owned())
                .collect();
            ps.sort();
            for p in ps {
                let rate =
                    std::fs::read_to_string(format!("/sys/class/infiniband/{dev}/ports/{p}/rate"))
                        .ok()
                        .and_then(|s| parse_rate(&s));
                out.push(Nic {
                    name: format!("{dev}:{p}"),
                    kind: NicKind::Rdma,
                    speed_mbps: rate,
                    addr: None,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_parse_or_are_unknown() {
        assert_eq!(parse_speed("1000\n"), Some(1000));
        assert_eq!(parse_speed("-1"), None);
        assert_eq!(parse_speed(""), None);
        assert_eq!(parse_rate("100 Gb/sec (4X EDR)\n"), Some(100_000));
        assert_eq!(parse_rate("2.5 Gb/sec (1X SDR)"), Some(2500));
        assert_eq!(parse_rate("nonsense"), None);
    }

    #[test]
    fn local_nics_never_lists_loopback() {
        assert!(local_nics().iter().all(|n| n.name != "lo"));
    }
}
