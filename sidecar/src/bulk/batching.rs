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
//! default) and `max_bytes` of values (`batch_size_warn_threshold`, 5 KiB).
//! A partition larger than `max_bytes` goes in several batches.

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

/// How large a batch may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Bytes of values; a batch is sent once it holds more. 0: each row's
    /// writes go alone.
    pub max_bytes: u64,
    /// Partitions; at least 1.
    pub max_partitions: usize,
}

/// What the batch being filled holds.
#[derive(Debug, Clone, Copy)]
struct OpenBatch {
    vnode: usize,
    /// 0 while it holds nothing: then the next partition, or the rest of
    /// the one being copied, starts it.
    partitions: usize,
    bytes: u64,
}

/// Decides, row by row in token order, where the batches of one range end.
#[derive(Debug)]
pub struct BatchCutter<'a> {
    vnodes: &'a TargetVnodes,
    limits: BatchLimits,
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

    /// A row starting a new partition, of `token`, is about to be planned.
    /// True when the writes held so far must be sent first, as a batch of
    /// their own: the new partition lies in another vnode range of the
    /// target, or the batch holds as many partitions as it may.
    pub fn before_partition(&mut self, token: i64) -> bool {
        let vnode = self.vnodes.of(token);
        match &mut self.open {
            Some(open) if open.partitions == 0 => {
                *open = OpenBatch {
                    vnode,
                    partitions: 1,
                    bytes: 0,
                };
                false
            }
            Some(open) if open.vnode == vnode && open.partitions < self.limits.max_partitions => {
                open.partitions += 1;
                false
            }
            Some(open) => {
                *open = OpenBatch {
                    vnode,
                    partitions: 1,
                    bytes: 0,
                };
                true
            }
            None => {
                self.open = Some(OpenBatch {
                    vnode,
                    partitions: 1,
                    bytes: 0,
                });
                false
            }
        }
    }

    /// A row's writes, holding `bytes` of values, were added to the batch.
    /// True when the batch is full and must be sent now; the rest of the
    /// partition then starts the next one.
    pub fn after_row(&mut self, bytes: u64) -> bool {
        let Some(open) = &mut self.open else {
            // Rows of a partition whose start this range did not see.
            self.open = Some(OpenBatch {
                vnode: 0,
                partitions: 1,
                bytes,
            });
            return self.full();
        };
        open.partitions = open.partitions.max(1);
        open.bytes += bytes;
        self.full()
    }

    fn full(&mut self) -> bool {
        match &mut self.open {
            Some(open) if open.bytes > self.limits.max_bytes => {
                open.partitions = 0;
                open.bytes = 0;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_bytes: 1000,
        max_partitions: 3,
    };

    /// Feeds rows (token, starts a partition, bytes) and returns the
    /// batches as lists of row indexes.
    fn batches(
        vnodes: &TargetVnodes,
        limits: BatchLimits,
        rows: &[(i64, bool, u64)],
    ) -> Vec<Vec<usize>> {
        let mut cutter = BatchCutter::new(vnodes, limits);
        let mut out = Vec::new();
        let mut held = Vec::new();
        for (i, &(token, starts, bytes)) in rows.iter().enumerate() {
            if starts && cutter.before_partition(token) && !held.is_empty() {
                out.push(std::mem::take(&mut held));
            }
            held.push(i);
            if cutter.after_row(bytes) {
                out.push(std::mem::take(&mut held));
            }
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
    fn a_batch_is_sent_once_it_holds_more_than_the_byte_limit() {
        let vnodes = TargetVnodes::default();
        // One partition of 1,500 bytes in three rows, then a small one.
        let rows = [
            (5, true, 600),
            (5, false, 600),
            (5, false, 300),
            (6, true, 10),
        ];
        assert_eq!(
            batches(&vnodes, LIMITS, &rows),
            vec![vec![0, 1], vec![2, 3]],
            "the rest of the large partition starts the next batch, which counts it"
        );
        // With the limit at 0 every row goes alone.
        let alone = BatchLimits {
            max_bytes: 0,
            max_partitions: 10,
        };
        assert_eq!(
            batches(&vnodes, alone, &rows),
            vec![vec![0], vec![1], vec![2], vec![3]]
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
