//! A user's `cargo xtask` as the README has them write it: reapkit's CLI embedded, so it is
//! built with the backend this suite builds reapkit with (`--features portable`: the portable
//! one, which `tests/portable.rs` runs as a user on macOS would).

use clap::Parser;

#[derive(Parser)]
enum Task {
    Reap(reapkit_cli::ReapArgs),
    Ps(reapkit_cli::PsArgs),
}

fn main() -> reapkit_cli::Verdict {
    match Task::parse() {
        Task::Reap(args) => reapkit_cli::reap(&args),
        Task::Ps(args) => reapkit_cli::ps(&args),
    }
}
