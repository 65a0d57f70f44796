//! The sweep: finds what escaped every guard — by proof of ownership, never by name —, shows
//! the evidence, then reaps it.
//!
//! Proof of ownership is one of: the process's environment carries reapkit's markers
//! (`REAPKIT_RUN_ID`, `REAPKIT_OWNER`), a ledger record names it by pid *and* start time, it
//! descends from a proven leftover, or a Docker object carries the `reapkit.*` labels. Within
//! that, a [`Scope`] says whose leftovers to take: by default only those whose owner (pid +
//! start time) is dead, so a concurrent run is never touched. Only processes of the invoking
//! user are read at all; this process and its ancestors are never touched.
//!
//! Two phases, so that a caller prints the evidence before anything is killed:
//! [`Sweep::find`] reads, [`Findings::reap`] acts (or [`Findings::report`] for `--dry-run`).
//!
//! ```no_run
//! // An xtask step: reap what earlier runs leaked, fail the build if anything was found.
//! let findings = reapkit::sweep::Sweep::new(reapkit::sweep::Scope::dead_owners()).find();
//! reapkit::sweep::write_table(&mut std::io::stdout(), findings.leaks())?;
//! let report = findings.reap();
//! std::process::exit(report.exit_code);
//! # Ok::<(), std::io::Error>(())
//! ```

#[cfg(feature = "docker")]
mod docker;
mod processes;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::ledger::{self, Record, Resource};
use crate::ownership;
use crate::process::Member;
use crate::procfs::{self, BootClock, MarkerScan, ProcId, Stat};
use crate::{sys, teardown};

pub(crate) use processes::Markers;
pub(crate) use report::{action_words, words};
pub use report::{
    write_table, Action, FoundBy, Health, Leak, LeakKind, Report, EXIT_CLEAN, EXIT_LEAKS, EXIT_UNCHECKED,
};

/// The SIGTERM-to-SIGKILL grace a sweep gives leftovers (they are orphans: nobody waits on them).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(1);
/// How long a sweep lets watchdogs whose owner died finish their own reaping before it looks:
/// their grace plus SIGKILL and container removal, with room to spare.
const WATCHDOG_WAIT: Duration = Duration::from_secs(5);

/// Whose leftovers a sweep takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Leftovers whose owner is provably dead, of any run or of one run only: the CI sweep.
    DeadOwners { run_id: Option<String> },
    /// Everything of one run, its owners alive or not: a supervisor whose command has ended.
    Run(String),
    /// Everything owned by one (ended) process: `reapkit wrap` after its test, the watchdog.
    Owner(ProcId),
    /// Everything one test of a live process registered: a test scope after the test's body.
    Test { owner: ProcId, test: String },
    /// Everything tracked, nothing reaped: `reapkit ps`.
    Everything,
}

impl Scope {
    /// Leftovers of any run whose owner is dead.
    pub fn dead_owners() -> Scope {
        Scope::DeadOwners { run_id: None }
    }

    /// Whether a resource of `run_id` owned by `owner` (`<pid>:<starttime>`) for `test` is in scope.
    fn includes(&self, run_id: Option<&str>, owner: Option<&str>, test: Option<&str>) -> bool {
        let owned_by = |o: &ProcId| owner.and_then(|s| s.parse::<ProcId>().ok()) == Some(*o);
        match self {
            Scope::DeadOwners { run_id: want } => {
                want.as_deref().is_none_or(|w| run_id == Some(w))
                    && owner.and_then(processes::owner_is_dead) == Some(true)
            }
            Scope::Run(want) => run_id == Some(want.as_str()),
            Scope::Owner(o) => owned_by(o),
            Scope::Test { owner: o, test: want } => owned_by(o) && test == Some(want.as_str()),
            Scope::Everything => true,
        }
    }
}

