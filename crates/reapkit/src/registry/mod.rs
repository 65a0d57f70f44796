//! The registry: where guards report, at the bottom of the crate. Upper layers read from it.
//!
//! A guard being created asks the registry which test it belongs to ([`Attachment::current`]:
//! the scope entered on this thread, else the only one of a test alone in its process) and
//! reports that it starts ([`guard_starting`]); the registry records where its evidence will
//! be (ledger directory, Docker engine) in that test's [`Slot`], and tells the listeners — the
//! watchdog, which starts one per ledger directory. Scopes create and read slots; nothing here
//! calls up into `scope/` or `watchdog.rs`, so the guard modules depend on this file only.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::evidence::ownership;
use crate::evidence::run_stats::{self, Event};

/// What a test scope tells the guards created in it, and what they leave there.
pub(crate) struct Slot {
    pub(crate) test: String,
    /// The test runs alone in its process: guards of threads without a scope of their own are
    /// its guards.
    pub(crate) alone: bool,
    pub(crate) eof_grace: Option<Duration>,
    pub(crate) term_grace: Option<Duration>,
    registered: Mutex<Registered>,
    /// Teardown to run when the scope finishes, last first.
    deferred: Mutex<Vec<Deferred>>,
    /// The slot's guards that have not been dropped yet.
    live: Mutex<Vec<LiveGuard>>,
}

/// A descriptor a guard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeldFd {
    pub(crate) fd: i32,
    /// What it points at, where the guard does not own it (an engine's pooled connection may
    /// close, and its number be reused by anyone): then only the same number *and* target is it.
    pub(crate) target: Option<String>,
}

impl HeldFd {
    /// Whether descriptor `fd`, pointing at `target`, is this one.
    pub(crate) fn is(&self, fd: i32, target: &str) -> bool {
        self.fd == fd && self.target.as_deref().is_none_or(|t| t == target)
    }
}

/// A guard of a slot, from its creation to its drop: what a report says of one that outlived
/// its test.
#[derive(Debug, Clone)]
pub(crate) struct LiveGuard {
    /// The guard id.
    pub(crate) id: String,
    /// `ProcessGuard`, `McpServer`, `Container`.
    pub(crate) kind: &'static str,
    /// What it runs: the command line, or the image.
    pub(crate) what: String,
    /// Where the test created it.
    pub(crate) created_at: &'static std::panic::Location<'static>,
    /// The descriptors it holds (pipes, pidfds, eventfd): open for as long as it lives.
    pub(crate) fds: Vec<HeldFd>,
    /// Its direct child (the server, or its keeper), if it has one.
    pub(crate) child: Option<i32>,
    /// The cgroup it made for its tree (directory and id), if it has one: witnessed made by
    /// this process, which the scope's sweep may take as proof (`sweep::Sweep::witnessed`).
    pub(crate) cgroup: Option<(PathBuf, u64)>,
}

/// A deferred teardown (`scope.defer(..)`, `reapkit::defer(..)`).
pub(crate) type Deferred = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("test", &self.test).field("alone", &self.alone).finish_non_exhaustive()
    }
}

/// Where the evidence of a slot's guards is: what its scope sweeps when the test ends.
#[derive(Debug, Default)]
pub(crate) struct Registered {
    pub(crate) ledger_dirs: Vec<PathBuf>,
    pub(crate) docker_hosts: Vec<String>,
}

impl Slot {
    pub(crate) fn new(test: String, alone: bool, eof_grace: Option<Duration>, term_grace: Option<Duration>) -> Slot {
        Slot {
            test,
            alone,
            eof_grace,
            term_grace,
            registered: Mutex::default(),
            deferred: Mutex::default(),
            live: Mutex::default(),
        }
    }

