//! The backfill's writes go in batches of several partitions, and no batch
//! makes the target warn: a table of small partitions, like most, copied in
//! a tenth of the requests one batch per partition takes, with none of the
//! warnings Cassandra logs for a batch over 5 KiB or across more than 10
//! partitions (each a line in the target's log).

mod bulk_support;

use std::collections::BTreeSet;
use std::time::Duration;

use bulk_support::*;
use ferry_sidecar::bulk::ring::ring_tokens;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_partitions_share_batches_and_the_target_never_warns() {
    let bed = bed().await;
    let ks = unique("batching");
    create_on_both(
        &bed,
        &ks,
        &[
            "CREATE TABLE {ks}.t (k bigint, c int, v1 text, v2 bigint, v3 double, PRIMARY KEY (k, c))",
            // A cell per element: Cassandra counts 36 bytes for each int.
            "CREATE TABLE {ks}.l (k int, c int, l list<int>, PRIMARY KEY (k, c))",
        ],
    )
    .await;
    // 400 partitions of 5 rows of ~100 bytes, as the benchmark's table.
    const ROWS: i64 = 2000;
    const PARTITIONS: u64 = 400;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.t (k, c, v1, v2, v3) VALUES (?, ?, ?, ?, ?)"),
        (0..ROWS).map(|i| (i / 5, (i % 5) as i32, format!("{i:0>64}"), i, i as f64)),
    )
    .await;
    // 100 partitions of 2 rows of 40 elements: some 1.5 KB each as
    // Cassandra counts them, against 0.2 KB of values.
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.l (k, c, l) VALUES (?, ?, ?)"),
        (0..200).map(|i: i32| (i / 2, i % 2, (0..40).collect::<Vec<i32>>())),
    )
    .await;
    let report = run_backfill(
        &bed,
        &["--keyspaces", &ks, "--job-id", &ks, "--splits", "8"],
    )
    .await;
    assert_eq!(report.rows, ROWS as u64 + 200, "{report:?}");
    assert_eq!(
        report.target_warnings, 0,
        "the target warned about the backfill's batches: {report:?}"
    );
    // A batch ends where a source range or a target vnode range does, or
    // when it is full: 5 partitions of `t` fill one. One batch per
    // partition would take 500 requests.
    bed.target.refresh_metadata().await.expect("metadata");
    let target_vnodes = ring_tokens(&bed.target.get_cluster_state()).len() as u64;
    let bound = 2 * (report.ranges_total + target_vnodes) + PARTITIONS / 4 + 100;
    assert!(
        report.write_requests <= bound,
        "partitions did not share batches: {} requests, at most {bound} expected: {report:?}",
        report.write_requests
    );
    let copied: Option<i64> = scalar(&bed.target, &format!("SELECT count(*) FROM {ks}.t")).await;
    assert_eq!(copied, Some(ROWS));
    let lists: Option<i64> = scalar(&bed.target, &format!("SELECT count(*) FROM {ks}.l")).await;
    assert_eq!(lists, Some(200));
}

/// A batch leaves when it is cut, not when its range ends: the rows of a
/// range read slowly reach the target while the range is being read. (The
/// writes were futures polled only once `--max-in-flight` of them were
/// pending: a range of fewer batches sent nothing until its end, and the
/// writes held its pages' memory all the while.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_leave_as_they_are_cut_not_when_the_range_ends() {
    let bed = bed().await;
    let ks = unique("pacing");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int, c int, v text, PRIMARY KEY (k, c))"],
    )
    .await;
    // One partition: one range holds every row.
    const ROWS: i64 = 1000;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.t (k, c, v) VALUES (?, ?, ?)"),
        (0..ROWS).map(|c| (1, c as i32, format!("{c:0>64}"))),
    )
    .await;
    // 200 rows a second in pages of 50: the range takes some 5 s to read,
    // in some 25 batches, far fewer than may be in flight.
    let args = [
        "--keyspaces",
        &ks,
        "--job-id",
        &ks,
        "--rows-per-second",
        "200",
        "--page-size",
        "50",
        "--concurrency",
        "1",
    ];
    let backfill = run_backfill(&bed, &args);
    tokio::pin!(backfill);
    let count = format!("SELECT count(*) FROM {ks}.t");
    let mut seen_while_running = BTreeSet::new();
    let report = loop {
        tokio::select! {
            report = &mut backfill => break report,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let copied: Option<i64> = scalar(&bed.target, &count).await;
                seen_while_running.insert(copied.unwrap_or(0));
            }
        }
    };
    assert_eq!(report.rows, ROWS as u64, "{report:?}");
    let partial: Vec<i64> = seen_while_running
        .iter()
        .copied()
        .filter(|n| *n > 0 && *n < ROWS)
        .collect();
    assert!(
        partial.len() >= 3,
        "the rows reached the target all at once, not as they were read: counts seen while the backfill ran {seen_while_running:?}"
    );
}
