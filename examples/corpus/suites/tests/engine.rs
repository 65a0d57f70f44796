//! bollard's own client against the local Docker engine, beside reapkit's container guards.

mod common;

#[tokio::test]
#[reapkit::test]
async fn the_engine_answers_bollard() {
    let docker = bollard::Docker::connect_with_local_defaults().expect("a client");
    let docker = docker.negotiate_version().await.expect("the engine answers");
    let version = docker.version().await.expect("a version");
    assert!(version.api_version.is_some());
}

#[reapkit::test]
fn a_guarded_container_runs_and_is_removed() {
    let container = reapkit::Container::builder("reapkit-busybox:latest")
        .cmd(["sh", "-c", "echo ready; exec sleep 1000"])
        .network_mode("none")
        .wait_for(reapkit::Ready::LogLine("ready".into()))
        .start()
        .expect("starts");
    assert_eq!(container.exec(&["echo", "hi"]).expect("exec").output.trim(), "hi");
}

#[reapkit::test]
fn leaks_on_purpose_a_container_it_forgets() {
    if common::leak().is_some() {
        let container =
            reapkit::Container::builder("reapkit-busybox:latest").cmd(["sleep", "1000"]).network_mode("none").start();
        std::mem::forget(container.expect("starts"));
    }
}

/// Tests that each start a server and a container, many at once: what reapkit holds meanwhile
/// (its pipes, pidfds, engine connections, the FD listings of its checks) is never a test's leak.
macro_rules! a_server_and_a_container {
    ($($name:ident),*) => {$(
        #[reapkit::test]
        fn $name() {
            let server = reapkit::ProcessGuard::spawn(std::process::Command::new("cat")).expect("cat starts");
            let container = reapkit::Container::builder("reapkit-busybox:latest")
                .cmd(["sleep", "1000"])
                .network_mode("none")
                .start()
                .expect("starts");
            drop(container);
            assert!(server.shutdown().is_clean());
        }
    )*};
}

a_server_and_a_container!(guards_1, guards_2, guards_3, guards_4, guards_5, guards_6);
