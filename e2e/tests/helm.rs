//! The chart: `helm lint`, `helm template` with several value sets, its
//! values schema refusing bad values, and the generated files that must stay
//! in step with it (manifests/install.yaml, the README's values table).

use std::process::Command;

use ferry_e2e::testbed;
use serde::Deserialize;

fn helm(args: &[&str]) -> (bool, String) {
    let helm = testbed::cache_dir().join("bin/helm");
    if !helm.exists() {
        let status = Command::new("bash")
            .arg(testbed::repo_root().join("e2e/testbed/build-tools.sh"))
            .arg("helm")
            .status()
            .expect("build helm");
        assert!(status.success(), "building helm failed");
    }
    let out = Command::new(&helm)
        .args(args)
        .current_dir(testbed::repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn template(sets: &[&str]) -> String {
    let mut args = vec![
        "template",
        "ferry",
        "charts/ferry",
        "--namespace",
        "ferry-system",
        "--include-crds",
    ];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    let (ok, out) = helm(&args);
    assert!(ok, "helm template {sets:?} failed:\n{out}");
    out
}

#[test]
fn chart_lints_clean() {
    let (ok, out) = helm(&["lint", "--strict", "charts/ferry"]);
    assert!(ok, "helm lint failed:\n{out}");
    let (ok, out) = helm(&["lint", "--strict", "charts/ferry", "--set", "replicaCount=2,certManager.enabled=true,metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.podMonitor.enabled=true,dashboard.enabled=true"]);
    assert!(ok, "helm lint with every option failed:\n{out}");
}

#[test]
fn default_render_has_everything_the_operator_needs() {
    let out = template(&[]);
    for kind in [
        "kind: Deployment",
        "kind: ClusterRole",
        "kind: Role",
        "kind: ServiceAccount",
        "kind: CustomResourceDefinition",
        "kind: MutatingWebhookConfiguration",
        "kind: PodDisruptionBudget",
        "kind: Service",
    ] {
        assert!(out.contains(kind), "rendered chart lacks `{kind}`");
    }
    for absent in [
        "kind: ServiceMonitor",
        "kind: Certificate",
        "grafana_dashboard",
    ] {
        assert!(
            !out.contains(absent),
            "`{absent}` rendered though not enabled"
        );
    }
    // Restricted pod security.
    for needle in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "type: RuntimeDefault",
        "failurePolicy: Ignore",
    ] {
        assert!(out.contains(needle), "rendered chart lacks `{needle}`");
    }
    assert!(
        out.contains("image: \"ghcr.io/ferry-dev/ferry-operator:0.1.0\""),
        "default image"
    );
}

#[test]
fn values_reach_the_manifests() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let out = template(&[
        "image.tag=v9.9.9",
        "replicaCount=2",
        &format!("sidecarImage.digest={digest}"),
        "sidecarImage.registry=registry.example.com",
        "imagePullSecrets[0]=regcred",
        "nodeSelector.pool=system",
    ]);
    assert!(
        out.contains("ghcr.io/ferry-dev/ferry-operator:v9.9.9"),
        "image.tag not applied"
    );
    assert!(out.contains("replicas: 2"), "replicaCount not applied");
    assert!(
        out.contains("minAvailable: 1"),
        "2 replicas get a minAvailable budget"
    );
    assert!(
        out.contains(&format!(
            "registry.example.com/ferry-dev/ferry-sidecar@{digest}"
        )),
        "sidecar digest not applied"
    );
    assert!(out.contains("- name: regcred"), "pull secret not applied");
    assert!(out.contains("pool: system"), "nodeSelector not applied");

    let out = template(&[
        "certManager.enabled=true",
        "metrics.serviceMonitor.enabled=true",
        "dashboard.enabled=true",
    ]);
    for needle in [
        "kind: Certificate",
        "kind: Issuer",
        "cert-manager.io/inject-ca-from",
        "FERRY_WEBHOOK_CERT_DIR",
        "kind: ServiceMonitor",
        "grafana_dashboard",
    ] {
        assert!(out.contains(needle), "optional feature lacks `{needle}`");
    }
    // A CA chain (self-signed → CA certificate → CA issuer) signs the
    // webhook's certificate, so its caBundle survives renewals.
    for needle in [
        "selfSigned: {}",
        "isCA: true",
        "secretName: ferry-ca",
        "kind: Issuer\nmetadata:\n  name: ferry-ca",
        "issuerRef:\n    name: ferry-ca\n    kind: Issuer",
    ] {
        assert!(
            out.contains(needle),
            "the cert-manager chain lacks `{needle}`:\n{out}"
        );
    }
}

