"""The backend: torch's calls mapped onto oxccl calls (see the package's docstring)."""

import ctypes
import functools
import threading
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import Backend as _C10dBackend
from torch._C._distributed_c10d import ReduceOp

from .._comm import Communicator, UniqueId, free_stored, keep_stored, stored_all_reduce
from .. import _comm
from ._c import (
    BACKEND_NAME,
    _AVG,
    _AllGather,
    _AllReduce,
    _AllToAll,
    _AllToAllV,
    _BITWISE,
    _Barrier,
    _Broadcast,
    _DT,
    _DoneWork,
    _Gather,
    _GroupEnd,
    _GroupEndAsync,
    _GroupStart,
    _IAllGather,
    _IAllReduce,
    _IAllToAll,
    _IAllToAllV,
    _IBarrier,
    _IBroadcast,
    _IGather,
    _INTS,
    _IRecv,
    _IReduce,
    _IReduceScatter,
    _IScatter,
    _ISend,
    _MAX,
    _MIN,
    _OPS,
    _PROD,
    _RT,
    _RecvTagged,
    _Reduce,
    _ReduceScatter,
    _SUCCESS,
    _SUM,
    _Scatter,
    _SendTagged,
    _U8,
    _UID_KEY,
    _WIDEN,
    _byref,
    _check,
    _error,
    _rAllReduce,
    _rIAllReduce,
    _size_t,
    _void_p,
)
from ._work import (
    Work,
    _Progress,
    _Req,
)


def _cpu(t, what):
    if t.device.type != "cpu":
        raise ValueError(
            "oxccl backend: %s is a %s tensor; oxccl works on host memory (use a gloo or nccl "
            "group for device tensors, or .cpu())" % (what, t.device)
        )


class _Build:
    """The oxccl calls of one torch call, with the temporaries and copies they need."""

    __slots__ = ("calls", "keep", "posts")

    def __init__(self):
        self.calls = []  # (blocking function, non-blocking function, args)
        self.keep = []
        self.posts = []

    def dense(self, t, write, what):
        """``t`` itself when contiguous on the CPU, else a contiguous copy (copied back after
        success when ``write``)."""
        _cpu(t, what)
        if t.is_contiguous() and not t.is_conj() and not t.is_neg():
            return t
        c = t.resolve_conj().resolve_neg().contiguous()
        if c.data_ptr() == t.data_ptr():
            c = c.clone()
        self.keep.append(c)
        if write:
            self.posts.append(functools.partial(t.copy_, c))
        return c

    def moved(self, t, write, what):
        """(pointer, count, datatype) of ``t`` for a call that only moves bytes: any dtype (bool,
        complex, int16...) moves as bytes."""
        t = self.dense(t, write, what)
        self.keep.append(t)
        code = _DT.get(t.dtype)
        if code is None:
            return t.data_ptr(), t.numel() * t.element_size(), _U8
        return t.data_ptr(), t.numel(), code

    def reduced(self, t, op, write, what, copy=False):
        """(pointer, count, datatype, oxccl op) of ``t`` for a reduction: types without an
        oxccl kernel are reduced in one that has it, PREMUL_SUM scales first (into a copy when
        ``copy`` or the tensor is only read)."""
        kind = op.op
        opc = _OPS.get(kind)
        t0 = t
        t = self.dense(t, write, what)
        if kind == _RT.PREMUL_SUM:
            f = op.factor
            if not copy and write:
                t.mul_(f)
            else:
                t = t * f
            opc = _SUM
        elif opc is None:
            raise ValueError("oxccl backend: %s: reduce op %s is not supported here" % (what, kind))
        dt = t.dtype
        code = _DT.get(dt)
        if code is None:
            if dt == torch.bool:
                if opc in (_SUM, _MAX):
                    opc = _MAX
                elif opc in (_MIN, _PROD):
                    opc = _MIN
                else:
                    raise ValueError("oxccl backend: %s: %s on bool tensors" % (what, kind))
                t = t.view(torch.uint8)
                code = _U8
            elif dt.is_complex and opc in (_SUM, _AVG):
                t = torch.view_as_real(t)
                code = _DT[t.dtype]
            elif dt in _WIDEN:
                w = t.to(_WIDEN[dt])
                if write:
                    self.posts.append(functools.partial(t0.copy_, w))
                t = w
                code = _DT[t.dtype]
            else:
                raise ValueError(
                    "oxccl backend: %s: cannot reduce %s tensors with %s (oxccl reduces int8, "
                    "uint8, int32, uint32, int64, uint64, float16, bfloat16, float32, float64; "
                    "bool, int16 and complex sum are mapped onto them)" % (what, dt, kind)
                )
        self.keep.append(t)
        return t.data_ptr(), t.numel(), code, opc


