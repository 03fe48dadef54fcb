"""Exceptions: one class per ``oxcclResult_t`` code, all subclasses of :class:`OxcclError`."""

__all__ = [
    "OxcclError",
    "InvalidArgumentError",
    "InvalidUsageError",
    "SystemError_",
    "InternalError",
    "PeerLostError",
    "TimeoutError_",
    "MismatchError",
    "UnavailableError",
    "AuthError",
    "InProgressError",
    "error_for",
]


class OxcclError(Exception):
    """A failed oxccl call. ``code`` is the ``oxcclResult_t``; ``message`` is the library's text
    (it names the collective, the rank and the peer where that is known)."""

    code = -1

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgumentError(OxcclError, ValueError):
    """A bad argument: a wrong size, type, rank or count (oxcclInvalidArgument)."""

    code = 4


class InvalidUsageError(OxcclError):
    """The API was used in the wrong state, e.g. a revoked or closed communicator (oxcclInvalidUsage)."""

    code = 5


class SystemError_(OxcclError):
    """The operating system refused something (oxcclSystemError)."""

    code = 2


class InternalError(OxcclError):
    """A bug in oxccl; please report it with the message (oxcclInternalError)."""

    code = 3


class PeerLostError(OxcclError):
    """A peer died or closed its connection (oxcclRemoteError)."""

    code = 6


class TimeoutError_(OxcclError, TimeoutError):
    """A deadline passed (oxcclTimeout); OXCCL_TIMEOUT_MS or ``timeout=`` sets it."""

    code = 8


class MismatchError(OxcclError):
    """Ranks called different collectives, or the same one with different arguments (oxcclMismatch)."""

    code = 9


class UnavailableError(OxcclError):
    """A transport or feature is not available here (oxcclUnavailable)."""

    code = 10


class AuthError(OxcclError):
    """A connection failed authentication: wrong or missing secret (oxcclAuthError)."""

    code = 11


class InProgressError(OxcclError):
    """A non-blocking operation has not finished yet (oxcclInProgress)."""

    code = 7


_BY_CODE = {
    c.code: c
    for c in (
        InvalidArgumentError,
        InvalidUsageError,
        SystemError_,
        InternalError,
        PeerLostError,
        TimeoutError_,
        MismatchError,
        UnavailableError,
        AuthError,
        InProgressError,
    )
}


def error_for(code, message):
    """The exception for result ``code`` with ``message``."""
    cls = _BY_CODE.get(code, OxcclError)
    return cls(message or "oxccl error %d" % code, code)
