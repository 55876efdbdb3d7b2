//! Which of a range's planned writes go to the target in one UNLOGGED batch.
//!
//! The driver's cost and the target's are mostly per request, not per row:
//! with the driver that the Jobs use, one INSERT per row costs the client
//! some 19 µs a request more than a batch of ten (`docs/benchmarks.md`). So
//! a batch holds the writes of several partitions, as long as they lie in
//! one vnode range of the target's ring. The driver routes a batch to a
//! replica of its first partition, which is then a replica of every other
//! one: the coordinator applies each partition's mutation itself and sends
//! it to the same other replicas one batch per partition would have.
//!
//! Limits, both under Cassandra's warnings: at most `max_partitions`
//! partitions (`unlogged_batch_across_partitions_warn_threshold`, 10 by
//! default) and `max_bytes` as Cassandra counts a batch's size
//! ([`cell_size`]; `batch_size_warn_threshold`, 5 KiB).
//! A partition larger than `max_bytes` goes in several batches.

use super::cells::take_i32;
use super::schema::CellShape;

/// The target ring's tokens, to tell which vnode range a token lies in.
#[derive(Debug, Clone, Default)]
pub struct TargetVnodes {
    /// Sorted, without duplicates; empty when the ring is not known, and
    /// then every token is taken to lie in one range.
    tokens: Vec<i64>,
}

impl TargetVnodes {
    pub fn new(mut tokens: Vec<i64>) -> Self {
        tokens.sort_unstable();
        tokens.dedup();
        TargetVnodes { tokens }
    }

    /// The vnode range holding `token`: the index of the ring token that
    /// ends it. A range `(t[i-1], t[i]]` ends at `t[i]`; tokens past the
    /// last ring token wrap round to the range that the first one ends.
    pub fn of(&self, token: i64) -> usize {
        let end = self.tokens.partition_point(|&t| t < token);
        if end == self.tokens.len() {
            0
        } else {
            end
        }
    }
}

/// What Cassandra counts for a row toward a batch's size, beside its cells:
/// its liveness info and deletion time.
pub const ROW_SIZE: u64 = 24;

/// What Cassandra counts for each partition of a batch: its key and
/// deletion time, some 35 bytes with a `bigint` key (measured: 30 rows of
/// 164 counted bytes in 6 partitions made 5,124); counted from above.
pub const PARTITION_SIZE: u64 = 48;

/// The size Cassandra gives a cell of `column` holding `value` when it
/// checks a batch against `batch_size_warn_threshold` (a write's data size):
/// the value and per cell a timestamp, a TTL and a local deletion time (16
/// bytes). A non-frozen collection or UDT is a cell per element, each with
/// a path (16 bytes for a list's timeuuid; a set's or map's key, which the
/// value holds already, is counted again here to stay above), and a
/// tombstone for the overwrite (12). Counting the values alone let batches
/// of 5,000 bytes of values reach 9 KiB, and the target logged a warning
/// for each.
pub fn cell_size(shape: CellShape, value: &[u8]) -> u64 {
    let len = value.len() as u64;
    if !shape.is_multi_cell() {
        return len + 16;
    }
    len + 12 + 32 * elements(shape, value)
}

/// How many cells a non-frozen collection's or UDT's serialized value
/// holds: the count that starts a list, set or map, or a UDT's fields.
fn elements(shape: CellShape, value: &[u8]) -> u64 {
    let mut rest = value;
    if shape != CellShape::Udt {
        return take_i32(&mut rest).map_or(0, |count| count.max(0) as u64);
    }
    let mut fields = 0;
    while let Some(len) = take_i32(&mut rest) {
        fields += 1;
        rest = rest.get(len.max(0) as usize..).unwrap_or_default();
    }
    fields
}

/// How large a batch may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Bytes as [`cell_size`] and [`ROW_SIZE`] count them. A row larger than this goes
    /// alone; 0: each row's writes go alone.
    pub max_bytes: u64,
    /// Partitions; at least 1.
    pub max_partitions: usize,
}

/// What the batch being filled holds.
#[derive(Debug, Clone, Copy)]
struct OpenBatch {
    vnode: usize,
    partitions: usize,
    bytes: u64,
}

/// Decides, row by row in token order, where the batches of one range end.
#[derive(Debug)]
pub struct BatchCutter<'a> {
    vnodes: &'a TargetVnodes,
    limits: BatchLimits,
    /// `None` until the first row.
    open: Option<OpenBatch>,
}

impl<'a> BatchCutter<'a> {
    pub fn new(vnodes: &'a TargetVnodes, limits: BatchLimits) -> Self {
        BatchCutter {
            vnodes,
            limits: BatchLimits {
                max_partitions: limits.max_partitions.max(1),
                ..limits
            },
            open: None,
        }
    }

