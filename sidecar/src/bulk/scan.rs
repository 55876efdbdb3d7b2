//! Reading a table's token range: the SELECT with each cell's WRITETIME and
//! TTL, paged, routed to a replica, prefetching one page ahead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::client::session::Session;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::cells::{decode_bigint, decode_int, decode_nullable_int_list, split_collection, RawRow};
use super::page_sizing::{PageSizing, RangePaging};
use super::ring::{replicas_of, token_of, ReplicaRouting, TokenRange};
use super::schema::{CellShape, Column, TableSchema};

/// Why a range could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("preparing the scan of {table}: {source}")]
    Prepare {
        table: String,
        #[source]
        source: Box<scylla::errors::PrepareError>,
    },
    #[error("reading {table} range {range} from the {cluster}: {source}")]
    Read {
        cluster: &'static str,
        table: String,
        range: TokenRange,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where each column sits in a scan row.
#[derive(Debug, Clone)]
pub struct ScanLayout {
    pub n_partition_key: usize,
    pub n_clustering: usize,
    /// One entry per value column, statics first then regulars.
    pub values: Vec<ValueSlot>,
}

/// The positions of one non-key column's value, WRITETIME and TTL.
#[derive(Debug, Clone)]
pub struct ValueSlot {
    pub column: Column,
    /// `column.shape()`, decided once: it is consulted for every row.
    pub shape: CellShape,
    pub value: usize,
    /// Absent for counters (no WRITETIME/TTL on counters).
    pub writetime: Option<usize>,
    pub ttl: Option<usize>,
    pub is_static: bool,
}

/// One element of a non-frozen list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListElement<'a> {
    pub value: &'a [u8],
    pub writetime: Option<i64>,
    pub ttl: Option<i32>,
}

/// A cell's value with its timestamp metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellMeta<'a> {
    pub value: Option<&'a [u8]>,
    /// WRITETIME, or for a non-frozen collection/UDT the newest element's.
    pub writetime: Option<i64>,
    /// Remaining TTL in seconds, 0 for none. For a non-frozen collection the
    /// longest of its elements', and 0 if any element has none (see
    /// docs/bulk.md: an element never expires earlier than on the source).
    pub ttl: i32,
}

impl ScanLayout {
    pub fn new(schema: &TableSchema) -> Self {
        let n_partition_key = schema.partition_key.len();
        let n_clustering = schema.clustering.len();
        let mut next = n_partition_key + n_clustering;
        let mut values = Vec::new();
        for column in schema.value_columns() {
            let shape = column.shape();
            let value = next;
            next += 1;
            let (writetime, ttl) = if reads_stamps(schema, shape) {
                next += 2;
                (Some(value + 1), Some(value + 2))
            } else {
                (None, None)
            };
            values.push(ValueSlot {
                shape,
                column: column.clone(),
                value,
                writetime,
                ttl,
                is_static: schema.statics.iter().any(|s| s.name == column.name),
            });
        }
        ScanLayout {
            n_partition_key,
            n_clustering,
            values,
        }
    }

    /// Where the partition key's columns sit: a scan row starts with them.
    pub fn partition_key_range(&self) -> std::ops::Range<usize> {
        0..self.n_partition_key
    }

    pub fn clustering_range(&self) -> std::ops::Range<usize> {
        let start = self.n_partition_key;
        start..start + self.n_clustering
    }

    /// Where the key columns a write or a read names sit: the partition key,
    /// and with `with_clustering` the clustering columns after it.
    pub fn key_range(&self, with_clustering: bool) -> std::ops::Range<usize> {
        if with_clustering {
            0..self.clustering_range().end
        } else {
            self.partition_key_range()
        }
    }

    /// The row's token, computed from its partition key (`ring::token_of`).
    pub fn token(&self, row: &RawRow) -> i64 {
        token_of(
            self.partition_key_range()
                .map(|i| row.cell(i).unwrap_or_default()),
        )
    }

    /// Whether the row is the static row of a partition without clustering
    /// rows (clustering columns null).
    pub fn is_static_only(&self, row: &RawRow) -> bool {
        self.n_clustering > 0 && self.clustering_range().all(|i| row.cell(i).is_none())
    }

