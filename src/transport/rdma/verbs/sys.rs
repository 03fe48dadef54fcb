//! Minimal libibverbs bindings, loaded at run time with dlopen (so a binary built with the
//! `rdma` feature runs where there is no libibverbs at all).
//!
//! Only the structs and fields oxccl touches are spelled out; the rest is padding whose size the
//! layout test checks against the system's `<infiniband/verbs.h>` (rdma-core's ABI, stable since
//! libibverbs 1.1). `ibv_post_send`, `ibv_post_recv`, `ibv_poll_cq` and `ibv_req_notify_cq` are
//! inline functions in verbs.h that call through the context's `ops` table; [`IbvContextOps`] reads those
//! pointers from `ibv_context.ops` as the header does. `ibv_query_port` is a macro around the
//! exported function, which fills the (compatible) prefix of `ibv_port_attr`.

#![allow(missing_docs)]

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

/// Opaque `struct ibv_device`.
#[repr(C)]
pub(crate) struct IbvDevice {
    _p: [u8; 0],
}

/// Opaque `struct ibv_pd`.
#[repr(C)]
pub(crate) struct IbvPd {
    _p: [u8; 0],
}

type PollCq = unsafe extern "C" fn(*mut IbvCq, c_int, *mut IbvWc) -> c_int;
type ReqNotifyCq = unsafe extern "C" fn(*mut IbvCq, c_int) -> c_int;
type PostSend = unsafe extern "C" fn(*mut IbvQp, *mut IbvSendWr, *mut *mut IbvSendWr) -> c_int;
type PostRecv = unsafe extern "C" fn(*mut IbvQp, *mut IbvRecvWr, *mut *mut IbvRecvWr) -> c_int;

/// `struct ibv_context_ops`: 32 pointers, of which we call four.
#[repr(C)]
pub(crate) struct IbvContextOps {
    _before_poll: [*mut c_void; 11],
    pub poll_cq: Option<PollCq>,
    pub req_notify_cq: Option<ReqNotifyCq>,
    _before_post: [*mut c_void; 12],
    pub post_send: Option<PostSend>,
    pub post_recv: Option<PostRecv>,
    _after: [*mut c_void; 5],
}

/// `struct ibv_context`.
#[repr(C)]
pub(crate) struct IbvContext {
    pub device: *mut IbvDevice,
    pub ops: IbvContextOps,
    pub cmd_fd: c_int,
    pub async_fd: c_int,
    pub num_comp_vectors: c_int,
    pub mutex: libc::pthread_mutex_t,
    pub abi_compat: *mut c_void,
}

/// `struct ibv_comp_channel`.
#[repr(C)]
pub(crate) struct IbvCompChannel {
    pub context: *mut IbvContext,
    pub fd: c_int,
    pub refcnt: c_int,
}

/// `struct ibv_cq` (prefix; only allocated by the library).
#[repr(C)]
pub(crate) struct IbvCq {
    pub context: *mut IbvContext,
    pub channel: *mut IbvCompChannel,
    pub cq_context: *mut c_void,
    pub handle: u32,
    pub cqe: c_int,
}

/// `struct ibv_qp` (prefix; only allocated by the library).
#[repr(C)]
pub(crate) struct IbvQp {
    pub context: *mut IbvContext,
    pub qp_context: *mut c_void,
    pub pd: *mut IbvPd,
    pub send_cq: *mut IbvCq,
    pub recv_cq: *mut IbvCq,
    pub srq: *mut c_void,
    pub handle: u32,
    pub qp_num: u32,
    pub state: c_uint,
    pub qp_type: c_uint,
}

/// `struct ibv_mr`.
#[repr(C)]
pub(crate) struct IbvMr {
    pub context: *mut IbvContext,
    pub pd: *mut IbvPd,
    pub addr: *mut c_void,
    pub length: usize,
    pub handle: u32,
    pub lkey: u32,
    pub rkey: u32,
}

/// `struct ibv_sge`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct IbvSge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

