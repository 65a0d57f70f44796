//! Supervising a whole command: `reapkit run -- CMD` (any test command: `npm test`, `pytest`)
//! and `reapkit wrap` (nextest's wrapper script, one test at a time).
//!
//! The supervisor becomes a child subreaper, so every orphan of the command — guarded or
//! not, `setsid` escapees included — is re-parented to it; after the command ends, whatever
//! still lives below it, or carries the command's markers anywhere, is a leak of that command.
//! That catches code that never used a guard, and attributes it.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use crate::error::{Error, Result};
use crate::evidence::identity::OwnerId;
use crate::os::member::Member;
use crate::evidence::ownership::{self, Owner, ENV_OWNER, ENV_RUN_ID, ENV_SUPERVISOR};
use crate::os::procfs::ProcId;
use crate::sweep::{Findings, Report, Scope, Sweep, EXIT_LEAKS, EXIT_UNCHECKED};
use crate::{os, guard::teardown};

/// What is being supervised.
#[derive(Debug, Clone)]
pub enum Supervision {
    /// A whole test command under a run id of its own: its leaks are everything of that run.
    Run { run_id: String },
    /// One test process (nextest's wrapper): its leaks are everything it owned.
    Wrap,
}

/// The command has ended; its leftovers are found but not yet touched.
#[derive(Debug)]
pub struct Ended {
    pub status: ExitStatus,
    /// Print `findings.leaks()` as evidence, then [`Findings::reap`].
    pub findings: Findings,
}

/// The supervisor's exit code: the command's own when nothing leaked; when something leaked,
/// the command's if it failed, else [`EXIT_LEAKS`]; [`EXIT_UNCHECKED`] if the command passed
/// but its leftovers could not all be checked.
pub fn exit_code(status: ExitStatus, report: &Report) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let own = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    match own {
        0 if !report.leaks.is_empty() => EXIT_LEAKS,
        0 if !report.unchecked.is_empty() => EXIT_UNCHECKED,
        code => code,
    }
}

/// Runs `cmd` to its end under supervision, then finds its leftovers with `sweep` settings
/// (ledger, Docker, grace) scoped to it.
///
/// SIGTERM and SIGHUP are passed on to the command; SIGINT and SIGQUIT come from the terminal
/// to the whole foreground group, so the command has them already and the supervisor only
/// outlives them to clean up. Call this before starting other threads: the signals are
/// blocked in the calling thread and unblocked in the command.
pub fn supervise(mode: Supervision, mut cmd: Command, sweep: impl FnOnce(Scope) -> Sweep) -> Result<Ended> {
    ownership::become_subreaper();
    crate::evidence::identity::Viewpoint::current().usable().map_err(|why| Error::Unsupported {
        what: "a /proc of this PID namespace",
        source: std::io::Error::other(why.to_owned()),
    })?;
    let me = OwnerId::of_self()
        .ok_or_else(|| Error::Unsupported { what: "/proc/self/stat", source: std::io::ErrorKind::NotFound.into() })?;
    cmd.env(ENV_SUPERVISOR, me.to_string());
    match &mode {
        Supervision::Run { run_id } => cmd.env(ENV_RUN_ID, run_id).env(ENV_OWNER, me.to_string()),
        Supervision::Wrap => cmd.env(ENV_RUN_ID, &Owner::current().run_id),
    };
    let signals = os::Signals::catch(&[Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT, Signal::SIGQUIT])
        .map_err(|source| Error::Io { context: "catching signals".into(), source })?;
    // SAFETY: sigprocmask is async-signal-safe; the command starts with no signal blocked.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    // Leaks without a test name of their own are the supervised test's (wrap) or command's (run).
    let culprit = match &mode {
        Supervision::Wrap => std::env::var("NEXTEST_TEST_NAME").ok(),
        Supervision::Run { .. } => Some(
            std::iter::once(cmd.get_program())
                .chain(cmd.get_args())
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
        ),
    };
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program,
        hint: crate::os::fd_limit_hint(&source)
            .unwrap_or_else(|| "Check the command after `--`: is it installed and on PATH?".into()),
        source,
    })?;
    let pid = child.id() as i32;
    // Not yet waited for, so the pid is still this child's.
    let child_id = ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 });
    let member = os::Handle::open(pid).ok().map(|handle| Member { id: child_id, handle });
    if let Some(member) = &member {
        loop {
            let fds = [member.handle.fd(), signals.fd()];
            let ready = os::wait_any_readable(&fds, os::deadline_in(std::time::Duration::from_secs(3600)));
            if ready.contains(&0) {
                break;
            }
            for sig in signals.drain() {
                if let sig @ (Signal::SIGTERM | Signal::SIGHUP) = sig {
                    teardown::forward(member, sig);
                }
            }
        }
    }
    let status = child.wait().map_err(|source| Error::Io { context: "waiting for the command".into(), source })?;
    let scope = match mode {
        Supervision::Run { run_id } => Scope::Run { run_id, supervisor: me },
        Supervision::Wrap => Scope::Wrapped { test: OwnerId::here(child_id) },
    };
    let mut findings = sweep(scope).find();
    if let Some(culprit) = culprit {
        findings.attribute(&culprit);
    }
    Ok(Ended { status, findings })
}
