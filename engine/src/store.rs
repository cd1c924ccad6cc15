//! Storage: the engine's small store trait, and its implementation over `object_store`.
//!
//! [`Backend`] is all the engine asks of a store (FORMAT.md section 2): whole and ranged
//! gets, atomic puts (overwrite or create-only), deletes, and listing with sizes and times.
//! [`ObjectStoreBackend`] implements it for every `object_store` store: the local file
//! system (the default), memory, S3 and S3-compatible servers, GCS and Azure. Every backend
//! must pass [`conformance::run`].

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path as OsPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};

use crate::error::{Error, Result, StoreErrorKind};

pub mod clocked;
pub mod conformance;
pub mod faulty;

/// One object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Name relative to the repository prefix.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written, by the store's clock.
    pub last_modified: DateTime<Utc>,
}

/// How a put treats an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Replace it.
    Overwrite,
    /// Fail with [`StoreErrorKind::AlreadyExists`] if it exists.
    CreateNew,
}

/// An object's version as its store names it (ETag and version ID): what a conditional
/// write compares against. Opaque to callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    e_tag: Option<String>,
    version: Option<String>,
}

/// When a versioned put may replace what is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Only if no object has the name (fails with [`StoreErrorKind::AlreadyExists`]).
    Create,
    /// Only if the object is still at this version: one that changed or was deleted
    /// since fails with [`StoreErrorKind::Conflict`].
    IfMatch(Version),
}

/// What the engine needs from an object store. Names are relative to the repository.
pub trait Backend: Send + Sync + fmt::Debug {
    /// The location, for messages (a URL or a path).
    fn location(&self) -> &str;
    /// Read a whole object.
    fn get(&self, name: &str) -> BoxFut<'_, Bytes>;
    /// Read a whole object, refusing (from the response's size, before its body is read) one
    /// larger than `max` bytes.
    fn get_at_most(&self, name: &str, max: u64) -> BoxFut<'_, Bytes>;
    /// Read a byte range of an object.
    fn get_range(&self, name: &str, range: Range<u64>) -> BoxFut<'_, Bytes>;
    /// Write a whole object atomically.
    fn put(&self, name: &str, data: Bytes, mode: WriteMode) -> BoxFut<'_, ()>;
    /// Delete an object; deleting a missing object is not an error.
    fn delete(&self, name: &str) -> BoxFut<'_, ()>;
    /// List the objects whose names start with `prefix`.
    fn list(&self, prefix: &str) -> BoxFut<'_, Vec<ObjectInfo>>;
    /// Metadata of one object, or `None` if it does not exist.
    fn head(&self, name: &str) -> BoxFut<'_, Option<ObjectInfo>>;
    /// Write a whole object atomically under a [`Condition`]; returns its new version.
    /// Used for the few mutable objects that must never be written over a change made by
    /// someone else (sessions, the maintenance lease).
    fn put_versioned(&self, name: &str, data: Bytes, cond: Condition) -> BoxFut<'_, Version>;
    /// Read a whole object and its version.
    fn get_versioned(&self, name: &str) -> BoxFut<'_, (Bytes, Version)>;
    /// Delete an object only if it is still at `expected`; a changed object is kept and
    /// [`StoreErrorKind::Conflict`] returned; a missing one is not an error.
    fn delete_versioned(&self, name: &str, expected: &Version) -> BoxFut<'_, ()>;
}

/// Read a whole object, refusing before the fetch one larger than any object of its kind
/// can be (FORMAT.md section 15): a planted 40 GB file under `index/` gives a clear error
/// naming it, not an out-of-memory kill. `listed` is its size from the listing it came
/// from; without one the store is asked (HEAD). Reads exactly that many bytes.
pub(crate) async fn get_bounded(store: &Store, name: &str, listed: Option<u64>) -> Result<Bytes> {
    let (_, max) = arca_format::layout::kind_and_max_len(name);
    match listed {
        // The listing's size is checked first; then exactly that many bytes are read.
        Some(size) if size > max => Err(oversized(name, size)),
        Some(0) => Ok(Bytes::new()),
        Some(size) => store.get_range(name, 0..size).await,
        None => store.get_at_most(name, max).await,
    }
}

