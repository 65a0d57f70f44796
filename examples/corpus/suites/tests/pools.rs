//! A reqwest client and its keep-alive connection pool, against an HTTP server of the test's own.

mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/1.1 server that keeps connections alive and answers every request `ok`.
async fn server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf).await {
                    let _ = n;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok";
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
#[reapkit::test]
async fn requests_reuse_the_pooled_connection() {
    let (addr, task) = server().await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let body = client.get(format!("http://{addr}/")).send().await.expect("sent").text().await.expect("body");
        assert_eq!(body, "ok");
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[reapkit::test]
async fn concurrent_requests_share_a_pool() {
    let (addr, task) = server().await;
    let client = reqwest::Client::new();
    let requests = (0..8).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.get(format!("http://{addr}/")).send().await.map(|r| r.status()) })
    });
    for request in requests {
        assert!(request.await.expect("joined").expect("sent").is_success());
    }
    task.abort();
}

#[tokio::test]
#[reapkit::test]
async fn leaks_on_purpose_a_listener_it_forgets() {
    if common::leak().is_some() {
        std::mem::forget(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    }
}
