//! The sweep: finds what escaped every guard — by proof of ownership, never by name —, shows
//! the evidence, then reaps it.
//!
//! Proof of ownership is one of: the process descends from a supervisor (its subreaper) or
//! from a proven leftover, its environment carries reapkit's markers (`REAPKIT_RUN_ID`,
//! `REAPKIT_OWNER`), a ledger record names it by pid and start time *and* the process carries
//! that record's guard marker (a record alone names a pid, it proves nothing), or a Docker
//! object carries the `reapkit.*` labels. Within that, a [`Scope`] says whose leftovers to
//! take: by default only those whose owner — a process on one boot, in one PID namespace — is
//! provably dead, so a concurrent run, or one in a container, is never touched; where that
//! cannot be proven (a namespace not visible from here, another host) the resource is
//! *unchecked* (exit 2). Only processes of the invoking user are touched; this process and its
//! ancestors never.
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
mod proof;
mod report;
mod scope;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::containment::cgroup::GuardCgroup;
use crate::evidence::identity::{OwnerId, Viewpoint, Whereabouts};
use crate::evidence::ledger::{self, Record, Resource};
use crate::os::member::Member;
use crate::evidence::ownership;
use crate::os::procfs::{self, BootClock, MarkerScan, ProcId, Stat};
use crate::evidence::run_stats::{self, RunStats};
use crate::{os, guard::teardown};

use crate::evidence::markers::{self, Markers};
pub(crate) use proof::Witness;
pub(crate) use report::{action_words, words};
pub use report::{
    write_columns, write_table, Action, Columns, FoundBy, Health, Leak, LeakKind, Report, EXIT_CLEAN, EXIT_LEAKS,
    EXIT_UNCHECKED,
};
pub use scope::Scope;
pub(crate) use scope::{Claim, Judge, OwnerHealth, Verdict};

/// The SIGTERM-to-SIGKILL grace a sweep gives leftovers (they are orphans: nobody waits on them).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(1);
/// How long a sweep lets watchdogs whose owner died finish their own reaping before it looks:
/// their grace plus SIGKILL and container removal, with room to spare.
const WATCHDOG_WAIT: Duration = Duration::from_secs(5);

/// How long a sweep waits for all Docker engines together (they are asked concurrently).
pub const DEFAULT_DOCKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Which Docker engines a sweep checks. Every engine checked is asked concurrently, under one
/// deadline ([`Sweep::docker_timeout`]): N silent engines cost one timeout, not N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerCheck {
    /// The configured engine (`DOCKER_HOST`, else the local socket if it exists) and those
    /// named in ledger records. None configured is fine; one that cannot be reached makes the
    /// sweep unchecked.
    Auto,
    /// This engine only (`--docker-host`): records naming others are left alone, with a note.
    Host(String),
    /// This engine and those named in ledger records (a test scope's choice).
    HostAndRecords(String),
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
    docker_timeout: Duration,
    grace: Duration,
    /// A watchdog keeps the records of what it reaped, marked, as evidence for the CI sweep.
    as_watchdog: bool,
    /// Cgroups (directory and id) the caller saw its guards make ([`proof`]).
    witnessed: Vec<(PathBuf, u64)>,
    /// Every ledger of this user and every leftover on the machine, not only this project's.
    all_projects: bool,
}

impl Sweep {
    pub fn new(scope: Scope) -> Sweep {
        Sweep {
            scope,
            ledger_dir: None,
            older_than: None,
            matcher: None,
            docker: DockerCheck::Auto,
            docker_timeout: DEFAULT_DOCKER_TIMEOUT,
            grace: DEFAULT_GRACE,
            as_watchdog: false,
            witnessed: Vec::new(),
            all_projects: false,
        }
    }

