//! `reapkit reap` on bad input: corrupt, truncated and foreign ledger records, a ledger
//! directory that cannot be written or is not ours, a Docker engine that cannot be reached.
//! Each time the sweep must say exactly what it could not check and how to fix it (exit 2),
//! and still reap everything it *could* check: one bad input never hides a leak.
//!
//! Isolation: every sweep is scoped to a run id of its own (`--run-id`) and a ledger directory
//! of its own (`--ledger-dir`); everything a test starts is killed by pid and reaped by a
//! [`Spawned`] guard when the test ends, whether it passed or not.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reapkit::ledger::{Entry, Record, Resource};
use reapkit::ProcId;
use reapkit_tests::{dead_owner, is_zombie, reapkit_cli, wait_until};
use serde_json::Value;

/// The uid and gid of `nobody`: "another user" for the tests that need one.
const NOBODY: u32 = 65534;

/// One test's private world: its run id, ledger directory and report file.
struct Sandbox {
    name: &'static str,
    run_id: String,
    ledger: PathBuf,
    report: PathBuf,
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new(name: &'static str) -> Sandbox {
        let dir = tempfile::Builder::new().prefix("reapkit-cli-bad-input-").tempdir().expect("a temporary directory");
        let ledger = dir.path().join("ledger");
        std::fs::create_dir(&ledger).expect("the ledger directory");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let run_id = format!("cli-bad-input-{name}-{}-{nanos}", std::process::id());
        Sandbox { name, run_id, ledger, report: dir.path().join("report.json"), dir }
    }

    fn test_name(&self) -> String {
        format!("cli_bad_input::{}", self.name)
    }

    /// `sleep 3600` carrying this run's leftover markers, its owner dead.
    fn marked_leftover(&self) -> Command {
        let mut cmd = unmarked_sleep();
        cmd.env("REAPKIT_RUN_ID", &self.run_id)
            .env("REAPKIT_OWNER", dead_owner())
            .env("REAPKIT_TEST", self.test_name());
        cmd
    }

    /// A valid ledger record of this run naming `process`, its owner dead.
    fn record_of(&self, guard: &str, process: ProcId) -> Record {
        Record {
            version: 1,
            guard: guard.to_owned(),
            run_id: self.run_id.clone(),
            owner: dead_owner(),
            owner_host: reapkit::ownership::hostname(),
            test: self.test_name(),
            created: reapkit::ledger::now_rfc3339(),
            resource: Resource::Process {
                process,
                pgid: process.pid,
                command: vec!["sleep".into(), "3600".into()],
                cwd: None,
            },
            reaped: None,
        }
    }

    /// Writes the record of `process` into the ledger directory; returns its path.
    fn record(&self, guard: &str, process: ProcId) -> PathBuf {
        Entry::write(&self.ledger, &self.record_of(guard, process)).expect("the record is written").path().to_path_buf()
    }

    /// The options of a sweep scoped to this test: run id, ledger, report, a short grace.
    fn scope_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["--grace", "200ms", "--run-id"].map(String::from).into();
        args.push(self.run_id.clone());
        args.extend(["--ledger-dir".into(), path_str(&self.ledger), "--report".into(), path_str(&self.report)]);
        args
    }

    /// `reapkit reap` scoped to this test, with `extra` options (no Docker option added).
    fn reap_cmd(&self, extra: &[&str]) -> Command {
        let mut cmd = reapkit_cli();
        clean_env(&mut cmd);
        cmd.arg("reap").args(self.scope_args()).args(extra);
        cmd
    }

    /// `reapkit reap --json --no-docker` scoped to this test, with `extra` options.
    fn reap(&self, extra: &[&str]) -> Swept {
        Swept::run(self.reap_cmd(&[&["--json", "--no-docker"], extra].concat()))
    }
}

/// The outcome of one `reapkit` run.
struct Swept {
    code: i32,
    json: Value,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Swept {
    /// Runs `cmd` (a `reapkit` with `--json`) to its end.
    fn run(cmd: Command) -> Swept {
        Swept::run_text(cmd).parsed()
    }

    /// The same outcome, its stdout parsed as the one JSON object `--json` prints.
    fn parsed(mut self) -> Swept {
        self.json = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("reapkit's stdout is not one JSON object ({e}):\n{self}"));
        self
    }

