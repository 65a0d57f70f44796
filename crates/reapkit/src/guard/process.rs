//! [`ProcessGuard`]: a child process whose whole tree is torn down when the guard goes.
//!
//! Spawning sets up everything teardown relies on, before the child runs a single
//! instruction of its own: its own process group, the ownership environment, a pidfd, the
//! subreaper flag on the test process, a ledger record and the stderr drain.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::guard::budget::{Budget, BudgetWatch};
use crate::containment::{self, cgroup::GuardCgroup, keeper, Containment};
use crate::error::{Error, Result};
use crate::evidence::ledger;
use crate::guard::listening::{self, Listen, Listener};
use crate::os::member::Member;
use crate::os;
use crate::evidence::ownership::{self, Owner, ENV_GUARD, ENV_OWNER, ENV_RUN_ID, ENV_TEST};
use crate::os::procfs::{self, ProcId};
use crate::registry::{self, Attachment};
use crate::guard::stderr_ring::{StderrRing, DEFAULT_RING_BYTES};
pub use crate::guard::teardown::Graces;
use crate::guard::teardown::{self, Holder, Teardown, Tree};

pub use super::{DEFAULT_EOF_GRACE, DEFAULT_READY_TIMEOUT, DEFAULT_TERM_GRACE, ENV_EOF_GRACE, ENV_TERM_GRACE};

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
            .map_err(|e| Error::Config { var, value, reason: format!("{e}. Use a duration such as `300ms` or `2s`") }),
        _ => Ok(None),
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
    containment: Option<Containment>,
    /// Readiness: the tree listening on this, within `ready_timeout`.
    listen: Option<Listen>,
    ready_timeout: Option<Duration>,
    /// What reports call the guard: `ProcessGuard`, or `McpServer` for one built by `mcp()`.
    pub(crate) kind: &'static str,
    /// Where the test asked for it: the guard's creation site in reports.
    created_at: &'static std::panic::Location<'static>,
}

impl ProcessBuilder {
    /// How the guard holds its tree (default: `REAPKIT_CONTAINMENT`, else the strongest this
    /// machine allows — see [`Containment`]). Asking for one the machine cannot give (a cgroup
    /// without a writable cgroup2 subtree) is an error at spawn.
    pub fn containment(mut self, containment: Containment) -> Self {
        self.containment = Some(containment);
        self
    }

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

    /// With marker-only containment: whether teardown scans `/proc` for escapees carrying the
    /// guard's marker (default on). The cgroup and keeper containments know their members
    /// without a scan.
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

    /// Makes [`spawn`](Self::spawn) return only once the guarded tree listens on `listen`,
    /// proven from `/proc` (the tree's own socket, never a connection that any process on the
    /// port could answer), and the port it bound is [`ProcessGuard::port`]. With
    /// [`Listen::Tcp(0)`](Listen::Tcp) any TCP port will do: start the server on port 0 and
    /// learn the real one here, even if it logs another.
    ///
    /// A TCP port already held by a process outside the tree, before the spawn or while
    /// waiting, is [`Error::PortHeld`], naming the holder (its command, whether reapkit started
    /// it, its test, whether that test still runs, the command that reaps it). Not listening
    /// within [`ready_timeout`](Self::ready_timeout), or exiting first, is
    /// [`Error::NotListening`]. Either way the tree is torn down.
    ///
    /// ```
    /// # use std::process::Command;
    /// use reapkit::{Listen, ProcessGuard};
    /// let mut cmd = Command::new("python3");
    /// cmd.args(["-m", "http.server", "0", "--bind", "127.0.0.1"]);
    /// let server = ProcessGuard::builder(cmd).listen(Listen::Tcp(0)).spawn()?;
    /// let port = server.port().expect("listening");
    /// assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    /// # Ok::<(), reapkit::Error>(())
    /// ```
    pub fn listen(mut self, listen: Listen) -> Self {
        self.listen = Some(listen);
        self
    }

