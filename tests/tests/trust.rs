//! Trust: reapkit never touches what it cannot prove it owns, never hangs, never loses the
//! evidence. One test per hole found by trying the sweep as an adversary would, each driven
//! through the real binaries and real namespaces from outside, with a decoy that must survive
//! wherever a kill path is involved.
//!
//! Isolation as in `cli_safety`: every sweep is scoped to a run id and ledger of its own; what
//! a test starts is ended by pid when it ends.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reapkit::ledger::{Entry, Record, Resource};
use reapkit::procfs::Stat;
use reapkit::{OwnerId, ProcId};
use reapkit_tests::sweep_sandbox::{clean_env, leaky_owner, owned_by, unmarked_sleep, Piped, Sandbox, Spawned, Swept};
use reapkit_tests::{dead_owner, exited, live_owner, reapkit_cli, wait_until};

#[test]
fn a_host_sweep_leaves_a_live_test_in_another_pid_namespace_alone_and_reaps_it_once_its_owner_is_dead() {
    let sb = Sandbox::new("trust", "pid_namespace");
    // The owner is not the namespace's init (whose death would end the namespace): `sh` is.
    let cmd = sb.in_pid_namespace(r#""$0" --sleep 1931 --forget-on-eof; exec sleep 3600"#);
    let mut ns = Piped::start(cmd);
    let owner: OwnerId = ns.ready[0].parse().expect("an owner id");
    let mine = live_owner();
    assert_ne!(owner.pidns, mine.pidns, "precondition: the owner lives in a PID namespace of its own");
    let guarded =
        wait_until("the guarded sleep is visible from the host", || owned_by(&owner.to_string()).first().copied());
    let owner_here = Stat::read(guarded.pid).map(|s| s.ppid).expect("the guarded sleep's parent is its owner");
    let owner_here = ProcId::of(owner_here).expect("the owner, seen from the host");
    let record =
        std::fs::read_dir(&sb.ledger).expect("ledger").next().expect("the guard's record").expect("entry").path();

    // Its owner is alive, in a namespace the host sees: a host sweep touches nothing.
    let swept = sb.reap(&[]);
    swept.assert_code(0);
    assert!(swept.leaks().is_empty() && swept.unchecked().is_empty(), "{swept}");
    assert!(!exited(&guarded), "the live guard's sleep survives a host sweep:\n{swept}");
    assert!(record.exists(), "the live guard's record is kept:\n{swept}");

    // Now the owner dies holding its guard: its leftover is reaped from the host.
    ns.close_stdin();
    wait_until("the owner has died", || exited(&owner_here).then_some(()));
    let swept = sb.reap(&[]);
    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(guarded.pid)], "{swept}");
    let leak = &swept.leaks()[0];
    assert_eq!(leak["action"], "killed", "{swept}");
    assert_eq!(leak["test"], sb.test_name(), "{swept}");
    assert_eq!(leak["owner"], owner.to_string(), "the owner as it was: its own pid, namespace and boot:\n{swept}");
    wait_until("the leftover has ended", || exited(&guarded).then_some(()));
    assert!(!record.exists(), "its record is cleared once it is gone:\n{swept}");
}

#[test]
fn a_sweep_that_cannot_see_the_owners_pid_namespace_says_unchecked_never_dead() {
    let sb = Sandbox::new("trust", "unseen_namespace");
    // A leftover of the host, with its record; its owner is a host process, dead or alive.
    let mut alive = Spawned::start(sb.marked_sleep(&live_owner().to_string()));
    sb.record("g-alive", &live_owner().to_string(), alive.id);
    // From inside a new PID namespace, neither owner can be seen: nothing is provably dead.
    let reap = sb.reap_cmd(&["--json", "--no-docker"]);
    let mut cmd = Command::new("unshare");
    clean_env(&mut cmd);
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"]).arg(reap.get_program()).args(reap.get_args());
    let swept = Swept::run(cmd);

    swept.assert_code(2);
    assert!(swept.leaks().is_empty(), "{swept}");
    let line = swept.unchecked_about("g-alive.json");
    assert!(line.contains("PID namespace") && line.contains("cannot see"), "{line}");
    alive.assert_survived("a host process whose owner the sweep cannot see");
}

