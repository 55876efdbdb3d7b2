//! Reading the parts of QUERY, PREPARE, EXECUTE and BATCH bodies the proxy
//! needs (statement text, prepared ids, the default-timestamp flag) and
//! splicing in its edits: a client-side timestamp, the target's prepared ids.
//! Everything else in a body is copied byte for byte.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{flags, Frame};
use super::wire::{Reader, WireError};

/// Query-parameter flags (QUERY, EXECUTE) and BATCH flags.
pub mod param_flags {
    pub const VALUES: u32 = 0x01;
    pub const SKIP_METADATA: u32 = 0x02;
    pub const PAGE_SIZE: u32 = 0x04;
    pub const PAGING_STATE: u32 = 0x08;
    pub const SERIAL_CONSISTENCY: u32 = 0x10;
    pub const DEFAULT_TIMESTAMP: u32 = 0x20;
    pub const NAMES_FOR_VALUES: u32 = 0x40;
    pub const KEYSPACE: u32 = 0x80;
    /// v5: the request says what "now" is, in seconds (TTLs count from it).
    pub const NOW_IN_SECONDS: u32 = 0x100;
}

/// Where the flags are and where a default timestamp goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsLayout {
    pub flags_at: usize,
    /// v5 flags are an `[int]`, earlier versions a byte.
    pub flags_wide: bool,
    pub flags: u32,
    /// Offset where the timestamp is (or would be inserted).
    pub timestamp_at: usize,
    /// v5 per-request keyspace.
    pub keyspace: Option<String>,
    /// Byte range of the `[short n][value]*` section, when the values flag is set.
    pub values: Option<(usize, usize)>,
}

impl ParamsLayout {
    pub fn has_timestamp(&self) -> bool {
        self.flags & param_flags::DEFAULT_TIMESTAMP != 0
    }
}

/// Offset at which the message proper starts (after a custom payload).
pub fn body_start(frame: &Frame) -> Result<usize, WireError> {
    if frame.flags & flags::CUSTOM_PAYLOAD == 0 {
        return Ok(0);
    }
    let mut r = Reader::new(&frame.body);
    r.skip_bytes_map()?;
    Ok(r.position())
}

fn read_flags(r: &mut Reader<'_>, version: u8) -> Result<(usize, bool, u32), WireError> {
    let at = r.position();
    if version >= 5 {
        Ok((at, true, r.i32()? as u32))
    } else {
        Ok((at, false, u32::from(r.u8()?)))
    }
}

/// Parses `<consistency><flags>...` up to the timestamp position.
fn parse_params(r: &mut Reader<'_>, version: u8) -> Result<ParamsLayout, WireError> {
    r.u16()?; // consistency
    let (flags_at, flags_wide, f) = read_flags(r, version)?;
    let mut values = None;
    if f & param_flags::VALUES != 0 {
        let start = r.position();
        let n = r.u16()?;
        for _ in 0..n {
            if f & param_flags::NAMES_FOR_VALUES != 0 {
                r.string()?;
            }
            r.bytes()?;
        }
        values = Some((start, r.position()));
    }
    if f & param_flags::PAGE_SIZE != 0 {
        r.i32()?;
    }
    if f & param_flags::PAGING_STATE != 0 {
        r.bytes()?;
    }
    if f & param_flags::SERIAL_CONSISTENCY != 0 {
        r.u16()?;
    }
    let timestamp_at = r.position();
    let mut keyspace = None;
    if version >= 5 {
        if f & param_flags::DEFAULT_TIMESTAMP != 0 {
            r.i64()?;
        }
        if f & param_flags::KEYSPACE != 0 {
            keyspace = Some(r.string()?.to_owned());
        }
    }
    Ok(ParamsLayout {
        flags_at,
        flags_wide,
        flags: f,
        timestamp_at,
        keyspace,
        values,
    })
}

/// A QUERY body.
#[derive(Debug, Clone)]
pub struct QueryRequest<'a> {
    pub query: &'a str,
    pub params: ParamsLayout,
}

pub fn parse_query(frame: &Frame) -> Result<QueryRequest<'_>, WireError> {
    let mut r = Reader::new(&frame.body);
    r.skip(body_start(frame)?)?;
    let query = r.long_string()?;
    let params = parse_params(&mut r, frame.version)?;
    Ok(QueryRequest { query, params })
}

