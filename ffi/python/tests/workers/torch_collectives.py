"""Every collective torch issues on CPU, through the "oxccl" backend, against values computed here
from every rank's inputs (each rank can make any rank's input: ``value(r)``). Run under
``python -m oxccl.run -n N``; prints "torch collectives ok" per rank."""

import functools
import sys

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc

import oxccl.torch  # noqa: F401 - registers "oxccl"

dist.init_process_group("oxccl")
rank, n = dist.get_rank(), dist.get_world_size()
assert dist.get_backend() == "oxccl", dist.get_backend()
RT = dist.ReduceOp

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INTS = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]


def value(r, dtype, shape=(5, 3), salt=0):
    """Rank r's input: small exact values of any dtype."""
    k = 1
    for s in shape:
        k *= s
    base = (torch.arange(k, dtype=torch.int64).reshape(shape) + 3 * r + salt) % 7 + 1
    if dtype == torch.bool:
        return (base + r) % 2 == 0
    if dtype.is_complex:
        return torch.complex(base.double(), -base.double() * (r + 1)).to(dtype)
    return base.to(dtype)


def eq(got, want, what):
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    if got.dtype.is_floating_point or got.dtype.is_complex:
        tol = 1e-2 if got.element_size() <= 2 else 1e-6
        ok = torch.allclose(got.to(torch.complex128 if got.dtype.is_complex else torch.float64),
                            want.to(torch.complex128 if want.dtype.is_complex else torch.float64),
                            rtol=tol, atol=tol)
    else:
        ok = torch.equal(got, want)
    assert ok, "%s: rank %d got %s want %s" % (what, rank, got, want)


def fold(op, dtype, shape=(5, 3)):
    vals = [value(r, dtype, shape) for r in range(n)]
    if op == RT.SUM:
        return functools.reduce(torch.add, vals).to(dtype) if dtype != torch.bool else functools.reduce(torch.logical_or, vals)
    if op == RT.PRODUCT:
        return functools.reduce(torch.mul, vals).to(dtype) if dtype != torch.bool else functools.reduce(torch.logical_and, vals)
    if op == RT.MAX:
        return functools.reduce(torch.maximum, vals)
    if op == RT.MIN:
        return functools.reduce(torch.minimum, vals)
    if op == RT.AVG:
        return (functools.reduce(torch.add, [v.double() for v in vals]) / n).to(dtype)
    if op == RT.BAND:
        return functools.reduce(torch.bitwise_and, vals)
    if op == RT.BOR:
        return functools.reduce(torch.bitwise_or, vals)
    if op == RT.BXOR:
        return functools.reduce(torch.bitwise_xor, vals)
    raise AssertionError(op)


# ---- all_reduce: every op on every dtype it applies to, sync and async, odd layouts ----------
for dt in FLOATS + INTS + [torch.bool]:
    ops = [RT.SUM, RT.PRODUCT, RT.MAX, RT.MIN]
    if dt in FLOATS:
        ops.append(RT.AVG)
    if dt in INTS or dt == torch.bool:
        ops += [RT.BAND, RT.BOR, RT.BXOR]
    for op in ops:
        t = value(rank, dt)
        dist.all_reduce(t, op=op)
        eq(t, fold(op, dt), "all_reduce %s %s" % (dt, op))
        t = value(rank, dt)
        w = dist.all_reduce(t, op=op, async_op=True)
        fut = w.get_future()
        w.wait()
        eq(fut.wait()[0], fold(op, dt), "async all_reduce %s %s" % (dt, op))
        # (torch's Work wrapper answers is_completed() from C++, not from a Python backend)
        assert fut.done()
for dt in [torch.complex64, torch.complex128]:
    for op in (RT.SUM, RT.AVG):
        t = value(rank, dt)
        dist.all_reduce(t, op=op)
        want = functools.reduce(torch.add, [value(r, dt) for r in range(n)])
        eq(t, want / n if op == RT.AVG else want, "all_reduce %s %s" % (dt, op))
try:
    dist.all_reduce(value(rank, torch.complex64), op=RT.MAX)
    raise AssertionError("MAX on complex must fail")
except ValueError as e:
    assert "complex" in str(e), e
try:
    dist.all_reduce(value(rank, torch.float32), op=RT.BAND)
    raise AssertionError("BAND on float must fail")
except ValueError as e:
    assert "integer" in str(e), e

# PREMUL_SUM with a float and with a tensor factor.
for f in (0.5, torch.tensor([3.0])):
    t = value(rank, torch.float32)
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(f))
    eq(t, fold(RT.SUM, torch.float32) * (f if isinstance(f, float) else f.item()), "premul_sum %s" % f)