/// The error for an object larger than any object of its kind can be.
pub(crate) fn oversized(name: &str, size: u64) -> Error {
    let (what, max) = arca_format::layout::kind_and_max_len(name);
    Error::Format(arca_format::Error::Corrupt {
        what,
        reason: format!(
            "{name} is {size} bytes, more than any {what} can be ({max}): it is not one of the \
             repository's objects (planted or damaged) and was not read; remove it"
        ),
    })
}

/// Whether a listed object is larger than any object of its kind can be: then it is not
/// one of the repository's (planted, or left by something else) and is never read. Says so
/// once, naming it.
pub(crate) fn foreign_by_size(info: &ObjectInfo) -> bool {
    let (_, max) = arca_format::layout::kind_and_max_len(&info.name);
    let foreign = info.size > max;
    if foreign {
        tracing::warn!("{}", oversized(&info.name, info.size));
    }
    foreign
}

/// Check that an object named by the BLAKE3 hash of its stored bytes holds those bytes: an
/// object planted under another's name, or replayed under a new one, is refused.
pub(crate) fn check_named(name: &str, id: &[u8; 32], bytes: &[u8]) -> Result<()> {
    if arca_format::object_hash(bytes) == *id {
        return Ok(());
    }
    let (what, _) = arca_format::layout::kind_and_max_len(name);
    Err(Error::Format(arca_format::Error::Corrupt {
        what,
        reason: format!(
            "{name}: its content does not hash to its name (damaged, or not written by Arca)"
        ),
    }))
}

/// The boxed future every [`Backend`] method returns (object-safe async).
pub type BoxFut<'a, T> = futures::future::BoxFuture<'a, Result<T>>;

/// A repository's store: a backend shared between tasks.
pub type Store = Arc<dyn Backend>;

/// Options for reaching a store by URL.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// S3 endpoint for S3-compatible servers (else `AWS_ENDPOINT_URL`, else AWS).
    pub s3_endpoint: Option<String>,
    /// S3 region (else `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`).
    pub s3_region: Option<String>,
    /// How long to keep retrying a transient failure before giving up (default 60 s).
    pub retry_timeout: Option<Duration>,
    /// S3 access key ID and secret (else the usual `AWS_*` variables, web identity, or
    /// instance metadata).
    pub s3_credentials: Option<(String, String)>,
}

/// `object_store` behind [`Backend`], with the repository's prefix.
pub struct ObjectStoreBackend {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    /// For a local directory: large objects (packs) are written here with direct I/O.
    local_root: Option<std::path::PathBuf>,
}

/// Objects at least this large are written past the page cache on local disk.
const DIRECT_MIN: usize = 1 << 20;
const DIRECT_ALIGN: usize = 4096;

/// A temporary name beside `path`: `name#digits`, object_store's own staging names, which
/// its listings skip.
fn staging_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        "#{}",
        getrandom::u64().unwrap_or(0) % 1_000_000_000_000
    ));
    std::path::PathBuf::from(tmp)
}

