//! The verdict is the product: one test per hole of that issue — a stranger killed, "clean"
//! said while something lives, evidence lost, a hang on a hostile file, a false alarm, a verdict
//! about someone else's project — each reproduced from outside, as a user or an adversary would,
//! with a decoy (root's and `nobody`'s) wherever anything is killed.
//!
//! Isolation as in `trust`: every sweep is scoped to a run id and ledger of its own; what a
//! test starts is ended by pid when it ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reapkit::ledger::{Contained, Entry, Resource};
use reapkit::procfs::{MarkerScan, ProcId};
use reapkit::Shared;
use reapkit_tests::sweep_sandbox::{
    assert_root, clean_env, leaky_owner, unmarked_sleep, Piped, Sandbox, Spawned, Swept, NOBODY,
};
use reapkit_tests::{by_token, dead_owner, exited, reapkit_cli, token, wait_exit, wait_until};

/// Runs `cmd` to its end, or kills it after `limit` and panics saying it hung.
fn within(limit: Duration, cmd: Command) -> Swept {
    let (tx, rx) = std::sync::mpsc::channel();
    let program = format!("{cmd:?}");
    std::thread::spawn(move || drop(tx.send(Swept::run_text(cmd))));
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("{program} hung for {limit:?}"))
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

// ---------------------------------------------------------------- 4. hostile files: no hang

#[test]
fn a_fifo_for_a_shared_fixtures_lock_or_log_is_an_error_or_replaced_never_a_hang() {
    let sb = Sandbox::new("verdict", "fifo_shared");
    for file in ["lock", "log"] {
        let fixture = Shared::command(&format!("fifo-{file}"), ["sleep", "3600"]).ledger_dir(&sb.ledger);
        let sock = fixture.socket_path().expect("its socket path");
        let planted = sock.with_extension(file);
        std::fs::create_dir_all(planted.parent().expect("shared/")).expect("shared/");
        mkfifo(&planted);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || drop(tx.send(fixture.attach())));
        let attached =
            rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("attach hung on a FIFO .{file}"));
        match file {
            // The start lock must be exactly reapkit's file: a clear error, naming it.
            "lock" => {
                let error = attached.expect_err("a FIFO is no lock").to_string();
                assert!(error.contains("a FIFO") && error.contains(&planted.display().to_string()), "{error}");
                std::fs::remove_file(&planted).expect("the FIFO goes");
            }
            // The keeper's log is written afresh: the planted FIFO is replaced, never opened.
            _ => {
                let lease = attached.expect("the fixture starts");
                assert!(std::fs::symlink_metadata(&planted).expect("the log").is_file());
                let keeper = lease.info().keeper;
                drop(lease);
                // Started by this test: ended by pid (SIGTERM: it ends its fixture and exits).
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper.pid), nix::sys::signal::SIGTERM);
                reapkit_tests::wait_exit(keeper, "the fixture keeper this test started");
            }
        }
    }
}

#[test]
fn a_fifo_lock_in_the_fixture_folder_does_not_hang_reap() {
    let sb = Sandbox::new("verdict", "fifo_lock_reap");
    let shared = sb.ledger.join("shared");
    std::fs::create_dir(&shared).expect("shared/");
    mkfifo(&shared.join("x-0000000000000000.lock"));
    mkfifo(&shared.join("x-0000000000000000.log"));
    let report_fifo = sb.report.clone();
    mkfifo(&report_fifo);

    let started = Instant::now();
    let swept = within(Duration::from_secs(30), sb.reap_cmd(&["--no-docker"]));
    assert!(started.elapsed() < Duration::from_secs(10), "{swept}");
    assert_eq!(swept.code, 0, "nothing leaked, and the planted report FIFO was replaced:\n{swept}");
    let report = std::fs::symlink_metadata(&sb.report).expect("the report");
    assert!(report.is_file(), "the report is a file of its own, not written through the FIFO");
    assert!(shared.join("x-0000000000000000.lock").exists(), "a FIFO is not reapkit's to delete");
}

// ---------------------------------------------------------------- 3. evidence survives

/// `leaky-owner` with `flags`, as a test of the sandbox's run (its ledger, run id and name).
fn leaky(sb: &Sandbox, flags: &[&str]) -> Command {
    let mut cmd = Command::new(leaky_owner());
    clean_env(&mut cmd);
    cmd.args(flags)
        .env("REAPKIT_LEDGER_DIR", &sb.ledger)
        .env("REAPKIT_RUN_ID", &sb.run_id)
        .env("NEXTEST_TEST_NAME", sb.test_name());
    cmd
}

