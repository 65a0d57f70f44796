//! What a sweep found and did, in the three forms users read it: a table for people, one JSON
//! object for scripts, `::error` annotations for GitHub Actions.

use std::io::{self, Write};

use serde::Serialize;

use crate::evidence::escape::evidence;
use crate::guard::listening::Listener;
use crate::os::procfs::ExeState;
use crate::evidence::run_stats::RunStats;

/// Nothing leaked (and everything could be checked).
pub const EXIT_CLEAN: i32 = 0;
/// Leaks were found: reaped, or listed under `--dry-run`.
pub const EXIT_LEAKS: i32 = 1;
/// Something could not be checked (an unreachable engine, an unreadable ledger): the answer is
/// incomplete, whatever else was found. Wins over [`EXIT_LEAKS`], because the fix differs.
pub const EXIT_UNCHECKED: i32 = 2;

/// What kind of resource leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakKind {
    Process,
    Container,
    Network,
    Volume,
}

/// The proof that made it ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FoundBy {
    /// Its environment carries the reapkit markers.
    Marker,
    /// A ledger record names it (pid and start time, or container id).
    Ledger,
    /// It is a descendant of a proven leftover, or of the supervisor.
    Descendant,
    /// It is a member of its guard's cgroup: the kernel kept it there.
    Cgroup,
    /// It is below its guard's keeper: the kernel re-parented it there.
    Keeper,
    /// Docker labels `reapkit.*`.
    Label,
    /// The user's `--match` pattern (processes started without reapkit).
    Match,
    /// A watchdog reaped it when its owner died; its record is the evidence.
    Watchdog,
}

/// How the resource is doing, for `reapkit ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Alive, its owner too.
    Running,
    /// Alive, its owner gone: a leak.
    Orphaned,
    /// Alive; whether its owner lives cannot be told from here (another PID namespace or host).
    OwnerUnknown,
    /// Exited, not yet reaped by its parent.
    Zombie,
    /// Runs a binary that was rebuilt or deleted since it started: it serves stale code.
    StaleBinary,
    /// No longer exists (reaped by a watchdog; only its record is left).
    Gone,
}

/// What the sweep did with a leak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Found; nothing done yet (`--dry-run`, or evidence printed before reaping).
    WouldReap,
    /// Ended by SIGTERM/SIGKILL.
    Killed,
    /// Removed from the engine (containers with their anonymous volumes).
    Removed,
    /// It was already gone when the sweep came to end it.
    AlreadyGone,
    /// A watchdog had reaped it; the sweep reports it and clears the record.
    ReapedByWatchdog,
    /// Ending it failed; `detail` says why.
    Failed,
    /// Only listed (`reapkit ps`).
    Listed,
}

/// One leaked resource and the evidence for it.
#[derive(Debug, Clone, Serialize)]
pub struct Leak {
    pub kind: LeakKind,
    /// The test that owned it (`REAPKIT_TEST`, the `reapkit.test` label, the record).
    pub test: Option<String>,
    pub run_id: Option<String>,
    /// Seconds since it started (processes) or was created (Docker objects).
    pub age_s: Option<u64>,
    pub action: Action,
    pub found_by: FoundBy,
    pub health: Health,
    pub pid: Option<i32>,
    /// Container id, network id or volume name.
    pub id: Option<String>,
    /// `<pid>:<starttime>` of the process that owned it.
    pub owner: Option<String>,
    pub guard: Option<String>,
    /// Command line (processes) or image and command (containers).
    pub command: Option<String>,
    pub cwd: Option<String>,
    pub rss_bytes: Option<u64>,
    pub fds: Option<usize>,
    pub threads: Option<u64>,
    /// Whether the executable was replaced or deleted since the process started.
    pub exe: Option<ExeState>,
    /// Why an action failed, or other facts worth a line.
    pub detail: Option<String>,
    /// The sockets it listened on when found (processes): which leftover holds which port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listening: Vec<Listener>,
}

impl Leak {
    /// The identifier people look for: pid or short container id.
    pub fn ident(&self) -> String {
        match (self.pid, &self.id) {
            (Some(pid), _) => pid.to_string(),
            (None, Some(id)) if self.kind == LeakKind::Container => id.chars().take(12).collect(),
            (None, Some(id)) => id.clone(),
            (None, None) => "?".into(),
        }
    }

