//! [`Container`]: a Docker container that is removed — volumes and networks too — when the
//! guard goes.
//!
//! The guard exists as soon as the engine returns the container's id, *before* start: a
//! start that fails (bad command, exits before ready) drops the guard, which removes the
//! container, so nothing leaks. Labels go on at create: `reapkit.run-id`, `reapkit.owner`,
//! `reapkit.owner-host`, `reapkit.guard`, `reapkit.test`, `reapkit.created`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use crate::guard::docker_engine::Engine;
use crate::error::{Error, Result};
use crate::evidence::ledger;
use crate::evidence::ownership::{self, Owner};
use crate::guard::DEFAULT_READY_TIMEOUT;
use crate::registry::{self, Attachment};

pub use crate::evidence::ownership::{
    LABEL_CREATED, LABEL_GUARD, LABEL_OWNER, LABEL_OWNER_HOST, LABEL_RUN_ID, LABEL_SUPERVISOR, LABEL_TEST,
};

/// Default SIGTERM-to-SIGKILL time of `docker stop`, like the process guard's `term_grace`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for one engine call (create, inspect, exec, remove) before it counts as hung.
const CALL_LIMIT: Duration = Duration::from_secs(60);
/// Bytes of logs kept in errors.
const LOG_TAIL: usize = 4096;

/// When a started container counts as ready.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Ready {
    /// As soon as the engine has started it (no extra round trip).
    Running,
    /// When its output (stdout or stderr) contains this text.
    LogLine(String),
    /// When this command, run with `exec`, exits 0 (retried every 50 ms: readiness inside a
    /// container has no event to wait on).
    Exec(Vec<String>),
    /// When a process of the container listens on this, read from `/proc` as for a
    /// [`ProcessBuilder::listen`](crate::ProcessBuilder::listen): its own socket, never a
    /// connection anyone could answer. The port is the container's network namespace's — the
    /// host's with `network_mode("host")`; [`Container::port`] says which it bound.
    Listening(crate::guard::listening::Listen),
}

/// Builds a [`Container`]: `Container::builder("image").cmd([...]).start()`. It serializes
/// (a shared fixture's keeper is told one), all but where it was created.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ContainerBuilder {
    image: String,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    labels: HashMap<String, String>,
    network_mode: Option<String>,
    own_network: bool,
    volumes: Vec<String>,
    ready: Ready,
    ready_timeout: Duration,
    stop_timeout: Duration,
    docker_host: Option<String>,
    ledger_dir: Option<std::path::PathBuf>,
    /// Where the test asked for it: the guard's creation site in reports.
    #[serde(skip, default = "here")]
    created_at: &'static std::panic::Location<'static>,
}

/// Where a deserialized builder was rebuilt: a keeper's, not a test's, line.
fn here() -> &'static std::panic::Location<'static> {
    std::panic::Location::caller()
}

impl ContainerBuilder {
    /// Its environment, `KEY=value` each.
    pub(crate) fn env_vars(&self) -> &[String] {
        &self.env
    }

    /// The command to run instead of the image's default.
    pub fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(mut self, cmd: I) -> Self {
        self.cmd = Some(cmd.into_iter().map(Into::into).collect());
        self
    }

