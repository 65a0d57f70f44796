//! `reapkit reap` on bad input: corrupt, truncated and foreign ledger records, a ledger
//! directory that cannot be written or is not ours, a Docker engine that cannot be reached.
//! Each time the sweep must say exactly what it could not check and how to fix it (exit 2),
//! and still reap everything it *could* check: one bad input never hides a leak.
//!
//! Isolation: every sweep is scoped to a run id of its own (`--run-id`) and a ledger directory
//! of its own (`--ledger-dir`); everything a test starts is killed by pid and reaped by a
//! [`Spawned`] guard when the test ends, whether it passed or not.

use std::process::Command;
use std::time::Duration;

use reapkit_tests::dead_owner;
use reapkit_tests::sweep_sandbox::{assert_root, clean_env, unmarked_sleep, Sandbox, Spawned, Swept, NOBODY};

#[test]
fn corrupt_truncated_and_foreign_records_are_named_and_every_good_record_is_still_reaped() {
    assert_root();
    let sb = Sandbox::new("cli_bad_input", "bad_records");
    // A leak with markers and a record.
    let mut marked = Spawned::start(sb.marked_sleep(&dead_owner()));
    let marked_record = sb.record("g-a-marked", &dead_owner(), marked.id);
    // A live process named only by a record, carrying no marker: a record names a pid, it proves
    // nothing (after a reboot, or written by anyone who can write the directory).
    let mut unproven = Spawned::start(unmarked_sleep());
    let unproven_record = sb.record("g-z-ledger-only", &dead_owner(), unproven.id);
    // A process named only by a record someone else wrote: not ours to act on.
    let mut bystander = Spawned::start(unmarked_sleep());
    let foreign = sb.record("g-m-foreign", &dead_owner(), bystander.id);
    std::os::unix::fs::chown(&foreign, Some(NOBODY), Some(NOBODY)).expect("chown the foreign record");
    let garbage = sb.ledger.join("g-b-garbage.json");
    std::fs::write(&garbage, b"\x00\xff{{{ this is not a reapkit record").expect("write garbage");
    let truncated = sb.ledger.join("g-t-truncated.json");
    let whole = serde_json::to_vec(&sb.record_of("g-t-truncated", &dead_owner(), marked.id)).expect("serialize");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("write half a record");
    let bad = [&garbage, &truncated, &foreign];

    // The people's version first, without acting: every bad file is named.
    let text = Swept::run_text(sb.reap_cmd(&["--dry-run", "--no-docker"]));
    text.assert_code(2);
    for path in bad {
        let line = format!("reapkit: could not check: ledger record {} is unreadable", path.display());
        assert!(text.stdout.contains(&line), "stdout names {}:\n{text}", path.display());
    }
    marked.assert_survived("a leak, under --dry-run");

    let swept = sb.reap(&[]);

    swept.assert_code(2);
    assert_eq!(swept.unchecked().len(), bad.len() + 1, "one line per bad record, one for the unproven one:\n{swept}");
    for path in bad {
        let line = swept.unchecked_about(&path.display().to_string());
        assert!(line.contains("delete it"), "the line says what to do: {line}");
    }
    assert!(swept.unchecked_about("g-m-foreign.json").contains(&format!("uid {NOBODY}")), "{swept}");
    let unproven_line = swept.unchecked_about("g-z-ledger-only.json");
    assert!(
        unproven_line.contains(&format!("pid {}", unproven.id.pid)) && unproven_line.contains("proves nothing"),
        "{unproven_line}"
    );
    assert_eq!(swept.leak_pids(), vec![i64::from(marked.id.pid)], "the proven leak, and only it:\n{swept}");
    assert_eq!(swept.leak_of(&marked)["action"], "killed", "{swept}");
    marked.assert_reaped("the marked leak next to bad records");
    unproven.assert_survived("the process named by a record but carrying no proof of being ours");
    bystander.assert_survived("the process named only by another user's record");
    assert!(!marked_record.exists(), "the reaped leak's record is cleared:\n{swept}");
    assert!(unproven_record.exists(), "the record naming a live process that is not provably ours is kept");
    for path in bad {
        assert!(path.exists(), "{} is left for a person to look at", path.display());
    }
}

