//! [`ProcessGuard`]: a child process whose whole tree is torn down when the guard goes.
//!
//! Spawning sets up everything teardown relies on, before the child runs a single
//! instruction of its own: its own process group, the ownership environment, a pidfd, the
//! subreaper flag on the test process, a ledger record and the stderr drain.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::budget::{Budget, BudgetWatch};
use crate::error::{Error, Result};
use crate::ledger;
use crate::ownership::{self, Owner, ENV_GUARD, ENV_OWNER, ENV_RUN_ID, ENV_TEST};
use crate::procfs::{self, ProcId};
use crate::scope::Attachment;
use crate::stderr_ring::{StderrRing, DEFAULT_RING_BYTES};
use crate::sys;
use crate::teardown::{self, Teardown};
use crate::watchdog;

/// How long to wait for the child to exit by itself after its stdin closes.
///
/// Idle MCP servers exit on stdin EOF in 8–113 ms (Node direct, through npx, Python), so a few
/// hundred ms covers them; the SDKs' 2 s would cost minutes over a suite of 200 servers.
pub const DEFAULT_EOF_GRACE: Duration = Duration::from_millis(300);
/// How long to wait after SIGTERM to the group before SIGKILL (the MCP SDKs use about 2 s).
pub const DEFAULT_TERM_GRACE: Duration = Duration::from_secs(2);
/// Environment override of the EOF grace, e.g. `REAPKIT_EOF_GRACE=500ms`.
pub const ENV_EOF_GRACE: &str = "REAPKIT_EOF_GRACE";
/// Environment override of the SIGTERM grace, e.g. `REAPKIT_TERM_GRACE=5s`.
pub const ENV_TERM_GRACE: &str = "REAPKIT_TERM_GRACE";

/// The two waits of the teardown protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Graces {
    /// After closing stdin (and our end of stdout): wait this long for a clean exit.
    pub eof: Duration,
    /// After SIGTERM to the group: wait this long before SIGKILL.
    pub term: Duration,
}

impl Graces {
    /// The defaults, overridden by `REAPKIT_EOF_GRACE` / `REAPKIT_TERM_GRACE` when set.
    pub fn from_env() -> Result<Graces> {
        Ok(Graces {
            eof: duration_from_env(ENV_EOF_GRACE)?.unwrap_or(DEFAULT_EOF_GRACE),
            term: duration_from_env(ENV_TERM_GRACE)?.unwrap_or(DEFAULT_TERM_GRACE),
        })
    }
}

fn duration_from_env(var: &'static str) -> Result<Option<Duration>> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => humantime::parse_duration(value.trim())
            .map(Some)
            .map_err(|e| Error::Config { var, value, reason: e.to_string() }),
        _ => Ok(None),
    }
}

/// A process of the guard's tree, held by pidfd so that a recycled pid is never signalled.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) id: ProcId,
    pub(crate) pidfd: OwnedFd,
}

impl Member {
    /// Opens a pidfd for `id` and checks, *after* opening it, that the pid still has the same
    /// start time: then the fd names that very process, and can never name another.
    pub(crate) fn open(id: ProcId) -> Option<Member> {
        let pidfd = sys::pidfd_open(id.pid).ok()?;
        ProcId::of(id.pid).filter(|now| *now == id).map(|id| Member { id, pidfd })
    }

    /// Whether it has exited (a zombie counts as exited).
    pub(crate) fn has_exited(&self) -> bool {
        use std::os::fd::AsFd;
        sys::wait_readable(self.pidfd.as_fd(), Instant::now())
    }
}

/// Builds a [`ProcessGuard`]: start from a [`std::process::Command`], adjust, [`spawn`](Self::spawn).
#[derive(Debug)]
pub struct ProcessBuilder {
    command: Command,
    eof_grace: Option<Duration>,
    term_grace: Option<Duration>,
    stdout: Option<Stdio>,
    ring_bytes: usize,
    scan_proc: bool,
    ledger_dir: Option<PathBuf>,
}

impl ProcessBuilder {
    /// The wait for a clean exit after stdin closes. Default [`DEFAULT_EOF_GRACE`], or `REAPKIT_EOF_GRACE`.
    pub fn eof_grace(mut self, grace: Duration) -> Self {
        self.eof_grace = Some(grace);
        self
    }

    /// The wait between SIGTERM and SIGKILL. Default [`DEFAULT_TERM_GRACE`], or `REAPKIT_TERM_GRACE`.
    pub fn term_grace(mut self, grace: Duration) -> Self {
        self.term_grace = Some(grace);
        self
    }

    /// Where the child's stdout goes. Default: discarded. With [`Stdio::piped`], take it
    /// with [`ProcessGuard::take_stdout`].
    pub fn stdout(mut self, stdout: impl Into<Stdio>) -> Self {
        self.stdout = Some(stdout.into());
        self
    }

