//! The FD-leak regression suite: what keeps "Too many open files" out of production.
//!
//! Many cycles of start → use → tear down, of the fixture server, a real npm server, failed
//! starts of every kind and container guards. After a short warm-up (lazy statics, the
//! watchdog, the Docker connection), the test process's descriptors must not change at all:
//! one pipe left per cycle would be hundreds here. A growth fails at once, naming the
//! descriptors. Every test also runs in a `#[reapkit::test]` scope, whose own checks follow.
//!
//! `#[serial]` under `#[reapkit::test]` keeps the process-wide counts exact under `cargo test`
//! (the scope sees it); under nextest each test is its own process.
//! The budget side (a server's own FDs flat across 1000 requests) is in `budgets.rs`.

use std::process::Command;
use std::time::Duration;

use reapkit::{Container, Error, FdSnapshot, McpServer, ProcessGuard};
use reapkit_tests::docker::{engine, IMAGE};
use reapkit_tests::{fixture, real_server};
use serial_test::serial;

/// Cycles run before the FD baseline is taken.
const WARM_UP: usize = 3;

/// Runs `cycles` cycles after [`WARM_UP`] others, and fails at the first cycle after which
/// the test process holds a descriptor it did not hold after the warm-up, or a process.
fn assert_flat(what: &str, cycles: usize, mut cycle: impl FnMut(usize)) {
    for i in 0..WARM_UP {
        cycle(i);
    }
    let baseline = FdSnapshot::capture().expect("our own /proc/self/fd");
    for i in 0..cycles {
        cycle(i);
        let diff = baseline.diff_now().expect("our own /proc/self/fd");
        assert!(
            diff.opened.is_empty(),
            "{what}: after cycle {} of {cycles}, new descriptors: {:?}",
            i + 1,
            diff.opened
        );
        let left = live_children();
        assert!(left.is_empty(), "{what}: after cycle {} of {cycles}, processes left: {left:?}", i + 1);
    }
    println!("{what}: {cycles} cycles, {} descriptors throughout", baseline.fds().len());
}

/// Live children of the test process (orphans of a tree come here: it is the subreaper), but
/// not reapkit's watchdog.
fn live_children() -> Vec<String> {
    reapkit::procfs::children(std::process::id() as i32)
        .into_iter()
        .filter(|&pid| !reapkit_tests::is_zombie(pid))
        .map(reapkit::procfs::cmdline)
        .filter(|cmd| !cmd.starts_with("reapkit-watchdog"))
        .collect()
}

#[reapkit::test]
#[serial]
fn fixture_server_200_spawn_handshake_teardown_cycles() {
    assert_flat("fixture server", 200, |_| {
        let mut server = McpServer::start(fixture(&[])).expect("the fixture starts");
        server.ping().expect("ping");
        let report = server.shutdown();
        assert!(report.is_clean(), "{report}");
    });
}

#[reapkit::test]
#[serial]
fn real_npm_server_through_npx_50_cycles() {
    assert_flat("server-everything through npx", 50, |_| {
        let mut server = ProcessGuard::builder(real_server("REAPKIT_TEST_NPX_EVERYTHING"))
            .mcp()
            .startup_timeout(Duration::from_secs(60))
            .start()
            .expect("server-everything starts");
        assert!(!server.list_tools().expect("tools/list").is_empty());
        let report = server.shutdown();
        assert!(report.is_clean(), "{report}");
    });
}

#[reapkit::test]
#[serial]
fn failed_starts_200_of_four_kinds() {
    let start = |cmd: Command| {
        ProcessGuard::builder(cmd)
            .eof_grace(Duration::ZERO)
            .term_grace(Duration::from_millis(500))
            .mcp()
            .startup_timeout(Duration::from_millis(50))
            .start()
    };
    let command = |kind: &str| match kind {
        "missing binary" => Command::new("/nonexistent/reapkit-no-such-server"),
        "crash at start" => fixture(&["--crash-at-start"]),
        "handshake garbage" => fixture(&["--garbage"]),
        _ => fixture(&["--delay-ms", "5000"]),
    };
    for kind in ["missing binary", "crash at start", "handshake garbage", "startup timeout"] {
        assert_flat(kind, 50, |_| match start(command(kind)) {
            Err(Error::Spawn { .. }) if kind == "missing binary" => {}
            Err(Error::Startup { .. }) if kind != "missing binary" => {}
            other => panic!("{kind}: expected a clear start error, got {other:?}"),
        });
    }
}

#[reapkit::test]
#[serial]
fn container_guard_100_cycles() {
    if !engine() {
        return;
    }
    assert_flat("container guard", 100, |_| {
        // `sleep` as PID 1 ignores SIGTERM: no stop grace, or each cycle waits it out.
        let container = Container::builder(IMAGE)
            .cmd(["sleep", "3600"])
            .network_mode("none")
            .stop_timeout(Duration::ZERO)
            .start()
            .expect("starts");
        container.remove().expect("removed");
    });
}
