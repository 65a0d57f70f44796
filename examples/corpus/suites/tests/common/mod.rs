//! What the suites share: the deliberate-leak switch and the real MCP server.

/// `CORPUS_LEAK=<token>`: each suite's `leaks_on_purpose_*` test leaks, as a user's mistake
/// would (a child it leaks sleeps on the token, for the runner to find it afterwards).
pub fn leak() -> Option<String> {
    std::env::var("CORPUS_LEAK").ok()
}

/// The real MCP server (`mcp-server-time`, PyPI) whose argv `MCP_SERVER_TIME` holds.
#[allow(dead_code)] // each test file uses what it needs
pub fn time_server() -> tokio::process::Command {
    let argv = std::env::var("MCP_SERVER_TIME").expect("MCP_SERVER_TIME names the mcp-server-time command");
    let mut argv = argv.split_whitespace();
    let mut cmd = tokio::process::Command::new(argv.next().expect("a program"));
    cmd.args(argv);
    cmd
}
