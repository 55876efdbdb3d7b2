//! Validation: walks each token range on both clusters as a merge of two
//! token-ordered streams, compares rows, re-checks differences once, and
//! optionally repairs them from the source.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures::stream::StreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::mpsc;
use tracing::{info, info_span, Instrument};

use super::cells::{render_cell, BindCell, RawRow};
use super::job::{now_micros, CommonArgs};
use super::pairing::pair_rows;
use super::progress::{self, Stats};
use super::ratelimit::RateLimiter;
use super::ring::TokenRange;
use super::scan::{point_query, Page, ScanError, ScanLayout, TableScan};
use super::schema::{CellShape, TableSchema};
use super::write::{TableWriter, TimestampMode, WriteError, WritePlanner};

/// Full or sampled validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidateMode {
    /// Every range.
    Full,
    /// `--sample-percent` of the ranges, chosen with `--seed`.
    Sample,
}

/// Command-line arguments of the validate mode.
#[derive(Args, Debug, Clone)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, env = "FERRY_VALIDATE_MODE", value_enum, default_value = "full")]
    pub mode: ValidateMode,
    /// Percentage of the ranges checked in `sample` mode.
    #[arg(long, env = "FERRY_SAMPLE_PERCENT", default_value_t = 10.0)]
    pub sample_percent: f64,
    /// Seed of the range sample (same seed, same ranges).
    #[arg(long, env = "FERRY_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Copy the source's version of missing and mismatched rows to the target.
    #[arg(long, env = "FERRY_REPAIR")]
    pub repair: bool,
    /// How the backfill wrote timestamps: `preserve` also compares WRITETIMEs.
    #[arg(
        long,
        env = "FERRY_TIMESTAMP_MODE",
        value_enum,
        default_value = "preserve"
    )]
    pub timestamp_mode: TimestampMode,
    /// TTLs (seconds) within this of each other are equal.
    #[arg(long, env = "FERRY_TTL_TOLERANCE", default_value_t = 5)]
    pub ttl_tolerance_seconds: i32,
    /// Differences of one range re-checked by point reads; beyond, counted as they are.
    #[arg(long, env = "FERRY_RECHECK_LIMIT", default_value_t = 10_000)]
    pub recheck_limit: usize,
    /// Compare the other way: the target is the reference and the source is
    /// checked against it (before a roll-back from the cut-over's
    /// `targetPrimary` is called safe). `missing` then counts rows the
    /// source lacks. Reports only: refused with `--repair`.
    #[arg(long, env = "FERRY_REVERSE")]
    pub reverse: bool,
}

/// `--reverse` with `--repair`: repairing would write into the source.
#[derive(Debug, thiserror::Error)]
#[error("--reverse compares the source against the target and only reports: it cannot be combined with --repair (that would write into the source)")]
pub struct ReverseRepairRefused;

/// Outcome figures of a validation (also in the summary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationReport {
    pub ranges: u64,
    pub compared: u64,
    pub missing: u64,
    pub extra: u64,
    pub mismatched: u64,
    pub in_flight: u64,
    pub repaired: u64,
}

impl ValidationReport {
    pub fn differences(&self) -> u64 {
        self.missing + self.extra + self.mismatched
    }
}

/// Why a range could not be validated.
#[derive(Debug, thiserror::Error)]
enum RangeError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("re-reading a row of {table} on the {cluster}: {source}")]
    Recheck {
        table: String,
        cluster: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The validation found differences it did not repair.
#[derive(Debug, thiserror::Error)]
#[error("validation found {unresolved} unresolved differences ({missing} missing, {extra} extra, {mismatched} mismatched, {repaired} repaired)")]
pub struct DifferencesFound {
    pub unresolved: u64,
    pub missing: u64,
    pub extra: u64,
    pub mismatched: u64,
    pub repaired: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Missing,
    Extra,
    Mismatched,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Mismatched => "mismatched",
        }
    }
}

struct TableCheck {
    schema: TableSchema,
    layout: ScanLayout,
    source_scan: TableScan,
    target_scan: TableScan,
    source_point: PointReads,
    target_point: PointReads,
    writer: Option<Arc<TableWriter>>,
    planner: WritePlanner,
    /// Writes the source version at the validation start - 1 µs, for rows an
    /// exact-timestamp repair cannot fix (a newer tombstone on the target).
    late_planner: WritePlanner,
}

