//! Bootstrap: how ranks find each other and prove they belong to the same job.
//!
//! - [`UniqueId`] (`id`): the root's address plus a random 128-bit secret, like `ncclUniqueId`.
//!   [`UniqueId::new`] also binds the store's listener in the calling process, so rank 0's init
//!   there serves the store on it.
//! - [`env`](mod@env): rank, world size and root from the launcher (oxccl, torchrun, Slurm, Open MPI, PMI).
//! - [`handshake`]: the mutual HMAC-SHA256 challenge-response that every connection (to the
//!   store and between ranks) runs before any other byte is trusted.
//! - [`store`]: the rendezvous key-value store rank 0 serves ([`StoreServer`]) and every rank
//!   uses ([`StoreClient`], [`barrier`]); every wait has a deadline and every length read from
//!   the network is bounded before anything is allocated.
//! - [`exchange`]: the card exchange, an all-gather of every rank's card over a binomial tree
//!   of the ranks (the store serves two small requests per rank, not n).
//! - [`net`]: choosing the local address to listen on (`OXCCL_SOCKET_IFNAME`).
//!
//! ```
//! use std::time::Duration;
//! use oxccl::internals::bootstrap::{StoreClient, StoreServer, UniqueId};
//!
//! let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).unwrap();
//! let server = StoreServer::start(id.take_listener().unwrap(), id.secret).unwrap();
//! let mut client = StoreClient::connect(id.addr, &id.secret, Duration::from_secs(5)).unwrap();
//! client.set("card/0", b"hello").unwrap();
//! assert_eq!(client.get("card/0", Duration::from_secs(1)).unwrap(), b"hello");
//! drop(server);
//! ```

pub(crate) mod env;
pub(crate) mod exchange;
pub mod handshake;
pub(crate) mod id;
pub(crate) mod net;
pub mod store;

pub use env::{EnvInfo, discover_from};
pub use handshake::{PURPOSE_PEER, PURPOSE_STORE};
pub use id::{UNIQUE_ID_BYTES, UniqueId, parse_secret_hex, secret_hex};
pub use store::{StoreClient, StoreServer, StoreStats, barrier};
