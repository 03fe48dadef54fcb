//! Communicators: unique ids, init, destroy/abort, queries.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int};
use std::hash::{BuildHasherDefault, Hasher};
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use core_oxccl::{Communicator, Config, Error, TransportKind, UniqueId};

use crate::boundary::{Shared, fail, guard, note, null};
use crate::types::*;

/// A communicator, opaque to C. Created by the `oxcclCommInit*` functions (and split/shrink),
/// freed by `oxcclCommDestroy` or `oxcclCommAbort`. It may be used from several threads at once
/// (calls on one communicator run one at a time, in issue order), and `oxcclCommAbort` may be
/// called while another thread is inside a call on it.
pub struct oxcclComm {
    pub(crate) comm: Communicator,
    pub(crate) shared: Arc<Shared>,
    /// `config->splitShare` as given (1: a split of this communicator shares what it can).
    split_share: bool,
    /// For a communicator initialised with `blocking = 0`: the placeholder whose address is its
    /// handle, kept alive so that no other allocation takes that address while the handle lives.
    _pending: Option<Arc<Pending>>,
}

impl std::fmt::Debug for oxcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("oxcclComm")
            .field("comm", &self.comm)
            .finish_non_exhaustive()
    }
}

/// The handle C holds: a pointer to an opaque communicator.
pub type oxcclComm_t = *mut oxcclComm;

pub(crate) use oxcclComm as Handle;

/// What a detached call's worker holds while the call is queued or running (see
/// `Communicator::start_detached`): the handle, and through it the communicator.
impl AsRef<Communicator> for oxcclComm {
    fn as_ref(&self) -> &Communicator {
        &self.comm
    }
}

/// A communicator still initialising in the background (`config->blocking = 0`), or whose
/// background initialisation failed. Its address is the handle C was given.
pub(crate) struct Pending {
    shared: Arc<Shared>,
    /// 0 while initialising; the `oxcclResult_t` of the failure once it failed.
    failed: AtomicI32,
}

impl Pending {
    /// What a call on this handle returns: `oxcclInProgress` while initialising (NCCL's rule:
    /// poll `oxcclCommGetAsyncError` until it says `oxcclSuccess` before any other call), the
    /// init's failure once it failed.
    fn state(&self) -> oxcclResult_t {
        match self.failed.load(Ordering::SeqCst) {
            0 => oxcclResult_t::oxcclInProgress,
            c => oxcclResult_t::from_c(c).unwrap_or(oxcclResult_t::oxcclInternalError),
        }
    }
}

/// What a handle names: a communicator, or one not (yet) initialised.
#[derive(Clone)]
enum Entry {
    Ready(Arc<Handle>),
    Pending(Arc<Pending>),
}

/// Every live communicator, by the address C holds. A call looks its handle up here (and holds
/// the `Arc` while it runs), so a destroyed or made-up pointer is an error instead of a
/// use-after-free, and a communicator destroyed or aborted while another thread is inside a call
/// on it is freed when that call returns.
static LIVE: LazyLock<Mutex<Live>> = LazyLock::new(Default::default);

/// The live handles by address. Keys are heap addresses (distinct, 8-aligned): hashing them is
/// a multiply, not SipHash, since every call looks its handle up.
type Live = HashMap<usize, Entry, BuildHasherDefault<AddrHasher>>;

