//! Requests that go to both clusters: writes (sync, async after the
//! source's answer, or target-primary), DDL with `--mirror-ddl`, and `USE`.

use super::*;

/// How `route` sends a write to both sides.
pub(super) struct WritePlan {
    /// The side the client hears.
    pub answer: Answer,
    /// The target's copy follows the source's answer (async mode).
    pub asynchronous: bool,
    /// For a `BEGIN BATCH` text: what the target gets instead (its
    /// selected statements).
    pub target_text: Option<String>,
}

impl Session {
    pub(super) fn mirror_request(
        &self,
        frame: &Frame,
        statements: UsedStatements,
        idempotent: bool,
    ) -> MirrorRequest {
        MirrorRequest {
            version: frame.version,
            flags: frame.flags,
            opcode: frame.opcode,
            body: frame.body.clone(),
            keyspace: self.keyspace_shared(),
            statements,
            idempotent,
        }
    }

    pub(super) async fn mirrored_write(
        self: &Arc<Self>,
        mut frame: Frame,
        traits: &WriteTraits,
        params: ParamsLayout,
        statements: UsedStatements,
        plan: WritePlan,
    ) -> Result<(), SessionError> {
        let WritePlan {
            answer,
            asynchronous,
            target_text,
        } = plan;
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
        let policy = WritePolicy::of(traits, params.has_timestamp());
        let pin = policy.pin_timestamp;
        if pin {
            frame.body = with_timestamp(&frame.body, &params, next_timestamp_micros());
        }
        let mut req = self.mirror_request(&frame, statements, policy.idempotent);
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
        if asynchronous && answer == Answer::Target {
            return self
                .target_first(frame, req, policy, traits.truncate, pin)
                .await;
        }
        if asynchronous {
            // Room in the spool is promised before the source sees the
            // write: once the source took it, it must not be dropped.
            let Ok(room) = self.ctx.spool_room(&req, Toward::Target) else {
                return self
                    .refuse_spool_full(&frame, Toward::Target, "write")
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
            let hold = MirrorHold { permit, room };
            // Writes whose effect depends on their order (a conditional
            // write, a TRUNCATE, a list write) wait for the target as well
            // while it is up, so the client's next write, through whichever
            // proxy, reaches the target after them.
            if policy.ordered && self.ctx.spool.is_empty() {
                return self
                    .ordered_async(frame, req, hold, policy, traits.truncate)
                    .await;
            }
            // Mirrored only once the source answers, and only if it may
            // hold the write: a write the source refused is not the
            // target's either.
            self.set_pending(
                frame.stream,
                Pending::MirrorAfter(Box::new(AsyncMirror {
                    req,
                    hold,
                    conditional: policy.conditional,
                })),
            );
            return self.forward(frame);
        }
        if pin {
            m.timestamps_injected.inc();
        }
        self.count("write", "source");
        self.count("write", "target");
        self.dual(frame, req, answer, policy.conditional).await
    }

    /// `target-primary-async`: the target takes the write first, and the
    /// client hears its answer; if the target may hold the write, the
    /// source's copy follows in the background, retried, then spooled
    /// toward the source. A write whose order matters (conditional,
    /// TRUNCATE, list) reaches the source before the client hears, while
    /// the source's spool is empty, as `ordered_async` does the other way.
    /// A write the target refused is not the source's either. `req` is the
    /// target's part (of a `BEGIN BATCH` text, its selected statements);
    /// the source's copy is the whole request, as `frame` holds it.
    /// `truncate`: a TRUNCATE, whose copy waits for the copies already on
    /// their way.
    async fn target_first(
        self: &Arc<Self>,
        frame: Frame,
        req: MirrorRequest,
        policy: WritePolicy,
        truncate: bool,
        pin: bool,
    ) -> Result<(), SessionError> {
        let m = &self.ctx.metrics;
        let copy = MirrorRequest {
            body: frame.body.clone(),
            ..req.clone()
        };
        // Room in the source's spool is promised before the target sees
        // the write: once the target took it, the copy must not be dropped.
        let Ok(room) = self.ctx.spool_room(&copy, Toward::Source) else {
            return self
                .refuse_spool_full(&frame, Toward::Source, "write")
                .await;
        };
        if pin {
            m.timestamps_injected.inc();
        }
        self.count("write", "target");
        self.count("write", "source");
        let permit = mirror_permit(&self.ctx).await;
        let hold = MirrorHold { permit, room };
        let (stream, version) = (frame.stream, frame.version);
        self.spawn_tracked(move |session| async move {
            let ctx = &session.ctx;
            let target = async {
                let conn = session.target.get().await?;
                send_to_target(ctx, &conn, &req, false).await
            }
            .await;
            let (answer, may_hold) = match target {
                Ok(mut f) => {
                    f.stream = stream;
                    let held = source_may_hold(&f, policy.conditional);
                    (f, held)
                }
                Err(e) => {
                    ctx.metrics
                        .target_failures
                        .with_label_values(&[e.reason()])
                        .inc();
                    // A timeout leaves the outcome unknown: the target may
                    // hold the write, so the source gets it too.
                    let held = matches!(
                        e,
                        MirrorError::Upstream(crate::proxy::upstream::UpstreamError::Timeout(_))
                    );
                    let error = Frame::error(
                        version,
                        stream,
                        error_code::SERVER_ERROR,
                        &format!("ferry proxy: the target did not take the write: {e}"),
                    );
                    (error, held)
                }
            };
            if !may_hold {
                ctx.metrics
                    .mirrored_writes
                    .with_label_values(&["not_on_target"])
                    .inc();
                let _ = session.reply(answer).await;
                return;
            }
            if policy.ordered && ctx.source_spool.is_empty() {
                if truncate {
                    live_mirrors_done(ctx).await;
                }
                let source =
                    deliver(ctx, Toward::Source, &session.source_copies, &copy, hold).await;
                if let (true, Some(source)) = (policy.conditional, source) {
                    let source = until_applied(
                        ctx,
                        Toward::Source,
                        &session.source_copies,
                        &copy,
                        &answer,
                        source,
                    )
                    .await;
                    count_lwt_divergence(ctx, &source, &answer);
                }
                let _ = session.reply(answer).await;
                return;
            }
            let _ = session.reply(answer).await;
            mirror_async(
                session.ctx.clone(),
                Toward::Source,
                session.source_copies.clone(),
                copy,
                hold,
            );
        });
        Ok(())
    }

    /// `async` mode, a write whose order matters: the source first; if it
    /// may hold the write, the target next (a TRUNCATE after the writes
    /// already on their way there), retried, else spooled; then the
    /// client hears the source's answer. The target being down costs the
    /// client the retries, never the write. `truncate`: the write is a
    /// TRUNCATE.
    async fn ordered_async(
        self: &Arc<Self>,
        frame: Frame,
        req: MirrorRequest,
        hold: MirrorHold,
        policy: WritePolicy,
        truncate: bool,
    ) -> Result<(), SessionError> {
        let rx = self.forward_capturing(frame).await?;
        self.spawn_tracked(move |session| async move {
            let Ok(source) = rx.await else {
                return;
            };
            let ctx = &session.ctx;
            if source_may_hold(&source, policy.conditional) {
                if truncate {
                    live_mirrors_done(ctx).await;
                }
                let target = deliver(ctx, Toward::Target, &session.target, &req, hold).await;
                if let (true, Some(target)) = (policy.conditional, target) {
                    let target =
                        until_applied(ctx, Toward::Target, &session.target, &req, &source, target)
                            .await;
                    count_lwt_divergence(ctx, &source, &target);
                }
            } else {
                ctx.metrics
                    .mirrored_writes
                    .with_label_values(&["not_on_source"])
                    .inc();
            }
            let _ = session.reply(source).await;
        });
        Ok(())
    }

    /// The spool owed to `toward` cannot promise room for `frame`'s copy:
    /// the request (`what`) is refused before either cluster sees it, so
    /// the two do not diverge.
    pub(super) async fn refuse_spool_full(
        &self,
        frame: &Frame,
        toward: Toward,
        what: &str,
    ) -> Result<(), SessionError> {
        self.ctx.metrics.spool_full.inc();
        let primary = match toward {
            Toward::Target => "source",
            Toward::Source => "target",
        };
        let message = format!(
            "ferry proxy: {} spool full; {what} refused so {primary} and {} do not diverge",
            toward.name(),
            toward.name()
        );
        self.reply(Frame::error(
            frame.version,
            frame.stream,
            error_code::OVERLOADED,
            &message,
        ))
        .await
    }

    /// Sends to both sides, waits for both, answers with one of them.
    pub(super) async fn dual(
        self: &Arc<Self>,
        frame: Frame,
        req: MirrorRequest,
        answer: Answer,
        lwt: bool,
    ) -> Result<(), SessionError> {
        let stream = frame.stream;
        let version = frame.version;
        let rx = self.forward_capturing(frame).await?;
        self.spawn_tracked(move |session| async move {
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
                        m.mirrored_ok();
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
            if lwt {
                count_lwt_divergence(&session.ctx, &source, &target);
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

    /// USE goes to both sides so unqualified statements mean the same.
    pub(super) async fn use_keyspace(
        self: &Arc<Self>,
        frame: Frame,
        ks: String,
        on_target: bool,
    ) -> Result<(), SessionError> {
        self.count("use", "source");
        let rx = self.forward_capturing(frame).await?;
        self.spawn_tracked(move |session| async move {
            let Ok(reply) = rx.await else {
                return;
            };
            if reply.opcode == opcode::RESULT {
                *session.keyspace.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(ks.as_str()));
                session.target.set_keyspace(&ks);
                session.source_copies.set_keyspace(&ks);
                if let Some(conn) = session.source_copies.connected().await {
                    if let Err(e) = conn.use_keyspace(&ks, session.ctx.target_timeout).await {
                        warn!(keyspace = %ks, error = %e, "USE failed on the link of the source's copies");
                    }
                }
                if on_target {
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
}

/// A conditional write applied on one side and not the other.
fn count_lwt_divergence(ctx: &ProxyContext, source: &Frame, target: &Frame) {
    if source.opcode != opcode::RESULT || target.opcode != opcode::RESULT {
        return;
    }
    if let (Some(a), Some(b)) = (lwt_applied(source), lwt_applied(target)) {
        if a != b {
            ctx.metrics.lwt_divergence.inc();
            warn!(
                source_applied = a,
                target_applied = b,
                "conditional write diverged"
            );
        }
    }
}
