//! The teardown protocol, and the only code in reapkit that sends signals.
//!
//! It follows the MCP stdio transport's shutdown order, applied to the whole tree:
//! 1. close the child's stdin and our end of its stdout, wait `eof_grace` for it to exit;
//! 2. SIGTERM to the process group and to every member of the tree outside it, wait `term_grace`;
//! 3. SIGKILL to the group and to whatever of the tree still lives;
//! 4. sweep escapees carrying this guard's marker found by a `/proc` scan, killed the same way;
//! 5. reap the zombies of the tree (`waitid` on each one's pidfd, never `waitpid(-1)`);
//! 6. stop the stderr drain and remove the ledger record.
//!
//! Every wait is a `poll` on pidfds: the protocol wakes the moment the last process dies.
//! Every signal goes through a pidfd (or, for the group on kernels < 6.9, `killpg` on a
//! group whose leader we have not reaped yet, so its id cannot have been recycled).

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::ownership::ENV_GUARD;
use crate::process::{Member, ProcessGuard};
use crate::procfs::{self, MarkerScan, ProcId};
use crate::sys;

/// How long SIGKILLed processes get to disappear before teardown reports them as unkillable
/// (a process in uninterruptible sleep, e.g. on a hung NFS mount).
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Escapee sweeps to repeat while new marked processes keep appearing (forks during teardown).
const SWEEP_ROUNDS: usize = 3;

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
        write!(f, "ended by {:?} in {:?}", self.ended_by, self.total)?;
        if let Some(status) = self.status {
            write!(f, " ({status})")?;
        }
        if !self.killed.is_empty() || !self.escapees.is_empty() {
            write!(f, "; also killed {} in the tree and {} escapees", self.killed.len(), self.escapees.len())?;
        }
        for p in &self.problems {
            write!(f, "; {p}")?;
        }
        Ok(())
    }
}

/// Reports a teardown problem where the user will see it: through `tracing` when a
/// subscriber is installed, else on stderr (which the test harness shows for failed tests).
pub(crate) fn warn(message: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{message}");
    } else {
        eprintln!("{message}");
    }
}

/// Runs the protocol on `guard`'s tree.
pub(crate) fn run(guard: &mut ProcessGuard) -> Teardown {
    let started = Instant::now();
    let mut clock = Clock { last: started, steps: Vec::new() };
    let mut problems = Vec::new();
    let marker = format!("{ENV_GUARD}={}", guard.id);
    let mut scan = MarkerScan::new();

    // 1. The polite request: EOF on stdin, EPIPE on the next write to stdout.
    let already = guard.has_exited();
    drop(guard.stdin.take());
    drop(guard.stdout.take());
    let leader = guard.leader.pidfd.as_fd();
    let exited_on_eof = already || sys::wait_readable(leader, sys::deadline_in(guard.graces.eof));
    clock.mark(Step::EofWait);
    let mut ended_by = if already { EndedBy::AlreadyExited } else { EndedBy::StdinEof };

    // 2–3. The tree: the leader's descendants and our adopted children that carry the marker.
    let tree = discover_tree(guard.leader.id.pid, &marker, &mut scan);
    let live: Vec<&Member> = tree.iter().filter(|m| !m.has_exited()).collect();
    if !exited_on_eof || !live.is_empty() {
        let group = (!exited_on_eof || live.iter().any(|m| in_group(m.id.pid, guard.leader.id.pid)))
            .then_some(Group { leader, pgid: guard.leader.id.pid });
        let outcome = terminate(group.as_ref(), &live, guard.graces.term, &mut clock, &mut problems);
        if !exited_on_eof {
            ended_by = if guard.leader.has_exited() { outcome } else { EndedBy::Unkillable };
        }
    }
    let killed: Vec<ProcId> = live.iter().map(|m| m.id).collect();

    // 4. Escapees that reached another subreaper or PID 1: only the marker finds them.
    let mut escapees: Vec<Member> = Vec::new();
    if guard.scan_proc {
        for _ in 0..SWEEP_ROUNDS {
            let found: Vec<Member> = scan
                .find(&marker)
                .into_iter()
                .filter(|id| id.pid != guard.leader.id.pid && !tree.iter().chain(&escapees).any(|m| m.id == *id))
                .filter_map(Member::open)
                .filter(|m| !m.has_exited())
                .collect();
            if found.is_empty() {
                break;
            }
            terminate(None, &found.iter().collect::<Vec<_>>(), guard.graces.term, &mut Clock::discard(), &mut problems);
            escapees.extend(found);
        }
        clock.mark(Step::Sweep);
    }

    // 5. Zombies: the child through std (it owns the child's wait), the rest by pidfd.
    let status = if guard.leader.has_exited() { guard.child.try_wait().ok().flatten() } else { None };
    let reaped: Vec<ProcId> =
        tree.iter().chain(&escapees).filter(|m| sys::reap_pidfd(m.pidfd.as_fd())).map(|m| m.id).collect();
    for m in tree.iter().chain(&escapees).filter(|m| !m.has_exited()) {
        problems.push(format!("pid {} ({}) survived SIGKILL", m.id.pid, procfs::cmdline(m.id.pid)));
    }
    clock.mark(Step::Reap);

    // 6. Release what we hold.
    if let Some(ring) = guard.stderr.as_mut() {
        ring.stop();
    }
    if let Some(entry) = guard.ledger.take() {
        if let Err(e) = entry.remove() {
            problems.push(format!("could not remove the ledger record: {e}"));
        }
    }
    clock.mark(Step::Close);

    Teardown {
        status,
        ended_by,
        steps: clock.steps,
        killed,
        escapees: escapees.iter().map(|m| m.id).collect(),
        reaped,
        problems,
        total: started.elapsed(),
    }
}

