//! The one ownership rule of every sweep — the watchdog, `reap`, `run`, `wrap` and the scope
//! all act only through it: what proves that a process, a cgroup or a keeper found on the
//! machine is a guard's, and what never does.
//!
//! | evidence | proves | never proves on its own |
//! | --- | --- | --- |
//! | a process's environment carries the guard's markers | the process: its starter gave them at exec, and a stranger's process cannot be made to carry them | — |
//! | a ledger record | nothing: it names a pid, a cgroup, a keeper; anyone who can write the directory can write one | the pid, cgroup or keeper it names |
//! | a record *and* the live process it names (pid and start time) carrying its `REAPKIT_GUARD` | the process, and its descendants | — |
//! | a record *and* a live keeper it names carrying `REAPKIT_KEEPER_GUARD` of its guard | the keeper's descendants, whatever their uid (the kernel re-parents every orphan of the tree to it) | — |
//! | a cgroup named `reapkit-<guard>`, of our uid, under the cgroup2 mount, whose id is the one recorded when the guard made it, *witnessed* (below) or with a live member carrying that guard's `REAPKIT_GUARD` | its members that started no earlier than the guard's process (a member is born in it, so never before it; start times count clock ticks, so one of the same tick counts as born in it), whatever their uid | a member older than that: a stranger moved in; reported, never touched |
//! | a cgroup's name, or a record naming a cgroup, with no member that carries the guard's marker | nothing: its members are reported, never touched; once empty and recorded (id and all) it is removed | — |
//!
//! A cgroup is *witnessed* by whoever saw it made: the process whose guard made it (the scope
//! of its test), or its watchdog, which reads each record of its owner the moment it lands
//! ([`Witness`]) and checks it then, while the guard's process runs, carries the marker and
//! sits in that very cgroup. That proof outlives the guard's process: a server that exits on
//! stdin EOF when its owner dies no longer vouches for its cgroup, but its watchdog does. A
//! later sweep (`reap`) has only the disk, and so needs a live marked member.
//!
//! Where a guard holds its containment itself (its own cgroup, its own keeper, made by this
//! process), the proof is that it made it: teardown needs none of this.

use std::path::{Path, PathBuf};

use crate::containment::cgroup::{self, GuardCgroup};
use crate::evidence::ownership::ENV_GUARD;
use crate::os::procfs::{self, MarkerScan, ProcId};

/// What a reapkit cgroup found on the machine turned out to be.
#[derive(Debug)]
pub(super) enum CgroupProof {
    /// Gone, and everything that was in it.
    Gone,
    /// The guard's: `members` are to be ended; `strangers` sit in it but started before the
    /// guard's process, so were moved in from outside: reported, never touched.
    Proven { cgroup: GuardCgroup, members: Vec<ProcId>, strangers: Vec<ProcId> },
    /// Not proven: why. Its `members` are reported, never touched.
    Unproven { why: String, members: Vec<ProcId> },
}

/// Judges the cgroup at `dir` as guard `guard`'s, made when its id was `recorded_id` (`None`:
/// no record names it), for a guard whose process started at `floor` (a start time: the
/// guard's process from its record, else its owner); `witnessed` lists the cgroups (directory
/// and id) the caller saw made.
pub(super) fn cgroup(
    dir: &Path,
    guard: &str,
    recorded_id: Option<u64>,
    floor: u64,
    witnessed: &[(PathBuf, u64)],
) -> CgroupProof {
    let unproven = |why: String| CgroupProof::Unproven { why, members: Vec::new() };
    let hierarchy = match cgroup::hierarchy() {
        Ok(h) => h,
        Err(why) => return unproven(format!("its cgroup {} cannot be checked: {why}", dir.display())),
    };
    let named = dir.file_name().is_some_and(|n| *n == *format!("{}{guard}", cgroup::PREFIX));
    let inside = dir.starts_with(&hierarchy.mount) && dir.components().all(|c| c != std::path::Component::ParentDir);
    if !named || !inside {
        return unproven(format!("the cgroup {} is not one reapkit would make for guard {guard}", dir.display()));
    }
    let cg = match GuardCgroup::open(dir.to_path_buf()) {
        Ok(cg) => cg,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CgroupProof::Gone,
        Err(e) => return unproven(format!("its cgroup {} cannot be read: {e}", dir.display())),
    };
    if cg.uid() != procfs::my_uid() {
        return unproven(format!("its cgroup {} belongs to uid {}, not to you", dir.display(), cg.uid()));
    }
    if recorded_id.is_some_and(|id| id != cg.id()) {
        return unproven(format!(
            "the cgroup {} is not the one its guard made (its id changed: removed and made again by someone)",
            dir.display()
        ));
    }
    let members: Vec<ProcId> = cg.members().into_iter().filter_map(ProcId::of).collect();
    let live = |id: &&ProcId| !procfs::Stat::read(id.pid).is_ok_and(|s| s.is_zombie());
    let marker = format!("{ENV_GUARD}={guard}");
    let mut scan = MarkerScan::new();
    let corroborated = members.iter().filter(live).any(|id| scan.carries(id.pid, marker.as_bytes()));
    let recorded = recorded_id.is_some();
    let witnessed = witnessed.iter().any(|(d, id)| d == dir && *id == cg.id());
    // A recorded cgroup with nothing in it harms no one: it may go without more proof.
    let proven = witnessed || corroborated || (recorded && members.is_empty());
    if !proven {
        let by = if recorded { "its record" } else { "its name" };
        let why = format!(
            "the cgroup {} holds no process carrying {marker}: {by} alone proves nothing, so its {} processes are \
             not touched",
            dir.display(),
            members.len()
        );
        return CgroupProof::Unproven { why, members };
    }
    let (members, strangers) = members.into_iter().partition(|id| id.start_time >= floor);
    CgroupProof::Proven { cgroup: cg, members, strangers }
}

