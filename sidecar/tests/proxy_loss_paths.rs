//! Ways an acknowledged write could be lost, altered or refused by mistake,
//! found by reading the data path (issue 13, section 4). Each test failed
//! before its fix. They run against the real source and target nodes of the
//! test bed, each proxy on its own loopback address (127.0.0.91-95; 127.0.0.97 stands for a target that is down).

mod proxy_support;

use std::time::{Duration, Instant};

use ferry_sidecar::proxy::state::ProxyState;
use proxy_support::*;
use scylla::client::session::Session;

struct Bed {
    source_addr: String,
    target_addr: String,
    source: Session,
    target: Session,
}

async fn bed() -> Bed {
    let tb = testbed(1);
    let source_addr = tb.source_contact_points[0].clone();
    let target_addr = tb.target_contact_points[0].clone();
    let source = connect(&source_addr).await;
    let target = connect(&target_addr).await;
    Bed {
        source_addr,
        target_addr,
        source,
        target,
    }
}

/// Creates `ks` with `tables` on both clusters.
async fn on_both(bed: &Bed, ks: &str, tables: &[&str]) {
    create_keyspace(&bed.source, ks).await;
    create_keyspace(&bed.target, ks).await;
    let ddl: Vec<String> = tables
        .iter()
        .map(|t| format!("CREATE TABLE {ks}.{t}"))
        .collect();
    ddl_both(&bed.source, &bed.target, &ddl).await;
}
/// Item 8: rewriting `now()` into a marker the proxy fills changed the
/// statement's id, so a driver that prepared it directly before the roll
/// and again through the proxy (the DataStax drivers check) failed it for
/// good. The client now gets the id a direct connection gives, and both
/// clusters still store the same value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_with_now_keeps_the_id_a_direct_connection_gives() {
    let bed = bed().await;
    let ks = keyspace("loss_id");
    on_both(
        &bed,
        &ks,
        &["t (k int PRIMARY KEY, id timeuuid, at timestamp)"],
    )
    .await;
    let text = format!("INSERT INTO {ks}.t (k, id, at) VALUES (?, now(), toTimestamp(now()))");
    let direct = bed
        .source
        .prepare(text.as_str())
        .await
        .expect("prepare directly");
    let proxy = start_proxy(
        "127.0.0.91",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "sync"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    let through = client
        .prepare(text.as_str())
        .await
        .expect("prepare through the proxy");
    assert_eq!(
        through.get_id(),
        direct.get_id(),
        "the proxy must hand out the id the source gives the client's own text"
    );
    for k in 0..20 {
        client
            .execute_unpaged(&through, (k,))
            .await
            .unwrap_or_else(|e| panic!("execute {k}: {e}"));
    }
    let q = format!("SELECT k, id, at FROM {ks}.t");
    let on_source = rows_text(&bed.source, &q).await;
    let on_target = rows_text(&bed.target, &q).await;
    assert_eq!(on_source.len(), 20);
    assert_eq!(on_source, on_target, "same now() on both sides");
    // Batches of the statement go through the same id swap.
    let mut batch = scylla::statement::batch::Batch::default();
    batch.append_statement(through.clone());
    batch.append_statement(through.clone());
    client
        .batch(&batch, ((100,), (101,)))
        .await
        .expect("batch of the statement");
    let on_source = rows_text(&bed.source, &q).await;
    assert_eq!(on_source.len(), 22);
    assert_eq!(on_source, rows_text(&bed.target, &q).await);
    proxy.stop().await.expect("proxy stops");
}

async fn rows_text(s: &Session, q: &str) -> Vec<String> {
    let rows = s
        .query_unpaged(q, &[])
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .into_rows_result()
        .expect("rows");
    let mut out: Vec<String> = rows
        .rows::<scylla::value::Row>()
        .expect("rows")
        .map(|r| format!("{:?}", r.expect("row").columns))
        .collect();
    out.sort();
    out
}

