//! An rmcp client of a real MCP server (`mcp-server-time`, PyPI) over reapkit's transport.

mod common;

use rmcp::ServiceExt;

#[tokio::test]
#[reapkit::test]
async fn lists_the_servers_tools_and_closes() {
    let client = ().serve(reapkit::rmcp::child(common::time_server()).expect("spawns")).await.expect("handshake");
    let tools = client.list_all_tools().await.expect("tools");
    assert!(tools.iter().any(|t| t.name == "get_current_time"), "{tools:?}");
    client.cancel().await.expect("closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[reapkit::test]
async fn a_client_dropped_with_its_runtime_ends_its_server() {
    let client = ().serve(reapkit::rmcp::child(common::time_server()).expect("spawns")).await.expect("handshake");
    assert!(client.peer_info().is_some());
}

#[tokio::test]
#[reapkit::test]
async fn leaks_on_purpose_a_client_it_forgets() {
    if common::leak().is_some() {
        let client = ().serve(reapkit::rmcp::child(common::time_server()).expect("spawns")).await.expect("handshake");
        std::mem::forget(client);
    }
}
