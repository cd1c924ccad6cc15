//! Property tests: every codec decodes what it encodes, and no decoder panics on any bytes.

mod strategies;

use arca_format::*;
use proptest::prelude::*;
use strategies::*;

fn small_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 32,
        iterations: 1,
        parallelism: 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn envelope_roundtrip(p in payload(), c in compression(), ctx in proptest::collection::vec(any::<u8>(), 0..20)) {
        let k = keys();
        for kind in [Kind::Data, Kind::Tree, Kind::Index, Kind::Snapshot] {
            let sealed = envelope::seal(&k, kind, &ctx, &p, c).unwrap();
            prop_assert_eq!(envelope::peek_kind(&sealed).unwrap(), kind);
            let opened = envelope::open(&k, kind, &ctx, &sealed, envelope::MAX_BLOB_LEN).unwrap();
            prop_assert_eq!(&opened, &p);
            // Compression is only kept when it pays.
            prop_assert!(sealed.len() <= p.len() + envelope::OVERHEAD);
        }
    }

    #[test]
    fn envelope_refuses_other_kind_and_context(p in payload()) {
        let k = keys();
        let sealed = envelope::seal(&k, Kind::Data, b"a", &p, Compression::Zstd(3)).unwrap();
        prop_assert!(envelope::open(&k, Kind::Tree, b"a", &sealed, 1 << 20).unwrap_err().is_corruption());
        prop_assert!(envelope::open(&k, Kind::Data, b"b", &sealed, 1 << 20).unwrap_err().is_corruption());
        let other = MasterKey::from_bytes([8u8; 32]).derive();
        prop_assert!(envelope::open(&other, Kind::Data, b"a", &sealed, 1 << 20).unwrap_err().is_corruption());
    }

    #[test]
    fn pack_roundtrip(blobs in proptest::collection::vec(payload(), 1..8), meta in any::<bool>()) {
        let k = keys();
        let (kind, t) = if meta { (PackKind::Meta, BlobType::Tree) } else { (PackKind::Data, BlobType::Data) };
        let mut w = PackWriter::new(kind, 0);
        for b in &blobs {
            w.add_blob(&k, t, k.blob_id(t, b), b, Compression::Zstd(1)).unwrap();
        }
        let p = w.finish(&k).unwrap();
        prop_assert_eq!(p.id, PackId(object_hash(&p.bytes)));
        let entries = pack::read_pack(&k, &p.bytes, Some(p.id)).unwrap();
        prop_assert_eq!(&entries, &p.entries);
        for (e, b) in entries.iter().zip(&blobs) {
            let sealed = &p.bytes[e.offset as usize..e.end() as usize];
            prop_assert_eq!(&pack::open_blob(&k, e, sealed).unwrap(), b);
        }
        // Reading from the tail alone, as a ranged GET would.
        let tlen = pack::trailer_len(&p.bytes[p.bytes.len() - pack::FOOTER_LEN..]).unwrap();
        let start = p.bytes.len() - pack::FOOTER_LEN - tlen;
        let e2 = pack::decode_trailer(&k, &p.bytes[start..p.bytes.len() - pack::FOOTER_LEN], start as u64).unwrap();
        prop_assert_eq!(e2, entries);
    }

    #[test]
    fn index_roundtrip(ix in index_file(), c in compression()) {
        let k = keys();
        let (id, bytes) = ix.encode(&k, c).unwrap();
        prop_assert_eq!(id, IndexId(object_hash(&bytes)));
        prop_assert_eq!(IndexFile::decode(&k, &bytes).unwrap(), ix.clone());
        prop_assert_eq!(IndexFile::decode_plain(&ix.encode_plain().unwrap()).unwrap(), ix);
    }

    #[test]
    fn tree_roundtrip(t in tree()) {
        let bytes = t.encode().unwrap();
        prop_assert_eq!(Tree::decode(&bytes).unwrap(), t);
    }

    #[test]
    fn extent_list_roundtrip(l in extent_list()) {
        let bytes = l.encode().unwrap();
        prop_assert_eq!(ExtentList::decode(&bytes).unwrap(), l);
    }

    #[test]
    fn snapshot_roundtrip(s in snapshot()) {
        let k = keys();
        let (id, bytes) = s.encode(&k).unwrap();
        prop_assert_eq!(id, SnapshotId(object_hash(&bytes)));
        prop_assert_eq!(Snapshot::decode(&k, &bytes).unwrap(), s.clone());
        prop_assert_eq!(Snapshot::decode_plain(&s.encode_plain()).unwrap(), s);
    }

    #[test]
    fn config_roundtrip(c in config()) {
        let k = keys();
        let bytes = c.encode(&k).unwrap();
        prop_assert_eq!(RepoConfig::peek(&bytes).unwrap(), c.repo_id);
        prop_assert_eq!(RepoConfig::decode(&k, &bytes).unwrap(), c);
    }

    #[test]
    fn session_and_lease_roundtrip(id in any::<[u8; 16]>(), host in ".{0,20}", pid in any::<u32>(), a in timestamp(), b in timestamp(), m in any::<bool>()) {
        let k = keys();
        let s = Session { id: SessionId(id), kind: if m { SessionKind::Maintenance } else { SessionKind::Backup }, host: host.clone(), pid, started: a, heartbeat: b };
        prop_assert_eq!(Session::decode(&k, &s.encode(&k).unwrap()).unwrap(), s);
        let l = Lease { session: SessionId(id), host, pid, acquired: a, expires: b, process: format!("{pid}") };
        prop_assert_eq!(Lease::decode(&k, &l.encode(&k).unwrap()).unwrap(), l);
    }

    #[test]
    fn ids_roundtrip_as_text(b in any::<[u8; 32]>()) {
        let id = BlobId(b);
        prop_assert_eq!(id.to_hex().parse::<BlobId>().unwrap(), id);
        prop_assert_eq!(id.short().len(), 8);
        let p = PackId(b);
        for kind in [PackKind::Data, PackKind::Meta] {
            prop_assert_eq!(layout::parse_pack(&layout::pack(kind, &p)), Some((kind, p)));
        }
    }

    // Decoders on arbitrary bytes: an error is fine, a panic is not.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let k = keys();
        let _ = Tree::decode(&bytes);
        let _ = ExtentList::decode(&bytes);
        let _ = Snapshot::decode_plain(&bytes);
        let _ = Snapshot::decode(&k, &bytes);
        let _ = IndexFile::decode_plain(&bytes);
        let _ = IndexFile::decode(&k, &bytes);
        let _ = RepoConfig::peek(&bytes);
        let _ = RepoConfig::decode(&k, &bytes);
        let _ = KeyFile::decode(&bytes);
        let _ = Session::decode(&k, &bytes);
        let _ = Lease::decode(&k, &bytes);
        let _ = pack::trailer_len(&bytes);
        let _ = pack::read_pack(&k, &bytes, None);
        let _ = pack::decode_trailer(&k, &bytes, bytes.len() as u64);
        let _ = envelope::open(&k, Kind::Data, &[], &bytes, 1 << 20);
    }
}

