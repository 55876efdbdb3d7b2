//! Progress of a backfill or validation: counters shared by the workers, a
//! log line per interval, Prometheus metrics, and the JSON summary written
//! to the pod's termination message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

/// Example keys kept per kind of difference.
pub const EXAMPLES_PER_KIND: usize = 5;
/// Kubernetes truncates termination messages at 4096 bytes.
const SUMMARY_LIMIT: usize = 4000;

/// Counters of one run.
#[derive(Debug)]
pub struct Stats {
    pub mode: &'static str,
    pub started: Instant,
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub ranges_total: AtomicU64,
    pub ranges_done: AtomicU64,
    pub ranges_skipped: AtomicU64,
    pub ranges_failed: AtomicU64,
    pub pages: AtomicU64,
    pub pages_off_replica: AtomicU64,
    /// Write requests (batches or single writes) the target answered.
    pub write_requests: AtomicU64,
    /// Warnings the target sent with its answers (a batch too large, or
    /// across too many partitions, for its thresholds).
    pub target_warnings: AtomicU64,
    pub compared: AtomicU64,
    pub missing: AtomicU64,
    pub extra: AtomicU64,
    pub mismatched: AtomicU64,
    pub in_flight: AtomicU64,
    pub repaired: AtomicU64,
    pub examples: Mutex<BTreeMap<String, Vec<String>>>,
    /// Validation figures per table.
    pub tables: Mutex<BTreeMap<String, TableCounts>>,
    /// µs since the epoch by which the run must end (the migration start
    /// plus the smallest target gc_grace_seconds); 0 when unknown.
    pub deadline_micros: std::sync::atomic::AtomicI64,
    /// The first range error, kept for the run's final error message.
    first_error: Mutex<Option<String>>,
    /// When the ranges started moving, after connecting, reading the
    /// schemas and loading the checkpoints (see [`Stats::copy_millis`]).
    copy_started: std::sync::OnceLock<Instant>,
}

/// Validation figures of one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableCounts {
    pub rows_compared: u64,
    pub missing: u64,
    pub extra: u64,
    pub mismatched: u64,
    pub in_flight: u64,
    pub repaired: u64,
}

impl Stats {
    pub fn new(mode: &'static str) -> Arc<Self> {
        Arc::new(Stats {
            mode,
            started: Instant::now(),
            copy_started: std::sync::OnceLock::new(),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            ranges_total: AtomicU64::new(0),
            ranges_done: AtomicU64::new(0),
            ranges_skipped: AtomicU64::new(0),
            ranges_failed: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            pages_off_replica: AtomicU64::new(0),
            write_requests: AtomicU64::new(0),
            target_warnings: AtomicU64::new(0),
            compared: AtomicU64::new(0),
            missing: AtomicU64::new(0),
            extra: AtomicU64::new(0),
            mismatched: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            examples: Mutex::new(BTreeMap::new()),
            tables: Mutex::new(BTreeMap::new()),
            deadline_micros: std::sync::atomic::AtomicI64::new(0),
            first_error: Mutex::new(None),
        })
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts the outcome of one token range (copied or compared): done, or
    /// failed with its error logged and the first error kept, so a run goes
    /// on with its other ranges and reports the failure at the end.
    pub fn record_range<E: std::fmt::Display>(&self, result: Result<(), E>) {
        match result {
            Ok(()) => Self::add(&self.ranges_done, 1),
            Err(err) => {
                tracing::error!(error = %err, "range failed");
                Self::add(&self.ranges_failed, 1);
                self.first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| err.to_string());
            }
        }
    }

    /// The first range error recorded, if any range failed.
    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps `key` as an example of `kind` if fewer than the bound are kept.
    pub fn example(&self, kind: &str, key: String) {
        let mut examples = self.examples.lock().unwrap_or_else(|p| p.into_inner());
        let list = examples.entry(kind.to_owned()).or_default();
        if list.len() < EXAMPLES_PER_KIND {
            list.push(key.chars().take(200).collect());
        }
    }

