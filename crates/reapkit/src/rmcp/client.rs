//! [`McpClient`]: the async [`McpServer`](crate::McpServer) — rmcp's typed client over a
//! guarded child, with the sync API's builder, deadlines and errors.

use std::pin::pin;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ::rmcp::model::{CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation, Tool};
use ::rmcp::service::{RoleClient, RunningService, ServiceError};
use ::rmcp::{Peer, ServiceExt};
use serde_json::Value;

use super::guarded_child::{ChildHandle, ChildTransport, GuardedChild};
use crate::error::{Error, Result};
use crate::guard::mcp::{startup_error, McpBuilder, NoHandshake};
use crate::guard::process::ProcessGuard;
use crate::guard::teardown::Teardown;

impl McpBuilder {
    /// [`start`](Self::start) as a future, through rmcp: spawns the server, then rmcp's
    /// handshake, within the startup timeout. Nothing here blocks the runtime, so many servers
    /// start concurrently on one current-thread runtime. On failure the server is torn down
    /// first and the error carries its exit status and stderr tail, as `start`'s does.
    pub async fn serve(self) -> Result<McpClient> {
        let (process, startup_timeout, request_timeout, client_name) = self.into_parts();
        let program = process.program();
        let transport = ChildTransport::spawn(process)?;
        let child = transport.guarded();
        let handshake = client_config(client_name).serve(transport);
        let started = Started { child, program, request_timeout, url: None };
        started.handshake(handshake, startup_timeout, startup_timeout).await
    }
}

/// A guarded server that is up, before rmcp's handshake with it.
pub(super) struct Started {
    pub(super) child: Arc<GuardedChild>,
    pub(super) program: String,
    pub(super) request_timeout: Duration,
    /// Where it is spoken to, for a server over Streamable HTTP.
    pub(super) url: Option<String>,
}

impl Started {
    /// The client once `handshake` (rmcp's `serve`) completes within `remaining` (of the
    /// server's `startup_timeout`); else the startup error, the server torn down first.
    pub(super) async fn handshake<E: std::fmt::Display>(
        self,
        handshake: impl std::future::Future<Output = std::result::Result<RunningService<RoleClient, ClientConfig>, E>>,
        remaining: Duration,
        startup_timeout: Duration,
    ) -> Result<McpClient> {
        // Pinned here, not moved into the timeout: on failure the transport inside is dropped
        // only after the teardown ran on its own thread, so the runtime never blocks on it.
        let mut handshake = pin!(handshake);
        let Started { child, program, request_timeout, url } = self;
        let cause = match tokio::time::timeout(remaining, handshake.as_mut()).await {
            Ok(Ok(service)) => return Ok(McpClient { service, child, request_timeout, program, url }),
            Ok(Err(e)) => NoHandshake::Gone(match &url {
                Some(url) => format!("rmcp's handshake over HTTP at {url} failed: {e}"),
                None => format!("rmcp's handshake failed: {e}"),
            }),
            Err(_) => NoHandshake::Timeout(startup_timeout),
        };
        Err(startup_failed(child, program, cause).await)
    }
}

/// What reapkit's client says of itself in `initialize`.
pub(super) fn client_config(name: String) -> ClientConfig {
    ClientConfig::new(ClientCapabilities::default(), Implementation::new(name, env!("CARGO_PKG_VERSION")))
}

/// Tears the server down first, then builds the startup error with its exit status and stderr.
pub(super) async fn startup_failed(child: Arc<GuardedChild>, program: String, cause: NoHandshake) -> Error {
    crate::registry::guard_failed(ChildHandle::of(&child).id());
    let report = Arc::clone(&child).shutdown().await;
    startup_error(program, cause, &report, child.stderr_tail())
}

