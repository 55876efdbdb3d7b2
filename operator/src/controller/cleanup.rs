//! Deleting a migration (its finalizer): the Jobs first, then the proxies
//! taken out with the same one-at-a-time roll, then what else Ferry made.
//! Data is never touched.

use super::*;

/// Deleting a migration: take the sidecars out with the same one-at-a-time
/// roll, delete the Jobs and what else Ferry made, never touch data.
pub(super) async fn cleanup(cm: Arc<CassandraMigration>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cm.namespace().ok_or(Error::NoNamespace)?;
    let name = cm.name_any();
    let step = Step {
        cm: &cm,
        ctx: &ctx,
        name: name.clone(),
        ns: ns.clone(),
        status: cm.status.clone().unwrap_or_default(),
        now: now(),
    };
    // Jobs first: no copy may go on while the proxies go away.
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let dp = DeleteParams::background();
    let owned = jobs_api
        .list(&ListParams::default().labels(&format!("{}={name}", labels::MIGRATION_LABEL)))
        .await?;
    for job in owned.items {
        delete_if_present(&jobs_api, &job.name_any(), &dp).await?;
    }
    let found = match source::fetch(&ctx.client, &ns, &cm.spec.source).await {
        Ok(found) => Some(found),
        Err(source::SourceError::NotFound(_)) => None,
        Err(source::SourceError::Kube(e)) => return Err(e.into()),
    };
    if let Some(found) = found {
        // The budget guards the removal roll as it guarded the roll in.
        ensure_pdb(&step, &found).await?;
        let replicas = found.replicas();
        if !proxies_out(&found.pods, replicas, &name) {
            return remove_proxies(step, &found.pods, replicas).await;
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    delete_if_present(
        &cms,
        &labels::peer_map_name(&name),
        &DeleteParams::default(),
    )
    .await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    let ours = pdbs
        .list(&ListParams::default().labels(&format!("{}={name}", labels::MIGRATION_LABEL)))
        .await?;
    for pdb in ours.items {
        delete_if_present(&pdbs, &pdb.name_any(), &DeleteParams::default()).await?;
    }
    step.event(
        EventType::Normal,
        "Removed",
        "Cleanup",
        "sidecars removed, Jobs deleted; data untouched".to_owned(),
    )
    .await;
    ctx.metrics.forget(&ns, &name);
    Ok(Action::await_change())
}

/// One step of the roll that takes the proxies out, said in the status: the
/// phase is `Removing` (never `Ready`: a pod without its proxy no longer
/// mirrors), each pod's state, and in `SidecarsReady` what the roll waits
/// for (a budget, the ring, a spool, a pod coming back). Always an error to
/// the finalizer, which keeps the migration until the roll is done.
async fn remove_proxies(mut step: Step<'_>, pods: &[Pod], replicas: usize) -> Result<Action> {
    let generation = step.cm.metadata.generation;
    step.status.sidecars = sidecar_states(
        &step.status.sidecars,
        pods,
        &step.now,
        Direction::Remove,
        &step.name,
    );
    step.enter(Phase::Removing).await;
    let removing = "the migration is deleted: its proxies are taken out one pod at a time";
    for type_ in [condition::READY, condition::SIDECARS_READY] {
        status::set_condition(
            &mut step.status,
            type_,
            false,
            "Removing",
            removing,
            generation,
            &step.now,
        );
    }
    // Sets SidecarsReady to what it waits for, if anything; evicts if not.
    roll_sidecars(&mut step, pods, replicas, Direction::Remove).await?;
    step.write_status().await?;
    step.ctx
        .metrics
        .set_phase(&step.ns, &step.name, Phase::Removing);
    let waiting_for = step
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::SIDECARS_READY)
        .map(|c| c.message.clone())
        .unwrap_or_else(|| removing.to_owned());
    debug!(%waiting_for, "removing the proxies");
    Err(Error::CleanupInProgress(waiting_for))
}
