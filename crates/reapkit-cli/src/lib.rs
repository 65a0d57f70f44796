//! The `reapkit` commands as a library: `reap`, `ps`, `run` and `wrap`.
//!
//! A project's xtask embeds the sweep in a few lines — `Reap(reapkit_cli::ReapArgs)` in its
//! clap enum, `reapkit_cli::reap(&args)` to run it — and gets the same options, output and exit
//! codes as the `reapkit` binary. Evidence goes out before anything is killed.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use reapkit::supervise::{self, Supervision};
use reapkit::sweep::{write_table, DockerCheck, Report, Scope, Sweep, EXIT_CLEAN, EXIT_LEAKS};

/// Where a sweep looks and how it ends things: shared by every command.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// The ledger directory [default: $REAPKIT_LEDGER_DIR, else <target dir>/reapkit]
    #[arg(long, value_name = "DIR")]
    pub ledger_dir: Option<PathBuf>,
    /// The Docker engine to check [default: $DOCKER_HOST, else the local socket if present]
    #[arg(long, value_name = "URL", conflicts_with = "no_docker")]
    pub docker_host: Option<String>,
    /// Do not look at Docker at all
    #[arg(long)]
    pub no_docker: bool,
    /// SIGTERM-to-SIGKILL grace for leftover processes
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
}

impl SweepArgs {
    fn sweep(&self, scope: Scope) -> Sweep {
        let docker = match (&self.docker_host, self.no_docker) {
            (_, true) => DockerCheck::Off,
            (Some(host), false) => DockerCheck::Host(host.clone()),
            (None, false) => DockerCheck::Auto,
        };
        let sweep = Sweep::new(scope).docker(docker).grace(self.grace);
        match &self.ledger_dir {
            Some(dir) => sweep.ledger_dir(dir),
            None => sweep,
        }
    }
}

/// Find leftovers of test runs by proof of ownership, show the evidence, reap them.
///
/// Exit codes: 0 nothing leaked, 1 leaks found (reaped, or listed under --dry-run),
/// 2 something could not be checked (the message says why).
#[derive(Debug, Clone, Args)]
pub struct ReapArgs {
    /// List what would be reaped; touch nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object (with a `leaks` array) instead of the table
    #[arg(long)]
    pub json: bool,
    /// Only leftovers of this run (REAPKIT_RUN_ID / NEXTEST_RUN_ID)
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Only leftovers at least this old, e.g. `10m`
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Also reap processes of yours started WITHOUT reapkit whose command line matches
    /// (never this process or its ancestors); try it with --dry-run first
    #[arg(long = "match", value_name = "REGEX")]
    pub pattern: Option<regex::Regex>,
    /// With --match: spare the N most recently started matches
    #[arg(long, value_name = "N", default_value_t = 0, requires = "pattern")]
    pub keep_newest: usize,
    /// Where to write the JSON report [default: <target dir>/reapkit-report.json]
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Exit 0 even if leaks were found (for a setup step that clears stale state)
    #[arg(long)]
    pub warn_only: bool,
    #[command(flatten)]
    pub sweep: SweepArgs,
}

/// List what is alive and tracked now: owner, test, age, RSS, FDs, threads and health.
#[derive(Debug, Clone, Args)]
pub struct PsArgs {
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sweep: SweepArgs,
}

/// Run a test command (`npm test`, `pytest`, a script) and reap everything it left behind.
///
/// Exits with the command's status when nothing leaked; when something leaked, with the
/// command's status if it failed, else 1.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The run id to give the command [default: a new one]
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// The command and its arguments, after `--`
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

/// nextest's wrapper script: run one test binary, fail the test if it leaked anything.
#[derive(Debug, Clone, Args)]
pub struct WrapArgs {
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// The test binary and its arguments (nextest passes them)
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "TEST-BINARY")]
    pub cmd: Vec<OsString>,
}

