//! The ledger: one small JSON record per live resource, removed on clean teardown.
//!
//! What remains after a run is evidence: the sweep reads it to find leftovers whose owner
//! died, and to name the test that leaked them. Records are written atomically (temp file +
//! rename) so a reader never sees half a record, even if the writer is killed mid-write.
//!
//! A record is hostile input to its reader: anyone who can write the directory can put
//! anything there. It is read only as a regular file of our own, opened without following a
//! symlink and without blocking (a FIFO named `x.json` must not hang a sweep), at most
//! [`MAX_RECORD_BYTES`] long, and its ids are checked before they name a file or reach a
//! terminal. The owner it names is an [`OwnerId`]: a process on one boot, in one PID namespace.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::evidence::identity::OwnerId;
use crate::evidence::ownership::{self, Owner, ENV_LEDGER_DIR};
use crate::os::procfs::ProcId;

/// The record format this reapkit writes and reads: 2 added the owner's boot and namespace.
pub const RECORD_VERSION: u32 = 2;
/// No record of ours is near this size; a larger file is not read at all.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// One resource in the ledger. Field names are part of the on-disk contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Format version of this record ([`RECORD_VERSION`]).
    pub version: u32,
    /// The guard's id; also the record's file name (`<guard>.json`).
    pub guard: String,
    pub run_id: String,
    /// The owning test process, with its boot and PID namespace. A process named in
    /// [`Resource::Process`] has its pid in that same namespace.
    pub owner: OwnerId,
    pub owner_host: String,
    pub test: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// What the record is about; serialized flat, with `kind` naming the variant.
    #[serde(flatten)]
    pub resource: Resource,
    /// The `reapkit run`/`wrap` the owner ran under (`REAPKIT_SUPERVISOR`), if any: a label like
    /// `reapkit.supervisor`, which lets a supervisor tell its own run's records from another
    /// job's with the same run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<OwnerId>,
    /// Set by a watchdog that reaped the resource after its owner died: the record then stays
    /// as evidence until a sweep reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaped: Option<Reaped>,
}

/// Who reaped a leaked resource, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reaped {
    /// `watchdog`, or `keeper` for a tree whose keeper ended it when the owner died.
    pub by: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// The guarded resource of a [`Record`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Resource {
    /// A process tree: its leader, by pid and start time, the group it leads, and how it is
    /// held (absent in records of escapees a watchdog wrote).
    Process {
        process: ProcId,
        pgid: i32,
        command: Vec<String>,
        cwd: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contained: Option<Contained>,
    },
    /// A container, and the networks created for it, on the engine at `docker_host`.
    Container { id: String, image: String, docker_host: String, networks: Vec<String> },
}

impl Record {
    /// A record of `resource`, owned by this process and its run, created now.
    pub fn new(guard: String, test: String, resource: Resource) -> Record {
        let owner = Owner::current();
        Record {
            version: RECORD_VERSION,
            guard,
            run_id: owner.run_id.clone(),
            owner: owner.id.clone(),
            owner_host: owner.host.clone(),
            test,
            created: now_rfc3339(),
            resource,
            supervisor: ownership::supervisor(),
            reaped: None,
        }
    }

    /// Checks what a parser cannot: the version, and that the ids may name a file and reach a
    /// terminal (`file_stem`: the name it was read from, which must be its guard's).
    pub fn validate(&self, file_stem: Option<&str>) -> Result<(), String> {
        if self.version != RECORD_VERSION {
            return Err(format!(
                "record version {} (this reapkit reads {RECORD_VERSION}; version 1 has no boot or namespace \
                 identity and proves nothing)",
                self.version
            ));
        }
        let bad = |what: &str, value: &str| format!("its {what} {:?} is malformed", crate::evidence::escape::evidence(value));
        if !ownership::valid_id(&self.guard) {
            return Err(bad("guard id", &self.guard));
        }
        if file_stem.is_some_and(|stem| stem != self.guard) {
            return Err(format!("it names guard {:?}, not the one of its file name", self.guard));
        }
        if !ownership::valid_id(&self.run_id) {
            return Err(bad("run id", &self.run_id));
        }
        if !ownership::valid_test_name(&self.test) {
            return Err(bad("test name", &self.test));
        }
        if !ownership::valid_test_name(&self.owner_host) {
            return Err(bad("host name", &self.owner_host));
        }
        Ok(())
    }
}

/// A record on disk; removing it is the last step of a clean teardown.
#[derive(Debug)]
pub struct Entry {
    path: PathBuf,
}

