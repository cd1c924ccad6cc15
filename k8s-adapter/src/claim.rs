//! A run's claim on the Backup or Restore it carries out: every write of the run is
//! conditional, so that a run that has been superseded writes nothing.
//!
//! Two runs of one object can overlap: a leader that stalled past its Lease (a paused VM,
//! a long GC pause, SIGSTOP) wakes up while the new leader runs the same backup again, or
//! a Backup is deleted and made again under the same name while the old run still goes.
//! Velero's controllers write status with plain patches and the later writer wins: a
//! stalled replica can mark a finished backup Failed. Here a run first writes its token
//! into the annotation [`RUN_ANNOTATION`] (conditional on the resourceVersion it read),
//! and each later write carries the resourceVersion of the run's last write. A write
//! that meets a conflict reads the object again: when it is still the same object (UID)
//! under the same token, the change was someone else's (a user's `spec.cancel`, a label)
//! and the write is tried again; otherwise the run has been superseded and stops with
//! [`Error::Superseded`], having written nothing.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// The annotation naming the run that owns a Backup's or Restore's status.
pub const RUN_ANNOTATION: &str = "arca.dev/run";

/// Attempts at a write whose conflicts are all someone else's changes of other fields.
const TRIES: usize = 16;

/// Who may write, as judged from a fresh read after a conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Still this run's: the conflict was another field's change; write again.
    Us,
    /// The object is gone.
    Gone,
    /// Another object of the same name (deleted and made again).
    Replaced,
    /// Another run took it over (its token).
    Taken(String),
}

/// The decision after a conflict, from the fresh object's UID and run token. Pure.
pub fn holder(fresh: Option<(&str, Option<&str>)>, uid: &str, token: &str) -> Holder {
    match fresh {
        None => Holder::Gone,
        Some((u, _)) if u != uid => Holder::Replaced,
        Some((_, Some(t))) if t == token => Holder::Us,
        Some((_, t)) => Holder::Taken(t.unwrap_or_default().to_string()),
    }
}

/// A fresh run token: the process's host (a pod's name in a cluster) and random bits.
fn new_token() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "arca".into());
    let mut raw = [0u8; 6];
    // A clash needs two runs of one object at once and equal draws: 2^-48.
    getrandom::fill(&mut raw).expect("the OS has a random source");
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}/{}/{hex}", std::process::id())
}

fn uid_and_token<K: Resource>(o: &K) -> (String, Option<String>) {
    let m = o.meta();
    (
        m.uid.clone().unwrap_or_default(),
        m.annotations
            .as_ref()
            .and_then(|a| a.get(RUN_ANNOTATION))
            .cloned(),
    )
}

/// A run's claim (see the module's documentation).
pub struct RunClaim<K> {
    api: Api<K>,
    name: String,
    /// "backup ns/name", for messages.
    what: String,
    token: String,
    /// The resourceVersion of the claim's last write; writes are serialised through it.
    rv: tokio::sync::Mutex<String>,
    /// The object as the claim's write returned it.
    claimed: K,
}

