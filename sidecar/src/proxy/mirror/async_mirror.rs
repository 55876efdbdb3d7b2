//! `async` mode: a write the source may hold goes to the target in the
//! background, retried, then spooled; bounded by `--mirror-max-in-flight`
//! and, under `reject-writes`, by the room the spool promised it.

use super::*;

/// Whether the source's answer to a write means the write may be on the
/// source, so that async mode must mirror it: a result (for a conditional
/// write, one that applied), or a write timeout or failure (the outcome is
/// unknown and some replica may hold it). Any other error means the source
/// refused it, and the target must not get it either.
pub fn source_may_hold(answer: &Frame, conditional: bool) -> bool {
    match answer.opcode {
        opcode::RESULT => !(conditional && lwt_applied(answer) == Some(false)),
        opcode::ERROR => matches!(
            answer.error_code(),
            Some(error_code::WRITE_TIMEOUT | error_code::WRITE_FAILURE)
        ),
        _ => false,
    }
}

struct InflightGuard<'a>(&'a AtomicUsize);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place among the async mirrors in flight; waits (and counts the wait)
/// when all `--mirror-max-in-flight` places are taken, which holds back the
/// client connection asking for it.
pub async fn mirror_permit(ctx: &ProxyContext) -> Option<OwnedSemaphorePermit> {
    match ctx.mirror_permits.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            ctx.metrics.mirror_waits.inc();
            // The semaphore is never closed, so this only fails if that
            // changes; then the write goes on unbounded rather than lost.
            ctx.mirror_permits.clone().acquire_owned().await.ok()
        }
    }
}

/// Sends `req` in the background to the cluster it is owed to (`toward`,
/// over `link`: the target in `async` mode; in `target-primary-async`, the
/// source once the target took it); retries with backoff, then spools it.
/// `hold` (its place in flight and its room in the spool) is kept until
/// the write is there or in the spool.
pub fn mirror_async(
    ctx: Arc<ProxyContext>,
    toward: Toward,
    link: Arc<TargetLink>,
    req: MirrorRequest,
    hold: MirrorHold,
) {
    ctx.mirrors_inflight.fetch_add(1, Ordering::AcqRel);
    // Boxed before it is spawned: tokio moves a task's future several
    // times as it spawns and finishes it (about ten copies), so a pointer
    // is cheaper to move than the future's ~1 KiB, allocation included.
    tokio::spawn(Box::pin(mirror_task(ctx, toward, link, req, hold)));
}

/// The work of one async mirror, counted in `mirrors_inflight` (which the
/// caller raised) until it ends.
async fn mirror_task(
    ctx: Arc<ProxyContext>,
    toward: Toward,
    link: Arc<TargetLink>,
    req: MirrorRequest,
    hold: MirrorHold,
) {
    let _guard = InflightGuard(&ctx.mirrors_inflight);
    deliver(&ctx, toward, &link, &req, hold).await;
}

/// Puts `req` on the cluster it is owed to (`toward`, over `link`),
/// retrying with backoff, else in that cluster's spool; returns its answer
/// when it took the write. While older writes wait in the spool, `req`
/// queues behind them.
pub async fn deliver(
    ctx: &ProxyContext,
    toward: Toward,
    link: &TargetLink,
    req: &MirrorRequest,
    hold: MirrorHold,
) -> Option<Frame> {
    let _permit = hold.permit;
    let room = hold.room;
    // The source has just taken the write: its TTLs count from about now.
    let accepted_at = std::time::SystemTime::now();
    if req.idempotent && !ctx.spool_toward(toward).is_empty() {
        spool_request(
            ctx,
            toward,
            req,
            accepted_at,
            "spool not empty",
            room.as_ref(),
        );
        return None;
    }
    let mut delay = ctx.retry_backoff;
    let mut last_error = String::new();
    for attempt in 0..ctx.async_retries.max(1) {
        let result = match link.get().await {
            Ok(conn) => send_toward(ctx, toward, &conn, req, false).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(reply) if reply.opcode != opcode::ERROR || already_exists(&reply) => {
                ctx.metrics.mirrored_ok();
                return Some(reply);
            }
            Ok(reply) if !is_retryable_error(&reply) => {
                ctx.metrics
                    .mirrored_writes
                    .with_label_values(&["rejected"])
                    .inc();
                ctx.metrics
                    .target_failures
                    .with_label_values(&["rejected"])
                    .inc();
                warn!(toward = toward.name(), error = %describe_error(&reply), "a mirrored write was refused; not retried");
                return None;
            }
            Ok(reply) => {
                ctx.metrics
                    .target_failures
                    .with_label_values(&["error"])
                    .inc();
                last_error = describe_error(&reply);
            }
            Err(e) if e.is_refusal() => {
                count_refusal(ctx, &e, req.keyspace.as_deref());
                return None;
            }
            Err(e) => {
                ctx.metrics
                    .target_failures
                    .with_label_values(&[e.reason()])
                    .inc();
                last_error = e.to_string();
            }
        }
        debug!(attempt, error = %last_error, "mirrored write failed");
        if !req.idempotent || ctx.shutting_down.load(Ordering::Acquire) {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2);
    }
    if !req.idempotent {
        // Counters: a retry could count twice, so the policy is one try.
        ctx.metrics
            .mirrored_writes
            .with_label_values(&["counter_lost"])
            .inc();
        error!(toward = toward.name(), error = %last_error, "counter update not mirrored (counters are never retried)");
        return None;
    }
    spool_request(ctx, toward, req, accepted_at, &last_error, room.as_ref());
    None
}

