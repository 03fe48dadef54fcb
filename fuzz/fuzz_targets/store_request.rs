//! The store's request parser (`store::parse_request`) and key lists (`store::parse_key_list`):
//! never panic, never accept more than the limits or than the input holds; accepted key lists
//! round-trip through `encode_key_list`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxccl::internals::bootstrap::store::{
    MAX_KEY_LEN, MAX_VALUE_LEN, encode_key_list, parse_key_list, parse_request,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((op, key, value, _))) = parse_request(data) {
        assert!((1..=6).contains(&op));
        assert!(key.len() <= MAX_KEY_LEN && value.len() <= MAX_VALUE_LEN);
        assert!(key.len() + value.len() + 13 <= data.len());
        if let Some(keys) = parse_key_list(&value) {
            if let Ok(strs) = keys
                .iter()
                .map(|k| std::str::from_utf8(k))
                .collect::<Result<Vec<_>, _>>()
            {
                assert_eq!(encode_key_list(&strs), value);
            }
        }
    }
    if let Some(keys) = parse_key_list(data) {
        assert!(keys.iter().all(|k| k.len() <= MAX_KEY_LEN));
    }
});
