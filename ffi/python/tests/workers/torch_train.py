"""Training through the "oxccl" backend, by argv[1]:
ddp    DDP for 20 steps over oxccl and, from the same start, over gloo: the weights must agree to
       1e-5 (small buckets, so several all-reduces overlap the backward pass).
fsdp   FSDP2 (fully_shard) on a CPU device mesh trains an MLP: the loss must fall.
kill   the last rank SIGKILLs itself after 3 steps; every other rank's next step must raise
       DistBackendError naming it (quoted in a RuntimeError when DDP's reducer rethrows it), within the group's timeout (5 s).
idle   after a few steps and a barrier every rank is idle; the last rank SIGKILLs itself once the
       others say they are idle (files in IDLE_DIR); each other rank polls the backend's
       async_error() with no call in flight until it names the lost rank, and its next
       collective then raises at once.
argv[2] says how to initialise: env (the launcher's environment), tcp (init_method=tcp://...),
store (an explicit TCPStore, rank and world_size). Prints "<mode> ok" per surviving rank."""

import os
import signal
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

import oxccl.torch  # noqa: F401 - registers "oxccl"

mode = sys.argv[1]
how = sys.argv[2] if len(sys.argv) > 2 else "env"
rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
timeout = timedelta(seconds=5 if mode == "kill" else 60)
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
if how == "env":
    dist.init_process_group("oxccl", timeout=timeout)
elif how == "tcp":
    dist.init_process_group("oxccl", init_method="tcp://%s:%d" % (addr, port), rank=rank, world_size=n, timeout=timeout)
elif how == "store":
    store = dist.TCPStore(addr, port, n, rank == 0, timeout=timedelta(seconds=30))
    dist.init_process_group("oxccl", store=store, rank=rank, world_size=n, timeout=timeout)
else:
    raise SystemExit("unknown init %r" % how)
assert dist.get_rank() == rank and dist.get_world_size() == n
torch.set_num_threads(1)


def mlp(seed, d=16, h=32, layers=3):
    torch.manual_seed(seed)
    mods = []
    for i in range(layers):
        mods += [nn.Linear(d if i == 0 else h, h), nn.ReLU()]
    mods.append(nn.Linear(h, 4))
    return nn.Sequential(*mods)


def batch(step, d=16, b=8):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(b, d, generator=g)
    return x, torch.stack([x[:, :4].sum(1), x[:, 4:8].prod(1), x[:, 8].sin(), x[:, 9:].mean(1)], 1)


if mode == "ddp":
    from torch.nn.parallel import DistributedDataParallel as DDP

    gloo = dist.new_group(backend="gloo")
    models = {}
    for name, pg in (("oxccl", None), ("gloo", gloo)):
        m = DDP(mlp(seed=rank), process_group=pg, bucket_cap_mb=0.002)  # DDP broadcasts rank 0's weights
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        for step in range(20):
            x, y = batch(step)
            opt.zero_grad()
            loss = nn.functional.mse_loss(m(x), y)
            loss.backward()
            opt.step()
        models[name] = m.module
    worst = max(
        (a - b).abs().max().item()
        for a, b in zip(models["oxccl"].parameters(), models["gloo"].parameters())
    )
    assert worst <= 1e-5, "rank %d: oxccl and gloo weights differ by %g" % (rank, worst)
    # Every rank holds the same weights.
    flat = torch.cat([p.detach().reshape(-1) for p in models["oxccl"].parameters()])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    assert torch.equal(flat, ref), "rank %d: weights differ from rank 0's" % rank
    print("rank %d: max |oxccl - gloo| = %.3g; ddp ok" % (rank, worst), flush=True)
elif mode == "fsdp":
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (n,))
    model = mlp(seed=0, layers=4)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        x, y = batch(step % 4)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        t = loss.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        losses.append(t.item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, "rank %d: loss %.4f -> %.4f did not fall" % (rank, first, last)
    print("rank %d: loss %.4f -> %.4f; fsdp ok" % (rank, first, last), flush=True)
elif mode == "kill":
    from torch.nn.parallel import DistributedDataParallel as DDP

    m = DDP(mlp(seed=0))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    victim = n - 1
    t0 = None
    try:
        for step in range(1000):
            if step == 3:
                if rank == victim:
                    os.kill(os.getpid(), signal.SIGKILL)
                t0 = time.monotonic()
            x, y = batch(step)
            opt.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            opt.step()
        raise AssertionError("rank %d: training went on without rank %d" % (rank, victim))
    except RuntimeError as e:
        # DistBackendError where torch raises it directly (Work.wait); inside backward DDP's
        # reducer rethrows its future's error as a RuntimeError that quotes it.
        took = time.monotonic() - t0
        msg = str(e)
        assert isinstance(e, dist.DistBackendError) or "DistBackendError" in msg, repr(e)
        assert "rank %d" % victim in msg, "rank %d: the error does not name rank %d: %s" % (rank, victim, msg)
        assert took < 5 + 5, "rank %d: the error took %.1f s" % (rank, took)
        print("rank %d: DistBackendError after %.2f s: %s" % (rank, took, msg.splitlines()[0][:300]), flush=True)
    be = dist.group.WORLD._get_backend(torch.device("cpu"))
    t1 = time.monotonic()
    dist.group.WORLD.abort()  # the backend's abort: frees the communicator without waiting
    assert be.communicator._h is None, "rank %d: abort did not reach the backend" % rank
    assert time.monotonic() - t1 < 5, "rank %d: abort took %.1f s" % (rank, time.monotonic() - t1)
    print("rank %d: kill ok" % rank, flush=True)
    os._exit(0)  # the group is broken: no orderly shutdown to wait for
elif mode == "idle":
    t = torch.ones(8)
    for _ in range(3):
        dist.all_reduce(t)
    dist.barrier()
    be = dist.group.WORLD._get_backend(torch.device("cpu"))
    idle_dir, victim = os.environ["IDLE_DIR"], n - 1
    t0 = time.monotonic()
    if rank == victim:
        want = {"idle-%d" % r for r in range(victim)}
        while not want <= set(os.listdir(idle_dir)):
            assert time.monotonic() - t0 < 60, "the others never went idle"
            time.sleep(0.005)  # polling interval of a wait with a deadline
        os.kill(os.getpid(), signal.SIGKILL)
    open(os.path.join(idle_dir, "idle-%d" % rank), "w").close()
    while True:
        err = be.async_error()
        if err is not None:
            break
        assert time.monotonic() - t0 < 30, "rank %d: no async error within 30 s" % rank
        time.sleep(0.005)
    took = time.monotonic() - t0
    assert isinstance(err, dist.DistBackendError) and "rank %d" % victim in str(err), repr(err)
    t1 = time.monotonic()
    try:
        dist.all_reduce(t)
        raise AssertionError("rank %d: an all_reduce succeeded after the async error" % rank)
    except dist.DistBackendError as e:
        assert "rank %d" % victim in str(e), str(e)
    assert time.monotonic() - t1 < 1.0, "rank %d: the next call took %.1f s" % (rank, time.monotonic() - t1)
    print("rank %d: async error after %.0f ms idle; idle ok" % (rank, 1000 * took), flush=True)
    os._exit(0)
else:
    raise SystemExit("unknown mode %r" % mode)
dist.destroy_process_group()