/// Hashes an address: a Fibonacci multiply of it (the low bits, always zero, shifted out).
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = ((n as u64) >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

fn live() -> std::sync::MutexGuard<'static, Live> {
    // Inserts and removes are single operations: a panic cannot leave the map half-updated.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handle {
    /// The live communicator `p` names, or `None` for NULL or a pointer that is not (or no
    /// longer, or not yet) one. Never dereferences `p`.
    pub(crate) fn lookup(p: oxcclComm_t) -> Option<Arc<Handle>> {
        match Self::entry(p)? {
            Entry::Ready(h) => Some(h),
            Entry::Pending(_) => None,
        }
    }

    fn entry(p: oxcclComm_t) -> Option<Entry> {
        if p.is_null() {
            return None;
        }
        live().get(&(p as usize)).cloned()
    }

    /// Where the errors of the communicator `p` names are recorded, initialised or not.
    pub(crate) fn shared_of(p: oxcclComm_t) -> Option<Arc<Shared>> {
        Some(match Self::entry(p)? {
            Entry::Ready(h) => h.shared.clone(),
            Entry::Pending(q) => q.shared.clone(),
        })
    }

    fn new(comm: Communicator, settings: &Settings, pending: Option<Arc<Pending>>) -> Arc<Handle> {
        let shared = match &pending {
            Some(p) => p.shared.clone(),
            None => Arc::new(Shared::named(settings.name.clone())),
        };
        Arc::new(Handle {
            comm,
            shared,
            split_share: settings.split_share.unwrap_or(false),
            _pending: pending,
        })
    }

    /// The settings a communicator made from this one (shrink, grow) keeps.
    fn settings(&self) -> Settings {
        Settings {
            blocking: true,
            name: self.shared.name(),
            split_share: Some(self.split_share),
        }
    }

    fn register(comm: Communicator, settings: &Settings) -> oxcclComm_t {
        let h = Handle::new(comm, settings, None);
        let p = Arc::as_ptr(&h).cast_mut();
        live().insert(p as usize, Entry::Ready(h));
        p
    }

    fn unregister(p: oxcclComm_t) -> Option<Entry> {
        live().remove(&(p as usize))
    }
}

/// Starts `init` on a thread of its own and returns the handle at once (`config->blocking = 0`):
/// calls on it return `oxcclInProgress` until the thread has put the communicator in place
/// (`oxcclCommGetAsyncError` then says `oxcclSuccess`), or the init's error if it failed. A
/// handle destroyed or aborted meanwhile is forgotten, and the communicator, once made, is
/// aborted (every wait of init has the config's deadline, so the thread ends).
fn register_background(
    func: &'static str,
    settings: Settings,
    init: impl FnOnce() -> Result<Communicator, Error> + Send + 'static,
) -> Result<oxcclComm_t, Error> {
    let pending = Arc::new(Pending {
        shared: Arc::new(Shared::named(settings.name.clone())),
        failed: AtomicI32::new(0),
    });
    let key = Arc::as_ptr(&pending) as usize;
    live().insert(key, Entry::Pending(pending.clone()));
    let spawned = std::thread::Builder::new()
        .name("oxccl-init".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(init))
                .unwrap_or_else(|_| Err(Error::internal("panic in init")));
            match r {
                Ok(c) => {
                    let h = Handle::new(c, &settings, Some(pending.clone()));
                    let mut map = live();
                    if let Some(slot) = map.get_mut(&key) {
                        *slot = Entry::Ready(h);
                    } else {
                        // Destroyed or aborted while initialising: nobody holds it any more.
                        drop(map);
                        h.comm.abort();
                    }
                }
                Err(e) => {
                    let code = fail(Some(&pending.shared), func, &e);
                    pending.failed.store(code as i32, Ordering::SeqCst);
                }
            }
        });
    if let Err(e) = spawned {
        live().remove(&key);
        return Err(Error::internal(format!(
            "could not start the init thread: {e}"
        )));
    }
    Ok(key as oxcclComm_t)
}

/// The error for a non-null pointer that is not a live communicator.
fn not_live() -> Error {
    Error::invalid_argument(
        "comm is not a live communicator (destroyed already, or not from oxcclCommInit*)",
    )
}

/// Runs `f` with the communicator `comm` names inside the panic boundary; NULL or a pointer that
/// is not a live communicator is an invalid argument, and one still initialising in the
/// background answers `oxcclInProgress` (or its init's failure) without running `f`.
pub(crate) fn with_comm(
    func: &'static str,
    comm: oxcclComm_t,
    f: impl FnOnce(&Arc<Handle>) -> Result<(), Error>,
) -> oxcclResult_t {
    match Handle::entry(comm) {
        Some(Entry::Ready(h)) => guard(func, Some(&h.shared), || f(&h)),
        Some(Entry::Pending(p)) => not_ready(func, &p),
        None => guard(func, None, || {
            Err(if comm.is_null() {
                null("comm")
            } else {
                not_live()
            })
        }),
    }
}

