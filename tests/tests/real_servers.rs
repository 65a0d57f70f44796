//! Real MCP servers that no one here wrote, installed by `scripts/setup.sh` into `.deps/` and
//! run offline: `@modelcontextprotocol/server-everything` through `npx` (the `npm exec` → `sh`
//! → `node` chain that leaks `node` when only the wrapper is killed) and `mcp-server-time`
//! from PyPI. Handshake, one tool call, drop: nothing of either is left running, and a decoy
//! started the same way without a marker survives.

use std::time::Duration;

use reapkit::{McpServer, ProcId, ProcessGuard};
use reapkit_tests::{exited, leak_checked, marked, real_server, tree_of, wait_until};
use serde_json::json;
use serial_test::serial;

/// Starts a real server, waits for its tree to have `min_tree` processes, calls one tool,
/// and drops the guard (the teardown a test gets for free). Returns the tree it saw.
fn handshake_call_drop(
    cmd: std::process::Command,
    min_tree: usize,
    tool: &str,
    args: serde_json::Value,
) -> Vec<ProcId> {
    let mut server = ProcessGuard::builder(cmd).mcp().startup_timeout(Duration::from_secs(60)).start().expect("starts");
    assert!(reapkit::SUPPORTED_PROTOCOL_VERSIONS.contains(&server.protocol_version()));
    let tools = server.list_tools().expect("tools/list");
    assert!(tools.iter().any(|t| t["name"] == tool), "{tool} in {tools:?}");
    let answer = server.call_tool(tool, args).expect("tools/call");
    assert!(answer["content"].as_array().is_some_and(|c| !c.is_empty()), "{answer}");
    let guard = server.process().id().to_owned();
    let tree = tree_of(&guard, server.process().proc_id());
    assert!(tree.len() >= min_tree, "the whole chain is marked: {tree:?}");
    drop(server);
    assert!(marked(&guard).is_empty(), "nothing marked survives the drop: {:?}", marked(&guard));
    tree
}

#[test]
#[serial]
fn server_everything_through_npx_leaves_nothing() {
    let cmd = || real_server("REAPKIT_TEST_NPX_EVERYTHING");
    leak_checked(cmd(), cmd(), |cmd| {
        // npm exec → sh → node: three processes, one group.
        handshake_call_drop(cmd, 3, "echo", json!({"message": "hello from reapkit"}))
    });
}

#[test]
#[serial]
fn mcp_server_time_from_pypi_leaves_nothing() {
    let cmd = || real_server("REAPKIT_TEST_PY_TIME");
    leak_checked(cmd(), cmd(), |cmd| handshake_call_drop(cmd, 1, "get_current_time", json!({"timezone": "UTC"})));
}

#[test]
#[serial]
fn killing_only_the_npx_wrapper_would_orphan_node() {
    // The failure reapkit exists for, shown on the real chain: SIGKILL to the `npx` process
    // alone leaves `sh` and `node` running. The guard then still finds and ends them by
    // marker, because they were re-parented to the test process (the subreaper).
    let mut server = McpServer::start(real_server("REAPKIT_TEST_NPX_EVERYTHING")).expect("starts");
    let guard = server.process().id().to_owned();
    server.ping().expect("ping");
    let wrapper = server.process().pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(wrapper), nix::sys::signal::SIGKILL).expect("kill npx");
    let orphans = wait_until("sh and node orphaned by the killed wrapper", || {
        let m: Vec<ProcId> = marked(&guard).into_iter().filter(|p| p.pid != wrapper).collect();
        (!m.is_empty() && ProcId::of(wrapper).is_none_or(|w| exited(&w))).then_some(m)
    });
    assert!(!orphans.is_empty(), "sh and node outlive the wrapper");
    let report = server.shutdown();
    assert!(report.is_clean(), "{report}");
    assert!(report.killed.len() >= orphans.len(), "{report}");
    assert!(marked(&guard).is_empty());
    reapkit_tests::assert_all_gone(&orphans);
}
