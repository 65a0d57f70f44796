//! A keeper: an ancestor of the guarded tree that is ours, where no cgroup can be written.
//!
//! The kernel re-parents every orphan to its nearest ancestor that is a child subreaper. A
//! keeper is that ancestor for one guard: whatever a process of the tree does to its
//! environment, session or group, it stays below the keeper, and the keeper's descendants are
//! the tree. It lives outside the test process, so it survives the owner's SIGKILL, and then
//! ends the tree itself.
//!
//! How it gets between the test and the server without losing anything the user's `Command`
//! says (a cleared environment, a uid, a working directory, their own `pre_exec`): the guard
//! adds a last `pre_exec` step that forks. The inner child goes on to exec the server, exactly
//! as configured; the outer one — still the test's direct child, already holding the server's
//! stdio, uid and process group — closes its stdio and execs the test binary as the keeper
//! (`/proc/self/exe`, caught by the crate's constructor before `main`, like the watchdog). Only
//! async-signal-safe calls happen between fork and exec: everything is prepared beforehand.
//!
//! The keeper never reaps the server before it exits itself: the server's pid stays the
//! guard's handle (its pidfd, `pid()`, `info()`), and the keeper exits with the server's own
//! status (re-raising a signal that killed it), which is what the test's `Child` reports.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use crate::evidence::identity::OwnerId;
use crate::os::member::Member;
use crate::os;
use crate::evidence::ownership::{ENV_KEEPER, ENV_KEEPER_GUARD, ENV_RUN_ID, ENV_TEST};
use crate::os::procfs::{self, ProcId};

/// The keeper's SIGTERM-to-SIGKILL grace when its owner dies (the guard's term grace).
const ENV_KEEPER_GRACE: &str = "REAPKIT_KEEPER_GRACE";
/// An argument no program understands: a binary whose constructor did not run exits at once.
const KEEPER_ARG: &str = "--reapkit-keeper";
/// How long SIGKILLed processes get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How often a round reads the tree again at once when its walk found no live member of a
/// tree that is not empty (a walk racing with an exit), before it waits for a signal instead.
const MAX_REREADS: usize = 8;

/// The keeper's argv and environment, built before the fork (nothing may be allocated after).
struct Exec {
    _strings: Vec<CString>,
    path: *const libc::c_char,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    dev_null: *const libc::c_char,
}

// SAFETY: the pointers point into `_strings` (and static literals), which the struct owns and
// never changes; they are only read, in the forked child.
unsafe impl Send for Exec {}
// SAFETY: as above: read-only after construction.
unsafe impl Sync for Exec {}

/// Makes `cmd`'s child fork, before exec, into a keeper and the server below it. `markers`
/// are the guard's `REAPKIT_*` variables, which the keeper carries (its environment is
/// reapkit's own, never the server's).
pub(crate) fn fork_on_exec(
    cmd: &mut std::process::Command,
    owner: &OwnerId,
    markers: &[(&str, &str)],
    grace: Duration,
) {
    let mut strings = vec![
        CString::new(std::os::unix::ffi::OsStringExt::into_vec(os::self_exe().into_os_string())).expect("no NUL"),
        CString::new("reapkit-keeper").expect("no NUL"),
        CString::new(KEEPER_ARG).expect("no NUL"),
        CString::new("/dev/null").expect("no NUL"),
    ];
    let mut env = vec![format!("{ENV_KEEPER}={owner}"), format!("{ENV_KEEPER_GRACE}={}ms", grace.as_millis())];
    env.extend(markers.iter().map(|(k, v)| format!("{k}={v}")));
    strings.extend(env.into_iter().filter_map(|e| CString::new(e).ok()));
    let ptr = |i: usize| strings[i].as_ptr();
    let (path, argv, dev_null) = (ptr(0), vec![ptr(1), ptr(2), std::ptr::null()], ptr(3));
    let mut envp: Vec<*const libc::c_char> = strings[4..].iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    let exec = Exec { _strings: strings, path, argv, envp, dev_null };
    // SAFETY: the closure runs between fork and exec; `Exec::fork` makes only async-signal-safe
    // calls on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || exec.fork());
    }
}