    /// How many bytes of stderr to keep for error messages (default 64 KiB).
    pub fn stderr_ring(mut self, bytes: usize) -> Self {
        self.ring_bytes = bytes.max(1);
        self
    }

    /// Whether teardown scans `/proc` for escapees carrying the guard's marker (default on).
    ///
    /// Off saves ~4 µs per process on the machine per teardown; escapees re-parented to the
    /// test process (the subreaper) are still found, only ones that reached another
    /// subreaper or PID 1 are then missed.
    pub fn scan_proc(mut self, scan: bool) -> Self {
        self.scan_proc = scan;
        self
    }

    /// The ledger directory for this guard's record (default: `REAPKIT_LEDGER_DIR`, else
    /// `<target dir>/reapkit`).
    pub fn ledger_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ledger_dir = Some(dir.into());
        self
    }

    /// Starts the child. Nothing is left behind on error: a child that started is torn down.
    pub fn spawn(mut self) -> Result<ProcessGuard> {
        crate::identity::Viewpoint::current().usable().map_err(|why| Error::Unsupported {
            what: "a /proc of this PID namespace",
            source: std::io::Error::other(why.to_owned()),
        })?;
        let scope = Attachment::current();
        let env_graces = Graces::from_env()?;
        // The builder's word first, then the test scope's, then the environment's.
        let pick = |own: Option<Duration>, of_scope: fn(&Attachment) -> Option<Duration>, env: Duration| {
            own.or_else(|| scope.as_ref().and_then(of_scope)).unwrap_or(env)
        };
        let graces = Graces {
            eof: pick(self.eof_grace, Attachment::eof_grace, env_graces.eof),
            term: pick(self.term_grace, Attachment::term_grace, env_graces.term),
        };
        let ledger_dir = ledger::resolve(self.ledger_dir.as_deref())?;
        ownership::become_subreaper();
        watchdog::ensure(&ledger_dir);
        if let Some(scope) = &scope {
            scope.register(&ledger_dir, None);
        }

        let owner = Owner::current();
        let guard_id = ownership::next_guard_id();
        let test = Attachment::test_name(scope.as_ref());
        let program = self.command.get_program().to_string_lossy().into_owned();
        self.command
            .env(ENV_RUN_ID, &owner.run_id)
            .env(ENV_OWNER, owner.marker())
            .env(ENV_GUARD, &guard_id)
            .env(ENV_TEST, &test)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(self.stdout.take().unwrap_or_else(Stdio::null))
            .stderr(Stdio::piped());
        let mut child = self.command.spawn().map_err(|source| spawn_error(&program, source))?;

        let pid = child.id() as i32;
        // The child is ours and not yet waited for, so its pid cannot be recycled here.
        let leader = match sys::pidfd_open(pid) {
            Ok(pidfd) => Member { id: ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 }), pidfd },
            Err(source) => {
                // Without a pidfd we cannot tear down safely: undo the spawn and say why.
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                let _ = child.wait();
                if crate::error::fd_limit_hint(&source).is_some() {
                    return Err(spawn_error(&program, source));
                }
                return Err(Error::Unsupported { what: "pidfd_open", source });
            }
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().and_then(|s| StderrRing::start(s, self.ring_bytes).ok());
        let mut guard = ProcessGuard {
            id: guard_id,
            program,
            leader,
            child,
            stdin,
            stdout,
            stderr,
            graces,
            scan_proc: self.scan_proc,
            ledger: None,
            spawned: Instant::now(),
            report: None,
        };
        let command = std::iter::once(self.command.get_program())
            .chain(self.command.get_args())
            .map(|a: &OsStr| a.to_string_lossy().into_owned())
            .collect();
        let cwd = self.command.get_current_dir().map(PathBuf::from).or_else(|| std::env::current_dir().ok());
        let record = ledger::Record::new(
            guard.id.clone(),
            test,
            ledger::Resource::Process { process: guard.leader.id, pgid: pid, command, cwd },
        );
        // On error `guard` drops here and tears the child down: nothing leaks.
        guard.ledger = Some(ledger::Entry::write(&ledger_dir, &record)?);
        Ok(guard)
    }
}

fn spawn_error(program: &str, source: std::io::Error) -> Error {
    let hint = crate::error::fd_limit_hint(&source).unwrap_or_else(|| {
        match source.kind() {
            std::io::ErrorKind::NotFound => "Is it installed? A bare name is looked up in PATH; give a path otherwise",
            std::io::ErrorKind::PermissionDenied => "Is the file executable (chmod +x) and its directory searchable?",
            _ => "Check the program path, its arguments and the working directory",
        }
        .to_owned()
    });
    Error::Spawn { program: program.to_owned(), source, hint }
}

