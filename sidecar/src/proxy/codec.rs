//! Per-link framing state: which version, compression and framing (v3/v4
//! frames or v5 segments) a connection currently uses, and the decoder and
//! encoder that follow it.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use bytes::BytesMut;

use super::compression::Compression;
use super::frame::{decode_envelope, decode_frame, DecodeRules, Frame, FrameError};
use super::segment::{decode_segment, SegmentWriter};

/// Framing state of one TCP link, shared by its reader and writer halves.
#[derive(Debug)]
pub struct LinkState {
    compression: AtomicU8,
    /// Incoming bytes are v5 segments.
    segmented_in: AtomicBool,
    /// Outgoing bytes are v5 segments.
    segmented_out: AtomicBool,
    /// Outgoing v3/v4 bodies are compressed (after the handshake).
    compress_out: AtomicBool,
}

impl Default for LinkState {
    fn default() -> Self {
        Self {
            compression: AtomicU8::new(0),
            segmented_in: AtomicBool::new(false),
            segmented_out: AtomicBool::new(false),
            compress_out: AtomicBool::new(false),
        }
    }
}

impl LinkState {
    pub fn compression(&self) -> Compression {
        match self.compression.load(Ordering::Acquire) {
            1 => Compression::Lz4,
            2 => Compression::Snappy,
            _ => Compression::None,
        }
    }

    pub fn set_compression(&self, c: Compression) {
        let v = match c {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Snappy => 2,
        };
        self.compression.store(v, Ordering::Release);
    }

    pub fn set_segmented_in(&self) {
        self.segmented_in.store(true, Ordering::Release);
    }

    pub fn set_segmented_out(&self) {
        self.segmented_out.store(true, Ordering::Release);
    }

    pub fn enable_compress_out(&self) {
        self.compress_out.store(true, Ordering::Release);
    }

    /// The handshake finished with `version`: v5 switches to segments, v3/v4
    /// start compressing outgoing bodies if a compression was negotiated.
    pub fn handshake_done_out(&self, version: u8) {
        if version >= 5 {
            self.set_segmented_out();
        } else {
            self.enable_compress_out();
        }
    }
}

/// Decodes the frames arriving on a link.
#[derive(Debug)]
pub struct FrameDecoder {
    rules: DecodeRules,
    /// Reassembled segment payloads not yet cut into frames.
    segment_bytes: BytesMut,
}

impl FrameDecoder {
    pub fn new(rules: DecodeRules) -> Self {
        Self {
            rules,
            segment_bytes: BytesMut::new(),
        }
    }

    pub fn set_max_version(&mut self, v: u8) {
        self.rules.max_version = v;
    }

    /// Bytes of memory the decoder holds between frames.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.segment_bytes.capacity()
    }

    /// The next complete frame from `buf`, if any.
    pub fn decode(
        &mut self,
        state: &LinkState,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame>, FrameError> {
        if !state.segmented_in.load(Ordering::Acquire) {
            return decode_frame(buf, &self.rules, state.compression());
        }
        let compressed = state.compression() == Compression::Lz4;
        loop {
            // Envelopes inside segments never use per-frame compression.
            if let Some(frame) = decode_envelope(&mut self.segment_bytes, &self.rules)? {
                if self.segment_bytes.is_empty() {
                    // Not even a view of the read buffer is kept between
                    // frames: it would keep that whole buffer alive.
                    self.segment_bytes = BytesMut::new();
                }
                return Ok(Some(frame));
            }
            match decode_segment(buf, compressed)? {
                Some(segment) => {
                    if self.segment_bytes.is_empty() {
                        self.segment_bytes = segment.payload;
                    } else {
                        self.segment_bytes.extend_from_slice(&segment.payload);
                    }
                }
                None => return Ok(None),
            }
        }
    }
}

/// Encodes the frames leaving on a link.
#[derive(Debug, Default)]
pub struct FrameEncoder {
    segments: SegmentWriter,
    scratch: BytesMut,
}

impl FrameEncoder {
    pub fn encode(&mut self, state: &LinkState, frame: &Frame, out: &mut BytesMut) {
        if state.segmented_out.load(Ordering::Acquire) {
            self.scratch.clear();
            frame.encode(Compression::None, &mut self.scratch);
            let compressed = state.compression() == Compression::Lz4;
            self.segments.push_frame(&self.scratch, compressed, out);
        } else if state.compress_out.load(Ordering::Acquire) {
            frame.encode(state.compression(), out);
        } else {
            frame.encode(Compression::None, out);
        }
    }

