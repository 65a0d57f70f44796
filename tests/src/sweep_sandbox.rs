//! Driving the real `reapkit` binary from a test: a private run id and ledger per test, the
//! outcome of a run, and kill-on-drop guards for the processes a test starts on purpose.
//!
//! Isolation: the suite runs in parallel and other tests leak on purpose, so every sweep a
//! [`Sandbox`] builds is scoped to a run id of its own (`--run-id`) and reads a ledger
//! directory of its own (`--ledger-dir`). Everything a test starts through [`Spawned`] is
//! killed (by pid) and reaped when the guard drops, whether the test passed or not.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use reapkit::ledger::{Entry, Record, Resource};
use reapkit::procfs::MarkerScan;
use reapkit::ProcId;
use serde_json::Value;

use crate::{exited, is_zombie, reapkit_cli, wait_until};

/// The uid and gid of `nobody`: "another user" for the tests that need one.
pub const NOBODY: u32 = 65534;

/// One test's private world: its run id, ledger directory and report file.
pub struct Sandbox {
    /// The `REAPKIT_TEST` its leftovers carry and its records name: `<suite>::<name>`.
    test: String,
    pub run_id: String,
    pub ledger: PathBuf,
    pub report: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sandbox {
    /// The sandbox of the test `name` of the test file `suite` (`cli_safety`): its leftovers
    /// are named `<suite>::<name>`, its run id starts with `<suite>-<name>` (dashed).
    pub fn new(suite: &str, name: &str) -> Sandbox {
        let dashed = suite.replace('_', "-");
        let dir =
            tempfile::Builder::new().prefix(&format!("reapkit-{dashed}-")).tempdir().expect("a temporary directory");
        let ledger = dir.path().join("ledger");
        std::fs::create_dir(&ledger).expect("the ledger directory");
        Sandbox {
            test: format!("{suite}::{name}"),
            run_id: unique(&format!("{dashed}-{name}")),
            ledger,
            report: dir.path().join("report.json"),
            _dir: dir,
        }
    }

    /// The name the leftovers of this test carry in `REAPKIT_TEST`.
    pub fn test_name(&self) -> &str {
        &self.test
    }

    /// `sleep 3600` carrying this run's leftover markers, owned by `owner` (an [`reapkit::OwnerId`];
    /// [`crate::dead_owner`] for a leftover, a live process for a concurrent run).
    pub fn marked_sleep(&self, owner: &str) -> Command {
        let mut cmd = unmarked_sleep();
        self.mark(&mut cmd, owner);
        cmd
    }

    /// Gives `cmd` this run's markers (and no other `REAPKIT_` variable).
    pub fn mark(&self, cmd: &mut Command, owner: &str) {
        clean_env(cmd);
        cmd.env("REAPKIT_RUN_ID", &self.run_id).env("REAPKIT_OWNER", owner).env("REAPKIT_TEST", &self.test);
    }

    /// A valid ledger record of this run naming `process` (a `sleep 3600`), owned by `owner`.
    pub fn record_of(&self, guard: &str, owner: &str, process: ProcId) -> Record {
        Record {
            version: reapkit::ledger::RECORD_VERSION,
            guard: guard.to_owned(),
            run_id: self.run_id.clone(),
            owner: owner.parse().expect("an owner id"),
            owner_host: reapkit::ownership::hostname(),
            test: self.test.clone(),
            created: reapkit::ledger::now_rfc3339(),
            resource: Resource::Process {
                process,
                pgid: process.pid,
                command: vec!["sleep".into(), "3600".into()],
                cwd: None,
                contained: None,
            },
            supervisor: None,
            reaped: None,
        }
    }

    /// Writes the record of `process` into the ledger directory; returns its path.
    pub fn record(&self, guard: &str, owner: &str, process: ProcId) -> PathBuf {
        let record = self.record_of(guard, owner, process);
        Entry::write(&self.ledger, &record).expect("the record is written").path().to_path_buf()
    }

    /// The options of a sweep scoped to this test: run id, ledger, report, a short grace.
    pub fn scope_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["--grace", "200ms", "--run-id"].map(String::from).into();
        args.push(self.run_id.clone());
        args.extend(["--ledger-dir".into(), path_str(&self.ledger), "--report".into(), path_str(&self.report)]);
        args
    }

    /// `reapkit reap` scoped to this test, with `extra` options (no output or Docker option
    /// added: `--json` and `--no-docker` are the caller's to give), in a [`clean_env`].
    pub fn reap_cmd(&self, extra: &[&str]) -> Command {
        let mut cmd = reapkit_cli();
        clean_env(&mut cmd);
        cmd.arg("reap").args(self.scope_args()).args(extra);
        cmd
    }