/// `struct ibv_send_wr`, with `wr.rdma` spelled out and the other unions as padding.
#[repr(C)]
pub(crate) struct IbvSendWr {
    pub wr_id: u64,
    pub next: *mut IbvSendWr,
    pub sg_list: *mut IbvSge,
    pub num_sge: c_int,
    pub opcode: c_uint,
    pub send_flags: c_uint,
    /// Network byte order.
    pub imm_data: u32,
    pub rdma_remote_addr: u64,
    pub rdma_rkey: u32,
    _wr_rest: [u32; 5],
    _qp_type: u32,
    _pad: u32,
    _bind_mw_tso: [u64; 6],
}

/// `struct ibv_recv_wr`.
#[repr(C)]
pub(crate) struct IbvRecvWr {
    pub wr_id: u64,
    pub next: *mut IbvRecvWr,
    pub sg_list: *mut IbvSge,
    pub num_sge: c_int,
}

/// `struct ibv_wc`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct IbvWc {
    pub wr_id: u64,
    pub status: c_uint,
    pub opcode: c_uint,
    pub vendor_err: u32,
    pub byte_len: u32,
    /// Network byte order.
    pub imm_data: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    pub wc_flags: c_uint,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
}

/// `struct ibv_qp_cap`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct IbvQpCap {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

/// `struct ibv_qp_init_attr`.
#[repr(C)]
pub(crate) struct IbvQpInitAttr {
    pub qp_context: *mut c_void,
    pub send_cq: *mut IbvCq,
    pub recv_cq: *mut IbvCq,
    pub srq: *mut c_void,
    pub cap: IbvQpCap,
    pub qp_type: c_uint,
    pub sq_sig_all: c_int,
}

/// `union ibv_gid`: 16 bytes, 8-byte aligned (its other member is two `__be64`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct IbvGid {
    pub raw: [u8; 16],
}

/// `struct ibv_global_route`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct IbvGlobalRoute {
    pub dgid: IbvGid,
    pub flow_label: u32,
    pub sgid_index: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

/// `struct ibv_ah_attr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct IbvAhAttr {
    pub grh: IbvGlobalRoute,
    pub dlid: u16,
    pub sl: u8,
    pub src_path_bits: u8,
    pub static_rate: u8,
    pub is_global: u8,
    pub port_num: u8,
}

/// `struct ibv_qp_attr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct IbvQpAttr {
    pub qp_state: c_uint,
    pub cur_qp_state: c_uint,
    pub path_mtu: c_uint,
    pub path_mig_state: c_uint,
    pub qkey: u32,
    pub rq_psn: u32,
    pub sq_psn: u32,
    pub dest_qp_num: u32,
    pub qp_access_flags: c_uint,
    pub cap: IbvQpCap,
    pub ah_attr: IbvAhAttr,
    pub alt_ah_attr: IbvAhAttr,
    pub pkey_index: u16,
    pub alt_pkey_index: u16,
    pub en_sqd_async_notify: u8,
    pub sq_draining: u8,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub port_num: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub alt_port_num: u8,
    pub alt_timeout: u8,
    pub rate_limit: u32,
}

/// `struct ibv_port_attr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct IbvPortAttr {
    pub state: c_uint,
    pub max_mtu: c_uint,
    pub active_mtu: c_uint,
    pub gid_tbl_len: c_int,
    pub port_cap_flags: u32,
    pub max_msg_sz: u32,
    pub bad_pkey_cntr: u32,
    pub qkey_viol_cntr: u32,
    pub pkey_tbl_len: u16,
    pub lid: u16,
    pub sm_lid: u16,
    pub lmc: u8,
    pub max_vl_num: u8,
    pub sm_sl: u8,
    pub subnet_timeout: u8,
    pub init_type_reply: u8,
    pub active_width: u8,
    pub active_speed: u8,
    pub phys_state: u8,
    pub link_layer: u8,
    pub flags: u8,
    pub port_cap_flags2: u16,
}

