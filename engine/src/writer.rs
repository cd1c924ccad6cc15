//! Writing blobs: dedup, seal, pack, upload, index — shared by every writer (backup of a
//! directory tree, and the data movers).
//!
//! CPU work (hashing, compression, encryption) happens in the calling thread, which is a
//! rayon worker or a plain thread, never a tokio worker. The caller seals into a reused
//! thread-local buffer and appends the result to the open pack under a short lock (a hand-
//! off to a packer thread cost a futex wake-up per blob); whoever fills a pack finishes it
//! and hands it to tokio for upload, waiting for a free upload slot first. That wait is the
//! backpressure: memory stays bounded whatever the input. Index files are written after the packs they describe and flushed
//! every [`FLUSH_PACKS`] packs, which also bounds the set of blobs only this writer knows.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use arca_format::{
    BlobId, BlobType, Compression, IndexFile, IndexId, IndexPack, Keys, PackKind, PackWriter,
    envelope,
};
use bytes::Bytes;
use tokio::runtime::Handle;

use crate::error::{Error, Result};
use crate::indexed::{Indexed, pack_name};
use crate::session::SessionLiveness;
use crate::store::WriteMode;

/// An index file is written once this many packs, or this many blobs, are uploaded and not
/// yet indexed: it bounds the memory of the pending entries and of the claims.
pub(crate) const FLUSH_PACKS: usize = 64;
pub(crate) const FLUSH_BLOBS: usize = 50_000;
const UPLOADS_IN_FLIGHT: usize = 4;
/// How often, at most, uploaded packs wait for an index file.
pub(crate) const DEFAULT_CHECKPOINT: std::time::Duration = std::time::Duration::from_secs(60);

thread_local! {
    static SEAL_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Upload slots, waited for by plain threads (never tokio workers).
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn acquire(self: &Arc<Self>) -> Slot {
        let mut free = self.free.lock().expect("lock");
        while *free == 0 {
            free = self.cv.wait(free).expect("lock");
        }
        *free -= 1;
        Slot(self.clone())
    }
}

/// A held upload slot, given back on drop.
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.free.lock().expect("lock") += 1;
        self.0.cv.notify_one();
    }
}

/// The open packs, one per kind.
struct Open {
    data: PackWriter,
    meta: PackWriter,
}

/// Counters of what a writer added.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// Data blobs stored.
    pub data_blobs: AtomicU64,
    /// Tree and extent-list blobs stored.
    pub tree_blobs: AtomicU64,
    /// Plaintext bytes of stored blobs.
    pub bytes_added: AtomicU64,
    /// Sealed bytes of stored blobs.
    pub bytes_stored: AtomicU64,
    /// Packs uploaded.
    pub packs: AtomicU64,
    /// Bytes of packs uploaded.
    pub pack_bytes: AtomicU64,
}