#[test]
fn schema_refuses_bad_values() {
    for (set, wanted) in [
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("replicaCount=-1", "replicaCount"),
        ("image.pullPolicy=Maybe", "pullPolicy"),
        ("image.digest=notadigest", "digest"),
        ("metrics.port=70000", "port"),
        ("noSuchValue=1", "noSuchValue"),
    ] {
        let (ok, out) = helm(&["template", "ferry", "charts/ferry", "--set", set]);
        assert!(!ok, "`{set}` was accepted");
        assert!(
            out.contains(wanted),
            "`{set}` refused without naming `{wanted}`:\n{out}"
        );
    }
}

#[test]
fn generated_files_are_fresh() {
    let root = testbed::repo_root();
    let out = Command::new("bash")
        .arg(root.join("hack/render-install.sh"))
        .arg("--stdout")
        .output()
        .expect("render install.yaml");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read(root.join("manifests/install.yaml")).expect("manifests/install.yaml");
    assert!(
        committed == out.stdout,
        "manifests/install.yaml is stale: run `make manifests`"
    );
    let status = Command::new("python3")
        .arg(root.join("charts/ferry/hack/values-table.py"))
        .arg("--check")
        .status()
        .expect("values-table.py");
    assert!(
        status.success(),
        "charts/ferry/README.md is stale: run `make chart-docs`"
    );
}

/// Issue 14 §4: `kubectl apply -f manifests/install.yaml` from a context
/// whose namespace is not `ferry-system` put the Deployment, ServiceAccount,
/// Services and budget in the caller's namespace while the bindings and the
/// webhook pointed at `ferry-system`. Every namespaced object of the
/// install, with every option on, must name its namespace.
#[test]
fn every_namespaced_object_names_its_namespace() {
    const CLUSTER_SCOPED: &[&str] = &[
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    ];
    let root = testbed::repo_root();
    let install =
        std::fs::read_to_string(root.join("manifests/install.yaml")).expect("install.yaml");
    let everything = template(&[
        "replicaCount=2,certManager.enabled=true,metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,metrics.prometheusRule.enabled=true,dashboard.enabled=true,podDisruptionBudget.enabled=true",
    ]);
    for (what, text) in [("install.yaml", install), ("every option", everything)] {
        let mut namespaced = 0;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).expect("YAML");
            let Some(kind) = value.get("kind").and_then(|k| k.as_str()) else {
                continue;
            };
            if CLUSTER_SCOPED.contains(&kind) {
                continue;
            }
            namespaced += 1;
            let name = value["metadata"]["name"].as_str().unwrap_or("?");
            assert_eq!(
                value["metadata"]["namespace"].as_str(),
                Some("ferry-system"),
                "{what}: {kind} {name} has no metadata.namespace: it lands in the caller's namespace"
            );
        }
        assert!(
            namespaced >= 4,
            "{what}: only {namespaced} namespaced objects"
        );
    }
}

/// Issue 14 §4: every metric the chart's Grafana dashboard and its
/// PrometheusRule query is one some Ferry endpoint serves: the proxy's
/// admin port, the operator's metrics port, or the Jobs' metrics port. A
/// renamed metric would leave a panel or an alert silently empty.
#[test]
fn every_metric_the_dashboard_and_alerts_query_is_served() {
    let root = testbed::repo_root();
    let mut queried = std::collections::BTreeSet::new();
    for file in [
        "charts/ferry/dashboards/ferry.json",
        "charts/ferry/templates/prometheusrule.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("read");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("ferry_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            // A histogram's series are its name with these suffixes.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name)
                .to_owned();
            queried.insert((file, base));
        }
    }
    assert!(
        queried.len() >= 10,
        "the dashboard queries Ferry's metrics: {queried:?}"
    );
    let proxy = ferry_sidecar::proxy::metrics::Metrics::new().expect("proxy metrics");
    let operator = ferry_operator::metrics::Metrics::new().expect("operator metrics");
    operator.set_phase("ns", "m", ferry_operator::crd::Phase::Ready);
    let served = [
        proxy.render(),
        operator.render(),
        ferry_sidecar::bulk::progress::metrics_text(&ferry_sidecar::bulk::progress::Stats::new(
            "backfill",
        )),
        ferry_sidecar::bulk::progress::metrics_text(&ferry_sidecar::bulk::progress::Stats::new(
            "validate",
        )),
    ]
    .join("\n");
    let names: std::collections::BTreeSet<&str> = served
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let missing: Vec<String> = queried
        .iter()
        .filter(|(_, name)| !names.contains(name.as_str()))
        .map(|(file, name)| format!("{name} (in {file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but served by no Ferry endpoint: {missing:?}\nserved: {names:?}"
    );
}

