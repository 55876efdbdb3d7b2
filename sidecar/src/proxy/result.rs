//! Reading RESULT frames: where the rows of a Rows result start (past its
//! metadata), and the `[applied]` column of a conditional write's answer.

use super::frame::{opcode, Frame};
use super::peers::response_body_start;
use super::wire::Reader;

/// Offset of the rows (`rows_count` onwards) of a RESULT Rows body.
fn rows_start(frame: &Frame) -> Option<usize> {
    if frame.opcode != opcode::RESULT {
        return None;
    }
    let start = response_body_start(frame.flags, &frame.body).ok()?;
    let mut r = Reader::new(&frame.body);
    r.skip(start).ok()?;
    if r.i32().ok()? != 2 {
        return None;
    }
    let flags = r.i32().ok()?;
    let columns = r.i32().ok()?;
    if flags & 0x0002 != 0 {
        r.bytes().ok()?;
    }
    if frame.version >= 5 && flags & 0x0008 != 0 {
        r.short_bytes().ok()?;
    }
    if flags & 0x0004 == 0 {
        let global = flags & 0x0001 != 0;
        if global {
            r.string().ok()?;
            r.string().ok()?;
        }
        for _ in 0..columns.clamp(0, 4096) {
            if !global {
                r.string().ok()?;
                r.string().ok()?;
            }
            r.string().ok()?;
            super::peers::skip_type(&mut r, 0).ok()?;
        }
    }
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
