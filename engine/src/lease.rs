//! The maintenance lease (FORMAT.md 14.4): one maintainer at a time, and a maintainer that
//! lost the lease stops before its next destructive step.
//!
//! A lease has a *term*: `maintenance/lease-<term>`. Taking one is a create-only put of the
//! next term's object, so of two maintainers that found the same lapsed lease only one can
//! take it. Only its holder ever writes a term's object (renewals and the release are
//! conditional on the version it wrote last), and a term is given up by expiry alone: no
//! guess about whether a process on some host is still running, which containers with their
//! own PID namespaces get wrong. The holder also keeps its own deadline on the boot clock,
//! so a maintainer that was suspended past its lease notices before it deletes anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_format::{Lease, SessionId, Timestamp, layout};
use bytes::Bytes;

use crate::clock::CLOCK_SKEW;
use crate::error::{Error, Result, StoreErrorKind};
use crate::repo::{Identity, Repository};
use crate::session::human;
use crate::store::{Condition, Version};

/// Run `f` under a session of `kind` and the maintenance lease, then give both up
/// (whatever `f` returned): maintenance and repair.
pub(crate) async fn under_lease<T>(
    repo: &Repository,
    kind: arca_format::SessionKind,
    who: &Identity,
    force: bool,
    f: impl AsyncFnOnce(&crate::session::SessionGuard, &LeaseGuard) -> Result<T>,
) -> Result<T> {
    let session = crate::session::SessionGuard::start(repo, kind, who).await?;
    let lease = LeaseGuard::take(repo, session.id(), who, force).await?;
    let result = f(&session, &lease).await;
    let released = lease.release().await;
    let ended = session.end().await;
    let out = result?;
    released?;
    ended?;
    Ok(out)
}

/// How long a lease lasts unless renewed.
pub(crate) const LEASE_LENGTH: Duration = Duration::from_secs(30 * 60);

/// A held lease, renewed in the background.
#[derive(Debug)]
pub(crate) struct LeaseGuard {
    repo: Repository,
    term: u64,
    state: Arc<Mutex<Held>>,
    renew: tokio::task::JoinHandle<()>,
    /// Held while a renewal is in flight, so that the release names the version it wrote.
    renewing: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct Held {
    lease: Lease,
    version: Version,
    /// Boot-clock time after which this holder no longer trusts that it holds the lease:
    /// when its last renewal began, plus the lease's length, less the skew allowance.
    valid_until: Duration,
    lost: Option<String>,
}

fn expired(h: &Lease, now: Timestamp) -> bool {
    h.expires.seconds + (CLOCK_SKEW.as_secs() as i64) < now.seconds
}

/// Sessions of the leases this process holds now.
static HELD_HERE: Mutex<Vec<SessionId>> = Mutex::new(Vec::new());

/// This process exactly: `<boot id>/<PID namespace>/<PID>/<start time>`. A PID alone is
/// ambiguous across machines, reboots and containers with their own PID namespaces; the
/// four together name one process.
pub(crate) fn process_identity() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let ns = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pid = std::process::id();
        // Only when /proc shows this process under its own PID (a PID namespace without
        // its own /proc would not): then a PID missing from it is really gone.
        let Some(start) = process_start(pid) else {
            return String::new();
        };
        if boot.is_empty() || ns.is_empty() || !proc_is_ours(pid) {
            return String::new();
        }
        format!("{boot}/{ns}/{pid}/{start}")
    })
    .clone()
}

/// Whether `/proc/self` is this process as `pid`: the mounted /proc belongs to this PID
/// namespace.
fn proc_is_ours(pid: u32) -> bool {
    std::fs::read_link("/proc/self").is_ok_and(|p| p.as_os_str() == pid.to_string().as_str())
}

/// A process's start time (clock ticks after boot), from `/proc/<pid>/stat`.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the lease's holder is certainly gone: it ran on this machine since this boot,
/// in this PID namespace, and that process no longer exists (or is this process, which
/// does not hold that lease any more: a run that ended without releasing it). Anywhere
/// else only expiry tells.
fn holder_is_gone(h: &Lease) -> bool {
    let mine = process_identity();
    let (theirs, ours): (Vec<&str>, Vec<&str>) =
        (h.process.split('/').collect(), mine.split('/').collect());
    if theirs.len() != 4 || ours.len() != 4 || theirs[..2] != ours[..2] {
        return false;
    }
    if h.process == mine {
        return !HELD_HERE.lock().expect("lock").contains(&h.session);
    }
    let Ok(pid) = theirs[2].parse::<u32>() else {
        return false;
    };
    process_start(pid).is_none_or(|start| start.to_string() != theirs[3])
}

