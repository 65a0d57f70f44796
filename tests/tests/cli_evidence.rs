//! The evidence `reapkit ps` and `reapkit reap` show before anything is killed: a server that
//! runs a binary rebuilt or deleted since it started serves stale code, and says so.

use std::process::Command;

use reapkit::procfs::ProcId;
use reapkit_tests::sweep_sandbox::{which, Spawned};
use reapkit_tests::{dead_owner, reapkit_cli};

#[test]
fn a_rebuilt_or_deleted_binary_is_shown_as_stale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = tempfile::tempdir().expect("tempdir");
    let run_id = format!("evidence-{}", std::process::id());
    let owner = dead_owner();
    let sleep = which("sleep").expect("sleep is on PATH");
    // Leftovers started on purpose from copies of `sleep`, ended by pid if a check fails.
    let start = |name: &str| {
        let path = dir.path().join(name);
        std::fs::copy(&sleep, &path).expect("copy sleep");
        let mut cmd = Command::new(&path);
        cmd.arg("3600")
            .env("REAPKIT_RUN_ID", &run_id)
            .env("REAPKIT_OWNER", &owner)
            .env("REAPKIT_TEST", "evidence::stale_server");
        Spawned::start(cmd)
    };
    let mut leftovers = [start("server-rebuilt"), start("server-deleted"), start("server-current")];
    let pids: Vec<i32> = leftovers.iter().map(|s| s.id.pid).collect();
    // A rebuild that rewrote the file after the start (mtime later than the start) ...
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(false)
        .read(true)
        .open(dir.path().join("server-rebuilt"))
        .and_then(|f| f.set_modified(later))
        .expect("set mtime");
    // ... and one that replaced the file (cargo renames a new binary over the old one).
    std::fs::remove_file(dir.path().join("server-deleted")).expect("rm");

    let ps =
        reapkit_cli().args(["ps", "--json", "--no-docker", "--ledger-dir"]).arg(ledger.path()).output().expect("ps");
    let report: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("one JSON object");
    let entry = |pid: i32| {
        report["leaks"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["pid"] == pid))
            .unwrap_or_else(|| panic!("pid {pid} not listed: {report:#}"))
            .clone()
    };
    for (pid, exe, health) in
        [(pids[0], "replaced", "stale-binary"), (pids[1], "deleted", "stale-binary"), (pids[2], "current", "orphaned")]
    {
        let e = entry(pid);
        assert_eq!((e["exe"].as_str(), e["health"].as_str()), (Some(exe), Some(health)), "{e:#}");
        assert_eq!(e["test"], "evidence::stale_server");
        assert!(e["rss_bytes"].as_u64().is_some_and(|b| b > 0) && e["fds"].as_u64().is_some(), "{e:#}");
        assert_eq!(e["cwd"], std::env::current_dir().unwrap().display().to_string());
    }

    let reap = reapkit_cli()
        .args(["reap", "--no-docker", "--grace", "100ms", "--run-id", &run_id, "--ledger-dir"])
        .arg(ledger.path())
        .output()
        .expect("reap");
    let text = String::from_utf8_lossy(&reap.stdout);
    assert_eq!(reap.status.code(), Some(1), "{text}");
    assert!(text.contains("stale-binary") && text.contains("deleted"), "the evidence table says so:\n{text}");
    for leftover in &mut leftovers {
        leftover.assert_reaped("a leftover of the stale-binary run");
    }
    assert!(pids.iter().all(|&p| ProcId::of(p).is_none()));
}

