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

/// What a link's buffers start with, and what a reader adds when it runs
/// short. A proxy holds three links per client connection, each with a
/// reader and a writer, and every page a buffer has touched stays
/// resident: 16 KiB read and 64 KiB write buffers cost 100 connections
/// 2.8 MiB more than these (docs/benchmarks.md). Requests and answers
/// are mostly far smaller than a page; a frame larger than what is
/// buffered makes the decoder reserve all of it at once (`frame.rs`,
/// `segment.rs`), and a writer grows to what one flush needs.
const START_CAPACITY: usize = 4 * 1024;

/// A reader with less room than this left reserves `START_CAPACITY` more
/// before it reads, so that a read is never for a few bytes.
const MIN_READ_ROOM: usize = 1024;

/// An empty read buffer with more room than this left by a large frame
/// is replaced by a new one of `START_CAPACITY`.
const MAX_IDLE_READ_ROOM: usize = 16 * 1024;

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
            buf: BytesMut::with_capacity(START_CAPACITY),
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
            let room = self.buf.capacity() - self.buf.len();
            if self.buf.is_empty() && !(MIN_READ_ROOM..=MAX_IDLE_READ_ROOM).contains(&room) {
                // A fresh buffer, not `reserve`, which would take back the
                // whole of one that once held a large frame; nor the rest
                // of such a buffer, whose pages the next reads would walk
                // through and keep resident.
                self.buf = BytesMut::with_capacity(START_CAPACITY);
            } else if room < MIN_READ_ROOM {
                self.buf.reserve(START_CAPACITY);
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
            buf: BytesMut::with_capacity(START_CAPACITY),
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

    /// Bytes queued and not yet written.
    fn pending_len(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.encoder.flush(&self.state, &mut self.buf);
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.write.write_all(&self.buf).await;
        self.buf.clear();
        shrink_after_burst(&mut self.buf);
        result
    }

    pub async fn shutdown(&mut self) {
        let _ = self.write.shutdown().await;
    }
}

/// A write buffer that grew past two batches for a burst (a large result)
/// goes back to the starting size, so a connection that was busy once
/// does not keep that memory while it idles. Two, because a full batch
/// ends just past one and the buffer's doubling then leaves it at two:
/// shrinking that would re-grow it on every batch under load.
fn shrink_after_burst(buf: &mut BytesMut) {
    if buf.capacity() > 2 * WRITE_BATCH {
        *buf = BytesMut::with_capacity(START_CAPACITY);
    }
}

/// Spawns the task that writes queued frames to `write`; it ends when every
/// sender is dropped or the socket fails.
pub fn spawn_writer(
    write: BoxWrite,
    state: Arc<LinkState>,
    mut rx: mpsc::Receiver<Outbound>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        let mut writer = FrameWriter::new(write, state);
        while let Some(first) = rx.recv().await {
            writer.queue(first);
            // Everything already queued goes in the same write, up to a batch.
            while writer.pending_len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(msg) => writer.queue(msg),
                    Err(_) => break,
                }
            }
            writer.flush().await?;
        }
        writer.shutdown().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::frame::{opcode, DecodeRules, Frame};
    use bytes::Bytes;

    fn body(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let state = LinkState::default();
        let mut encoder = FrameEncoder::default();
        let mut out = BytesMut::new();
        for f in frames {
            encoder.encode(&state, f, &mut out);
        }
        encoder.flush(&state, &mut out);
        out.to_vec()
    }

    #[tokio::test]
    async fn frames_larger_than_the_starting_buffer_arrive_whole() {
        let frames = vec![
            Frame::request(4, 1, opcode::QUERY, body(10, 1)),
            Frame::request(4, 2, opcode::QUERY, body(100 * 1024, 2)),
            Frame::request(4, 3, opcode::EXECUTE, body(3 * 1024, 3)),
            Frame::request(4, 4, opcode::QUERY, body(START_CAPACITY, 4)),
        ];
        let bytes = encoded(&frames);
        let (mut near, far) = tokio::io::duplex(1500);
        // Dribbled in pieces of 997 bytes, so frame boundaries fall inside
        // reads and a frame spans many of them.
        let sender = tokio::spawn(async move {
            for piece in bytes.chunks(997) {
                near.write_all(piece).await.unwrap();
            }
        });
        let (read, _write) = tokio::io::split(far);
        let mut reader = FrameReader::new(
            Box::new(read),
            FrameDecoder::new(DecodeRules {
                max_frame_bytes: 1 << 20,
                max_version: 5,
                expect_response: false,
            }),
            Arc::new(LinkState::default()),
        );
        for want in &frames {
            let got = reader.next().await.unwrap().expect("a frame");
            assert_eq!(&got, want);
        }
        sender.await.unwrap();
        assert!(reader.next().await.unwrap().is_none());
        // The 100 KiB frame's buffer was not kept for the small ones after.
        assert!(
            reader.buf.capacity() <= 2 * START_CAPACITY,
            "the reader kept {} bytes",
            reader.buf.capacity()
        );
    }

    #[tokio::test]
    async fn a_writer_returns_to_its_starting_size_after_a_burst() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let drain = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        let (_read, write) = tokio::io::split(near);
        let mut writer = FrameWriter::new(Box::new(write), Arc::new(LinkState::default()));
        assert!(writer.buf.capacity() <= START_CAPACITY);
        let burst = Frame::response(4, 7, opcode::RESULT, body(200 * 1024, 9));
        let small = Frame::response(4, 8, opcode::RESULT, body(100, 5));
        writer.queue(Outbound::Frame(burst.clone()));
        assert!(writer.buf.capacity() > WRITE_BATCH);
        writer.flush().await.unwrap();
        assert!(
            writer.buf.capacity() <= START_CAPACITY,
            "kept {} bytes after the burst",
            writer.buf.capacity()
        );
        writer.queue(Outbound::Frame(small.clone()));
        writer.flush().await.unwrap();
        writer.shutdown().await;
        drop(writer);
        assert_eq!(drain.await.unwrap(), encoded(&[burst, small]));
    }
}
