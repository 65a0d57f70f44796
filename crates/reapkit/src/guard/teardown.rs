//! The teardown protocol, and the only code in reapkit that sends signals.
//!
//! It follows the MCP stdio transport's shutdown order, applied to the whole tree:
//! 1. close the child's stdin and our end of its stdout, wait `eof_grace` for it to exit;
//! 2. SIGTERM to every live member of the tree, wait `term_grace`;
//! 3. SIGKILL to whatever of the tree still lives (`cgroup.kill` where the tree is a cgroup);
//! 4. marker-only containment: sweep escapees carrying this guard's marker, killed the same way;
//! 5. reap the zombies of the tree that are ours (`waitid` on each one's pidfd, never
//!    `waitpid(-1)`); a keeper reaps its own and exits with the server's status;
//! 6. stop the stderr drain, remove the cgroup and the ledger record.
//!
//! The members come from the guard's containment (see [`crate::containment`]): the cgroup's
//! `cgroup.procs`, the keeper's descendants, or — marker only — the leader's descendants, our
//! adopted children in its group or carrying its marker, and a `/proc` scan.
//!
//! [`run_all`] runs the protocol on many trees in one wave — EOF to all, one grace, SIGTERM to
//! all, one grace, SIGKILL to all — so that N guards cost one set of graces, not N.
//!
//! Every wait is a `poll` (pidfds; `cgroup.events`, which wakes on change): the protocol wakes
//! the moment the last process dies. Every signal to a process goes through a pidfd opened and
//! then checked against the process's start time, so a recycled pid is never hit; the only
//! group signal is `killpg` on the group the leader made at spawn, whose id cannot be reused
//! while the leader is unreaped or the group has members.

use std::os::fd::BorrowedFd;
use std::process::{Child, ChildStdin, ChildStdout};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::containment::capabilities::{Concern, Guarantee};
use crate::containment::cgroup::{self, GuardCgroup};
use crate::containment::{keeper, Containment};
use crate::evidence::ledger;
use crate::os::member::Member;
use crate::os;
use crate::evidence::ownership::ENV_GUARD;
use crate::os::procfs::{self, MarkerScan, ProcId};
use crate::guard::stderr_ring::StderrRing;

/// How long SIGKILLed processes get to disappear before teardown reports them as unkillable
/// (a process in uninterruptible sleep, e.g. on a hung NFS mount).
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Discovery rounds while new processes keep appearing (a tree forking during teardown).
const ROUNDS: usize = 8;
/// How long a cgroup gets to freeze before its members are signalled anyway.
const FREEZE_WAIT: Duration = Duration::from_millis(100);

/// The two waits of the teardown protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Graces {
    /// After closing stdin (and our end of stdout): wait this long for a clean exit.
    pub eof: Duration,
    /// After SIGTERM to the tree: wait this long before SIGKILL.
    pub term: Duration,
}

/// The step of the protocol that ended the guarded child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// It had exited before teardown began.
    AlreadyExited,
    /// It exited on stdin EOF within `eof_grace`.
    StdinEof,
    /// It exited after SIGTERM.
    Sigterm,
    /// It needed SIGKILL.
    Sigkill,
    /// Even SIGKILL did not end it within a bounded wait.
    Unkillable,
}

/// A step of the protocol, for the per-step timings of a [`Teardown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    EofWait,
    Term,
    Kill,
    Sweep,
    Reap,
    Close,
}

/// What a teardown did: how the child ended, how long each step took, what else was killed.
#[derive(Debug, Clone)]
pub struct Teardown {
    /// The child's exit status, once reaped.
    pub status: Option<std::process::ExitStatus>,
    pub ended_by: EndedBy,
    /// How the guard held its tree: what the report can vouch for.
    pub containment: Containment,
    /// Time spent in each step that ran, in order.
    pub steps: Vec<(Step, Duration)>,
    /// Processes of the tree other than the child that were still alive and got signalled.
    pub killed: Vec<ProcId>,
    /// Processes found only by the `/proc` marker scan (reached another reaper) and killed.
    pub escapees: Vec<ProcId>,
    /// Zombies of the tree (adopted by the test process) that were reaped.
    pub reaped: Vec<ProcId>,
    /// Anything that did not go to plan, in words.
    pub problems: Vec<String>,
    /// What this guard's containment could not vouch for here ([`crate::containment::capabilities::capabilities()`]): a
    /// clean teardown is clean only as far as these allow.
    pub gaps: Vec<(Concern, Guarantee)>,
    pub total: Duration,
}

