//! Index files: sealed bytes, and the protobuf body directly.
#![no_main]

use arca_format::{Compression, IndexFile, MasterKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = MasterKey::from_bytes([3; 32]).derive();
    let _ = IndexFile::decode(&keys, data);
    if let Ok(ix) = IndexFile::decode_plain(data) {
        // What decodes must re-encode and decode to the same value.
        let (_, sealed) = ix
            .encode(&keys, Compression::None)
            .expect("decoded index re-encodes");
        assert_eq!(IndexFile::decode(&keys, &sealed).expect("re-decodes"), ix);
    }
});