/// A guarded child process and everything it spawns.
///
/// Dropping it — at the end of a test, on panic, on early return or `?` — runs the teardown
/// protocol on the whole tree: close stdin (and our end of stdout), wait
/// [`Graces::eof`], SIGTERM the process group, wait [`Graces::term`], SIGKILL, then kill
/// escapees carrying this guard's marker, reap every zombie of the tree, and remove the
/// ledger record. [`shutdown`](Self::shutdown) does the same and returns the [`Teardown`]
/// report.
///
/// ```
/// use std::process::Command;
/// let mut cmd = Command::new("sleep");
/// cmd.arg("1000");
/// let server = reapkit::ProcessGuard::spawn(cmd)?;
/// let info = server.info()?;
/// assert!(info.threads >= 1);
/// let report = server.shutdown();
/// assert!(report.is_clean());
/// # Ok::<(), reapkit::Error>(())
/// ```
#[derive(Debug)]
pub struct ProcessGuard {
    pub(crate) id: String,
    pub(crate) program: String,
    pub(crate) leader: Member,
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Option<ChildStdout>,
    pub(crate) stderr: Option<StderrRing>,
    pub(crate) graces: Graces,
    pub(crate) scan_proc: bool,
    pub(crate) ledger: Option<ledger::Entry>,
    spawned: Instant,
    report: Option<Teardown>,
}

/// What a `get_server_info` tool would show about a guarded process, read from `/proc`.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: i32,
    pub pgid: i32,
    pub uptime: Duration,
    pub rss_bytes: u64,
    pub fds: usize,
    pub threads: u64,
    /// Live processes below it, across sessions (a double-forked daemon re-parented to the
    /// test process is not below it any more: teardown finds those by marker).
    pub descendants: Vec<ProcId>,
}

impl ProcessGuard {
    /// Starts a builder for `command`.
    pub fn builder(command: Command) -> ProcessBuilder {
        ProcessBuilder {
            command,
            eof_grace: None,
            term_grace: None,
            stdout: None,
            ring_bytes: DEFAULT_RING_BYTES,
            scan_proc: true,
            ledger_dir: None,
        }
    }

    /// Spawns `command` with the default settings.
    pub fn spawn(command: Command) -> Result<ProcessGuard> {
        ProcessGuard::builder(command).spawn()
    }

    /// The guard id: the value of `REAPKIT_GUARD` in the child's environment.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> i32 {
        self.leader.id.pid
    }

    /// The child's identity: pid and start time.
    pub fn proc_id(&self) -> ProcId {
        self.leader.id
    }

    /// The program as given to the builder.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The graces this guard tears down with.
    pub fn graces(&self) -> Graces {
        self.graces
    }

    /// The child's stdin; closing it (dropping the guard) is the polite "please exit".
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// Takes the child's stdout, if it was piped.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// The last bytes the child wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr.as_ref().map(StderrRing::tail).unwrap_or_default()
    }

    /// The path of this guard's ledger record, while it exists.
    pub fn ledger_path(&self) -> Option<&std::path::Path> {
        self.ledger.as_ref().map(ledger::Entry::path)
    }

    /// Whether the child itself has exited (its descendants may live on).
    pub fn has_exited(&self) -> bool {
        self.leader.has_exited()
    }

    /// Pid, group, uptime, RSS, FD count, threads and live descendants of the child.
    pub fn info(&self) -> Result<ProcessInfo> {
        let pid = self.pid();
        let usage = procfs::Usage::read(self.leader.id)
            .map_err(|source| Error::Io { context: format!("reading /proc/{pid} of `{}`", self.program), source })?;
        Ok(ProcessInfo {
            pid,
            pgid: usage.pgid,
            uptime: self.spawned.elapsed(),
            rss_bytes: usage.rss_bytes,
            fds: usage.fds,
            threads: usage.threads,
            descendants: usage.descendants,
        })
    }

    /// Starts checking the child against `budget` (reading 0, the baseline unless it has a
    /// warm-up). The watch copies the child's identity instead of borrowing the guard, so the
    /// workload between samples may use the guard, or the `McpServer` around it, mutably.
    pub fn watch(&self, budget: Budget) -> Result<BudgetWatch> {
        BudgetWatch::start(self.leader.id, self.program.clone(), budget)
    }

    /// Tears the whole tree down now and reports how it went.
    pub fn shutdown(mut self) -> Teardown {
        self.teardown()
    }

    /// Runs the teardown protocol once; later calls return the first report.
    pub(crate) fn teardown(&mut self) -> Teardown {
        if let Some(report) = &self.report {
            return report.clone();
        }
        let report = teardown::run(self);
        self.report = Some(report.clone());
        report
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if self.report.is_some() {
            return;
        }
        // Never panic in Drop: a panic while already panicking aborts the test binary.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.teardown()));
        match outcome {
            Ok(report) if report.is_clean() => {}
            Ok(report) => teardown::warn(&format!(
                "reapkit: teardown of `{}` (guard {}) was not clean: {report}",
                self.program, self.id
            )),
            Err(_) => teardown::warn(&format!(
                "reapkit: teardown of `{}` (guard {}) panicked; its tree may be left running",
                self.program, self.id
            )),
        }
    }
}
