//! Faults injected on purpose (issue 13, section 3), each with every
//! acknowledged write accounted for: the proxy killed with SIGKILL while its
//! spool holds writes, and a spool that fills under `drop-target-writes`.
//! The proxies run as the real `ferry-sidecar` binary (so SIGKILL is real)
//! on their own loopback addresses (127.0.0.85-86; 127.0.0.97 stands for a
//! target that is down).

mod bulk_support;
mod proxy_support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use proxy_support::*;

/// A proxy process.
struct ProxyProcess {
    child: tokio::process::Child,
    ip: &'static str,
}

impl ProxyProcess {
    async fn start(
        ip: &'static str,
        source: &str,
        target: &str,
        spool: &Path,
        extra: &[&str],
    ) -> Self {
        let host = |c: &str| {
            c.rsplit_once(':')
                .map_or(c.to_owned(), |(h, _)| h.to_owned())
        };
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-sidecar"))
            .arg("proxy")
            .arg(host(source))
            .arg(host(target))
            .args(["--proxy-address", ip, "--admin-address", ip])
            .arg("--spool-dir")
            .arg(spool)
            .args(extra)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("ferry-sidecar proxy starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect((ip, 29042)).await.is_err() {
            assert!(Instant::now() < deadline, "proxy on {ip} did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, ip }
    }

    /// SIGKILL: no shutdown, no flush, no drain.
    async fn kill_9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    async fn metric(&self, prefix: &str) -> f64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect((self.ip, 28000)).await else {
            return f64::NAN;
        };
        let _ = s
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
/// `kill -9` of a proxy whose spool holds writes (async mode, target down),
/// a restart on the same spool with the target back, `kill -9` again in the
/// middle of the replay, and a last restart: every write the application
/// was told succeeded is on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_with_sigkill_replays_its_spool_after_restart() {
    let tb = testbed(1);
    let (src, tgt) = (
        tb.source_contact_points[0].clone(),
        tb.target_contact_points[0].clone(),
    );
    let source = connect(&src).await;
    let target = connect(&tgt).await;
    let ks = keyspace("fault_kill");
    create_keyspace(&source, &ks).await;
    create_keyspace(&target, &ks).await;
    ddl_both(
        &source,
        &target,
        &[format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")],
    )
    .await;
    let spool = std::env::temp_dir().join(format!("ferry-fault-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let async_flags = ["--mode", "async", "--async-retries", "1"];
    let down = ProxyProcess::start("127.0.0.85", &src, "127.0.0.97", &spool, &async_flags).await;
    let client = connect("127.0.0.85:29042").await;
    let insert = client
        .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    const WRITES: i32 = 1500;
    for k in 0..WRITES {
        client
            .execute_unpaged(&insert, (k, "spooled"))
            .await
            .unwrap_or_else(|e| panic!("write {k}: {e}"));
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            down.metric("ferry_proxy_spool_records").await == f64::from(WRITES)
        })
        .await,
        "{} of {WRITES} spooled",
        down.metric("ferry_proxy_spool_records").await
    );
    drop(client);
    down.kill_9().await;
    assert_eq!(
        count(&target, &format!("SELECT count(*) FROM {ks}.t")).await,
        0,
        "nothing reached the target while it was down"
    );

    // Back with the target, replaying one record at a time; killed again
    // in the middle of the replay.
    let slow = [&async_flags[..], &["--replay-window", "1"]].concat();
    let replaying = ProxyProcess::start("127.0.0.85", &src, &tgt, &spool, &slow).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            replaying
                .metric("ferry_proxy_mirrored_writes_total{outcome=\"replayed\"}")
                .await
                >= 20.0
        })
        .await,
        "the replay started"
    );
    replaying.kill_9().await;
    let q = format!("SELECT count(*) FROM {ks}.t");
    let part = count(&target, &q).await;
    assert!(part > 0, "some records were replayed before the kill");
    println!("{part} of {WRITES} on the target when the replay was killed");

