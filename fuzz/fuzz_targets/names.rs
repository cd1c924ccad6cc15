//! Object-name parsers: whatever a listing returns (a hostile bucket can hold any name)
//! parses without panicking, and a name that parses is exactly the name the repository
//! would write for that object (no upper-case or padded twins).
#![no_main]

use arca_format::layout;
use arca_format::{IndexId, KeyId, SessionId, SnapshotId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for prefix in ["", layout::INDEX, layout::SNAPSHOTS, layout::KEYS, layout::SESSIONS] {
        let name = format!("{prefix}{s}");
        if let Some(id) = layout::parse_id::<IndexId>(layout::INDEX, &name) {
            assert_eq!(layout::index(&id), name);
        }
        if let Some(id) = layout::parse_id::<SnapshotId>(layout::SNAPSHOTS, &name) {
            assert_eq!(layout::snapshot(&id), name);
        }
        if let Some(id) = layout::parse_id::<KeyId>(layout::KEYS, &name) {
            assert_eq!(layout::key(&id), name);
        }
        if let Some(id) = layout::parse_id::<SessionId>(layout::SESSIONS, &name) {
            assert_eq!(layout::session(&id), name);
        }
        if let Some((kind, id)) = layout::parse_pack(&name) {
            assert_eq!(layout::pack(kind, &id), name);
        }
        if let Some(term) = layout::parse_lease(&name) {
            assert_eq!(layout::lease(term), name);
        }
        let _ = layout::kind_and_max_len(&name);
    }
});
