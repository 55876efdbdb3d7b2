//! Table schemas read from `system_schema`, and the check that the target's
//! schema matches the source's before anything is written.

use scylla::client::session::Session;
use scylla::value::Row;

use crate::SYSTEM_KEYSPACES;

/// Why a schema could not be read or does not match.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("reading the {cluster} schema: {source}")]
    Query {
        cluster: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("keyspace `{keyspace}` does not exist on the {cluster}")]
    UnknownKeyspace {
        cluster: &'static str,
        keyspace: String,
    },
    #[error("table `{keyspace}.{table}` does not exist on the {cluster}")]
    UnknownTable {
        cluster: &'static str,
        keyspace: String,
        table: String,
    },
    #[error("table `{keyspace}.{table}` differs between source and target: {difference}")]
    Mismatch {
        keyspace: String,
        table: String,
        difference: String,
    },
    #[error("`{0}` is a system keyspace and is never copied")]
    SystemKeyspace(String),
    #[error("no table matches the include/exclude filters on the source")]
    NothingSelected,
}

/// What a column is in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ColumnKind {
    PartitionKey,
    Clustering,
    Static,
    Regular,
}

/// One column as `system_schema.columns` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnKind,
    /// Position within the partition key or clustering key (-1 otherwise).
    pub position: i32,
    /// The CQL type as the server spells it, e.g. `frozen<list<int>>`.
    pub cql_type: String,
    pub clustering_order: String,
}

/// How a column's cells are stored, which decides how the Jobs read,
/// write and count them. Decided from the CQL type once per column
/// ([`Column::shape`]); the Jobs keep it beside each value slot rather than
/// reading the type's text for every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellShape {
    /// One cell: any frozen or built-in type.
    Single,
    /// A counter: cannot be written with a timestamp.
    Counter,
    /// A non-frozen list: a cell per element, named by a timeuuid.
    List,
    /// A non-frozen set or map: a cell per element, named by its key.
    Collection,
    /// A non-frozen UDT: a cell per field.
    Udt,
}

impl CellShape {
    /// Stored as one cell per element or field, so its WRITETIME/TTL are
    /// per element (Cassandra 5 returns lists of them).
    pub fn is_multi_cell(self) -> bool {
        matches!(
            self,
            CellShape::List | CellShape::Collection | CellShape::Udt
        )
    }
}

impl Column {
    /// How the column's cells are stored.
    pub fn shape(&self) -> CellShape {
        let t = self.cql_type.as_str();
        if t == "counter" {
            CellShape::Counter
        } else if t.starts_with("list<") {
            CellShape::List
        } else if t.starts_with("set<") || t.starts_with("map<") {
            CellShape::Collection
        } else if !t.contains('<') && !t.starts_with('\'') && !BUILTIN_TYPES.contains(&t) {
            // A bare identifier that is no built-in type is a non-frozen UDT.
            CellShape::Udt
        } else {
            CellShape::Single
        }
    }

    /// The column name quoted for CQL.
    pub fn quoted(&self) -> String {
        quote(&self.name)
    }
}

const BUILTIN_TYPES: &[&str] = &[
    "ascii",
    "bigint",
    "blob",
    "boolean",
    "counter",
    "date",
    "decimal",
    "double",
    "duration",
    "float",
    "inet",
    "int",
    "smallint",
    "text",
    "time",
    "timestamp",
    "timeuuid",
    "tinyint",
    "uuid",
    "varchar",
    "varint",
];

/// Quotes a CQL identifier (keeps case, allows reserved words).
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// A table's layout: keys in order, then the other columns by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub keyspace: String,
    pub table: String,
    pub partition_key: Vec<Column>,
    pub clustering: Vec<Column>,
    pub statics: Vec<Column>,
    pub regulars: Vec<Column>,
    /// `gc_grace_seconds` of the table.
    pub gc_grace_seconds: i32,
    /// Whether both clusters answer `WRITETIME`/`TTL` of a non-frozen
    /// collection's or UDT's cells and `MAXWRITETIME` (Cassandra 5.0+). A
    /// Cassandra 4.x source does not: such columns are then read without
    /// their stamps (see [`multi_cell_stamps`] and docs/bulk.md).
    pub multi_cell_stamps: bool,
}

