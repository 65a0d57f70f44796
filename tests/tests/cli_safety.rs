//! What `reapkit reap` must never kill, driven through the real binary and checked from
//! outside: every decoy is looked up in `/proc` afterwards by pid *and* start time, and must
//! be the very same process, alive and not a zombie.
//!
//! Isolation: the suite runs in parallel and other tests leak on purpose, so every sweep here
//! is scoped to a run id of its own (`--run-id`), reads a ledger directory of its own
//! (`--ledger-dir`), and skips Docker. Everything a test starts is killed (by pid) and reaped
//! by a [`Spawned`] guard when it ends, whether it passed or not.

use std::ffi::OsStr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use reapkit::ledger::{Entry, Record, Resource};
use reapkit::ProcId;
use reapkit_tests::{dead_owner, is_zombie, reapkit_cli, wait_until};
use serde_json::Value;

/// One test's private world: its run id, ledger directory and report file.
struct Sandbox {
    name: &'static str,
    run_id: String,
    ledger: PathBuf,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sandbox {
    fn new(name: &'static str) -> Sandbox {
        let dir = tempfile::Builder::new().prefix("reapkit-cli-safety-").tempdir().expect("a temporary directory");
        let ledger = dir.path().join("ledger");
        std::fs::create_dir(&ledger).expect("the ledger directory");
        Sandbox {
            name,
            run_id: unique(&format!("cli-safety-{name}")),
            ledger,
            report: dir.path().join("report.json"),
            _dir: dir,
        }
    }

    /// The name the leftovers of this test carry in `REAPKIT_TEST`.
    fn test_name(&self) -> String {
        format!("cli_safety::{}", self.name)
    }

    /// `sleep 3600` carrying this run's leftover markers, owned by `owner` (`<pid>:<starttime>`).
    fn marked_sleep(&self, owner: &str) -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("3600");
        self.mark(&mut cmd, owner);
        cmd
    }

    /// Gives `cmd` this run's markers (and no other `REAPKIT_` variable).
    fn mark(&self, cmd: &mut Command, owner: &str) {
        without_reapkit_env(cmd);
        cmd.env("REAPKIT_RUN_ID", &self.run_id).env("REAPKIT_OWNER", owner).env("REAPKIT_TEST", self.test_name());
    }

    /// The arguments of a `reapkit reap --json` scoped to this test (run id, ledger, report),
    /// with a short grace and without Docker.
    fn reap_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["reap", "--json", "--no-docker", "--grace", "200ms"].map(String::from).into();
        args.extend(["--run-id".into(), self.run_id.clone()]);
        args.extend(["--ledger-dir".into(), path_str(&self.ledger)]);
        args.extend(["--report".into(), path_str(&self.report)]);
        args
    }

    /// Runs `reapkit reap` scoped to this test, with `extra` options.
    fn reap(&self, extra: &[&str]) -> Swept {
        let mut cmd = reapkit_cli();
        without_reapkit_env(&mut cmd);
        cmd.args(self.reap_args()).args(extra);
        Swept::run(cmd)
    }

    /// Writes a ledger record of this run naming `process`, owned by `owner`.
    fn record(&self, guard: &str, owner: &str, process: ProcId) -> PathBuf {
        let record = Record {
            version: 1,
            guard: guard.to_owned(),
            run_id: self.run_id.clone(),
            owner: owner.to_owned(),
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
        };
        Entry::write(&self.ledger, &record).expect("the record is written").path().to_path_buf()
    }
}

/// The outcome of one `reapkit` run: exit code, the parsed JSON object, and the raw output.
struct Swept {
    code: i32,
    json: Value,
    stdout: String,
    stderr: String,
}

impl Swept {
    fn run(mut cmd: Command) -> Swept {
        let out = cmd.stdin(Stdio::null()).output().expect("reapkit runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code().unwrap_or_else(|| panic!("reapkit was killed: {:?}\n{stderr}", out.status));
        let json = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("reapkit's stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{stderr}"));
        Swept { code, json, stdout, stderr }
    }

