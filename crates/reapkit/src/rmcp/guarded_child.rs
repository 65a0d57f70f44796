//! [`ChildTransport`]: rmcp's client transport over a guarded child's stdio.
//!
//! The framing is rmcp's own (`AsyncRwTransport`); what reapkit adds is who owns the child.
//! rmcp's `TokioChildProcess` ends its child from `Drop` with `tokio::spawn(kill)` (nothing
//! happens once the runtime is gone, and outside one it panics), signals the direct child only,
//! and closes in stdin → 3 s → SIGKILL. Here the child is a [`ProcessGuard`]: `close()` runs
//! reapkit's protocol on the whole tree on a thread of its own (the runtime keeps running), and
//! `Drop` runs it synchronously, in any runtime or none.

use std::borrow::Cow;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use ::rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use ::rmcp::transport::async_rw::AsyncRwTransport;
use ::rmcp::transport::Transport;
use tokio::net::unix::pipe;

use super::pipe::PipeEnd;
use crate::error::{Error, Result};
use crate::guard::process::{ProcessBuilder, ProcessGuard};
use crate::guard::teardown::Teardown;

/// The command [`child`] starts: a `std` or Tokio `Command`, or a [`ProcessBuilder`] with
/// graces, containment and the rest set.
#[derive(Debug)]
pub struct ChildCommand(Spawn);

#[derive(Debug)]
enum Spawn {
    Builder(ProcessBuilder),
    Command(std::process::Command),
}

impl From<std::process::Command> for ChildCommand {
    fn from(command: std::process::Command) -> Self {
        ChildCommand(Spawn::Command(command))
    }
}

/// The command `TokioChildProcess::new` took, so that switching is one line.
impl From<tokio::process::Command> for ChildCommand {
    fn from(command: tokio::process::Command) -> Self {
        ChildCommand(Spawn::Command(command.into_std()))
    }
}

impl From<ProcessBuilder> for ChildCommand {
    fn from(builder: ProcessBuilder) -> Self {
        ChildCommand(Spawn::Builder(builder))
    }
}

/// Starts `command` as a guarded MCP server and gives rmcp a transport over its stdio:
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use rmcp::ServiceExt;
/// let mut cmd = tokio::process::Command::new("npx");
/// cmd.args(["-y", "@modelcontextprotocol/server-everything"]);
/// // Was: ().serve(rmcp::transport::TokioChildProcess::new(cmd)?).await?
/// let client = ().serve(reapkit::rmcp::child(cmd)?).await?;
/// let tools = client.list_all_tools().await?;
/// client.cancel().await?; // reapkit's teardown of the whole tree, then rmcp's
/// # Ok(()) }
/// ```
///
/// The child is a [`ProcessGuard`] like any other: it registers with the test scope and the
/// watchdog, and is held by the guard's containment. Call it inside a Tokio runtime (the pipes
/// register with it); anything else is an [`Error::Unsupported`].
#[track_caller]
pub fn child(command: impl Into<ChildCommand>) -> Result<ChildTransport> {
    let mut builder = match command.into().0 {
        Spawn::Builder(builder) => builder,
        Spawn::Command(command) => ProcessGuard::builder(command),
    };
    builder.kind = "McpServer";
    ChildTransport::spawn(builder)
}

/// rmcp's `Transport<RoleClient>` over a guarded child's stdin and stdout. Made by [`child`].
pub struct ChildTransport {
    io: AsyncRwTransport<RoleClient, PipeEnd<pipe::Receiver>, PipeEnd<pipe::Sender>>,
    child: Arc<GuardedChild>,
}

impl ChildTransport {
    pub(super) fn spawn(builder: ProcessBuilder) -> Result<ChildTransport> {
        tokio::runtime::Handle::try_current().map_err(|e| Error::Unsupported {
            what: "a Tokio runtime here (reapkit::rmcp::child registers the server's pipes with it: call it \
                   inside #[tokio::test] or Runtime::block_on)",
            source: std::io::Error::other(e),
        })?;
        let mut guard = builder.stdout(std::process::Stdio::piped()).spawn()?;
        let mut ends = None;
        // On error `guard` drops here: the child is torn down before the error is returned.
        guard.hand_over_stdio(|stdin, stdout| {
            let io_error = |source| Error::Io { context: "handing the server's pipes to Tokio".into(), source };
            let stdin = PipeEnd::new(pipe::Sender::from_owned_fd(OwnedFd::from(stdin)).map_err(io_error)?);
            let stdout = PipeEnd::new(pipe::Receiver::from_owned_fd(OwnedFd::from(stdout)).map_err(io_error)?);
            ends = Some((stdin.clone(), stdout.clone()));
            Ok(Box::new(move || {
                stdin.close();
                stdout.close();
            }))
        })?;
        let (stdin, stdout) = ends.expect("set by hand_over_stdio");
        Ok(ChildTransport { io: AsyncRwTransport::new(stdout, stdin), child: Arc::new(GuardedChild::new(guard)) })
    }

    /// A handle on the child that stays usable after the transport moved into rmcp's service.
    pub fn handle(&self) -> ChildHandle {
        ChildHandle::of(&self.child)
    }

    pub(super) fn guarded(&self) -> Arc<GuardedChild> {
        Arc::clone(&self.child)
    }
}

