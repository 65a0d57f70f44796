// The README's first leaky tests, as a new user writes them; the README shows what they print
// under `cargo test` and nextest, and reapkit's suite checks that it still does.

use std::process::Command;

#[reapkit::test]
fn leaves_its_server_running() {
    let mut server = Command::new("sleep");
    server.arg("600");
    let guard = reapkit::ProcessGuard::spawn(server).unwrap();
    std::mem::forget(guard); // what a guard held by a leaked Arc or a detached task amounts to
}

#[reapkit::test]
fn leaves_its_port_open() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::mem::forget(listener);
}
