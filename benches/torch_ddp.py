"""The torch backend measured side by side (a benchmark, not a test: this machine is shared and
noisy, so the figures are medians of interleaved rounds, and the ratios are what to read).

    python3 benches/torch_ddp.py                 # everything below, prints the tables
    python3 benches/torch_ddp.py ddp -n 4        # DDP step time only, 4 ranks
    python3 benches/torch_ddp.py percall         # per-call figures only

ddp      DDP step time (zero_grad, forward, backward, SGD step) of an 8.4M-parameter MLP
         (8 x Linear(1024,1024)+ReLU, Linear(1024,10)), batch 32, one torch thread per rank, with
         the "oxccl" and "gloo" backends in the same processes, same model and data: rounds of
         STEPS steps back to back alternate between the two; a round's time per step is the
         slowest rank's; the median round of each backend is reported, and the median ratio of
         each oxccl round to the gloo round after it. Rounds of the same steps through DDP
         with a no-op communication hook, and without DDP (no communication), give the floors;
         one all-reduce of all the gradient bytes per backend gives the communication's cost.
percall  an 8-byte float32 sum all-reduce on 2 ranks in a loop (20,000 iterations a round):
         through torch (dist.all_reduce on a 2-element tensor, "oxccl" backend), through the bare
         Python binding (comm.all_reduce on a numpy array, in place), through mpi4py
         (Comm.Allreduce, Open MPI, shared memory) when ../shared/peers has installed it, and the
         same torch call over gloo. All in the same 2 processes (launched by Open MPI's mpirun
         when available), round-robin, 5 rounds; the median of each is reported.

Ranks are started by ``python -m oxccl.run`` (the environment torchrun gives; ranks bound to CPUs
when they outnumber them) or, for percall with mpi4py, by mpirun. Needs torch, and
``cargo build --release -p oxccl-ffi`` (or OXCCL_LIBRARY) for figures worth reading.
"""

import argparse
import glob
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PKG = os.path.join(REPO, "ffi", "python")
PEERS = os.environ.get("PEERS_HOME", os.path.expanduser("~/.cache/oxccl-peers"))


# ---- rank side -------------------------------------------------------------------------------


