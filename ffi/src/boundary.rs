//! The boundary every `extern "C"` body runs inside: panics caught, errors turned into result
//! codes and remembered as messages (per communicator and per thread).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use std::sync::atomic::{AtomicI32, Ordering};

use core_oxccl::Error;

use crate::comm::{Handle, oxcclComm_t};
use crate::types::{ResultArg, oxcclResult_t};

thread_local! {
    /// The message of the last failure on this thread (for `oxcclGetLastError(NULL)`).
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

/// How many messages a communicator keeps alive: a pointer `oxcclGetLastError(comm)` returned
/// stays valid until this many later failures on that communicator (or its destruction), even when
/// another thread fails meanwhile.
const KEEP: usize = 16;

/// A communicator's recent error messages, newest last.
#[derive(Default)]
pub(crate) struct ErrorLog(Mutex<VecDeque<CString>>);

/// What a communicator's handle and its requests share: where their errors are recorded (a
/// request may report after its communicator is gone).
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) errors: ErrorLog,
    /// The first failure that revoked the communicator, as an `oxcclResult_t` (0: none).
    pub(crate) async_error: AtomicI32,
    /// Operators `oxcclRedOpCreatePreMulSum` made (index = handle - oxcclNumOps).
    pub(crate) premul: Mutex<Vec<Option<crate::premul::PreMul>>>,
    /// `config->commName` (empty: none), shown in the communicator's error messages.
    name: CString,
}

impl Shared {
    /// The shared state of a communicator called `name` (`config->commName`).
    pub(crate) fn named(name: Option<String>) -> Shared {
        Shared {
            name: name.map(to_cstring).unwrap_or_default(),
            ..Shared::default()
        }
    }

    /// The name, if it has one.
    pub(crate) fn name(&self) -> Option<String> {
        let s = self.name.to_string_lossy();
        (!s.is_empty()).then(|| s.into_owned())
    }

    /// The name as a C string (`""` for none), valid while this lives.
    pub(crate) fn name_ptr(&self) -> *const c_char {
        self.name.as_ptr()
    }

    /// `func`, with the communicator's name when it has one: how its messages start.
    fn prefix(&self, func: &str) -> String {
        match self.name.to_str() {
            Ok("") | Err(_) => func.to_string(),
            Ok(n) => format!("{func} [comm {n:?}]"),
        }
    }
}

impl Shared {
    /// Remembers the first failure of a call on the communicator that revoked it: every error
    /// from the core but a bad argument (which it rejects before anything is sent) revokes it,
    /// including a usage error a peer's abort propagates. (Usage errors of this crate's own, such
    /// as a non-blocking call inside a group, are reported without the communicator.)
    fn note_async(&self, e: &Error) {
        let code = oxcclResult_t::of(e);
        if code != oxcclResult_t::oxcclInvalidArgument {
            let _ = self.async_error.compare_exchange(
                0,
                code as i32,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }
}

impl Shared {
    /// Records a revoke the core saw on its own (heartbeats, a peer's abort), with no call of
    /// ours failing: the code becomes the async error and the message `oxcclGetLastError(comm)`
    /// returns, once (the first failure stays the one reported).
    pub(crate) fn note_revoke(&self, e: &Error) {
        let code = oxcclResult_t::of(e) as i32;
        if self
            .async_error
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.errors
                .push(to_cstring(format!("oxcclCommGetAsyncError: {e}")));
        }
    }
}

impl ErrorLog {
    fn push(&self, msg: CString) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(msg);
    }

    fn last(&self) -> *const c_char {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match q.back() {
            // The CString's heap buffer does not move when the deque does; it lives until KEEP
            // more messages are pushed or the handle is freed.
            Some(s) => s.as_ptr(),
            None => c"".as_ptr(),
        }
    }
}

