//! Writer sessions (FORMAT.md section 14.1): announce a writer, prove it alive, and stop it
//! for good once its heartbeat lapsed long enough for maintenance to presume it dead.
//!
//! What counts is the *gap* between successful heartbeats, measured on the clock that keeps
//! running through a suspend or a SIGSTOP (`CLOCK_BOOTTIME`), not the age of the last one:
//! a writer that stalled for two hours and then managed one more heartbeat is still a writer
//! whose packs maintenance may have reclaimed in between (restic issue 3569). Such a session
//! is *poisoned*: every later check fails, and the writer stores nothing more. Heartbeats
//! are conditional writes on the version the writer last wrote, so a session object that
//! maintenance deleted never comes back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_format::{Session, SessionId, SessionKind, Timestamp, layout};
use bytes::Bytes;

use crate::clock::CLOCK_SKEW;
use crate::error::{Error, Result};
use crate::repo::{Identity, Repository};
use crate::store::{Condition, Version};

/// How often a session rewrites its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Maintenance presumes a session dead after this long without a heartbeat (by the
/// store's clock).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// A writer whose successful heartbeats were further apart than this (the timeout less the
/// clock-skew allowance) is poisoned: maintenance may already count it dead.
pub const SESSION_LAPSE: Duration = SESSION_TIMEOUT.saturating_sub(CLOCK_SKEW);

/// The liveness of a session, shared by everything that writes under it.
#[derive(Debug)]
pub struct SessionLiveness {
    repo: Repository,
    name: String,
    state: Mutex<Beat>,
    beat_lock: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Beat {
    session: Session,
    version: Version,
    /// Time since boot when the last successful heartbeat was begun.
    last_ok: Duration,
    poisoned: Option<String>,
}

impl SessionLiveness {
    /// Fail (for good) if the session lapsed: it is poisoned, or its last successful
    /// heartbeat began longer ago than [`SESSION_LAPSE`].
    pub fn check(&self) -> Result<()> {
        let mut st = self.state.lock().expect("lock");
        if let Some(reason) = &st.poisoned {
            return Err(Error::SessionLapsed {
                reason: reason.clone(),
            });
        }
        let gap = self.repo.clock.since_boot().saturating_sub(st.last_ok);
        if gap > SESSION_LAPSE {
            let reason = format!(
                "it could not prove itself alive for {} (the process was suspended or stopped, \
                 or the store was unreachable); sessions lapse after {}",
                human(gap),
                human(SESSION_LAPSE)
            );
            st.poisoned = Some(reason.clone());
            tracing::error!("session {}: {reason}", st.session.id);
            return Err(Error::SessionLapsed { reason });
        }
        Ok(())
    }

    /// Rewrite the heartbeat now, conditionally on the object being the one this writer
    /// wrote last.
    pub async fn heartbeat(&self) -> Result<()> {
        let _one = self.beat_lock.lock().await;
        // The gap is measured from when a heartbeat *began*: one that took an hour to land
        // does not vouch for that hour.
        let began = self.repo.clock.since_boot();
        self.check()?;
        let (bytes, version) = {
            let mut st = self.state.lock().expect("lock");
            st.session.heartbeat = self.repo.clock.now();
            (st.session.encode(&self.repo.keys)?, st.version.clone())
        };
        match self
            .repo
            .store
            .put_versioned(&self.name, Bytes::from(bytes), Condition::IfMatch(version))
            .await
        {
            Ok(v) => {
                // A heartbeat that landed after the lapse does not save the session: the
                // gap runs from the previous success to now, when this one is known to
                // have landed (maintenance may have judged the session meanwhile).
                self.check()?;
                let mut st = self.state.lock().expect("lock");
                st.version = v;
                st.last_ok = began;
                Ok(())
            }
            Err(e) if e.is_conflict() => {
                let reason = "its session object was removed or replaced by another process \
                              (maintenance presumed this writer dead)"
                    .to_string();
                self.state.lock().expect("lock").poisoned = Some(reason.clone());
                Err(Error::SessionLapsed { reason })
            }
            Err(e) => Err(e),
        }
    }

