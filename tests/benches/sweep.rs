//! The sweep on a busy machine: 1000 extra processes of our user, first none leaked, then 100
//! of them leaked (marked with a dead owner), side by side in one run:
//!
//! - `floor: cmdline+environ`: read `/proc/<pid>/cmdline` and `/proc/<pid>/environ` of every
//!   pid in `/proc` into one reused buffer — the least any environment-based sweep can cost;
//! - `reapkit sweep (find)`: `Sweep::find` over dead owners (no Docker, an empty ledger);
//! - `pgrep -f`: what people run today, as a subprocess (its start is part of the cost). It
//!   cannot tell a leak from a healthy process: it only lists command lines;
//! - `sysinfo full refresh`: a fresh `sysinfo::System` refreshing every process with
//!   everything (command line and environment included).
//!
//! Finally the 100 leaks are reaped (scoped to this bench's run id, so nothing else can be
//! touched) and the reap is timed. Every process is started by this bench and ended by it, by
//! pid, even on panic.
//!
//! Target: the no-leak sweep within 2× of the floor.
//! Run: `cargo bench -p reapkit-tests --bench sweep` (`REAPKIT_BENCH_ROUNDS=<n>` to change the
//! number of rounds).

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reapkit::ownership::{ENV_OWNER, ENV_RUN_ID, ENV_TEST};
use reapkit::sweep::{Action, DockerCheck, Findings, Scope, Sweep};
use reapkit::ProcId;
use reapkit_tests::{assert_all_gone, bench_rounds, dead_owner, ms, print_table, timed, Samples};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};

const ROUNDS: usize = 15;
const EXTRA: usize = 1000;
const LEAKED: usize = 100;
const GRACE: Duration = Duration::from_millis(200);

fn main() {
    let rounds = bench_rounds(ROUNDS);
    let ledger = tempfile::tempdir().expect("a temporary ledger directory");
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let tag = format!("{}-{nonce}", std::process::id());

    let started = Instant::now();
    let extra = Sleepers::spawn(EXTRA, &[]);
    println!("started {EXTRA} unmarked `sleep 3600` in {}", ms(started.elapsed(), 0));
    let extra_pids = extra.pids();

    // Nothing leaked: a pattern that matches no process at all for pgrep.
    let nothing = format!("reapkit-bench-matches-nothing-{tag}");
    let no_leak = measure(
        &format!("sweep of {EXTRA} extra processes, nothing leaked ({rounds} rounds)"),
        rounds,
        ledger.path(),
        &nothing,
        |findings, listed| {
            assert_eq!(listed, 0, "pgrep -f {nothing} matched something");
            let ours: Vec<i32> = leak_pids(findings, None).into_iter().filter(|p| extra_pids.contains(p)).collect();
            assert!(ours.is_empty(), "unmarked processes reported as leaks: {ours:?}");
        },
    );
    println!("no-leak sweep vs floor: {}", verdict(no_leak));

    // 100 leaked: the same 1000, plus 100 more whose markers name a dead owner.
    let run_id = format!("bench-{tag}");
    let owner = dead_owner();
    let mut leaked = Sleepers::spawn(LEAKED, &[(ENV_RUN_ID, &run_id), (ENV_OWNER, &owner), (ENV_TEST, "bench::leak")]);
    let mut leaked_pids = leaked.pids();
    leaked_pids.sort_unstable();
    let ids: Vec<ProcId> = leaked_pids.iter().map(|&p| ProcId::of(p).expect("just started")).collect();
    let with_leaks = measure(
        &format!("sweep of {EXTRA} extra processes, {LEAKED} more leaked ({rounds} rounds)"),
        rounds,
        ledger.path(),
        "^sleep 3600$",
        |findings, listed| {
            assert!(listed >= EXTRA + LEAKED, "pgrep -f listed {listed} `sleep 3600`");
            assert_eq!(leak_pids(findings, Some(&run_id)), leaked_pids, "the find sees exactly our {LEAKED} leaks");
            let wrong: Vec<i32> = leak_pids(findings, None).into_iter().filter(|p| extra_pids.contains(p)).collect();
            assert!(wrong.is_empty(), "unmarked processes reported as leaks: {wrong:?}");
        },
    );
    println!(
        "{LEAKED}-leak sweep vs floor: {:.2}x; pgrep -f lists all {} `sleep 3600` alike, leaked or not",
        with_leaks.1.as_secs_f64() / with_leaks.0.as_secs_f64(),
        EXTRA + LEAKED
    );

    // Reap them once, scoped to this run: nothing else can be in scope.
    let scoped = Sweep::new(Scope::DeadOwners { run_id: Some(run_id.clone()) })
        .docker(DockerCheck::Off)
        .ledger_dir(ledger.path())
        .grace(GRACE);
    let start = Instant::now();
    let findings = scoped.find();
    let find_took = start.elapsed();
    assert_eq!(leak_pids(&findings, None), leaked_pids, "the scoped find sees exactly our leaks");
    let start = Instant::now();
    let report = findings.reap();
    let reap_took = start.elapsed();
    assert!(report.unchecked.is_empty(), "{:?}", report.unchecked);
    let failed: Vec<_> = report.leaks.iter().filter(|l| l.action != Action::Killed).collect();
    assert!(failed.is_empty(), "not killed: {failed:?}");
    leaked.forget_exited();
    assert_all_gone(&ids);
    println!(
        "reap of {LEAKED} leaks (SIGTERM, {} grace, SIGKILL): {} (its find: {})",
        ms(GRACE, 0),
        ms(reap_took, 2),
        ms(find_took, 2)
    );
}

/// Medians of the floor and of the sweep.
type Medians = (Duration, Duration);

