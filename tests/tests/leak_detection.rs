//! The detector catches what it must. A test that leaks a pipe, a socket, a file, a child, a
//! guarded process or a container fails with a report naming it (expected failures:
//! `#[should_panic(expected = ...)]` on real `#[reapkit::test]`s), and the report names the
//! exact descriptor, pid and container (the `TestScope` API, whose report can be inspected).
//!
//! Every test here is `#[file_serial]`: under `cargo test` that makes the process-wide checks
//! exact (the scope sees serial_test's attribute); under nextest each test has its own process.
//! Descriptors leaked on purpose are kept in [`KEPT`] until the process exits, so that a later
//! test's baseline simply includes them.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use reapkit::scope::{LeakKind, BASELINE_FILE, ENV_BASELINE};
use reapkit::{Container, Isolation, ProcessGuard, TestScope};
use reapkit_tests::docker::{engine, leftovers, IMAGE};
use reapkit_tests::{fixture, marked, Decoy};
use serial_test::file_serial;

/// Descriptors leaked on purpose, closed when the test process exits.
static KEPT: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

fn keep(fd: impl Into<OwnedFd>) {
    KEPT.lock().unwrap().push(fd.into());
}

fn sleeper() -> Command {
    let mut cmd = Command::new("sleep");
    cmd.arg("3600").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

#[reapkit::test]
#[file_serial]
#[should_panic(expected = "-> pipe:[")]
fn a_leaked_pipe_fails_the_test() {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    keep(reader);
    keep(writer);
}

#[reapkit::test]
#[file_serial]
#[should_panic(expected = "-> socket:[")]
fn a_leaked_socket_fails_the_test() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    keep(a);
    keep(b);
}

#[reapkit::test]
#[file_serial]
#[should_panic(expected = "reapkit-leaked-by-a-test.log")]
fn a_leaked_file_fails_the_test() {
    let path = std::env::temp_dir().join("reapkit-leaked-by-a-test.log");
    keep(std::fs::File::create(&path).unwrap());
    std::fs::remove_file(path).unwrap();
}

#[reapkit::test]
#[file_serial]
#[should_panic(expected = "`sleep 3600`, a child of the test process")]
fn a_leaked_child_fails_the_test() {
    // Started by hand, no guard: the scope finds it among the test process's children.
    std::mem::forget(sleeper().spawn().unwrap());
}

#[reapkit::test]
#[file_serial]
#[should_panic(expected = "`ProcessGuard` of `sleep 3600` created at tests/tests/leak_detection.rs")]
fn a_guard_that_outlives_the_test_fails_it() {
    std::mem::forget(ProcessGuard::spawn(sleeper()).unwrap());
}

#[reapkit::test]
#[file_serial]
#[should_panic(expected = "created at tests/tests/leak_detection.rs")]
fn a_leaked_container_fails_the_test() {
    if !engine() {
        panic!("created at tests/tests/leak_detection.rs: (no Docker engine; see the message above)");
    }
    std::mem::forget(Container::builder(IMAGE).cmd(["sleep", "3600"]).network_mode("none").start().unwrap());
}

/// A serialized scope: exact process-wide checks under both runners.
fn exact_scope() -> TestScope {
    let scope = TestScope::builder().serialized().enter();
    assert_ne!(scope.isolation(), Isolation::Shared);
    scope
}

