//! Schema changes made through the proxies while a migration runs (issue
//! 17): a `CREATE TABLE` or `ALTER TABLE ... ADD` followed at once by
//! writes that need it. Every acknowledged write must be on the target, a
//! new keyspace gets the target's replication, and a `DROP` stays on the
//! source. Real source and target nodes of the test bed (the whole
//! source ring up: the keyspaces are RF 1); proxies on 127.0.0.61-63
//! (127.0.0.97 stands for a target that is down).

mod proxy_support;

use std::time::Duration;

use proxy_support::*;
use scylla::client::session::Session;

/// The replication map of `ks` as a cluster stores it, sorted.
async fn replication(s: &Session, ks: &str) -> Vec<(String, String)> {
    let rows = s
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (ks,),
        )
        .await
        .expect("read replication")
        .into_rows_result()
        .expect("rows");
    let mut out: Vec<(String, String)> = rows
        .rows::<(std::collections::BTreeMap<String, String>,)>()
        .expect("typed")
        .next()
        .unwrap_or_else(|| panic!("{ks} does not exist"))
        .expect("row")
        .0
        .into_iter()
        .collect();
    out.sort();
    out
}

async fn target_dc(target: &Session) -> String {
    let rows = target
        .query_unpaged("SELECT data_center FROM system.local", &[])
        .await
        .expect("system.local")
        .into_rows_result()
        .expect("rows");
    let dc = rows
        .rows::<(String,)>()
        .expect("typed")
        .next()
        .expect("one row")
        .expect("row")
        .0;
    dc
}

async fn table_exists(s: &Session, ks: &str, table: &str) -> bool {
    count(
        s,
        &format!("SELECT count(*) FROM system_schema.tables WHERE keyspace_name = '{ks}' AND table_name = '{table}'"),
    )
    .await
        == 1
}

/// Runs `q` through the proxy's `client`; after a schema change, waits
/// for the source ring's agreement directly: only node 1 has a proxy here,
/// so the driver cannot ask nodes 2 and 3 (advertised at proxies that do
/// not exist) for their schema version.
async fn through(client: &Session, source: &Session, q: String) {
    client
        .query_unpaged(q.as_str(), &[])
        .await
        .unwrap_or_else(|e| panic!("{q} through the proxy: {e}"));
    if !q.starts_with("INSERT") {
        source
            .await_schema_agreement()
            .await
            .expect("source schema agreement");
    }
}

