//! rmcp's client over reapkit's transport (`reapkit::rmcp::child`) vs over rmcp's own
//! `TokioChildProcess`, side by side, one run, on a current-thread runtime:
//!
//! - teardown of a cooperative server (exits on stdin EOF) and of one that ignores EOF:
//!   `cancel().await` through each transport, and a drop of the service (timed until the server
//!   is gone, seen through its pidfd); the floor is the server's own exit (close stdin, wait);
//! - the handshake (spawn + `initialize`) through each;
//! - eight servers started one after the other vs at once (`McpClient`, one runtime thread).
//!
//! Targets (issue "rmcp and async tests"): teardown ≤ the server's own exit + 1 ms; the
//! EOF-ignoring server ends within reapkit's EOF grace (300 ms) + SIGTERM, not rmcp's 3 s.
//! Run: `cargo xtask bench` (or `cargo bench -p reapkit-tests --bench rmcp`).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reapkit::ProcessGuard;
use reapkit_tests::{bench_rounds, fixture, fixture_path, ms, print_table, Samples};
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;

const ROUNDS: usize = 30;
/// rmcp's close waits 3 s for a server that ignores EOF: a few rounds say enough.
const SLOW_ROUNDS: usize = 3;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let rounds = bench_rounds(ROUNDS);
    runtime.block_on(teardown(&[], rounds, "a cooperative MCP server (exits on stdin EOF)"));
    runtime.block_on(teardown(&["--ignore-eof"], bench_rounds(SLOW_ROUNDS), "a server that ignores stdin EOF"));
    runtime.block_on(handshake(rounds));
    runtime.block_on(concurrent_starts(bench_rounds(5)));
}

async fn teardown(flags: &[&str], rounds: usize, what: &str) {
    let (mut own, mut ours, mut ours_drop, mut theirs, mut theirs_drop) = Default::default();
    // Interleaved, so drift in machine load hits every variant alike.
    for _ in 0..rounds {
        push(&mut own, own_exit(flags));
        push(&mut ours, time_close(Transport::Reapkit, flags).await);
        push(&mut ours_drop, time_drop(Transport::Reapkit, flags).await);
        push(&mut theirs, time_close(Transport::Rmcp, flags).await);
        push(&mut theirs_drop, time_drop(Transport::Rmcp, flags).await);
    }
    println!("\nteardown of {what} through rmcp's client, {rounds} rounds, median (p90)");
    let floor = own.median();
    print_table(
        &mut [
            ("own exit", &mut own),
            ("reapkit cancel()", &mut ours),
            ("reapkit drop", &mut ours_drop),
            ("TokioChildProcess cancel()", &mut theirs),
            ("TokioChildProcess drop", &mut theirs_drop),
        ],
        &[("vs own exit", "own exit"), ("vs rmcp's", "TokioChildProcess cancel()")],
        3,
    );
    if flags.is_empty() {
        let overhead = ours.median().saturating_sub(floor);
        let verdict = if overhead <= Duration::from_millis(1) { "within" } else { "OVER" };
        println!("reapkit's overhead over the server's own exit: {} ({verdict} the 1 ms target)", ms(overhead, 3));
    } else {
        let bound = reapkit::DEFAULT_EOF_GRACE + Duration::from_millis(100);
        let verdict = if ours.median() <= bound { "within" } else { "OVER" };
        println!("reapkit ends it in {} ({verdict} its EOF grace + SIGTERM, {})", ms(ours.median(), 1), ms(bound, 0));
    }
}

fn push(samples: &mut Samples, d: Duration) {
    samples.push(d);
}

#[derive(Clone, Copy)]
enum Transport {
    Reapkit,
    Rmcp,
}

type Client = rmcp::service::RunningService<rmcp::RoleClient, ()>;

