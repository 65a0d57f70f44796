//! The Docker engine connection: one thread per engine address that owns its own tokio
//! runtime and bollard client.
//!
//! Why a thread of our own: a guard's `Drop` must remove its container whether it runs in a
//! current-thread runtime, a multi-thread runtime or no runtime at all. `tokio::spawn` from
//! `Drop` leaks at the end of a runtime and panics outside one; `block_on` inside a runtime
//! panics. Handing the work to a thread whose runtime is ours, and waiting on a plain channel
//! with a time limit, works in all three. The async API uses the same thread and awaits a
//! runtime-agnostic oneshot, so sync and async share every operation.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bollard::Docker;

use crate::error::{Error, Result};
use crate::os::fd_snapshot::{self, Fd, FdSnapshot};

/// The engine address used when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// How long connecting (version negotiation + ping) may take before the engine counts as
/// unreachable: long enough for a loaded engine, short enough not to feel like a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce(Docker) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A connected engine: send it work, get results back.
///
/// It lives as long as something uses it (the guards of its containers, a sweep), not as long
/// as the process: its thread, runtime and sockets end with the last user, so a test's FD
/// table is back to its baseline once its containers are gone, and a connection pool that
/// grows with concurrent requests never outlives them.
#[derive(Debug)]
pub(crate) struct Engine {
    host: String,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    thread: Option<JoinHandle<()>>,
    /// The descriptors that building its runtime opened.
    runtime_fds: Vec<Fd>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop; its runtime and sockets drop with it.
        let (closed, _) = tokio::sync::mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(thread) = self.thread.take().filter(|t| t.thread().id() != std::thread::current().id()) {
            retire(thread, &self.runtime_fds);
        }
    }
}

/// Waits for an engine thread to end, then notes which descriptors its runtime opened that
/// outlive it: where tokio's `signal` feature is on (tokio "full", or another crate's choice),
/// the first runtime with I/O opens a process-wide socket pair that stays open until the
/// process exits. It is tokio's, not a test's, and a test scope must not count it as a leak.
fn retire(thread: JoinHandle<()>, runtime_fds: &[Fd]) {
    let _ = thread.join();
    if let Ok(now) = FdSnapshot::capture() {
        fd_snapshot::note_process_lifetime(runtime_fds.iter().filter(|fd| now.fds().contains(fd)));
    }
}

impl Engine {
    /// The engine at `host` (default: `DOCKER_HOST`, else the local socket): the one already
    /// in use in this process, else a new connection. A failure is not cached: an engine
    /// started later is found by later guards.
    pub(crate) fn get(host: Option<&str>) -> Result<Arc<Engine>> {
        Engine::get_within(host, CONNECT_TIMEOUT)
    }