def _bitwise_check(t, kind, what):
    if t.dtype not in _INTS:
        raise ValueError(
            "oxccl backend: %s: %s needs integer or bool tensors, not %s" % (what, kind, t.dtype)
        )


class OxcclBackend(_C10dBackend):
    """The ``"oxccl"`` process-group backend (CPU tensors). Made by torch through
    :func:`register`'s creator; ``comm=`` wraps an existing :class:`oxccl.Communicator`."""

    def __init__(self, store, rank, size, timeout, *, comm=None, options=None):
        super().__init__(rank, size)
        if not isinstance(timeout, timedelta):
            timeout = timedelta(seconds=float(timeout))
        self._options = options if options is not None else _C10dBackend.Options(BACKEND_NAME, timeout=timeout)
        self._timeout = timeout
        if comm is None:
            secs = max(timeout.total_seconds(), 0.001)
            if rank == 0:
                uid = UniqueId.new()  # binds the store's listener here, draws a fresh secret
                store.set(_UID_KEY, str(uid))
            else:
                store.wait([_UID_KEY], timeout)
                uid = UniqueId.parse(bytes(store.get(_UID_KEY)).decode())
            try:
                comm = Communicator(rank, size, uid, timeout=secs)
            except Exception as e:
                raise dist.DistBackendError("oxccl: init of rank %d of %d failed: %s" % (rank, size, e)) from None
        self._comm = comm
        self._h = comm._handle()
        # The blocking hot path's state, read once per call: the handle while no coalescing
        # window is open (else None), the stored calls by tensor (see allreduce), and one done
        # Work that every blocking call returns.
        self._hot = self._h
        self._tpers = {}
        self._done = _DoneWork() if _DoneWork is not None else None
        self._progress = _Progress("oxccl-progress-%d" % rank)
        self._coalescing = None  # the Works made while a coalescing window is open
        self._lock = threading.Lock()

    # ---- torch's queries ------------------------------------------------------------------

    @property
    def options(self):
        return self._options

    @property
    def supports_splitting(self):
        return True

    @property
    def supports_coalescing(self):
        return True

    def getBackendName(self):
        return BACKEND_NAME

    @property
    def communicator(self):
        """The :class:`oxccl.Communicator` underneath."""
        return self._comm

    def async_error(self):
        """``None`` while the communicator is healthy; else a ``DistBackendError`` with oxccl's
        message (which rank was lost, who noticed). Never blocks and needs no call in flight: a
        watchdog thread may poll it while the process is idle (a rank killed between steps is
        reported here within the timeout, usually at once), and the next collective then
        raises the same error at once."""
        if self._h is None:
            return None
        e = self._comm.async_error()
        return None if e is None else dist.DistBackendError("oxccl: %s" % e)

    def _handle(self):
        h = self._h
        if h is None:
            raise dist.DistBackendError("oxccl: the process group was shut down or aborted")
        return h

    # ---- issuing ----------------------------------------------------------------------------

    def _issue(self, b, outputs, async_op, what):
        """Runs ``b``'s calls: blocking here when not ``async_op``, queued when a coalescing
        window is open, else started on the communicator's worker (several as one group)."""
        h = self._handle()
        calls = b.calls
        if self._coalescing is not None:
            for f, _, args in calls:
                _check(f(*args, h), what)
            self._coalescing[1].extend(b.keep)
            self._coalescing[2].extend(b.posts)
            w = Work(None, outputs)
            w._r = self._coalescing[3]
            return w
        if not calls:
            for p in b.posts:
                p()
            return Work(None, outputs)
        if not async_op:
            if len(calls) == 1:
                f, _, args = calls[0]
                _check(f(*args, h), what)
            else:
                _check(_GroupStart(), what)
                code = _SUCCESS
                for f, _, args in calls:
                    code = f(*args, h)
                    if code != _SUCCESS:
                        break
                end = _GroupEnd()
                _check(code if code != _SUCCESS else end, what)
            for p in b.posts:
                p()
            return Work(None, outputs)
        req = _void_p()
        if len(calls) == 1:
            _, f, args = calls[0]
            _check(f(*args, h, _byref(req)), what)
        else:
            self._group_async(calls, h, req, what)
        return Work(_Req(req, b.keep, b.posts, what, self._progress), outputs)

    @staticmethod
    def _group_async(calls, h, req, what):
        _check(_GroupStart(), what)
        for f, _, args in calls:
            code = f(*args, h)
            if code != _SUCCESS:
                err = _error(code, what)
                _GroupEnd()  # closes the group (runs what was queued: every rank fails alike)
                raise err
        _check(_GroupEndAsync(_byref(req)), what)

    # ---- coalescing (batch_isend_irecv, _coalescing_manager) -------------------------------

    def start_coalescing(self):
        if self._coalescing is not None:
            raise RuntimeError("oxccl backend: start_coalescing while a coalescing window is open")
        _check(_GroupStart(), "start_coalescing")
        # [started, keep, posts, shared request (filled at the end)]
        self._coalescing = [True, [], [], _Req(None, None, None, "coalesced calls", self._progress)]
        self._hot = None

    def end_coalescing(self):
        c, self._coalescing = self._coalescing, None
        self._hot = self._h
        if c is None:
            raise RuntimeError("oxccl backend: end_coalescing without start_coalescing")
        _, keep, posts, r = c
        req = _void_p()
        code = _GroupEndAsync(_byref(req))
        if code != _SUCCESS:
            err = _error(code, "end_coalescing")
            if "queued no calls" in str(err):
                r.done = True
                r.keep = r.posts = None
                return Work(None, [])
            r.done, r.err = True, err
            raise err
        r.h, r.keep, r.posts = req, keep, posts
        return Work(r, [])

    # ---- collectives -------------------------------------------------------------------------

    def allreduce(self, tensors, opts):
        op = opts.reduceOp
        if len(tensors) == 1:
            # The hot path: one contiguous tensor of an oxccl type, a plain op.
            t = tensors[0]
            # (comparing with SUM costs a quarter of reading .op and hashing it)
            opc = _SUM if op == _RT.SUM else _OPS.get(op.op)
            h = self._hot
            if h is not None and opc is not None and not opts.asyncOp:
                # Blocking, on a tensor seen before: its stored call (oxcclStart, one int
                # argument), if the tensor still has the same memory, size, type and op.
                p = self._tpers.get(id(t))
                if (
                    p is not None
                    and p[5] == opc
                    and p[0]() is t
                    and t.data_ptr() == p[2]
                    and t.numel() == p[3]
                    and t.dtype is p[4]
                    and t.is_contiguous()
                ):
                    rc = _comm._Start(p[1])
                    if rc:
                        raise _error(rc, "allreduce")
                    return self._done if self._done is not None else Work(None, tensors)
            code = _DT.get(t.dtype)
            if code is not None and opc is not None and t.is_contiguous() and t.is_cpu and h is not None:
                p = _void_p(t.data_ptr())
                n = _size_t(t.numel())
                if not opts.asyncOp:
                    if len(self._tpers) < _STORED_MAX:
                        pid = stored_all_reduce(p, n, code, opc, h)
                        keep_stored(self._tpers, t, pid, (p.value or 0, n.value, t.dtype, opc))
                        rc = _comm._Start(pid)
                    else:
                        rc = _rAllReduce(p, p, n, code, opc, h)
                    if rc:
                        raise _error(rc, "allreduce")
                    # torch returns nothing from a blocking call but waits on its Work.
                    return self._done if self._done is not None else Work(None, tensors)
                req = _void_p()
                rc = _rIAllReduce(p, p, n, code, opc, h, _byref(req))
                if rc:
                    raise _error(rc, "allreduce")
                return Work(_Req(req, tensors, (), "allreduce", self._progress), tensors)
        return self._allreduce(tensors, op, opts.asyncOp, "allreduce")

    def allreduce_coalesced(self, tensors, opts):
        return self._allreduce(tensors, opts.reduceOp, opts.asyncOp, "allreduce_coalesced")

    def _allreduce(self, tensors, op, async_op, what):
        b = _Build()
        bit = _BITWISE.get(op.op)
        for t in tensors:
            if bit is not None:
                self._bitwise_allreduce(b, t, op.op, bit, what)
                continue
            p, n, code, opc = b.reduced(t, op, True, what)
            b.calls.append((_AllReduce, _IAllReduce, (p, p, n, code, opc)))
        return self._issue(b, list(tensors), async_op, what)

    def _bitwise_allreduce(self, b, t, kind, fn, what):
        """BAND/BOR/BXOR: oxccl has no bitwise kernels, so every rank gathers every rank's
        tensor and folds them in rank order here (exact, n times the memory)."""
        _bitwise_check(t, kind, what)
        src = b.dense(t, False, what)
        n = self.size()
        allv = torch.empty((n,) + tuple(src.shape), dtype=src.dtype)
        b.keep += [src, allv]
        ps, cs, code = b.moved(src, False, what)
        b.calls.append((_AllGather, _IAllGather, (ps, allv.data_ptr(), cs, code)))

        def fold():
            acc = allv[0].clone()
            for i in range(1, n):
                acc = fn(acc, allv[i])
            t.copy_(acc)

        b.posts.append(fold)

    def broadcast(self, tensors, opts):
        root = opts.rootRank
        b = _Build()
        for t in tensors:
            p, n, code = b.moved(t, True, "broadcast")
            b.calls.append((_Broadcast, _IBroadcast, (p, p, n, code, root)))
        return self._issue(b, list(tensors), opts.asyncOp, "broadcast")

    def reduce(self, tensors, opts):
        root = opts.rootRank
        op = opts.reduceOp
        b = _Build()
        for t in tensors:
            bit = _BITWISE.get(op.op)
            is_root = self.rank() == root
            if bit is not None:
                # Every rank folds (an all-reduce); only the root's tensor takes the result.
                self._bitwise_allreduce(b, t if is_root else t.clone(), op.op, bit, "reduce")
                continue
            # The root's tensor is its output; elsewhere only read (a PREMUL_SUM scales a copy).
            p, n, code, opc = b.reduced(t, op, is_root, "reduce", copy=not is_root)
            b.calls.append((_Reduce, _IReduce, (p, p, n, code, opc, root)))
        return self._issue(b, list(tensors), opts.asyncOp, "reduce")

    def allgather(self, output_lists, inputs, opts):
        b = _Build()
        n = self.size()
        for outs, inp in zip(output_lists, inputs):
            if len(outs) != n:
                raise ValueError("oxccl backend: allgather needs %d output tensors, got %d" % (n, len(outs)))
            src = b.dense(inp, False, "allgather input")
            flat = torch.empty((n,) + tuple(src.shape), dtype=src.dtype)
            ps, cs, code = b.moved(src, False, "allgather input")
            b.keep.append(flat)
            b.calls.append((_AllGather, _IAllGather, (ps, flat.data_ptr(), cs, code)))
            for i, o in enumerate(outs):
                if o.numel() != src.numel():
                    raise ValueError("oxccl backend: allgather output %d has %d elements, the input %d" % (i, o.numel(), src.numel()))
                b.posts.append(functools.partial(_copy_into, o, flat[i]))
        return self._issue(b, list(output_lists), opts.asyncOp, "allgather")

    def allgather_coalesced(self, output_lists, inputs, opts):
        return self.allgather(output_lists, inputs, opts)

    def all_gather_single(self, output, input, opts):
        b = _Build()
        self._gather_single(b, output, input)
        return self._issue(b, [output], opts.asyncOp, "all_gather_into_tensor")

    def _gather_single(self, b, output, input):
        n = self.size()
        if output.numel() != n * input.numel() or output.dtype != input.dtype:
            raise ValueError(
                "oxccl backend: all_gather_into_tensor: the output must hold %d x the input "
                "(%d elements of %s), not %d of %s" % (n, input.numel(), input.dtype, output.numel(), output.dtype)
            )
        po, _, _ = b.moved(output, True, "all_gather output")
        pi, ci, code = b.moved(input, False, "all_gather input")
        b.calls.append((_AllGather, _IAllGather, (pi, po, ci, code)))

    def all_gather_single_coalesced(self, outputs, inputs, opts):
        b = _Build()
        for o, i in zip(outputs, inputs):
            self._gather_single(b, o, i)
        return self._issue(b, list(outputs), opts.asyncOp, "all_gather_into_tensor_coalesced")

    allgather_into_tensor_coalesced = all_gather_single_coalesced

    def reduce_scatter(self, outputs, input_lists, opts):
        b = _Build()
        n = self.size()
        for out, ins in zip(outputs, input_lists):
            if len(ins) != n:
                raise ValueError("oxccl backend: reduce_scatter needs %d input tensors, got %d" % (n, len(ins)))
            flat = torch.cat([_cpu_flat(t) for t in ins])
            self._reduce_scatter_one(b, out, flat, opts.reduceOp, scratch=True)
        return self._issue(b, list(outputs), opts.asyncOp, "reduce_scatter")

    def _reduce_scatter_one(self, b, out, inp, op, scratch=False):
        n = self.size()
        if inp.numel() != n * out.numel() or out.dtype != inp.dtype:
            raise ValueError(
                "oxccl backend: reduce_scatter: the input must hold %d x the output (%d elements "
                "of %s), not %d of %s" % (n, out.numel(), out.dtype, inp.numel(), inp.dtype)
            )
        if op.op in _BITWISE:
            raise ValueError("oxccl backend: reduce_scatter with %s is not supported" % op.op)
        pi, ni, code, opc = b.reduced(inp, op, scratch, "reduce_scatter input", copy=not scratch)
        po, no, code2, _ = b.reduced(out, _PLAIN_SUM, True, "reduce_scatter output")
        b.calls.append((_ReduceScatter, _IReduceScatter, (pi, po, no, code, opc)))

    def reduce_scatter_single(self, output, input, opts):
        b = _Build()
        self._reduce_scatter_one(b, output, input, opts.reduceOp)
        return self._issue(b, [output], opts.asyncOp, "reduce_scatter_tensor")

    def reduce_scatter_single_coalesced(self, outputs, inputs, opts):
        b = _Build()
        for o, i in zip(outputs, inputs):
            self._reduce_scatter_one(b, o, i, opts.reduceOp)
        return self._issue(b, list(outputs), opts.asyncOp, "reduce_scatter_tensor_coalesced")

    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced

    def alltoall(self, outputs, inputs, opts):
        n = self.size()
        if len(outputs) != n or len(inputs) != n:
            raise ValueError("oxccl backend: all_to_all needs %d input and output tensors" % n)
        b = _Build()
        src = torch.cat([_cpu_flat(t) for t in inputs])
        dst = torch.empty(sum(o.numel() for o in outputs), dtype=outputs[0].dtype)
        ps, _, code = b.moved(src, False, "all_to_all input")
        pd, _, _ = b.moved(dst, True, "all_to_all output")
        w = 1 if _DT.get(src.dtype) is not None else src.element_size()
        sc = (ctypes.c_size_t * n)(*[t.numel() * w for t in inputs])
        rc = (ctypes.c_size_t * n)(*[t.numel() * w for t in outputs])
        b.keep += [sc, rc]
        b.calls.append((_AllToAllV, _IAllToAllV, (ps, sc, pd, rc, code)))
        off = 0
        for o in outputs:
            k = o.numel()
            b.posts.append(functools.partial(_copy_into, o, dst[off : off + k]))
            off += k
        return self._issue(b, list(outputs), opts.asyncOp, "all_to_all")

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts):
        n = self.size()
        b = _Build()
        po, _, code = b.moved(output, True, "all_to_all_single output")
        pi, ci, code_i = b.moved(input, False, "all_to_all_single input")
        if output.dtype != input.dtype:
            raise ValueError("oxccl backend: all_to_all_single: input %s, output %s" % (input.dtype, output.dtype))
        if not output_split_sizes and not input_split_sizes:
            if input.numel() != output.numel() or ci % n:
                raise ValueError(
                    "oxccl backend: all_to_all_single: input and output must be equal and split "
                    "in %d equal blocks (%d and %d elements)" % (n, input.numel(), output.numel())
                )
            b.calls.append((_AllToAll, _IAllToAll, (pi, po, ci // n, code)))
        else:
            w = 1 if _DT.get(input.dtype) is not None else input.element_size()

            def counts(t, splits, what):
                if not splits:
                    if t.dim() == 0 or t.size(0) % n:
                        raise ValueError("oxccl backend: all_to_all_single: %s's first dim is not divisible by %d" % (what, n))
                    splits = [t.size(0) // n] * n
                if len(splits) != n:
                    raise ValueError("oxccl backend: all_to_all_single: %d %s split sizes for %d ranks" % (len(splits), what, n))
                row = t[0].numel() if t.dim() and t.size(0) else 0
                if sum(splits) != (t.size(0) if t.dim() else 1):
                    raise ValueError("oxccl backend: all_to_all_single: %s split sizes %s do not add up to %d" % (what, list(splits), t.size(0)))
                return (ctypes.c_size_t * n)(*[int(s) * row * w for s in splits])

            sc = counts(input, input_split_sizes, "input")
            rc = counts(output, output_split_sizes, "output")
            b.keep += [sc, rc]
            b.calls.append((_AllToAllV, _IAllToAllV, (pi, sc, po, rc, code)))
        return self._issue(b, [output], opts.asyncOp, "all_to_all_single")

    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts):
        return self.all_to_all_single(output, input, output_split_sizes, input_split_sizes, opts)

    def gather(self, output_lists, inputs, opts):
        root = opts.rootRank
        n = self.size()
        b = _Build()
        is_root = self.rank() == root
        for i, inp in enumerate(inputs):
            src = b.dense(inp, False, "gather input")
            ps, cs, code = b.moved(src, False, "gather input")
            if is_root:
                outs = output_lists[i]
                if len(outs) != n:
                    raise ValueError("oxccl backend: gather needs %d output tensors on the root" % n)
                flat = torch.empty((n,) + tuple(src.shape), dtype=src.dtype)
                b.keep.append(flat)
                b.calls.append((_Gather, _IGather, (ps, flat.data_ptr(), cs, code, root)))
                for j, o in enumerate(outs):
                    b.posts.append(functools.partial(_copy_into, o, flat[j]))
            else:
                b.calls.append((_Gather, _IGather, (ps, None, cs, code, root)))
        return self._issue(b, list(output_lists), opts.asyncOp, "gather")

    def scatter(self, outputs, input_lists, opts):
        root = opts.rootRank
        n = self.size()
        b = _Build()
        is_root = self.rank() == root
        for i, out in enumerate(outputs):
            po, co, code = b.moved(out, True, "scatter output")
            if is_root:
                ins = input_lists[i]
                if len(ins) != n:
                    raise ValueError("oxccl backend: scatter needs %d input tensors on the root" % n)
                flat = torch.cat([_cpu_flat(t) for t in ins])
                ps, _, _ = b.moved(flat, False, "scatter input")
                b.calls.append((_Scatter, _IScatter, (ps, po, co, code, root)))
            else:
                b.calls.append((_Scatter, _IScatter, (None, po, co, code, root)))
        return self._issue(b, list(outputs), opts.asyncOp, "scatter")

    def send(self, tensors, dst, tag):
        b = _Build()
        for t in tensors:
            p, n, code = b.moved(t, False, "send")
            b.calls.append((_SendTagged, _ISend, (p, n, code, dst, tag & 0xFFFFFFFF)))
        return self._issue(b, list(tensors), True, "send to rank %d" % dst)

    def recv(self, tensors, src, tag):
        b = _Build()
        for t in tensors:
            p, n, code = b.moved(t, True, "recv")
            b.calls.append((_RecvTagged, _IRecv, (p, n, code, src, tag & 0xFFFFFFFF)))
        return self._issue(b, list(tensors), True, "recv from rank %d" % src)

    def recv_anysource(self, tensors, tag):
        raise ValueError(
            "oxccl backend: recv from any source is not supported (oxccl matches a receive to "
            "one peer, as NCCL does); pass src="
        )

    def barrier(self, opts):
        b = _Build()
        b.calls.append((_Barrier, _IBarrier, ()))
        return self._issue(b, [], opts.asyncOp if hasattr(opts, "asyncOp") else True, "barrier")

    def monitored_barrier(self, *args):
        raise ValueError("oxccl backend: monitored_barrier is gloo's; use barrier (it has the group's timeout)")

    # ---- groups --------------------------------------------------------------------------

    def split(self, store, ranks, opts=None):
        ranks = list(ranks)
        me = self.rank()
        if me in ranks:
            color, key = min(ranks), ranks.index(me)
        else:
            color, key = None, 0
        timeout = self._timeout if opts is None else opts._timeout
        if opts is None:
            opts = _C10dBackend.Options(BACKEND_NAME, timeout=timeout)
        # The subgroup's timeout is its communicator's deadline, as for a new group.
        sub = self._comm.split(color, key, timeout=max(timeout.total_seconds(), 0.001))
        if sub is None:
            return None
        return OxcclBackend(store, key, len(ranks), timeout, comm=sub, options=opts)

    def perform_nocolor_split(self, device=None):
        self._comm.split(None)

    def shutdown(self):
        """Waits for started calls and frees the communicator."""
        h, self._h = self._h, None
        self._hot = None
        free_stored(getattr(self, "_tpers", None))
        if h is not None:
            self._progress.stop()
            self._comm.close()

    def abort(self):
        """Frees the communicator without waiting for peers (they see this rank as lost)."""
        h, self._h = self._h, None
        self._hot = None
        free_stored(getattr(self, "_tpers", None))
        if h is not None:
            self._comm.abort()  # pending calls fail at once; the progress thread then ends
            self._progress.stop(join=False)

    def __del__(self):
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


_PLAIN_SUM = ReduceOp(ReduceOp.SUM)
# Stored calls per backend (one per tensor all-reduced blocking in place).
_STORED_MAX = 64


def _cpu_flat(t):
    _cpu(t, "tensor")
    return t.reshape(-1)


def _copy_into(dst, src):
    dst.copy_(src.reshape(dst.shape))
