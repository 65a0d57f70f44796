//! Targeted `/proc` reads with reused buffers.
//!
//! On the portable backend (`crate::os`) there is no process table to read: every reader here
//! answers as on a machine without `/proc` (`path()` says `Unsupported`), except the start
//! times and boot clock, which come from the OS's own calls.
//!
//! Why not `sysinfo`: a full `sysinfo` refresh costs 17–38 ms on a 2-core machine because it
//! reads and parses everything about every process; teardown needs three or four fields of a
//! handful of processes, and the marker scan needs only `environ`. Reading exactly those files
//! into one reused buffer is ~5 µs a process. This module only *reads*; it never signals.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A process named by pid *and* start time, so a recycled pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProcId {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot (the portable backend:
    /// microseconds since the epoch, or 0 where the OS keeps no start time).
    pub start_time: u64,
}

impl ProcId {
    /// The identity of `pid` now, or `None` if it no longer exists.
    pub fn of(pid: i32) -> Option<ProcId> {
        crate::os::start_time(pid).map(|start_time| ProcId { pid, start_time })
    }

    /// Whether this very process (not a recycled pid) still exists, zombies included.
    pub fn is_alive(&self) -> bool {
        ProcId::of(self.pid).is_some_and(|now| now == *self)
    }
}

impl std::str::FromStr for ProcId {
    type Err = String;

    /// Parses `<pid>:<starttime>`, the form of `REAPKIT_OWNER` and the ledger's `owner`.
    fn from_str(s: &str) -> Result<ProcId, String> {
        let (pid, start) = s.split_once(':').ok_or_else(|| format!("{s:?} is not <pid>:<starttime>"))?;
        match (pid.parse::<i32>(), start.parse::<u64>()) {
            (Ok(pid), Ok(start_time)) if pid > 0 => Ok(ProcId { pid, start_time }),
            _ => Err(format!("{s:?} is not <pid>:<starttime>")),
        }
    }
}

impl std::fmt::Display for ProcId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.pid, self.start_time)
    }
}

/// The fields of `/proc/<pid>/stat` that reapkit uses.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z`, ...
    pub state: u8,
    pub ppid: i32,
    /// The kernel's per-process flags (`PF_*`).
    pub flags: u32,
    pub pgrp: i32,
    pub num_threads: u64,
    pub start_time: u64,
    /// Resident set size in pages.
    pub rss_pages: u64,
}

impl Stat {
    pub fn read(pid: i32) -> io::Result<Stat> {
        let mut buf = Vec::with_capacity(512);
        read_into(&path(format_args!("{pid}/stat"))?, &mut buf)?;
        Stat::parse(&buf).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))
    }

    /// Parses a `stat` line. The command name (field 2) may contain spaces and parentheses,
    /// so fields are counted from the *last* `)`.
    pub(crate) fn parse(line: &[u8]) -> Option<Stat> {
        let close = line.iter().rposition(|&b| b == b')')?;
        let rest = std::str::from_utf8(&line[close + 1..]).ok()?;
        // After ")": field 3 (state) is index 0.
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        let field = |n: usize| f.get(n - 3).copied();
        Some(Stat {
            state: field(3)?.as_bytes().first().copied()?,
            ppid: field(4)?.parse().ok()?,
            pgrp: field(5)?.parse().ok()?,
            flags: field(9)?.parse().ok()?,
            num_threads: field(20)?.parse().ok()?,
            start_time: field(22)?.parse().ok()?,
            rss_pages: field(24)?.parse().ok()?,
        })
    }

    pub fn is_zombie(&self) -> bool {
        self.state == b'Z' || self.state == b'X'
    }

    /// Whether it is exiting on its own (`PF_EXITING`): about to be a zombie, its environment
    /// already unreadable.
    pub fn is_exiting(&self) -> bool {
        const PF_EXITING: u32 = 0x4;
        self.flags & PF_EXITING != 0
    }
}

