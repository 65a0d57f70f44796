//! Containment: how a guard knows its whole tree, whatever the tree does to its environment.
//! The one module that decides it; guards, teardown and sweeps ask it.
//!
//! Strongest first, each used where the machine allows it, and reported (`Teardown`,
//! `ProcessInfo`, `reapkit ps`) so a user knows which guarantee they have:
//! 1. [`Containment::Cgroup`]: a cgroup v2 per guard (`cgroup.rs`) — where one is writable (root,
//!    or a delegated subtree). Membership is kept by the kernel; `cgroup.kill` ends the tree at
//!    once; `cgroup.events` says when it is empty.
//! 2. [`Containment::Keeper`]: a subreaper above the tree, outside the test process
//!    (`keeper.rs`) — everywhere else. Every orphan of the tree is re-parented to it; it outlives
//!    the owner and then ends the tree.
//! 3. [`Containment::Marker`]: the process group, the test process as subreaper, and the
//!    `REAPKIT_GUARD` marker (a `/proc` scan): the last resort, forced with
//!    `REAPKIT_CONTAINMENT=marker`. A descendant that clears its environment *and* leaves the
//!    group is invisible to it; such a teardown says so instead of calling itself clean.
//!
//! The portable backend (`crate::os`) has only the third, without the scan: the process group.

pub mod capabilities;
pub(crate) mod cgroup;
pub(crate) mod keeper;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Chooses the containment of new guards: `auto` (default), `cgroup`, `keeper` or `marker`.
pub const ENV_CONTAINMENT: &str = "REAPKIT_CONTAINMENT";

/// How a guard holds its tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Containment {
    /// A cgroup v2 of its own: the kernel lists and kills the members.
    Cgroup,
    /// A keeper process above the tree: the kernel re-parents every orphan to it.
    Keeper,
    /// Process group, subreaper and environment marker only.
    Marker,
}

impl Containment {
    /// What this containment guarantees, in a sentence.
    pub fn guarantee(self) -> &'static str {
        match self {
            Containment::Cgroup => {
                "cgroup v2: every process the tree starts is a member, whatever it does to its environment, \
                 session, group or uid; ended at once by cgroup.kill"
            }
            Containment::Keeper => {
                "keeper: a subreaper above the tree, outside the test process, to which every orphan of the tree \
                 is re-parented; it ends the tree if the test process dies"
            }
            Containment::Marker if !crate::os::PROC_TABLE => {
                "process group (the portable backend): every process that stays in the group the guarded child \
                 leads; a process that leaves it (setsid, setpgid) escapes"
            }
            Containment::Marker => {
                "marker only: the process group, the test process as subreaper and the REAPKIT_GUARD marker; a \
                 process that clears its environment and leaves the group escapes"
            }
        }
    }

    fn parse(value: &str) -> Option<Option<Containment>> {
        match value.trim() {
            "" | "auto" => Some(None),
            "cgroup" => Some(Some(Containment::Cgroup)),
            "keeper" => Some(Some(Containment::Keeper)),
            "marker" => Some(Some(Containment::Marker)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Containment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Containment::Cgroup => "cgroup",
            Containment::Keeper => "keeper",
            Containment::Marker => "marker",
        })
    }
}

/// Set once a cgroup could not be created here: later guards go straight to a keeper.
static CGROUPS_REFUSED: AtomicBool = AtomicBool::new(false);

/// The containment asked for: the builder's, else `REAPKIT_CONTAINMENT`; `None` is auto.
pub(crate) fn requested(own: Option<Containment>) -> Result<Option<Containment>> {
    let asked = match (own, std::env::var(ENV_CONTAINMENT)) {
        (Some(own), _) => Some(own),
        (None, Err(_)) => None,
        (None, Ok(value)) => Containment::parse(&value).ok_or_else(|| Error::Config {
            var: ENV_CONTAINMENT,
            value,
            reason: "use auto, cgroup, keeper or marker".into(),
        })?,
    };
    match asked {
        Some(strong @ (Containment::Cgroup | Containment::Keeper)) if !crate::os::PROC_TABLE => {
            Err(Error::Unsupported {
                what: if strong == Containment::Cgroup { "containment cgroup" } else { "containment keeper" },
                source: std::io::Error::other(format!(
                    "the portable backend ({}) holds a tree by its process group only: use marker or auto",
                    std::env::consts::OS
                )),
            })
        }
        asked => Ok(asked),
    }
}

/// What `auto` gives a new guard on this machine now.
pub fn auto() -> Containment {
    if !crate::os::PROC_TABLE {
        return Containment::Marker;
    }
    if !CGROUPS_REFUSED.load(Ordering::Relaxed) && cgroup::hierarchy().is_ok() {
        Containment::Cgroup
    } else {
        Containment::Keeper
    }
}

/// Remembers that creating a cgroup failed, so that `auto` stops trying.
pub(crate) fn cgroups_refused() {
    CGROUPS_REFUSED.store(true, Ordering::Relaxed);
}

/// Where the cgroup2 file system is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts), or why none is.
pub fn cgroup2_mount() -> Result<&'static std::path::Path, &'static str> {
    cgroup::hierarchy().map(|h| h.mount.as_path())
}

/// Every reapkit cgroup on this machine (`reapkit-<guard id>` under the cgroup2 mount): a
/// guard's while it lives; afterwards, a leak.
pub fn reapkit_cgroups() -> Vec<std::path::PathBuf> {
    cgroup::all_reapkit()
}

/// Where cgroups would be made, or why none can be: for `reapkit ps` and error messages.
pub fn describe_machine() -> String {
    if !crate::os::PROC_TABLE {
        return format!("new guards get their process group: the portable backend ({})", std::env::consts::OS);
    }
    match cgroup::hierarchy() {
        Ok(h) if !CGROUPS_REFUSED.load(Ordering::Relaxed) => {
            format!("new guards get a cgroup under {} (cgroup2 at {})", h.own.display(), h.mount.display())
        }
        Ok(h) => format!("new guards get a keeper: cgroups under {} cannot be created by this user", h.own.display()),
        Err(why) => format!("new guards get a keeper: {why}"),
    }
}
