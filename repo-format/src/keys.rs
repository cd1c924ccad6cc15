//! The master key, the keys derived from it, and key files.
//!
//! A repository has one 32-byte master key, chosen at random at init and never changed.
//! Everything is derived from it with BLAKE3's `derive_key` under fixed context strings
//! (see `spec/FORMAT.md`, "Keys"). Each key file under `keys/` wraps the master key with
//! a key-encryption key (KEK) derived from a password by Argon2id, so passwords can be
//! added, removed and changed without re-encrypting any data.
//!
//! Key file layout (all integers little-endian):
//!
//! ```text
//! +----------+-----------+------------------------+------------------+
//! | magic 8  | version 4 | body: KeyFile protobuf | BLAKE3(prev) 32  |
//! +----------+-----------+------------------------+------------------+
//! ```
//!
//! The trailing checksum tells a damaged key file from a wrong password: without it, any
//! flipped bit in the salt or the KDF parameters would look like a wrong password.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::codec::fixed;
use crate::envelope::BlobType;
use crate::error::{Error, Result, What, random_bytes};
use crate::id::{BlobId, KeyId, RepoId, Timestamp, object_hash};
use crate::proto;

/// Magic bytes that open every key file.
pub const KEY_FILE_MAGIC: [u8; 8] = *b"ARCAKEY\0";
/// Key-file layout version written by this build.
pub const KEY_FILE_VERSION: u32 = 1;

/// KDF identifier: Argon2id, version 0x13 (RFC 9106).
pub(crate) const KDF_ARGON2ID: u32 = 1;

const SALT_LEN: usize = 32;
const WRAP_NONCE_LEN: usize = 12;

// Bounds on KDF parameters read from a key file: a damaged or hostile file must not make
// us allocate terabytes or spin for hours.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_ITERATIONS: u32 = 1_000;
const MAX_PARALLELISM: u32 = 64;
/// Key files are tiny; anything larger is not one.
const MAX_KEY_FILE_LEN: usize = 64 * 1024;

const CTX_DATA_ID: &str = "arca.dev 2026-11-22 repository v1 data blob id";
const CTX_TREE_ID: &str = "arca.dev 2026-11-22 repository v1 tree blob id";
const CTX_EXTENTS_ID: &str = "arca.dev 2026-11-22 repository v1 extent-list blob id";
const CTX_ENVELOPE: &str = "arca.dev 2026-11-22 repository v1 envelope key";
const CTX_CHUNKER: &str = "arca.dev 2026-11-22 repository v1 chunker seed";

/// The repository's 32-byte master secret. Wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh random master key, for `repo init`.
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; 32];
        random_bytes(&mut k)?;
        Ok(Self(k))
    }

    /// Wrap known bytes (test vectors, or a key recovered elsewhere).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw secret.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Derive the working keys.
    pub fn derive(&self) -> Keys {
        Keys {
            data_id: blake3::derive_key(CTX_DATA_ID, &self.0),
            tree_id: blake3::derive_key(CTX_TREE_ID, &self.0),
            extents_id: blake3::derive_key(CTX_EXTENTS_ID, &self.0),
            envelope: blake3::derive_key(CTX_ENVELOPE, &self.0),
            chunker: blake3::derive_key(CTX_CHUNKER, &self.0),
        }
    }
}

/// The keys derived from a master key: one ID key per blob type, the envelope key and the
/// chunker seed. Wiped from memory when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Keys {
    data_id: [u8; 32],
    tree_id: [u8; 32],
    extents_id: [u8; 32],
    pub(crate) envelope: [u8; 32],
    chunker: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// The ID key of a blob type (exposed for golden vectors and diagnostics).
    pub fn id_key(&self, blob_type: BlobType) -> &[u8; 32] {
        match blob_type {
            BlobType::Data => &self.data_id,
            BlobType::Tree => &self.tree_id,
            BlobType::ExtentList => &self.extents_id,
        }
    }

    /// The content ID of a blob: keyed BLAKE3 of its plaintext, keyed per blob type so
    /// that a file whose bytes equal a tree blob never aliases it.
    pub fn blob_id(&self, blob_type: BlobType, plaintext: &[u8]) -> BlobId {
        let mut h = self.blob_hasher(blob_type);
        // BLAKE3's own SIMD/multithreading choice is left to the caller: engines hash
        // chunks on rayon already, so stay single-threaded here.
        h.update(plaintext);
        BlobId(*h.finalize().as_bytes())
    }

    /// A hasher for computing a blob ID incrementally.
    pub fn blob_hasher(&self, blob_type: BlobType) -> blake3::Hasher {
        blake3::Hasher::new_keyed(self.id_key(blob_type))
    }

    /// The envelope key (exposed for golden vectors and diagnostics).
    pub fn envelope_key(&self) -> &[u8; 32] {
        &self.envelope
    }

    /// The seed XORed into FastCDC's gear table, so chunk boundaries (and thus chunk
    /// sizes) differ per repository and cannot be used to fingerprint known files.
    pub fn chunker_seed(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.chunker[..8]);
        u64::from_le_bytes(b)
    }
}

