//! Fixtures shared by a whole run: one server or container per run, whatever runs the tests.
//!
//! A [`Shared`] is a declarative spec (an argv with its readiness, or a `ContainerBuilder`)
//! that any test of a run asks for by name with [`Shared::attach`]. The first asker starts a
//! *fixture keeper* — the test binary re-executed, like the watchdog — which starts the fixture
//! with a guard of its own and serves a Unix socket beside the ledger; every later asker, in
//! this process (`cargo test`'s threads) or another (nextest's processes), connects to it.
//! A lock file held while starting makes "first" exact across processes.
//!
//! A connection is a lease: the keeper learns the attached test's pid and start time from the
//! kernel (`SO_PEERCRED`), and the kernel closes it when the test process dies, however it
//! dies — nothing to poll, nothing a killed test can forget to release.
//!
//! The keeper ends its fixture (and exits) when the run ends — its *run owner*, the process
//! that ran the tests (nextest, or `cargo` under `cargo test`), exits: a pidfd it polls — or
//! when it is signalled, or when its fixture exits. A keeper that is itself SIGKILLed has its
//! fixture ended by its own watchdog, as any test process would. With
//! [`reuse_for`](Shared::reuse_for) it serves every run of this user instead, and ends after
//! that long with no lease.
//!
//! Ownership: the keeper carries `REAPKIT_SHARED` (the fixture's key) and `REAPKIT_OWNER` = the
//! run owner. Under `reapkit wrap` it lives below the wrap of the test that started it, and is
//! spared there only while that owner is alive *and* an ancestor of the wrap (the run still
//! goes on); a sweep meeting it after its run ended first waits for it as for a working
//! watchdog, then takes it as a leak of the run.

mod keeper;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[cfg(feature = "docker")]
use crate::guard::container::ContainerBuilder;
use crate::error::{Error, Result};
use crate::evidence::identity::OwnerId;
use crate::guard::listening::{Listen, Listener};
use crate::evidence::ownership::{self, ENV_LEDGER_DIR, ENV_OWNER, ENV_RUN_ID, ENV_TEST};
use crate::os::procfs::{ProcId, Stat};
use crate::registry::{self, Attachment, HeldFd, LiveGuard};
use crate::{evidence::ledger, os};

pub(crate) use keeper::run as keeper_main;

pub use crate::evidence::fixture_files::clear_stale;
use crate::evidence::fixture_files::FixtureFiles;
pub use crate::evidence::ownership::ENV_SHARED;
/// Set on a fixture keeper only: its spec, as JSON. What makes a re-executed binary a keeper.
pub(crate) const ENV_SHARED_SPEC: &str = "REAPKIT_SHARED_SPEC";
/// The largest spec a keeper accepts, and the largest fixture description an asker reads.
const MAX_SPEC_BYTES: usize = 64 << 10;
/// How long an asker waits for a running keeper to describe its fixture.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);
/// What a keeper gets beyond the fixture's `ready_timeout` to start (an engine call, exec).
const KEEPER_MARGIN: Duration = Duration::from_secs(60);

/// A fixture shared by every test of a run that asks for it by name; see the module docs.
///
/// ```no_run
/// use reapkit::{Listen, Shared};
/// fn time_server() -> Shared {
///     Shared::command("time-server", ["python3", "-m", "http.server", "0", "--bind", "127.0.0.1"])
///         .listen(Listen::Tcp(0))
/// }
/// # fn a_test() -> reapkit::Result<()> {
/// let server = time_server().attach()?; // the first test starts it, the others attach
/// let port = server.port().expect("it listens");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a Shared does nothing until `attach`"]
pub struct Shared {
    spec: Spec,
    ledger_dir: Option<PathBuf>,
}

/// What a keeper is told to start: serialized into its environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Spec {
    name: String,
    fixture: Fixture,
    ready_timeout: Duration,
    reuse_idle: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Fixture {
    Command {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<PathBuf>,
        listen: Option<Listen>,
    },
    #[cfg(feature = "docker")]
    Container(ContainerBuilder),
}

// Without the `docker` feature a server is the only kind of fixture.
#[cfg_attr(not(feature = "docker"), allow(irrefutable_let_patterns))]
impl Shared {
    /// A shared server started as `argv` (program first). Give it a readiness with
    /// [`listen`](Self::listen): without one it counts as ready once started.
    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(name: &str, argv: I) -> Shared {
        let fixture = Fixture::Command {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            listen: None,
        };
        Shared::new(name, fixture)
    }