#[test]
fn reap_run_from_anywhere_finds_the_evidence_through_the_users_ledger_index() {
    let state = tempfile::tempdir().expect("a state directory (XDG_STATE_HOME)");
    let ledger = tempfile::tempdir().expect("a ledger somewhere else");
    let run_id = format!("evidence-index-{}", std::process::id());
    let leaky = reapkit_cli().get_program().to_owned();
    let leaky = std::path::Path::new(&leaky).with_file_name("leaky-owner");
    let mut owner = Command::new(leaky)
        .args(["--sleep", "3600"])
        .env("REAPKIT_LEDGER_DIR", ledger.path())
        .env("REAPKIT_RUN_ID", &run_id)
        .env("REAPKIT_WATCHDOG_GRACE", "200ms")
        .env("XDG_STATE_HOME", state.path())
        .env("NEXTEST_TEST_NAME", "evidence::killed")
        .env_remove("REAPKIT_SUPERVISOR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the leaky owner starts");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(owner.stdout.take().expect("piped")), &mut line)
        .expect("ready");
    owner.kill().expect("SIGKILL our own child");
    owner.wait().expect("reaped");

    // From another directory, with no --ledger-dir: the index says where the evidence is.
    let out = reapkit_cli()
        .args(["reap", "--no-docker", "--run-id", &run_id])
        .current_dir("/")
        .env("XDG_STATE_HOME", state.path())
        .env_remove("REAPKIT_LEDGER_DIR")
        .output()
        .expect("reap");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "the killed test's leak is found:\n{text}");
    assert!(text.contains("evidence::killed"), "and named:\n{text}");
    assert!(text.contains("read the ledgers: ") && text.contains(&ledger.path().display().to_string()), "{text}");
}

#[test]
fn ps_rows_fit_a_hundred_columns_name_the_leftover_and_show_whole_what_they_cut() {
    let ledger = tempfile::tempdir().expect("tempdir");
    let owner = dead_owner();
    let mut cmd = Command::new("sleep");
    cmd.arg("3600")
        .env("REAPKIT_RUN_ID", format!("evidence-ps-{}", std::process::id()))
        .env("REAPKIT_OWNER", &owner)
        .env("REAPKIT_TEST", "evidence::a_test_with_a_rather_long_name_that_must_be_cut_to_fit_the_table");
    let mut leftover = Spawned::start(cmd);
    let out =
        reapkit_cli().args(["ps", "--all", "--no-docker", "--ledger-dir"]).arg(ledger.path()).output().expect("ps");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.contains(&leftover.id.pid.to_string())).unwrap_or_else(|| panic!("{text}"));
    assert!(row.starts_with("process") && row.contains("orphaned"), "{row}");
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "a row wider than 100 columns: {line:?}");
    }
    let below = text.lines().skip_while(|l| *l != row).nth(1).unwrap_or_default();
    assert_eq!(
        below.trim(),
        "└ test: evidence::a_test_with_a_rather_long_name_that_must_be_cut_to_fit_the_table",
        "the test name cut in the row follows it whole:\n{text}"
    );
    leftover.assert_survived("a leftover, after ps");
}

#[test]
fn ps_says_which_guarantees_hold_here_and_names_each_one_a_setting_takes_away() {
    let ledger = tempfile::tempdir().expect("tempdir");
    let ps = |env: &[(&str, &str)]| {
        let out = reapkit_cli()
            .args(["ps", "--json", "--no-docker", "--ledger-dir"])
            .arg(ledger.path())
            .envs(env.iter().copied())
            .output()
            .expect("ps");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the report");
        json["notes"]
            .as_array()
            .expect("notes")
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let plain = ps(&[]);
    let caps = reapkit::capabilities();
    let gaps = caps.gaps().count();
    let guarantee_notes: Vec<&String> = plain.iter().filter(|n| n.contains("guarantee")).collect();
    assert_eq!(guarantee_notes.len(), gaps.max(1), "one note per gap, or one saying all hold: {plain:#?}");

    let weakened = ps(&[("REAPKIT_CONTAINMENT", "marker"), ("REAPKIT_WATCHDOG", "off")]);
    let says = |text: &str| weakened.iter().any(|n| n.contains(text));
    assert!(says("guarantee only partly held here: whole tree: REAPKIT_CONTAINMENT=marker"), "{weakened:#?}");
    assert!(says("guarantee only partly held here: escapees"), "{weakened:#?}");
    assert!(says("guarantee NOT held here: test process killed: REAPKIT_WATCHDOG=off"), "{weakened:#?}");
}
