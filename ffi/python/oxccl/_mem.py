"""Registered memory (``oxcclMemAlloc``, as NCCL's ``ncclMemAlloc``): numpy arrays whose memory
other ranks on the host map, so a collective between processes moves each byte once. Any array
works with every call; these are faster between processes on one host."""

import ctypes
import weakref

from ._lib import call


def mem_alloc(shape, dtype="float32"):
    """A zeroed numpy array of ``shape`` and ``dtype`` in registered memory (page aligned). The
    memory is freed when the array (and every view of it) is gone.

    >>> grads = oxccl.mem_alloc(1 << 20)        # 1 Mi float32
    >>> comm.all_reduce(grads)             # in place; out=another registered array works too"""
    import numpy as np

    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64)) if shape != () else 1
    nbytes = max(count * dt.itemsize, 1)
    ptr = ctypes.c_void_p()
    call("oxcclMemAlloc", ctypes.byref(ptr), nbytes)
    buf = (ctypes.c_uint8 * nbytes).from_address(ptr.value)
    # Freed when the last array viewing `buf` dies (numpy keeps `buf` as the base).
    weakref.finalize(buf, _free, ptr.value)
    return np.frombuffer(buf, dtype=dt, count=count).reshape(shape)


def _free(address):
    call("oxcclMemFree", ctypes.c_void_p(address))
