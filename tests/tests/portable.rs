//! The portable POSIX backend — what macOS, the BSDs and other Unix get — forced on Linux
//! (`REAPKIT_PORTABLE_BACKEND=1` and `--features portable`, as `cargo xtask test` runs this
//! file), so that CI runs the code
//! those systems compile: guards that hold the process group their child leads, teardown by
//! `killpg` while the leader is unreaped, waits on our own children, FD checks from `/dev/fd`,
//! a watchdog woken by its lifeline, and sweeps that say what they could not check.
//!
//! What the backend cannot do is asserted as a stated gap (by capability), never skipped:
//! a `setsid` escapee survives its guard, and the guard's report says so.
//!
//! The test observes the machine through `/proc` itself (it runs on Linux): the product under
//! test reads none of it.
#![cfg(feature = "portable")]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use reapkit::capabilities::{Concern, Guarantee};
use reapkit::sweep::{DockerCheck, Scope, Sweep, EXIT_UNCHECKED};
use reapkit::{Containment, EndedBy, ProcId, ProcessGuard};
use reapkit_tests::docker;
use reapkit_tests::observe::{self, fd_count, state};
use reapkit_tests::{adopt_orphans, fixture, reap_orphans, wait_until};

#[test]
fn reapkit_is_built_with_the_portable_backend() {
    assert_eq!(
        reapkit::backend(),
        reapkit::Backend::Portable,
        "build reapkit with REAPKIT_PORTABLE_BACKEND=1 for these tests (cargo xtask test does)"
    );
}

fn running(pid: i32) -> bool {
    observe::state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// A guard of `sh -c script` whose stdout is a pipe we read: the script prints pids, one a line.
fn shell_guard(script: &str, lines: usize) -> (ProcessGuard, Vec<i32>) {
    let (read, write) = std::io::pipe().expect("a pipe");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    let guard = ProcessGuard::builder(cmd).stdout(write).spawn().expect("the guard spawns");
    let mut pids = Vec::new();
    let mut out = BufReader::new(read);
    for _ in 0..lines {
        let mut line = String::new();
        out.read_line(&mut line).expect("the script prints a pid");
        pids.push(line.trim().parse().expect("a pid"));
    }
    (guard, pids)
}

fn gap(t: &reapkit::Teardown, concern: Concern) -> Option<&Guarantee> {
    t.gaps.iter().find(|(c, _)| *c == concern).map(|(_, g)| g)
}

#[test]
fn this_build_has_the_portable_backend_and_states_each_guarantee_it_gives() {
    assert_eq!(reapkit::backend(), reapkit::Backend::Portable);
    let caps = reapkit::capabilities();
    let says = caps.to_string();
    assert!(says.starts_with("guarantees on linux (portable backend):"), "{says}");
    assert!(matches!(caps.of(Concern::WholeTree), Guarantee::Partial(w) if w.contains("process group")), "{says}");
    assert!(matches!(caps.of(Concern::Escapees), Guarantee::Missing(w) if w.contains("leaves the group")), "{says}");
    assert!(matches!(caps.of(Concern::OwnerDeath), Guarantee::Partial(w) if w.contains("pipe")), "{says}");
    assert!(matches!(caps.of(Concern::RecycledPids), Guarantee::Full(w) if w.contains("unreaped children")), "{says}");
    assert_eq!(caps.of(Concern::FdChecks), &Guarantee::Full("/dev/fd".into()), "{says}");
    assert!(matches!(caps.of(Concern::OtherNamespaces), Guarantee::Partial(_)), "{says}");
    assert_eq!(reapkit::containment::auto(), Containment::Marker);
}

#[test]
fn the_strong_containments_are_refused_with_what_to_use_instead() {
    for mode in [Containment::Cgroup, Containment::Keeper] {
        let err = ProcessGuard::builder(Command::new("true")).containment(mode).spawn().expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("process group only: use marker or auto"), "{text}");
        assert!(text.contains("portable backend"), "{text}");
        assert_eq!(format!("{err:?}"), text, "Debug is what libtest prints: the same words");
    }
}

