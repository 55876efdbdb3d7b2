//! One client connection: its source connection (the client's own
//! handshake passes through), its target link, and the routing of every
//! request between them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info_span, warn, Instrument};

use super::bound::{bind_nondeterministic, splice_values, BoundFunction};
use super::classify::{
    batch_statements, classify, replace_nondeterministic, StatementClass, SystemTable, WriteTraits,
};
use super::codec::{FrameDecoder, LinkState};
use super::compression::Compression;
use super::config::Mode;
use super::frame::{error_code, opcode, DecodeRules, Frame, FrameError};
use super::link::{FrameReader, FrameWriter, Outbound, ReadError};
use super::mirror::{
    lwt_applied, mirror_async, mirror_permit, send_to_target, source_may_hold, MirrorHold,
    MirrorRequest, ProxyContext, TargetLink,
};
use super::peers::{response_body_start, rewrite_event, rewrite_rows};
use super::prepared::{parse_prepared_result, PreparedStatement, COUNTER_TYPE};
use super::request::{
    next_timestamp_micros, param_flags, parse_batch, parse_execute, parse_prepare, parse_query,
    replace_ranges, replace_short_bytes, with_timestamp, with_values, BatchChild, ParamsLayout,
    RangeEdit, COUNTER_BATCH,
};
use super::tls::{BoxRead, BoxWrite};
use super::upstream::{Credentials, Handshake};
use super::wire::{put_short_bytes, put_string, Reader, WireError};

/// Source latency is sampled on stream ids that are multiples of 16: cheap,
/// and unbiased since drivers pick ids without regard to the request.
const LATENCY_SAMPLE_MASK: i16 = 0x0F;

/// What the source reader must do with the answer to a stream.
enum Pending {
    /// Hand the answer to a task that also waits for the target.
    Capture(oneshot::Sender<Frame>),
    /// A system.local/peers read: rewrite addresses (`true` for system.local).
    Peers(bool),
    /// An async-mode write: mirror it once the source's answer shows the
    /// source may hold it (`mirror::source_may_hold`), never before.
    MirrorAfter(Box<AsyncMirror>),
    /// A PREPARE: record the statement when the id comes back.
    Prepare {
        /// The text the proxy executes (with `bound` calls as markers).
        query: String,
        keyspace: Option<String>,
        /// Calls turned into markers the proxy fills; when there are any,
        /// the source was sent the client's own text, and the proxy
        /// prepares `query` itself before the client hears back.
        bound: Vec<BoundFunction>,
        /// The client's own text, when it differs from `query`.
        original: Option<String>,
    },
}

/// An async-mode write waiting for the source's answer.
struct AsyncMirror {
    req: MirrorRequest,
    hold: MirrorHold,
    conditional: bool,
}

/// A statement whose non-deterministic calls the proxy fills: the text it
/// executes and the client's own.
struct Rewritten {
    query: String,
    original: String,
    keyspace: Option<String>,
    bound: Vec<BoundFunction>,
}

/// The part of a write the target gets.
enum BatchSelection {
    All,
    None,
    /// Per statement of a `BEGIN BATCH` text, whether it is selected.
    Some(Vec<bool>),
}

/// A `BEGIN BATCH` text with only its selected statements: the same
/// opening (type, `USING TIMESTAMP`), then those statements.
fn selected_batch_text(
    text: &str,
    batch: &[super::classify::BatchStatement],
    selected: &[bool],
) -> String {
    let opening = batch.first().map_or(text.len(), |b| b.span.0);
    let mut out = String::with_capacity(text.len());
    out.push_str(text[..opening].trim_end());
    for (b, _) in batch.iter().zip(selected).filter(|(_, s)| **s) {
        out.push(' ');
        out.push_str(&text[b.span.0..b.span.1]);
        out.push(';');
    }
    out.push_str(" APPLY BATCH");
    out
}

/// Which answer a dual request returns to the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Source,
    Target,
}

struct Session {
    ctx: Arc<ProxyContext>,
    /// Client-facing writer: the source reader writes answers in batches,
    /// other tasks one at a time.
    client_out: tokio::sync::Mutex<FrameWriter>,
    /// Requests for the source, queued while the client reader works
    /// through a batch; it then writes them with one syscall.
    source_queue: Mutex<Vec<Frame>>,
    /// Source-facing writer; only the client reader's task writes to it.
    source_out: tokio::sync::Mutex<FrameWriter>,
    /// Send times of sampled source requests (stream ids that are a
    /// multiple of 16), for the source latency histogram.
    source_started: Mutex<HashMap<i16, Instant>>,
    client_state: Arc<LinkState>,
    source_state: Arc<LinkState>,
    pending: Mutex<HashMap<i16, Pending>>,
    version: AtomicU8,
    keyspace: Mutex<Option<String>>,
    startup_options: Mutex<Vec<(String, String)>>,
    credentials: Mutex<Option<Credentials>>,
    target: Arc<TargetLink>,
    /// The proxy's own link to the source, to prepare rewritten texts.
    source_link: Arc<TargetLink>,
    source_prepares: tokio::sync::Mutex<()>,
    /// Requests sent to the source and not yet answered.
    outstanding: AtomicUsize,
    /// Per-request tasks still running.
    tasks: Arc<AtomicUsize>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("the client went away")]
    ClientGone,
}

struct TaskGuard(Arc<AtomicUsize>);
impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn kind_label(class: &StatementClass) -> &'static str {
    match class {
        StatementClass::Read { .. } => "read",
        StatementClass::Write(_) => "write",
        StatementClass::Use(_) => "use",
        StatementClass::Schema => "schema",
        StatementClass::Other => "other",
    }
}

