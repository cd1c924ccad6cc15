//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! package does it (what Velero's server gets from controller-runtime): one holder at a
//! time, taken only by an update against the resourceVersion that was read, renewed
//! every `retry`, given up when a renewal has not succeeded for `renew_deadline`.
//!
//! Expiry is judged by the candidate's own monotonic clock, from when it last saw the
//! record change (client-go's `observedTime`), never from the holder's `renewTime`: two
//! machines whose clocks disagree still agree on who leads. The holder gives up
//! (`renew_deadline`) before any other candidate may take over (`duration`), so the old
//! leader has stopped before the new one starts unless it stalls for longer than the gap,
//! which the engine's repository sessions and status writes by phase tolerate.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::{Error, Result};

/// Timings (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Debug)]
pub struct Timings {
    /// How long a lease lasts without renewal before others may take it.
    pub duration: Duration,
    /// How long the holder keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often candidates retry and the holder renews.
    pub retry: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What a lease record says, as far as the decision goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The holder's identity ("" when released).
    pub holder: String,
    /// The holder's last renewal, as written (compared for change, never as a time).
    pub renew_time: String,
    /// The lease's duration.
    pub duration: Duration,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            renew_time: spec.renew_time.map(|t| t.0.to_string()).unwrap_or_default(),
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64),
        }
    }
}

/// A candidate's view: the last record it saw and when (by its own clock) it changed.
#[derive(Clone, Debug, Default)]
pub struct Observer {
    last: Option<(Record, Instant)>,
}

/// What a candidate does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take the lease (absent, released, expired or already ours).
    Take,
    /// Another holds it: look again after this long.
    Wait(Duration),
}

impl Observer {
    /// Note the record read at `now`; the clock restarts only when the record changed.
    pub fn observe(&mut self, current: Option<&Record>, now: Instant) {
        match (current, &self.last) {
            (None, _) => self.last = None,
            (Some(r), Some((seen, _))) if r == seen => {}
            (Some(r), _) => self.last = Some((r.clone(), now)),
        }
    }

    /// The decision for candidate `me` at `now`.
    pub fn decide(&self, me: &str, now: Instant) -> Decision {
        match &self.last {
            None => Decision::Take,
            Some((r, _)) if r.holder.is_empty() || r.holder == me => Decision::Take,
            Some((r, at)) => {
                let expires = *at + r.duration;
                if now >= expires {
                    Decision::Take
                } else {
                    Decision::Wait(expires - now)
                }
            }
        }
    }
}

/// When this candidate last knew it held the lease, by its own monotonic clock: work is
/// started only while that is within the renewal deadline. A process stopped for longer
/// (SIGSTOP, a paused VM) wakes up with timers due at once, and may reach a Backup before
/// its renewal has found the lease taken: it must not start running that Backup again.
#[derive(Debug)]
pub struct Held {
    last: std::sync::Mutex<Option<Instant>>,
    deadline: Duration,
}

impl Held {
    fn new(deadline: Duration) -> Self {
        Self {
            last: std::sync::Mutex::new(None),
            deadline,
        }
    }

    fn renewed(&self, at: Instant) {
        *self.last.lock().expect("lock") = Some(at);
    }

    /// Whether the lease was held within the renewal deadline.
    pub fn fresh(&self) -> bool {
        self.last
            .lock()
            .expect("lock")
            .is_some_and(|t| t.elapsed() < self.deadline)
    }
}

/// One candidate for a lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    me: String,
    timings: Timings,
    observer: Observer,
    held: std::sync::Arc<Held>,
}

/// The outcome of one attempt to take or renew.
enum Attempt {
    Held,
    Other(Duration),
}

impl Elector {
    /// A candidate `me` for the lease `name` in namespace `ns`.
    pub fn new(client: Client, ns: &str, name: &str, me: &str, timings: Timings) -> Self {
        Self {
            api: Api::namespaced(client, ns),
            name: name.to_string(),
            me: me.to_string(),
            held: std::sync::Arc::new(Held::new(timings.renew_deadline)),
            timings,
            observer: Observer::default(),
        }
    }

    /// When this candidate last held the lease (shared with the work it leads).
    pub fn held(&self) -> std::sync::Arc<Held> {
        self.held.clone()
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.me
    }

    fn now_micro() -> MicroTime {
        MicroTime(k8s_openapi::jiff::Timestamp::now())
    }

