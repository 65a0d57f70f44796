//! The process side of the sweep: reading the markers out of an environment block, and the
//! evidence a person needs before a process is killed.

use crate::ownership::{ENV_GUARD, ENV_OWNER, ENV_RUN_ID, ENV_SUPERVISOR, ENV_TEST, ENV_WATCHDOG_OWNER};
use crate::procfs::{self, BootClock, ExeState, ProcId, Stat};

use super::report::{Action, FoundBy, Health, Leak, LeakKind};

/// The reapkit variables of one process's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Markers {
    pub(crate) run_id: Option<String>,
    /// `REAPKIT_OWNER` as written; [`Markers::owner`] parses it.
    pub(crate) owner: Option<String>,
    pub(crate) guard: Option<String>,
    pub(crate) test: Option<String>,
    /// Set only on watchdogs: whom they watch.
    pub(crate) watchdog_of: Option<String>,
    pub(crate) supervisor: Option<String>,
}

impl Markers {
    /// The markers of a NUL-separated environment block, or `None` if it carries none of the
    /// ownership markers (most processes: the common case is one `memchr`-speed pass).
    pub(crate) fn parse(environ: &[u8]) -> Option<Markers> {
        let mut m = Markers::default();
        let mut any = false;
        for entry in environ.split(|&b| b == 0) {
            if !entry.starts_with(b"REAPKIT_") {
                continue;
            }
            let Some(eq) = entry.iter().position(|&b| b == b'=') else { continue };
            let (key, value) = (&entry[..eq], String::from_utf8_lossy(&entry[eq + 1..]).into_owned());
            let slot = match key {
                k if k == ENV_RUN_ID.as_bytes() => &mut m.run_id,
                k if k == ENV_OWNER.as_bytes() => &mut m.owner,
                k if k == ENV_GUARD.as_bytes() => &mut m.guard,
                k if k == ENV_TEST.as_bytes() => &mut m.test,
                k if k == ENV_WATCHDOG_OWNER.as_bytes() => &mut m.watchdog_of,
                k if k == ENV_SUPERVISOR.as_bytes() => &mut m.supervisor,
                _ => continue,
            };
            any |= key != ENV_SUPERVISOR.as_bytes();
            *slot = Some(value);
        }
        any.then_some(m)
    }

    pub(crate) fn is_watchdog(&self) -> bool {
        self.watchdog_of.is_some()
    }
}

/// Whether the owner `<pid>:<starttime>` is provably gone: no process with that pid, or one with
/// another start time (the pid was recycled). An unparsable owner is not provably anything.
pub(crate) fn owner_is_dead(owner: &str) -> Option<bool> {
    owner.parse::<ProcId>().ok().map(|id| !id.is_alive())
}

/// The evidence of a live process, read before anything is done to it.
pub(crate) fn process_leak(id: ProcId, markers: &Markers, found_by: FoundBy, clock: &BootClock) -> Leak {
    let stat = Stat::read(id.pid).ok();
    let exe = procfs::exe_state(id.pid, clock.started(id.start_time));
    let owner_dead = markers.owner.as_deref().and_then(owner_is_dead);
    let health = match (stat, exe) {
        (Some(s), _) if s.is_zombie() => Health::Zombie,
        (_, Some(ExeState::Replaced | ExeState::Deleted)) => Health::StaleBinary,
        _ if owner_dead == Some(true) => Health::Orphaned,
        _ => Health::Running,
    };
    Leak {
        kind: LeakKind::Process,
        test: markers.test.clone(),
        run_id: markers.run_id.clone(),
        age_s: Some(clock.age(id.start_time).as_secs()),
        action: Action::WouldReap,
        found_by,
        health,
        pid: Some(id.pid),
        id: None,
        owner: markers.owner.clone(),
        guard: markers.guard.clone(),
        command: Some(procfs::cmdline(id.pid)).filter(|c| !c.is_empty()),
        cwd: procfs::cwd(id.pid).map(|p| p.display().to_string()),
        rss_bytes: stat.map(|s| s.rss_pages * procfs::page_size()),
        fds: procfs::fd_count(id.pid).ok(),
        threads: stat.map(|s| s.num_threads),
        exe,
        detail: None,
    }
}

/// The markers of one process, read on their own (for descendants found by ancestry).
pub(crate) fn markers_of(pid: i32) -> Markers {
    let mut buf = Vec::new();
    if procfs::read_into(&format!("/proc/{pid}/environ"), &mut buf).is_err() {
        return Markers::default();
    }
    Markers::parse(&buf).unwrap_or_default()
}

/// Processes of our user whose command line satisfies `matches` (for `--match`), never this
/// process or its ancestors.
pub(crate) fn matching_processes(matches: &dyn Fn(&str) -> bool) -> Vec<ProcId> {
    let protected = procfs::self_and_ancestors();
    procfs::pids()
        .filter(|pid| !protected.contains(pid))
        .filter(|&pid| procfs::is_ours(pid))
        .filter(|&pid| {
            let cmd = procfs::cmdline(pid);
            !cmd.is_empty() && matches(&cmd)
        })
        .filter_map(ProcId::of)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers_and_ignores_lookalikes() {
        let env = b"PATH=/bin\0REAPKIT_RUN_ID=r1\0REAPKIT_OWNER=10:20\0REAPKIT_TEST=a::b\0XREAPKIT_GUARD=no\0";
        let m = Markers::parse(env).unwrap();
        assert_eq!(m.run_id.as_deref(), Some("r1"));
        assert_eq!(m.owner.as_deref(), Some("10:20"));
        assert_eq!(m.test.as_deref(), Some("a::b"));
        assert_eq!(m.guard, None);
        assert!(!m.is_watchdog());
        assert_eq!(Markers::parse(b"PATH=/bin\0HOME=/root\0"), None);
        assert_eq!(Markers::parse(b"REAPKIT_SUPERVISOR=1:2\0"), None, "a supervisor alone proves nothing");
    }

    #[test]
    fn a_recycled_owner_pid_counts_as_dead() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert_eq!(owner_is_dead(&me.to_string()), Some(false));
        let recycled = ProcId { start_time: me.start_time + 1, ..me };
        assert_eq!(owner_is_dead(&recycled.to_string()), Some(true));
        assert_eq!(owner_is_dead("not-an-owner"), None);
    }
}
