//! The config object: arbitrary bytes, and arbitrary sealed bodies behind a valid header.
#![no_main]

use arca_format::{
    CONFIG_MAGIC, Compression, FORMAT_VERSION, Kind, MasterKey, RepoConfig, envelope, object_hash,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = MasterKey::from_bytes([5; 32]).derive();
    let _ = RepoConfig::peek(data);
    let _ = RepoConfig::decode(&keys, data);
    let repo_id = [9u8; 16];
    let mut framed = CONFIG_MAGIC.to_vec();
    framed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    framed.extend_from_slice(&repo_id);
    if envelope::seal_into(
        &keys,
        Kind::Config,
        &repo_id,
        data,
        Compression::None,
        &mut framed,
    )
    .is_ok()
    {
        let sum = object_hash(&framed);
        framed.extend_from_slice(&sum);
        if let Ok(cfg) = RepoConfig::decode(&keys, &framed) {
            let bytes = cfg.encode(&keys).expect("decoded config re-encodes");
            assert_eq!(RepoConfig::decode(&keys, &bytes).expect("re-decodes"), cfg);
        }
    }
});
