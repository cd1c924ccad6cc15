//! The server's Prometheus metrics, with Velero's names (pkg/metrics/metrics.go) under
//! Arca's namespace: `arca_backup_attempt_total{schedule="..."}` is Velero's
//! `velero_backup_attempt_total`, so a Velero dashboard needs only its prefix changed.
//! Backups and restores not made by a schedule count under `schedule=""`, as in Velero.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

const NS: &str = "arca";

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    backup_attempt: IntCounterVec,
    backup_success: IntCounterVec,
    backup_partial_failure: IntCounterVec,
    backup_failure: IntCounterVec,
    backup_validation_failure: IntCounterVec,
    backup_duration: HistogramVec,
    backup_items: GaugeVec,
    backup_items_errors: GaugeVec,
    backup_warning: IntCounterVec,
    backup_last_successful: GaugeVec,
    backup_last_status: GaugeVec,
    restore_attempt: IntCounterVec,
    restore_success: IntCounterVec,
    restore_partial_failure: IntCounterVec,
    restore_failed: IntCounterVec,
    restore_validation_failed: IntCounterVec,
    deletion_attempt: IntCounterVec,
    deletion_success: IntCounterVec,
    deletion_failure: IntCounterVec,
    location_available: GaugeVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), &["schedule"])
        .expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> GaugeVec {
    let g =
        GaugeVec::new(Opts::new(name, help).namespace(NS), &["schedule"]).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

/// How a backup or restore ended, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Completed.
    Success,
    /// PartiallyFailed.
    Partial,
    /// Failed (or an error before a phase was written).
    Failure,
    /// FailedValidation.
    Validation,
}