/// `/proc/<rest>`, or `Unsupported` where this build reads no process table (the portable
/// backend: what macOS and the BSDs have).
pub(crate) fn path(rest: std::fmt::Arguments<'_>) -> io::Result<String> {
    if !crate::os::PROC_TABLE {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the portable backend reads no process table (/proc): this needs reapkit's Linux backend",
        ));
    }
    Ok(format!("/proc/{rest}"))
}

/// Reads a whole `/proc` file into `buf` (cleared first), reusing its allocation.
pub(crate) fn read_into(path: &str, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    File::open(path)?.read_to_end(buf)?;
    Ok(())
}

/// The direct children of `pid`, across all its threads (a child belongs to the thread that
/// forked it, and orphans adopted by a subreaper may land on any of its threads).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = path(format_args!("{pid}/task")).and_then(std::fs::read_dir) else { return out };
    let mut buf = Vec::with_capacity(64);
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if read_into(path.to_str().unwrap_or_default(), &mut buf).is_ok() {
            out.extend(
                std::str::from_utf8(&buf)
                    .unwrap_or_default()
                    .split_ascii_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Every live descendant of `pid` (not `pid` itself), breadth first.
pub fn descendants(pid: i32) -> Vec<ProcId> {
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in children(p) {
            if let Some(id) = ProcId::of(c) {
                out.push(id);
                frontier.push(c);
            }
        }
    }
    out
}

/// The cgroup2 path of `pid` (`/a/b`, relative to the mount's root), from `/proc/<pid>/cgroup`.
pub(crate) fn cgroup_of(pid: i32) -> Option<String> {
    let lines = path(format_args!("{pid}/cgroup")).and_then(std::fs::read_to_string).ok()?;
    lines.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// Number of open fds of `pid`: `stat("/proc/<pid>/fd").st_size` on Linux ≥ 6.2 (≈ 0.5 µs),
/// else a directory listing.
pub fn fd_count(pid: i32) -> io::Result<usize> {
    if !crate::os::PROC_TABLE {
        return fd_numbers(pid).map(|n| n.len());
    }
    let dir = path(format_args!("{pid}/fd"))?;
    let size = std::fs::metadata(&dir)?.size();
    if size > 0 {
        return Ok(size as usize);
    }
    Ok(std::fs::read_dir(&dir)?.count())
}

/// The open descriptor numbers of `pid`, without their targets: one `getdents` pass, about
/// 4× cheaper than a snapshot (a scoped test takes it at its start, and reads the targets only
/// if the count changed by its end).
pub(crate) fn fd_numbers(pid: i32) -> io::Result<Vec<i32>> {
    fd_numbers_in(&mut fd_dir(pid)?, pid)
}

/// `/proc/<pid>/fd`, opened as a directory; on the portable backend `/dev/fd`, which lists
/// this process's own descriptors only.
pub(crate) fn fd_dir(pid: i32) -> io::Result<nix::dir::Dir> {
    use nix::fcntl::OFlag;
    let path = if crate::os::PROC_TABLE {
        format!("/proc/{pid}/fd")
    } else if pid as u32 == std::process::id() {
        "/dev/fd".to_owned()
    } else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the portable backend lists only this process's own descriptors (/dev/fd)",
        ));
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    Ok(nix::dir::Dir::open(path.as_str(), flags, nix::sys::stat::Mode::empty())?)
}

/// The descriptor numbers listed in `dir` (of `pid`), not counting the directory's own
/// descriptor when a process lists itself.
pub(crate) fn fd_numbers_in(dir: &mut nix::dir::Dir, pid: i32) -> io::Result<Vec<i32>> {
    use std::os::fd::AsRawFd;
    let own = (pid as u32 == std::process::id()).then(|| dir.as_raw_fd());
    let mut found = Vec::new();
    for entry in dir.iter() {
        if let Some(fd) = entry?.file_name().to_str().ok().and_then(|n| n.parse::<i32>().ok()) {
            if Some(fd) != own {
                found.push(fd);
            }
        }
    }
    Ok(found)
}