    /// The deadline for [`listen`](Self::listen) readiness, from the spawn (default
    /// [`DEFAULT_READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = Some(timeout);
        self
    }

    /// What a server that speaks over its port, not its stdin, needs unless told otherwise:
    /// readiness on any TCP port within `timeout`, and no EOF grace (it does not read stdin).
    #[cfg(feature = "rmcp-http")]
    pub(crate) fn for_http(mut self, timeout: Duration) -> Self {
        self.listen.get_or_insert(Listen::Tcp(0));
        self.ready_timeout.get_or_insert(timeout);
        self.eof_grace.get_or_insert(Duration::ZERO);
        self
    }

    /// The program, as errors and reports name it.
    #[cfg(feature = "rmcp")]
    pub(crate) fn program(&self) -> String {
        self.command.get_program().to_string_lossy().into_owned()
    }

    /// Starts the child. Nothing is left behind on error: a child that started is torn down.
    pub fn spawn(mut self) -> Result<ProcessGuard> {
        crate::evidence::identity::Viewpoint::current().usable().map_err(|why| Error::Unsupported {
            what: if crate::os::PROC_TABLE { "a /proc of this PID namespace" } else { "a boot identity" },
            source: std::io::Error::other(why.to_owned()),
        })?;
        if self.listen.is_some() {
            no_process_table("readiness by a listening socket")?;
        }
        let ready_timeout = self.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT);
        let listen = self.listen.take().map(|l| (l, Instant::now() + ready_timeout));
        if let Some((Listen::Tcp(port @ 1..), _)) = &listen {
            let program = self.command.get_program().to_string_lossy().into_owned();
            port_free(*port, &[], &program)?;
        }
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
        // Orphans of the tree come to this process (not to PID 1 or a runner's subreaper), where
        // teardown reaps their zombies; under a keeper they stop at the keeper, which reaps them.
        ownership::become_subreaper();
        registry::guard_starting(scope.as_ref(), &ledger_dir, None);

        let owner = Owner::current();
        let guard_id = ownership::next_guard_id();
        let test = Attachment::test_name(scope.as_ref());
        let program = self.command.get_program().to_string_lossy().into_owned();
        let owner_marker = owner.marker();
        self.command
            .env(ENV_RUN_ID, &owner.run_id)
            .env(ENV_OWNER, &owner_marker)
            .env(ENV_GUARD, &guard_id)
            .env(ENV_TEST, &test)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(self.stdout.take().unwrap_or_else(Stdio::null))
            .stderr(Stdio::piped());

        let requested = containment::requested(self.containment)?;
        let mode = requested.unwrap_or_else(containment::auto);
        let (mut child, holder) = match mode {
            Containment::Cgroup => match GuardCgroup::create(&guard_id) {
                Ok((cg, procs)) => {
                    containment::cgroup::join_on_exec(&mut self.command, &procs);
                    let child = self.command.spawn();
                    drop(procs);
                    match child {
                        Ok(child) => (child, Some(Holder::Cgroup(cg))),
                        Err(source) => {
                            let _ = cg.remove();
                            return Err(spawn_error(&program, source));
                        }
                    }
                }
                Err(e) if requested.is_some() => {
                    return Err(Error::Unsupported {
                        what: "a writable cgroup2 subtree (containment cgroup)",
                        source: e,
                    })
                }
                Err(_) => {
                    // Not writable here (not root, no delegated subtree): keepers from now on.
                    containment::cgroups_refused();
                    (self.spawn_with_keeper(&owner.id, &guard_id, &test, graces.term, &program)?, None)
                }
            },
            Containment::Keeper => (self.spawn_with_keeper(&owner.id, &guard_id, &test, graces.term, &program)?, None),
            Containment::Marker => (self.command.spawn().map_err(|source| spawn_error(&program, source))?, None),
        };

        let pid = child.id() as i32;
        // The child is ours and not yet waited for, so its pid cannot be recycled here.
        let direct = match os::Handle::open(pid) {
            Ok(handle) => Member { id: ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 }), handle },
            Err(source) => {
                // Without a pidfd we cannot tear down safely: undo the spawn and say why.
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                let _ = child.wait();
                if crate::os::fd_limit_hint(&source).is_some() {
                    return Err(spawn_error(&program, source));
                }
                let what =
                    if crate::os::PROC_TABLE { "a pidfd (pidfd_open)" } else { "a process handle (a waiter thread)" };
                return Err(Error::Unsupported { what, source });
            }
        };
        let (leader, holder) = match holder {
            Some(holder) => (direct, holder),
            None if mode == Containment::Marker => {
                let since = direct.id.start_time;
                (direct, Holder::Marker { since })
            }
            // A keeper: the server is its only child, kept unreaped for us until it exits itself.
            None => match keeper::server_of(&direct, &guard_id).and_then(Member::open) {
                Some(server) => (server, Holder::Keeper(direct)),
                None => {
                    let _ = direct.handle.signal(libc::SIGKILL);
                    let status = child.wait();
                    return Err(Error::Spawn {
                        program,
                        source: std::io::Error::other(format!("its keeper started no server ({status:?})")),
                        hint: "Check that the test binary can re-execute itself (/proc/self/exe), or use \
                               REAPKIT_CONTAINMENT=marker"
                            .into(),
                    });
                }
            },
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().and_then(|s| StderrRing::start(s, self.ring_bytes).ok());
        let contained = match &holder {
            Holder::Cgroup(cg) => ledger::Contained::Cgroup { cgroup: cg.dir().to_path_buf(), id: Some(cg.id()) },
            Holder::Keeper(k) => ledger::Contained::Keeper { keeper: k.id },
            Holder::Marker { .. } => ledger::Contained::Marker,
        };
        let mut guard = ProcessGuard {
            tree: Tree {
                id: guard_id,
                leader,
                child,
                holder,
                stdin,
                stdout,
                close_stdio: None,
                stderr,
                graces,
                scan_proc: self.scan_proc,
                ledger: None,
            },
            program,
            spawned: Instant::now(),
            listener: None,
            report: None,
        };
        let command = std::iter::once(self.command.get_program())
            .chain(self.command.get_args())
            .map(|a: &OsStr| a.to_string_lossy().into_owned())
            .collect();
        let cwd = self.command.get_current_dir().map(PathBuf::from).or_else(|| std::env::current_dir().ok());
        let record = ledger::Record::new(
            guard.tree.id.clone(),
            test,
            ledger::Resource::Process {
                process: guard.tree.leader.id,
                pgid: pid,
                command,
                cwd,
                contained: Some(contained),
            },
        );
        // On error `guard` drops here and tears the child down: nothing leaks.
        guard.tree.ledger = Some(ledger::Entry::write(&ledger_dir, &record)?);
        let live = registry::LiveGuard {
            id: guard.tree.id.clone(),
            kind: self.kind,
            what: short_command(&record),
            created_at: self.created_at,
            fds: guard.tree.fds(),
            child: Some(pid),
            cgroup: match &guard.tree.holder {
                Holder::Cgroup(cg) => Some((cg.dir().to_path_buf(), cg.id())),
                _ => None,
            },
        };
        registry::guard_created(scope.as_ref(), live);
        if let Some((listen, deadline)) = listen {
            match guard.await_listening(&listen, deadline, ready_timeout) {
                Ok(listener) => guard.listener = Some(listener),
                Err(e) => {
                    registry::guard_failed(guard.id());
                    return Err(e); // `guard` drops here: the tree is torn down
                }
            }
        }
        Ok(guard)
    }

    /// Spawns the command below a keeper of its own (see [`keeper`]).
    fn spawn_with_keeper(
        &mut self,
        owner: &crate::evidence::identity::OwnerId,
        guard: &str,
        test: &str,
        grace: Duration,
        program: &str,
    ) -> Result<Child> {
        let run_id = Owner::current().run_id.clone();
        let markers = keeper::markers(&run_id, guard, test);
        keeper::fork_on_exec(&mut self.command, owner, &markers, grace);
        self.command.spawn().map_err(|source| spawn_error(program, source))
    }
}

