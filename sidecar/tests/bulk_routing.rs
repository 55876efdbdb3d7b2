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

/// The same, through the Job's own reading: every row a range read returns
/// has a token in that range (the source chose the row by it), so the
/// token the Job computes from the row's key cells (`ScanLayout::token`)
/// must fall in the range too, and rise row by row as the source sends
/// them. Keys of every type a partition key may have, frozen collections,
/// tuples and UDTs among them, alone and together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_of_keys_of_every_type_fall_in_the_range_that_returned_them() {
    let bed = bed().await;
    let ks = unique("keytypes");
    create_on_both(
        &bed,
        &ks,
        &[
            "CREATE TYPE {ks}.point (x int, label text)",
            "CREATE TABLE {ks}.scalars (uu uuid, tu timeuuid, ip inet, vi varint, de decimal, da date, ts timestamp, bo boolean, sm smallint, ti tinyint, db double, fl float, asc_ ascii, ti2 time, v int, PRIMARY KEY ((uu, tu, ip, vi, de, da, ts, bo, sm, ti, db, fl, asc_, ti2)))",
            "CREATE TABLE {ks}.frozen (tup frozen<tuple<int, text>>, m frozen<map<text, int>>, s frozen<set<int>>, l frozen<list<text>>, p frozen<point>, v int, PRIMARY KEY ((tup, m, s, l, p)))",
            "CREATE TABLE {ks}.by_udt (p frozen<point> PRIMARY KEY, v int)",
            "CREATE TABLE {ks}.by_list (l frozen<list<text>> PRIMARY KEY, v int)",
            "CREATE TABLE {ks}.by_varint (vi varint PRIMARY KEY, v int)",
        ],
    )
    .await;
    let rows_per_table = 60;
    for i in 0..rows_per_table {
        let uuid = format!("{:08x}-0000-4000-8000-{:012x}", i * 7919, i);
        let timeuuid = format!("{:08x}-1234-11ee-8000-{:012x}", i * 104_729, i);
        let big = format!("{}{}", i, "0".repeat(i % 30));
        let inserts = [
            format!(
                "INSERT INTO {ks}.scalars (uu, tu, ip, vi, de, da, ts, bo, sm, ti, db, fl, asc_, ti2, v) VALUES \
                 ({uuid}, {timeuuid}, '10.0.{i}.{j}', {big}, {i}.{j}5, '2024-01-{day:02}', {ms}, {bo}, {i}, {ti}, {i}.25, {j}.5, 'a{i}', '12:00:{sec:02}', 0)",
                j = (i * 37) % 251,
                day = 1 + i % 28,
                ms = 1_700_000_000_000u64 + i as u64 * 1_000_003,
                bo = i % 2 == 0,
                ti = (i % 200) as i32 - 100,
                sec = i % 60,
            ),
            format!(
                "INSERT INTO {ks}.frozen (tup, m, s, l, p, v) VALUES (({i}, 't{i}'), {{'k{i}': {i}, 'z': 1}}, {{{i}, {j}}}, ['{i}', '', 'long text {i} {pad}'], {{x: {i}, label: 'p{i}'}}, 0)",
                j = i * 3 + 1,
                pad = "x".repeat(i),
            ),
            format!("INSERT INTO {ks}.by_udt (p, v) VALUES ({{x: {i}, label: 'u{i}'}}, 0)"),
            format!("INSERT INTO {ks}.by_list (l, v) VALUES (['{i}', 'b{i}'], 0)"),
            format!("INSERT INTO {ks}.by_varint (vi, v) VALUES ({}, 0)", (i as i128 - 30) * 1_000_000_000_000_000_007),
        ];
        for insert in inserts {
            exec(&bed.source, &insert).await;
        }
    }
    bed.source.refresh_metadata().await.expect("metadata");
    let ranges = ranges_of(&bed.source, 256);
    for table in ["scalars", "frozen", "by_udt", "by_list", "by_varint"] {
        let schema = read_table(&bed.source, "source", &ks, table)
            .await
            .expect("schema");
        let layout = ferry_sidecar::bulk::scan::ScanLayout::new(&schema);
        let scan = TableScan::prepare(
            "source",
            bed.source.clone(),
            &schema,
            Consistency::One,
            7,
            0,
            None,
        )
        .await
        .expect("scan");
        let mut rows = 0;
        for range in &ranges {
            let mut rx = scan.spawn(*range);
            let mut last = range.start;
            while let Some(page) = rx.recv().await {
                for row in &page.expect("page").rows {
                    let token = layout.token(row);
                    assert!(
                        range.start < token && token <= range.end,
                        "{table}: a row of range {range} has the computed token {token}"
                    );
                    assert!(token >= last, "{table}: tokens out of order in {range}");
                    last = token;
                    rows += 1;
                }
            }
        }
        assert_eq!(rows, rows_per_table, "{table}");
    }
}
