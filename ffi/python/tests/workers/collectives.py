"""Every collective through the Python bindings, checked on every rank (run by the launcher)."""

import array
import sys

import numpy as np

import oxccl

comm = oxccl.init(timeout=30)
rank, n = comm.rank, comm.size
assert (rank, n) == (int(__import__("os").environ["RANK"]), int(__import__("os").environ["WORLD_SIZE"]))

DTYPES = [np.int8, np.uint8, np.int32, np.uint32, np.int64, np.uint64, np.float16, np.float32, np.float64]
try:
    import ml_dtypes

    DTYPES.append(ml_dtypes.bfloat16)
except ImportError:
    ml_dtypes = None


def val(r, count, dt, base=0):
    return ((np.arange(base, base + count) * 3 + r * 7) % 9).astype(dt)


# all-reduce: every type, every op, in place and out of place, a few sizes.
for dt in DTYPES:
    for count in (1, 37, 5000):
        for op in ("sum", "prod", "max", "min", "avg"):
            if op == "prod":
                ins = [np.array([[1, 2, 1][(r + i) % 3] for i in range(count)]).astype(dt) for r in range(n)]
            elif op == "avg":
                # base + d(r) with the d(r) summing to 0, everything >= 0: the average is exact.
                d = [r if r < n - 1 else -(n - 1) * (n - 2) / 2 for r in range(n)]
                ins = [(val(0, count, np.float64) + 3 + d[r]).astype(dt) for r in range(n)]
            else:
                ins = [val(r, count, dt) for r in range(n)]
            wide = [x.astype(np.float64) for x in ins]
            want = {"sum": sum(wide), "prod": np.prod(wide, axis=0), "max": np.max(wide, axis=0),
                    "min": np.min(wide, axis=0), "avg": sum(wide) / n}[op]
            a = ins[rank].copy()
            r = comm.all_reduce(a, op=op)
            assert r is a
            assert np.array_equal(a.astype(np.float64), want), (dt, count, op, a[:5], want[:5])
            out = np.zeros_like(a)
            src = ins[rank].copy()
            comm.all_reduce(src, op=op, out=out)
            assert np.array_equal(out.astype(np.float64), want), (dt, op, "out of place")
            assert np.array_equal(src, ins[rank])

