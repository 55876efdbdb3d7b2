//! What backfill and validation share: flags, connecting, choosing tables,
//! checking schemas, and this pod's share of the token ranges.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use scylla::client::session::Session;
use tracing::info;

use super::conn::{connect, ConnectionArgs};
use super::ring::{ranges_of, Split, TokenRange};
use super::schema::{read_table, select_tables, TableSchema};

/// Flags common to both modes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Keyspaces to include (all non-system keyspaces when neither this nor --tables is given).
    #[arg(long, env = "FERRY_KEYSPACES", value_delimiter = ',')]
    pub keyspaces: Vec<String>,
    /// Tables to include, `keyspace.table`.
    #[arg(long, env = "FERRY_TABLES", value_delimiter = ',')]
    pub tables: Vec<String>,
    #[arg(long, env = "FERRY_EXCLUDE_KEYSPACES", value_delimiter = ',')]
    pub exclude_keyspaces: Vec<String>,
    /// Tables to exclude, `keyspace.table`.
    #[arg(long, env = "FERRY_EXCLUDE_TABLES", value_delimiter = ',')]
    pub exclude_tables: Vec<String>,

    /// Token ranges to cut the ring into (at least one per vnode range).
    #[arg(long, env = "FERRY_SPLITS", default_value_t = 256)]
    pub splits: usize,
    /// This pod's share, `i/N`. Without it, `JOB_COMPLETION_INDEX` and
    /// --split-count are used, else the whole ring.
    #[arg(long, env = "FERRY_SPLIT")]
    pub split: Option<Split>,
    /// N for `JOB_COMPLETION_INDEX` (the Indexed Job's completions).
    #[arg(long, env = "FERRY_SPLIT_COUNT")]
    pub split_count: Option<u32>,
    #[arg(long, env = "JOB_COMPLETION_INDEX", hide = true)]
    pub job_completion_index: Option<String>,

    /// Token ranges worked on at once.
    #[arg(long, env = "FERRY_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Rows per page of a range read, at most.
    #[arg(long, env = "FERRY_PAGE_SIZE", default_value_t = 2000, value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: i32,
    /// Bytes a page of a range read holds, about: each page asks for as
    /// many rows (at most --page-size) as the table's rows read so far say
    /// fit, so that the Job's memory does not depend on its rows' width;
    /// 0 asks for --page-size rows whatever their size.
    #[arg(long, env = "FERRY_PAGE_BYTES", default_value_t = 256 * 1024)]
    pub page_bytes: u64,
    /// Rows read per second from the source, for the whole pod (unlimited if unset).
    #[arg(long, env = "FERRY_ROWS_PER_SECOND")]
    pub rows_per_second: Option<u64>,
    /// Bytes read per second from the source, for the whole pod.
    #[arg(long, env = "FERRY_BYTES_PER_SECOND")]
    pub bytes_per_second: Option<u64>,

    /// Where to write the JSON summary (default: /dev/termination-log when it exists).
    #[arg(long, env = "FERRY_SUMMARY_FILE")]
    pub summary_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this port.
    #[arg(long, env = "FERRY_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Seconds between progress log lines.
    #[arg(long, env = "FERRY_PROGRESS_INTERVAL", default_value_t = 10)]
    pub progress_interval: u64,
}

/// A table to process, with its schema (identical on both clusters).
#[derive(Debug, Clone)]
pub struct JobTable {
    pub schema: TableSchema,
    pub target_gc_grace_seconds: i32,
}

/// Connected clusters and what to process.
pub struct JobSetup {
    pub source: Arc<Session>,
    pub target: Arc<Session>,
    pub tables: Vec<JobTable>,
    /// This pod's ranges (same for every table), in ring order.
    pub ranges: Vec<TokenRange>,
    pub ranges_in_ring: usize,
    pub split: Split,
}

impl CommonArgs {
    pub fn resolved_split(&self) -> anyhow::Result<Split> {
        Ok(Split::resolve(
            self.split,
            self.job_completion_index.as_deref(),
            self.split_count,
        )?)
    }

    /// Connects, selects the tables, checks both schemas, and cuts the ring.
    pub async fn setup(
        &self,
        target_consistency: scylla::statement::Consistency,
    ) -> anyhow::Result<JobSetup> {
        let split = self.resolved_split()?;
        let read = self.connection.read_consistency()?;
        let source = connect(&self.connection.source(), read).await?;
        let target = connect(&self.connection.target(), target_consistency).await?;
        let selected = select_tables(
            &source,
            &self.keyspaces,
            &self.tables,
            &self.exclude_keyspaces,
            &self.exclude_tables,
        )
        .await?;
        // A 4.x cluster on either side cannot read the stamps of a
        // non-frozen collection's cells: read such columns without them.
        let stamps = crate::bulk::schema::multi_cell_stamps(&source).await
            && crate::bulk::schema::multi_cell_stamps(&target).await;
        if !stamps {
            info!("a cluster before Cassandra 5.0: non-frozen collections and UDTs are copied without their cells' WRITETIME and TTL (docs/bulk.md)");
        }
        let mut tables = Vec::new();
        for (keyspace, table) in &selected {
            let mut schema = read_table(&source, "source", keyspace, table).await?;
            schema.multi_cell_stamps = stamps;
            let target_schema = read_table(&target, "target", keyspace, table).await?;
            schema.check_matches(&target_schema)?;
            tables.push(JobTable {
                schema,
                target_gc_grace_seconds: target_schema.gc_grace_seconds,
            });
        }
        let all = ranges_of(&source, self.splits);
        let ranges: Vec<TokenRange> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| split.owns(*i))
            .map(|(_, r)| *r)
            .collect();
        info!(
            tables = tables.len(),
            ranges_in_ring = all.len(),
            ranges_of_this_pod = ranges.len(),
            split = format!("{}/{}", split.index, split.count),
            "job planned"
        );
        Ok(JobSetup {
            source,
            target,
            tables,
            ranges,
            ranges_in_ring: all.len(),
            split,
        })
    }
}

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
