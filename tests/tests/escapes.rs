//! The escape matrix: every way out of a guarded tree that a marker-based reaper cannot
//! follow, × every containment this machine has (cgroup, keeper, and marker-only as the last
//! resort), × how the test ends (a normal drop, a panic, the owner test process SIGKILLed);
//! the worst of them also with rmcp's client holding the guard (`reapkit::rmcp::child`).
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
use std::time::Duration;

use reapkit::procfs::{self, ProcId};
use reapkit::{Containment, ProcessGuard, Teardown};
use reapkit_tests::{
    by_token, end_by_token, exited, fixture, fixture_path, is_zombie, leak_checked, marked, token, wait_until,
};
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

/// What holds the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// The test itself: a `ProcessGuard`.
    Guard,
    /// rmcp's running service, over `reapkit::rmcp::child`.
    Rmcp,
}

/// How the test that holds the guard ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// It ends the tree itself: `shutdown()`, or rmcp's `cancel().await`.
    Drop,
    /// It panics while holding it (rmcp's service is dropped with its runtime, unclosed).
    Panic,
    OwnerKilled,
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

/// Gone: no `/proc` entry with that pid and start time, zombie or not.
fn gone(ids: &[ProcId]) -> Vec<ProcId> {
    ids.iter().filter(|id| id.is_alive()).copied().collect()
}

/// One cell in this process: spawn, wait for the whole tree, end the test as `ending` says
/// (drop or panic), check the report. Returns the tree, which `leak_checked` proves gone.
fn in_process(client: Client, escape: Escape, mode: Containment, ending: Ending) {
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
        let builder = ProcessGuard::builder(cmd).containment(mode).eof_grace(TERM).term_grace(TERM);
        if client == Client::Rmcp {
            return rmcp_cell(builder, &token, escape, mode, ending, survivors_expected);
        }
        let guard = builder.spawn().expect("starts");
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
}

/// A cell whose guard rmcp's client holds: its handshake, then `cancel().await` (reapkit's
/// teardown through the transport's `close()`), or a panic that drops the service unclosed with
/// its runtime, as a failing `#[tokio::test]` does.
fn rmcp_cell(
    builder: reapkit::ProcessBuilder,
    token: &str,
    escape: Escape,
    mode: Containment,
    ending: Ending,
    survivors_expected: bool,
) -> Vec<ProcId> {
    use rmcp::ServiceExt;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let mut tree = Vec::new();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async {
            let transport = reapkit::rmcp::child(builder).expect("starts");
            let child = transport.handle();
            assert_eq!(child.containment(), mode);
            let service = ().serve(transport).await.expect("rmcp's handshake");
            let leader = ProcId::of(child.pid()).expect("the server runs");
            tree = whole_tree(child.id(), leader, token, escape);
            if ending == Ending::Panic {
                panic!("the test fails while rmcp's service holds the server");
            }
            service.cancel().await.expect("rmcp's service stops");
            child.teardown().expect("cancel() closed the transport: reapkit's teardown ran")
        })
    }));
    drop(runtime); // a panicking #[tokio::test] drops its runtime, and the service with it
    match outcome {
        Ok(report) => {
            assert_eq!(report.containment, mode, "{report}");
            finish_cell(&tree, token, survivors_expected, Some(&report))
        }
        Err(_) => finish_cell(&tree, token, survivors_expected, None),
    }
}

/// Checks a cell's outcome; returns the tree for `leak_checked` (minus the expected survivor,
/// which it ends).
fn finish_cell(tree: &[ProcId], token: &str, survivors_expected: bool, report: Option<&Teardown>) -> Vec<ProcId> {
    if survivors_expected {
        if let Some(report) = report {
            assert!(!report.is_clean(), "marker-only containment cannot prove the escapee gone, and says so: {report}");
            assert!(report.problems.iter().any(|p| p.contains("maybe an escapee")), "{report}");
        }
        end_by_token(token);
        return Vec::new();
    }
    if let Some(report) = report {
        assert!(report.is_clean(), "{report}");
    }
    tree.to_vec()
}

