//! The schema of a source with no server-side `DESCRIBE` (Cassandra before
//! 4.0) is built from its `system_schema` (`ferry_operator::system_schema`).
//! Tested where it can be, on the bed's 5.0 clusters: a keyspace with every
//! kind of object is built from the source's schema tables, the plan is run
//! on the target, and the target's schema tables must then say what the
//! source's say, row by row (table ids aside). Where the bed's older node
//! (4.1, `up.sh --older`) runs, the same from it.

mod bulk_support;
mod proxy_support;

use std::collections::{BTreeMap, BTreeSet};

use ferry_operator::schema_plan::{self, Action};
use ferry_operator::system_schema;
use scylla::client::session::Session;
use scylla::value::CqlValue;

/// Every row the schema tables hold for `ks`, as text, keyed by table and
/// the row's names: what the copy must reproduce. Table ids and what
/// differs by design between two clusters are left out.
async fn schema_rows(s: &Session, ks: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (table, key) in [
        ("tables", vec!["table_name"]),
        ("columns", vec!["table_name", "column_name"]),
        ("types", vec!["type_name"]),
        ("indexes", vec!["table_name", "index_name"]),
        ("functions", vec!["function_name"]),
        ("aggregates", vec!["aggregate_name"]),
    ] {
        let result = s
            .query_unpaged(
                format!("SELECT * FROM system_schema.{table} WHERE keyspace_name = ?"),
                (ks,),
            )
            .await
            .expect("schema rows")
            .into_rows_result()
            .expect("rows");
        let names: Vec<String> = result
            .column_specs()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        for row in result.rows::<scylla::value::Row>().expect("typed") {
            let row: BTreeMap<String, Option<CqlValue>> = names
                .iter()
                .cloned()
                .zip(row.expect("row").columns)
                .collect();
            let id: Vec<String> = key
                .iter()
                .map(|k| format!("{:?}", row.get(*k).cloned().flatten()))
                .collect();
            let kept: BTreeMap<String, String> = row
                .iter()
                .filter(|(k, _)| k.as_str() != "id" && k.as_str() != "keyspace_name")
                .filter_map(|(k, v)| Some((k.clone(), format!("{:?}", v.as_ref()?))))
                .collect();
            out.insert(format!("{table} {}", id.join(" ")), kept);
        }
    }
    out
}

async fn copy_through_system_schema(source: &Session, target: &Session, ks: &str, dc: &str) {
    let objects = system_schema::describe_from_tables(source, ks)
        .await
        .expect("the source's schema tables");
    let tables: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|o| o.kind == "table")
        .map(|o| (ks.to_owned(), o.name.clone()))
        .collect();
    let replication = format!("{{'class': 'NetworkTopologyStrategy', '{dc}': 1}}");
    let mut left_out = Vec::new();
    for action in schema_plan::plan(&objects, &tables, &replication) {
        match action {
            Action::Create { what, cql } => {
                if let Err(e) = target.query_unpaged(cql.as_str(), ()).await {
                    panic!("creating {what} on the target: {e}\n{cql}");
                }
            }
            Action::LeftOut { what, why } => left_out.push(format!("{what}: {why}")),
        }
    }
    target.await_schema_agreement().await.expect("agreement");
    assert_eq!(
        left_out.len(),
        1,
        "only the materialized view is left out: {left_out:?}"
    );
    assert!(left_out[0].contains("materialized_view"), "{left_out:?}");
}

