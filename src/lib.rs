//! # oxccl — collective communication in Rust
//!
//! Peers expose registered buffers, data moves in chunks straight into them, and completion is
//! signalled, not negotiated (the RDMA style). The layers, top to bottom (data flows down,
//! results flow up; no layer uses one above it):
//!
//! ```text
//!  comm        Communicator: init, collectives, groups and non-blocking calls, split, shrink,
//!              grow, revoke, abort; peer-to-peer liveness          (src/comm.rs, src/comm/)
//!  tune        the cost model that picks an algorithm per call          (src/tune.rs, src/tune/)
//!  algo        schedules: (collective, nranks, rank, count) -> Program, pure data; the
//!              symbolic verifier                                        (src/algo/)
//!  exec        runs one rank's Program over its links, with deadlines; reduces on receive
//!                                                                      (src/exec.rs, src/reduce.rs)
//!  transport   Link: post_send / poll_recv / release, credits: shared memory, TCP, multi-path
//!              TCP, RDMA verbs (feature `rdma`); connection setup       (src/transport/)
//!  bootstrap   unique id, rendezvous store, launcher env discovery, HMAC handshake
//!                                                                      (src/bootstrap/)
//!  sys         the few unsafe syscall wrappers                          (src/sys/)
//!  sim         replays the same Programs on a network model, 10^4+ ranks (src/sim.rs, src/sim/)
//! ```
//!
//! The C ABI (`liboxccl.so`, `oxccl.h`) is the `oxccl-ffi` crate in `ffi/`, and the Python
//! package binds that; the README has both.
//!
//! ```no_run
//! use oxccl::{Communicator, Config, ReduceOp, UniqueId};
//! let id = UniqueId::new().unwrap();           // on rank 0; send `id.to_string()` to the others
//! let comm = Communicator::init(0, 1, &id, Config::default()).unwrap();
//! let mut grads = vec![1.0f32; 1024];
//! comm.all_reduce(&mut grads, ReduceOp::Sum).unwrap();
//! ```

pub mod log;
#[macro_use]
mod enum_table;

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
pub use error::{Error, ErrorKind, Result};
pub use reduce::{DataType, Element, ReduceOp};
