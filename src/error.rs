//! Errors are values: every failure says what happened, where (collective, rank, peer) and what to do.
//!
//! An [`Error`] is a kind ([`ErrorKind`]: its stable code and name come from one table), a
//! message, the peer it names, the rank that reported it when it came from a peer's abort
//! ([`Error::reported_by`]), and the operating system's error when there was one
//! ([`std::error::Error::source`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Declares [`ErrorKind`] from one table: variant, stable code, name (as printed).
macro_rules! kinds {
    ($($(#[$doc:meta])* $kind:ident = $code:literal, $name:literal;)*) => {
        /// What kind of failure an [`Error`] is. The numeric [`ErrorKind::code`] is stable: it is
        /// what the C ABI returns and what abort frames carry.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        #[repr(u8)]
        pub enum ErrorKind {
            $($(#[$doc])* $kind = $code,)*
        }

        impl ErrorKind {
            /// Every kind, in code order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$kind),*];

            /// The short name, as printed before the message.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorKind::$kind => $name,)*
                }
            }

            /// The kind with code `code`, if there is one.
            pub fn from_code(code: u8) -> Option<ErrorKind> {
                match code {
                    $($code => Some(ErrorKind::$kind),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    /// A caller passed a bad argument (wrong length, bad rank, unknown name).
    InvalidArgument = 1, "invalid argument";
    /// The API was used in the wrong order or state (e.g. a call on a revoked communicator).
    InvalidUsage = 2, "invalid usage";
    /// The operating system refused something (socket, mmap, fork...).
    System = 3, "system error";
    /// A bug in oxccl: it should never happen; please report it.
    Internal = 4, "internal error";
    /// A peer died or closed its connection.
    PeerLost = 5, "peer lost";
    /// A deadline passed.
    Timeout = 6, "timeout";
    /// Ranks called different collectives (or the same one with different arguments).
    Mismatch = 7, "mismatch";
    /// A transport or feature is not available here.
    Unavailable = 8, "unavailable";
    /// A connection failed authentication (wrong or missing secret).
    Auth = 9, "authentication failed";
}

impl ErrorKind {
    /// The stable numeric code (the C ABI's `oxcclResult_t` minus success).
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Everything that can go wrong in oxccl.
///
/// The message names the collective, the rank and the peer where that is known, and says what
/// to do about it. Match on [`Error::kind`]; [`Error::peer`] is the rank the error is about.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    msg: String,
    peer: Option<usize>,
    reported_by: Option<usize>,
    source: Option<Arc<std::io::Error>>,
}

/// Equal when kind, message, peer and reporter are (the `source`, an `io::Error`, has no
/// equality of its own; its text is in the message).
impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.kind == other.kind
            && self.msg == other.msg
            && self.peer == other.peer
            && self.reported_by == other.reported_by
    }
}

impl Eq for Error {}

impl Error {
    /// An error of `kind` saying `msg`, naming no peer.
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            msg: msg.into(),
            peer: None,
            reported_by: None,
            source: None,
        }
    }

    /// A bad argument.
    pub fn invalid_argument(msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, msg)
    }

    /// The API used in the wrong order or state.
    pub fn invalid_usage(msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidUsage, msg)
    }

    /// The operating system refused something (see also [`Error::io`], which keeps the cause).
    pub fn system(msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::System, msg)
    }

    /// A bug in oxccl.
    pub fn internal(msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, msg)
    }

    /// Rank `peer` died or closed its connection.
    pub fn peer_lost(peer: usize, msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::PeerLost, msg).with_peer(Some(peer))
    }

    /// A deadline passed while waiting for `peer` (when known); see also [`Error::timeout`].
    pub fn timed_out(peer: Option<usize>, msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::Timeout, msg).with_peer(peer)
    }

    /// Rank `peer` called another collective than ours, or the same one differently.
    pub fn mismatch(peer: usize, msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::Mismatch, msg).with_peer(Some(peer))
    }

    /// A transport or feature is not available here.
    pub fn unavailable(msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, msg)
    }

    /// A connection failed authentication.
    pub fn auth(msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::Auth, msg)
    }

    /// The same error naming `peer` instead.
    pub fn with_peer(mut self, peer: Option<usize>) -> Error {
        self.peer = peer;
        self
    }

    /// The same error with another message (kind, peer, reporter and cause kept).
    pub fn with_message(mut self, msg: impl Into<String>) -> Error {
        self.msg = msg.into();
        self
    }

    /// The same error as another kind (its message, peer, reporter and cause kept): a broken
    /// connection to a known rank is that rank lost, say.
    pub fn into_kind(mut self, kind: ErrorKind) -> Error {
        self.kind = kind;
        self
    }

    /// The same error, marked as reported by rank `rank` (it arrived in that rank's abort).
    pub fn reported_by_rank(mut self, rank: usize) -> Error {
        self.reported_by = Some(rank);
        self
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Stable numeric code (the C ABI's `oxcclResult_t` minus success).
    pub fn code(&self) -> u8 {
        self.kind.code()
    }

    /// The peer this error names, if any.
    pub fn peer(&self) -> Option<usize> {
        self.peer
    }

    /// The rank whose abort carried this error to us, when it came from a peer rather than
    /// being raised here.
    pub fn reported_by(&self) -> Option<usize> {
        self.reported_by
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Rebuilds an error from its code, peer and message (as carried by an abort frame).
    /// Unknown codes become [`ErrorKind::Internal`].
    pub fn from_parts(code: u8, peer: Option<usize>, msg: String) -> Error {
        let kind = ErrorKind::from_code(code).unwrap_or(ErrorKind::Internal);
        Error::new(kind, msg).with_peer(peer)
    }

    /// A short name of the kind, as printed before the message.
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    /// Wraps an I/O error with what was being done; the I/O error stays the
    /// [`source`](std::error::Error::source).
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Error {
        let mut err = Error::system(format!("{what}: {e}"));
        err.source = Some(Arc::new(e));
        err
    }

    /// A timeout while waiting for `what`.
    pub fn timeout(peer: Option<usize>, what: impl fmt::Display, after: Duration) -> Error {
        Error::timed_out(
            peer,
            format!(
                "{what}: no progress within {} ms (raise OXCCL_TIMEOUT_MS if the peer is just slow)",
                after.as_millis()
            ),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oxccl {}: {}", self.kind_name(), self.message())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let errs = [
            Error::invalid_argument("a"),
            Error::peer_lost(3, "gone"),
            Error::timed_out(Some(2), "slow"),
            Error::timed_out(None, "slow"),
            Error::mismatch(1, "x"),
            Error::auth("bad"),
        ];
        for e in errs {
            let back = Error::from_parts(e.code(), e.peer(), e.message().to_string());
            assert_eq!(back, e);
        }
    }

    #[test]
    fn codes_and_names_are_one_table() {
        let codes: Vec<u8> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes, (1..=9).collect::<Vec<u8>>(), "stable codes, C ABI");
        for &k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(k.code()), Some(k));
            let e = Error::new(k, "m");
            assert_eq!(e.to_string(), format!("oxccl {}: m", k.name()));
        }
        assert_eq!(ErrorKind::from_code(0), None);
        assert_eq!(ErrorKind::from_code(10), None);
        assert_eq!(
            Error::from_parts(200, None, "x".into()).kind(),
            ErrorKind::Internal
        );
    }

    #[test]
    fn io_errors_keep_their_cause() {
        use std::error::Error as _;
        let e = Error::io(
            "connect to 10.0.0.1:5",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(e.kind(), ErrorKind::System);
        assert!(e.message().starts_with("connect to 10.0.0.1:5: "), "{e}");
        let cause = e.source().expect("source kept");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(Error::internal("x").source().is_none());
    }
}