    /// The cell of value slot `slot`.
    pub fn cell<'a>(&self, row: &'a RawRow, slot: &ValueSlot) -> CellMeta<'a> {
        let value = row.cell(slot.value);
        let writetime = slot.writetime.and_then(|i| row.cell(i)).and_then(|b| {
            if slot.shape == CellShape::List {
                // Per-element WRITETIMEs of a non-frozen list: the newest.
                split_collection(b)?
                    .iter()
                    .filter_map(|e| e.and_then(decode_bigint))
                    .max()
            } else {
                decode_bigint(b)
            }
        });
        let ttl = slot.ttl.and_then(|i| row.cell(i)).map_or(0, |b| {
            if slot.shape.is_multi_cell() {
                let ttls = decode_nullable_int_list(b).unwrap_or_default();
                if ttls.iter().any(Option::is_none) {
                    0
                } else {
                    ttls.into_iter().flatten().max().unwrap_or(0)
                }
            } else {
                decode_int(b).unwrap_or(0)
            }
        });
        CellMeta {
            value,
            writetime,
            ttl,
        }
    }

    /// A non-frozen list's elements with each one's WRITETIME and TTL
    /// (Cassandra 5 returns both per element).
    pub fn list_elements<'a>(
        &self,
        row: &'a RawRow,
        slot: &ValueSlot,
    ) -> Option<Vec<ListElement<'a>>> {
        let values = split_collection(row.cell(slot.value)?)?;
        let writetimes = slot
            .writetime
            .and_then(|i| row.cell(i))
            .and_then(split_collection)
            .unwrap_or_default();
        let ttls = slot
            .ttl
            .and_then(|i| row.cell(i))
            .and_then(decode_nullable_int_list)
            .unwrap_or_default();
        Some(
            values
                .into_iter()
                .enumerate()
                .filter_map(|(i, value)| {
                    Some(ListElement {
                        value: value?,
                        writetime: writetimes.get(i).copied().flatten().and_then(decode_bigint),
                        ttl: ttls.get(i).copied().flatten(),
                    })
                })
                .collect(),
        )
    }

    /// The partition key and clustering bytes, length-prefixed: equal keys
    /// give equal byte strings on both clusters.
    pub fn key_bytes(&self, row: &RawRow) -> Vec<u8> {
        let mut out = Vec::new();
        for i in self.key_range(true) {
            match row.cell(i) {
                Some(b) => {
                    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    out.extend_from_slice(b);
                }
                None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
            }
        }
        out
    }

    /// Whether two rows have the same primary key, byte for byte (what
    /// [`Self::key_bytes`] tells apart, without building it).
    pub fn same_key(&self, a: &RawRow, b: &RawRow) -> bool {
        self.key_range(true).all(|i| a.cell(i) == b.cell(i))
    }

    /// The partition key bytes alone.
    pub fn partition_bytes<'a>(&self, row: &'a RawRow) -> impl Iterator<Item = Option<&'a [u8]>> {
        self.partition_key_range().map(move |i| row.cell(i))
    }
}

/// Whether the scan reads a column's WRITETIME and TTL: not a counter's
/// (it has none), nor a non-frozen collection's or UDT's before Cassandra 5
/// (which cannot select them). The scan's columns and their places in a
/// row both follow from it.
fn reads_stamps(schema: &TableSchema, shape: CellShape) -> bool {
    !(shape == CellShape::Counter || (shape.is_multi_cell() && !schema.multi_cell_stamps))
}

fn select_list(schema: &TableSchema) -> String {
    let pk: Vec<String> = schema.partition_key.iter().map(Column::quoted).collect();
    let mut cols = pk.clone();
    cols.extend(schema.clustering.iter().map(Column::quoted));
    for column in schema.value_columns() {
        let q = column.quoted();
        let shape = column.shape();
        if !reads_stamps(schema, shape) {
            cols.push(q);
        } else if shape.is_multi_cell() && shape != CellShape::List {
            cols.push(format!("{q}, MAXWRITETIME({q}), TTL({q})"));
        } else {
            cols.push(format!("{q}, WRITETIME({q}), TTL({q})"));
        }
    }
    cols.join(", ")
}

/// `SELECT keys, cells... WHERE token(pk) > ? AND token(pk) <= ?`.
pub fn range_query(schema: &TableSchema) -> String {
    let pk: Vec<String> = schema.partition_key.iter().map(Column::quoted).collect();
    format!(
        "SELECT {} FROM {} WHERE token({pk}) > ? AND token({pk}) <= ?",
        select_list(schema),
        schema.qualified(),
        pk = pk.join(", ")
    )
}

/// The same columns for one row (`with_clustering`) or one partition.
pub fn point_query(schema: &TableSchema, with_clustering: bool) -> String {
    let mut conditions: Vec<String> = schema
        .partition_key
        .iter()
        .map(|c| format!("{} = ?", c.quoted()))
        .collect();
    if with_clustering {
        conditions.extend(
            schema
                .clustering
                .iter()
                .map(|c| format!("{} = ?", c.quoted())),
        );
    }
    format!(
        "SELECT {} FROM {} WHERE {}",
        select_list(schema),
        schema.qualified(),
        conditions.join(" AND ")
    )
}

