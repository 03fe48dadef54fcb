"""Unique ids, communicators, collectives, groups and requests."""

import contextlib
import ctypes
import threading
import time
import weakref

from . import _buffers, _lib
from ._buffers import fast as _fast
from ._lib import (
    CONFIG_MAGIC,
    CONFIG_UNDEF_INT,
    CONFIG_VERSION,
    UNIQUE_ID_BYTES,
    UNIQUE_ID_STRLEN,
    ConfigStruct,
    UniqueIdStruct,
    call,
    check,
    lib,
)
from .errors import InvalidArgumentError, InvalidUsageError, OxcclError, TimeoutError_, error_for

__all__ = ["UniqueId", "Communicator", "Request", "init", "group", "version"]


def version():
    """The library's version code: major*10000 + minor*100 + patch."""
    v = ctypes.c_int()
    call("oxcclGetVersion", ctypes.byref(v))
    return v.value


class UniqueId:
    """Like ``ncclUniqueId``: the root's address and the job's secret. Rank 0 makes one with
    :meth:`new` (it also opens the rendezvous store's socket in this process) and sends
    ``str(uid)`` to the other ranks, which :meth:`parse` it. Treat it like a password."""

    __slots__ = ("_raw",)

    def __init__(self, raw):
        if isinstance(raw, UniqueIdStruct):
            raw = bytes(raw.internal)
        raw = bytes(raw)
        if len(raw) > UNIQUE_ID_BYTES:
            raise InvalidArgumentError("a unique id is %d bytes" % UNIQUE_ID_BYTES)
        self._raw = raw.ljust(UNIQUE_ID_BYTES, b"\0")

    @classmethod
    def new(cls):
        """A fresh id whose store this process (rank 0) will serve."""
        s = UniqueIdStruct()
        call("oxcclGetUniqueId", ctypes.byref(s))
        return cls(s)

    @classmethod
    def parse(cls, text):
        """Reads ``str(uid)``'s form: ``<ip>:<port>#<32 hex digits>``."""
        s = UniqueIdStruct()
        call("oxcclUniqueIdFromString", str(text).strip().encode(), ctypes.byref(s))
        return cls(s)

    def _struct(self):
        return UniqueIdStruct.from_buffer_copy(self._raw)

    def __bytes__(self):
        return self._raw

    def __str__(self):
        buf = ctypes.create_string_buffer(UNIQUE_ID_STRLEN)
        call("oxcclUniqueIdToString", ctypes.byref(self._struct()), buf, UNIQUE_ID_STRLEN)
        return buf.value.decode()

    def __repr__(self):
        return "UniqueId(<hidden>)"

    def __eq__(self, other):
        return isinstance(other, UniqueId) and other._raw == self._raw

    def __hash__(self):
        return hash(self._raw)


def _config(timeout, transport, nsocks, chunk_bytes, algo, deterministic, name, split_share, blocking):
    c = ConfigStruct()
    c.size = ctypes.sizeof(ConfigStruct)
    c.magic = CONFIG_MAGIC
    c.version = CONFIG_VERSION

    def ival(v, what):
        if v is None:
            return CONFIG_UNDEF_INT
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 2**31:
            raise InvalidArgumentError("%s=%r must be a positive int" % (what, v))
        return v

    if timeout is not None:
        ms = int(round(float(timeout) * 1000))
        if ms <= 0:
            raise InvalidArgumentError("timeout=%r must be positive (seconds)" % (timeout,))
        timeout = min(ms, 2**31 - 1)
    c.timeoutMs = ival(timeout, "timeout")
    c.nsocks = ival(nsocks, "nsocks")
    c.chunkBytes = ival(chunk_bytes, "chunk_bytes")
    c.deterministic = CONFIG_UNDEF_INT if deterministic is None else int(bool(deterministic))
    c.transport = None if transport is None else str(transport).encode()
    c.algo = None if algo is None else str(algo).encode()
    c.blocking = CONFIG_UNDEF_INT if blocking is None else int(bool(blocking))
    c.commName = None if name is None else str(name).encode()
    c.splitShare = CONFIG_UNDEF_INT if split_share is None else int(bool(split_share))
    return c