impl End {
    /// The end a final phase means.
    pub fn of_phase(phase: &str) -> Self {
        match phase {
            "Completed" => Self::Success,
            "PartiallyFailed" => Self::Partial,
            "FailedValidation" => Self::Validation,
            _ => Self::Failure,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let m = Self::empty();
        m.init_schedule("");
        m
    }

    fn empty() -> Self {
        let r = Registry::new();
        let backup_duration = HistogramVec::new(
            HistogramOpts::new(
                "backup_duration_seconds",
                "Time taken to complete backup, in seconds",
            )
            .namespace(NS)
            // Velero's buckets: 1 min to 4 h.
            .buckets(vec![
                60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0, 14400.0,
            ]),
            &["schedule"],
        )
        .expect("valid metric");
        r.register(Box::new(backup_duration.clone()))
            .expect("registered once");
        Self {
            backup_attempt: counter(
                &r,
                "backup_attempt_total",
                "Total number of attempted backups",
            ),
            backup_success: counter(
                &r,
                "backup_success_total",
                "Total number of successful backups",
            ),
            backup_partial_failure: counter(
                &r,
                "backup_partial_failure_total",
                "Total number of partially failed backups",
            ),
            backup_failure: counter(&r, "backup_failure_total", "Total number of failed backups"),
            backup_validation_failure: counter(
                &r,
                "backup_validation_failure_total",
                "Total number of validation failed backups",
            ),
            backup_duration,
            backup_items: gauge(&r, "backup_items_total", "Total number of items backed up"),
            backup_items_errors: gauge(
                &r,
                "backup_items_errors",
                "Total number of errors encountered during backup",
            ),
            backup_warning: counter(&r, "backup_warning_total", "Total number of warned backups"),
            backup_last_successful: gauge(
                &r,
                "backup_last_successful_timestamp",
                "Last time a backup ran successfully, Unix timestamp in seconds",
            ),
            backup_last_status: gauge(
                &r,
                "backup_last_status",
                "Last status of the backup. A value of 1 is success, 0 is failure",
            ),
            restore_attempt: counter(
                &r,
                "restore_attempt_total",
                "Total number of attempted restores",
            ),
            restore_success: counter(
                &r,
                "restore_success_total",
                "Total number of successful restores",
            ),
            restore_partial_failure: counter(
                &r,
                "restore_partial_failure_total",
                "Total number of partially failed restores",
            ),
            restore_failed: counter(
                &r,
                "restore_failed_total",
                "Total number of failed restores",
            ),
            restore_validation_failed: counter(
                &r,
                "restore_validation_failed_total",
                "Total number of failed restores failing validations",
            ),
            deletion_attempt: counter(
                &r,
                "backup_deletion_attempt_total",
                "Total number of attempted backup deletions",
            ),
            deletion_success: counter(
                &r,
                "backup_deletion_success_total",
                "Total number of successful backup deletions",
            ),
            deletion_failure: counter(
                &r,
                "backup_deletion_failure_total",
                "Total number of failed backup deletions",
            ),
            location_available: {
                let g = GaugeVec::new(
                    Opts::new(
                        "backup_location_status_gauge",
                        "The status of backup storage locations. 1 is available, 0 is unavailable",
                    )
                    .namespace(NS),
                    &["backup_location_name"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            registry: r,
        }
    }

    /// Every series of `schedule` at zero and its last status 1, as Velero's `InitSchedule`
    /// does for "" at start and for each schedule it reconciles.
    pub fn init_schedule(&self, schedule: &str) {
        let l = &[schedule];
        for c in [
            &self.backup_attempt,
            &self.backup_success,
            &self.backup_partial_failure,
            &self.backup_failure,
            &self.backup_validation_failure,
            &self.backup_warning,
            &self.restore_attempt,
            &self.restore_success,
            &self.restore_partial_failure,
            &self.restore_failed,
            &self.restore_validation_failed,
            &self.deletion_attempt,
            &self.deletion_success,
            &self.deletion_failure,
        ] {
            c.with_label_values(l).inc_by(0);
        }
        self.backup_items.with_label_values(l).add(0.0);
        self.backup_items_errors.with_label_values(l).add(0.0);
        self.backup_last_status.with_label_values(l).set(1.0);
    }

    /// A backup of `schedule` ("" for none) ended, after `secs`, with `items` backed up
    /// and `errors`/`warnings` counted. As in Velero, an attempt is counted only for a
    /// backup that passed validation.
    pub fn backup_ended(
        &self,
        schedule: &str,
        end: End,
        secs: f64,
        items: i64,
        errors: i64,
        warnings: i64,
    ) {
        let l = &[schedule];
        let ok = end == End::Success;
        self.backup_last_status
            .with_label_values(l)
            .set(if ok { 1.0 } else { 0.0 });
        if end == End::Validation {
            self.backup_validation_failure.with_label_values(l).inc();
            return;
        }
        self.backup_attempt.with_label_values(l).inc();
        match end {
            End::Success => self.backup_success.with_label_values(l).inc(),
            End::Partial => self.backup_partial_failure.with_label_values(l).inc(),
            _ => self.backup_failure.with_label_values(l).inc(),
        }
        self.backup_duration.with_label_values(l).observe(secs);
        self.backup_items.with_label_values(l).set(items as f64);
        self.backup_items_errors
            .with_label_values(l)
            .set(errors as f64);
        if warnings > 0 {
            self.backup_warning.with_label_values(l).inc();
        }
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            self.backup_last_successful.with_label_values(l).set(now);
        }
    }

    /// A restore from a backup of `schedule` starts (counted before its validation, as
    /// Velero counts it).
    pub fn restore_started(&self, schedule: &str) {
        self.restore_attempt.with_label_values(&[schedule]).inc();
    }

    /// A restore ended.
    pub fn restore_ended(&self, schedule: &str, end: End) {
        let l = &[schedule];
        match end {
            End::Success => self.restore_success.with_label_values(l).inc(),
            End::Partial => self.restore_partial_failure.with_label_values(l).inc(),
            End::Failure => self.restore_failed.with_label_values(l).inc(),
            End::Validation => self.restore_validation_failed.with_label_values(l).inc(),
        }
    }

    /// A deletion of a backup of `schedule` starts.
    pub fn deletion_attempt(&self, schedule: &str) {
        self.deletion_attempt.with_label_values(&[schedule]).inc();
    }

    /// A deletion ended.
    pub fn deletion_ended(&self, schedule: &str, ok: bool) {
        let c = if ok {
            &self.deletion_success
        } else {
            &self.deletion_failure
        };
        c.with_label_values(&[schedule]).inc();
    }

    /// A location's validation said whether it is available.
    pub fn location_available(&self, location: &str, available: bool) {
        self.location_available
            .with_label_values(&[location])
            .set(if available { 1.0 } else { 0.0 });
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_under_velero_names() {
        let m = Metrics::new();
        assert!(
            m.render()
                .contains("arca_backup_failure_total{schedule=\"\"} 0")
        );
        m.init_schedule("nightly");
        m.backup_ended("nightly", End::Success, 12.0, 40, 0, 0);
        m.backup_ended("", End::of_phase("Failed"), 1.0, 0, 0, 0);
        m.backup_ended("", End::of_phase("FailedValidation"), 0.0, 0, 0, 0);
        m.restore_started("");
        m.restore_ended("", End::of_phase("PartiallyFailed"));
        let t = m.render();
        for line in [
            "arca_backup_attempt_total{schedule=\"nightly\"} 1",
            "arca_backup_success_total{schedule=\"nightly\"} 1",
            "arca_backup_attempt_total{schedule=\"\"} 1",
            "arca_backup_failure_total{schedule=\"\"} 1",
            "arca_backup_validation_failure_total{schedule=\"\"} 1",
            "arca_backup_items_total{schedule=\"nightly\"} 40",
            "arca_backup_last_status{schedule=\"nightly\"} 1",
            "arca_backup_last_status{schedule=\"\"} 0",
            "arca_backup_duration_seconds_count{schedule=\"nightly\"} 1",
            "arca_restore_partial_failure_total{schedule=\"\"} 1",
        ] {
            assert!(t.contains(line), "{line} missing from:\n{t}");
        }
        assert!(t.contains("# TYPE arca_backup_attempt_total counter"));
    }
}