impl Exec {
    /// In the child between fork and exec: forks again. The inner child returns, to exec the
    /// server as configured; this one becomes the keeper.
    ///
    /// # Safety
    /// Only between fork and exec: it execs or exits, and calls only async-signal-safe
    /// functions (the subreaper flag, fork, setpgid, open, dup2, closing descriptors, execve, _exit).
    unsafe fn fork(&self) -> io::Result<()> {
        // The subreaper flag is set before the server exists (it survives the keeper's exec and
        // is not inherited by the fork): an orphan the server makes at once still lands here.
        os::set_child_subreaper()?;
        match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                // The server leads a group of its own, as it would without a keeper.
                libc::setpgid(0, 0);
                Ok(())
            }
            _ => {
                // The keeper must hold none of the server's pipes, or EOF never comes.
                let null = libc::open(self.dev_null, libc::O_RDWR);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                }
                // Nor anything else of the test's: and closing the spawn's error pipe here lets
                // `Command::spawn` return as soon as the server has exec'd, while the keeper
                // execs in parallel (the subreaper flag is already set).
                os::close_from(3);
                libc::execve(self.path, self.argv.as_ptr(), self.envp.as_ptr());
                libc::_exit(127)
            }
        }
    }
}

/// The server below a keeper that was just spawned: the keeper's only child (it never reaps
/// it before exiting itself, so it is there, exited or not) — or, if the keeper was killed that
/// soon (by its own server, say), the child of ours carrying the guard's marker that the kernel
/// re-parented here: the teardown then finds the keeper gone and says so.
pub(crate) fn server_of(keeper: &Member, guard: &str) -> Option<ProcId> {
    if let Some(server) = procfs::children(keeper.id.pid).into_iter().find_map(ProcId::of) {
        return Some(server);
    }
    // No child: the keeper is dying (its server is about to be re-parented here), or it never
    // had one and exits at once. Either way its exit is near; then the server, if any, is ours.
    os::wait_readable(keeper.handle.fd(), os::deadline_in(KILL_WAIT));
    let marker = format!("{}={guard}", crate::evidence::ownership::ENV_GUARD);
    let mut scan = procfs::MarkerScan::new();
    procfs::children(std::process::id() as i32)
        .into_iter()
        .filter_map(ProcId::of)
        .find(|id| id.start_time >= keeper.id.start_time && scan.carries(id.pid, marker.as_bytes()))
}

/// The keeper's `main`: run by the crate's constructor when `REAPKIT_KEEPER` is set. Never
/// returns: exits with the server's status.
pub(crate) fn run(owner: &str) -> ! {
    let code = keep(owner);
    std::process::exit(code)
}

fn keep(owner: &str) -> i32 {
    if !std::env::args().any(|a| a == KEEPER_ARG) {
        return 2;
    }
    let Ok(owner) = owner.parse::<OwnerId>() else { return 2 };
    let grace = std::env::var(ENV_KEEPER_GRACE)
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(1));
    // Orphans of the tree come here; the signals a terminal or a runner sends a group do not
    // end the keeper (only its own exit, or SIGKILL, does).
    let _ = os::set_child_subreaper();
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler; this thread is the process's only one.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let me = std::process::id() as i32;
    let Some(server) = procfs::children(me).into_iter().next() else { return 127 };
    // SIGCHLD as readable data, so that the wait below is one `poll`.
    let Ok(sigchld) = os::Signals::catch(&[nix::sys::signal::Signal::SIGCHLD]) else { return 127 };
    // Gone already (`None`) if it died while this keeper was still starting: then the tree is
    // ended at once, before any wait (the SIGCHLDs of that time are lost: nothing was blocking
    // them yet, so a wait for one could last forever).
    let owner_fd = Member::open(owner.process);
    loop {
        reap_orphans(me, server);
        if let Some(status) = exited(server) {
            if procfs::children(me) == [server] {
                return mirror(server, status);
            }
        }
        if owner_fd.as_ref().is_none_or(Member::has_exited) {
            end_tree(me, server, grace, &sigchld);
            let status = exited(server).unwrap_or(libc::SIGKILL);
            return mirror(server, status);
        }
        let mut fds = vec![sigchld.fd()];
        fds.extend(owner_fd.as_ref().map(|m| m.handle.fd()));
        os::wait_any_readable(&fds, os::deadline_in(Duration::from_secs(3600)));
        sigchld.drain();
    }
}