    /// `leaky-owner` (as `$0`) run by `sh -c script` as the second process of a new PID namespace
    /// (`unshare --pid --fork --mount-proc --kill-child`), a test of this sandbox's run with its
    /// ledger and no watchdog.
    pub fn in_pid_namespace(&self, script: &str) -> Command {
        let mut cmd = Command::new("unshare");
        clean_env(&mut cmd);
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", script])
            .arg(leaky_owner())
            .env("REAPKIT_LEDGER_DIR", &self.ledger)
            .env("REAPKIT_RUN_ID", &self.run_id)
            .env("REAPKIT_WATCHDOG", "off")
            .env("NEXTEST_TEST_NAME", &self.test);
        cmd
    }

    /// Runs `reapkit reap --json --no-docker` scoped to this test, with `extra` options.
    pub fn reap(&self, extra: &[&str]) -> Swept {
        Swept::run(self.reap_cmd(&[&["--json", "--no-docker"], extra].concat()))
    }

    /// Runs `reapkit reap --json` scoped to this test, Docker included, with `extra` options.
    pub fn reap_json(&self, extra: &[&str]) -> Swept {
        Swept::run(self.reap_cmd(&[&["--json"], extra].concat()))
    }
}

/// The outcome of one run (a `reapkit`, or a shell around one): exit code, output, how long it
/// took and, for `--json`, the one JSON object it printed.
pub struct Swept {
    /// The pid it ran as.
    pub pid: u32,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
    /// `None` for a run printing prose ([`Swept::run_text`] without [`Swept::parsed`]).
    json: Option<Value>,
}

impl Swept {
    /// Runs `cmd` (a `reapkit` with `--json`) to its end; its stdout must be one JSON object.
    pub fn run(cmd: Command) -> Swept {
        Swept::run_text(cmd).parsed()
    }

    /// Runs `cmd` (a `reapkit` printing prose) to its end, stdin closed; panics if it was
    /// killed by a signal.
    pub fn run_text(mut cmd: Command) -> Swept {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let started = Instant::now();
        let child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("reapkit runs");
        let pid = child.id();
        let out = child.wait_with_output().expect("reapkit ends");
        let took = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code().unwrap_or_else(|| panic!("{program} was killed: {:?}\n{stderr}", out.status));
        Swept { pid, code, stdout, stderr, took, json: None }
    }

    /// The same outcome, its stdout parsed as the one JSON object `--json` prints.
    pub fn parsed(self) -> Swept {
        let stdout = self.stdout.clone();
        self.parsed_from(&stdout)
    }

    /// The same outcome, `json` (the part of its stdout that a wrapper around `reapkit --json`
    /// passed through) parsed as the one JSON object `--json` prints.
    pub fn parsed_from(mut self, json: &str) -> Swept {
        match serde_json::from_str(json) {
            Ok(value) => self.json = Some(value),
            Err(e) => panic!("reapkit's stdout is not one JSON object ({e}):\n{self}"),
        }
        self
    }

    /// The parsed JSON object; panics for a run that was not parsed.
    fn json(&self) -> &Value {
        self.json.as_ref().unwrap_or_else(|| panic!("this run's output was not parsed as JSON:\n{self}"))
    }

