"""Zero-copy access to the caller's buffers: numpy arrays (via their data pointer), torch CPU
tensors (``data_ptr()``), and anything with the buffer protocol (bytearray, array.array,
memoryview, mmap, ...) via ``PyObject_GetBuffer``, which also pins the memory (a bytearray
cannot be resized while a collective uses it)."""

import ctypes
import sys
import functools
import weakref

from .errors import InvalidArgumentError

# oxcclDataType_t numbers (NCCL's) and sizes.
DTYPES = {
    "int8": (0, 1),
    "uint8": (1, 1),
    "int32": (2, 4),
    "uint32": (3, 4),
    "int64": (4, 8),
    "uint64": (5, 8),
    "float16": (6, 2),
    "float32": (7, 4),
    "float64": (8, 8),
    "bfloat16": (9, 2),
}
_ALIASES = {
    "i8": "int8",
    "char": "int8",
    "u8": "uint8",
    "byte": "uint8",
    "i32": "int32",
    "int": "int32",
    "u32": "uint32",
    "i64": "int64",
    "u64": "uint64",
    "f16": "float16",
    "half": "float16",
    "fp16": "float16",
    "f32": "float32",
    "float": "float32",
    "fp32": "float32",
    "f64": "float64",
    "double": "float64",
    "fp64": "float64",
    "bf16": "bfloat16",
}
NAMES = {code: name for name, (code, _) in DTYPES.items()}

OPS = {"sum": 0, "prod": 1, "product": 1, "max": 2, "min": 3, "avg": 4, "mean": 4, "average": 4}


def op_code(op):
    """``"sum"``, ``"prod"``, ``"max"``, ``"min"``, ``"avg"`` (any case) or the NCCL number."""
    if isinstance(op, int) and 0 <= op <= 4:
        return op
    code = OPS.get(str(op).strip().lower()) if isinstance(op, str) else None
    if code is None:
        raise InvalidArgumentError("unknown op %r: use sum, prod, max, min or avg" % (op,))
    return code


def dtype_name(dt):
    """Canonical name of a dtype given as a name, an oxcclDataType_t number, a numpy dtype
    (or type) or a torch dtype."""
    if dt is None:
        return None
    if isinstance(dt, int) and not isinstance(dt, bool):
        if dt in NAMES:
            return NAMES[dt]
        raise InvalidArgumentError("datatype %d is not an oxcclDataType_t (0..9)" % dt)
    if isinstance(dt, str):
        s = dt.strip().lower()
    elif type(dt).__module__.startswith("torch"):
        s = str(dt).replace("torch.", "")
    else:
        s = getattr(dt, "name", None) or getattr(getattr(dt, "dtype", None), "name", None)
        if s is None:
            try:
                import numpy

                s = numpy.dtype(dt).name
            except Exception:  # noqa: BLE001 - anything numpy cannot read is "unsupported" below
                s = repr(dt)
    s = _ALIASES.get(s, s)
    if s == "half":
        s = "float16"
    if s not in DTYPES:
        raise InvalidArgumentError(
            "unsupported element type %r: oxccl reduces %s" % (dt, ", ".join(DTYPES)), 1
        )
    return s


# Buffer-protocol formats (native byte order) by kind and size.
def _from_format(fmt, itemsize):
    f = fmt.lstrip("@=<")
    if fmt.startswith((">", "!")) and itemsize > 1:
        return None
    if f in ("b",):
        return "int8"
    if f in ("B", "c", "?"):
        return "uint8" if itemsize == 1 else None
    if f in ("h", "H"):
        return None
    if f in ("i", "l", "q", "n"):
        return {4: "int32", 8: "int64"}.get(itemsize)
    if f in ("I", "L", "Q", "N"):
        return {4: "uint32", 8: "uint64"}.get(itemsize)
    if f == "e":
        return "float16"
    if f == "f":
        return "float32"
    if f == "d":
        return "float64"
    return None


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_PyBUF_WRITABLE = 0x0001
_PyBUF_FORMAT = 0x0004
_PyBUF_C_CONTIGUOUS = 0x0038