/// SIGKILLs `owner` (a `leaky-owner` that holds guards) and returns once its watchdog is done.
fn kill_and_wait_for_the_watchdog(owner: &mut Piped) {
    let marker = format!("REAPKIT_WATCHDOG_OWNER={}", owner.ready[0]);
    let watchdog = wait_until("the watchdog is up", || MarkerScan::new().find(&marker).first().copied());
    owner.child.kill().expect("SIGKILL our own child");
    owner.child.wait().expect("reaped");
    wait_exit(watchdog, "the watchdog, done with its owner's leftovers");
}

/// `pids` as the ready line of `leaky-owner` gives them (`12,34`).
fn pids(list: &str) -> Vec<ProcId> {
    list.split(',').map(|p| ProcId::of(p.parse().expect("a pid")).expect("alive")).collect()
}

#[test]
fn a_test_process_killed_under_keeper_containment_leaves_its_evidence_for_reap() {
    let sb = Sandbox::new("verdict", "keeper_evidence");
    let mut owner = Piped::start(leaky(&sb, &["--sleep", "3600", "--containment", "keeper"]));
    assert_eq!(owner.ready[3], "keeper", "precondition: the guard has a keeper");
    let sleep = pids(&owner.ready[2])[0];

    kill_and_wait_for_the_watchdog(&mut owner);
    assert!(exited(&sleep), "the keeper ended the tree with its owner");

    let swept = sb.reap(&[]);
    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(sleep.pid)], "{swept}");
    let leak = &swept.leaks()[0];
    assert_eq!(leak["test"], sb.test_name(), "{swept}");
    // Whichever came first — the keeper (its owner's death ends its tree) or the watchdog — the
    // record is the evidence: marked by the watchdog, or found as it was.
    assert!(["reaped-by-watchdog", "already-gone"].contains(&leak["action"].as_str().unwrap_or_default()), "{swept}");
    let detail = leak["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("keeper ended the tree") || detail.contains("the watchdog reaped it"), "{swept}");
    sb.reap(&[]).assert_code(0);
}

/// `reapkit run` of a command that passes although its test process — `leaky-owner` with
/// `flags`, its ready line written to `ready` — was SIGKILLed holding its guards.
fn run_whose_test_process_is_killed(sb: &Sandbox, flags: &[&str], ready: &Path) -> Swept {
    let script = r#"out=$1; shift; "$0" "$@" > "$out" & until grep -q ready "$out"; do sleep 0.02; done
        sleep 0.2; kill -9 $!; wait $!; exit 0"#;
    let mut run = reapkit_cli();
    clean_env(&mut run);
    run.args(["run", "--no-docker", "--grace", "200ms", "--run-id", &sb.run_id, "--report"])
        .arg(&sb.report)
        .args(["--", "sh", "-c", script])
        .arg(leaky_owner())
        .arg(ready)
        .args(flags)
        .env("REAPKIT_LEDGER_DIR", &sb.ledger)
        .env("NEXTEST_TEST_NAME", sb.test_name());
    within(Duration::from_secs(60), run)
}

