//! The escape matrix: every way out of a guarded tree that a marker-based reaper cannot
//! follow, × every containment this machine has (cgroup, keeper, and marker-only as the last
//! resort), × how the test ends (a normal drop, a panic, the owner test process SIGKILLed).
//!
//! Checked from outside in every cell: nothing of the tree alive afterwards, not even a zombie
//! (every process of it is known by pid and start time before teardown: by a unique `sleep`
//! token in its command line, its guard's marker, or its ancestry), the FD table back to its
//! baseline, a decoy with the same command line untouched, and the `Teardown` report true: a
//! survivor is never "clean". Marker-only containment cannot see a process that clears its
//! environment *and* leaves the group: there, the cell checks that the report says so.

use std::io::{BufRead, BufReader};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reapkit::procfs::{self, ProcId};
use reapkit::{Containment, ProcessGuard, Teardown};
use reapkit_tests::{fixture, fixture_path, is_zombie, leak_checked, marked, wait_until};
use serial_test::serial;

const MODES: [Containment; 3] = [Containment::Cgroup, Containment::Keeper, Containment::Marker];
const TERM: Duration = Duration::from_millis(300);

/// A way out of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// `env -i setsid sh -c 'sleep … &'`: a double fork, a session of its own, no marker.
    CleanEnvSetsid,
    /// `env -i sh -c 'sleep … &'`: no marker, still in the group.
    CleanEnvInGroup,
    /// The leader moves into its parent's process group, then starts children.
    LeaderLeavesGroup,
    /// A descendant drops to another uid.
    DropsUid,
    /// A descendant keeps forking while the tree is torn down.
    ForkStorm,
    /// Every process ignores SIGTERM, one of them in a session of its own.
    IgnoresTerm,
}

impl Escape {
    /// The fixture's flags, with `token` as the `sleep` argument that names its escapees.
    fn flags(self, token: &str) -> Vec<String> {
        let f: Vec<&str> = match self {
            Escape::CleanEnvSetsid => vec!["--escape-clean-env", token],
            Escape::CleanEnvInGroup => vec!["--escape-clean-env-group", token],
            Escape::LeaderLeavesGroup => vec!["--leave-group", "--children", "2"],
            Escape::DropsUid => vec!["--drop-uid", token],
            Escape::ForkStorm => vec!["--fork-storm", token],
            Escape::IgnoresTerm => vec!["--ignore-eof", "--ignore-sigterm", "--children", "2", "--escape"],
        };
        f.into_iter().map(str::to_owned).collect()
    }

    /// Processes that must be up before the tree counts as complete: (by token, by marker).
    fn expected(self) -> (usize, usize) {
        match self {
            Escape::CleanEnvSetsid | Escape::CleanEnvInGroup | Escape::DropsUid => (1, 1),
            Escape::LeaderLeavesGroup => (0, 3),
            Escape::ForkStorm => (3, 2),
            Escape::IgnoresTerm => (0, 4),
        }
    }

    /// Whether marker-only containment cannot find it when the test ends as `ending`: no
    /// marker and out of the group; or, once the owner is dead (its watchdog has no group to
    /// go by, and reads only its own user's processes), no marker or another uid.
    fn invisible_to_markers(self, ending: Ending) -> bool {
        match self {
            Escape::CleanEnvSetsid => true,
            Escape::CleanEnvInGroup | Escape::DropsUid => ending == Ending::OwnerKilled,
            _ => false,
        }
    }
}

/// How the test that holds the guard ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Drop,
    Panic,
    OwnerKilled,
}

/// A `sleep` argument no other process has: `1301.<our pid><n>`.
fn token() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("1301.{}{:04}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Processes whose command line holds `token` (zombies have none: they are found before).
fn by_token(token: &str) -> Vec<ProcId> {
    procfs::pids().filter(|&pid| procfs::cmdline(pid).split(' ').any(|a| a == token)).filter_map(ProcId::of).collect()
}

/// Everything of the tree, once it is complete: the guard's marked processes, the leader's
/// descendants, the token's processes.
fn whole_tree(guard: &str, leader: ProcId, token: &str, escape: Escape) -> Vec<ProcId> {
    let (tokens, markers) = escape.expected();
    wait_until(&format!("the tree of {escape:?} is up"), || {
        let t = by_token(token);
        let m = marked(guard);
        (t.len() >= tokens && m.len() + usize::from(!m.contains(&leader)) >= markers).then(|| {
            let mut all: Vec<ProcId> = m.into_iter().chain(t).chain(procfs::descendants(leader.pid)).collect();
            all.push(leader);
            all.sort_by_key(|id| id.pid);
            all.dedup();
            all
        })
    })
}

/// Ends what a cell left, by pid (ours: started by this test's fixture), for the cells where
/// a survivor is the expected answer.
fn end_by_token(token: &str) {
    for id in by_token(token) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(id.pid), nix::sys::signal::SIGKILL);
    }
}

