//! `UniqueId` strings (`FromStr`) and 128-byte blobs (`from_bytes`), and `parse_secret_hex`:
//! never panic; whatever is accepted round-trips (blobs are canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxccl::internals::bootstrap::{UNIQUE_ID_BYTES, UniqueId, parse_secret_hex, secret_hex};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = <[u8; UNIQUE_ID_BYTES]>::try_from(data.get(..UNIQUE_ID_BYTES).unwrap_or(&[])) {
        if let Ok(id) = UniqueId::from_bytes(&b) {
            assert_eq!(id.to_bytes(), b);
        }
    }
    let s = String::from_utf8_lossy(data);
    if let Ok(id) = s.parse::<UniqueId>() {
        assert_eq!(id.to_string().parse::<UniqueId>().unwrap(), id);
    }
    if let Ok(secret) = parse_secret_hex(&s) {
        assert_eq!(parse_secret_hex(&secret_hex(&secret)).unwrap(), secret);
    }
});