#[test]
fn run_reports_and_fails_on_what_the_watchdog_of_its_killed_test_process_reaped() {
    let sb = Sandbox::new("verdict", "run_watchdog_evidence");
    let out = tempfile::NamedTempFile::new().expect("a file for the ready line");
    let swept = run_whose_test_process_is_killed(&sb, &["--sleep", "3600"], out.path());
    let ready = std::fs::read_to_string(out.path()).expect("the ready line");
    let sleep: i64 = ready.split_whitespace().nth(3).and_then(|p| p.parse().ok()).expect("the guarded pid");
    assert_eq!(swept.code, 1, "the command passed, but its killed test process leaked:\n{swept}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sb.report).expect("the report")).expect("JSON");
    let leaks = report["leaks"].as_array().expect("leaks");
    assert!(leaks.iter().any(|l| l["pid"] == sleep && l["test"] == sb.test_name()), "{report:#}");
    assert_eq!(report["stats"]["leaked"], 1, "{report:#}");
}

#[test]
fn a_run_id_collision_keeps_the_other_jobs_run_log_and_counts_its_live_guards_as_live() {
    let sb = Sandbox::new("verdict", "run_log_collision");
    let state = tempfile::tempdir().expect("a state dir of its own");
    let job = |args: &[&str], cmd: &mut Command| {
        let mut run = reapkit_cli();
        clean_env(&mut run);
        run.args(["run", "--no-docker", "--run-id", &sb.run_id]).args(args).arg("--").arg(cmd.get_program());
        run.args(cmd.get_args()).env("XDG_STATE_HOME", state.path()).env("REAPKIT_LEDGER_DIR", &sb.ledger);
        run
    };
    // Job A: alive, holding one guard.
    let mut a = Piped::start(job(&[], Command::new(leaky_owner()).args(["--sleep", "3600"])));
    let log = state.path().join(format!("reapkit/runs/{}.log", sb.run_id));
    assert!(log.exists(), "job A logs its guard");

    // Job B shares the run id and ends.
    let report = sb.report.to_str().expect("UTF-8").to_owned();
    let b = within(Duration::from_secs(60), job(&["--report", &report], &mut Command::new("true")));
    assert_eq!(b.code, 0, "job B leaked nothing:\n{b}");
    assert!(log.exists(), "job B must not delete job A's run log:\n{b}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&sb.report).expect("report")).expect("JSON");
    assert_eq!((json["stats"]["leaked"].clone(), json["stats"]["live"].clone()), (0.into(), 1.into()), "{json:#}");

    a.close_stdin();
    assert!(a.child.wait().expect("job A ends").success(), "job A ends clean");
    assert!(!log.exists(), "job A's own run clears its log once reported");
}

// ---------------------------------------------------------------- 1. no stranger killed

/// A root and a `nobody` sleeper with no reapkit marker: the strangers a cgroup must not
/// make reapkit kill.
fn strangers() -> [Spawned; 2] {
    assert_root();
    let mut nobody = Command::new("setpriv");
    nobody.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", "3600"]);
    clean_env(&mut nobody);
    let nobody = Spawned::start(nobody);
    wait_until("the stranger runs as nobody", || {
        (reapkit::procfs::owner_uid(nobody.id.pid).ok() == Some(NOBODY)).then_some(())
    });
    [Spawned::start(unmarked_sleep()), nobody]
}

/// A cgroup this test made (beside a guard's, under the cgroup2 mount), removed when dropped —
/// after the processes in it, declared after it, are gone.
struct MadeCgroup(PathBuf);

impl MadeCgroup {
    fn new(dir: PathBuf) -> MadeCgroup {
        std::fs::create_dir(&dir).expect("a cgroup of our own (the suite runs as root)");
        MadeCgroup(dir)
    }

    fn holding(self, processes: &[Spawned]) -> MadeCgroup {
        for p in processes {
            std::fs::write(self.0.join("cgroup.procs"), p.id.pid.to_string()).expect("moved in");
        }
        self
    }
}

impl Drop for MadeCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The cgroup the one process record of `ledger` names (the guard's own).
fn guard_cgroup(ledger: &Path) -> PathBuf {
    let record =
        std::fs::read_dir(ledger).expect("ledger").flatten().find(|e| e.path().extension() == Some("json".as_ref()));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record.expect("a record").path()).expect("read")).expect("JSON");
    PathBuf::from(json["contained"]["cgroup"].as_str().expect("cgroup containment (the suite runs as root)"))
}

#[test]
fn a_cgroup_named_like_a_dead_owners_guard_is_not_ended_by_its_watchdog() {
    let sb = Sandbox::new("verdict", "named_cgroup");
    let mut owner = Piped::start(leaky(&sb, &["--sleep", "3600", "--containment", "cgroup"]));
    let guarded = pids(&owner.ready[2])[0];
    let real = guard_cgroup(&sb.ledger);
    // Named as the owner's next guard would be, beside its real one.
    let name = real.file_name().expect("a name").to_string_lossy().rsplit_once('-').expect("g…-<n>").0.to_owned();
    let fake = MadeCgroup::new(real.with_file_name(format!("{name}-99")));
    let mut inside = strangers();
    let fake = fake.holding(&inside);

    kill_and_wait_for_the_watchdog(&mut owner);
    assert!(exited(&guarded), "the owner's real guard was ended by its watchdog");
    for p in &mut inside {
        p.assert_survived("a stranger in a cgroup that only has the name of the dead owner's guard");
    }
    drop(inside);
    drop(fake);
}

#[test]
fn a_record_naming_a_cgroup_without_a_marked_member_kills_nothing_and_is_kept() {
    let sb = Sandbox::new("verdict", "forged_cgroup_record");
    let owner = dead_owner();
    let mount = reapkit::containment::cgroup2_mount().expect("a cgroup2 mount");
    let guard = format!("g1-1-1-{}", std::process::id());
    let made = MadeCgroup::new(mount.join(format!("reapkit-{guard}")));
    let mut inside = strangers();
    let made = made.holding(&inside);
    // The forger knows everything a record says, the cgroup's id included.
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&made.0).expect("its id"));
    let mut record = sb.record_of(&guard, &owner, inside[0].id);
    if let Resource::Process { contained, .. } = &mut record.resource {
        *contained = Some(Contained::Cgroup { cgroup: made.0.clone(), id: Some(id) });
    }
    let path = Entry::write(&sb.ledger, &record).expect("written").path().to_path_buf();

    let swept = sb.reap(&[]);
    swept.assert_code(2);
    assert!(swept.leaks().is_empty(), "{swept}");
    assert!(swept.unchecked_about(&guard).contains("proves nothing"), "{swept}");
    for p in &mut inside {
        p.assert_survived("a stranger in a cgroup a forged record names");
    }
    assert!(path.exists(), "the record is kept for a person to look at");
    drop(inside);
    drop(made);
}

