//! The source's token ring cut into ranges: vnode-aligned, subdivided to the
//! requested count, shared among the pods of an Indexed Job, and each read
//! routed to one of its replicas.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::cluster::{ClusterState, Node, NodeRef};
use scylla::policies::load_balancing::{FallbackPlan, LoadBalancingPolicy, RoutingInfo};
use scylla::routing::partitioner::{Murmur3Partitioner, Partitioner, PartitionerHasher};
use scylla::routing::{Shard, Token};

/// A token range `(start, end]` of the Murmur3 ring.
///
/// `i64::MIN` is never a key's token (Murmur3 maps it to `i64::MAX`), so
/// `(i64::MIN, t]` starts the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenRange {
    pub start: i64,
    pub end: i64,
}

impl std::fmt::Display for TokenRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {}]", self.start, self.end)
    }
}

/// A partition's token, as Cassandra's Murmur3Partitioner computes it from
/// the partition key's serialized values (`parts`, in key order). A key of
/// several columns is hashed as Cassandra builds it: each value with its
/// 16-bit length before it and a zero byte after.
///
/// The Jobs compute it rather than select `token(pk)`: the source would
/// evaluate that function for every row it sends (0.6–0.7 µs of its CPU a
/// row in a plain scan; docs/benchmarks.md, "The token computed by the
/// Job").
pub fn token_of<'a>(parts: impl ExactSizeIterator<Item = &'a [u8]>) -> i64 {
    let mut hasher = Murmur3Partitioner.build_hasher();
    if parts.len() == 1 {
        parts.for_each(|value| hasher.write(value));
    } else {
        for value in parts {
            // A key value is at most 64 KiB: Cassandra refuses longer ones.
            let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
            hasher.write(&len.to_be_bytes());
            hasher.write(value);
            hasher.write(&[0]);
        }
    }
    hasher.finish().value()
}

/// Which share of the ranges this pod takes: `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub index: u32,
    pub count: u32,
}

/// A malformed `--split`.
#[derive(Debug, thiserror::Error)]
#[error("invalid split `{0}`: expected i/N with 0 <= i < N")]
pub struct SplitParseError(String);

impl std::str::FromStr for Split {
    type Err = SplitParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SplitParseError(s.to_owned());
        let (i, n) = s.split_once('/').ok_or_else(err)?;
        let index: u32 = i.trim().parse().map_err(|_| err())?;
        let count: u32 = n.trim().parse().map_err(|_| err())?;
        if count == 0 || index >= count {
            return Err(err());
        }
        Ok(Split { index, count })
    }
}

impl Split {
    pub const WHOLE: Split = Split { index: 0, count: 1 };

    /// `--split`, else `JOB_COMPLETION_INDEX` with `--split-count`, else all.
    pub fn resolve(
        flag: Option<Split>,
        completion_index: Option<&str>,
        count: Option<u32>,
    ) -> Result<Split, SplitParseError> {
        if let Some(split) = flag {
            return Ok(split);
        }
        match (completion_index, count) {
            (Some(index), Some(count)) => format!("{}/{count}", index.trim()).parse(),
            _ => Ok(Split::WHOLE),
        }
    }

    /// Whether the range at `position` (in ring order) is this pod's.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count as usize == self.index as usize
    }
}

/// The vnode ranges of a sorted, de-duplicated list of ring tokens.
pub fn vnode_ranges(tokens: &[i64]) -> Vec<TokenRange> {
    let mut tokens: Vec<i64> = tokens.to_vec();
    tokens.sort_unstable();
    tokens.dedup();
    let mut ranges = Vec::with_capacity(tokens.len() + 1);
    let mut start = i64::MIN;
    for &token in &tokens {
        if token > start {
            ranges.push(TokenRange { start, end: token });
        }
        start = token;
    }
    if start < i64::MAX {
        ranges.push(TokenRange {
            start,
            end: i64::MAX,
        });
    }
    ranges
}

/// Cuts each vnode range into equal parts so that there are at least
/// `target` ranges in all; never merges vnode ranges (so each range keeps a
/// single replica set).
pub fn subdivide(ranges: &[TokenRange], target: usize) -> Vec<TokenRange> {
    let per_range = target.div_ceil(ranges.len().max(1)).max(1) as i128;
    let mut out = Vec::new();
    for r in ranges {
        let width = r.end as i128 - r.start as i128;
        let parts = per_range.min(width).max(1);
        let mut start = r.start as i128;
        for part in 1..=parts {
            let end = if part == parts {
                r.end as i128
            } else {
                r.start as i128 + width * part / parts
            };
            if end > start {
                out.push(TokenRange {
                    start: start as i64,
                    end: end as i64,
                });
            }
            start = end;
        }
    }
    out
}