    fn leaks(&self) -> &[Value] {
        self.json["leaks"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The pids of the leaks, sorted.
    fn leak_pids(&self) -> Vec<i64> {
        let mut pids: Vec<i64> = self.leaks().iter().filter_map(|l| l["pid"].as_i64()).collect();
        pids.sort_unstable();
        pids
    }

    fn leak_of(&self, p: &Spawned) -> &Value {
        self.leaks()
            .iter()
            .find(|l| l["pid"].as_i64() == Some(i64::from(p.id.pid)))
            .unwrap_or_else(|| panic!("no leak names pid {}:\n{}", p.id.pid, self))
    }

    fn assert_code(&self, code: i32) {
        assert_eq!(self.code, code, "reapkit's exit code:\n{self}");
        assert_eq!(self.json["exit_code"], code, "the JSON's exit_code:\n{self}");
    }
}

impl std::fmt::Display for Swept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr)
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

/// Removes every inherited `REAPKIT_` variable (nextest's `reapkit wrap` sets some), and the
/// GitHub annotations switch (they would mix into the JSON on stdout).
fn without_reapkit_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REAPKIT_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("GITHUB_ACTIONS");
}

/// `sleep 3600` without any reapkit marker: the bystander `pkill -f sleep` would kill.
fn unmarked_sleep() -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg("3600");
    without_reapkit_env(&mut cmd);
    cmd
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("temporary paths are UTF-8").to_owned()
}

/// This test process, alive: the owner of a concurrent run.
fn me() -> ProcId {
    ProcId::of(std::process::id() as i32).expect("our own /proc entry")
}

#[test]
fn a_leftover_is_reaped_and_the_same_command_without_a_marker_survives() {
    let sb = Sandbox::new("same_command_line");
    let mut decoy = Spawned::start(unmarked_sleep());
    let mut leftover = Spawned::start(sb.marked_sleep(&dead_owner()));

    let swept = sb.reap(&[]);

    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "only the marked leftover is a leak:\n{swept}");
    let leak = swept.leak_of(&leftover);
    assert_eq!(leak["kind"], "process", "{swept}");
    assert_eq!(leak["test"], sb.test_name().as_str(), "the leak names its test:\n{swept}");
    assert_eq!(leak["run_id"], sb.run_id.as_str(), "{swept}");
    assert_eq!(leak["found_by"], "marker", "{swept}");
    assert_eq!(leak["action"], "killed", "{swept}");
    leftover.assert_reaped("the marked leftover");
    decoy.assert_survived("the unmarked `sleep 3600` with the same command line");
}

#[test]
fn a_leftover_whose_owner_is_alive_belongs_to_a_concurrent_run_and_survives() {
    let sb = Sandbox::new("owner_alive");
    let mut concurrent = Spawned::start(sb.marked_sleep(&me().to_string()));

    let swept = sb.reap(&[]);

    swept.assert_code(0);
    assert!(swept.leaks().is_empty(), "a process whose owner lives is nobody's leak:\n{swept}");
    concurrent.assert_survived("the process of a concurrent run (its owner is alive)");

    let dry = sb.reap(&["--dry-run"]);
    dry.assert_code(0);
    concurrent.assert_survived("the process of a concurrent run, after --dry-run");
}

#[test]
fn an_owner_pid_recycled_by_another_process_counts_as_dead() {
    let sb = Sandbox::new("owner_pid_recycled");
    let alive = me();
    // Our own pid, alive, but with another start time: the owner's pid was recycled.
    let recycled = ProcId { start_time: alive.start_time + 1, ..alive };
    assert!(!recycled.is_alive() && ProcId::of(recycled.pid).is_some(), "the owner pid exists with another start time");
    let mut decoy = Spawned::start(unmarked_sleep());
    let mut leftover = Spawned::start(sb.marked_sleep(&recycled.to_string()));

    let swept = sb.reap(&[]);

    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "{swept}");
    assert_eq!(swept.leak_of(&leftover)["action"], "killed", "{swept}");
    assert_eq!(swept.leak_of(&leftover)["health"], "orphaned", "{swept}");
    leftover.assert_reaped("the leftover whose owner's pid was recycled");
    decoy.assert_survived("the unmarked decoy");
}

#[test]
fn a_record_naming_a_recycled_pid_does_not_kill_the_innocent_process_now_holding_it() {
    let sb = Sandbox::new("record_pid_recycled");
    let mut innocent = Spawned::start(unmarked_sleep());
    // The record's process had this pid, but started one tick earlier: it is not this one.
    let old = ProcId { start_time: innocent.id.start_time - 1, ..innocent.id };
    let record = sb.record("g-recycled", &dead_owner(), old);

    let swept = sb.reap(&[]);

    swept.assert_code(0);
    assert!(swept.leaks().is_empty(), "the record is stale, not a leak:\n{swept}");
    innocent.assert_survived("the innocent process that now holds the recorded pid");
    assert!(!record.exists(), "the stale record {} is cleared:\n{swept}", record.display());
}