    pub fn leaks(&self) -> &[Value] {
        self.json()["leaks"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The pids of the leaks, sorted.
    pub fn leak_pids(&self) -> Vec<i64> {
        let mut pids: Vec<i64> = self.leaks().iter().filter_map(|l| l["pid"].as_i64()).collect();
        pids.sort_unstable();
        pids
    }

    /// The leak that names `p`'s pid; panics if none does.
    pub fn leak_of(&self, p: &Spawned) -> &Value {
        self.leaks()
            .iter()
            .find(|l| l["pid"].as_i64() == Some(i64::from(p.id.pid)))
            .unwrap_or_else(|| panic!("no leak names pid {}:\n{self}", p.id.pid))
    }

    /// What the sweep could not check, one line each.
    pub fn unchecked(&self) -> Vec<&str> {
        self.json()["unchecked"].as_array().map_or_else(Vec::new, |a| a.iter().filter_map(Value::as_str).collect())
    }

    /// The one `unchecked` line that contains `needle`.
    pub fn unchecked_about(&self, needle: &str) -> &str {
        let found: Vec<&str> = self.unchecked().into_iter().filter(|l| l.contains(needle)).collect();
        assert_eq!(found.len(), 1, "exactly one `unchecked` line names {needle}:\n{self}");
        found[0]
    }

    /// The exit code is `code`, and so is the JSON's `exit_code` when the output was parsed.
    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.code, code, "reapkit's exit code:\n{self}");
        if let Some(json) = &self.json {
            assert_eq!(json["exit_code"], code, "the JSON's exit_code:\n{self}");
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
pub struct Spawned {
    child: Child,
    /// Its pid and start time, taken while it was our unreaped child.
    pub id: ProcId,
}

impl Spawned {
    /// Starts `cmd` with stdin, stdout and stderr on `/dev/null`.
    pub fn start(mut cmd: Command) -> Spawned {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("it starts");
        let id = ProcId::of(child.id() as i32).expect("our unreaped child is in /proc");
        Spawned { child, id }
    }

    /// The same process (pid and start time) is still alive and not a zombie.
    pub fn assert_survived(&mut self, what: &str) {
        assert!(self.id.is_alive(), "{what} (pid {}) is gone or its pid was recycled", self.id.pid);
        assert!(!is_zombie(self.id.pid), "{what} (pid {}) was killed: it is a zombie", self.id.pid);
        let status = self.child.try_wait().expect("try_wait on our own child");
        assert!(status.is_none(), "{what} (pid {}) ended: {status:?}", self.id.pid);
    }

    /// It was ended by a signal (the sweep's SIGTERM or SIGKILL).
    pub fn assert_reaped(&mut self, what: &str) {
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
/// GitHub annotations switch (they would mix into the JSON on stdout) and `DOCKER_HOST` (a
/// test that wants one sets it after this).
pub fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REAPKIT_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("GITHUB_ACTIONS").env_remove("DOCKER_HOST");
}

/// `sleep 3600` without any reapkit marker: the bystander `pkill -f sleep` would kill.
pub fn unmarked_sleep() -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg("3600");
    clean_env(&mut cmd);
    cmd
}

/// `<prefix>-<our pid>-<nanoseconds>`: a name no other test of this or a concurrent run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("temporary paths are UTF-8").to_owned()
}

/// Where `program` is on `PATH`, if it is.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// Panics unless this test runs as root (the suite does), which it needs to act as another user.
pub fn assert_root() {
    // SAFETY: getuid has no preconditions and cannot fail.
    assert_eq!(reapkit::procfs::my_uid(), 0, "this test runs as root (the suite does), to act as another user");
}

/// A test binary of this suite that holds guards (`src/bin/leaky-owner.rs`).
pub fn leaky_owner() -> PathBuf {
    Path::new(reapkit_cli().get_program()).with_file_name("leaky-owner")
}

/// A process started with piped stdin and stdout, ended (with its process group's help where
/// asked) when dropped: for commands that print a `ready` line and wait on their stdin.
pub struct Piped {
    pub child: Child,
    stdin: Option<ChildStdin>,
    /// The words of its `ready` line after `ready`.
    pub ready: Vec<String>,
}

impl Piped {
    /// Starts `cmd` and reads its first line that starts with `ready `, split in words. This
    /// process becomes a subreaper: what is orphaned below it comes here, to be reaped on drop.
    pub fn start(mut cmd: Command) -> Piped {
        reapkit::ownership::become_subreaper();
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("starts");
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).expect("reads");
            assert!(n > 0, "it ended before saying it was ready");
            if line.starts_with("ready ") {
                break;
            }
        }
        let ready = line.split_whitespace().skip(1).map(str::to_owned).collect();
        // Its later output goes nowhere; a thread keeps the pipe drained.
        std::thread::spawn(move || drop(std::io::copy(&mut out, &mut std::io::sink())));
        Piped { child, stdin, ready }
    }

    /// Closes its stdin: the leaky owner then ends (or, with `--forget-on-eof`, dies holding
    /// its guards).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        // Ours, by pid: `unshare --kill-child` takes its namespace along. Its processes are
        // orphaned to us (the subreaper) as they die: waited for and reaped, so that nothing
        // of this test is still exiting when it ends.
        let below = reapkit::procfs::descendants(self.child.id() as i32);
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !below.iter().all(exited) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for id in below.iter().filter(|id| is_zombie(id.pid)) {
            let _ =
                nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(id.pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
    }
}

/// The live processes carrying `REAPKIT_OWNER=<owner>`, as this (host) namespace sees them.
pub fn owned_by(owner: &str) -> Vec<ProcId> {
    MarkerScan::new().find(&format!("REAPKIT_OWNER={owner}"))
}
