//! Errors are values: every failure says what happened, where (collective, rank, peer) and what to do.

use std::fmt;
use std::time::Duration;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in oxccl.
///
/// Each variant carries a human-readable message that names the collective, the rank and the
/// peer where that is known, and says what to do about it. The numeric [`Error::code`] is stable
/// and is what the C ABI returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A caller passed a bad argument (wrong length, bad rank, unknown name).
    InvalidArgument(String),
    /// The API was used in the wrong order or state (e.g. a call on a revoked communicator).
    InvalidUsage(String),
    /// The operating system refused something (socket, mmap, fork...).
    System(String),
    /// A bug in oxccl: it should never happen; please report it.
    Internal(String),
    /// A peer died or closed its connection.
    PeerLost {
        /// The rank that was lost.
        peer: usize,
        /// What happened and where.
        msg: String,
    },
    /// A deadline passed.
    Timeout {
        /// The rank that was waited for, when known.
        peer: Option<usize>,
        /// What was waited for and where.
        msg: String,
    },
    /// Ranks called different collectives (or the same one with different arguments).
    Mismatch {
        /// The rank whose call differs from ours.
        peer: usize,
        /// Both sides' signatures.
        msg: String,
    },
    /// A transport or feature is not available here.
    Unavailable(String),
    /// A connection failed authentication (wrong or missing secret).
    Auth(String),
}

impl Error {
    /// Stable numeric code (the C ABI's `oxcclResult_t` minus success).
    pub fn code(&self) -> u8 {
        match self {
            Error::InvalidArgument(_) => 1,
            Error::InvalidUsage(_) => 2,
            Error::System(_) => 3,
            Error::Internal(_) => 4,
            Error::PeerLost { .. } => 5,
            Error::Timeout { .. } => 6,
            Error::Mismatch { .. } => 7,
            Error::Unavailable(_) => 8,
            Error::Auth(_) => 9,
        }
    }

    /// The peer this error names, if any.
    pub fn peer(&self) -> Option<usize> {
        match self {
            Error::PeerLost { peer, .. } | Error::Mismatch { peer, .. } => Some(*peer),
            Error::Timeout { peer, .. } => *peer,
            _ => None,
        }
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidArgument(m)
            | Error::InvalidUsage(m)
            | Error::System(m)
            | Error::Internal(m)
            | Error::Unavailable(m)
            | Error::Auth(m) => m,
            Error::PeerLost { msg, .. }
            | Error::Timeout { msg, .. }
            | Error::Mismatch { msg, .. } => msg,
        }
    }

    /// Rebuilds an error from its code, peer and message (as carried by an abort frame).
    /// Unknown codes become [`Error::Internal`].
    pub fn from_parts(code: u8, peer: Option<usize>, msg: String) -> Error {
        let p = peer.unwrap_or(usize::MAX);
        match code {
            1 => Error::InvalidArgument(msg),
            2 => Error::InvalidUsage(msg),
            3 => Error::System(msg),
            5 => Error::PeerLost { peer: p, msg },
            6 => Error::Timeout { peer, msg },
            7 => Error::Mismatch { peer: p, msg },
            8 => Error::Unavailable(msg),
            9 => Error::Auth(msg),
            _ => Error::Internal(msg),
        }
    }

    /// A short name of the kind, as printed before the message.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid argument",
            Error::InvalidUsage(_) => "invalid usage",
            Error::System(_) => "system error",
            Error::Internal(_) => "internal error",
            Error::PeerLost { .. } => "peer lost",
            Error::Timeout { .. } => "timeout",
            Error::Mismatch { .. } => "mismatch",
            Error::Unavailable(_) => "unavailable",
            Error::Auth(_) => "authentication failed",
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Error {
        Error::System(format!("{what}: {e}"))
    }

    /// A timeout while waiting for `what`.
    pub fn timeout(peer: Option<usize>, what: impl fmt::Display, after: Duration) -> Error {
        Error::Timeout {
            peer,
            msg: format!(
                "{what}: no progress within {} ms (raise OXCCL_TIMEOUT_MS if the peer is just slow)",
                after.as_millis()
            ),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oxccl {}: {}", self.kind_name(), self.message())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let errs = [
            Error::InvalidArgument("a".into()),
            Error::PeerLost {
                peer: 3,
                msg: "gone".into(),
            },
            Error::Timeout {
                peer: Some(2),
                msg: "slow".into(),
            },
            Error::Timeout {
                peer: None,
                msg: "slow".into(),
            },
            Error::Mismatch {
                peer: 1,
                msg: "x".into(),
            },
            Error::Auth("bad".into()),
        ];
        for e in errs {
            let back = Error::from_parts(e.code(), e.peer(), e.message().to_string());
            assert_eq!(back, e);
        }
    }
}
