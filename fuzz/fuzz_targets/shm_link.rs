//! A peer scribbling on a shared-memory link's segment: after a real exchange, the input's
//! (offset, value) pairs overwrite bytes the exchange touched (slot headers, tails, the
//! posted-receive table, abort areas) or any byte; both ends are then driven for a while. They
//! must deliver bounded messages or fail; never panic, read out of bounds or hang.
#![no_main]

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use oxccl::internals::sys::shm::Mapping;
use oxccl::internals::transport::shm::{Doorbell, Geometry, Segment, ShmLink};
use oxccl::internals::transport::{Link, Tag};

const GEO: Geometry = Geometry {
    nslots: 4,
    slot_size: 256,
};

fn snapshot(m: &Mapping) -> Vec<u8> {
    let mut v = vec![0u8; m.len()];
    // SAFETY: the mapping is m.len() bytes; the links sharing it are idle.
    unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), v.as_mut_ptr(), m.len()) };
    v
}

fn exchange(a: &mut ShmLink, b: &mut ShmLink, msg: &[u8]) {
    // SAFETY: `msg` outlives the send, which completes before we return.
    assert!(unsafe { a.post_send(&Tag::default(), msg.as_ptr(), msg.len()) }.unwrap());
    for _ in 0..1000 {
        a.progress().unwrap();
        if let Some((_, body)) = b.peek_recv().unwrap() {
            assert_eq!(body, msg);
            b.release_recv();
            let _ = a.take_send_completions();
            return;
        }
    }
    panic!("message did not arrive");
}

fuzz_target!(|data: &[u8]| {
    let (seg0, fd) = Segment::create(GEO).unwrap();
    let seg1 = Segment::open(fd.as_fd()).unwrap();
    let raw = Mapping::new(fd.as_raw_fd(), GEO.total()).unwrap();
    let bell0 = Arc::new(Doorbell::create().unwrap());
    let bell1 = Arc::new(Doorbell::create().unwrap());
    let p0 = Doorbell::open(bell1.clone_fd().unwrap()).unwrap();
    let p1 = Doorbell::open(bell0.clone_fd().unwrap()).unwrap();
    let mut l0 = ShmLink::new(1, 0, seg0, bell0, p0, None).unwrap();
    let mut l1 = ShmLink::new(0, 1, seg1, bell1, p1, None).unwrap();
    let before = snapshot(&raw);
    for (i, n) in [0usize, 7, 24, 25, 200, 256].into_iter().enumerate() {
        let m = vec![i as u8 + 1; n];
        exchange(&mut l0, &mut l1, &m);
        exchange(&mut l1, &mut l0, &m);
    }
    let pending = vec![0xABu8; 100];
    // SAFETY: `pending` outlives both links.
    let _ = unsafe { l0.post_send(&Tag::default(), pending.as_ptr(), pending.len()) };
    let after = snapshot(&raw);
    let live: Vec<usize> = (0..after.len())
        .filter(|&i| after[i] != before[i])
        .collect();
    for c in data.chunks_exact(4) {
        let pick = usize::from(u16::from_le_bytes([c[0], c[1]]));
        let off = if c[2] & 1 == 1 || live.is_empty() {
            pick * 7 % raw.len()
        } else {
            live[pick % live.len()]
        };
        // SAFETY: off < raw.len(); the links are idle.
        unsafe { raw.as_ptr().add(off).write_volatile(c[3]) };
    }
    let mut dst = vec![0u8; 64 << 10];
    for round in 0..32u64 {
        // SAFETY: `dst` outlives the links' use of it (cancel_recvs below).
        unsafe { l1.post_recv(round, dst.as_mut_ptr(), dst.len()) };
        let r1 = l1.progress().and_then(|_| match l1.peek_recv()? {
            Some((_, body)) => {
                assert!(body.len() <= GEO.slot_size);
                l1.release_recv();
                Ok(())
            }
            None => Ok(()),
        });
        // SAFETY: a zero-length send reads no memory.
        let r0 =
            unsafe { l0.post_send(&Tag::default(), std::ptr::NonNull::dangling().as_ptr(), 0) }
                .and_then(|_| l0.progress());
        let _ = l0.take_send_completions();
        if r1.is_err() && r0.is_err() {
            break;
        }
    }
    l1.cancel_recvs();
    l0.cancel_recvs();
    drop((l0, l1));
    drop(dst);
});
