//! The layers below the guard, each checked from outside: the watchdog (a test process killed
//! with SIGKILL), `reapkit wrap` (a test that leaks and passes), `reapkit run` (any command).
//!
//! The test processes here are `leaky-owner` (guards of a fixture tree, a `setsid` escapee and
//! a container) or shell commands; each gets a private run id and ledger directory, so the
//! sweeps they trigger can never reach another test's processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reapkit::procfs::{MarkerScan, ProcId};
use reapkit_tests::docker::{docker, engine};
use reapkit_tests::sweep_sandbox::Spawned;
use reapkit_tests::{exited, is_zombie, reapkit_cli, wait_until};

/// A name the leaky test process runs under, as nextest would name it.
const LEAKY_TEST: &str = "suite::leaks_on_purpose";

/// A leaky test process of its own run, with its own ledger.
struct Leaky {
    child: Child,
    owner: String,
    container: Option<String>,
    run_id: String,
    ledger: tempfile::TempDir,
}

impl Leaky {
    fn start(flags: &[&str]) -> Leaky {
        let ledger = tempfile::tempdir().expect("tempdir");
        let run_id = format!("supervision-{}", uuid());
        let mut child = leaky_command(flags, &run_id, ledger.path()).stdout(Stdio::piped()).spawn().expect("starts");
        let (owner, container) = read_ready(&mut child);
        Leaky { child, owner, container, run_id, ledger }
    }

    /// Every process the leaky test owns (its guards' trees and escapees), as seen in `/proc`.
    fn tree(&self, expected: usize) -> Vec<ProcId> {
        let owner = format!("REAPKIT_OWNER={}", self.owner);
        wait_until("the fixture tree and the escapee are up", || {
            let found =
                MarkerScan::new().find_matching(|env| has(env, &owner) && !has_prefix(env, "REAPKIT_WATCHDOG_OWNER="));
            (found.len() >= expected).then_some(found)
        })
    }

    fn watchdog(&self) -> ProcId {
        let marker = format!("REAPKIT_WATCHDOG_OWNER={}", self.owner);
        wait_until("the watchdog is up", || MarkerScan::new().find(&marker).first().copied())
    }
}

impl Drop for Leaky {
    fn drop(&mut self) {
        // Ours, by pid: if a check failed before the kill, end the test process normally
        // (closing its stdin lets its guards drop) or, failing that, kill it.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn leaky_command(flags: &[&str], run_id: &str, ledger: &std::path::Path) -> Command {
    let exe = reapkit_cli().get_program().to_owned();
    let mut cmd = Command::new(std::path::Path::new(&exe).with_file_name("leaky-owner"));
    cmd.args(flags)
        .env("REAPKIT_RUN_ID", run_id)
        .env("REAPKIT_LEDGER_DIR", ledger)
        .env("NEXTEST_TEST_NAME", LEAKY_TEST)
        // Its watchdog must not wait for the wrapper running *this* test.
        .env_remove("REAPKIT_SUPERVISOR")
        .stdin(Stdio::piped());
    cmd
}

fn read_ready(child: &mut Child) -> (String, Option<String>) {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("reads");
    let mut words = line.split_whitespace().skip(1);
    let owner = words.next().unwrap_or_else(|| panic!("no ready line: {line:?}")).to_owned();
    let container = words.next().filter(|c| *c != "-").map(str::to_owned);
    (owner, container)
}

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("uuid").trim().to_owned()
}

fn has(environ: &[u8], entry: &str) -> bool {
    environ.split(|&b| b == 0).any(|e| e == entry.as_bytes())
}

fn has_prefix(environ: &[u8], prefix: &str) -> bool {
    environ.split(|&b| b == 0).any(|e| e.starts_with(prefix.as_bytes()))
}

fn container_exists(id: &str) -> bool {
    !docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")]).is_empty()
}