/// Item 5: async mode sent the target every write at once, before the
/// source answered, so a write the source refused (here: its table exists
/// on the target only) reached the target while the application was told
/// it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_never_mirrors_a_write_the_source_refused() {
    let bed = bed().await;
    let ks = keyspace("loss_refused");
    on_both(&bed, &ks, &["t (k int PRIMARY KEY, v text)"]).await;
    bed.target
        .query_unpaged(
            format!("CREATE TABLE {ks}.only_on_target (k int PRIMARY KEY, v text)"),
            &[],
        )
        .await
        .expect("table on the target only");
    let proxy = start_proxy(
        "127.0.0.92",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "async"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    let refused = client
        .query_unpaged(
            format!("INSERT INTO {ks}.only_on_target (k, v) VALUES (1, 'refused by the source')"),
            &[],
        )
        .await;
    assert!(refused.is_err(), "the source has no such table");
    // A write the source takes, after it: once it is on the target, the
    // refused one would be too if it had been sent.
    client
        .query_unpaged(format!("INSERT INTO {ks}.t (k, v) VALUES (1, 'x')"), &[])
        .await
        .expect("write to a table on both");
    let on_target = format!("SELECT count(*) FROM {ks}.t");
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&bed.target, &on_target).await == 1
        })
        .await,
        "the accepted write reaches the target"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(
            &bed.target,
            &format!("SELECT count(*) FROM {ks}.only_on_target")
        )
        .await,
        0,
        "a write the source refused must not be on the target"
    );
    assert!(
        proxy
            .metric("ferry_proxy_mirrored_writes_total{outcome=\"not_on_source\"}")
            .await
            >= 1.0
    );
    proxy.stop().await.expect("proxy stops");
}

