//! Sending writes to the target: the request as the target gets it,
//! prepared-id mapping with transparent re-prepare (here); the shared
//! context (`context`), the per-connection link (`target_link`), async
//! mode's retries and spooling (`async_mirror`), a conditional write the
//! other side did not apply sent again (`conditional`), and the replayer
//! that drains the spool in order (`replay`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, info, warn};

use super::config::{MirrorFilter, Mode, ModeCell, SpoolFullPolicy};
use super::frame::{error_code, opcode, Frame};
use super::metrics::Metrics;
use super::peers::PeerMap;
use super::prepared::{parse_prepared_result, PreparedCache, PreparedStatement, TargetPrepared};
use super::request::{
    parse_batch, parse_execute, parse_query, replace_short_bytes, BatchChild, ShortBytesEdit,
};
use super::result::lwt_applied;
use super::spool::{Reservation, Spool, SpoolRecord, SpooledStatement};
use super::upstream::{describe_error, Endpoint, Handshake, Upstream, UpstreamError};
use super::wire::WireError;

mod async_mirror;
mod conditional;
mod context;
mod progress;
mod replay;
mod spooled_ttl;
mod target_link;

pub use async_mirror::{
    deliver, mirror_async, mirror_permit, source_may_hold, update_spool_gauges,
};
pub use conditional::until_applied;
pub use context::{MirrorHold, ProxyContext, SpoolFull, Toward};
pub use progress::ReplayProgress;
pub use replay::live_mirrors_done;
pub use replay::run_replayer;
pub use target_link::TargetLink;

/// The prepared statements a request executes, with the ids the client
/// sent: one for an EXECUTE (kept inline, no allocation), several for a
/// BATCH, none for a QUERY.
pub type RequestStatements = SmallVec<[(Bytes, Arc<PreparedStatement>); 1]>;

/// A write (or target-served read) as it will be sent to the target.
#[derive(Debug, Clone)]
pub struct MirrorRequest {
    pub version: u8,
    pub flags: u8,
    pub opcode: u8,
    /// Body with source ids (and the pinned timestamp).
    pub body: Bytes,
    /// The client connection's keyspace, shared with the connection: a
    /// mirrored write does not copy it.
    pub keyspace: Option<Arc<str>>,
    /// Prepared statements the body refers to, by source id.
    pub statements: RequestStatements,
    /// False for counter updates: never retried or replayed.
    pub idempotent: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The target did not prepare a statement. `refused`: it answered
    /// with an error that retrying cannot change (a keyspace, table or
    /// column it lacks), so the write is refused, not delayed.
    #[error("preparing on the target: {message}")]
    Prepare { message: String, refused: bool },
    #[error("request body: {0}")]
    Body(#[from] WireError),
}

impl MirrorError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Upstream(UpstreamError::Timeout(_)) => "timeout",
            Self::Upstream(_) => "unavailable",
            Self::Prepare { .. } => "prepare",
            Self::Body(_) => "malformed",
        }
    }

    /// Whether the target refused the request for good: sending it again
    /// would be refused again, so it must be counted and skipped, never
    /// retried at the head of the spool.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Prepare { refused: true, .. })
    }
}

/// Prepares `stmt` on `conn` and records the target's id.
async fn prepare_on_target(
    ctx: &ProxyContext,
    conn: &Upstream,
    stmt: &PreparedStatement,
    switch_keyspace: bool,
) -> Result<TargetPrepared, MirrorError> {
    let keyspace = stmt.keyspace.as_deref();
    let current = conn
        .keyspace
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let elsewhere = keyspace.is_some() && current.as_deref() != keyspace;
    let reply = if conn.version >= 5 || switch_keyspace || !elsewhere {
        prepare_in_its_keyspace(ctx, conn, stmt).await?
    } else {
        // The statement's keyspace is not the link's (the client switched
        // with USE since): prepare it on a connection of its own in that
        // keyspace, to the same node; the link must keep its keyspace for
        // the client's other requests.
        let hs = Handshake {
            version: conn.version,
            keyspace: keyspace.map(str::to_owned),
            ..statement_handshake(ctx)
        };
        let own = Upstream::connect(
            &ctx.target.only(conn.host),
            &hs,
            ctx.max_frame_bytes,
            ctx.target_timeout,
        )
        .await?;
        let reply = own.prepare(&stmt.query, None, ctx.target_timeout).await;
        reply?
    };
    let t = prepared_id(&reply)?;
    stmt.set_target(t.clone(), conn.host);
    Ok(t)
}