#[test]
fn a_supervisor_never_touches_another_jobs_processes_that_share_its_run_id() {
    let sb = Sandbox::new("trust", "shared_run_id");
    // Job A: a supervised test process with guards and a watchdog, alive, under run id R.
    let mut job_a = reapkit_cli();
    clean_env(&mut job_a);
    job_a
        .args(["run", "--no-docker", "--run-id", &sb.run_id, "--"])
        .arg(leaky_owner())
        .arg("--no-container")
        .env("REAPKIT_LEDGER_DIR", &sb.ledger)
        .env("NEXTEST_TEST_NAME", sb.test_name());
    let mut a = Piped::start(job_a);
    let owner = a.ready[0].clone();
    // Its long-lived processes: two fixture trees (one escaped) and the watchdog. The escape's
    // intermediate (`--daemonize`) exits by design, so it is not one of them: it is told by its
    // parent, the `--escape` fixture, not by its command line, which is its parent's until it
    // has exec'd.
    let tree = wait_until("job A's guarded trees and watchdog are up", || {
        let found = owned_by(&owner);
        let escaping: Vec<i32> =
            found.iter().filter(|id| reapkit::procfs::cmdline(id.pid).contains("--escape")).map(|id| id.pid).collect();
        let parent = |id: &ProcId| reapkit::procfs::Stat::read(id.pid).map(|s| s.ppid).unwrap_or_default();
        let found: Vec<ProcId> = found.into_iter().filter(|id| !escaping.contains(&parent(id))).collect();
        (found.len() == 6).then_some(found)
    });
    let a_test: OwnerId = owner.parse().expect("an owner id");

    // Job B reuses the run id; its own command leaves an orphan behind.
    let mut job_b = reapkit_cli();
    clean_env(&mut job_b);
    job_b
        .args(["run", "--no-docker", "--grace", "200ms", "--run-id", &sb.run_id, "--ledger-dir"])
        .arg(&sb.ledger)
        .args(["--", "sh", "-c", "sleep 3600 & echo ready $!"]);
    let b = Swept::run_text(job_b);

    assert_eq!(b.code, 1, "job B's own orphan is its leak:\n{b}");
    let orphan: i32 = b.stdout.trim().strip_prefix("ready ").and_then(|p| p.parse().ok()).expect("the orphan's pid");
    assert!(ProcId::of(orphan).is_none_or(|p| exited(&p)), "job B's orphan is reaped:\n{b}");
    assert!(b.stderr.contains("run-id collision"), "job A's processes are reported as a collision:\n{b}");
    for id in &tree {
        assert!(!exited(id), "job A's pid {} was touched by job B:\n{b}", id.pid);
    }
    assert!(a_test.process.is_alive(), "job A's test process lives");
    a.close_stdin();
    assert!(a.child.wait().expect("job A ends").success(), "job A ends clean: nothing of it was lost");
}

/// A daemon of our own making, with no marker: its own session, two children, waiting. Ended
/// with its children when dropped: they first (by pid; the shell reaps them and ends), then the
/// shell (our child).
struct Daemon {
    shell: Spawned,
    children: Vec<ProcId>,
}

impl Daemon {
    fn start() -> Daemon {
        let mut cmd = Command::new("setsid");
        cmd.args(["sh", "-c", "sleep 3600 & sleep 3600 & wait"]);
        clean_env(&mut cmd);
        let shell = Spawned::start(cmd);
        let children = wait_until("the daemon's two children are up", || {
            let c = reapkit::procfs::descendants(shell.id.pid);
            (c.len() == 2).then_some(c)
        });
        Daemon { shell, children }
    }

    fn assert_survived(&mut self, what: &str) {
        self.shell.assert_survived(what);
        for c in &self.children {
            assert!(!exited(c), "{what}: its child {} was killed", c.pid);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for c in self.children.iter().filter(|c| c.is_alive()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.pid), nix::sys::signal::SIGKILL);
        }
    }
}

#[test]
fn a_record_naming_a_live_innocent_daemon_with_the_right_start_time_kills_nothing() {
    let sb = Sandbox::new("trust", "record_names_a_daemon");
    let mut daemon = Daemon::start();
    let record = sb.record("g-daemon", &dead_owner(), daemon.shell.id);

    let dry = sb.reap(&["--dry-run"]);
    assert!(dry.leaks().is_empty(), "a record alone lists nothing:\n{dry}");
    let swept = sb.reap(&[]);

    swept.assert_code(2);
    assert!(swept.leaks().is_empty(), "{swept}");
    let line = swept.unchecked_about("g-daemon.json");
    assert!(line.contains("proves nothing") && line.contains("REAPKIT_GUARD=g-daemon"), "{line}");
    daemon.assert_survived("the daemon a record names");
    assert!(record.exists(), "the record is kept as the problem to look at");
}