impl Teardown {
    /// Nothing went wrong: every process of the tree is gone and every resource released.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.ended_by != EndedBy::Unkillable
    }

    /// How long `step` took, if it ran.
    pub fn step(&self, step: Step) -> Option<Duration> {
        self.steps.iter().find(|(s, _)| *s == step).map(|(_, d)| *d)
    }
}

impl std::fmt::Display for Teardown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ended by {:?} in {:?} ({} containment)", self.ended_by, self.total, self.containment)?;
        if let Some(status) = self.status {
            write!(f, ", {status}")?;
        }
        if !self.killed.is_empty() || !self.escapees.is_empty() {
            write!(f, "; also killed {} in the tree and {} escapees", self.killed.len(), self.escapees.len())?;
        }
        for p in &self.problems {
            write!(f, "; {}", crate::evidence::escape::evidence(p))?;
        }
        for (concern, guarantee) in &self.gaps {
            match guarantee {
                Guarantee::Full(_) => {}
                Guarantee::Partial(what) => write!(f, "; {concern} only partly guaranteed here: {what}")?,
                Guarantee::Missing(why) => write!(f, "; {concern} NOT guaranteed here: {why}")?,
            }
        }
        Ok(())
    }
}

/// How a guard holds its tree.
#[derive(Debug)]
pub(crate) enum Holder {
    Cgroup(GuardCgroup),
    /// The keeper: our direct child, the server's parent.
    Keeper(Member),
    /// Marker-only; `since` is the leader's start time (adopted children younger than it may
    /// be escapees this containment cannot prove).
    Marker {
        since: u64,
    },
}

impl Holder {
    pub(crate) fn containment(&self) -> Containment {
        match self {
            Holder::Cgroup(_) => Containment::Cgroup,
            Holder::Keeper(_) => Containment::Keeper,
            Holder::Marker { .. } => Containment::Marker,
        }
    }
}

/// Everything a guard holds that teardown ends or releases.
#[derive(Debug)]
pub(crate) struct Tree {
    /// The guard id: `REAPKIT_GUARD`'s value.
    pub(crate) id: String,
    /// The server (the guarded command itself).
    pub(crate) leader: Member,
    /// Our direct child: the server, or its keeper.
    pub(crate) child: Child,
    pub(crate) holder: Holder,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Option<ChildStdout>,
    /// Closes the pipes where they went instead (an async transport holds them).
    pub(crate) close_stdio: Option<CloseStdio>,
    pub(crate) stderr: Option<StderrRing>,
    pub(crate) graces: Graces,
    /// Marker-only: whether to scan `/proc` for escapees carrying the marker.
    pub(crate) scan_proc: bool,
    pub(crate) ledger: Option<ledger::Entry>,
}

impl Tree {
    /// The processes of the tree now, the leader first: its cgroup's members, the keeper's
    /// descendants, or (marker-only) what teardown would find.
    pub(crate) fn pids(&self) -> Vec<i32> {
        let mut pids = vec![self.leader.id.pid];
        let members: Vec<i32> = match &self.holder {
            Holder::Cgroup(cg) => cg.members(),
            Holder::Keeper(keeper) => procfs::descendants(keeper.id.pid).iter().map(|d| d.pid).collect(),
            Holder::Marker { .. } => discover_marker_tree(self).iter().map(|m| m.id.pid).collect(),
        };
        pids.extend(members.into_iter().filter(|&p| p != self.leader.id.pid));
        pids
    }

    /// The descriptors the guard holds while it lives: its pipes, pidfds and drain.
    pub(crate) fn fds(&self) -> Vec<crate::registry::HeldFd> {
        use std::os::fd::AsRawFd;
        let mut fds = self.leader.handle.raw_fds();
        fds.extend(self.stdin.as_ref().map(AsRawFd::as_raw_fd));
        fds.extend(self.stdout.as_ref().map(AsRawFd::as_raw_fd));
        fds.extend(self.stderr.iter().flat_map(StderrRing::own_fds));
        match &self.holder {
            Holder::Cgroup(cg) => fds.push(cg.events_fd().as_raw_fd()),
            Holder::Keeper(keeper) => fds.extend(keeper.handle.raw_fds()),
            Holder::Marker { .. } => {}
        }
        // Its own: open as long as the guard is, so the number alone names them. The drain's
        // close when its thread ends: by number *and* target (a later descriptor may get the number).
        let mut held: Vec<crate::registry::HeldFd> =
            fds.into_iter().map(|fd| crate::registry::HeldFd { fd, target: None }).collect();
        for fd in self.stderr.iter().flat_map(StderrRing::thread_fds) {
            let target = crate::os::fd_snapshot::target_of_own(fd);
            held.extend(target.map(|t| crate::registry::HeldFd { fd, target: Some(t) }));
        }
        held
    }
}

