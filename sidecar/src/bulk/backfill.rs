//! The backfill: copies each token range of each table from the source to
//! the target, keeping timestamps, checkpointing finished ranges.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tracing::{info, info_span, warn, Instrument};

use super::batching::{BatchCutter, BatchLimits, TargetVnodes};
use super::cells::RawRow;
use super::checkpoint::Checkpoints;
use super::job::{now_micros, CommonArgs, JobTable};
use super::progress::{self, Stats};
use super::ratelimit::RateLimiter;
use super::ring::{ring_tokens, TokenRange};
use super::scan::{ScanError, TableScan};
use super::write::{TableWriter, TimestampMode, WriteError, WriteOp, WritePlanner};

/// What to do with counter tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CounterPolicy {
    /// Refuse to start (the default): counters cannot be copied idempotently.
    Fail,
    /// Leave counter tables out, with a warning.
    Skip,
}

/// Command-line arguments of the backfill mode.
#[derive(Args, Debug, Clone)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// `preserve`: keep each cell's WRITETIME and TTL; `backdate`: write
    /// everything at --start-timestamp.
    #[arg(
        long,
        env = "FERRY_TIMESTAMP_MODE",
        value_enum,
        default_value = "preserve"
    )]
    pub timestamp_mode: TimestampMode,
    /// Microseconds since the epoch: when the proxy started mirroring. The
    /// backdate timestamp; in preserve mode the timestamp of primary-key-only
    /// rows and the reference of the gc_grace_seconds check. Defaults to now.
    #[arg(long, env = "FERRY_START_TIMESTAMP")]
    pub start_timestamp: Option<i64>,
    /// Microseconds since the epoch: when the first proxy may have started
    /// mirroring (the operator passes the migration's start, minutes before
    /// the backfill when the roll is long). The gc_grace_seconds check
    /// counts the migration's age from it. Defaults to --start-timestamp.
    #[arg(long, env = "FERRY_MIRRORING_SINCE")]
    pub mirroring_since: Option<i64>,
    /// Keyspace on the target holding the checkpoint table.
    #[arg(long, env = "FERRY_CHECKPOINT_KEYSPACE", default_value = "ferry_meta")]
    pub checkpoint_keyspace: String,
    /// Name of this backfill in the checkpoint table (one per migration).
    #[arg(long, env = "FERRY_JOB_ID", default_value = "backfill")]
    pub job_id: String,
    /// Copy every range again, even those checkpointed as done.
    #[arg(long, env = "FERRY_RESTART")]
    pub restart: bool,
    #[arg(long, env = "FERRY_COUNTERS", value_enum, default_value = "fail")]
    pub counters: CounterPolicy,
    /// Writes in flight per pod (each a batch of up to --batch-bytes, or
    /// one row). They hold the pages they came from until answered: 512
    /// cost 8 MiB more than 128, which copied as fast.
    #[arg(long, env = "FERRY_MAX_IN_FLIGHT", default_value_t = 128)]
    pub max_in_flight: usize,
    /// Writes sent as one UNLOGGED batch hold at most this many bytes as
    /// Cassandra counts them (values, 16 per cell or collection element,
    /// 24 per row, 48 per partition; it warns above 5 KiB); a larger row
    /// goes alone; 0 sends each row's writes alone.
    #[arg(long, env = "FERRY_BATCH_BYTES", default_value_t = 5000)]
    pub batch_bytes: u64,
    /// Partitions one batch may hold, all in one vnode range of the target
    /// (Cassandra warns above 10); 1 gives each partition its own batches.
    #[arg(long, env = "FERRY_BATCH_PARTITIONS", default_value_t = 10)]
    pub batch_partitions: usize,
    /// Attempts per write before the range fails.
    #[arg(long, env = "FERRY_WRITE_ATTEMPTS", default_value_t = 8)]
    pub write_attempts: u32,
    /// Start even if the migration is older than a target table's gc_grace_seconds.
    #[arg(long, env = "FERRY_IGNORE_GC_GRACE")]
    pub ignore_gc_grace: bool,
}

/// Why the backfill stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("table {table} has counter columns: counters cannot be copied idempotently (a retried or re-run increment double-counts); exclude the table or pass --counters skip, and see docs/bulk.md")]
    Counters { table: String },
    #[error("the migration started {age_seconds} s ago, more than gc_grace_seconds ({gc_grace}) of target table {table}: tombstones of deletes mirrored since then may be gone, and the backfill could resurrect deleted rows. Raise gc_grace_seconds on the target, or pass --ignore-gc-grace")]
    GcGrace {
        table: String,
        age_seconds: i64,
        gc_grace: i32,
    },
    #[error("{failed} of {total} ranges failed (re-run to finish them; finished ranges are not copied again); first error: {first}")]
    RangesFailed {
        failed: u64,
        total: u64,
        first: String,
    },
}

