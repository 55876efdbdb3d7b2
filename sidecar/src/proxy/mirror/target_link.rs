//! A client connection's link to the target (or the proxy's own link to
//! the source): the proxy's own handshake, reconnecting with backoff,
//! heartbeats.

use super::*;

/// A client connection's link to the target; or, for requests the proxy
/// makes of the source itself on a client's behalf, to the source.
pub struct TargetLink {
    ctx: Arc<ProxyContext>,
    endpoint: Endpoint,
    handshake: Mutex<Option<Handshake>>,
    conn: tokio::sync::Mutex<Option<Arc<Upstream>>>,
    last_failure: Mutex<Option<Instant>>,
}

/// Wait this long after a failed connect before trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

impl TargetLink {
    pub fn new(ctx: Arc<ProxyContext>) -> Self {
        let endpoint = ctx.target.clone();
        Self::to(ctx, endpoint)
    }

    /// A link of the proxy's own to the source node.
    pub fn to_source(ctx: Arc<ProxyContext>) -> Self {
        let endpoint = ctx.source.clone();
        Self::to(ctx, endpoint)
    }

    fn to(ctx: Arc<ProxyContext>, endpoint: Endpoint) -> Self {
        Self {
            ctx,
            endpoint,
            handshake: Mutex::new(None),
            conn: tokio::sync::Mutex::new(None),
            last_failure: Mutex::new(None),
        }
    }

    pub fn set_handshake(&self, hs: Handshake) {
        *self.handshake.lock().unwrap_or_else(|p| p.into_inner()) = Some(hs);
    }

    pub fn set_keyspace(&self, ks: &str) {
        if let Some(hs) = self
            .handshake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            hs.keyspace = Some(ks.to_owned());
        }
    }

    /// The live connection, if there is one; never connects.
    pub async fn connected(&self) -> Option<Arc<Upstream>> {
        live(&*self.conn.lock().await)
    }

    /// The live connection, connecting (with backoff) when needed.
    ///
    /// The usual case, a live connection, is answered without awaiting;
    /// the connect path is boxed, because its handshake's state (some
    /// 1.6 KiB) would otherwise be part of every caller's future, and an
    /// async mirror's future is copied several times as it is spawned.
    pub async fn get(&self) -> Result<Arc<Upstream>, UpstreamError> {
        if let Some(c) = self.conn.try_lock().ok().and_then(|slot| live(&slot)) {
            return Ok(c);
        }
        Box::pin(self.get_or_connect()).await
    }

    async fn get_or_connect(&self) -> Result<Arc<Upstream>, UpstreamError> {
        let mut guard = self.conn.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(c) = live(&guard) {
            return Ok(c);
        }
        if let Some(at) = *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < RECONNECT_BACKOFF {
                return Err(UpstreamError::Closed);
            }
        }
        let hs = self
            .handshake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| UpstreamError::Handshake("client handshake not finished".into()))?;
        match Upstream::connect(
            &self.endpoint,
            &hs,
            self.ctx.max_frame_bytes,
            self.ctx.target_timeout,
        )
        .await
        {
            Ok(c) => {
                keep_alive(&self.ctx, &c);
                *guard = Some(c.clone());
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(c)
            }
            Err(e) => {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                Err(e)
            }
        }
    }
}

/// The connection in a link's slot, unless there is none or it closed.
fn live(slot: &Option<Arc<Upstream>>) -> Option<Arc<Upstream>> {
    slot.as_ref().filter(|c| !c.is_closed()).cloned()
}

/// Heartbeats on a new target link (`--heartbeat-secs`); a failed one counts
/// as `target_failures_total{reason="heartbeat"}`.
pub(super) fn keep_alive(ctx: &ProxyContext, link: &Arc<Upstream>) {
    if let Some(every) = ctx.heartbeat {
        let failures = ctx.metrics.target_failures.clone();
        link.keep_alive(every, ctx.target_timeout, move || {
            failures.with_label_values(&["heartbeat"]).inc();
        });
    }
}