/// A PREPARE body.
#[derive(Debug, Clone)]
pub struct PrepareRequest<'a> {
    pub query: &'a str,
    pub keyspace: Option<String>,
}

pub fn parse_prepare(frame: &Frame) -> Result<PrepareRequest<'_>, WireError> {
    let mut r = Reader::new(&frame.body);
    r.skip(body_start(frame)?)?;
    let query = r.long_string()?;
    let mut keyspace = None;
    if frame.version >= 5 && !r.is_empty() {
        let f = r.i32()?;
        if f & 0x01 != 0 {
            keyspace = Some(r.string()?.to_owned());
        }
    }
    Ok(PrepareRequest { query, keyspace })
}

/// An EXECUTE body.
#[derive(Debug, Clone)]
pub struct ExecuteRequest<'a> {
    pub id: &'a [u8],
    /// Byte range of `[short bytes] id` (length prefix included).
    pub id_range: (usize, usize),
    /// v5: byte range of `[short bytes] result_metadata_id`.
    pub result_metadata_id_range: Option<(usize, usize)>,
    pub params: ParamsLayout,
}

pub fn parse_execute(frame: &Frame) -> Result<ExecuteRequest<'_>, WireError> {
    let mut r = Reader::new(&frame.body);
    r.skip(body_start(frame)?)?;
    let start = r.position();
    let id = r.short_bytes()?;
    let id_range = (start, r.position());
    let result_metadata_id_range = if frame.version >= 5 {
        let s = r.position();
        r.short_bytes()?;
        Some((s, r.position()))
    } else {
        None
    };
    let params = parse_params(&mut r, frame.version)?;
    Ok(ExecuteRequest {
        id,
        id_range,
        result_metadata_id_range,
        params,
    })
}

/// One statement of a BATCH.
#[derive(Debug, Clone)]
pub enum BatchChild<'a> {
    Query {
        text: &'a str,
        /// Byte range of the `[long string]` text (length included).
        range: (usize, usize),
        /// Byte range of the child's `[short n][value]*` section.
        values: (usize, usize),
    },
    Prepared {
        id: &'a [u8],
        /// Byte range of the `[short bytes]` id.
        range: (usize, usize),
        /// Byte range of the child's `[short n][value]*` section.
        values: (usize, usize),
    },
}

/// A BATCH body.
#[derive(Debug, Clone)]
pub struct BatchRequest<'a> {
    /// 0 logged, 1 unlogged, 2 counter.
    pub batch_type: u8,
    pub children: Vec<BatchChild<'a>>,
    pub params: ParamsLayout,
}

pub const COUNTER_BATCH: u8 = 2;

pub fn parse_batch(frame: &Frame) -> Result<BatchRequest<'_>, WireError> {
    let mut r = Reader::new(&frame.body);
    r.skip(body_start(frame)?)?;
    let batch_type = r.u8()?;
    let n = r.u16()?;
    let mut children = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let kind = r.u8()?;
        let start = r.position();
        let statement = if kind == 0 {
            Ok(r.long_string()?)
        } else {
            Err(r.short_bytes()?)
        };
        let range = (start, r.position());
        let values_at = r.position();
        let values = r.u16()?;
        for _ in 0..values {
            r.bytes()?;
        }
        let values = (values_at, r.position());
        children.push(match statement {
            Ok(text) => BatchChild::Query {
                text,
                range,
                values,
            },
            Err(id) => BatchChild::Prepared { id, range, values },
        });
    }
    r.u16()?; // consistency
    let (flags_at, flags_wide, f) = read_flags(&mut r, frame.version)?;
    if f & param_flags::SERIAL_CONSISTENCY != 0 {
        r.u16()?;
    }
    let timestamp_at = r.position();
    let mut keyspace = None;
    if frame.version >= 5 {
        if f & param_flags::DEFAULT_TIMESTAMP != 0 {
            r.i64()?;
        }
        if f & param_flags::KEYSPACE != 0 {
            keyspace = Some(r.string()?.to_owned());
        }
    }
    Ok(BatchRequest {
        batch_type,
        children,
        params: ParamsLayout {
            flags_at,
            flags_wide,
            flags: f,
            timestamp_at,
            keyspace,
            values: None,
        },
    })
}

