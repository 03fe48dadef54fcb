//! Connecting an RDMA link over the two ranks' authenticated bootstrap TCP connection. Each
//! side sends a fixed-size card (queue pair address: LID, GID, QPN, PSN, MTU, link layer;
//! memory: rkey, slot, abort and credit addresses, geometry):
//!
//! ```text
//! dialer (lower rank)                          acceptor (higher rank)
//!   open QP, post receives, send card D  ──►     read D; open QP, post receives,
//!   (returns: the link finishes later)            connect QP to D, send card A
//!   read A (when the executor looks);    ◄──      (returns: the link finishes later)
//!   connect QP to A, send ready          ──►     read ready (when the executor looks)
//!   sends allowed                                 sends allowed
//! ```
//!
//! Neither side blocks on the other's main thread beyond what the TCP dial already needs (the
//! dialer's card is written right after its dial), so ranks connecting in any order, even in a
//! cycle, never wait on each other; the executor's deadline bounds the rest. The socket then
//! stays open as the link's liveness signal.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::link::{Awaiting, Geometry, LinkParams, MemInfo, RdmaLink};
use super::nic::{NicDevice, QpAddress};
use crate::error::Error;
use crate::error::Result;
use crate::transport::wire;

const MAGIC: u32 = 0x4249_584f; // "OXIB"
const VERSION: u8 = 1;
/// Encoded card size.
pub(crate) const CARD_LEN: usize = 96;
/// The byte that says "my queue pair is connected to yours".
pub(crate) const READY: u8 = b'R';

/// What one side of a link tells the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Card {
    /// Sending rank.
    pub from: u32,
    /// Receiving rank.
    pub to: u32,
    /// Queue pair address.
    pub qp: QpAddress,
    /// Memory.
    pub mem: MemInfo,
}

impl Card {
    /// Little-endian encoding.
    pub(crate) fn encode(&self) -> [u8; CARD_LEN] {
        let mut b = [0u8; CARD_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = self.qp.link_layer;
        b[6] = self.qp.mtu;
        b[8..10].copy_from_slice(&self.qp.lid.to_le_bytes());
        b[12..16].copy_from_slice(&self.qp.qpn.to_le_bytes());
        b[16..20].copy_from_slice(&self.qp.psn.to_le_bytes());
        b[20..24].copy_from_slice(&self.mem.rkey.to_le_bytes());
        b[24..40].copy_from_slice(&self.qp.gid);
        b[40..48].copy_from_slice(&self.mem.rx_slots.to_le_bytes());
        b[48..56].copy_from_slice(&self.mem.abort_in.to_le_bytes());
        b[56..64].copy_from_slice(&self.mem.credit_in.to_le_bytes());
        b[64..68].copy_from_slice(&self.mem.nslots.to_le_bytes());
        b[68..72].copy_from_slice(&self.mem.slot_size.to_le_bytes());
        b[72..76].copy_from_slice(&self.from.to_le_bytes());
        b[76..80].copy_from_slice(&self.to.to_le_bytes());
        b
    }

    /// Parses a card; never panics.
    pub(crate) fn decode(b: &[u8; CARD_LEN]) -> std::result::Result<Card, String> {
        let u32_at = |i| wire::u32_at(b, i).unwrap_or(0);
        let u64_at = |i| wire::u64_at(b, i).unwrap_or(0);
        if u32_at(0) != MAGIC || b[4] != VERSION {
            return Err(format!(
                "not an oxccl v{VERSION} RDMA card (magic {:#x}, version {})",
                u32_at(0),
                b[4]
            ));
        }
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[24..40]);
        let c = Card {
            from: u32_at(72),
            to: u32_at(76),
            qp: QpAddress {
                lid: wire::u16_at(b, 8).unwrap_or(0),
                gid,
                qpn: u32_at(12),
                psn: u32_at(16),
                mtu: b[6],
                link_layer: b[5],
            },
            mem: MemInfo {
                rx_slots: u64_at(40),
                abort_in: u64_at(48),
                credit_in: u64_at(56),
                rkey: u32_at(20),
                nslots: u32_at(64),
                slot_size: u32_at(68),
            },
        };
        if c.qp.qpn > 0xff_ffff || c.qp.psn > 0xff_ffff || !(1..=5).contains(&c.qp.mtu) {
            return Err(format!(
                "bad queue pair address (qpn {:#x}, psn {:#x}, mtu {})",
                c.qp.qpn, c.qp.psn, c.qp.mtu
            ));
        }
        Ok(c)
    }

    /// Whether this card is the one rank `from` sends rank `to`.
    pub(crate) fn check(&self, from: usize, to: usize) -> std::result::Result<(), String> {
        if self.from as usize != from || self.to as usize != to {
            return Err(format!(
                "expected the card from rank {from} to rank {to}, got one from rank {} to rank {}",
                self.from, self.to
            ));
        }
        Ok(())
    }
}

fn io_err(peer: usize, what: &str, e: std::io::Error) -> Error {
    if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) {
        return Error::timed_out(
            Some(peer),
            format!("setting up the RDMA link to rank {peer}: {what}: no answer in time"),
        );
    }
    Error::peer_lost(
        peer,
        format!(
            "setting up the RDMA link to rank {peer}: {what}: {e} (did its RDMA setup fail? see its log)"
        ),
    )
}

fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Which link: this rank, the peer, and whether this rank dialed (the lower rank does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ends {
    /// This rank.
    pub rank: usize,
    /// The peer.
    pub peer: usize,
    /// Whether this rank dialed the bootstrap connection.
    pub dialer: bool,
}

/// Starts the RDMA link `ends` over `sock` (the two ranks' authenticated bootstrap
/// connection), on `dev`. The link finishes its setup by itself
/// when it is first used ([`RdmaLink::drive_setup`]).
pub(crate) fn start(
    dev: &dyn NicDevice,
    ends: Ends,
    mut sock: TcpStream,
    geo: Geometry,
    params: LinkParams,
    deadline: Instant,
) -> Result<RdmaLink> {
    let Ends { rank, peer, dialer } = ends;
    let nic = dev.open(geo.caps())?;
    let mut link = RdmaLink::new(rank, peer, nic, dev.name(), geo, params)?;
    let mine = Card {
        from: rank as u32,
        to: peer as u32,
        qp: link.address(),
        mem: link.mem_info(),
    };
    sock.set_nodelay(true)
        .map_err(|e| io_err(peer, "TCP_NODELAY", e))?;
    sock.set_write_timeout(Some(left(deadline)))
        .and_then(|()| sock.set_read_timeout(Some(left(deadline))))
        .map_err(|e| io_err(peer, "socket timeouts", e))?;
    if dialer {
        sock.write_all(&mine.encode())
            .map_err(|e| io_err(peer, "sending our card", e))?;
        link.watch(sock, Awaiting::Card);
        return Ok(link);
    }
    let mut b = [0u8; CARD_LEN];
    sock.read_exact(&mut b)
        .map_err(|e| io_err(peer, "reading its card", e))?;
    let theirs = Card::decode(&b)
        .and_then(|c| c.check(peer, rank).map(|()| c))
        .map_err(|m| {
            Error::peer_lost(
                peer,
                format!("setting up the RDMA link to rank {peer}: {m}"),
            )
        })?;
    link.connect(&theirs.qp, &theirs.mem)?;
    sock.write_all(&mine.encode())
        .map_err(|e| io_err(peer, "sending our card", e))?;
    link.watch(sock, Awaiting::Ready);
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_round_trip_and_garbage_is_refused() {
        let c = Card {
            from: 3,
            to: 5,
            qp: QpAddress {
                lid: 0x1234,
                gid: [7; 16],
                qpn: 0xabcdef,
                psn: 0x123456,
                mtu: 5,
                link_layer: 2,
            },
            mem: MemInfo {
                rx_slots: 0x7f00_0000_1000,
                abort_in: 0x7f00_0000_0800,
                credit_in: 0x7f00_0000_0000,
                rkey: 0xdead_beef,
                nslots: 4,
                slot_size: 1 << 19,
            },
        };
        assert_eq!(Card::decode(&c.encode()), Ok(c));
        assert!(Card::decode(&[0u8; CARD_LEN]).is_err());
        let mut b = c.encode();
        b[6] = 9;
        assert!(Card::decode(&b).is_err());
        // Any bytes: an error or a card, never a panic.
        let mut x = 1u64;
        for _ in 0..1000 {
            let mut b = c.encode();
            for _ in 0..4 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                b[(x >> 33) as usize % CARD_LEN] = (x >> 13) as u8;
            }
            let _ = Card::decode(&b);
        }
    }

    fn ends(rank: usize, peer: usize, dialer: bool) -> Ends {
        Ends { rank, peer, dialer }
    }

    /// Drives both links' setup until both are ready (or one fails).
    fn finish(a: &mut RdmaLink, b: &mut RdmaLink) -> Result<()> {
        let d = Instant::now() + Duration::from_secs(20);
        while !(a.is_ready() && b.is_ready()) {
            a.drive_setup()?;
            b.drive_setup()?;
            assert!(Instant::now() < d, "setup did not finish");
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    #[test]
    fn the_dialer_never_waits_for_the_acceptor() {
        use super::super::emu::Fabric;
        let f = Fabric::new();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let geo = Geometry {
            nslots: 4,
            slot_size: 4096,
        };
        let p = LinkParams::default();
        let deadline = Instant::now() + Duration::from_secs(20);
        // The dialer returns before the acceptor has even accepted.
        let s = TcpStream::connect(addr).unwrap();
        let mut a = start(f.device(0).as_ref(), ends(0, 1, true), s, geo, p, deadline).unwrap();
        assert!(!a.is_ready());
        let (s, _) = l.accept().unwrap();
        let mut b = start(f.device(1).as_ref(), ends(1, 0, false), s, geo, p, deadline).unwrap();
        finish(&mut a, &mut b).unwrap();
        assert_eq!((a.device(), b.device()), ("emu:0", "emu:1"));
        // Mismatched ranks are refused: the acceptor at once, the dialer when it looks.
        let s = TcpStream::connect(addr).unwrap();
        let mut a = start(f.device(0).as_ref(), ends(0, 2, true), s, geo, p, deadline).unwrap();
        let (s, _) = l.accept().unwrap();
        assert!(start(f.device(1).as_ref(), ends(1, 0, false), s, geo, p, deadline).is_err());
        let d = Instant::now() + Duration::from_secs(20);
        loop {
            match a.drive_setup() {
                Err(e) if e.kind() == crate::error::ErrorKind::PeerLost && e.peer() == Some(2) => {
                    break;
                }
                Ok(false) => assert!(Instant::now() < d),
                other => panic!("{other:?}"),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