/// Which Docker engines a sweep checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerCheck {
    /// The configured engine: `DOCKER_HOST`, else the local socket if it exists. None
    /// configured is fine; a configured one that cannot be reached makes the sweep unchecked.
    Auto,
    /// This engine (`unix://…` or `tcp://…`), which must be reachable.
    Host(String),
    /// Only the engines named in ledger records (the watchdog's choice).
    RecordsOnly,
    /// No engine at all (`--no-docker`).
    Off,
}

/// Processes started without reapkit, taken on the user's explicit word (`--match`).
pub struct Matcher {
    matches: Box<dyn Fn(&str) -> bool>,
    keep_newest: usize,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher").field("keep_newest", &self.keep_newest).finish_non_exhaustive()
    }
}

/// A sweep, configured: [`Sweep::find`] reads the machine.
#[derive(Debug)]
pub struct Sweep {
    scope: Scope,
    ledger_dir: Option<PathBuf>,
    older_than: Option<Duration>,
    matcher: Option<Matcher>,
    docker: DockerCheck,
    grace: Duration,
    /// A supervisor also takes every live descendant of itself.
    supervising: bool,
    /// A watchdog keeps the records of what it reaped, marked, as evidence for the CI sweep.
    as_watchdog: bool,
}

impl Sweep {
    pub fn new(scope: Scope) -> Sweep {
        Sweep {
            scope,
            ledger_dir: None,
            older_than: None,
            matcher: None,
            docker: DockerCheck::Auto,
            grace: DEFAULT_GRACE,
            supervising: false,
            as_watchdog: false,
        }
    }

