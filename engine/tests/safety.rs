//! No data lost to stalled writers, interrupted GC, racing maintainers or wrong clocks
//! (FORMAT.md 14). Time is a `ManualClock` shared by the repository and the store's object
//! times, and operations are held at pause points: hours pass in microseconds, and every
//! race happens in the same order on every run.

mod support;

use std::sync::Arc;
use std::time::Duration;

use arca_engine::store::clocked::ClockedBackend;
use arca_engine::{
    Clock, Error, Indexed, InitOptions, MaintenanceOptions, ManualClock, PausePoints, Repository,
    SessionGuard, Store, Writer,
};
use arca_format::KdfParams;
use arca_format::{BlobType, SessionKind, layout};
use bytes::Bytes;
use support::*;

/// A repository whose clock, and whose store's clock, only move when told.
struct World {
    store: Store,
    clock: Arc<ManualClock>,
    pauses: PausePoints,
    idx: Indexed,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        let clock = Arc::new(ManualClock::new());
        let store: Store = Arc::new(ClockedBackend::new(memory(), clock.clone()));
        init(store.clone()).await;
        let pauses = PausePoints::default();
        let idx = Self::open_with(&store, clock.clone(), pauses.clone()).await;
        Self {
            store,
            clock,
            pauses,
            idx,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Another process on the same store and clock (its own index cache).
    async fn open_with(store: &Store, clock: Arc<dyn Clock>, pauses: PausePoints) -> Indexed {
        let repo = Repository::open(store.clone(), PW)
            .await
            .unwrap()
            .with_clock(clock)
            .with_pause_points(pauses);
        repo.indexed(None).await.unwrap().0
    }

    async fn process(&self) -> Indexed {
        Self::open_with(&self.store, self.clock.clone(), self.pauses.clone()).await
    }

    fn src(&self, v: u64) -> std::path::PathBuf {
        let p = self.dir.path().join(format!("src{v}"));
        write_tree(&p, v);
        p
    }

    fn pass(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// Let `total` pass while `alive` keep beating every 50 minutes, as live writers do.
    async fn pass_beating(&self, total: Duration, alive: &[&SessionGuard]) {
        let step = Duration::from_secs(50 * 60);
        let mut left = total;
        while !left.is_zero() {
            let d = left.min(step);
            self.clock.advance(d);
            left -= d;
            for s in alive {
                s.heartbeat().await.unwrap();
            }
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Full maintenance with the safe defaults (24 h margin, 4 h cleanup, 5 min skew).
fn safe_gc() -> MaintenanceOptions {
    MaintenanceOptions {
        full: true,
        repack_below: 0.7,
        identity: who(),
        ..Default::default()
    }
}

/// Full maintenance that acts at once: for a repository nobody else writes to.
fn fast_gc() -> MaintenanceOptions {
    MaintenanceOptions {
        safety_margin: Duration::ZERO,
        cleanup_margin: Duration::ZERO,
        clock_skew: Duration::ZERO,
        unsafe_margins: true,
        ..safe_gc()
    }
}

fn lapsed(e: &Error) -> bool {
    matches!(e, Error::SessionLapsed { .. })
}

/// The scenario of restic issue 3569, through the engine: a backup reads the index, stops
/// (SIGSTOP, a suspended laptop) while its parent's only snapshot is forgotten and two
/// maintenance runs a day apart sweep the packs it is about to deduplicate against, then
/// resumes. It must store nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_stalled_past_the_timeout_stores_nothing() {
    let w = World::new().await;
    let v1 = w.src(1);
    let s1 = backup(&w.idx, &v1, "v1").await.unwrap();
    let v2 = w.src(2);
    let s2 = backup(&w.idx, &v2, "v2").await.unwrap();
    let tree2 = read_tree(&v2);

    // A second process backs v1 up again; it stops right after reading the index.
    let writer = w.process().await;
    let held = w.pauses.arm("backup:index-read");
    let v1c = v1.clone();
    let stalled = tokio::spawn(async move { backup(&writer, &v1c, "v1-again").await });
    held.reached().await;

    w.idx.repo().delete_snapshot(&s1).await.unwrap();
    let maint = w.process().await;
    let first = maint.maintain(&safe_gc()).await.unwrap();
    assert!(first.packs_marked > 0, "{first:?}");
    w.pass(25 * HOUR);
    let second = maint.maintain(&safe_gc()).await.unwrap();
    assert!(
        second.packs_deleted > 0,
        "the stalled writer's session must count as dead: {second:?}"
    );
    assert_eq!(second.sessions_removed, 1, "{second:?}");

    held.release();
    let err = stalled.await.unwrap().unwrap_err();
    assert!(lapsed(&err), "{err}");
    assert!(err.to_string().contains("Run it again"), "{err}");
    let left: Vec<_> = w.idx.repo().snapshots().await.unwrap();
    assert_eq!(left.len(), 1, "only v2 remains: {left:?}");
    assert_eq!(left[0].0, s2);

    let fresh = w.process().await;
    assert_clean(&fresh, true).await;
    assert_eq!(restore(&fresh, &s2).await, tree2);
    // The next backup of the same data stores it again and restores.
    let again = backup(&fresh, &v1, "v1-third").await.unwrap();
    assert_eq!(restore(&fresh, &again).await, read_tree(&v1));
    assert_clean(&fresh, true).await;
}

/// A writer that uploaded packs and stalled before indexing them: maintenance reclaims the
/// packs as leftovers, and the writer, resumed, must not write an index naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writers_unindexed_packs_are_never_named_by_an_index() {
    let w = World::new().await;
    let v1 = w.src(1);
    let writer = w.process().await;
    let held = w.pauses.arm("writer:before-index");
    let stalled = tokio::spawn(async move { backup(&writer, &v1, "v1").await });
    held.reached().await;
    let packs = w.store.list(layout::PACKS).await.unwrap().len();
    assert!(packs > 0);
    assert!(w.store.list(layout::INDEX).await.unwrap().is_empty());

    w.pass(25 * HOUR);
    let maint = w.process().await;
    let r = maint.maintain(&safe_gc()).await.unwrap();
    assert_eq!(r.leftovers_deleted, packs, "{r:?}");

    held.release();
    let index_before = w.store.list(layout::INDEX).await.unwrap();
    let err = stalled.await.unwrap().unwrap_err();
    assert!(lapsed(&err), "{err}");
    // It wrote no index file (the only one is maintenance's, which lists nothing) and no
    // snapshot; check finds every indexed pack present.
    assert_eq!(w.store.list(layout::INDEX).await.unwrap(), index_before);
    assert!(w.idx.repo().snapshots().await.unwrap().is_empty());
    let fresh = w.process().await;
    assert_clean(&fresh, true).await;
    let v1 = w.src(1);
    let s = backup(&fresh, &v1, "v1").await.unwrap();
    assert_eq!(restore(&fresh, &s).await, read_tree(&v1));
}

/// The lapse is the gap between heartbeats on the boot clock, not the age of the last one:
/// a heartbeat that comes after the gap does not save the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_too_far_apart_poison_the_session() {
    let w = World::new().await;
    let s = SessionGuard::start(w.idx.repo(), SessionKind::Backup, &who())
        .await
        .unwrap();
    let name = layout::session(&s.id());
    for _ in 0..3 {
        w.pass(50 * 60 * Duration::from_secs(1));
        s.heartbeat().await.unwrap();
        s.check_fresh().unwrap();
    }
    let before = w.store.get(&name).await.unwrap();
    w.pass(56 * 60 * Duration::from_secs(1));
    assert!(lapsed(&s.heartbeat().await.unwrap_err()));
    // Nothing was written by the late heartbeat, and the session stays poisoned.
    assert_eq!(w.store.get(&name).await.unwrap(), before);
    assert!(lapsed(&s.check_fresh().unwrap_err()));
    assert!(lapsed(&s.heartbeat().await.unwrap_err()));
    s.end().await.unwrap();
}

/// Heartbeats are conditional: a session object that maintenance removed never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_session_cannot_come_back() {
    for local in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = if local {
            arca_engine::open_store(
                dir.path().join("repo").to_str().unwrap(),
                &Default::default(),
            )
            .unwrap()
        } else {
            memory()
        };
        init(store.clone()).await;
        let idx = open(store.clone()).await.unwrap();
        let s = SessionGuard::start(idx.repo(), SessionKind::Backup, &who())
            .await
            .unwrap();
        let name = layout::session(&s.id());
        s.heartbeat().await.unwrap();
        store.delete(&name).await.unwrap();
        let err = s.heartbeat().await.unwrap_err();
        assert!(lapsed(&err), "{err}");
        assert!(err.to_string().contains("removed"), "{err}");
        assert!(store.head(&name).await.unwrap().is_none(), "local={local}");
        assert!(lapsed(&s.check_fresh().unwrap_err()));
    }
}

