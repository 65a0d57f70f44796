//! The process side of the sweep: the evidence a person needs before a process is killed, and
//! the processes `--match` names.

use crate::evidence::identity::OwnerId;
use crate::evidence::markers::Markers;
use crate::os::procfs::{self, BootClock, ExeState, ProcId, Stat};

use super::report::{Action, FoundBy, Health, Leak, LeakKind};
use super::OwnerHealth;

/// The evidence of a live process, read before anything is done to it. `owner` is where its
/// owner is, as the scope found it.
pub(crate) fn process_leak(
    id: ProcId,
    markers: &Markers,
    found_by: FoundBy,
    owner: OwnerHealth,
    clock: &BootClock,
) -> Leak {
    let stat = Stat::read(id.pid).ok();
    let exe = procfs::exe_state(id.pid, clock.started(id.start_time));
    let health = match (stat, exe) {
        (Some(s), _) if s.is_zombie() => Health::Zombie,
        (_, Some(ExeState::Replaced | ExeState::Deleted)) => Health::StaleBinary,
        _ => owner.health(),
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
        owner: markers.owner.as_ref().map(OwnerId::to_string),
        guard: markers.guard.clone(),
        command: Some(procfs::cmdline(id.pid)).filter(|c| !c.is_empty()),
        cwd: procfs::cwd(id.pid).map(|p| p.display().to_string()),
        rss_bytes: stat.map(|s| s.rss_pages * procfs::page_size()),
        fds: procfs::fd_count(id.pid).ok(),
        threads: stat.map(|s| s.num_threads),
        exe,
        detail: None,
        listening: crate::guard::listening::of(&[id.pid]),
    }
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
