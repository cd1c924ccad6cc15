//! Tamper tests: every single flipped bit of a sealed blob, a pack trailer, an index file,
//! a key file or the config is reported as corruption, and never as anything else; a wrong
//! password is reported as a wrong password.

mod strategies;

use arca_format::*;
use proptest::prelude::*;
use strategies::*;

/// Flip every bit of `bytes` in turn (or every bit of `range`) and require `check` to
/// report corruption each time.
fn each_flip(
    bytes: &[u8],
    range: std::ops::Range<usize>,
    mut check: impl FnMut(&[u8]) -> Result<()>,
) {
    let mut b = bytes.to_vec();
    for i in range {
        for bit in 0..8 {
            b[i] ^= 1 << bit;
            match check(&b) {
                Err(e) if e.is_corruption() => {}
                Err(e) => panic!("byte {i} bit {bit}: expected corruption, got {e:?}"),
                Ok(()) => panic!("byte {i} bit {bit}: flip not detected"),
            }
            b[i] ^= 1 << bit;
        }
    }
    check(&b).expect("untouched bytes still decode");
}

fn small_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 16,
        iterations: 1,
        parallelism: 1,
    }
}

#[test]
fn sealed_blob_every_bit() {
    let k = keys();
    for (payload, c) in [
        (
            b"tree or chunk bytes, compressible compressible compressible".to_vec(),
            Compression::Zstd(3),
        ),
        ((0..200u8).collect::<Vec<_>>(), Compression::None),
        (Vec::new(), Compression::None),
    ] {
        let sealed = envelope::seal(&k, Kind::Tree, &[], &payload, c).unwrap();
        each_flip(&sealed, 0..sealed.len(), |b| {
            envelope::open(&k, Kind::Tree, &[], b, 1 << 20).map(|_| ())
        });
        // Truncation and extension are corruption too.
        for cut in [0, 1, sealed.len() / 2, sealed.len() - 1] {
            assert!(
                envelope::open(&k, Kind::Tree, &[], &sealed[..cut], 1 << 20)
                    .unwrap_err()
                    .is_corruption()
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(
            envelope::open(&k, Kind::Tree, &[], &longer, 1 << 20)
                .unwrap_err()
                .is_corruption()
        );
    }
}

fn sample_pack(k: &Keys) -> FinishedPack {
    let mut w = PackWriter::new(PackKind::Data, 0);
    for b in [&b"first chunk"[..], b"second chunk", &[0u8; 300]] {
        w.add_blob(
            k,
            BlobType::Data,
            k.blob_id(BlobType::Data, b),
            b,
            Compression::Zstd(3),
        )
        .unwrap();
    }
    w.finish(k).unwrap()
}

#[test]
fn pack_trailer_and_footer_every_bit() {
    let k = keys();
    let p = sample_pack(&k);
    let blobs_end = p.entries.last().unwrap().end() as usize;
    // Without the name to check against, the trailer's own authentication must catch it.
    each_flip(&p.bytes, blobs_end..p.bytes.len(), |b| {
        pack::read_pack(&k, b, None).map(|_| ())
    });
}

#[test]
fn pack_blob_bytes_every_bit() {
    let k = keys();
    let p = sample_pack(&k);
    let blobs_end = p.entries.last().unwrap().end() as usize;
    // The name (BLAKE3 of the bytes) catches any flip, without a key.
    each_flip(&p.bytes, 0..p.bytes.len(), |b| {
        pack::read_pack(&k, b, Some(p.id)).map(|_| ())
    });
    // Each blob authenticates itself when cut out by its entry.
    each_flip(&p.bytes, 0..blobs_end, |b| {
        for e in &p.entries {
            pack::open_blob(&k, e, &b[e.offset as usize..e.end() as usize])?;
        }
        Ok(())
    });
}

#[test]
fn index_file_every_bit() {
    let k = keys();
    let p = sample_pack(&k);
    let ix = IndexFile {
        supersedes: vec![IndexId([5; 32])],
        packs: vec![IndexPack {
            id: p.id,
            size: p.bytes.len() as u64,
            obsolete_since: None,
            obsolete_visible: None,
            blobs: p.entries,
        }],
    };
    for c in [Compression::None, Compression::Zstd(3)] {
        let (_, bytes) = ix.encode(&k, c).unwrap();
        each_flip(&bytes, 0..bytes.len(), |b| {
            IndexFile::decode(&k, b).map(|_| ())
        });
    }
}

#[test]
fn snapshot_every_bit() {
    let k = keys();
    let mut s = Snapshot::new(SnapshotRoot::Tree(BlobId([1; 32])));
    s.host = "node-1".into();
    s.paths = vec![b"/data".to_vec()];
    let (_, bytes) = s.encode(&k).unwrap();
    each_flip(&bytes, 0..bytes.len(), |b| {
        Snapshot::decode(&k, b).map(|_| ())
    });
}

#[test]
fn key_file_every_bit_and_wrong_password() {
    let mk = MasterKey::from_bytes([9; 32]);
    let kf = KeyFile::create(
        RepoId([1; 16]),
        &mk,
        b"correct horse",
        small_kdf(),
        KeyMeta::default(),
    )
    .unwrap();
    let (_, bytes) = kf.encode();
    each_flip(&bytes, 0..bytes.len(), |b| {
        KeyFile::decode(b)
            .and_then(|kf| kf.unwrap_key(b"correct horse"))
            .map(|_| ())
    });
    let kf = KeyFile::decode(&bytes).unwrap();
    assert!(matches!(
        kf.unwrap_key(b"correct horsf"),
        Err(Error::WrongPassword)
    ));
    assert!(matches!(kf.unwrap_key(b""), Err(Error::WrongPassword)));
    assert_eq!(kf.unwrap_key(b"correct horse").unwrap(), mk);
}

#[test]
fn config_every_bit() {
    let k = keys();
    let bytes = RepoConfig::new(RepoId([2; 16]), Timestamp::new(1_700_000_000, 5))
        .encode(&k)
        .unwrap();
    each_flip(&bytes, 0..bytes.len(), |b| {
        RepoConfig::decode(&k, b).map(|_| ())
    });
}

#[test]
fn session_and_lease_every_bit() {
    let k = keys();
    let s = Session {
        id: SessionId([4; 16]),
        kind: SessionKind::Backup,
        host: "h".into(),
        pid: 42,
        started: Timestamp::new(1, 2),
        heartbeat: Timestamp::new(3, 4),
    };
    let bytes = s.encode(&k).unwrap();
    each_flip(&bytes, 0..bytes.len(), |b| {
        Session::decode(&k, b).map(|_| ())
    });
    let l = Lease {
        session: s.id,
        host: "h".into(),
        pid: 1,
        acquired: s.started,
        expires: s.heartbeat,
        process: "boot/4026531836/1/100".into(),
    };
    let bytes = l.encode(&k).unwrap();
    each_flip(&bytes, 0..bytes.len(), |b| Lease::decode(&k, b).map(|_| ()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    // Random payloads, random single flips: the property form of the tests above.
    #[test]
    fn any_flip_in_any_envelope_is_corruption(p in payload(), c in compression(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let k = keys();
        let mut sealed = envelope::seal(&k, Kind::Data, &[], &p, c).unwrap();
        let i = pos.index(sealed.len());
        sealed[i] ^= 1 << bit;
        prop_assert!(envelope::open(&k, Kind::Data, &[], &sealed, 1 << 20).unwrap_err().is_corruption());
    }

    #[test]
    fn any_flip_in_any_index_is_corruption(ix in index_file(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let k = keys();
        let (_, mut bytes) = ix.encode(&k, Compression::Zstd(3)).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(IndexFile::decode(&k, &bytes).unwrap_err().is_corruption());
    }
}