/// Uploaded packs are indexed within the checkpoint interval even when nothing more is
/// uploaded (everything after them deduplicates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_fires_without_further_uploads() {
    let w = World::new().await;
    let s = SessionGuard::start(w.idx.repo(), SessionKind::Backup, &who())
        .await
        .unwrap();
    let writer = Writer::new(&w.idx, arca_format::Compression::None, s.liveness());
    // No checkpoint while storing: the upload path must not write the index itself.
    writer.set_checkpoint(Duration::from_secs(3600));
    // Two megabytes of fresh data fill at least one 1 MiB pack, which is uploaded.
    let data = noise(99, 2 << 20);
    let w2 = Arc::new(writer);
    let wr = w2.clone();
    tokio::task::spawn_blocking(move || {
        for c in data.chunks(256 << 10) {
            wr.store(BlobType::Data, c).unwrap();
        }
    })
    .await
    .unwrap();
    // Wait for the upload itself (a pack appears), then shorten the interval: no more
    // uploads, no finish: the index file must appear on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w.store.list(layout::PACKS).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no pack uploaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(w.store.list(layout::INDEX).await.unwrap().is_empty());
    w2.set_checkpoint(Duration::from_millis(200));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if !w.store.list(layout::INDEX).await.unwrap().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no index file within 20 s of a 200 ms checkpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w2.finish().await.unwrap();
    s.end().await.unwrap();
}

