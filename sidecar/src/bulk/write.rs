//! Turning a source row into target writes that keep its timestamps, and
//! executing them with retries.
//!
//! A row's cells are grouped by (WRITETIME, TTL); each group is one write
//! `USING TIMESTAMP t AND TTL ttl`, so a row whose columns were written at
//! different times or with different TTLs is copied exactly. The oldest
//! group is an INSERT (it writes the row marker, as the row's first INSERT
//! did on the source); later groups are UPDATEs (no marker). Static cells
//! are written once per partition with their own UPDATEs. Null cells are
//! left unset, never written as tombstones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use tracing::warn;

use super::batching;
use super::cells::{join_collection, BindCell, RawRow};
use super::scan::{ScanLayout, ValueSlot};
use super::schema::{CellShape, Column, TableSchema};
use bytes::Bytes;
use smallvec::SmallVec;

/// Which timestamps the copies carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampMode {
    /// Each cell keeps its source WRITETIME and remaining TTL.
    Preserve,
    /// Every cell is written at `--start-timestamp` (TTLs are kept).
    Backdate,
}

/// The three statement shapes a table needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    InsertRow,
    UpdateRow,
    UpdateStatic,
    /// `DELETE FROM t USING TIMESTAMP ? WHERE <primary key>` (repair of extra rows).
    DeleteRow,
}

/// One write to the target.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub kind: StatementKind,
    pub values: Vec<BindCell>,
    pub bytes: u64,
    /// Its size as Cassandra counts it toward a batch's
    /// ([`batching::cell_size`], [`batching::ROW_SIZE`]).
    pub counted: u64,
}

/// A row's non-null cells, each as its (WRITETIME, TTL) and slot index,
/// sorted: each run of one (WRITETIME, TTL) is one write. Kept flat and
/// small, as it is built for every row copied.
type CellKeys = SmallVec<[((i64, i32), usize); 16]>;

/// Plans the writes of a table's rows.
#[derive(Debug, Clone)]
pub struct WritePlanner {
    pub layout: ScanLayout,
    pub mode: TimestampMode,
    /// The backdate timestamp, and in preserve mode the timestamp of what has
    /// no readable WRITETIME (a primary-key-only row's marker): the migration
    /// start, older than any write the proxy mirrors.
    pub base_timestamp: i64,
    n_static: usize,
}

impl WritePlanner {
    pub fn new(schema: &TableSchema, mode: TimestampMode, base_timestamp: i64) -> Self {
        WritePlanner {
            layout: ScanLayout::new(schema),
            mode,
            base_timestamp,
            n_static: schema.statics.len(),
        }
    }

    fn static_slots(&self) -> &[ValueSlot] {
        &self.layout.values[..self.n_static]
    }

    fn regular_slots(&self) -> &[ValueSlot] {
        &self.layout.values[self.n_static..]
    }

    /// The (timestamp, ttl) of each non-null cell of `slots`, oldest first,
    /// into `keys` (the caller's: returning them would move the whole
    /// inline vector for every row).
    fn cell_keys(&self, row: &RawRow, slots: &[ValueSlot], attempt: i64, keys: &mut CellKeys) {
        keys.clear();
        for (i, slot) in slots.iter().enumerate() {
            if slot.shape == CellShape::List {
                if let Some((key, _)) = self.list_group(row, slot, attempt) {
                    keys.push((key, i));
                }
                continue;
            }
            if row.cell(slot.value).is_none() {
                continue;
            }
            let cell = self.layout.cell(row, slot);
            let ts = match self.mode {
                TimestampMode::Preserve => cell.writetime.unwrap_or(self.base_timestamp),
                TimestampMode::Backdate => self.base_timestamp,
            };
            keys.push(((ts, cell.ttl), i));
        }
        keys.sort_unstable();
    }

    /// The bytes a write sends for `slot`: the cell as read, or for a
    /// non-frozen list the elements the backfill copies.
    fn slot_value(&self, row: &RawRow, slot: &ValueSlot, attempt: i64) -> Option<Bytes> {
        if slot.shape == CellShape::List {
            self.list_group(row, slot, attempt).map(|(_, value)| value)
        } else {
            row.cell_bytes(slot.value)
        }
    }