/// `program` (which switches to `nobody` itself: `setpriv`, `perl`) carrying this run's
/// leftover markers with `owner`, started by root (this suite runs as root); returned once it
/// runs as nobody.
fn as_nobody(sb: &Sandbox, program: &str, args: &[&str], owner: &str) -> Spawned {
    // SAFETY: getuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::getuid() }, 0, "this test runs as root, to start a process of another user");
    let mut cmd = Command::new(program);
    cmd.args(args);
    sb.mark(&mut cmd, owner);
    let p = Spawned::start(cmd);
    wait_until("the process runs as nobody", || (real_uid(p.id.pid) == Some(65534)).then_some(()));
    p
}

/// The real uid of `pid`, from the `Uid:` line of its status (not the owner of its /proc files,
/// which is root for a process that is not dumpable).
fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

#[test]
fn another_users_process_with_a_leftover_marker_and_a_record_is_never_touched() {
    let sb = Sandbox::new("another_user");
    assert!(which("setpriv"), "setpriv (util-linux) is needed to start a process as nobody");
    let owner = dead_owner();
    let setpriv = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", "3600"];
    let mut theirs = as_nobody(&sb, "setpriv", &setpriv, &owner);
    wait_until("setpriv has exec'd sleep", || {
        std::fs::read_link(format!("/proc/{}/exe", theirs.id.pid)).ok().filter(|e| e.ends_with("sleep"))
    });
    sb.record("g-nobody", &owner, theirs.id);
    let mut leftover = Spawned::start(sb.marked_sleep(&owner));

    let swept = sb.reap(&[]);

    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "only our own user's leftover is a leak:\n{swept}");
    leftover.assert_reaped("our own leftover");
    theirs.assert_survived("nobody's process carrying our leftover marker and named by a record");
}

#[test]
fn another_users_process_that_is_not_dumpable_is_never_touched() {
    // A process that dropped to another user without exec (a server's worker, `su`-like
    // helpers) is not dumpable: its /proc files belong to root, though it runs as nobody.
    let sb = Sandbox::new("another_user_not_dumpable");
    assert!(which("perl"), "perl is needed to drop to another user without exec");
    let script = "use POSIX; POSIX::setgid(65534) or die; POSIX::setuid(65534) or die; sleep 3600";
    let mut theirs = as_nobody(&sb, "perl", &["-e", script], &dead_owner());
    let environ = std::fs::metadata(format!("/proc/{}/environ", theirs.id.pid)).expect("its environ");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&environ), 0, "precondition: its /proc files belong to root");

    let swept = sb.reap(&[]);

    theirs.assert_survived(&format!("nobody's non-dumpable process carrying our leftover marker; the sweep:\n{swept}"));
    swept.assert_code(0);
    assert!(swept.leaks().is_empty(), "another user's process is not ours to reap:\n{swept}");
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs `reapkit reap` (scoped to `sb`, with `extra`) from inside `sh -c`; with `owner`, the
/// shell carries this run's leftover markers. Checks that the shell outlived the sweep and ran
/// to its end; returns the sweep and the shell's pid.
fn reap_from_shell(sb: &Sandbox, owner: Option<&str>, extra: &[&str]) -> (Swept, u32) {
    let script = r#"out=$("$0" "$@"); code=$?; printf '%s\n' "$out"; echo "reap-exit=$code"; echo ancestor-alive"#;
    let mut cmd = Command::new("sh");
    match owner {
        Some(owner) => sb.mark(&mut cmd, owner),
        None => without_reapkit_env(&mut cmd),
    }
    let reapkit = reapkit_cli();
    cmd.arg("-c").arg(script).arg(reapkit.get_program()).args(sb.reap_args()).args(extra);
    let sh = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("sh starts");
    let sh_pid = sh.id();
    let out = sh.wait_with_output().expect("sh ends");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the shell that ran reapkit was killed: {:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.ends_with("ancestor-alive\n"), "the shell ran to its end:\n{stdout}\n{stderr}");
    let (json, rest) = stdout.split_once("\nreap-exit=").unwrap_or_else(|| panic!("no exit code:\n{stdout}"));
    let code = rest.lines().next().and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("exit code in {stdout}"));
    let json = serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    (Swept { code, json, stdout, stderr }, sh_pid)
}

#[test]
fn the_reapers_own_ancestors_are_never_reaped_even_when_they_carry_a_leftover_marker() {
    let sb = Sandbox::new("ancestors");
    let owner = dead_owner();
    let mut leftover = Spawned::start(sb.marked_sleep(&owner));

    let (swept, sh_pid) = reap_from_shell(&sb, Some(&owner), &[]);

    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "the shell (pid {sh_pid}) is not listed:\n{swept}");
    leftover.assert_reaped("the leftover of the same run");
}

