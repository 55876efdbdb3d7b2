//! The target's schema, planned from the source's: server-side `DESCRIBE`
//! output (Cassandra 4.0+) in, the CQL to run on the target out, each
//! statement idempotent (`IF NOT EXISTS`: nothing on the target is ever
//! altered or dropped), the keyspaces with the target's own replication,
//! options the target no longer knows left out, and what cannot be carried
//! over said so. Pure, so every kind of object is unit tested here;
//! [`crate::schema_copy`] reads the clusters and runs the plan.

use std::collections::{BTreeMap, BTreeSet};

/// One object of the source's `DESCRIBE KEYSPACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub keyspace: String,
    /// `keyspace`, `type`, `function`, `aggregate`, `table`, `index`,
    /// `materialized_view`, ...
    pub kind: String,
    pub name: String,
    pub create: String,
}

/// The kind of a table with COMPACT STORAGE (a 3.x source's; no 4.0+
/// target has it), as [`crate::system_schema`] lists it.
pub const COMPACT_TABLE: &str = "compact_storage_table";

/// What the plan does with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run `cql` on the target (it does nothing where the object exists).
    Create { what: String, cql: String },
    /// Left out, and why (the user reads it in an Event).
    LeftOut { what: String, why: String },
}

/// Table options removed from Cassandra (4.0 dropped the read-repair
/// chances): a source on 3.x may carry them, a 4.0+ target refuses them.
const REMOVED_TABLE_OPTIONS: &[&str] = &["read_repair_chance", "dclocal_read_repair_chance"];

/// The replication map a target keyspace gets: the user's per-data-center
/// factors, or `NetworkTopologyStrategy` over the target's own data
/// centers with RF = min(3, nodes), never the source's data-center names.
pub fn replication(
    user: Option<&BTreeMap<String, i32>>,
    target_nodes_per_dc: &BTreeMap<String, usize>,
) -> String {
    let factors: Vec<(String, usize)> = match user {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(dc, rf)| (dc.clone(), (*rf).max(1) as usize))
            .collect(),
        _ => target_nodes_per_dc
            .iter()
            .map(|(dc, nodes)| (dc.clone(), (*nodes).clamp(1, 3)))
            .collect(),
    };
    let mut out = String::from("{'class': 'NetworkTopologyStrategy'");
    for (dc, rf) in factors {
        out += &format!(", '{}': {rf}", dc.replace('\'', "''"));
    }
    out.push('}');
    out
}

/// The plan for the `selected` tables (`(keyspace, table)`) from the
/// source's objects, in the order `DESCRIBE` gives them (types before the
/// tables that use them).
pub fn plan(
    objects: &[Described],
    selected: &BTreeSet<(String, String)>,
    replication: &str,
) -> Vec<Action> {
    let keyspaces: BTreeSet<&str> = selected.iter().map(|(ks, _)| ks.as_str()).collect();
    let mut actions = Vec::new();
    for o in objects {
        if !keyspaces.contains(o.keyspace.as_str()) {
            continue;
        }
        let what = format!("{} {}.{}", o.kind, o.keyspace, o.name);
        let create = o.create.trim().trim_end_matches(';').trim().to_owned();
        match o.kind.as_str() {
            "keyspace" => {
                let durable = !create.to_lowercase().contains("durable_writes = false");
                actions.push(Action::Create {
                    what: format!("keyspace {}", o.keyspace),
                    cql: format!(
                        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {replication} AND durable_writes = {durable}",
                        quote(&o.keyspace)
                    ),
                });
            }
            "type" | "function" | "aggregate" => actions.push(Action::Create {
                what,
                cql: if_not_exists(&create),
            }),
            "table" => {
                if selected.contains(&(o.keyspace.clone(), o.name.clone())) {
                    actions.push(Action::Create {
                        what,
                        cql: if_not_exists(&without_removed_options(&create)),
                    });
                }
            }
            "index" => match index_table(&create) {
                Some(table) if selected.contains(&(o.keyspace.clone(), table.clone())) => {
                    actions.push(Action::Create {
                        what,
                        cql: if_not_exists(&create),
                    })
                }
                Some(_) => {}
                None => actions.push(Action::LeftOut {
                    what,
                    why: "its table could not be read from the statement".to_owned(),
                }),
            },
            COMPACT_TABLE => actions.push(Action::LeftOut {
                what: format!("table {}.{}", o.keyspace, o.name),
                why: "it has COMPACT STORAGE, which Cassandra 4.0 removed: run ALTER TABLE ... DROP COMPACT STORAGE on the source (3.0.19, 3.11.5 or later) before the migration".to_owned(),
            }),
            "materialized_view" => actions.push(Action::LeftOut {
                what,
                why: "a materialized view is derived data, never written by the proxies or the backfill; create it on the target after the migration (docs/operator.md, \"Schema\")".to_owned(),
            }),
            other => actions.push(Action::LeftOut {
                what,
                why: format!("Ferry does not copy objects of kind {other}"),
            }),
        }
    }
    actions
}

