//! Device and port selection for the verbs backend.
//!
//! `OXCCL_IB_HCA` in NCCL's syntax (`mlx5_0:1,mlx5_1` — prefixes of device names, optionally a
//! port; `=` for exact names; `^` to exclude); every active port that matches is a candidate,
//! and rank `r` takes candidate `r % n`. RoCE needs a GID: `OXCCL_IB_GID_INDEX`, or else the
//! first RoCE v2 GID holding an IPv4 address (from sysfs), or else the first non-zero one. The
//! path MTU is the smaller active MTU of the two ports, or `OXCCL_IB_MTU`. `OXCCL_IB_TIMEOUT`
//! (default 18: 4.096 µs x 2^18 ≈ 1.07 s per try), `OXCCL_IB_RETRY_CNT` (7), `OXCCL_IB_SL` and
//! `OXCCL_IB_TC` set the queue pairs' attributes.

use std::ffi::{CStr, c_int};
use std::sync::Arc;

use super::VerbsNic;
use super::sys::*;
use crate::error::Result;
use crate::transport::rdma::nic::{Nic, NicDevice, QpCaps};

/// One entry of `OXCCL_IB_HCA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HcaItem {
    /// Device name or prefix.
    pub name: String,
    /// Port, if given.
    pub port: Option<u8>,
}

/// A parsed `OXCCL_IB_HCA` (NCCL_IB_HCA's syntax).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct HcaSpec {
    /// `^`: the items are excluded rather than selected.
    pub exclude: bool,
    /// `=`: names match exactly rather than by prefix.
    pub exact: bool,
    /// The items (empty: every device).
    pub items: Vec<HcaItem>,
}

impl HcaSpec {
    /// Parses `[^][=]name[:port][,name[:port]...]`.
    pub(crate) fn parse(s: &str) -> std::result::Result<HcaSpec, String> {
        let mut s = s.trim();
        let mut spec = HcaSpec::default();
        if let Some(r) = s.strip_prefix('^') {
            spec.exclude = true;
            s = r;
        }
        if let Some(r) = s.strip_prefix('=') {
            spec.exact = true;
            s = r;
        }
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, port) = match part.split_once(':') {
                Some((n, p)) => (
                    n.trim(),
                    Some(
                        p.trim()
                            .parse::<u8>()
                            .map_err(|_| format!("OXCCL_IB_HCA: bad port {p:?} in {part:?}"))?,
                    ),
                ),
                None => (part, None),
            };
            if name.is_empty() {
                return Err(format!("OXCCL_IB_HCA: empty device name in {part:?}"));
            }
            spec.items.push(HcaItem {
                name: name.to_string(),
                port,
            });
        }
        Ok(spec)
    }

    /// Whether port `port` of device `dev` is selected.
    pub(crate) fn selects(&self, dev: &str, port: u8) -> bool {
        if self.items.is_empty() {
            return true;
        }
        let hit = self.items.iter().any(|i| {
            let name_ok = if self.exact {
                dev == i.name
            } else {
                dev.starts_with(&i.name)
            };
            name_ok && i.port.is_none_or(|p| p == port)
        });
        hit != self.exclude
    }
}

/// `ibv_mtu` from bytes.
pub(crate) fn mtu_enum(bytes: u32) -> Option<u8> {
    match bytes {
        256 => Some(1),
        512 => Some(2),
        1024 => Some(3),
        2048 => Some(4),
        4096 => Some(5),
        _ => None,
    }
}

/// Bytes from `ibv_mtu`.
pub(crate) fn mtu_bytes(e: u8) -> u32 {
    128 << e.clamp(1, 5)
}

fn env_num<T: std::str::FromStr>(name: &str) -> std::result::Result<Option<T>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a valid value")),
        _ => Ok(None),
    }
}

/// Queue pair attributes from the environment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tunables {
    pub(super) timeout: u8,
    pub(super) retry_cnt: u8,
    pub(super) sl: u8,
    pub(super) tc: u8,
    pub(super) mtu: Option<u8>,
}

