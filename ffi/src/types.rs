//! The C types of the ABI: result codes, element types, operators, the unique id, the config.

use std::ffi::{c_char, c_int, c_uint};

use core_oxccl::{DataType, Error, ReduceOp};

/// Major version of this library (`OXCCL_VERSION_CODE = MAJOR*10000 + MINOR*100 + PATCH`).
pub const OXCCL_MAJOR: c_int = 0;
/// Minor version of this library.
pub const OXCCL_MINOR: c_int = 1;
/// Patch version of this library.
pub const OXCCL_PATCH: c_int = 0;
/// The version this header describes, as `oxcclGetVersion` reports the library's.
pub const OXCCL_VERSION_CODE: c_int = 100;

/// Size of `oxcclUniqueId` in bytes (like `NCCL_UNIQUE_ID_BYTES`).
pub const OXCCL_UNIQUE_ID_BYTES: usize = 128;
/// A buffer of this many bytes always holds `oxcclUniqueIdToString`'s output and its NUL.
pub const OXCCL_UNIQUE_ID_STRLEN: usize = 128;

/// `oxcclConfig_t.magic` must hold this (`OXCCL_CONFIG_INITIALIZER` sets it).
pub const OXCCL_CONFIG_MAGIC: c_uint = 0x0c0c_c1c0;
/// The newest `oxcclConfig_t.version` this library reads.
pub const OXCCL_CONFIG_VERSION: c_uint = 2;

/// What every function returns, numbered as NCCL 2.30 numbers `ncclResult_t` (so a framework's
/// NCCL error handling reads them unchanged): 0 success, 2 system, 3 internal, 4 invalid
/// argument, 5 invalid usage, 6 remote error, 7 in progress (NCCL's 1, an unhandled CUDA error,
/// never occurs here). oxccl's own codes follow NCCL's range: 8 timeout, 9 mismatch,
/// 10 unavailable, 11 authentication. `oxcclGetLastError` has the message.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum oxcclResult_t {
    /// It worked.
    oxcclSuccess = 0,
    /// The operating system refused something (socket, memory, ...).
    oxcclSystemError = 2,
    /// A bug in oxccl (including a caught panic); please report it with the message.
    oxcclInternalError = 3,
    /// A bad argument: a null pointer, an out-of-range enum, rank or count, buffers that overlap.
    oxcclInvalidArgument = 4,
    /// The API was used in the wrong state, e.g. a call on a communicator an earlier failure revoked.
    oxcclInvalidUsage = 5,
    /// A peer was lost: it died or closed its connection (NCCL's name for it).
    oxcclRemoteError = 6,
    /// A non-blocking operation has not finished yet.
    oxcclInProgress = 7,
    /// A deadline passed (`OXCCL_TIMEOUT_MS` / `oxcclConfig_t.timeoutMs`).
    oxcclTimeout = 8,
    /// Ranks called different collectives, or the same one with different arguments.
    oxcclMismatch = 9,
    /// A transport or feature is not available here.
    oxcclUnavailable = 10,
    /// A connection failed authentication (wrong or missing `OXCCL_SECRET` / unique id).
    oxcclAuthError = 11,
    /// One more than the largest result code.
    oxcclNumResults = 12,
}

impl oxcclResult_t {
    /// The code of a Rust error (unknown codes of future errors read as internal errors). The
    /// Rust side's `Error::code()` is oxccl's own (it also travels in abort frames); this maps
    /// it onto the C numbering.
    pub fn of(e: &Error) -> oxcclResult_t {
        use oxcclResult_t::*;
        match e.code() {
            1 => oxcclInvalidArgument,
            2 => oxcclInvalidUsage,
            3 => oxcclSystemError,
            5 => oxcclRemoteError,
            6 => oxcclTimeout,
            7 => oxcclMismatch,
            8 => oxcclUnavailable,
            9 => oxcclAuthError,
            _ => oxcclInternalError,
        }
    }

    /// The code numbered `v`, if there is one (`oxcclNumResults` is not a result).
    pub fn from_c(v: c_int) -> Option<oxcclResult_t> {
        use oxcclResult_t::*;
        Some(match v {
            0 => oxcclSuccess,
            2 => oxcclSystemError,
            3 => oxcclInternalError,
            4 => oxcclInvalidArgument,
            5 => oxcclInvalidUsage,
            6 => oxcclRemoteError,
            7 => oxcclInProgress,
            8 => oxcclTimeout,
            9 => oxcclMismatch,
            10 => oxcclUnavailable,
            11 => oxcclAuthError,
            _ => return None,
        })
    }
}

