"""The C functions the backend calls, looked up once, and torch's types and ops by oxccl's
numbers."""

import ctypes
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import ReduceOp

from .. import _lib
from ..errors import TimeoutError_

BACKEND_NAME = "oxccl"
_UID_KEY = "oxccl/unique_id"

_L = _lib.lib()
_SUCCESS = _lib.SUCCESS
_TIMEOUT = TimeoutError_.code  # oxcclTimeout

# The C functions, looked up once (attribute lookups on the CDLL cost on every call).
_AllReduce, _IAllReduce = _L.oxcclAllReduce, _L.oxcclIAllReduce
_Broadcast, _IBroadcast = _L.oxcclBroadcast, _L.oxcclIBroadcast
_Reduce, _IReduce = _L.oxcclReduce, _L.oxcclIReduce
_AllGather, _IAllGather = _L.oxcclAllGather, _L.oxcclIAllGather
_ReduceScatter, _IReduceScatter = _L.oxcclReduceScatter, _L.oxcclIReduceScatter
_AllToAll, _IAllToAll = _L.oxcclAlltoAll, _L.oxcclIAlltoAll
_AllToAllV, _IAllToAllV = _L.oxcclAllToAllV, _L.oxcclIAllToAllV
_Gather, _IGather = _L.oxcclGather, _L.oxcclIGather
_Scatter, _IScatter = _L.oxcclScatter, _L.oxcclIScatter
_SendTagged, _ISend = _L.oxcclSendTagged, _L.oxcclISend
_RecvTagged, _IRecv = _L.oxcclRecvTagged, _L.oxcclIRecv
_Barrier, _IBarrier = _L.oxcclBarrier, _L.oxcclIBarrier
_GroupStart, _GroupEnd, _GroupEndAsync = _L.oxcclGroupStart, _L.oxcclGroupEnd, _L.oxcclGroupEndAsync
_Wait, _WaitTimeout, _Test, _Free = _L.oxcclWait, _L.oxcclWaitTimeout, _L.oxcclTest, _L.oxcclRequestFree
_byref = ctypes.byref
_void_p = ctypes.c_void_p
_size_t = ctypes.c_size_t
# A Work that C++ answers itself (done; wait() returns at once): for a blocking call that is
# over when the backend returns, it saves the trip back into Python that torch makes to wait.
_DoneWork = getattr(torch._C._distributed_c10d, "FakeWork", None)
# The hot path's forms without ctypes' argument conversion (see _lib.raw).
_rAllReduce, _rIAllReduce = _lib.raw("oxcclAllReduce"), _lib.raw("oxcclIAllReduce")

# oxcclDataType_t by torch dtype.
_DT = {
    torch.int8: 0,
    torch.uint8: 1,
    torch.int32: 2,
    torch.int64: 4,
    torch.float16: 6,
    torch.float32: 7,
    torch.float64: 8,
    torch.bfloat16: 9,
}
for _name, _code in (("uint32", 3), ("uint64", 5)):
    if hasattr(torch, _name):
        _DT[getattr(torch, _name)] = _code
_U8 = 1

# oxcclRedOp_t by torch's reduce op type.
_RT = ReduceOp.RedOpType
_SUM, _PROD, _MAX, _MIN, _AVG = 0, 1, 2, 3, 4
_OPS = {_RT.SUM: _SUM, _RT.PRODUCT: _PROD, _RT.MAX: _MAX, _RT.MIN: _MIN, _RT.AVG: _AVG}
_BITWISE = {
    _RT.BAND: torch.bitwise_and,
    _RT.BOR: torch.bitwise_or,
    _RT.BXOR: torch.bitwise_xor,
}
_INTS = {torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool}
for _name in ("uint16", "uint32", "uint64"):
    if hasattr(torch, _name):
        _INTS.add(getattr(torch, _name))
# Reduced in a wider type (copied in and out): no oxccl kernel of their own.
_WIDEN = {torch.int16: torch.int32}
if hasattr(torch, "uint16"):
    _WIDEN[torch.uint16] = torch.int32


def _error(code, what):
    """The DistBackendError for a failed oxccl call (the calling thread's last message)."""
    msg = _lib.last_error() or "oxccl error %d" % code
    return dist.DistBackendError("oxccl %s: %s" % (what, msg))


def _check(code, what):
    if code != _SUCCESS:
        raise _error(code, what)


def _ms(timeout):
    """A Work.wait timeout (timedelta, seconds or None) in ms; -1 for none (0 means none too, as
    in c10d)."""
    if timeout is None:
        return -1
    s = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if s <= 0:
        return -1
    return min(int(s * 1000) or 1, 2**31 - 1)
