//! The fault matrix: every misbehaviour of the fixture server, and passing, panicking and
//! early-returning tests. After each teardown, checked from outside: no process carrying the
//! guard's marker exists, no process of the tree is left even as a zombie, the test
//! process's FD count is back to its baseline, and a decoy with the same command line but
//! no marker is still alive.
//!
//! `#[serial]` keeps the process-wide FD count exact under `cargo test` (threads share one
//! FD table); under nextest each test is its own process and `serial` changes nothing.
//!
//! `cargo xtask test` runs it under every containment and under the portable backend
//! (`--features portable`), where escapees are a stated gap: each cell that makes one checks
//! that its `Teardown` says so and that exactly what left the group survived (see
//! `reapkit_tests::leak_checked`).

use std::process::Command;
use std::time::{Duration, Instant};

use reapkit::capabilities::{Concern, Guarantee};
use reapkit::{EndedBy, Error, McpServer, ProcId, ProcessGuard, Teardown};
use reapkit_tests::{before_fd_baseline, fd_count, fixture, lacks, leak_checked, marked, tree_of, wait_until};
use serde_json::json;
use serial_test::serial;

const SHORT_TERM: Duration = Duration::from_millis(300);

/// Runs one case with the fixture started with `flags` (see [`reapkit_tests::leak_checked`]).
fn case(flags: &[&str], body: impl FnOnce(Command) -> Vec<ProcId>) {
    leak_checked(fixture(flags), fixture(flags), body);
}

/// Starts the fixture as an MCP server, checks it answers, records its tree, shuts down.
fn serve_and_shutdown(cmd: Command, expect: EndedBy, expect_tree: usize) -> Vec<ProcId> {
    let mut server = ProcessGuard::builder(cmd).term_grace(SHORT_TERM).mcp().start().expect("the fixture starts");
    server.ping().expect("ping");
    let guard = server.process().id().to_owned();
    let tree = wait_for_tree(&guard, server.process().proc_id(), expect_tree);
    let report = server.shutdown();
    assert_eq!(report.ended_by, expect, "{report}");
    assert!(report.is_clean(), "{report}");
    match lacks(Concern::Escapees) {
        // What left the group survives; the report says so, and `case` checks and ends it.
        Some(why) => assert!(report.gaps.contains(&(Concern::Escapees, Guarantee::Missing(why))), "{report}"),
        None => assert!(marked(&guard).is_empty(), "marked processes survive: {:?}", marked(&guard)),
    }
    tree
}

/// Where this build reads no process table: `info()` is refused, naming why (the cell then
/// checks that, and the teardown).
fn refuses_info(server: &McpServer) -> bool {
    if lacks(Concern::ProcessTable).is_none() {
        return false;
    }
    let err = server.process().info().expect_err("no process table to read");
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("portable backend"), "{err}");
    true
}

/// The tree, once it has reached `size` processes (the fixture starts children asynchronously).
fn wait_for_tree(guard: &str, leader: ProcId, size: usize) -> Vec<ProcId> {
    let tree = wait_until(&format!("the fixture's tree reaching {size} processes"), || {
        Some(tree_of(guard, leader)).filter(|tree| tree.len() >= size)
    });
    assert_eq!(tree.len(), size, "the fixture's tree: {tree:?}");
    tree
}

#[test]
#[serial]
fn cooperative_server_exits_on_stdin_eof() {
    case(&[], |cmd| serve_and_shutdown(cmd, EndedBy::StdinEof, 1));
}

#[test]
#[serial]
fn server_ignoring_eof_ends_by_sigterm() {
    case(&["--ignore-eof"], |cmd| serve_and_shutdown(cmd, EndedBy::Sigterm, 1));
}

#[test]
#[serial]
fn server_ignoring_sigterm_ends_by_sigkill() {
    case(&["--ignore-eof", "--ignore-sigterm"], |cmd| serve_and_shutdown(cmd, EndedBy::Sigkill, 1));
}

#[test]
#[serial]
fn children_in_the_group_are_ended() {
    case(&["--ignore-eof", "--children", "3"], |cmd| serve_and_shutdown(cmd, EndedBy::Sigterm, 4));
}

#[test]
#[serial]
fn children_are_ended_even_when_the_server_exits_on_eof() {
    case(&["--children", "2"], |cmd| serve_and_shutdown(cmd, EndedBy::StdinEof, 3));
}