/// Ends processes that a sweep, a watchdog or a supervisor proved to be leftovers, by the
/// guard's protocol: SIGTERM to all at once, `grace`, SIGKILL, a bounded wait; then reaps those
/// that are our children. Returns the ones still alive after SIGKILL.
pub(crate) fn end_leftovers(members: &[Member], grace: Duration) -> Vec<ProcId> {
    let all: Vec<&Member> = members.iter().collect();
    terminate(None, &all, grace, &mut Clock::discard(), &mut Vec::new());
    for m in members {
        sys::reap_pidfd(m.pidfd.as_fd());
    }
    members.iter().filter(|m| !m.has_exited()).map(|m| m.id).collect()
}

/// Passes `sig` on to a supervised command (a supervisor's SIGTERM or SIGHUP).
pub(crate) fn forward(member: &Member, sig: Signal) {
    let _ = sys::pidfd_signal(member.pidfd.as_fd(), sig as i32);
}

/// The process group of the guarded child, signalled as one.
struct Group<'a> {
    leader: BorrowedFd<'a>,
    pgid: i32,
}

impl Group<'_> {
    fn signal(&self, sig: Signal) {
        match sys::pidfd_signal_group(self.leader, sig as i32) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Kernel < 6.9. The leader is not reaped before step 5, so the pgid is still
                // reserved by it (a zombie keeps it) and cannot name another group.
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pgid), sig);
            }
            _ => {}
        }
    }
}

/// SIGTERM, wait `term_grace`, SIGKILL, wait: for `group` and every one of `members` outside it.
/// Returns which signal ended them.
fn terminate(
    group: Option<&Group<'_>>,
    members: &[&Member],
    term_grace: Duration,
    clock: &mut Clock,
    problems: &mut Vec<String>,
) -> EndedBy {
    let outside_group = |m: &&&Member| group.is_none_or(|g| !in_group(m.id.pid, g.pgid));
    let mut waiting: Vec<BorrowedFd<'_>> = members.iter().map(|m| m.pidfd.as_fd()).collect();
    if let Some(g) = group {
        waiting.push(g.leader);
    }
    for (sig, grace, step) in [(Signal::SIGTERM, term_grace, Step::Term), (Signal::SIGKILL, KILL_WAIT, Step::Kill)] {
        if let Some(g) = group {
            g.signal(sig);
        }
        for m in members.iter().filter(outside_group) {
            if let Err(e) = sys::pidfd_signal(m.pidfd.as_fd(), sig as i32) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    problems.push(format!("{sig} to pid {}: {e}", m.id.pid));
                }
            }
        }
        let left = sys::wait_all_readable(&waiting, sys::deadline_in(grace));
        clock.mark(step);
        if left == 0 {
            return if sig == Signal::SIGTERM { EndedBy::Sigterm } else { EndedBy::Sigkill };
        }
    }
    EndedBy::Unkillable
}

/// The live tree below the leader plus adopted children of ours that are in the leader's
/// process group or carry `marker` (and their trees), each held by a verified pidfd. The
/// leader itself is not included.
///
/// The group is proof on its own: the leader is not reaped yet, so its pid (the group's id)
/// cannot name another group. It also finds an orphan still in `exec`, whose environment
/// reads empty for that moment.
fn discover_tree(leader: i32, marker: &str, scan: &mut MarkerScan) -> Vec<Member> {
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
    /// A clock whose marks are thrown away (for the inner waves of the escapee sweep, which is
    /// timed as one step).
    fn discard() -> Clock {
        Clock { last: Instant::now(), steps: Vec::new() }
    }

    fn mark(&mut self, step: Step) {
        let now = Instant::now();
        self.steps.push((step, now - self.last));
        self.last = now;
    }
}
