//! Creating and opening entries under a restore's target without ever following a
//! symbolic link: every path is resolved from an open descriptor of the target with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a symlink that stands at a file's or
//! a directory's path (planted, or restored a moment earlier) can neither redirect a write
//! nor lead out of the target. Kernels without `openat2` (before 5.6, or a seccomp filter
//! that refuses it) get a walk of the path one component at a time with `O_NOFOLLOW`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// An open restore target.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// Whether `openat2` works here (cleared after the first ENOSYS or EPERM).
    openat2: AtomicBool,
}

impl Root {
    /// Open the target directory (following a symlink to it: the user named it).
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
            openat2: AtomicBool::new(true),
        })
    }

    /// `full` relative to the root (`.` for the root itself).
    pub(crate) fn rel<'a>(&self, full: &'a Path) -> &'a Path {
        match full.strip_prefix(&self.path) {
            Ok(r) if r.as_os_str().is_empty() => Path::new("."),
            Ok(r) => r,
            Err(_) => full,
        }
    }

    /// Open `rel` under the root with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`), never
    /// through a symlink at any component.
    pub(crate) fn open_at(&self, rel: &Path, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        if self.openat2.load(Ordering::Relaxed) {
            let mut how = OpenHow::new()
                .flags(flags)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            // openat2 refuses a mode without O_CREAT.
            if flags.contains(OFlag::O_CREAT) {
                how = how.mode(mode);
            }
            match nix::fcntl::openat2(&self.fd, rel, how) {
                Err(Errno::ENOSYS) | Err(Errno::EPERM) => {
                    self.openat2.store(false, Ordering::Relaxed);
                }
                Err(Errno::ELOOP) => return Err(symlink_in_the_way(rel)),
                r => return r.map_err(io::Error::from),
            }
        }
        // One component at a time, each opened with O_NOFOLLOW from its parent.
        let mut parts: Vec<&OsStr> = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => parts.push(n),
                Component::CurDir => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} leaves the restore target", rel.display()),
                    ));
                }
            }
        }
        let Some((last, dirs)) = parts.split_last() else {
            return nix::fcntl::openat(&self.fd, ".", flags, mode).map_err(io::Error::from);
        };
        let mut cur: Option<OwnedFd> = None;
        for d in dirs {
            let parent = cur.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
            let next = nix::fcntl::openat(
                parent,
                *d,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => symlink_in_the_way(rel),
                e => io::Error::from(e),
            })?;
            cur = Some(next);
        }
        let parent = cur.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
        nix::fcntl::openat(parent, *last, flags, mode).map_err(|e| match e {
            Errno::ELOOP => symlink_in_the_way(rel),
            e => io::Error::from(e),
        })
    }

    /// The directory holding `full` (opened without following a symlink) and the entry's
    /// name in it.
    pub(crate) fn parent_of(&self, full: &Path) -> io::Result<(OwnedFd, std::ffi::OsString)> {
        let rel = self.rel(full);
        let parent = rel
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Ok((
            self.open_dir(parent)?,
            rel.file_name().unwrap_or_default().to_owned(),
        ))
    }

    /// Open the directory `rel` under the root, never through a symlink.
    pub(crate) fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
    }
}

/// Remove the entry `name` (not a directory) of `dir`; one already gone is not an error.
pub(crate) fn unlink_in(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn symlink_in_the_way(rel: &Path) -> io::Error {
    io::Error::other(format!(
        "a symbolic link stands in the way at {} (not followed)",
        rel.display()
    ))
}