/// Reaps the zombies of `ids` that were re-parented to us (we are their subreaper).
fn reap_adopted(ids: &[ProcId]) {
    for id in ids.iter().filter(|id| is_zombie(id.pid)) {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(id.pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
}

#[test]
fn a_killed_test_process_is_cleaned_up_by_its_watchdog() {
    if !engine() {
        return;
    }
    // Orphans of the killed process come to us, so that we can reap their zombies.
    reapkit::ownership::become_subreaper();
    let mut leaky = Leaky::start(&[]);
    let tree = leaky.tree(5);
    let watchdog = leaky.watchdog();
    let container = leaky.container.clone().expect("a container");
    assert!(container_exists(&container));

    let killed_at = Instant::now();
    leaky.child.kill().expect("SIGKILL our own child");
    leaky.child.wait().expect("reaped");
    let mut everything = tree.clone();
    everything.push(watchdog);
    wait_until("the watchdog ended the tree, the escapee, the container and itself", || {
        (everything.iter().all(exited) && !container_exists(&container)).then_some(())
    });
    let took = killed_at.elapsed();
    reap_adopted(&everything);
    let limit = reapkit::DEFAULT_WATCHDOG_GRACE + Duration::from_secs(1);
    assert!(took <= limit, "the watchdog took {took:?}, more than grace + 1 s ({limit:?})");

    // The evidence stays for the CI sweep, which names the test and fails; then it is clean.
    let reap = |json: bool| {
        let mut cmd = reapkit_cli();
        cmd.args(["reap", "--run-id", &leaky.run_id, "--ledger-dir"]).arg(leaky.ledger.path());
        if json {
            cmd.arg("--json");
        }
        cmd.output().expect("reapkit runs")
    };
    let first = reap(true);
    assert_eq!(first.status.code(), Some(1), "{}", String::from_utf8_lossy(&first.stderr));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).expect("one JSON object");
    let leaks = report["leaks"].as_array().expect("a leaks array");
    for leak in leaks {
        assert_eq!(leak["test"], LEAKY_TEST, "{leak}");
        assert_eq!(leak["action"], "reaped-by-watchdog", "{leak}");
    }
    // Every process of both trees, escapee included, with the command line taken before the kill.
    let mut reported: Vec<i64> =
        leaks.iter().filter(|l| l["kind"] == "process").filter_map(|l| l["pid"].as_i64()).collect();
    reported.sort_unstable();
    let mut expected: Vec<i64> = tree.iter().map(|id| i64::from(id.pid)).collect();
    expected.sort_unstable();
    assert_eq!(reported, expected, "{report:#}");
    assert!(
        leaks
            .iter()
            .filter(|l| l["kind"] == "process")
            .all(|l| l["command"].as_str().is_some_and(|c| c.contains("fixture-server"))),
        "{report:#}"
    );
    assert!(leaks.iter().any(|l| l["kind"] == "container" && l["id"] == container.as_str()), "{report:#}");
    let second = reap(false);
    assert_eq!(second.status.code(), Some(0), "{}", String::from_utf8_lossy(&second.stdout));
}

/// What a killed leaky test process's stderr carries to its end (its watchdog's, if it kept
/// it), under `cargo test` (no nextest variable in its environment) or nextest; and where its
/// watchdog's stderr points.
fn stderr_of_a_killed_owner(under_nextest: bool) -> (String, String) {
    let ledger = tempfile::tempdir().expect("tempdir");
    let mut cmd = leaky_command(&["--sleep", "3600"], &format!("announce-{}", uuid()), ledger.path());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NEXTEST") && key != "NEXTEST_TEST_NAME" {
            cmd.env_remove(key);
        }
    }
    if under_nextest {
        cmd.env("NEXTEST", "1").env("NEXTEST_RUN_ID", uuid());
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starts");
    let (owner, _) = read_ready(&mut child);
    let marker = format!("REAPKIT_WATCHDOG_OWNER={owner}");
    let watchdog = wait_until("the watchdog is up", || MarkerScan::new().find(&marker).first().copied());
    let watchdog_stderr = std::fs::read_link(format!("/proc/{}/fd/2", watchdog.pid)).expect("its stderr");
    let mut stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        let _ = tx.send(text);
    });
    child.kill().expect("SIGKILL our own child");
    child.wait().expect("reaped");
    let text = rx.recv_timeout(Duration::from_secs(10)).expect("its stderr closes once its watchdog is done");
    wait_until("the watchdog is done", || exited(&watchdog).then_some(()));
    reap_adopted(&[watchdog]);
    let text = text.replace(&ledger.path().display().to_string(), "<ledger>");
    (text, watchdog_stderr.display().to_string())
}

#[test]
fn under_cargo_test_the_watchdog_tells_the_run_what_it_ended_and_under_nextest_holds_no_stderr() {
    reapkit::ownership::become_subreaper();
    let (text, watchdogs) = stderr_of_a_killed_owner(false);
    assert!(watchdogs.starts_with("pipe:["), "the watchdog writes to the run's stderr: {watchdogs}");
    assert!(
        text.contains("reapkit watchdog: test process ") && text.contains(" ended with guards still held"),
        "{text}"
    );
    assert!(text.contains("`sleep 3600` from test suite::leaks_on_purpose") && text.contains(": killed"), "{text}");
    assert!(text.contains("The evidence stays in <ledger>: `cargo xtask reap`"), "{text}");

    let (text, watchdogs) = stderr_of_a_killed_owner(true);
    assert_eq!(watchdogs, "/dev/null", "nextest waits for a test's stderr to close: the watchdog must not hold it");
    assert!(text.is_empty(), "nextest reports a killed test itself: {text}");
}