    /// The ledger directory to read (default as for guards: `REAPKIT_LEDGER_DIR`, else
    /// `<target dir>/reapkit`).
    pub fn ledger_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ledger_dir = Some(dir.into());
        self
    }

    /// Only leftovers at least this old.
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Also takes processes of our user whose command line satisfies `matches`, though they
    /// carry no marker, keeping the `keep_newest` most recently started ones. Opt-in only.
    pub fn matching(mut self, matches: impl Fn(&str) -> bool + 'static, keep_newest: usize) -> Self {
        self.matcher = Some(Matcher { matches: Box::new(matches), keep_newest });
        self
    }

    pub fn docker(mut self, check: DockerCheck) -> Self {
        self.docker = check;
        self
    }

    /// The SIGTERM-to-SIGKILL grace for leftover processes (default [`DEFAULT_GRACE`]).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub(crate) fn supervising(mut self) -> Self {
        self.supervising = true;
        self
    }

    pub(crate) fn keeping_evidence(mut self) -> Self {
        self.as_watchdog = true;
        self
    }

    /// Reads the machine: ledger, `/proc`, Docker. Never signals anything.
    pub fn find(&self) -> Findings {
        let dir = self.ledger_dir.clone().unwrap_or_else(ledger::default_dir);
        let mut f = Findings {
            leaks: Vec::new(),
            targets: Vec::new(),
            stale: Vec::new(),
            watchdogs: Vec::new(),
            unchecked: Vec::new(),
            notes: Vec::new(),
            ledger_dir: dir.clone(),
            clock: BootClock::read(),
            host: ownership::hostname(),
            grace: self.grace,
            as_watchdog: self.as_watchdog,
            listing: self.scope == Scope::Everything,
            supervising: self.supervising,
        };
        let contents = ledger::read_dir(&dir).unwrap_or_else(|e| {
            f.unchecked.push(e.to_string());
            ledger::Contents::default()
        });
        for (path, reason) in &contents.unreadable {
            f.unchecked.push(format!(
                "ledger record {} is unreadable ({reason}); every other record was checked. \
                 Look at it, then delete it",
                path.display()
            ));
        }

        let mut scan = MarkerScan::new();
        let mut marked = scan.scan(|_, environ| Markers::parse(environ));
        if self.waits_for_watchdogs() && self.wait_for_watchdogs(&marked) {
            marked = scan.scan(|_, environ| Markers::parse(environ));
        }
        for (id, markers) in marked {
            if markers.is_watchdog() {
                if self.scope.includes(markers.run_id.as_deref(), markers.watchdog_of.as_deref(), None) {
                    f.watchdogs.push(id);
                }
            } else if self.scope.includes(markers.run_id.as_deref(), markers.owner.as_deref(), markers.test.as_deref())
            {
                f.push_process(id, markers, FoundBy::Marker, None);
            }
        }
        let mut roots: Vec<(ProcId, Markers)> =
            f.targets.iter().filter_map(|t| t.process()).map(|(id, m)| (id, m.clone())).collect();
        if self.supervising {
            if let Some(me) = ProcId::of(std::process::id() as i32) {
                roots.push((me, Markers::default()));
            }
        }
        for (root, markers) in roots {
            f.push_descendants(root, &markers);
        }

        let mut container_records = Vec::new();
        for (path, record) in contents.records {
            if self.record_in_scope(&record, &f.host) {
                f.push_record(path, record, &mut container_records);
            }
        }
        #[cfg(feature = "docker")]
        docker::find(self, container_records, &mut f);
        #[cfg(not(feature = "docker"))]
        if !container_records.is_empty() {
            f.unchecked.push(format!(
                "{} container records could not be checked: this build of reapkit has no `docker` feature",
                container_records.len()
            ));
        }

        if let Some(matcher) = &self.matcher {
            f.push_matches(matcher);
        }
        if let Some(min) = self.older_than {
            f.keep_older_than(min);
        }
        f
    }

    fn record_in_scope(&self, record: &Record, host: &str) -> bool {
        // An owner on another machine cannot be proven dead from here (leases are not built).
        let same_host = record.owner_host == host || !matches!(self.scope, Scope::DeadOwners { .. });
        same_host && self.scope.includes(Some(&record.run_id), Some(&record.owner), Some(&record.test))
    }

    /// The CI sweep and `reapkit run` let working watchdogs finish first; a watchdog itself,
    /// `reapkit wrap` (whose test's watchdog waits for it) and `ps` do not wait.
    fn waits_for_watchdogs(&self) -> bool {
        !self.as_watchdog && matches!(self.scope, Scope::DeadOwners { .. } | Scope::Run(_))
    }

    /// Waits, bounded, for watchdogs in scope whose owner died and who have no live supervisor
    /// to defer to: they are reaping right now. Returns whether there were any.
    fn wait_for_watchdogs(&self, marked: &[(ProcId, Markers)]) -> bool {
        let working: Vec<Member> = marked
            .iter()
            .filter(|(_, m)| m.is_watchdog())
            .filter(|(_, m)| m.watchdog_of.as_deref().and_then(processes::owner_is_dead) == Some(true))
            .filter(|(_, m)| m.supervisor.as_deref().and_then(processes::owner_is_dead) != Some(false))
            .filter(|(_, m)| self.scope.includes(m.run_id.as_deref(), m.watchdog_of.as_deref(), None))
            .filter_map(|(id, _)| Member::open(*id))
            .collect();
        if working.is_empty() {
            return false;
        }
        let fds: Vec<_> = working.iter().map(|m| std::os::fd::AsFd::as_fd(&m.pidfd)).collect();
        sys::wait_all_readable(&fds, Instant::now() + WATCHDOG_WAIT);
        true
    }
}

/// What a sweep found, before anything is done: print [`Findings::leaks`], then
/// [`Findings::reap`] (or [`Findings::report`] to only list them).
#[derive(Debug)]
pub struct Findings {
    leaks: Vec<Leak>,
    /// What each leak is, for acting on it; `targets[i]` belongs to `leaks[i]`.
    targets: Vec<Target>,
    /// Records whose resource is already gone: cleared without counting as leaks.
    stale: Vec<PathBuf>,
    /// reapkit's own watchdogs in scope: ended without being reported as leaks.
    watchdogs: Vec<ProcId>,
    unchecked: Vec<String>,
    notes: Vec<String>,
    ledger_dir: PathBuf,
    clock: BootClock,
    host: String,
    grace: Duration,
    as_watchdog: bool,
    listing: bool,
    supervising: bool,
}

