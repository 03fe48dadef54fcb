//! Bootstrap: unique id, rendezvous store, environment discovery, authenticated handshake.
//! (Stub: being written.)

use std::net::SocketAddr;

/// Like `ncclUniqueId`: the root's address and port plus a 128-bit random secret.
#[derive(Clone, PartialEq, Eq)]
pub struct UniqueId {
    /// Where the root's store listens.
    pub addr: SocketAddr,
    /// The shared secret every connection proves knowledge of.
    pub secret: [u8; 16],
}

impl UniqueId {
    /// A fresh id whose store will be served by this process (rank 0).
    pub fn new() -> crate::Result<UniqueId> {
        todo!()
    }
}
