//! File-system metadata to tree nodes and back.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use arca_format::{Node, NodeKind, Timestamp, Xattr};
use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;

/// User and group names by ID, looked up once each.
#[derive(Default, Debug)]
pub(crate) struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    pub(crate) fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_default()
            })
            .clone()
    }

    pub(crate) fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_default()
            })
            .clone()
    }
}

/// Extended attributes of a path (not following symlinks), sorted by name. File systems
/// without xattr support give an empty list.
pub(crate) fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            });
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.name == b.name);
    Ok(out)
}

/// A node for `name` from its `lstat` metadata.
pub(crate) fn node_from(
    name: &OsStr,
    meta: &Metadata,
    kind: NodeKind,
    names: &mut Names,
    xattrs: Vec<Xattr>,
) -> Node {
    let mut n = Node::new(name.as_bytes().to_vec(), kind);
    n.mode = meta.mode() & 0o7777;
    n.uid = meta.uid();
    n.gid = meta.gid();
    n.user = names.user(n.uid);
    n.group = names.group(n.gid);
    n.mtime = Timestamp::new(meta.mtime(), meta.mtime_nsec() as u32);
    n.ctime = Timestamp::new(meta.ctime(), meta.ctime_nsec() as u32);
    n.size = if meta.is_file() { meta.len() } else { 0 };
    n.inode = meta.ino();
    n.device = meta.dev();
    n.links = meta.nlink();
    n.xattrs = xattrs;
    n
}

/// Whether a file has holes: fewer blocks allocated than its length needs.
pub(crate) fn looks_sparse(meta: &Metadata) -> bool {
    meta.is_file() && meta.blocks().saturating_mul(512) < meta.len()
}

fn timespec(t: Timestamp) -> TimeSpec {
    TimeSpec::new(t.seconds, t.nanos as _)
}

/// Apply a node's metadata through an open file: owner (when asked, which needs root),
/// extended attributes (after the owner: chown clears file capabilities,
/// `security.capability`; before the mode: `user.*` attributes need write permission, which
/// a read-only mode takes away), permissions (after the owner: chown clears set-user-ID and
/// set-group-ID), then times (last, since the others change ctime and writing would change
/// mtime). No
/// path lookup per call, and nothing a symlink swapped in could redirect. Returns what
/// could not be applied.
pub(crate) fn apply_file(file: &std::fs::File, node: &Node, ownership: bool) -> Vec<String> {
    apply_to(Target::File(file), node, ownership)
}

/// [`apply_file`] to the entry `name` of an open directory, never following a symlink there:
/// for what cannot be opened without side effects (symlinks, fifos, devices).
pub(crate) fn apply_at(
    dir: &std::os::fd::OwnedFd,
    name: &OsStr,
    path: &Path,
    node: &Node,
    ownership: bool,
) -> Vec<String> {
    apply_to(Target::At(dir, name, path), node, ownership)
}

#[derive(Clone, Copy)]
enum Target<'a> {
    File(&'a std::fs::File),
    /// A directory, an entry's name in it, and the full path (for extended attributes,
    /// which have no `*at` call; `lsetxattr` does not follow the entry itself).
    At(&'a std::os::fd::OwnedFd, &'a OsStr, &'a Path),
}

fn apply_to(target: Target<'_>, node: &Node, ownership: bool) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    use xattr::FileExt;
    let mut problems = Vec::new();
    let is_link = matches!(node.kind, NodeKind::Symlink { .. });
    if ownership {
        let (uid, gid) = (Some(node.uid), Some(node.gid));
        let owned = match target {
            Target::File(f) => std::os::unix::fs::fchown(f, uid, gid),
            Target::At(d, name, _) => nix::unistd::fchownat(
                d,
                name,
                Some(nix::unistd::Uid::from_raw(node.uid)),
                Some(nix::unistd::Gid::from_raw(node.gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(std::io::Error::from),
        };
        if let Err(e) = owned {
            problems.push(format!("owner {}:{}: {e}", node.uid, node.gid));
        }
    }
    for x in &node.xattrs {
        let name = OsStr::from_bytes(&x.name);
        let set = match target {
            Target::At(_, _, p) => xattr::set(p, name, &x.value),
            Target::File(f) => f.set_xattr(name, &x.value),
        };
        if let Err(e) = set {
            problems.push(format!(
                "extended attribute {}: {e}",
                String::from_utf8_lossy(&x.name)
            ));
        }
    }
    if !is_link {
        let set = match target {
            Target::File(f) => {
                f.set_permissions(std::fs::Permissions::from_mode(node.mode & 0o7777))
            }
            Target::At(d, name, _) => nix::sys::stat::fchmodat(
                d,
                name,
                nix::sys::stat::Mode::from_bits_truncate((node.mode & 0o7777) as _),
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )
            .map_err(std::io::Error::from),
        };
        if let Err(e) = set {
            problems.push(format!("permissions {:o}: {e}", node.mode));
        }
    }
    let (atime, mtime) = (
        timespec(node.atime.unwrap_or(node.mtime)),
        timespec(node.mtime),
    );
    let timed = match target {
        Target::File(f) => nix::sys::stat::futimens(f, &atime, &mtime),
        Target::At(d, name, _) => {
            nix::sys::stat::utimensat(d, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        }
    };
    if let Err(e) = timed {
        problems.push(format!("times: {e}"));
    }
    problems
}