/// Write `data` as the file `path` (replacing it atomically, durably) with `O_DIRECT`.
/// Packs are written once and not read back soon: copying them into the page cache cost
/// more CPU than compressing a tenth of them, and the fsync that follows had to flush
/// them anyway. `Ok(false)`: this file system refuses direct I/O; write it normally.
fn write_direct(path: &std::path::Path, data: &[u8]) -> std::io::Result<bool> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = staging_path(path);
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&tmp)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
        Err(e) => return Err(e),
    };
    // Direct I/O wants the memory, the offset and the length aligned.
    let aligned = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    let written = crate::direct::write_aligned(&file, &data[..aligned], 0)
        .1
        .and_then(|()| {
            if aligned < data.len() {
                // The unaligned tail goes through the page cache.
                crate::direct::set(&file, false)?;
                file.write_all_at(&data[aligned..], aligned as u64)?;
            }
            file.sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return match e.raw_os_error() {
            Some(libc::EINVAL) => Ok(false),
            _ => Err(e),
        };
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

/// A local object's version: its inode, change time and size. Objects are only ever
/// replaced by a rename, so a new write is a new inode and a new change time.
fn local_version(m: &std::fs::Metadata) -> Version {
    use std::os::unix::fs::MetadataExt;
    Version {
        e_tag: Some(format!(
            "{:x}-{:x}.{:x}-{:x}",
            m.ino(),
            m.ctime(),
            m.ctime_nsec(),
            m.size()
        )),
        version: None,
    }
}

/// Lock the directory an object lives in. object_store's local store has no compare-and-
/// swap; every versioned write and delete of a local object holds this lock from its
/// comparison to its rename (or unlink), so two of them can never interleave.
fn lock_dir(dir: &std::path::Path) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(dir)?;
    let f = std::fs::File::open(dir)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e.into())
}

fn local_current(path: &std::path::Path) -> std::io::Result<Option<Version>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(local_version(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A versioned put on local disk: `Err(kind)` inside when the condition failed.
fn local_put_versioned(
    path: &std::path::Path,
    data: &[u8],
    cond: &Condition,
) -> std::io::Result<std::result::Result<Version, StoreErrorKind>> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let _lock = lock_dir(dir)?;
    let current = local_current(path)?;
    match (cond, &current) {
        (Condition::Create, Some(_)) => return Ok(Err(StoreErrorKind::AlreadyExists)),
        (Condition::IfMatch(v), c) if c.as_ref() != Some(v) => {
            return Ok(Err(StoreErrorKind::Conflict));
        }
        _ => {}
    }
    let tmp = staging_path(path);
    let written = (|| {
        let mut f = std::fs::File::create_new(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Ok(local_version(&std::fs::symlink_metadata(path)?)))
}

fn local_delete_versioned(
    path: &std::path::Path,
    expected: &Version,
) -> std::io::Result<std::result::Result<(), StoreErrorKind>> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let _lock = lock_dir(dir)?;
    match local_current(path)? {
        None => Ok(Ok(())),
        Some(v) if &v == expected => {
            std::fs::remove_file(path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(Ok(()))
        }
        Some(_) => Ok(Err(StoreErrorKind::Conflict)),
    }
}

/// Read a local object and its version from one open file (a rename replaces the file,
/// never its content, so the two always agree).
fn local_get_versioned(path: &std::path::Path) -> std::io::Result<(Vec<u8>, Version)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let v = local_version(&f.metadata()?);
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok((buf, v))
}

impl fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStoreBackend({})", self.location)
    }
}

