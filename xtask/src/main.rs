//! `cargo xtask`: the project's own automation, dogfooding the library.
//!
//! - `cargo xtask test`: set up (apt/npm/pip, idempotent), run the whole suite with nextest,
//!   then prove that the run left no process carrying a reapkit marker on the machine.
//! - `cargo xtask bench`: set up, then print the benchmark tables (ratios in one run).
//! - `cargo xtask setup`: only the set-up.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use reapkit::procfs::MarkerScan;

/// Exit code when the suite passed but left marked processes behind (a product bug).
const EXIT_LEFTOVERS: u8 = 3;

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
    }
}

fn test(nextest_args: &[String]) -> Result<ExitCode> {
    setup()?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // Doctests first (nextest does not run them), so nextest's summary closes the output.
    run(cargo().args(["test", "--package", "reapkit", "--doc"]))?;
    // The set-up started an engine: a missing one is now a failure, not a skip.
    run(cargo()
        .args(["nextest", "run", "--workspace", "--no-fail-fast"])
        .args(nextest_args)
        .env("REAPKIT_REQUIRE_DOCKER", "1"))?;
    let processes = marked_processes();
    let docker = labelled_docker_objects()?;
    if processes.is_empty() && docker.is_empty() {
        println!("xtask: no process with a reapkit marker and no reapkit-labelled Docker object is left");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("xtask: the suite passed but left reapkit-owned resources behind (a leak in the product):");
    for (pid, cmdline) in &processes {
        eprintln!("  process {pid}: {cmdline}");
    }
    for object in &docker {
        eprintln!("  docker {object}");
    }
    eprintln!("xtask: find the test in each one's REAPKIT_TEST variable or reapkit.test label.");
    Ok(ExitCode::from(EXIT_LEFTOVERS))
}

/// Containers, networks and volumes labelled `reapkit.run-id`, as the docker CLI lists them.
fn labelled_docker_objects() -> Result<Vec<String>> {
    let mut found = Vec::new();
    for kind in ["container", "network", "volume"] {
        let out = Command::new("docker")
            .args([kind, "ls", "--quiet", "--filter", "label=reapkit.run-id"])
            .args(if kind == "container" { &["--all"][..] } else { &[] })
            .output()
            .context("running the docker CLI")?;
        if !out.status.success() {
            bail!("docker {kind} ls failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        found.extend(String::from_utf8_lossy(&out.stdout).lines().map(|id| format!("{kind} {id}")));
    }
    Ok(found)
}

/// Live processes of ours whose environment carries any reapkit ownership marker.
fn marked_processes() -> Vec<(i32, String)> {
    let run_id = format!("{}=", reapkit::ownership::ENV_RUN_ID);
    MarkerScan::new()
        .find_matching(|environ| environ.split(|&b| b == 0).any(|e| e.starts_with(run_id.as_bytes())))
        .into_iter()
        .map(|id| (id.pid, reapkit::procfs::cmdline(id.pid)))
        .collect()
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
