//! A fault-injecting [`Backend`] for crash tests: the Nth write (put or delete) fails,
//! and from then on every operation fails, as if the process had died there.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;

use super::{Backend, BoxFut, Condition, ObjectInfo, Store, Version, WriteMode};
use crate::error::{Error, StoreErrorKind};

/// Where the fatal write stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// The write is not applied.
    Before,
    /// The write is applied, but the caller never hears back.
    After,
}

/// Wraps a store; see the module documentation.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Store,
    writes: AtomicUsize,
    fail_at: AtomicUsize,
    after: AtomicBool,
    dead: AtomicBool,
}

impl FaultyBackend {
    /// Wrap `inner`, with no fault armed.
    pub fn new(inner: Store) -> Self {
        Self {
            inner,
            writes: AtomicUsize::new(0),
            fail_at: AtomicUsize::new(usize::MAX),
            after: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        }
    }

    /// Fail the `n`th write from now (1-based) in the given mode.
    pub fn arm(&self, n: usize, mode: FaultMode) {
        self.after.store(mode == FaultMode::After, Ordering::SeqCst);
        self.fail_at
            .store(self.writes.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// Writes so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    /// Whether the simulated process died.
    pub fn dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn died(&self) -> Error {
        Error::Store {
            op: "write",
            location: self.inner.location().to_string(),
            name: String::new(),
            kind: StoreErrorKind::Other,
            reason: "injected fault: the process died here".into(),
        }
    }

    /// Count a write; `Some(apply)` when it is the fatal one.
    fn write_gate(&self) -> Result<Option<bool>, Error> {
        if self.dead() {
            return Err(self.died());
        }
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.fail_at.load(Ordering::SeqCst) {
            self.dead.store(true, Ordering::SeqCst);
            return Ok(Some(self.after.load(Ordering::SeqCst)));
        }
        Ok(None)
    }
}

impl Backend for FaultyBackend {
    fn location(&self) -> &str {
        self.inner.location()
    }

    fn get(&self, name: &str) -> BoxFut<'_, Bytes> {
        let name = name.to_string();
        Box::pin(async move {
            if self.dead() {
                return Err(self.died());
            }
            self.inner.get(&name).await
        })
    }

    fn get_at_most(&self, name: &str, max: u64) -> BoxFut<'_, Bytes> {
        let name = name.to_string();
        Box::pin(async move {
            if self.dead() {
                return Err(self.died());
            }
            self.inner.get_at_most(&name, max).await
        })
    }

    fn get_range(&self, name: &str, range: Range<u64>) -> BoxFut<'_, Bytes> {
        let name = name.to_string();
        Box::pin(async move {
            if self.dead() {
                return Err(self.died());
            }
            self.inner.get_range(&name, range).await
        })
    }

    fn put(&self, name: &str, data: Bytes, mode: WriteMode) -> BoxFut<'_, ()> {
        let name = name.to_string();
        Box::pin(async move {
            match self.write_gate()? {
                None => self.inner.put(&name, data, mode).await,
                Some(apply) => {
                    if apply {
                        self.inner.put(&name, data, mode).await?;
                    }
                    Err(self.died())
                }
            }
        })
    }

    fn delete(&self, name: &str) -> BoxFut<'_, ()> {
        let name = name.to_string();
        Box::pin(async move {
            match self.write_gate()? {
                None => self.inner.delete(&name).await,
                Some(apply) => {
                    if apply {
                        self.inner.delete(&name).await?;
                    }
                    Err(self.died())
                }
            }
        })
    }

    fn list(&self, prefix: &str) -> BoxFut<'_, Vec<ObjectInfo>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            if self.dead() {
                return Err(self.died());
            }
            self.inner.list(&prefix).await
        })
    }

    fn head(&self, name: &str) -> BoxFut<'_, Option<ObjectInfo>> {
        let name = name.to_string();
        Box::pin(async move {
            if self.dead() {
                return Err(self.died());
            }
            self.inner.head(&name).await
        })
    }

    fn put_versioned(&self, name: &str, data: Bytes, cond: Condition) -> BoxFut<'_, Version> {
        let name = name.to_string();
        Box::pin(async move {
            match self.write_gate()? {
                None => self.inner.put_versioned(&name, data, cond).await,
                Some(apply) => {
                    if apply {
                        self.inner.put_versioned(&name, data, cond).await?;
                    }
                    Err(self.died())
                }
            }
        })
    }

    fn get_versioned(&self, name: &str) -> BoxFut<'_, (Bytes, Version)> {
        let name = name.to_string();
        Box::pin(async move {
            if self.dead() {
                return Err(self.died());
            }
            self.inner.get_versioned(&name).await
        })
    }

    fn delete_versioned(&self, name: &str, expected: &Version) -> BoxFut<'_, ()> {
        let name = name.to_string();
        let expected = expected.clone();
        Box::pin(async move {
            match self.write_gate()? {
                None => self.inner.delete_versioned(&name, &expected).await,
                Some(apply) => {
                    if apply {
                        self.inner.delete_versioned(&name, &expected).await?;
                    }
                    Err(self.died())
                }
            }
        })
    }
}
