//! `rmcp-server`: an MCP stdio server written with rmcp's `#[tool]` macros, the way a user of
//! rmcp writes theirs — the suite tests it through reapkit as they would test their own.
//!
//! Tools: `add` (`a`, `b`: integers), `echo` (`text`), `fail` (a tool error, `isError`), and
//! `spawn_helper`, which starts a `sleep 3600` helper below the server (as servers start
//! language servers, browsers or workers) and returns its pid. It exits when stdin closes.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::schemars::{self, JsonSchema};
use rmcp::{tool, tool_handler, tool_router, ServerHandler, ServiceExt};
use serde::Deserialize;

#[derive(Deserialize, JsonSchema)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(Deserialize, JsonSchema)]
struct Text {
    text: String,
}

#[derive(Clone)]
struct Server {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Server {
    #[tool(description = "Adds two integers")]
    async fn add(&self, Parameters(Sum { a, b }): Parameters<Sum>) -> String {
        (a + b).to_string()
    }

    #[tool(description = "Returns the text unchanged")]
    async fn echo(&self, Parameters(Text { text }): Parameters<Text>) -> String {
        text
    }

    #[tool(description = "Fails, the MCP way")]
    async fn fail(&self) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text("the tool failed on purpose")])
    }

    #[tool(description = "Starts a helper process below the server and returns its pid")]
    async fn spawn_helper(&self) -> Result<String, String> {
        let child = std::process::Command::new("sleep")
            .arg("3600")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning the helper: {e}"))?;
        // Never waited for: a helper the server forgets, as real servers do.
        Ok(child.id().to_string())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Server {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = Server { tool_router: Server::tool_router() };
    let service = match server.serve(rmcp::transport::stdio()).await {
        Ok(service) => service,
        Err(e) => {
            eprintln!("rmcp-server: handshake failed: {e}");
            std::process::exit(2);
        }
    };
    let _ = service.waiting().await;
}