/// Spawns the fixture through `transport` and handshakes; returns the client and the server's pid.
async fn start(transport: Transport, flags: &[&str]) -> (Client, i32) {
    let mut cmd = tokio::process::Command::new(fixture_path());
    cmd.args(flags);
    match transport {
        Transport::Reapkit => {
            let transport = reapkit::rmcp::child(cmd).expect("spawn");
            let pid = transport.handle().pid();
            (().serve(transport).await.expect("handshake"), pid)
        }
        Transport::Rmcp => {
            // stderr not inherited, as reapkit's is not (it drains it into a ring).
            let (transport, _) = TokioChildProcess::builder(cmd).stderr(Stdio::null()).spawn().expect("spawn");
            let pid = transport.id().expect("a pid") as i32;
            (().serve(transport).await.expect("handshake"), pid)
        }
    }
}

async fn time_close(transport: Transport, flags: &[&str]) -> Duration {
    let (client, pid) = start(transport, flags).await;
    let gone = Exit::watch(pid);
    let started = Instant::now();
    client.cancel().await.expect("cancel");
    let took = started.elapsed();
    gone.wait().await;
    took
}

/// A drop of the running service, timed until the server is gone (rmcp's task closes the
/// transport in the background).
async fn time_drop(transport: Transport, flags: &[&str]) -> Duration {
    let (client, pid) = start(transport, flags).await;
    let gone = Exit::watch(pid);
    let started = Instant::now();
    drop(client);
    gone.wait().await;
    started.elapsed()
}

/// The server's exit, seen through a pidfd registered with the runtime.
struct Exit(tokio::io::unix::AsyncFd<OwnedFd>);

impl Exit {
    fn watch(pid: i32) -> Exit {
        // SAFETY: pidfd_open returns a new descriptor we own, or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        assert!(fd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
        // SAFETY: just opened, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd keeps its descriptor open, and the same, for as long as it lives.
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        Exit(fd.map_err(|e| e.into_parts().1).expect("register the pidfd"))
    }

    async fn wait(self) {
        let _ = self.0.readable().await.expect("the pidfd becomes readable at exit");
    }
}

/// The floor: the same server spawned plainly and handshaken by hand; close its stdin, wait.
fn own_exit(flags: &[&str]) -> Duration {
    let mut child = fixture(flags).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#;
    writeln!(child.stdin.as_mut().unwrap(), "{init}").expect("write");
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut String::new()).expect("read");
    let started = Instant::now();
    drop(child.stdin.take());
    if flags.contains(&"--ignore-eof") {
        // It will not exit on its own: its floor is the SIGTERM that follows.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
    }
    child.wait().expect("wait");
    started.elapsed()
}

async fn handshake(rounds: usize) {
    let (mut ours, mut theirs) = (Samples::default(), Samples::default());
    for _ in 0..rounds {
        for (transport, samples) in [(Transport::Reapkit, &mut ours), (Transport::Rmcp, &mut theirs)] {
            let started = Instant::now();
            let (client, _) = start(transport, &[]).await;
            samples.push(started.elapsed());
            client.cancel().await.expect("cancel");
        }
    }
    println!("\nspawn + handshake through rmcp's client, {rounds} rounds, median (p90)");
    print_table(
        &mut [("reapkit::rmcp::child", &mut ours), ("TokioChildProcess", &mut theirs)],
        &[("vs rmcp's", "TokioChildProcess")],
        3,
    );
}

async fn concurrent_starts(rounds: usize) {
    const N: usize = 8;
    let start = || ProcessGuard::builder(fixture(&["--delay-ms", "50"])).mcp().serve();
    let (mut one_by_one, mut at_once) = (Samples::default(), Samples::default());
    for _ in 0..rounds {
        let started = Instant::now();
        let mut servers = Vec::new();
        for _ in 0..N {
            servers.push(start().await.expect("starts"));
        }
        one_by_one.push(started.elapsed());
        drop(servers);

        let started = Instant::now();
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..N {
            starts.spawn(start());
        }
        let servers = starts.join_all().await;
        at_once.push(started.elapsed());
        assert!(servers.iter().all(Result::is_ok));
    }
    println!("\n{N} servers answering `initialize` after 50 ms, started on one runtime thread, {rounds} rounds");
    print_table(
        &mut [("one after the other", &mut one_by_one), ("at once", &mut at_once)],
        &[("vs sequential", "one after the other")],
        1,
    );
}