/// What a `get_server_info` tool or a monitoring service shows of a live process.
#[derive(Debug, Clone)]
pub(crate) struct Usage {
    pub(crate) pgid: i32,
    pub(crate) rss_bytes: u64,
    pub(crate) fds: usize,
    pub(crate) threads: u64,
    /// Live processes below it.
    pub(crate) descendants: Vec<ProcId>,
}

impl Usage {
    /// The usage of `id`, or `NotFound` ("the process has exited") if it is gone, a zombie,
    /// or its pid now names another process.
    pub(crate) fn read(id: ProcId) -> io::Result<Usage> {
        let stat = Stat::read(id.pid)?;
        if stat.is_zombie() || stat.start_time != id.start_time {
            return Err(io::Error::new(io::ErrorKind::NotFound, "the process has exited"));
        }
        Ok(Usage {
            pgid: stat.pgrp,
            rss_bytes: stat.rss_pages * page_size(),
            fds: fd_count(id.pid)?,
            threads: stat.num_threads,
            descendants: descendants(id.pid),
        })
    }
}

/// Page size in bytes, for turning `rss_pages` into bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Our real uid: whose processes, records and directories reapkit may act on.
pub fn my_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// Every pid in `/proc` (processes, not threads), in directory order.
pub fn pids() -> impl Iterator<Item = i32> {
    path(format_args!(""))
        .and_then(std::fs::read_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
}

/// Whether `pid` runs as our real uid (see [`owner_uid`]).
pub fn is_ours(pid: i32) -> bool {
    owner_uid(pid).is_ok_and(|u| u == my_uid())
}

/// The real uid of `pid`, from the `Uid:` line of its `status`.
///
/// Not the owner of its `/proc` files: a process that switched user without exec afterwards
/// (a privilege-dropping server) is not dumpable, and its `/proc` files then belong to root.
pub fn owner_uid(pid: i32) -> io::Result<u32> {
    let status = std::fs::read_to_string(path(format_args!("{pid}/status"))?)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid: line in /proc status"))
}

/// `pid`'s command line, NUL separators turned into spaces (for reports).
pub fn cmdline(pid: i32) -> String {
    let mut buf = Vec::new();
    if path(format_args!("{pid}/cmdline")).and_then(|p| read_into(&p, &mut buf)).is_err() {
        return String::new();
    }
    let trimmed = buf.strip_suffix(b"\0").unwrap_or(&buf);
    String::from_utf8_lossy(trimmed).replace('\0', " ")
}

/// Whether the NUL-separated `environ` block holds exactly the entry `entry` (`KEY=value`).
pub(crate) fn environ_has(environ: &[u8], entry: &[u8]) -> bool {
    environ.split(|&b| b == 0).any(|e| e == entry)
}

/// Finds processes of our own user whose initial environment holds `entry` (`KEY=value`).
///
/// One reused buffer for every `environ` read. Skips this process, its ancestors and every
/// other user's processes: the marker is our proof of ownership, and even a forged marker must
/// not let us reach another user or the process that runs us.
pub struct MarkerScan {
    buf: Vec<u8>,
    uid: u32,
    /// This process and its ancestors, looked up on the first full scan only.
    protected: Option<Vec<i32>>,
    /// The first time a file could not be opened for want of descriptors: the scan then saw
    /// only part of the machine.
    exhausted: Option<io::Error>,
}

impl Default for MarkerScan {
    fn default() -> Self {
        MarkerScan::new()
    }
}

impl MarkerScan {
    pub fn new() -> MarkerScan {
        MarkerScan { buf: Vec::with_capacity(16 * 1024), uid: my_uid(), protected: None, exhausted: None }
    }

    /// All live processes carrying `entry` in their environment.
    pub fn find(&mut self, entry: &str) -> Vec<ProcId> {
        self.find_matching(|environ| environ_has(environ, entry.as_bytes()))
    }

    /// All live processes of our user whose environment block (NUL-separated) satisfies `matches`.
    pub fn find_matching(&mut self, mut matches: impl FnMut(&[u8]) -> bool) -> Vec<ProcId> {
        self.scan(|_, environ| matches(environ).then_some(())).into_iter().map(|(id, ())| id).collect()
    }

    /// Every live process of our user (not this one, not an ancestor) for which `inspect` of
    /// its pid and environment block returns something, with what it returned. One pass over
    /// `/proc`, one reused buffer.
    pub fn scan<T>(&mut self, mut inspect: impl FnMut(i32, &[u8]) -> Option<T>) -> Vec<(ProcId, T)> {
        let mut found = Vec::new();
        let protected = self.protected.get_or_insert_with(self_and_ancestors).clone();
        for pid in pids().filter(|pid| !protected.contains(pid)) {
            let mut seen = None;
            // fstat of environ rules out most other users cheaply; the real uid, read only for
            // the few that match, rules out the non-dumpable ones whose files root owns.
            let matched = self.environ_matches(pid, |environ| {
                seen = inspect(pid, environ);
                seen.is_some()
            }) && is_ours(pid);
            if matched {
                if let (Some(id), Some(value)) = (ProcId::of(pid), seen) {
                    found.push((id, value));
                }
            }
        }
        found
    }

    /// Whether `pid` is ours (same real uid) and its environment carries `entry`.
    pub fn carries(&mut self, pid: i32, entry: &[u8]) -> bool {
        self.environ_matches(pid, |environ| environ_has(environ, entry)) && is_ours(pid)
    }

    /// Whether `pid` is ours and carries any variable starting with `prefix` (`REAPKIT_`).
    pub fn carries_prefix(&mut self, pid: i32, prefix: &[u8]) -> bool {
        self.environ_matches(pid, |environ| environ.split(|&b| b == 0).any(|e| e.starts_with(prefix))) && is_ours(pid)
    }

    /// Why the last scans may have missed processes: the descriptor limit was hit.
    pub fn exhausted(&self) -> Option<&io::Error> {
        self.exhausted.as_ref()
    }

    fn environ_matches(&mut self, pid: i32, mut matches: impl FnMut(&[u8]) -> bool) -> bool {
        let mut f = match path(format_args!("{pid}/environ")).and_then(File::open) {
            Ok(f) => f,
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    self.exhausted.get_or_insert(e);
                }
                return false;
            }
        };
        // fstat on the open file: the uid of the very process whose environ we read.
        if !f.metadata().is_ok_and(|m| m.uid() == self.uid) {
            return false;
        }
        self.buf.clear();
        f.read_to_end(&mut self.buf).is_ok() && matches(&self.buf)
    }
}