    /// Adds to a table's figures.
    pub fn table(&self, table: &str, add: impl FnOnce(&mut TableCounts)) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        add(tables.entry(table.to_owned()).or_default());
    }

    /// Logs one line per table (validation).
    pub fn log_tables(&self) {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        for (table, c) in tables.iter() {
            info!(
                table = %table,
                rows_compared = c.rows_compared,
                missing = c.missing,
                extra = c.extra,
                mismatched = c.mismatched,
                in_flight = c.in_flight,
                repaired = c.repaired,
                "table validated"
            );
        }
    }

    pub fn rows_per_second(&self) -> u64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs <= 0.0 {
            0
        } else {
            (Self::get(&self.rows) as f64 / secs) as u64
        }
    }

    /// Marks the end of the set-up: the ranges start moving now.
    pub fn mark_copy_started(&self) {
        let _ = self.copy_started.set(Instant::now());
    }

    /// Milliseconds since the ranges started moving (the whole run when
    /// they never did): the figure to compare with a plain writer's, which
    /// has no schemas or checkpoints to read first.
    pub fn copy_millis(&self) -> u64 {
        self.copy_started
            .get()
            .unwrap_or(&self.started)
            .elapsed()
            .as_millis() as u64
    }

    /// The termination-message summary (camelCase, as the operator's
    /// BackfillProgress / ValidationResults), at most ~4000 bytes.
    pub fn summary(&self) -> serde_json::Value {
        let g = Self::get;
        if self.mode == "backfill" {
            return json!({
                "mode": "backfill",
                "rangesDone": g(&self.ranges_done),
                "rangesTotal": g(&self.ranges_total),
                "rangesSkipped": g(&self.ranges_skipped),
                "rangesFailed": g(&self.ranges_failed),
                "rowsCopied": g(&self.rows),
                "bytesCopied": g(&self.bytes),
                "writeRequests": g(&self.write_requests),
                "targetWarnings": g(&self.target_warnings),
                "rowsPerSecond": self.rows_per_second(),
                "elapsedMillis": self.started.elapsed().as_millis() as u64,
                "copyMillis": self.copy_millis(),
            });
        }
        let differences = g(&self.missing) + g(&self.extra) + g(&self.mismatched);
        let mut examples = self
            .examples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut tables = Some(
            self.tables
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        );
        loop {
            let value = json!({
                "mode": "validate",
                "rangesDone": g(&self.ranges_done),
                "rangesTotal": g(&self.ranges_total),
                "rangesFailed": g(&self.ranges_failed),
                "rowsCompared": g(&self.compared),
                "missing": g(&self.missing),
                "extra": g(&self.extra),
                "mismatched": g(&self.mismatched),
                "inFlight": g(&self.in_flight),
                "repaired": g(&self.repaired),
                "unresolved": differences.saturating_sub(g(&self.repaired)),
                "rowsPerSecond": self.rows_per_second(),
                "bytesRead": g(&self.bytes),
                "elapsedMillis": self.started.elapsed().as_millis() as u64,
                "copyMillis": self.copy_millis(),
                "examples": examples,
                "tables": tables,
            });
            if value.to_string().len() <= SUMMARY_LIMIT {
                return value;
            }
            // Too long: per-table figures go first (they are in the log).
            if tables.take().is_some() {
                continue;
            }
            if examples.is_empty() {
                return value;
            }
            // Too long for a termination message: drop examples until it fits.
            let longest = examples
                .iter()
                .max_by_key(|(_, v)| v.len())
                .map(|(k, _)| k.clone());
            if let Some(kind) = longest {
                if let Some(list) = examples.get_mut(&kind) {
                    list.pop();
                    if list.is_empty() {
                        examples.remove(&kind);
                    }
                }
            }
        }
    }

    /// One progress line.
    pub fn log_progress(&self, since: &mut (Instant, u64)) {
        let g = Self::get;
        let rows = g(&self.rows);
        let now = Instant::now();
        let interval = now.duration_since(since.0).as_secs_f64().max(0.001);
        let rate = ((rows - since.1) as f64 / interval) as u64;
        *since = (now, rows);
        let done = g(&self.ranges_done) + g(&self.ranges_failed);
        let total = g(&self.ranges_total);
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta_seconds = if done > 0 && total > done {
            (elapsed / done as f64 * (total - done) as f64) as u64
        } else {
            0
        };
        info!(
            mode = self.mode,
            rows,
            bytes = g(&self.bytes),
            rows_per_second = rate,
            mb_per_second = format!("{:.1}", g(&self.bytes) as f64 / elapsed.max(0.001) / 1e6),
            ranges_done = done,
            ranges_total = total,
            eta_seconds,
            differences = g(&self.missing) + g(&self.extra) + g(&self.mismatched),
            "progress"
        );
        let deadline = self.deadline_micros.load(Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        if deadline > 0 && now + eta_seconds as i64 * 1_000_000 > deadline {
            warn!(
                eta_seconds,
                seconds_to_deadline = (deadline - now) / 1_000_000,
                "the backfill will end after the migration start + gc_grace_seconds of a target table: deletes mirrored early may be resurrected; raise gc_grace_seconds on the target"
            );
        }
    }
}

/// Logs progress every `interval` until aborted.
pub fn spawn_progress_log(stats: Arc<Stats>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut since = (Instant::now(), 0);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            stats.log_progress(&mut since);
        }
    })
}