impl Tunables {
    fn from_env() -> std::result::Result<Tunables, String> {
        let mtu = match env_num::<u32>("OXCCL_IB_MTU")? {
            None => None,
            Some(b) => Some(mtu_enum(b).ok_or_else(|| {
                format!("OXCCL_IB_MTU={b}: expected 256, 512, 1024, 2048 or 4096")
            })?),
        };
        Ok(Tunables {
            timeout: env_num("OXCCL_IB_TIMEOUT")?.unwrap_or(18).min(31),
            retry_cnt: env_num("OXCCL_IB_RETRY_CNT")?.unwrap_or(7).min(7),
            sl: env_num("OXCCL_IB_SL")?.unwrap_or(0).min(15),
            tc: env_num("OXCCL_IB_TC")?.unwrap_or(0),
            mtu,
        })
    }
}

/// An opened device port with its protection domain.
pub(super) struct DevInner {
    pub(super) lib: &'static Lib,
    pub(super) ctx: *mut IbvContext,
    pub(super) pd: *mut IbvPd,
    pub(super) name: String,
    pub(super) port: u8,
    pub(super) lid: u16,
    pub(super) gid: [u8; 16],
    pub(super) gid_index: u8,
    pub(super) link_layer: u8,
    pub(super) active_mtu: u8,
    pub(super) tun: Tunables,
}

// SAFETY: libibverbs contexts and protection domains may be used from any thread (the library
// locks internally); the raw pointers are owned by this value and freed in Drop, after every
// queue pair (which holds an Arc to it) is gone.
unsafe impl Send for DevInner {}
// SAFETY: as above; &self methods only create objects under the context.
unsafe impl Sync for DevInner {}

/// The device as the link layer sees it (queue pairs share its inner part).
struct VerbsDevice(Arc<DevInner>);

impl Drop for DevInner {
    fn drop(&mut self) {
        // SAFETY: pd and ctx were created by this library and are released once, after every
        // object made from them (queue pairs hold an Arc to this device).
        unsafe {
            (self.lib.dealloc_pd)(self.pd);
            (self.lib.close_device)(self.ctx);
        }
    }
}

pub(super) fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Reads a GID's type from sysfs (`RoCE v2`, `IB/RoCE v1`), if the kernel says.
fn gid_type(dev: &str, port: u8, index: usize) -> Option<String> {
    std::fs::read_to_string(format!(
        "/sys/class/infiniband/{dev}/ports/{port}/gid_attrs/types/{index}"
    ))
    .ok()
    .map(|s| s.trim().to_string())
}

/// Picks a GID index on a RoCE port: RoCE v2 with an IPv4-mapped address first, then RoCE v2,
/// then the first non-zero GID. `gids[i]` is GID `i` (None where the query failed).
pub(crate) fn pick_gid(gids: &[Option<[u8; 16]>], types: &[Option<String>]) -> Option<usize> {
    let nonzero = |g: &Option<[u8; 16]>| g.is_some_and(|g| g.iter().any(|&b| b != 0));
    let v4 = |g: &Option<[u8; 16]>| {
        g.is_some_and(|g| g[..10].iter().all(|&b| b == 0) && g[10] == 0xff && g[11] == 0xff)
    };
    let v2 = |i: usize| {
        types
            .get(i)
            .and_then(|t| t.as_deref())
            .is_some_and(|t| t.eq_ignore_ascii_case("RoCE v2"))
    };
    (0..gids.len())
        .find(|&i| v2(i) && v4(&gids[i]))
        .or_else(|| (0..gids.len()).find(|&i| v2(i) && nonzero(&gids[i])))
        .or_else(|| (0..gids.len()).find(|&i| nonzero(&gids[i])))
}

