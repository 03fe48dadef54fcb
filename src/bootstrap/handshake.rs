//! Mutual HMAC-SHA256 challenge-response: both ends of a connection prove they know the
//! secret before any other byte is trusted.
//!
//! Every message has a fixed size, so there is no length to trust:
//!
//! ```text
//! client -> server  HELLO  "OXHS" version purpose nonce_c[32]                  38 bytes
//! server -> client  HELLO  "OXHS" version purpose nonce_s[32]  mac_s[32]       70 bytes
//! client -> server  PROOF  mac_c[32]                                           32 bytes
//! server -> client  VERDICT 1 = accepted, 0 = refused                           1 byte
//! mac_x = HMAC-SHA256(secret, "oxccl-handshake-v1" purpose nonce_c nonce_s role_x)
//! ```
//!
//! with `role_x` = `"server"` or `"client"`, so neither proof can be replayed as the other, and
//! fresh nonces on both sides so no proof can be replayed on another connection. MACs are
//! compared in constant time. The whole exchange runs under one deadline, re-armed before every
//! read and write, so a peer that sends one byte and then stalls (slowloris) fails in time.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// `purpose` of a connection to the rendezvous store.
pub const PURPOSE_STORE: u8 = 1;
/// `purpose` of a connection between two ranks (a link).
pub const PURPOSE_PEER: u8 = 2;

const MAGIC: [u8; 4] = *b"OXHS";
const VERSION: u8 = 1;
const NONCE: usize = 32;
const MAC: usize = 32;
const HELLO: usize = 4 + 1 + 1 + NONCE;
const LABEL: &[u8] = b"oxccl-handshake-v1";

/// The MAC both handshakes prove a shared secret with.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Runs the accepting side of the handshake on `stream`, within `timeout`.
///
/// Errors: [`ErrorKind::Auth`](crate::error::ErrorKind::Auth) when the client does not know the secret or is not an oxccl peer of
/// the same protocol version and purpose (the message names the client's address),
/// [`ErrorKind::Timeout`](crate::error::ErrorKind::Timeout) when it is too slow, [`ErrorKind::System`](crate::error::ErrorKind::System) when the connection breaks.
/// The socket's read and write timeouts are restored afterwards.
pub fn server(
    stream: &mut TcpStream,
    secret: &[u8; 16],
    purpose: u8,
    timeout: Duration,
) -> Result<()> {
    with_deadline(stream, timeout, "client", |io| {
        // The header first, so that garbage is rejected without waiting for 38 bytes.
        let header = io.read::<6>()?;
        check_hello(&header, header[5], io.peer, "client")?;
        let nonce_c = io.read::<NONCE>()?;
        let nonce_s = fresh_nonce()?;
        let mac_s = mac(secret, purpose, &nonce_c, &nonce_s, b"server")
            .finalize()
            .into_bytes();
        let mut msg = [0u8; HELLO + MAC];
        msg[..HELLO].copy_from_slice(&hello_bytes(purpose, &nonce_s));
        msg[HELLO..].copy_from_slice(&mac_s);
        io.write(&msg)?;
        // On a purpose mismatch the client learns ours from our HELLO and reports it clearly.
        check_hello(&header, purpose, io.peer, "client")?;
        let proof = io.read::<MAC>()?;
        let ok = mac(secret, purpose, &nonce_c, &nonce_s, b"client")
            .verify_slice(&proof)
            .is_ok();
        // Best effort: a refused client may already have gone.
        let _ = io.write(&[u8::from(ok)]);
        if ok {
            Ok(())
        } else {
            Err(Error::auth(format!(
                "connection from {}: the client does not know this job's secret \
                 (a rank of another job, or OXCCL_SECRET / the unique id differs)",
                io.peer
            )))
        }
    })
}

/// Runs the connecting side of the handshake on `stream`, within `timeout`.
///
/// Errors as for [`server`]; [`ErrorKind::Auth`](crate::error::ErrorKind::Auth) names the server's address.
pub fn client(
    stream: &mut TcpStream,
    secret: &[u8; 16],
    purpose: u8,
    timeout: Duration,
) -> Result<()> {
    with_deadline(stream, timeout, "server", |io| {
        let nonce_c = fresh_nonce()?;
        io.write(&hello_bytes(purpose, &nonce_c))?;
        check_hello(&io.read::<6>()?, purpose, io.peer, "server")?;
        let nonce_s = io.read::<NONCE>()?;
        let mac_s = io.read::<MAC>()?;
        let mac_c = mac(secret, purpose, &nonce_c, &nonce_s, b"client")
            .finalize()
            .into_bytes();
        io.write(&mac_c)?;
        if mac(secret, purpose, &nonce_c, &nonce_s, b"server")
            .verify_slice(&mac_s)
            .is_err()
        {
            return Err(Error::auth(format!(
                "server {} does not know this job's secret (another job's root on that address, \
                 or OXCCL_SECRET / the unique id differs)",
                io.peer
            )));
        }
        match io.read::<1>()? {
            [1] => Ok(()),
            _ => Err(Error::auth(format!(
                "server {} refused our proof of the secret",
                io.peer
            ))),
        }
    })
}

fn fresh_nonce() -> Result<[u8; NONCE]> {
    let mut n = [0u8; NONCE];
    crate::sys::random_bytes(&mut n)
        .map_err(|e| Error::io("getrandom for a handshake nonce", e))?;
    Ok(n)
}

