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
        let replicas = found.replicas();
        let pods = found.pods;
        // Only pods that serve this migration.
        let ours: Vec<Pod> = pods
            .iter()
            .filter(|p| {
                p.annotations()
                    .get(labels::MIGRATION_ANNOTATION)
                    .is_none_or(|m| *m == name)
            })
            .cloned()
            .collect();
        let views: Vec<PodView> = ours.iter().map(PodView::of).collect();
        match roll::plan(&views, replicas, Direction::Remove) {
            RollStep::Done => {}
            RollStep::Wait { reason, .. } => {
                return Err(Error::CleanupInProgress(reason));
            }
            RollStep::Evict(pod) => {
                // The whole ring, not only this migration's pods.
                if let Some(reason) = ring_gate(&ctx, &ns, &cm, &pods).await {
                    return Err(Error::CleanupInProgress(format!(
                        "not evicting {pod} yet: {reason}"
                    )));
                }
                // Removing the proxy with writes in its spool would lose
                // them: the spool is in the pod.
                if let Some(reason) = spool_hold(&ctx, &pods, &pod).await {
                    return Err(Error::CleanupInProgress(format!(
                        "not evicting {pod} yet: {reason}"
                    )));
                }
                if evict(&ctx, &ns, &pod).await? == Eviction::Done {
                    step.event(
                        EventType::Normal,
                        "EvictedPod",
                        "RemoveSidecar",
                        format!("evicted {pod} to remove the proxy sidecar"),
                    )
                    .await;
                }
                return Err(Error::CleanupInProgress(format!(
                    "removing the sidecar of {pod}"
                )));
            }
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