/// Why one range failed.
#[derive(Debug, thiserror::Error)]
enum RangeError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Checkpoint(#[from] super::checkpoint::CheckpointError),
}

/// Outcome figures of a backfill (also in the summary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillReport {
    pub ranges_total: u64,
    pub ranges_done: u64,
    pub ranges_skipped: u64,
    pub rows: u64,
    pub bytes: u64,
    pub pages: u64,
    pub pages_off_replica: u64,
    pub write_requests: u64,
    pub target_warnings: u64,
}

struct TableJob {
    table: JobTable,
    scan: TableScan,
    writer: Arc<TableWriter>,
    planner: WritePlanner,
}

/// Runs a backfill and writes its summary; the CLI entry point.
pub async fn backfill(args: BackfillArgs) -> anyhow::Result<()> {
    let stats = Stats::new("backfill");
    let summary = progress::summary_path(args.common.summary_file.as_deref());
    // On SIGTERM the summary is still written; ranges in flight stay
    // `started` and the next run redoes them.
    let result = tokio::select! {
        result = run(&args, stats.clone()) => result.map(|_| ()),
        signal = progress::stop_requested() => Err(anyhow::anyhow!(
            "stopped by {signal}; finished ranges are checkpointed and a re-run continues from them"
        )),
    };
    progress::write_summary(&stats, summary.as_deref());
    result
}

/// When mirroring may have begun: the earlier of the backfill's start and
/// the first proxy's.
fn mirroring_since(start_timestamp: i64, since: Option<i64>) -> i64 {
    since.map_or(start_timestamp, |s| s.min(start_timestamp))
}

/// The migration's age for the gc_grace_seconds check: from when the first
/// proxy may have mirrored a deletion, not from the backfill's own start
/// (which undercounts it by the length of the roll).
fn migration_age_seconds(now: i64, start_timestamp: i64, since: Option<i64>) -> i64 {
    (now - mirroring_since(start_timestamp, since)) / 1_000_000
}