// Constants from verbs.h.
pub(crate) const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
pub(crate) const IBV_ACCESS_REMOTE_WRITE: c_int = 2;
pub(crate) const IBV_QPT_RC: c_uint = 2;
pub(crate) const IBV_QPS_INIT: c_uint = 1;
pub(crate) const IBV_QPS_RTR: c_uint = 2;
pub(crate) const IBV_QPS_RTS: c_uint = 3;
pub(crate) const IBV_WR_RDMA_WRITE: c_uint = 0;
pub(crate) const IBV_WR_RDMA_WRITE_WITH_IMM: c_uint = 1;
pub(crate) const IBV_SEND_SIGNALED: c_uint = 1 << 1;
pub(crate) const IBV_SEND_INLINE: c_uint = 1 << 3;
pub(crate) const IBV_PORT_ACTIVE: c_uint = 4;
pub(crate) const IBV_LINK_LAYER_INFINIBAND: u8 = 1;
pub(crate) const IBV_LINK_LAYER_ETHERNET: u8 = 2;
pub(crate) const IBV_QP_STATE: c_int = 1;
pub(crate) const IBV_QP_ACCESS_FLAGS: c_int = 1 << 3;
pub(crate) const IBV_QP_PKEY_INDEX: c_int = 1 << 4;
pub(crate) const IBV_QP_PORT: c_int = 1 << 5;
pub(crate) const IBV_QP_AV: c_int = 1 << 7;
pub(crate) const IBV_QP_PATH_MTU: c_int = 1 << 8;
pub(crate) const IBV_QP_TIMEOUT: c_int = 1 << 9;
pub(crate) const IBV_QP_RETRY_CNT: c_int = 1 << 10;
pub(crate) const IBV_QP_RNR_RETRY: c_int = 1 << 11;
pub(crate) const IBV_QP_RQ_PSN: c_int = 1 << 12;
pub(crate) const IBV_QP_MAX_QP_RD_ATOMIC: c_int = 1 << 13;
pub(crate) const IBV_QP_MIN_RNR_TIMER: c_int = 1 << 15;
pub(crate) const IBV_QP_SQ_PSN: c_int = 1 << 16;
pub(crate) const IBV_QP_MAX_DEST_RD_ATOMIC: c_int = 1 << 17;
pub(crate) const IBV_QP_DEST_QPN: c_int = 1 << 20;

/// The functions oxccl calls, resolved from the library.
#[allow(clippy::type_complexity)]
pub(crate) struct Lib {
    pub get_device_list: unsafe extern "C" fn(*mut c_int) -> *mut *mut IbvDevice,
    pub free_device_list: unsafe extern "C" fn(*mut *mut IbvDevice),
    pub get_device_name: unsafe extern "C" fn(*mut IbvDevice) -> *const c_char,
    pub open_device: unsafe extern "C" fn(*mut IbvDevice) -> *mut IbvContext,
    pub close_device: unsafe extern "C" fn(*mut IbvContext) -> c_int,
    pub alloc_pd: unsafe extern "C" fn(*mut IbvContext) -> *mut IbvPd,
    pub dealloc_pd: unsafe extern "C" fn(*mut IbvPd) -> c_int,
    pub reg_mr: unsafe extern "C" fn(*mut IbvPd, *mut c_void, usize, c_int) -> *mut IbvMr,
    pub dereg_mr: unsafe extern "C" fn(*mut IbvMr) -> c_int,
    pub create_comp_channel: unsafe extern "C" fn(*mut IbvContext) -> *mut IbvCompChannel,
    pub destroy_comp_channel: unsafe extern "C" fn(*mut IbvCompChannel) -> c_int,
    pub create_cq: unsafe extern "C" fn(
        *mut IbvContext,
        c_int,
        *mut c_void,
        *mut IbvCompChannel,
        c_int,
    ) -> *mut IbvCq,
    pub destroy_cq: unsafe extern "C" fn(*mut IbvCq) -> c_int,
    pub get_cq_event:
        unsafe extern "C" fn(*mut IbvCompChannel, *mut *mut IbvCq, *mut *mut c_void) -> c_int,
    pub ack_cq_events: unsafe extern "C" fn(*mut IbvCq, c_uint),
    pub create_qp: unsafe extern "C" fn(*mut IbvPd, *mut IbvQpInitAttr) -> *mut IbvQp,
    pub destroy_qp: unsafe extern "C" fn(*mut IbvQp) -> c_int,
    pub modify_qp: unsafe extern "C" fn(*mut IbvQp, *mut IbvQpAttr, c_int) -> c_int,
    pub query_port: unsafe extern "C" fn(*mut IbvContext, u8, *mut IbvPortAttr) -> c_int,
    pub query_gid: unsafe extern "C" fn(*mut IbvContext, u8, c_int, *mut IbvGid) -> c_int,
}