    /// A non-frozen list's write. Its elements' cell names are timeuuids the
    /// coordinator makes up at write time, so a list cannot be rewritten
    /// idempotently:
    /// - elements written at or after the base timestamp (the proxy start)
    ///   are left out: the proxy mirrored them, and writing them again
    ///   would duplicate them;
    /// - the overwrite's tombstone is at ts-1, so a second copy at the same
    ///   ts would keep both copies; a re-copy (attempt n) therefore goes
    ///   n µs later, and its tombstone covers the earlier copy.
    fn list_group(
        &self,
        row: &RawRow,
        slot: &ValueSlot,
        attempt: i64,
    ) -> Option<((i64, i32), Bytes)> {
        let elements = self.layout.list_elements(row, slot)?;
        let kept: Vec<_> = elements
            .iter()
            .filter(|e| e.writetime.is_none_or(|w| w < self.base_timestamp))
            .collect();
        if kept.is_empty() {
            return None;
        }
        let value = if kept.len() == elements.len() {
            row.cell_bytes(slot.value)?
        } else {
            join_collection(&kept.iter().map(|e| e.value).collect::<Vec<_>>())
        };
        let ts = match self.mode {
            TimestampMode::Preserve => kept
                .iter()
                .filter_map(|e| e.writetime)
                .max()
                .unwrap_or(self.base_timestamp),
            TimestampMode::Backdate => self.base_timestamp,
        };
        let ttl = if kept.iter().any(|e| e.ttl.is_none()) {
            0
        } else {
            kept.iter().filter_map(|e| e.ttl).max().unwrap_or(0)
        };
        Some(((ts + attempt, ttl), value))
    }

    /// How many key columns a write names: the partition key, and with
    /// `with_clustering` the clustering columns too.
    fn key_count(&self, with_clustering: bool) -> usize {
        self.layout.key_range(with_clustering).len()
    }

    /// Appends the row's key cells to `bind`.
    fn push_keys(&self, row: &RawRow, with_clustering: bool, bind: &mut Vec<BindCell>) {
        bind.extend(
            self.layout
                .key_range(with_clustering)
                .map(|i| row.cell_bytes(i).map_or(BindCell::Null, BindCell::Raw)),
        );
    }

    fn keys(&self, row: &RawRow, with_clustering: bool) -> Vec<BindCell> {
        let mut keys = Vec::with_capacity(self.key_count(with_clustering));
        self.push_keys(row, with_clustering, &mut keys);
        keys
    }

    /// Appends one value per slot to `bind`: the chosen cells' bytes, every
    /// other slot unset. Returns the bytes of the values, and their size as
    /// Cassandra counts it.
    fn push_slot_values(
        &self,
        row: &RawRow,
        slots: &[ValueSlot],
        chosen: &[((i64, i32), usize)],
        attempt: i64,
        bind: &mut Vec<BindCell>,
    ) -> (u64, u64) {
        // `chosen` is in slot order (sorted by key, then slot): one pass
        // over the slots pushes each value or an unset.
        let mut chosen = chosen.iter().map(|&(_, i)| i).peekable();
        let (mut bytes, mut counted) = (0, 0);
        for (i, slot) in slots.iter().enumerate() {
            let value = chosen
                .next_if_eq(&i)
                .and_then(|_| self.slot_value(row, slot, attempt));
            bind.push(match value {
                Some(value) => {
                    bytes += value.len() as u64;
                    counted += batching::cell_size(slot.shape, &value);
                    BindCell::Raw(value)
                }
                None => BindCell::Unset,
            });
        }
        (bytes, counted)
    }