/// Item 2: a PREPARE the target refused (a keyspace the target lacks) was
/// retried at the head of the spool for ever, and every later write queued
/// behind it. It now costs its own write only, counted as rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_the_target_refuses_costs_only_its_own_writes() {
    let bed = bed().await;
    let ks = keyspace("loss_prep");
    let source_only = keyspace("loss_prep_src");
    on_both(&bed, &ks, &["t (k int PRIMARY KEY, v text)"]).await;
    create_keyspace(&bed.source, &source_only).await;
    bed.source
        .query_unpaged(
            format!("CREATE TABLE {source_only}.t (k int PRIMARY KEY, v text)"),
            &[],
        )
        .await
        .expect("table on the source only");
    bed.source
        .await_schema_agreement()
        .await
        .expect("schema agreement");
    let proxy = start_proxy(
        "127.0.0.93",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "async"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    let lone = client
        .prepare(format!("INSERT INTO {source_only}.t (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare on the source-only keyspace");
    client
        .execute_unpaged(&lone, (1, "source only"))
        .await
        .expect("the source takes it");
    let insert = client
        .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    for k in 0..300 {
        client
            .execute_unpaged(&insert, (k, "v"))
            .await
            .unwrap_or_else(|e| panic!("write {k}: {e}"));
    }
    let q = format!("SELECT count(*) FROM {ks}.t");
    let all_there = eventually(Duration::from_secs(30), || async {
        count(&bed.target, &q).await == 300
    })
    .await;
    assert!(
        all_there,
        "{} of 300 writes on the target; spool holds {}",
        count(&bed.target, &q).await,
        proxy.metric("ferry_proxy_spool_records").await
    );
    assert_eq!(proxy.metric("ferry_proxy_spool_records").await, 0.0);
    assert!(
        proxy
            .metric("ferry_proxy_mirrored_writes_total{outcome=\"rejected\"}")
            .await
            >= 1.0,
        "the refused write is counted"
    );
    proxy.stop().await.expect("proxy stops");
}

/// Item 4: with `--spool-full-policy reject-writes`, the spool was checked
/// before the source got a write but appended to only after the target
/// had failed it, so writes let through while the spool filled were
/// dropped after the source had taken them. Room is now promised up
/// front: every write is either refused to the application or spooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_writes_never_drops_a_write_the_source_took() {
    let bed = bed().await;
    let ks = keyspace("loss_full");
    on_both(&bed, &ks, &["t (k int PRIMARY KEY, v text)"]).await;
    // Nothing listens on 127.0.0.97: the target is down for this proxy.
    let proxy = start_proxy(
        "127.0.0.94",
        &bed.source_addr,
        "127.0.0.97",
        &[
            "--mode",
            "async",
            "--spool-max-bytes",
            "40000",
            "--spool-full-policy",
            "reject-writes",
        ],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    let insert = client
        .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    let value = "x".repeat(1000);
    let (mut acknowledged, mut refused) = (0u32, 0u32);
    for round in 0..10 {
        let writes = (0..20).map(|i| {
            let k = round * 20 + i;
            let (client, insert, value) = (&client, &insert, value.clone());
            async move { client.execute_unpaged(insert, (k, value)).await.is_ok() }
        });
        for ok in futures::future::join_all(writes).await {
            if ok {
                acknowledged += 1;
            } else {
                refused += 1;
            }
        }
    }
    // Every acknowledged write ends up in the spool, none dropped.
    let spooled = eventually(Duration::from_secs(20), || async {
        proxy.metric("ferry_proxy_spool_records").await as u32 == acknowledged
    })
    .await;
    assert_eq!(
        proxy
            .metric("ferry_proxy_mirrored_writes_total{outcome=\"dropped\"}")
            .await,
        0.0,
        "a write the source took was dropped ({acknowledged} acknowledged, {refused} refused)"
    );
    assert!(
        spooled,
        "{} spooled of {acknowledged} acknowledged",
        proxy.metric("ferry_proxy_spool_records").await
    );
    assert!(
        refused > 0,
        "the spool must fill: {acknowledged} acknowledged"
    );
    assert!(acknowledged > 0);
    proxy.stop().await.expect("proxy stops");
}

/// Item 6: a `BEGIN BATCH` text was judged by its first statement: a
/// DELETE-only batch (no keyspace named before it) was never mirrored, and
/// a batch mixing a selected and an unselected table was sent whole to the
/// target, which refused it (a sync write then failed). Each statement is
/// now judged on its own and the target gets the selected ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_texts_mirror_exactly_their_selected_statements() {
    let bed = bed().await;
    let ks = keyspace("loss_batch");
    let unselected = keyspace("loss_batch_src");
    on_both(&bed, &ks, &["t (k int PRIMARY KEY, v text)"]).await;
    create_keyspace(&bed.source, &unselected).await;
    bed.source
        .query_unpaged(
            format!("CREATE TABLE {unselected}.u (k int PRIMARY KEY, v text)"),
            &[],
        )
        .await
        .expect("table on the source only");
    bed.source
        .await_schema_agreement()
        .await
        .expect("schema agreement");
    for s in [&bed.source, &bed.target] {
        s.query_unpaged(format!("INSERT INTO {ks}.t (k, v) VALUES (1, 'old')"), &[])
            .await
            .expect("seed");
    }
    let proxy = start_proxy(
        "127.0.0.95",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "sync", "--include-keyspaces", &ks],
    )
    .await;
    // A session with no keyspace.
    let client = connect(&proxy.addr.to_string()).await;
    client
        .query_unpaged(
            format!("BEGIN BATCH DELETE FROM {ks}.t WHERE k = 1; APPLY BATCH"),
            &[],
        )
        .await
        .expect("DELETE-only batch");
    let one = format!("SELECT count(*) FROM {ks}.t WHERE k = 1");
    assert_eq!(count(&bed.source, &one).await, 0);
    assert_eq!(
        count(&bed.target, &one).await,
        0,
        "the delete reached the target"
    );
    client
        .query_unpaged(
            format!(
                "BEGIN UNLOGGED BATCH \
                 INSERT INTO {unselected}.u (k, v) VALUES (2, 'source only') \
                 INSERT INTO {ks}.t (k, v) VALUES (2, 'both'); \
                 APPLY BATCH"
            ),
            &[],
        )
        .await
        .expect("a batch mixing a selected and an unselected table");
    let two = format!("SELECT count(*) FROM {ks}.t WHERE k = 2");
    assert_eq!(count(&bed.source, &two).await, 1);
    assert_eq!(
        count(&bed.target, &two).await,
        1,
        "the selected part reached the target"
    );
    assert_eq!(
        count(&bed.source, &format!("SELECT count(*) FROM {unselected}.u")).await,
        1
    );
    // Same WRITETIME on both sides for the selected part.
    let wt = format!("SELECT WRITETIME(v) FROM {ks}.t WHERE k = 2");
    assert_eq!(
        rows_text(&bed.source, &wt).await,
        rows_text(&bed.target, &wt).await
    );
    proxy.stop().await.expect("proxy stops");
}

