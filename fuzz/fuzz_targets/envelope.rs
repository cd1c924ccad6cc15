//! Envelope opening on arbitrary bytes, and seal/open round trips of arbitrary plaintexts
//! (which reach the zstd and inner-trailer paths behind authentication).
#![no_main]

use arca_format::{Compression, Kind, MasterKey, envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = MasterKey::from_bytes([1; 32]).derive();
    let _ = envelope::peek_kind(data);
    let _ = envelope::open(&keys, Kind::Data, &[], data, 1 << 20);
    // Whatever is sealed must open to itself, raw or compressed, with or without context.
    if let Ok(sealed) = envelope::seal(&keys, Kind::Tree, b"ctx", data, Compression::None) {
        let opened =
            envelope::open(&keys, Kind::Tree, b"ctx", &sealed, 1 << 20).expect("own seal opens");
        assert_eq!(opened, data);
    }
    if let Ok(sealed) = envelope::seal(&keys, Kind::Tree, b"", data, Compression::Zstd(1)) {
        assert_eq!(
            envelope::open(&keys, Kind::Tree, b"", &sealed, 1 << 20).expect("own seal opens"),
            data
        );
    }
});
