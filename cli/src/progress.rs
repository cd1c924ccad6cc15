//! Progress bars on stderr for long work: bytes/s, files, ETA. Drawn only on a terminal.

use std::sync::Arc;
use std::sync::atomic::Ordering;
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
                b.set_length(
                    p.total_bytes
                        .load(Ordering::Relaxed)
                        .max(p.bytes_done.load(Ordering::Relaxed)),
                );
                b.set_position(p.bytes_done.load(Ordering::Relaxed));
                let total = if p.scan_done.load(Ordering::Relaxed) {
                    p.total_files.load(Ordering::Relaxed).to_string()
                } else {
                    "?".into()
                };
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
                let walked = p.walk_done.load(Ordering::Relaxed);
                let done = p.bytes_done.load(Ordering::Relaxed);
                b.set_length(p.total_bytes.load(Ordering::Relaxed).max(done));
                b.set_position(done);
                let total = if walked {
                    p.total_files.load(Ordering::Relaxed).to_string()
                } else {
                    "?".into()
                };
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
