//! Persistent calls, like MPI 4's `MPI_Allreduce_init` / `MPI_Start`: a blocking call's
//! arguments stored once under a small int, then run by `oxcclStart(id)` as often as wanted.
//! For bindings whose per-argument cost exceeds a small call's: through Python's ctypes a pointer
//! argument costs about as much as an 8-byte all-reduce on shared memory, an int almost nothing,
//! so the Python package runs its repeated in-place calls this way.

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

use core_oxccl::{Error, ReduceOp};

use crate::boundary::{guard, null};
use crate::coll::{oxcclAllReduce, oxcclBroadcast};
use crate::comm::{oxcclComm_t, put, with_comm};
use crate::op::{Op, Who, rank_arg};
use crate::types::*;

/// A stored call: its arguments, as the C call takes them (addresses as integers: the table is
/// shared between threads, and the buffers are the caller's to keep valid).
#[derive(Debug, Clone, Copy)]
enum Stored {
    AllReduce {
        send: usize,
        recv: usize,
        count: usize,
        dtype: c_int,
        op: c_int,
        comm: usize,
    },
    Broadcast {
        send: usize,
        recv: usize,
        count: usize,
        dtype: c_int,
        root: c_int,
        comm: usize,
    },
}

/// Every stored call, by id (index); freed slots are reused.
static TABLE: Mutex<Vec<Option<Stored>>> = Mutex::new(Vec::new());

fn table() -> std::sync::MutexGuard<'static, Vec<Option<Stored>>> {
    // Every update is one assignment: a panic cannot leave the table half-updated.
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The index of a free slot of `v` (the first empty one, or a new one at the end).
pub(crate) fn vacant<T>(v: &mut Vec<Option<T>>) -> usize {
    match v.iter().position(Option::is_none) {
        Some(i) => i,
        None => {
            v.push(None);
            v.len() - 1
        }
    }
}

/// Stores `s` and writes its id through `id` (checked non-null).
fn store(s: Stored, id: *mut c_int) -> Result<(), Error> {
    let mut t = table();
    let i = vacant(&mut t);
    let v = c_int::try_from(i)
        .map_err(|_| Error::invalid_usage("too many persistent calls; free some"))?;
    t[i] = Some(s);
    // SAFETY: non-null (checked by the caller) and writable (the C caller's contract).
    unsafe { put(id, v) };
    Ok(())
}

/// Stores an `oxcclAllReduce` for `oxcclStart` (the same arguments, checked now as that call
/// checks them; the operator may be one `oxcclRedOpCreatePreMulSum` made, resolved at each start)
/// and writes its id to `*id`. Free it with `oxcclPersistentFree`.
///
/// # Safety
/// As `oxcclAllReduce`, for every `oxcclStart` of it; `id` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclAllReduceInit(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    comm: oxcclComm_t,
    id: *mut c_int,
) -> oxcclResult_t {
    with_comm("oxcclAllReduceInit", comm, |_| {
        if id.is_null() {
            return Err(null("id"));
        }
        Op::all_reduce(sendbuff, recvbuff, count, datatype.get()?, ReduceOp::Sum)?;
        store(
            Stored::AllReduce {
                send: sendbuff as usize,
                recv: recvbuff as usize,
                count,
                dtype: datatype.0,
                op: op.0,
                comm: comm as usize,
            },
            id,
        )
    })
}

/// Stores an `oxcclBroadcast` for `oxcclStart` (see `oxcclAllReduceInit`).
///
/// # Safety
/// As `oxcclBroadcast`, for every `oxcclStart` of it; `id` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclBroadcastInit(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    root: c_int,
    comm: oxcclComm_t,
    id: *mut c_int,
) -> oxcclResult_t {
    with_comm("oxcclBroadcastInit", comm, |h| {
        if id.is_null() {
            return Err(null("id"));
        }
        let w = Who {
            rank: h.comm.rank(),
            nranks: h.comm.size(),
        };
        let r = rank_arg(root, w, "root")?;
        Op::broadcast(sendbuff, recvbuff, count, datatype.get()?, r, w)?;
        store(
            Stored::Broadcast {
                send: sendbuff as usize,
                recv: recvbuff as usize,
                count,
                dtype: datatype.0,
                root,
                comm: comm as usize,
            },
            id,
        )
    })
}

/// Runs the call stored under `id` (blocking, or queued inside a group), exactly as the call
/// itself would run with the stored arguments: the same checks, results and messages. A
/// communicator destroyed since is an invalid argument.
///
/// # Safety
/// The stored call's buffers are still valid (the contract of its `*Init`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclStart(id: c_int) -> oxcclResult_t {
    let s = usize::try_from(id)
        .ok()
        .and_then(|i| table().get(i).copied().flatten());
    match s {
        Some(Stored::AllReduce {
            send,
            recv,
            count,
            dtype,
            op,
            comm,
        }) => {
            // SAFETY: the buffers are valid (this function's contract); the communicator is
            // looked up, never dereferenced, by the call.
            unsafe {
                oxcclAllReduce(
                    send as *const c_void,
                    recv as *mut c_void,
                    count,
                    DataTypeArg(dtype),
                    RedOpArg(op),
                    comm as oxcclComm_t,
                )
            }
        }
        Some(Stored::Broadcast {
            send,
            recv,
            count,
            dtype,
            root,
            comm,
        }) => {
            // SAFETY: as above.
            unsafe {
                oxcclBroadcast(
                    send as *const c_void,
                    recv as *mut c_void,
                    count,
                    DataTypeArg(dtype),
                    root,
                    comm as oxcclComm_t,
                )
            }
        }
        None => guard("oxcclStart", None, || Err(unknown(id))),
    }
}

fn unknown(id: c_int) -> Error {
    Error::invalid_argument(format!(
        "{id} is not a persistent call (never made by oxccl*Init, or freed already)"
    ))
}

/// Forgets the call stored under `id` (its id may be reused by the next `*Init`).
#[unsafe(no_mangle)]
pub extern "C" fn oxcclPersistentFree(id: c_int) -> oxcclResult_t {
    guard("oxcclPersistentFree", None, || {
        let mut t = table();
        match usize::try_from(id).ok().and_then(|i| t.get_mut(i)) {
            Some(slot @ Some(_)) => {
                *slot = None;
                Ok(())
            }
            _ => Err(unknown(id)),
        }
    })
}
