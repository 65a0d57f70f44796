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
    /// Set up, then run the benchmarks (each prints its side-by-side table).
    Bench,
    /// Find leftovers of test runs by proof of ownership, show the evidence, reap them.
    Reap(reapkit_cli::ReapArgs),
}

fn main() -> Result<ExitCode> {
    match Cli::parse().task {
        Task::Setup => setup().map(|()| ExitCode::SUCCESS),
        Task::Test { nextest_args } => test(&nextest_args),
        Task::Bench => {
            setup()?;
            run(cargo().args(["bench", "--package", "reapkit-tests"]))?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Reap(args) => reap(&args),
    }
}

fn reap(args: &reapkit_cli::ReapArgs) -> Result<ExitCode> {
    Ok(std::process::Termination::report(reapkit_cli::reap(args)))
}

fn test(nextest_args: &[String]) -> Result<ExitCode> {
    setup()?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // Doctests first (nextest does not run them), so nextest's summary closes the output.
    run(cargo().args(["test", "--package", "reapkit", "--features", "docker", "--doc"]))?;
    // The user workspace's tests are built now, so that running them later only runs them.
    run(cargo()
        .args(["build", "--tests", "--bins", "--manifest-path", "examples/user-workspace/Cargo.toml"])
        .env("CARGO_TARGET_DIR", workspace_root().join("target/user-workspace")))?;
    // The set-up started an engine: a missing one is now a failure, not a skip.
    run(cargo()
        .args(["nextest", "run", "--workspace", "--no-fail-fast", "-E", "not binary(user_workspace)"])
        .args(nextest_args)
        .env("REAPKIT_REQUIRE_DOCKER", "1"))?;
    // A user's workspace, on its own: its nextest setup script reaps machine-wide, which must not
    // meet the leftovers the suite above makes on purpose.
    run(cargo()
        .args(["nextest", "run", "--package", "reapkit-tests", "--test", "user_workspace"])
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
    // The CI step, as users run it: everything the suite leaked is reaped and fails the run.
    eprintln!("xtask: running `cargo xtask reap` after the suite");
    match Cli::parse_from(["xtask", "reap"]).task {
        Task::Reap(args) => reap(&args),
        _ => unreachable!("parsed `reap`"),
    }
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

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}
