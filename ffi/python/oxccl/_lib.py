"""Finding and loading liboxccl.so, and the C prototypes (ctypes)."""

import ctypes
import ctypes.util
import glob
import os
import threading

from .errors import error_for

# Must match ffi/include/oxccl.h (tests/test_basics.py checks it against the header).
UNIQUE_ID_BYTES = 128
UNIQUE_ID_STRLEN = 128
CONFIG_MAGIC = 0x0C0CC1C0
CONFIG_VERSION = 2
CONFIG_UNDEF_INT = -(2**31)
SUCCESS = 0
IN_PROGRESS = 10

LIB_NAME = "liboxccl.so"


class UniqueIdStruct(ctypes.Structure):
    """``oxcclUniqueId``: 128 opaque bytes."""

    # Bytes, not c_char: a c_char array reads as a NUL-terminated string.
    _fields_ = [("internal", ctypes.c_ubyte * UNIQUE_ID_BYTES)]


class ConfigStruct(ctypes.Structure):
    """``oxcclConfig_t``."""

    _fields_ = [
        ("size", ctypes.c_size_t),
        ("magic", ctypes.c_uint),
        ("version", ctypes.c_uint),
        ("timeoutMs", ctypes.c_int),
        ("nsocks", ctypes.c_int),
        ("chunkBytes", ctypes.c_int),
        ("deterministic", ctypes.c_int),
        ("transport", ctypes.c_char_p),
        ("algo", ctypes.c_char_p),
        ("blocking", ctypes.c_int),
        ("commName", ctypes.c_char_p),
        ("splitShare", ctypes.c_int),
    ]


def _candidates():
    """Where cargo puts liboxccl.so, seen from this package and from the working directory."""
    seen = []
    starts = [os.path.dirname(os.path.abspath(__file__)), os.getcwd()]
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        seen += [os.path.join(target, p, LIB_NAME) for p in ("release", "debug")]
    for start in starts:
        d = start
        while True:
            for p in ("release", "debug"):
                seen.append(os.path.join(d, "target", p, LIB_NAME))
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
    out = []
    for c in seen:
        if c not in out and os.path.isfile(c):
            out.append(c)
    return out


def _bundled():
    """The liboxccl built into this package by ``pip install`` (setup.py), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "liboxccl*.so")))
    return found[0] if found else None


def find_library():
    """The path of the liboxccl.so to load: ``$OXCCL_LIBRARY`` when set (an explicit choice wins),
    else the one ``pip install`` built into this package, else the most recently built
    ``target/{release,debug}/liboxccl.so`` of the repository this package or the working
    directory is in, else the system's ``liboxccl.so``."""
    env = os.environ.get("OXCCL_LIBRARY")
    if env:
        if not os.path.isfile(env):
            raise OSError("OXCCL_LIBRARY=%s: no such file" % env)
        return env
    bundled = _bundled()
    if bundled:
        return bundled
    found = _candidates()
    if found:
        return max(found, key=os.path.getmtime)
    sys_lib = ctypes.util.find_library("oxccl")
    if sys_lib:
        return sys_lib
    raise OSError(
        "liboxccl.so not found: build it with `cargo build --release -p oxccl-ffi` in the oxccl "
        "repository (and run from inside it), or set OXCCL_LIBRARY to its path"
    )


_c_int_p = ctypes.POINTER(ctypes.c_int)
_size_p = ctypes.POINTER(ctypes.c_size_t)
_vp = ctypes.c_void_p
_int = ctypes.c_int
_size = ctypes.c_size_t
_u32 = ctypes.c_uint32
_req_p = ctypes.POINTER(ctypes.c_void_p)

