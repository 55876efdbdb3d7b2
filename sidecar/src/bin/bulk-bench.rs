//! Benchmark of the bulk modes against the local test bed.
//!
//! For each table size, on the same rows: the target's raw ingest rate (a
//! plain writer of the same rows, same driver, many writes in flight), the
//! backfill's rate and the validation's rate, each run `--runs` times; it
//! prints the medians (rows/s, and MB/s of the rows' key and cell values,
//! 92 bytes a row, the same basis for all three phases) and the peak RSS of
//! the backfill and validate processes (measured with /usr/bin/time).
//! The source's baseline is a plain token-range scan of the same rows by the
//! driver alone, over the ranges the Jobs use, once for the values and once
//! with each cell's WRITETIME and TTL (what the backfill reads); the last
//! line per size gives issue 16's aims as ratios of CPU per row. Each phase
//! also gets the rows one core of its client process could handle (10⁶ ÷
//! its CPU µs per row) and the bytes the loopback interface carried per row
//! (every packet of the phase, TCP/IP headers included: on the test bed all
//! traffic is loopback).
//!
//! ```text
//! cargo build --release -p ferry-sidecar --bins
//! target/release/bulk-bench --sizes 100000,1000000 --runs 3
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use ferry_sidecar::bulk::page_sizing::{PageSizing, RangePaging};
use ferry_sidecar::bulk::ring;
use ferry_sidecar::procstat::{
    callgrind_instructions, loopback_bytes, machine_busy_seconds, process_cpu_seconds,
};
use futures::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

#[derive(Parser, Debug)]
struct Args {
    #[arg(
        long,
        env = "FERRY_SOURCE_CONTACT_POINTS",
        default_value = "127.0.0.11:9042"
    )]
    source_contact_points: String,
    #[arg(long, env = "FERRY_SOURCE_DATACENTER", default_value = "source-dc")]
    source_dc: String,
    #[arg(
        long,
        env = "FERRY_TARGET_CONTACT_POINTS",
        default_value = "127.0.0.21:9042"
    )]
    target_contact_points: String,
    #[arg(long, env = "FERRY_TARGET_DATACENTER", default_value = "target-dc")]
    target_dc: String,
    /// Table sizes in rows.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    sizes: Vec<u64>,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Writes in flight of the raw writer.
    #[arg(long, default_value_t = 512)]
    raw_in_flight: usize,
    /// Extra flags passed to `ferry-sidecar backfill`.
    #[arg(long, default_value = "--concurrency 8 --splits 256")]
    backfill_flags: String,
    /// Extra flags passed to `ferry-sidecar validate`.
    #[arg(long, default_value = "--concurrency 8 --splits 256")]
    validate_flags: String,
    /// Token ranges, ranges at once and page size (rows at most, and
    /// bytes) of the plain scans, the source's baseline: the same as the
    /// backfill's and validation's defaults, pages sized the same way.
    #[arg(long, default_value_t = 256)]
    scan_splits: u64,
    #[arg(long, default_value_t = 8)]
    scan_concurrency: usize,
    #[arg(long, default_value_t = 2000)]
    scan_page_size: i32,
    #[arg(long, default_value_t = 256 * 1024)]
    scan_page_bytes: u64,
    /// The ferry-sidecar binary (default: next to this one).
    #[arg(long)]
    sidecar: Option<PathBuf>,
    /// Runs the backfill and the validation under valgrind's callgrind and
    /// reports their user-space instructions per row: a figure that does
    /// not move with the machine's load, unlike CPU time. Their rows/s and
    /// CPU columns are then valgrind's, not theirs. Needs `valgrind`.
    #[arg(long)]
    callgrind: bool,
    /// Keeps each size's keyspace when done, and loads the source only if
    /// the keyspace does not already hold a finished load of that size:
    /// variants of a build or its flags then run on the same rows (a
    /// 10M-row load takes some 25 minutes here). The target's keyspace is
    /// made anew, and its tables emptied before each run, either way.
    #[arg(long)]
    keep_tables: bool,
    /// Runs only this plain scan, `--runs` times, and prints its rate and
    /// the source JVMs' CPU per row: the baseline alone, for a profiler
    /// attached to the source (docs/benchmarks.md, "The token computed by
    /// the Job").
    #[arg(long, value_enum)]
    only_scan: Option<ScanKind>,
}