impl<K> RunClaim<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    /// Claim the object `read` (just read, and found to be run) for a new run. A conflict
    /// reads it again, and it is claimed only while `may_run` says it is still to be run.
    /// From here on, writes of runs that claimed it before fail.
    pub async fn take(
        api: Api<K>,
        read: K,
        what: &str,
        may_run: impl Fn(&K) -> bool,
    ) -> Result<Self> {
        let what = what.to_string();
        let name = read.meta().name.clone().unwrap_or_default();
        let mut current = Some(read);
        for _ in 0..TRIES {
            let o = match current.take() {
                Some(o) => o,
                None => api
                    .get_opt(&name)
                    .await
                    .map_err(|e| Error::kube(format!("read {what}"), e))?
                    .ok_or_else(|| Error::NotFound(format!("{what} does not exist")))?,
            };
            if !may_run(&o) {
                return Err(Error::Superseded(format!(
                    "{what}: no longer to be run (changed since it was picked up)"
                )));
            }
            let token = new_token();
            let patch = serde_json::json!({ "metadata": {
                "resourceVersion": o.meta().resource_version,
                "annotations": { RUN_ANNOTATION: token },
            }});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(o) => {
                    let rv = o.meta().resource_version.clone().unwrap_or_default();
                    return Ok(Self {
                        api,
                        name,
                        what,
                        token,
                        rv: tokio::sync::Mutex::new(rv),
                        claimed: o,
                    });
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(Error::NotFound(format!("{what} does not exist")));
                }
                Err(e) => return Err(Error::kube(format!("claim {what} for a run"), e)),
            }
        }
        // Not Superseded: a retry follows (the error policy's), the object stays to run.
        Err(Error::Invalid(format!(
            "{what}: changed {TRIES} times while being claimed; trying again soon"
        )))
    }

    /// This run's token (the annotation's value).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The object as this run's claim left it: where the run starts from.
    pub fn claimed(&self) -> &K {
        &self.claimed
    }

    /// The object as it is now, if the run still holds it.
    pub async fn read(&self) -> Result<K> {
        let fresh = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| Error::kube(format!("read {}", self.what), e))?;
        self.still_ours(fresh)
    }

    /// Merge `status` into the object's status, if the run still holds it.
    pub async fn status(&self, status: &impl Serialize) -> Result<K> {
        let body = serde_json::json!({ "status": status });
        self.write(&body, true).await
    }

    /// Merge `body` into the object itself (metadata, spec), if the run still holds it.
    pub async fn patch(&self, body: &serde_json::Value) -> Result<K> {
        self.write(body, false).await
    }

    /// `fresh` if it is still the claimed object under this run's token.
    fn still_ours(&self, fresh: Option<K>) -> Result<K> {
        let seen = fresh.as_ref().map(uid_and_token);
        let seen = seen.as_ref().map(|(u, t)| (u.as_str(), t.as_deref()));
        let uid = self.claimed.meta().uid.as_deref().unwrap_or_default();
        let why = match holder(seen, uid, &self.token) {
            Holder::Us => return Ok(fresh.expect("present when ours")),
            Holder::Gone => format!("{} was deleted while this run went on", self.what),
            Holder::Replaced => format!(
                "{} was deleted and made again while this run went on: the new one is not this run's",
                self.what
            ),
            Holder::Taken(t) => format!(
                "{}: another run ({t}) took it over; this one ({}) stops and writes nothing",
                self.what, self.token
            ),
        };
        Err(Error::Superseded(why))
    }

    async fn write(&self, body: &serde_json::Value, status: bool) -> Result<K> {
        let mut rv = self.rv.lock().await;
        for _ in 0..TRIES {
            let mut b = body.clone();
            b["metadata"]["resourceVersion"] = serde_json::Value::String(rv.clone());
            let pp = PatchParams::default();
            let r = if status {
                self.api
                    .patch_status(&self.name, &pp, &Patch::Merge(&b))
                    .await
            } else {
                self.api.patch(&self.name, &pp, &Patch::Merge(&b)).await
            };
            match r {
                Ok(o) => {
                    *rv = o.meta().resource_version.clone().unwrap_or_default();
                    return Ok(o);
                }
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                    // Someone else's change, or the end of this run's claim.
                    let o = self.read().await?;
                    *rv = o.meta().resource_version.clone().unwrap_or_default();
                }
                Err(e) => {
                    return Err(Error::kube(format!("update {}", self.what), e));
                }
            }
        }
        Err(Error::Invalid(format!(
            "update {}: it kept changing ({TRIES} conflicts in a row); try again",
            self.what
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_is_retried_only_while_the_same_object_names_this_run() {
        assert_eq!(holder(Some(("u1", Some("t1"))), "u1", "t1"), Holder::Us);
        assert_eq!(holder(None, "u1", "t1"), Holder::Gone);
        assert_eq!(
            holder(Some(("u2", Some("t1"))), "u1", "t1"),
            Holder::Replaced
        );
        assert_eq!(
            holder(Some(("u1", Some("t2"))), "u1", "t1"),
            Holder::Taken("t2".into())
        );
        // The annotation removed (a restore of the resource, a user's edit): not ours.
        assert_eq!(
            holder(Some(("u1", None)), "u1", "t1"),
            Holder::Taken(String::new())
        );
    }

    #[test]
    fn tokens_differ_between_runs() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.contains(&std::process::id().to_string()), "{a}");
    }
}
