//! The fixture keeper: a re-executed test binary that starts one shared fixture, hands out
//! leases on it over a Unix socket, and ends it when its run does (see the module above).
//!
//! Its one line on stdout is the asker's answer: `ready <pid>` once the fixture is, or
//! `error <why>`; then stdout is `/dev/null`, and stderr — its log, `<key>.log` — says what it
//! did. Everything it waits for is one `poll`: a signal (through an eventfd), its run owner's
//! pidfd, its server's pidfd, the socket, and each lease.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use super::{Fixture, FixtureInfo, Spec, ENV_SHARED, ENV_SHARED_SPEC, MAX_SPEC_BYTES};
use crate::evidence::fixture_files::FixtureFiles;
use crate::evidence::identity::OwnerId;
use crate::os::member::Member;
use crate::evidence::ownership::{self, ENV_LEDGER_DIR, ENV_OWNER};
use crate::os::procfs::ProcId;
use crate::evidence::run_stats::{self, Event};
use crate::guard::process::ProcessGuard;
use crate::os;

/// An argument no program understands: a binary whose constructor did not run exits at once.
pub(super) const KEEPER_ARG: &str = "--reapkit-shared";
/// How long a lease's first write (the fixture's description) may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The keeper's `main`, from the constructor: never returns.
pub(crate) fn run(spec: OsString) -> ! {
    // SAFETY: before `main`, on the only thread; the parent only `_exit`s. The asker waits for
    // its child, which exits now: the keeper goes on in the session `setsid` made, adopted by
    // the nearest subreaper, never the asking test's child.
    match unsafe { libc::fork() } {
        0 => {}
        -1 => {
            say(&format!("error the keeper could not fork: {}", io::Error::last_os_error()));
            std::process::exit(1);
        }
        _ => unsafe { libc::_exit(0) },
    }
    let key = std::env::var(ENV_SHARED).ok().filter(|k| ownership::valid_id(k));
    // On the only thread, before `main`. What the fixture and the watchdog inherit is then
    // reapkit's own markers only; /proc still shows ours to the sweeps.
    std::env::remove_var(ENV_SHARED_SPEC);
    std::env::remove_var(ENV_SHARED);
    let spec = parse(&spec);
    let code = match (spec, key) {
        (Ok(spec), Some(key)) => {
            let thread = format!("shared:{}", spec.name);
            // The thread's name is the test name the fixture's guard carries.
            std::thread::Builder::new()
                .name(thread)
                .spawn(move || keep(&spec, &key))
                .map_or(1, |t| t.join().unwrap_or(1))
        }
        (Err(why), _) => fail(&why),
        (_, None) => fail(&format!("{ENV_SHARED} is not a reapkit key")),
    };
    std::process::exit(code)
}

fn parse(raw: &OsString) -> Result<Spec, String> {
    let raw = raw.to_str().ok_or("the spec is not UTF-8")?;
    if raw.len() > MAX_SPEC_BYTES {
        return Err(format!("the spec is over {MAX_SPEC_BYTES} bytes"));
    }
    serde_json::from_str(raw).map_err(|e| format!("the spec is not one reapkit wrote: {e}"))
}

/// Tells the asker (one line on stdout, while it is still the pipe).
fn say(line: &str) {
    let line = format!("{}\n", line.replace('\n', " "));
    // SAFETY: writes a valid buffer to fd 1; a failure only means the asker is gone.
    unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
}

fn log(line: &str) {
    eprintln!("{} {line}", crate::evidence::ledger::now_rfc3339());
}

fn fail(why: &str) -> i32 {
    log(why);
    say(&format!("error {why}"));
    1
}

/// Points stdout at `/dev/null`: the asker's pipe closes, nextest sees no leaked output.
fn detach_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 of two valid fds.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

