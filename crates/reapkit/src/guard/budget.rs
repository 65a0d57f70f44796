//! Resource budgets: a guarded process must stay within RSS, FDs, threads and descendants
//! across a workload — the numbers a `get_server_info` tool or a monitoring service shows.
//!
//! A leak that costs one descriptor per request passes every functional test and takes the
//! server down after a day in production ("Too many open files"). Growth over a baseline is
//! what gives it away, so limits are mostly relative: [`Limit::Flat`] after a warm-up catches
//! the first leaked descriptor, where an absolute ceiling would wait for the thousandth.
//!
//! Why sampling is cheap: a sample reads `/proc/<pid>/stat` (RSS and threads), the FD count
//! (`stat` of `/proc/<pid>/fd`) and the `children` files of the tree; it never lists FD
//! targets. Targets are listed once when the baseline is taken and once more on a violation,
//! so the error can name the descriptors opened in between.

use std::fmt;
use std::io;

use crate::error::{Error, Result};
use crate::os::fd_snapshot::FdSnapshot;
use crate::os::procfs::{self, ProcId};

/// How many opened descriptors or new descendants a violation report names.
const NAMED_AT_MOST: usize = 10;

/// A bound on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Never more than this, warm-up included: a ceiling known in advance (no children at all).
    AtMost(u64),
    /// Never more than the baseline: what a server that frees what each request took does.
    Flat,
    /// At most this much over the baseline: room for caches and allocators that level off.
    GrowthAtMost(u64),
}

impl Limit {
    /// The highest allowed value, given the baseline (`None` during warm-up: only an absolute
    /// ceiling can be checked before there is a baseline).
    fn ceiling(self, baseline: Option<u64>) -> Option<u64> {
        match self {
            Limit::AtMost(max) => Some(max),
            Limit::Flat => baseline,
            Limit::GrowthAtMost(growth) => baseline.map(|b| b.saturating_add(growth)),
        }
    }

    fn describe(self, metric: Metric) -> String {
        match self {
            Limit::AtMost(max) => format!("at most {}", metric.show(max)),
            Limit::Flat => "flat".to_owned(),
            Limit::GrowthAtMost(growth) => format!("growth at most {}", metric.show(growth)),
        }
    }
}

/// The four metrics, in the order of every report (indexes into the readings' arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    RssBytes,
    Fds,
    Threads,
    Descendants,
}

impl Metric {
    const ALL: [Metric; 4] = [Metric::RssBytes, Metric::Fds, Metric::Threads, Metric::Descendants];

    fn name(self) -> &'static str {
        match self {
            Metric::RssBytes => "rss_bytes",
            Metric::Fds => "fds",
            Metric::Threads => "threads",
            Metric::Descendants => "descendants",
        }
    }

    fn show(self, value: u64) -> String {
        match self {
            Metric::RssBytes => format!("{:.2} MiB", value as f64 / (1024.0 * 1024.0)),
            _ => value.to_string(),
        }
    }

    /// What to look at next, for the report.
    fn next_step(self) -> &'static str {
        match self {
            Metric::RssBytes => {
                "memory kept per request (an unbounded cache, a growing log or history): if it is start-up \
                 allocation that levels off, raise `warm_up` or use `GrowthAtMost`"
            }
            Metric::Fds => {
                "the server opens a descriptor per request and never closes it: look at the targets above \
                 (a file not closed, a socket not shut down, a child's pipe kept)"
            }
            Metric::Threads => {
                "a thread started per request and never joined, or a pool without a bound: look at \
                 /proc/<pid>/task/*/comm for their names while it runs"
            }
            Metric::Descendants => {
                "the server starts processes it never waits for or ends: look at the command lines above \
                 (zombies are counted too: a child exited but not reaped)"
            }
        }
    }
}