/// Copies `body` up to its flags, then the flags with `flag` added; returns
/// the offset in `body` just past the flags.
fn put_up_to_flags(out: &mut BytesMut, body: &[u8], layout: &ParamsLayout, flag: u32) -> usize {
    let new_flags = layout.flags | flag;
    out.put_slice(&body[..layout.flags_at]);
    if layout.flags_wide {
        out.put_u32(new_flags);
        layout.flags_at + 4
    } else {
        out.put_u8(new_flags as u8);
        layout.flags_at + 1
    }
}

/// Returns `body` with a default timestamp (microseconds) set, when the
/// layout shows none. The caller keeps the original when it had one.
pub fn with_timestamp(body: &[u8], layout: &ParamsLayout, micros: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 8);
    let flags_end = put_up_to_flags(&mut out, body, layout, param_flags::DEFAULT_TIMESTAMP);
    out.put_slice(&body[flags_end..layout.timestamp_at]);
    out.put_i64(micros);
    out.put_slice(&body[layout.timestamp_at..]);
    out.freeze()
}

/// Returns `body` with its values section replaced by `section` (a
/// `[short n][value]*`), setting the values flag when it was not set.
pub fn with_values(body: &[u8], layout: &ParamsLayout, section: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + section.len());
    match layout.values {
        Some((start, end)) => {
            out.put_slice(&body[..start]);
            out.put_slice(section);
            out.put_slice(&body[end..]);
        }
        None => {
            let flags_end = put_up_to_flags(&mut out, body, layout, param_flags::VALUES);
            out.put_slice(section);
            out.put_slice(&body[flags_end..]);
        }
    }
    out.freeze()
}

/// A byte range of a body and what replaces it.
pub type RangeEdit = ((usize, usize), Bytes);

/// Returns `body` with the given byte ranges replaced, in order. Ranges
/// must be sorted and non-overlapping.
pub fn replace_ranges(body: &[u8], edits: &[RangeEdit]) -> Bytes {
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + extra);
    let mut at = 0;
    for ((start, end), bytes) in edits {
        out.put_slice(&body[at..*start]);
        out.put_slice(bytes);
        at = *end;
    }
    out.put_slice(&body[at..]);
    out.freeze()
}

/// Returns `body` with the given `[short bytes]` ranges replaced, in order.
/// Ranges must be sorted and non-overlapping.
/// One `[short bytes]` of a body to replace: its byte range (length prefix
/// included) and the new bytes.
pub type ShortBytesEdit<'a> = ((usize, usize), &'a [u8]);