    /// `listening on tcp 127.0.0.1:8080, unix /tmp/s`, if it listened on anything.
    pub fn listening_words(&self) -> Option<String> {
        crate::guard::listening::words(&self.listening)
    }

    /// One line of prose: what it is, whose it was, what was done. Every piece of evidence in
    /// it is escaped: it is one line, whatever the leftover's command line holds.
    pub fn summary(&self) -> String {
        let mut s = format!("{:?} {}", self.kind, evidence(&self.ident())).to_lowercase();
        if let Some(cmd) = &self.command {
            s.push_str(&format!(" `{}`", truncate(&evidence(cmd), 80)));
        }
        s.push_str(&format!(" from test {}", evidence(self.test.as_deref().unwrap_or("<unknown>"))));
        if let Some(run) = &self.run_id {
            s.push_str(&format!(" (run {})", evidence(run)));
        }
        if let Some(age) = self.age_s {
            s.push_str(&format!(", {}", age_words(age)));
        }
        if let Some(on) = self.listening_words() {
            s.push_str(&format!(", {on}"));
        }
        s.push_str(&format!(": {}", action_words(&self.action)));
        if let Some(detail) = &self.detail {
            s.push_str(&format!(" ({})", evidence(detail)));
        }
        s
    }
}

/// The outcome of a sweep.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub version: u32,
    pub dry_run: bool,
    pub leaks: Vec<Leak>,
    /// What could not be checked, each with the cause and the fix.
    pub unchecked: Vec<String>,
    /// Facts that are not failures (stale records cleared, engines not configured).
    pub notes: Vec<String>,
    pub exit_code: i32,
    /// What the guards of the run in scope did (`reap --run-id`, `run`, `wrap`), if it logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<RunStats>,
}

impl Report {
    pub(crate) fn new(dry_run: bool, leaks: Vec<Leak>, unchecked: Vec<String>, notes: Vec<String>) -> Report {
        let exit_code = if !unchecked.is_empty() {
            EXIT_UNCHECKED
        } else if leaks.is_empty() {
            EXIT_CLEAN
        } else {
            EXIT_LEAKS
        };
        Report { version: 1, dry_run, leaks, unchecked, notes, exit_code, stats: None }
    }

    /// The report as one JSON object (`leaks`, `unchecked`, `notes`, `exit_code`).
    pub(crate) fn with_stats(mut self, stats: Option<RunStats>) -> Report {
        self.stats = stats;
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Writes the JSON report to `path` atomically (a fresh file beside it, then a rename): a
    /// reader, or a sweep killed half way, never sees half a report, and a FIFO or symlink
    /// planted at either name is replaced, never written through.
    pub fn write_file(&self, path: &std::path::Path) -> io::Result<()> {
        crate::os::safe_fs::write_atomic(path, self.to_json().as_bytes())
    }

    /// GitHub Actions workflow commands: one `::error` per leak and per unchecked part.
    pub fn write_github_annotations(&self, out: &mut impl Write) -> io::Result<()> {
        for leak in &self.leaks {
            writeln!(out, "::error title=reapkit: leaked {:?}::{}", leak.kind, escape_annotation(&leak.summary()))?;
        }
        for line in &self.unchecked {
            writeln!(out, "::error title=reapkit: could not check::{}", escape_annotation(&evidence(line)))?;
        }
        Ok(())
    }
}

/// Which table to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// What `reap` did: kind, id, age, action, test, command — 100 columns.
    Actions,
    /// What `ps` lists: kind, id, age, health, test, command — 100 columns.
    Health,
    /// Everything: RSS, FDs, threads, binary, owner, working directory too (`--wide`).
    Wide,
}

/// The width the compact tables keep to.
const TABLE_WIDTH: usize = 100;

/// The evidence table for `reap`: one row per leak, at most 100 columns ([`Columns::Actions`]).
pub fn write_table(out: &mut impl Write, leaks: &[Leak]) -> io::Result<()> {
    write_columns(out, leaks, Columns::Actions)
}