    let up = ProxyProcess::start("127.0.0.85", &src, &tgt, &spool, &async_flags).await;
    let all = eventually(Duration::from_secs(60), || async {
        count(&target, &q).await == i64::from(WRITES)
    })
    .await;
    assert!(
        all,
        "{} of {WRITES} acknowledged writes on the target after the restart",
        count(&target, &q).await
    );
    assert_eq!(up.metric("ferry_proxy_spool_records").await, 0.0);
    up.kill_9().await;
    let _ = std::fs::remove_dir_all(&spool);
}

/// The spool fills under `drop-target-writes`: the application is served,
/// and every acknowledged write is either in the spool or counted as
/// dropped (for the validation to repair), never silently gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_target_writes_keeps_serving_and_counts_every_drop() {
    let tb = testbed(1);
    let src = tb.source_contact_points[0].clone();
    let source = connect(&src).await;
    let ks = keyspace("fault_drop");
    create_keyspace(&source, &ks).await;
    source
        .query_unpaged(
            format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)"),
            &[],
        )
        .await
        .expect("table");
    let spool = std::env::temp_dir().join(format!("ferry-fault-drop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let proxy = ProxyProcess::start(
        "127.0.0.86",
        &src,
        "127.0.0.97",
        &spool,
        &[
            "--mode",
            "async",
            "--async-retries",
            "1",
            "--spool-max-bytes",
            "30000",
            "--spool-full-policy",
            "drop-target-writes",
        ],
    )
    .await;
    let client = connect("127.0.0.86:29042").await;
    let insert = client
        .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare");
    let value = "x".repeat(1000);
    const WRITES: i32 = 100;
    for k in 0..WRITES {
        client
            .execute_unpaged(&insert, (k, value.as_str()))
            .await
            .unwrap_or_else(|e| panic!("write {k} must be served: {e}"));
    }
    let accounted = eventually(Duration::from_secs(20), || async {
        let spooled = proxy.metric("ferry_proxy_spool_records").await;
        let dropped = proxy
            .metric("ferry_proxy_mirrored_writes_total{outcome=\"dropped\"}")
            .await;
        spooled + dropped == f64::from(WRITES)
    })
    .await;
    let dropped = proxy
        .metric("ferry_proxy_mirrored_writes_total{outcome=\"dropped\"}")
        .await;
    assert!(
        accounted,
        "{} spooled + {dropped} dropped of {WRITES}",
        proxy.metric("ferry_proxy_spool_records").await
    );
    assert!(dropped > 0.0, "the spool must have filled");
    assert_eq!(
        count(&source, &format!("SELECT count(*) FROM {ks}.t")).await,
        i64::from(WRITES)
    );
    proxy.kill_9().await;
    let _ = std::fs::remove_dir_all(&spool);
}

