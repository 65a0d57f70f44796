//! reapkit makes tests clean up after themselves.
//!
//! A test that spawns a helper process or an MCP stdio server gets an RAII guard that tears
//! down the *whole tree* — grandchildren and `setsid` escapees included — and closes every
//! pipe when the test ends, passes, panics or returns early.
//!
//! ```no_run
//! use std::process::Command;
//! use reapkit::McpServer;
//!
//! let mut cmd = Command::new("npx");
//! cmd.args(["-y", "@modelcontextprotocol/server-everything"]);
//! let mut server = McpServer::start(cmd)?;          // spawn + initialize handshake
//! let tools = server.list_tools()?;
//! assert!(!tools.is_empty());
//! // Dropping `server` closes stdin, then SIGTERM/SIGKILL the group, kills escapees,
//! // reaps zombies: `npm exec`, `sh` and `node` are all gone.
//! # Ok::<(), reapkit::Error>(())
//! ```
//!
//! See `ARCHITECTURE.md` in the repository for how the pieces fit and for the ownership contract.

#[cfg(not(target_os = "linux"))]
compile_error!("reapkit supports Linux only: it relies on pidfds, /proc and PR_SET_CHILD_SUBREAPER");

mod budget;
#[cfg(feature = "docker")]
mod container;
pub mod containment;
#[cfg(feature = "docker")]
mod docker_engine;
mod error;
pub mod escape;
mod fd_snapshot;
pub mod identity;
pub mod ledger;
#[cfg(feature = "mcp")]
mod mcp;
mod member;
pub mod ownership;
mod process;
pub mod procfs;
mod reexec;
mod registry;
pub mod scope;
mod stderr_ring;
pub mod supervise;
pub mod sweep;
mod sys;
mod teardown;
mod watchdog;

pub use budget::{Budget, BudgetUsage, BudgetWatch, Limit};
#[cfg(feature = "docker")]
pub use container::{
    Container, ContainerBuilder, ContainerTeardown, ExecOutput, Ready, DEFAULT_READY_TIMEOUT, DEFAULT_STOP_TIMEOUT,
    LABEL_CREATED, LABEL_GUARD, LABEL_OWNER, LABEL_OWNER_HOST, LABEL_RUN_ID, LABEL_SUPERVISOR, LABEL_TEST,
};
pub use containment::Containment;
#[cfg(feature = "docker")]
pub use docker_engine::DEFAULT_DOCKER_HOST;
pub use error::{Error, Result};
pub use fd_snapshot::{Fd, FdDiff, FdKind, FdSnapshot};
pub use identity::OwnerId;
#[cfg(feature = "mcp")]
pub use mcp::{McpBuilder, McpServer, ToolOutput, LATEST_PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS};
pub use process::{
    shutdown_all, Graces, ProcessBuilder, ProcessGuard, ProcessInfo, DEFAULT_EOF_GRACE, DEFAULT_TERM_GRACE,
    ENV_EOF_GRACE, ENV_TERM_GRACE,
};
pub use procfs::ProcId;
pub use reapkit_macros::test;
pub use scope::{defer, scope, Isolation, LeakReport, ScopeBuilder, ScopeHandle, TestScope};
pub use teardown::{EndedBy, Step, Teardown};
pub use watchdog::DEFAULT_WATCHDOG_GRACE;

/// What `#[reapkit::test]` expands to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::scope::{conclude, test_name, CatchUnwind};
}
