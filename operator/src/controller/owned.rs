//! The objects a migration owns besides its Jobs: the peer map ConfigMap the
//! proxies read and the PodDisruptionBudget of the roll.

use super::*;
use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::SelectorExt;

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
/// no other budget selects any source pod, and deletes its own once one
/// does (cass-operator's, one per data center; one the user adds during the
/// migration): the Eviction API refuses any pod two budgets select (a 500),
/// so with both in place those pods could never be rolled.
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
    let pods = source_pod_labels(found);
    let another = existing
        .items
        .iter()
        .any(|pdb| gives_way_to(&name, &selector, pdb, &pods));
    if another {
        // Only when it is there: this runs at every look.
        if existing.items.iter().any(|pdb| pdb.name_any() == name) {
            delete_if_present(&api, &name, &DeleteParams::default()).await?;
        }
        return Ok(());
    }
    // A pod missing (being rolled) may be the one another budget selects
    // by a label only a live pod has: no budget is made until all are
    // back, so Ferry's never comes and goes with each eviction.
    if found.pods.len() < found.replicas() {
        return Ok(());
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

/// The label sets a budget may select the source's pods by: each live
/// pod's, and each StatefulSet's pod template's (a pod being rolled is
/// absent for a moment; a budget that selected only it must still count).
fn source_pod_labels(found: &source::Source) -> Vec<&BTreeMap<String, String>> {
    let templates = found
        .statefulsets
        .iter()
        .filter_map(|s| s.spec.as_ref()?.template.metadata.as_ref()?.labels.as_ref());
    found
        .pods
        .iter()
        .map(|p| p.labels())
        .chain(templates)
        .collect()
}

/// Whether Ferry's budget `name` (selecting `ours`) gives way to `other`:
/// two budgets on a pod and the Eviction API refuses it for good (a 500).
/// It gives way to any budget Ferry did not make that selects one of the
/// source's pods (`pods`: their label sets; the selector read as the
/// disruption controller reads it, expressions included). Between two of
/// Ferry's own (two migrations of one cluster) that meet on a pod, the wider
/// one stays (its labels a subset of the other's), and where neither is
/// wider, the name that sorts first: the two never both give way.
pub(super) fn gives_way_to(
    name: &str,
    ours: &BTreeMap<String, String>,
    other: &PodDisruptionBudget,
    pods: &[&BTreeMap<String, String>],
) -> bool {
    let other_name = other.name_any();
    if other_name == name {
        return false;
    }
    // policy/v1: no selector selects nothing; an empty one, every pod.
    let Some(label_selector) = other.spec.as_ref().and_then(|s| s.selector.clone()) else {
        return false;
    };
    let theirs = label_selector.match_labels.clone().unwrap_or_default();
    let Ok(selector) = kube::core::Selector::try_from(label_selector) else {
        return false;
    };
    if !pods.iter().any(|labels| selector.matches(labels)) {
        return false;
    }
    if !other.labels().contains_key(labels::MIGRATION_LABEL) {
        return true;
    }
    let within = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        a.iter().all(|(k, v)| b.get(k) == Some(v))
    };
    let (theirs_wider, ours_wider) = (within(&theirs, ours), within(ours, &theirs));
    if theirs_wider != ours_wider {
        // One is strictly wider: it stays.
        theirs_wider
    } else {
        // The same labels, or neither wider: the first name stays.
        other_name.as_str() < name
    }
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

    fn budget(name: &str, ferrys: bool, selector: serde_json::Value) -> PodDisruptionBudget {
        let mut pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"maxUnavailable": 1, "selector": selector},
        }))
        .expect("budget");
        if ferrys {
            pdb.labels_mut()
                .insert(labels::MIGRATION_LABEL.to_owned(), "m".to_owned());
        }
        pdb
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(name: &str, dc: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {
            "cluster": "c", "dc": dc, "statefulset.kubernetes.io/pod-name": name}}}))
        .expect("pod")
    }

    /// Two budgets on a pod make the Eviction API refuse it (a 500): Ferry's
    /// gives way to any budget that selects one of the source's pods, wider
    /// or narrower (cass-operator's, one per data center), expressions
    /// included, and two of Ferry's never both give way.
    #[test]
    fn ferrys_budget_gives_way_to_any_budget_on_a_source_pod() {
        let pods = [pod("a-0", "dc1"), pod("b-0", "dc1"), pod("c-0", "dc2")];
        let pods: Vec<&BTreeMap<String, String>> = pods.iter().map(|p| p.labels()).collect();
        let ours = "m-source-ferry";
        let cluster = labels(&[("cluster", "c")]);
        let user = |selector| budget("user", false, selector);
        // cass-operator's per data center: narrower than Ferry's, still on our pods.
        assert!(gives_way_to(
            ours,
            &cluster,
            &user(json!({"matchLabels": {"cluster": "c", "dc": "dc2"}})),
            &pods
        ));
        // Wider, or everything.
        assert!(gives_way_to(
            ours,
            &cluster,
            &user(json!({"matchLabels": {"cluster": "c"}})),
            &pods
        ));
        assert!(gives_way_to(ours, &cluster, &user(json!({})), &pods));
        // One pod, by expression.
        let one = json!({"matchExpressions": [{"key": "statefulset.kubernetes.io/pod-name", "operator": "In", "values": ["b-0"]}]});
        assert!(gives_way_to(ours, &cluster, &user(one), &pods));
        // Not one that selects none of them, nor a budget without a selector.
        assert!(!gives_way_to(
            ours,
            &cluster,
            &user(json!({"matchLabels": {"cluster": "d"}})),
            &pods
        ));
        let mut none = user(json!({}));
        if let Some(spec) = none.spec.as_mut() {
            spec.selector = None;
        }
        assert!(!gives_way_to(ours, &cluster, &none, &pods));
        // Not itself.
        assert!(!gives_way_to(
            ours,
            &cluster,
            &budget(ours, true, json!({"matchLabels": {"cluster": "c"}})),
            &pods
        ));
        // Another migration's: the wider budget stays whatever the names,
        // the same selector goes by name, one way only.
        let dc1 = labels(&[("cluster", "c"), ("dc", "dc1")]);
        let wide = budget(
            "z-source-ferry",
            true,
            json!({"matchLabels": {"cluster": "c"}}),
        );
        let narrow = budget(
            "a-0-ferry",
            true,
            json!({"matchLabels": {"cluster": "c", "dc": "dc1"}}),
        );
        assert!(gives_way_to("a-0-ferry", &dc1, &wide, &pods));
        assert!(!gives_way_to("z-source-ferry", &cluster, &narrow, &pods));
        let twin = |n: &str| budget(n, true, json!({"matchLabels": {"cluster": "c"}}));
        assert!(gives_way_to("b-ferry", &cluster, &twin("a-ferry"), &pods));
        assert!(!gives_way_to("a-ferry", &cluster, &twin("b-ferry"), &pods));
        // NotIn selects a pod without the key.
        let not_in =
            json!({"matchExpressions": [{"key": "rack", "operator": "NotIn", "values": ["r9"]}]});
        assert!(gives_way_to(ours, &cluster, &user(not_in), &pods));
    }
}
