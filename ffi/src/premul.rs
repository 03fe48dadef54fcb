//! Pre-multiplied sums, as NCCL's `ncclRedOpCreatePreMulSum`: an operator handle (numbered from
//! `oxcclNumOps` up, per communicator) whose reduction multiplies each rank's input by a scalar
//! before summing. FSDP scales gradients this way. All-reduce, reduce and reduce-scatter take
//! such an operator; the input is scaled into a copy the call owns, never in the caller's
//! buffer.

use std::ffi::{c_int, c_void};

use core_oxccl::{DataType, Error, ReduceOp};

use crate::boundary::null;
use crate::comm::{Handle, oxcclComm_t, put, with_comm};
use crate::types::{DataTypeArg, RedOpArg, oxcclResult_t};

/// Where the scalar of `oxcclRedOpCreatePreMulSum` lives, as NCCL's `ncclScalarResidence_t`.
/// On the host both mean host memory: `oxcclScalarDevice` reads it at each call (the pointer
/// must stay valid until the operator is destroyed), `oxcclScalarHostImmediate` at creation.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum oxcclScalarResidence_t {
    /// Read through the pointer at each call.
    oxcclScalarDevice = 0,
    /// Copied when the operator is created.
    oxcclScalarHostImmediate = 1,
}

/// An `oxcclScalarResidence_t` as C passed it: any int.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidenceArg(pub c_int);

/// The scalar of a pre-multiplied sum.
#[derive(Debug, Clone, Copy)]
enum Scalar {
    /// The element's bytes (native order), copied at creation.
    Immediate([u8; 8]),
    /// The address to read one element from at each call.
    Pointer(usize),
}

/// One operator created on a communicator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreMul {
    dtype: DataType,
    scalar: Scalar,
}

/// The first handle number of a created operator (NCCL's `ncclNumOps`).
const FIRST: c_int = ReduceOp::ALL.len() as c_int;

/// Resolves `op` for a call on `comm` with elements of `dtype`: a built-in operator, or a sum
/// and the scalar (one `dtype` element's bytes) to multiply each input by.
///
/// # Safety
/// A `oxcclScalarDevice` scalar's pointer is still readable (the creator's contract).
pub(crate) unsafe fn resolve(
    comm: oxcclComm_t,
    op: RedOpArg,
    dtype: DataType,
) -> Result<(ReduceOp, Option<[u8; 8]>), Error> {
    if op.0 < FIRST {
        return Ok((op.get()?, None));
    }
    let unknown = || {
        Error::invalid_argument(format!(
            "op {} is neither a built-in oxcclRedOp_t nor an operator oxcclRedOpCreatePreMulSum \
             made on this communicator (or it was destroyed)",
            op.0
        ))
    };
    let h = Handle::lookup(comm).ok_or_else(unknown)?;
    let p = {
        let ops = h.shared.premul.lock().unwrap_or_else(|e| e.into_inner());
        usize::try_from(op.0 - FIRST)
            .ok()
            .and_then(|i| ops.get(i).copied().flatten())
            .ok_or_else(unknown)?
    };
    if p.dtype != dtype {
        return Err(Error::invalid_argument(format!(
            "op {} pre-multiplies {} elements, but this call reduces {}",
            op.0,
            p.dtype.name(),
            dtype.name()
        )));
    }
    let bytes = match p.scalar {
        Scalar::Immediate(b) => b,
        Scalar::Pointer(addr) => {
            let mut b = [0u8; 8];
            // SAFETY: readable for one element (the creator's contract); dtype.size() <= 8.
            unsafe {
                std::ptr::copy_nonoverlapping(addr as *const u8, b.as_mut_ptr(), dtype.size())
            };
            b
        }
    };
    Ok((ReduceOp::Sum, Some(bytes)))
}

/// Creates a pre-multiplied sum on `comm` (like `ncclRedOpCreatePreMulSum`): `*op` becomes an
/// operator that all-reduce, reduce and reduce-scatter on `comm` take, summing every rank's
/// input multiplied by the `datatype` value at `scalar` (each rank its own). Destroy it with
/// `oxcclRedOpDestroy`.
///
/// # Safety
/// `op` is NULL (an error) or writable; `scalar` is readable for one `datatype` element, and
/// with `oxcclScalarDevice` stays readable until the operator is destroyed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclRedOpCreatePreMulSum(
    op: *mut RedOpArg,
    scalar: *mut c_void,
    datatype: DataTypeArg,
    residence: ResidenceArg,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    with_comm("oxcclRedOpCreatePreMulSum", comm, |h| {
        if op.is_null() {
            return Err(null("op"));
        }
        if scalar.is_null() {
            return Err(null("scalar"));
        }
        let dtype = datatype.get()?;
        let scalar = match residence.0 {
            0 => Scalar::Pointer(scalar as usize),
            1 => {
                let mut b = [0u8; 8];
                // SAFETY: readable for one element (caller's contract); dtype.size() <= 8.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        scalar.cast::<u8>().cast_const(),
                        b.as_mut_ptr(),
                        dtype.size(),
                    )
                };
                Scalar::Immediate(b)
            }
            r => {
                return Err(Error::invalid_argument(format!(
                    "residence {r} is not an oxcclScalarResidence_t (0 = oxcclScalarDevice, 1 = \
                     oxcclScalarHostImmediate)"
                )));
            }
        };
        let mut ops = h.shared.premul.lock().unwrap_or_else(|e| e.into_inner());
        let slot = crate::persistent::vacant(&mut ops);
        let id = c_int::try_from(slot)
            .ok()
            .and_then(|s| s.checked_add(FIRST))
            .ok_or_else(|| Error::invalid_usage("too many operators on this communicator"))?;
        ops[slot] = Some(PreMul { dtype, scalar });
        // SAFETY: non-null and writable (caller's contract).
        unsafe { put(op, RedOpArg(id)) };
        Ok(())
    })
}

/// Destroys an operator `oxcclRedOpCreatePreMulSum` made on `comm` (like `ncclRedOpDestroy`).
/// Built-in operators and unknown numbers are invalid arguments.
///
/// # Safety
/// None beyond the types: `comm` is never dereferenced unless it is a live communicator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclRedOpDestroy(op: RedOpArg, comm: oxcclComm_t) -> oxcclResult_t {
    with_comm("oxcclRedOpDestroy", comm, |h| {
        let mut ops = h.shared.premul.lock().unwrap_or_else(|e| e.into_inner());
        let slot = usize::try_from(op.0 - FIRST)
            .ok()
            .filter(|&i| op.0 >= FIRST && ops.get(i).is_some_and(Option::is_some));
        match slot {
            Some(i) => {
                ops[i] = None;
                Ok(())
            }
            None => Err(Error::invalid_argument(format!(
                "op {} is not an operator oxcclRedOpCreatePreMulSum made on this communicator",
                op.0
            ))),
        }
    })
}
