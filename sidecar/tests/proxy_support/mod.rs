//! Shared helpers of the proxy integration tests: start an in-process proxy
//! on its own loopback address, connect the scylla driver through it or
//! directly to a cluster.
#![allow(dead_code)]

pub mod outage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_sidecar::proxy::{self, ProxyArgs};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use tokio::sync::oneshot;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ProxyArgs,
}

/// A proxy running inside the test process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub spool_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Proxy {
    /// Stops it gracefully (as SIGTERM does) and waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await?,
            None => Ok(()),
        }
    }

    /// GETs an admin path; returns (status line, body).
    pub async fn admin_get(&self, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("admin connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("admin write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("admin read");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (
            head.lines().next().unwrap_or("").to_owned(),
            body.to_owned(),
        )
    }

    /// Value of a metric line starting with `prefix` (summed over matches).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn testbed(nodes: u8) -> ferry_e2e::testbed::Testbed {
    ferry_e2e::testbed::cassandra(nodes).expect("the Cassandra test bed must start")
}

/// The host of one `host:port` contact point; a list of contact points
/// (which the proxy takes for its target) is passed as it is.
fn host(contact: &str) -> String {
    if contact.contains(',') {
        return contact.to_owned();
    }
    contact
        .rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .unwrap_or_else(|| contact.to_owned())
}

/// Starts a proxy on `ip:29042` (admin on `ip:28000`) in front of `source`.
pub async fn start_proxy(ip: &str, source: &str, target: &str, extra: &[&str]) -> Proxy {
    let spool_dir =
        std::env::temp_dir().join(format!("ferry-proxy-test-{ip}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool_dir);
    start_proxy_with_spool(ip, source, target, extra, spool_dir).await
}

pub async fn start_proxy_with_spool(
    ip: &str,
    source: &str,
    target: &str,
    extra: &[&str],
    spool_dir: PathBuf,
) -> Proxy {
    let spool = spool_dir.display().to_string();
    let mut argv: Vec<String> = vec![
        "proxy".into(),
        host(source),
        host(target),
        "--proxy-address".into(),
        ip.into(),
        "--admin-address".into(),
        ip.into(),
        "--spool-dir".into(),
        spool,
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = Cli::try_parse_from(argv)
        .expect("valid proxy arguments")
        .args;
    let addr: SocketAddr = format!("{ip}:{}", args.proxy_port)
        .parse()
        .expect("proxy addr");
    let admin: SocketAddr = format!("{ip}:{}", args.admin_port)
        .parse()
        .expect("admin addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(proxy::run_until(args, async move {
        let _ = rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if task.is_finished() {
            let outcome = task.await;
            panic!("proxy exited at start: {outcome:?}");
        }
        assert!(Instant::now() < deadline, "proxy did not listen on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Proxy {
        addr,
        admin,
        spool_dir,
        stop: Some(tx),
        task: Some(task),
    }
}

pub async fn connect(contact: &str) -> Session {
    SessionBuilder::new()
        .known_node(contact)
        .connection_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap_or_else(|e| panic!("connecting to {contact}: {e}"))
}

/// A keyspace name unique to this test run.
pub fn keyspace(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}", std::process::id(), nanos % 100_000)
}

/// Creates `ks` on a cluster (SimpleStrategy, RF 1).
pub async fn create_keyspace(session: &Session, ks: &str) {
    session
        .query_unpaged(
            format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("creating {ks}: {e}"));
}

/// Runs the same DDL on both clusters directly (DDL is not mirrored).
pub async fn ddl_both(source: &Session, target: &Session, statements: &[String]) {
    for s in statements {
        source
            .query_unpaged(s.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("{s} on source: {e}"));
        target
            .query_unpaged(s.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("{s} on target: {e}"));
    }
    source
        .await_schema_agreement()
        .await
        .expect("schema agreement");
}

/// The single `count(*)` a query returns.
pub async fn count(s: &Session, q: &str) -> i64 {
    let rows = s
        .query_unpaged(q, &[])
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .into_rows_result()
        .expect("rows");
    rows.rows::<(i64,)>()
        .expect("typed")
        .next()
        .expect("one row")
        .expect("row")
        .0
}

/// Waits until `check` holds, or `limit` passes; returns whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