/// Step 1 for pipes the guard gave away: it runs where the guard would drop its own.
pub(crate) struct CloseStdio(pub(crate) Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for CloseStdio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloseStdio")
    }
}

/// One tree's progress through the protocol.
struct Run {
    started: Instant,
    clock: Clock,
    problems: Vec<String>,
    ended_by: EndedBy,
    exited_on_eof: bool,
    /// Members signalled so far (the leader excluded), held by pidfd.
    members: Vec<Member>,
    /// Processes of the tree found outside its cgroup (named once each).
    left: Vec<ProcId>,
    escapees: Vec<Member>,
    done: bool,
}

/// Runs the protocol on one tree.
pub(crate) fn run(tree: &mut Tree) -> Teardown {
    run_all(&mut [tree]).pop().expect("one report per tree")
}

/// Runs the protocol on `trees` in one wave: each step for all of them at once, each wait the
/// longest grace of the trees still in it.
pub(crate) fn run_all(trees: &mut [&mut Tree]) -> Vec<Teardown> {
    let mut runs: Vec<Run> = trees
        .iter()
        .map(|_| {
            let started = Instant::now();
            Run {
                started,
                clock: Clock { last: started, steps: Vec::new() },
                problems: Vec::new(),
                ended_by: EndedBy::StdinEof,
                exited_on_eof: false,
                members: Vec::new(),
                left: Vec::new(),
                escapees: Vec::new(),
                done: false,
            }
        })
        .collect();

    for (tree, run) in trees.iter_mut().zip(&mut runs) {
        check_keeper(tree, run);
    }

    // 1. The polite request: EOF on stdin, EPIPE on the next write to stdout.
    for (tree, run) in trees.iter_mut().zip(&mut runs) {
        if tree.leader.has_exited() {
            run.ended_by = EndedBy::AlreadyExited;
        }
        drop(tree.stdin.take());
        drop(tree.stdout.take());
        if let Some(close) = tree.close_stdio.take() {
            (close.0)();
        }
    }
    let eof = trees.iter().map(|t| t.graces.eof).max().unwrap_or_default();
    let leaders: Vec<BorrowedFd<'_>> = trees.iter().map(|t| t.leader.handle.fd()).collect();
    os::wait_all_readable(&leaders, os::deadline_in(eof));
    for (tree, run) in trees.iter().zip(&mut runs) {
        run.exited_on_eof = tree.leader.has_exited();
        run.done = run.exited_on_eof && tree_is_empty(tree);
        run.clock.mark(Step::EofWait);
    }

    // 2. SIGTERM to every live member, one grace. 3. SIGKILL to what is left, one bounded wait.
    let term = trees.iter().zip(&runs).filter(|(_, r)| !r.done).map(|(t, _)| t.graces.term).max();
    if let Some(term) = term {
        for (sig, grace, step) in [(Signal::SIGTERM, term, Step::Term), (Signal::SIGKILL, KILL_WAIT, Step::Kill)] {
            let active: Vec<bool> = runs.iter().map(|r| !r.done).collect();
            if !active.contains(&true) {
                break;
            }
            signal_wave(trees, &mut runs, sig, os::deadline_in(grace));
            for ((tree, run), was_active) in trees.iter().zip(&mut runs).zip(active) {
                if !was_active {
                    continue;
                }
                run.clock.mark(step);
                let ended_now = !run.exited_on_eof && run.ended_by == EndedBy::StdinEof && tree.leader.has_exited();
                if ended_now {
                    run.ended_by = if sig == Signal::SIGTERM { EndedBy::Sigterm } else { EndedBy::Sigkill };
                }
            }
        }
    }

    trees.iter_mut().zip(runs).map(|(tree, run)| finish(tree, run)).collect()
}

