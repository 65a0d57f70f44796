//! What each containment costs, side by side in one run, on the cooperative fixture server
//! (it exits on stdin EOF):
//!
//! - spawn: a bare `Command::spawn` against a guard's spawn per containment (cgroup, keeper,
//!   marker-only) — the overhead of the containment (target: ≤ 2 ms in keeper mode);
//! - teardown: the server's own exit (close stdin, `wait`) against a guard's shutdown per
//!   containment, after the handshake — the overhead over the server's own exit (target:
//!   ≤ 0.3 ms in cgroup mode, where the kernel lists the members and no `/proc` scan is needed);
//! - a whole cycle against a bare `spawn` + `kill` + `wait`;
//! - 100 servers that ignore EOF ended together (`reapkit::shutdown_all`) against one by one.
//!
//! Run: `cargo xtask bench` (or `cargo bench -p reapkit-tests --bench containment`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use reapkit::{Containment, ProcessGuard};
use reapkit_tests::{bench_rounds, fixture, ms, print_table, timed, Samples};

const ROUNDS: usize = 40;
const MODES: [(Containment, &str); 3] = [
    (Containment::Cgroup, "guard, cgroup"),
    (Containment::Keeper, "guard, keeper"),
    (Containment::Marker, "guard, marker"),
];

fn main() {
    let rounds = bench_rounds(ROUNDS);
    spawn_and_teardown(rounds);
    many_together((rounds / 10).max(2));
}

/// One containment's samples.
struct Variant {
    mode: Containment,
    label: &'static str,
    spawn: Samples,
    teardown: Samples,
    cycle: Samples,
}

fn spawn_and_teardown(rounds: usize) {
    let mut bare_spawn = Samples::default();
    let mut own_exit = Samples::default();
    let mut bare_cycle = Samples::default();
    let mut variants: Vec<Variant> = MODES
        .iter()
        .map(|&(mode, label)| Variant {
            mode,
            label,
            spawn: Samples::default(),
            teardown: Samples::default(),
            cycle: Samples::default(),
        })
        .collect();
    // Interleaved, so drift in machine load hits every variant alike.
    for _ in 0..rounds {
        let (spawned, mut child) = timed_spawn();
        bare_spawn.push(spawned);
        handshake(&mut child);
        own_exit.push(timed(|| {
            drop(child.stdin.take());
            child.wait().expect("wait")
        }));
        bare_cycle.push(timed(|| {
            let (_, mut child) = timed_spawn();
            child.kill().expect("kill");
            child.wait().expect("wait")
        }));
        for v in &mut variants {
            let builder = || ProcessGuard::builder(fixture(&[])).containment(v.mode);
            let start = Instant::now();
            let guard = builder().spawn().expect("spawn");
            v.spawn.push(start.elapsed());
            drop(guard);
            let server = builder().mcp().start().expect("start");
            let start = Instant::now();
            let report = server.shutdown();
            v.teardown.push(start.elapsed());
            assert!(report.is_clean() && report.ended_by == reapkit::EndedBy::StdinEof, "{report}");
            v.cycle.push(timed(|| builder().spawn().expect("spawn").shutdown()));
        }
    }
    let median = |vs: &mut [Variant], mode: Containment, pick: fn(&mut Variant) -> &mut Samples| {
        vs.iter_mut().find(|v| v.mode == mode).map(|v| pick(v).median()).expect("every mode is measured")
    };
    let keeper_over = median(&mut variants, Containment::Keeper, |v| &mut v.spawn).saturating_sub(bare_spawn.median());
    let cgroup_over = median(&mut variants, Containment::Cgroup, |v| &mut v.teardown).saturating_sub(own_exit.median());

    println!("spawn of the fixture, {rounds} rounds, median (p90)");
    let mut rows: Vec<(&str, &mut Samples)> = vec![("Command::spawn", &mut bare_spawn)];
    rows.extend(variants.iter_mut().map(|v| (v.label, &mut v.spawn)));
    print_table(&mut rows, &[("vs spawn", "Command::spawn"), ("vs marker", "guard, marker")], 3);
    report("keeper spawn overhead over Command::spawn", keeper_over, Duration::from_millis(2));

    println!("\nteardown of a cooperative server after its handshake, {rounds} rounds, median (p90)");
    let mut rows: Vec<(&str, &mut Samples)> = vec![("own exit", &mut own_exit)];
    rows.extend(variants.iter_mut().map(|v| (v.label, &mut v.teardown)));
    print_table(&mut rows, &[("vs own exit", "own exit"), ("vs marker", "guard, marker")], 3);
    report("cgroup teardown overhead over the server's own exit", cgroup_over, Duration::from_micros(300));

    println!("\nspawn + teardown, {rounds} rounds, median (p90)");
    let mut rows: Vec<(&str, &mut Samples)> = vec![("spawn+kill+wait", &mut bare_cycle)];
    rows.extend(variants.iter_mut().map(|v| (v.label, &mut v.cycle)));
    print_table(&mut rows, &[("vs kill+wait", "spawn+kill+wait")], 3);
}

fn report(what: &str, value: Duration, target: Duration) {
    let verdict = if value <= target { "within" } else { "OVER" };
    println!("{what}: {} ({verdict} the {} target)", ms(value, 3), ms(target, 1));
}

/// `N` servers that ignore EOF (each costs its EOF grace and a SIGTERM), ended together
/// against one by one.
fn many_together(rounds: usize) {
    const N: usize = 100;
    let eof = Duration::from_millis(50);
    let start_all = || -> Vec<ProcessGuard> {
        (0..N)
            .map(|_| ProcessGuard::builder(fixture(&["--ignore-eof"])).eof_grace(eof).term_grace(eof).spawn())
            .collect::<Result<_, _>>()
            .expect("the servers start")
    };
    let mut together = Samples::default();
    let mut one_by_one = Samples::default();
    for _ in 0..rounds {
        let guards = start_all();
        together.push(timed(|| reapkit::shutdown_all(guards)));
        let guards = start_all();
        one_by_one.push(timed(|| guards.into_iter().map(ProcessGuard::shutdown).count()));
    }
    println!("\n{N} servers ignoring EOF (eof_grace 50 ms), {rounds} rounds, median (p90)");
    print_table(
        &mut [("one by one", &mut one_by_one), ("shutdown_all", &mut together)],
        &[("vs one by one", "one by one")],
        1,
    );
}

/// A bare spawn with the same stdio as a guard's, timed.
fn timed_spawn() -> (Duration, Child) {
    let start = Instant::now();
    let child =
        fixture(&[]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    (start.elapsed(), child)
}

fn handshake(child: &mut Child) {
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#;
    writeln!(child.stdin.as_mut().unwrap(), "{init}").expect("write");
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut String::new()).expect("read");
}
