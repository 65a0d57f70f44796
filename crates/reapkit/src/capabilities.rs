//! What reapkit can guarantee on this machine, concern by concern: what `reapkit ps` prints and
//! what a user reads before trusting a green run. Computed at run time from what the machine
//! gives (a writable cgroup2 subtree, pidfds, `/proc`, the PID namespace, the watchdog's
//! switch, the `docker` feature), never assumed from the OS name alone.
//!
//! | concern | Linux, root or a delegated cgroup2 subtree | Linux, otherwise | other Unix (macOS, BSD) |
//! | --- | --- | --- | --- |
//! | whole tree | cgroup v2 | keeper (subreaper) | not built yet: the crate refuses to build |
//! | escapees (`setsid`, double fork, cleared env) | cgroup v2 | keeper | — |
//! | test process SIGKILLed | watchdog (pidfd) | watchdog (pidfd) | — |
//! | recycled pids | pidfd + start time | pidfd + start time | — |
//! | FD checks | `/proc/self/fd` | `/proc/self/fd` | — |
//! | containers | labels + ledger + watchdog (feature `docker`) | same | — |
//! | owners in other PID namespaces | seen from the initial namespace | reported unchecked | — |
//!
//! `REAPKIT_CONTAINMENT=marker` and `REAPKIT_WATCHDOG=off` weaken the first three rows; the
//! report then says so.

use std::fmt;

use crate::containment::{self, Containment};
use crate::identity::Viewpoint;
use crate::ownership::ENV_WATCHDOG;

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
        write!(f, "guarantees on {}:", self.os)?;
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
    let tree = match containment {
        Containment::Cgroup => Guarantee::Full("a cgroup v2 per guard".into()),
        Containment::Keeper => Guarantee::Full(format!("a keeper per guard; {}", containment::describe_machine())),
        Containment::Marker => Guarantee::Partial(
            "REAPKIT_CONTAINMENT=marker: a process that clears its environment and leaves the process group escapes"
                .into(),
        ),
    };
    let escapees = match tree {
        Guarantee::Full(ref how) => Guarantee::Full(how.clone()),
        _ => Guarantee::Partial("found by the REAPKIT_GUARD marker and the subreaper only".into()),
    };
    let watchdog_off = std::env::var(ENV_WATCHDOG).is_ok_and(|v| v == "off" || v == "0");
    let owner_death = if watchdog_off {
        Guarantee::Missing(format!("{ENV_WATCHDOG}=off: a killed test leaks until `reapkit reap` runs"))
    } else {
        Guarantee::Full("the watchdog, woken by the test process's pidfd".into())
    };
    let pidfds = match crate::sys::pidfd_open(std::process::id() as i32) {
        Ok(_) => Guarantee::Full("pidfds, opened then checked against the start time".into()),
        Err(e) => Guarantee::Missing(format!("pidfd_open fails ({e}): reapkit needs Linux 5.3 or later")),
    };
    let fds = match std::fs::read_dir("/proc/self/fd") {
        Ok(_) => Guarantee::Full("/proc/self/fd".into()),
        Err(e) => Guarantee::Missing(format!("/proc/self/fd cannot be read ({e})")),
    };
    let containers = if cfg!(feature = "docker") {
        Guarantee::Full("labels, ledger records and the watchdog (feature `docker`)".into())
    } else {
        Guarantee::Missing("this build has no `docker` feature".into())
    };
    let namespaces = if Viewpoint::current().sees_everything() {
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
        guarantees: vec![
            (Concern::WholeTree, tree),
            (Concern::Escapees, escapees),
            (Concern::OwnerDeath, owner_death),
            (Concern::RecycledPids, pidfds),
            (Concern::FdChecks, fds),
            (Concern::Containers, containers),
            (Concern::OtherNamespaces, namespaces),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_concern_is_listed_once_and_gaps_are_what_is_not_full() {
        let caps = capabilities();
        assert_eq!(caps.guarantees.len(), 7);
        assert!(caps.of(Concern::RecycledPids).is_full(), "{caps}");
        assert!(caps.of(Concern::FdChecks).is_full(), "{caps}");
        assert_eq!(caps.gaps().count(), caps.guarantees.iter().filter(|(_, g)| !g.is_full()).count());
        assert!(caps.to_string().starts_with("guarantees on linux:"), "{caps}");
    }
}
