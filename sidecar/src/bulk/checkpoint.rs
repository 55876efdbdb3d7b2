//! Finished ranges, recorded in a small table on the target so that a pod
//! that restarts (or a re-run of the Job) skips what is already copied.
//!
//! `<checkpoint keyspace>.backfill_ranges`, one row per (job, table, range):
//! `status` is `started` while a range is copied and `done` once all its
//! writes succeeded. `attempt` counts the starts of the range (non-frozen
//! lists are re-copied 1 µs later per attempt, see write.rs).

use std::collections::HashMap;
use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;

use super::ring::TokenRange;
use super::schema::quote;

/// Why the checkpoint table could not be used.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint table {keyspace}.backfill_ranges on the target: {what}: {source}")]
pub struct CheckpointError {
    keyspace: String,
    what: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// A row of the checkpoint table: table, start, end, status, attempt.
type CheckpointRow = (String, i64, i64, Option<String>, Option<i32>);

/// What is recorded about one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeRecord {
    pub done: bool,
    pub attempt: i32,
}

/// The checkpoint table of one job.
#[derive(Clone)]
pub struct Checkpoints {
    session: Arc<Session>,
    keyspace: String,
    job: String,
    mark: PreparedStatement,
}

impl Checkpoints {
    /// Creates the keyspace and table if needed (replicated in the target's
    /// local DC, RF = min(3, nodes)).
    pub async fn open(
        session: Arc<Session>,
        keyspace: &str,
        job: &str,
        datacenter: &str,
    ) -> Result<Self, CheckpointError> {
        let err = |what: &'static str| {
            let keyspace = keyspace.to_owned();
            move |e: Box<dyn std::error::Error + Send + Sync>| CheckpointError {
                keyspace,
                what,
                source: e,
            }
        };
        let nodes = session
            .get_cluster_state()
            .get_nodes_info()
            .iter()
            .filter(|n| n.datacenter.as_deref() == Some(datacenter))
            .count()
            .clamp(1, 3);
        let ks = quote(keyspace);
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', '{}': {nodes}}}",
                    datacenter.replace('\'', "''")
                ),
                (),
            )
            .await
            .map_err(|e| err("creating the keyspace")(Box::new(e)))?;
        session
            .query_unpaged(
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.backfill_ranges (job text, table_name text, range_start bigint, range_end bigint, status text, attempt int, rows bigint, bytes bigint, updated_at timestamp, PRIMARY KEY ((job), table_name, range_start, range_end))"
                ),
                (),
            )
            .await
            .map_err(|e| err("creating the table")(Box::new(e)))?;
        session
            .await_schema_agreement()
            .await
            .map_err(|e| err("waiting for schema agreement")(Box::new(e)))?;
        let mut mark = session
            .prepare(format!(
                "INSERT INTO {ks}.backfill_ranges (job, table_name, range_start, range_end, status, attempt, rows, bytes, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, toTimestamp(now()))"
            ))
            .await
            .map_err(|e| err("preparing")(Box::new(e)))?;
        mark.set_consistency(Consistency::LocalQuorum);
        mark.set_is_idempotent(true);
        Ok(Checkpoints {
            session,
            keyspace: keyspace.to_owned(),
            job: job.to_owned(),
            mark,
        })
    }

    /// Every recorded range of the job, by (table, range).
    pub async fn load(
        &self,
    ) -> Result<HashMap<(String, TokenRange), RangeRecord>, CheckpointError> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| CheckpointError {
            keyspace: self.keyspace.clone(),
            what: "reading",
            source: e,
        };
        let mut statement = scylla::statement::Statement::new(format!(
            "SELECT table_name, range_start, range_end, status, attempt FROM {}.backfill_ranges WHERE job = ?",
            quote(&self.keyspace)
        ));
        statement.set_consistency(Consistency::LocalQuorum);
        statement.set_page_size(5000);
        let pager = self
            .session
            .query_iter(statement, (&self.job,))
            .await
            .map_err(|e| err(Box::new(e)))?;
        use futures::TryStreamExt;
        let rows: Vec<CheckpointRow> = pager
            .rows_stream()
            .map_err(|e| err(Box::new(e)))?
            .try_collect()
            .await
            .map_err(|e| err(Box::new(e)))?;
        Ok(rows
            .into_iter()
            .map(|(table, start, end, status, attempt)| {
                (
                    (table, TokenRange { start, end }),
                    RangeRecord {
                        done: status.as_deref() == Some("done"),
                        attempt: attempt.unwrap_or(0),
                    },
                )
            })
            .collect())
    }

    /// Records a range's status.
    pub async fn mark(
        &self,
        table: &str,
        range: TokenRange,
        done: bool,
        attempt: i32,
        rows: i64,
        bytes: i64,
    ) -> Result<(), CheckpointError> {
        let status = if done { "done" } else { "started" };
        self.session
            .execute_unpaged(
                &self.mark,
                (
                    &self.job,
                    table,
                    range.start,
                    range.end,
                    status,
                    attempt,
                    rows,
                    bytes,
                ),
            )
            .await
            .map(|_| ())
            .map_err(|e| CheckpointError {
                keyspace: self.keyspace.clone(),
                what: "recording a range",
                source: Box::new(e),
            })
    }
}
