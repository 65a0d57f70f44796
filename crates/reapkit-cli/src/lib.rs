//! The `reapkit` commands as a library: `reap`, `ps`, `run` and `wrap`.
//!
//! A project's xtask embeds the sweep in a few lines — `Reap(reapkit_cli::ReapArgs)` in its
//! clap enum, `reapkit_cli::reap(&args)` as what `main` returns (a [`Verdict`]) — and gets the
//! same options, output and exit codes as the `reapkit` binary:
//!
//! ```no_run
//! #[derive(clap::Parser)]
//! enum Task {
//!     Reap(reapkit_cli::ReapArgs),
//! }
//!
//! fn main() -> reapkit_cli::Verdict {
//!     let Task::Reap(args) = clap::Parser::parse();
//!     reapkit_cli::reap(&args)
//! }
//! ```
//!
//! Evidence first, output second: the report file is written before anything is printed or
//! killed (and again with the outcome), and a closed or broken stdout never stops a sweep half
//! way or loses its report — output is written through [`Out`], which stops writing on the
//! first error instead of panicking. Everything printed from the evidence is escaped.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use reapkit::escape::evidence;
use reapkit::supervise::{self, Supervision};
use reapkit::sweep::{write_columns, Columns, DockerCheck, Leak, Report, Scope, Sweep, EXIT_CLEAN};

/// Where a sweep looks and how it ends things: shared by every command.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// The ledger directory [default: $REAPKIT_LEDGER_DIR, else TARGET_DIR/reapkit]
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
    /// How long all Docker engines together may take to answer (they are asked at once)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub docker_timeout: Duration,
}

impl SweepArgs {
    fn sweep(&self, scope: Scope) -> Sweep {
        let docker = match (&self.docker_host, self.no_docker) {
            (_, true) => DockerCheck::Off,
            (Some(host), false) => DockerCheck::Host(host.clone()),
            (None, false) => DockerCheck::Auto,
        };
        let sweep = Sweep::new(scope).docker(docker).docker_timeout(self.docker_timeout).grace(self.grace);
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
    #[arg(long, value_name = "ID", value_parser = run_id)]
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
    /// Where to write the JSON report [default: TARGET_DIR/reapkit-report.json]
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Exit 0 even if leaks were found or something could not be checked, saying why (for a
    /// setup step that clears stale state: it never stops the run)
    #[arg(long)]
    pub warn_only: bool,
    /// Judge the whole machine: every ledger of this user (other projects' too) and every
    /// leftover whose owner is dead. By default only this project's ledger (`<target dir>/reapkit`)
    /// and what its records name are judged
    #[arg(long)]
    pub all: bool,
    /// Every column (RSS, FDs, threads, binary, owner, working directory), not 100 columns
    #[arg(long)]
    pub wide: bool,
    #[command(flatten)]
    pub sweep: SweepArgs,
}

/// List what is alive and tracked now: owner, test, age, RSS, FDs, threads and health.
#[derive(Debug, Clone, Args)]
pub struct PsArgs {
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
    /// Everything of this user, not only this project's (its ledger and directory) and this run's
    #[arg(long)]
    pub all: bool,
    /// Every column (RSS, FDs, threads, binary, owner, working directory), not 100 columns
    #[arg(long)]
    pub wide: bool,
    #[command(flatten)]
    pub sweep: SweepArgs,
}

/// Run a test command (`npm test`, `pytest`, a script) and reap everything it left behind.
///
/// Exits with the command's status when nothing leaked; when something leaked, with the
/// command's status if it failed, else 1.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The run id to give the command [default: a new one]. A label, not a proof: another job
    /// with the same id is never touched
    #[arg(long, value_name = "ID", value_parser = run_id)]
    pub run_id: Option<String>,
    /// Write the JSON report (leaks, and the run's statistics) to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// The command and its arguments, after `--`
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

/// nextest's wrapper script: run one test binary, fail the test if it leaked anything.
#[derive(Debug, Clone, Args)]
pub struct WrapArgs {
    /// Write the JSON report (leaks, and the test's statistics) to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// The test binary and its arguments (nextest passes them)
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "TEST-BINARY")]
    pub cmd: Vec<OsString>,
}

/// A run id as reapkit writes them: it names files and reaches terminals.
fn run_id(value: &str) -> Result<String, String> {
    if reapkit::ownership::valid_id(value) {
        Ok(value.to_owned())
    } else {
        Err("a run id is 1 to 128 ASCII letters, digits and `._-+@:`, not starting with a dot".into())
    }
}

/// `reapkit reap`: returns the exit code.
pub fn reap(args: &ReapArgs) -> Verdict {
    Verdict::from(reap_code(args))
}