/// What a guarded process may use during a workload; check it with [`ProcessGuard::watch`].
///
/// Metrics without a limit are still measured and shown in the [`BudgetUsage`].
///
/// ```
/// use reapkit::{Budget, Limit};
/// let budget = Budget::new().fds(Limit::Flat).rss_bytes(Limit::GrowthAtMost(8 << 20)).warm_up(10);
/// # let _ = budget;
/// ```
///
/// [`ProcessGuard::watch`]: crate::ProcessGuard::watch
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budget {
    limits: [Option<Limit>; 4],
    warm_up: usize,
}

impl Budget {
    /// No limits, baseline at the start of the watch.
    pub fn new() -> Budget {
        Budget::default()
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(self, limit: Limit) -> Budget {
        self.with(Metric::RssBytes, limit)
    }

    /// Open file descriptors.
    pub fn fds(self, limit: Limit) -> Budget {
        self.with(Metric::Fds, limit)
    }

    /// Threads of the process itself.
    pub fn threads(self, limit: Limit) -> Budget {
        self.with(Metric::Threads, limit)
    }

    /// Processes below it, zombies included.
    pub fn descendants(self, limit: Limit) -> Budget {
        self.with(Metric::Descendants, limit)
    }

    /// Takes the baseline at sample `samples` rather than when the watch starts: the first
    /// requests load code, fill caches and open log files, which is not a leak.
    pub fn warm_up(mut self, samples: usize) -> Budget {
        self.warm_up = samples;
        self
    }

    fn with(mut self, metric: Metric, limit: Limit) -> Budget {
        self.limits[metric as usize] = Some(limit);
        self
    }
}

/// One cheap reading of the four metrics.
#[derive(Debug, Clone)]
struct Reading {
    values: [u64; 4],
    descendants: Vec<ProcId>,
}

/// The reading the relative limits compare against, with what it takes to name the difference.
#[derive(Debug)]
struct Baseline {
    reading: Reading,
    /// Listed only when FDs have a limit: the one up-front listing of targets.
    fds: Option<FdSnapshot>,
}

/// A running check of a [`Budget`] on one process, from [`ProcessGuard::watch`].
///
/// It holds the process's identity, not the guard, so the workload can use the guard (or the
/// `McpServer` around it) mutably in between samples. Sample `0` is the
/// reading taken when the watch starts; [`sample`](Self::sample) takes the next ones.
///
/// Errors: [`Error::BudgetExceeded`] when a limit is crossed (also by the reading that starts
/// the watch), or when the watch finishes before its warm-up is over, since then no relative
/// limit was ever checked. [`Error::Io`] with [`io::ErrorKind::NotFound`] when the process
/// exited (or is a zombie) during the watch, as [`ProcessGuard::info`] reports it; the guard
/// then has its exit status and stderr tail. Its pid is checked against its start time at
/// every reading, so a recycled pid is never measured.
///
/// [`ProcessGuard::watch`]: crate::ProcessGuard::watch
/// [`ProcessGuard::info`]: crate::ProcessGuard::info
#[derive(Debug)]
pub struct BudgetWatch {
    id: ProcId,
    program: String,
    budget: Budget,
    /// Readings taken after sample 0.
    samples: usize,
    baseline: Option<Baseline>,
    /// Highest values since the baseline.
    peaks: [u64; 4],
}

impl BudgetWatch {
    /// Takes sample 0 of `id`; it is the baseline unless the budget has a warm-up.
    pub(crate) fn start(id: ProcId, program: String, budget: Budget) -> Result<BudgetWatch> {
        let mut watch = BudgetWatch { id, program, budget, samples: 0, baseline: None, peaks: [0; 4] };
        watch.check()?;
        Ok(watch)
    }

    /// Takes one reading, keeps the peaks and checks the limits.
    pub fn sample(&mut self) -> Result<()> {
        self.samples += 1;
        self.check()
    }

