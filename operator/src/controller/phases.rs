//! The phase machine: one reconcile of a live migration, from the fetch of
//! its source to the status it writes, taking at most one step.

use super::*;

/// `cm` is fresh from the API server (`reconcile` reads it), not the
/// watch cache's copy.
pub(super) async fn apply(cm: Arc<CassandraMigration>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cm.namespace().ok_or(Error::NoNamespace)?;
    let mut step = Step {
        cm: &cm,
        ctx: &ctx,
        name: cm.name_any(),
        ns: ns.clone(),
        status: cm.status.clone().unwrap_or_default(),
        now: now(),
    };
    if step.status.phase_history.is_empty() {
        step.enter(Phase::Pending).await;
    }

    // Fetch the source: every StatefulSet of it, and their pods.
    let found = match source::fetch(&ctx.client, &ns, &cm.spec.source).await {
        Ok(found) => found,
        Err(source::SourceError::NotFound(msg)) => {
            if step.status.phase != Phase::Failed {
                step.fail("SourceNotFound", msg).await;
            }
            step.write_status().await?;
            ctx.metrics.set_phase(&ns, &step.name, step.status.phase);
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        Err(source::SourceError::Kube(e)) => return Err(e.into()),
    };
    let replicas = found.replicas();
    step.status.source_stateful_sets = found.names();
    let pods = found.pods.clone();
    write_peer_map(&step, &pods).await?;
    ensure_pdb(&step, &found).await?;
    // Cut over: the proxies are leaving for good, pod by pod.
    let direction = if crate::cutover::proxies_leaving(&cm) {
        Direction::Remove
    } else {
        Direction::Inject
    };
    step.status.sidecars = sidecar_states(
        &step.status.sidecars,
        &pods,
        &step.now,
        direction,
        &step.name,
    );

    // A failed migration resumes once its spec changed (or its source is back).
    if step.status.phase == Phase::Failed {
        let spec_changed = step.status.observed_generation < cm.metadata.generation;
        let source_back = step.status.conditions.iter().any(|c| {
            c.type_ == condition::FAILED && c.status == "True" && c.reason == "SourceNotFound"
        });
        if spec_changed || source_back {
            let resume = status::resume_phase(&step.status);
            let generation = cm.metadata.generation;
            // A failed Job stays failed: remove it so the phase makes a new
            // one (the backfill's checkpoints keep finished ranges done).
            delete_failed_jobs(&ctx.client, &ns, &step.name).await?;
            status::set_condition(
                &mut step.status,
                condition::FAILED,
                false,
                "Resumed",
                format!("resumed in {resume}"),
                generation,
                &step.now,
            );
            step.enter(resume).await;
        } else {
            step.write_status().await?;
            ctx.metrics.set_phase(&ns, &step.name, Phase::Failed);
            return Ok(Action::requeue(Duration::from_secs(120)));
        }
    }

    let poll = ctx.settings.poll;
    // Once the proxies run, the source's schema is followed on the target
    // (the proxies follow what clients change through them; this catches
    // the rest), until the cut-over ends the migration.
    if matches!(
        step.status.phase,
        Phase::Mirroring | Phase::Backfilling | Phase::Validating | Phase::Ready
    ) && cutover::applied(Some(&step.status)) != CutoverStage::Done
    {
        schema_recheck(&mut step, &pods).await;
    }
    let action = match step.status.phase {
        Phase::Pending => {
            if schema_gate(&mut step, &pods).await {
                roll_sidecars(&mut step, &pods, replicas, Direction::Inject).await?
            } else {
                Action::requeue(Duration::from_secs(10))
            }
        }
        Phase::Mirroring => {
            check_mirroring(&mut step, &pods).await;
            if check_sidecars(&mut step, &pods, replicas).await? {
                // The validation after the backfill covers what went by.
                step.status.revalidate = None;
                start_job(&mut step, &pods, JobKind::Backfill, 1).await?;
                step.enter(Phase::Backfilling).await;
            }
            Action::requeue(poll)
        }
        Phase::Backfilling => {
            if check_sidecars(&mut step, &pods, replicas).await? {
                step.status.revalidate = None;
            }
            check_mirroring(&mut step, &pods).await;
            follow_backfill(&mut step).await?
        }
        Phase::Validating => {
            let proxied = check_sidecars(&mut step, &pods, replicas).await?;
            check_mirroring(&mut step, &pods).await;
            if proxied && step.status.revalidate.is_some() {
                revalidate(&mut step, &pods).await?
            } else {
                follow_validation(&mut step, &pods).await?
            }
        }
        Phase::Ready if cutover::applied(Some(&step.status)) == CutoverStage::Done => {
            take_proxies_out(&mut step, &pods, replicas).await?
        }
        Phase::Ready => {
            let proxied = check_sidecars(&mut step, &pods, replicas).await?;
            // One reading of every proxy serves both checks.
            let readings = read_proxies(&pods).await;
            let behind = ctx.settings.proxy_checks && mirroring_behind(&mut step, &readings).await;
            set_ready(&mut step);
            if proxied && step.status.revalidate.is_some() {
                revalidate(&mut step, &pods).await?
            } else {
                let switching = follow_cutover(&mut step, &pods, readings).await?;
                // Checks run when no stage switch is asked for (a proxy
                // whose /state cannot be read keeps `switching` set, and
                // must not stop the checks of the data).
                let stage_settled = step
                    .status
                    .cutover
                    .as_ref()
                    .is_none_or(|c| c.stage == step.cm.spec.cutover.stage);
                if proxied && !behind && stage_settled {
                    reverse_check(&mut step, &pods).await?;
                    scheduled_check(&mut step, &pods).await?;
                }
                // A re-roll in progress waits on settle times no pod event
                // marks, a spool is read again soon, and a stage switch is
                // confirmed as soon as the proxies report it: look again soon.
                if proxied && !behind && !switching {
                    Action::requeue(Duration::from_secs(30))
                } else {
                    Action::requeue(poll)
                }
            }
        }
        Phase::Complete => Action::requeue(Duration::from_secs(600)),
        // Only a deleted migration is Removing, and the finalizer's cleanup,
        // not this, runs for it.
        Phase::Removing => Action::await_change(),
        Phase::Failed => Action::requeue(Duration::from_secs(120)),
    };
    step.write_status().await?;
    ctx.metrics.set_phase(&ns, &step.name, step.status.phase);
    Ok(action)
}

/// When the first proxy may have started mirroring: the migration's first
/// phase (Pending, when the roll starts), else its creation.
pub(super) fn mirroring_since_micros(cm: &CassandraMigration) -> Option<i64> {
    let first_phase = cm
        .status
        .as_ref()
        .and_then(|s| s.phase_history.first())
        .map(|t| t.started_at.0);
    first_phase
        .or_else(|| cm.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map(|t| t.as_microsecond())
}

/// The `Ready` condition of a migration in the `Ready` phase: true only
/// while every source pod runs its proxy and every spool drains.
pub(super) fn set_ready(step: &mut Step<'_>) {
    let generation = step.cm.metadata.generation;
    let (ready, reason, message) = match status::unsafe_reason(&step.status) {
        None => (
            true,
            "InSync",
            "the target holds everything; mirroring goes on until you cut the applications over"
                .to_owned(),
        ),
        Some((reason, message)) => (false, reason, message),
    };
    status::set_condition(
        &mut step.status,
        condition::READY,
        ready,
        reason,
        message,
        generation,
        &step.now,
    );
}