/// `CREATE X ...` → `CREATE X IF NOT EXISTS ...` (for TABLE, TYPE, INDEX,
/// CUSTOM INDEX, FUNCTION, AGGREGATE; `OR REPLACE` is dropped: nothing on
/// the target is replaced).
pub fn if_not_exists(create: &str) -> String {
    let trimmed = create.trim_start();
    let upper = trimmed.to_uppercase();
    let (head_len, rest) = if upper.starts_with("CREATE OR REPLACE ") {
        ("CREATE OR REPLACE ".len(), "CREATE ")
    } else {
        (0, "")
    };
    let body = format!("{rest}{}", &trimmed[head_len..]);
    let upper = body.to_uppercase();
    for keyword in [
        "CREATE CUSTOM INDEX ",
        "CREATE INDEX ",
        "CREATE TABLE ",
        "CREATE TYPE ",
        "CREATE FUNCTION ",
        "CREATE AGGREGATE ",
    ] {
        if let Some(after) = upper.strip_prefix(keyword) {
            if after.starts_with("IF NOT EXISTS") {
                return body;
            }
            return format!(
                "{}IF NOT EXISTS {}",
                &body[..keyword.len()],
                &body[keyword.len()..]
            );
        }
    }
    body
}

/// The table of a `CREATE [CUSTOM] INDEX name ON ks.table (...)`.
fn index_table(create: &str) -> Option<String> {
    let upper = create.to_uppercase();
    let at = upper.find(" ON ")? + 4;
    let target = create[at..].trim_start();
    let end = target.find(|c: char| c == '(' || c.is_whitespace())?;
    let qualified = &target[..end];
    let table = qualified.rsplit_once('.').map_or(qualified, |(_, t)| t);
    Some(table.trim_matches('"').to_owned())
}

/// The statement without the table options the target no longer has.
/// `DESCRIBE` puts the options after the column list, `) WITH a = 1` then
/// one `AND b = 2` per line.
fn without_removed_options(create: &str) -> String {
    let Some(at) = create.rfind(") WITH ") else {
        return create.to_owned();
    };
    let (head, options) = (&create[..at + 1], &create[at + ") WITH ".len()..]);
    let mut kept: Vec<&str> = Vec::new();
    for option in options.split("\n") {
        let option = option.trim_start();
        let option = option.strip_prefix("AND ").unwrap_or(option);
        let name = option.split([' ', '=']).next().unwrap_or("");
        if !REMOVED_TABLE_OPTIONS.contains(&name) {
            kept.push(option);
        }
    }
    if kept.is_empty() {
        return head.to_owned();
    }
    format!("{head} WITH {}", kept.join("\n    AND "))
}