/// The library's file name: `OXCCL_IBVERBS_LIB`, or `libibverbs.so.1`.
pub(crate) fn lib_name() -> String {
    std::env::var("OXCCL_IBVERBS_LIB")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "libibverbs.so.1".to_string())
}

fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl* call on
    // this thread; we copy it at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

impl Lib {
    /// The process's libibverbs, loaded on first use (never unloaded).
    pub(crate) fn get() -> Result<&'static Lib, String> {
        static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
        LIB.get_or_init(Lib::load).as_ref().map_err(|e| e.clone())
    }

    // Each transmute's target type is the type of the field its result initialises.
    #[allow(clippy::missing_transmute_annotations)]
    fn load() -> Result<Lib, String> {
        let name = lib_name();
        let c = CString::new(name.clone()).map_err(|_| format!("bad library name {name:?}"))?;
        // SAFETY: `c` is a valid C string; dlopen has no other preconditions. Loading runs the
        // library's constructors, which is what linking against it would do too.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            return Err(format!(
                "{name} could not be loaded ({}); install rdma-core's libibverbs (e.g. apt-get install libibverbs1)",
                dlerror()
            ));
        }
        macro_rules! sym {
            ($name:literal) => {{
                let s = concat!($name, "\0");
                // SAFETY: `h` is a live handle (never closed) and `s` is NUL-terminated.
                let p = unsafe { libc::dlsym(h, s.as_ptr().cast()) };
                if p.is_null() {
                    return Err(format!("{name} has no symbol {} ({})", $name, dlerror()));
                }
                // SAFETY: the symbol is the libibverbs function of that name, whose C signature
                // (verbs.h, IBVERBS_1.1 ABI) is the function pointer type of the field it is
                // assigned to; data and function pointers have one size on Linux.
                unsafe { std::mem::transmute::<*mut c_void, _>(p) }
            }};
        }
        Ok(Lib {
            get_device_list: sym!("ibv_get_device_list"),
            free_device_list: sym!("ibv_free_device_list"),
            get_device_name: sym!("ibv_get_device_name"),
            open_device: sym!("ibv_open_device"),
            close_device: sym!("ibv_close_device"),
            alloc_pd: sym!("ibv_alloc_pd"),
            dealloc_pd: sym!("ibv_dealloc_pd"),
            reg_mr: sym!("ibv_reg_mr"),
            dereg_mr: sym!("ibv_dereg_mr"),
            create_comp_channel: sym!("ibv_create_comp_channel"),
            destroy_comp_channel: sym!("ibv_destroy_comp_channel"),
            create_cq: sym!("ibv_create_cq"),
            destroy_cq: sym!("ibv_destroy_cq"),
            get_cq_event: sym!("ibv_get_cq_event"),
            ack_cq_events: sym!("ibv_ack_cq_events"),
            create_qp: sym!("ibv_create_qp"),
            destroy_qp: sym!("ibv_destroy_qp"),
            modify_qp: sym!("ibv_modify_qp"),
            query_port: sym!("ibv_query_port"),
            query_gid: sym!("ibv_query_gid"),
        })
    }
}

