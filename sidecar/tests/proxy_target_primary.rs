//! `target-primary-async`: after the cut-over the target answers the
//! application, and the source, now the fallback, gets a copy of every
//! write in the background, retried, then spooled toward it. Going back
//! to the source must lose nothing, even when the source could not take
//! writes for a while and the proxy restarted meanwhile.
//!
//! The source keyspace has three replicas and the application writes at
//! `ALL`, so stopping the source's third node (never fronted by a proxy)
//! makes the source refuse the copies while the client's own connection,
//! to the first node, stays up. The test holds that node's restart lock
//! and always starts it again.

mod proxy_support;

use std::collections::BTreeMap;
use std::time::Duration;

use proxy_support::outage::{NodeOutage, SOURCE3};
use proxy_support::*;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;

const PROXY_IP: &str = "127.0.0.80";

/// Every key of `ks.t` with its value's write time.
async fn write_times(session: &Session, ks: &str) -> BTreeMap<i32, i64> {
    session
        .query_unpaged(format!("SELECT k, WRITETIME(v) FROM {ks}.t"), &[])
        .await
        .expect("full read")
        .into_rows_result()
        .expect("rows")
        .rows::<(i32, i64)>()
        .expect("typed")
        .map(|r| r.expect("row"))
        .collect()
}

/// Writes keys `range` at `ALL` through `client`; every one must be
/// acknowledged.
async fn write_keys(client: &Session, insert: &PreparedStatement, range: std::ops::Range<i32>) {
    for k in range {
        client
            .execute_unpaged(insert, (k, format!("value {k}")))
            .await
            .unwrap_or_else(|e| panic!("write {k} through the proxy: {e}"));
    }
}

/// The bed with its three source nodes: each cluster's first contact
/// point, and a session on each.
async fn clusters() -> (String, String, Session, Session) {
    let tb = testbed(3);
    let (src, tgt) = (
        tb.source_contact_points[0].clone(),
        tb.target_contact_points[0].clone(),
    );
    let source = connect(&src).await;
    let target = connect(&tgt).await;
    (src, tgt, source, target)
}