    /// The writes copying `row`; with `write_statics`, also its partition's
    /// static cells (once per partition). `attempt` is how many times this
    /// range was started before (see the note on `list_group`). `read_at`:
    /// when the source gave the row's remaining TTLs; each write takes the
    /// time since off them as it is sent ([`BindCell::Ttl`]).
    pub fn plan_row(
        &self,
        row: &RawRow,
        write_statics: bool,
        attempt: i64,
        read_at: Instant,
        out: &mut Vec<WriteOp>,
    ) {
        let ttl_cell = |seconds: i32| {
            if seconds > 0 {
                BindCell::Ttl { seconds, read_at }
            } else {
                BindCell::Int(0)
            }
        };
        let key_bytes: u64 = self
            .layout
            .key_range(true)
            .map(|i| row.cell(i).map_or(0, |b| b.len() as u64))
            .sum();
        let mut keys = CellKeys::new();
        if write_statics && self.n_static > 0 {
            let slots = self.static_slots();
            self.cell_keys(row, slots, attempt, &mut keys);
            for chosen in keys.chunk_by(|a, b| a.0 == b.0) {
                let (ts, ttl) = chosen[0].0;
                let mut bind = Vec::with_capacity(2 + slots.len() + self.key_count(false));
                bind.extend([BindCell::BigInt(ts), ttl_cell(ttl)]);
                let (bytes, counted) =
                    self.push_slot_values(row, slots, chosen, attempt, &mut bind);
                self.push_keys(row, false, &mut bind);
                out.push(WriteOp {
                    kind: StatementKind::UpdateStatic,
                    values: bind,
                    bytes,
                    counted: counted + batching::ROW_SIZE,
                });
            }
        }
        if self.layout.is_static_only(row) {
            return;
        }
        let slots = self.regular_slots();
        // Every write of a row binds its keys, one value per slot, a
        // timestamp and a TTL: one allocation of the right size each.
        let capacity = self.key_count(true) + slots.len() + 2;
        self.cell_keys(row, slots, attempt, &mut keys);
        if keys.is_empty() {
            // Only the primary key: the row exists through its marker, whose
            // timestamp and TTL CQL cannot read; see docs/bulk.md.
            let mut bind = Vec::with_capacity(capacity);
            self.push_keys(row, true, &mut bind);
            self.push_slot_values(row, slots, &[], attempt, &mut bind);
            bind.extend([BindCell::BigInt(self.base_timestamp), BindCell::Int(0)]);
            out.push(WriteOp {
                kind: StatementKind::InsertRow,
                values: bind,
                bytes: key_bytes,
                counted: key_bytes + batching::ROW_SIZE,
            });
            return;
        }
        for (n, chosen) in keys.chunk_by(|a, b| a.0 == b.0).enumerate() {
            let (ts, ttl) = chosen[0].0;
            let mut bind = Vec::with_capacity(capacity);
            if n == 0 {
                self.push_keys(row, true, &mut bind);
                let (bytes, counted) =
                    self.push_slot_values(row, slots, chosen, attempt, &mut bind);
                bind.extend([BindCell::BigInt(ts), ttl_cell(ttl)]);
                out.push(WriteOp {
                    kind: StatementKind::InsertRow,
                    values: bind,
                    bytes: bytes + key_bytes,
                    counted: counted + key_bytes + batching::ROW_SIZE,
                });
            } else {
                bind.extend([BindCell::BigInt(ts), ttl_cell(ttl)]);
                let (bytes, counted) =
                    self.push_slot_values(row, slots, chosen, attempt, &mut bind);
                self.push_keys(row, true, &mut bind);
                out.push(WriteOp {
                    kind: StatementKind::UpdateRow,
                    values: bind,
                    bytes,
                    counted: counted + key_bytes + batching::ROW_SIZE,
                });
            }
        }
    }

    /// A row tombstone at `timestamp` (repair of a row only the target has).
    pub fn plan_row_delete(&self, key_row: &RawRow, timestamp: i64) -> WriteOp {
        let mut bind = vec![BindCell::BigInt(timestamp)];
        bind.extend(self.keys(key_row, true));
        WriteOp {
            kind: StatementKind::DeleteRow,
            values: bind,
            bytes: 0,
            counted: batching::ROW_SIZE,
        }
    }

    /// A tombstone for one cell at exactly `timestamp` (repair of a cell the
    /// target has and the source does not: it shadows that cell and nothing
    /// newer).
    pub fn plan_cell_delete(&self, key_row: &RawRow, slot_index: usize, timestamp: i64) -> WriteOp {
        let is_static = slot_index < self.n_static;
        let (slots, offset) = if is_static {
            (self.static_slots(), 0)
        } else {
            (self.regular_slots(), self.n_static)
        };
        let mut bind = vec![BindCell::BigInt(timestamp), BindCell::Int(0)];
        bind.extend((0..slots.len()).map(|i| {
            if i + offset == slot_index {
                BindCell::Null
            } else {
                BindCell::Unset
            }
        }));
        bind.extend(self.keys(key_row, !is_static));
        WriteOp {
            kind: if is_static {
                StatementKind::UpdateStatic
            } else {
                StatementKind::UpdateRow
            },
            values: bind,
            bytes: 0,
            counted: batching::ROW_SIZE,
        }
    }
}

fn names(columns: &[Column]) -> Vec<String> {
    columns.iter().map(Column::quoted).collect()
}