proptest! {
    // Argon2 is deliberately slow, even with tiny parameters: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn key_file_roundtrip(master in any::<[u8; 32]>(), repo in any::<[u8; 16]>(), pw in proptest::collection::vec(any::<u8>(), 0..40), host in ".{0,20}", created in timestamp()) {
        let mk = MasterKey::from_bytes(master);
        let meta = KeyMeta { created, host, username: "u".into() };
        let kf = KeyFile::create(RepoId(repo), &mk, &pw, small_kdf(), meta).unwrap();
        let (id, bytes) = kf.encode();
        prop_assert_eq!(id, KeyId(object_hash(&bytes)));
        let back = KeyFile::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &kf);
        prop_assert_eq!(back.unwrap_key(&pw).unwrap(), mk.clone());
        let mut wrong = pw.clone();
        wrong.push(b'x');
        prop_assert!(matches!(back.unwrap_key(&wrong), Err(Error::WrongPassword)));
        let re = back.rewrap(&pw, b"new", small_kdf()).unwrap();
        prop_assert_eq!(re.unwrap_key(b"new").unwrap(), mk);
        prop_assert!(matches!(re.unwrap_key(&pw), Err(Error::WrongPassword)));
    }
}

#[test]
fn incompressible_data_is_stored_raw_and_compressible_data_shrinks() {
    let k = keys();
    let zeros = vec![0u8; 100_000];
    let sealed = envelope::seal(&k, Kind::Data, &[], &zeros, Compression::Zstd(3)).unwrap();
    assert!(sealed.len() < 1000);
    let mut noise = vec![0u8; 100_000];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let sealed = envelope::seal(&k, Kind::Data, &[], &noise, Compression::Zstd(3)).unwrap();
    assert_eq!(sealed.len(), noise.len() + envelope::OVERHEAD);
    assert_eq!(
        envelope::open(&k, Kind::Data, &[], &sealed, 1 << 20).unwrap(),
        noise
    );
}