pub fn replace_short_bytes(body: &[u8], edits: &[ShortBytesEdit<'_>]) -> Bytes {
    let extra: usize = edits.iter().map(|(_, b)| b.len() + 2).sum();
    let mut out = BytesMut::with_capacity(body.len() + extra);
    let mut at = 0;
    for ((start, end), bytes) in edits {
        out.put_slice(&body[at..*start]);
        out.put_u16(bytes.len() as u16);
        out.put_slice(bytes);
        at = *end;
    }
    out.put_slice(&body[at..]);
    out.freeze()
}

/// The current time in microseconds since the epoch, strictly increasing
/// within this process so two writes from one proxy never share a timestamp.
pub fn next_timestamp_micros() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proxy::frame::opcode;
    use crate::proxy::wire::put_long_string;

    /// A QUERY body as a v4 driver builds it.
    pub fn query_body(version: u8, text: &str, flags: u32, values: &[&[u8]]) -> Bytes {
        let mut b = BytesMut::new();
        put_long_string(&mut b, text);
        b.put_u16(1); // ONE
        if version >= 5 {
            b.put_u32(flags);
        } else {
            b.put_u8(flags as u8);
        }
        if flags & param_flags::VALUES != 0 {
            b.put_u16(values.len() as u16);
            for v in values {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
        }
        if flags & param_flags::PAGE_SIZE != 0 {
            b.put_i32(5000);
        }
        if flags & param_flags::SERIAL_CONSISTENCY != 0 {
            b.put_u16(8);
        }
        if flags & param_flags::DEFAULT_TIMESTAMP != 0 {
            b.put_i64(42);
        }
        b.freeze()
    }

    #[test]
    fn replaces_or_adds_the_values_section() {
        let section = |values: &[&[u8]]| {
            let mut b = BytesMut::new();
            b.put_u16(values.len() as u16);
            for v in values {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
            b.freeze()
        };
        for version in [4u8, 5] {
            let text = "INSERT INTO t (k, v) VALUES (?, ?)";
            let with = param_flags::VALUES | param_flags::PAGE_SIZE;
            // A values section is replaced.
            let body = query_body(version, text, with, &[b"a"]);
            let frame = Frame::request(version, 1, opcode::QUERY, body.clone());
            let layout = parse_query(&frame).unwrap().params;
            let edited = with_values(&body, &layout, &section(&[b"a", b"bb"]));
            assert_eq!(
                edited,
                query_body(version, text, with, &[b"a", b"bb"]),
                "v{version}"
            );
            // Without one, it is added and the flag set.
            let body = query_body(version, text, param_flags::PAGE_SIZE, &[]);
            let frame = Frame::request(version, 1, opcode::QUERY, body.clone());
            let layout = parse_query(&frame).unwrap().params;
            assert_eq!(layout.values, None);
            let edited = with_values(&body, &layout, &section(&[b"x"]));
            assert_eq!(
                edited,
                query_body(version, text, with, &[b"x"]),
                "v{version}"
            );
        }
    }

    #[test]
    fn injects_timestamp_into_v4_and_v5_queries() {
        for version in [4u8, 5] {
            let flags =
                param_flags::VALUES | param_flags::PAGE_SIZE | param_flags::SERIAL_CONSISTENCY;
            let body = query_body(
                version,
                "INSERT INTO t (k) VALUES (?)",
                flags,
                &[b"\x00\x01"],
            );
            let frame = Frame::request(version, 1, opcode::QUERY, body.clone());
            let q = parse_query(&frame).unwrap();
            assert!(!q.params.has_timestamp());
            let edited = with_timestamp(&body, &q.params, 42);
            let expected = query_body(
                version,
                "INSERT INTO t (k) VALUES (?)",
                flags | param_flags::DEFAULT_TIMESTAMP,
                &[b"\x00\x01"],
            );
            assert_eq!(edited, expected, "v{version}");
            let again = Frame::request(version, 1, opcode::QUERY, edited);
            assert!(parse_query(&again).unwrap().params.has_timestamp());
        }
    }

    #[test]
    fn parses_batch_children_and_rewrites_ids() {
        let mut b = BytesMut::new();
        b.put_u8(1);
        b.put_u16(2);
        b.put_u8(0);
        put_long_string(&mut b, "INSERT INTO t (k) VALUES (1)");
        b.put_u16(0);
        b.put_u8(1);
        b.put_u16(2);
        b.put_slice(&[0xAB, 0xCD]);
        b.put_u16(1);
        b.put_i32(-1);
        b.put_u16(1);
        b.put_u8(0);
        let body = b.freeze();
        let frame = Frame::request(4, 1, opcode::BATCH, body.clone());
        let batch = parse_batch(&frame).unwrap();
        assert_eq!(batch.children.len(), 2);
        let BatchChild::Prepared { id, range, .. } = batch.children[1].clone() else {
            panic!("second child should be prepared");
        };
        assert_eq!(id, &[0xAB, 0xCD]);
        let rewritten = replace_short_bytes(&body, &[(range, &[1, 2, 3])]);
        let f2 = Frame::request(4, 1, opcode::BATCH, rewritten.clone());
        let b2 = parse_batch(&f2).unwrap();
        assert!(matches!(
            b2.children[1],
            BatchChild::Prepared { id: &[1, 2, 3], .. }
        ));
        let with_ts = with_timestamp(&rewritten, &b2.params, 7);
        let f3 = Frame::request(4, 1, opcode::BATCH, with_ts);
        assert!(parse_batch(&f3).unwrap().params.has_timestamp());
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics() {
        let body = query_body(4, "SELECT 1", param_flags::VALUES, &[b"abc"]);
        for cut in 0..body.len() {
            let f = Frame::request(4, 1, opcode::QUERY, body.slice(..cut));
            assert!(parse_query(&f).is_err(), "cut at {cut}");
            let f = Frame::request(4, 1, opcode::EXECUTE, body.slice(..cut));
            let _ = parse_execute(&f);
            let f = Frame::request(4, 1, opcode::BATCH, body.slice(..cut));
            let _ = parse_batch(&f);
        }
    }

    #[test]
    fn timestamps_strictly_increase() {
        let a = next_timestamp_micros();
        let b = next_timestamp_micros();
        assert!(b > a);
    }
}
