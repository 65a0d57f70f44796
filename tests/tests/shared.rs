//! Fixtures shared by a whole run: one start per run whatever runs the tests — threads of one
//! process (`cargo test`) or a process per test (nextest, under `reapkit wrap`) — and gone
//! within a second of the run's end, also when a test process or the runner is SIGKILLed.
//!
//! The run is a shell here (the runner: what `cargo`/nextest are to a real suite); its test
//! processes are `shared-user`s, each attaching from threads and holding its leases.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use reapkit::run_stats::{self, RunStats};
use reapkit::ProcId;
use reapkit_tests::docker::docker;
use reapkit_tests::{answer, keeper_tree, keepers_ended, reapkit_cli, token, wait_until};

fn shared_user() -> String {
    reapkit_tests::fixture_path().with_file_name("shared-user").to_string_lossy().into_owned()
}

/// A run: `sh -c script` with its own run id (its statistics are its own), stdout piped.
struct Run {
    sh: Child,
    out: BufReader<ChildStdout>,
    run_id: String,
}

impl Run {
    fn start(script: &str) -> Run {
        let run_id = format!("shared-{}", token());
        let mut sh = Command::new("sh")
            .args(["-c", script])
            .env("SHARED_USER", shared_user())
            .env("REAPKIT_RUN_ID", &run_id)
            .env("PATH", path_with_cli())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let out = BufReader::new(sh.stdout.take().expect("piped"));
        Run { sh, out, run_id }
    }

    /// Lines until `n` of them said `all attached`; every `attached` line, parsed.
    fn attached(&mut self, n: usize) -> Vec<Attached> {
        let mut attached = Vec::new();
        let mut done = 0;
        while done < n {
            let mut line = String::new();
            assert_ne!(
                self.out.read_line(&mut line).expect("the run's output"),
                0,
                "the run ended early: {attached:?}"
            );
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["attached", kind, here, keeper, what, port] => attached.push(Attached {
                    kind: kind.into(),
                    started_here: here == "true",
                    keeper: keeper.parse().expect("a pid"),
                    what: what.into(),
                    port: port.parse().ok(),
                }),
                ["all", "attached"] => done += 1,
                _ => panic!("the run said {line:?}"),
            }
        }
        attached
    }

    fn stats(&self) -> RunStats {
        RunStats::read(&run_stats::dir(), &self.run_id, None).expect("the run logged its events")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.sh.kill();
        let _ = self.sh.wait();
        run_stats::clear(&run_stats::dir(), &self.run_id);
    }
}