/// A machine whose clock is off by more than the allowance neither writes nor maintains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_skewed_machine_refuses_to_write_or_maintain() {
    let w = World::new().await;
    let v1 = w.src(1);
    let s1 = backup(&w.idx, &v1, "v1").await.unwrap();
    w.idx.repo().delete_snapshot(&s1).await.unwrap();
    w.idx.maintain(&safe_gc()).await.unwrap();

    // The maintainer's clock runs three days fast; the store's is right.
    let fast = Arc::new(ManualClock::new());
    fast.skew(3 * 24 * 3600);
    let skewed = World::open_with(&w.store, fast.clone(), PausePoints::default()).await;
    let before = w.store.list("").await.unwrap();
    let err = skewed.maintain(&safe_gc()).await.unwrap_err();
    assert!(matches!(err, Error::ClockSkew { .. }), "{err}");
    assert!(err.to_string().contains("ahead of"), "{err}");
    let err = backup(&skewed, &v1, "v1").await.unwrap_err();
    assert!(matches!(err, Error::ClockSkew { .. }), "{err}");
    // Nothing changed but the refused sessions, which are gone again.
    assert_eq!(w.store.list("").await.unwrap(), before);
    fast.skew(-600);
    let err = skewed.maintain(&safe_gc()).await.unwrap_err();
    assert!(err.to_string().contains("behind"), "{err}");
}