/// The rendered chart's objects, parsed.
fn documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("YAML"))
        .filter(|v| v.get("kind").is_some())
        .collect()
}

/// Every resource a role grants, with the role's kind and namespace.
fn granted(docs: &[serde_yaml::Value]) -> Vec<(String, Option<String>, String, Vec<String>)> {
    let mut out = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind != "ClusterRole" && kind != "Role" {
            continue;
        }
        let ns = doc["metadata"]["namespace"].as_str().map(str::to_owned);
        for rule in doc["rules"].as_sequence().into_iter().flatten() {
            let verbs: Vec<String> = rule["verbs"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            for resource in rule["resources"].as_sequence().into_iter().flatten() {
                let resource = resource.as_str().unwrap_or_default().to_owned();
                out.push((kind.to_owned(), ns.clone(), resource, verbs.clone()));
            }
        }
    }
    out
}

/// The webhook's namespaceSelector, as YAML text.
fn webhook_namespace_selector(docs: &[serde_yaml::Value]) -> String {
    let webhook = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("MutatingWebhookConfiguration"))
        .expect("webhook");
    serde_yaml::to_string(&webhook["webhooks"][0]["namespaceSelector"]).expect("selector")
}

/// Issue 14 §4, RBAC least privilege: the operator never patches a
/// namespace (the webhook finds Cassandra pods by an object selector, with
/// no label the operator must set), and with `watchNamespace` every
/// namespaced permission, Secrets above all, is a Role in that namespace:
/// the ClusterRole keeps only what is cluster-scoped.
#[test]
fn rbac_is_least_privilege_and_namespaced_when_one_namespace_is_watched() {
    let everywhere = documents(&template(&[]));
    for (kind, _, resource, verbs) in granted(&everywhere) {
        assert_ne!(
            resource, "namespaces",
            "{kind} grants {verbs:?} on namespaces: injection must not need a namespace label"
        );
    }
    let selector = webhook_namespace_selector(&everywhere);
    assert!(
        !selector.contains("ferry.dev/injection"),
        "the webhook waits for a namespace label: {selector}"
    );
    assert!(
        selector.contains("kube-system"),
        "the webhook must never see kube-system's pods: {selector}"
    );

    let one = documents(&template(&["watchNamespace=apps"]));
    let grants = granted(&one);
    for (kind, ns, resource, verbs) in &grants {
        if kind == "ClusterRole" {
            assert!(
                ["mutatingwebhookconfigurations"].contains(&resource.as_str()),
                "with watchNamespace the ClusterRole still grants {verbs:?} on {resource}"
            );
        }
        if resource == "secrets" {
            assert!(
                ns.as_deref() == Some("apps") || ns.as_deref() == Some("ferry-system"),
                "Secrets granted outside the watched and the operator's namespace: {ns:?}"
            );
        }
    }
    for needed in [
        "cassandramigrations",
        "statefulsets",
        "pods",
        "pods/eviction",
        "secrets",
        "jobs",
        "configmaps",
        "poddisruptionbudgets",
        "events",
    ] {
        assert!(
            grants.iter().any(|(kind, ns, r, _)| kind == "Role"
                && ns.as_deref() == Some("apps")
                && r == needed),
            "with watchNamespace=apps no Role in apps grants {needed}"
        );
    }
    let bound = one.iter().any(|d| {
        d["kind"].as_str() == Some("RoleBinding")
            && d["metadata"]["namespace"].as_str() == Some("apps")
            && d["subjects"][0]["namespace"].as_str() == Some("ferry-system")
    });
    assert!(
        bound,
        "no RoleBinding in apps for the operator's ServiceAccount"
    );
    let selector = webhook_namespace_selector(&one);
    assert!(
        selector.contains("apps") && selector.contains("In"),
        "with watchNamespace the webhook sees only that namespace: {selector}"
    );
}
