//! Where a request goes: one pure decision (`decide`) over the classified
//! request, the proxy's mode and what the migration mirrors, and the
//! session method (`route`) that carries it out. Every choice of side,
//! order and answer is made here and nowhere else.

use std::borrow::Cow;

use super::*;
use crate::proxy::classify::BatchStatement;
use crate::proxy::config::MirrorFilter;

/// What the decision reads of a request.
#[derive(Debug, Clone, Copy)]
pub(super) struct RouteInput<'a> {
    pub class: &'a StatementClass,
    pub mode: Mode,
    /// The keyspace an unqualified name is in: v5's per-request keyspace,
    /// else the connection's.
    pub session_keyspace: Option<&'a str>,
    /// A BATCH none of whose children is mirrored.
    pub force_source_only: bool,
    /// This read was picked for comparison (`--shadow-read-percent`).
    pub shadow_sampled: bool,
    /// `--mirror-ddl`.
    pub mirror_ddl: bool,
}

/// Which answer a request sent to both sides returns to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    Source,
    Target,
}

/// What of a write the target gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part {
    All,
    /// Per statement of a `BEGIN BATCH` text, whether it is selected.
    Statements(Vec<bool>),
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// The source alone.
    Source,
    /// A system.local/peers/peers_v2 read: the source, with the nodes'
    /// addresses rewritten to the proxies' (`local`: system.local).
    Peers { local: bool },
    /// A read the target serves (target-primary).
    TargetRead,
    /// A read the source serves, also sent to the target and compared.
    ShadowRead,
    /// `USE`: the source, then the target when it is mirrored to.
    Use { on_target: bool },
    /// A write on both sides. `answer` is the side the client hears;
    /// `asynchronous`: the target's copy follows the source's answer.
    Write {
        answer: Answer,
        asynchronous: bool,
        part: Part,
    },
    /// DDL followed on the target (`--mirror-ddl`): the source, then the
    /// target's part of it, then the source's answer.
    Schema,
}

/// The decision. Pure: the same input always goes the same way.
pub(super) fn decide(input: &RouteInput<'_>, filter: &MirrorFilter) -> Route {
    let mode = input.mode;
    let mirroring = mode != Mode::SourceOnly;
    match input.class {
        StatementClass::Read {
            system: Some(table),
            ..
        } => Route::Peers {
            local: *table == SystemTable::Local,
        },
        StatementClass::Read {
            keyspace, table, ..
        } => {
            // Only tables the proxy mirrors are on the target: the others
            // (system keyspaces, which each cluster keeps for itself, and
            // tables filtered out) are never served by it nor compared.
            // The filter is asked only where the answer matters: most
            // reads are neither sampled nor in target-primary.
            let ks = keyspace.as_deref().or(input.session_keyspace);
            let mirrored = || filter.mirrors(ks, table.as_deref());
            if mode.target_primary() {
                return if mirrored() {
                    Route::TargetRead
                } else {
                    Route::Source
                };
            }
            if mirroring && input.shadow_sampled && mirrored() {
                Route::ShadowRead
            } else {
                Route::Source
            }
        }
        StatementClass::Write(traits) => {
            if !mirroring || input.force_source_only {
                return Route::Source;
            }
            let part = match selection(traits, input.session_keyspace, filter) {
                Some(part) => part,
                None => return Route::Source,
            };
            Route::Write {
                answer: if mode.target_primary() {
                    Answer::Target
                } else {
                    Answer::Source
                },
                asynchronous: mode.asynchronous(),
                part,
            }
        }
        StatementClass::Use(_) => Route::Use {
            on_target: mirroring,
        },
        StatementClass::Schema if input.mirror_ddl && mirroring => Route::Schema,
        StatementClass::Schema | StatementClass::Other => Route::Source,
    }
}