    /// A shared container, as `builder` describes it (its readiness, `wait_for`, included).
    #[cfg(feature = "docker")]
    pub fn container(name: &str, builder: ContainerBuilder) -> Shared {
        Shared::new(name, Fixture::Container(builder))
    }

    fn new(name: &str, fixture: Fixture) -> Shared {
        let spec =
            Spec { name: name.to_owned(), fixture, ready_timeout: crate::guard::DEFAULT_READY_TIMEOUT, reuse_idle: None };
        Shared { spec, ledger_dir: None }
    }

    /// An environment variable of the server (for a container, use its builder's `env`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        if let Fixture::Command { env, .. } = &mut self.spec.fixture {
            env.push((key.to_owned(), value.to_owned()));
        }
        self
    }

    /// The server's working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        if let Fixture::Command { cwd, .. } = &mut self.spec.fixture {
            *cwd = Some(dir.into());
        }
        self
    }

    /// Ready once the server's tree listens on `listen` (as [`ProcessBuilder::listen`]); the
    /// bound port is then in [`SharedFixture::port`].
    ///
    /// [`ProcessBuilder::listen`]: crate::ProcessBuilder::listen
    pub fn listen(mut self, on: Listen) -> Self {
        if let Fixture::Command { listen, .. } = &mut self.spec.fixture {
            *listen = Some(on);
        }
        self
    }

    /// The deadline for the first start to be ready (default [`DEFAULT_READY_TIMEOUT`](crate::DEFAULT_READY_TIMEOUT)).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.spec.ready_timeout = timeout;
        self
    }

    /// Serve every run of this user, not only this one, and end after `idle` with no test
    /// attached: what a developer re-running one test wants. The fixture is then no run's
    /// leftover, and sweeps leave it to its idle time.
    pub fn reuse_for(mut self, idle: Duration) -> Self {
        self.spec.reuse_idle = Some(idle);
        self
    }

    /// The ledger directory whose `shared/` holds the keeper's socket and lock (default as for
    /// guards: `REAPKIT_LEDGER_DIR`, else `<target dir>/reapkit`).
    pub fn ledger_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ledger_dir = Some(dir.into());
        self
    }

    /// Attaches this test to the run's fixture, starting it if no test has: blocks until it is
    /// ready (the lock of a start in progress is held at most that start's own deadline).
    /// The lease ends when the returned [`SharedFixture`] drops, or the process dies.
    #[track_caller]
    pub fn attach(&self) -> Result<SharedFixture> {
        let created_at = std::panic::Location::caller();
        let spec = &self.spec;
        if !crate::os::PROC_TABLE {
            // Its keeper names a lease's test by the socket's peer and watches the run owner,
            // a process that is not its child: neither has a portable call.
            return Err(Error::Unsupported {
                what: "a shared fixture",
                source: std::io::Error::other(
                    "the portable backend can neither name a socket's peer nor watch the run owner (the test \
                     runner) for its exit; start the fixture per test, or run on Linux",
                ),
            });
        }
        self.check()?;
        let run_owner = spec.reuse_idle.is_none().then(run_owner);
        let paths = FixtureFiles::new(&self.shared_dir()?, spec, run_owner.as_ref())?;
        if let Some(lease) = paths.connect(spec)? {
            return Ok(lease.registered(created_at));
        }
        let _lock = paths.lock()?;
        if let Some(lease) = paths.connect(spec)? {
            return Ok(lease.registered(created_at));
        }
        let _ = std::fs::remove_file(&paths.sock);
        let keeper = paths.start_keeper(spec, run_owner.as_ref())?;
        // It may be our child: when this process is a subreaper, the orphaned keeper is ours.
        registry::note_guardian(keeper);
        let mut lease = paths.connect(spec)?.ok_or_else(|| paths.failed(spec, "it exited as soon as it was ready"))?;
        lease.started_here = true;
        Ok(lease.registered(created_at))
    }

    /// Where this process's [`attach`](Self::attach) finds the keeper's socket: in the
    /// ledger's `shared/`, named by the fixture's key (its name, and a hash of the spec with the
    /// run, or with the user when reused). For diagnosis: `ls`, `ss -xl`, the `.log` beside it.
    pub fn socket_path(&self) -> Result<PathBuf> {
        self.check()?;
        let owner = self.spec.reuse_idle.is_none().then(run_owner);
        Ok(FixtureFiles::new(&self.shared_dir()?, &self.spec, owner.as_ref())?.sock)
    }

    fn shared_dir(&self) -> Result<PathBuf> {
        let dir = ledger::resolve(self.ledger_dir.as_deref())?.join("shared");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| Error::Ledger { dir: dir.clone(), source })?;
        Ok(dir)
    }

    fn check(&self) -> Result<()> {
        let bad = |reason: String| Error::Shared {
            name: crate::evidence::escape::evidence(&self.spec.name).into_owned(),
            reason,
            log: None,
        };
        if !ownership::valid_id(&self.spec.name) || self.spec.name.len() > 64 {
            return Err(bad("a fixture name is 1 to 64 letters, digits and `._-+@:`".into()));
        }
        match &self.spec.fixture {
            Fixture::Command { argv, .. } if argv.is_empty() => Err(bad("its argv is empty: give the program".into())),
            _ => Ok(()),
        }
    }
}

