//! The false-alarm corpus (`examples/corpus`): realistic user suites that leak nothing — tokio
//! with process/signal/net, an rmcp client of a real server, a reqwest connection pool, bollard,
//! tracing-appender's non-blocking writer, rayon pools — must pass with zero findings under real
//! nextest (with the README's setup and wrapper scripts) and under plain parallel `cargo test`;
//! and, with `CORPUS_LEAK`, the one deliberate leak of each suite must fail it, named, under both,
//! with nothing left running afterwards.
//!
//! `cargo xtask test` builds the corpus first and runs this file on its own, after the rest of
//! the suite: the corpus's setup script and its runs must not meet the leftovers other tests
//! make on purpose.

use std::path::{Path, PathBuf};
use std::process::Output;

use reapkit_tests::{by_token, is_zombie, token, user_cargo, with_reapkit_on_path};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/corpus")
}

fn run(args: &[&str], leak: Option<&str>) -> (Output, String) {
    let mut cmd = user_cargo(&corpus(), "corpus", args);
    // The corpus's nextest config runs the installed binary, the README's other variant.
    with_reapkit_on_path(&mut cmd);
    if let Some(token) = leak {
        cmd.env("CORPUS_LEAK", token);
    }
    let out = cmd.output().expect("cargo runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

/// What reapkit says when it found something: none of it may appear in a clean run.
const FINDINGS: [&str; 7] = [
    "still open after the test",
    "was never dropped",
    "killed with its descendants",
    "left behind",
    "leaked resource",
    "no single test could be blamed for",
    "could not check",
];

/// The deliberate leak of each suite, and what its report must name.
fn leaks(token: &str) -> [(&'static str, &'static str, String); 6] {
    [
        ("tokio", "leaks_on_purpose_a_child_it_never_awaits", format!("sleep {token}")),
        ("tokio", "leaks_on_purpose_an_orphan_of_its_helper", format!("sleep {token}1")),
        ("rmcp", "leaks_on_purpose_a_client_it_forgets", "was never dropped".into()),
        ("pools", "leaks_on_purpose_a_listener_it_forgets", "socket:[".into()),
        ("engine", "leaks_on_purpose_a_container_it_forgets", "`Container` of `reapkit-busybox:latest`".into()),
        ("logging", "leaks_on_purpose_a_pipe_it_forgets", "pipe:[".into()),
    ]
}

/// One test, not two: the runs share the corpus's target dir and ledger, and the clean runs
/// must not meet the leaky ones' leftovers.
#[test]
fn well_behaved_suites_have_no_finding_and_each_deliberate_leak_is_caught_under_both_runners() {
    for args in [&["nextest", "run", "--no-fail-fast"][..], &["test", "--no-fail-fast"]] {
        let (out, text) = run(args, None);
        assert_eq!(out.status.code(), Some(0), "`cargo {}` fails a suite that leaks nothing:\n{text}", args[0]);
        for finding in FINDINGS {
            assert!(!text.contains(finding), "a false finding ({finding}) under `cargo {}`:\n{text}", args[0]);
        }
    }

    let token = token();
    let (out, text) = run(&["nextest", "run", "--no-fail-fast"], Some(&token));
    assert_ne!(out.status.code(), Some(0), "{text}");
    for (suite, test, named) in leaks(&token) {
        assert!(
            text.lines().any(|l| l.contains("FAIL") && l.ends_with(&format!("suites::{suite} {test}"))),
            "nextest: {suite}::{test} fails:\n{text}"
        );
        assert!(text.contains(&named), "nextest: {suite}'s leak is named ({named}):\n{text}");
    }
    let mut failed: Vec<&str> =
        text.lines().filter(|l| l.trim_start().starts_with("FAIL [")).filter_map(|l| l.rsplit(' ').next()).collect();
    failed.sort_unstable();
    failed.dedup();
    assert_eq!(failed.len(), leaks(&token).len(), "only the leaky tests fail: {failed:?}\n{text}");

    let (out, text) = run(&["test", "--no-fail-fast"], Some(&token));
    assert_ne!(out.status.code(), Some(0), "{text}");
    for (_, test, named) in leaks(&token) {
        assert!(text.contains(test), "cargo test: {test} is named:\n{text}");
        assert!(text.contains(&named), "cargo test: its leak is named ({named}):\n{text}");
    }
    let mut left = by_token(&token);
    left.extend(by_token(&format!("{token}1")));
    left.retain(|id| !is_zombie(id.pid));
    assert!(left.is_empty(), "a deliberate leak outlived its run: {left:?}");
}
