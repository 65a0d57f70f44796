//! `cargo xtask`: the project's own automation, dogfooding the library.
//!
//! - `cargo xtask test`: set up (apt/npm/pip, idempotent), run the whole suite with nextest
//!   (each test under `reapkit wrap`), then `cargo xtask reap`: the run must leave nothing.
//! - `cargo xtask reap`: the CI step — the library's sweep, same options and exit codes as
//!   `reapkit reap` (0 clean, 1 leaks found, 2 could not check).
//! - `cargo xtask bench`: set up, then print the benchmark tables (ratios in one run).
//! - `cargo xtask setup`: only the set-up.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "reapkit's own automation")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the suite needs (idempotent).
    Setup,
    /// Set up, run the whole test suite with nextest, check nothing was left running.
    Test {
        /// Extra arguments for `cargo nextest run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        nextest_args: Vec<String>,
    },
    /// Set up, show reapkit at work (a leaky suite, a SIGKILLed test and its watchdog, the CI
    /// step naming it), then run the benchmarks (each prints its side-by-side table).
    Bench,
    /// Find leftovers of test runs by proof of ownership, show the evidence, reap them.
    Reap(reapkit_cli::ReapArgs),
}

fn main() -> Result<ExitCode> {
    match Cli::parse().task {
        Task::Setup => setup().map(|()| ExitCode::SUCCESS),
        Task::Test { nextest_args } => test(&nextest_args),
        Task::Bench => bench().map(|()| ExitCode::SUCCESS),
        Task::Reap(args) => reap(&args),
    }
}

/// The main job: set up, show reapkit at work, then the benchmark tables; a summary last.
fn bench() -> Result<()> {
    let started = Instant::now();
    setup()?;
    let shown = demo()?;
    section("4/4 the benchmarks (a release build of what they measure, then each prints its table)");
    run(cargo().args(["bench", "--package", "reapkit-tests"]))?;
    eprintln!("\n==== the main job showed, in {}:", since(started));
    for line in shown {
        eprintln!("  - {line}");
    }
    eprintln!("  - the benchmark tables above: each row is reapkit against its baseline, measured in the same run");
    Ok(())
}

fn reap(args: &reapkit_cli::ReapArgs) -> Result<ExitCode> {
    Ok(std::process::Termination::report(reapkit_cli::reap(args)))
}

fn test(nextest_args: &[String]) -> Result<ExitCode> {
    let started = reapkit::ProcId::of(std::process::id() as i32).map_or(0, |me| me.start_time);
    setup()?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The API docs as docs.rs builds them (every user feature), without a broken link.
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--features", "reapkit/docker,reapkit/rmcp-http"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    // The portable backend, as the suite forces it on Linux and as macOS and FreeBSD build it:
    // no Linux-only symbol outside the Linux backend, or these fail.
    run(cargo()
        .args(["clippy", "--package", "reapkit", "--package", "reapkit-tests", "--features"])
        .args(["reapkit-tests/portable", "--all-targets", "--", "-D", "warnings"])
        .env(PORTABLE_BACKEND, "1"))?;
    for target in PORTABLE_TARGETS {
        run(cargo()
            .args(["clippy", "--package", "reapkit", "--features", "docker,rmcp", "--target", target])
            .args(["--", "-D", "warnings"]))?;
    }
    // Doctests first (nextest does not run them), so nextest's summary closes the output.
    run(cargo().args(["test", "--package", "reapkit", "--features", "docker,rmcp-http", "--doc"]))?;
    // The users' workspaces (the README's, and the false-alarm corpus) are built now, so that
    // running them later only runs them.
    for (workspace, target) in USER_WORKSPACES {
        run(cargo()
            .args(["build", "--tests", "--bins", "--manifest-path", &format!("{workspace}/Cargo.toml")])
            .env("CARGO_TARGET_DIR", workspace_root().join("target").join(target)))?;
    }
    // The set-up started an engine: a missing one is now a failure, not a skip.
    run(cargo()
        .args([
            "nextest",
            "run",
            "--workspace",
            "--no-fail-fast",
            "-E",
            "not binary(user_workspace) and not binary(corpus)",
        ])
        .args(nextest_args)
        .env("REAPKIT_REQUIRE_DOCKER", "1"))?;
    // The users' workspaces, on their own: their runs (and their setup scripts' reaps) must not
    // meet the leftovers the suite above makes on purpose.
    run(cargo()
        .args(["nextest", "run", "--package", "reapkit-tests", "--test", "user_workspace", "--test", "corpus"])
        .args(nextest_args)
        .env("REAPKIT_REQUIRE_DOCKER", "1"))?;
    // The fault matrix once more under each weaker containment this machine can also give (the
    // suite above ran with the strongest, a cgroup per guard; the escape matrix covers all three).
    for containment in ["keeper", "marker"] {
        run(cargo()
            .args(["nextest", "run", "--package", "reapkit-tests", "--test", "fault_matrix"])
            .args(nextest_args)
            .env("REAPKIT_CONTAINMENT", containment))?;
    }
    // `#[reapkit::test]` must mean the same under plain `cargo test`, whose tests are threads
    // of one process: its own suites once more, that way.
    run(cargo()
        .args(["test", "--package", "reapkit-tests"])
        .args(["--test", "leak_detection", "--test", "fd_leak_suite", "--test", "budgets"])
        .env("REAPKIT_REQUIRE_DOCKER", "1"))?;
    // The portable backend (what macOS and the BSDs get): its own tests, the fault matrix and
    // the FD-leak suite, with reapkit built that way — last, as the suite's helper binaries are
    // rebuilt with it — and not under `reapkit wrap` (see .config/nextest-portable.toml).
    run(cargo()
        .args(["nextest", "run", "--config-file", ".config/nextest-portable.toml", "--package", "reapkit-tests"])
        .args(["--features", "portable", "--test", "portable", "--test", "fault_matrix", "--test", "fd_leak_suite"])
        .args(nextest_args)
        .env(PORTABLE_BACKEND, "1")
        .env("REAPKIT_REQUIRE_DOCKER", "1"))?;
    // The CI step, as users run it: what this project's tests leaked is reaped and fails the run.
    eprintln!("xtask: running `cargo xtask reap` after the suite");
    let verdict = match Cli::parse_from(["xtask", "reap"]).task {
        Task::Reap(args) => reap(&args)?,
        _ => unreachable!("parsed `reap`"),
    };
    // And nothing this run started is left, whatever ledger its tests used: judged by start
    // time, never by a sweep of the machine (which may hold other projects' state).
    let left = leftovers_since(started);
    if !left.is_empty() {
        bail!("the suite left {} behind:\n  {}", left.len(), left.join("\n  "));
    }
    Ok(verdict)
}

