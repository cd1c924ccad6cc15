//! Tree blobs.
#![no_main]

use arca_format::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tree::decode(data) {
        let bytes = t.encode().expect("decoded tree re-encodes");
        assert_eq!(Tree::decode(&bytes).expect("re-decodes"), t);
    }
});