    /// Sets an environment variable in the container.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}"));
        self
    }

    /// Adds a label of your own (the `reapkit.*` ones are always set).
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Docker's network mode, e.g. `none` for a container without network.
    pub fn network_mode(mut self, mode: &str) -> Self {
        self.network_mode = Some(mode.to_owned());
        self
    }

    /// Mounts an anonymous volume at `path` (removed with the container: `rm -v`).
    pub fn volume(mut self, path: &str) -> Self {
        self.volumes.push(path.to_owned());
        self
    }

    /// Creates a network for this container alone (labelled, removed with it) and joins it.
    pub fn own_network(mut self) -> Self {
        self.own_network = true;
        self
    }

    /// When the container counts as started (default [`Ready::Running`]).
    pub fn wait_for(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }

    /// How long readiness may take (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// `docker stop`'s time between SIGTERM and SIGKILL at teardown (default 2 s).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The engine address (`unix://…` or `tcp://…`); default `DOCKER_HOST`, else the local socket.
    pub fn docker_host(mut self, host: &str) -> Self {
        self.docker_host = Some(host.to_owned());
        self
    }

    /// The ledger directory for this guard's record (default as for processes).
    pub fn ledger_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.ledger_dir = Some(dir.into());
        self
    }

    /// Creates, starts and waits until ready; for plain `#[test]`s.
    pub fn start(self) -> Result<Container> {
        let (container, plan) = self.create()?;
        let engine = Arc::clone(&container.engine);
        let id = container.id.clone();
        let limit = plan.ready_timeout + CALL_LIMIT;
        let result = engine.run(limit, "starting the container", move |docker| start_and_wait(docker, id, plan));
        // On error `container` drops and is removed: a failed start leaks nothing.
        started(container, result)
    }

    /// Creates, starts and waits until ready; for `#[tokio::test]`s (any runtime flavour).
    pub async fn start_async(self) -> Result<Container> {
        let (container, plan) = self.create_async().await?;
        let engine = Arc::clone(&container.engine);
        let id = container.id.clone();
        let limit = plan.ready_timeout + CALL_LIMIT;
        let result =
            engine.run_async(limit, "starting the container", move |docker| start_and_wait(docker, id, plan)).await;
        started(container, result)
    }

    fn create(self) -> Result<(Container, StartPlan)> {
        let (engine, ledger_dir, spec) = self.prepare()?;
        let created = engine.run(CALL_LIMIT, "creating the container", {
            let spec = spec.clone();
            move |docker| create(docker, spec)
        });
        Container::adopt(engine, ledger_dir, spec, created)
    }

    async fn create_async(self) -> Result<(Container, StartPlan)> {
        let (engine, ledger_dir, spec) = self.prepare()?;
        let created = engine
            .run_async(CALL_LIMIT, "creating the container", {
                let spec = spec.clone();
                move |docker| create(docker, spec)
            })
            .await;
        Container::adopt(engine, ledger_dir, spec, created)
    }

    /// Everything that can fail before the engine is asked to create anything.
    fn prepare(mut self) -> Result<(Arc<Engine>, std::path::PathBuf, Spec)> {
        let ledger_dir = ledger::resolve(self.ledger_dir.as_deref())?;
        // What the guard will hold: the engine's runtime and connections, if it opens them now.
        let fds_before = crate::os::procfs::fd_numbers(std::process::id() as i32).unwrap_or_default();
        let engine = Engine::get(self.docker_host.as_deref())?;
        let scope = Attachment::current();
        registry::guard_starting(scope.as_ref(), &ledger_dir, Some(engine.host()));
        let owner = Owner::current();
        let guard = ownership::next_guard_id();
        let test = Attachment::test_name(scope.as_ref());
        for (key, value) in [
            (LABEL_RUN_ID, owner.run_id.clone()),
            (LABEL_OWNER, owner.marker()),
            (LABEL_OWNER_HOST, owner.host.clone()),
            (LABEL_GUARD, guard.clone()),
            (LABEL_TEST, test.clone()),
            (LABEL_CREATED, ledger::now_rfc3339()),
        ] {
            self.labels.insert(key.to_owned(), value);
        }
        match ownership::supervisor() {
            Some(supervisor) => self.labels.insert(LABEL_SUPERVISOR.to_owned(), supervisor.to_string()),
            None => self.labels.remove(LABEL_SUPERVISOR),
        };
        let network = self.own_network.then(|| format!("reapkit-{guard}"));
        let spec = Spec {
            guard,
            test,
            image: self.image,
            cmd: self.cmd,
            env: self.env,
            labels: self.labels,
            network_mode: network.clone().or(self.network_mode),
            network,
            volumes: self.volumes,
            plan: StartPlan { ready: self.ready, ready_timeout: self.ready_timeout },
            stop_timeout: self.stop_timeout,
            created_at: self.created_at,
            fds_before,
        };
        Ok((engine, ledger_dir, spec))
    }
}

/// What create needs, sent to the engine thread.
#[derive(Debug, Clone)]
struct Spec {
    guard: String,
    test: String,
    image: String,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    labels: HashMap<String, String>,
    network_mode: Option<String>,
    network: Option<String>,
    volumes: Vec<String>,
    plan: StartPlan,
    stop_timeout: Duration,
    created_at: &'static std::panic::Location<'static>,
    /// The test process's descriptors before the engine was connected.
    fds_before: Vec<i32>,
}

