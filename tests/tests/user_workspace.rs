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

use reapkit::{procfs, ProcId};
use reapkit_tests::{exited, user_cargo};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/user-workspace")
}

/// `cargo <args>` in the user workspace, as a user runs it (see [`user_cargo`]).
fn cargo(args: &[&str]) -> Output {
    cargo_with(args, &[])
}

/// [`cargo`], with `env` besides.
fn cargo_with(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    cargo_command(args, env).output().expect("cargo runs")
}

fn cargo_command(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Command {
    let mut cmd = user_cargo(&workspace(), "user-workspace", args);
    cmd.envs(env.iter().copied());
    cmd
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
    assert!(ProcId::of(pid).is_none_or(|p| exited(&p)), "pid {pid} outlived the run:\n{all}");
}

#[test]
fn the_workspaces_xtask_reap_is_clean_after_its_leaky_runs() {
    // Whatever the leaky tests left, their scopes ended and their records are gone.
    let out = cargo(&["xtask", "reap"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// One line per test of `app-tests/tests/shared.rs`: what it was attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SharedNote {
    test: String,
    web_keeper: i32,
    web_pid: i32,
    port: u16,
    db_keeper: i32,
    container: String,
    run_id: String,
}

fn shared_notes(path: &Path) -> Vec<SharedNote> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| match l.split(' ').collect::<Vec<_>>()[..] {
            [test, wk, wp, port, dk, container, run_id] => SharedNote {
                test: test.into(),
                web_keeper: wk.parse().expect("a pid"),
                web_pid: wp.parse().expect("a pid"),
                port: port.parse().expect("a port"),
                db_keeper: dk.parse().expect("a pid"),
                container: container.into(),
                run_id: run_id.into(),
            },
            _ => panic!("a note: {l:?}"),
        })
        .collect()
}

/// Every test saw the same server and container; returns them.
fn one_of_each(notes: &[SharedNote], tests: usize) -> SharedNote {
    assert_eq!(notes.len(), tests, "{notes:#?}");
    let first = notes[0].clone();
    let same =
        |n: &SharedNote| (n.web_pid, n.port, n.container.as_str()) == (first.web_pid, first.port, &*first.container);
    assert!(notes.iter().all(same), "one server and one container for the whole run: {notes:#?}");
    first
}

/// The fixtures' keepers exit within a second (by pidfd) — after removing the container and
/// ending the server — and nothing of them is left.
fn gone_within_a_second(note: &SharedNote, trees: &[ProcId]) {
    let keepers: Vec<ProcId> = [note.web_keeper, note.db_keeper].into_iter().filter_map(ProcId::of).collect();
    let took = reapkit_tests::keepers_ended(&keepers, trees);
    assert!(took < std::time::Duration::from_secs(1), "the shared fixtures outlived their run by {took:?}");
    let left = reapkit_tests::docker::docker(&["ps", "-aq", "--filter", &format!("id={}", note.container)]);
    assert!(left.trim().is_empty(), "the shared container outlived its run");
}

fn notes_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("notes");
    (dir, path)
}

#[test]
fn under_nextest_twenty_tests_share_one_server_and_one_container_gone_within_a_second_of_the_runs_end() {
    let (_dir, notes) = notes_file();
    let out = cargo_with(&["nextest", "run", "--test", "shared"], &[("APP_TESTS_SHARED_OUT", notes.as_os_str())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let notes = shared_notes(&notes);
    let note = one_of_each(&notes, 20);
    gone_within_a_second(&note, &[]);
    // The run's statistics: two started, the other 38 attaches reused them.
    let stats = reapkit_tests::reapkit_cli().args(["reap", "--run-id", &note.run_id, "--json"]).output().expect("reap");
    let json: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("the report");
    assert_eq!(json["stats"]["shared_started"], 2, "{json}");
    assert_eq!(json["stats"]["shared_reused"], 38, "{json}");
}

#[test]
fn under_nextest_a_test_process_sigkilled_mid_run_fails_alone_and_the_fixtures_still_end_with_the_run() {
    let (_dir, notes) = notes_file();
    let env = [("APP_TESTS_SHARED_OUT", notes.as_os_str()), ("APP_TESTS_KILL", "t05".as_ref())];
    let out = cargo_with(&["nextest", "run", "--no-fail-fast", "--test", "shared"], &env);
    let all = text(&out);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.lines().any(|l| l.contains("FAIL") && l.ends_with("app-tests::shared t05")), "{all}");
    assert_eq!(all.lines().filter(|l| l.contains("PASS") && l.contains("app-tests::shared t")).count(), 19, "{all}");
    let note = one_of_each(&shared_notes(&notes), 20);
    gone_within_a_second(&note, &[]);
}

#[test]
fn nextest_sigkilled_mid_run_ends_the_runs_shared_fixtures_within_a_second() {
    let (_dir, notes) = notes_file();
    let env = [("APP_TESTS_SHARED_OUT", notes.as_os_str()), ("APP_TESTS_HOLD", "t01".as_ref())];
    let built = cargo(&["nextest", "run", "--test", "shared", "--no-run"]);
    assert_eq!(built.status.code(), Some(0), "{}", text(&built));
    let mut cargo = cargo_command(&["nextest", "run", "--test", "shared", "-E", "test(=t01)"], &env);
    let mut child =
        cargo.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("cargo");
    let note = reapkit_tests::wait_until("the held test attached", || shared_notes(&notes).first().cloned());
    // `cargo` execs its external subcommands: the child is nextest, or its parent.
    let cargo_pid = ProcId::of(child.id() as i32).expect("cargo runs");
    let nextest = std::iter::once(cargo_pid)
        .chain(procfs::descendants(cargo_pid.pid))
        .find(|d| procfs::cmdline(d.pid).contains("cargo-nextest"))
        .expect("nextest runs");
    let trees: Vec<ProcId> = [note.web_keeper, note.db_keeper]
        .into_iter()
        .filter_map(ProcId::of)
        .flat_map(|k| std::iter::once(k).chain(procfs::descendants(k.pid)))
        .collect();
    let rest = procfs::descendants(nextest.pid);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(nextest.pid), nix::sys::signal::SIGKILL);
    gone_within_a_second(&note, &trees);
    // The held test saw its fixtures end and exited, its wrap after it.
    for id in rest {
        reapkit_tests::wait_until(&format!("pid {} of the killed run is gone", id.pid), || exited(&id).then_some(()));
    }
    let _ = child.wait();
}