/// One row per leak, in the chosen [`Columns`]. Every cell is escaped
/// ([`crate::evidence::escape::evidence`]): a row is one line and starts with the leak's kind; a detail,
/// if any, goes on the next line.
pub fn write_columns(out: &mut impl Write, leaks: &[Leak], columns: Columns) -> io::Result<()> {
    if leaks.is_empty() {
        return writeln!(out, "no leaks");
    }
    let dash = || "-".to_owned();
    let kind = |l: &Leak| format!("{:?}", l.kind).to_lowercase();
    let command = |l: &Leak| evidence(l.command.as_deref().unwrap_or("-")).into_owned();
    match columns {
        Columns::Actions | Columns::Health => {
            let middle = if columns == Columns::Actions { "ACTION" } else { "HEALTH" };
            let head = format!("{:<9} {:<12} {:>5} {:<18} {:<24} ", "KIND", "PID/ID", "AGE", middle, "TEST");
            writeln!(out, "{head}COMMAND")?;
            let room = TABLE_WIDTH - head.chars().count();
            for l in leaks {
                let status = if columns == Columns::Actions { words(&l.action) } else { words(&l.health) };
                let ident = evidence(&l.ident()).into_owned();
                let test = evidence(l.test.as_deref().unwrap_or("-")).into_owned();
                let command = command(l);
                writeln!(
                    out,
                    "{:<9} {:<12} {:>5} {:<18} {:<24} {}",
                    kind(l),
                    truncate(&ident, 12),
                    l.age_s.map_or_else(dash, age_short),
                    status,
                    truncate(&test, 24),
                    truncate(&command, room),
                )?;
                // A cell cut to fit is shown whole below its row: the identifying fields are
                // what a reader of a CI log searches for.
                let cut = [("id", &ident, 12), ("test", &test, 24), ("command", &command, room)]
                    .into_iter()
                    .filter(|(_, value, width)| value.chars().count() > *width)
                    .map(|(name, value, _)| format!("{name}: {value}"));
                let exe = match l.exe {
                    Some(ExeState::Replaced) => {
                        Some("stale-binary: its binary was rebuilt after it started".to_owned())
                    }
                    Some(ExeState::Deleted) => Some("stale-binary: its binary was deleted after it started".to_owned()),
                    _ => None,
                };
                let listening = l.listening_words();
                let details = l.detail.iter().chain(&exe).chain(&listening).map(|d| evidence(d).into_owned());
                for detail in cut.chain(details) {
                    write_continued(out, &detail)?;
                }
            }
        }
        Columns::Wide => {
            writeln!(
                out,
                "{:<9} {:<12} {:>6} {:<12} {:>8} {:>4} {:>4} {:<8} {:<18} {:<16} {:<40} COMMAND (CWD)",
                "KIND", "PID/ID", "AGE", "HEALTH", "RSS", "FDS", "THR", "EXE", "ACTION", "OWNER", "TEST"
            )?;
            for l in leaks {
                writeln!(
                    out,
                    "{:<9} {:<12} {:>6} {:<12} {:>8} {:>4} {:>4} {:<8} {:<18} {:<16} {:<40} {}{}",
                    kind(l),
                    evidence(&l.ident()),
                    l.age_s.map_or_else(dash, age_short),
                    words(&l.health),
                    l.rss_bytes.map_or_else(dash, |b| format!("{:.1}M", b as f64 / 1048576.0)),
                    l.fds.map_or_else(dash, |n| n.to_string()),
                    l.threads.map_or_else(dash, |n| n.to_string()),
                    l.exe.map_or_else(dash, |e| words(&e)),
                    words(&l.action),
                    evidence(l.owner.as_deref().map_or("-", short_owner)),
                    evidence(l.test.as_deref().unwrap_or("-")),
                    command(l),
                    l.cwd.as_ref().map_or_else(String::new, |c| format!("  (in {})", evidence(c))),
                )?;
                for detail in l.detail.iter().chain(&l.listening_words()) {
                    writeln!(out, "{:<9} └ {}", "", evidence(detail))?;
                }
            }
        }
    }
    Ok(())
}

/// A line below a row, `└ ` and `text`, wrapped at [`TABLE_WIDTH`] onto further lines
/// rather than cut.
fn write_continued(out: &mut impl Write, text: &str) -> io::Result<()> {
    let chars: Vec<char> = text.chars().collect();
    let width = TABLE_WIDTH - 12;
    for (i, line) in chars.chunks(width).enumerate() {
        let mark = if i == 0 { "└" } else { " " };
        writeln!(out, "{:<9} {mark} {}", "", line.iter().collect::<String>())?;
    }
    Ok(())
}

