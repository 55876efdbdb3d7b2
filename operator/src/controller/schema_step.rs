//! The schema step: before the roll, the target's schema made to match the
//! source's ([`schema_copy::make_target_schema`]); after it, the same
//! comparison every minute, so what appears on the source while the
//! migration runs (a table created around the proxies, a keyspace a proxy
//! could not create) is created on the target too, and a difference that
//! would corrupt the copy keeps the migration from `Ready`. The proxies
//! follow the schema changes clients make through them
//! (`mirrorDdl` in the runtime ConfigMap); this is the net under them.

use super::*;
use crate::crd::{SchemaMode, SchemaStatus};
use crate::schema_copy::{self, Outcome, SchemaCopyError};

/// How many objects created after the roll the status lists.
const FOLLOWED_KEPT: usize = 20;

/// Reads both clusters and runs the step; `Err` when they cannot be read
/// yet (no pod IP, a Secret, a connection).
async fn run(step: &Step<'_>, pods: &[Pod]) -> Result<Result<Outcome, SchemaCopyError>, String> {
    let spec = &step.cm.spec;
    let port = u16::try_from(spec.source.cql_port).unwrap_or(9042);
    let source_points: Vec<String> = pod_ips(pods)
        .into_iter()
        .map(|ip| std::net::SocketAddr::new(ip, port).to_string())
        .collect();
    let target_points = cql::contact_points_in(&step.ns, &spec.target.contact_points);
    if source_points.is_empty() {
        return Err("no source pod has an IP yet".to_owned());
    }
    let (source_access, target_access) = futures::future::try_join(
        cql::Access::from_secrets(
            &step.ctx.client,
            &step.ns,
            spec.source.credentials_secret.as_ref(),
            spec.source.tls_secret.as_ref(),
        ),
        cql::Access::from_secrets(
            &step.ctx.client,
            &step.ns,
            spec.target.credentials_secret.as_ref(),
            spec.target.tls_secret.as_ref(),
        ),
    )
    .await
    .map_err(|e| e.to_string())?;
    let (source, target) = futures::future::try_join(
        cql::session(&source_points, &source_access, cql::Reach::Ring),
        cql::session(&target_points, &target_access, cql::Reach::Ring),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(schema_copy::make_target_schema(&source, &target, spec).await)
}

fn schema_status(status: &mut CassandraMigrationStatus) -> &mut SchemaStatus {
    status.schema.get_or_insert_with(SchemaStatus::default)
}

fn matches_message(done: &Outcome) -> String {
    format!(
        "the target has every selected table, matching the source ({} created, {} already there)",
        done.created.len(),
        done.matching.len()
    )
}

/// Before the roll. Returns whether the roll may go on; sets
/// `SchemaMatches` either way, and fails the migration on a difference
/// that would corrupt the copy.
pub(super) async fn schema_gate(step: &mut Step<'_>, pods: &[Pod]) -> bool {
    let generation = step.cm.metadata.generation;
    if !step.ctx.settings.schema_step
        || step.status.conditions.iter().any(|c| {
            c.type_ == condition::SCHEMA_MATCHES
                && c.status == "True"
                && c.observed_generation == generation
        })
    {
        return true;
    }
    let outcome = match run(step, pods).await {
        Ok(result) => result,
        Err(why) => {
            status::set_condition(
                &mut step.status,
                condition::SCHEMA_MATCHES,
                false,
                "ClustersUnreachable",
                format!("cannot read the schemas yet: {why}"),
                generation,
                &step.now,
            );
            return false;
        }
    };
    match outcome {
        Ok(done) => {
            status::set_condition(
                &mut step.status,
                condition::SCHEMA_MATCHES,
                true,
                if done.created.is_empty() {
                    "Matches"
                } else {
                    "Copied"
                },
                matches_message(&done),
                generation,
                &step.now,
            );
            let now = step.now.clone();
            let schema = schema_status(&mut step.status);
            schema.target_replication = done.replication.clone();
            schema.checked_at = Some(now);
            if !done.created.is_empty() {
                step.event(
                    EventType::Normal,
                    "SchemaCopied",
                    "Schema",
                    format!("created on the target: {}", done.created.join(", ")),
                )
                .await;
            }
            for why in done.left_out {
                step.event(EventType::Warning, "SchemaLeftOut", "Schema", why)
                    .await;
            }
            true
        }
        Err(SchemaCopyError::Cql { what, reason }) => {
            status::set_condition(
                &mut step.status,
                condition::SCHEMA_MATCHES,
                false,
                "SchemaUnreadable",
                format!("{what}: {reason}"),
                generation,
                &step.now,
            );
            false
        }
        Err(e) => {
            let reason = refusal_reason(&e);
            let message = e.to_string();
            status::set_condition(
                &mut step.status,
                condition::SCHEMA_MATCHES,
                false,
                reason,
                message.clone(),
                generation,
                &step.now,
            );
            step.fail(reason, format!("before the roll: {message}"))
                .await;
            false
        }
    }
}

fn refusal_reason(e: &SchemaCopyError) -> &'static str {
    match e {
        SchemaCopyError::Mismatch(_) => "SchemaMismatch",
        SchemaCopyError::Missing(_) => "SchemaMissing",
        SchemaCopyError::Unsupported(_) => "SchemaNotCopyable",
        SchemaCopyError::Selection(_) | SchemaCopyError::Cql { .. } => "SelectionNotFound",
    }
}

