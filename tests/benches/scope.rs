//! Per-test cost of a test scope with nothing spawned, side by side with a bare test, one run.
//!
//! - `bare test`: the body alone (the floor).
//! - `scope, FD check on`: what `#[reapkit::test]` adds to a test that runs alone in its
//!   process (nextest, or serialized): enter (FD snapshot with targets, children list),
//!   finish (deferred list, children, FD count, baseline file lookup).
//! - `scope, FD check off`: `fd_check = false`.
//! - `scope, shared process`: under `cargo test` threads, where process-wide checks do not run.
//!
//! Each sample is the mean over a batch of tests, so that the clock's resolution does not
//! matter. Target (DESIGN.md): at most 50 µs a test over the bare test.
//! Run: `cargo xtask bench` (or `cargo bench -p reapkit-tests --bench scope`).

use std::time::{Duration, Instant};

use reapkit::TestScope;
use reapkit_tests::{bench_rounds, print_table, Samples};

const ROUNDS: usize = 40;
const BATCH: u32 = 200;

fn main() {
    let rounds = bench_rounds(ROUNDS);
    let baseline = std::env::temp_dir().join(format!("reapkit-bench-{}", std::process::id())).join("reapkit-leaks.txt");
    let scoped = |fd_check: bool, alone: bool| {
        let mut builder = TestScope::builder().name("bench::scoped").baseline(&baseline).fd_check(fd_check);
        if alone {
            builder = builder.serialized();
        }
        move || {
            let scope = builder.clone().enter();
            body();
            scope.finish().expect("nothing leaked");
        }
    };
    let mut bare = Samples::default();
    let mut fd_on = Samples::default();
    let mut fd_off = Samples::default();
    let mut shared = Samples::default();
    // Interleaved, so drift in machine load hits every variant alike.
    for _ in 0..rounds {
        bare.push(per_test(body));
        fd_on.push(per_test(scoped(true, true)));
        fd_off.push(per_test(scoped(false, true)));
        shared.push(per_test(scoped(true, false)));
    }
    let floor = bare.median();
    println!("per-test cost of a test scope with nothing spawned, {rounds} rounds of {BATCH} tests, median (p90)");
    print_table(
        &mut [
            ("bare test", &mut bare),
            ("scope, FD check on", &mut fd_on),
            ("scope, FD check off", &mut fd_off),
            ("scope, shared process", &mut shared),
        ],
        &[("vs shared", "scope, shared process")],
        4,
    );
    let cost = fd_on.median().saturating_sub(floor);
    let verdict = if cost <= Duration::from_micros(50) { "within" } else { "OVER" };
    println!("scope with the FD check on, over a bare test: {:.1} µs ({verdict} the 50 µs target)", micros(cost));
}

/// A test body that does a little work and opens nothing.
fn body() {
    std::hint::black_box((0..64u64).sum::<u64>());
}

/// The mean time of one test over a batch.
fn per_test(mut test: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        test();
    }
    start.elapsed() / BATCH
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