/// A write made `USING TTL` while the target is down (async mode) waits in
/// the spool; replayed later, it must expire on the target when it expires
/// on the source, not as much later as it waited. Cassandra counts a TTL
/// from when a node takes the write, so the replay takes the time spent in
/// the spool off each TTL: a literal in the text, a bound `?` or `:name`,
/// in a QUERY, an EXECUTE and the children of a BATCH. The spool is
/// replayed by a restarted proxy, so the time a write was taken survives
/// on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_write_expires_on_the_target_when_it_expires_on_the_source() {
    let tb = testbed(1);
    let (src, tgt) = (
        tb.source_contact_points[0].clone(),
        tb.target_contact_points[0].clone(),
    );
    let source = connect(&src).await;
    let target = connect(&tgt).await;
    let ks = keyspace("fault_ttl");
    create_keyspace(&source, &ks).await;
    create_keyspace(&target, &ks).await;
    ddl_both(
        &source,
        &target,
        &[format!(
            "CREATE TABLE {ks}.t (k int PRIMARY KEY, v text, n int)"
        )],
    )
    .await;
    let spool = std::env::temp_dir().join(format!("ferry-fault-ttl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let async_flags = ["--mode", "async", "--async-retries", "1"];
    let down = ProxyProcess::start("127.0.0.102", &src, "127.0.0.97", &spool, &async_flags).await;
    let client = connect("127.0.0.102:29042").await;
    let run = |cql: String| {
        let client = &client;
        async move {
            client
                .query_unpaged(cql.clone(), &[])
                .await
                .unwrap_or_else(|e| panic!("{cql}: {e}"));
        }
    };
    // Literals, in an INSERT, an UPDATE and a text batch.
    run(format!(
        "INSERT INTO {ks}.t (k, v) VALUES (1, 'literal') USING TTL 600"
    ))
    .await;
    run(format!(
        "UPDATE {ks}.t USING TIMESTAMP 1000 AND TTL 700 SET v = 'update' WHERE k = 2"
    ))
    .await;
    run(format!(
        "BEGIN UNLOGGED BATCH INSERT INTO {ks}.t (k, v) VALUES (3, 'b1') USING TTL 800; \
         UPDATE {ks}.t USING TTL 900 SET v = 'b2' WHERE k = 4; APPLY BATCH"
    ))
    .await;
    // Bound values: a QUERY with values, prepared `?` and `:name`.
    client
        .query_unpaged(
            format!("INSERT INTO {ks}.t (k, v, n) VALUES (?, ?, ?) USING TTL ?"),
            (5, "query values", 7, 1000),
        )
        .await
        .expect("query with values");
    let positional = client
        .prepare(format!(
            "INSERT INTO {ks}.t (k, v) VALUES (?, ?) USING TTL ?"
        ))
        .await
        .expect("prepare");
    client
        .execute_unpaged(&positional, (6, "positional", 1100))
        .await
        .expect("execute");
    let named = client
        .prepare(format!(
            "UPDATE {ks}.t USING TTL :ttl AND TIMESTAMP :ts SET v = :v WHERE k = :k"
        ))
        .await
        .expect("prepare named");
    client
        .execute_unpaged(&named, (1200, 5_000i64, "named", 7))
        .await
        .expect("execute named");
    // A batch of prepared children, one without a TTL (it keeps none).
    let mut batch =
        scylla::statement::batch::Batch::new(scylla::statement::batch::BatchType::Unlogged);
    batch.append_statement(positional.clone());
    batch.append_statement(
        client
            .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
            .await
            .expect("prepare plain"),
    );
    client
        .batch(&batch, ((8, "batch child", 1300), (9, "no ttl")))
        .await
        .expect("batch");
    const WRITES: f64 = 7.0;
    assert!(
        eventually(Duration::from_secs(20), || async {
            down.metric("ferry_proxy_spool_records").await == WRITES
        })
        .await,
        "{} of {WRITES} spooled",
        down.metric("ferry_proxy_spool_records").await
    );
    drop(client);
    down.kill_9().await;
    // The writes wait in the spool; a replay that kept their TTLs whole
    // would leave them this much longer on the target.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let up = ProxyProcess::start("127.0.0.102", &src, &tgt, &spool, &async_flags).await;
    let q = format!("SELECT count(*) FROM {ks}.t");
    assert!(
        eventually(Duration::from_secs(60), || async {
            count(&target, &q).await == 9
        })
        .await,
        "{} of 9 rows on the target after the replay",
        count(&target, &q).await
    );
    let ttls = format!("SELECT k, TTL(v) FROM {ks}.t");
    let on_source = bulk_support::pairs::<i32, Option<i32>>(&source, &ttls).await;
    let on_target = bulk_support::pairs::<i32, Option<i32>>(&target, &ttls).await;
    assert_eq!(on_source.len(), 9, "{on_source:?}");
    for (k, source_ttl) in &on_source {
        let target_ttl = on_target.get(k).copied().flatten();
        match (source_ttl, target_ttl) {
            (None, None) => {}
            (Some(s), Some(t)) => assert!(
                (s - t).abs() <= 1,
                "k={k}: TTL {s} s left on the source, {t} s on the target \
                 (source {on_source:?}, target {on_target:?})"
            ),
            _ => panic!("k={k}: TTL {source_ttl:?} on the source, {target_ttl:?} on the target"),
        }
    }
    assert_eq!(
        on_source.get(&9),
        Some(&None),
        "the child without a TTL keeps none"
    );
    up.kill_9().await;
    let _ = std::fs::remove_dir_all(&spool);
}
