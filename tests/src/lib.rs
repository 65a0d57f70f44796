//! Support for reapkit's own test suite: the fixture server, decoys, leak checks.
//!
//! Every check here looks at the machine, not at what the guard says it did: a teardown
//! report can be wrong, `/proc` cannot. It reads `/proc` itself ([`observe`]), never through
//! reapkit, so the checks mean the same under either of reapkit's backends.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub mod docker;
pub mod observe;

use reapkit::capabilities::{Concern, Guarantee};
pub mod sweep_sandbox;
use reapkit::ProcId;

/// The fixture MCP server built by this crate, next to the test binary's `deps` folder.
pub fn fixture_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binaries live in target/<profile>/deps");
    profile_dir.join("fixture-server")
}

/// A command running the fixture server with `flags`.
pub fn fixture(flags: &[&str]) -> Command {
    let mut cmd = Command::new(fixture_path());
    cmd.args(flags);
    cmd
}

/// The test process's open FD count.
pub fn fd_count() -> usize {
    observe::fd_count()
}

/// Live processes (zombies excluded: their environment is gone) carrying `REAPKIT_GUARD=<guard>`.
pub fn marked(guard: &str) -> Vec<ProcId> {
    observe::carrying(&format!("REAPKIT_GUARD={guard}"))
}

/// Panics naming every process of `ids` that still has a `/proc` entry, zombies included.
pub fn assert_all_gone(ids: &[ProcId]) {
    let left: Vec<String> = ids
        .iter()
        .filter(|id| id.is_alive())
        .map(|id| {
            let state = observe::state(id.pid).unwrap_or('?');
            format!("pid {} state {state} `{}`", id.pid, observe::cmdline(id.pid))
        })
        .collect();
    assert!(left.is_empty(), "processes of the torn-down tree are still there: {left:#?}");
}

/// The whole tree of a guard as seen from outside: every process carrying its marker.
/// Taken before teardown, checked with [`assert_all_gone`] after.
pub fn tree_of(guard: &str, leader: ProcId) -> Vec<ProcId> {
    let mut ids = marked(guard);
    ids.retain(|id| *id != leader);
    ids.insert(0, leader);
    ids
}

/// Runs one leak-checked case: starts a [`Decoy`] of `decoy`, takes the FD baseline, runs
/// `body` on `cmd` (it spawns, tears down and returns the tree it saw while alive), then checks
/// from outside that the tree is gone (zombies included), the FD count is back to its baseline
/// and the decoy's whole tree is untouched.
pub fn leak_checked(decoy: Command, cmd: Command, body: impl FnOnce(Command) -> Vec<ProcId>) {
    let escapees = lacks(Concern::Escapees);
    if escapees.is_some() {
        adopt_orphans();
    }
    before_fd_baseline();
    let mut decoy = Decoy::start(decoy);
    let baseline = fd_count();
    let tree = body(cmd);
    if escapees.is_some() {
        end_escapees(&tree);
        // Escapees of guards the body never saw (a start that failed) carry this process's
        // owner marker: ended too (not its watchdog, which carries it as well).
        let owner = format!("REAPKIT_OWNER={}", reapkit::ownership::Owner::current().marker());
        let unseen: Vec<ProcId> = observe::carrying(&owner)
            .into_iter()
            .filter(|id| !tree.contains(id) && !observe::has_var(id.pid, reapkit::ownership::ENV_WATCHDOG_OWNER))
            .collect();
        for id in &unseen {
            eprintln!(
                "ending the escapee pid {} (`{}`) of a guard the test never held",
                id.pid,
                observe::cmdline(id.pid)
            );
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(id.pid), nix::sys::signal::SIGKILL);
        }
        reap_orphans(&[tree.as_slice(), unseen.as_slice()].concat());
    }
    assert_all_gone(&tree);
    assert_eq!(fd_count(), baseline, "the test process's FD count is back to its baseline");
    decoy.assert_untouched();
}

/// Call before taking an FD baseline that a first guard will be compared against. The first
/// guard of a process starts its watchdog, and on the portable backend the process then keeps
/// the watchdog's lifeline open for the rest of its life (one descriptor reapkit's own checks
/// know): started here, it is in the baseline.
pub fn before_fd_baseline() {
    if reapkit::backend() == reapkit::Backend::Portable {
        let first = reapkit::ProcessGuard::spawn(Command::new("true")).expect("a first guard");
        assert!(first.shutdown().is_clean());
    }
}

