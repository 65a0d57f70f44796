//! A test process that gets killed: it starts guards — a fixture server with children, one that
//! escapes with `setsid` + double fork, and a container — prints what it started, then waits
//! to be `kill -9`ed, so that none of its `Drop`s ever runs. The watchdog test (and the leak
//! the suite makes on purpose for `reapkit reap`) use it.
//!
//! Output: one line `ready <owner pid:start> <container id or ->`. Flags: `--no-container`;
//! `--forget`: forget the guards and exit 0 at once (a test that leaks and passes).

use std::io::BufRead;
use std::process::Command;

fn main() {
    let fixture = std::env::current_exe().expect("own path").with_file_name("fixture-server");
    let fixture = |flags: &[&str]| {
        let mut cmd = Command::new(&fixture);
        cmd.args(flags);
        cmd
    };
    let server = reapkit::ProcessGuard::spawn(fixture(&["--children", "2"])).expect("the fixture starts");
    let escaper = reapkit::ProcessGuard::spawn(fixture(&["--escape"])).expect("the escaping fixture starts");
    let container = if std::env::args().any(|a| a == "--no-container") {
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
    println!("ready {owner} {}", container.as_ref().map_or("-", |c| c.id()));
    if std::env::args().any(|a| a == "--forget") {
        std::mem::forget((server, escaper, container));
        return;
    }
    // Wait for the kill; if our stdin closes instead, end normally (guards drop).
    let _ = std::io::stdin().lock().read_line(&mut String::new());
    drop((server, escaper, container));
}
