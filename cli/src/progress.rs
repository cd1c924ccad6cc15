//! Progress bars on stderr for long work: bytes/s, files, ETA. Drawn only on a terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arca_engine::{BackupProgress, CheckProgress, MaintenanceProgress, RestoreProgress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar redrawn from shared counters until dropped.
pub struct Bar {
    bar: ProgressBar,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}

/// A bar on stderr, or a hidden one.
fn new_bar(show: bool) -> ProgressBar {
    let bar = if show {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {msg} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Bytes done of a total that may still be growing (never shown below what is done).
fn set_bytes(b: &ProgressBar, total: &AtomicU64, done: &AtomicU64) {
    let done = done.load(Ordering::Relaxed);
    b.set_length(total.load(Ordering::Relaxed).max(done));
    b.set_position(done);
}

/// A total that is still growing shows as "?".
fn count_or_unknown(is_final: bool, n: &AtomicU64) -> String {
    if is_final {
        n.load(Ordering::Relaxed).to_string()
    } else {
        "?".into()
    }
}

fn errors_suffix(errors: u64) -> String {
    if errors > 0 {
        format!(" errors {errors}")
    } else {
        String::new()
    }
}

/// A backup's bar: bytes done of the scanned total, files, bytes added.
pub fn backup(show: bool, p: Arc<BackupProgress>) -> Bar {
    let bar = new_bar(show);
    let task = show.then(|| {
        let b = bar.clone();
        tokio::spawn(async move {
            loop {
                set_bytes(&b, &p.total_bytes, &p.bytes_done);
                let total = count_or_unknown(p.scan_done.load(Ordering::Relaxed), &p.total_files);
                let added = p
                    .written
                    .get()
                    .map_or(0, |w| w.bytes_stored.load(Ordering::Relaxed));
                b.set_message(format!(
                    "files {}/{total} stored {}{}",
                    p.files_done.load(Ordering::Relaxed),
                    crate::output::bytes(added),
                    errors_suffix(p.errors.load(Ordering::Relaxed))
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    Bar { bar, task }
}

/// A restore's bar.
pub fn restore(show: bool, p: Arc<RestoreProgress>) -> Bar {
    let bar = new_bar(show);
    let task = show.then(|| {
        let b = bar.clone();
        tokio::spawn(async move {
            loop {
                // Totals grow while the snapshot's trees are still being walked; until
                // then the file total shows as "?", as a backup's does while scanning.
                set_bytes(&b, &p.total_bytes, &p.bytes_done);
                let total = count_or_unknown(p.walk_done.load(Ordering::Relaxed), &p.total_files);
                b.set_message(format!(
                    "files {}/{total}{}",
                    p.files_done.load(Ordering::Relaxed),
                    errors_suffix(p.errors.load(Ordering::Relaxed))
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    Bar { bar, task }
}

/// A check's bar: packs read of packs to read.
pub fn check(show: bool, p: Arc<CheckProgress>) -> Bar {
    let bar = new_bar(show);
    let task = show.then(|| {
        let b = bar.clone();
        tokio::spawn(async move {
            loop {
                b.set_length(p.packs_total.load(Ordering::Relaxed));
                b.set_position(p.packs_done.load(Ordering::Relaxed));
                b.set_message(format!(
                    "read {}",
                    crate::output::bytes(p.bytes_done.load(Ordering::Relaxed))
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    if show {
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] packs {pos}/{len} {msg} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
    }
    Bar { bar, task }
}

/// Maintenance: a spinner with the phase and its count.
pub fn maintenance(show: bool, p: Arc<MaintenanceProgress>) -> Bar {
    let bar = if show {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    let task = show.then(|| {
        let b = bar.clone();
        b.enable_steady_tick(Duration::from_millis(120));
        tokio::spawn(async move {
            loop {
                let (done, total) = (
                    p.done.load(Ordering::Relaxed),
                    p.total.load(Ordering::Relaxed),
                );
                b.set_message(if total > 0 {
                    format!("{} {done}/{total}", p.phase())
                } else {
                    p.phase().to_string()
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    Bar { bar, task }
}