/// Why this build of reapkit does not give `concern` at all, if it does not (a partial
/// guarantee, such as marker-only containment, counts as given: the test knows its limits). A
/// test that relies on the concern then says so on stderr and checks the stated gap rather than
/// its claim — by capability, never a silent skip.
pub fn lacks(concern: Concern) -> Option<String> {
    let caps = reapkit::capabilities();
    let Guarantee::Missing(why) = caps.of(concern).clone() else { return None };
    eprintln!(
        "this test relies on `{concern}`, which this build ({} backend) does not give ({why}): it checks that gap \
         instead",
        caps.backend
    );
    Some(why)
}

/// Under the portable backend, which has no subreaper: the test process becomes the one its
/// trees' orphans are re-parented to, standing in for the init that reaps them on macOS
/// (launchd) — this sandbox's PID 1 never does.
pub fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("the test process's own subreaper flag");
}

/// Under the portable backend: of a torn-down `tree` (its leader first), what left the
/// leader's group survives — the stated gap — and is ended here, by pid (this test started it);
/// what stayed in the group got SIGKILL and is waited for by [`reap_orphans`].
fn end_escapees(tree: &[ProcId]) {
    let Some(leader) = tree.first() else { return };
    for id in tree.iter().filter(|id| !exited(id)) {
        if observe::pgrp(id.pid) != Some(leader.pid) {
            eprintln!(
                "ending the escapee pid {} (`{}`) the portable backend cannot reach",
                id.pid,
                observe::cmdline(id.pid)
            );
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(id.pid), nix::sys::signal::SIGKILL);
        }
    }
}

/// Reaps, by pid, the zombies of `tree` that were re-parented to this process.
pub fn reap_orphans(tree: &[ProcId]) {
    let me = std::process::id() as i32;
    for id in tree {
        wait_until(&format!("pid {} has exited", id.pid), || exited(id).then_some(()));
        if observe::children(me).contains(&id.pid) {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(id.pid), None);
        }
    }
}

/// A process tree with the same command line as a guarded one but no reapkit marker: the
/// innocent bystander that `pkill -f` would kill and reapkit must not.
///
/// It carries a marker of its own (not `REAPKIT_`), so that the suite can tell, after a
/// teardown, that every process of the decoy's tree is untouched, and end them all by pid.
pub struct Decoy {
    child: Child,
    marker: String,
    tree: Vec<ProcId>,
}

/// The decoy's own marker variable; deliberately outside the `REAPKIT_` namespace.
const DECOY_ENV: &str = "REAPKIT_SUITE_DECOY_OF";

impl Decoy {
    /// Starts `cmd` without any `REAPKIT_` variable and waits until it has answered
    /// `initialize` (or exited): by then the fixture has started all its children.
    pub fn start(mut cmd: Command) -> Decoy {
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("REAPKIT_")) {
            cmd.env_remove(key);
        }
        let id = format!("{}-{}", std::process::id(), DECOYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut child = cmd
            .env(DECOY_ENV, &id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the decoy starts");
        let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"decoy","version":"0"}}}"#;
        let stdin = child.stdin.as_mut().expect("piped");
        let _ = writeln!(stdin, "{init}");
        let _ = BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut String::new());
        let marker = format!("{DECOY_ENV}={id}");
        let tree = observe::carrying(&marker);
        Decoy { child, marker, tree }
    }

    /// Panics if any process of the decoy's tree was killed since it started. The decoy
    /// itself may have exited on its own (`--exit-after-init`): a status with an exit code
    /// is fine, death by a signal is not.
    pub fn assert_untouched(&mut self) {
        let leader = self.child.id() as i32;
        let status = self.child.try_wait().expect("try_wait on our own child");
        assert!(status.is_none_or(|s| s.code().is_some()), "the decoy (pid {leader}) was killed: {status:?}");
        let gone: Vec<&ProcId> = self.tree.iter().filter(|id| id.pid != leader && exited(id)).collect();
        assert!(gone.is_empty(), "decoy processes without a reapkit marker were killed: {gone:?} of {:?}", self.tree);
    }
}

static DECOYS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A `sleep` argument no other process has: `1301.<our pid><n>`; the fixture's escapees
/// (`--escape-clean-env TOKEN`, ...) are named by it.
pub fn token() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("1301.{}{:04}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Processes whose command line holds `token` (zombies have none: they are found before).
pub fn by_token(token: &str) -> Vec<ProcId> {
    observe::pids()
        .into_iter()
        .filter(|&pid| observe::cmdline(pid).split(' ').any(|a| a == token))
        .filter_map(ProcId::of)
        .collect()
}

/// Ends the processes named by `token`, by pid (ours: started by a test's fixture), where a
/// survivor is the expected answer; again until none is left (a shell among them may have
/// forked one more just before it was killed).
pub fn end_by_token(token: &str) {
    wait_until(&format!("the processes of token {token} are ended"), || {
        for id in by_token(token) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(id.pid), nix::sys::signal::SIGKILL);
        }
        by_token(token).is_empty().then_some(())
    });
}

