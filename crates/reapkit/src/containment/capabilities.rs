//! What reapkit can guarantee on this machine, concern by concern: what `reapkit ps`, a
//! [`Teardown`](crate::Teardown) and a failing test's report say, and what a user reads before
//! trusting a green run. Computed at run time from what the machine gives (the backend, a
//! writable cgroup2 subtree, pidfds, `/proc` or `/dev/fd`, the PID namespace, the watchdog's
//! switch, the `docker` feature), never assumed from the OS name alone.
//!
//! | concern | Linux, root or a delegated cgroup2 subtree | Linux, otherwise | macOS, the BSDs, other Unix (portable backend) |
//! | --- | --- | --- | --- |
//! | whole tree | cgroup v2 | keeper (subreaper) | partly: the process group the child leads |
//! | escapees (`setsid`, double fork, cleared env) | cgroup v2 | keeper | **no**: a process that leaves the group is not found |
//! | test process SIGKILLed | watchdog (pidfd) | watchdog (pidfd) | partly: the watchdog (a pipe the test holds) removes its containers; its processes are reported, not ended |
//! | recycled pids | pidfd + start time | pidfd + start time | only our unreaped children and the groups they lead are signalled |
//! | FD checks | `/proc/self/fd` | `/proc/self/fd` | `/dev/fd` (FreeBSD: with `fdescfs` mounted) |
//! | containers | labels + ledger + watchdog (feature `docker`) | same | same |
//! | owners in other PID namespaces | seen from the initial namespace | reported unchecked | partly: owners are checked by pid and start time in its own view |
//! | process table (`info()`, budgets, `Listen`, shared fixtures, sweeps of processes) | `/proc` | `/proc` | **no**: refused with `Unsupported`; sweeps say they checked no process |
//!
//! `REAPKIT_CONTAINMENT=marker` and `REAPKIT_WATCHDOG=off` weaken the first three rows; the
//! report then says so.

use std::fmt;

use crate::containment::{self, Containment};
use crate::evidence::identity::Viewpoint;
use crate::evidence::ownership::ENV_WATCHDOG;

/// One thing a user relies on reapkit for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Concern {
    /// Every process a guarded child starts is torn down with it.
    WholeTree,
    /// A process that `setsid`s, double-forks and clears its environment is still found.
    Escapees,
    /// A test process killed before its `Drop`s (SIGKILL, OOM, a timeout) still has its
    /// resources reaped.
    OwnerDeath,
    /// A signal never reaches a process that reused a guarded pid.
    RecycledPids,
    /// A test that leaks a descriptor fails.
    FdChecks,
    /// Containers are labelled, recorded and removed.
    Containers,
    /// A sweep can tell whether an owner in another PID namespace is alive.
    OtherNamespaces,
    /// What reads the process table: `ProcessGuard::info`, budgets, `Listen` readiness,
    /// shared fixtures, and the sweeps' view of processes.
    ProcessTable,
}

impl fmt::Display for Concern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Concern::WholeTree => "whole tree",
            Concern::Escapees => "escapees",
            Concern::OwnerDeath => "test process killed",
            Concern::RecycledPids => "recycled pids",
            Concern::FdChecks => "FD checks",
            Concern::Containers => "containers",
            Concern::OtherNamespaces => "owners in other PID namespaces",
            Concern::ProcessTable => "process table",
        })
    }
}

/// How far a concern is covered here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "level", content = "how", rename_all = "lowercase")]
pub enum Guarantee {
    /// Covered, by this mechanism.
    Full(String),
    /// Covered except for what this says.
    Partial(String),
    /// Not covered, and why (what would give it).
    Missing(String),
}

impl Guarantee {
    /// Whether it holds without exception.
    pub fn is_full(&self) -> bool {
        matches!(self, Guarantee::Full(_))
    }
}

/// Every concern with its guarantee on this machine, now ([`capabilities`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Capabilities {
    /// The operating system (`std::env::consts::OS`).
    pub os: &'static str,
    /// The backend this build has.
    pub backend: crate::os::Backend,
    pub guarantees: Vec<(Concern, Guarantee)>,
}

impl Capabilities {
    /// The guarantee for `concern`.
    pub fn of(&self, concern: Concern) -> &Guarantee {
        &self.guarantees.iter().find(|(c, _)| *c == concern).expect("every concern is listed").1
    }

    /// The guarantees that do not fully hold: what a report must not pass over in silence.
    pub fn gaps(&self) -> impl Iterator<Item = &(Concern, Guarantee)> {
        self.guarantees.iter().filter(|(_, g)| !g.is_full())
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guarantees on {} ({} backend):", self.os, self.backend)?;
        for (concern, guarantee) in &self.guarantees {
            match guarantee {
                Guarantee::Full(how) => write!(f, "\n  {concern}: yes ({how})")?,
                Guarantee::Partial(what) => write!(f, "\n  {concern}: partly ({what})")?,
                Guarantee::Missing(why) => write!(f, "\n  {concern}: NO ({why})")?,
            }
        }
        Ok(())
    }
}

