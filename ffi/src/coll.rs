//! Collectives and point-to-point calls over host memory, NCCL-shaped (no stream argument).
//! `count` is in elements of `datatype`. Each call has a blocking form, which returns when this
//! rank's part is done (or, inside `oxcclGroupStart/End`, is queued until the group ends), and a
//! non-blocking `oxcclI*` form, which returns an `oxcclRequest_t` at once: the buffers must then
//! stay valid and untouched until `oxcclWait` / `oxcclTest` report it done.
//!
//! In place: `sendbuff == recvbuff` for all-reduce, broadcast, reduce and all-to-all;
//! `sendbuff == recvbuff + rank*count` (in elements) for all-gather, and for gather on the root;
//! `recvbuff == sendbuff + rank*recvcount` for reduce-scatter, and for scatter on the root
//! (NCCL's conventions). Other overlaps of the two buffers are invalid arguments.

use std::ffi::{c_int, c_void};

use core_oxccl::{DataType, Error, ReduceOp};

use crate::boundary::null;
use crate::comm::{oxcclComm_t, with_comm};
use crate::group::{no_group, oxcclRequest_t, start, submit};
use crate::op::{Op, Who, counts_arg, rank_arg};
use crate::types::*;

/// Checks the call on `comm` with `build`, then runs it (blocking, or queued in a group), or
/// starts it and writes `*request` when `request` is `Some`.
///
/// # Safety
/// The buffers `build` names are valid as the calling C function's contract says; `request`,
/// if `Some`, is NULL or writable.
unsafe fn run(
    func: &'static str,
    comm: oxcclComm_t,
    request: Option<*mut oxcclRequest_t>,
    build: impl FnOnce(Who) -> Result<Op, Error>,
) -> oxcclResult_t {
    if request.is_some() {
        if let Err(code) = no_group(func) {
            return code;
        }
    }
    with_comm(func, comm, |h| {
        if request.is_some_and(|r| r.is_null()) {
            return Err(null("request"));
        }
        let who = Who {
            rank: h.comm.rank(),
            nranks: h.comm.size(),
        };
        let op = build(who)?;
        match request {
            // SAFETY: buffers valid until completion and `request` writable (caller's contract).
            Some(req) => unsafe { start(func, h, op, req) },
            // SAFETY: buffers valid for the call or until the group ends (caller's contract).
            None => unsafe { submit(func, comm, h, op) },
        }
    })
}

/// Builds a reduction whose operator may be a pre-multiplied sum made on `comm`
/// (`oxcclRedOpCreatePreMulSum`): `build` gets the element type and a built-in operator, and
/// the op's input is then scaled into a copy it owns.
///
/// # Safety
/// The buffers `build` describes are readable as the C call promised; a premul scalar
/// pointer is readable.
unsafe fn reduction(
    comm: oxcclComm_t,
    op: RedOpArg,
    datatype: DataTypeArg,
    who: Who,
    build: impl FnOnce(DataType, ReduceOp) -> Result<Op, Error>,
) -> Result<Op, Error> {
    let dt = datatype.get()?;
    // SAFETY: forwarded contract.
    let (op, scalar) = unsafe { crate::premul::resolve(comm, op, dt)? };
    let o = build(dt, op)?;
    match scalar {
        // SAFETY: forwarded contract.
        Some(s) => unsafe { o.premultiply(&s, who) },
        None => Ok(o),
    }
}

/// Reads the per-rank counts of a v-variant (`nranks` size_t values).
///
/// # Safety
/// `p` is NULL or readable for `nranks` values.
unsafe fn counts(p: *const usize, who: Who, what: &str) -> Result<(Vec<usize>, usize), Error> {
    // SAFETY: forwarded contract.
    unsafe { counts_arg(p, who.nranks, what) }
}

// ---- the op each call builds -----------------------------------------------------------------
//
// One builder per collective, shared by its blocking and non-blocking forms (they differ only
// in `run`'s name and request). Each returns the closure `run` calls with this rank's place.
// Safety of every builder: the pointers are as the calling C function's contract says, and the
// closure is called within that call (`run` does).