/// The run a shared fixture lives for: the process that runs the tests. The test process's
/// parent — `cargo` under `cargo test`, nextest under nextest — unless that is the `reapkit
/// wrap` supervising this test, whose parent (nextest) it is then. A test process with no
/// parent to speak of (PID 1 adopted it) is its own run.
fn run_owner() -> OwnerId {
    let me = std::process::id() as i32;
    let parent_of = |pid: i32| Stat::read(pid).ok().map(|s| s.ppid).filter(|&p| p > 1);
    let parent = match (parent_of(me), ownership::direct_supervisor()) {
        (Some(parent), Some(wrap)) if wrap.process.pid == parent => parent_of(parent),
        (parent, _) => parent,
    };
    parent.and_then(ProcId::of).map(OwnerId::here).unwrap_or_else(|| ownership::Owner::current().id.clone())
}

/// FNV-1a: a key that every binary of the run computes alike (std's hasher promises no such
/// stability across builds).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl FixtureFiles {
    /// The key: the name, and a hash of the spec with the run owner (or, reused, the user).
    fn new(dir: &Path, spec: &Spec, run_owner: Option<&OwnerId>) -> Result<FixtureFiles> {
        let whose = run_owner.map_or_else(|| format!("uid {}", crate::os::procfs::my_uid()), ToString::to_string);
        let text =
            serde_json::to_string(&(spec, whose)).map_err(|e| Error::io("describing a shared fixture", e.into()))?;
        let key = format!("{}-{:016x}", spec.name, fnv1a(text.as_bytes()));
        let paths = FixtureFiles::at(dir, &key);
        // sun_path holds 108 bytes with its NUL.
        if paths.sock.as_os_str().len() > 107 {
            return Err(Error::Shared {
                name: spec.name.clone(),
                reason: format!(
                    "its socket path {} is longer than a Unix socket allows (107 bytes): point REAPKIT_LEDGER_DIR \
                     (or `.ledger_dir()`) at a shorter directory",
                    paths.sock.display()
                ),
                log: None,
            });
        }
        Ok(paths)
    }

    /// The error for `reason`, with the tail of the keeper's log (its fixture's failure).
    fn failed(&self, spec: &Spec, reason: &str) -> Error {
        let tail = log_tail(&self.log);
        let reason = match tail.trim() {
            // The keeper's own word on the failure is the reason already.
            tail if tail.is_empty() || tail.contains(reason) => reason.to_owned(),
            tail => format!("{reason}\n  its keeper's log (tail):\n{tail}"),
        };
        Error::Shared { name: spec.name.clone(), reason, log: Some(self.log.clone()) }
    }

    /// Holds the start lock (released when the file closes, or the process dies). Waits for a
    /// start in progress, which its own deadline bounds.
    fn lock(&self) -> Result<std::fs::File> {
        let file = crate::os::safe_fs::open_lock(&self.lock)
            .map_err(|e| Error::io(&format!("opening {} (delete it if it is not reapkit's)", self.lock.display()), e))?;
        loop {
            // SAFETY: flock on a valid fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(file);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(&format!("locking {}", self.lock.display()), e));
            }
        }
    }

    /// A lease on the running keeper, or `None` if none runs (no socket, or nobody on it).
    fn connect(&self, spec: &Spec) -> Result<Option<SharedFixture>> {
        let conn = match UnixStream::connect(&self.sock) {
            Ok(c) => c,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => return Ok(None),
            Err(e) => return Err(Error::io(&format!("connecting to {}", self.sock.display()), e)),
        };
        let fail = |why: String| self.failed(spec, &why);
        let peer = os::peer_of(conn.as_fd()).map_err(|e| fail(format!("its socket's peer cannot be read: {e}")))?;
        if peer.uid != crate::os::procfs::my_uid() {
            return Err(fail(format!(
                "{} is served by uid {}, not us: not reapkit's keeper. Remove the file",
                self.sock.display(),
                peer.uid
            )));
        }
        let line = match read_line(&mut &conn, os::deadline_in(ATTACH_TIMEOUT)) {
            Line::Got(line) => line,
            // A keeper that is ending closes new connections unanswered: as if none ran.
            Line::Eof => return Ok(None),
            Line::TimedOut => {
                return Err(fail(format!("its keeper did not describe the fixture within {ATTACH_TIMEOUT:?}")))
            }
            Line::Failed(e) => return Err(fail(format!("reading its keeper's description: {e}"))),
        };
        let info: FixtureInfo = serde_json::from_slice(&line)
            .map_err(|e| fail(format!("its keeper's description is not reapkit's ({e})")))?;
        if info.keeper.pid != peer.pid || info.name != spec.name {
            return Err(fail(format!(
                "the description names keeper pid {} of `{}`, but pid {} answered",
                info.keeper.pid,
                crate::evidence::escape::evidence(&info.name),
                peer.pid
            )));
        }
        Ok(Some(SharedFixture { info, started_here: false, conn, id: String::new() }))
    }

    /// Starts the keeper and waits for it to say its fixture is ready; returns its pid.
    fn start_keeper(&self, spec: &Spec, run_owner: Option<&OwnerId>) -> Result<i32> {
        let json = serde_json::to_string(spec).map_err(|e| Error::io("describing a shared fixture", e.into()))?;
        let log = crate::os::safe_fs::create_fresh(&self.log)
            .map_err(|e| Error::io(&format!("creating {} (delete it if it is not reapkit's)", self.log.display()), e))?;
        let mut cmd = Command::new(crate::os::self_exe());
        cmd.arg0("reapkit-shared").arg(keeper::KEEPER_ARG);
        // reapkit's markers are the keeper's own, never the asking test's; of its settings,
        // those its fixture's guard reads pass through.
        let kept = [crate::containment::ENV_CONTAINMENT, crate::guard::ENV_TERM_GRACE, crate::guard::ENV_EOF_GRACE];
        for (key, _) in std::env::vars_os() {
            let text = key.to_string_lossy();
            if text.starts_with("REAPKIT_") && !kept.contains(&&*text) || text == "NEXTEST_TEST_NAME" {
                cmd.env_remove(key);
            }
        }
        cmd.env(ENV_SHARED, &self.key)
            .env(ENV_SHARED_SPEC, json)
            .env(ENV_RUN_ID, &ownership::Owner::current().run_id)
            .env(ENV_TEST, format!("shared:{}", spec.name))
            .env(ENV_LEDGER_DIR, self.dir.parent().unwrap_or(&self.dir));
        if let Some(owner) = run_owner {
            cmd.env(ENV_OWNER, owner.to_string());
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
        }
        let mut child = cmd.spawn().map_err(|e| Error::io("starting a shared fixture's keeper", e))?;
        let ready = child.stdout.take().map(|out| read_ready(out, spec.ready_timeout + KEEPER_MARGIN));
        // It forks the keeper and exits at once, before anything else.
        let _ = child.wait();
        match ready {
            Some(Ok(ReadyLine::Ready(pid))) => Ok(pid),
            Some(Ok(ReadyLine::Failed(why))) => Err(self.failed(spec, &why)),
            Some(Err(why)) => Err(self.failed(spec, &why)),
            None => Err(self.failed(spec, "its keeper had no stdout")),
        }
    }
}

