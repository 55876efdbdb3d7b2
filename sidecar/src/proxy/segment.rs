//! Protocol v5 framing: frames travel inside segments, each with a
//! CRC24-protected header and a CRC32-protected payload, optionally lz4
//! compressed. A self-contained segment holds whole frames; a frame larger
//! than a segment is split over several non-self-contained ones.

use bytes::{BufMut, BytesMut};

use super::compression::{lz4_block_compress, lz4_block_decompress};
use super::frame::FrameError;

/// Largest payload of one segment (17 bits).
pub const MAX_PAYLOAD: usize = (1 << 17) - 1;
const CRC24_INIT: u32 = 0x0087_5060;
const CRC24_POLY: u32 = 0x0197_4F0B;
const CRC24_LEN: usize = 3;
const CRC32_LEN: usize = 4;
/// Cassandra seeds its payload CRC32 with these bytes.
const CRC32_SEED: [u8; 4] = [0xFA, 0x2D, 0x55, 0xCA];

/// CRC24 of a segment header, as Cassandra computes it.
pub fn crc24(bytes: &[u8]) -> u32 {
    let mut crc = CRC24_INIT;
    for &b in bytes {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x0100_0000 != 0 {
                crc ^= CRC24_POLY;
            }
        }
    }
    crc & 0x00FF_FFFF
}

static CRC32_TABLE: std::sync::LazyLock<[u32; 256]> = std::sync::LazyLock::new(|| {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    table
});

fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    let table = &*CRC32_TABLE;
    crc = !crc;
    for &b in bytes {
        crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// CRC32 (IEEE) of a segment payload, seeded as Cassandra does.
pub fn crc32(payload: &[u8]) -> u32 {
    crc32_update(crc32_update(0, &CRC32_SEED), payload)
}

/// One decoded segment's payload, uncompressed.
#[derive(Debug)]
pub struct Segment {
    pub self_contained: bool,
    pub payload: BytesMut,
}

/// Decodes one segment from the front of `buf`, if complete.
pub fn decode_segment(buf: &mut BytesMut, compressed: bool) -> Result<Option<Segment>, FrameError> {
    let header_len = if compressed { 5 } else { 3 };
    if buf.len() < header_len + CRC24_LEN {
        return Ok(None);
    }
    let mut header = [0u8; 8];
    header[..header_len].copy_from_slice(&buf[..header_len]);
    let bits = u64::from_le_bytes(header);
    let expected_crc = u32::from(buf[header_len])
        | u32::from(buf[header_len + 1]) << 8
        | u32::from(buf[header_len + 2]) << 16;
    if crc24(&buf[..header_len]) != expected_crc {
        return Err(FrameError::SegmentHeaderCrc);
    }
    let payload_len = (bits & 0x1FFFF) as usize;
    let (uncompressed_len, self_contained) = if compressed {
        (((bits >> 17) & 0x1FFFF) as usize, bits & (1 << 34) != 0)
    } else {
        (0, bits & (1 << 17) != 0)
    };
    let total = header_len + CRC24_LEN + payload_len + CRC32_LEN;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut whole = buf.split_to(total);
    let _ = whole.split_to(header_len + CRC24_LEN);
    let crc_bytes = whole.split_off(payload_len);
    let expected = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    if crc32(&whole) != expected {
        return Err(FrameError::SegmentPayloadCrc);
    }
    // An uncompressed length of 0 in a compressed segment means "stored as is".
    let payload = if compressed && uncompressed_len != 0 {
        lz4_block_decompress(&whole, uncompressed_len, MAX_PAYLOAD)?
    } else {
        whole
    };
    Ok(Some(Segment {
        self_contained,
        payload,
    }))
}

/// Appends one segment carrying `payload` (at most [`MAX_PAYLOAD`] bytes).
pub fn encode_segment(payload: &[u8], self_contained: bool, compressed: bool, out: &mut BytesMut) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    if compressed {
        let mut packed = BytesMut::with_capacity(payload.len());
        lz4_block_compress(payload, &mut packed);
        // Store uncompressed when lz4 does not help (uncompressed length 0).
        let (body, uncompressed_len): (&[u8], u64) = if packed.len() < payload.len() {
            (&packed, payload.len() as u64)
        } else {
            (payload, 0)
        };
        let mut bits = body.len() as u64 | uncompressed_len << 17;
        if self_contained {
            bits |= 1 << 34;
        }
        let header = &bits.to_le_bytes()[..5];
        out.put_slice(header);
        put_crc24(out, crc24(header));
        out.put_slice(body);
        out.put_u32_le(crc32(body));
    } else {
        let mut bits = payload.len() as u32;
        if self_contained {
            bits |= 1 << 17;
        }
        let header = &bits.to_le_bytes()[..3];
        out.put_slice(header);
        put_crc24(out, crc24(header));
        out.put_slice(payload);
        out.put_u32_le(crc32(payload));
    }
}