/// A record of `process` whose owner is `owner_host`'s process on another boot.
fn other_boot_record(sb: &Sandbox, guard: &str, process: ProcId, owner_host: &str) -> PathBuf {
    let mut record: Record = sb.record_of(guard, &dead_owner(), process);
    record.owner.boot = "00000000-0000-4000-8000-000000000000".into();
    record.owner_host = owner_host.to_owned();
    Entry::write(&sb.ledger, &record).expect("written").path().to_path_buf()
}

#[test]
fn a_record_of_another_boot_is_stale_evidence_never_matched_to_a_live_pid() {
    let sb = Sandbox::new("trust", "other_boot");
    let mut daemon = Daemon::start();
    // Written by this host before a reboot: the process it named is gone with that boot.
    let earlier = other_boot_record(&sb, "g-earlier-boot", daemon.shell.id, &reapkit::ownership::hostname());

    let swept = sb.reap(&[]);

    swept.assert_code(1);
    let leak = &swept.leaks()[0];
    assert_eq!(leak["action"], "already-gone", "{swept}");
    assert_eq!(leak["health"], "gone", "{swept}");
    assert!(leak["detail"].as_str().is_some_and(|d| d.contains("earlier boot")), "{swept}");
    daemon.assert_survived("the live process that has the pid and start time an earlier boot's record names");
    assert!(!earlier.exists(), "reported once, then cleared");

    // Written on another host sharing the directory: its owner cannot be checked from here.
    let elsewhere = other_boot_record(&sb, "g-other-host", daemon.shell.id, "another-host");
    let swept = sb.reap(&[]);
    swept.assert_code(2);
    assert!(swept.unchecked_about("g-other-host.json").contains("another-host"), "{swept}");
    daemon.assert_survived("the live process named by another host's record");
    assert!(elsewhere.exists(), "kept: it may be that host's live guard");
}

/// Runs the watchdog's sweep directly: any binary of this suite re-executed with
/// `REAPKIT_WATCHDOG_OWNER` is a watchdog, which reaps at once when its owner is already dead.
fn run_watchdog(sb: &Sandbox, owner: &str) -> std::process::Output {
    let mut cmd = Command::new(leaky_owner());
    clean_env(&mut cmd);
    cmd.env("REAPKIT_WATCHDOG_OWNER", owner)
        .env("REAPKIT_LEDGER_DIR", &sb.ledger)
        .env("REAPKIT_WATCHDOG_GRACE", "200ms")
        .stdin(Stdio::null());
    let started = Instant::now();
    let out = cmd.output().expect("the watchdog runs");
    assert!(started.elapsed() < Duration::from_secs(10), "the watchdog finished in {:?}", started.elapsed());
    out
}

#[test]
fn hostile_ids_never_name_a_file_outside_the_ledger_nor_reach_the_terminal_raw() {
    let sb = Sandbox::new("trust", "hostile_ids");
    let owner = dead_owner();
    let hostile = |key: &str, value: &str| {
        let mut cmd = sb.marked_sleep(&owner);
        cmd.env(key, value);
        Spawned::start(cmd)
    };
    let mut traversal = hostile("REAPKIT_GUARD", "/../../reapkit-trust-escaped");
    let mut bad_test = {
        let mut cmd = sb.marked_sleep(&owner);
        cmd.env("REAPKIT_TEST", "t\n::add-mask::secret\x1b[2J");
        Spawned::start(cmd)
    };
    let mut old_owner = hostile("REAPKIT_OWNER", "4242:42");
    // A real leftover whose command line tries to forge workflow commands.
    let mut forger = {
        let mut cmd = sb.marked_sleep(&owner);
        cmd.arg0("sleep\n::error::forged\n::stop-commands::x");
        Spawned::start(cmd)
    };

    // The watchdog of that owner: it takes the forger and writes its evidence inside the ledger.
    let out = run_watchdog(&sb, &owner);
    assert!(out.status.code().is_some(), "{out:?}");
    let outside = sb.ledger.parent().expect("sandbox").parent().expect("tmp").join("reapkit-trust-escaped");
    assert!(!outside.exists() && !Path::new("/reapkit-trust-escaped").exists(), "nothing written outside the ledger");
    forger.assert_reaped("the forger, by its owner's watchdog");
    let evidence: Vec<String> = std::fs::read_dir(&sb.ledger)
        .expect("ledger")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(evidence.len(), 1, "one evidence record, for the forger: {evidence:?}");
    for p in [&mut traversal, &mut bad_test, &mut old_owner] {
        p.assert_survived("a process with a malformed marker, after its claimed owner's watchdog");
    }

    // The CI sweep under GitHub Actions: nothing it prints can start a workflow command.
    let mut cmd = sb.reap_cmd(&["--no-docker"]);
    cmd.env("GITHUB_ACTIONS", "true");
    let swept = Swept::run_text(cmd);
    assert_eq!(swept.code, 2, "malformed markers cannot be checked:\n{swept}");
    for line in swept.stdout.lines().chain(swept.stderr.lines()) {
        let trimmed = line.trim_start();
        assert!(
            !trimmed.starts_with("::") || trimmed.starts_with("::error title=reapkit"),
            "a forged workflow command: {line:?}\n{swept}"
        );
        assert!(!line.contains('\x1b'), "a raw escape sequence: {line:?}");
    }
    for p in [&traversal, &bad_test, &old_owner] {
        assert!(swept.stdout.contains(&format!("pid {}", p.id.pid)), "pid {} is reported:\n{swept}", p.id.pid);
    }
    assert!(swept.stdout.contains("malformed"), "{swept}");
    for p in [&mut traversal, &mut bad_test, &mut old_owner] {
        p.assert_survived("a process with a malformed marker, after the CI sweep");
    }
}

