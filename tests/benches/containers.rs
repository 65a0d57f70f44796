//! Container create+start+stop+remove, side by side in one run, on the same local image:
//!
//! - `docker CLI`: `docker run -d --network none IMAGE sleep 1000` + `docker rm -f -v ID`;
//! - `reapkit guard`: `Container::builder(IMAGE)...start()` + `remove()` (stop timeout 0,
//!   so SIGKILL at once, like `rm -f`);
//! - `testcontainers`: `GenericImage::new(...).start()` (blocking API) + drop.
//!
//! Target (DESIGN.md): the guard at most the CLI's cost; faster than testcontainers-rs.
//! Run: `cargo xtask bench` (or `cargo bench -p reapkit-tests --bench containers`).

use std::process::Command;
use std::time::Duration;

use reapkit::Container;
use reapkit_tests::{bench_rounds, print_table, timed, Samples};
use testcontainers::core::WaitFor;
use testcontainers::runners::SyncRunner;
use testcontainers::{GenericImage, ImageExt};

const IMAGE: &str = "reapkit-busybox";
const TAG: &str = "latest";
const ROUNDS: usize = 15;

fn main() {
    let rounds = bench_rounds(ROUNDS);
    let image = format!("{IMAGE}:{TAG}");
    let mut cli = Samples::default();
    let mut guard = Samples::default();
    let mut testcontainers = Samples::default();
    guard_cycle(&image); // warm-up: connect, negotiate the API version
    for _ in 0..rounds {
        cli.push(timed(|| cli_cycle(&image)));
        guard.push(timed(|| guard_cycle(&image)));
        testcontainers.push(timed(testcontainers_cycle));
    }
    println!("container create+start+stop+remove, {rounds} rounds, median (p90)");
    print_table(
        &mut [("docker CLI", &mut cli), ("reapkit guard", &mut guard), ("testcontainers", &mut testcontainers)],
        &[("vs CLI", "docker CLI")],
        1,
    );
}

fn cli_cycle(image: &str) {
    let out = Command::new("docker")
        .args(["run", "-d", "--network", "none", image, "sleep", "1000"])
        .output()
        .expect("docker run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let rm = Command::new("docker").args(["rm", "-f", "-v", &id]).output().expect("docker rm");
    assert!(rm.status.success());
}

fn guard_cycle(image: &str) {
    let c = Container::builder(image)
        .cmd(["sleep", "1000"])
        .network_mode("none")
        .stop_timeout(Duration::ZERO)
        .start()
        .expect("start");
    c.remove().expect("remove");
}

fn testcontainers_cycle() {
    let c = GenericImage::new(IMAGE, TAG)
        .with_wait_for(WaitFor::Nothing)
        .with_cmd(["sleep", "1000"])
        .with_network("none")
        .start()
        .expect("testcontainers start");
    drop(c);
}
