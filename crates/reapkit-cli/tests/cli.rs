//! The `reapkit` binary's own contract: commands, bad arguments and a command that cannot
//! start are clear errors with exit code 2. (The sweep's behaviour on real leftovers is
//! tested from outside in the suite crate: `tests/tests/cli_*.rs`, `supervision.rs`.)

use assert_cmd::Command;

fn reapkit() -> Command {
    Command::cargo_bin("reapkit").expect("the reapkit binary is built")
}

#[test]
fn help_lists_every_command() {
    let out = reapkit().arg("--help").assert().success().get_output().stdout.clone();
    let text = String::from_utf8_lossy(&out);
    for command in ["reap", "ps", "run", "wrap"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn a_bad_pattern_is_a_clear_error() {
    let out = reapkit().args(["reap", "--match", "(unclosed"]).assert().code(2).get_output().stderr.clone();
    assert!(String::from_utf8_lossy(&out).contains("unclosed"), "{}", String::from_utf8_lossy(&out));
}

#[test]
fn a_command_that_cannot_start_is_a_clear_error() {
    let out = reapkit()
        .args(["run", "--no-docker", "--", "/nonexistent/test-runner"])
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/nonexistent/test-runner") && text.contains("PATH"), "{text}");
}

#[test]
fn ps_on_an_empty_ledger_lists_nothing() {
    let ledger = tempfile::tempdir().expect("tempdir");
    let out = reapkit()
        .args(["ps", "--no-docker", "--json", "--ledger-dir"])
        .arg(ledger.path())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out).expect("one JSON object");
    assert!(report["leaks"].is_array() && report["unchecked"].as_array().is_some_and(Vec::is_empty), "{report}");
}
