//! The CQL gates of the roll: the ring whole before each eviction, and a
//! probe row written through the proxies and read back from the target before
//! Mirroring.

use super::*;

/// The IPs of the pods that have one.
pub(super) fn pod_ips(pods: &[Pod]) -> Vec<std::net::IpAddr> {
    pods.iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
        .collect()
}

/// Whether the roll may evict a pod now, as the source nodes see their ring:
/// `None` when every node sees every other one Up/Normal (or the check is
/// off, or the nodes are too old to tell), else why not.
pub(super) async fn ring_gate(
    ctx: &Context,
    ns: &str,
    cm: &CassandraMigration,
    pods: &[Pod],
) -> Option<String> {
    if !ctx.settings.ring_check {
        return None;
    }
    let ips = pod_ips(pods);
    if ips.len() < pods.len() {
        return Some("a source pod has no IP yet".to_owned());
    }
    let source = &cm.spec.source;
    let access = match cql::Access::from_secrets(
        &ctx.client,
        ns,
        source.credentials_secret.as_ref(),
        source.tls_secret.as_ref(),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return Some(format!("cannot log in to the source: {e}")),
    };
    let port = u16::try_from(source.cql_port).unwrap_or(9042);
    match cql::ring_health(&ips, port, &access).await {
        Ok(RingHealth::Healthy) => None,
        Ok(RingHealth::Unsupported(why)) => {
            info!(%why, "no gossip view over CQL; the roll relies on readiness and the settle time");
            None
        }
        Ok(RingHealth::Unhealthy(problems)) => Some(format!(
            "the source nodes do not all see each other Up/Normal: {}",
            problems.join("; ")
        )),
        Err(e) => Some(format!(
            "cannot ask the source nodes how they see the ring: {e}"
        )),
    }
}

/// Condition type of the probe write.
const PROBE_WRITE: &str = "ProbeWrite";
/// How long one probe waits for its row on the target.
const PROBE_WAIT: Duration = Duration::from_secs(20);

/// The last gate before `Mirroring`: a row written through a proxy is read
/// back from the target. Returns whether it was; sets the `ProbeWrite`
/// condition either way, and fails the migration when the probe has not
/// passed for longer than the roll timeout.
pub(super) async fn probe_gate(step: &mut Step<'_>, pods: &[Pod]) -> bool {
    if !step.ctx.settings.probe_write {
        return true;
    }
    let generation = step.cm.metadata.generation;
    let spec = &step.cm.spec;
    let port = spec.proxy.listen_port;
    let proxies: Vec<String> = pod_ips(pods)
        .into_iter()
        .map(|ip| std::net::SocketAddr::new(ip, port as u16).to_string())
        .collect();
    // Clients of the proxies speak TLS only when the proxies serve it
    // (`proxy.tlsSecret`), whatever the source itself speaks. The proxies
    // serve the source nodes' certificate, so the source's CA verifies it
    // (the proxy Secret's own `ca.crt` without one); pod IPs are not names
    // a certificate carries.
    let proxy_tls = spec.proxy.tls_secret.as_ref().map(|proxy| TlsSecretRef {
        name: spec
            .source
            .tls_secret
            .as_ref()
            .map_or_else(|| proxy.name.clone(), |s| s.name.clone()),
        insecure_skip_hostname_verification: true,
    });
    let accesses = futures::future::try_join(
        cql::Access::from_secrets(
            &step.ctx.client,
            &step.ns,
            spec.source.credentials_secret.as_ref(),
            proxy_tls.as_ref(),
        ),
        cql::Access::from_secrets(
            &step.ctx.client,
            &step.ns,
            spec.target.credentials_secret.as_ref(),
            spec.target.tls_secret.as_ref(),
        ),
    )
    .await;
    let probe_id = format!("{}/{}/{}", step.ns, step.name, step.now.0.as_millisecond());
    let outcome = match accesses {
        Err(e) => Err(e.to_string()),
        Ok((source, target)) => cql::probe_write(
            &proxies,
            &source,
            &cql::contact_points_in(&step.ns, &spec.target.contact_points),
            &target,
            &step.ctx.settings.probe_keyspace,
            &probe_id,
            PROBE_WAIT,
        )
        .await
        .map_err(|e| e.to_string()),
    };
    let (passed, reason, message) = match outcome {
        Ok(Some(took)) => (
            true,
            "SeenOnTarget",
            format!(
                "a row written through the proxies was on the target after {} ms",
                took.as_millis()
            ),
        ),
        Ok(None) => (
            false,
            "NotSeenOnTarget",
            format!(
                "a row written through the proxies was not on the target after {}s: do the proxies reach the target?",
                PROBE_WAIT.as_secs()
            ),
        ),
        Err(e) => (false, "ProbeFailed", format!("the probe write failed: {e}")),
    };
    status::set_condition(
        &mut step.status,
        PROBE_WRITE,
        passed,
        reason,
        message.clone(),
        generation,
        &step.now,
    );
    if passed {
        info!(%message, "probe write seen on the target");
        step.event(EventType::Normal, "ProbeWriteSeen", "Probe", message)
            .await;
        return true;
    }
    warn!(%message, "probe write not seen on the target");
    let failing_for = step
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == PROBE_WRITE)
        .map(|c| {
            step.now
                .0
                .duration_since(c.last_transition_time.0)
                .as_secs()
        })
        .unwrap_or(0);
    if failing_for > step.ctx.settings.roll_timeout.as_secs() as i64 {
        step.fail(reason, format!("{message} (for {failing_for}s)"))
            .await;
    }
    false
}
