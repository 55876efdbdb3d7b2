//! Raw CQL cells: rows read as undecoded bytes and written back as the same
//! bytes, so the copy never converts a value through a Rust type (exact for
//! every CQL type, and cheap).

use std::time::Instant;

use bytes::Bytes;
use scylla::deserialize::row::{ColumnIterator, DeserializeRow};
use scylla::deserialize::{DeserializationError, TypeCheckError};
use scylla::frame::response::result::ColumnSpec;
use scylla::frame::response::result::ColumnType;
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::{CellWriter, WrittenCellProof};
use scylla::serialize::SerializationError;
use smallvec::SmallVec;

/// One result row: where each column's serialized bytes lie in the result
/// frame, which the row keeps alive. Reading a row costs one pass over its
/// cells and no allocation below 16 columns: the driver's own way, one
/// `Bytes` per cell, cost a quarter of the backfill's instructions.
#[derive(Debug, Clone, Default)]
pub struct RawRow {
    frame: Bytes,
    cells: SmallVec<[CellSpan; 16]>,
}

/// Where a cell's bytes lie in the frame; `len` < 0 for a null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CellSpan {
    start: u32,
    len: i32,
}

const NULL: CellSpan = CellSpan { start: 0, len: -1 };

impl<'frame, 'metadata> DeserializeRow<'frame, 'metadata> for RawRow {
    fn type_check(_specs: &[ColumnSpec]) -> Result<(), TypeCheckError> {
        // Any column type is accepted: the bytes are passed through untouched.
        Ok(())
    }

    fn deserialize(row: ColumnIterator<'frame, 'metadata>) -> Result<Self, DeserializationError> {
        let columns = row.columns_remaining();
        match RowStart::deserialize(row)?.0 {
            None => Ok(RawRow::nulls(columns)),
            Some((frame, mut at)) => {
                let mut row = RawRow::in_frame(frame);
                row.read_cells(&mut at, columns)?;
                Ok(row)
            }
        }
    }
}

/// Where a row starts in its result frame, `None` for a row of nulls. The
/// driver's iterator tells where a row lies only through a non-null cell:
/// the row starts 4 bytes before it, and 4 more before each null ahead of
/// it (a null is its length, -1, alone).
#[derive(Debug)]
pub struct RowStart(Option<(Bytes, usize)>);

impl<'frame, 'metadata> DeserializeRow<'frame, 'metadata> for RowStart {
    fn type_check(_specs: &[ColumnSpec]) -> Result<(), TypeCheckError> {
        Ok(())
    }

    fn deserialize(row: ColumnIterator<'frame, 'metadata>) -> Result<Self, DeserializationError> {
        // Every cell before the first non-null one is a null.
        for (nulls, column) in row.enumerate() {
            let Some(slice) = column?.slice else {
                continue;
            };
            let frame = slice.as_original_frame_bytes();
            let cell = slice.as_slice();
            let start = (cell.as_ptr() as usize)
                .checked_sub(frame.as_ptr() as usize)
                .filter(|&start| {
                    // The driver reads rows from slices of their frame; a
                    // slice made otherwise (`FrameSlice::new_borrowed`) has
                    // an empty frame, and its cells cannot be found in it.
                    frame
                        .get(start..start + cell.len())
                        .is_some_and(|found| found.as_ptr() == cell.as_ptr())
                })
                .and_then(|start| start.checked_sub(4 * (nulls + 1)))
                .ok_or_else(|| malformed("a cell outside its frame"))?;
            return Ok(RowStart(Some((frame.clone(), start))));
        }
        Ok(RowStart(None))
    }
}

/// Reads `count` rows of `columns` cells each, the first of them starting
/// where `first` says: the driver's iterator finds each row by reading its
/// cells, so reading every row through it read every cell twice. Rows of
/// nulls ahead of the first that has a value cannot be placed and need not
/// be: they are rows of nulls. `bytes`: the size of the page's rows, which
/// bounds how many there can be (4 bytes a cell at least), so a count the
/// server sent malformed is an error, not an allocation of its size.
pub fn read_rows<I>(
    mut first: I,
    count: usize,
    columns: usize,
    bytes: usize,
) -> Result<Vec<RawRow>, DeserializationError>
where
    I: Iterator<Item = Result<RowStart, DeserializationError>>,
{
    if count > 0 && (columns == 0 || count > bytes / (4 * columns)) {
        return Err(malformed("more rows than the page's bytes can hold"));
    }
    let mut rows = Vec::with_capacity(count);
    while rows.len() < count {
        match first.next() {
            None => return Err(malformed("fewer rows than the page says")),
            Some(start) => match start?.0 {
                None => rows.push(RawRow::nulls(columns)),
                Some((frame, mut at)) => {
                    while rows.len() < count {
                        // Filled where it lies: a row is some 170 bytes,
                        // and moving each one in cost a copy per row.
                        rows.push(RawRow::in_frame(frame.clone()));
                        if let Some(row) = rows.last_mut() {
                            row.read_cells(&mut at, columns)?;
                        }
                    }
                }
            },
        }
    }
    Ok(rows)
}

