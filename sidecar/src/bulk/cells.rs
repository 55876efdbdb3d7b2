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

/// One result row, each column kept as its serialized bytes (`None` = null).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawRow(pub Vec<Option<Bytes>>);

impl<'frame, 'metadata> DeserializeRow<'frame, 'metadata> for RawRow {
    fn type_check(_specs: &[ColumnSpec]) -> Result<(), TypeCheckError> {
        // Any column type is accepted: the bytes are passed through untouched.
        Ok(())
    }

    fn deserialize(row: ColumnIterator<'frame, 'metadata>) -> Result<Self, DeserializationError> {
        let mut cells = Vec::with_capacity(row.size_hint().0);
        for column in row {
            let column = column?;
            cells.push(column.slice.map(|slice| slice.to_bytes()));
        }
        Ok(RawRow(cells))
    }
}

impl RawRow {
    /// The cell at `index`, `None` when null or absent.
    pub fn cell(&self, index: usize) -> Option<&Bytes> {
        self.0.get(index).and_then(Option::as_ref)
    }

    /// Serialized size of the row's values, the figure "bytes copied" counts.
    pub fn byte_size(&self) -> u64 {
        self.0
            .iter()
            .map(|c| c.as_ref().map_or(0, |b| b.len() as u64))
            .sum()
    }
}

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
pub fn split_collection(bytes: &Bytes) -> Option<Vec<Option<Bytes>>> {
    let mut rest: &[u8] = bytes;
    let count = take_i32(&mut rest)?;
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let len = take_i32(&mut rest)?;
        if len < 0 {
            out.push(None);
        } else {
            let start = bytes.len() - rest.len();
            let (_, tail) = rest.split_at_checked(len as usize)?;
            out.push(Some(bytes.slice(start..start + len as usize)));
            rest = tail;
        }
    }
    Some(out)
}

/// Serializes elements back into a list.
pub fn join_collection(elements: &[&Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(4 + elements.iter().map(|e| 4 + e.len()).sum::<usize>());
    out.extend_from_slice(&(elements.len() as i32).to_be_bytes());
    for element in elements {
        out.extend_from_slice(&(element.len() as i32).to_be_bytes());
        out.extend_from_slice(element);
    }
    Bytes::from(out)
}

fn take_i32(rest: &mut &[u8]) -> Option<i32> {
    let (head, tail) = rest.split_at_checked(4)?;
    *rest = tail;
    decode_int(head)
}

/// A short human-readable rendering of a key cell for reports: decoded for
/// the common key types (named as `system_schema` spells them), hex otherwise.
pub fn render_cell(cql_type: &str, bytes: Option<&Bytes>) -> String {
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
        let list = join_collection(&[&Bytes::from_static(b"ab"), &Bytes::from_static(b"")]);
        assert_eq!(
            split_collection(&list),
            Some(vec![Some(Bytes::from_static(b"ab")), Some(Bytes::new())])
        );
    }
}