_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


class Buf:
    """A caller's buffer: address, size in bytes, element type; holds the object (and its buffer
    export) until :meth:`release`."""

    __slots__ = ("ptr", "nbytes", "dtype", "obj", "_view")

    def __init__(self, ptr, nbytes, dtype, obj, view=None):
        self.ptr = ptr
        self.nbytes = nbytes
        self.dtype = dtype
        self.obj = obj
        self._view = view

    @property
    def itemsize(self):
        return DTYPES[self.dtype][1]

    @property
    def count(self):
        return self.nbytes // self.itemsize

    @property
    def code(self):
        return DTYPES[self.dtype][0]

    def release(self):
        v, self._view = self._view, None
        if v is not None:
            _release_buffer(ctypes.byref(v))
        self.obj = None

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _is_numpy(obj):
    return type(obj).__module__.split(".")[0] == "numpy" and hasattr(obj, "__array_interface__")


def _is_torch(obj):
    mod = type(obj).__module__.split(".")[0]
    return mod == "torch" and hasattr(obj, "data_ptr") and "torch" in sys.modules


def _retype(name, what, explicit, nbytes):
    if explicit is None:
        if name is None:
            raise InvalidArgumentError(
                "%s: cannot tell its element type; pass dtype=" % what, 1
            )
        return name
    size = DTYPES[explicit][1]
    if nbytes % size:
        raise InvalidArgumentError(
            "%s: %d bytes is not a whole number of %s elements" % (what, nbytes, explicit), 1
        )
    return explicit


def get(obj, writable, dtype=None, what="buffer"):
    """A :class:`Buf` over ``obj`` without copying. ``dtype`` (a canonical name) overrides the
    element type inferred from the object (raw bytes are then read as that type)."""
    if _is_numpy(obj):
        if not obj.flags.c_contiguous:
            raise InvalidArgumentError(
                "%s: the numpy array is not C-contiguous (use numpy.ascontiguousarray)" % what, 1
            )
        if writable and not obj.flags.writeable:
            raise InvalidArgumentError("%s: the numpy array is read-only" % what)
        try:
            name = dtype_name(obj.dtype)
        except InvalidArgumentError as e:
            if dtype is None:
                raise InvalidArgumentError("%s: %s" % (what, e.message)) from None
            name = None
        name = _retype(name, what + " (numpy %s)" % obj.dtype, dtype, obj.nbytes)
        return Buf(obj.__array_interface__["data"][0], obj.nbytes, name, obj)
    if _is_torch(obj):
        if obj.device.type != "cpu":
            raise InvalidArgumentError(
                "%s: a %s tensor; oxccl works on host memory (use .cpu())" % (what, obj.device), 1
            )
        if not obj.is_contiguous():
            raise InvalidArgumentError("%s: the tensor is not contiguous (.contiguous())" % what)
        try:
            name = dtype_name(obj.dtype)
        except InvalidArgumentError as e:
            if dtype is None:
                raise InvalidArgumentError("%s: %s" % (what, e.message)) from None
            name = None
        nbytes = obj.numel() * obj.element_size()
        name = _retype(name, what + " (torch %s)" % obj.dtype, dtype, nbytes)
        return Buf(obj.data_ptr(), nbytes, name, obj)
    view = _PyBuffer()
    flags = _PyBUF_C_CONTIGUOUS | _PyBUF_FORMAT | (_PyBUF_WRITABLE if writable else 0)
    try:
        _get_buffer(obj, ctypes.byref(view), flags)
    except BufferError as e:
        if writable:
            probe = _PyBuffer()
            try:
                _get_buffer(obj, ctypes.byref(probe), flags & ~_PyBUF_WRITABLE)
            except BufferError:
                pass
            else:
                _release_buffer(ctypes.byref(probe))
                raise InvalidArgumentError(
                    "%s: the %s is read-only; a writable buffer is needed" % (what, type(obj).__name__), 1
                ) from None
        raise InvalidArgumentError("%s: %s (a C-contiguous buffer is needed)" % (what, e)) from None
    except TypeError:
        raise InvalidArgumentError(
            "%s: %s is not a buffer (numpy array, torch CPU tensor, bytearray, array.array, "
            "memoryview...)" % (what, type(obj).__name__),
            1,
        ) from None
    fmt = view.format.decode() if view.format else "B"
    name = _from_format(fmt, view.itemsize)
    try:
        name = _retype(name, "%s (format %r)" % (what, fmt), dtype, view.len)
    except InvalidArgumentError:
        _release_buffer(ctypes.byref(view))
        raise
    return Buf(view.buf or 0, view.len, name, obj, view)


