//! # oxccl — collective communication in Rust
//!
//! Peers expose registered buffers, data moves in chunks straight into them, and completion is
//! signalled, not negotiated (the RDMA style). The layers, top to bottom:
//!
//! ```text
//!  comm        Communicator: init, collectives, barrier          (src/comm.rs)
//!  algo        schedules: (collective, nranks, rank, count) -> Program, pure data
//!  exec        runs one rank's Program over its links, with deadlines; reduces on receive
//!  transport   Link: post_send / poll_recv / release, credits    (tcp; shm and rdma to come)
//!  bootstrap   unique id, rendezvous store, env discovery, HMAC handshake
//! ```
//!
//! ```no_run
//! use oxccl::{Communicator, Config, ReduceOp, UniqueId};
//! let id = UniqueId::new().unwrap();           // on rank 0; send `id.to_string()` to the others
//! let comm = Communicator::init(0, 1, &id, Config::default()).unwrap();
//! let mut grads = vec![1.0f32; 1024];
//! comm.all_reduce(&mut grads, ReduceOp::Sum).unwrap();
//! ```

pub mod log;

pub mod algo;
pub mod bootstrap;
pub mod comm;
pub mod error;
pub mod exec;
pub mod reduce;
pub mod sim;
pub mod sys;
pub mod topo;
pub mod transport;
pub mod tune;

pub use algo::{Algorithm, Collective};
pub use bootstrap::UniqueId;
pub use comm::{Call, Communicator, Config, NO_COLOR, Request, Scope, TransportKind};
pub use error::{Error, Result};
pub use reduce::{DataType, Element, ReduceOp};
