"""One process: ids, buffers and dtypes on a 1-rank communicator, threads as ranks, error paths,
and the constants the bindings share with the header."""

import array
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import oxccl
from oxccl import _buffers, _lib
from conftest import PKG_PARENT, REPO

ALL = ["int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64"]


@pytest.fixture(scope="module")
def comm():
    c = oxccl.Communicator(0, 1, oxccl.UniqueId.new(), timeout=20)
    yield c
    c.close()


def test_header_constants_match_the_bindings():
    h = open(os.path.join(REPO, "ffi/include/oxccl.h")).read()

    def define(name):
        return int(re.search(r"#define %s (\d+)" % name, h).group(1))

    assert define("OXCCL_VERSION_CODE") == oxccl.version()
    assert define("OXCCL_CONFIG_MAGIC") == _lib.CONFIG_MAGIC
    assert define("OXCCL_CONFIG_VERSION") == _lib.CONFIG_VERSION
    assert define("OXCCL_UNIQUE_ID_BYTES") == _lib.UNIQUE_ID_BYTES
    assert define("OXCCL_UNIQUE_ID_STRLEN") == _lib.UNIQUE_ID_STRLEN
    for name, (code, _) in _buffers.DTYPES.items():
        cname = {"float16": "Float16", "bfloat16": "Bfloat16"}.get(name, name.capitalize())
        assert re.search(r"oxccl%s = %d," % (cname, code), h), name
    body = re.search(r"typedef struct \{([^}]*)\} oxcclConfig_t;", h).group(1)
    fields = re.findall(r"(\w+);", re.sub(r"/\*.*?\*/", "", body, flags=re.S))
    assert fields == [f for f, _ in _lib.ConfigStruct._fields_]


def test_unique_id_round_trips():
    uid = oxccl.UniqueId.new()
    s = str(uid)
    assert re.fullmatch(r".+:\d+#[0-9a-f]{32}", s), s
    assert oxccl.UniqueId.parse(s) == uid
    assert oxccl.UniqueId(bytes(uid)) == uid and len(bytes(uid)) == 128
    assert "#" not in repr(uid)
    with pytest.raises(oxccl.InvalidArgumentError) as e:
        oxccl.UniqueId.parse("nonsense")
    assert isinstance(e.value, ValueError) and "unique id" in e.value.message


@pytest.mark.parametrize("dt", ALL)
def test_numpy_every_dtype_in_and_out_of_place(comm, dt):
    a = (np.arange(100) % 7).astype(dt)
    orig = a.copy()
    assert comm.all_reduce(a) is a  # one rank: the identity
    assert np.array_equal(a, orig)
    out = np.zeros_like(a)
    comm.all_reduce(a, op="max", out=out)
    assert np.array_equal(out, orig)
    comm.all_reduce(a, op="avg")
    assert np.array_equal(a, orig)


def test_topology_of_one_rank(comm):
    t = comm.topology
    assert (t["host"], t["nhosts"], t["local_rank"], t["local_size"]) == (0, 1, 0, 1)
    assert t["rail"] >= 0


def test_bfloat16(comm):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = np.arange(10).astype(ml_dtypes.bfloat16)
    comm.all_reduce(a)
    assert a.astype(np.float32).tolist() == list(range(10))


def test_torch_cpu_tensor(comm):
    torch = pytest.importorskip("torch")
    t = torch.arange(10, dtype=torch.float32)
    comm.all_reduce(t)
    assert t.tolist() == list(range(10))


def test_buffer_protocol_objects_without_copying(comm):
    b = bytearray(b"\x01\x02\x03")
    comm.all_reduce(b)
    assert b == bytearray(b"\x01\x02\x03")
    arr = array.array("f", [1.5, 2.5])
    comm.all_reduce(arr, op="sum")
    assert list(arr) == [1.5, 2.5]
    big = np.arange(20, dtype=np.int32)
    view = memoryview(big)[5:10]
    comm.all_reduce(view)
    assert big[5] == 5
    raw = bytearray(np.arange(4, dtype=np.float64).tobytes())
    comm.all_reduce(raw, dtype="double")
    assert np.frombuffer(raw).tolist() == [0, 1, 2, 3]
    # The collective really works on the object's memory: a Buf points at it.
    buf = _buffers.get(big, True)
    assert buf.ptr == big.ctypes.data and buf.nbytes == big.nbytes and buf.dtype == "int32"
    buf.release()


