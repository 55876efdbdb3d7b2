//! A schema change a client makes through the proxy while it mirrors
//! (`--mirror-ddl`): the source first; once the source made the change,
//! the target's part of it ([`crate::proxy::schema_follow`]), retried and
//! spooled if the target is down, like a write; only then does the client
//! hear the source's answer. So the application's next write, which may
//! need the new table or column, never reaches a target that lacks it,
//! and a spooled change is replayed alone, before the writes behind it.

use super::*;
use crate::proxy::schema_follow::{self, Follow};

impl Session {
    pub(super) async fn schema_change(
        self: &Arc<Self>,
        frame: Frame,
        statements: UsedStatements,
        session_keyspace: Option<String>,
    ) -> Result<(), SessionError> {
        let text = match (frame.opcode, statements.first()) {
            (opcode::QUERY, _) => match parse_query(&frame) {
                Ok(q) => q.query.to_owned(),
                Err(e) => return self.malformed(&frame, e).await,
            },
            (_, Some((_, prepared))) => prepared.query.to_string(),
            _ => String::new(),
        };
        let replication = self
            .ctx
            .target_replication
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let statement = schema_follow::read(&text, replication.as_deref());
        let keyspace = statement.keyspace.or(session_keyspace);
        let selected = match (&keyspace, &statement.table) {
            (Some(ks), Some(table)) => self.ctx.filter.mirrors(Some(ks), Some(table)),
            (Some(ks), None) => self.ctx.filter.mirrors_in(ks),
            (None, _) => self.ctx.filter.mirrors(None, None),
        };
        let follow = match statement.follow {
            _ if !selected => Follow::NotRepeated("not among the migrated keyspaces and tables"),
            // A prepared statement's text cannot be swapped in its EXECUTE.
            Follow::Instead(_) if frame.opcode != opcode::QUERY => Follow::NotRepeated(
                "a prepared CREATE KEYSPACE: the operator creates it with the target's replication",
            ),
            other => other,
        };
        let m = &self.ctx.metrics;
        self.count("schema", "source");
        let instead = match follow {
            Follow::NotRepeated(why) => {
                m.schema_changes.with_label_values(&["not_repeated"]).inc();
                tracing::info!(keyspace = keyspace.as_deref().unwrap_or(""), statement = %text, why, "schema change not repeated on the target");
                return self.forward(frame);
            }
            Follow::Same => None,
            Follow::Instead(text) => Some(text),
        };
        m.schema_changes.with_label_values(&["followed"]).inc();
        self.count("schema", "target");
        let mut req = self.mirror_request(&frame, statements, true);
        if let Some(text) = instead {
            match replace_query_text(&frame, &text) {
                Some(body) => req.body = body,
                None => {
                    return self
                        .invalid(&frame, "ferry proxy: cannot read the query text")
                        .await
                }
            }
        }
        // Room in the spool is promised before the source is sent the
        // change, as for a write: once the source made it, the target's
        // part must not be dropped.
        let Ok(room) = self.ctx.spool_room(&req, Toward::Target) else {
            return self
                .refuse_spool_full(&frame, Toward::Target, "schema change")
                .await;
        };
        if self.flush_source().await.is_err() {
            return Err(SessionError::ClientGone);
        }
        let permit = mirror_permit(&self.ctx).await;
        let hold = MirrorHold { permit, room };
        let rx = self.forward_capturing(frame).await?;
        self.spawn_tracked(move |session| async move {
            let Ok(source) = rx.await else {
                return;
            };
            if source.opcode == opcode::RESULT {
                // A write to the table still on its way to the target
                // goes first (an ALTER ... DROP is never sent, but a
                // RENAME may be).
                live_mirrors_done(&session.ctx).await;
                deliver(&session.ctx, Toward::Target, &session.target, &req, hold).await;
            }
            let _ = session.reply(source).await;
        });
        Ok(())
    }
}