    /// [`Engine::get`], giving a new connection at most `timeout` to answer.
    pub(crate) fn get_within(host: Option<&str>, timeout: Duration) -> Result<Arc<Engine>> {
        static ENGINES: Mutex<Vec<Weak<Engine>>> = Mutex::new(Vec::new());
        let host = resolve_host(host);
        let mut engines = ENGINES.lock().unwrap_or_else(|p| p.into_inner());
        engines.retain(|e| e.strong_count() > 0);
        if let Some(engine) = engines.iter().filter_map(Weak::upgrade).find(|e| e.host == host) {
            return Ok(engine);
        }
        // Not while holding the lock: engines connect concurrently (a sweep asks them all at once).
        drop(engines);
        let engine = Arc::new(Engine::connect(&host, timeout)?);
        let mut engines = ENGINES.lock().unwrap_or_else(|p| p.into_inner());
        engines.push(Arc::downgrade(&engine));
        Ok(engine)
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    fn connect(host: &str, timeout: Duration) -> Result<Engine> {
        let unreachable = |reason: String| Error::DockerUnreachable { host: host.to_owned(), reason };
        let docker = Docker::connect_with_host(host).map_err(|e| unreachable(e.to_string()))?;
        let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<std::result::Result<(), String>>(1);
        // Built here, not on the engine thread, so that the descriptors building it opens are
        // known: see `retire`.
        // One build at a time, so that the difference is this runtime's alone.
        static BUILDING: Mutex<()> = Mutex::new(());
        let building = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
        let before = FdSnapshot::capture().ok();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| unreachable(format!("could not start a tokio runtime: {e}")))?;
        let runtime_fds = before.and_then(|b| b.diff_now().ok()).map_or_else(Vec::new, |d| d.opened);
        drop(building);
        let thread = std::thread::Builder::new()
            .name("reapkit-docker".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let docker = match tokio::time::timeout(timeout, negotiate(docker)).await {
                        Ok(Ok(docker)) => docker,
                        Ok(Err(e)) => return drop(ready_tx.send(Err(e))),
                        Err(_) => return drop(ready_tx.send(Err(format!("no answer within {timeout:?}")))),
                    };
                    let _ = ready_tx.send(Ok(()));
                    // Each job is its own task: 50 guards tearing down at once run concurrently.
                    while let Some(job) = queue.recv().await {
                        tokio::spawn(job(docker.clone()));
                    }
                });
            })
            .map_err(|e| unreachable(format!("could not start the engine thread: {e}")))?;
        let failed = match ready_rx.recv() {
            Ok(Ok(())) => return Ok(Engine { host: host.to_owned(), jobs, thread: Some(thread), runtime_fds }),
            Ok(Err(reason)) => reason,
            Err(_) => "the engine thread died while connecting".into(),
        };
        // Its runtime and socket are closed when it ends: a failed connect leaves no descriptor.
        retire(thread, &runtime_fds);
        Err(unreachable(failed))
    }

    /// Runs `op` on the engine thread and waits for it, at most `limit`: for sync callers and
    /// `Drop`, from any thread, inside or outside any runtime.
    pub(crate) fn run<T, F, Fut>(&self, limit: Duration, what: &str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Docker) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(limit, what, op, move |r| drop(tx.send(r)))?;
        // The job enforces `limit` itself; the slack only covers a wedged engine thread.
        rx.recv_timeout(limit + Duration::from_secs(5)).unwrap_or_else(|_| Err(self.timed_out(what, limit)))
    }

    /// Runs `op` on the engine thread and awaits it, from any async runtime.
    pub(crate) async fn run_async<T, F, Fut>(&self, limit: Duration, what: &str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Docker) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(limit, what, op, move |r| drop(tx.send(r)))?;
        rx.await.unwrap_or_else(|_| Err(self.timed_out(what, limit)))
    }

    fn submit<T, F, Fut>(
        &self,
        limit: Duration,
        what: &str,
        op: F,
        reply: impl FnOnce(Result<T>) + Send + 'static,
    ) -> Result<()>
    where
        T: Send + 'static,
        F: FnOnce(Docker) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let timed_out = self.timed_out(what, limit);
        let job: Job = Box::new(move |docker| {
            Box::pin(async move {
                let result = tokio::time::timeout(limit, op(docker)).await.unwrap_or(Err(timed_out));
                reply(result);
            })
        });
        self.jobs.send(job).map_err(|_| Error::DockerUnreachable {
            host: self.host.clone(),
            reason: "the engine thread has stopped".into(),
        })
    }

    fn timed_out(&self, what: &str, limit: Duration) -> Error {
        Error::Docker { context: format!("{what} on {}", self.host), reason: format!("no answer within {limit:?}") }
    }
}

/// `DOCKER_HOST` semantics: an explicit address, else the variable, else the local socket.
fn resolve_host(host: Option<&str>) -> String {
    host.map(str::to_owned)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned())
}

/// Debian 12's engine speaks API 1.41, older than bollard's default: negotiate, then ping.
async fn negotiate(docker: Docker) -> std::result::Result<Docker, String> {
    let docker = docker.negotiate_version().await.map_err(|e| e.to_string())?;
    docker.ping().await.map_err(|e| e.to_string())?;
    Ok(docker)
}
