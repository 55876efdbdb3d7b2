//! CQL native protocol frames (envelopes): the 9-byte v3/v4/v5 header and
//! the message body, kept as raw bytes so the proxy forwards what it does not
//! need to understand.

use bytes::{BufMut, Bytes, BytesMut};

use super::compression::{Compression, CompressionError};

/// A map keyed by stream id: the requests in flight on a link, looked up
/// on every answer. Hashed with foldhash (randomly seeded), a fraction of
/// SipHash's cost for a two-byte key.
pub type StreamMap<V> = std::collections::HashMap<i16, V, foldhash::fast::RandomState>;

/// A set of stream ids ([`StreamMap`]'s hasher).
pub type StreamSet = std::collections::HashSet<i16, foldhash::fast::RandomState>;

pub const HEADER_LEN: usize = 9;
/// Lowest protocol version the proxy speaks.
pub const MIN_VERSION: u8 = 3;
/// Highest protocol version the proxy speaks.
pub const MAX_VERSION: u8 = 5;
const RESPONSE_BIT: u8 = 0x80;

pub mod flags {
    pub const COMPRESSED: u8 = 0x01;
    pub const TRACING: u8 = 0x02;
    pub const CUSTOM_PAYLOAD: u8 = 0x04;
    pub const WARNING: u8 = 0x08;
}

/// Message opcodes.
pub mod opcode {
    pub const ERROR: u8 = 0x00;
    pub const STARTUP: u8 = 0x01;
    pub const READY: u8 = 0x02;
    pub const AUTHENTICATE: u8 = 0x03;
    pub const OPTIONS: u8 = 0x05;
    pub const SUPPORTED: u8 = 0x06;
    pub const QUERY: u8 = 0x07;
    pub const RESULT: u8 = 0x08;
    pub const PREPARE: u8 = 0x09;
    pub const EXECUTE: u8 = 0x0A;
    pub const REGISTER: u8 = 0x0B;
    pub const EVENT: u8 = 0x0C;
    pub const BATCH: u8 = 0x0D;
    pub const AUTH_CHALLENGE: u8 = 0x0E;
    pub const AUTH_RESPONSE: u8 = 0x0F;
    pub const AUTH_SUCCESS: u8 = 0x10;

    pub fn is_known(op: u8) -> bool {
        op <= AUTH_SUCCESS && op != 0x04
    }

    pub fn name(op: u8) -> &'static str {
        match op {
            ERROR => "error",
            STARTUP => "startup",
            READY => "ready",
            AUTHENTICATE => "authenticate",
            OPTIONS => "options",
            SUPPORTED => "supported",
            QUERY => "query",
            RESULT => "result",
            PREPARE => "prepare",
            EXECUTE => "execute",
            REGISTER => "register",
            EVENT => "event",
            BATCH => "batch",
            AUTH_CHALLENGE => "auth_challenge",
            AUTH_RESPONSE => "auth_response",
            AUTH_SUCCESS => "auth_success",
            _ => "unknown",
        }
    }
}

/// Error codes of ERROR responses the proxy sends or looks at.
pub mod error_code {
    pub const SERVER_ERROR: i32 = 0x0000;
    pub const PROTOCOL_ERROR: i32 = 0x000A;
    pub const OVERLOADED: i32 = 0x1001;
    pub const WRITE_TIMEOUT: i32 = 0x1100;
    pub const WRITE_FAILURE: i32 = 0x1500;
    pub const INVALID: i32 = 0x2200;
    /// A CREATE found its object there already.
    pub const ALREADY_EXISTS: i32 = 0x2400;
    pub const UNPREPARED: i32 = 0x2500;
}

