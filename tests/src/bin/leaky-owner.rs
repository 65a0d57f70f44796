//! A test process that gets killed: it starts guards — a fixture server with children, one that
//! escapes with `setsid` + double fork, and a container — prints what it started, then waits
//! to be `kill -9`ed, so that none of its `Drop`s ever runs. The watchdog test (and the leak
//! the suite makes on purpose for `reapkit reap`) use it.
//!
//! Output: one line `ready <owner> <container id or -> <guarded pids, comma-separated>
//! <containment of the first guard>`.
//! Flags:
//! - `--no-container`: no container.
//! - `--container`: with `--sleep`, the container too.
//! - `--sleep N`: instead of the fixtures, one guard of `sleep N` (and no container).
//! - `--fixture "FLAGS"`: instead of the fixtures, one guard of the fixture with these flags
//!   (space-separated; no container).
//! - `--sh SCRIPT`: instead of the fixtures, one guard of `sh -c SCRIPT` (no container).
//! - `--containment MODE`: the guards' containment (`cgroup`, `keeper`, `marker`).
//! - `--rmcp`: with `--fixture`, the guard is rmcp's client over `reapkit::rmcp::child`,
//!   handshaken and held by rmcp's service on a multi-thread runtime.
//! - `--forget`: forget the guards and exit 0 at once (a test that leaks and passes).
//! - `--forget-on-eof`: wait for stdin to close, then forget the guards and exit (an owner that
//!   dies without dropping them, at a moment the caller chooses).
//! - `--workload`: a known mix for the run statistics, then exit 0: three fixtures shut down,
//!   one whose child outlives it (one process ended besides the guarded one), one program that
//!   does not exist, one MCP handshake answered with garbage, one `sleep` guard forgotten — 6
//!   created, 2 failed to start, 5 torn down, 1 leaked, 1 ended besides the guarded ones.

use std::io::BufRead;
use std::process::Command;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    if flag("--workload") {
        return workload();
    }
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let sleep = value("--sleep");
    let one_fixture = value("--fixture");
    let script = value("--sh");
    let containment = value("--containment").map(|m| match m.as_str() {
        "cgroup" => reapkit::Containment::Cgroup,
        "keeper" => reapkit::Containment::Keeper,
        "marker" => reapkit::Containment::Marker,
        other => panic!("unknown containment {other:?}"),
    });
    let fixture = std::env::current_exe().expect("own path").with_file_name("fixture-server");
    let fixture = |flags: &[&str]| {
        let mut cmd = Command::new(&fixture);
        cmd.args(flags);
        cmd
    };
    let commands = match (sleep, one_fixture) {
        _ if script.is_some() => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").args(script);
            vec![cmd]
        }
        (Some(secs), _) => {
            let mut cmd = Command::new("sleep");
            cmd.arg(secs);
            vec![cmd]
        }
        (None, Some(flags)) => vec![fixture(&flags.split_whitespace().collect::<Vec<_>>())],
        (None, None) => vec![fixture(&["--children", "2"]), fixture(&["--escape"])],
    };
    let mut guards = Vec::new();
    for cmd in commands {
        let builder = reapkit::ProcessGuard::builder(cmd);
        let builder = match containment {
            Some(mode) => builder.containment(mode),
            None => builder,
        };
        if flag("--rmcp") {
            return held_by_rmcp(builder);
        }
        match builder.spawn() {
            Ok(guard) => guards.push(guard),
            // What a user's test would print: the error's Display, and its Debug (libtest's).
            Err(e) => {
                println!("error: {e}\ndebug: {e:?}");
                std::process::exit(3);
            }
        }
    }
    let one_guard = sleep.is_some() || one_fixture.is_some() || script.is_some();
    let container = if flag("--no-container") || (one_guard && !flag("--container")) {
        None
    } else {
        Some(
            reapkit::Container::builder("reapkit-busybox:latest")
                .cmd(["sleep", "1000"])
                .network_mode("none")
                .start()
                .expect("the container starts"),
        )
    };
    let owner = reapkit::ownership::Owner::current().marker();
    let pids: Vec<String> = guards.iter().map(|g| g.pid().to_string()).collect();
    let containment = guards.first().map_or_else(|| "-".to_owned(), |g| g.containment().to_string());
    println!("ready {owner} {} {} {containment}", container.as_ref().map_or("-", |c| c.id()), pids.join(","));
    if flag("--forget") {
        std::mem::forget((guards, container));
        return;
    }
    // Wait for the kill; if our stdin closes instead, end normally (guards drop) or, with
    // --forget-on-eof, die holding them.
    let _ = std::io::stdin().lock().read_line(&mut String::new());
    if flag("--forget-on-eof") {
        std::mem::forget((guards, container));
        return;
    }
    drop((guards, container));
}

/// The `--rmcp` owner: the server is held by rmcp's running service until stdin closes (or the
/// owner is killed first).
fn held_by_rmcp(builder: reapkit::ProcessBuilder) {
    use rmcp::ServiceExt;
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let service = runtime.block_on(async {
        let transport = reapkit::rmcp::child(builder).unwrap_or_else(|e| {
            println!("error: {e}\ndebug: {e:?}");
            std::process::exit(3);
        });
        let child = transport.handle();
        let service = ().serve(transport).await.expect("rmcp's handshake with the fixture");
        let owner = reapkit::ownership::Owner::current().marker();
        println!("ready {owner} - {} {}", child.pid(), child.containment());
        service
    });
    let _ = std::io::stdin().lock().read_line(&mut String::new());
    drop(service);
    drop(runtime);
}

/// The `--workload` mix (see the module documentation).
fn workload() {
    let fixture_path = std::env::current_exe().expect("own path").with_file_name("fixture-server");
    let fixture = |flags: &[&str]| {
        let mut cmd = Command::new(&fixture_path);
        cmd.args(flags);
        cmd
    };
    for _ in 0..3 {
        let report = reapkit::ProcessGuard::spawn(fixture(&[])).expect("spawns").shutdown();
        assert!(report.is_clean(), "{report}");
    }
    let report = reapkit::ProcessGuard::spawn(fixture(&["--children", "1"])).expect("spawns").shutdown();
    assert_eq!(report.killed.len() + report.escapees.len(), 1, "its child, ended after it: {report}");
    assert!(reapkit::ProcessGuard::spawn(Command::new("/nonexistent/reapkit-workload")).is_err());
    assert!(reapkit::ProcessGuard::builder(fixture(&["--garbage"])).mcp().start().is_err());
    let mut sleep = Command::new("sleep");
    sleep.arg("1000");
    std::mem::forget(reapkit::ProcessGuard::spawn(sleep).expect("spawns"));
}
