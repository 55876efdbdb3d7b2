//! The UUIDs the proxy generates in place of `now()` and `uuid()`: one
//! value for both clusters.

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

fn format_uuid(hi: u64, lo: u64) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

/// A version-1 (time-based) UUID for `micros` since the Unix epoch.
pub fn timeuuid(micros: i64) -> String {
    let (hi, lo) = timeuuid_parts(micros);
    format_uuid(hi, lo)
}

/// A version-1 UUID for `micros` as its two big-endian halves.
pub fn timeuuid_parts(micros: i64) -> (u64, u64) {
    // 100 ns intervals since 1582-10-15.
    let ts = (micros.max(0) as u64) * 10 + 0x01B2_1DD2_1381_4000;
    let time_low = ts & 0xFFFF_FFFF;
    let time_mid = (ts >> 32) & 0xFFFF;
    let time_hi = ((ts >> 48) & 0x0FFF) | 0x1000;
    let hi = time_low << 32 | time_mid << 16 | time_hi;
    let r = random_u64();
    let clock_seq = ((r >> 48) & 0x3FFF) | 0x8000;
    let node = (r & 0xFFFF_FFFF_FFFF) | 0x0100_0000_0000;
    (hi, clock_seq << 48 | node)
}

/// A random (version 4) UUID.
pub fn random_uuid() -> String {
    let (hi, lo) = random_uuid_parts();
    format_uuid(hi, lo)
}

/// A random (version 4) UUID as its two big-endian halves.
pub fn random_uuid_parts() -> (u64, u64) {
    let hi = (random_u64() & !0xF000) | 0x4000;
    let lo = (random_u64() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    (hi, lo)
}
