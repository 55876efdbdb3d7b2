//! The backfill and validation Jobs of a migration: created, followed,
//! retried, and what their pods report folded into the status.

use super::*;
use crate::crd::{ScheduledValidation, ValidationResults};

/// Source contact points for the Jobs: each pod's IP (or its stable DNS name).
pub(super) fn source_contact_points(
    cm: &CassandraMigration,
    pods: &[Pod],
    ns: &str,
    service: Option<&str>,
) -> Vec<String> {
    let port = cm.spec.source.cql_port;
    pods.iter()
        .filter_map(|p| {
            let ip = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty());
            let host = match (ip, service) {
                (Some(ip), _) if ip.contains(':') => format!("[{ip}]"),
                (Some(ip), _) => ip,
                (None, Some(svc)) => format!("{}.{svc}.{ns}.svc", p.name_any()),
                (None, None) => return None,
            };
            Some(format!("{host}:{port}"))
        })
        .collect()
}

pub(super) async fn start_job(
    step: &mut Step<'_>,
    pods: &[Pod],
    kind: JobKind,
    attempt: u32,
) -> Result<String> {
    let name = match kind {
        JobKind::Backfill => labels::backfill_job_name(&step.name),
        JobKind::Validate => labels::validate_job_name(&step.name, attempt),
        JobKind::Check => labels::check_job_name(&step.name, attempt),
        JobKind::Reverse => labels::reverse_job_name(&step.name, attempt),
    };
    let start = match kind {
        JobKind::Backfill => {
            let existing = step
                .status
                .backfill
                .as_ref()
                .and_then(|b| b.start_timestamp_micros);
            existing.unwrap_or_else(|| jiff::Timestamp::now().as_microsecond())
        }
        JobKind::Validate | JobKind::Check | JobKind::Reverse => step
            .status
            .backfill
            .as_ref()
            .and_then(|b| b.start_timestamp_micros)
            .unwrap_or_else(|| jiff::Timestamp::now().as_microsecond()),
    };
    let service = match source::fetch(&step.ctx.client, &step.ns, &step.cm.spec.source).await {
        Ok(found) => found.service(),
        Err(source::SourceError::NotFound(_)) => None,
        Err(source::SourceError::Kube(e)) => return Err(e.into()),
    };
    let inputs = JobInputs {
        name: name.clone(),
        image: step
            .cm
            .spec
            .proxy
            .image
            .clone()
            .unwrap_or_else(|| step.ctx.settings.sidecar_image.clone()),
        source_contact_points: source_contact_points(step.cm, pods, &step.ns, service.as_deref()),
        source_datacenter: None,
        start_timestamp_micros: start,
        mirroring_since_micros: mirroring_since_micros(step.cm),
        image_pull_secrets: step.ctx.settings.image_pull_secrets.clone(),
    };
    let job = jobs::build_job(step.cm, kind, &inputs);
    let api: Api<Job> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    match api.create(&PostParams::default(), &job).await {
        Ok(_) => {
            step.event(
                EventType::Normal,
                "CreatedJob",
                "CreateJob",
                format!("created {} Job {name}", kind.as_str()),
            )
            .await;
        }
        // Already there: an earlier reconcile (or operator) made it.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(err) => return Err(err.into()),
    }
    match kind {
        JobKind::Backfill => {
            let mut progress = step.status.backfill.clone().unwrap_or_default();
            progress.job_name = Some(name.clone());
            progress.start_timestamp_micros = Some(start);
            progress.ranges_total = i64::from(step.cm.spec.backfill.splits);
            step.status.backfill = Some(progress);
        }
        JobKind::Validate => {
            step.status.validation = Some(crate::crd::ValidationResults {
                job_name: Some(name.clone()),
                ..Default::default()
            });
        }
        JobKind::Reverse => {
            if let Some(cut) = step.status.cutover.as_mut() {
                let check = cut.reverse_check.get_or_insert_with(Default::default);
                check.runs = attempt;
                check.job = Some(name.clone());
                check.last_started = Some(step.now.clone());
            }
        }
        JobKind::Check => {
            let checks = step
                .status
                .scheduled_validation
                .get_or_insert_with(Default::default);
            checks.runs = attempt;
            checks.job = Some(name.clone());
            checks.last_started = Some(step.now.clone());
        }
    }
    Ok(name)
}