/// Margins below the safe minimums need the flag that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_margins_need_the_unsafe_flag() {
    let w = World::new().await;
    let err = w
        .idx
        .maintain(&MaintenanceOptions {
            safety_margin: HOUR,
            ..safe_gc()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("below the safe minimum of 24h") && err.contains("--unsafe-short-margins"),
        "{err}"
    );
    let err = w
        .idx
        .maintain(&MaintenanceOptions {
            cleanup_margin: Duration::from_secs(60),
            ..safe_gc()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cleanup margin"), "{err}");
    assert!(w.store.list(layout::SESSIONS).await.unwrap().is_empty());
}

/// Marking and sweeping are two runs apart and a day after the mark became visible; a
/// later index rewrite does not postpone the sweep, so GC progresses even when a backup is
/// always running (each started after the mark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_progresses_while_backups_always_overlap() {
    let w = World::new().await;
    let v1 = w.src(1);
    let s1 = backup(&w.idx, &v1, "v1").await.unwrap();
    let v2 = w.src(2);
    let s2 = backup(&w.idx, &v2, "v2").await.unwrap();
    w.idx.repo().delete_snapshot(&s1).await.unwrap();

    let marked = w.idx.maintain(&safe_gc()).await.unwrap();
    assert!(marked.packs_marked > 0);
    w.pass(HOUR);
    // A backup starts after the mark and runs through every later maintenance run.
    let b1 = SessionGuard::start(w.idx.repo(), SessionKind::Backup, &who())
        .await
        .unwrap();
    let confirm = w.idx.maintain(&safe_gc()).await.unwrap();
    assert_eq!(
        confirm.packs_deleted, 0,
        "not before the margin: {confirm:?}"
    );
    assert_eq!(confirm.packs_pending, marked.packs_marked);
    // Index compaction rewrites the files that carry the marks.
    w.pass_beating(HOUR, &[&b1]).await;
    for v in 3..5 {
        backup(&w.idx, &w.src(v), &format!("v{v}")).await.unwrap();
    }
    w.idx
        .maintain(&MaintenanceOptions {
            full: false,
            ..safe_gc()
        })
        .await
        .unwrap();
    let b2 = SessionGuard::start(w.idx.repo(), SessionKind::Backup, &who())
        .await
        .unwrap();
    w.pass_beating(23 * HOUR, &[&b1, &b2]).await;
    // 25 h after the mark: both backups are alive, both started after it.
    let swept = w.idx.maintain(&safe_gc()).await.unwrap();
    assert_eq!(swept.packs_deleted, marked.packs_marked, "{swept:?}");
    b1.end().await.unwrap();
    b2.end().await.unwrap();
    assert_clean(&w.idx, true).await;
    assert_eq!(restore(&w.idx, &s2).await, read_tree(&w.src(2)));
}

/// A killed writer's checkpoint (packs indexed, no snapshot names them yet) is not marked
/// unused while its session may still be alive: a run again reuses it instead of
/// uploading it anew (a marked blob is never reused). Once the session has timed out and
/// maintenance removed it, the packs are garbage as usual, even while later backups run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writers_checkpoint_is_reused_until_its_session_times_out() {
    let w = World::new().await;
    let s = SessionGuard::start(w.idx.repo(), SessionKind::Backup, &who())
        .await
        .unwrap();
    let writer = Arc::new(Writer::new(
        &w.idx,
        arca_format::Compression::None,
        s.liveness(),
    ));
    // Its checkpoint comes a while after it began.
    w.pass(Duration::from_secs(5));
    let (wr, data) = (writer.clone(), noise(7, 2 << 20));
    let ids = tokio::task::spawn_blocking(move || {
        data.chunks(256 << 10)
            .map(|c| wr.store(BlobType::Data, c).unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // Its checkpoint stored, it is killed: no snapshot, its session object left behind.
    writer.finish().await.unwrap();
    drop(writer);
    drop(s);
    w.pass(Duration::from_secs(60));
    let r = w.idx.maintain(&safe_gc()).await.unwrap();
    assert_eq!(r.packs_marked, 0, "{r:?}");

    // The run again, in another process: every chunk of the checkpoint is there to reuse.
    let again = w.process().await;
    let s2 = SessionGuard::start(again.repo(), SessionKind::Backup, &who())
        .await
        .unwrap();
    let w2 = Writer::new(&again, arca_format::Compression::None, s2.liveness());
    for id in &ids {
        assert!(
            w2.has(id).unwrap(),
            "blob {id:?} of the checkpoint is reusable"
        );
    }
    drop(w2);
    s2.end().await.unwrap();

    // Another backup begins after those packs were uploaded and runs on; the index is
    // rewritten meanwhile (a full run). Once the killed session has timed out, the packs
    // are unused garbage as usual: marked, although a backup is live (their own upload
    // time counts, not their index files', which every rewrite renews).
    w.pass(Duration::from_secs(30 * 60));
    let later = SessionGuard::start(w.idx.repo(), SessionKind::Backup, &who())
        .await
        .unwrap();
    w.pass(Duration::from_secs(60));
    let r = w.idx.maintain(&safe_gc()).await.unwrap();
    assert_eq!(r.packs_marked, 0, "the killed session still counts: {r:?}");
    w.pass_beating(2 * HOUR, &[&later]).await;
    let r = w.idx.maintain(&safe_gc()).await.unwrap();
    assert!(r.sessions_removed >= 1 && r.packs_marked > 0, "{r:?}");
    later.end().await.unwrap();
    assert_clean(&w.idx, true).await;
}

/// A backup that started before the mark became visible still blocks the sweep, however
/// long ago the mark was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_older_than_the_mark_blocks_the_sweep() {
    let w = World::new().await;
    let s1 = backup(&w.idx, &w.src(1), "v1").await.unwrap();
    backup(&w.idx, &w.src(2), "v2").await.unwrap();
    w.idx.repo().delete_snapshot(&s1).await.unwrap();
    let old = SessionGuard::start(w.idx.repo(), SessionKind::Backup, &who())
        .await
        .unwrap();
    w.pass(Duration::from_secs(60));
    let marked = w.idx.maintain(&safe_gc()).await.unwrap();
    assert!(marked.packs_marked > 0);
    w.pass_beating(30 * HOUR, &[&old]).await;
    let r = w.idx.maintain(&safe_gc()).await.unwrap();
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    old.end().await.unwrap();
    let r = w.idx.maintain(&safe_gc()).await.unwrap();
    assert_eq!(r.packs_deleted, marked.packs_marked, "{r:?}");
    assert_clean(&w.idx, true).await;
}

/// A session object that cannot be decoded might be a live writer's: nothing is swept
/// while it is young, and it is removed once it is older than the session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_session_blocks_the_sweep() {
    let w = World::new().await;
    let s1 = backup(&w.idx, &w.src(1), "v1").await.unwrap();
    backup(&w.idx, &w.src(2), "v2").await.unwrap();
    w.idx.repo().delete_snapshot(&s1).await.unwrap();
    let marked = w.idx.maintain(&safe_gc()).await.unwrap();
    w.pass(25 * HOUR);
    let junk = "sessions/00112233445566778899aabbccddeeff";
    w.store
        .put(
            junk,
            Bytes::from_static(b"garbage"),
            arca_engine::WriteMode::Overwrite,
        )
        .await
        .unwrap();
    let r = w.idx.maintain(&safe_gc()).await.unwrap();
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    assert!(
        r.sweep_blocked.as_deref().unwrap_or("").contains(junk),
        "{r:?}"
    );
    w.pass(2 * HOUR);
    let r = w.idx.maintain(&safe_gc()).await.unwrap();
    assert_eq!(r.packs_deleted, marked.packs_marked, "{r:?}");
    assert!(w.store.head(junk).await.unwrap().is_none());
}

/// GC killed between the index files of a replacement (the entries-per-file limit made
/// small, so that one replacement spans many files), at every file boundary in turn, then
/// run again: every snapshot still restores, and no pack a snapshot uses is ever swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_killed_between_index_files_then_run_again() {
    for boundary in 1.. {
        assert!(boundary < 200, "too many file boundaries");
        let w = World::new().await;
        let mut snaps = Vec::new();
        for v in 1..=4 {
            let src = w.src(v);
            let id = backup(&w.idx, &src, &format!("v{v}")).await.unwrap();
            snaps.push((id, read_tree(&src)));
        }
        for (id, _) in snaps.drain(..2) {
            w.idx.repo().delete_snapshot(&id).await.unwrap();
        }
        let small = MaintenanceOptions {
            index_file_entries: 10,
            repack_below: 0.9,
            ..fast_gc()
        };
        // Pass `boundary - 1` file boundaries, then kill the run at the next one (drop
        // it there, as kill -9 would). The next point is armed before the current one is
        // released, so the run can never slip past one.
        let maint = w.process().await;
        let o = small.clone();
        let mut point = w.pauses.arm("maintenance:between-index-files");
        let mut run = tokio::spawn(async move { maint.maintain(&o).await });
        let mut killed = false;
        for k in 1..=boundary {
            tokio::select! {
                _ = point.reached() => {
                    if k == boundary {
                        run.abort();
                        let _ = (&mut run).await;
                        killed = true;
                        break;
                    }
                    let next = w.pauses.arm("maintenance:between-index-files");
                    point.release();
                    point = next;
                }
                r = &mut run => {
                    r.unwrap().unwrap();
                    break;
                }
            }
        }
        if !killed {
            eprintln!("killed at each of {} file boundaries", boundary - 1);
            return;
        }
        // New processes run GC to the end, several times.
        for _ in 0..3 {
            let next = w.process().await;
            next.maintain(&small).await.unwrap();
            for (id, tree) in &snaps {
                assert_eq!(&restore(&next, id).await, tree, "boundary {boundary}");
            }
            assert_clean(&next, true).await;
        }
    }
}

