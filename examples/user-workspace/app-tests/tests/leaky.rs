//! Tests that leak on purpose, each a mistake people make. Every one must fail, naming its
//! leak: reapkit's suite runs them and checks the messages.

use std::process::{Command, Stdio};

fn sleep() -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg("3600").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

#[reapkit::test]
fn forgets_its_guard() {
    let guard = reapkit::ProcessGuard::spawn(sleep()).unwrap();
    std::mem::forget(guard);
}

#[reapkit::test]
fn leaves_a_bare_child_running() {
    std::mem::forget(sleep().spawn().unwrap());
}

#[reapkit::test]
fn leaks_a_file() {
    let path = std::env::temp_dir().join(format!("app-tests-leaked-{}.txt", std::process::id()));
    std::mem::forget(std::fs::File::create(&path).unwrap());
    std::fs::remove_file(path).unwrap();
}

#[reapkit::test]
fn forgets_its_container() {
    let container = reapkit::Container::builder("reapkit-busybox:latest")
        .cmd(["sleep", "1000"])
        .network_mode("none")
        .start()
        .unwrap();
    std::mem::forget(container);
}
