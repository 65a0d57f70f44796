//! MCP over Streamable HTTP (feature `rmcp-http`): a guarded server that listens, spoken to
//! through rmcp's HTTP client, as an [`McpClient`] like a stdio one.
//!
//! The port is the one the server's tree listens on, read from the kernel
//! ([`ProcessBuilder::listen`](crate::ProcessBuilder::listen)), never the one it logs: start it
//! with `PORT=0` and let the kernel choose, so tests never fight over a port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ::rmcp::transport::StreamableHttpClientTransport;
use ::rmcp::ServiceExt;

use super::client::{client_config, startup_failed, McpClient, Started};
use super::guarded_child::GuardedChild;
use crate::error::Result;
use crate::guard::listening::{ListenAddr, Listener};
use crate::guard::mcp::{McpBuilder, NoHandshake};

impl McpBuilder {
    /// Starts a server that speaks MCP over Streamable HTTP at `path` (`"/mcp"`) on the port its
    /// tree listens on, and performs rmcp's handshake over HTTP.
    ///
    /// Unless the builder says otherwise, readiness is any TCP port
    /// ([`Listen::Tcp(0)`](crate::Listen::Tcp)) and the EOF grace is zero (the server does not
    /// read stdin; teardown goes straight to SIGTERM). The startup timeout covers both the wait
    /// for the socket, which runs on a thread of its own (the runtime keeps running), and the
    /// handshake. A port held by someone else is [`Error::PortHeld`](crate::Error::PortHeld),
    /// naming them; anything else is [`Error::Startup`](crate::Error::Startup) with the
    /// server's stderr, the tree torn down first.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), reapkit::Error> {
    /// let mut cmd = std::process::Command::new("npx");
    /// cmd.args(["-y", "@modelcontextprotocol/server-everything", "streamableHttp"]).env("PORT", "0");
    /// let server = reapkit::ProcessGuard::builder(cmd).mcp().serve_http("/mcp").await?;
    /// println!("{}", server.url().unwrap_or_default()); // http://[::1]:<the port it bound>/mcp
    /// let tools = server.list_tools().await?;
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn serve_http(self, path: &str) -> Result<McpClient> {
        let (process, startup_timeout, request_timeout, client_name) = self.into_parts();
        let program = process.program();
        let since = Instant::now();
        let process = process.for_http(startup_timeout);
        let guard = crate::guard::offload::offload(move || process.spawn())
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        let listener = guard.listener().cloned();
        let child = Arc::new(GuardedChild::new(guard));
        let Some(url) = listener.as_ref().and_then(|l| url(l, path)) else {
            let reason = format!("it listens on {listener:?}, which is not a TCP port to speak HTTP to");
            return Err(startup_failed(child, program, NoHandshake::Said(reason)).await);
        };
        let transport = StreamableHttpClientTransport::from_uri(url.clone());
        let remaining = startup_timeout.saturating_sub(since.elapsed());
        let handshake = client_config(client_name).serve(transport);
        Started { child, program, request_timeout, url: Some(url) }.handshake(handshake, remaining, startup_timeout).await
    }
}

/// `http://<addr>:<port><path>` for a TCP listener; a wildcard address is reached over loopback.
fn url(listener: &Listener, path: &str) -> Option<String> {
    let ListenAddr::Tcp { addr } = listener.addr else { return None };
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
    Some(format!("http://{}{path}", SocketAddr::new(ip, addr.port())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_reached_over_loopback() {
        let on = |addr: &str| Listener { pid: 1, addr: ListenAddr::Tcp { addr: addr.parse().unwrap() } };
        assert_eq!(url(&on("0.0.0.0:8080"), "/mcp").as_deref(), Some("http://127.0.0.1:8080/mcp"));
        assert_eq!(url(&on("[::]:8080"), "mcp").as_deref(), Some("http://[::1]:8080/mcp"));
        assert_eq!(url(&on("10.0.0.2:80"), "/").as_deref(), Some("http://10.0.0.2:80/"));
        let unix = Listener { pid: 1, addr: ListenAddr::Unix { path: "/tmp/s".into() } };
        assert_eq!(url(&unix, "/mcp"), None);
    }
}
