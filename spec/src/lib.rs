//! # arca-spec: golden vectors of the repository format
//!
//! `spec/vectors/*.json` pin every encoding of `spec/FORMAT.md`. This crate defines the
//! vector files' shape ([`model`] and the `*Vectors` types), generates them from fixed
//! inputs ([`generate`], run by `cargo run -p arca-spec --bin gen-vectors`, only when the
//! format changes), and checks them against `arca-format` in both directions
//! ([`check`], run by `cargo test`): encoding the inputs gives the expected bytes, and
//! decoding the bytes gives the inputs.

pub mod model;

use std::collections::BTreeMap;

use arca_format::{self as f, BlobType, Kind, envelope};
use model::*;
use serde::{Deserialize, Serialize};

/// Result of checking one vector file: `Err` names the case and what differed.
pub type Check = Result<(), String>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Check {
    if ok { Ok(()) } else { Err(what()) }
}

fn eq_hex(case: &str, field: &str, got: &[u8], want: &[u8]) -> Check {
    ensure(got == want, || {
        format!(
            "{case}: {field} differs\n  got  {}\n  want {}",
            hex::encode(got),
            hex::encode(want)
        )
    })
}

fn fmt_err<T>(case: &str, r: f::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{case}: {e}"))
}

fn keys_of(master: &[u8]) -> f::Keys {
    f::MasterKey::from_bytes(id32(master)).derive()
}

fn kind_of(n: u8) -> Kind {
    match n {
        1 => Kind::Data,
        2 => Kind::Tree,
        3 => Kind::ExtentList,
        16 => Kind::PackTrailer,
        17 => Kind::Index,
        18 => Kind::Snapshot,
        19 => Kind::Config,
        20 => Kind::Session,
        21 => Kind::Lease,
        k => panic!("vector holds unknown envelope kind {k}"),
    }
}