struct Shared {
    idx: Indexed,
    /// Checked before and after every index file: a writer whose session lapsed must not
    /// name packs that maintenance may have reclaimed as leftovers meanwhile.
    session: Arc<SessionLiveness>,
    stats: Arc<WriteStats>,
    failed: Mutex<Option<Error>>,
    abort: AtomicBool,
    pending: Mutex<Vec<IndexPack>>,
    claimed: Mutex<HashSet<BlobId>>,
    index_files: Mutex<Vec<IndexId>>,
    flush_lock: tokio::sync::Mutex<()>,
    uploads: Arc<Slots>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    open: Mutex<Open>,
    data_size: usize,
    tree_size: usize,
    handle: Handle,
    /// Write an index file at least this often while packs are uploaded, so that a killed
    /// writer loses at most this much work: the next backup reuses what was indexed.
    checkpoint: Mutex<(std::time::Duration, std::time::Instant)>,
    /// Writes the checkpoint on time even when no pack is uploaded for a while (everything
    /// deduplicates): uploaded packs never wait long for their index file.
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    fn fail(&self, e: Error) {
        let mut f = self.failed.lock().expect("lock");
        if f.is_none() {
            *f = Some(e);
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    /// Write an index file for the packs uploaded so far, add it to the cache, and forget
    /// the claims it now answers for.
    async fn flush_index(self: &Arc<Self>) -> Result<()> {
        let _guard = self.flush_lock.lock().await;
        let packs = std::mem::take(&mut *self.pending.lock().expect("lock"));
        if packs.is_empty() {
            return Ok(());
        }
        let file = IndexFile {
            supersedes: Vec::new(),
            packs,
        };
        self.idx.repo.pauses.at("writer:before-index").await;
        self.session.check()?;
        let (id, file) = self.idx.write_index_file(file).await?;
        if let Err(e) = self.session.check() {
            // It stalled while the file was being stored: the packs it names may have been
            // reclaimed meanwhile. Take it back before anyone deduplicates against it.
            let _ = self
                .idx
                .repo
                .store
                .delete(&arca_format::layout::index(&id))
                .await;
            return Err(e);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.idx.index.ingest(id, &file)?;
            me.idx.index.note_written(id);
            let mut claimed = me.claimed.lock().expect("lock");
            for p in &file.packs {
                for b in &p.blobs {
                    claimed.remove(&b.id);
                }
            }
            Ok::<_, Error>(())
        })
        .await
        .expect("ingest task panicked")?;
        self.index_files.lock().expect("lock").push(id);
        self.checkpoint.lock().expect("lock").1 = std::time::Instant::now();
        // A checkpoint is durable here: a test kills the writer now to see a new run
        // reuse it.
        self.idx.repo.pauses.at("writer:index-written").await;
        Ok(())
    }
}

/// A writer of blobs into one repository.
pub struct Writer {
    keys: Arc<Keys>,
    compression: Compression,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Start a writer under a session. Must be called from within a tokio runtime.
    pub fn new(idx: &Indexed, compression: Compression, session: Arc<SessionLiveness>) -> Self {
        let cfg = &idx.repo.config;
        let (data_size, tree_size) = (cfg.data_pack_size as usize, cfg.tree_pack_size as usize);
        let shared = Arc::new(Shared {
            idx: idx.clone(),
            session,
            stats: Arc::new(WriteStats::default()),
            failed: Mutex::new(None),
            abort: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            claimed: Mutex::new(HashSet::new()),
            index_files: Mutex::new(Vec::new()),
            flush_lock: tokio::sync::Mutex::new(()),
            uploads: Arc::new(Slots {
                free: Mutex::new(UPLOADS_IN_FLIGHT),
                cv: Condvar::new(),
            }),
            tasks: Mutex::new(Vec::new()),
            open: Mutex::new(Open {
                data: PackWriter::new(PackKind::Data, data_size + (1 << 20)),
                meta: PackWriter::new(PackKind::Meta, tree_size + (1 << 20)),
            }),
            data_size,
            tree_size,
            handle: Handle::current(),
            checkpoint: Mutex::new((DEFAULT_CHECKPOINT, std::time::Instant::now())),
            ticker: Mutex::new(None),
        });
        let ticker = shared.handle.spawn(checkpoints(Arc::downgrade(&shared)));
        *shared.ticker.lock().expect("lock") = Some(ticker);
        Self {
            keys: idx.repo.keys.clone(),
            compression,
            shared,
        }
    }

    /// Write an index file at least this often while uploading (default one minute).
    pub fn set_checkpoint(&self, every: std::time::Duration) {
        self.shared.checkpoint.lock().expect("lock").0 = every;
    }

    /// Counters.
    pub fn stats(&self) -> Arc<WriteStats> {
        self.shared.stats.clone()
    }

    /// Whether the writer failed (a store error): producers should stop.
    pub fn aborted(&self) -> bool {
        self.shared.abort.load(Ordering::Relaxed)
    }

    /// Producers see `Cancelled` once the writer failed; [`Writer::finish`] returns the
    /// error that made it fail.
    fn check(&self) -> Result<()> {
        if self.aborted() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// Claim a blob ID for storing: false if it is already stored or being stored.
    fn claim(&self, id: &BlobId) -> Result<bool> {
        if self.shared.claimed.lock().expect("lock").contains(id) {
            return Ok(false);
        }
        if self.shared.idx.index.has(id)? {
            return Ok(false);
        }
        Ok(self.shared.claimed.lock().expect("lock").insert(*id))
    }

    /// Store a blob unless the repository has it; returns its ID. Blocks while the uploads
    /// are behind (that is the backpressure).
    pub fn store(&self, blob_type: BlobType, data: &[u8]) -> Result<BlobId> {
        self.check()?;
        let id = self.keys.blob_id(blob_type, data);
        if !self.claim(&id)? {
            return Ok(id);
        }
        let compression = match blob_type {
            BlobType::Data => self.compression,
            // Metadata compresses well and is read often: always zstd.
            _ => Compression::Zstd(3),
        };
        let full = SEAL_BUF.with(|buf| -> Result<Option<PackWriter>> {
            let mut buf = buf.borrow_mut();
            buf.clear();
            envelope::seal_into(
                &self.keys,
                blob_type.kind(),
                &[],
                data,
                compression,
                &mut buf,
            )?;
            let st = &self.shared.stats;
            match blob_type {
                BlobType::Data => st.data_blobs.fetch_add(1, Ordering::Relaxed),
                _ => st.tree_blobs.fetch_add(1, Ordering::Relaxed),
            };
            st.bytes_added
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            st.bytes_stored
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            let sh = &self.shared;
            let kind = blob_type.pack_kind();
            let target = match kind {
                PackKind::Data => sh.data_size,
                PackKind::Meta => sh.tree_size,
            };
            let mut open = sh.open.lock().expect("lock");
            let w = match kind {
                PackKind::Data => &mut open.data,
                PackKind::Meta => &mut open.meta,
            };
            w.add_sealed(blob_type, id, data.len() as u32, &buf)?;
            Ok((w.len() >= target)
                .then(|| std::mem::replace(w, PackWriter::new(kind, target + (1 << 20)))))
        })?;
        if let Some(full) = full {
            // Outside the lock: finishing encrypts the header, and the slot may be waited for.
            upload(&self.shared, full);
        }
        Ok(id)
    }

    /// [`Writer::has`] with a lookup session, for many checks in a row.
    pub(crate) fn has_in(&self, l: &mut crate::cache::Lookup<'_>, id: &BlobId) -> Result<bool> {
        Ok(self.shared.claimed.lock().expect("lock").contains(id)
            || self.shared.idx.index.has_in(l, id)?)
    }

    /// Whether the repository (or this writer) has a blob a writer may reuse.
    pub fn has(&self, id: &BlobId) -> Result<bool> {
        self.has_in(&mut self.shared.idx.index.session(), id)
    }

    /// Flush everything: close the packs, wait for uploads, write the last index file.
    /// Returns the index files written.
    pub async fn finish(&self) -> Result<Vec<IndexId>> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            if shared.abort.load(Ordering::Relaxed) {
                return;
            }
            let open = {
                let mut o = shared.open.lock().expect("lock");
                [
                    std::mem::replace(&mut o.data, PackWriter::new(PackKind::Data, 0)),
                    std::mem::replace(&mut o.meta, PackWriter::new(PackKind::Meta, 0)),
                ]
            };
            for w in open {
                if !w.is_empty() {
                    upload(&shared, w);
                }
            }
        })
        .await
        .expect("flush task panicked");
        let tasks = std::mem::take(&mut *self.shared.tasks.lock().expect("lock"));
        for t in tasks {
            t.await
                .map_err(|_| Error::Invalid("upload task panicked".into()))?;
        }
        if let Some(e) = self.shared.failed.lock().expect("lock").take() {
            return Err(e);
        }
        self.check()?;
        self.shared.flush_index().await?;
        Ok(self.shared.index_files.lock().expect("lock").clone())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Producers still running (an error upstream) stop at their next store.
        self.shared.abort.store(true, Ordering::SeqCst);
        if let Some(t) = self.shared.ticker.lock().expect("lock").take() {
            t.abort();
        }
    }
}