/// What of a write the target gets: all of it, nothing (`None`), or (a
/// `BEGIN BATCH` text mixing selected and unselected tables) the selected
/// statements, each judged with its own keyspace.
fn selection(
    traits: &WriteTraits,
    session_keyspace: Option<&str>,
    filter: &MirrorFilter,
) -> Option<Part> {
    if traits.batch.is_empty() {
        let ks = traits.keyspace.as_deref().or(session_keyspace);
        return filter
            .mirrors(ks, traits.table.as_deref())
            .then_some(Part::All);
    }
    let selected: Vec<bool> = traits
        .batch
        .iter()
        .map(|b| {
            filter.mirrors(
                b.keyspace.as_deref().or(session_keyspace),
                b.table.as_deref(),
            )
        })
        .collect();
    if selected.iter().all(|s| *s) {
        Some(Part::All)
    } else if selected.iter().any(|s| *s) {
        Some(Part::Statements(selected))
    } else {
        None
    }
}

/// A `BEGIN BATCH` text with only its selected statements: the same
/// opening (type, `USING TIMESTAMP`), then those statements.
pub(super) fn selected_batch_text(
    text: &str,
    batch: &[BatchStatement],
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

impl Session {
    /// Sends a classified request where `decide` says.
    /// `class` is borrowed where it comes unchanged from a prepared
    /// statement: only a `USE`, which keeps it, copies it (a mirrored
    /// write borrows it).
    pub(super) async fn route(
        self: &Arc<Self>,
        frame: Frame,
        class: Cow<'_, StatementClass>,
        params: ParamsLayout,
        statements: UsedStatements,
        force_source_only: bool,
    ) -> Result<(), SessionError> {
        let mode = self.ctx.mode();
        let kind = kind_label(&class);
        let shadow_sampled = matches!(*class, StatementClass::Read { system: None, .. })
            && self.sample_shadow_read(mode);
        // Decided under the connection's keyspace lock, so the keyspace is
        // copied only for the routes that keep it, not for every request.
        let (route, session_keyspace) = {
            let connection_keyspace = self.keyspace.lock().unwrap_or_else(|p| p.into_inner());
            let session_keyspace = params
                .keyspace
                .as_deref()
                .or(connection_keyspace.as_deref());
            let route = decide(
                &RouteInput {
                    class: &class,
                    mode,
                    session_keyspace,
                    force_source_only,
                    shadow_sampled,
                    mirror_ddl: self.ctx.mirror_ddl.load(Ordering::Relaxed),
                },
                &self.ctx.filter,
            );
            let kept = matches!(route, Route::ShadowRead | Route::Schema)
                .then(|| session_keyspace.map(str::to_owned))
                .flatten();
            (route, kept)
        };
        match route {
            Route::Peers { local } => {
                self.set_pending(frame.stream, Pending::Peers(local));
                self.count(kind, "source");
                self.forward(frame)
            }
            Route::TargetRead => {
                self.count(kind, "target");
                self.read_from_target(frame, statements);
                Ok(())
            }
            Route::ShadowRead => {
                let StatementClass::Read {
                    keyspace, table, ..
                } = &*class
                else {
                    return self.to_source(kind, frame);
                };
                self.count(kind, "source");
                self.count(kind, "target");
                let table = TableName {
                    keyspace: keyspace.clone().or(session_keyspace).unwrap_or_default(),
                    table: table.clone().unwrap_or_default(),
                };
                self.shadow_read(frame, statements, table).await
            }
            Route::Write {
                answer,
                asynchronous,
                part,
            } => {
                // Borrowed: a mirrored write copies none of its class.
                let StatementClass::Write(traits) = &*class else {
                    return self.to_source(kind, frame);
                };
                let target_text = match part {
                    Part::All => None,
                    Part::Statements(selected) => match parse_query(&frame)
                        .map(|q| selected_batch_text(q.query, &traits.batch, &selected))
                    {
                        Ok(text) => Some(text),
                        Err(e) => return self.malformed(&frame, e).await,
                    },
                };
                let plan = WritePlan {
                    answer,
                    asynchronous,
                    target_text,
                };
                self.mirrored_write(frame, traits, params, statements, plan)
                    .await
            }
            Route::Use { on_target } => {
                let StatementClass::Use(ks) = class.into_owned() else {
                    return self.to_source(kind, frame);
                };
                self.use_keyspace(frame, ks, on_target).await
            }
            Route::Schema => {
                self.schema_change(frame, statements, session_keyspace)
                    .await
            }
            Route::Source => self.to_source(kind, frame),
        }
    }

    /// Counts a request of `kind` and sends it to the source alone.
    fn to_source(&self, kind: &str, frame: Frame) -> Result<(), SessionError> {
        self.count(kind, "source");
        self.forward(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::classify::classify;

    fn filter(include_keyspaces: &[&str]) -> MirrorFilter {
        MirrorFilter {
            include_keyspaces: include_keyspaces.iter().map(|s| s.to_string()).collect(),
            ..MirrorFilter::default()
        }
    }

    fn route_of(text: &str, mode: Mode, session_ks: Option<&str>, f: &MirrorFilter) -> Route {
        decide(
            &RouteInput {
                class: &classify(text),
                mode,
                session_keyspace: session_ks,
                force_source_only: false,
                shadow_sampled: true,
                mirror_ddl: false,
            },
            f,
        )
    }

    /// Every statement kind × mode × selection, in one table.
    #[test]
    fn every_statement_kind_in_every_mode_goes_where_it_must() {
        use Mode::*;
        let all = filter(&[]);
        let only_ks = filter(&["ks"]);
        let write = |answer, asynchronous| Route::Write {
            answer,
            asynchronous,
            part: Part::All,
        };
        let cases: Vec<(&str, Mode, Option<&str>, &MirrorFilter, Route)> = vec![
            // Writes.
            ("INSERT INTO ks.t (k) VALUES (1)", Sync, None, &all, write(Answer::Source, false)),
            ("INSERT INTO ks.t (k) VALUES (1)", Async, None, &all, write(Answer::Source, true)),
            ("INSERT INTO ks.t (k) VALUES (1)", TargetPrimary, None, &all, write(Answer::Target, false)),
            ("INSERT INTO ks.t (k) VALUES (1)", TargetPrimaryAsync, None, &all, write(Answer::Target, true)),
            ("INSERT INTO other.t (k) VALUES (1)", TargetPrimaryAsync, None, &only_ks, Route::Source),
            ("INSERT INTO ks.t (k) VALUES (1)", SourceOnly, None, &all, Route::Source),
            ("INSERT INTO other.t (k) VALUES (1)", Sync, None, &only_ks, Route::Source),
            ("UPDATE t SET v = 1 WHERE k = 1", Sync, Some("ks"), &only_ks, write(Answer::Source, false)),
            ("UPDATE t SET v = 1 WHERE k = 1", Sync, Some("other"), &only_ks, Route::Source),
            // The keyspace is unknown: mirrored only without a selection.
            ("DELETE FROM t WHERE k = 1", Async, None, &all, write(Answer::Source, true)),
            ("DELETE FROM t WHERE k = 1", Async, None, &only_ks, Route::Source),
            ("INSERT INTO system.t (k) VALUES (1)", Sync, None, &all, Route::Source),
            ("TRUNCATE ks.t", Async, None, &all, write(Answer::Source, true)),
            ("UPDATE ks.c SET n = n + 1 WHERE k = 1", Sync, None, &all, write(Answer::Source, false)),
            ("INSERT INTO ks.t (k) VALUES (1) IF NOT EXISTS", Async, None, &all, write(Answer::Source, true)),
            // Batch texts: each statement judged on its own.
            ("BEGIN BATCH DELETE FROM ks.t WHERE k = 1 APPLY BATCH", Sync, None, &only_ks, write(Answer::Source, false)),
            ("BEGIN BATCH INSERT INTO other.u (k) VALUES (1); INSERT INTO ks.t (k) VALUES (1); APPLY BATCH", Sync, None, &only_ks,
                Route::Write { answer: Answer::Source, asynchronous: false, part: Part::Statements(vec![false, true]) }),
            ("BEGIN BATCH INSERT INTO other.u (k) VALUES (1) APPLY BATCH", Sync, None, &only_ks, Route::Source),
            // Reads.
            ("SELECT * FROM system.local", Sync, None, &all, Route::Peers { local: true }),
            ("SELECT * FROM system.peers_v2", TargetPrimary, None, &all, Route::Peers { local: false }),
            ("SELECT * FROM ks.t", Sync, None, &all, Route::ShadowRead),
            ("SELECT * FROM ks.t", Async, None, &only_ks, Route::ShadowRead),
            ("SELECT * FROM other.t", Async, None, &only_ks, Route::Source),
            ("SELECT * FROM ks.t", SourceOnly, None, &all, Route::Source),
            ("SELECT * FROM ks.t", TargetPrimary, None, &all, Route::TargetRead),
            ("SELECT * FROM ks.t", TargetPrimaryAsync, None, &all, Route::TargetRead),
            ("SELECT * FROM other.t", TargetPrimaryAsync, None, &only_ks, Route::Source),
            // A table the migration does not copy is never served by the
            // target: it lacks it, or holds an old copy.
            ("SELECT * FROM other.t", TargetPrimary, None, &only_ks, Route::Source),
            ("SELECT * FROM t", TargetPrimary, Some("other"), &only_ks, Route::Source),
            ("SELECT * FROM t", TargetPrimary, Some("ks"), &only_ks, Route::TargetRead),
            ("SELECT * FROM system_schema.tables", Sync, None, &all, Route::Source),
            // USE, DDL, the rest.
            ("USE ks", Sync, None, &all, Route::Use { on_target: true }),
            ("USE ks", SourceOnly, None, &all, Route::Use { on_target: false }),
            ("CREATE TABLE ks.t (k int PRIMARY KEY)", Sync, None, &all, Route::Source),
            ("GRANT ALL ON ks TO r", Async, None, &all, Route::Source),
        ];
        for (text, mode, ks, f, expected) in cases {
            assert_eq!(
                route_of(text, mode, ks, f),
                expected,
                "{text:?} in {mode:?} (session keyspace {ks:?})"
            );
        }
    }

    #[test]
    fn forced_source_only_unsampled_reads_and_mirrored_ddl() {
        let all = filter(&[]);
        let insert = classify("INSERT INTO ks.t (k) VALUES (1)");
        let select = classify("SELECT * FROM ks.t");
        let ddl = classify("ALTER TABLE ks.t ADD v int");
        let input = |class, force, shadow, ddl| RouteInput {
            class,
            mode: Mode::Sync,
            session_keyspace: None,
            force_source_only: force,
            shadow_sampled: shadow,
            mirror_ddl: ddl,
        };
        assert_eq!(
            decide(&input(&insert, true, true, false), &all),
            Route::Source
        );
        assert_eq!(
            decide(&input(&select, false, false, false), &all),
            Route::Source
        );
        assert_eq!(
            decide(&input(&ddl, false, false, true), &all),
            Route::Schema
        );
        assert_eq!(
            decide(&input(&ddl, false, false, false), &all),
            Route::Source
        );
    }

    #[test]
    fn a_batch_text_keeps_its_opening_and_selected_statements() {
        let text = "BEGIN UNLOGGED BATCH USING TIMESTAMP 7 INSERT INTO a.t (k) VALUES (1); INSERT INTO b.t (k) VALUES (2) APPLY BATCH";
        let batch = crate::proxy::classify::batch_statements(text);
        assert_eq!(
            selected_batch_text(text, &batch, &[false, true]),
            "BEGIN UNLOGGED BATCH USING TIMESTAMP 7 INSERT INTO b.t (k) VALUES (2); APPLY BATCH"
        );
    }
}
