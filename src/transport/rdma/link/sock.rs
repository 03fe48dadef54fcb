//! The link's bootstrap socket: it finishes the setup without blocking (the dialer reads the
//! acceptor's card and answers ready, the acceptor reads that ready byte), carries aborts when
//! RDMA cannot (the peer's path is not up yet, or its NIC is dead), and its EOF says the peer
//! process is gone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use super::super::setup::{CARD_LEN, Card, READY};
use super::{ABORT_MAX, RdmaLink};
use crate::error::Error;
use crate::error::Result;
use crate::transport::wire;

/// Where connection setup stands (see [`super::setup`]): the dialer waits for the acceptor's
/// card, the acceptor for the dialer's ready byte; both read them from the bootstrap socket
/// without blocking, whenever the executor looks at the link.
pub(super) enum SetupState {
    Ready,
    AwaitCard,
    AwaitReady,
}

/// First byte of an abort frame on the bootstrap socket: `'A' | len u32 | body`.
const SOCK_ABORT: u8 = b'A';
pub(super) const SOCK_BUF: usize = CARD_LEN + 5 + ABORT_MAX;

/// What a link still waits for from the peer's side of the setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaiting {
    /// The peer's card (this side dialed).
    Card,
    /// The peer's ready byte (this side accepted and connected its queue pair).
    Ready,
}

impl RdmaLink {
    /// Keeps the bootstrap connection open (its EOF says the peer process is gone), and
    /// finishes the setup over it: the link sends only once the peer's side is connected.
    pub(crate) fn watch(&mut self, sock: TcpStream, awaiting: Awaiting) {
        let _ = sock.set_nonblocking(true);
        self.sock = Some(sock);
        self.setup = match awaiting {
            Awaiting::Card => SetupState::AwaitCard,
            Awaiting::Ready => SetupState::AwaitReady,
        };
    }

    /// Whether both queue pairs are connected (data may be sent).
    pub(crate) fn is_ready(&self) -> bool {
        matches!(self.setup, SetupState::Ready)
    }

    /// Reads what the bootstrap socket has (the setup's card or ready byte, an abort, EOF)
    /// without blocking. `Ok(true)` when the link became ready.
    pub(crate) fn drive_setup(&mut self) -> Result<bool> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let was = self.is_ready();
        if let Err(e) = self.pump_sock() {
            return Err(self.fail(e));
        }
        if !self.is_ready() && self.gone {
            let e = self.setup_lost("its connection closed before the link was set up".into());
            return Err(self.fail(self.peer_abort.clone().unwrap_or(e)));
        }
        Ok(!was && self.is_ready())
    }

    pub(super) fn setup_lost(&self, what: String) -> Error {
        Error::peer_lost(
            self.peer,
            format!(
                "setting up the RDMA link to rank {}: {what} (did its RDMA setup fail, or did it exit? see its log)",
                self.peer
            ),
        )
    }

    /// Reads the socket into `sock_buf` and acts on complete items. `Ok(true)` when something
    /// changed (setup advanced, an abort or EOF arrived).
    fn pump_sock(&mut self) -> Result<bool> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(false);
        };
        let mut changed = false;
        while !self.gone && self.sock_got < self.sock_buf.len() {
            match sock.read(&mut self.sock_buf[self.sock_got..]) {
                Ok(0) => {
                    self.gone = true;
                    changed = true;
                }
                Ok(n) => self.sock_got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // Reset: as good as EOF.
                    self.gone = true;
                    changed = true;
                }
            }
        }
        while self.sock_got > 0 {
            let used = match (self.sock_buf[0], &self.setup) {
                (SOCK_ABORT, _) => {
                    if self.sock_got < 5 {
                        break;
                    }
                    let len = wire::u32_at(&self.sock_buf, 1).map_or(usize::MAX, |l| l as usize);
                    if len > ABORT_MAX {
                        return Err(self
                            .protocol(format!("a {len}-byte abort on its bootstrap connection")));
                    }
                    if self.sock_got < 5 + len {
                        break;
                    }
                    if self.peer_abort.is_none() {
                        let body = &self.sock_buf[5..5 + len];
                        self.peer_abort =
                            Some(crate::transport::tcp::decode_abort(body, self.peer));
                    }
                    5 + len
                }
                (READY, SetupState::AwaitReady) => {
                    self.setup = SetupState::Ready;
                    self.last_heard = Instant::now();
                    1
                }
                (_, SetupState::AwaitCard) => {
                    if self.sock_got < CARD_LEN {
                        break;
                    }
                    let mut b = [0u8; CARD_LEN];
                    b.copy_from_slice(&self.sock_buf[..CARD_LEN]);
                    let card = Card::decode(&b)
                        .and_then(|c| c.check(self.peer, self.rank).map(|()| c))
                        .map_err(|m| self.setup_lost(m))?;
                    self.connect(&card.qp, &card.mem)?;
                    let sock = self.sock.as_mut().expect("checked above");
                    let _ = sock.set_nonblocking(false);
                    let r = sock.write_all(&[READY]);
                    let _ = sock.set_nonblocking(true);
                    r.map_err(|e| self.setup_lost(format!("sending ready: {e}")))?;
                    self.setup = SetupState::Ready;
                    CARD_LEN
                }
                (b, _) => {
                    return Err(self.protocol(format!(
                        "unexpected byte {b:#04x} on its bootstrap connection"
                    )));
                }
            };
            self.sock_buf.copy_within(used..self.sock_got, 0);
            self.sock_got -= used;
            changed = true;
        }
        Ok(changed)
    }

    /// Reads the bootstrap socket (every few thousand calls, or when `now`): EOF says the peer
    /// process is gone, and a peer whose RDMA path is down sends its abort there too.
    pub(super) fn check_sock(&mut self, now: bool) -> bool {
        self.ticks = self.ticks.wrapping_add(1);
        if self.gone || self.sock.is_none() || !(now || self.ticks % 4096 == 0) {
            return false;
        }
        match self.pump_sock() {
            Ok(changed) => changed,
            Err(e) => {
                self.fail(e);
                true
            }
        }
    }

    /// Writes `err` as an abort frame on the bootstrap socket (`SOCK_ABORT`, the body's length,
    /// the body [`wire::encode_abort`] writes); best effort, without blocking.
    pub(super) fn abort_on_socket(&mut self, err: &Error) {
        if let (Some(s), false) = (self.sock.as_mut(), self.gone) {
            let mut frame = [0u8; 5 + ABORT_MAX];
            let n = wire::encode_abort(err, &mut frame[5..]);
            frame[0] = SOCK_ABORT;
            frame[1..5].copy_from_slice(&(n as u32).to_le_bytes());
            let _ = s.write(&frame[..5 + n]);
        }
    }
}
