//! The memory one collective call works on, as the executor and the links see it: the one place
//! where the caller's buffers become raw pointers.
//!
//! - [`CallMem`] holds a call's input, output and scratch buffers (base pointer and length in
//!   bytes each). It is made from borrows ([`CallMem::from_slices`], [`CallMem::with_scratch`]),
//!   which is safe, or from raw pointers ([`CallMem::from_raw`]), whose contract says the same as
//!   the borrows would. Either way it lives no longer than the borrow `'a` it names, and it is
//!   neither `Copy` nor `Send`: one call's memory is used by one executor run on one thread.
//! - [`Region`] (read-only) and [`RegionMut`] (writable) are bounds-checked pieces of one such
//!   buffer: what a step of a Program names, turned into bytes. The executor gets them from
//!   [`CallMem::input`], [`CallMem::output`] and [`CallMem::scratch`] (which check the bounds)
//!   and reads or writes them as slices ([`Region::bytes`], [`RegionMut::bytes_mut`]), or hands
//!   them to a link ([`Link::post_send`](super::Link::post_send),
//!   [`Link::post_recv`](super::Link::post_recv)), which keeps the pointer until the send
//!   completes or the receive is released or cancelled. A link's own tests (and any other code
//!   outside a call) make regions with the unsafe [`Region::from_raw`] / [`RegionMut::from_raw`].
//!
//! # Why handing out slices from `&self` is sound
//! The executor reads and writes overlapping pieces of the same buffers at different times (a
//! step reduces into a range that an earlier step sent from, say), so a region cannot borrow its
//! buffer the way a slice does. The invariant that makes [`RegionMut::bytes_mut`] sound is the
//! one the executor has always relied on, established by two things together:
//!
//! 1. **the memory contract** of the call ([`CallMem::from_raw`]'s, or the borrows of
//!    [`CallMem::from_slices`]): the buffers are live and sized for the whole call, nothing
//!    else reads or writes them meanwhile (the input may only be read), the input and output
//!    are the same memory only for an in-place call (whose Program never names the input), and
//!    distinct calls of one run never overlap;
//! 2. **program order**: every pair of steps of a Program that touch overlapping memory, one of
//!    them writing, is ordered by the Program's dependencies (proven for every algorithm by the
//!    symbolic verifier, `algo::verify`), and the executor starts a step only when the steps it
//!    depends on are done. So while a step reads a range nothing writes it, and while a step
//!    writes a range no other live access aliases it: each slice handed out lives only for its
//!    step (a local copy or reduction, or the delivery of one message).
//!
//! The same ordering covers the links: a range posted for a send is not written until the send
//! completes (later writers depend on the send step, which completes only on the link's
//! completion), and a range posted for a receive is not touched until that message is released
//! (the step that consumes it) or the executor cancels its posted receives, which it does before
//! a run returns; on a failed run every link is sent an abort, after which it touches no posted
//! memory.
//!
//! So [`CallMem`]'s region accessors and [`RegionMut::bytes_mut`] are safe functions whose
//! soundness rests on an invariant the executor keeps (program order, and quiet links when a
//! run returns), not on types alone: they are crate-private, and only `exec` calls them. Outside
//! the crate (the links' tests, tools) a region comes only from the unsafe `from_raw`
//! constructors, whose contracts say the same in words.

use std::marker::PhantomData;

