//! The target stopped and restarted under a write load. In `async` mode no
//! acknowledged write is missing on the target afterwards, even across a
//! proxy restart in the middle; in `sync` mode every write the target did
//! not take was reported to the client. These tests stop the shared target
//! node, so they hold a file lock and always restart it.

mod proxy_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proxy_support::outage::{NodeOutage, TARGET1};
use proxy_support::*;
use scylla::client::session::Session;

async fn keys_on(session: &Session, ks: &str) -> BTreeSet<i32> {
    let rows = session
        .query_unpaged(format!("SELECT k FROM {ks}.t"), &[])
        .await
        .expect("full read")
        .into_rows_result()
        .expect("rows");
    rows.rows::<(i32,)>()
        .expect("typed")
        .map(|r| r.expect("row").0)
        .collect()
}

/// Writes keys `range` through `client`; returns the keys acknowledged.
async fn write_load(
    client: &Session,
    ks: &str,
    range: std::ops::Range<i32>,
    failures: &mut Vec<i32>,
) -> BTreeSet<i32> {
    let insert = client
        .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    let mut acked = BTreeSet::new();
    for k in range {
        match client
            .execute_unpaged(&insert, (k, format!("value {k}")))
            .await
        {
            Ok(_) => {
                acked.insert(k);
            }
            Err(_) => failures.push(k),
        }
    }
    acked
}

async fn setup(ks: &str) -> (String, String, Session, Session) {
    let tb = testbed(1);
    let (src, tgt) = (
        tb.source_contact_points[0].clone(),
        tb.target_contact_points[0].clone(),
    );
    let source = connect(&src).await;
    let target = connect(&tgt).await;
    create_keyspace(&source, ks).await;
    create_keyspace(&target, ks).await;
    ddl_both(
        &source,
        &target,
        &[format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")],
    )
    .await;
    (src, tgt, source, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_outage_in_async_and_sync_modes() {
    let mut outage = NodeOutage::lock(TARGET1);

    // ---- async: nothing acknowledged is lost, across a proxy restart ----
    let ks = keyspace("px_async");
    let (src, tgt, source, _) = setup(&ks).await;
    let spool_dir =
        std::env::temp_dir().join(format!("ferry-failover-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool_dir);
    let flags = [
        "--mode",
        "async",
        "--target-timeout-ms",
        "1000",
        "--async-retries",
        "2",
        "--retry-backoff-ms",
        "20",
    ];
    let proxy = start_proxy_with_spool("127.0.0.46", &src, &tgt, &flags, spool_dir.clone()).await;
    let client = connect(&proxy.addr.to_string()).await;
    let mut failures = Vec::new();
    let mut acked = write_load(&client, &ks, 0..200, &mut failures).await;
    outage.stop();
    acked.extend(write_load(&client, &ks, 200..500, &mut failures).await);
    assert!(
        failures.is_empty(),
        "async mode must not fail client writes: {failures:?}"
    );
    // Let in-flight mirrors reach the spool, then restart the proxy on the
    // same spool while the target is still down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Async mode with room in the spool stays ready while the target is down.
    let (status, detail) = proxy.admin_get("/readyz").await;
    assert!(
        status.contains("200"),
        "async + spool room must be ready: {status} {detail}"
    );
    let spooled = proxy
        .metric("ferry_proxy_mirrored_writes_total{outcome=\"spooled\"}")
        .await;
    assert!(spooled > 0.0, "writes during the outage must be spooled");
    drop(client);
    proxy.stop().await.expect("graceful stop");
    let proxy = start_proxy_with_spool("127.0.0.46", &src, &tgt, &flags, spool_dir.clone()).await;
    let client = connect(&proxy.addr.to_string()).await;
    acked.extend(write_load(&client, &ks, 500..600, &mut failures).await);
    outage.start();
    acked.extend(write_load(&client, &ks, 600..700, &mut failures).await);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(acked.len(), 700);
    let target = connect(&tgt).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut missing;
    loop {
        let on_target = keys_on(&target, &ks).await;
        missing = acked.difference(&on_target).count();
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        missing, 0,
        "acknowledged writes missing on the target after the outage"
    );
    assert_eq!(keys_on(&source, &ks).await, acked);
    assert!(
        proxy
            .metric("ferry_proxy_mirrored_writes_total{outcome=\"replayed\"}")
            .await
            > 0.0
    );
    assert_eq!(proxy.metric("ferry_proxy_spool_records").await, 0.0);
    drop(client);
    proxy.stop().await.expect("stop");

    // ---- sync: every write the target missed was an error for the client ----
    let ks = keyspace("px_sync");
    let (src, tgt, _source, _) = setup(&ks).await;
    let proxy = start_proxy(
        "127.0.0.47",
        &src,
        &tgt,
        &["--mode", "sync", "--target-timeout-ms", "1000"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    let mut failures = Vec::new();
    let mut acked = write_load(&client, &ks, 0..100, &mut failures).await;
    assert!(failures.is_empty(), "{failures:?}");
    outage.stop();
    acked.extend(write_load(&client, &ks, 100..150, &mut failures).await);
    assert!(
        !failures.is_empty(),
        "writes during a target outage must fail in sync mode"
    );
    // Still ready: the target's outage is reported, not made the source
    // pod's (probed every 2 s; the body says the target is unreachable).
    let mut reported = false;
    for _ in 0..20 {
        let (status, detail) = proxy.admin_get("/readyz").await;
        assert!(
            status.contains("200"),
            "a target outage must not make the proxy unready: {status} {detail}"
        );
        if detail.contains("target_reachable=false") {
            reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(reported, "/readyz must report the unreachable target");
    outage.start();
    // The proxy reconnects by itself; the client sees success again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = Vec::new();
    loop {
        after.clear();
        let ok = write_load(&client, &ks, 150..160, &mut after).await;
        if after.is_empty() || Instant::now() > deadline {
            acked.extend(ok);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        after.is_empty(),
        "writes still failing after the target came back: {after:?}"
    );
    let target = connect(&tgt).await;
    let on_target = keys_on(&target, &ks).await;
    let missing: Vec<_> = acked.difference(&on_target).collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes missing on the target: {missing:?}"
    );
    assert!(proxy.metric("ferry_proxy_target_failures_total").await >= failures.len() as f64);
    drop(client);
    proxy.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(&spool_dir);
}
