//! The local index cache: the repository's index in rocksdb, so that memory stays bounded
//! however many blobs the repository holds.
//!
//! The cache is never the source of truth. It lives under
//! `<cache root>/<repository id>/index.<n>`; at open it is brought in step with the index
//! files in the store (new files ingested, superseded and deleted ones dropped), and a
//! cache of another repository, of another schema, or that rocksdb cannot open is wiped and
//! rebuilt from the store. Several processes on one host use separate slots (`index.0`,
//! `index.1`, ...), because rocksdb allows one writer per database.
//!
//! Column families:
//! - `blobs`: `blob id (32) || pack id (32)` → `type u8 | offset u32 | length u32 | raw u32`;
//!   a blob stored in two packs has two keys.
//! - `packs`: `pack id` → `size u64 | kind u8 | refs`, each ref `index id (32) | obsolete u8
//!   | seconds i64`: which live index files list the pack, and whether they mark it obsolete.
//!   A pack without refs is dead; its `blobs` keys are garbage, skipped on lookup and swept
//!   when there is enough of it.
//! - `files`: `index id` → `state u8 | n u32 | n superseded ids | m packs ids`.
//! - `meta`: schema version and repository ID.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arca_format::{BlobId, IndexFile, IndexId, PackEntry, PackId, PackKind, RepoId, layout};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, ColumnFamilyDescriptor, DB, IteratorMode, Options,
    SliceTransform, WriteBatch,
};

use crate::cache_records::{
    FileRecord, PackRecord, Seen, blob_key, decode_blob_value, encode_blob_value,
};
use crate::error::{Error, Result};
use crate::store::Store;

const SCHEMA: &[u8] = b"arca-index-cache-1";
const CF_BLOBS: &str = "blobs";
const CF_PACKS: &str = "packs";
const CF_FILES: &str = "files";
const CF_META: &str = "meta";
const MAX_SLOTS: usize = 32;

const FILE_LIVE: u8 = 1;
const FILE_SUPERSEDED: u8 = 2;

/// Where a blob is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// Data or metadata pack.
    pub kind: PackKind,
    /// Its entry.
    pub entry: PackEntry,
    /// True when the pack is marked obsolete: readable, but not to deduplicate against.
    pub obsolete: bool,
    /// The pack's size in bytes.
    pub pack_size: u64,
}

/// A run of lookups: see [`IndexCache::session`].
pub(crate) struct Lookup<'a> {
    it: rocksdb::DBRawIteratorWithThreadMode<'a, DB>,
    packs: HashMap<PackId, Option<PackRecord>>,
}

/// The cache of one repository's index.
pub(crate) struct IndexCache {
    db: DB,
    path: PathBuf,
    /// What this machine last saw of the repository's index (see [`Seen`]); none for a
    /// temporary cache.
    seen: Option<PathBuf>,
    /// Temporary caches (no cache root) are removed on drop.
    temp: Option<tempfile::TempDir>,
    /// The repository going backwards was logged as an error: once per opened cache
    /// (one command, or one operation of the server or agent) is enough; every sync
    /// still reports it in [`SyncStats`].
    said_backwards: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IndexCache({})", self.path.display())
    }
}

/// What a sync did, for logs and progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Index files downloaded and added.
    pub ingested: usize,
    /// Index files dropped (superseded or deleted).
    pub dropped: usize,
    /// Index files live after the sync.
    pub live: usize,
    /// Index files that could not be read (damaged): left out of the cache.
    pub damaged: Vec<(IndexId, String)>,
    /// Index files this machine saw superseded before that are present again with nothing
    /// superseding them: replayed (an old file put back). Never used.
    pub replayed: Vec<IndexId>,
    /// Set when the repository went backwards: index files this machine saw live are gone
    /// and nothing supersedes them (the bucket was rolled back, or files were deleted).
    pub went_backwards: Option<String>,
}

fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // Bounded memory whatever the repository's size: small write buffers, a small block
    // cache, a capped number of open files.
    o.set_write_buffer_size(8 << 20);
    o.set_max_write_buffer_number(2);
    o.set_max_open_files(256);
    o.set_keep_log_file_num(2);
    o.increase_parallelism(2);
    o
}

