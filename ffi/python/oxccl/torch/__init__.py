"""``torch.distributed`` backend ``"oxccl"`` for CPU tensors, over the C ABI.

::

    import oxccl.torch                      # registers "oxccl" (the package's entry point does it too)
    dist.init_process_group("oxccl")        # torchrun, python -m oxccl.run, store=/init_method=...

Rank 0 of each process group makes a unique id (a fresh random secret with it) and passes it to
the others through the c10d store torch gives the backend; the group's ``timeout`` becomes the
communicator's deadline. Every collective maps onto oxccl calls on the caller's memory (zero-copy
for contiguous tensors; others go through a contiguous copy). Calls start at once on the
communicator's worker thread, in issue order, and return a :class:`Work` whose future completes
with the output tensors when the oxccl request does, so DDP overlaps its all-reduces with the
backward pass. A blocking call (``async_op=False``) runs in the calling thread instead: nothing to
hand over. Failures raise ``torch.distributed.DistBackendError`` with oxccl's message (which
collective, rank and peer).
"""

import torch.distributed as dist
from torch._C._distributed_c10d import Backend as _C10dBackend

from ._backend import OxcclBackend
from ._c import BACKEND_NAME
from ._work import Work

__all__ = ["OxcclBackend", "Work", "register"]


def _options(opts, backend_options):
    if backend_options is None:
        backend_options = _C10dBackend.Options(BACKEND_NAME, timeout=opts.timeout)
    backend_options._timeout = opts.timeout
    backend_options.global_ranks_in_group = opts.global_ranks_in_group
    backend_options.group_name = opts.group_id
    return backend_options


def _create(opts, backend_options):
    """torch's creator (extended API): a new communicator, or a split of ``opts.split_from``."""
    options = _options(opts, backend_options)
    if opts.split_from:
        parent = opts.split_from
        if not isinstance(parent, OxcclBackend):
            raise TypeError("oxccl backend: cannot split from a %s" % type(parent).__name__)
        return parent.split(opts.store, opts.global_ranks_in_group, options)
    return OxcclBackend(opts.store, opts.group_rank, opts.group_size, opts.timeout, options=options)


def register():
    """Registers the ``"oxccl"`` backend with torch.distributed (idempotent). Importing
    ``oxccl.torch`` does it; so does torch itself through the package's entry point."""
    if BACKEND_NAME.upper() in dist.Backend._plugins:
        return
    dist.Backend.register_backend(BACKEND_NAME, _create, extended_api=True, devices=["cpu"])


register()
