//! Picking the local address to listen on: interfaces (getifaddrs), `OXCCL_SOCKET_IFNAME`.

use std::net::{IpAddr, Ipv4Addr};

use crate::error::{Error, Result};

/// One IPv4 address of a local network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interface {
    /// The interface name (`eth0`, `ib0`, `lo`...).
    pub name: String,
    /// Its IPv4 address.
    pub addr: Ipv4Addr,
    /// Whether the interface is up (`IFF_UP`).
    pub up: bool,
    /// Whether it is a loopback interface (`IFF_LOOPBACK`).
    pub loopback: bool,
}

/// Every IPv4 address of every local interface, in the kernel's order.
pub(crate) fn ipv4_interfaces() -> Result<Vec<Interface>> {
    let list = crate::sys::ipv4_interfaces().map_err(|e| Error::io("getifaddrs", e))?;
    Ok(list
        .into_iter()
        .map(|i| Interface {
            name: i.name,
            addr: i.addr,
            up: i.up,
            loopback: i.loopback,
        })
        .collect())
}

/// Interface name prefixes skipped when choosing automatically (container and VM bridges).
const SKIPPED_PREFIXES: [&str; 4] = ["docker", "virbr", "veth", "br-"];

/// Chooses the IPv4 address to listen on from `ifaces`.
///
/// `ifname` follows `OXCCL_SOCKET_IFNAME` (the syntax of `NCCL_SOCKET_IFNAME`): a comma-separated
/// list of interface names, each matched as a prefix (`eth` matches `eth0`), or exactly when the
/// whole list starts with `=`; a list starting with `^` excludes those names instead. The first
/// matching interface in kernel order wins. Without `ifname`, the first up, non-loopback
/// interface whose name does not start with docker/virbr/veth/br- wins, else 127.0.0.1.
pub(crate) fn choose_ipv4(ifaces: &[Interface], ifname: Option<&str>) -> Result<Ipv4Addr> {
    let Some(spec) = ifname.map(str::trim).filter(|s| !s.is_empty()) else {
        let auto = ifaces.iter().find(|i| {
            i.up && !i.loopback && !SKIPPED_PREFIXES.iter().any(|p| i.name.starts_with(p))
        });
        return Ok(auto.map(|i| i.addr).unwrap_or(Ipv4Addr::LOCALHOST));
    };
    let (exclude, rest) = match spec.strip_prefix('^') {
        Some(r) => (true, r),
        None => (false, spec),
    };
    let (exact, rest) = match rest.strip_prefix('=') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let names: Vec<&str> = rest
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let matches = |n: &str| {
        names
            .iter()
            .any(|p| if exact { n == *p } else { n.starts_with(p) })
    };
    let found = ifaces.iter().find(|i| {
        if exclude {
            !matches(&i.name) && !i.loopback
        } else {
            matches(&i.name)
        }
    });
    match found {
        Some(i) => Ok(i.addr),
        None => {
            let mut avail: Vec<String> = ifaces
                .iter()
                .map(|i| format!("{} ({})", i.name, i.addr))
                .collect();
            avail.dedup();
            Err(Error::invalid_argument(format!(
                "OXCCL_SOCKET_IFNAME={spec} matches no interface with an IPv4 address; \
                 interfaces here: [{}]; set it to one of them or unset it",
                avail.join(", ")
            )))
        }
    }
}

/// The paths for multi-path TCP: when `ifname` is a list of two or more entries (`eth0,eth1`,
/// or `=eth0,eth1`; not an exclusion), the address of the first interface matching each
/// entry, in the list's order, if at least two distinct interfaces match. Otherwise empty
/// (one path: links use [`choose_ipv4`]'s address alone).
pub(crate) fn choose_paths(ifaces: &[Interface], ifname: Option<&str>) -> Vec<Ipv4Addr> {
    let Some(spec) = ifname.map(str::trim).filter(|s| !s.starts_with('^')) else {
        return Vec::new();
    };
    let (exact, rest) = match spec.strip_prefix('=') {
        Some(r) => (true, r),
        None => (false, spec),
    };
    let mut names: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for want in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let found = ifaces.iter().find(|i| {
            !names.contains(&i.name.as_str())
                && if exact {
                    i.name == want
                } else {
                    i.name.starts_with(want)
                }
        });
        if let Some(i) = found {
            names.push(&i.name);
            out.push(i.addr);
        }
    }
    if out.len() < 2 { Vec::new() } else { out }
}