#[test]
fn open_refuses_plaintext_larger_than_allowed() {
    let k = keys();
    let sealed =
        envelope::seal(&k, Kind::Data, &[], &vec![1u8; 5000], Compression::Zstd(3)).unwrap();
    assert!(matches!(
        envelope::open(&k, Kind::Data, &[], &sealed, 4000),
        Err(Error::TooLarge { .. })
    ));
    let sealed = envelope::seal(&k, Kind::Data, &[], &[9u8; 5000], Compression::None).unwrap();
    assert!(matches!(
        envelope::open(&k, Kind::Data, &[], &sealed, 4000),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn blob_ids_are_keyed_and_typed() {
    let k = keys();
    let other = MasterKey::from_bytes([1u8; 32]).derive();
    let data = b"same bytes";
    assert_ne!(
        k.blob_id(BlobType::Data, data),
        other.blob_id(BlobType::Data, data)
    );
    assert_ne!(
        k.blob_id(BlobType::Data, data),
        k.blob_id(BlobType::Tree, data)
    );
    assert_ne!(
        k.blob_id(BlobType::Data, data).0,
        *blake3::hash(data).as_bytes()
    );
    assert_ne!(k.chunker_seed(), other.chunker_seed());
}

#[test]
fn encoders_refuse_what_the_format_cannot_hold() {
    // Unsorted or duplicate names, bad names.
    let f = |n: &str| Node::new(n.as_bytes().to_vec(), NodeKind::Fifo);
    for nodes in [
        vec![f("b"), f("a")],
        vec![f("a"), f("a")],
        vec![f("a/b")],
        vec![f("..")],
        vec![f("")],
    ] {
        assert!(matches!(
            Tree { nodes, next: None }.encode(),
            Err(Error::Invalid { .. })
        ));
    }
    // A data blob in a metadata pack.
    let k = keys();
    let mut w = PackWriter::new(PackKind::Meta, 0);
    assert!(
        w.add_blob(&k, BlobType::Data, BlobId([0; 32]), b"x", Compression::None)
            .is_err()
    );
    assert!(PackWriter::new(PackKind::Data, 0).finish(&k).is_err());
    // Overlapping extents.
    let e = |offset, length| Extent {
        offset,
        length,
        id: BlobId([0; 32]),
    };
    assert!(
        ExtentList {
            extents: vec![e(0, 10), e(5, 10)]
        }
        .encode()
        .is_err()
    );
    // Chunker outside FastCDC's bounds.
    let mut c = RepoConfig::new(RepoId([0; 16]), Timestamp::default());
    c.chunker.max_size = 64 << 20;
    assert!(c.encode(&k).is_err());
}

#[test]
fn config_from_a_newer_format_is_unsupported_not_corrupt() {
    let k = keys();
    let mut bytes = RepoConfig::new(RepoId([3; 16]), Timestamp::default())
        .encode(&k)
        .unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let n = bytes.len();
    let sum = object_hash(&bytes[..n - 32]);
    bytes[n - 32..].copy_from_slice(&sum);
    assert!(matches!(
        RepoConfig::peek(&bytes),
        Err(Error::UnsupportedVersion {
            found: 2,
            supported: 1,
            ..
        })
    ));
}

/// Any u32 may arrive as Argon2id parameters from a damaged key file; the check rejects
/// them without overflowing (the key_file fuzz target found `8 * parallelism` overflow).
#[test]
fn implausible_kdf_parameters_are_rejected_without_overflow() {
    for (m, t, p) in [
        (65536, 3, u32::MAX),
        (u32::MAX, 3, 1 << 29),
        (0, 0, 0),
        (65536, u32::MAX, 1),
    ] {
        let kdf = KdfParams {
            memory_kib: m,
            iterations: t,
            parallelism: p,
        };
        let e = kdf.kek(b"pw", &[0; 32]).unwrap_err();
        assert!(
            e.to_string().contains("implausible Argon2id parameters"),
            "{e}"
        );
    }
}
