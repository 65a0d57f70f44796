//! tokio with its `process`, `signal` and `net` features: children awaited, a signal stream,
//! a TCP echo — in both orders of the attributes, on both flavours of runtime.

mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
#[reapkit::test]
async fn a_child_is_awaited() {
    let status = tokio::process::Command::new("true").status().await.expect("true runs");
    assert!(status.success());
}

#[tokio::test]
#[reapkit::test]
async fn a_signal_stream_receives_its_signal() {
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).expect("a stream");
    let me = std::process::id().to_string();
    tokio::process::Command::new("kill").args(["-USR1", &me]).status().await.expect("kill runs");
    usr1.recv().await.expect("the signal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[reapkit::test]
async fn a_tcp_echo_round_trips() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.expect("read");
        conn.write_all(&buf).await.expect("write");
    });
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    client.write_all(b"hello").await.expect("write");
    let mut back = [0u8; 5];
    client.read_exact(&mut back).await.expect("read");
    assert_eq!(&back, b"hello");
    server.await.expect("the server task");
}

#[reapkit::test]
#[tokio::test]
async fn a_guarded_server_ends_inside_the_runtime() {
    let guard = reapkit::ProcessGuard::spawn(std::process::Command::new("cat")).expect("cat starts");
    assert!(guard.shutdown_async().await.is_clean());
}

#[tokio::test]
#[reapkit::test]
async fn leaks_on_purpose_a_child_it_never_awaits() {
    if let Some(token) = common::leak() {
        let child = tokio::process::Command::new("sleep").arg(token).spawn().expect("sleep starts");
        std::mem::forget(child);
    }
}

#[reapkit::test]
fn leaks_on_purpose_an_orphan_of_its_helper() {
    if let Some(token) = common::leak() {
        // A helper that double-forks a daemon with a cleared environment in a session of its own.
        let script = format!("env -i setsid sh -c 'exec sleep {token}1 </dev/null >/dev/null 2>&1 &'");
        let status = std::process::Command::new("sh").args(["-c", &script]).status().expect("sh runs");
        assert!(status.success());
    }
}