def _rank_ddp(args):
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    import oxccl.torch  # noqa: F401

    torch.set_num_threads(1)
    dist.init_process_group("oxccl")
    rank, n = dist.get_rank(), dist.get_world_size()
    gloo = dist.new_group(backend="gloo")

    def model():
        torch.manual_seed(0)
        layers = []
        for _ in range(8):
            layers += [nn.Linear(1024, 1024), nn.ReLU()]
        layers.append(nn.Linear(1024, 10))
        return nn.Sequential(*layers)

    nparams = sum(p.numel() for p in model().parameters())
    runs = {}
    for name, pg in (("oxccl", None), ("gloo", gloo)):
        m = DDP(model(), process_group=pg)
        runs[name] = (m, torch.optim.SGD(m.parameters(), lr=1e-3))
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 1024, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    loss_fn = nn.CrossEntropyLoss()

    def step(m, opt):
        opt.zero_grad(set_to_none=False)
        loss_fn(m(x), y).backward()
        opt.step()

    # The floors: DDP whose communication hook does nothing (DDP's bucketing, copies and hooks,
    # no communication), and the same steps without DDP at all.
    def noop_hook(state, bucket):
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    m = DDP(model(), process_group=gloo)
    m.register_comm_hook(None, noop_hook)
    runs["ddp-noop"] = (m, torch.optim.SGD(m.parameters(), lr=1e-3))
    plain = model()
    runs["none"] = (plain, torch.optim.SGD(plain.parameters(), lr=1e-3))
    times = {k: [] for k in runs}
    cpu = {k: 0.0 for k in runs}
    for name, (m, opt) in runs.items():  # warm-up
        for _ in range(3):
            step(m, opt)
    for _ in range(args.rounds):
        for name, (m, opt) in runs.items():
            # A round: STEPS steps back to back (the all-reduces keep the ranks in step, as in
            # training); its time per step is the slowest rank's.
            dist.barrier()
            c = time.process_time()
            t = time.perf_counter()
            for _ in range(args.steps):
                step(m, opt)
            d = torch.tensor([(time.perf_counter() - t) / args.steps], dtype=torch.float64)
            cpu[name] += time.process_time() - c
            dist.all_reduce(d, op=dist.ReduceOp.MAX)
            times[name].append(d.item())
    # The communication alone: one all-reduce of all the gradient bytes (as DDP's buckets carry
    # them, here in one tensor), each backend, interleaved; the median.
    flat = torch.ones(nparams)
    ar = {"oxccl": [], "gloo": []}
    for _ in range(max(3, args.rounds // 3)):
        for name, pg in (("oxccl", None), ("gloo", gloo)):
            dist.barrier()
            t = time.perf_counter()
            dist.all_reduce(flat, group=pg)
            d = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
            dist.all_reduce(d, op=dist.ReduceOp.MAX)
            ar[name].append(d.item())
    # Both models saw the same data from the same start: the same weights (as a check).
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(runs["oxccl"][0].parameters(), runs["gloo"][0].parameters())
    )
    # CPU time (all of this process's threads) per step: what the step costs the machine,
    # which the load of other programs on a shared machine changes much less than wall time.
    names = list(runs)
    cpu_ms = torch.tensor([cpu[k] / (args.rounds * args.steps) * 1e3 for k in names], dtype=torch.float64)
    dist.all_reduce(cpu_ms, op=dist.ReduceOp.AVG)
    if rank == 0:
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        # Each oxccl round next to the gloo round right after it: the load of other programs
        # changes slowly, so the median of these paired ratios is the steadiest figure.
        pairs = sorted(a / b for a, b in zip(times["oxccl"], times["gloo"]))
        # (the floor's rounds run after gloo's, so "none" does not sit between a pair)
        print(
            "DDP %d ranks, %.2fM params, batch %d, %d rounds of %d steps per backend: median step "
            "oxccl %.1f ms, gloo %.1f ms; paired ratio oxccl/gloo median %.2f (quartiles %.2f-%.2f)"
            "; CPU per step and rank oxccl %.1f ms, gloo %.1f ms; without DDP (no communication) "
            "%.1f ms, CPU %.1f ms  (max |w_oxccl - w_gloo| = %.2g)"
            % (n, nparams / 1e6, args.batch, args.rounds, args.steps, med["oxccl"], med["gloo"],
               statistics.median(pairs), pairs[len(pairs) // 4], pairs[(3 * len(pairs)) // 4],
               cpu_ms[names.index("oxccl")].item(), cpu_ms[names.index("gloo")].item(),
               med["none"], cpu_ms[names.index("none")].item(), diff),
            flush=True,
        )
        g = med["gloo"]
        print(
            "  floors: DDP with a no-op comm hook %.1f ms (%.2fx gloo; CPU %.1f ms), no DDP %.1f ms (%.2fx gloo); "
            "oxccl %.2fx gloo. All-reduce of the %.1f MB of gradients alone: oxccl %.1f ms, gloo "
            "%.1f ms; no-op floor + oxccl's all-reduce = %.1f ms (%.2fx gloo)"
            % (med["ddp-noop"], med["ddp-noop"] / g, cpu_ms[names.index("ddp-noop")].item(), med["none"], med["none"] / g, med["oxccl"] / g,
               nparams * 4 / 1e6, statistics.median(ar["oxccl"]) * 1e3, statistics.median(ar["gloo"]) * 1e3,
               med["ddp-noop"] + statistics.median(ar["oxccl"]) * 1e3,
               (med["ddp-noop"] + statistics.median(ar["oxccl"]) * 1e3) / g),
            flush=True,
        )
    dist.destroy_process_group()


def _rank_percall(args):
    import numpy as np
    import torch
    import torch.distributed as dist

    import oxccl
    import oxccl.torch  # noqa: F401

    mpi = None
    if "OMPI_COMM_WORLD_RANK" in os.environ:
        for sp in glob.glob(os.path.join(PEERS, "ompi", "lib", "python3*", "site-packages")):
            sys.path.append(sp)  # after ours: this interpreter's numpy and torch come first
        from mpi4py import MPI

        mpi = MPI.COMM_WORLD
        rank, n = mpi.Get_rank(), mpi.Get_size()
        port = mpi.bcast(_free_port() if rank == 0 else None, root=0)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(n))
    dist.init_process_group("oxccl")
    rank = dist.get_rank()
    gloo = dist.new_group(backend="gloo")
    comm = dist.group.WORLD._get_backend(torch.device("cpu")).communicator
    a = np.ones(2, dtype=np.float32)
    t = torch.ones(2)
    tg = torch.ones(2)
    cases = [
        ("bare binding: comm.all_reduce(numpy, in place)", lambda: comm.all_reduce(a)),
        ("torch: dist.all_reduce(2 x f32), oxccl backend", lambda: dist.all_reduce(t)),
    ]
    if mpi is not None:
        from mpi4py import MPI

        s, r = np.ones(2, dtype=np.float32), np.empty(2, dtype=np.float32)
        cases.append(("mpi4py: Comm.Allreduce(s, r) (Open MPI)", lambda: mpi.Allreduce(s, r, op=MPI.SUM)))
        cases.append(("mpi4py: Comm.Allreduce(IN_PLACE, r)", lambda: mpi.Allreduce(MPI.IN_PLACE, r, op=MPI.SUM)))
    gloo_iters = max(args.iters // 20, 100)  # gloo takes tens of microseconds or more
    cases.append(("torch: dist.all_reduce(2 x f32), gloo backend", lambda: dist.all_reduce(tg, group=gloo)))
    res = {name: [] for name, _ in cases}
    for name, f in cases:
        for _ in range(200):
            f()
    for _ in range(args.rounds):
        for name, f in cases:
            iters = gloo_iters if "gloo" in name else args.iters
            comm.barrier()
            t0 = time.perf_counter()
            for _ in range(iters):
                f()
            res[name].append((time.perf_counter() - t0) / iters * 1e6)
    if rank == 0:
        print("per call, 8-byte float32 sum all-reduce, 2 ranks, %d rounds of %d calls (gloo %d):"
              % (args.rounds, args.iters, gloo_iters))
        for name, v in res.items():
            print("  %-50s median %7.2f us  min %7.2f us  (rounds %s)"
                  % (name, statistics.median(v), min(v), " ".join("%.2f" % x for x in v)))
        # Other programs' load only ever adds time: the fastest round is the steadiest figure on a
        # shared machine, the median the fairer one on a quiet machine. Both, for each ratio.
        for what, f in (("median", statistics.median), ("min", min)):
            m = {k: f(v) for k, v in res.items()}
            bare = m[cases[0][0]]
            line = "  by %s: torch(oxccl) - bare = %.2f us" % (what, m[cases[1][0]] - bare)
            if mpi is not None:
                line += "; bare / mpi4py out-of-place = %.2f, / in place = %.2f" % (
                    bare / m["mpi4py: Comm.Allreduce(s, r) (Open MPI)"], bare / m["mpi4py: Comm.Allreduce(IN_PLACE, r)"])
            print(line)
        sys.stdout.flush()
    dist.destroy_process_group()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- driver ------------------------------------------------------------------------------


def _env():
    e = dict(os.environ)
    release = os.path.join(REPO, "target", "release", "liboxccl.so")
    if not e.get("OXCCL_LIBRARY") and os.path.isfile(release):
        e["OXCCL_LIBRARY"] = release  # not a newer debug build that happens to lie around
    e["PYTHONPATH"] = PKG + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.setdefault("OXCCL_SOCKET_IFNAME", "lo")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


_C_LOOP = r"""
#include <stdio.h>
#include <time.h>
#include "oxccl.h"
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(void) {
  oxcclComm_t comm;
  if (oxcclCommInitFromEnv(&comm) != oxcclSuccess) { fprintf(stderr, "%s\n", oxcclGetLastError(NULL)); return 1; }
  int rank; oxcclCommUserRank(comm, &rank);
  float a[2] = {1, 1};
  double best = 1e9, all[ROUNDS];
  for (int r = 0; r < ROUNDS; r++) {
    oxcclBarrier(comm);
    double t = now();
    for (int i = 0; i < ITERS; i++) oxcclAllReduce(a, a, 2, oxcclFloat32, oxcclSum, comm);
    all[r] = (now() - t) / ITERS * 1e6;
    if (all[r] < best) best = all[r];
  }
  for (int i = 1; i < ROUNDS; i++) for (int j = i; j > 0 && all[j] < all[j - 1]; j--) { double x = all[j]; all[j] = all[j - 1]; all[j - 1] = x; }
  if (rank == 0) printf("  %-50s median %7.2f us  min %7.2f us\n", "the C call alone: oxcclAllReduce in a C loop", all[ROUNDS / 2], best);
  oxcclCommDestroy(comm);
  return 0;
}
"""


def _c_loop(args):
    """The same 8-byte all-reduce from C, for the binding's share of the per-call time."""
    import shutil
    import tempfile

    import oxccl

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("  (no C compiler: no C figure)")
        return
    lib = os.path.dirname(oxccl.library_path())
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "loop.c"), os.path.join(d, "loop")
        with open(src, "w") as f:
            f.write(_C_LOOP)
        subprocess.run([cc, "-O2", "-DROUNDS=%d" % args.rounds, "-DITERS=%d" % args.iters, src,
                        "-I" + os.path.join(REPO, "ffi", "include"), "-L" + lib, "-loxccl",
                        "-Wl,-rpath," + lib, "-o", exe], check=True)
        cmd = [sys.executable, "-m", "oxccl.run", "-n", "2", "--timeout", "600", exe]
        p = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        print(p.stdout.decode(errors="replace").rstrip(), flush=True)


def _launch(n, argv, use_mpi=False):
    mpirun = os.path.join(PEERS, "ompi", "bin", "mpirun")
    if use_mpi and os.path.exists(mpirun):
        cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(n), "-x", "PYTHONPATH",
               "-x", "OXCCL_SOCKET_IFNAME", "-x", "OMP_NUM_THREADS", sys.executable, __file__] + argv
    else:
        if use_mpi:
            print("(mpi4py not installed: run ../shared/peers/install.sh for the mpi4py figure)")
        cmd = [sys.executable, "-m", "oxccl.run", "-n", str(n), "--timeout", "1200", __file__] + argv
    p = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1500)
    out = p.stdout.decode(errors="replace")
    lines = [ln for ln in out.splitlines() if "Warning" not in ln and "warn(" not in ln]
    print("\n".join(lines), flush=True)
    if p.returncode:
        raise SystemExit("%s failed (%d)" % (" ".join(cmd), p.returncode))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="all", choices=["all", "ddp", "percall", "_rank_ddp", "_rank_percall"])
    ap.add_argument("-n", type=int, default=0, help="ranks for ddp (default: 2 and 4)")
    ap.add_argument("--steps", type=int, default=3, help="ddp steps per round and backend")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=20000, help="percall iterations per round")
    args = ap.parse_args()
    if args.what == "_rank_ddp":
        return _rank_ddp(args)
    if args.what == "_rank_percall":
        return _rank_percall(args)
    import oxccl

    os.environ.update(_env())
    print("library: %s" % oxccl.library_path())
    rest = ["--steps", str(args.steps), "--rounds", str(args.rounds), "--batch", str(args.batch), "--iters", str(args.iters)]
    if args.what in ("all", "percall"):
        _launch(2, ["_rank_percall"] + rest, use_mpi=True)
        _c_loop(args)
    if args.what in ("all", "ddp"):
        for n in [args.n] if args.n else [2, 4]:
            _launch(n, ["_rank_ddp"] + rest)


if __name__ == "__main__":
    sys.path.insert(0, PKG)
    main()
