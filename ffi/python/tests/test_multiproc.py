"""The bindings across processes: every collective, failures, and the launcher."""

import json
import os
import sys
import time

import pytest

from conftest import REPO, launch, worker


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_collective(n):
    code, out = launch(n, worker("collectives.py"), timeout=240)
    assert code == 0, out
    assert out.count("python collectives ok") == n, out


def test_lost_peer_raises_and_revokes():
    code, out = launch(2, worker("failures.py"), "lost", timeout=60)
    assert code == 0, out
    assert "lost ok" in out, out


def test_mismatch_raises_on_every_rank():
    code, out = launch(2, worker("failures.py"), "mismatch", timeout=60)
    # The launcher reports the first non-zero status: 10 (mismatch) or 11 (peer lost).
    assert code in (10, 11), out
    assert "mismatch:" in out, out


def test_split():
    code, out = launch(4, worker("failures.py"), "split", timeout=60)
    assert code == 0, out
    assert out.count("split ok") == 4, out


def test_shrink_after_a_rank_dies():
    code, out = launch(3, worker("failures.py"), "shrink", timeout=90)
    assert code == 0, out
    assert out.count("shrink ok") == 2, out


def test_async_error_reaches_idle_ranks(tmp_path):
    env = dict(os.environ, IDLE_DIR=str(tmp_path))
    code, out = launch(3, worker("failures.py"), "idle", timeout=60, env=env)
    assert code == 0, out
    assert out.count("idle ok") == 2, out


def test_launcher_sets_the_torchrun_environment():
    code, out = launch(3, worker("launcher.py"), "env", timeout=30)
    assert code == 0, out
    envs = [json.loads(line[4:]) for line in out.splitlines() if line.startswith("ENV ")]
    assert sorted(int(e["RANK"]) for e in envs) == [0, 1, 2]
    for e in envs:
        assert e["WORLD_SIZE"] == "3" and e["LOCAL_WORLD_SIZE"] == "3"
        assert e["RANK"] == e["LOCAL_RANK"] == e["OXCCL_RANK"] == e["OXCCL_LOCAL_RANK"]
        assert e["MASTER_ADDR"] == "127.0.0.1" and int(e["MASTER_PORT"]) > 0
        assert e["OXCCL_ROOT"].startswith("127.0.0.1:") and e["OXCCL_ROOT"] != "127.0.0.1:" + e["MASTER_PORT"]
        assert len(e["OXCCL_SECRET"]) == 32
    assert len({e["OXCCL_SECRET"] for e in envs}) == 1
    assert len({e["OXCCL_ROOT"] for e in envs}) == 1


def test_launcher_stops_everyone_when_a_rank_fails(tmp_path):
    pidfile = str(tmp_path / "pid")
    t = time.monotonic()
    code, out = launch(2, worker("launcher.py"), "fail", pidfile, timeout=60)
    took = time.monotonic() - t
    assert code == 3, out
    assert "rank 1 exited with code 3" in out, out
    assert took < 20, took
    pid = int(open(pidfile + ".0").read())
    # Reaped: the pid no longer exists (or was reused by something that is not our sleeper).
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            assert b"launcher.py" not in f.read()
    except FileNotFoundError:
        pass


def test_launcher_runs_a_c_program(tmp_path):
    """The C example from the README, through the Python launcher."""
    import subprocess

    import oxccl

    lib = os.path.dirname(oxccl.library_path())
    exe = str(tmp_path / "allreduce")
    subprocess.run(
        ["cc", os.path.join(REPO, "examples/c/allreduce.c"), "-I" + os.path.join(REPO, "ffi/include"),
         "-L" + lib, "-loxccl", "-Wl,-rpath," + lib, "-o", exe],
        check=True,
    )
    code, out = launch(2, exe, timeout=60)
    assert code == 0, out
    assert "rank 0 of 2: sum of ranks = 1 (expected 1)" in out, out
    assert "rank 1 of 2: sum of ranks = 1 (expected 1)" in out, out


def test_launcher_binds_ranks_when_they_outnumber_the_cpus():
    import ast

    from oxccl.run import placement

    cpus = sorted(os.sched_getaffinity(0))
    c = len(cpus)
    assert placement("auto", c, cpus) == [] and placement("none", 2 * c, cpus) == []
    assert placement("auto", 2 * c, cpus) == [cpus[r // 2] for r in range(2 * c)]
    assert placement("core", 1, cpus) == [cpus[0]]
    # More ranks than CPUs: each child runs on exactly the CPU the plan gives it.
    n = c + 1
    code, out = launch(n, worker("launcher.py"), "cpus", timeout=30)
    assert code == 0, out
    seen = {}
    for line in out.splitlines():
        if line.startswith("CPUS "):
            _, rank, allowed = line.split(" ", 2)
            seen[int(rank)] = ast.literal_eval(allowed)
    want = placement("auto", n, cpus)
    assert seen == {r: [want[r]] for r in range(n)}, out


def test_launcher_usage():
    import subprocess

    p = subprocess.run([sys.executable, "-m", "oxccl.run"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))), timeout=30)
    assert p.returncode == 2 and "-n" in p.stderr