/// The input, output and scratch buffers of one collective call. Lengths are in bytes.
///
/// The lifetime `'a` is that of the borrows it was made from (or, for
/// [`CallMem::from_raw`], the one its caller promised). See the module docs for the invariant
/// that makes its regions sound.
#[derive(Debug)]
pub(crate) struct CallMem<'a> {
    input: *const u8,
    input_len: usize,
    output: *mut u8,
    output_len: usize,
    scratch: *mut u8,
    scratch_len: usize,
    /// Holds the borrow: exclusive, since the output and scratch are written.
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> CallMem<'a> {
    /// The memory of a call from its buffers: `input: None` means in place (the input is the
    /// output; an in-place Program never names the input). `output: None` is an empty output.
    /// No scratch yet (see [`CallMem::with_scratch`]).
    pub(crate) fn from_slices(input: Option<&'a [u8]>, output: Option<&'a mut [u8]>) -> Self {
        let (output, output_len) = match output {
            Some(b) => (b.as_mut_ptr(), b.len()),
            None => (std::ptr::NonNull::<u8>::dangling().as_ptr(), 0),
        };
        let (input, input_len) = match input {
            Some(s) => (s.as_ptr(), s.len()),
            None => (output.cast_const(), output_len),
        };
        CallMem {
            input,
            input_len,
            output,
            output_len,
            scratch: std::ptr::NonNull::<u8>::dangling().as_ptr(),
            scratch_len: 0,
            _borrow: PhantomData,
        }
    }

    /// The memory of a call from raw pointers and lengths in bytes.
    ///
    /// # Safety
    /// For all of `'a`: each `ptr..ptr + len` is valid (readable; the output and scratch also
    /// writable) and, but for the input, not read or written by anything else; the input is
    /// only read by others. The input and output may be the same memory only when the call is
    /// in place (its Program never names the input); otherwise no two of the three overlap. A
    /// zero length may come with any non-null pointer.
    #[allow(dead_code)] // the safe constructors serve every caller today
    pub(crate) unsafe fn from_raw(
        input: *const u8,
        input_len: usize,
        output: *mut u8,
        output_len: usize,
        scratch: *mut u8,
        scratch_len: usize,
    ) -> Self {
        CallMem {
            input,
            input_len,
            output,
            output_len,
            scratch,
            scratch_len,
            _borrow: PhantomData,
        }
    }

    /// The same memory with `scratch` as the scratch buffer (replacing any), borrowed for the
    /// shorter of the two lifetimes.
    pub(crate) fn with_scratch<'b>(self, scratch: &'b mut [u8]) -> CallMem<'b>
    where
        'a: 'b,
    {
        CallMem {
            scratch: scratch.as_mut_ptr(),
            scratch_len: scratch.len(),
            ..self
        }
    }

    /// The lengths in bytes of the input, output and scratch buffers.
    pub(crate) fn lens(&self) -> [usize; 3] {
        [self.input_len, self.output_len, self.scratch_len]
    }

    /// Bytes `off..off + len` of the input, if they lie within it.
    #[inline]
    pub(crate) fn input(&self, off: usize, len: usize) -> Option<Region<'_>> {
        let p = piece(self.input.cast_mut(), self.input_len, off, len)?;
        Some(Region {
            ptr: p,
            len,
            _borrow: PhantomData,
        })
    }

    /// Bytes `off..off + len` of the output, if they lie within it.
    #[inline]
    pub(crate) fn output(&self, off: usize, len: usize) -> Option<RegionMut<'_>> {
        let p = piece(self.output, self.output_len, off, len)?;
        Some(RegionMut {
            ptr: p,
            len,
            _borrow: PhantomData,
        })
    }

    /// Bytes `off..off + len` of the scratch, if they lie within it.
    #[inline]
    pub(crate) fn scratch(&self, off: usize, len: usize) -> Option<RegionMut<'_>> {
        let p = piece(self.scratch, self.scratch_len, off, len)?;
        Some(RegionMut {
            ptr: p,
            len,
            _borrow: PhantomData,
        })
    }
}

/// `base + off` when `off..off + len` lies within a buffer of `buf_len` bytes at `base`.
#[inline]
fn piece(base: *mut u8, buf_len: usize, off: usize, len: usize) -> Option<*mut u8> {
    if off.checked_add(len)? > buf_len {
        return None;
    }
    // `wrapping_add` needs no unsafe; `off <= buf_len`, so this is within (or one past) the
    // buffer, exactly what `add` would give.
    Some(base.wrapping_add(off))
}

/// A read-only piece of a call's memory (or of memory its maker vouched for, see
/// [`Region::from_raw`]): a pointer and a length in bytes, checked to lie within its buffer.
/// What a send is posted from.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    ptr: *mut u8,
    len: usize,
    _borrow: PhantomData<&'a [u8]>,
}

