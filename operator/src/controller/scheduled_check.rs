//! Validation goes on after `Ready`: every `validation.scheduleMinutes` a
//! check Job compares a sample of the token ranges (no repair). A clean
//! check keeps `Validated=True`; a difference sends the migration back to
//! validating (`status.revalidate`: `Ready=False`, then a full round that
//! repairs as `validation.repair` says), with the check's examples in
//! `status.scheduledValidation.lastResult` and a Warning event. A check that
//! fails (its Job, not the data) is reported and tried again next time.

use super::job_steps::{check_finished, follow_check_job, CheckJob};
use super::*;

/// In `Ready`, with every pod proxied and nothing else under way: starts a
/// check when one is due, or follows the one running.
pub(super) async fn scheduled_check(step: &mut Step<'_>, pods: &[Pod]) -> Result<()> {
    let every_minutes = step.cm.spec.validation.schedule_minutes;
    if every_minutes <= 0 {
        return Ok(());
    }
    let checks = step.status.scheduled_validation.clone().unwrap_or_default();
    if let Some(job) = &checks.job {
        return follow_check(step, job).await;
    }
    // Counted from the last check, else from when the migration became Ready.
    let ready_since = step
        .status
        .phase_history
        .iter()
        .rev()
        .find(|t| t.phase == Phase::Ready)
        .map(|t| t.started_at.clone());
    let since = checks
        .last_finished
        .clone()
        .or(checks.last_started.clone())
        .or(ready_since);
    let every = step.ctx.settings.schedule_minute * every_minutes.unsigned_abs();
    let due = since
        .is_none_or(|t| step.now.0.duration_since(t.0).as_millis() >= every.as_millis() as i128);
    if !due {
        return Ok(());
    }
    // The previous check's Job has served: one at a time stays.
    if checks.runs > 0 {
        let api: Api<Job> = Api::namespaced(step.ctx.client.clone(), &step.ns);
        delete_if_present(
            &api,
            &labels::check_job_name(&step.name, checks.runs),
            &DeleteParams::background(),
        )
        .await?;
    }
    start_job(step, pods, JobKind::Check, checks.runs + 1).await?;
    Ok(())
}

async fn follow_check(step: &mut Step<'_>, name: &str) -> Result<()> {
    let generation = step.cm.metadata.generation;
    let finished = |step: &mut Step<'_>, results| {
        let now = step.now.clone();
        let checks = step
            .status
            .scheduled_validation
            .get_or_insert_with(Default::default);
        check_finished(checks, &now, results);
    };
    match follow_check_job(step, name).await? {
        // Deleted by someone: the next one starts when due.
        CheckJob::Gone => {
            finished(step, None);
            Ok(())
        }
        CheckJob::Running => Ok(()),
        CheckJob::Failed { why, results } => {
            finished(step, Some(results));
            step.event(
                EventType::Warning,
                "ScheduledCheckFailed",
                "Validate",
                format!("the scheduled validation Job {name} failed ({why}); the next one runs on schedule"),
            )
            .await;
            Ok(())
        }
        CheckJob::Complete(results) => {
            let differences = results.missing + results.extra + results.mismatched;
            let percent = step.cm.spec.validation.schedule_sample_percent;
            let examples = jobs::example_keys(&results, 3, 5);
            let compared = results.rows_compared;
            finished(step, Some(results));
            if differences == 0 {
                status::set_condition(
                    &mut step.status,
                    condition::VALIDATED,
                    true,
                    "ScheduledCheckClean",
                    format!("the scheduled check {name} found no difference in {compared} rows ({percent}% of the token ranges)"),
                    generation,
                    &step.now,
                );
                return Ok(());
            }
            let why = format!(
                "the scheduled check {name} found {differences} differing rows in {compared} ({percent}% of the token ranges): {}",
                examples.join("; ")
            );
            status::set_condition(
                &mut step.status,
                condition::VALIDATED,
                false,
                "ScheduledCheckDifferences",
                why.clone(),
                generation,
                &step.now,
            );
            step.event(
                EventType::Warning,
                "DifferencesAfterReady",
                "Validate",
                format!("{why}; validating again"),
            )
            .await;
            // Not Ready until a full validation (repairing if allowed)
            // passes again.
            step.status.revalidate = Some(why);
            Ok(())
        }
    }
}
