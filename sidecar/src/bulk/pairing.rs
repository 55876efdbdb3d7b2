//! Pairing one token's rows of the source with the target's by primary key,
//! for the validation's comparison.
//!
//! Both clusters return a token's rows in the same order (partitions by
//! key, rows by clustering order), so the rows are paired in step while
//! their keys agree: no key is copied or hashed for the rows that match,
//! which is nearly all of them. From the first row one side lacks, the rest
//! are paired through a map of the target's keys.

use std::collections::HashMap;

use super::cells::RawRow;
use super::scan::ScanLayout;

/// Calls `each(source, target)` once per primary key of `source` and
/// `target` (one token's rows on each side): with both rows, or with the
/// one side that has it.
pub fn pair_rows(
    layout: &ScanLayout,
    source: Vec<RawRow>,
    target: Vec<RawRow>,
    mut each: impl FnMut(Option<RawRow>, Option<RawRow>),
) {
    let mut source = source.into_iter().peekable();
    let mut target = target.into_iter().peekable();
    while let (Some(s), Some(t)) = (source.peek(), target.peek()) {
        if !layout.same_key(s, t) {
            break;
        }
        each(source.next(), target.next());
    }
    if target.peek().is_none() {
        source.for_each(|s| each(Some(s), None));
        return;
    }
    if source.peek().is_none() {
        target.for_each(|t| each(None, Some(t)));
        return;
    }
    let mut by_key: HashMap<Vec<u8>, RawRow, foldhash::fast::RandomState> =
        target.map(|row| (layout.key_bytes(&row), row)).collect();
    for s in source {
        let t = by_key.remove(&layout.key_bytes(&s));
        each(Some(s), t);
    }
    by_key.into_values().for_each(|t| each(None, Some(t)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bulk::schema::{Column, ColumnKind, TableSchema};
    use bytes::Bytes;

    fn col(name: &str, kind: ColumnKind, position: i32) -> Column {
        Column {
            name: name.into(),
            kind,
            position,
            cql_type: "int".into(),
            clustering_order: "none".into(),
        }
    }

    fn layout() -> ScanLayout {
        ScanLayout::new(&TableSchema {
            keyspace: "ks".into(),
            table: "t".into(),
            partition_key: vec![col("k", ColumnKind::PartitionKey, 0)],
            clustering: vec![col("c", ColumnKind::Clustering, 0)],
            statics: vec![],
            regulars: vec![col("v", ColumnKind::Regular, -1)],
            gc_grace_seconds: 864000,
            multi_cell_stamps: true,
        })
    }

    /// A row of key (k, c), value `v` (its WRITETIME and TTL null):
    /// k, c, v, WRITETIME(v), TTL(v).
    fn row(k: i32, c: i32, v: i32) -> RawRow {
        let int = |n: i32| Some(Bytes::copy_from_slice(&n.to_be_bytes()));
        RawRow::from_cells(vec![int(k), int(c), int(v), None, None])
    }

    /// The pairs as (source value, target value) by key, sorted.
    fn pairs(source: Vec<RawRow>, target: Vec<RawRow>) -> Vec<(i32, Option<i32>, Option<i32>)> {
        let value = |r: &RawRow| {
            let b = r.cell(2).expect("a value");
            i32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
        };
        let clustering = |r: &RawRow| {
            let b = r.cell(1).expect("a clustering value");
            i32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
        };
        let mut out = Vec::new();
        pair_rows(&layout(), source, target, |s, t| {
            let c = s.as_ref().or(t.as_ref()).map(clustering).expect("a row");
            out.push((c, s.as_ref().map(value), t.as_ref().map(value)));
        });
        out.sort();
        out
    }

    #[test]
    fn rows_in_the_same_order_are_paired_in_step() {
        let source = vec![row(1, 1, 10), row(1, 2, 20), row(1, 3, 30)];
        let target = vec![row(1, 1, 10), row(1, 2, 21), row(1, 3, 30)];
        assert_eq!(
            pairs(source, target),
            [
                (1, Some(10), Some(10)),
                (2, Some(20), Some(21)),
                (3, Some(30), Some(30))
            ]
        );
    }

    #[test]
    fn a_row_one_side_lacks_leaves_the_others_paired_by_key() {
        // The target lacks c = 2: every row after it is one place off.
        let source = vec![row(1, 1, 10), row(1, 2, 20), row(1, 3, 30), row(1, 4, 40)];
        let target = vec![row(1, 1, 10), row(1, 3, 30), row(1, 4, 41), row(1, 5, 50)];
        assert_eq!(
            pairs(source, target),
            [
                (1, Some(10), Some(10)),
                (2, Some(20), None),
                (3, Some(30), Some(30)),
                (4, Some(40), Some(41)),
                (5, None, Some(50)),
            ]
        );
    }

    #[test]
    fn one_side_empty_gives_every_row_alone() {
        assert_eq!(
            pairs(vec![row(1, 1, 10), row(1, 2, 20)], vec![]),
            [(1, Some(10), None), (2, Some(20), None)]
        );
        assert_eq!(
            pairs(vec![], vec![row(1, 1, 10), row(1, 2, 20)]),
            [(1, None, Some(10)), (2, None, Some(20))]
        );
    }
}