/// `reapkit reap`: returns the exit code.
pub fn reap(args: &ReapArgs) -> Result<i32> {
    let scope = Scope::DeadOwners { run_id: args.run_id.clone() };
    let mut sweep = args.sweep.sweep(scope);
    if let Some(age) = args.older_than {
        sweep = sweep.older_than(age);
    }
    if let Some(pattern) = args.pattern.clone() {
        sweep = sweep.matching(move |cmdline| pattern.is_match(cmdline), args.keep_newest);
    }
    let findings = sweep.find();
    if !args.json && !findings.leaks().is_empty() {
        let verb = if args.dry_run { "would reap" } else { "reaping" };
        println!("reapkit: {verb} {} leaked resources; the evidence:", findings.leaks().len());
        write_table(&mut std::io::stdout(), findings.leaks())?;
    }
    let report = if args.dry_run { findings.report() } else { findings.reap() };
    publish(&report, args.json, args.report.clone().or_else(default_report_path))?;
    Ok(if args.warn_only && report.exit_code == EXIT_LEAKS { EXIT_CLEAN } else { report.exit_code })
}

/// `reapkit ps`: everything tracked, alive or orphaned.
pub fn ps(args: &PsArgs) -> Result<i32> {
    let report = args.sweep.sweep(Scope::Everything).find().report();
    if args.json {
        println!("{}", report.to_json());
    } else if report.leaks.is_empty() {
        println!("reapkit: nothing tracked is alive");
    } else {
        write_table(&mut std::io::stdout(), &report.leaks)?;
    }
    for line in &report.unchecked {
        eprintln!("reapkit: could not check: {line}");
    }
    Ok(if report.unchecked.is_empty() { EXIT_CLEAN } else { reapkit::sweep::EXIT_UNCHECKED })
}

/// `reapkit run -- CMD`.
pub fn run(args: RunArgs) -> Result<i32> {
    let run_id = args.run_id.clone().unwrap_or_else(reapkit::ownership::fresh_run_id);
    eprintln!("reapkit: run {run_id}");
    supervised(Supervision::Run { run_id }, &args.sweep, &args.cmd)
}

/// `reapkit wrap TEST-BINARY ARGS...`.
pub fn wrap(args: WrapArgs) -> Result<i32> {
    supervised(Supervision::Wrap, &args.sweep, &args.cmd)
}

fn supervised(mode: Supervision, sweep: &SweepArgs, argv: &[OsString]) -> Result<i32> {
    let (program, rest) = argv.split_first().context("no command given")?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    let supervise::Ended { status, findings } = supervise::supervise(mode, cmd, |scope| sweep.sweep(scope))?;
    // stdout belongs to the command; the verdict goes to stderr, which nextest shows on failure.
    let mut err = std::io::stderr();
    if !findings.leaks().is_empty() {
        writeln!(err, "reapkit: the command left {} resources behind; the evidence:", findings.leaks().len())?;
        write_table(&mut err, findings.leaks())?;
    }
    let report = findings.reap();
    for leak in &report.leaks {
        writeln!(err, "reapkit: leaked {}", leak.summary())?;
    }
    for line in &report.unchecked {
        writeln!(err, "reapkit: could not check: {line}")?;
    }
    github_annotations(&report)?;
    Ok(supervise::exit_code(status, &report))
}

/// Prints the outcome (JSON or prose), the GitHub annotations, and writes the report file.
fn publish(report: &Report, json: bool, file: Option<PathBuf>) -> Result<()> {
    if json {
        println!("{}", report.to_json());
    } else {
        for leak in &report.leaks {
            println!("reapkit: {}", leak.summary());
        }
        for line in &report.unchecked {
            println!("reapkit: could not check: {line}");
        }
        for line in &report.notes {
            println!("reapkit: note: {line}");
        }
        if report.leaks.is_empty() && report.unchecked.is_empty() {
            println!("reapkit: nothing leaked");
        }
    }
    github_annotations(report)?;
    if let Some(path) = file {
        std::fs::write(&path, report.to_json()).with_context(|| format!("writing the report to {}", path.display()))?;
    }
    Ok(())
}

fn github_annotations(report: &Report) -> Result<()> {
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        report.write_github_annotations(&mut std::io::stdout())?;
    }
    Ok(())
}

fn default_report_path() -> Option<PathBuf> {
    reapkit::ledger::target_dir().map(|t| t.join("reapkit-report.json"))
}