/// Row `i` of the benchmark table: 10 rows per partition, ~100 bytes of values.
fn row(i: u64) -> (i64, i32, String, i64, f64) {
    (
        (i / 10) as i64,
        (i % 10) as i32,
        format!("{i:0>64}"),
        i as i64,
        i as f64 * 0.5,
    )
}

fn row_bytes(i: u64) -> u64 {
    let (_, _, text, _, _) = row(i);
    8 + 4 + text.len() as u64 + 8 + 8
}

async fn exec(session: &Session, cql: &str) -> anyhow::Result<()> {
    session.query_unpaged(cql, ()).await?;
    Ok(())
}

async fn write_rows(
    session: Arc<Session>,
    table: &str,
    rows: u64,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let mut insert = session
        .prepare(format!("INSERT INTO {table} (k, c, v1, v2, v3) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP 1700000000000000"))
        .await?;
    insert.set_is_idempotent(true);
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..rows)
        .map(|i| {
            let (session, insert) = (session.clone(), insert.clone());
            async move {
                session.execute_unpaged(&insert, row(i)).await?;
                Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(start.elapsed().as_secs_f64())
}

/// The same rows as `write_rows`, one UNLOGGED batch per partition (10
/// rows), the way the backfill writes them.
async fn write_partition_batches(
    session: Arc<Session>,
    table: &str,
    rows: u64,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let mut insert = session
        .prepare(format!("INSERT INTO {table} (k, c, v1, v2, v3) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP 1700000000000000"))
        .await?;
    insert.set_is_idempotent(true);
    let mut batch = Batch::new(BatchType::Unlogged);
    for _ in 0..10 {
        batch.append_statement(insert.clone());
    }
    batch.set_is_idempotent(true);
    let start = Instant::now();
    let partitions = rows.div_ceil(10);
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..partitions)
        .map(|p| {
            let (session, batch) = (session.clone(), batch.clone());
            async move {
                let values: Vec<_> = (p * 10..(p * 10 + 10).min(rows)).map(row).collect();
                if values.len() == 10 {
                    session.batch(&batch, &values).await?;
                } else {
                    for v in values {
                        session
                            .query_unpaged(
                                format!(
                                    "INSERT INTO {table} (k, c, v1, v2, v3) VALUES (?, ?, ?, ?, ?)"
                                ),
                                v,
                            )
                            .await?;
                    }
                }
                Ok(())
            }
        })
        .buffer_unordered(in_flight / 4)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(start.elapsed().as_secs_f64())
}

/// What a plain token-range scan reads: the values alone, or each regular
/// cell's value with its WRITETIME and TTL as the backfill reads them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum ScanKind {
    Values,
    WithStamps,
}

/// Counts the rows of a range scan, deserialised as `R` and dropped.
/// Reads `range` page by page, each page sized as the Jobs size theirs
/// (`PageSizing`, shared by the table's ranges), each row deserialised as
/// `R` and dropped; returns the rows read.
async fn count_range<R>(
    session: &Session,
    select: &PreparedStatement,
    table: &str,
    range: ring::TokenRange,
    sizing: &PageSizing,
) -> anyhow::Result<u64>
where
    R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
{
    let mut select = select.clone();
    // Sent to the range's replica, as the Jobs send theirs: any other node
    // would fetch the rows from the replica and charge the source twice.
    let (keyspace, table) = table.split_once('.').unwrap_or(("", table));
    let replicas = ring::replicas_of(&session.get_cluster_state(), keyspace, table, range, None);
    select.set_load_balancing_policy(Some(Arc::new(ring::ReplicaRouting::new(replicas, session))));
    let mut paging = PagingState::start();
    let mut page_rows = RangePaging::new(sizing);
    let mut rows = 0u64;
    loop {
        select.set_page_size(page_rows.next_rows());
        let (result, next) = session
            .execute_single_page(&select, (range.start, range.end), paging)
            .await?;
        let page = result.into_rows_result()?;
        page_rows.observe(page.rows_num(), page.rows_bytes_size());
        for row in page.rows::<R>()? {
            row?;
            rows += 1;
        }
        match next {
            PagingStateResponse::HasMorePages { state } => paging = state,
            PagingStateResponse::NoMorePages => return Ok(rows),
        }
    }
}

