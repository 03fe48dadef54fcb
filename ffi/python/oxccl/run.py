"""A local launcher: ``python -m oxccl.run -n 4 script.py [args...]``.

Starts N processes on this machine with the environment torchrun gives (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) plus oxccl's own (OXCCL_RANK,
OXCCL_WORLD_SIZE, OXCCL_LOCAL_RANK, OXCCL_ROOT: a free loopback port for rank 0's rendezvous
store, and a fresh random OXCCL_SECRET), so ``oxccl.init()`` (or ``oxcclCommInitFromEnv`` in C)
just works. A script ending in ``.py`` runs under this Python; anything else is executed as is
(a C program, say). If a rank fails, the others are stopped and every child is reaped; the exit
status is the first failing rank's.

With more ranks than CPUs (``--bind auto``, the default) each rank is bound to one CPU,
consecutive ranks sharing one, as ``oxccl-perf -N`` does: left alone, the scheduler often crowds
three of four ranks onto one of two CPUs, which about doubles a small all-reduce.
"""

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

GRACE_S = 3.0


def free_port():
    """A port that was free on 127.0.0.1 a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(base, rank, n, root_port, master_port, secret):
    env = dict(base)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + path if path else "")
    env.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(n),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(n),
            "GROUP_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master_port),
            "OXCCL_RANK": str(rank),
            "OXCCL_WORLD_SIZE": str(n),
            "OXCCL_LOCAL_RANK": str(rank),
            "OXCCL_ROOT": "127.0.0.1:%d" % root_port,
            "OXCCL_SECRET": secret,
        }
    )
    env.pop("OXCCL_ROOT_EXTERNAL", None)  # rank 0 serves the store
    return env


def command(script, args):
    if script.endswith(".py"):
        return [sys.executable, "-u", script] + list(args)
    if os.sep not in script and os.path.exists(script):
        script = os.path.join(os.curdir, script)
    return [script] + list(args)


def stop(procs, grace=GRACE_S):
    """SIGTERM to the children still running, SIGKILL after ``grace`` seconds; reaps them all."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        left = deadline - time.monotonic()
        try:
            p.wait(timeout=max(left, 0.01))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def placement(bind, n, cpus=None):
    """The CPU each of ``n`` ranks is bound to under ``bind`` (auto, core or none): with n ranks
    on c CPUs, rank r on the (r*c//n)-th; an empty list when none is."""
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else sorted(cpus)
    if bind == "none" or not cpus or (bind == "auto" and n <= len(cpus)):
        return []
    return [cpus[r * len(cpus) // n] for r in range(n)]


def describe(code):
    if code < 0:
        try:
            return "killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "killed by signal %d" % -code
    return "exited with code %d" % code


def launch(n, script, args, timeout=None, env=None, out=sys.stderr, bind="auto"):
    """Runs ``n`` ranks of ``script args`` and returns the exit status (0 when all succeed)."""
    base = dict(os.environ if env is None else env)
    secret = secrets.token_hex(16)
    root_port, master_port = free_port(), free_port()
    while master_port == root_port:
        master_port = free_port()
    cmd = command(script, args)
    procs = []
    status = 0

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        cpus = placement(bind, n)
        for r in range(n):
            procs.append(subprocess.Popen(cmd, env=rank_env(base, r, n, root_port, master_port, secret)))
            if cpus:
                try:
                    # Right after the start: the threads the rank starts later inherit it.
                    os.sched_setaffinity(procs[-1].pid, {cpus[r]})
                except OSError as e:
                    print("oxccl.run: could not bind rank %d to CPU %d: %s" % (r, cpus[r], e), file=out)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                r, c = failed[0]
                print("oxccl.run: rank %d %s; stopping the other ranks" % (r, describe(c)), file=out)
                status = c if c > 0 else 128 - c
                break
            if all(c == 0 for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                print("oxccl.run: ranks still running after %gs; stopping them" % timeout, file=out)
                status = 124
                break
            time.sleep(0.02)
    except KeyboardInterrupt as e:
        signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
        print("oxccl.run: %s; stopping the ranks" % signal.Signals(signum).name, file=out)
        status = 128 + int(signum)
    finally:
        stop(procs)
        for s, h in old.items():
            signal.signal(s, h)
    return status


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m oxccl.run",
        description="Run N ranks of a program on this machine, environment set as torchrun sets it.",
    )
    ap.add_argument("-n", "--nproc", "--nproc-per-node", dest="n", type=int, required=True,
                    help="number of ranks")
    ap.add_argument("--timeout", type=float, default=None,
                    help="stop every rank after this many seconds (exit status 124)")
    ap.add_argument("--bind", choices=["auto", "core", "none"], default="auto",
                    help="bind each rank to one CPU, consecutive ranks sharing one (core), or not "
                         "(none); auto: core when there are more ranks than CPUs")
    ap.add_argument("script", help="a .py file (run with this Python) or an executable")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error("-n must be at least 1")
    return launch(a.n, a.script, a.args, timeout=a.timeout, bind=a.bind)


if __name__ == "__main__":
    sys.exit(main())