fn path_with_cli() -> String {
    let cli = reapkit_cli();
    let dir = std::path::Path::new(cli.get_program()).parent().expect("a directory").to_path_buf();
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

#[derive(Debug, Clone)]
struct Attached {
    kind: String,
    started_here: bool,
    keeper: i32,
    what: String,
    port: Option<u16>,
}

/// Every attach of `kind` saw the same fixture, and exactly one of them started it.
fn one_fixture(attached: &[Attached], kind: &str, n: usize) -> Attached {
    let of_kind: Vec<&Attached> = attached.iter().filter(|a| a.kind == kind).collect();
    assert_eq!(of_kind.len(), n, "{attached:#?}");
    let first = of_kind[0];
    assert!(of_kind.iter().all(|a| a.keeper == first.keeper && a.what == first.what), "one {kind}: {of_kind:#?}");
    assert_eq!(of_kind.iter().filter(|a| a.started_here).count(), 1, "started once: {of_kind:#?}");
    first.clone()
}

fn pid_of(what: &str) -> ProcId {
    ProcId::of(what.parse().expect("a pid")).expect("alive")
}

fn container_exists(id: &str) -> bool {
    !docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")]).trim().is_empty()
}

/// The children of `pid` that run `shared-user`.
fn users_of(pid: i32) -> Vec<i32> {
    reapkit::procfs::children(pid)
        .into_iter()
        .filter(|&c| reapkit::procfs::cmdline(c).contains("shared-user"))
        .collect()
}

#[test]
fn twenty_attaches_from_threads_and_processes_start_one_server_and_one_container_gone_within_a_second_of_the_runs_end()
{
    let name = format!("t{}", std::process::id());
    // Two test processes of ten threads each; the shell is the run (`cargo`, nextest).
    let user = format!("\"$SHARED_USER\" --container --threads 10 --name {name} <&3");
    let mut run = Run::start(&format!("exec 3<&0; {user} & {user} & wait"));
    let attached = run.attached(2);
    let server = one_fixture(&attached, "server", 20);
    let container = one_fixture(&attached, "container", 20);
    let server_pid = pid_of(&server.what);
    let keepers: Vec<ProcId> =
        [server.keeper, container.keeper].into_iter().map(|k| ProcId::of(k).expect("the keepers run")).collect();
    assert_eq!(answer(server.port.expect("a port")), format!("fixture-server {}", server_pid.pid));
    assert!(container_exists(&container.what));
    let stats = run.stats();
    assert_eq!((stats.shared_started, stats.shared_reused), (2, 38), "{stats:?}");
    assert!(stats.summary().contains("2 shared fixtures started, 38 reused"), "{}", stats.summary());

    // A test process SIGKILLed mid-run: its leases end, the fixtures stay for the others.
    let users = users_of(run.sh.id() as i32);
    assert_eq!(users.len(), 2, "two test processes");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(users[0]), nix::sys::signal::SIGKILL).expect("kill");
    wait_until("the killed test process is gone", || users_of(run.sh.id() as i32).len().eq(&1).then_some(()));
    assert_eq!(answer(server.port.expect("a port")), format!("fixture-server {}", server_pid.pid));

    // The runner SIGKILLed: the run is over, and so are its fixtures.
    let trees: Vec<ProcId> = keepers.iter().flat_map(|k| keeper_tree(*k)).collect();
    run.sh.kill().expect("kill the run");
    let took = keepers_ended(&keepers, &trees);
    assert!(took < Duration::from_secs(1), "the fixtures ended {took:?} after the run");
    assert!(reapkit_tests::exited(&server_pid), "the server outlived its run");
    assert!(!container_exists(&container.what), "the container outlived its run");
    // The surviving test process saw its fixtures end.
    let mut rest = String::new();
    let _ = run.out.read_line(&mut rest);
    assert_eq!(rest.trim(), "ended");
}

#[test]
fn under_reapkit_wrap_the_fixture_outlives_the_test_that_started_it_and_ends_with_the_run() {
    let name = format!("w{}", std::process::id());
    // nextest's shape: the runner runs each test process under its own `reapkit wrap`.
    let user = format!("reapkit wrap -- \"$SHARED_USER\" --name {name}");
    let mut run = Run::start(&format!("exec 3<&0; {user} </dev/null && {user} <&3"));
    let attached = run.attached(2);
    let server = one_fixture(&attached, "server", 2);
    assert!(attached[0].started_here && !attached[1].started_here, "the first test started it: {attached:#?}");
    let keeper = ProcId::of(server.keeper).expect("the first test's wrap left the fixture running");
    assert_eq!(answer(server.port.expect("a port")), format!("fixture-server {}", server.what));

    let trees = keeper_tree(keeper);
    run.sh.stdin.take();
    let took = keepers_ended(&[keeper], &trees);
    assert!(took < Duration::from_secs(1), "the fixture ended {took:?} after the run");
    let status = run.sh.wait().expect("the run's status");
    assert!(status.success(), "neither wrap found a leak: {status}");
}

#[test]
fn a_sweep_leaves_a_running_runs_fixture_alone_and_reaps_an_ended_runs_as_its_leak() {
    let name = format!("r{}", std::process::id());
    let mut run = Run::start(&format!("exec 3<&0; \"$SHARED_USER\" --name {name} --threads 2 <&3 & wait"));
    let attached = run.attached(1);
    let server = one_fixture(&attached, "server", 2);
    let (keeper, server_pid) = (ProcId::of(server.keeper).expect("running"), pid_of(&server.what));
    let reap = |args: &[&str]| reapkit_cli().args(["reap", "--run-id", &run.run_id]).args(args).output().expect("reap");

    // The run goes on: its fixture is nobody's leak.
    let out = reap(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(keeper.is_alive() && server_pid.is_alive(), "a live run's fixture was touched");

    // A keeper that cannot end its fixture (stopped) once its run is over: the sweep's to take.
    let trees = keeper_tree(keeper);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper.pid), nix::sys::signal::SIGSTOP).expect("stop it");
    let users = users_of(run.sh.id() as i32);
    run.sh.kill().expect("end the run");
    let _ = run.sh.wait();
    for user in users {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(user), nix::sys::signal::SIGKILL);
    }
    let out = reap(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "the ended run's fixture is its leak:\n{text}");
    assert!(text.contains(&format!("shared:{name}-server")), "the leak names the fixture:\n{text}");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper.pid), nix::sys::signal::SIGCONT);
    keepers_ended(&[keeper], &trees);
}