# Buffers that are not numpy: bytearray, array.array, memoryview slices, raw bytes with dtype=.
b = bytearray([rank + 1] * 16)
comm.all_reduce(b, op="max")
assert b == bytearray([n] * 16)
arr = array.array("q", [rank] * 8)
comm.all_reduce(arr)
assert list(arr) == [n * (n - 1) // 2] * 8
big = bytearray(64)
mv = memoryview(big)[16:32].cast("i")
mv[0] = rank
comm.all_reduce(mv)
assert mv[0] == n * (n - 1) // 2 and big[:16] == bytearray(16)
raw = bytearray(np.full(4, rank, dtype=np.float32).tobytes())
comm.all_reduce(raw, dtype="float32")
assert np.frombuffer(raw, dtype=np.float32).tolist() == [n * (n - 1) / 2] * 4

# broadcast, reduce
for root in range(n):
    x = np.arange(100, dtype=np.float64) + rank
    comm.broadcast(x, root=root)
    assert np.array_equal(x, np.arange(100) + root)
    y = np.full(10, rank + 1, dtype=np.int32)
    out = np.zeros(10, dtype=np.int32)
    comm.reduce(y, root=root, op="sum", out=out)
    if rank == root:
        assert (out == n * (n + 1) // 2).all()
    else:
        assert (out == 0).all()

# all-gather, reduce-scatter (and their in-place forms), all-to-all
s = np.full(5, rank, dtype=np.int64)
g = np.empty(5 * n, dtype=np.int64)
comm.all_gather(s, g)
assert np.array_equal(g, np.repeat(np.arange(n), 5))
g2 = np.full(5 * n, -1, dtype=np.int64)
g2[5 * rank:5 * rank + 5] = rank
comm.all_gather(g2[5 * rank:5 * rank + 5], g2)
assert np.array_equal(g2, g)
src = np.arange(4 * n, dtype=np.float32) + rank
rs = np.empty(4, dtype=np.float32)
comm.reduce_scatter(src, rs)
want = sum(np.arange(4 * n, dtype=np.float32) + r for r in range(n))[4 * rank:4 * rank + 4]
assert np.array_equal(rs, want)
comm.reduce_scatter(src, src[4 * rank:4 * rank + 4])
assert np.array_equal(src[4 * rank:4 * rank + 4], want)
a2a = np.arange(3 * n, dtype=np.int32) + 100 * rank
o = np.empty_like(a2a)
comm.all_to_all(a2a, o)
assert np.array_equal(o, np.concatenate([np.arange(3 * rank, 3 * rank + 3) + 100 * q for q in range(n)]))
comm.all_to_all(a2a)
assert np.array_equal(a2a, o)

# gather, scatter
for root in range(n):
    mine = np.full(3, rank, dtype=np.uint8)
    allv = np.zeros(3 * n, dtype=np.uint8) if rank == root else None
    comm.gather(mine, allv, root=root)
    if rank == root:
        assert np.array_equal(allv, np.repeat(np.arange(n, dtype=np.uint8), 3))
    part = np.zeros(3, dtype=np.uint8)
    comm.scatter(allv, part, root=root)
    assert (part == rank).all()

# v-variants: rank p has p+1 elements.
counts = [p + 1 for p in range(n)]
mine = np.full(rank + 1, rank, dtype=np.float64)
allv = np.empty(sum(counts), dtype=np.float64)
comm.all_gatherv(mine, allv, counts)
assert np.array_equal(allv, np.concatenate([np.full(p + 1, p) for p in range(n)]))
full = np.ones(sum(counts), dtype=np.float64) * (rank + 1)
part = np.empty(rank + 1, dtype=np.float64)
comm.reduce_scatterv(full, part, counts)
assert (part == n * (n + 1) / 2).all()
sc = [rank + q + 1 for q in range(n)]
rc = [q + rank + 1 for q in range(n)]
sbuf = np.concatenate([np.full(sc[q], 10 * rank + q) for q in range(n)]).astype(np.int32)
rbuf = np.empty(sum(rc), dtype=np.int32)
comm.all_to_allv(sbuf, sc, rbuf, rc)
assert np.array_equal(rbuf, np.concatenate([np.full(rc[q], 10 * q + rank) for q in range(n)]).astype(np.int32))

# point to point: a ring in a group, then tagged non-blocking (rank 0 sends first: the calls of one
# communicator run in issue order).
nxt, prv = (rank + 1) % n, (rank - 1) % n
out = np.full(50, rank, dtype=np.int64)
inb = np.empty(50, dtype=np.int64)
with oxccl.group():
    comm.send(out, nxt)
    comm.recv(inb, prv)
assert (inb == prv).all()
inb[:] = -1
reqs = []
if rank == 0:
    reqs.append(comm.send(out, nxt, tag=5, async_op=True))
reqs.append(comm.recv(inb, prv, tag=5, async_op=True))
if rank != 0:
    reqs.append(comm.send(out, nxt, tag=5, async_op=True))
for r in reqs:
    r.wait()
assert (inb == prv).all()

# non-blocking collectives
x = np.full(100000, rank, dtype=np.float32)
y = np.ones(7, dtype=np.float64)
r1 = comm.all_reduce(x, async_op=True)
r2 = comm.all_reduce(y, op="avg", async_op=True)
r3 = comm.barrier(async_op=True)
while not r3.test():
    pass
assert r2.wait() is y and r1.wait() is x
assert (x == n * (n - 1) / 2).all() and (y == 1).all()
g = np.empty(2 * n, dtype=np.int32)
r4 = comm.all_gather(np.full(2, rank, dtype=np.int32), g, async_op=True)
r5 = comm.broadcast(z := np.full(3, rank, dtype=np.int8), root=n - 1, async_op=True)
r4.wait(), r5.wait()
assert np.array_equal(g, np.repeat(np.arange(n, dtype=np.int32), 2)) and (z == n - 1).all()

# Two different calls in one group.
a = np.full(4, rank, dtype=np.int32)
b = np.full(4, rank, dtype=np.int32)
with oxccl.group():
    comm.all_reduce(a, op="max")
    comm.all_reduce(b, op="min")
assert (a == n - 1).all() and (b == 0).all()

# torch CPU tensors, when torch is installed.
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    t = torch.full((6,), float(rank))
    comm.all_reduce(t)
    assert t.tolist() == [n * (n - 1) / 2] * 6
    tb = torch.full((6,), float(rank), dtype=torch.bfloat16)
    comm.all_reduce(tb, op="max")
    assert tb.float().tolist() == [n - 1.0] * 6

# Registered memory (oxcclMemAlloc): arrays peers map; in and out of place, above the size
# that goes through the peers' mappings; freed with the array.
count = (1 << 20) + 3
reg_in = oxccl.mem_alloc(count, np.float32)
reg_out = oxccl.mem_alloc((count,), "float32")
assert reg_in.shape == (count,) and reg_in.dtype == np.float32 and not reg_in.any()
reg_in[:] = val(rank, count, np.float32)
comm.all_reduce(reg_in, out=reg_out)
want = sum(val(r, count, np.float64) for r in range(n)).astype(np.float32)
assert (reg_out == want).all()
comm.all_reduce(reg_in)
assert (reg_in == want).all()
grid = oxccl.mem_alloc((3, 5), np.int64)
grid[:] = rank
comm.all_reduce(grid, op="max")
assert (grid == n - 1).all()
del reg_in, reg_out, grid
assert oxccl.mem_alloc(0).size == 0

assert comm.async_error() is None
comm.barrier()
comm.close()
print("rank %d of %d: python collectives ok%s%s" % (rank, n, "" if ml_dtypes else " (no ml_dtypes)", "" if torch else " (no torch)"))