fn reap_code(args: &ReapArgs) -> Result<i32> {
    let scope = Scope::DeadOwners { run_id: args.run_id.clone() };
    let mut sweep = args.sweep.sweep(scope).all_projects(args.all);
    if let Some(age) = args.older_than {
        sweep = sweep.older_than(age);
    }
    if let Some(pattern) = args.pattern.clone() {
        sweep = sweep.matching(move |cmdline| pattern.is_match(cmdline), args.keep_newest);
    }
    let findings = sweep.find();
    let file = args.report.clone().or_else(default_report_path);
    // The evidence is on disk before anything is printed or killed.
    let mut problems = write_report(file.as_deref(), &findings.preview());
    let report = if args.dry_run { findings.report() } else { findings.reap() };
    problems.extend(write_report(file.as_deref(), &report));
    let mut out = Out::stdout();
    if args.json {
        out.line(&report.to_json());
    } else {
        let verb = if args.dry_run { "would reap" } else { "reaped" };
        let columns = if args.wide { Columns::Wide } else { Columns::Actions };
        publish(&mut out, &report, &format!("reapkit: {verb}"), "leaked resource", columns);
        if let Some(run_id) = &args.run_id {
            stats_line(&mut out, &report, &format!("run {run_id}"));
        }
    }
    github_annotations(&mut out, &report);
    for problem in &problems {
        Out::stderr().line(&format!("reapkit: {problem}"));
    }
    let code = if problems.is_empty() { report.exit_code } else { reapkit::sweep::EXIT_UNCHECKED };
    Ok(if args.warn_only { EXIT_CLEAN } else { code })
}

/// `reapkit ps`: everything tracked, alive or orphaned.
pub fn ps(args: &PsArgs) -> Verdict {
    Verdict::from(ps_code(args))
}

fn ps_code(args: &PsArgs) -> Result<i32> {
    let mut report = args.sweep.sweep(Scope::Everything).all_projects(args.all).find().report();
    if !args.all {
        let (here, elsewhere): (Vec<Leak>, Vec<Leak>) = report.leaks.into_iter().partition(in_this_project);
        report.leaks = here;
        if !elsewhere.is_empty() {
            report.notes.push(format!(
                "{} of other projects or runs not shown (--all shows them)",
                count(elsewhere.len(), "resource")
            ));
        }
    }
    let mut out = Out::stdout();
    if args.json {
        out.line(&report.to_json());
    } else if report.leaks.is_empty() {
        out.line("reapkit: nothing tracked is alive");
    } else {
        out.columns(&report.leaks, if args.wide { Columns::Wide } else { Columns::Health });
    }
    let mut err = Out::stderr();
    for line in &report.unchecked {
        err.line(&format!("reapkit: could not check: {}", evidence(line)));
    }
    if !args.json {
        for line in &report.notes {
            err.line(&format!("reapkit: note: {}", evidence(line)));
        }
    }
    Ok(if report.unchecked.is_empty() { EXIT_CLEAN } else { reapkit::sweep::EXIT_UNCHECKED })
}

/// Whether a resource is this project's (it runs in its directory) or this run's (its run id).
fn in_this_project(leak: &Leak) -> bool {
    let run = std::env::var("REAPKIT_RUN_ID").or_else(|_| std::env::var("NEXTEST_RUN_ID")).ok();
    let project = reapkit::ledger::target_dir().and_then(|t| t.parent().map(std::path::Path::to_path_buf));
    let here = std::env::current_dir().ok();
    let under = |dir: &Option<PathBuf>| {
        dir.as_ref().is_some_and(|d| leak.cwd.as_deref().is_some_and(|c| std::path::Path::new(c).starts_with(d)))
    };
    (run.is_some() && leak.run_id == run) || under(&project) || under(&here) || leak.cwd.is_none()
}

/// `reapkit run -- CMD`.
pub fn run(args: RunArgs) -> Verdict {
    Verdict::from(run_code(args))
}

fn run_code(args: RunArgs) -> Result<i32> {
    let run_id = args.run_id.clone().unwrap_or_else(reapkit::ownership::fresh_run_id);
    Out::stderr().line(&format!("reapkit: run {run_id}"));
    supervised(Supervision::Run { run_id }, &args.sweep, args.report.as_deref(), &args.cmd)
}

/// `reapkit wrap TEST-BINARY ARGS...`.
pub fn wrap(args: WrapArgs) -> Verdict {
    Verdict::from(supervised(Supervision::Wrap, &args.sweep, args.report.as_deref(), &args.cmd))
}

