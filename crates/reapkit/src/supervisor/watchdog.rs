//! The watchdog: an out-of-process guardian that reaps what a test process registered when
//! that process dies without running its `Drop`s (SIGKILL, OOM, a nextest timeout, `abort`).
//!
//! The first guard of a process starts it ([`ensure`]), from the library alone: it is the
//! running binary re-executed (`/proc/self/exe`) with `REAPKIT_WATCHDOG_OWNER` set, which a
//! constructor ([`watchdog_entry`]) sees before `main` — so a user who only added the
//! dev-dependency has one, with no binary to install. It runs in its own session (a group
//! kill of the test does not take it along), with stdin and stdout on `/dev/null`. Its stderr
//! is the test process's under plain `cargo test`, where nothing else would tell the run what
//! the watchdog ended ([`announces`]); elsewhere `/dev/null` too (nextest would wait for a
//! test's stderr to close, and call the test leaky; a supervisor reports itself).
//!
//! It learns of its owner's death through a pidfd of the owner rather than a pipe: the test
//! process then holds no extra descriptor (FD-leak checks stay exact), and a child that the
//! test forks without exec cannot keep a pipe end — and the watchdog — alive. The portable
//! backend has no such handle on another process: there the owner keeps the write end of a
//! pipe, the *lifeline*, whose EOF tells the watchdog (`os::Lifeline`). On death it runs
//! the sweep scoped to its owner: ledger records and `/proc` markers, processes and containers;
//! what it reaps stays in the ledger, marked, so the CI sweep still reports the leak and names
//! the test. A `reapkit wrap`/`reapkit run` that supervises the owner directly does that work
//! itself with better attribution, so the watchdog waits for it and only mops up if it died too.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::evidence::identity::OwnerId;
use crate::evidence::ledger;
use crate::os::member::Member;
use crate::os;
use crate::evidence::ownership::{
    Owner, ENV_GUARD, ENV_LEDGER_DIR, ENV_OWNER, ENV_RUN_ID, ENV_SUPERVISOR, ENV_TEST, ENV_WATCHDOG,
    ENV_WATCHDOG_GRACE, ENV_WATCHDOG_OWNER,
};
use crate::os::procfs::ProcId;
use crate::sweep::{Action, DockerCheck, Scope, Sweep, Witness};

/// The watchdog's SIGTERM-to-SIGKILL grace for its owner's leftovers.
pub const DEFAULT_WATCHDOG_GRACE: Duration = Duration::from_secs(1);
/// An argument no program understands, so that a binary in which the constructor did not run
/// exits at once instead of running its `main` (a test binary would run every test).
const WATCHDOG_ARG: &str = "--reapkit-watchdog";

/// Sweeps the watchdog repeats while they still end processes.
const SWEEP_ROUNDS: usize = 3;

/// The watchdogs this process started: ledger directory and pid.
static STARTED: Mutex<Vec<(PathBuf, i32)>> = Mutex::new(Vec::new());

fn started() -> std::sync::MutexGuard<'static, Vec<(PathBuf, i32)>> {
    STARTED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts this process's watchdog for `ledger_dir`, once per directory. Best effort: without
/// one, guards still tear down on `Drop`; only a killed test then leaks until the sweep.
pub(crate) fn ensure(ledger_dir: &Path) {
    let disabled = std::env::var(ENV_WATCHDOG).is_ok_and(|v| v == "off" || v == "0");
    // A watchdog never starts another one, whatever code it runs.
    if disabled || std::env::var_os(ENV_WATCHDOG_OWNER).is_some() {
        return;
    }
    let mut started = started();
    if started.iter().any(|(d, _)| d == ledger_dir) {
        return;
    }
    match spawn(ledger_dir) {
        Ok(pid) => {
            crate::registry::note_guardian(pid);
            started.push((ledger_dir.to_path_buf(), pid));
        }
        Err(e) => crate::error::warn(&format!(
            "reapkit: could not start the watchdog ({e}); a test killed before its guards drop will leak \
             until `reapkit reap` runs{}",
            crate::os::fd_limit_hint(&e).map_or_else(String::new, |hint| format!(". {hint}"))
        )),
    }
}

fn spawn(ledger_dir: &Path) -> std::io::Result<i32> {
    let owner = Owner::current();
    let mut cmd = Command::new(crate::os::self_exe());
    cmd.arg0("reapkit-watchdog")
        .arg(WATCHDOG_ARG)
        .env(ENV_WATCHDOG_OWNER, owner.marker())
        .env(ENV_OWNER, owner.marker())
        .env(ENV_RUN_ID, &owner.run_id)
        .env(ENV_LEDGER_DIR, ledger_dir)
        .env_remove(ENV_GUARD)
        .env_remove(ENV_TEST)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if announces() { Stdio::inherit() } else { Stdio::null() });
    match crate::evidence::ownership::direct_supervisor() {
        Some(supervisor) => cmd.env(ENV_SUPERVISOR, supervisor.to_string()),
        None => cmd.env_remove(ENV_SUPERVISOR),
    };
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let lifeline = os::Lifeline::attach(&mut cmd)?;
    // Never waited for: it outlives this process by design, then exits on its own.
    let pid = cmd.spawn()?.id() as i32;
    if let Some(lifeline) = lifeline {
        crate::os::fd_snapshot::note_own_lifetime(lifeline.keep());
    }
    Ok(pid)
}