/// Why bytes could not be read as a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported protocol version {version} (this proxy accepts {min}..={max})")]
    UnsupportedVersion { version: u8, min: u8, max: u8 },
    #[error("frame of {length} bytes exceeds the {limit}-byte limit")]
    TooLarge { length: u64, limit: usize },
    #[error("negative frame length {0}")]
    NegativeLength(i32),
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("expected a {expected} frame, got direction bit for the other side")]
    WrongDirection { expected: &'static str },
    #[error("frame compressed but no compression was negotiated")]
    UnexpectedCompression,
    #[error("decompressing frame body: {0}")]
    Compression(#[from] CompressionError),
    #[error("segment header checksum mismatch")]
    SegmentHeaderCrc,
    #[error("segment payload checksum mismatch")]
    SegmentPayloadCrc,
    #[error("segment payload of {0} bytes exceeds the 131071-byte limit")]
    SegmentTooLarge(usize),
    #[error("self-contained segment ends inside a frame")]
    PartialFrameInSegment,
}

/// The fixed-size frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version, without the direction bit.
    pub version: u8,
    pub response: bool,
    pub flags: u8,
    pub stream: i16,
    pub opcode: u8,
    pub length: i32,
}

impl FrameHeader {
    /// Parses a header from at least [`HEADER_LEN`] bytes. Does not validate.
    pub fn parse(raw: &[u8; HEADER_LEN]) -> Self {
        Self {
            version: raw[0] & !RESPONSE_BIT,
            response: raw[0] & RESPONSE_BIT != 0,
            flags: raw[1],
            stream: i16::from_be_bytes([raw[2], raw[3]]),
            opcode: raw[4],
            length: i32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]),
        }
    }

    pub fn write(&self, out: &mut BytesMut) {
        let dir = if self.response { RESPONSE_BIT } else { 0 };
        out.put_u8(self.version | dir);
        out.put_u8(self.flags);
        out.put_i16(self.stream);
        out.put_u8(self.opcode);
        out.put_i32(self.length);
    }
}

/// One message: header fields and the uncompressed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub version: u8,
    pub response: bool,
    /// Header flags, with the compression bit cleared (bodies are kept
    /// uncompressed; each link compresses on the way out).
    pub flags: u8,
    pub stream: i16,
    pub opcode: u8,
    pub body: Bytes,
}

impl Frame {
    pub fn request(version: u8, stream: i16, opcode: u8, body: Bytes) -> Self {
        Self {
            version,
            response: false,
            flags: 0,
            stream,
            opcode,
            body,
        }
    }

    pub fn response(version: u8, stream: i16, opcode: u8, body: Bytes) -> Self {
        Self {
            version,
            response: true,
            flags: 0,
            stream,
            opcode,
            body,
        }
    }

    /// An ERROR response with `code` and `message`.
    pub fn error(version: u8, stream: i16, code: i32, message: &str) -> Self {
        let mut body = BytesMut::with_capacity(6 + message.len());
        body.put_i32(code);
        super::wire::put_string(&mut body, message);
        Self::response(version, stream, opcode::ERROR, body.freeze())
    }

    /// The protocol error that makes a driver retry with a lower version.
    pub fn unsupported_version(reply_version: u8, stream: i16, asked: u8, max: u8) -> Self {
        let versions: Vec<String> = (MIN_VERSION..=max).map(|v| format!("{v}/v{v}")).collect();
        let message = format!(
            "Invalid or unsupported protocol version ({asked}); supported versions are ({})",
            versions.join(",")
        );
        Self::error(reply_version, stream, error_code::PROTOCOL_ERROR, &message)
    }

    /// Error code of an ERROR frame.
    pub fn error_code(&self) -> Option<i32> {
        if self.opcode != opcode::ERROR || self.body.len() < 4 {
            return None;
        }
        Some(i32::from_be_bytes([
            self.body[0],
            self.body[1],
            self.body[2],
            self.body[3],
        ]))
    }