/// This process and every ancestor up to pid 1: never to be touched by any reaper. Without a
/// process table, this process and its parent.
pub fn self_and_ancestors() -> Vec<i32> {
    let mut out = vec![std::process::id() as i32];
    if !crate::os::PROC_TABLE {
        out.push(nix::unistd::getppid().as_raw());
        return out;
    }
    let mut pid = out[0];
    while pid > 1 {
        match Stat::read(pid) {
            Ok(s) if s.ppid > 0 => {
                out.push(s.ppid);
                pid = s.ppid;
            }
            _ => break,
        }
    }
    out
}

/// `pid`'s working directory, if we may read it.
pub fn cwd(pid: i32) -> Option<std::path::PathBuf> {
    path(format_args!("{pid}/cwd")).and_then(std::fs::read_link).ok()
}

/// Whether a process still runs the binary it started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExeState {
    /// The file it was started from is unchanged.
    Current,
    /// The file was rewritten after the process started (a rebuild): it serves stale code.
    Replaced,
    /// The file was deleted (or replaced by rename) after the process started.
    Deleted,
}

/// Whether `pid`'s executable was replaced or deleted since it started, given its start as
/// wall-clock time; `None` if we may not look.
pub fn exe_state(pid: i32, started: std::time::SystemTime) -> Option<ExeState> {
    let target = path(format_args!("{pid}/exe")).and_then(std::fs::read_link).ok()?;
    if target.to_string_lossy().ends_with(" (deleted)") {
        return Some(ExeState::Deleted);
    }
    let modified = std::fs::metadata(&target).and_then(|m| m.modified()).ok()?;
    // The start time is only known to a second (`btime`) plus a clock tick: a binary written
    // just before the process started must not look rebuilt.
    let tolerance = std::time::Duration::from_millis(1100);
    Some(if modified > started + tolerance { ExeState::Replaced } else { ExeState::Current })
}