/// PREPAREs `stmt` on `conn` in the keyspace it was prepared in: v5 names
/// it in the PREPARE itself; before v5 the link switches to it first.
async fn prepare_in_its_keyspace(
    ctx: &ProxyContext,
    conn: &Upstream,
    stmt: &PreparedStatement,
) -> Result<Frame, MirrorError> {
    let keyspace = stmt.keyspace.as_deref();
    if conn.version >= 5 {
        return Ok(conn
            .prepare(&stmt.query, keyspace, ctx.target_timeout)
            .await?);
    }
    switch_keyspace_to(ctx, conn, keyspace).await?;
    Ok(conn.prepare(&stmt.query, None, ctx.target_timeout).await?)
}

/// The id (and v5 result metadata id) a PREPARE's answer gives; an ERROR
/// answer is a refusal when retrying cannot change it.
fn prepared_id(reply: &Frame) -> Result<TargetPrepared, MirrorError> {
    let parsed =
        parse_prepared_result(reply.flags, &reply.body, reply.version)?.ok_or_else(|| {
            MirrorError::Prepare {
                message: describe_error(reply),
                refused: reply.opcode == opcode::ERROR && !is_retryable_error(reply),
            }
        })?;
    Ok(TargetPrepared {
        id: parsed.id,
        result_metadata_id: parsed.result_metadata_id,
    })
}

/// The target's id for `stmt` on `conn`'s host: the one kept, else (none
/// kept, or the target answered UNPREPARED to a request sent at
/// `unprepared_since`) one PREPARE, shared by every mirror that needs it
/// meanwhile.
pub async fn target_id(
    ctx: &ProxyContext,
    conn: &Upstream,
    stmt: &PreparedStatement,
    switch_keyspace: bool,
    unprepared_since: Option<Instant>,
) -> Result<TargetPrepared, MirrorError> {
    if let Some(t) = kept_target_id(stmt, conn, unprepared_since) {
        return Ok(t);
    }
    // Boxed: preparing is rare, and its state would otherwise be part of
    // every mirrored write's future (see `TargetLink::get`).
    Box::pin(prepare_one_at_a_time(
        ctx,
        conn,
        stmt,
        switch_keyspace,
        unprepared_since,
    ))
    .await
}

/// `target_id`'s slow path: prepares `stmt` on the target unless another
/// write did while this one waited its turn.
async fn prepare_one_at_a_time(
    ctx: &ProxyContext,
    conn: &Upstream,
    stmt: &PreparedStatement,
    switch_keyspace: bool,
    unprepared_since: Option<Instant>,
) -> Result<TargetPrepared, MirrorError> {
    let _one_at_a_time = stmt.preparing_on_target.lock().await;
    if let Some(t) = kept_target_id(stmt, conn, unprepared_since) {
        return Ok(t);
    }
    if unprepared_since.is_some() {
        ctx.metrics.reprepares.inc();
    }
    prepare_on_target(ctx, conn, stmt, switch_keyspace).await
}

/// The target's id kept for `stmt`: any, or (the target answered
/// UNPREPARED to a request sent at `unprepared_since`) one prepared on
/// `conn`'s host since.
fn kept_target_id(
    stmt: &PreparedStatement,
    conn: &Upstream,
    unprepared_since: Option<Instant>,
) -> Option<TargetPrepared> {
    match unprepared_since {
        None => stmt.target(),
        Some(sent) => stmt.target_prepared_after(conn.host, sent),
    }
}