/// Argon2id parameters of a key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes. A guess costs an
    /// attacker the same memory and work as with one lane; the lanes let an opener that
    /// computes them in parallel (the engine does) pay less wall time at every open.
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 4,
        }
    }
}

impl KdfParams {
    fn check(&self) -> Result<()> {
        // Lanes first: the memory bound multiplies by them, and any u32 may arrive here
        // from a damaged key file (found by the key_file fuzz target).
        let ok = (1..=MAX_PARALLELISM).contains(&self.parallelism)
            && (8 * self.parallelism..=MAX_MEMORY_KIB).contains(&self.memory_kib)
            && (1..=MAX_ITERATIONS).contains(&self.iterations);
        if ok {
            Ok(())
        } else {
            Err(Error::corrupt(
                What::KeyFile,
                format!(
                    "implausible Argon2id parameters m={} KiB t={} p={}",
                    self.memory_kib, self.iterations, self.parallelism
                ),
            ))
        }
    }

    /// Derive the 32-byte key-encryption key from a password and salt.
    pub fn kek(&self, password: &[u8], salt: &[u8]) -> Result<[u8; 32]> {
        self.check()?;
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| Error::corrupt(What::KeyFile, format!("Argon2id parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(password, salt, &mut out)
            .map_err(|e| Error::corrupt(What::KeyFile, format!("Argon2id: {e}")))?;
        Ok(out)
    }
}

/// Descriptive fields stored in a key file (not secret, shown by `repo key list`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyMeta {
    /// When the key file was written.
    pub created: Timestamp,
    /// Host that wrote it.
    pub host: String,
    /// User that wrote it.
    pub username: String,
}

/// A decoded key file: the wrapped master key and how to unwrap it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    /// The repository this key belongs to.
    pub repo_id: RepoId,
    /// Argon2id parameters.
    pub kdf: KdfParams,
    /// Argon2id salt (32 random bytes).
    pub salt: [u8; 32],
    /// AES-GCM nonce of the wrapped key.
    pub nonce: [u8; 12],
    /// AES-256-GCM ciphertext and tag of the master key.
    pub wrapped_key: [u8; 48],
    /// Descriptive fields.
    pub meta: KeyMeta,
}

