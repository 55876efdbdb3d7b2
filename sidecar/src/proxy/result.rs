//! Reading RESULT frames, the one home of their layout: the envelope a
//! response body may start with (tracing id, warnings, custom payload), the
//! metadata of a Rows result and of a Prepared result's bind variables
//! (column specs and their types), where the rows start, and the
//! `[applied]` column of a conditional write's answer. The peer rewriter,
//! the prepared-statement map and the shadow-read comparer read results
//! through these, each only as far as it needs.

use super::frame::{opcode, Frame};
use super::wire::{Reader, WireError};

/// RESULT kinds this module reads.
pub mod kind {
    pub const ROWS: i32 = 2;
    pub const PREPARED: i32 = 4;
}

/// Metadata flags.
mod metadata_flags {
    pub const GLOBAL_TABLES_SPEC: i32 = 0x0001;
    pub const HAS_MORE_PAGES: i32 = 0x0002;
    pub const NO_METADATA: i32 = 0x0004;
    /// Protocol v5: a new result metadata id follows.
    pub const METADATA_CHANGED: i32 = 0x0008;
}

/// Column specs read at most; a count beyond is not a real result.
pub const MAX_COLUMNS: i32 = 4096;

/// Type descriptions nested deeper than this are refused.
const MAX_TYPE_DEPTH: u32 = 64;

/// Skips the tracing id, warnings and custom payload a response may start
/// with, given the frame flags; the offset of what follows.
pub fn response_body_start(frame_flags: u8, body: &[u8]) -> Result<usize, WireError> {
    use super::frame::flags;
    let mut r = Reader::new(body);
    if frame_flags & flags::TRACING != 0 {
        r.skip(16)?;
    }
    if frame_flags & flags::WARNING != 0 {
        r.string_list()?;
    }
    if frame_flags & flags::CUSTOM_PAYLOAD != 0 {
        r.skip_bytes_map()?;
    }
    Ok(r.position())
}

/// Reads one `[option]` type description, nested options included; its
/// top-level type id.
pub fn read_type(r: &mut Reader<'_>) -> Result<u16, WireError> {
    read_type_at(r, 0)
}