/// Two maintainers: the second is refused while the first holds the lease; a first that
/// stalls past its lease loses it to the second and stops before deleting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintainer_that_lost_its_lease_stops() {
    let w = World::new().await;
    let s1 = backup(&w.idx, &w.src(1), "v1").await.unwrap();
    let s2 = backup(&w.idx, &w.src(2), "v2").await.unwrap();
    w.idx.repo().delete_snapshot(&s1).await.unwrap();
    let m1 = w.process().await;
    let held = w.pauses.arm("maintenance:before-index");
    let first = tokio::spawn(async move { m1.maintain(&fast_gc()).await });
    held.reached().await;

    let m2 = w.process().await;
    let err = m2.maintain(&fast_gc()).await.unwrap_err().to_string();
    assert!(err.contains("already running on test-host"), "{err}");

    // The first stalls for 40 minutes: its lease lapses and the second takes it.
    w.pass(40 * 60 * Duration::from_secs(1));
    let index_before = w.store.list(layout::INDEX).await.unwrap();
    m2.maintain(&fast_gc()).await.unwrap();
    m2.maintain(&fast_gc()).await.unwrap();
    let after_m2 = w.store.list("").await.unwrap();
    assert_ne!(w.store.list(layout::INDEX).await.unwrap(), index_before);

    held.release();
    let err = first.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    // The first wrote and deleted nothing after it woke (its session object is gone).
    let mut now = w.store.list("").await.unwrap();
    now.retain(|o| !o.name.starts_with(layout::SESSIONS));
    let mut expected = after_m2.clone();
    expected.retain(|o| !o.name.starts_with(layout::SESSIONS));
    assert_eq!(now, expected);
    let fresh = w.process().await;
    assert_clean(&fresh, true).await;
    assert_eq!(restore(&fresh, &s2).await, read_tree(&w.src(2)));
}