/// The baseline of the source's cost per row: the driver alone reading
/// `table` range by range, with the ranges the backfill and the validation
/// use (`ring::ranges_of`: the vnode ranges subdivided to `splits`),
/// `concurrency` at once, pages sized as theirs are (about `page_bytes`, at
/// most `page_size` rows), rows deserialised and dropped. Returns the rows
/// read and the seconds it took.
async fn plain_scan(
    session: Arc<Session>,
    table: &str,
    kind: ScanKind,
    splits: u64,
    concurrency: usize,
    page_size: i32,
    page_bytes: u64,
) -> anyhow::Result<(u64, f64)> {
    let stamped = |keys: &str| {
        ["v1", "v2", "v3"]
            .iter()
            .map(|c| format!("{c}, WRITETIME({c}), TTL({c})"))
            .fold(keys.to_owned(), |acc, c| format!("{acc}, {c}"))
    };
    let columns = match kind {
        ScanKind::Values => "k, c, v1, v2, v3".to_owned(),
        ScanKind::WithStamps => stamped("k, c"),
    };
    let mut select = session
        .prepare(format!(
            "SELECT {columns} FROM {table} WHERE token(k) > ? AND token(k) <= ?"
        ))
        .await?;
    select.set_is_idempotent(true);
    let sizing = PageSizing::new(page_size, page_bytes);
    let ranges = ring::ranges_of(&session, splits as usize);
    let start = Instant::now();
    let counts: Vec<anyhow::Result<u64>> = futures::stream::iter(ranges)
        .map(|range| {
            let (session, select, sizing) = (&session, &select, &sizing);
            async move {
                match kind {
                    ScanKind::Values => {
                        count_range::<(i64, i32, Option<String>, Option<i64>, Option<f64>)>(
                            session, select, table, range, sizing,
                        )
                        .await
                    }
                    // Value, WRITETIME, TTL of v1, v2, v3 (one column each).
                    ScanKind::WithStamps => {
                        count_range::<(
                            i64,
                            i32,
                            Option<String>,
                            Option<i64>,
                            Option<i32>,
                            Option<i64>,
                            Option<i64>,
                            Option<i32>,
                            Option<f64>,
                            Option<i64>,
                            Option<i32>,
                        )>(session, select, table, range, sizing)
                        .await
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let rows = counts.into_iter().sum::<anyhow::Result<u64>>()?;
    Ok((rows, start.elapsed().as_secs_f64()))
}

/// [`plain_scan`] of `table` with the bench's scan flags, metered once the
/// machine has settled: rows read, seconds, and its cost.
async fn metered_scan(
    source: &Arc<Session>,
    args: &Args,
    table: &str,
    kind: ScanKind,
) -> anyhow::Result<(u64, f64, Cost)> {
    let meter = Meter::start_when_idle().await;
    let (rows, secs) = plain_scan(
        source.clone(),
        table,
        kind,
        args.scan_splits,
        args.scan_concurrency,
        args.scan_page_size,
        args.scan_page_bytes,
    )
    .await?;
    Ok((rows, secs, meter.done(rows, None)))
}

struct ChildRun {
    summary: serde_json::Value,
    max_rss_kb: u64,
    /// user + system CPU seconds of the child.
    cpu_seconds: f64,
    /// Instructions the child ran (`--callgrind`).
    instructions: Option<u64>,
}

/// The instructions a callgrind output file counts.
fn callgrind_total(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    callgrind_instructions(&text).ok_or_else(|| anyhow::anyhow!("no totals in {}", path.display()))
}

/// CPU spent over one phase, per row: by the process doing the phase (the
/// bench itself for the raw writers, `ferry-sidecar` for the others) and by
/// the whole machine (Cassandra JVMs included).
#[derive(Clone, Copy)]
struct Cost {
    /// How long the phase took, and the source JVMs' CPU seconds over it:
    /// what [`Idle`] and a Job's fixed cost are taken off.
    secs: f64,
    source_jvms_seconds: f64,
    client_us_per_row: f64,
    machine_us_per_row: f64,
    source_jvms_us_per_row: f64,
    target_jvms_us_per_row: f64,
    /// Bytes the loopback interface carried per row: every packet between
    /// the client and the nodes (and between nodes), headers included.
    wire_bytes_per_row: f64,
}

/// The test bed's Cassandra JVMs: (source?, pid), from the `pid` file of each
/// node's directory under `$FERRY_RUN/cassandra` (named `source*` or
/// `target*`). Empty when the bench runs against other clusters.
fn bed_jvms() -> Vec<(bool, u32)> {
    let run = std::env::var_os("FERRY_RUN")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ferry/run")))
        .unwrap_or_default();
    let Ok(nodes) = std::fs::read_dir(run.join("cassandra")) else {
        return Vec::new();
    };
    nodes
        .flatten()
        .filter_map(|node| {
            let name = node.file_name().to_string_lossy().into_owned();
            let source = name.starts_with("source");
            if !source && !name.starts_with("target") {
                return None;
            }
            let pid = std::fs::read_to_string(node.path().join("pid")).ok()?;
            Some((source, pid.trim().parse().ok()?))
        })
        .collect()
}

/// CPU seconds of the bed's source JVMs and target JVMs.
fn jvm_cpu_seconds(jvms: &[(bool, u32)]) -> (f64, f64) {
    jvms.iter().fold((0.0, 0.0), |(s, t), &(source, pid)| {
        let cpu = process_cpu_seconds(Some(pid));
        if source {
            (s + cpu, t)
        } else {
            (s, t + cpu)
        }
    })
}

/// Where the CPU counters stood when a phase began.
struct Meter {
    started: Instant,
    machine: f64,
    own: f64,
    jvms: Vec<(bool, u32)>,
    source_jvms: f64,
    target_jvms: f64,
    wire_bytes: u64,
}

impl Meter {
    /// Starts metering once the machine has settled (see `settle`).
    async fn start_when_idle() -> Self {
        settle().await;
        let jvms = bed_jvms();
        let (source_jvms, target_jvms) = jvm_cpu_seconds(&jvms);
        Meter {
            started: Instant::now(),
            machine: machine_busy_seconds(),
            own: process_cpu_seconds(None),
            jvms,
            source_jvms,
            target_jvms,
            wire_bytes: loopback_bytes(),
        }
    }

    /// The phase's cost; `child_cpu` is the CPU of the child that did it,
    /// else this process's own.
    fn done(&self, rows: u64, child_cpu: Option<f64>) -> Cost {
        let per_row = |secs: f64| secs * 1e6 / rows.max(1) as f64;
        let (source_jvms, target_jvms) = jvm_cpu_seconds(&self.jvms);
        Cost {
            secs: self.started.elapsed().as_secs_f64(),
            source_jvms_seconds: source_jvms - self.source_jvms,
            source_jvms_us_per_row: per_row(source_jvms - self.source_jvms),
            target_jvms_us_per_row: per_row(target_jvms - self.target_jvms),
            client_us_per_row: per_row(
                child_cpu.unwrap_or_else(|| process_cpu_seconds(None) - self.own),
            ),
            machine_us_per_row: per_row(machine_busy_seconds() - self.machine),
            wire_bytes_per_row: loopback_bytes().saturating_sub(self.wire_bytes) as f64
                / rows.max(1) as f64,
        }
    }
}

fn run_child(
    sidecar: &Path,
    mode: &str,
    args: &Args,
    table: &str,
    extra: &str,
    dir: &Path,
) -> anyhow::Result<ChildRun> {
    let summary = dir.join(format!("{mode}-summary.json"));
    let time_out = dir.join(format!("{mode}-time.txt"));
    let callgrind_out = dir.join(format!("{mode}.callgrind"));
    let mut command = Command::new("/usr/bin/time");
    command.arg("-f").arg("%M %U %S").arg("-o").arg(&time_out);
    if args.callgrind {
        command
            .args(["valgrind", "--tool=callgrind", "--quiet"])
            .arg(format!("--callgrind-out-file={}", callgrind_out.display()));
    }
    command
        .arg(sidecar)
        .arg(mode)
        .args(["--source-contact-points", &args.source_contact_points])
        .args(["--source-local-dc", &args.source_dc])
        .args(["--target-contact-points", &args.target_contact_points])
        .args(["--target-local-dc", &args.target_dc])
        .args(["--tables", table])
        .arg("--summary-file")
        .arg(&summary)
        .args(extra.split_whitespace())
        .env("FERRY_LOG", "warn")
        .stdout(std::process::Stdio::null());
    let status = command.status()?;
    anyhow::ensure!(status.success(), "ferry-sidecar {mode} failed ({status})");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
    // "%M %U %S": peak RSS in KiB, user and system seconds.
    let times = std::fs::read_to_string(&time_out)?;
    let fields: Vec<&str> = times
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Ok(ChildRun {
        summary,
        max_rss_kb: field(0).unwrap_or(0.0) as u64,
        cpu_seconds: field(1).unwrap_or(0.0) + field(2).unwrap_or(0.0),
        instructions: if args.callgrind {
            Some(callgrind_total(&callgrind_out)?)
        } else {
            None
        },
    })
}

/// What the bed's JVMs spend with nothing asked of them (gossip, metrics,
/// the collector), in cores: taken off a phase's CPU in proportion to its
/// length, so that a slower phase is not charged for the JVMs' idling.
struct Idle {
    source: f64,
}

impl Idle {
    /// Measures over 10 s once the machine has settled.
    async fn measure() -> Self {
        settle().await;
        let jvms = bed_jvms();
        let (before, _) = jvm_cpu_seconds(&jvms);
        let started = Instant::now();
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let (after, _) = jvm_cpu_seconds(&jvms);
        Idle {
            source: (after - before) / started.elapsed().as_secs_f64(),
        }
    }

    /// The source JVMs' CPU seconds over a phase, less their idling.
    fn source_net(&self, cost: &Cost) -> f64 {
        cost.source_jvms_seconds - self.source * cost.secs
    }
}

/// Waits (at most 30 s) until the machine is nearly idle: the JVMs flush
/// memtables, compact and collect garbage after a phase, and that work
/// would otherwise slow, and be charged to, the next phase.
async fn settle() {
    for _ in 0..30 {
        let before = machine_busy_seconds();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if machine_busy_seconds() - before < 0.3 {
            return;
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sidecar = match &args.sidecar {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("ferry-sidecar"),
    };
    let source = Arc::new(
        SessionBuilder::new()
            .known_nodes(args.source_contact_points.split(','))
            .build()
            .await?,
    );
    let target = Arc::new(
        SessionBuilder::new()
            .known_nodes(args.target_contact_points.split(','))
            .build()
            .await?,
    );
    let dir = std::env::temp_dir().join(format!("ferry-bulk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("| rows | phase | rows/s (median) | MB/s (median) | % of raw ingest | peak RSS MiB (max) | CPU µs/row: client | source JVMs | target JVM | machine | rows/s per client core | loopback bytes/row | runs (rows/s) |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for &size in &args.sizes {
        let ks = format!("ferry_bench_{size}");
        let kept = args.keep_tables && loaded(&source, &ks, size).await;
        if kept {
            eprintln!("{ks}: the source holds a finished load of {size} rows; not loading again (--keep-tables)");
        }
        // The target is made anew every time (a kept source's target may
        // have been reset); the source only when it is loaded.
        let clusters = [(&source, &args.source_dc), (&target, &args.target_dc)];
        for (session, dc) in clusters.into_iter().skip(usize::from(kept)) {
            exec(session, &format!("DROP KEYSPACE IF EXISTS {ks}")).await?;
            exec(session, &format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', '{dc}': 1}}")).await?;
            for table in ["t", "raw", "raw_batched"] {
                exec(session, &format!("CREATE TABLE {ks}.{table} (k bigint, c int, v1 text, v2 bigint, v3 double, PRIMARY KEY (k, c))")).await?;
            }
            exec(
                session,
                &format!("CREATE TABLE {ks}.loaded (rows bigint PRIMARY KEY, layout int)"),
            )
            .await?;
            session.await_schema_agreement().await?;
        }
        if !kept {
            eprintln!("loading {size} rows into the source");
            write_rows(source.clone(), &format!("{ks}.t"), size, args.raw_in_flight).await?;
            // Written last: a load stopped half way leaves no mark.
            exec(
                &source,
                &format!("INSERT INTO {ks}.loaded (rows, layout) VALUES ({size}, {DATA_LAYOUT})"),
            )
            .await?;
        }
        let bytes: u64 = (0..size).map(row_bytes).sum();
        let (mut raw, mut raw_batched, mut backfill, mut validate) =
            (vec![], vec![], vec![], vec![]);
        let (mut backfill_copy, mut validate_copy) = (vec![], vec![]);
        let (mut backfill_rss, mut validate_rss) = (0u64, 0u64);
        let (mut backfill_instructions, mut validate_instructions) = (vec![], vec![]);
        // Per phase, in the order of the table, then the Jobs on an empty
        // table: one cost per run.
        let mut costs: [Vec<Cost>; 8] = Default::default();
        let (mut scan, mut scan_stamped) = (vec![], vec![]);
        for session in [&source, &target] {
            exec(session, &format!("CREATE TABLE IF NOT EXISTS {ks}.empty (k bigint, c int, v1 text, v2 bigint, v3 double, PRIMARY KEY (k, c))")).await?;
            session.await_schema_agreement().await?;
        }
        if let Some(kind) = args.only_scan {
            for run in 0..args.runs {
                let (rows, secs, cost) =
                    metered_scan(&source, &args, &format!("{ks}.t"), kind).await?;
                eprintln!(
                    "size {size} run {run}: {kind:?} scan of {rows} rows, {:.0} rows/s, source JVMs {:.1} µs/row",
                    rows as f64 / secs,
                    cost.source_jvms_us_per_row
                );
            }
            continue;
        }
        let idle = Idle::measure().await;
        for run in 0..args.runs {
            exec(&target, &format!("TRUNCATE {ks}.raw")).await?;
            exec(&target, &format!("TRUNCATE {ks}.raw_batched")).await?;
            let meter = Meter::start_when_idle().await;
            let secs = write_partition_batches(
                target.clone(),
                &format!("{ks}.raw_batched"),
                size,
                args.raw_in_flight,
            )
            .await?;
            raw_batched.push(size as f64 / secs);
            costs[1].push(meter.done(size, None));
            exec(&target, &format!("TRUNCATE {ks}.t")).await?;
            let meter = Meter::start_when_idle().await;
            let secs = write_rows(
                target.clone(),
                &format!("{ks}.raw"),
                size,
                args.raw_in_flight,
            )
            .await?;
            raw.push(size as f64 / secs);
            costs[0].push(meter.done(size, None));
            let job = format!("bench-{size}-{}-{run}", std::process::id());
            let meter = Meter::start_when_idle().await;
            let b = run_child(
                &sidecar,
                "backfill",
                &args,
                &format!("{ks}.t"),
                &format!("{} --job-id {job}", args.backfill_flags),
                &dir,
            )?;
            let ms = b.summary["elapsedMillis"].as_f64().unwrap_or(1.0).max(1.0);
            anyhow::ensure!(
                b.summary["rowsCopied"].as_u64() == Some(size),
                "backfill copied {}",
                b.summary
            );
            backfill.push(size as f64 / ms * 1000.0);
            costs[2].push(meter.done(size, Some(b.cpu_seconds)));
            let copy_ms = b.summary["copyMillis"].as_f64().unwrap_or(ms).max(1.0);
            backfill_copy.push(size as f64 / copy_ms * 1000.0);
            backfill_rss = backfill_rss.max(b.max_rss_kb);
            backfill_instructions.extend(b.instructions.map(|n| n as f64 / size as f64));
            let meter = Meter::start_when_idle().await;
            let v = run_child(
                &sidecar,
                "validate",
                &args,
                &format!("{ks}.t"),
                &args.validate_flags,
                &dir,
            )?;
            let ms = v.summary["elapsedMillis"].as_f64().unwrap_or(1.0).max(1.0);
            anyhow::ensure!(
                v.summary["rowsCompared"].as_u64() == Some(size)
                    && v.summary["missing"] == 0
                    && v.summary["mismatched"] == 0,
                "validation: {}",
                v.summary
            );
            validate.push(size as f64 / ms * 1000.0);
            costs[3].push(meter.done(size, Some(v.cpu_seconds)));
            let copy_ms = v.summary["copyMillis"].as_f64().unwrap_or(ms).max(1.0);
            validate_copy.push(size as f64 / copy_ms * 1000.0);
            validate_rss = validate_rss.max(v.max_rss_kb);
            validate_instructions.extend(v.instructions.map(|n| n as f64 / size as f64));
            for (kind, rates, cost) in [
                (ScanKind::Values, &mut scan, 4),
                (ScanKind::WithStamps, &mut scan_stamped, 5),
            ] {
                let (rows, secs, scan_cost) =
                    metered_scan(&source, &args, &format!("{ks}.t"), kind).await?;
                anyhow::ensure!(rows == size, "the plain scan read {rows} of {size} rows");
                rates.push(size as f64 / secs);
                costs[cost].push(scan_cost);
            }
            // A Job's fixed cost: connecting, reading schemas, its
            // checkpoint table, every range asked once, on an empty table.
            for (mode, flags, cost) in [
                ("backfill", &args.backfill_flags, 6),
                ("validate", &args.validate_flags, 7),
            ] {
                let meter = Meter::start_when_idle().await;
                let job = format!("bench-empty-{size}-{}-{run}", std::process::id());
                let flags = match mode {
                    "backfill" => format!("{flags} --job-id {job}"),
                    _ => flags.clone(),
                };
                let j = run_child(&sidecar, mode, &args, &format!("{ks}.empty"), &flags, &dir)?;
                costs[cost].push(meter.done(1, Some(j.cpu_seconds)));
            }
            eprintln!("size {size} run {run}: raw {:.0} rows/s, raw batched {:.0} rows/s, backfill {:.0} rows/s, validate {:.0} rows/s", raw[run], raw_batched[run], backfill[run], validate[run]);
        }
        // The % column compares with the faster of the two raw writers.
        let raw_median = median(raw.clone()).max(median(raw_batched.clone()));
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mb = |v: &[f64]| {
            median(
                v.iter()
                    .map(|r| r * bytes as f64 / size as f64 / 1e6)
                    .collect(),
            )
        };
        // One table row per phase; RSS only for the ferry-sidecar processes.
        let row = |phase: &str, v: &[f64], rss_kb: Option<u64>, cost: Option<&[Cost]>| {
            let rss = rss_kb.map_or("-".to_owned(), |kb| format!("{:.0}", kb as f64 / 1024.0));
            // The median of one figure over the runs, with `digits` decimals.
            let figure = |f: &dyn Fn(&Cost) -> f64, digits: usize| {
                cost.map_or("-".to_owned(), |c| {
                    format!("{:.digits$}", median(c.iter().map(f).collect()))
                })
            };
            let cpu = |f: fn(&Cost) -> f64| figure(&f, 1);
            // What one core of the client process alone could do.
            let per_core = figure(&|c| 1e6 / c.client_us_per_row.max(0.001), 0);
            let wire = figure(&|c| c.wire_bytes_per_row, 0);
            println!(
                "| {size} | {phase} | {:.0} | {:.1} | {:.0}% | {rss} | {} | {} | {} | {} | {per_core} | {wire} | {} |",
                median(v.to_vec()),
                mb(v),
                median(v.to_vec()) / raw_median * 100.0,
                cpu(|c| c.client_us_per_row),
                cpu(|c| c.source_jvms_us_per_row),
                cpu(|c| c.target_jvms_us_per_row),
                cpu(|c| c.machine_us_per_row),
                fmt(v)
            );
        };
        row(
            "raw ingest, one INSERT per row",
            &raw,
            None,
            Some(&costs[0]),
        );
        row(
            "raw ingest, one UNLOGGED batch per partition",
            &raw_batched,
            None,
            Some(&costs[1]),
        );
        row("backfill", &backfill, Some(backfill_rss), Some(&costs[2]));
        row(
            "backfill, copy phase (after connecting and reading schemas)",
            &backfill_copy,
            None,
            None,
        );
        row("validate", &validate, Some(validate_rss), Some(&costs[3]));
        row("validate, compare phase", &validate_copy, None, None);
        row("source plain scan (values)", &scan, None, Some(&costs[4]));
        row(
            "source plain scan (values, WRITETIME, TTL)",
            &scan_stamped,
            None,
            Some(&costs[5]),
        );

        // Issue 16's aims, each a ratio of CPU per row in this run.
        let per_row = |i: usize, f: fn(&Cost) -> f64| median(costs[i].iter().map(f).collect());
        let target_cpu = |c: &Cost| c.target_jvms_us_per_row;
        let source_cpu = |c: &Cost| c.source_jvms_us_per_row;
        println!(
            "| {size} | aims: backfill's target ÷ batched writer's target {:.2} (≤ 1.05); backfill's source ÷ plain scan {:.2} (≤ 1.05), ÷ stamped scan {:.2}; validation's source ÷ plain scan {:.2}; backfill client {:.1} µs/row (≤ 2) | | | | | | | | | | | |",
            per_row(2, target_cpu) / per_row(1, target_cpu),
            per_row(2, source_cpu) / per_row(4, source_cpu),
            per_row(2, source_cpu) / per_row(5, source_cpu),
            per_row(3, source_cpu) / per_row(4, source_cpu),
            per_row(2, |c| c.client_us_per_row),
        );
        // The same, net of what the JVMs spend idle and of a Job's fixed
        // cost (medians over the runs), so that what is left is the cost of
        // reading each row.
        let net = |i: usize, fixed: Option<usize>| {
            let fixed = fixed.map_or(0.0, |f| {
                median(costs[f].iter().map(|c| idle.source_net(c)).collect())
            });
            median(
                costs[i]
                    .iter()
                    .map(|c| (idle.source_net(c) - fixed) * 1e6 / size as f64)
                    .collect(),
            )
        };
        println!(
            "| {size} | net of the bed's idle ({:.3} cores of source JVMs) and of a Job's fixed cost (on an empty table: backfill {:.2}, validation {:.2} CPU-s of the source): source µs/row backfill {:.2}, validation {:.2}, stamped scan {:.2}, values scan {:.2}; backfill ÷ stamped scan {:.2}, validation ÷ stamped scan {:.2} | | | | | | | | | | | |",
            idle.source,
            median(costs[6].iter().map(|c| idle.source_net(c)).collect()),
            median(costs[7].iter().map(|c| idle.source_net(c)).collect()),
            net(2, Some(6)),
            net(3, Some(7)),
            net(5, None),
            net(4, None),
            net(2, Some(6)) / net(5, None),
            net(3, Some(7)) / net(5, None),
        );
        if args.callgrind {
            println!(
                "| {size} | instructions per row (callgrind, the Job's user space; median): backfill {:.0}, validate {:.0} | | | | | | | | | | | |",
                median(backfill_instructions),
                median(validate_instructions),
            );
        }
        if !args.keep_tables {
            for session in [&source, &target] {
                exec(session, &format!("DROP KEYSPACE IF EXISTS {ks}")).await?;
            }
        }
    }
    Ok(())
}

/// The version of what [`row`] writes and of the table's columns: a load
/// marked with another is loaded again. Change it with either.
const DATA_LAYOUT: i32 = 1;

/// Whether `ks` on the source holds a finished load of `size` rows of
/// this [`DATA_LAYOUT`] (its `loaded` table is written once the load has
/// finished).
async fn loaded(source: &Session, ks: &str, size: u64) -> bool {
    let query = format!("SELECT layout FROM {ks}.loaded WHERE rows = {size}");
    let Ok(result) = source.query_unpaged(query, ()).await else {
        return false;
    };
    result
        .into_rows_result()
        .ok()
        .and_then(|rows| rows.single_row::<(Option<i32>,)>().ok())
        .is_some_and(|(layout,)| layout == Some(DATA_LAYOUT))
}
