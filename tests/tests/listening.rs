//! Servers that listen: readiness is a listening socket *of the guarded tree*, proven from
//! `/proc` (never a connection any process on the port could answer), with the port it bound;
//! a port held by anyone else is an error naming the holder; leftovers are named with their
//! ports by `reap`, `ps` and the test scope.
//!
//! The fixture's `--listen-tcp PORT` binds `127.0.0.1:PORT` and logs `3001` whatever it bound,
//! as servers that log the port they were asked for do.

use std::time::Duration;

use reapkit::listening::holders_of_port;
use reapkit::{Containment, Error, Listen, ProcessGuard};
use reapkit_tests::sweep_sandbox::{clean_env, Sandbox, Spawned, Swept};
use reapkit_tests::{
    answer, dead_owner, fixture, fixture_path, leak_checked, live_owner, reapkit_cli, tree_of, wait_until, Decoy,
};
use serial_test::serial;

const MODES: [Containment; 3] = [Containment::Cgroup, Containment::Keeper, Containment::Marker];

/// A port no process listens on right now (the kernel's pick for port 0, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn me() -> i32 {
    std::process::id() as i32
}

fn wait_listening(port: u16) {
    wait_until(&format!("something listens on port {port}"), || {
        (!holders_of_port(port, me()).is_empty()).then_some(())
    });
}

#[test]
#[serial]
fn port_zero_readiness_finds_the_port_the_tree_bound_not_the_one_it_logs() {
    for mode in MODES {
        // The decoy runs the same command line and listens too, on a port of its own.
        let flags = ["--listen-tcp", "0", "--listen-delay-ms", "50"];
        leak_checked(fixture(&flags), fixture(&flags), |cmd| {
            let guard = ProcessGuard::builder(cmd).containment(mode).listen(Listen::Tcp(0)).spawn().expect("ready");
            let port = guard.port().expect("the port it bound");
            assert_ne!(port, 3001, "{mode}: the port is read from the kernel, not from the log");
            assert!(guard.stderr_tail().contains("127.0.0.1:3001"), "it did log the wrong port");
            assert_eq!(answer(port), format!("fixture-server {}", guard.pid()), "{mode}: the guard's own process");
            assert_eq!(guard.listener().map(|l| l.pid), Some(guard.pid()));
            assert!(guard.listeners().iter().any(|l| l.addr.port() == Some(port)), "still listening");
            let tree = tree_of(guard.id(), guard.proc_id());
            let report = guard.shutdown();
            assert!(report.is_clean(), "{mode}: {report}");
            assert!(holders_of_port(port, me()).is_empty(), "{mode}: port {port} is free again");
            tree
        });
    }
}

#[test]
#[serial]
fn a_descendant_that_listens_makes_the_tree_ready() {
    for mode in MODES {
        let flags = ["--listen-tcp", "0", "--listen-in-child"];
        leak_checked(fixture(&flags), fixture(&flags), |cmd| {
            let guard = ProcessGuard::builder(cmd).containment(mode).listen(Listen::Tcp(0)).spawn().expect("ready");
            let listener = guard.listener().expect("a listener").clone();
            assert_ne!(listener.pid, guard.pid(), "{mode}: the child listens, as node does under npx");
            let port = listener.addr.port().expect("a TCP port");
            assert_eq!(answer(port), format!("fixture-server {}", listener.pid));
            let tree = tree_of(guard.id(), guard.proc_id());
            assert!(tree.iter().any(|p| p.pid == listener.pid), "{mode}: the listener is of the tree");
            let report = guard.shutdown();
            assert!(report.is_clean(), "{mode}: {report}");
            assert!(holders_of_port(port, me()).is_empty(), "{mode}: port {port} is free again");
            tree
        });
    }
}

/// A bystander of our own, not started by reapkit, listening on a port.
fn listening_decoy(port: u16) -> Decoy {
    let decoy = Decoy::start(fixture(&["--listen-tcp", &port.to_string()]));
    wait_listening(port);
    decoy
}

#[test]
#[serial]
fn a_port_held_by_a_process_not_of_reapkit_fails_the_start_naming_it_and_spares_it() {
    let port = free_port();
    let mut decoy = listening_decoy(port);
    let holder = holders_of_port(port, me())[0].pid;
    let baseline = reapkit_tests::fd_count();

    let err = ProcessGuard::builder(fixture(&["--listen-tcp", &port.to_string()]))
        .listen(Listen::Tcp(port))
        .spawn()
        .expect_err("the port is taken");

    let Error::PortHeld { port: p, holder: who, .. } = &err else { panic!("not PortHeld: {err:?}") };
    assert_eq!(*p, port);
    assert!(who.contains(&format!("pid {holder} ")), "{err}");
    assert!(who.contains("not started by reapkit") && who.contains("port 0"), "says what to do: {err}");
    assert_eq!(format!("{err:?}"), err.to_string(), "Debug is the message, as libtest prints it");
    assert_eq!(reapkit_tests::fd_count(), baseline, "nothing was started, nothing is held");
    decoy.assert_untouched();
}