/// The op of a reduction without a root (`oxcclAllReduce`, `oxcclReduceScatter` and their `I`
/// forms): `make` builds it from the element type, a built-in operator and this rank's place.
///
/// # Safety
/// See above: the C call's contract holds while the closure runs.
unsafe fn reduced(
    comm: oxcclComm_t,
    op: RedOpArg,
    datatype: DataTypeArg,
    make: impl FnOnce(DataType, ReduceOp, Who) -> Result<Op, Error>,
) -> impl FnOnce(Who) -> Result<Op, Error> {
    move |w| {
        // SAFETY: the C call's contract (this builder's).
        unsafe { reduction(comm, op, datatype, w, |dt, op| make(dt, op, w)) }
    }
}

/// The op of `oxcclReduce` / `oxcclIReduce`.
///
/// # Safety
/// See above: the C call's contract holds while the closure runs.
unsafe fn reduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    root: c_int,
    comm: oxcclComm_t,
) -> impl FnOnce(Who) -> Result<Op, Error> {
    move |w| {
        let root = rank_arg(root, w, "root")?;
        // SAFETY: the C call's contract (this builder's).
        unsafe {
            reduction(comm, op, datatype, w, |dt, op| {
                Op::reduce(sendbuff, recvbuff, count, dt, op, root, w)
            })
        }
    }
}

/// The constructor of a rooted call without reduction ([`Op::broadcast`], [`Op::gather`],
/// [`Op::scatter`]).
type RootedOp = fn(*const c_void, *mut c_void, usize, DataType, usize, Who) -> Result<Op, Error>;

/// The op of `oxcclBroadcast`, `oxcclGather` or `oxcclScatter` (`make`) and their `I` forms.
fn rooted(
    make: RootedOp,
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    root: c_int,
) -> impl FnOnce(Who) -> Result<Op, Error> {
    move |w| {
        let root = rank_arg(root, w, "root")?;
        make(sendbuff, recvbuff, count, datatype.get()?, root, w)
    }
}

/// The op of `oxcclAllGatherV` / `oxcclIAllGatherV`.
///
/// # Safety
/// See above: the C call's contract holds while the closure runs.
unsafe fn all_gatherv(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcounts: *const usize,
    datatype: DataTypeArg,
) -> impl FnOnce(Who) -> Result<Op, Error> {
    move |w| {
        let dt = datatype.get()?;
        // SAFETY: readable for nranks values (the C call's contract).
        let (c, total) = unsafe { counts(recvcounts, w, "recvcounts")? };
        Op::all_gatherv(sendbuff, recvbuff, c, total, dt, w)
    }
}

/// The op of `oxcclReduceScatterV` / `oxcclIReduceScatterV`.
///
/// # Safety
/// See above: the C call's contract holds while the closure runs.
unsafe fn reduce_scatterv(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcounts: *const usize,
    datatype: DataTypeArg,
    op: RedOpArg,
) -> impl FnOnce(Who) -> Result<Op, Error> {
    move |w| {
        let (dt, op) = (datatype.get()?, op.get()?);
        // SAFETY: readable for nranks values (the C call's contract).
        let (c, total) = unsafe { counts(recvcounts, w, "recvcounts")? };
        Op::reduce_scatterv(sendbuff, recvbuff, c, total, dt, op, w)
    }
}

/// The op of `oxcclAllToAllV` / `oxcclIAllToAllV`.
///
/// # Safety
/// See above: the C call's contract holds while the closure runs.
unsafe fn all_to_allv(
    sendbuff: *const c_void,
    sendcounts: *const usize,
    recvbuff: *mut c_void,
    recvcounts: *const usize,
    datatype: DataTypeArg,
) -> impl FnOnce(Who) -> Result<Op, Error> {
    move |w| {
        let dt = datatype.get()?;
        // SAFETY: both readable for nranks values (the C call's contract).
        let (sc, rc) = unsafe {
            (
                counts(sendcounts, w, "sendcounts")?,
                counts(recvcounts, w, "recvcounts")?,
            )
        };
        Op::all_to_allv(sendbuff, sc, recvbuff, rc, dt, w)
    }
}

