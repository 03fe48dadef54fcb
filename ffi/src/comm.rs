//! Communicators: unique ids, init, destroy/abort, queries.

use std::ffi::{CStr, c_char, c_int};
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use core_oxccl::{Communicator, Config, Error, TransportKind, UniqueId};

use crate::boundary::{Shared, guard, null};
use crate::types::*;

/// A communicator, opaque to C. Created by the `oxcclCommInit*` functions, freed by
/// `oxcclCommDestroy` or `oxcclCommAbort`. May be used from several threads at once (calls on
/// one communicator are serialised), but not destroyed while another thread uses it.
pub struct oxcclComm {
    pub(crate) comm: Communicator,
    pub(crate) shared: Arc<Shared>,
}

/// The handle C holds: a pointer to an opaque communicator.
pub type oxcclComm_t = *mut oxcclComm;

pub(crate) use oxcclComm as Handle;

impl Handle {
    /// # Safety
    /// `p` is NULL or a pointer from an `oxcclCommInit*` function that has not been freed, and it
    /// is not freed while the returned reference is used.
    pub(crate) unsafe fn from_ptr<'a>(p: oxcclComm_t) -> Option<&'a Handle> {
        // SAFETY: by the contract above, a non-null `p` points to a live `Handle`; we only hand out
        // shared references (all mutation inside goes through locks and atomics).
        unsafe { p.cast_const().as_ref() }
    }
}

/// Runs `f` with the handle `h` inside the panic boundary; a NULL handle is an invalid argument.
pub(crate) fn with_comm(
    func: &'static str,
    h: Option<&Handle>,
    f: impl FnOnce(&Handle) -> Result<(), Error>,
) -> oxcclResult_t {
    guard(func, h.map(|h| &*h.shared), || {
        f(h.ok_or_else(|| null("comm"))?)
    })
}

/// Writes `v` through `out`, which was checked non-null.
///
/// # Safety
/// `out` is non-null, aligned and writable for a `T`.
unsafe fn put<T>(out: *mut T, v: T) {
    // SAFETY: the caller guarantees `out` is valid for writes (and C gives aligned pointers).
    unsafe { out.write(v) }
}

/// The library's version, `OXCCL_MAJOR*10000 + OXCCL_MINOR*100 + OXCCL_PATCH`.
///
/// # Safety
/// `version` is NULL (an error) or points to a writable int.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclGetVersion(version: *mut c_int) -> oxcclResult_t {
    guard("oxcclGetVersion", None, || {
        if version.is_null() {
            return Err(null("version"));
        }
        // SAFETY: non-null, and the caller passes a writable int.
        unsafe { put(version, OXCCL_VERSION_CODE) };
        Ok(())
    })
}

/// A fresh unique id, on rank 0: it binds the rendezvous store's listener in this process (rank
/// 0's `oxcclCommInitRank` serves the store on it) and draws a random secret. Send the 128 bytes
/// (or `oxcclUniqueIdToString`'s text) to every other rank.
///
/// # Safety
/// `uniqueId` is NULL (an error) or points to a writable `oxcclUniqueId`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclGetUniqueId(uniqueId: *mut oxcclUniqueId) -> oxcclResult_t {
    guard("oxcclGetUniqueId", None, || {
        if uniqueId.is_null() {
            return Err(null("uniqueId"));
        }
        let id = UniqueId::new()?;
        // SAFETY: non-null, and the caller passes a writable oxcclUniqueId.
        unsafe { put(uniqueId, to_c(&id)) };
        Ok(())
    })
}

fn to_c(id: &UniqueId) -> oxcclUniqueId {
    let b = id.to_bytes();
    oxcclUniqueId {
        internal: b.map(|x| x as c_char),
    }
}

fn from_c(id: &oxcclUniqueId) -> Result<UniqueId, Error> {
    UniqueId::from_bytes(&id.internal.map(|x| x as u8))
}