#[test]
#[serial]
fn a_port_taken_while_the_tree_starts_fails_the_start_and_the_tree_is_torn_down() {
    let port = free_port();
    // The guarded server binds late (never, within this test): another process takes the port
    // while reapkit waits for the tree, and the wait must not pass on that process's socket.
    let cmd = fixture(&["--listen-tcp", &port.to_string(), "--listen-delay-ms", "60000"]);
    let baseline = reapkit_tests::fd_count();
    let starting = std::thread::spawn(move || {
        ProcessGuard::builder(cmd).listen(Listen::Tcp(port)).ready_timeout(Duration::from_secs(20)).spawn()
    });
    wait_until("the guard's server is up", || {
        let ours = reapkit::procfs::children(me())
            .into_iter()
            .any(|c| reapkit::procfs::cmdline(c).contains(&format!("--listen-tcp {port}")));
        ours.then_some(())
    });
    let mut decoy = listening_decoy(port);

    let err = starting.join().expect("no panic").expect_err("the port went to someone else");

    assert!(matches!(err, Error::PortHeld { .. }), "{err}");
    assert!(err.to_string().contains("not started by reapkit"), "{err}");
    let left: Vec<i32> = reapkit::procfs::children(me())
        .into_iter()
        .filter(|&c| reapkit::procfs::cmdline(c).contains("--listen-delay-ms 60000"))
        .collect();
    assert!(left.is_empty(), "the guarded tree is torn down: {left:?}");
    decoy.assert_untouched();
    drop(decoy);
    assert_eq!(reapkit_tests::fd_count(), baseline, "the guard's descriptors are closed");
}

#[test]
#[serial]
fn a_server_that_exits_before_it_listens_is_not_listening_with_its_stderr() {
    let err = ProcessGuard::builder(fixture(&["--crash-at-start"]))
        .listen(Listen::Tcp(0))
        .spawn()
        .expect_err("it never listens");
    assert!(matches!(err, Error::NotListening { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("exited before it listened") && text.contains("--crash-at-start"), "{text}");

    let err = ProcessGuard::builder(fixture(&[]))
        .listen(Listen::Tcp(0))
        .ready_timeout(Duration::from_millis(200))
        .spawn()
        .expect_err("it never listens");
    assert!(err.to_string().contains("listens on nothing yet. Raise `ready_timeout`"), "{err}");
}

/// A leftover of this sandbox's run (its owner `owner`), listening on `port`.
fn leftover_on(sb: &Sandbox, port: u16, owner: &str) -> Spawned {
    let mut cmd = fixture(&["--listen-tcp", &port.to_string(), "--sleep-forever"]);
    sb.mark(&mut cmd, owner);
    let leftover = Spawned::start(cmd);
    wait_listening(port);
    leftover
}

#[test]
#[serial]
fn a_leftover_on_the_port_is_named_with_its_test_and_the_command_that_reaps_it() {
    let sb = Sandbox::new("listening", "leftover");
    let port = free_port();
    let mut leftover = leftover_on(&sb, port, &dead_owner());
    let start = || {
        ProcessGuard::builder(fixture(&["--listen-tcp", &port.to_string()]))
            .ledger_dir(&sb.ledger)
            .listen(Listen::Tcp(port))
            .spawn()
    };

    let err = start().expect_err("a leftover holds the port");
    let text = err.to_string();
    assert!(text.contains(&format!("pid {} ", leftover.id.pid)), "{text}");
    assert!(text.contains("a leftover of reapkit guard") && text.contains(sb.test_name()), "{text}");
    assert!(text.contains(&format!("`reapkit reap --run-id {}`", sb.run_id)), "{text}");
    leftover.assert_survived("the leftover: a start that fails touches nothing");

    // `ps` names its port; the reap the message suggests ends it and says which port it held.
    let mut ps = reapkit_cli();
    clean_env(&mut ps);
    ps.args(["ps", "--no-docker", "--ledger-dir"]).arg(&sb.ledger);
    let listed = Swept::run_text(ps);
    assert!(listed.stdout.contains(&format!("listening on tcp 127.0.0.1:{port}")), "{listed}");
    let swept = sb.reap(&[]);
    swept.assert_code(1);
    let leak = swept.leak_of(&leftover);
    assert_eq!(leak["listening"][0]["addr"], format!("127.0.0.1:{port}"), "{swept}");
    assert_eq!(leak["listening"][0]["family"], "tcp", "{swept}");
    leftover.assert_reaped("the leftover");

    let guard = start().expect("the port is free once the leftover is reaped");
    assert_eq!(guard.port(), Some(port));
    assert!(guard.shutdown().is_clean());
}

#[test]
#[serial]
fn a_port_held_by_a_live_test_of_reapkit_says_two_tests_want_it() {
    let sb = Sandbox::new("listening", "live_holder");
    let port = free_port();
    let mut holder = leftover_on(&sb, port, &live_owner().to_string());
    let err = ProcessGuard::builder(fixture(&["--listen-tcp", &port.to_string()]))
        .listen(Listen::Tcp(port))
        .spawn()
        .expect_err("a live guard holds the port");
    let text = err.to_string();
    assert!(text.contains(&format!("whose test process (pid {}) is still running", me())), "{text}");
    assert!(text.contains("two tests want the port"), "{text}");
    holder.assert_survived("a live test's server");
}

/// A descendant started as the test's own child and left listening: the scope's report names
/// its port.
#[reapkit::test]
#[serial]
#[should_panic(expected = ", listening on tcp 127.0.0.1:")]
fn a_leaked_child_is_reported_with_the_port_it_holds() {
    let child = std::process::Command::new(fixture_path())
        .args(["--listen-tcp", "0", "--sleep-forever"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("it starts");
    let pid = child.id() as i32;
    wait_until("the child listens", || (!reapkit::listening::of(&[pid]).is_empty()).then_some(()));
    std::mem::forget(child);
}