    /// The guards created in the slot and not dropped (yet).
    pub(crate) fn live_guards(&self) -> Vec<LiveGuard> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn defer(&self, teardown: Deferred) {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner()).push(teardown);
    }

    /// The last deferred teardown, taken out so that it runs without the lock held (it may defer more).
    pub(crate) fn pop_deferred(&self) -> Option<Deferred> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// What the slot's guards registered, taken out (the scope reads it once, at its end).
    pub(crate) fn take_registered(&self) -> Registered {
        std::mem::take(&mut *self.registered.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn register(&self, ledger_dir: &Path, docker_host: Option<&str>) {
        let mut r = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        if !r.ledger_dirs.iter().any(|d| d == ledger_dir) {
            r.ledger_dirs.push(ledger_dir.to_path_buf());
        }
        if let Some(host) = docker_host.filter(|h| !r.docker_hosts.iter().any(|k| k == h)) {
            r.docker_hosts.push(host.to_owned());
        }
    }
}

thread_local! {
    /// The slots entered on this thread, innermost last.
    static CURRENT: RefCell<Vec<Arc<Slot>>> = const { RefCell::new(Vec::new()) };
}
/// Every slot entered and not yet left, in this process.
static ACTIVE: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());
/// Guards created while several slots were active, on a thread that had none: nobody's.
static UNATTRIBUTED: AtomicUsize = AtomicUsize::new(0);

fn active() -> std::sync::MutexGuard<'static, Vec<Arc<Slot>>> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes `slot` this thread's current one, and one of the process's active ones.
pub(crate) fn enter(slot: &Arc<Slot>) {
    CURRENT.with(|c| c.borrow_mut().push(Arc::clone(slot)));
    active().push(Arc::clone(slot));
}

/// Attaches `slot` to this thread too (a thread the test spawned), until [`leave_thread`].
pub(crate) fn enter_thread(slot: &Arc<Slot>) {
    CURRENT.with(|c| c.borrow_mut().push(Arc::clone(slot)));
}

pub(crate) fn leave_thread(slot: &Arc<Slot>) {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(at) = c.iter().rposition(|s| Arc::ptr_eq(s, slot)) {
            c.remove(at);
        }
    });
}

/// Detaches `slot` from this thread and the process: guards created from now on are not its.
pub(crate) fn leave(slot: &Arc<Slot>) {
    CURRENT.with(|c| c.borrow_mut().retain(|s| !Arc::ptr_eq(s, slot)));
    active().retain(|s| !Arc::ptr_eq(s, slot));
}

/// How many guards so far belonged to no slot though slots were active.
pub(crate) fn unattributed() -> usize {
    UNATTRIBUTED.load(Ordering::Relaxed)
}

/// The slot a guard being created belongs to.
#[derive(Debug)]
pub(crate) struct Attachment(pub(crate) Arc<Slot>);