/// The last 2 KiB of a keeper's log, each line made safe to print and indented.
fn log_tail(path: &Path) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut file) = crate::os::safe_fs::open_read(path) else { return String::new() };
    let len = file.metadata().map_or(0, |m| m.len());
    let mut tail = Vec::new();
    if file.seek(SeekFrom::Start(len.saturating_sub(2048))).is_err() || file.take(2048).read_to_end(&mut tail).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&tail).lines().map(|l| format!("    {}\n", crate::evidence::escape::evidence(l))).collect()
}

enum ReadyLine {
    Ready(i32),
    Failed(String),
}

/// What a keeper said, read with a deadline for the whole line (a peer that trickles bytes
/// cannot stretch it).
enum Line {
    /// Up to the first newline, or everything before EOF, or the first `MAX_SPEC_BYTES`.
    Got(Vec<u8>),
    /// EOF before any byte.
    Eof,
    TimedOut,
    Failed(std::io::Error),
}

fn read_line(from: &mut (impl Read + AsFd), deadline: Instant) -> Line {
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    while !line.contains(&b'\n') && line.len() < MAX_SPEC_BYTES {
        if !os::wait_readable(from.as_fd(), deadline) {
            return Line::TimedOut;
        }
        match from.read(&mut buf) {
            Ok(0) if line.is_empty() => return Line::Eof,
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock) => {}
            Err(e) => return Line::Failed(e),
        }
    }
    Line::Got(line)
}