async fn prepared_insert(client: &Session, ks: &str) -> PreparedStatement {
    let mut insert = client
        .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    insert.set_consistency(Consistency::All);
    insert
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_primary_async_answers_from_the_target_and_the_source_gets_every_write() {
    let (src, tgt, source, target) = clusters().await;
    let ks = keyspace("tp_async");
    source
        .query_unpaged(
            format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', 'source-dc': 3}}"),
            &[],
        )
        .await
        .expect("source keyspace with three replicas");
    create_keyspace(&target, &ks).await;
    ddl_both(
        &source,
        &target,
        &[format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")],
    )
    .await;

    let spool_dir = std::env::temp_dir().join(format!("ferry-tp-async-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool_dir);
    let flags = [
        "--mode",
        "target-primary-async",
        "--target-timeout-ms",
        "2000",
        "--async-retries",
        "2",
        "--retry-backoff-ms",
        "20",
    ];
    let proxy = start_proxy_with_spool(PROXY_IP, &src, &tgt, &flags, spool_dir.clone()).await;
    let client = connect(&proxy.addr.to_string()).await;
    let insert = prepared_insert(&client, &ks).await;

    // ---- the target serves: reads come from it, writes are answered by it
    write_keys(&client, &insert, 0..200).await;
    target
        .query_unpaged(
            format!("INSERT INTO {ks}.t (k, v) VALUES (-1, 'on the target only')"),
            &[],
        )
        .await
        .expect("a row written around the proxy");
    let read: Option<(String,)> = client
        .query_unpaged(format!("SELECT v FROM {ks}.t WHERE k = -1"), &[])
        .await
        .expect("read through the proxy")
        .into_rows_result()
        .expect("rows")
        .maybe_first_row::<(String,)>()
        .expect("typed");
    assert_eq!(
        read,
        Some(("on the target only".to_owned(),)),
        "the target serves reads"
    );
    // A conditional write reaches the source before the client hears.
    let lwt = client
        .query_unpaged(
            format!("INSERT INTO {ks}.t (k, v) VALUES (-2, 'conditional') IF NOT EXISTS"),
            &[],
        )
        .await
        .expect("conditional write");
    drop(lwt);
    let on_source = write_times(&source, &ks).await;
    assert!(
        on_source.contains_key(&-2),
        "the conditional write is on the source once acknowledged"
    );

    // ---- the source cannot take writes, and the proxy restarts meanwhile
    let mut outage = NodeOutage::lock(SOURCE3);
    outage.stop();
    write_keys(&client, &insert, 200..500).await;
    let owed = eventually(Duration::from_secs(20), || async {
        proxy.metric("ferry_proxy_source_spool_records").await > 0.0
    })
    .await;
    assert!(owed, "the copies the source refused are spooled toward it");
    let (_, state) = proxy.admin_get("/state").await;
    assert!(
        state.contains("\"sourceSpoolRecords\":") && !state.contains("\"sourceSpoolRecords\":0"),
        "/state says what the source is owed: {state}"
    );
    let (ready, detail) = proxy.admin_get("/readyz").await;
    assert!(
        ready.contains("200"),
        "a source spool with room keeps the proxy ready: {ready} {detail}"
    );
    drop(client);
    proxy.stop().await.expect("graceful stop");
    let proxy = start_proxy_with_spool(PROXY_IP, &src, &tgt, &flags, spool_dir.clone()).await;
    let client = connect(&proxy.addr.to_string()).await;
    let insert = prepared_insert(&client, &ks).await;
    write_keys(&client, &insert, 500..600).await;
    outage.start();
    write_keys(&client, &insert, 600..700).await;

    // ---- the source catches up: every acknowledged write, the same times
    let on_target = write_times(&target, &ks).await;
    assert_eq!(on_target.len(), 702, "every write is on the target");
    let caught_up = eventually(Duration::from_secs(120), || async {
        proxy.metric("ferry_proxy_source_spool_records").await == 0.0
            && write_times(&source, &ks).await.len() == 701
    })
    .await;
    let on_source = write_times(&source, &ks).await;
    let missing: Vec<i32> = on_target
        .keys()
        .filter(|k| **k != -1 && !on_source.contains_key(k))
        .copied()
        .collect();
    assert!(
        caught_up && missing.is_empty(),
        "{} acknowledged writes missing on the source (first {:?}); {} still spooled",
        missing.len(),
        &missing[..missing.len().min(10)],
        proxy.metric("ferry_proxy_source_spool_records").await
    );
    // The conditional write (-2) is left out: Paxos gives it the time it
    // is applied on each cluster, whatever the request carries.
    let differing: Vec<(i32, i64, i64)> = on_source
        .iter()
        .filter(|(k, _)| **k != -2)
        .filter_map(|(k, t)| {
            let on_t = on_target.get(k)?;
            (on_t != t).then_some((*k, *t, *on_t))
        })
        .collect();
    assert!(
        differing.is_empty(),
        "the same WRITETIME on both clusters; {} differ, e.g. {:?}",
        differing.len(),
        &differing[..differing.len().min(5)]
    );
    assert!(
        proxy
            .metric("ferry_proxy_mirrored_writes_total{outcome=\"replayed\"}")
            .await
            > 0.0,
        "the restarted proxy replayed the spool it found"
    );
    drop(client);
    proxy.stop().await.expect("proxy stops");
    let _ = std::fs::remove_dir_all(&spool_dir);
    source
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await
        .expect("drop on the source");
    target
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await
        .expect("drop on the target");
}

/// A `BEGIN BATCH` text mixing a copied table and one the migration leaves
/// out: the target gets its selected part, and the source's copy is the
/// whole batch (the first build copied only the target's part, so the
/// statements for tables left out never reached the source).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_text_reaches_the_source_whole_and_the_target_in_part() {
    // The other test stops a source node: wait for it to finish.
    let _serial = NodeOutage::lock(SOURCE3);
    let (src, tgt, source, target) = clusters().await;
    let ks = keyspace("tp_batch");
    let left_out = keyspace("tp_batch_src");
    create_keyspace(&source, &ks).await;
    create_keyspace(&target, &ks).await;
    create_keyspace(&source, &left_out).await;
    ddl_both(
        &source,
        &target,
        &[format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")],
    )
    .await;
    source
        .query_unpaged(
            format!("CREATE TABLE {left_out}.u (k int PRIMARY KEY, v text)"),
            &[],
        )
        .await
        .expect("a table on the source only");
    source
        .await_schema_agreement()
        .await
        .expect("schema agreement");
    let proxy = start_proxy(
        "127.0.0.100",
        &src,
        &tgt,
        &["--mode", "target-primary-async", "--include-keyspaces", &ks],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    client
        .query_unpaged(
            format!(
                "BEGIN UNLOGGED BATCH \
                 INSERT INTO {left_out}.u (k, v) VALUES (2, 'source only') \
                 INSERT INTO {ks}.t (k, v) VALUES (2, 'both'); \
                 APPLY BATCH"
            ),
            &[],
        )
        .await
        .expect("a batch mixing a copied and a left-out table");
    let on_target = count(&target, &format!("SELECT count(*) FROM {ks}.t")).await;
    assert_eq!(on_target, 1, "the target answered: its part is there");
    let whole = eventually(Duration::from_secs(20), || async {
        count(&source, &format!("SELECT count(*) FROM {ks}.t")).await == 1
            && count(&source, &format!("SELECT count(*) FROM {left_out}.u")).await == 1
    })
    .await;
    assert!(whole, "the source gets the whole batch");
    assert_eq!(
        write_times(&source, &ks).await,
        write_times(&target, &ks).await,
        "the same WRITETIME on both"
    );
    proxy.stop().await.expect("proxy stops");
}