/// The line the fixture server's `--listen-tcp` answers a connection to `port` with:
/// `fixture-server <pid>` — proof that the port is that server's.
pub fn answer(port: u16) -> String {
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the port accepts");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("a read timeout");
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).expect("its answer");
    line.trim().to_owned()
}

/// Waits (by pidfd, up to 10 s) for `id` to exit; panics naming `what` if it has not.
pub fn wait_exit(id: ProcId, what: &str) {
    // SAFETY: plain syscalls on integers; the fd is ours and closed here.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, id.pid, 0) as i32;
        if fd >= 0 {
            let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            libc::poll(&mut poll, 1, 10_000);
            libc::close(fd);
        }
    }
    assert!(exited(&id), "{what} (pid {}) did not exit within 10 s", id.pid);
}

/// A shared fixture's keeper and everything below it (its fixture's tree, its watchdog),
/// taken while it runs.
pub fn keeper_tree(keeper: ProcId) -> Vec<ProcId> {
    std::iter::once(keeper).chain(observe::descendants(keeper.pid)).collect()
}

/// Waits for every keeper of `keepers` to exit — after its fixture is torn down — and returns
/// how long that took; then for the rest of their `trees` (a watchdog finishing its sweep).
pub fn keepers_ended(keepers: &[ProcId], trees: &[ProcId]) -> std::time::Duration {
    let started = std::time::Instant::now();
    for keeper in keepers {
        wait_exit(*keeper, "a keeper whose run is over");
    }
    let took = started.elapsed();
    for id in trees {
        wait_until(&format!("pid {} of a fixture's tree is gone", id.pid), || exited(id).then_some(()));
    }
    took
}

/// Exited: a zombie (dead; its parent has not reaped it yet), or gone from `/proc`. Asked in
/// that order, so that a zombie reaped between the two reads still counts as exited.
pub fn exited(id: &ProcId) -> bool {
    is_zombie(id.pid) || !id.is_alive()
}

/// Whether `pid` exists as a zombie (exited, not yet reaped).
pub fn is_zombie(pid: i32) -> bool {
    observe::is_zombie(pid)
}

/// Polls an outside condition that has no event to wait on (a fixture's children appearing,
/// `node` being orphaned) until `f` returns `Some`, for at most 10 s; panics naming `what`.
/// The product itself never polls: this is for observing processes we do not control.
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "not reached in 10 s: {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        end_marked(&self.marker, self.child.id() as i32);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ends the processes carrying `marker` (a `KEY=value` of the suite's own, on processes this
/// test started), by pid: the only kills this suite does by hand. Again while some are found (a
/// tree may still be forking), each waited for; orphans re-parented to us (the subreaper) are
/// reaped. `leader`, our own child, is left for its `Child` to wait for.
pub fn end_marked(marker: &str, leader: i32) {
    for _ in 0..5 {
        let found: Vec<ProcId> = observe::carrying(marker);
        if found.is_empty() {
            break;
        }
        for id in &found {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(id.pid), nix::sys::signal::SIGKILL);
        }
        for id in found.iter().filter(|id| id.pid != leader) {
            // Bounded, and never a panic: this runs in Drop, maybe while unwinding.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !exited(id) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let _ =
                nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(id.pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
    }
}

/// The argv of a real MCP server installed by `scripts/setup.sh`, as `.deps/servers.env` has it
/// (whitespace-separated, absolute paths).
pub fn real_server_argv(key: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate is in the workspace");
    let env_file = root.join(".deps/servers.env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Run `scripts/setup.sh` (the README's test command does) to install the real MCP servers",
            env_file.display()
        )
    });
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{} has no {key}=...; rerun scripts/setup.sh", env_file.display()))
        .to_owned()
}

/// A real MCP server installed by `scripts/setup.sh`, from `.deps/servers.env`.
pub fn real_server(key: &str) -> Command {
    let line = real_server_argv(key);
    let mut argv = line.split_whitespace();
    let mut cmd = Command::new(argv.next().expect("a program"));
    cmd.args(argv);
    cmd
}

/// Timings of one benchmark variant, for the side-by-side tables.
#[derive(Debug, Default)]
pub struct Samples(Vec<std::time::Duration>);

impl Samples {
    pub fn push(&mut self, d: std::time::Duration) {
        self.0.push(d);
    }

