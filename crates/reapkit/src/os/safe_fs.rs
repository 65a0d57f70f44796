//! Opening the files reapkit keeps beside other people's: records, locks, logs, the index, the
//! report. Anyone who can write one of those directories can put a FIFO, a symlink, a device
//! or a huge file where reapkit expects its own, so every open here follows the ledger's rules:
//! never follow a symlink (`O_NOFOLLOW`), never block (`O_NONBLOCK`: a FIFO without a writer
//! would hang the `open` itself, and with one every read), accept only a regular file of our
//! own uid, and read at most a bound. A file that breaks a rule is an error naming what it is,
//! so that the caller can say which file to delete.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The flags of every open here besides the access mode.
const FLAGS: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;

/// Opens `path` for reading, if it is a regular file of ours.
pub(crate) fn open_read(path: &Path) -> io::Result<File> {
    checked(std::fs::OpenOptions::new().read(true).custom_flags(FLAGS).open(path).map_err(named)?)
}

/// Reads at most `max` bytes of `path`, a regular file of ours; more is an error.
pub(crate) fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_read(path)?;
    let len = file.metadata()?.len();
    bounded(file, len, max)
}

/// The contents of `file` (`len` bytes long when opened), if at most `max`.
fn bounded(file: File, len: u64, max: u64) -> io::Result<Vec<u8>> {
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("it is {len} bytes long; at most {max} are read")));
    }
    let mut body = Vec::with_capacity(len as usize);
    // The size may change after the check: never read more than the bound.
    file.take(max + 1).read_to_end(&mut body)?;
    if body.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("it grew past {max} bytes while being read")));
    }
    Ok(body)
}

/// Reads at most `max` bytes of `path`, a regular file of anyone's (a checked-in file of the
/// user's project, which a symlink may name): never blocks, never a FIFO or device.
pub(crate) fn read_project_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is {}, not a regular file", kind(&meta.file_type())),
        ));
    }
    bounded(file, meta.len(), max)
}

/// Opens `path` for appending, creating it (mode 0600) if it is missing.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    let opened = std::fs::OpenOptions::new().append(true).create(true).mode(0o600).custom_flags(FLAGS).open(path);
    checked(opened.map_err(named)?)
}

/// Opens `path` read-write (for `flock`), creating it (mode 0600) if it is missing.
pub(crate) fn open_lock(path: &Path) -> io::Result<File> {
    let opened =
        std::fs::OpenOptions::new().read(true).write(true).create(true).mode(0o600).custom_flags(FLAGS).open(path);
    checked(opened.map_err(named)?)
}

/// Creates `path` anew (mode 0600), empty: whatever was there — a stale file of ours, or a
/// FIFO or symlink planted in its place — is unlinked first, and the new one is made with
/// `O_EXCL`, so that nothing but a fresh regular file is ever written to.
pub(crate) fn create_fresh(path: &Path) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let opened = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(FLAGS).open(path);
    opened.map_err(named)
}

/// Writes `body` to `path` atomically: a fresh temporary file beside it, then a rename, so that
/// a reader never sees half of it and no planted file is written through.
pub(crate) fn write_atomic(path: &Path, body: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = create_fresh(&tmp).and_then(|mut f| f.write_all(body)).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The file, if it is a regular one of ours; else an error saying what it is.
fn checked(file: File) -> io::Result<File> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is {}, not a regular file", kind(&meta.file_type())),
        ));
    }
    let uid = crate::os::procfs::my_uid();
    if meta.uid() != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("it belongs to uid {}, not to you (uid {uid})", meta.uid()),
        ));
    }
    Ok(file)
}

/// An `open` error in words: a symlink refused by `O_NOFOLLOW` says so, and a FIFO with no
/// writer (`ENXIO` for a non-blocking write open) says what it is.
fn named(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => io::Error::new(io::ErrorKind::InvalidData, "it is a symlink, not a regular file"),
        Some(libc::ENXIO) => io::Error::new(io::ErrorKind::InvalidData, "it is a FIFO or socket, not a regular file"),
        _ => match crate::os::fd_limit_hint(&e) {
            Some(hint) => io::Error::new(e.kind(), format!("{e}. {hint}")),
            None => e,
        },
    }
}

/// What a file that is not a regular one is, in words.
pub(crate) fn kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match () {
        _ if t.is_dir() => "a directory",
        _ if t.is_fifo() => "a FIFO",
        _ if t.is_socket() => "a socket",
        _ if t.is_char_device() || t.is_block_device() => "a device",
        _ if t.is_symlink() => "a symlink",
        _ => "not a file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_symlinks_and_directories_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        for path in [&fifo, &link] {
            assert!(open_read(path).is_err(), "{}", path.display());
            assert!(open_append(path).is_err(), "{}", path.display());
            assert!(open_lock(path).is_err(), "{}", path.display());
        }
        assert!(open_read(dir.path()).unwrap_err().to_string().contains("a directory"));
        assert!(open_read(&fifo).unwrap_err().to_string().contains("a FIFO"));
        assert!(open_read(&link).unwrap_err().to_string().contains("symlink"));
        // A planted FIFO where a fresh file is to be written is replaced, never written through.
        create_fresh(&fifo).unwrap();
        assert!(std::fs::symlink_metadata(&fifo).unwrap().is_file());
        write_atomic(&link, b"mine").unwrap();
        assert_eq!(std::fs::read(&link).unwrap(), b"mine");
        assert!(std::fs::read_to_string("/etc/passwd").unwrap() != "mine");
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 100]).unwrap();
        assert_eq!(read_bounded(&big, 100).unwrap().len(), 100);
        assert!(read_bounded(&big, 99).unwrap_err().to_string().contains("100 bytes"));
    }
}
