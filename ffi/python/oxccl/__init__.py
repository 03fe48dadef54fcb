"""oxccl: collective communication for Python, over oxccl's C ABI (ctypes, no compiled code).

>>> import numpy as np, oxccl
>>> comm = oxccl.init()                       # under `python -m oxccl.run -n 4 script.py`, torchrun, srun...
>>> grads = np.ones(1024, dtype=np.float32)
>>> comm.all_reduce(grads, op="avg")          # in place, without copying

Or without a launcher: rank 0 makes ``uid = oxccl.UniqueId.new()`` and sends ``str(uid)`` to the
others, and every rank calls ``oxccl.Communicator(rank, nranks, uid)``.
"""

from ._comm import Communicator, Request, UniqueId, group, init, version
from ._lib import find_library, library_path
from ._mem import mem_alloc
from .errors import (
    AuthError,
    InProgressError,
    InternalError,
    InvalidArgumentError,
    InvalidUsageError,
    MismatchError,
    OxcclError,
    PeerLostError,
    SystemError_,
    TimeoutError_,
    UnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "Communicator",
    "Request",
    "UniqueId",
    "group",
    "init",
    "version",
    "find_library",
    "library_path",
    "mem_alloc",
    "OxcclError",
    "InvalidArgumentError",
    "InvalidUsageError",
    "SystemError_",
    "InternalError",
    "PeerLostError",
    "TimeoutError_",
    "MismatchError",
    "UnavailableError",
    "AuthError",
    "InProgressError",
]
