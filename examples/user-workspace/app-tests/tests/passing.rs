//! Tests that clean up after themselves: they pass, and leave nothing, under both runners.

use std::process::Command;

/// The real MCP server this workspace tests against: `MCP_SERVER_TIME` holds its argv
/// (reapkit's suite points it at `mcp-server-time` from PyPI).
fn time_server() -> Command {
    let argv = std::env::var("MCP_SERVER_TIME").expect("MCP_SERVER_TIME names the mcp-server-time command");
    let mut argv = argv.split_whitespace();
    let mut cmd = Command::new(argv.next().expect("a program"));
    cmd.args(argv);
    cmd
}

#[reapkit::test]
fn the_time_server_answers() -> Result<(), reapkit::Error> {
    let mut server = reapkit::McpServer::start(time_server())?;
    let now = server.call_tool("get_current_time", reapkit::serde_json::json!({"timezone": "UTC"}))?;
    assert!(now.text().contains("UTC"), "{now}");
    Ok(()) // the server drops here: its whole tree is torn down
}

#[reapkit::test]
fn a_container_runs_and_is_removed() -> Result<(), reapkit::Error> {
    let container = reapkit::Container::builder("reapkit-busybox:latest")
        .cmd(["sh", "-c", "echo ready; exec sleep 1000"])
        .network_mode("none")
        .wait_for(reapkit::Ready::LogLine("ready".into()))
        .start()?;
    let out = container.exec(&["echo", "hi"])?;
    assert_eq!(out.output.trim(), "hi");
    Ok(())
}
