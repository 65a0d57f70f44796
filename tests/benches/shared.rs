//! A fixture per test against one shared by the run, side by side in one run: 50 tests that
//! each need the fixture server (ready when it listens, then one connection) and 50 that each
//! need a container (busybox, ready when running), as `cargo test`'s threads or nextest's
//! processes would ask for them one after the other:
//!
//! - `per test`: a guard per test, started and torn down by it;
//! - `shared`: `Shared::…attach()` per test — the first starts it, the rest attach — with the
//!   lease dropped at each test's end.
//!
//! Target (the issue): shared costs at most one start plus 5 ms a test. Each round's fixture
//! has a name of its own and `reuse_for(1 s)`, so it ends a second after its round.
//! Run: `cargo xtask bench` (or `cargo bench -p reapkit-tests --bench shared`).

use std::time::Duration;

use reapkit::{Container, Listen, ProcessGuard, Shared};
use reapkit_tests::{answer, bench_rounds, fixture, fixture_path, ms, print_table, timed, Samples};

const TESTS: usize = 50;
const IMAGE: &str = "reapkit-busybox:latest";

/// What a test does with the server: one connection, answered by it.
fn use_server(port: u16) {
    let line = answer(port);
    assert!(line.starts_with("fixture-server"), "{line}");
}

fn server_per_test() {
    let guard = ProcessGuard::builder(fixture(&["--listen-tcp", "0"])).listen(Listen::Tcp(0)).spawn().expect("spawn");
    use_server(guard.port().expect("a port"));
}

fn shared_server(name: &str) -> Shared {
    let argv = [fixture_path().to_string_lossy().into_owned(), "--listen-tcp".into(), "0".into()];
    Shared::command(name, argv).listen(Listen::Tcp(0)).reuse_for(Duration::from_secs(1))
}

fn container() -> reapkit::ContainerBuilder {
    Container::builder(IMAGE).cmd(["sleep", "1000"]).network_mode("none").stop_timeout(Duration::ZERO)
}

fn main() {
    let rounds = bench_rounds(3);
    let (mut server_each, mut server_shared, mut server_start) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut box_each, mut box_shared, mut box_start) = (Samples::default(), Samples::default(), Samples::default());
    server_per_test(); // warm-up: the fixture binary in the page cache
    container().start().expect("warm-up").remove().expect("removed");
    for round in 0..rounds {
        let tag = format!("{}-{round}", std::process::id());
        server_start.push(timed(server_per_test));
        server_each.push(timed(|| (0..TESTS).for_each(|_| server_per_test())));
        let shared = shared_server(&format!("bench-server-{tag}"));
        server_shared.push(timed(|| {
            for _ in 0..TESTS {
                let lease = shared.attach().expect("attach");
                use_server(lease.port().expect("a port"));
            }
        }));

        box_start.push(timed(|| container().start().expect("start").remove().expect("removed")));
        box_each.push(timed(|| (0..TESTS).for_each(|_| drop(container().start().expect("start")))));
        let shared = Shared::container(&format!("bench-box-{tag}"), container()).reuse_for(Duration::from_secs(1));
        box_shared.push(timed(|| {
            for _ in 0..TESTS {
                let lease = shared.attach().expect("attach");
                assert!(lease.container_id().is_some());
            }
        }));
    }
    println!("{TESTS} tests each needing a fixture, {rounds} rounds, total wall time, median (p90)");
    print_table(
        &mut [
            ("server: per test", &mut server_each),
            ("server: shared", &mut server_shared),
            ("container: per test", &mut box_each),
            ("container: shared", &mut box_shared),
        ],
        &[("vs per test", "server: per test"), ("vs box/test", "container: per test")],
        1,
    );
    for (what, shared, start) in
        [("server", &mut server_shared, &mut server_start), ("container", &mut box_shared, &mut box_start)]
    {
        let budget = start.median() + Duration::from_millis(5) * TESTS as u32;
        let verdict = if shared.median() <= budget { "met" } else { "MISSED" };
        println!(
            "target, {what}: shared {} <= one start {} + 5 ms x {TESTS} = {}: {verdict}",
            ms(shared.median(), 1),
            ms(start.median(), 1),
            ms(budget, 1)
        );
    }
}