fn keep(spec: &Spec, key: &str) -> i32 {
    let dir = std::env::var_os(ENV_LEDGER_DIR).map(std::path::PathBuf::from).unwrap_or_else(crate::evidence::ledger::default_dir);
    let paths = FixtureFiles::at(&dir.join("shared"), key);
    let owner = match run_owner() {
        Ok(owner) => owner,
        Err(why) => return fail(&why),
    };
    ownership::become_subreaper();
    let stop = match on_signals() {
        Ok(fd) => fd,
        Err(e) => return fail(&format!("the keeper's signal handlers: {e}")),
    };
    let listener = match listen(&paths) {
        Ok(l) => l,
        Err(e) => return fail(&format!("binding {}: {e}", paths.sock.display())),
    };
    let (fixture, info) = match start(spec, owner.as_ref().map(|(id, _)| id.clone())) {
        Ok(started) => started,
        Err(e) => {
            let _ = std::fs::remove_file(&paths.sock);
            return fail(&e.to_string());
        }
    };
    let mut line = serde_json::to_vec(&info).unwrap_or_default();
    line.push(b'\n');
    log(&format!("started {}: {}", spec.name, String::from_utf8_lossy(&line).trim_end()));
    say(&format!("ready {}", std::process::id()));
    detach_stdout();
    run_stats::note(Event::SharedStarted);

    let server = fixture.server();
    let ending = Keeper { listener: &listener, line: &line, leases: Vec::new(), attaches: 0 }.serve(
        &stop,
        owner.as_ref().map(|(_, m)| m),
        server.as_ref(),
        spec.reuse_idle,
    );
    log(&format!("ending {}: {ending}", spec.name));
    // Nobody may attach to what is being torn down: a new asker starts a new one.
    let _ = std::fs::remove_file(&paths.sock);
    drop(listener);
    drop(fixture);
    if spec.reuse_idle.is_none() {
        // This run's key: no one asks for it again.
        let _ = std::fs::remove_file(&paths.lock);
        let _ = std::fs::remove_file(&paths.log);
    }
    0
}

/// The run owner this keeper lives for, held by pidfd; `None` when reused across runs.
fn run_owner() -> Result<Option<(OwnerId, Member)>, String> {
    let Ok(raw) = std::env::var(ENV_OWNER) else { return Ok(None) };
    let owner: OwnerId = raw.parse().map_err(|_| format!("{ENV_OWNER}={raw:?} is not an owner"))?;
    // Named by the asker, from this boot and namespace: anything else was not written by it.
    if owner != OwnerId::here(owner.process) {
        return Err(format!("{ENV_OWNER}={raw} is not of this boot and PID namespace"));
    }
    match Member::open(owner.process) {
        Some(member) => Ok(Some((owner, member))),
        None => Err(format!("its run is over: the run owner (pid {}) has exited", owner.process.pid)),
    }
}

static STOP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    // The wake-up is stored before any handler is installed and never closed; the
    // notification is one write(2), which is async-signal-safe.
    os::notify_raw(STOP_FD.load(Ordering::Relaxed));
}

/// SIGTERM, SIGINT and SIGHUP make the wake-up readable: the keeper then ends its fixture, as
/// a sweep that reaps it expects. Handlers, not a blocked mask: the fixture inherits a mask.
fn on_signals() -> io::Result<os::Wakeup> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let fd = os::Wakeup::new()?;
    STOP_FD.store(fd.notify_fd(), Ordering::Relaxed);
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only loads an atomic and calls write(2).
        unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
    }
    Ok(fd)
}

fn listen(paths: &FixtureFiles) -> io::Result<UnixListener> {
    let listener = UnixListener::bind(&paths.sock)?;
    std::fs::set_permissions(&paths.sock, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The fixture, held by its guard (one per keeper: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Running {
    Server(ProcessGuard),
    #[cfg(feature = "docker")]
    Container(crate::guard::container::Container),
}

impl Running {
    /// The process whose exit ends the fixture: a server's leader, a container's first process
    /// (where this machine sees it; else a stopped container goes unnoticed until the run ends).
    fn server(&self) -> Option<Member> {
        match self {
            Running::Server(guard) => Member::open(guard.proc_id()),
            #[cfg(feature = "docker")]
            Running::Container(container) => container.first_process().and_then(Member::open),
        }
    }
}

fn start(spec: &Spec, run_owner: Option<OwnerId>) -> crate::error::Result<(Running, FixtureInfo)> {
    let mut info = FixtureInfo {
        name: spec.name.clone(),
        run_id: ownership::Owner::current().run_id.clone(),
        keeper: ProcId::of(std::process::id() as i32)
            .unwrap_or(ProcId { pid: std::process::id() as i32, start_time: 0 }),
        run_owner,
        pid: None,
        listeners: Vec::new(),
        container_id: None,
        env: Default::default(),
    };
    let running = match &spec.fixture {
        Fixture::Command { argv, env, cwd, listen } => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]).envs(env.iter().map(|(k, v)| (k, v)));
            if let Some(dir) = cwd {
                cmd.current_dir(dir);
            }
            // A server that speaks over a socket: no stdin to wait on at teardown.
            let mut builder = ProcessGuard::builder(cmd).eof_grace(Duration::ZERO).ready_timeout(spec.ready_timeout);
            if let Some(on) = listen {
                builder = builder.listen(on.clone());
            }
            let guard = builder.spawn()?;
            info.pid = Some(guard.pid());
            info.listeners = guard.listeners();
            info.env = env.iter().cloned().collect();
            Running::Server(guard)
        }
        #[cfg(feature = "docker")]
        Fixture::Container(builder) => {
            let container = builder.clone().ready_timeout(spec.ready_timeout).start()?;
            info.container_id = Some(container.id().to_owned());
            info.listeners = container.listeners();
            info.env = builder
                .env_vars()
                .iter()
                .filter_map(|e| e.split_once('='))
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
            Running::Container(container)
        }
    };
    Ok((running, info))
}