def test_bad_buffers_and_arguments(comm):
    with pytest.raises(oxccl.InvalidArgumentError, match="read-only"):
        comm.all_reduce(b"\x01\x02")  # bytes are immutable
    ro = np.zeros(4, dtype=np.float32)
    ro.flags.writeable = False
    with pytest.raises(oxccl.InvalidArgumentError, match="read-only"):
        comm.all_reduce(ro)
    with pytest.raises(oxccl.InvalidArgumentError, match="C-contiguous"):
        comm.all_reduce(np.zeros((4, 4), dtype=np.float32)[:, 0])
    with pytest.raises(oxccl.InvalidArgumentError, match="unsupported element type"):
        comm.all_reduce(np.zeros(4, dtype=np.int16))
    with pytest.raises(oxccl.InvalidArgumentError, match="unknown op"):
        comm.all_reduce(np.zeros(4, dtype=np.float32), op="median")
    with pytest.raises(oxccl.InvalidArgumentError, match="differ in size"):
        comm.all_reduce(np.zeros(4, dtype=np.float32), out=np.zeros(5, dtype=np.float32))
    with pytest.raises(oxccl.InvalidArgumentError, match="different element types"):
        comm.all_reduce(np.zeros(4, dtype=np.float32), out=np.zeros(4, dtype=np.int32))
    with pytest.raises(oxccl.InvalidArgumentError, match="not a buffer"):
        comm.all_reduce([1, 2, 3])
    with pytest.raises(oxccl.InvalidArgumentError, match="whole number"):
        comm.all_reduce(bytearray(3), dtype="float32")
    with pytest.raises(oxccl.InvalidArgumentError, match="root"):
        comm.broadcast(np.zeros(2), root=5)
    with pytest.raises(oxccl.InvalidArgumentError, match="nranks"):
        comm.all_gather(np.zeros(2), np.zeros(3))
    with pytest.raises(oxccl.InvalidArgumentError, match="one per rank"):
        comm.all_gatherv(np.zeros(2), np.zeros(2), [1, 1])
    assert comm.async_error() is None


def test_settings_are_checked():
    with pytest.raises(oxccl.InvalidArgumentError, match="timeout"):
        oxccl.Communicator(0, 1, oxccl.UniqueId.new(), timeout=-1)
    with pytest.raises(oxccl.InvalidArgumentError, match="pigeon"):
        oxccl.Communicator(0, 1, oxccl.UniqueId.new(), transport="pigeon")
    with pytest.raises(oxccl.InvalidArgumentError, match="rank 3 of 2"):
        oxccl.Communicator(3, 2, oxccl.UniqueId.new())
    with pytest.raises(TypeError, match="unknown settings"):
        oxccl.Communicator(0, 1, oxccl.UniqueId.new(), speed="fast")


def test_closed_communicator():
    c = oxccl.Communicator(0, 1, str(oxccl.UniqueId.new()), nsocks=1, chunk_bytes=4096)
    assert (c.rank, c.size) == (0, 1)
    with c:
        c.barrier()
    c.close()  # idempotent
    with pytest.raises(oxccl.InvalidUsageError, match="closed"):
        c.barrier()
    assert "closed" in repr(c)


def test_init_without_a_launcher_says_what_to_set():
    code = "import oxccl\ntry:\n    oxccl.init()\nexcept oxccl.InvalidUsageError as e:\n    print('ERR', e.message)\n"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OXCCL_", "SLURM_", "OMPI_", "PMI_")) and k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = PKG_PARENT
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "ERR" in p.stdout and "OXCCL_RANK" in p.stdout, p.stdout + p.stderr


def test_threads_as_ranks_release_the_gil():
    """Three threads, three communicators: a collective only finishes if the others' run at the
    same time, i.e. if the GIL is released during the foreign call."""
    n = 3
    uid = oxccl.UniqueId.new()
    results, errors = [None] * n, []

    def rank(r):
        try:
            with oxccl.Communicator(r, n, uid, timeout=30) as c:
                a = np.full(200000, r, dtype=np.float32)
                c.all_reduce(a)
                reqs = [c.all_reduce(np.full(10, r, dtype=np.int64), async_op=True) for _ in range(3)]
                outs = [q.wait() for q in reqs]
                results[r] = (float(a[0]), [int(o[0]) for o in outs])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(90)
    assert not any(t.is_alive() for t in ts), "ranks hung"
    assert not errors, errors
    assert all(res == (3.0, [3, 3, 3]) for res in results), results