/// A ledger record as read by `find`, with where it lives: kept so that acting on it needs no
/// second read.
type Recorded = (PathBuf, Record);

/// What a leak is, for acting on it.
#[derive(Debug)]
enum Target {
    Process {
        id: ProcId,
        markers: Markers,
        record: Option<Recorded>,
    },
    #[cfg(feature = "docker")]
    Docker(docker::Object),
    /// Only evidence is left (a record a watchdog marked as reaped): clear it.
    Evidence(PathBuf),
}

impl Target {
    fn process(&self) -> Option<(ProcId, &Markers)> {
        match self {
            Target::Process { id, markers, .. } => Some((*id, markers)),
            _ => None,
        }
    }

    fn recorded(&self) -> Option<&Recorded> {
        match self {
            Target::Process { record, .. } => record.as_ref(),
            #[cfg(feature = "docker")]
            Target::Docker(object) => object.record.as_ref(),
            Target::Evidence(_) => None,
        }
    }

    fn record_path(&self) -> Option<&PathBuf> {
        match self {
            Target::Evidence(path) => Some(path),
            _ => self.recorded().map(|(path, _)| path),
        }
    }
}

impl Findings {
    /// The leaks, with their evidence, in the order they were found.
    pub fn leaks(&self) -> &[Leak] {
        &self.leaks
    }

    /// The report without acting: every leak stays as it is (`--dry-run`, `ps`).
    pub fn report(mut self) -> Report {
        let action = if self.listing { Action::Listed } else { Action::WouldReap };
        for leak in &mut self.leaks {
            if leak.action == Action::WouldReap {
                leak.action = action.clone();
            }
        }
        Report::new(true, self.leaks, self.unchecked, self.notes)
    }

    /// Ends every leak: processes by the guard's protocol (SIGTERM to all at once, grace,
    /// SIGKILL), Docker objects by forced removal with volumes; then clears their records.
    pub fn reap(mut self) -> Report {
        self.end_processes();
        if self.supervising {
            reap_adopted_zombies();
        }
        #[cfg(feature = "docker")]
        docker::remove(&mut self.leaks, &self.targets, &mut self.unchecked);
        self.settle_records();
        Report::new(false, self.leaks, self.unchecked, self.notes)
    }

    /// Names `test` as the owner of leaks that carry no test name of their own (unmarked
    /// descendants of a supervised test).
    pub(crate) fn attribute(&mut self, test: &str) {
        for leak in self.leaks.iter_mut().filter(|l| l.test.is_none()) {
            leak.test = Some(test.to_owned());
        }
    }

    fn end_processes(&mut self) {
        let mut members = Vec::new();
        for (i, target) in self.targets.iter().enumerate() {
            if let Some((id, _)) = target.process() {
                match Member::open(id) {
                    Some(m) => members.push((i, m)),
                    None => self.leaks[i].action = Action::AlreadyGone,
                }
            }
        }
        let watchdogs: Vec<Member> = self.watchdogs.iter().filter_map(|id| Member::open(*id)).collect();
        let all: Vec<Member> = members
            .into_iter()
            .map(|(i, m)| {
                self.leaks[i].action = Action::Killed;
                m
            })
            .chain(watchdogs)
            .collect();
        for survivor in teardown::end_leftovers(&all, self.grace) {
            if let Some(leak) = self.leaks.iter_mut().find(|l| l.pid == Some(survivor.pid)) {
                leak.action = Action::Failed;
                leak.detail = Some("survived SIGKILL (uninterruptible sleep?); look at /proc/<pid>/stack".into());
            } else {
                self.notes.push(format!("reapkit watchdog pid {} survived SIGKILL", survivor.pid));
            }
        }
    }

