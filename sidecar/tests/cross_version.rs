//! A migration across Cassandra versions (issue 17): the source is the test
//! bed's older node (Cassandra 4.1, `up.sh --older`, 127.0.0.24), the target
//! the bed's 5.0. Every part of the data path Ferry runs, in order, as the
//! operator runs them: the schema copied from the 4.1 source's `DESCRIBE`,
//! history backfilled, live writes and a schema change mirrored through a
//! proxy in front of the 4.1 node (127.0.0.77), the validation, then every
//! cell (value, WRITETIME, TTL) compared on both clusters.

mod bulk_support;
mod proxy_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use ferry_e2e::compare::{self, CompareOptions};
use ferry_operator::crd::CassandraMigrationSpec;
use scylla::client::session::Session;

async fn version(s: &Session) -> String {
    bulk_support::scalar::<String>(s, "SELECT release_version FROM system.local")
        .await
        .expect("release_version")
}

/// The tables `DESCRIBE` lists in `ks` on one cluster.
async fn tables(s: &Session, ks: &str) -> BTreeSet<String> {
    s.query_unpaged(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
        (ks,),
    )
    .await
    .expect("tables")
    .into_rows_result()
    .expect("rows")
    .rows::<(String,)>()
    .expect("typed")
    .map(|r| r.expect("row").0)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cassandra_4_1_source_migrates_to_5_0_with_every_cell_the_same() {
    let testbed = tokio::task::spawn_blocking(ferry_e2e::testbed::older)
        .await
        .expect("join")
        .expect("the test bed with its older node");
    let older = testbed.older.clone().expect("the older node runs");
    let source = Arc::new(proxy_support::connect(&older.contact_point).await);
    let target = Arc::new(proxy_support::connect(&testbed.target_contact_points[0]).await);
    let (from, to) = (version(&source).await, version(&target).await);
    assert!(from.starts_with("4.1"), "the source runs {from}");
    assert!(to.starts_with("5.0"), "the target runs {to}");

    // The source's schema, with what a 4.1 cluster of an application holds.
    let ks = bulk_support::unique("xver");
    for cql in [
        format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', '{}': 1}}", older.datacenter),
        format!("CREATE TYPE {ks}.address (street text, zip int)"),
        format!("CREATE TYPE {ks}.customer (name text, addresses frozen<list<frozen<address>>>)"),
        format!(
            "CREATE TABLE {ks}.orders (shop int, id timeuuid, owner text static, who frozen<customer>, \
             tags set<text>, total decimal, PRIMARY KEY (shop, id)) \
             WITH CLUSTERING ORDER BY (id DESC) AND default_time_to_live = 86400 AND gc_grace_seconds = 7200 \
             AND read_repair = 'NONE'"
        ),
        format!("CREATE TABLE {ks}.hits (page text PRIMARY KEY, n counter)"),
        format!("CREATE INDEX orders_owner ON {ks}.orders (owner)"),
    ] {
        bulk_support::exec(&source, &cql).await;
    }
    source.await_schema_agreement().await.expect("agreement");

    // History, before the migration: some with their own timestamp and TTL.
    let insert = source
        .prepare(format!(
            "INSERT INTO {ks}.orders (shop, id, owner, who, tags, total) VALUES (?, now(), ?, \
             {{name: 'c', addresses: [{{street: 'x', zip: 1}}]}}, {{'a', 'b'}}, 1.5) USING TIMESTAMP ? AND TTL ?"
        ))
        .await
        .expect("prepare history");
    let base = bulk_support::now_micros() - 3_600_000_000;
    for i in 0..200i32 {
        source
            .execute_unpaged(
                &insert,
                (i % 20, format!("owner{i}"), base + i64::from(i), 3600 + i),
            )
            .await
            .expect("history row");
    }

    // 1. The schema, copied as the operator does before the roll.
    let spec: CassandraMigrationSpec = serde_json::from_value(serde_json::json!({
        "source": {"statefulSet": "cassandra"},
        "target": {"contactPoints": testbed.target_contact_points, "localDatacenter": testbed.target_datacenter},
        "keyspaces": {"include": [ks]},
        // The counter table is the source's only: counters cannot be backfilled.
        "tables": {"exclude": [format!("{ks}.hits")]},
    }))
    .expect("spec");
    let copied = ferry_operator::schema_copy::make_target_schema(&source, &target, &spec)
        .await
        .unwrap_or_else(|e| panic!("copying the 4.1 schema to 5.0: {e}"));
    assert!(
        copied.created.iter().any(|c| c.contains("orders")),
        "{copied:?}"
    );
    let again = ferry_operator::schema_copy::make_target_schema(&source, &target, &spec)
        .await
        .expect("the second pass");
    assert!(
        again.created.is_empty(),
        "nothing left to create: {again:?}"
    );
    assert_eq!(again.matching, vec![format!("{ks}.orders")]);

    // 2. Live writes through a proxy in front of the 4.1 node, with a table
    //    created through it: all of it reaches the 5.0 target.
    let replication = format!(
        "{{'class': 'NetworkTopologyStrategy', '{}': 1}}",
        testbed.target_datacenter
    );
    let proxy = proxy_support::start_proxy(
        "127.0.0.77",
        &older.contact_point,
        &testbed.target_contact_points[0],
        &[
            "--mode",
            "async",
            "--mirror-ddl",
            "--target-replication",
            &replication,
        ],
    )
    .await;
    let client = proxy_support::connect(&proxy.addr.to_string()).await;
    let live = client
        .prepare(format!(
            "INSERT INTO {ks}.orders (shop, id, owner, who, tags, total) VALUES (?, now(), ?, null, {{'live'}}, 2.5)"
        ))
        .await
        .expect("prepare live");
    for i in 0..100i32 {
        client
            .execute_unpaged(&live, (100 + i % 5, format!("live{i}")))
            .await
            .expect("live write");
    }
    client
        .query_unpaged(
            format!("CREATE TABLE {ks}.events (k int PRIMARY KEY, v text)"),
            &[],
        )
        .await
        .expect("a table created through the proxy");
    source.await_schema_agreement().await.expect("agreement");
    for k in 0..20i32 {
        client
            .query_unpaged(
                format!("INSERT INTO {ks}.events (k, v) VALUES ({k}, 'e{k}')"),
                &[],
            )
            .await
            .expect("write to the new table");
    }
    let (status, body) = proxy.admin_get("/drain?timeout=30").await;
    assert!(
        status.contains("200"),
        "the async mirror drains: {status} {body}"
    );

    // 3. The backfill and the validation, from the 4.1 source.
    let bed = bulk_support::Bed {
        testbed: ferry_e2e::testbed::Testbed {
            source_contact_points: vec![older.contact_point.clone()],
            source_datacenter: older.datacenter.clone(),
            ..testbed.clone()
        },
        source: source.clone(),
        target: target.clone(),
    };
    let selection = [
        "--keyspaces",
        &ks,
        "--exclude-tables",
        &format!("{ks}.hits"),
    ];
    let backfill = bulk_support::run_backfill(&bed, &selection).await;
    assert!(backfill.rows >= 300, "{backfill:?}");
    let validation = bulk_support::run_validate(&bed, &selection).await;
    assert_eq!(validation.differences(), 0, "{validation:?}");

    // 4. Every cell, its WRITETIME and its TTL, the same on both.
    assert_eq!(
        tables(&target, &ks).await,
        BTreeSet::from(["orders".to_owned(), "events".to_owned()]),
        "the counter table stays on the source"
    );
    let opts = CompareOptions {
        // 4.1 has no WRITETIME of a non-frozen collection's cells.
        multi_cell_stamps: false,
        ..CompareOptions::default()
    };
    for table in ["orders", "events"] {
        let diffs = compare::compare_table(&source, &target, &ks, table, &opts)
            .await
            .unwrap_or_else(|e| panic!("comparing {ks}.{table}: {e:#}"));
        assert!(
            diffs.is_empty(),
            "{ks}.{table}: {:?}",
            &diffs[..diffs.len().min(5)]
        );
    }
    proxy.stop().await.expect("proxy stops");
    for session in [&source, &target] {
        let _ = session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
            .await;
    }
}

/// A non-frozen list on a source older than 5.0 has no readable element
/// WRITETIME, so the repair writes it at the validation start - 1 µs. When
/// that first rewrite does not fix the row (here: the target holds a
/// tombstone on another column newer than the source's cell), the repair
/// writes the row again, later: that second write must not leave the list
/// twice on the target (two overwrites of a list at one timestamp keep both
/// copies, CASSANDRA-11368). Seen in a 3.11 → 5.0 run: lists that differed
/// again after every repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_from_a_4_1_source_is_repaired_once_even_when_the_row_is_rewritten() {
    let testbed = tokio::task::spawn_blocking(ferry_e2e::testbed::older)
        .await
        .expect("join")
        .expect("the test bed with its older node");
    let older = testbed.older.clone().expect("the older node runs");
    let source = Arc::new(proxy_support::connect(&older.contact_point).await);
    let target = Arc::new(proxy_support::connect(&testbed.target_contact_points[0]).await);
    let ks = bulk_support::unique("xlist");
    for (session, dc) in [
        (&source, &older.datacenter),
        (&target, &testbed.target_datacenter),
    ] {
        for cql in [
            format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', '{dc}': 1}}"),
            format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text, l list<int>)"),
        ] {
            bulk_support::exec(session, &cql).await;
        }
        session.await_schema_agreement().await.expect("agreement");
    }
    // Row 1: the target lost `v` to a newer tombstone, so the first rewrite
    // (at the source's WRITETIME) cannot bring it back. Row 2: the target
    // holds the list twice (an append copied again by the backfill).
    for cql in [
        format!("UPDATE {ks}.t USING TIMESTAMP 1000 SET v = 'a', l = [1, 2] WHERE k = 1"),
        format!("UPDATE {ks}.t USING TIMESTAMP 1000 SET v = 'b', l = [3, 4] WHERE k = 2"),
    ] {
        bulk_support::exec(&source, &cql).await;
    }
    for cql in [
        format!("UPDATE {ks}.t USING TIMESTAMP 1000 SET v = 'a', l = [1, 2] WHERE k = 1"),
        format!("DELETE v FROM {ks}.t USING TIMESTAMP 2000 WHERE k = 1"),
        format!("UPDATE {ks}.t USING TIMESTAMP 1000 SET v = 'b', l = [3, 4, 4] WHERE k = 2"),
    ] {
        bulk_support::exec(&target, &cql).await;
    }

    let bed = bulk_support::Bed {
        testbed: ferry_e2e::testbed::Testbed {
            source_contact_points: vec![older.contact_point.clone()],
            source_datacenter: older.datacenter.clone(),
            ..testbed.clone()
        },
        source: source.clone(),
        target: target.clone(),
    };
    let selection = ["--keyspaces", ks.as_str()];
    let repaired =
        bulk_support::run_validate(&bed, &[&selection[..], &["--repair"]].concat()).await;
    assert_eq!(repaired.differences(), 2, "{repaired:?}");
    let lists = format!("SELECT k, l FROM {ks}.t");
    let on_target = bulk_support::pairs::<i32, Vec<i32>>(&target, &lists).await;
    assert_eq!(
        on_target,
        bulk_support::pairs::<i32, Vec<i32>>(&source, &lists).await,
        "every list as on the source after one repair"
    );
    assert_eq!(
        bulk_support::scalar::<String>(&target, &format!("SELECT v FROM {ks}.t WHERE k = 1")).await,
        Some("a".to_owned())
    );
    let again = bulk_support::run_validate(&bed, &selection).await;
    assert_eq!(again.differences(), 0, "{again:?}");
    for session in [&source, &target] {
        let _ = session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
            .await;
    }
}
