//! The cut-over as the operator drives it: the stage the spec asks for,
//! switched on every proxy at run time and confirmed from each
//! (`crate::cutover` decides; this applies).

use super::*;

/// Applies the requested cut-over stage when [`cutover::decide`] allows it
/// (writing it to the proxies' runtime ConfigMap), and confirms it once
/// every proxy serves it. Returns whether a switch is under way (or
/// refused), so the caller looks again soon.
pub(super) async fn follow_cutover(
    step: &mut Step<'_>,
    pods: &[Pod],
    mut readings: Vec<(String, Result<ProxyState, proxy_state::ReadError>)>,
) -> Result<bool> {
    let generation = step.cm.metadata.generation;
    let spec = &step.cm.spec.cutover;
    let requested = spec.stage;
    let mut cut = step.status.cutover.clone().unwrap_or_default();
    let clients: Option<u64> = readings
        .iter()
        .map(|(_, r)| r.as_ref().ok().map(|s| s.client_connections))
        .sum();
    if requested != cut.stage {
        let facts = cutover::Facts {
            phase: step.status.phase,
            validated: status::is_true(&step.status, condition::VALIDATED),
            unsafe_reason: status::unsafe_reason(&step.status).map(|(r, m)| format!("{r}: {m}")),
            client_connections: clients,
            force: spec.force,
        };
        match cutover::decide(requested, cut.stage, &facts) {
            Err(refusal) => {
                let was_refused = step.status.conditions.iter().any(|c| {
                    c.type_ == condition::CUTOVER
                        && c.status == "False"
                        && c.reason == refusal.reason
                });
                status::set_condition(
                    &mut step.status,
                    condition::CUTOVER,
                    false,
                    refusal.reason,
                    refusal.message.clone(),
                    generation,
                    &step.now,
                );
                if !was_refused {
                    warn!(stage = %requested, reason = refusal.reason, message = %refusal.message, "cut-over stage refused");
                    step.event(
                        EventType::Warning,
                        "CutoverRefused",
                        "Cutover",
                        refusal.message,
                    )
                    .await;
                }
                step.status.cutover = Some(cut);
                return Ok(true);
            }
            Ok(stage) => {
                info!(from = %cut.stage, to = %stage, "applying cut-over stage");
                cut.stage = stage;
                cut.confirmed = false;
                step.status.cutover = Some(cut.clone());
                write_peer_map(step, pods).await?;
                step.event(
                    EventType::Normal,
                    "CutoverStage",
                    "Cutover",
                    format!("switching every proxy to stage {stage}"),
                )
                .await;
                if stage == CutoverStage::Done {
                    // The proxies are taken out from the next reconcile on.
                    status::set_condition(
                        &mut step.status,
                        condition::CUTOVER,
                        false,
                        "TakingProxiesOut",
                        "cut over: taking the proxies out, one pod at a time",
                        generation,
                        &step.now,
                    );
                    return Ok(true);
                }
                // The readings above predate the switch.
                readings = read_proxies(pods).await;
            }
        }
    }
    cut.shadow_reads = readings
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|s| s.shadow_reads as i64)
        .sum();
    cut.shadow_read_mismatches = readings
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|s| s.shadow_read_mismatches as i64)
        .sum();
    cut.shadow_read_mismatches_by_table = BTreeMap::new();
    for state in readings.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        for (table, n) in &state.shadow_read_mismatches_by_table {
            *cut.shadow_read_mismatches_by_table
                .entry(table.clone())
                .or_insert(0) += *n as i64;
        }
    }
    if cut.shadow_reads > 0 {
        let (matches, reason, message) = if cut.shadow_read_mismatches == 0 {
            (
                true,
                "NoMismatch",
                format!(
                    "{} reads compared with the target, none differed",
                    cut.shadow_reads
                ),
            )
        } else {
            let tables: Vec<String> = cut
                .shadow_read_mismatches_by_table
                .iter()
                .map(|(t, n)| format!("{t} ({n})"))
                .collect();
            (
                false,
                "Mismatches",
                format!(
                    "{} of {} reads compared with the target differed: {} (a read racing a write can differ once; a count that grows is a difference, which the next validation finds)",
                    cut.shadow_read_mismatches,
                    cut.shadow_reads,
                    tables.join(", ")
                ),
            )
        };
        status::set_condition(
            &mut step.status,
            condition::SHADOW_READS_MATCH,
            matches,
            reason,
            message,
            step.cm.metadata.generation,
            &step.now,
        );
    }
    let want = cutover::proxy_setting(cut.stage, step.cm);
    cut.lagging = cutover::lagging(&readings, want);
    let switching = !cut.lagging.is_empty();
    if switching {
        status::set_condition(
            &mut step.status,
            condition::CUTOVER,
            false,
            "Switching",
            format!(
                "stage {} not served by every proxy yet: {}",
                cut.stage,
                cut.lagging.join("; ")
            ),
            generation,
            &step.now,
        );
    } else {
        if !cut.confirmed {
            cut.confirmed = true;
            cut.history.push(crate::crd::CutoverTransition {
                stage: cut.stage,
                at: step.now.clone(),
            });
            let message = format!("every proxy serves stage {}", cut.stage);
            info!(%message, "cut-over stage confirmed");
            step.event(EventType::Normal, "CutoverConfirmed", "Cutover", message)
                .await;
        }
        status::set_condition(
            &mut step.status,
            condition::CUTOVER,
            true,
            "Confirmed",
            format!("every proxy serves stage {}", cut.stage),
            generation,
            &step.now,
        );
    }
    step.status.cutover = Some(cut);
    metrics_stage(step);
    Ok(switching)
}

/// Records the cut-over stage in the operator's metrics.
pub(super) fn metrics_stage(step: &Step<'_>) {
    let stage = cutover::applied(Some(&step.status));
    step.ctx
        .metrics
        .set_cutover_stage(&step.ns, &step.name, stage);
}
