"""The blocking all-reduce's stored calls (oxcclStart) follow the tensor: new storage (set_),
a new size (resize_), a new type (.data =), another op; they are freed with the group. Run under
``python -m oxccl.run -n 2``; prints "stored ok" per rank."""

import torch
import torch.distributed as dist

import oxccl.torch  # noqa: F401

dist.init_process_group("oxccl")
rank, n = dist.get_rank(), dist.get_world_size()
be = dist.group.WORLD._get_backend(torch.device("cpu"))
t = torch.ones(4)
for i in range(3):
    dist.all_reduce(t)
    assert t.tolist() == [float(n ** (i + 1))] * 4, t
assert len(be._tpers) == 1
t.set_(torch.full((4,), float(rank + 1)))  # same tensor object, other memory
dist.all_reduce(t)
assert t.tolist() == [float(sum(range(1, n + 1)))] * 4, t
t.resize_(6).fill_(1.0)
dist.all_reduce(t)
assert t.tolist() == [float(n)] * 6, t
t.data = torch.full((3,), float(rank), dtype=torch.float64)
dist.all_reduce(t, op=dist.ReduceOp.MAX)
assert t.dtype == torch.float64 and t.tolist() == [float(n - 1)] * 3, t
dist.all_reduce(t, op=dist.ReduceOp.SUM)
assert t.tolist() == [float(n * (n - 1))] * 3, t
u = torch.ones(2)
dist.all_reduce(u)
assert len(be._tpers) == 2
del u
assert len(be._tpers) == 1  # freed with the tensor
dist.destroy_process_group()
assert not be._tpers
print("rank %d: stored ok" % rank, flush=True)
