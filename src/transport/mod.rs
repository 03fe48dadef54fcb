//! Links: one per peer pair, in the RDMA style.
//!
//! The receiver owns a small ring of registered slots; the sender writes a message into the next
//! free slot and publishes it; the receiver consumes it in place (reducing straight out of the
//! slot) and releases the slot, which returns the credit. Sends are posted from the caller's
//! memory and complete asynchronously, in order. A link never allocates on the data path.
//!
//! Transports: [`shm`] (ranks on one host), [`tcp`] (anywhere), `rdma` (cargo feature `rdma`:
//! InfiniBand / RoCE verbs, and an emulated NIC for tests). How the executor waits on a mix of
//! them is in [`wait`].

pub mod connect;
pub mod framing;
pub(crate) mod links;
pub(crate) mod mem;
pub mod mpath;
mod paths;
#[cfg(feature = "rdma")]
pub(crate) mod rdma;
pub mod shm;
pub mod tcp;
pub(crate) mod wait;
pub mod wire;

use crate::error::{Error, Result};
pub use mem::{Region, RegionMut};

/// Which transport links use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Shared memory for peers on this host (same boot id, host name and network namespace,
    /// confirmed by passing a descriptor), TCP for the rest.
    Auto,
    /// TCP sockets, anywhere.
    Tcp,
    /// Shared memory between ranks on one host.
    Shm,
    /// RDMA (InfiniBand / RoCE verbs) to every peer; needs the cargo feature `rdma` and a device.
    Rdma,
}

impl TransportKind {
    /// Parses `auto`, `tcp`, `shm` or `rdma`.
    pub fn parse(s: &str) -> Option<TransportKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(TransportKind::Auto),
            "tcp" | "socket" => Some(TransportKind::Tcp),
            "shm" => Some(TransportKind::Shm),
            "rdma" | "ib" | "verbs" => Some(TransportKind::Rdma),
            _ => None,
        }
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Auto => "auto",
            TransportKind::Tcp => "tcp",
            TransportKind::Shm => "shm",
            TransportKind::Rdma => "rdma",
        }
    }
}

/// The signature that travels with every message of a collective, so that ranks which called
/// different collectives (or the same one with different arguments) fail with a clear
/// [`ErrorKind::Mismatch`](crate::error::ErrorKind::Mismatch) instead of exchanging wrong data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Tag {
    /// The collective's sequence number on this communicator.
    pub seq: u64,
    /// Element count.
    pub count: u64,
    /// Which collective (`algo::Collective` as u8).
    pub coll: u8,
    /// Element type (`DataType` as u8).
    pub dtype: u8,
    /// Reduction operator (`ReduceOp` as u8; 0xff when none).
    pub op: u8,
    /// Root rank (u32::MAX when none).
    pub root: u32,
}

impl Tag {
    /// Encoded size.
    pub const LEN: usize = 24;

    /// Little-endian encoding.
    pub fn encode(&self) -> [u8; Tag::LEN] {
        let mut b = [0u8; Tag::LEN];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.count.to_le_bytes());
        b[16] = self.coll;
        b[17] = self.dtype;
        b[18] = self.op;
        b[20..24].copy_from_slice(&self.root.to_le_bytes());
        b
    }

    /// Decodes [`Tag::encode`]'s output.
    pub fn decode(b: &[u8; Tag::LEN]) -> Tag {
        Tag::parse(b).unwrap_or_default()
    }

    /// Decodes the first [`Tag::LEN`] bytes of `b`; `None` if it is shorter.
    pub fn parse(b: &[u8]) -> Option<Tag> {
        Some(Tag {
            seq: wire::u64_at(b, 0)?,
            count: wire::u64_at(b, 8)?,
            coll: b[16],
            dtype: b[17],
            op: b[18],
            root: wire::u32_at(b, 20)?,
        })
    }
}

/// One end of a connection to one peer.
pub trait Link: Send {
    /// The peer's rank.
    fn peer(&self) -> usize;

    /// The largest message in bytes (the receiver's slot size).
    fn max_message(&self) -> usize;

