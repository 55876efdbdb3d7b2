//! The byte-moving halves of every link: a reader that turns bytes into
//! frames, and a writer task that batches queued frames into few syscalls.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::codec::{FrameDecoder, FrameEncoder, LinkState};
use super::frame::{Frame, FrameError};
use super::tls::{BoxRead, BoxWrite};

/// Bytes gathered before one write syscall.
const WRITE_BATCH: usize = 64 * 1024;

/// What a writer task is asked to send.
#[derive(Debug)]
pub enum Outbound {
    Frame(Frame),
    /// Send this frame in the current framing, then switch to v5 segments
    /// (the READY/AUTHENTICATE that ends a v5 handshake).
    FrameThenSegments(Frame),
    /// Send this frame, then start compressing outgoing v3/v4 bodies.
    FrameThenCompress(Frame),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads frames from one side of a link.
pub struct FrameReader {
    read: BoxRead,
    buf: BytesMut,
    decoder: FrameDecoder,
    state: Arc<LinkState>,
}

impl FrameReader {
    pub fn new(read: BoxRead, decoder: FrameDecoder, state: Arc<LinkState>) -> Self {
        Self {
            read,
            buf: BytesMut::with_capacity(16 * 1024),
            decoder,
            state,
        }
    }

    pub fn decoder_mut(&mut self) -> &mut FrameDecoder {
        &mut self.decoder
    }

    /// A frame already buffered, without reading from the socket.
    pub fn try_next(&mut self) -> Result<Option<Frame>, ReadError> {
        Ok(self.decoder.decode(&self.state, &mut self.buf)?)
    }

    /// The next frame, or `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.decode(&self.state, &mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// Writes frames to one side of a link from the task that produced them:
/// callers queue any number of frames, then flush them with one write.
/// Used where a task wake-up per frame would cost more than the lock.
pub struct FrameWriter {
    write: BoxWrite,
    state: Arc<LinkState>,
    encoder: FrameEncoder,
    buf: BytesMut,
}

impl FrameWriter {
    pub fn new(write: BoxWrite, state: Arc<LinkState>) -> Self {
        Self {
            write,
            state,
            encoder: FrameEncoder::default(),
            buf: BytesMut::with_capacity(WRITE_BATCH),
        }
    }

    /// Encodes a frame into the pending bytes.
    pub fn queue(&mut self, msg: Outbound) {
        match msg {
            Outbound::Frame(f) => self.encoder.encode(&self.state, &f, &mut self.buf),
            Outbound::FrameThenSegments(f) => {
                self.encoder.encode(&self.state, &f, &mut self.buf);
                self.encoder.flush(&self.state, &mut self.buf);
                self.state.set_segmented_out();
            }
            Outbound::FrameThenCompress(f) => {
                self.encoder.encode(&self.state, &f, &mut self.buf);
                self.state.enable_compress_out();
            }
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.encoder.flush(&self.state, &mut self.buf);
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.write.write_all(&self.buf).await;
        self.buf.clear();
        if self.buf.capacity() > 4 * WRITE_BATCH {
            self.buf = BytesMut::with_capacity(WRITE_BATCH);
        }
        result
    }

    pub async fn shutdown(&mut self) {
        let _ = self.write.shutdown().await;
    }
}

/// Spawns the task that writes queued frames to `write`; it ends when every
/// sender is dropped or the socket fails.
pub fn spawn_writer(
    mut write: BoxWrite,
    state: Arc<LinkState>,
    mut rx: mpsc::Receiver<Outbound>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        let mut encoder = FrameEncoder::default();
        let mut out = BytesMut::with_capacity(WRITE_BATCH);
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Outbound::Frame(f) => encoder.encode(&state, &f, &mut out),
                    Outbound::FrameThenSegments(f) => {
                        encoder.encode(&state, &f, &mut out);
                        encoder.flush(&state, &mut out);
                        state.set_segmented_out();
                    }
                    Outbound::FrameThenCompress(f) => {
                        encoder.encode(&state, &f, &mut out);
                        state.enable_compress_out();
                    }
                }
                if out.len() < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            encoder.flush(&state, &mut out);
            write.write_all(&out).await?;
            out.clear();
        }
        let _ = write.shutdown().await;
        Ok(())
    })
}
