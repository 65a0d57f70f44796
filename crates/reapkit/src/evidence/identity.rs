//! Who a process is, as the kernel can vouch for it across PID namespaces and reboots.
//!
//! A pid alone names nothing: pid namespaces reuse pids (a test in a container is pid 7 there
//! and pid 81234 on the host), and after a reboot early daemons get the same pids and start
//! times again. So an owner is a process (pid, start time) *in a given PID namespace* (its
//! inode) *on a given boot* (`/proc/sys/kernel/random/boot_id`), written
//! `<pid>:<starttime>:<pidns>:<boot id>` in `REAPKIT_OWNER`, the ledger and the labels.
//!
//! [`Namespaces::locate`] decides where such a process is now, from this reader's point of
//! view: alive (and under which pid here), provably gone, from another boot, or not decidable
//! from here (its namespace is not visible) — never "dead" by default.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::os::procfs::{self, ProcId};

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`): fixed since Linux 3.8.
const INIT_PID_NS: u64 = 0xEFFF_FFFC;

/// This process's point of view: the boot it runs on and the PID namespace it sees from.
#[derive(Debug)]
pub struct Viewpoint {
    pub boot: String,
    pub pidns: u64,
    /// `/proc` shows our own PID namespace (`/proc/self` is our pid): otherwise pids read from
    /// it name other processes than the same numbers given to `pidfd_open`.
    consistent: Result<(), String>,
}

impl Viewpoint {
    /// Read once per process.
    pub fn current() -> &'static Viewpoint {
        static VIEW: OnceLock<Viewpoint> = OnceLock::new();
        VIEW.get_or_init(|| {
            let boot = crate::os::boot_id().unwrap_or_default();
            let pidns = crate::os::pidns_of("self").unwrap_or(0);
            let consistent = check_consistent(&boot, pidns);
            Viewpoint { boot, pidns, consistent }
        })
    }

    /// Whether this process sees every process of the machine (the initial PID namespace):
    /// then a namespace without any visible process has no process at all.
    pub fn sees_everything(&self) -> bool {
        self.pidns == INIT_PID_NS
    }

    /// `Ok` when `/proc`, the boot id and our namespace can be trusted; else why not.
    pub fn usable(&self) -> Result<(), &str> {
        self.consistent.as_ref().map(|_| ()).map_err(String::as_str)
    }
}

fn check_consistent(boot: &str, pidns: u64) -> Result<(), String> {
    if !crate::os::PROC_TABLE {
        // The portable backend: no /proc to agree with, no PID namespaces it could see.
        return if valid_boot_id(boot) {
            Ok(())
        } else {
            Err(format!(
                "this OS ({}) gives reapkit no boot identity to tell its processes apart by",
                std::env::consts::OS
            ))
        };
    }
    if !valid_boot_id(boot) {
        return Err("/proc/sys/kernel/random/boot_id is missing or malformed: mount /proc".into());
    }
    if pidns == 0 {
        return Err("/proc/self/ns/pid cannot be read: mount /proc".into());
    }
    let seen: Option<i32> = std::fs::read_link("/proc/self").ok().and_then(|p| p.to_str()?.parse().ok());
    if seen != Some(std::process::id() as i32) {
        return Err(format!(
            "/proc belongs to another PID namespace (it calls this process {seen:?}, the kernel says {}): \
             mount a /proc of this namespace (`unshare --pid --fork --mount-proc`, or `mount -t proc proc /proc`)",
            std::process::id()
        ));
    }
    Ok(())
}

/// A boot id as the kernel prints it: 36 characters of lowercase hex and dashes.
fn valid_boot_id(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

/// The owner of a resource: a process on a given boot, in a given PID namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerId {
    /// Its pid and start time *in its own namespace*.
    pub process: ProcId,
    pub pidns: u64,
    pub boot: String,
}

impl OwnerId {
    /// This process, as the owner of what it starts.
    pub fn of_self() -> Option<OwnerId> {
        let view = Viewpoint::current();
        let process = ProcId::of(std::process::id() as i32)?;
        Some(OwnerId { process, pidns: view.pidns, boot: view.boot.clone() })
    }

    /// The process `id` of our own namespace and boot.
    pub fn here(id: ProcId) -> OwnerId {
        let view = Viewpoint::current();
        OwnerId { process: id, pidns: view.pidns, boot: view.boot.clone() }
    }

    /// Whether it lives on this boot of this kernel.
    pub fn same_boot(&self) -> bool {
        self.boot == Viewpoint::current().boot
    }
}

impl std::fmt::Display for OwnerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}:{}", self.process.pid, self.process.start_time, self.pidns, self.boot)
    }
}

impl std::str::FromStr for OwnerId {
    type Err = String;

    /// Parses `<pid>:<starttime>:<pidns>:<boot id>`; anything else (the bare `<pid>:<starttime>`
    /// of reapkit before 0.2 included) proves nothing.
    fn from_str(s: &str) -> Result<OwnerId, String> {
        let bad = || {
            format!("{:?} is not an owner (<pid>:<starttime>:<pid namespace>:<boot id>)", crate::evidence::escape::evidence(s))
        };
        let mut parts = s.splitn(4, ':');
        let (Some(pid), Some(start), Some(ns), Some(boot)) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        match (pid.parse::<i32>(), start.parse::<u64>(), ns.parse::<u64>()) {
            (Ok(pid), Ok(start_time), Ok(pidns)) if pid > 0 && crate::os::valid_pidns(pidns) && valid_boot_id(boot) => {
                Ok(OwnerId { process: ProcId { pid, start_time }, pidns, boot: boot.to_owned() })
            }
            _ => Err(bad()),
        }
    }
}

impl serde::Serialize for OwnerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for OwnerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<OwnerId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a process named in some namespace on some boot is now, seen from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whereabouts {
    /// Alive (a zombie counts: its parent has not reaped it), as this pid here.
    Alive(ProcId),
    /// Provably gone: why.
    Gone(&'static str),
    /// From another boot: it cannot be any process of this one.
    OtherBoot,
    /// Not decidable from here: why, and what to do.
    Unknown(String),
}

/// Maps processes of other PID namespaces to pids of ours (`/proc/*/status` `NSpid`), built on
/// first need: a sweep that meets only its own namespace never pays for it.
#[derive(Debug, Default)]
pub struct Namespaces {
    table: Option<NsTable>,
}

#[derive(Debug, Default)]
struct NsTable {
    /// Namespace inode → (pid in that namespace → pid here).
    by_ns: HashMap<u64, HashMap<i32, i32>>,
    /// Processes whose namespace we could not read (another user's, as non-root).
    unreadable: usize,
}

impl Namespaces {
    pub fn new() -> Namespaces {
        Namespaces::default()
    }

    /// Where the process `id` of namespace `pidns` on boot `boot` is now.
    pub fn locate(&mut self, id: ProcId, pidns: u64, boot: &str) -> Whereabouts {
        let view = Viewpoint::current();
        if boot != view.boot {
            return Whereabouts::OtherBoot;
        }
        if pidns == view.pidns {
            return match ProcId::of(id.pid) {
                Some(now) if now == id => Whereabouts::Alive(now),
                Some(_) => Whereabouts::Gone("its pid now names another process"),
                None => Whereabouts::Gone("no process has its pid"),
            };
        }
        let table = self.table.get_or_insert_with(NsTable::read);
        let Some(members) = table.by_ns.get(&pidns) else {
            if view.sees_everything() && table.unreadable == 0 {
                return Whereabouts::Gone("its PID namespace has no process left");
            }
            return Whereabouts::Unknown(format!(
                "it lives in PID namespace {pidns}, which this process (in namespace {}) cannot see; \
                 run the sweep in the host's PID namespace or inside that one",
                view.pidns
            ));
        };
        match members.get(&id.pid).and_then(|&here| ProcId::of(here)) {
            Some(now) if now.start_time == id.start_time => Whereabouts::Alive(now),
            Some(_) => Whereabouts::Gone("its pid in its namespace now names another process"),
            None => Whereabouts::Gone("no process has its pid in its namespace"),
        }
    }

    /// Where `owner` is now.
    pub fn owner(&mut self, owner: &OwnerId) -> Whereabouts {
        self.locate(owner.process, owner.pidns, &owner.boot)
    }
}

impl NsTable {
    /// One pass over `/proc`: the namespace of every process, and for those not in ours, its
    /// pid in its own (innermost) namespace, the last field of `NSpid`.
    fn read() -> NsTable {
        let mine = Viewpoint::current().pidns;
        let mut table = NsTable::default();
        let mut buf = Vec::with_capacity(2048);
        for pid in procfs::pids() {
            let Some(ns) = crate::os::pidns_of(&pid.to_string()) else {
                // Gone in between, or not ours to read (a zombie has no namespace links any
                // more; a sandbox's init may refuse even root). One whose `NSpid` has a single
                // pid is in our own namespace: it hides no other one.
                let ours = nspids(pid, &mut buf).is_some_and(|pids| pids.len() == 1);
                let zombie = procfs::Stat::read(pid).is_ok_and(|s| s.is_zombie());
                let exists = std::path::Path::new(&format!("/proc/{pid}")).exists();
                table.unreadable += usize::from(exists && !zombie && !ours);
                continue;
            };
            if ns == mine {
                continue;
            }
            if let Some(inner) = nspids(pid, &mut buf).and_then(|pids| pids.last().copied()) {
                table.by_ns.entry(ns).or_default().insert(inner, pid);
            }
        }
        table
    }
}

/// The pids of `pid` in each PID namespace it is in, from ours down to its own (`NSpid` of
/// `/proc/<pid>/status`), read into `buf`.
fn nspids(pid: i32, buf: &mut Vec<u8>) -> Option<Vec<i32>> {
    procfs::path(format_args!("{pid}/status")).and_then(|p| procfs::read_into(&p, buf)).ok()?;
    let text = String::from_utf8_lossy(buf);
    let line = text.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_round_trips_and_the_old_form_is_refused() {
        let me = OwnerId::of_self().unwrap();
        assert_eq!(me.to_string().parse::<OwnerId>().unwrap(), me);
        assert!("10:20".parse::<OwnerId>().is_err(), "the pre-namespace form proves nothing");
        assert!("10:20:30:not-a-boot-id".parse::<OwnerId>().is_err());
        assert!(format!("0:1:2:{}", me.boot).parse::<OwnerId>().is_err());
        assert!(format!("1:2:3:{}:extra", me.boot).parse::<OwnerId>().is_err());
    }

    #[test]
    fn locate_tells_alive_recycled_and_other_boot_apart() {
        let view = Viewpoint::current();
        view.usable().unwrap();
        let me = ProcId::of(std::process::id() as i32).unwrap();
        let mut ns = Namespaces::new();
        assert_eq!(ns.locate(me, view.pidns, &view.boot), Whereabouts::Alive(me));
        let recycled = ProcId { start_time: me.start_time + 1, ..me };
        assert!(matches!(ns.locate(recycled, view.pidns, &view.boot), Whereabouts::Gone(_)));
        let other_boot = "00000000-0000-0000-0000-000000000000";
        assert_eq!(ns.locate(me, view.pidns, other_boot), Whereabouts::OtherBoot);
    }
}
