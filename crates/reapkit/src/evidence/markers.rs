//! The reapkit variables of a process's environment — its markers — read and checked as
//! hostile input, and who a process is by them: what every sweep, the watchdog and a guard
//! naming the holder of a port go by.

use crate::evidence::identity::OwnerId;
use crate::evidence::ownership::{
    self, ENV_GUARD, ENV_KEEPER, ENV_OWNER, ENV_RUN_ID, ENV_SHARED, ENV_SUPERVISOR, ENV_TEST, ENV_WATCHDOG_OWNER,
};
use crate::os::procfs::{self, Stat};

/// The reapkit variables of one process's environment, checked: a value that could not have
/// been written by reapkit (an owner that does not parse, a guard id with `/../`, a test name
/// with control characters) makes the whole set [`Markers::malformed`], never partly trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Markers {
    pub(crate) run_id: Option<String>,
    pub(crate) owner: Option<OwnerId>,
    pub(crate) guard: Option<String>,
    pub(crate) test: Option<String>,
    /// Set only on reapkit's guardians — watchdogs and keepers: whom they watch.
    pub(crate) watchdog_of: Option<OwnerId>,
    /// A keeper: its descendants are its guard's tree, whatever uid or markers they have.
    pub(crate) keeper: bool,
    pub(crate) supervisor: Option<OwnerId>,
    /// A shared fixture's keeper: the fixture's key. Its owner is the run it serves.
    pub(crate) shared: Option<String>,
    /// Why the markers cannot be believed, if they cannot.
    pub(crate) malformed: Option<String>,
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
            let (key, raw) = (&entry[..eq], &entry[eq + 1..]);
            let Some(name) = [
                ENV_RUN_ID,
                ENV_OWNER,
                ENV_GUARD,
                ENV_TEST,
                ENV_WATCHDOG_OWNER,
                ENV_KEEPER,
                ENV_SUPERVISOR,
                ENV_SHARED,
            ]
            .into_iter()
            .find(|k| k.as_bytes() == key) else {
                continue;
            };
            any |= name != ENV_SUPERVISOR;
            if let Err(reason) = m.set(name, raw) {
                m.malformed.get_or_insert(reason);
            }
        }
        any.then_some(m)
    }

    fn set(&mut self, name: &str, raw: &[u8]) -> Result<(), String> {
        let bad = |why: &str| format!("{name}={:?} {why}", crate::evidence::escape::evidence(&String::from_utf8_lossy(raw)));
        let value = std::str::from_utf8(raw).map_err(|_| bad("is not UTF-8"))?;
        let id = |v: &str| ownership::valid_id(v).then(|| v.to_owned()).ok_or_else(|| bad("is not a reapkit id"));
        let owner = |v: &str| v.parse::<OwnerId>().map_err(|_| bad("is not an owner"));
        match name {
            ENV_RUN_ID => self.run_id = Some(id(value)?),
            ENV_GUARD => self.guard = Some(id(value)?),
            ENV_OWNER => self.owner = Some(owner(value)?),
            ENV_WATCHDOG_OWNER => self.watchdog_of = Some(owner(value)?),
            ENV_KEEPER => {
                self.watchdog_of = Some(owner(value)?);
                self.keeper = true;
            }
            ENV_SUPERVISOR => self.supervisor = Some(owner(value)?),
            ENV_SHARED => self.shared = Some(id(value)?),
            _ if ownership::valid_test_name(value) => self.test = Some(value.to_owned()),
            _ => return Err(bad("is not a test name")),
        }
        Ok(())
    }

    pub(crate) fn is_watchdog(&self) -> bool {
        self.watchdog_of.is_some()
    }

    /// Whom a guardian acts for when it dies: a watchdog's or keeper's owner, a shared
    /// fixture keeper's run owner.
    pub(crate) fn guardian_of(&self) -> Option<&OwnerId> {
        self.watchdog_of.as_ref().or(self.shared.as_ref().and(self.owner.as_ref()))
    }


}