/// Turns start times ([`ProcId::start_time`]) into wall-clock times and ages.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    boot: std::time::SystemTime,
    ticks_per_second: u64,
}

impl BootClock {
    /// The clock of this build's start times: on Linux the boot time (`btime` of `/proc/stat`),
    /// read once; on the portable backend the epoch, in microseconds.
    pub fn read() -> BootClock {
        if !crate::os::PROC_TABLE {
            return BootClock { boot: std::time::UNIX_EPOCH, ticks_per_second: 1_000_000 };
        }
        BootClock::read_linux()
    }

    /// Linux's: the boot time and the clock tick.
    pub(crate) fn read_linux() -> BootClock {
        let btime = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok()))
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        BootClock {
            boot: std::time::UNIX_EPOCH + std::time::Duration::from_secs(btime),
            ticks_per_second: if ticks > 0 { ticks as u64 } else { 100 },
        }
    }

    /// When a process with this start time started.
    pub fn started(&self, start_time: u64) -> std::time::SystemTime {
        let micros = u128::from(start_time) * 1_000_000 / u128::from(self.ticks_per_second);
        self.boot + std::time::Duration::from_micros(micros.min(u128::from(u64::MAX)) as u64)
    }

    /// How long ago a process with this start time started.
    pub fn age(&self, start_time: u64) -> std::time::Duration {
        self.started(start_time).elapsed().unwrap_or_default()
    }
}

/// Whether `/proc` is mounted and readable at all (it is the only way we see processes).
pub fn available() -> bool {
    crate::os::PROC_TABLE && Path::new("/proc/self/stat").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_and_parens_in_comm() {
        let line =
            b"42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 12345 1000 250 18446744073709551615";
        let s = Stat::parse(line).unwrap();
        assert_eq!((s.state, s.ppid, s.pgrp), (b'S', 1, 42));
        assert_eq!((s.num_threads, s.start_time, s.rss_pages), (3, 12345, 250));
        assert!(!s.is_exiting(), "flags 4194560 lack PF_EXITING");
        let exiting = b"42 (a) R 1 42 42 0 -1 4194564 100 0 0 0 1 2 0 0 20 0 3 0 12345 1000 250 1";
        assert!(Stat::parse(exiting).unwrap().is_exiting());
    }

    #[test]
    fn environ_match_is_exact_per_entry() {
        let env = b"A=1\0REAPKIT_GUARD=g-12\0B=2\0";
        assert!(environ_has(env, b"REAPKIT_GUARD=g-12"));
        assert!(!environ_has(env, b"REAPKIT_GUARD=g-1"));
        assert!(!environ_has(env, b"GUARD=g-12"));
    }

    #[test]
    fn find_matching_sees_only_processes_whose_environment_matches() {
        let marker = format!("REAPKIT_PROCFS_SELFTEST_{}", std::process::id());
        let spawn = |with_marker: bool| {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30");
            if with_marker {
                cmd.env(&marker, "1");
            }
            cmd.spawn().expect("sleep starts")
        };
        let (mut marked, mut plain) = (spawn(true), spawn(false));
        let prefix = format!("{marker}=");
        let found =
            MarkerScan::new().find_matching(|env| env.split(|&b| b == 0).any(|e| e.starts_with(prefix.as_bytes())));
        for child in [&mut marked, &mut plain] {
            child.kill().expect("our own child");
            child.wait().expect("reaped");
        }
        let pids: Vec<i32> = found.iter().map(|id| id.pid).collect();
        assert!(pids.contains(&(marked.id() as i32)), "{pids:?}");
        assert!(!pids.contains(&(plain.id() as i32)), "{pids:?}");
    }

    #[test]
    fn self_is_alive_and_protected() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        assert!(self_and_ancestors().contains(&me.pid));
        assert!(fd_count(me.pid).unwrap() >= 3);
    }
}