struct PointReads {
    session: Arc<Session>,
    row: PreparedStatement,
    partition: PreparedStatement,
}

impl PointReads {
    async fn prepare(
        session: Arc<Session>,
        schema: &TableSchema,
        consistency: scylla::statement::Consistency,
    ) -> anyhow::Result<Self> {
        let mut row = session.prepare(point_query(schema, true)).await?;
        row.set_consistency(consistency);
        let mut partition = session.prepare(point_query(schema, false)).await?;
        partition.set_consistency(consistency);
        Ok(PointReads {
            session,
            row,
            partition,
        })
    }

    /// Re-reads the row with `key`'s primary key (for a static-only row, the
    /// partition's static row).
    async fn read(
        &self,
        layout: &ScanLayout,
        key: &RawRow,
    ) -> Result<Option<RawRow>, Box<dyn std::error::Error + Send + Sync>> {
        let static_only = layout.is_static_only(key);
        let values: Vec<BindCell> = layout
            .key_range(!static_only)
            .map(|i| key.cell_bytes(i).map_or(BindCell::Null, BindCell::Raw))
            .collect();
        let statement = if static_only {
            &self.partition
        } else {
            &self.row
        };
        let result = self.session.execute_unpaged(statement, values).await?;
        let rows = result.into_rows_result()?;
        for row in rows.rows::<RawRow>()? {
            let row = row?;
            if !static_only || layout.is_static_only(&row) {
                return Ok(Some(row));
            }
        }
        Ok(None)
    }
}

/// A difference found by the scan, waiting for its re-check.
struct Suspect {
    source: Option<RawRow>,
    target: Option<RawRow>,
}

/// Runs a validation and writes its summary; the CLI entry point. Exits
/// non-zero when unresolved differences remain.
pub async fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let stats = Stats::new("validate");
    let summary = progress::summary_path(args.common.summary_file.as_deref());
    let result = tokio::select! {
        result = run(&args, stats.clone()) => result,
        signal = progress::stop_requested() => Err(anyhow::anyhow!("stopped by {signal}")),
    };
    progress::write_summary(&stats, summary.as_deref());
    let report = result?;
    let unresolved = report.differences().saturating_sub(report.repaired);
    if unresolved > 0 {
        return Err(DifferencesFound {
            unresolved,
            missing: report.missing,
            extra: report.extra,
            mismatched: report.mismatched,
            repaired: report.repaired,
        }
        .into());
    }
    Ok(())
}

/// Seeded choice of `percent` % of `count` positions (splitmix64 shuffle).
pub fn sample_positions(count: usize, percent: f64, seed: u64) -> Vec<usize> {
    let mut positions: Vec<usize> = (0..count).collect();
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..positions.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        positions.swap(i, j);
    }
    let keep = ((count as f64) * percent.clamp(0.0, 100.0) / 100.0).ceil() as usize;
    positions.truncate(keep.min(count));
    positions.sort_unstable();
    positions
}

/// Runs a validation, counting into `stats`.
pub async fn run(args: &ValidateArgs, stats: Arc<Stats>) -> anyhow::Result<ValidationReport> {
    if args.reverse {
        if args.repair {
            return Err(ReverseRepairRefused.into());
        }
        // The same comparison with the clusters' roles swapped;
        // `args.reverse` tells the comparison so (see `difference`).
        let mut swapped = args.clone();
        swapped.common.connection = args.common.connection.swapped();
        return compare_tables(&swapped, stats).await;
    }
    compare_tables(args, stats).await
}