fn to_cstring(s: String) -> CString {
    CString::new(s).unwrap_or_else(|e| {
        let mut v = e.into_vec();
        v.retain(|&b| b != 0);
        CString::new(v).unwrap_or_default()
    })
}

/// Records `e` (thread-local, and on `comm` when there is one) and returns its code.
pub(crate) fn fail(comm: Option<&Shared>, func: &str, e: &Error) -> oxcclResult_t {
    note(comm, &format!("{func}: {e}"));
    if let Some(h) = comm {
        h.note_async(e);
    }
    oxcclResult_t::of(e)
}

/// Records `msg` (`"func: what"`) as the last failure on this thread and on `comm` (with the
/// communicator's name after the function's, when it has one), without touching its async
/// error.
pub(crate) fn note(comm: Option<&Shared>, msg: &str) {
    let msg = match comm {
        Some(h) => {
            let (func, rest) = msg.split_once(": ").unwrap_or((msg, ""));
            let m = to_cstring(format!("{}: {rest}", h.prefix(func)));
            h.errors.push(m.clone());
            m
        }
        None => to_cstring(msg.to_string()),
    };
    LAST.with(|l| *l.borrow_mut() = msg);
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Runs `f` inside the panic boundary. `comm` (if any) is where the error is also recorded;
/// it is resolved before `f` runs, so `f` gets it too.
pub(crate) fn guard(
    func: &'static str,
    comm: Option<&Shared>,
    f: impl FnOnce() -> Result<(), Error>,
) -> oxcclResult_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => oxcclResult_t::oxcclSuccess,
        Ok(Err(e)) => fail(comm, func, &e),
        Err(p) => fail(
            comm,
            func,
            &Error::internal(format!(
                "panic: {} (a bug in oxccl; please report it)",
                panic_message(&*p)
            )),
        ),
    }
}

/// A null-pointer error for argument `what`.
pub(crate) fn null(what: &str) -> Error {
    Error::invalid_argument(format!("{what} is NULL"))
}

/// The name and meaning of a result code, as a static string (never NULL; unknown codes get a
/// string that says so).
#[unsafe(no_mangle)]
pub extern "C" fn oxcclGetErrorString(result: ResultArg) -> *const c_char {
    use oxcclResult_t::*;
    let s: &'static CStr = match oxcclResult_t::from_c(result.0) {
        Some(oxcclSuccess) => c"no error",
        Some(oxcclInvalidArgument) => c"invalid argument",
        Some(oxcclInvalidUsage) => c"invalid usage",
        Some(oxcclSystemError) => c"system error",
        Some(oxcclInternalError) => c"internal error (a bug in oxccl; please report it)",
        Some(oxcclRemoteError) => c"remote error: a peer was lost",
        Some(oxcclTimeout) => c"timeout",
        Some(oxcclMismatch) => c"mismatch: ranks disagree about a call",
        Some(oxcclUnavailable) => c"unavailable",
        Some(oxcclAuthError) => c"authentication failed",
        Some(oxcclInProgress) => c"operation in progress",
        Some(oxcclNumResults) | None => c"unknown oxcclResult_t",
    };
    s.as_ptr()
}

/// The message of the last failure: on `comm` when it is not NULL (kept until 16 later failures
/// on it, or its destruction), else on the calling thread (kept until that thread's next failure;
/// this is where init failures are read). Never NULL; `""` when there was no failure.
///
/// A pointer that is not a live communicator gets the calling thread's message too.
///
/// # Safety
/// None beyond the types: `comm` is never dereferenced unless it is a live communicator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclGetLastError(comm: oxcclComm_t) -> *const c_char {
    let r = catch_unwind(AssertUnwindSafe(|| match Handle::shared_of(comm) {
        // The message lives in the communicator's shared log, which outlives this Arc.
        Some(s) => s.errors.last(),
        None => LAST.with(|l| l.borrow().as_ptr()),
    }));
    r.unwrap_or(c"oxcclGetLastError panicked".as_ptr())
}