/// The answer of a call on a communicator that is not initialised (see [`Pending::state`]).
fn not_ready(func: &'static str, p: &Pending) -> oxcclResult_t {
    let code = p.state();
    let why = if code == oxcclResult_t::oxcclInProgress {
        "still initialising (blocking = 0): poll oxcclCommGetAsyncError until it returns \
         oxcclSuccess before other calls"
    } else {
        "its initialisation failed (oxcclGetLastError(comm) says why); destroy it"
    };
    note(
        Some(&p.shared),
        &format!("{func}: the communicator is {why}"),
    );
    code
}

/// Writes `v` through `out`, which was checked non-null.
///
/// # Safety
/// `out` is non-null, aligned and writable for a `T`.
pub(crate) unsafe fn put<T>(out: *mut T, v: T) {
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
            return Err(Error::invalid_argument(format!(
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
        .map_err(|_| Error::invalid_argument(format!("{what} is not UTF-8")))
}

/// What a config sets beyond the core's [`Config`]: NCCL's `blocking`, `commName`,
/// `splitShare`.
#[derive(Debug, Clone)]
struct Settings {
    /// `false`: init returns at once with `oxcclInProgress` and finishes in the background.
    blocking: bool,
    /// `commName`: shown in this communicator's error messages, read back by `oxcclCommName`.
    name: Option<String>,
    /// `splitShare`: a split of this communicator shares what it can of it (unset: as the
    /// parent's, for a split).
    split_share: Option<bool>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            blocking: true,
            name: None,
            split_share: None,
        }
    }
}

/// The bytes of an `oxcclConfig_t` of version 1 (before `blocking`): such configs are still read.
const CONFIG_V1_SIZE: usize = std::mem::offset_of!(oxcclConfig_t, blocking);

/// Reads a C config; NULL means all defaults.
///
/// # Safety
/// `cfg` is NULL or points to an `oxcclConfig_t` (at least its `size` bytes are readable) whose
/// strings are NULL or NUL-terminated.
unsafe fn read_config(cfg: *const oxcclConfig_t) -> Result<(Config, Settings), Error> {
    if cfg.is_null() {
        return Ok((Config::default(), Settings::default()));
    }
    // SAFETY: non-null and readable (caller's contract); `size`, `magic` and `version` are the
    // first fields of every version.
    let (size, magic, version) = unsafe {
        (
            ptr::addr_of!((*cfg).size).read(),
            ptr::addr_of!((*cfg).magic).read(),
            ptr::addr_of!((*cfg).version).read(),
        )
    };
    if magic != OXCCL_CONFIG_MAGIC || version == 0 {
        return Err(Error::invalid_argument(
            "config was not initialised with OXCCL_CONFIG_INITIALIZER (bad magic or version)",
        ));
    }
    let full = std::mem::size_of::<oxcclConfig_t>();
    let need = if version == 1 { CONFIG_V1_SIZE } else { full };
    if size < need {
        return Err(Error::invalid_argument(format!(
            "config->size is {size}, expected at least {need}: start from OXCCL_CONFIG_INITIALIZER"
        )));
    }
    let mut c = unset_config();
    // SAFETY: at least `need` bytes are readable (checked above), and `need` covers the fields
    // this version has; the rest keep their "not set" values.
    unsafe { ptr::copy_nonoverlapping(cfg.cast::<u8>(), ptr::addr_of_mut!(c).cast::<u8>(), need) };
    let int = |v: c_int, what: &str| -> Result<Option<usize>, Error> {
        match v {
            CONFIG_UNDEF_INT => Ok(None),
            v if v > 0 => Ok(Some(v as usize)),
            v => Err(Error::invalid_argument(format!(
                "config->{what} is {v}; it must be positive (or OXCCL_CONFIG_UNDEF_INT)"
            ))),
        }
    };
    // SAFETY: NULL or NUL-terminated (caller's contract).
    let transport = match unsafe { c_str(c.transport, "config->transport")? } {
        None => None,
        Some(t) => Some(TransportKind::parse(t).ok_or_else(|| {
            Error::invalid_argument(format!(
                "config->transport {t:?}: expected \"auto\", \"tcp\" or \"shm\""
            ))
        })?),
    };
    // SAFETY: NULL or NUL-terminated (caller's contract).
    let algo = unsafe { c_str(c.algo, "config->algo")? }.map(str::to_string);
    let flag = |v: c_int, what: &str| -> Result<Option<bool>, Error> {
        match v {
            CONFIG_UNDEF_INT => Ok(None),
            0 => Ok(Some(false)),
            1 => Ok(Some(true)),
            v => Err(Error::invalid_argument(format!(
                "config->{what} is {v}; use 0, 1 or OXCCL_CONFIG_UNDEF_INT"
            ))),
        }
    };
    // SAFETY: NULL or NUL-terminated (caller's contract).
    let name = unsafe { c_str(c.commName, "config->commName")? }.map(str::to_string);
    let settings = Settings {
        blocking: flag(c.blocking, "blocking")?.unwrap_or(true),
        name,
        split_share: flag(c.splitShare, "splitShare")?,
    };
    // The core's Config grows; fields C cannot set yet keep their defaults.
    #[allow(clippy::needless_update)]
    let core = Config {
        timeout: int(c.timeoutMs, "timeoutMs")?.map(|ms| Duration::from_millis(ms as u64)),
        transport,
        nsocks: int(c.nsocks, "nsocks")?,
        algo,
        chunk_bytes: int(c.chunkBytes, "chunkBytes")?,
        deterministic: flag(c.deterministic, "deterministic")?,
        ..Config::default()
    };
    Ok((core, settings))
}

/// A config with every field "not set" (what `OXCCL_CONFIG_INITIALIZER` gives).
fn unset_config() -> oxcclConfig_t {
    oxcclConfig_t {
        size: std::mem::size_of::<oxcclConfig_t>(),
        magic: OXCCL_CONFIG_MAGIC,
        version: OXCCL_CONFIG_VERSION,
        timeoutMs: CONFIG_UNDEF_INT,
        nsocks: CONFIG_UNDEF_INT,
        chunkBytes: CONFIG_UNDEF_INT,
        deterministic: CONFIG_UNDEF_INT,
        transport: ptr::null(),
        algo: ptr::null(),
        blocking: CONFIG_UNDEF_INT,
        commName: ptr::null(),
        splitShare: CONFIG_UNDEF_INT,
    }
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
    let mut background = false;
    let r = guard("oxcclCommInitRankConfig", None, || {
        if comm.is_null() {
            return Err(null("comm"));
        }
        // Checked here too (the core checks it) so that a bad call leaves rank 0's store
        // listener from oxcclGetUniqueId in place for the next try.
        let (Ok(n), Ok(r)) = (usize::try_from(nranks), usize::try_from(rank)) else {
            return Err(Error::invalid_argument(format!(
                "rank {rank} of {nranks}: need 0 <= rank < nranks"
            )));
        };
        if r >= n {
            return Err(Error::invalid_argument(format!(
                "rank {rank} of {nranks}: need 0 <= rank < nranks"
            )));
        }
        // SAFETY: NULL or initialised (caller's contract).
        let (cfg, set) = unsafe { read_config(config)? };
        let id = from_c(&commId)?;
        let p = if set.blocking {
            let c = Communicator::init(r, n, &id, cfg)?;
            Handle::register(c, &set)
        } else {
            background = true;
            register_background("oxcclCommInitRankConfig", set, move || {
                Communicator::init(r, n, &id, cfg)
            })?
        };
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(comm, p) };
        Ok(())
    });
    in_progress(r, background)
}

