//! Extent-list blobs.
#![no_main]

use arca_format::ExtentList;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(l) = ExtentList::decode(data) {
        let bytes = l.encode().expect("decoded list re-encodes");
        assert_eq!(ExtentList::decode(&bytes).expect("re-decodes"), l);
    }
});
