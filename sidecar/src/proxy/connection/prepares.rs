//! Recording what the source prepared, and the statements whose
//! `now()`/`uuid()` calls the proxy fills: the source prepares the client's
//! own text (the client keeps its id) and the proxy prepares the rewritten
//! text itself, over its own link, before the client hears back.

use super::*;

impl Session {
    /// Prepares on the source the rewritten text of a statement whose
    /// client text the source just prepared (`answer`), records both ids,
    /// then gives the client the answer to its own text. If the source
    /// refuses the rewritten text, the statement runs as the client wrote
    /// it (each cluster then evaluates its calls; counted and logged).
    pub(super) async fn prepare_rewritten(
        self: Arc<Self>,
        answer: Frame,
        client: crate::proxy::prepared::PreparedResult,
        rewritten: Rewritten,
    ) {
        let Rewritten {
            query,
            original,
            keyspace,
            bound,
        } = rewritten;
        match self.prepare_on_source(&query, keyspace.as_deref()).await {
            Ok(exec_id) => {
                let (class, counter) = classify_prepared(&query, &client.bind_types);
                let stmt = PreparedStatement::new(&query, keyspace, class, counter)
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
                let (class, counter) = classify_prepared(&original, &client.bind_types);
                let stmt = PreparedStatement::new(&original, keyspace, class, counter);
                self.remember_prepared(client.id, stmt);
            }
        }
        let _ = self.reply(answer).await;
    }

    /// Prepares `query` on the source over the proxy's own link; the
    /// source's id for it.
    pub(super) async fn prepare_on_source(
        &self,
        query: &str,
        keyspace: Option<&str>,
    ) -> Result<Bytes, crate::proxy::mirror::MirrorError> {
        use crate::proxy::mirror::MirrorError;
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
                message: crate::proxy::upstream::describe_error(&reply),
                refused: true,
            })
    }

    /// Files a statement the source prepared under `id`, and prepares it
    /// on the target in the background; returns the entry kept.
    pub(super) fn remember_prepared(
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
                        crate::proxy::mirror::target_id(&session.ctx, &conn, &stmt, false, None)
                            .await
                    {
                        debug!(error = %e, "preparing on the target failed; will prepare at first use");
                    }
                }
            });
        }
        stmt
    }
}