async fn job_pods(client: &Client, ns: &str, job: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await?
        .items)
}

pub(super) async fn follow_backfill(step: &mut Step<'_>) -> Result<Action> {
    let name = labels::backfill_job_name(&step.name);
    let api: Api<Job> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    let Some(job) = api.get_opt(&name).await? else {
        // Deleted by hand, or lost: make it again (finished ranges are checkpointed).
        let pods = Vec::new();
        start_job(step, &pods, JobKind::Backfill, 1).await?;
        return Ok(Action::requeue(step.ctx.settings.poll));
    };
    let sums = jobs::summaries(&job_pods(&step.ctx.client, &step.ns, &name).await?);
    let start = step
        .status
        .backfill
        .as_ref()
        .and_then(|b| b.start_timestamp_micros)
        .unwrap_or_default();
    step.status.backfill = Some(jobs::backfill_progress(
        &name,
        start,
        i64::from(step.cm.spec.backfill.splits),
        &sums,
    ));
    let generation = step.cm.metadata.generation;
    match jobs::job_state(&job) {
        JobState::Running => Ok(Action::requeue(step.ctx.settings.poll)),
        JobState::Complete => {
            let rows = step
                .status
                .backfill
                .as_ref()
                .map(|b| b.rows_copied)
                .unwrap_or_default();
            status::set_condition(
                &mut step.status,
                condition::BACKFILL_COMPLETE,
                true,
                "Copied",
                format!("{rows} rows copied"),
                generation,
                &step.now,
            );
            step.enter(Phase::Validating).await;
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        JobState::Failed(why) => {
            step.fail(
                "BackfillFailed",
                format!("backfill Job {name} failed: {why}"),
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(60)))
        }
    }
}

/// A new validation round (repairing when `validation.repair`), after a
/// source pod ran without its proxy: the migration goes back to
/// `Validating` and is `Ready` again only after a clean pass.
pub(super) async fn revalidate(step: &mut Step<'_>, pods: &[Pod]) -> Result<Action> {
    let why = step.status.revalidate.clone().unwrap_or_default();
    let attempt = validation_attempt(&step.status).unwrap_or(0) + 1;
    start_job(step, pods, JobKind::Validate, attempt).await?;
    step.status.validation_round_start = Some(attempt);
    step.status.revalidate = None;
    let generation = step.cm.metadata.generation;
    status::set_condition(
        &mut step.status,
        condition::VALIDATED,
        false,
        "Revalidating",
        format!("validation {attempt} runs again: {why}"),
        generation,
        &step.now,
    );
    status::set_condition(
        &mut step.status,
        condition::READY,
        false,
        "Revalidating",
        format!("validating again: {why}"),
        generation,
        &step.now,
    );
    step.event(
        EventType::Normal,
        "Revalidating",
        "Validate",
        format!("every pod runs its proxy again; validation {attempt} checks what may have gone unmirrored"),
    )
    .await;
    step.enter(Phase::Validating).await;
    Ok(Action::requeue(step.ctx.settings.poll))
}

fn validation_attempt(status: &CassandraMigrationStatus) -> Option<u32> {
    status
        .validation
        .as_ref()?
        .job_name
        .as_ref()?
        .rsplit('-')
        .next()?
        .parse()
        .ok()
}

/// How many validations (the first plus re-validations after repair) may run.
const MAX_VALIDATIONS: u32 = 3;

