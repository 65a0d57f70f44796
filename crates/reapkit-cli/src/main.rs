//! `reapkit`: reap leftovers of test runs (`reap`), list what is tracked (`ps`), supervise a
//! test command (`run`) or one nextest test (`wrap`). The commands live in the library, so a
//! project's `cargo xtask` runs the very same code.

use clap::{Parser, Subcommand};
use reapkit_cli::{PsArgs, ReapArgs, RunArgs, WrapArgs};

#[derive(Parser)]
#[command(name = "reapkit", version, about = "Makes tests clean up after themselves")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Reap(ReapArgs),
    Ps(PsArgs),
    Run(RunArgs),
    Wrap(WrapArgs),
}

fn main() -> reapkit_cli::Verdict {
    match Cli::parse().command {
        Command::Reap(args) => reapkit_cli::reap(&args),
        Command::Ps(args) => reapkit_cli::ps(&args),
        Command::Run(args) => reapkit_cli::run(args),
        Command::Wrap(args) => reapkit_cli::wrap(args),
    }
}
