//! A keyspace's objects read from `system_schema`, as the [`Described`]
//! list a server-side `DESCRIBE KEYSPACE` gives: Cassandra before 4.0 has
//! no `DESCRIBE` on the server, and its schema tables hold everything the
//! CQL needs. The reading is [`describe_from_tables`]; turning the rows into
//! CQL is pure ([`keyspace_objects`]) and unit tested; a test on the bed
//! creates what it builds on a second cluster and compares the schema
//! tables of both.

use std::collections::{BTreeMap, BTreeSet};

use scylla::client::session::Session;
use scylla::value::CqlValue;

use crate::schema_plan::{quote, Described, COMPACT_TABLE};

/// One row of a schema table: column name → value (nulls left out).
pub type SchemaRow = BTreeMap<String, CqlValue>;

/// The rows of every schema table one keyspace has rows in.
#[derive(Debug, Default, Clone)]
pub struct KeyspaceRows {
    pub keyspace: SchemaRow,
    pub types: Vec<SchemaRow>,
    pub tables: Vec<SchemaRow>,
    pub columns: Vec<SchemaRow>,
    pub indexes: Vec<SchemaRow>,
    pub functions: Vec<SchemaRow>,
    pub aggregates: Vec<SchemaRow>,
    pub views: Vec<SchemaRow>,
    pub triggers: Vec<SchemaRow>,
}

/// Columns of `system_schema.tables` that are not options of `CREATE TABLE`.
const NOT_OPTIONS: &[&str] = &["keyspace_name", "table_name", "id", "flags", "extensions"];

/// Reads `keyspace`'s rows from the source's `system_schema` and builds
/// its objects.
pub async fn describe_from_tables(
    session: &Session,
    keyspace: &str,
) -> Result<Vec<Described>, String> {
    let mut rows = KeyspaceRows::default();
    let read = |table: &'static str| {
        let cql = format!("SELECT * FROM system_schema.{table} WHERE keyspace_name = ?");
        async move { select(session, &cql, keyspace).await }
    };
    rows.keyspace = read("keyspaces")
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| format!("no keyspace {keyspace} on the source"))?;
    rows.types = read("types").await?;
    rows.tables = read("tables").await?;
    rows.columns = read("columns").await?;
    rows.indexes = read("indexes").await?;
    rows.functions = read("functions").await?;
    rows.aggregates = read("aggregates").await?;
    rows.views = read("views").await?;
    rows.triggers = read("triggers").await?;
    Ok(keyspace_objects(keyspace, &rows))
}

async fn select(session: &Session, cql: &str, keyspace: &str) -> Result<Vec<SchemaRow>, String> {
    let result = session
        .query_unpaged(cql, (keyspace,))
        .await
        .map_err(|e| format!("{cql}: {e}"))?;
    let rows = result
        .into_rows_result()
        .map_err(|e| format!("{cql}: {e}"))?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let mut out = Vec::new();
    for row in rows
        .rows::<scylla::value::Row>()
        .map_err(|e| format!("{cql}: {e}"))?
    {
        let row = row.map_err(|e| format!("{cql}: {e}"))?;
        out.push(
            names
                .iter()
                .cloned()
                .zip(row.columns)
                .filter_map(|(name, value)| Some((name, value?)))
                .collect(),
        );
    }
    Ok(out)
}

fn text<'a>(row: &'a SchemaRow, column: &str) -> &'a str {
    match row.get(column) {
        Some(CqlValue::Text(s) | CqlValue::Ascii(s)) => s,
        _ => "",
    }
}