#[test]
fn a_read_only_ledger_directory_is_reported_and_the_leaks_are_still_reaped() {
    assert_root();
    let sb = Sandbox::new("cli_bad_input", "read_only_ledger");
    let mut by_marker = Spawned::start(sb.marked_sleep(&dead_owner()));
    let mut recorded = Spawned::start(sb.marked_sleep(&dead_owner()));
    let record = sb.record("g-recorded", &dead_owner(), recorded.id);
    // root writes through any mode bits: make the directory a read-only bind mount instead,
    // in a mount namespace of the sweep's own, which vanishes with it (nothing to unmount).
    let script = r#"d="$1"; shift
        mount --bind "$d" "$d" && mount -o remount,ro,bind "$d" "$d" || exit 97
        if touch "$d/.probe" 2>/dev/null; then echo "$d is still writable" >&2; exit 98; fi
        exec "$0" "$@""#;
    let reap = sb.reap_cmd(&["--json", "--no-docker"]);
    let mut cmd = Command::new("unshare");
    clean_env(&mut cmd);
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(reap.get_program())
        .arg(&sb.ledger)
        .args(reap.get_args());

    let swept = Swept::run_text(cmd);
    assert!(![97, 98].contains(&swept.code), "precondition: a read-only bind mount of the ledger:\n{swept}");
    let swept = swept.parsed();

    swept.assert_code(2);
    let line = swept.unchecked_about(&record.display().to_string());
    assert!(line.contains(&sb.ledger.display().to_string()), "the message names the directory: {line}");
    assert!(line.contains("Read-only file system"), "the message says what is wrong: {line}");
    assert!(line.contains("writable"), "the message says how to fix it: {line}");
    assert_eq!(swept.leak_of(&by_marker)["action"], "killed", "{swept}");
    assert_eq!(swept.leak_of(&recorded)["action"], "killed", "{swept}");
    by_marker.assert_reaped("the leak found by marker");
    recorded.assert_reaped("the leak with a record");
    assert!(record.exists(), "the record could not be removed from the read-only directory");
}

#[test]
fn a_ledger_path_that_is_a_file_is_reported_and_marked_leaks_are_still_reaped() {
    let sb = Sandbox::new("cli_bad_input", "ledger_is_a_file");
    std::fs::remove_dir(&sb.ledger).expect("remove the ledger directory");
    std::fs::write(&sb.ledger, b"not a directory").expect("a regular file where the ledger should be");
    let mut leftover = Spawned::start(sb.marked_sleep(&dead_owner()));

    let swept = sb.reap(&[]);

    swept.assert_code(2);
    let line = swept.unchecked_about(&sb.ledger.display().to_string());
    assert!(line.contains("not usable") && line.contains("Not a directory"), "what is wrong: {line}");
    assert!(line.contains("a directory you own and can write"), "how to fix it: {line}");
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "{swept}");
    assert_eq!(swept.leak_of(&leftover)["action"], "killed", "{swept}");
    leftover.assert_reaped("the leak found by marker");
}

#[test]
fn a_ledger_directory_of_another_user_is_refused_and_marked_leaks_are_still_reaped() {
    assert_root();
    let sb = Sandbox::new("cli_bad_input", "foreign_ledger");
    let mut leftover = Spawned::start(sb.marked_sleep(&dead_owner()));
    // A process named only by a record in the other user's directory: not ours to act on.
    let mut bystander = Spawned::start(unmarked_sleep());
    sb.record("g-theirs", &dead_owner(), bystander.id);
    std::os::unix::fs::chown(&sb.ledger, Some(NOBODY), Some(NOBODY)).expect("chown the ledger directory");

    let swept = sb.reap(&[]);

    swept.assert_code(2);
    let line = swept.unchecked_about(&sb.ledger.display().to_string());
    assert!(line.contains(&format!("belongs to uid {NOBODY}")), "it says whose directory it is: {line}");
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "{swept}");
    assert_eq!(swept.leak_of(&leftover)["action"], "killed", "{swept}");
    leftover.assert_reaped("the leak found by marker");
    bystander.assert_survived("the process named only by a record in another user's ledger directory");
    assert!(sb.ledger.join("g-theirs.json").exists(), "another user's record is left alone");
}

/// A sweep with `DOCKER_HOST=host` cannot reach the engine: exit 2, quickly, naming the host
/// and what to do; marked leaks are reaped anyway; with `--no-docker` the sweep is clean.
fn unreachable_docker(name: &'static str, host: &str) {
    let sb = Sandbox::new("cli_bad_input", name);
    let mut leftover = Spawned::start(sb.marked_sleep(&dead_owner()));

    let mut cmd = sb.reap_cmd(&["--json"]);
    cmd.env("DOCKER_HOST", host);
    let swept = Swept::run(cmd);

    swept.assert_code(2);
    assert!(swept.took < Duration::from_secs(5), "an unreachable engine is reported within seconds:\n{swept}");
    let line = swept.unchecked_about(host);
    assert!(line.contains("cannot be reached"), "what is wrong: {line}");
    assert!(line.contains("DOCKER_HOST") && line.contains("--no-docker"), "what to do: {line}");
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "{swept}");
    leftover.assert_reaped("the leak found by marker, Docker unreachable");

    let flag = Swept::run(sb.reap_cmd(&["--json", "--docker-host", host]));
    flag.assert_code(2);
    assert!(flag.took < Duration::from_secs(5), "{flag}");
    flag.unchecked_about(host);

    let mut cmd = sb.reap_cmd(&["--json", "--no-docker"]);
    cmd.env("DOCKER_HOST", host);
    let skipped = Swept::run(cmd);
    skipped.assert_code(0);
    assert!(skipped.leaks().is_empty() && skipped.unchecked().is_empty(), "{skipped}");
}

#[test]
fn an_unreachable_docker_host_over_tcp_is_reported_and_no_docker_skips_it() {
    unreachable_docker("docker_tcp", "tcp://127.0.0.1:1");
}

#[test]
fn a_missing_docker_socket_is_reported_and_no_docker_skips_it() {
    unreachable_docker("docker_unix", "unix:///nonexistent.sock");
}
