//! A cgroup v2 per guard: membership the kernel keeps, whatever a process does to its
//! environment, session, group or uid.
//!
//! The guard's cgroup is a child of the test process's own (`reapkit-<guard id>`), on the
//! cgroup2 mount found in `/proc/self/mountinfo` (`/sys/fs/cgroup` on unified hosts,
//! `/sys/fs/cgroup/unified` on hybrid ones). The child joins it before exec (a `pre_exec`
//! write of `0` to its `cgroup.procs`), so its first instruction runs inside. Teardown reads
//! the members from `cgroup.procs`, ends them all at once with `cgroup.kill`, and knows the
//! tree is gone when `cgroup.events` says `populated 0` — a file `poll` wakes on (POLLPRI),
//! so no wait is a sleep loop. Only core files are used: no controller needs enabling.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use crate::os;

pub(crate) use crate::evidence::ownership::CGROUP_PREFIX as PREFIX;

/// Where this process's cgroup is in the cgroup2 hierarchy.
#[derive(Debug)]
pub(crate) struct Hierarchy {
    /// The cgroup2 mount point.
    pub(crate) mount: PathBuf,
    /// This process's own cgroup, as a directory.
    pub(crate) own: PathBuf,
}

/// The cgroup2 hierarchy and this process's place in it, or why there is none (no cgroup2
/// mount, a cgroup outside this mount's view).
pub(crate) fn hierarchy() -> Result<&'static Hierarchy, &'static str> {
    static FOUND: OnceLock<Result<Hierarchy, String>> = OnceLock::new();
    FOUND.get_or_init(discover).as_ref().map_err(String::as_str)
}