fn hello_bytes(purpose: u8, nonce: &[u8; NONCE]) -> [u8; HELLO] {
    let mut h = [0u8; HELLO];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = purpose;
    h[6..].copy_from_slice(nonce);
    h
}

fn purpose_name(p: u8) -> &'static str {
    match p {
        PURPOSE_STORE => "the rendezvous store",
        PURPOSE_PEER => "a peer link",
        _ => "an unknown purpose",
    }
}

fn check_hello(h: &[u8; 6], purpose: u8, peer: &str, who: &str) -> Result<()> {
    if h[..4] != MAGIC {
        return Err(Error::auth(format!(
            "{who} {peer} is not an oxccl endpoint (it sent {:02x?} instead of the handshake magic)",
            &h[..4]
        )));
    }
    if h[4] != VERSION {
        return Err(Error::auth(format!(
            "{who} {peer} speaks handshake version {}, this build speaks {VERSION}: run the same oxccl on every rank",
            h[4]
        )));
    }
    if h[5] != purpose {
        return Err(Error::auth(format!(
            "{who} {peer} wants {} but this end serves {}: is the address right?",
            purpose_name(h[5]),
            purpose_name(purpose)
        )));
    }
    Ok(())
}

fn mac(secret: &[u8; 16], purpose: u8, nonce_c: &[u8], nonce_s: &[u8], role: &[u8]) -> HmacSha256 {
    keyed_mac(secret, &[LABEL, &[purpose], nonce_c, nonce_s, role])
}

/// HMAC-SHA256 under `secret` of `parts` in order: the proof of both handshakes (this one and
/// the shm transport's), each with its own label as the first part.
pub(crate) fn keyed_mac(secret: &[u8; 16], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    m
}

/// Reads and writes under one deadline.
struct Io<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
    timeout: Duration,
    peer: &'a str,
    who: &'static str,
}

impl Io<'_> {
    fn remaining(&self) -> Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out());
        }
        Ok(left)
    }

    fn timed_out(&self) -> Error {
        Error::timeout(
            None,
            format!("handshake with {} {}", self.who, self.peer),
            self.timeout,
        )
    }

    fn fail(&self, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timed_out(),
            io::ErrorKind::UnexpectedEof => Error::system(format!(
                "handshake with {} {}: connection closed mid-handshake (the peer refused us, \
                 or it is not an oxccl endpoint)",
                self.who, self.peer
            )),
            _ => Error::io(format!("handshake with {} {}", self.who, self.peer), e),
        }
    }

    fn read<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        let mut got = 0;
        while got < N {
            let left = self.remaining()?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| self.fail(e))?;
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => return Err(self.fail(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(buf)
    }

    fn write(&mut self, buf: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let left = self.remaining()?;
            self.stream
                .set_write_timeout(Some(left))
                .map_err(|e| self.fail(e))?;
            match self.stream.write(&buf[done..]) {
                Ok(0) => return Err(self.fail(io::ErrorKind::WriteZero.into())),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(())
    }
}

fn with_deadline(
    stream: &mut TcpStream,
    timeout: Duration,
    who: &'static str,
    f: impl FnOnce(&mut Io<'_>) -> Result<()>,
) -> Result<()> {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "(unknown address)".into());
    let saved_read = stream
        .read_timeout()
        .map_err(|e| Error::io("reading the socket's timeout", e))?;
    let saved_write = stream
        .write_timeout()
        .map_err(|e| Error::io("reading the socket's timeout", e))?;
    let result = {
        let mut io = Io {
            stream,
            deadline: super::store::deadline_after(Instant::now(), timeout),
            timeout,
            peer: &peer,
            who,
        };
        f(&mut io)
    };
    let restored = stream
        .set_read_timeout(saved_read)
        .and_then(|()| stream.set_write_timeout(saved_write))
        .map_err(|e| Error::io(format!("restoring the socket timeouts for {peer}"), e));
    result.and(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn macs_differ_by_role_and_purpose() {
        let k = [1u8; 16];
        let a = mac(&k, 1, &[2; 32], &[3; 32], b"client")
            .finalize()
            .into_bytes();
        let b = mac(&k, 1, &[2; 32], &[3; 32], b"server")
            .finalize()
            .into_bytes();
        let c = mac(&k, 2, &[2; 32], &[3; 32], b"client")
            .finalize()
            .into_bytes();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn purpose_mismatch_is_refused() {
        let (mut c, mut s) = pair();
        let t = std::thread::spawn(move || {
            server(&mut s, &[0; 16], PURPOSE_STORE, Duration::from_secs(5))
        });
        let e = client(&mut c, &[0; 16], PURPOSE_PEER, Duration::from_secs(5)).unwrap_err();
        assert!(
            e.kind() == crate::error::ErrorKind::Auth && {
                let m = e.message();
                m.contains("the rendezvous store")
            },
            "{e}"
        );
        assert!(
            t.join()
                .unwrap()
                .as_ref()
                .is_err_and(|e| e.kind() == crate::error::ErrorKind::Auth)
        );
    }

    #[test]
    fn garbage_is_rejected_at_once() {
        let (mut c, mut s) = pair();
        // Fewer bytes than a HELLO: the server must not wait for the rest.
        c.write_all(b"GET / HTTP/1.0\r\n").unwrap();
        let e = server(&mut s, &[0; 16], PURPOSE_PEER, Duration::from_secs(5)).unwrap_err();
        assert!(
            e.kind() == crate::error::ErrorKind::Auth && {
                let m = e.message();
                m.contains("not an oxccl endpoint")
            },
            "{e}"
        );
    }
}
