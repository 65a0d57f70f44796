//! FD snapshots: which descriptors a process holds, each with its kind and target, and what
//! changed between two moments — the "Too many open files" of failed server starts, caught
//! where it begins.
//!
//! Why count first: `stat("/proc/<pid>/fd").st_size` is the number of open descriptors
//! (≈ 0.5 µs on Linux ≥ 6.2), while listing and `readlink`ing them costs microseconds each. A
//! check that finds the same count is done; only a differing count pays for the targets.

use std::io;
use std::sync::Mutex;

use serde::Serialize;

use crate::os::procfs;

/// What a descriptor points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FdKind {
    Pipe,
    Socket,
    /// A path in the file system (files, directories, devices).
    File,
    /// `anon_inode:[eventfd]`, `anon_inode:[pidfd]`, epoll, timerfd, ...
    AnonInode,
    Other,
}

/// One open descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Fd {
    pub fd: i32,
    pub kind: FdKind,
    /// The link target: `pipe:[1234]`, `socket:[5678]`, `/tmp/x`, `anon_inode:[eventfd]`.
    pub target: String,
}

impl std::fmt::Display for Fd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fd {} -> {}", self.fd, self.target)
    }
}

/// The descriptors of one process at one moment.
#[derive(Debug, Clone)]
pub struct FdSnapshot {
    pid: i32,
    fds: Vec<Fd>,
}

/// What changed between a snapshot and a later moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdDiff {
    /// Open now, not in the snapshot (or reused for another target).
    pub opened: Vec<Fd>,
    /// In the snapshot, closed now.
    pub closed: Vec<Fd>,
}

impl FdDiff {
    pub fn is_empty(&self) -> bool {
        self.opened.is_empty() && self.closed.is_empty()
    }
}

impl FdSnapshot {
    /// This process's descriptors.
    pub fn capture() -> io::Result<FdSnapshot> {
        FdSnapshot::of(std::process::id() as i32)
    }

    /// The descriptors of `pid` (a child server, say); needs the right to read its `/proc`.
    pub fn of(pid: i32) -> io::Result<FdSnapshot> {
        Ok(FdSnapshot { pid, fds: list(pid)? })
    }

    pub fn fds(&self) -> &[Fd] {
        &self.fds
    }

    /// What changed since the snapshot: nothing if the count is the same (the cheap check),
    /// else the descriptors opened and closed, with their targets.
    pub fn diff_now(&self) -> io::Result<FdDiff> {
        if procfs::fd_count(self.pid)? == self.fds.len() {
            return Ok(FdDiff::default());
        }
        Ok(self.diff(&FdSnapshot::of(self.pid)?))
    }

    /// What changed from `self` to `later`, compared by number and target.
    pub fn diff(&self, later: &FdSnapshot) -> FdDiff {
        FdDiff {
            opened: later.fds.iter().filter(|fd| !self.fds.contains(fd)).cloned().collect(),
            closed: self.fds.iter().filter(|fd| !later.fds.contains(fd)).cloned().collect(),
        }
    }
}

/// Descriptors of this process that library code opened once and keeps until the process
/// exits (see `docker_engine::retire`): never a test's leak.
static PROCESS_LIFETIME: Mutex<Vec<Fd>> = Mutex::new(Vec::new());

fn process_lifetime() -> std::sync::MutexGuard<'static, Vec<Fd>> {
    PROCESS_LIFETIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records our descriptor `fd` as open for the rest of the process's life.
pub(crate) fn note_own_lifetime(fd: i32) {
    if let Some(target) = target_of_own(fd) {
        note_process_lifetime(std::iter::once(&Fd { fd, kind: kind_of(&target), target }));
    }
}

/// Records `fds` as open for the rest of the process's life.
pub(crate) fn note_process_lifetime<'a>(fds: impl Iterator<Item = &'a Fd>) {
    let mut known = process_lifetime();
    for fd in fds {
        if !known.contains(fd) {
            known.push(fd.clone());
        }
    }
}

/// Whether `fd` is reapkit's own or a library's, never a test's leak: one of those, or a listing
/// of this process's FD table (`/proc/<pid>/fd`) that an FD check on another thread holds for
/// the moment it reads it.
pub(crate) fn is_process_lifetime(fd: &Fd) -> bool {
    fd.target == format!("/proc/{}/fd", std::process::id()) || process_lifetime().contains(fd)
}

/// Runs `init` — a throw-away tokio runtime: where tokio has signals (its `process` or `signal`
/// feature), the first runtime of a process opens tokio's process-wide signal socket pair,
/// open until the process exits — and notes the pair it left open as the process's own. Once
/// per process: only the first runtime opens it. Only a pair is noted: if other threads opened
/// sockets meanwhile, none is, so that a test's leak is never hidden (a false alarm is then
/// possible, a silent miss is not).
pub(crate) fn note_tokio_signal_pair(init: impl FnOnce()) {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let before = FdSnapshot::capture().ok();
        // A runtime that cannot start (no descriptor left) is the test's own error to meet.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(init));
        let opened = before.and_then(|b| b.diff_now().ok()).map(|d| d.opened).unwrap_or_default();
        let sockets: Vec<&Fd> = opened.iter().filter(|fd| fd.kind == FdKind::Socket).collect();
        if sockets.len() == 2 {
            note_process_lifetime(sockets.into_iter());
        }
    });
}

