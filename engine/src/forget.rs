//! Retention: which snapshots a keep policy keeps, and why.
//!
//! The rules are restic's, so that policies carry over: within each group of snapshots
//! (by host, paths and/or tags), newest first, `keep_last` keeps the newest N; each
//! calendar rule keeps the newest snapshot of each of the last N hours / days / ISO weeks /
//! months / years that have a snapshot; `keep_within` keeps everything younger than the
//! duration, counted back from the group's newest snapshot; `keep_tags` keeps every
//! snapshot with one of the tags. A snapshot is removed only when no rule keeps it.

use std::collections::BTreeMap;

use arca_format::{Snapshot, SnapshotId, Timestamp};
use chrono::{DateTime, Datelike, Local, Timelike};

use crate::error::{Error, Result};

/// How snapshots are grouped before the rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    /// Separate groups per host.
    pub host: bool,
    /// Separate groups per set of paths.
    pub paths: bool,
    /// Separate groups per set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        Self {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl GroupBy {
    /// Parse `host,paths,tags` (any subset; empty for one group).
    pub fn parse(s: &str) -> Result<Self> {
        let mut g = Self {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" | "path" => g.paths = true,
                "tags" | "tag" => g.tags = true,
                other => {
                    return Err(Error::Invalid(format!(
                        "--group-by {other:?}: use host, paths and/or tags"
                    )));
                }
            }
        }
        Ok(g)
    }
}

/// The keep rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The newest N.
    pub last: Option<u32>,
    /// One per hour, for the last N hours with snapshots.
    pub hourly: Option<u32>,
    /// One per day.
    pub daily: Option<u32>,
    /// One per ISO week.
    pub weekly: Option<u32>,
    /// One per month.
    pub monthly: Option<u32>,
    /// One per year.
    pub yearly: Option<u32>,
    /// Everything within this many seconds of the group's newest snapshot.
    pub within_secs: Option<i64>,
    /// Everything carrying any of these tags.
    pub tags: Vec<String>,
}

impl KeepPolicy {
    /// Whether any rule is set (an empty policy would remove everything).
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.hourly.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
            && self.yearly.is_none()
            && self.within_secs.is_none()
            && self.tags.is_empty()
    }
}

/// The decision about one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// When it was taken.
    pub time: Timestamp,
    /// Its group's key (host, paths, tags as grouped).
    pub group: String,
    /// The rules that keep it; empty means it is removed.
    pub reasons: Vec<String>,
}

impl Decision {
    /// Kept by some rule.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

fn local(t: Timestamp) -> DateTime<Local> {
    DateTime::from_timestamp(t.seconds, t.nanos)
        .unwrap_or_default()
        .with_timezone(&Local)
}

/// Parse a duration such as `7d`, `36h`, `2w`, `1y6m`, `1d12h30m` (y = 365 days, m =
/// minutes at the end after h, else months of 30 days; to avoid the ambiguity write
/// `1mo` for a month).
pub fn parse_duration(s: &str) -> Result<i64> {
    let bad = || {
        Error::Invalid(format!(
            "duration {s:?}: use e.g. 7d, 36h, 2w, 1y, 3mo, 90m"
        ))
    };
    if s == "0" {
        return Ok(0);
    }
    let mut total = 0i64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            'y' => 365 * 86400,
            'w' => 7 * 86400,
            'd' => 86400,
            'h' => 3600,
            's' => 1,
            'm' if chars.peek() == Some(&'o') => {
                chars.next();
                30 * 86400
            }
            'm' => 60,
            _ => return Err(bad()),
        };
        total += n * unit;
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    Ok(total)
}