    /// Clears the records of what is gone; a watchdog instead marks them reaped, as evidence.
    fn settle_records(&mut self) {
        let ended = |a: &Action| matches!(a, Action::Killed | Action::Removed | Action::AlreadyGone);
        for (leak, target) in self.leaks.iter().zip(&self.targets) {
            let done = ended(&leak.action) || leak.action == Action::ReapedByWatchdog;
            if !done {
                continue;
            }
            if self.as_watchdog {
                if ended(&leak.action) {
                    if let Err(e) = self.mark_reaped(target, leak) {
                        self.unchecked.push(e);
                    }
                }
            } else if let Some(path) = target.record_path() {
                remove_record(path, &mut self.unchecked);
            }
        }
        for path in &self.stale {
            remove_record(path, &mut self.unchecked);
        }
        if !self.stale.is_empty() {
            self.notes.push(format!("cleared {} ledger records of resources that were already gone", self.stale.len()));
        }
    }

    /// Keeps (or creates) the record of something the watchdog reaped, marked as such.
    fn mark_reaped(&self, target: &Target, leak: &Leak) -> Result<(), String> {
        let reaped = Some(ledger::Reaped { by: "watchdog".into(), at: ledger::now_rfc3339() });
        let (dir, mut record) = match target.recorded() {
            Some((path, record)) => (path.parent().map(PathBuf::from).unwrap_or_default(), record.clone()),
            None => match target {
                Target::Process { id, markers, .. } => {
                    (self.ledger_dir.clone(), escapee_record(*id, markers, leak, &self.host))
                }
                _ => return Ok(()),
            },
        };
        record.reaped = reaped;
        ledger::Entry::write(&dir, &record).map(drop).map_err(|e| e.to_string())
    }

    /// Whether `pid` is already among the leaks.
    fn has_process(&self, pid: i32) -> bool {
        self.targets.iter().any(|t| t.process().is_some_and(|(p, _)| p.pid == pid))
    }

    fn push_process(&mut self, id: ProcId, markers: Markers, found_by: FoundBy, record: Option<Recorded>) {
        if self.has_process(id.pid) {
            return;
        }
        self.leaks.push(processes::process_leak(id, &markers, found_by, &self.clock));
        self.targets.push(Target::Process { id, markers, record });
    }

    /// Live descendants of `root`: ours by ancestry, even without markers of their own.
    fn push_descendants(&mut self, root: ProcId, inherited: &Markers) {
        for d in procfs::descendants(root.pid) {
            if Stat::read(d.pid).is_ok_and(|s| s.is_zombie()) || !procfs::is_ours(d.pid) {
                continue;
            }
            let own = processes::markers_of(d.pid);
            if own.is_watchdog() {
                self.watchdogs.push(d);
                continue;
            }
            let markers = if own == Markers::default() { inherited.clone() } else { own };
            self.push_process(d, markers, FoundBy::Descendant, None);
        }
    }

    fn push_record(&mut self, path: PathBuf, record: Record, containers: &mut Vec<(PathBuf, Record)>) {
        if record.reaped.is_some() {
            if !self.as_watchdog {
                self.leaks.push(evidence_leak(&record, &self.clock));
                self.targets.push(Target::Evidence(path));
            }
            return;
        }
        let Resource::Process { process, .. } = record.resource else {
            containers.push((path, record));
            return;
        };
        if let Some(Target::Process { record: slot, .. }) =
            self.targets.iter_mut().find(|t| t.process().is_some_and(|(p, _)| p == process))
        {
            *slot = Some((path, record));
            return;
        }
        if process.is_alive() && procfs::is_ours(process.pid) && !procfs::self_and_ancestors().contains(&process.pid) {
            let markers = Markers {
                run_id: Some(record.run_id.clone()),
                owner: Some(record.owner.clone()),
                guard: Some(record.guard.clone()),
                test: Some(record.test.clone()),
                ..Markers::default()
            };
            self.push_process(process, markers.clone(), FoundBy::Ledger, Some((path, record)));
            self.push_descendants(process, &markers);
        } else {
            self.stale.push(path);
        }
    }

