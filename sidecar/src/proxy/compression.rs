//! Body compression: lz4 and snappy frame compression (protocol v3/v4) and
//! the raw lz4 blocks of v5 segments.

use bytes::{BufMut, BytesMut};

/// The algorithm a connection negotiated in its STARTUP `COMPRESSION` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Snappy,
}

#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error("unknown compression algorithm {0:?}")]
    Unknown(String),
    #[error("lz4 body shorter than its 4-byte length prefix")]
    Lz4MissingLength,
    #[error("lz4 body claims {claimed} uncompressed bytes, more than the {limit}-byte limit")]
    TooLarge { claimed: usize, limit: usize },
    #[error("lz4: {0}")]
    Lz4(#[from] lz4_flex::block::DecompressError),
    #[error("lz4 body decompressed to {got} bytes, its prefix said {expected}")]
    Lz4Length { expected: usize, got: usize },
    #[error("snappy: {0}")]
    Snappy(#[from] snap::Error),
}

impl Compression {
    /// Parses the STARTUP option value (case-insensitive, as Cassandra does).
    pub fn from_option(value: Option<&str>) -> Result<Self, CompressionError> {
        match value.map(str::to_ascii_lowercase).as_deref() {
            None | Some("") => Ok(Self::None),
            Some("lz4") => Ok(Self::Lz4),
            Some("snappy") => Ok(Self::Snappy),
            Some(other) => Err(CompressionError::Unknown(other.to_owned())),
        }
    }

    /// Compresses a v3/v4 frame body. lz4 bodies carry their uncompressed
    /// length as a big-endian `[int]` prefix (Cassandra's format).
    pub fn compress_frame_body(self, body: &[u8], out: &mut BytesMut) {
        match self {
            Self::None => out.put_slice(body),
            Self::Lz4 => {
                out.put_u32(body.len() as u32);
                let start = out.len();
                let bound = lz4_flex::block::get_maximum_output_size(body.len());
                out.resize(start + bound, 0);
                // The buffer is sized to the bound, so compression cannot fail.
                let written = lz4_flex::block::compress_into(body, &mut out[start..]).unwrap_or(0);
                out.truncate(start + written);
            }
            Self::Snappy => {
                let start = out.len();
                let bound = snap::raw::max_compress_len(body.len());
                out.resize(start + bound, 0);
                let written = snap::raw::Encoder::new()
                    .compress(body, &mut out[start..])
                    .unwrap_or(0);
                out.truncate(start + written);
            }
        }
    }

    /// Decompresses a v3/v4 frame body, refusing results over `limit` bytes.
    pub fn decompress_frame_body(
        self,
        body: &[u8],
        limit: usize,
    ) -> Result<BytesMut, CompressionError> {
        match self {
            Self::None => Ok(BytesMut::from(body)),
            Self::Lz4 => {
                if body.len() < 4 {
                    return Err(CompressionError::Lz4MissingLength);
                }
                let expected = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
                lz4_block_decompress(&body[4..], expected, limit)
            }
            Self::Snappy => {
                let claimed = snap::raw::decompress_len(body)?;
                if claimed > limit {
                    return Err(CompressionError::TooLarge { claimed, limit });
                }
                let mut out = BytesMut::zeroed(claimed);
                let n = snap::raw::Decoder::new().decompress(body, &mut out)?;
                out.truncate(n);
                Ok(out)
            }
        }
    }
}

/// Decompresses a raw lz4 block of known uncompressed length (v5 segments,
/// and the v4 body after its length prefix).
pub fn lz4_block_decompress(
    compressed: &[u8],
    expected: usize,
    limit: usize,
) -> Result<BytesMut, CompressionError> {
    if expected > limit {
        return Err(CompressionError::TooLarge {
            claimed: expected,
            limit,
        });
    }
    let mut out = BytesMut::zeroed(expected);
    let got = lz4_flex::block::decompress_into(compressed, &mut out)?;
    if got != expected {
        return Err(CompressionError::Lz4Length { expected, got });
    }
    Ok(out)
}

/// Compresses a raw lz4 block (no length prefix), appending to `out`.
pub fn lz4_block_compress(input: &[u8], out: &mut BytesMut) {
    let start = out.len();
    out.resize(
        start + lz4_flex::block::get_maximum_output_size(input.len()),
        0,
    );
    let written = lz4_flex::block::compress_into(input, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_bodies_round_trip() {
        let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        for algo in [Compression::None, Compression::Lz4, Compression::Snappy] {
            let mut out = BytesMut::new();
            algo.compress_frame_body(&body, &mut out);
            let back = algo.decompress_frame_body(&out, 1 << 20).unwrap();
            assert_eq!(&back[..], &body[..], "{algo:?}");
        }
    }

    #[test]
    fn lz4_rejects_lies_and_bombs() {
        // Claims 1 GiB uncompressed: refused before allocating.
        let bomb = [0x40, 0, 0, 0, 0x10, 0];
        assert!(matches!(
            Compression::Lz4.decompress_frame_body(&bomb, 1 << 20),
            Err(CompressionError::TooLarge { .. })
        ));
        assert!(Compression::Lz4
            .decompress_frame_body(&[0, 0], 100)
            .is_err());
        assert!(Compression::Snappy
            .decompress_frame_body(&[0xff, 0xff, 0xff], 100)
            .is_err());
        assert!(Compression::from_option(Some("zstd")).is_err());
        assert_eq!(
            Compression::from_option(Some("LZ4")).unwrap(),
            Compression::Lz4
        );
    }
}