/// The workspaces of users that the suite runs (`examples/<name>`), each with its target dir.
const USER_WORKSPACES: [(&str, &str); 2] =
    [("examples/user-workspace", "user-workspace"), ("examples/corpus", "corpus")];

/// What started at or after `since` (a start time of this boot, in clock ticks) and is still
/// there: processes carrying a reapkit marker, reapkit cgroups of guards whose owner started
/// then, containers labelled `reapkit.*` created then.
fn leftovers_since(since: u64) -> Vec<String> {
    use reapkit::procfs::{self, MarkerScan};
    let markers: [&[u8]; 3] = [b"REAPKIT_RUN_ID=", b"REAPKIT_GUARD=", b"REAPKIT_OWNER="];
    let marked = |env: &[u8]| env.split(|&b| b == 0).any(|e| markers.iter().any(|m| e.starts_with(m)));
    let mut left: Vec<String> = MarkerScan::new()
        .find_matching(marked)
        .into_iter()
        .filter(|id| id.start_time >= since)
        .map(|id| format!("process {} `{}`", id.pid, procfs::cmdline(id.pid)))
        .collect();
    for dir in reapkit::containment::reapkit_cgroups() {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let guard = name.strip_prefix("reapkit-").unwrap_or_default();
        if reapkit::ownership::owner_of_guard(guard).is_some_and(|o| o.process.start_time >= since) {
            left.push(format!("cgroup {}", dir.display()));
        }
    }
    let started = humantime::format_rfc3339_seconds(procfs::BootClock::read().started(since)).to_string();
    let format = "{{.ID}} {{.Label \"reapkit.created\"}}";
    let listed =
        Command::new("docker").args(["ps", "-a", "--filter", "label=reapkit.run-id", "--format", format]).output();
    let listed = listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    for line in listed.lines() {
        if line.split_once(' ').is_some_and(|(_, created)| created >= started.as_str()) {
            left.push(format!("container {line}"));
        }
    }
    left
}

/// The example workspace's tests that must fail under nextest, and what each one's report
/// must name.
const DEMO_LEAKS: [(&str, &str); 6] = [
    ("leaky forgets_its_guard", "`ProcessGuard` of `sleep 3600` created at app-tests/tests/leaky.rs:"),
    ("leaky leaves_a_bare_child_running", "`sleep 3600`, a child of the test process"),
    ("leaky leaks_a_file", "(file): still open after the test"),
    ("leaky forgets_its_container", "`Container` of `reapkit-busybox:latest` created at app-tests/tests/leaky.rs:"),
    ("first_leak leaves_its_server_running", "`ProcessGuard` of `sleep 600` created at app-tests/tests/first_leak.rs:"),
    ("first_leak leaves_its_port_open", "(TCP 127.0.0.1:"),
];