/// `<pid>:<starttime>` of an owner id, for a table column (the JSON has the whole id).
fn short_owner(owner: &str) -> &str {
    owner.match_indices(':').nth(1).map_or(owner, |(i, _)| &owner[..i])
}

/// A serde enum's kebab-case name, as the JSON says it.
pub(crate) fn words(value: &impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

pub(crate) fn action_words(action: &Action) -> String {
    words(action).replace('-', " ")
}

fn age_short(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn age_words(secs: u64) -> String {
    format!("{} old", age_short(secs))
}

fn truncate(s: &str, max: usize) -> String {
    if max == 0 {
        return String::new();
    }
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

/// Workflow commands end at a newline and treat `%` specially.
fn escape_annotation(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(kind: LeakKind) -> Leak {
        Leak {
            kind,
            test: Some("suite::leaks_a_server".into()),
            run_id: Some("run-1".into()),
            age_s: Some(42),
            action: Action::Killed,
            found_by: FoundBy::Marker,
            health: Health::Orphaned,
            pid: Some(4242),
            id: None,
            owner: Some("100:5".into()),
            guard: Some("g100-5-1".into()),
            command: Some("node server.js".into()),
            cwd: Some("/work".into()),
            rss_bytes: Some(1 << 20),
            fds: Some(12),
            threads: Some(3),
            exe: Some(ExeState::Replaced),
            detail: None,
            listening: Vec::new(),
        }
    }

    #[test]
    fn exit_code_prefers_unchecked_over_leaks() {
        assert_eq!(Report::new(false, vec![], vec![], vec![]).exit_code, EXIT_CLEAN);
        assert_eq!(Report::new(false, vec![leak(LeakKind::Process)], vec![], vec![]).exit_code, EXIT_LEAKS);
        assert_eq!(
            Report::new(false, vec![leak(LeakKind::Process)], vec!["x".into()], vec![]).exit_code,
            EXIT_UNCHECKED
        );
    }

    #[test]
    fn json_has_the_contract_fields() {
        let json: serde_json::Value =
            serde_json::from_str(&Report::new(true, vec![leak(LeakKind::Process)], vec![], vec![]).to_json()).unwrap();
        let first = &json["leaks"][0];
        for field in ["kind", "test", "run_id", "age_s", "action"] {
            assert!(!first[field].is_null(), "{field} missing in {first}");
        }
        assert_eq!(first["kind"], "process");
        assert_eq!(first["action"], "killed");
        assert_eq!(first["exe"], "replaced");
    }

    #[test]
    fn annotations_name_the_test_on_one_line() {
        let mut out = Vec::new();
        let mut l = leak(LeakKind::Container);
        l.detail = Some("line1\nline2".into());
        Report::new(false, vec![l], vec![], vec![]).write_github_annotations(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("::error title=reapkit: leaked Container::"), "{text}");
        assert!(text.contains("suite::leaks_a_server") && text.contains("line1\\nline2"), "{text}");
    }

    #[test]
    fn hostile_evidence_cannot_start_a_line_of_the_table_or_an_annotation() {
        let mut l = leak(LeakKind::Process);
        l.command = Some("sleep 1\n::add-mask::secret\n::stop-commands::x".into());
        l.test = Some("t\r\n::error::forged".into());
        l.cwd = Some("/tmp/\x1b[2J".into());
        l.detail = Some("d\n::warning::x".into());
        let mut table = Vec::new();
        write_table(&mut table, std::slice::from_ref(&l)).unwrap();
        let mut notes = Vec::new();
        let report = Report::new(false, vec![l], vec!["u\n::error::forged".into()], vec![]);
        report.write_github_annotations(&mut notes).unwrap();
        for text in [String::from_utf8(table).unwrap(), String::from_utf8(notes).unwrap(), report.leaks[0].summary()] {
            for line in text.lines() {
                assert!(!line.trim_start().starts_with("::") || line.starts_with("::error title=reapkit"), "{line}");
                assert!(!line.contains('\x1b'), "{line}");
            }
        }
    }
}