/// Item 9: in async mode a TRUNCATE was mirrored like any write, with no
/// order against the writes around it, so a write made right after it
/// could reach the target first and be erased there. It now goes through
/// the spool: the writes after it queue behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_in_async_mode_comes_before_the_writes_after_it() {
    let bed = bed().await;
    let ks = keyspace("loss_trunc");
    on_both(&bed, &ks, &["t (k int PRIMARY KEY, v text)"]).await;
    let proxy = start_proxy(
        "127.0.0.90",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "async"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    let insert = client
        .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    for round in 0..3 {
        for k in 0..30 {
            client
                .execute_unpaged(&insert, (round * 100 + k, "before"))
                .await
                .expect("write");
        }
        client
            .query_unpaged(format!("TRUNCATE {ks}.t"), &[])
            .await
            .expect("truncate");
        for k in 50..60 {
            client
                .execute_unpaged(&insert, (round * 100 + k, "after"))
                .await
                .expect("write");
        }
    }
    let q = format!("SELECT k, v FROM {ks}.t");
    let drained = eventually(Duration::from_secs(30), || async {
        proxy.metric("ferry_proxy_spool_records").await == 0.0
            && rows_text(&bed.target, &q).await.len() == 10
    })
    .await;
    let on_source = rows_text(&bed.source, &q).await;
    assert_eq!(
        on_source.len(),
        10,
        "the last round's writes after TRUNCATE"
    );
    assert!(drained, "target: {:?}", rows_text(&bed.target, &q).await);
    assert_eq!(on_source, rows_text(&bed.target, &q).await);
    proxy.stop().await.expect("proxy stops");
}

/// Item 3 (in part): an evicted pod took its spool with it. The proxy's
/// `/drain` (the pod's preStop hook) holds the pod until the spool is empty,
/// or says what is left when its deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_spool_and_says_what_is_left() {
    let bed = bed().await;
    let ks = keyspace("loss_drain");
    on_both(&bed, &ks, &["t (k int PRIMARY KEY, v text)"]).await;
    // The target is down for this proxy: writes end in the spool.
    let down = start_proxy(
        "127.0.0.89",
        &bed.source_addr,
        "127.0.0.97",
        &["--mode", "async", "--async-retries", "1"],
    )
    .await;
    let client = connect(&down.addr.to_string()).await;
    for k in 0..5 {
        client
            .query_unpaged(format!("INSERT INTO {ks}.t (k, v) VALUES ({k}, 'x')"), &[])
            .await
            .expect("the source takes it");
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            down.metric("ferry_proxy_spool_records").await == 5.0
        })
        .await
    );
    // `/state` says the same to the operator, which reads it before it
    // evicts the pod: what is owed, for how long nothing drained, and why.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = down.admin_get("/state").await;
    assert!(status.contains("200"), "{status}: {body}");
    let state: ProxyState = serde_json::from_str(&body).expect("state JSON");
    assert_eq!(state.mode, "async", "{body}");
    assert_eq!(state.spool_records, 5, "{body}");
    assert_eq!(state.owed(), 5, "{body}");
    assert!(state.spool_stalled_seconds >= 1, "{body}");
    assert!(
        state.last_replay_error.is_some(),
        "a dead target is the reason: {body}"
    );
    assert!(!state.target_reachable && state.source_reachable, "{body}");
    let started = Instant::now();
    let (status, body) = down.admin_get("/drain?timeout=1").await;
    assert!(status.contains("503"), "{status}: {body}");
    assert!(body.contains("spool_records=5"), "{body}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    down.stop().await.expect("proxy stops");

    // With the target up, the drain answers once it is all there.
    let up = start_proxy(
        "127.0.0.88",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "async"],
    )
    .await;
    let client = connect(&up.addr.to_string()).await;
    for k in 10..20 {
        client
            .query_unpaged(format!("INSERT INTO {ks}.t (k, v) VALUES ({k}, 'y')"), &[])
            .await
            .expect("write");
    }
    let (status, body) = up.admin_get("/drain?timeout=20").await;
    assert!(status.contains("200"), "{status}: {body}");
    let (_, body) = up.admin_get("/state").await;
    let state: ProxyState = serde_json::from_str(&body).expect("state JSON");
    assert_eq!(
        (
            state.owed(),
            state.spool_stalled_seconds,
            state.last_replay_error
        ),
        (0, 0, None),
        "{body}"
    );
    // The session's control connection and its pool's.
    assert!(state.client_connections >= 1, "{body}");
    assert_eq!(
        count(&bed.target, &format!("SELECT count(*) FROM {ks}.t")).await,
        10
    );
    up.stop().await.expect("proxy stops");
}