/// What reapkit guarantees on this machine, for guards created from now on.
pub fn capabilities() -> Capabilities {
    let containment = containment::requested(None).ok().flatten().unwrap_or_else(containment::auto);
    let [tree, escapees] = of_containment(containment);
    let portable = !crate::os::PROC_TABLE;
    let watchdog_off = std::env::var(ENV_WATCHDOG).is_ok_and(|v| v == "off" || v == "0");
    let owner_death = if watchdog_off {
        Guarantee::Missing(format!("{ENV_WATCHDOG}=off: a killed test leaks until `reapkit reap` runs"))
    } else if portable {
        Guarantee::Partial(
            "the watchdog, woken by a pipe the test process holds, removes a killed test's containers; its \
             processes are reported, not ended (without a process table their markers cannot be proven)"
                .into(),
        )
    } else {
        Guarantee::Full("the watchdog, woken by the test process's pidfd".into())
    };
    let recycled = if portable {
        Guarantee::Full(
            "only our own unreaped children, and the groups they lead, are signalled: their pids cannot be reused"
                .into(),
        )
    } else {
        match crate::os::Handle::open(std::process::id() as i32) {
            Ok(_) => Guarantee::Full("pidfds, opened then checked against the start time".into()),
            Err(e) => Guarantee::Missing(format!("pidfd_open fails ({e}): reapkit needs Linux 5.3 or later")),
        }
    };
    let namespaces = if portable {
        Guarantee::Partial(
            "the portable backend sees no PID namespaces: it checks an owner by pid and start time in its own view"
                .into(),
        )
    } else if Viewpoint::current().sees_everything() {
        Guarantee::Full("this process sees the initial PID namespace".into())
    } else {
        Guarantee::Partial(
            "this process runs in a child PID namespace: owners in namespaces it cannot see are reported unchecked, \
             never presumed dead"
                .into(),
        )
    };
    Capabilities {
        os: std::env::consts::OS,
        backend: crate::os::backend(),
        guarantees: vec![
            (Concern::WholeTree, tree),
            (Concern::Escapees, escapees),
            (Concern::OwnerDeath, owner_death),
            (Concern::RecycledPids, recycled),
            (Concern::FdChecks, fd_checks()),
            (Concern::Containers, containers()),
            (Concern::OtherNamespaces, namespaces),
            (Concern::ProcessTable, process_table()),
        ],
    }
}

/// What a guard's containment gives for its whole tree and for escapees.
pub(crate) fn of_containment(containment: Containment) -> [Guarantee; 2] {
    match containment {
        Containment::Cgroup => {
            let how = "a cgroup v2 per guard".to_owned();
            [Guarantee::Full(how.clone()), Guarantee::Full(how)]
        }
        Containment::Keeper => {
            let how = format!("a keeper per guard; {}", containment::describe_machine());
            [Guarantee::Full(how.clone()), Guarantee::Full(how)]
        }
        Containment::Marker if !crate::os::PROC_TABLE => [
            Guarantee::Partial(
                "the process group the guarded child leads (the portable backend): what stays in it is ended, what \
                 outlives its leader gets SIGKILL unobserved, and a child the test starts without a guard is not \
                 listed"
                    .into(),
            ),
            Guarantee::Missing(
                "the portable backend reads no process table: a process that leaves the group (setsid, setpgid, a \
                 double fork that does) is not found"
                    .into(),
            ),
        ],
        Containment::Marker => [
            Guarantee::Partial(
                "REAPKIT_CONTAINMENT=marker: a process that clears its environment and leaves the process group \
                 escapes"
                    .into(),
            ),
            Guarantee::Partial("found by the REAPKIT_GUARD marker and the subreaper only".into()),
        ],
    }
}

/// The gaps of a guard's containment, for its [`Teardown`](crate::Teardown).
pub(crate) fn containment_gaps(containment: Containment) -> Vec<(Concern, Guarantee)> {
    let [tree, escapees] = of_containment(containment);
    [(Concern::WholeTree, tree), (Concern::Escapees, escapees)].into_iter().filter(|(_, g)| !g.is_full()).collect()
}

/// Whether a descriptor opened now shows in this process's descriptor table as read.
fn fd_checks() -> Guarantee {
    use std::os::fd::AsRawFd;
    let table = if crate::os::PROC_TABLE { "/proc/self/fd" } else { "/dev/fd" };
    let probe = match std::fs::File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => return Guarantee::Missing(format!("/dev/null cannot be opened ({e})")),
    };
    match crate::os::procfs::fd_numbers(std::process::id() as i32) {
        Ok(fds) if fds.contains(&probe.as_raw_fd()) => Guarantee::Full(table.into()),
        Ok(_) => {
            Guarantee::Missing(format!("{table} does not list every descriptor (FreeBSD: mount fdescfs on /dev/fd)"))
        }
        Err(e) => Guarantee::Missing(format!("{table} cannot be read ({e})")),
    }
}

fn process_table() -> Guarantee {
    if !crate::os::PROC_TABLE {
        return Guarantee::Missing(
            "the portable backend reads no process table: info(), budgets, Listen readiness and shared fixtures \
             are refused, and sweeps check no process"
                .into(),
        );
    }
    match crate::os::procfs::Stat::read(std::process::id() as i32) {
        Ok(_) => Guarantee::Full("/proc".into()),
        Err(e) => Guarantee::Missing(format!("/proc cannot be read ({e})")),
    }
}

fn containers() -> Guarantee {
    if cfg!(feature = "docker") {
        Guarantee::Full("labels, ledger records and the watchdog (feature `docker`)".into())
    } else {
        Guarantee::Missing("this build has no `docker` feature".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_concern_is_listed_once_and_gaps_are_what_is_not_full() {
        let caps = capabilities();
        assert_eq!(caps.guarantees.len(), 8);
        assert!(caps.of(Concern::RecycledPids).is_full(), "{caps}");
        assert!(caps.of(Concern::FdChecks).is_full(), "{caps}");
        assert_eq!(caps.gaps().count(), caps.guarantees.iter().filter(|(_, g)| !g.is_full()).count());
        assert!(caps.to_string().starts_with("guarantees on linux ("), "{caps}");
    }
}
