//! A repository with its index loaded: what reading and writing blobs needs.

use std::path::Path;
use std::sync::Arc;

use arca_format::{
    BlobId, BlobType, Compression, IndexFile, IndexId, PackId, PackKind, Tree, layout, pack,
};
use bytes::Bytes;

use crate::cache::{BlobLocation, IndexCache, SyncStats};
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::store::WriteMode;

/// A repository whose index cache is open and in step with the store.
#[derive(Clone, Debug)]
pub struct Indexed {
    pub(crate) repo: Repository,
    pub(crate) index: Arc<IndexCache>,
    meta_packs: Arc<MetaPacks>,
}

/// Metadata packs this small are fetched whole, and the last few kept: a walk of a
/// snapshot reads nearly every tree in a pack, so one read replaces hundreds of ranged
/// reads (and as many round trips on S3).
const META_PACK_WHOLE_MAX: u64 = 8 << 20;
const META_PACKS_KEPT: usize = 8;

#[derive(Debug, Default)]
struct MetaPacks(std::sync::Mutex<std::collections::VecDeque<(PackId, Bytes)>>);

impl MetaPacks {
    fn get(&self, id: &PackId) -> Option<Bytes> {
        let packs = self.0.lock().expect("lock");
        packs.iter().find(|(p, _)| p == id).map(|(_, b)| b.clone())
    }

    fn put(&self, id: PackId, bytes: Bytes) {
        let mut packs = self.0.lock().expect("lock");
        if packs.iter().any(|(p, _)| *p == id) {
            return;
        }
        if packs.len() >= META_PACKS_KEPT {
            packs.pop_back();
        }
        packs.push_front((id, bytes));
    }
}

impl Repository {
    /// Open the local index cache under `cache_root` (a temporary one when `None`) and
    /// bring it in step with the store.
    pub async fn indexed(&self, cache_root: Option<&Path>) -> Result<(Indexed, SyncStats)> {
        let root = cache_root.map(Path::to_path_buf);
        let id = self.config.repo_id;
        let cache = tokio::task::spawn_blocking(move || IndexCache::open(root.as_deref(), id))
            .await
            .expect("cache open panicked")?;
        let index = Arc::new(cache);
        let stats = index.sync(&self.store, &self.keys).await?;
        tracing::debug!(?stats, "index cache synced");
        Ok((
            Indexed {
                repo: self.clone(),
                index,
                meta_packs: Arc::default(),
            },
            stats,
        ))
    }
}

/// The name of a pack in the store.
pub(crate) fn pack_name(kind: PackKind, id: &PackId) -> String {
    layout::pack(kind, id)
}

impl Indexed {
    /// The repository.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// Bring the index in step with the store again (after other writers or maintenance).
    pub async fn resync(&self) -> Result<SyncStats> {
        self.index.sync(&self.repo.store, &self.repo.keys).await
    }

    /// Seal and store an index file (named by its hash); hands the file back.
    pub(crate) async fn write_index_file(&self, file: IndexFile) -> Result<(IndexId, IndexFile)> {
        let keys = self.repo.keys.clone();
        let (id, bytes, file) = tokio::task::spawn_blocking(move || {
            file.encode(&keys, Compression::Zstd(3))
                .map(|(id, b)| (id, b, file))
        })
        .await
        .expect("encode task panicked")?;
        self.repo
            .store
            .put(
                &layout::index(&id),
                Bytes::from(bytes),
                WriteMode::Overwrite,
            )
            .await?;
        Ok((id, file))
    }

    /// Where a blob is.
    pub fn locate(&self, id: &BlobId) -> Result<BlobLocation> {
        self.index.lookup(id)?.ok_or(Error::MissingBlob { id: *id })
    }

    /// Read, authenticate and decrypt one blob.
    pub async fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        let loc = self.locate(id)?;
        let e = loc.entry;
        let sealed = match self.meta_pack(&loc).await {
            Some(whole) => whole.slice(e.offset as usize..e.end() as usize),
            None => {
                self.repo
                    .store
                    .get_range(&pack_name(loc.kind, &loc.pack), e.offset as u64..e.end())
                    .await?
            }
        };
        let keys = self.repo.keys.clone();
        let open = move || pack::open_blob(&keys, &e, &sealed);
        let plain = if e.raw_length > 256 * 1024 {
            tokio::task::spawn_blocking(open)
                .await
                .expect("decrypt task panicked")
        } else {
            open()
        };
        plain.map_err(|err| annotate(err, &loc))
    }

    /// The whole metadata pack holding `loc`, from memory or fetched, when it is small
    /// enough; `None` (read the range instead) otherwise, or when the whole pack cannot
    /// be read or is shorter than the index says: the ranged read then reports it.
    async fn meta_pack(&self, loc: &BlobLocation) -> Option<Bytes> {
        if loc.kind != PackKind::Meta || loc.pack_size > META_PACK_WHOLE_MAX {
            return None;
        }
        let whole = match self.meta_packs.get(&loc.pack) {
            Some(b) => b,
            None => {
                // The size the index records, never more: the object behind the name is
                // not authenticated until its blobs are opened.
                let b = self
                    .repo
                    .store
                    .get_range(&pack_name(loc.kind, &loc.pack), 0..loc.pack_size)
                    .await
                    .ok()?;
                self.meta_packs.put(loc.pack, b.clone());
                b
            }
        };
        (whole.len() as u64 >= loc.entry.end()).then_some(whole)
    }

    /// Read a whole directory: a tree blob and the chain of blobs it continues in.
    pub async fn read_tree(&self, id: &BlobId) -> Result<Tree> {
        let mut tree = self.read_one_tree(id).await?;
        let mut next = tree.next.take();
        while let Some(n) = next {
            let mut more = self.read_one_tree(&n).await?;
            next = more.next.take();
            tree.nodes.append(&mut more.nodes);
        }
        Ok(tree)
    }

    async fn read_one_tree(&self, id: &BlobId) -> Result<Tree> {
        let loc = self.locate(id)?;
        if loc.entry.blob_type != BlobType::Tree {
            return Err(Error::Format(arca_format::Error::Corrupt {
                what: arca_format::What::Tree,
                reason: format!("blob {} is not a tree", id.short()),
            }));
        }
        let plain = self.read_blob(id).await?;
        Tree::decode(&plain).map_err(|e| annotate(e, &loc))
    }
}

/// Say which pack and blob a format error is about.
pub(crate) fn annotate(e: arca_format::Error, loc: &BlobLocation) -> Error {
    match e {
        arca_format::Error::Corrupt { what, reason } => {
            Error::Format(arca_format::Error::Corrupt {
                what,
                reason: format!(
                    "blob {} in pack {}: {reason}",
                    loc.entry.id.short(),
                    loc.pack.short()
                ),
            })
        }
        e => Error::Format(e),
    }
}