/// Replaces source ids with target ids in an EXECUTE or BATCH body. Where
/// the two clusters gave a statement the same id (the same Cassandra
/// version and schema, the usual case) the body is sent as it is, not
/// copied.
fn rewrite_ids(req: &MirrorRequest, ids: &[(Bytes, TargetPrepared)]) -> Result<Bytes, WireError> {
    let frame = Frame {
        version: req.version,
        response: false,
        flags: req.flags,
        stream: 0,
        opcode: req.opcode,
        body: req.body.clone(),
    };
    let lookup = |id: &[u8]| ids.iter().find(|(s, _)| &s[..] == id).map(|(_, t)| t);
    // The `[short bytes]` at `range` of the body, without its length.
    let current = |range: (usize, usize)| req.body.get(range.0 + 2..range.1);
    let mut edits: SmallVec<[ShortBytesEdit<'_>; 2]> = SmallVec::new();
    match req.opcode {
        opcode::EXECUTE => {
            let e = parse_execute(&frame)?;
            let Some(t) = lookup(e.id) else {
                return Ok(req.body.clone());
            };
            if t.id[..] != *e.id {
                edits.push((e.id_range, &t.id[..]));
            }
            if let (Some(range), Some(rm)) =
                (e.result_metadata_id_range, t.result_metadata_id.as_ref())
            {
                if current(range) != Some(&rm[..]) {
                    edits.push((range, &rm[..]));
                }
            }
        }
        opcode::BATCH => {
            let b = parse_batch(&frame)?;
            for child in &b.children {
                if let BatchChild::Prepared { id, range, .. } = child {
                    if let Some(t) = lookup(id).filter(|t| t.id[..] != **id) {
                        edits.push((*range, &t.id[..]));
                    }
                }
            }
        }
        _ => {}
    }
    if edits.is_empty() {
        return Ok(req.body.clone());
    }
    Ok(replace_short_bytes(&req.body, &edits))
}

/// How many times a request goes to the target while it answers
/// UNPREPARED: the target can forget a statement again between the PREPARE
/// and the retry (a schema change, another proxy's PREPARE of the text).
const UNPREPARED_ATTEMPTS: usize = 3;

/// Sends `req` on `conn`, mapping prepared ids; on UNPREPARED, prepares
/// again from the kept text and retries. A target that keeps forgetting is
/// a transient failure (`MirrorError::Prepare`, not refused): the caller
/// retries or spools the write, never drops it.
pub async fn send_to_target(
    ctx: &ProxyContext,
    conn: &Upstream,
    req: &MirrorRequest,
    switch_keyspace: bool,
) -> Result<Frame, MirrorError> {
    let mut unprepared_since = None;
    for _ in 0..UNPREPARED_ATTEMPTS {
        // Inline for an EXECUTE's one statement, as `req.statements` is.
        let mut ids: SmallVec<[(Bytes, TargetPrepared); 1]> =
            SmallVec::with_capacity(req.statements.len());
        for (sid, stmt) in &req.statements {
            let t = target_id(ctx, conn, stmt, switch_keyspace, unprepared_since).await?;
            ids.push((sid.clone(), t));
        }
        if switch_keyspace {
            switch_keyspace_to(ctx, conn, req.keyspace.as_deref()).await?;
        }
        let body = if ids.is_empty() {
            req.body.clone()
        } else {
            rewrite_ids(req, &ids)?
        };
        let started = Instant::now();
        let reply = conn
            .call(req.opcode, req.flags, body, ctx.target_timeout)
            .await?;
        ctx.metrics
            .observe_latency("target", started.elapsed().as_secs_f64());
        if reply.error_code() == Some(error_code::UNPREPARED) && !req.statements.is_empty() {
            debug!(
                host = conn.host,
                statement = %req.statements[0].1.query,
                keyspace = ?req.statements[0].1.keyspace,
                "the target answered UNPREPARED; preparing again"
            );
            unprepared_since = Some(started);
            continue;
        }
        return Ok(reply);
    }
    Err(MirrorError::Prepare {
        message: format!(
            "the target answered UNPREPARED {UNPREPARED_ATTEMPTS} times, preparing again before each"
        ),
        refused: false,
    })
}

/// Switches `conn` to keyspace `ks` unless it is in it already.
async fn switch_keyspace_to(
    ctx: &ProxyContext,
    conn: &Upstream,
    ks: Option<&str>,
) -> Result<(), MirrorError> {
    let Some(ks) = ks else {
        return Ok(());
    };
    let current = conn
        .keyspace
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if current.as_deref() != Some(ks) {
        // Boxed: a switch is rare, and its state would otherwise be part
        // of every mirrored write's future (see `TargetLink::get`).
        Box::pin(conn.use_keyspace(ks, ctx.target_timeout)).await?;
    }
    Ok(())
}

/// Sends `req` to the cluster it is owed to.
pub async fn send_toward(
    ctx: &ProxyContext,
    toward: Toward,
    conn: &Upstream,
    req: &MirrorRequest,
    switch_keyspace: bool,
) -> Result<Frame, MirrorError> {
    match toward {
        Toward::Target => send_to_target(ctx, conn, req, switch_keyspace).await,
        Toward::Source => send_to_source(ctx, conn, req, switch_keyspace).await,
    }
}

/// Sends `req` to the source (`target-primary-async`'s copy). Its body
/// holds the source's ids already: the client prepared through the proxy,
/// on the source. On UNPREPARED (the source forgot a statement) the
/// replayer (`switch_keyspace`: a link of its own) prepares the statements
/// again from their text and retries with the ids the source gives; a
/// client connection's link leaves that to the replayer, as a transient
/// failure (the write is retried, then spooled), because preparing in
/// another keyspace would switch the link its other copies share.
async fn send_to_source(
    ctx: &ProxyContext,
    conn: &Upstream,
    req: &MirrorRequest,
    switch_keyspace: bool,
) -> Result<Frame, MirrorError> {
    let mut body = req.body.clone();
    for _ in 0..UNPREPARED_ATTEMPTS {
        if switch_keyspace {
            switch_keyspace_to(ctx, conn, req.keyspace.as_deref()).await?;
        }
        let reply = conn
            .call(req.opcode, req.flags, body, ctx.target_timeout)
            .await?;
        if reply.error_code() != Some(error_code::UNPREPARED) || req.statements.is_empty() {
            return Ok(reply);
        }
        if !switch_keyspace {
            return Err(MirrorError::Prepare {
                message:
                    "the source forgot a prepared statement; the spool's replayer prepares it again"
                        .into(),
                refused: false,
            });
        }
        let mut ids = Vec::with_capacity(req.statements.len());
        for (sid, stmt) in &req.statements {
            let reply = Box::pin(prepare_in_its_keyspace(ctx, conn, stmt)).await?;
            ids.push((sid.clone(), prepared_id(&reply)?));
        }
        body = rewrite_ids(req, &ids)?;
    }
    Err(MirrorError::Prepare {
        message: format!("the source answered UNPREPARED {UNPREPARED_ATTEMPTS} times, preparing again before each"),
        refused: false,
    })
}

/// Whether an ERROR from the target is worth retrying (transient) or not
/// (the statement itself is refused, e.g. a missing table).
pub fn is_retryable_error(frame: &Frame) -> bool {
    matches!(
        frame.error_code(),
        Some(0x0000 | 0x1000 | 0x1001 | 0x1002 | 0x1100 | 0x1200 | 0x1300 | 0x1500)
    )
}

/// Whether the target's ERROR says the object of a followed CREATE is
/// there already: the state the change wanted, so done (a retried or
/// replayed CREATE without `IF NOT EXISTS` gets it).
pub fn already_exists(frame: &Frame) -> bool {
    frame.error_code() == Some(crate::proxy::frame::error_code::ALREADY_EXISTS)
}

/// How the replayer that owes the source introduces itself: as the last
/// client did, with the client's own credentials.
fn source_handshake(ctx: &ProxyContext) -> Handshake {
    ctx.last_source_handshake
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .map(|h| Handshake {
            keyspace: None,
            ..h
        })
        .unwrap_or_else(|| Handshake {
            version: 4,
            options: vec![("CQL_VERSION".into(), "3.0.0".into())],
            credentials: None,
            keyspace: None,
        })
}

/// How the proxy's own connections to the target introduce themselves:
/// as the last client did (its options), with the target credentials.
fn statement_handshake(ctx: &ProxyContext) -> Handshake {
    let base = ctx
        .last_handshake
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Handshake {
        version: base.as_ref().map_or(4, |h| h.version),
        options: base
            .as_ref()
            .map(|h| h.options.clone())
            .unwrap_or_else(|| vec![("CQL_VERSION".into(), "3.0.0".into())]),
        credentials: ctx
            .target_credentials
            .as_ref()
            .and_then(|c| c.current())
            .or_else(|| base.and_then(|h| h.credentials)),
        keyspace: None,
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::proxy::wire::put_short_bytes;

    fn request(version: u8, opcode: u8, body: BytesMut) -> MirrorRequest {
        MirrorRequest {
            version,
            flags: 0,
            opcode,
            body: body.freeze(),
            keyspace: None,
            statements: RequestStatements::new(),
            idempotent: true,
        }
    }

    /// An EXECUTE of `id` at consistency ONE (v5: with `metadata_id`).
    fn execute(version: u8, id: &[u8], metadata_id: &[u8]) -> MirrorRequest {
        let mut body = BytesMut::new();
        put_short_bytes(&mut body, id);
        if version >= 5 {
            put_short_bytes(&mut body, metadata_id);
            body.put_u16(1);
            body.put_u32(0);
        } else {
            body.put_u16(1);
            body.put_u8(0);
        }
        request(version, opcode::EXECUTE, body)
    }

    fn on_target(source: &[u8], id: &[u8], metadata_id: Option<&[u8]>) -> (Bytes, TargetPrepared) {
        (
            Bytes::copy_from_slice(source),
            TargetPrepared {
                id: Bytes::copy_from_slice(id),
                result_metadata_id: metadata_id.map(Bytes::copy_from_slice),
            },
        )
    }

    #[test]
    fn an_execute_whose_id_is_the_same_on_the_target_is_sent_without_a_copy() {
        let req = execute(4, b"same-id", b"");
        let body = rewrite_ids(&req, &[on_target(b"same-id", b"same-id", None)]).unwrap();
        assert_eq!(body, req.body);
        assert_eq!(body.as_ptr(), req.body.as_ptr(), "the body was copied");
        let req = execute(5, b"same-id", b"meta");
        let body = rewrite_ids(&req, &[on_target(b"same-id", b"same-id", Some(b"meta"))]).unwrap();
        assert_eq!(body.as_ptr(), req.body.as_ptr(), "the v5 body was copied");
    }

    #[test]
    fn an_execute_gets_the_targets_id_and_metadata_id_where_they_differ() {
        let req = execute(4, b"source-id", b"");
        let body = rewrite_ids(&req, &[on_target(b"source-id", b"target-id!", None)]).unwrap();
        assert_eq!(body, execute(4, b"target-id!", b"").body);
        // Only the result metadata differs (a column added on one side).
        let req = execute(5, b"id", b"source-meta");
        let body = rewrite_ids(&req, &[on_target(b"id", b"id", Some(b"tm"))]).unwrap();
        assert_eq!(body, execute(5, b"id", b"tm").body);
    }

    #[test]
    fn a_batch_rewrites_only_the_children_whose_ids_differ() {
        let batch = |ids: [&[u8]; 2]| {
            let mut body = BytesMut::new();
            body.put_u8(1); // unlogged
            body.put_u16(2);
            for id in ids {
                body.put_u8(1);
                put_short_bytes(&mut body, id);
                body.put_u16(0);
            }
            body.put_u16(1);
            body.put_u8(0);
            request(4, opcode::BATCH, body)
        };
        let req = batch([b"kept", b"moved"]);
        let ids = [
            on_target(b"kept", b"kept", None),
            on_target(b"moved", b"elsewhere", None),
        ];
        assert_eq!(
            rewrite_ids(&req, &ids).unwrap(),
            batch([b"kept", b"elsewhere"]).body
        );
        let same = batch([b"kept", b"kept"]);
        let body = rewrite_ids(&same, &ids[..1]).unwrap();
        assert_eq!(body.as_ptr(), same.body.as_ptr(), "the batch was copied");
    }
}
