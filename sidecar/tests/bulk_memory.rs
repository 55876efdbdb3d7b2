//! A Job's pages are bounded in bytes, not only in rows: what a Job holds
//! is some pages per range in flight, so a page of `--page-size` rows of a
//! wide table (2,000 rows of 64 KiB is 128 MiB) would set the pod's memory
//! by the table's row width. The reads size each page from the bytes per
//! row seen so far, so that a page holds about `--page-bytes`. (The other
//! side of it, ranges of wide rows among narrow ones, is unit-tested in
//! `page_sizing.rs`.)

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
    const PAGE_BYTES: u64 = 256 * 1024;
    let total_bytes = ROWS as u64 * VALUE_BYTES as u64;
    // Pages of 256 KiB hold 3 of these rows (each a little over 64 KiB as
    // sent). At least half as many pages as 256 KiB pages would take, and
    // fewer than one page for every two rows (a range may end part way
    // through a page, and a table's first pages are of 4 rows).
    let at_least = total_bytes / (2 * PAGE_BYTES);
    let at_most = ROWS as u64 / 2;

    // One range per vnode (49 on a bed of 3 source nodes): pages of
    // --page-size rows would each hold a whole range, some 16 rows or 1 MiB.
    let report = run_backfill(
        &bed,
        &[
            "--keyspaces",
            &ks,
            "--job-id",
            &ks,
            "--splits",
            "1",
            "--page-bytes",
            &PAGE_BYTES.to_string(),
        ],
    )
    .await;
    assert_eq!(report.rows, ROWS as u64, "{report:?}");
    assert!(
        (at_least..=at_most).contains(&report.pages),
        "the backfill read {ROWS} rows of {VALUE_BYTES} bytes in {} pages, {at_least} to {at_most} expected (pages of about {PAGE_BYTES} bytes): {report:?}",
        report.pages
    );
    let copied: Option<i64> = scalar(&bed.target, &format!("SELECT count(*) FROM {ks}.w")).await;
    assert_eq!(copied, Some(i64::from(ROWS)));

    // The validation reads both clusters the same way (it counts the
    // source's pages).
    let args = validate_args(
        &bed,
        &[
            "--keyspaces",
            &ks,
            "--splits",
            "1",
            "--page-bytes",
            &PAGE_BYTES.to_string(),
        ],
    );
    let stats = Stats::new("validate");
    let validation = ferry_sidecar::bulk::validate::run(&args, Arc::clone(&stats))
        .await
        .expect("validate");
    assert_eq!(validation.compared, ROWS as u64, "{validation:?}");
    assert_eq!(validation.differences(), 0, "{validation:?}");
    let pages = Stats::get(&stats.pages);
    assert!(
        (at_least..=at_most).contains(&pages),
        "the validation read {ROWS} rows of {VALUE_BYTES} bytes from the source in {pages} pages, {at_least} to {at_most} expected"
    );
    eprintln!(
        "{ROWS} rows of {VALUE_BYTES} bytes, pages of about {PAGE_BYTES} bytes: the backfill read {} pages in {} ranges, the validation {pages} on the source ({at_least} to {at_most} expected)",
        report.pages, report.ranges_total
    );
    for session in [&bed.source, &bed.target] {
        exec(session, &format!("DROP KEYSPACE {ks}")).await;
    }
}