/// Decide for every snapshot. The result is sorted by group, newest first.
pub fn apply_policy(
    snapshots: &[(SnapshotId, Snapshot)],
    policy: &KeepPolicy,
    group_by: GroupBy,
) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "no keep rule given: that would remove every snapshot; give --keep-last, --keep-daily, ... or name snapshots".into(),
        ));
    }
    let mut groups: BTreeMap<String, Vec<&(SnapshotId, Snapshot)>> = BTreeMap::new();
    for s in snapshots {
        let snap = &s.1;
        let mut key = Vec::new();
        if group_by.host {
            key.push(format!("host {}", snap.host));
        }
        if group_by.paths {
            let mut p: Vec<String> = snap
                .paths
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            p.sort();
            key.push(format!("paths [{}]", p.join(", ")));
        }
        if group_by.tags {
            let mut t = snap.tags.clone();
            t.sort();
            key.push(format!("tags [{}]", t.join(", ")));
        }
        groups.entry(key.join(", ")).or_default().push(s);
    }
    type Bucket = fn(&DateTime<Local>) -> (i32, u32, u32, u32);
    let rules: [(&str, Option<u32>, Bucket); 5] = [
        ("hourly", policy.hourly, |d| {
            (d.year(), d.ordinal(), d.hour(), 0)
        }),
        ("daily", policy.daily, |d| (d.year(), d.ordinal(), 0, 0)),
        ("weekly", policy.weekly, |d| {
            (d.iso_week().year(), d.iso_week().week(), 0, 0)
        }),
        ("monthly", policy.monthly, |d| (d.year(), d.month(), 0, 0)),
        ("yearly", policy.yearly, |d| (d.year(), 0, 0, 0)),
    ];
    let mut out = Vec::new();
    for (group, mut snaps) in groups {
        snaps.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
        let mut decisions: Vec<Decision> = snaps
            .iter()
            .map(|(id, s)| Decision {
                id: *id,
                time: s.time,
                group: group.clone(),
                reasons: Vec::new(),
            })
            .collect();
        if let Some(n) = policy.last {
            for d in decisions.iter_mut().take(n as usize) {
                d.reasons.push("last".into());
            }
        }
        for (name, count, bucket) in rules {
            let Some(n) = count else { continue };
            let mut kept = 0;
            let mut last = None;
            for (d, (_, s)) in decisions.iter_mut().zip(&snaps) {
                let b = bucket(&local(s.time));
                if last != Some(b) {
                    last = Some(b);
                    if kept < n {
                        d.reasons.push(name.into());
                        kept += 1;
                    }
                }
            }
        }
        if let (Some(w), Some(newest)) = (policy.within_secs, snaps.first()) {
            for (d, (_, s)) in decisions.iter_mut().zip(&snaps) {
                if newest.1.time.seconds - s.time.seconds <= w {
                    d.reasons.push("within".into());
                }
            }
        }
        for (d, (_, s)) in decisions.iter_mut().zip(&snaps) {
            for t in &policy.tags {
                if s.tags.contains(t) {
                    d.reasons.push(format!("tag {t}"));
                }
            }
        }
        out.extend(decisions);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_format::{BlobId, SnapshotRoot};

    fn snap(n: u8, secs: i64, host: &str, tags: &[&str]) -> (SnapshotId, Snapshot) {
        let mut s = Snapshot::new(SnapshotRoot::Tree(BlobId::default()));
        s.time = Timestamp::new(secs, 0);
        s.host = host.into();
        s.paths = vec![b"/data".to_vec()];
        s.tags = tags.iter().map(|t| t.to_string()).collect();
        (SnapshotId([n; 32]), s)
    }

    fn kept(d: &[Decision]) -> Vec<u8> {
        let mut v: Vec<u8> = d.iter().filter(|d| d.keep()).map(|d| d.id.0[0]).collect();
        v.sort();
        v
    }

    const DAY: i64 = 86400;
    // Noon UTC, so that local-time buckets in any zone within ±11h agree with UTC days.
    const T0: i64 = 1_790_000_000 - 1_790_000_000 % DAY + DAY / 2;

    #[test]
    fn keep_last_and_daily_pick_the_newest_of_each_day() {
        // Two snapshots a day for five days.
        let s: Vec<_> = (0..10u8)
            .map(|i| {
                snap(
                    i,
                    T0 + (i as i64 / 2) * DAY + (i as i64 % 2) * 600,
                    "h",
                    &[],
                )
            })
            .collect();
        let p = KeepPolicy {
            daily: Some(3),
            ..Default::default()
        };
        let d = apply_policy(&s, &p, GroupBy::default()).unwrap();
        assert_eq!(
            kept(&d),
            [5, 7, 9],
            "the newest of each of the last three days"
        );
        let p = KeepPolicy {
            last: Some(2),
            daily: Some(3),
            ..Default::default()
        };
        let d = apply_policy(&s, &p, GroupBy::default()).unwrap();
        assert_eq!(kept(&d), [5, 7, 8, 9]);
        let reasons: Vec<_> = d.iter().find(|d| d.id.0[0] == 9).unwrap().reasons.clone();
        assert_eq!(reasons, ["last", "daily"]);
    }

    #[test]
    fn weekly_monthly_yearly_within_and_tags() {
        let s: Vec<_> = (0..60u8)
            .map(|i| {
                snap(
                    i,
                    T0 + i as i64 * 7 * DAY,
                    "h",
                    if i == 3 { &["keep"] } else { &[] },
                )
            })
            .collect();
        let weekly = apply_policy(
            &s,
            &KeepPolicy {
                weekly: Some(4),
                ..Default::default()
            },
            GroupBy::default(),
        )
        .unwrap();
        assert_eq!(kept(&weekly), [56, 57, 58, 59]);
        let monthly = apply_policy(
            &s,
            &KeepPolicy {
                monthly: Some(3),
                ..Default::default()
            },
            GroupBy::default(),
        )
        .unwrap();
        assert_eq!(kept(&monthly).len(), 3);
        assert!(kept(&monthly).contains(&59));
        let yearly = apply_policy(
            &s,
            &KeepPolicy {
                yearly: Some(10),
                ..Default::default()
            },
            GroupBy::default(),
        )
        .unwrap();
        assert!(
            (2..=3).contains(&kept(&yearly).len()),
            "60 weeks span two or three years"
        );
        let within = apply_policy(
            &s,
            &KeepPolicy {
                within_secs: Some(14 * DAY),
                ..Default::default()
            },
            GroupBy::default(),
        )
        .unwrap();
        assert_eq!(kept(&within), [57, 58, 59]);
        let tags = apply_policy(
            &s,
            &KeepPolicy {
                tags: vec!["keep".into()],
                ..Default::default()
            },
            GroupBy::default(),
        )
        .unwrap();
        assert_eq!(kept(&tags), [3]);
    }

    #[test]
    fn groups_are_separate_and_an_empty_policy_is_refused() {
        let s = vec![
            snap(1, T0, "a", &[]),
            snap(2, T0 + 10, "a", &[]),
            snap(3, T0, "b", &[]),
        ];
        let d = apply_policy(
            &s,
            &KeepPolicy {
                last: Some(1),
                ..Default::default()
            },
            GroupBy::default(),
        )
        .unwrap();
        assert_eq!(kept(&d), [2, 3]);
        let d = apply_policy(
            &s,
            &KeepPolicy {
                last: Some(1),
                ..Default::default()
            },
            GroupBy::parse("").unwrap(),
        )
        .unwrap();
        assert_eq!(kept(&d), [2]);
        assert!(apply_policy(&s, &KeepPolicy::default(), GroupBy::default()).is_err());
        assert!(GroupBy::parse("host,nope").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * DAY);
        assert_eq!(parse_duration("1d12h30m").unwrap(), DAY + 12 * 3600 + 1800);
        assert_eq!(parse_duration("2w").unwrap(), 14 * DAY);
        assert_eq!(parse_duration("3mo").unwrap(), 90 * DAY);
        assert_eq!(parse_duration("1y").unwrap(), 365 * DAY);
        assert_eq!(parse_duration("0").unwrap(), 0);
        assert_eq!(parse_duration("0s").unwrap(), 0);
        for bad in ["", "7", "d", "7x", "-1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
