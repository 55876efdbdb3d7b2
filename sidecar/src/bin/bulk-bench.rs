//! Benchmark of the bulk modes against the local test bed.
//!
//! For each table size, on the same rows: the target's raw ingest rate (a
//! plain writer of the same rows, same driver, many writes in flight), the
//! backfill's rate and the validation's rate, each run `--runs` times; it
//! prints the medians (rows/s, and MB/s of the rows' key and cell values,
//! 92 bytes a row, the same basis for all three phases) and the peak RSS of
//! the backfill and validate processes (measured with /usr/bin/time).
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
use futures::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};

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
    #[arg(
        long,
        default_value = "--concurrency 8 --max-in-flight 512 --splits 256"
    )]
    backfill_flags: String,
    /// Extra flags passed to `ferry-sidecar validate`.
    #[arg(long, default_value = "--concurrency 8 --splits 256")]
    validate_flags: String,
    /// The ferry-sidecar binary (default: next to this one).
    #[arg(long)]
    sidecar: Option<PathBuf>,
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

struct ChildRun {
    summary: serde_json::Value,
    max_rss_kb: u64,
}

fn run_child(
    sidecar: &Path,
    mode: &str,
    args: &Args,
    keyspace: &str,
    extra: &str,
    dir: &Path,
) -> anyhow::Result<ChildRun> {
    let summary = dir.join(format!("{mode}-summary.json"));
    let time_out = dir.join(format!("{mode}-time.txt"));
    let mut command = Command::new("/usr/bin/time");
    command
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&time_out)
        .arg(sidecar)
        .arg(mode)
        .args(["--source-contact-points", &args.source_contact_points])
        .args(["--source-local-dc", &args.source_dc])
        .args(["--target-contact-points", &args.target_contact_points])
        .args(["--target-local-dc", &args.target_dc])
        .args(["--tables", &format!("{keyspace}.t")])
        .arg("--summary-file")
        .arg(&summary)
        .args(extra.split_whitespace())
        .env("FERRY_LOG", "warn")
        .stdout(std::process::Stdio::null());
    let status = command.status()?;
    anyhow::ensure!(status.success(), "ferry-sidecar {mode} failed ({status})");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
    let max_rss_kb = std::fs::read_to_string(&time_out)?
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    Ok(ChildRun {
        summary,
        max_rss_kb,
    })
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
    println!("| rows | phase | rows/s (median) | MB/s (median) | % of raw ingest | peak RSS MiB (max) | runs (rows/s) |");
    println!("|---:|---|---:|---:|---:|---:|---|");
    for &size in &args.sizes {
        let ks = format!("ferry_bench_{size}");
        for (session, dc) in [(&source, &args.source_dc), (&target, &args.target_dc)] {
            exec(session, &format!("DROP KEYSPACE IF EXISTS {ks}")).await?;
            exec(session, &format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', '{dc}': 1}}")).await?;
            for table in ["t", "raw", "raw_batched"] {
                exec(session, &format!("CREATE TABLE {ks}.{table} (k bigint, c int, v1 text, v2 bigint, v3 double, PRIMARY KEY (k, c))")).await?;
            }
            session.await_schema_agreement().await?;
        }
        eprintln!("loading {size} rows into the source");
        write_rows(source.clone(), &format!("{ks}.t"), size, args.raw_in_flight).await?;
        let bytes: u64 = (0..size).map(row_bytes).sum();
        let (mut raw, mut raw_batched, mut backfill, mut validate) =
            (vec![], vec![], vec![], vec![]);
        let (mut backfill_copy, mut validate_copy) = (vec![], vec![]);
        let (mut backfill_rss, mut validate_rss) = (0u64, 0u64);
        for run in 0..args.runs {
            exec(&target, &format!("TRUNCATE {ks}.raw")).await?;
            exec(&target, &format!("TRUNCATE {ks}.raw_batched")).await?;
            let secs = write_partition_batches(
                target.clone(),
                &format!("{ks}.raw_batched"),
                size,
                args.raw_in_flight,
            )
            .await?;
            raw_batched.push(size as f64 / secs);
            exec(&target, &format!("TRUNCATE {ks}.t")).await?;
            let secs = write_rows(
                target.clone(),
                &format!("{ks}.raw"),
                size,
                args.raw_in_flight,
            )
            .await?;
            raw.push(size as f64 / secs);
            let job = format!("bench-{size}-{}-{run}", std::process::id());
            let b = run_child(
                &sidecar,
                "backfill",
                &args,
                &ks,
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
            let copy_ms = b.summary["copyMillis"].as_f64().unwrap_or(ms).max(1.0);
            backfill_copy.push(size as f64 / copy_ms * 1000.0);
            backfill_rss = backfill_rss.max(b.max_rss_kb);
            let v = run_child(&sidecar, "validate", &args, &ks, &args.validate_flags, &dir)?;
            let ms = v.summary["elapsedMillis"].as_f64().unwrap_or(1.0).max(1.0);
            anyhow::ensure!(
                v.summary["rowsCompared"].as_u64() == Some(size)
                    && v.summary["missing"] == 0
                    && v.summary["mismatched"] == 0,
                "validation: {}",
                v.summary
            );
            validate.push(size as f64 / ms * 1000.0);
            let copy_ms = v.summary["copyMillis"].as_f64().unwrap_or(ms).max(1.0);
            validate_copy.push(size as f64 / copy_ms * 1000.0);
            validate_rss = validate_rss.max(v.max_rss_kb);
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
        let row = |phase: &str, v: &[f64], rss_kb: Option<u64>| {
            let rss = rss_kb.map_or("-".to_owned(), |kb| format!("{:.0}", kb as f64 / 1024.0));
            println!(
                "| {size} | {phase} | {:.0} | {:.1} | {:.0}% | {rss} | {} |",
                median(v.to_vec()),
                mb(v),
                median(v.to_vec()) / raw_median * 100.0,
                fmt(v)
            );
        };
        row("raw ingest, one INSERT per row", &raw, None);
        row(
            "raw ingest, one UNLOGGED batch per partition",
            &raw_batched,
            None,
        );
        row("backfill", &backfill, Some(backfill_rss));
        row(
            "backfill, copy phase (after connecting and reading schemas)",
            &backfill_copy,
            None,
        );
        row("validate", &validate, Some(validate_rss));
        row("validate, compare phase", &validate_copy, None);
        for session in [&source, &target] {
            exec(session, &format!("DROP KEYSPACE IF EXISTS {ks}")).await?;
        }
    }
    Ok(())
}
