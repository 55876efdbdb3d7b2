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