/// What start needs, after create.
#[derive(Debug, Clone)]
struct StartPlan {
    ready: Ready,
    ready_timeout: Duration,
}

/// What create got from the engine, even when it failed half-way (a network but no container).
struct Created {
    container: Option<String>,
    networks: Vec<String>,
    error: Option<Error>,
}

/// The output of [`Container::exec`].
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// stdout and stderr, interleaved as the engine sent them.
    pub output: String,
}

/// What a container teardown did.
#[derive(Debug, Clone)]
pub struct ContainerTeardown {
    pub id: String,
    pub elapsed: Duration,
    pub networks_removed: usize,
}

/// A running (or at least created) container, removed with its volumes and networks on drop.
#[derive(Debug)]
pub struct Container {
    id: String,
    guard: String,
    engine: Arc<Engine>,
    networks: Vec<String>,
    stop_timeout: Duration,
    ledger: Option<ledger::Entry>,
    removed: bool,
}

impl Container {
    /// Starts a builder for `image` (which must exist locally: no registry is assumed). Where
    /// it is called is the guard's creation site in reports.
    #[track_caller]
    pub fn builder(image: &str) -> ContainerBuilder {
        ContainerBuilder {
            image: image.to_owned(),
            cmd: None,
            env: Vec::new(),
            labels: HashMap::new(),
            network_mode: None,
            own_network: false,
            volumes: Vec::new(),
            ready: Ready::Running,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            docker_host: None,
            ledger_dir: None,
            created_at: std::panic::Location::caller(),
        }
    }

