//! Opening, creating and describing a repository; its key files.

use std::collections::BTreeMap;
use std::sync::Arc;

use arca_format::{
    self as fmt, KdfParams, KeyFile, KeyId, KeyMeta, Keys, MasterKey, RepoConfig, RepoId,
    Timestamp, layout,
};
use bytes::Bytes;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result, StoreErrorKind};
use crate::pause::PausePoints;
use crate::store::{Store, WriteMode};

/// The most key-derivation work (Argon2id memory in KiB times passes) one open spends on
/// key files other than the one that opened the repository last: 32 times the default
/// parameters' work. `ARCA_KDF_BUDGET` (the same unit) raises it for one run.
pub const KDF_BUDGET_DEFAULT: u64 = 32 * 64 * 1024 * 3;

static KDF_BUDGET_CELL: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The budget in force (see [`KDF_BUDGET_DEFAULT`]).
fn kdf_budget() -> u64 {
    *KDF_BUDGET_CELL.get_or_init(|| {
        std::env::var("ARCA_KDF_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(KDF_BUDGET_DEFAULT)
    })
}

fn kdf_cost(k: &KdfParams) -> u64 {
    k.memory_kib as u64 * k.iterations as u64
}

fn remember_key(file: &std::path::Path, id: &KeyId) {
    let write = || -> std::io::Result<()> {
        if let Some(d) = file.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, id.to_string())?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        tracing::debug!("cannot remember the key in {}: {e}", file.display());
    }
}

/// Options of `init`.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Argon2id parameters of the first key file.
    pub kdf: KdfParams,
    /// Chunker parameters; the format's defaults when `None`.
    pub chunker: Option<arca_format::ChunkerParams>,
    /// Default compression of data; zstd level 3 when `None`.
    pub compression: Option<arca_format::Compression>,
    /// Target size of data packs; 16 MiB when `None`.
    pub data_pack_size: Option<u32>,
}

/// Who is writing: recorded in key files, snapshots and sessions.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Host name.
    pub host: String,
    /// User name.
    pub username: String,
}

impl Identity {
    /// The current host and user.
    pub fn current() -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into());
        let username = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| nix::unistd::getuid().to_string());
        Self { host, username }
    }
}

/// An open repository: its store, keys and config.
#[derive(Clone)]
pub struct Repository {
    pub(crate) store: Store,
    pub(crate) keys: Arc<Keys>,
    pub(crate) config: RepoConfig,
    key_id: KeyId,
    master: Arc<MasterKey>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) pauses: PausePoints,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Repository({}, {})",
            self.store.location(),
            self.config.repo_id
        )
    }
}

/// A key file as `repo key list` shows it.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// Its ID.
    pub id: KeyId,
    /// Who made it and when.
    pub meta: KeyMeta,
    /// Whether this process opened the repository with it.
    pub current: bool,
}

/// Counts and sizes for `repo status`.
#[derive(Clone, Debug, Default)]
pub struct RepoStatus {
    /// Location.
    pub location: String,
    /// Repository ID.
    pub repo_id: String,
    /// Format version.
    pub format_version: u32,
    /// Created.
    pub created: Timestamp,
    /// Number of key files.
    pub keys: usize,
    /// Number of snapshots.
    pub snapshots: usize,
    /// Number of index files.
    pub index_files: usize,
    /// Data packs: count and bytes.
    pub data_packs: (usize, u64),
    /// Metadata packs: count and bytes.
    pub meta_packs: (usize, u64),
    /// Total bytes of all objects.
    pub total_bytes: u64,
    /// Live writer sessions.
    pub sessions: usize,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

impl Repository {
    /// Read time from `clock` from now on (tests: a clock that can jump or be set wrong).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Hold operations at the points a test arms (see [`PausePoints`]).
    pub fn with_pause_points(mut self, pauses: PausePoints) -> Self {
        self.pauses = pauses;
        self
    }

