//! Drains a child's stderr into a bounded ring in the background.
//!
//! Why: a pipe holds 64 KiB; a chatty child that nobody reads blocks forever on its next
//! write, which looks exactly like a hung server. Draining keeps it running, and the ring
//! keeps the tail for error messages ("exited with status 1; stderr: ...").
//! The thread stops on EOF or when told to, so it never outlives its guard by more than one
//! `poll` wake-up and never holds the pipe open after teardown.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ChildStderr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::os;

/// Default size of the ring: enough for a stack trace, small enough to keep per guard.
pub const DEFAULT_RING_BYTES: usize = 64 * 1024;

/// The background reader and the tail it keeps.
#[derive(Debug)]
pub struct StderrRing {
    tail: Arc<Mutex<VecDeque<u8>>>,
    capacity: usize,
    stop: os::Wakeup,
    thread: Option<JoinHandle<()>>,
    /// The ones its thread holds until it ends (at the child's EOF, maybe later than the child's
    /// death): the pipe and the thread's copy of the stop signal.
    thread_fds: [i32; 2],
}

impl StderrRing {
    /// Starts draining `stderr`, keeping the last `capacity` bytes.
    pub fn start(stderr: ChildStderr, capacity: usize) -> std::io::Result<StderrRing> {
        let stop = os::Wakeup::new()?;
        let stop_for_thread = stop.fd().try_clone_to_owned()?;
        let thread_fds = [stderr.as_raw_fd(), stop_for_thread.as_raw_fd()];
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(8192))));
        let sink = Arc::clone(&tail);
        let thread = std::thread::Builder::new()
            .name("reapkit-stderr".into())
            .spawn(move || drain(stderr, &stop_for_thread, &sink, capacity))?;
        Ok(StderrRing { tail, capacity, stop, thread: Some(thread), thread_fds })
    }

    /// The descriptors it holds for as long as it lives: its stop signal.
    pub(crate) fn own_fds(&self) -> Vec<i32> {
        self.stop.raw_fds()
    }

    /// The descriptors its thread holds while it runs.
    pub(crate) fn thread_fds(&self) -> [i32; 2] {
        self.thread_fds
    }

    /// The last bytes written, as text (lossy), starting at a line boundary where one exists.
    pub fn tail(&self) -> String {
        let bytes: Vec<u8> = lock(&self.tail).iter().copied().collect();
        // A full ring starts mid-line: drop that partial first line.
        let start =
            if bytes.len() >= self.capacity { bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1) } else { 0 };
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Reads what is already written, then stops the thread and closes the pipe.
    pub fn stop(&mut self) {
        self.stop.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StderrRing {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(m: &Mutex<VecDeque<u8>>) -> std::sync::MutexGuard<'_, VecDeque<u8>> {
    // A panic while holding this lock cannot leave the bytes inconsistent: keep using them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn drain(mut stderr: ChildStderr, stop: &OwnedFd, sink: &Mutex<VecDeque<u8>>, capacity: usize) {
    let mut buf = [0u8; 8192];
    let push = |bytes: &[u8]| {
        let mut ring = lock(sink);
        ring.extend(bytes);
        let excess = ring.len().saturating_sub(capacity);
        ring.drain(..excess);
    };
    let deadline = os::deadline_in(std::time::Duration::MAX);
    loop {
        let ready = os::wait_any_readable(&[stderr.as_fd(), stop.as_fd()], deadline);
        if ready.contains(&1) {
            // Told to stop: take whatever is already in the pipe without blocking, then go.
            if os::set_nonblocking(stderr.as_fd()).is_ok() {
                while let Ok(n @ 1..) = stderr.read(&mut buf) {
                    push(&buf[..n]);
                }
            }
            return;
        }
        match stderr.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => push(&buf[..n]),
        }
    }
}
