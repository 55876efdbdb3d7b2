//! The objects a migration owns besides its Jobs: the peer map ConfigMap the
//! proxies read and the PodDisruptionBudget of the roll.

use super::*;
use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The port drivers are told to use for a source node: with the iptables
/// redirect, the CQL port itself (it reaches the proxy once the pod has one
/// and Cassandra before, so a node not rolled yet stays reachable); with
/// `redirect: port`, the proxy's own port.
pub(super) fn advertised_port(spec: &crate::crd::CassandraMigrationSpec) -> i32 {
    match spec.proxy.redirect {
        crate::crd::TrafficRedirect::Iptables => spec.source.cql_port,
        crate::crd::TrafficRedirect::Port => spec.proxy.listen_port,
    }
}

/// Keeps the peer map ConfigMap current: source node address → its proxy.
pub(super) async fn write_peer_map(step: &Step<'_>, pods: &[Pod]) -> Result<()> {
    let port = advertised_port(&step.cm.spec);
    // Only pods that run a proxy: a node without one (not rolled yet, or
    // taken out at cut-over) keeps its own address and port in the peer
    // tables, where drivers then reach it directly.
    let peers: BTreeMap<String, String> = pods
        .iter()
        .filter(|p| sidecar::has_sidecar(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
        .map(|ip| {
            let proxy = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            (ip, proxy)
        })
        .collect();
    // The cut-over stage applied decides the mode and the shadow reads.
    let setting = cutover::proxy_setting(cutover::applied(Some(&step.status)), step.cm);
    // With `spec.schema: copy` the proxies follow the schema changes
    // clients make through them, and a keyspace gets the target's
    // replication (known once the schema step ran).
    let target_replication = step
        .status
        .schema
        .as_ref()
        .and_then(|s| s.target_replication.clone());
    let body = serde_json::to_string_pretty(&json!({
        "peers": peers,
        "mode": setting.mode,
        "shadowReadPercent": setting.shadow_read_percent,
        "mirrorDdl": step.cm.spec.schema == SchemaMode::Copy,
        "targetReplication": target_replication,
    }))?;
    let cm = ConfigMap {
        metadata: owned_meta(step, labels::peer_map_name(&step.name)),
        data: Some(BTreeMap::from([(labels::PEER_MAP_KEY.to_owned(), body)])),
        ..ConfigMap::default()
    };
    let api: Api<ConfigMap> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    api.patch(
        &labels::peer_map_name(&step.name),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

/// The metadata of an object the migration owns: its name, the migration's
/// label, and the migration as its controlling owner (so the garbage
/// collector removes it with the migration, whatever the finalizer did).
fn owned_meta(step: &Step<'_>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: Some(BTreeMap::from([(
            labels::MIGRATION_LABEL.to_owned(),
            step.name.clone(),
        )])),
        owner_references: step.cm.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Makes sure a PodDisruptionBudget guards the source pods: the roll evicts
/// through the Eviction API, so a budget is what makes "one at a time" hold
/// even against other actors. Ferry makes one (maxUnavailable 1) only when
/// none selects the pods already, and deletes its own once another does
/// (cass-operator's, or one the user adds during the migration): the
/// Eviction API refuses every pod two budgets select, so with both in place
/// no pod could ever be rolled.
///
/// With several StatefulSets (one per rack) it selects the labels all their
/// pods share, so the budget spans racks: two racks down at once is what
/// would break quorum.
pub(super) async fn ensure_pdb(step: &Step<'_>, found: &source::Source) -> Result<()> {
    let Some(selector) = found.common_pod_labels() else {
        return Ok(());
    };
    let api: Api<PodDisruptionBudget> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    let name = match found.statefulsets.as_slice() {
        [one] => format!("{}-ferry", one.name_any()),
        _ => format!("{}-source-ferry", step.name),
    };
    let existing = api.list(&ListParams::default()).await?;
    let covered = existing
        .items
        .iter()
        .any(|pdb| gives_way_to(&name, &selector, pdb));
    if covered {
        return delete_if_present(&api, &name, &DeleteParams::default()).await;
    }
    let pdb = PodDisruptionBudget {
        metadata: owned_meta(step, name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&pdb),
    )
    .await?;
    Ok(())
}

/// Whether Ferry's budget `name` (selecting `selector`) gives way to
/// `other`: only to one that surely selects every pod it does (labels
/// alone, a subset of `selector`; one with expressions might not, and two
/// budgets on a pod stall the roll where none leaves it unguarded). Between
/// two of Ferry's own with the same selector (two migrations of one
/// cluster), to the name that sorts first, so both never give way; a wider
/// one of Ferry's always wins, as the narrower one never covers it.
pub(super) fn gives_way_to(
    name: &str,
    selector: &BTreeMap<String, String>,
    other: &PodDisruptionBudget,
) -> bool {
    let Some(other_selector) = other.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if other.name_any() == name
        || other_selector
            .match_expressions
            .as_ref()
            .is_some_and(|e| !e.is_empty())
    {
        return false;
    }
    let Some(theirs) = other_selector
        .match_labels
        .as_ref()
        .filter(|m| !m.is_empty())
    else {
        return false;
    };
    let covers = theirs.iter().all(|(k, v)| selector.get(k) == Some(v));
    let ferrys = other.labels().contains_key(labels::MIGRATION_LABEL);
    covers && (!ferrys || theirs != selector || other.name_any().as_str() < name)
}

/// Deletes an object, treating "already gone" as done.
pub(super) async fn delete_if_present<K>(api: &Api<K>, name: &str, dp: &DeleteParams) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(
        name: &str,
        ferrys: bool,
        labels: &[(&str, &str)],
        expressions: bool,
    ) -> PodDisruptionBudget {
        let mut pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"maxUnavailable": 1, "selector": {
                "matchLabels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            }},
        }))
        .expect("budget");
        if ferrys {
            pdb.labels_mut()
                .insert(labels::MIGRATION_LABEL.to_owned(), "m".to_owned());
        }
        if expressions {
            if let Some(s) = pdb.spec.as_mut().and_then(|s| s.selector.as_mut()) {
                s.match_expressions = Some(vec![serde_json::from_value(
                    json!({"key": "rack", "operator": "In", "values": ["r1"]}),
                )
                .expect("expression")]);
            }
        }
        pdb
    }

    /// Two budgets on a pod make the Eviction API refuse it (a 500), so
    /// Ferry's gives way to one that surely covers its pods, and two of
    /// Ferry's never both give way nor both stay on the same pods.
    #[test]
    fn ferrys_budget_gives_way_only_to_one_that_surely_covers_its_pods() {
        let cluster: BTreeMap<String, String> = [("cluster", "c"), ("rack", "r1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ours = "dc1-r1-ferry";
        // The user's (or cass-operator's) budget, wider or the same.
        assert!(gives_way_to(
            ours,
            &cluster,
            &budget("user", false, &[("cluster", "c")], false)
        ));
        assert!(gives_way_to(
            ours,
            &cluster,
            &budget("user", false, &[("cluster", "c"), ("rack", "r1")], false)
        ));
        // Not one that selects other pods, or might not select all of ours.
        assert!(!gives_way_to(
            ours,
            &cluster,
            &budget("user", false, &[("cluster", "d")], false)
        ));
        assert!(!gives_way_to(
            ours,
            &cluster,
            &budget("user", false, &[("cluster", "c")], true)
        ));
        assert!(!gives_way_to(
            ours,
            &cluster,
            &budget("user", false, &[], false)
        ));
        // Not itself.
        assert!(!gives_way_to(
            ours,
            &cluster,
            &budget(ours, true, &[("cluster", "c")], false)
        ));
        // Another migration's, same selector: the first name wins, one way only.
        let same = |n: &str| budget(n, true, &[("cluster", "c"), ("rack", "r1")], false);
        assert!(gives_way_to("b-ferry", &cluster, &same("a-ferry")));
        assert!(!gives_way_to("a-ferry", &cluster, &same("b-ferry")));
        // Another migration's, wider (all racks), whatever the names: the
        // narrower one gives way, and the wider one never sees itself covered.
        let wide = budget("z-source-ferry", true, &[("cluster", "c")], false);
        assert!(gives_way_to(ours, &cluster, &wide));
        let all_racks: BTreeMap<String, String> = [("cluster", "c")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let narrow = budget(ours, true, &[("cluster", "c"), ("rack", "r1")], false);
        assert!(!gives_way_to("z-source-ferry", &all_racks, &narrow));
    }
}
