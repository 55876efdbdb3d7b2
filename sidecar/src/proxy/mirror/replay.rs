//! The replayers: each drains a spool to the cluster its writes are owed
//! to (the target; in `target-primary-async`, the source) in order, a
//! window of records at a time, acknowledging them in order.

use super::async_mirror::count_refusal;
use super::target_link::keep_alive;
use super::*;

/// Drains the spool owed to `toward`, forever.
pub async fn run_replayer(ctx: Arc<ProxyContext>, toward: Toward) {
    let spool = ctx.spool_toward(toward).clone();
    let progress = ctx.replay_progress_toward(toward);
    let mut conn: Option<Arc<Upstream>> = None;
    let mut statements = ReplayStatements::default();
    let mut backoff = Duration::from_millis(200);
    // Replays failed in a row: a spool that does not drain is said loudly.
    let mut failed_in_a_row: u32 = 0;
    loop {
        if let Err(e) = spool.sync() {
            error!(toward = toward.name(), error = %e, "syncing the spool");
        }
        update_spool_gauges(&ctx);
        match replay_window(&ctx, toward, &mut conn, &mut statements).await {
            Ok(0) => {
                if spool.is_empty() {
                    progress.progressed();
                }
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(_) => {
                progress.progressed();
                backoff = Duration::from_millis(200);
                failed_in_a_row = 0;
                if spool.is_empty() {
                    info!(
                        toward = toward.name(),
                        "spool drained; that cluster is up to date"
                    );
                }
            }
            Err(ReplayError::Spool(e)) => {
                progress.failed(&e);
                error!(toward = toward.name(), error = %e, "spool read or acknowledgement failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(ReplayError::Target(e)) => {
                progress.failed(&e);
                failed_in_a_row += 1;
                if failed_in_a_row % 20 == 1 {
                    warn!(
                        toward = toward.name(),
                        error = %e,
                        failed_in_a_row,
                        records = spool.records(),
                        "the spool does not drain: replaying its head fails"
                    );
                } else {
                    debug!(error = %e, "spool replay failed; will retry");
                }
                if conn.as_ref().is_some_and(|c| c.is_closed()) {
                    conn = None;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error(transparent)]
    Spool(#[from] crate::proxy::spool::SpoolError),
    #[error(transparent)]
    Target(#[from] MirrorError),
}

/// Replays the spool from its head with up to `--replay-window` records on
/// the wire at once, acknowledging them in order; returns how many were
/// acknowledged before the spool ran dry or a replay failed.
///
/// One at a time, each replay cost a round trip and a write of the head
/// file: a spool that filled during an outage drained at about 1,650
/// records/s (`proxy-bench`), slower than clients can add to it.
///
/// Order does not matter for records that carry a client timestamp (every
/// write the proxy timestamped, and any the client did): the target keeps
/// the newest cell whatever order they arrive in, and replaying one twice
/// after a failure changes nothing. A
/// record without one (a conditional write: Paxos picks its timestamp) goes
/// alone, after everything before it and before anything after it.
async fn replay_window(
    ctx: &Arc<ProxyContext>,
    toward: Toward,
    conn: &mut Option<Arc<Upstream>>,
    statements: &mut ReplayStatements,
) -> Result<usize, ReplayError> {
    let spool = ctx.spool_toward(toward);
    let mut offset = spool.head();
    let mut in_flight = futures::stream::FuturesOrdered::new();
    // What every record in flight shares: protocol version and keyspace.
    let mut window: Option<(u8, Option<String>)> = None;
    // A record that must go alone is in flight: nothing joins it.
    let mut alone = false;
    let mut acked = 0;
    loop {
        while !alone && in_flight.len() < ctx.replay_window {
            let Some((record, next)) = spool.read(offset)? else {
                break;
            };
            let key = (record.version, record.keyspace.clone());
            let must_go_alone = must_replay_alone(&record);
            if !in_flight.is_empty() && (must_go_alone || window.as_ref() != Some(&key)) {
                break;
            }
            if must_go_alone && needs_order(&record) {
                live_mirrors_done(ctx).await;
            }
            let c = replay_connection(ctx, toward, conn, record.version).await?;
            window = Some(key);
            alone = must_go_alone;
            offset = next;
            let ctx = ctx.clone();
            let used = statements.of(&ctx, &record);
            in_flight.push_back(async move {
                replay_one(&ctx, toward, &c, &record, used)
                    .await
                    .map(|()| next)
            });
        }
        let Some(done) = futures::StreamExt::next(&mut in_flight).await else {
            return Ok(acked);
        };
        // A failure drops the window; the next one starts again at the
        // head, the first record not acknowledged.
        let mut next = done?;
        let mut done_now: u64 = 1;
        // Every answer already in is acknowledged with one write of the
        // head file, not one per record.
        while let Some(Some(more)) =
            futures::FutureExt::now_or_never(futures::StreamExt::next(&mut in_flight))
        {
            match more {
                Ok(n) => {
                    next = n;
                    done_now += 1;
                }
                Err(e) => {
                    spool.ack(next, done_now)?;
                    return Err(e.into());
                }
            }
        }
        spool.ack(next, done_now)?;
        acked += done_now as usize;
        if in_flight.is_empty() {
            alone = false;
            window = None;
        }
    }
}

/// Whether a record must be replayed with nothing else in flight: it has
/// no timestamp of its own (its order matters), or one of its statements
/// was prepared in another keyspace than the record's (the shared link
/// switches keyspace to prepare it, which would race with the others).
fn must_replay_alone(record: &SpoolRecord) -> bool {
    !carries_timestamp(record)
        || needs_order(record)
        || record
            .statements
            .iter()
            .any(|s| s.keyspace.is_some() && s.keyspace != record.keyspace)
}

/// Waits (a bounded time) until no write is on its way to the target
/// outside the spool, so a TRUNCATE or conditional write replayed next
/// comes after them, as it did on the source.
pub async fn live_mirrors_done(ctx: &ProxyContext) {
    let deadline = Instant::now() + ctx.target_timeout * (ctx.async_retries + 2);
    while ctx.mirrors_inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether a spooled write's effect depends on its order whatever its
/// timestamp: a conditional write (Paxos gives it the time it is applied)
/// or a TRUNCATE.
fn needs_order(record: &SpoolRecord) -> bool {
    let ordered = |text: &str| matches!(crate::proxy::classify::classify(text), crate::proxy::classify::StatementClass::Write(w) if w.lwt || w.truncate);
    if record.statements.iter().any(|s| ordered(&s.query)) {
        return true;
    }
    let frame = record.request_frame();
    match record.opcode {
        opcode::QUERY => parse_query(&frame).map_or(true, |q| ordered(q.query)),
        opcode::BATCH => parse_batch(&frame).map_or(true, |b| {
            b.children
                .iter()
                .any(|c| matches!(c, BatchChild::Query { text, .. } if ordered(text)))
        }),
        _ => false,
    }
}

/// Whether a spooled write carries its own timestamp (the client's or the
/// proxy's), which makes its replay order free.
fn carries_timestamp(record: &SpoolRecord) -> bool {
    let frame = record.request_frame();
    match record.opcode {
        opcode::QUERY => parse_query(&frame).is_ok_and(|q| q.params.has_timestamp()),
        opcode::EXECUTE => parse_execute(&frame).is_ok_and(|e| e.params.has_timestamp()),
        opcode::BATCH => parse_batch(&frame).is_ok_and(|b| b.params.has_timestamp()),
        _ => false,
    }
}

/// The replayer's own link to `toward`, (re)connected for `version`: to
/// the target with the target's credentials, to the source with the last
/// client's.
async fn replay_connection(
    ctx: &Arc<ProxyContext>,
    toward: Toward,
    conn: &mut Option<Arc<Upstream>>,
    version: u8,
) -> Result<Arc<Upstream>, MirrorError> {
    if let Some(c) = conn {
        if !c.is_closed() && c.version == version {
            return Ok(c.clone());
        }
    }
    let (endpoint, hs) = match toward {
        Toward::Target => (&ctx.target, statement_handshake(ctx)),
        Toward::Source => (&ctx.source, source_handshake(ctx)),
    };
    let hs = Handshake { version, ..hs };
    let c = Upstream::connect(endpoint, &hs, ctx.max_frame_bytes, ctx.target_timeout).await?;
    keep_alive(ctx, &c);
    *conn = Some(c.clone());
    Ok(c)
}

/// The prepared statements spooled records use, for the replayer: those
/// the clients' connections know, else ones rebuilt from the spooled text
/// (after a restart the proxy knows none), kept so each is prepared on the
/// target once rather than once per record. They stay out of the shared
/// map, which must only hold what a client prepared itself (with the
/// markers the proxy fills for it).
#[derive(Default)]
struct ReplayStatements(std::collections::HashMap<Bytes, Arc<PreparedStatement>>);

impl ReplayStatements {
    /// Statements kept at most; then the set starts again.
    const MAX: usize = 10_000;

    fn of(&mut self, ctx: &ProxyContext, record: &SpoolRecord) -> RequestStatements {
        if self.0.len() > Self::MAX {
            self.0.clear();
        }
        record
            .statements
            .iter()
            .map(|s| {
                let stmt = ctx.prepared.get(&s.source_id).unwrap_or_else(|| {
                    self.0
                        .entry(s.source_id.clone())
                        .or_insert_with(|| {
                            Arc::new(PreparedStatement::new(
                                &s.query,
                                s.keyspace.clone(),
                                crate::proxy::classify::classify(&s.query),
                                false,
                            ))
                        })
                        .clone()
                });
                (s.source_id.clone(), stmt)
            })
            .collect()
    }
}

/// Whole seconds since the source took a spooled write, when known.
fn waited_seconds(record: &SpoolRecord) -> Option<i64> {
    let accepted = std::time::UNIX_EPOCH + Duration::from_millis(record.accepted_at_millis?);
    let waited = std::time::SystemTime::now().duration_since(accepted).ok()?;
    Some(waited.as_secs() as i64)
}

async fn replay_one(
    ctx: &Arc<ProxyContext>,
    toward: Toward,
    c: &Upstream,
    record: &SpoolRecord,
    statements: RequestStatements,
) -> Result<(), MirrorError> {
    let (opcode, body) =
        match waited_seconds(record).map(|waited| super::spooled_ttl::lower_ttls(record, waited)) {
            Some(Ok(Some(lowered))) => lowered,
            Some(Err(e)) => {
                // Sent as it was, the target refuses it or takes it as the
                // source did; either way its TTL cannot be made worse.
                debug!(error = %e, "a spooled write's TTLs could not be read; replayed as it was");
                (record.opcode, record.body.clone())
            }
            _ => (record.opcode, record.body.clone()),
        };
    // An EXECUTE turned into a QUERY needs no prepared statement.
    let statements = if opcode == record.opcode {
        statements
    } else {
        RequestStatements::new()
    };
    let req = MirrorRequest {
        version: record.version,
        flags: record.flags,
        opcode,
        body,
        keyspace: record.keyspace.as_deref().map(Arc::from),
        statements,
        idempotent: true,
    };
    let started = Instant::now();
    let reply = match send_toward(ctx, toward, c, &req, true).await {
        Ok(reply) => reply,
        Err(e) if e.is_refusal() => {
            // Retrying it at the head of the spool would hold back every
            // write behind it, for ever.
            count_refusal(ctx, &e, req.keyspace.as_deref());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    ctx.metrics
        .replay_latency
        .observe(started.elapsed().as_secs_f64());
    if reply.opcode == opcode::ERROR && !already_exists(&reply) {
        if is_retryable_error(&reply) {
            return Err(MirrorError::Upstream(UpstreamError::Handshake(
                describe_error(&reply),
            )));
        }
        // Refused for good (e.g. table dropped): retrying would block the
        // spool forever; count it and move on.
        ctx.metrics
            .mirrored_writes
            .with_label_values(&["rejected"])
            .inc();
        warn!(toward = toward.name(), error = %describe_error(&reply), "a spooled write was refused; skipped");
        return Ok(());
    }
    ctx.metrics
        .mirrored_writes
        .with_label_values(&["replayed"])
        .inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::request::tests::query_body;

    fn query_record(body: Bytes, keyspace: Option<&str>) -> SpoolRecord {
        SpoolRecord {
            version: 4,
            opcode: opcode::QUERY,
            flags: 0,
            keyspace: keyspace.map(str::to_owned),
            accepted_at_millis: None,
            statements: Vec::new(),
            body,
        }
    }

    #[test]
    fn only_timestamped_writes_in_one_keyspace_share_the_replay_window() {
        let text = "INSERT INTO t (k) VALUES (1)";
        let plain = query_body(4, text, 0, &[]);
        let timestamped = stamped_query(text);
        assert!(carries_timestamp(&timestamped));
        assert!(!must_replay_alone(&timestamped));

        // A conditional write has no timestamp: its order matters.
        let conditional = query_record(plain, Some("ks"));
        assert!(!carries_timestamp(&conditional));
        assert!(must_replay_alone(&conditional));

        // A statement prepared in another keyspace needs the link to switch.
        let mut elsewhere = stamped_query(text);
        elsewhere.statements.push(SpooledStatement {
            source_id: Bytes::from_static(&[1; 16]),
            keyspace: Some("other".into()),
            query: text.into(),
        });
        assert!(must_replay_alone(&elsewhere));
        elsewhere.statements[0].keyspace = Some("ks".into());
        assert!(!must_replay_alone(&elsewhere));

        // Garbage is never reordered.
        let garbage = query_record(Bytes::from_static(b"\x00\x00"), None);
        assert!(must_replay_alone(&garbage));
    }

    fn stamped_query(text: &str) -> SpoolRecord {
        let plain = query_body(4, text, 0, &[]);
        let layout = parse_query(&Frame {
            version: 4,
            response: false,
            flags: 0,
            stream: 0,
            opcode: opcode::QUERY,
            body: plain.clone(),
        })
        .expect("query")
        .params;
        query_record(
            crate::proxy::request::with_timestamp(&plain, &layout, 1_700_000_000_000_000),
            Some("ks"),
        )
    }

    /// A conditional write whose driver sent a client timestamp still gets
    /// its write time from Paxos when replayed, and a TRUNCATE removes what
    /// came before it: neither may be replayed beside other records, even
    /// with a timestamp in the request.
    #[test]
    fn conditional_writes_and_truncates_are_replayed_alone_even_with_a_timestamp() {
        let lwt = stamped_query("INSERT INTO t (k) VALUES (1) IF NOT EXISTS");
        assert!(carries_timestamp(&lwt));
        assert!(must_replay_alone(&lwt));
        let truncate = stamped_query("TRUNCATE ks.t");
        assert!(must_replay_alone(&truncate));
        // The same through a prepared statement.
        let mut prepared = query_record(Bytes::new(), Some("ks"));
        prepared.opcode = opcode::EXECUTE;
        prepared.statements.push(SpooledStatement {
            source_id: Bytes::from_static(&[2; 16]),
            keyspace: Some("ks".into()),
            query: "UPDATE t SET v = ? WHERE k = ? IF v = ?".into(),
        });
        assert!(must_replay_alone(&prepared));
        let plain = stamped_query("INSERT INTO t (k) VALUES (1)");
        assert!(!must_replay_alone(&plain));
    }
}
