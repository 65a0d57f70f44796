//! Whose leftovers a sweep takes, and the one place that decides it: [`Judge::verdict`] turns
//! what a marker, record or label *claims* (run, owner, test, host, supervisor) into take,
//! leave, unchecked or collision — by proof only. An owner counts as dead only where that can
//! be proven from here (same boot; its PID namespace ours or visible); otherwise the resource
//! is unchecked, never presumed dead.

use crate::evidence::identity::{Namespaces, OwnerId, Whereabouts};
use crate::os::procfs::ProcId;

use crate::evidence::markers::Markers;

use super::report::Health;

/// Whose leftovers a sweep takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Leftovers whose owner is provably dead, of any run or of one run only: the CI sweep.
    DeadOwners { run_id: Option<String> },
    /// What a `reapkit run` command left: the supervisor's descendants (it is their subreaper),
    /// and containers of its run id created under it whose owner is gone or one of them. A
    /// process outside its tree carrying the same run id is another job's: a collision,
    /// reported, never touched (a user-given run id is a label, not a proof).
    Run { run_id: String, supervisor: OwnerId },
    /// What one test process left under `reapkit wrap`: the supervisor's descendants, and
    /// everything owned by the (ended) test process.
    Wrapped { test: OwnerId },
    /// Everything owned by one ended process: the watchdog, after its owner died.
    Owner(OwnerId),
    /// Everything one test of a live process registered: a test scope after the test's body.
    Test { owner: OwnerId, test: String },
    /// Everything tracked, nothing reaped: `reapkit ps`.
    Everything,
}

impl Scope {
    /// Leftovers of any run whose owner is dead.
    pub fn dead_owners() -> Scope {
        Scope::DeadOwners { run_id: None }
    }

    /// A supervisor takes what lives below it, whatever it carries.
    pub(crate) fn supervises(&self) -> bool {
        matches!(self, Scope::Run { .. } | Scope::Wrapped { .. })
    }

    /// Sweeps of the whole machine report what they cannot believe (malformed markers); the
    /// narrow ones (a test, a watchdog, a supervisor) leave that to them.
    pub(crate) fn machine_wide(&self) -> bool {
        matches!(self, Scope::DeadOwners { .. } | Scope::Everything)
    }

    /// Whether this sweep reports a malformed marker set or label set that (validly) names
    /// `run_id`: the sweeps of the whole machine do — one of a single run only for that run, so
    /// that a run-scoped sweep in a parallel suite does not report every other one's.
    pub(crate) fn reports_malformed(&self, run_id: Option<&str>) -> bool {
        match self {
            Scope::DeadOwners { run_id: Some(want) } => run_id == Some(want.as_str()),
            scope => scope.machine_wide(),
        }
    }
}

/// What is known of a leftover's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnerHealth {
    Alive,
    Dead,
    /// Not decidable from here (another namespace, another host).
    Unknown,
}

impl OwnerHealth {
    /// The health of a live leftover with this owner.
    pub(crate) fn health(self) -> Health {
        match self {
            OwnerHealth::Alive => Health::Running,
            OwnerHealth::Dead => Health::Orphaned,
            OwnerHealth::Unknown => Health::OwnerUnknown,
        }
    }
}

/// What a marker set, a ledger record or a container's labels say about a resource.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Claim<'a> {
    pub(crate) run_id: Option<&'a str>,
    pub(crate) owner: Option<&'a OwnerId>,
    pub(crate) test: Option<&'a str>,
    /// The owner's host, where the claim names one (records, labels); an environment marker is
    /// read on this machine.
    pub(crate) host: Option<&'a str>,
    /// The supervisor the owner ran under (`reapkit.supervisor`).
    pub(crate) supervisor: Option<&'a OwnerId>,
}

impl Markers {
    /// The claims these markers make, for a [`Scope`](super::Scope) to judge.
    pub(crate) fn claim(&self) -> Claim<'_> {
        Claim {
            run_id: self.run_id.as_deref(),
            owner: self.owner.as_ref(),
            test: self.test.as_deref(),
            host: None,
            supervisor: self.supervisor.as_ref(),
        }
    }
}

/// What to do with a claimed resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Ours to take; the owner is as given.
    Take(OwnerHealth),
    /// Not in scope (another run, a live owner).
    Leave,
    /// In scope if its owner is dead, but that cannot be proven from here: why.
    Unchecked(String),
    /// It carries the supervised run's id but was not started under it: another job's.
    Collision,
}

/// Applies a [`Scope`] to claims, with what it needs to check them: the PID namespaces seen
/// from here, this host's name and, for a supervisor, the pids of its tree.
#[derive(Debug)]
pub(crate) struct Judge {
    pub(crate) scope: Scope,
    pub(crate) ns: Namespaces,
    pub(crate) host: String,
    /// A supervisor's live descendants, read before anything else.
    pub(crate) tree: Vec<i32>,
    /// What a supervisor's tree holds that is not its test's: the shared fixtures (keepers and
    /// their trees) of a run that goes on.
    pub(crate) spared: Vec<i32>,
}