/// Gone: no `/proc` entry with that pid and start time, zombie or not.
fn gone(ids: &[ProcId]) -> Vec<ProcId> {
    ids.iter().filter(|id| id.is_alive()).copied().collect()
}

/// One cell in this process: spawn, wait for the whole tree, end the test as `ending` says
/// (drop or panic), check the report. Returns the tree, which `leak_checked` proves gone.
fn in_process(escape: Escape, mode: Containment, ending: Ending) {
    let token = token();
    let flags = escape.flags(&token);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let survivors_expected = mode == Containment::Marker && escape.invisible_to_markers(ending);
    // The decoy: the same command line, with a token of its own to find its tree by (its
    // escapees carry no decoy marker either: they are ended by that token afterwards).
    let decoy_token = self::token();
    let decoy_flags = escape.flags(&decoy_token);
    let decoy_flags: Vec<&str> = decoy_flags.iter().map(String::as_str).collect();
    leak_checked(fixture(&decoy_flags), fixture(&flags), |cmd| {
        // Start times are clock ticks (10 ms): the decoy's escapees must be older than the guard,
        // or marker-only containment rightly suspects them.
        std::thread::sleep(Duration::from_millis(20));
        let guard =
            ProcessGuard::builder(cmd).containment(mode).eof_grace(TERM).term_grace(TERM).spawn().expect("starts");
        assert_eq!(guard.containment(), mode);
        let tree = whole_tree(guard.id(), guard.proc_id(), &token, escape);
        let report: Teardown = match ending {
            Ending::Drop => guard.shutdown(),
            Ending::Panic => {
                // The guard is dropped while unwinding; its report goes to stderr, its tree is checked.
                let mut guard = Some(guard);
                let unwound = catch_unwind(AssertUnwindSafe(|| {
                    let _held = guard.take();
                    panic!("the test fails while holding its guard");
                }));
                assert!(unwound.is_err());
                // What Drop did is only visible from outside: the same checks follow.
                return finish_cell(&tree, &token, survivors_expected, None);
            }
            Ending::OwnerKilled => unreachable!("a separate process"),
        };
        assert_eq!(report.containment, mode, "{report}");
        finish_cell(&tree, &token, survivors_expected, Some(&report))
    });
    end_by_token(&decoy_token);
    wait_until("the decoy's escapees are ended", || by_token(&decoy_token).is_empty().then_some(()));
}

/// Checks a cell's outcome; returns the tree for `leak_checked` (minus the expected survivor,
/// which it ends).
fn finish_cell(tree: &[ProcId], token: &str, survivors_expected: bool, report: Option<&Teardown>) -> Vec<ProcId> {
    if survivors_expected {
        if let Some(report) = report {
            assert!(!report.is_clean(), "marker-only containment cannot prove the escapee gone, and says so: {report}");
            assert!(report.problems.iter().any(|p| p.contains("marker-only")), "{report}");
        }
        end_by_token(token);
        wait_until("the expected survivor is ended", || by_token(token).is_empty().then_some(()));
        return Vec::new();
    }
    if let Some(report) = report {
        assert!(report.is_clean(), "{report}");
    }
    tree.to_vec()
}