/// Write an index file for uploaded packs once the checkpoint interval has passed since the
/// last one, whether or not more packs are uploaded.
async fn checkpoints(shared: std::sync::Weak<Shared>) {
    loop {
        let wait = {
            let Some(s) = shared.upgrade() else { return };
            let c = s.checkpoint.lock().expect("lock");
            c.0.saturating_sub(c.1.elapsed())
        };
        // At most a second at a time: a changed interval takes effect soon.
        tokio::time::sleep(wait.clamp(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_secs(1),
        ))
        .await;
        let Some(s) = shared.upgrade() else { return };
        if s.abort.load(Ordering::Relaxed) {
            return;
        }
        let due = {
            let c = s.checkpoint.lock().expect("lock");
            c.1.elapsed() >= c.0
        };
        if !due {
            continue;
        }
        if s.pending.lock().expect("lock").is_empty() {
            // Nothing to index: the next checkpoint is a full interval from now.
            s.checkpoint.lock().expect("lock").1 = std::time::Instant::now();
            continue;
        }
        if let Err(e) = s.flush_index().await {
            s.fail(e);
            return;
        }
    }
}

/// Finish a full pack and upload it on tokio. Blocks (a plain thread, never a tokio
/// worker) until an upload slot is free: every producer slows to the store's pace.
fn upload(shared: &Arc<Shared>, w: PackWriter) {
    let keys = shared.idx.repo.keys.clone();
    let finished = match w.finish(&keys) {
        Ok(p) => p,
        Err(e) => return shared.fail(e.into()),
    };
    let permit = shared.uploads.acquire();
    let s = shared.clone();
    let task = shared.handle.spawn(async move {
        let _permit = permit;
        let name = pack_name(finished.kind, &finished.id);
        let size = finished.bytes.len() as u64;
        match s
            .idx
            .repo
            .store
            .put(&name, Bytes::from(finished.bytes), WriteMode::Overwrite)
            .await
        {
            Ok(()) => {
                s.stats.packs.fetch_add(1, Ordering::Relaxed);
                s.stats.pack_bytes.fetch_add(size, Ordering::Relaxed);
                let (packs, blobs) = {
                    let mut p = s.pending.lock().expect("lock");
                    p.push(IndexPack {
                        id: finished.id,
                        size,
                        obsolete_since: None,
                        obsolete_visible: None,
                        blobs: finished.entries,
                    });
                    (p.len(), p.iter().map(|x| x.blobs.len()).sum::<usize>())
                };
                let due = {
                    let c = s.checkpoint.lock().expect("lock");
                    c.1.elapsed() >= c.0
                };
                if (packs >= FLUSH_PACKS || blobs >= FLUSH_BLOBS || due)
                    && let Err(e) = s.flush_index().await
                {
                    s.fail(e);
                }
            }
            Err(e) => s.fail(e),
        }
    });
    shared.tasks.lock().expect("lock").push(task);
}