/// An init's result: `oxcclInProgress` instead of success when it goes on in the background.
fn in_progress(r: oxcclResult_t, background: bool) -> oxcclResult_t {
    if background && r == oxcclResult_t::oxcclSuccess {
        oxcclResult_t::oxcclInProgress
    } else {
        r
    }
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
    let mut background = false;
    let r = guard("oxcclCommInitFromEnvConfig", None, || {
        if comm.is_null() {
            return Err(null("comm"));
        }
        // SAFETY: NULL or initialised (caller's contract).
        let (cfg, set) = unsafe { read_config(config)? };
        let p = if set.blocking {
            Handle::register(Communicator::from_env_with(cfg)?, &set)
        } else {
            background = true;
            register_background("oxcclCommInitFromEnvConfig", set, move || {
                Communicator::from_env_with(cfg)
            })?
        };
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(comm, p) };
        Ok(())
    });
    in_progress(r, background)
}

/// Frees a communicator: waits for its started non-blocking calls, closes its links and, on rank
/// 0, the store. NULL is fine; a pointer that is not a live communicator (destroyed already) is
/// an invalid argument. If another thread is inside a call on it, the memory is freed when that
/// call returns.
///
/// # Safety
/// None beyond the types: `comm` is never dereferenced unless it is a live communicator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommDestroy(comm: oxcclComm_t) -> oxcclResult_t {
    guard("oxcclCommDestroy", None, || {
        if comm.is_null() {
            return Ok(());
        }
        // A communicator still initialising is forgotten; its init thread aborts it when done.
        let entry = Handle::unregister(comm).ok_or_else(not_live)?;
        // Calls started on it and not yet finished (oxcclI*, requests not waited for) hold it
        // until they end: wait for them (at most its timeout), so destroy returns only once
        // nothing reads or writes the caller's buffers any more, as it always has.
        if let Entry::Ready(h) = &entry {
            let _ = h.comm.wait_idle();
        }
        drop(entry);
        Ok(())
    })
}

