//! # oxccl's C ABI: `liboxccl.so`, `liboxccl.a` and `include/oxccl.h`
//!
//! NCCL-shaped, so code that calls NCCL switches by renaming `nccl` to `oxccl` (and dropping the
//! CUDA stream argument: oxccl works on host memory and its calls return when the data is there).
//!
//! ```c
//! oxcclComm_t comm;
//! if (oxcclCommInitFromEnv(&comm) != oxcclSuccess) { puts(oxcclGetLastError(NULL)); return 1; }
//! oxcclAllReduce(grads, grads, n, oxcclFloat32, oxcclSum, comm);   /* in place */
//! oxcclCommDestroy(comm);
//! ```
//!
//! Rules every function keeps (the rustls-ffi discipline):
//! - every body runs inside a panic boundary: a panic becomes `oxcclInternalError`, never an
//!   unwind into C;
//! - null pointers, out-of-range enums, negative or overflowing counts return
//!   `oxcclInvalidArgument` with a message, never a crash;
//! - out-parameters are written only on success;
//! - `oxcclCommDestroy(NULL)` is fine;
//! - after a failure, `oxcclGetLastError(comm)` says what happened (per communicator), and
//!   `oxcclGetLastError(NULL)` says it for the last failure on the calling thread (the only place
//!   an init failure can be read, since there is no communicator yet).
//!
//! The header is generated from this crate by cbindgen and committed; `tests/header.rs` fails
//! when it drifts (`OXCCL_BLESS=1 cargo test -p oxccl-ffi --test header` rewrites it).

#![warn(unsafe_op_in_unsafe_fn)]
// The C names (oxcclComm_t, oxcclInt8, sendbuff...) are the point of this crate.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]

mod boundary;
mod coll;
mod comm;
mod group;
mod mem;
mod op;
mod persistent;
mod premul;
mod types;

pub use coll::*;
pub use comm::*;
pub use group::*;
pub use mem::*;
pub use persistent::*;
pub use premul::*;
pub use types::*;

pub use boundary::{oxcclGetErrorString, oxcclGetLastError};