#[test]
fn a_fixture_reused_across_runs_serves_the_next_run_and_ends_after_its_idle_time() {
    let name = format!("u{}", std::process::id());
    let script = format!("exec 3<&0; \"$SHARED_USER\" --name {name} --reuse-ms 500 <&3 & wait");
    let mut first = Run::start(&script);
    let started = one_fixture(&first.attached(1), "server", 1);
    let keeper = ProcId::of(started.keeper).expect("running");
    let users = users_of(first.sh.id() as i32);
    drop(first); // the run is over; its test process sees stdin close and exits
    wait_until("the first run's test process is gone", || {
        users.iter().all(|&u| ProcId::of(u).is_none_or(|p| reapkit_tests::exited(&p))).then_some(())
    });

    let mut second = Run::start(&script);
    let joined = second.attached(1).pop().expect("one attach");
    assert!(!joined.started_here && joined.keeper == started.keeper, "the next run joins it: {joined:?}");
    assert_eq!(answer(joined.port.expect("a port")), format!("fixture-server {}", joined.what));
    let trees = keeper_tree(keeper);
    drop(second);
    // No lease left: it ends after its idle time, by itself.
    keepers_ended(&[keeper], &trees);
}

#[test]
fn under_reapkit_wrap_a_process_that_only_claims_to_be_a_keeper_is_ended_with_its_test() {
    // A live process that is not the wrap's ancestor, and one long gone: neither is a live run.
    let mut bystander = Command::new("sleep").arg("60").spawn().expect("sleep");
    let bystander_id = reapkit::OwnerId::here(ProcId::of(bystander.id() as i32).expect("alive"));
    let (live, dead) = (token(), token());
    let script = format!(
        "REAPKIT_SHARED=forged-0000000000000000 REAPKIT_OWNER={bystander_id} setsid sleep {live} & \
         REAPKIT_SHARED=forged-0000000000000001 REAPKIT_OWNER={} setsid sleep {dead} & sleep 0.2",
        reapkit_tests::dead_owner()
    );
    let out = reapkit_cli().args(["wrap", "--", "sh", "-c", &script]).output().expect("wrap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the forged keepers are the test's leaks:\n{stderr}");
    assert!(reapkit_tests::by_token(&live).is_empty() && reapkit_tests::by_token(&dead).is_empty(), "{stderr}");
    assert!(ProcId::of(bystander.id() as i32).is_some(), "the bystander named as their run owner survives");
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// What a squatter does with the one connection it gets.
type Serve = fn(&mut std::os::unix::net::UnixStream);

/// A socket at the fixture's path served by something that is not its keeper.
fn squatter(shared: &reapkit::Shared, serve: Serve) -> std::thread::JoinHandle<()> {
    let path = shared.socket_path().expect("its socket path");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind the squatter");
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("the attach connects");
        serve(&mut conn);
        // Held until the asker gives up, then the socket file goes.
        let _ = std::io::Read::read(&mut conn, &mut [0u8; 1]);
        let _ = std::fs::remove_file(&path);
    })
}

