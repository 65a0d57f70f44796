//! The suite's own view of the machine: `/proc`, read here rather than through reapkit, so that
//! a check means the same whichever backend reapkit is built with (the portable one reads no
//! `/proc` at all). Identities are [`ProcId`]s, whose start times each backend takes from what
//! the OS offers, so they compare with the ones guards report.

use reapkit::ProcId;

/// Every pid in `/proc`.
pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name, from field 3 (state) on.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

/// Its state letter (`R`, `S`, `Z`, ...), or `None` once it is reaped.
pub fn state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// Its process group.
pub fn pgrp(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// Its session.
pub fn session(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(3)?.parse().ok()
}

/// Whether `pid` exists as a zombie (exited, not yet reaped).
pub fn is_zombie(pid: i32) -> bool {
    matches!(state(pid), Some('Z' | 'X'))
}

/// Its command line, NUL separators as spaces.
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(raw.strip_suffix(b"\0").unwrap_or(&raw)).replace('\0', " ")
}

/// Its direct children, across its threads.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
        .collect()
}

/// Every descendant of `pid` that still exists, breadth first.
pub fn descendants(pid: i32) -> Vec<ProcId> {
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for child in children(p) {
            if let Some(id) = ProcId::of(child) {
                out.push(id);
                frontier.push(child);
            }
        }
    }
    out
}

/// Live processes (zombies' environments are gone) other than this one whose environment holds
/// exactly `entry` (`KEY=value`).
pub fn carrying(entry: &str) -> Vec<ProcId> {
    let me = std::process::id() as i32;
    pids()
        .into_iter()
        .filter(|&pid| pid != me && environ_has(pid, |e| e == entry.as_bytes()))
        .filter_map(ProcId::of)
        .collect()
}

/// Whether `pid`'s environment has the variable `key`, whatever its value.
pub fn has_var(pid: i32, key: &str) -> bool {
    environ_has(pid, |e| e.strip_prefix(key.as_bytes()).is_some_and(|rest| rest.first() == Some(&b'=')))
}

fn environ_has(pid: i32, mut matches: impl FnMut(&[u8]) -> bool) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|&b| b == 0).any(&mut matches))
}

/// This process's open descriptors, from `/proc/self/fd` (the listing's own not counted).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("our own /proc/self/fd").count() - 1
}
