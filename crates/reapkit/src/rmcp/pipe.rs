//! The server's pipes as Tokio I/O that the guard can close at any moment. Teardown begins by
//! closing stdin (EOF, the polite request) and our end of stdout, and it must be able to do so
//! while one of rmcp's tasks is in the middle of a read or a write on them: a send blocked on a
//! server that does not read would otherwise hold stdin open (and the EOF back) for as long as
//! it waits. Each poll takes the end's lock only for the poll itself, never across an await, so
//! closing never waits; a task waiting on a closed end is woken to EOF (read) or `BrokenPipe`
//! (write).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One end of a pipe to the server, shared by the transport and the guard.
pub(crate) struct PipeEnd<T> {
    state: Arc<Mutex<State<T>>>,
}

struct State<T> {
    /// `None` once closed.
    io: Option<T>,
    /// The task that last found the end not ready: woken when it is closed.
    waiting: Option<Waker>,
}

impl<T> Clone for PipeEnd<T> {
    fn clone(&self) -> Self {
        PipeEnd { state: Arc::clone(&self.state) }
    }
}

impl<T: Unpin> PipeEnd<T> {
    pub(crate) fn new(io: T) -> PipeEnd<T> {
        PipeEnd { state: Arc::new(Mutex::new(State { io: Some(io), waiting: None })) }
    }

    /// Closes the descriptor now (dropping it deregisters it from its runtime, if any).
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        drop(state.io.take());
        if let Some(waker) = state.waiting.take() {
            waker.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Polls the open end with `op`, or answers `closed` once it is closed.
    fn poll<R>(
        &self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
        closed: impl FnOnce() -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        let mut state = self.lock();
        let Some(io) = state.io.as_mut() else { return Poll::Ready(closed()) };
        let poll = op(Pin::new(io), cx);
        if poll.is_pending() {
            state.waiting = Some(cx.waker().clone());
        }
        poll
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PipeEnd<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // Closed: end of file (nothing read).
        self.poll(cx, |io, cx| io.poll_read(cx, buf), || Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PipeEnd<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll(cx, |io, cx| io.poll_write(cx, buf), || Err(io::ErrorKind::BrokenPipe.into()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll(cx, |io, cx| io.poll_flush(cx), || Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll(cx, |io, cx| io.poll_shutdown(cx), || Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::unix::pipe;

    #[tokio::test]
    async fn closing_an_end_wakes_its_pending_reader_to_eof_and_its_writer_to_broken_pipe() {
        let (tx, rx) = pipe::pipe().unwrap();
        let reader = PipeEnd::new(rx);
        let closer = reader.clone();
        let read = tokio::spawn(async move {
            let mut reader = reader;
            let mut buf = [0u8; 8];
            reader.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        closer.close();
        assert_eq!(read.await.unwrap().unwrap(), 0, "EOF after close");

        let writer = PipeEnd::new(tx);
        writer.close();
        let mut w = writer.clone();
        let err = w.write_all(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