class _Group(threading.local):
    def __init__(self):
        self.depth = 0
        self.keep = []


_group = _Group()
# Groups open in any thread: while 0, no thread's _group.depth needs reading (a cheap check for
# the hot paths).
_groups_open = 0


@contextlib.contextmanager
def group():
    """Runs the collectives and sends/receives issued inside together when the block ends (NCCL's
    ``ncclGroupStart/End``), e.g. a ring exchange: ``with oxccl.group(): comm.send(a, nxt);
    comm.recv(b, prv)``. The buffers must not be touched until the block ends."""
    global _groups_open
    call("oxcclGroupStart")
    _group.depth += 1
    _groups_open += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _group.depth -= 1
        _groups_open -= 1
        code = lib().oxcclGroupEnd()
        if _group.depth == 0:
            for b in _group.keep:
                b.release()
            _group.keep = []
        if ok:
            check(code)


class Request:
    """A started non-blocking call (``async_op=True``): :meth:`wait` for it, or :meth:`test`
    whether it is done. Keeps the buffers alive until it is done; the buffers must not be touched
    before that."""

    def __init__(self, handle, bufs, result):
        self._h = handle
        self._bufs = bufs
        self._result = result

    def test(self):
        """True when done (raises the call's error if it failed), False while it runs."""
        if self._h is None:
            return True
        done = ctypes.c_int(0)
        try:
            call("oxcclTest", self._h, ctypes.byref(done))
        except Exception:
            self._free()
            raise
        if done.value:
            self._free()
        return bool(done.value)

    def wait(self):
        """Waits for the call and returns its output buffer (raises its error if it failed)."""
        if self._h is not None:
            try:
                call("oxcclWait", self._h)
            finally:
                self._free()
        return self._result

    def is_completed(self):
        """torch.distributed's name for :meth:`test`."""
        return self.test()

    def _free(self):
        h, self._h = self._h, None
        if h is not None:
            lib().oxcclRequestFree(h)
        for b in self._bufs:
            b.release()
        self._bufs = []

    def __del__(self):
        try:
            self._free()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _same_type(what, *bufs):
    names = {b.dtype for b in bufs if b is not None}
    if len(names) > 1:
        raise InvalidArgumentError("%s: buffers of different element types %s" % (what, sorted(names)))


