//! The cluster secret on TCP: every byte of a connection is encrypted with a
//! stream cipher keyed by the secret before noise even starts, so a node
//! without the secret cannot complete a handshake — libp2p's private-network
//! idea (`pnet`), with XChaCha20 instead of XSalsa20.
//!
//! Why not `libp2p::pnet` itself: its XSalsa20 (`salsa20` 0.11) has only a
//! portable scalar implementation, and encrypting every replicated byte with
//! it capped blob replication at ~260 MB/s on the benchmark machine
//! (docs/performance.md, "Cluster"). `chacha20`'s XChaCha20 has SSE2/AVX2
//! backends. The construction is the same: each side sends a random 24-byte
//! nonce, then encrypts what it writes with (key, its nonce) and decrypts
//! what it reads with (key, the peer's nonce). Like pnet it does not
//! authenticate; noise, which runs inside it, does. Not wire-compatible with
//! libp2p's pnet (Canopy nodes only talk to Canopy nodes).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use chacha20::XChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use sha2::{Digest, Sha256};

use crate::env::Rng;

const NONCE_BYTES: usize = 24;
/// Bytes accepted per write before they are handed to the socket.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Domain separation: the cipher key is derived from the secret, never the
/// secret itself.
const KEY_CONTEXT: &[u8] = b"canopy cluster secret: tcp stream key v1\0";

/// The cluster secret, ready to wrap connections.
#[derive(Clone)]
pub struct ClusterPsk {
    key: [u8; 32],
    rng: Rng,
}

impl ClusterPsk {
    /// `rng` draws the per-connection nonces.
    pub fn new(secret: [u8; 32], rng: Rng) -> Self {
        let key = Sha256::new()
            .chain_update(KEY_CONTEXT)
            .chain_update(secret)
            .finalize()
            .into();
        Self { key, rng }
    }

    /// Exchange nonces over `socket` and return it wrapped in the cipher.
    pub async fn handshake<S>(self, mut socket: S) -> io::Result<PskStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut local = [0u8; NONCE_BYTES];
        self.rng.fill_bytes(&mut local);
        socket.write_all(&local).await?;
        socket.flush().await?;
        let mut remote = [0u8; NONCE_BYTES];
        socket.read_exact(&mut remote).await?;
        Ok(PskStream {
            inner: socket,
            write_cipher: XChaCha20::new(&self.key.into(), &local.into()),
            read_cipher: XChaCha20::new(&self.key.into(), &remote.into()),
            pending: Vec::with_capacity(WRITE_BUFFER_BYTES),
            flushed: 0,
        })
    }
}

/// A connection encrypted with the cluster secret.
pub struct PskStream<S> {
    inner: S,
    write_cipher: XChaCha20,
    read_cipher: XChaCha20,
    /// Encrypted bytes accepted from the caller, not yet all written.
    pending: Vec<u8>,
    flushed: usize,
}

impl<S: AsyncWrite + Unpin> PskStream<S> {
    /// Write out `pending`; ready once all of it is with the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.flushed < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.flushed..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.flushed += n;
        }
        self.pending.clear();
        self.flushed = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PskStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read_cipher.apply_keystream(&mut buf[..n]);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PskStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Bytes are encrypted once, when accepted: what was accepted must be
        // written as it is before anything new.
        ready!(this.poll_drain(cx))?;
        let n = buf.len().min(WRITE_BUFFER_BYTES);
        this.pending.extend_from_slice(&buf[..n]);
        this.write_cipher.apply_keystream(&mut this.pending);
        // Start writing now; what does not fit waits for the next call.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}
