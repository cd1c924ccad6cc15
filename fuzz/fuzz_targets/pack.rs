//! Pack footers and trailers: arbitrary pack bytes, and arbitrary trailer plaintexts
//! sealed with a real key.
#![no_main]

use arca_format::{Compression, Kind, MasterKey, envelope, pack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = MasterKey::from_bytes([2; 32]).derive();
    let _ = pack::trailer_len(data);
    let _ = pack::read_pack(&keys, data, None);
    if let Ok(sealed) = envelope::seal(&keys, Kind::PackTrailer, &[], data, Compression::None) {
        for offset in [0u64, 46, 1000, u32::MAX as u64] {
            if let Ok(entries) = pack::decode_trailer(&keys, &sealed, offset) {
                let end: u64 = entries.iter().map(|e| e.length as u64).sum();
                assert_eq!(end, offset);
            }
        }
    }
});
