//! Run statistics: how many guards a run created, failed to start, tore down and leaked, and
//! how many escapees their teardowns ended — what the field's FD-leak fixes were measured by.
//!
//! Every test process of a run appends one short line per guard event to `<run id>.log` in
//! this user's `runs` directory, beside the ledger index ([`dir`]; `O_APPEND`: one `write`
//! each, atomic between the run's processes; about 10 µs). `reap --run-id`, `run` and `wrap` read it back into [`RunStats`].
//! The file is read as hostile input like a record: a regular file of ours, opened
//! non-blocking without following a symlink, at most [`MAX_LOG_BYTES`]; a line that does not
//! parse is counted as malformed, never believed.
//!
//! Line format (version 1): `v1 <event> <owner id> [<escapees>]`, `<event>` one of `start` (a
//! guard is about to create its resource), `up` (it exists), `fail` (it existed but did not
//! get ready: handshake, listening), `end` (torn down, with the escapees it ended),
//! `shared-start` (a keeper started a shared fixture), `shared-reuse` (a test attached to one
//! already running).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::evidence::identity::OwnerId;
use crate::evidence::ownership;

/// The most of one run's log read (about 200,000 events).
pub const MAX_LOG_BYTES: u64 = 16 << 20;

/// A guard event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Start,
    Up,
    Fail,
    End {
        escapees: usize,
    },
    /// A fixture keeper started its shared fixture.
    SharedStarted,
    /// A test attached to a shared fixture that was already running.
    SharedReused,
}

/// What a run's guards did, as its log says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Guards whose resource existed (a process spawned, a container created).
    pub guards_created: u64,
    /// Guards that never got ready: the spawn or create failed, or the handshake or readiness
    /// check did.
    pub failed_to_start: u64,
    /// Guards torn down by their drop or shutdown.
    pub torn_down: u64,
    /// Guards created and never torn down by a test process that is gone (forgotten, in a
    /// static, or their test process killed): what the watchdog, the scope or the sweep had to
    /// end. Only what ended counts: the guards of a test process still running are [`live`](Self::live).
    pub leaked: u64,
    /// Guards of test processes still running, not torn down yet: neither torn down nor leaked.
    #[serde(skip_serializing_if = "is_zero")]
    pub live: u64,
    /// Processes other than the guarded one that teardowns had to end: children still running
    /// when their server had gone, and escapees found by the marker.
    pub escapees_ended: u64,
    /// Shared fixtures started by the run's keepers ([`Shared`](crate::Shared)).
    pub shared_started: u64,
    /// Attaches to a shared fixture that was already running: starts the run saved.
    pub shared_reused: u64,
    /// Lines that did not parse (not reapkit's): ignored.
    #[serde(skip_serializing_if = "is_zero")]
    pub malformed_lines: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RunStats {
    /// The statistics of run `run_id` in the ledger directories `dirs`, of every owner or, with
    /// `owner`, of that test process only. `None` when no directory has a log of the run.
    /// The statistics of run `run_id` in the log directory `dir` ([`dir()`]), of every owner
    /// or, with `owner`, of that test process only. `None` when it logged no guard event.
    pub fn read(dir: &Path, run_id: &str, owner: Option<&OwnerId>) -> Option<RunStats> {
        use std::collections::BTreeMap;
        let text = read_log(&log_path(dir, run_id)?)?;
        let owner = owner.map(ToString::to_string);
        let mut stats = RunStats::default();
        // Per test process: guards that came up, and those torn down.
        let mut outstanding: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let (mut starts, mut events) = (0u64, 0u64);
        for line in text.lines() {
            let Some((event, who)) = parse(line) else {
                stats.malformed_lines += 1;
                continue;
            };
            if owner.as_deref().is_some_and(|o| o != who) {
                continue;
            }
            events += 1;
            match event {
                Event::Start => starts += 1,
                Event::Up => {
                    stats.guards_created += 1;
                    outstanding.entry(who).or_default().0 += 1;
                }
                Event::Fail => stats.failed_to_start += 1,
                Event::End { escapees } => {
                    stats.torn_down += 1;
                    stats.escapees_ended += escapees as u64;
                    outstanding.entry(who).or_default().1 += 1;
                }
                Event::SharedStarted => stats.shared_started += 1,
                Event::SharedReused => stats.shared_reused += 1,
            }
        }
        stats.failed_to_start += starts.saturating_sub(stats.guards_created);
        let mut places = crate::evidence::identity::Namespaces::new();
        for (who, (up, ended)) in outstanding {
            let left = up.saturating_sub(ended);
            if left > 0 && gone(who, &mut places) {
                stats.leaked += left;
            } else {
                stats.live += left;
            }
        }
        (events > 0).then_some(stats)
    }

    /// The one summary line: `200 guards created, 3 failed to start, 197 torn down, 0 leaked,
    /// 2 escapees ended`, and `; 2 shared fixtures started, 38 reused` if the run had any.
    pub fn summary(&self) -> String {
        let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let shared = match (self.shared_started, self.shared_reused) {
            (0, 0) => String::new(),
            (started, reused) => {
                format!("; {} started, {reused} reused", plural(started, "shared fixture", "shared fixtures"))
            }
        };
        let live = match self.live {
            0 => String::new(),
            n => format!(", {n} still held by running test processes"),
        };
        format!(
            "{}, {} failed to start, {} torn down, {} leaked{live}, {}{shared}",
            plural(self.guards_created, "guard created", "guards created"),
            self.failed_to_start,
            self.torn_down,
            self.leaked,
            plural(self.escapees_ended, "escapee ended", "escapees ended"),
        )
    }
}