# The C functions of the fast paths, looked up once.
_OPC = {"sum": 0, "prod": 1, "max": 2, "min": 3, "avg": 4, 0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
_fn = {}


def _c(name):
    f = _fn.get(name)
    if f is None:
        f = _fn[name] = getattr(lib(), name)
    return f


def _opc(op):
    try:
        return _OPC.get(op)
    except TypeError:  # unhashable: the general path explains
        return None


class Communicator:
    """A group of ranks that run collectives together.

    ``Communicator(rank, nranks, unique_id)`` joins the communicator rank 0 created with
    :meth:`UniqueId.new`; :func:`init` joins the one a launcher's environment describes. Keyword
    settings (``timeout`` in seconds, ``transport``, ``nsocks``, ``chunk_bytes``, ``algo``,
    ``deterministic``) override the OXCCL_* environment; ``name`` (NCCL's ``commName``: in error
    messages, read back as :attr:`name`), ``split_share`` (NCCL's ``splitShare``) and
    ``blocking=False`` (the constructor and :func:`init` return at once while the communicator
    initialises in the background: :meth:`ready` / :meth:`wait_ready`; other calls raise
    :class:`InProgressError` meanwhile) are NCCL's config fields.

    Collectives take any buffer without copying: numpy arrays of int8, uint8, int32, uint32,
    int64, uint64, float16, float32, float64 and bfloat16 (ml_dtypes), torch CPU tensors,
    bytearray, array.array, memoryview... The element type comes from the buffer, or ``dtype=``.
    Each returns its output buffer, or a :class:`Request` with ``async_op=True``. The GIL is
    released while a call runs. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, rank, nranks, unique_id, **settings):
        if isinstance(unique_id, str):
            unique_id = UniqueId.parse(unique_id)
        elif not isinstance(unique_id, UniqueId):
            unique_id = UniqueId(unique_id)
        cfg = _config(**_settings(settings))
        h = ctypes.c_void_p()
        _init_call(
            lib().oxcclCommInitRankConfig(
                ctypes.byref(h),
                _int_arg(nranks, "nranks"),
                unique_id._struct(),
                _int_arg(rank, "rank"),
                ctypes.byref(cfg),
            )
        )
        self._h = h
        self._pers = {}

    @classmethod
    def _from_env(cls, **settings):
        cfg = _config(**_settings(settings))
        h = ctypes.c_void_p()
        _init_call(lib().oxcclCommInitFromEnvConfig(ctypes.byref(h), ctypes.byref(cfg)))
        return cls._wrap(h)

    # ---- lifetime -------------------------------------------------------------------------

    def _handle(self):
        h = self._h
        if h is None or not h.value:
            raise InvalidUsageError("the communicator is closed")
        return h

    def _persist(self, buf, op, opc, f):
        """Runs an in-place all-reduce of the numpy array ``buf`` (``f``: its fast arguments)
        and stores the call (oxcclAllReduceInit) for the next ones on the same array; the stored
        call is freed when the array dies or the communicator closes."""
        pid = stored_all_reduce(f[0], f[1], f[2], opc, self._h)
        keep_stored(self._pers, buf, pid, (buf.dtype, buf.nbytes, op))
        rc = _Start(pid)
        if rc:
            check(rc)
        return buf

    def _unpersist(self):
        free_stored(getattr(self, "_pers", None))

    def close(self):
        """Frees the communicator (waits for its started calls). Idempotent."""
        self._unpersist()
        h, self._h = getattr(self, "_h", None), None
        if h is not None and h.value:
            check(lib().oxcclCommDestroy(h))

    def abort(self):
        """Frees the communicator without waiting for peers (they see it as lost)."""
        self._unpersist()
        h, self._h = getattr(self, "_h", None), None
        if h is not None and h.value:
            check(lib().oxcclCommAbort(h))

    def split(self, color, key=0, **settings):
        """Splits the communicator (every rank calls it): ranks with the same ``color`` (an int
        >= 0) form a new one, ranked by ``key`` then by rank here. ``color=None`` joins none and
        returns None. Settings not given are inherited."""
        cfg = _config(**_settings(settings))
        c = -1 if color is None else _int_arg(color, "color")
        if c < 0 and color is not None:
            raise InvalidArgumentError("color=%r must be >= 0 (or None)" % (color,))
        h = ctypes.c_void_p()
        call("oxcclCommSplit", self._handle(), c, _int_arg(key, "key"), ctypes.byref(h), ctypes.byref(cfg))
        return Communicator._wrap(h) if h.value else None

    def shrink(self, exclude=None):
        """A new communicator of the ranks still alive, renumbered in rank order (every survivor
        calls it, typically after a PeerLostError or TimeoutError_). ``exclude``: ranks to leave
        out although alive (they do not call it; the others pass the same list). This one is
        aborted; close it."""
        h = ctypes.c_void_p()
        if exclude:
            ranks = [_int_arg(r, "excluded rank") for r in exclude]
            arr = (ctypes.c_int * len(ranks))(*ranks)
            call("oxcclCommShrinkExclude", self._handle(), arr, len(ranks), ctypes.byref(h))
        else:
            call("oxcclCommShrink", self._handle(), ctypes.byref(h))
        return Communicator._wrap(h)

    def revoke(self):
        """Revokes the communicator (a call in flight fails, peers are told, later calls fail);
        unlike :meth:`abort` it stays valid for :meth:`shrink`. Close it afterwards."""
        call("oxcclCommRevoke", self._handle())

    def grow_id(self):
        """On rank 0: a fresh :class:`UniqueId` for :meth:`grow`. Hand it (``str(id)``) to the new
        processes with their ranks; they join with ``Communicator.join(rank, size, id)``."""
        s = UniqueIdStruct()
        call("oxcclCommGetUniqueId", self._handle(), ctypes.byref(s))
        return UniqueId(bytes(bytearray(ctypes.string_at(ctypes.addressof(s), ctypes.sizeof(s)))))

    def grow(self, size, unique_id=None, **settings):
        """Grows to ``size`` ranks (every rank here calls it; they keep their ranks; rank 0 passes
        the id from :meth:`grow_id`, the others may pass None). New processes join as ranks
        ``self.size .. size - 1`` with :meth:`join`. Returns the new communicator; this one
        stays valid."""
        cfg = _config(**_settings(settings))
        idp = None
        if unique_id is not None:
            if isinstance(unique_id, str):
                unique_id = UniqueId.parse(unique_id)
            idp = ctypes.byref(unique_id._struct())
        h = ctypes.c_void_p()
        call("oxcclCommGrow", self._handle(), _int_arg(size, "size"), idp, -1, ctypes.byref(h), ctypes.byref(cfg))
        return Communicator._wrap(h)

    @classmethod
    def join(cls, rank, size, unique_id, **settings):
        """A new process joins a communicator being grown to ``size`` as ``rank`` (see
        :meth:`grow`), with the id its rank 0 published."""
        if isinstance(unique_id, str):
            unique_id = UniqueId.parse(unique_id)
        cfg = _config(**_settings(settings))
        h = ctypes.c_void_p()
        call(
            "oxcclCommGrow",
            None,
            _int_arg(size, "size"),
            ctypes.byref(unique_id._struct()),
            _int_arg(rank, "rank"),
            ctypes.byref(h),
            ctypes.byref(cfg),
        )
        return cls._wrap(h)

    @classmethod
    def _wrap(cls, h):
        c = cls.__new__(cls)
        c._h = h
        c._pers = {}
        return c

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown, or an error nobody can see
            pass

    # ---- queries --------------------------------------------------------------------------

    @property
    def rank(self):
        """This rank."""
        v = ctypes.c_int()
        call("oxcclCommUserRank", self._handle(), ctypes.byref(v))
        return v.value

    @property
    def size(self):
        """The number of ranks."""
        v = ctypes.c_int()
        call("oxcclCommCount", self._handle(), ctypes.byref(v))
        return v.value

    @property
    def topology(self):
        """Where this rank runs: a dict with ``host`` (this rank's host index), ``nhosts``,
        ``local_rank``, ``local_size`` and ``rail`` (the NIC index its inter-host traffic uses),
        from the host map every rank derived at init."""
        vals = [ctypes.c_int() for _ in range(5)]
        call("oxcclCommTopology", self._handle(), *[ctypes.byref(v) for v in vals])
        keys = ("host", "nhosts", "local_rank", "local_size", "rail")
        return dict(zip(keys, (v.value for v in vals)))

    @property
    def name(self):
        """The name given at init (``name=``, NCCL's ``commName``), or ``""``."""
        p = ctypes.c_char_p()
        call("oxcclCommName", self._handle(), ctypes.byref(p))
        return (p.value or b"").decode("utf-8", "replace")

    def ready(self):
        """Whether initialisation has finished (always True unless made with ``blocking=False``);
        raises the init's error if it failed."""
        v = ctypes.c_int()
        call("oxcclCommGetAsyncError", self._handle(), ctypes.byref(v))
        if v.value == _IN_PROGRESS:
            return False
        if v.value != 0:
            m = lib().oxcclGetLastError(self._handle())
            raise error_for(v.value, m.decode("utf-8", "replace") if m else "")
        return True

    def wait_ready(self, timeout=None):
        """Waits (polling) until :meth:`ready`; raises its error, or :class:`TimeoutError_`
        after ``timeout`` seconds (None: the init's own deadline ends it). Returns self."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0005
        while not self.ready():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError_("the communicator is still initialising after %gs" % timeout)
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        return self

    def async_error(self):
        """None while healthy; else the exception of the failure that revoked the communicator."""
        v = ctypes.c_int()
        call("oxcclCommGetAsyncError", self._handle(), ctypes.byref(v))
        if v.value in (0, _IN_PROGRESS):
            return None
        m = lib().oxcclGetLastError(self._handle())
        return error_for(v.value, m.decode("utf-8", "replace") if m else "")

    def __repr__(self):
        if self._h is None:
            return "<oxccl.Communicator closed>"
        try:
            return "<oxccl.Communicator rank %d of %d>" % (self.rank, self.size)
        except OxcclError as e:  # still initialising (blocking=False), or its init failed
            return "<oxccl.Communicator %s>" % type(e).__name__

    # ---- plumbing -------------------------------------------------------------------------

    def _run(self, name, bufs, result, async_op, *args):
        """Calls ``name`` (blocking, queued in a group, or its oxcclI* form) with ``args`` and
        the handle; ``bufs`` are released when the call no longer uses them."""
        h = self._handle()
        if async_op:
            if _group.depth:
                for b in bufs:
                    b.release()
                raise InvalidUsageError("async_op=True inside oxccl.group()")
            req = ctypes.c_void_p()
            try:
                check(_c("oxcclI" + name)(*args, h, ctypes.byref(req)))
            except Exception:
                for b in bufs:
                    b.release()
                raise
            return Request(req, bufs, result)
        try:
            check(_c("oxccl" + name)(*args, h))
        except Exception:
            for b in bufs:
                b.release()
            raise
        if _group.depth:
            _group.keep.extend(bufs)  # in use until the group ends
        else:
            for b in bufs:
                b.release()
        return result

    def _pair(self, send, out, dtype, what, send_needed=True, out_needed=True):
        dt = _buffers.dtype_name(dtype)
        s = _buffers.get(send, False, dt, what + " send") if send is not None else None
        try:
            o = _buffers.get(out, True, dt, what + " out") if out is not None else None
        except Exception:
            if s is not None:
                s.release()
            raise
        try:
            _same_type(what, s, o)
        except Exception:
            for b in (s, o):
                if b is not None:
                    b.release()
            raise
        return s, o

    # ---- collectives ----------------------------------------------------------------------

    def all_reduce(self, buf, op="sum", *, out=None, dtype=None, async_op=False):
        """Every rank's ``out`` (default: ``buf``, in place) becomes the element-wise reduction
        (``op``: sum, prod, max, min, avg) of every rank's ``buf``."""
        if out is None:
            # Repeated in place on the same numpy array with the same op: the stored call, one
            # int argument (ctypes converts each pointer argument at about the cost of the whole
            # call for a small message). Checked first, and only what can change.
            p = self._pers.get(id(buf))
            if (
                p is not None
                and p[4] is op
                and p[0]() is buf
                and dtype is None
                and not async_op
                and buf.dtype is p[2]
                and buf.nbytes == p[3]
                and not (_groups_open and _group.depth)
            ):
                fl = buf.flags
                if fl.writeable and fl.c_contiguous:
                    rc = _Start(p[1])
                    if rc:
                        check(rc)
                    return buf
        if dtype is None and not async_op:
            # The fast path: no Buf, no strings; the general one below explains any refusal.
            h = self._h
            opc = _OPC.get(op) if op.__class__ is str else _opc(op)
            if h is not None and opc is not None and not _group.depth:
                f = _fast(buf, True)
                if f is not None:
                    if out is None or out is buf:
                        if buf.__class__ is _buffers._ND and len(self._pers) < _PERSIST_MAX:
                            return self._persist(buf, op, opc, f)
                        rc = _AllReduce(f[0], f[0], f[1], f[2], opc, h)
                        if rc:
                            check(rc)
                        return buf
                    g = _fast(out, True)
                    if g is not None and g[2] == f[2] and g[1].value == f[1].value:
                        rc = _AllReduce(f[0], g[0], f[1], f[2], opc, h)
                        if rc:
                            check(rc)
                        return out
        opc = _buffers.op_code(op)
        if out is None or out is buf:
            b = _buffers.get(buf, True, _buffers.dtype_name(dtype), "all_reduce buf")
            return self._run("AllReduce", [b], buf, async_op, b.ptr, b.ptr, b.count, b.code, opc)
        s, o = self._pair(buf, out, dtype, "all_reduce")
        _check_sizes("all_reduce", [s, o], s.nbytes == o.nbytes, "buf and out differ in size")
        return self._run("AllReduce", [s, o], out, async_op, s.ptr, o.ptr, o.count, o.code, opc)

    def broadcast(self, buf, root=0, *, dtype=None, async_op=False):
        """Every rank's ``buf`` becomes the root's ``buf`` (in place)."""
        if dtype is None and not async_op and self._h is not None and not _group.depth:
            f = _fast(buf, True)
            if f is not None and root.__class__ is int and 0 <= root < 2**31:
                rc = _Broadcast(f[0], f[0], f[1], f[2], root, self._h)
                if rc:
                    check(rc)
                return buf
        b = _buffers.get(buf, True, _buffers.dtype_name(dtype), "broadcast buf")
        return self._run("Broadcast", [b], buf, async_op, b.ptr, b.ptr, b.count, b.code, root)

    def reduce(self, buf, root=0, op="sum", *, out=None, dtype=None, async_op=False):
        """The root's ``out`` (default: its ``buf``, in place) becomes the reduction of every
        rank's ``buf``. Other ranks' ``out`` is ignored and their ``buf`` left alone."""
        opc = _buffers.op_code(op)
        if out is None or out is buf:
            b = _buffers.get(buf, True, _buffers.dtype_name(dtype), "reduce buf")
            return self._run("Reduce", [b], buf, async_op, b.ptr, b.ptr, b.count, b.code, opc, root)
        s, o = self._pair(buf, out if self.rank == root else None, dtype, "reduce")
        if o is not None:
            _check_sizes("reduce", [s, o], s.nbytes == o.nbytes, "buf and out differ in size")
        bufs = [b for b in (s, o) if b is not None]
        optr = o.ptr if o is not None else None
        return self._run("Reduce", bufs, out, async_op, s.ptr, optr, s.count, s.code, opc, root)

    def all_gather(self, buf, out, *, dtype=None, async_op=False):
        """``out`` (nranks × len(buf) elements) gets every rank's ``buf``, in rank order."""
        s, o = self._pair(buf, out, dtype, "all_gather")
        n = self.size
        _check_sizes("all_gather", [s, o], o.nbytes == n * s.nbytes, "out must hold nranks x buf")
        return self._run("AllGather", [s, o], out, async_op, s.ptr, o.ptr, s.count, s.code)

    def reduce_scatter(self, buf, out, op="sum", *, dtype=None, async_op=False):
        """``out`` gets block ``rank`` of the reduction of every rank's ``buf`` (nranks blocks
        of len(out))."""
        opc = _buffers.op_code(op)
        s, o = self._pair(buf, out, dtype, "reduce_scatter")
        n = self.size
        _check_sizes("reduce_scatter", [s, o], s.nbytes == n * o.nbytes, "buf must hold nranks x out")
        return self._run("ReduceScatter", [s, o], out, async_op, s.ptr, o.ptr, o.count, o.code, opc)

    def all_to_all(self, buf, out=None, *, dtype=None, async_op=False):
        """Block p of ``buf`` goes to rank p; block p of ``out`` (default ``buf``: in place)
        comes from rank p. Both hold nranks equal blocks."""
        n = self.size
        if out is None or out is buf:
            b = _buffers.get(buf, True, _buffers.dtype_name(dtype), "all_to_all buf")
            _check_sizes("all_to_all", [b], b.count % n == 0, "buf is not nranks equal blocks")
            return self._run("AlltoAll", [b], buf, async_op, b.ptr, b.ptr, b.count // n, b.code)
        s, o = self._pair(buf, out, dtype, "all_to_all")
        _check_sizes(
            "all_to_all", [s, o], s.nbytes == o.nbytes and s.count % n == 0,
            "buf and out must be the same size, nranks equal blocks",
        )
        return self._run("AlltoAll", [s, o], out, async_op, s.ptr, o.ptr, s.count // n, s.code)

    def gather(self, buf, out=None, root=0, *, dtype=None, async_op=False):
        """The root's ``out`` (nranks × len(buf)) gets every rank's ``buf`` in rank order;
        other ranks' ``out`` is ignored."""
        is_root = self.rank == root
        if is_root and out is None:
            raise InvalidArgumentError("gather: the root needs out=")
        s, o = self._pair(buf, out if is_root else None, dtype, "gather")
        if o is not None:
            _check_sizes("gather", [s, o], o.nbytes == self.size * s.nbytes, "out must hold nranks x buf")
        bufs = [b for b in (s, o) if b is not None]
        optr = o.ptr if o is not None else None
        return self._run("Gather", bufs, out, async_op, s.ptr, optr, s.count, s.code, root)

    def scatter(self, buf, out, root=0, *, dtype=None, async_op=False):
        """Rank p's ``out`` gets block p of the root's ``buf`` (nranks × len(out)); other
        ranks' ``buf`` is ignored (may be None)."""
        is_root = self.rank == root
        s, o = self._pair(buf if is_root else None, out, dtype, "scatter")
        if s is not None:
            _check_sizes("scatter", [s, o], s.nbytes == self.size * o.nbytes, "buf must hold nranks x out")
        bufs = [b for b in (s, o) if b is not None]
        sptr = s.ptr if s is not None else None
        return self._run("Scatter", bufs, out, async_op, sptr, o.ptr, o.count, o.code, root)

    def all_gatherv(self, buf, out, counts, *, dtype=None, async_op=False):
        """Rank p contributes ``counts[p]`` elements (its ``buf``); ``out`` gets them all,
        contiguous in rank order."""
        s, o = self._pair(buf, out, dtype, "all_gatherv")
        c, counts = _counts(counts, self.size, "counts", [s, o])
        _check_sizes(
            "all_gatherv", [s, o],
            s.count == counts[self.rank] and o.count == sum(counts),
            "buf must hold counts[rank] and out sum(counts) elements",
        )
        return self._run("AllGatherV", [s, o], out, async_op, s.ptr, o.ptr, c, s.code)

    def reduce_scatterv(self, buf, out, counts, op="sum", *, dtype=None, async_op=False):
        """``out`` (``counts[rank]`` elements) gets block ``rank`` of the reduction of every
        rank's ``buf`` (blocks of ``counts[p]``, contiguous in rank order)."""
        opc = _buffers.op_code(op)
        s, o = self._pair(buf, out, dtype, "reduce_scatterv")
        c, counts = _counts(counts, self.size, "counts", [s, o])
        _check_sizes(
            "reduce_scatterv", [s, o],
            s.count == sum(counts) and o.count == counts[self.rank],
            "buf must hold sum(counts) and out counts[rank] elements",
        )
        return self._run("ReduceScatterV", [s, o], out, async_op, s.ptr, o.ptr, c, s.code, opc)

    def all_to_allv(self, buf, send_counts, out, recv_counts, *, dtype=None, async_op=False):
        """``send_counts[p]`` elements of ``buf`` go to rank p, ``recv_counts[p]`` elements of
        ``out`` come from rank p (blocks contiguous in rank order)."""
        s, o = self._pair(buf, out, dtype, "all_to_allv")
        sc, send_counts = _counts(send_counts, self.size, "send_counts", [s, o])
        rc, recv_counts = _counts(recv_counts, self.size, "recv_counts", [s, o])
        _check_sizes(
            "all_to_allv", [s, o],
            s.count == sum(send_counts) and o.count == sum(recv_counts),
            "buf must hold sum(send_counts) and out sum(recv_counts) elements",
        )
        return self._run("AllToAllV", [s, o], out, async_op, s.ptr, sc, o.ptr, rc, s.code)

    def send(self, buf, peer, tag=0, *, dtype=None, async_op=False):
        """Sends ``buf`` to rank ``peer`` (the receiver uses the same ``tag``)."""
        b = _buffers.get(buf, False, _buffers.dtype_name(dtype), "send buf")
        name = "Send" if async_op else "SendTagged"
        return self._run(name, [b], None, async_op, b.ptr, b.count, b.code, peer, tag)

    def recv(self, buf, peer, tag=0, *, dtype=None, async_op=False):
        """Receives into ``buf`` from rank ``peer``, matching its ``send`` with the same ``tag``."""
        b = _buffers.get(buf, True, _buffers.dtype_name(dtype), "recv buf")
        name = "Recv" if async_op else "RecvTagged"
        return self._run(name, [b], buf, async_op, b.ptr, b.count, b.code, peer, tag)

    def barrier(self, *, async_op=False):
        """Blocks until every rank has called it."""
        return self._run("Barrier", [], None, async_op)


def _bind_fast():
    global _AllReduce, _Broadcast, _Start, _PersistentFree
    _AllReduce = _lib.raw("oxcclAllReduce")
    _Broadcast = _lib.raw("oxcclBroadcast")
    _Start = _lib.raw("oxcclStart")
    _PersistentFree = _lib.raw("oxcclPersistentFree")


def _lazy(name):
    def first(*args):
        _bind_fast()
        return globals()[name](*args)

    return first


_AllReduce = _lazy("_AllReduce")
_Broadcast = _lazy("_Broadcast")
_Start = _lazy("_Start")
_PersistentFree = _lazy("_PersistentFree")
# Stored calls per communicator (one per array and operator used in place).
_PERSIST_MAX = 64


_IN_PROGRESS = 7  # oxcclInProgress


def _init_call(code):
    """An init's result: success, or in progress (``blocking=False``), or the error."""
    if code != _IN_PROGRESS:
        check(code)


def stored_all_reduce(ptr, count, code, opc, h):
    """oxcclAllReduceInit in place (``ptr``, ``count``: ctypes objects): the stored call's id."""
    pid = ctypes.c_int()
    check(_lib.raw("oxcclAllReduceInit")(ptr, ptr, count, code, opc, h, ctypes.byref(pid)))
    return pid.value


def keep_stored(pers, obj, pid, rest):
    """Remembers the stored call ``pid`` made for ``obj``: ``pers[id(obj)] = (weakref, pid) +
    rest`` (``rest``: what the caller checks before reusing it), freeing any it replaces; the
    call is freed when ``obj`` dies (or by :func:`free_stored`)."""
    key = id(obj)
    free = _PersistentFree

    def forget(ref):
        e = pers.get(key)
        if e is not None and e[0] is ref:
            del pers[key]
            try:
                free(e[1])
            except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to free
                pass

    old = pers.get(key)
    pers[key] = (weakref.ref(obj, forget), pid) + rest
    if old is not None:
        free(old[1])


def free_stored(pers):
    """Frees every stored call in ``pers`` (a communicator closing)."""
    if pers:
        entries = list(pers.values())
        pers.clear()
        for e in entries:
            _PersistentFree(e[1])


def _int_arg(v, what):
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidArgumentError("%s=%r must be an int" % (what, v))
    if not -(2**31) <= v < 2**31:
        raise InvalidArgumentError("%s=%r is out of range" % (what, v))
    return v


def _check_sizes(what, bufs, ok, msg):
    if not ok:
        sizes = ", ".join("%d bytes" % b.nbytes for b in bufs if b is not None)
        for b in bufs:
            if b is not None:
                b.release()
        raise InvalidArgumentError("%s: %s (%s)" % (what, msg, sizes))


def _counts(counts, n, what, bufs):
    try:
        counts = [int(c) for c in counts]
        ok = len(counts) == n and all(c >= 0 for c in counts)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        for b in bufs:
            if b is not None:
                b.release()
        raise InvalidArgumentError("%s must be %d non-negative ints, one per rank" % (what, n))
    return (ctypes.c_size_t * n)(*counts), counts


_SETTINGS = ("timeout", "transport", "nsocks", "chunk_bytes", "algo", "deterministic", "name", "split_share", "blocking")


def _settings(kw):
    unknown = set(kw) - set(_SETTINGS)
    if unknown:
        raise TypeError("unknown settings %s (known: %s)" % (sorted(unknown), ", ".join(_SETTINGS)))
    return {k: kw.get(k) for k in _SETTINGS}


def init(**settings):
    """Joins the communicator the launcher's environment describes: ``python -m oxccl.run``,
    torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), Slurm, Open MPI, or OXCCL_RANK /
    OXCCL_WORLD_SIZE / OXCCL_ROOT / OXCCL_SECRET. Settings as for :class:`Communicator`."""
    return Communicator._from_env(**settings)