/// The op of a send (`Some(sendbuff)`) or receive (`None`, into `recvbuff`) with `peer`.
fn p2p(
    sendbuff: Option<*const c_void>,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    peer: c_int,
    tag: u32,
) -> impl FnOnce(Who) -> Result<Op, Error> {
    move |w| {
        let peer = rank_arg(peer, w, "peer")?;
        let dt = datatype.get()?;
        match sendbuff {
            Some(s) => Op::send(s, count, dt, peer, tag),
            None => Op::recv(recvbuff, count, dt, peer, tag),
        }
    }
}

// ---- all-reduce ------------------------------------------------------------------------------

/// All-reduce: every rank's `recvbuff` becomes the element-wise reduction (`op`) of every rank's
/// `sendbuff` (`count` elements). In place when `sendbuff == recvbuff`.
///
/// # Safety
/// `sendbuff` readable and `recvbuff` writable for `count` elements (either may be NULL when
/// `count` is 0); `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclAllReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe {
        reduced(comm, op, datatype, |dt, op, _| {
            Op::all_reduce(sendbuff, recvbuff, count, dt, op)
        })
    };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclAllReduce", comm, None, b) }
}

/// Non-blocking `oxcclAllReduce`.
///
/// # Safety
/// As `oxcclAllReduce`, with the buffers valid until the request is done; `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIAllReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe {
        reduced(comm, op, datatype, |dt, op, _| {
            Op::all_reduce(sendbuff, recvbuff, count, dt, op)
        })
    };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIAllReduce", comm, Some(request), b) }
}

// ---- broadcast -------------------------------------------------------------------------------

/// Broadcast: every rank's `recvbuff` (`count` elements) becomes the root's `sendbuff`. Only the
/// root reads `sendbuff` (others may pass NULL); in place when `sendbuff == recvbuff`.
///
/// # Safety
/// On the root `sendbuff` readable for `count` elements; `recvbuff` writable for `count`
/// elements; `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclBroadcast(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    root: c_int,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    let b = rooted(Op::broadcast, sendbuff, recvbuff, count, datatype, root);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclBroadcast", comm, None, b) }
}

/// Non-blocking `oxcclBroadcast`.
///
/// # Safety
/// As `oxcclBroadcast`, with the buffers valid until the request is done; `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIBroadcast(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    root: c_int,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    let b = rooted(Op::broadcast, sendbuff, recvbuff, count, datatype, root);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIBroadcast", comm, Some(request), b) }
}

// ---- reduce ----------------------------------------------------------------------------------

/// Reduce: the root's `recvbuff` becomes the reduction of every rank's `sendbuff` (`count`
/// elements). Only the root writes `recvbuff` (others may pass NULL); in place when
/// `sendbuff == recvbuff`.
///
/// # Safety
/// `sendbuff` readable for `count` elements; on the root `recvbuff` writable for `count`
/// elements; `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    root: c_int,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe { reduce(sendbuff, recvbuff, count, datatype, op, root, comm) };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclReduce", comm, None, b) }
}

/// Non-blocking `oxcclReduce`.
///
/// # Safety
/// As `oxcclReduce`, with the buffers valid until the request is done; `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    root: c_int,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe { reduce(sendbuff, recvbuff, count, datatype, op, root, comm) };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIReduce", comm, Some(request), b) }
}

// ---- all-gather ------------------------------------------------------------------------------

/// All-gather: `recvbuff` (nranks × `sendcount` elements) gets every rank's `sendbuff`, in rank
/// order. In place when `sendbuff == recvbuff + rank*sendcount`.
///
/// # Safety
/// `sendbuff` readable for `sendcount` elements, `recvbuff` writable for nranks × `sendcount`;
/// `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclAllGather(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    sendcount: usize,
    datatype: DataTypeArg,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    let b = |w: Who| Op::all_gather(sendbuff, recvbuff, sendcount, datatype.get()?, w);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclAllGather", comm, None, b) }
}

