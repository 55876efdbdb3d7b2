//! A roll-back verified: once the cut-over goes back from `targetPrimary`
//! to `mirror` or `shadowReads` (confirmed on every proxy), a reverse
//! validation Job checks the source against the target, the target being
//! the reference (`validate --reverse`, no repair): the writes the
//! applications made while the target served them must all be on the
//! source too. The condition `RollBackVerified` says what it found.

use super::job_steps::{check_finished, follow_check_job, CheckJob};
use super::*;
use crate::crd::{CutoverStage, ScheduledValidation};

/// In `Ready`, nothing else under way: starts the reverse validation of a
/// roll-back not checked yet, or follows the one running.
pub(super) async fn reverse_check(step: &mut Step<'_>, pods: &[Pod]) -> Result<()> {
    let Some(cut) = step.status.cutover.clone() else {
        return Ok(());
    };
    let check = cut.reverse_check.clone().unwrap_or_default();
    if let Some(job) = &check.job {
        return follow(step, job).await;
    }
    let rolled_back = match cut.history.as_slice() {
        [.., before, last]
            if before.stage == CutoverStage::TargetPrimary
                && matches!(last.stage, CutoverStage::Mirror | CutoverStage::ShadowReads)
                && last.stage == cut.stage
                && cut.confirmed =>
        {
            last.at.clone()
        }
        _ => return Ok(()),
    };
    let checked_since = check
        .last_started
        .as_ref()
        .is_some_and(|t| t.0 >= rolled_back.0);
    if checked_since {
        return Ok(());
    }
    status::set_condition(
        &mut step.status,
        condition::ROLL_BACK_VERIFIED,
        false,
        "Checking",
        "the source is being checked against the target (reverse validation)".to_owned(),
        step.cm.metadata.generation,
        &step.now,
    );
    start_job(step, pods, JobKind::Reverse, check.runs + 1).await?;
    Ok(())
}

async fn follow(step: &mut Step<'_>, name: &str) -> Result<()> {
    let generation = step.cm.metadata.generation;
    match follow_check_job(step, name).await? {
        CheckJob::Gone => {
            done(step, None);
            Ok(())
        }
        CheckJob::Running => Ok(()),
        CheckJob::Failed { why, results } => {
            done(step, Some(results));
            let message = format!("the reverse validation Job {name} failed: {why}");
            status::set_condition(
                &mut step.status,
                condition::ROLL_BACK_VERIFIED,
                false,
                "CheckFailed",
                message.clone(),
                generation,
                &step.now,
            );
            step.event(
                EventType::Warning,
                "RollBackCheckFailed",
                "Cutover",
                message,
            )
            .await;
            Ok(())
        }
        CheckJob::Complete(results) => {
            // Reversed: `missing` are rows the source lacks.
            let (lacking, extra, differing) = (results.missing, results.extra, results.mismatched);
            let compared = results.rows_compared;
            let examples = jobs::example_keys(&results, 3, 5);
            done(step, Some(results));
            if lacking + differing == 0 {
                status::set_condition(
                    &mut step.status,
                    condition::ROLL_BACK_VERIFIED,
                    true,
                    "SourceHasEverything",
                    format!("the source holds every one of {compared} rows the target does ({extra} rows only on the source)"),
                    generation,
                    &step.now,
                );
                step.event(
                    EventType::Normal,
                    "RollBackVerified",
                    "Cutover",
                    format!("{name}: the source holds what the target does"),
                )
                .await;
            } else {
                let message = format!(
                    "{name}: the source lacks {lacking} and differs in {differing} of {compared} rows the target holds: {}",
                    examples.join("; ")
                );
                status::set_condition(
                    &mut step.status,
                    condition::ROLL_BACK_VERIFIED,
                    false,
                    "SourceDiffers",
                    message.clone(),
                    generation,
                    &step.now,
                );
                step.event(EventType::Warning, "RollBackDiffers", "Cutover", message)
                    .await;
            }
            Ok(())
        }
    }
}

fn done(step: &mut Step<'_>, results: Option<crate::crd::ValidationResults>) {
    let now = step.now.clone();
    if let Some(cut) = step.status.cutover.as_mut() {
        let check: &mut ScheduledValidation =
            cut.reverse_check.get_or_insert_with(Default::default);
        check_finished(check, &now, results);
    }
}