/// Element types, numbered as NCCL numbers `ncclDataType_t` (so the values are interchangeable).
/// The aliases `oxcclChar`, `oxcclInt`, `oxcclHalf`, `oxcclFloat`, `oxcclDouble` are macros.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum oxcclDataType_t {
    /// `int8_t`
    oxcclInt8 = 0,
    /// `uint8_t`
    oxcclUint8 = 1,
    /// `int32_t`
    oxcclInt32 = 2,
    /// `uint32_t`
    oxcclUint32 = 3,
    /// `int64_t`
    oxcclInt64 = 4,
    /// `uint64_t`
    oxcclUint64 = 5,
    /// IEEE 754 binary16
    oxcclFloat16 = 6,
    /// `float`
    oxcclFloat32 = 7,
    /// `double`
    oxcclFloat64 = 8,
    /// bfloat16
    oxcclBfloat16 = 9,
    /// The number of types.
    oxcclNumTypes = 10,
}

/// Reduction operators, numbered as NCCL numbers `ncclRedOp_t`. `oxcclAvg` sums, then divides
/// once by the number of ranks.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum oxcclRedOp_t {
    /// `a + b` (integers wrap)
    oxcclSum = 0,
    /// `a * b` (integers wrap)
    oxcclProd = 1,
    /// `max(a, b)` (NaN propagates)
    oxcclMax = 2,
    /// `min(a, b)` (NaN propagates)
    oxcclMin = 3,
    /// the sum divided by the number of ranks
    oxcclAvg = 4,
    /// The number of operators.
    oxcclNumOps = 5,
}

// C may pass any int where the header says an enum, and a Rust enum holding a value that is not
// one of its variants is undefined behaviour. So functions take these plain ints, which the header
// shows under the enum's name (cbindgen.toml renames them and does not emit them), and convert.

/// An `oxcclDataType_t` as C passed it: any int.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataTypeArg(pub c_int);

/// An `oxcclRedOp_t` as C passed it: any int.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedOpArg(pub c_int);

/// An `oxcclResult_t` as C passed it: any int.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultArg(pub c_int);

impl DataTypeArg {
    /// The element type, or an invalid-argument error naming the value.
    pub fn get(self) -> Result<DataType, Error> {
        DataType::from_i32(self.0).ok_or_else(|| {
            Error::invalid_argument(format!(
                "datatype {} is not an oxcclDataType_t (0 = oxcclInt8 .. 9 = oxcclBfloat16)",
                self.0
            ))
        })
    }
}

impl RedOpArg {
    /// The operator, or an invalid-argument error naming the value.
    pub fn get(self) -> Result<ReduceOp, Error> {
        ReduceOp::from_i32(self.0).ok_or_else(|| {
            Error::invalid_argument(format!(
                "op {} is not an oxcclRedOp_t (0 = oxcclSum .. 4 = oxcclAvg)",
                self.0
            ))
        })
    }
}

/// Like `ncclUniqueId`: 128 opaque bytes that rank 0 gets from `oxcclGetUniqueId` and sends to
/// every other rank out of band (or as text: `oxcclUniqueIdToString` / `oxcclUniqueIdFromString`).
/// It holds the root's address and the job's secret: treat it like a password.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct oxcclUniqueId {
    /// The bytes (see `oxccl::UniqueId::to_bytes` for the layout).
    pub internal: [c_char; OXCCL_UNIQUE_ID_BYTES],
}

/// Prints no bytes: they hold the job's secret.
impl std::fmt::Debug for oxcclUniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("oxcclUniqueId").finish_non_exhaustive()
    }
}

/// Settings for `oxcclCommInitRankConfig` / `oxcclCommInitFromEnvConfig`, like `ncclConfig_t`.
/// Start from `OXCCL_CONFIG_INITIALIZER` and set what you need; fields left at
/// `OXCCL_CONFIG_UNDEF_INT` / `NULL` come from the environment (`OXCCL_TIMEOUT_MS`,
/// `OXCCL_NSOCKS`, `OXCCL_CHUNK_BYTES`, `OXCCL_DETERMINISTIC`, `OXCCL_TRANSPORT`, `OXCCL_ALGO`),
/// then the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct oxcclConfig_t {
    /// `sizeof(oxcclConfig_t)` (set by the initializer).
    pub size: usize,
    /// `OXCCL_CONFIG_MAGIC` (set by the initializer).
    pub magic: c_uint,
    /// `OXCCL_CONFIG_VERSION` (set by the initializer).
    pub version: c_uint,
    /// Give up on any wait after this many milliseconds without progress (> 0).
    pub timeoutMs: c_int,
    /// TCP sockets per peer (1..=64).
    pub nsocks: c_int,
    /// Largest message, the pipelining grain, in bytes (64..=64 MiB).
    pub chunkBytes: c_int,
    /// 1: bitwise-reproducible reductions (every element folded in rank order); 0: fastest.
    pub deterministic: c_int,
    /// `"auto"`, `"tcp"` or `"shm"`.
    pub transport: *const c_char,
    /// Force an algorithm: `"ring"`, `"direct"`, or per collective `"allreduce:ring,barrier:direct"`.
    pub algo: *const c_char,
    /// Version 2. 0: `oxcclCommInitRankConfig` / `oxcclCommInitFromEnvConfig` return at once with
    /// `oxcclInProgress` and the communicator initialises in the background: poll
    /// `oxcclCommGetAsyncError` until it says `oxcclSuccess` (or the init's error); every other
    /// call on it returns `oxcclInProgress` meanwhile (destroy and abort work). 1 (the default):
    /// init returns when done. Split, shrink and grow always finish before returning.
    pub blocking: c_int,
    /// Version 2. A name for the communicator: in its error messages, read back with
    /// `oxcclCommName`; shrink and grow keep the parent's.
    pub commName: *const c_char,
    /// Version 2. 1: `oxcclCommSplit` of this communicator shares what it can with the child
    /// (unset in a split's config: as the parent's). Today a split always bootstraps over the
    /// parent's links (no rendezvous through the original root), with or without it; links and
    /// shared-memory segments are the child's own, since calls on parent and child may run at the
    /// same time on different threads.
    pub splitShare: c_int,
}

