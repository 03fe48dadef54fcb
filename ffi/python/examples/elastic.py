"""Elastic data-parallel training in Python: a rank dies, the job shrinks, a replacement joins,
the job grows back to full size, and the final weights equal a run without failure.

    python examples/elastic.py            # needs numpy; 4 ranks, rank 2 dies at step 20

The twin of examples/elastic.rs (read its header for the whole story). This script is both the
driver (no argument) and a worker (``--worker``). The driver starts 4 workers (rank 0 serves the
rendezvous store), reads their output, starts a replacement when the survivors publish a join
id, tells rank 0 (a line on its stdin) once the replacement runs, and at the end compares rank
0's weights with single-process training. Data-parallel SGD on a linear model: at each step the
live ranks split a global batch of 48 samples (sample i to rank i mod live), sum their gradients
with one all-reduce and divide by 48, so the update does not depend on how many ranks are alive.
"""

import os
import secrets
import socket
import subprocess
import sys
import threading
import time

import numpy as np

import oxccl

DIM, BATCH, STEPS, KILL_AT, LR, RANKS = 16, 48, 60, 20, 0.05, 4
GROW_BY = KILL_AT + 10  # rank 0 waits for the replacement from this step on
TEACHER = np.sin(np.arange(DIM) * 0.37)


def batch(step):
    """The global batch of step ``step``: inputs (BATCH x DIM) and targets, deterministic."""
    rng = np.random.default_rng(1_000_003 + step)
    x = rng.uniform(-1.0, 1.0, size=(BATCH, DIM))
    return x, x @ TEACHER


def grad_sum(w, step, rank, live):
    x, y = batch(step)
    xs, ys = x[rank::live], y[rank::live]
    return (xs @ w - ys) @ xs


def reference():
    w = np.zeros(DIM)
    for s in range(STEPS):
        w -= LR * grad_sum(w, s, 0, 1) / BATCH
    return w


def share_state(comm, step, w):
    state = np.concatenate([[float(step)], w])
    comm.broadcast(state, root=0)
    return int(state[0]), state[1:].copy()


def train(comm, step, w, grow_now, killer):
    join_id = None
    while step < STEPS:
        if killer and step == KILL_AT:
            os.kill(os.getpid(), 9)  # dies here, as a crash would
        if join_id is not None and step >= GROW_BY:
            # Train on at reduced size for a while, but no longer: wait for the replacement.
            if not grow_now.wait(60):
                raise SystemExit("no replacement within 60 s")
        buf = np.append(grad_sum(w, step, comm.rank, comm.size), 1.0 if comm.rank == 0 and grow_now.is_set() else 0.0)
        try:
            comm.all_reduce(buf, op="sum")
        except oxccl.OxcclError as e:
            print("FAILED at step %d: %s" % (step, e), flush=True)
            old, comm = comm, comm.shrink()
            old.close()
            killer = False
            print("SHRUNK rank %d of %d at step %d" % (comm.rank, comm.size, step), flush=True)
            if comm.rank == 0:
                join_id = comm.grow_id()
                print("JOIN %s %d %d" % (join_id, comm.size, RANKS), flush=True)
            continue
        w = w - LR * buf[:DIM] / BATCH
        step += 1
        if buf[DIM] > 0:
            grow_now.clear()
            old, comm = comm, comm.grow(RANKS, join_id)
            old.close()
            join_id = None
            step, w = share_state(comm, step, w)
            print("GROWN rank %d of %d at step %d" % (comm.rank, comm.size, step), flush=True)
    if comm.rank == 0:
        print("FINAL " + " ".join(repr(float(v)) for v in w), flush=True)
    comm.close()


def worker():
    grow_now = threading.Event()

    def listen():
        for line in sys.stdin:
            if line.strip() == "READY":
                grow_now.set()

    threading.Thread(target=listen, daemon=True).start()
    join = os.environ.get("ELASTIC_JOIN")
    if join:
        uid, rank, size = join.split()
        print("STARTED", flush=True)
        comm = oxccl.Communicator.join(int(rank), int(size), uid)
        step, w = share_state(comm, 0, np.zeros(DIM))
        print("JOINED rank %d of %d at step %d" % (comm.rank, comm.size, step), flush=True)
        return train(comm, step, w, grow_now, False)
    comm = oxccl.init()
    train(comm, 0, np.zeros(DIM), grow_now, comm.rank == 2)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive():
    port, secret = free_port(), secrets.token_hex(16)
    procs, lines = [], []
    cond = threading.Condition()

    def start(env, who):
        e = dict(os.environ, **env)
        p = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            env=e,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

        def read():
            for line in p.stdout:
                with cond:
                    lines.append((who, line.rstrip("\n")))
                    cond.notify()

        threading.Thread(target=read, daemon=True).start()
        procs.append(p)

    for r in range(RANKS):
        start(
            {
                "OXCCL_RANK": str(r),
                "OXCCL_WORLD_SIZE": str(RANKS),
                "OXCCL_ROOT": "127.0.0.1:%d" % port,
                "OXCCL_SECRET": secret,
                "OXCCL_TIMEOUT_MS": os.environ.get("OXCCL_TIMEOUT_MS", "5000"),
            },
            r,
        )
    deadline = time.monotonic() + 120
    started = first = None
    rank0 = 0
    try:
        seen = 0
        while True:
            with cond:
                while seen == len(lines):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise SystemExit("elastic: the workers made no progress for 120 s")
                    cond.wait(left)
                who, line = lines[seen]
                seen += 1
            print("[worker %d] %s" % (who, line), flush=True)
            if line.startswith("JOIN "):
                rank0, started = who, time.monotonic()
                start({"ELASTIC_JOIN": line[len("JOIN "):]}, len(procs))
            elif line == "STARTED":
                procs[rank0].stdin.write("READY\n")
                procs[rank0].stdin.flush()
            elif line.startswith("JOINED") and started is not None:
                first = time.monotonic() - started
            elif line.startswith("FINAL "):
                w = np.array([float(v) for v in line.split()[1:]])
                diff = float(np.max(np.abs(w - reference())))
                print(
                    "final weights differ from single-process training by at most %.1e; "
                    "replacement start to its first collective: %.3f s" % (diff, first if first is not None else -1.0)
                )
                return 0 if diff <= 1e-9 and first is not None else 1
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        sys.exit(drive())