/// Two maintainers that find the same lapsed lease at once: exactly one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_maintainers_at_once_one_runs() {
    let w = World::new().await;
    backup(&w.idx, &w.src(1), "v1").await.unwrap();
    for _ in 0..5 {
        let (a, b) = (w.process().await, w.process().await);
        let (oa, ob) = (fast_gc(), fast_gc());
        let (ra, rb) = tokio::join!(a.maintain(&oa), b.maintain(&ob));
        let ok = [ra.is_ok(), rb.is_ok()];
        // Both may run one after the other; never both at once (the one refused names why).
        for r in [&ra, &rb] {
            if let Err(e) = r {
                let e = e.to_string();
                assert!(
                    e.contains("already running") || e.contains("at the same moment"),
                    "{e}"
                );
            }
        }
        assert!(ok.iter().any(|x| *x));
    }
    let leases = w.store.list("maintenance/").await.unwrap();
    assert!(leases.len() <= 1, "{leases:?}");
}

/// `--break-lease` takes a live lease; its holder notices before its next deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_lease_stops_its_holder() {
    let w = World::new().await;
    let s1 = backup(&w.idx, &w.src(1), "v1").await.unwrap();
    backup(&w.idx, &w.src(2), "v2").await.unwrap();
    w.idx.repo().delete_snapshot(&s1).await.unwrap();
    w.idx.maintain(&fast_gc()).await.unwrap();
    let m1 = w.process().await;
    let held = w.pauses.arm("maintenance:before-delete");
    let first = tokio::spawn(async move { m1.maintain(&fast_gc()).await });
    held.reached().await;
    let packs = w.store.list(layout::PACKS).await.unwrap();
    let m2 = w.process().await;
    m2.maintain(&MaintenanceOptions {
        dry_run: true,
        break_lease: true,
        ..fast_gc()
    })
    .await
    .unwrap();
    held.release();
    let err = first.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    // It deleted nothing; what it meant to delete is now unindexed, and the next run
    // reclaims it.
    assert_eq!(w.store.list(layout::PACKS).await.unwrap(), packs);
    assert_clean(&w.process().await, true).await;
    w.pass(Duration::from_secs(1));
    let r = w.process().await.maintain(&fast_gc()).await.unwrap();
    assert!(r.leftovers_deleted > 0, "{r:?}");
}

