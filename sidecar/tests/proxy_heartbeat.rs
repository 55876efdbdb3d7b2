//! Heartbeats on the proxy's links to the target: a link whose peer stops
//! answering without closing the connection is found and replaced.

mod proxy_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proxy_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay to the target that can go silent: while `frozen`, it stops
/// passing bytes either way but keeps every connection open, as a frozen
/// node or a network partition does.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
}

async fn relay(listen: &str, to: SocketAddr) -> Relay {
    let listener = TcpListener::bind(listen).await.expect("relay bind");
    let addr = listener.local_addr().expect("relay addr");
    let frozen = Arc::new(AtomicBool::new(false));
    let gate = frozen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(to).await else {
                continue;
            };
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pump(ri, wo, gate.clone()));
            tokio::spawn(pump(ro, wi, gate.clone()));
        }
    });
    Relay { addr, frozen }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while frozen.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a freeze are held, not passed.
        while frozen.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn row_on(session: &scylla::client::session::Session, q: &str) -> bool {
    match session.query_unpaged(q, &[]).await {
        Ok(r) => r
            .into_rows_result()
            .map(|r| r.rows_num() == 1)
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_target_link_is_found_by_heartbeat_and_replaced() {
    let tb = testbed(1);
    let source_addr = tb.source_contact_points[0].clone();
    let target_addr = tb.target_contact_points[0].clone();
    let source = connect(&source_addr).await;
    let target = connect(&target_addr).await;
    let ks = keyspace("px_heartbeat");
    create_keyspace(&source, &ks).await;
    create_keyspace(&target, &ks).await;
    ddl_both(
        &source,
        &target,
        &[format!("CREATE TABLE {ks}.kv (k int PRIMARY KEY, v text)")],
    )
    .await;

    let target_socket: SocketAddr = target_addr.parse().expect("target address");
    let relay = relay("127.0.0.57:0", target_socket).await;
    let port = relay.addr.port().to_string();
    let proxy = start_proxy(
        "127.0.0.56",
        &source_addr,
        "127.0.0.57",
        &[
            "--target-port",
            &port,
            "--mode",
            "async",
            "--heartbeat-secs",
            "1",
            "--target-timeout-ms",
            "500",
        ],
    )
    .await;
    let client = connect(&proxy.addr.to_string()).await;
    let write = |k: i32| format!("INSERT INTO {ks}.kv (k, v) VALUES ({k}, 'through the relay')");
    let read = |k: i32| format!("SELECT v FROM {ks}.kv WHERE k = {k}");

    client
        .query_unpaged(write(1), &[])
        .await
        .expect("first write");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !row_on(&target, &read(1)).await {
        assert!(
            Instant::now() < deadline,
            "the first write never reached the target"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The target link goes silent: no FIN, no RST, no answers.
    relay.frozen.store(true, Ordering::Release);
    let heartbeat = "ferry_proxy_target_failures_total{reason=\"heartbeat\"}";
    let deadline = Instant::now() + Duration::from_secs(15);
    while proxy.metric(heartbeat).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no heartbeat failure counted within 15 s of the link going silent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back again: the next write goes over a new link (or via the spool).
    relay.frozen.store(false, Ordering::Release);
    client
        .query_unpaged(write(2), &[])
        .await
        .expect("second write");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !row_on(&target, &read(2)).await {
        assert!(
            Instant::now() < deadline,
            "the write after the link was replaced never reached the target"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(client);
    proxy.stop().await.expect("stop");
}

/// The target's answers delayed past `--target-timeout-ms` (the relay holds
/// them for 3 s against a 500 ms timeout). Async mode: every write is
/// acknowledged and, once the target answers again, on the target (each
/// timed-out write was retried or spooled; a late copy carries the same
/// timestamp). Sync mode: the application is told the target did not take
/// the write, and writes go through again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_delayed_past_the_target_timeout() {
    let tb = testbed(1);
    let source_addr = tb.source_contact_points[0].clone();
    let target_addr = tb.target_contact_points[0].clone();
    let source = connect(&source_addr).await;
    let target = connect(&target_addr).await;
    let ks = keyspace("px_slow_target");
    create_keyspace(&source, &ks).await;
    create_keyspace(&target, &ks).await;
    ddl_both(
        &source,
        &target,
        &[format!("CREATE TABLE {ks}.kv (k int PRIMARY KEY, v text)")],
    )
    .await;
    let target_socket: SocketAddr = target_addr.parse().expect("target address");
    let relay = relay("127.0.0.59:0", target_socket).await;
    let port = relay.addr.port().to_string();
    let proxy_for = |mode: &'static str, ip: &'static str| {
        let port = port.clone();
        let source_addr = source_addr.clone();
        async move {
            start_proxy(
                ip,
                &source_addr,
                "127.0.0.59",
                &[
                    "--target-port",
                    &port,
                    "--mode",
                    mode,
                    "--target-timeout-ms",
                    "500",
                    "--async-retries",
                    "2",
                ],
            )
            .await
        }
    };
    let write = |k: i32| format!("INSERT INTO {ks}.kv (k, v) VALUES ({k}, 'slow')");
    let read = |k: i32| format!("SELECT v FROM {ks}.kv WHERE k = {k}");

    // async
    let proxy = proxy_for("async", "127.0.0.79").await;
    let client = connect(&proxy.addr.to_string()).await;
    client
        .query_unpaged(write(0), &[])
        .await
        .expect("warm-up write");
    // Freeze only once the target link is up and answering: a freeze in
    // the middle of its handshake is another fault (a link that never
    // comes up, counted as unavailable), and made this test flaky.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !row_on(&target, &read(0)).await {
        assert!(
            Instant::now() < deadline,
            "the warm-up write never reached the target"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.frozen.store(true, Ordering::Release);
    for k in 1..=20 {
        client
            .query_unpaged(write(k), &[])
            .await
            .unwrap_or_else(|e| panic!("async write {k} while the target is slow: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert!(
        proxy
            .metric("ferry_proxy_target_failures_total{reason=\"timeout\"}")
            .await
            >= 1.0,
        "the target's silence counted as timeouts: {}",
        metrics
            .lines()
            .filter(|l| l.contains("target_failures")
                || l.contains("mirrored")
                || l.contains("spool_records"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    relay.frozen.store(false, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(60);
    for k in 0..=20 {
        while !row_on(&target, &read(k)).await {
            assert!(
                Instant::now() < deadline,
                "acknowledged write {k} is not on the target"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(client);
    proxy.stop().await.expect("stop");

    // sync
    let proxy = proxy_for("sync", "127.0.0.79").await;
    let client = connect(&proxy.addr.to_string()).await;
    client
        .query_unpaged(write(30), &[])
        .await
        .expect("warm-up write");
    relay.frozen.store(true, Ordering::Release);
    let refused = client.query_unpaged(write(31), &[]).await;
    relay.frozen.store(false, Ordering::Release);
    let err = refused.expect_err("a sync write the target did not answer in time fails");
    assert!(
        err.to_string().contains("target"),
        "the error names the target: {err}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.query_unpaged(write(32), &[]).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "writes never recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(row_on(&target, &read(32)).await);
    proxy.stop().await.expect("stop");
}
