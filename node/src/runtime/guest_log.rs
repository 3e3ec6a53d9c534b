//! A guest's stdout and stderr, as lines in the node's log (`tracing`,
//! target `canopy::guest`), tagged with the function's name.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept whole; longer output is logged in pieces of this size
/// so a guest that never writes a newline cannot grow host memory.
const MAX_LINE_BYTES: usize = 4096;

/// Which of the guest's output streams.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A WASI output stream that logs what the guest writes, line by line.
#[derive(Clone, Debug)]
pub struct GuestLog {
    function: Arc<str>,
    stream: Stream,
}

impl GuestLog {
    pub fn new(function: Arc<str>, stream: Stream) -> Self {
        Self { function, stream }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.clone(),
            line: Vec::new(),
        })
    }
}

/// Buffers a partial line until its newline (or [`MAX_LINE_BYTES`]).
struct LineWriter {
    log: GuestLog,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        match self.log.stream {
            Stream::Stdout => tracing::info!(
                target: "canopy::guest",
                function = %self.log.function,
                stream = self.log.stream.name(),
                "{text}"
            ),
            Stream::Stderr => tracing::warn!(
                target: "canopy::guest",
                function = %self.log.function,
                stream = self.log.stream.name(),
                "{text}"
            ),
        }
        self.line.clear();
    }

    fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.line.push(byte);
            if byte == b'\n' || self.line.len() >= MAX_LINE_BYTES {
                self.emit();
            }
        }
        debug_assert!(self.line.len() < MAX_LINE_BYTES);
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A partial line waits for its end: logging it now would split it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.line.is_empty() {
            this.emit();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_is_split_and_partial_lines_wait() {
        let mut writer = LineWriter {
            log: GuestLog::new(Arc::from("f"), Stream::Stdout),
            line: Vec::new(),
        };
        writer.push(b"partial");
        assert_eq!(writer.line, b"partial");
        writer.push(b" line\nnext");
        assert_eq!(writer.line, b"next");
        writer.push(&vec![b'x'; MAX_LINE_BYTES * 2 + 3]);
        assert_eq!(
            writer.line.len(),
            (4 + MAX_LINE_BYTES * 2 + 3) % MAX_LINE_BYTES
        );
    }
}
