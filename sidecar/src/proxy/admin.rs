//! The admin endpoint: `/metrics` (Prometheus text), `/livez`, `/readyz`.
//! A tiny HTTP/1.1 responder: one request per connection, no keep-alive,
//! which is all a scraper or a kubelet probe needs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use super::mirror::ProxyContext;

/// Readiness: the proxy can serve its clients. The source is reachable, the
/// spool is not full and the proxy is not shutting down. The target's state
/// is reported in the body but does not decide: the proxy's readiness is the
/// source pod's, and a target outage must not make the source cluster look
/// down (every pod unready would empty Services, block every disruption and
/// stop reads that do not need the target). In sync mode writes fail while
/// the target is down; the metrics say so.
pub fn readiness(ctx: &ProxyContext) -> (bool, String) {
    let source = ctx.source_reachable.load(Ordering::Acquire);
    let target = ctx.target_reachable.load(Ordering::Acquire);
    let mode = ctx.mode();
    let spool_full = ctx.spool.is_full();
    let ready = source && !spool_full && !ctx.shutting_down.load(Ordering::Acquire);
    let detail = format!(
        "source_reachable={source} target_reachable={target} mode={mode:?} spool_records={} spool_full={spool_full} shutting_down={}\n",
        ctx.spool.records(),
        ctx.shutting_down.load(Ordering::Acquire)
    );
    (ready, detail)
}

pub async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &ctx).await {
                debug!(error = %e, "admin request failed");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, ctx: &ProxyContext) -> std::io::Result<()> {
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "admin read"))??;
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/metrics" => {
            ctx.metrics
                .prepared_cache_size
                .set(ctx.prepared.len() as i64);
            super::mirror::update_spool_gauges(ctx);
            ("200 OK", "text/plain; version=0.0.4", ctx.metrics.render())
        }
        "/livez" => ("200 OK", "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let (ready, detail) = readiness(ctx);
            (
                if ready {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                },
                "text/plain",
                detail,
            )
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Probes TCP reachability of both upstreams every two seconds.
pub async fn probe_upstreams(ctx: Arc<ProxyContext>) {
    loop {
        let source = ctx.source.open().await.is_ok();
        let target = ctx.target.open().await.is_ok();
        ctx.source_reachable.store(source, Ordering::Release);
        ctx.target_reachable.store(target, Ordering::Release);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
