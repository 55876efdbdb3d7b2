//! The backfill's writes go in batches of several partitions, and no batch
//! makes the target warn: a table of small partitions, like most, copied in
//! a tenth of the requests one batch per partition takes, with none of the
//! warnings Cassandra logs for a batch over 5 KiB or across more than 10
//! partitions (each a line in the target's log).

mod bulk_support;

use bulk_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_partitions_share_batches_and_the_target_never_warns() {
    let bed = bed().await;
    let ks = unique("batching");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k bigint, c int, v1 text, v2 bigint, v3 double, PRIMARY KEY (k, c))"],
    )
    .await;
    // 400 partitions of 5 rows of ~100 bytes, as the benchmark's table.
    const ROWS: i64 = 2000;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.t (k, c, v1, v2, v3) VALUES (?, ?, ?, ?, ?)"),
        (0..ROWS).map(|i| (i / 5, (i % 5) as i32, format!("{i:0>64}"), i, i as f64)),
    )
    .await;
    let report = run_backfill(
        &bed,
        &["--keyspaces", &ks, "--job-id", &ks, "--splits", "8"],
    )
    .await;
    assert_eq!(report.rows, ROWS as u64, "{report:?}");
    assert_eq!(
        report.target_warnings, 0,
        "the target warned about the backfill's batches: {report:?}"
    );
    // One batch per partition would take 400 requests.
    assert!(
        report.write_requests < 400 / 2,
        "partitions did not share batches: {report:?}"
    );
    let copied: Option<i64> = scalar(&bed.target, &format!("SELECT count(*) FROM {ks}.t")).await;
    assert_eq!(copied, Some(ROWS));
}