impl ObjectStoreBackend {
    /// Wrap an `object_store` store; objects live under `prefix` (may be empty).
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &str, location: impl Into<String>) -> Self {
        let prefix = prefix.trim_matches('/');
        Self {
            inner,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            location: location.into(),
            local_root: None,
        }
    }

    /// A local directory's store: large objects are written there with direct I/O.
    fn with_local_root(mut self, root: std::path::PathBuf) -> Self {
        self.local_root = Some(root);
        self
    }

    fn path(&self, name: &str) -> OsPath {
        OsPath::from(format!("{}{name}", self.prefix))
    }

    fn err(&self, op: &'static str, name: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let kind = match &e {
            E::NotFound { .. } => StoreErrorKind::NotFound,
            E::AlreadyExists { .. } | E::Precondition { .. } => StoreErrorKind::AlreadyExists,
            E::PermissionDenied { .. } => StoreErrorKind::PermissionDenied,
            E::Unauthenticated { .. } => StoreErrorKind::Unauthenticated,
            E::Generic { source, .. } if looks_unreachable(source.as_ref()) => {
                StoreErrorKind::Unreachable
            }
            _ => StoreErrorKind::Other,
        };
        let mut reason = root_cause(&e);
        // With no credentials configured, the AWS client falls back to the instance
        // metadata service; off EC2 that fails with an address nobody recognises.
        if reason.contains("169.254.169.254") {
            return Error::Store {
                op,
                location: self.location.clone(),
                name: name.to_string(),
                kind: StoreErrorKind::Unauthenticated,
                reason: "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                         (or a web identity or instance role)"
                    .into(),
            };
        }
        // S3 answers a request into a bucket that does not exist with an XML body the
        // client passes on as it is.
        if reason.contains("<Code>NoSuchBucket</Code>") {
            reason = "the bucket does not exist: create it first (e.g. `aws s3 mb`), or check \
                      the location's bucket name"
                .into();
        }
        if reason.is_empty() {
            reason = e.to_string();
        }
        Error::Store {
            op,
            location: self.location.clone(),
            name: name.to_string(),
            kind,
            reason,
        }
    }
}

impl ObjectStoreBackend {
    fn io_err(&self, op: &'static str, name: &str, e: std::io::Error) -> Error {
        Error::Store {
            op,
            location: self.location.clone(),
            name: name.to_string(),
            kind: match e.kind() {
                std::io::ErrorKind::NotFound => StoreErrorKind::NotFound,
                std::io::ErrorKind::PermissionDenied => StoreErrorKind::PermissionDenied,
                _ => StoreErrorKind::Other,
            },
            reason: e.to_string(),
        }
    }

    fn cond_err(&self, op: &'static str, name: &str, kind: StoreErrorKind) -> Error {
        Error::Store {
            op,
            location: self.location.clone(),
            name: name.to_string(),
            kind,
            reason: match kind {
                StoreErrorKind::AlreadyExists => "the object already exists".into(),
                _ => "the object changed or was deleted since it was read".into(),
            },
        }
    }
}

/// The innermost message of an error chain: "connection refused" rather than three layers
/// of wrapping.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !m.is_empty() && !msg.contains(&m) {
            msg = format!("{msg}: {m}");
        }
        cur = s.source();
    }
    msg
}