impl<'a> Region<'a> {
    /// A region of `len` bytes at `ptr`, for a link's [`post_send`](super::Link::post_send)
    /// outside a collective call (a link's tests, tools).
    ///
    /// # Safety
    /// `ptr..ptr + len` must be readable (any non-null pointer when `len` is 0) and stay valid
    /// and unmodified until the send posted from it completes
    /// ([`Link::take_send_completions`](super::Link::take_send_completions) reports it), or
    /// the link is aborted or dropped; and for as long as `'a`.
    pub unsafe fn from_raw(ptr: *const u8, len: usize) -> Region<'a> {
        Region {
            ptr: ptr.cast_mut(),
            len,
            _borrow: PhantomData,
        }
    }

    /// Its first byte.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Its length in bytes.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Its bytes.
    #[inline]
    pub(crate) fn bytes(self) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the pointer lies within a live buffer with `len` bytes from it (checked when
        // the region was made from its CallMem, or vouched for by `from_raw`'s caller), valid
        // for 'a; nothing writes these bytes while the slice lives (program order; module docs).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A writable piece of a call's output or scratch (or of memory its maker vouched for, see
/// [`RegionMut::from_raw`]): a pointer and a length in bytes, checked to lie within its buffer.
/// What a receive is posted into.
#[derive(Debug, Clone, Copy)]
pub struct RegionMut<'a> {
    ptr: *mut u8,
    len: usize,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> RegionMut<'a> {
    /// A writable region of `len` bytes at `ptr`, for a link's
    /// [`post_recv`](super::Link::post_recv) outside a collective call (a link's tests).
    ///
    /// # Safety
    /// `ptr..ptr + len` must be writable (any non-null pointer when `len` is 0) and stay valid
    /// and untouched by anything else until the message posted into it has been released or
    /// [`Link::cancel_recvs`](super::Link::cancel_recvs) has been called, or the link is
    /// dropped; and for as long as `'a`.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> RegionMut<'a> {
        RegionMut {
            ptr,
            len,
            _borrow: PhantomData,
        }
    }

    /// Its first byte.
    #[inline]
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Its length in bytes.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The same bytes, to read.
    #[inline]
    pub(crate) fn read(self) -> Region<'a> {
        Region {
            ptr: self.ptr,
            len: self.len,
            _borrow: PhantomData,
        }
    }

    /// Its bytes, to write.
    ///
    /// Sound although many regions of one buffer exist at once: while the returned slice lives
    /// no other access aliases it (the program-order argument in the module docs).
    #[inline]
    pub(crate) fn bytes_mut(self) -> &'a mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: the pointer lies within a live, writable buffer with `len` bytes from it
        // (checked when the region was made from its CallMem, or vouched for by `from_raw`'s
        // caller), valid for 'a; the Program orders every pair of steps touching overlapping
        // memory (proven by algo::verify) and calls do not overlap, so while a step writes this
        // range no other live access aliases it (module docs).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_lie_within_their_buffers() {
        let input = [1u8, 2, 3, 4];
        let mut output = [0u8; 8];
        let mut scratch = [0u8; 2];
        let m = CallMem::from_slices(Some(&input), Some(&mut output)).with_scratch(&mut scratch);
        assert_eq!(m.lens(), [4, 8, 2]);
        assert_eq!(m.input(1, 3).unwrap().bytes(), &[2, 3, 4]);
        assert!(m.input(2, 3).is_none());
        assert!(m.input(usize::MAX, 2).is_none());
        m.output(4, 4).unwrap().bytes_mut().copy_from_slice(&[9; 4]);
        assert_eq!(
            m.output(0, 8).unwrap().read().bytes(),
            &[0, 0, 0, 0, 9, 9, 9, 9]
        );
        assert!(m.output(8, 1).is_none());
        assert_eq!(m.output(8, 0).unwrap().len(), 0);
        assert!(m.scratch(0, 3).is_none());
        // In place: the input is the output.
        let mut buf = [5u8; 3];
        let m = CallMem::from_slices(None, Some(&mut buf));
        assert_eq!(m.lens(), [3, 3, 0]);
        assert_eq!(
            m.input(0, 3).unwrap().as_ptr(),
            m.output(0, 3).unwrap().as_mut_ptr()
        );
        // No output at all: empty, never null.
        let m = CallMem::from_slices(None, None);
        assert_eq!(m.output(0, 0).unwrap().bytes_mut(), &mut [] as &mut [u8]);
    }
}