/// Writes the printable form of `uniqueId` (`<ip>:<port>#<32 hex digits>`, what
/// `oxcclUniqueIdFromString` and Python's `oxccl.UniqueId.parse` read) and a NUL into `buf`,
/// which has room for `len` bytes (`OXCCL_UNIQUE_ID_STRLEN` is always enough).
///
/// # Safety
/// `uniqueId` is NULL or points to an `oxcclUniqueId`; `buf` is NULL or writable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclUniqueIdToString(
    uniqueId: *const oxcclUniqueId,
    buf: *mut c_char,
    len: usize,
) -> oxcclResult_t {
    guard("oxcclUniqueIdToString", None, || {
        if uniqueId.is_null() {
            return Err(null("uniqueId"));
        }
        if buf.is_null() {
            return Err(null("buf"));
        }
        // SAFETY: non-null; the caller passes a readable oxcclUniqueId.
        let id = from_c(unsafe { &*uniqueId })?;
        let s = id.to_string();
        if s.len() >= len {
            return Err(Error::InvalidArgument(format!(
                "buf has {len} bytes; the unique id needs {} (OXCCL_UNIQUE_ID_STRLEN is always enough)",
                s.len() + 1
            )));
        }
        // SAFETY: `buf` is writable for `len` > s.len() bytes (caller's contract), and a Rust
        // String cannot overlap the caller's buffer.
        unsafe {
            ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
            buf.add(s.len()).write(0);
        }
        Ok(())
    })
}

/// Parses `oxcclUniqueIdToString`'s form into `uniqueId`.
///
/// # Safety
/// `str` is NULL or a NUL-terminated string; `uniqueId` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclUniqueIdFromString(
    str: *const c_char,
    uniqueId: *mut oxcclUniqueId,
) -> oxcclResult_t {
    guard("oxcclUniqueIdFromString", None, || {
        // SAFETY: NULL or NUL-terminated (caller's contract).
        let s = unsafe { c_str(str, "str")? }.ok_or_else(|| null("str"))?;
        if uniqueId.is_null() {
            return Err(null("uniqueId"));
        }
        let id: UniqueId = s.parse()?;
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(uniqueId, to_c(&id)) };
        Ok(())
    })
}

/// A NUL-terminated UTF-8 string, or None for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the result.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null and NUL-terminated (caller's contract).
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| Error::InvalidArgument(format!("{what} is not UTF-8")))
}

/// Reads a C config; NULL means all defaults.
///
/// # Safety
/// `cfg` is NULL or points to an `oxcclConfig_t` (at least its `size` bytes are readable) whose
/// strings are NULL or NUL-terminated.
unsafe fn read_config(cfg: *const oxcclConfig_t) -> Result<Config, Error> {
    if cfg.is_null() {
        return Ok(Config::default());
    }
    // SAFETY: non-null and readable (caller's contract); we read the fields of version 1, which
    // every valid config has (checked through `size` before the whole struct is read).
    let size = unsafe { ptr::addr_of!((*cfg).size).read() };
    if size < std::mem::size_of::<oxcclConfig_t>() {
        return Err(Error::InvalidArgument(format!(
            "config->size is {size}, expected at least {}: start from OXCCL_CONFIG_INITIALIZER",
            std::mem::size_of::<oxcclConfig_t>()
        )));
    }
    // SAFETY: as above; at least size_of::<oxcclConfig_t>() bytes are readable.
    let c = unsafe { cfg.read() };
    if c.magic != OXCCL_CONFIG_MAGIC || c.version == 0 {
        return Err(Error::InvalidArgument(
            "config was not initialised with OXCCL_CONFIG_INITIALIZER (bad magic or version)"
                .into(),
        ));
    }
    let int = |v: c_int, what: &str| -> Result<Option<usize>, Error> {
        match v {
            CONFIG_UNDEF_INT => Ok(None),
            v if v > 0 => Ok(Some(v as usize)),
            v => Err(Error::InvalidArgument(format!(
                "config->{what} is {v}; it must be positive (or OXCCL_CONFIG_UNDEF_INT)"
            ))),
        }
    };
    // SAFETY: NULL or NUL-terminated (caller's contract).
    let transport = match unsafe { c_str(c.transport, "config->transport")? } {
        None => None,
        Some(t) => Some(TransportKind::parse(t).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "config->transport {t:?}: expected \"auto\", \"tcp\" or \"shm\""
            ))
        })?),
    };
    // SAFETY: NULL or NUL-terminated (caller's contract).
    let algo = unsafe { c_str(c.algo, "config->algo")? }.map(str::to_string);
    let deterministic = match c.deterministic {
        CONFIG_UNDEF_INT => None,
        0 => Some(false),
        1 => Some(true),
        v => {
            return Err(Error::InvalidArgument(format!(
                "config->deterministic is {v}; use 0, 1 or OXCCL_CONFIG_UNDEF_INT"
            )));
        }
    };
    // The core's Config grows; fields C cannot set yet keep their defaults.
    #[allow(clippy::needless_update)]
    Ok(Config {
        timeout: int(c.timeoutMs, "timeoutMs")?.map(|ms| Duration::from_millis(ms as u64)),
        transport,
        nsocks: int(c.nsocks, "nsocks")?,
        algo,
        chunk_bytes: int(c.chunkBytes, "chunkBytes")?,
        deterministic,
        ..Config::default()
    })
}

