//! rmcp, the Rust MCP SDK, over reapkit's guards (`reapkit::rmcp`): real servers through rmcp's
//! own client API and through `McpClient`, on a current-thread runtime, a multi-thread one and
//! past the end of one; the suite's own rmcp server tested the way a user of rmcp tests theirs;
//! async starts and shutdowns that never block the runtime; and, for contrast, what rmcp's own
//! `TokioChildProcess` leaves behind. (The escape matrix has the rmcp rows of the fault matrix:
//! ignoring EOF and SIGTERM, children, double forks, the owner SIGKILLed.)
//!
//! Every check is from outside: the processes by their markers in `/proc`, the descriptors
//! by count, a decoy with the same command line untouched.

use std::time::Duration;

use reapkit::rmcp::{child, McpClient};
use reapkit::{Error, ProcId, ProcessGuard};
use reapkit_tests::{
    assert_all_gone, end_marked, fd_count, fixture, leak_checked, marked, real_server, real_server_argv, tree_of,
    wait_until,
};
use rmcp::model::CallToolRequestParams;
use rmcp::ServiceExt;
use serde_json::json;
use serial_test::serial;

const STARTUP: Duration = Duration::from_secs(60);

/// A real server: its key in `.deps/servers.env`, a tool and its arguments.
type RealServer = (&'static str, &'static str, fn() -> serde_json::Value);

/// The two real servers: the `server-everything` chain through `npx`, `mcp-server-time` from PyPI.
const REAL: [RealServer; 2] = [
    ("REAPKIT_TEST_NPX_EVERYTHING", "echo", || json!({"message": "hello from rmcp"})),
    ("REAPKIT_TEST_PY_TIME", "get_current_time", || json!({"timezone": "UTC"})),
];

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

/// Each real server under `leak_checked` (its tree gone, the FD count back, a decoy untouched).
/// Tokio's signal driver opens a socket pair once per process, for good: first, so that it is
/// part of the baseline.
fn each_real_server(body: impl Fn(std::process::Command, &str, serde_json::Value) -> Vec<ProcId>) {
    drop(current_thread());
    for (key, tool, args) in REAL {
        leak_checked(real_server(key), real_server(key), |cmd| body(cmd, tool, args()));
    }
}

#[test]
#[serial]
fn real_servers_through_rmcps_own_client_on_a_current_thread_runtime_leave_nothing() {
    each_real_server(|cmd, tool, args| {
        let runtime = current_thread();
        let tree = runtime.block_on(async {
            // The line that changes: `TokioChildProcess::new(cmd)?` becomes `child(cmd)?`.
            let transport = child(cmd).expect("starts");
            let server = transport.handle();
            let client = ().serve(transport).await.expect("rmcp's handshake");
            let tools = client.list_all_tools().await.expect("tools/list");
            assert!(tools.iter().any(|t| t.name == tool), "{tool} in {tools:?}");
            let mut call = CallToolRequestParams::new(tool.to_owned());
            call.arguments = args.as_object().cloned();
            let answer = client.call_tool(call).await.expect("tools/call");
            assert!(!answer.content.is_empty(), "{answer:?}");
            let tree = marked_tree(server.id());
            drop(client); // unclosed: rmcp cancels its task, the runtime's end drops the transport
            tree
        });
        drop(runtime);
        tree
    });
}

#[test]
#[serial]
fn real_servers_through_mcp_client_on_a_multi_thread_runtime_leave_nothing_once_dropped() {
    // Made before the FD baselines: a multi-thread runtime's workers release its driver only
    // after its drop has returned.
    let runtime = multi_thread();
    each_real_server(|cmd, tool, args| {
        runtime.block_on(async {
            let server = ProcessGuard::builder(cmd).mcp().startup_timeout(STARTUP).serve().await.expect("starts");
            let tools = server.list_tools().await.expect("tools/list");
            assert!(tools.iter().any(|t| t.name == tool), "{tool} in {tools:?}");
            let answer = server.call_tool(tool, args).await.expect("tools/call");
            assert!(!answer.content.is_empty(), "{answer:?}");
            let tree = marked_tree(server.process().id());
            drop(server); // synchronous: the tree is gone when `drop` returns, runtime or not
            assert_all_gone(&tree);
            tree
        })
    });
}

