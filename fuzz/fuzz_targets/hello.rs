//! The peer hello (`connect::Hello::decode`): never panics; what it accepts re-encodes to the
//! same bytes (layout from `transport::connect`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxccl::internals::transport::connect::Hello;

fuzz_target!(|data: &[u8]| {
    let Ok(b) = <[u8; 28]>::try_from(data.get(..28).unwrap_or(&[])) else {
        return;
    };
    if let Some(h) = Hello::decode(&b) {
        let mut again = [0u8; 28];
        again[0..4].copy_from_slice(&0x4f58_4845u32.to_le_bytes());
        again[4..12].copy_from_slice(&h.comm.to_le_bytes());
        again[12..16].copy_from_slice(&h.from.to_le_bytes());
        again[16..20].copy_from_slice(&h.to.to_le_bytes());
        again[20..24].copy_from_slice(&h.idx.to_le_bytes());
        again[24..28].copy_from_slice(&h.nsocks.to_le_bytes());
        assert_eq!(again, b);
    }
});
