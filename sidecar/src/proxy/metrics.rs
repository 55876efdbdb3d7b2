//! Prometheus metrics of the proxy, registered in one registry served on
//! `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the proxy exports (prefix `ferry_proxy_`).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by kind (read, write, use, schema, prepare, other) and side.
    pub requests: IntCounterVec,
    /// Latency per side (source, target) in seconds.
    pub latency: HistogramVec,
    /// Writes sent to the target, by outcome (ok, error, spooled, dropped).
    pub mirrored_writes: IntCounterVec,
    /// Target failures by reason (error, timeout, unavailable).
    pub target_failures: IntCounterVec,
    /// Writes needing a policy, by kind (lwt, counter, now, uuid, ...).
    pub policy_writes: IntCounterVec,
    /// Schema changes clients made through the proxy, by what the target
    /// got (`followed`, `not_repeated`).
    pub schema_changes: IntCounterVec,
    /// LWT answers that differ between source and target (sync mode).
    pub lwt_divergence: IntCounter,
    pub conditional_resends: IntCounter,
    pub spool_records: IntGauge,
    pub spool_bytes: IntGauge,
    pub source_spool_records: IntGauge,
    pub source_spool_bytes: IntGauge,
    pub spool_stalled_seconds: IntGauge,
    pub spool_full: IntCounter,
    pub prepared_cache_size: IntGauge,
    pub open_connections: IntGauge,
    pub client_errors: IntCounterVec,
    pub peer_rewrites: IntCounterVec,
    pub timestamps_injected: IntCounter,
    pub mirror_waits: IntCounter,
    pub reprepares: IntCounter,
    pub mode: IntGauge,
    pub replay_latency: Histogram,
    pub shadow_reads: IntCounterVec,
    pub shadow_read_mismatches: IntCounterVec,
    /// The series counted on every request, resolved once.
    hot: HotSeries,
}

/// Request kinds with a resolved series, in [`HotSeries::requests`] order.
const HOT_KINDS: [&str; 5] = ["read", "write", "use", "schema", "other"];
/// Sides, in [`HotSeries`] order.
const SIDES: [&str; 2] = ["source", "target"];

/// Handles of the series touched on every request or write. Resolving a
/// series by its labels (`with_label_values`) hashes the labels, takes a
/// lock and clones a handle: per request, that cost more than the count.
#[derive(Clone)]
struct HotSeries {
    /// By [`HOT_KINDS`], then [`SIDES`].
    requests: [[IntCounter; 2]; HOT_KINDS.len()],
    /// By [`SIDES`].
    latency: [Histogram; 2],
    mirrored_ok: IntCounter,
}

impl HotSeries {
    fn resolve(
        requests: &IntCounterVec,
        latency: &HistogramVec,
        mirrored_writes: &IntCounterVec,
    ) -> Self {
        // Every series a dashboard draws exists from the start, at 0:
        // "no data" would read as a proxy that does not report.
        Self {
            requests: HOT_KINDS
                .map(|kind| SIDES.map(|side| requests.with_label_values(&[kind, side]))),
            latency: SIDES.map(|side| latency.with_label_values(&[side])),
            mirrored_ok: mirrored_writes.with_label_values(&["ok"]),
        }
    }
}

