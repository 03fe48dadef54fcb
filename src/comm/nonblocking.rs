//! Non-blocking calls: they run on the communicator's worker thread, in ticket order with
//! every other call. [`Communicator::scope`] makes borrowing buffers for them sound (like
//! `std::thread::scope`, every request is finished before the scope returns);
//! [`Communicator::start_detached`] is the raw form the C ABI uses.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Communicator;
use super::api::{Call, el, el_mut};
use crate::error::{Error, Result};
use crate::reduce::{Element, ReduceOp};

impl Communicator {
    /// Runs `f` with a scope in which calls can be started without blocking; every request
    /// started in it is finished before `scope` returns (so borrowing buffers is sound).
    pub fn scope<'env, R>(
        &'env self,
        f: impl for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> R,
    ) -> R {
        let scope = Scope {
            comm: self,
            pending: Mutex::new(Vec::new()),
            _scope: PhantomData,
            _env: PhantomData,
        };
        let r = f(&scope);
        let pending = std::mem::take(&mut *scope.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for c in pending {
            let _ = c.wait_forever();
        }
        r
    }

    /// Starts calls on the worker thread without tying them to a scope.
    ///
    /// # Safety
    /// Every buffer the calls borrow must stay valid (and, for receive buffers, untouched) until
    /// the returned request reports completion; the communicator must not be dropped before that
    /// either (dropping it waits for started calls, so this holds unless it is leaked).
    pub unsafe fn start_detached(&self, calls: Vec<Call<'_>>) -> Result<Request<'static>> {
        let done = self.start_raw(calls)?;
        Ok(Request {
            done,
            _borrow: PhantomData,
        })
    }

    fn start_raw(&self, calls: Vec<Call<'_>>) -> Result<Arc<Completion>> {
        if calls.is_empty() {
            return Err(Error::invalid_argument("no calls to start"));
        }
        let ticket = self.sched.take();
        let done = Arc::new(Completion::default());
        let job = Detached {
            comm: self as *const Communicator,
            // SAFETY: only the lifetime is erased; start_raw's callers guarantee the borrows
            // outlive the job (scope waits for it; start_detached's contract).
            calls: unsafe { std::mem::transmute::<Vec<Call<'_>>, Vec<Call<'static>>>(calls) },
            ticket,
            done: done.clone(),
        };
        let mut w = self
            .worker
            .lock()
            .map_err(|_| Error::internal("worker lock poisoned"))?;
        if w.is_none() {
            *w = Some(Worker::start(self.rank)?);
        }
        let sent = w.as_ref().map(|w| w.tx.send(job));
        match sent {
            Some(Ok(())) => Ok(done),
            Some(Err(mpsc::SendError(job))) => {
                self.sched.done(job.ticket);
                Err(Error::internal("the worker thread is gone"))
            }
            None => unreachable!("worker started above"),
        }
    }

    /// Waits for started calls and stops the worker thread.
    pub(super) fn stop_worker(&self) {
        let w = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = w {
            drop(w.tx);
            let _ = w.handle.join();
        }
    }
}

/// Calls handed to the worker thread.
struct Detached {
    comm: *const Communicator,
    calls: Vec<Call<'static>>,
    ticket: u64,
    done: Arc<Completion>,
}

// SAFETY: the raw pointers (the communicator, and inside `calls` the borrowed buffers) stay valid
// until `done` is signalled: scope() and start_detached() guarantee it, and the communicator's
// Drop joins the worker before anything is freed. The communicator is Sync.
unsafe impl Send for Detached {}

pub(super) struct Worker {
    tx: mpsc::Sender<Detached>,
    handle: JoinHandle<()>,
}

impl Worker {
    fn start(rank: usize) -> Result<Worker> {
        let (tx, rx) = mpsc::channel::<Detached>();
        let handle = std::thread::Builder::new()
            .name(format!("oxccl-worker-{rank}"))
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // SAFETY: see `Detached`: the communicator outlives the job.
                    let comm = unsafe { &*job.comm };
                    let mut calls = job.calls;
                    let r = comm.run_ticket(job.ticket, &mut calls);
                    job.done.set(r);
                }
            })
            .map_err(|e| Error::io("spawn the non-blocking worker thread", e))?;
        Ok(Worker { tx, handle })
    }
}

/// Completion of started calls.
#[derive(Default)]
pub(crate) struct Completion {
    state: Mutex<Option<Result<()>>>,
    cv: Condvar,
}

impl Completion {
    fn set(&self, r: Result<()>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = Some(r);
        self.cv.notify_all();
    }