fn malformed(what: &'static str) -> DeserializationError {
    DeserializationError::new(MalformedRow(what))
}

/// A result row the server sent malformed.
#[derive(Debug, thiserror::Error)]
#[error("malformed result row: {0}")]
struct MalformedRow(&'static str);

impl RawRow {
    /// The rows of a result page, each cell read once ([`read_rows`]).
    pub fn read_page(
        page: &scylla::response::query_result::QueryRowsResult,
    ) -> Result<Vec<RawRow>, DeserializationError> {
        let starts = page.rows::<RowStart>().map_err(DeserializationError::new)?;
        read_rows(
            starts,
            page.rows_num(),
            page.column_specs().len(),
            page.rows_bytes_size(),
        )
    }

    /// A row of `columns` nulls.
    fn nulls(columns: usize) -> Self {
        RawRow {
            frame: Bytes::new(),
            cells: smallvec::smallvec![NULL; columns],
        }
    }

    /// A row of no cells yet in `frame`.
    fn in_frame(frame: Bytes) -> Self {
        RawRow {
            frame,
            cells: SmallVec::new(),
        }
    }

    /// Reads the row's `columns` cells at `*at` in its frame, leaving `*at`
    /// past them: the one reader of a row's cells.
    fn read_cells(&mut self, at: &mut usize, columns: usize) -> Result<(), DeserializationError> {
        let frame: &[u8] = &self.frame;
        // Spans hold u32 offsets.
        if frame.len() > u32::MAX as usize {
            return Err(malformed("a frame over 4 GiB"));
        }
        self.cells.reserve_exact(columns);
        for _ in 0..columns {
            let len = frame
                .get(*at..*at + 4)
                .and_then(decode_int)
                .ok_or_else(|| malformed("a row cut short"))?;
            *at += 4;
            if len < 0 {
                self.cells.push(NULL);
                continue;
            }
            let end = *at + len as usize;
            if end > frame.len() {
                return Err(malformed("a cell longer than its frame"));
            }
            self.cells.push(CellSpan {
                start: *at as u32,
                len,
            });
            *at = end;
        }
        Ok(())
    }

    /// A row of the given cells (`None` = null), in a frame of its own.
    pub fn from_cells(cells: impl IntoIterator<Item = Option<Bytes>>) -> Self {
        let mut frame = Vec::new();
        let mut spans = SmallVec::new();
        for cell in cells {
            match cell {
                None => spans.push(NULL),
                Some(bytes) => {
                    spans.push(CellSpan {
                        start: frame.len() as u32,
                        len: bytes.len() as i32,
                    });
                    frame.extend_from_slice(&bytes);
                }
            }
        }
        RawRow {
            frame: Bytes::from(frame),
            cells: spans,
        }
    }

    /// How many columns the row has.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    fn range(&self, index: usize) -> Option<std::ops::Range<usize>> {
        let span = self.cells.get(index)?;
        let len = usize::try_from(span.len).ok()?;
        let start = span.start as usize;
        Some(start..start + len)
    }

    /// The cell at `index`, `None` when null or absent.
    pub fn cell(&self, index: usize) -> Option<&[u8]> {
        self.range(index).map(|range| &self.frame[range])
    }

    /// The cell at `index` as `Bytes` sharing the frame (no copy), to be
    /// written as it is.
    pub fn cell_bytes(&self, index: usize) -> Option<Bytes> {
        self.range(index).map(|range| self.frame.slice(range))
    }

    /// Serialized size of the row's values, the figure "bytes copied" counts.
    pub fn byte_size(&self) -> u64 {
        self.cells.iter().map(|c| c.len.max(0) as u64).sum()
    }
}

impl PartialEq for RawRow {
    /// Rows are equal when their cells are, wherever the frames lie.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && (0..self.len()).all(|i| self.cell(i) == other.cell(i))
    }
}

impl Eq for RawRow {}

