"""DDP on CPU over oxccl: the only change from gloo is the import and the backend's name.

    torchrun --standalone --nproc-per-node 2 ffi/python/examples/torch_ddp.py
    python -m oxccl.run -n 2 ffi/python/examples/torch_ddp.py --steps 50
"""

import argparse

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import oxccl.torch  # noqa: F401 - registers the "oxccl" backend (an installed package needs no import)

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=20)
args = p.parse_args()

dist.init_process_group("oxccl")  # was: dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = DDP(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
g = torch.Generator().manual_seed(rank)
for step in range(args.steps):
    x = torch.randn(16, 32, generator=g)
    y = x[:, :1] * 2 - x[:, 1:2]
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
avg = loss.detach().clone()
dist.all_reduce(avg, op=dist.ReduceOp.AVG)
print("rank %d of %d: trained with %s, %d steps, mean loss %.4f" % (rank, world, dist.get_backend(), args.steps, avg.item()))
dist.destroy_process_group()