/// Non-blocking `oxcclAllGather`.
///
/// # Safety
/// As `oxcclAllGather`, with the buffers valid until the request is done; `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIAllGather(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    sendcount: usize,
    datatype: DataTypeArg,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    let b = |w: Who| Op::all_gather(sendbuff, recvbuff, sendcount, datatype.get()?, w);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIAllGather", comm, Some(request), b) }
}

// ---- reduce-scatter --------------------------------------------------------------------------

/// Reduce-scatter: `recvbuff` (`recvcount` elements) gets block `rank` of the reduction of every
/// rank's `sendbuff` (nranks × `recvcount`). In place when `recvbuff == sendbuff + rank*recvcount`.
///
/// # Safety
/// `sendbuff` readable for nranks × `recvcount` elements, `recvbuff` writable for `recvcount`;
/// `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclReduceScatter(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcount: usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe {
        reduced(comm, op, datatype, |dt, op, w| {
            Op::reduce_scatter(sendbuff, recvbuff, recvcount, dt, op, w)
        })
    };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclReduceScatter", comm, None, b) }
}

/// Non-blocking `oxcclReduceScatter`.
///
/// # Safety
/// As `oxcclReduceScatter`, with the buffers valid until the request is done; `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIReduceScatter(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcount: usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe {
        reduced(comm, op, datatype, |dt, op, w| {
            Op::reduce_scatter(sendbuff, recvbuff, recvcount, dt, op, w)
        })
    };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIReduceScatter", comm, Some(request), b) }
}

// ---- all-to-all ------------------------------------------------------------------------------

/// All-to-all (spelled as NCCL spells `ncclAlltoAll`): block p (`count` elements) of `sendbuff`
/// goes to rank p; block p of `recvbuff` comes from rank p. Both hold nranks × `count`
/// elements; in place when they are equal.
///
/// # Safety
/// `sendbuff` readable and `recvbuff` writable for nranks × `count` elements; `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclAlltoAll(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    let b = |w: Who| Op::all_to_all(sendbuff, recvbuff, count, datatype.get()?, w);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclAlltoAll", comm, None, b) }
}

/// The earlier spelling of `oxcclAlltoAll`, kept as an alias.
///
/// # Safety
/// As `oxcclAlltoAll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclAllToAll(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    // SAFETY: the same contract.
    unsafe { oxcclAlltoAll(sendbuff, recvbuff, count, datatype, comm) }
}

/// Non-blocking `oxcclAlltoAll`.
///
/// # Safety
/// As `oxcclAlltoAll`, with the buffers valid until the request is done; `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIAlltoAll(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    let b = |w: Who| Op::all_to_all(sendbuff, recvbuff, count, datatype.get()?, w);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIAlltoAll", comm, Some(request), b) }
}

/// The earlier spelling of `oxcclIAlltoAll`, kept as an alias.
///
/// # Safety
/// As `oxcclIAlltoAll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIAllToAll(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    // SAFETY: the same contract.
    unsafe { oxcclIAlltoAll(sendbuff, recvbuff, count, datatype, comm, request) }
}

// ---- gather / scatter ------------------------------------------------------------------------

/// Gather: the root's `recvbuff` (nranks × `count` elements) gets every rank's `sendbuff`
/// (`count`), in rank order. Only the root writes `recvbuff` (others may pass NULL); in place on
/// the root when `sendbuff == recvbuff + root*count`.
///
/// # Safety
/// `sendbuff` readable for `count` elements; on the root `recvbuff` writable for nranks ×
/// `count`; `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclGather(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    root: c_int,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    let b = rooted(Op::gather, sendbuff, recvbuff, count, datatype, root);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclGather", comm, None, b) }
}

/// Non-blocking `oxcclGather`.
///
/// # Safety
/// As `oxcclGather`, with the buffers valid until the request is done; `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIGather(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    root: c_int,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    let b = rooted(Op::gather, sendbuff, recvbuff, count, datatype, root);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIGather", comm, Some(request), b) }
}