fn blobs_cf_options(cache: &rocksdb::Cache) -> Options {
    let mut o = db_options();
    // Most lookups during a backup are misses (new chunks): a prefix bloom filter on the
    // 32-byte blob ID answers those without touching disk.
    o.set_prefix_extractor(SliceTransform::create_fixed_prefix(32));
    o.set_memtable_prefix_bloom_ratio(0.1);
    let mut b = BlockBasedOptions::default();
    b.set_bloom_filter(10.0, false);
    b.set_whole_key_filtering(false);
    b.set_block_cache(cache);
    b.set_cache_index_and_filter_blocks(true);
    // Partitioned index and filters: a table of a million blobs has a ~1.5 MB index and
    // filter, larger than one shard of the block cache (32 MB in 64 shards), so whole
    // blocks were never kept and every lookup read and checksummed both (~80 us). In
    // partitions (RocksDB's defaults: 4 KiB, top level pinned, cached with high
    // priority), a lookup touches two small cached blocks.
    b.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    b.set_partition_filters(true);
    o.set_block_based_table_factory(&b);
    o
}

impl IndexCache {
    /// Open (or create) the cache of `repo` under `root`, taking the first free slot.
    /// With no root, a temporary cache is used and removed when dropped.
    pub(crate) fn open(root: Option<&Path>, repo: RepoId) -> Result<Self> {
        let (base, temp) = match root {
            Some(r) => (r.join(repo.to_hex()), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("arca-cache-")
                    .tempdir()
                    .map_err(|e| Error::io("create temporary cache", std::env::temp_dir(), e))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&base)
            .map_err(|e| Error::io("create cache directory", &base, e))?;
        let seen = temp.is_none().then(|| base.join("seen-index"));
        let mut found = None;
        for slot in 0..MAX_SLOTS {
            let path = base.join(format!("index.{slot}"));
            match Self::open_at(&path, repo) {
                Ok(db) => {
                    found = Some((db, path));
                    break;
                }
                Err(OpenErr::Locked) => continue,
                Err(OpenErr::Other(why)) => {
                    // Damaged, foreign, or of another schema: wipe it and start over.
                    tracing::warn!(
                        "index cache {} unusable ({why}); rebuilding it",
                        path.display()
                    );
                    let _ = std::fs::remove_dir_all(&path);
                    match Self::open_at(&path, repo) {
                        Ok(db) => {
                            found = Some((db, path));
                            break;
                        }
                        Err(OpenErr::Locked) => continue,
                        Err(OpenErr::Other(reason)) => return Err(Error::Cache { path, reason }),
                    }
                }
            }
        }
        let Some((db, path)) = found else {
            return Err(Error::Cache {
                path: base,
                reason: format!("all {MAX_SLOTS} cache slots are in use by other arca processes"),
            });
        };
        Ok(Self {
            db,
            path,
            seen,
            temp,
            said_backwards: Default::default(),
        })
    }

    fn open_at(path: &Path, repo: RepoId) -> std::result::Result<DB, OpenErr> {
        let cache = rocksdb::Cache::new_lru_cache(32 << 20);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_BLOBS, blobs_cf_options(&cache)),
            ColumnFamilyDescriptor::new(CF_PACKS, db_options()),
            ColumnFamilyDescriptor::new(CF_FILES, db_options()),
            ColumnFamilyDescriptor::new(CF_META, db_options()),
        ];
        let db = DB::open_cf_descriptors(&db_options(), path, cfs).map_err(|e| {
            let m = e.to_string();
            if m.contains("lock") || m.contains("Lock") {
                OpenErr::Locked
            } else {
                OpenErr::Other(m)
            }
        })?;
        let meta = db.cf_handle(CF_META).expect("cf exists");
        let schema = db
            .get_cf(meta, b"schema")
            .map_err(|e| OpenErr::Other(e.to_string()))?;
        let id = db
            .get_cf(meta, b"repo")
            .map_err(|e| OpenErr::Other(e.to_string()))?;
        match (schema, id) {
            (Some(s), Some(i)) if s == SCHEMA && i == repo.0 => Ok(db),
            (None, None) => {
                db.put_cf(meta, b"schema", SCHEMA)
                    .map_err(|e| OpenErr::Other(e.to_string()))?;
                db.put_cf(meta, b"repo", repo.0)
                    .map_err(|e| OpenErr::Other(e.to_string()))?;
                Ok(db)
            }
            _ => Err(OpenErr::Other(
                "it belongs to another repository or cache schema".into(),
            )),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family exists")
    }

