//! The payload behind an envelope's tag (data, a lying raw length, the compression byte,
//! zstd frames), decoded without authentication: it must never panic, never return more
//! than the limit, and return exactly the length it records.
#![no_main]

use arca_format::envelope::{MAX_BLOB_LEN, decode_payload_unauthenticated};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max in [0usize, 64, 1 << 16, MAX_BLOB_LEN] {
        if let Ok(out) = decode_payload_unauthenticated(data, max) {
            let n = data.len() - 5;
            let raw = u32::from_le_bytes(data[n..n + 4].try_into().unwrap()) as usize;
            assert_eq!(out.len(), raw, "decoded length differs from the recorded one");
            if data[n + 4] == 1 {
                assert!(out.len() <= max, "decompressed past the limit");
            }
        }
    }
});