impl Judge {
    pub(crate) fn new(scope: Scope, host: String) -> Judge {
        Judge { scope, ns: Namespaces::new(), host, tree: Vec::new(), spared: Vec::new() }
    }

    /// Takes out of the tree the shared fixtures that `reapkit wrap` must leave: a keeper of the
    /// tree (by the markers the scan read) whose run owner is alive *and* our ancestor — the
    /// nextest that runs this test, so the run goes on — with its whole tree. Once the run is
    /// over none qualifies.
    pub(crate) fn spare_live_shared_fixtures(&mut self, marked: &[(ProcId, Markers)]) {
        let ancestors = crate::os::procfs::self_and_ancestors();
        let mut spared = Vec::new();
        for (id, m) in marked.iter().filter(|(id, _)| self.tree.contains(&id.pid)) {
            let (Some(_), Some(owner), None) = (&m.shared, &m.owner, &m.malformed) else { continue };
            if matches!(self.ns.owner(owner), Whereabouts::Alive(here) if ancestors.contains(&here.pid)) {
                spared.push(id.pid);
                spared.extend(crate::os::procfs::descendants(id.pid).iter().map(|d| d.pid));
            }
        }
        self.tree.retain(|pid| !spared.contains(pid));
        self.spared = spared;
    }

    pub(crate) fn verdict(&mut self, claim: &Claim<'_>) -> Verdict {
        match &self.scope {
            Scope::DeadOwners { run_id } => {
                if run_id.as_deref().is_some_and(|want| claim.run_id != Some(want)) {
                    return Verdict::Leave;
                }
                let Some(owner) = claim.owner else { return Verdict::Leave };
                match self.owner_health(owner, claim.host) {
                    Ok(OwnerHealth::Dead) => Verdict::Take(OwnerHealth::Dead),
                    Ok(_) => Verdict::Leave,
                    Err(why) => Verdict::Unchecked(why),
                }
            }
            Scope::Run { run_id, supervisor } => {
                if claim.run_id != Some(run_id.as_str()) {
                    return Verdict::Leave;
                }
                if claim.supervisor != Some(supervisor) {
                    return Verdict::Collision;
                }
                let Some(owner) = claim.owner else { return Verdict::Collision };
                match self.ns.owner(owner) {
                    Whereabouts::Alive(here) if self.tree.contains(&here.pid) => Verdict::Take(OwnerHealth::Alive),
                    Whereabouts::Alive(_) => Verdict::Collision,
                    Whereabouts::Gone(_) | Whereabouts::OtherBoot => Verdict::Take(OwnerHealth::Dead),
                    Whereabouts::Unknown(why) => Verdict::Unchecked(why),
                }
            }
            Scope::Wrapped { test: owner } | Scope::Owner(owner) => {
                if claim.owner == Some(owner) {
                    Verdict::Take(OwnerHealth::Dead)
                } else {
                    Verdict::Leave
                }
            }
            Scope::Test { owner, test } => {
                if claim.owner == Some(owner) && claim.test == Some(test.as_str()) {
                    Verdict::Take(OwnerHealth::Alive)
                } else {
                    Verdict::Leave
                }
            }
            Scope::Everything => match claim.owner.map(|o| self.owner_health(o, claim.host)) {
                None => Verdict::Take(OwnerHealth::Unknown),
                Some(Ok(health)) => Verdict::Take(health),
                Some(Err(_)) => Verdict::Take(OwnerHealth::Unknown),
            },
        }
    }

    /// Whether `owner` is alive or dead, where that can be proven; else why not.
    ///
    /// Another boot of this host (same host name, another boot id) is dead for a record or a
    /// label; a live process *carrying* such a marker (`host` is `None`) cannot be explained,
    /// so it is not touched. An owner on another host, or in a PID namespace we cannot see,
    /// is never presumed dead.
    pub(crate) fn owner_health(&mut self, owner: &OwnerId, host: Option<&str>) -> Result<OwnerHealth, String> {
        match self.ns.owner(owner) {
            Whereabouts::Alive(_) => Ok(OwnerHealth::Alive),
            Whereabouts::Gone(_) => Ok(OwnerHealth::Dead),
            Whereabouts::OtherBoot => match host {
                Some(h) if h == self.host => Ok(OwnerHealth::Dead),
                Some(h) => Err(format!(
                    "its owner runs on host {h} (boot {}), which cannot be checked from here; \
                     sweep on that host",
                    owner.boot
                )),
                None => Err(format!(
                    "it carries the owner marker of another boot ({}) although it runs on this one: \
                     reapkit never wrote that; look at it",
                    owner.boot
                )),
            },
            Whereabouts::Unknown(why) => Err(why),
        }
    }
}
