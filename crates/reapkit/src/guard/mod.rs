//! The guards: the RAII types a test holds — a process tree (`process`, its teardown protocol in
//! `teardown`), an MCP server over it (`mcp`), a container (`container`, on reapkit's own engine
//! thread `docker_engine`) — and what they measure: listening sockets, budgets, the stderr ring.
//! Guards report to the registry below them; nothing here knows of a scope, a sweep or a
//! supervisor.

pub mod budget;
#[cfg(feature = "docker")]
pub mod container;
#[cfg(feature = "docker")]
pub mod docker_engine;
pub mod listening;
#[cfg(feature = "mcp")]
pub mod mcp;
#[cfg(feature = "async")]
pub mod offload;
pub mod process;
pub mod stderr_ring;
pub mod teardown;

use std::time::Duration;

/// How long to wait for the child to exit by itself after its stdin closes.
///
/// Idle MCP servers exit on stdin EOF in 8–113 ms (Node direct, through npx, Python), so a few
/// hundred ms covers them; the SDKs' 2 s would cost minutes over a suite of 200 servers.
pub const DEFAULT_EOF_GRACE: Duration = Duration::from_millis(300);
/// How long to wait after SIGTERM to the group before SIGKILL (the MCP SDKs use about 2 s).
pub const DEFAULT_TERM_GRACE: Duration = Duration::from_secs(2);
/// How long [`ProcessBuilder::listen`](process::ProcessBuilder::listen) waits for the tree to listen, and a container to become
/// ready: `npx` fetching a package on a cold cache, or an image's first start, takes seconds.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment override of the EOF grace, e.g. `REAPKIT_EOF_GRACE=500ms`.
pub const ENV_EOF_GRACE: &str = "REAPKIT_EOF_GRACE";
/// Environment override of the SIGTERM grace, e.g. `REAPKIT_TERM_GRACE=5s`.
pub const ENV_TERM_GRACE: &str = "REAPKIT_TERM_GRACE";