/// The watchdog's `main` (see [`crate::supervisor::reexec`]): waits for its owner's death, then reaps.
pub(crate) fn watch(owner: &str) -> i32 {
    // Our owner is our parent: same boot, same namespace. Anything else is not ours to watch.
    let Ok(owner) = owner.parse::<OwnerId>() else { return 2 };
    if owner != OwnerId::here(owner.process) {
        return 2;
    }
    let dir = std::env::var_os(ENV_LEDGER_DIR).map_or_else(ledger::default_dir, PathBuf::from);
    let witness = match os::Lifeline::inherited() {
        Some(lifeline) => {
            while !os::wait_readable(lifeline.as_fd(), os::deadline_in(Duration::from_secs(3600))) {}
            None
        }
        None => Some(witness_until_death(&owner, &dir)),
    };
    if let Some(supervisor) = crate::evidence::ownership::supervisor().filter(|s| *s == OwnerId::here(s.process)) {
        wait_for_death(supervisor.process);
    }
    let grace = std::env::var(ENV_WATCHDOG_GRACE)
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(DEFAULT_WATCHDOG_GRACE);
    let witnessed = witness.map(|w| w.cgroups()).unwrap_or_default();
    // Again while it finds something: a tree that forks while it is ended leaves new processes
    // that the first sweep could not see.
    let mut unchecked = false;
    let mut ended = Vec::new();
    for _ in 0..SWEEP_ROUNDS {
        let report = Sweep::new(Scope::Owner(owner.clone()))
            .ledger_dir(&dir)
            .docker(DockerCheck::RecordsOnly)
            .grace(grace)
            .keeping_evidence()
            .witnessed(witnessed.clone())
            .find()
            .reap();
        unchecked |= !report.unchecked.is_empty();
        let killed = report.leaks.iter().any(|l| l.action == Action::Killed);
        ended.extend(report.leaks.into_iter().filter(|l| matches!(l.action, Action::Killed | Action::Removed)));
        if !killed {
            break;
        }
    }
    announce(&owner, &dir, &ended);
    i32::from(unchecked)
}

/// Whether this process's watchdog tells the run what it ended, on this process's stderr: only
/// under plain `cargo test` (not under nextest, which reports a killed test itself and must
/// not see its stderr held open; not under a `reapkit wrap`/`run` that supervises it).
fn announces() -> bool {
    std::env::var_os("NEXTEST").is_none()
        && std::env::var_os("NEXTEST_RUN_ID").is_none()
        && crate::evidence::ownership::direct_supervisor().is_none()
}

/// Tells the run (the stderr it inherited, if [`announces`]) what its dead owner left and the
/// watchdog ended, and where the evidence stays; nothing if it ended nothing.
fn announce(owner: &OwnerId, dir: &Path, ended: &[crate::sweep::Leak]) {
    if ended.is_empty() {
        return;
    }
    let mut text = format!(
        "reapkit watchdog: test process {} ended with guards still held (killed, aborted, timed out, or the guards \
         were never dropped); it ended what they left:\n",
        owner.process.pid
    );
    for leak in ended {
        text.push_str(&format!("  - {}\n", leak.summary()));
    }
    text.push_str(&format!(
        "  The evidence stays in {}: `cargo xtask reap` (or `reapkit reap`) reports it and fails the build.\n",
        crate::evidence::escape::evidence(&dir.display().to_string())
    ));
    // Best effort: the run may have closed its end already, and this runs before `main`, where
    // Rust has not yet set SIGPIPE aside.
    // SAFETY: ignoring a signal installs no handler code.
    let _ = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) };
    let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
}

/// Blocks until `owner` has exited, witnessing meanwhile the cgroups its guards make (the
/// records landing in `dir`): what proves them the guards' once their own processes are gone.
fn witness_until_death(owner: &OwnerId, dir: &Path) -> Witness {
    let mut witness = Witness::new(dir, owner);
    let Some(member) = Member::open(owner.process) else { return witness };
    loop {
        let fds: Vec<_> = std::iter::once(member.handle.fd()).chain(witness.fd()).collect();
        let ready = os::wait_any_readable(&fds, os::deadline_in(Duration::from_secs(3600)));
        if ready.contains(&0) {
            // The records written just before the end are checked too.
            witness.arrived();
            return witness;
        }
        witness.arrived();
    }
}

/// Blocks until `id` has exited (at once if it already has, or its pid was recycled).
fn wait_for_death(id: ProcId) {
    let Some(member) = Member::open(id) else { return };
    while !os::wait_readable(member.handle.fd(), os::deadline_in(Duration::from_secs(3600))) {}
}
