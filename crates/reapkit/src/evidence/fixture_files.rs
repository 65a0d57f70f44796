//! The files of shared fixtures in a ledger's `shared/` folder — `<key>.sock` (the keeper's),
//! `<key>.lock` (held while one starts), `<key>.log` (the keeper's stderr) — and the clearing of
//! what keepers that are gone left there: part of the ledger's contract, which the fixtures above
//! and every sweep share.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::os::safe_fs;

/// The files of one fixture in `<ledger>/shared/`.
#[derive(Debug)]
pub(crate) struct FixtureFiles {
    pub(crate) key: String,
    pub(crate) dir: PathBuf,
    pub(crate) sock: PathBuf,
    pub(crate) lock: PathBuf,
    pub(crate) log: PathBuf,
}

impl FixtureFiles {
    /// The files of fixture `key` in `dir` (a ledger's `shared/`).
    pub(crate) fn at(dir: &Path, key: &str) -> FixtureFiles {
        FixtureFiles {
            key: key.to_owned(),
            dir: dir.to_path_buf(),
            sock: dir.join(format!("{key}.sock")),
            lock: dir.join(format!("{key}.lock")),
            log: dir.join(format!("{key}.log")),
        }
    }
}

/// Clears what keepers that are gone left in `dir` (a ledger's `shared/`): a socket nobody
/// serves and its lock, unless a start holds the lock right now; a log once `keep_logs` old
/// (a failed start's log is what its error points at).
pub fn clear_stale(dir: &Path, keep_logs: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(key) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        let paths = FixtureFiles::at(dir, key);
        let served = UnixStream::connect(&paths.sock).is_ok();
        // Never blocks: a FIFO planted as a lock is not opened as one.
        let Ok(lock) = safe_fs::open_read(&paths.lock) else { continue };
        // SAFETY: flock on a valid fd we own; released when `lock` closes.
        let free = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if served || !free {
            continue;
        }
        let _ = std::fs::remove_file(&paths.sock);
        let old = |p: &Path| {
            std::fs::metadata(p).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() >= keep_logs)
        };
        if !paths.log.exists() || old(&paths.log) {
            let _ = std::fs::remove_file(&paths.log);
            let _ = std::fs::remove_file(&paths.lock);
        }
    }
}