/// A value bound to a write statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindCell {
    /// Serialized bytes read from the source, written back verbatim.
    Raw(Bytes),
    /// An explicit null: a tombstone for that cell (used only by repair).
    Null,
    /// Left out of the write (no tombstone, no change).
    Unset,
    /// A `bigint` (timestamps).
    BigInt(i64),
    /// An `int` (a TTL of 0: none).
    Int(i32),
    /// A remaining TTL the source gave at `read_at`, written as what is
    /// left of it when the write is sent (see [`ttl_left`]).
    Ttl { seconds: i32, read_at: Instant },
}

/// What is left of a TTL of `seconds` read `elapsed` ago, for a write sent
/// now: the whole seconds elapsed are taken off, so that the copy expires
/// when the source's cell does, never earlier and at most 1 s later (the
/// two clusters count whole seconds; the fraction is left on). A cell whose
/// time is up gets 1 s rather than 0, which would mean "no TTL".
pub fn ttl_left(seconds: i32, elapsed: std::time::Duration) -> i32 {
    if seconds <= 0 {
        return 0;
    }
    let elapsed = i32::try_from(elapsed.as_secs()).unwrap_or(i32::MAX);
    seconds.saturating_sub(elapsed).max(1)
}

impl SerializeValue for BindCell {
    fn serialize<'b>(
        &self,
        _typ: &ColumnType,
        writer: CellWriter<'b>,
    ) -> Result<WrittenCellProof<'b>, SerializationError> {
        let written = match self {
            BindCell::Raw(bytes) => writer.set_value(bytes),
            BindCell::Null => Ok(writer.set_null()),
            BindCell::Unset => Ok(writer.set_unset()),
            BindCell::BigInt(v) => writer.set_value(&v.to_be_bytes()),
            BindCell::Int(v) => writer.set_value(&v.to_be_bytes()),
            BindCell::Ttl { seconds, read_at } => {
                writer.set_value(&ttl_left(*seconds, read_at.elapsed()).to_be_bytes())
            }
        };
        written.map_err(SerializationError::new)
    }
}

/// Decodes a serialized `bigint`.
pub fn decode_bigint(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

/// Decodes a serialized `int`.
pub fn decode_int(bytes: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.try_into().ok()?))
}

/// Decodes a serialized `list<int>` whose elements may be null, as Cassandra
/// 5 returns `TTL(c)` of a non-frozen collection (one TTL per element, null
/// for an element without TTL).
pub fn decode_nullable_int_list(bytes: &[u8]) -> Option<Vec<Option<i32>>> {
    let mut rest = bytes;
    let count = take_i32(&mut rest)?;
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let len = take_i32(&mut rest)?;
        if len < 0 {
            out.push(None);
        } else {
            let (element, tail) = rest.split_at_checked(len as usize)?;
            out.push(decode_int(element));
            rest = tail;
        }
    }
    Some(out)
}

/// Splits a serialized list or set into its elements' bytes (`None` for a
/// null element).
pub fn split_collection(bytes: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let mut rest: &[u8] = bytes;
    let count = take_i32(&mut rest)?;
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let len = take_i32(&mut rest)?;
        if len < 0 {
            out.push(None);
        } else {
            let (element, tail) = rest.split_at_checked(len as usize)?;
            out.push(Some(element));
            rest = tail;
        }
    }
    Some(out)
}

/// Serializes elements back into a list.
pub fn join_collection(elements: &[&[u8]]) -> Bytes {
    let mut out = Vec::with_capacity(4 + elements.iter().map(|e| 4 + e.len()).sum::<usize>());
    out.extend_from_slice(&(elements.len() as i32).to_be_bytes());
    for element in elements {
        out.extend_from_slice(&(element.len() as i32).to_be_bytes());
        out.extend_from_slice(element);
    }
    Bytes::from(out)
}

/// Takes a big-endian `int` (a count or a length) off the front of `rest`.
pub fn take_i32(rest: &mut &[u8]) -> Option<i32> {
    let (head, tail) = rest.split_at_checked(4)?;
    *rest = tail;
    decode_int(head)
}

/// A short human-readable rendering of a key cell for reports: decoded for
/// the common key types (named as `system_schema` spells them), hex otherwise.
pub fn render_cell(cql_type: &str, bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else {
        return "null".to_owned();
    };
    let text = match cql_type {
        "int" => decode_int(bytes).map(|v| v.to_string()),
        "bigint" | "counter" | "timestamp" => decode_bigint(bytes).map(|v| v.to_string()),
        "text" | "varchar" | "ascii" => std::str::from_utf8(bytes)
            .ok()
            .map(|s| format!("'{}'", s.chars().take(64).collect::<String>())),
        "uuid" | "timeuuid" if bytes.len() == 16 => uuid_text(bytes),
        _ => None,
    };
    text.unwrap_or_else(|| {
        let hex: String = bytes.iter().take(32).map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}")
    })
}

