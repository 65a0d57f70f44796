//! The verdict is the product: one test per hole of that issue — a stranger killed, "clean"
//! said while something lives, evidence lost, a hang on a hostile file, a false alarm, a verdict
//! about someone else's project — each reproduced from outside, as a user or an adversary would,
//! with a decoy (root's and `nobody`'s) wherever anything is killed.
//!
//! Isolation as in `trust`: every sweep is scoped to a run id and ledger of its own; what a
//! test starts is ended by pid when it ends.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reapkit::procfs::{MarkerScan, ProcId};
use reapkit::Shared;
use reapkit_tests::sweep_sandbox::{clean_env, exited, leaky_owner, Piped, Sandbox, Swept};
use reapkit_tests::{reapkit_cli, wait_exit, wait_until};

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

/// The watchdog of `owner`, once it is up.
fn watchdog_of(owner: &str) -> ProcId {
    let marker = format!("REAPKIT_WATCHDOG_OWNER={owner}");
    wait_until("the watchdog is up", || MarkerScan::new().find(&marker).first().copied())
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
    let watchdog = watchdog_of(&owner.ready[0]);

    owner.child.kill().expect("SIGKILL our own child");
    owner.child.wait().expect("reaped");
    wait_exit(watchdog, "the watchdog, done with its owner's leftovers");
    assert!(exited(&sleep), "the keeper ended the tree with its owner");

    let swept = sb.reap(&[]);
    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(sleep.pid)], "{swept}");
    let leak = &swept.leaks()[0];
    assert_eq!(leak["test"], sb.test_name(), "{swept}");
    assert_eq!(leak["action"], "reaped-by-watchdog", "{swept}");
    assert!(leak["detail"].as_str().is_some_and(|d| d.contains("keeper ended the tree")), "{swept}");
    sb.reap(&[]).assert_code(0);
}

#[test]
fn run_reports_and_fails_on_what_the_watchdog_of_its_killed_test_process_reaped() {
    let sb = Sandbox::new("verdict", "run_watchdog_evidence");
    let out = tempfile::NamedTempFile::new().expect("a file for the ready line");
    let mut run = reapkit_cli();
    clean_env(&mut run);
    // A command that passes although its test process was SIGKILLed holding a guard.
    run.args(["run", "--no-docker", "--grace", "200ms", "--run-id", &sb.run_id, "--report"])
        .arg(&sb.report)
        .args(["--", "sh", "-c"])
        .arg(r#""$0" --sleep 3600 > "$1" & until grep -q ready "$1"; do sleep 0.02; done; kill -9 $!; wait $!; exit 0"#)
        .arg(leaky_owner())
        .arg(out.path())
        .env("REAPKIT_LEDGER_DIR", &sb.ledger)
        .env("NEXTEST_TEST_NAME", sb.test_name());
    let swept = within(Duration::from_secs(60), run);
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