/// Serves one client connection until it (or its source link) closes, or
/// shutdown drains it.
pub async fn serve(
    ctx: Arc<ProxyContext>,
    client: (BoxRead, BoxWrite),
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let span = info_span!("client", %peer);
    async move {
        let (source_read, source_write) = match ctx.source.open().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot reach the source; closing the client");
                return;
            }
        };
        let (client_read, client_write) = client;
        let client_state = Arc::new(LinkState::default());
        let source_state = Arc::new(LinkState::default());
        let client_out =
            tokio::sync::Mutex::new(FrameWriter::new(client_write, client_state.clone()));
        let source_out =
            tokio::sync::Mutex::new(FrameWriter::new(source_write, source_state.clone()));
        let session = Arc::new(Session {
            target: Arc::new(TargetLink::new(ctx.clone())),
            source_link: Arc::new(TargetLink::to_source(ctx.clone())),
            source_prepares: tokio::sync::Mutex::new(()),
            ctx: ctx.clone(),
            client_out,
            source_queue: Mutex::new(Vec::new()),
            source_out,
            source_started: Mutex::new(HashMap::new()),
            client_state: client_state.clone(),
            source_state: source_state.clone(),
            pending: Mutex::new(HashMap::new()),
            version: AtomicU8::new(4),
            keyspace: Mutex::new(None),
            startup_options: Mutex::new(Vec::new()),
            credentials: Mutex::new(None),
            outstanding: AtomicUsize::new(0),
            tasks: Arc::new(AtomicUsize::new(0)),
        });
        let mut client_reader = FrameReader::new(
            client_read,
            FrameDecoder::new(DecodeRules {
                max_frame_bytes: ctx.max_frame_bytes,
                max_version: ctx.protocol_version_cap,
                expect_response: false,
            }),
            client_state,
        );
        let source_reader = FrameReader::new(
            source_read,
            FrameDecoder::new(DecodeRules {
                max_frame_bytes: ctx.max_frame_bytes,
                max_version: 5,
                expect_response: true,
            }),
            source_state,
        );
        let mut source_loop = tokio::spawn(session.clone().source_loop(source_reader));
        let mut draining = false;
        loop {
            tokio::select! {
                next = client_reader.next() => {
                    let mut next = next;
                    let mut keep_going = true;
                    // Work through every request already buffered, then
                    // write what they produced for the source at once.
                    loop {
                        match next {
                            Ok(Some(frame)) => {
                                if session.on_client_frame(frame).await.is_err() {
                                    keep_going = false;
                                    break;
                                }
                            }
                            Ok(None) => {
                                keep_going = false;
                                break;
                            }
                            Err(ReadError::Frame(e)) => {
                                session.protocol_error(e).await;
                                keep_going = false;
                                break;
                            }
                            Err(ReadError::Io(e)) => {
                                debug!(error = %e, "client read failed");
                                keep_going = false;
                                break;
                            }
                        }
                        next = match client_reader.try_next() {
                            Ok(None) => break,
                            other => other,
                        };
                    }
                    if session.flush_source().await.is_err() || !keep_going {
                        break;
                    }
                }
                _ = &mut source_loop => break,
                _ = shutdown.changed() => {
                    draining = true;
                    break;
                }
            }
        }
        if draining {
            // Let what the client already sent finish before closing.
            let deadline = Instant::now() + Duration::from_secs(10);
            while (session.outstanding.load(Ordering::Acquire) > 0
                || session.tasks.load(Ordering::Acquire) > 0)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        source_loop.abort();
    }
    .instrument(span)
    .await
}

/// The table a read names, for per-table counters (empty when unknown).
struct TableName {
    keyspace: String,
    table: String,
}

impl Session {
    fn version(&self) -> u8 {
        self.version.load(Ordering::Relaxed)
    }

    fn keyspace(&self) -> Option<String> {
        self.keyspace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn to_client(&self, msg: Outbound) -> Result<(), SessionError> {
        let mut out = self.client_out.lock().await;
        out.queue(msg);
        out.flush().await.map_err(|_| SessionError::ClientGone)
    }

    async fn reply(&self, frame: Frame) -> Result<(), SessionError> {
        self.to_client(Outbound::Frame(frame)).await
    }

    /// Queues a request for the source; the client reader writes the
    /// queue after its current batch.
    /// Writes the requests queued for the source, with one syscall.
    async fn flush_source(&self) -> std::io::Result<()> {
        let queued =
            std::mem::take(&mut *self.source_queue.lock().unwrap_or_else(|p| p.into_inner()));
        let mut out = self.source_out.lock().await;
        for frame in queued {
            out.queue(Outbound::Frame(frame));
        }
        out.flush().await
    }

    async fn forward(&self, frame: Frame) -> Result<(), SessionError> {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        if frame.stream & LATENCY_SAMPLE_MASK == 0 {
            self.source_started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(frame.stream, Instant::now());
        }
        self.source_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(frame);
        Ok(())
    }

    fn set_pending(&self, stream: i16, p: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream, p);
    }

    fn count(&self, kind: &str, side: &str) {
        self.ctx
            .metrics
            .requests
            .with_label_values(&[kind, side])
            .inc();
    }

    /// Answers a malformed or refused frame, then the connection closes.
    async fn protocol_error(&self, e: FrameError) {
        let (reason, frame) = match &e {
            FrameError::UnsupportedVersion { version, max, .. } => (
                "unsupported_version",
                Frame::unsupported_version((*max).min(*version).max(3), 0, *version, *max),
            ),
            _ => (
                "malformed",
                Frame::error(
                    self.version(),
                    0,
                    error_code::PROTOCOL_ERROR,
                    &format!("ferry proxy: {e}"),
                ),
            ),
        };
        debug!(error = %e, "protocol error from client");
        self.ctx
            .metrics
            .client_errors
            .with_label_values(&[reason])
            .inc();
        let _ = self.reply(frame).await;
    }

    async fn malformed(&self, frame: &Frame, e: WireError) -> Result<(), SessionError> {
        let message = format!(
            "ferry proxy: malformed {} body: {e}",
            opcode::name(frame.opcode)
        );
        self.refuse(
            frame,
            "malformed_body",
            error_code::PROTOCOL_ERROR,
            &message,
        )
        .await
    }

    /// Answers a request the proxy cannot carry out as sent with an Invalid
    /// error (the client's fault, not the protocol's).
    async fn invalid(&self, frame: &Frame, message: &str) -> Result<(), SessionError> {
        self.refuse(frame, "invalid_request", error_code::INVALID, message)
            .await
    }

    /// Counts a refused request under `reason` and answers it with an error.
    async fn refuse(
        &self,
        frame: &Frame,
        reason: &str,
        code: i32,
        message: &str,
    ) -> Result<(), SessionError> {
        self.ctx
            .metrics
            .client_errors
            .with_label_values(&[reason])
            .inc();
        self.reply(Frame::error(frame.version, frame.stream, code, message))
            .await
    }

