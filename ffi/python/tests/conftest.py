"""Shared helpers: the package from this checkout, the built library, and a launcher wrapper that
always reaps its process group."""

import os
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_PARENT = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(PKG_PARENT))
WORKERS = os.path.join(HERE, "workers")

if PKG_PARENT not in sys.path:
    sys.path.insert(0, PKG_PARENT)

import oxccl  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def library():
    try:
        return oxccl.library_path()
    except OSError as e:
        pytest.exit("%s\n(run `cargo build -p oxccl-ffi` first)" % e, returncode=2)


def launch(n, script, *args, timeout=60, env=None):
    """Runs ``python -m oxccl.run -n N script args`` (its own deadline, and ours a bit later),
    in a new session so that everything it started can be killed; returns (returncode, output)."""
    e = dict(os.environ if env is None else env)
    e["PYTHONPATH"] = PKG_PARENT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.setdefault("OXCCL_TIMEOUT_MS", "30000")
    cmd = [sys.executable, "-m", "oxccl.run", "-n", str(n), "--timeout", str(timeout), script]
    cmd += [str(a) for a in args]
    p = subprocess.Popen(
        cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        out, _ = p.communicate(timeout=timeout + 20)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail("launcher still running after %ss:\n%s" % (timeout + 20, out.decode(errors="replace")))
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # anything left in the session
        except ProcessLookupError:
            pass
    return p.returncode, out.decode(errors="replace")


def worker(name):
    return os.path.join(WORKERS, name)
