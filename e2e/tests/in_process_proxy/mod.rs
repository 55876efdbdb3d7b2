//! A proxy run in the test's own process (`proxy::run_until`), on a
//! loopback address of its own, with its admin port there too; shared by
//! the tests that need real proxies without pods (conformance, the
//! operator's eviction gate).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_sidecar::proxy::state::ProxyState;
use ferry_sidecar::proxy::{self, ProxyArgs};
use tokio::sync::oneshot;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ProxyArgs,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Proxy {
    pub async fn start(ip: &str, source: &str, target: &str, extra: &[&str]) -> Proxy {
        let spool =
            std::env::temp_dir().join(format!("ferry-test-spool-{ip}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&spool);
        let mut argv: Vec<String> = vec![
            "proxy".into(),
            source.into(),
            target.into(),
            "--proxy-address".into(),
            ip.into(),
            "--admin-address".into(),
            ip.into(),
            "--spool-dir".into(),
            spool.display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = Cli::try_parse_from(argv).expect("proxy arguments").args;
        let addr: SocketAddr = format!("{ip}:{}", args.proxy_port).parse().expect("addr");
        let admin: SocketAddr = format!("{ip}:{}", args.admin_port).parse().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy::run_until(args, async move {
            let _ = rx.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if task.is_finished() {
                panic!("proxy on {ip} exited at start: {:?}", task.await);
            }
            assert!(Instant::now() < deadline, "proxy did not listen on {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Proxy {
            addr,
            admin,
            stop: Some(tx),
            task: Some(task),
        }
    }

    #[allow(dead_code)]
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await?,
            None => Ok(()),
        }
    }

    /// The whole answer of the admin endpoint to `GET path`.
    async fn admin_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("admin connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("admin write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("admin read");
        out
    }

    /// Sum of the `/metrics` lines starting with `prefix`.
    #[allow(dead_code)]
    pub async fn metric(&self, prefix: &str) -> f64 {
        self.admin_get("/metrics")
            .await
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// What the proxy serves on `/state`.
    #[allow(dead_code)]
    pub async fn state(&self) -> ProxyState {
        let out = self.admin_get("/state").await;
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("/state: {e}: {out}"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
