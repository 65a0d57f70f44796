//! What a test scope found: each leaked resource named, with what was done and what to do.

use crate::evidence::escape::evidence;
use crate::os::fd_snapshot::Fd;
use crate::registry;
use crate::sweep;

use super::baseline::{LeakKind, LeakPattern};
use super::Isolation;

impl LeakKind {
    fn from_sweep(kind: sweep::LeakKind) -> LeakKind {
        match kind {
            sweep::LeakKind::Process => LeakKind::Process,
            sweep::LeakKind::Container => LeakKind::Container,
            sweep::LeakKind::Network => LeakKind::Network,
            sweep::LeakKind::Volume => LeakKind::Volume,
        }
    }
}

/// One leaked resource.
#[derive(Debug, Clone)]
pub struct ScopeLeak {
    pub kind: LeakKind,
    /// The resource, named: `fd 7 -> socket:[1234] (TCP 127.0.0.1:8080, listening)`, `pid 42 `sleep 60``, `container 3f2a…`.
    pub what: String,
    /// What the scope did about it: `still open`, `killed`, `removed`, ...
    pub action: String,
    /// What the test should do instead.
    pub fix: String,
    /// The names patterns match against (kind word and target; program and command line; image and id).
    names: Vec<String>,
    /// The guard it was found by (a swept process or container), or the descriptor number.
    origin: Origin,
    /// Its pid or short container id, where it has one.
    ident: Option<String>,
    /// `listening on tcp 127.0.0.1:8080`: the ports it held when found.
    listening: Option<String>,
}

/// What a leak came from, for folding it under a guard that outlived its test.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Guard(String),
    /// A descriptor: its number and target.
    Fd(i32, String),
    Other,
}

impl ScopeLeak {
    /// The descriptor it is, if it is one: its number and target.
    pub(super) fn descriptor(&self) -> Option<(i32, String)> {
        match &self.origin {
            Origin::Fd(fd, target) => Some((*fd, target.clone())),
            _ => None,
        }
    }

    pub(super) fn fd(fd: &Fd) -> ScopeLeak {
        let kind = sweep::words(&fd.kind);
        ScopeLeak {
            kind: LeakKind::Fd,
            what: format!("{fd} ({kind})"),
            action: "still open after the test".into(),
            fix: format!(
                "close it before the test ends: drop the File, socket, pipe end, ChildStdin/ChildStdout or OwnedFd \
                 that holds it (a leaked guard holds its child's pipes). Accepted? #[reapkit::test(allow = \"fd:{kind}\")]"
            ),
            names: vec![kind, fd.target.clone()],
            origin: Origin::Fd(fd.fd, fd.target.clone()),
            ident: None,
            listening: None,
        }
    }

    /// A descriptor leak, named by what it is (`TCP 127.0.0.1:8080, listening`) where
    /// `pipes` or the socket tables can say.
    pub(super) fn described(mut self, pipes: &crate::os::sockets::PipeHolders) -> ScopeLeak {
        if let Origin::Fd(fd, target) = &self.origin {
            if let Some(about) = pipes.describe(std::process::id() as i32, target) {
                self.what = format!("fd {fd} -> {target} ({about})");
            }
        }
        self
    }

    /// A live child of the test process that the test started and left running.
    pub(super) fn child(pid: i32, command: String, action: &str) -> ScopeLeak {
        let listening = listening_of_tree(pid);
        ScopeLeak {
            kind: LeakKind::Process,
            what: format!("pid {pid} `{command}`, a child of the test process{}", comma(&listening)),
            action: action.to_owned(),
            fix: "keep its std::process::Child and kill + wait it before the test ends, or spawn it through \
                  reapkit::ProcessGuard, which tears the whole tree down on drop"
                .into(),
            names: process_names(&command),
            origin: Origin::Other,
            ident: Some(pid.to_string()),
            listening,
        }
    }