/// A keeper that died while its server lived (killed from outside, or by a process of its own
/// tree) broke the containment: its tree was re-parented to this process, where only the
/// group, the marker and ancestry can find it. From then on the teardown is marker-only from
/// the keeper's start, and says so: what carries none of those is named, never called clean.
/// Checked before each step, since the keeper may be dying when the teardown begins.
fn check_keeper(tree: &mut Tree, run: &mut Run) {
    let Holder::Keeper(keeper) = &tree.holder else { return };
    // A keeper exits on its own only after its server, with the server's status.
    if !keeper.has_exited() || tree.leader.has_exited() {
        return;
    }
    run.problems.push(format!(
        "containment broken: its keeper (pid {}) died while the guard lived (killed from outside or by a process \
         of its tree); the tree was re-parented to this process and is ended by its group, its marker and \
         ancestry only",
        keeper.id.pid
    ));
    tree.holder = Holder::Marker { since: keeper.id.start_time };
    tree.scan_proc = true;
}

/// Sends `sig` to the live members of every tree not yet done, and waits until all are, or
/// `deadline`; a tree that forked meanwhile gets the signal again (in rounds).
fn signal_wave(trees: &mut [&mut Tree], runs: &mut [Run], sig: Signal, deadline: Instant) {
    for _ in 0..ROUNDS {
        let mut signalled = false;
        for (tree, run) in trees.iter_mut().zip(runs.iter_mut()).filter(|(_, r)| !r.done) {
            check_keeper(tree, run);
            signalled |= signal_tree(tree, run, sig);
        }
        wait_trees(trees, runs, deadline);
        if !signalled || runs.iter().all(|r| r.done) || Instant::now() >= deadline {
            return;
        }
    }
}

/// Whether nothing of `tree` is alive any more (the leader aside).
fn tree_is_empty(tree: &Tree) -> bool {
    match &tree.holder {
        Holder::Cgroup(cg) => cg.is_empty(),
        Holder::Keeper(keeper) => keeper::tree_is_empty(keeper.id.pid),
        Holder::Marker { .. } => discover_marker_tree(tree).iter().all(Member::has_exited),
    }
}

/// The live (not zombie) descendants of `pid`, by verified pidfd: a keeper's tree.
fn live_descendants(pid: i32) -> Vec<Member> {
    procfs::descendants(pid)
        .into_iter()
        .filter(|d| !procfs::Stat::read(d.pid).is_ok_and(|s| s.is_zombie()))
        .filter_map(Member::open)
        .collect()
}

/// Sends `sig` to every live member of `tree`; returns whether any got it.
fn signal_tree(tree: &Tree, run: &mut Run, sig: Signal) -> bool {
    let mut frozen: Option<&GuardCgroup> = None;
    let live: Vec<Member> = match &tree.holder {
        Holder::Cgroup(cg) => {
            // What left the cgroup below a member is the tree's still, by ancestry.
            let leavers = left_the_cgroup(cg, run);
            if sig == Signal::SIGKILL && !cg.is_empty() {
                // Atomic: a process forking right now cannot slip out.
                match cg.kill() {
                    Err(e) => run.problems.push(format!("cgroup.kill of {}: {e}", cg.dir().display())),
                    Ok(()) if leavers.is_empty() => return true,
                    Ok(()) => {}
                }
            }
            // Frozen while listed and signalled (thawed below): a member forking right now would
            // otherwise have a child the signal misses, which then waits out the whole grace.
            frozen = cg.freeze(os::deadline_in(FREEZE_WAIT)).then_some(cg);
            let mut members: Vec<Member> =
                cg.members().into_iter().filter_map(ProcId::of).filter_map(Member::open).collect();
            members.extend(leavers);
            members
        }
        Holder::Keeper(keeper) => live_descendants(keeper.id.pid),
        Holder::Marker { .. } => {
            // Found before the group signal, so that members dying of it are still known (and
            // their zombies reaped).
            let found = discover_marker_tree(tree);
            // The group the leader made at spawn: its id stays reserved while the leader is
            // unreaped, so it names no one else's. Members that left it are signalled one by one.
            signal_group(tree.leader.id.pid, sig);
            found
        }
    };
    // The leader, if it left its group, by the handle the guard holds.
    let leader = matches!(tree.holder, Holder::Marker { .. }) && !tree.leader.has_exited();
    // Every member found is remembered (to reap its zombie); only the live ones are signalled.
    let (live, gone): (Vec<Member>, Vec<Member>) = live.into_iter().partition(|m| !m.has_exited());
    for m in gone {
        if m.id != tree.leader.id && !run.members.iter().any(|k| k.id == m.id) {
            run.members.push(m);
        }
    }
    for m in live.iter().chain(leader.then_some(&tree.leader)) {
        if let Err(e) = m.handle.signal(sig as i32) {
            if e.raw_os_error() != Some(libc::ESRCH) {
                let uid = procfs::owner_uid(m.id.pid).map_or_else(|_| "?".into(), |u| u.to_string());
                run.problems.push(format!(
                    "{sig} to pid {} (uid {uid}, `{}`): {e}",
                    m.id.pid,
                    procfs::cmdline(m.id.pid)
                ));
            }
        }
    }
    if let Some(cg) = frozen {
        cg.thaw();
    }
    let any = !live.is_empty() || leader;
    for m in live {
        if m.id != tree.leader.id && !run.members.iter().any(|k| k.id == m.id) {
            run.members.push(m);
        }
    }
    any
}

