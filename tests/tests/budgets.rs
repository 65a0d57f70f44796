//! Resource budgets on the fixture server: a well-behaved server holds a flat budget over
//! 1000 requests, a leaking one is caught within the first requests after the warm-up, and
//! the error names what leaked. After each case the server's tree is checked gone from outside.

use reapkit::{Budget, Error, Limit, McpServer, ProcId, ProcessGuard};
use reapkit_tests::{assert_all_gone, fixture, marked, tree_of, wait_until};
use serde_json::json;

const WARM_UP: usize = 10;

fn start(flags: &[&str]) -> McpServer {
    ProcessGuard::builder(fixture(flags)).mcp().start().expect("the fixture starts")
}

/// Drops the server and checks from outside that nothing of `tree` is left, zombies included.
fn drop_and_check(server: McpServer, tree: Vec<ProcId>) {
    let guard = server.process().id().to_owned();
    drop(server);
    assert_all_gone(&tree);
    assert!(marked(&guard).is_empty(), "marked processes survive: {:?}", marked(&guard));
}

fn tree(server: &McpServer) -> Vec<ProcId> {
    tree_of(server.process().id(), server.process().proc_id())
}

#[test]
fn a_server_holds_a_flat_budget_over_1000_requests() {
    let mut server = start(&[]);
    let budget = Budget::new()
        .fds(Limit::Flat)
        .threads(Limit::Flat)
        .descendants(Limit::AtMost(0))
        .rss_bytes(Limit::GrowthAtMost(8 << 20))
        .warm_up(WARM_UP);
    let mut watch = server.process().watch(budget).expect("within budget at the start");
    for i in 0..1000 {
        let text = format!("request {i}");
        let answer = server.call_tool("echo", json!({ "text": text })).expect("echo");
        assert_eq!(answer["content"][0]["text"], text.as_str());
        watch.sample().expect("a well-behaved server stays within its budget");
    }
    let usage = watch.finish().expect("within budget");
    println!("{usage}");
    assert_eq!(usage.samples, 1001);
    assert_eq!(usage.fds_peak, usage.fds_baseline, "{usage}");
    assert_eq!((usage.descendants_baseline, usage.descendants_peak), (0, 0), "{usage}");
    assert!(usage.rss_bytes_peak <= usage.rss_bytes_baseline + (8 << 20), "{usage}");
    let tree = tree(&server);
    drop_and_check(server, tree);
}

#[test]
fn a_server_leaking_a_descriptor_per_request_is_caught_after_the_warm_up() {
    let mut server = start(&["--leak-fds", "1"]);
    let mut watch = server.process().watch(Budget::new().fds(Limit::Flat).warm_up(WARM_UP)).expect("starts");
    let mut caught = None;
    for request in 1..=WARM_UP + 5 {
        server.call_tool("echo", json!({"text": "leak"})).expect("echo");
        if let Err(err) = watch.sample() {
            caught = Some((request, err));
            break;
        }
    }
    let (request, err) = caught.expect("the leak is caught");
    assert_eq!(request, WARM_UP + 1, "the first request after the baseline leaks: {err}");
    let Error::BudgetExceeded { pid, report, .. } = &err else { panic!("not a budget error: {err}") };
    assert_eq!(*pid, server.process().pid());
    let message = err.to_string();
    for expected in ["fds:", "flat", "at sample 11", "opened since the baseline (1)", "-> /dev/null", "next:"] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
    assert!(report.contains("baseline"), "{report}");
    println!("{message}");
    let tree = tree(&server);
    drop_and_check(server, tree);
}

#[test]
fn a_server_starting_children_is_caught_by_its_descendants_budget() {
    let mut server = start(&[]);
    let mut watch = server.process().watch(Budget::new().descendants(Limit::GrowthAtMost(2))).expect("starts");
    let mut children = Vec::new();
    let err = loop {
        let answer = server.call_tool("spawn_child", json!({})).expect("spawn_child");
        let pid: i32 = answer["content"][0]["text"].as_str().and_then(|t| t.parse().ok()).expect("a pid");
        children.push(pid);
        assert!(children.len() <= 3, "three children are over a growth of 2");
        if let Err(err) = watch.sample() {
            break err;
        }
    };
    assert_eq!(children.len(), 3, "{err}");
    assert!(matches!(err, Error::BudgetExceeded { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("descendants: 3 at sample 3"), "{message}");
    assert!(message.contains("growth at most 2"), "{message}");
    for pid in &children {
        assert!(message.contains(&format!("pid {pid} ")), "child {pid} named in {message}");
    }
    assert!(message.contains("--sleep-forever"), "command lines in {message}");
    println!("{message}");
    // The newest child may still be in `exec`, its environment (the marker) not yet set up.
    let tree = wait_until("the server and its three children carrying the marker", || {
        Some(tree(&server)).filter(|tree| tree.len() == 4)
    });
    drop_and_check(server, tree);
}