    async fn on_client_frame(self: &Arc<Self>, mut frame: Frame) -> Result<(), SessionError> {
        self.version.store(frame.version, Ordering::Relaxed);
        match frame.opcode {
            opcode::STARTUP => {
                let options = match read_string_map(&frame.body) {
                    Ok(o) => o,
                    Err(e) => return self.malformed(&frame, e).await,
                };
                let mut options: Vec<(String, String)> = options;
                if let Some(cql) = &self.ctx.cql_version {
                    options.retain(|(k, _)| !k.eq_ignore_ascii_case("CQL_VERSION"));
                    options.push(("CQL_VERSION".into(), cql.clone()));
                    let mut body = BytesMut::new();
                    super::wire::put_string_map(&mut body, &options);
                    frame.body = body.freeze();
                }
                let compression = options
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("COMPRESSION"))
                    .map(|(_, v)| v.as_str());
                match Compression::from_option(compression) {
                    Ok(c) => {
                        if c == Compression::Snappy && frame.version >= 5 {
                            // v5 only knows lz4; let the source refuse it.
                        }
                        self.client_state.set_compression(c);
                        self.source_state.set_compression(c);
                    }
                    Err(e) => {
                        return self
                            .reply(Frame::error(
                                frame.version,
                                frame.stream,
                                error_code::PROTOCOL_ERROR,
                                &e.to_string(),
                            ))
                            .await
                    }
                }
                *self
                    .startup_options
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = options;
                self.count("startup", "source");
                self.forward(frame).await
            }
            opcode::AUTH_RESPONSE => {
                let mut r = Reader::new(&frame.body);
                if let Ok(Some(token)) = r.bytes() {
                    if let Some(c) = Credentials::from_plain_token(token) {
                        *self.credentials.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
                    }
                }
                self.count("auth", "source");
                self.forward(frame).await
            }
            opcode::QUERY => self.on_query(frame).await,
            opcode::PREPARE => self.on_prepare(frame).await,
            opcode::EXECUTE => self.on_execute(frame).await,
            opcode::BATCH => self.on_batch(frame).await,
            op => {
                self.count(opcode::name(op), "source");
                self.forward(frame).await
            }
        }
    }

    async fn on_query(self: &Arc<Self>, mut frame: Frame) -> Result<(), SessionError> {
        let (mut class, mut params, rewritten) = match parse_query(&frame) {
            Ok(q) => {
                let mut class = classify(q.query);
                if let StatementClass::Write(w) = &mut class {
                    // Without bound types, `x = x + ?` may be a counter.
                    w.counter |= w.increment_by_marker;
                }
                // now()/uuid()/currentTimestamp() in a mirrored write become
                // literals, so both sides store the same value.
                let rewritten = match &class {
                    StatementClass::Write(w)
                        if w.nondeterministic.is_some() && self.ctx.mode() != Mode::SourceOnly =>
                    {
                        replace_nondeterministic(q.query, next_timestamp_micros())
                    }
                    _ => None,
                };
                (class, q.params, rewritten)
            }
            Err(e) => return self.malformed(&frame, e).await,
        };
        if let Some((text, replaced)) = rewritten {
            if let Some(body) = replace_query_text(&frame, &text) {
                frame.body = body;
                if let StatementClass::Write(w) = &mut class {
                    if !w.batch.is_empty() {
                        // The statements moved with the literals put in.
                        w.batch = batch_statements(&text);
                    }
                }
                match parse_query(&frame) {
                    Ok(q) => params = q.params,
                    Err(e) => return self.malformed(&frame, e).await,
                }
                self.ctx
                    .metrics
                    .policy_writes
                    .with_label_values(&["replaced"])
                    .inc_by(replaced.len() as u64);
            }
        }
        self.route(frame, class, params, Vec::new(), false).await
    }

    async fn on_prepare(self: &Arc<Self>, frame: Frame) -> Result<(), SessionError> {
        let (mut query, keyspace) = match parse_prepare(&frame) {
            Ok(p) => (p.query.to_owned(), p.keyspace.or_else(|| self.keyspace())),
            Err(e) => return self.malformed(&frame, e).await,
        };
        // now()/uuid()/currentTimestamp() in a write become bind markers the
        // proxy fills at each EXECUTE, so source and target store the same
        // value (bound.rs). Done in every mode: the mode can change while
        // the statement lives in the driver's cache.
        // The client's own text goes to the source, so the client gets the
        // id a direct connection gives (drivers check that a statement
        // prepared again keeps its id); the rewritten one is prepared by
        // the proxy when that answer comes.
        let mut bound = Vec::new();
        let mut original = None;
        if matches!(classify(&query), StatementClass::Write(w) if w.nondeterministic.is_some()) {
            if let Some((text, calls)) = bind_nondeterministic(&query) {
                original = Some(std::mem::replace(&mut query, text));
                bound = calls;
            }
        }
        self.set_pending(
            frame.stream,
            Pending::Prepare {
                query,
                keyspace,
                bound,
                original,
            },
        );
        self.count("prepare", "source");
        self.forward(frame).await
    }

    async fn unprepared(&self, frame: &Frame, id: &[u8]) -> Result<(), SessionError> {
        // The proxy does not know this id (evicted, or prepared before the
        // proxy started): make the driver prepare it again through us.
        let mut body = BytesMut::new();
        body.put_i32(error_code::UNPREPARED);
        put_string(
            &mut body,
            "ferry proxy: statement not prepared through this proxy",
        );
        put_short_bytes(&mut body, id);
        self.reply(Frame::response(
            frame.version,
            frame.stream,
            opcode::ERROR,
            body.freeze(),
        ))
        .await
    }

    async fn on_execute(self: &Arc<Self>, mut frame: Frame) -> Result<(), SessionError> {
        let (id, mut params) = match parse_execute(&frame) {
            Ok(e) => (Bytes::copy_from_slice(e.id), e.params),
            Err(e) => return self.malformed(&frame, e).await,
        };
        let Some(stmt) = self.ctx.prepared.get(&id) else {
            return self.unprepared(&frame, &id).await;
        };
        let mut id = id;
        if !stmt.bound.is_empty() {
            // Executed as the rewritten text, under the source's id for it.
            let Some(exec_id) = stmt.source_exec_id() else {
                return self.unprepared(&frame, &id).await;
            };
            match parse_execute(&frame) {
                Ok(e) => {
                    frame.body = replace_short_bytes(&frame.body, &[(e.id_range, &exec_id[..])]);
                }
                Err(e) => return self.malformed(&frame, e).await,
            }
            params = match parse_execute(&frame) {
                Ok(e) => e.params,
                Err(e) => return self.malformed(&frame, e).await,
            };
            id = exec_id;
            if params.flags & param_flags::NAMES_FOR_VALUES != 0 {
                return self
                    .invalid(
                        &frame,
                        "ferry proxy: this statement's now()/uuid() calls are filled by the proxy \
                         as positional values; execute it with positional values, not named ones",
                    )
                    .await;
            }
            let section = params.values.map(|(s, e)| &frame.body[s..e]);
            match splice_values(section, &stmt.bound, next_timestamp_micros()) {
                Ok(values) => {
                    frame.body = with_values(&frame.body, &params, &values);
                    self.count_bound(&stmt.bound);
                }
                Err(e) => return self.malformed(&frame, e).await,
            }
            params = match parse_execute(&frame) {
                Ok(e) => e.params,
                Err(e) => return self.malformed(&frame, e).await,
            };
        }
        let mut class = stmt.class.clone();
        if let StatementClass::Write(w) = &mut class {
            w.counter |= stmt.counter;
        }
        if matches!(
            class,
            StatementClass::Read {
                system: Some(_),
                ..
            }
        ) && params.flags & param_flags::SKIP_METADATA != 0
        {
            // Peer rewriting needs column names: ask the source for metadata.
            frame.body = clear_flag(&frame.body, &params, param_flags::SKIP_METADATA);
        }
        self.route(frame, class, params, vec![(id, stmt)], false)
            .await
    }

    async fn on_batch(self: &Arc<Self>, mut frame: Frame) -> Result<(), SessionError> {
        let session_ks = self.keyspace();
        // Children prepared with proxy-filled markers get their values
        // first; only then (offsets moved) is the batch read a second time.
        let (edits, planned) = match parse_batch(&frame) {
            Ok(batch) => match self.bound_batch_values(&batch, &frame.body) {
                Ok(edits) if edits.is_empty() => {
                    (edits, Some(self.batch_plan(&batch, session_ks.clone())))
                }
                Ok(edits) => (edits, None),
                Err(e) => return self.malformed(&frame, e).await,
            },
            Err(e) => return self.malformed(&frame, e).await,
        };
        let outcome = match planned {
            Some(outcome) => outcome,
            None => {
                frame.body = replace_ranges(&frame.body, &edits);
                match parse_batch(&frame) {
                    Ok(batch) => self.batch_plan(&batch, session_ks),
                    Err(e) => return self.malformed(&frame, e).await,
                }
            }
        };
        match outcome {
            Err(missing) => self.unprepared(&frame, &missing).await,
            Ok((traits, params, statements, mirrored_any)) => {
                self.route(
                    frame,
                    StatementClass::Write(traits),
                    params,
                    statements,
                    !mirrored_any,
                )
                .await
            }
        }
    }

    /// New values sections for the BATCH children whose statements have
    /// proxy-filled markers, as (byte range, section) edits in order.
    fn bound_batch_values(
        &self,
        batch: &super::request::BatchRequest<'_>,
        body: &[u8],
    ) -> Result<Vec<RangeEdit>, WireError> {
        let mut edits = Vec::new();
        let micros = next_timestamp_micros();
        for child in &batch.children {
            let BatchChild::Prepared { id, values, .. } = child else {
                continue;
            };
            let Some(stmt) = self.ctx.prepared.get(id) else {
                continue; // batch_plan answers UNPREPARED
            };
            if stmt.bound.is_empty() {
                continue;
            }
            let Some(exec_id) = stmt.source_exec_id() else {
                continue; // batch_plan answers UNPREPARED
            };
            // The rewritten text's id, then the values with the proxy's.
            let BatchChild::Prepared { range, .. } = child else {
                continue;
            };
            let mut id = BytesMut::with_capacity(exec_id.len() + 2);
            id.put_u16(exec_id.len() as u16);
            id.put_slice(&exec_id);
            edits.push((*range, id.freeze()));
            let section = body.get(values.0..values.1);
            edits.push((*values, splice_values(section, &stmt.bound, micros)?));
            self.count_bound(&stmt.bound);
        }
        Ok(edits)
    }

    fn count_bound(&self, bound: &[BoundFunction]) {
        self.ctx
            .metrics
            .policy_writes
            .with_label_values(&["replaced"])
            .inc_by(bound.len() as u64);
    }

    /// What a BATCH writes: combined traits, whether any child is mirrored,
    /// and its prepared children; `Err(id)` for an id the proxy lacks.
    #[allow(clippy::type_complexity)]
    fn batch_plan(
        &self,
        batch: &super::request::BatchRequest<'_>,
        session_ks: Option<String>,
    ) -> Result<
        (
            WriteTraits,
            ParamsLayout,
            Vec<(Bytes, Arc<PreparedStatement>)>,
            bool,
        ),
        Bytes,
    > {
        let mut traits = WriteTraits {
            counter: batch.batch_type == COUNTER_BATCH,
            ..WriteTraits::default()
        };
        let mut statements: Vec<(Bytes, Arc<PreparedStatement>)> = Vec::new();
        let mut mirrored_any = false;
        let session_ks = batch.params.keyspace.clone().or(session_ks);
        for child in &batch.children {
            let class = match child {
                BatchChild::Query(q) => classify(q),
                BatchChild::Prepared { id, .. } => {
                    let Some(stmt) = self.ctx.prepared.get(id) else {
                        return Err(Bytes::copy_from_slice(id));
                    };
                    if !stmt.bound.is_empty() && stmt.client_id.as_deref() == Some(*id) {
                        // Its rewritten text's id was not put in: the
                        // source forgot it; the client prepares again.
                        return Err(Bytes::copy_from_slice(id));
                    }
                    traits.counter |= stmt.counter;
                    let class = stmt.class.clone();
                    if !statements.iter().any(|(s, _)| &s[..] == *id) {
                        statements.push((Bytes::copy_from_slice(id), stmt));
                    }
                    class
                }
            };
            if let StatementClass::Write(w) = class {
                let ks = w.keyspace.clone().or_else(|| session_ks.clone());
                mirrored_any |= self.ctx.filter.mirrors(ks.as_deref(), w.table.as_deref());
                traits.lwt |= w.lwt;
                traits.counter |= w.counter;
                traits.nondeterministic = traits.nondeterministic.or(w.nondeterministic);
                if traits.keyspace.is_none() {
                    traits.keyspace = ks;
                    traits.table = w.table;
                }
            }
        }
        Ok((traits, batch.params.clone(), statements, mirrored_any))
    }

    /// Sends a classified request where the mode says.
    async fn route(
        self: &Arc<Self>,
        frame: Frame,
        class: StatementClass,
        params: ParamsLayout,
        statements: Vec<(Bytes, Arc<PreparedStatement>)>,
        force_source_only: bool,
    ) -> Result<(), SessionError> {
        let mode = self.ctx.mode();
        let kind = kind_label(&class);
        match class {
            StatementClass::Read {
                system: Some(table),
                ..
            } => {
                self.set_pending(frame.stream, Pending::Peers(table == SystemTable::Local));
                self.count(kind, "source");
                self.forward(frame).await
            }
            StatementClass::Read { .. } if mode == Mode::TargetPrimary => {
                self.count(kind, "target");
                self.read_from_target(frame, statements);
                Ok(())
            }
            StatementClass::Read {
                keyspace, table, ..
            } => {
                let keyspace = keyspace
                    .or_else(|| params.keyspace.clone())
                    .or_else(|| self.keyspace());
                // Only tables the proxy mirrors are compared: the others
                // (system keyspaces, which each cluster keeps for itself,
                // and tables filtered out) differ by design.
                if self
                    .ctx
                    .filter
                    .mirrors(keyspace.as_deref(), table.as_deref())
                    && self.sample_shadow_read(mode)
                {
                    self.count(kind, "source");
                    self.count(kind, "target");
                    let table = TableName {
                        keyspace: keyspace.unwrap_or_default(),
                        table: table.unwrap_or_default(),
                    };
                    return self.shadow_read(frame, statements, table).await;
                }
                self.count(kind, "source");
                self.forward(frame).await
            }
            StatementClass::Write(traits) => {
                let session_ks = params.keyspace.clone().or_else(|| self.keyspace());
                let selection = if mode == Mode::SourceOnly || force_source_only {
                    BatchSelection::None
                } else {
                    self.selection(&traits, session_ks.as_deref())
                };
                let target_text = match selection {
                    BatchSelection::None => {
                        self.count(kind, "source");
                        return self.forward(frame).await;
                    }
                    BatchSelection::All => None,
                    BatchSelection::Some(selected) => {
                        match parse_query(&frame)
                            .map(|q| selected_batch_text(q.query, &traits.batch, &selected))
                        {
                            Ok(text) => Some(text),
                            Err(e) => return self.malformed(&frame, e).await,
                        }
                    }
                };
                self.mirrored_write(frame, traits, params, statements, mode, target_text)
                    .await
            }
            StatementClass::Use(ks) => self.use_keyspace(frame, ks, mode).await,
            StatementClass::Schema if self.ctx.mirror_ddl && mode != Mode::SourceOnly => {
                self.count(kind, "source");
                self.count(kind, "target");
                let req = self.mirror_request(&frame, statements, true);
                self.dual(frame, req, Answer::Source, false).await
            }
            _ => {
                self.count(kind, "source");
                self.forward(frame).await
            }
        }
    }

    /// Which part of a write the target gets: all of it, none, or (a
    /// `BEGIN BATCH` text mixing selected and unselected tables) the
    /// selected statements only, each judged with its own keyspace.
    fn selection(&self, traits: &WriteTraits, session_ks: Option<&str>) -> BatchSelection {
        let filter = &self.ctx.filter;
        if traits.batch.is_empty() {
            let ks = traits.keyspace.as_deref().or(session_ks);
            return if filter.mirrors(ks, traits.table.as_deref()) {
                BatchSelection::All
            } else {
                BatchSelection::None
            };
        }
        let selected: Vec<bool> = traits
            .batch
            .iter()
            .map(|b| filter.mirrors(b.keyspace.as_deref().or(session_ks), b.table.as_deref()))
            .collect();
        if selected.iter().all(|s| *s) {
            BatchSelection::All
        } else if selected.iter().any(|s| *s) {
            BatchSelection::Some(selected)
        } else {
            BatchSelection::None
        }
    }

    fn mirror_request(
        &self,
        frame: &Frame,
        statements: Vec<(Bytes, Arc<PreparedStatement>)>,
        idempotent: bool,
    ) -> MirrorRequest {
        MirrorRequest {
            version: frame.version,
            flags: frame.flags,
            opcode: frame.opcode,
            body: frame.body.clone(),
            keyspace: self.keyspace(),
            statements,
            idempotent,
            spool_first: false,
        }
    }

    async fn mirrored_write(
        self: &Arc<Self>,
        mut frame: Frame,
        traits: WriteTraits,
        params: ParamsLayout,
        statements: Vec<(Bytes, Arc<PreparedStatement>)>,
        mode: Mode,
        target_text: Option<String>,
    ) -> Result<(), SessionError> {
        let m = &self.ctx.metrics;
        if traits.lwt {
            m.policy_writes.with_label_values(&["lwt"]).inc();
        }
        if traits.counter {
            m.policy_writes.with_label_values(&["counter"]).inc();
        }
        if let Some(f) = traits.nondeterministic {
            m.policy_writes.with_label_values(&[f]).inc();
        }
        // Pin the write time so both clusters store the same WRITETIME.
        // Conditional writes take their time from Paxos and cannot have one.
        let pin = !traits.lwt && !params.has_timestamp();
        if pin {
            frame.body = with_timestamp(&frame.body, &params, next_timestamp_micros());
        }
        let mut req = self.mirror_request(&frame, statements, !traits.counter);
        req.spool_first = traits.truncate;
        if let Some(text) = target_text {
            // The target gets the selected statements of the batch, with the
            // same parameters (and so the same timestamp).
            match replace_query_text(&frame, &text) {
                Some(body) => req.body = body,
                None => {
                    return self
                        .invalid(&frame, "ferry proxy: cannot read the batch text")
                        .await
                }
            }
        }
        if mode == Mode::Async {
            // Room in the spool is promised before the source sees the
            // write: once the source took it, it must not be dropped.
            let Ok(room) = self.ctx.spool_room(&req) else {
                m.spool_full.inc();
                return self
                    .reply(Frame::error(
                        frame.version,
                        frame.stream,
                        error_code::OVERLOADED,
                        "ferry proxy: target spool full; write refused so source and target do not diverge",
                    ))
                    .await;
            };
            if pin {
                m.timestamps_injected.inc();
            }
            self.count("write", "source");
            self.count("write", "target");
            let permit = match self.ctx.mirror_permits.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    // The places free up as the source answers the writes
                    // holding them: send what is queued before waiting.
                    if self.flush_source().await.is_err() {
                        return Err(SessionError::ClientGone);
                    }
                    mirror_permit(&self.ctx).await
                }
            };
            // Mirrored only once the source answers, and only if it may
            // hold the write: a write the source refused is not the
            // target's either.
            self.set_pending(
                frame.stream,
                Pending::MirrorAfter(Box::new(AsyncMirror {
                    req,
                    hold: MirrorHold { permit, room },
                    conditional: traits.lwt,
                })),
            );
            return self.forward(frame).await;
        }
        if pin {
            m.timestamps_injected.inc();
        }
        self.count("write", "source");
        self.count("write", "target");
        match mode {
            Mode::TargetPrimary => self.dual(frame, req, Answer::Target, traits.lwt).await,
            _ => self.dual(frame, req, Answer::Source, traits.lwt).await,
        }
    }

    /// Sends to both sides, waits for both, answers with one of them.
    async fn dual(
        self: &Arc<Self>,
        frame: Frame,
        req: MirrorRequest,
        answer: Answer,
        lwt: bool,
    ) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        let stream = frame.stream;
        let version = frame.version;
        self.set_pending(stream, Pending::Capture(tx));
        self.forward(frame).await?;
        self.tasks.fetch_add(1, Ordering::AcqRel);
        let session = self.clone();
        tokio::spawn(async move {
            let _guard = TaskGuard(session.tasks.clone());
            let target = async {
                let conn = session.target.get().await?;
                send_to_target(&session.ctx, &conn, &req, false).await
            }
            .await;
            let Ok(source) = rx.await else {
                return;
            };
            let m = &session.ctx.metrics;
            let target = match target {
                Ok(mut f) => {
                    f.stream = stream;
                    if f.opcode == opcode::ERROR {
                        m.target_failures.with_label_values(&["error"]).inc();
                        m.mirrored_writes.with_label_values(&["error"]).inc();
                    } else {
                        m.mirrored_writes.with_label_values(&["ok"]).inc();
                    }
                    f
                }
                Err(e) => {
                    m.target_failures.with_label_values(&[e.reason()]).inc();
                    m.mirrored_writes.with_label_values(&["error"]).inc();
                    Frame::error(
                        version,
                        stream,
                        error_code::SERVER_ERROR,
                        &format!("ferry proxy: the target did not take the write: {e}"),
                    )
                }
            };
            if lwt && source.opcode == opcode::RESULT && target.opcode == opcode::RESULT {
                if let (Some(a), Some(b)) = (lwt_applied(&source), lwt_applied(&target)) {
                    if a != b {
                        m.lwt_divergence.inc();
                        warn!(
                            source_applied = a,
                            target_applied = b,
                            "conditional write diverged"
                        );
                    }
                }
            }
            let reply = match answer {
                Answer::Source if source.opcode == opcode::ERROR => source,
                Answer::Source if target.opcode == opcode::ERROR => target,
                Answer::Source => source,
                Answer::Target if target.opcode == opcode::ERROR => target,
                Answer::Target if source.opcode == opcode::ERROR => source,
                Answer::Target => target,
            };
            let _ = session.reply(reply).await;
        });
        Ok(())
    }

    fn sample_shadow_read(&self, mode: Mode) -> bool {
        let pct = self.ctx.shadow_read_percent;
        if pct == 0 || mode == Mode::SourceOnly {
            return false;
        }
        self.ctx.read_counter.fetch_add(1, Ordering::Relaxed) % 100 < pct
    }

    /// A sampled read: the client gets the source's answer as usual; the
    /// target's answer to the same read is compared with it and counted.
    async fn shadow_read(
        self: &Arc<Self>,
        frame: Frame,
        statements: Vec<(Bytes, Arc<PreparedStatement>)>,
        table: TableName,
    ) -> Result<(), SessionError> {
        let req = self.mirror_request(&frame, statements, true);
        let (tx, rx) = oneshot::channel();
        self.set_pending(frame.stream, Pending::Capture(tx));
        self.forward(frame).await?;
        self.tasks.fetch_add(1, Ordering::AcqRel);
        let session = self.clone();
        tokio::spawn(async move {
            let _guard = TaskGuard(session.tasks.clone());
            let ctx = session.ctx.clone();
            let link = session.target.clone();
            let target = tokio::spawn(async move {
                let conn = link.get().await?;
                send_to_target(&ctx, &conn, &req, false).await
            });
            let Ok(source) = rx.await else {
                return;
            };
            let source_rows = super::mirror::rows_section(&source).map(Bytes::copy_from_slice);
            let _ = session.reply(source).await;
            let outcome = match target.await {
                Ok(Ok(t)) => match (source_rows, super::mirror::rows_section(&t)) {
                    (Some(a), Some(b)) if a[..] == *b => "match",
                    (Some(_), Some(_)) => "mismatch",
                    _ => "error",
                },
                _ => "error",
            };
            if outcome == "mismatch" {
                debug!(keyspace = %table.keyspace, table = %table.table, "shadow read differs between source and target");
                session
                    .ctx
                    .metrics
                    .shadow_read_mismatches
                    .with_label_values(&[&table.keyspace, &table.table])
                    .inc();
            }
            session
                .ctx
                .metrics
                .shadow_reads
                .with_label_values(&[outcome])
                .inc();
        });
        Ok(())
    }

    /// target-primary: a read served by the target.
    fn read_from_target(
        self: &Arc<Self>,
        frame: Frame,
        statements: Vec<(Bytes, Arc<PreparedStatement>)>,
    ) {
        let req = self.mirror_request(&frame, statements, true);
        self.tasks.fetch_add(1, Ordering::AcqRel);
        let session = self.clone();
        tokio::spawn(async move {
            let _guard = TaskGuard(session.tasks.clone());
            let result = async {
                let conn = session.target.get().await?;
                send_to_target(&session.ctx, &conn, &req, false).await
            }
            .await;
            let reply = match result {
                Ok(mut f) => {
                    f.stream = frame.stream;
                    f
                }
                Err(e) => {
                    session
                        .ctx
                        .metrics
                        .target_failures
                        .with_label_values(&[e.reason()])
                        .inc();
                    Frame::error(
                        frame.version,
                        frame.stream,
                        error_code::SERVER_ERROR,
                        &format!("ferry proxy: target read failed: {e}"),
                    )
                }
            };
            let _ = session.reply(reply).await;
        });
    }

    /// USE goes to both sides so unqualified statements mean the same.
    async fn use_keyspace(
        self: &Arc<Self>,
        frame: Frame,
        ks: String,
        mode: Mode,
    ) -> Result<(), SessionError> {
        self.count("use", "source");
        let (tx, rx) = oneshot::channel();
        self.set_pending(frame.stream, Pending::Capture(tx));
        self.forward(frame).await?;
        self.tasks.fetch_add(1, Ordering::AcqRel);
        let session = self.clone();
        tokio::spawn(async move {
            let _guard = TaskGuard(session.tasks.clone());
            let Ok(reply) = rx.await else {
                return;
            };
            if reply.opcode == opcode::RESULT {
                *session.keyspace.lock().unwrap_or_else(|p| p.into_inner()) = Some(ks.clone());
                session.target.set_keyspace(&ks);
                if mode != Mode::SourceOnly {
                    session.count("use", "target");
                    match session.target.get().await {
                        Ok(conn) => {
                            if let Err(e) = conn.use_keyspace(&ks, session.ctx.target_timeout).await
                            {
                                warn!(keyspace = %ks, error = %e, "USE failed on the target");
                            }
                        }
                        Err(e) => {
                            debug!(error = %e, "target not connected; USE applies on reconnect")
                        }
                    }
                }
            }
            let _ = session.reply(reply).await;
        });
        Ok(())
    }

    /// The source handshake is over: the proxy can now introduce itself to
    /// the target with the same options and credentials.
    fn handshake_done(self: &Arc<Self>) {
        let hs = Handshake {
            version: self.version(),
            options: self
                .startup_options
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            credentials: self.ctx.target_credentials.clone().or_else(|| {
                self.credentials
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            }),
            keyspace: self.keyspace(),
        };
        *self
            .ctx
            .last_handshake
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(hs.clone());
        // The proxy's own source link logs in as the client did.
        self.source_link.set_handshake(Handshake {
            credentials: self
                .credentials
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            keyspace: None,
            ..hs.clone()
        });
        self.target.set_handshake(hs);
        if self.ctx.mode() != Mode::SourceOnly {
            let target = self.target.clone();
            tokio::spawn(async move {
                if let Err(e) = target.get().await {
                    debug!(error = %e, "target not reachable yet");
                }
            });
        }
    }

    async fn source_loop(self: Arc<Self>, mut reader: FrameReader) {
        let mut batch = Vec::new();
        loop {
            let mut next = reader.next().await;
            let mut keep_going = true;
            // Every answer already buffered goes out in one write.
            loop {
                match next {
                    Ok(Some(frame)) => {
                        if let Some(msg) = self.on_source_frame(frame) {
                            batch.push(msg);
                        }
                    }
                    Ok(None) => {
                        keep_going = false;
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "source link failed");
                        keep_going = false;
                        break;
                    }
                }
                next = match reader.try_next() {
                    Ok(None) => break,
                    other => other,
                };
            }
            if !batch.is_empty() {
                let mut out = self.client_out.lock().await;
                for msg in batch.drain(..) {
                    out.queue(msg);
                }
                if out.flush().await.is_err() {
                    break;
                }
            }
            if !keep_going {
                break;
            }
        }
    }

    /// Handles one answer from the source; returns what to send the client
    /// (`None` when a waiting task takes it).
    fn on_source_frame(self: &Arc<Self>, mut frame: Frame) -> Option<Outbound> {
        if frame.stream >= 0 && frame.stream & LATENCY_SAMPLE_MASK == 0 {
            let started = self
                .source_started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&frame.stream);
            if let Some(t) = started {
                self.ctx
                    .metrics
                    .latency
                    .with_label_values(&["source"])
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        if frame.stream >= 0 {
            let _ = self
                .outstanding
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
        }
        let v5 = frame.version >= 5;
        let mut switch = None;
        match frame.opcode {
            opcode::READY | opcode::AUTHENTICATE if v5 => {
                // v5 framing starts after these on both links.
                self.source_state.set_segmented_in();
                self.source_state.set_segmented_out();
                self.client_state.set_segmented_in();
                switch = Some(true);
                if frame.opcode == opcode::READY {
                    self.handshake_done();
                }
            }
            opcode::READY | opcode::AUTH_SUCCESS => {
                if !v5 {
                    self.source_state.enable_compress_out();
                    switch = Some(false);
                }
                self.handshake_done();
            }
            opcode::SUPPORTED => {
                if let Some(body) = rewrite_supported(
                    &frame.body,
                    self.ctx.protocol_version_cap,
                    self.ctx.cql_version.as_deref(),
                ) {
                    frame.body = body;
                }
            }
            opcode::EVENT => {
                let peers = self.ctx.peers();
                if !peers.is_empty() {
                    if let Ok(Some(body)) = rewrite_event(frame.flags, &frame.body, &peers) {
                        frame.body = body;
                        self.ctx
                            .metrics
                            .peer_rewrites
                            .with_label_values(&["event"])
                            .inc();
                    }
                }
            }
            _ => {}
        }
        let pending = if frame.stream >= 0 {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.is_empty() {
                None
            } else {
                p.remove(&frame.stream)
            }
        } else {
            None
        };
        match pending {
            None => {}
            Some(Pending::Capture(tx)) => {
                return tx.send(frame).err().map(Outbound::Frame);
            }
            Some(Pending::MirrorAfter(m)) => {
                let AsyncMirror {
                    req,
                    hold,
                    conditional,
                } = *m;
                if source_may_hold(&frame, conditional) {
                    mirror_async(self.ctx.clone(), self.target.clone(), req, hold);
                } else {
                    self.ctx
                        .metrics
                        .mirrored_writes
                        .with_label_values(&["not_on_source"])
                        .inc();
                }
            }
            Some(Pending::Peers(local)) => {
                let peers = self.ctx.peers();
                if !peers.is_empty() {
                    let local = if local {
                        self.ctx.self_peer.map(|(_, p)| p)
                    } else {
                        None
                    };
                    match rewrite_rows(frame.flags, &frame.body, frame.version, &peers, local) {
                        Ok(Some((body, stats))) => {
                            frame.body = body;
                            self.ctx
                                .metrics
                                .peer_rewrites
                                .with_label_values(&["row"])
                                .inc_by(u64::from(stats.rewritten));
                            if stats.unmapped > 0 {
                                self.ctx
                                    .metrics
                                    .peer_rewrites
                                    .with_label_values(&["unmapped"])
                                    .inc_by(u64::from(stats.unmapped));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            warn!(error = %e, "cannot read a system table result; forwarded as is")
                        }
                    }
                }
            }
            Some(Pending::Prepare {
                query,
                keyspace,
                bound,
                original,
            }) => {
                let Ok(Some(result)) =
                    parse_prepared_result(frame.flags, &frame.body, frame.version)
                else {
                    return Some(Outbound::Frame(frame));
                };
                match original {
                    Some(original) => {
                        // The client hears back once the rewritten text is
                        // prepared too, so its first EXECUTE finds it.
                        let session = self.clone();
                        let rewritten = Rewritten {
                            query,
                            original,
                            keyspace,
                            bound,
                        };
                        tokio::spawn(async move {
                            session.prepare_rewritten(frame, result, rewritten).await;
                        });
                        return None;
                    }
                    None => {
                        let counter = result.bind_types.contains(&COUNTER_TYPE);
                        let stmt =
                            PreparedStatement::new(&query, keyspace, classify(&query), counter);
                        self.remember_prepared(result.id, stmt);
                    }
                }
            }
        }
        if frame.opcode == opcode::ERROR && frame.error_code() == Some(error_code::UNPREPARED) {
            self.unprepared_rewritten(&mut frame);
        }
        Some(match switch {
            Some(true) => Outbound::FrameThenSegments(frame),
            Some(false) => Outbound::FrameThenCompress(frame),
            None => Outbound::Frame(frame),
        })
    }

    /// Prepares on the source the rewritten text of a statement whose
    /// client text the source just prepared (`answer`), records both ids,
    /// then gives the client the answer to its own text. If the source
    /// refuses the rewritten text, the statement runs as the client wrote
    /// it (each cluster then evaluates its calls; counted and logged).
    async fn prepare_rewritten(
        self: Arc<Self>,
        answer: Frame,
        client: super::prepared::PreparedResult,
        rewritten: Rewritten,
    ) {
        let Rewritten {
            query,
            original,
            keyspace,
            bound,
        } = rewritten;
        let counter = client.bind_types.contains(&COUNTER_TYPE);
        match self.prepare_on_source(&query, keyspace.as_deref()).await {
            Ok(exec_id) => {
                let stmt = PreparedStatement::new(&query, keyspace, classify(&query), counter)
                    .with_bound(bound)
                    .with_ids(client.id.clone(), exec_id.clone());
                let stmt = self.remember_prepared(client.id, stmt);
                self.ctx.prepared.alias(exec_id, stmt);
            }
            Err(e) => {
                self.ctx
                    .metrics
                    .policy_writes
                    .with_label_values(&["not_replaced"])
                    .inc();
                warn!(error = %e, "the source did not prepare the text with the proxy's markers; now()/uuid() in this statement are left to each cluster");
                let stmt =
                    PreparedStatement::new(&original, keyspace, classify(&original), counter);
                self.remember_prepared(client.id, stmt);
            }
        }
        let _ = self.reply(answer).await;
    }

    /// Prepares `query` on the source over the proxy's own link; the
    /// source's id for it.
    async fn prepare_on_source(
        &self,
        query: &str,
        keyspace: Option<&str>,
    ) -> Result<Bytes, super::mirror::MirrorError> {
        use super::mirror::MirrorError;
        // One at a time: a prepare switches the link's keyspace first.
        let _one = self.source_prepares.lock().await;
        let link = self.source_link.get().await?;
        let timeout = self.ctx.target_timeout;
        if let Some(ks) = keyspace {
            let current = link
                .keyspace
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if current.as_deref() != Some(ks) {
                link.use_keyspace(ks, timeout).await?;
            }
        }
        let reply = link.prepare(query, None, timeout).await?;
        parse_prepared_result(reply.flags, &reply.body, reply.version)?
            .map(|r| r.id)
            .ok_or_else(|| MirrorError::Prepare {
                message: super::upstream::describe_error(&reply),
                refused: true,
            })
    }

    /// An UNPREPARED from the source for a rewritten text's id: the source
    /// forgot it. The client is told its own id instead (the one it knows),
    /// prepares again through the proxy, and the proxy prepares the
    /// rewritten text again.
    fn unprepared_rewritten(&self, frame: &mut Frame) {
        let Ok(start) = response_body_start(frame.flags, &frame.body) else {
            return;
        };
        let mut r = Reader::new(&frame.body[start..]);
        let (Ok(_), Ok(message), Ok(id)) = (r.i32(), r.string(), r.short_bytes()) else {
            return;
        };
        let Some(stmt) = self.ctx.prepared.get(id) else {
            return;
        };
        let Some(client_id) = stmt.client_id.clone() else {
            return;
        };
        if client_id[..] == *id {
            return;
        }
        stmt.forget_source_exec_id();
        let mut body = BytesMut::new();
        body.put_slice(&frame.body[..start]);
        body.put_i32(error_code::UNPREPARED);
        put_string(&mut body, message);
        put_short_bytes(&mut body, &client_id);
        frame.body = body.freeze();
    }

    /// Files a statement the source prepared under `id`, and prepares it
    /// on the target in the background; returns the entry kept.
    fn remember_prepared(
        self: &Arc<Self>,
        id: Bytes,
        stmt: PreparedStatement,
    ) -> Arc<PreparedStatement> {
        let stmt = self.ctx.prepared.insert(id, stmt);
        self.ctx
            .metrics
            .prepared_cache_size
            .set(self.ctx.prepared.len() as i64);
        // PREPARE on the target as well, in the background.
        if self.ctx.mode() != Mode::SourceOnly && stmt.target().is_none() {
            let session = self.clone();
            let stmt = stmt.clone();
            tokio::spawn(async move {
                if let Ok(conn) = session.target.get().await {
                    if let Err(e) =
                        super::mirror::prepare_on_target(&session.ctx, &conn, &stmt, false).await
                    {
                        debug!(error = %e, "preparing on the target failed; will prepare at first use");
                    }
                }
            });
        }
        stmt
    }
}

/// A QUERY body with its statement text replaced.
fn replace_query_text(frame: &Frame, text: &str) -> Option<Bytes> {
    let start = super::request::body_start(frame).ok()?;
    let old_len = i32::from_be_bytes(frame.body.get(start..start + 4)?.try_into().ok()?);
    let rest = start + 4 + usize::try_from(old_len).ok()?;
    let mut b = BytesMut::with_capacity(frame.body.len() + text.len());
    b.put_slice(&frame.body[..start]);
    super::wire::put_long_string(&mut b, text);
    b.put_slice(frame.body.get(rest..)?);
    Some(b.freeze())
}

/// Clears one query-parameter flag bit.
fn clear_flag(body: &Bytes, params: &ParamsLayout, flag: u32) -> Bytes {
    let mut b = BytesMut::from(&body[..]);
    if params.flags_wide {
        let v = params.flags & !flag;
        b[params.flags_at..params.flags_at + 4].copy_from_slice(&v.to_be_bytes());
    } else {
        b[params.flags_at] = (params.flags & !flag) as u8;
    }
    b.freeze()
}

fn read_string_map(body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut r = Reader::new(body);
    Ok(r.string_map()?
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// SUPPORTED: offer only the versions under the cap, the forced CQL
/// version, and the compressions the proxy speaks.
fn rewrite_supported(body: &[u8], cap: u8, cql: Option<&str>) -> Option<Bytes> {
    let mut r = Reader::new(body);
    let map = r.string_multimap().ok()?;
    let mut out = BytesMut::with_capacity(body.len());
    out.put_u16(map.len() as u16);
    for (key, values) in map {
        let values: Vec<&str> = match key {
            "PROTOCOL_VERSIONS" => values
                .into_iter()
                .filter(|v| {
                    v.split('/')
                        .next()
                        .and_then(|n| n.parse::<u8>().ok())
                        .is_some_and(|n| n <= cap)
                })
                .collect(),
            "CQL_VERSION" => match cql {
                Some(c) => vec![c],
                None => values,
            },
            "COMPRESSION" => values
                .into_iter()
                .filter(|v| v.eq_ignore_ascii_case("lz4") || v.eq_ignore_ascii_case("snappy"))
                .collect(),
            _ => values,
        };
        put_string(&mut out, key);
        out.put_u16(values.len() as u16);
        for v in values {
            put_string(&mut out, v);
        }
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_is_capped() {
        let mut b = BytesMut::new();
        b.put_u16(3);
        for (k, vs) in [
            (
                "PROTOCOL_VERSIONS",
                vec!["3/v3", "4/v4", "5/v5", "6/v6-beta"],
            ),
            ("CQL_VERSION", vec!["3.4.7"]),
            ("COMPRESSION", vec!["snappy", "lz4", "zstd"]),
        ] {
            put_string(&mut b, k);
            b.put_u16(vs.len() as u16);
            for v in vs {
                put_string(&mut b, v);
            }
        }
        let out = rewrite_supported(&b, 4, Some("3.4.5")).unwrap();
        let mut r = Reader::new(&out);
        let m = r.string_multimap().unwrap();
        assert_eq!(m[0].1, vec!["3/v3", "4/v4"]);
        assert_eq!(m[1].1, vec!["3.4.5"]);
        assert_eq!(m[2].1, vec!["snappy", "lz4"]);
    }
}