/// Aborts and frees a communicator without waiting for peers (like `ncclCommAbort`). A call in
/// flight on it in another thread fails within about 100 ms; peers in a collective with this rank
/// are told and fail too (instead of waiting for their timeout). NULL is fine.
///
/// # Safety
/// None beyond the types: `comm` is never dereferenced unless it is a live communicator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommAbort(comm: oxcclComm_t) -> oxcclResult_t {
    guard("oxcclCommAbort", None, || {
        if comm.is_null() {
            return Ok(());
        }
        // One still initialising is aborted by its init thread once made.
        if let Entry::Ready(h) = Handle::unregister(comm).ok_or_else(not_live)? {
            h.comm.abort();
        }
        Ok(())
    })
}

/// `color` for `oxcclCommSplit` meaning "in no new communicator" (`NCCL_SPLIT_NOCOLOR`).
pub const OXCCL_SPLIT_NOCOLOR: c_int = -1;

/// Splits `comm` (every rank calls it, like `ncclCommSplit`): ranks with the same `color` (>= 0)
/// form a new communicator, ranked by `key`, then by their rank in `comm`. A rank passing
/// `OXCCL_SPLIT_NOCOLOR` gets `*newcomm = NULL`. Settings left unset in `config` (may be NULL)
/// are inherited from `comm`.
///
/// # Safety
/// `newcomm` is NULL (an error) or writable; `config` is NULL or an initialised `oxcclConfig_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommSplit(
    comm: oxcclComm_t,
    color: c_int,
    key: c_int,
    newcomm: *mut oxcclComm_t,
    config: *const oxcclConfig_t,
) -> oxcclResult_t {
    with_comm("oxcclCommSplit", comm, |h| {
        if newcomm.is_null() {
            return Err(null("newcomm"));
        }
        let color = match color {
            OXCCL_SPLIT_NOCOLOR => None,
            c => Some(u32::try_from(c).map_err(|_| {
                Error::invalid_argument(format!(
                    "color {c}: use a color >= 0, or OXCCL_SPLIT_NOCOLOR"
                ))
            })?),
        };
        let key = u32::try_from(key)
            .map_err(|_| Error::invalid_argument(format!("key {key} must be >= 0")))?;
        // SAFETY: NULL or initialised (caller's contract).
        let (cfg, mut set) = unsafe { read_config(config)? };
        // Unset: as the parent's (NCCL's rule for splitShare).
        set.split_share = set.split_share.or(Some(h.split_share));
        let c = h.comm.split(color, key, cfg)?;
        let out = c
            .map(|c| Handle::register(c, &set))
            .unwrap_or(ptr::null_mut());
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(newcomm, out) };
        Ok(())
    })
}

