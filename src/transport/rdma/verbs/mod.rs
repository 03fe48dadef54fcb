//! The verbs backend: [`super::nic::Nic`] over libibverbs (loaded at run time, [`sys`]):
//! one RC queue pair, its completion queue and completion channel per link. Device and port
//! selection is in [`device`].

pub(crate) mod device;
pub(crate) mod sys;

use std::ffi::{c_int, c_void};
use std::os::fd::RawFd;
use std::sync::Arc;

use super::nic::{Completion, CompletionKind, Mr, Nic, QpAddress, QpCaps, Remote, Sge};
use crate::error::Error;
use crate::error::Result;
pub use device::open_device;
use device::{DevInner, errno};
use sys::*;

/// Receives are posted with this bit set in their id, so that error completions (whose opcode
/// is undefined) still tell receives from sends.
const RECV_BIT: u64 = 1 << 63;

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
        let fail = |what: &str| Error::system(format!("{what} on {}: {}", dev.name, errno()));
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
                return Err(Error::system(format!(
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
            return Err(Error::system(format!(
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
            return Err(Error::system(format!(
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
            return Err(Error::unavailable(format!(
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
            return Err(Error::system(format!(
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
            return Err(Error::system(format!(
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
            return Err(Error::internal("more than 2 scatter/gather entries"));
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
            return Err(Error::system(format!(
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
            return Err(Error::system(format!(
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
            return Err(Error::system(format!(
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
            return Err(Error::system(format!(
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