#[test]
fn a_guard_ends_every_process_of_its_group_and_a_decoy_in_a_group_of_its_own_survives() {
    adopt_orphans();
    let mut decoy = Command::new("sleep").arg("300").process_group(0).spawn().expect("the decoy");
    let (guard, members) = shell_guard("sleep 300 & echo $!; sleep 300 & echo $!; exec sleep 300", 2);
    let orphans: Vec<ProcId> = members.iter().filter_map(|&p| ProcId::of(p)).collect();
    let leader = guard.pid();
    assert!(members.iter().chain([&leader]).all(|&p| running(p)), "{members:?} and {leader} run");

    let t = guard.shutdown();

    assert!(t.is_clean(), "{t}");
    assert_eq!(t.ended_by, EndedBy::Sigterm, "{t}");
    assert_eq!(t.containment, Containment::Marker);
    assert!(state(leader).is_none(), "the leader is reaped: {t}");
    wait_until("the group's members are gone", || members.iter().all(|&p| !running(p)).then_some(()));
    reap_orphans(&orphans);
    assert!(matches!(gap(&t, Concern::Escapees), Some(Guarantee::Missing(_))), "{t}");
    assert!(t.to_string().contains("escapees NOT guaranteed here"), "the report says what it cannot vouch for: {t}");
    assert!(decoy.try_wait().expect("our child").is_none(), "the decoy outside the group was touched");
    decoy.kill().expect("our decoy");
    decoy.wait().expect("reaped");
}

#[test]
fn a_member_that_ignores_sigterm_and_outlives_its_leader_gets_sigkill_before_the_leader_is_reaped() {
    // The leader exits on stdin EOF; its child ignores SIGTERM and stays in the group.
    adopt_orphans();
    let (guard, members) = shell_guard("(trap '' TERM HUP; exec sleep 300) & echo $!; read _", 1);
    let orphans: Vec<ProcId> = members.iter().filter_map(|&p| ProcId::of(p)).collect();
    let t = guard.shutdown();
    assert_eq!(t.ended_by, EndedBy::StdinEof, "{t}");
    assert!(t.is_clean(), "{t}");
    wait_until("the member that outlived its leader is gone", || (!running(members[0])).then_some(()));
    reap_orphans(&orphans);
}

#[test]
fn a_setsid_escapee_survives_and_the_teardown_names_that_gap_instead_of_passing_silently() {
    adopt_orphans();
    let (guard, escapee) = shell_guard("setsid sleep 300 & echo $!; exec sleep 300", 1);
    let escapee = escapee[0];
    let orphan = ProcId::of(escapee).expect("it runs");
    wait_until("the escapee has its own session", || (observe::session(escapee) == Some(escapee)).then_some(()));
    let t = guard.shutdown();
    assert!(running(escapee), "the portable backend cannot reach a process that left the group");
    let Some(Guarantee::Missing(why)) = gap(&t, Concern::Escapees) else { panic!("no escapee gap: {t}") };
    assert!(why.contains("setsid"), "{why}");
    // Ours (this test started it): ended by pid, as the Linux backend would have.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(escapee), nix::sys::signal::SIGKILL).expect("our escapee");
    reap_orphans(&[orphan]);
}

#[test]
fn an_mcp_server_answers_and_its_teardown_leaves_no_descriptor_and_no_thread_behind() {
    // The first guard starts the watchdog, and this process keeps its lifeline: one pipe, for
    // the life of the process.
    let fresh = fd_count();
    reapkit_tests::before_fd_baseline();
    assert_eq!(fd_count(), fresh + 1, "the lifeline, and nothing else, stays open");
    let before = fd_count();
    let mut server = reapkit::McpServer::start(fixture(&["--children", "1"])).expect("the handshake");
    let tools = server.list_tools().expect("tools/list");
    assert!(tools.iter().any(|t| t["name"] == "echo"), "{tools:?}");
    let out = server.call_tool("echo", serde_json::json!({"text": "portable"})).expect("tools/call");
    assert!(out.text().contains("portable"), "{}", out.text());
    let t = server.shutdown();
    assert!(t.is_clean(), "{t}");
    assert_eq!(fd_count(), before, "the pipes, the waiter's socket pair and the drain's wake-up are closed");
    assert_eq!(threads_named("reapkit-wait"), 0, "every waiter thread was joined");
}

