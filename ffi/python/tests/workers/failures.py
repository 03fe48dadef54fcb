"""Failures and communicator management between ranks, by argv[1]:
split     colors rank % 2, keys reversed; the last rank passes None.
shrink    the last rank dies after a first all-reduce; the others shrink and go on.
lost      rank 1 leaves without a word after a first all-reduce; rank 0's next one must raise
          PeerLostError (or TimeoutError_) naming rank 1, and the communicator is then revoked.
idle      after a barrier every rank but the last marks itself idle (a file in IDLE_DIR) and polls
          async_error() with no call in flight; the last rank exits without a word once all are
          idle. Each survivor must see PeerLostError naming it within seconds.
mismatch  ranks pass different sizes: every rank raises MismatchError or PeerLostError, at least
          one MismatchError (exit 10 for mismatch, 11 for peer lost)."""

import os
import sys

import numpy as np

import oxccl

mode = sys.argv[1]
comm = oxccl.init(timeout=20)
rank, n = comm.rank, comm.size
x = np.ones(64, dtype=np.float32)
if mode == "split":
    color = None if rank == n - 1 else rank % 2
    sub = comm.split(color, key=n - rank)
    if color is None:
        assert sub is None
    else:
        members = [r for r in range(n - 1) if r % 2 == color]
        assert sub.size == len(members), (sub.size, members)
        assert sub.rank == sorted(members, key=lambda r: n - r).index(rank)
        v = np.array([rank], dtype=np.int64)
        sub.all_reduce(v)
        assert v[0] == sum(members), (v, members)
        sub.close()
    comm.barrier()
    print("rank %d: split ok" % rank)
    sys.exit(0)
if mode == "shrink":
    comm.all_reduce(x)
    if rank == n - 1:
        os._exit(0)
    try:
        comm.all_reduce(x)
    except (oxccl.PeerLostError, oxccl.TimeoutError_):
        pass
    small = comm.shrink()
    comm.close()
    assert (small.rank, small.size) == (rank, n - 1)
    v = np.ones(3, dtype=np.float64)
    small.all_reduce(v)
    assert (v == n - 1).all()
    small.close()
    print("rank %d: shrink ok" % rank)
    sys.exit(0)
if mode == "lost":
    comm.all_reduce(x)
    if rank == 1:
        os._exit(0)
    try:
        comm.all_reduce(x)
    except (oxccl.PeerLostError, oxccl.TimeoutError_) as e:
        assert "rank 1" in e.message, e.message
        assert isinstance(e, oxccl.OxcclError) and e.code in (6, 8)
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
if mode == "idle":
    import time

    comm.all_reduce(x)
    comm.barrier()
    idle_dir = os.environ["IDLE_DIR"]
    victim = n - 1
    t0 = time.monotonic()
    if rank == victim:
        want = {"idle-%d" % r for r in range(victim)}
        while not want <= set(os.listdir(idle_dir)):
            if time.monotonic() - t0 > 60:
                raise SystemExit("the others never went idle")
            time.sleep(0.005)  # polling interval of a wait with a deadline
        os._exit(0)
    open(os.path.join(idle_dir, "idle-%d" % rank), "w").close()
    while True:
        err = comm.async_error()
        if err is not None:
            break
        if time.monotonic() - t0 > 20:
            raise AssertionError("no async error within 20 s of going idle")
        time.sleep(0.005)
    assert isinstance(err, oxccl.PeerLostError), err
    assert "rank %d" % victim in err.message, err.message
    print("rank %d: idle ok after %.0f ms: %s" % (rank, 1000 * (time.monotonic() - t0), err.message))
    comm.close()
    sys.exit(0)
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
