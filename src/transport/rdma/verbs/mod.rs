//! The verbs backend: [`super::nic::Nic`] over libibverbs (loaded at run time, [`sys`]).
//!
//! Device selection: `OXCCL_IB_HCA` in NCCL's syntax (`mlx5_0:1,mlx5_1` — prefixes of device
//! names, optionally a port; `=` for exact names; `^` to exclude); every active port that
//! matches is a candidate, and rank `r` takes candidate `r % n`. RoCE needs a GID:
//! `OXCCL_IB_GID_INDEX`, or else the first RoCE v2 GID holding an IPv4 address (from sysfs), or
//! else the first non-zero one. The path MTU is the smaller active MTU of the two ports, or
//! `OXCCL_IB_MTU`. `OXCCL_IB_TIMEOUT` (default 18: 4.096 µs x 2^18 ≈ 1.07 s per try),
//! `OXCCL_IB_RETRY_CNT` (7), `OXCCL_IB_SL` and `OXCCL_IB_TC` set the queue pairs' attributes.

pub mod sys;

use std::ffi::{CStr, c_int, c_void};
use std::os::fd::RawFd;
use std::sync::Arc;

use super::nic::{Completion, CompletionKind, Mr, Nic, NicDevice, QpAddress, QpCaps, Remote, Sge};
use crate::Error;
use crate::error::Result;
use sys::*;

/// Receives are posted with this bit set in their id, so that error completions (whose opcode
/// is undefined) still tell receives from sends.
const RECV_BIT: u64 = 1 << 63;

/// One entry of `OXCCL_IB_HCA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HcaItem {
    /// Device name or prefix.
    pub name: String,
    /// Port, if given.
    pub port: Option<u8>,
}

/// A parsed `OXCCL_IB_HCA` (NCCL_IB_HCA's syntax).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HcaSpec {
    /// `^`: the items are excluded rather than selected.
    pub exclude: bool,
    /// `=`: names match exactly rather than by prefix.
    pub exact: bool,
    /// The items (empty: every device).
    pub items: Vec<HcaItem>,
}