#[test]
fn a_stranger_moved_into_a_real_guards_cgroup_survives_the_watchdog_that_ends_the_guard() {
    let sb = Sandbox::new("verdict", "stranger_in_cgroup");
    // Started before the guard — a clock tick before: start times count ticks (10 ms), and a
    // process of the guard's own tick may be its child — then moved into its cgroup (root can).
    let mut older = strangers();
    std::thread::sleep(Duration::from_millis(30));
    let mut owner = Piped::start(leaky(&sb, &["--sleep", "3600", "--containment", "cgroup"]));
    let guarded = pids(&owner.ready[2])[0];
    let cgroup = guard_cgroup(&sb.ledger);
    for p in &older {
        std::fs::write(cgroup.join("cgroup.procs"), p.id.pid.to_string()).expect("moved in");
    }

    kill_and_wait_for_the_watchdog(&mut owner);
    assert!(exited(&guarded), "the guard's own process was ended");
    for p in &mut older {
        p.assert_survived("a process older than the guard, moved into its cgroup");
    }
    let parent = cgroup.parent().expect("a parent cgroup").join("cgroup.procs");
    for p in &older {
        std::fs::write(&parent, p.id.pid.to_string()).expect("moved back out");
    }
    drop(older);
    let _ = std::fs::remove_dir(&cgroup);
    // The evidence names the guard's leak; the cgroup is gone with its last member.
    let swept = sb.reap(&[]);
    assert!(swept.leak_pids().contains(&i64::from(guarded.pid)), "{swept}");
    assert!(!cgroup.exists(), "{swept}");
}

// ---------------------------------------------------------------- 2. "clean" means proven

/// This process's own cgroup (cgroup2), where an escapee of a guard's cgroup can write itself.
fn own_cgroup() -> PathBuf {
    let mount = reapkit::containment::cgroup2_mount().expect("a cgroup2 mount");
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = text.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup2 line");
    mount.join(path.trim_start_matches('/'))
}

/// `sh -c script` as a guard of `containment`, with `$1` the token its escapee sleeps on and
/// `$2` a cgroup.procs it may write itself into.
fn breaching(containment: reapkit::Containment, script: &str, token: &str) -> reapkit::ProcessGuard {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script, "sh", token]).arg(own_cgroup().join("cgroup.procs"));
    reapkit::ProcessGuard::builder(cmd)
        .containment(containment)
        .term_grace(Duration::from_millis(300))
        .spawn()
        .expect("spawns")
}

/// The one live `sleep` on `token` (not a shell that names it).
fn sleeping_on(token: &str) -> ProcId {
    wait_until(&format!("the escapee `sleep {token}` runs"), || {
        by_token(token).into_iter().find(|id| {
            !reapkit_tests::is_zombie(id.pid) && reapkit::procfs::cmdline(id.pid) == format!("sleep {token}")
        })
    })
}

