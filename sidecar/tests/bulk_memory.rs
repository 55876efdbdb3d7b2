//! A Job's pages are bounded in bytes, not only in rows: what a Job holds
//! is some pages per range in flight, so a page of `--page-size` rows of a
//! wide table (2,000 rows of 64 KiB is 128 MiB) would set the pod's memory
//! by the table's row width. The reads size each page from the bytes per
//! row seen so far, so that a page holds about `--page-bytes`.

mod bulk_support;

use std::sync::Arc;

use bulk_support::*;
use ferry_sidecar::bulk::progress::Stats;

/// 64 KiB a row: a page of the default 2,000 rows would be 128 MiB.
const VALUE_BYTES: usize = 64 * 1024;
const ROWS: i32 = 800;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_wide_rows_hold_about_page_bytes_not_page_size_rows() {
    let bed = bed().await;
    let ks = unique("memory");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.w (k int PRIMARY KEY, v blob)"],
    )
    .await;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.w (k, v) VALUES (?, ?)"),
        (0..ROWS).map(|k| (k, vec![(k % 251) as u8; VALUE_BYTES])),
    )
    .await;
    let total_bytes = ROWS as u64 * VALUE_BYTES as u64;
    // Pages of 256 KiB hold 4 of these rows; allow for the first, small,
    // pages and for ranges that end part way through a page: at least half
    // as many pages as 256 KiB pages would take.
    let at_least = total_bytes / (2 * 256 * 1024);

    // One range per vnode (48 on the bed): pages of --page-size rows would
    // each hold a whole range, some 17 rows or 1.1 MiB.
    let report = run_backfill(
        &bed,
        &["--keyspaces", &ks, "--job-id", &ks, "--splits", "1"],
    )
    .await;
    assert_eq!(report.rows, ROWS as u64, "{report:?}");
    assert!(
        report.pages >= at_least,
        "the backfill read {ROWS} rows of {VALUE_BYTES} bytes in {} pages, at least {at_least} expected (pages of about 256 KiB): {report:?}",
        report.pages
    );
    let copied: Option<i64> = scalar(&bed.target, &format!("SELECT count(*) FROM {ks}.w")).await;
    assert_eq!(copied, Some(i64::from(ROWS)));

    // The validation reads both clusters the same way.
    let args = validate_args(&bed, &["--keyspaces", &ks, "--splits", "1"]);
    let stats = Stats::new("validate");
    let validation = ferry_sidecar::bulk::validate::run(&args, Arc::clone(&stats))
        .await
        .expect("validate");
    assert_eq!(validation.compared, ROWS as u64, "{validation:?}");
    assert_eq!(validation.differences(), 0, "{validation:?}");
    let pages = Stats::get(&stats.pages);
    assert!(
        pages >= 2 * at_least,
        "the validation read {ROWS} rows of {VALUE_BYTES} bytes on each cluster in {pages} pages, at least {} expected",
        2 * at_least
    );
}
