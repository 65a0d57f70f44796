//! The library's error type. Every variant says what went wrong *and* what to do next.

use crate::os::fd_limit_hint;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Errors from spawning, talking to and tearing down guarded resources.
///
/// `Debug` prints the same text as `Display` — the cause *and* the fix — because `Debug` is
/// what libtest shows when a `-> Result<(), reapkit::Error>` test returns one. Match on the
/// variants for the structured fields.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The program could not be started at all (missing binary, not executable, ...).
    #[error("could not start `{program}`: {source}. {hint}")]
    Spawn { program: String, source: std::io::Error, hint: String },

    /// The ledger directory cannot be created or written.
    #[error(
        "the reapkit ledger directory {} is not usable: {source}. {}",
        dir.display(),
        fd_limit_hint(source).unwrap_or_else(|| "Point REAPKIT_LEDGER_DIR (or `--ledger-dir`, `.ledger_dir()`) at a \
            directory you own and can write, or fix its permissions".into())
    )]
    Ledger { dir: PathBuf, source: std::io::Error },

    /// A setting from the environment could not be parsed.
    #[error("invalid {var}={value:?}: {reason}")]
    Config { var: &'static str, value: String, reason: String },

    /// The operating system lacks something reapkit cannot work without.
    #[error(
        "{what} is not available: {source}. {}",
        fd_limit_hint(source).unwrap_or_else(|| unsupported_hint().into())
    )]
    Unsupported { what: &'static str, source: std::io::Error },

    /// An MCP server failed to start: it exited, wrote garbage or did not answer in time.
    /// `status` is how it ended: on its own, or by its teardown after the failure.
    #[error("MCP server `{program}` failed to start: {reason}\n  stderr (tail):\n{}", indent(stderr_tail))]
    Startup { program: String, reason: String, status: Option<ExitStatus>, stderr_tail: String },

    /// An MCP server stopped answering after the handshake.
    #[error("MCP server `{program}` is gone: {reason}\n  stderr (tail):\n{}", indent(stderr_tail))]
    ServerGone { program: String, reason: String, stderr_tail: String },

    /// No answer to a request within its timeout.
    #[error("MCP request `{method}` got no answer within {timeout:?}; raise it with `request_timeout`")]
    Timeout { method: String, timeout: std::time::Duration },

    /// The server answered a request with a JSON-RPC error.
    #[error("MCP request `{method}` failed with error {code}: {message}")]
    Rpc { method: String, code: i64, message: String, data: Option<serde_json::Value> },

    /// The tool ran and reported a failure (`isError: true` in its result).
    #[error(
        "MCP tool `{tool}` reported an error: {message}. The call reached the server and the tool refused it: check \
         the tool's name and arguments (`list_tools()` shows its input schema)"
    )]
    Tool { tool: String, message: String },

    /// The server's answer did not have the shape the MCP spec gives it.
    #[error("MCP request `{method}`: unexpected answer: {detail}")]
    Protocol { method: String, detail: String },

    /// The Docker engine cannot be reached at all.
    #[error(
        "the Docker engine at {host} cannot be reached: {reason}. Start one (`sudo systemctl start docker`, \
         or `dockerd` as root), or point DOCKER_HOST at a reachable engine (unix:///path/to.sock or tcp://host:port)"
    )]
    DockerUnreachable { host: String, reason: String },

    /// The image is not on the engine; reapkit never pulls (no registry is assumed).
    #[error(
        "the image `{image}` is not on the Docker engine ({reason}). Build it (`docker build -t {image} .`) or \
         import it (`docker import rootfs.tar {image}`, `docker load -i image.tar`); reapkit does not pull"
    )]
    ImageMissing { image: String, reason: String },

    /// The container stopped before it was ready.
    #[error(
        "container {id} exited with code {exit_code} before it was ready; its logs (tail):\n{}",
        indent(logs_tail)
    )]
    ContainerExited { id: String, exit_code: i64, logs_tail: String },

    /// The container runs but did not become ready in time.
    #[error("container {id} was not ready within {timeout:?} (waited for {waited_for}); raise `ready_timeout`. Logs (tail):\n{}", indent(logs_tail))]
    NotReady { id: String, waited_for: String, timeout: std::time::Duration, logs_tail: String },

    /// Any other error from the Docker engine.
    #[error("Docker engine error while {context}: {reason}")]
    Docker { context: String, reason: String },

    /// A watched process crossed a limit of its [`Budget`](crate::Budget) (or the watch ended
    /// before its warm-up did); the report names the metric, limit, baseline, value and
    /// sample, the descriptors or processes behind it, and where to look next.
    #[error("`{program}` (pid {pid}) did not keep its resource budget:\n{report}")]
    BudgetExceeded { program: String, pid: i32, report: String },

    /// A port the guard was to listen on is held by a process outside its tree: who, and what
    /// to do about it.
    #[error("`{program}` cannot listen on TCP port {port}: it is held by {holder}")]
    PortHeld { program: String, port: u16, holder: String },

    /// The guarded tree did not listen as asked within its `ready_timeout`.
    #[error(
        "`{program}` was not listening on {wanted} within {timeout:?}: {reason}\n  stderr (tail):\n{}",
        indent(stderr_tail)
    )]
    NotListening { program: String, wanted: String, timeout: std::time::Duration, reason: String, stderr_tail: String },

    /// A shared fixture could not be started or attached to.
    #[error(
        "shared fixture `{name}` is not available: {reason}{}",
        log.as_ref().map_or_else(String::new, |l| format!(". Its keeper's log: {}", l.display()))
    )]
    Shared { name: String, reason: String, log: Option<PathBuf> },

    /// An I/O error talking to a guarded process.
    #[error("{context}: {source}{}", fd_limit_hint(source).map_or_else(String::new, |h| format!(". {h}")))]
    Io { context: String, source: std::io::Error },
}

impl Error {
    pub(crate) fn io(context: &str, source: std::io::Error) -> Error {
        Error::Io { context: context.to_owned(), source }
    }
}

/// `Debug` is `Display`: libtest prints a test's `Err` with `Debug`, and the fix must show.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (empty)".into();
    }
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to do when the OS lacks something: where each backend's limits are written down.
fn unsupported_hint() -> &'static str {
    if crate::os::PROC_TABLE {
        "reapkit needs Linux ≥ 5.3 with /proc mounted"
    } else {
        "this OS gets reapkit's portable backend: `reapkit::capabilities()` and the README's \"What holds where\" \
         say what it gives; for the rest, run the test on Linux"
    }
}

/// Reports a problem where the user will see it: through `tracing` when a subscriber is this
/// thread's default now, else on stderr (which the test harness shows for failed tests). For
/// what `Drop` and background work cannot return. ("A subscriber was ever set" is not enough:
/// a test's scoped one is gone when another thread, or the exit check, reports.)
pub(crate) fn warn(message: &str) {
    let subscribed = tracing::dispatcher::get_default(|d| !d.is::<tracing::subscriber::NoSubscriber>());
    if subscribed {
        tracing::warn!("{message}");
    } else {
        eprintln!("{message}");
    }
}