/// Live descendants of the cgroup's members that are not in it any more: they wrote themselves
/// into another cgroup. Ours by ancestry; each one is named once as a breach of the containment.
fn left_the_cgroup(cg: &GuardCgroup, run: &mut Run) -> Vec<Member> {
    let members = cg.members();
    let mut leavers = Vec::new();
    for pid in &members {
        for d in procfs::descendants(*pid).into_iter().filter(|d| !members.contains(&d.pid)) {
            // Gone, or still in the guard's cgroup (forked since the list was read): no leaver.
            let Some(now) = cgroup::cgroup_of(d.pid) else { continue };
            if cg.had(d.pid) || procfs::Stat::read(d.pid).is_ok_and(|s| s.is_zombie()) {
                continue;
            }
            if !run.left.contains(&d) {
                run.problems.push(format!(
                    "containment broken: pid {} (`{}`) left the guard's cgroup for {now}; ended as a descendant of \
                     its member pid {pid}",
                    d.pid,
                    procfs::cmdline(d.pid)
                ));
                run.left.push(d);
            }
            leavers.extend(Member::open(d));
        }
    }
    leavers
}

/// Waits until every tree still in the wave is empty, or `deadline`.
fn wait_trees(trees: &[&mut Tree], runs: &mut [Run], deadline: Instant) {
    loop {
        for (tree, run) in trees.iter().zip(runs.iter_mut()) {
            // Both, always: reading `cgroup.events` is also what re-arms its POLLPRI.
            let empty = tree_is_empty(tree);
            // Members of a cgroup's tree that left it are waited for by their pidfds.
            let left_gone = !matches!(tree.holder, Holder::Cgroup(_)) || run.members.iter().all(Member::has_exited);
            run.done = run.done || (empty && left_gone && tree.leader.has_exited());
        }
        if Instant::now() >= deadline {
            return;
        }
        let mut fds: Vec<(BorrowedFd<'_>, libc::c_short)> = Vec::new();
        for (tree, run) in trees.iter().zip(runs.iter()).filter(|(_, r)| !r.done) {
            if !tree.leader.has_exited() {
                fds.push((tree.leader.handle.fd(), libc::POLLIN));
            }
            if let Holder::Cgroup(cg) = &tree.holder {
                fds.push((cg.events_fd(), libc::POLLPRI));
            }
            fds.extend(run.members.iter().filter(|m| !m.has_exited()).map(|m| (m.handle.fd(), libc::POLLIN)));
        }
        if fds.is_empty() || os::poll_for(&fds, deadline).is_empty() {
            return;
        }
    }
}

/// Steps 4–6 for one tree, and its report.
fn finish(tree: &mut Tree, mut run: Run) -> Teardown {
    // 4. Escapees that reached another subreaper or PID 1: only the marker finds them.
    if let (Holder::Marker { .. }, true) = (&tree.holder, tree.scan_proc) {
        sweep_escapees(tree, &mut run);
        run.clock.mark(Step::Sweep);
    }

    // Without a process table the group's other members can be neither listed nor waited
    // for: whatever is still in the group outlived its leader, and gets SIGKILL while the
    // leader is unreaped (its pid, the group's id, names no one else's group).
    if !os::PROC_TABLE && matches!(tree.holder, Holder::Marker { .. }) && tree.leader.has_exited() {
        signal_group(tree.leader.id.pid, Signal::SIGKILL);
    }

    // 5. Zombies, and the child's status.
    let mut reaped = Vec::new();
    let status = match &tree.holder {
        Holder::Keeper(keeper) => {
            // It exits, with the server's status, once its tree is gone.
            if !os::wait_readable(keeper.handle.fd(), os::deadline_in(KILL_WAIT)) {
                run.problems.push(format!("the keeper (pid {}) did not exit after its tree; killed", keeper.id.pid));
                let _ = keeper.handle.signal(libc::SIGKILL);
                os::wait_readable(keeper.handle.fd(), os::deadline_in(KILL_WAIT));
            }
            tree.child.try_wait().ok().flatten()
        }
        _ if tree.leader.has_exited() => tree.child.try_wait().ok().flatten(),
        _ => None,
    };
    // A server whose keeper died is this process's child now: its zombie is ours to reap.
    if tree.leader.id.pid != tree.child.id() as i32 && tree.leader.handle.reap() {
        reaped.push(tree.leader.id);
    }
    match &tree.holder {
        Holder::Cgroup(cg) => {
            // Orphans of the tree re-parented to us (when this process is a subreaper).
            for pid in procfs::children(std::process::id() as i32) {
                if pid != tree.leader.id.pid && cg.had(pid) && procfs::Stat::read(pid).is_ok_and(|s| s.is_zombie()) {
                    if let Some(m) = ProcId::of(pid).and_then(Member::open) {
                        if m.handle.reap() {
                            reaped.push(m.id);
                        }
                    }
                }
            }
        }
        Holder::Keeper(_) => {}
        Holder::Marker { .. } => {
            reaped.extend(run.members.iter().chain(&run.escapees).filter(|m| m.handle.reap()).map(|m| m.id));
        }
    }
    let survivors = survivors(tree, &run);
    if !survivors.is_empty() && run.ended_by != EndedBy::AlreadyExited && !tree.leader.has_exited() {
        run.ended_by = EndedBy::Unkillable;
    }
    run.problems.extend(survivors);
    match tree.holder {
        Holder::Marker { since } => run.problems.extend(unproven_adoptions(tree, &run, since)),
        // A member that left the cgroup and whose parent died came here (the subreaper).
        Holder::Cgroup(_) => run.problems.extend(unproven_adoptions(tree, &run, tree.leader.id.start_time)),
        Holder::Keeper(_) => {}
    }
    run.clock.mark(Step::Reap);

    // 6. Release what we hold.
    if let Some(ring) = tree.stderr.as_mut() {
        ring.stop();
    }
    if let Holder::Cgroup(cg) = &tree.holder {
        if let Err(e) = cg.remove() {
            run.problems.push(format!("could not remove the cgroup {}: {e}", cg.dir().display()));
        }
    }
    if let Some(entry) = tree.ledger.take() {
        if let Err(e) = entry.remove() {
            run.problems.push(format!("could not remove the ledger record: {e}"));
        }
    }
    run.clock.mark(Step::Close);

    Teardown {
        status,
        ended_by: run.ended_by,
        containment: tree.holder.containment(),
        steps: run.clock.steps,
        killed: run.members.iter().map(|m| m.id).collect(),
        escapees: run.escapees.iter().map(|m| m.id).collect(),
        reaped,
        problems: run.problems,
        gaps: crate::containment::capabilities::containment_gaps(tree.holder.containment()),
        total: run.started.elapsed(),
    }
}

/// What of the tree is still alive after SIGKILL, in words: never silently dropped.
fn survivors(tree: &Tree, run: &Run) -> Vec<String> {
    let alive: Vec<ProcId> = match &tree.holder {
        Holder::Cgroup(cg) => {
            let members = if cg.is_empty() { Vec::new() } else { cg.members() };
            let left: Vec<ProcId> =
                run.members.iter().filter(|m| !m.has_exited() && !members.contains(&m.id.pid)).map(|m| m.id).collect();
            members.into_iter().filter_map(ProcId::of).chain(left).collect()
        }
        Holder::Keeper(keeper) => live_descendants(keeper.id.pid).iter().map(|m| m.id).collect(),
        Holder::Marker { .. } => {
            run.members.iter().chain(&run.escapees).filter(|m| !m.has_exited()).map(|m| m.id).collect()
        }
    };
    alive
        .into_iter()
        .map(|id| {
            let uid = procfs::owner_uid(id.pid).map_or_else(|_| "?".into(), |u| u.to_string());
            format!("pid {} (uid {uid}, `{}`) survived SIGKILL", id.pid, procfs::cmdline(id.pid))
        })
        .collect()
}

/// The marker-only teardown cannot prove what it cannot see: a child this process adopted
/// while the guard lived that carries no marker at all may be an escapee of the tree (it
/// cleared its environment and left the group). Named, never touched, never called clean.
fn unproven_adoptions(tree: &Tree, run: &Run, since: u64) -> Vec<String> {
    let known = |pid: i32| {
        run.members.iter().chain(&run.escapees).any(|m| m.id.pid == pid)
            || pid == tree.leader.id.pid
            || crate::registry::is_ours(pid)
    };
    // An orphan of another guard's tree that stayed in its cgroup is that guard's.
    let in_a_guards_cgroup =
        |pid: i32| cgroup::cgroup_of(pid).is_some_and(|path| path.split('/').any(|p| p.starts_with(cgroup::PREFIX)));
    let mut scan = MarkerScan::new();
    procfs::children(std::process::id() as i32)
        .into_iter()
        .filter(|&pid| !known(pid) && !in_a_guards_cgroup(pid))
        .filter_map(ProcId::of)
        .filter(|id| id.start_time >= since && !procfs::Stat::read(id.pid).is_ok_and(|s| s.is_zombie()))
        .filter(|id| !scan.carries_prefix(id.pid, b"REAPKIT_"))
        .map(|id| {
            format!(
                "pid {} (`{}`) was adopted by this process while the guard lived and carries no marker: maybe an \
                 escapee that left the tree's containment, which cannot be proven; not touched (the test scope, \
                 `reapkit wrap` or the end of a `cargo test` run ends what its test left)",
                id.pid,
                procfs::cmdline(id.pid)
            )
        })
        .collect()
}

/// Marker-only step 4: processes carrying the guard's marker anywhere, in rounds while new
/// ones appear.
fn sweep_escapees(tree: &Tree, run: &mut Run) {
    let marker = format!("{ENV_GUARD}={}", tree.id);
    let mut scan = MarkerScan::new();
    for _ in 0..ROUNDS {
        let found: Vec<Member> = scan
            .find(&marker)
            .into_iter()
            .filter(|id| *id != tree.leader.id && !run.members.iter().chain(&run.escapees).any(|m| m.id == *id))
            .filter_map(Member::open)
            .filter(|m| !m.has_exited())
            .collect();
        if found.is_empty() {
            break;
        }
        let all: Vec<&Member> = found.iter().collect();
        terminate_each(&all, tree.graces.term, &mut run.problems);
        run.escapees.extend(found);
    }
}

/// Ends processes that a sweep, a watchdog or a supervisor proved to be leftovers, by the
/// guard's protocol: SIGTERM to all at once, `grace`, SIGKILL, a bounded wait; then reaps those
/// that are our children. Returns the ones still alive after SIGKILL.
pub(crate) fn end_leftovers(members: &[Member], grace: Duration) -> Vec<ProcId> {
    let all: Vec<&Member> = members.iter().collect();
    terminate_each(&all, grace, &mut Vec::new());
    for m in members {
        m.handle.reap();
    }
    members.iter().filter(|m| !m.has_exited()).map(|m| m.id).collect()
}

/// Ends the processes of a leftover cgroup that a sweep proved its guard's: SIGTERM to each
/// member, `grace`, `cgroup.kill`, a bounded wait for it to empty, then removes it. Unless
/// `all_ours`: then strangers sit in it too (the sweep ended the guard's members one by one),
/// and it is removed only if it is empty. Returns what went wrong.
pub(crate) fn end_cgroup(cg: &GuardCgroup, all_ours: bool, grace: Duration) -> Result<(), String> {
    if !all_ours {
        return match cg.is_empty() {
            true => cg.remove().map_err(|e| format!("could not remove {}: {e}", cg.dir().display())),
            false => Ok(()),
        };
    }
    let members: Vec<Member> = cg.members().into_iter().filter_map(ProcId::of).filter_map(Member::open).collect();
    for m in &members {
        let _ = m.handle.signal(libc::SIGTERM);
    }
    if !cg.wait_empty(os::deadline_in(grace)) {
        cg.kill().map_err(|e| format!("cgroup.kill of {}: {e}", cg.dir().display()))?;
        if !cg.wait_empty(os::deadline_in(KILL_WAIT)) {
            return Err(format!("{} is not empty after cgroup.kill", cg.dir().display()));
        }
    }
    for m in &members {
        m.handle.reap();
    }
    cg.remove().map_err(|e| format!("could not remove {}: {e}", cg.dir().display()))
}

/// Ends the process group that `pid`, an unexited child of ours, leads: a guard that was never
/// dropped, on the portable backend, where no sweep can find its tree. SIGTERM to the group,
/// `grace`, SIGKILL, a bounded wait; SIGKILL again for what outlived the leader; then the
/// leader is reaped. Untouched (`false`) unless `waitid` says `pid` is our child still running:
/// only then does its pid, the group's id, name no one else's group.
pub(crate) fn end_own_group(pid: i32, grace: Duration) -> bool {
    if !matches!(os::child_state(pid), os::ChildState::Running) {
        return false;
    }
    let Some(leader) = ProcId::of(pid).and_then(Member::open) else { return false };
    for (sig, wait) in [(Signal::SIGTERM, grace), (Signal::SIGKILL, KILL_WAIT)] {
        signal_group(pid, sig);
        if os::wait_readable(leader.handle.fd(), os::deadline_in(wait)) {
            break;
        }
    }
    signal_group(pid, Signal::SIGKILL);
    leader.handle.reap()
}

/// `killpg` on the group `leader` made at spawn. Every caller holds the leader unreaped: then its
/// pid, the group's id, cannot name anyone else's group.
fn signal_group(leader: i32, sig: Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(leader), sig);
}