/// In each mode: a keyspace, a type, tables and a column created through
/// the proxy, each used by the very next write; every write is on the
/// target, the keyspace has the target's replication, and a DROP is not
/// repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_reach_the_target_before_the_writes_that_need_them() {
    let tb = testbed(3);
    let source_addr = tb.source_contact_points[0].clone();
    let target_addr = tb.target_contact_points[0].clone();
    let source = connect(&source_addr).await;
    let target = connect(&target_addr).await;
    let dc = target_dc(&target).await;
    let target_replication = format!("{{'class': 'NetworkTopologyStrategy', '{dc}': 1}}");
    for (mode, ip) in [("sync", "127.0.0.61"), ("async", "127.0.0.62")] {
        let proxy = start_proxy(
            ip,
            &source_addr,
            &target_addr,
            &[
                "--mode",
                mode,
                "--mirror-ddl",
                "--target-replication",
                &target_replication,
            ],
        )
        .await;
        let client = connect(&proxy.addr.to_string()).await;
        let ks = keyspace(&format!("follow_{mode}"));
        let run = |q: String| through(&client, &source, q);
        run(format!(
            "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        ))
        .await;
        run(format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")).await;
        let insert = client
            .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
            .await
            .expect("prepare");
        for k in 0..50 {
            client
                .execute_unpaged(&insert, (k, "first"))
                .await
                .expect("write to the new table");
        }
        run(format!("ALTER TABLE {ks}.t ADD w int")).await;
        for k in 50..60 {
            run(format!(
                "INSERT INTO {ks}.t (k, v, w) VALUES ({k}, 'second', {k})"
            ))
            .await;
        }
        run(format!("CREATE TYPE {ks}.addr (street text, zip int)")).await;
        run(format!(
            "CREATE TABLE {ks}.people (id int PRIMARY KEY, home frozen<addr>)"
        ))
        .await;
        for id in 0..5 {
            run(format!(
                "INSERT INTO {ks}.people (id, home) VALUES ({id}, {{street: 'x', zip: {id}}})"
            ))
            .await;
        }
        run(format!("CREATE TABLE {ks}.doomed (k int PRIMARY KEY)")).await;
        run(format!("DROP TABLE {ks}.doomed")).await;
        run(format!("ALTER TABLE {ks}.t DROP v")).await;

        let all_there = eventually(Duration::from_secs(30), || async {
            proxy.metric("ferry_proxy_spool_records").await == 0.0
                && count(&target, &format!("SELECT count(*) FROM {ks}.t")).await == 60
                && count(
                    &target,
                    &format!(
                        "SELECT count(*) FROM {ks}.t WHERE k >= 50 AND w >= 50 ALLOW FILTERING"
                    ),
                )
                .await
                    == 10
                && count(&target, &format!("SELECT count(*) FROM {ks}.people")).await == 5
        })
        .await;
        assert!(all_there, "{mode}: every acknowledged write on the target");
        assert_eq!(
            replication(&target, &ks).await,
            vec![
                (
                    "class".to_owned(),
                    "org.apache.cassandra.locator.NetworkTopologyStrategy".to_owned()
                ),
                (dc.clone(), "1".to_owned()),
            ],
            "{mode}: the target's replication, not the source's"
        );
        assert!(
            replication(&source, &ks)
                .await
                .iter()
                .any(|(_, v)| v.contains("SimpleStrategy")),
            "{mode}: the source keeps its own"
        );
        // Drops stay on the source.
        assert!(!table_exists(&source, &ks, "doomed").await);
        assert!(
            table_exists(&target, &ks, "doomed").await,
            "{mode}: DROP TABLE must not be repeated on the target"
        );
        assert_eq!(
            count(
                &target,
                &format!("SELECT count(*) FROM system_schema.columns WHERE keyspace_name = '{ks}' AND table_name = 't' AND column_name = 'v'"),
            )
            .await,
            1,
            "{mode}: ALTER TABLE ... DROP must not be repeated on the target"
        );
        assert_eq!(
            proxy
                .metric("ferry_proxy_schema_changes_total{outcome=\"not_repeated\"}")
                .await,
            2.0,
            "{mode}"
        );
        assert_eq!(
            proxy
                .metric("ferry_proxy_schema_changes_total{outcome=\"followed\"}")
                .await,
            6.0,
            "{mode}"
        );
        proxy.stop().await.expect("proxy stops");
    }
}

/// Async mode, the target down: a `CREATE TABLE` and an `ALTER TABLE ...
/// ADD` go to the spool in order with the writes that use them, and are
/// replayed before those writes once the target is back (the spool is
/// handed to a proxy that reaches it, as a restarted pod does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_made_while_the_target_is_down_is_replayed_before_the_writes_behind_it() {
    let tb = testbed(3);
    let source_addr = tb.source_contact_points[0].clone();
    let target_addr = tb.target_contact_points[0].clone();
    let source = connect(&source_addr).await;
    let target = connect(&target_addr).await;
    let ks = keyspace("follow_down");
    create_keyspace(&source, &ks).await;
    create_keyspace(&target, &ks).await;
    let spool_dir = std::env::temp_dir().join(format!("ferry-follow-down-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool_dir);
    let down = start_proxy_with_spool(
        "127.0.0.63",
        &source_addr,
        "127.0.0.97",
        &["--mode", "async", "--async-retries", "1", "--mirror-ddl"],
        spool_dir.clone(),
    )
    .await;
    let client = connect(&down.addr.to_string()).await;
    let run = |q: String| through(&client, &source, q);
    run(format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")).await;
    for k in 0..20 {
        run(format!("INSERT INTO {ks}.t (k, v) VALUES ({k}, 'a')")).await;
    }
    run(format!("ALTER TABLE {ks}.t ADD w int")).await;
    for k in 20..30 {
        run(format!(
            "INSERT INTO {ks}.t (k, v, w) VALUES ({k}, 'b', {k})"
        ))
        .await;
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            down.metric("ferry_proxy_spool_records").await == 32.0
        })
        .await,
        "2 schema changes and 30 writes spooled: {}",
        down.metric("ferry_proxy_spool_records").await
    );
    assert!(!table_exists(&target, &ks, "t").await);
    down.stop().await.expect("proxy stops");

    let up = start_proxy_with_spool(
        "127.0.0.63",
        &source_addr,
        &target_addr,
        &["--mode", "async", "--mirror-ddl"],
        spool_dir,
    )
    .await;
    let drained = eventually(Duration::from_secs(30), || async {
        up.metric("ferry_proxy_spool_records").await == 0.0
    })
    .await;
    assert!(drained, "the spool drains once the target is back");
    assert_eq!(
        count(&target, &format!("SELECT count(*) FROM {ks}.t")).await,
        30
    );
    assert_eq!(
        count(
            &target,
            &format!("SELECT count(*) FROM {ks}.t WHERE w >= 20 ALLOW FILTERING")
        )
        .await,
        10
    );
    assert_eq!(
        up.metric("ferry_proxy_mirrored_writes_total{outcome=\"rejected\"}")
            .await,
        0.0
    );
    up.stop().await.expect("proxy stops");
}
