//! The admin endpoint: `/metrics` (Prometheus text), `/livez`, `/readyz`,
//! `/state` (JSON, [`ProxyState`]: what the operator reads before it evicts
//! the pod) and `/drain` (the pod's preStop hook: wait until nothing is owed
//! to the target).
//! A tiny HTTP/1.1 responder: one request per connection, no keep-alive,
//! which is all a scraper or a kubelet probe needs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use super::mirror::ProxyContext;
use super::state::ProxyState;

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
    let spool_full = ctx.spool.is_full() || ctx.source_spool.is_full();
    let ready = source && !spool_full && !ctx.shutting_down.load(Ordering::Acquire);
    let detail = format!(
        "source_reachable={source} target_reachable={target} mode={mode:?} spool_records={} source_spool_records={} spool_full={spool_full} shutting_down={}\n",
        ctx.spool.records(),
        ctx.source_spool.records(),
        ctx.shutting_down.load(Ordering::Acquire)
    );
    (ready, detail)
}

/// Longest `/drain` wait a caller may ask for.
const MAX_DRAIN: Duration = Duration::from_secs(3600);

/// Waits until the proxy owes the target nothing (the spool is empty and no
/// write is on its way), nor the source (`target-primary-async`'s spool),
/// or `limit` passes; whether it did, and what is left. The pod's preStop hook calls it, so that an evicted pod does not
/// take spooled writes with it while the target can still take them.
pub async fn drain(ctx: &ProxyContext, limit: Duration) -> (bool, String) {
    let deadline = tokio::time::Instant::now() + limit.min(MAX_DRAIN);
    loop {
        let records = ctx.spool.records();
        let for_source = ctx.source_spool.records();
        let in_flight = ctx.mirrors_inflight.load(Ordering::Acquire);
        if records == 0 && for_source == 0 && in_flight == 0 {
            return (true, "drained: nothing owed to the target\n".to_owned());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(
                records,
                for_source,
                in_flight,
                "drain deadline passed with writes still owed; the validation must repair them"
            );
            return (
                false,
                format!("not drained: spool_records={records} source_spool_records={for_source} mirrors_in_flight={in_flight}\n"),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `timeout=<seconds>` of a request path's query, if any.
fn timeout_param(path: &str) -> Option<Duration> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
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
    let target = request.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    let (status, content_type, body) = match path {
        "/drain" => {
            let limit = timeout_param(target).unwrap_or(Duration::from_secs(60));
            let (drained, detail) = drain(ctx, limit).await;
            (
                if drained {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                },
                "text/plain",
                detail,
            )
        }
        "/metrics" => {
            ctx.metrics
                .prepared_cache_size
                .set(ctx.prepared.len() as i64);
            super::mirror::update_spool_gauges(ctx);
            ("200 OK", "text/plain; version=0.0.4", ctx.metrics.render())
        }
        "/livez" => ("200 OK", "text/plain", "ok\n".to_owned()),
        "/state" => match serde_json::to_string(&ProxyState::of(ctx)) {
            Ok(json) => ("200 OK", "application/json", json + "\n"),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain",
                format!("state: {e}\n"),
            ),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_timeout_comes_from_the_query() {
        assert_eq!(
            timeout_param("/drain?timeout=25"),
            Some(Duration::from_secs(25))
        );
        assert_eq!(
            timeout_param("/drain?x=1&timeout=7"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(timeout_param("/drain"), None);
        assert_eq!(timeout_param("/drain?timeout=soon"), None);
    }
}
