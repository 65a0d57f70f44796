//! reapkit makes tests clean up after themselves.
//!
//! **Guards.** A test that spawns a helper process or an MCP stdio server gets an RAII guard
//! that tears down the *whole tree* — grandchildren, `setsid` escapees, processes that cleared
//! their environment — and closes every pipe when the test ends, passes, panics or returns
//! early. The tree is held by a cgroup of its own where the machine allows it, else by a keeper
//! process above it ([`Containment`]).
//!
//! ```
//! let mut cmd = std::process::Command::new("sleep");
//! cmd.arg("60");
//! let guard = reapkit::ProcessGuard::spawn(cmd)?;
//! let report = guard.shutdown(); // or just drop it
//! assert!(report.is_clean(), "{report}");
//! # Ok::<(), reapkit::Error>(())
//! ```
//!
//! **MCP servers** (feature `mcp`, default): [`McpServer`] is a guard that speaks MCP.
//!
//! ```no_run
//! let mut cmd = std::process::Command::new("npx");
//! cmd.args(["-y", "@modelcontextprotocol/server-everything"]);
//! let mut server = reapkit::McpServer::start(cmd)?; // spawn + initialize handshake
//! let out = server.call_tool("echo", serde_json::json!({"message": "hi"}))?;
//! assert!(out.text().contains("hi"));
//! # Ok::<(), reapkit::Error>(())
//! ```
//!
//! **rmcp and async tests** (feature `rmcp`): `rmcp::child` is rmcp's client transport over
//! a guarded child — `().serve(reapkit::rmcp::child(cmd)?)` where rmcp has
//! `TokioChildProcess::new(cmd)?` — and `rmcp::McpClient` the async [`McpServer`]
//! (`ProcessGuard::builder(cmd).mcp().serve().await`). Neither blocks the runtime; both tear the
//! whole tree down on close and on drop, in any runtime or none.
//!
//! **Containers** (feature `docker`): [`Container`] is labelled at create and removed with its
//! volumes and networks on drop, in any async runtime or none.
//!
//! ```no_run
//! # #[cfg(feature = "docker")]
//! # fn main() -> Result<(), reapkit::Error> {
//! let c = reapkit::Container::builder("busybox:latest").cmd(["sleep", "60"]).start()?;
//! println!("{}", c.exec(&["echo", "hi"])?.output);
//! # Ok(()) }
//! # #[cfg(not(feature = "docker"))] fn main() {}
//! ```
//!
//! **`#[reapkit::test]`** ([`test`]) replaces `#[test]`: after the body it tears down what the
//! test's guards left and fails the test that leaked a process, container or descriptor,
//! naming it (a forgotten guard with the line that created it).
//!
//! ```
//! #[reapkit::test(allow = ["fd:socket"], term_grace = "1s")]
//! fn my_test() {
//!     // guards created here are this test's
//! }
//! ```
//!
//! **Scopes** ([`TestScope`], [`scope()`], [`defer()`]) are the same without the macro, with
//! afterEach hooks:
//!
//! ```
//! let scope = reapkit::TestScope::enter();
//! scope.defer(|| println!("afterEach"));
//! scope.finish().expect("nothing leaked");
//! ```
//!
//! **Servers that listen** ([`ProcessBuilder::listen`], `Ready::Listening` with `docker`) are
//! ready when a socket of their own tree listens, with the port it bound; **shared fixtures**
//! ([`Shared`]) are started once per run, by whichever test asks first — across nextest's
//! processes and `cargo test`'s threads — and gone when the run ends.
//!
//! ```no_run
//! use reapkit::{Listen, Shared};
//! let web = Shared::command("web", ["python3", "-m", "http.server", "0"]).listen(Listen::Tcp(0)).attach()?;
//! let port = web.port().expect("listening");
//! # let _ = port;
//! # Ok::<(), reapkit::Error>(())
//! ```
//!
//! **Budgets** ([`Budget`]) check a server's RSS, FDs, threads and descendants across a
//! workload: `server.process().watch(Budget::new().fds(Limit::Flat))?`, then `watch.sample()?`.
//!
//! **The watchdog** needs nothing: the first guard of a test process starts one (the test
//! binary re-executed), which reaps what the process registered if it is SIGKILLed.
//!
//! **The CLI** (crate `reapkit-cli`): `reapkit reap` (or `cargo xtask reap`) finds leftovers of
//! test runs by proof of ownership, reaps them and fails CI; `reapkit ps` lists what is tracked;
//! `reapkit wrap` is nextest's wrapper script; `reapkit run -- npm test` supervises any command.
//! The library side is [`sweep::Sweep`]:
//!
//! ```no_run
//! let findings = reapkit::sweep::Sweep::new(reapkit::sweep::Scope::dead_owners()).find();
//! let report = findings.reap();
//! std::process::exit(report.exit_code);
//! ```
//!
//! **What holds where**: on Linux, everything above; on macOS, the BSDs and other Unix, the
//! portable backend ([`Backend`]): guards hold the process group their child leads, FD checks
//! read `/dev/fd`, and there is no process table to sweep. [`capabilities()`] says, concern by
//! concern, what this machine gives (see the table in [`capabilities`](mod@capabilities));
//! `reapkit ps`, a [`Teardown`] and a failing test's report say what does not hold.
//!
//! The repository's `README.md` gets a project started, `docs/guide.md` covers every part, and
//! `ARCHITECTURE.md` holds the map and the ownership contract (marker values, labels, ledger
//! format, exit codes).