    /// Bytes of memory the encoder holds between batches.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.scratch.capacity() + self.segments.held_bytes()
    }

    /// Closes the current segment; call before writing `out` to the socket.
    pub fn flush(&mut self, state: &LinkState, out: &mut BytesMut) {
        if state.segmented_out.load(Ordering::Acquire) {
            let compressed = state.compression() == Compression::Lz4;
            self.segments.flush(compressed, out);
            // Nothing held between batches: the scratch grows to the
            // largest frame a batch had.
            self.scratch = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::frame::opcode;
    use bytes::Bytes;

    fn rules() -> DecodeRules {
        DecodeRules {
            max_frame_bytes: 1 << 20,
            max_version: 5,
            expect_response: false,
        }
    }

    #[test]
    fn v5_segments_round_trip_with_and_without_lz4() {
        for compression in [Compression::None, Compression::Lz4] {
            let state = LinkState::default();
            state.set_compression(compression);
            state.set_segmented_in();
            state.set_segmented_out();
            let mut enc = FrameEncoder::default();
            let mut out = BytesMut::new();
            let frames: Vec<Frame> = (0..3)
                .map(|i| {
                    Frame::request(
                        5,
                        i,
                        opcode::QUERY,
                        Bytes::from(vec![i as u8; 100 + i as usize]),
                    )
                })
                .chain(std::iter::once(Frame::request(
                    5,
                    9,
                    opcode::QUERY,
                    Bytes::from(vec![1u8; 300_000]),
                )))
                .collect();
            for f in &frames {
                enc.encode(&state, f, &mut out);
            }
            enc.flush(&state, &mut out);
            let mut dec = FrameDecoder::new(rules());
            // Feed byte-by-byte chunks to exercise partial reads.
            let mut inbuf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in out.chunks(777) {
                inbuf.extend_from_slice(chunk);
                while let Some(f) = dec.decode(&state, &mut inbuf).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "{compression:?}");
        }
    }

    /// A v5 link's encoder and decoder keep no buffer once a batch is
    /// written and every whole frame read: a burst of large results used
    /// to leave its 128 KiB segment and its largest frame's scratch held
    /// for the connection's life, one of each per link (the Java driver
    /// speaks v5 to Cassandra 4 and 5).
    #[test]
    fn a_v5_link_holds_no_buffer_between_batches() {
        let state = LinkState::default();
        state.set_segmented_in();
        state.set_segmented_out();
        let mut enc = FrameEncoder::default();
        let mut out = BytesMut::new();
        let frames = [
            Frame::request(5, 1, opcode::QUERY, Bytes::from(vec![7u8; 100_000])),
            Frame::request(5, 2, opcode::QUERY, Bytes::from(vec![8u8; 50])),
        ];
        for f in &frames {
            enc.encode(&state, f, &mut out);
        }
        enc.flush(&state, &mut out);
        assert_eq!(enc.held_bytes(), 0, "the encoder kept its buffers");
        let mut dec = FrameDecoder::new(rules());
        let mut got = Vec::new();
        while let Some(f) = dec.decode(&state, &mut out).unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames);
        assert_eq!(dec.held_bytes(), 0, "the decoder kept a segment's bytes");
    }

    /// The DataStax Java driver 4.17 at v5 with lz4 sets the COMPRESSED
    /// flag on the envelopes inside its (lz4) segments, with plain bodies.
    /// Cassandra ignores the flag there; the proxy refused the envelope, so
    /// that driver could not connect through it at all.
    #[test]
    fn the_compressed_flag_of_an_envelope_inside_segments_is_ignored() {
        for compression in [Compression::None, Compression::Lz4] {
            let state = LinkState::default();
            state.set_compression(compression);
            state.set_segmented_in();
            let frame = Frame::request(5, 3, opcode::QUERY, Bytes::from_static(b"plain body"));
            let mut envelope = BytesMut::new();
            frame.encode(Compression::None, &mut envelope);
            envelope[1] |= crate::proxy::frame::flags::COMPRESSED;
            let mut wire = BytesMut::new();
            crate::proxy::segment::encode_segment(
                &envelope,
                true,
                compression == Compression::Lz4,
                &mut wire,
            );
            let mut dec = FrameDecoder::new(rules());
            let got = dec
                .decode(&state, &mut wire)
                .expect("the envelope is accepted")
                .expect("a whole frame");
            assert_eq!(got, frame, "{compression:?}");
        }
    }
}