/// A write the target refused for good (its PREPARE was refused: a
/// keyspace, table or column missing there). It costs that write only, and
/// loudly: every later write goes on.
pub(super) fn count_refusal(ctx: &ProxyContext, e: &MirrorError, keyspace: Option<&str>) {
    ctx.metrics
        .mirrored_writes
        .with_label_values(&["rejected"])
        .inc();
    ctx.metrics
        .target_failures
        .with_label_values(&["rejected"])
        .inc();
    warn!(error = %e, keyspace = keyspace.unwrap_or(""), "target refused a mirrored write; not retried (the target lacks what it needs?)");
}

pub(super) fn spool_request(
    ctx: &ProxyContext,
    toward: Toward,
    req: &MirrorRequest,
    accepted_at: std::time::SystemTime,
    why: &str,
    room: Option<&Reservation>,
) {
    let record = SpoolRecord {
        version: req.version,
        opcode: req.opcode,
        flags: req.flags,
        keyspace: req.keyspace.as_deref().map(str::to_owned),
        accepted_at_millis: accepted_at
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64),
        statements: req
            .statements
            .iter()
            .map(|(id, s)| SpooledStatement {
                source_id: id.clone(),
                keyspace: s.keyspace.clone(),
                query: s.query.to_string(),
            })
            .collect(),
        body: req.body.clone(),
    };
    match ctx.spool_toward(toward).append(&record, room) {
        Ok(()) => {
            ctx.metrics
                .mirrored_writes
                .with_label_values(&["spooled"])
                .inc();
            debug!(
                toward = toward.name(),
                reason = why,
                "mirrored write spooled"
            );
        }
        Err(e) => {
            ctx.metrics.spool_full.inc();
            ctx.metrics
                .mirrored_writes
                .with_label_values(&["dropped"])
                .inc();
            error!(toward = toward.name(), error = %e, "SPOOL FULL: mirrored write dropped; that cluster now diverges until validated");
        }
    }
    update_spool_gauges(ctx);
}

pub fn update_spool_gauges(ctx: &ProxyContext) {
    ctx.metrics.spool_records.set(ctx.spool.records() as i64);
    ctx.metrics.spool_bytes.set(ctx.spool.bytes() as i64);
    let stalled = ctx.replay_progress.stalled_for(ctx.spool.records());
    ctx.metrics
        .spool_stalled_seconds
        .set(stalled.as_secs() as i64);
    ctx.metrics
        .source_spool_records
        .set(ctx.source_spool.records() as i64);
    ctx.metrics
        .source_spool_bytes
        .set(ctx.source_spool.bytes() as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `make` returns, without running it.
    fn size_of_future<A, F, Fut>(_make: F) -> usize
    where
        F: Fn(A) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every async mirror's future (`mirror_task`'s) is built, moved into
    /// a box and polled once per write; the rare paths (connecting,
    /// preparing, switching keyspace) are boxed apart so their state is not
    /// part of it. With them inline it was 2,504 bytes, and spawning it
    /// unboxed copied it some ten times: 14 % of a mirrored request's
    /// instructions.
    #[test]
    fn an_async_mirror_s_future_holds_no_connect_prepare_or_keyspace_state() {
        let mirror = size_of_future(
            |(ctx, toward, link, req, hold): (
                Arc<ProxyContext>,
                Toward,
                Arc<TargetLink>,
                MirrorRequest,
                MirrorHold,
            )| mirror_task(ctx, toward, link, req, hold),
        );
        let link_get = size_of_future(|link: Arc<TargetLink>| async move {
            let _ = link.get().await;
        });
        let switch = size_of_future(
            |(ctx, conn): (Arc<ProxyContext>, Arc<Upstream>)| async move {
                let _ = switch_keyspace_to(&ctx, &conn, Some("ks")).await;
            },
        );
        assert!(
            link_get <= 128,
            "TargetLink::get's future: {link_get} bytes"
        );
        assert!(switch <= 128, "switch_keyspace_to's future: {switch} bytes");
        assert!(mirror <= 1_200, "an async mirror's future: {mirror} bytes");
    }
}
