//! `cargo xtask reap`, the CI step, and `xtask wrap`, the nextest wrapper: reapkit's CLI in a
//! few lines, so that no `reapkit` binary has to be installed.

#[derive(clap::Parser)]
enum Task {
    Reap(reapkit_cli::ReapArgs),
    Wrap(reapkit_cli::WrapArgs),
}

fn main() -> reapkit_cli::Verdict {
    match clap::Parser::parse() {
        Task::Reap(args) => reapkit_cli::reap(&args),
        Task::Wrap(args) => reapkit_cli::wrap(args),
    }
}