    /// The session's ID.
    pub fn id(&self) -> SessionId {
        self.state.lock().expect("lock").session.id
    }
}

/// A live session; ends (deletes its object) with [`SessionGuard::end`].
#[derive(Debug)]
pub struct SessionGuard {
    live: Arc<SessionLiveness>,
    task: tokio::task::JoinHandle<()>,
}

impl SessionGuard {
    /// Write the session object, check this machine's clock against the store's, and start
    /// the heartbeat.
    pub async fn start(repo: &Repository, kind: SessionKind, who: &Identity) -> Result<Self> {
        let before = repo.clock.now();
        let boot = repo.clock.since_boot();
        let session = Session {
            id: SessionId::random()?,
            kind,
            host: who.host.clone(),
            pid: std::process::id(),
            started: before,
            heartbeat: before,
        };
        let name = layout::session(&session.id);
        let version = repo
            .store
            .put_versioned(
                &name,
                Bytes::from(session.encode(&repo.keys)?),
                Condition::Create,
            )
            .await?;
        if let Err(e) = check_clock(repo, &name, before).await {
            let _ = repo.store.delete_versioned(&name, &version).await;
            return Err(e);
        }
        let live = Arc::new(SessionLiveness {
            repo: repo.clone(),
            name,
            state: Mutex::new(Beat {
                session,
                version,
                last_ok: boot,
                poisoned: None,
            }),
            beat_lock: tokio::sync::Mutex::new(()),
        });
        let l = live.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
                match l.heartbeat().await {
                    Ok(()) => {}
                    // Poisoned: nothing more to prove.
                    Err(e @ Error::SessionLapsed { .. }) => {
                        tracing::error!("{e}");
                        break;
                    }
                    Err(e) => tracing::warn!("session heartbeat failed (will retry): {e}"),
                }
            }
        });
        Ok(Self { live, task })
    }

    /// The session's ID.
    pub fn id(&self) -> SessionId {
        self.live.id()
    }

    /// What writers under this session check before they store anything.
    pub fn liveness(&self) -> Arc<SessionLiveness> {
        self.live.clone()
    }

    /// Fail if the session lapsed (see [`SessionLiveness::check`]).
    pub fn check_fresh(&self) -> Result<()> {
        self.live.check()
    }

    /// Rewrite the heartbeat now (the background task does it every
    /// [`HEARTBEAT_INTERVAL`]).
    pub async fn heartbeat(&self) -> Result<()> {
        self.live.heartbeat().await
    }

    /// End the session: stop the heartbeat, delete the object if it is still ours.
    pub async fn end(self) -> Result<()> {
        self.task.abort();
        // A heartbeat in flight lands first: the delete must name the version it wrote.
        let _one = self.live.beat_lock.lock().await;
        let version = self.live.state.lock().expect("lock").version.clone();
        match self
            .live
            .repo
            .store
            .delete_versioned(&self.live.name, &version)
            .await
        {
            Err(e) if e.is_conflict() => Ok(()),
            r => r,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Compare this machine's clock with the store's, using the object just written: every
/// time rule of GC assumes the two agree within [`CLOCK_SKEW`], so a machine whose clock is
/// off refuses to write or maintain rather than trust it.
async fn check_clock(repo: &Repository, name: &str, before: Timestamp) -> Result<()> {
    let Some(info) = repo.store.head(name).await? else {
        return Err(Error::Invalid(format!(
            "the session object {name} vanished right after it was written to {}",
            repo.store.location()
        )));
    };
    let after = repo.clock.now();
    let store_ms = info.last_modified.timestamp_millis() as i128;
    let skew_ms = CLOCK_SKEW.as_millis() as i128;
    let (lo, hi) = (before.as_nanos() / 1_000_000, after.as_nanos() / 1_000_000);
    // Store times may be truncated to the second: one second of slack below.
    let offset_ms = if store_ms + 1000 < lo - skew_ms {
        lo - store_ms
    } else if store_ms > hi + skew_ms {
        hi - store_ms
    } else {
        return Ok(());
    };
    let secs = (offset_ms / 1000) as i64;
    Err(Error::ClockSkew {
        location: repo.store.location().to_string(),
        offset: if secs >= 0 {
            format!("{secs} s ahead of")
        } else {
            format!("{} s behind", -secs)
        },
        allowed_secs: CLOCK_SKEW.as_secs() as i64,
    })
}

/// "2h 5m", "55m", "40s".
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, _) => format!("{m}m"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}
