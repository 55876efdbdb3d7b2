//! What a proxy reports of itself on `/state`: its mode, its clients, and
//! what it still owes the target. The operator reads it (so the type lives
//! here, shared by both planes) before it evicts a source pod and to tell
//! whether mirroring keeps up.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::mirror::ProxyContext;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyState {
    /// `source-only`, `sync`, `async`, `target-primary` or
    /// `target-primary-async`.
    pub mode: String,
    pub source_reachable: bool,
    pub target_reachable: bool,
    /// Client connections open now.
    pub client_connections: u64,
    /// Writes in the spool, not yet on the target.
    pub spool_records: u64,
    pub spool_bytes: u64,
    pub spool_full: bool,
    /// Async writes sent to the target and not yet answered.
    pub mirrors_in_flight: u64,
    /// `target-primary-async`: writes in the spool owed to the source.
    #[serde(default)]
    pub source_spool_records: u64,
    /// Seconds the source's spool has held writes without its replayer
    /// getting one onto the source.
    #[serde(default)]
    pub source_spool_stalled_seconds: u64,
    /// Seconds the spool has held writes without the replayer getting one
    /// of them onto the target (0 when it is empty).
    pub spool_stalled_seconds: u64,
    /// Percentage of reads also sent to the target and compared.
    pub shadow_read_percent: u64,
    /// Shadow reads compared so far, and how many differed.
    pub shadow_reads: u64,
    pub shadow_read_mismatches: u64,
    /// Shadow reads that differed, per `keyspace.table`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shadow_read_mismatches_by_table: BTreeMap<String, u64>,
    /// Why the last replay of the spool's head failed, if none has
    /// succeeded since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replay_error: Option<String>,
}

impl ProxyState {
    /// Writes this proxy still owes a cluster: the target, or the source
    /// in `target-primary-async`.
    pub fn owed(&self) -> u64 {
        self.spool_records + self.source_spool_records + self.mirrors_in_flight
    }

    pub fn of(ctx: &ProxyContext) -> Self {
        let records = ctx.spool.records();
        let for_source = ctx.source_spool.records();
        Self {
            mode: ctx
                .mode()
                .to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default(),
            source_reachable: ctx.source_reachable.load(Ordering::Acquire),
            target_reachable: ctx.target_reachable.load(Ordering::Acquire),
            client_connections: ctx.metrics.open_connections.get().max(0) as u64,
            spool_records: records,
            spool_bytes: ctx.spool.bytes(),
            spool_full: ctx.spool.is_full(),
            mirrors_in_flight: ctx.mirrors_inflight.load(Ordering::Acquire) as u64,
            source_spool_records: for_source,
            source_spool_stalled_seconds: ctx
                .source_replay_progress
                .stalled_for(for_source)
                .as_secs(),
            spool_stalled_seconds: ctx.replay_progress.stalled_for(records).as_secs(),
            last_replay_error: ctx.replay_progress.last_error(),
            shadow_read_percent: ctx.shadow_read_percent.load(Ordering::Relaxed),
            shadow_reads: ["match", "mismatch", "error"]
                .iter()
                .map(|o| ctx.metrics.shadow_reads.with_label_values(&[o]).get())
                .sum(),
            shadow_read_mismatches: ctx
                .metrics
                .shadow_reads
                .with_label_values(&["mismatch"])
                .get(),
            shadow_read_mismatches_by_table: by_table(&ctx.metrics.shadow_read_mismatches),
        }
    }
}

/// A counter labelled `keyspace` and `table`, as `keyspace.table` → count.
fn by_table(counter: &prometheus::IntCounterVec) -> BTreeMap<String, u64> {
    use prometheus::core::Collector;
    let mut out = BTreeMap::new();
    for family in counter.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let count = metric.counter.value() as u64;
            if count > 0 {
                *out.entry(format!("{}.{}", label("keyspace"), label("table")))
                    .or_insert(0) += count;
            }
        }
    }
    out
}
