//! TCP frame headers (`tcp::decode_hdr`), abort bodies (`tcp::decode_abort`) and tags
//! (`Tag::decode`): never panic; whatever is accepted is bounded; tags round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxccl::internals::transport::Tag;
use oxccl::internals::transport::tcp::{HDR, decode_abort, decode_hdr};

fuzz_target!(|data: &[u8]| {
    if data.len() >= HDR + 4 {
        let max = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        let h: [u8; HDR] = data[4..4 + HDR].try_into().unwrap();
        if let Ok((kind, len, tag)) = decode_hdr(&h, max) {
            assert!(kind == 1 || kind == 2);
            assert!(len <= max.max(4096));
            assert_eq!(Tag::decode(&tag.encode()), tag);
        }
    }
    if data.len() >= Tag::LEN {
        let t: [u8; Tag::LEN] = data[..Tag::LEN].try_into().unwrap();
        let tag = Tag::decode(&t);
        assert_eq!(Tag::decode(&tag.encode()), tag);
    }
    let peer = data.first().copied().unwrap_or(0) as usize;
    let e = decode_abort(data, peer);
    assert!(e.message().contains(&format!("rank {peer}")));
});