def test_library_search_honours_oxccl_library(tmp_path):
    code = "import oxccl\ntry:\n    oxccl.library_path()\nexcept OSError as e:\n    print('ERR', e)\n"
    env = dict(os.environ, PYTHONPATH=PKG_PARENT, OXCCL_LIBRARY=str(tmp_path / "missing.so"))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "ERR OXCCL_LIBRARY=" in p.stdout, p.stdout + p.stderr
    env["OXCCL_LIBRARY"] = oxccl.library_path()
    p = subprocess.run([sys.executable, "-c", "import oxccl; print(oxccl.library_path())"],
                       env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert p.stdout.strip() == oxccl.library_path(), p.stderr


def test_abort_from_another_thread_interrupts_a_blocked_call():
    uid = oxccl.UniqueId.new()
    comms = [None, None]

    def make(r):
        comms[r] = oxccl.Communicator(r, 2, uid, timeout=60)

    ts = [threading.Thread(target=make, args=(r,)) for r in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    c0, c1 = comms
    outcome = {}

    def blocked():
        t0 = time.monotonic()
        try:
            c0.all_reduce(np.ones(8, dtype=np.float32))  # rank 1 never joins
            outcome["result"] = "returned"
        except oxccl.OxcclError as e:
            outcome["result"] = e
        outcome["took"] = time.monotonic() - t0

    t = threading.Thread(target=blocked, daemon=True)
    t.start()
    time.sleep(0.5)
    c0.abort()
    t.join(20)
    assert not t.is_alive(), "abort did not interrupt the blocked call"
    assert isinstance(outcome["result"], oxccl.OxcclError), outcome
    assert outcome["took"] < 10, outcome
    with pytest.raises(oxccl.InvalidUsageError, match="closed"):
        c0.barrier()
    c1.close()


def test_fast_path_follows_arrays_that_move_or_die(comm):
    """The fast path caches a numpy array's address by id, with a weak reference: numpy then
    refuses to resize() the array in place (its memory cannot move under the cache), and new
    arrays that reuse a dead one's id are written where they are."""
    out = np.zeros(4, dtype=np.float32)
    comm.all_reduce(np.arange(4, dtype=np.float32), out=out)
    assert out.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        out.resize(100_000, refcheck=False)
    out = np.resize(out, 100_000)  # a new array
    src = np.arange(100_000, dtype=np.float32)
    comm.all_reduce(src, out=out)
    assert np.array_equal(out, src)
    for i in range(200):  # ids of dead arrays are reused at once
        a = np.full(8, i, dtype=np.float64)
        o = np.empty(8, dtype=np.float64)
        comm.all_reduce(a, out=o, op="max")
        assert (o == i).all(), (i, o)
    ro = np.ones(3, dtype=np.float32)
    comm.all_reduce(ro)
    ro.flags.writeable = False
    with pytest.raises(oxccl.InvalidArgumentError, match="read-only"):
        comm.all_reduce(ro)
    nc = np.ones((4, 4), dtype=np.float32)[:, 1]
    with pytest.raises(oxccl.InvalidArgumentError, match="contiguous"):
        comm.all_reduce(nc)


def test_nonblocking_init_name_and_split_share():
    """NCCL's config fields: blocking=False returns at once and calls raise InProgressError
    until ready(); name reads back and is in error messages; split_share is accepted."""
    uid = oxccl.UniqueId.new()
    c1 = oxccl.Communicator(1, 2, uid, timeout=30, blocking=False, name="nb")
    # Rank 0 has not started: initialisation cannot have finished.
    assert not c1.ready()
    assert c1.name == "nb"
    assert c1.async_error() is None
    assert "InProgressError" in repr(c1)
    with pytest.raises(oxccl.InProgressError, match="still initialising"):
        c1.all_reduce(np.ones(2, dtype=np.float32))
    box = {}

    def rank0():
        box["c0"] = oxccl.Communicator(0, 2, uid, timeout=30)
        box["c0"].all_reduce(box.setdefault("a", np.ones(2, dtype=np.float32)))

    t = threading.Thread(target=rank0, daemon=True)
    t.start()
    assert c1.wait_ready(timeout=30) is c1
    b = np.ones(2, dtype=np.float32)
    c1.all_reduce(b)
    t.join(30)
    assert not t.is_alive()
    assert b.tolist() == [2.0, 2.0] and box["a"].tolist() == [2.0, 2.0]
    assert box["c0"].name == ""
    with pytest.raises(oxccl.InvalidArgumentError, match='comm "nb"'):
        c1.broadcast(np.ones(2, dtype=np.float32), root=5)
    c1.close()
    box["c0"].close()
    with oxccl.Communicator(0, 1, oxccl.UniqueId.new(), split_share=True) as c:
        with c.split(0, name="kid") as k:
            assert k.name == "kid" and k.size == 1
    # A non-blocking init that cannot finish fails through ready().
    c = oxccl.Communicator(1, 2, oxccl.UniqueId.new(), timeout=1, blocking=False)
    t0 = time.monotonic()
    with pytest.raises(oxccl.OxcclError):
        while not c.ready():
            assert time.monotonic() - t0 < 30
            time.sleep(0.01)
    c.close()


def test_repeated_in_place_all_reduce_uses_a_stored_call():
    """The in-place fast path stores the call (oxcclAllReduceInit) per array: it follows the
    array's op, dtype and death, and frees its stored calls on close."""
    from oxccl import _comm

    with oxccl.Communicator(0, 1, oxccl.UniqueId.new()) as c:
        a = np.arange(4, dtype=np.float32)
        for _ in range(3):
            c.all_reduce(a)
        assert list(c._pers) == [id(a)] and a.tolist() == [0, 1, 2, 3]
        c.all_reduce(a, op="max")  # another op: stored again, the old one freed
        assert c._pers[id(a)][4] == "max"
        a.dtype = np.int32  # the same memory, another type: not the stored call's
        c.all_reduce(a)
        assert a.dtype == np.int32 and c._pers[id(a)][2] == np.int32
        a.flags.writeable = False
        with pytest.raises(oxccl.InvalidArgumentError):
            c.all_reduce(a)
        del a
        assert not c._pers
        b = np.ones(2)
        c.all_reduce(b)
        pid = c._pers[id(b)][1]
    assert not c._pers
    assert _comm._Start(pid) == 4  # freed with the communicator: invalid argument