    /// The ledger directory to read (default as for guards: `REAPKIT_LEDGER_DIR`, else
    /// `<target dir>/reapkit`).
    pub fn ledger_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ledger_dir = Some(dir.into());
        self
    }

    /// Judges the whole machine (`--all`): every ledger this user's guards wrote to (the index)
    /// and every leftover whose owner is dead, whatever project it belongs to. By default a
    /// sweep reads this project's ledger only ([`ledger::default_dir`], or the one given), and
    /// one of dead owners of any run judges only what that ledger's records attribute to it —
    /// their guards and owners — so that another project's state never fails this one's run.
    pub fn all_projects(mut self, all: bool) -> Self {
        self.all_projects = all;
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

    /// How long all Docker engines together may take to answer (default
    /// [`DEFAULT_DOCKER_TIMEOUT`]); one that has not answered by then is unchecked.
    pub fn docker_timeout(mut self, timeout: Duration) -> Self {
        self.docker_timeout = timeout;
        self
    }

    /// The scope this sweep was built for.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The SIGTERM-to-SIGKILL grace for leftover processes (default [`DEFAULT_GRACE`]).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub(crate) fn keeping_evidence(mut self) -> Self {
        self.as_watchdog = true;
        self
    }

    /// Cgroups (directory and id) the caller saw its guards make: proven without a marked
    /// member ([`proof`]).
    pub(crate) fn witnessed(mut self, cgroups: Vec<(PathBuf, u64)>) -> Self {
        self.witnessed = cgroups;
        self
    }

    /// Reads the machine: ledger, `/proc`, Docker. Never signals anything.
    pub fn find(&self) -> Findings {
        // The ledger asked for; else this project's, and with `all_projects` every one this
        // user's guards wrote to.
        let default = ledger::default_dir();
        let others: Vec<PathBuf> = match &self.ledger_dir {
            Some(_) => Vec::new(),
            None => ledger::index::read().into_iter().filter(|d| *d != default).collect(),
        };
        // A sweep scoped to a run or a supervised command reads them all: its scope is not a
        // project, and no other project's leftover is in it.
        let whole_machine = matches!(self.scope, Scope::DeadOwners { run_id: None } | Scope::Everything);
        let dirs: Vec<PathBuf> = match &self.ledger_dir {
            Some(dir) => vec![dir.clone()],
            None if self.all_projects || !whole_machine => std::iter::once(default).chain(others.clone()).collect(),
            None => vec![default],
        };
        let dir = dirs[0].clone();
        let mut f = Findings {
            leaks: Vec::new(),
            targets: Vec::new(),
            stale: Vec::new(),
            watchdogs: Vec::new(),
            cgroups: Vec::new(),
            unchecked: Vec::new(),
            notes: Vec::new(),
            ledger_dir: dir.clone(),
            clock: BootClock::read(),
            grace: self.grace,
            as_watchdog: self.as_watchdog,
            listing: self.scope == Scope::Everything,
            judge: Judge::new(self.scope.clone(), ownership::hostname()),
            stats: None,
            witnessed: self.witnessed.clone(),
            project: None,
        };
        f.stats = f.run().and_then(|(run_id, owner)| RunStats::read(&run_stats::dir(), &run_id, owner.as_ref()));
        if let Err(why) = Viewpoint::current().usable() {
            f.unchecked.push(format!("nothing was checked: {why}"));
            return f;
        }
        if !crate::os::PROC_TABLE {
            // After a test, on top of its guards' own teardown, the gap is the report's note: it
            // is this OS's, not the test's. Anywhere else the answer is incomplete (exit 2).
            let said = if matches!(self.scope, Scope::Test { .. }) { &mut f.notes } else { &mut f.unchecked };
            said.push(format!(
                "no process was checked: the portable backend ({}) reads no process table, so leftover processes \
                 can be neither found nor proven ours; ledger records and containers were checked. Sweep \
                 processes with reapkit on Linux",
                std::env::consts::OS
            ));
        } else if let Err(e) = std::fs::read_dir("/proc") {
            f.unchecked
                .push(format!("nothing was checked: /proc cannot be listed: {}", crate::error::Error::io("listing /proc", e)));
            return f;
        }
        let mut contents = ledger::Contents::default();
        let mut read = Vec::new();
        for dir in &dirs {
            match ledger::read_dir(dir) {
                Ok(c) => {
                    read.push(format!("{} ({} records)", dir.display(), c.records.len() + c.unreadable.len()));
                    contents.records.extend(c.records);
                    contents.unreadable.extend(c.unreadable);
                }
                Err(e) => f.unchecked.push(e.to_string()),
            }
        }
        if self.ledger_dir.is_none() {
            f.notes.push(format!("read the ledgers: {}", read.join(", ")));
            if !self.all_projects && whole_machine && !others.is_empty() {
                f.notes.push(format!(
                    "{} other ledgers of this user (other projects) were not read: `--all` reads them",
                    others.len()
                ));
            }
        }
        if !self.all_projects && self.scope == (Scope::DeadOwners { run_id: None }) {
            f.project = Some(Project::of(&contents.records));
        }
        for (path, reason) in &contents.unreadable {
            f.unchecked.push(format!(
                "ledger record {} is unreadable ({reason}); every other record was checked. \
                 Look at it, then delete it",
                path.display()
            ));
        }

        // A supervisor's tree first: what lives below it is its command's, whatever it carries.
        let me = ProcId::of(std::process::id() as i32);
        if let (true, Some(me)) = (self.scope.supervises(), me) {
            f.judge.tree = procfs::descendants(me.pid).iter().map(|d| d.pid).collect();
        }
        let mut scan = MarkerScan::new();
        let mut marked = scan.scan(|_, environ| Markers::parse(environ));
        if let Scope::Wrapped { .. } = self.scope {
            f.judge.spare_live_shared_fixtures(&marked);
        }
        if self.waits_for_watchdogs() && self.wait_for_watchdogs(&marked, &mut f.judge) {
            marked = scan.scan(|_, environ| Markers::parse(environ));
        }
        if let Some(e) = scan.exhausted() {
            let e = std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EMFILE));
            f.unchecked
                .push(format!("the process scan saw only part of the machine: {}", crate::error::Error::io("/proc", e)));
        }
        for (id, markers) in marked {
            f.push_marked(id, markers);
        }
        let roots: Vec<(ProcId, Markers)> =
            f.targets.iter().filter_map(|t| t.process()).map(|(id, m)| (id, m.clone())).collect();
        for (root, markers) in roots {
            f.push_descendants(root, &markers, false);
        }
        // A supervisor's tree is its containment: every orphan of its command is re-parented to
        // it, whatever uid the command switched to.
        if let (true, Some(me)) = (self.scope.supervises(), me) {
            f.push_descendants(me, &Markers::default(), true);
        }

        let mut container_records = Vec::new();
        for (path, record) in contents.records {
            f.push_record(path, record, &mut container_records);
        }
        f.push_unrecorded_cgroups();
        #[cfg(feature = "docker")]
        docker::find(self, container_records, &mut f);
        #[cfg(not(feature = "docker"))]
        if !container_records.is_empty() {
            f.unchecked.push(format!(
                "{} container records could not be checked: this build of reapkit has no `docker` feature",
                container_records.len()
            ));
        }

        if f.listing {
            f.notes.push(format!("containment: {}", crate::containment::describe_machine()));
            f.notes.extend(guarantee_notes(&crate::containment::capabilities::capabilities()));
        }
        if let Some(matcher) = &self.matcher {
            f.push_matches(matcher);
        }
        if let Some(min) = self.older_than {
            f.keep_older_than(min);
        }
        if let Some(n) = f.project.as_ref().map(|p| p.elsewhere).filter(|&n| n > 0) {
            f.notes.push(format!(
                "{n} leftovers of other projects or runs (no record of this project's ledger names them) were left \
                 alone: `reapkit reap --all` judges the whole machine"
            ));
        }
        f
    }

    /// The CI sweep and `reapkit run` let working watchdogs finish first; `reapkit wrap` only
    /// shared fixture keepers ending their fixtures (its test's watchdog waits for *it*); a
    /// watchdog itself and `ps` do not wait.
    fn waits_for_watchdogs(&self) -> bool {
        !self.as_watchdog && matches!(self.scope, Scope::DeadOwners { .. } | Scope::Run { .. } | Scope::Wrapped { .. })
    }

    /// Waits, bounded, for watchdogs in scope whose owner died and who have no live supervisor
    /// to defer to: they are reaping right now. Returns whether there were any.
    fn wait_for_watchdogs(&self, marked: &[(ProcId, Markers)], judge: &mut Judge) -> bool {
        let mut working: Vec<Member> = Vec::new();
        // A supervisor's tree holds keepers of any uid (a test that switched uid), which the
        // marker scan (our uid) does not show: their markers are read one by one.
        let below: Vec<(ProcId, Markers)> = judge
            .tree
            .iter()
            .filter(|pid| !marked.iter().any(|(id, _)| id.pid == **pid))
            .filter_map(|&pid| Some((ProcId::of(pid)?, markers::markers_of(pid))))
            .filter(|(_, m)| m.keeper)
            .collect();
        for (id, m) in marked.iter().chain(&below) {
            let Some(owner) = m.guardian_of().filter(|_| m.malformed.is_none()) else { continue };
            let in_scope = match &self.scope {
                Scope::Run { .. } => judge.tree.contains(&id.pid),
                // A keeper ending its tree because its owner died, or a fixture keeper its run.
                Scope::Wrapped { .. } => (m.shared.is_some() || m.keeper) && judge.tree.contains(&id.pid),
                _ => matches!(judge.verdict(&Claim { owner: Some(owner), ..m.claim() }), Verdict::Take(_)),
            };
            let owner_dead = judge.owner_health(owner, None) == Ok(OwnerHealth::Dead);
            let deferring =
                m.supervisor.as_ref().is_some_and(|s| judge.owner_health(s, None) == Ok(OwnerHealth::Alive));
            if in_scope && owner_dead && !deferring {
                working.extend(Member::open(*id));
            }
        }
        if working.is_empty() {
            return false;
        }
        let fds: Vec<_> = working.iter().map(|m| m.handle.fd()).collect();
        os::wait_all_readable(&fds, Instant::now() + WATCHDOG_WAIT);
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
    /// reapkit's own watchdogs and keepers in scope: ended without being reported as leaks.
    watchdogs: Vec<ProcId>,
    /// Cgroups of guards in scope, proven (see `proof`): ended and removed after their
    /// processes — by `cgroup.kill` where every member is the guard's, else member by member.
    cgroups: Vec<(GuardCgroup, bool)>,
    unchecked: Vec<String>,
    notes: Vec<String>,
    ledger_dir: PathBuf,
    clock: BootClock,
    grace: Duration,
    as_watchdog: bool,
    listing: bool,
    judge: Judge,
    /// The statistics of the run (or test process) in scope, read before anything was done.
    stats: Option<RunStats>,
    /// Cgroups the sweep's caller saw made ([`Sweep::witnessed`]).
    witnessed: Vec<(PathBuf, u64)>,
    /// The project a sweep of dead owners of any run judges (not with `all_projects`).
    project: Option<Project>,
}