#[test]
fn a_member_that_leaves_its_cgroup_is_ended_by_ancestry_and_named_as_a_breach() {
    let token = token();
    // A member writes itself into another cgroup, clears its environment, starts a session.
    let script = r#"sh -c 'echo $$ > "$2" && exec env -i setsid sleep "$1"' sh "$1" "$2" & exec sleep 3600"#;
    let guard = breaching(reapkit::Containment::Cgroup, script, &token);
    let escapee = sleeping_on(&token);
    let report = guard.shutdown();
    assert!(!report.is_clean(), "a breach is never clean: {report}");
    assert!(report.to_string().contains("left the guard's cgroup"), "{report}");
    assert!(exited(&escapee), "ended as a descendant of its member: {report}");
}

/// A guard of `containment` whose tree breaks out as `script` says, leaving an escapee only the
/// next layer can end: the teardown names it and says `said`, never clean; the scope ends it.
fn escapee_named_and_ended_by_the_scope(containment: reapkit::Containment, script: &str, said: &str) {
    let token = token();
    let scope = reapkit::TestScope::builder().name(format!("verdict::escape_{containment}")).enter();
    let guard = breaching(containment, script, &token);
    let escapee = sleeping_on(&token);
    let report = guard.shutdown();
    assert!(!report.is_clean(), "{report}");
    assert!(report.to_string().contains(said), "{report}");
    assert!(report.problems.iter().any(|p| p.contains(&format!("pid {}", escapee.pid))), "named: {report}");
    let leaks = scope.finish().expect_err("the escapee is the test's leak").to_string();
    assert!(leaks.contains(&token), "{leaks}");
    assert!(exited(&escapee), "the scope ended it");
}

#[test]
fn an_escapee_that_left_its_cgroup_and_its_parent_is_named_and_the_scope_ends_it() {
    // ... and double-forks: re-parented to this process (the subreaper), outside the cgroup.
    let script = r#"sh -c 'echo $$ > "$2" && exec env -i setsid sh -c "sleep $1 &"' sh "$1" "$2"; exec sleep 3600"#;
    escapee_named_and_ended_by_the_scope(reapkit::Containment::Cgroup, script, "was adopted by this process");
}

#[test]
fn a_keeper_killed_by_its_own_tree_is_a_broken_containment_and_the_scope_ends_the_escapee() {
    // The server kills its keeper (its parent), then escapes with a cleared environment.
    let script = r#"kill -9 $PPID; env -i setsid sh -c "sleep $1 &"; exec sleep 3600"#;
    escapee_named_and_ended_by_the_scope(reapkit::Containment::Keeper, script, "its keeper");
}

#[test]
fn after_its_keeper_and_then_its_owner_are_killed_the_supervisor_ends_the_escapee() {
    let sb = Sandbox::new("verdict", "keeper_then_owner_killed");
    let token = token();
    let script = format!(r#"kill -9 $PPID; env -i setsid sh -c "sleep {token} &"; exec sleep 3600"#);
    let out = tempfile::NamedTempFile::new().expect("a file for the ready line");
    let swept = run_whose_test_process_is_killed(&sb, &["--containment", "keeper", "--sh", &script], out.path());
    assert_eq!(swept.code, 1, "{swept}");
    assert!(by_token(&token).iter().all(exited), "the escapee did not outlive the run:\n{swept}");
    let report = std::fs::read_to_string(&sb.report).expect("the report");
    assert!(report.contains(&token), "named in the report: {report}");
}

#[test]
fn run_and_wrap_take_a_leftover_that_switched_to_another_uid_and_spare_a_stranger_of_that_uid() {
    let [_root, mut stranger] = strangers();
    for mode in ["run", "wrap"] {
        let sb = Sandbox::new("verdict", &format!("uid_switch_{mode}"));
        let token = token();
        let mut cmd = reapkit_cli();
        clean_env(&mut cmd);
        cmd.args([mode, "--no-docker", "--grace", "200ms", "--report"]).arg(&sb.report);
        if mode == "run" {
            cmd.args(["--run-id", &sb.run_id]);
        }
        let leak = format!(r#"env -i setsid sh -c 'sleep {token} &'"#);
        cmd.args(["--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", &leak])
            .env("REAPKIT_LEDGER_DIR", &sb.ledger);
        let swept = within(Duration::from_secs(60), cmd);
        assert_eq!(swept.code, 1, "{mode}: the command passed but left a process behind:\n{swept}");
        let report = std::fs::read_to_string(&sb.report).expect("the report");
        assert!(report.contains(&token) && report.contains("\"action\": \"killed\""), "{mode}: {report}");
        assert!(by_token(&token).iter().all(exited), "{mode}: the leftover is gone");
        stranger.assert_survived("a process of the same uid outside the supervised tree");
    }
}

#[test]
fn a_keeper_dying_as_the_teardown_begins_never_leaves_its_server_running_under_a_clean_report() {
    for _ in 0..10 {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "kill -9 $PPID; exec sleep 3600"]);
        let guard = reapkit::ProcessGuard::builder(cmd)
            .containment(reapkit::Containment::Keeper)
            .term_grace(Duration::from_millis(200))
            .spawn()
            .expect("spawns");
        let server = ProcId::of(guard.pid()).expect("the server");
        // At once: the keeper may be dying right now.
        let report = guard.shutdown();
        assert!(exited(&server), "the server outlived its teardown: {report}");
        let keeper_killed_first = report.to_string().contains("containment broken");
        assert!(keeper_killed_first || report.is_clean(), "{report}");
    }
}