    /// Runs `cmd` (a `reapkit` printing prose) to its end.
    fn run_text(mut cmd: Command) -> Swept {
        let started = Instant::now();
        let out = cmd.stdin(Stdio::null()).output().expect("reapkit runs");
        let took = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code().unwrap_or_else(|| panic!("reapkit was killed: {:?}\n{stderr}", out.status));
        Swept { code, json: Value::Null, stdout, stderr, took }
    }

    fn leaks(&self) -> &[Value] {
        self.json["leaks"].as_array().map_or(&[], Vec::as_slice)
    }

    fn leak_pids(&self) -> Vec<i64> {
        let mut pids: Vec<i64> = self.leaks().iter().filter_map(|l| l["pid"].as_i64()).collect();
        pids.sort_unstable();
        pids
    }

    fn leak_of(&self, p: &Spawned) -> &Value {
        self.leaks()
            .iter()
            .find(|l| l["pid"].as_i64() == Some(i64::from(p.id.pid)))
            .unwrap_or_else(|| panic!("no leak names pid {}:\n{self}", p.id.pid))
    }

    fn unchecked(&self) -> Vec<&str> {
        self.json["unchecked"].as_array().map_or_else(Vec::new, |a| a.iter().filter_map(Value::as_str).collect())
    }

    /// The one `unchecked` line that contains `needle`.
    fn unchecked_about(&self, needle: &str) -> &str {
        let found: Vec<&str> = self.unchecked().into_iter().filter(|l| l.contains(needle)).collect();
        assert_eq!(found.len(), 1, "exactly one `unchecked` line names {needle}:\n{self}");
        found[0]
    }

    fn assert_code(&self, code: i32) {
        assert_eq!(self.code, code, "reapkit's exit code:\n{self}");
        if !self.json.is_null() {
            assert_eq!(self.json["exit_code"], code, "the JSON's exit_code:\n{self}");
        }
    }
}

impl std::fmt::Display for Swept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {} after {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.took, self.stdout, self.stderr)
    }
}

/// A process this test started. Dropped, it is killed by pid (it is our unreaped child, so
/// the pid cannot have been recycled) and reaped, whether the test passed or not.
struct Spawned {
    child: Child,
    id: ProcId,
}

impl Spawned {
    fn start(mut cmd: Command) -> Spawned {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("it starts");
        let id = ProcId::of(child.id() as i32).expect("our unreaped child is in /proc");
        Spawned { child, id }
    }

    /// The same process (pid and start time) is still alive and not a zombie.
    fn assert_survived(&mut self, what: &str) {
        assert!(self.id.is_alive(), "{what} (pid {}) is gone or its pid was recycled", self.id.pid);
        assert!(!is_zombie(self.id.pid), "{what} (pid {}) was killed: it is a zombie", self.id.pid);
        let status = self.child.try_wait().expect("try_wait on our own child");
        assert!(status.is_none(), "{what} (pid {}) ended: {status:?}", self.id.pid);
    }