#[test]
#[serial]
fn real_servers_held_past_their_runtime_end_with_it_and_drop_without_one() {
    each_real_server(|cmd, tool, args| {
        let runtime = current_thread();
        let server = runtime.block_on(async {
            let server = ProcessGuard::builder(cmd).mcp().startup_timeout(STARTUP).serve().await.expect("starts");
            server.call_tool(tool, args).await.expect("tools/call");
            server
        });
        let tree = marked_tree(server.process().id());
        drop(runtime); // rmcp's service and the transport in it go with the runtime
        assert_all_gone(&tree);
        drop(server); // no runtime at all now: no panic, nothing to do
        tree
    });
}

/// The whole tree of a guard, once its servers have started their children.
#[test]
#[serial]
fn server_everything_over_streamable_http_through_rmcp_frees_its_port_and_leaves_nothing() {
    // server-everything in its Streamable HTTP mode, on the port the kernel picks: it logs
    // "listening on port 0", so only the kernel knows the port.
    let argv = real_server_argv("REAPKIT_TEST_NPX_EVERYTHING");
    let argv: Vec<&str> =
        argv.strip_suffix(" stdio").expect("the stdio transport is the last word").split(' ').collect();
    let mut cmd = std::process::Command::new(argv[0]);
    cmd.args(&argv[1..]).arg("streamableHttp").env("PORT", "0");
    drop(current_thread()); // tokio's process-wide signal socket pair, into the baseline
    let baseline = fd_count();
    let runtime = current_thread();
    let (tree, port) = runtime.block_on(async {
        let server = ProcessGuard::builder(cmd)
            .mcp()
            .startup_timeout(STARTUP)
            .serve_http("/mcp")
            .await
            .expect("starts over HTTP");
        let port = server.process().port().expect("the port its tree listens on");
        assert!(server.url().is_some_and(|u| u.ends_with(&format!(":{port}/mcp"))), "{:?}", server.url());
        assert!(server.process().stderr_tail().contains("listening on port 0"), "it logged the port it was given");
        let tools = server.list_tools().await.expect("tools/list over HTTP");
        assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
        let answer = server.call_tool("echo", json!({"message": "over streamable http"})).await.expect("echo");
        assert!(format!("{answer:?}").contains("over streamable http"), "{answer:?}");
        let tree = marked_tree(server.process().id());
        let report = server.shutdown().await;
        assert!(report.is_clean(), "{report}");
        (tree, port)
    });
    drop(runtime);
    assert_all_gone(&tree);
    assert!(reapkit::listening::holders_of_port(port, std::process::id() as i32).is_empty(), "port {port} is free");
    assert_eq!(fd_count(), baseline, "the HTTP client's connections are closed with its runtime");
}

fn marked_tree(guard: &str) -> Vec<ProcId> {
    let tree = wait_until("the server's tree carries its guard's marker", || {
        let found = marked(guard);
        (!found.is_empty()).then_some(found)
    });
    tree_of(guard, tree[0])
}

#[tokio::test]
#[reapkit::test]
async fn the_suites_own_rmcp_server_tested_the_way_its_users_test_theirs() -> Result<(), Error> {
    let server = McpClient::start(std::process::Command::new(env!("CARGO_BIN_EXE_rmcp-server"))).await?;
    let names: Vec<String> = server.list_tools().await?.into_iter().map(|t| t.name.into_owned()).collect();
    for tool in ["add", "echo", "fail", "spawn_helper"] {
        assert!(names.iter().any(|n| n == tool), "{tool} in {names:?}");
    }
    let sum = server.call_tool("add", json!({"a": 2, "b": 3})).await?;
    assert_eq!(sum.content[0].as_text().map(|t| t.text.as_str()), Some("5"));
    match server.call_tool("fail", json!({})).await {
        Err(Error::Tool { tool, message }) => {
            assert_eq!((tool.as_str(), message.as_str()), ("fail", "the tool failed on purpose"))
        }
        other => panic!("a tool error is an Error::Tool: {other:?}"),
    }
    let helper = server.call_tool("spawn_helper", json!({})).await?;
    let helper: i32 = helper.content[0].as_text().and_then(|t| t.text.parse().ok()).expect("the helper's pid");
    let helper = ProcId::of(helper).expect("the helper runs");

    let report = server.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.ended_by, reapkit::EndedBy::StdinEof, "rmcp's server exits on EOF: {report}");
    assert_all_gone(&[helper]);
    Ok(())
}