// ---------------------------------------------------------------- 5. a verdict about this project

/// `reapkit reap` as the nextest setup script or `cargo xtask reap` runs it in a project whose
/// ledger is `ledger`, for a user whose state (index, run logs) is in `state`.
fn project_reap(ledger: &Path, state: &Path, extra: &[&str]) -> Swept {
    let mut cmd = reapkit_cli();
    clean_env(&mut cmd);
    cmd.args(["reap", "--json", "--no-docker", "--grace", "200ms"])
        .args(extra)
        .env("REAPKIT_LEDGER_DIR", ledger)
        .env("XDG_STATE_HOME", state);
    within(Duration::from_secs(60), cmd).parsed()
}

#[test]
fn another_projects_state_never_fails_or_blocks_this_projects_reap() {
    let ours = Sandbox::new("verdict", "project_ours");
    let theirs = Sandbox::new("verdict", "project_theirs");
    let state = tempfile::tempdir().expect("this user's state");
    // The other project: a leftover of a dead owner with its record, a FIFO where a record
    // goes, a record of a PID namespace that is gone; all listed in this user's index.
    let their_owner = dead_owner();
    let mut their_leftover = Spawned::start(theirs.marked_sleep(&their_owner));
    theirs.record("g-theirs", &their_owner, their_leftover.id);
    mkfifo(&theirs.ledger.join("fifo.json"));
    let mut gone_ns = theirs.record_of("g-gone-ns", &dead_owner(), ProcId { pid: 7, start_time: 1 });
    gone_ns.owner.pidns += 1;
    Entry::write(&theirs.ledger, &gone_ns).expect("written");
    let index = state.path().join("reapkit/ledgers");
    std::fs::create_dir_all(index.parent().expect("a parent")).expect("state dir");
    std::fs::write(&index, format!("{}\n{}\n", ours.ledger.display(), theirs.ledger.display())).expect("index");

    let swept = project_reap(&ours.ledger, state.path(), &[]);
    swept.assert_code(0);
    assert!(swept.leaks().is_empty() && swept.unchecked().is_empty(), "{swept}");
    assert!(swept.stdout.contains("--all"), "it says how to judge the rest:\n{swept}");
    their_leftover.assert_survived("another project's leftover, under this project's reap");
    assert_eq!(project_reap(&ours.ledger, state.path(), &["--warn-only"]).code, 0);

    // This project's own leftover is its verdict.
    let owner = dead_owner();
    let mut our_leftover = Spawned::start(ours.marked_sleep(&owner));
    ours.record("g-ours", &owner, our_leftover.id);
    let swept = project_reap(&ours.ledger, state.path(), &[]);
    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(our_leftover.id.pid)], "{swept}");
    our_leftover.assert_reaped("this project's leftover");
    their_leftover.assert_survived("another project's leftover, under this project's reap");

    // The whole machine, on request: the other project's state is judged, and its leftover reaped.
    let swept = project_reap(&ours.ledger, state.path(), &["--all"]);
    swept.assert_code(2);
    assert!(swept.leak_pids().contains(&i64::from(their_leftover.id.pid)), "{swept}");
    their_leftover.assert_reaped("the other project's leftover, under --all");
    // --warn-only never stops a run, whatever it found (its report still says what).
    let warned = project_reap(&ours.ledger, state.path(), &["--all", "--warn-only"]);
    assert_eq!(warned.code, 0, "{warned}");
    assert!(!warned.unchecked().is_empty(), "{warned}");
}