/// Times the four variants in interleaved rounds (drift in machine load hits them all alike),
/// checking every sweep's findings and pgrep's count with `check`, and prints the table.
fn measure(title: &str, rounds: usize, ledger: &Path, pattern: &str, check: impl Fn(&Findings, usize)) -> Medians {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut floor = Samples::default();
    let mut sweep = Samples::default();
    let mut pgrep = Samples::default();
    let mut sysinfo = Samples::default();
    // Warm-up (page cache, dentries, the pgrep binary), checked too.
    std::hint::black_box(read_all(&mut buf));
    check(&find(ledger), pgrep_f(pattern));
    std::hint::black_box(sysinfo_refresh());
    for _ in 0..rounds {
        floor.push(timed(|| read_all(&mut buf)));
        let start = Instant::now();
        let findings = find(ledger);
        sweep.push(start.elapsed());
        let start = Instant::now();
        let listed = pgrep_f(pattern);
        pgrep.push(start.elapsed());
        check(&findings, listed);
        sysinfo.push(timed(sysinfo_refresh));
    }
    let (floor_median, sweep_median) = (floor.median(), sweep.median());
    println!("\n{title}");
    print_table(
        &mut [
            ("floor: cmdline+environ", &mut floor),
            ("reapkit sweep (find)", &mut sweep),
            ("pgrep -f", &mut pgrep),
            ("sysinfo full refresh", &mut sysinfo),
        ],
        &[("vs floor", "floor: cmdline+environ"), ("vs pgrep", "pgrep -f")],
        2,
    );
    (floor_median, sweep_median)
}

/// The floor: `cmdline` and `environ` of every pid in `/proc`, one reused buffer.
fn read_all(buf: &mut Vec<u8>) -> usize {
    let mut bytes = 0;
    for entry in std::fs::read_dir("/proc").expect("/proc is readable").flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        for file in ["cmdline", "environ"] {
            buf.clear();
            if let Ok(mut f) = File::open(format!("/proc/{pid}/{file}")) {
                bytes += f.read_to_end(buf).unwrap_or(0);
            }
        }
    }
    bytes
}

/// The machine-wide sweep (`reap --all`), minus Docker: every dead owner's leftovers, whatever
/// project they belong to (these have no ledger record), found only.
fn find(ledger: &Path) -> Findings {
    Sweep::new(Scope::dead_owners()).docker(DockerCheck::Off).ledger_dir(ledger).all_projects(true).find()
}

/// `pgrep -f <pattern>` as a subprocess (it only lists; nothing is killed): how many it listed.
fn pgrep_f(pattern: &str) -> usize {
    let out = Command::new("pgrep").args(["-f", pattern]).stdin(Stdio::null()).output().expect("pgrep runs");
    assert!(matches!(out.status.code(), Some(0 | 1)), "pgrep -f {pattern}: {out:?}");
    out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count()
}

/// A full `sysinfo` refresh, command lines and environments included. A fresh `System` every
/// time: what a one-shot CLI pays (a reused one would skip re-reading `cmd`/`environ`, which
/// `everything()` asks for only if not set yet, and so would not read what a sweep must read).
fn sysinfo_refresh() -> usize {
    let mut system = System::new().expect("sysinfo supports this OS");
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::everything())
}

/// The pids of the process leaks found, of run `run_id` only if given, sorted.
fn leak_pids(findings: &Findings, run_id: Option<&str>) -> Vec<i32> {
    let mut pids: Vec<i32> = findings
        .leaks()
        .iter()
        .filter(|l| run_id.is_none_or(|r| l.run_id.as_deref() == Some(r)))
        .filter_map(|l| l.pid)
        .collect();
    pids.sort_unstable();
    pids
}

fn verdict((floor, sweep): Medians) -> String {
    let ratio = sweep.as_secs_f64() / floor.as_secs_f64();
    format!("{ratio:.2}x ({} the 2x target)", if ratio <= 2.0 { "within" } else { "OVER" })
}

/// `sleep 3600` processes started by this bench: each killed by pid and reaped on drop, so
/// nothing is left behind, panics included (and SIGKILLed by the kernel if the bench itself
/// is killed: parent-death signal).
struct Sleepers {
    children: Vec<Child>,
}

impl Sleepers {
    /// `n` of them, with `env` as their only `REAPKIT_` variables.
    fn spawn(n: usize, env: &[(&str, &str)]) -> Sleepers {
        let mut sleepers = Sleepers { children: Vec::with_capacity(n) };
        let inherited: Vec<String> = std::env::vars().map(|(k, _)| k).filter(|k| k.starts_with("REAPKIT_")).collect();
        for _ in 0..n {
            let mut cmd = Command::new("sleep");
            cmd.arg("3600").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            for key in &inherited {
                cmd.env_remove(key);
            }
            cmd.envs(env.iter().copied());
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            // Pushed one by one: if a spawn fails, Drop ends the ones already started.
            sleepers.children.push(cmd.spawn().expect("`sleep` starts"));
        }
        sleepers
    }

    fn pids(&self) -> Vec<i32> {
        self.children.iter().map(|c| c.id() as i32).collect()
    }

    /// After a reap: drops every child that has exited, so that Drop never signals its pid
    /// (which, once reaped, may belong to someone else); panics if any is still running.
    fn forget_exited(&mut self) {
        self.children.retain_mut(|c| match c.try_wait() {
            Ok(Some(_)) => false,
            // The sweep reaped it already: we are its parent, so its `waitid` could.
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => false,
            _ => true,
        });
        let left: Vec<u32> = self.children.iter().map(Child::id).collect();
        assert!(left.is_empty(), "still running after the reap: {left:?}");
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        // All our own, never waited for yet, so their pids cannot have been recycled.
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}
