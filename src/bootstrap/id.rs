//! [`UniqueId`]: the root's address plus a random secret, like `ncclUniqueId`.
//!
//! # Binary form (`to_bytes` / `from_bytes`), 128 bytes
//!
//! | bytes   | content                                                          |
//! |---------|------------------------------------------------------------------|
//! | 0..4    | magic `OXID`                                                     |
//! | 4       | format version, 1                                                |
//! | 5       | address family: 4 or 6                                          |
//! | 6..8    | port, big-endian                                                 |
//! | 8..24   | address: IPv4 in 8..12 (12..24 zero), or the 16 IPv6 bytes       |
//! | 24..28  | IPv6 scope id, big-endian (zero for IPv4)                        |
//! | 28..44  | the secret                                                       |
//! | 44..128 | zero                                                             |
//!
//! The IPv6 flow label is not carried (it is zero after decoding). Decoding checks every field,
//! including that the padding is zero, and returns [`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument) for anything else.
//!
//! # Printable form (`Display` / `FromStr`)
//!
//! `<socket address>#<secret as 32 lowercase hex digits>`, for example
//! `10.0.0.5:29500#00112233445566778899aabbccddeeff` or `[fe80::1%2]:29500#0011…`. It is what a
//! launcher passes to the other ranks; treat it like a password. `Debug` never shows the secret.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener};
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};

use crate::error::{Error, Result};

/// Like `ncclUniqueId`: the root's address and port plus a 128-bit random secret.
///
/// Rank 0 creates it with [`UniqueId::new`] (which also binds the store's listening socket in
/// this process), sends its printable form (`to_string()`) or its 128-byte blob (`to_bytes()`)
/// to the other ranks out of band, and every rank passes it to `Communicator::init`.
#[derive(Clone, PartialEq, Eq)]
pub struct UniqueId {
    /// Where the root's store listens.
    pub addr: SocketAddr,
    /// The shared secret every connection proves knowledge of.
    pub secret: [u8; 16],
}

/// Size of the binary form, like `NCCL_UNIQUE_ID_BYTES`.
pub const UNIQUE_ID_BYTES: usize = 128;

const MAGIC: [u8; 4] = *b"OXID";
const VERSION: u8 = 1;
/// End of the meaningful part of the blob; the rest must be zero.
const USED: usize = 44;

/// Listeners bound by [`UniqueId::new`]/[`UniqueId::bind`], waiting for rank 0's init in this
/// process to serve the store on them.
static LISTENERS: LazyLock<Mutex<HashMap<SocketAddr, TcpListener>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn registry() -> std::sync::MutexGuard<'static, HashMap<SocketAddr, TcpListener>> {
    // A panic while holding this lock cannot leave the map inconsistent (single insert/remove).
    LISTENERS.lock().unwrap_or_else(|p| p.into_inner())
}

impl UniqueId {
    /// A fresh id whose store will be served by this process (rank 0).
    ///
    /// The address is the first IPv4 address of the interface named by `OXCCL_SOCKET_IFNAME`
    /// if set, else of the first up, non-loopback interface that is not a container or VM
    /// bridge (docker*, virbr*, veth*, br-*), else 127.0.0.1. A listener is bound there on an
    /// ephemeral port and kept in this process until rank 0's init takes it
    /// ([`UniqueId::take_listener`]). The secret comes from the kernel's random source.
    pub fn new() -> Result<UniqueId> {
        let ip = super::net::local_ipv4()?;
        UniqueId::bind(SocketAddr::new(ip, 0))
    }

