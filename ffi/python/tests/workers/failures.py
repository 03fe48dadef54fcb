"""Failures between ranks, by argv[1]:
lost      rank 1 leaves without a word after a first all-reduce; rank 0's next one must raise
          PeerLostError (or TimeoutError_) naming rank 1, and the communicator is then revoked.
mismatch  ranks pass different sizes: every rank raises MismatchError or PeerLostError, at least
          one MismatchError (exit 10 for mismatch, 11 for peer lost)."""

import os
import sys

import numpy as np

import oxccl

mode = sys.argv[1]
comm = oxccl.init(timeout=20)
rank = comm.rank
x = np.ones(64, dtype=np.float32)
if mode == "lost":
    comm.all_reduce(x)
    if rank == 1:
        os._exit(0)
    try:
        comm.all_reduce(x)
    except (oxccl.PeerLostError, oxccl.TimeoutError_) as e:
        assert "rank 1" in e.message, e.message
        assert isinstance(e, oxccl.OxcclError) and e.code in (5, 6)
        err = comm.async_error()
        assert type(err) is type(e), err
        try:
            comm.barrier()
        except oxccl.InvalidUsageError as e2:
            assert "revoked" in str(e2)
        else:
            raise AssertionError("a revoked communicator accepted a barrier")
        print("lost ok:", e.message)
        sys.exit(0)
    raise AssertionError("all-reduce with a lost peer succeeded")
if mode == "mismatch":
    y = np.ones(16 if rank == 0 else 32, dtype=np.float32)
    try:
        comm.all_reduce(y)
    except oxccl.MismatchError as e:
        print("rank %d mismatch: %s" % (rank, e.message))
        comm.close()
        sys.exit(10)
    except oxccl.PeerLostError as e:
        print("rank %d peer lost: %s" % (rank, e.message))
        comm.close()
        sys.exit(11)
    sys.exit(1)
