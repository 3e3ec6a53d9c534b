//! Dropping a connection whose client sends nothing.
//!
//! hyper's `header_read_timeout` starts with a request's first byte, and the
//! auto (HTTP/1 or HTTP/2) builder waits for a preface with no deadline at
//! all: a client that connects and stays silent would hold its connection
//! slot forever. [`serve_unless_silent`] gives it the same deadline as a
//! slow request's headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that notes when its first byte is read.
pub struct Watched<S> {
    inner: S,
    heard: Arc<AtomicBool>,
}

impl<S> Watched<S> {
    /// `stream`, and the flag that turns true with its first byte.
    pub fn new(stream: S) -> (Self, Arc<AtomicBool>) {
        let heard = Arc::new(AtomicBool::new(false));
        let watched = Watched {
            inner: stream,
            heard: heard.clone(),
        };
        (watched, heard)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Run `connection` (serving a [`Watched`] stream whose flag is `heard`);
/// if nothing was heard from the client within `deadline`, drop it and
/// return `None`.
///
/// The connection comes boxed: a generic future here trips rustc's
/// inference of `Send` for hyper's connection futures (rust-lang/rust#64552).
pub async fn serve_unless_silent<T>(
    mut connection: Pin<Box<dyn Future<Output = T> + Send>>,
    heard: Arc<AtomicBool>,
    deadline: Duration,
) -> Option<T> {
    match tokio::time::timeout(deadline, &mut connection).await {
        Ok(output) => Some(output),
        Err(_) if !heard.load(Ordering::Relaxed) => None,
        Err(_) => Some(connection.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_and_a_talking_one_served() {
        let (client, server) = tokio::io::duplex(64);
        let (mut watched, heard) = Watched::new(server);
        let serve = async move {
            let mut buf = [0u8; 4];
            watched.read_exact(&mut buf).await.map(|_| buf)
        };
        let silent = serve_unless_silent(Box::pin(serve), heard, Duration::from_secs(3)).await;
        assert!(silent.is_none(), "a silent client kept its connection");
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let (mut watched, heard) = Watched::new(server);
        let serve = async move {
            let mut buf = [0u8; 4];
            watched.read_exact(&mut buf[..1]).await?;
            // Past the deadline, but the client spoke: served to the end.
            watched.read_exact(&mut buf[1..]).await.map(|_| buf)
        };
        let talk = async move {
            client.write_all(b"G").await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            client.write_all(b"ET ").await.unwrap();
            client
        };
        let (served, _client) = tokio::join!(
            serve_unless_silent(Box::pin(serve), heard, Duration::from_secs(3)),
            talk
        );
        assert_eq!(served.unwrap().unwrap(), *b"GET ");
    }
}