    /// Like [`UniqueId::new`] on a given address (port 0 picks a free port).
    pub fn bind(addr: SocketAddr) -> Result<UniqueId> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::io(format!("binding the store listener on {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("getsockname on the store listener", e))?;
        let mut secret = [0u8; 16];
        crate::sys::random_bytes(&mut secret)
            .map_err(|e| Error::io("getrandom for the secret", e))?;
        registry().insert(addr, listener);
        crate::info!(None, "unique id: store will listen on {addr}");
        Ok(UniqueId { addr, secret })
    }

    /// Removes and returns the listener [`UniqueId::new`]/[`UniqueId::bind`] bound for this id in
    /// this process, or `None` if this process did not create the id (or it was taken already).
    pub fn take_listener(&self) -> Option<TcpListener> {
        registry().remove(&self.addr)
    }

    /// The 128-byte binary form (see the module docs for the layout).
    pub fn to_bytes(&self) -> [u8; UNIQUE_ID_BYTES] {
        let mut b = [0u8; UNIQUE_ID_BYTES];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[6..8].copy_from_slice(&self.addr.port().to_be_bytes());
        match self.addr {
            SocketAddr::V4(a) => {
                b[5] = 4;
                b[8..12].copy_from_slice(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                b[5] = 6;
                b[8..24].copy_from_slice(&a.ip().octets());
                b[24..28].copy_from_slice(&a.scope_id().to_be_bytes());
            }
        }
        b[28..44].copy_from_slice(&self.secret);
        b
    }

    /// Decodes [`UniqueId::to_bytes`]'s form; anything else is [`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument).
    pub fn from_bytes(b: &[u8; UNIQUE_ID_BYTES]) -> Result<UniqueId> {
        let bad = |what: &str| {
            Err(Error::invalid_argument(format!(
                "not an oxccl unique id ({what}); pass the 128 bytes UniqueId::to_bytes produced, unchanged"
            )))
        };
        if b[0..4] != MAGIC {
            return bad("wrong magic");
        }
        if b[4] != VERSION {
            return bad(&format!(
                "format version {}, this build reads {VERSION}",
                b[4]
            ));
        }
        if b[USED..].iter().any(|&x| x != 0) {
            return bad("non-zero padding");
        }
        let port = u16::from_be_bytes([b[6], b[7]]);
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&b[28..44]);
        let addr = match b[5] {
            4 => {
                if b[12..28].iter().any(|&x| x != 0) {
                    return bad("non-zero bytes after an IPv4 address");
                }
                let ip = Ipv4Addr::new(b[8], b[9], b[10], b[11]);
                SocketAddr::V4(SocketAddrV4::new(ip, port))
            }
            6 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[8..24]);
                let scope = u32::from_be_bytes([b[24], b[25], b[26], b[27]]);
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), port, 0, scope))
            }
            f => return bad(&format!("address family {f}")),
        };
        Ok(UniqueId { addr, secret })
    }
}

impl fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UniqueId")
            .field("addr", &self.addr)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// `addr#secrethex`, e.g. `10.0.0.5:29500#00112233445566778899aabbccddeeff`.
impl fmt::Display for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, secret_hex(&self.secret))
    }
}

/// Parses the `Display` form: `<ip>:<port>#<32 hex digits>` (IPv6 as `[addr%scope]:port`).
impl FromStr for UniqueId {
    type Err = Error;

    fn from_str(s: &str) -> Result<UniqueId> {
        let s = s.trim();
        let Some((a, sec)) = s.rsplit_once('#') else {
            return Err(Error::invalid_argument(format!(
                "unique id {:?} has no '#': expected <ip>:<port>#<32 hex digits>, as printed by UniqueId's Display",
                shorten(s)
            )));
        };
        let addr: SocketAddr = a.parse().map_err(|_| {
            Error::invalid_argument(format!(
                "unique id: {:?} is not an <ip>:<port> socket address (IPv6 as [addr]:port)",
                shorten(a)
            ))
        })?;
        let secret = parse_secret_hex(sec)?;
        Ok(UniqueId { addr, secret })
    }
}