/// `repair index` lists the index files before the packs: a backup that stores its packs,
/// its index file and its snapshot while the repair runs stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_index_beside_a_backup_loses_nothing() {
    let w = World::new().await;
    backup(&w.idx, &w.src(1), "v1").await.unwrap();
    let repairer = w.process().await;
    let held = w.pauses.arm("repair:index-listed");
    let repair = tokio::spawn(async move { repairer.repair_index().await });
    held.reached().await;
    let src2 = w.src(2);
    let s2 = backup(&w.idx, &src2, "v2").await.unwrap();
    held.release();
    repair.await.unwrap().unwrap();
    let fresh = w.process().await;
    assert_clean(&fresh, true).await;
    assert_eq!(restore(&fresh, &s2).await, read_tree(&src2));
}

/// `repair index` keeps the marks of packs that are marked (the next GC confirms them
/// before it sweeps), and runs under the lease: not beside a maintainer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_index_keeps_marks_and_takes_the_lease() {
    let w = World::new().await;
    let s1 = backup(&w.idx, &w.src(1), "v1").await.unwrap();
    let src2 = w.src(2);
    let s2 = backup(&w.idx, &src2, "v2").await.unwrap();
    w.idx.repo().delete_snapshot(&s1).await.unwrap();
    let marked = w.idx.maintain(&fast_gc()).await.unwrap();
    assert!(marked.packs_marked > 0);

    let m = w.process().await;
    let held = w.pauses.arm("maintenance:before-index");
    let running = tokio::spawn(async move { m.maintain(&fast_gc()).await });
    held.reached().await;
    let err = w.idx.repair_index().await.unwrap_err().to_string();
    assert!(err.contains("already running"), "{err}");
    held.release();
    running.await.unwrap().unwrap();

    // New unused packs, marked by a GC.
    let s1b = backup(&w.idx, &w.src(1), "v1-again").await.unwrap();
    w.idx.repo().delete_snapshot(&s1b).await.unwrap();
    let mark = w.idx.maintain(&fast_gc()).await.unwrap();
    assert!(mark.packs_marked > 0, "{mark:?}");
    let dry = MaintenanceOptions {
        dry_run: true,
        ..fast_gc()
    };
    let before = w.idx.maintain(&dry).await.unwrap();
    assert_eq!(before.packs_marked, 0, "{before:?}");
    assert_eq!(before.packs_deleted, mark.packs_marked, "{before:?}");
    w.idx.repair_index().await.unwrap();
    // Still marked after the repair: nothing to mark afresh, the same packs due.
    let after = w.idx.maintain(&dry).await.unwrap();
    assert_eq!(after.packs_marked, 0, "{after:?}");
    assert_eq!(after.packs_deleted, before.packs_deleted, "{after:?}");
    w.idx.maintain(&fast_gc()).await.unwrap();
    w.idx.maintain(&fast_gc()).await.unwrap();
    assert_clean(&w.idx, true).await;
    assert_eq!(restore(&w.idx, &s2).await, read_tree(&src2));
}