    /// Read the lease, decide, and take or renew it when the decision says so. A conflict
    /// (someone else wrote first) counts as held by another.
    async fn attempt(&mut self) -> Result<Attempt> {
        let what = || format!("lease {}", self.name);
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| Error::kube(what(), e))?;
        let now = Instant::now();
        self.observer
            .observe(current.as_ref().map(Record::of).as_ref(), now);
        if let Decision::Wait(d) = self.observer.decide(&self.me, now) {
            return Ok(Attempt::Other(d.min(self.timings.retry)));
        }
        let stamp = Self::now_micro();
        let secs = self.timings.duration.as_secs().max(1) as i32;
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.me.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(stamp.clone()),
                        renew_time: Some(stamp),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // Replace carries the resourceVersion read: a concurrent writer makes it fail.
                let spec = lease.spec.get_or_insert_with(Default::default);
                if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
                    spec.holder_identity = Some(self.me.clone());
                    spec.acquire_time = Some(stamp.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(secs);
                spec.renew_time = Some(stamp);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(lease) => {
                self.observer
                    .observe(Some(&Record::of(&lease)), Instant::now());
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other(self.timings.retry)),
            Err(e) => Err(Error::kube(what(), e)),
        }
    }

    /// Wait until this candidate holds the lease. Errors of the API server are retried.
    pub async fn acquire(&mut self) {
        loop {
            let sent = Instant::now();
            match self.attempt().await {
                Ok(Attempt::Held) => {
                    self.held.renewed(sent);
                    return;
                }
                Ok(Attempt::Other(d)) => tokio::time::sleep(d).await,
                Err(e) => {
                    tracing::warn!("leader election: {e}");
                    tokio::time::sleep(self.timings.retry).await;
                }
            }
        }
    }

    /// Keep the lease renewed; returns when leadership is lost (another took it, or no
    /// renewal succeeded within the deadline), after which the holder must stop working.
    pub async fn hold(&mut self) -> String {
        loop {
            tokio::time::sleep(self.timings.retry).await;
            // The renewal counts from when it was sent: the record may have been written
            // any time after that, so others' clocks started no later.
            let sent = Instant::now();
            let attempt = tokio::time::timeout(self.timings.renew_deadline, self.attempt()).await;
            match attempt {
                Ok(Ok(Attempt::Held)) => self.held.renewed(sent),
                Ok(Ok(Attempt::Other(_))) => {
                    return format!("lease {} is held by another replica", self.name);
                }
                Ok(Err(e)) => tracing::warn!("leader election: renewing: {e}"),
                Err(_) => tracing::warn!("leader election: renewing timed out"),
            }
            // The same judgement as the work's (`Held::fresh`), from the last renewal
            // (the acquisition, first).
            if !self.held.fresh() {
                return format!(
                    "lease {} not renewed for {:?}",
                    self.name, self.timings.renew_deadline
                );
            }
        }
    }

    /// Give the lease up (on shutdown), so that another replica takes over at once.
    pub async fn release(&mut self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.me.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = Some(Self::now_micro());
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_starts_only_while_the_lease_was_renewed_within_the_deadline() {
        let h = Held::new(Duration::from_secs(3600));
        assert!(!h.fresh(), "never held");
        h.renewed(Instant::now());
        assert!(h.fresh());
        let stale = Held::new(Duration::ZERO);
        stale.renewed(Instant::now());
        assert!(!stale.fresh(), "renewed longer ago than the deadline");
    }

    fn rec(holder: &str, renew: &str) -> Record {
        Record {
            holder: holder.into(),
            renew_time: renew.into(),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn an_absent_released_or_own_lease_is_taken() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        o.observe(None, t0);
        assert_eq!(o.decide("me", t0), Decision::Take);
        o.observe(Some(&rec("", "1")), t0);
        assert_eq!(o.decide("me", t0), Decision::Take);
        o.observe(Some(&rec("me", "2")), t0);
        assert_eq!(o.decide("me", t0), Decision::Take);
    }

    #[test]
    fn another_holder_is_waited_out_by_the_local_clock() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        o.observe(Some(&rec("other", "2026-01-01T00:00:00Z")), t0);
        assert_eq!(
            o.decide("me", t0 + Duration::from_secs(5)),
            Decision::Wait(Duration::from_secs(10))
        );
        // The same record seen again does not restart the clock...
        o.observe(
            Some(&rec("other", "2026-01-01T00:00:00Z")),
            t0 + Duration::from_secs(14),
        );
        assert_eq!(o.decide("me", t0 + Duration::from_secs(15)), Decision::Take);
        // ...a renewal does, whatever time the holder's clock wrote (here: far in the past).
        o.observe(
            Some(&rec("other", "1999-01-01T00:00:00Z")),
            t0 + Duration::from_secs(16),
        );
        assert_eq!(
            o.decide("me", t0 + Duration::from_secs(20)),
            Decision::Wait(Duration::from_secs(11))
        );
    }

    #[test]
    fn the_holder_gives_up_before_others_may_take_over() {
        let t = Timings::default();
        assert!(t.renew_deadline < t.duration && t.retry < t.renew_deadline);
    }
}