    /// Encoded length (header + uncompressed body).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Appends the frame in v3/v4 form (or as a v5 envelope, uncompressed),
    /// compressing the body with `compression` when it is not `None`.
    pub fn encode(&self, compression: Compression, out: &mut BytesMut) {
        // Room for the whole frame at once: a link's writer starts each
        // flush with an empty buffer, which would otherwise grow three
        // times (twice for the header's fields, once for the body).
        out.reserve(HEADER_LEN + self.body.len());
        let start = out.len();
        let mut header = FrameHeader {
            version: self.version,
            response: self.response,
            flags: self.flags & !flags::COMPRESSED,
            stream: self.stream,
            opcode: self.opcode,
            length: 0,
        };
        if compression != Compression::None && !self.body.is_empty() {
            header.flags |= flags::COMPRESSED;
        }
        header.write(out);
        let body_start = out.len();
        if header.flags & flags::COMPRESSED != 0 {
            compression.compress_frame_body(&self.body, out);
        } else {
            out.put_slice(&self.body);
        }
        let len = (out.len() - body_start) as i32;
        out[start + 5..start + 9].copy_from_slice(&len.to_be_bytes());
    }
}

/// Rules a decoder applies to incoming frames.
#[derive(Debug, Clone, Copy)]
pub struct DecodeRules {
    /// Largest body accepted, compressed or not.
    pub max_frame_bytes: usize,
    /// Highest version accepted (the `--protocol-version` cap on the client side).
    pub max_version: u8,
    /// Whether frames must be responses (upstream links) or requests.
    pub expect_response: bool,
}

/// Decodes one v3/v4-style frame from the front of `buf`, if complete.
/// `compression` is the link's negotiated algorithm, used when the frame's
/// compression flag is set.
pub fn decode_frame(
    buf: &mut BytesMut,
    rules: &DecodeRules,
    compression: Compression,
) -> Result<Option<Frame>, FrameError> {
    decode(buf, rules, Some(compression))
}

/// Decodes one envelope from the payload of v5 segments. Compression is
/// the segments' business there: an envelope's compression flag means
/// nothing and is ignored, as Cassandra ignores it (the DataStax Java
/// driver 4.17 sets it on plain envelopes inside lz4 segments).
pub fn decode_envelope(
    buf: &mut BytesMut,
    rules: &DecodeRules,
) -> Result<Option<Frame>, FrameError> {
    decode(buf, rules, None)
}

/// `compression`: the link's algorithm for flagged frames; `None` inside
/// segments, where the flag is ignored.
fn decode(
    buf: &mut BytesMut,
    rules: &DecodeRules,
    compression: Option<Compression>,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        // A version byte alone is enough to refuse an unsupported version early.
        if let Some(&first) = buf.first() {
            check_version(first & !RESPONSE_BIT, rules)?;
        }
        return Ok(None);
    }
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&buf[..HEADER_LEN]);
    let header = FrameHeader::parse(&raw);
    check_version(header.version, rules)?;
    if header.response != rules.expect_response {
        return Err(FrameError::WrongDirection {
            expected: if rules.expect_response {
                "response"
            } else {
                "request"
            },
        });
    }
    if header.length < 0 {
        return Err(FrameError::NegativeLength(header.length));
    }
    let length = header.length as usize;
    if length > rules.max_frame_bytes {
        return Err(FrameError::TooLarge {
            length: length as u64,
            limit: rules.max_frame_bytes,
        });
    }
    if !opcode::is_known(header.opcode) {
        // Consume it so the caller can answer and keep reading if it wants.
        return Err(FrameError::UnknownOpcode(header.opcode));
    }
    if buf.len() < HEADER_LEN + length {
        buf.reserve(HEADER_LEN + length - buf.len());
        return Ok(None);
    }
    let mut whole = buf.split_to(HEADER_LEN + length);
    let body = whole.split_off(HEADER_LEN);
    let body = match compression {
        Some(c) if header.flags & flags::COMPRESSED != 0 => {
            if c == Compression::None {
                return Err(FrameError::UnexpectedCompression);
            }
            c.decompress_frame_body(&body, rules.max_frame_bytes)?
                .freeze()
        }
        _ => body.freeze(),
    };
    Ok(Some(Frame {
        version: header.version,
        response: header.response,
        flags: header.flags & !flags::COMPRESSED,
        stream: header.stream,
        opcode: header.opcode,
        body,
    }))
}