fn looks_unreachable(e: &(dyn std::error::Error + 'static)) -> bool {
    let m = root_cause(e).to_lowercase();
    [
        "connect",
        "timed out",
        "timeout",
        "dns",
        "retry",
        "connection",
    ]
    .iter()
    .any(|w| m.contains(w))
}

impl Backend for ObjectStoreBackend {
    fn location(&self) -> &str {
        &self.location
    }

    fn get(&self, name: &str) -> BoxFut<'_, Bytes> {
        self.get_at_most(name, u64::MAX)
    }

    fn get_at_most(&self, name: &str, max: u64) -> BoxFut<'_, Bytes> {
        let name = name.to_string();
        Box::pin(async move {
            let r = self
                .inner
                .get(&self.path(&name))
                .await
                .map_err(|e| self.err("read", &name, e))?;
            // The body is a stream: dropped unread when the size is already too much.
            if r.meta.size > max {
                return Err(oversized(&name, r.meta.size));
            }
            r.bytes().await.map_err(|e| self.err("read", &name, e))
        })
    }

    fn get_range(&self, name: &str, range: Range<u64>) -> BoxFut<'_, Bytes> {
        let name = name.to_string();
        Box::pin(async move {
            let len = range.end - range.start;
            // On local disk, read into uninitialised capacity: object_store zero-fills
            // each buffer before reading into it (a memset of every byte a restore reads).
            // Any trouble goes the general way, which also words the errors.
            let local = self.local_root.as_ref().map(|root| {
                let path = root.join(format!("{}{name}", self.prefix));
                let r = range.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    use std::io::{Read, Seek};
                    let mut f = std::fs::File::open(path)?;
                    f.seek(std::io::SeekFrom::Start(r.start))?;
                    let mut buf = Vec::with_capacity((r.end - r.start) as usize);
                    f.take(r.end - r.start).read_to_end(&mut buf)?;
                    Ok(buf)
                })
            });
            let read = match local {
                Some(task) => task.await.expect("read task panicked").ok(),
                None => None,
            };
            let b = match read {
                Some(b) if b.len() as u64 == len => Bytes::from(b),
                _ => self
                    .inner
                    .get_range(&self.path(&name), range)
                    .await
                    .map_err(|e| self.err("read", &name, e))?,
            };
            if b.len() as u64 != len {
                return Err(Error::Store {
                    op: "read",
                    location: self.location.clone(),
                    name,
                    kind: StoreErrorKind::Other,
                    reason: format!("asked for {len} bytes, got {}", b.len()),
                });
            }
            Ok(b)
        })
    }

    fn put(&self, name: &str, data: Bytes, mode: WriteMode) -> BoxFut<'_, ()> {
        let name = name.to_string();
        Box::pin(async move {
            if let Some(root) = &self.local_root
                && mode == WriteMode::Overwrite
                && data.len() >= DIRECT_MIN
            {
                let path = root.join(format!("{}{name}", self.prefix));
                let d = data.clone();
                match tokio::task::spawn_blocking(move || write_direct(&path, &d))
                    .await
                    .expect("write task panicked")
                {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => {
                        return Err(Error::Store {
                            op: "write",
                            location: self.location.clone(),
                            name,
                            kind: match e.kind() {
                                std::io::ErrorKind::PermissionDenied => {
                                    StoreErrorKind::PermissionDenied
                                }
                                _ => StoreErrorKind::Other,
                            },
                            reason: e.to_string(),
                        });
                    }
                }
            }
            let opts = PutOptions {
                mode: match mode {
                    WriteMode::Overwrite => PutMode::Overwrite,
                    WriteMode::CreateNew => PutMode::Create,
                },
                ..Default::default()
            };
            self.inner
                .put_opts(&self.path(&name), data.into(), opts)
                .await
                .map(|_| ())
                .map_err(|e| self.err("write", &name, e))
        })
    }

    fn delete(&self, name: &str) -> BoxFut<'_, ()> {
        let name = name.to_string();
        Box::pin(async move {
            match self.inner.delete(&self.path(&name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err("delete", &name, e)),
            }
        })
    }

    fn list(&self, prefix: &str) -> BoxFut<'_, Vec<ObjectInfo>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            // object_store lists by path segments: list the directory part, filter the rest.
            let full = format!("{}{prefix}", self.prefix);
            let dir = match full.rfind('/') {
                Some(i) => &full[..i],
                None => "",
            };
            let dir_path = (!dir.is_empty()).then(|| OsPath::from(dir));
            let metas: Vec<_> = self
                .inner
                .list(dir_path.as_ref())
                .try_collect()
                .await
                .or_else(|e| match e {
                    // A prefix nobody wrote to yet is an empty listing.
                    object_store::Error::NotFound { .. } => Ok(Vec::new()),
                    e => Err(self.err("list", &prefix, e)),
                })?;
            let mut out: Vec<ObjectInfo> = metas
                .into_iter()
                .filter_map(|m| {
                    let loc = m.location.as_ref();
                    let name = loc.strip_prefix(self.prefix.as_str())?;
                    name.starts_with(prefix.as_str()).then(|| ObjectInfo {
                        name: name.to_string(),
                        size: m.size,
                        last_modified: m.last_modified,
                    })
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn head(&self, name: &str) -> BoxFut<'_, Option<ObjectInfo>> {
        let name = name.to_string();
        Box::pin(async move {
            match self.inner.head(&self.path(&name)).await {
                Ok(m) => Ok(Some(ObjectInfo {
                    name,
                    size: m.size,
                    last_modified: m.last_modified,
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err("read", &name, e)),
            }
        })
    }

    fn put_versioned(&self, name: &str, data: Bytes, cond: Condition) -> BoxFut<'_, Version> {
        let name = name.to_string();
        Box::pin(async move {
            if let Some(root) = &self.local_root {
                let path = root.join(format!("{}{name}", self.prefix));
                let c = cond.clone();
                let r = tokio::task::spawn_blocking(move || local_put_versioned(&path, &data, &c))
                    .await
                    .expect("write task panicked")
                    .map_err(|e| self.io_err("write", &name, e))?;
                return r.map_err(|kind| self.cond_err("write", &name, kind));
            }
            let mode = match &cond {
                Condition::Create => PutMode::Create,
                Condition::IfMatch(v) => PutMode::Update(object_store::UpdateVersion {
                    e_tag: v.e_tag.clone(),
                    version: v.version.clone(),
                }),
            };
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            match self
                .inner
                .put_opts(&self.path(&name), data.clone().into(), opts)
                .await
            {
                Ok(r) => Ok(Version {
                    e_tag: r.e_tag,
                    version: r.version,
                }),
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::NotFound { .. })
                    if matches!(cond, Condition::IfMatch(_)) =>
                {
                    Err(self.cond_err("write", &name, StoreErrorKind::Conflict))
                }
                // A store without conditional updates: compare, then write. Not atomic;
                // the callers' own rules (a session's heartbeat gap, a lease's expiry)
                // cover the short window.
                Err(object_store::Error::NotImplemented { .. })
                    if matches!(cond, Condition::Create) =>
                {
                    Err(Error::Invalid(format!(
                        "the store at {} cannot write an object only if it does not exist \
                         (no create-only puts): the maintenance lease cannot be taken safely \
                         there, so maintenance is refused. Use a store with conditional writes \
                         (S3, GCS, Azure Blob, a local directory).",
                        self.location
                    )))
                }
                Err(object_store::Error::NotImplemented { .. })
                    if matches!(cond, Condition::IfMatch(_)) =>
                {
                    let Condition::IfMatch(expected) = &cond else {
                        unreachable!("matched above")
                    };
                    let current = match self.get_versioned(&name).await {
                        Ok((_, v)) => Some(v),
                        Err(e) if e.is_not_found() => None,
                        Err(e) => return Err(e),
                    };
                    if current.as_ref() != Some(expected) {
                        return Err(self.cond_err("write", &name, StoreErrorKind::Conflict));
                    }
                    let r = self
                        .inner
                        .put(&self.path(&name), data.into())
                        .await
                        .map_err(|e| self.err("write", &name, e))?;
                    Ok(Version {
                        e_tag: r.e_tag,
                        version: r.version,
                    })
                }
                Err(e) => Err(self.err("write", &name, e)),
            }
        })
    }

    fn get_versioned(&self, name: &str) -> BoxFut<'_, (Bytes, Version)> {
        let name = name.to_string();
        Box::pin(async move {
            if let Some(root) = &self.local_root {
                let path = root.join(format!("{}{name}", self.prefix));
                let (b, v) = tokio::task::spawn_blocking(move || local_get_versioned(&path))
                    .await
                    .expect("read task panicked")
                    .map_err(|e| self.io_err("read", &name, e))?;
                return Ok((Bytes::from(b), v));
            }
            let r = self
                .inner
                .get(&self.path(&name))
                .await
                .map_err(|e| self.err("read", &name, e))?;
            let v = Version {
                e_tag: r.meta.e_tag.clone(),
                version: r.meta.version.clone(),
            };
            let b = r.bytes().await.map_err(|e| self.err("read", &name, e))?;
            Ok((b, v))
        })
    }

    fn delete_versioned(&self, name: &str, expected: &Version) -> BoxFut<'_, ()> {
        let name = name.to_string();
        let expected = expected.clone();
        Box::pin(async move {
            if let Some(root) = &self.local_root {
                let path = root.join(format!("{}{name}", self.prefix));
                let r =
                    tokio::task::spawn_blocking(move || local_delete_versioned(&path, &expected))
                        .await
                        .expect("delete task panicked")
                        .map_err(|e| self.io_err("delete", &name, e))?;
                return r.map_err(|kind| self.cond_err("delete", &name, kind));
            }
            // object_store has no conditional delete: compare, then delete.
            match self.inner.head(&self.path(&name)).await {
                Ok(m) if m.e_tag == expected.e_tag => self.delete(&name).await,
                Ok(_) => Err(self.cond_err("delete", &name, StoreErrorKind::Conflict)),
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err("delete", &name, e)),
            }
        })
    }
}