/// Builds a communicator of the ranks of `comm` that are still alive, renumbered in rank order
/// (every survivor calls it, typically after a call failed with `oxcclRemoteError` or
/// `oxcclTimeout`). It does not need rank 0 or the store. `comm` is aborted; destroy it
/// afterwards. (Unlike `ncclCommShrink`, the dead ranks are found, not listed.)
///
/// # Safety
/// `newcomm` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommShrink(
    comm: oxcclComm_t,
    newcomm: *mut oxcclComm_t,
) -> oxcclResult_t {
    with_comm("oxcclCommShrink", comm, |h| {
        if newcomm.is_null() {
            return Err(null("newcomm"));
        }
        let c = h.comm.shrink()?;
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(newcomm, Handle::register(c, &h.settings())) };
        Ok(())
    })
}

/// `oxcclCommShrink` that also leaves out the `excludeCount` ranks listed in `excludeRanks`, alive
/// or not (like `ncclCommShrink`'s exclude list). The excluded ranks do not call it; every other
/// rank does, with the same list. `excludeRanks` may be NULL when `excludeCount` is 0.
///
/// # Safety
/// `excludeRanks` is readable for `excludeCount` ints (or NULL with a count of 0); `newcomm` is
/// NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommShrinkExclude(
    comm: oxcclComm_t,
    excludeRanks: *const c_int,
    excludeCount: c_int,
    newcomm: *mut oxcclComm_t,
) -> oxcclResult_t {
    with_comm("oxcclCommShrinkExclude", comm, |h| {
        if newcomm.is_null() {
            return Err(null("newcomm"));
        }
        let count = usize::try_from(excludeCount).map_err(|_| {
            Error::invalid_argument(format!("excludeCount {excludeCount} is negative"))
        })?;
        if count > 0 && excludeRanks.is_null() {
            return Err(null("excludeRanks"));
        }
        let list: &[c_int] = if count == 0 {
            &[]
        } else {
            // SAFETY: non-null and readable for `count` ints (caller's contract).
            unsafe { std::slice::from_raw_parts(excludeRanks, count) }
        };
        let exclude = list
            .iter()
            .map(|&r| {
                usize::try_from(r)
                    .map_err(|_| Error::invalid_argument(format!("excluded rank {r} is negative")))
            })
            .collect::<Result<Vec<usize>, Error>>()?;
        let c = h.comm.shrink_excluding(&exclude)?;
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(newcomm, Handle::register(c, &h.settings())) };
        Ok(())
    })
}

/// Revokes `comm` (like `ncclCommRevoke`): a call in flight on it in another thread fails within
/// about 100 ms, peers are told (idle ones too), and later calls fail at once; the handle stays
/// valid for `oxcclCommShrink` / `oxcclCommShrinkExclude`, and must still be destroyed.
///
/// # Safety
/// None beyond the types: `comm` is never dereferenced unless it is a live communicator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommRevoke(comm: oxcclComm_t) -> oxcclResult_t {
    with_comm("oxcclCommRevoke", comm, |h| {
        h.comm.revoke();
        Ok(())
    })
}

/// On rank 0 of `comm`: a fresh id for `oxcclCommGrow` (like `ncclCommGetUniqueId`). Rank 0
/// passes it to `oxcclCommGrow`; the new processes get it out of band with their new ranks.
///
/// # Safety
/// `uniqueId` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommGetUniqueId(
    comm: oxcclComm_t,
    uniqueId: *mut oxcclUniqueId,
) -> oxcclResult_t {
    with_comm("oxcclCommGetUniqueId", comm, |h| {
        if uniqueId.is_null() {
            return Err(null("uniqueId"));
        }
        let id = h.comm.grow_id()?;
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(uniqueId, to_c(&id)) };
        Ok(())
    })
}