# name: argument types (every function returns oxcclResult_t unless listed in _RESTYPES).
_PROTOTYPES = {
    "oxcclGetVersion": [_c_int_p],
    "oxcclGetUniqueId": [ctypes.POINTER(UniqueIdStruct)],
    "oxcclUniqueIdToString": [ctypes.POINTER(UniqueIdStruct), ctypes.c_char_p, _size],
    "oxcclUniqueIdFromString": [ctypes.c_char_p, ctypes.POINTER(UniqueIdStruct)],
    "oxcclCommInitRankConfig": [_req_p, _int, UniqueIdStruct, _int, ctypes.POINTER(ConfigStruct)],
    "oxcclCommInitFromEnvConfig": [_req_p, ctypes.POINTER(ConfigStruct)],
    "oxcclCommSplit": [_vp, _int, _int, _req_p, ctypes.POINTER(ConfigStruct)],
    "oxcclCommShrink": [_vp, _req_p],
    "oxcclCommShrinkExclude": [_vp, _c_int_p, _int, _req_p],
    "oxcclCommRevoke": [_vp],
    "oxcclCommGetUniqueId": [_vp, ctypes.POINTER(UniqueIdStruct)],
    "oxcclCommGrow": [_vp, _int, ctypes.POINTER(UniqueIdStruct), _int, _req_p, ctypes.POINTER(ConfigStruct)],
    "oxcclCommDestroy": [_vp],
    "oxcclCommAbort": [_vp],
    "oxcclCommCount": [_vp, _c_int_p],
    "oxcclCommUserRank": [_vp, _c_int_p],
    "oxcclCommTopology": [_vp, _c_int_p, _c_int_p, _c_int_p, _c_int_p, _c_int_p],
    "oxcclCommGetAsyncError": [_vp, _c_int_p],
    "oxcclCommName": [_vp, ctypes.POINTER(ctypes.c_char_p)],
    "oxcclGetErrorString": [_int],
    "oxcclGetLastError": [_vp],
    "oxcclAllReduce": [_vp, _vp, _size, _int, _int, _vp],
    "oxcclIAllReduce": [_vp, _vp, _size, _int, _int, _vp, _req_p],
    "oxcclBroadcast": [_vp, _vp, _size, _int, _int, _vp],
    "oxcclIBroadcast": [_vp, _vp, _size, _int, _int, _vp, _req_p],
    "oxcclReduce": [_vp, _vp, _size, _int, _int, _int, _vp],
    "oxcclIReduce": [_vp, _vp, _size, _int, _int, _int, _vp, _req_p],
    "oxcclAllGather": [_vp, _vp, _size, _int, _vp],
    "oxcclIAllGather": [_vp, _vp, _size, _int, _vp, _req_p],
    "oxcclReduceScatter": [_vp, _vp, _size, _int, _int, _vp],
    "oxcclIReduceScatter": [_vp, _vp, _size, _int, _int, _vp, _req_p],
    "oxcclAlltoAll": [_vp, _vp, _size, _int, _vp],
    "oxcclIAlltoAll": [_vp, _vp, _size, _int, _vp, _req_p],
    "oxcclGather": [_vp, _vp, _size, _int, _int, _vp],
    "oxcclIGather": [_vp, _vp, _size, _int, _int, _vp, _req_p],
    "oxcclScatter": [_vp, _vp, _size, _int, _int, _vp],
    "oxcclIScatter": [_vp, _vp, _size, _int, _int, _vp, _req_p],
    "oxcclAllGatherV": [_vp, _vp, _size_p, _int, _vp],
    "oxcclIAllGatherV": [_vp, _vp, _size_p, _int, _vp, _req_p],
    "oxcclReduceScatterV": [_vp, _vp, _size_p, _int, _int, _vp],
    "oxcclIReduceScatterV": [_vp, _vp, _size_p, _int, _int, _vp, _req_p],
    "oxcclAllToAllV": [_vp, _size_p, _vp, _size_p, _int, _vp],
    "oxcclIAllToAllV": [_vp, _size_p, _vp, _size_p, _int, _vp, _req_p],
    "oxcclSendTagged": [_vp, _size, _int, _int, _u32, _vp],
    "oxcclRecvTagged": [_vp, _size, _int, _int, _u32, _vp],
    "oxcclISend": [_vp, _size, _int, _int, _u32, _vp, _req_p],
    "oxcclIRecv": [_vp, _size, _int, _int, _u32, _vp, _req_p],
    "oxcclBarrier": [_vp],
    "oxcclIBarrier": [_vp, _req_p],
    "oxcclGroupStart": [],
    "oxcclGroupEnd": [],
    "oxcclGroupEndAsync": [_req_p],
    "oxcclWaitTimeout": [_vp, _int],
    "oxcclWait": [_vp],
    "oxcclTest": [_vp, _c_int_p],
    "oxcclRequestFree": [_vp],
    "oxcclMemAlloc": [ctypes.POINTER(ctypes.c_void_p), _size],
    "oxcclMemFree": [_vp],
}
_RESTYPES = {"oxcclGetErrorString": ctypes.c_char_p, "oxcclGetLastError": ctypes.c_char_p}

_lock = threading.Lock()
_lib = None
_path = None


def lib():
    """The loaded library (loaded on first use; ctypes.CDLL releases the GIL during calls)."""
    global _lib, _path
    if _lib is None:
        with _lock:
            if _lib is None:
                path = find_library()
                handle = ctypes.CDLL(path)
                for name, args in _PROTOTYPES.items():
                    f = getattr(handle, name)
                    f.argtypes = args
                    f.restype = _RESTYPES.get(name, ctypes.c_int)
                _path = path
                _lib = handle
    return _lib


_raw_handle = None


def raw(name):
    """``name`` with no argtypes (from a second handle on the same library): the caller passes
    ctypes objects (``c_void_p``, ``c_size_t``) and ints that fit a C int, and ctypes skips its
    per-argument conversion, which costs more than the call itself for a small message. Only for
    the package's hot paths, which build exactly those arguments."""
    global _raw_handle
    if _raw_handle is None:
        with _lock:
            if _raw_handle is None:
                _raw_handle = ctypes.CDLL(library_path())
    f = getattr(_raw_handle, name)
    f.restype = ctypes.c_int
    return f


def library_path():
    """The path of the loaded liboxccl.so."""
    lib()
    return _path


def last_error():
    """The calling thread's last failure message (exact even when other threads use the same
    communicator)."""
    m = lib().oxcclGetLastError(None)
    return m.decode("utf-8", "replace") if m else ""


def check(code):
    """Raises the exception for a non-success ``oxcclResult_t``."""
    if code != SUCCESS:
        raise error_for(code, last_error())


def call(name, *args):
    """Calls ``name`` and raises on failure."""
    check(getattr(lib(), name)(*args))
