//! What `reapkit reap` must never kill, driven through the real binary and checked from
//! outside: every decoy is looked up in `/proc` afterwards by pid *and* start time, and must
//! be the very same process, alive and not a zombie.
//!
//! Isolation: the suite runs in parallel and other tests leak on purpose, so every sweep here
//! is scoped to a run id of its own (`--run-id`), reads a ledger directory of its own
//! (`--ledger-dir`), and skips Docker. Everything a test starts is killed (by pid) and reaped
//! by a [`Spawned`] guard when it ends, whether it passed or not.

use std::os::unix::process::CommandExt;
use std::process::Command;

use reapkit::{OwnerId, ProcId};
use reapkit_tests::sweep_sandbox::{
    assert_root, clean_env, unique, unmarked_sleep, which, Sandbox, Spawned, Swept, NOBODY,
};
use reapkit_tests::{dead_owner, live_owner, reapkit_cli, wait_until};

#[test]
fn a_leftover_is_reaped_and_the_same_command_without_a_marker_survives() {
    let sb = Sandbox::new("cli_safety", "same_command_line");
    let mut decoy = Spawned::start(unmarked_sleep());
    let mut leftover = Spawned::start(sb.marked_sleep(&dead_owner()));

    let swept = sb.reap(&[]);

    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "only the marked leftover is a leak:\n{swept}");
    let leak = swept.leak_of(&leftover);
    assert_eq!(leak["kind"], "process", "{swept}");
    assert_eq!(leak["test"], sb.test_name(), "the leak names its test:\n{swept}");
    assert_eq!(leak["run_id"], sb.run_id.as_str(), "{swept}");
    assert_eq!(leak["found_by"], "marker", "{swept}");
    assert_eq!(leak["action"], "killed", "{swept}");
    leftover.assert_reaped("the marked leftover");
    decoy.assert_survived("the unmarked `sleep 3600` with the same command line");
}

#[test]
fn older_than_spares_younger_leftovers_and_takes_the_rest() {
    let sb = Sandbox::new("cli_safety", "older_than");
    let mut leftover = Spawned::start(sb.marked_sleep(&dead_owner()));

    let young = sb.reap(&["--older-than", "1h"]);
    young.assert_code(0);
    assert!(young.leak_pids().is_empty(), "a leftover seconds old is not older than 1h:\n{young}");
    leftover.assert_survived("the leftover younger than --older-than");

    let any_age = sb.reap(&["--older-than", "0s"]);
    any_age.assert_code(1);
    assert_eq!(any_age.leak_pids(), vec![i64::from(leftover.id.pid)], "{any_age}");
    leftover.assert_reaped("the leftover at least 0 s old");
}

#[test]
fn a_leftover_whose_owner_is_alive_belongs_to_a_concurrent_run_and_survives() {
    let sb = Sandbox::new("cli_safety", "owner_alive");
    let mut concurrent = Spawned::start(sb.marked_sleep(&live_owner().to_string()));

    let swept = sb.reap(&[]);

    swept.assert_code(0);
    assert!(swept.leaks().is_empty(), "a process whose owner lives is nobody's leak:\n{swept}");
    concurrent.assert_survived("the process of a concurrent run (its owner is alive)");

    let dry = sb.reap(&["--dry-run"]);
    dry.assert_code(0);
    concurrent.assert_survived("the process of a concurrent run, after --dry-run");
}

#[test]
fn an_owner_pid_recycled_by_another_process_counts_as_dead() {
    let sb = Sandbox::new("cli_safety", "owner_pid_recycled");
    let alive = live_owner();
    // Our own pid, alive, but with another start time: the owner's pid was recycled.
    let recycled = OwnerId { process: ProcId { start_time: alive.process.start_time + 1, ..alive.process }, ..alive };
    assert!(
        !recycled.process.is_alive() && ProcId::of(recycled.process.pid).is_some(),
        "the owner pid exists with another start time"
    );
    let mut decoy = Spawned::start(unmarked_sleep());
    let mut leftover = Spawned::start(sb.marked_sleep(&recycled.to_string()));

    let swept = sb.reap(&[]);

    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "{swept}");
    assert_eq!(swept.leak_of(&leftover)["action"], "killed", "{swept}");
    assert_eq!(swept.leak_of(&leftover)["health"], "orphaned", "{swept}");
    leftover.assert_reaped("the leftover whose owner's pid was recycled");
    decoy.assert_survived("the unmarked decoy");
}

#[test]
fn a_record_naming_a_recycled_pid_does_not_kill_the_innocent_process_now_holding_it() {
    let sb = Sandbox::new("cli_safety", "record_pid_recycled");
    let mut innocent = Spawned::start(unmarked_sleep());
    // The record's process had this pid, but started one tick earlier: it is not this one.
    let old = ProcId { start_time: innocent.id.start_time - 1, ..innocent.id };
    let record = sb.record("g-recycled", &dead_owner(), old);

    let swept = sb.reap(&[]);

    // Its owner died holding the guard: evidence of a leak that had ended, never a kill.
    swept.assert_code(1);
    let leak = swept.leak_of(&innocent);
    assert_eq!(leak["action"], "already-gone", "{swept}");
    innocent.assert_survived("the innocent process that now holds the recorded pid");
    assert!(!record.exists(), "the stale record {} is cleared:\n{swept}", record.display());
}