/// Grows to `nranks` ranks (like `ncclCommGrow`). Every rank of `comm` calls it with `comm`
/// (rank 0 with the id from `oxcclCommGetUniqueId`, the others with that id or NULL; `rank` is
/// ignored: they keep their ranks). Each new process calls it with `comm` NULL, the id, and its
/// new `rank` (from `oxcclCommCount(comm)` up to `nranks - 1`). `config` may be NULL (settings
/// are inherited from `comm` where it has one). It returns once every member, old and new, is in
/// the grown communicator; if one is lost on the way it fails everywhere, and `comm` (still
/// valid) is the one to shrink.
///
/// # Safety
/// `uniqueId` is NULL or points to an `oxcclUniqueId`; `newcomm` is NULL (an error) or
/// writable; `config` is NULL or an initialised `oxcclConfig_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommGrow(
    comm: oxcclComm_t,
    nranks: c_int,
    uniqueId: *const oxcclUniqueId,
    rank: c_int,
    newcomm: *mut oxcclComm_t,
    config: *const oxcclConfig_t,
) -> oxcclResult_t {
    let body = |h: Option<&Handle>| -> Result<(), Error> {
        if newcomm.is_null() {
            return Err(null("newcomm"));
        }
        let n = usize::try_from(nranks)
            .map_err(|_| Error::invalid_argument(format!("nranks {nranks} is negative")))?;
        // SAFETY: NULL or initialised (caller's contract).
        let (cfg, mut set) = unsafe { read_config(config)? };
        if let (Some(h), None) = (h, &set.name) {
            set.name = h.settings().name;
        }
        let id = if uniqueId.is_null() {
            None
        } else {
            // SAFETY: non-null, points to an oxcclUniqueId (caller's contract).
            Some(from_c(unsafe { &*uniqueId })?)
        };
        let c = match h {
            Some(h) => h.comm.grow(n, id.as_ref(), cfg)?,
            None => {
                let id = id.ok_or_else(|| null("uniqueId (a new rank joins with it)"))?;
                let r = usize::try_from(rank)
                    .ok()
                    .filter(|&r| r < n)
                    .ok_or_else(|| {
                        Error::invalid_argument(format!(
                            "rank {rank} of {nranks}: need 0 <= rank < nranks"
                        ))
                    })?;
                Communicator::join(r, n, &id, cfg)?
            }
        };
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(newcomm, Handle::register(c, &set)) };
        Ok(())
    };
    if comm.is_null() {
        guard("oxcclCommGrow", None, || body(None))
    } else {
        with_comm("oxcclCommGrow", comm, |h| body(Some(h)))
    }
}

/// The number of ranks in `comm`.
///
/// # Safety
/// `count` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommCount(comm: oxcclComm_t, count: *mut c_int) -> oxcclResult_t {
    with_comm("oxcclCommCount", comm, |h| {
        if count.is_null() {
            return Err(null("count"));
        }
        let n = c_int::try_from(h.comm.size())
            .map_err(|_| Error::internal("rank count exceeds int"))?;
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(count, n) };
        Ok(())
    })
}

/// This rank's number in `comm`.
///
/// # Safety
/// `rank` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommUserRank(comm: oxcclComm_t, rank: *mut c_int) -> oxcclResult_t {
    with_comm("oxcclCommUserRank", comm, |h| {
        if rank.is_null() {
            return Err(null("rank"));
        }
        let r = c_int::try_from(h.comm.rank()).map_err(|_| Error::internal("rank exceeds int"))?;
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(rank, r) };
        Ok(())
    })
}