impl HcaSpec {
    /// Parses `[^][=]name[:port][,name[:port]...]`.
    pub fn parse(s: &str) -> std::result::Result<HcaSpec, String> {
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
    pub fn selects(&self, dev: &str, port: u8) -> bool {
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
pub fn mtu_enum(bytes: u32) -> Option<u8> {
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
pub fn mtu_bytes(e: u8) -> u32 {
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
struct Tunables {
    timeout: u8,
    retry_cnt: u8,
    sl: u8,
    tc: u8,
    mtu: Option<u8>,
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
struct DevInner {
    lib: &'static Lib,
    ctx: *mut IbvContext,
    pd: *mut IbvPd,
    name: String,
    port: u8,
    lid: u16,
    gid: [u8; 16],
    gid_index: u8,
    link_layer: u8,
    active_mtu: u8,
    tun: Tunables,
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

fn errno() -> std::io::Error {
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
pub fn pick_gid(gids: &[Option<[u8; 16]>], types: &[Option<String>]) -> Option<usize> {
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

/// One RC queue pair with its CQ and completion channel.
struct VerbsNic {
    dev: Arc<DevInner>,
    channel: *mut IbvCompChannel,
    cq: *mut IbvCq,
    qp: *mut IbvQp,
    poll_cq: PollFn,
    req_notify: NotifyFn,
    post_send: SendFn,
    post_recv: RecvFn,
    psn: u32,
    max_inline: usize,
    mrs: Vec<*mut IbvMr>,
    unacked: u32,
    wc: Vec<IbvWc>,
}

type PollFn = unsafe extern "C" fn(*mut IbvCq, c_int, *mut IbvWc) -> c_int;
type NotifyFn = unsafe extern "C" fn(*mut IbvCq, c_int) -> c_int;
type SendFn = unsafe extern "C" fn(*mut IbvQp, *mut IbvSendWr, *mut *mut IbvSendWr) -> c_int;
type RecvFn = unsafe extern "C" fn(*mut IbvQp, *mut IbvRecvWr, *mut *mut IbvRecvWr) -> c_int;

// SAFETY: the queue pair, CQ and channel are used by one thread at a time (&mut self), and
// libibverbs objects may move between threads.
unsafe impl Send for VerbsNic {}

impl VerbsNic {
    fn new(dev: Arc<DevInner>, caps: QpCaps) -> Result<VerbsNic> {
        let lib = dev.lib;
        let fail = |what: &str| Error::System(format!("{what} on {}: {}", dev.name, errno()));
        // SAFETY: the context is open (dev alive).
        let channel = unsafe { (lib.create_comp_channel)(dev.ctx) };
        if channel.is_null() {
            return Err(fail("ibv_create_comp_channel"));
        }
        let mut nic = VerbsNic {
            dev: dev.clone(),
            channel,
            cq: std::ptr::null_mut(),
            qp: std::ptr::null_mut(),
            // Placeholders until the ops table is read below.
            poll_cq: no_poll,
            req_notify: no_notify,
            post_send: no_send,
            post_recv: no_recv,
            psn: (crate::sys::random_u64() & 0xff_ffff) as u32,
            max_inline: 0,
            mrs: Vec::new(),
            unacked: 0,
            wc: vec![IbvWc::default(); 16],
        };
        // SAFETY: channel is live; fcntl on its fd only changes flags.
        unsafe {
            let fd = (*channel).fd;
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let cqe = (caps.send_depth + caps.recv_depth) as c_int;
        // SAFETY: context and channel are live.
        nic.cq = unsafe { (lib.create_cq)(dev.ctx, cqe, std::ptr::null_mut(), channel, 0) };
        if nic.cq.is_null() {
            return Err(fail("ibv_create_cq"));
        }
        // SAFETY: the context is live; `ops` is the table verbs.h's inline functions call
        // through (layout checked by the sys test).
        let ops = unsafe { &(*dev.ctx).ops };
        match (ops.poll_cq, ops.req_notify_cq, ops.post_send, ops.post_recv) {
            (Some(a), Some(b), Some(c), Some(d)) => {
                (nic.poll_cq, nic.req_notify, nic.post_send, nic.post_recv) = (a, b, c, d)
            }
            _ => {
                return Err(Error::System(format!(
                    "{}: the provider's ops table lacks poll/post functions",
                    dev.name
                )));
            }
        }
        for inline in [64u32, 0] {
            let mut attr = IbvQpInitAttr {
                qp_context: std::ptr::null_mut(),
                send_cq: nic.cq,
                recv_cq: nic.cq,
                srq: std::ptr::null_mut(),
                cap: IbvQpCap {
                    max_send_wr: caps.send_depth,
                    max_recv_wr: caps.recv_depth,
                    max_send_sge: 2,
                    max_recv_sge: 1,
                    max_inline_data: inline,
                },
                qp_type: IBV_QPT_RC,
                sq_sig_all: 0,
            };
            // SAFETY: pd and cq are live; attr is a live ibv_qp_init_attr (the library writes
            // the granted capabilities back into it).
            nic.qp = unsafe { (lib.create_qp)(dev.pd, &mut attr) };
            if !nic.qp.is_null() {
                nic.max_inline = attr.cap.max_inline_data as usize;
                break;
            }
        }
        if nic.qp.is_null() {
            return Err(fail("ibv_create_qp"));
        }
        let mut a = IbvQpAttr {
            qp_state: IBV_QPS_INIT,
            pkey_index: 0,
            port_num: dev.port,
            qp_access_flags: (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE) as u32,
            ..IbvQpAttr::default()
        };
        let mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
        // SAFETY: qp is live; `a` is a live ibv_qp_attr.
        let rc = unsafe { (lib.modify_qp)(nic.qp, &mut a, mask) };
        if rc != 0 {
            return Err(Error::System(format!(
                "ibv_modify_qp(INIT) on {}: {}",
                dev.name,
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        Ok(nic)
    }

    fn qpn(&self) -> u32 {
        // SAFETY: qp is live while self is.
        unsafe { (*self.qp).qp_num }
    }
}

unsafe extern "C" fn no_poll(_: *mut IbvCq, _: c_int, _: *mut IbvWc) -> c_int {
    -1
}
unsafe extern "C" fn no_notify(_: *mut IbvCq, _: c_int) -> c_int {
    -1
}
unsafe extern "C" fn no_send(_: *mut IbvQp, _: *mut IbvSendWr, _: *mut *mut IbvSendWr) -> c_int {
    libc::EINVAL
}
unsafe extern "C" fn no_recv(_: *mut IbvQp, _: *mut IbvRecvWr, _: *mut *mut IbvRecvWr) -> c_int {
    libc::EINVAL
}

impl Nic for VerbsNic {
    unsafe fn register(&mut self, addr: *mut u8, len: usize, remote_write: bool) -> Result<Mr> {
        let access = if remote_write {
            IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE
        } else {
            0
        };
        // SAFETY: the pd is live; the caller keeps the memory allocated while registered.
        let mr = unsafe { (self.dev.lib.reg_mr)(self.dev.pd, addr.cast::<c_void>(), len, access) };
        if mr.is_null() {
            let e = errno();
            return Err(Error::System(format!(
                "ibv_reg_mr of {len} bytes on {}: {e}{}",
                self.dev.name,
                if e.raw_os_error() == Some(libc::ENOMEM) {
                    " (raise the locked-memory limit: ulimit -l unlimited)"
                } else {
                    ""
                }
            )));
        }
        self.mrs.push(mr);
        // SAFETY: mr is a live ibv_mr returned just now.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        Ok(Mr {
            addr: addr as u64,
            len,
            lkey,
            rkey: if remote_write { rkey } else { 0 },
            handle: mr as u64,
        })
    }

    fn deregister(&mut self, mr: &Mr) {
        let p = mr.handle as usize as *mut IbvMr;
        if let Some(i) = self.mrs.iter().position(|&m| m == p) {
            self.mrs.swap_remove(i);
            // SAFETY: p is a registration this NIC made and has not released.
            unsafe { (self.dev.lib.dereg_mr)(p) };
        }
    }

    fn address(&self) -> QpAddress {
        QpAddress {
            lid: self.dev.lid,
            gid: self.dev.gid,
            qpn: self.qpn(),
            psn: self.psn,
            mtu: self
                .dev
                .tun
                .mtu
                .unwrap_or(self.dev.active_mtu)
                .min(self.dev.active_mtu),
            link_layer: self.dev.link_layer,
        }
    }

    fn connect(&mut self, r: &QpAddress) -> Result<()> {
        let d = &self.dev;
        if r.link_layer != d.link_layer {
            return Err(Error::Unavailable(format!(
                "RDMA: this rank's {} is {} but the peer's port is {}",
                d.name,
                if d.link_layer == IBV_LINK_LAYER_ETHERNET {
                    "RoCE"
                } else {
                    "InfiniBand"
                },
                if r.link_layer == IBV_LINK_LAYER_ETHERNET {
                    "RoCE"
                } else {
                    "InfiniBand"
                },
            )));
        }
        let mine = self.address();
        // RoCE always routes by GID; InfiniBand by LID within a subnet, by GID across subnets.
        let global = d.link_layer == IBV_LINK_LAYER_ETHERNET || r.gid[..8] != d.gid[..8];
        let mut a = IbvQpAttr {
            qp_state: IBV_QPS_RTR,
            path_mtu: u32::from(mine.mtu.min(r.mtu)),
            dest_qp_num: r.qpn,
            rq_psn: r.psn,
            max_dest_rd_atomic: 1,
            min_rnr_timer: 12,
            ah_attr: IbvAhAttr {
                grh: IbvGlobalRoute {
                    dgid: IbvGid { raw: r.gid },
                    flow_label: 0,
                    sgid_index: d.gid_index,
                    hop_limit: 255,
                    traffic_class: d.tun.tc,
                },
                dlid: r.lid,
                sl: d.tun.sl,
                src_path_bits: 0,
                static_rate: 0,
                is_global: u8::from(global),
                port_num: d.port,
            },
            ..IbvQpAttr::default()
        };
        let mask = IBV_QP_STATE
            | IBV_QP_AV
            | IBV_QP_PATH_MTU
            | IBV_QP_DEST_QPN
            | IBV_QP_RQ_PSN
            | IBV_QP_MAX_DEST_RD_ATOMIC
            | IBV_QP_MIN_RNR_TIMER;
        // SAFETY: qp is live; `a` is a live ibv_qp_attr.
        let rc = unsafe { (d.lib.modify_qp)(self.qp, &mut a, mask) };
        if rc != 0 {
            return Err(Error::System(format!(
                "ibv_modify_qp(RTR) on {} to QP {:#x}: {} (check OXCCL_IB_GID_INDEX and that both ports share a fabric)",
                d.name,
                r.qpn,
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        let mut a = IbvQpAttr {
            qp_state: IBV_QPS_RTS,
            timeout: d.tun.timeout,
            retry_cnt: d.tun.retry_cnt,
            rnr_retry: 7,
            sq_psn: self.psn,
            max_rd_atomic: 1,
            ..IbvQpAttr::default()
        };
        let mask = IBV_QP_STATE
            | IBV_QP_TIMEOUT
            | IBV_QP_RETRY_CNT
            | IBV_QP_RNR_RETRY
            | IBV_QP_SQ_PSN
            | IBV_QP_MAX_QP_RD_ATOMIC;
        // SAFETY: as above.
        let rc = unsafe { (d.lib.modify_qp)(self.qp, &mut a, mask) };
        if rc != 0 {
            return Err(Error::System(format!(
                "ibv_modify_qp(RTS) on {}: {}",
                d.name,
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        Ok(())
    }

    unsafe fn post_write(
        &mut self,
        wr_id: u64,
        local: &[Sge],
        remote: Remote,
        imm: Option<u32>,
    ) -> Result<()> {
        let mut sg = [IbvSge::default(); 2];
        if local.len() > sg.len() {
            return Err(Error::Internal("more than 2 scatter/gather entries".into()));
        }
        let mut total = 0usize;
        for (d, s) in sg.iter_mut().zip(local) {
            *d = IbvSge {
                addr: s.addr,
                length: s.len,
                lkey: s.lkey,
            };
            total += s.len as usize;
        }
        let mut flags = IBV_SEND_SIGNALED;
        if total > 0 && total <= self.max_inline {
            flags |= IBV_SEND_INLINE;
        }
        // SAFETY: an all-zero ibv_send_wr is valid (null pointers, zero counts).
        let mut wr: IbvSendWr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = if local.is_empty() {
            std::ptr::null_mut()
        } else {
            sg.as_mut_ptr()
        };
        wr.num_sge = local.len() as c_int;
        wr.opcode = if imm.is_some() {
            IBV_WR_RDMA_WRITE_WITH_IMM
        } else {
            IBV_WR_RDMA_WRITE
        };
        wr.send_flags = flags;
        wr.imm_data = imm.unwrap_or(0).to_be();
        wr.rdma_remote_addr = remote.addr;
        wr.rdma_rkey = remote.rkey;
        let mut bad: *mut IbvSendWr = std::ptr::null_mut();
        // SAFETY: qp is live; wr and sg live across the call (the provider copies the request
        // into its queue, and inline data right away); the caller keeps the memory the entries
        // name valid until the completion (this function's contract).
        let rc = unsafe { (self.post_send)(self.qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::System(format!(
                "ibv_post_send on {}: {}",
                self.dev.name,
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        Ok(())
    }

    fn post_recv(&mut self, wr_id: u64) -> Result<()> {
        let mut wr = IbvRecvWr {
            wr_id: wr_id | RECV_BIT,
            next: std::ptr::null_mut(),
            sg_list: std::ptr::null_mut(),
            num_sge: 0,
        };
        let mut bad: *mut IbvRecvWr = std::ptr::null_mut();
        // SAFETY: qp is live; a zero-entry receive names no memory.
        let rc = unsafe { (self.post_recv)(self.qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::System(format!(
                "ibv_post_recv on {}: {}",
                self.dev.name,
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        Ok(())
    }

    fn poll(&mut self, out: &mut [Completion]) -> Result<usize> {
        let want = out.len().min(self.wc.len()) as c_int;
        // SAFETY: cq is live; wc has room for `want` entries.
        let n = unsafe { (self.poll_cq)(self.cq, want, self.wc.as_mut_ptr()) };
        if n < 0 {
            return Err(Error::System(format!(
                "ibv_poll_cq on {}: {n}",
                self.dev.name
            )));
        }
        for (o, w) in out.iter_mut().zip(&self.wc[..n as usize]) {
            let recv = w.wr_id & RECV_BIT != 0;
            *o = Completion {
                wr_id: w.wr_id & !RECV_BIT,
                status: w.status,
                kind: if recv {
                    CompletionKind::RecvImm
                } else {
                    CompletionKind::Send
                },
                imm: u32::from_be(w.imm_data),
                vendor_err: w.vendor_err,
            };
        }
        Ok(n as usize)
    }

    fn arm(&mut self) -> Result<()> {
        // SAFETY: cq is live.
        let rc = unsafe { (self.req_notify)(self.cq, 0) };
        if rc != 0 {
            return Err(Error::System(format!(
                "ibv_req_notify_cq on {}: {rc}",
                self.dev.name
            )));
        }
        Ok(())
    }

    fn drain_events(&mut self) {
        loop {
            let mut cq: *mut IbvCq = std::ptr::null_mut();
            let mut ctx: *mut c_void = std::ptr::null_mut();
            // SAFETY: the channel is live and non-blocking; the out-parameters are live.
            if unsafe { (self.dev.lib.get_cq_event)(self.channel, &mut cq, &mut ctx) } != 0 {
                break;
            }
            self.unacked += 1;
        }
        if self.unacked >= 64 {
            // SAFETY: cq is live and had this many events delivered.
            unsafe { (self.dev.lib.ack_cq_events)(self.cq, self.unacked) };
            self.unacked = 0;
        }
    }

    fn completion_fd(&self) -> Option<RawFd> {
        // SAFETY: the channel is live while self is.
        Some(unsafe { (*self.channel).fd })
    }

    fn max_inline(&self) -> usize {
        self.max_inline
    }
}

impl Drop for VerbsNic {
    fn drop(&mut self) {
        let lib = self.dev.lib;
        // SAFETY: each object was created by this NIC and is released once, in dependency
        // order: the queue pair (no more DMA), the registrations, then the CQ (after acking its
        // events, which ibv_destroy_cq waits for) and the channel.
        unsafe {
            if !self.qp.is_null() {
                (lib.destroy_qp)(self.qp);
            }
            for mr in self.mrs.drain(..) {
                (lib.dereg_mr)(mr);
            }
            if !self.cq.is_null() {
                self.drain_events();
                if self.unacked > 0 {
                    (lib.ack_cq_events)(self.cq, self.unacked);
                }
                (lib.destroy_cq)(self.cq);
            }
            (lib.destroy_comp_channel)(self.channel);
        }
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
