//! What the proxies report on their admin port (`/state`): the spool a pod
//! must not be evicted with, and mirroring that falls behind.

use super::*;

/// The address of a pod's proxy admin port, once the pod has an IP.
fn proxy_admin_address(pod: &Pod) -> Option<std::net::SocketAddr> {
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    Some(std::net::SocketAddr::new(
        ip,
        u16::try_from(labels::PROXY_ADMIN_PORT).ok()?,
    ))
}

/// Why pod `name` must not be evicted yet for what its proxy still owes
/// the target ([`proxy_state::eviction_hold`]); `None` when it may go.
pub(super) async fn spool_hold(ctx: &Context, pods: &[Pod], name: &str) -> Option<String> {
    if !ctx.settings.proxy_checks {
        return None;
    }
    let pod = pods.iter().find(|p| p.name_any() == name)?;
    if !sidecar::has_sidecar(pod) {
        return None;
    }
    let reading = match proxy_admin_address(pod) {
        Some(admin) => proxy_state::read(admin).await,
        None => return None,
    };
    proxy_state::eviction_hold(name, sidecar::sidecar_ready(pod), &reading)
}

/// Every proxy's `/state`, by pod (pods that run one and have an IP).
pub(super) async fn read_proxies(
    pods: &[Pod],
) -> Vec<(String, Result<ProxyState, proxy_state::ReadError>)> {
    futures::future::join_all(
        pods.iter()
            .filter(|p| sidecar::has_sidecar(p))
            .filter_map(|p| Some((p.name_any(), proxy_admin_address(p)?)))
            .map(|(name, admin)| async move { (name, proxy_state::read(admin).await) }),
    )
    .await
}

/// Reads every proxy's state and sets `MirroringBehind` when a spool has
/// stopped draining; returns whether mirroring is behind.
pub(super) async fn check_mirroring(step: &mut Step<'_>, pods: &[Pod]) -> bool {
    if !step.ctx.settings.proxy_checks {
        return false;
    }
    let readings = read_proxies(pods).await;
    mirroring_behind(step, &readings).await
}

/// `MirroringBehind` from readings already taken (the `Ready` phase reads
/// the proxies once for this and for the cut-over).
pub(super) async fn mirroring_behind(
    step: &mut Step<'_>,
    readings: &[(String, Result<ProxyState, proxy_state::ReadError>)],
) -> bool {
    let behind = proxy_state::behind(readings, step.ctx.settings.mirroring_behind_after);
    let generation = step.cm.metadata.generation;
    let was_behind = status::is_true(&step.status, condition::MIRRORING_BEHIND);
    if behind.is_empty() {
        status::set_condition(
            &mut step.status,
            condition::MIRRORING_BEHIND,
            false,
            "SpoolsDrain",
            "no proxy's spool has stopped draining",
            generation,
            &step.now,
        );
        return false;
    }
    let message = format!(
        "writes the applications were told succeeded are not on the target yet: {}",
        behind.join("; ")
    );
    status::set_condition(
        &mut step.status,
        condition::MIRRORING_BEHIND,
        true,
        "SpoolStalled",
        message.clone(),
        generation,
        &step.now,
    );
    if !was_behind {
        warn!(%message, "mirroring is behind");
        step.event(EventType::Warning, "MirroringBehind", "Mirror", message)
            .await;
    }
    true
}
