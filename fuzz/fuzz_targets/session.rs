//! Sessions and the lease.
#![no_main]

use arca_format::{Lease, MasterKey, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = MasterKey::from_bytes([6; 32]).derive();
    let _ = Session::decode(&keys, data);
    let _ = Lease::decode(&keys, data);
    if let Ok(s) = Session::decode_plain(data) {
        assert_eq!(
            Session::decode_plain(&s.encode_plain()).expect("re-decodes"),
            s
        );
    }
    if let Ok(l) = Lease::decode_plain(data) {
        assert_eq!(
            Lease::decode_plain(&l.encode_plain()).expect("re-decodes"),
            l
        );
    }
});