/// The source ring's tokens, as the driver sees them.
pub fn ring_tokens(state: &ClusterState) -> Vec<i64> {
    state
        .replica_locator()
        .ring()
        .iter()
        .map(|(token, _)| token.value())
        .collect()
}

/// All ranges of the ring, subdivided to `splits`, in ring order.
pub fn ranges_of(session: &Session, splits: usize) -> Vec<TokenRange> {
    let state = session.get_cluster_state();
    subdivide(&vnode_ranges(&ring_tokens(&state)), splits)
}

/// The replicas of a range of a table, local DC first.
pub fn replicas_of(
    state: &ClusterState,
    keyspace: &str,
    table: &str,
    range: TokenRange,
    local_dc: Option<&str>,
) -> Vec<Arc<Node>> {
    let mut replicas: Vec<Arc<Node>> = state
        .get_token_endpoints(keyspace, table, Token::new(range.end))
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    if let Some(dc) = local_dc {
        replicas.sort_by_key(|n| n.datacenter.as_deref() != Some(dc));
    }
    replicas
}

/// Routes a range read to the range's replicas.
///
/// A `WHERE token(pk) > ? AND token(pk) <= ?` statement has no partition key
/// bound, so the driver cannot compute a routing token and its default
/// policy picks any node; that node then fetches from the replicas over the
/// network. This policy sends the read to a replica instead, and falls back
/// to the session's default plan if no replica is up.
#[derive(Debug)]
pub struct ReplicaRouting {
    replicas: Vec<Arc<Node>>,
    fallback: Arc<dyn LoadBalancingPolicy>,
}

impl ReplicaRouting {
    /// Routes to `replicas`, else as `session`'s default profile would.
    pub fn new(replicas: Vec<Arc<Node>>, session: &Session) -> Self {
        let fallback = session
            .get_default_execution_profile_handle()
            .to_profile()
            .get_load_balancing_policy()
            .clone();
        Self { replicas, fallback }
    }

    fn usable(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.replicas.iter().filter(|n| n.is_enabled())
    }
}

impl LoadBalancingPolicy for ReplicaRouting {
    fn pick<'a>(
        &'a self,
        request: &'a RoutingInfo,
        cluster: &'a ClusterState,
    ) -> Option<(NodeRef<'a>, Option<Shard>)> {
        match self.usable().next() {
            Some(node) => Some((node, None)),
            None => self.fallback.pick(request, cluster),
        }
    }

    fn fallback<'a>(
        &'a self,
        request: &'a RoutingInfo,
        cluster: &'a ClusterState,
    ) -> FallbackPlan<'a> {
        let replicas = self.usable().map(|n| (n, None));
        Box::new(replicas.chain(self.fallback.fallback(request, cluster)))
    }

    fn name(&self) -> String {
        "ferry-replica-routing".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnode_ranges_cover_the_whole_ring() {
        let ranges = vnode_ranges(&[10, -5, 10, 100]);
        assert_eq!(
            ranges,
            vec![
                TokenRange {
                    start: i64::MIN,
                    end: -5
                },
                TokenRange { start: -5, end: 10 },
                TokenRange {
                    start: 10,
                    end: 100
                },
                TokenRange {
                    start: 100,
                    end: i64::MAX
                },
            ]
        );
        assert_eq!(
            vnode_ranges(&[]),
            vec![TokenRange {
                start: i64::MIN,
                end: i64::MAX
            }]
        );
    }

    #[test]
    fn subdivision_is_contiguous_and_reaches_the_target() {
        let ranges = vnode_ranges(&[-1000, 0, 7]);
        let parts = subdivide(&ranges, 100);
        // 25 parts per vnode range, except (0, 7] which has 7 tokens.
        assert_eq!(parts.len(), 25 * 3 + 7);
        assert_eq!(parts[0].start, i64::MIN);
        assert_eq!(parts.last().map(|r| r.end), Some(i64::MAX));
        for pair in parts.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
            assert!(pair[0].start < pair[0].end);
        }
        // A vnode range narrower than its share is not cut below one token.
        assert!(parts.iter().any(|r| r.start == 0 && r.end == 1));
    }

    #[test]
    fn splits_parse_and_partition_the_ranges() {
        let split: Split = "2/3".parse().unwrap();
        assert_eq!(split, Split { index: 2, count: 3 });
        assert!("3/3".parse::<Split>().is_err());
        assert!("x".parse::<Split>().is_err());
        assert_eq!(
            Split::resolve(None, Some("1"), Some(4)).unwrap(),
            Split { index: 1, count: 4 }
        );
        assert_eq!(Split::resolve(None, None, None).unwrap(), Split::WHOLE);
        let shares: Vec<usize> = (0..3)
            .map(|i| {
                (0..10)
                    .filter(|p| Split { index: i, count: 3 }.owns(*p))
                    .count()
            })
            .collect();
        assert_eq!(shares, vec![4, 3, 3]);
    }
}