#[test]
fn a_clean_test_process_leaves_no_watchdog_and_no_evidence() {
    reapkit::ownership::become_subreaper();
    let mut leaky = Leaky::start(&["--no-container"]);
    let tree = leaky.tree(5);
    let watchdog = leaky.watchdog();
    drop(leaky.child.stdin.take()); // it ends normally: every guard drops
    assert!(leaky.child.wait().expect("ends").success());
    let mut everything = tree;
    everything.push(watchdog);
    wait_until("the tree and the watchdog are gone", || everything.iter().all(exited).then_some(()));
    reap_adopted(&everything);
    let out = reapkit_cli()
        .args(["reap", "--no-docker", "--run-id", &leaky.run_id, "--ledger-dir"])
        .arg(leaky.ledger.path())
        .output()
        .expect("reapkit runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn wrap_fails_exactly_the_test_that_leaked_and_reaps_it() {
    if !engine() {
        return;
    }
    let ledger = tempfile::tempdir().expect("tempdir");
    let run_id = format!("wrap-{}", uuid());
    let leaky = leaky_command(&["--forget"], &run_id, ledger.path());
    let out = supervised(&["wrap"], &leaky);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a passing test that leaked fails:\n{stderr}");
    assert!(stderr.contains(LEAKY_TEST), "the report names the test:\n{stderr}");
    let (owner, container) = read_ready_from(&out.stdout);
    for (kind, action) in [("process", "killed"), ("container", "removed")] {
        let row = stderr.lines().any(|l| l.starts_with(kind) && l.contains(action) && l.contains(LEAKY_TEST));
        assert!(row, "one row per leak, its action done ({kind}: {action}):\n{stderr}");
    }
    let container = container.expect("a container");
    assert!(!container_exists(&container), "the leaked container was removed");
    let marked = MarkerScan::new().find_matching(|env| has(env, &format!("REAPKIT_OWNER={owner}")));
    assert!(marked.is_empty(), "nothing of the test (watchdog included) is left: {marked:?}");
    assert!(std::fs::read_dir(ledger.path()).expect("ledger").next().is_none(), "its records are cleared");
}

/// Runs `reapkit <args> <leaky>` to its end: the leaky test process under a supervisor, with
/// its environment (and not the supervisor of the test running this).
fn supervised(args: &[&str], leaky: &Command) -> std::process::Output {
    reapkit_cli()
        .args(args)
        .arg(leaky.get_program())
        .args(leaky.get_args())
        .envs(leaky.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env_remove("REAPKIT_SUPERVISOR")
        .stdin(Stdio::null())
        .output()
        .expect("reapkit runs")
}

fn read_ready_from(stdout: &[u8]) -> (String, Option<String>) {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().find(|l| l.starts_with("ready ")).unwrap_or_else(|| panic!("no ready line: {text}"));
    let mut words = line.split_whitespace().skip(1);
    let owner = words.next().expect("owner").to_owned();
    (owner, words.next().filter(|c| *c != "-").map(str::to_owned))
}

#[test]
fn wrap_passes_a_clean_test_through_with_its_status() {
    for (script, code) in [("exit 0", 0), ("exit 7", 7)] {
        let out = reapkit_cli().args(["wrap", "--no-docker", "sh", "-c", script]).output().expect("runs");
        assert_eq!(out.status.code(), Some(code), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!String::from_utf8_lossy(&out.stderr).contains("leaked"));
    }
}

/// `reapkit run -- CMD`: descendants still alive after CMD ends are killed and reported,
/// a `setsid` escapee included; CMD's status wins when non-zero; a decoy with the very same
/// command line, started outside the run, survives.
#[test]
fn run_reaps_what_any_command_leaves_and_keeps_its_status() {
    // A command line no other process has: the decoy and the leaks share it exactly.
    let sleeper = format!(
        "sleep 3600.{}{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos()
    );
    let mut decoy_cmd = Command::new("sh");
    decoy_cmd.args(["-c", &format!("exec {sleeper}")]);
    let mut decoy = Spawned::start(decoy_cmd);

    for (exit, expected) in [("exit 0", 1), ("exit 3", 3)] {
        let script = format!("{sleeper} & setsid {sleeper} </dev/null >/dev/null 2>&1 & {exit}");
        let out = reapkit_cli()
            .args(["run", "--no-docker", "--grace", "200ms", "--", "sh", "-c", &script])
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(expected), "{stderr}");
        let rows = stderr.lines().filter(|l| l.starts_with("process") && l.contains("killed")).count();
        assert_eq!(rows, 2, "both sleeps reported, one row each:\n{stderr}");
        assert!(stderr.contains("the command left behind 2 resources:"), "{stderr}");
        assert!(stderr.contains(" sh -c "), "attributed to the command:\n{stderr}");
    }
    decoy.assert_survived("the decoy with the same command line");
    drop(decoy);
    let clean = reapkit_cli().args(["run", "--no-docker", "--", "true"]).output().expect("runs");
    assert_eq!(clean.status.code(), Some(0), "{}", String::from_utf8_lossy(&clean.stderr));
}

#[test]
fn run_removes_the_containers_created_under_its_run_id() {
    if !engine() {
        return;
    }
    let ledger = tempfile::tempdir().expect("tempdir");
    let run_id = format!("run-{}", uuid());
    let leaky = leaky_command(&["--forget"], "ignored: `reapkit run` sets its own", ledger.path());
    let out = reapkit_cli()
        .args(["run", "--grace", "200ms", "--run-id", &run_id, "--ledger-dir"])
        .arg(ledger.path())
        .arg("--")
        .arg(leaky.get_program())
        .args(leaky.get_args())
        .env("REAPKIT_LEDGER_DIR", ledger.path())
        .stdin(Stdio::null())
        .output()
        .expect("reapkit run runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let (_, container) = read_ready_from(&out.stdout);
    let container = container.expect("a container");
    let row =
        stderr.lines().any(|l| l.starts_with("container") && l.contains(&container[..12]) && l.contains("removed"));
    assert!(row, "{stderr}");
    assert!(!container_exists(&container), "removed");
    assert!(docker(&["ps", "-aq", "--filter", &format!("label=reapkit.run-id={run_id}")]).is_empty());
}

/// The run report's statistics are what the run's guards did: `reapkit run` and `reapkit wrap`
/// over a known mix (`leaky-owner --workload`: 6 created, 2 failed to start, 5 torn down, 1
/// leaked, 1 ended besides the guarded ones), in the JSON report and one line; `reap --run-id`
/// reads the same log, then clears it (the run is over).
#[test]
fn the_run_report_counts_what_the_runs_guards_did() {
    let expected = serde_json::json!({
        "guards_created": 6, "failed_to_start": 2, "torn_down": 5, "leaked": 1, "escapees_ended": 1,
        "shared_started": 0, "shared_reused": 0
    });
    let line = "6 guards created, 2 failed to start, 5 torn down, 1 leaked, 1 escapee ended";
    let files = tempfile::tempdir().expect("tempdir");
    for (mode, what) in [("run", "run"), ("wrap", "the test")] {
        let ledger = tempfile::tempdir().expect("tempdir");
        let run_id = format!("stats-{mode}-{}", uuid());
        let report = files.path().join(format!("{mode}.json"));
        let leaky = leaky_command(&["--workload"], &run_id, ledger.path());
        let report_arg = report.to_str().expect("a UTF-8 path");
        let mut args = vec![mode, "--no-docker", "--grace", "200ms", "--report", report_arg];
        if mode == "run" {
            args.extend(["--run-id", &run_id, "--"]);
        }
        let out = supervised(&args, &leaky);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "the forgotten guard is a leak:\n{stderr}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).expect("the report file")).expect("JSON");
        assert_eq!(json["stats"], expected, "{mode}: {json}");
        let summary = match mode {
            "run" => format!("reapkit: {what} {run_id}: {line}"),
            _ => format!("reapkit: {what}: {line}"),
        };
        assert!(stderr.contains(&summary), "{mode}: one line:\n{stderr}");
        let log = reapkit::run_stats::dir().join(format!("{run_id}.log"));
        if mode == "wrap" {
            assert!(log.exists(), "wrap keeps the log: the run goes on after its test");
            let reaped = reapkit_cli()
                .args(["reap", "--json", "--no-docker", "--run-id", &run_id, "--ledger-dir"])
                .arg(ledger.path())
                .output()
                .expect("reap runs");
            let json: serde_json::Value = serde_json::from_slice(&reaped.stdout).expect("JSON");
            assert_eq!(json["stats"], expected, "reap --run-id: {json}");
        }
        assert!(!log.exists(), "{mode}: the log of a reported run is cleared");
    }
}