/// Superseded index files stay for the cleanup margin (4 h by default) after the file that
/// supersedes them appeared, so that a reader whose listing predates the new file still
/// finds the old ones; a later run deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_index_files_wait_for_the_cleanup_margin() {
    let w = World::new().await;
    for v in 1..=3 {
        backup(&w.idx, &w.src(v), &format!("v{v}")).await.unwrap();
    }
    let old = w.store.list(layout::INDEX).await.unwrap();
    assert_eq!(old.len(), 3);
    let quick = MaintenanceOptions {
        full: false,
        ..safe_gc()
    };
    let r = w.idx.maintain(&quick).await.unwrap();
    assert_eq!((r.index_files, r.index_files_deleted), ((3, 1), 0), "{r:?}");
    assert_eq!(w.store.list(layout::INDEX).await.unwrap().len(), 4);
    // A reader that listed before the new file appeared reads the old ones, still there.
    let reader = w.process().await;
    assert_clean(&reader, false).await;
    w.pass(3 * HOUR);
    let r = w.idx.maintain(&quick).await.unwrap();
    assert_eq!(r.index_files_deleted, 0, "{r:?}");
    w.pass(2 * HOUR);
    let r = w.idx.maintain(&quick).await.unwrap();
    assert_eq!(r.index_files_deleted, 3, "{r:?}");
    assert_eq!(w.store.list(layout::INDEX).await.unwrap().len(), 1);
    assert_clean(&w.process().await, true).await;
}

/// Two writers initialising one empty location at once (two clusters' servers on a new
/// bucket): one repository results, the other writer is told it is not empty (so it
/// opens that one), and its key file, of a repository that never was, is taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_inits_of_one_location_make_one_repository() {
    let store = memory();
    let opts = || InitOptions {
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        ..Default::default()
    };
    // Both list the location empty before either writes: the key derivation runs on a
    // blocking thread, so the two interleave there.
    let me = who();
    let (a, b) = tokio::join!(
        Repository::init(store.clone(), PW, opts(), &me),
        Repository::init(store.clone(), PW, opts(), &me),
    );
    let lost = match (&a, &b) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
        _ => panic!("exactly one init wins: {:?} / {:?}", a.is_ok(), b.is_ok()),
    };
    assert!(matches!(lost, Error::NotEmpty { .. }), "{lost}");
    let keys = store.list(layout::KEYS).await.unwrap();
    assert_eq!(keys.len(), 1, "the loser's key file is gone: {keys:?}");
    open(store.clone()).await.unwrap();
}
