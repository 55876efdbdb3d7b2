//! Sending writes to the target: the per-connection target link (the
//! proxy's own handshake, reconnecting with backoff), prepared-id mapping
//! with transparent re-prepare, `async` mode retries and spooling, and the
//! replayer that drains the spool in order.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, info, warn};

use super::config::{MirrorFilter, Mode, ModeCell, SpoolFullPolicy};
use super::frame::{error_code, opcode, Frame};
use super::metrics::Metrics;
use super::peers::{response_body_start, PeerMap};
use super::prepared::{parse_prepared_result, PreparedCache, PreparedStatement, TargetPrepared};
use super::request::{parse_batch, parse_execute, parse_query, replace_short_bytes, BatchChild};
use super::spool::{Reservation, Spool, SpoolRecord, SpooledStatement};
use super::upstream::{describe_error, Credentials, Endpoint, Handshake, Upstream, UpstreamError};
use super::wire::{Reader, WireError};

/// Everything the connections of one proxy share.
pub struct ProxyContext {
    pub metrics: Metrics,
    pub prepared: PreparedCache,
    pub mode: ModeCell,
    pub peers: RwLock<Arc<PeerMap>>,
    pub filter: MirrorFilter,
    pub spool: Arc<Spool>,
    pub spool_full_policy: SpoolFullPolicy,
    pub source: Endpoint,
    pub target: Endpoint,
    /// `--target-username/--target-password`, else the clients' own.
    pub target_credentials: Option<Credentials>,
    /// The last handshake a client made, for the replayer's own link.
    pub last_handshake: Mutex<Option<Handshake>>,
    pub target_timeout: Duration,
    pub async_retries: u32,
    pub retry_backoff: Duration,
    pub max_frame_bytes: usize,
    pub protocol_version_cap: u8,
    pub cql_version: Option<String>,
    pub mirror_ddl: bool,
    /// Percentage of reads also sent to the target and compared.
    pub shadow_read_percent: u64,
    pub read_counter: std::sync::atomic::AtomicU64,
    pub shutting_down: AtomicBool,
    pub mirrors_inflight: AtomicUsize,
    /// Heartbeat interval on target links (`--heartbeat-secs`; None: off).
    pub heartbeat: Option<Duration>,
    /// Spooled writes replayed at once (`--replay-window`).
    pub replay_window: usize,
    /// Async mode's bound on `mirrors_inflight` (`--mirror-max-in-flight`).
    pub mirror_permits: Arc<tokio::sync::Semaphore>,
    pub source_reachable: AtomicBool,
    pub target_reachable: AtomicBool,
    /// Source node this proxy fronts → its advertised address.
    pub self_peer: Option<(std::net::IpAddr, std::net::SocketAddr)>,
}

impl ProxyContext {
    pub fn peers(&self) -> Arc<PeerMap> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn mode(&self) -> Mode {
        self.mode.get()
    }

    /// Room in the spool for `req`, promised before the source is sent it
    /// (`reject-writes`: `Err` when there is none, and the application's
    /// write must be refused); `Ok(None)` under `drop-target-writes`.
    pub fn spool_room(&self, req: &MirrorRequest) -> Result<Option<Reservation>, SpoolFull> {
        if self.spool_full_policy != SpoolFullPolicy::RejectWrites {
            return Ok(None);
        }
        let bytes = Reservation::size_of(
            req.body.len(),
            req.statements.iter().map(|(id, s)| {
                id.len() + s.query.len() + s.keyspace.as_ref().map_or(0, String::len)
            }),
        );
        self.spool.reserve(bytes).map(Some).ok_or(SpoolFull)
    }
}

/// The spool cannot promise room for one more write.
#[derive(Debug)]
pub struct SpoolFull;

/// What an async-mode write holds until it is on the target or in the
/// spool: its place among the mirrors in flight and its room in the spool.
#[derive(Default)]
pub struct MirrorHold {
    pub permit: Option<OwnedSemaphorePermit>,
    pub room: Option<Reservation>,
}

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

    /// The live connection, connecting (with backoff) when needed.
    pub async fn get(&self) -> Result<Arc<Upstream>, UpstreamError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
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