    fn test(&self) -> Option<Result<()>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn wait_until(&self, deadline: Instant) -> Option<Result<()>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = &*s {
                return Some(r.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn wait_forever(&self) -> Result<()> {
        loop {
            if let Some(r) = self.wait_until(Instant::now() + Duration::from_secs(3600)) {
                return r;
            }
        }
    }
}

/// A scope for non-blocking calls; see [`Communicator::scope`].
pub struct Scope<'scope, 'env: 'scope> {
    comm: &'env Communicator,
    pending: Mutex<Vec<Arc<Completion>>>,
    _scope: PhantomData<&'scope mut &'scope ()>,
    _env: PhantomData<&'env mut &'env ()>,
}

impl std::fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("rank", &self.comm.rank())
            .finish_non_exhaustive()
    }
}

impl<'scope> Scope<'scope, '_> {
    /// Starts calls (run together, like [`Communicator::group`]) and returns at once.
    pub fn start(&'scope self, calls: Vec<Call<'scope>>) -> Result<Request<'scope>> {
        let done = self.comm.start_raw(calls)?;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(done.clone());
        Ok(Request {
            done,
            _borrow: PhantomData,
        })
    }

    /// Starts an in-place all-reduce.
    pub fn all_reduce<T: Element>(
        &'scope self,
        buf: &'scope mut [T],
        op: ReduceOp,
    ) -> Result<Request<'scope>> {
        self.start(vec![Call::all_reduce(None, el_mut(buf), T::DTYPE, op)])
    }

    /// Starts an in-place broadcast.
    pub fn broadcast<T: Element>(
        &'scope self,
        buf: &'scope mut [T],
        root: usize,
    ) -> Result<Request<'scope>> {
        self.start(vec![Call::broadcast(None, el_mut(buf), T::DTYPE, root)])
    }

    /// Starts an all-gather.
    pub fn all_gather<T: Element>(
        &'scope self,
        send: &'scope [T],
        recv: &'scope mut [T],
    ) -> Result<Request<'scope>> {
        self.start(vec![Call::all_gather(
            Some(el(send)),
            el_mut(recv),
            T::DTYPE,
        )])
    }

    /// Starts a reduce-scatter.
    pub fn reduce_scatter<T: Element>(
        &'scope self,
        send: &'scope [T],
        recv: &'scope mut [T],
        op: ReduceOp,
    ) -> Result<Request<'scope>> {
        self.start(vec![Call::reduce_scatter(
            Some(el(send)),
            el_mut(recv),
            T::DTYPE,
            op,
        )])
    }
}

/// A started call: [`Request::wait`] for it, or [`Request::test`] whether it is done.
pub struct Request<'scope> {
    done: Arc<Completion>,
    _borrow: PhantomData<&'scope mut ()>,
}

impl Request<'_> {
    /// `None` while running; the result once done.
    pub fn test(&self) -> Option<Result<()>> {
        self.done.test()
    }

    /// Waits for the result. Every wait inside the call has the communicator's deadline, so this
    /// returns; `timeout` bounds the wait here too (a `Timeout` error if it passes first).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        self.done
            .wait_until(Instant::now() + timeout)
            .unwrap_or_else(|| {
                Err(Error::timed_out(
                    None,
                    format!("request not done within {} ms", timeout.as_millis()),
                ))
            })
    }

    /// Waits for the result.
    pub fn wait(&self) -> Result<()> {
        self.done.wait_forever()
    }
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("done", &self.test().is_some())
            .finish()
    }
}

/// Tickets: calls run in the order they were issued.
///
/// A blocking call with nothing ahead of it takes and serves its ticket with three atomic
/// operations and no lock or syscall; the mutex and condvar are used only when a call must wait
/// for an earlier one (announced in `waiters`, so `done` wakes only when someone sleeps).
#[derive(Default)]
pub(crate) struct Sched {
    next: AtomicU64,
    serving: AtomicU64,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Sched {
    pub(super) fn take(&self) -> u64 {
        self.next.fetch_add(1, Ordering::AcqRel)
    }

    pub(super) fn wait_turn(&self, ticket: u64, timeout: Duration) -> Result<()> {
        if self.serving.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let r = loop {
            if self.serving.load(Ordering::SeqCst) >= ticket {
                break Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(Error::timeout(
                    None,
                    "waiting for earlier calls on this communicator to finish",
                    timeout,
                ));
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        r
    }

    pub(super) fn done(&self, ticket: u64) {
        self.serving.fetch_max(ticket + 1, Ordering::SeqCst);
        // A waiter registers (under the lock) before it checks `serving`, both SeqCst: either
        // it sees the new value, or we see it registered and wake it under the lock.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.cv.notify_all();
        }
    }
}