/// `now()` and the like in a BATCH message child sent as text (kind 0):
/// each cluster computed its own value under the same WRITETIME (found by
/// the conformance suite with gocql and the Python driver). They now get
/// literals, as in a QUERY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_in_a_text_child_of_a_batch_is_the_same_on_both_sides() {
    let bed = bed().await;
    let ks = keyspace("loss_batch_now");
    on_both(
        &bed,
        &ks,
        &["t (k int PRIMARY KEY, id timeuuid, u uuid, at timestamp)"],
    )
    .await;
    let proxy = start_proxy(
        "127.0.0.87",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "sync"],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    let mut batch = scylla::statement::batch::Batch::default();
    for k in 0..3 {
        batch.append_statement(
            format!(
                "INSERT INTO {ks}.t (k, id, u, at) VALUES ({k}, now(), uuid(), currentTimestamp())"
            )
            .as_str(),
        );
    }
    client
        .batch(&batch, ((), (), ()))
        .await
        .expect("batch of text children");
    let q = format!("SELECT k, id, u, at FROM {ks}.t");
    let on_source = rows_text(&bed.source, &q).await;
    assert_eq!(on_source.len(), 3);
    assert_eq!(on_source, rows_text(&bed.target, &q).await);
    assert!(
        proxy
            .metric("ferry_proxy_policy_writes_total{kind=\"replaced\"}")
            .await
            >= 9.0
    );
    proxy.stop().await.expect("proxy stops");
}

