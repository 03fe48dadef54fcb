//! The RDMA transport (cargo feature `rdma`): RC queue pairs, registered slot rings, data by
//! RDMA WRITE_WITH_IMM, credits by small RDMA writes, completions by polling the CQ (busy first,
//! then the completion channel's descriptor in the executor's poll).
//!
//! ```text
//!  comm.rs ── Endpoint (per communicator: the device, chosen at init) ── setup::connect (per peer:
//!     │          exchange cards over the authenticated bootstrap socket, connect the QPs)
//!     ▼
//!  link::RdmaLink ── the protocol: slots, credits, immediates, registration cache, errors
//!     │  (implements transport::Link, so the executor runs every collective over it)
//!     ▼
//!  nic::Nic  ──┬── verbs  (libibverbs via dlopen: real InfiniBand / RoCE hardware)
//!              └── emu    (in-process emulated NIC: the same ordering and completion rules;
//!                          what the tests run on)
//! ```
//!
//! Availability: libibverbs is loaded at run time. Where it is missing, or finds no active
//! port, a communicator under `OXCCL_TRANSPORT=auto` logs one INFO line and uses shm/TCP, and
//! `OXCCL_TRANSPORT=rdma` fails at init with [`ErrorKind::Unavailable`](crate::error::ErrorKind::Unavailable) saying why.
//!
//! Which peers: each rank publishes in its card whether it offers RDMA (`a:<device>`), insists
//! on it (`f:<device>`, from `OXCCL_TRANSPORT=rdma`) or neither (`-`); both ends of a pair
//! decide alike ([`wanted`]): RDMA when both offer it and either insists or they are on
//! different hosts (same-host peers use shared memory under `auto`).

pub mod emu;
pub(crate) mod link;
pub(crate) mod nic;
pub(crate) mod regcache;
pub(crate) mod setup;
pub(crate) mod verbs;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use link::{Geometry, LinkParams, RdmaLink};

use crate::error::Error;
use crate::error::Result;
use crate::transport::TransportKind;
use nic::NicDevice;

/// A communicator's RDMA device and settings.
pub(crate) struct Endpoint {
    dev: Arc<dyn NicDevice>,
    rank: usize,
    forced: bool,
    nslots: usize,
    params: LinkParams,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("device", &self.dev.name())
            .field("rank", &self.rank)
            .field("forced", &self.forced)
            .finish()
    }
}

fn env_flag(name: &str) -> std::result::Result<bool, String> {
    match std::env::var(name) {
        Err(_) => Ok(false),
        Ok(v) => match v.trim() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(format!("{name}={v:?}: expected 0 or 1")),
        },
    }
}

fn env_usize(name: &str) -> std::result::Result<Option<usize>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a number")),
        _ => Ok(None),
    }
}

impl Endpoint {
    /// Opens this rank's RDMA device at init, as `kind` asks: `Ok(None)` when RDMA is not
    /// asked for, or (under `auto`) unavailable, which one INFO line explains; `Err` when
    /// `OXCCL_TRANSPORT=rdma` and it is unavailable. `timeout` is the communicator's.
    pub(crate) fn open(
        rank: usize,
        kind: TransportKind,
        timeout: Duration,
    ) -> Result<Option<Endpoint>> {
        let forced = match kind {
            TransportKind::Rdma => true,
            TransportKind::Auto => false,
            _ => return Ok(None),
        };
        let settings = (|| -> std::result::Result<(usize, LinkParams), String> {
            let nslots = env_usize("OXCCL_IB_SLOTS")?.unwrap_or(link::DEFAULT_SLOTS);
            if !(2..=link::MAX_SLOTS).contains(&nslots) {
                return Err(format!(
                    "OXCCL_IB_SLOTS={nslots}: expected 2..={}",
                    link::MAX_SLOTS
                ));
            }
            let d = LinkParams::default();
            Ok((
                nslots,
                LinkParams {
                    zcopy_min: env_usize("OXCCL_IB_ZCOPY_MIN")?.unwrap_or(d.zcopy_min),
                    reg_persist: env_flag("OXCCL_IB_REG_PERSIST")?,
                    probe_every: (timeout / 10)
                        .clamp(Duration::from_millis(10), Duration::from_secs(1)),
                    ..d
                },
            ))
        })();
        let (nslots, params) = settings.map_err(Error::invalid_argument)?;
        let dev = match emu::current() {
            Some(f) => Ok(f.device(rank)),
            None => verbs::open_device(rank),
        };
        match dev {
            Ok(dev) => {
                crate::info!(
                    Some(rank),
                    "rdma: device {}{}",
                    dev.describe(),
                    if forced {
                        " (OXCCL_TRANSPORT=rdma: every peer)"
                    } else {
                        " (peers on other hosts)"
                    }
                );
                Ok(Some(Endpoint {
                    dev,
                    rank,
                    forced,
                    nslots,
                    params,
                }))
            }
            Err(why) if forced => Err(unavailable(rank, &why)),
            Err(why) => {
                crate::info!(Some(rank), "rdma is unavailable ({why}); using shm/tcp");
                Ok(None)
            }
        }
    }