    /// Becomes the guard of whatever create made, then reports create's error if any.
    fn adopt(
        engine: Arc<Engine>,
        ledger_dir: std::path::PathBuf,
        spec: Spec,
        created: Result<Created>,
    ) -> Result<(Container, StartPlan)> {
        let created = created?;
        let mut container = Container {
            id: created.container.clone().unwrap_or_default(),
            guard: spec.guard.clone(),
            engine: Arc::clone(&engine),
            networks: created.networks,
            stop_timeout: spec.stop_timeout,
            ledger: None,
            removed: false,
        };
        if let Some(error) = created.error {
            return Err(error); // `container` drops: its networks (and container, if any) go
        }
        let record = ledger::Record::new(
            spec.guard,
            spec.test,
            ledger::Resource::Container {
                id: container.id.clone(),
                image: spec.image,
                docker_host: engine.host().to_owned(),
                networks: container.networks.clone(),
            },
        );
        container.ledger = Some(ledger::Entry::write(&ledger_dir, &record)?);
        // The engine's runtime and connections (sockets, epoll, eventfd) that appeared meanwhile;
        // never a file or a pipe, which another thread of the test process may have opened.
        let now = crate::os::fd_snapshot::FdSnapshot::capture().map(|s| s.fds().to_vec()).unwrap_or_default();
        let fds = now
            .into_iter()
            .filter(|fd| !spec.fds_before.contains(&fd.fd))
            .filter(|fd| matches!(fd.kind, crate::os::fd_snapshot::FdKind::Socket | crate::os::fd_snapshot::FdKind::AnonInode))
            .map(|fd| registry::HeldFd { fd: fd.fd, target: Some(fd.target) })
            .collect();
        let what = match &record.resource {
            ledger::Resource::Container { image, .. } => image.clone(),
            ledger::Resource::Process { .. } => String::new(),
        };
        let live = registry::LiveGuard {
            id: container.guard.clone(),
            kind: "Container",
            what,
            created_at: spec.created_at,
            fds,
            child: None,
            cgroup: None,
        };
        registry::guard_created(Attachment::current().as_ref(), live);
        Ok((container, spec.plan))
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The guard id: the value of its `reapkit.guard` label.
    pub fn guard(&self) -> &str {
        &self.guard
    }

    /// The path of this guard's ledger record, while it exists.
    pub fn ledger_path(&self) -> Option<&std::path::Path> {
        self.ledger.as_ref().map(ledger::Entry::path)
    }

    /// Runs `cmd` in the container and collects its output and exit code.
    pub fn exec(&self, cmd: &[&str]) -> Result<ExecOutput> {
        let (id, cmd) = (self.id.clone(), cmd.iter().map(|s| s.to_string()).collect());
        self.engine.run(CALL_LIMIT, "exec", move |docker| exec(docker, id, cmd))
    }

    /// [`exec`](Self::exec) for async tests.
    pub async fn exec_async(&self, cmd: &[&str]) -> Result<ExecOutput> {
        let (id, cmd) = (self.id.clone(), cmd.iter().map(|s| s.to_string()).collect());
        self.engine.run_async(CALL_LIMIT, "exec", move |docker| exec(docker, id, cmd)).await
    }

    /// Everything the container has written to stdout and stderr so far.
    pub fn logs(&self) -> Result<String> {
        let id = self.id.clone();
        self.engine.run(CALL_LIMIT, "reading logs", move |docker| async move { Ok(logs(&docker, &id).await) })
    }

    /// What its processes listen on, seen from `/proc` (empty once it stopped).
    pub fn listeners(&self) -> Vec<crate::guard::listening::Listener> {
        self.first_pid().map(listeners_of).unwrap_or_default()
    }

    /// Its first process as this machine's `/proc` shows it, proven by its cgroup naming the
    /// container; `None` when it is not visible from here (a remote engine, another PID
    /// namespace) or has stopped. What a waiter holds a pidfd of, to learn of its end at once.
    pub(crate) fn first_process(&self) -> Option<crate::os::procfs::ProcId> {
        let pid = self.first_pid()?;
        let cgroup = crate::os::procfs::cgroup_of(pid)?;
        cgroup.contains(&self.id).then(|| crate::os::procfs::ProcId::of(pid)).flatten()
    }

    /// The engine's host pid of its first process, while it runs.
    fn first_pid(&self) -> Option<i32> {
        let id = self.id.clone();
        self.engine.run(CALL_LIMIT, "inspect", move |docker| async move { Ok(init_pid(&docker, &id).await) }).ok()?
    }

    /// The first TCP port its processes listen on (in its network namespace: the host's with
    /// `network_mode("host")`), for a container started with [`Ready::Listening`].
    pub fn port(&self) -> Option<u16> {
        self.listeners().iter().find_map(|l| l.addr.port())
    }

    /// The engine's view of the container (state, labels, mounts...).
    pub fn inspect(&self) -> Result<ContainerInspectResponse> {
        let id = self.id.clone();
        self.engine.run(CALL_LIMIT, "inspect", move |docker| async move { inspect(&docker, &id).await })
    }

    /// Stops (SIGTERM, `stop_timeout`, SIGKILL) and removes the container with its volumes,
    /// then its networks; for plain tests.
    pub fn remove(mut self) -> Result<ContainerTeardown> {
        let removal = self.removal();
        let result = self.engine.run(removal.limit(), REMOVING, move |d| removal.run(d));
        self.forget_record(result)
    }

    /// [`remove`](Self::remove) for async tests.
    pub async fn remove_async(mut self) -> Result<ContainerTeardown> {
        let removal = self.removal();
        let result = self.engine.run_async(removal.limit(), REMOVING, move |d| removal.run(d)).await;
        self.forget_record(result)
    }

    /// What teardown removes; marks the guard as handled so `Drop` does nothing more.
    fn removal(&mut self) -> Removal {
        self.removed = true;
        registry::guard_dropped(&self.guard, 0);
        Removal { id: self.id.clone(), networks: std::mem::take(&mut self.networks), stop: self.stop_timeout }
    }

    /// The ledger record goes only when the container is known to be gone: otherwise it is
    /// the evidence the sweep needs.
    fn forget_record(&mut self, result: Result<ContainerTeardown>) -> Result<ContainerTeardown> {
        if result.is_ok() {
            if let Some(entry) = self.ledger.take() {
                let _ = entry.remove();
            }
        }
        result
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let removal = self.removal();
        // Never panic in Drop; the engine thread does the work, we wait with a time limit.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.engine.run(removal.limit(), REMOVING, move |d| removal.run(d))
        }));
        match outcome {
            Ok(result) => {
                if let Err(e) = self.forget_record(result) {
                    crate::error::warn(&format!(
                        "reapkit: container {} (guard {}) was not removed: {e}",
                        self.id, self.guard
                    ));
                }
            }
            Err(_) => crate::error::warn(&format!("reapkit: removing container {} panicked", self.id)),
        }
    }
}