/// Whether `session`'s cluster reads the stamps of multi-cell columns:
/// Cassandra 5.0 and later (by `release_version`; unknown counts as yes).
pub async fn multi_cell_stamps(session: &Session) -> bool {
    let version = session
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .ok()
        .and_then(|r| r.into_rows_result().ok())
        .and_then(|rows| rows.rows::<(Option<String>,)>().ok()?.next()?.ok()?.0);
    stamps_in(version.as_deref())
}

/// The major version's answer to [`multi_cell_stamps`].
fn stamps_in(release_version: Option<&str>) -> bool {
    release_version
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        .is_none_or(|major| major >= 5)
}

impl TableSchema {
    /// `"ks"."table"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote(&self.keyspace), quote(&self.table))
    }

    /// `ks.table`, for logs and reports.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.keyspace, self.table)
    }

    pub fn has_counters(&self) -> bool {
        self.statics
            .iter()
            .chain(&self.regulars)
            .any(|c| c.shape() == CellShape::Counter)
    }

    /// Non-key columns: statics first, then regulars (the scan's order).
    pub fn value_columns(&self) -> impl Iterator<Item = &Column> {
        self.statics.iter().chain(&self.regulars)
    }

    /// Compares this (source) schema with the target's and names the first
    /// difference found. `gc_grace_seconds` may differ.
    pub fn check_matches(&self, target: &TableSchema) -> Result<(), SchemaError> {
        let mismatch = |difference: String| SchemaError::Mismatch {
            keyspace: self.keyspace.clone(),
            table: self.table.clone(),
            difference,
        };
        let source_cols: Vec<&Column> = self.all_columns().collect();
        let target_cols: Vec<&Column> = target.all_columns().collect();
        for col in &source_cols {
            match target_cols.iter().find(|c| c.name == col.name) {
                None => return Err(mismatch(format!("column `{}` is missing on the target", col.name))),
                Some(t) if *t != *col => {
                    return Err(mismatch(format!(
                        "column `{}` is {:?} {} (position {}, {}) on the source but {:?} {} (position {}, {}) on the target",
                        col.name, col.kind, col.cql_type, col.position, col.clustering_order,
                        t.kind, t.cql_type, t.position, t.clustering_order
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = target_cols
            .iter()
            .find(|t| !source_cols.iter().any(|c| c.name == t.name))
        {
            return Err(mismatch(format!(
                "column `{}` exists only on the target",
                extra.name
            )));
        }
        Ok(())
    }

    fn all_columns(&self) -> impl Iterator<Item = &Column> {
        self.partition_key
            .iter()
            .chain(&self.clustering)
            .chain(&self.statics)
            .chain(&self.regulars)
    }
}

fn query_error(
    cluster: &'static str,
) -> impl Fn(Box<dyn std::error::Error + Send + Sync>) -> SchemaError {
    move |source| SchemaError::Query { cluster, source }
}

async fn rows(
    session: &Session,
    cluster: &'static str,
    cql: &str,
    values: Vec<String>,
) -> Result<Vec<Row>, SchemaError> {
    let result = session
        .query_unpaged(cql, values)
        .await
        .map_err(|e| query_error(cluster)(Box::new(e)))?;
    let rows = result
        .into_rows_result()
        .map_err(|e| query_error(cluster)(Box::new(e)))?;
    rows.rows::<Row>()
        .map_err(|e| query_error(cluster)(Box::new(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| query_error(cluster)(Box::new(e)))
}

fn text(row: &Row, index: usize) -> String {
    row.columns
        .get(index)
        .and_then(|c| c.as_ref())
        .and_then(|v| v.as_text().cloned())
        .unwrap_or_default()
}

fn int(row: &Row, index: usize) -> i32 {
    row.columns
        .get(index)
        .and_then(|c| c.as_ref())
        .and_then(|v| v.as_int())
        .unwrap_or(-1)
}

/// Lists the user tables of a cluster, `(keyspace, table)`, sorted.
pub async fn list_tables(
    session: &Session,
    cluster: &'static str,
) -> Result<Vec<(String, String)>, SchemaError> {
    let rows = rows(
        session,
        cluster,
        "SELECT keyspace_name, table_name FROM system_schema.tables",
        vec![],
    )
    .await?;
    let mut tables: Vec<(String, String)> = rows
        .iter()
        .map(|r| (text(r, 0), text(r, 1)))
        .filter(|(ks, _)| !SYSTEM_KEYSPACES.contains(&ks.as_str()))
        .collect();
    tables.sort();
    Ok(tables)
}

/// Whether a keyspace exists on a cluster.
pub async fn keyspace_exists(
    session: &Session,
    cluster: &'static str,
    keyspace: &str,
) -> Result<bool, SchemaError> {
    let rows = rows(
        session,
        cluster,
        "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
        vec![keyspace.to_owned()],
    )
    .await?;
    Ok(!rows.is_empty())
}

/// Reads one table's schema.
pub async fn read_table(
    session: &Session,
    cluster: &'static str,
    keyspace: &str,
    table: &str,
) -> Result<TableSchema, SchemaError> {
    let table_rows = rows(
        session,
        cluster,
        "SELECT gc_grace_seconds FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
        vec![keyspace.to_owned(), table.to_owned()],
    )
    .await?;
    let Some(table_row) = table_rows.first() else {
        if !keyspace_exists(session, cluster, keyspace).await? {
            return Err(SchemaError::UnknownKeyspace {
                cluster,
                keyspace: keyspace.to_owned(),
            });
        }
        return Err(SchemaError::UnknownTable {
            cluster,
            keyspace: keyspace.to_owned(),
            table: table.to_owned(),
        });
    };
    let gc_grace_seconds = int(table_row, 0);
    let column_rows = rows(
        session,
        cluster,
        "SELECT column_name, kind, position, type, clustering_order FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?",
        vec![keyspace.to_owned(), table.to_owned()],
    )
    .await?;
    let mut schema = TableSchema {
        keyspace: keyspace.to_owned(),
        table: table.to_owned(),
        partition_key: vec![],
        clustering: vec![],
        statics: vec![],
        regulars: vec![],
        gc_grace_seconds,
        multi_cell_stamps: true,
    };
    for row in &column_rows {
        let kind = match text(row, 1).as_str() {
            "partition_key" => ColumnKind::PartitionKey,
            "clustering" => ColumnKind::Clustering,
            "static" => ColumnKind::Static,
            _ => ColumnKind::Regular,
        };
        let column = Column {
            name: text(row, 0),
            kind,
            position: int(row, 2),
            cql_type: text(row, 3),
            clustering_order: text(row, 4),
        };
        match kind {
            ColumnKind::PartitionKey => schema.partition_key.push(column),
            ColumnKind::Clustering => schema.clustering.push(column),
            ColumnKind::Static => schema.statics.push(column),
            ColumnKind::Regular => schema.regulars.push(column),
        }
    }
    schema.partition_key.sort_by_key(|c| c.position);
    schema.clustering.sort_by_key(|c| c.position);
    schema.statics.sort_by(|a, b| a.name.cmp(&b.name));
    schema.regulars.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(schema)
}

/// Turns `--keyspaces`/`--tables` include and exclude filters into the
/// sorted list of tables to process, failing on names that do not exist.
///
/// `tables` entries are `ks.table`; `keyspaces` entries select every table of
/// the keyspace. With neither, every non-system table is selected.
pub async fn select_tables(
    session: &Session,
    keyspaces: &[String],
    tables: &[String],
    exclude_keyspaces: &[String],
    exclude_tables: &[String],
) -> Result<Vec<(String, String)>, SchemaError> {
    let all = list_tables(session, "source").await?;
    for ks in keyspaces.iter().chain(exclude_keyspaces) {
        if SYSTEM_KEYSPACES.contains(&ks.as_str()) {
            return Err(SchemaError::SystemKeyspace(ks.clone()));
        }
    }
    for ks in keyspaces {
        if !all.iter().any(|(k, _)| k == ks) && !keyspace_exists(session, "source", ks).await? {
            return Err(SchemaError::UnknownKeyspace {
                cluster: "source",
                keyspace: ks.clone(),
            });
        }
    }
    let mut selected: Vec<(String, String)> = Vec::new();
    for qualified in tables {
        let (ks, table) = qualified
            .split_once('.')
            .unwrap_or(("", qualified.as_str()));
        if SYSTEM_KEYSPACES.contains(&ks) {
            return Err(SchemaError::SystemKeyspace(ks.to_owned()));
        }
        if !all.iter().any(|(k, t)| k == ks && t == table) {
            if !keyspace_exists(session, "source", ks).await? {
                return Err(SchemaError::UnknownKeyspace {
                    cluster: "source",
                    keyspace: ks.to_owned(),
                });
            }
            return Err(SchemaError::UnknownTable {
                cluster: "source",
                keyspace: ks.to_owned(),
                table: table.to_owned(),
            });
        }
        selected.push((ks.to_owned(), table.to_owned()));
    }
    if tables.is_empty() {
        selected = all
            .into_iter()
            .filter(|(ks, _)| keyspaces.is_empty() || keyspaces.contains(ks))
            .collect();
    } else {
        for (ks, table) in all {
            if keyspaces.contains(&ks) && !selected.contains(&(ks.clone(), table.clone())) {
                selected.push((ks, table));
            }
        }
    }
    selected.retain(|(ks, table)| {
        !exclude_keyspaces.contains(ks) && !exclude_tables.contains(&format!("{ks}.{table}"))
    });
    selected.sort();
    selected.dedup();
    if selected.is_empty() {
        return Err(SchemaError::NothingSelected);
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_cell_stamps_come_with_cassandra_5() {
        assert!(stamps_in(Some("5.0.9")));
        assert!(stamps_in(Some("6.0-alpha1")));
        assert!(!stamps_in(Some("4.1.10")));
        assert!(!stamps_in(Some("3.11.19")));
        // Unknown: as the target this code is written for.
        assert!(stamps_in(None));
        assert!(stamps_in(Some("garbage")));
    }

    fn col(name: &str, cql_type: &str) -> Column {
        Column {
            name: name.into(),
            kind: ColumnKind::Regular,
            position: -1,
            cql_type: cql_type.into(),
            clustering_order: "none".into(),
        }
    }

    #[test]
    fn tells_multi_cell_columns_from_single_cell_ones() {
        assert!(col("a", "list<int>").shape().is_multi_cell());
        assert_eq!(col("a", "list<int>").shape(), CellShape::List);
        assert!(col("a", "map<int, text>").shape().is_multi_cell());
        assert!(col("a", "my_udt").shape().is_multi_cell());
        assert!(!col("a", "frozen<list<int>>").shape().is_multi_cell());
        assert!(!col("a", "frozen<my_udt>").shape().is_multi_cell());
        assert!(!col("a", "tuple<int, text>").shape().is_multi_cell());
        assert!(!col("a", "vector<float, 3>").shape().is_multi_cell());
        assert!(!col("a", "text").shape().is_multi_cell());
        assert_eq!(col("a", "counter").shape(), CellShape::Counter);
        assert_eq!(col("a", "set<int>").shape(), CellShape::Collection);
        assert_eq!(col("a", "my_udt").shape(), CellShape::Udt);
        assert_eq!(col("a", "frozen<set<int>>").shape(), CellShape::Single);
    }

    #[test]
    fn names_the_differing_column() {
        let mut source = TableSchema {
            keyspace: "ks".into(),
            table: "t".into(),
            partition_key: vec![],
            clustering: vec![],
            statics: vec![],
            regulars: vec![col("a", "int"), col("b", "text")],
            gc_grace_seconds: 10,
            multi_cell_stamps: true,
        };
        let mut target = source.clone();
        target.gc_grace_seconds = 20;
        assert!(source.check_matches(&target).is_ok());
        target.regulars[1] = col("b", "blob");
        let err = source.check_matches(&target).unwrap_err().to_string();
        assert!(err.contains("column `b`"), "{err}");
        source.regulars.pop();
        let err = source.check_matches(&target).unwrap_err().to_string();
        assert!(err.contains("exists only on the target"), "{err}");
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote("Mixed\"Case"), "\"Mixed\"\"Case\"");
    }
}