// ---------------------------------------------------------------- 6. smaller

#[test]
fn after_a_tests_whole_pid_namespace_is_killed_reap_reports_it_once_and_removes_its_cgroup() {
    let sb = Sandbox::new("verdict", "namespace_killed");
    let cmd = sb.in_pid_namespace(r#"exec "$0" --sleep 3600 --containment cgroup"#);
    let mut ns = Piped::start(cmd);
    let owner: reapkit::OwnerId = ns.ready[0].parse().expect("an owner id");
    assert_ne!(owner.pidns, reapkit::OwnerId::of_self().expect("us").pidns, "precondition: its own namespace");
    let cgroup = guard_cgroup(&sb.ledger);
    let inside = reapkit::procfs::descendants(ns.child.id() as i32);
    // The namespace's init dies with `unshare`: the kernel kills every process in it.
    ns.child.kill().expect("SIGKILL our own child");
    ns.child.wait().expect("reaped");
    // Its init is re-parented to us (the subreaper): reaped here, as its parent would; every
    // process of the namespace is gone from the host's view, zombies included.
    for id in &inside {
        wait_until("the namespace's processes are gone", || {
            let _ =
                nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(id.pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            (!id.is_alive()).then_some(())
        });
    }

    let swept = sb.reap(&[]);
    swept.assert_code(1);
    assert_eq!(swept.leaks()[0]["action"], "already-gone", "{swept}");
    assert!(!cgroup.exists(), "its empty cgroup is removed:\n{swept}");
    sb.reap(&[]).assert_code(0);
}

#[test]
fn a_fork_storm_under_cgroup_containment_ends_within_the_term_grace_not_after_it() {
    let token = token();
    let mut cmd = reapkit_tests::fixture(&["--fork-storm", &token]);
    cmd.stdin(std::process::Stdio::null());
    let guard = reapkit::ProcessGuard::builder(cmd)
        .containment(reapkit::Containment::Cgroup)
        .eof_grace(Duration::ZERO)
        .term_grace(Duration::from_secs(2))
        .spawn()
        .expect("spawns");
    wait_until("the storm forks", || (by_token(&token).len() > 5).then_some(()));
    let report = guard.shutdown();
    assert!(report.is_clean(), "{report}");
    // Every member got SIGTERM while the cgroup was frozen: none waited out the grace.
    let term = report.step(reapkit::Step::Term).expect("SIGTERM ran");
    assert!(term < Duration::from_millis(1500), "{report}");
    assert!(by_token(&token).iter().all(exited));
}

#[test]
fn an_engine_that_did_not_answer_is_not_waited_for_again_on_the_next_run() {
    let sb = Sandbox::new("verdict", "silent_engine");
    let state = tempfile::tempdir().expect("this user's state");
    // An engine that accepts a connection (the kernel does, from the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let engine = format!("tcp://{}", silent.local_addr().expect("address"));
    let mut record = sb.record_of("g-container", &dead_owner(), ProcId { pid: 1, start_time: 1 });
    record.resource =
        Resource::Container { id: "c1".into(), image: "x".into(), docker_host: engine.clone(), networks: vec![] };
    Entry::write(&sb.ledger, &record).expect("written");
    let reap = || {
        let mut cmd = reapkit_cli();
        clean_env(&mut cmd);
        cmd.args(["reap", "--json", "--docker-timeout", "2s", "--ledger-dir"])
            .arg(&sb.ledger)
            .env("XDG_STATE_HOME", state.path());
        within(Duration::from_secs(60), cmd).parsed()
    };

    let first = reap();
    first.assert_code(2);
    assert!(first.took >= Duration::from_secs(2), "it waited for the engine once:\n{first}");
    let second = reap();
    second.assert_code(2);
    assert!(second.took < Duration::from_secs(1), "not again:\n{second}");
    assert!(second.unchecked_about(&engine).contains("not asked again"), "{second}");
}