/// The keeper's one line: `ready <pid>` or `error <why>`, within `timeout`.
fn read_ready(mut out: std::process::ChildStdout, timeout: Duration) -> std::result::Result<ReadyLine, String> {
    let line = match read_line(&mut out, os::deadline_in(timeout)) {
        Line::Got(line) => line,
        Line::Eof => return Err("its keeper exited without a word".into()),
        Line::TimedOut => return Err(format!("it was not ready within {timeout:?}")),
        Line::Failed(e) => return Err(format!("its keeper's pipe failed: {e}")),
    };
    let text = String::from_utf8_lossy(&line);
    let text = text.lines().next().unwrap_or_default();
    match text.split_once(' ') {
        Some(("ready", pid)) => pid.parse().map(ReadyLine::Ready).map_err(|_| format!("its keeper said {text:?}")),
        Some(("error", why)) => Ok(ReadyLine::Failed(crate::evidence::escape::evidence(why).into_owned())),
        _ => Err(format!("its keeper said {:?}", crate::evidence::escape::evidence(text))),
    }
}

/// What a test attached to a shared fixture can reach it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixtureInfo {
    /// The name it was asked for by.
    pub name: String,
    /// The run it serves (the id of the run that started it, when reused across runs).
    pub run_id: String,
    /// Its keeper.
    pub keeper: ProcId,
    /// The process whose exit ends it; `None` when reused across runs.
    pub run_owner: Option<OwnerId>,
    /// A server's pid.
    pub pid: Option<i32>,
    /// Where a server's tree (or a container's processes) listens, as `/proc` shows it once
    /// ready.
    pub listeners: Vec<Listener>,
    /// A container's id.
    pub container_id: Option<String>,
    /// The environment it was given.
    pub env: BTreeMap<String, String>,
}

/// A test's lease on a shared fixture ([`Shared::attach`]): its connection details, for as
/// long as it lives. Dropping it ends the lease, not the fixture.
pub struct SharedFixture {
    info: FixtureInfo,
    started_here: bool,
    conn: UnixStream,
    /// Its id in the registry, where a lease held past its test is reported.
    id: String,
}

impl SharedFixture {
    fn registered(mut self, created_at: &'static std::panic::Location<'static>) -> SharedFixture {
        self.id = ownership::next_guard_id();
        let guard = LiveGuard {
            id: self.id.clone(),
            kind: "SharedFixture",
            what: self.info.name.clone(),
            created_at,
            fds: vec![HeldFd { fd: self.conn.as_raw_fd(), target: None }],
            child: None,
            cgroup: None,
        };
        registry::lease_created(Attachment::current().as_ref(), guard);
        self
    }

    /// Everything the keeper said of it.
    pub fn info(&self) -> &FixtureInfo {
        &self.info
    }

    /// The first TCP port a server's tree (or a container's processes) listens on.
    pub fn port(&self) -> Option<u16> {
        self.info.listeners.iter().find_map(|l| l.addr.port())
    }

    /// A server's pid.
    pub fn pid(&self) -> Option<i32> {
        self.info.pid
    }

    /// A container's id.
    pub fn container_id(&self) -> Option<&str> {
        self.info.container_id.as_deref()
    }

    /// The environment it was given.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.info.env
    }

    /// Whether this attach started it (the run's first), rather than joining it.
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Waits up to `timeout` for the fixture to end (its run over, its server gone, its keeper
    /// signalled); `true` if it did. The keeper closes every lease as it ends.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        os::wait_readable(self.conn.as_fd(), os::deadline_in(timeout))
    }
}

impl std::fmt::Debug for SharedFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFixture").field("info", &self.info).field("started_here", &self.started_here).finish()
    }
}

impl Drop for SharedFixture {
    fn drop(&mut self) {
        registry::lease_dropped(&self.id);
    }
}
