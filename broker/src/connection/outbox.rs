//! A connection's outbound buffer: finished frames waiting for the socket,
//! written with one `write` per batch.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use starling_protocol::framing;

/// What an empty outbound buffer is given when deliveries start to arrive.
pub(crate) const OUT_INITIAL: usize = 4096;

/// Written bytes at the front of the outbound buffer are dropped once there
/// are this many (the buffer is simply freed when all of it is written).
const COMPACT_AFTER: usize = 64 * 1024;

/// Finished frames waiting for the socket, bounded in bytes by the caller.
///
/// The buffer always starts at a frame boundary; `sent` bytes of it are
/// written already.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) buf: Vec<u8>,
    sent: usize,
    /// Counts since the last batch, added to the shared metrics per batch
    /// (a batch is bounded by the outbound bound, far below `u32::MAX`).
    pub(crate) delivered: u32,
    pub(crate) sent_bytes: u32,
}

impl Outbox {
    /// Bytes queued and not written yet.
    pub(crate) fn queued(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Writes until everything queued is written and flushed, or the
    /// socket is full. An emptied buffer gives its memory back.
    pub(crate) fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let written = match Pin::new(&mut *io).poll_write(cx, &self.buf[self.sent..]) {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    self.compact();
                    return Poll::Pending;
                }
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
            self.sent_bytes = self.sent_bytes.saturating_add(written as u32);
        }
        self.buf = Vec::new();
        self.sent = 0;
        // A no-op on TCP; TLS hands its last records to the socket here.
        Pin::new(&mut *io).poll_flush(cx)
    }

    /// Drops the written frames at the front, once they are many.
    fn compact(&mut self) {
        if self.sent >= COMPACT_AFTER {
            let (cut, _) = framing::frame_boundaries(&self.buf, self.sent);
            self.buf.drain(..cut);
            self.sent -= cut;
        }
    }

    /// Forgets every frame not started yet; a frame partly written is kept,
    /// so the stream stays well formed.
    pub(crate) fn discard_unsent(&mut self) {
        let (_, end) = framing::frame_boundaries(&self.buf, self.sent);
        self.buf.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::framing::Kind;

    #[test]
    fn discarding_keeps_a_partly_written_frame() {
        let mut out = Outbox::default();
        framing::write_message(&mut out.buf, Kind::Text, b"first");
        framing::write_message(&mut out.buf, Kind::Text, b"second");
        out.sent = 3;
        out.discard_unsent();
        assert_eq!(out.buf.len(), 7, "the first frame stays whole");
        out.sent = 7;
        out.discard_unsent();
        assert_eq!(out.buf.len(), 7);
    }
}