#[test]
fn fifo_huge_symlinked_and_truncated_records_never_hang_a_sweep_or_the_watchdog() {
    let sb = Sandbox::new("trust", "hostile_records");
    let owner = dead_owner();
    let fifo = sb.ledger.join("x.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let huge = sb.ledger.join("huge.json");
    std::fs::File::create(&huge).and_then(|f| f.set_len(512 << 20)).expect("a sparse 512 MiB record");
    let link = sb.ledger.join("link.json");
    std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
    let mut leftover = Spawned::start(sb.marked_sleep(&owner));

    for listing in [sb.reap(&["--dry-run"]), {
        let mut ps = reapkit_cli();
        clean_env(&mut ps);
        ps.args(["ps", "--json", "--no-docker", "--ledger-dir"]).arg(&sb.ledger);
        Swept::run(ps)
    }] {
        assert!(listing.took < Duration::from_secs(5), "{listing}");
        assert_eq!(listing.code, 2, "{listing}");
        assert!(listing.unchecked_about("x.json").contains("a FIFO"), "{listing}");
        assert!(listing.unchecked_about("huge.json").contains("bytes long"), "{listing}");
        assert!(listing.unchecked_about("link.json").contains("symlink"), "{listing}");
    }
    leftover.assert_survived("a leftover, under --dry-run and ps");

    // The watchdog, whose ledger holds them, still reaps its owner's leftover.
    let out = run_watchdog(&sb, &owner);
    assert!(out.status.code().is_some(), "{out:?}");
    leftover.assert_reaped("the leftover, by its owner's watchdog");
    for path in [&fifo, &huge, &link] {
        assert!(path.exists(), "{} is left for a person to look at", path.display());
    }
}

#[test]
fn silent_engines_are_asked_at_once_under_one_deadline_and_docker_host_decides_which() {
    let sb = Sandbox::new("trust", "silent_engines");
    // Engines that accept a connection (the kernel does, from the backlog) and never answer.
    let listeners: Vec<std::net::TcpListener> =
        (0..6).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let engines: Vec<String> =
        listeners.iter().map(|l| format!("tcp://{}", l.local_addr().expect("address"))).collect();
    for (i, engine) in engines.iter().enumerate() {
        let mut record = sb.record_of(&format!("g-container-{i}"), &dead_owner(), ProcId { pid: 1, start_time: 1 });
        record.resource = Resource::Container {
            id: format!("c{i}"),
            image: "x".into(),
            docker_host: engine.clone(),
            networks: vec![],
        };
        Entry::write(&sb.ledger, &record).expect("written");
    }
    let timeout = Duration::from_secs(2);

    let swept = sb.reap_json(&["--docker-timeout", "2s"]);
    swept.assert_code(2);
    assert!(swept.took < timeout * 2, "six silent engines cost one deadline, not six: {:?}\n{swept}", swept.took);
    for engine in &engines {
        swept.unchecked_about(engine);
    }

    let swept = sb.reap_json(&["--docker-host", "tcp://127.0.0.1:1"]);
    swept.assert_code(2);
    assert!(swept.took < timeout, "the engines of the records are not tried: {:?}\n{swept}", swept.took);
    assert_eq!(swept.unchecked().len(), 1, "only the engine asked for:\n{swept}");
    swept.unchecked_about("127.0.0.1:1");

    let skipped = sb.reap(&[]);
    skipped.assert_code(0);
    assert!(skipped.took < timeout, "{skipped}");
    drop(listeners);
}

#[test]
fn a_broken_stdout_never_panics_and_never_loses_the_report() {
    let sb = Sandbox::new("trust", "broken_stdout");
    let owner = dead_owner();
    let mut leftovers: Vec<Spawned> = (0..300).map(|_| Spawned::start(sb.marked_sleep(&owner))).collect();

    // `reapkit reap --json --report F | head -c 50`: the reader goes away after 50 bytes.
    let mut reap = sb.reap_cmd(&["--json", "--no-docker"]);
    let mut child = reap.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("runs");
    let mut head = [0u8; 50];
    child.stdout.take().expect("piped").read_exact(&mut head).expect("50 bytes");
    let out = child.wait_with_output().expect("it ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "leaks, not a panic:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sb.report).expect("the report file")).expect("one JSON object");
    let leaks = report["leaks"].as_array().expect("leaks");
    assert_eq!(leaks.len(), 300, "every leftover is in the report");
    assert!(leaks.iter().all(|l| l["action"] == "killed"), "{report}");
    for l in &mut leftovers {
        l.assert_reaped("a leftover, its reaper's stdout broken");
    }

    // Closed before the first line of the evidence table: the sweep still happens.
    let mut left = Spawned::start(sb.marked_sleep(&owner));
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let status = sb.reap_cmd(&["--no-docker"]).stdout(writer).stderr(Stdio::null()).status().expect("runs");
    assert_eq!(status.code(), Some(1));
    left.assert_reaped("a leftover, its reaper's stdout closed from the start");
}