#[test]
fn many_servers_start_and_end_at_once_on_one_current_thread_runtime() {
    // Six servers that answer `initialize` only once all six are waiting for an answer: if the
    // starts ran one after the other (a blocking spawn or handshake), the first would wait for
    // the other five forever and the startup timeout would fail the test.
    const N: usize = 6;
    let rendezvous = tempfile::tempdir().expect("a rendezvous");
    let dir = rendezvous.path().to_str().expect("a UTF-8 temporary path").to_owned();
    current_thread().block_on(async {
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..N {
            let cmd = fixture(&["--ignore-eof", "--rendezvous", &dir, &N.to_string()]);
            let start = ProcessGuard::builder(cmd)
                .eof_grace(Duration::from_millis(300))
                .mcp()
                .startup_timeout(Duration::from_secs(20))
                .serve();
            starts.spawn(start);
        }
        let servers: Vec<McpClient> =
            starts.join_all().await.into_iter().collect::<Result<_, _>>().expect("all six start");
        let pids: Vec<ProcId> = servers.iter().map(|s| ProcId::of(s.process().pid()).expect("runs")).collect();

        // Each ignores EOF, so each teardown waits its EOF grace: on their own threads, together.
        let mut ends = tokio::task::JoinSet::new();
        for server in servers {
            ends.spawn(server.shutdown());
        }
        for report in ends.join_all().await {
            assert!(report.is_clean() && report.ended_by == reapkit::EndedBy::Sigterm, "{report}");
        }
        assert_all_gone(&pids);
    });
}

#[test]
fn an_async_shutdown_leaves_the_runtime_running_while_it_waits_its_graces() {
    current_thread().block_on(async {
        let guard = ProcessGuard::builder(fixture(&["--ignore-eof"]))
            .eof_grace(Duration::from_millis(500))
            .spawn()
            .expect("starts");
        let pid = guard.proc_id();
        let shutdown = tokio::spawn(guard.shutdown_async());
        // The shutdown task runs first and waits at least its EOF grace. Had it blocked the
        // (only) runtime thread, it would be finished by the time this task runs again.
        tokio::task::yield_now().await;
        assert!(!shutdown.is_finished(), "the runtime ran this task while the teardown waited");
        let report = shutdown.await.expect("the shutdown task");
        assert!(report.is_clean() && report.ended_by == reapkit::EndedBy::Sigterm, "{report}");
        assert_all_gone(&[pid]);
    });
}

#[test]
fn outside_a_runtime_child_is_a_clear_error_and_starts_nothing() {
    let mut cmd = fixture(&[]);
    cmd.env("REAPKIT_SUITE_NO_RUNTIME", "1");
    let err = child(cmd).expect_err("no Tokio runtime here");
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(format!("{err:?}").contains("#[tokio::test]"), "Debug says what to do: {err:?}");
    assert!(reapkit::procfs::MarkerScan::new().find("REAPKIT_SUITE_NO_RUNTIME=1").is_empty(), "nothing was spawned");
}

#[test]
#[serial]
fn rmcps_own_child_transport_leaves_the_tree_that_reapkits_ends() {
    // The same misbehaving tree through rmcp's `TokioChildProcess`: it ignores EOF and SIGTERM,
    // has two children and a double-forked daemon. Dropped with its runtime, rmcp's transport
    // ends nothing (its `Drop` spawns the kill onto a runtime that is going away).
    let marker = format!("REAPKIT_SUITE_RMCP_BASELINE={}", std::process::id());
    let mut cmd = tokio::process::Command::new(reapkit_tests::fixture_path());
    cmd.args(["--ignore-eof", "--ignore-sigterm", "--children", "2", "--escape"]);
    cmd.env(marker.split_once('=').expect("KEY=value").0, std::process::id().to_string());
    let runtime = current_thread();
    let leader = runtime.block_on(async {
        let transport = rmcp::transport::TokioChildProcess::new(cmd).expect("rmcp spawns it");
        let leader = transport.id().expect("a pid") as i32;
        let client = ().serve(transport).await.expect("rmcp's handshake");
        wait_until("the whole tree is up", || {
            (reapkit::procfs::MarkerScan::new().find(&marker).len() >= 4).then_some(())
        });
        drop(client);
        leader
    });
    drop(runtime);
    let left = reapkit::procfs::MarkerScan::new().find(&marker);
    end_marked(&marker, -1);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(leader), None);
    assert!(left.len() >= 4, "rmcp alone leaves the server, its children and the daemon: {left:?}");
}