fn put_crc24(out: &mut BytesMut, crc: u32) {
    out.put_slice(&crc.to_le_bytes()[..3]);
}

/// Packs encoded frames into segments: small frames share self-contained
/// segments, a large frame is split over non-self-contained ones.
#[derive(Debug, Default)]
pub struct SegmentWriter {
    pending: BytesMut,
}

impl SegmentWriter {
    /// Adds one encoded frame; may flush full segments into `out`.
    pub fn push_frame(&mut self, frame: &[u8], compressed: bool, out: &mut BytesMut) {
        if frame.len() > MAX_PAYLOAD {
            self.flush(compressed, out);
            for chunk in frame.chunks(MAX_PAYLOAD) {
                encode_segment(chunk, false, compressed, out);
            }
            return;
        }
        if self.pending.len() + frame.len() > MAX_PAYLOAD {
            self.flush(compressed, out);
        }
        self.pending.extend_from_slice(frame);
    }

    /// Bytes of memory the writer holds between batches.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.pending.capacity()
    }

    /// Writes any buffered frames as one self-contained segment.
    pub fn flush(&mut self, compressed: bool, out: &mut BytesMut) {
        if !self.pending.is_empty() {
            encode_segment(&self.pending, true, compressed, out);
            // Dropped, not cleared: a burst grows it to a whole segment
            // (128 KiB), which an idle link would otherwise keep.
            self.pending = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_vectors_match_cassandra() {
        // Standard CRC32 check value (no seed) guards the table.
        assert_eq!(crc32_update(0, b"123456789"), 0xCBF4_3926);
        // Hand-computed from Cassandra's Crc.crc24 over an empty input.
        assert_eq!(crc24(&[]), CRC24_INIT);
        // A header of payload length 0 with the self-contained bit.
        let header = (1u32 << 17).to_le_bytes();
        assert_ne!(crc24(&header[..3]), crc24(&[0, 0, 0]));
    }

    #[test]
    fn segments_round_trip_both_formats() {
        for compressed in [false, true] {
            let payload: Vec<u8> = (0..1000u32).map(|i| (i % 7) as u8).collect();
            let mut out = BytesMut::new();
            encode_segment(&payload, true, compressed, &mut out);
            let seg = decode_segment(&mut out, compressed).unwrap().unwrap();
            assert!(seg.self_contained);
            assert_eq!(&seg.payload[..], &payload[..]);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn corrupted_segments_are_refused() {
        let mut out = BytesMut::new();
        encode_segment(b"hello", true, false, &mut out);
        let mut bad_header = out.clone();
        bad_header[0] ^= 1;
        assert!(matches!(
            decode_segment(&mut bad_header, false),
            Err(FrameError::SegmentHeaderCrc)
        ));
        let mut bad_payload = out.clone();
        bad_payload[7] ^= 1;
        assert!(matches!(
            decode_segment(&mut bad_payload, false),
            Err(FrameError::SegmentPayloadCrc)
        ));
        let mut partial = out.split_to(8);
        assert!(decode_segment(&mut partial, false).unwrap().is_none());
    }

    #[test]
    fn large_frames_span_segments() {
        let big = vec![7u8; MAX_PAYLOAD * 2 + 10];
        let mut w = SegmentWriter::default();
        let mut out = BytesMut::new();
        w.push_frame(b"small", false, &mut out);
        w.push_frame(&big, false, &mut out);
        w.flush(false, &mut out);
        let first = decode_segment(&mut out, false).unwrap().unwrap();
        assert!(first.self_contained);
        assert_eq!(&first.payload[..], b"small");
        let mut joined = BytesMut::new();
        for _ in 0..3 {
            let s = decode_segment(&mut out, false).unwrap().unwrap();
            assert!(!s.self_contained);
            joined.extend_from_slice(&s.payload);
        }
        assert_eq!(joined.len(), big.len());
        assert!(out.is_empty());
    }
}