#[test]
#[file_serial]
fn the_report_names_the_descriptor_number_and_target() {
    let scope = exact_scope();
    let (reader, writer) = nix::unistd::pipe().unwrap();
    let path = std::env::temp_dir().join(format!("reapkit-named-{}.txt", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let report = scope.finish().expect_err("three descriptors leaked");
    let inode = std::fs::read_link(format!("/proc/self/fd/{}", reader.as_raw_fd())).unwrap();
    for (fd, target) in [
        (reader.as_raw_fd(), inode.display().to_string()),
        (writer.as_raw_fd(), inode.display().to_string()),
        (file.as_raw_fd(), path.display().to_string()),
    ] {
        let named = format!("fd {fd} -> {target}");
        assert!(report.leaks.iter().any(|l| l.kind == LeakKind::Fd && l.what.starts_with(&named)), "{named}: {report}");
    }
    assert_eq!(report.leaks.len(), 3, "only what the test opened: {report}");
    assert!(report.to_string().contains("Fix: close it"), "says what to do: {report}");
    drop((reader, writer, file));
    std::fs::remove_file(path).unwrap();
}

#[test]
#[file_serial]
fn a_leaked_child_is_named_and_ended_and_an_older_child_with_the_same_command_survives() {
    // The decoy: the same command line, started before the scope by this process.
    let mut decoy = Decoy::start(fixture(&[]));
    let scope = exact_scope();
    let leaked = fixture(&["--children", "2"]).stdin(Stdio::piped()).spawn().unwrap();
    let pid = leaked.id() as i32;
    reapkit_tests::wait_until("the fixture's two children", || {
        (reapkit::procfs::descendants(pid).len() == 2).then_some(())
    });
    let tree = reapkit::procfs::descendants(pid);
    let report = scope.finish().expect_err("a child was left running");
    let leak = report.leaks.iter().find(|l| l.kind == LeakKind::Process).expect("the child is named");
    assert!(leak.what.starts_with(&format!("pid {pid} `")), "{report}");
    assert!(leak.what.contains("fixture-server --children 2"), "{report}");
    assert_eq!(leak.action, "killed with its descendants");
    reapkit_tests::assert_all_gone(&tree);
    assert!(reapkit::ProcId::of(pid).is_none_or(|p| reapkit_tests::exited(&p)));
    decoy.assert_untouched();
    drop(leaked); // its stdin pipe
}

#[test]
#[file_serial]
fn a_leaked_container_is_named_by_id_and_removed() {
    if !engine() {
        return;
    }
    let scope = exact_scope();
    let container = Container::builder(IMAGE).cmd(["sleep", "3600"]).network_mode("none").start().unwrap();
    let (id, guard) = (container.id().to_owned(), container.guard().to_owned());
    std::mem::forget(container);
    let report = scope.finish().expect_err("the container outlived the test");
    assert_eq!(report.leaks.len(), 1, "one finding, its descriptors folded under it:\n{report}");
    let leak = &report.leaks[0];
    assert_eq!(leak.kind, LeakKind::Container, "{report}");
    assert!(
        leak.what.starts_with(&format!("`Container` of `{IMAGE}` created at tests/tests/leak_detection.rs:")),
        "{report}"
    );
    assert!(leak.action.contains(&format!("its container {} was removed", &id[..12])), "{report}");
    assert!(!report.to_string().contains("allow ="), "no advice that would hide the bug:\n{report}");
    assert!(leftovers("reapkit.guard", &guard).is_empty(), "removed from the engine");
}

#[test]
#[file_serial]
fn a_forgotten_guard_is_one_finding_with_its_creation_site_and_no_allow_advice() {
    let scope = exact_scope();
    let line = line!() + 1;
    let server = reapkit::McpServer::start(fixture(&["--children", "1"])).unwrap();
    let pid = server.process().pid();
    std::mem::forget(server);
    let report = scope.finish().expect_err("the server was forgotten");
    let text = report.to_string();
    assert_eq!(report.leaks.len(), 1, "its processes and descriptors are folded under it:\n{text}");
    let site = format!("created at tests/tests/leak_detection.rs:{line} was never dropped");
    assert!(report.leaks[0].what.starts_with("`McpServer` of `"), "{text}");
    assert!(report.leaks[0].what.contains("fixture-server --children 1"), "what it ran:\n{text}");
    assert!(report.leaks[0].what.contains(&site), "{text}");
    assert!(report.leaks[0].action.contains(&pid.to_string()), "its pid is named:\n{text}");
    assert!(report.leaks[0].action.contains("descriptors it holds"), "{text}");
    assert!(!text.contains("allow ="), "no advice that would hide the bug:\n{text}");
    assert!(!text.contains("term_grace"), "{text}");
}

#[test]
#[file_serial]
fn a_clean_test_passes_and_its_guards_register_with_its_scope() {
    let scope = exact_scope();
    let server = ProcessGuard::spawn(fixture(&["--children", "1"])).unwrap();
    // Its environment reads empty until the kernel has finished setting up the exec.
    let environ = reapkit_tests::wait_until("the fixture's environment", || {
        Some(std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap()).filter(|e| !e.is_empty())
    });
    let test = format!("REAPKIT_TEST={}", scope.test_name());
    assert!(environ.split(|&b| b == 0).any(|e| e == test.as_bytes()), "the guard carries the scope's test name");
    let guard = server.id().to_owned();
    drop(server);
    assert!(marked(&guard).is_empty());
    scope.finish().expect("nothing leaked");
}

#[test]
#[file_serial]
fn a_guard_from_a_thread_the_test_spawned_is_the_tests() {
    let scope = exact_scope();
    let handle = scope.handle();
    let guard = std::thread::spawn(move || {
        let _attached = handle.enter();
        let server = ProcessGuard::spawn(sleeper()).unwrap();
        let id = server.id().to_owned();
        std::mem::forget(server);
        id
    })
    .join()
    .unwrap();
    assert_eq!(marked(&guard).len(), 1);
    let report = scope.finish().expect_err("the thread's guard was forgotten");
    assert_eq!(report.leaks.len(), 1, "one finding:\n{report}");
    assert!(
        report.leaks[0].what.contains("`ProcessGuard` of `sleep 3600` created at tests/tests/leak_detection.rs:"),
        "{report}"
    );
    assert!(report.leaks[0].action.contains("its process tree was torn down"), "{report}");
    assert!(marked(&guard).is_empty(), "torn down by the scope");
}

#[test]
#[file_serial]
fn deferred_teardown_runs_last_first_and_before_the_checks() {
    let scope = exact_scope();
    let order = std::sync::Arc::new(Mutex::new(Vec::new()));
    let (reader, writer) = nix::unistd::pipe().unwrap();
    scope.defer(move || drop((reader, writer)));
    for i in 1..=2 {
        let order = std::sync::Arc::clone(&order);
        scope.defer(move || order.lock().unwrap().push(i));
    }
    scope.defer(|| panic!("a teardown that fails"));
    let report = scope.finish().expect_err("a deferred teardown panicked");
    assert_eq!(*order.lock().unwrap(), [2, 1]);
    assert!(report.leaks.is_empty(), "the deferred close ran before the FD check: {report}");
    assert!(report.problems.iter().any(|p| p.contains("a teardown that fails")), "{report}");
}

#[test]
#[file_serial]
fn a_leaked_socket_or_pipe_is_named_by_what_it_is() {
    let scope = TestScope::builder().serialized().enter();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let local = client.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unix = std::os::unix::net::UnixListener::bind(dir.path().join("app.sock")).unwrap();
    let mut child = Command::new("sleep").arg("3600").stdin(Stdio::piped()).spawn().unwrap();
    let stdin = child.stdin.take().unwrap();
    let report = scope.finish().expect_err("four descriptors and a child leaked");
    let text = report.to_string();
    let _ = child.kill();
    let _ = child.wait();
    drop((listener, client, unix, stdin));
    for what in [
        format!("(TCP 127.0.0.1:{port}, listening)"),
        format!("(TCP {local} -> 127.0.0.1:{port}, established)"),
        format!("(Unix stream {}, listening)", dir.path().join("app.sock").display()),
        format!("(a pipe also held by pid {} `sleep 3600`)", child.id()),
    ] {
        assert!(text.contains(&what), "{what} in:\n{text}");
    }
}

#[test]
#[file_serial]
fn allowed_leaks_pass_and_are_listed() {
    let scope = TestScope::builder().serialized().allow("fd:pipe").enter();
    let (reader, writer) = nix::unistd::pipe().unwrap();
    scope.finish().expect("pipes are allowed");
    drop((reader, writer));
}

#[test]
#[file_serial]
fn the_baseline_accepts_listed_leaks_fails_new_ones_and_may_only_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(BASELINE_FILE);
    let scope_named = |name: &str| TestScope::builder().name(name).serialized().baseline(&file).enter();
    std::fs::write(&file, "# known\nlegacy::pipes fd:pipe\nlegacy::gone fd:socket\n").unwrap();
    assert!(std::env::var_os(ENV_BASELINE).is_none(), "the suite does not override the baseline");

    let scope = scope_named("legacy::pipes");
    let pipe = nix::unistd::pipe().unwrap();
    scope.finish().expect("the baseline lists it");

    let scope = scope_named("legacy::pipes");
    let socket = std::os::unix::net::UnixStream::pair().unwrap();
    let report = scope.finish().expect_err("a new kind of leak");
    assert!(report.leaks.iter().all(|l| l.what.contains("socket:[")), "{report}");

    let scope = scope_named("legacy::gone");
    let report = scope.finish().expect_err("the baseline lists a leak that is fixed");
    assert!(report.problems.iter().any(|p| p.contains(":3: `legacy::gone fd:socket` no longer leaks")), "{report}");
    drop((pipe, socket));

    std::fs::write(&file, "legacy::pipes pipe\n").unwrap();
    let report = scope_named("legacy::pipes").finish().expect_err("a malformed baseline");
    assert!(report.problems.iter().any(|p| p.contains(":1:") && p.contains("`<kind>:`")), "{report}");
}

#[test]
#[file_serial]
fn a_panicking_body_still_tears_down_and_keeps_its_own_panic() {
    let mut guard = String::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reapkit::scope(|_| {
            let server = ProcessGuard::spawn(sleeper()).unwrap();
            guard = server.id().to_owned();
            std::mem::forget(server);
            panic!("the test's own failure");
        })
    }));
    let panic = outcome.expect_err("the body panicked");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the test's own failure"));
    assert!(marked(&guard).is_empty(), "torn down although the body panicked");
}