fn retry(opts: &StoreOptions) -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
        max_retries: 8,
        retry_timeout: opts.retry_timeout.unwrap_or(Duration::from_secs(60)),
    }
}

fn client_options() -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(300))
}

/// Open the store a repository location names:
/// a path or `file://` URL (local disk), `memory://` (tests; a fresh empty store each
/// time), `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.
pub fn open_store(location: &str, opts: &StoreOptions) -> Result<Store> {
    let invalid = |why: String| Error::Invalid(format!("repository location {location:?}: {why}"));
    let (scheme, rest) = match location.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("file", location),
    };
    let backend = match scheme {
        "file" => {
            let path = std::path::Path::new(rest);
            std::fs::create_dir_all(path).map_err(|e| Error::io("create directory", path, e))?;
            let abs = std::fs::canonicalize(path).map_err(|e| Error::io("resolve", path, e))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&abs)
                .map_err(|e| invalid(e.to_string()))?
                // Durability on power loss, not only on process death.
                .with_fsync(true);
            ObjectStoreBackend::new(Arc::new(fs), "", abs.display().to_string())
                .with_local_root(abs.clone())
        }
        "memory" => ObjectStoreBackend::new(
            Arc::new(object_store::memory::InMemory::new()),
            "",
            location,
        ),
        "s3" | "gs" | "az" | "azure" => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket name".into()));
            }
            let inner: Arc<dyn ObjectStore> = match scheme {
                "s3" => {
                    let mut b = object_store::aws::AmazonS3Builder::from_env()
                        .with_bucket_name(bucket)
                        .with_retry(retry(opts))
                        .with_client_options(client_options())
                        // Path-style requests: what S3-compatible servers expect.
                        .with_virtual_hosted_style_request(false);
                    let endpoint = opts
                        .s3_endpoint
                        .clone()
                        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
                    if let Some(ep) = endpoint {
                        b = b
                            .with_allow_http(ep.starts_with("http://"))
                            .with_endpoint(ep);
                    }
                    if let Some((id, secret)) = &opts.s3_credentials {
                        b = b.with_access_key_id(id).with_secret_access_key(secret);
                    }
                    let region = opts
                        .s3_region
                        .clone()
                        .or_else(|| std::env::var("AWS_REGION").ok())
                        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                        .unwrap_or_else(|| "us-east-1".into());
                    Arc::new(
                        b.with_region(region)
                            .build()
                            .map_err(|e| invalid(root_cause(&e)))?,
                    )
                }
                "gs" => Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_bucket_name(bucket)
                        .with_retry(retry(opts))
                        .with_client_options(client_options())
                        .build()
                        .map_err(|e| invalid(root_cause(&e)))?,
                ),
                _ => Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_container_name(bucket)
                        .with_retry(retry(opts))
                        .with_client_options(client_options())
                        .build()
                        .map_err(|e| invalid(root_cause(&e)))?,
                ),
            };
            ObjectStoreBackend::new(inner, prefix, location)
        }
        other => {
            return Err(invalid(format!(
                "unknown scheme {other:?}; use a path, file://, s3://, gs://, az:// or memory://"
            )));
        }
    };
    Ok(Arc::new(backend))
}