#[test]
#[serial]
fn setsid_double_fork_escapee_is_ended() {
    case(&["--escape"], |cmd| serve_and_shutdown(cmd, EndedBy::StdinEof, 2));
}

#[test]
#[serial]
fn the_worst_tree_ends_by_sigkill_in_one_grace() {
    let flags = ["--ignore-eof", "--ignore-sigterm", "--children", "2", "--escape"];
    case(&flags, |cmd| {
        let started = Instant::now();
        let tree = serve_and_shutdown(cmd, EndedBy::Sigkill, 4);
        // Escapees share the group's grace instead of waiting one of their own.
        assert!(started.elapsed() < reapkit::DEFAULT_EOF_GRACE + SHORT_TERM * 3, "{:?}", started.elapsed());
        tree
    });
}

#[test]
#[serial]
fn crash_at_start_reports_status_and_stderr() {
    case(&["--crash-at-start", "--children", "2", "--escape"], |cmd| {
        let err = McpServer::start(cmd).expect_err("the fixture crashes");
        let Error::Startup { status, stderr_tail, .. } = &err else { panic!("not a startup error: {err}") };
        assert_eq!(status.and_then(|s| s.code()), Some(3), "{err}");
        assert!(stderr_tail.contains("crashing at start"), "{err}");
        let text = err.to_string();
        assert!(text.contains("failed to start: it exited with status 3 before answering `initialize`"), "{text}");
        assert_eq!(text.matches("crashing at start").count(), 1, "the stderr tail, once:\n{text}");
        assert!(!text.contains("Broken pipe") && !text.contains("exit status"), "{text}");
        Vec::new()
    });
}

#[test]
#[serial]
fn garbage_during_handshake_is_a_startup_error() {
    case(&["--garbage"], |cmd| {
        let err = McpServer::start(cmd).expect_err("garbage is not a handshake");
        assert!(matches!(err, Error::Startup { .. }), "{err}");
        assert!(err.to_string().contains("not JSON-RPC"), "{err}");
        assert!(err.to_string().contains("write logs and banners to stderr"), "{err}");
        Vec::new()
    });
}

#[test]
#[serial]
fn silent_server_hits_the_startup_timeout() {
    case(&["--delay-ms", "1500"], |cmd| {
        let started = Instant::now();
        let err = ProcessGuard::builder(cmd).mcp().startup_timeout(Duration::from_millis(200)).start();
        let err = err.expect_err("too slow");
        assert!(err.to_string().contains("no answer to `initialize` within 200ms (its startup timeout"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1), "no hang: {:?}", started.elapsed());
        Vec::new()
    });
}

#[test]
#[serial]
fn a_server_that_floods_pings_and_never_reads_cannot_hang_the_start() {
    // It never reads stdin: answering its pings (or even sending `initialize`) would block a
    // writer without a deadline forever.
    case(&["--flood-pings"], |cmd| {
        let started = Instant::now();
        let timeout = Duration::from_secs(2);
        let err = ProcessGuard::builder(cmd).term_grace(SHORT_TERM).mcp().startup_timeout(timeout).start();
        let err = err.expect_err("it never answers initialize");
        let took = started.elapsed();
        assert!(matches!(err, Error::Startup { .. }), "{err}");
        assert!(took < timeout + Duration::from_secs(2), "the startup timeout is a deadline: {took:?}\n{err}");
        Vec::new()
    });
}

#[test]
#[serial]
fn a_large_request_to_a_server_that_stopped_reading_times_out() {
    case(&["--flood-pings-after-init"], |cmd| {
        let timeout = Duration::from_secs(1);
        let builder = ProcessGuard::builder(cmd).term_grace(SHORT_TERM).mcp().request_timeout(timeout);
        let mut server = builder.start().expect("the handshake works before the flood");
        let tree = vec![server.process().proc_id()];
        // Far more than a pipe holds: the write itself must wait, with a deadline.
        let started = Instant::now();
        let err = server.call_tool("echo", json!({"text": "x".repeat(8 << 20)})).expect_err("never answered");
        let took = started.elapsed();
        assert!(matches!(err, Error::Timeout { .. } | Error::ServerGone { .. }), "{err}");
        assert!(took < timeout + Duration::from_secs(2), "the request timeout is a deadline: {took:?}\n{err}");
        assert!(server.shutdown().is_clean());
        tree
    });
}

