//! The roll: the proxy put into (or taken out of) the source pods one pod at
//! a time, through the Eviction API, with the gates of `crate::roll` before
//! each eviction.

use super::*;

/// How a roll that takes the proxies out sees a pod: a proxy that serves
/// another migration is not this one's to take out (the webhook injects the
/// first live migration covering a StatefulSet; evicting that pod would
/// only see it injected again), so it counts as having none. The pod still
/// counts for readiness: no eviction while any pod is down.
pub(super) fn removal_view(pod: &Pod, migration: &str) -> PodView {
    let mut view = PodView::of(pod);
    let serves_another = pod
        .annotations()
        .get(labels::MIGRATION_ANNOTATION)
        .is_some_and(|m| m != migration);
    if serves_another {
        view.has_sidecar = false;
        view.sidecar_ready = false;
    }
    view
}

/// The per-pod roll state, carrying `since` over from the last status.
/// `direction` is the roll's: while the proxies are taken out (`Remove`,
/// for `migration`), a pod back without one is `Removed`, not failed.
pub(super) fn sidecar_states(
    previous: &[SidecarPodStatus],
    pods: &[Pod],
    now: &Time,
    direction: Direction,
    migration: &str,
) -> Vec<SidecarPodStatus> {
    let prev: BTreeMap<&str, &SidecarPodStatus> =
        previous.iter().map(|s| (s.pod.as_str(), s)).collect();
    let mut names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    // A pod that was being rolled and is gone right now is still Rolling.
    for s in previous {
        if s.state == SidecarState::Rolling && !names.contains(&s.pod) {
            names.push(s.pod.clone());
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let pod = pods.iter().find(|p| p.name_any() == name);
            let before = prev.get(name.as_str()).copied();
            let (state, message, address) = match pod {
                None => (
                    SidecarState::Rolling,
                    Some("pod is gone; waiting for it to come back".to_owned()),
                    None,
                ),
                Some(p) => {
                    let view = match direction {
                        Direction::Inject => PodView::of(p),
                        Direction::Remove => removal_view(p, migration),
                    };
                    let address = p
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_ip.clone())
                        .filter(|ip| !ip.is_empty());
                    let evicted = view.terminating
                        || (before.is_some_and(|b| b.state == SidecarState::Rolling)
                            && !view.ready);
                    if direction == Direction::Remove && !evicted {
                        if view.has_sidecar {
                            (
                                SidecarState::Removing,
                                Some("its proxy is taken out in turn".to_owned()),
                                address,
                            )
                        } else {
                            (SidecarState::Removed, None, address)
                        }
                    } else if view.has_sidecar && view.sidecar_ready && view.ready {
                        (SidecarState::Ready, None, address)
                    } else if evicted {
                        (
                            SidecarState::Rolling,
                            Some("evicted; coming back".to_owned()),
                            address,
                        )
                    } else if view.has_sidecar {
                        (
                            SidecarState::Rolling,
                            Some("proxy not ready yet".to_owned()),
                            address,
                        )
                    } else if before.is_some_and(|b| b.state == SidecarState::Rolling) {
                        (
                            SidecarState::Failed,
                            Some(
                                "came back without the sidecar: is the webhook reachable?"
                                    .to_owned(),
                            ),
                            address,
                        )
                    } else {
                        (SidecarState::Waiting, None, address)
                    }
                }
            };
            let since = match before {
                Some(b) if b.state == state => b.since.clone(),
                _ => Some(now.clone()),
            };
            SidecarPodStatus {
                pod: name,
                state,
                proxy_address: address,
                message,
                since,
            }
        })
        .collect()
}