/// The serving state: the socket, the description every lease gets, the leases.
struct Keeper<'a> {
    listener: &'a UnixListener,
    line: &'a [u8],
    /// Each attached test: its connection, and who it is (the kernel's word, at connect).
    leases: Vec<(UnixStream, Option<ProcId>)>,
    attaches: u64,
}

impl Keeper<'_> {
    /// Serves leases until the fixture must end; returns why.
    fn serve(
        mut self,
        stop: &os::Wakeup,
        owner: Option<&Member>,
        server: Option<&Member>,
        reuse_idle: Option<Duration>,
    ) -> String {
        let mut idle_since = Instant::now();
        loop {
            let mut fds = vec![(stop.fd(), libc::POLLIN), (self.listener.as_fd(), libc::POLLIN)];
            let owner_at = owner.map(|o| {
                fds.push((o.handle.fd(), libc::POLLIN));
                fds.len() - 1
            });
            let server_at = server.map(|s| {
                fds.push((s.handle.fd(), libc::POLLIN));
                fds.len() - 1
            });
            let first_lease = fds.len();
            fds.extend(self.leases.iter().map(|(c, _)| (c.as_fd(), libc::POLLIN)));
            let deadline = match reuse_idle {
                Some(idle) if self.leases.is_empty() => idle_since + idle,
                _ => os::deadline_in(Duration::from_secs(3600)),
            };
            let ready = os::poll_for(&fds, deadline);
            drop(fds);
            if ready.contains(&0) {
                return "signalled".into();
            }
            if owner_at.is_some_and(|i| ready.contains(&i)) {
                return "its run is over: the run owner exited".into();
            }
            if server_at.is_some_and(|i| ready.contains(&i)) {
                return "its server exited, or its container stopped".into();
            }
            if let Some(idle) = reuse_idle.filter(|_| self.leases.is_empty() && Instant::now() >= deadline) {
                return format!("no test attached for {idle:?}");
            }
            for i in ready.iter().rev().filter(|&&i| i >= first_lease).map(|i| i - first_lease) {
                if self.lease_ended(i) {
                    let (_, who) = self.leases.remove(i);
                    log(&format!("lease of {} ended", describe(who)));
                    if self.leases.is_empty() {
                        idle_since = Instant::now();
                    }
                }
            }
            if ready.contains(&1) {
                self.accept_all();
            }
        }
    }

    /// Whether lease `i` hung up (a lease says nothing; what it sends is ignored).
    fn lease_ended(&self, i: usize) -> bool {
        let mut buf = [0u8; 512];
        match (&self.leases[i].0).read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted),
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((conn, _)) => self.admit(conn),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: the connection waits in the backlog for the next round.
                    log(&format!("accept: {e}"));
                    return;
                }
            }
        }
    }

    /// A new lease: another user's connection is refused; ours gets the description.
    fn admit(&mut self, conn: UnixStream) {
        let who = match os::peer_of(conn.as_fd()) {
            Ok(peer) if peer.uid == crate::os::procfs::my_uid() => ProcId::of(peer.pid),
            Ok(peer) => return log(&format!("refused a connection of uid {}", peer.uid)),
            Err(e) => return log(&format!("refused a connection whose peer is unknown: {e}")),
        };
        let sent = conn.set_write_timeout(Some(WRITE_TIMEOUT)).and_then(|()| send_all(&conn, self.line));
        if let Err(e) = sent.and_then(|()| conn.set_nonblocking(true)) {
            return log(&format!("lease of {} failed: {e}", describe(who)));
        }
        self.attaches += 1;
        if self.attaches > 1 {
            run_stats::note(Event::SharedReused);
        }
        log(&format!("lease of {}", describe(who)));
        self.leases.push((conn, who));
    }
}

/// Writes all of `buf` without SIGPIPE: this process runs before `main`, where std has not
/// ignored it, and a test that died mid-attach must not take the keeper along.
fn send_all(conn: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match os::send_nosignal(conn.as_fd(), buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn describe(who: Option<ProcId>) -> String {
    who.map_or_else(|| "a process that has exited".into(), |p| format!("pid {} (start time {})", p.pid, p.start_time))
}