fn discover() -> Result<Hierarchy, String> {
    let proc = |rest: &str| crate::os::procfs::path(format_args!("self/{rest}")).map_err(|e| e.to_string());
    let mountinfo = std::fs::read_to_string(proc("mountinfo")?).map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // `id parent maj:min root mount-point options ... - fstype source super-options`
    let (root, mount) = mountinfo
        .lines()
        .find_map(|line| {
            let (fields, fs) = line.split_once(" - ")?;
            (fs.split_whitespace().next() == Some("cgroup2")).then_some(())?;
            let mut f = fields.split_whitespace().skip(3);
            Some((unescape(f.next()?), unescape(f.next()?)))
        })
        .ok_or("no cgroup2 file system is mounted")?;
    let cgroup = std::fs::read_to_string(proc("cgroup")?).map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::")).ok_or("this process is in no cgroup2 cgroup")?;
    let relative = path
        .strip_prefix(root.trim_end_matches('/'))
        .ok_or_else(|| format!("this process's cgroup {path} is outside the cgroup2 mount's root {root}"))?;
    let own = Path::new(&mount).join(relative.trim_start_matches('/'));
    Ok(Hierarchy { mount: PathBuf::from(mount), own })
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A guard's cgroup, created before its child is spawned.
#[derive(Debug)]
pub(crate) struct GuardCgroup {
    dir: PathBuf,
    /// `cgroup.events`, kept open: `poll` on it wakes when `populated` changes.
    events: File,
    /// Its id (the directory's inode number, never reused for the boot): what a record keeps
    /// to tell it from a cgroup made later under the same name.
    id: u64,
    /// Who owns its directory: who made it (or was given it).
    uid: u32,
}

impl GuardCgroup {
    /// Creates `reapkit-<guard>` under this process's cgroup. Returns it and the open
    /// `cgroup.procs` the child writes itself into before exec.
    pub(crate) fn create(guard: &str) -> io::Result<(GuardCgroup, OwnedFd)> {
        let h = hierarchy().map_err(io::Error::other)?;
        let dir = h.own.join(format!("{PREFIX}{guard}"));
        std::fs::create_dir(&dir)?;
        let opened = (|| {
            let procs =
                std::fs::OpenOptions::new().write(true).custom_flags(libc::O_CLOEXEC).open(dir.join("cgroup.procs"))?;
            let events = File::open(dir.join("cgroup.events"))?;
            Ok::<_, io::Error>((procs, events))
        })();
        match opened.and_then(|(procs, events)| Ok((procs, events, std::fs::metadata(&dir)?))) {
            Ok((procs, events, meta)) => {
                use std::os::unix::fs::MetadataExt;
                Ok((GuardCgroup { dir, events, id: meta.ino(), uid: meta.uid() }, procs.into()))
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// The cgroup of a leftover (`dir` found by a sweep), opened to be ended and removed.
    pub(crate) fn open(dir: PathBuf) -> io::Result<GuardCgroup> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a cgroup directory"));
        }
        let events = File::open(dir.join("cgroup.events"))?;
        Ok(GuardCgroup { dir, events, id: meta.ino(), uid: meta.uid() })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its id: the directory's inode number in the cgroup2 file system.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The uid owning its directory.
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    /// Every process in it (and in cgroups below it, which a nested guard may have made).
    pub(crate) fn members(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        let mut buf = String::new();
        while let Some(dir) = dirs.pop() {
            buf.clear();
            if File::open(dir.join("cgroup.procs")).and_then(|mut f| f.read_to_string(&mut buf)).is_ok() {
                pids.extend(buf.split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
            dirs.extend(subgroups(&dir));
        }
        pids
    }

    /// Whether no process is left in it (`populated 0`; zombies do not count).
    pub(crate) fn is_empty(&self) -> bool {
        let mut text = String::with_capacity(64);
        let mut f = &self.events;
        let read = f.rewind().and_then(|()| f.read_to_string(&mut text));
        // Unreadable: the cgroup is gone, so is everything in it.
        read.is_err() || text.lines().any(|l| l == "populated 0")
    }

    /// Waits until it is empty or `deadline` passes; `true` if empty. Event-driven: kernfs
    /// wakes a `poll` for POLLPRI on `cgroup.events` whenever it changes.
    pub(crate) fn wait_empty(&self, deadline: Instant) -> bool {
        loop {
            if self.is_empty() {
                return true;
            }
            if !os::wait_priority(self.events.as_fd(), deadline) {
                return self.is_empty();
            }
        }
    }

    /// The fd to `poll` for a change (POLLPRI), for waits over several cgroups at once.
    pub(crate) fn events_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// Freezes every process in it (`cgroup.freeze`, Linux 5.2) and waits, until `deadline` at
    /// most, for the kernel to say they are (`frozen 1` in `cgroup.events`, a POLLPRI event):
    /// then none of them can fork while the members are listed and signalled. `false` if it
    /// could not be frozen in time (the signals then race with forks, as without it).
    pub(crate) fn freeze(&self, deadline: Instant) -> bool {
        if std::fs::write(self.dir.join("cgroup.freeze"), b"1").is_err() {
            return false;
        }
        loop {
            if self.event("frozen 1") {
                return true;
            }
            if !os::wait_priority(self.events.as_fd(), deadline) {
                return self.event("frozen 1");
            }
        }
    }

    /// Lets its processes run again; the signals sent meanwhile are delivered now.
    pub(crate) fn thaw(&self) {
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), b"0");
    }

    /// Whether `cgroup.events` has the line `line` now.
    fn event(&self, line: &str) -> bool {
        let mut text = String::with_capacity(64);
        let mut f = &self.events;
        f.rewind().and_then(|()| f.read_to_string(&mut text)).is_ok() && text.lines().any(|l| l == line)
    }

    /// SIGKILL to every process in it and below, atomically: a process forking right now
    /// cannot slip out (`cgroup.kill`, Linux 5.14).
    pub(crate) fn kill(&self) -> io::Result<()> {
        std::fs::write(self.dir.join("cgroup.kill"), b"1")
    }

    /// Removes it (and the empty cgroups below it). Only an empty cgroup can go.
    pub(crate) fn remove(&self) -> io::Result<()> {
        remove_tree(&self.dir)
    }

    /// Whether the zombie (or process) `pid` was in this cgroup: its `/proc/<pid>/cgroup` still
    /// names it after exit, until it is reaped.
    pub(crate) fn had(&self, pid: i32) -> bool {
        let Ok(h) = hierarchy() else { return false };
        let Some(path) = cgroup_of(pid) else { return false };
        let Ok(relative) = self.dir.strip_prefix(&h.mount) else { return false };
        let ours = Path::new("/").join(relative);
        Path::new(&path).starts_with(&ours)
    }
}

pub(crate) use crate::os::procfs::cgroup_of;

fn remove_tree(dir: &Path) -> io::Result<()> {
    for sub in subgroups(dir) {
        remove_tree(&sub)?;
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The cgroups directly below `dir`.
fn subgroups(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The pre-exec step: the child writes itself into its cgroup, before its first instruction of
/// its own. `procs` must stay open in the parent until the spawn has returned.
pub(crate) fn join_on_exec(cmd: &mut std::process::Command, procs: &OwnedFd) {
    use std::os::unix::process::CommandExt;
    let fd = procs.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls are allowed: write(2) is one,
    // and it reads nothing but a static byte string.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// Every reapkit cgroup under the cgroup2 mount (a bounded walk), for sweeps: leftovers of
/// guards whose owner died.
pub(crate) fn all_reapkit() -> Vec<PathBuf> {
    let Ok(h) = hierarchy() else { return Vec::new() };
    let mut found = Vec::new();
    let mut frontier = vec![(h.mount.clone(), 0)];
    while let Some((dir, depth)) = frontier.pop() {
        for sub in subgroups(&dir) {
            if sub.file_name().is_some_and(|n| n.to_string_lossy().starts_with(PREFIX)) {
                found.push(sub);
            } else if depth < 16 {
                frontier.push((sub, depth + 1));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_octal_escapes_are_undone() {
        assert_eq!(unescape(r"/sys/fs/cgroup/with\040space"), "/sys/fs/cgroup/with space");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"\134x"), r"\x");
    }
}