#[test]
fn match_reaps_only_what_it_matches_spares_the_newest_and_never_the_reaper_or_its_ancestors() {
    let sb = Sandbox::new("match");
    let token = unique("rkmatch").replace('-', "x");
    let mut victims: Vec<Spawned> = Vec::new();
    for _ in 0..3 {
        // Distinct start times (10 ms clock ticks), so that "newest" is well defined.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let mut cmd = unmarked_sleep();
        cmd.arg0(format!("{token}-victim"));
        let next = Spawned::start(cmd);
        assert!(
            victims.last().is_none_or(|v| v.id.start_time < next.id.start_time),
            "precondition: start times differ"
        );
        victims.push(next);
    }
    let mut bystander = Spawned::start(unmarked_sleep());
    let pids = |v: &[Spawned]| -> Vec<i64> {
        let mut p: Vec<i64> = v.iter().map(|s| i64::from(s.id.pid)).collect();
        p.sort_unstable();
        p
    };
    // The pattern matches the victims, and also the command lines of the reaper
    // (`reapkit reap --match <token>`) and of the shell that runs it (`sh -c … --match <token>`).
    let pattern = format!("^{token}|--match {token}");

    let (dry, _) = reap_from_shell(&sb, None, &["--dry-run", "--match", &pattern]);
    dry.assert_code(1);
    assert_eq!(dry.leak_pids(), pids(&victims), "--dry-run lists every match, and only them:\n{dry}");
    for leak in dry.leaks() {
        assert_eq!(leak["found_by"], "match", "{dry}");
        assert_eq!(leak["action"], "would-reap", "{dry}");
    }
    for v in &mut victims {
        v.assert_survived("a match, under --dry-run");
    }

    let (kept, _) = reap_from_shell(&sb, None, &["--match", &pattern, "--keep-newest", "1"]);
    kept.assert_code(1);
    let newest = victims.pop().expect("three victims");
    assert_eq!(kept.leak_pids(), pids(&victims), "--keep-newest 1 spares the newest:\n{kept}");
    for v in &mut victims {
        assert_eq!(kept.leak_of(v)["action"], "killed", "{kept}");
        v.assert_reaped("an older match");
    }
    let mut newest = vec![newest];
    newest[0].assert_survived("the newest match, under --keep-newest 1");

    let (last, _) = reap_from_shell(&sb, None, &["--match", &pattern]);
    last.assert_code(1);
    assert_eq!(last.leak_pids(), pids(&newest), "{last}");
    newest[0].assert_reaped("the last match");

    // Nothing that matches is left but the reaper and its shell: they are never matched.
    let (clean, _) = reap_from_shell(&sb, None, &["--match", &pattern]);
    clean.assert_code(0);
    assert!(clean.leaks().is_empty(), "the reaper and its ancestors are never matched:\n{clean}");
    bystander.assert_survived("a process that does not match");
}

#[test]
fn ps_shows_a_live_leftover_as_orphaned_with_its_test_and_resources() {
    let sb = Sandbox::new("ps");
    let mut leftover = Spawned::start(sb.marked_sleep(&dead_owner()));
    let mut cmd = reapkit_cli();
    without_reapkit_env(&mut cmd);
    cmd.args(["ps", "--json", "--no-docker", "--ledger-dir"]).arg(OsStr::new(&sb.ledger));

    let listed = Swept::run(cmd);

    assert_eq!(listed.code, 0, "{listed}");
    let leak = listed.leak_of(&leftover);
    assert_eq!(leak["health"], "orphaned", "{listed}");
    assert_eq!(leak["test"], sb.test_name().as_str(), "{listed}");
    assert_eq!(leak["run_id"], sb.run_id.as_str(), "{listed}");
    assert_eq!(leak["action"], "listed", "{listed}");
    assert!(leak["rss_bytes"].as_u64().is_some_and(|b| b > 0), "RSS:\n{listed}");
    assert!(leak["fds"].as_u64().is_some_and(|n| n >= 3), "its stdin, stdout and stderr at least:\n{listed}");
    assert_eq!(leak["threads"], 1, "{listed}");
    assert!(leak["command"].as_str().is_some_and(|c| c == "sleep 3600"), "{listed}");
    leftover.assert_survived("the leftover, after `ps` (which only lists)");
}