/// Heartbeats on a new target link (`--heartbeat-secs`); a failed one counts
/// as `target_failures_total{reason="heartbeat"}`.
fn keep_alive(ctx: &ProxyContext, link: &Arc<Upstream>) {
    if let Some(every) = ctx.heartbeat {
        let failures = ctx.metrics.target_failures.clone();
        link.keep_alive(every, ctx.target_timeout, move || {
            failures.with_label_values(&["heartbeat"]).inc();
        });
    }
}

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
    /// Goes through the spool even when the target is up (a TRUNCATE in
    /// async mode): the writes after it then queue behind it, and the
    /// replayer sends it once the live writes before it are done.
    pub spool_first: bool,
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
                    BatchChild::Query(_) => None,
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

/// Offset of the rows (`rows_count` onwards) of a RESULT Rows body.
fn rows_start(frame: &Frame) -> Option<usize> {
    if frame.opcode != opcode::RESULT {
        return None;
    }
    let start = response_body_start(frame.flags, &frame.body).ok()?;
    let mut r = Reader::new(&frame.body);
    r.skip(start).ok()?;
    if r.i32().ok()? != 2 {
        return None;
    }
    let flags = r.i32().ok()?;
    let columns = r.i32().ok()?;
    if flags & 0x0002 != 0 {
        r.bytes().ok()?;
    }
    if frame.version >= 5 && flags & 0x0008 != 0 {
        r.short_bytes().ok()?;
    }
    if flags & 0x0004 == 0 {
        let global = flags & 0x0001 != 0;
        if global {
            r.string().ok()?;
            r.string().ok()?;
        }
        for _ in 0..columns.clamp(0, 4096) {
            if !global {
                r.string().ok()?;
                r.string().ok()?;
            }
            r.string().ok()?;
            super::peers::skip_type(&mut r, 0).ok()?;
        }
    }
    Some(r.position())
}

/// The rows of a RESULT Rows body, without metadata and paging state
/// (which legitimately differ between clusters).
pub fn rows_section(frame: &Frame) -> Option<&[u8]> {
    rows_start(frame).map(|at| &frame.body[at..])
}