fn boxed(comm: Communicator) -> oxcclComm_t {
    Box::into_raw(Box::new(oxcclComm {
        comm,
        shared: Arc::default(),
    }))
}

/// Joins communicator `commId` as `rank` of `nranks` (like `ncclCommInitRank`). Blocks until
/// every rank has joined (or the timeout passes). On failure `*comm` is untouched and
/// `oxcclGetLastError(NULL)` says why.
///
/// # Safety
/// `comm` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommInitRank(
    comm: *mut oxcclComm_t,
    nranks: c_int,
    commId: oxcclUniqueId,
    rank: c_int,
) -> oxcclResult_t {
    // SAFETY: same contract; a NULL config is allowed.
    unsafe { oxcclCommInitRankConfig(comm, nranks, commId, rank, ptr::null()) }
}

/// `oxcclCommInitRank` with settings (`config` may be NULL: all from the environment).
///
/// # Safety
/// `comm` is NULL (an error) or writable; `config` is NULL or an initialised `oxcclConfig_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommInitRankConfig(
    comm: *mut oxcclComm_t,
    nranks: c_int,
    commId: oxcclUniqueId,
    rank: c_int,
    config: *const oxcclConfig_t,
) -> oxcclResult_t {
    guard("oxcclCommInitRankConfig", None, || {
        if comm.is_null() {
            return Err(null("comm"));
        }
        // Checked here too (the core checks it) so that a bad call leaves rank 0's store
        // listener from oxcclGetUniqueId in place for the next try.
        let (Ok(n), Ok(r)) = (usize::try_from(nranks), usize::try_from(rank)) else {
            return Err(Error::InvalidArgument(format!(
                "rank {rank} of {nranks}: need 0 <= rank < nranks"
            )));
        };
        if r >= n {
            return Err(Error::InvalidArgument(format!(
                "rank {rank} of {nranks}: need 0 <= rank < nranks"
            )));
        }
        // SAFETY: NULL or initialised (caller's contract).
        let cfg = unsafe { read_config(config)? };
        let id = from_c(&commId)?;
        let c = Communicator::init(r, n, &id, cfg)?;
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(comm, boxed(c)) };
        Ok(())
    })
}

/// Joins the communicator the launcher's environment describes: `OXCCL_RANK`,
/// `OXCCL_WORLD_SIZE`, `OXCCL_ROOT`, `OXCCL_SECRET`, or torchrun's, Slurm's, Open MPI's, PMI's.
///
/// # Safety
/// `comm` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommInitFromEnv(comm: *mut oxcclComm_t) -> oxcclResult_t {
    // SAFETY: same contract; a NULL config is allowed.
    unsafe { oxcclCommInitFromEnvConfig(comm, ptr::null()) }
}