#[cfg(not(unix))]
compile_error!(
    "reapkit does not support Windows or other non-Unix targets (out of scope: no process groups, signals or \
     file descriptors to prove ownership by). Supported: Linux 5.3 or later (any architecture, WSL2 included) \
     with the full guarantees; macOS, FreeBSD and other Unix with the portable backend (see the README's \
     \"What holds where\")"
);

/// On a non-Unix target only the `compile_error!` above is reported, not every item below.
macro_rules! unix_only {
    ($($item:item)*) => { $( #[cfg(unix)] $item )* };
}

unix_only! {
    // The layers, lowest first: a module imports only from its own layer or below
    // (`tests/layers.rs` checks it). See ARCHITECTURE.md's code map.
    mod error;
    mod os;
    mod evidence;
    pub mod containment;
    mod registry;
    mod guard;
    pub mod sweep;
    pub mod scope;
    pub mod shared;
    #[cfg(feature = "rmcp")]
    pub mod rmcp;
    mod supervisor;

    // Internals that reapkit's CLI and its own suite reach: public, but not the API a user
    // reads (hidden from the docs, no stability promised).
    #[doc(hidden)]
    pub use evidence::{escape, identity, ledger, ownership, run_stats};
    #[doc(hidden)]
    pub use guard::listening;
    #[doc(hidden)]
    pub use os::procfs;
    #[doc(hidden)]
    pub use supervisor::supervise;

    // The public paths users write, whichever layer holds them.
    pub use containment::capabilities;

    pub use guard::budget::{Budget, BudgetUsage, BudgetWatch, Limit};
    pub use containment::capabilities::{capabilities, Capabilities, Concern, Guarantee};
    #[cfg(feature = "docker")]
    pub use guard::container::{
        Container, ContainerBuilder, ContainerTeardown, ExecOutput, Ready, DEFAULT_STOP_TIMEOUT, LABEL_CREATED,
        LABEL_GUARD, LABEL_OWNER, LABEL_OWNER_HOST, LABEL_RUN_ID, LABEL_SUPERVISOR, LABEL_TEST,
    };
    pub use containment::Containment;
    #[cfg(feature = "docker")]
    pub use guard::docker_engine::DEFAULT_DOCKER_HOST;
    pub use error::{Error, Result};
    pub use os::fd_snapshot::{Fd, FdDiff, FdKind, FdSnapshot};
    pub use evidence::identity::OwnerId;
    pub use guard::listening::{Listen, ListenAddr, Listener};
    #[cfg(feature = "mcp")]
    pub use guard::mcp::{McpBuilder, McpServer, ToolOutput, LATEST_PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS};
    pub use os::{backend, Backend};
    pub use guard::process::{
        shutdown_all, Graces, ProcessBuilder, ProcessGuard, ProcessInfo, DEFAULT_EOF_GRACE, DEFAULT_READY_TIMEOUT,
        DEFAULT_TERM_GRACE, ENV_EOF_GRACE, ENV_TERM_GRACE,
    };
    pub use procfs::ProcId;
    pub use reapkit_macros::test;
    /// The `serde_json` reapkit speaks MCP with (`json!` for tool arguments), so that one
    /// dependency line is enough.
    pub use serde_json;
    pub use run_stats::RunStats;
    pub use scope::{defer, scope, Isolation, LeakReport, ScopeBuilder, ScopeHandle, TestScope};
    pub use shared::{FixtureInfo, Shared, SharedFixture};
    pub use guard::teardown::{EndedBy, Step, Teardown};
    pub use supervisor::watchdog::DEFAULT_WATCHDOG_GRACE;
}

/// The README's examples, compiled (and run, where they need nothing from outside) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// The guide's examples, likewise.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide.md")]
struct GuideDoctests;

/// What `#[reapkit::test]` expands to; not a stable API.
#[cfg(unix)]
#[doc(hidden)]
pub mod __private {
    pub use crate::scope::{conclude, test_name, CatchUnwind};
    pub use ctor;

    /// `#[reapkit::test]` with `#[tokio::test]`: runs `init` (a throw-away runtime of the
    /// user's tokio) once per process, in a constructor before `main`, and notes the socket pair
    /// tokio keeps for the life of the process as the process's own.
    pub fn tokio_warm_up(init: impl FnOnce()) {
        crate::os::fd_snapshot::note_tokio_signal_pair(init);
    }
}