impl LeaseGuard {
    /// Take the lease, or fail naming who holds it. `force` takes it even while it is
    /// held (the operator knows the holder is gone).
    pub(crate) async fn take(
        repo: &Repository,
        session: SessionId,
        who: &Identity,
        force: bool,
    ) -> Result<Self> {
        let store = &repo.store;
        let now = repo.clock.now();
        let held_by = |h: &Lease| {
            Error::Invalid(format!(
                "maintenance is already running on {} (pid {}, since {} ago); its lease lapses in \
                 {} unless renewed (if that maintainer is certainly gone, --break-lease takes it now)",
                h.host,
                h.pid,
                human(Duration::from_secs(
                    (now.seconds - h.acquired.seconds).max(0) as u64
                )),
                human(Duration::from_secs(
                    (h.expires.seconds - now.seconds).max(0) as u64
                )),
            ))
        };
        // The single lease object of format 1.0 (an older Arca may be running); breaking
        // the lease breaks that one too.
        if force {
            store.delete(layout::LEASE).await?;
        } else {
            match crate::store::get_bounded(store, layout::LEASE, None).await {
                Ok(b) => {
                    if let Ok(h) = Lease::decode(&repo.keys, &b)
                        && !expired(&h, now)
                    {
                        return Err(held_by(&h));
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let mut terms: Vec<(u64, crate::store::ObjectInfo)> = store
            .list(layout::LEASES)
            .await?
            .into_iter()
            .filter_map(|o| layout::parse_lease(&o.name).map(|t| (t, o)))
            .collect();
        terms.sort_by_key(|t| t.0);
        if let Some((_, info)) = terms.last()
            && !force
        {
            match crate::store::get_bounded(store, &info.name, Some(info.size)).await {
                Ok(b) => match Lease::decode(&repo.keys, &b) {
                    Ok(h) if !expired(&h, now) && !holder_is_gone(&h) => {
                        return Err(held_by(&h));
                    }
                    Ok(h) if !expired(&h, now) => tracing::warn!(
                        "the maintenance lease of {} (pid {}) is held by a process that is gone: taking it",
                        h.host,
                        h.pid
                    ),
                    Ok(_) => {}
                    // An unreadable lease counts as held for a lease's length after it
                    // was written (by the store's clock): damage must not let two in.
                    Err(e) => {
                        let written = info.last_modified.timestamp();
                        let lapses = written + (LEASE_LENGTH + CLOCK_SKEW).as_secs() as i64;
                        if now.seconds <= lapses {
                            return Err(Error::Invalid(format!(
                                "the maintenance lease {} cannot be read ({e}); it counts as held \
                                 until {} s from now (--break-lease takes it now)",
                                info.name,
                                lapses - now.seconds
                            )));
                        }
                    }
                },
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let term = terms.last().map_or(1, |t| t.0 + 1);
        let began = repo.clock.since_boot();
        let now = repo.clock.now();
        let lease = Lease {
            session,
            host: who.host.clone(),
            pid: std::process::id(),
            acquired: now,
            expires: Timestamp::new(now.seconds + LEASE_LENGTH.as_secs() as i64, 0),
            process: process_identity(),
        };
        // Registered before the put: another maintainer of this very process that reads the
        // new lease meanwhile must find its holder alive.
        HELD_HERE.lock().expect("lock").push(session);
        let unregister = || HELD_HERE.lock().expect("lock").retain(|s| *s != session);
        let put = match lease.encode(&repo.keys) {
            Ok(b) => {
                store
                    .put_versioned(&layout::lease(term), Bytes::from(b), Condition::Create)
                    .await
            }
            Err(e) => Err(e.into()),
        };
        if put.is_err() {
            unregister();
        }
        let version = match put {
            Ok(v) => v,
            Err(Error::Store {
                kind: StoreErrorKind::AlreadyExists,
                ..
            }) => {
                return Err(Error::Invalid(
                    "another maintainer took the maintenance lease at the same moment; it runs \
                     now, this one stops"
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        };
        // Earlier terms are over; their objects are only clutter now.
        for (t, _) in terms.iter().filter(|t| t.0 < term) {
            let _ = store.delete(&layout::lease(*t)).await;
        }
        let state = Arc::new(Mutex::new(Held {
            lease,
            version,
            valid_until: began + LEASE_LENGTH.saturating_sub(CLOCK_SKEW),
            lost: None,
        }));
        let renewing = Arc::new(tokio::sync::Mutex::new(()));
        let (r, st, lock) = (repo.clone(), state.clone(), renewing.clone());
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_LENGTH / 3).await;
                let _one = lock.lock().await;
                match renew(&r, term, &st).await {
                    Ok(()) => {}
                    // Lost for good: nothing more to renew.
                    Err(Error::LeaseLost { .. }) => return,
                    // A store error: the deadline decides; try again next time.
                    Err(e) => tracing::warn!("renewing the maintenance lease failed: {e}"),
                }
            }
        });
        Ok(Self {
            repo: repo.clone(),
            term,
            state,
            renew,
            renewing,
        })
    }

    /// Fail if this maintainer can no longer be sure it holds the lease: it was told so, or
    /// its own deadline passed (it stalled). Cheap; called before every deletion.
    pub(crate) fn ensure_held(&self) -> Result<()> {
        let mut st = self.state.lock().expect("lock");
        if let Some(why) = &st.lost {
            return Err(Error::LeaseLost {
                reason: why.clone(),
            });
        }
        let now = self.repo.clock.since_boot();
        if now > st.valid_until {
            let why = format!(
                "it could not renew its lease for {} (the process was suspended or the store \
                 was unreachable), so another maintainer may have taken over",
                human(now - st.valid_until + LEASE_LENGTH.saturating_sub(CLOCK_SKEW))
            );
            st.lost = Some(why.clone());
            return Err(Error::LeaseLost { reason: why });
        }
        Ok(())
    }

    /// [`LeaseGuard::ensure_held`], and ask the store: the lease object is still the one
    /// this maintainer wrote, and no later term exists. Called before each destructive
    /// phase.
    pub(crate) async fn confirm_held(&self) -> Result<()> {
        self.ensure_held()?;
        if let Err(why) = still_ours(&self.repo, self.term, &self.state).await? {
            self.state.lock().expect("lock").lost = Some(why.clone());
            return Err(Error::LeaseLost { reason: why });
        }
        self.ensure_held()
    }

    /// Give the lease up: its term ends now (conditional on it still being ours).
    pub(crate) async fn release(self) -> Result<()> {
        self.renew.abort();
        let _one = self.renewing.lock().await;
        let (mut lease, version, lost) = {
            let st = self.state.lock().expect("lock");
            (st.lease.clone(), st.version.clone(), st.lost.is_some())
        };
        if lost {
            return Ok(());
        }
        lease.expires = self.repo.clock.now();
        lease.expires.seconds -= CLOCK_SKEW.as_secs() as i64 + 1;
        match self
            .repo
            .store
            .put_versioned(
                &layout::lease(self.term),
                Bytes::from(lease.encode(&self.repo.keys)?),
                Condition::IfMatch(version),
            )
            .await
        {
            Err(e) if e.is_conflict() => Ok(()),
            r => r.map(|_| ()),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renew.abort();
        let session = self.state.lock().expect("lock").lease.session;
        HELD_HERE.lock().expect("lock").retain(|s| *s != session);
    }
}

/// `Ok(Err(why))` when the lease is no longer this holder's.
async fn still_ours(
    repo: &Repository,
    term: u64,
    state: &Mutex<Held>,
) -> Result<std::result::Result<(), String>> {
    let newest = repo
        .store
        .list(layout::LEASES)
        .await?
        .into_iter()
        .filter_map(|o| layout::parse_lease(&o.name))
        .max();
    if newest.is_some_and(|n| n > term) {
        return Ok(Err(
            "another maintainer took the lease (a later term exists)".into(),
        ));
    }
    let version = state.lock().expect("lock").version.clone();
    match repo.store.get_versioned(&layout::lease(term)).await {
        Ok((_, v)) if v == version => Ok(Ok(())),
        Ok(_) => Ok(Err("its lease object was rewritten by someone else".into())),
        Err(e) if e.is_not_found() => Ok(Err("its lease object was removed".into())),
        Err(e) => Err(e),
    }
}

async fn renew(repo: &Repository, term: u64, state: &Mutex<Held>) -> Result<()> {
    let began = repo.clock.since_boot();
    let (bytes, version) = {
        let mut st = state.lock().expect("lock");
        if st.lost.is_some() || began > st.valid_until {
            return Err(Error::LeaseLost {
                reason: "the lease lapsed before it could be renewed".into(),
            });
        }
        let now = repo.clock.now();
        st.lease.expires = Timestamp::new(now.seconds + LEASE_LENGTH.as_secs() as i64, 0);
        (st.lease.encode(&repo.keys)?, st.version.clone())
    };
    if let Err(why) = still_ours(repo, term, state).await? {
        state.lock().expect("lock").lost = Some(why.clone());
        return Err(Error::LeaseLost { reason: why });
    }
    match repo
        .store
        .put_versioned(
            &layout::lease(term),
            Bytes::from(bytes),
            Condition::IfMatch(version),
        )
        .await
    {
        Ok(v) => {
            let mut st = state.lock().expect("lock");
            st.version = v;
            st.valid_until = began + LEASE_LENGTH.saturating_sub(CLOCK_SKEW);
            Ok(())
        }
        Err(e) if e.is_conflict() => {
            let why = "its lease object was changed by someone else".to_string();
            state.lock().expect("lock").lost = Some(why.clone());
            Err(Error::LeaseLost { reason: why })
        }
        Err(e) => {
            // Not lost yet: the deadline decides.
            tracing::warn!("renewing the maintenance lease failed (will retry): {e}");
            Ok(())
        }
    }
}