    /// It was ended by a signal (the sweep's SIGTERM or SIGKILL).
    fn assert_reaped(&mut self, what: &str) {
        let status = wait_until(&format!("{what} (pid {}) has ended", self.id.pid), || {
            self.child.try_wait().expect("try_wait on our own child")
        });
        assert!(status.signal().is_some(), "{what} (pid {}) was not killed by the sweep: {status:?}", self.id.pid);
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes every inherited `REAPKIT_` variable (nextest's `reapkit wrap` sets some), the
/// GitHub annotations switch (they would mix into the JSON) and `DOCKER_HOST`.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REAPKIT_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("GITHUB_ACTIONS").env_remove("DOCKER_HOST");
}

fn unmarked_sleep() -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg("3600");
    clean_env(&mut cmd);
    cmd
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("temporary paths are UTF-8").to_owned()
}

fn assert_root() {
    // SAFETY: getuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::getuid() }, 0, "this test runs as root (the suite does), to act as another user");
}

#[test]
fn corrupt_truncated_and_foreign_records_are_named_and_every_good_record_is_still_reaped() {
    assert_root();
    let sb = Sandbox::new("bad_records");
    // A leak with markers and a record, and one known from its record only.
    let mut marked = Spawned::start(sb.marked_leftover());
    let marked_record = sb.record("g-a-marked", marked.id);
    let mut unmarked = Spawned::start(unmarked_sleep());
    let unmarked_record = sb.record("g-z-ledger-only", unmarked.id);
    // A process named only by a record someone else wrote: not ours to act on.
    let mut bystander = Spawned::start(unmarked_sleep());
    let foreign = sb.record("g-m-foreign", bystander.id);
    std::os::unix::fs::chown(&foreign, Some(NOBODY), Some(NOBODY)).expect("chown the foreign record");
    let garbage = sb.ledger.join("g-b-garbage.json");
    std::fs::write(&garbage, b"\x00\xff{{{ this is not a reapkit record").expect("write garbage");
    let truncated = sb.ledger.join("g-t-truncated.json");
    let whole = serde_json::to_vec(&sb.record_of("g-t-truncated", unmarked.id)).expect("serialize");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("write half a record");
    let bad = [&garbage, &truncated, &foreign];

    // The people's version first, without acting: every bad file is named.
    let text = Swept::run_text(sb.reap_cmd(&["--dry-run", "--no-docker"]));
    text.assert_code(2);
    for path in bad {
        let line = format!("reapkit: could not check: ledger record {} is unreadable", path.display());
        assert!(text.stdout.contains(&line), "stdout names {}:\n{text}", path.display());
    }
    marked.assert_survived("a leak, under --dry-run");
    unmarked.assert_survived("a leak, under --dry-run");

    let swept = sb.reap(&[]);

    swept.assert_code(2);
    assert_eq!(swept.unchecked().len(), bad.len(), "one line per bad record, nothing else:\n{swept}");
    for path in bad {
        let line = swept.unchecked_about(&path.display().to_string());
        assert!(line.contains("delete it"), "the line says what to do: {line}");
    }
    assert!(swept.unchecked_about("g-m-foreign.json").contains(&format!("uid {NOBODY}")), "{swept}");
    let mut expected = vec![i64::from(marked.id.pid), i64::from(unmarked.id.pid)];
    expected.sort_unstable();
    assert_eq!(swept.leak_pids(), expected, "both good records' leaks, and only them:\n{swept}");
    assert_eq!(swept.leak_of(&marked)["action"], "killed", "{swept}");
    assert_eq!(swept.leak_of(&unmarked)["action"], "killed", "{swept}");
    assert_eq!(swept.leak_of(&unmarked)["found_by"], "ledger", "{swept}");
    assert_eq!(swept.leak_of(&unmarked)["test"], sb.test_name().as_str(), "{swept}");
    marked.assert_reaped("the marked leak next to bad records");
    unmarked.assert_reaped("the leak known from its record only");
    bystander.assert_survived("the process named only by another user's record");
    assert!(!marked_record.exists() && !unmarked_record.exists(), "the reaped leaks' records are cleared:\n{swept}");
    for path in bad {
        assert!(path.exists(), "{} is left for a person to look at", path.display());
    }
}

#[test]
fn a_read_only_ledger_directory_is_reported_and_the_leaks_are_still_reaped() {
    assert_root();
    let sb = Sandbox::new("read_only_ledger");
    let mut by_marker = Spawned::start(sb.marked_leftover());
    let mut recorded = Spawned::start(sb.marked_leftover());
    let record = sb.record("g-recorded", recorded.id);
    // root writes through any mode bits: make the directory a read-only bind mount instead,
    // in a mount namespace of the sweep's own, which vanishes with it (nothing to unmount).
    let script = r#"d="$1"; shift
        mount --bind "$d" "$d" && mount -o remount,ro,bind "$d" "$d" || exit 97
        if touch "$d/.probe" 2>/dev/null; then echo "$d is still writable" >&2; exit 98; fi
        exec "$0" "$@""#;
    let reap = sb.reap_cmd(&["--json", "--no-docker"]);
    let mut cmd = Command::new("unshare");
    clean_env(&mut cmd);
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(reap.get_program())
        .arg(&sb.ledger)
        .args(reap.get_args());

    let swept = Swept::run_text(cmd);
    assert!(![97, 98].contains(&swept.code), "precondition: a read-only bind mount of the ledger:\n{swept}");
    let swept = swept.parsed();

    swept.assert_code(2);
    let line = swept.unchecked_about(&record.display().to_string());
    assert!(line.contains(&sb.ledger.display().to_string()), "the message names the directory: {line}");
    assert!(line.contains("Read-only file system"), "the message says what is wrong: {line}");
    assert!(line.contains("writable"), "the message says how to fix it: {line}");
    assert_eq!(swept.leak_of(&by_marker)["action"], "killed", "{swept}");
    assert_eq!(swept.leak_of(&recorded)["action"], "killed", "{swept}");
    by_marker.assert_reaped("the leak found by marker");
    recorded.assert_reaped("the leak with a record");
    assert!(record.exists(), "the record could not be removed from the read-only directory");
}

#[test]
fn a_ledger_path_that_is_a_file_is_reported_and_marked_leaks_are_still_reaped() {
    let sb = Sandbox::new("ledger_is_a_file");
    std::fs::remove_dir(&sb.ledger).expect("remove the ledger directory");
    std::fs::write(&sb.ledger, b"not a directory").expect("a regular file where the ledger should be");
    let mut leftover = Spawned::start(sb.marked_leftover());

    let swept = sb.reap(&[]);

    swept.assert_code(2);
    let line = swept.unchecked_about(&sb.ledger.display().to_string());
    assert!(line.contains("not usable") && line.contains("Not a directory"), "what is wrong: {line}");
    assert!(line.contains("a directory you own and can write"), "how to fix it: {line}");
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "{swept}");
    assert_eq!(swept.leak_of(&leftover)["action"], "killed", "{swept}");
    leftover.assert_reaped("the leak found by marker");
}