/// One cell with the owner SIGKILLed: a leaky test process holds the guard; its watchdog (or
/// the guard's keeper) must end the tree.
fn owner_killed(client: Client, escape: Escape, mode: Containment) {
    reapkit::ownership::become_subreaper(); // the orphans' zombies come here, to be reaped
    let token = token();
    let ledger = tempfile::tempdir().expect("a ledger");
    let leaky = fixture_path().with_file_name("leaky-owner");
    let mut cmd = Command::new(leaky);
    cmd.arg("--fixture")
        .arg(escape.flags(&token).join(" "))
        .args(["--containment", &mode.to_string()])
        .args((client == Client::Rmcp).then_some("--rmcp"))
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
        wait_gone("the watchdog ended what it can see", &visible, &String::new);
        end_by_token(&token);
    } else {
        wait_gone(&format!("{escape:?} under {mode}: the tree is gone after its owner's SIGKILL"), &tree, &|| {
            let records: Vec<String> = std::fs::read_dir(ledger.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect();
            format!("ledger records: {records:?}")
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

/// Waits until every process of `ids` is gone or a zombie; on timeout, names the survivors
/// (command line, parent, uid, state) and what `context` says, which is what a failure here needs.
fn wait_gone(what: &str, ids: &[ProcId], context: &dyn Fn() -> String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<&ProcId> = ids.iter().filter(|id| !exited(id)).collect();
        if alive.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let named: Vec<String> = alive
                .iter()
                .map(|id| {
                    let stat = procfs::Stat::read(id.pid).ok();
                    let read =
                        |file: &str| std::fs::read_to_string(format!("/proc/{}/{file}", id.pid)).unwrap_or_default();
                    format!(
                        "pid {} `{}` (parent {:?}, uid {:?}, state {:?}, in {} [syscall {}])",
                        id.pid,
                        procfs::cmdline(id.pid),
                        stat.map(|s| s.ppid),
                        procfs::owner_uid(id.pid).ok(),
                        stat.map(|s| s.state as char),
                        read("wchan"),
                        read("syscall").trim()
                    )
                })
                .collect();
            panic!("not reached in 10 s: {what}; alive: {}; {}", named.join("; "), context());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the cell for every containment mode.
fn cell(client: Client, escape: Escape, ending: Ending) {
    if client == Client::Rmcp {
        // Tokio's signal driver opens a socket pair once per process, for good: let it be
        // part of the FD baselines.
        drop(tokio::runtime::Builder::new_current_thread().enable_all().build());
    }
    for mode in MODES {
        match ending {
            Ending::OwnerKilled => owner_killed(client, escape, mode),
            _ => in_process(client, escape, mode, ending),
        }
        let left: Vec<String> = by_token_all()
            .iter()
            .map(|id| {
                let stat = procfs::Stat::read(id.pid).ok();
                format!("pid {} ppid {:?} `{}`", id.pid, stat.map(|s| s.ppid), procfs::cmdline(id.pid))
            })
            .collect();
        assert!(
            left.is_empty(),
            "nothing of the matrix is left after {client:?} × {escape:?} × {mode} × {ending:?}: {left:?}"
        );
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
    ($($name:ident: $client:ident, $escape:ident, $ending:ident;)*) => {
        $(
            #[test]
            #[serial]
            fn $name() {
                cell(Client::$client, Escape::$escape, Ending::$ending);
            }
        )*
    };
}

matrix! {
    clean_env_setsid_drop: Guard, CleanEnvSetsid, Drop;
    clean_env_setsid_panic: Guard, CleanEnvSetsid, Panic;
    clean_env_setsid_owner_killed: Guard, CleanEnvSetsid, OwnerKilled;
    clean_env_in_group_drop: Guard, CleanEnvInGroup, Drop;
    clean_env_in_group_panic: Guard, CleanEnvInGroup, Panic;
    clean_env_in_group_owner_killed: Guard, CleanEnvInGroup, OwnerKilled;
    leader_leaves_group_drop: Guard, LeaderLeavesGroup, Drop;
    leader_leaves_group_panic: Guard, LeaderLeavesGroup, Panic;
    leader_leaves_group_owner_killed: Guard, LeaderLeavesGroup, OwnerKilled;
    drops_uid_drop: Guard, DropsUid, Drop;
    drops_uid_panic: Guard, DropsUid, Panic;
    drops_uid_owner_killed: Guard, DropsUid, OwnerKilled;
    fork_storm_drop: Guard, ForkStorm, Drop;
    fork_storm_panic: Guard, ForkStorm, Panic;
    fork_storm_owner_killed: Guard, ForkStorm, OwnerKilled;
    ignores_term_drop: Guard, IgnoresTerm, Drop;
    ignores_term_panic: Guard, IgnoresTerm, Panic;
    ignores_term_owner_killed: Guard, IgnoresTerm, OwnerKilled;
    // The same escapes with rmcp's client holding the guard: ignores EOF and SIGTERM, children,
    // a double fork (with and without its environment), the owner SIGKILLed.
    rmcp_ignores_term_cancel: Rmcp, IgnoresTerm, Drop;
    rmcp_ignores_term_panic: Rmcp, IgnoresTerm, Panic;
    rmcp_ignores_term_owner_killed: Rmcp, IgnoresTerm, OwnerKilled;
    rmcp_clean_env_setsid_cancel: Rmcp, CleanEnvSetsid, Drop;
    rmcp_clean_env_setsid_panic: Rmcp, CleanEnvSetsid, Panic;
    rmcp_clean_env_setsid_owner_killed: Rmcp, CleanEnvSetsid, OwnerKilled;
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

/// A sweep that meets a keeper by its marker alone (its record not in the ledger it reads, as
/// for a sweep of another directory racing the keeper's own end) takes the keeper's whole tree,
/// the descendant of another uid too: the keeper is the proof. A decoy with the same command
/// line, not below a keeper, survives.
#[test]
#[serial]
fn a_sweep_that_finds_a_keeper_by_its_marker_ends_its_tree_of_any_uid() {
    use reapkit::sweep::{DockerCheck, FoundBy, Scope, Sweep};
    let (token, decoy_token) = (token(), token());
    let mut decoy = reapkit_tests::Decoy::start(fixture(&["--drop-uid", &decoy_token]));
    let guard = ProcessGuard::builder(fixture(&["--drop-uid", &token]))
        .containment(Containment::Keeper)
        .spawn()
        .expect("a guard below a keeper");
    let sleeper = wait_until("the guarded tree's sleep runs as nobody", || {
        by_token(&token)
            .into_iter()
            .find(|id| procfs::owner_uid(id.pid).ok() == Some(reapkit_tests::sweep_sandbox::NOBODY))
    });
    let elsewhere = tempfile::tempdir().expect("a ledger without the guard's record");
    let owner = reapkit::OwnerId::of_self().expect("our own id");

    let findings = Sweep::new(Scope::Owner(owner)).ledger_dir(elsewhere.path()).docker(DockerCheck::Off).find();

    let found = findings.leaks().iter().find(|l| l.pid == Some(sleeper.pid));
    assert!(found.is_some_and(|l| l.found_by == FoundBy::Keeper), "the nobody sleep, by its keeper: {findings:?}");
    let report = findings.reap();
    assert!(report.leaks.iter().all(|l| l.action != reapkit::sweep::Action::Failed), "{report:?}");
    wait_gone("the keeper's tree after the sweep", &[sleeper], &String::new);
    decoy.assert_untouched();
    end_by_token(&decoy_token);
    drop(decoy);
    drop(guard.shutdown());
}

/// An owner that exits the moment its guard is spawned, while the keeper may still be starting
/// (its SIGCHLDs of that time are lost): the keeper ends the tree at once, it never waits for a
/// signal that already came. Ten times, since it is a matter of timing.
#[test]
#[serial]
fn an_owner_gone_while_its_keeper_starts_still_has_its_tree_ended() {
    reapkit::ownership::become_subreaper(); // the orphans' zombies come here, to be reaped
    for _ in 0..10 {
        let token = token();
        let ledger = tempfile::tempdir().expect("a ledger");
        let out = Command::new(fixture_path().with_file_name("leaky-owner"))
            .args(["--fixture", &format!("--escape-clean-env {token}"), "--containment", "keeper", "--forget"])
            .env("REAPKIT_LEDGER_DIR", ledger.path())
            .env("REAPKIT_WATCHDOG_GRACE", "300ms")
            .env_remove("REAPKIT_SUPERVISOR")
            .stdin(Stdio::null())
            .output()
            .expect("the owner runs and exits");
        let line = String::from_utf8_lossy(&out.stdout);
        let owner = line.split_whitespace().nth(1).expect("its ready line names the owner").to_owned();
        let keeper = format!("REAPKIT_KEEPER={owner}");
        wait_until("the keeper and everything of its tree are gone", || {
            let left: Vec<ProcId> = reapkit::procfs::MarkerScan::new()
                .find(&keeper)
                .into_iter()
                .chain(by_token(&token))
                .filter(|id| !is_zombie(id.pid))
                .collect();
            left.is_empty().then_some(())
        });
        // The keeper, re-parented to us, is reaped by its pid in the guard's record.
        let keepers = std::fs::read_dir(ledger.path()).into_iter().flatten().flatten().filter_map(|e| {
            let record: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            record["contained"]["keeper"]["pid"].as_i64()
        });
        for pid in keepers {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
    }
}
