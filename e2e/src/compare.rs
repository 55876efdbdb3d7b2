//! Cell-by-cell comparison of one table on the source and on the target,
//! read directly from each cluster (not through a proxy).
//!
//! For every row (by primary key) and every regular and static column it
//! compares the value, the WRITETIME and the TTL (within a tolerance, since
//! the two sides are read a moment apart). Counters are compared by value.
//! A non-frozen collection or UDT is several cells; Cassandra 5.0 returns
//! `WRITETIME(col)` and `TTL(col)` of such a column as a list, one element
//! per cell, so those are compared cell by cell too (Cassandra 4.x refuses
//! the selection; then [`CompareOptions::multi_cell_stamps`] must be off and
//! their values alone are compared). Rows present on one side only are
//! reported with their key.
//!
//! [`diff_rows`] is the pure part; [`compare_table`] reads both clusters.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Context;
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::deserialize::row::{ColumnIterator, DeserializeRow};
use scylla::deserialize::value::DeserializeValue;
use scylla::deserialize::{DeserializationError, TypeCheckError};
use scylla::frame::response::result::{CollectionType, ColumnSpec, ColumnType, NativeType};
use scylla::value::CqlValue;

/// What differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiffKind {
    MissingOnTarget,
    MissingOnSource,
    Value,
    WriteTime,
    Ttl,
}

impl fmt::Display for DiffKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiffKind::MissingOnTarget => "missing on target",
            DiffKind::MissingOnSource => "missing on source",
            DiffKind::Value => "value",
            DiffKind::WriteTime => "writetime",
            DiffKind::Ttl => "ttl",
        })
    }
}

/// One difference between the clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub table: String,
    /// The primary key, `k='a', c=1`.
    pub key: String,
    /// The column, none for a missing row.
    pub column: Option<String>,
    pub kind: DiffKind,
    pub source: String,
    pub target: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.table, self.key)?;
        if let Some(c) = &self.column {
            write!(f, " {c}")?;
        }
        write!(
            f,
            ": {} (source {}, target {})",
            self.kind, self.source, self.target
        )
    }
}

/// The stamps of one column: one element per cell (one for a single-cell
/// column, none when the column is null); `None` when they were not read.
pub type Stamps = Option<Vec<Option<i64>>>;

/// One column of one row, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub value: Option<CqlValue>,
    pub writetime: Stamps,
    pub ttl: Stamps,
}

/// One row: its primary key values and its cells, in the order of the
/// column names given to [`diff_rows`].
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub key: Vec<(String, Option<CqlValue>)>,
    pub cells: Vec<Cell>,
}

/// How strict the comparison is.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Compare WRITETIME (off for tables written by LWT, whose timestamps
    /// each cluster's Paxos round picks).
    pub writetime: bool,
    /// Compare TTL, allowing this many seconds of difference.
    pub ttl_tolerance_secs: i64,
    /// Read WRITETIME/TTL of non-frozen collections and UDTs (Cassandra 5.0).
    pub multi_cell_stamps: bool,
    /// Only the rows of one run in a shared table: those whose first
    /// partition-key column is this text, or starts with it and a `:`.
    pub run_key: Option<String>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            writetime: true,
            ttl_tolerance_secs: 1,
            multi_cell_stamps: true,
            run_key: None,
        }
    }
}

/// Compares two sets of rows of `table` whose cells follow `columns`.
pub fn diff_rows(
    table: &str,
    columns: &[String],
    source: Vec<TableRow>,
    target: Vec<TableRow>,
    opts: &CompareOptions,
) -> Vec<Difference> {
    let index = |rows: Vec<TableRow>| -> BTreeMap<String, TableRow> {
        rows.into_iter().map(|r| (render_key(&r.key), r)).collect()
    };
    let source = index(source);
    let mut target = index(target);
    let mut out = Vec::new();
    let diff = |key: &str, column: Option<&str>, kind, s: String, t: String| Difference {
        table: table.to_owned(),
        key: key.to_owned(),
        column: column.map(str::to_owned),
        kind,
        source: s,
        target: t,
    };
    for (key, s) in source {
        let Some(t) = target.remove(&key) else {
            out.push(diff(
                &key,
                None,
                DiffKind::MissingOnTarget,
                render_cells(columns, &s.cells),
                "-".into(),
            ));
            continue;
        };
        for (i, name) in columns.iter().enumerate() {
            let (Some(sc), Some(tc)) = (s.cells.get(i), t.cells.get(i)) else {
                continue;
            };
            if sc.value != tc.value {
                out.push(diff(
                    &key,
                    Some(name),
                    DiffKind::Value,
                    render_value(&sc.value),
                    render_value(&tc.value),
                ));
            }
            if opts.writetime
                && sc.writetime.is_some()
                && tc.writetime.is_some()
                && sc.writetime != tc.writetime
            {
                out.push(diff(
                    &key,
                    Some(name),
                    DiffKind::WriteTime,
                    render_stamps(&sc.writetime),
                    render_stamps(&tc.writetime),
                ));
            }
            if !ttl_close(&sc.ttl, &tc.ttl, opts.ttl_tolerance_secs) {
                out.push(diff(
                    &key,
                    Some(name),
                    DiffKind::Ttl,
                    render_stamps(&sc.ttl),
                    render_stamps(&tc.ttl),
                ));
            }
        }
    }
    for (key, t) in target {
        out.push(diff(
            &key,
            None,
            DiffKind::MissingOnSource,
            "-".into(),
            render_cells(columns, &t.cells),
        ));
    }
    out
}