/// A guarded MCP stdio server with rmcp's typed client, for async tests.
///
/// ```no_run
/// # async fn f() -> Result<(), reapkit::Error> {
/// let server = reapkit::rmcp::McpClient::start(std::process::Command::new("mcp-server-time")).await?;
/// let answer = server.call_tool("get_current_time", serde_json::json!({"timezone": "UTC"})).await?;
/// let report = server.shutdown().await;
/// # Ok(()) }
/// ```
///
/// It derefs to rmcp's [`Peer`], so all of rmcp's typed requests are there
/// (`server.list_resources(None)`, `server.peer_info()`); the methods of its own add the request
/// timeout and reapkit's errors. Ending it: [`shutdown`](Self::shutdown) awaits the teardown
/// without blocking the runtime; `Drop` runs it synchronously, in any runtime or none.
pub struct McpClient {
    service: RunningService<RoleClient, ClientConfig>,
    child: Arc<GuardedChild>,
    request_timeout: Duration,
    program: String,
    /// Where it is spoken to, for a server over Streamable HTTP.
    url: Option<String>,
}

impl McpClient {
    /// Spawns `command` with default settings and performs rmcp's handshake.
    #[track_caller]
    pub fn start(command: Command) -> impl std::future::Future<Output = Result<McpClient>> {
        ProcessGuard::builder(command).mcp().serve()
    }

    /// rmcp's running service (its cancellation token, `peer_info`, `waiting`).
    pub fn service(&self) -> &RunningService<RoleClient, ClientConfig> {
        &self.service
    }

    /// The MCP endpoint of a server over Streamable HTTP
    /// ([`McpBuilder::serve_http`](crate::McpBuilder::serve_http)): `http://127.0.0.1:<port>/mcp`.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// The guard under the server: pid, guard id, containment, stderr tail, teardown report.
    pub fn process(&self) -> ChildHandle {
        ChildHandle::of(&self.child)
    }

    /// Every tool the server offers, following pagination.
    pub async fn list_tools(&self) -> Result<Vec<Tool>> {
        self.within("tools/list", self.service.list_all_tools()).await
    }

    /// Calls tool `name` with `arguments` (a JSON object). A result the tool marks as failed
    /// (`isError: true`) is an [`Error::Tool`] with its text, as with the sync client.
    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<CallToolResult> {
        let mut params = CallToolRequestParams::new(name.to_owned());
        params.arguments = match arguments {
            Value::Object(map) => Some(map),
            Value::Null => None,
            other => {
                return Err(Error::Protocol {
                    method: "tools/call".into(),
                    detail: format!("tool arguments must be a JSON object, not {other}"),
                })
            }
        };
        let result = self.within("tools/call", self.service.call_tool(params)).await?;
        if result.is_error == Some(true) {
            let text = result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.as_str())).collect::<Vec<_>>();
            return Err(Error::Tool { tool: name.to_owned(), message: text.join("\n") });
        }
        Ok(result)
    }

    /// Any of rmcp's requests under this client's request timeout, with reapkit's errors:
    /// `server.within("prompts/list", server.list_all_prompts()).await`.
    pub async fn within<T>(
        &self,
        method: &str,
        request: impl std::future::Future<Output = std::result::Result<T, ServiceError>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failure(method, e)),
            Err(_) => Err(Error::Timeout { method: method.into(), timeout: self.request_timeout }),
        }
    }

    /// Tears the server's tree down with reapkit's protocol and graces, on a thread of its own,
    /// then stops rmcp's service.
    pub async fn shutdown(self) -> Teardown {
        Arc::clone(&self.child).shutdown().await
    }

    fn failure(&self, method: &str, error: ServiceError) -> Error {
        match error {
            ServiceError::McpError(e) => Error::Rpc {
                method: method.into(),
                code: i64::from(e.code.0),
                message: e.message.into_owned(),
                data: e.data,
            },
            ServiceError::Timeout { timeout } => Error::Timeout { method: method.into(), timeout },
            ServiceError::TransportClosed | ServiceError::TransportSend(_) => Error::ServerGone {
                program: self.program.clone(),
                reason: format!("the connection closed during `{method}` ({error})"),
                stderr_tail: self.child.stderr_tail(),
            },
            other => Error::Protocol { method: method.into(), detail: other.to_string() },
        }
    }
}

impl std::ops::Deref for McpClient {
    type Target = Peer<RoleClient>;

    fn deref(&self) -> &Peer<RoleClient> {
        self.service.peer()
    }
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient").field("program", &self.program).field("child", &self.child).finish()
    }
}

impl Drop for McpClient {
    /// The tree first, synchronously (the test's checks run right after); then rmcp's service
    /// is dropped, which cancels it.
    fn drop(&mut self) {
        self.child.end_in_drop();
    }
}