/// This user's run logs: `runs/` beside the ledger index (`$XDG_STATE_HOME/reapkit/runs`).
pub fn dir() -> PathBuf {
    crate::evidence::ledger::index::path().with_file_name("runs")
}

/// Appends `event` of this process to its run's log. Best effort: statistics never fail a
/// guard.
pub(crate) fn note(event: Event) {
    let owner = ownership::Owner::current();
    let dir = dir();
    let Some(path) = log_path(&dir, &owner.run_id) else { return };
    let line = match event {
        Event::Start => format!("v1 start {}\n", owner.id),
        Event::Up => format!("v1 up {}\n", owner.id),
        Event::Fail => format!("v1 fail {}\n", owner.id),
        Event::End { escapees } => format!("v1 end {} {escapees}\n", owner.id),
        Event::SharedStarted => format!("v1 shared-start {}\n", owner.id),
        Event::SharedReused => format!("v1 shared-reuse {}\n", owner.id),
    };
    let file = crate::os::safe_fs::open_append(&path).or_else(|_| {
        std::fs::create_dir_all(&dir)?;
        crate::os::safe_fs::open_append(&path)
    });
    if let Ok(mut file) = file {
        let _ = file.write_all(line.as_bytes());
    }
}

/// Removes run `run_id`'s log from `dir` ([`dir()`]) once the run is over and reported: unless
/// a test process that wrote to it still runs (another job that shares the run id).
pub fn clear(dir: &Path, run_id: &str) {
    if let Some(path) = log_path(dir, run_id) {
        if all_owners_gone(&path, &mut crate::evidence::identity::Namespaces::new()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes the run logs in `dir` ([`dir()`]) of runs that are over: not written to for `idle`
/// and every test process that wrote to them provably gone, or not written to for `max_age` in
/// any case. A sweep without `--run-id` (the CI step after the tests) cannot name the run, but
/// it can see that no one of it is left.
pub fn clear_ended(dir: &Path, idle: std::time::Duration, max_age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut places = crate::evidence::identity::Namespaces::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let meta = entry.metadata().ok().filter(|m| m.is_file());
        let quiet = meta.and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        let Some(quiet) = quiet.filter(|q| *q > idle) else { continue };
        if path.extension().is_none_or(|x| x != "log") {
            continue;
        }
        if quiet > max_age || all_owners_gone(&path, &mut places) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Whether every test process that wrote the log at `path` is provably gone (an empty or
/// unreadable log has none left).
fn all_owners_gone(path: &Path, places: &mut crate::evidence::identity::Namespaces) -> bool {
    let Some(text) = read_log(path) else { return true };
    let mut owners: Vec<&str> = text.lines().filter_map(parse).map(|(_, who)| who).collect();
    owners.sort_unstable();
    owners.dedup();
    owners.iter().all(|o| gone(o, places))
}

/// Whether the test process `owner` (an owner id as the log writes it) is provably gone.
fn gone(owner: &str, places: &mut crate::evidence::identity::Namespaces) -> bool {
    use crate::evidence::identity::Whereabouts;
    owner.parse::<OwnerId>().is_ok_and(|o| matches!(places.owner(&o), Whereabouts::Gone(_) | Whereabouts::OtherBoot))
}

/// `<dir>/<run id>.log`, for a run id that may name a file.
fn log_path(dir: &Path, run_id: &str) -> Option<PathBuf> {
    ownership::valid_id(run_id).then(|| dir.join(format!("{run_id}.log")))
}

/// The log at `path` if it is a regular file of ours of at most [`MAX_LOG_BYTES`].
fn read_log(path: &Path) -> Option<String> {
    let bytes = crate::os::safe_fs::read_bounded(path, MAX_LOG_BYTES).ok()?;
    String::from_utf8(bytes).ok()
}

/// One line: its event and the owner id it names (checked).
fn parse(line: &str) -> Option<(Event, &str)> {
    let mut words = line.split(' ');
    if words.next()? != "v1" {
        return None;
    }
    let event = words.next()?;
    let owner = words.next()?;
    owner.parse::<OwnerId>().ok()?;
    let event = match (event, words.next()) {
        ("start", None) => Event::Start,
        ("up", None) => Event::Up,
        ("fail", None) => Event::Fail,
        ("end", Some(n)) => Event::End { escapees: n.parse().ok()? },
        ("shared-start", None) => Event::SharedStarted,
        ("shared-reuse", None) => Event::SharedReused,
        _ => return None,
    };
    words.next().is_none().then_some((event, owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_runs_events_per_owner_and_ignores_what_is_not_reapkits() {
        let dir = tempfile::tempdir().unwrap();
        let me = OwnerId::of_self().unwrap();
        let other = "1:2:3:00000000-0000-4000-8000-000000000000";
        let log = format!(
            "v1 start {me}\nv1 up {me}\nv1 end {me} 2\nv1 start {me}\nv1 start {me}\nv1 up {me}\nv1 fail {me}\n\
             v1 shared-start {me}\nv1 shared-reuse {me}\nv1 shared-reuse {me}\nv1 shared-reuse {me} 1\n\
             v1 start {other}\nv1 up {other}\nv1 up {me} extra\nv2 up {me}\nv1 up ../../etc\n\u{1b}[31m\n"
        );
        std::fs::write(dir.path().join("r1.log"), log).unwrap();
        let dir = dir.path();

        let mine = RunStats::read(dir, "r1", Some(&me)).unwrap();
        assert_eq!(
            mine,
            RunStats {
                guards_created: 2,
                failed_to_start: 2,
                torn_down: 1,
                leaked: 0,
                live: 1,
                escapees_ended: 2,
                shared_started: 1,
                shared_reused: 2,
                malformed_lines: 5
            }
        );
        // `other` is of another boot: gone, so its guard that never ended leaked; ours still runs.
        let all = RunStats::read(dir, "r1", None).unwrap();
        assert_eq!((all.guards_created, all.leaked, all.live), (3, 1, 1));
        assert_eq!(RunStats::read(dir, "r2", None), None);
        let idle = OwnerId::here(reapkit_self_parent());
        assert_eq!(RunStats::read(dir, "r1", Some(&idle)), None, "a test process that made no guard");
        assert_eq!(RunStats::read(dir, "../r1", None), None, "a run id that names another file");
        assert_eq!(
            mine.summary(),
            "2 guards created, 2 failed to start, 1 torn down, 0 leaked, 1 still held by running test processes, 2 \
             escapees ended; 1 shared fixture started, 2 reused"
        );
    }

    #[test]
    fn a_run_is_over_when_its_log_is_quiet_and_its_test_processes_are_gone_or_it_is_a_week_old() {
        let dir = tempfile::tempdir().unwrap();
        let me = OwnerId::of_self().unwrap();
        let dead = crate::os::procfs::ProcId { pid: me.process.pid, start_time: me.process.start_time + 1 };
        let dead = OwnerId { process: dead, ..me.clone() };
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let week_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 24 * 3600);
        let write = |name: &str, owner: &OwnerId, written: Option<std::time::SystemTime>| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("v1 start {owner}\nv1 up {owner}\n")).unwrap();
            if let Some(at) = written {
                std::fs::File::options().write(true).open(&path).unwrap().set_modified(at).unwrap();
            }
            path
        };
        let over = write("over.log", &dead, Some(hour_ago));
        let running = write("running.log", &me, Some(hour_ago));
        let fresh = write("fresh.log", &dead, None);
        let ancient = write("ancient.log", &me, Some(week_ago));
        clear_ended(dir.path(), std::time::Duration::from_secs(60), std::time::Duration::from_secs(7 * 24 * 3600));
        assert!(!over.exists(), "quiet, and its one test process is gone");
        assert!(running.exists(), "its test process lives");
        assert!(fresh.exists(), "written to within the minute");
        assert!(!ancient.exists(), "over a week quiet, whoever wrote it");
    }

    /// Our parent: a live process of this boot and namespace that logged nothing.
    fn reapkit_self_parent() -> crate::os::procfs::ProcId {
        let parent = crate::os::procfs::Stat::read(std::process::id() as i32).unwrap().ppid;
        crate::os::procfs::ProcId::of(parent).unwrap()
    }

    #[test]
    fn a_fifo_or_a_symlink_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.log")).unwrap();
        assert_eq!(RunStats::read(dir.path(), "fifo", None), None);
        assert_eq!(RunStats::read(dir.path(), "link", None), None);
    }
}
