//! `cargo xtask reap`: the CI step, embedded in five lines.

#[derive(clap::Parser)]
enum Task {
    Reap(reapkit_cli::ReapArgs),
}

fn main() -> reapkit_cli::Verdict {
    let Task::Reap(args) = clap::Parser::parse();
    reapkit_cli::reap(&args)
}
