//! Writer sessions (FORMAT.md section 14): announce a writer, prove it alive, and refuse to
//! commit a snapshot if the heartbeat lapsed long enough for maintenance to presume it dead.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arca_format::{Session, SessionId, SessionKind, Timestamp, layout};
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::repo::{Identity, Repository};
use crate::store::WriteMode;

/// How often a session rewrites its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// A writer whose last heartbeat is older than this must not commit a snapshot.
pub const COMMIT_DEADLINE: Duration = Duration::from_secs(50 * 60);
/// Maintenance presumes a session dead after this long without a heartbeat.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// A live session; ends (deletes its object) with [`SessionGuard::end`].
#[derive(Debug)]
pub struct SessionGuard {
    repo: Repository,
    session: Session,
    last_beat: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl SessionGuard {
    /// Write the session object and start the heartbeat.
    pub async fn start(repo: &Repository, kind: SessionKind, who: &Identity) -> Result<Self> {
        let now = Timestamp::now();
        let session = Session {
            id: SessionId::random()?,
            kind,
            host: who.host.clone(),
            pid: std::process::id(),
            started: now,
            heartbeat: now,
        };
        write(repo, &session).await?;
        let last_beat = Arc::new(AtomicI64::new(now.seconds));
        let (r, mut s, lb) = (repo.clone(), session.clone(), last_beat.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
                s.heartbeat = Timestamp::now();
                match write(&r, &s).await {
                    Ok(()) => lb.store(s.heartbeat.seconds, Ordering::SeqCst),
                    Err(e) => tracing::warn!("session heartbeat failed: {e}"),
                }
            }
        });
        Ok(Self {
            repo: repo.clone(),
            session,
            last_beat,
            task,
        })
    }

    /// The session's ID.
    pub fn id(&self) -> SessionId {
        self.session.id
    }

    /// Fail if the heartbeat lapsed so long that maintenance may have presumed this writer
    /// dead and deleted what it relies on.
    pub fn check_fresh(&self) -> Result<()> {
        let age = Timestamp::now().seconds - self.last_beat.load(Ordering::SeqCst);
        if age > COMMIT_DEADLINE.as_secs() as i64 {
            return Err(Error::Invalid(format!(
                "this writer could not refresh its session for {age} s (the store was unreachable \
                 or the process was suspended); refusing to commit a snapshot that maintenance \
                 may have pulled data from under. Run the backup again."
            )));
        }
        Ok(())
    }

    /// End the session: stop the heartbeat, delete the object.
    pub async fn end(self) -> Result<()> {
        self.task.abort();
        self.repo
            .store
            .delete(&layout::session(&self.session.id))
            .await
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn write(repo: &Repository, s: &Session) -> Result<()> {
    let bytes = s.encode(&repo.keys)?;
    repo.store
        .put(
            &layout::session(&s.id),
            Bytes::from(bytes),
            WriteMode::Overwrite,
        )
        .await
}
