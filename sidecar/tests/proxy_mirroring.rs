//! The proxy against the real test bed, driven by the scylla driver:
//! writes of every shape are mirrored with the same WRITETIME and TTL,
//! reads come from the source, the protocol edge cases are handled.

mod proxy_support;

use std::collections::{BTreeMap, BTreeSet};

use futures::TryStreamExt;
use proxy_support::*;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;

/// Every row of `table` with writetime and ttl of `col`, as comparable text.
async fn dump(
    session: &Session,
    ks: &str,
    table: &str,
    key: &str,
    col: &str,
) -> BTreeMap<String, String> {
    let q = format!("SELECT {key}, {col}, WRITETIME({col}), TTL({col}) FROM {ks}.{table}");
    let rows = session
        .query_unpaged(q.as_str(), &[])
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .into_rows_result()
        .expect("rows");
    let mut out = BTreeMap::new();
    for row in rows.rows::<scylla::value::Row>().expect("typed rows") {
        let cols = row.expect("row").columns;
        let n = cols.len();
        // Key columns, the value, then WRITETIME and TTL.
        let key: Vec<String> = cols[..n - 3].iter().map(|c| format!("{c:?}")).collect();
        let ttl = match &cols[n - 1] {
            // TTLs tick down; allow the two reads a few seconds apart.
            Some(CqlValue::Int(t)) => Some((t + 5) / 10),
            _ => None,
        };
        out.insert(
            key.join(","),
            format!("{:?} wt={:?} ttl~{ttl:?}", cols[n - 3], cols[n - 2]),
        );
    }
    out
}

struct Bed {
    source: Session,
    target: Session,
    source_addr: String,
    target_addr: String,
}

async fn bed() -> Bed {
    let tb = testbed(1);
    let source_addr = tb.source_contact_points[0].clone();
    let target_addr = tb.target_contact_points[0].clone();
    Bed {
        source: connect(&source_addr).await,
        target: connect(&target_addr).await,
        source_addr,
        target_addr,
    }
}

