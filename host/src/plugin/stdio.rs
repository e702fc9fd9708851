//! Guest stdout/stderr: captured in memory up to a bound, the rest counted
//! and dropped. A guest that floods its output is never blocked or trapped
//! for it; it only loses what exceeds the bound.

use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Default)]
struct Buffer {
    kept: BytesMut,
    dropped: u64,
}

#[derive(Clone)]
pub struct CapturePipe {
    capacity: usize,
    buffer: Arc<Mutex<Buffer>>,
}

impl CapturePipe {
    pub fn new(capacity: usize) -> CapturePipe {
        CapturePipe {
            capacity,
            buffer: Arc::default(),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.capacity.saturating_sub(b.kept.len());
        let keep = bytes.len().min(room);
        b.kept.extend_from_slice(&bytes[..keep]);
        b.dropped += (bytes.len() - keep) as u64;
    }

    /// What was kept (lossy UTF-8) and how many bytes were dropped.
    pub fn contents(&self) -> (String, u64) {
        let b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        (String::from_utf8_lossy(&b.kept).into_owned(), b.dropped)
    }
}

impl IsTerminal for CapturePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(1 << 20)
    }
}

#[async_trait::async_trait]
impl Pollable for CapturePipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturePipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_counts_the_rest() {
        let mut p = CapturePipe::new(4);
        p.write(Bytes::from_static(b"abc")).expect("write");
        p.write(Bytes::from_static(b"defgh")).expect("write");
        assert_eq!(p.contents(), ("abcd".to_string(), 4));
    }
}
