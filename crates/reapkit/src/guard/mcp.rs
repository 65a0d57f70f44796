//! [`McpServer`]: a [`ProcessGuard`] that speaks MCP over stdio.
//!
//! The transport is newline-delimited JSON-RPC 2.0 on the child's stdin and stdout. Both pipes
//! are non-blocking and every wait is one `poll` on both against a deadline (no reader thread,
//! no sleeps): while a write waits for the server to read, its output is still drained and its
//! requests still answered, so a server that writes without reading cannot deadlock us. A
//! silent server is an [`Error::Timeout`] and a dead one an [`Error::ServerGone`], never a
//! hang. Shutdown follows the spec's order because it *is* the guard's protocol: close stdin
//! first.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::os;
use crate::guard::process::{ProcessBuilder, ProcessGuard};
use crate::guard::teardown::{EndedBy, Teardown};

/// The protocol version reapkit asks for first.
pub const LATEST_PROTOCOL_VERSION: &str = SUPPORTED_PROTOCOL_VERSIONS[0];
/// Versions reapkit accepts when the server answers with another than the one asked for.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// Default time for spawn + `initialize`: enough for `npx` resolving a local package.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time for one request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A line longer than this is not a message of any sane server; stop before eating memory.
const MAX_LINE: usize = 64 * 1024 * 1024;
/// Bytes waiting for a server that does not read its stdin; past this it is gone for us.
const MAX_PENDING: usize = 64 * 1024 * 1024;

/// Builds an [`McpServer`] from a [`ProcessBuilder`]: `ProcessGuard::builder(cmd).mcp()`.
#[derive(Debug)]
pub struct McpBuilder {
    process: ProcessBuilder,
    startup_timeout: Duration,
    request_timeout: Duration,
    client_name: String,
}

impl ProcessBuilder {
    /// Turns this process into an MCP stdio server (stdout becomes the transport).
    pub fn mcp(mut self) -> McpBuilder {
        self.kind = "McpServer";
        McpBuilder {
            process: self,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            client_name: "reapkit".into(),
        }
    }
}

impl McpBuilder {
    /// Time allowed for spawn + `initialize` (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Time allowed for each later request (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The `clientInfo.name` sent in `initialize` (default `reapkit`).
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// The process, the startup and request timeouts and the client name, for the async start.
    #[cfg(feature = "rmcp")]
    pub(crate) fn into_parts(self) -> (ProcessBuilder, Duration, Duration, String) {
        (self.process, self.startup_timeout, self.request_timeout, self.client_name)
    }

    /// Spawns the server and performs the handshake: `initialize`, then
    /// `notifications/initialized`. On failure the server is torn down before the error is
    /// returned, and the error carries its exit status and the tail of its stderr.
    pub fn start(self) -> Result<McpServer> {
        let deadline = os::deadline_in(self.startup_timeout);
        let mut guard = self.process.stdout(Stdio::piped()).spawn()?;
        let stdout = guard.take_stdout().expect("stdout was just piped");
        for fd in [stdout.as_fd(), guard.stdin().expect("stdin is always piped").as_fd()] {
            os::set_nonblocking(fd)
                .map_err(|source| Error::Io { context: "making the server's pipes non-blocking".into(), source })?;
        }
        let mut server = McpServer {
            guard,
            stdout: LineReader::new(stdout),
            next_id: 1,
            request_timeout: self.request_timeout,
            initialize: Value::Null,
        };
        match server.handshake(&self.client_name, deadline) {
            Ok(init) => {
                server.initialize = init;
                Ok(server)
            }
            Err(reason) => Err(server.startup_failed(reason, self.startup_timeout)),
        }
    }
}

/// A guarded MCP stdio server after a successful handshake.
///
/// ```no_run
/// use std::process::Command;
/// let mut server = reapkit::McpServer::start(Command::new("mcp-server-time"))?;
/// let answer = server.call_tool("get_current_time", serde_json::json!({"timezone": "UTC"}))?;
/// # Ok::<(), reapkit::Error>(())
/// ```
#[derive(Debug)]
pub struct McpServer {
    guard: ProcessGuard,
    stdout: LineReader,
    next_id: u64,
    request_timeout: Duration,
    initialize: Value,
}

impl McpServer {
    /// Spawns `command` with default settings and performs the handshake.
    #[track_caller]
    pub fn start(command: Command) -> Result<McpServer> {
        ProcessGuard::builder(command).mcp().start()
    }

    /// The guard under the server: pid, [`ProcessGuard::info`], stderr tail.
    pub fn process(&self) -> &ProcessGuard {
        &self.guard
    }

    /// The protocol version the server agreed to.
    pub fn protocol_version(&self) -> &str {
        self.initialize["protocolVersion"].as_str().unwrap_or_default()
    }

