//! Reading each client request only as far as routing needs: QUERY,
//! PREPARE, EXECUTE and BATCH are parsed, `now()`/`uuid()` filled, batch
//! children looked up; then `route` decides where the request goes.

use std::borrow::Cow;

use super::*;

impl Session {
    pub(super) async fn on_client_frame(
        self: &Arc<Self>,
        frame: Frame,
    ) -> Result<(), SessionError> {
        self.version.store(frame.version, Ordering::Relaxed);
        match frame.opcode {
            opcode::STARTUP => self.on_startup(frame).await,
            opcode::AUTH_RESPONSE => self.on_auth_response(frame).await,
            opcode::QUERY => self.on_query(frame).await,
            opcode::PREPARE => self.on_prepare(frame).await,
            opcode::EXECUTE => self.on_execute(frame).await,
            opcode::BATCH => self.on_batch(frame).await,
            op => {
                self.count(opcode::name(op), "source");
                self.forward(frame)
            }
        }
    }

    pub(super) async fn on_query(self: &Arc<Self>, mut frame: Frame) -> Result<(), SessionError> {
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
        self.route(
            frame,
            Cow::Owned(class),
            params,
            UsedStatements::new(),
            false,
        )
        .await
    }

    pub(super) async fn on_prepare(self: &Arc<Self>, frame: Frame) -> Result<(), SessionError> {
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
        self.forward(frame)
    }

    pub(super) async fn on_execute(self: &Arc<Self>, mut frame: Frame) -> Result<(), SessionError> {
        let (id, mut params) = match parse_execute(&frame) {
            // A view of the frame's bytes, not a copy.
            Ok(e) => (frame.body.slice_ref(e.id), e.params),
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
        // Borrowed: copied only by the routes that keep it (a mirrored
        // write). Its write traits were completed when it was prepared.
        let shared = stmt.clone();
        let class = Cow::Borrowed(&shared.class);
        if matches!(
            *class,
            StatementClass::Read {
                system: Some(_),
                ..
            }
        ) && params.flags & param_flags::SKIP_METADATA != 0
        {
            // Peer rewriting needs column names: ask the source for metadata.
            frame.body = clear_flag(&frame.body, &params, param_flags::SKIP_METADATA);
        }
        self.route(frame, class, params, smallvec::smallvec![(id, stmt)], false)
            .await
    }

    pub(super) async fn on_batch(self: &Arc<Self>, mut frame: Frame) -> Result<(), SessionError> {
        let session_ks = self.keyspace();
        // Children prepared with proxy-filled markers get their values
        // first; only then (offsets moved) is the batch read a second time.
        let (edits, planned) = match parse_batch(&frame) {
            Ok(batch) => match self.batch_edits(&batch, &frame.body) {
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
                    Cow::Owned(StatementClass::Write(traits)),
                    params,
                    statements,
                    !mirrored_any,
                )
                .await
            }
        }
    }

    /// The proxy's edits of a BATCH, as (byte range, bytes) in order: for
    /// a prepared child whose calls it fills, the rewritten text's id and
    /// the values with its own; for a text child calling `now()` and the
    /// like (mirrored), the text with literals, as in a QUERY.
    pub(super) fn batch_edits(
        &self,
        batch: &crate::proxy::request::BatchRequest<'_>,
        body: &[u8],
    ) -> Result<Vec<RangeEdit>, WireError> {
        let mut edits = Vec::new();
        let micros = next_timestamp_micros();
        for child in &batch.children {
            match child {
                BatchChild::Query { text, range, .. } => {
                    if self.ctx.mode() == Mode::SourceOnly {
                        continue;
                    }
                    let calls = matches!(classify(text), StatementClass::Write(w) if w.nondeterministic.is_some());
                    if let Some((literal, replaced)) = calls
                        .then(|| replace_nondeterministic(text, micros))
                        .flatten()
                    {
                        let mut b = BytesMut::with_capacity(literal.len() + 4);
                        crate::proxy::wire::put_long_string(&mut b, &literal);
                        edits.push((*range, b.freeze()));
                        self.ctx
                            .metrics
                            .policy_writes
                            .with_label_values(&["replaced"])
                            .inc_by(replaced.len() as u64);
                    }
                }
                BatchChild::Prepared { id, range, values } => {
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
                    let mut id = BytesMut::with_capacity(exec_id.len() + 2);
                    id.put_u16(exec_id.len() as u16);
                    id.put_slice(&exec_id);
                    edits.push((*range, id.freeze()));
                    let section = body.get(values.0..values.1);
                    edits.push((*values, splice_values(section, &stmt.bound, micros)?));
                    self.count_bound(&stmt.bound);
                }
            }
        }
        Ok(edits)
    }

    pub(super) fn count_bound(&self, bound: &[BoundFunction]) {
        self.ctx
            .metrics
            .policy_writes
            .with_label_values(&["replaced"])
            .inc_by(bound.len() as u64);
    }

    /// What a BATCH writes: combined traits, whether any child is mirrored,
    /// and its prepared children; `Err(id)` for an id the proxy lacks.
    #[allow(clippy::type_complexity)]
    pub(super) fn batch_plan(
        &self,
        batch: &crate::proxy::request::BatchRequest<'_>,
        session_ks: Option<String>,
    ) -> Result<(WriteTraits, ParamsLayout, UsedStatements, bool), Bytes> {
        let mut traits = WriteTraits {
            counter: batch.batch_type == COUNTER_BATCH,
            ..WriteTraits::default()
        };
        let mut statements = UsedStatements::new();
        let mut mirrored_any = false;
        let session_ks = batch.params.keyspace.clone().or(session_ks);
        for child in &batch.children {
            let class = match child {
                BatchChild::Query { text, .. } => classify(text),
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
                traits.list_order |= w.list_order || (w.increment_by_marker && !traits.counter);
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
}

/// A QUERY body with its statement text replaced.
pub(super) fn replace_query_text(frame: &Frame, text: &str) -> Option<Bytes> {
    let start = crate::proxy::request::body_start(frame).ok()?;
    let old_len = i32::from_be_bytes(frame.body.get(start..start + 4)?.try_into().ok()?);
    let rest = start + 4 + usize::try_from(old_len).ok()?;
    let mut b = BytesMut::with_capacity(frame.body.len() + text.len());
    b.put_slice(&frame.body[..start]);
    crate::proxy::wire::put_long_string(&mut b, text);
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