/// An identifier, double-quoted.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: &str, name: &str, create: &str) -> Described {
        Described {
            keyspace: "shop".into(),
            kind: kind.into(),
            name: name.into(),
            create: create.into(),
        }
    }

    fn selected(tables: &[&str]) -> BTreeSet<(String, String)> {
        tables
            .iter()
            .map(|t| ("shop".to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn every_kind_of_object_is_created_only_where_missing_in_describe_order() {
        let objects = [
            obj("keyspace", "shop", "CREATE KEYSPACE shop WITH replication = {'class': 'NetworkTopologyStrategy', 'source-dc': '3'}  AND durable_writes = true;"),
            obj("type", "address", "CREATE TYPE shop.address (\n    street text\n);"),
            obj("function", "twice", "CREATE FUNCTION shop.twice(x int)\n    RETURNS NULL ON NULL INPUT\n    RETURNS int\n    LANGUAGE java\n    AS $$ return x * 2; $$;"),
            obj("table", "orders", "CREATE TABLE shop.orders (\n    id int PRIMARY KEY,\n    v text\n) WITH bloom_filter_fp_chance = 0.01\n    AND gc_grace_seconds = 86400;"),
            obj("index", "orders_v", "CREATE CUSTOM INDEX orders_v ON shop.orders (v) USING 'StorageAttachedIndex';"),
            obj("table", "other", "CREATE TABLE shop.other (id int PRIMARY KEY);"),
            obj("index", "other_idx", "CREATE INDEX other_idx ON shop.other (id);"),
            obj("materialized_view", "orders_by_v", "CREATE MATERIALIZED VIEW shop.orders_by_v AS SELECT ..."),
        ];
        let repl = "{'class': 'NetworkTopologyStrategy', 'target-dc': 1}";
        let actions = plan(&objects, &selected(&["orders"]), repl);
        let cql: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { cql, .. } => Some(cql.as_str()),
                Action::LeftOut { .. } => None,
            })
            .collect();
        assert_eq!(cql.len(), 5, "{cql:#?}");
        assert_eq!(
            cql[0],
            "CREATE KEYSPACE IF NOT EXISTS \"shop\" WITH replication = {'class': 'NetworkTopologyStrategy', 'target-dc': 1} AND durable_writes = true"
        );
        assert!(
            !cql[0].contains("source-dc"),
            "the source's data centers are never copied"
        );
        assert!(cql[1].starts_with("CREATE TYPE IF NOT EXISTS shop.address ("));
        assert!(cql[2].starts_with("CREATE FUNCTION IF NOT EXISTS shop.twice(x int)"));
        assert!(cql[3].starts_with("CREATE TABLE IF NOT EXISTS shop.orders ("));
        assert!(
            cql[3].ends_with("AND gc_grace_seconds = 86400"),
            "{}",
            cql[3]
        );
        assert_eq!(
            cql[4],
            "CREATE CUSTOM INDEX IF NOT EXISTS orders_v ON shop.orders (v) USING 'StorageAttachedIndex'"
        );
        assert!(
            !cql.iter().any(|c| c.contains("other")),
            "a table not selected, and its index, stay off the target"
        );
        assert!(matches!(
            actions.last(),
            Some(Action::LeftOut { what, .. }) if what == "materialized_view shop.orders_by_v"
        ));
    }

    #[test]
    fn options_removed_in_cassandra_4_are_left_out() {
        let from_3_11 = "CREATE TABLE shop.t (\n    id int PRIMARY KEY\n) WITH read_repair_chance = 0.0\n    AND comment = ''\n    AND dclocal_read_repair_chance = 0.1\n    AND gc_grace_seconds = 864000;";
        let out = if_not_exists(&without_removed_options(from_3_11));
        assert_eq!(
            out,
            "CREATE TABLE IF NOT EXISTS shop.t (\n    id int PRIMARY KEY\n) WITH comment = ''\n    AND gc_grace_seconds = 864000;"
        );
    }

    #[test]
    fn statements_are_made_idempotent_once() {
        assert_eq!(
            if_not_exists("CREATE OR REPLACE FUNCTION ks.f(x int) ..."),
            "CREATE FUNCTION IF NOT EXISTS ks.f(x int) ..."
        );
        assert_eq!(
            if_not_exists("CREATE TABLE IF NOT EXISTS ks.t (id int PRIMARY KEY)"),
            "CREATE TABLE IF NOT EXISTS ks.t (id int PRIMARY KEY)"
        );
        assert_eq!(
            index_table("CREATE INDEX i ON ks.\"Orders\" (v)").as_deref(),
            Some("Orders")
        );
    }

    #[test]
    fn replication_is_the_targets_own() {
        let nodes: BTreeMap<String, usize> =
            [("dc-a".to_owned(), 5), ("dc-b".to_owned(), 1)].into();
        assert_eq!(
            replication(None, &nodes),
            "{'class': 'NetworkTopologyStrategy', 'dc-a': 3, 'dc-b': 1}"
        );
        let user: BTreeMap<String, i32> = [("dc-a".to_owned(), 2)].into();
        assert_eq!(
            replication(Some(&user), &nodes),
            "{'class': 'NetworkTopologyStrategy', 'dc-a': 2}"
        );
    }
}
