//! Every CQL type copied and validated; per-cell WRITETIME and TTL kept;
//! primary-key-only rows, static-only partitions, empty tables; a list
//! copied twice is not duplicated.

mod bulk_support;

use bulk_support::*;

const DDL: &[&str] = &[
    "CREATE TYPE {ks}.addr (street text, zip int)",
    "CREATE TABLE {ks}.every_type (
        k int, c text,
        s_static text static,
        a_ascii ascii, a_bigint bigint, a_blob blob, a_boolean boolean, a_date date,
        a_decimal decimal, a_double double, a_duration duration, a_float float, a_inet inet,
        a_int int, a_smallint smallint, a_text text, a_time time, a_timestamp timestamp,
        a_timeuuid timeuuid, a_tinyint tinyint, a_uuid uuid, a_varint varint,
        a_vector vector<float, 3>,
        l_list list<int>, l_set set<text>, l_map map<text, int>,
        f_list frozen<list<int>>, f_set frozen<set<text>>, f_map frozen<map<int, text>>,
        u_addr addr, f_addr frozen<addr>, t_tuple tuple<int, text, frozen<list<int>>>,
        PRIMARY KEY ((k), c))",
    "CREATE TABLE {ks}.empty (k int PRIMARY KEY, v text)",
    "CREATE TABLE {ks}.composite (a text, b int, c1 int, c2 text, v blob, PRIMARY KEY ((a, b), c1, c2)) WITH CLUSTERING ORDER BY (c1 DESC, c2 ASC)",
];