/// Creates the network (if any) and the container; reports what exists even on failure.
async fn create(docker: Docker, spec: Spec) -> Result<Created> {
    let mut created = Created { container: None, networks: Vec::new(), error: None };
    if let Some(name) = &spec.network {
        let request = NetworkCreateRequest {
            name: name.clone(),
            labels: Some(spec.labels.clone()),
            internal: Some(true),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => created.networks.push(name.clone()),
            Err(e) => {
                created.error = Some(docker_error("creating the network", e));
                return Ok(created);
            }
        }
    }
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.cmd.clone(),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone()),
        volumes: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
        host_config: Some(HostConfig { network_mode: spec.network_mode.clone(), ..Default::default() }),
        ..Default::default()
    };
    match docker.create_container(None::<CreateContainerOptions>, body).await {
        Ok(response) => created.container = Some(response.id),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message }) => {
            created.error = Some(Error::ImageMissing { image: spec.image.clone(), reason: message });
        }
        Err(e) => created.error = Some(docker_error("creating the container", e)),
    }
    Ok(created)
}

/// Starts the container and waits until it is ready. `ready_timeout` is a deadline for all
/// of it — start, every readiness probe, and the logs gathered for the error — not a timeout
/// per step: a 2 s timeout returns after 2 s, whatever the engine or the probe does.
async fn start_and_wait(docker: Docker, id: String, plan: StartPlan) -> Result<()> {
    let deadline = tokio::time::Instant::now() + plan.ready_timeout;
    let waited_for = match &plan.ready {
        Ready::Running => "the container to start".to_owned(),
        Ready::LogLine(text) => format!("log line {text:?}"),
        Ready::Exec(cmd) => format!("exec {cmd:?} exiting 0"),
        Ready::Listening(listen) => format!("a process of it listening on {listen}"),
    };
    let ready = tokio::time::timeout_at(deadline, async {
        docker.start_container(&id, None).await.map_err(|e| docker_error("starting the container", e))?;
        match &plan.ready {
            Ready::Running => Ok(true),
            Ready::LogLine(text) => {
                let options = LogsOptionsBuilder::new().follow(true).stdout(true).stderr(true).build();
                let mut stream = docker.logs(&id, Some(options));
                let mut seen = String::new();
                while let Some(Ok(chunk)) = stream.next().await {
                    seen.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                    if seen.contains(text.as_str()) {
                        return Ok(true);
                    }
                }
                Ok(false) // the stream ends when the container stops
            }
            Ready::Exec(cmd) => loop {
                if exec(docker.clone(), id.clone(), cmd.clone()).await.is_ok_and(|o| o.exit_code == 0) {
                    return Ok(true);
                }
                if !is_running(&docker, &id).await {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
            // A new socket raises no event: read again after a pause doubling from 1 to 20 ms.
            Ready::Listening(listen) => {
                let mut pause = Duration::from_millis(1);
                loop {
                    let Some(pid) = init_pid(&docker, &id).await else { return Ok(false) };
                    if listeners_of(pid).iter().any(|l| listen.matches(&l.addr)) {
                        return Ok(true);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            }
        }
    })
    .await;
    match ready {
        Ok(Ok(true)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(false)) | Err(_) => Err(not_ready(&docker, &id, &waited_for, plan.ready_timeout).await),
    }
}

/// The started container, or the start's error (the container then drops and is removed),
/// counted as a guard that failed to start.
fn started(container: Container, result: Result<()>) -> Result<Container> {
    if result.is_err() {
        registry::guard_failed(&container.guard);
    }
    result.map(|()| container)
}

/// How long gathering the state and logs for a not-ready error may take on top of the deadline.
const DIAGNOSE_LIMIT: Duration = Duration::from_millis(300);

/// The error for a container that did not become ready: exited (with its code) or too slow.
/// Its diagnostics are bounded: an engine that stalls them gets them left out.
async fn not_ready(docker: &Docker, id: &str, waited_for: &str, timeout: Duration) -> Error {
    let gathered = tokio::time::timeout(DIAGNOSE_LIMIT, async {
        (inspect(docker, id).await.ok().and_then(|i| i.state), logs(docker, id).await)
    })
    .await;
    let (state, logs) = gathered.unwrap_or((None, String::new()));
    let mut cut = logs.len().saturating_sub(LOG_TAIL);
    while !logs.is_char_boundary(cut) {
        cut += 1;
    }
    let tail = logs[cut..].to_owned();
    match state {
        Some(s) if s.running != Some(true) => {
            Error::ContainerExited { id: id.to_owned(), exit_code: s.exit_code.unwrap_or(-1), logs_tail: tail }
        }
        _ => Error::NotReady { id: id.to_owned(), waited_for: waited_for.to_owned(), timeout, logs_tail: tail },
    }
}

/// The host pid of a running container's first process; `None` once it has stopped.
async fn init_pid(docker: &Docker, id: &str) -> Option<i32> {
    let state = inspect(docker, id).await.ok()?.state?;
    state.running.filter(|&r| r)?;
    state.pid.and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 0)
}

/// What the processes of the container whose first process is `pid` listen on.
fn listeners_of(pid: i32) -> Vec<crate::guard::listening::Listener> {
    let pids: Vec<i32> = std::iter::once(pid).chain(crate::os::procfs::descendants(pid).iter().map(|d| d.pid)).collect();
    crate::guard::listening::of(&pids)
}

async fn is_running(docker: &Docker, id: &str) -> bool {
    inspect(docker, id).await.ok().and_then(|i| i.state).and_then(|s| s.running).unwrap_or(false)
}

async fn inspect(docker: &Docker, id: &str) -> Result<ContainerInspectResponse> {
    docker.inspect_container(id, None::<InspectContainerOptions>).await.map_err(|e| docker_error("inspect", e))
}

async fn logs(docker: &Docker, id: &str) -> String {
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
    let mut stream = docker.logs(id, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    text
}

async fn exec(docker: Docker, id: String, cmd: Vec<String>) -> Result<ExecOutput> {
    let options = CreateExecOptions {
        cmd: Some(cmd),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(&id, options).await.map_err(|e| docker_error("exec", e))?;
    let mut output = String::new();
    if let StartExecResults::Attached { output: mut stream, .. } =
        docker.start_exec(&exec.id, None).await.map_err(|e| docker_error("exec", e))?
    {
        while let Some(Ok(chunk)) = stream.next().await {
            output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
    }
    let inspected = docker.inspect_exec(&exec.id).await.map_err(|e| docker_error("exec", e))?;
    Ok(ExecOutput { exit_code: inspected.exit_code.unwrap_or(-1), output })
}

const REMOVING: &str = "removing the container";

/// What a container teardown removes: the container (after a stop of `stop`) and its networks.
pub(crate) struct Removal {
    id: String,
    networks: Vec<String>,
    stop: Duration,
}

impl Removal {
    /// Removal with no stop grace (`rm -f -v`): for leftovers, whose owner waits for nothing.
    pub(crate) fn forced(id: String) -> Removal {
        Removal { id, networks: Vec::new(), stop: Duration::ZERO }
    }

    /// The stop grace plus one engine call's worth of time.
    fn limit(&self) -> Duration {
        self.stop + CALL_LIMIT
    }

    /// Stop (SIGTERM, wait, SIGKILL), remove with volumes, remove networks. A container that
    /// is already gone counts as removed.
    pub(crate) async fn run(self, docker: Docker) -> Result<ContainerTeardown> {
        let Removal { id, networks, stop } = self;
        let started = Instant::now();
        if !id.is_empty() {
            let t = i32::try_from(stop.as_secs()).unwrap_or(i32::MAX);
            // With no grace, `rm -f` alone SIGKILLs: save the stop round trip. A stop error
            // (already stopped, already gone) is fine: removal with force decides.
            if t > 0 {
                let _ = docker.stop_container(&id, Some(StopContainerOptionsBuilder::new().t(t).build())).await;
            }
            let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
            match docker.remove_container(&id, Some(options)).await {
                Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(e) => return Err(docker_error("removing the container", e)),
            }
        }
        let mut networks_removed = 0;
        for network in &networks {
            match docker.remove_network(network).await {
                Ok(()) => networks_removed += 1,
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(e) => return Err(docker_error("removing the network", e)),
            }
        }
        Ok(ContainerTeardown { id, elapsed: started.elapsed(), networks_removed })
    }
}

pub(crate) fn docker_error(context: &str, e: bollard::errors::Error) -> Error {
    Error::Docker { context: context.to_owned(), reason: e.to_string() }
}
