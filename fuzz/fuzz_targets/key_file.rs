//! Key files: arbitrary bytes, and arbitrary bodies behind a valid header and checksum
//! (so the protobuf and parameter checks are reached). The KDF is not run: its cost is
//! bounded by the parameter checks, which is what this target exercises.
#![no_main]

use arca_format::{KEY_FILE_MAGIC, KEY_FILE_VERSION, KeyFile, object_hash};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = KeyFile::decode(data);
    let mut framed = KEY_FILE_MAGIC.to_vec();
    framed.extend_from_slice(&KEY_FILE_VERSION.to_le_bytes());
    framed.extend_from_slice(data);
    let sum = object_hash(&framed);
    framed.extend_from_slice(&sum);
    if let Ok(kf) = KeyFile::decode(&framed) {
        let (_, bytes) = kf.encode();
        assert_eq!(KeyFile::decode(&bytes).expect("re-decodes"), kf);
    }
});
