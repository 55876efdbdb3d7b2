//! A backfill racing a live write load (written to both clusters with the
//! same client timestamp, as the proxy does) ends with zero differences: no
//! newer live write is overwritten, no live delete resurrected.

mod bulk_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulk_support::*;
use futures::StreamExt;

const PARTITIONS: i32 = 400;
const PER_PARTITION: i32 = 10;

async fn preload(bed: &Bed, ks: &str) {
    let insert = bed
        .source
        .prepare(format!(
            "INSERT INTO {ks}.t (k, c, v, l) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
        ))
        .await
        .expect("prepare");
    let old = now_micros() - 3_600_000_000;
    futures::stream::iter(0..PARTITIONS * PER_PARTITION)
        .map(|i| {
            let (session, insert) = (bed.source.clone(), insert.clone());
            async move {
                session
                    .execute_unpaged(
                        &insert,
                        (
                            i / PER_PARTITION,
                            i % PER_PARTITION,
                            format!("old {i}"),
                            vec![i],
                            old,
                        ),
                    )
                    .await
                    .expect("insert")
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

/// Mirrors writes to both clusters with one client timestamp until stopped;
/// returns how many statements it mirrored.
async fn live_load(bed: &Bed, ks: &str, stop: Arc<AtomicBool>, list_appends: bool) -> u64 {
    let mut n = 0u64;
    let mut seed = 12345u64;
    while !stop.load(Ordering::Relaxed) {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = ((seed >> 33) % PARTITIONS as u64) as i32;
        let c = ((seed >> 20) % (PER_PARTITION as u64 + 2)) as i32;
        let ts = now_micros();
        let cql = match seed % 5 {
            0 => format!("DELETE FROM {ks}.t USING TIMESTAMP {ts} WHERE k = {k} AND c = {c}"),
            1 => format!("DELETE FROM {ks}.t USING TIMESTAMP {ts} WHERE k = {k}"),
            2 if list_appends => format!(
                "UPDATE {ks}.t USING TIMESTAMP {ts} SET l = l + [{n}] WHERE k = {k} AND c = {c}"
            ),
            2 => format!(
                "UPDATE {ks}.t USING TIMESTAMP {ts} SET st = st + {{{n}}} WHERE k = {k} AND c = {c}"
            ),
            _ => format!(
                "UPDATE {ks}.t USING TIMESTAMP {ts} SET v = 'live {n}' WHERE k = {k} AND c = {c}"
            ),
        };
        exec(&bed.source, &cql).await;
        exec(&bed.target, &cql).await;
        n += 1;
    }
    n
}

async fn race(mode: &str, list_appends: bool) -> (Bed, String) {
    let bed = bed().await;
    let ks = unique(&format!("race_{mode}"));
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int, c int, v text, l list<int>, st set<int>, PRIMARY KEY (k, c))"],
    )
    .await;
    preload(&bed, &ks).await;
    // The proxy started before the backfill: its start is the backdate time.
    let start = now_micros().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (bed, ks, stop) = (bed_clone(&bed), ks.clone(), stop.clone());
        tokio::spawn(async move { live_load(&bed, &ks, stop, list_appends).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = run_backfill(
        &bed,
        &[
            "--keyspaces",
            &ks,
            "--job-id",
            &ks,
            "--timestamp-mode",
            mode,
            "--start-timestamp",
            &start,
            "--rows-per-second",
            "1500",
            "--concurrency",
            "4",
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mirrored = load.await.expect("load");
    assert!(
        mirrored > 50,
        "the live load must overlap the backfill: {mirrored} writes"
    );
    assert!(report.rows > 0);
    if list_appends {
        return (bed, ks);
    }

    let validation = run_validate(&bed, &["--keyspaces", &ks, "--timestamp-mode", mode]).await;
    assert_eq!(validation.differences(), 0, "{validation:?}");
    assert_eq!(validation.in_flight, 0, "{validation:?}");
    assert!(validation.compared > 0);
    (bed, ks)
}

fn bed_clone(bed: &Bed) -> Bed {
    Bed {
        testbed: bed.testbed.clone(),
        source: bed.source.clone(),
        target: bed.target.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_backfill_racing_live_writes_ends_equal() {
    race("preserve", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backdate_backfill_racing_live_writes_ends_equal() {
    race("backdate", false).await;
}

async fn lists(
    session: &scylla::client::session::Session,
    ks: &str,
) -> std::collections::BTreeMap<(i32, i32), Vec<i32>> {
    let result = session
        .query_unpaged(format!("SELECT k, c, l FROM {ks}.t"), ())
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    result
        .rows::<(i32, i32, Option<Vec<i32>>)>()
        .expect("typed")
        .map(|row| {
            let (k, c, l) = row.expect("row");
            ((k, c), l.unwrap_or_default())
        })
        .collect()
}

/// List appends mirrored while the backfill copies the same rows: no
/// element is ever duplicated (elements written after the proxy start are
/// left to the proxy). The order can differ (Cassandra names list cells by
/// the coordinator's clock when the write lands), which the validation
/// reports and `--repair` fixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_appends_racing_the_backfill_are_never_duplicated() {
    let (bed, ks) = race("preserve", true).await;
    let source = lists(&bed.source, &ks).await;
    let target = lists(&bed.target, &ks).await;
    assert_eq!(source.len(), target.len());
    for (key, list) in &source {
        let mut expected = list.clone();
        let mut actual = target.get(key).cloned().unwrap_or_default();
        expected.sort_unstable();
        actual.sort_unstable();
        assert_eq!(
            actual,
            expected,
            "list of {key:?}: source {list:?}, target {:?}",
            target.get(key)
        );
    }
    let repaired = run_validate(&bed, &["--keyspaces", &ks, "--repair"]).await;
    assert_eq!(repaired.missing + repaired.extra, 0, "{repaired:?}");
    assert_eq!(repaired.repaired, repaired.mismatched, "{repaired:?}");
    let after = run_validate(&bed, &["--keyspaces", &ks]).await;
    assert_eq!(after.differences(), 0, "{after:?}");
    assert_eq!(lists(&bed.source, &ks).await, lists(&bed.target, &ks).await);
}