/// The threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("our threads")
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)))
        .count()
}

#[test]
fn a_scope_that_leaks_a_pipe_fails_naming_it_from_dev_fd() {
    let scope = reapkit::TestScope::enter();
    let (read, write) = std::io::pipe().expect("a pipe");
    let report = scope.finish().expect_err("the pipe is a leak");
    let text = report.to_string();
    assert_eq!(report.leaks.len(), 2, "both ends: {text}");
    assert!(report.leaks.iter().all(|l| l.what.contains("pipe:[")), "{text}");
    assert!(text.contains("children: not checked (the portable backend"), "{text}");
    drop((read, write));
}

#[reapkit::test]
fn a_reapkit_test_with_guards_and_their_watchdog_passes_with_nothing_left() -> reapkit::Result<()> {
    let mut guards = Vec::new();
    for _ in 0..3 {
        let mut cmd = Command::new("sleep");
        cmd.arg("300");
        guards.push(ProcessGuard::spawn(cmd)?);
    }
    let pids: Vec<i32> = guards.iter().map(ProcessGuard::pid).collect();
    for t in reapkit::shutdown_all(guards) {
        assert!(t.is_clean(), "{t}");
    }
    assert!(pids.iter().all(|&p| state(p).is_none()), "all reaped");
    Ok(())
}

#[test]
fn a_sweep_checks_records_and_containers_and_says_it_saw_no_process() {
    let ledger = tempfile::tempdir().expect("a ledger");
    let report = Sweep::new(Scope::Everything).ledger_dir(ledger.path()).docker(DockerCheck::Off).find().preview();
    assert_eq!(report.exit_code, EXIT_UNCHECKED, "an incomplete answer: {report:?}");
    assert!(
        report.unchecked.iter().any(|u| u.starts_with("no process was checked: the portable backend")),
        "{report:?}"
    );
    assert!(report.notes.iter().any(|n| n.contains("guarantee NOT held here: escapees")), "{report:?}");
}

/// A user's xtask (`tests/src/bin/user-xtask.rs`): the reapkit CLI embedded, built with this
/// backend.
fn user_xtask(args: &[&str], ledger: &std::path::Path) -> std::process::Output {
    let bin = reapkit_tests::fixture_path().with_file_name("user-xtask");
    Command::new(bin).args(args).env("REAPKIT_LEDGER_DIR", ledger).output().expect("the xtask runs")
}

#[test]
fn the_cli_lists_the_gaps_and_exits_2_because_it_could_not_check_processes() {
    let ledger = tempfile::tempdir().expect("a ledger");
    let out = user_xtask(&["ps", "--no-docker"], ledger.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_UNCHECKED), "{stderr}");
    assert!(stderr.contains("could not check: no process was checked: the portable backend (linux)"), "{stderr}");
    assert!(stderr.contains("note: guarantee NOT held here: escapees"), "{stderr}");
    let out = user_xtask(&["reap", "--no-docker", "--json"], ledger.path());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(json["exit_code"], EXIT_UNCHECKED, "{json}");
    assert_eq!(json["leaks"], serde_json::json!([]), "{json}");
}