/// Sentinel for "not set" in `oxcclConfig_t`'s int fields (as `NCCL_CONFIG_UNDEF_INT`).
pub(crate) const CONFIG_UNDEF_INT: c_int = c_int::MIN;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_cargo() {
        let p = |s: &str| s.parse::<c_int>().unwrap();
        assert_eq!(OXCCL_MAJOR, p(env!("CARGO_PKG_VERSION_MAJOR")));
        assert_eq!(OXCCL_MINOR, p(env!("CARGO_PKG_VERSION_MINOR")));
        assert_eq!(OXCCL_PATCH, p(env!("CARGO_PKG_VERSION_PATCH")));
        assert_eq!(
            OXCCL_VERSION_CODE,
            OXCCL_MAJOR * 10000 + OXCCL_MINOR * 100 + OXCCL_PATCH
        );
    }

    #[test]
    fn enums_match_the_rust_numbering() {
        for t in DataType::ALL {
            assert_eq!(DataTypeArg(t as c_int).get().unwrap(), t);
        }
        assert_eq!(oxcclDataType_t::oxcclBfloat16 as i32, DataType::BF16 as i32);
        assert_eq!(oxcclDataType_t::oxcclFloat16 as i32, DataType::F16 as i32);
        assert_eq!(oxcclDataType_t::oxcclNumTypes as usize, DataType::ALL.len());
        assert_eq!(oxcclRedOp_t::oxcclAvg as i32, ReduceOp::Avg as i32);
        assert_eq!(oxcclRedOp_t::oxcclNumOps as usize, ReduceOp::ALL.len());
        for bad in [-1, 10, c_int::MAX, c_int::MIN] {
            assert!(DataTypeArg(bad).get().is_err());
        }
        for bad in [-1, 5, c_int::MAX] {
            assert!(RedOpArg(bad).get().is_err());
        }
        for c in (0..12).filter(|&c| c != 1) {
            assert_eq!(oxcclResult_t::from_c(c).unwrap() as c_int, c);
        }
        // 1 is NCCL's unhandled CUDA error, which never happens here.
        for bad in [1, 12, -1] {
            assert!(oxcclResult_t::from_c(bad).is_none());
        }
    }

    #[test]
    fn result_codes_are_nccls_numbers() {
        use oxcclResult_t::*;
        // ncclResult_t in NCCL 2.30's nccl.h.
        let nccl = [
            (oxcclSuccess, 0),
            (oxcclSystemError, 2),
            (oxcclInternalError, 3),
            (oxcclInvalidArgument, 4),
            (oxcclInvalidUsage, 5),
            (oxcclRemoteError, 6),
            (oxcclInProgress, 7),
        ];
        for (ours, theirs) in nccl {
            assert_eq!(ours as c_int, theirs, "{ours:?}");
        }
        for own in [
            oxcclTimeout,
            oxcclMismatch,
            oxcclUnavailable,
            oxcclAuthError,
        ] {
            assert!(own as c_int >= 8, "{own:?} must follow NCCL's range");
        }
    }

    #[test]
    fn every_rust_error_has_its_code() {
        use oxcclResult_t::*;
        let errs = [
            Error::invalid_argument(String::new()),
            Error::invalid_usage(String::new()),
            Error::system(String::new()),
            Error::internal(String::new()),
            Error::peer_lost(1, String::new()),
            Error::timed_out(None, String::new()),
            Error::mismatch(1, String::new()),
            Error::unavailable(String::new()),
            Error::auth(String::new()),
        ];
        let want = [
            oxcclInvalidArgument,
            oxcclInvalidUsage,
            oxcclSystemError,
            oxcclInternalError,
            oxcclRemoteError,
            oxcclTimeout,
            oxcclMismatch,
            oxcclUnavailable,
            oxcclAuthError,
        ];
        for (e, w) in errs.iter().zip(want) {
            assert_eq!(oxcclResult_t::of(e), w, "{e:?}");
        }
    }

    #[test]
    fn unique_id_is_128_bytes() {
        assert_eq!(std::mem::size_of::<oxcclUniqueId>(), 128);
        assert_eq!(
            OXCCL_UNIQUE_ID_BYTES,
            core_oxccl::internals::bootstrap::UNIQUE_ID_BYTES
        );
    }
}
