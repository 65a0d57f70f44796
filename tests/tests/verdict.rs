//! The verdict is the product: one test per hole of that issue — a stranger killed, "clean"
//! said while something lives, evidence lost, a hang on a hostile file, a false alarm, a verdict
//! about someone else's project — each reproduced from outside, as a user or an adversary would,
//! with a decoy (root's and `nobody`'s) wherever anything is killed.
//!
//! Isolation as in `trust`: every sweep is scoped to a run id and ledger of its own; what a
//! test starts is ended by pid when it ends.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reapkit::Shared;
use reapkit_tests::sweep_sandbox::{Sandbox, Swept};

/// Runs `cmd` to its end, or kills it after `limit` and panics saying it hung.
fn within(limit: Duration, cmd: Command) -> Swept {
    let (tx, rx) = std::sync::mpsc::channel();
    let program = format!("{cmd:?}");
    std::thread::spawn(move || drop(tx.send(Swept::run_text(cmd))));
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("{program} hung for {limit:?}"))
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

// ---------------------------------------------------------------- 4. hostile files: no hang

#[test]
fn a_fifo_for_a_shared_fixtures_lock_or_log_is_an_error_or_replaced_never_a_hang() {
    let sb = Sandbox::new("verdict", "fifo_shared");
    for file in ["lock", "log"] {
        let fixture = Shared::command(&format!("fifo-{file}"), ["sleep", "3600"]).ledger_dir(&sb.ledger);
        let sock = fixture.socket_path().expect("its socket path");
        let planted = sock.with_extension(file);
        std::fs::create_dir_all(planted.parent().expect("shared/")).expect("shared/");
        mkfifo(&planted);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || drop(tx.send(fixture.attach())));
        let attached =
            rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("attach hung on a FIFO .{file}"));
        match file {
            // The start lock must be exactly reapkit's file: a clear error, naming it.
            "lock" => {
                let error = attached.expect_err("a FIFO is no lock").to_string();
                assert!(error.contains("a FIFO") && error.contains(&planted.display().to_string()), "{error}");
                std::fs::remove_file(&planted).expect("the FIFO goes");
            }
            // The keeper's log is written afresh: the planted FIFO is replaced, never opened.
            _ => {
                let lease = attached.expect("the fixture starts");
                assert!(std::fs::symlink_metadata(&planted).expect("the log").is_file());
                let keeper = lease.info().keeper;
                drop(lease);
                // Started by this test: ended by pid (SIGTERM: it ends its fixture and exits).
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper.pid), nix::sys::signal::SIGTERM);
                reapkit_tests::wait_exit(keeper, "the fixture keeper this test started");
            }
        }
    }
}

#[test]
fn a_fifo_lock_in_the_fixture_folder_does_not_hang_reap() {
    let sb = Sandbox::new("verdict", "fifo_lock_reap");
    let shared = sb.ledger.join("shared");
    std::fs::create_dir(&shared).expect("shared/");
    mkfifo(&shared.join("x-0000000000000000.lock"));
    mkfifo(&shared.join("x-0000000000000000.log"));
    let report_fifo = sb.report.clone();
    mkfifo(&report_fifo);

    let started = Instant::now();
    let swept = within(Duration::from_secs(30), sb.reap_cmd(&["--no-docker"]));
    assert!(started.elapsed() < Duration::from_secs(10), "{swept}");
    assert_eq!(swept.code, 0, "nothing leaked, and the planted report FIFO was replaced:\n{swept}");
    let report = std::fs::symlink_metadata(&sb.report).expect("the report");
    assert!(report.is_file(), "the report is a file of its own, not written through the FIFO");
    assert!(shared.join("x-0000000000000000.lock").exists(), "a FIFO is not reapkit's to delete");
}