/// Scatter: rank p's `recvbuff` (`count` elements) gets block p of the root's `sendbuff`
/// (nranks × `count`). Only the root reads `sendbuff` (others may pass NULL); in place on the
/// root when `recvbuff == sendbuff + root*count`.
///
/// # Safety
/// On the root `sendbuff` readable for nranks × `count` elements; `recvbuff` writable for
/// `count`; `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclScatter(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    root: c_int,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    let b = rooted(Op::scatter, sendbuff, recvbuff, count, datatype, root);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclScatter", comm, None, b) }
}

/// Non-blocking `oxcclScatter`.
///
/// # Safety
/// As `oxcclScatter`, with the buffers valid until the request is done; `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIScatter(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    root: c_int,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    let b = rooted(Op::scatter, sendbuff, recvbuff, count, datatype, root);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIScatter", comm, Some(request), b) }
}

// ---- v-variants ------------------------------------------------------------------------------

/// All-gather with per-rank counts: rank p contributes `recvcounts[p]` elements (its
/// `sendbuff`); `recvbuff` gets them all, contiguous in rank order. `recvcounts` has nranks
/// entries, equal on every rank. In place when `sendbuff` is this rank's block of `recvbuff`.
///
/// # Safety
/// `recvcounts` readable for nranks values; `sendbuff` readable for `recvcounts[rank]`
/// elements, `recvbuff` writable for their sum; `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclAllGatherV(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcounts: *const usize,
    datatype: DataTypeArg,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe { all_gatherv(sendbuff, recvbuff, recvcounts, datatype) };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclAllGatherV", comm, None, b) }
}

/// Non-blocking `oxcclAllGatherV`.
///
/// # Safety
/// As `oxcclAllGatherV`, with the buffers valid until the request is done (`recvcounts` is
/// copied at once); `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIAllGatherV(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcounts: *const usize,
    datatype: DataTypeArg,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe { all_gatherv(sendbuff, recvbuff, recvcounts, datatype) };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIAllGatherV", comm, Some(request), b) }
}

/// Reduce-scatter with per-rank counts: `sendbuff` holds nranks blocks (`recvcounts[p]`
/// elements each, contiguous in rank order); this rank's `recvbuff` gets block `rank` of the
/// reduction. `recvcounts` is equal on every rank. Not in place.
///
/// # Safety
/// `recvcounts` readable for nranks values; `sendbuff` readable for their sum, `recvbuff`
/// writable for `recvcounts[rank]` elements; `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclReduceScatterV(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcounts: *const usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe { reduce_scatterv(sendbuff, recvbuff, recvcounts, datatype, op) };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclReduceScatterV", comm, None, b) }
}

/// Non-blocking `oxcclReduceScatterV`.
///
/// # Safety
/// As `oxcclReduceScatterV`, with the buffers valid until the request is done (`recvcounts` is
/// copied at once); `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIReduceScatterV(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcounts: *const usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe { reduce_scatterv(sendbuff, recvbuff, recvcounts, datatype, op) };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIReduceScatterV", comm, Some(request), b) }
}

/// All-to-all with per-peer counts: `sendcounts[p]` elements of `sendbuff` go to rank p and
/// `recvcounts[p]` elements of `recvbuff` come from rank p, blocks contiguous in rank order
/// (no displacements). `sendcounts[q]` on rank p must equal `recvcounts[p]` on rank q. Not in
/// place.
///
/// # Safety
/// `sendcounts` and `recvcounts` readable for nranks values; `sendbuff` readable for the sum of
/// `sendcounts`, `recvbuff` writable for the sum of `recvcounts`; `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclAllToAllV(
    sendbuff: *const c_void,
    sendcounts: *const usize,
    recvbuff: *mut c_void,
    recvcounts: *const usize,
    datatype: DataTypeArg,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe { all_to_allv(sendbuff, sendcounts, recvbuff, recvcounts, datatype) };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclAllToAllV", comm, None, b) }
}