impl Attachment {
    /// This thread's slot, else the only one active in the process if its test runs alone
    /// (a thread or task the test spawned). Never a guess: where other tests may run beside
    /// it, even without scopes of their own, a guard of a thread without a slot is nobody's.
    pub(crate) fn current() -> Option<Attachment> {
        if let Some(slot) = CURRENT.with(|c| c.borrow().last().cloned()) {
            return Some(Attachment(slot));
        }
        let active = active();
        match active.as_slice() {
            [] => None,
            [only] if only.alone => Some(Attachment(Arc::clone(only))),
            _ => {
                UNATTRIBUTED.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The test name a guard of `attachment` carries: the slot's, else this thread's test.
    pub(crate) fn test_name(attachment: Option<&Attachment>) -> String {
        attachment.map_or_else(ownership::current_test_name, |a| a.0.test.clone())
    }

    pub(crate) fn eof_grace(&self) -> Option<Duration> {
        self.0.eof_grace
    }

    pub(crate) fn term_grace(&self) -> Option<Duration> {
        self.0.term_grace
    }
}

/// Something that wants to know when a guard starts: the watchdog.
type Listener = fn(&Path);

static LISTENERS: OnceLock<Mutex<Vec<Listener>>> = OnceLock::new();

fn listeners() -> std::sync::MutexGuard<'static, Vec<Listener>> {
    LISTENERS.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Calls `listener` for every guard that starts from now on, with its ledger directory.
pub(crate) fn listen(listener: Listener) {
    listeners().push(listener);
}

/// A guard now exists: the process's until [`guard_dropped`], and `attachment`'s slot's.
pub(crate) fn guard_created(attachment: Option<&Attachment>, guard: LiveGuard) {
    run_stats::note(Event::Up);
    lease_created(attachment, guard);
}

/// A lease on a shared fixture now exists: held like a guard (its descriptor is reapkit's, and
/// one that outlives its test is reported), but not counted among the run's guards.
pub(crate) fn lease_created(attachment: Option<&Attachment>, guard: LiveGuard) {
    let slot = attachment.map(|a| Arc::downgrade(&a.0));
    if let Some(a) = attachment {
        a.0.live.lock().unwrap_or_else(|p| p.into_inner()).push(guard.clone());
    }
    guards().push((guard, slot));
}

/// Every live guard of the process, with the slot it belongs to.
static GUARDS: Mutex<Vec<(LiveGuard, Option<std::sync::Weak<Slot>>)>> = Mutex::new(Vec::new());

fn guards() -> std::sync::MutexGuard<'static, Vec<(LiveGuard, Option<std::sync::Weak<Slot>>)>> {
    GUARDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The guard `id` existed but did not get ready (its handshake or readiness check failed);
/// its drop follows.
pub(crate) fn guard_failed(id: &str) {
    if guards().iter().any(|(g, _)| g.id == id) {
        run_stats::note(Event::Fail);
    }
}

/// The guard `id` was dropped (or shut down), its teardown having ended `escapees`: it is no
/// longer anyone's concern.
pub(crate) fn guard_dropped(id: &str, escapees: usize) {
    if forget(id) {
        run_stats::note(Event::End { escapees });
    }
}

/// The lease `id` ended.
pub(crate) fn lease_dropped(id: &str) {
    forget(id);
}

/// Removes `id` from the live guards and its slot; whether it was there.
fn forget(id: &str) -> bool {
    let mut all = guards();
    let Some(at) = all.iter().position(|(g, _)| g.id == id) else { return false };
    let (_, slot) = all.swap_remove(at);
    if let Some(slot) = slot.and_then(|s| s.upgrade()) {
        slot.live.lock().unwrap_or_else(|p| p.into_inner()).retain(|g| g.id != id);
    }
    true
}

/// reapkit's own children that are no test's leak: live guards' direct children (servers,
/// keepers) and the watchdogs.
static GUARDIANS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Notes that `pid` is one of reapkit's own helpers (a watchdog, a fixture keeper).
pub(crate) fn note_guardian(pid: i32) {
    GUARDIANS.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

/// Whether the child `pid` is one of reapkit's own helpers: a watchdog, or a shared fixture's
/// keeper (adopted by this process when it is a subreaper).
pub(crate) fn is_guardian(pid: i32) -> bool {
    GUARDIANS.lock().unwrap_or_else(|p| p.into_inner()).contains(&pid)
}

/// Whether the child `pid` is reapkit's: a live guard's, or a guardian.
pub(crate) fn is_ours(pid: i32) -> bool {
    guards().iter().any(|(g, _)| g.child == Some(pid)) || is_guardian(pid)
}

/// Whether a live guard holds descriptor `fd`, which points at `target`.
pub(crate) fn holds_fd(fd: i32, target: &str) -> bool {
    guards().iter().any(|(g, _)| g.fds.iter().any(|h| h.is(fd, target)))
}

/// The tests whose slots are active, and `also` (a test that is just ending; empty for none).
pub(crate) fn active_tests(also: &str) -> Vec<String> {
    let mut tests: Vec<String> = active().iter().map(|s| s.test.clone()).collect();
    if !also.is_empty() && !tests.iter().any(|t| t == also) {
        tests.push(also.to_owned());
    }
    tests
}

/// A guard is about to create its resource, with its record in `ledger_dir` (and its
/// container on `docker_host`): recorded in its slot, and told to the listeners.
pub(crate) fn guard_starting(attachment: Option<&Attachment>, ledger_dir: &Path, docker_host: Option<&str>) {
    run_stats::note(Event::Start);
    let to_tell: Vec<Listener> = listeners().clone();
    for listener in to_tell {
        listener(ledger_dir);
    }
    if let Some(a) = attachment {
        a.0.register(ledger_dir, docker_host);
    }
}