/// `program` (which switches to `nobody` itself: `setpriv`, `perl`) carrying this run's
/// leftover markers with `owner`, started by root (this suite runs as root); returned once it
/// runs as nobody (its real uid, which the sweep checks: not the owner of its /proc files).
fn as_nobody(sb: &Sandbox, program: &str, args: &[&str], owner: &str) -> Spawned {
    assert_root();
    let mut cmd = Command::new(program);
    cmd.args(args);
    sb.mark(&mut cmd, owner);
    let p = Spawned::start(cmd);
    wait_until("the process runs as nobody", || {
        (reapkit::procfs::owner_uid(p.id.pid).ok() == Some(NOBODY)).then_some(())
    });
    p
}

#[test]
fn another_users_process_with_a_leftover_marker_and_a_record_is_never_touched() {
    let sb = Sandbox::new("cli_safety", "another_user");
    assert!(which("setpriv").is_some(), "setpriv (util-linux) is needed to start a process as nobody");
    let owner = dead_owner();
    let setpriv = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", "3600"];
    let mut theirs = as_nobody(&sb, "setpriv", &setpriv, &owner);
    wait_until("setpriv has exec'd sleep", || {
        std::fs::read_link(format!("/proc/{}/exe", theirs.id.pid)).ok().filter(|e| e.ends_with("sleep"))
    });
    sb.record("g-nobody", &owner, theirs.id);
    let mut leftover = Spawned::start(sb.marked_sleep(&owner));

    let swept = sb.reap(&[]);

    // The record names a live process that is not ours: a problem to look at, kept.
    swept.assert_code(2);
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "only our own user's leftover is a leak:\n{swept}");
    let line = swept.unchecked_about("g-nobody.json");
    assert!(line.contains(&format!("uid {NOBODY}")) && line.contains("Kept"), "{line}");
    assert!(sb.ledger.join("g-nobody.json").exists(), "the record is kept as evidence:\n{swept}");
    leftover.assert_reaped("our own leftover");
    theirs.assert_survived("nobody's process carrying our leftover marker and named by a record");
}

#[test]
fn another_users_process_that_is_not_dumpable_is_never_touched() {
    // A process that dropped to another user without exec (a server's worker, `su`-like
    // helpers) is not dumpable: its /proc files belong to root, though it runs as nobody.
    let sb = Sandbox::new("cli_safety", "another_user_not_dumpable");
    assert!(which("perl").is_some(), "perl is needed to drop to another user without exec");
    let script = "use POSIX; POSIX::setgid(65534) or die; POSIX::setuid(65534) or die; sleep 3600";
    let mut theirs = as_nobody(&sb, "perl", &["-e", script], &dead_owner());
    let environ = std::fs::metadata(format!("/proc/{}/environ", theirs.id.pid)).expect("its environ");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&environ), 0, "precondition: its /proc files belong to root");

    let swept = sb.reap(&[]);

    theirs.assert_survived(&format!("nobody's non-dumpable process carrying our leftover marker; the sweep:\n{swept}"));
    swept.assert_code(0);
    assert!(swept.leaks().is_empty(), "another user's process is not ours to reap:\n{swept}");
}

/// Runs `reapkit reap --json --no-docker` (scoped to `sb`, with `extra`) from inside `sh -c`;
/// with `owner`, the shell carries this run's leftover markers. Checks that the shell outlived
/// the sweep and ran to its end; returns the sweep and the shell's pid.
fn reap_from_shell(sb: &Sandbox, owner: Option<&str>, extra: &[&str]) -> (Swept, u32) {
    let script = r#"out=$("$0" "$@"); code=$?; printf '%s\n' "$out"; echo "reap-exit=$code"; echo ancestor-alive"#;
    let mut cmd = Command::new("sh");
    match owner {
        Some(owner) => sb.mark(&mut cmd, owner),
        None => clean_env(&mut cmd),
    }
    let reap = sb.reap_cmd(&[&["--json", "--no-docker"], extra].concat());
    cmd.arg("-c").arg(script).arg(reap.get_program()).args(reap.get_args());
    let sh = Swept::run_text(cmd);
    assert_eq!(sh.code, 0, "the shell that ran reapkit failed:\n{sh}");
    assert!(sh.stdout.ends_with("ancestor-alive\n"), "the shell ran to its end:\n{sh}");
    let (json, rest) = sh.stdout.split_once("\nreap-exit=").unwrap_or_else(|| panic!("no exit code:\n{sh}"));
    let code = rest.lines().next().and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("exit code in {sh}"));
    let json = json.to_owned();
    let sh_pid = sh.pid;
    let mut swept = sh.parsed_from(&json);
    swept.code = code;
    (swept, sh_pid)
}

