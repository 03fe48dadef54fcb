//! How a checked call runs: at once (blocking), deferred to the end of the calling thread's
//! group (`oxcclGroupStart` / `oxcclGroupEnd`, like NCCL's), or started without blocking
//! (the `oxcclI*` forms, returning an `oxcclRequest_t` for `oxcclWait` / `oxcclTest`).

use std::cell::RefCell;
use std::ffi::c_int;
use std::sync::Arc;

use core_oxccl::{Call, Communicator, Error, Request};

use crate::boundary::{Shared, fail, guard, null};
use crate::comm::{Handle, oxcclComm_t};
use crate::op::{Op, check_disjoint};
use crate::types::oxcclResult_t;

/// Calls deferred by an open group on this thread, with the communicators they go to.
#[derive(Default)]
struct Group {
    depth: usize,
    calls: Vec<(oxcclComm_t, &'static str, Op)>,
}

thread_local! {
    static GROUP: RefCell<Group> = RefCell::new(Group::default());
}

/// A started non-blocking call, opaque to C. Holds what the call borrows from the library side
/// (owned copies, counts) until it is freed.
pub struct oxcclRequest {
    req: Request<'static>,
    shared: Arc<Shared>,
    func: &'static str,
    _ops: Vec<Op>,
}

impl std::fmt::Debug for oxcclRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("oxcclRequest")
            .field("func", &self.func)
            .finish_non_exhaustive()
    }
}

/// The handle C holds for a started call.
pub type oxcclRequest_t = *mut oxcclRequest;

/// Runs `op` on `h` now, or defers it to the open group.
///
/// # Safety
/// `op`'s buffers are valid until it completes: at once, or, in a group, at `oxcclGroupEnd`
/// (the C caller's promise); `comm` is the live handle `h` came from.
pub(crate) unsafe fn submit(
    func: &'static str,
    comm: oxcclComm_t,
    h: &Handle,
    op: Op,
) -> Result<(), Error> {
    let deferred = GROUP.with(|g| {
        let mut g = g.borrow_mut();
        if g.depth > 0 {
            g.calls.push((comm, func, op));
            None
        } else {
            Some(op)
        }
    });
    let Some(op) = deferred else {
        return Ok(());
    };
    // SAFETY: the buffers are valid for this blocking call (caller's contract) and it is the only
    // call using them.
    h.comm.run(unsafe { op.call() })
}

/// Fails when the calling thread has a group open: non-blocking calls cannot join a group.
/// Checked before the communicator is involved (a usage error that does not revoke it).
pub(crate) fn no_group(func: &'static str) -> Result<(), oxcclResult_t> {
    if GROUP.with(|g| g.borrow().depth > 0) {
        return Err(guard(func, None, || {
            Err(Error::invalid_usage(format!(
                "{func} inside oxcclGroupStart/End; use the blocking form there (the group runs \
                 its calls together at oxcclGroupEnd)"
            )))
        }));
    }
    Ok(())
}

/// Starts `op` on `h` without blocking and writes the request.
///
/// # Safety
/// `op`'s buffers stay valid until the request completes (the C caller's promise); `request` is
/// non-null and writable.
pub(crate) unsafe fn start(
    func: &'static str,
    h: &Arc<Handle>,
    op: Op,
    request: *mut oxcclRequest_t,
) -> Result<(), Error> {
    // SAFETY: the buffers stay valid until the request completes (caller's contract), which is
    // all the `'static` call borrows them for: the worker is done with them then. (The worker
    // holds `h` meanwhile, so the communicator cannot go away under it either.)
    let call = unsafe { op.call() };
    let req = Communicator::start_detached(h.clone(), vec![call])?;
    let r = Box::new(oxcclRequest {
        req,
        shared: h.shared.clone(),
        func,
        _ops: vec![op],
    });
    // SAFETY: non-null and writable (caller's contract).
    unsafe { request.write(Box::into_raw(r)) };
    Ok(())
}

/// Opens a group on the calling thread (groups nest; the outermost `oxcclGroupEnd` runs them):
/// until then, collective and point-to-point calls are only checked and queued, and return
/// `oxcclSuccess`. Their buffers must stay valid until `oxcclGroupEnd` returns.
#[unsafe(no_mangle)]
pub extern "C" fn oxcclGroupStart() -> oxcclResult_t {
    guard("oxcclGroupStart", None, || {
        GROUP.with(|g| g.borrow_mut().depth += 1);
        Ok(())
    })
}