    /// The process group of a guard that was never dropped, ended by the scope (the portable
    /// backend): folded under the guard.
    pub(super) fn group_ended(guard: &str, pid: i32, command: &str) -> ScopeLeak {
        ScopeLeak {
            kind: LeakKind::Process,
            what: format!("pid {pid} `{command}` and its process group"),
            action: "killed".into(),
            fix: String::new(),
            names: process_names(command),
            origin: Origin::Guard(guard.to_owned()),
            ident: Some(pid.to_string()),
            listening: None,
        }
    }

    /// A guard of the test that was still alive when the test ended, with the leaks it caused
    /// (`ended`: its processes and containers, which the sweep ended; its descriptors).
    pub(super) fn undropped(guard: &registry::LiveGuard, ended: &[ScopeLeak]) -> ScopeLeak {
        let idents = |kind: LeakKind| -> Vec<&str> {
            ended.iter().filter(|l| l.kind == kind).filter_map(|l| l.ident.as_deref()).collect()
        };
        let (pids, containers) = (idents(LeakKind::Process), idents(LeakKind::Container));
        let fds = ended.iter().filter(|l| l.kind == LeakKind::Fd).count();
        let listened: Vec<&str> = ended.iter().filter_map(|l| l.listening.as_deref()).collect();
        let what = format!(
            "`{}` of `{}` created at {}:{} was never dropped (forgotten, moved into a static, or held by a thread or \
             task that outlived the test)",
            guard.kind,
            guard.what,
            guard.created_at.file(),
            guard.created_at.line()
        );
        let mut done = Vec::new();
        if !pids.is_empty() {
            done.push(format!("its process tree was torn down (pid {})", pids.join(", ")));
        }
        if !listened.is_empty() {
            done.push(format!("it was {}", listened.join("; ")));
        }
        if !containers.is_empty() {
            done.push(format!("its container {} was removed", containers.join(", ")));
        }
        if fds > 0 {
            done.push(format!("the {fds} descriptors it holds stay open with it"));
        }
        ScopeLeak {
            kind: if guard.kind == "Container" { LeakKind::Container } else { LeakKind::Process },
            what,
            action: if done.is_empty() { "nothing of it was left to end".into() } else { done.join("; ") },
            fix: format!(
                "let the {} drop before the test ends (or call its shutdown()/remove()): no mem::forget, no static, and \
                 join the threads or tasks that hold it",
                guard.kind
            ),
            names: vec![guard.kind.to_owned()],
            origin: Origin::Guard(guard.id.clone()),
            ident: None,
            listening: None,
        }
    }

    /// Whether this leak is the doing of `guard`: its process or container, or a descriptor
    /// it holds.
    pub(super) fn belongs_to(&self, guard: &registry::LiveGuard) -> bool {
        match &self.origin {
            Origin::Guard(id) => *id == guard.id || id.starts_with(&format!("{}-pid", guard.id)),
            Origin::Fd(fd, target) => guard.fds.iter().any(|h| h.is(*fd, target)),
            Origin::Other => false,
        }
    }