#[test]
fn the_reapers_own_ancestors_are_never_reaped_even_when_they_carry_a_leftover_marker() {
    let sb = Sandbox::new("cli_safety", "ancestors");
    let owner = dead_owner();
    let mut leftover = Spawned::start(sb.marked_sleep(&owner));

    let (swept, sh_pid) = reap_from_shell(&sb, Some(&owner), &[]);

    swept.assert_code(1);
    assert_eq!(swept.leak_pids(), vec![i64::from(leftover.id.pid)], "the shell (pid {sh_pid}) is not listed:\n{swept}");
    leftover.assert_reaped("the leftover of the same run");
}

#[test]
fn match_reaps_only_what_it_matches_spares_the_newest_and_never_the_reaper_or_its_ancestors() {
    let sb = Sandbox::new("cli_safety", "match");
    let token = unique("rkmatch").replace('-', "x");
    let mut victims: Vec<Spawned> = Vec::new();
    for _ in 0..3 {
        // Distinct start times (10 ms clock ticks), so that "newest" is well defined.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let mut cmd = unmarked_sleep();
        cmd.arg0(format!("{token}-victim"));
        let next = Spawned::start(cmd);
        assert!(
            victims.last().is_none_or(|v| v.id.start_time < next.id.start_time),
            "precondition: start times differ"
        );
        victims.push(next);
    }
    let mut bystander = Spawned::start(unmarked_sleep());
    let pids = |v: &[Spawned]| -> Vec<i64> {
        let mut p: Vec<i64> = v.iter().map(|s| i64::from(s.id.pid)).collect();
        p.sort_unstable();
        p
    };
    // The pattern matches the victims, and also the command lines of the reaper
    // (`reapkit reap --match <token>`) and of the shell that runs it (`sh -c … --match <token>`).
    let pattern = format!("^{token}|--match {token}");

    let (dry, _) = reap_from_shell(&sb, None, &["--dry-run", "--match", &pattern]);
    dry.assert_code(1);
    assert_eq!(dry.leak_pids(), pids(&victims), "--dry-run lists every match, and only them:\n{dry}");
    for leak in dry.leaks() {
        assert_eq!(leak["found_by"], "match", "{dry}");
        assert_eq!(leak["action"], "would-reap", "{dry}");
    }
    for v in &mut victims {
        v.assert_survived("a match, under --dry-run");
    }

    let (kept, _) = reap_from_shell(&sb, None, &["--match", &pattern, "--keep-newest", "1"]);
    kept.assert_code(1);
    let newest = victims.pop().expect("three victims");
    assert_eq!(kept.leak_pids(), pids(&victims), "--keep-newest 1 spares the newest:\n{kept}");
    for v in &mut victims {
        assert_eq!(kept.leak_of(v)["action"], "killed", "{kept}");
        v.assert_reaped("an older match");
    }
    let mut newest = vec![newest];
    newest[0].assert_survived("the newest match, under --keep-newest 1");

    let (last, _) = reap_from_shell(&sb, None, &["--match", &pattern]);
    last.assert_code(1);
    assert_eq!(last.leak_pids(), pids(&newest), "{last}");
    newest[0].assert_reaped("the last match");

    // Nothing that matches is left but the reaper and its shell: they are never matched.
    let (clean, _) = reap_from_shell(&sb, None, &["--match", &pattern]);
    clean.assert_code(0);
    assert!(clean.leaks().is_empty(), "the reaper and its ancestors are never matched:\n{clean}");
    bystander.assert_survived("a process that does not match");
}

#[test]
fn ps_shows_a_live_leftover_as_orphaned_with_its_test_and_resources() {
    let sb = Sandbox::new("cli_safety", "ps");
    let mut leftover = Spawned::start(sb.marked_sleep(&dead_owner()));
    let mut cmd = reapkit_cli();
    clean_env(&mut cmd);
    cmd.args(["ps", "--json", "--no-docker", "--ledger-dir"]).arg(&sb.ledger);

    let listed = Swept::run(cmd);

    assert_eq!(listed.code, 0, "{listed}");
    let leak = listed.leak_of(&leftover);
    assert_eq!(leak["health"], "orphaned", "{listed}");
    assert_eq!(leak["test"], sb.test_name(), "{listed}");
    assert_eq!(leak["run_id"], sb.run_id.as_str(), "{listed}");
    assert_eq!(leak["action"], "listed", "{listed}");
    assert!(leak["rss_bytes"].as_u64().is_some_and(|b| b > 0), "RSS:\n{listed}");
    assert!(leak["fds"].as_u64().is_some_and(|n| n >= 3), "its stdin, stdout and stderr at least:\n{listed}");
    assert_eq!(leak["threads"], 1, "{listed}");
    assert!(leak["command"].as_str().is_some_and(|c| c == "sleep 3600"), "{listed}");
    leftover.assert_survived("the leftover, after `ps` (which only lists)");
}
