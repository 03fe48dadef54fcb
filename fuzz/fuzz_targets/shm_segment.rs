//! The shm segment header a peer hands over (`Segment::open`): a sealed memfd whose size comes
//! from the first two input bytes and whose header is the rest. Never panics; only a header that
//! describes exactly this memfd is accepted.
#![no_main]

use std::os::fd::{AsFd, AsRawFd};

use libfuzzer_sys::fuzz_target;
use oxccl::internals::sys::shm::{Mapping, memfd_sealed};
use oxccl::internals::transport::shm::{MAX_SLOTS, Segment};

fuzz_target!(|data: &[u8]| {
    let Some((size, header)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_le_bytes(*size)) * 2;
    let fd = memfd_sealed("oxccl-fuzz", len).unwrap();
    if len > 0 {
        let map = Mapping::new(fd.as_raw_fd(), len).unwrap();
        let n = header.len().min(len);
        // SAFETY: the mapping is `len` >= n bytes long and nothing else uses it.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), map.as_ptr(), n) };
    }
    if let Ok(seg) = Segment::open(fd.as_fd()) {
        let g = seg.geometry();
        assert_eq!(g.total(), len);
        assert!((1..=MAX_SLOTS).contains(&g.nslots));
    }
});
