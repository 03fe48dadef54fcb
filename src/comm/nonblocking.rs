//! Non-blocking calls: they run on a worker thread, in ticket order with every other call.
//!
//! Nothing here is unsafe; borrowing is sound by construction:
//!
//! - [`Communicator::scope`] *is* a `std::thread::scope`: the calls started in it queue for a
//!   worker thread spawned in that thread scope (one per `scope` call), which runs every queued
//!   call before it ends, and the thread scope joins it before `scope` returns, however `f`
//!   ends (a panic included). So calls may borrow buffers for the scope, and the worker may
//!   borrow the communicator, exactly as a scoped thread may.
//! - [`Communicator::start_detached`] takes calls that borrow nothing (`Call<'static>`) and a
//!   shared owner of the communicator (`Arc<C>`, `C: AsRef<Communicator>`), which the
//!   communicator's own worker thread holds while the calls are queued or running: no raw
//!   pointer to the communicator, and no lifetime erased here. It is the form the C ABI uses;
//!   the ABI makes `Call<'static>` out of the C caller's pointers in its own unsafe code, under
//!   the C caller's promise that the buffers outlive the request.

use std::collections::VecDeque;
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
    /// started in it is finished before `scope` returns (so borrowing buffers is sound). The
    /// calls run on a thread the scope spawns (and joins).
    pub fn scope<'env, R>(
        &'env self,
        f: impl for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> R,
    ) -> R {
        let scope = Scope {
            comm: self,
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
                failed: None,
            }),
            cv: Condvar::new(),
            _scope: PhantomData,
            _env: PhantomData,
        };
        std::thread::scope(|ts| {
            // However `f` ends, the queue closes: the worker runs what was started, then ends,
            // and the thread scope's join returns.
            let _close = Close(&scope);
            let spawned = std::thread::Builder::new()
                .name(format!("oxccl-scope-{}", self.rank))
                .spawn_scoped(ts, || scope.serve());
            if let Err(e) = spawned {
                scope.lock().failed = Some(Error::io("spawn the non-blocking worker thread", e));
            }
            f(&scope)
        })
    }

    /// Waits until every call started on this communicator so far (blocking or not, from any
    /// thread) has finished, for at most the communicator's timeout. What `oxcclCommDestroy`
    /// does before it frees a communicator, so no started call outlives it.
    pub fn wait_idle(&self) -> Result<()> {
        let taken = self.sched.next.load(Ordering::Acquire);
        self.sched.wait_turn(taken, self.cfg.timeout())
    }

    /// Starts calls on the communicator's worker thread without tying them to a scope: the form
    /// the C ABI uses. The calls borrow nothing (`'static`), and the worker holds `comm` (a
    /// shared owner of the communicator) until they are done, so the communicator outlives
    /// them; it is dropped on the worker if that was the last owner.
    pub fn start_detached<C>(comm: Arc<C>, calls: Vec<Call<'static>>) -> Result<Request<'static>>
    where
        C: AsRef<Communicator> + Send + Sync + 'static,
    {
        let this: &Communicator = (*comm).as_ref();
        if calls.is_empty() {
            return Err(Error::invalid_argument("no calls to start"));
        }
        let ticket = this.sched.take();
        let done = Arc::new(Completion::default());
        let job = Detached {
            owner: comm.clone(),
            calls,
            ticket,
            done: done.clone(),
        };
        let mut w = this
            .worker
            .lock()
            .map_err(|_| Error::internal("worker lock poisoned"))?;
        if w.is_none() {
            *w = Some(Worker::start(this.rank)?);
        }
        let sent = w.as_ref().map(|w| w.tx.send(job));
        match sent {
            Some(Ok(())) => Ok(Request {
                done,
                _borrow: PhantomData,
            }),
            Some(Err(mpsc::SendError(job))) => {
                this.sched.done(job.ticket);
                Err(Error::internal("the worker thread is gone"))
            }
            None => unreachable!("worker started above"),
        }
    }

    /// Waits for started calls and stops the worker thread. On the worker itself (the last
    /// owner of the communicator was a detached job's) it only closes the queue: the queue is
    /// empty (every queued job holds an owner) and the worker ends once this returns.
    pub(super) fn stop_worker(&self) {
        let w = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = w {
            drop(w.tx);
            if w.handle.thread().id() != std::thread::current().id() {
                let _ = w.handle.join();
            }
        }
    }
}

impl AsRef<Communicator> for Communicator {
    fn as_ref(&self) -> &Communicator {
        self
    }
}

/// Calls handed to the communicator's worker thread, with a shared owner of the communicator.
struct Detached {
    owner: Arc<dyn AsRef<Communicator> + Send + Sync>,
    calls: Vec<Call<'static>>,
    ticket: u64,
    done: Arc<Completion>,
}

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
                    let Detached {
                        owner,
                        mut calls,
                        ticket,
                        done,
                    } = job;
                    let r = (*owner).as_ref().run_ticket(ticket, &mut calls);
                    // The owner goes first: a waiter that sees the result finds the
                    // communicator already dropped if this job held its last owner.
                    drop(calls);
                    drop(owner);
                    done.set(r);
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
    queue: Mutex<Queue<'scope>>,
    cv: Condvar,
    _scope: PhantomData<&'scope mut &'scope ()>,
    _env: PhantomData<&'env mut &'env ()>,
}

/// A scope's started calls, waiting for its worker.
struct Queue<'scope> {
    jobs: VecDeque<Job<'scope>>,
    /// The scope is over: the worker ends once `jobs` is empty.
    closed: bool,
    /// The worker thread could not be spawned.
    failed: Option<Error>,
}

/// Calls started in a scope.
struct Job<'scope> {
    calls: Vec<Call<'scope>>,
    ticket: u64,
    done: Arc<Completion>,
}

/// Closes a scope's queue when dropped.
struct Close<'a, 'scope, 'env>(&'a Scope<'scope, 'env>);

impl Drop for Close<'_, '_, '_> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.cv.notify_all();
    }
}

impl std::fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("rank", &self.comm.rank())
            .finish_non_exhaustive()
    }
}

impl<'scope> Scope<'scope, '_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<'scope>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker: runs the started calls in order until the scope is over and none is left.
    fn serve(&self) {
        loop {
            let job = {
                let mut q = self.lock();
                loop {
                    if let Some(job) = q.jobs.pop_front() {
                        break job;
                    }
                    if q.closed {
                        return;
                    }
                    q = self.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                }
            };
            let Job {
                mut calls,
                ticket,
                done,
            } = job;
            let r = self.comm.run_ticket(ticket, &mut calls);
            drop(calls);
            done.set(r);
        }
    }

    /// Starts calls (run together, like [`Communicator::group`]) and returns at once.
    pub fn start(&'scope self, calls: Vec<Call<'scope>>) -> Result<Request<'scope>> {
        if calls.is_empty() {
            return Err(Error::invalid_argument("no calls to start"));
        }
        let mut q = self.lock();
        if let Some(e) = &q.failed {
            return Err(e.clone());
        }
        // Taken under the queue's lock, so the worker runs the scope's calls in ticket order.
        let ticket = self.comm.sched.take();
        let done = Arc::new(Completion::default());
        q.jobs.push_back(Job {
            calls,
            ticket,
            done: done.clone(),
        });
        drop(q);
        self.cv.notify_all();
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