fn every_kind_of_object(ks: &str, dc: &str) -> Vec<String> {
    vec![
        format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', '{dc}': 1}}"),
        format!("CREATE TYPE {ks}.address (street text, zip int)"),
        format!("CREATE TYPE {ks}.customer (name text, addresses frozen<list<frozen<address>>>)"),
        format!(
            "CREATE TABLE {ks}.orders (shop int, region text, id timeuuid, day date, owner text static, \
             who frozen<customer>, tags set<text>, total decimal, \"Mixed Case\" int, \
             PRIMARY KEY ((shop, region), id, day)) \
             WITH CLUSTERING ORDER BY (id DESC, day ASC) AND default_time_to_live = 86400 \
             AND gc_grace_seconds = 7200 AND comment = 'it''s here' \
             AND compaction = {{'class': 'LeveledCompactionStrategy', 'sstable_size_in_mb': '64'}} \
             AND caching = {{'keys': 'ALL', 'rows_per_partition': '10'}}"
        ),
        format!("CREATE TABLE {ks}.hits (page text PRIMARY KEY, n counter)"),
        format!("CREATE INDEX orders_owner ON {ks}.orders (owner)"),
        format!("CREATE INDEX orders_tags ON {ks}.orders (values(tags))"),
        format!(
            "CREATE CUSTOM INDEX orders_total ON {ks}.orders (total) USING 'org.apache.cassandra.index.sasi.SASIIndex'"
        ),
        format!(
            "CREATE FUNCTION {ks}.twice(x int) RETURNS NULL ON NULL INPUT RETURNS int LANGUAGE java AS 'return x * 2;'"
        ),
        format!(
            "CREATE FUNCTION {ks}.plus(acc int, x int) CALLED ON NULL INPUT RETURNS int LANGUAGE java \
             AS 'return (acc == null ? 0 : acc) + (x == null ? 0 : x);'"
        ),
        format!("CREATE AGGREGATE {ks}.total(int) SFUNC plus STYPE int FINALFUNC twice INITCOND 0"),
        format!(
            "CREATE MATERIALIZED VIEW {ks}.by_total AS SELECT total, shop, region, id, day FROM {ks}.orders \
             WHERE total IS NOT NULL AND shop IS NOT NULL AND region IS NOT NULL AND id IS NOT NULL AND day IS NOT NULL \
             PRIMARY KEY (total, shop, region, id, day)"
        ),
    ]
}

async fn check(source: &Session, target: &Session, dc_source: &str, dc_target: &str) {
    let ks = bulk_support::unique("sysschema");
    for cql in every_kind_of_object(&ks, dc_source) {
        bulk_support::exec(source, &cql).await;
    }
    source.await_schema_agreement().await.expect("agreement");

    copy_through_system_schema(source, target, &ks, dc_target).await;

    // The view is left out by design (derived data): its columns too.
    let mut on_source = schema_rows(source, &ks).await;
    on_source.retain(|k, _| !k.contains("\"by_total\""));
    let on_target = schema_rows(target, &ks).await;
    assert!(on_source.len() >= 20, "{} schema rows", on_source.len());
    // Across versions the target's schema tables have columns the
    // source's lack (5.0 added table options): what the source says must
    // be on the target, the target's own additions aside.
    let differing: Vec<String> = on_source
        .iter()
        .filter_map(|(k, source_row)| {
            let Some(target_row) = on_target.get(k) else {
                return Some(format!("{k}: missing on the target"));
            };
            let wrong: Vec<String> = source_row
                .iter()
                .filter(|(c, v)| target_row.get(*c) != Some(*v))
                .map(|(c, v)| format!("{c}: source {v}, target {:?}", target_row.get(c)))
                .collect();
            (!wrong.is_empty()).then(|| format!("{k}: {}", wrong.join("; ")))
        })
        .chain(
            on_target
                .keys()
                .filter(|k| !on_source.contains_key(*k))
                .map(|k| format!("{k}: only on the target")),
        )
        .collect();
    assert!(
        differing.is_empty(),
        "the target's schema tables differ:\n{}",
        differing.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_built_from_system_schema_recreates_every_object() {
    let bed = proxy_support::testbed(1);
    let source = proxy_support::connect(&bed.source_contact_points[0]).await;
    let target = proxy_support::connect(&bed.target_contact_points[0]).await;
    check(
        &source,
        &target,
        &bed.source_datacenter,
        &bed.target_datacenter,
    )
    .await;
}

/// The same from the bed's Cassandra 4.1 node to its 5.0 target: the
/// options a 4.1 table carries must be accepted by 5.0 as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_1_schema_built_from_system_schema_recreates_every_object_on_5_0() {
    let bed = tokio::task::spawn_blocking(ferry_e2e::testbed::older)
        .await
        .expect("join")
        .expect("the test bed with its older node");
    let older = bed.older.clone().expect("the older node runs");
    let source = proxy_support::connect(&older.contact_point).await;
    let target = proxy_support::connect(&bed.target_contact_points[0]).await;
    check(&source, &target, &older.datacenter, &bed.target_datacenter).await;
}