/// Non-blocking `oxcclAllToAllV`.
///
/// # Safety
/// As `oxcclAllToAllV`, with the buffers valid until the request is done (the counts are copied
/// at once); `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIAllToAllV(
    sendbuff: *const c_void,
    sendcounts: *const usize,
    recvbuff: *mut c_void,
    recvcounts: *const usize,
    datatype: DataTypeArg,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is this function's.
    let b = unsafe { all_to_allv(sendbuff, sendcounts, recvbuff, recvcounts, datatype) };
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIAllToAllV", comm, Some(request), b) }
}

// ---- point to point --------------------------------------------------------------------------

/// Sends `count` elements to rank `peer` (tag 0), like `ncclSend`. Blocks until the data has
/// left (in a group: runs with the group, so pairs of sends and receives cannot deadlock).
///
/// # Safety
/// `sendbuff` readable for `count` elements; `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclSend(
    sendbuff: *const c_void,
    count: usize,
    datatype: DataTypeArg,
    peer: c_int,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is oxcclSendTagged's.
    unsafe { oxcclSendTagged(sendbuff, count, datatype, peer, 0, comm) }
}

/// Receives `count` elements from rank `peer` (tag 0), like `ncclRecv`.
///
/// # Safety
/// `recvbuff` writable for `count` elements; `comm` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclRecv(
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    peer: c_int,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    // SAFETY: the caller's contract is oxcclRecvTagged's.
    unsafe { oxcclRecvTagged(recvbuff, count, datatype, peer, 0, comm) }
}

/// `oxcclSend` with a tag: the receiver's matching `oxcclRecvTagged` must use the same tag (and
/// count and type); messages between two ranks match in order.
///
/// # Safety
/// As `oxcclSend`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclSendTagged(
    sendbuff: *const c_void,
    count: usize,
    datatype: DataTypeArg,
    peer: c_int,
    tag: u32,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    let b = p2p(
        Some(sendbuff),
        std::ptr::null_mut(),
        count,
        datatype,
        peer,
        tag,
    );
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclSend", comm, None, b) }
}

/// `oxcclRecv` with a tag (see `oxcclSendTagged`).
///
/// # Safety
/// As `oxcclRecv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclRecvTagged(
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    peer: c_int,
    tag: u32,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    let b = p2p(None, recvbuff, count, datatype, peer, tag);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclRecv", comm, None, b) }
}

/// Non-blocking `oxcclSendTagged` (like `MPI_Isend`).
///
/// # Safety
/// As `oxcclSend`, with `sendbuff` valid until the request is done; `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclISend(
    sendbuff: *const c_void,
    count: usize,
    datatype: DataTypeArg,
    peer: c_int,
    tag: u32,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    let b = p2p(
        Some(sendbuff),
        std::ptr::null_mut(),
        count,
        datatype,
        peer,
        tag,
    );
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclISend", comm, Some(request), b) }
}

/// Non-blocking `oxcclRecvTagged` (like `MPI_Irecv`).
///
/// # Safety
/// As `oxcclRecv`, with `recvbuff` valid and untouched until the request is done; `request`
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIRecv(
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    peer: c_int,
    tag: u32,
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    let b = p2p(None, recvbuff, count, datatype, peer, tag);
    // SAFETY: the caller's contract is this function's.
    unsafe { run("oxcclIRecv", comm, Some(request), b) }
}

// ---- barrier ---------------------------------------------------------------------------------

/// Blocks until every rank of `comm` has called it.
///
/// # Safety
/// `comm` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclBarrier(comm: oxcclComm_t) -> oxcclResult_t {
    // SAFETY: no buffers; `comm` NULL or live (caller's contract).
    unsafe { run("oxcclBarrier", comm, None, |_| Ok(Op::barrier())) }
}

/// Non-blocking `oxcclBarrier`: the request completes when every rank has entered it.
///
/// # Safety
/// `comm` is NULL or live; `request` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclIBarrier(
    comm: oxcclComm_t,
    request: *mut oxcclRequest_t,
) -> oxcclResult_t {
    // SAFETY: no buffers; `comm` NULL or live, `request` writable (caller's contract).
    unsafe { run("oxcclIBarrier", comm, Some(request), |_| Ok(Op::barrier())) }
}
