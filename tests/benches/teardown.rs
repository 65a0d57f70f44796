//! Teardown latency of a cooperative MCP server (exits on stdin EOF), side by side, one run.
//!
//! - `own exit`: close stdin, `wait()`: the server's own exit time — the floor.
//! - `kill+wait`: `child.kill(); child.wait()` — what most code does (and it leaks grandchildren).
//! - `guard`: `McpServer::shutdown()`, the full protocol (EOF, group check, escapee discovery,
//!   `/proc` marker scan, reap, ledger removal).
//! - `guard, no scan`: the same without the `/proc` marker scan.
//!
//! Every server is started and handshaken before the clock starts, so only teardown is timed.
//! Target (DESIGN.md): the guard costs at most the server's own exit time + 1 ms.
//! Run: `cargo xtask bench` (or `cargo bench -p reapkit-tests --bench teardown`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use reapkit::ProcessGuard;
use reapkit_tests::{bench_rounds, fixture, ms, print_table, Samples};

const ROUNDS: usize = 60;

fn main() {
    let rounds = bench_rounds(ROUNDS);
    let mut own_exit = Samples::default();
    let mut kill_wait = Samples::default();
    let mut guard = Samples::default();
    let mut guard_no_scan = Samples::default();
    // Interleaved, so drift in machine load hits every variant alike.
    for _ in 0..rounds {
        own_exit.push(time_plain(|mut child| {
            drop(child.stdin.take());
            child.wait().expect("wait");
        }));
        kill_wait.push(time_plain(|mut child| {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }));
        guard.push(time_guard(true));
        guard_no_scan.push(time_guard(false));
    }
    let floor = own_exit.median();
    println!("teardown of a cooperative MCP server, {rounds} rounds, median (p90)");
    print_table(
        &mut [
            ("own exit", &mut own_exit),
            ("kill+wait", &mut kill_wait),
            ("guard", &mut guard),
            ("guard, no scan", &mut guard_no_scan),
        ],
        &[("vs own exit", "own exit"), ("vs kill+wait", "kill+wait")],
        3,
    );
    let overhead = guard.median().saturating_sub(floor);
    let verdict = if overhead <= Duration::from_millis(1) { "within" } else { "OVER" };
    println!("guard overhead over the server's own exit: {} ({verdict} the 1 ms target)", ms(overhead, 3));
}

/// Spawns the fixture plainly, handshakes, then times `teardown`.
fn time_plain(teardown: impl FnOnce(Child)) -> Duration {
    let mut child = fixture(&[]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn");
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#;
    writeln!(child.stdin.as_mut().unwrap(), "{init}").expect("write");
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut String::new()).expect("read");
    let start = Instant::now();
    teardown(child);
    start.elapsed()
}

fn time_guard(scan: bool) -> Duration {
    let server = ProcessGuard::builder(fixture(&[])).scan_proc(scan).mcp().start().expect("start");
    let start = Instant::now();
    let report = server.shutdown();
    let elapsed = start.elapsed();
    assert!(report.is_clean() && report.ended_by == reapkit::EndedBy::StdinEof, "{report}");
    elapsed
}