impl KeyFile {
    /// Wrap `master` under `password` with fresh random salt and nonce.
    pub fn create(
        repo_id: RepoId,
        master: &MasterKey,
        password: &[u8],
        kdf: KdfParams,
        meta: KeyMeta,
    ) -> Result<Self> {
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; WRAP_NONCE_LEN];
        random_bytes(&mut salt)?;
        random_bytes(&mut nonce)?;
        Self::create_with(repo_id, master, password, kdf, salt, nonce, meta)
    }

    /// Wrap with the given salt and nonce. Only for golden vectors: a real key file must
    /// use [`KeyFile::create`], whose salt and nonce are fresh.
    pub fn create_with(
        repo_id: RepoId,
        master: &MasterKey,
        password: &[u8],
        kdf: KdfParams,
        salt: [u8; 32],
        nonce: [u8; 12],
        meta: KeyMeta,
    ) -> Result<Self> {
        kdf.check()
            .map_err(|_| Error::invalid(What::KeyFile, "KDF parameters out of range"))?;
        let mut kek = kdf.kek(password, &salt)?;
        let cipher = Aes256Gcm::new(&kek.into());
        kek.zeroize();
        let mut buf = *master.as_bytes();
        let tag = cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                repo_id.as_bytes(),
                (&mut buf[..]).into(),
            )
            .map_err(|_| Error::invalid(What::KeyFile, "AES-GCM refused to encrypt"))?;
        let mut wrapped_key = [0u8; 48];
        wrapped_key[..32].copy_from_slice(&buf);
        wrapped_key[32..].copy_from_slice(&tag);
        buf.zeroize();
        Ok(Self {
            repo_id,
            kdf,
            salt,
            nonce,
            wrapped_key,
            meta,
        })
    }

    /// Recover the master key. A password that does not fit is [`Error::WrongPassword`].
    pub fn unwrap_key(&self, password: &[u8]) -> Result<MasterKey> {
        let mut kek = self.kdf.kek(password, &self.salt)?;
        let cipher = Aes256Gcm::new(&kek.into());
        kek.zeroize();
        let mut buf = [0u8; 32];
        buf.copy_from_slice(&self.wrapped_key[..32]);
        let tag = Tag::try_from(&self.wrapped_key[32..]).map_err(|_| Error::WrongPassword)?;
        cipher
            .decrypt_inout_detached(
                &Nonce::from(self.nonce),
                self.repo_id.as_bytes(),
                (&mut buf[..]).into(),
                &tag,
            )
            .map_err(|_| Error::WrongPassword)?;
        let key = MasterKey(buf);
        buf.zeroize();
        Ok(key)
    }

    /// Give the same master key a new password (a new salt and nonce too).
    pub fn rewrap(&self, old_password: &[u8], new_password: &[u8], kdf: KdfParams) -> Result<Self> {
        let master = self.unwrap_key(old_password)?;
        Self::create(self.repo_id, &master, new_password, kdf, self.meta.clone())
    }

    /// Encode to the stored bytes, and the key's ID (BLAKE3 of those bytes).
    pub fn encode(&self) -> (KeyId, Vec<u8>) {
        let body = proto::KeyFile {
            repo_id: self.repo_id.0.to_vec(),
            kdf: KDF_ARGON2ID,
            memory_kib: self.kdf.memory_kib,
            iterations: self.kdf.iterations,
            parallelism: self.kdf.parallelism,
            salt: self.salt.to_vec(),
            nonce: self.nonce.to_vec(),
            wrapped_key: self.wrapped_key.to_vec(),
            created: Some(crate::codec::ts_to_proto(self.meta.created)),
            host: self.meta.host.clone(),
            username: self.meta.username.clone(),
        };
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&KEY_FILE_MAGIC);
        out.extend_from_slice(&KEY_FILE_VERSION.to_le_bytes());
        out.extend_from_slice(&crate::codec::encode_proto(&body));
        let sum = object_hash(&out);
        out.extend_from_slice(&sum);
        (KeyId(object_hash(&out)), out)
    }

    /// Decode stored bytes. Damage is [`Error::Corrupt`]; a newer layout is
    /// [`Error::UnsupportedVersion`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let body = crate::codec::checked_header(
            bytes,
            What::KeyFile,
            &KEY_FILE_MAGIC,
            KEY_FILE_VERSION,
            MAX_KEY_FILE_LEN,
        )?;
        let p: proto::KeyFile = crate::codec::decode_proto(What::KeyFile, body)?;
        if p.kdf != KDF_ARGON2ID {
            return Err(Error::Unsupported {
                what: What::KeyFile,
                feature: format!("key-derivation function #{}", p.kdf),
            });
        }
        let kdf = KdfParams {
            memory_kib: p.memory_kib,
            iterations: p.iterations,
            parallelism: p.parallelism,
        };
        kdf.check()?;
        let w = What::KeyFile;
        let repo_id = RepoId(fixed(w, "repository id", &p.repo_id)?);
        let salt = fixed(w, "salt", &p.salt)?;
        let nonce = fixed(w, "nonce", &p.nonce)?;
        let wrapped_key = fixed(w, "wrapped key", &p.wrapped_key)?;
        Ok(Self {
            repo_id,
            kdf,
            salt,
            nonce,
            wrapped_key,
            meta: KeyMeta {
                created: crate::codec::ts_from_proto(What::KeyFile, p.created)?,
                host: p.host,
                username: p.username,
            },
        })
    }
}