    /// A leak the sweep found by the test's marker, ledger record or labels.
    pub(super) fn swept(leak: &sweep::Leak) -> ScopeLeak {
        let kind = LeakKind::from_sweep(leak.kind);
        let command = leak.command.clone().unwrap_or_default();
        let (what, fix, names) = match kind {
            LeakKind::Process => (
                format!(
                    "pid {} `{command}`, carrying this test's reapkit marker{}",
                    leak.pid.unwrap_or_default(),
                    comma(&leak.listening_words())
                ),
                match leak.found_by {
                    sweep::FoundBy::Ledger => {
                        "its guard was still alive when the test ended (mem::forget, a static, or a thread or task \
                         that outlived the test): drop the guard before the test ends"
                    }
                    _ => {
                        "it escaped its guard's teardown (a daemon that left the tree and the test process): end \
                         it in the server, or give the guard a longer term_grace if it was still exiting"
                    }
                },
                process_names(&command),
            ),
            _ => {
                let id = leak.id.clone().unwrap_or_default();
                let short: String = id.chars().take(12).collect();
                let image = command.split_whitespace().next().unwrap_or_default().to_owned();
                (
                    format!("{} {short} ({command}), labelled with this test", kind.word()),
                    "keep the reapkit::Container guard until the end of the test and let it drop (or call remove()); \
                     a guard that outlives the test (mem::forget, a static) leaks its container",
                    vec![image, id],
                )
            }
        };
        ScopeLeak {
            kind,
            what,
            action: match &leak.detail {
                Some(detail) if leak.action == sweep::Action::Failed => format!("could not end it: {detail}"),
                _ => sweep::action_words(&leak.action),
            },
            fix: fix.to_owned(),
            names,
            origin: leak.guard.clone().map_or(Origin::Other, Origin::Guard),
            ident: Some(leak.ident()),
            listening: leak.listening_words(),
        }
    }

    /// Whether `pattern` names this leak.
    pub fn is(&self, pattern: &LeakPattern) -> bool {
        pattern.matches(self.kind, self.names.iter().map(String::as_str))
    }
}

/// A process answers to its program's file name and to its whole command line.
fn process_names(command: &str) -> Vec<String> {
    let program = command.split_whitespace().next().unwrap_or_default();
    let base = program.rsplit('/').next().unwrap_or(program);
    vec![base.to_owned(), command.to_owned()]
}

/// What a scope found. Its `Display` is the message a failing test shows.
#[derive(Debug, Clone)]
pub struct LeakReport {
    pub test: String,
    pub isolation: Isolation,
    /// Leaks that fail the test.
    pub leaks: Vec<ScopeLeak>,
    /// Leaks accepted by `allow` or the baseline, with the pattern that accepted them.
    pub accepted: Vec<(ScopeLeak, String)>,
    /// Other reasons the test fails: a stale baseline entry, a deferred teardown that
    /// panicked, a check that could not run.
    pub problems: Vec<String>,
    /// What was and was not checked, for the reader.
    pub notes: Vec<String>,
}

impl LeakReport {
    pub(super) fn new(test: String, isolation: Isolation) -> LeakReport {
        LeakReport { test, isolation, leaks: Vec::new(), accepted: Vec::new(), problems: Vec::new(), notes: Vec::new() }
    }

    /// Whether the test fails.
    pub fn fails(&self) -> bool {
        !self.leaks.is_empty() || !self.problems.is_empty()
    }
}

impl std::fmt::Display for LeakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.leaks.len();
        if n > 0 {
            let s = if n == 1 { "" } else { "s" };
            writeln!(f, "reapkit: test `{}` leaked {n} resource{s}:", self.test)?;
        } else {
            writeln!(f, "reapkit: test `{}` did not clean up as expected:", self.test)?;
        }
        // What a leak is comes from the process (its command line): escaped, one line each.
        for leak in &self.leaks {
            writeln!(f, "  - {}: {}.\n    Fix: {}", evidence(&leak.what), evidence(&leak.action), leak.fix)?;
        }
        for problem in &self.problems {
            writeln!(f, "  - {}", evidence(problem))?;
        }
        for (leak, by) in &self.accepted {
            writeln!(f, "  accepted ({by}): {}", evidence(&leak.what))?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

/// `listening on tcp 127.0.0.1:8080` for what `pid` and its descendants listen on, if
/// anything: a leftover that holds a port is named with it.
fn listening_of_tree(pid: i32) -> Option<String> {
    let mut pids = vec![pid];
    pids.extend(crate::os::procfs::descendants(pid).iter().map(|d| d.pid));
    crate::guard::listening::words(&crate::guard::listening::of(&pids))
}

/// `, <words>`, or nothing.
fn comma(words: &Option<String>) -> String {
    words.as_ref().map_or_else(String::new, |w| format!(", {w}"))
}