/// What descriptor `fd` of this process refers to, in the form of `/proc/self/fd`'s links.
pub(crate) fn target_of_own(fd: i32) -> Option<String> {
    if crate::os::PROC_TABLE {
        return std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|t| t.display().to_string());
    }
    describe_own(fd)
}

/// Without `/proc`: what `fstat` says of our own descriptor — `pipe:[inode]`,
/// `socket:[inode]`, `file:[device:inode]` (the path, on macOS), `anon_inode:[inode]`.
fn describe_own(fd: i32) -> Option<String> {
    // SAFETY: stat is plain data; fstat fills it for a descriptor number (a closed one fails).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a stat we own.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    let ino = st.st_ino as u64;
    Some(match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => format!("pipe:[{ino}]"),
        libc::S_IFSOCK => format!("socket:[{ino}]"),
        0 => format!("anon_inode:[{ino}]"),
        _ => path_of_own(fd).unwrap_or_else(|| format!("file:[{}:{ino}]", st.st_dev as u64)),
    })
}

/// The path of an open file, where the OS keeps one (`F_GETPATH`).
#[cfg(target_vendor = "apple")]
fn path_of_own(fd: i32) -> Option<String> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: F_GETPATH writes at most PATH_MAX bytes into a buffer of that size.
    if unsafe { libc::fcntl(fd, libc::F_GETPATH, buf.as_mut_ptr()) } != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

#[cfg(not(target_vendor = "apple"))]
fn path_of_own(_fd: i32) -> Option<String> {
    None
}

/// Every descriptor of `pid` with its target, read with `readlinkat` on the listing's own
/// directory descriptor (no path built per entry).
fn list(pid: i32) -> io::Result<Vec<Fd>> {
    let mut dir = procfs::fd_dir(pid)?;
    let mut fds = Vec::new();
    for fd in procfs::fd_numbers_in(&mut dir, pid)? {
        // Closed since the listing: not open, so not in the snapshot.
        let target = if crate::os::PROC_TABLE {
            nix::fcntl::readlinkat(&dir, fd.to_string().as_str()).ok().map(|t| t.to_string_lossy().into_owned())
        } else {
            describe_own(fd)
        };
        let Some(target) = target else { continue };
        fds.push(Fd { fd, kind: kind_of(&target), target });
    }
    fds.sort_by_key(|f| f.fd);
    Ok(fds)
}

fn kind_of(target: &str) -> FdKind {
    match target {
        t if t.starts_with("pipe:") => FdKind::Pipe,
        t if t.starts_with("socket:") => FdKind::Socket,
        t if t.starts_with("anon_inode:") => FdKind::AnonInode,
        t if t.starts_with('/') || t.starts_with("file:") => FdKind::File,
        _ => FdKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, not several, and it checks only its own descriptors: libtest runs tests as
    /// threads of one process, whose FD table they share.
    #[test]
    fn names_leaked_pipes_files_and_sockets_and_sees_them_closed() {
        use std::os::fd::AsRawFd;
        let before = FdSnapshot::capture().unwrap();
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let file = std::env::temp_dir().join(format!("reapkit-fd-snapshot-{}", std::process::id()));
        let opened = std::fs::File::create(&file).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ours = [
            (reader.as_raw_fd(), FdKind::Pipe),
            (writer.as_raw_fd(), FdKind::Pipe),
            (opened.as_raw_fd(), FdKind::File),
            (a.as_raw_fd(), FdKind::Socket),
            (b.as_raw_fd(), FdKind::Socket),
        ];
        let diff = before.diff_now().unwrap();
        for (fd, kind) in ours {
            assert!(diff.opened.iter().any(|f| f.fd == fd && f.kind == kind), "fd {fd} ({kind:?}) in {diff:?}");
        }
        assert!(diff.opened.iter().any(|f| f.target == file.display().to_string()), "{diff:?}");
        let leaked: Vec<Fd> = diff.opened.iter().filter(|f| ours.iter().any(|(fd, _)| *fd == f.fd)).cloned().collect();
        drop((reader, writer, opened, a, b));
        let after = before.diff_now().unwrap();
        assert!(!after.opened.iter().any(|f| leaked.contains(f)), "closed again: {after:?}");
        std::fs::remove_file(file).unwrap();

        let mut child =
            std::process::Command::new("sleep").arg("30").stdin(std::process::Stdio::null()).spawn().unwrap();
        let of_child = FdSnapshot::of(child.id() as i32).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(of_child.fds().iter().any(|f| f.fd == 0 && f.target == "/dev/null"), "{of_child:?}");
    }
}