/// Closes a group; the outermost one runs every queued call, the calls of each communicator
/// together (sends and receives between the same ranks progress at once, as in NCCL), the
/// communicators concurrently, and returns when all are done: the first failure's code, with each
/// failing communicator's message in `oxcclGetLastError(comm)`.
///
/// # Safety
/// The communicators and buffers of the queued calls are still valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclGroupEnd() -> oxcclResult_t {
    let mut first = oxcclResult_t::oxcclSuccess;
    let r = guard("oxcclGroupEnd", None, || {
        let calls = GROUP.with(|g| {
            let mut g = g.borrow_mut();
            match g.depth {
                0 => Err(Error::invalid_usage(
                    "oxcclGroupEnd without oxcclGroupStart",
                )),
                1 => {
                    g.depth = 0;
                    Ok(Some(std::mem::take(&mut g.calls)))
                }
                _ => {
                    g.depth -= 1;
                    Ok(None)
                }
            }
        })?;
        let Some(calls) = calls else {
            return Ok(());
        };
        if calls.is_empty() {
            return Ok(());
        }
        let ops: Vec<&Op> = calls.iter().map(|(_, _, op)| op).collect();
        check_disjoint(&ops)?;
        // Per communicator, in order of first appearance.
        let mut comms: Vec<oxcclComm_t> = Vec::new();
        for (c, _, _) in &calls {
            if !comms.contains(c) {
                comms.push(*c);
            }
        }
        // Held until the calls are done, so a concurrent destroy cannot free one under them.
        let handles: Vec<Arc<Handle>> = comms
            .iter()
            .map(|&c| {
                Handle::lookup(c).ok_or_else(|| {
                    Error::invalid_argument(
                        "a communicator used in this group was destroyed before oxcclGroupEnd",
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let calls_of = |c: oxcclComm_t| {
            calls
                .iter()
                .filter(move |(x, _, _)| *x == c)
                .map(|(_, _, op)| {
                    // SAFETY: the buffers are valid until this returns (function contract), and
                    // the calls (`'static`, as start_detached takes them) are done by then: the
                    // blocking group returns after them, and every started request is waited
                    // for below. No two queued calls race on memory (check_disjoint above).
                    unsafe { op.call() }
                })
                .collect::<Vec<Call<'static>>>()
        };
        let mut results: Vec<Result<(), Error>> = Vec::new();
        if handles.len() == 1 {
            results.push(handles[0].comm.group(calls_of(comms[0])));
        } else {
            // Each communicator's calls on its worker, all at once, then wait for all.
            let mut started = Vec::new();
            for (h, &c) in handles.iter().zip(&comms) {
                // The calls are `'static` (see calls_of): the buffers stay valid until every
                // request below has completed, as we wait for all of them before returning.
                started.push(Communicator::start_detached(h.clone(), calls_of(c)));
            }
            for s in started {
                results.push(s.and_then(|req| req.wait()));
            }
        }
        for (h, r) in handles.iter().zip(results) {
            if let Err(e) = r {
                let code = fail(Some(&h.shared), "oxcclGroupEnd", &e);
                if first == oxcclResult_t::oxcclSuccess {
                    first = code;
                }
            }
        }
        Ok(())
    });
    if r != oxcclResult_t::oxcclSuccess {
        r
    } else {
        first
    }
}

/// Closes a group like `oxcclGroupEnd`, but starts the queued calls without blocking and
/// writes one `oxcclRequest_t` for all of them (done when every call is): the non-blocking form
/// a framework needs to batch sends and receives, or several collectives, and overlap them with
/// compute (torch's `batch_isend_irecv`, coalesced collectives). Only the outermost group can end
/// this way, and its calls must all be on one communicator; a group that queued no calls is an
/// error (there is nothing to wait for). The buffers must stay valid until the request is done.
///
/// # Safety
/// The communicator and buffers of the queued calls stay valid until the request is done;
/// `request` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclGroupEndAsync(request: *mut oxcclRequest_t) -> oxcclResult_t {
    let calls = GROUP.with(|g| {
        let mut g = g.borrow_mut();
        match g.depth {
            1 if !request.is_null() => {
                g.depth = 0;
                Ok(std::mem::take(&mut g.calls))
            }
            0 => Err("oxcclGroupEndAsync without oxcclGroupStart"),
            1 => Err("request is NULL"),
            _ => Err(
                "oxcclGroupEndAsync inside a nested group; end the inner groups with oxcclGroupEnd",
            ),
        }
    });
    let calls = match calls {
        Ok(c) => c,
        Err(msg) => {
            return guard("oxcclGroupEndAsync", None, || {
                Err(Error::invalid_usage(msg))
            });
        }
    };
    let Some(&(comm, _, _)) = calls.first() else {
        return guard("oxcclGroupEndAsync", None, || {
            Err(Error::invalid_usage(
                "oxcclGroupEndAsync: the group queued no calls; nothing to start",
            ))
        });
    };
    if calls.iter().any(|(c, _, _)| *c != comm) {
        return guard("oxcclGroupEndAsync", None, || {
            Err(Error::invalid_usage(
                "oxcclGroupEndAsync: the group's calls use several communicators; end it with \
                 oxcclGroupEnd, or start one group per communicator",
            ))
        });
    }
    crate::comm::with_comm("oxcclGroupEndAsync", comm, |h| {
        let ops: Vec<Op> = calls.into_iter().map(|(_, _, op)| op).collect();
        let refs: Vec<&Op> = ops.iter().collect();
        check_disjoint(&refs)?;
        // SAFETY: the buffers stay valid until the request completes (caller's contract), which
        // is all the `'static` calls borrow them for, and no two calls race on memory
        // (check_disjoint). The worker holds `h` meanwhile.
        let calls = ops.iter().map(|op| unsafe { op.call() }).collect();
        let req = Communicator::start_detached(h.clone(), calls)?;
        let r = Box::new(oxcclRequest {
            req,
            shared: h.shared.clone(),
            func: "oxcclGroupEndAsync",
            _ops: ops,
        });
        // SAFETY: checked non-null above; writable (caller's contract).
        unsafe { request.write(Box::into_raw(r)) };
        Ok(())
    })
}

/// Waits for a started call and returns its result (its message, on failure, in
/// `oxcclGetLastError(comm)` of the call's communicator and of this thread). The request stays
/// allocated: free it with `oxcclRequestFree`.
///
/// # Safety
/// `request` is NULL (an error) or a live request.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclWait(request: oxcclRequest_t) -> oxcclResult_t {
    // SAFETY: NULL or live (caller's contract).
    let Some(r) = (unsafe { request.as_ref() }) else {
        return guard("oxcclWait", None, || Err(null("request")));
    };
    guard(r.func, Some(&r.shared), || r.req.wait())
}

/// Waits at most `timeoutMs` milliseconds for a started call: its result when it finished in
/// time, else `oxcclTimeout` with the request still running and valid (wait again, or free it).
/// A negative `timeoutMs` waits without a limit of its own, as `oxcclWait` (the communicator's
/// deadline still bounds every call).
///
/// # Safety
/// `request` is NULL (an error) or a live request.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclWaitTimeout(
    request: oxcclRequest_t,
    timeoutMs: c_int,
) -> oxcclResult_t {
    // SAFETY: NULL or live (caller's contract).
    let Some(r) = (unsafe { request.as_ref() }) else {
        return guard("oxcclWaitTimeout", None, || Err(null("request")));
    };
    match u64::try_from(timeoutMs) {
        Ok(ms) => guard(r.func, Some(&r.shared), || {
            r.req.wait_timeout(std::time::Duration::from_millis(ms))
        }),
        Err(_) => guard(r.func, Some(&r.shared), || r.req.wait()),
    }
}

/// Whether a started call is done, without blocking: `*done` = 0 while it runs, 1 when it
/// succeeded; when it failed, its error code is returned instead (and `*done` is not written).
///
/// # Safety
/// `request` is NULL (an error) or a live request; `done` is NULL (an error) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclTest(request: oxcclRequest_t, done: *mut c_int) -> oxcclResult_t {
    // SAFETY: NULL or live (caller's contract).
    let Some(r) = (unsafe { request.as_ref() }) else {
        return guard("oxcclTest", None, || Err(null("request")));
    };
    guard(r.func, Some(&r.shared), || {
        if done.is_null() {
            return Err(null("done"));
        }
        let d = match r.req.test() {
            None => 0,
            Some(Ok(())) => 1,
            Some(Err(e)) => return Err(e),
        };
        // SAFETY: non-null and writable (caller's contract).
        unsafe { done.write(d) };
        Ok(())
    })
}

/// Frees a request, first waiting for its call if it still runs (its buffers are in use until
/// then). NULL is fine.
///
/// # Safety
/// `request` is NULL or a live request; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclRequestFree(request: oxcclRequest_t) -> oxcclResult_t {
    guard("oxcclRequestFree", None, || {
        if !request.is_null() {
            // SAFETY: a live request from Box::into_raw (caller's contract), freed once.
            let r = unsafe { Box::from_raw(request) };
            let _ = r.req.wait();
        }
        Ok(())
    })
}