fn uuid_text(bytes: &[u8]) -> Option<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8)?,
        hex.get(8..12)?,
        hex.get(12..16)?,
        hex.get(16..20)?,
        hex.get(20..32)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_loses_the_whole_seconds_since_it_was_read() {
        use std::time::Duration;
        assert_eq!(ttl_left(3600, Duration::ZERO), 3600);
        assert_eq!(ttl_left(3600, Duration::from_millis(2_900)), 3598);
        assert_eq!(ttl_left(0, Duration::from_secs(5)), 0, "no TTL stays none");
        assert_eq!(
            ttl_left(3, Duration::from_secs(10)),
            1,
            "a cell whose time is up must not become one without a TTL"
        );
    }

    #[test]
    fn decodes_a_ttl_list_with_null_elements() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&2i32.to_be_bytes());
        bytes.extend_from_slice(&4i32.to_be_bytes());
        bytes.extend_from_slice(&600i32.to_be_bytes());
        bytes.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            decode_nullable_int_list(&bytes),
            Some(vec![Some(600), None])
        );
        assert_eq!(decode_nullable_int_list(&bytes[..6]), None);
        let list = join_collection(&[b"ab", b""]);
        assert_eq!(
            split_collection(&list),
            Some(vec![Some(&b"ab"[..]), Some(&b""[..])])
        );
    }

    /// A result frame: `junk` bytes before the row, then the cells, each
    /// length-prefixed as in a ROWS result (`None` = null, length -1).
    fn frame_with_row(junk: usize, cells: &[Option<&[u8]>]) -> Bytes {
        let mut frame = vec![0xAA; junk];
        for cell in cells {
            match cell {
                None => frame.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(bytes) => {
                    frame.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                    frame.extend_from_slice(bytes);
                }
            }
        }
        Bytes::from(frame)
    }

    fn read_row(
        frame: &Bytes,
        junk: usize,
        columns: usize,
    ) -> Result<RawRow, DeserializationError> {
        read_with::<RawRow>(frame, junk, columns)
    }

    /// What the driver hands a row's deserializer: its cells from `junk`.
    fn read_with<R: for<'f, 'm> DeserializeRow<'f, 'm>>(
        frame: &Bytes,
        junk: usize,
        columns: usize,
    ) -> Result<R, DeserializationError> {
        use scylla::deserialize::FrameSlice;
        use scylla::frame::response::result::TableSpec;
        let table = TableSpec::borrowed("ks", "t");
        let specs: Vec<ColumnSpec> = (0..columns)
            .map(|_| {
                ColumnSpec::borrowed(
                    "c",
                    ColumnType::Native(scylla::frame::response::result::NativeType::Blob),
                    table.clone(),
                )
            })
            .collect();
        let mut slice = FrameSlice::new(frame);
        slice.read_n_bytes(junk).expect("junk");
        R::deserialize(ColumnIterator::new(&specs, slice))
    }

    #[test]
    fn a_row_is_read_as_spans_of_its_frame() {
        let cells: [Option<&[u8]>; 5] =
            [None, Some(b"\0\0\0\x07"), None, Some(b""), Some(b"value")];
        let frame = frame_with_row(13, &cells);
        let row = read_row(&frame, 13, cells.len()).expect("a well-formed row");
        assert_eq!(row.len(), 5);
        for (i, cell) in cells.iter().enumerate() {
            assert_eq!(row.cell(i), *cell, "cell {i}");
            assert_eq!(row.cell_bytes(i).as_deref(), *cell, "cell {i} as bytes");
        }
        assert_eq!(row.byte_size(), 9);
        assert_eq!(
            row,
            RawRow::from_cells(cells.iter().map(|c| c.map(Bytes::copy_from_slice)))
        );
        // A cell kept as bytes shares the frame: no copy.
        let kept = row.cell_bytes(4).expect("a value");
        assert_eq!(kept.as_ptr(), frame[frame.len() - 5..].as_ptr());
    }

    #[test]
    fn a_row_outside_its_frame_is_an_error_not_a_panic() {
        use scylla::deserialize::FrameSlice;
        use scylla::frame::response::result::{NativeType, TableSpec};
        let specs = vec![ColumnSpec::borrowed(
            "c",
            ColumnType::Native(NativeType::Blob),
            TableSpec::borrowed("ks", "t"),
        )];
        let row = frame_with_row(0, &[Some(b"value")]);
        let borrowed = FrameSlice::new_borrowed(&row);
        assert!(RawRow::deserialize(ColumnIterator::new(&specs, borrowed)).is_err());
    }

    #[test]
    fn a_row_of_nulls_needs_no_frame() {
        let frame = frame_with_row(0, &[None, None]);
        let row = read_row(&frame, 0, 2).expect("a row of nulls");
        assert_eq!((row.len(), row.cell(0), row.cell(1)), (2, None, None));
    }

    #[test]
    fn a_row_cut_short_is_an_error_not_a_panic() {
        let full = frame_with_row(3, &[Some(b"key"), Some(b"a long value")]);
        // The frame ends inside the second cell, then inside its length.
        for cut in [full.len() - 4, 3 + 4 + 3 + 2] {
            let frame = full.slice(..cut);
            assert!(read_row(&frame, 3, 2).is_err(), "cut at {cut}");
        }
    }

    /// A page's rows after `junk` bytes, and where each row starts.
    fn page(junk: usize, rows: &[&[Option<&[u8]>]]) -> (Bytes, Vec<usize>) {
        let mut frame = vec![0xAA; junk];
        let mut starts = Vec::new();
        for row in rows {
            starts.push(frame.len());
            frame.extend_from_slice(&frame_with_row(0, row));
        }
        (Bytes::from(frame), starts)
    }

    #[test]
    fn a_page_is_read_in_one_pass_as_its_rows_are_one_by_one() {
        let rows: [&[Option<&[u8]>]; 4] = [
            &[None, None, None],
            &[None, Some(b"k1"), Some(b"")],
            &[Some(b"x"), None, Some(b"value")],
            &[None, None, None],
        ];
        let (frame, starts) = page(7, &rows);
        // What the driver's iterator would hand over, row by row; the page
        // reader asks only up to the first row it can place.
        let asked = std::cell::Cell::new(0);
        let driver = starts.iter().map(|&at| {
            asked.set(asked.get() + 1);
            read_with::<RowStart>(&frame, at, 3)
        });
        let read = read_rows(driver, rows.len(), 3, frame.len() - 7).expect("a well-formed page");
        assert_eq!(asked.get(), 2, "read past the first row with a value");
        assert_eq!(read.len(), rows.len());
        for (i, row) in rows.iter().enumerate() {
            let one_by_one = read_row(&frame, starts[i], 3).expect("a well-formed row");
            assert_eq!(read[i], one_by_one, "row {i}");
            assert_eq!(
                read[i],
                RawRow::from_cells(row.iter().map(|c| c.map(Bytes::copy_from_slice))),
                "row {i}"
            );
        }
        // Cells still share the frame.
        let kept = read[2].cell_bytes(2).expect("a value");
        assert_eq!(kept.as_ptr(), frame[starts[3] - 5..].as_ptr());
    }

    #[test]
    fn a_page_shorter_than_it_says_is_an_error_not_a_panic() {
        let rows: [&[Option<&[u8]>]; 2] = [&[Some(b"a"), None], &[Some(b"b"), Some(b"c")]];
        let (frame, starts) = page(0, &rows);
        let driver = || {
            starts
                .iter()
                .map(|&at| read_with::<RowStart>(&frame, at, 2))
        };
        assert_eq!(
            read_rows(driver(), 2, 2, frame.len()).expect("whole").len(),
            2
        );
        assert!(
            read_rows(driver(), 3, 2, frame.len() + 8).is_err(),
            "a third row past the frame"
        );
        let cut = frame.slice(..frame.len() - 2);
        let driver = starts.iter().map(|&at| read_with::<RowStart>(&cut, at, 2));
        assert!(
            read_rows(driver, 2, 2, cut.len()).is_err(),
            "the last cell cut short"
        );
        // Rows of nulls only, more than the driver has.
        let nulls = frame_with_row(0, &[None, None]);
        let driver = std::iter::once(read_with::<RowStart>(&nulls, 0, 2));
        assert!(
            read_rows(driver, 2, 2, 16).is_err(),
            "fewer rows than the page says"
        );
    }

    #[test]
    fn a_page_claiming_more_rows_than_its_bytes_hold_is_an_error_not_an_abort() {
        // A row takes at least 4 bytes a column: a row count past that is a
        // malformed answer, not a reason to reserve memory for it.
        let rows: [&[Option<&[u8]>]; 1] = [&[Some(b"a"), None]];
        let (frame, starts) = page(0, &rows);
        let driver = starts
            .iter()
            .map(|&at| read_with::<RowStart>(&frame, at, 2));
        assert!(read_rows(driver, usize::MAX / 8, 2, frame.len()).is_err());
    }
}