# Non-contiguous: a column of a matrix, a transposed matrix (copied, written back).
big = value(rank, torch.float64, (6, 4))
col = big[:, 1]
dist.all_reduce(col)
eq(big[:, 1], fold(RT.SUM, torch.float64, (6, 4))[:, 1], "all_reduce column")
eq(big[:, 0], value(rank, torch.float64, (6, 4))[:, 0], "other columns untouched")
tt = value(rank, torch.float32, (4, 6)).t()
dist.all_reduce(tt, op=RT.MAX)
eq(tt, fold(RT.MAX, torch.float32, (4, 6)).t(), "all_reduce transposed")

# Empty tensors and scalars.
e = torch.empty(0)
dist.all_reduce(e)
s = torch.tensor(float(rank + 1))
dist.all_reduce(s)
eq(s, torch.tensor(float(n * (n + 1) // 2)), "scalar")

# allreduce_coalesced (deprecated API) and the functional collectives (DTensor's path).
ts = [value(rank, torch.float32), value(rank, torch.float32, (7,))]
dist.all_reduce_coalesced(ts)
eq(ts[0], fold(RT.SUM, torch.float32), "all_reduce_coalesced 0")
eq(ts[1], fold(RT.SUM, torch.float32, (7,)), "all_reduce_coalesced 1")
g = dist.group.WORLD
eq(fc.all_reduce(value(rank, torch.float32), "sum", g), fold(RT.SUM, torch.float32), "fc.all_reduce")
got = fc.all_reduce_coalesced([value(rank, torch.float32), value(rank, torch.float64)], "max", g)
eq(got[0], fold(RT.MAX, torch.float32), "fc.all_reduce_coalesced 0")
eq(got[1], fold(RT.MAX, torch.float64), "fc.all_reduce_coalesced 1")
ag = fc.all_gather_tensor(value(rank, torch.float32, (2, 3)), 0, g)
eq(ag, torch.cat([value(r, torch.float32, (2, 3)) for r in range(n)]), "fc.all_gather_tensor")
ags = fc.all_gather_into_tensor_coalesced([value(rank, torch.float32, (2,)), value(rank, torch.int32, (3,))], g)
eq(ags[0], torch.cat([value(r, torch.float32, (2,)) for r in range(n)]), "fc ag coalesced 0")
eq(ags[1], torch.cat([value(r, torch.int32, (3,)) for r in range(n)]), "fc ag coalesced 1")
rs = fc.reduce_scatter_tensor(value(rank, torch.float32, (2 * n, 3)), "sum", 0, g)
eq(rs, fold(RT.SUM, torch.float32, (2 * n, 3))[2 * rank : 2 * rank + 2], "fc.reduce_scatter_tensor")
rss = fc.reduce_scatter_tensor_coalesced(
    [value(rank, torch.float32, (n, 2)), value(rank, torch.float64, (2 * n,))], "sum", [0, 0], g
)
eq(rss[0], fold(RT.SUM, torch.float32, (n, 2))[rank : rank + 1], "fc rs coalesced 0")
eq(rss[1], fold(RT.SUM, torch.float64, (2 * n,))[2 * rank : 2 * rank + 2], "fc rs coalesced 1")

# ---- broadcast, reduce ---------------------------------------------------------------------
for dt in [torch.float32, torch.bfloat16, torch.int16, torch.bool, torch.complex64, torch.uint8]:
    for root in range(n):
        t = value(rank, dt)
        dist.broadcast(t, root)
        eq(t, value(root, dt), "broadcast %s root %d" % (dt, root))
root = 1 % n
for op in (RT.SUM, RT.MAX, RT.PRODUCT, RT.BOR):
    t = value(rank, torch.int32)
    dist.reduce(t, root, op=op)
    if rank == root:
        eq(t, fold(op, torch.int32), "reduce %s" % op)

# ---- gathers and scatters -------------------------------------------------------------------
for dt in [torch.float32, torch.float16, torch.int64, torch.bool, torch.complex128]:
    outs = [torch.empty((5, 3), dtype=dt) for _ in range(n)]
    dist.all_gather(outs, value(rank, dt))
    for r in range(n):
        eq(outs[r], value(r, dt), "all_gather %s from %d" % (dt, r))
    o = torch.empty((5 * n, 3), dtype=dt)
    dist.all_gather_into_tensor(o, value(rank, dt))
    eq(o, torch.cat([value(r, dt) for r in range(n)]), "all_gather_into_tensor %s" % dt)
# in place: the input is this rank's block of the output
o = torch.cat([value(r, torch.float32) if r == rank else torch.zeros(5, 3) for r in range(n)])
dist.all_gather_into_tensor(o, o[5 * rank : 5 * rank + 5])
eq(o, torch.cat([value(r, torch.float32) for r in range(n)]), "all_gather_into_tensor in place")

for dt, op in [(torch.float32, RT.SUM), (torch.int64, RT.MAX), (torch.float64, RT.AVG), (torch.int16, RT.SUM)]:
    ins = [value(rank, dt, salt=j) for j in range(n)]
    out = torch.empty((5, 3), dtype=dt)
    dist.reduce_scatter(out, ins, op=op)
    want = [value(r, dt, salt=rank) for r in range(n)]
    if op == RT.SUM:
        w = functools.reduce(torch.add, want).to(dt)
    elif op == RT.MAX:
        w = functools.reduce(torch.maximum, want)
    else:
        w = (functools.reduce(torch.add, [x.double() for x in want]) / n).to(dt)
    eq(out, w, "reduce_scatter %s %s" % (dt, op))
    out = torch.empty((5, 3), dtype=dt)
    dist.reduce_scatter_tensor(out, torch.cat(ins), op=op)
    eq(out, w, "reduce_scatter_tensor %s %s" % (dt, op))
out = torch.empty(3)
dist.reduce_scatter_tensor(out, value(rank, torch.float32, (3 * n,)), op=dist._make_nccl_premul_sum(2.0))
eq(out, 2 * fold(RT.SUM, torch.float32, (3 * n,))[3 * rank : 3 * rank + 3], "reduce_scatter premul")

root = n - 1
for dt in [torch.float32, torch.bool]:
    outs = [torch.empty((5, 3), dtype=dt) for _ in range(n)] if rank == root else None
    dist.gather(value(rank, dt), outs, dst=root)
    if rank == root:
        for r in range(n):
            eq(outs[r], value(r, dt), "gather %s from %d" % (dt, r))
    out = torch.empty((5, 3), dtype=dt)
    dist.scatter(out, [value(r, dt, salt=9) for r in range(n)] if rank == root else None, src=root)
    eq(out, value(rank, dt, salt=9), "scatter %s" % dt)

# ---- all-to-all: equal blocks, uneven splits, lists of different sizes ----------------------
x = torch.arange(4 * n, dtype=torch.float32) + 100 * rank
y = torch.empty_like(x)
dist.all_to_all_single(y, x)
eq(y, torch.cat([torch.arange(4 * rank, 4 * rank + 4, dtype=torch.float32) + 100 * r for r in range(n)]), "a2a single")


def split(src, dst):  # rows rank src sends to rank dst
    return (src + 2 * dst) % 3


rows_in = [split(rank, d) for d in range(n)]
rows_out = [split(s, rank) for s in range(n)]


def block(src, dst):
    return torch.full((split(src, dst), 2), float(10 * src + dst), dtype=torch.float64)


x = torch.cat([block(rank, d) for d in range(n)])
y = torch.empty((sum(rows_out), 2), dtype=torch.float64)
dist.all_to_all_single(y, x, rows_out, rows_in)
eq(y, torch.cat([block(s, rank) for s in range(n)]), "a2a uneven")
xb = torch.cat([block(rank, d) for d in range(n)]) > 15
yb = torch.empty((sum(rows_out), 2), dtype=torch.bool)
dist.all_to_all_single(yb, xb, rows_out, rows_in)
eq(yb, torch.cat([block(s, rank) for s in range(n)]) > 15, "a2a uneven bool")
ins = [block(rank, d) for d in range(n)]
outs = [torch.empty((split(s, rank), 2), dtype=torch.float64) for s in range(n)]
dist.all_to_all(outs, ins)
for s in range(n):
    eq(outs[s], block(s, rank), "all_to_all list from %d" % s)

# ---- point to point: tags, isend/irecv, batch_isend_irecv ring ------------------------------
nxt, prv = (rank + 1) % n, (rank - 1) % n
if rank % 2 == 0:
    dist.send(torch.full((3,), rank + 0.5), nxt, tag=7)
    dist.send(torch.full((2,), rank + 0.25), nxt, tag=8)
    a, b = torch.empty(3), torch.empty(2)
    dist.recv(a, prv, tag=7)
    dist.recv(b, prv, tag=8)
else:
    a, b = torch.empty(3), torch.empty(2)
    dist.recv(a, prv, tag=7)
    dist.recv(b, prv, tag=8)
    dist.send(torch.full((3,), rank + 0.5), nxt, tag=7)
    dist.send(torch.full((2,), rank + 0.25), nxt, tag=8)
if n % 2 == 0 or rank != 0:
    eq(a, torch.full((3,), prv + 0.5), "recv tag 7")
    eq(b, torch.full((2,), prv + 0.25), "recv tag 8")
big_send = torch.arange(300_000, dtype=torch.float32) + rank
big_recv = torch.empty(300_000)
ops = [dist.P2POp(dist.isend, big_send, nxt, tag=3), dist.P2POp(dist.irecv, big_recv, prv, tag=3)]
works = dist.batch_isend_irecv(ops)
for w in works:
    w.wait()
eq(big_recv, torch.arange(300_000, dtype=torch.float32) + prv, "batch_isend_irecv ring")
if n > 1:
    if rank == 0:
        w = dist.isend(torch.tensor([42, 43], dtype=torch.int64), 1)
        w.wait()
    elif rank == 1:
        t = torch.empty(2, dtype=torch.int64)
        dist.irecv(t, 0).wait()
        eq(t, torch.tensor([42, 43]), "isend/irecv")

# ---- barrier, subgroups, async futures ----------------------------------------------------
dist.barrier()
w = dist.barrier(async_op=True)
w.wait()
evens = [r for r in range(n) if r % 2 == 0]
odds = [r for r in range(n) if r % 2 == 1]
ge, go = dist.new_group(evens), dist.new_group(odds) if odds else None
mine = ge if rank % 2 == 0 else go
members = evens if rank % 2 == 0 else odds
t = torch.tensor([float(rank)])
dist.all_reduce(t, group=mine)
eq(t, torch.tensor([float(sum(members))]), "new_group all_reduce")
assert dist.get_backend(mine) == "oxccl"
t = value(rank, torch.float32)
dist.broadcast(t, members[-1], group=mine)
eq(t, value(members[-1], torch.float32), "new_group broadcast")

futs = []
tensors = [value(rank, torch.float32, (1000,), salt=i) for i in range(8)]
for t in tensors:
    futs.append(dist.all_reduce(t, async_op=True).get_future().then(lambda f: f.value()[0] * 2))
for i, f in enumerate(futs):
    eq(f.wait(), 2 * functools.reduce(torch.add, [value(r, torch.float32, (1000,), salt=i) for r in range(n)]), "future chain %d" % i)

# DTensor over a CPU device mesh of this group: sharding, gathering, a partial sum made whole.
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

mesh = init_device_mesh("cpu", (n,))
full = torch.arange(4 * n * 3, dtype=torch.float32).reshape(4 * n, 3)
d = distribute_tensor(full, mesh, [Shard(0)])
eq(d.to_local(), full[4 * rank : 4 * rank + 4], "DTensor shard")
eq(d.full_tensor(), full, "DTensor full_tensor (all-gather)")
p = DTensor.from_local(value(rank, torch.float32), mesh, [Partial()])
eq(p.redistribute(mesh, [Replicate()]).to_local(), fold(RT.SUM, torch.float32), "DTensor Partial -> Replicate")
eq(p.redistribute(mesh, [Shard(1)]).full_tensor(), fold(RT.SUM, torch.float32), "DTensor Partial -> Shard")

# Work.wait(timeout): a call still running when the timeout passes raises and stays valid; the
# store (not a sleep) makes rank 1 join only after rank 0 saw its wait time out.
from datetime import timedelta

store = dist.distributed_c10d._get_default_store()
if n > 1:
    t = torch.ones(4)
    if rank == 0:
        w = dist.all_reduce(t, async_op=True)
        try:
            w.wait(timedelta(milliseconds=200))
            raise AssertionError("wait(200 ms) returned before rank 1 joined")
        except dist.DistBackendError as e:
            assert "still running" in str(e), e
        store.set("oxccl_test/go", "1")
        assert w.wait(timedelta(seconds=30))
    else:
        if rank == 1:
            store.wait(["oxccl_test/go"], timedelta(seconds=30))
        w = dist.all_reduce(t, async_op=True)
        assert w.wait(timedelta(seconds=30))
    eq(t, torch.full((4,), float(n)), "all_reduce after a timed-out wait")

# Works dropped before they finish: the backend keeps their memory until done.
for _ in range(5):
    dist.all_reduce(torch.ones(10000), async_op=True)
dist.barrier()

# A bad argument is a clear error at the call, on this rank only.
try:
    dist.all_gather_into_tensor(torch.empty(3), torch.empty(2))
    raise AssertionError("bad sizes must fail")
except ValueError as e:
    assert "output must hold" in str(e), e

dist.barrier()
dist.destroy_process_group()
sys.stdout.write("rank %d: torch collectives ok\n" % rank)
