//! Reads the target serves (target-primary) or answers as well, to be
//! compared with the source's (shadow reads).

use super::*;

impl Session {
    pub(super) fn sample_shadow_read(&self, mode: Mode) -> bool {
        let pct = self.ctx.shadow_read_percent.load(Ordering::Relaxed);
        if pct == 0 || mode == Mode::SourceOnly {
            return false;
        }
        self.ctx.read_counter.fetch_add(1, Ordering::Relaxed) % 100 < pct
    }

    /// A sampled read: the client gets the source's answer as usual; the
    /// target's answer to the same read is compared with it and counted.
    pub(super) async fn shadow_read(
        self: &Arc<Self>,
        frame: Frame,
        statements: UsedStatements,
        table: TableName,
    ) -> Result<(), SessionError> {
        let req = self.mirror_request(&frame, statements, true);
        let again = req.clone();
        let rx = self.forward_capturing(frame).await?;
        self.spawn_tracked(move |session| async move {
            let ctx = session.ctx.clone();
            let link = session.target.clone();
            let target = tokio::spawn(async move {
                let conn = link.get().await?;
                send_to_target(&ctx, &conn, &req, false).await
            });
            let Ok(source) = rx.await else {
                return;
            };
            let source_rows =
                crate::proxy::result::rows_section(&source).map(Bytes::copy_from_slice);
            let _ = session.reply(source).await;
            let outcome = match target.await {
                Ok(Ok(t)) => match (source_rows, crate::proxy::result::rows_section(&t)) {
                    (Some(a), Some(b)) if a[..] == *b => "match",
                    (Some(_), Some(_)) => "mismatch",
                    _ => "error",
                },
                _ => "error",
            };
            let outcome = if outcome == "mismatch" && session.shadow_read_settles(&again).await {
                "match"
            } else {
                outcome
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

    /// Whether a shadow read that differed reads the same on both clusters
    /// when asked again a moment later, over the proxy's own links: a write
    /// on its way to the target when the read was made (async mirroring
    /// answers the client before the target has the write; a sync one may
    /// land between the two reads) is a race, not a difference. Asked up to
    /// three times, 50, 200 and 500 ms on.
    async fn shadow_read_settles(&self, req: &MirrorRequest) -> bool {
        for wait in [50, 200, 500] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let source = async {
                // The link is shared with the prepares of rewritten texts,
                // which switch its keyspace: one at a time.
                let _one = self.source_prepares.lock().await;
                let conn = self.source_link.get().await?;
                send_toward(&self.ctx, Toward::Source, &conn, req, true).await
            };
            let target = async {
                let conn = self.target.get().await?;
                send_to_target(&self.ctx, &conn, req, false).await
            };
            let (Ok(source), Ok(target)) = tokio::join!(source, target) else {
                return false;
            };
            let rows = |f: &Frame| crate::proxy::result::rows_section(f).map(<[u8]>::to_vec);
            match (rows(&source), rows(&target)) {
                (Some(a), Some(b)) if a == b => return true,
                (Some(_), Some(_)) => continue,
                _ => return false,
            }
        }
        false
    }

    /// target-primary: a read served by the target.
    pub(super) fn read_from_target(self: &Arc<Self>, frame: Frame, statements: UsedStatements) {
        let req = self.mirror_request(&frame, statements, true);
        self.spawn_tracked(move |session| async move {
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
}