    /// Posts a send of the bytes of `data`, tagged `tag`. Returns `Ok(false)` when the send
    /// window (the credits) is full; call [`Link::progress`] and retry. The link may read `data`
    /// until [`Link::take_send_completions`] has reported this send complete (sends complete in
    /// the order they were posted), or it is aborted or dropped: the region's contract keeps it
    /// valid and unmodified that long (see [`Region::from_raw`]).
    fn post_send(&mut self, tag: &Tag, data: Region<'_>) -> Result<bool>;

    /// Completes, without the peer, every posted send the link still holds for the peer to
    /// take from the sender's memory (shm's pull and registered memory leave a large message
    /// there until the receiver reads it): the link copies them out. Returns whether any send
    /// completed. The executor calls it when the rank has been idle a while with a receive
    /// whose message has arrived waiting for such a send (or idle longer, whatever it waits
    /// for): the peer may be waiting the same way (two ranks exchanging in place, each
    /// receiving into what it sent), and neither would move. Links whose sends never wait for a
    /// receive step keep the default.
    fn settle_sends(&mut self) -> Result<bool> {
        Ok(false)
    }

    /// Drives I/O without blocking. Returns whether anything moved.
    fn progress(&mut self) -> Result<bool>;

    /// How many posted sends completed, in post order, since the last call.
    fn take_send_completions(&mut self) -> usize;

    /// Whether every send is complete as soon as [`Link::post_send`] accepts it (its data
    /// copied out), so that one completion is ready to take right after each post: the
    /// executor may then run small Programs step by step in order.
    fn completes_on_post(&self) -> bool {
        false
    }

    /// The next message in arrival order, if it has fully arrived. It stays in its slot until
    /// [`Link::release_recv`]. A peer's abort arrives here as `Err`.
    fn peek_recv(&mut self) -> Result<Option<(Tag, &[u8])>>;

    /// Releases the message last returned by [`Link::peek_recv`], returning its slot.
    fn release_recv(&mut self);

    /// The length of the message [`Link::peek_recv`] last returned when its data stayed in the
    /// sender's memory (peek_recv then gave an empty slice), to be read with
    /// [`Link::pull_recv`]; 0 for any other message.
    fn pull_len(&self) -> usize {
        0
    }

    /// Reads the message [`Link::pull_len`] describes out of the sender's memory, handing it to
    /// `f` in pieces `(offset, bytes)`, in order, every piece but the last a multiple of 64
    /// bytes (shm: cache-sized pieces, so the caller reduces each while it is in cache). Then
    /// [`Link::release_recv`] as usual. Does nothing for other messages.
    fn pull_recv(&mut self, f: &mut dyn FnMut(usize, &[u8])) -> Result<()> {
        let _ = f;
        Ok(())
    }

    /// Offers `dst` as the final destination of message number `index` (counting this link's
    /// received messages from 0), so the transport can place it there directly instead of in a
    /// slot (RDMA's posted receive). It is a hint: a transport may ignore it, and a message whose
    /// length differs from `dst`'s lands in a slot as usual. When it is used, [`Link::peek_recv`]
    /// returns a slice of `dst` itself. The link may write `dst` until that message has been
    /// released or [`Link::cancel_recvs`] has been called: the region's contract keeps it valid
    /// and untouched by anything else that long (see [`RegionMut::from_raw`]).
    fn post_recv(&mut self, index: u64, dst: RegionMut<'_>) {
        let _ = (index, dst);
    }

    /// How many messages this link has released since it was created: the index
    /// [`Link::post_recv`] uses for the next message to arrive. Links that ignore posted
    /// receives may leave the default.
    fn released(&self) -> u64 {
        0
    }

    /// Forgets every posted receive; after it the link never writes to a posted destination.
    /// A receive already partly placed makes the link unusable (it is failed).
    fn cancel_recvs(&mut self) {}

    /// Adds the file descriptors (and events) that signal progress on this link.
    fn wait_interest(&self, out: &mut Vec<libc::pollfd>);

    /// Called before the executor sleeps: a link may check here that its peer is still alive
    /// (shm: has its socket hit EOF?). Returns true when something changed and the executor
    /// should look at the link again instead of sleeping.
    fn before_wait(&mut self) -> bool {
        false
    }

    /// The doorbell the peer rings when it publishes a message or returns a credit, for links
    /// without descriptors to poll (shm). All shm links of one rank share one doorbell.
    fn doorbell(&self) -> Option<&std::sync::Arc<dyn wait::Bell>> {
        None
    }

    /// Tells the peer, best effort and without blocking, that this rank failed with `err`.
    /// The link is unusable afterwards.
    fn send_abort(&mut self, err: &Error);

    /// Which transport this is ("tcp", "shm", "rdma").
    fn transport(&self) -> &'static str;
}
