//! Collectives over host memory. Every call blocks until this rank's part is done (there is no
//! stream argument); `count` is in elements of `datatype`.

use std::ffi::c_void;

use core_oxccl::{DataType, Error};

use crate::boundary::null;
use crate::comm::{Handle, oxcclComm_t, with_comm};
use crate::types::*;

/// Bytes in `count` elements of `dtype`, times `factor`; overflow (e.g. a negative count cast to
/// size_t) is an invalid argument.
fn span(count: usize, dtype: DataType, factor: usize, what: &str) -> Result<usize, Error> {
    count
        .checked_mul(dtype.size())
        .and_then(|b| b.checked_mul(factor))
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{what}: {count} elements of {} (x{factor}) overflow the address space; is the count negative?",
                dtype.name()
            ))
        })
}

/// The caller's send and receive buffers as byte slices. `send` is `None` when the call is in
/// place (`sendbuff == recvbuff`). NULL is allowed only for zero bytes.
pub(crate) struct Bufs<'a> {
    pub send: Option<&'a [u8]>,
    pub recv: &'a mut [u8],
}

/// # Safety
/// Unless NULL, `send` is readable for `send_len` bytes and `recv` writable for `recv_len` bytes,
/// for `'a`, and nothing else writes them meanwhile.
pub(crate) unsafe fn bufs<'a>(
    send: *const c_void,
    send_len: usize,
    recv: *mut c_void,
    recv_len: usize,
) -> Result<Bufs<'a>, Error> {
    if send_len > 0 && send.is_null() {
        return Err(null("sendbuff"));
    }
    if recv_len > 0 && recv.is_null() {
        return Err(null("recvbuff"));
    }
    let recv_slice: &'a mut [u8] = if recv_len == 0 {
        &mut []
    } else {
        // SAFETY: non-null and writable for recv_len bytes (caller's contract); no other slice of
        // it exists (the send slice, if any, is checked below not to overlap).
        unsafe { std::slice::from_raw_parts_mut(recv.cast::<u8>(), recv_len) }
    };
    if send.cast::<u8>() == recv.cast_const().cast::<u8>() && !send.is_null() {
        return Ok(Bufs {
            send: None,
            recv: recv_slice,
        });
    }
    if send_len == 0 {
        return Ok(Bufs {
            send: Some(&[]),
            recv: recv_slice,
        });
    }
    let (s, r) = (send as usize, recv as usize);
    if recv_len > 0 && s < r + recv_len && r < s + send_len {
        return Err(Error::InvalidArgument(
            "sendbuff and recvbuff overlap without being equal (pass the same pointer for in place)"
                .into(),
        ));
    }
    // SAFETY: non-null and readable for send_len bytes (caller's contract), and disjoint from the
    // mutable receive slice (checked just above).
    let send_slice = unsafe { std::slice::from_raw_parts(send.cast::<u8>(), send_len) };
    Ok(Bufs {
        send: Some(send_slice),
        recv: recv_slice,
    })
}

/// All-reduce: `recvbuff` of every rank becomes the element-wise reduction of every rank's
/// `sendbuff` (`count` elements). In place when `sendbuff == recvbuff`.
///
/// # Safety
/// `sendbuff` is readable and `recvbuff` writable for `count` elements (or NULL when `count` is
/// 0); they are equal or do not overlap; `comm` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclAllReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: DataTypeArg,
    op: RedOpArg,
    comm: oxcclComm_t,
) -> oxcclResult_t {
    // SAFETY: NULL or live (caller's contract).
    let h = unsafe { Handle::from_ptr(comm) };
    with_comm("oxcclAllReduce", h, |h| {
        let dt = datatype.get()?;
        let op = op.get()?;
        let n = span(count, dt, 1, "oxcclAllReduce")?;
        // SAFETY: buffers valid for `count` elements (caller's contract).
        let b = unsafe { bufs(sendbuff, n, recvbuff, n)? };
        h.comm.all_reduce_bytes(b.send, b.recv, dt, op)
    })
}

/// Blocks until every rank of `comm` has called it.
///
/// # Safety
/// `comm` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn oxcclBarrier(comm: oxcclComm_t) -> oxcclResult_t {
    // SAFETY: NULL or live (caller's contract).
    let h = unsafe { Handle::from_ptr(comm) };
    with_comm("oxcclBarrier", h, |h| h.comm.barrier())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_overflow() {
        assert_eq!(span(3, DataType::F32, 2, "x").unwrap(), 24);
        assert!(span(usize::MAX, DataType::U8, 1, "x").is_err());
        assert!(span(usize::MAX / 4, DataType::F64, 1, "x").is_err());
        assert!(span(1 << 40, DataType::F32, 1 << 30, "x").is_err());
    }

    #[test]
    fn bufs_rules() {
        let mut a = [0u8; 16];
        let p = a.as_mut_ptr();
        // SAFETY: every pointer below points into `a` (16 bytes) or is NULL with length 0.
        unsafe {
            assert!(bufs(p.cast(), 16, p.cast(), 16).unwrap().send.is_none());
            assert!(bufs(p.add(4).cast(), 8, p.cast(), 8).is_err());
            assert!(
                bufs(p.cast(), 8, p.add(8).cast(), 8)
                    .unwrap()
                    .send
                    .is_some()
            );
            assert!(bufs(std::ptr::null(), 8, p.cast(), 8).is_err());
            assert!(bufs(p.cast(), 8, std::ptr::null_mut(), 8).is_err());
            let b = bufs(std::ptr::null(), 0, std::ptr::null_mut(), 0).unwrap();
            assert!(b.recv.is_empty());
        }
    }
}