fn supervised(mode: Supervision, sweep: &SweepArgs, file: Option<&std::path::Path>, argv: &[OsString]) -> Result<i32> {
    let what = match &mode {
        Supervision::Run { run_id } => format!("run {run_id}"),
        Supervision::Wrap => "the test".to_owned(),
    };
    let (program, rest) = argv.split_first().context("no command given")?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    let supervise::Ended { status, findings } = supervise::supervise(mode, cmd, |scope| sweep.sweep(scope))?;
    // The evidence is on disk before anything is printed or killed.
    let mut problems = write_report(file, &findings.preview());
    // stdout belongs to the command; the verdict goes to stderr, which nextest shows on failure.
    let report = findings.reap();
    problems.extend(write_report(file, &report));
    if !report.leaks.is_empty() || !report.unchecked.is_empty() {
        publish(&mut Out::stderr(), &report, "reapkit: the command left behind", "resource", Columns::Actions);
    }
    stats_line(&mut Out::stderr(), &report, &what);
    github_annotations(&mut Out::stdout(), &report);
    for problem in &problems {
        Out::stderr().line(&format!("reapkit: {problem}"));
    }
    let code = supervise::exit_code(status, &report);
    Ok(if problems.is_empty() || code != EXIT_CLEAN { code } else { reapkit::sweep::EXIT_UNCHECKED })
}

/// Prints the outcome for people: one table row per leak, its action in the past tense once it
/// is done (`heading N things:` above it), then what could not be checked and the notes.
fn publish(out: &mut Out, report: &Report, heading: &str, thing: &str, columns: Columns) {
    if report.leaks.is_empty() {
        if report.unchecked.is_empty() {
            out.line("reapkit: nothing leaked");
        }
    } else {
        out.line(&format!("{heading} {}:", count(report.leaks.len(), thing)));
        out.columns(&report.leaks, columns);
    }
    for line in &report.unchecked {
        out.line(&format!("reapkit: could not check: {}", evidence(line)));
    }
    for line in &report.notes {
        out.line(&format!("reapkit: note: {}", evidence(line)));
    }
}

/// The run's statistics in one line, if its guards logged any: `reapkit: run ci-17: 200 guards
/// created, 3 failed to start, 197 torn down, 0 leaked, 2 escapees ended`.
fn stats_line(out: &mut Out, report: &Report, what: &str) {
    if let Some(stats) = &report.stats {
        out.line(&format!("reapkit: {}: {}", evidence(what), stats.summary()));
    }
}

/// Writes the report file; what went wrong, if anything, for the caller to say (once stdout
/// is done) and to make the exit code "unchecked".
fn write_report(file: Option<&std::path::Path>, report: &Report) -> Vec<String> {
    let Some(path) = file else { return Vec::new() };
    match report.write_file(path) {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("could not write the report to {}: {e}", evidence(&path.display().to_string()))],
    }
}

fn github_annotations(out: &mut Out, report: &Report) {
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        let mut text = Vec::new();
        let _ = report.write_github_annotations(&mut text);
        out.raw(&text);
    }
}

/// `1 leaked resource`, `3 leaked resources`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// How a command ended: an exit code (0 clean, 1 leaks, 2 unchecked; a supervised command's
/// own), or an error, which is printed and exits 2. What `main` returns:
/// `fn main() -> reapkit_cli::Verdict { reapkit_cli::reap(&args) }`.
#[derive(Debug)]
pub struct Verdict {
    code: i32,
    error: Option<anyhow::Error>,
}

impl Verdict {
    /// The exit code it stands for.
    pub fn code(&self) -> i32 {
        self.code
    }
}

impl From<Result<i32>> for Verdict {
    fn from(result: Result<i32>) -> Verdict {
        match result {
            Ok(code) => Verdict { code, error: None },
            Err(error) => Verdict { code: reapkit::sweep::EXIT_UNCHECKED, error: Some(error) },
        }
    }
}

impl std::process::Termination for Verdict {
    fn report(self) -> std::process::ExitCode {
        if let Some(e) = &self.error {
            Out::stderr().line(&format!("reapkit: error: {}", evidence(&format!("{e:#}"))));
        }
        std::process::ExitCode::from(u8::try_from(self.code).unwrap_or(u8::MAX))
    }
}

/// stdout or stderr that stops writing at its first error (a closed pipe, `| head`) instead of
/// panicking as `println!` does: the sweep goes on, and its report is on disk already.
pub struct Out {
    target: Box<dyn Write>,
    broken: bool,
}

impl Out {
    pub fn stdout() -> Out {
        Out { target: Box::new(std::io::stdout()), broken: false }
    }

    pub fn stderr() -> Out {
        Out { target: Box::new(std::io::stderr()), broken: false }
    }

    /// One line of our own text (the caller escaped the evidence in it).
    pub fn line(&mut self, text: &str) {
        self.raw(format!("{text}\n").as_bytes());
    }

    fn columns(&mut self, leaks: &[Leak], columns: Columns) {
        let mut text = Vec::new();
        let _ = write_columns(&mut text, leaks, columns);
        self.raw(&text);
    }

    fn raw(&mut self, bytes: &[u8]) {
        if !self.broken {
            self.broken = self.target.write_all(bytes).and_then(|()| self.target.flush()).is_err();
        }
    }
}

fn default_report_path() -> Option<PathBuf> {
    reapkit::ledger::target_dir().map(|t| t.join("reapkit-report.json"))
}