/// A side's index in [`SIDES`].
fn side_index(side: &str) -> Option<usize> {
    SIDES.iter().position(|s| *s == side)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("ferry_proxy".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests forwarded, by kind and side"),
            &["kind", "side"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Request latency per side").buckets(
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 10.0,
                ],
            ),
            &["side"],
        )?;
        let mirrored_writes = IntCounterVec::new(
            Opts::new(
                "mirrored_writes_total",
                "Writes mirrored to the target, by outcome",
            ),
            &["outcome"],
        )?;
        let target_failures = IntCounterVec::new(
            Opts::new(
                "target_failures_total",
                "Target request failures, by reason",
            ),
            &["reason"],
        )?;
        let policy_writes = IntCounterVec::new(
            Opts::new(
                "policy_writes_total",
                "Writes that are not plain idempotent upserts (lwt, counter, non-deterministic functions)",
            ),
            &["kind"],
        )?;
        let schema_changes = IntCounterVec::new(
            Opts::new(
                "schema_changes_total",
                "Schema changes made through the proxy, by what the target got (followed, not_repeated)",
            ),
            &["outcome"],
        )?;
        let lwt_divergence = IntCounter::new(
            "lwt_divergence_total",
            "Conditional writes whose [applied] differed between source and target",
        )?;
        let conditional_resends = IntCounter::new(
            "conditional_resends_total",
            "Conditional writes sent again to the second cluster because it did not apply what the first applied (async modes)",
        )?;
        let spool_records = IntGauge::new("spool_records", "Target writes waiting in the spool")?;
        let spool_bytes = IntGauge::new("spool_bytes", "Bytes of the spool on disk")?;
        let source_spool_records = IntGauge::new(
            "source_spool_records",
            "Writes owed to the source waiting in its spool (target-primary-async)",
        )?;
        let source_spool_bytes = IntGauge::new(
            "source_spool_bytes",
            "Bytes on disk of the spool owed to the source",
        )?;
        let spool_stalled_seconds = IntGauge::new(
            "spool_stalled_seconds",
            "Seconds the spool has held writes without one reaching the target (0 when empty)",
        )?;
        let spool_full = IntCounter::new(
            "spool_full_total",
            "Writes refused because the spool was full",
        )?;
        let prepared_cache_size = IntGauge::new(
            "prepared_statements",
            "Entries in the prepared-statement map",
        )?;
        let open_connections = IntGauge::new("client_connections", "Open client connections")?;
        let client_errors = IntCounterVec::new(
            Opts::new(
                "client_protocol_errors_total",
                "Client connections closed for a protocol error",
            ),
            &["reason"],
        )?;
        let peer_rewrites = IntCounterVec::new(
            Opts::new(
                "peer_rewrites_total",
                "Addresses rewritten in system tables and events",
            ),
            &["what"],
        )?;
        let mirror_waits = IntCounter::new(
            "mirror_waits_total",
            "Async-mode client writes held back because --mirror-max-in-flight target writes were pending",
        )?;
        let timestamps_injected = IntCounter::new(
            "timestamps_injected_total",
            "Writes given a client-side timestamp by the proxy",
        )?;
        let reprepares = IntCounter::new(
            "target_reprepares_total",
            "Statements the proxy prepared again on the target after UNPREPARED",
        )?;
        let mode = IntGauge::new(
            "mode",
            "Current mode: 0 source-only, 1 sync, 2 async, 3 target-primary",
        )?;
        let replay_latency = Histogram::with_opts(HistogramOpts::new(
            "spool_replay_duration_seconds",
            "Latency of spool replays to the target",
        ))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(mirrored_writes.clone()))?;
        registry.register(Box::new(target_failures.clone()))?;
        let hot = HotSeries::resolve(&requests, &latency, &mirrored_writes);
        registry.register(Box::new(policy_writes.clone()))?;
        registry.register(Box::new(schema_changes.clone()))?;
        registry.register(Box::new(lwt_divergence.clone()))?;
        registry.register(Box::new(conditional_resends.clone()))?;
        registry.register(Box::new(spool_records.clone()))?;
        registry.register(Box::new(spool_bytes.clone()))?;
        registry.register(Box::new(source_spool_records.clone()))?;
        registry.register(Box::new(source_spool_bytes.clone()))?;
        registry.register(Box::new(spool_stalled_seconds.clone()))?;
        registry.register(Box::new(spool_full.clone()))?;
        registry.register(Box::new(prepared_cache_size.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(client_errors.clone()))?;
        registry.register(Box::new(peer_rewrites.clone()))?;
        registry.register(Box::new(timestamps_injected.clone()))?;
        registry.register(Box::new(mirror_waits.clone()))?;
        registry.register(Box::new(reprepares.clone()))?;
        registry.register(Box::new(mode.clone()))?;
        let shadow_reads = IntCounterVec::new(
            Opts::new(
                "shadow_reads_total",
                "Sampled reads also sent to the target, by outcome (match, mismatch, error)",
            ),
            &["outcome"],
        )?;
        let shadow_read_mismatches = IntCounterVec::new(
            Opts::new(
                "shadow_read_mismatches_total",
                "Sampled reads whose target answer differed from the source's, by table (where the two clusters diverge)",
            ),
            &["keyspace", "table"],
        )?;
        registry.register(Box::new(replay_latency.clone()))?;
        registry.register(Box::new(shadow_reads.clone()))?;
        registry.register(Box::new(shadow_read_mismatches.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            mirrored_writes,
            target_failures,
            policy_writes,
            schema_changes,
            lwt_divergence,
            conditional_resends,
            spool_records,
            spool_bytes,
            source_spool_records,
            source_spool_bytes,
            spool_stalled_seconds,
            spool_full,
            prepared_cache_size,
            open_connections,
            client_errors,
            peer_rewrites,
            timestamps_injected,
            mirror_waits,
            reprepares,
            mode,
            replay_latency,
            shadow_reads,
            shadow_read_mismatches,
            hot,
        })
    }

    /// Counts one request of `kind` sent to `side` (`source` or `target`).
    pub fn count_request(&self, kind: &str, side: &str) {
        let resolved = HOT_KINDS
            .iter()
            .position(|k| *k == kind)
            .zip(side_index(side))
            .map(|(k, s)| &self.hot.requests[k][s]);
        match resolved {
            Some(counter) => counter.inc(),
            None => self.requests.with_label_values(&[kind, side]).inc(),
        }
    }

    /// Records one request's latency on `side` (`source` or `target`).
    pub fn observe_latency(&self, side: &str, seconds: f64) {
        match side_index(side) {
            Some(s) => self.hot.latency[s].observe(seconds),
            None => self.latency.with_label_values(&[side]).observe(seconds),
        }
    }

    /// Counts one write the target took.
    pub fn mirrored_ok(&self) {
        self.hot.mirrored_ok.inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