impl std::fmt::Debug for ChildTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildTransport").field("child", &self.child).finish_non_exhaustive()
    }
}

impl Transport<RoleClient> for ChildTransport {
    type Error = std::io::Error;

    fn name() -> Cow<'static, str> {
        "reapkit::rmcp::ChildTransport".into()
    }

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send + 'static {
        self.io.send(item)
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.io.receive()
    }

    /// reapkit's teardown of the whole tree, awaited without blocking the runtime. An unclean
    /// teardown (a survivor) is the error.
    fn close(&mut self) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send {
        let child = Arc::clone(&self.child);
        async move {
            let report = child.shutdown().await;
            if report.is_clean() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("reapkit: the server's teardown was not clean: {report}")))
            }
        }
    }
}

impl Drop for ChildTransport {
    fn drop(&mut self) {
        self.child.end_in_drop();
    }
}

/// The guard under a [`ChildTransport`], shared with its [`ChildHandle`]s and an
/// [`McpClient`](super::McpClient): whoever ends first tears down, the others find the report.
/// Once torn down, the guard itself is dropped at once (its pidfds and drain close then, not
/// when rmcp's task lets go of the transport): what is left is its report.
pub(super) struct GuardedChild {
    pid: i32,
    id: String,
    containment: crate::containment::Containment,
    /// The socket that made it ready, for a server that listens.
    listener: Option<crate::guard::listening::Listener>,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    Live(Box<ProcessGuard>),
    /// `report` is `None` if the teardown panicked.
    Ended {
        report: Option<Teardown>,
        stderr_tail: String,
    },
}

impl GuardedChild {
    pub(super) fn new(guard: ProcessGuard) -> GuardedChild {
        GuardedChild {
            pid: guard.pid(),
            id: guard.id().to_owned(),
            containment: guard.containment(),
            listener: guard.listener().cloned(),
            state: Mutex::new(State::Live(Box::new(guard))),
        }
    }

    /// The state, waiting for a teardown in progress on another thread (bounded by its graces).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the guard with `end` (its step 1 closes our ends of the pipes even if rmcp still
    /// holds them) unless it has ended; returns the report.
    fn end_with(&self, end: impl FnOnce(&mut ProcessGuard)) -> Option<Teardown> {
        let mut state = self.lock();
        if let State::Live(guard) = &mut *state {
            end(guard);
            let ended = State::Ended { report: guard.report().cloned(), stderr_tail: guard.stderr_tail() };
            drop(std::mem::replace(&mut *state, ended));
        }
        match &*state {
            State::Ended { report, .. } => report.clone(),
            State::Live(_) => unreachable!("just ended"),
        }
    }

    /// The teardown on a thread of its own, awaited.
    pub(super) async fn shutdown(self: Arc<Self>) -> Teardown {
        let end = move || self.end_with(|guard| drop(guard.teardown())).expect("a teardown that returned reported");
        crate::guard::offload::offload(end).await.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    pub(super) fn end_in_drop(&self) {
        self.end_with(ProcessGuard::end_in_drop);
    }

    pub(super) fn stderr_tail(&self) -> String {
        match &*self.lock() {
            State::Live(guard) => guard.stderr_tail(),
            State::Ended { stderr_tail, .. } => stderr_tail.clone(),
        }
    }

    fn report(&self) -> Option<Teardown> {
        match &*self.lock() {
            State::Live(_) => None,
            State::Ended { report, .. } => report.clone(),
        }
    }
}

impl std::fmt::Debug for GuardedChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedChild")
            .field("pid", &self.pid)
            .field("id", &self.id)
            .field("state", &*self.lock())
            .finish()
    }
}

/// The child under a [`ChildTransport`], usable after the transport moved into rmcp.
#[derive(Clone)]
pub struct ChildHandle {
    child: Arc<GuardedChild>,
}

impl ChildHandle {
    pub(super) fn of(child: &Arc<GuardedChild>) -> ChildHandle {
        ChildHandle { child: Arc::clone(child) }
    }

    /// The server's pid (its process group id).
    pub fn pid(&self) -> i32 {
        self.child.pid
    }

    /// The guard id: `REAPKIT_GUARD` in the server's environment.
    pub fn id(&self) -> &str {
        &self.child.id
    }

    /// How the guard holds the server's tree.
    pub fn containment(&self) -> crate::containment::Containment {
        self.child.containment
    }

    /// The last bytes the server wrote to stderr (waits for a teardown in progress).
    pub fn stderr_tail(&self) -> String {
        self.child.stderr_tail()
    }

    /// The socket its tree listened on when it became ready, for a server that listens
    /// ([`ProcessBuilder::listen`](crate::ProcessBuilder::listen)).
    pub fn listener(&self) -> Option<&crate::guard::listening::Listener> {
        self.child.listener.as_ref()
    }

    /// The TCP port of [`listener`](Self::listener).
    pub fn port(&self) -> Option<u16> {
        self.listener().and_then(|l| l.addr.port())
    }

    /// The teardown report, once the transport was closed or dropped.
    pub fn teardown(&self) -> Option<Teardown> {
        self.child.report()
    }
}

impl std::fmt::Debug for ChildHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildHandle").field("child", &self.child).finish()
    }
}