#[test]
fn a_socket_that_is_not_a_keepers_is_a_clear_error_within_the_deadline_and_starts_nothing() {
    use std::io::Write;
    let ledger = tempfile::tempdir().expect("a ledger");
    let cases: [(Serve, &str); 4] = [
        (|c| drop(c.write_all(b"{\"not\": \"a description\"}\n")), "its keeper's description is not reapkit's"),
        (|c| drop(c.write_all("\u{1b}[31m garbage without an end".as_bytes())), "did not describe the fixture within"),
        (|_| {}, "did not describe the fixture within"),
        // A byte every half second: the deadline is the whole line's, not each read's.
        (
            |c| {
                for _ in 0..30 {
                    if c.write_all(b"x").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            },
            "did not describe the fixture within",
        ),
    ];
    for (serve, says) in cases {
        let shared = reapkit::Shared::command("squatted", ["sleep", "60"]).ledger_dir(ledger.path());
        let squatter = squatter(&shared, serve);
        let started = Instant::now();
        let err = shared.attach().expect_err("not a keeper");
        assert!(started.elapsed() < Duration::from_secs(8), "bounded by the attach deadline: {:?}", started.elapsed());
        let text = err.to_string();
        assert!(text.contains("shared fixture `squatted` is not available") && text.contains(says), "{text}");
        assert!(!text.contains('\u{1b}'), "the answer reaches the terminal escaped: {text:?}");
        squatter.join().expect("the squatter");
        let keepers = reapkit::procfs::MarkerScan::new()
            .find_matching(|env| env.split(|&b| b == 0).any(|e| e.starts_with(b"REAPKIT_SHARED=squatted-")));
        assert!(keepers.is_empty(), "no keeper was started beside the squatter: {keepers:?}");
    }
}

#[test]
fn a_shared_container_that_stops_ends_its_keeper_at_once_and_the_next_attach_starts_a_new_one() {
    let name = format!("s{}", std::process::id());
    let dir = tempfile::tempdir().expect("a temp dir");
    let go = dir.path().join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::S_IRWXU).expect("a fifo");
    // Two test processes of one run, the second once the first one's container has stopped.
    let user = format!("\"$SHARED_USER\" --container --name {name} <&3");
    let mut run = Run::start(&format!("exec 3<&0; {user} & read x < {}; {user} & wait", go.display()));
    let first = run.attached(1);
    let (server, container) = (one_fixture(&first, "server", 1), one_fixture(&first, "container", 1));
    let keeper = ProcId::of(container.keeper).expect("its keeper runs");
    let trees = keeper_tree(keeper);
    docker(&["kill", &container.what]);
    let took = keepers_ended(&[keeper], &trees);
    assert!(took < Duration::from_secs(1), "the keeper of a stopped container took {took:?} to end");
    assert!(!container_exists(&container.what), "the stopped container was removed");

    std::fs::write(&go, "go\n").expect("the second test starts");
    let second = run.attached(1);
    let again = second.iter().find(|a| a.kind == "container").expect("a container");
    assert!(again.started_here && again.what != container.what, "a new container for the run: {again:?}");
    let same = second.iter().find(|a| a.kind == "server").expect("a server");
    assert!(!same.started_here && same.what == server.what, "the server is still the run's first: {same:?}");
    let keepers: Vec<ProcId> = [server.keeper, again.keeper].into_iter().filter_map(ProcId::of).collect();
    let trees: Vec<ProcId> = keepers.iter().flat_map(|k| keeper_tree(*k)).collect();
    drop(run);
    keepers_ended(&keepers, &trees);
    assert!(!container_exists(&again.what), "the run's second container is gone with the run");
}

#[test]
fn a_lease_held_past_its_test_is_reported_with_the_line_that_attached_it() {
    let name = format!("l{}", std::process::id());
    let mut run = Run::start(&format!("\"$SHARED_USER\" --name {name} --forget-in-scope"));
    let mut line = String::new();
    run.out.read_line(&mut line).expect("the scope's verdict");
    let expected = format!("`SharedFixture` of `{name}-server` created at tests/src/bin/shared-user.rs:");
    assert!(line.starts_with("scope ") && line.contains(&expected) && line.contains("was never dropped"), "{line}");
    assert!(
        !line.contains("still open after the test"),
        "its descriptor is the lease's, not a leak of its own: {line}"
    );
    // The run is over once its test process has exited: the fixture with it.
    let keeper: i32 = line.split(' ').nth(1).and_then(|p| p.parse().ok()).expect("the keeper's pid");
    if let Some(keeper) = ProcId::of(keeper) {
        let trees = keeper_tree(keeper);
        keepers_ended(&[keeper], &trees);
    }
}
