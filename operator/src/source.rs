//! What the source cluster is in Kubernetes: its StatefulSets (one, a list,
//! or those carrying the selector's labels, as cass-operator and K8ssandra
//! lay a cluster out: one StatefulSet per rack, per data center) and their
//! pods. Every other step (the roll, the peer map, the Jobs, the clean-up,
//! the webhook) works on this one view, so "which pods are the source" is
//! decided here only.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::crd::SourceCluster;

/// The source as found in the namespace.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its StatefulSets, by name.
    pub statefulsets: Vec<StatefulSet>,
    /// Their pods, by name.
    pub pods: Vec<Pod>,
}

impl Source {
    /// The pods the StatefulSets want, in all.
    pub fn replicas(&self) -> usize {
        self.statefulsets
            .iter()
            .map(|s| s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as usize)
            .sum()
    }

    pub fn names(&self) -> Vec<String> {
        self.statefulsets.iter().map(|s| s.name_any()).collect()
    }

    /// The first StatefulSet's headless Service (the Jobs' contact point
    /// when pods have no IP yet).
    pub fn service(&self) -> Option<String> {
        self.statefulsets
            .iter()
            .find_map(|s| s.spec.as_ref()?.service_name.clone())
            .filter(|s| !s.is_empty())
    }

    /// Labels every source pod carries: the StatefulSets' selectors' common
    /// part (for cass-operator, the cluster's or the data center's labels).
    /// `None` when they share none: no selector then covers exactly them.
    pub fn common_pod_labels(&self) -> Option<BTreeMap<String, String>> {
        let mut selectors = self.statefulsets.iter().map(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default()
        });
        let mut common = selectors.next()?;
        for other in selectors {
            common.retain(|k, v| other.get(k) == Some(v));
        }
        (!common.is_empty()).then_some(common)
    }
}

/// Whether the StatefulSet named `name`, with `labels`, is part of the
/// source `spec` describes.
pub fn covers(spec: &SourceCluster, name: &str, labels: &BTreeMap<String, String>) -> bool {
    if !spec.stateful_set.is_empty() {
        return spec.stateful_set == name;
    }
    if !spec.stateful_sets.is_empty() {
        return spec.stateful_sets.iter().any(|s| s == name);
    }
    spec.selector
        .as_ref()
        .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Whether the source is given by labels (a StatefulSet's name alone does
/// not say whether it belongs).
pub fn by_labels(spec: &SourceCluster) -> bool {
    spec.stateful_set.is_empty() && spec.stateful_sets.is_empty()
}

/// How the spec names the source, for messages.
pub fn describe(spec: &SourceCluster) -> String {
    if !spec.stateful_set.is_empty() {
        return format!("StatefulSet {}", spec.stateful_set);
    }
    if !spec.stateful_sets.is_empty() {
        return format!("StatefulSets {}", spec.stateful_sets.join(", "));
    }
    let labels: Vec<String> = spec
        .selector
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("StatefulSets labelled {}", labels.join(","))
}

/// Why the source cannot be used as found.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Reads the source: every StatefulSet `spec` names or selects, and their
/// pods. A named StatefulSet that is missing is `NotFound` (a half source
/// would be rolled as if it were whole).
pub async fn fetch(client: &Client, ns: &str, spec: &SourceCluster) -> Result<Source, SourceError> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let mut statefulsets = Vec::new();
    let names: Vec<&String> = if spec.stateful_set.is_empty() {
        spec.stateful_sets.iter().collect()
    } else {
        vec![&spec.stateful_set]
    };
    if names.is_empty() {
        let selector = spec
            .selector
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        statefulsets = api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
    } else {
        let mut missing = Vec::new();
        for name in names {
            match api.get_opt(name).await? {
                Some(sts) => statefulsets.push(sts),
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(SourceError::NotFound(format!(
                "StatefulSet {} not found in namespace {ns}",
                missing.join(", ")
            )));
        }
    }
    if statefulsets.is_empty() {
        return Err(SourceError::NotFound(format!(
            "no {} in namespace {ns}",
            describe(spec)
        )));
    }
    statefulsets.sort_by_key(|s| s.name_any());
    let mut pods = Vec::new();
    for sts in &statefulsets {
        pods.extend(statefulset_pods(client, ns, sts).await?);
    }
    pods.sort_by_key(|p| p.name_any());
    Ok(Source { statefulsets, pods })
}

/// One StatefulSet's pods (by its selector, and owned by it).
async fn statefulset_pods(
    client: &Client,
    ns: &str,
    sts: &StatefulSet,
) -> Result<Vec<Pod>, kube::Error> {
    let selector = sts
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let sts_name = sts.name_any();
    let pods = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.kind == "StatefulSet" && o.name == sts_name)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> SourceCluster {
        serde_json::from_value(json).expect("source spec")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_statefulset_belongs_by_name_or_by_every_selector_label() {
        let one = spec(serde_json::json!({"statefulSet": "cassandra"}));
        assert!(covers(&one, "cassandra", &BTreeMap::new()));
        assert!(!covers(&one, "other", &BTreeMap::new()));
        let list = spec(serde_json::json!({"statefulSets": ["a-r1-sts", "a-r2-sts"]}));
        assert!(covers(&list, "a-r2-sts", &BTreeMap::new()));
        assert!(!covers(&list, "a-r3-sts", &BTreeMap::new()));
        let sel = spec(serde_json::json!({"selector": {"cassandra.datastax.com/cluster": "demo"}}));
        let rack = labels(&[
            ("cassandra.datastax.com/cluster", "demo"),
            ("cassandra.datastax.com/rack", "r1"),
        ]);
        assert!(covers(&sel, "anything", &rack));
        assert!(!covers(
            &sel,
            "anything",
            &labels(&[("cassandra.datastax.com/cluster", "other")])
        ));
        assert!(!covers(&sel, "anything", &BTreeMap::new()));
        assert!(by_labels(&sel) && !by_labels(&one) && !by_labels(&list));
        assert_eq!(
            describe(&sel),
            "StatefulSets labelled cassandra.datastax.com/cluster=demo"
        );
    }

    #[test]
    fn the_pods_common_labels_are_what_every_selector_shares() {
        let sts = |sel: &[(&str, &str)]| -> StatefulSet {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x"},
                "spec": {"selector": {"matchLabels": labels(sel)}, "serviceName": "svc",
                         "template": {}, "replicas": 2},
            }))
            .expect("sts")
        };
        let source = Source {
            statefulsets: vec![
                sts(&[("cluster", "demo"), ("dc", "dc1"), ("rack", "r1")]),
                sts(&[("cluster", "demo"), ("dc", "dc1"), ("rack", "r2")]),
                sts(&[("cluster", "demo"), ("dc", "dc2"), ("rack", "r1")]),
            ],
            pods: Vec::new(),
        };
        assert_eq!(
            source.common_pod_labels(),
            Some(labels(&[("cluster", "demo")]))
        );
        assert_eq!(source.replicas(), 6);
        assert_eq!(source.service().as_deref(), Some("svc"));
        let apart = Source {
            statefulsets: vec![sts(&[("a", "1")]), sts(&[("b", "1")])],
            pods: Vec::new(),
        };
        assert_eq!(apart.common_pod_labels(), None);
    }
}