pub(super) async fn follow_validation(step: &mut Step<'_>, pods: &[Pod]) -> Result<Action> {
    let Some(attempt) = validation_attempt(&step.status) else {
        start_job(step, pods, JobKind::Validate, 1).await?;
        return Ok(Action::requeue(step.ctx.settings.poll));
    };
    let name = labels::validate_job_name(&step.name, attempt);
    let api: Api<Job> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    let Some(job) = api.get_opt(&name).await? else {
        start_job(step, pods, JobKind::Validate, attempt).await?;
        return Ok(Action::requeue(step.ctx.settings.poll));
    };
    let sums = jobs::summaries(&job_pods(&step.ctx.client, &step.ns, &name).await?);
    let results = jobs::validation_results(&name, &sums);
    let generation = step.cm.metadata.generation;
    match jobs::job_state(&job) {
        JobState::Running => {
            step.status.validation = Some(results);
            Ok(Action::requeue(step.ctx.settings.poll))
        }
        JobState::Failed(why) => {
            step.status.validation = Some(results);
            step.fail(
                "ValidationFailed",
                format!("validation Job {name} failed: {why}"),
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(60)))
        }
        JobState::Complete => {
            let differences = results.missing + results.extra + results.mismatched;
            let repaired = results.repaired;
            step.status.validation = Some(results);
            if differences == 0 {
                status::set_condition(
                    &mut step.status,
                    condition::VALIDATED,
                    true,
                    "NoDifferences",
                    format!("validation {attempt} found no difference"),
                    generation,
                    &step.now,
                );
                if let Some((reason, why)) = status::unsafe_reason(&step.status) {
                    // Clean, but writes may be missing from the target
                    // right now: not Ready until that clears.
                    info!(reason, %why, "validation passed; waiting before Ready");
                    return Ok(Action::requeue(step.ctx.settings.poll));
                }
                step.enter(Phase::Ready).await;
                set_ready(step);
                Ok(Action::requeue(Duration::from_secs(30)))
            } else if step.cm.spec.validation.repair
                && repaired > 0
                && attempt + 1 - step.status.validation_round_start.unwrap_or(1) < MAX_VALIDATIONS
            {
                // Repaired: validate again; only a clean pass is Ready.
                step.event(
                    EventType::Normal,
                    "Repaired",
                    "Validate",
                    format!("repaired {repaired} rows; validating again"),
                )
                .await;
                start_job(step, pods, JobKind::Validate, attempt + 1).await?;
                Ok(Action::requeue(step.ctx.settings.poll))
            } else {
                status::set_condition(
                    &mut step.status,
                    condition::VALIDATED,
                    false,
                    "Differences",
                    format!("{differences} rows differ"),
                    generation,
                    &step.now,
                );
                // Say what the user can do: turn repair on, or find out why
                // repaired rows keep differing (the examples name them).
                let why = if step.cm.spec.validation.repair {
                    format!(
                        "validation {attempt} still found {differences} differing rows after repairing; \
                         they keep diverging (status.validation.examples names some; a non-deterministic \
                         function in a prepared write is one cause, see docs/proxy.md)"
                    )
                } else {
                    format!(
                        "validation found {differences} differing rows; set validation.repair: true \
                         to repair them, or fix them and re-run"
                    )
                };
                step.fail("Mismatches", why).await;
                Ok(Action::requeue(Duration::from_secs(120)))
            }
        }
    }
}

pub(super) async fn delete_failed_jobs(client: &Client, ns: &str, migration: &str) -> Result<()> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let owned = api
        .list(&ListParams::default().labels(&format!("{}={migration}", labels::MIGRATION_LABEL)))
        .await?;
    for job in owned.items {
        if matches!(jobs::job_state(&job), JobState::Failed(_)) {
            delete_if_present(&api, &job.name_any(), &DeleteParams::background()).await?;
            info!(job = %job.name_any(), "deleted the failed Job to retry it");
        }
    }
    Ok(())
}

/// Where a check Job (scheduled or reverse) stands, with what its pods
/// found so far.
pub(super) enum CheckJob {
    /// Deleted by someone.
    Gone,
    Running,
    Failed {
        why: String,
        results: ValidationResults,
    },
    Complete(ValidationResults),
}

/// Reads a check Job and sums its pods' reports.
pub(super) async fn follow_check_job(step: &Step<'_>, name: &str) -> Result<CheckJob> {
    let api: Api<Job> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    let Some(job) = api.get_opt(name).await? else {
        return Ok(CheckJob::Gone);
    };
    let sums = jobs::summaries(&job_pods(&step.ctx.client, &step.ns, name).await?);
    let results = jobs::validation_results(name, &sums);
    Ok(match jobs::job_state(&job) {
        JobState::Running => CheckJob::Running,
        JobState::Failed(why) => CheckJob::Failed { why, results },
        JobState::Complete => CheckJob::Complete(results),
    })
}

/// A check's record once its Job is over (or gone): no Job running, when it
/// ended, and what it found if anything.
pub(super) fn check_finished(
    check: &mut ScheduledValidation,
    now: &Time,
    results: Option<ValidationResults>,
) {
    check.job = None;
    check.last_finished = Some(now.clone());
    if results.is_some() {
        check.last_result = results;
    }
}