/// At most 64 chars of untrusted input for error messages.
fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Parses a 128-bit secret written as exactly 32 hex digits (the form of `OXCCL_SECRET`).
pub fn parse_secret_hex(s: &str) -> Result<[u8; 16]> {
    let s = s.trim();
    let bytes = s.as_bytes();
    if bytes.len() != 32 {
        return Err(Error::invalid_argument(format!(
            "secret must be exactly 32 hex digits (128 bits), got {} characters; generate one with \
             `head -c16 /dev/urandom | xxd -p`",
            s.chars().count()
        )));
    }
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        match (hex_val(pair[0]), hex_val(pair[1])) {
            (Some(h), Some(l)) => out[i] = (h << 4) | l,
            _ => {
                return Err(Error::invalid_argument(format!(
                    "secret has a non-hex character near position {}; it must be 32 hex digits",
                    2 * i
                )));
            }
        }
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The secret as 32 lowercase hex digits (the form [`parse_secret_hex`] reads).
pub fn secret_hex(secret: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for &b in secret {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id_v4() -> UniqueId {
        UniqueId {
            addr: "10.1.2.3:4242".parse().unwrap(),
            secret: *b"0123456789abcdef",
        }
    }

    #[test]
    fn debug_hides_secret() {
        let id = id_v4();
        let d = format!("{id:?}");
        assert!(!d.contains(&secret_hex(&id.secret)), "{d}");
        assert!(!d.contains("0123456789abcdef"), "{d}");
        assert!(d.contains("10.1.2.3:4242"), "{d}");
    }

    #[test]
    fn display_form() {
        let id = id_v4();
        assert_eq!(
            id.to_string(),
            "10.1.2.3:4242#30313233343536373839616263646566"
        );
        assert_eq!(id.to_string().parse::<UniqueId>().unwrap(), id);
        let v6 = UniqueId {
            addr: "[fe80::1%3]:9".parse().unwrap(),
            secret: [7; 16],
        };
        assert_eq!(v6.to_string().parse::<UniqueId>().unwrap(), v6);
        assert_eq!(UniqueId::from_bytes(&v6.to_bytes()).unwrap(), v6);
    }

    #[test]
    fn rejects_bad_blobs() {
        let good = id_v4().to_bytes();
        let mut b = good;
        b[0] = b'X';
        assert!(UniqueId::from_bytes(&b).is_err());
        let mut b = good;
        b[4] = 2;
        assert!(UniqueId::from_bytes(&b).is_err());
        let mut b = good;
        b[5] = 5;
        assert!(UniqueId::from_bytes(&b).is_err());
        let mut b = good;
        b[127] = 1;
        assert!(UniqueId::from_bytes(&b).is_err());
        let mut b = good;
        b[13] = 1;
        assert!(UniqueId::from_bytes(&b).is_err());
        assert!(UniqueId::from_bytes(&[0; 128]).is_err());
    }

    #[test]
    fn secret_hex_round_trip_and_errors() {
        let s = [0xab; 16];
        assert_eq!(parse_secret_hex(&secret_hex(&s)).unwrap(), s);
        assert_eq!(parse_secret_hex(&"AB".repeat(16)).unwrap(), s);
        assert!(parse_secret_hex("abc").is_err());
        assert!(parse_secret_hex(&"zz".repeat(16)).is_err());
        assert!(parse_secret_hex(&"é".repeat(16)).is_err());
    }

    #[test]
    fn bind_registers_listener_once() {
        let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(id.addr.port(), 0);
        let l = id.take_listener().expect("listener registered");
        assert_eq!(l.local_addr().unwrap(), id.addr);
        assert!(id.take_listener().is_none());
        let other = UniqueId::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(other.secret, id.secret);
        drop(other.take_listener());
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)),
            (any::<[u8; 16]>(), any::<u16>(), any::<u32>()).prop_map(|(ip, p, s)| SocketAddr::V6(
                SocketAddrV6::new(Ipv6Addr::from(ip), p, 0, s)
            )),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(addr in arb_addr(), secret in any::<[u8; 16]>()) {
            let id = UniqueId { addr, secret };
            prop_assert_eq!(&UniqueId::from_bytes(&id.to_bytes()).unwrap(), &id);
            prop_assert_eq!(&id.to_string().parse::<UniqueId>().unwrap(), &id);
        }

        #[test]
        fn random_blobs_never_panic(v in proptest::collection::vec(any::<u8>(), 128)) {
            let mut b = [0u8; 128];
            b.copy_from_slice(&v);
            let _ = UniqueId::from_bytes(&b);
            // A valid header with random content: still never a panic.
            b[0..4].copy_from_slice(b"OXID");
            b[4] = 1;
            let _ = UniqueId::from_bytes(&b);
        }

        #[test]
        fn random_strings_never_panic(s in ".*", t in "[0-9a-f:.#\\[\\]%]{0,80}") {
            let _ = s.parse::<UniqueId>();
            let _ = t.parse::<UniqueId>();
            let _ = parse_secret_hex(&s);
        }
    }
}