    fn db_err(&self, e: rocksdb::Error) -> Error {
        Error::Cache {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn get_pack(&self, id: &PackId) -> Result<Option<PackRecord>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_PACKS), id.as_bytes())
            .map_err(|e| self.db_err(e))?
            .and_then(|v| PackRecord::decode(&v)))
    }

    /// Where a blob is: a live, non-obsolete copy if there is one, else an obsolete one.
    pub(crate) fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        self.lookup_in(&mut self.session(), id)
    }

    /// A lookup session for many lookups in a row (one thread): one iterator re-seeked,
    /// and pack records remembered. Creating a rocksdb iterator per lookup was most of the
    /// cost of an unchanged backup. It sees the index as of its creation: keep it short.
    pub(crate) fn session(&self) -> Lookup<'_> {
        let mut opts = rocksdb::ReadOptions::default();
        // Seeks stay within one blob ID's keys; the prefix bloom filters answer misses.
        opts.set_prefix_same_as_start(true);
        Lookup {
            it: self.db.raw_iterator_cf_opt(self.cf(CF_BLOBS), opts),
            packs: HashMap::new(),
        }
    }

    /// [`IndexCache::lookup`] within a session.
    pub(crate) fn lookup_in(
        &self,
        l: &mut Lookup<'_>,
        id: &BlobId,
    ) -> Result<Option<BlobLocation>> {
        let mut fallback = None;
        l.it.seek(id.as_bytes());
        loop {
            if !l.it.valid() {
                l.it.status().map_err(|e| self.db_err(e))?;
                break;
            }
            let (Some(k), Some(v)) = (l.it.key(), l.it.value()) else {
                break;
            };
            if k.len() != 64 || &k[..32] != id.as_bytes() {
                break;
            }
            let pack = PackId(k[32..].try_into().expect("32"));
            let rec = match l.packs.get(&pack) {
                Some(r) => r.clone(),
                None => {
                    if l.packs.len() >= 4096 {
                        l.packs.clear();
                    }
                    let r = self.get_pack(&pack)?;
                    l.packs.insert(pack, r.clone());
                    r
                }
            };
            if let Some(rec) = rec.filter(PackRecord::live)
                && let Some(entry) = decode_blob_value(*id, v)
            {
                let loc = BlobLocation {
                    pack,
                    kind: rec.kind(),
                    entry,
                    obsolete: rec.obsolete(),
                    pack_size: rec.size,
                };
                if !loc.obsolete {
                    return Ok(Some(loc));
                }
                fallback.get_or_insert(loc);
            }
            l.it.next();
        }
        Ok(fallback)
    }

    /// True when a live, non-obsolete copy exists: a writer may deduplicate against it.
    pub(crate) fn has(&self, id: &BlobId) -> Result<bool> {
        Ok(self.lookup(id)?.is_some_and(|l| !l.obsolete))
    }

    /// Whether a blob has a copy a writer may use (in a live pack no live index file marks
    /// obsolete) in some pack other than `pack`: a pack is never its own surviving copy.
    pub(crate) fn has_copy_outside(&self, id: &BlobId, pack: &PackId) -> Result<bool> {
        self.has_copy_where(id, |p| p != pack)
    }

    /// Whether a blob has a copy a writer may use in a pack that `wanted` accepts.
    pub(crate) fn has_copy_where(
        &self,
        id: &BlobId,
        wanted: impl Fn(&PackId) -> bool,
    ) -> Result<bool> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_prefix_same_as_start(true);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_BLOBS), opts);
        it.seek(id.as_bytes());
        while it.valid() {
            let Some(k) = it.key() else { break };
            if k.len() != 64 || &k[..32] != id.as_bytes() {
                break;
            }
            let p = PackId(k[32..].try_into().expect("32"));
            if wanted(&p)
                && self
                    .get_pack(&p)?
                    .is_some_and(|r| r.live() && !r.obsolete())
            {
                return Ok(true);
            }
            it.next();
        }
        it.status().map_err(|e| self.db_err(e))?;
        Ok(false)
    }

    /// [`IndexCache::has`] within a session.
    pub(crate) fn has_in(&self, l: &mut Lookup<'_>, id: &BlobId) -> Result<bool> {
        Ok(self.lookup_in(l, id)?.is_some_and(|l| !l.obsolete))
    }

    /// The live index files (ingested and not superseded).
    pub(crate) fn live_files(&self) -> Result<Vec<IndexId>> {
        let mut out: Vec<IndexId> = self
            .cached_files()?
            .into_iter()
            .filter(|(_, state)| *state == FILE_LIVE)
            .map(|(id, _)| id)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every index file in the store the cache knows of: live or superseded.
    pub(crate) fn present_files(&self) -> Result<Vec<IndexId>> {
        let mut out: Vec<IndexId> = self.cached_files()?.into_keys().collect();
        out.sort();
        Ok(out)
    }

    /// Every present index file that supersedes others, with the files it supersedes.
    pub(crate) fn superseders(&self) -> Result<Vec<(IndexId, Vec<IndexId>)>> {
        let mut out = Vec::new();
        for id in self.cached_files()?.into_keys() {
            if let Some(r) = self.file_record(&id)?
                && !r.supersedes.is_empty()
            {
                out.push((id, r.supersedes));
            }
        }
        Ok(out)
    }

    /// Every live pack.
    pub(crate) fn packs(&self) -> Result<Vec<PackInfo>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_PACKS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if let (Ok(k), Some(rec)) = (<[u8; 32]>::try_from(&k[..]), PackRecord::decode(&v))
                && rec.live()
            {
                out.push(PackInfo {
                    id: PackId(k),
                    kind: rec.kind(),
                    size: rec.size,
                    obsolete_since: rec
                        .obsolete()
                        .then(|| rec.refs.iter().filter_map(|(_, o)| *o).max())
                        .flatten(),
                });
            }
        }
        Ok(out)
    }

    /// The index entry of a blob in one particular pack.
    pub(crate) fn entry(&self, blob: &BlobId, pack: &PackId) -> Result<Option<PackEntry>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_BLOBS), blob_key(blob, pack))
            .map_err(|e| self.db_err(e))?
            .and_then(|v| decode_blob_value(*blob, &v)))
    }

    /// Visit every blob entry of a live pack: (pack, entry). A blob in two packs is
    /// visited twice.
    pub(crate) fn for_each_blob(&self, mut f: impl FnMut(PackId, PackEntry)) -> Result<()> {
        let live: HashSet<PackId> = self.packs()?.into_iter().map(|p| p.id).collect();
        for item in self.db.iterator_cf(self.cf(CF_BLOBS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if k.len() != 64 {
                continue;
            }
            let pack = PackId(k[32..].try_into().expect("32"));
            if !live.contains(&pack) {
                continue;
            }
            if let Some(entry) = decode_blob_value(BlobId(k[..32].try_into().expect("32")), &v) {
                f(pack, entry);
            }
        }
        Ok(())
    }

    /// Add one index file's content (already downloaded and decoded).
    pub(crate) fn ingest(&self, id: IndexId, file: &IndexFile) -> Result<()> {
        let mut batch = WriteBatch::default();
        let mut packs = Vec::with_capacity(file.packs.len());
        for p in &file.packs {
            // Bounded write batches: a large index file must not inflate the memtable.
            if batch.len() > 20_000 {
                self.db
                    .write(std::mem::take(&mut batch))
                    .map_err(|e| self.db_err(e))?;
            }
            let mut rec = self.get_pack(&p.id)?.unwrap_or_default();
            rec.size = p.size;
            rec.kind_meta = p.kind() == PackKind::Meta;
            rec.refs.retain(|(i, _)| *i != id);
            rec.refs.push((id, p.obsolete_since.map(|t| t.seconds)));
            batch.put_cf(self.cf(CF_PACKS), p.id.as_bytes(), rec.encode());
            for b in &p.blobs {
                batch.put_cf(
                    self.cf(CF_BLOBS),
                    blob_key(&b.id, &p.id),
                    encode_blob_value(b),
                );
            }
            packs.push(p.id);
        }
        let v = FileRecord::encode(FILE_LIVE, &file.supersedes, &packs);
        batch.put_cf(self.cf(CF_FILES), id.as_bytes(), v);
        self.db.write(batch).map_err(|e| self.db_err(e))
    }

    fn file_record(&self, id: &IndexId) -> Result<Option<FileRecord>> {
        let Some(v) = self
            .db
            .get_cf(self.cf(CF_FILES), id.as_bytes())
            .map_err(|e| self.db_err(e))?
        else {
            return Ok(None);
        };
        FileRecord::decode(&v)
            .map(Some)
            .ok_or_else(|| Error::Cache {
                path: self.path.clone(),
                reason: "damaged file record".into(),
            })
    }

    /// Remove an index file's refs from its packs; keep (superseded) or delete its record.
    fn drop_file(&self, id: &IndexId, keep_record: bool) -> Result<()> {
        let Some(FileRecord {
            supersedes: sup,
            packs,
        }) = self.file_record(id)?
        else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        for p in &packs {
            if let Some(mut rec) = self.get_pack(p)? {
                rec.refs.retain(|(i, _)| i != id);
                if rec.refs.is_empty() {
                    batch.delete_cf(self.cf(CF_PACKS), p.as_bytes());
                } else {
                    batch.put_cf(self.cf(CF_PACKS), p.as_bytes(), rec.encode());
                }
            }
        }
        if keep_record {
            let v = FileRecord::encode(FILE_SUPERSEDED, &sup, &[]);
            batch.put_cf(self.cf(CF_FILES), id.as_bytes(), v);
        } else {
            batch.delete_cf(self.cf(CF_FILES), id.as_bytes());
        }
        self.db.write(batch).map_err(|e| self.db_err(e))
    }

    fn cached_files(&self) -> Result<HashMap<IndexId, u8>> {
        let mut out = HashMap::new();
        for item in self.db.iterator_cf(self.cf(CF_FILES), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if let (Ok(k), Some(state)) = (<[u8; 32]>::try_from(&k[..]), v.first()) {
                out.insert(IndexId(k), *state);
            }
        }
        Ok(out)
    }

    /// Remember an index file this process wrote as live (see [`Seen`]): if the bucket is
    /// rolled back before the next sync, its disappearance is noticed too.
    pub(crate) fn note_written(&self, id: IndexId) {
        let Some(path) = self.seen.as_deref() else {
            return;
        };
        let mut seen = load_seen(path);
        if seen.live.insert(id) {
            self.save_seen(path, &seen);
        }
    }

    fn save_seen(&self, path: &Path, seen: &Seen) {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let r = std::fs::write(&tmp, seen.render()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(
                "cannot record what was seen of the index in {}: {e}",
                path.display()
            );
        }
    }

    /// Bring the cache in step with the index files in the store.
    pub(crate) async fn sync(
        self: &Arc<Self>,
        store: &Store,
        keys: &Arc<arca_format::Keys>,
    ) -> Result<SyncStats> {
        let sizes: HashMap<IndexId, u64> = store
            .list(layout::INDEX)
            .await?
            .into_iter()
            .filter(|o| !crate::store::foreign_by_size(o))
            .filter_map(|o| layout::parse_id(layout::INDEX, &o.name).map(|id| (id, o.size)))
            .collect();
        let present: HashSet<IndexId> = sizes.keys().copied().collect();
        let cached = self.cached_files()?;
        let new: Vec<IndexId> = present
            .iter()
            .filter(|i| !cached.contains_key(i))
            .copied()
            .collect();
        let mut stats = SyncStats::default();

        // Download and decode new files concurrently; ingest one at a time (rocksdb writes
        // of one file's pack records must not interleave with another's).
        use futures::StreamExt;
        let mut downloads = futures::stream::iter(new.into_iter().map(|id| {
            let store = store.clone();
            let keys = keys.clone();
            let size = sizes.get(&id).copied();
            async move {
                let file = fetch_index_file(&store, &keys, &id, size)
                    .await
                    .map_err(|e| (id, e))?;
                Ok::<_, (IndexId, Error)>((id, file))
            }
        }))
        .buffer_unordered(8);
        while let Some(r) = downloads.next().await {
            let (id, file) = match r {
                Ok(x) => x,
                // An index file deleted between listing and reading was superseded: skip.
                Err((_, e)) if e.is_not_found() => continue,
                // A damaged file is left out (its blobs read as missing) and reported.
                Err((id, Error::Format(e))) if e.is_corruption() => {
                    tracing::warn!("index file {} is damaged and left out: {e}", id.short());
                    stats.damaged.push((id, e.to_string()));
                    continue;
                }
                Err((_, e)) => return Err(e),
            };
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.ingest(id, &file))
                .await
                .expect("ingest task panicked")?;
            stats.ingested += 1;
        }

        let mut seen = self.seen.as_deref().map(load_seen).unwrap_or_default();
        // Which present files are superseded by another present file. A file this machine
        // saw superseded never supersedes anything now: if it is a replay, its list is old.
        let mut superseded = BTreeSet::new();
        let mut new_superseders = 0;
        for id in &present {
            if seen.superseded.contains(id) {
                continue;
            }
            if let Some(FileRecord {
                supersedes: sup, ..
            }) = self.file_record(id)?
            {
                if !sup.is_empty() && !seen.live.contains(id) {
                    new_superseders += 1;
                }
                superseded.extend(sup.into_iter().filter(|s| present.contains(s)));
            }
        }
        // Replayed: seen superseded before, present again, superseded by nothing now.
        for id in seen.superseded.iter().filter(|i| present.contains(i)) {
            if !superseded.contains(id) {
                tracing::error!(
                    "index file {} was superseded when this machine last looked and is back, \
                     superseded by nothing: a replayed old file; it is not used",
                    id.short()
                );
                stats.replayed.push(*id);
                superseded.insert(*id);
            }
        }
        for (id, state) in self.cached_files()? {
            if !present.contains(&id) {
                self.drop_file(&id, false)?;
                stats.dropped += 1;
            } else if superseded.contains(&id) && state == FILE_LIVE {
                self.drop_file(&id, true)?;
                stats.dropped += 1;
            }
        }
        stats.live = present.len() - superseded.len();
        let vanished: Vec<&IndexId> = seen.live.iter().filter(|i| !present.contains(i)).collect();
        if let (Some(first), 0) = (vanished.first(), new_superseders) {
            let why = format!(
                "{} index file(s) this machine saw live (first: {}) are gone and no new index \
                 file supersedes them: the repository went backwards (restored from an older \
                 copy, or files were deleted). Snapshots made since may be missing. If this \
                 was done on purpose, remove {} to accept the repository as it is",
                vanished.len(),
                first.short(),
                self.seen
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
            if self.said_backwards.swap(true, Ordering::Relaxed) {
                tracing::debug!("{why}");
            } else {
                tracing::error!("{why}");
            }
            stats.went_backwards = Some(why);
        }
        if let Some(path) = self.seen.as_deref() {
            // Keep the old live set while the warning stands, so that it is repeated.
            if stats.went_backwards.is_none() {
                // Accepted (or never so): a later rollback is an error again.
                self.said_backwards.store(false, Ordering::Relaxed);
                // Damaged files are not remembered as live: removing one, as repair
                // advises, is not the repository going backwards.
                let damaged: BTreeSet<IndexId> = stats.damaged.iter().map(|d| d.0).collect();
                seen.live = present
                    .iter()
                    .filter(|i| !superseded.contains(i) && !damaged.contains(i))
                    .copied()
                    .collect();
            }
            seen.superseded.extend(superseded.iter().copied());
            self.save_seen(path, &seen);
        }
        Ok(stats)
    }
}