/// `oxcclCommInitFromEnv` with settings (`config` may be NULL).
///
/// # Safety
/// `comm` is NULL (an error) or writable; `config` is NULL or an initialised `oxcclConfig_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommInitFromEnvConfig(
    comm: *mut oxcclComm_t,
    config: *const oxcclConfig_t,
) -> oxcclResult_t {
    guard("oxcclCommInitFromEnvConfig", None, || {
        if comm.is_null() {
            return Err(null("comm"));
        }
        // SAFETY: NULL or initialised (caller's contract).
        let cfg = unsafe { read_config(config)? };
        let c = Communicator::from_env_with(cfg)?;
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(comm, boxed(c)) };
        Ok(())
    })
}

/// Frees a communicator (its links and, on rank 0, the store). NULL is fine.
///
/// # Safety
/// `comm` is NULL or a live communicator that no other thread is using; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommDestroy(comm: oxcclComm_t) -> oxcclResult_t {
    guard("oxcclCommDestroy", None, || {
        if !comm.is_null() {
            // SAFETY: a live handle from Box::into_raw (caller's contract), freed exactly once.
            drop(unsafe { Box::from_raw(comm) });
        }
        Ok(())
    })
}

/// Frees a communicator without waiting for peers (like `ncclCommAbort`). NULL is fine. Peers
/// blocked in a collective with this rank see it as lost and fail with `oxcclRemoteError`.
///
/// Today this closes every link at once, as `oxcclCommDestroy` does; it cannot yet interrupt a
/// call that another thread is blocked in on the same communicator (that call ends at its timeout).
///
/// # Safety
/// As `oxcclCommDestroy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommAbort(comm: oxcclComm_t) -> oxcclResult_t {
    guard("oxcclCommAbort", None, || {
        if !comm.is_null() {
            // SAFETY: a live handle from Box::into_raw (caller's contract), freed exactly once.
            drop(unsafe { Box::from_raw(comm) });
        }
        Ok(())
    })
}

/// The number of ranks in `comm`.
///
/// # Safety
/// `comm` is NULL or live; `count` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommCount(comm: oxcclComm_t, count: *mut c_int) -> oxcclResult_t {
    // SAFETY: NULL or live (caller's contract).
    let h = unsafe { Handle::from_ptr(comm) };
    with_comm("oxcclCommCount", h, |h| {
        if count.is_null() {
            return Err(null("count"));
        }
        let n = c_int::try_from(h.comm.size())
            .map_err(|_| Error::Internal("rank count exceeds int".into()))?;
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(count, n) };
        Ok(())
    })
}

/// This rank's number in `comm`.
///
/// # Safety
/// `comm` is NULL or live; `rank` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommUserRank(comm: oxcclComm_t, rank: *mut c_int) -> oxcclResult_t {
    // SAFETY: NULL or live (caller's contract).
    let h = unsafe { Handle::from_ptr(comm) };
    with_comm("oxcclCommUserRank", h, |h| {
        if rank.is_null() {
            return Err(null("rank"));
        }
        let r = c_int::try_from(h.comm.rank())
            .map_err(|_| Error::Internal("rank exceeds int".into()))?;
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(rank, r) };
        Ok(())
    })
}

/// `oxcclSuccess` while `comm` is healthy, else the code of the failure that revoked it (a lost
/// peer, a timeout, a mismatch...): after that, every call on it fails; destroy it.
///
/// # Safety
/// `comm` is NULL or live; `asyncError` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommGetAsyncError(
    comm: oxcclComm_t,
    asyncError: *mut oxcclResult_t,
) -> oxcclResult_t {
    // SAFETY: NULL or live (caller's contract).
    let h = unsafe { Handle::from_ptr(comm) };
    with_comm("oxcclCommGetAsyncError", h, |h| {
        if asyncError.is_null() {
            return Err(null("asyncError"));
        }
        let code = h.shared.async_error.load(Ordering::SeqCst);
        let r = oxcclResult_t::from_c(code).unwrap_or(oxcclResult_t::oxcclInternalError);
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(asyncError, r) };
        Ok(())
    })
}
