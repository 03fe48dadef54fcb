"""Started oxccl requests as torch Works: waiting (with or without a timeout), futures completed
in issue order by a progress thread, and requests whose Work was dropped while they ran."""

import collections
import ctypes
import threading

import torch
import torch.distributed as dist

from ._c import (
    _Free,
    _SUCCESS,
    _TIMEOUT,
    _Test,
    _Wait,
    _WaitTimeout,
    _byref,
    _error,
    _ms,
)


class _Req:
    """One started oxccl request and what it needs until it is done: the tensors it uses
    (``keep``), copies back into the caller's tensors to run after success (``posts``), futures to
    complete. Several Works may share one (the calls of a coalescing window)."""

    __slots__ = ("h", "keep", "posts", "futs", "done", "err", "lock", "waiters", "what", "progress")

    def __init__(self, h, keep, posts, what, progress):
        self.h = h
        self.keep = keep
        self.posts = posts
        self.futs = None
        self.done = False
        self.err = None
        self.lock = threading.Lock()
        self.waiters = 0
        self.what = what
        self.progress = progress

    def complete(self, ms=-1):
        """Waits for the request (at most ``ms`` when >= 0; raises DistBackendError if it is
        still running then) and finishes it; returns the error, if it failed."""
        if self.done:
            return self.err
        with self.lock:
            if self.done:
                return self.err
            h = self.h
            self.waiters += 1
        err = None
        running = False
        code = _Wait(h) if ms < 0 else _WaitTimeout(h, ms)
        if code == _TIMEOUT and ms >= 0:
            d = ctypes.c_int(0)
            running = _Test(h, _byref(d)) == _SUCCESS and not d.value
            if not running:
                code = _Wait(h)  # done meanwhile: its own result
        if code != _SUCCESS and not running:
            err = _error(code, self.what)
        futs = self._leave(running, err)
        if futs:
            self._fire(futs)
        if running:
            raise dist.DistBackendError(
                "oxccl %s: Work.wait(timeout) passed %d ms; the call is still running (the "
                "process group's timeout bounds it)" % (self.what, ms)
            )
        return self.err

    def _leave(self, running, err):
        """A waiter is back: the first to see the result finishes the request; the last frees
        it."""
        with self.lock:
            self.waiters -= 1
            futs = None
            if not self.done and not running:
                futs = self._finish(err)
            if self.done and self.waiters == 0 and self.h is not None:
                _Free(self.h)
                self.h = None
            return futs

    def _finish(self, err):
        if err is None:
            try:
                for p in self.posts:
                    p()
            except Exception as e:  # noqa: BLE001 - a copy back failed: the Work's error
                err = dist.DistBackendError("oxccl %s: copying the result back failed: %s" % (self.what, e))
        self.err = err
        self.done = True
        self.keep = self.posts = None
        futs, self.futs = self.futs, None
        return futs

    def _fire(self, futs):
        for fut in futs:
            fut.set_result(None)  # its .then callback (_outcome) gives the value or raises

    def outcome(self, value):
        if self.err is not None:
            raise self.err
        return value

    def test(self):
        """True when done (without blocking)."""
        if self.done:
            return True
        with self.lock:
            if self.done or self.h is None:
                return self.done
            d = ctypes.c_int(0)
            code = _Test(self.h, _byref(d))
        if code == _SUCCESS and not d.value:
            return False
        self.complete()
        return True

    def future(self, value):
        """A future completed with ``value`` when the request succeeds, or with its error.

        (Made by ``.then`` on a plain future: torch's ``Future.set_exception`` stores the
        exception as a value, which DDP's reducer would read as tensors; an error raised in a
        callback is a real error of the future, seen as such by C++.)"""
        trigger = torch.futures.Future()
        fut = trigger.then(lambda _f: self.outcome(value))
        with self.lock:
            if not self.done:
                if self.futs is None:
                    self.futs = []
                    self.progress.push(self)
                self.futs.append(trigger)
                return fut
        trigger.set_result(None)
        return fut

    def __del__(self):
        h = self.h
        if h is not None and not self.done:
            # Dropped while running: its memory is in use until it is done; the reaper waits.
            _reaper.push(_Orphan(h, self.keep))
        elif h is not None:
            _Free(h)


class _Orphan:
    """A request whose Work was dropped while it ran: freed (and its tensors let go) when done."""

    __slots__ = ("h", "keep")

    def __init__(self, h, keep):
        self.h = h
        self.keep = keep

    def complete(self, ms=-1):
        _Free(self.h)  # waits for the call first
        self.h = self.keep = None


class _Progress:
    """A thread that waits for requests in issue order and completes their futures (the calls
    of one communicator complete in that order)."""

    def __init__(self, name):
        self.q = collections.deque()
        self.cv = threading.Condition(threading.Lock())
        self.name = name
        self.thread = None

    def push(self, req):
        with self.cv:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()
            self.q.append(req)
            self.cv.notify()

    def _run(self):
        while True:
            with self.cv:
                while not self.q:
                    self.cv.wait()
                r = self.q.popleft()
            if r is None:
                return
            try:
                r.complete()
            except Exception:  # noqa: BLE001 - recorded in the request; nothing to raise to
                pass

    def stop(self, join=True):
        with self.cv:
            t = self.thread
            if t is None:
                return
            self.q.append(None)
            self.cv.notify()
            self.thread = None
        if join and t is not threading.current_thread():
            t.join()


_reaper = _Progress("oxccl-reaper")


class Work(dist._Work):
    """An oxccl call started by the backend: ``wait(timeout)``, ``is_completed()``,
    ``get_future()`` (completed with the output tensors), as gloo's Work."""

    def __init__(self, req, outputs):
        super().__init__()
        self._r = req  # None: done (and succeeded) when made
        self._out = outputs

    def wait(self, timeout=None):
        r = self._r
        if r is not None:
            err = r.complete(_ms(timeout))
            if err is not None:
                raise dist.DistBackendError(str(err))
        return True

    def is_completed(self):
        r = self._r
        return r is None or r.test()

    def is_success(self):
        r = self._r
        return r is None or (r.test() and r.err is None)

    def exception(self):
        r = self._r
        return None if r is None or not r.test() else r.err

    def get_future(self):
        r = self._r
        if r is None:
            fut = torch.futures.Future()
            fut.set_result(self._out)
            return fut
        return r.future(self._out)

    def result(self):
        return self._out
