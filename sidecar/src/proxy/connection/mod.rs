//! One client connection: its source connection (the client's own
//! handshake passes through), its target link, and the routing of every
//! request between them.
//!
//! `serve` and the session's plumbing live here; each step has a file:
//! `handshake` (STARTUP, AUTH, SUPPORTED), `intercept` (reading requests),
//! `route` (where each goes: one pure decision), `dual_write` (both sides),
//! `schema_change` (DDL followed on the target), `target_reads`
//! (target-primary and shadow reads), `answers` (the
//! source's replies) and `prepares` (prepared statements and their ids).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info_span, warn, Instrument};

use super::bound::{bind_nondeterministic, replace_nondeterministic, splice_values, BoundFunction};
use super::codec::{FrameDecoder, LinkState};
use super::compression::Compression;
use super::config::Mode;
use super::frame::{error_code, opcode, DecodeRules, Frame, FrameError, StreamMap};
use super::link::{FrameReader, FrameWriter, Outbound, ReadError};
use super::tls::{BoxRead, BoxWrite};
use crate::proxy::classify::{
    batch_statements, classify, StatementClass, SystemTable, WriteTraits,
};
use crate::proxy::mirror::{
    deliver, live_mirrors_done, mirror_async, mirror_permit, send_to_target, send_toward,
    source_may_hold, until_applied, MirrorError, MirrorHold, MirrorRequest, ProxyContext,
    TargetLink, Toward,
};
use crate::proxy::peers::{rewrite_event, rewrite_rows};
use crate::proxy::policy::WritePolicy;
use crate::proxy::prepared::{classify_prepared, parse_prepared_result, PreparedStatement};
use crate::proxy::request::{
    next_timestamp_micros, param_flags, parse_batch, parse_execute, parse_prepare, parse_query,
    replace_ranges, replace_short_bytes, with_timestamp, with_values, BatchChild, ParamsLayout,
    RangeEdit, COUNTER_BATCH,
};
use crate::proxy::result::lwt_applied;
use crate::proxy::result::response_body_start;
use crate::proxy::upstream::{Credentials, Handshake};
use crate::proxy::wire::{put_short_bytes, put_string, Reader, WireError};

mod answers;
mod dual_write;
mod handshake;
mod intercept;
mod prepares;
mod route;
mod schema_change;
mod target_reads;

use dual_write::WritePlan;
use handshake::rewrite_supported;
use intercept::replace_query_text;
use route::Answer;

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
    source_started: Mutex<StreamMap<Instant>>,
    client_state: Arc<LinkState>,
    source_state: Arc<LinkState>,
    pending: Mutex<StreamMap<Pending>>,
    version: AtomicU8,
    /// The keyspace of the client's last `USE`: shared with the requests
    /// mirrored under it.
    keyspace: Mutex<Option<Arc<str>>>,
    startup_options: Mutex<Vec<(String, String)>>,
    credentials: Mutex<Option<Credentials>>,
    target: Arc<TargetLink>,
    /// The proxy's own link to the source, to prepare rewritten texts.
    source_link: Arc<TargetLink>,
    source_prepares: tokio::sync::Mutex<()>,
    /// In `target-primary-async`, the link the source's copies of writes
    /// go on: its keyspace follows the client's `USE`, as the target
    /// link's does.
    source_copies: Arc<TargetLink>,
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

/// The prepared statements a request executes (`mirror::RequestStatements`).
pub(super) type UsedStatements = super::mirror::RequestStatements;

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
            source_copies: Arc::new(TargetLink::to_source(ctx.clone())),
            ctx: ctx.clone(),
            client_out,
            source_queue: Mutex::new(Vec::new()),
            source_out,
            source_started: Mutex::new(StreamMap::default()),
            client_state: client_state.clone(),
            source_state: source_state.clone(),
            pending: Mutex::new(StreamMap::default()),
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
        self.keyspace_shared().as_deref().map(str::to_owned)
    }

    /// The connection's keyspace, shared rather than copied.
    fn keyspace_shared(&self) -> Option<Arc<str>> {
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

    /// Writes the requests queued for the source, with one syscall.
    async fn flush_source(&self) -> std::io::Result<()> {
        let mut out = self.source_out.lock().await;
        // Drained in place: the queue keeps its capacity, so a request
        // costs no allocation here.
        for frame in self
            .source_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            out.queue(Outbound::Frame(frame));
        }
        out.flush().await
    }

    /// Queues `frame` for the source (written after the client reader's
    /// current batch). Not `async`: nothing here waits, and every request
    /// passes through it.
    fn forward(&self, frame: Frame) -> Result<(), SessionError> {
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

    /// Forwards `frame` to the source and hands its answer to the caller
    /// instead of the client: the caller decides what the client hears.
    async fn forward_capturing(
        &self,
        frame: Frame,
    ) -> Result<oneshot::Receiver<Frame>, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.set_pending(frame.stream, Pending::Capture(tx));
        self.forward(frame)?;
        Ok(rx)
    }

    /// Runs `work` in the background, counted in `tasks` until it ends, so
    /// the connection's close waits for it (a mirror or a captured answer
    /// is never cut off half way).
    fn spawn_tracked<F, Fut>(self: &Arc<Self>, work: F)
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.fetch_add(1, Ordering::AcqRel);
        let guard = TaskGuard(self.tasks.clone());
        let fut = work(self.clone());
        // Boxed before it is spawned, as an async mirror is: these futures
        // (a dual write's, an ordered mirror's) are hundreds of bytes to
        // kilobytes, and tokio moves a task's future several times.
        tokio::spawn(Box::pin(async move {
            let _guard = guard;
            fut.await;
        }));
    }

    fn set_pending(&self, stream: i16, p: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream, p);
    }

    fn count(&self, kind: &str, side: &str) {
        self.ctx.metrics.count_request(kind, side);
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

    async fn unprepared(&self, frame: &Frame, id: &[u8]) -> Result<(), SessionError> {
        // The proxy does not know this id (evicted, or prepared before the
        // proxy started): make the driver prepare it again through us.
        debug!(id = %hex_id(id), "an id this proxy does not know: UNPREPARED");
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
}

/// A statement id as hex, for logs.
pub(crate) fn hex_id(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}