/// reapkit at work, on the example user workspace and a test process that gets SIGKILLed.
/// Each step checks that it showed what it claims (a demo that ran no test proves nothing);
/// returns what it showed, for the job's summary.
fn demo() -> Result<Vec<String>> {
    let root = workspace_root();
    let target = root.join("target");
    let mut shown = Vec::new();
    section(
        "1/4 a user's suite with leaky tests, under nextest and its xtask's `wrap` (six must fail, naming their leak)",
    );
    run(cargo().args(["build", "--package", "reapkit-cli", "--package", "reapkit-tests", "--bins"]))?;
    let servers = std::fs::read_to_string(root.join(".deps/servers.env")).context("the set-up's servers.env")?;
    let time_server = servers.lines().find_map(|l| l.strip_prefix("REAPKIT_TEST_PY_TIME=")).unwrap_or_default();
    let (status, output) = run_shown(
        cargo()
            .args(["nextest", "run", "--no-fail-fast", "--manifest-path", "examples/user-workspace/Cargo.toml"])
            .env("CARGO_TARGET_DIR", target.join("user-workspace"))
            .env("MCP_SERVER_TIME", time_server),
    )?;
    let failed =
        |test: &str| output.lines().any(|l| l.contains("FAIL [") && l.ends_with(&format!("app-tests::{test}")));
    let missing: Vec<String> = DEMO_LEAKS
        .iter()
        .filter(|(test, report)| !failed(test) || !output.contains(report))
        .map(|(test, report)| format!("{test} failing with `{report}…`"))
        .collect();
    let passed = output.lines().filter(|l| l.contains("PASS [") && l.contains("app-tests::")).count();
    if status.success() || !missing.is_empty() || passed == 0 {
        bail!(
            "the demo did not show what it claims (nextest {status}, {passed} tests passed); missing: {}",
            missing.join("; ")
        );
    }
    shown.push(format!(
        "a user's suite under nextest: {passed} tests passed, the {} leaky ones failed, each naming its leak",
        DEMO_LEAKS.len()
    ));

    section("2/4 a test process holding guards is SIGKILLed: its watchdog reaps the trees and keeps the evidence");
    let ledger = target.join("demo-ledger");
    let _ = std::fs::remove_dir_all(&ledger);
    let run_id = format!("demo-{}", std::process::id());
    let mut leaky = Command::new(target.join("debug/leaky-owner"))
        .args(["--no-container"])
        .env("REAPKIT_LEDGER_DIR", &ledger)
        .env("REAPKIT_RUN_ID", &run_id)
        .env("NEXTEST_TEST_NAME", "demo::a_test_killed_by_a_timeout")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("leaky-owner")?;
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(leaky.stdout.take().context("piped")?), &mut ready)?;
    eprintln!("xtask: the test process holds guards: {}", ready.trim());
    leaky.kill()?;
    leaky.wait()?;
    eprintln!("xtask: SIGKILLed it (no Drop runs); its watchdog takes over");
    shown.push("a SIGKILLed test process: its watchdog ended what its guards held".into());

    section("3/4 the CI step, `reapkit reap`, names the test that leaked and fails the build (exit 1)");
    let reap = Command::new(target.join("debug/reapkit"))
        .args(["reap", "--no-docker", "--run-id", &run_id, "--ledger-dir"])
        .arg(&ledger)
        .status()?;
    eprintln!("xtask: reapkit reap exited {:?} (1: leaks found)", reap.code());
    if reap.code() != Some(1) {
        bail!("the CI step did not report the killed test's leaks");
    }
    shown.push("the CI step: `reapkit reap` named the killed test's leaks and exited 1".into());
    Ok(shown)
}

/// Runs `cmd` with its output shown as it comes and kept: the status and both streams.
fn run_shown(cmd: &mut Command) -> Result<(std::process::ExitStatus, String)> {
    eprintln!("xtask: running {cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {cmd:?}"))?;
    let echo = |pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut kept = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)).map_while(Result::ok) {
                eprintln!("{line}");
                kept.push_str(&line);
                kept.push('\n');
            }
            kept
        })
    };
    let out = echo(Box::new(child.stdout.take().context("piped")?));
    let err = echo(Box::new(child.stderr.take().context("piped")?));
    let status = child.wait()?;
    let text = format!("{}{}", out.join().unwrap_or_default(), err.join().unwrap_or_default());
    eprintln!("xtask: {status} after {}", since(started));
    Ok((status, text))
}

/// How long since `started`, to the second: `1m 04s`.
fn since(started: Instant) -> String {
    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())).to_string()
}

/// Builds reapkit with its portable backend on Linux (`crates/reapkit/build.rs`).
const PORTABLE_BACKEND: &str = "REAPKIT_PORTABLE_BACKEND";

/// The systems the portable backend is for, checked with `cargo clippy --target` (their
/// standard libraries come from `scripts/setup.sh`).
const PORTABLE_TARGETS: [&str; 2] = ["x86_64-apple-darwin", "x86_64-unknown-freebsd"];

fn section(title: &str) {
    eprintln!("\n==== {title}\n");
}

fn setup() -> Result<()> {
    let script = workspace_root().join("scripts/setup.sh");
    run(Command::new("bash").arg(&script)).with_context(|| format!("{} failed", script.display()))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs one step, saying what it runs and, when it is done, how long it took.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed after {}: {status}", since(started));
    }
    eprintln!("xtask: done in {}", since(started));
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}