/// `[applied]` of a conditional write's result (first column, first row).
pub fn lwt_applied(frame: &Frame) -> Option<bool> {
    let at = rows_start(frame)?;
    let mut r = Reader::new(&frame.body[at..]);
    if r.i32().ok()? < 1 {
        return None;
    }
    r.bytes().ok()?.and_then(|v| v.first()).map(|b| *b != 0)
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

/// `async` mode: sends `req` to the target in the background; retries
/// with backoff, then spools it. `permit` is held until the write is on the
/// target or in the spool.
pub fn mirror_async(
    ctx: Arc<ProxyContext>,
    link: Arc<TargetLink>,
    req: MirrorRequest,
    hold: MirrorHold,
) {
    ctx.mirrors_inflight.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        let _permit = hold.permit;
        let room = hold.room;
        let _guard = InflightGuard(&ctx.mirrors_inflight);
        // Keep order: while older writes wait in the spool, newer ones queue
        // behind them.
        if req.spool_first || (req.idempotent && !ctx.spool.is_empty()) {
            spool_request(&ctx, &req, "spool not empty", room.as_ref());
            return;
        }
        let mut delay = ctx.retry_backoff;
        let mut last_error = String::new();
        for attempt in 0..ctx.async_retries.max(1) {
            let result = match link.get().await {
                Ok(conn) => send_to_target(&ctx, &conn, &req, false).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(reply) if reply.opcode != opcode::ERROR => {
                    ctx.metrics.mirrored_writes.with_label_values(&["ok"]).inc();
                    return;
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
                    warn!(error = %describe_error(&reply), "target refused a mirrored write; not retried");
                    return;
                }
                Ok(reply) => {
                    ctx.metrics
                        .target_failures
                        .with_label_values(&["error"])
                        .inc();
                    last_error = describe_error(&reply);
                }
                Err(e) if e.is_refusal() => {
                    count_refusal(&ctx, &e, &req.keyspace);
                    return;
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
            error!(error = %last_error, "counter update not applied on the target (counters are never retried)");
            return;
        }
        spool_request(&ctx, &req, &last_error, room.as_ref());
    });
}

/// A write the target refused for good (its PREPARE was refused: a
/// keyspace, table or column missing there). It costs that write only, and
/// loudly: every later write goes on.
fn count_refusal(ctx: &ProxyContext, e: &MirrorError, keyspace: &Option<String>) {
    ctx.metrics
        .mirrored_writes
        .with_label_values(&["rejected"])
        .inc();
    ctx.metrics
        .target_failures
        .with_label_values(&["rejected"])
        .inc();
    warn!(error = %e, keyspace = keyspace.as_deref().unwrap_or(""), "target refused a mirrored write; not retried (the target lacks what it needs?)");
}

fn spool_request(ctx: &ProxyContext, req: &MirrorRequest, why: &str, room: Option<&Reservation>) {
    let record = SpoolRecord {
        version: req.version,
        opcode: req.opcode,
        flags: req.flags,
        keyspace: req.keyspace.clone(),
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
    match ctx.spool.append(&record, room) {
        Ok(()) => {
            ctx.metrics
                .mirrored_writes
                .with_label_values(&["spooled"])
                .inc();
            debug!(reason = why, "target write spooled");
        }
        Err(e) => {
            ctx.metrics.spool_full.inc();
            ctx.metrics
                .mirrored_writes
                .with_label_values(&["dropped"])
                .inc();
            error!(error = %e, "SPOOL FULL: target write dropped; the target now diverges until validated");
        }
    }
    update_spool_gauges(ctx);
}

pub fn update_spool_gauges(ctx: &ProxyContext) {
    ctx.metrics.spool_records.set(ctx.spool.records() as i64);
    ctx.metrics.spool_bytes.set(ctx.spool.bytes() as i64);
}

/// Drains the spool, forever.
pub async fn run_replayer(ctx: Arc<ProxyContext>) {
    let mut conn: Option<Arc<Upstream>> = None;
    let mut statements = ReplayStatements::default();
    let mut backoff = Duration::from_millis(200);
    // Replays failed in a row: a spool that does not drain is said loudly.
    let mut failed_in_a_row: u32 = 0;
    loop {
        if let Err(e) = ctx.spool.sync() {
            error!(error = %e, "syncing the spool");
        }
        update_spool_gauges(&ctx);
        match replay_window(&ctx, &mut conn, &mut statements).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(_) => {
                backoff = Duration::from_millis(200);
                failed_in_a_row = 0;
                if ctx.spool.is_empty() {
                    info!("spool drained; the target is up to date");
                }
            }
            Err(ReplayError::Spool(e)) => {
                error!(error = %e, "spool read or acknowledgement failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(ReplayError::Target(e)) => {
                failed_in_a_row += 1;
                if failed_in_a_row % 20 == 1 {
                    warn!(
                        error = %e,
                        failed_in_a_row,
                        records = ctx.spool.records(),
                        "the spool does not drain: replaying its head to the target fails"
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
    Spool(#[from] super::spool::SpoolError),
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
    conn: &mut Option<Arc<Upstream>>,
    statements: &mut ReplayStatements,
) -> Result<usize, ReplayError> {
    let mut offset = ctx.spool.head();
    let mut in_flight = futures::stream::FuturesOrdered::new();
    // What every record in flight shares: protocol version and keyspace.
    let mut window: Option<(u8, Option<String>)> = None;
    // A record that must go alone is in flight: nothing joins it.
    let mut alone = false;
    let mut acked = 0;
    loop {
        while !alone && in_flight.len() < ctx.replay_window {
            let Some((record, next)) = ctx.spool.read(offset)? else {
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
            let c = replay_connection(ctx, conn, record.version).await?;
            window = Some(key);
            alone = must_go_alone;
            offset = next;
            let ctx = ctx.clone();
            let used = statements.of(&ctx, &record);
            in_flight
                .push_back(async move { replay_one(&ctx, &c, &record, used).await.map(|()| next) });
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
                    ctx.spool.ack(next, done_now)?;
                    return Err(e.into());
                }
            }
        }
        ctx.spool.ack(next, done_now)?;
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
async fn live_mirrors_done(ctx: &ProxyContext) {
    let deadline = Instant::now() + ctx.target_timeout * (ctx.async_retries + 2);
    while ctx.mirrors_inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether a spooled write's effect depends on its order whatever its
/// timestamp: a conditional write (Paxos gives it the time it is applied)
/// or a TRUNCATE.
fn needs_order(record: &SpoolRecord) -> bool {
    let ordered = |text: &str| matches!(super::classify::classify(text), super::classify::StatementClass::Write(w) if w.lwt || w.truncate);
    if record.statements.iter().any(|s| ordered(&s.query)) {
        return true;
    }
    let frame = Frame {
        version: record.version,
        response: false,
        flags: record.flags,
        stream: 0,
        opcode: record.opcode,
        body: record.body.clone(),
    };
    match record.opcode {
        opcode::QUERY => parse_query(&frame).map_or(true, |q| ordered(q.query)),
        opcode::BATCH => parse_batch(&frame).map_or(true, |b| {
            b.children
                .iter()
                .any(|c| matches!(c, BatchChild::Query(q) if ordered(q)))
        }),
        _ => false,
    }
}

/// Whether a spooled write carries its own timestamp (the client's or the
/// proxy's), which makes its replay order free.
fn carries_timestamp(record: &SpoolRecord) -> bool {
    let frame = Frame {
        version: record.version,
        response: false,
        flags: record.flags,
        stream: 0,
        opcode: record.opcode,
        body: record.body.clone(),
    };
    match record.opcode {
        opcode::QUERY => parse_query(&frame).is_ok_and(|q| q.params.has_timestamp()),
        opcode::EXECUTE => parse_execute(&frame).is_ok_and(|e| e.params.has_timestamp()),
        opcode::BATCH => parse_batch(&frame).is_ok_and(|b| b.params.has_timestamp()),
        _ => false,
    }
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
            .clone()
            .or_else(|| base.and_then(|h| h.credentials)),
        keyspace: None,
    }
}

/// The replayer's own link to the target, (re)connected for `version`.
async fn replay_connection(
    ctx: &Arc<ProxyContext>,
    conn: &mut Option<Arc<Upstream>>,
    version: u8,
) -> Result<Arc<Upstream>, MirrorError> {
    if let Some(c) = conn {
        if !c.is_closed() && c.version == version {
            return Ok(c.clone());
        }
    }
    let hs = Handshake {
        version,
        ..statement_handshake(ctx)
    };
    let c = Upstream::connect(&ctx.target, &hs, ctx.max_frame_bytes, ctx.target_timeout).await?;
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

    fn of(
        &mut self,
        ctx: &ProxyContext,
        record: &SpoolRecord,
    ) -> Vec<(Bytes, Arc<PreparedStatement>)> {
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
                                super::classify::classify(&s.query),
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

async fn replay_one(
    ctx: &Arc<ProxyContext>,
    c: &Upstream,
    record: &SpoolRecord,
    statements: Vec<(Bytes, Arc<PreparedStatement>)>,
) -> Result<(), MirrorError> {
    let req = MirrorRequest {
        version: record.version,
        flags: record.flags,
        opcode: record.opcode,
        body: record.body.clone(),
        keyspace: record.keyspace.clone(),
        statements,
        idempotent: true,
        spool_first: false,
    };
    let started = Instant::now();
    let reply = match send_to_target(ctx, c, &req, true).await {
        Ok(reply) => reply,
        Err(e) if e.is_refusal() => {
            // Retrying it at the head of the spool would hold back every
            // write behind it, for ever.
            count_refusal(ctx, &e, &req.keyspace);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    ctx.metrics
        .replay_latency
        .observe(started.elapsed().as_secs_f64());
    if reply.opcode == opcode::ERROR {
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
        warn!(error = %describe_error(&reply), "target refused a spooled write; skipped");
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
            statements: Vec::new(),
            body,
        }
    }

    #[test]
    fn only_timestamped_writes_in_one_keyspace_share_the_replay_window() {
        let text = "INSERT INTO t (k) VALUES (1)";
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
        let stamped = crate::proxy::request::with_timestamp(&plain, &layout, 1_700_000_000_000_000);

        let timestamped = query_record(stamped.clone(), Some("ks"));
        assert!(carries_timestamp(&timestamped));
        assert!(!must_replay_alone(&timestamped));

        // A conditional write has no timestamp: its order matters.
        let conditional = query_record(plain, Some("ks"));
        assert!(!carries_timestamp(&conditional));
        assert!(must_replay_alone(&conditional));

        // A statement prepared in another keyspace needs the link to switch.
        let mut elsewhere = query_record(stamped, Some("ks"));
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