/// What one project's ledger attributes to it: the guards and owners its records name. A sweep
/// of this project judges only leftovers these claim; the rest are counted, never touched.
#[derive(Debug, Default)]
struct Project {
    guards: std::collections::HashSet<String>,
    owners: std::collections::HashSet<OwnerId>,
    /// Leftovers found that belong to no record of this project.
    elsewhere: usize,
}

impl Project {
    fn of(records: &[(PathBuf, Record)]) -> Project {
        let guards = records.iter().map(|(_, r)| r.guard.clone()).collect();
        let owners = records.iter().map(|(_, r)| r.owner.clone()).collect();
        Project { guards, owners, elsewhere: 0 }
    }

    /// Whether a leftover with this guard and owner is this project's.
    fn claims(&self, guard: Option<&str>, owner: Option<&OwnerId>) -> bool {
        guard.is_some_and(|g| self.guards.contains(g)) || owner.is_some_and(|o| self.owners.contains(o))
    }
}

/// A ledger record as read by `find`, with where it lives: kept so that acting on it needs no
/// second read.
type Recorded = (PathBuf, Record);

/// What a leak is, for acting on it. Sized by its process variant: a sweep holds one per leak,
/// a few at most, so boxing would buy nothing.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
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
    /// A dead owner's record whose process had ended: evidence to keep (a watchdog marks it)
    /// or, once reported, clear.
    Ended(Recorded),
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
            Target::Ended(recorded) => Some(recorded),
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

    /// What could not be checked so far, each line with its cause and fix.
    pub fn unchecked(&self) -> &[String] {
        &self.unchecked
    }

    /// The report as it stands before anything is done: what a report file holds while the
    /// sweep acts, so that the evidence survives whatever happens next.
    pub fn preview(&self) -> Report {
        let leaks = self.leaks.clone();
        Report::new(true, leaks, self.unchecked.clone(), self.notes.clone()).with_stats(self.stats)
    }

    /// The run whose statistics the report carries, and the one test process of it for
    /// `reapkit wrap`: a scope of one run (or one test), not the whole machine.
    fn run(&self) -> Option<(String, Option<OwnerId>)> {
        match &self.judge.scope {
            Scope::DeadOwners { run_id: Some(run_id) } | Scope::Run { run_id, .. } => Some((run_id.clone(), None)),
            Scope::Wrapped { test } => Some((ownership::Owner::current().run_id.clone(), Some(test.clone()))),
            _ => None,
        }
    }

    /// The report without acting: every leak stays as it is (`--dry-run`, `ps`).
    pub fn report(mut self) -> Report {
        let action = if self.listing { Action::Listed } else { Action::WouldReap };
        for leak in &mut self.leaks {
            if leak.action == Action::WouldReap {
                leak.action = action.clone();
            }
        }
        Report::new(true, self.leaks, self.unchecked, self.notes).with_stats(self.stats)
    }

    /// Ends every leak: processes by the guard's protocol (SIGTERM to all at once, grace,
    /// SIGKILL), Docker objects by forced removal with volumes; then clears their records.
    pub fn reap(mut self) -> Report {
        self.end_processes();
        for (cg, all_ours) in std::mem::take(&mut self.cgroups) {
            let ended = teardown::end_cgroup(&cg, all_ours, self.grace);
            if let Err(e) = ended {
                self.unchecked.push(e);
            }
        }
        if self.judge.scope.supervises() {
            reap_adopted_zombies();
        }
        #[cfg(feature = "docker")]
        docker::remove(&mut self.leaks, &self.targets, &mut self.unchecked);
        self.settle_records();
        self.settle_run_logs();
        Report::new(false, self.leaks, self.unchecked, self.notes).with_stats(self.stats)
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

    /// The run logs a reap is done with: its own run's, once reported (`reap --run-id`, `run`;
    /// not `wrap`, whose run goes on), those of runs that are over, and any a week old.
    fn settle_run_logs(&self) {
        if self.as_watchdog {
            return;
        }
        let dir = run_stats::dir();
        if let Some((run_id, None)) = self.run() {
            run_stats::clear(&dir, &run_id);
        }
        if matches!(self.judge.scope, Scope::DeadOwners { .. }) {
            run_stats::clear_ended(&dir, Duration::from_secs(60), Duration::from_secs(7 * 24 * 3600));
            crate::evidence::fixture_files::clear_stale(&self.ledger_dir.join("shared"), Duration::from_secs(3600));
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
        let by = match target {
            Target::Ended((_, Record { resource: Resource::Process { contained, .. }, .. })) => match contained {
                Some(ledger::Contained::Keeper { .. }) => "keeper",
                _ => "exit",
            },
            _ => "watchdog",
        };
        let reaped = Some(ledger::Reaped { by: by.into(), at: ledger::now_rfc3339() });
        let (dir, mut record) = match target.recorded() {
            Some((path, record)) => (path.parent().map(PathBuf::from).unwrap_or_default(), record.clone()),
            None => match target {
                Target::Process { id, markers, .. } => {
                    (self.ledger_dir.clone(), escapee_record(*id, markers, leak, &self.judge.host))
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

    fn push_process(
        &mut self,
        id: ProcId,
        markers: Markers,
        found_by: FoundBy,
        owner: OwnerHealth,
        record: Option<Recorded>,
    ) {
        if self.has_process(id.pid) {
            return;
        }
        self.leaks.push(processes::process_leak(id, &markers, found_by, owner, &self.clock));
        self.targets.push(Target::Process { id, markers, record });
    }

    /// Whether a leftover claiming `guard` and `owner` is outside the project this sweep judges:
    /// then it is left alone, and counted ([`Project::elsewhere`]) if the verdict on `claim` would
    /// have taken it.
    fn elsewhere(&mut self, guard: Option<&str>, owner: Option<&OwnerId>, claim: &Claim<'_>) -> bool {
        if self.project.as_ref().is_none_or(|p| p.claims(guard, owner)) {
            return false;
        }
        if matches!(self.judge.verdict(claim), Verdict::Take(_)) {
            self.project.as_mut().expect("checked above").elsewhere += 1;
        }
        true
    }

    /// A process found by its markers: judged by what they claim.
    fn push_marked(&mut self, id: ProcId, markers: Markers) {
        if let Some(why) = &markers.malformed {
            if self.judge.scope.reports_malformed(markers.run_id.as_deref()) {
                self.unchecked.push(format!(
                    "pid {} (`{}`) carries malformed reapkit markers ({why}): reapkit never wrote them; \
                     not touched. Look at it",
                    id.pid,
                    procfs::cmdline(id.pid)
                ));
            }
            return;
        }
        // Below a supervisor, ancestry decides (`push_descendants`), not what a process carries.
        if self.judge.tree.contains(&id.pid) {
            return;
        }
        // Another project's (or a run whose records are gone): judged with `all_projects` only.
        let owner = markers.watchdog_of.clone().or_else(|| markers.owner.clone());
        let claim = if markers.is_watchdog() { Claim::default() } else { markers.claim() };
        if self.elsewhere(markers.guard.as_deref(), owner.as_ref(), &claim) {
            return;
        }
        if markers.is_watchdog() {
            let claim = Claim { owner: markers.watchdog_of.as_ref(), ..markers.claim() };
            let supervised_run = matches!(self.judge.scope, Scope::Run { .. });
            if matches!(self.judge.verdict(&claim), Verdict::Take(_)) && !supervised_run {
                self.watchdogs.push(id);
                if markers.keeper {
                    // Its tree, by the kernel's reparenting rule, even without its ledger record.
                    let tree =
                        Markers { owner: markers.watchdog_of.clone(), watchdog_of: None, keeper: false, ..markers };
                    self.push_descendants_found_by(id, &tree, FoundBy::Keeper, true);
                }
            }
            return;
        }
        let verdict = match &self.judge.scope {
            // Outside the tree, a run id is a label: never proof of a supervisor's ownership.
            Scope::Run { run_id, .. } if markers.run_id.as_ref() == Some(run_id) => Verdict::Collision,
            Scope::Run { .. } => Verdict::Leave,
            _ => self.judge.verdict(&markers.claim()),
        };
        match verdict {
            Verdict::Take(owner) => self.push_process(id, markers, FoundBy::Marker, owner, None),
            Verdict::Leave => {}
            Verdict::Unchecked(why) => self.unchecked.push(format!(
                "pid {} (`{}`) of test {}: {why}; not touched",
                id.pid,
                procfs::cmdline(id.pid),
                markers.test.as_deref().unwrap_or("<unknown>")
            )),
            Verdict::Collision => self.notes.push(format!(
                "pid {} (`{}`) carries this run's id but does not descend from this supervisor: another \
                 job's (a run-id collision); not touched",
                id.pid,
                procfs::cmdline(id.pid)
            )),
        }
    }

    /// Live descendants of `root`: ours by ancestry, even without markers of their own; of our
    /// user only, unless `any_uid` (a keeper's tree, which is containment).
    fn push_descendants(&mut self, root: ProcId, inherited: &Markers, any_uid: bool) {
        self.push_descendants_found_by(root, inherited, FoundBy::Descendant, any_uid);
    }

    fn push_descendants_found_by(&mut self, root: ProcId, inherited: &Markers, found_by: FoundBy, any_uid: bool) {
        for d in procfs::descendants(root.pid) {
            if self.judge.spared.contains(&d.pid) {
                continue;
            }
            // One exiting on its own (a keeper that just ended its fixture) is gone, as a zombie
            // is: its markers can no longer be read, and there is nothing left to end.
            let ended = Stat::read(d.pid).is_ok_and(|s| s.is_zombie() || s.is_exiting());
            if ended || !(any_uid || procfs::is_ours(d.pid)) {
                continue;
            }
            let own = markers::markers_of(d.pid);
            if own.is_watchdog() && own.malformed.is_none() {
                // The root's own watchdog (a shared fixture keeper's) cleans up after the root
                // once it is ended — its guards' records, cgroups, containers: left to it.
                if own.watchdog_of.as_ref().map(|o| o.process) != Some(root) {
                    self.watchdogs.push(d);
                }
                continue;
            }
            let usable = own.malformed.is_none() && own != Markers::default();
            let markers = if usable { own } else { inherited.clone() };
            let owner = match markers.owner.as_ref() {
                Some(o) => self.judge.owner_health(o, None).unwrap_or(OwnerHealth::Unknown),
                None => OwnerHealth::Dead,
            };
            self.push_process(d, markers, found_by, owner, None);
        }
    }

    fn push_record(&mut self, path: PathBuf, record: Record, containers: &mut Vec<(PathBuf, Record)>) {
        let claim = Claim {
            run_id: Some(&record.run_id),
            owner: Some(&record.owner),
            test: Some(&record.test),
            host: Some(&record.owner_host),
            supervisor: record.supervisor.as_ref(),
        };
        let Resource::Process { process, .. } = record.resource else {
            match self.judge.verdict(&claim) {
                Verdict::Take(_) if record.reaped.is_some() => self.push_evidence(path, &record),
                Verdict::Take(_) => containers.push((path, record)),
                Verdict::Unchecked(why) => self.unchecked_record(&path, &why),
                Verdict::Leave | Verdict::Collision => {}
            }
            return;
        };
        // The process, as seen from here: its pid is one of its owner's namespace.
        let located = self.judge.ns.locate(process, record.owner.pidns, &record.owner.boot);
        let verdict = self.judge.verdict(&claim);
        let owner = match verdict {
            Verdict::Take(owner) => owner,
            // Found already by other proof (its markers): the record is its evidence.
            _ if self.attach(&located, &path, &record) => return,
            Verdict::Unchecked(why) => return self.unchecked_record(&path, &why),
            Verdict::Leave | Verdict::Collision => return,
        };
        if record.reaped.is_some() {
            return self.push_evidence(path, &record);
        }
        // The containment first: what the kernel says is the tree, whatever it carries.
        let markers = markers::record_markers(&record);
        if let Err(why) = self.push_contained(&record, &markers, owner) {
            return self.unchecked_record(&path, &format!("{why}. Kept"));
        }
        if self.attach(&located, &path, &record) {
            return;
        }
        match located {
            // A zombie can no longer be harmed (nor prove anything): its guard was never dropped,
            // so the record is evidence of a leak, which ended when the process exited.
            Whereabouts::Alive(here) if Stat::read(here.pid).is_ok_and(|s| s.is_zombie()) => {
                self.push_process(here, markers, FoundBy::Ledger, owner, Some((path, record)));
            }
            Whereabouts::Alive(here) => match proof::named_process(here, &record.guard) {
                Ok(()) => {
                    self.push_process(here, markers.clone(), FoundBy::Ledger, owner, Some((path, record)));
                    self.push_descendants(here, &markers, false);
                }
                Err(why) => self.unchecked_record(
                    &path,
                    &format!(
                        "it names pid {} (`{}`), which is alive but {why}: a record alone names a pid, it \
                         proves nothing. Kept, not touched",
                        here.pid,
                        procfs::cmdline(here.pid)
                    ),
                ),
            },
            // Another boot: no process of this one can be it. Evidence of a leak the reboot ended.
            Whereabouts::OtherBoot => self.push_stale_boot(path, &record),
            // Its owner died holding the guard: a leak, which its keeper (or its own exit) ended.
            Whereabouts::Gone(_) if owner == OwnerHealth::Dead => self.push_ended(path, record),
            Whereabouts::Gone(_) => self.stale.push(path),
            Whereabouts::Unknown(why) => self.unchecked_record(&path, &why),
        }
    }

    /// Gives the record to the target already found for its process, if there is one.
    fn attach(&mut self, located: &Whereabouts, path: &Path, record: &Record) -> bool {
        let Whereabouts::Alive(here) = located else { return false };
        match self.targets.iter_mut().find(|t| t.process().is_some_and(|(p, _)| p == *here)) {
            Some(Target::Process { record: slot, .. }) => {
                *slot = Some((path.to_path_buf(), record.clone()));
                true
            }
            _ => false,
        }
    }

    /// The members of a recorded guard's containment, where it is proven ([`proof`]): its
    /// cgroup's processes, or its keeper's descendants — of any uid: they started as the guard's,
    /// and the kernel kept them there. `Err`: the record names a containment it cannot prove.
    fn push_contained(&mut self, record: &Record, markers: &Markers, owner: OwnerHealth) -> Result<(), String> {
        let Resource::Process { process, contained: Some(contained), .. } = &record.resource else { return Ok(()) };
        match contained {
            ledger::Contained::Cgroup { cgroup, id } => {
                let Some(id) = id else {
                    return Err(format!(
                        "it names the cgroup {} without its id (a record of reapkit before 0.2), which proves nothing",
                        cgroup.display()
                    ));
                };
                match proof::cgroup(cgroup, &record.guard, Some(*id), process.start_time, &self.witnessed) {
                    proof::CgroupProof::Gone => Ok(()),
                    proof::CgroupProof::Proven { cgroup, members, strangers } => {
                        self.push_cgroup(cgroup, members, &strangers, markers, owner);
                        Ok(())
                    }
                    proof::CgroupProof::Unproven { why, .. } => Err(why),
                }
            }
            ledger::Contained::Keeper { keeper } => {
                let located = self.judge.ns.locate(*keeper, record.owner.pidns, &record.owner.boot);
                if let Whereabouts::Alive(here) = located {
                    if proof::named_keeper(here, &record.guard) {
                        self.watchdogs.push(here);
                        self.push_descendants_found_by(here, markers, FoundBy::Keeper, true);
                    }
                }
                Ok(())
            }
            ledger::Contained::Marker => Ok(()),
        }
    }

    /// The proven members of a guard's cgroup, and the cgroup itself, to end and remove; the
    /// strangers in it are reported, never touched.
    fn push_cgroup(
        &mut self,
        cg: GuardCgroup,
        members: Vec<ProcId>,
        strangers: &[ProcId],
        markers: &Markers,
        owner: OwnerHealth,
    ) {
        for id in members {
            self.push_process(id, markers.clone(), FoundBy::Cgroup, owner, None);
        }
        for id in strangers {
            let uid = procfs::owner_uid(id.pid).map_or_else(|_| "?".into(), |u| u.to_string());
            self.unchecked.push(format!(
                "pid {} (uid {uid}, `{}`) sits in {} but started before the guard's process: moved in from outside, \
                 so not the guard's; not touched",
                id.pid,
                procfs::cmdline(id.pid),
                cg.dir().display()
            ));
        }
        if !self.cgroups.iter().any(|(c, _)| c.dir() == cg.dir()) {
            self.cgroups.push((cg, strangers.is_empty()));
        }
    }

    /// reapkit cgroups no record named (a record lost, or deleted): their name says whose guard
    /// made them, which proves nothing, so only a live member carrying that guard's marker does
    /// ([`proof`]). Only sweeps that do not filter by run look at them (a cgroup has no run id).
    fn push_unrecorded_cgroups(&mut self) {
        let considered =
            matches!(self.judge.scope, Scope::DeadOwners { run_id: None } | Scope::Owner(_) | Scope::Everything);
        // No record of this project names them.
        if !considered || self.project.is_some() {
            return;
        }
        for dir in crate::containment::cgroup::all_reapkit() {
            if self.cgroups.iter().any(|(c, _)| c.dir() == dir) {
                continue;
            }
            let guard = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(crate::evidence::ownership::CGROUP_PREFIX))
                .unwrap_or_default()
                .to_owned();
            let Some(owner) = ownership::owner_of_guard(&guard) else { continue };
            let claim = Claim { owner: Some(&owner), ..Claim::default() };
            let Verdict::Take(health) = self.judge.verdict(&claim) else { continue };
            let markers = Markers { owner: Some(owner.clone()), guard: Some(guard.clone()), ..Markers::default() };
            match proof::cgroup(&dir, &guard, None, owner.process.start_time, &self.witnessed) {
                proof::CgroupProof::Proven { cgroup, members, strangers } => {
                    self.push_cgroup(cgroup, members, &strangers, &markers, health)
                }
                proof::CgroupProof::Unproven { why, members } if self.judge.scope.machine_wide() => {
                    let what = if members.is_empty() { "empty" } else { "not empty" };
                    self.notes.push(format!("a cgroup named like reapkit's that no record names ({what}): {why}"));
                }
                proof::CgroupProof::Unproven { .. } | proof::CgroupProof::Gone => {}
            }
        }
    }

    fn unchecked_record(&mut self, path: &Path, why: &str) {
        self.unchecked.push(format!("ledger record {}: {why}", path.display()));
    }

    /// A record a watchdog marked as reaped: the leak is over, the record is its evidence.
    fn push_evidence(&mut self, path: PathBuf, record: &Record) {
        if !self.as_watchdog {
            self.leaks.push(evidence_leak(record, &self.clock, Action::ReapedByWatchdog));
            self.targets.push(Target::Evidence(path));
        }
    }

    /// A record of a guard whose owner died holding it, whose process has ended: the evidence of
    /// a leak that ended before the sweep came (its keeper ends its tree with its owner).
    fn push_ended(&mut self, path: PathBuf, record: Record) {
        // Seen alive a moment ago by its markers (it ended since, by its keeper): one leak, whose
        // evidence is this record.
        if let Resource::Process { process, .. } = &record.resource {
            let seen = self.targets.iter_mut().find(|t| t.process().is_some_and(|(id, _)| id == *process));
            if let Some(Target::Process { record: slot @ None, .. }) = seen {
                *slot = Some((path, record));
                return;
            }
        }
        let mut leak = evidence_leak(&record, &self.clock, Action::AlreadyGone);
        leak.detail = Some(match &record.resource {
            Resource::Process { contained: Some(ledger::Contained::Keeper { .. }), .. } => {
                "its owner died holding the guard; its keeper ended the tree".into()
            }
            _ => "its owner died holding the guard; the process had already ended".into(),
        });
        self.leaks.push(leak);
        self.targets.push(Target::Ended((path, record)));
    }

    /// A process record of an earlier boot of this host: reported once, then cleared.
    fn push_stale_boot(&mut self, path: PathBuf, record: &Record) {
        if self.as_watchdog || !self.judge.scope.machine_wide() {
            return;
        }
        let mut leak = evidence_leak(record, &self.clock, Action::AlreadyGone);
        leak.age_s = age_of(&record.created);
        leak.detail = Some(format!(
            "recorded on an earlier boot (boot id {}): the reboot ended it, its record is cleared",
            record.owner.boot
        ));
        self.leaks.push(leak);
        self.targets.push(Target::Evidence(path));
    }

    fn push_matches(&mut self, matcher: &Matcher) {
        let mut found = processes::matching_processes(&*matcher.matches);
        found.retain(|id| !self.has_process(id.pid));
        found.sort_by_key(|id| std::cmp::Reverse(id.start_time));
        for id in found.into_iter().skip(matcher.keep_newest) {
            self.push_process(id, markers::markers_of(id.pid), FoundBy::Match, OwnerHealth::Unknown, None);
        }
    }

    fn keep_older_than(&mut self, min: Duration) {
        let pairs = std::mem::take(&mut self.leaks).into_iter().zip(std::mem::take(&mut self.targets));
        (self.leaks, self.targets) = pairs.filter(|(l, _)| l.age_s.is_none_or(|a| a >= min.as_secs())).unzip();
    }
}

/// What `reapkit ps` says of the guarantees: that all hold, or each that does not.
fn guarantee_notes(caps: &crate::containment::capabilities::Capabilities) -> Vec<String> {
    use crate::containment::capabilities::Guarantee;
    let gaps: Vec<String> = caps
        .guarantees
        .iter()
        .filter_map(|(concern, g)| match g {
            Guarantee::Full(_) => None,
            Guarantee::Partial(what) => Some(format!("guarantee only partly held here: {concern}: {what}")),
            Guarantee::Missing(why) => Some(format!("guarantee NOT held here: {concern}: {why}")),
        })
        .collect();
    if !gaps.is_empty() {
        return gaps;
    }
    let all: Vec<String> = caps.guarantees.iter().map(|(c, _)| c.to_string()).collect();
    vec![format!("guarantees: all hold here ({})", all.join(", "))]
}

/// A supervisor is the subreaper of its command: the zombies of orphans that died are its
/// children now, and nobody else will reap them.
fn reap_adopted_zombies() {
    for pid in procfs::children(std::process::id() as i32) {
        if Stat::read(pid).is_ok_and(|s| s.is_zombie()) {
            if let Some(m) = ProcId::of(pid).and_then(Member::open) {
                m.handle.reap();
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
/// and filled from the evidence taken before the kill (the process is gone now). The markers
/// were checked when read, so the guard id is safe in a file name.
fn escapee_record(id: ProcId, markers: &Markers, leak: &Leak, host: &str) -> Record {
    let guard = markers.guard.as_deref().unwrap_or("escapee");
    let owner = markers.owner.clone().unwrap_or_else(|| OwnerId::here(ProcId { pid: 1, start_time: 0 }));
    Record {
        version: ledger::RECORD_VERSION,
        guard: format!("{guard}-pid{}-{}", id.pid, id.start_time),
        run_id: markers.run_id.clone().unwrap_or_else(|| "unknown".into()),
        owner,
        owner_host: host.to_owned(),
        test: markers.test.clone().unwrap_or_default(),
        created: ledger::now_rfc3339(),
        resource: Resource::Process {
            process: id,
            pgid: id.pid,
            command: leak.command.iter().flat_map(|c| c.split(' ')).map(str::to_owned).collect(),
            cwd: leak.cwd.as_ref().map(PathBuf::from),
            contained: None,
        },
        supervisor: markers.supervisor.clone(),
        reaped: None,
    }
}

/// A leak known only from its record: a watchdog reaped it, or a reboot ended it.
fn evidence_leak(record: &Record, clock: &BootClock, action: Action) -> Leak {
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
        found_by: if action == Action::ReapedByWatchdog { FoundBy::Watchdog } else { FoundBy::Ledger },
        action,
        health: Health::Gone,
        pid,
        id,
        owner: Some(record.owner.to_string()),
        guard: Some(record.guard.clone()),
        command,
        cwd,
        rss_bytes: None,
        fds: None,
        threads: None,
        exe: None,
        detail: reaped.map(|r| match r.by.as_str() {
            "keeper" => format!("its owner died holding the guard; its keeper ended the tree (noted at {})", r.at),
            "exit" => format!("its owner died holding the guard; it had already exited (noted at {})", r.at),
            by => format!("its owner died; the {by} reaped it at {}", r.at),
        }),
        listening: Vec::new(),
    }
}

/// Seconds since an RFC 3339 time.
fn age_of(rfc3339: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(rfc3339).ok()?;
    Some(t.elapsed().unwrap_or_default().as_secs())
}