/// Deterministic bytes for inputs: the generator needs no randomness.
fn fill(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------------------
// keys.json

/// Key derivation and blob IDs.
#[derive(Serialize, Deserialize, Debug)]
pub struct KeysVectors {
    /// Master key.
    #[serde(with = "hexs")]
    pub master_key: Vec<u8>,
    /// Derived ID key of data blobs.
    #[serde(with = "hexs")]
    pub data_id_key: Vec<u8>,
    /// Derived ID key of tree blobs.
    #[serde(with = "hexs")]
    pub tree_id_key: Vec<u8>,
    /// Derived ID key of extent-list blobs.
    #[serde(with = "hexs")]
    pub extents_id_key: Vec<u8>,
    /// Derived envelope key.
    #[serde(with = "hexs")]
    pub envelope_key: Vec<u8>,
    /// Chunker seed (decimal string: JSON numbers lose precision above 2^53).
    pub chunker_seed: String,
    /// Blob IDs.
    pub blob_ids: Vec<BlobIdCase>,
}

/// One blob ID.
#[derive(Serialize, Deserialize, Debug)]
pub struct BlobIdCase {
    /// 1 data, 2 tree, 3 extent list.
    pub blob_type: u8,
    /// Plaintext.
    #[serde(with = "hexs")]
    pub plaintext: Vec<u8>,
    /// Expected ID.
    #[serde(with = "hexs")]
    pub id: Vec<u8>,
}

fn gen_keys() -> KeysVectors {
    let master = fill(1, 32);
    let k = keys_of(&master);
    let blob_ids = [
        (1u8, Vec::new()),
        (1, b"hello".to_vec()),
        (2, b"hello".to_vec()),
        (3, b"hello".to_vec()),
        (1, fill(9, 5000)),
    ]
    .into_iter()
    .map(|(t, p)| BlobIdCase {
        blob_type: t,
        id: k.blob_id(blob_type(t), &p).0.to_vec(),
        plaintext: p,
    })
    .collect();
    KeysVectors {
        data_id_key: k.id_key(BlobType::Data).to_vec(),
        tree_id_key: k.id_key(BlobType::Tree).to_vec(),
        extents_id_key: k.id_key(BlobType::ExtentList).to_vec(),
        envelope_key: k.envelope_key().to_vec(),
        chunker_seed: k.chunker_seed().to_string(),
        blob_ids,
        master_key: master,
    }
}

fn check_keys(v: &KeysVectors) -> Check {
    let k = keys_of(&v.master_key);
    eq_hex(
        "keys",
        "data_id_key",
        k.id_key(BlobType::Data),
        &v.data_id_key,
    )?;
    eq_hex(
        "keys",
        "tree_id_key",
        k.id_key(BlobType::Tree),
        &v.tree_id_key,
    )?;
    eq_hex(
        "keys",
        "extents_id_key",
        k.id_key(BlobType::ExtentList),
        &v.extents_id_key,
    )?;
    eq_hex("keys", "envelope_key", k.envelope_key(), &v.envelope_key)?;
    ensure(k.chunker_seed().to_string() == v.chunker_seed, || {
        "keys: chunker_seed differs".into()
    })?;
    for (i, c) in v.blob_ids.iter().enumerate() {
        eq_hex(
            &format!("blob id {i}"),
            "id",
            &k.blob_id(blob_type(c.blob_type), &c.plaintext).0,
            &c.id,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// envelopes.json

/// Envelopes.
#[derive(Serialize, Deserialize, Debug)]
pub struct EnvelopeVectors {
    /// Master key.
    #[serde(with = "hexs")]
    pub master_key: Vec<u8>,
    /// Cases.
    pub cases: Vec<EnvelopeCase>,
}

/// One envelope.
#[derive(Serialize, Deserialize, Debug)]
pub struct EnvelopeCase {
    /// Description.
    pub name: String,
    /// Kind byte.
    pub kind: u8,
    /// Associated context.
    #[serde(with = "hexs")]
    pub context: Vec<u8>,
    /// Plaintext.
    #[serde(with = "hexs")]
    pub plaintext: Vec<u8>,
    /// Compression the writer asked for.
    pub compression: Comp,
    /// Whether the payload ended up compressed. Compressed envelopes are checked in the
    /// decode direction only (zstd's output is not canonical across versions).
    pub compressed: bool,
    /// Nonce.
    #[serde(with = "hexs")]
    pub nonce: Vec<u8>,
    /// The per-envelope AES key, BLAKE3-keyed(envelope key, nonce).
    #[serde(with = "hexs")]
    pub blob_key: Vec<u8>,
    /// The envelope.
    #[serde(with = "hexs")]
    pub sealed: Vec<u8>,
}

fn nonce24(v: &[u8]) -> [u8; 24] {
    v.try_into().expect("vector holds a 24-byte nonce")
}

fn gen_envelopes() -> EnvelopeVectors {
    let master = fill(2, 32);
    let k = keys_of(&master);
    let cases = [
        ("empty data blob", 1u8, vec![], vec![], Comp::None),
        (
            "short data blob, stored raw",
            1,
            vec![],
            b"arca".to_vec(),
            Comp::None,
        ),
        (
            "incompressible blob: zstd asked, stored raw",
            1,
            vec![],
            fill(3, 64),
            Comp::Zstd(3),
        ),
        (
            "compressible tree blob, zstd",
            2,
            vec![],
            vec![b'a'; 300],
            Comp::Zstd(3),
        ),
        ("index body, raw", 17, vec![], fill(5, 100), Comp::None),
        (
            "config body with repo_id context",
            19,
            fill(6, 16),
            fill(7, 40),
            Comp::None,
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, kind, context, plaintext, compression))| {
        let nonce = nonce24(&fill(100 + i as u8, 24));
        let mut sealed = Vec::new();
        let s = envelope::seal_with_nonce(
            &k,
            kind_of(kind),
            &context,
            &plaintext,
            compression.into(),
            nonce,
            &mut sealed,
        )
        .expect("vector input seals");
        EnvelopeCase {
            name: name.into(),
            kind,
            context,
            plaintext,
            compression,
            compressed: s.compressed,
            nonce: nonce.to_vec(),
            blob_key: blake3::keyed_hash(k.envelope_key(), &nonce)
                .as_bytes()
                .to_vec(),
            sealed,
        }
    })
    .collect();
    EnvelopeVectors {
        master_key: master,
        cases,
    }
}

fn check_envelopes(v: &EnvelopeVectors) -> Check {
    let k = keys_of(&v.master_key);
    for c in &v.cases {
        let kind = kind_of(c.kind);
        let opened = fmt_err(
            &c.name,
            envelope::open(&k, kind, &c.context, &c.sealed, 1 << 20),
        )?;
        eq_hex(&c.name, "opened plaintext", &opened, &c.plaintext)?;
        eq_hex(
            &c.name,
            "blob_key",
            blake3::keyed_hash(k.envelope_key(), &nonce24(&c.nonce)).as_bytes(),
            &c.blob_key,
        )?;
        if !c.compressed {
            let mut out = Vec::new();
            let s = fmt_err(
                &c.name,
                envelope::seal_with_nonce(
                    &k,
                    kind,
                    &c.context,
                    &c.plaintext,
                    c.compression.into(),
                    nonce24(&c.nonce),
                    &mut out,
                ),
            )?;
            ensure(!s.compressed, || format!("{}: compressed now", c.name))?;
            eq_hex(&c.name, "sealed", &out, &c.sealed)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// key_file.json

/// A key file.
#[derive(Serialize, Deserialize, Debug)]
pub struct KeyFileVectors {
    /// The password, UTF-8.
    pub password: String,
    /// The master key it wraps.
    #[serde(with = "hexs")]
    pub master_key: Vec<u8>,
    /// Repository ID.
    #[serde(with = "hexs")]
    pub repo_id: Vec<u8>,
    /// Argon2id memory (KiB), iterations, parallelism.
    pub kdf: [u32; 3],
    /// Salt.
    #[serde(with = "hexs")]
    pub salt: Vec<u8>,
    /// Nonce.
    #[serde(with = "hexs")]
    pub nonce: Vec<u8>,
    /// Descriptive fields.
    pub created: Ts,
    /// Descriptive fields.
    pub host: String,
    /// Descriptive fields.
    pub username: String,
    /// The derived key-encryption key.
    #[serde(with = "hexs")]
    pub kek: Vec<u8>,
    /// The key file's bytes.
    #[serde(with = "hexs")]
    pub key_file: Vec<u8>,
    /// Its ID.
    #[serde(with = "hexs")]
    pub key_id: Vec<u8>,
}

fn gen_key_file() -> KeyFileVectors {
    let master = fill(3, 32);
    let kdf = f::KdfParams {
        memory_kib: 64,
        iterations: 2,
        parallelism: 1,
    };
    let salt = fill(4, 32);
    let nonce = fill(5, 12);
    let meta = f::KeyMeta {
        created: f::Timestamp::new(1_795_000_000, 123),
        host: "node-a".into(),
        username: "root".into(),
    };
    let repo_id = fill(6, 16);
    let kf = f::KeyFile::create_with(
        f::RepoId(id16(&repo_id)),
        &f::MasterKey::from_bytes(id32(&master)),
        "correct horse battery staple".as_bytes(),
        kdf,
        id32(&salt),
        nonce.clone().try_into().expect("12"),
        meta.clone(),
    )
    .expect("vector key file");
    let (id, bytes) = kf.encode();
    KeyFileVectors {
        password: "correct horse battery staple".into(),
        master_key: master,
        repo_id,
        kdf: [kdf.memory_kib, kdf.iterations, kdf.parallelism],
        kek: kdf
            .kek(b"correct horse battery staple", &salt)
            .expect("kek")
            .to_vec(),
        salt,
        nonce,
        created: meta.created.into(),
        host: meta.host,
        username: meta.username,
        key_file: bytes,
        key_id: id.0.to_vec(),
    }
}

fn check_key_file(v: &KeyFileVectors) -> Check {
    let c = "key file";
    let kdf = f::KdfParams {
        memory_kib: v.kdf[0],
        iterations: v.kdf[1],
        parallelism: v.kdf[2],
    };
    eq_hex(
        c,
        "kek",
        &fmt_err(c, kdf.kek(v.password.as_bytes(), &v.salt))?,
        &v.kek,
    )?;
    let meta = f::KeyMeta {
        created: v.created.into(),
        host: v.host.clone(),
        username: v.username.clone(),
    };
    let kf = fmt_err(
        c,
        f::KeyFile::create_with(
            f::RepoId(id16(&v.repo_id)),
            &f::MasterKey::from_bytes(id32(&v.master_key)),
            v.password.as_bytes(),
            kdf,
            id32(&v.salt),
            v.nonce
                .clone()
                .try_into()
                .map_err(|_| "nonce length".to_string())?,
            meta.clone(),
        ),
    )?;
    let (id, bytes) = kf.encode();
    eq_hex(c, "key_file", &bytes, &v.key_file)?;
    eq_hex(c, "key_id", &id.0, &v.key_id)?;
    let back = fmt_err(c, f::KeyFile::decode(&v.key_file))?;
    ensure(back == kf, || format!("{c}: decoded fields differ"))?;
    let mk = fmt_err(c, back.unwrap_key(v.password.as_bytes()))?;
    eq_hex(c, "unwrapped master key", mk.as_bytes(), &v.master_key)?;
    ensure(
        matches!(back.unwrap_key(b"wrong"), Err(f::Error::WrongPassword)),
        || format!("{c}: wrong password accepted"),
    )
}

// ---------------------------------------------------------------------------------------
// config.json

/// The config object.
#[derive(Serialize, Deserialize, Debug)]
pub struct ConfigVectors {
    /// Master key.
    #[serde(with = "hexs")]
    pub master_key: Vec<u8>,
    /// Fields.
    pub config: Config,
    /// Envelope nonce.
    #[serde(with = "hexs")]
    pub nonce: Vec<u8>,
    /// The protobuf body inside the envelope.
    #[serde(with = "hexs")]
    pub body: Vec<u8>,
    /// The stored bytes.
    #[serde(with = "hexs")]
    pub bytes: Vec<u8>,
}

fn gen_config() -> ConfigVectors {
    let master = fill(7, 32);
    let k = keys_of(&master);
    let cfg = f::RepoConfig::new(
        f::RepoId(id16(&fill(8, 16))),
        f::Timestamp::new(1_795_000_000, 0),
    );
    let nonce = fill(9, 24);
    let bytes = cfg.encode_with_nonce(&k, nonce24(&nonce)).expect("config");
    let sealed = &bytes[28..bytes.len() - 32];
    let body =
        envelope::open(&k, Kind::Config, cfg.repo_id.as_bytes(), sealed, 1 << 20).expect("open");
    ConfigVectors {
        master_key: master,
        config: (&cfg).into(),
        nonce,
        body,
        bytes,
    }
}

fn check_config(v: &ConfigVectors) -> Check {
    let c = "config";
    let k = keys_of(&v.master_key);
    let cfg: f::RepoConfig = (&v.config).into();
    eq_hex(
        c,
        "bytes",
        &fmt_err(c, cfg.encode_with_nonce(&k, nonce24(&v.nonce)))?,
        &v.bytes,
    )?;
    let back = fmt_err(c, f::RepoConfig::decode(&k, &v.bytes))?;
    ensure(back == cfg, || format!("{c}: decoded fields differ"))?;
    let sealed = &v.bytes[28..v.bytes.len() - 32];
    eq_hex(
        c,
        "body",
        &fmt_err(
            c,
            envelope::open(&k, Kind::Config, &v.config.repo_id, sealed, 1 << 20),
        )?,
        &v.body,
    )
}

// ---------------------------------------------------------------------------------------
// packs.json

/// Packs.
#[derive(Serialize, Deserialize, Debug)]
pub struct PackVectors {
    /// Master key.
    #[serde(with = "hexs")]
    pub master_key: Vec<u8>,
    /// Cases.
    pub cases: Vec<PackCase>,
}

/// One pack.
#[derive(Serialize, Deserialize, Debug)]
pub struct PackCase {
    /// Description.
    pub name: String,
    /// Blobs, in order, each sealed uncompressed with its nonce.
    pub blobs: Vec<PackBlob>,
    /// Nonce of the trailer envelope.
    #[serde(with = "hexs")]
    pub trailer_nonce: Vec<u8>,
    /// Trailer plaintext.
    #[serde(with = "hexs")]
    pub trailer_plain: Vec<u8>,
    /// The pack file.
    #[serde(with = "hexs")]
    pub pack: Vec<u8>,
    /// Its ID.
    #[serde(with = "hexs")]
    pub pack_id: Vec<u8>,
    /// Its entries.
    pub entries: Vec<Entry>,
}

/// One blob of a pack.
#[derive(Serialize, Deserialize, Debug)]
pub struct PackBlob {
    /// Type.
    pub blob_type: u8,
    /// Plaintext.
    #[serde(with = "hexs")]
    pub plaintext: Vec<u8>,
    /// Envelope nonce.
    #[serde(with = "hexs")]
    pub nonce: Vec<u8>,
}

fn build_pack(k: &f::Keys, blobs: &[PackBlob], trailer_nonce: &[u8]) -> f::Result<f::FinishedPack> {
    let kind = blob_type(blobs[0].blob_type).pack_kind();
    let mut w = f::PackWriter::new(kind, 0);
    for b in blobs {
        let t = blob_type(b.blob_type);
        let mut sealed = Vec::new();
        envelope::seal_with_nonce(
            k,
            t.kind(),
            &[],
            &b.plaintext,
            f::Compression::None,
            nonce24(&b.nonce),
            &mut sealed,
        )?;
        w.add_sealed(
            t,
            k.blob_id(t, &b.plaintext),
            b.plaintext.len() as u32,
            &sealed,
        )?;
    }
    w.finish_with_nonce(k, nonce24(trailer_nonce))
}

fn gen_packs() -> PackVectors {
    let master = fill(10, 32);
    let k = keys_of(&master);
    let mk = |t: u8, p: Vec<u8>, seed: u8| PackBlob {
        blob_type: t,
        plaintext: p,
        nonce: fill(seed, 24),
    };
    let cases = [
        (
            "data pack of three chunks",
            vec![
                mk(1, b"first".to_vec(), 20),
                mk(1, fill(11, 100), 21),
                mk(1, vec![], 22),
            ],
        ),
        (
            "metadata pack: a tree and an extent list",
            vec![
                mk(2, f::Tree::default().encode().expect("tree"), 23),
                mk(3, f::ExtentList::default().encode().expect("el"), 24),
            ],
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, blobs))| {
        let trailer_nonce = fill(30 + i as u8, 24);
        let p = build_pack(&k, &blobs, &trailer_nonce).expect("pack");
        let tlen = f::pack::trailer_len(&p.bytes).expect("footer");
        let start = p.bytes.len() - f::pack::FOOTER_LEN - tlen;
        let trailer_plain = envelope::open(
            &k,
            Kind::PackTrailer,
            &[],
            &p.bytes[start..start + tlen],
            1 << 26,
        )
        .expect("trailer");
        PackCase {
            name: name.into(),
            blobs,
            trailer_nonce,
            trailer_plain,
            pack_id: p.id.0.to_vec(),
            entries: p.entries.iter().map(Into::into).collect(),
            pack: p.bytes,
        }
    })
    .collect();
    PackVectors {
        master_key: master,
        cases,
    }
}

fn check_packs(v: &PackVectors) -> Check {
    let k = keys_of(&v.master_key);
    for c in &v.cases {
        let p = fmt_err(&c.name, build_pack(&k, &c.blobs, &c.trailer_nonce))?;
        eq_hex(&c.name, "pack", &p.bytes, &c.pack)?;
        eq_hex(&c.name, "pack_id", &p.id.0, &c.pack_id)?;
        let entries = fmt_err(
            &c.name,
            f::pack::read_pack(&k, &c.pack, Some(f::PackId(id32(&c.pack_id)))),
        )?;
        let want: Vec<f::PackEntry> = c.entries.iter().map(Into::into).collect();
        ensure(entries == want, || format!("{}: entries differ", c.name))?;
        let tlen = fmt_err(&c.name, f::pack::trailer_len(&c.pack))?;
        let start = c.pack.len() - f::pack::FOOTER_LEN - tlen;
        let plain = fmt_err(
            &c.name,
            envelope::open(
                &k,
                Kind::PackTrailer,
                &[],
                &c.pack[start..start + tlen],
                1 << 26,
            ),
        )?;
        eq_hex(&c.name, "trailer_plain", &plain, &c.trailer_plain)?;
        for (e, b) in entries.iter().zip(&c.blobs) {
            let got = fmt_err(
                &c.name,
                f::pack::open_blob(&k, e, &c.pack[e.offset as usize..e.end() as usize]),
            )?;
            eq_hex(&c.name, "blob", &got, &b.plaintext)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sealed protobuf objects: index files, snapshots, sessions, leases.

/// A sealed protobuf object: value, plaintext, nonce, stored bytes, ID.
#[derive(Serialize, Deserialize, Debug)]
pub struct SealedCase<T> {
    /// Description.
    pub name: String,
    /// The value.
    pub value: T,
    /// Its protobuf encoding.
    #[serde(with = "hexs")]
    pub plain: Vec<u8>,
    /// Nonce of the envelope (sealed uncompressed).
    #[serde(with = "hexs")]
    pub nonce: Vec<u8>,
    /// The stored bytes.
    #[serde(with = "hexs")]
    pub sealed: Vec<u8>,
    /// BLAKE3 of the stored bytes.
    #[serde(with = "hexs")]
    pub id: Vec<u8>,
}

/// A file of sealed objects of one type.
#[derive(Serialize, Deserialize, Debug)]
pub struct SealedVectors<T> {
    /// Master key.
    #[serde(with = "hexs")]
    pub master_key: Vec<u8>,
    /// Envelope kind.
    pub kind: u8,
    /// Cases.
    pub cases: Vec<SealedCase<T>>,
}

fn seal_case<T>(
    k: &f::Keys,
    kind: Kind,
    name: &str,
    value: T,
    plain: Vec<u8>,
    seed: u8,
) -> SealedCase<T> {
    let nonce = fill(seed, 24);
    let mut sealed = Vec::new();
    envelope::seal_with_nonce(
        k,
        kind,
        &[],
        &plain,
        f::Compression::None,
        nonce24(&nonce),
        &mut sealed,
    )
    .expect("seal");
    SealedCase {
        name: name.into(),
        value,
        id: f::object_hash(&sealed).to_vec(),
        plain,
        nonce,
        sealed,
    }
}

/// Check a file of sealed objects given how to encode a value and how to decode bytes.
fn check_sealed<T, V: PartialEq + std::fmt::Debug>(
    v: &SealedVectors<T>,
    to_value: impl Fn(&T) -> V,
    encode_plain: impl Fn(&V) -> f::Result<Vec<u8>>,
    decode: impl Fn(&f::Keys, &[u8]) -> f::Result<V>,
) -> Check {
    let k = keys_of(&v.master_key);
    let kind = kind_of(v.kind);
    for c in &v.cases {
        let value = to_value(&c.value);
        let plain = fmt_err(&c.name, encode_plain(&value))?;
        eq_hex(&c.name, "plain", &plain, &c.plain)?;
        let mut sealed = Vec::new();
        fmt_err(
            &c.name,
            envelope::seal_with_nonce(
                &k,
                kind,
                &[],
                &plain,
                f::Compression::None,
                nonce24(&c.nonce),
                &mut sealed,
            ),
        )?;
        eq_hex(&c.name, "sealed", &sealed, &c.sealed)?;
        eq_hex(&c.name, "id", &f::object_hash(&c.sealed), &c.id)?;
        let back = fmt_err(&c.name, decode(&k, &c.sealed))?;
        ensure(back == value, || {
            format!(
                "{}: decoded value differs:\n  got  {back:?}\n  want {value:?}",
                c.name
            )
        })?;
    }
    Ok(())
}

fn gen_index() -> SealedVectors<Index> {
    let master = fill(12, 32);
    let k = keys_of(&master);
    let e = |t: u8, seed: u8, offset: u32, length: u32, raw: u32| f::PackEntry {
        blob_type: blob_type(t),
        id: f::BlobId(id32(&fill(seed, 32))),
        offset,
        length,
        raw_length: raw,
    };
    let ix = f::IndexFile {
        supersedes: vec![f::IndexId(id32(&fill(40, 32)))],
        packs: vec![
            f::IndexPack {
                id: f::PackId(id32(&fill(41, 32))),
                size: 1_000_000,
                obsolete_since: None,
                obsolete_visible: None,
                blobs: vec![e(1, 42, 0, 500_046, 600_000), e(1, 43, 500_046, 46, 0)],
            },
            f::IndexPack {
                id: f::PackId(id32(&fill(44, 32))),
                size: 5_000,
                obsolete_since: Some(f::Timestamp::new(1_795_000_000, 7)),
                obsolete_visible: None,
                blobs: vec![e(2, 45, 0, 146, 200), e(3, 46, 146, 1000, 954)],
            },
        ],
    };
    let empty = f::IndexFile::default();
    let cases = vec![
        seal_case(
            &k,
            Kind::Index,
            "two packs, one obsolete, one superseded file",
            (&ix).into(),
            ix.encode_plain().expect("ix"),
            47,
        ),
        seal_case(
            &k,
            Kind::Index,
            "empty index file",
            (&empty).into(),
            empty.encode_plain().expect("ix"),
            48,
        ),
    ];
    SealedVectors {
        master_key: master,
        kind: 17,
        cases,
    }
}

fn gen_snapshots() -> SealedVectors<Snapshot> {
    let master = fill(13, 32);
    let k = keys_of(&master);
    let mut s = f::Snapshot::new(f::SnapshotRoot::Tree(f::BlobId(id32(&fill(50, 32)))));
    s.time = f::Timestamp::new(1_795_000_000, 1);
    s.end_time = f::Timestamp::new(1_795_000_060, 2);
    s.host = "node-a".into();
    s.username = "root".into();
    s.paths = vec![b"/var/lib/data".to_vec(), vec![0x2f, 0xff, 0xfe]];
    s.tags = vec!["daily".into(), "k8s".into()];
    s.labels = BTreeMap::from([("velero.io/backup-name".to_string(), "nightly".to_string())]);
    s.parent = Some(f::SnapshotId(id32(&fill(51, 32))));
    s.summary = f::Summary {
        files_new: 1,
        files_changed: 2,
        files_unmodified: 3,
        dirs_new: 4,
        dirs_changed: 5,
        dirs_unmodified: 6,
        data_blobs: 7,
        tree_blobs: 8,
        bytes_processed: 9,
        bytes_added: 10,
        bytes_stored: 11,
        errors: 12,
    };
    s.program = "arca 0.1.0".into();
    let mut v = f::Snapshot::new(f::SnapshotRoot::Volume(f::Volume {
        size: 10 << 30,
        extent_lists: vec![f::BlobId(id32(&fill(52, 32)))],
    }));
    v.time = f::Timestamp::new(-5, 999_999_999);
    v.original = Some(f::SnapshotId(id32(&fill(53, 32))));
    let cases = vec![
        seal_case(
            &k,
            Kind::Snapshot,
            "tree snapshot with every field",
            (&s).into(),
            s.encode_plain(),
            54,
        ),
        seal_case(
            &k,
            Kind::Snapshot,
            "volume snapshot, rewritten",
            (&v).into(),
            v.encode_plain(),
            55,
        ),
    ];
    SealedVectors {
        master_key: master,
        kind: 18,
        cases,
    }
}

/// Session or lease fields, flattened.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SessionValue {
    /// Session ID.
    #[serde(with = "hexs")]
    pub id: Vec<u8>,
    /// 1 backup, 2 maintenance (sessions only; 0 for a lease).
    pub kind: u32,
    /// Host.
    pub host: String,
    /// PID.
    pub pid: u32,
    /// Started / acquired.
    pub start: Ts,
    /// Heartbeat / expires.
    pub end: Ts,
}

fn gen_sessions() -> (SealedVectors<SessionValue>, SealedVectors<SessionValue>) {
    let master = fill(14, 32);
    let k = keys_of(&master);
    let s = f::Session {
        id: f::SessionId(id16(&fill(60, 16))),
        kind: f::SessionKind::Backup,
        host: "node-b".into(),
        pid: 4242,
        started: f::Timestamp::new(1_795_000_000, 0),
        heartbeat: f::Timestamp::new(1_795_000_300, 0),
    };
    let l = f::Lease {
        session: s.id,
        host: "node-c".into(),
        pid: 7,
        acquired: s.started,
        expires: f::Timestamp::new(1_795_001_800, 0),
        // Empty, so not encoded: the vector's bytes are those of format 1.0.
        process: String::new(),
    };
    let sv = SessionValue {
        id: s.id.0.to_vec(),
        kind: 1,
        host: s.host.clone(),
        pid: s.pid,
        start: s.started.into(),
        end: s.heartbeat.into(),
    };
    let lv = SessionValue {
        id: l.session.0.to_vec(),
        kind: 0,
        host: l.host.clone(),
        pid: l.pid,
        start: l.acquired.into(),
        end: l.expires.into(),
    };
    (
        SealedVectors {
            master_key: master.clone(),
            kind: 20,
            cases: vec![seal_case(
                &k,
                Kind::Session,
                "backup session",
                sv,
                s.encode_plain(),
                61,
            )],
        },
        SealedVectors {
            master_key: master,
            kind: 21,
            cases: vec![seal_case(
                &k,
                Kind::Lease,
                "maintenance lease",
                lv,
                l.encode_plain(),
                62,
            )],
        },
    )
}

fn session_of(v: &SessionValue) -> f::Session {
    f::Session {
        id: f::SessionId(id16(&v.id)),
        kind: if v.kind == 2 {
            f::SessionKind::Maintenance
        } else {
            f::SessionKind::Backup
        },
        host: v.host.clone(),
        pid: v.pid,
        started: v.start.into(),
        heartbeat: v.end.into(),
    }
}

fn lease_of(v: &SessionValue) -> f::Lease {
    f::Lease {
        session: f::SessionId(id16(&v.id)),
        host: v.host.clone(),
        pid: v.pid,
        acquired: v.start.into(),
        expires: v.end.into(),
        process: String::new(),
    }
}

// ---------------------------------------------------------------------------------------
// Plaintext blobs: trees and extent lists.

/// A plaintext blob: value, bytes, ID.
#[derive(Serialize, Deserialize, Debug)]
pub struct BlobCase<T> {
    /// Description.
    pub name: String,
    /// The value.
    pub value: T,
    /// Its plaintext.
    #[serde(with = "hexs")]
    pub plain: Vec<u8>,
    /// Its blob ID.
    #[serde(with = "hexs")]
    pub id: Vec<u8>,
}

/// A file of blob plaintexts of one type.
#[derive(Serialize, Deserialize, Debug)]
pub struct BlobVectors<T> {
    /// Master key (for the IDs).
    #[serde(with = "hexs")]
    pub master_key: Vec<u8>,
    /// Blob type.
    pub blob_type: u8,
    /// Cases.
    pub cases: Vec<BlobCase<T>>,
}

fn gen_trees() -> BlobVectors<Tree> {
    let master = fill(15, 32);
    let k = keys_of(&master);
    let id = |s: u8| f::BlobId(id32(&fill(s, 32)));
    let mut file = f::Node::new(
        b"a file".to_vec(),
        f::NodeKind::File {
            content: vec![id(70), id(71)],
            sparse: true,
        },
    );
    file.mode = 0o4755;
    file.uid = 1000;
    file.gid = 100;
    file.user = "alice".into();
    file.group = "users".into();
    file.mtime = f::Timestamp::new(1_700_000_000, 123_456_789);
    file.ctime = f::Timestamp::new(1_700_000_001, 0);
    file.atime = Some(f::Timestamp::new(1_700_000_002, 5));
    file.size = 3_000_000;
    file.inode = 77;
    file.device = 2049;
    file.links = 2;
    file.xattrs = vec![
        f::Xattr {
            name: b"user.a".to_vec(),
            value: vec![0, 1, 2],
        },
        f::Xattr {
            name: b"user.b".to_vec(),
            value: vec![],
        },
    ];
    let mut odd = f::Node::new(
        vec![b'b', 0xff, b'\n', b'z'],
        f::NodeKind::File {
            content: vec![],
            sparse: false,
        },
    );
    odd.mode = 0o644;
    let mut dir = f::Node::new(b"dir".to_vec(), f::NodeKind::Dir { subtree: id(72) });
    dir.mode = 0o755;
    let mut lnk = f::Node::new(
        b"link".to_vec(),
        f::NodeKind::Symlink {
            target: b"../elsewhere".to_vec(),
        },
    );
    lnk.mode = 0o777;
    let fifo = f::Node::new(b"pipe".to_vec(), f::NodeKind::Fifo);
    let sock = f::Node::new(b"sock".to_vec(), f::NodeKind::Socket);
    let chr = f::Node::new(
        b"tty".to_vec(),
        f::NodeKind::CharDevice { rdev: (4 << 8) | 1 },
    );
    let blk = f::Node::new(b"vda".to_vec(), f::NodeKind::BlockDevice { rdev: 253 << 8 });
    let mut damaged = f::Node::new(
        b"zz-damaged".to_vec(),
        f::NodeKind::File {
            content: vec![id(73)],
            sparse: false,
        },
    );
    damaged.damage = Some("chunk 1 of 2 lost".into());
    let all = f::Tree {
        nodes: vec![file, odd, dir, lnk, fifo, sock, chr, blk, damaged],
        next: None,
    };
    let empty = f::Tree::default();
    let chained = f::Tree {
        nodes: vec![f::Node::new(b"only".to_vec(), f::NodeKind::Fifo)],
        next: Some(id(74)),
    };
    let cases = [
        ("every node kind", all),
        ("empty directory", empty),
        ("chained: continues in next", chained),
    ]
    .into_iter()
    .map(|(name, t)| {
        let plain = t.encode().expect("tree");
        BlobCase {
            name: name.into(),
            value: (&t).into(),
            id: k.blob_id(BlobType::Tree, &plain).0.to_vec(),
            plain,
        }
    })
    .collect();
    BlobVectors {
        master_key: master,
        blob_type: 2,
        cases,
    }
}

fn gen_extent_lists() -> BlobVectors<ExtentList> {
    let master = fill(16, 32);
    let k = keys_of(&master);
    let l = f::ExtentList {
        extents: vec![
            f::Extent {
                offset: 0,
                length: 1 << 20,
                id: f::BlobId(id32(&fill(80, 32))),
            },
            f::Extent {
                offset: 5 << 20,
                length: 4096,
                id: f::BlobId(id32(&fill(81, 32))),
            },
            f::Extent {
                offset: (1 << 40) - 4096,
                length: 4096,
                id: f::BlobId(id32(&fill(80, 32))),
            },
        ],
    };
    let plain = l.encode().expect("extents");
    BlobVectors {
        master_key: master,
        blob_type: 3,
        cases: vec![BlobCase {
            name: "three extents with holes".into(),
            value: (&l).into(),
            id: k.blob_id(BlobType::ExtentList, &plain).0.to_vec(),
            plain,
        }],
    }
}

fn check_blobs<T, V: PartialEq + std::fmt::Debug>(
    v: &BlobVectors<T>,
    to_value: impl Fn(&T) -> V,
    encode: impl Fn(&V) -> f::Result<Vec<u8>>,
    decode: impl Fn(&[u8]) -> f::Result<V>,
) -> Check {
    let k = keys_of(&v.master_key);
    for c in &v.cases {
        let value = to_value(&c.value);
        eq_hex(
            &c.name,
            "plain",
            &fmt_err(&c.name, encode(&value))?,
            &c.plain,
        )?;
        eq_hex(
            &c.name,
            "id",
            &k.blob_id(blob_type(v.blob_type), &c.plain).0,
            &c.id,
        )?;
        let back = fmt_err(&c.name, decode(&c.plain))?;
        ensure(back == value, || {
            format!("{}: decoded value differs", c.name)
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------

/// Every vector file, by name, as pretty JSON.
pub fn generate() -> BTreeMap<&'static str, String> {
    let json = |v: serde_json::Result<String>| v.expect("vectors serialize") + "\n";
    let (sessions, leases) = gen_sessions();
    BTreeMap::from([
        ("keys.json", json(serde_json::to_string_pretty(&gen_keys()))),
        (
            "envelopes.json",
            json(serde_json::to_string_pretty(&gen_envelopes())),
        ),
        (
            "key_file.json",
            json(serde_json::to_string_pretty(&gen_key_file())),
        ),
        (
            "config.json",
            json(serde_json::to_string_pretty(&gen_config())),
        ),
        (
            "packs.json",
            json(serde_json::to_string_pretty(&gen_packs())),
        ),
        (
            "index.json",
            json(serde_json::to_string_pretty(&gen_index())),
        ),
        (
            "snapshots.json",
            json(serde_json::to_string_pretty(&gen_snapshots())),
        ),
        (
            "sessions.json",
            json(serde_json::to_string_pretty(&sessions)),
        ),
        ("leases.json", json(serde_json::to_string_pretty(&leases))),
        (
            "trees.json",
            json(serde_json::to_string_pretty(&gen_trees())),
        ),
        (
            "extent_lists.json",
            json(serde_json::to_string_pretty(&gen_extent_lists())),
        ),
    ])
}

/// Check one vector file (by name) in both directions.
pub fn check(name: &str, text: &str) -> Check {
    fn parse<'a, T: Deserialize<'a>>(name: &str, text: &'a str) -> Result<T, String> {
        serde_json::from_str(text).map_err(|e| format!("{name}: {e}"))
    }
    match name {
        "keys.json" => check_keys(&parse(name, text)?),
        "envelopes.json" => check_envelopes(&parse(name, text)?),
        "key_file.json" => check_key_file(&parse(name, text)?),
        "config.json" => check_config(&parse(name, text)?),
        "packs.json" => check_packs(&parse(name, text)?),
        "index.json" => check_sealed(
            &parse::<SealedVectors<Index>>(name, text)?,
            |v| f::IndexFile::from(v),
            |v| v.encode_plain(),
            f::IndexFile::decode,
        ),
        "snapshots.json" => check_sealed(
            &parse::<SealedVectors<Snapshot>>(name, text)?,
            |v| f::Snapshot::from(v),
            |v| Ok(v.encode_plain()),
            f::Snapshot::decode,
        ),
        "sessions.json" => check_sealed(
            &parse::<SealedVectors<SessionValue>>(name, text)?,
            session_of,
            |v| Ok(v.encode_plain()),
            f::Session::decode,
        ),
        "leases.json" => check_sealed(
            &parse::<SealedVectors<SessionValue>>(name, text)?,
            lease_of,
            |v| Ok(v.encode_plain()),
            f::Lease::decode,
        ),
        "trees.json" => check_blobs(
            &parse::<BlobVectors<Tree>>(name, text)?,
            |v| f::Tree::from(v),
            |v| v.encode(),
            f::Tree::decode,
        ),
        "extent_lists.json" => check_blobs(
            &parse::<BlobVectors<ExtentList>>(name, text)?,
            |v| f::ExtentList::from(v),
            |v| v.encode(),
            f::ExtentList::decode,
        ),
        other => Err(format!("{other}: no checker for this vector file")),
    }
}
