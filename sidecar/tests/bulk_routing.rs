//! Range reads go to a replica of the range: the driver's default policy
//! does not route `token(pk) > ? AND token(pk) <= ?` (no partition key is
//! bound), ours does. Needs a source of 3 nodes with RF 1, so that most
//! nodes are *not* replicas of a given range.

mod bulk_support;

use std::collections::HashSet;

use bulk_support::*;
use ferry_sidecar::bulk::ring::{ranges_of, replicas_of};
use ferry_sidecar::bulk::scan::{range_query, TableScan};
use ferry_sidecar::bulk::schema::read_table;
use scylla::response::PagingState;
use scylla::statement::Consistency;
use scylla::value::{CqlValue, Row};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_are_served_by_replicas() {
    let bed = bed_with(3).await;
    let ks = unique("routing");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int PRIMARY KEY, v int)"],
    )
    .await;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"),
        (0..300).map(|k| (k, k)),
    )
    .await;
    bed.source.refresh_metadata().await.expect("metadata");
    let state = bed.source.get_cluster_state();
    let nodes: HashSet<_> = state.get_nodes_info().iter().map(|n| n.host_id).collect();
    assert!(
        nodes.len() >= 3,
        "needs 3 source nodes, has {}",
        nodes.len()
    );

    let schema = read_table(&bed.source, "source", &ks, "t")
        .await
        .expect("schema");
    let ranges = ranges_of(&bed.source, 64);

    // The driver's default routing: a plain prepared range query.
    let plain = bed
        .source
        .prepare(range_query(&schema))
        .await
        .expect("prepare");
    let mut off_replica = 0;
    for range in &ranges {
        let replicas: Vec<_> = replicas_of(&state, &ks, "t", *range, None)
            .iter()
            .map(|n| n.host_id)
            .collect();
        assert_eq!(replicas.len(), 1, "RF 1");
        let (result, _) = bed
            .source
            .execute_single_page(&plain, (range.start, range.end), PagingState::start())
            .await
            .expect("read");
        if !replicas.contains(&result.request_coordinator().node().host_id) {
            off_replica += 1;
        }
    }
    assert!(
        off_replica > 0,
        "the default policy should send some range reads to non-replicas"
    );

    // Ours: every page of every range is served by a replica.
    let scan = TableScan::prepare(
        "source",
        bed.source.clone(),
        &schema,
        Consistency::One,
        50,
        0,
        None,
    )
    .await
    .expect("scan");
    let (mut pages, mut rows) = (0, 0);
    for range in &ranges {
        let mut rx = scan.spawn(*range);
        while let Some(page) = rx.recv().await {
            let page = page.expect("page");
            assert!(page.on_replica, "range {range} read from a non-replica");
            pages += 1;
            rows += page.rows.len();
        }
    }
    assert_eq!(rows, 300);
    assert!(pages >= ranges.len());
    eprintln!("default policy: {off_replica}/{} range reads off-replica; replica routing: 0/{pages} pages", ranges.len());
}

/// The Jobs compute each row's token from its partition key
/// (`ring::token_of`) instead of asking the source for `token(pk)`: the
/// figure must be the source's own, for keys of one column and of several,
/// of fixed and variable width, or the backfill would cut its batches at the
/// wrong vnodes and the validation would pair rows of different partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_the_jobs_compute_are_the_sources() {
    let bed = bed().await;
    let ks = unique("tokens");
    create_on_both(
        &bed,
        &ks,
        &[
            "CREATE TABLE {ks}.by_bigint (k bigint PRIMARY KEY, v int)",
            "CREATE TABLE {ks}.by_text (k text PRIMARY KEY, v int)",
            "CREATE TABLE {ks}.by_pair (a int, b text, v int, PRIMARY KEY ((a, b)))",
            "CREATE TABLE {ks}.by_three (a int, b blob, c bigint, v int, PRIMARY KEY ((a, b, c)))",
        ],
    )
    .await;
    // A key past the 16-byte block the hash works in, an empty text, and
    // one-byte values: the lengths where a hash's tail handling goes wrong.
    let texts = [
        "",
        "a",
        "0123456789abcdef",
        "a key longer than one block of the hash",
    ];
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.by_bigint (k, v) VALUES (?, 0)"),
        [i64::MIN, -1, 0, 1, 42, i64::MAX].map(|k| (k,)),
    )
    .await;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.by_text (k, v) VALUES (?, 0)"),
        texts[1..].iter().map(|k| (k.to_string(),)),
    )
    .await;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.by_pair (a, b, v) VALUES (?, ?, 0)"),
        texts
            .iter()
            .enumerate()
            .map(|(i, b)| (i as i32 - 1, b.to_string())),
    )
    .await;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.by_three (a, b, c, v) VALUES (?, ?, ?, 0)"),
        (0..20u8).map(|i| (i32::from(i), vec![i; usize::from(i)], i64::from(i) << 40)),
    )
    .await;
    let checks = [
        ("by_bigint", "token(k), bigintAsBlob(k)", 6),
        ("by_text", "token(k), textAsBlob(k)", 3),
        ("by_pair", "token(a, b), intAsBlob(a), textAsBlob(b)", 4),
        (
            "by_three",
            "token(a, b, c), intAsBlob(a), b, bigintAsBlob(c)",
            20,
        ),
    ];
    for (table, select, rows) in checks {
        let result = bed
            .source
            .query_unpaged(format!("SELECT {select} FROM {ks}.{table}"), ())
            .await
            .expect("select")
            .into_rows_result()
            .expect("rows");
        let mut seen = 0;
        for row in result.rows::<Row>().expect("rows") {
            let mut columns = row.expect("a row").columns.into_iter().flatten();
            let Some(CqlValue::BigInt(token)) = columns.next() else {
                panic!("{table}: no token");
            };
            let key: Vec<Vec<u8>> = columns
                .map(|c| match c {
                    CqlValue::Blob(b) => b,
                    other => panic!("{table}: {other:?} is not a blob"),
                })
                .collect();
            assert_eq!(
                ferry_sidecar::bulk::ring::token_of(key.iter().map(Vec::as_slice)),
                token,
                "{table}: key {key:?}"
            );
            seen += 1;
        }
        assert_eq!(seen, rows, "{table}");
    }
}