    /// The whole `initialize` result: `serverInfo`, `capabilities`, `instructions`.
    pub fn initialize_result(&self) -> &Value {
        &self.initialize
    }

    /// Sends a request and waits for its result (the `result` member of the response).
    pub fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        let deadline = os::deadline_in(self.request_timeout);
        self.exchange(method, params, deadline).map_err(|f| self.failure(method, f))
    }

    /// Sends a notification (no answer expected); returns once it is written, at most after
    /// the request timeout.
    pub fn notify(&mut self, method: &str, params: Value) -> Result<()> {
        let deadline = os::deadline_in(self.request_timeout);
        self.queue(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
        self.flush(deadline).map_err(|f| self.failure(method, f))
    }

    /// `ping`: the server answers with an empty result.
    pub fn ping(&mut self) -> Result<()> {
        self.request("ping", json!({})).map(drop)
    }

    /// Every tool the server offers, following `nextCursor` pagination.
    pub fn list_tools(&mut self) -> Result<Vec<Value>> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = cursor.map_or_else(|| json!({}), |c| json!({ "cursor": c }));
            let page = self.request("tools/list", params)?;
            let Some(batch) = page["tools"].as_array() else {
                return Err(Error::Protocol {
                    method: "tools/list".into(),
                    detail: format!("no `tools` array in {page}"),
                });
            };
            tools.extend(batch.iter().cloned());
            match page["nextCursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                _ => return Ok(tools),
            }
        }
    }

    /// Calls tool `name` with `arguments`. A result the tool itself marks as failed
    /// (`isError: true`, how MCP tools report errors) is an [`Error::Tool`] with its text, so a
    /// `?` in a test cannot miss it; the successful [`ToolOutput`] indexes like the JSON result
    /// (`out["content"][0]["text"]`) and has [`ToolOutput::text`].
    pub fn call_tool(&mut self, name: &str, arguments: Value) -> Result<ToolOutput> {
        let result = self.request("tools/call", json!({"name": name, "arguments": arguments}))?;
        let output = ToolOutput { result };
        if output.result["isError"] == Value::Bool(true) {
            return Err(Error::Tool { tool: name.to_owned(), message: output.text() });
        }
        Ok(output)
    }

    /// Tears the server down in the spec's order (close stdin first) and reports how it went.
    pub fn shutdown(self) -> Teardown {
        self.guard.shutdown()
    }

    /// [`shutdown`](Self::shutdown) as a future that never blocks the runtime (see
    /// [`ProcessGuard::shutdown_async`]). For requests that do not block either, use
    /// [`McpBuilder::serve`] (feature `rmcp`).
    #[cfg(feature = "async")]
    pub async fn shutdown_async(self) -> Teardown {
        let McpServer { guard, .. } = self;
        guard.shutdown_async().await
    }

    fn handshake(&mut self, client_name: &str, deadline: Instant) -> std::result::Result<Value, Failure> {
        let params = json!({
            "protocolVersion": LATEST_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": client_name, "version": env!("CARGO_PKG_VERSION")},
        });
        let init = self.exchange("initialize", params, deadline)?;
        let version = init["protocolVersion"].as_str().unwrap_or_default();
        if !SUPPORTED_PROTOCOL_VERSIONS.contains(&version) {
            return Err(Failure::Protocol(format!(
                "the server wants protocol version {version:?}; reapkit speaks {SUPPORTED_PROTOCOL_VERSIONS:?}"
            )));
        }
        self.queue(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        self.flush(deadline)?;
        Ok(init)
    }

    /// One request/response round trip. Notifications and server-to-client requests that
    /// arrive in between are handled: `ping` is answered, anything else refused politely.
    fn exchange(&mut self, method: &str, params: Value, deadline: Instant) -> std::result::Result<Value, Failure> {
        let id = self.next_id;
        self.next_id += 1;
        self.queue(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let stdin = self.guard.stdin().ok_or(Failure::Gone("its stdin is already closed".into()))?;
            let line = self.stdout.read_line(stdin, deadline)?;
            let msg: Value = serde_json::from_slice(&line).map_err(|_| Failure::Protocol(not_json_rpc(&line)))?;
            if msg.get("method").is_some() {
                self.answer_server_request(&msg)?;
                continue;
            }
            if msg["id"].as_u64() != Some(id) {
                continue; // a late answer to a request that timed out earlier
            }
            if let Some(err) = msg.get("error") {
                return Err(Failure::Rpc {
                    code: err["code"].as_i64().unwrap_or_default(),
                    message: err["message"].as_str().unwrap_or_default().to_owned(),
                    data: err.get("data").cloned(),
                });
            }
            return msg
                .get("result")
                .cloned()
                .ok_or_else(|| Failure::Protocol(format!("a response without `result`: {msg}")));
        }
    }

    /// Queues the answer to a server-to-client request; it goes out with the next wait.
    fn answer_server_request(&mut self, msg: &Value) -> std::result::Result<(), Failure> {
        let Some(id) = msg.get("id") else { return Ok(()) }; // a notification
        let reply = if msg["method"] == "ping" {
            json!({"jsonrpc": "2.0", "id": id, "result": {}})
        } else {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "reapkit's test client does not support this method"}})
        };
        self.queue(&reply);
        Ok(())
    }

    /// Queues a message for the server; every wait writes what it can of the queue.
    fn queue(&mut self, msg: &Value) {
        let mut line = serde_json::to_vec(msg).expect("a JSON value always serializes");
        line.push(b'\n');
        self.stdout.pending.extend_from_slice(&line);
    }

    /// Writes the whole queue, by `deadline`, reading (and keeping) what the server writes
    /// meanwhile, so that a server blocked on its own output still gets to read ours.
    fn flush(&mut self, deadline: Instant) -> std::result::Result<(), Failure> {
        let stdin = self.guard.stdin().ok_or(Failure::Gone("its stdin is already closed".into()))?;
        self.stdout.pump(stdin, deadline, Until::Flushed)
    }

    /// Turns a failure after the handshake into the user-facing error.
    fn failure(&self, method: &str, failure: Failure) -> Error {
        let stderr_tail = self.guard.stderr_tail();
        let program = self.guard.program().to_owned();
        match failure {
            Failure::Timeout => Error::Timeout { method: method.into(), timeout: self.request_timeout },
            Failure::Rpc { code, message, data } => Error::Rpc { method: method.into(), code, message, data },
            Failure::Protocol(detail) => Error::Protocol { method: method.into(), detail },
            Failure::Gone(reason) => Error::ServerGone { program, reason, stderr_tail },
        }
    }

    /// Tears the server down and builds the startup error with its exit status and stderr.
    fn startup_failed(mut self, failure: Failure, startup_timeout: Duration) -> Error {
        crate::registry::guard_failed(self.guard.id());
        let cause = match failure {
            Failure::Timeout => NoHandshake::Timeout(startup_timeout),
            Failure::Rpc { code, message, .. } => {
                NoHandshake::Said(format!("`initialize` failed with error {code}: {message}"))
            }
            Failure::Protocol(detail) => NoHandshake::Said(detail),
            Failure::Gone(detail) => NoHandshake::Gone(detail),
        };
        let report = self.guard.teardown();
        startup_error(self.guard.program().to_owned(), cause, &report, self.guard.stderr_tail())
    }
}