/// Reaps every exited child but the server (which stays a zombie, the guard's handle).
fn reap_orphans(me: i32, server: i32) {
    for child in procfs::children(me).into_iter().filter(|&c| c != server) {
        // SAFETY: plain waitid on one child of ours, WNOHANG: never blocks, never another's.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, child as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG);
        }
    }
}

/// The server's wait status (as `waitpid` encodes it) if it has exited, without reaping it.
fn exited(server: i32) -> Option<i32> {
    // SAFETY: siginfo_t is plain data; waitid fills it for our own child.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc =
            libc::waitid(libc::P_PID, server as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        if rc != 0 || info.si_pid() == 0 {
            return None;
        }
        Some(match info.si_code {
            libc::CLD_EXITED => info.si_status() << 8,
            _ => info.si_status() & 0x7f,
        })
    }
}

/// Reaps the server and exits as it did: its exit code, or the signal that killed it.
fn mirror(server: i32, status: i32) -> i32 {
    // SAFETY: reaps our own child (the server), whatever state it is in.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(libc::P_PID, server as libc::id_t, &mut info, libc::WEXITED);
    }
    if status & 0x7f == 0 {
        return (status >> 8) & 0xff;
    }
    let sig = status & 0x7f;
    // SAFETY: restores the default action and raises the signal at ourselves.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
    }
    128 + sig
}

/// The owner died: SIGTERM to every live process below us, `grace`, SIGKILL, until none is
/// left; every zombie reaped on the way (the server's last).
fn end_tree(me: i32, server: i32, grace: Duration, sigchld: &os::Signals) {
    for (sig, wait) in [(libc::SIGTERM, grace), (libc::SIGKILL, KILL_WAIT)] {
        let deadline = Instant::now() + wait;
        let mut rereads = 0;
        loop {
            reap_orphans(me, server);
            if tree_is_empty(me) {
                return;
            }
            let live: Vec<Member> = procfs::descendants(me)
                .into_iter()
                .filter(|d| !procfs::Stat::read(d.pid).is_ok_and(|s| s.is_zombie()))
                .filter_map(Member::open)
                .collect();
            if live.is_empty() && rereads < MAX_REREADS {
                // The walk raced with a member's exit (its children between two lists): the
                // tree is not empty, so read it again rather than wait for a signal.
                rereads += 1;
                continue;
            }
            for m in &live {
                let _ = m.handle.signal(sig);
            }
            let mut fds: Vec<_> = live.iter().map(|m| m.handle.fd()).collect();
            fds.push(sigchld.fd());
            if os::wait_any_readable(&fds, deadline).is_empty() {
                break;
            }
            sigchld.drain();
        }
    }
}

/// Whether nothing below `keeper` lives: every direct child of it is a zombie.
///
/// Reads of its children, never a walk of the tree: a walk races with a member's exit (its
/// children are moved to the keeper between the read of the keeper's list and the read of the
/// member's, and are in neither). A process that exits hands its children to the keeper before
/// it becomes a zombie, so a live member always has a live ancestor among the keeper's
/// children, or is one — but only in a list read *after* that ancestor was seen a zombie: the
/// list is read again once every child is, and must not have grown.
pub(crate) fn tree_is_empty(keeper: i32) -> bool {
    let children = procfs::children(keeper);
    let all_exited = children.iter().all(|&c| procfs::Stat::read(c).map_or(true, |s| s.is_zombie()));
    all_exited && procfs::children(keeper) == children
}

/// What the keeper carries besides [`ENV_KEEPER`]: the run and test, for attribution, and its
/// guard under a name of its own — the keeper is not a member of the tree it keeps, so it
/// carries no `REAPKIT_GUARD`.
pub(crate) fn markers<'a>(run_id: &'a str, guard: &'a str, test: &'a str) -> [(&'static str, &'a str); 3] {
    [(ENV_RUN_ID, run_id), (ENV_KEEPER_GUARD, guard), (ENV_TEST, test)]
}