/// What this machine saw of the index, from the file beside the cache (nothing when it
/// is missing or unreadable).
fn load_seen(path: &Path) -> Seen {
    std::fs::read_to_string(path)
        .map(|t| Seen::parse(&t))
        .unwrap_or_default()
}

/// Read, check and decode one index file: bounded by `size` (its listed size) or by the
/// limit for index files, its bytes hashed against its name (a file replayed or planted
/// under another name is not trusted), decoded off the async threads.
pub(crate) async fn fetch_index_file(
    store: &Store,
    keys: &Arc<arca_format::Keys>,
    id: &IndexId,
    size: Option<u64>,
) -> Result<IndexFile> {
    let name = layout::index(id);
    let bytes = crate::store::get_bounded(store, &name, size).await?;
    let (keys, id) = (keys.clone(), *id);
    tokio::task::spawn_blocking(move || {
        crate::store::check_named(&name, &id.0, &bytes)?;
        IndexFile::decode(&keys, &bytes).map_err(|e| match e {
            arca_format::Error::Corrupt { what, reason } => {
                Error::Format(arca_format::Error::Corrupt {
                    what,
                    reason: format!("{name}: {reason}"),
                })
            }
            e => e.into(),
        })
    })
    .await
    .expect("decode task panicked")
}

impl Drop for IndexCache {
    fn drop(&mut self) {
        if self.temp.is_some() {
            // The TempDir removes the directory after the DB is closed (field order).
            tracing::debug!("removing temporary cache {}", self.path.display());
        }
    }
}

/// A live pack as the index lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackInfo {
    pub(crate) id: PackId,
    pub(crate) kind: PackKind,
    pub(crate) size: u64,
    /// Marked obsolete, and since when (seconds), by every live index file listing it.
    pub(crate) obsolete_since: Option<i64>,
}

enum OpenErr {
    Locked,
    Other(String),
}