/// The command line of a process record, cut for a report line.
fn short_command(record: &ledger::Record) -> String {
    let ledger::Resource::Process { command, .. } = &record.resource else { return String::new() };
    let line = command.join(" ");
    match line.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// `Unsupported` on the portable backend, for `what` reads the process table (`/proc`).
fn no_process_table(what: &'static str) -> Result<()> {
    if crate::os::PROC_TABLE {
        return Ok(());
    }
    Err(Error::Unsupported {
        what,
        source: std::io::Error::other(
            "it reads the process table (/proc), which the portable backend has not; check it in the test on Linux",
        ),
    })
}

/// `Ok` unless a process outside `tree` (pids) listens on TCP `port` in our network namespace.
fn port_free(port: u16, tree: &[i32], program: &str) -> Result<()> {
    let me = std::process::id() as i32;
    let holders: Vec<String> = listening::holders_of_port(port, me)
        .into_iter()
        .filter(|h| !tree.contains(&h.pid))
        .map(|h| crate::evidence::markers::describe_holder(h.pid))
        .collect();
    match holders.is_empty() {
        true => Ok(()),
        false => Err(Error::PortHeld { program: program.to_owned(), port, holder: holders.join("; and by ") }),
    }
}

fn spawn_error(program: &str, source: std::io::Error) -> Error {
    let hint = crate::os::fd_limit_hint(&source).unwrap_or_else(|| {
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
    pub(crate) tree: Tree,
    pub(crate) program: String,
    spawned: Instant,
    /// The socket that made it ready ([`ProcessBuilder::listen`]).
    listener: Option<Listener>,
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
    /// Live processes below it, across sessions (a double-forked daemon re-parented away is not
    /// below it any more; its containment still holds it).
    pub descendants: Vec<ProcId>,
    /// How the guard holds its tree: what its teardown can vouch for.
    pub containment: Containment,
}

impl ProcessGuard {
    /// Starts a builder for `command`. Where it is called is the guard's creation site in
    /// reports (a guard that outlives its test is named by it).
    #[track_caller]
    pub fn builder(command: Command) -> ProcessBuilder {
        ProcessBuilder {
            command,
            eof_grace: None,
            term_grace: None,
            stdout: None,
            ring_bytes: DEFAULT_RING_BYTES,
            scan_proc: true,
            ledger_dir: None,
            containment: None,
            listen: None,
            ready_timeout: None,
            kind: "ProcessGuard",
            created_at: std::panic::Location::caller(),
        }
    }

    /// Spawns `command` with the default settings.
    #[track_caller]
    pub fn spawn(command: Command) -> Result<ProcessGuard> {
        ProcessGuard::builder(command).spawn()
    }

    /// The guard id: the value of `REAPKIT_GUARD` in the child's environment.
    pub fn id(&self) -> &str {
        &self.tree.id
    }

    /// The child's pid (also its process group id). Under a keeper, still the server's own.
    pub fn pid(&self) -> i32 {
        self.tree.leader.id.pid
    }

    /// The child's identity: pid and start time.
    pub fn proc_id(&self) -> ProcId {
        self.tree.leader.id
    }

    /// The program as given to the builder.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The graces this guard tears down with.
    pub fn graces(&self) -> Graces {
        self.tree.graces
    }

    /// How this guard holds its tree.
    pub fn containment(&self) -> Containment {
        self.tree.holder.containment()
    }

    /// The child's stdin; closing it (dropping the guard) is the polite "please exit".
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.tree.stdin.as_mut()
    }

    /// Takes the child's stdout, if it was piped.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.tree.stdout.take()
    }

    /// The last bytes the child wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.tree.stderr.as_ref().map(StderrRing::tail).unwrap_or_default()
    }

    /// The path of this guard's ledger record, while it exists.
    pub fn ledger_path(&self) -> Option<&std::path::Path> {
        self.tree.ledger.as_ref().map(ledger::Entry::path)
    }

    /// Whether the child itself has exited (its descendants may live on).
    pub fn has_exited(&self) -> bool {
        self.tree.leader.has_exited()
    }

    /// The TCP port the tree listened on when it became ready ([`ProcessBuilder::listen`]).
    pub fn port(&self) -> Option<u16> {
        self.listener.as_ref().and_then(|l| l.addr.port())
    }

    /// The socket that made it ready ([`ProcessBuilder::listen`]), with the process holding it.
    pub fn listener(&self) -> Option<&Listener> {
        self.listener.as_ref()
    }

    /// Every socket the tree listens on now, read from `/proc`.
    pub fn listeners(&self) -> Vec<Listener> {
        listening::of(&self.tree.pids())
    }

    /// Waits until the tree listens on `listen`: the leader's exit wakes the wait at once; a new
    /// socket has no event to wait for, so the tree's sockets are read again after a pause that
    /// doubles from 1 ms to 20 ms.
    fn await_listening(&mut self, listen: &Listen, deadline: Instant, timeout: Duration) -> Result<Listener> {
        let mut pause = Duration::from_millis(1);
        loop {
            let pids = self.tree.pids();
            let found = listening::of(&pids);
            if let Some(ready) = found.iter().find(|l| listen.matches(&l.addr)) {
                return Ok(ready.clone());
            }
            if let Listen::Tcp(port @ 1..) = listen {
                port_free(*port, &pids, &self.program)?;
            }
            let exited = self.has_exited();
            let reason = if exited {
                Some("it exited before it listened".to_owned())
            } else if Instant::now() >= deadline {
                Some(match found.is_empty() {
                    true => "its tree listens on nothing yet. Raise `ready_timeout` if it starts slowly".to_owned(),
                    false => {
                        let on: Vec<String> = found.iter().map(ToString::to_string).collect();
                        format!("its tree listens on {} instead", on.join(", "))
                    }
                })
            } else {
                None
            };
            if let Some(reason) = reason {
                // Torn down first: the stderr tail is then complete, and the status known.
                let report = self.teardown();
                let status = report.status.filter(|_| exited).map_or_else(String::new, |s| format!(" ({s})"));
                return Err(Error::NotListening {
                    program: self.program.clone(),
                    wanted: listen.to_string(),
                    timeout,
                    reason: format!("{reason}{status}"),
                    stderr_tail: self.stderr_tail(),
                });
            }
            os::wait_readable(self.tree.leader.handle.fd(), deadline.min(Instant::now() + pause));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Pid, group, uptime, RSS, FD count, threads and live descendants of the child.
    pub fn info(&self) -> Result<ProcessInfo> {
        no_process_table("process info")?;
        let pid = self.pid();
        let usage = procfs::Usage::read(self.tree.leader.id)
            .map_err(|source| Error::Io { context: format!("reading /proc/{pid} of `{}`", self.program), source })?;
        Ok(ProcessInfo {
            pid,
            pgid: usage.pgid,
            uptime: self.spawned.elapsed(),
            rss_bytes: usage.rss_bytes,
            fds: usage.fds,
            threads: usage.threads,
            descendants: usage.descendants,
            containment: self.containment(),
        })
    }

    /// Starts checking the child against `budget` (reading 0, the baseline unless it has a
    /// warm-up). The watch copies the child's identity instead of borrowing the guard, so the
    /// workload between samples may use the guard, or the `McpServer` around it, mutably.
    pub fn watch(&self, budget: Budget) -> Result<BudgetWatch> {
        no_process_table("a budget")?;
        BudgetWatch::start(self.tree.leader.id, self.program.clone(), budget)
    }

    /// Tears the whole tree down now and reports how it went.
    pub fn shutdown(mut self) -> Teardown {
        self.teardown()
    }

    /// [`shutdown`](Self::shutdown) as a future for async tests: the protocol runs on a thread
    /// of its own, so the graces it waits never block the runtime (a current-thread runtime
    /// keeps running its other tasks meanwhile). Works in any executor; if the future is
    /// dropped early, the teardown still finishes.
    #[cfg(feature = "async")]
    pub async fn shutdown_async(self) -> Teardown {
        crate::guard::offload::offload(move || self.shutdown()).await.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Gives the child's pipes away (to an async transport); `close` closes them where they
    /// went, as step 1 of the teardown.
    #[cfg(feature = "rmcp")]
    pub(crate) fn hand_over_stdio(
        &mut self,
        open: impl FnOnce(ChildStdin, ChildStdout) -> Result<Box<dyn FnOnce() + Send>>,
    ) -> Result<()> {
        let (Some(stdin), Some(stdout)) = (self.tree.stdin.take(), self.tree.stdout.take()) else {
            unreachable!("an MCP guard's stdin and stdout are both piped")
        };
        self.tree.close_stdio = Some(crate::guard::teardown::CloseStdio(open(stdin, stdout)?));
        Ok(())
    }

    /// The report of the teardown, once it ran.
    #[cfg(feature = "rmcp")]
    pub(crate) fn report(&self) -> Option<&Teardown> {
        self.report.as_ref()
    }

    /// Runs the teardown protocol once; later calls return the first report.
    pub(crate) fn teardown(&mut self) -> Teardown {
        if let Some(report) = &self.report {
            return report.clone();
        }
        let report = teardown::run(&mut self.tree);
        registry::guard_dropped(&self.tree.id, report.killed.len() + report.escapees.len());
        self.report = Some(report.clone());
        report
    }
}

/// Tears many guards down in one wave — EOF to all, one grace, SIGTERM to all, one grace,
/// SIGKILL — so that N servers cost about one set of graces (the longest), not N. Reports in
/// the order of `guards`.
///
/// ```
/// let guards: Vec<reapkit::ProcessGuard> = (0..3)
///     .map(|_| reapkit::ProcessGuard::spawn(std::process::Command::new("cat")))
///     .collect::<Result<_, _>>()?;
/// let reports = reapkit::shutdown_all(guards);
/// assert!(reports.iter().all(reapkit::Teardown::is_clean));
/// # Ok::<(), reapkit::Error>(())
/// ```
pub fn shutdown_all(guards: impl IntoIterator<Item = ProcessGuard>) -> Vec<Teardown> {
    let mut guards: Vec<ProcessGuard> = guards.into_iter().collect();
    let pending: Vec<usize> = (0..guards.len()).filter(|&i| guards[i].report.is_none()).collect();
    let mut trees: Vec<&mut Tree> =
        guards.iter_mut().enumerate().filter(|(i, _)| pending.contains(i)).map(|(_, g)| &mut g.tree).collect();
    let reports = teardown::run_all(&mut trees);
    for (i, report) in pending.into_iter().zip(reports) {
        registry::guard_dropped(&guards[i].tree.id, report.killed.len() + report.escapees.len());
        guards[i].report = Some(report);
    }
    guards.iter_mut().map(ProcessGuard::teardown).collect()
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.end_in_drop();
    }
}

impl ProcessGuard {
    /// The teardown of `Drop`: once, never panicking, a warning if it was not clean.
    pub(crate) fn end_in_drop(&mut self) {
        if self.report.is_some() {
            return;
        }
        // Never panic in Drop: a panic while already panicking aborts the test binary.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.teardown()));
        match outcome {
            Ok(report) if report.is_clean() => {}
            Ok(report) => crate::error::warn(&format!(
                "reapkit: teardown of `{}` (guard {}) was not clean: {report}",
                self.program, self.tree.id
            )),
            Err(_) => crate::error::warn(&format!(
                "reapkit: teardown of `{}` (guard {}) panicked; its tree may be left running",
                self.program, self.tree.id
            )),
        }
    }
}
