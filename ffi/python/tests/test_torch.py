"""The torch.distributed backend "oxccl" across processes: every collective, DDP against gloo,
FSDP2, subgroups, a killed rank, and the ways to initialise (launcher env, torchrun, tcp://,
an explicit store). Skipped, saying why, where torch is not installed."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import PKG_PARENT, launch, worker

torch = pytest.importorskip("torch", reason="skipped: torch is not installed (pip install torch)")
if not torch.distributed.is_available():
    pytest.skip("skipped: this torch has no torch.distributed", allow_module_level=True)


def _env(extra=None):
    e = dict(os.environ)
    e["PYTHONPATH"] = PKG_PARENT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.setdefault("OXCCL_SOCKET_IFNAME", "lo")  # the unique id's store listens on loopback only
    e.setdefault("OMP_NUM_THREADS", "1")
    e.update(extra or {})
    return e


def run(n, script, *args, timeout=120):
    """``python -m oxccl.run`` with loopback-only ids; asserts every rank printed its ok line."""
    return launch(n, script, *args, timeout=timeout, env=_env())


def spawn(n, script, *args, timeout=60):
    """Starts n ranks by hand (torchrun's environment, no launcher to stop the others when one
    dies); every process is reaped, killed at the deadline. Returns (codes, outputs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    try:
        for r in range(n):
            env = _env({"RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(n),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
            procs.append(subprocess.Popen([sys.executable, script] + [str(a) for a in args], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        outs = []
        for p in procs:
            try:
                out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                out, _ = p.communicate()
                out += b"\n[killed at the test's deadline]"
            outs.append(out.decode(errors="replace"))
        return [p.returncode for p in procs], outs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.mark.parametrize("n", [2, 4])
def test_every_collective(n):
    code, out = run(n, worker("torch_collectives.py"), timeout=240)
    assert code == 0, out
    assert out.count("torch collectives ok") == n, out


def test_subgroup_split_from_the_parent():
    code, out = run(3, worker("torch_split.py"))
    assert code == 0, out
    assert out.count("split ok") == 3, out


def test_ddp_matches_gloo():
    code, out = run(2, worker("torch_train.py"), "ddp")
    assert code == 0, out
    assert out.count("ddp ok") == 2, out


def test_ddp_matches_gloo_4_ranks_tcp_init():
    codes, outs = spawn(4, worker("torch_train.py"), "ddp", "tcp", timeout=120)
    assert codes == [0] * 4, "\n".join(outs)
    assert all("ddp ok" in o for o in outs), "\n".join(outs)


def test_fsdp2_trains():
    codes, outs = spawn(2, worker("torch_train.py"), "fsdp", "store", timeout=120)
    assert codes == [0, 0], "\n".join(outs)
    assert all("fsdp ok" in o for o in outs), "\n".join(outs)


def test_killed_rank_fails_the_others_naming_it():
    codes, outs = spawn(3, worker("torch_train.py"), "kill", timeout=60)
    assert codes[2] == -signal.SIGKILL, "\n".join(outs)
    for r in (0, 1):
        assert codes[r] == 0 and "kill ok" in outs[r], "\n".join(outs)
        assert "DistBackendError" in outs[r] and "rank 2" in outs[r], outs[r]


def test_idle_ranks_see_a_killed_rank_through_async_error(tmp_path):
    os.environ["IDLE_DIR"] = str(tmp_path)
    try:
        codes, outs = spawn(3, worker("torch_train.py"), "idle", timeout=60)
    finally:
        del os.environ["IDLE_DIR"]
    assert codes[2] == -signal.SIGKILL, "\n".join(outs)
    for r in (0, 1):
        assert codes[r] == 0 and "idle ok" in outs[r], "\n".join(outs)


def test_torchrun_runs_the_example():
    pytest.importorskip("torch.distributed.run")
    ex = os.path.join(PKG_PARENT, "examples", "torch_ddp.py")
    p = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", ex, "--steps", "5"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        out, _ = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # torchrun's ranks too
        except ProcessLookupError:
            pass
    out = out.decode(errors="replace")
    assert p.returncode == 0, out
    assert out.count("trained with oxccl") == 2, out


def test_entry_point_registers_without_import():
    """torch finds "oxccl" through the package's entry point (when the package is installed),
    or through the import; both give the same creator."""
    code = (
        "import torch.distributed as dist\n"
        "from importlib.metadata import entry_points\n"
        "eps = [e for e in entry_points(group='torch.distributed.backends') if e.name == 'oxccl']\n"
        "if eps:\n"
        "    dist.Backend._ensure_backend_registered('oxccl')\n"
        "    assert 'OXCCL' in dist.Backend._plugins\n"
        "    print('entry point')\n"
        "else:\n"
        "    import oxccl.torch\n"
        "    assert 'OXCCL' in dist.Backend._plugins\n"
        "    print('import')\n"
        "dist.init_process_group('oxccl', store=dist.HashStore(), rank=0, world_size=1)\n"
        "import torch\n"
        "t = torch.ones(3)\n"
        "dist.all_reduce(t)\n"
        "assert t.tolist() == [1.0, 1.0, 1.0]\n"
        "dist.destroy_process_group()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    assert p.returncode == 0, p.stdout.decode(errors="replace")


def test_blocking_all_reduce_stored_calls_follow_the_tensor():
    code, out = run(2, worker("torch_stored.py"), timeout=120)
    assert code == 0, out
    assert out.count("stored ok") == 2, out
