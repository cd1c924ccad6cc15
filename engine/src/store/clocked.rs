//! A [`Backend`] whose object times come from a [`Clock`]: for tests that move time (a
//! writer stalled for hours, a maintainer days later) while the store must agree with the
//! clock the way a real store's clock agrees with a real machine's.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{Backend, BoxFut, Condition, ObjectInfo, Store, Version, WriteMode};
use crate::clock::Clock;

/// Wraps a store; every write is stamped with the clock's time at that moment.
#[derive(Debug)]
pub struct ClockedBackend {
    inner: Store,
    clock: Arc<dyn Clock>,
    written: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl ClockedBackend {
    /// Wrap `inner`, reading time from `clock`.
    pub fn new(inner: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner,
            clock,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn stamp(&self, name: &str) {
        let t = self.clock.now();
        let at = DateTime::from_timestamp(t.seconds, t.nanos).unwrap_or_default();
        self.written
            .lock()
            .expect("lock")
            .insert(name.to_string(), at);
    }

    fn restamp(&self, mut o: ObjectInfo) -> ObjectInfo {
        if let Some(t) = self.written.lock().expect("lock").get(&o.name) {
            o.last_modified = *t;
        }
        o
    }
}

impl Backend for ClockedBackend {
    fn location(&self) -> &str {
        self.inner.location()
    }

    fn get(&self, name: &str) -> BoxFut<'_, Bytes> {
        self.inner.get(name)
    }

    fn get_at_most(&self, name: &str, max: u64) -> BoxFut<'_, Bytes> {
        self.inner.get_at_most(name, max)
    }

    fn get_range(&self, name: &str, range: Range<u64>) -> BoxFut<'_, Bytes> {
        self.inner.get_range(name, range)
    }

    fn put(&self, name: &str, data: Bytes, mode: WriteMode) -> BoxFut<'_, ()> {
        let name = name.to_string();
        Box::pin(async move {
            self.inner.put(&name, data, mode).await?;
            self.stamp(&name);
            Ok(())
        })
    }

    fn delete(&self, name: &str) -> BoxFut<'_, ()> {
        let name = name.to_string();
        Box::pin(async move {
            self.inner.delete(&name).await?;
            self.written.lock().expect("lock").remove(&name);
            Ok(())
        })
    }

    fn list(&self, prefix: &str) -> BoxFut<'_, Vec<ObjectInfo>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let v = self.inner.list(&prefix).await?;
            Ok(v.into_iter().map(|o| self.restamp(o)).collect())
        })
    }

    fn head(&self, name: &str) -> BoxFut<'_, Option<ObjectInfo>> {
        let name = name.to_string();
        Box::pin(async move { Ok(self.inner.head(&name).await?.map(|o| self.restamp(o))) })
    }

    fn put_versioned(&self, name: &str, data: Bytes, cond: Condition) -> BoxFut<'_, Version> {
        let name = name.to_string();
        Box::pin(async move {
            let v = self.inner.put_versioned(&name, data, cond).await?;
            self.stamp(&name);
            Ok(v)
        })
    }

    fn get_versioned(&self, name: &str) -> BoxFut<'_, (Bytes, Version)> {
        self.inner.get_versioned(name)
    }

    fn delete_versioned(&self, name: &str, expected: &Version) -> BoxFut<'_, ()> {
        let name = name.to_string();
        let expected = expected.clone();
        Box::pin(async move {
            self.inner.delete_versioned(&name, &expected).await?;
            if self.inner.head(&name).await?.is_none() {
                self.written.lock().expect("lock").remove(&name);
            }
            Ok(())
        })
    }
}