/// Why a server's handshake did not complete, before its teardown said how it ended.
pub(crate) enum NoHandshake {
    /// No answer within the startup timeout.
    Timeout(Duration),
    /// What the server said, or did, stands as the reason (an error answer, a line that is not
    /// JSON-RPC, a listener that is not HTTP's).
    Said(String),
    /// The connection ended (a broken pipe, stdout closed, the SDK's own error): if the server
    /// exited on its own, that is the reason.
    Gone(String),
}

/// The startup error of a server whose handshake did not complete: a server that exited on
/// its own is reported as that — `exited with status 1 before answering \`initialize\``, not
/// as the broken pipe that followed — and its stderr tail is shown once.
pub(crate) fn startup_error(program: String, cause: NoHandshake, report: &Teardown, stderr_tail: String) -> Error {
    // Exited before the teardown, or at its first step (closing stdin), not by a signal of ours.
    let on_its_own = matches!(report.ended_by, EndedBy::AlreadyExited | EndedBy::StdinEof);
    let reason = match cause {
        NoHandshake::Said(detail) => detail,
        NoHandshake::Timeout(timeout) => format!(
            "no answer to `initialize` within {} (its startup timeout; raise it with `startup_timeout` if the server \
             is slow to start, as `npx`/`uvx` are when they download it first)",
            humantime::format_duration(timeout)
        ),
        NoHandshake::Gone(detail) => match report.status.filter(|_| on_its_own) {
            Some(status) => format!("it {} before answering `initialize`", exit_words(status)),
            None => detail,
        },
    };
    Error::Startup { program, reason, status: report.status, stderr_tail }
}

/// `exited with status 1`, `was killed by signal 9 (SIGKILL)`.
pub(crate) fn exit_words(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
            Ok(name) => format!("was killed by signal {signal} ({name})"),
            Err(_) => format!("was killed by signal {signal}"),
        },
        _ => format!("ended ({status})"),
    }
}

