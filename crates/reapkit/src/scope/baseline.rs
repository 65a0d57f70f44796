//! Naming leaks: the patterns of `allow = [...]` and of the checked-in baseline of known leaks.
//!
//! A pattern is `<kind>:<glob>`, kind one of `fd`, `process`, `container`, `network`,
//! `volume`, and `*` in the glob matching any run of characters. A leak answers to several
//! names (an FD to its kind word and its target, a process to its program and its command
//! line, a container to its image and id), so `fd:pipe`, `fd:/tmp/*.log` and `process:node`
//! all work.
//!
//! The baseline file lists accepted leaks by test, one `<test> <pattern>` per line, `#` for
//! comments. It may only shrink: a leak it does not list fails the test, and an entry that
//! matches nothing any more fails it too, asking for the line to be deleted, so that a fixed
//! leak cannot come back unnoticed.

use std::path::{Path, PathBuf};


/// Where the macro looks for the baseline: `reapkit-leaks.txt` next to the crate's `Cargo.toml`.
pub const BASELINE_FILE: &str = "reapkit-leaks.txt";
/// Overrides the baseline file's path.
pub const ENV_BASELINE: &str = "REAPKIT_BASELINE";
/// A baseline larger than this is not read (a list of accepted leaks is a few lines).
const MAX_BASELINE_BYTES: u64 = 1 << 20;

/// What leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeakKind {
    /// A descriptor of the test process.
    Fd,
    /// A process: a child of the test process, or one carrying the test's marker.
    Process,
    Container,
    Network,
    Volume,
}

impl LeakKind {
    /// The word patterns use: `fd`, `process`, `container`, `network`, `volume`.
    pub fn word(self) -> &'static str {
        match self {
            LeakKind::Fd => "fd",
            LeakKind::Process => "process",
            LeakKind::Container => "container",
            LeakKind::Network => "network",
            LeakKind::Volume => "volume",
        }
    }

    pub(super) fn from_word(word: &str) -> Option<LeakKind> {
        [LeakKind::Fd, LeakKind::Process, LeakKind::Container, LeakKind::Network, LeakKind::Volume]
            .into_iter()
            .find(|k| k.word() == word)
    }
}

/// `<kind>:<glob>`: a name of leaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakPattern {
    kind: LeakKind,
    glob: String,
}

impl LeakPattern {
    /// Parses `fd:pipe`, `process:node`, `container:busybox*`, ...
    pub fn parse(text: &str) -> Result<LeakPattern, String> {
        let (kind, glob) = text.split_once(':').ok_or_else(|| format!("`{text}` has no `<kind>:`"))?;
        let kind = LeakKind::from_word(kind).ok_or_else(|| {
            format!("`{text}`: unknown kind `{kind}`; use one of fd, process, container, network, volume")
        })?;
        if glob.is_empty() {
            return Err(format!("`{text}` names nothing after `{}:`; use `*` for any", kind.word()));
        }
        Ok(LeakPattern { kind, glob: glob.to_owned() })
    }

    pub fn kind(&self) -> LeakKind {
        self.kind
    }

    /// Whether a leak of `kind` answering to `names` is one of these.
    pub fn matches<'a>(&self, kind: LeakKind, mut names: impl Iterator<Item = &'a str>) -> bool {
        self.kind == kind && names.any(|n| glob_matches(self.glob.as_bytes(), n.as_bytes()))
    }
}

impl std::fmt::Display for LeakPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.word(), self.glob)
    }
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob_matches(glob: &[u8], text: &[u8]) -> bool {
    match glob.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_matches(rest, &text[i..])),
        Some((c, rest)) => text.split_first().is_some_and(|(t, more)| t == c && glob_matches(rest, more)),
    }
}

/// One accepted leak of the baseline file.
#[derive(Debug, Clone)]
pub struct BaselineEntry {
    pub line: usize,
    pub pattern: LeakPattern,
}

/// The entries of the baseline file that name one test.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    pub path: PathBuf,
    pub entries: Vec<BaselineEntry>,
}

impl Baseline {
    /// The entries for `test` in the file at `REAPKIT_BASELINE`, else `default`. A missing
    /// file is an empty baseline; a malformed line is an error naming the file and the line.
    pub fn load(default: Option<&Path>, test: &str) -> Result<Baseline, String> {
        let path = match std::env::var_os(ENV_BASELINE) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => match default {
                Some(p) => p.to_path_buf(),
                None => return Ok(Baseline::default()),
            },
        };
        let text = match crate::os::safe_fs::read_project_file(&path, MAX_BASELINE_BYTES) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Baseline { path, entries: Vec::new() }),
            Err(e) => return Err(format!("the leak baseline {} cannot be read: {e}", path.display())),
        };
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: String| {
                format!("{}:{}: {why}. Each line is `<test name> <kind>:<pattern>`", path.display(), i + 1)
            };
            let (name, pattern) = line.split_once(char::is_whitespace).ok_or_else(|| bad("no pattern".into()))?;
            let pattern = LeakPattern::parse(pattern.trim()).map_err(bad)?;
            if name == test {
                entries.push(BaselineEntry { line: i + 1, pattern });
            }
        }
        Ok(Baseline { path, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_by_kind_and_glob() {
        let pipe = LeakPattern::parse("fd:pipe").unwrap();
        assert!(pipe.matches(LeakKind::Fd, ["pipe", "pipe:[123]"].into_iter()));
        assert!(!pipe.matches(LeakKind::Fd, ["socket", "socket:[9]"].into_iter()));
        assert!(!pipe.matches(LeakKind::Process, ["pipe"].into_iter()));
        let logs = LeakPattern::parse("fd:/tmp/*.log").unwrap();
        assert!(logs.matches(LeakKind::Fd, ["file", "/tmp/a/b.log"].into_iter()));
        assert!(!logs.matches(LeakKind::Fd, ["file", "/tmp/b.txt"].into_iter()));
        assert!(LeakPattern::parse("container:*").unwrap().matches(LeakKind::Container, ["x"].into_iter()));
        assert!(LeakPattern::parse("pipe").is_err());
        assert!(LeakPattern::parse("thread:x").unwrap_err().contains("unknown kind"));
        assert!(LeakPattern::parse("fd:").is_err());
    }

    #[test]
    fn the_baseline_keeps_the_lines_of_one_test_and_names_a_bad_line() {
        let dir = tempfile_dir();
        let file = dir.join(BASELINE_FILE);
        std::fs::write(&file, "# accepted\n\na::b fd:pipe\nc::d process:node\na::b   container:busybox\n").unwrap();
        let baseline = Baseline::load(Some(&file), "a::b").unwrap();
        let lines: Vec<(usize, String)> = baseline.entries.iter().map(|e| (e.line, e.pattern.to_string())).collect();
        assert_eq!(lines, [(3, "fd:pipe".to_owned()), (5, "container:busybox".to_owned())]);
        assert!(Baseline::load(Some(&dir.join("missing")), "a::b").unwrap().entries.is_empty());
        std::fs::write(&file, "a::b fd:pipe\nc::d\n").unwrap();
        let err = Baseline::load(Some(&file), "a::b").unwrap_err();
        assert!(err.contains(":2: no pattern"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reapkit-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