#[test]
#[serial]
fn slow_request_times_out_without_hanging() {
    case(&["--delay-ms", "300"], |cmd| {
        let builder = ProcessGuard::builder(cmd).mcp();
        let mut server = builder.request_timeout(Duration::from_millis(50)).start().expect("starts");
        let err = server.ping().expect_err("ping is slower than 50 ms");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        let tree = vec![server.process().proc_id()];
        assert!(server.shutdown().is_clean());
        tree
    });
}

#[test]
#[serial]
fn megabytes_of_stderr_never_block_the_server() {
    case(&["--stderr-mb", "8"], |cmd| {
        let mut server = McpServer::start(cmd).expect("the drain keeps the server from blocking");
        server.ping().expect("ping");
        let tail = server.process().stderr_tail();
        assert!(!tail.is_empty() && tail.len() <= 64 * 1024, "a bounded tail: {} bytes", tail.len());
        let tree = vec![server.process().proc_id()];
        server.shutdown();
        tree
    });
}

#[test]
#[serial]
fn fd_leaking_server_is_torn_down() {
    case(&["--leak-fds", "16"], |cmd| {
        let mut server = McpServer::start(cmd).expect("starts");
        if refuses_info(&server) {
            return vec![server.process().proc_id()];
        }
        let before = server.process().info().expect("info").fds;
        for _ in 0..4 {
            server.ping().expect("ping");
        }
        let after = server.process().info().expect("info").fds;
        assert_eq!(after - before, 4 * 16, "info() sees the server's own FD growth");
        let tree = vec![server.process().proc_id()];
        server.shutdown();
        tree
    });
}

#[test]
#[serial]
fn server_dying_after_init_is_reported_as_gone() {
    case(&["--exit-after-init"], |cmd| {
        // It may die before or after our `initialized` notification reaches it.
        let mut server = match McpServer::start(cmd) {
            Ok(server) => server,
            Err(err) => {
                assert!(matches!(err, Error::Startup { .. }), "{err}");
                return Vec::new();
            }
        };
        let err = server.ping().expect_err("it is gone");
        assert!(matches!(err, Error::ServerGone { .. }), "{err}");
        let tree = vec![server.process().proc_id()];
        let report = server.shutdown();
        assert_eq!(report.status.and_then(|s| s.code()), Some(4), "{report}");
        tree
    });
}

#[test]
#[serial]
fn a_panicking_test_still_tears_down() {
    case(&["--ignore-eof", "--children", "2", "--escape"], |cmd| {
        let mut seen = Vec::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let server = ProcessGuard::builder(cmd).term_grace(SHORT_TERM).mcp().start().expect("starts");
            seen = wait_for_tree(server.process().id(), server.process().proc_id(), 4);
            panic!("the test body fails while the server runs");
        }));
        assert!(outcome.is_err());
        seen
    });
}

#[test]
#[serial]
fn an_early_return_tears_down() {
    fn body(cmd: Command, seen: &mut Vec<ProcId>) -> Result<(), Error> {
        let mut server = ProcessGuard::builder(cmd).term_grace(SHORT_TERM).mcp().start()?;
        *seen = wait_for_tree(server.process().id(), server.process().proc_id(), 3);
        server.call_tool("no_such_tool", json!({}))?; // fails: `?` returns early
        unreachable!("the call above fails");
    }
    case(&["--ignore-eof", "--children", "1", "--escape"], |cmd| {
        let mut seen = Vec::new();
        let err = body(cmd, &mut seen).expect_err("the tool does not exist");
        assert!(matches!(err, Error::Rpc { code: -32602, .. }), "{err}");
        seen
    });
}

#[test]
#[serial]
fn a_passing_test_tears_down_through_drop() {
    case(&["--ignore-eof", "--children", "1"], |cmd| {
        let mut server = ProcessGuard::builder(cmd).term_grace(SHORT_TERM).mcp().start().expect("starts");
        let tools = server.list_tools().expect("tools/list");
        assert!(tools.iter().any(|t| t["name"] == "echo"), "{tools:?}");
        let echoed = server.call_tool("echo", json!({"text": "hello"})).expect("echo");
        assert_eq!(echoed.text(), "hello");
        let failed = server.call_tool("fail", json!({})).expect_err("a result marked isError is an error");
        assert!(matches!(failed, Error::Tool { .. }), "{failed:?}");
        assert!(
            format!("{failed:?}").contains("the fixture's fail tool failed"),
            "Debug shows the message: {failed:?}"
        );
        assert_eq!(echoed["content"][0]["text"], "hello");
        wait_for_tree(server.process().id(), server.process().proc_id(), 2)
    });
}