fn check_version(version: u8, rules: &DecodeRules) -> Result<(), FrameError> {
    if !(MIN_VERSION..=rules.max_version).contains(&version) {
        return Err(FrameError::UnsupportedVersion {
            version,
            min: MIN_VERSION,
            max: rules.max_version,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> DecodeRules {
        DecodeRules {
            max_frame_bytes: 1024,
            max_version: 5,
            expect_response: false,
        }
    }

    #[test]
    fn decodes_hand_built_options_frame() {
        // v4 OPTIONS, stream 7, empty body.
        let mut buf = BytesMut::from(&[0x04, 0x00, 0x00, 0x07, 0x05, 0, 0, 0, 0, 0xAA][..]);
        let f = decode_frame(&mut buf, &rules(), Compression::None)
            .unwrap()
            .unwrap();
        assert_eq!((f.version, f.stream, f.opcode), (4, 7, opcode::OPTIONS));
        assert!(f.body.is_empty());
        assert_eq!(&buf[..], &[0xAA]);
    }

    #[test]
    fn waits_for_partial_frames() {
        let mut buf = BytesMut::from(&[0x04, 0x00, 0x00, 0x01, 0x07, 0, 0, 0, 4, 1, 2][..]);
        assert!(decode_frame(&mut buf, &rules(), Compression::None)
            .unwrap()
            .is_none());
        buf.extend_from_slice(&[3, 4]);
        let f = decode_frame(&mut buf, &rules(), Compression::None)
            .unwrap()
            .unwrap();
        assert_eq!(&f.body[..], &[1, 2, 3, 4]);
    }

    #[test]
    fn refuses_bad_frames() {
        let cases: Vec<(&[u8], &str)> = vec![
            (&[0x02, 0, 0, 1, 5, 0, 0, 0, 0], "version"),
            (&[0x06, 0, 0, 1, 5, 0, 0, 0, 0], "version"),
            (&[0x04, 0, 0, 1, 5, 0, 0, 0x10, 0], "too large"),
            (&[0x04, 0, 0, 1, 5, 0xff, 0xff, 0xff, 0xff], "negative"),
            (&[0x04, 0, 0, 1, 0x42, 0, 0, 0, 0], "opcode"),
            (&[0x84, 0, 0, 1, 5, 0, 0, 0, 0], "direction"),
            (&[0x04, 0x01, 0, 1, 7, 0, 0, 0, 1, 0], "compression"),
        ];
        for (bytes, what) in cases {
            let mut buf = BytesMut::from(bytes);
            assert!(
                decode_frame(&mut buf, &rules(), Compression::None).is_err(),
                "{what}"
            );
        }
        // A lone version byte above the cap is refused at once.
        let mut buf = BytesMut::from(&[0x05][..]);
        let capped = DecodeRules {
            max_version: 4,
            ..rules()
        };
        assert!(matches!(
            decode_frame(&mut buf, &capped, Compression::None),
            Err(FrameError::UnsupportedVersion { version: 5, .. })
        ));
    }

    #[test]
    fn compressed_frames_round_trip() {
        let body: Vec<u8> = b"SELECT * FROM ks.t WHERE k = 1"
            .iter()
            .cycle()
            .take(600)
            .copied()
            .collect();
        for algo in [Compression::Lz4, Compression::Snappy] {
            let frame = Frame::request(4, 3, opcode::QUERY, Bytes::from(body.clone()));
            let mut out = BytesMut::new();
            frame.encode(algo, &mut out);
            assert_eq!(out[1] & flags::COMPRESSED, flags::COMPRESSED);
            assert!(out.len() < frame.encoded_len());
            let back = decode_frame(&mut out, &rules(), algo).unwrap().unwrap();
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn unsupported_version_message_makes_drivers_downgrade() {
        let f = Frame::unsupported_version(4, 0, 5, 4);
        assert_eq!(f.error_code(), Some(error_code::PROTOCOL_ERROR));
        let text = String::from_utf8_lossy(&f.body[6..]).into_owned();
        assert!(
            text.contains("Invalid or unsupported protocol version (5)"),
            "{text}"
        );
    }
}