/// Stop 22's CI: in async mode the target answered UNPREPARED to a mirror
/// that had just prepared its statement again (Cassandra evicts both of a
/// text's ids when concurrent PREPAREs of it race, and a schema change
/// drops the table's statements), and the write was counted as refused and
/// lost. The target forgetting a statement is never a refusal: the mirror
/// prepares again until it takes, else retries and spools like any
/// transient failure. Here the target forgets the statement again and
/// again (each added column drops it) while sixteen writers keep many
/// mirrors in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_forgetting_a_statement_loses_no_async_mirror() {
    let bed = bed().await;
    let ks = keyspace("loss_unprep");
    on_both(&bed, &ks, &["t (k int PRIMARY KEY, v text)"]).await;
    let proxy = start_proxy(
        "127.0.0.78",
        &bed.source_addr,
        &bed.target_addr,
        &["--mode", "async"],
    )
    .await;
    let client = std::sync::Arc::new(connect(&proxy.addr.to_string()).await);
    let insert = client
        .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    // The writers keep writing until the target has forgotten the
    // statement FORGETS times (stop 27's CI: with a fixed number of writes
    // they could all finish before the third forgetting), and each writes
    // at least AT_LEAST rows.
    const WRITERS: i32 = 16;
    const AT_LEAST: i32 = 400;
    const FORGETS: i32 = 5;
    let forgetting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let forgetter = {
        let target = connect(&bed.target_addr).await;
        let ks = ks.clone();
        let forgetting = forgetting.clone();
        tokio::spawn(async move {
            // The writers stop when this task ends, even by a panic.
            struct StopWriters(std::sync::Arc<std::sync::atomic::AtomicBool>);
            impl Drop for StopWriters {
                fn drop(&mut self) {
                    self.0.store(false, std::sync::atomic::Ordering::Release);
                }
            }
            let _stop = StopWriters(forgetting);
            for added in 0..FORGETS {
                target
                    .query_unpaged(format!("ALTER TABLE {ks}.t ADD forget_{added} int"), &[])
                    .await
                    .expect("a column added on the target");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let insert = insert.clone();
        let forgetting = forgetting.clone();
        writers.push(tokio::spawn(async move {
            let mut written = 0;
            while written < AT_LEAST || forgetting.load(std::sync::atomic::Ordering::Acquire) {
                let k = written * WRITERS + w;
                client
                    .execute_unpaged(&insert, (k, "v"))
                    .await
                    .unwrap_or_else(|e| panic!("write {k}: {e}"));
                written += 1;
            }
            written
        }));
    }
    let mut written = 0;
    for w in writers {
        written += i64::from(w.await.expect("writer"));
    }
    forgetter.await.expect("forgetter");
    let forgotten = FORGETS;
    let want = written;
    let q = format!("SELECT count(*) FROM {ks}.t");
    let all_there = eventually(Duration::from_secs(60), || async {
        count(&bed.target, &q).await == want
    })
    .await;
    let rejected = proxy
        .metric("ferry_proxy_mirrored_writes_total{outcome=\"rejected\"}")
        .await;
    let reprepared = proxy.metric("ferry_proxy_target_reprepares_total").await;
    println!(
        "the target forgot the statement {forgotten} times; the proxy prepared it again {reprepared} times"
    );
    // The premise: mirrors met a forgotten statement again and again.
    assert!(
        reprepared >= 3.0,
        "mirrors met a forgotten statement only {reprepared} times"
    );
    assert!(
        all_there,
        "{} of {want} writes on the target ({rejected} counted as refused, {reprepared} prepared again) after it forgot the statement {forgotten} times",
        count(&bed.target, &q).await
    );
    assert_eq!(rejected, 0.0, "no write is refused");
    proxy.stop().await.expect("proxy stops");
}

/// Stop 28's local CI (the conformance run of the Java driver, v5, async
/// mode): a conditional write reached the target before the plain write
/// the client had made just before it, so its condition failed there and
/// the two clusters diverged (`UPDATE ... IF v = 1` applied on the source
/// only). In async mode the plain write's mirror is still on its way when
/// the client, already answered, sends the conditional one, through the
/// same proxy or (drivers spread requests over the nodes) another; a
/// condition reads the state it arrives at, whatever the timestamps. Many
/// clients each write a row and at once a conditional update of it, half
/// of them through a second proxy; the writes carry a large value so that
/// their mirrors take longer than the source's Paxos round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_write_in_async_mode_sees_the_writes_before_it_on_the_target() {
    let bed = bed().await;
    let ks = keyspace("loss_lwt_order");
    on_both(
        &bed,
        &ks,
        &["t (k int PRIMARY KEY, v int, t text, pad blob)"],
    )
    .await;
    let mut proxies = Vec::new();
    let mut sessions = Vec::new();
    for ip in ["127.0.0.70", "127.0.0.71"] {
        let proxy = start_proxy(ip, &bed.source_addr, &bed.target_addr, &["--mode", "async"]).await;
        sessions.push(std::sync::Arc::new(connect(&proxy.addr.to_string()).await));
        proxies.push(proxy);
    }
    let insert = format!("INSERT INTO {ks}.t (k, v, t, pad) VALUES (?, 1, 'plain', ?)");
    let update = format!("UPDATE {ks}.t SET v = 4, t = 'cas' WHERE k = ? IF v = 1");
    const CLIENTS: i32 = 8;
    const EACH: i32 = 40;
    let pad = vec![7u8; 256 * 1024];
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        // Even clients make both writes through the first proxy, odd ones
        // the conditional write through the second.
        let writer = sessions[0].clone();
        let conditional = sessions[(c % 2) as usize].clone();
        let insert = writer
            .prepare(insert.as_str())
            .await
            .expect("prepare the insert");
        let update = conditional
            .prepare(update.as_str())
            .await
            .expect("prepare the conditional update");
        let pad = pad.clone();
        clients.push(tokio::spawn(async move {
            for i in 0..EACH {
                let k = c * EACH + i;
                writer
                    .execute_unpaged(&insert, (k, pad.as_slice()))
                    .await
                    .unwrap_or_else(|e| panic!("insert {k}: {e}"));
                conditional
                    .execute_unpaged(&update, (k,))
                    .await
                    .unwrap_or_else(|e| panic!("conditional update {k}: {e}"));
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    let want = i64::from(CLIENTS * EACH);
    let q = format!("SELECT count(*) FROM {ks}.t WHERE v = 4 ALLOW FILTERING");
    assert_eq!(
        count(&bed.source, &q).await,
        want,
        "every update applied on the source"
    );
    let all_applied = eventually(Duration::from_secs(30), || async {
        count(&bed.target, &q).await == want
    })
    .await;
    let (mut diverged, mut resent) = (0.0, 0.0);
    for proxy in &proxies {
        diverged += proxy.metric("ferry_proxy_lwt_divergence_total").await;
        resent += proxy.metric("ferry_proxy_conditional_resends_total").await;
    }
    println!("conditional writes sent again: {resent}; diverged: {diverged}");
    // The premise: conditional writes did overtake the writes before them.
    assert!(resent > 0.0, "no conditional write had to be sent again");
    assert!(
        all_applied && diverged == 0.0,
        "{} of {want} conditional updates applied on the target; {diverged} counted as diverged",
        count(&bed.target, &q).await
    );
    for proxy in proxies {
        proxy.stop().await.expect("proxy stops");
    }
}
