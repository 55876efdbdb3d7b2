//! Answers from the source: handed to the client in batches, to a task
//! waiting for them, or rewritten (peers, events, SUPPORTED, UNPREPARED of a
//! rewritten statement); an async write is mirrored from here.

use super::*;

impl Session {
    pub(super) async fn source_loop(self: Arc<Self>, mut reader: FrameReader) {
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
    pub(super) fn on_source_frame(self: &Arc<Self>, mut frame: Frame) -> Option<Outbound> {
        if frame.stream >= 0 && frame.stream & LATENCY_SAMPLE_MASK == 0 {
            let started = self
                .source_started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&frame.stream);
            if let Some(t) = started {
                self.ctx
                    .metrics
                    .observe_latency("source", t.elapsed().as_secs_f64());
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
                    mirror_async(
                        self.ctx.clone(),
                        Toward::Target,
                        self.target.clone(),
                        req,
                        hold,
                    );
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
                        let (class, counter) = classify_prepared(&query, &result.bind_types);
                        let stmt = PreparedStatement::new(&query, keyspace, class, counter);
                        self.remember_prepared(result.id, stmt);
                    }
                }
            }
        }
        if frame.opcode == opcode::ERROR && frame.error_code() == Some(error_code::UNPREPARED) {
            debug!("the source answered UNPREPARED");
            self.unprepared_rewritten(&mut frame);
        }
        Some(match switch {
            Some(true) => Outbound::FrameThenSegments(frame),
            Some(false) => Outbound::FrameThenCompress(frame),
            None => Outbound::Frame(frame),
        })
    }

    /// An UNPREPARED from the source for a rewritten text's id: the source
    /// forgot it. The client is told its own id instead (the one it knows),
    /// prepares again through the proxy, and the proxy prepares the
    /// rewritten text again.
    pub(super) fn unprepared_rewritten(&self, frame: &mut Frame) {
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
}