    /// A row's writes, of `size` (their `counted`), are to join the batch;
    /// `starts_partition` when the row starts a new partition, whose
    /// `token` is asked for only then (or for a batch's first row): the Job
    /// computes it by hashing the row's key. True when the writes held so
    /// far must be sent first, as a batch of their own: the new partition
    /// lies in another vnode range of the target, or the batch holds as
    /// many partitions as it may, or the row would take it past
    /// `max_bytes`.
    pub fn before_row(
        &mut self,
        starts_partition: bool,
        token: impl FnOnce() -> i64,
        size: u64,
    ) -> bool {
        let vnode = match (&self.open, starts_partition) {
            (Some(open), false) => open.vnode,
            _ => self.vnodes.of(token()),
        };
        let limits = self.limits;
        let size = size + if starts_partition { PARTITION_SIZE } else { 0 };
        let cut = self.open.is_some_and(|open| {
            let other_partition = starts_partition
                && (open.vnode != vnode || open.partitions >= limits.max_partitions);
            other_partition || open.bytes + size > limits.max_bytes
        });
        match &mut self.open {
            Some(open) if !cut => {
                open.partitions += usize::from(starts_partition);
                open.bytes += size;
            }
            _ => {
                self.open = Some(OpenBatch {
                    vnode,
                    partitions: 1,
                    bytes: size,
                })
            }
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_bytes: 1000,
        max_partitions: 3,
    };

    /// Feeds rows (token, starts a partition, size) and returns the
    /// batches as lists of row indexes.
    fn batches(
        vnodes: &TargetVnodes,
        limits: BatchLimits,
        rows: &[(i64, bool, u64)],
    ) -> Vec<Vec<usize>> {
        let mut cutter = BatchCutter::new(vnodes, limits);
        let mut out = Vec::new();
        let mut held = Vec::new();
        for (i, &(token, starts, size)) in rows.iter().enumerate() {
            if cutter.before_row(starts, || token, size) {
                out.push(std::mem::take(&mut held));
            }
            held.push(i);
        }
        if !held.is_empty() {
            out.push(held);
        }
        out
    }

    #[test]
    fn a_token_lies_in_the_range_its_next_ring_token_ends() {
        let vnodes = TargetVnodes::new(vec![100, -100, 0, 100]);
        assert_eq!(vnodes.of(-150), 0);
        assert_eq!(vnodes.of(-100), 0, "a range includes its end");
        assert_eq!(vnodes.of(-99), 1);
        assert_eq!(vnodes.of(100), 2);
        assert_eq!(vnodes.of(101), 0, "past the last token wraps round");
        assert_eq!(TargetVnodes::default().of(42), 0);
    }

    #[test]
    fn partitions_of_one_vnode_share_a_batch_up_to_the_partition_limit() {
        let vnodes = TargetVnodes::new(vec![0, 1000]);
        // Five partitions of two rows, all in (0, 1000].
        let rows: Vec<_> = (0..10).map(|i| (10 + i / 2, i % 2 == 0, 10)).collect();
        assert_eq!(
            batches(&vnodes, LIMITS, &rows),
            vec![vec![0, 1, 2, 3, 4, 5], vec![6, 7, 8, 9]]
        );
    }

    #[test]
    fn a_batch_never_spans_two_vnode_ranges_of_the_target() {
        let vnodes = TargetVnodes::new(vec![0, 1000]);
        let rows = [
            (998, true, 10),
            (999, true, 10),
            (1001, true, 10),
            (1002, true, 10),
        ];
        assert_eq!(
            batches(&vnodes, LIMITS, &rows),
            vec![vec![0, 1], vec![2, 3]]
        );
    }

    #[test]
    fn a_batch_never_grows_past_the_byte_limit() {
        let vnodes = TargetVnodes::default();
        // One partition of 1,200 bytes in three rows (and its own 48),
        // then a small one.
        let rows = [
            (5, true, 500),
            (5, false, 400),
            (5, false, 300),
            (6, true, 10),
        ];
        assert_eq!(
            batches(&vnodes, LIMITS, &rows),
            vec![vec![0, 1], vec![2, 3]],
            "the rest of the large partition starts the next batch, which counts it"
        );
        // A row larger than the limit goes alone.
        let rows = [(5, true, 10), (6, true, 2000), (7, true, 10)];
        assert_eq!(
            batches(&vnodes, LIMITS, &rows),
            vec![vec![0], vec![1], vec![2]]
        );
        // With the limit at 0 every row goes alone.
        let alone = BatchLimits {
            max_bytes: 0,
            max_partitions: 10,
        };
        let rows = [(5, true, 600), (5, false, 400), (6, true, 10)];
        assert_eq!(
            batches(&vnodes, alone, &rows),
            vec![vec![0], vec![1], vec![2]]
        );
    }

    #[test]
    fn a_collection_counts_a_cell_per_element() {
        let column = |cql_type: &str| crate::bulk::schema::Column {
            name: "c".to_owned(),
            kind: crate::bulk::schema::ColumnKind::Regular,
            position: -1,
            cql_type: cql_type.to_owned(),
            clustering_order: "none".to_owned(),
        };
        assert_eq!(cell_size(column("text").shape(), b"value"), 5 + 16);
        let mut list = 3i32.to_be_bytes().to_vec();
        for n in [1i32, 2, 3] {
            list.extend_from_slice(&4i32.to_be_bytes());
            list.extend_from_slice(&n.to_be_bytes());
        }
        assert_eq!(
            cell_size(column("list<int>").shape(), &list),
            list.len() as u64 + 12 + 3 * 32
        );
        // A frozen list is one cell.
        assert_eq!(
            cell_size(column("frozen<list<int>>").shape(), &list),
            list.len() as u64 + 16
        );
        // A non-frozen UDT: a cell per field, a null one included.
        let mut udt = 1i32.to_be_bytes().to_vec();
        udt.push(7);
        udt.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            cell_size(column("address").shape(), &udt),
            udt.len() as u64 + 12 + 2 * 32
        );
    }

    #[test]
    fn one_partition_per_batch_when_the_limit_says_so() {
        let vnodes = TargetVnodes::default();
        let one = BatchLimits {
            max_bytes: 1000,
            max_partitions: 1,
        };
        let rows = [(1, true, 10), (1, false, 10), (2, true, 10), (3, true, 10)];
        assert_eq!(
            batches(&vnodes, one, &rows),
            vec![vec![0, 1], vec![2], vec![3]]
        );
    }
}