    fn push_matches(&mut self, matcher: &Matcher) {
        let mut found = processes::matching_processes(&*matcher.matches);
        found.retain(|id| !self.has_process(id.pid));
        found.sort_by_key(|id| std::cmp::Reverse(id.start_time));
        for id in found.into_iter().skip(matcher.keep_newest) {
            self.push_process(id, processes::markers_of(id.pid), FoundBy::Match, None);
        }
    }

    fn keep_older_than(&mut self, min: Duration) {
        let pairs = std::mem::take(&mut self.leaks).into_iter().zip(std::mem::take(&mut self.targets));
        (self.leaks, self.targets) = pairs.filter(|(l, _)| l.age_s.is_none_or(|a| a >= min.as_secs())).unzip();
    }
}

/// A supervisor is the subreaper of its command: the zombies of orphans that died are its
/// children now, and nobody else will reap them.
fn reap_adopted_zombies() {
    for pid in procfs::children(std::process::id() as i32) {
        if Stat::read(pid).is_ok_and(|s| s.is_zombie()) {
            if let Some(m) = ProcId::of(pid).and_then(Member::open) {
                sys::reap_pidfd(std::os::fd::AsFd::as_fd(&m.pidfd));
            }
        }
    }
}

fn remove_record(path: &std::path::Path, unchecked: &mut Vec<String>) {
    if let Err(e) = ledger::Entry::at(path.to_path_buf()).remove() {
        unchecked.push(format!(
            "could not remove ledger record {}: {e}. Make its directory writable, or delete the record",
            path.display()
        ));
    }
}

/// The record a watchdog writes for a process it found by marker only (a guard's child or
/// escapee): named after the guard *and* the pid, so it never replaces the guard's own record,
/// and filled from the evidence taken before the kill (the process is gone now).
fn escapee_record(id: ProcId, markers: &Markers, leak: &Leak, host: &str) -> Record {
    let guard = markers.guard.as_deref().unwrap_or("escapee");
    Record {
        version: 1,
        guard: format!("{guard}-pid{}-{}", id.pid, id.start_time),
        run_id: markers.run_id.clone().unwrap_or_default(),
        owner: markers.owner.clone().unwrap_or_default(),
        owner_host: host.to_owned(),
        test: markers.test.clone().unwrap_or_default(),
        created: ledger::now_rfc3339(),
        resource: Resource::Process {
            process: id,
            pgid: id.pid,
            command: leak.command.iter().flat_map(|c| c.split(' ')).map(str::to_owned).collect(),
            cwd: leak.cwd.as_ref().map(PathBuf::from),
        },
        reaped: None,
    }
}

/// A leak known only from the record a watchdog left after reaping it.
fn evidence_leak(record: &Record, clock: &BootClock) -> Leak {
    let (kind, pid, id, command, cwd, age_s) = match &record.resource {
        Resource::Process { process, command, cwd, .. } => (
            LeakKind::Process,
            Some(process.pid),
            None,
            Some(command.join(" ")),
            cwd.as_ref().map(|c| c.display().to_string()),
            Some(clock.age(process.start_time).as_secs()),
        ),
        Resource::Container { id, image, .. } => {
            (LeakKind::Container, None, Some(id.clone()), Some(image.clone()), None, age_of(&record.created))
        }
    };
    let reaped = record.reaped.as_ref();
    Leak {
        kind,
        test: Some(record.test.clone()),
        run_id: Some(record.run_id.clone()),
        age_s,
        action: Action::ReapedByWatchdog,
        found_by: FoundBy::Watchdog,
        health: Health::Gone,
        pid,
        id,
        owner: Some(record.owner.clone()),
        guard: Some(record.guard.clone()),
        command,
        cwd,
        rss_bytes: None,
        fds: None,
        threads: None,
        exe: None,
        detail: reaped.map(|r| format!("its owner died; the {} reaped it at {}", r.by, r.at)),
    }
}

/// Seconds since an RFC 3339 time.
fn age_of(rfc3339: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(rfc3339).ok()?;
    Some(t.elapsed().unwrap_or_default().as_secs())
}
