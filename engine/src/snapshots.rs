//! Listing, finding, writing and filtering snapshots.

use arca_format::{Snapshot, SnapshotId, layout};
use bytes::Bytes;
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::store::WriteMode;

/// Which snapshots a command is about: every given field must match.
#[derive(Clone, Debug, Default)]
pub struct SnapshotFilter {
    /// Any of these hosts (empty: any host).
    pub hosts: Vec<String>,
    /// Snapshots whose paths include all of these.
    pub paths: Vec<Vec<u8>>,
    /// Snapshots that carry all of these tags.
    pub tags: Vec<String>,
}

impl SnapshotFilter {
    /// Whether a snapshot passes.
    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && self.paths.iter().all(|p| s.paths.contains(p))
            && self.tags.iter().all(|t| s.tags.contains(t))
    }
}

/// One manifest as read: absent (forgotten meanwhile), or decoded or not.
type Loaded = Option<(SnapshotId, std::result::Result<Snapshot, Error>)>;

/// Readable snapshots, and the damaged ones apart.
pub type SnapshotList = (Vec<(SnapshotId, Snapshot)>, Vec<(SnapshotId, Error)>);

impl Repository {
    /// Every snapshot, oldest first. Fails if any manifest is damaged: what must know
    /// every snapshot (garbage collection) uses this.
    pub async fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let (ok, damaged) = self.readable_snapshots().await?;
        match damaged.into_iter().next() {
            None => Ok(ok),
            Some((_, e)) => Err(e),
        }
    }

    /// Every readable snapshot, oldest first, and the damaged manifests apart (listing,
    /// `latest`, forget and backup go on without them).
    pub async fn readable_snapshots(&self) -> Result<SnapshotList> {
        let names = self.store.list(layout::SNAPSHOTS).await?;
        let results: Vec<Result<Loaded>> = futures::stream::iter(
            names
                .into_iter()
                .filter(|o| !crate::store::foreign_by_size(o))
                .filter_map(|o| {
                    layout::parse_id::<SnapshotId>(layout::SNAPSHOTS, &o.name)
                        .map(|id| (id, o.size))
                }),
        )
        .map(|(id, size)| async move {
            let name = layout::snapshot(&id);
            match crate::store::get_bounded(&self.store, &name, Some(size)).await {
                // Too large to be a snapshot: reported like a damaged one.
                Err(e @ Error::Format(_)) => Ok(Some((id, Err(e)))),
                Ok(bytes) => Ok(Some((
                    id,
                    crate::store::check_named(&name, &id.0, &bytes).and_then(|()| {
                        Snapshot::decode(&self.keys, &bytes).map_err(|e| match e {
                            arca_format::Error::Corrupt { what, reason } => {
                                Error::Format(arca_format::Error::Corrupt {
                                    what,
                                    reason: format!("snapshots/{}: {reason}", id.short()),
                                })
                            }
                            e => e.into(),
                        })
                    }),
                ))),
                // Forgotten between listing and reading.
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
        let (mut ok, mut damaged) = (Vec::new(), Vec::new());
        for r in results {
            match r? {
                Some((id, Ok(s))) => ok.push((id, s)),
                Some((id, Err(e))) => {
                    tracing::warn!("snapshot {} is unreadable: {e}", id.short());
                    damaged.push((id, e));
                }
                None => {}
            }
        }
        ok.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((ok, damaged))
    }

    /// Read one snapshot.
    pub async fn snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let name = layout::snapshot(id);
        let bytes = crate::store::get_bounded(&self.store, &name, None)
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    Error::NotFound(format!("no snapshot {}", id.short()))
                } else {
                    e
                }
            })?;
        crate::store::check_named(&name, &id.0, &bytes)?;
        Ok(Snapshot::decode(&self.keys, &bytes)?)
    }

    /// Find a snapshot by full ID, unique ID prefix, or `latest` (the newest that passes
    /// the filter).
    pub async fn find_snapshot(
        &self,
        spec: &str,
        filter: &SnapshotFilter,
    ) -> Result<(SnapshotId, Snapshot)> {
        if spec == "latest" {
            return self
                .readable_snapshots()
                .await?
                .0
                .into_iter()
                .rev()
                .find(|(_, s)| filter.matches(s))
                .ok_or_else(|| Error::NotFound("no snapshot matches (for `latest`)".into()));
        }
        let prefix = spec.to_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!(
                "{spec:?} is not a snapshot ID, ID prefix or `latest`"
            )));
        }
        let matching: Vec<SnapshotId> = self
            .store
            .list(&format!("{}{prefix}", layout::SNAPSHOTS))
            .await?
            .into_iter()
            .filter_map(|o| layout::parse_id(layout::SNAPSHOTS, &o.name))
            .collect();
        match matching.as_slice() {
            [id] => Ok((*id, self.snapshot(id).await?)),
            [] => Err(Error::NotFound(format!("no snapshot {spec:?}"))),
            many => Err(Error::NotFound(format!(
                "{} snapshots start with {spec:?}; give more digits",
                many.len()
            ))),
        }
    }

    /// Store a snapshot manifest.
    pub async fn write_snapshot(&self, s: &Snapshot) -> Result<SnapshotId> {
        let (id, bytes) = s.encode(&self.keys)?;
        self.store
            .put(
                &layout::snapshot(&id),
                Bytes::from(bytes),
                WriteMode::CreateNew,
            )
            .await?;
        Ok(id)
    }

    /// Delete a snapshot manifest (its data is reclaimed by maintenance).
    pub async fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.store.delete(&layout::snapshot(id)).await
    }
}