async fn load(bed: &Bed, ks: &str) {
    let s = &bed.source;
    exec(s, &format!(
        "INSERT INTO {ks}.every_type (k, c, s_static, a_ascii, a_bigint, a_blob, a_boolean, a_date, a_decimal, a_double,
            a_duration, a_float, a_inet, a_int, a_smallint, a_text, a_time, a_timestamp, a_timeuuid, a_tinyint, a_uuid,
            a_varint, a_vector, l_list, l_set, l_map, f_list, f_set, f_map, u_addr, f_addr, t_tuple)
         VALUES (1, 'a', 'static one', 'ascii', 9223372036854775807, 0xcafe, true, '2024-02-29', 123.456e-7, 3.5,
            1h2m3s, 1.25, '::1', -7, 300, 'héllo', '08:12:54.123456789', '2024-01-01 10:00:00+0000',
            50554d6e-29bb-11e5-b345-feff819cdc9f, -3, 9b8ab5e5-1c4e-4b5d-9b6a-7a2a5c1a7e10,
            123456789012345678901234567890, [1.0, 2.5, -3.0], [3, 1, 2], {{'x', 'y'}}, {{'m': 1, 'n': 2}},
            [9, 8], {{'p'}}, {{1: 'one'}}, {{street: 'Main', zip: 12345}}, {{street: 'Side', zip: 1}},
            (1, 'tuple', [4, 5]))
         USING TIMESTAMP 1700000000000000"
    )).await;
    // Columns written at different times, one of them with a TTL.
    exec(s, &format!("UPDATE {ks}.every_type USING TIMESTAMP 1700000000000001 SET a_int = 1 WHERE k = 1 AND c = 'b'")).await;
    exec(s, &format!("UPDATE {ks}.every_type USING TIMESTAMP 1700000000000002 AND TTL 86400 SET a_text = 'expiring' WHERE k = 1 AND c = 'b'")).await;
    exec(s, &format!("UPDATE {ks}.every_type USING TIMESTAMP 1700000000000003 SET a_bigint = 5 WHERE k = 1 AND c = 'b'")).await;
    // Non-frozen collections grown element by element at different times,
    // with and without TTL; a non-frozen UDT field update.
    exec(s, &format!("UPDATE {ks}.every_type USING TIMESTAMP 1700000000000010 SET l_list = l_list + [1], l_set = l_set + {{'a'}}, l_map = l_map + {{'a': 1}} WHERE k = 2 AND c = 'x'")).await;
    exec(s, &format!("UPDATE {ks}.every_type USING TIMESTAMP 1700000000000020 SET l_list = l_list + [2, 3], l_set = l_set + {{'b'}}, u_addr = {{street: 'Elm', zip: 7}} WHERE k = 2 AND c = 'x'")).await;
    exec(s, &format!("UPDATE {ks}.every_type USING TIMESTAMP 1700000000000030 AND TTL 86400 SET l_map = l_map + {{'t': 9}} WHERE k = 2 AND c = 'x'")).await;
    exec(s, &format!("UPDATE {ks}.every_type USING TIMESTAMP 1700000000000040 SET u_addr.zip = 8 WHERE k = 2 AND c = 'x'")).await;
    // A primary-key-only row.
    exec(s, &format!("INSERT INTO {ks}.every_type (k, c) VALUES (3, 'pk-only') USING TIMESTAMP 1700000000000050")).await;
    // A partition holding only static columns.
    exec(s, &format!("INSERT INTO {ks}.every_type (k, s_static) VALUES (4, 'static only') USING TIMESTAMP 1700000000000060")).await;
    // Nulls and empty values.
    exec(s, &format!("INSERT INTO {ks}.every_type (k, c, a_text, a_blob) VALUES (5, '', '', 0x) USING TIMESTAMP 1700000000000070")).await;
    // Many rows in one partition (several pages) and many partitions.
    let insert = s
        .prepare(format!("INSERT INTO {ks}.every_type (k, c, a_int, l_list) VALUES (?, ?, ?, ?) USING TIMESTAMP 1700000000000100"))
        .await
        .expect("prepare");
    for i in 0..3000i32 {
        let k = if i < 2500 { 100 } else { 1000 + i };
        s.execute_unpaged(&insert, (k, format!("row{i:05}"), i, vec![i, i + 1]))
            .await
            .expect("insert");
    }
    let insert = s
        .prepare(format!(
            "INSERT INTO {ks}.composite (a, b, c1, c2, v) VALUES (?, ?, ?, ?, ?)"
        ))
        .await
        .expect("prepare");
    for i in 0..200i32 {
        s.execute_unpaged(
            &insert,
            (
                format!("p{}", i % 7),
                i % 3,
                i,
                format!("c{i}"),
                vec![i as u8; 10],
            ),
        )
        .await
        .expect("insert");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_is_copied_exactly_and_validates_clean() {
    let bed = bed().await;
    let ks = unique("types");
    create_on_both(&bed, &ks, DDL).await;
    load(&bed, &ks).await;

    let flags = [
        "--keyspaces",
        &ks,
        "--job-id",
        &ks,
        "--splits",
        "64",
        "--page-size",
        "500",
    ];
    let report = run_backfill(&bed, &flags).await;
    assert_eq!(report.rows, 3000 + 6 + 200, "{report:?}");
    assert!(report.pages > 0);
    assert_eq!(
        report.pages_off_replica, 0,
        "range reads must go to a replica: {report:?}"
    );

    let validation = run_validate(&bed, &["--keyspaces", &ks]).await;
    assert_eq!(validation.differences(), 0, "{validation:?}");
    assert_eq!(validation.compared, 3206, "{validation:?}");

    // Per-cell timestamps and TTLs survive.
    let t = &bed.target;
    let q = |col: &str, f: &str, key: &str| {
        format!("SELECT {f}({col}) FROM {ks}.every_type WHERE {key}")
    };
    let b = "k = 1 AND c = 'b'";
    assert_eq!(
        scalar::<i64>(t, &q("a_int", "WRITETIME", b)).await,
        Some(1700000000000001)
    );
    assert_eq!(
        scalar::<i64>(t, &q("a_text", "WRITETIME", b)).await,
        Some(1700000000000002)
    );
    assert_eq!(
        scalar::<i64>(t, &q("a_bigint", "WRITETIME", b)).await,
        Some(1700000000000003)
    );
    let ttl = scalar::<i32>(t, &q("a_text", "TTL", b))
        .await
        .expect("a TTL");
    assert!((86_000..=86_400).contains(&ttl), "{ttl}");
    assert_eq!(scalar::<i32>(t, &q("a_int", "TTL", b)).await, None);
    let x = "k = 2 AND c = 'x'";
    assert_eq!(
        scalar::<i64>(t, &q("l_list", "MAXWRITETIME", x)).await,
        Some(1700000000000020)
    );
    assert_eq!(
        scalar::<Vec<i32>>(t, &format!("SELECT l_list FROM {ks}.every_type WHERE {x}")).await,
        Some(vec![1, 2, 3])
    );
    // The primary-key-only row and the static-only partition exist.
    assert_eq!(
        scalar::<String>(t, &format!("SELECT c FROM {ks}.every_type WHERE k = 3"))
            .await
            .as_deref(),
        Some("pk-only")
    );
    assert_eq!(
        scalar::<String>(
            t,
            &format!("SELECT s_static FROM {ks}.every_type WHERE k = 4")
        )
        .await
        .as_deref(),
        Some("static only")
    );
    assert_eq!(
        scalar::<i64>(
            t,
            &format!("SELECT WRITETIME(s_static) FROM {ks}.every_type WHERE k = 4")
        )
        .await,
        Some(1700000000000060)
    );

    // Copying everything a second time (--restart) duplicates no list
    // element. This copy and the validation after it run over LZ4-compressed
    // connections (the first ones had none, the default): every type goes
    // through both.
    let again = run_backfill(
        &bed,
        &[&flags[..], &["--restart", "--compression", "lz4"]].concat(),
    )
    .await;
    assert_eq!(again.ranges_skipped, 0);
    assert_eq!(
        scalar::<Vec<i32>>(t, &format!("SELECT l_list FROM {ks}.every_type WHERE {x}")).await,
        Some(vec![1, 2, 3])
    );
    assert_eq!(
        scalar::<Vec<i32>>(
            t,
            &format!("SELECT l_list FROM {ks}.every_type WHERE k = 100 AND c = 'row00007'")
        )
        .await,
        Some(vec![7, 8])
    );
    let validation = run_validate(&bed, &["--keyspaces", &ks, "--compression", "lz4"]).await;
    assert_eq!(validation.differences(), 0, "{validation:?}");

    // A third run without --restart copies nothing.
    let third = run_backfill(&bed, &flags).await;
    assert_eq!(third.rows, 0, "{third:?}");
    assert_eq!(third.ranges_skipped, third.ranges_total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backdate_writes_every_cell_at_the_start_timestamp() {
    let bed = bed().await;
    let ks = unique("backdate");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int, c int, v text, w int, l list<int>, PRIMARY KEY (k, c))"],
    )
    .await;
    for i in 0..50 {
        exec(&bed.source, &format!("UPDATE {ks}.t USING TIMESTAMP {} SET v = 'v{i}', l = l + [{i}] WHERE k = {} AND c = {i}", 1_000 + i, i % 5)).await;
        exec(&bed.source, &format!("UPDATE {ks}.t USING TIMESTAMP {} AND TTL 5000 SET w = {i} WHERE k = {} AND c = {i}", 2_000 + i, i % 5)).await;
    }
    let start = now_micros();
    let report = run_backfill(
        &bed,
        &[
            "--keyspaces",
            &ks,
            "--job-id",
            &ks,
            "--timestamp-mode",
            "backdate",
            "--start-timestamp",
            &start.to_string(),
        ],
    )
    .await;
    assert_eq!(report.rows, 50);
    let t = &bed.target;
    assert_eq!(
        scalar::<i64>(
            t,
            &format!("SELECT WRITETIME(v) FROM {ks}.t WHERE k = 1 AND c = 6")
        )
        .await,
        Some(start)
    );
    assert_eq!(
        scalar::<i64>(
            t,
            &format!("SELECT WRITETIME(w) FROM {ks}.t WHERE k = 1 AND c = 6")
        )
        .await,
        Some(start)
    );
    let ttl = scalar::<i32>(
        t,
        &format!("SELECT TTL(w) FROM {ks}.t WHERE k = 1 AND c = 6"),
    )
    .await
    .expect("ttl kept");
    assert!(ttl > 4_900, "{ttl}");
    // In backdate mode, validation compares values and TTLs, not WRITETIMEs.
    let validation =
        run_validate(&bed, &["--keyspaces", &ks, "--timestamp-mode", "backdate"]).await;
    assert_eq!(validation.differences(), 0, "{validation:?}");
    assert_eq!(validation.compared, 50);
    // ... while a preserve-mode validation sees the older source WRITETIMEs
    // as newer on the target, which it accepts; it would flag older ones.
    let strict = run_validate(&bed, &["--keyspaces", &ks]).await;
    assert_eq!(strict.differences(), 0, "{strict:?}");
}

/// A cell expires at the same moment on both clusters, however long its
/// row waited between the source read and the target write. A rate limit
/// makes rows wait (here, pages of 100 rows at 100 rows a second, the scan
/// one page ahead: about 2 s each); the backfill writes the TTL the source
/// gave less the whole seconds since it read it, so the target's expiry is
/// never earlier than the source's and at most 1 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_expires_at_the_same_moment_on_both_clusters_after_a_wait() {
    let bed = bed().await;
    let ks = unique("expiry");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int, c int, v text, PRIMARY KEY (k, c))"],
    )
    .await;
    // One partition, so one range holds every row and its pages queue.
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.t (k, c, v) VALUES (1, ?, 'x') USING TTL 3600"),
        (0..600).map(|c: i32| (c,)),
    )
    .await;
    let report = run_backfill(
        &bed,
        &[
            "--keyspaces",
            &ks,
            "--job-id",
            &ks,
            "--concurrency",
            "1",
            "--page-size",
            "100",
            "--rows-per-second",
            "100",
        ],
    )
    .await;
    assert_eq!(report.rows, 600, "{report:?}");
    let select = format!("SELECT c, TTL(v) FROM {ks}.t WHERE k = 1");
    // Read both sides within the same few milliseconds.
    let (source, target) = tokio::join!(
        pairs::<i32, i32>(&bed.source, &select),
        pairs::<i32, i32>(&bed.target, &select)
    );
    assert_eq!(source.len(), 600);
    let off: Vec<(i32, i32, i32)> = source
        .iter()
        .filter_map(|(c, s)| {
            let t = target.get(c).copied().unwrap_or(-1);
            ((t - s).abs() > 1).then_some((*c, *s, t))
        })
        .collect();
    assert!(
        off.is_empty(),
        "{} of 600 cells expire more than 1 s apart (row, source TTL, target TTL), e.g. {:?}",
        off.len(),
        &off[..off.len().min(5)]
    );
}