/// One cell with the owner SIGKILLed: a leaky test process holds the guard; its watchdog (or
/// the guard's keeper) must end the tree.
fn owner_killed(escape: Escape, mode: Containment) {
    reapkit::ownership::become_subreaper(); // the orphans' zombies come here, to be reaped
    let token = token();
    let ledger = tempfile::tempdir().expect("a ledger");
    let leaky = fixture_path().with_file_name("leaky-owner");
    let mut cmd = Command::new(leaky);
    cmd.arg("--fixture")
        .arg(escape.flags(&token).join(" "))
        .args(["--containment", &mode.to_string()])
        .env("REAPKIT_LEDGER_DIR", ledger.path())
        .env("REAPKIT_WATCHDOG_GRACE", "300ms")
        .env_remove("REAPKIT_SUPERVISOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut owner = cmd.spawn().expect("the leaky owner starts");
    let mut line = String::new();
    BufReader::new(owner.stdout.take().expect("piped")).read_line(&mut line).expect("its ready line");
    let words: Vec<&str> = line.split_whitespace().collect();
    let leader = words.get(3).and_then(|p| p.parse().ok()).and_then(ProcId::of).expect("the guarded pid");
    let guard = guard_of(leader);
    let tree = whole_tree(&guard, leader, &token, escape);

    owner.kill().expect("SIGKILL our own child");
    owner.wait().expect("reaped");
    if mode == Containment::Marker && escape.invisible_to_markers(Ending::OwnerKilled) {
        // The watchdog ends what it can see; the escapee it cannot is the known limit.
        let visible: Vec<ProcId> = tree.iter().filter(|id| !by_token(&token).contains(id)).copied().collect();
        wait_until("the watchdog ended what it can see", || gone_or_zombie(&visible).then_some(()));
        end_by_token(&token);
    } else {
        wait_until(&format!("{escape:?} under {mode}: the tree is gone after its owner's SIGKILL"), || {
            gone_or_zombie(&tree).then_some(())
        });
    }
    for id in &tree {
        if is_zombie(id.pid) {
            let _ =
                nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(id.pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
    }
    let prefix = {
        let owner: reapkit::OwnerId = words[1].parse().expect("an owner id");
        format!("reapkit-g{}-{}-{}-", owner.process.pid, owner.process.start_time, owner.pidns)
    };
    wait_until("no cgroup of the owner is left", || {
        let left = reapkit::containment::reapkit_cgroups()
            .into_iter()
            .filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
            .count();
        (left == 0).then_some(())
    });
    wait_until("no watchdog or keeper of the owner is left", || {
        let owner_marker = format!("REAPKIT_WATCHDOG_OWNER={}", words[1]);
        let keeper_marker = format!("REAPKIT_KEEPER={}", words[1]);
        let scan = reapkit::procfs::MarkerScan::new().find_matching(|env| {
            env.split(|&b| b == 0).any(|e| e == owner_marker.as_bytes() || e == keeper_marker.as_bytes())
        });
        scan.is_empty().then_some(())
    });
}

/// The guard id of a guarded process, from its marker.
fn guard_of(leader: ProcId) -> String {
    wait_until(&format!("pid {} (`{}`) shows its guard's marker", leader.pid, procfs::cmdline(leader.pid)), || {
        let environ = std::fs::read(format!("/proc/{}/environ", leader.pid)).ok()?;
        environ
            .split(|&b| b == 0)
            .find_map(|e| e.strip_prefix(b"REAPKIT_GUARD="))
            .map(|g| String::from_utf8_lossy(g).into_owned())
    })
}

fn gone_or_zombie(ids: &[ProcId]) -> bool {
    ids.iter().all(|id| !id.is_alive() || is_zombie(id.pid))
}

/// Runs the cell for every containment mode.
fn cell(escape: Escape, ending: Ending) {
    for mode in MODES {
        match ending {
            Ending::OwnerKilled => owner_killed(escape, mode),
            _ => in_process(escape, mode, ending),
        }
        let left: Vec<String> = by_token_all()
            .iter()
            .map(|id| {
                let stat = procfs::Stat::read(id.pid).ok();
                format!("pid {} ppid {:?} `{}`", id.pid, stat.map(|s| s.ppid), procfs::cmdline(id.pid))
            })
            .collect();
        assert!(left.is_empty(), "nothing of the matrix is left after {escape:?} × {mode} × {ending:?}: {left:?}");
    }
}

/// Every process with a token of this test process (all its cells).
fn by_token_all() -> Vec<ProcId> {
    let prefix = format!("1301.{}", std::process::id());
    procfs::pids()
        .filter(|&pid| procfs::cmdline(pid).split(' ').any(|a| a.starts_with(&prefix)))
        .filter_map(ProcId::of)
        .collect()
}

macro_rules! matrix {
    ($($name:ident: $escape:ident, $ending:ident;)*) => {
        $(
            #[test]
            #[serial]
            fn $name() {
                cell(Escape::$escape, Ending::$ending);
            }
        )*
    };
}

matrix! {
    clean_env_setsid_drop: CleanEnvSetsid, Drop;
    clean_env_setsid_panic: CleanEnvSetsid, Panic;
    clean_env_setsid_owner_killed: CleanEnvSetsid, OwnerKilled;
    clean_env_in_group_drop: CleanEnvInGroup, Drop;
    clean_env_in_group_panic: CleanEnvInGroup, Panic;
    clean_env_in_group_owner_killed: CleanEnvInGroup, OwnerKilled;
    leader_leaves_group_drop: LeaderLeavesGroup, Drop;
    leader_leaves_group_panic: LeaderLeavesGroup, Panic;
    leader_leaves_group_owner_killed: LeaderLeavesGroup, OwnerKilled;
    drops_uid_drop: DropsUid, Drop;
    drops_uid_panic: DropsUid, Panic;
    drops_uid_owner_killed: DropsUid, OwnerKilled;
    fork_storm_drop: ForkStorm, Drop;
    fork_storm_panic: ForkStorm, Panic;
    fork_storm_owner_killed: ForkStorm, OwnerKilled;
    ignores_term_drop: IgnoresTerm, Drop;
    ignores_term_panic: IgnoresTerm, Panic;
    ignores_term_owner_killed: IgnoresTerm, OwnerKilled;
}

#[test]
fn two_hundred_guards_end_together_in_about_one_set_of_graces() {
    // Servers that ignore EOF: each costs its EOF grace and a SIGTERM, once — not 200 times.
    let eof = Duration::from_millis(200);
    let guards: Vec<ProcessGuard> = (0..200)
        .map(|_| ProcessGuard::builder(fixture(&["--ignore-eof"])).eof_grace(eof).term_grace(TERM).spawn())
        .collect::<Result<_, _>>()
        .expect("200 fixtures start");
    let pids: Vec<ProcId> = guards.iter().map(ProcessGuard::proc_id).collect();
    let started = std::time::Instant::now();
    let reports = reapkit::shutdown_all(guards);
    let took = started.elapsed();
    assert!(reports.iter().all(Teardown::is_clean), "{:?}", reports.iter().find(|r| !r.is_clean()));
    assert!(reports.iter().all(|r| r.ended_by == reapkit::EndedBy::Sigterm), "{:?}", reports[0]);
    // One wave: one EOF grace plus the SIGTERM round trip, with room for a loaded 2-core
    // machine; one by one it is at least 200 × 200 ms = 40 s. (The speed itself is measured,
    // side by side, in `cargo xtask bench`.)
    assert!(took < Duration::from_secs(5), "200 guards took {took:?} to end together");
    assert!(gone(&pids).is_empty(), "every server is gone: {:?}", gone(&pids));
}

#[test]
fn an_unprivileged_users_guard_gets_a_keeper_that_ends_the_tree_when_its_owner_dies() {
    // No cgroup2 subtree is writable for `nobody`: auto containment falls back to a keeper.
    reapkit_tests::sweep_sandbox::assert_root();
    let token = token();
    let ledger = tempfile::tempdir().expect("a ledger");
    std::fs::set_permissions(ledger.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    // Copies of the binaries where `nobody` may run them (the checkout may be private).
    let bin = tempfile::tempdir().expect("a directory for the binaries");
    std::fs::set_permissions(bin.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    for name in ["leaky-owner", "fixture-server"] {
        std::fs::copy(fixture_path().with_file_name(name), bin.path().join(name)).expect("copy a binary");
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin.path().join("leaky-owner"))
        .current_dir(bin.path())
        .args(["--fixture", &format!("--escape-clean-env {token}"), "--forget-on-eof"])
        .env("REAPKIT_LEDGER_DIR", ledger.path())
        .env_remove("REAPKIT_CONTAINMENT")
        .env_remove("REAPKIT_SUPERVISOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut owner = cmd.spawn().expect("the leaky owner starts as nobody");
    let mut line = String::new();
    BufReader::new(owner.stdout.take().expect("piped")).read_line(&mut line).expect("its ready line");
    assert_eq!(line.split_whitespace().nth(4), Some("keeper"), "an unprivileged guard's containment: {line}");
    let escapee = wait_until("the escapee is up", || by_token(&token).first().copied());

    drop(owner.stdin.take()); // the owner dies holding its guard
    owner.wait().expect("it ends");
    wait_until("the keeper ended the tree, escapee included", || (!escapee.is_alive()).then_some(()));
}