    /// The `q`-quantile (0.5 = median), nearest rank.
    pub fn quantile(&mut self, q: f64) -> std::time::Duration {
        self.0.sort();
        let rank = ((self.0.len() as f64 * q) as usize).min(self.0.len() - 1);
        self.0[rank]
    }

    pub fn median(&mut self) -> std::time::Duration {
        self.quantile(0.5)
    }

    pub fn p90(&mut self) -> std::time::Duration {
        self.quantile(0.9)
    }
}

/// How many rounds a benchmark runs: `REAPKIT_BENCH_ROUNDS`, else `default`.
pub fn bench_rounds(default: usize) -> usize {
    std::env::var("REAPKIT_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(default)
}

/// How long `f` takes (its result kept from the optimizer).
pub fn timed<T>(f: impl FnOnce() -> T) -> std::time::Duration {
    let start = std::time::Instant::now();
    std::hint::black_box(f());
    start.elapsed()
}

/// Prints the side-by-side table of a benchmark: each variant's median and p90 in ms (with
/// `decimals` places) and its ratio to each baseline, a `(column label, variant name)` pair.
pub fn print_table(rows: &mut [(&str, &mut Samples)], baselines: &[(&str, &str)], decimals: usize) {
    let medians: Vec<(String, std::time::Duration)> =
        rows.iter_mut().map(|(name, samples)| ((*name).to_owned(), samples.median())).collect();
    let median_of = |name: &str| {
        medians.iter().find(|(n, _)| n == name).map(|(_, m)| *m).expect("a baseline names a variant of the table")
    };
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 2;
    let mut header = format!("{:<width$} {:>10} {:>10}", "variant", "median", "p90");
    for (label, _) in baselines {
        header.push_str(&format!(" {label:>12}"));
    }
    println!("{header}");
    for (name, samples) in rows.iter_mut() {
        let m = samples.median();
        let mut line = format!("{name:<width$} {:>10} {:>10}", ms(m, decimals), ms(samples.p90(), decimals));
        for (_, base) in baselines {
            line.push_str(&format!(" {:>11.2}x", m.as_secs_f64() / median_of(base).as_secs_f64()));
        }
        println!("{line}");
    }
}

/// Milliseconds with `decimals` places, for tables.
pub fn ms(d: std::time::Duration, decimals: usize) -> String {
    format!("{:.*} ms", decimals, d.as_secs_f64() * 1e3)
}

/// The `reapkit` binary of this workspace (`crates/reapkit-cli`), run with a clean slate:
/// `cargo xtask test` and the nextest setup script build it next to the test binaries.
pub fn reapkit_cli() -> Command {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binaries live in target/<profile>/deps");
    let path = profile_dir.join("reapkit");
    assert!(path.is_file(), "{} is missing: build it with `cargo build -p reapkit-cli`", path.display());
    Command::new(path)
}

/// The identity (an [`reapkit::OwnerId`]: pid, start time, PID namespace, boot) of a process
/// that has exited and been reaped: an owner that is provably dead, for leftovers made on purpose.
pub fn dead_owner() -> String {
    let mut child = Command::new("true").spawn().expect("`true` starts");
    let id = ProcId::of(child.id() as i32).expect("not yet reaped, so still in /proc");
    child.wait().expect("reaped");
    reapkit::OwnerId::here(id).to_string()
}

/// This test process, alive, as an owner: the owner of a concurrent run.
pub fn live_owner() -> reapkit::OwnerId {
    reapkit::OwnerId::of_self().expect("our own /proc entry")
}

/// `cargo <args>` in a user's workspace beside this one (`examples/<name>`), as a user runs it:
/// none of this suite's runner or reapkit variables, no `reapkit` binary on PATH (see
/// [`with_reapkit_on_path`]), its own target directory (`target/<target>`), the real time
/// server in `MCP_SERVER_TIME`, and a Docker engine required.
pub fn user_cargo(workspace: &Path, target: &str, args: &[&str]) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate is in the workspace");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("NEXTEST") || key_text.starts_with("REAPKIT_") || key_text.starts_with("RUST_TEST") {
            cmd.env_remove(&key);
        }
    }
    cmd.args(args)
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", root.join("target").join(target))
        .env("MCP_SERVER_TIME", real_server_argv("REAPKIT_TEST_PY_TIME"))
        .env("REAPKIT_REQUIRE_DOCKER", "1");
    cmd
}

/// Puts this workspace's `reapkit` binary first on `cmd`'s PATH: for a user's workspace whose
/// nextest config runs the installed `reapkit` rather than its xtask.
pub fn with_reapkit_on_path(cmd: &mut Command) -> &mut Command {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("a PATH");
    cmd.env("PATH", path)
}
