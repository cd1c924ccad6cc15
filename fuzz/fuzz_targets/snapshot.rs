//! Snapshot manifests: sealed bytes, and the protobuf body directly.
#![no_main]

use arca_format::{MasterKey, Snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = MasterKey::from_bytes([4; 32]).derive();
    let _ = Snapshot::decode(&keys, data);
    if let Ok(s) = Snapshot::decode_plain(data) {
        assert_eq!(
            Snapshot::decode_plain(&s.encode_plain()).expect("re-decodes"),
            s
        );
    }
});
