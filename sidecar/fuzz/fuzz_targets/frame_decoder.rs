//! Arbitrary bytes into every framing a link can be in: v3/v4 frames with
//! no, lz4 or snappy compression, v5 segments with and without lz4. The
//! decoder must return frames or errors, never panic or allocate unbounded.
#![no_main]

use bytes::BytesMut;
use ferry_sidecar::proxy::codec::{FrameDecoder, LinkState};
use ferry_sidecar::proxy::compression::Compression;
use ferry_sidecar::proxy::frame::DecodeRules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let state = LinkState::default();
    state.set_compression(match mode % 3 {
        0 => Compression::None,
        1 => Compression::Lz4,
        _ => Compression::Snappy,
    });
    if mode & 0x04 != 0 {
        state.set_segmented_in();
    }
    let mut decoder = FrameDecoder::new(DecodeRules {
        max_frame_bytes: 1 << 20,
        max_version: 5,
        expect_response: mode & 0x08 != 0,
    });
    // Feed in two chunks to exercise partial reads.
    let split = rest.len() / 2;
    let mut buf = BytesMut::from(&rest[..split]);
    for chunk in [&rest[split..], &[][..]] {
        loop {
            match decoder.decode(&state, &mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        buf.extend_from_slice(chunk);
    }
});
