//! A user's workspace (`examples/user-workspace`, depending on reapkit by path, set up as the
//! README says), run under nextest and under plain `cargo test` from the outside: the passing
//! tests pass, and each leaky one — a forgotten guard, a bare child, a leaked file, a forgotten
//! container — fails naming its leak, under both runners; nothing is left running after.
//!
//! `cargo xtask test` runs this file on its own, after the rest of the suite: the workspace's
//! nextest setup script is a machine-wide `reapkit reap`, which must not meet the leftovers
//! other tests make on purpose.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use reapkit::ProcId;
use reapkit_tests::{is_zombie, real_server_argv};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate is in the workspace").to_path_buf()
}

fn workspace() -> PathBuf {
    root().join("examples/user-workspace")
}

/// `cargo <args>` in the user workspace, as a user runs it: none of this suite's runner or
/// reapkit variables, the `reapkit` binary on PATH, its own target directory.
fn cargo(args: &[&str]) -> Output {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("NEXTEST") || key_text.starts_with("REAPKIT_") || key_text.starts_with("RUST_TEST") {
            cmd.env_remove(&key);
        }
    }
    let bin = root().join("target/debug");
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("a PATH");
    cmd.args(args)
        .current_dir(workspace())
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", root().join("target/user-workspace"))
        .env("MCP_SERVER_TIME", real_server_argv("REAPKIT_TEST_PY_TIME"))
        .env("REAPKIT_REQUIRE_DOCKER", "1");
    cmd.output().expect("cargo runs")
}

/// The line of `leaky.rs` that holds `needle`, 1-based.
fn line_of(needle: &str) -> usize {
    let text = std::fs::read_to_string(workspace().join("app-tests/tests/leaky.rs")).expect("leaky.rs");
    text.lines().position(|l| l.contains(needle)).expect("the line is there") + 1
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The messages each leaky test must fail with, under both runners.
fn forgotten_guard() -> String {
    format!(
        "`ProcessGuard` of `sleep 3600` created at app-tests/tests/leaky.rs:{} was never dropped",
        line_of("ProcessGuard::spawn(sleep())")
    )
}

fn forgotten_container() -> String {
    format!(
        "`Container` of `reapkit-busybox:latest` created at app-tests/tests/leaky.rs:{} was never dropped",
        line_of("Container::builder(")
    )
}

#[test]
fn under_nextest_each_leaky_test_fails_naming_its_leak_and_the_passing_ones_pass() {
    let out = cargo(&["nextest", "run", "--no-fail-fast"]);
    let all = text(&out);
    assert_ne!(out.status.code(), Some(0), "the leaky tests fail the run:\n{all}");
    for test in ["forgets_its_guard", "leaves_a_bare_child_running", "leaks_a_file", "forgets_its_container"] {
        assert!(
            all.lines().any(|l| l.contains("FAIL") && l.ends_with(&format!("app-tests::leaky {test}"))),
            "{test}:\n{all}"
        );
    }
    for test in ["the_time_server_answers", "a_container_runs_and_is_removed"] {
        assert!(
            all.lines().any(|l| l.contains("PASS") && l.ends_with(&format!("app-tests::passing {test}"))),
            "{test}:\n{all}"
        );
    }
    for message in [
        forgotten_guard(),
        forgotten_container(),
        "`sleep 3600`, a child of the test process: killed with its descendants".to_owned(),
        "(file): still open after the test".to_owned(),
    ] {
        assert!(all.contains(&message), "{message}:\n{all}");
    }
    let guard_finding = all.lines().position(|l| l.contains(&forgotten_guard())).expect("the finding");
    let next = all.lines().nth(guard_finding + 1).unwrap_or_default();
    assert!(!next.contains("allow ="), "a forgotten guard gets no `allow` advice:\n{all}");
}

#[test]
fn under_cargo_test_the_same_leaks_fail_the_run_and_nothing_is_left_running() {
    let passing = cargo(&["test", "--test", "passing"]);
    assert_eq!(passing.status.code(), Some(0), "{}", text(&passing));

    let out = cargo(&["test", "--test", "leaky"]);
    let all = text(&out);
    assert_ne!(out.status.code(), Some(0), "the leaks fail the run:\n{all}");
    // What a scope can pin on its test fails that test, threads or not.
    for (test, message) in [("forgets_its_guard", forgotten_guard()), ("forgets_its_container", forgotten_container())]
    {
        assert!(all.contains(&format!("test {test} ... FAILED")), "{test}:\n{all}");
        assert!(all.contains(&message), "{message}:\n{all}");
    }
    // What no single test can be blamed for (tests are threads) fails the run at its exit.
    let unpinned = all
        .split("that no single test could be blamed for")
        .nth(1)
        .unwrap_or_else(|| panic!("the run's own report:\n{all}"));
    assert!(all.contains("leaked 2 resources that no single test could be blamed for"), "{all}");
    assert!(unpinned.contains("`sleep 3600`: killed with its descendants"), "{all}");
    assert!(unpinned.contains("/tmp/app-tests-leaked-") && unpinned.contains(": still open"), "{all}");
    assert!(unpinned.contains("leaves_a_bare_child_running") && unpinned.contains("leaks_a_file"), "{all}");
    // The bare child did not outlive the run.
    let pid: i32 = unpinned
        .split("child pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the child's pid:\n{all}"));
    assert!(ProcId::of(pid).is_none_or(|_| is_zombie(pid)), "pid {pid} outlived the run:\n{all}");
}

#[test]
fn the_workspaces_xtask_reap_is_clean_after_its_leaky_runs() {
    // Whatever the leaky tests left, their scopes ended and their records are gone.
    let out = cargo(&["xtask", "reap"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
