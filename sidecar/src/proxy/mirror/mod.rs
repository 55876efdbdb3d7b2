//! Sending writes to the target: the request as the target gets it,
//! prepared-id mapping with transparent re-prepare (here); the shared
//! context (`context`), the per-connection link (`target_link`), async
//! mode's retries and spooling (`async_mirror`) and the replayer that drains
//! the spool in order (`replay`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, info, warn};

use super::config::{MirrorFilter, Mode, ModeCell, SpoolFullPolicy};
use super::frame::{error_code, opcode, Frame};
use super::metrics::Metrics;
use super::peers::PeerMap;
use super::prepared::{parse_prepared_result, PreparedCache, PreparedStatement, TargetPrepared};
use super::request::{parse_batch, parse_execute, parse_query, replace_short_bytes, BatchChild};
use super::result::lwt_applied;
use super::spool::{Reservation, Spool, SpoolRecord, SpooledStatement};
use super::upstream::{describe_error, Endpoint, Handshake, Upstream, UpstreamError};
use super::wire::WireError;

mod async_mirror;
mod context;
mod progress;
mod replay;
mod target_link;

pub use async_mirror::{
    deliver, mirror_async, mirror_permit, source_may_hold, update_spool_gauges,
};
pub use context::{MirrorHold, ProxyContext, SpoolFull};
pub use progress::ReplayProgress;
pub use replay::live_mirrors_done;
pub use replay::run_replayer;
pub use target_link::TargetLink;

/// A write (or target-served read) as it will be sent to the target.
#[derive(Debug, Clone)]
pub struct MirrorRequest {
    pub version: u8,
    pub flags: u8,
    pub opcode: u8,
    /// Body with source ids (and the pinned timestamp).
    pub body: Bytes,
    /// The client connection's keyspace.
    pub keyspace: Option<String>,
    /// Prepared statements the body refers to, by source id.
    pub statements: Vec<(Bytes, Arc<PreparedStatement>)>,
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
pub async fn prepare_on_target(
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
    let reply = if conn.version >= 5 {
        // v5 names the keyspace in the PREPARE itself.
        conn.prepare(&stmt.query, keyspace, ctx.target_timeout)
            .await?
    } else if elsewhere && switch_keyspace {
        if let Some(ks) = keyspace {
            conn.use_keyspace(ks, ctx.target_timeout).await?;
        }
        conn.prepare(&stmt.query, None, ctx.target_timeout).await?
    } else if elsewhere {
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
    } else {
        conn.prepare(&stmt.query, None, ctx.target_timeout).await?
    };
    let parsed =
        parse_prepared_result(reply.flags, &reply.body, reply.version)?.ok_or_else(|| {
            MirrorError::Prepare {
                message: describe_error(&reply),
                refused: reply.opcode == opcode::ERROR && !is_retryable_error(&reply),
            }
        })?;
    let t = TargetPrepared {
        id: parsed.id,
        result_metadata_id: parsed.result_metadata_id,
    };
    stmt.set_target(Some(t.clone()));
    Ok(t)
}

/// Replaces source ids with target ids in an EXECUTE or BATCH body.
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
    match req.opcode {
        opcode::EXECUTE => {
            let e = parse_execute(&frame)?;
            let Some(t) = lookup(e.id) else {
                return Ok(req.body.clone());
            };
            let mut edits: Vec<((usize, usize), &[u8])> = vec![(e.id_range, &t.id[..])];
            if let (Some(range), Some(rm)) =
                (e.result_metadata_id_range, t.result_metadata_id.as_ref())
            {
                edits.push((range, &rm[..]));
            }
            Ok(replace_short_bytes(&req.body, &edits))
        }
        opcode::BATCH => {
            let b = parse_batch(&frame)?;
            let edits: Vec<((usize, usize), &[u8])> = b
                .children
                .iter()
                .filter_map(|c| match c {
                    BatchChild::Prepared { id, range, .. } => {
                        lookup(id).map(|t| (*range, &t.id[..]))
                    }
                    BatchChild::Query { .. } => None,
                })
                .collect();
            Ok(replace_short_bytes(&req.body, &edits))
        }
        _ => Ok(req.body.clone()),
    }
}

/// Sends `req` on `conn`, mapping prepared ids; on UNPREPARED, prepares
/// again from the kept text and retries once.
pub async fn send_to_target(
    ctx: &ProxyContext,
    conn: &Upstream,
    req: &MirrorRequest,
    switch_keyspace: bool,
) -> Result<Frame, MirrorError> {
    for attempt in 0..2 {
        let mut ids = Vec::with_capacity(req.statements.len());
        for (sid, stmt) in &req.statements {
            let t = match stmt.target() {
                Some(t) => t,
                None => prepare_on_target(ctx, conn, stmt, switch_keyspace).await?,
            };
            ids.push((sid.clone(), t));
        }
        if switch_keyspace {
            if let Some(ks) = &req.keyspace {
                let current = conn
                    .keyspace
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if current.as_deref() != Some(ks) {
                    conn.use_keyspace(ks, ctx.target_timeout).await?;
                }
            }
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
            .latency
            .with_label_values(&["target"])
            .observe(started.elapsed().as_secs_f64());
        if reply.error_code() == Some(error_code::UNPREPARED)
            && attempt == 0
            && !req.statements.is_empty()
        {
            for (_, stmt) in &req.statements {
                stmt.set_target(None);
            }
            ctx.metrics.reprepares.inc();
            continue;
        }
        return Ok(reply);
    }
    Err(MirrorError::Prepare {
        message: "target kept answering UNPREPARED".into(),
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