    /// What this rank's card says about RDMA.
    pub(crate) fn card_word(&self) -> String {
        let name: String = self
            .dev
            .name()
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        format!("{}:{name}", if self.forced { "f" } else { "a" })
    }

    /// The device's name.
    pub(crate) fn device_name(&self) -> String {
        self.dev.name()
    }

    /// Makes the RDMA link to `peer` over `sock`, its authenticated bootstrap connection
    /// (`dialer`: this is the lower rank, which dialed it), with slots of `slot_size` bytes. It
    /// finishes connecting when the executor first uses it.
    pub(crate) fn connect(
        &self,
        peer: usize,
        sock: TcpStream,
        dialer: bool,
        slot_size: usize,
        deadline: Instant,
    ) -> Result<RdmaLink> {
        let geo = Geometry {
            nslots: self.nslots,
            slot_size,
        };
        let ends = setup::Ends {
            rank: self.rank,
            peer,
            dialer,
        };
        setup::start(self.dev.as_ref(), ends, sock, geo, self.params, deadline)
    }
}

/// The error for `OXCCL_TRANSPORT=rdma` where RDMA is unavailable (one line).
pub(crate) fn unavailable(rank: usize, why: &str) -> Error {
    Error::unavailable(format!(
        "rank {rank}: OXCCL_TRANSPORT=rdma, but RDMA is unavailable here: {why}; use OXCCL_TRANSPORT=auto for shm/tcp"
    ))
}

/// The card word of a rank without RDMA.
#[cfg(test)]
pub(crate) const NO_RDMA: &str = "-";

/// Whether the link between `rank` and `peer` is an RDMA link. Both ends call this with
/// mirrored arguments and reach the same answer: RDMA when both offer it and either insists or
/// they are on different hosts. A rank that insists on RDMA with a peer that does not offer it
/// gets [`ErrorKind::Unavailable`](crate::error::ErrorKind::Unavailable), on both sides.
pub(crate) fn wanted(
    ep: Option<&Endpoint>,
    rank: usize,
    peer: usize,
    peer_word: &str,
    same_host: bool,
) -> Result<bool> {
    let peer_forces = peer_word.starts_with("f:");
    let peer_offers = peer_forces || peer_word.starts_with("a:");
    match ep {
        None if peer_forces => Err(Error::unavailable(format!(
            "rank {rank} cannot make the RDMA link rank {peer} asks for (OXCCL_TRANSPORT=rdma there): this rank \
             offers no RDMA (its transport setting, or no RDMA here; see its INFO log)"
        ))),
        None => Ok(false),
        Some(ep) if !peer_offers => {
            if ep.forced {
                Err(Error::unavailable(format!(
                    "rank {rank}: OXCCL_TRANSPORT=rdma, but rank {peer} offers no RDMA (see its log)"
                )))
            } else {
                Ok(false)
            }
        }
        Some(ep) => Ok(ep.forced || peer_forces || !same_host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(forced: bool) -> Endpoint {
        Endpoint {
            dev: emu::Fabric::new().device(0),
            rank: 0,
            forced,
            nslots: 4,
            params: LinkParams::default(),
        }
    }

    #[test]
    fn both_ends_decide_alike() {
        let (auto, force) = (ep(false), ep(true));
        let words = |e: Option<&Endpoint>| e.map_or(NO_RDMA.to_string(), |e| e.card_word());
        let cases: [Option<&Endpoint>; 3] = [None, Some(&auto), Some(&force)];
        for a in cases {
            for b in cases {
                for same in [false, true] {
                    let x = wanted(a, 0, 1, &words(b), same);
                    let y = wanted(b, 1, 0, &words(a), same);
                    match (&x, &y) {
                        (Ok(p), Ok(q)) => assert_eq!(p, q),
                        (Err(_), Err(_)) => {}
                        _ => panic!("{a:?} vs {b:?}, same host {same}: {x:?} / {y:?}"),
                    }
                }
            }
        }
        assert!(!wanted(Some(&auto), 0, 1, &auto.card_word(), true).unwrap());
        assert!(wanted(Some(&auto), 0, 1, &auto.card_word(), false).unwrap());
        assert!(wanted(Some(&auto), 0, 1, &force.card_word(), true).unwrap());
        assert!(wanted(Some(&force), 0, 1, NO_RDMA, false).is_err());
        assert!(!wanted(None, 0, 1, &auto.card_word(), false).unwrap());
    }
}