/// Compares every selected table of the cluster `args` calls the source
/// with the one it calls the target (swapped by a reverse validation).
async fn compare_tables(
    args: &ValidateArgs,
    stats: Arc<Stats>,
) -> anyhow::Result<ValidationReport> {
    let common = &args.common;
    let read = common.connection.read_consistency()?;
    let write = common.connection.write_consistency()?;
    let setup = common.setup(read).await?;
    let validation_start = now_micros();

    let mut checks = Vec::new();
    for table in &setup.tables {
        let schema = table.schema.clone();
        let source_scan = TableScan::prepare(
            "source",
            setup.source.clone(),
            &schema,
            read,
            common.page_size,
            common.page_bytes,
            common.connection.source_local_dc.clone(),
        )
        .await?;
        let target_scan = TableScan::prepare(
            "target",
            setup.target.clone(),
            &schema,
            read,
            common.page_size,
            common.page_bytes,
            common.connection.target_local_dc.clone(),
        )
        .await?;
        let writer = if args.repair && !schema.has_counters() {
            Some(Arc::new(
                TableWriter::prepare(setup.target.clone(), &schema, write, 8).await?,
            ))
        } else {
            None
        };
        checks.push(Arc::new(TableCheck {
            layout: ScanLayout::new(&schema),
            source_point: PointReads::prepare(setup.source.clone(), &schema, read).await?,
            target_point: PointReads::prepare(setup.target.clone(), &schema, read).await?,
            planner: WritePlanner::new(&schema, TimestampMode::Preserve, validation_start - 1),
            late_planner: WritePlanner::new(&schema, TimestampMode::Backdate, validation_start - 1),
            schema,
            source_scan,
            target_scan,
            writer,
        }));
    }

    let mut work = Vec::new();
    for (t, check) in checks.iter().enumerate() {
        let positions: Vec<usize> = match args.mode {
            ValidateMode::Full => (0..setup.ranges.len()).collect(),
            ValidateMode::Sample => sample_positions(
                setup.ranges.len(),
                args.sample_percent,
                args.seed.wrapping_add(t as u64),
            ),
        };
        for p in positions {
            work.push((check.clone(), setup.ranges[p]));
        }
    }
    Stats::add(&stats.ranges_total, work.len() as u64);
    stats.mark_copy_started();
    info!(ranges = work.len(), mode = ?args.mode, repair = args.repair, validation_start, "validation starting");

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
    futures::stream::iter(work)
        .for_each_concurrent(common.concurrency.max(1), |(check, range)| {
            let stats = stats.clone();
            let rows_limit = rows_limit.clone();
            let bytes_limit = bytes_limit.clone();
            let span = info_span!("range", table = %check.schema.display_name(), %range);
            async move {
                let result = compare_range(
                    &check,
                    range,
                    args,
                    validation_start,
                    &stats,
                    &rows_limit,
                    &bytes_limit,
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
    if let Some(err) = stats.first_error() {
        anyhow::bail!(
            "{} ranges could not be validated; first error: {err}",
            Stats::get(&stats.ranges_failed)
        );
    }
    let g = Stats::get;
    let report = ValidationReport {
        ranges: g(&stats.ranges_done),
        compared: g(&stats.compared),
        missing: g(&stats.missing),
        extra: g(&stats.extra),
        mismatched: g(&stats.mismatched),
        in_flight: g(&stats.in_flight),
        repaired: g(&stats.repaired),
    };
    stats.log_tables();
    info!(?report, "validation finished");
    Ok(report)
}

/// Rows of one side of a range, handed out a token at a time.
struct TokenGroups {
    pages: mpsc::Receiver<Result<Page, ScanError>>,
    buffered: VecDeque<RawRow>,
    finished: bool,
}

impl TokenGroups {
    fn new(pages: mpsc::Receiver<Result<Page, ScanError>>) -> Self {
        TokenGroups {
            pages,
            buffered: VecDeque::new(),
            finished: false,
        }
    }

    async fn fill(&mut self, stats: Option<&Stats>) -> Result<(), ScanError> {
        while self.buffered.is_empty() && !self.finished {
            match self.pages.recv().await {
                Some(page) => {
                    let page = page?;
                    if let Some(stats) = stats {
                        Stats::add(&stats.pages, 1);
                        if !page.on_replica {
                            Stats::add(&stats.pages_off_replica, 1);
                        }
                    }
                    self.buffered.extend(page.rows);
                }
                None => self.finished = true,
            }
        }
        Ok(())
    }

    /// The rows of the next token (all rows of one partition, barring token
    /// collisions), in cluster order.
    async fn next(
        &mut self,
        layout: &ScanLayout,
        stats: Option<&Stats>,
    ) -> Result<Option<(i64, Vec<RawRow>)>, ScanError> {
        self.fill(stats).await?;
        let Some(first) = self.buffered.pop_front() else {
            return Ok(None);
        };
        let token = layout.token(&first);
        let mut rows = vec![first];
        loop {
            self.fill(stats).await?;
            match self.buffered.front() {
                Some(row) if layout.token(row) == token => {
                    if let Some(row) = self.buffered.pop_front() {
                        rows.push(row);
                    }
                }
                _ => break,
            }
        }
        Ok(Some((token, rows)))
    }
}

/// Compares two versions of a row; names the first differing column.
fn difference(
    check: &TableCheck,
    source: &RawRow,
    target: &RawRow,
    args: &ValidateArgs,
) -> Option<String> {
    for slot in &check.layout.values {
        let s = check.layout.cell(source, slot);
        let t = check.layout.cell(target, slot);
        if s.value != t.value {
            return Some(format!("{} value", slot.column.name));
        }
        if s.value.is_none() || slot.shape == CellShape::Counter {
            continue;
        }
        if args.timestamp_mode == TimestampMode::Preserve {
            // The same value with a newer WRITETIME on the target is accepted:
            // a re-copied non-frozen list is 1 µs later per attempt, and a
            // repair that had to beat a target-only tombstone writes just
            // before the validation start (docs/bulk.md). An older one is not.
            // A reverse validation reads the target as `source`: there the
            // reference is the one that may be newer.
            let same_writetime = match (s.writetime, t.writetime) {
                (Some(a), Some(b)) if args.reverse => a >= b,
                (Some(a), Some(b)) => b >= a,
                (a, b) => a == b,
            };
            if !same_writetime {
                return Some(format!(
                    "{} writetime {:?} vs {:?}",
                    slot.column.name, s.writetime, t.writetime
                ));
            }
        }
        let same_ttl = match (s.ttl, t.ttl) {
            (0, 0) => true,
            (0, _) | (_, 0) => false,
            (a, b) => (a - b).abs() <= args.ttl_tolerance_seconds,
        };
        if !same_ttl {
            return Some(format!("{} ttl {} vs {}", slot.column.name, s.ttl, t.ttl));
        }
    }
    None
}

fn newest_writetime(layout: &ScanLayout, row: &RawRow) -> i64 {
    layout
        .values
        .iter()
        .filter_map(|slot| layout.cell(row, slot).writetime)
        .max()
        .unwrap_or(i64::MIN)
}

fn describe_key(schema: &TableSchema, layout: &ScanLayout, row: &RawRow) -> String {
    let mut parts = Vec::new();
    let columns = schema.partition_key.iter().chain(&schema.clustering);
    for (col, i) in columns.zip(layout.key_range(true)) {
        let cell = row.cell(i);
        if layout.clustering_range().contains(&i) && cell.is_none() {
            continue;
        }
        parts.push(format!("{}={}", col.name, render_cell(&col.cql_type, cell)));
    }
    format!("{} {}", schema.display_name(), parts.join(" "))
}

async fn compare_range(
    check: &TableCheck,
    range: TokenRange,
    args: &ValidateArgs,
    validation_start: i64,
    stats: &Stats,
    rows_limit: &RateLimiter,
    bytes_limit: &RateLimiter,
) -> Result<(), RangeError> {
    let layout = &check.layout;
    let mut source = TokenGroups::new(check.source_scan.spawn(range));
    let mut target = TokenGroups::new(check.target_scan.spawn(range));
    let mut suspects: Vec<Suspect> = Vec::new();
    let mut compared = 0u64;
    let mut next_source = source.next(layout, Some(stats)).await?;
    let mut next_target = target.next(layout, None).await?;
    loop {
        let (source_rows, target_rows) = match (&next_source, &next_target) {
            (None, None) => break,
            (Some((s, _)), Some((t, _))) if s == t => (next_source.take(), next_target.take()),
            (Some((s, _)), Some((t, _))) if s < t => (next_source.take(), None),
            (Some(_), None) => (next_source.take(), None),
            _ => (None, next_target.take()),
        };
        let source_rows = source_rows.map(|(_, rows)| rows).unwrap_or_default();
        let target_rows = target_rows.map(|(_, rows)| rows).unwrap_or_default();
        let bytes: u64 = source_rows.iter().map(RawRow::byte_size).sum();
        rows_limit.acquire(source_rows.len() as u64).await;
        bytes_limit.acquire(bytes).await;
        Stats::add(&stats.rows, source_rows.len() as u64);
        Stats::add(&stats.bytes, bytes);
        // One token's rows on each side, matched by primary key.
        pair_rows(
            layout,
            source_rows,
            target_rows,
            |source_row, target_row| {
                compared += 1;
                match (source_row, target_row) {
                    (Some(s), Some(t)) if difference(check, &s, &t, args).is_none() => {}
                    (source, target) => suspects.push(Suspect { source, target }),
                }
            },
        );
        if next_source.is_none() {
            next_source = source.next(layout, Some(stats)).await?;
        }
        if next_target.is_none() {
            next_target = target.next(layout, None).await?;
        }
    }
    Stats::add(&stats.compared, compared);
    stats.table(&check.schema.display_name(), |t| {
        t.rows_compared += compared
    });
    for (n, suspect) in suspects.into_iter().enumerate() {
        resolve(
            check,
            suspect,
            n < args.recheck_limit,
            args,
            validation_start,
            stats,
        )
        .await?;
    }
    Ok(())
}

/// Re-reads a suspect row on both sides once, then classifies it (and
/// repairs it if asked).
async fn resolve(
    check: &TableCheck,
    suspect: Suspect,
    recheck: bool,
    args: &ValidateArgs,
    validation_start: i64,
    stats: &Stats,
) -> Result<(), RangeError> {
    let layout = &check.layout;
    let table = check.schema.display_name();
    let Some(key) = suspect.source.as_ref().or(suspect.target.as_ref()).cloned() else {
        return Ok(());
    };
    let (source, target) = if recheck {
        let source = check
            .source_point
            .read(layout, &key)
            .await
            .map_err(|source| RangeError::Recheck {
                table: table.clone(),
                cluster: "source",
                source,
            })?;
        let target = check
            .target_point
            .read(layout, &key)
            .await
            .map_err(|source| RangeError::Recheck {
                table: table.clone(),
                cluster: "target",
                source,
            })?;
        (source, target)
    } else {
        (suspect.source, suspect.target)
    };
    let kind = match (&source, &target) {
        (None, None) => return Ok(()),
        (Some(s), Some(t)) => match difference(check, s, t, args) {
            None => return Ok(()),
            Some(_) => Kind::Mismatched,
        },
        (Some(_), None) => Kind::Missing,
        (None, Some(_)) => Kind::Extra,
    };
    let described = describe_key(&check.schema, layout, &key);
    let newest = source
        .iter()
        .chain(target.iter())
        .map(|r| newest_writetime(layout, r))
        .max()
        .unwrap_or(i64::MIN);
    if newest >= validation_start {
        Stats::add(&stats.in_flight, 1);
        stats.table(&table, |t| t.in_flight += 1);
        stats.example("inFlight", described);
        return Ok(());
    }
    let detail = match (&source, &target) {
        (Some(s), Some(t)) => difference(check, s, t, args).unwrap_or_default(),
        _ => String::new(),
    };
    info!(kind = kind.name(), key = %described, %detail, "difference");
    match kind {
        Kind::Missing => Stats::add(&stats.missing, 1),
        Kind::Extra => Stats::add(&stats.extra, 1),
        Kind::Mismatched => Stats::add(&stats.mismatched, 1),
    }
    stats.table(&table, |t| match kind {
        Kind::Missing => t.missing += 1,
        Kind::Extra => t.extra += 1,
        Kind::Mismatched => t.mismatched += 1,
    });
    let example = if detail.is_empty() {
        described
    } else {
        format!("{described} ({detail})")
    };
    stats.example(kind.name(), example);
    if let Some(writer) = &check.writer {
        repair(
            check,
            writer,
            kind,
            source.as_ref(),
            target.as_ref(),
            &key,
            args,
            validation_start,
        )
        .await?;
        Stats::add(&stats.repaired, 1);
        stats.table(&table, |t| t.repaired += 1);
    }
    Ok(())
}

/// How many µs after its planned timestamp a rewrite of `source_row` puts
/// its non-frozen lists: 1 µs after the newest copy the target holds (a
/// duplicated copy is newer than the source's), so the overwrite's
/// tombstone covers it; at most 1 ms.
fn list_bump(layout: &ScanLayout, source_row: &RawRow, target: Option<&RawRow>) -> i64 {
    target.map_or(0, |t| {
        layout
            .values
            .iter()
            .filter(|slot| slot.shape == CellShape::List)
            .filter_map(|slot| {
                Some(layout.cell(t, slot).writetime? - layout.cell(source_row, slot).writetime?)
            })
            .map(|d| d + 1)
            .max()
            .unwrap_or(0)
            .clamp(0, 1000)
    })
}

/// Makes the target's row equal to the source's.
///
/// Missing or mismatched: the source version is written with its original
/// timestamps, and cells only the target has get a tombstone at exactly
/// their WRITETIME. If the target still differs (it holds a tombstone newer
/// than the source data, which no write at the original timestamp can beat),
/// the source version is written again at the validation start - 1 µs.
/// Extra: the row gets a tombstone at its newest WRITETIME.
#[allow(clippy::too_many_arguments)]
async fn repair(
    check: &TableCheck,
    writer: &TableWriter,
    kind: Kind,
    source: Option<&RawRow>,
    target: Option<&RawRow>,
    key: &RawRow,
    args: &ValidateArgs,
    validation_start: i64,
) -> Result<(), RangeError> {
    let layout = &check.layout;
    let mut ops = Vec::new();
    // How much later than planned the rewrite puts its lists (see list_bump).
    let mut bump = 0;
    match (kind, source) {
        (Kind::Extra, _) | (_, None) => {
            let Some(target_row) = target else {
                return Ok(());
            };
            if layout.is_static_only(target_row) {
                for (i, slot) in layout.values.iter().enumerate() {
                    if let Some(ts) = layout.cell(target_row, slot).writetime {
                        ops.push(check.planner.plan_cell_delete(target_row, i, ts));
                    }
                }
            } else {
                let newest = newest_writetime(layout, target_row);
                // A primary-key-only row has no readable timestamp.
                let ts = if newest == i64::MIN {
                    validation_start - 1
                } else {
                    newest
                };
                ops.push(check.planner.plan_row_delete(target_row, ts));
            }
        }
        (_, Some(source_row)) => {
            bump = list_bump(layout, source_row, target);
            // The source row was read just before (a re-read of this key):
            // its TTLs count from about now.
            check
                .planner
                .plan_row(source_row, true, bump, Instant::now(), &mut ops);
            if let Some(target_row) = target {
                for (i, slot) in layout.values.iter().enumerate() {
                    let s = layout.cell(source_row, slot);
                    let t = layout.cell(target_row, slot);
                    if s.value.is_none() && t.value.is_some() {
                        if let Some(ts) = t.writetime {
                            ops.push(check.planner.plan_cell_delete(target_row, i, ts));
                        }
                    }
                }
            }
        }
    }
    for op in &ops {
        writer.execute(op).await?;
    }
    let Some(source_row) = source else {
        return Ok(());
    };
    let table = check.schema.display_name();
    let now = check
        .target_point
        .read(layout, key)
        .await
        .map_err(|source| RangeError::Recheck {
            table: table.clone(),
            cluster: "target",
            source,
        })?;
    let fixed = now
        .as_ref()
        .is_some_and(|t| difference(check, source_row, t, args).is_none());
    if !fixed {
        info!(key = %describe_key(&check.schema, layout, key), "target holds newer data than the source; rewriting at the validation start");
        // The first rewrite put a non-frozen list at most at the validation
        // start - 1 µs + `bump` (exactly there when the source has no
        // element WRITETIME, before 5.0); this one goes 1 µs after it, so
        // its tombstone covers that copy instead of keeping both.
        let mut late = Vec::new();
        check
            .late_planner
            .plan_row(source_row, true, bump + 1, Instant::now(), &mut late);
        for op in &late {
            writer.execute(op).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sample_positions;

    #[test]
    fn samples_are_reproducible_and_sized() {
        let a = sample_positions(200, 10.0, 42);
        assert_eq!(a.len(), 20);
        assert_eq!(a, sample_positions(200, 10.0, 42));
        assert_ne!(a, sample_positions(200, 10.0, 43));
        assert_eq!(sample_positions(10, 100.0, 1).len(), 10);
        assert!(sample_positions(10, 0.0, 1).is_empty());
    }
}