/// Opens the device port this rank uses, as the environment selects. `Err` says why there is
/// none (for the INFO line or the Unavailable error).
pub fn open_device(rank: usize) -> std::result::Result<Arc<dyn NicDevice>, String> {
    let lib = Lib::get()?;
    let spec = HcaSpec::parse(&std::env::var("OXCCL_IB_HCA").unwrap_or_default())?;
    let tun = Tunables::from_env()?;
    let gid_index: Option<u8> = env_num("OXCCL_IB_GID_INDEX")?;
    let mut n: c_int = 0;
    // SAFETY: `n` is a live out-parameter; the list is freed below.
    let list = unsafe { (lib.get_device_list)(&mut n) };
    if list.is_null() {
        let e = errno();
        return Err(if e.raw_os_error() == Some(libc::ENOSYS) {
            "no RDMA device: this kernel has no RDMA (uverbs) support (ibv_get_device_list: ENOSYS)"
                .to_string()
        } else {
            format!("ibv_get_device_list failed: {e}")
        });
    }
    let devs: Vec<*mut IbvDevice> = (0..n.max(0) as usize)
        // SAFETY: the list has n entries.
        .map(|i| unsafe { *list.add(i) })
        .collect();
    let mut seen: Vec<String> = Vec::new();
    let mut candidates: Vec<(usize, String, u8)> = Vec::new();
    for (i, &d) in devs.iter().enumerate() {
        // SAFETY: `d` comes from the live device list; the name is a NUL-terminated string
        // owned by the device.
        let name = unsafe { CStr::from_ptr((lib.get_device_name)(d)) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above; closed right after the query.
        let ctx = unsafe { (lib.open_device)(d) };
        if ctx.is_null() {
            seen.push(format!("{name} (cannot open: {})", errno()));
            continue;
        }
        for port in 1..=16u8 {
            let mut a = IbvPortAttr::default();
            // SAFETY: ctx is open; `a` is a live, zeroed ibv_port_attr (the exported function
            // fills its compatible prefix).
            if unsafe { (lib.query_port)(ctx, port, &mut a) } != 0 {
                break;
            }
            let active = a.state == IBV_PORT_ACTIVE;
            seen.push(format!(
                "{name}:{port} ({})",
                if active { "active" } else { "down" }
            ));
            if active && spec.selects(&name, port) {
                candidates.push((i, name.clone(), port));
            }
        }
        // SAFETY: opened above, no objects made from it.
        unsafe { (lib.close_device)(ctx) };
    }
    let pick = (!candidates.is_empty()).then(|| candidates[rank % candidates.len()].clone());
    let r = match pick {
        None if devs.is_empty() => Err("no RDMA device found (libibverbs lists none)".to_string()),
        None => Err(format!(
            "no active RDMA port matches OXCCL_IB_HCA={:?} (found: {})",
            std::env::var("OXCCL_IB_HCA").unwrap_or_default(),
            seen.join(", ")
        )),
        Some((i, name, port)) => open_port(lib, devs[i], name, port, gid_index, tun),
    };
    // SAFETY: the list came from get_device_list; the opened context keeps its device alive.
    unsafe { (lib.free_device_list)(list) };
    r
}

fn open_port(
    lib: &'static Lib,
    d: *mut IbvDevice,
    name: String,
    port: u8,
    gid_index: Option<u8>,
    tun: Tunables,
) -> std::result::Result<Arc<dyn NicDevice>, String> {
    // SAFETY: `d` is from the live device list.
    let ctx = unsafe { (lib.open_device)(d) };
    if ctx.is_null() {
        return Err(format!("ibv_open_device({name}): {}", errno()));
    }
    let close = |why: String| {
        // SAFETY: ctx was opened above and nothing else uses it.
        unsafe { (lib.close_device)(ctx) };
        Err(why)
    };
    let mut a = IbvPortAttr::default();
    // SAFETY: as in open_device.
    if unsafe { (lib.query_port)(ctx, port, &mut a) } != 0 {
        return close(format!("ibv_query_port({name}:{port}): {}", errno()));
    }
    let link_layer = if a.link_layer == IBV_LINK_LAYER_ETHERNET {
        IBV_LINK_LAYER_ETHERNET
    } else {
        IBV_LINK_LAYER_INFINIBAND
    };
    let query = |i: usize| {
        let mut g = IbvGid::default();
        // SAFETY: `g` is a live union ibv_gid.
        (unsafe { (lib.query_gid)(ctx, port, i as c_int, &mut g) } == 0).then_some(g.raw)
    };
    let index = match gid_index {
        Some(i) => i as usize,
        None if link_layer == IBV_LINK_LAYER_ETHERNET => {
            let len = (a.gid_tbl_len.max(0) as usize).min(256);
            let gids: Vec<_> = (0..len).map(query).collect();
            let types: Vec<_> = (0..len).map(|i| gid_type(&name, port, i)).collect();
            match pick_gid(&gids, &types) {
                Some(i) => i,
                None => {
                    return close(format!(
                        "{name}:{port} is a RoCE port without a usable GID; set OXCCL_IB_GID_INDEX"
                    ));
                }
            }
        }
        None => 0,
    };
    let Some(gid) = query(index) else {
        return close(format!(
            "ibv_query_gid({name}:{port}, {index}): {}",
            errno()
        ));
    };
    // SAFETY: ctx is open.
    let pd = unsafe { (lib.alloc_pd)(ctx) };
    if pd.is_null() {
        return close(format!("ibv_alloc_pd({name}): {}", errno()));
    }
    Ok(Arc::new(VerbsDevice(Arc::new(DevInner {
        lib,
        ctx,
        pd,
        name,
        port,
        lid: a.lid,
        gid,
        gid_index: index as u8,
        link_layer,
        active_mtu: (a.active_mtu as u8).clamp(1, 5),
        tun,
    }))))
}

impl NicDevice for VerbsDevice {
    fn name(&self) -> String {
        format!("{}:{}", self.0.name, self.0.port)
    }

    fn describe(&self) -> String {
        let d = &self.0;
        let ll = if d.link_layer == IBV_LINK_LAYER_ETHERNET {
            format!("RoCE, GID index {}", d.gid_index)
        } else {
            format!("InfiniBand, LID {}", d.lid)
        };
        format!(
            "{}:{} ({ll}, MTU {})",
            d.name,
            d.port,
            mtu_bytes(d.tun.mtu.unwrap_or(d.active_mtu).min(d.active_mtu))
        )
    }

    fn open(&self, caps: QpCaps) -> Result<Box<dyn Nic>> {
        VerbsNic::new(self.0.clone(), caps).map(|n| Box::new(n) as Box<dyn Nic>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hca_spec_follows_nccl() {
        let all = HcaSpec::parse("").unwrap();
        assert!(all.selects("mlx5_0", 1) && all.selects("bnxt_re0", 2));
        let s = HcaSpec::parse("mlx5_0:1,mlx5_1").unwrap();
        assert!(s.selects("mlx5_0", 1) && !s.selects("mlx5_0", 2));
        assert!(
            s.selects("mlx5_1", 2) && s.selects("mlx5_10", 1),
            "prefix match"
        );
        assert!(!s.selects("mlx4_0", 1));
        let e = HcaSpec::parse("=mlx5_1").unwrap();
        assert!(e.selects("mlx5_1", 1) && !e.selects("mlx5_10", 1));
        let x = HcaSpec::parse("^mlx5_0").unwrap();
        assert!(!x.selects("mlx5_0", 1) && x.selects("mlx5_1", 1));
        let xe = HcaSpec::parse("^=mlx5_1:2").unwrap();
        assert!(xe.selects("mlx5_1", 1) && !xe.selects("mlx5_1", 2) && xe.selects("mlx5_10", 2));
        assert!(HcaSpec::parse("mlx5_0:x").is_err());
        assert!(HcaSpec::parse(":1").is_err());
    }

    #[test]
    fn gid_choice_prefers_roce_v2_ipv4() {
        let z = Some([0u8; 16]);
        let mut link_local = [0u8; 16];
        link_local[0] = 0xfe;
        link_local[1] = 0x80;
        link_local[15] = 1;
        let mut v4 = [0u8; 16];
        v4[10] = 0xff;
        v4[11] = 0xff;
        v4[12..].copy_from_slice(&[10, 0, 0, 7]);
        let t = |s: &str| Some(s.to_string());
        let gids = [Some(link_local), Some(link_local), Some(v4), Some(v4)];
        let types = [t("IB/RoCE v1"), t("RoCE v2"), t("IB/RoCE v1"), t("RoCE v2")];
        assert_eq!(pick_gid(&gids, &types), Some(3));
        assert_eq!(pick_gid(&gids[..3], &types[..3]), Some(1));
        assert_eq!(pick_gid(&[z, Some(link_local)], &[None, None]), Some(1));
        assert_eq!(pick_gid(&[z, None], &[None, None]), None);
    }

    #[test]
    fn mtu_conversions() {
        for b in [256, 512, 1024, 2048, 4096] {
            assert_eq!(mtu_bytes(mtu_enum(b).unwrap()), b);
        }
        assert_eq!(mtu_enum(9000), None);
    }

    /// Where libibverbs is installed but there is no device (this machine), opening fails with
    /// an explanation instead of crashing; where the library is missing, likewise.
    #[test]
    fn no_device_is_an_explanation() {
        match open_device(0) {
            Ok(d) => eprintln!("an RDMA device is present here: {}", d.name()),
            Err(why) => assert!(!why.is_empty()),
        }
    }
}
