//! Registered memory, as NCCL's `ncclMemAlloc`/`ncclMemFree`: host memory that other ranks on
//! the same host map, so a collective on it moves each byte once between processes (the peer
//! reduces straight out of it, or writes its result straight into it) instead of through the
//! shared-memory slots or the kernel. Any buffer works with every call; this one is faster
//! between processes on a host.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{LazyLock, Mutex};

use core_oxccl::{Error, SharedMem};

use crate::boundary::{guard, null};
use crate::comm::put;
use crate::types::oxcclResult_t;

/// Live allocations by address.
static ALLOCS: LazyLock<Mutex<HashMap<usize, SharedMem>>> = LazyLock::new(Default::default);

/// Allocates `size` bytes (at least 1, zeroed, page aligned) of registered memory and writes
/// its address to `*ptr`. Free it with `oxcclMemFree`.
///
/// # Safety
/// `ptr` is NULL (an error) or points to a writable `void*`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclMemAlloc(ptr: *mut *mut c_void, size: usize) -> oxcclResult_t {
    guard("oxcclMemAlloc", None, || {
        if ptr.is_null() {
            return Err(null("ptr"));
        }
        let m = SharedMem::new(size)?;
        let p = m.as_ptr();
        ALLOCS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(p as usize, m);
        // SAFETY: non-null, and the caller passes a writable void*.
        unsafe { put(ptr, p.cast::<c_void>()) };
        Ok(())
    })
}

/// Frees memory from `oxcclMemAlloc` (NULL is fine: nothing happens). No collective may be
/// using it.
///
/// # Safety
/// `ptr` is NULL or an address `oxcclMemAlloc` returned and not yet freed (any other address
/// is refused with `oxcclInvalidArgument`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclMemFree(ptr: *mut c_void) -> oxcclResult_t {
    guard("oxcclMemFree", None, || {
        if ptr.is_null() {
            return Ok(());
        }
        let freed = ALLOCS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(ptr as usize));
        match freed {
            Some(m) => {
                drop(m);
                Ok(())
            }
            None => Err(Error::invalid_argument(format!(
                "{ptr:p} was not allocated by oxcclMemAlloc (or was freed already)"
            ))),
        }
    })
}