/// The markers a process named by `record` would carry.
pub(crate) fn record_markers(record: &crate::evidence::ledger::Record) -> Markers {
    Markers {
        run_id: Some(record.run_id.clone()),
        owner: Some(record.owner.clone()),
        guard: Some(record.guard.clone()),
        test: Some(record.test.clone()),
        ..Markers::default()
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

/// Who `pid` is, for an error naming the holder of something a guard needed (a port): its
/// command line; whether reapkit started it — by its markers, its nearest marked ancestor or the
/// reapkit cgroup it is in, the kernel's word where the environment was cleared; its test, and
/// whether that test's process still lives; and what to do about it.
pub(crate) fn describe_holder(pid: i32) -> String {
    let what = format!("pid {pid} `{}`", crate::evidence::escape::evidence(&procfs::cmdline(pid)));
    let (markers, how) = match reapkit_markers(pid) {
        Some(found) => found,
        None => {
            return format!(
                "{what}, not started by reapkit: stop it, or give the server another port (port 0 lets it \
                 choose, and the guard reports the port it bound)"
            )
        }
    };
    let test = markers.test.as_deref().map_or_else(String::new, |t| format!(" of test `{t}`"));
    let run = markers.run_id.as_deref().map_or_else(String::new, |r| format!(" (run {r})"));
    let guard = markers.guard.as_deref().map_or_else(String::new, |g| format!(" {g}"));
    let reap = match &markers.run_id {
        Some(run_id) => format!("`reapkit reap --run-id {run_id}` (or `cargo xtask reap`)"),
        None => "`reapkit reap` (or `cargo xtask reap`)".to_owned(),
    };
    let alive = markers.owner.as_ref().map(|o| crate::evidence::identity::Namespaces::new().owner(o));
    match alive {
        Some(crate::evidence::identity::Whereabouts::Alive(p)) => format!(
            "{what}, a reapkit guard{guard}{test}{run} ({how}), whose test process (pid {}) is still running: \
             two tests want the port. Give each its own (port 0 lets the server choose), or serialize them",
            p.pid
        ),
        Some(crate::evidence::identity::Whereabouts::Unknown(why)) => {
            format!("{what}, a reapkit guard{guard}{test}{run} ({how}), whose owner cannot be checked: {why}")
        }
        _ => format!(
            "{what}, a leftover of reapkit guard{guard}{test}{run} ({how}) whose test process has exited. \
             Reap it with {reap}"
        ),
    }
}

/// The reapkit markers that vouch for `pid`, and how they were found: its own environment,
/// its nearest marked ancestor's, or the guard id of the reapkit cgroup it is in.
fn reapkit_markers(pid: i32) -> Option<(Markers, String)> {
    let own = markers_of(pid);
    if own.malformed.is_none() && (own.guard.is_some() || own.owner.is_some()) {
        return Some((own, "by its own markers".to_owned()));
    }
    if let Some(guard) = reapkit_cgroup_guard(pid) {
        let owner = ownership::owner_of_guard(&guard);
        return Some((Markers { guard: Some(guard), owner, ..Markers::default() }, "by its reapkit cgroup".to_owned()));
    }
    let mut at = pid;
    for _ in 0..64 {
        at = Stat::read(at).ok()?.ppid;
        if at <= 1 {
            return None;
        }
        let up = markers_of(at);
        if up.malformed.is_none() && up.guard.is_some() {
            return Some((up, format!("by its ancestor pid {at}")));
        }
    }
    None
}

/// The guard id of the reapkit cgroup `pid` is in, if it is in one.
fn reapkit_cgroup_guard(pid: i32) -> Option<String> {
    crate::os::procfs::cgroup_of(pid)?
        .split('/')
        .rev()
        .find_map(|part| part.strip_prefix(crate::evidence::ownership::CGROUP_PREFIX))
        .filter(|g| ownership::valid_id(g))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers_and_ignores_lookalikes() {
        let me = OwnerId::of_self().unwrap();
        let env = format!("PATH=/bin\0REAPKIT_RUN_ID=r1\0REAPKIT_OWNER={me}\0REAPKIT_TEST=a::b\0XREAPKIT_GUARD=no\0");
        let m = Markers::parse(env.as_bytes()).unwrap();
        assert_eq!(m.run_id.as_deref(), Some("r1"));
        assert_eq!(m.owner.as_ref(), Some(&me));
        assert_eq!(m.test.as_deref(), Some("a::b"));
        assert_eq!((&m.guard, &m.malformed), (&None, &None));
        assert!(!m.is_watchdog());
        assert_eq!(Markers::parse(b"PATH=/bin\0HOME=/root\0"), None);
        assert_eq!(Markers::parse(b"REAPKIT_SUPERVISOR=1:2\0"), None, "a supervisor alone proves nothing");
    }

    #[test]
    fn hostile_values_make_the_markers_malformed() {
        for env in [
            &b"REAPKIT_GUARD=../../etc/x\0"[..],
            b"REAPKIT_RUN_ID=run\x1b[2J\0",
            b"REAPKIT_TEST=t\n::add-mask::x\0",
            b"REAPKIT_OWNER=10:20\0",
            b"REAPKIT_GUARD=\xff\xfe\0",
        ] {
            let m = Markers::parse(env).unwrap();
            let why = m.malformed.unwrap_or_else(|| panic!("{:?} is accepted", String::from_utf8_lossy(env)));
            assert!(!why.contains('\n') && !why.contains('\x1b'), "the reason is escaped: {why}");
        }
    }
}