/// What a server wrote to stdout that is not a JSON-RPC message, and where it belongs.
fn not_json_rpc(line: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(line).chars().take(200).collect();
    format!(
        "it wrote a line that is not JSON-RPC to its stdout: {shown:?}. An MCP stdio server's stdout carries \
         only JSON-RPC messages: write logs and banners to stderr"
    )
}

/// The result of a successful tool call (`CallToolResult`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    result: Value,
}

impl ToolOutput {
    /// The text items of `content`, one per line.
    pub fn text(&self) -> String {
        let items = self.result["content"].as_array().into_iter().flatten();
        items.filter_map(|c| c["text"].as_str()).collect::<Vec<_>>().join("\n")
    }

    /// `structuredContent`, if the tool gave one.
    pub fn structured(&self) -> Option<&Value> {
        self.result.get("structuredContent")
    }

    /// The whole `CallToolResult`.
    pub fn json(&self) -> &Value {
        &self.result
    }

    pub fn into_json(self) -> Value {
        self.result
    }
}

impl std::ops::Index<&str> for ToolOutput {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        &self.result[key]
    }
}

impl std::fmt::Display for ToolOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.result.fmt(f)
    }
}

/// Why an exchange failed, before we know whether it is a startup or a later error.
#[derive(Debug)]
enum Failure {
    Timeout,
    Gone(String),
    Protocol(String),
    Rpc { code: i64, message: String, data: Option<Value> },
}

/// The server's pipes: newline-delimited messages read from its stdout, bytes queued for its
/// stdin, both moved by one `poll` against a deadline.
#[derive(Debug)]
struct LineReader {
    pipe: ChildStdout,
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts (lines are consumed from the front without moving
    /// the rest each time: a flood of small messages stays linear).
    start: usize,
    /// Bytes for the server's stdin, not yet written.
    pending: Vec<u8>,
}

/// What a wait on the pipes waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// A whole line from the server (the queue is written meanwhile, as far as it goes).
    Line,
    /// The whole queue written (what the server writes meanwhile is kept for later).
    Flushed,
}

impl LineReader {
    fn new(pipe: ChildStdout) -> LineReader {
        LineReader { pipe, buf: Vec::with_capacity(8192), start: 0, pending: Vec::new() }
    }

    /// The next line without its newline; blank lines are skipped. However fast the server
    /// writes, this returns by `deadline`.
    fn read_line(&mut self, stdin: &mut ChildStdin, deadline: Instant) -> std::result::Result<Vec<u8>, Failure> {
        loop {
            if Instant::now() >= deadline {
                return Err(Failure::Timeout);
            }
            self.pump(stdin, deadline, Until::Line)?;
            let unread = &self.buf[self.start..];
            let end = unread.iter().position(|&b| b == b'\n').expect("pump returns with a whole line");
            let mut line = unread[..end].to_vec();
            self.start += end + 1;
            if self.start * 2 > self.buf.len() {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(line);
            }
        }
    }

    /// Moves bytes both ways until `until` holds or `deadline` passes.
    fn pump(&mut self, stdin: &mut ChildStdin, deadline: Instant, until: Until) -> std::result::Result<(), Failure> {
        loop {
            let done = match until {
                Until::Line => self.buf[self.start..].contains(&b'\n'),
                Until::Flushed => self.pending.is_empty(),
            };
            if done {
                return Ok(());
            }
            // Checked here, not only by `poll`: a pipe that is always ready never times out.
            if Instant::now() >= deadline {
                return Err(Failure::Timeout);
            }
            if self.buf.len() - self.start > MAX_LINE {
                return Err(Failure::Protocol(match until {
                    Until::Line => format!("wrote more than {MAX_LINE} bytes without a newline"),
                    Until::Flushed => format!("wrote more than {MAX_LINE} bytes while not reading its stdin"),
                }));
            }
            if self.pending.len() > MAX_PENDING {
                return Err(Failure::Gone(format!(
                    "it stopped reading its stdin: {} bytes of ours are waiting",
                    self.pending.len()
                )));
            }
            let writing = !self.pending.is_empty();
            let (readable, writable) = os::wait_pipes(self.pipe.as_fd(), writing.then(|| stdin.as_fd()), deadline);
            if !readable && !writable {
                return Err(Failure::Timeout);
            }
            if writable {
                match stdin.write(&self.pending) {
                    Ok(n) => drop(self.pending.drain(..n)),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                    Err(e) => return Err(Failure::Gone(format!("writing to its stdin failed: {e}"))),
                }
            }
            if readable {
                let mut chunk = [0u8; 8192];
                match self.pipe.read(&mut chunk) {
                    Ok(0) => return Err(Failure::Gone("it closed its stdout (exited?)".into())),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                    Err(e) => return Err(Failure::Gone(format!("reading its stdout failed: {e}"))),
                }
            }
        }
    }
}