/// TTLs agree when both are unread, or cell by cell within `tolerance`
/// (null only with null).
fn ttl_close(a: &Stamps, b: &Stamps, tolerance: i64) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| match (x, y) {
                    (None, None) => true,
                    (Some(x), Some(y)) => (x - y).abs() <= tolerance,
                    _ => false,
                })
        }
        _ => true,
    }
}

fn render_key(key: &[(String, Option<CqlValue>)]) -> String {
    key.iter()
        .map(|(n, v)| format!("{n}={}", render_value(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_cells(columns: &[String], cells: &[Cell]) -> String {
    let parts: Vec<String> = columns
        .iter()
        .zip(cells)
        .filter(|(_, c)| c.value.is_some())
        .map(|(n, c)| format!("{n}={}", render_value(&c.value)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn render_stamps(s: &Stamps) -> String {
    match s {
        None => "-".into(),
        Some(v) if v.len() == 1 => v[0].map_or("null".into(), |x| x.to_string()),
        Some(v) => format!(
            "[{}]",
            v.iter()
                .map(|x| x.map_or("null".into(), |x| x.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A short rendering of a value (a long blob or text is cut).
pub fn render_value(v: &Option<CqlValue>) -> String {
    let Some(v) = v else {
        return "null".into();
    };
    match v {
        CqlValue::Text(s) | CqlValue::Ascii(s) if s.len() > 64 => {
            let cut: String = s.chars().take(32).collect();
            format!("'{cut}…' ({} bytes)", s.len())
        }
        CqlValue::Text(s) | CqlValue::Ascii(s) => format!("'{s}'"),
        CqlValue::Blob(b) if b.len() > 32 => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for x in b {
                h = (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3);
            }
            format!("blob of {} bytes (fnv {h:016x})", b.len())
        }
        CqlValue::Blob(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("0x{hex}")
        }
        CqlValue::Int(x) => x.to_string(),
        CqlValue::BigInt(x) => x.to_string(),
        CqlValue::Counter(c) => c.0.to_string(),
        CqlValue::Boolean(x) => x.to_string(),
        CqlValue::Uuid(u) => u.to_string(),
        CqlValue::Timeuuid(u) => u.to_string(),
        CqlValue::Timestamp(t) => format!("{}ms", t.0),
        CqlValue::Inet(ip) => ip.to_string(),
        CqlValue::List(items) | CqlValue::Set(items) | CqlValue::Vector(items) => {
            let inner: Vec<String> = items
                .iter()
                .map(|x| render_value(&Some(x.clone())))
                .collect();
            let (open, close) = if matches!(v, CqlValue::Set(_)) {
                ('{', '}')
            } else {
                ('[', ']')
            };
            format!("{open}{}{close}", inner.join(", "))
        }
        CqlValue::Map(pairs) => {
            let inner: Vec<String> = pairs
                .iter()
                .map(|(k, x)| {
                    format!(
                        "{}: {}",
                        render_value(&Some(k.clone())),
                        render_value(&Some(x.clone()))
                    )
                })
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        other => format!("{other:?}"),
    }
}

/// A column as the schema describes it.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    /// `partition_key`, `clustering`, `regular` or `static`.
    pub kind: String,
    pub position: i32,
    /// The CQL type as `system_schema.columns` writes it.
    pub cql_type: String,
    pub counter: bool,
    /// A non-frozen collection or UDT (several cells).
    pub multi_cell: bool,
}

/// Reads a table's columns from `system_schema`: the primary key first, in
/// order, then the other columns by name.
pub async fn table_columns(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> anyhow::Result<Vec<ColumnInfo>> {
    let udts: Vec<String> = session
        .query_iter(
            "SELECT type_name FROM system_schema.types WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await?
        .rows_stream::<(String,)>()?
        .map_ok(|r| r.0)
        .try_collect()
        .await?;
    let mut cols: Vec<ColumnInfo> = session
        .query_iter(
            "SELECT column_name, kind, position, type FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await?
        .rows_stream::<(String, String, i32, String)>()?
        .map_ok(|(name, kind, position, cql_type)| {
            let t = cql_type.trim();
            let multi_cell = t.starts_with("list<")
                || t.starts_with("set<")
                || t.starts_with("map<")
                || udts.iter().any(|u| u == t || t == format!("\"{u}\""));
            ColumnInfo {
                counter: t == "counter",
                multi_cell,
                name,
                kind,
                position,
                cql_type,
            }
        })
        .try_collect()
        .await?;
    anyhow::ensure!(!cols.is_empty(), "{keyspace}.{table} has no columns");
    let rank = |k: &str| match k {
        "partition_key" => 0,
        "clustering" => 1,
        "static" => 2,
        _ => 3,
    };
    cols.sort_by(|a, b| {
        (rank(&a.kind), a.position, &a.name).cmp(&(rank(&b.kind), b.position, &b.name))
    });
    Ok(cols)
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SELECT that [`read_rows`] runs, and the names of its cell columns.
pub fn select_for(
    keyspace: &str,
    table: &str,
    cols: &[ColumnInfo],
    opts: &CompareOptions,
) -> (String, Vec<String>) {
    let mut sel = Vec::new();
    let mut cells = Vec::new();
    for c in cols {
        let q = quote(&c.name);
        sel.push(q.clone());
        if c.kind == "partition_key" || c.kind == "clustering" {
            continue;
        }
        cells.push(c.name.clone());
        if !c.counter && (!c.multi_cell || opts.multi_cell_stamps) {
            sel.push(format!(
                "WRITETIME({q}) AS {}",
                quote(&format!("wt__{}", c.name))
            ));
            sel.push(format!(
                "TTL({q}) AS {}",
                quote(&format!("ttl__{}", c.name))
            ));
        }
    }
    (
        format!(
            "SELECT {} FROM {}.{}",
            sel.join(", "),
            quote(keyspace),
            quote(table)
        ),
        cells,
    )
}

/// A row as read: each selected column by name.
struct Fetched(Vec<(String, Field)>);

enum Field {
    Value(Option<CqlValue>),
    Stamps(Option<Vec<Option<i64>>>),
}

impl<'frame, 'metadata> DeserializeRow<'frame, 'metadata> for Fetched {
    fn type_check(_specs: &[ColumnSpec]) -> Result<(), TypeCheckError> {
        Ok(())
    }

    fn deserialize(row: ColumnIterator<'frame, 'metadata>) -> Result<Self, DeserializationError> {
        let mut out = Vec::new();
        for col in row {
            let col = col?;
            let name = col.spec.name().to_owned();
            let typ = col.spec.typ();
            let field =
                if name.starts_with("wt__") || name.starts_with("ttl__") {
                    Field::Stamps(match typ {
                        ColumnType::Collection {
                            typ: CollectionType::List(inner),
                            ..
                        } => match inner.as_ref() {
                            ColumnType::Native(NativeType::Int) => {
                                <Option<Vec<Option<i32>>>>::deserialize(typ, col.slice)?.map(|v| {
                                    v.into_iter().map(|x| x.map(i64::from)).collect::<Vec<_>>()
                                })
                            }
                            _ => <Option<Vec<Option<i64>>>>::deserialize(typ, col.slice)?,
                        },
                        ColumnType::Native(NativeType::Int) => Some(vec![
                            <Option<i32>>::deserialize(typ, col.slice)?.map(i64::from),
                        ]),
                        _ => Some(vec![<Option<i64>>::deserialize(typ, col.slice)?]),
                    })
                } else {
                    Field::Value(<Option<CqlValue>>::deserialize(typ, col.slice)?)
                };
            out.push((name, field));
        }
        Ok(Fetched(out))
    }
}

/// Reads every row of a table (paged), as [`TableRow`]s over `cells`.
pub async fn read_rows(
    session: &Session,
    select: &str,
    cols: &[ColumnInfo],
    cells: &[String],
    opts: &CompareOptions,
) -> anyhow::Result<Vec<TableRow>> {
    let fetched: Vec<Fetched> = session
        .query_iter(select, &[])
        .await
        .with_context(|| select.to_owned())?
        .rows_stream::<Fetched>()?
        .try_collect()
        .await
        .with_context(|| select.to_owned())?;
    let key_cols: Vec<&ColumnInfo> = cols
        .iter()
        .filter(|c| c.kind == "partition_key" || c.kind == "clustering")
        .collect();
    let mut rows = Vec::with_capacity(fetched.len());
    for Fetched(fields) in fetched {
        let mut values: BTreeMap<String, Option<CqlValue>> = BTreeMap::new();
        let mut stamps: BTreeMap<String, Stamps> = BTreeMap::new();
        for (name, f) in fields {
            match f {
                Field::Value(v) => {
                    values.insert(name, v);
                }
                Field::Stamps(s) => {
                    // A null column has no cells.
                    let s = s.map(|v| {
                        if v.len() == 1 && v[0].is_none() {
                            Vec::new()
                        } else {
                            v
                        }
                    });
                    stamps.insert(name, Some(s.unwrap_or_default()));
                }
            }
        }
        let key: Vec<(String, Option<CqlValue>)> = key_cols
            .iter()
            .map(|c| (c.name.clone(), values.get(&c.name).cloned().flatten()))
            .collect();
        if let Some(run) = &opts.run_key {
            let first = key.first().and_then(|(_, v)| v.as_ref());
            let ours = |s: &str| {
                s.strip_prefix(run.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
            };
            if !matches!(first, Some(CqlValue::Text(s)) | Some(CqlValue::Ascii(s)) if ours(s)) {
                continue;
            }
        }
        let cells = cells
            .iter()
            .map(|n| Cell {
                value: values.get(n).cloned().flatten(),
                writetime: stamps.remove(&format!("wt__{n}")).flatten(),
                ttl: stamps.remove(&format!("ttl__{n}")).flatten(),
            })
            .collect();
        rows.push(TableRow { key, cells });
    }
    Ok(rows)
}

/// Reads `keyspace.table` on both clusters and returns every difference.
pub async fn compare_table(
    source: &Session,
    target: &Session,
    keyspace: &str,
    table: &str,
    opts: &CompareOptions,
) -> anyhow::Result<Vec<Difference>> {
    let cols = table_columns(source, keyspace, table)
        .await
        .with_context(|| format!("schema of {keyspace}.{table} on the source"))?;
    let (select, cells) = select_for(keyspace, table, &cols, opts);
    let s = read_rows(source, &select, &cols, &cells, opts)
        .await
        .context("reading the source")?;
    let t = read_rows(target, &select, &cols, &cells, opts)
        .await
        .context("reading the target")?;
    Ok(diff_rows(
        &format!("{keyspace}.{table}"),
        &cells,
        s,
        t,
        opts,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(v: i32, wt: i64, ttl: Option<i64>) -> Cell {
        Cell {
            value: Some(CqlValue::Int(v)),
            writetime: Some(vec![Some(wt)]),
            ttl: Some(vec![ttl]),
        }
    }

    fn row(k: &str, cells: Vec<Cell>) -> TableRow {
        TableRow {
            key: vec![("k".into(), Some(CqlValue::Text(k.into())))],
            cells,
        }
    }

    fn cols() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn equal_rows_have_no_difference() {
        let s = vec![row("x", vec![cell(1, 10, None), cell(2, 10, Some(100))])];
        let t = vec![row("x", vec![cell(1, 10, None), cell(2, 10, Some(99))])];
        assert!(diff_rows("ks.t", &cols(), s, t, &CompareOptions::default()).is_empty());
    }

    #[test]
    fn every_kind_of_difference_is_reported_with_its_key() {
        let s = vec![
            row("x", vec![cell(1, 10, None), cell(2, 10, Some(100))]),
            row("only-source", vec![cell(1, 1, None), cell(1, 1, None)]),
        ];
        let t = vec![
            row("x", vec![cell(9, 11, None), cell(2, 10, Some(90))]),
            row("only-target", vec![cell(1, 1, None), cell(1, 1, None)]),
        ];
        let d = diff_rows("ks.t", &cols(), s, t, &CompareOptions::default());
        let got: Vec<(String, Option<String>, DiffKind)> = d
            .iter()
            .map(|d| (d.key.clone(), d.column.clone(), d.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("k='only-source'".into(), None, DiffKind::MissingOnTarget),
                ("k='x'".into(), Some("a".into()), DiffKind::Value),
                ("k='x'".into(), Some("a".into()), DiffKind::WriteTime),
                ("k='x'".into(), Some("b".into()), DiffKind::Ttl),
                ("k='only-target'".into(), None, DiffKind::MissingOnSource),
            ]
        );
        assert_eq!(d[1].source, "1");
        assert_eq!(d[1].target, "9");
        assert_eq!(
            d[2].to_string(),
            "ks.t [k='x'] a: writetime (source 10, target 11)"
        );
    }

    #[test]
    fn ttl_null_against_a_ttl_differs_and_writetime_can_be_skipped() {
        let s = vec![row("x", vec![cell(1, 10, None), cell(2, 10, None)])];
        let t = vec![row("x", vec![cell(1, 20, Some(5)), cell(2, 10, None)])];
        let opts = CompareOptions {
            writetime: false,
            ..CompareOptions::default()
        };
        let d = diff_rows("ks.t", &cols(), s, t, &opts);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, DiffKind::Ttl);
        assert_eq!(d[0].source, "null");
    }

    #[test]
    fn multi_cell_stamps_compare_cell_by_cell() {
        let multi = |wts: Vec<i64>, ttls: Vec<Option<i64>>| Cell {
            value: Some(CqlValue::List(vec![CqlValue::Int(1), CqlValue::Int(2)])),
            writetime: Some(wts.into_iter().map(Some).collect()),
            ttl: Some(ttls),
        };
        let s = vec![row("x", vec![multi(vec![5, 6], vec![None, Some(10)])])];
        let same = vec![row("x", vec![multi(vec![5, 6], vec![None, Some(9)])])];
        let other = vec![row("x", vec![multi(vec![5, 7], vec![Some(1), Some(10)])])];
        let one = vec!["l".to_string()];
        let o = CompareOptions::default();
        assert!(diff_rows("t", &one, s.clone(), same, &o).is_empty());
        let d = diff_rows("t", &one, s, other, &o);
        assert_eq!(
            d.iter().map(|d| d.kind).collect::<Vec<_>>(),
            vec![DiffKind::WriteTime, DiffKind::Ttl]
        );
        assert_eq!(d[0].source, "[5, 6]");
        assert_eq!(d[1].target, "[1, 10]");
    }

    #[test]
    fn counters_and_unread_stamps_compare_by_value() {
        let c = |n: i64| Cell {
            value: Some(CqlValue::Counter(scylla::value::Counter(n))),
            writetime: None,
            ttl: None,
        };
        let one = vec!["c".to_string()];
        let o = CompareOptions::default();
        assert!(diff_rows(
            "t",
            &one,
            vec![row("x", vec![c(3)])],
            vec![row("x", vec![c(3)])],
            &o
        )
        .is_empty());
        let d = diff_rows(
            "t",
            &one,
            vec![row("x", vec![c(3)])],
            vec![row("x", vec![c(6)])],
            &o,
        );
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].source.as_str(), d[0].target.as_str()), ("3", "6"));
    }

    #[test]
    fn long_values_are_cut() {
        let blob = Some(CqlValue::Blob(vec![7; 1 << 20]));
        assert!(render_value(&blob).starts_with("blob of 1048576 bytes"));
        let list = Some(CqlValue::List(vec![
            CqlValue::Int(1),
            CqlValue::Text("a".into()),
        ]));
        assert_eq!(render_value(&list), "[1, 'a']");
        let map = Some(CqlValue::Map(vec![(
            CqlValue::Text("k".into()),
            CqlValue::Int(2),
        )]));
        assert_eq!(render_value(&map), "{'k': 2}");
        let text = Some(CqlValue::Text("é".repeat(100)));
        assert!(render_value(&text).ends_with("(200 bytes)"));
    }

    #[test]
    fn the_select_reads_stamps_of_what_has_them() {
        let col = |name: &str, kind: &str, counter, multi_cell| ColumnInfo {
            name: name.into(),
            kind: kind.into(),
            position: 0,
            cql_type: String::new(),
            counter,
            multi_cell,
        };
        let cols = vec![
            col("k", "partition_key", false, false),
            col("v", "regular", false, false),
            col("n", "regular", true, false),
            col("l", "regular", false, true),
        ];
        let (q, cells) = select_for("ks", "t", &cols, &CompareOptions::default());
        assert_eq!(cells, vec!["v", "n", "l"]);
        assert_eq!(
            q,
            "SELECT \"k\", \"v\", WRITETIME(\"v\") AS \"wt__v\", TTL(\"v\") AS \"ttl__v\", \"n\", \
             \"l\", WRITETIME(\"l\") AS \"wt__l\", TTL(\"l\") AS \"ttl__l\" FROM \"ks\".\"t\""
        );
        let opts = CompareOptions {
            multi_cell_stamps: false,
            ..CompareOptions::default()
        };
        let (q, _) = select_for("ks", "t", &cols, &opts);
        assert!(!q.contains("wt__l"), "{q}");
    }
}