/// Prometheus text exposition of the counters.
pub fn metrics_text(stats: &Stats) -> String {
    use prometheus::{Encoder, IntGauge, Opts, Registry, TextEncoder};
    let registry = Registry::new();
    let g = Stats::get;
    let gauges: [(&str, &str, u64); 16] = [
        (
            "ferry_bulk_rows",
            "Rows copied (backfill) or read from the source (validate)",
            g(&stats.rows),
        ),
        (
            "ferry_bulk_bytes",
            "Bytes of cell values copied or read",
            g(&stats.bytes),
        ),
        (
            "ferry_bulk_ranges_total",
            "Token ranges of this pod",
            g(&stats.ranges_total),
        ),
        (
            "ferry_bulk_ranges_done",
            "Token ranges finished",
            g(&stats.ranges_done),
        ),
        (
            "ferry_bulk_ranges_skipped",
            "Token ranges skipped (already checkpointed)",
            g(&stats.ranges_skipped),
        ),
        (
            "ferry_bulk_ranges_failed",
            "Token ranges that failed",
            g(&stats.ranges_failed),
        ),
        ("ferry_bulk_pages", "Pages read", g(&stats.pages)),
        (
            "ferry_bulk_pages_off_replica",
            "Pages served by a coordinator that is no replica of the range",
            g(&stats.pages_off_replica),
        ),
        (
            "ferry_bulk_write_requests",
            "Write requests (batches or single writes) the target answered",
            g(&stats.write_requests),
        ),
        (
            "ferry_bulk_target_warnings",
            "Warnings the target sent with its answers to writes",
            g(&stats.target_warnings),
        ),
        (
            "ferry_validate_rows_compared",
            "Rows compared",
            g(&stats.compared),
        ),
        (
            "ferry_validate_missing",
            "Rows missing on the target",
            g(&stats.missing),
        ),
        (
            "ferry_validate_extra",
            "Rows only on the target",
            g(&stats.extra),
        ),
        (
            "ferry_validate_mismatched",
            "Rows whose values or timestamps differ",
            g(&stats.mismatched),
        ),
        (
            "ferry_validate_in_flight",
            "Differing rows written during the validation",
            g(&stats.in_flight),
        ),
        (
            "ferry_validate_repaired",
            "Rows repaired",
            g(&stats.repaired),
        ),
    ];
    for (name, help, value) in gauges {
        let opts = Opts::new(name, help).const_label("mode", stats.mode);
        if let Ok(gauge) = IntGauge::with_opts(opts) {
            gauge.set(value as i64);
            let _ = registry.register(Box::new(gauge));
        }
    }
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves `GET /metrics` on `port` (a minimal HTTP/1.0 responder).
pub async fn serve_metrics(
    stats: Arc<Stats>,
    port: u16,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let stats = stats.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let body = metrics_text(&stats);
                let response = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    }))
}

/// Resolves when the process is asked to stop (SIGTERM, as Kubernetes does
/// when it deletes a pod, or Ctrl-C), naming the signal.
pub async fn stop_requested() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => return "SIGTERM",
                _ = tokio::signal::ctrl_c() => return "SIGINT",
            }
        }
    }
    match tokio::signal::ctrl_c().await {
        Ok(()) => "SIGINT",
        Err(_) => std::future::pending().await,
    }
}

/// `--summary-file`, else `/dev/termination-log` when it exists.
pub fn summary_path(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = flag {
        return Some(path.to_path_buf());
    }
    let default = Path::new("/dev/termination-log");
    default.exists().then(|| default.to_path_buf())
}

/// Writes the summary (also printed to stdout, one JSON line).
pub fn write_summary(stats: &Stats, path: Option<&Path>) {
    let text = stats.summary().to_string();
    println!("{text}");
    if let Some(path) = path {
        if let Err(err) = std::fs::write(path, &text) {
            warn!(path = %path.display(), error = %err, "cannot write the summary");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_stays_under_the_termination_message_limit() {
        let stats = Stats::new("validate");
        Stats::add(&stats.missing, 3);
        for kind in ["missing", "extra", "mismatched", "inFlight"] {
            for i in 0..10 {
                stats.example(kind, format!("ks.t k={i} {}", "x".repeat(300)));
            }
        }
        let summary = stats.summary();
        assert!(summary.to_string().len() <= SUMMARY_LIMIT);
        assert_eq!(summary["missing"], 3);
        assert_eq!(summary["unresolved"], 3);
        assert!(summary["examples"]
            .as_object()
            .is_some_and(|m| !m.is_empty()));
        let text = metrics_text(&stats);
        assert!(
            text.contains("ferry_validate_missing{mode=\"validate\"} 3"),
            "{text}"
        );
    }
}