/// Every (name, value) the layout test compares with the C header: sizes and field offsets.
#[cfg(test)]
pub(crate) fn layout() -> Vec<(&'static str, usize)> {
    use std::mem::{align_of, offset_of, size_of};
    vec![
        ("sizeof(struct ibv_context_ops)", size_of::<IbvContextOps>()),
        (
            "offsetof(struct ibv_context_ops, poll_cq)",
            offset_of!(IbvContextOps, poll_cq),
        ),
        (
            "offsetof(struct ibv_context_ops, req_notify_cq)",
            offset_of!(IbvContextOps, req_notify_cq),
        ),
        (
            "offsetof(struct ibv_context_ops, post_send)",
            offset_of!(IbvContextOps, post_send),
        ),
        (
            "offsetof(struct ibv_context_ops, post_recv)",
            offset_of!(IbvContextOps, post_recv),
        ),
        ("sizeof(struct ibv_context)", size_of::<IbvContext>()),
        (
            "offsetof(struct ibv_context, ops)",
            offset_of!(IbvContext, ops),
        ),
        (
            "offsetof(struct ibv_comp_channel, fd)",
            offset_of!(IbvCompChannel, fd),
        ),
        (
            "offsetof(struct ibv_cq, context)",
            offset_of!(IbvCq, context),
        ),
        ("offsetof(struct ibv_cq, cqe)", offset_of!(IbvCq, cqe)),
        (
            "offsetof(struct ibv_qp, context)",
            offset_of!(IbvQp, context),
        ),
        ("offsetof(struct ibv_qp, qp_num)", offset_of!(IbvQp, qp_num)),
        (
            "offsetof(struct ibv_qp, qp_type)",
            offset_of!(IbvQp, qp_type),
        ),
        ("sizeof(struct ibv_mr)", size_of::<IbvMr>()),
        ("offsetof(struct ibv_mr, addr)", offset_of!(IbvMr, addr)),
        ("offsetof(struct ibv_mr, length)", offset_of!(IbvMr, length)),
        ("offsetof(struct ibv_mr, lkey)", offset_of!(IbvMr, lkey)),
        ("offsetof(struct ibv_mr, rkey)", offset_of!(IbvMr, rkey)),
        ("sizeof(struct ibv_sge)", size_of::<IbvSge>()),
        (
            "offsetof(struct ibv_sge, length)",
            offset_of!(IbvSge, length),
        ),
        ("offsetof(struct ibv_sge, lkey)", offset_of!(IbvSge, lkey)),
        ("sizeof(struct ibv_send_wr)", size_of::<IbvSendWr>()),
        (
            "offsetof(struct ibv_send_wr, next)",
            offset_of!(IbvSendWr, next),
        ),
        (
            "offsetof(struct ibv_send_wr, sg_list)",
            offset_of!(IbvSendWr, sg_list),
        ),
        (
            "offsetof(struct ibv_send_wr, num_sge)",
            offset_of!(IbvSendWr, num_sge),
        ),
        (
            "offsetof(struct ibv_send_wr, opcode)",
            offset_of!(IbvSendWr, opcode),
        ),
        (
            "offsetof(struct ibv_send_wr, send_flags)",
            offset_of!(IbvSendWr, send_flags),
        ),
        (
            "offsetof(struct ibv_send_wr, imm_data)",
            offset_of!(IbvSendWr, imm_data),
        ),
        (
            "offsetof(struct ibv_send_wr, wr.rdma.remote_addr)",
            offset_of!(IbvSendWr, rdma_remote_addr),
        ),
        (
            "offsetof(struct ibv_send_wr, wr.rdma.rkey)",
            offset_of!(IbvSendWr, rdma_rkey),
        ),
        (
            "offsetof(struct ibv_send_wr, qp_type)",
            offset_of!(IbvSendWr, _qp_type),
        ),
        (
            "offsetof(struct ibv_send_wr, bind_mw)",
            offset_of!(IbvSendWr, _bind_mw_tso),
        ),
        ("sizeof(struct ibv_recv_wr)", size_of::<IbvRecvWr>()),
        (
            "offsetof(struct ibv_recv_wr, num_sge)",
            offset_of!(IbvRecvWr, num_sge),
        ),
        ("sizeof(struct ibv_wc)", size_of::<IbvWc>()),
        ("offsetof(struct ibv_wc, status)", offset_of!(IbvWc, status)),
        ("offsetof(struct ibv_wc, opcode)", offset_of!(IbvWc, opcode)),
        (
            "offsetof(struct ibv_wc, vendor_err)",
            offset_of!(IbvWc, vendor_err),
        ),
        (
            "offsetof(struct ibv_wc, imm_data)",
            offset_of!(IbvWc, imm_data),
        ),
        ("offsetof(struct ibv_wc, qp_num)", offset_of!(IbvWc, qp_num)),
        (
            "offsetof(struct ibv_wc, wc_flags)",
            offset_of!(IbvWc, wc_flags),
        ),
        (
            "offsetof(struct ibv_wc, dlid_path_bits)",
            offset_of!(IbvWc, dlid_path_bits),
        ),
        ("sizeof(struct ibv_qp_cap)", size_of::<IbvQpCap>()),
        (
            "sizeof(struct ibv_qp_init_attr)",
            size_of::<IbvQpInitAttr>(),
        ),
        (
            "offsetof(struct ibv_qp_init_attr, cap)",
            offset_of!(IbvQpInitAttr, cap),
        ),
        (
            "offsetof(struct ibv_qp_init_attr, qp_type)",
            offset_of!(IbvQpInitAttr, qp_type),
        ),
        (
            "offsetof(struct ibv_qp_init_attr, sq_sig_all)",
            offset_of!(IbvQpInitAttr, sq_sig_all),
        ),
        (
            "sizeof(struct ibv_global_route)",
            size_of::<IbvGlobalRoute>(),
        ),
        (
            "offsetof(struct ibv_global_route, flow_label)",
            offset_of!(IbvGlobalRoute, flow_label),
        ),
        (
            "offsetof(struct ibv_global_route, sgid_index)",
            offset_of!(IbvGlobalRoute, sgid_index),
        ),
        (
            "offsetof(struct ibv_global_route, traffic_class)",
            offset_of!(IbvGlobalRoute, traffic_class),
        ),
        ("sizeof(struct ibv_ah_attr)", size_of::<IbvAhAttr>()),
        (
            "offsetof(struct ibv_ah_attr, dlid)",
            offset_of!(IbvAhAttr, dlid),
        ),
        (
            "offsetof(struct ibv_ah_attr, is_global)",
            offset_of!(IbvAhAttr, is_global),
        ),
        (
            "offsetof(struct ibv_ah_attr, port_num)",
            offset_of!(IbvAhAttr, port_num),
        ),
        ("sizeof(struct ibv_qp_attr)", size_of::<IbvQpAttr>()),
        (
            "offsetof(struct ibv_qp_attr, path_mtu)",
            offset_of!(IbvQpAttr, path_mtu),
        ),
        (
            "offsetof(struct ibv_qp_attr, rq_psn)",
            offset_of!(IbvQpAttr, rq_psn),
        ),
        (
            "offsetof(struct ibv_qp_attr, sq_psn)",
            offset_of!(IbvQpAttr, sq_psn),
        ),
        (
            "offsetof(struct ibv_qp_attr, dest_qp_num)",
            offset_of!(IbvQpAttr, dest_qp_num),
        ),
        (
            "offsetof(struct ibv_qp_attr, qp_access_flags)",
            offset_of!(IbvQpAttr, qp_access_flags),
        ),
        (
            "offsetof(struct ibv_qp_attr, cap)",
            offset_of!(IbvQpAttr, cap),
        ),
        (
            "offsetof(struct ibv_qp_attr, ah_attr)",
            offset_of!(IbvQpAttr, ah_attr),
        ),
        (
            "offsetof(struct ibv_qp_attr, alt_ah_attr)",
            offset_of!(IbvQpAttr, alt_ah_attr),
        ),
        (
            "offsetof(struct ibv_qp_attr, pkey_index)",
            offset_of!(IbvQpAttr, pkey_index),
        ),
        (
            "offsetof(struct ibv_qp_attr, max_rd_atomic)",
            offset_of!(IbvQpAttr, max_rd_atomic),
        ),
        (
            "offsetof(struct ibv_qp_attr, max_dest_rd_atomic)",
            offset_of!(IbvQpAttr, max_dest_rd_atomic),
        ),
        (
            "offsetof(struct ibv_qp_attr, min_rnr_timer)",
            offset_of!(IbvQpAttr, min_rnr_timer),
        ),
        (
            "offsetof(struct ibv_qp_attr, port_num)",
            offset_of!(IbvQpAttr, port_num),
        ),
        (
            "offsetof(struct ibv_qp_attr, timeout)",
            offset_of!(IbvQpAttr, timeout),
        ),
        (
            "offsetof(struct ibv_qp_attr, retry_cnt)",
            offset_of!(IbvQpAttr, retry_cnt),
        ),
        (
            "offsetof(struct ibv_qp_attr, rnr_retry)",
            offset_of!(IbvQpAttr, rnr_retry),
        ),
        (
            "offsetof(struct ibv_qp_attr, rate_limit)",
            offset_of!(IbvQpAttr, rate_limit),
        ),
        ("sizeof(struct ibv_port_attr)", size_of::<IbvPortAttr>()),
        (
            "offsetof(struct ibv_port_attr, active_mtu)",
            offset_of!(IbvPortAttr, active_mtu),
        ),
        (
            "offsetof(struct ibv_port_attr, gid_tbl_len)",
            offset_of!(IbvPortAttr, gid_tbl_len),
        ),
        (
            "offsetof(struct ibv_port_attr, lid)",
            offset_of!(IbvPortAttr, lid),
        ),
        (
            "offsetof(struct ibv_port_attr, link_layer)",
            offset_of!(IbvPortAttr, link_layer),
        ),
        ("sizeof(union ibv_gid)", size_of::<IbvGid>()),
        ("_Alignof(union ibv_gid)", align_of::<IbvGid>()),
        (
            "_Alignof(struct ibv_global_route)",
            align_of::<IbvGlobalRoute>(),
        ),
        ("_Alignof(struct ibv_ah_attr)", align_of::<IbvAhAttr>()),
        ("_Alignof(struct ibv_qp_attr)", align_of::<IbvQpAttr>()),
        (
            "_Alignof(struct ibv_qp_init_attr)",
            align_of::<IbvQpInitAttr>(),
        ),
        ("_Alignof(struct ibv_send_wr)", align_of::<IbvSendWr>()),
        ("_Alignof(struct ibv_recv_wr)", align_of::<IbvRecvWr>()),
        ("_Alignof(struct ibv_wc)", align_of::<IbvWc>()),
        ("_Alignof(struct ibv_port_attr)", align_of::<IbvPortAttr>()),
        ("_Alignof(struct ibv_sge)", align_of::<IbvSge>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles a C program that prints every size and offset in [`layout`] from the system's
    /// verbs.h, and compares. Skipped (with a note) where the header or a C compiler is missing,
    /// unless OXCCL_REQUIRE_VERBS_H=1 (CI sets it after installing libibverbs-dev).
    #[test]
    fn struct_layouts_match_the_system_header() {
        let required = std::env::var("OXCCL_REQUIRE_VERBS_H").is_ok_and(|v| v == "1");
        let header = std::path::Path::new("/usr/include/infiniband/verbs.h");
        if !header.exists() {
            assert!(
                !required,
                "OXCCL_REQUIRE_VERBS_H=1 but {header:?} is missing"
            );
            eprintln!("skipped: {header:?} is not installed (apt-get install libibverbs-dev)");
            return;
        }
        let items = layout();
        let mut c = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include <infiniband/verbs.h>\nint main(void) {\n",
        );
        for (name, _) in &items {
            c.push_str(&format!("  printf(\"%zu\\n\", (size_t){name});\n"));
        }
        c.push_str("  return 0;\n}\n");
        let dir = std::env::temp_dir().join(format!(
            "oxccl-verbs-layout-{}-{}",
            std::process::id(),
            crate::sys::random_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, exe) = (dir.join("layout.c"), dir.join("layout"));
        std::fs::write(&src, c).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let built = std::process::Command::new(&cc)
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .output();
        let out = match built {
            Ok(o) if o.status.success() => std::process::Command::new(&exe).output().unwrap(),
            Ok(o) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!(
                    "compiling the layout probe failed:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                assert!(
                    !required,
                    "OXCCL_REQUIRE_VERBS_H=1 but {cc} cannot run: {e}"
                );
                eprintln!("skipped: no C compiler ({cc}: {e})");
                return;
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        let c_values: Vec<usize> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(c_values.len(), items.len());
        let wrong: Vec<String> = items
            .iter()
            .zip(&c_values)
            .filter(|((_, r), c)| r != *c)
            .map(|((n, r), c)| format!("{n}: Rust {r}, C {c}"))
            .collect();
        assert!(
            wrong.is_empty(),
            "layouts differ from verbs.h:\n{}",
            wrong.join("\n")
        );
    }
}