/// Runs a backfill, counting into `stats`.
pub async fn run(args: &BackfillArgs, stats: Arc<Stats>) -> anyhow::Result<BackfillReport> {
    let common = &args.common;
    let write_consistency = common.connection.write_consistency()?;
    let setup = common.setup(write_consistency).await?;
    let start_timestamp = args.start_timestamp.unwrap_or_else(now_micros);

    let mut tables = Vec::new();
    for table in setup.tables {
        let name = table.schema.display_name();
        if table.schema.has_counters() {
            match args.counters {
                CounterPolicy::Fail => return Err(BackfillError::Counters { table: name }.into()),
                CounterPolicy::Skip => {
                    warn!(table = %name, "skipping a counter table (--counters skip)");
                    continue;
                }
            }
        }
        let age_seconds =
            migration_age_seconds(now_micros(), start_timestamp, args.mirroring_since);
        let gc_grace = table.target_gc_grace_seconds;
        if age_seconds > i64::from(gc_grace) {
            if !args.ignore_gc_grace {
                return Err(BackfillError::GcGrace {
                    table: name,
                    age_seconds,
                    gc_grace,
                }
                .into());
            }
            warn!(table = %name, age_seconds, gc_grace, "migration older than gc_grace_seconds (--ignore-gc-grace)");
        } else {
            info!(table = %name, gc_grace_seconds = gc_grace, deadline_in_seconds = i64::from(gc_grace) - age_seconds,
                "the backfill and validation must finish before this deadline, or deleted rows may come back");
        }
        let scan = TableScan::prepare(
            "source",
            setup.source.clone(),
            &table.schema,
            common.connection.read_consistency()?,
            common.page_size,
            common.page_bytes,
            common.connection.source_local_dc.clone(),
        )
        .await?;
        let writer = TableWriter::prepare(
            setup.target.clone(),
            &table.schema,
            write_consistency,
            args.write_attempts,
        )
        .await?;
        let planner = WritePlanner::new(&table.schema, args.timestamp_mode, start_timestamp);
        tables.push(Arc::new(TableJob {
            table,
            scan,
            writer: Arc::new(writer),
            planner,
        }));
    }

    let target_dc = common
        .connection
        .target_local_dc
        .clone()
        .or_else(|| {
            setup
                .target
                .get_cluster_state()
                .get_nodes_info()
                .first()
                .and_then(|n| n.datacenter.clone())
        })
        .unwrap_or_else(|| "datacenter1".to_owned());
    let checkpoints = Checkpoints::open(
        setup.target.clone(),
        &args.checkpoint_keyspace,
        &args.job_id,
        &target_dc,
    )
    .await?;
    let recorded = checkpoints.load().await?;

    if let Some(min_gc_grace) = tables.iter().map(|t| t.table.target_gc_grace_seconds).min() {
        stats.deadline_micros.store(
            mirroring_since(start_timestamp, args.mirroring_since)
                + i64::from(min_gc_grace) * 1_000_000,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    let mut work: Vec<(Arc<TableJob>, TokenRange, i32)> = Vec::new();
    for job in &tables {
        let name = job.table.schema.display_name();
        for range in &setup.ranges {
            Stats::add(&stats.ranges_total, 1);
            let record = recorded.get(&(name.clone(), *range));
            if record.is_some_and(|r| r.done) && !args.restart {
                Stats::add(&stats.ranges_skipped, 1);
                Stats::add(&stats.ranges_done, 1);
                continue;
            }
            let attempt = record.map_or(0, |r| r.attempt + 1);
            work.push((job.clone(), *range, attempt));
        }
    }
    stats.mark_copy_started();
    info!(
        ranges = work.len(),
        skipped = Stats::get(&stats.ranges_skipped),
        mode = ?args.timestamp_mode,
        start_timestamp,
        "backfill starting"
    );

    let progress_log = progress::spawn_progress_log(
        stats.clone(),
        Duration::from_secs(common.progress_interval.max(1)),
    );
    let metrics = match common.metrics_port {
        Some(port) => Some(progress::serve_metrics(stats.clone(), port).await?),
        None => None,
    };
    let rows_limit = Arc::new(RateLimiter::new(common.rows_per_second));
    let bytes_limit = Arc::new(RateLimiter::new(common.bytes_per_second));
    let concurrency = common.concurrency.max(1);
    let in_flight_per_range = (args.max_in_flight / concurrency).max(1);
    let batch_limits = BatchLimits {
        max_bytes: args.batch_bytes,
        max_partitions: args.batch_partitions,
    };
    let target_ring = ring_tokens(&setup.target.get_cluster_state());
    if target_ring.is_empty() {
        warn!("the target's token ring is unknown: batches may hold partitions of several vnode ranges, which costs the target forwarding");
    }
    let target_vnodes = Arc::new(TargetVnodes::new(target_ring));

    futures::stream::iter(work)
        .for_each_concurrent(concurrency, |(job, range, attempt)| {
            let stats = stats.clone();
            let checkpoints = checkpoints.clone();
            let rows_limit = rows_limit.clone();
            let bytes_limit = bytes_limit.clone();
            let target_vnodes = target_vnodes.clone();
            let table = job.table.schema.display_name();
            let span = info_span!("range", %table, %range, attempt);
            async move {
                let result = copy_range(
                    &job,
                    range,
                    attempt,
                    &checkpoints,
                    &stats,
                    &rows_limit,
                    &bytes_limit,
                    in_flight_per_range,
                    BatchCutter::new(&target_vnodes, batch_limits),
                )
                .await;
                stats.record_range(result);
            }
            .instrument(span)
        })
        .await;

    progress_log.abort();
    if let Some(handle) = metrics {
        handle.abort();
    }
    stats.log_progress(&mut (stats.started, 0));
    let failed = Stats::get(&stats.ranges_failed);
    if failed > 0 {
        return Err(BackfillError::RangesFailed {
            failed,
            total: Stats::get(&stats.ranges_total),
            first: stats.first_error().unwrap_or_default(),
        }
        .into());
    }
    Ok(BackfillReport {
        ranges_total: Stats::get(&stats.ranges_total),
        ranges_done: Stats::get(&stats.ranges_done),
        ranges_skipped: Stats::get(&stats.ranges_skipped),
        rows: Stats::get(&stats.rows),
        bytes: Stats::get(&stats.bytes),
        pages: Stats::get(&stats.pages),
        pages_off_replica: Stats::get(&stats.pages_off_replica),
        write_requests: Stats::get(&stats.write_requests),
        target_warnings: Stats::get(&stats.target_warnings),
    })
}

async fn send_batch(writer: Arc<TableWriter>, batch: Vec<WriteOp>) -> Result<u64, WriteError> {
    writer.execute_batch(&batch).await
}

/// Counts a write request the target answered, with its warnings.
fn answered(stats: &Stats, warnings: u64) {
    Stats::add(&stats.write_requests, 1);
    Stats::add(&stats.target_warnings, warnings);
}

#[allow(clippy::too_many_arguments)]
async fn copy_range(
    job: &TableJob,
    range: TokenRange,
    attempt: i32,
    checkpoints: &Checkpoints,
    stats: &Stats,
    rows_limit: &RateLimiter,
    bytes_limit: &RateLimiter,
    max_in_flight: usize,
    mut batches: BatchCutter<'_>,
) -> Result<(), RangeError> {
    let table = job.table.schema.display_name();
    checkpoints
        .mark(&table, range, false, attempt, 0, 0)
        .await?;
    let mut pages = job.scan.spawn(range);
    let mut pending = FuturesUnordered::new();
    let mut last_partition: Option<Vec<Option<Bytes>>> = None;
    let mut ops: Vec<WriteOp> = Vec::new();
    let (mut rows, mut bytes, mut bytes_reported) = (0u64, 0u64, 0u64);
    // Sends a batch, first waiting while `max_in_flight` are pending.
    macro_rules! submit {
        ($batch:expr) => {{
            let batch: Vec<WriteOp> = $batch;
            while pending.len() >= max_in_flight {
                if let Some(result) = pending.next().await {
                    answered(stats, result?);
                }
            }
            bytes += batch.iter().map(|o| o.bytes).sum::<u64>();
            pending.push(send_batch(job.writer.clone(), batch));
            // Polled once now, so that it is sent now: a write is a future
            // that does nothing until polled, and `pending` was polled only
            // when full or at the range's end, so a range of fewer batches
            // than that sent nothing until it was read whole.
            harvest!();
        }};
    }
    // Polls `pending` without waiting: sends what was pushed, and counts
    // (and frees) what the target has answered.
    macro_rules! harvest {
        () => {{
            while let Some(Some(result)) = pending.next().now_or_never() {
                answered(stats, result?);
            }
        }};
    }
    while let Some(page) = pages.recv().await {
        let page = page?;
        Stats::add(&stats.pages, 1);
        if !page.on_replica {
            Stats::add(&stats.pages_off_replica, 1);
        }
        rows_limit.acquire(page.rows.len() as u64).await;
        if bytes_limit.is_limited() {
            let page_bytes = page.rows.iter().map(RawRow::byte_size).sum();
            bytes_limit.acquire(page_bytes).await;
        }
        for row in &page.rows {
            // Compared in place; a copy of the key is kept once per partition.
            let layout = &job.planner.layout;
            let new_partition = last_partition.as_ref().is_none_or(|last| {
                !last
                    .iter()
                    .map(Option::as_deref)
                    .eq(layout.partition_bytes(row))
            });
            if new_partition {
                last_partition = Some(
                    layout
                        .partition_key_range()
                        .map(|i| row.cell_bytes(i))
                        .collect(),
                );
            }
            let planned = ops.len();
            job.planner.plan_row(
                row,
                new_partition,
                i64::from(attempt),
                page.read_at,
                &mut ops,
            );
            let size = ops[planned..].iter().map(|op| op.counted).sum();
            if batches.before_row(new_partition, || layout.token(row), size) && planned > 0 {
                let this_row = ops.split_off(planned);
                submit!(std::mem::replace(&mut ops, this_row));
            }
            rows += 1;
        }
        Stats::add(&stats.rows, page.rows.len() as u64);
        Stats::add(&stats.bytes, bytes - bytes_reported);
        bytes_reported = bytes;
    }
    if !ops.is_empty() {
        let batch = std::mem::take(&mut ops);
        submit!(batch);
    }
    Stats::add(&stats.bytes, bytes - bytes_reported);
    while let Some(result) = pending.next().await {
        answered(stats, result?);
    }
    checkpoints
        .mark(&table, range, true, attempt, rows as i64, bytes as i64)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_counts_from_the_first_proxy_not_the_backfill() {
        let minute = 60_000_000;
        let start = 100 * minute;
        // The roll took 20 minutes before the backfill started.
        assert_eq!(
            migration_age_seconds(start + minute, start, Some(start - 20 * minute)),
            21 * 60
        );
        assert_eq!(migration_age_seconds(start + minute, start, None), 60);
        // A later "since" never shortens the age.
        assert_eq!(
            migration_age_seconds(start + minute, start, Some(start + minute)),
            60
        );
    }
}