#[test]
fn a_ledger_directory_of_another_user_is_refused_and_marked_leaks_are_still_reaped() {
    assert_root();
    let sb = Sandbox::new("foreign_ledger");
    let mut leftover = Spawned::start(sb.marked_leftover());
    // A process named only by a record in the other user's directory: not ours to act on.
    let mut bystander = Spawned::start(unmarked_sleep());
    sb.record("g-theirs", bystander.id);
    std::os::unix::fs::chown(&sb.ledger, Some(NOBODY), Some(NOBODY)).expect("chown the ledger directory");

    let swept = sb.reap(&[]);

    swept.assert_code(2);
    let line = swept.unchecked_about(&sb.ledger.display().to_string());
    assert!(line.contains(&format!("belongs to uid {NOBODY}")), "it says whose directory it is: {line}");
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "{swept}");
    assert_eq!(swept.leak_of(&leftover)["action"], "killed", "{swept}");
    leftover.assert_reaped("the leak found by marker");
    bystander.assert_survived("the process named only by a record in another user's ledger directory");
    assert!(sb.dir.path().join("ledger/g-theirs.json").exists(), "another user's record is left alone");
}

/// A sweep with `DOCKER_HOST=host` cannot reach the engine: exit 2, quickly, naming the host
/// and what to do; marked leaks are reaped anyway; with `--no-docker` the sweep is clean.
fn unreachable_docker(name: &'static str, host: &str) {
    let sb = Sandbox::new(name);
    let mut leftover = Spawned::start(sb.marked_leftover());

    let mut cmd = sb.reap_cmd(&["--json"]);
    cmd.env("DOCKER_HOST", host);
    let swept = Swept::run(cmd);

    swept.assert_code(2);
    assert!(swept.took < Duration::from_secs(5), "an unreachable engine is reported within seconds:\n{swept}");
    let line = swept.unchecked_about(host);
    assert!(line.contains("cannot be reached"), "what is wrong: {line}");
    assert!(line.contains("DOCKER_HOST") && line.contains("--no-docker"), "what to do: {line}");
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "{swept}");
    leftover.assert_reaped("the leak found by marker, Docker unreachable");

    let flag = Swept::run(sb.reap_cmd(&["--json", "--docker-host", host]));
    flag.assert_code(2);
    assert!(flag.took < Duration::from_secs(5), "{flag}");
    flag.unchecked_about(host);

    let mut cmd = sb.reap_cmd(&["--json", "--no-docker"]);
    cmd.env("DOCKER_HOST", host);
    let skipped = Swept::run(cmd);
    skipped.assert_code(0);
    assert!(skipped.leaks().is_empty() && skipped.unchecked().is_empty(), "{skipped}");
}

#[test]
fn an_unreachable_docker_host_over_tcp_is_reported_and_no_docker_skips_it() {
    unreachable_docker("docker_tcp", "tcp://127.0.0.1:1");
}

#[test]
fn a_missing_docker_socket_is_reported_and_no_docker_skips_it() {
    unreachable_docker("docker_unix", "unix:///nonexistent.sock");
}