#[test]
fn under_cargo_test_twenty_threads_share_one_server_and_one_container_gone_within_a_second_of_the_runs_end() {
    let (_dir, notes) = notes_file();
    let out = cargo_with(&["test", "--test", "shared"], &[("APP_TESTS_SHARED_OUT", notes.as_os_str())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let note = one_of_each(&shared_notes(&notes), 20);
    gone_within_a_second(&note, &[]);
}

/// The README's block that follows `<!-- first-leak: <which> -->`.
fn readme_block(which: &str) -> String {
    let readme = std::fs::read_to_string(workspace().join("../../README.md")).expect("the README");
    let marker = format!("<!-- first-leak: {which} -->\n```text\n");
    let start = readme.find(&marker).unwrap_or_else(|| panic!("the README shows {which}")) + marker.len();
    readme[start..].split("\n```").next().expect("a closed block").to_owned()
}

/// A line as compared: numbers (pids, ports, inodes, times) as `N`, runs of blanks as one.
fn normalized(line: &str) -> String {
    let numbers = regex::Regex::new(r"\d+").expect("a regex");
    numbers.replace_all(line.trim(), "N").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether the run's line `got` is the README's line `shown`, numbers aside; a list after the
/// last `: ` (the tests that were running, which vary) may have more items than the README's.
fn same_line(shown: &str, got: &str) -> bool {
    let (shown, got) = (normalized(shown), normalized(got));
    if shown == got {
        return true;
    }
    let (Some((head, items)), Some((got_head, got_items))) = (shown.rsplit_once(": "), got.rsplit_once(": ")) else {
        return false;
    };
    let got_items: Vec<&str> = got_items.split(", ").collect();
    head == got_head && items.split(", ").all(|i| got_items.contains(&i))
}

/// Every line of the README's block `which` is in `output`.
fn shows(which: &str, output: &str) {
    for line in readme_block(which).lines() {
        assert!(
            output.lines().any(|got| same_line(line, got)),
            "the README's {which} output has a line the run did not print:\n{line}\n\nthe run:\n{output}"
        );
    }
}

#[test]
fn the_readmes_first_leak_is_what_a_user_sees_under_both_runners() {
    let file = std::fs::read_to_string(workspace().join("app-tests/tests/first_leak.rs")).expect("first_leak.rs");
    let readme = std::fs::read_to_string(workspace().join("../../README.md")).expect("the README");
    assert!(readme.contains(&format!("```rust,no_run\n{file}```")), "the README shows first_leak.rs as it is");

    let backtrace = [("RUST_BACKTRACE", std::ffi::OsStr::new("0"))];
    let out = cargo_with(&["nextest", "run", "--no-fail-fast", "--test", "first_leak"], &backtrace);
    assert_eq!(out.status.code(), Some(100), "{}", text(&out));
    shows("nextest", &text(&out));
    // Numbers aside, but not these: each panic points at its test's `fn` line.
    for test in ["leaves_its_server_running", "leaves_its_port_open"] {
        let line = file.lines().position(|l| l == format!("fn {test}() {{")).expect("the test") + 1;
        let at = format!("'{test}' ({{..}}) panicked at app-tests/tests/first_leak.rs:{line}:4:");
        let (head, tail) = at.split_once("{..}").expect("a placeholder");
        assert!(text(&out).lines().any(|l| l.contains(head) && l.ends_with(tail)), "{at}\n{}", text(&out));
    }

    let out = cargo_with(&["test", "--test", "first_leak"], &backtrace);
    assert_eq!(out.status.code(), Some(101), "{}", text(&out));
    shows("cargo test", &text(&out));
}