/// [`choose_paths`] for this machine and `OXCCL_SOCKET_IFNAME`.
pub(crate) fn local_paths() -> Result<Vec<IpAddr>> {
    let ifname = std::env::var("OXCCL_SOCKET_IFNAME").ok();
    if !ifname.as_deref().is_some_and(|s| s.contains(',')) {
        return Ok(Vec::new());
    }
    let ifaces = ipv4_interfaces()?;
    Ok(choose_paths(&ifaces, ifname.as_deref())
        .into_iter()
        .map(IpAddr::V4)
        .collect())
}

/// The local IPv4 address to listen on, from this machine's interfaces and
/// `OXCCL_SOCKET_IFNAME` (see [`choose_ipv4`]).
pub(crate) fn local_ipv4() -> Result<IpAddr> {
    let ifname = std::env::var("OXCCL_SOCKET_IFNAME").ok();
    let ifaces = ipv4_interfaces()?;
    choose_ipv4(&ifaces, ifname.as_deref()).map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, a: [u8; 4], up: bool, lo: bool) -> Interface {
        Interface {
            name: name.into(),
            addr: Ipv4Addr::from(a),
            up,
            loopback: lo,
        }
    }

    fn sample() -> Vec<Interface> {
        vec![
            iface("lo", [127, 0, 0, 1], true, true),
            iface("docker0", [172, 17, 0, 1], true, false),
            iface("eth0", [10, 0, 0, 5], false, false),
            iface("eth1", [10, 0, 1, 5], true, false),
            iface("ib0", [192, 168, 0, 5], true, false),
        ]
    }

    #[test]
    fn automatic_choice_skips_loopback_down_and_bridges() {
        assert_eq!(
            choose_ipv4(&sample(), None).unwrap(),
            Ipv4Addr::new(10, 0, 1, 5)
        );
        let only_lo = vec![iface("lo", [127, 0, 0, 1], true, true)];
        assert_eq!(choose_ipv4(&only_lo, None).unwrap(), Ipv4Addr::LOCALHOST);
        assert_eq!(choose_ipv4(&[], Some("  ")).unwrap(), Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn ifname_prefix_exact_and_exclude() {
        let s = sample();
        assert_eq!(
            choose_ipv4(&s, Some("ib")).unwrap(),
            Ipv4Addr::new(192, 168, 0, 5)
        );
        assert_eq!(
            choose_ipv4(&s, Some("eth")).unwrap(),
            Ipv4Addr::new(10, 0, 0, 5)
        );
        assert_eq!(
            choose_ipv4(&s, Some("=eth1")).unwrap(),
            Ipv4Addr::new(10, 0, 1, 5)
        );
        assert_eq!(
            choose_ipv4(&s, Some("^docker,eth")).unwrap(),
            Ipv4Addr::new(192, 168, 0, 5)
        );
        let e = choose_ipv4(&s, Some("=eth")).unwrap_err();
        assert!(
            e.kind() == crate::error::ErrorKind::InvalidArgument && {
                let m = e.message();
                m.contains("eth1 (10.0.1.5)")
            },
            "{e}"
        );
    }

    #[test]
    fn paths_need_two_listed_interfaces() {
        let s = sample();
        assert_eq!(
            choose_paths(&s, Some("eth1,ib")),
            vec![Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(192, 168, 0, 5)]
        );
        assert_eq!(
            choose_paths(&s, Some("eth,eth")),
            vec![Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 1, 5)]
        );
        assert!(choose_paths(&s, Some("eth1")).is_empty());
        assert!(choose_paths(&s, Some("eth1,nope")).is_empty());
        assert!(choose_paths(&s, Some("^docker,lo")).is_empty());
        assert!(choose_paths(&s, None).is_empty());
    }

    #[test]
    fn real_interfaces_include_loopback() {
        let ifs = ipv4_interfaces().unwrap();
        assert!(ifs.iter().any(|i| i.addr == Ipv4Addr::LOCALHOST), "{ifs:?}");
    }
}
