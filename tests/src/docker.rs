//! The suite's view of the Docker engine: through the `docker` CLI, from outside the product.

use std::process::Command;

/// The image `scripts/docker-up.sh` imports offline.
pub const IMAGE: &str = "reapkit-busybox:latest";

/// Whether to run: the engine answers, or the suite does not require it (then say so).
/// `REAPKIT_REQUIRE_DOCKER=1` (set by `cargo xtask test`, hence CI) makes a missing engine fail.
pub fn engine() -> bool {
    let up = Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success());
    if !up && std::env::var("REAPKIT_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("REAPKIT_REQUIRE_DOCKER=1 but no Docker engine answers: run scripts/docker-up.sh");
    }
    if !up {
        eprintln!("no Docker engine: container test not run (set REAPKIT_REQUIRE_DOCKER=1 to fail instead)");
    }
    up
}

/// Runs the docker CLI, returns its trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("the docker CLI runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Containers, networks and volumes carrying `label=value`, as the CLI sees them.
pub fn leftovers(label: &str, value: &str) -> Vec<String> {
    let filter = format!("label={label}={value}");
    let mut found = Vec::new();
    for what in [&["ps", "-aq"][..], &["network", "ls", "-q"], &["volume", "ls", "-q"]] {
        let mut args = what.to_vec();
        args.extend(["--filter", &filter]);
        found.extend(docker(&args).lines().map(|l| format!("{} {l}", what[0])));
    }
    found
}