/// Passes `sig` on to a supervised command (a supervisor's SIGTERM or SIGHUP).
pub(crate) fn forward(member: &Member, sig: Signal) {
    let _ = member.handle.signal(sig as i32);
}

/// SIGTERM to each of `members`, wait `term_grace`, SIGKILL to the rest, wait.
fn terminate_each(members: &[&Member], term_grace: Duration, problems: &mut Vec<String>) {
    let waiting: Vec<BorrowedFd<'_>> = members.iter().map(|m| m.handle.fd()).collect();
    for (sig, grace) in [(Signal::SIGTERM, term_grace), (Signal::SIGKILL, KILL_WAIT)] {
        for m in members.iter().filter(|m| !m.has_exited()) {
            if let Err(e) = m.handle.signal(sig as i32) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    problems.push(format!("{sig} to pid {}: {e}", m.id.pid));
                }
            }
        }
        if os::wait_all_readable(&waiting, os::deadline_in(grace)) == 0 {
            return;
        }
    }
}

/// Marker-only: the live tree below the leader plus adopted children of ours that are in the
/// leader's process group or carry the marker (and their trees), each held by a verified
/// pidfd. The leader itself is not included.
///
/// The group is proof on its own: the leader is not reaped yet, so its pid (the group's id)
/// cannot name another group. It also finds an orphan still in `exec`, whose environment
/// reads empty for that moment.
fn discover_marker_tree(tree: &Tree) -> Vec<Member> {
    let leader = tree.leader.id.pid;
    let marker = format!("{ENV_GUARD}={}", tree.id);
    let mut scan = MarkerScan::new();
    let adopted = procfs::children(std::process::id() as i32)
        .into_iter()
        .filter(|&pid| pid != leader && (in_group(pid, leader) || scan.carries(pid, marker.as_bytes())))
        .filter_map(ProcId::of);
    let mut ids = procfs::descendants(leader);
    for root in adopted {
        ids.push(root);
        ids.extend(procfs::descendants(root.pid));
    }
    ids.into_iter().filter_map(Member::open).collect()
}

fn in_group(pid: i32, pgid: i32) -> bool {
    procfs::Stat::read(pid).is_ok_and(|s| s.pgrp == pgid)
}

/// Times the steps as they complete.
struct Clock {
    last: Instant,
    steps: Vec<(Step, Duration)>,
}

impl Clock {
    fn mark(&mut self, step: Step) {
        let now = Instant::now();
        self.steps.push((step, now - self.last));
        self.last = now;
    }
}