    /// Takes a last sample and returns what the process used.
    pub fn finish(mut self) -> Result<BudgetUsage> {
        self.sample()?;
        let Some(baseline) = &self.baseline else {
            return Err(self.exceeded(format!(
                "  the watch ended after {} samples, before its warm-up of {} was over: nothing was compared with \
                 a baseline\n    next: sample once per request of a longer workload, or lower `warm_up`\n",
                self.samples, self.budget.warm_up
            )));
        };
        let [rss_bytes_baseline, fds_baseline, threads_baseline, descendants_baseline] = baseline.reading.values;
        let [rss_bytes_peak, fds_peak, threads_peak, descendants_peak] = self.peaks;
        Ok(BudgetUsage {
            program: self.program,
            pid: self.id.pid,
            samples: self.samples,
            budget: self.budget,
            rss_bytes_baseline,
            rss_bytes_peak,
            fds_baseline,
            fds_peak,
            threads_baseline,
            threads_peak,
            descendants_baseline,
            descendants_peak,
        })
    }

    fn check(&mut self) -> Result<()> {
        let reading = self.read()?;
        if self.baseline.is_none() && self.samples == self.budget.warm_up {
            let fds = match self.budget.limits[Metric::Fds as usize] {
                Some(_) => Some(FdSnapshot::of(self.id.pid).map_err(|e| self.unreadable(e))?),
                None => None,
            };
            self.peaks = reading.values;
            self.baseline = Some(Baseline { reading: reading.clone(), fds });
        }
        let baseline = self.baseline.as_ref().map(|b| &b.reading.values);
        if baseline.is_some() {
            for (peak, value) in self.peaks.iter_mut().zip(reading.values) {
                *peak = (*peak).max(value);
            }
        }
        let over: Vec<(Metric, Limit, u64)> = Metric::ALL
            .into_iter()
            .filter_map(|m| {
                let limit = self.budget.limits[m as usize]?;
                let ceiling = limit.ceiling(baseline.map(|b| b[m as usize]))?;
                (reading.values[m as usize] > ceiling).then_some((m, limit, ceiling))
            })
            .collect();
        if over.is_empty() {
            return Ok(());
        }
        let report = over.into_iter().map(|(m, limit, ceiling)| self.violation(m, limit, ceiling, &reading)).collect();
        Err(self.exceeded(report))
    }

    /// One reading, refused if the process is gone, a zombie or a recycled pid.
    fn read(&self) -> Result<Reading> {
        let usage = procfs::Usage::read(self.id).map_err(|e| self.unreadable(e))?;
        let values = [usage.rss_bytes, usage.fds as u64, usage.threads, usage.descendants.len() as u64];
        Ok(Reading { values, descendants: usage.descendants })
    }

    fn unreadable(&self, mut source: io::Error) -> Error {
        // A vanished /proc entry is an exited process, however the read noticed it.
        if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
            source = io::Error::new(io::ErrorKind::NotFound, "the process has exited");
        }
        Error::Io {
            context: format!(
                "watching the resource budget of `{}` (pid {}) at sample {}; its exit status and stderr tail are on \
                 the guard",
                self.program, self.id.pid, self.samples
            ),
            source,
        }
    }

    fn exceeded(&self, report: String) -> Error {
        Error::BudgetExceeded { program: self.program.clone(), pid: self.id.pid, report }
    }

    /// The report of one crossed limit: metric, value, limit, baseline, sample, evidence, next step.
    fn violation(&self, metric: Metric, limit: Limit, ceiling: u64, now: &Reading) -> String {
        let value = now.values[metric as usize];
        let baseline = match &self.baseline {
            Some(b) => {
                format!("baseline {} at sample {}", metric.show(b.reading.values[metric as usize]), self.budget.warm_up)
            }
            None => format!("during the warm-up of {} samples, no baseline yet", self.budget.warm_up),
        };
        let limit = match limit {
            Limit::AtMost(_) => limit.describe(metric),
            Limit::Flat | Limit::GrowthAtMost(_) => {
                format!("{}, so at most {}", limit.describe(metric), metric.show(ceiling))
            }
        };
        let mut out = format!(
            "  {}: {} at sample {}, over its limit ({limit}; {baseline})\n",
            metric.name(),
            metric.show(value),
            self.samples,
        );
        let evidence = match metric {
            Metric::Fds => self.fd_evidence(),
            Metric::Descendants => self.descendant_evidence(now),
            Metric::RssBytes | Metric::Threads => Vec::new(),
        };
        for line in evidence {
            out.push_str(&format!("    {line}\n"));
        }
        out.push_str(&format!("    next: {}\n", metric.next_step()));
        out
    }