impl Entry {
    /// Writes `record` atomically into the ledger directory `dir`. A record whose ids could
    /// not be read back (a guard id with `/../`) is refused: it would land outside `dir`.
    pub fn write(dir: &Path, record: &Record) -> Result<Entry, Error> {
        let ledger_err = |source| Error::Ledger { dir: dir.to_path_buf(), source };
        record.validate(None).map_err(|e| ledger_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let path = dir.join(format!("{}.json", record.guard));
        let body = serde_json::to_vec(record).map_err(|e| ledger_err(e.into()))?;
        crate::os::safe_fs::write_atomic(&path, &body).map_err(ledger_err)?;
        Ok(Entry { path })
    }

    /// The record at `path` (one returned by [`read_dir`]).
    pub fn at(path: PathBuf) -> Entry {
        Entry { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the record: the resource is gone.
    pub fn remove(self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// How a recorded process tree is held: the proof a sweep can use when its owner is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "lowercase")]
pub enum Contained {
    /// A cgroup of its own, and its id when the guard made it (absent in records of reapkit
    /// before 0.2, which prove nothing about the cgroup).
    Cgroup {
        cgroup: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A keeper (pid, start time): its descendants are the tree.
    Keeper { keeper: ProcId },
    /// Marker only.
    Marker,
}

/// What a ledger directory holds: the records that parse, and why the others do not.
#[derive(Debug, Default)]
pub struct Contents {
    pub records: Vec<(PathBuf, Record)>,
    /// Records that could not be read or parsed (truncated, corrupt, foreign), with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Reads every record in `dir`. A missing directory holds nothing; a directory that cannot be
/// listed, or that belongs to another user (whose records we must not act on), is an error.
/// One bad record never hides the others: it is listed in [`Contents::unreadable`].
pub fn read_dir(dir: &Path) -> Result<Contents, Error> {
    use std::os::unix::fs::MetadataExt;
    let ledger_err = |source| Error::Ledger { dir: dir.to_path_buf(), source };
    let meta = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::default()),
        other => other.map_err(ledger_err)?,
    };
    let uid = crate::os::procfs::my_uid();
    if meta.uid() != uid {
        return Err(ledger_err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("it belongs to uid {}, not to you (uid {uid}); its records are not yours to act on", meta.uid()),
        )));
    }
    let mut contents = Contents::default();
    for entry in std::fs::read_dir(dir).map_err(ledger_err)? {
        let path = match entry {
            Ok(e) => e.path(),
            Err(e) => return Err(ledger_err(e)),
        };
        let is_record = path.extension().is_some_and(|x| x == "json")
            && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !is_record {
            continue;
        }
        match read_record(&path) {
            Ok(record) => contents.records.push((path, record)),
            // Removed between the listing and the read: a guard's clean teardown, not a problem.
            Err(_) if std::fs::symlink_metadata(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {}
            Err(reason) => contents.unreadable.push((path, reason)),
        }
    }
    contents.records.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(contents)
}

/// Reads one record as hostile input: a regular file of ours (no FIFO, device or symlink; opened
/// non-blocking, so that even a FIFO swapped in after the check cannot block), bounded in size.
pub(crate) fn read_record(path: &Path) -> Result<Record, String> {
    let body = crate::os::safe_fs::read_bounded(path, MAX_RECORD_BYTES).map_err(|e| e.to_string())?;
    let record: Record = serde_json::from_slice(&body).map_err(|e| format!("not a reapkit record: {e}"))?;
    let stem = path.file_stem().and_then(|s| s.to_str());
    record.validate(stem).map_err(|e| format!("not a valid reapkit record: {e}"))?;
    Ok(record)
}

/// The ledger directory `chosen`, or by default `REAPKIT_LEDGER_DIR`, else `<target dir>/reapkit`,
/// created and checked for writing before any child is spawned.
pub fn resolve(chosen: Option<&Path>) -> Result<PathBuf, Error> {
    match chosen {
        Some(dir) => {
            prepare(dir).map(|()| dir.to_path_buf()).map_err(|source| Error::Ledger { dir: dir.to_path_buf(), source })
        }
        None => default().map(Path::to_path_buf),
    }
}

/// The default directory, resolved once. The first failure is kept, so every guard of the
/// process reports the same clear error instead of retrying a directory that cannot work.
pub fn default() -> Result<&'static Path, Error> {
    static DIR: OnceLock<Result<PathBuf, (PathBuf, std::io::ErrorKind, String)>> = OnceLock::new();
    let resolved = DIR.get_or_init(|| {
        let dir = default_dir();
        prepare(&dir).map(|()| dir.clone()).map_err(|e| (dir, e.kind(), e.to_string()))
    });
    match resolved {
        Ok(dir) => Ok(dir),
        Err((dir, kind, msg)) => {
            Err(Error::Ledger { dir: dir.clone(), source: std::io::Error::new(*kind, msg.clone()) })
        }
    }
}

/// The default ledger directory, without creating it: `REAPKIT_LEDGER_DIR`, else
/// `<target dir>/reapkit`, else `reapkit-<uid>` in the temporary directory.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_LEDGER_DIR).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    target_dir().map_or_else(
        || std::env::temp_dir().join(format!("reapkit-{}", crate::os::procfs::my_uid())),
        |t| t.join("reapkit"),
    )
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else the nearest ancestor of the running
/// executable that holds cargo's `CACHEDIR.TAG` (test binaries live in `target/<profile>/deps`),
/// else the `target` folder of the working directory or one of its ancestors (an installed
/// `reapkit` run inside a project).
pub fn target_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let is_target = |dir: &Path| dir.join("CACHEDIR.TAG").is_file();
    let exe = std::env::current_exe().ok();
    if let Some(dir) = exe.as_deref().and_then(|e| e.ancestors().skip(1).find(|a| is_target(a))) {
        return Some(dir.to_path_buf());
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors().map(|a| a.join("target")).find(|t| is_target(t))
}

/// Creates the directory and proves it is writable by us, before any child is spawned; then
/// notes it in this user's index, so that sweeps run from anywhere find it.
fn prepare(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    drop(crate::os::safe_fs::create_fresh(&probe)?);
    std::fs::remove_file(&probe)?;
    index::note(dir);
    Ok(())
}

/// This user's index of ledger directories: every directory a guard of this user has written
/// records to, so that `reapkit reap` and `ps` find the evidence wherever they are run from
/// (another directory, another target dir), without guessing from the working directory.
///
/// One absolute path per line in `$XDG_STATE_HOME/reapkit/ledgers` (else
/// `~/.local/state/reapkit/ledgers`, else `reapkit-<uid>/ledgers` in the temporary directory),
/// appended with `O_APPEND` (one short write: atomic between processes). Hostile input like
/// everything else read: a regular file of ours, bounded, absolute paths only; directories
/// that are gone are skipped (and dropped when the file is rewritten).
pub mod index {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// More than any user's ledgers would ever list: past it the file is rewritten, pruned.
    const MAX_INDEX_BYTES: u64 = 1 << 20;

    /// The index file.
    pub fn path() -> PathBuf {
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".local/state")));
        match state {
            Some(dir) if dir.is_absolute() => dir.join("reapkit/ledgers"),
            _ => std::env::temp_dir().join(format!("reapkit-{}", crate::os::procfs::my_uid())).join("ledgers"),
        }
    }

    /// Adds `dir` to the index, once per process; best effort (the ledger works without it).
    pub(crate) fn note(dir: &Path) {
        static NOTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
        let Ok(dir) = std::path::absolute(dir) else { return };
        let mut noted = NOTED.lock().unwrap_or_else(|p| p.into_inner());
        if noted.contains(&dir) {
            return;
        }
        noted.push(dir.clone());
        if read().contains(&dir) {
            return;
        }
        let file = path();
        let appended = file.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            let mut line = std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()).to_vec();
            line.push(b'\n');
            crate::os::safe_fs::open_append(&file)?.write_all(&line)
        });
        if appended.is_ok() && std::fs::metadata(&file).is_ok_and(|m| m.len() > MAX_INDEX_BYTES) {
            prune();
        }
    }

    /// The ledger directories the index lists that still exist and are ours, in order.
    pub fn read() -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in listed() {
            let ours = std::fs::metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == crate::os::procfs::my_uid());
            if ours && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// Every absolute path the file lists, as read: a regular file of ours, at most
    /// `MAX_INDEX_BYTES`, opened without following a symlink or blocking.
    fn listed() -> Vec<PathBuf> {
        let Ok(bytes) = crate::os::safe_fs::read_bounded(&path(), MAX_INDEX_BYTES) else { return Vec::new() };
        bytes
            .split(|&b| b == b'\n')
            .filter(|line| line.first() == Some(&b'/'))
            .map(|line| PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(line)))
            .collect()
    }

    /// Rewrites the file with only the directories that still exist (temp + rename).
    fn prune() {
        let mut body = Vec::new();
        for dir in read() {
            body.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()));
            body.push(b'\n');
        }
        let _ = crate::os::safe_fs::write_atomic(&path(), &body);
    }
}

/// Now, as RFC 3339 in UTC with seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