async fn setup_both(bed: &Bed, ks: &str, tables: &[&str]) {
    create_keyspace(&bed.source, ks).await;
    create_keyspace(&bed.target, ks).await;
    let stmts: Vec<String> = tables.iter().map(|t| t.replace("{ks}", ks)).collect();
    ddl_both(&bed.source, &bed.target, &stmts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_prepared_writes_mirror_with_same_writetime_and_ttl() {
    let bed = bed().await;
    let ks = keyspace("px_writes");
    setup_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.kv (k int PRIMARY KEY, v text)"],
    )
    .await;
    let proxy = start_proxy(
        "127.0.0.41",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "sync"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;

    client
        .query_unpaged(format!("INSERT INTO {ks}.kv (k, v) VALUES (1, 'one')"), &[])
        .await
        .expect("simple insert");
    client
        .query_unpaged(
            format!("INSERT INTO {ks}.kv (k, v) VALUES (?, ?) USING TTL 3600"),
            (2, "two"),
        )
        .await
        .expect("simple insert with values and TTL");
    let prepared = client
        .prepare(format!("INSERT INTO {ks}.kv (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    for k in 3..20 {
        client
            .execute_unpaged(&prepared, (k, format!("v{k}")))
            .await
            .expect("prepared insert");
    }
    let update = client
        .prepare(format!(
            "UPDATE {ks}.kv USING TTL 7200 SET v = ? WHERE k = ?"
        ))
        .await
        .expect("prepare update");
    client
        .execute_unpaged(&update, ("updated", 5))
        .await
        .expect("update");
    client
        .query_unpaged(format!("DELETE FROM {ks}.kv WHERE k = 4"), &[])
        .await
        .expect("delete");
    // USE goes to both sides, so unqualified statements work on both.
    client.use_keyspace(&ks, false).await.expect("USE");
    client
        .query_unpaged("INSERT INTO kv (k, v) VALUES (100, 'unqualified')", &[])
        .await
        .expect("unqualified insert after USE");

    let on_source = dump(&bed.source, &ks, "kv", "k", "v").await;
    let on_target = dump(&bed.target, &ks, "kv", "k", "v").await;
    assert_eq!(on_source.len(), 19, "source rows: {on_source:?}");
    assert_eq!(
        on_source, on_target,
        "source and target differ (values, WRITETIME or TTL)"
    );
    let two = &on_source["Some(Int(2))"];
    assert!(two.contains("ttl~Some(360)"), "{two}");

    // Reads go to the source only.
    let before = proxy
        .metric("ferry_proxy_requests_total{kind=\"read\",side=\"target\"}")
        .await;
    client
        .query_unpaged(format!("SELECT * FROM {ks}.kv WHERE k = 1"), &[])
        .await
        .expect("read");
    assert_eq!(
        before,
        proxy
            .metric("ferry_proxy_requests_total{kind=\"read\",side=\"target\"}")
            .await
    );
    assert!(proxy.metric("ferry_proxy_timestamps_injected_total").await >= 20.0);
    proxy.stop().await.expect("graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_collections_udts_and_paging() {
    let bed = bed().await;
    let ks = keyspace("px_shapes");
    setup_both(
        &bed,
        &ks,
        &[
            "CREATE TYPE {ks}.addr (street text, zip int)",
            "CREATE TABLE {ks}.rich (k int PRIMARY KEY, tags set<text>, scores map<text, int>, items list<int>, home frozen<addr>)",
            "CREATE TABLE {ks}.wide (p int, c int, v text, PRIMARY KEY (p, c))",
        ],
    )
    .await;
    let proxy = start_proxy(
        "127.0.0.42",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "sync"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;

    let ins = client
        .prepare(format!("INSERT INTO {ks}.wide (p, c, v) VALUES (?, ?, ?)"))
        .await
        .expect("prepare");
    // Logged batch of prepared statements and a simple one.
    let mut logged = Batch::new(BatchType::Logged);
    logged.append_statement(ins.clone());
    logged.append_statement(
        format!("INSERT INTO {ks}.wide (p, c, v) VALUES (0, 1, 'simple-in-batch')").as_str(),
    );
    client
        .batch(&logged, ((0, 0, "prepared-in-batch"), ()))
        .await
        .expect("logged batch");
    // Unlogged batch of many prepared children.
    let mut unlogged = Batch::new(BatchType::Unlogged);
    let mut values = Vec::new();
    for c in 0..50 {
        unlogged.append_statement(ins.clone());
        values.push((1, c, format!("row{c}")));
    }
    client
        .batch(&unlogged, values)
        .await
        .expect("unlogged batch");
    // Collections and a UDT, written with literals and updated in place.
    client
        .query_unpaged(
            format!(
                "INSERT INTO {ks}.rich (k, tags, scores, items, home) VALUES (1, {{'a', 'b'}}, {{'x': 1}}, [1, 2], {{street: 'main', zip: 75001}})"
            ),
            &[],
        )
        .await
        .expect("collections insert");
    client
        .query_unpaged(
            format!("UPDATE {ks}.rich SET items = items + [3], scores['y'] = 2 WHERE k = 1"),
            &[],
        )
        .await
        .expect("collection update");

    // Paging through the proxy: 300 rows in pages of 7.
    let mut pager = scylla::statement::unprepared::Statement::new(format!(
        "SELECT c FROM {ks}.wide WHERE p = 2"
    ));
    pager.set_page_size(7);
    let many = client
        .prepare(format!(
            "INSERT INTO {ks}.wide (p, c, v) VALUES (2, ?, 'x')"
        ))
        .await
        .expect("prepare");
    for c in 0..300 {
        client
            .execute_unpaged(&many, (c,))
            .await
            .expect("insert for paging");
    }
    let seen: Vec<(i32,)> = client
        .query_iter(pager, &[])
        .await
        .expect("paged query")
        .rows_stream::<(i32,)>()
        .expect("typed")
        .try_collect()
        .await
        .expect("all pages");
    assert_eq!(seen.len(), 300);
    // Latency histograms are fed on both sides.
    for side in ["source", "target"] {
        let n = proxy
            .metric(&format!(
                "ferry_proxy_request_duration_seconds_count{{side=\"{side}\"}}"
            ))
            .await;
        assert!(n > 0.0, "no {side} latency observed");
    }
    assert_eq!(seen.iter().map(|r| r.0).collect::<BTreeSet<_>>().len(), 300);

    let on_source = dump(&bed.source, &ks, "wide", "p, c", "v").await;
    let on_target = dump(&bed.target, &ks, "wide", "p, c", "v").await;
    assert_eq!(on_source.len(), 352);
    assert_eq!(on_source, on_target);
    for col in ["tags", "scores", "items", "home"] {
        let q = format!("SELECT {col} FROM {ks}.rich WHERE k = 1");
        let s = bed
            .source
            .query_unpaged(q.as_str(), &[])
            .await
            .expect("source read")
            .into_rows_result()
            .expect("rows");
        let t = bed
            .target
            .query_unpaged(q.as_str(), &[])
            .await
            .expect("target read")
            .into_rows_result()
            .expect("rows");
        let s: Vec<(Option<CqlValue>,)> = s
            .rows()
            .expect("typed")
            .collect::<Result<_, _>>()
            .expect("rows");
        let t: Vec<(Option<CqlValue>,)> = t
            .rows()
            .expect("typed")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(s, t, "column {col}");
        assert!(s[0].0.is_some(), "column {col} empty");
    }
    let wt = format!("SELECT WRITETIME(home), WRITETIME(tags) FROM {ks}.rich WHERE k = 1");
    let s = bed
        .source
        .query_unpaged(wt.as_str(), &[])
        .await
        .expect("wt")
        .into_rows_result()
        .expect("rows");
    let t = bed
        .target
        .query_unpaged(wt.as_str(), &[])
        .await
        .expect("wt")
        .into_rows_result()
        .expect("rows");
    let s: (Option<i64>, Option<Vec<i64>>) = s.first_row().expect("row");
    let t: (Option<i64>, Option<Vec<i64>>) = t.first_row().expect("row");
    assert_eq!(s, t, "collection/UDT writetimes");
    proxy.stop().await.expect("stop");
}

async fn counter(s: &Session, ks: &str, k: i32) -> i64 {
    let q = format!("SELECT n FROM {ks}.c WHERE k = {k}");
    let r = s
        .query_unpaged(q.as_str(), &[])
        .await
        .expect("count")
        .into_rows_result()
        .expect("rows");
    r.first_row::<(scylla::value::Counter,)>()
        .expect("row")
        .0
         .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_lwt_follow_their_policies() {
    let bed = bed().await;
    let ks = keyspace("px_policies");
    setup_both(
        &bed,
        &ks,
        &[
            "CREATE TABLE {ks}.c (k int PRIMARY KEY, n counter)",
            "CREATE TABLE {ks}.l (k int PRIMARY KEY, v int)",
        ],
    )
    .await;
    let proxy = start_proxy(
        "127.0.0.43",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "sync"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;

    client
        .query_unpaged(format!("UPDATE {ks}.c SET n = n + 5 WHERE k = 1"), &[])
        .await
        .expect("counter update");
    let inc = client
        .prepare(format!("UPDATE {ks}.c SET n = n + ? WHERE k = ?"))
        .await
        .expect("prepare counter");
    client
        .execute_unpaged(&inc, (scylla::value::Counter(3), 1))
        .await
        .expect("prepared counter");
    let mut counter_batch = Batch::new(BatchType::Counter);
    counter_batch.append_statement(inc.clone());
    counter_batch.append_statement(inc.clone());
    client
        .batch(
            &counter_batch,
            (
                (scylla::value::Counter(1), 1),
                (scylla::value::Counter(1), 2),
            ),
        )
        .await
        .expect("counter batch");

    let applied = client
        .query_unpaged(
            format!("INSERT INTO {ks}.l (k, v) VALUES (1, 1) IF NOT EXISTS"),
            &[],
        )
        .await
        .expect("lwt insert")
        .into_rows_result()
        .expect("lwt rows");
    let (first,): (bool,) = applied
        .first_row::<(bool,)>()
        .or_else(|_| {
            // [applied] plus the existing columns when not applied.
            applied
                .first_row::<(bool, Option<i32>, Option<i32>)>()
                .map(|(a, _, _)| (a,))
        })
        .expect("[applied]");
    assert!(first);
    client
        .query_unpaged(format!("UPDATE {ks}.l SET v = 2 WHERE k = 1 IF v = 1"), &[])
        .await
        .expect("lwt update");

    assert_eq!(counter(&bed.source, &ks, 1).await, 9);
    assert_eq!(counter(&bed.target, &ks, 1).await, 9);
    assert_eq!(counter(&bed.source, &ks, 2).await, 1);
    assert_eq!(counter(&bed.target, &ks, 2).await, 1);
    let lwt = format!("SELECT v FROM {ks}.l WHERE k = 1");
    for s in [&bed.source, &bed.target] {
        let r = s
            .query_unpaged(lwt.as_str(), &[])
            .await
            .expect("lwt read")
            .into_rows_result()
            .expect("rows");
        assert_eq!(r.first_row::<(i32,)>().expect("row").0, 2);
    }
    assert!(
        proxy
            .metric("ferry_proxy_policy_writes_total{kind=\"counter\"}")
            .await
            >= 3.0
    );
    assert!(
        proxy
            .metric("ferry_proxy_policy_writes_total{kind=\"lwt\"}")
            .await
            >= 2.0
    );
    assert_eq!(proxy.metric("ferry_proxy_lwt_divergence_total").await, 0.0);
    proxy.stop().await.expect("stop");
}

async fn present(s: &Session, q: String) -> bool {
    s.query_unpaged(q.as_str(), &[])
        .await
        .expect("read")
        .into_rows_result()
        .expect("rows")
        .rows_num()
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_switches_at_run_time_without_reconnecting() {
    let bed = bed().await;
    let ks = keyspace("px_modes");
    setup_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.kv (k int PRIMARY KEY, v text)"],
    )
    .await;
    let runtime = std::env::temp_dir().join(format!("ferry-runtime-{}.txt", std::process::id()));
    std::fs::write(&runtime, "mode sync\n").expect("runtime file");
    let proxy = start_proxy(
        "127.0.0.48",
        &bed.source_addr,
        &bed.target_addr,
        &[
            "--peer-map",
            &runtime.display().to_string(),
            "--mode",
            "async",
        ],
    )
    .await;
    assert_eq!(
        proxy.metric("ferry_proxy_mode").await,
        1.0,
        "the file's mode wins at start"
    );
    let client = connect(&proxy.addr.to_string()).await;
    let insert = client
        .prepare(format!("INSERT INTO {ks}.kv (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    let read = |k: i32| format!("SELECT v FROM {ks}.kv WHERE k = {k}");

    client
        .execute_unpaged(&insert, (1, "sync"))
        .await
        .expect("write");
    assert!(
        present(&bed.target, read(1)).await,
        "sync write reached the target"
    );

    let switch = |mode: &str| std::fs::write(&runtime, format!("mode {mode}\n")).expect("switch");
    let wait_mode = |value: f64| {
        let proxy = &proxy;
        async move {
            for _ in 0..40 {
                if proxy.metric("ferry_proxy_mode").await == value {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("mode did not switch to {value}");
        }
    };
    switch("source-only");
    wait_mode(0.0).await;
    client
        .execute_unpaged(&insert, (2, "source only"))
        .await
        .expect("write");
    assert!(present(&bed.source, read(2)).await);
    assert!(
        !present(&bed.target, read(2)).await,
        "source-only must not mirror"
    );

    // target-primary: reads come from the target.
    bed.target
        .query_unpaged(
            format!("INSERT INTO {ks}.kv (k, v) VALUES (3, 'only on target')"),
            &[],
        )
        .await
        .expect("direct target write");
    switch("target-primary");
    wait_mode(3.0).await;
    let via_proxy = client
        .query_unpaged(read(3), &[])
        .await
        .expect("read via proxy")
        .into_rows_result()
        .expect("rows");
    assert_eq!(
        via_proxy.rows_num(),
        1,
        "target-primary reads are served by the target"
    );
    client
        .execute_unpaged(&insert, (4, "both"))
        .await
        .expect("write");
    assert!(present(&bed.source, read(4)).await && present(&bed.target, read(4)).await);
    let prepared_read = client
        .prepare(format!("SELECT v FROM {ks}.kv WHERE k = ?"))
        .await
        .expect("prepare read");
    let r = client
        .execute_unpaged(&prepared_read, (3,))
        .await
        .expect("prepared read via target");
    assert_eq!(r.into_rows_result().expect("rows").rows_num(), 1);
    drop(client);
    proxy.stop().await.expect("stop");
    let _ = std::fs::remove_file(&runtime);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_reads_count_matches_and_differences() {
    let bed = bed().await;
    let ks = keyspace("px_shadow");
    setup_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.kv (k int PRIMARY KEY, v text)"],
    )
    .await;
    let proxy = start_proxy(
        "127.0.0.52",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "sync", "--shadow-read-percent", "100"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    client
        .query_unpaged(
            format!("INSERT INTO {ks}.kv (k, v) VALUES (1, 'same')"),
            &[],
        )
        .await
        .expect("mirrored write");
    let read = client
        .prepare(format!("SELECT v FROM {ks}.kv WHERE k = ?"))
        .await
        .expect("prepare");
    let r = client.execute_unpaged(&read, (1,)).await.expect("read");
    assert_eq!(r.into_rows_result().expect("rows").rows_num(), 1);
    // Diverge on purpose: a row only the source has.
    bed.source
        .query_unpaged(
            format!("INSERT INTO {ks}.kv (k, v) VALUES (2, 'source only')"),
            &[],
        )
        .await
        .expect("direct source write");
    let r = client.execute_unpaged(&read, (2,)).await.expect("read");
    assert_eq!(
        r.into_rows_result().expect("rows").rows_num(),
        1,
        "the client gets the source's answer"
    );
    // The comparison ends after the client has its answer: wait for it.
    let per_table =
        format!("ferry_proxy_shadow_read_mismatches_total{{keyspace=\"{ks}\",table=\"kv\"}}");
    let mut counted = (0.0, 0.0, 0.0);
    for _ in 0..40 {
        counted = (
            proxy
                .metric("ferry_proxy_shadow_reads_total{outcome=\"match\"}")
                .await,
            proxy
                .metric("ferry_proxy_shadow_reads_total{outcome=\"mismatch\"}")
                .await,
            proxy.metric(&per_table).await,
        );
        if counted.0 >= 1.0 && counted.1 >= 1.0 && counted.2 >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Exactly one of each: the driver's own reads of system tables (schema,
    // peers) are not compared, since each cluster keeps its own.
    assert_eq!(
        counted,
        (1.0, 1.0, 1.0),
        "match, mismatch, and mismatch counted against {ks}.kv"
    );
    drop(client);
    proxy.stop().await.expect("stop");
}

/// Every row of `q` as sorted text.
async fn rows_text(s: &Session, q: &str) -> Vec<String> {
    let r = s
        .query_unpaged(q, &[])
        .await
        .expect("read")
        .into_rows_result()
        .expect("rows");
    let mut v: Vec<String> = r
        .rows::<scylla::value::Row>()
        .expect("typed")
        .map(|row| format!("{:?}", row.expect("row").columns))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_and_uuid_get_the_same_value_on_both_sides() {
    let bed = bed().await;
    let ks = keyspace("px_nondet");
    setup_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.ev (k int PRIMARY KEY, t timeuuid, u uuid, ts timestamp, m map<text, timestamp>, d date, tm time)"],
    )
    .await;
    let proxy = start_proxy(
        "127.0.0.53",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "sync"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    for k in 0..5 {
        client
            .query_unpaged(
                format!("INSERT INTO {ks}.ev (k, t, u, ts, d, tm) VALUES ({k}, now(), uuid(), currentTimestamp(), currentDate(), currentTime())"),
                &[],
            )
            .await
            .expect("insert with server-side functions");
    }
    // Prepared: the proxy turns the calls into markers it fills, and the
    // driver sees only the statement's own marker (one value to bind).
    let prepared = client
        .prepare(format!(
            "INSERT INTO {ks}.ev (k, t, u, ts, d, tm) VALUES (?, now(), uuid(), toTimestamp(now()), currentDate(), currentTime())"
        ))
        .await
        .expect("prepare with server-side functions");
    assert_eq!(
        prepared.get_variable_col_specs().len(),
        1,
        "the proxy's markers must be hidden from the driver"
    );
    for k in 5..10 {
        client
            .execute_unpaged(&prepared, (k,))
            .await
            .expect("execute with server-side functions");
    }
    // The same prepared statement inside a BATCH.
    let mut batch = scylla::statement::batch::Batch::default();
    batch.append_statement(prepared.clone());
    batch.append_statement(prepared.clone());
    client
        .batch(&batch, ((10,), (11,)))
        .await
        .expect("batch of prepared statements with server-side functions");
    // Named markers: the calls become named markers of the proxy's own, and
    // the driver still binds only the statement's markers.
    let named = client
        .prepare(format!(
            "UPDATE {ks}.ev USING TTL :ttl SET t = now(), u = uuid(), d = currentDate() WHERE k = :k"
        ))
        .await
        .expect("prepare with named markers and server-side functions");
    let names: Vec<&str> = named
        .get_variable_col_specs()
        .iter()
        .map(|c| c.name())
        .collect();
    assert_eq!(names, ["ttl", "k"], "the driver's view of the markers");
    for k in 12..15 {
        client
            .execute_unpaged(&named, (86_400, k))
            .await
            .expect("execute with named markers and server-side functions");
    }
    let q = format!("SELECT k, t, u, ts, d, tm FROM {ks}.ev");
    let on_source = rows_text(&bed.source, &q).await;
    let on_target = rows_text(&bed.target, &q).await;
    assert_eq!(on_source.len(), 15);
    assert_eq!(
        on_source, on_target,
        "generated values must match on both sides"
    );
    // 5 QUERYs, 5 EXECUTEs and 2 BATCH children of 5 calls, 3 named
    // EXECUTEs of 3.
    let replaced = proxy
        .metric("ferry_proxy_policy_writes_total{kind=\"replaced\"}")
        .await;
    assert!(replaced >= 69.0, "replaced calls: {replaced}");
    // A call inside a collection literal is left to each cluster: Cassandra
    // refuses bind markers there, so a rewrite would break the statement.
    let in_literal = client
        .prepare(format!(
            "UPDATE {ks}.ev SET m = m + {{'at': currentTimestamp()}} WHERE k = ?"
        ))
        .await
        .expect("prepare with a call inside a map literal");
    client
        .execute_unpaged(&in_literal, (0,))
        .await
        .expect("execute with a call inside a map literal");
    let m = format!("SELECT m FROM {ks}.ev WHERE k = 0");
    for side in [&bed.source, &bed.target] {
        assert_eq!(rows_text(side, &m).await.len(), 1);
        assert!(
            !rows_text(side, &m).await[0].contains("None"),
            "the map was written on both sides"
        );
    }
    drop(client);
    proxy.stop().await.expect("stop");
}

/// `--mirror-max-in-flight` holds client writes back while that many target
/// writes are pending, and none of the held writes is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mirroring_is_bounded_and_loses_nothing() {
    let bed = bed().await;
    let ks = keyspace("px_bound");
    setup_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.kv (k int PRIMARY KEY, v text)"],
    )
    .await;
    let proxy = start_proxy(
        "127.0.0.54",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "async", "--mirror-max-in-flight", "1"],
    )
    .await;
    let client = std::sync::Arc::new(connect(&proxy.addr.to_string()).await);
    let insert = client
        .prepare(format!("INSERT INTO {ks}.kv (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    const ROWS: i32 = 400;
    let writes = (0..ROWS).map(|k| {
        let (client, insert) = (client.clone(), insert.clone());
        async move { client.execute_unpaged(&insert, (k, "v")).await }
    });
    for r in futures::future::join_all(writes).await {
        r.expect("write through the proxy");
    }
    let waits = proxy.metric("ferry_proxy_mirror_waits_total").await;
    assert!(
        waits >= 1.0,
        "{ROWS} concurrent writes with one place in flight never waited: {waits}"
    );
    let count = format!("SELECT COUNT(*) FROM {ks}.kv");
    let mut on_target = 0;
    for _ in 0..100 {
        let r = bed
            .target
            .query_unpaged(count.clone(), &[])
            .await
            .expect("count");
        let (n,): (i64,) = r
            .into_rows_result()
            .expect("rows")
            .single_row()
            .expect("one row");
        on_target = n;
        if n == i64::from(ROWS) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(on_target, i64::from(ROWS), "rows on the target");
    assert_eq!(
        proxy
            .metric("ferry_proxy_mirrored_writes_total{outcome=\"ok\"}")
            .await,
        f64::from(ROWS)
    );
    proxy.stop().await.expect("stop");
}

/// `--include-tables` mirrors what the backfill copies of the same list:
/// a write to a table the migration leaves out stays on the source, even
/// in sync mode and even when the target lacks the table (mirroring it
/// would fail the application's write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_selected_tables_stay_on_the_source() {
    let bed = bed().await;
    let ks = keyspace("px_tables");
    setup_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.picked (k int PRIMARY KEY, v text)"],
    )
    .await;
    bed.source
        .query_unpaged(
            format!("CREATE TABLE {ks}.other (k int PRIMARY KEY, v text)"),
            &[],
        )
        .await
        .expect("a table on the source only");
    bed.source
        .await_schema_agreement()
        .await
        .expect("schema agreement");
    let proxy = start_proxy(
        "127.0.0.55",
        &bed.source_addr,
        &bed.target_addr,
        &[
            "--mode",
            "sync",
            "--include-tables",
            &format!("{ks}.picked"),
        ],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    for table in ["picked", "other"] {
        client
            .query_unpaged(
                format!("INSERT INTO {ks}.{table} (k, v) VALUES (1, 'x')"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("sync write to {table} through the proxy: {e}"));
        let insert = client
            .prepare(format!("INSERT INTO {ks}.{table} (k, v) VALUES (?, ?)"))
            .await
            .expect("prepare");
        client
            .execute_unpaged(&insert, (2, "y"))
            .await
            .unwrap_or_else(|e| panic!("prepared sync write to {table}: {e}"));
    }
    let picked = format!("SELECT k FROM {ks}.picked");
    assert_eq!(rows_text(&bed.target, &picked).await.len(), 2);
    assert_eq!(
        rows_text(&bed.source, &format!("SELECT k FROM {ks}.other"))
            .await
            .len(),
        2
    );
    assert_eq!(
        proxy
            .metric("ferry_proxy_mirrored_writes_total{outcome=\"ok\"}")
            .await,
        2.0,
        "only the selected table's writes are mirrored"
    );
    drop(client);
    proxy.stop().await.expect("stop");
}

/// Several target contact points: the proxy spreads its target links over
/// them and goes around one that refuses, so a target node down does not
/// stop mirroring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_contact_point_that_is_down_is_gone_around() {
    let bed = bed().await;
    let ks = keyspace("px_contacts");
    setup_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.kv (k int PRIMARY KEY, v text)"],
    )
    .await;
    // Nothing listens on 127.0.0.98's CQL port: connecting is refused.
    let targets = format!("127.0.0.98:9042,{}", bed.target_addr);
    let proxy = start_proxy(
        "127.0.0.58",
        &bed.source_addr,
        &targets,
        &["--mode", "sync"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    let insert = client
        .prepare(format!("INSERT INTO {ks}.kv (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    for k in 0..20 {
        client
            .execute_unpaged(&insert, (k, "v"))
            .await
            .unwrap_or_else(|e| panic!("sync write {k} with one target contact point down: {e}"));
    }
    let q = format!("SELECT k FROM {ks}.kv");
    assert_eq!(rows_text(&bed.target, &q).await.len(), 20);
    drop(client);
    proxy.stop().await.expect("stop");
}
