//! Text and JSON output.

use arca_format::{Node, NodeKind, Snapshot, SnapshotId, SnapshotRoot, Timestamp};
use serde::Serialize;

/// An error and its causes on one line, without a backtrace.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// Bytes for people: 1.5 GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A time for people, in the local zone.
pub fn time(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos)
        .map(|d| {
            d.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| format!("@{}", t.seconds))
}

/// A time for machines: RFC 3339 in UTC.
pub fn rfc3339(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_else(|| format!("@{}", t.seconds))
}

/// Raw bytes as text: UTF-8 where valid, escapes elsewhere.
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A snapshot as `--json` shows it.
#[derive(Serialize)]
pub struct SnapshotView {
    id: String,
    short_id: String,
    time: String,
    end_time: String,
    host: String,
    username: String,
    paths: Vec<String>,
    tags: Vec<String>,
    labels: std::collections::BTreeMap<String, String>,
    parent: Option<String>,
    tree: Option<String>,
    volume_size: Option<u64>,
    program: String,
    summary: SummaryView,
}

/// Snapshot counters.
#[derive(Serialize)]
pub struct SummaryView {
    files_new: u64,
    files_changed: u64,
    files_unmodified: u64,
    dirs_new: u64,
    dirs_changed: u64,
    dirs_unmodified: u64,
    data_blobs: u64,
    tree_blobs: u64,
    bytes_processed: u64,
    bytes_added: u64,
    bytes_stored: u64,
    errors: u64,
}

impl SnapshotView {
    /// Build the view.
    pub fn new(id: &SnapshotId, s: &Snapshot) -> Self {
        let m = &s.summary;
        Self {
            id: id.to_hex(),
            short_id: id.short(),
            time: rfc3339(s.time),
            end_time: rfc3339(s.end_time),
            host: s.host.clone(),
            username: s.username.clone(),
            paths: s.paths.iter().map(|p| lossy(p)).collect(),
            tags: s.tags.clone(),
            labels: s.labels.clone(),
            parent: s.parent.map(|p| p.to_hex()),
            tree: match &s.root {
                SnapshotRoot::Tree(t) => Some(t.to_hex()),
                SnapshotRoot::Volume(_) => None,
            },
            volume_size: match &s.root {
                SnapshotRoot::Volume(v) => Some(v.size),
                SnapshotRoot::Tree(_) => None,
            },
            program: s.program.clone(),
            summary: SummaryView {
                files_new: m.files_new,
                files_changed: m.files_changed,
                files_unmodified: m.files_unmodified,
                dirs_new: m.dirs_new,
                dirs_changed: m.dirs_changed,
                dirs_unmodified: m.dirs_unmodified,
                data_blobs: m.data_blobs,
                tree_blobs: m.tree_blobs,
                bytes_processed: m.bytes_processed,
                bytes_added: m.bytes_added,
                bytes_stored: m.bytes_stored,
                errors: m.errors,
            },
        }
    }
}

/// The one-letter kind `ls` shows, and the JSON name.
pub fn kind(n: &Node) -> (&'static str, &'static str) {
    match n.kind {
        NodeKind::File { .. } => ("-", "file"),
        NodeKind::Dir { .. } => ("d", "dir"),
        NodeKind::Symlink { .. } => ("l", "symlink"),
        NodeKind::Fifo => ("p", "fifo"),
        NodeKind::Socket => ("s", "socket"),
        NodeKind::CharDevice { .. } => ("c", "chardev"),
        NodeKind::BlockDevice { .. } => ("b", "blockdev"),
    }
}

/// `rwxr-xr-x` with setuid/setgid/sticky.
pub fn mode_string(n: &Node) -> String {
    let m = n.mode;
    let mut s = String::with_capacity(10);
    s.push_str(kind(n).0);
    for (shift, special, ch) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (m >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (m & special != 0, x) {
            (true, true) => ch,
            (true, false) => ch.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// A tree entry as `--json` shows it.
#[derive(Serialize)]
pub struct EntryView {
    path: String,
    kind: &'static str,
    mode: String,
    size: u64,
    uid: u32,
    gid: u32,
    user: String,
    group: String,
    mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    damage: Option<String>,
}

impl EntryView {
    /// Build the view.
    pub fn new(path: &[u8], n: &Node) -> Self {
        Self {
            path: lossy(path),
            kind: kind(n).1,
            mode: format!("{:04o}", n.mode),
            size: n.size,
            uid: n.uid,
            gid: n.gid,
            user: n.user.clone(),
            group: n.group.clone(),
            mtime: rfc3339(n.mtime),
            target: match &n.kind {
                NodeKind::Symlink { target } => Some(lossy(target)),
                _ => None,
            },
            damage: n.damage.clone(),
        }
    }
}
