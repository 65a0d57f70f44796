//! Support for reapkit's own test suite: the fixture server, decoys, leak checks.
//!
//! Every check here looks at the machine, not at what the guard says it did: a teardown
//! report can be wrong, `/proc` cannot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use reapkit::procfs::{self, MarkerScan};
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
    procfs::fd_count(std::process::id() as i32).expect("our own /proc/self/fd is readable")
}

/// Live processes (zombies excluded: their environment is gone) carrying `REAPKIT_GUARD=<guard>`.
pub fn marked(guard: &str) -> Vec<ProcId> {
    MarkerScan::new().find(&format!("REAPKIT_GUARD={guard}"))
}

/// Panics naming every process of `ids` that still has a `/proc` entry, zombies included.
pub fn assert_all_gone(ids: &[ProcId]) {
    let left: Vec<String> = ids
        .iter()
        .filter(|id| id.is_alive())
        .map(|id| {
            let state = procfs::Stat::read(id.pid).map(|s| s.state as char).unwrap_or('?');
            format!("pid {} state {state} `{}`", id.pid, procfs::cmdline(id.pid))
        })
        .collect();
    assert!(left.is_empty(), "processes of the torn-down tree are still there: {left:#?}");
}

/// The whole tree of a guard as seen from outside: every process carrying its marker.
/// Taken before teardown, checked with [`assert_all_gone`] after.
pub fn tree_of(guard: &str, leader: ProcId) -> Vec<ProcId> {
    let mut ids = marked(guard);
    if !ids.contains(&leader) {
        ids.push(leader);
    }
    ids
}

/// A process with the same command line as a guarded one but no marker: the innocent
/// bystander that `pkill -f` would kill and reapkit must not.
pub struct Decoy {
    child: Child,
}

impl Decoy {
    /// Starts `cmd` without any `REAPKIT_` variable, stdin held open so it stays up.
    pub fn start(mut cmd: Command) -> Decoy {
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("REAPKIT_")) {
            cmd.env_remove(key);
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the decoy starts");
        Decoy { child }
    }

    /// Panics if the decoy died.
    pub fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("try_wait on our own child");
        assert!(status.is_none(), "the decoy (pid {}) was killed: {status:?}", self.child.id());
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        // Ours, by pid, started above: the only kind of kill this suite does by hand.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real MCP servers installed by `scripts/setup.sh`, from `.deps/servers.env`.
pub fn real_server(key: &str) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate is in the workspace");
    let env_file = root.join(".deps/servers.env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
        panic!("{}: {e}. Run `scripts/setup.sh` (the README's test command does) to install the real MCP servers", env_file.display())
    });
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{} has no {key}=...; rerun scripts/setup.sh", env_file.display()));
    let mut argv = line.split_whitespace();
    let mut cmd = Command::new(argv.next().expect("a program"));
    cmd.args(argv);
    cmd
}