/// `INSERT INTO t (keys, regulars) VALUES (...) USING TIMESTAMP ? AND TTL ?`.
pub fn insert_row_cql(schema: &TableSchema) -> String {
    let mut cols = names(&schema.partition_key);
    cols.extend(names(&schema.clustering));
    cols.extend(names(&schema.regulars));
    let marks = vec!["?"; cols.len()].join(", ");
    format!(
        "INSERT INTO {} ({}) VALUES ({marks}) USING TIMESTAMP ? AND TTL ?",
        schema.qualified(),
        cols.join(", ")
    )
}

fn update_cql(schema: &TableSchema, set: &[Column], with_clustering: bool) -> String {
    let sets: Vec<String> = set.iter().map(|c| format!("{} = ?", c.quoted())).collect();
    let mut conds: Vec<String> = schema
        .partition_key
        .iter()
        .map(|c| format!("{} = ?", c.quoted()))
        .collect();
    if with_clustering {
        conds.extend(
            schema
                .clustering
                .iter()
                .map(|c| format!("{} = ?", c.quoted())),
        );
    }
    format!(
        "UPDATE {} USING TIMESTAMP ? AND TTL ? SET {} WHERE {}",
        schema.qualified(),
        sets.join(", "),
        conds.join(" AND ")
    )
}

/// Why a write failed for good.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("preparing writes to {table} on the target: {source}")]
    Prepare {
        table: String,
        #[source]
        source: Box<scylla::errors::PrepareError>,
    },
    #[error("writing to {table} on the target failed after {attempts} attempts: {source}")]
    Execute {
        table: String,
        attempts: u32,
        #[source]
        source: Box<scylla::errors::ExecutionError>,
    },
}

/// Executes planned writes on the target.
#[derive(Clone)]
pub struct TableWriter {
    session: Arc<Session>,
    table: String,
    insert_row: PreparedStatement,
    update_row: Option<PreparedStatement>,
    update_static: Option<PreparedStatement>,
    delete_row: PreparedStatement,
    consistency: Consistency,
    max_attempts: u32,
    /// Whether a warning of the target was logged already.
    warned: Arc<AtomicBool>,
    /// Batches of n inserts, by n, built on first use: nearly every batch
    /// of the backfill is inserts only, and building each one afresh
    /// cloned the prepared statement for every row.
    insert_batches: Box<[OnceLock<Batch>]>,
}

/// The largest batch of inserts kept built ([`TableWriter::execute_batch`]);
/// rows small enough to fill a batch with more are rare.
const KEPT_INSERT_BATCHES: usize = 64;

impl TableWriter {
    pub async fn prepare(
        session: Arc<Session>,
        schema: &TableSchema,
        consistency: Consistency,
        max_attempts: u32,
    ) -> Result<Self, WriteError> {
        let prepare = |cql: String| {
            let session = session.clone();
            let table = schema.display_name();
            async move {
                let mut statement =
                    session
                        .prepare(cql)
                        .await
                        .map_err(|source| WriteError::Prepare {
                            table,
                            source: Box::new(source),
                        })?;
                statement.set_consistency(consistency);
                statement.set_is_idempotent(true);
                Ok::<_, WriteError>(statement)
            }
        };
        let insert_row = prepare(insert_row_cql(schema)).await?;
        let update_row = if schema.regulars.is_empty() {
            None
        } else {
            Some(prepare(update_cql(schema, &schema.regulars, true)).await?)
        };
        let update_static = if schema.statics.is_empty() {
            None
        } else {
            Some(prepare(update_cql(schema, &schema.statics, false)).await?)
        };
        let mut conds: Vec<String> = schema
            .partition_key
            .iter()
            .chain(&schema.clustering)
            .map(|c| format!("{} = ?", c.quoted()))
            .collect();
        conds.dedup();
        let delete_row = prepare(format!(
            "DELETE FROM {} USING TIMESTAMP ? WHERE {}",
            schema.qualified(),
            conds.join(" AND ")
        ))
        .await?;
        Ok(TableWriter {
            delete_row,
            consistency,
            session,
            table: schema.display_name(),
            insert_row,
            update_row,
            update_static,
            max_attempts: max_attempts.max(1),
            warned: Arc::new(AtomicBool::new(false)),
            insert_batches: (0..=KEPT_INSERT_BATCHES).map(|_| OnceLock::new()).collect(),
        })
    }

    fn statement(&self, kind: StatementKind) -> Option<&PreparedStatement> {
        match kind {
            StatementKind::InsertRow => Some(&self.insert_row),
            StatementKind::UpdateRow => self.update_row.as_ref(),
            StatementKind::UpdateStatic => self.update_static.as_ref(),
            StatementKind::DeleteRow => Some(&self.delete_row),
        }
    }

