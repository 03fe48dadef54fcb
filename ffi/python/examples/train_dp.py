"""Data-parallel training of a two-layer MLP with numpy, gradients averaged by oxccl.

Every rank starts from rank 0's weights (broadcast), computes the mean-squared-error gradient on
its shard of a synthetic data set, and the ranks average their gradients (and the loss) with one
all-reduce per step, as DDP does. With equal shards that is full-batch gradient descent, so rank 0
checks its loss curve against single-process training and exits non-zero if they differ by more
than 1e-5.

    python -m oxccl.run -n 4 ffi/python/examples/train_dp.py [--steps 100]
"""

import argparse
import os
import sys

import numpy as np

import oxccl

D, H, N, LR = 8, 16, 240, 0.1  # features, hidden units, samples (divisible by 1..6 and 8), step size


def dataset():
    rng = np.random.default_rng(42)
    x = rng.uniform(-1, 1, size=(N, D))
    teacher = rng.uniform(-1, 1, size=D)
    y = np.sin(x @ teacher) + 0.5 * x[:, 0] * x[:, 1]
    return x, y


def init_params(seed):
    rng = np.random.default_rng(seed)
    return {
        "w1": 0.5 * rng.uniform(-1, 1, size=(H, D)),
        "b1": np.zeros(H),
        "w2": 0.5 * rng.uniform(-1, 1, size=H),
        "b2": np.zeros(1),
    }


NAMES = ["w1", "b1", "w2", "b2"]


def flat(p):
    return np.concatenate([p[k].ravel() for k in NAMES])


def unflat(v, like):
    out, i = {}, 0
    for k in NAMES:
        n = like[k].size
        out[k] = v[i:i + n].reshape(like[k].shape)
        i += n
    return out


def loss_and_grad(p, x, y):
    """Mean squared error over (x, y) and its gradient."""
    m = len(y)
    h = np.tanh(x @ p["w1"].T + p["b1"])
    out = h @ p["w2"] + p["b2"][0]
    err = out - y
    dout = 2.0 * err / m
    dz = np.outer(dout, p["w2"]) * (1 - h * h)
    g = {"w1": dz.T @ x, "b1": dz.sum(0), "w2": h.T @ dout, "b2": np.array([dout.sum()])}
    return float(err @ err / m), g


def train(comm, steps):
    rank, n = (comm.rank, comm.size) if comm is not None else (0, 1)
    assert N % n == 0, "%d samples do not split evenly over %d ranks" % (N, n)
    x, y = dataset()
    params = flat(init_params(7 + rank))
    if comm is not None:
        comm.broadcast(params, root=0)  # everyone starts from rank 0's weights
    like = init_params(0)
    lo, hi = rank * (N // n), (rank + 1) * (N // n)
    bucket = np.empty(params.size + 1)  # the gradient, then the loss: one all-reduce per step
    curve = []
    for _ in range(steps):
        loss, g = loss_and_grad(unflat(params, like), x[lo:hi], y[lo:hi])
        bucket[:-1] = flat(g)
        bucket[-1] = loss
        if comm is not None:
            comm.all_reduce(bucket, op="avg")
        curve.append(float(bucket[-1]))
        params -= LR * bucket[:-1]
    return curve


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    steps = ap.parse_args().steps
    launched = any(v in os.environ for v in ("OXCCL_RANK", "RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"))
    comm = oxccl.init() if launched else oxccl.Communicator(0, 1, oxccl.UniqueId.new())
    with comm:
        curve = train(comm, steps)
        rank, n = comm.rank, comm.size
    if rank != 0:
        return 0
    single = train(None, steps)
    for s in range(0, steps, max(1, steps // 10)):
        print("step %4d  loss %.6f  (single process %.6f)" % (s, curve[s], single[s]))
    diff = max(abs(a - b) for a, b in zip(curve, single))
    print("%d ranks, %d steps: loss %.6f -> %.6f; max difference from single-process training %.2e"
          % (n, steps, curve[0], curve[-1], diff))
    return 0 if diff <= 1e-5 and curve[-1] < 0.5 * curve[0] else 1


if __name__ == "__main__":
    sys.exit(main())