# ---- the fast path ---------------------------------------------------------------------------
# For the calls that dominate small messages (a numpy array or torch CPU tensor, C-contiguous, of
# an oxccl type): no strings, no Buf, the C arguments ready made (ctypes objects, so the call
# skips ctypes' conversions: see _lib.raw). Anything else returns None and takes get(). A numpy
# array's arguments are cached by id, checked against a weak reference, its dtype and its size in
# bytes, because __array_interface__ alone costs more than the whole C call. The memory cannot
# move under the cache: numpy's only way to move it in place is resize(), which it refuses for an
# array with weak references (so such an array cannot be resized in place afterwards: np.resize
# makes a new one), and an array's .data cannot be assigned.

_ND = None  # numpy.ndarray, once numpy is imported
_TENSORS = ()  # torch.Tensor and nn.Parameter, once torch is imported
_NP_CODES = {}  # numpy dtype -> oxcclDataType_t, or -1: not one
_T_CODES = {}  # torch dtype -> oxcclDataType_t, or -1
_args = {}  # id(array) -> (weak reference, nbytes, dtype, c_void_p, c_size_t, code)
_c_void_p = ctypes.c_void_p
_c_size_t = ctypes.c_size_t


def _forget(key, ref):
    e = _args.get(key)
    if e is not None and e[0] is ref:
        del _args[key]


def _code_of(table, dt):
    try:
        c = DTYPES[dtype_name(dt)][0]
    except InvalidArgumentError:
        c = -1
    table[dt] = c
    return c


def _resolve():
    global _ND, _TENSORS
    np = sys.modules.get("numpy")
    if np is not None:
        _ND = np.ndarray
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "Tensor"):
        nn = getattr(torch, "nn", None)
        _TENSORS = (torch.Tensor, nn.Parameter) if nn is not None else (torch.Tensor,)


def fast(obj, writable):
    """``(c_void_p address, c_size_t count, datatype)`` of a plain numpy array or torch CPU
    tensor that is C-contiguous (and writable when ``writable``) and of an oxccl type; None for
    anything else."""
    tp = type(obj)
    if tp is _ND:
        fl = obj.flags
        if not fl.c_contiguous or (writable and not fl.writeable):
            return None
        dt = obj.dtype
        key = id(obj)
        e = _args.get(key)
        if e is not None and e[2] is dt and e[1] == obj.nbytes and e[0]() is obj:
            return e[3], e[4], e[5]
        code = _NP_CODES.get(dt)
        if code is None:
            code = _code_of(_NP_CODES, dt)
        if code < 0:
            return None
        ptr = _c_void_p(obj.__array_interface__["data"][0])
        count = _c_size_t(obj.size)
        _args[key] = (weakref.ref(obj, functools.partial(_forget, key)), obj.nbytes, dt, ptr, count, code)
        return ptr, count, code
    if tp in _TENSORS:
        if not obj.is_cpu or not obj.is_contiguous():
            return None
        dt = obj.dtype
        code = _T_CODES.get(dt)
        if code is None:
            code = _code_of(_T_CODES, dt)
        if code < 0 or obj.is_conj() or obj.is_neg():
            return None
        return _c_void_p(obj.data_ptr()), _c_size_t(obj.numel()), code
    if _ND is None or not _TENSORS:
        _resolve()
        if tp is _ND or (_TENSORS and tp in _TENSORS):
            return fast(obj, writable)
    return None