/// Where this rank runs, from the host map every rank of `comm` derived at init (ranks share a
/// host when their boot id, host name and network namespace agree): `host` this rank's host
/// index (hosts are numbered by their lowest rank), `nHosts` the number of hosts, `localRank`
/// and `localSize` this rank's index among its host's ranks and their number, `rail` the NIC
/// index its inter-host traffic uses (local rank mod this host's TCP NICs). Any of them may be
/// NULL when not wanted; the others are written only on success.
///
/// # Safety
/// Each pointer is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommTopology(
    comm: oxcclComm_t,
    host: *mut c_int,
    nHosts: *mut c_int,
    localRank: *mut c_int,
    localSize: *mut c_int,
    rail: *mut c_int,
) -> oxcclResult_t {
    with_comm("oxcclCommTopology", comm, |h| {
        let t = h.comm.topology();
        let int = |v: usize| {
            c_int::try_from(v).map_err(|_| Error::internal("topology value exceeds int"))
        };
        let vals = [
            (host, int(t.host())?),
            (nHosts, int(t.nhosts())?),
            (localRank, int(t.local_rank())?),
            (localSize, int(t.local_size())?),
            (rail, int(t.rail())?),
        ];
        for (out, v) in vals {
            if !out.is_null() {
                // SAFETY: non-null and writable (caller's contract).
                unsafe { put(out, v) };
            }
        }
        Ok(())
    })
}

/// `oxcclSuccess` while `comm` is healthy, else the code of the first failure that revoked it:
/// one reported by a call on it (a lost peer, a timeout, a mismatch...), or one the library
/// learnt with no call in flight (a rank declared lost by liveness, a peer's abort), in which
/// case `oxcclGetLastError(comm)` says which. After that, every call on it fails; destroy it,
/// or shrink it. Never blocks (poll it from a watchdog thread while idle or while another thread
/// is inside a call).
///
/// # Safety
/// `asyncError` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommGetAsyncError(
    comm: oxcclComm_t,
    asyncError: *mut oxcclResult_t,
) -> oxcclResult_t {
    if let Some(Entry::Pending(p)) = Handle::entry(comm) {
        // Initialising in the background: InProgress, then the init's failure (or, once it
        // succeeded, the entry is Ready and the code below answers).
        return guard("oxcclCommGetAsyncError", Some(&p.shared), || {
            if asyncError.is_null() {
                return Err(null("asyncError"));
            }
            // SAFETY: non-null and writable (caller's contract).
            unsafe { put(asyncError, p.state()) };
            Ok(())
        });
    }
    with_comm("oxcclCommGetAsyncError", comm, |h| {
        if asyncError.is_null() {
            return Err(null("asyncError"));
        }
        if h.shared.async_error.load(Ordering::SeqCst) == 0 {
            // Nothing failed through this handle; the core may know more without any call in
            // flight (a rank declared lost by the heartbeats, a peer's abort). Never blocks.
            if let Some(e) = h.comm.async_error() {
                h.shared.note_revoke(&e);
            }
        }
        let code = h.shared.async_error.load(Ordering::SeqCst);
        let r = oxcclResult_t::from_c(code).unwrap_or(oxcclResult_t::oxcclInternalError);
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(asyncError, r) };
        Ok(())
    })
}

/// The name `config->commName` gave `comm` (or its parent, for shrink and grow): `*name` is a
/// NUL-terminated string that lives as long as the communicator, `""` when it has none. Works on
/// a communicator still initialising (`blocking = 0`) too. The name also prefixes the
/// communicator's error messages (`oxcclGetLastError(comm)`).
///
/// # Safety
/// `name` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclCommName(
    comm: oxcclComm_t,
    name: *mut *const c_char,
) -> oxcclResult_t {
    let shared = Handle::shared_of(comm);
    guard("oxcclCommName", shared.as_deref(), || {
        let Some(sh) = &shared else {
            return Err(if comm.is_null() {
                null("comm")
            } else {
                not_live()
            });
        };
        if name.is_null() {
            return Err(null("name"));
        }
        // SAFETY: non-null and writable (caller's contract); the string lives in the
        // communicator's Shared, which outlives the handle.
        unsafe { put(name, sh.name_ptr()) };
        Ok(())
    })
}
