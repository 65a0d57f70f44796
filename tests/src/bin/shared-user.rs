//! A test process of a run that shares fixtures, as nextest runs one per test and `cargo test`
//! one for many threads: it attaches to the run's shared fixture server (the fixture server on
//! port 0) and, with `--container`, to a shared busybox container, from `--threads N` threads
//! (default 1). Its run is its parent process: the shell or runner that started it.
//!
//! Output, one line per attach: `attached <server|container> <started here: true|false>
//! <keeper pid> <server pid or container id> <port or ->`, then `all attached`. It then holds
//! its leases until every fixture has ended (its run is over) and prints `ended`, or until
//! stdin closes, and exits 0. An attach that fails prints `error <why>` and exits 1.
//! Flags: `--threads N`, `--container`, `--name S` (the fixtures' name prefix, default
//! `suite`), `--ledger-dir D`, `--reuse-ms N` (reused across runs, ending N ms after its last
//! lease), `--forget-in-scope` (attach once inside a test scope, forget the lease, print the
//! scope's verdict as one line `scope <keeper pid> <report>` and exit).

use std::io::Read;
use std::time::Duration;

use reapkit::{Container, Listen, Shared};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let threads: usize = value("--threads").map_or(1, |n| n.parse().expect("--threads N"));
    let name = value("--name").unwrap_or_else(|| "suite".into());
    let ledger = value("--ledger-dir");
    let with_container = args.iter().any(|a| a == "--container");
    let exe = std::env::current_exe().expect("our path");
    let fixture = exe.with_file_name("fixture-server").to_string_lossy().into_owned();

    let mut fixtures = vec![(
        "server",
        Shared::command(&format!("{name}-server"), [fixture, "--listen-tcp".into(), "0".into()]).listen(Listen::Tcp(0)),
    )];
    if with_container {
        let builder =
            Container::builder("reapkit-busybox:latest").cmd(["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]);
        fixtures.push(("container", Shared::container(&format!("{name}-box"), builder)));
    }
    if let Some(dir) = &ledger {
        fixtures = fixtures.into_iter().map(|(kind, s)| (kind, s.ledger_dir(dir))).collect();
    }
    if let Some(ms) = value("--reuse-ms") {
        let idle = Duration::from_millis(ms.parse().expect("--reuse-ms N"));
        fixtures = fixtures.into_iter().map(|(kind, s)| (kind, s.reuse_for(idle))).collect();
    }
    if args.iter().any(|a| a == "--forget-in-scope") {
        let scope = reapkit::TestScope::enter();
        let lease = fixtures[0].1.attach().expect("attach");
        let keeper = lease.info().keeper.pid;
        std::mem::forget(lease);
        let verdict = scope.finish().map_or_else(|report| report.to_string(), |_| "clean".into());
        println!("scope {keeper} {}", verdict.replace('\n', " "));
        return;
    }
    let leases: Vec<(&str, reapkit::SharedFixture)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .flat_map(|_| fixtures.iter().map(|(kind, shared)| (*kind, s.spawn(|| shared.attach()))))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(kind, h)| (kind, h.join().expect("the attach thread")))
            .collect();
        handles
            .into_iter()
            .map(|(kind, lease)| match lease {
                Ok(lease) => (kind, lease),
                Err(e) => {
                    println!("error {}", format!("{e}").replace('\n', " "));
                    std::process::exit(1);
                }
            })
            .collect()
    });
    for (kind, lease) in &leases {
        let what = lease.pid().map_or_else(|| lease.container_id().unwrap_or("-").to_owned(), |p| p.to_string());
        let port = lease.port().map_or_else(|| "-".to_owned(), |p| p.to_string());
        println!("attached {kind} {} {} {what} {port}", lease.started_here(), lease.info().keeper.pid);
    }
    println!("all attached");
    // Until the fixtures end, or the caller closes stdin.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    for (_, lease) in &leases {
        while !lease.wait_ended(Duration::from_secs(3600)) {}
    }
    println!("ended");
}