#[test]
fn a_low_descriptor_limit_is_named_with_how_to_raise_it() {
    let sb = Sandbox::new("trust", "fd_limit");
    let under_limit = |limit: u32, cmd: &Command| {
        let mut sh = Command::new("sh");
        clean_env(&mut sh);
        sh.arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(cmd.get_program())
            .args(cmd.get_args());
        sh.env("REAPKIT_LEDGER_DIR", &sb.ledger).env("REAPKIT_WATCHDOG", "off");
        Swept::run_text(sh)
    };
    let named = |out: &Swept| {
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(text.contains("descriptor limit") && text.contains("ulimit -n"), "the limit is named:\n{out}");
        assert!(!text.contains("permissions") && !text.contains("program path"), "no advice that misleads:\n{out}");
    };
    // A guard spawned in a test process at its limit.
    let mut guard = Command::new(leaky_owner());
    guard.args(["--sleep", "1", "--forget"]);
    let out = under_limit(6, &guard);
    assert_eq!(out.code, 3, "{out}");
    named(&out);
    // `reapkit run` whose command cannot start, and a sweep that cannot see the machine.
    let mut run = reapkit_cli();
    run.args(["run", "--no-docker", "--", "true"]);
    named(&under_limit(5, &run));
    let reap = sb.reap_cmd(&["--no-docker"]);
    let out = under_limit(4, &reap);
    assert_eq!(out.code, 2, "a sweep that saw part of the machine is unchecked, never clean:\n{out}");
    named(&out);
}

#[test]
fn an_unmarked_decoy_survives_every_sweep_of_this_suite() {
    // The bystander `pkill -f sleep` would kill, next to every kind of sweep above.
    let sb = Sandbox::new("trust", "decoy");
    let mut decoy = Spawned::start(unmarked_sleep());
    for args in [&[][..], &["--dry-run"], &["--older-than", "0s"]] {
        let swept = sb.reap(args);
        swept.assert_code(0);
    }
    decoy.assert_survived("an unmarked sleep");
}

#[test]
fn hostile_container_labels_are_reported_and_the_container_is_left_alone() {
    use reapkit_tests::docker::{docker, engine, IMAGE};
    if !engine() {
        return;
    }
    let sb = Sandbox::new("trust", "hostile_labels");
    // Made by hand, not by reapkit: a test label that tries to start a line of its own.
    let id = docker(&[
        "create",
        "--network",
        "none",
        "--label",
        &format!("reapkit.run-id={}", sb.run_id),
        "--label",
        &format!("reapkit.owner={}", dead_owner()),
        "--label",
        "reapkit.test=t\n::error::forged",
        IMAGE,
        "sleep",
        "1",
    ]);
    assert_eq!(id.len(), 64, "docker create printed an id: {id:?}");
    let swept = sb.reap_json(&[]);
    let still_there = docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")]) == id;
    docker(&["rm", "-f", &id]);

    swept.assert_code(2);
    let line = swept.unchecked_about(&id);
    assert!(line.contains("malformed") && !line.contains('\n'), "{line}");
    assert!(swept.leaks().is_empty(), "{swept}");
    assert!(still_there, "a container whose labels reapkit never wrote is not removed:\n{swept}");
}
