//! rmcp, the Rust MCP SDK, over reapkit's guards (feature `rmcp`).
//!
//! Two ways in, one teardown:
//! - [`child`]: rmcp's own client API over a guarded child — the one-line replacement for
//!   `TokioChildProcess::new(cmd)` in `().serve(..)`.
//! - [`McpClient`]: the async counterpart of [`McpServer`](crate::McpServer), started from the
//!   same builder (`ProcessGuard::builder(cmd).mcp().serve().await`) with its timeouts and errors.
//!
//! Either way the child is a [`ProcessGuard`](crate::ProcessGuard): closing (rmcp's `close()`,
//! `cancel()`, [`McpClient::shutdown`]) runs reapkit's protocol on the whole tree with reapkit's
//! graces on a thread of its own; dropping runs it synchronously, in any runtime or none. It
//! registers with the test scope and the watchdog and is held by the guard's containment.
//!
//! - [`McpBuilder::serve_http`](crate::McpBuilder::serve_http) (feature `rmcp-http`): a server
//!   that speaks Streamable HTTP on a port its tree listens on (proven from `/proc`, so `PORT=0`
//!   works), through rmcp's HTTP client, as an [`McpClient`] torn down like every guard.
//!
//! Which client? The sync [`McpServer`](crate::McpServer) needs no async runtime and no rmcp:
//! the lighter choice for plain `#[test]`s. Under `#[tokio::test]`, or when the test should
//! speak rmcp's types, take this module: its requests never block the runtime.

mod client;
#[cfg(feature = "rmcp-http")]
mod http;
mod pipe;
mod guarded_child;

pub use self::client::McpClient;
pub use self::guarded_child::{child, ChildCommand, ChildHandle, ChildTransport};

/// rmcp itself, at the version reapkit is built with (client side: `model`, `service`,
/// `ServiceExt`, ...), so that its types match reapkit's without a second dependency line.
/// reapkit's own items above take precedence over rmcp's of the same name.
#[doc(no_inline)]
pub use ::rmcp::*;