/// Whether the live process `here`, named by a record of guard `guard`, is provably the one the
/// record means: ours, not the reaper or an ancestor, and carrying that guard's marker.
pub(super) fn named_process(here: ProcId, guard: &str) -> Result<(), String> {
    if procfs::self_and_ancestors().contains(&here.pid) {
        return Err("it is this reaper or one of its ancestors".into());
    }
    match procfs::owner_uid(here.pid) {
        Ok(uid) if uid == procfs::my_uid() => {}
        Ok(uid) => return Err(format!("it runs as uid {uid}, not as you")),
        Err(e) => return Err(format!("its owner cannot be read ({e})")),
    }
    if !MarkerScan::new().carries(here.pid, format!("{ENV_GUARD}={guard}").as_bytes()) {
        return Err(format!("it does not carry {ENV_GUARD}={guard}"));
    }
    Ok(())
}

/// Whether the live process `here`, named as the keeper of guard `guard` by a record, is that
/// keeper: it carries `REAPKIT_KEEPER_GUARD=<guard>`.
pub(super) fn named_keeper(here: ProcId, guard: &str) -> bool {
    let entry = format!("{}={guard}", crate::evidence::ownership::ENV_KEEPER_GUARD);
    MarkerScan::new().carries(here.pid, entry.as_bytes())
}

/// A watchdog's witness of its owner's cgroups: it watches the ledger directory, and checks each
/// record of its owner as it lands, while the guard's process still runs.
#[derive(Debug)]
pub(crate) struct Witness {
    dir: PathBuf,
    owner: crate::evidence::identity::OwnerId,
    watch: Option<crate::os::DirWatch>,
    seen: Vec<(PathBuf, u64)>,
}

impl Witness {
    /// Starts watching `dir` for records of `owner`, then checks those already there (the watch
    /// first, so that none lands unseen in between). Without a watch (the portable backend, a
    /// directory that cannot be watched) it witnesses nothing.
    pub(crate) fn new(dir: &Path, owner: &crate::evidence::identity::OwnerId) -> Witness {
        let watch = crate::os::DirWatch::new(dir).ok();
        let mut witness = Witness { dir: dir.to_path_buf(), owner: owner.clone(), watch, seen: Vec::new() };
        if witness.watch.is_some() {
            let names: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
            witness.check(names);
        }
        witness
    }

    /// What to `poll` for readability: a record arrived (call [`Witness::arrived`]).
    pub(crate) fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.watch.as_ref().map(crate::os::DirWatch::fd)
    }

    /// Checks the records that arrived.
    pub(crate) fn arrived(&mut self) {
        let names = self.watch.as_ref().map(crate::os::DirWatch::arrived).unwrap_or_default();
        self.check(names);
    }

    /// The cgroups witnessed so far.
    pub(crate) fn cgroups(&self) -> Vec<(PathBuf, u64)> {
        self.seen.clone()
    }

    fn check(&mut self, names: Vec<std::ffi::OsString>) {
        for name in names {
            let path = self.dir.join(&name);
            let is_record = path.extension().is_some_and(|x| x == "json") && !name.to_string_lossy().starts_with('.');
            let Some(seen) = is_record.then(|| crate::evidence::ledger::read_record(&path).ok()).flatten() else { continue };
            if seen.owner == self.owner {
                self.seen.extend(made_for(&seen));
            }
        }
    }
}

/// The cgroup `record` names, if its guard's process runs in it now, carrying the guard's
/// marker, and the cgroup is the one recorded (its id).
fn made_for(record: &crate::evidence::ledger::Record) -> Option<(PathBuf, u64)> {
    use crate::evidence::ledger::{Contained, Resource};
    let Resource::Process { process, contained: Some(Contained::Cgroup { cgroup, id: Some(id) }), .. } = &record.resource
    else {
        return None;
    };
    let here = ProcId::of(process.pid).filter(|p| p == process)?;
    let cg = GuardCgroup::open(cgroup.clone()).ok().filter(|cg| cg.id() == *id)?;
    let marked = MarkerScan::new().carries(here.pid, format!("{ENV_GUARD}={}", record.guard).as_bytes());
    (marked && cg.members().contains(&here.pid)).then(|| (cgroup.clone(), *id))
}