#[test]
#[serial]
fn missing_binary_is_a_clear_error_and_leaks_nothing() {
    before_fd_baseline();
    let baseline = fd_count();
    let err = McpServer::start(Command::new("/nonexistent/mcp-server")).expect_err("no such binary");
    let text = err.to_string();
    assert!(matches!(err, Error::Spawn { .. }), "{text}");
    assert!(text.contains("/nonexistent/mcp-server") && text.contains("installed"), "{text}");
    assert_eq!(fd_count(), baseline);
}

#[test]
#[serial]
fn unwritable_ledger_dir_fails_before_spawning() {
    let not_a_dir = tempfile::NamedTempFile::new().expect("temp file");
    let baseline = fd_count();
    let err = ProcessGuard::builder(fixture(&[]))
        .ledger_dir(not_a_dir.path().join("ledger"))
        .spawn()
        .expect_err("a file is not a directory");
    let text = err.to_string();
    assert!(matches!(err, Error::Ledger { .. }) && text.contains("REAPKIT_LEDGER_DIR"), "{text}");
    assert_eq!(fd_count(), baseline);
}

#[test]
#[serial]
fn ledger_record_lives_exactly_as_long_as_the_guard() {
    let dir = tempfile::tempdir().expect("temp dir");
    let guard = ProcessGuard::builder(fixture(&[])).ledger_dir(dir.path()).spawn().expect("spawns");
    let path = guard.ledger_path().expect("a record while alive").to_owned();
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("readable")).expect("JSON");
    assert_eq!(record["guard"], guard.id());
    assert_eq!(record["process"]["pid"], guard.pid());
    assert_eq!(record["kind"], "process");
    let test = record["test"].as_str().unwrap();
    assert!(test.contains("ledger_record_lives_exactly_as_long_as_the_guard"), "{record}");
    let report: Teardown = guard.shutdown();
    assert!(report.is_clean(), "{report}");
    assert!(!path.exists(), "the record is removed on clean teardown");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temp files left");
}

#[test]
#[serial]
fn info_shows_what_a_server_info_tool_would() {
    case(&["--children", "2"], |cmd| {
        let mut server = McpServer::start(cmd).expect("starts");
        let tree = wait_for_tree(server.process().id(), server.process().proc_id(), 3);
        if refuses_info(&server) {
            return tree;
        }
        let info = server.process().info().expect("info");
        assert_eq!(info.pid, server.process().pid());
        assert_eq!(info.pgid, info.pid, "its own process group");
        assert_eq!(info.descendants.len(), 2);
        assert!(info.rss_bytes > 0 && info.threads >= 1 && info.fds >= 3, "{info:?}");
        let answer = server.call_tool("server_info", json!({})).expect("server_info");
        let reported: serde_json::Value = serde_json::from_str(answer["content"][0]["text"].as_str().unwrap()).unwrap();
        assert_eq!(reported["pid"], info.pid);
        assert_eq!(reported["children"], 2);
        tree
    });
}

#[test]
#[serial]
fn graces_come_from_the_environment_and_bad_values_are_errors() {
    // Only this test touches these variables, and it is serial.
    std::env::set_var(reapkit::ENV_EOF_GRACE, "soon");
    let err = ProcessGuard::spawn(fixture(&[])).expect_err("`soon` is not a duration");
    assert!(err.to_string().contains("REAPKIT_EOF_GRACE"), "{err}");
    std::env::set_var(reapkit::ENV_EOF_GRACE, "25ms");
    let guard = ProcessGuard::spawn(fixture(&[])).expect("spawns");
    std::env::remove_var(reapkit::ENV_EOF_GRACE);
    assert_eq!(guard.graces().eof, Duration::from_millis(25));
    assert_eq!(guard.graces().term, reapkit::DEFAULT_TERM_GRACE);
}