    /// The descriptors opened since the baseline (all current ones during the warm-up).
    fn fd_evidence(&self) -> Vec<String> {
        let now = match FdSnapshot::of(self.id.pid) {
            Ok(now) => now,
            Err(e) => return vec![format!("(the descriptors could not be listed: {e})")],
        };
        let (title, fds) = match self.baseline.as_ref().and_then(|b| b.fds.as_ref()) {
            Some(before) => ("opened since the baseline", before.diff(&now).opened),
            None => ("open now", now.fds().to_vec()),
        };
        named(title, fds.iter().map(ToString::to_string).collect())
    }

    /// The descendants that were not there at the baseline (all of them during the warm-up).
    fn descendant_evidence(&self, now: &Reading) -> Vec<String> {
        let before = self.baseline.as_ref().map_or(&[][..], |b| &b.reading.descendants[..]);
        let title = if self.baseline.is_some() { "started since the baseline" } else { "running now" };
        let new = now
            .descendants
            .iter()
            .filter(|id| !before.contains(id))
            .map(|id| match procfs::cmdline(id.pid) {
                // Empty for a zombie, and for a child still in `exec` (its parent already saw
                // the spawn succeed when the close-on-exec pipe closed).
                command if command.is_empty() => {
                    format!("pid {} (no command line: a zombie, or still in exec)", id.pid)
                }
                command => format!("pid {} `{command}`", id.pid),
            })
            .collect();
        named(title, new)
    }
}

/// `title (n):` and the first [`NAMED_AT_MOST`] items, then how many more.
fn named(title: &str, items: Vec<String>) -> Vec<String> {
    let mut lines = vec![format!("{title} ({}):", items.len())];
    let more = items.len().saturating_sub(NAMED_AT_MOST);
    lines.extend(items.into_iter().take(NAMED_AT_MOST).map(|item| format!("  {item}")));
    if more > 0 {
        lines.push(format!("  and {more} more"));
    }
    lines
}

/// What a watched process used: per metric the baseline and the peak since, from
/// [`BudgetWatch::finish`]. `Display` prints it as a small table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetUsage {
    pub program: String,
    pub pid: i32,
    /// Readings taken after the one that started the watch, warm-up and last one included.
    pub samples: usize,
    /// The budget that held.
    pub budget: Budget,
    pub rss_bytes_baseline: u64,
    pub rss_bytes_peak: u64,
    pub fds_baseline: u64,
    pub fds_peak: u64,
    pub threads_baseline: u64,
    pub threads_peak: u64,
    pub descendants_baseline: u64,
    pub descendants_peak: u64,
}