fn read_type_at(r: &mut Reader<'_>, depth: u32) -> Result<u16, WireError> {
    if depth > MAX_TYPE_DEPTH {
        return Err(WireError::Truncated {
            offset: r.position(),
            needed: 0,
            available: 0,
        });
    }
    let id = r.u16()?;
    match id {
        // custom: its class name
        0x0000 => {
            r.string()?;
        }
        // list, set, vector's element... (list, set)
        0x0020 | 0x0022 => {
            read_type_at(r, depth + 1)?;
        }
        // map
        0x0021 => {
            read_type_at(r, depth + 1)?;
            read_type_at(r, depth + 1)?;
        }
        // UDT: keyspace, name, then named fields
        0x0030 => {
            r.string()?;
            r.string()?;
            for _ in 0..r.u16()? {
                r.string()?;
                read_type_at(r, depth + 1)?;
            }
        }
        // tuple
        0x0031 => {
            for _ in 0..r.u16()? {
                read_type_at(r, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(id)
}

/// The head of a Rows result's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsHeader {
    /// Column count as the result says (may be out of range in a foreign
    /// or broken body: only up to [`MAX_COLUMNS`] specs are read).
    pub columns: i32,
    /// Whether column specs were sent (no `NO_METADATA` flag).
    pub has_specs: bool,
}

/// Reads a Rows result's metadata from `r`, placed just after the kind:
/// flags, column count, paging state, the v5 new metadata id, then each
/// column spec, given to `column` as (name, type id). `r` is left at the
/// rows count.
pub fn read_rows_metadata(
    r: &mut Reader<'_>,
    version: u8,
    column: impl FnMut(&str, u16),
) -> Result<RowsHeader, WireError> {
    let flags = r.i32()?;
    let columns = r.i32()?;
    if flags & metadata_flags::HAS_MORE_PAGES != 0 {
        r.bytes()?;
    }
    if version >= 5 && flags & metadata_flags::METADATA_CHANGED != 0 {
        r.short_bytes()?;
    }
    let has_specs = flags & metadata_flags::NO_METADATA == 0;
    if has_specs {
        read_column_specs(r, flags, columns, column)?;
    }
    Ok(RowsHeader { columns, has_specs })
}

/// Reads a Prepared result's bind-variable metadata from `r`, placed just
/// after the ids: flags, column count, the partition-key indexes (v4+),
/// then each bind variable's spec, given to `column` as (name, type id).
pub fn read_prepared_metadata(
    r: &mut Reader<'_>,
    version: u8,
    column: impl FnMut(&str, u16),
) -> Result<(), WireError> {
    let flags = r.i32()?;
    let columns = r.i32()?;
    if version >= 4 {
        for _ in 0..r.i32()?.clamp(0, MAX_COLUMNS) {
            r.u16()?;
        }
    }
    read_column_specs(r, flags, columns, column)
}

fn read_column_specs(
    r: &mut Reader<'_>,
    flags: i32,
    columns: i32,
    mut column: impl FnMut(&str, u16),
) -> Result<(), WireError> {
    let global = flags & metadata_flags::GLOBAL_TABLES_SPEC != 0;
    if global {
        r.string()?;
        r.string()?;
    }
    for _ in 0..columns.clamp(0, MAX_COLUMNS) {
        if !global {
            r.string()?;
            r.string()?;
        }
        let name = r.string()?;
        let type_id = read_type(r)?;
        column(name, type_id);
    }
    Ok(())
}

/// Offset of the rows (`rows_count` onwards) of a RESULT Rows body.
fn rows_start(frame: &Frame) -> Option<usize> {
    if frame.opcode != opcode::RESULT {
        return None;
    }
    let start = response_body_start(frame.flags, &frame.body).ok()?;
    let mut r = Reader::new(&frame.body);
    r.skip(start).ok()?;
    if r.i32().ok()? != kind::ROWS {
        return None;
    }
    read_rows_metadata(&mut r, frame.version, |_, _| {}).ok()?;
    Some(r.position())
}

/// The rows of a RESULT Rows body, without metadata and paging state
/// (which legitimately differ between clusters).
pub fn rows_section(frame: &Frame) -> Option<&[u8]> {
    rows_start(frame).map(|at| &frame.body[at..])
}

/// `[applied]` of a conditional write's result (first column, first row).
pub fn lwt_applied(frame: &Frame) -> Option<bool> {
    let at = rows_start(frame)?;
    let mut r = Reader::new(&frame.body[at..]);
    if r.i32().ok()? < 1 {
        return None;
    }
    r.bytes().ok()?.and_then(|v| v.first()).map(|b| *b != 0)
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::proxy::wire::put_string;

    /// A Rows body: per-column specs (no global table spec), a paging
    /// state, a v5 new metadata id, nested types; then one row.
    fn rows_body(version: u8) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(kind::ROWS);
        b.put_i32(metadata_flags::HAS_MORE_PAGES | metadata_flags::METADATA_CHANGED);
        b.put_i32(3);
        b.put_i32(2);
        b.put_slice(b"pg");
        if version >= 5 {
            b.put_u16(1);
            b.put_u8(7);
        }
        let spec = |b: &mut BytesMut, name: &str| {
            put_string(b, "ks");
            put_string(b, "t");
            put_string(b, name);
        };
        spec(&mut b, "[applied]");
        b.put_u16(0x0004); // boolean
        spec(&mut b, "m");
        b.put_u16(0x0021); // map<text, frozen<udt>>
        b.put_u16(0x000D);
        b.put_u16(0x0030);
        put_string(&mut b, "ks");
        put_string(&mut b, "addr");
        b.put_u16(1);
        put_string(&mut b, "street");
        b.put_u16(0x0020); // list<tuple<int>>
        b.put_u16(0x0031);
        b.put_u16(1);
        b.put_u16(0x0009);
        spec(&mut b, "c");
        b.put_u16(0x0000); // custom
        put_string(&mut b, "org.example.Type");
        b.put_i32(1); // rows
        b.put_i32(1);
        b.put_u8(1);
        b.put_i32(-1);
        b.put_i32(-1);
        b
    }

    #[test]
    fn rows_metadata_gives_every_column_and_ends_at_the_rows() {
        for version in [4, 5] {
            let body = rows_body(version);
            let mut r = Reader::new(&body);
            assert_eq!(r.i32().unwrap(), kind::ROWS);
            let mut seen = Vec::new();
            let header =
                read_rows_metadata(&mut r, version, |n, t| seen.push((n.to_owned(), t))).unwrap();
            assert_eq!(
                header,
                RowsHeader {
                    columns: 3,
                    has_specs: true
                }
            );
            assert_eq!(
                seen,
                [
                    ("[applied]".into(), 0x0004),
                    ("m".into(), 0x0021),
                    ("c".into(), 0x0000)
                ]
            );
            assert_eq!(r.i32().unwrap(), 1, "left at the rows count");
            let frame = Frame {
                version,
                response: true,
                flags: 0,
                stream: 0,
                opcode: opcode::RESULT,
                body: body.freeze(),
            };
            assert_eq!(lwt_applied(&frame), Some(true));
            assert_eq!(rows_section(&frame).map(<[u8]>::len), Some(4 + 5 + 4 + 4));
        }
    }

    #[test]
    fn no_metadata_and_cut_bodies_are_told_apart() {
        let mut b = BytesMut::new();
        b.put_i32(metadata_flags::NO_METADATA);
        b.put_i32(2);
        let mut r = Reader::new(&b);
        let header = read_rows_metadata(&mut r, 4, |_, _| panic!("no specs")).unwrap();
        assert_eq!(
            header,
            RowsHeader {
                columns: 2,
                has_specs: false
            }
        );
        let full = rows_body(4);
        for cut in 5..full.len() - 17 {
            let mut r = Reader::new(&full[4..cut]);
            assert!(
                read_rows_metadata(&mut r, 4, |_, _| {}).is_err(),
                "cut at {cut}"
            );
        }
    }
}
