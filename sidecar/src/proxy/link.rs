//! The byte-moving halves of every link: a reader that turns bytes into
//! frames, and a writer task that batches queued frames into few syscalls.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use super::codec::{FrameDecoder, FrameEncoder, LinkState};
use super::frame::{Frame, FrameError};
use super::tls::{BoxRead, BoxWrite};

/// Bytes gathered before one write syscall.
const WRITE_BATCH: usize = 64 * 1024;

/// The most one read from an idle link takes in. It reads into the stack
/// and then into a buffer of just what arrived, so that a link holds no
/// buffer while it waits: a proxy holds three links per client connection,
/// each with a reader and a writer, most of them idle at any moment, and
/// every page a buffer has touched stays resident (docs/benchmarks.md).
/// A frame larger than what is buffered makes the decoder reserve all of
/// it at once (`frame.rs`, `segment.rs`).
const IDLE_READ: usize = 16 * 1024;

/// A reader in the middle of a frame with less room than this left
/// reserves `PARTIAL_READ` more before it reads, so that a read is never
/// for a few bytes.
const MIN_READ_ROOM: usize = 1024;
const PARTIAL_READ: usize = 4 * 1024;

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
            buf: BytesMut::new(),
            decoder,
            state,
        }
    }

    pub fn decoder_mut(&mut self) -> &mut FrameDecoder {
        &mut self.decoder
    }

    /// A frame already buffered, without reading from the socket.
    pub fn try_next(&mut self) -> Result<Option<Frame>, ReadError> {
        let frame = self.decoder.decode(&self.state, &mut self.buf)?;
        self.release_if_empty();
        Ok(frame)
    }

    /// The next frame, or `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.decode(&self.state, &mut self.buf)? {
                self.release_if_empty();
                return Ok(Some(frame));
            }
            let read = if self.buf.is_empty() {
                read_idle(&mut self.read, &mut self.buf).await?
            } else {
                if self.buf.capacity() - self.buf.len() < MIN_READ_ROOM {
                    self.buf.reserve(PARTIAL_READ);
                }
                self.read.read_buf(&mut self.buf).await?
            };
            if read == 0 {
                return Ok(None);
            }
        }
    }

    /// Every whole frame is out: drop the buffer (the frames still in use
    /// hold what they need of it), so that the link holds none while it
    /// waits for more.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }
}

/// Reads from a link that has nothing buffered: into the stack while it
/// waits, then into `buf`, a new buffer of just what arrived. Returns the
/// bytes read (0 at the end of the stream).
async fn read_idle(read: &mut BoxRead, buf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        // On the stack of this poll only, never in the task's state: an
        // idle link's future stays small.
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ];
        let mut landed = ReadBuf::uninit(&mut stack);
        std::task::ready!(std::pin::Pin::new(&mut *read).poll_read(cx, &mut landed))?;
        let arrived = landed.filled();
        *buf = BytesMut::from(arrived);
        std::task::Poll::Ready(Ok(arrived.len()))
    })
    .await
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
            buf: BytesMut::new(),
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

    /// Writes everything queued, then drops the buffer: a link holds none
    /// between flushes (one allocation per write syscall, measured in
    /// docs/benchmarks.md, against 4 KiB per idle link, or a burst's
    /// whole size, kept).
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.encoder.flush(&self.state, &mut self.buf);
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.write.write_all(&self.buf).await;
        self.buf = BytesMut::new();
        result
    }

    pub async fn shutdown(&mut self) {
        let _ = self.write.shutdown().await;
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
            Frame::request(4, 4, opcode::QUERY, body(IDLE_READ, 4)),
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
        assert_eq!(
            reader.buf.capacity(),
            0,
            "the reader kept its buffer after the last whole frame"
        );
        sender.await.unwrap();
        assert!(reader.next().await.unwrap().is_none());
        // Once every whole frame is out, the reader holds no buffer while it
        // waits: most links are idle most of the time.
        assert_eq!(reader.buf.capacity(), 0, "the reader kept its buffer");
    }

    #[tokio::test]
    async fn a_writer_holds_no_buffer_between_flushes() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let drain = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        let (_read, write) = tokio::io::split(near);
        let mut writer = FrameWriter::new(Box::new(write), Arc::new(LinkState::default()));
        let burst = Frame::response(4, 7, opcode::RESULT, body(200 * 1024, 9));
        let small = Frame::response(4, 8, opcode::RESULT, body(100, 5));
        writer.queue(Outbound::Frame(burst.clone()));
        assert!(writer.buf.capacity() > WRITE_BATCH);
        writer.flush().await.unwrap();
        assert_eq!(writer.buf.capacity(), 0, "kept its buffer after the burst");
        writer.queue(Outbound::Frame(small.clone()));
        writer.flush().await.unwrap();
        assert_eq!(writer.buf.capacity(), 0, "kept its buffer after a flush");
        writer.shutdown().await;
        drop(writer);
        assert_eq!(drain.await.unwrap(), encoded(&[burst, small]));
    }
}
