//! This host's NICs: the TCP interfaces (getifaddrs) with the speed `/sys/class/net/*/speed`
//! gives, and RDMA ports (`/sys/class/infiniband/*/ports/*/rate`) where there are any.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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
pub(crate) fn local_nics() -> Vec<Nic> {
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

/// How a host's ranks reach other hosts, as each rank's card tells it: over how many NICs
/// (rails) they spread, and how fast the slowest of them is. The tuner lays rail-aligned
/// schedules on it; every rank takes the job's [`Rails::common`] so that all agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rails {
    /// NICs the host's ranks spread over: the interfaces of `OXCCL_SOCKET_IFNAME` with
    /// `OXCCL_SOCKET_BIND=rail`, else 1 (striping makes the interfaces one wider path).
    pub nics: usize,
    /// The speed of each rail in Mbit/s (the sum of the striped interfaces), where known.
    pub mbps: Option<u64>,
}

impl Rails {
    /// The card's word: `2x1000` (2 rails of 1 Gbit/s), `1x?` (speed unknown).
    pub fn encode(&self) -> String {
        match self.mbps {
            Some(m) => format!("{}x{m}", self.nics),
            None => format!("{}x?", self.nics),
        }
    }

    /// Parses [`Rails::encode`]'s word; never panics.
    pub fn decode(s: &str) -> Option<Rails> {
        let (n, m) = s.split_once('x')?;
        let nics = n.parse().ok().filter(|&n| n > 0 && n <= 64)?;
        let mbps = match m {
            "?" => None,
            m => Some(m.parse().ok().filter(|&m| m > 0)?),
        };
        Some(Rails { nics, mbps })
    }

    /// This rank's rails: it listens on `ips` (its first address, then the extra paths) and
    /// binds rails (`rail`) or stripes. Speeds come from `nics` (the host's, with their
    /// addresses), or from `OXCCL_SOCKET_SPEED` (Mbit/s per interface) where it is set: virtual
    /// and rate-limited interfaces report a speed that is not what they carry.
    pub fn local(rail: bool, ips: &[IpAddr], nics: &[Nic]) -> Rails {
        let forced = speed_override();
        let speeds: Vec<Option<u64>> = ips
            .iter()
            .map(|ip| {
                forced.or_else(|| {
                    nics.iter()
                        .find(|n| n.addr == Some(*ip))
                        .and_then(|n| n.speed_mbps)
                })
            })
            .collect();
        let all: Option<Vec<u64>> = speeds.into_iter().collect();
        let all = all.filter(|v| !v.is_empty());
        if rail && ips.len() > 1 {
            Rails {
                nics: ips.len(),
                mbps: all.and_then(|v| v.into_iter().min()),
            }
        } else {
            Rails {
                nics: 1,
                mbps: all.map(|v| v.into_iter().sum()),
            }
        }
    }

    /// This rank's rails for its card: it listens on `primary` and the `extra` paths'
    /// addresses, rail-bound when `OXCCL_SOCKET_BIND` says `rail` (else striped), at the speed
    /// of this host's interfaces with those addresses.
    pub fn for_card(primary: SocketAddr, extra: &[SocketAddr]) -> Rails {
        let rail = std::env::var("OXCCL_SOCKET_BIND")
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "rail" | "rails"));
        let ips: Vec<IpAddr> = std::iter::once(primary)
            .chain(extra.iter().copied())
            .map(|a| a.ip())
            .collect();
        Rails::local(rail && !extra.is_empty(), &ips, &local_nics())
    }

    /// What every rank can count on: the fewest rails and the slowest speed over `all` ranks'
    /// (unknown when any rank's is).
    pub fn common(all: impl IntoIterator<Item = Rails>) -> Rails {
        let mut out: Option<Rails> = None;
        for r in all {
            out = Some(match out {
                None => r,
                Some(o) => Rails {
                    nics: o.nics.min(r.nics),
                    mbps: o.mbps.zip(r.mbps).map(|(a, b)| a.min(b)),
                },
            });
        }
        out.unwrap_or_default()
    }
}

/// `OXCCL_SOCKET_SPEED`: the speed of each interface in Mbit/s (`1000`), or with a unit
/// (`1gbit`, `10g`, `100m`); unset or unreadable: `None`.
pub(super) fn speed_override() -> Option<u64> {
    parse_speed_setting(&std::env::var("OXCCL_SOCKET_SPEED").ok()?)
}

fn parse_speed_setting(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    let v = v
        .strip_suffix("bit")
        .or(v.strip_suffix("bps"))
        .unwrap_or(&v);
    let (num, mult) = match v.chars().last()? {
        'g' => (&v[..v.len() - 1], 1000.0),
        'm' => (&v[..v.len() - 1], 1.0),
        'k' => (&v[..v.len() - 1], 0.001),
        _ => (v, 1.0),
    };
    let x: f64 = num.trim().parse().ok()?;
    let m = (x * mult).round();
    (m.is_finite() && m >= 1.0).then_some(m as u64)
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
    fn rails_round_trip_and_combine() {
        for r in [
            Rails {
                nics: 2,
                mbps: Some(1000),
            },
            Rails {
                nics: 1,
                mbps: None,
            },
        ] {
            assert_eq!(Rails::decode(&r.encode()), Some(r));
        }
        assert_eq!(Rails::decode("0x5"), None);
        assert_eq!(Rails::decode("2x"), None);
        assert_eq!(Rails::decode("junk"), None);
        let c = Rails::common([
            Rails {
                nics: 2,
                mbps: Some(1000),
            },
            Rails {
                nics: 4,
                mbps: Some(400),
            },
        ]);
        assert_eq!(
            c,
            Rails {
                nics: 2,
                mbps: Some(400)
            }
        );
        let u = Rails::common([
            Rails {
                nics: 2,
                mbps: Some(1000),
            },
            Rails {
                nics: 2,
                mbps: None,
            },
        ]);
        assert_eq!(u.mbps, None);
        assert_eq!(parse_speed_setting("1gbit"), Some(1000));
        assert_eq!(parse_speed_setting("2500"), Some(2500));
        assert_eq!(parse_speed_setting("100m"), Some(100));
        assert_eq!(parse_speed_setting("fast"), None);
    }

    #[test]
    fn rails_count_rail_bound_interfaces_only() {
        let ip = |d| IpAddr::V4(Ipv4Addr::new(10, 0, d, 1));
        let nic = |d, s| Nic {
            name: format!("eth{d}"),
            kind: NicKind::Tcp,
            speed_mbps: s,
            addr: Some(ip(d)),
        };
        let nics = [nic(1, Some(1000)), nic(2, Some(1000))];
        if speed_override().is_none() {
            assert_eq!(
                Rails::local(true, &[ip(1), ip(2)], &nics),
                Rails {
                    nics: 2,
                    mbps: Some(1000)
                }
            );
            // Striped: one path as wide as both.
            assert_eq!(
                Rails::local(false, &[ip(1), ip(2)], &nics),
                Rails {
                    nics: 1,
                    mbps: Some(2000)
                }
            );
            assert_eq!(
                Rails::local(true, &[ip(3)], &nics),
                Rails {
                    nics: 1,
                    mbps: None
                }
            );
        }
    }

    #[test]
    fn local_nics_never_lists_loopback() {
        assert!(local_nics().iter().all(|n| n.name != "lo"));
    }
}