pub(super) async fn roll_sidecars(
    step: &mut Step<'_>,
    pods: &[Pod],
    replicas: usize,
    direction: Direction,
) -> Result<Action> {
    let views: Vec<PodView> = match direction {
        Direction::Inject => {
            let expected = step.proxy_config();
            pods.iter()
                .map(|p| PodView::expecting(p, &expected))
                .collect()
        }
        Direction::Remove => pods.iter().map(|p| removal_view(p, &step.name)).collect(),
    };
    let generation = step.cm.metadata.generation;
    let poll = step.ctx.settings.poll;
    match roll::plan(&views, replicas, direction) {
        RollStep::Done => {
            if direction == Direction::Inject {
                status::set_condition(
                    &mut step.status,
                    condition::SIDECARS_READY,
                    true,
                    "AllPodsProxied",
                    format!("{replicas} pods run a ready proxy"),
                    generation,
                    &step.now,
                );
                if !probe_gate(step, pods).await {
                    return Ok(Action::requeue(Duration::from_secs(10)));
                }
                step.enter(Phase::Mirroring).await;
            }
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        RollStep::Wait { pod, reason } => {
            status::set_condition(
                &mut step.status,
                condition::SIDECARS_READY,
                false,
                "Rolling",
                reason.clone(),
                generation,
                &step.now,
            );
            // A pod that does not come back stops the roll: never take down another.
            let timeout = step.ctx.settings.roll_timeout;
            let stuck = step.status.sidecars.iter().find(|s| {
                s.state == SidecarState::Rolling
                    && pod.as_ref().is_none_or(|p| *p == s.pod)
                    && s.since.as_ref().is_some_and(|t| {
                        let elapsed = step.now.0.duration_since(t.0);
                        elapsed.as_secs() > timeout.as_secs() as i64
                    })
            });
            if let Some(s) = stuck {
                let with = match direction {
                    Direction::Inject => "with",
                    Direction::Remove => "without",
                };
                // A deleted migration cannot fail (nothing would resume it)
                // and must not stop: its removal waits for the pod, says so,
                // and goes on when it is back.
                if step.status.phase == Phase::Removing {
                    let msg = format!("pod {} has not come back Ready {with} its proxy for over {}s ({reason}); the removal waits for it", s.pod, timeout.as_secs());
                    status::set_condition(
                        &mut step.status,
                        condition::SIDECARS_READY,
                        false,
                        "PodNotBack",
                        msg,
                        generation,
                        &step.now,
                    );
                    return Ok(Action::requeue(poll));
                }
                let msg = format!("pod {} did not come back Ready {with} its proxy within {}s ({reason}); the roll is stopped", s.pod, timeout.as_secs());
                step.fail("PodNotBack", msg).await;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            Ok(Action::requeue(poll))
        }
        RollStep::Evict(name) => {
            if let Some(reason) = ring_gate(step.ctx, &step.ns, step.cm, pods).await {
                status::set_condition(
                    &mut step.status,
                    condition::SIDECARS_READY,
                    false,
                    "WaitingForRing",
                    format!("not evicting {name} yet: {reason}"),
                    generation,
                    &step.now,
                );
                return Ok(Action::requeue(poll));
            }
            if let Some(reason) = spool_hold(step.ctx, pods, &name).await {
                status::set_condition(
                    &mut step.status,
                    condition::SIDECARS_READY,
                    false,
                    "WaitingForSpool",
                    format!("not evicting {name} yet: {reason}"),
                    generation,
                    &step.now,
                );
                return Ok(Action::requeue(poll));
            }
            match evict(step.ctx, &step.ns, &name).await? {
                Eviction::Done => {
                    info!(pod = %name, ?direction, "evicted");
                    if let Some(s) = step.status.sidecars.iter_mut().find(|s| s.pod == name) {
                        s.state = SidecarState::Rolling;
                        // The roll's timer starts at the eviction, not at this
                        // reconcile's start: a reconcile that stalled before it
                        // evicted (a slow API server, a paused machine: stop
                        // 27's local CI) must not count against the pod.
                        s.since = Some(now());
                        s.message = Some("evicted; coming back".to_owned());
                    }
                    let what = if direction == Direction::Inject {
                        "inject"
                    } else {
                        "remove"
                    };
                    step.event(
                        EventType::Normal,
                        "EvictedPod",
                        "Roll",
                        format!("evicted {name} to {what} the proxy sidecar"),
                    )
                    .await;
                }
                Eviction::Refused(why) => {
                    info!(pod = %name, %why, "eviction refused for now; waiting");
                    status::set_condition(
                        &mut step.status,
                        condition::SIDECARS_READY,
                        false,
                        "EvictionRefused",
                        format!("not evicting {name} yet: {why}"),
                        generation,
                        &step.now,
                    );
                }
                // Already going: the next look sees it come back. Or not
                // this replica's to say.
                Eviction::Gone | Eviction::NotLeader => {}
            }
            Ok(Action::requeue(poll))
        }
    }
}

/// After the roll: every pod must still carry a ready sidecar (pods replaced
/// by someone else come back through the webhook) with the migration's
/// current proxy settings. Re-rolls a pod that lacks it or has older
/// settings, one at a time, and reports `Degraded` meanwhile. Returns
/// whether all is well.
pub(super) async fn check_sidecars(
    step: &mut Step<'_>,
    pods: &[Pod],
    replicas: usize,
) -> Result<bool> {
    let generation = step.cm.metadata.generation;
    let expected = step.proxy_config();
    let views: Vec<PodView> = pods
        .iter()
        .map(|p| PodView::expecting(p, &expected))
        .collect();
    let names = |keep: fn(&PodView) -> bool| -> Vec<&str> {
        views
            .iter()
            .filter(|v| keep(v))
            .map(|v| v.name.as_str())
            .collect()
    };
    let missing = names(|v| !v.has_sidecar);
    let outdated = names(|v| v.outdated);
    if !missing.is_empty() && step.status.revalidate.is_none() {
        // Mirroring began: writes that reached these pods went to the
        // source alone. Validate again (with repair) once they are back.
        let why = format!(
            "{} ran without the proxy after mirroring began (seen {}); writes may have reached the source alone",
            missing.join(", "),
            step.now.0
        );
        warn!(%why, "validating again after the re-roll");
        step.event(EventType::Warning, "UnmirroredWrites", "Roll", why.clone())
            .await;
        step.status.revalidate = Some(why);
    }
    if missing.is_empty() && outdated.is_empty() && views.len() >= replicas {
        status::set_condition(
            &mut step.status,
            condition::DEGRADED,
            false,
            "AllPodsProxied",
            "every source pod runs the proxy",
            generation,
            &step.now,
        );
        return Ok(true);
    }
    let (reason, msg) = if !missing.is_empty() {
        (
            "SidecarMissing",
            format!(
                "pods without the proxy: {}; re-rolling them",
                missing.join(", ")
            ),
        )
    } else if !outdated.is_empty() {
        // The spec's proxy settings changed (image, resources, TLS...): each
        // pod is rolled again, one at a time, as in the first roll.
        (
            "SidecarOutdated",
            format!(
                "pods whose proxy predates the migration's proxy settings: {}; re-rolling them",
                outdated.join(", ")
            ),
        )
    } else {
        (
            "SidecarMissing",
            format!("{} of {replicas} source pods exist", views.len()),
        )
    };
    status::set_condition(
        &mut step.status,
        condition::DEGRADED,
        true,
        reason,
        msg,
        generation,
        &step.now,
    );
    roll_sidecars_quiet(step, pods, &views, replicas).await?;
    Ok(false)
}

/// The roll without phase changes (used to heal after the roll is done).
async fn roll_sidecars_quiet(
    step: &mut Step<'_>,
    pods: &[Pod],
    views: &[PodView],
    replicas: usize,
) -> Result<()> {
    if let RollStep::Evict(name) = roll::plan(views, replicas, Direction::Inject) {
        // The same gate as the first roll: never evict while a node does
        // not see the ring whole.
        if let Some(reason) = ring_gate(step.ctx, &step.ns, step.cm, pods).await {
            info!(pod = %name, %reason, "not re-rolling yet");
            return Ok(());
        }
        if let Some(reason) = spool_hold(step.ctx, pods, &name).await {
            info!(pod = %name, %reason, "not re-rolling yet");
            let generation = step.cm.metadata.generation;
            status::set_condition(
                &mut step.status,
                condition::DEGRADED,
                true,
                "WaitingForSpool",
                format!("re-rolling {name} waits: {reason}"),
                generation,
                &step.now,
            );
            return Ok(());
        }
        match evict(step.ctx, &step.ns, &name).await? {
            Eviction::Done => {
                let why = if views.iter().any(|v| v.name == name && v.outdated) {
                    "ran a proxy with outdated settings"
                } else {
                    "ran without the proxy"
                };
                step.event(
                    EventType::Warning,
                    "ReRolledPod",
                    "Roll",
                    format!("{name} {why}; evicted it"),
                )
                .await;
            }
            Eviction::Refused(why) => info!(pod = %name, %why, "not re-rolling yet"),
            Eviction::Gone | Eviction::NotLeader => {}
        }
    }
    Ok(())
}

/// Cut-over `done`: takes the proxies out one pod at a time, with the
/// roll's gates (ready, settled, the ring whole, nothing owed to the
/// target), then the migration is `Complete`.
pub(super) async fn take_proxies_out(
    step: &mut Step<'_>,
    pods: &[Pod],
    replicas: usize,
) -> Result<Action> {
    if !proxies_out(pods, replicas, &step.name) {
        return roll_sidecars(step, pods, replicas, Direction::Remove).await;
    }
    let generation = step.cm.metadata.generation;
    if let Some(cut) = step.status.cutover.as_mut() {
        cut.confirmed = true;
        cut.lagging.clear();
        cut.history.push(crate::crd::CutoverTransition {
            stage: CutoverStage::Done,
            at: step.now.clone(),
        });
    }
    status::set_condition(
        &mut step.status,
        condition::CUTOVER,
        true,
        "Complete",
        "the applications use the target; every proxy is gone",
        generation,
        &step.now,
    );
    status::set_condition(
        &mut step.status,
        condition::READY,
        false,
        "CutOver",
        "mirroring has ended: the target is the applications' cluster now",
        generation,
        &step.now,
    );
    step.enter(Phase::Complete).await;
    metrics_stage(step);
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Whether every pod runs without this migration's proxy (and the roll that
/// took them out is over: all there and Ready).
pub(super) fn proxies_out(pods: &[Pod], replicas: usize, migration: &str) -> bool {
    let views: Vec<PodView> = pods.iter().map(|p| removal_view(p, migration)).collect();
    roll::plan(&views, replicas, Direction::Remove) == RollStep::Done
}

/// What asking the Eviction API for a pod came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Eviction {
    /// The pod is going.
    Done,
    /// Not now, and why: a PodDisruptionBudget refuses (429), or two select
    /// the pod (500); the API server's own words.
    Refused(String),
    /// The pod was already gone (404).
    Gone,
    /// Not asked: this replica no longer holds the leader lease, and the
    /// one that does speaks for the migration.
    NotLeader,
}

/// Evicts a pod through the Eviction API. A budget's refusal comes back at
/// once: the controller's client does not retry a 429 by itself
/// (`controller::api_client`).
pub(super) async fn evict(ctx: &Context, ns: &str, pod: &str) -> Result<Eviction> {
    // The one step that takes a node down: never from a replica that may
    // have lost the lease while this reconcile ran.
    if !ctx.leadership.is_leading() {
        warn!(%pod, "not evicting: this replica no longer holds the leader lease");
        return Ok(Eviction::NotLeader);
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match api.evict(pod, &EvictParams::default()).await {
        Ok(_) => Ok(Eviction::Done),
        Err(kube::Error::Api(s)) if s.code == 429 => Ok(Eviction::Refused(s.message)),
        // Two budgets select the pod: the API server refuses with a 500
        // until one is gone (`ensure_pdb` drops Ferry's own when another
        // appears). A wait to report, not an error to back off on.
        Err(kube::Error::Api(s))
            if s.code == 500 && s.message.contains("more than one PodDisruptionBudget") =>
        {
            Ok(Eviction::Refused(s.message))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Eviction::Gone),
        Err(err) => Err(err.into()),
    }
}