    /// The pause points this repository's operations stop at when armed (tests).
    pub fn pause_points(&self) -> &PausePoints {
        &self.pauses
    }

    /// The clock this repository reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Create a repository at an empty location.
    pub async fn init(
        store: Store,
        password: &[u8],
        opts: InitOptions,
        who: &Identity,
    ) -> Result<Self> {
        if let Some(first) = store.list("").await?.into_iter().next() {
            return Err(Error::NotEmpty {
                location: store.location().to_string(),
                found: first.name,
            });
        }
        let master = MasterKey::generate()?;
        let keys = master.derive();
        let mut config = RepoConfig::new(RepoId::random()?, Timestamp::now());
        if let Some(c) = opts.chunker {
            config.chunker = c;
        }
        if let Some(c) = opts.compression {
            config.compression = c;
        }
        if let Some(s) = opts.data_pack_size {
            config.data_pack_size = s;
        }
        let meta = KeyMeta {
            created: Timestamp::now(),
            host: who.host.clone(),
            username: who.username.clone(),
        };
        let (repo_id, pw, m2) = (config.repo_id, password.to_vec(), master.clone());
        let kf = blocking(move || KeyFile::create(repo_id, &m2, &pw, opts.kdf, meta)).await?;
        let (key_id, key_bytes) = kf.encode();
        // The key first, the config last: the config is what makes the location a repository.
        store
            .put(
                &layout::key(&key_id),
                Bytes::from(key_bytes),
                WriteMode::CreateNew,
            )
            .await?;
        let put = store
            .put(
                layout::CONFIG,
                Bytes::from(config.encode(&keys)?),
                WriteMode::CreateNew,
            )
            .await;
        match put {
            Ok(_) => {}
            // Another writer initialised the location since it was listed empty: its
            // repository stands; this one's key file (for another repository ID, which
            // `open` ignores) is taken back, and the caller is told as for a non-empty
            // location, so that it opens the other's.
            Err(Error::Store {
                kind: StoreErrorKind::AlreadyExists,
                ..
            }) => {
                let _ = store.delete(&layout::key(&key_id)).await;
                return Err(Error::NotEmpty {
                    location: store.location().to_string(),
                    found: layout::CONFIG.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
        Ok(Self {
            store,
            keys: Arc::new(keys),
            config,
            key_id,
            master: Arc::new(master),
            clock: Arc::new(SystemClock),
            pauses: PausePoints::default(),
        })
    }

    /// Open a repository with a password.
    pub async fn open(store: Store, password: &[u8]) -> Result<Self> {
        Self::open_with(store, password, None).await
    }

    /// Open a repository with a password, remembering per repository under `state_root`
    /// (the cache root) which key opened it, so that key is tried first next time.
    ///
    /// Key files are tried cheapest first, and the key derivation work spent on key files
    /// other than the remembered one is capped at [`KDF_BUDGET_DEFAULT`]: anyone who can write to
    /// the bucket can plant a key file, and one with huge Argon2 parameters must not stall
    /// every open. A key file over the budget is skipped and named.
    pub async fn open_with(
        store: Store,
        password: &[u8],
        state_root: Option<&std::path::Path>,
    ) -> Result<Self> {
        let config_bytes = match crate::store::get_bounded(&store, layout::CONFIG, None).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                return Err(Error::NoRepository {
                    location: store.location().to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        let repo_id = RepoConfig::peek(&config_bytes)?;
        let key_objects = store.list(layout::KEYS).await?;
        if key_objects.is_empty() {
            return Err(Error::NotFound(format!(
                "{} has no key files under keys/: the repository cannot be opened",
                store.location()
            )));
        }
        let hint_file = state_root.map(|r| r.join(repo_id.to_hex()).join("last-key"));
        let hint: Option<KeyId> = hint_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse().ok());
        let mut damaged: Vec<(KeyId, String)> = Vec::new();
        let mut candidates: Vec<(KeyId, KeyFile)> = Vec::new();
        for obj in key_objects {
            let Some(id) = layout::parse_id::<KeyId>(layout::KEYS, &obj.name) else {
                continue;
            };
            let read = async {
                let bytes = crate::store::get_bounded(&store, &obj.name, Some(obj.size)).await?;
                crate::store::check_named(&obj.name, &id.0, &bytes)?;
                Ok::<_, Error>(KeyFile::decode(&bytes)?)
            };
            match read.await {
                Ok(kf) if kf.repo_id == repo_id => candidates.push((id, kf)),
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e @ (Error::Format(_) | Error::Store { .. })) if !e.is_transient() => {
                    tracing::warn!("key file {}: {e}", id.short());
                    damaged.push((id, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        // The remembered key first, then the cheapest.
        candidates.sort_by_key(|(id, kf)| (Some(*id) != hint, kdf_cost(&kf.kdf), *id));
        let mut spent = 0u64;
        let mut skipped = Vec::new();
        for (id, kf) in candidates {
            let cost = kdf_cost(&kf.kdf);
            if Some(id) != hint {
                if spent.saturating_add(cost) > kdf_budget() {
                    tracing::warn!(
                        "key file {} asks for Argon2id m={} KiB t={}: over the key-derivation budget, not tried",
                        id.short(),
                        kf.kdf.memory_kib,
                        kf.kdf.iterations
                    );
                    skipped.push(id);
                    continue;
                }
                spent += cost;
            }
            let pw = password.to_vec();
            match blocking(move || kf.unwrap_key(&pw)).await {
                Ok(master) => {
                    let keys = master.derive();
                    let config = RepoConfig::decode(&keys, &config_bytes)?;
                    if let Some(f) = &hint_file
                        && hint != Some(id)
                    {
                        remember_key(f, &id);
                    }
                    return Ok(Self {
                        store,
                        keys: Arc::new(keys),
                        config,
                        key_id: id,
                        master: Arc::new(master),
                        clock: Arc::new(SystemClock),
                        pauses: PausePoints::default(),
                    });
                }
                Err(fmt::Error::WrongPassword) => continue,
                Err(e) => damaged.push((id, e.to_string())),
            }
        }
        if let Some(id) = skipped.first() {
            return Err(Error::Invalid(format!(
                "wrong password, or its key file was not tried: {} key file(s) ask for more key \
                 derivation work than any Arca key file needs (first: key {}); if you made it, \
                 open once with ARCA_KDF_BUDGET raised; if not, someone with write access to \
                 the bucket planted it: remove keys/{}",
                skipped.len(),
                id.short(),
                id
            )));
        }
        match damaged.into_iter().next() {
            // A damaged key file might have been the one for this password: say so.
            Some((id, e)) => Err(Error::Invalid(format!(
                "wrong password, or the key file for it is damaged (key {}: {e})",
                id.short()
            ))),
            None => Err(fmt::Error::WrongPassword.into()),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The repository's keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The key this process opened the repository with.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// All key files that belong to this repository.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for obj in self.store.list(layout::KEYS).await? {
            let Some(id) = layout::parse_id::<KeyId>(layout::KEYS, &obj.name) else {
                continue;
            };
            let read = async {
                let bytes =
                    crate::store::get_bounded(&self.store, &obj.name, Some(obj.size)).await?;
                crate::store::check_named(&obj.name, &id.0, &bytes)?;
                Ok::<_, Error>(KeyFile::decode(&bytes)?)
            };
            let kf = match read.await {
                Ok(kf) => kf,
                Err(e) if e.is_not_found() => continue,
                // A damaged or planted key file is reported, not a reason to list nothing.
                Err(e @ Error::Format(_)) => {
                    tracing::warn!("key file {}: {e}", id.short());
                    continue;
                }
                Err(e) => return Err(e),
            };
            if kf.repo_id == self.config.repo_id {
                out.push(KeyInfo {
                    id,
                    meta: kf.meta,
                    current: id == self.key_id,
                });
            }
        }
        out.sort_by_key(|k| (k.meta.created, k.id));
        Ok(out)
    }

    /// Add a key file for another password.
    pub async fn add_key(&self, password: &[u8], kdf: KdfParams, who: &Identity) -> Result<KeyId> {
        let meta = KeyMeta {
            created: Timestamp::now(),
            host: who.host.clone(),
            username: who.username.clone(),
        };
        let (repo_id, pw, master) = (self.config.repo_id, password.to_vec(), self.master.clone());
        let kf = blocking(move || KeyFile::create(repo_id, &master, &pw, kdf, meta)).await?;
        let (id, bytes) = kf.encode();
        self.store
            .put(&layout::key(&id), Bytes::from(bytes), WriteMode::CreateNew)
            .await?;
        Ok(id)
    }

    /// Find a key by ID or unique ID prefix.
    pub async fn find_key(&self, prefix: &str) -> Result<KeyInfo> {
        let keys = self.list_keys().await?;
        let matching: Vec<_> = keys
            .into_iter()
            .filter(|k| k.id.to_hex().starts_with(&prefix.to_lowercase()))
            .collect();
        match matching.len() {
            1 => Ok(matching.into_iter().next().expect("one")),
            0 => Err(Error::NotFound(format!(
                "no key {prefix:?} in this repository"
            ))),
            n => Err(Error::NotFound(format!(
                "{n} keys start with {prefix:?}; give more digits"
            ))),
        }
    }

    /// Remove a key file. The last key and the key in use cannot be removed.
    pub async fn remove_key(&self, id: KeyId) -> Result<()> {
        let keys = self.list_keys().await?;
        if !keys.iter().any(|k| k.id == id) {
            return Err(Error::NotFound(format!("no key {}", id.short())));
        }
        if id == self.key_id {
            return Err(Error::Invalid(format!(
                "key {} is the one this command was opened with; open with another password to remove it",
                id.short()
            )));
        }
        if keys.len() <= 1 {
            return Err(Error::Invalid("refusing to remove the last key".into()));
        }
        self.store.delete(&layout::key(&id)).await
    }

    /// Change the password of the key in use: write a new key file, then delete the old.
    pub async fn change_password(
        &mut self,
        new_password: &[u8],
        kdf: KdfParams,
        who: &Identity,
    ) -> Result<KeyId> {
        let new_id = self.add_key(new_password, kdf, who).await?;
        self.store.delete(&layout::key(&self.key_id)).await?;
        self.key_id = new_id;
        Ok(new_id)
    }

    /// Counts and sizes.
    pub async fn status(&self) -> Result<RepoStatus> {
        let all = self.store.list("").await?;
        let mut s = RepoStatus {
            location: self.store.location().to_string(),
            repo_id: self.config.repo_id.to_hex(),
            format_version: arca_format::FORMAT_VERSION,
            created: self.config.created,
            ..Default::default()
        };
        let mut by_prefix: BTreeMap<&str, usize> = BTreeMap::new();
        for o in &all {
            s.total_bytes += o.size;
            if let Some((kind, _)) = layout::parse_pack(&o.name) {
                let slot = match kind {
                    fmt::PackKind::Data => &mut s.data_packs,
                    fmt::PackKind::Meta => &mut s.meta_packs,
                };
                slot.0 += 1;
                slot.1 += o.size;
            }
            for p in [
                layout::KEYS,
                layout::INDEX,
                layout::SNAPSHOTS,
                layout::SESSIONS,
            ] {
                if o.name.starts_with(p) {
                    *by_prefix.entry(p).or_default() += 1;
                }
            }
        }
        s.keys = by_prefix.get(layout::KEYS).copied().unwrap_or(0);
        s.index_files = by_prefix.get(layout::INDEX).copied().unwrap_or(0);
        s.snapshots = by_prefix.get(layout::SNAPSHOTS).copied().unwrap_or(0);
        s.sessions = by_prefix.get(layout::SESSIONS).copied().unwrap_or(0);
        Ok(s)
    }
}