/// A prepared range scan of one table on one cluster.
#[derive(Clone)]
pub struct TableScan {
    pub cluster: &'static str,
    pub session: Arc<Session>,
    pub statement: PreparedStatement,
    pub table: String,
    pub keyspace: String,
    pub table_name: String,
    pub local_dc: Option<String>,
    /// How many rows each page asks for, shared by the table's ranges.
    pub sizing: Arc<PageSizing>,
}

impl TableScan {
    pub async fn prepare(
        cluster: &'static str,
        session: Arc<Session>,
        schema: &TableSchema,
        consistency: Consistency,
        page_size: i32,
        page_bytes: u64,
        local_dc: Option<String>,
    ) -> Result<Self, ScanError> {
        let mut statement = session
            .prepare(range_query(schema))
            .await
            .map_err(|source| ScanError::Prepare {
                table: schema.display_name(),
                source: Box::new(source),
            })?;
        statement.set_consistency(consistency);
        statement.set_is_idempotent(true);
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        Ok(TableScan {
            cluster,
            session,
            statement,
            table: schema.display_name(),
            keyspace: schema.keyspace.clone(),
            table_name: schema.table.clone(),
            local_dc,
            sizing: Arc::new(PageSizing::new(page_size, page_bytes)),
        })
    }

    /// Starts reading `range` in the background; pages arrive on the
    /// returned channel (at most one page read ahead: the next is fetched
    /// once the channel is empty). The reader stops when
    /// the receiver is dropped.
    pub fn spawn(&self, range: TokenRange) -> mpsc::Receiver<Result<Page, ScanError>> {
        let (tx, rx) = mpsc::channel(1);
        let scan = self.clone();
        tokio::spawn(async move { scan.read_range(range, tx).await });
        rx
    }

    async fn read_range(self, range: TokenRange, tx: mpsc::Sender<Result<Page, ScanError>>) {
        let state = self.session.get_cluster_state();
        let replicas = replicas_of(
            &state,
            &self.keyspace,
            &self.table_name,
            range,
            self.local_dc.as_deref(),
        );
        let replica_ids: Vec<_> = replicas.iter().map(|n| n.host_id).collect();
        let mut statement = self.statement.clone();
        statement.set_load_balancing_policy(Some(Arc::new(ReplicaRouting::new(
            replicas,
            &self.session,
        ))));
        let mut paging = PagingState::start();
        let mut page_rows = RangePaging::new(&self.sizing);
        loop {
            // A page is fetched only once the channel has room for it: the
            // reader then holds no page of its own while the one before
            // waits in the channel, so a range holds at most two pages (the
            // one being copied and the one read ahead), not three.
            let Ok(slot) = tx.reserve().await else {
                return;
            };
            statement.set_page_size(page_rows.next_rows());
            let mut attempt = 0u32;
            let fetched = loop {
                match self
                    .session
                    .execute_single_page(&statement, (range.start, range.end), paging.clone())
                    .await
                {
                    Ok(page) => break Ok(page),
                    Err(err) if attempt < 5 => {
                        attempt += 1;
                        warn!(table = %self.table, %range, attempt, error = %err, "range read failed, retrying");
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                    Err(err) => break Err(err),
                }
            };
            // When the source computed this page's TTLs: the backfill takes
            // the time since off each TTL it writes (`BindCell::Ttl`).
            let read_at = Instant::now();
            let read_error = |source: Box<dyn std::error::Error + Send + Sync>| ScanError::Read {
                cluster: self.cluster,
                table: self.table.clone(),
                range,
                source,
            };
            let (result, next) = match fetched {
                Ok(page) => page,
                Err(err) => {
                    slot.send(Err(read_error(Box::new(err))));
                    return;
                }
            };
            let coordinator = result.request_coordinator().node().host_id;
            let on_replica = replica_ids.is_empty() || replica_ids.contains(&coordinator);
            if !on_replica {
                debug!(table = %self.table, %range, %coordinator, "range read served by a non-replica");
            }
            let rows = match result
                .into_rows_result()
                .map_err(|e| read_error(Box::new(e)))
                .and_then(|rows| {
                    page_rows.observe(rows.rows_num(), rows.rows_bytes_size());
                    RawRow::read_page(&rows).map_err(|e| read_error(Box::new(e)))
                }) {
                Ok(rows) => rows,
                Err(err) => {
                    slot.send(Err(err));
                    return;
                }
            };
            let last = matches!(next, PagingStateResponse::NoMorePages);
            slot.send(Ok(Page {
                rows,
                on_replica,
                read_at,
            }));
            match next {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => {}
            }
            if last {
                return;
            }
        }
    }
}

/// One page of a range scan.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<RawRow>,
    /// Whether the coordinator that served the page was a replica.
    pub on_replica: bool,
    /// When its answer arrived: the remaining TTLs it holds count from then.
    pub read_at: Instant,
}
