"""Subgroups split from the parent communicator: with a bound device torch asks the backend to
split (members) or to take no part (the others) instead of making a new communicator. Run under
``python -m oxccl.run -n 3``; prints "split ok" per rank."""

import sys

import torch
import torch.distributed as dist

import oxccl.torch

calls = []
_split, _nocolor = oxccl.torch.OxcclBackend.split, oxccl.torch.OxcclBackend.perform_nocolor_split
oxccl.torch.OxcclBackend.split = lambda self, *a, **k: calls.append("split") or _split(self, *a, **k)
oxccl.torch.OxcclBackend.perform_nocolor_split = lambda self, *a: calls.append("nocolor") or _nocolor(self, *a)

dist.init_process_group("oxccl", device_id=torch.device("cpu", 0))
rank, n = dist.get_rank(), dist.get_world_size()
members = [0, n - 1]
g = dist.new_group(members)
if rank in members:
    assert calls == ["split"], calls
    assert g.size() == 2 and dist.get_group_rank(g, rank) == members.index(rank)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t, group=g)
    assert t.item() == sum(r + 1 for r in members), t
    x = torch.full((3,), float(rank))
    dist.broadcast(x, members[-1], group=g)
    assert x.tolist() == [float(members[-1])] * 3, x
else:
    assert calls == ["nocolor"], calls
t = torch.ones(1)
dist.all_reduce(t)  # the parent still works
assert t.item() == n
dist.destroy_process_group()
sys.stdout.write("rank %d: split ok\n" % rank)