/// Under `cargo test` a shared scope ending later sees every descriptor still open; one that a
/// serialized test was already failed for is that test's, not the run's, or the binary would
/// fail again at exit (the order in which it happens in a run is the scheduler's; here it is fixed).
#[test]
#[file_serial]
fn a_descriptor_a_test_was_failed_for_is_not_counted_again_at_exit() {
    let scope = TestScope::builder().serialized().enter();
    let (reader, writer) = nix::unistd::pipe().unwrap();
    let pipe = format!("fd {} -> ", reader.as_raw_fd());
    keep(reader);
    keep(writer);
    let report = scope.finish().expect_err("the pipe fails the serialized test");
    assert!(report.to_string().contains(&pipe), "{report}");
    reapkit::scope(|_| {});
}

#[reapkit::test(allow = ["fd:pipe", "fd:socket"], settle = "50ms", term_grace = "300ms")]
#[file_serial]
fn attribute_options_allow_named_leaks(scope: &TestScope) {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    keep(reader);
    keep(writer);
    let server = ProcessGuard::spawn(sleeper()).unwrap();
    assert_eq!(server.graces().term, std::time::Duration::from_millis(300), "the scope's grace");
    scope.defer(|| {});
}

#[reapkit::test(fd_check = false)]
#[file_serial]
fn the_fd_check_can_be_turned_off() {
    keep(nix::unistd::pipe().unwrap().0);
}

#[tokio::test]
#[reapkit::test]
#[file_serial]
async fn under_tokio_test_the_scope_wraps_the_runtime() {
    let server = ProcessGuard::spawn(sleeper()).unwrap();
    tokio::task::yield_now().await;
    // Held by a task that never finishes: the runtime drops it, inside the scope.
    tokio::spawn(async move {
        let _server = server;
        std::future::pending::<()>().await;
    });
}

#[reapkit::test]
#[tokio::test]
#[file_serial]
#[should_panic(expected = "held by a thread or task that outlived the test")]
async fn inside_tokio_test_the_scope_sees_tasks_still_holding_guards() {
    let server = ProcessGuard::spawn(sleeper()).unwrap();
    tokio::spawn(async move {
        let _server = server;
        std::future::pending::<()>().await;
    });
    tokio::task::yield_now().await;
}