    /// Executes the writes of one partition as one UNLOGGED batch (one
    /// mutation on the replica instead of one request per row; each
    /// statement keeps its own USING TIMESTAMP), retrying the whole batch.
    /// Returns how many warnings the target sent with its answer.
    pub async fn execute_batch(&self, ops: &[WriteOp]) -> Result<u64, WriteError> {
        if let [op] = ops {
            return self.execute(op).await;
        }
        let mut values: Vec<&Vec<BindCell>> = Vec::with_capacity(ops.len());
        let mut statements = Vec::with_capacity(ops.len());
        for op in ops {
            if let Some(statement) = self.statement(op.kind) {
                statements.push(statement);
                values.push(&op.values);
            }
        }
        let all_inserts = ops.iter().all(|op| op.kind == StatementKind::InsertRow);
        let built;
        let batch = match self.insert_batches.get(ops.len()).filter(|_| all_inserts) {
            Some(kept) => kept.get_or_init(|| self.new_batch(statements)),
            None => {
                built = self.new_batch(statements);
                &built
            }
        };
        self.with_retries("batch write", || self.session.batch(batch, &values))
            .await
    }

    /// An UNLOGGED batch of `statements`, at the writer's consistency.
    fn new_batch<'a>(&self, statements: impl IntoIterator<Item = &'a PreparedStatement>) -> Batch {
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_consistency(self.consistency);
        batch.set_is_idempotent(true);
        for statement in statements {
            batch.append_statement(statement.clone());
        }
        batch
    }

    /// Executes one write, retrying with exponential backoff.
    pub async fn execute(&self, op: &WriteOp) -> Result<u64, WriteError> {
        // The planner only emits updates for tables that have such columns.
        let Some(statement) = self.statement(op.kind) else {
            return Ok(0);
        };
        self.with_retries("write", || {
            self.session.execute_unpaged(statement, &op.values)
        })
        .await
    }

    /// Runs `request` until it succeeds or `max_attempts` are used, backing
    /// off 100 ms, 200 ms, ... up to 5 s between attempts. Returns how many
    /// warnings the answer carried; the first of the run is logged.
    async fn with_retries<F, Fut>(&self, what: &str, mut request: F) -> Result<u64, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<QueryResult, scylla::errors::ExecutionError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match request().await {
                Ok(answer) => {
                    let mut warnings = 0;
                    for warning in answer.warnings() {
                        warnings += 1;
                        if !self.warned.swap(true, Ordering::Relaxed) {
                            warn!(table = %self.table, %warning, "the target warned about a {what} (logged once; ferry_bulk_target_warnings counts them)");
                        }
                    }
                    return Ok(warnings);
                }
                Err(source) if attempt >= self.max_attempts => {
                    return Err(WriteError::Execute {
                        table: self.table.clone(),
                        attempts: attempt,
                        source: Box::new(source),
                    })
                }
                Err(err) => {
                    let backoff = Duration::from_millis((50u64 << attempt.min(7)).min(5_000));
                    warn!(table = %self.table, attempt, error = %err, ?backoff, "{what} failed, retrying");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bulk::schema::ColumnKind;
    use bytes::Bytes;

    fn col(name: &str, kind: ColumnKind, position: i32, cql_type: &str) -> Column {
        Column {
            name: name.into(),
            kind,
            position,
            cql_type: cql_type.into(),
            clustering_order: "none".into(),
        }
    }

    fn schema() -> TableSchema {
        TableSchema {
            keyspace: "ks".into(),
            table: "t".into(),
            partition_key: vec![col("k", ColumnKind::PartitionKey, 0, "int")],
            clustering: vec![col("c", ColumnKind::Clustering, 0, "int")],
            statics: vec![col("s", ColumnKind::Static, -1, "int")],
            regulars: vec![
                col("a", ColumnKind::Regular, -1, "int"),
                col("b", ColumnKind::Regular, -1, "int"),
                col("l", ColumnKind::Regular, -1, "list<int>"),
            ],
            gc_grace_seconds: 864000,
            multi_cell_stamps: true,
        }
    }

    fn b(v: &[u8]) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(v))
    }

    fn i64b(v: i64) -> Option<Bytes> {
        b(&v.to_be_bytes())
    }

    fn i32b(v: i32) -> Option<Bytes> {
        b(&v.to_be_bytes())
    }

    #[test]
    fn groups_cells_by_timestamp_and_ttl() {
        let planner = WritePlanner::new(&schema(), TimestampMode::Preserve, 5);
        // k, c, s wt ttl, a wt ttl, b wt ttl, l maxwt ttl-list
        let row = RawRow::from_cells(vec![
            i32b(1),
            i32b(2),
            i32b(9),
            i64b(300),
            None,
            i32b(7),
            i64b(100),
            None,
            i32b(8),
            i64b(200),
            i32b(60),
            None,
            None,
            None,
        ]);
        let mut ops = Vec::new();
        let read_at = Instant::now();
        planner.plan_row(&row, true, 0, read_at, &mut ops);
        let kinds: Vec<_> = ops.iter().map(|o| o.kind).collect();
        assert_eq!(
            kinds,
            vec![
                StatementKind::UpdateStatic,
                StatementKind::InsertRow,
                StatementKind::UpdateRow
            ]
        );
        // The INSERT carries `a` at 100 without TTL, `b` unset.
        let insert = &ops[1].values;
        assert_eq!(
            insert[2],
            BindCell::Raw(Bytes::copy_from_slice(&7i32.to_be_bytes()))
        );
        assert_eq!(insert[3], BindCell::Unset);
        assert_eq!(&insert[5..], &[BindCell::BigInt(100), BindCell::Int(0)]);
        // The UPDATE carries `b` at 200 with TTL 60, counted from the read.
        assert_eq!(
            &ops[2].values[..2],
            &[
                BindCell::BigInt(200),
                BindCell::Ttl {
                    seconds: 60,
                    read_at
                }
            ]
        );
        assert_eq!(
            ops[2].values[3],
            BindCell::Raw(Bytes::copy_from_slice(&8i32.to_be_bytes()))
        );
    }

    #[test]
    fn primary_key_only_rows_and_static_only_partitions() {
        let planner = WritePlanner::new(&schema(), TimestampMode::Preserve, 5);
        let pk_only = RawRow::from_cells(vec![
            i32b(1),
            i32b(2),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ]);
        let mut ops = Vec::new();
        planner.plan_row(&pk_only, true, 0, Instant::now(), &mut ops);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].kind, StatementKind::InsertRow);
        assert_eq!(ops[0].values.last(), Some(&BindCell::Int(0)));
        assert_eq!(ops[0].values[ops[0].values.len() - 2], BindCell::BigInt(5));

        let static_only = RawRow::from_cells(vec![
            i32b(1),
            None,
            i32b(3),
            i64b(50),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ]);
        let mut ops = Vec::new();
        planner.plan_row(&static_only, true, 0, Instant::now(), &mut ops);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].kind, StatementKind::UpdateStatic);
    }

    #[test]
    fn lists_move_one_microsecond_per_attempt_and_backdate_uses_the_start() {
        let planner = WritePlanner::new(&schema(), TimestampMode::Preserve, 450);
        let one = Bytes::copy_from_slice(&1i32.to_be_bytes());
        let two = Bytes::copy_from_slice(&2i32.to_be_bytes());
        let list = crate::bulk::cells::join_collection(&[&one[..], &two[..]]);
        let writetimes =
            crate::bulk::cells::join_collection(&[&400i64.to_be_bytes(), &500i64.to_be_bytes()]);
        let mut cells = vec![i32b(1), i32b(2)];
        cells.extend(vec![None; 9]);
        cells.extend([Some(list), Some(writetimes), None]);
        let row = RawRow::from_cells(cells);
        let mut ops = Vec::new();
        planner.plan_row(&row, false, 2, Instant::now(), &mut ops);
        assert_eq!(ops.len(), 1);
        // The element written at 500 (after the proxy start, 450) is left
        // to the proxy; the other is written at 400 + attempt 2.
        assert_eq!(ops[0].values[5], BindCell::BigInt(402));
        assert_eq!(
            ops[0].values[4],
            BindCell::Raw(crate::bulk::cells::join_collection(&[&one[..]]))
        );

        let planner = WritePlanner::new(&schema(), TimestampMode::Backdate, 1_000);
        let row = RawRow::from_cells(vec![
            i32b(1),
            i32b(2),
            None,
            None,
            None,
            i32b(7),
            i64b(100),
            None,
            i32b(8),
            i64b(200),
            None,
            None,
            None,
            None,
        ]);
        let mut ops = Vec::new();
        planner.plan_row(&row, false, 0, Instant::now(), &mut ops);
        assert_eq!(ops.len(), 1, "one group: same timestamp, same TTL");
        assert_eq!(ops[0].values[5], BindCell::BigInt(1_000));
    }
}