/// After the roll (`copy` mode), at most once per `schema_recheck`: creates on the
/// target what the source gained, and turns `SchemaMatches` False on a
/// difference (which keeps the migration from `Ready`, see
/// [`status::unsafe_reason`]). A cluster that cannot be read leaves the
/// condition as it was: the proxies' own following goes on.
pub(super) async fn schema_recheck(step: &mut Step<'_>, pods: &[Pod]) {
    if !step.ctx.settings.schema_step || step.cm.spec.schema != SchemaMode::Copy {
        return;
    }
    let due = step
        .status
        .schema
        .as_ref()
        .and_then(|s| s.checked_at.as_ref())
        .is_none_or(|t| {
            step.now.0.duration_since(t.0).as_secs()
                >= step.ctx.settings.schema_recheck.as_secs() as i64
        });
    if !due {
        return;
    }
    let generation = step.cm.metadata.generation;
    let now = step.now.clone();
    schema_status(&mut step.status).checked_at = Some(now);
    match run(step, pods).await {
        Ok(Ok(done)) => {
            status::set_condition(
                &mut step.status,
                condition::SCHEMA_MATCHES,
                true,
                "Matches",
                matches_message(&done),
                generation,
                &step.now,
            );
            let schema = schema_status(&mut step.status);
            schema.target_replication = done.replication.clone();
            if !done.created.is_empty() {
                schema.followed.extend(done.created.iter().cloned());
                let extra = schema.followed.len().saturating_sub(FOLLOWED_KEPT);
                schema.followed.drain(..extra);
                step.event(
                    EventType::Normal,
                    "SchemaFollowed",
                    "Schema",
                    format!(
                        "new on the source, now created on the target: {}",
                        done.created.join(", ")
                    ),
                )
                .await;
            }
        }
        Ok(Err(e @ (SchemaCopyError::Mismatch(_) | SchemaCopyError::Unsupported(_)))) => {
            let message = e.to_string();
            let was_true = status::is_true(&step.status, condition::SCHEMA_MATCHES);
            status::set_condition(
                &mut step.status,
                condition::SCHEMA_MATCHES,
                false,
                refusal_reason(&e),
                message.clone(),
                generation,
                &step.now,
            );
            if was_true {
                step.event(EventType::Warning, refusal_reason(&e), "Schema", message)
                    .await;
            }
        }
        Ok(Err(e)) => warn!(error = %e, "comparing the schemas again failed; trying again later"),
        Err(why) => warn!(error = %why, "cannot read the schemas to compare them again"),
    }
}
