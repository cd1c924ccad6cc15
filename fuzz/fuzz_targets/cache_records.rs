//! The local index cache's records (rocksdb values and the file of what this machine last
//! saw of the index): a damaged or hostile cache directory must never panic a reader, and
//! whatever decodes must encode back to the same bytes. The codec file is included on its
//! own, so that this target does not build rocksdb.
#![no_main]

#[path = "../../engine/src/cache_records.rs"]
#[allow(dead_code, unreachable_pub)]
mod cache_records;

use arca_format::{BlobId, IndexId};
use cache_records::{FileRecord, PackRecord, Seen, decode_blob_value, encode_blob_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = PackRecord::decode(data) {
        assert_eq!(r.encode(), data, "pack record re-encodes differently");
        let _ = (r.live(), r.obsolete(), r.kind());
    }
    if let Some(e) = decode_blob_value(BlobId([7; 32]), data) {
        assert_eq!(&encode_blob_value(&e)[..], data, "blob value re-encodes differently");
    }
    if let Some(f) = FileRecord::decode(data) {
        let again = FileRecord::encode(data[0], &f.supersedes, &f.packs);
        assert_eq!(again, data, "file record re-encodes differently");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let seen = Seen::parse(text);
        assert_eq!(Seen::parse(&seen.render()), seen, "seen file does not round-trip");
        let _ = seen.live.contains(&IndexId([0; 32]));
    }
});
