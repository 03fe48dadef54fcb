//! # oxccl — collective communication in Rust
//!
//! Peers expose registered buffers, data moves in chunks straight into them, and completion is
//! signalled, not negotiated (the RDMA style). The modules, as layers from top to bottom (data
//! flows down, results flow up):
//!
//! ```text
//!  comm        Communicator: init, collectives, groups and non-blocking calls, split, shrink,
//!              grow, revoke, abort; peer-to-peer liveness          (src/comm.rs, src/comm/)
//!  tune        the cost model that picks an algorithm per call          (src/tune.rs, src/tune/)
//!  sim         replays the same Programs on a network model, 10^4+ ranks (src/sim.rs, src/sim/)
//!  algo        schedules: (collective, nranks, rank, count) -> Program, pure data; the
//!              symbolic verifier (unit tests)                           (src/algo/)
//!  topo        the host map and topology order, this host's NICs       (src/topo/)
//!  exec        runs one rank's Program over its links, with deadlines; reduces on receive
//!                                                          (src/exec.rs; kernels in src/reduce.rs)
//!  transport   Link: post_send / poll_recv / release, credits: shared memory, TCP, multi-path
//!              TCP, RDMA verbs (feature `rdma`); connection setup; a call's memory as
//!              bounds-checked regions (mem.rs: where buffers become pointers)
//!                                                                       (src/transport/)
//!  bootstrap   unique id, rendezvous store, launcher env discovery, HMAC handshake, card
//!              exchange                                                 (src/bootstrap/)
//!  sys         the unsafe syscall wrappers (memfd, mmap, futex, SCM_RIGHTS, affinity)
//!                                                                      (src/sys/)
//!  error, log  Error and Result; OXCCL_DEBUG logging to stderr    (src/error.rs, src/log.rs)
//! ```
//!
//! `unsafe` lives only in `sys`, `transport` (its `mem` module is where a call's buffers become
//! pointers), the reduce kernels and the C ABI crate; `comm`, `exec`, `algo`, `tune`, `sim`,
//! `topo` and `bootstrap` have none.
//!
//! The public API is what this page lists: [`Communicator`] and its calls ([`Call`],
//! [`Request`], [`Scope`]), [`Config`] and [`TransportKind`], [`Error`], the element types and
//! operators ([`DataType`], [`Element`], [`ReduceOp`]), [`Algorithm`] and [`Collective`],
//! [`UniqueId`], the [`Topology`] a communicator sees, and the simulator ([`sim`]). Everything
//! else is crate-private; the hidden `internals` module re-exports the few internals that the
//! project's own tools, tests, fuzz targets and C ABI crate use, with no stability promise.
//!
//! The command-line tools `oxccl-perf` (bandwidth, as nccl-tests) and `oxccl-sim` are the
//! `oxccl-tools` crate in `tools/`; the C ABI (`liboxccl.so`, `oxccl.h`) is the `oxccl-ffi`
//! crate in `ffi/`, and the Python package binds that; the README has all three.
//!
//! ```no_run
//! use oxccl::{Communicator, Config, ReduceOp, UniqueId};
//! let id = UniqueId::new().unwrap();           // on rank 0; send `id.to_string()` to the others
//! let comm = Communicator::init(0, 1, &id, Config::default()).unwrap();
//! let mut grads = vec![1.0f32; 1024];
//! comm.all_reduce(&mut grads, ReduceOp::Sum).unwrap();
//! ```

mod log;
#[allow(unused_imports)] // not every build logs at every level
pub(crate) use log::{info, trace, warn};
#[macro_use]
mod enum_table;

// The layers without `unsafe` keep it out (see the module docs above).
#[forbid(unsafe_code)]
mod algo;
#[forbid(unsafe_code)]
mod bootstrap;
#[forbid(unsafe_code)]
mod comm;
mod error;
#[forbid(unsafe_code)]
mod exec;
mod reduce;
#[forbid(unsafe_code)]
pub mod sim;
mod sys;
#[forbid(unsafe_code)]
mod topo;
mod transport;
#[forbid(unsafe_code)]
mod tune;

pub use algo::{Algorithm, Collective};
pub use bootstrap::{StoreStats, UniqueId};
pub use comm::{Call, Communicator, Config, NO_COLOR, Request, Scope, TransportKind};
pub use error::{Error, ErrorKind, Result};
pub use reduce::{DataType, Element, ReduceOp};
pub use topo::{Nic, NicKind, Topology};
pub use transport::shm::reg::SharedMem;

/// Not API: the internals that oxccl's own tools (`tools/`), integration tests, fuzz targets
/// (`fuzz/`), benchmarks, examples and C ABI crate (`ffi/`) reach into, mirrored by module. No
/// stability promise; users have the items above.
#[doc(hidden)]
pub mod internals {
    /// Schedules.
    pub mod algo {
        pub use crate::algo::{Shape, build, build_on};
    }
    /// Unique id, store, handshake, launcher discovery.
    pub mod bootstrap {
        pub use crate::bootstrap::store;
        pub use crate::bootstrap::{
            EnvInfo, PURPOSE_PEER, PURPOSE_STORE, StoreClient, StoreServer, UNIQUE_ID_BYTES,
            UniqueId, barrier, discover_from, handshake, parse_secret_hex, secret_hex,
        };
    }
    /// Communicator constants.
    pub mod comm {
        pub use crate::comm::DEFAULT_CHUNK;
    }
    /// Reduction kernels and their references.
    pub mod reduce {
        pub use crate::reduce::par;
        pub use crate::reduce::{
            finish_avg_bytes, reduce_bytes, reduce_slice, reduce3_bytes, reference, scale_bytes,
        };
    }
    /// System calls.
    pub mod sys {
        pub use crate::sys::shm;
        pub use crate::sys::{allowed_cpus, bind_to_cpu, hostname, random_bytes};
    }
    /// Topology.
    pub mod topo {
        pub use crate::topo::HostMap;
    }
    /// Links.
    pub mod transport {
        pub use crate::transport::{
            Link, Region, RegionMut, Tag, connect, framing, mpath, shm, tcp, wire,
        };
        /// The RDMA transport's emulated NIC, and device probing.
        #[cfg(feature = "rdma")]
        pub mod rdma {
            pub use crate::transport::rdma::emu;
            /// libibverbs.
            pub mod verbs {
                pub use crate::transport::rdma::verbs::open_device;
            }
        }
    }
    /// The cost model.
    pub mod tune {
        pub use crate::tune::{
            Model, SHM, TCP, Transport, choose, choose_with, chunk, cost, fanout, formula, pick,
        };
    }
}