impl fmt::Display for BudgetUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "resources of `{}` (pid {}) over {} samples, baseline at sample {}:",
            self.program, self.pid, self.samples, self.budget.warm_up
        )?;
        writeln!(f, "  {:<12} {:<22} {:>12} {:>12}", "metric", "limit", "baseline", "peak")?;
        let rows = [
            (self.rss_bytes_baseline, self.rss_bytes_peak),
            (self.fds_baseline, self.fds_peak),
            (self.threads_baseline, self.threads_peak),
            (self.descendants_baseline, self.descendants_peak),
        ];
        for (metric, (baseline, peak)) in Metric::ALL.into_iter().zip(rows) {
            let limit = self.budget.limits[metric as usize].map_or_else(|| "-".to_owned(), |l| l.describe(metric));
            writeln!(f, "  {:<12} {limit:<22} {:>12} {:>12}", metric.name(), metric.show(baseline), metric.show(peak))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::process::ProcessGuard;
    use std::process::Command;
    use std::time::Instant;

    /// A `sleep` that has finished starting: right after `exec` the dynamic loader is still
    /// mapping libc (RSS triples), so wait until it blocks in `nanosleep` (state `S`).
    fn sleeper() -> ProcessGuard {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let guard = ProcessGuard::spawn(cmd).expect("sleep starts");
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while procfs::Stat::read(guard.pid()).expect("sleep runs").state != b'S' {
            assert!(Instant::now() < deadline, "sleep did not block within 10 s");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        guard
    }

    #[test]
    fn limits_compare_with_the_baseline_once_there_is_one() {
        assert_eq!(Limit::AtMost(3).ceiling(None), Some(3));
        assert_eq!(Limit::AtMost(3).ceiling(Some(10)), Some(3));
        assert_eq!(Limit::Flat.ceiling(None), None);
        assert_eq!(Limit::Flat.ceiling(Some(7)), Some(7));
        assert_eq!(Limit::GrowthAtMost(2).ceiling(None), None);
        assert_eq!(Limit::GrowthAtMost(2).ceiling(Some(7)), Some(9));
        assert_eq!(Limit::GrowthAtMost(u64::MAX).ceiling(Some(7)), Some(u64::MAX));
        assert_eq!(Limit::GrowthAtMost(8 << 20).describe(Metric::RssBytes), "growth at most 8.00 MiB");
    }

    #[test]
    fn a_sleeping_process_stays_within_a_flat_budget() {
        let guard = sleeper();
        let budget = Budget::new()
            .rss_bytes(Limit::Flat)
            .fds(Limit::Flat)
            .threads(Limit::Flat)
            .descendants(Limit::AtMost(0))
            .warm_up(2);
        let mut watch = guard.watch(budget.clone()).expect("within budget at the start");
        let rounds = 1000;
        let started = Instant::now();
        for _ in 0..rounds {
            watch.sample().expect("a sleeping process does not grow");
        }
        let per_sample = started.elapsed() / rounds;
        let usage = watch.finish().expect("within budget");
        eprintln!("{usage}one sample: {:.1} µs", per_sample.as_secs_f64() * 1e6);
        assert_eq!(usage.samples, rounds as usize + 1);
        assert_eq!((usage.pid, &usage.budget), (guard.pid(), &budget));
        assert_eq!((usage.threads_baseline, usage.threads_peak), (1, 1));
        assert_eq!((usage.descendants_baseline, usage.descendants_peak), (0, 0));
        assert_eq!(usage.fds_peak, usage.fds_baseline);
        assert!(usage.rss_bytes_baseline > 0 && usage.rss_bytes_peak == usage.rss_bytes_baseline, "{usage}");
        assert!(usage.to_string().contains("fds          flat"), "{usage}");
    }

    #[test]
    fn an_absolute_limit_is_checked_from_the_first_reading() {
        let guard = sleeper();
        let err = guard.watch(Budget::new().threads(Limit::AtMost(0)).warm_up(5)).expect_err("sleep has a thread");
        let Error::BudgetExceeded { pid, report, .. } = &err else { panic!("not a budget error: {err}") };
        assert_eq!(*pid, guard.pid());
        assert!(report.contains("threads: 1 at sample 0"), "{err}");
        assert!(
            report.contains("at most 0") && report.contains("no baseline yet") && report.contains("next:"),
            "{err}"
        );
    }

    #[test]
    fn ending_before_the_warm_up_is_over_is_an_error() {
        let guard = sleeper();
        let watch = guard.watch(Budget::new().fds(Limit::Flat).warm_up(3)).expect("no absolute limit");
        let err = watch.finish().expect_err("only one sample");
        assert!(matches!(err, Error::BudgetExceeded { .. }) && err.to_string().contains("warm-up of 3"), "{err}");
    }

    #[test]
    fn an_exited_process_is_not_measured() {
        let guard = sleeper();
        let mut watch = guard.watch(Budget::new().fds(Limit::Flat)).expect("running");
        assert!(guard.shutdown().is_clean());
        let err = watch.sample().expect_err("the process is gone");
        let Error::Io { source, .. } = &err else { panic!("not an I/O error: {err}") };
        assert_eq!(source.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("at sample 1"), "{err}");
    }
}