#[test]
fn a_killed_tests_watchdog_wakes_on_its_lifeline_removes_its_container_and_reports_its_process() {
    if !docker::engine() {
        return;
    }
    // The orphaned guard's process comes to this test when its group is ended, to be reaped.
    adopt_orphans();
    let ledger = tempfile::tempdir().expect("a ledger");
    let leaky = reapkit_tests::fixture_path().with_file_name("leaky-owner");
    let mut owner = Command::new(leaky)
        .args(["--sleep", "300", "--container"])
        .env("REAPKIT_LEDGER_DIR", ledger.path())
        .env("REAPKIT_WATCHDOG_GRACE", "300ms")
        .env_remove("REAPKIT_SUPERVISOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the leaky owner starts");
    let mut line = String::new();
    BufReader::new(owner.stdout.take().expect("piped")).read_line(&mut line).expect("its ready line");
    let words: Vec<&str> = line.split_whitespace().collect();
    let (container, leader): (&str, i32) = (words[2], words[3].parse().expect("the guarded pid"));
    assert_eq!(docker::docker(&["ps", "-q", "--no-trunc", "--filter", &format!("id={container}")]), container);

    owner.kill().expect("SIGKILL our own child");
    owner.wait().expect("reaped");

    wait_until("the watchdog removed the container", || {
        docker::docker(&["ps", "-aq", "--filter", &format!("id={container}")]).is_empty().then_some(())
    });
    // Its process: alive, in its group, and reported by a sweep — not ended, not believed.
    assert!(running(leader), "the portable watchdog cannot prove the process ours");
    let report = Sweep::new(Scope::dead_owners()).ledger_dir(ledger.path()).docker(DockerCheck::Off).find().preview();
    assert_eq!(report.exit_code, EXIT_UNCHECKED, "{report:?}");
    assert!(
        report.unchecked.iter().any(|u| u.contains(&format!("names pid {leader}")) && u.contains("Kept, not touched")),
        "{report:?}"
    );
    // Ours (the leaky owner this test started): its group ended by hand, then its record.
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(leader), nix::sys::signal::SIGKILL).expect("its group");
    let leader_pid = nix::unistd::Pid::from_raw(leader);
    nix::sys::wait::waitpid(leader_pid, None).expect("the orphan, adopted by this test, reaped");
    let leftovers = Sweep::new(Scope::dead_owners()).ledger_dir(ledger.path()).docker(DockerCheck::Off).find().reap();
    assert!(leftovers.unchecked.iter().all(|u| !u.contains(&format!("pid {leader}"))), "{leftovers:?}");
}

#[test]
fn what_needs_a_process_table_is_refused_up_front_naming_what_is_missing() {
    let err = ProcessGuard::builder(Command::new("true")).listen(reapkit::Listen::Tcp(0)).spawn().expect_err("refused");
    assert!(err.to_string().starts_with("readiness by a listening socket is not available"), "{err}");
    assert!(err.to_string().contains("portable backend"), "{err}");
    let err = reapkit::Shared::command("web", ["sleep", "60"]).attach().expect_err("refused");
    assert!(err.to_string().starts_with("a shared fixture is not available"), "{err}");
    assert!(err.to_string().contains("run on Linux"), "{err}");
}

#[test]
fn a_forgotten_guard_fails_its_scope_and_its_group_is_ended_by_its_leader() {
    let mut decoy = Command::new("sleep").arg("300").process_group(0).spawn().expect("the decoy");
    let scope = reapkit::TestScope::enter();
    let (guard, members) = shell_guard("sleep 300 & echo $!; exec sleep 300", 1);
    let leader = guard.pid();
    std::mem::forget(guard);
    let report = scope.finish().expect_err("the guard was forgotten");
    let text = report.to_string();
    assert_eq!(report.leaks.len(), 1, "one finding, the guard:\n{text}");
    assert!(report.leaks[0].what.contains("was never dropped"), "{text}");
    assert!(report.leaks[0].action.contains(&format!("its process tree was torn down (pid {leader})")), "{text}");
    assert!(state(leader).is_none(), "the leader, our child, is reaped");
    wait_until("its group's member is gone", || (!running(members[0])).then_some(()));
    assert!(decoy.try_wait().expect("our child").is_none(), "a child of ours in a group of its own was touched");
    decoy.kill().expect("our decoy");
    decoy.wait().expect("reaped");
}