fn texts(row: &SchemaRow, column: &str) -> Vec<String> {
    match row.get(column) {
        Some(CqlValue::List(items) | CqlValue::Set(items)) => items
            .iter()
            .filter_map(|v| match v {
                CqlValue::Text(s) | CqlValue::Ascii(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn string_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A schema table's value as a CQL literal (`None`: a kind no option has).
fn literal(value: &CqlValue) -> Option<String> {
    Some(match value {
        CqlValue::Text(s) | CqlValue::Ascii(s) => string_literal(s),
        CqlValue::Boolean(b) => b.to_string(),
        CqlValue::Int(i) => i.to_string(),
        CqlValue::BigInt(i) => i.to_string(),
        CqlValue::SmallInt(i) => i.to_string(),
        CqlValue::TinyInt(i) => i.to_string(),
        CqlValue::Double(d) => d.to_string(),
        CqlValue::Float(f) => f.to_string(),
        CqlValue::Map(entries) => {
            let inner: Option<Vec<String>> = entries
                .iter()
                .map(|(k, v)| Some(format!("{}: {}", literal(k)?, literal(v)?)))
                .collect();
            format!("{{{}}}", inner?.join(", "))
        }
        CqlValue::Set(items) | CqlValue::List(items) => {
            let inner: Option<Vec<String>> = items.iter().map(literal).collect();
            format!("{{{}}}", inner?.join(", "))
        }
        _ => return None,
    })
}

/// The keyspace's objects in `DESCRIBE`'s order: the keyspace, types (each
/// after the types it uses), functions, aggregates, tables each followed by
/// its indexes, then what is listed only to be left out (views, triggers).
pub fn keyspace_objects(keyspace: &str, rows: &KeyspaceRows) -> Vec<Described> {
    let object = |kind: &str, name: &str, create: String| Described {
        keyspace: keyspace.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        create,
    };
    let ks = quote(keyspace);
    let mut out = vec![object(
        "keyspace",
        keyspace,
        format!(
            "CREATE KEYSPACE {ks} WITH replication = {} AND durable_writes = {}",
            rows.keyspace
                .get("replication")
                .and_then(literal)
                .unwrap_or_else(|| "{}".to_owned()),
            !matches!(
                rows.keyspace.get("durable_writes"),
                Some(CqlValue::Boolean(false))
            )
        ),
    )];
    for t in types_in_dependency_order(&rows.types) {
        let fields: Vec<String> = texts(t, "field_names")
            .iter()
            .zip(texts(t, "field_types"))
            .map(|(n, ty)| format!("    {} {ty}", quote(n)))
            .collect();
        let name = text(t, "type_name");
        out.push(object(
            "type",
            name,
            format!(
                "CREATE TYPE {ks}.{} (\n{}\n)",
                quote(name),
                fields.join(",\n")
            ),
        ));
    }
    for f in &rows.functions {
        let name = text(f, "function_name");
        let arguments: Vec<String> = texts(f, "argument_names")
            .iter()
            .zip(texts(f, "argument_types"))
            .map(|(n, ty)| format!("{} {ty}", quote(n)))
            .collect();
        let on_null = if matches!(f.get("called_on_null_input"), Some(CqlValue::Boolean(true))) {
            "CALLED"
        } else {
            "RETURNS NULL"
        };
        out.push(object(
            "function",
            name,
            format!(
                "CREATE FUNCTION {ks}.{}({})\n    {on_null} ON NULL INPUT\n    RETURNS {}\n    LANGUAGE {}\n    AS $${}$$",
                quote(name),
                arguments.join(", "),
                text(f, "return_type"),
                text(f, "language"),
                text(f, "body"),
            ),
        ));
    }
    for a in &rows.aggregates {
        let name = text(a, "aggregate_name");
        let mut create = format!(
            "CREATE AGGREGATE {ks}.{}({})\n    SFUNC {}\n    STYPE {}",
            quote(name),
            texts(a, "argument_types").join(", "),
            quote(text(a, "state_func")),
            text(a, "state_type"),
        );
        if !text(a, "final_func").is_empty() {
            create += &format!("\n    FINALFUNC {}", quote(text(a, "final_func")));
        }
        // The initial condition is stored as CQL already.
        if !text(a, "initcond").is_empty() {
            create += &format!("\n    INITCOND {}", text(a, "initcond"));
        }
        out.push(object("aggregate", name, create));
    }
    for table in &rows.tables {
        let name = text(table, "table_name");
        let flags = texts(table, "flags");
        // COMPACT STORAGE (3.x): a "dense" or "super" table, or one not
        // "compound". Cassandra 4.0 removed it.
        let compact = !flags.is_empty()
            && (flags.iter().any(|f| f == "dense" || f == "super")
                || !flags.iter().any(|f| f == "compound"));
        let kind = if compact { COMPACT_TABLE } else { "table" };
        out.push(object(
            kind,
            name,
            create_table(keyspace, table, &rows.columns),
        ));
        for index in rows
            .indexes
            .iter()
            .filter(|i| text(i, "table_name") == name)
        {
            out.push(object(
                "index",
                text(index, "index_name"),
                create_index(keyspace, name, index),
            ));
        }
    }
    for view in &rows.views {
        let name = text(view, "view_name");
        out.push(object(
            "materialized_view",
            name,
            format!("CREATE MATERIALIZED VIEW {ks}.{}", quote(name)),
        ));
    }
    for trigger in &rows.triggers {
        let name = text(trigger, "trigger_name");
        out.push(object(
            "trigger",
            name,
            format!(
                "CREATE TRIGGER {} ON {ks}.{}",
                quote(name),
                quote(text(trigger, "table_name"))
            ),
        ));
    }
    out
}

/// Types ordered so each comes after the types its fields name.
fn types_in_dependency_order(types: &[SchemaRow]) -> Vec<&SchemaRow> {
    let names: BTreeSet<&str> = types.iter().map(|t| text(t, "type_name")).collect();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    while out.len() < types.len() {
        let before = out.len();
        for t in types {
            let name = text(t, "type_name");
            if placed.contains(name) {
                continue;
            }
            let uses = texts(t, "field_types");
            let ready = names
                .iter()
                .filter(|other| **other != name && !placed.contains(**other))
                .all(|other| !uses.iter().any(|ty| mentions(ty, other)));
            if ready {
                placed.insert(name.to_owned());
                out.push(t);
            }
        }
        if out.len() == before {
            // A cycle cannot be created in CQL; keep the rest as listed.
            out.extend(
                types
                    .iter()
                    .filter(|t| !placed.contains(text(t, "type_name"))),
            );
            break;
        }
    }
    out
}

/// Whether a CQL type string names the type `name` (as a whole word).
fn mentions(ty: &str, name: &str) -> bool {
    ty.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '"'))
        .any(|word| word.trim_matches('"') == name)
}

fn create_table(keyspace: &str, table: &SchemaRow, columns: &[SchemaRow]) -> String {
    let name = text(table, "table_name");
    let mut mine: Vec<&SchemaRow> = columns
        .iter()
        .filter(|c| text(c, "table_name") == name)
        .collect();
    let position = |c: &SchemaRow| match c.get("position") {
        Some(CqlValue::Int(p)) => *p,
        _ => -1,
    };
    let kind_order = |c: &SchemaRow| match text(c, "kind") {
        "partition_key" => 0,
        "clustering" => 1,
        _ => 2,
    };
    mine.sort_by(|a, b| {
        (kind_order(a), position(a), text(a, "column_name")).cmp(&(
            kind_order(b),
            position(b),
            text(b, "column_name"),
        ))
    });
    let mut lines: Vec<String> = mine
        .iter()
        .map(|c| {
            let is_static = if text(c, "kind") == "static" {
                " static"
            } else {
                ""
            };
            format!(
                "    {} {}{is_static}",
                quote(text(c, "column_name")),
                text(c, "type")
            )
        })
        .collect();
    let of_kind = |kind: &str| -> Vec<&SchemaRow> {
        mine.iter()
            .copied()
            .filter(|c| text(c, "kind") == kind)
            .collect()
    };
    let partition: Vec<String> = of_kind("partition_key")
        .iter()
        .map(|c| quote(text(c, "column_name")))
        .collect();
    let clustering = of_kind("clustering");
    let mut key = format!("({})", partition.join(", "));
    for c in &clustering {
        key += &format!(", {}", quote(text(c, "column_name")));
    }
    lines.push(format!("    PRIMARY KEY ({key})"));
    let mut options: Vec<String> = Vec::new();
    if !clustering.is_empty() {
        let order: Vec<String> = clustering
            .iter()
            .map(|c| {
                let dir = if text(c, "clustering_order").eq_ignore_ascii_case("desc") {
                    "DESC"
                } else {
                    "ASC"
                };
                format!("{} {dir}", quote(text(c, "column_name")))
            })
            .collect();
        options.push(format!("CLUSTERING ORDER BY ({})", order.join(", ")));
    }
    for (option, value) in table {
        if NOT_OPTIONS.contains(&option.as_str()) {
            continue;
        }
        if let Some(value) = literal(value) {
            options.push(format!("{option} = {value}"));
        }
    }
    let mut create = format!(
        "CREATE TABLE {}.{} (\n{}\n)",
        quote(keyspace),
        quote(name),
        lines.join(",\n")
    );
    if !options.is_empty() {
        create += &format!(" WITH {}", options.join("\n    AND "));
    }
    create
}

fn create_index(keyspace: &str, table: &str, index: &SchemaRow) -> String {
    let name = text(index, "index_name");
    let options: BTreeMap<String, String> = match index.get("options") {
        Some(CqlValue::Map(entries)) => entries
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (CqlValue::Text(k), CqlValue::Text(v)) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let target = options.get("target").cloned().unwrap_or_default();
    let on = format!("{}.{} ({target})", quote(keyspace), quote(table));
    if text(index, "kind") == "CUSTOM" {
        let class = options.get("class_name").cloned().unwrap_or_default();
        let rest: Vec<String> = options
            .iter()
            .filter(|(k, _)| *k != "target" && *k != "class_name")
            .map(|(k, v)| format!("{}: {}", string_literal(k), string_literal(v)))
            .collect();
        let mut create = format!(
            "CREATE CUSTOM INDEX {} ON {on} USING {}",
            quote(name),
            string_literal(&class)
        );
        if !rest.is_empty() {
            create += &format!(" WITH OPTIONS = {{{}}}", rest.join(", "));
        }
        create
    } else {
        format!("CREATE INDEX {} ON {on}", quote(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, CqlValue)]) -> SchemaRow {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }
    fn t(s: &str) -> CqlValue {
        CqlValue::Text(s.to_owned())
    }
    fn list(items: &[&str]) -> CqlValue {
        CqlValue::List(items.iter().map(|s| t(s)).collect())
    }
    fn map(pairs: &[(&str, &str)]) -> CqlValue {
        CqlValue::Map(pairs.iter().map(|(k, v)| (t(k), t(v))).collect())
    }
    fn column(
        table: &str,
        name: &str,
        kind: &str,
        position: i32,
        ty: &str,
        order: &str,
    ) -> SchemaRow {
        row(&[
            ("table_name", t(table)),
            ("column_name", t(name)),
            ("kind", t(kind)),
            ("position", CqlValue::Int(position)),
            ("type", t(ty)),
            ("clustering_order", t(order)),
        ])
    }

    fn shop() -> KeyspaceRows {
        KeyspaceRows {
            keyspace: row(&[
                (
                    "replication",
                    map(&[
                        ("class", "org.apache.cassandra.locator.SimpleStrategy"),
                        ("replication_factor", "3"),
                    ]),
                ),
                ("durable_writes", CqlValue::Boolean(true)),
            ]),
            types: vec![
                // Listed before the type it uses: must come after it.
                row(&[
                    ("type_name", t("customer")),
                    ("field_names", list(&["name", "addresses"])),
                    (
                        "field_types",
                        list(&["text", "frozen<list<frozen<address>>>"]),
                    ),
                ]),
                row(&[
                    ("type_name", t("address")),
                    ("field_names", list(&["street", "zip"])),
                    ("field_types", list(&["text", "int"])),
                ]),
            ],
            tables: vec![row(&[
                ("table_name", t("orders")),
                ("id", CqlValue::Int(7)),
                ("default_time_to_live", CqlValue::Int(86400)),
                ("gc_grace_seconds", CqlValue::Int(7200)),
                ("comment", t("it's")),
                (
                    "compaction",
                    map(&[(
                        "class",
                        "org.apache.cassandra.db.compaction.SizeTieredCompactionStrategy",
                    )]),
                ),
                ("read_repair_chance", CqlValue::Double(0.0)),
                ("bloom_filter_fp_chance", CqlValue::Double(0.01)),
            ])],
            columns: vec![
                column("orders", "total", "regular", -1, "decimal", "none"),
                column("orders", "id", "clustering", 0, "timeuuid", "desc"),
                column("orders", "shop", "partition_key", 0, "int", "none"),
                column("orders", "owner", "static", -1, "text", "none"),
                column("orders", "day", "clustering", 1, "date", "asc"),
                column("orders", "region", "partition_key", 1, "text", "none"),
            ],
            indexes: vec![
                row(&[
                    ("table_name", t("orders")),
                    ("index_name", t("orders_owner")),
                    ("kind", t("COMPOSITES")),
                    ("options", map(&[("target", "owner")])),
                ]),
                row(&[
                    ("table_name", t("orders")),
                    ("index_name", t("orders_total")),
                    ("kind", t("CUSTOM")),
                    (
                        "options",
                        map(&[
                            ("target", "total"),
                            ("class_name", "org.apache.cassandra.index.sasi.SASIIndex"),
                            ("mode", "SPARSE"),
                        ]),
                    ),
                ]),
            ],
            functions: vec![row(&[
                ("function_name", t("twice")),
                ("argument_names", list(&["x"])),
                ("argument_types", list(&["int"])),
                ("called_on_null_input", CqlValue::Boolean(false)),
                ("return_type", t("int")),
                ("language", t("java")),
                ("body", t("return x * 2;")),
            ])],
            aggregates: vec![row(&[
                ("aggregate_name", t("total")),
                ("argument_types", list(&["int"])),
                ("state_func", t("twice")),
                ("state_type", t("int")),
                ("initcond", t("0")),
            ])],
            views: vec![row(&[("view_name", t("by_owner"))])],
            triggers: vec![],
        }
    }

    /// The objects with identifiers unquoted, for readable expectations
    /// (every identifier is double-quoted in the CQL).
    fn unquoted(objects: Vec<Described>) -> Vec<Described> {
        objects
            .into_iter()
            .map(|o| Described {
                create: o.create.replace('"', ""),
                ..o
            })
            .collect()
    }

    #[test]
    fn a_keyspace_reads_as_describe_would_list_it() {
        let objects = unquoted(keyspace_objects("shop", &shop()));
        let kinds: Vec<(&str, &str)> = objects
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("keyspace", "shop"),
                ("type", "address"),
                ("type", "customer"),
                ("function", "twice"),
                ("aggregate", "total"),
                ("table", "orders"),
                ("index", "orders_owner"),
                ("index", "orders_total"),
                ("materialized_view", "by_owner"),
            ]
        );
        assert_eq!(
            objects[0].create,
            "CREATE KEYSPACE shop WITH replication = {'class': 'org.apache.cassandra.locator.SimpleStrategy', 'replication_factor': '3'} AND durable_writes = true"
        );
        assert_eq!(
            objects[2].create,
            "CREATE TYPE shop.customer (\n    name text,\n    addresses frozen<list<frozen<address>>>\n)"
        );
    }

    #[test]
    fn a_table_keeps_its_key_order_static_columns_and_options() {
        let objects = unquoted(keyspace_objects("shop", &shop()));
        let table = &objects
            .iter()
            .find(|o| o.kind == "table")
            .expect("table")
            .create;
        assert!(
            table.starts_with(
                "CREATE TABLE shop.orders (\n    shop int,\n    region text,\n    id timeuuid,\n    day date,\n    owner text static,\n    total decimal,\n    PRIMARY KEY ((shop, region), id, day)\n) WITH CLUSTERING ORDER BY (id DESC, day ASC)\n    AND "
            ),
            "{table}"
        );
        for option in [
            "AND default_time_to_live = 86400",
            "AND gc_grace_seconds = 7200",
            "AND comment = 'it''s'",
            "AND compaction = {'class': 'org.apache.cassandra.db.compaction.SizeTieredCompactionStrategy'}",
            "AND bloom_filter_fp_chance = 0.01",
            "AND read_repair_chance = 0",
        ] {
            assert!(table.contains(option), "{option} in {table}");
        }
        assert!(
            !table.contains(" id = "),
            "the table id is no option: {table}"
        );
        // The plan then drops what the target no longer has.
        let planned = crate::schema_plan::plan(
            &objects,
            &BTreeSet::from([("shop".to_owned(), "orders".to_owned())]),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 1}",
        );
        let create = planned
            .iter()
            .find_map(|a| match a {
                crate::schema_plan::Action::Create { what, cql } if what == "table shop.orders" => {
                    Some(cql.clone())
                }
                _ => None,
            })
            .expect("the table is created");
        assert!(
            create.starts_with("CREATE TABLE IF NOT EXISTS shop.orders"),
            "{create}"
        );
        assert!(!create.contains("read_repair_chance"), "{create}");
    }

    #[test]
    fn indexes_functions_and_aggregates_are_their_cql() {
        let objects = unquoted(keyspace_objects("shop", &shop()));
        let by_name = |name: &str| {
            objects
                .iter()
                .find(|o| o.name == name)
                .expect(name)
                .create
                .clone()
        };
        assert_eq!(
            by_name("orders_owner"),
            "CREATE INDEX orders_owner ON shop.orders (owner)"
        );
        assert_eq!(
            by_name("orders_total"),
            "CREATE CUSTOM INDEX orders_total ON shop.orders (total) USING 'org.apache.cassandra.index.sasi.SASIIndex' WITH OPTIONS = {'mode': 'SPARSE'}"
        );
        assert_eq!(
            by_name("twice"),
            "CREATE FUNCTION shop.twice(x int)\n    RETURNS NULL ON NULL INPUT\n    RETURNS int\n    LANGUAGE java\n    AS $$return x * 2;$$"
        );
        assert_eq!(
            objects
                .iter()
                .find(|o| o.kind == "aggregate")
                .expect("aggregate")
                .create,
            "CREATE AGGREGATE shop.total(int)\n    SFUNC twice\n    STYPE int\n    INITCOND 0"
        );
    }
}
