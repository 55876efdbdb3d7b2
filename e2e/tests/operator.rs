//! The operator against the real API server and controller-manager of the
//! test bed: the webhook patches real pod creations, the controller rolls the
//! source StatefulSet one pod at a time, runs its Jobs and writes status.
//!
//! No kubelet runs on this bed, so the test plays the kubelet: it marks pods
//! Ready, and Job pods Succeeded (or Failed) with the termination message a
//! real bulk pod would leave. Everything else (StatefulSet and Job
//! controllers, evictions, admission, garbage collection) is the real thing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_e2e::kube_client::{self, TestNamespace};
use ferry_e2e::poll::{self, Look};
use ferry_e2e::testbed;
use ferry_operator::controller::{self, Context, Settings};
use ferry_operator::crd::{CassandraMigration, Phase, WriteMode};
use ferry_operator::labels;
use ferry_operator::metrics::Metrics;
use ferry_operator::sidecar::{self, InjectionSettings};
use ferry_operator::webhook::Webhook;
use ferry_operator::{certs, http};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

mod in_process_proxy;
use tokio::task::JoinHandle;

const STS: &str = "cassandra";
const REPLICAS: usize = 3;
/// A node label no node has: when the bed runs a real node, its scheduler
/// and kubelet must leave this test's pods to the test's fake kubelet.
const NO_NODE_LABEL: &str = "ferry.dev/test-no-node";

/// The in-process webhook, registered with the API server for one namespace.
struct WebhookGuard {
    client: Client,
    name: String,
    task: JoinHandle<()>,
}

impl Drop for WebhookGuard {
    fn drop(&mut self) {
        self.task.abort();
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let name = self.name.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            });
        }
    }
}

async fn start_webhook(client: &Client, ns: &str) -> WebhookGuard {
    let cert = certs::generate(&["127.0.0.1".to_owned()]).expect("certificate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let webhook = Arc::new(Webhook {
        client: client.clone(),
        settings: InjectionSettings {
            sidecar_image: "ferry.dev/ferry-sidecar:test".into(),
            redirect_image: "ferry.dev/ferry-redirect:test".into(),
            native_sidecar: true,
            probe_keyspace: None,
        },
    });
    let tls = certs::server_config(&cert).expect("tls");
    let task = tokio::spawn(http::serve(listener, Some(tls), webhook.handler()));
    let name = format!("ferry-test-{ns}");
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "sidecar.ferry.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate"),
                             "caBundle": k8s_openapi::ByteString(cert.ca_pem.as_bytes().to_vec())},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            // As the chart's: no label for the operator to set.
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "objectSelector": {"matchExpressions": [{"key": labels::STS_POD_NAME_LABEL, "operator": "Exists"}]},
            "failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5, "reinvocationPolicy": "IfNeeded",
        }],
    }))
    .expect("webhook config");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("register webhook");
    WebhookGuard {
        client: client.clone(),
        name,
        task,
    }
}

fn start_controller(ns: &str) -> JoinHandle<()> {
    start_controller_with(ns, |_| {})
}

/// Runs the controller in-process on `ns`, with the client the operator
/// builds for it (`controller::api_client`).
fn start_controller_with(ns: &str, adjust: impl FnOnce(&mut Settings)) -> JoinHandle<()> {
    let mut settings = Settings {
        sidecar_image: "ferry.dev/ferry-sidecar:test".into(),
        roll_timeout: Duration::from_secs(120),
        poll: Duration::from_millis(500),
        namespace: Some(ns.to_owned()),
        // These pods are played by the test and run no Cassandra: the CQL
        // checks are tested against real nodes in sidecar/tests/operator_checks.rs
        // and, wired into the controller, by the e2e migration.
        ring_check: false,
        probe_write: false,
        // No proxy runs in these pods either, unless a test starts real
        // ones on the addresses the fake kubelet gives (`ip_base`).
        proxy_checks: false,
        // Nor Cassandra, unless a test gives them the real source nodes'
        // addresses (`source_node_ips`).
        schema_step: false,
        ..Settings::default()
    };
    adjust(&mut settings);
    // The bed is up (the test's own `bed` brought it up): read where it is.
    let kubeconfig = testbed::read_env(&testbed::run_dir().join("testbed.env"))
        .expect("test bed")
        .kubeconfig;
    tokio::spawn(async move {
        let client = kube_client::controller_client(&kubeconfig)
            .await
            .expect("the controller's client");
        let ctx = Arc::new(Context::new(
            client,
            settings,
            Metrics::new().expect("metrics"),
            None,
        ));
        controller::run(ctx).await
    })
}

/// How the fake kubelet finishes Job pods.
#[derive(Default)]
struct KubeletScript {
    fail_backfill: AtomicBool,
    /// Source pods seen unavailable at once, at most.
    max_unavailable: AtomicUsize,
    /// What the pods looked like whenever more than one was unavailable.
    trace: std::sync::Mutex<Vec<String>>,
    /// When not 0: source pods started from now on get an IP of their
    /// own, [`pod_ip`] from this base, instead of 127.0.0.1. Each test
    /// takes its own base: the tests of this file run at once, and their
    /// in-process proxies listen on these addresses.
    ip_base: std::sync::atomic::AtomicU8,
    /// Source pods started from now on get the IPs of the bed's real source
    /// nodes (`cassandra-N` → 127.0.0.(11 + N)), so the operator's CQL
    /// steps reach a real cluster through them.
    source_node_ips: AtomicBool,
    /// Source pods by name → the IP the kubelet gives them, before any
    /// other rule (the cass-operator layout's pods are all ordinal 0).
    ip_of: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// StatefulSet pods the namespace should have (0: [`REPLICAS`]).
    expected_pods: AtomicUsize,
    /// Scheduled validation checks (`-check-N` Jobs) report differences.
    check_differences: AtomicBool,
    /// Source pods by name that, once (re)created, never become Ready: a
    /// node that does not come back.
    held_down: std::sync::Mutex<BTreeSet<String>>,
}

/// The IP the fake kubelet gives source pod `name` from `base`:
/// `cassandra-N` → 127.0.0.(base + N).
fn pod_ip(base: u8, name: &str) -> String {
    let ordinal: u8 = name
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    format!("127.0.0.{}", base + ordinal)
}

const BACKFILL_SUMMARY: &str = r#"{"mode":"backfill","rangesDone":4,"rangesTotal":4,"rowsCopied":1000,"bytesCopied":64000,"rowsPerSecond":500}"#;
const CHECK_DIFFERENCES_SUMMARY: &str = r#"{"mode":"validate","rangesDone":1,"rangesTotal":1,"rowsCompared":100,"missing":1,"extra":0,"mismatched":2,"inFlight":0,"repaired":0,"examples":{"mismatched":["shop.orders id=7"],"missing":["shop.orders id=9"]}}"#;
const VALIDATE_SUMMARY: &str = r#"{"mode":"validate","rangesDone":4,"rangesTotal":4,"rowsCompared":1000,"missing":0,"extra":0,"mismatched":0,"inFlight":2,"repaired":0,"examples":{}}"#;

/// Plays the kubelet for the namespace until aborted.
fn start_kubelet(client: &Client, ns: &str, script: Arc<KubeletScript>) -> JoinHandle<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    tokio::spawn(async move {
        let mut first_seen: std::collections::HashMap<String, Instant> = Default::default();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Ok(pods) = api.list(&ListParams::default()).await else {
                continue;
            };
            let mut ready_sts = 0;
            let mut seen_state = Vec::new();
            for pod in &pods.items {
                if pod.labels().contains_key(labels::STS_POD_NAME_LABEL) {
                    seen_state.push(format!(
                        "{}(ready={},deleting={},sidecar={})",
                        pod.name_any(),
                        sidecar::pod_ready(pod),
                        pod.metadata.deletion_timestamp.is_some(),
                        sidecar::has_sidecar(pod)
                    ));
                }
                let name = pod.name_any();
                let uid = pod.uid().unwrap_or_default();
                let seen = *first_seen.entry(uid).or_insert_with(Instant::now);
                let labels = pod.labels();
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                if labels.contains_key(labels::STS_POD_NAME_LABEL) {
                    if sidecar::pod_ready(pod) && pod.metadata.deletion_timestamp.is_none() {
                        ready_sts += 1;
                        continue;
                    }
                    // A node takes a moment to start: Ready after a second.
                    if seen.elapsed() < Duration::from_secs(1) {
                        continue;
                    }
                    if script.held_down.lock().is_ok_and(|h| h.contains(&name)) {
                        continue;
                    }
                    let spec = pod.spec.clone().unwrap_or_default();
                    let statuses = |cs: &[k8s_openapi::api::core::v1::Container]| {
                        cs.iter()
                            .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                                            "restartCount": 0, "started": true, "state": {"running": {}}}))
                            .collect::<Vec<_>>()
                    };
                    let init: Vec<_> = spec.init_containers.clone().unwrap_or_default();
                    let named = script.ip_of.lock().ok().and_then(|m| m.get(&name).cloned());
                    let ip = if let Some(ip) = named {
                        ip
                    } else if script.source_node_ips.load(Ordering::SeqCst) {
                        let n: u8 = name
                            .rsplit('-')
                            .next()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        format!("127.0.0.{}", 11 + n)
                    } else if script.ip_base.load(Ordering::SeqCst) != 0 {
                        pod_ip(script.ip_base.load(Ordering::SeqCst), &name)
                    } else {
                        "127.0.0.1".to_owned()
                    };
                    let status = json!({"status": {
                        "phase": "Running", "podIP": ip,
                        "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}],
                        "containerStatuses": statuses(&spec.containers),
                        "initContainerStatuses": statuses(&init),
                    }});
                    let _ = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await;
                } else if let Some(job) = labels.get("batch.kubernetes.io/job-name") {
                    if phase == "Succeeded"
                        || phase == "Failed"
                        || seen.elapsed() < Duration::from_millis(500)
                    {
                        continue;
                    }
                    let backfill = job.ends_with("-backfill");
                    let failing = backfill && script.fail_backfill.load(Ordering::SeqCst);
                    let differing =
                        job.contains("-check-") && script.check_differences.load(Ordering::SeqCst);
                    let (phase, code, message) = match (backfill, failing) {
                        (false, _) if differing => ("Succeeded", 0, CHECK_DIFFERENCES_SUMMARY),
                        (true, true) => (
                            "Failed",
                            2,
                            "error: target table shop.orders has a different schema",
                        ),
                        (true, false) => ("Succeeded", 0, BACKFILL_SUMMARY),
                        (false, _) => ("Succeeded", 0, VALIDATE_SUMMARY),
                    };
                    let container = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    let status = json!({"status": {
                        "phase": phase,
                        "conditions": [{"type": "Ready", "status": "False"}],
                        "containerStatuses": [{"name": container, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": code, "reason": if code == 0 {"Completed"} else {"Error"}, "message": message,
                                                     "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}}}],
                    }});
                    let _ = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await;
                }
            }
            let expected = match script.expected_pods.load(Ordering::SeqCst) {
                0 => REPLICAS,
                n => n,
            };
            let unavailable = expected.saturating_sub(ready_sts);
            if unavailable > 1 {
                if let Ok(mut t) = script.trace.lock() {
                    t.push(seen_state.join(" "));
                }
            }
            script
                .max_unavailable
                .fetch_max(unavailable, Ordering::SeqCst);
        }
    })
}

async fn create_statefulset(client: &Client, ns: &str) {
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": STS},
        "spec": {
            "replicas": REPLICAS, "serviceName": STS, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": STS}},
            "template": {"metadata": {"labels": {"app": STS}},
                         "spec": {"nodeSelector": {NO_NODE_LABEL: "true"},
                                  "containers": [{"name": "cassandra", "image": "cassandra:test"}]}},
        },
    }))
    .expect("sts");
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sts)
        .await
        .expect("create sts");
}

async fn source_pods(client: &Client, ns: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={STS}")))
        .await
        .expect("list pods")
        .items
}

/// Polls `check` every 250ms until it returns Some, or panics after `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(secs, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {secs}s waiting for {what}"))
}

/// Polls `check` every 250ms until it returns Some; None after `secs`.
async fn within<T, F, Fut>(secs: u64, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll::until(
        Duration::from_secs(secs),
        Duration::from_millis(250),
        || {
            let seen = check();
            async move {
                Ok(match seen.await {
                    Some(value) => Look::Done(value),
                    None => Look::NotYet(()),
                })
            }
        },
    )
    .await
    .expect("these looks cannot fail")
    .ok()
}

/// Waits until migration `name` is in `phase`, or panics after `secs`.
async fn wait_for_phase(api: &Api<CassandraMigration>, name: &str, phase: Phase, secs: u64) {
    eventually(secs, &format!("phase {phase}"), || async {
        (phase_of(api, name).await == Some(phase)).then_some(())
    })
    .await
}

/// Waits until the migration's finalizer has let it go. On a timeout the
/// panic carries what the operator and the cluster said meanwhile (its
/// status, the namespace's events, the source pods and the budgets): stop
/// 33's CI saw a removal stand still for 120 s with nothing else to go on.
async fn migration_gone(client: &Client, ns: &str, name: &str, secs: u64) {
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    let gone = within(secs, || async {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
    if gone.is_none() {
        panic!(
            "timed out after {secs}s waiting for migration {name} to be gone\n{}",
            cluster_story(client, ns, name).await
        );
    }
}

/// Every source pod runs without the proxy (a finished removal).
async fn no_sidecar_left(client: &Client, ns: &str) {
    let left: Vec<String> = source_pods(client, ns)
        .await
        .iter()
        .filter(|p| sidecar::has_sidecar(p))
        .map(|p| p.name_any())
        .collect();
    assert!(left.is_empty(), "sidecars left: {left:?}");
}

/// Waits until the namespace's PodDisruptionBudgets are exactly `names`.
async fn only_budgets(client: &Client, ns: &str, names: &[&str], secs: u64) {
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    eventually(secs, &format!("only the budgets {names:?}"), || async {
        let mut seen: Vec<String> = budgets
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .map(|b| b.name_any())
            .collect();
        seen.sort();
        (seen == names).then_some(())
    })
    .await;
}

/// What a failed wait should print: the migration's status, the events of
/// the namespace in order, each source pod's state and each budget's.
async fn cluster_story(client: &Client, ns: &str, name: &str) -> String {
    let mut story = String::new();
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(cm)) => story.push_str(&format!(
            "migration {name}: deleting since {:?}, finalizers {:?}\nstatus: {}\n",
            cm.metadata.deletion_timestamp,
            cm.metadata.finalizers,
            serde_json::to_string_pretty(&cm.status).unwrap_or_default()
        )),
        other => story.push_str(&format!("migration {name}: {other:?}\n")),
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    if let Ok(mut list) = events.list(&ListParams::default()).await {
        list.items.sort_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        });
        for e in list.items {
            story.push_str(&format!(
                "event {} {} {}/{}: {}\n",
                e.last_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .or(e.event_time.as_ref().map(|t| t.0.to_string()))
                    .unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.involved_object.kind.unwrap_or_default(),
                e.involved_object.name.unwrap_or_default(),
                e.message.unwrap_or_default()
            ));
        }
    }
    for p in source_pods(client, ns).await {
        story.push_str(&format!(
            "pod {} uid={} ready={} deleting={} sidecar={} ip={:?}\n",
            p.name_any(),
            p.uid().unwrap_or_default(),
            sidecar::pod_ready(&p),
            p.metadata.deletion_timestamp.is_some(),
            sidecar::has_sidecar(&p),
            p.status.as_ref().and_then(|s| s.pod_ip.clone())
        ));
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = budgets.list(&ListParams::default()).await {
        for b in list.items {
            story.push_str(&format!(
                "budget {}: {}\n",
                b.name_any(),
                serde_json::to_string(&b.status).unwrap_or_default()
            ));
        }
    }
    story
}

async fn phase_of(api: &Api<CassandraMigration>, name: &str) -> Option<Phase> {
    api.get_opt(name)
        .await
        .ok()
        .flatten()?
        .status
        .map(|s| s.phase)
}

fn migration(name: &str) -> CassandraMigration {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "CassandraMigration",
        "metadata": {"name": name},
        "spec": {
            "source": {"statefulSet": STS},
            "target": {"contactPoints": ["127.0.0.21:9042"], "localDatacenter": "target-dc"},
            "keyspaces": {"include": ["shop"]},
            "proxy": {"redirect": "port", "writeMode": "sync"},
            "backfill": {"parallelism": 2, "splits": 8, "rowsPerSecond": 10000,
                         "nodeSelector": {NO_NODE_LABEL: "true"}},
            "validation": {"mode": "full", "repair": true},
        },
    }))
    .expect("migration")
}

struct Bed {
    client: Client,
    ns: TestNamespace,
    _webhook: WebhookGuard,
    kubelet: JoinHandle<()>,
    script: Arc<KubeletScript>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.kubelet.abort();
    }
}

async fn bed(prefix: &str) -> Bed {
    let bed = bare_bed(prefix).await;
    create_statefulset(&bed.client, &bed.ns.name).await;
    eventually(60, "3 Ready source pods", || async {
        let pods = source_pods(&bed.client, &bed.ns.name).await;
        (pods.len() == REPLICAS && pods.iter().all(sidecar::pod_ready)).then_some(())
    })
    .await;
    // Only what happens from now on counts (the pods were all down at birth).
    tokio::time::sleep(Duration::from_millis(600)).await;
    bed.script.max_unavailable.store(0, Ordering::SeqCst);
    bed
}

/// The namespace, the webhook and the fake kubelet, without a source.
async fn bare_bed(prefix: &str) -> Bed {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| "ferry_operator=info".into()),
        )
        .with_test_writer()
        .try_init();
    let tb = testbed::kubernetes().expect("test bed");
    let client = kube_client::client(&tb.kubeconfig).await.expect("client");
    kube_client::install_crd(
        &client,
        &testbed::repo_root().join("crds/cassandramigrations.ferry.dev.yaml"),
    )
    .await
    .expect("CRD");
    let ns = TestNamespace::create(&client, prefix)
        .await
        .expect("namespace");
    let webhook = start_webhook(&client, &ns.name).await;
    let script = Arc::new(KubeletScript::default());
    let kubelet = start_kubelet(&client, &ns.name, script.clone());
    Bed {
        client,
        ns,
        _webhook: webhook,
        kubelet,
        script,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migration_rolls_one_pod_at_a_time_runs_jobs_reaches_ready_and_backs_out() {
    let bed = bed("ferry-op").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    assert!(
        source_pods(client, ns)
            .await
            .iter()
            .all(|p| !sidecar::has_sidecar(p)),
        "no sidecar before the migration"
    );

    let mut operator = start_controller(ns);
    api.create(&PostParams::default(), &migration("mig"))
        .await
        .expect("create migration");

    // The operator is restarted in the middle of the roll and picks up.
    eventually(60, "the first pod rolled", || async {
        let with = source_pods(client, ns)
            .await
            .iter()
            .filter(|p| sidecar::has_sidecar(p))
            .count();
        (with >= 1).then_some(())
    })
    .await;
    operator.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    operator = start_controller(ns);

    wait_for_phase(&api, "mig", Phase::Ready, 120).await;

    let cm = api.get("mig").await.expect("migration");
    assert!(
        cm.finalizers().iter().any(|f| f == labels::FINALIZER),
        "no finalizer: {:?}",
        cm.metadata
    );
    let status = cm.status.clone().expect("status");
    let phases: Vec<Phase> = status.phase_history.iter().map(|t| t.phase).collect();
    assert_eq!(
        phases,
        vec![
            Phase::Pending,
            Phase::Mirroring,
            Phase::Backfilling,
            Phase::Validating,
            Phase::Ready
        ]
    );
    assert_eq!(status.observed_generation, cm.metadata.generation);
    assert!(
        bed.script.max_unavailable.load(Ordering::SeqCst) <= 1,
        "more than one source pod was down at once: {:?}",
        bed.script.trace.lock().map(|t| t.clone())
    );
    let pods = source_pods(client, ns).await;
    assert_eq!(pods.len(), REPLICAS);
    for pod in &pods {
        assert!(
            sidecar::has_sidecar(pod),
            "{} lacks the sidecar",
            pod.name_any()
        );
        assert_eq!(
            pod.annotations()
                .get(labels::MIGRATION_ANNOTATION)
                .map(String::as_str),
            Some("mig")
        );
    }
    assert!(
        status
            .sidecars
            .iter()
            .all(|s| s.state == ferry_operator::crd::SidecarState::Ready),
        "{:?}",
        status.sidecars
    );
    let backfill = status.backfill.expect("backfill status");
    assert_eq!(
        (backfill.rows_copied, backfill.ranges_done),
        (2000, 8),
        "summed over both Job pods"
    );
    assert!(backfill.start_timestamp_micros.is_some());
    let validation = status.validation.expect("validation status");
    assert_eq!(
        (
            validation.rows_compared,
            validation.unresolved,
            validation.in_flight
        ),
        (2000, 0, 4)
    );
    for c in ["SidecarsReady", "BackfillComplete", "Validated", "Ready"] {
        assert!(
            status
                .conditions
                .iter()
                .any(|x| x.type_ == c && x.status == "True"),
            "condition {c} not True"
        );
    }
    assert_eq!(
        status.progress.as_deref(),
        Some("in sync; mirroring until cut-over")
    );

    // The Jobs carry the spec.
    let job = Api::<Job>::namespaced(client.clone(), ns)
        .get("mig-backfill")
        .await
        .expect("backfill job");
    let spec = job.spec.expect("job spec");
    assert_eq!(
        (
            spec.completion_mode.as_deref(),
            spec.parallelism,
            spec.completions
        ),
        (Some("Indexed"), Some(2), Some(2))
    );
    let env: BTreeSet<String> = spec.template.spec.expect("pod spec").containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| format!("{}={}", e.name, e.value.clone().unwrap_or_default()))
        .collect();
    for want in [
        "FERRY_SPLITS=8",
        "FERRY_SPLIT_COUNT=2",
        "FERRY_ROWS_PER_SECOND=5000",
        "FERRY_KEYSPACES=shop",
        "FERRY_TIMESTAMP_MODE=preserve",
    ] {
        assert!(env.contains(want), "backfill Job env lacks {want}: {env:?}");
    }
    Api::<Job>::namespaced(client.clone(), ns)
        .get("mig-validate-1")
        .await
        .expect("validation job");
    // The peer map lists every source pod's proxy.
    let peers = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("mig-ferry-peers")
        .await
        .expect("peer map");
    let body = peers.data.expect("data")[labels::PEER_MAP_KEY].clone();
    assert!(
        body.contains("\"127.0.0.1\": \"127.0.0.1:29042\"") && body.contains("\"mode\": \"sync\""),
        "{body}"
    );
    // Events tell the story.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("events");
    let reasons: BTreeSet<String> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    for r in ["EvictedPod", "CreatedJob", "Mirroring", "Ready"] {
        assert!(reasons.contains(r), "no {r} event: {reasons:?}");
    }

    // A new proxy image rolls the proxies again, one pod at a time, while
    // the migration stays Ready.
    bed.script.max_unavailable.store(0, Ordering::SeqCst);
    const NEW_IMAGE: &str = "ferry.dev/ferry-sidecar:v2";
    let patch = json!({"spec": {"proxy": {"image": NEW_IMAGE}}});
    api.patch("mig", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("a new proxy image");
    let proxy_image = |pod: &Pod| {
        pod.spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .find(|c| c.name == labels::SIDECAR_CONTAINER)
            .and_then(|c| c.image.clone())
    };
    eventually(180, "every proxy rolled to the new image", || async {
        let pods = source_pods(client, ns).await;
        let rolled = pods.len() == REPLICAS
            && pods
                .iter()
                .all(|p| proxy_image(p).as_deref() == Some(NEW_IMAGE) && sidecar::pod_ready(p));
        let healthy = api
            .get("mig")
            .await
            .ok()?
            .status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "False");
        (rolled && healthy).then_some(())
    })
    .await;
    assert!(
        bed.script.max_unavailable.load(Ordering::SeqCst) <= 1,
        "more than one pod down while rolling the new image: {:?}",
        bed.script.trace.lock().map(|t| t.clone())
    );
    assert_eq!(phase_of(&api, "mig").await, Some(Phase::Ready));

    // Deleting the migration takes the sidecars out, one at a time, and
    // removes what Ferry made.
    bed.script.max_unavailable.store(0, Ordering::SeqCst);
    api.delete("mig", &DeleteParams::default())
        .await
        .expect("delete");
    migration_gone(client, ns, "mig", 120).await;
    let pods = source_pods(client, ns).await;
    assert!(
        pods.iter().all(|p| !sidecar::has_sidecar(p)),
        "sidecars left after deletion"
    );
    assert!(
        bed.script.max_unavailable.load(Ordering::SeqCst) <= 1,
        "more than one pod down while removing sidecars"
    );
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("jobs");
    assert!(
        jobs.items
            .iter()
            .all(|j| j.metadata.deletion_timestamp.is_some()),
        "Jobs left after deletion"
    );
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_backfill_is_reported_and_resumes_after_a_spec_fix() {
    let bed = bed("ferry-fail").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    bed.script.fail_backfill.store(true, Ordering::SeqCst);
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    let operator = start_controller(ns);
    api.create(&PostParams::default(), &migration("broken"))
        .await
        .expect("create");

    eventually(120, "phase Failed", || async {
        (phase_of(&api, "broken").await == Some(Phase::Failed)).then_some(())
    })
    .await;
    let status = api
        .get("broken")
        .await
        .expect("get")
        .status
        .expect("status");
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .expect("Failed condition");
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str()),
        ("True", "BackfillFailed")
    );
    assert!(
        failed.message.contains("mig") || failed.message.contains("broken-backfill"),
        "{}",
        failed.message
    );
    assert_eq!(status.progress.as_deref(), Some("BackfillFailed"));

    // Fix (the test's kubelet stops failing) and change the spec: resumes in
    // Backfilling, not from the start.
    bed.script.fail_backfill.store(false, Ordering::SeqCst);
    let patch = json!({"spec": {"backfill": {"concurrency": 16}}});
    api.patch("broken", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    eventually(120, "phase Ready after resume", || async {
        (phase_of(&api, "broken").await == Some(Phase::Ready)).then_some(())
    })
    .await;
    let status = api
        .get("broken")
        .await
        .expect("get")
        .status
        .expect("status");
    let phases: Vec<Phase> = status.phase_history.iter().map(|t| t.phase).collect();
    assert_eq!(
        phases,
        vec![
            Phase::Pending,
            Phase::Mirroring,
            Phase::Backfilling,
            Phase::Failed,
            Phase::Backfilling,
            Phase::Validating,
            Phase::Ready
        ]
    );
    assert!(status
        .conditions
        .iter()
        .any(|c| c.type_ == "Failed" && c.status == "False" && c.reason == "Resumed"));
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_leaves_pods_of_other_statefulsets_alone() {
    let bed = bed("ferry-other").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    // A migration of a different StatefulSet: this one's pods stay untouched.
    let mut other = migration("other");
    other.spec.source.stateful_set = "not-this-one".into();
    Api::<CassandraMigration>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &other)
        .await
        .expect("create");
    // Recreate a pod (no controller runs here): the webhook sees it.
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(&format!("{STS}-0"), &DeleteParams::default())
        .await
        .expect("delete pod");
    let pod = eventually(60, "the pod recreated", || async {
        let p = Api::<Pod>::namespaced(client.clone(), ns)
            .get_opt(&format!("{STS}-0"))
            .await
            .ok()??;
        p.metadata.deletion_timestamp.is_none().then_some(p)
    })
    .await;
    assert!(
        !sidecar::has_sidecar(&pod),
        "a pod of another StatefulSet got the sidecar"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_one_replica_leads_and_a_dead_leader_is_replaced() {
    use ferry_operator::leader::LeaderElection;
    let tb = testbed::kubernetes().expect("test bed");
    let client = kube_client::client(&tb.kubeconfig).await.expect("client");
    let ns = TestNamespace::create(&client, "ferry-lease")
        .await
        .expect("namespace");
    let lease = Duration::from_secs(3);
    let timing = ferry_operator::leader::Timing::for_lease(lease);
    let a = LeaderElection::new(
        client.clone(),
        &ns.name,
        "ferry-operator-leader",
        "replica-a",
        timing,
    );
    let b = LeaderElection::new(
        client.clone(),
        &ns.name,
        "ferry-operator-leader",
        "replica-b",
        timing,
    );
    assert!(
        a.try_acquire().await.expect("a"),
        "the first replica takes the free lease"
    );
    assert!(
        !b.try_acquire().await.expect("b"),
        "the second must not lead while the first renews"
    );
    assert!(
        a.try_acquire().await.expect("a renews"),
        "the leader renews"
    );
    assert!(!b.try_acquire().await.expect("b"), "still not b");
    // a stops renewing (it died): after the lease runs out, b takes over.
    tokio::time::sleep(lease + Duration::from_millis(1500)).await;
    assert!(
        b.try_acquire().await.expect("b"),
        "b takes over an expired lease"
    );
    assert!(
        !a.try_acquire().await.expect("a"),
        "a, back, does not steal it"
    );
    let held =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &ns.name)
            .get("ferry-operator-leader")
            .await
            .expect("lease");
    let spec = held.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_certificate_is_kept_in_a_secret_and_published_as_ca_bundle() {
    let tb = testbed::kubernetes().expect("test bed");
    let client = kube_client::client(&tb.kubeconfig).await.expect("client");
    let ns = TestNamespace::create(&client, "ferry-cert")
        .await
        .expect("namespace");
    let sans = vec![format!("ferry-webhook.{}.svc", ns.name)];
    let first = certs::ensure(&client, &ns.name, "ferry-webhook-tls", &sans)
        .await
        .expect("first");
    let again = certs::ensure(&client, &ns.name, "ferry-webhook-tls", &sans)
        .await
        .expect("again");
    assert_eq!(
        first.cert_pem, again.cert_pem,
        "a fresh certificate is reused, not remade"
    );
    let other = certs::ensure(
        &client,
        &ns.name,
        "ferry-webhook-tls",
        &["other.svc".to_owned()],
    )
    .await
    .expect("other names");
    assert_ne!(
        first.cert_pem, other.cert_pem,
        "new names make a new certificate"
    );

    let name = format!("ferry-cert-test-{}", ns.name);
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "sidecar.ferry.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"service": {"name": "ferry-webhook", "namespace": ns.name, "path": "/mutate"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        }],
    }))
    .expect("config");
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.create(&PostParams::default(), &config)
        .await
        .expect("create config");
    certs::publish_ca_bundle(&client, &name, &other.ca_pem)
        .await
        .expect("publish");
    let stored = api.get(&name).await.expect("get");
    let bundle = stored.webhooks.expect("webhooks")[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("caBundle");
    assert_eq!(bundle.0, other.ca_pem.as_bytes());
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
}

/// Issue 14 §3: every renewal made a new CA and replaced the `caBundle`,
/// so with two replicas the one that had not reloaded yet (up to an hour)
/// served a certificate the bundle no longer trusted, and pods started
/// without the proxy. Now the CA is kept and only the serving certificate
/// is renewed: the published bundle trusts what either replica serves,
/// also when both renew at once and when the CA itself is replaced (the
/// old one stays in the bundle), and a Secret written by the old code
/// rotates to a kept CA without a gap.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_webhook_certificate_stays_trusted_on_every_replica() {
    let tb = testbed::kubernetes().expect("test bed");
    let client = kube_client::client(&tb.kubeconfig).await.expect("client");
    let ns = TestNamespace::create(&client, "ferry-rotate")
        .await
        .expect("namespace");
    let name = format!("ferry-webhook.{}.svc", ns.name);
    let sans = vec![name.clone()];
    let secret = "ferry-webhook-tls";
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    let near_end = |key: &'static str| {
        let secrets = secrets.clone();
        async move {
            let soon = (jiff::Timestamp::now().as_second() + 24 * 3600).to_string();
            secrets
                .patch(
                    secret,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {key: soon}}})),
                )
                .await
                .expect("age the certificate");
        }
    };
    // Two replicas start: one certificate.
    let a = certs::ensure(&client, &ns.name, secret, &sans)
        .await
        .expect("replica a");
    let b = certs::ensure(&client, &ns.name, secret, &sans)
        .await
        .expect("replica b");
    assert_eq!(a.cert_pem, b.cert_pem);
    // Replica a renews a certificate near its end; b still serves the old one.
    near_end("ferry.dev/not-after").await;
    let a2 = certs::ensure(&client, &ns.name, secret, &sans)
        .await
        .expect("renewal");
    assert_ne!(a2.cert_pem, a.cert_pem, "renewed");
    assert_eq!(a2.ca_pem, a.ca_pem, "the caBundle stays as it was");
    certs::trusted_by(&a2.ca_pem, &b.cert_pem, &name).expect("b's certificate still trusted");
    certs::trusted_by(&a2.ca_pem, &a2.cert_pem, &name).expect("a's new certificate trusted");
    let b2 = certs::ensure(&client, &ns.name, secret, &sans)
        .await
        .expect("b's hourly check");
    assert_eq!(
        b2.cert_pem, a2.cert_pem,
        "b picks up the renewed certificate"
    );
    // Both renew at once: one wins, the other takes its certificate.
    near_end("ferry.dev/not-after").await;
    let (x, y) = futures::join!(
        certs::ensure(&client, &ns.name, secret, &sans),
        certs::ensure(&client, &ns.name, secret, &sans)
    );
    let (x, y) = (x.expect("x"), y.expect("y"));
    assert_eq!(x.cert_pem, y.cert_pem, "two renewals at once agree");
    assert_eq!(x.ca_pem, a.ca_pem);
    // The CA near its end: a new one, the old one kept in the bundle.
    near_end("ferry.dev/ca-not-after").await;
    let z = certs::ensure(&client, &ns.name, secret, &sans)
        .await
        .expect("new CA");
    assert_ne!(z.signing, x.signing, "a new CA");
    certs::trusted_by(&z.ca_pem, &x.cert_pem, &name)
        .expect("the old CA's certificate still trusted");
    certs::trusted_by(&z.ca_pem, &z.cert_pem, &name).expect("the new one trusted");
    // A Secret the old code wrote (no CA key kept), near its end.
    let old = certs::generate(&sans).expect("old-style certificate");
    let legacy = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "legacy", "annotations": {"ferry.dev/not-after": (jiff::Timestamp::now().as_second() + 3600).to_string()}},
        "stringData": {"ca.crt": old.ca_pem, "tls.crt": old.cert_pem, "tls.key": old.key_pem, "sans": name},
    });
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(legacy).expect("secret"),
        )
        .await
        .expect("legacy secret");
    let upgraded = certs::ensure(&client, &ns.name, "legacy", &sans)
        .await
        .expect("upgrade");
    assert!(upgraded.signing.is_some(), "the CA is kept from now on");
    certs::trusted_by(&upgraded.ca_pem, &old.cert_pem, &name)
        .expect("the certificate the old code served stays trusted");
}

/// A TCP relay from `from` to `to`, until dropped: the target "comes back".
struct Relay(JoinHandle<()>);

impl Relay {
    async fn start(from: &str, to: String) -> Relay {
        let listener = tokio::net::TcpListener::bind(from)
            .await
            .unwrap_or_else(|e| panic!("relay bind {from}: {e}"));
        Relay(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let to = to.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn condition_of(cm: &CassandraMigration, type_: &str) -> Option<(String, String, String)> {
    cm.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A PodDisruptionBudget that refuses an eviction (the Eviction API's 429)
/// is the operator's to see at once: it waits, says why in the status, and
/// goes on when the budget allows. kube's client retries a 429 by itself,
/// for minutes once the refusals last (stop 30's local CI: a roll that
/// stood still for 120 s after its first pod, with nothing in the log); the
/// operator's client must not.
#[tokio::test(flavor = "multi_thread")]
async fn an_eviction_a_budget_refuses_is_reported_at_once_and_the_roll_resumes_when_allowed() {
    let bed = bed("ferry-budget").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let hold: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "hold"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": STS}}},
    }))
    .expect("pdb");
    budgets
        .create(&PostParams::default(), &hold)
        .await
        .expect("create the budget");
    let uids =
        |pods: Vec<Pod>| -> BTreeSet<String> { pods.iter().filter_map(|p| p.uid()).collect() };
    let before = uids(source_pods(client, ns).await);
    let operator = start_controller(ns);
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &migration("budget"))
        .await
        .expect("create migration");
    let (reason, message) = eventually(30, "SidecarsReady False for the budget", || async {
        let cm = api.get("budget").await.ok()?;
        let (status, reason, message) = condition_of(&cm, "SidecarsReady")?;
        (status == "False" && reason == "EvictionRefused").then_some((reason, message))
    })
    .await;
    assert!(message.contains(&format!("{STS}-0")), "{reason}: {message}");
    let after = uids(source_pods(client, ns).await);
    assert_eq!(after, before, "no pod may have been evicted");
    assert_eq!(after.len(), REPLICAS);

    budgets
        .delete("hold", &DeleteParams::default())
        .await
        .expect("delete the budget");
    eventually(180, "phase Ready once the budget is gone", || async {
        (phase_of(&api, "budget").await == Some(Phase::Ready)).then_some(())
    })
    .await;

    // Deleting the migration takes the proxies out with the same roll: a
    // budget that refuses holds it, and the status says so while the
    // migration waits on its finalizer (it used to wait in silence).
    budgets
        .create(&PostParams::default(), &hold)
        .await
        .expect("create the budget again");
    let before = uids(source_pods(client, ns).await);
    api.delete("budget", &DeleteParams::default())
        .await
        .expect("delete");
    let (reason, message) = eventually(30, "the removal held by the budget, said so", || async {
        let cm = api.get_opt("budget").await.ok()??;
        cm.metadata.deletion_timestamp.as_ref()?;
        let (status, reason, message) = condition_of(&cm, "SidecarsReady")?;
        (status == "False" && reason == "EvictionRefused").then_some((reason, message))
    })
    .await;
    assert!(message.contains(&format!("{STS}-0")), "{reason}: {message}");
    assert_eq!(
        uids(source_pods(client, ns).await),
        before,
        "no pod evicted"
    );
    // Ferry's own budget made way for the user's: with two budgets on a
    // pod the Eviction API refuses it for good (a 500, not a 429).
    only_budgets(client, ns, &["hold"], 30).await;
    budgets
        .delete("hold", &DeleteParams::default())
        .await
        .expect("delete the budget");
    migration_gone(client, ns, "budget", 180).await;
    no_sidecar_left(client, ns).await;
    operator.abort();
}

/// Deleting a migration while a pod it evicted does not come back: the
/// removal waits for it and says so (`SidecarsReady=False/PodNotBack`), the
/// phase stays `Removing` (a deleted migration cannot fail: nothing would
/// resume it), the status does not churn, and the removal finishes once
/// the pod is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_waits_for_a_pod_that_does_not_come_back_and_says_so() {
    let bed = bed("ferry-stuck").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    let operator = start_controller(ns);
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &migration("stuck"))
        .await
        .expect("create migration");
    wait_for_phase(&api, "stuck", Phase::Ready, 120).await;
    // The roll in had the usual timeout; the removal gets a short one (the
    // operator keeps nothing between reconciles, so a restart is enough).
    operator.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let operator = start_controller_with(ns, |s| s.roll_timeout = Duration::from_secs(5));
    // The removal evicts cassandra-0 first; it will not come back Ready.
    let held = format!("{STS}-0");
    bed.script
        .held_down
        .lock()
        .expect("held_down")
        .insert(held.clone());
    api.delete("stuck", &DeleteParams::default())
        .await
        .expect("delete");
    let message = eventually(
        60,
        "SidecarsReady=False/PodNotBack while removing",
        || async {
            let cm = api.get_opt("stuck").await.ok()??;
            cm.metadata.deletion_timestamp.as_ref()?;
            let (status, reason, message) = condition_of(&cm, "SidecarsReady")?;
            // Once the pod exists again (held down): before, the wait's
            // reason is that a pod is missing, and it changes when it is
            // recreated.
            (status == "False" && reason == "PodNotBack" && message.contains("is not Ready"))
                .then_some(message)
        },
    )
    .await;
    assert!(message.contains(&held), "{message}");
    let cm = api.get("stuck").await.expect("still there");
    let status = cm.status.clone().expect("status");
    assert_eq!(status.phase, Phase::Removing, "{status:?}");
    assert!(
        condition_of(&cm, "Failed").is_none_or(|c| c.0 != "True"),
        "a deleted migration does not fail: {status:?}"
    );
    let ready = condition_of(&cm, "Ready").expect("Ready");
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("False", "Removing"));
    // Waiting is quiet: the status is written but does not change.
    let version = cm.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = api.get("stuck").await.expect("still there");
    assert_eq!(
        later.metadata.resource_version, version,
        "the status churns while the removal waits: {:?}",
        later.status
    );
    bed.script.held_down.lock().expect("held_down").clear();
    migration_gone(client, ns, "stuck", 120).await;
    no_sidecar_left(client, ns).await;
    operator.abort();
}

/// Issue 13 §3 / issue 14 §2: the spool is in the pod, so evicting a pod
/// whose proxy still owes the target writes would lose them. Real proxies
/// (in-process, on the IPs the fake kubelet gives the pods) front the real
/// source; the proxy of `cassandra-1` cannot reach the target and spools
/// the application's writes. The migration must leave `Ready` for
/// `MirroringBehind`, and its deletion must take out `cassandra-0` but hold
/// `cassandra-1` until the target is back and the spool drained; then every
/// write is on the target.
#[tokio::test(flavor = "multi_thread")]
async fn no_pod_is_evicted_while_its_proxy_owes_the_target_writes() {
    let cassandra = testbed::cassandra(1).expect("Cassandra test bed");
    let source = cassandra.source_contact_points[0].clone();
    let target = cassandra.target_contact_points[0].clone();
    let bed = bed("ferry-spool-gate").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    // 127.0.0.70-72 (127.0.0.73 is the dead target below).
    const IP_BASE: u8 = 70;
    bed.script.ip_base.store(IP_BASE, Ordering::SeqCst);

    // The keyspace exists on both clusters; DDL is not mirrored.
    let ks = format!("spool_gate_{}", std::process::id());
    let create = [
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
        format!("CREATE TABLE IF NOT EXISTS {ks}.t (k int PRIMARY KEY, v text)"),
    ];
    let target_session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&target)
        .build()
        .await
        .expect("target session");
    for node in [&source, &target] {
        let s = scylla::client::session_builder::SessionBuilder::new()
            .known_node(node)
            .build()
            .await
            .expect("session");
        for q in &create {
            s.query_unpaged(q.as_str(), &[]).await.expect("schema");
        }
    }
    // cassandra-1's proxy sends to an address where nothing listens yet.
    const DOWN_TARGET: &str = "127.0.0.73:9042";
    let host = |contact: &str| contact.split(':').next().unwrap_or(contact).to_owned();
    let mut proxies = Vec::new();
    for n in 0..REPLICAS {
        let ip = pod_ip(IP_BASE, &format!("{STS}-{n}"));
        // The proxy takes hosts; the ports are its defaults (9042).
        let to = host(if n == 1 { DOWN_TARGET } else { target.as_str() });
        let source = host(&source);
        proxies.push(
            in_process_proxy::Proxy::start(
                &ip,
                &source,
                &to,
                &["--mode", "async", "--async-retries", "1"],
            )
            .await,
        );
    }

    let operator = start_controller_with(ns, |s| {
        s.proxy_checks = true;
        s.mirroring_behind_after = Duration::from_secs(3);
    });
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &migration("gate"))
        .await
        .expect("create migration");
    wait_for_phase(&api, "gate", Phase::Ready, 120).await;
    assert!(
        source_pods(client, ns).await.iter().all(|p| p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            == Some(pod_ip(IP_BASE, &p.name_any()))),
        "every rolled pod has the IP its proxy listens on"
    );

    // The application writes through cassandra-1's proxy: the source takes
    // every write, the target none, and the spool keeps them.
    let app = scylla::client::session_builder::SessionBuilder::new()
        .known_node(proxies[1].addr.to_string())
        .build()
        .await
        .expect("session through the proxy");
    const WRITES: i32 = 20;
    for k in 0..WRITES {
        app.query_unpaged(
            format!("INSERT INTO {ks}.t (k, v) VALUES ({k}, 'kept')"),
            &[],
        )
        .await
        .expect("the source takes the write");
    }
    eventually(20, "the writes in cassandra-1's spool", || async {
        (proxies[1].state().await.spool_records == WRITES as u64).then_some(())
    })
    .await;

    // Ready says false while the spool does not drain.
    let (ready, reason) = eventually(90, "Ready=False for MirroringBehind", || async {
        let cm = api.get("gate").await.ok()?;
        let behind = condition_of(&cm, "MirroringBehind")?;
        let ready = condition_of(&cm, "Ready")?;
        (behind.0 == "True" && ready.0 == "False").then_some((ready, behind))
    })
    .await;
    assert_eq!(ready.1, "MirroringBehind", "{ready:?}");
    assert!(
        reason
            .2
            .contains(&format!("{STS}-1: {WRITES} spooled writes")),
        "{reason:?}"
    );

    // Backing out: cassandra-0 goes, cassandra-1 is held.
    let held_uid = source_pods(client, ns)
        .await
        .iter()
        .find(|p| p.name_any() == format!("{STS}-1"))
        .and_then(|p| p.uid())
        .expect("cassandra-1");
    api.delete("gate", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(60, "cassandra-0 without its proxy", || async {
        let pods = source_pods(client, ns).await;
        pods.iter()
            .any(|p| {
                p.name_any() == format!("{STS}-0")
                    && !sidecar::has_sidecar(p)
                    && sidecar::pod_ready(p)
            })
            .then_some(())
    })
    .await;
    // The roll's settle time (10 s) has passed twice over: without the
    // gate, cassandra-1 would be gone.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let pods = source_pods(client, ns).await;
    let c1 = pods
        .iter()
        .find(|p| p.name_any() == format!("{STS}-1"))
        .expect("cassandra-1");
    assert_eq!(
        c1.uid(),
        Some(held_uid.clone()),
        "cassandra-1 was evicted with writes in its spool"
    );
    assert!(sidecar::has_sidecar(c1));
    let held = api
        .get_opt("gate")
        .await
        .expect("get")
        .expect("the migration is still being removed");
    let (status, reason, message) =
        condition_of(&held, "SidecarsReady").expect("SidecarsReady while removing");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "WaitingForSpool"),
        "the status says why the removal waits: {message}"
    );
    assert!(message.contains(&format!("{STS}-1")), "{message}");
    assert_eq!(proxies[1].state().await.spool_records, WRITES as u64);

    // The target comes back: the spool drains, then the back-out finishes.
    let _relay = Relay::start(DOWN_TARGET, target.clone()).await;
    migration_gone(client, ns, "gate", 120).await;
    let pods = source_pods(client, ns).await;
    assert!(
        pods.iter().all(|p| !sidecar::has_sidecar(p)),
        "sidecars left"
    );
    let rows = target_session
        .query_unpaged(format!("SELECT count(*) FROM {ks}.t"), &[])
        .await
        .expect("count")
        .into_rows_result()
        .expect("rows")
        .single_row::<(i64,)>()
        .expect("count row")
        .0;
    assert_eq!(
        rows,
        i64::from(WRITES),
        "every acknowledged write reached the target"
    );
    operator.abort();
    drop(proxies);
}

/// Plays the kubelet's ConfigMap volume for in-process proxies: copies the
/// migration's runtime ConfigMap to each proxy's runtime file (written
/// whole, then renamed, as the kubelet swaps a symlink).
fn sync_runtime_files(
    client: &Client,
    ns: &str,
    migration: &str,
    files: Vec<std::path::PathBuf>,
) -> JoinHandle<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let name = labels::peer_map_name(migration);
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            if let Ok(Some(cm)) = api.get_opt(&name).await {
                let body = cm
                    .data
                    .and_then(|d| d.get(labels::PEER_MAP_KEY).cloned())
                    .unwrap_or_default();
                if body != last {
                    for f in &files {
                        let tmp = f.with_extension("tmp");
                        if std::fs::write(&tmp, &body).is_ok() {
                            let _ = std::fs::rename(&tmp, f);
                        }
                    }
                    last = body;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// What the application saw: writes acknowledged, reads answered, errors.
#[derive(Default)]
struct AppTally {
    acknowledged: std::sync::Mutex<Vec<i32>>,
    reads: AtomicUsize,
    errors: std::sync::Mutex<Vec<String>>,
}

/// Issue 15: the cut-over driven by the operator, with the application
/// writing and reading through one session the whole time. Real proxies
/// (in-process, on the IPs the fake kubelet gives the pods) read the
/// runtime ConfigMap the operator writes; the stages go mirror →
/// shadowReads → targetPrimary → mirror → targetPrimary → done. Each
/// switch is confirmed from every proxy's `/state`; `done` is refused while
/// the application is still connected, then takes the proxies out and ends
/// `Complete`; every acknowledged write is on both clusters, and the
/// application saw no error. The migration writes async, so targetPrimary
/// runs the proxies' `target-primary-async`.
#[tokio::test(flavor = "multi_thread")]
async fn cutover_goes_forward_and_back_without_a_restart_or_an_error() {
    let cassandra = testbed::cassandra(1).expect("Cassandra test bed");
    let host = |contact: &str| contact.split(':').next().unwrap_or(contact).to_owned();
    let source = cassandra.source_contact_points[0].clone();
    let target = cassandra.target_contact_points[0].clone();
    let bed = bed("ferry-cutover").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    // 127.0.0.74-76: not the spool-gate test's, which runs beside this one.
    const IP_BASE: u8 = 74;
    bed.script.ip_base.store(IP_BASE, Ordering::SeqCst);

    let ks = format!("cutover_{}", std::process::id());
    let mut direct = Vec::new();
    for node in [&source, &target] {
        let s = scylla::client::session_builder::SessionBuilder::new()
            .known_node(node)
            .build()
            .await
            .expect("session");
        for q in [
            format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            format!("CREATE TABLE IF NOT EXISTS {ks}.t (k int PRIMARY KEY, v text)"),
            format!("CREATE TABLE IF NOT EXISTS {ks}.u (k int PRIMARY KEY, v text)"),
        ] {
            s.query_unpaged(q.as_str(), &[]).await.expect("schema");
        }
        direct.push(s);
    }

    let dir = std::env::temp_dir().join(format!("ferry-cutover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("runtime dir");
    let mut files = Vec::new();
    let mut proxies = Vec::new();
    for n in 0..REPLICAS {
        let file = dir.join(format!("runtime-{n}.json"));
        std::fs::write(&file, r#"{"peers": {}, "mode": "async"}"#).expect("runtime file");
        let ip = pod_ip(IP_BASE, &format!("{STS}-{n}"));
        proxies.push(
            in_process_proxy::Proxy::start(
                &ip,
                &host(&source),
                &host(&target),
                &["--peer-map", &file.display().to_string()],
            )
            .await,
        );
        files.push(file);
    }
    let syncer = sync_runtime_files(client, ns, "cut", files);
    let operator = start_controller_with(ns, |s| s.proxy_checks = true);
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    // Async: the target's copy follows the source's answer, and in
    // targetPrimary the source's follows the target's (the proxies' mode
    // `target-primary-async`); the sync stages are the proxy tests'.
    let mut cm = migration("cut");
    cm.spec.proxy.write_mode = WriteMode::Async;
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create migration");
    wait_for_phase(&api, "cut", Phase::Ready, 120).await;

    // The application: one session through cassandra-0's proxy only.
    let via = proxies[0].addr;
    let app = Arc::new(
        scylla::client::session_builder::SessionBuilder::new()
            .known_node_addr(via)
            .host_filter(Arc::new(
                scylla::policies::host_filter::AllowListHostFilter::new([via.to_string()])
                    .expect("host filter"),
            ))
            .build()
            .await
            .expect("application session"),
    );
    let tally = Arc::new(AppTally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (app, tally, stop, ks) = (app.clone(), tally.clone(), stop.clone(), ks.clone());
        tokio::spawn(async move {
            let insert = app
                .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
                .await
                .expect("prepare insert");
            let select = app
                .prepare(format!("SELECT v FROM {ks}.t WHERE k = ?"))
                .await
                .expect("prepare select");
            let mut k = 0i32;
            while !stop.load(Ordering::SeqCst) {
                match app.execute_unpaged(&insert, (k, format!("v{k}"))).await {
                    Ok(_) => tally.acknowledged.lock().expect("tally").push(k),
                    Err(e) => tally
                        .errors
                        .lock()
                        .expect("tally")
                        .push(format!("write {k}: {e}")),
                }
                match app.execute_unpaged(&select, (k,)).await {
                    Ok(_) => {
                        tally.reads.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => tally
                        .errors
                        .lock()
                        .expect("tally")
                        .push(format!("read {k}: {e}")),
                }
                k += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let set_stage = |stage: &'static str| {
        let api = api.clone();
        async move {
            api.patch(
                "cut",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"cutover": {"stage": stage}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("stage {stage}: {e}"));
        }
    };
    let confirmed = |stage: &'static str| {
        let api = api.clone();
        async move {
            eventually(60, &format!("stage {stage} confirmed"), || async {
                let cut = api.get("cut").await.ok()?.status?.cutover?;
                (cut.stage.to_string() == stage && cut.confirmed).then_some(())
            })
            .await;
        }
    };
    let modes = || async {
        let mut out = Vec::new();
        for p in &proxies {
            let s = p.state().await;
            out.push((s.mode, s.shadow_read_percent));
        }
        out
    };

    confirmed("mirror").await;
    set_stage("shadowReads").await;
    confirmed("shadowReads").await;
    assert!(
        modes().await.iter().all(|m| *m == ("async".to_owned(), 10)),
        "{:?}",
        modes().await
    );
    eventually(30, "shadow reads compared, none differing", || async {
        let cut = api.get("cut").await.ok()?.status?.cutover?;
        assert_eq!(
            cut.shadow_read_mismatches, 0,
            "the target answers like the source"
        );
        (cut.shadow_reads > 0).then_some(())
    })
    .await;
    let cm = api.get("cut").await.expect("migration");
    assert_eq!(
        condition_of(&cm, "ShadowReadsMatch").map(|c| (c.0, c.1)),
        Some(("True".to_owned(), "NoMismatch".to_owned()))
    );
    // A row that differs (written to each cluster directly, around the
    // proxies), read through a proxy: the sampled reads of it differ, and
    // the status names the table.
    for (session, v) in direct.iter().zip(["on the source", "on the target"]) {
        session
            .query_unpaged(format!("INSERT INTO {ks}.u (k, v) VALUES (1, '{v}')"), &[])
            .await
            .expect("a differing row");
    }
    let reader = scylla::client::session_builder::SessionBuilder::new()
        .known_node_addr(proxies[1].addr)
        .build()
        .await
        .expect("reader session");
    let read_u = reader
        .prepare(format!("SELECT v FROM {ks}.u WHERE k = 1"))
        .await
        .expect("prepare");
    for _ in 0..200 {
        reader.execute_unpaged(&read_u, ()).await.expect("read u");
    }
    let differing = eventually(30, "the differing table in the status", || async {
        let cm = api.get("cut").await.ok()?;
        let cut = cm.status.clone()?.cutover?;
        let n = *cut
            .shadow_read_mismatches_by_table
            .get(&format!("{ks}.u"))?;
        (n > 0).then_some((cut, condition_of(&cm, "ShadowReadsMatch")?))
    })
    .await;
    assert!(
        differing
            .0
            .shadow_read_mismatches_by_table
            .keys()
            .all(|t| *t == format!("{ks}.u")),
        "only the differing table: {:?}",
        differing.0.shadow_read_mismatches_by_table
    );
    assert_eq!(
        (differing.1 .0.as_str(), differing.1 .1.as_str()),
        ("False", "Mismatches")
    );
    assert!(
        differing.1 .2.contains(&format!("{ks}.u")),
        "{:?}",
        differing.1
    );
    drop(reader);
    set_stage("targetPrimary").await;
    confirmed("targetPrimary").await;
    assert!(modes().await.iter().all(|m| m.0 == "target-primary-async"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_stage("mirror").await;
    confirmed("mirror").await;
    assert!(modes().await.iter().all(|m| *m == ("async".to_owned(), 0)));
    // The roll-back is verified: the source checked against the target.
    let verified = eventually(60, "RollBackVerified", || async {
        let cm = api.get("cut").await.ok()?;
        let c = condition_of(&cm, "RollBackVerified")?;
        (c.0 == "True").then_some(c)
    })
    .await;
    assert_eq!(verified.1, "SourceHasEverything", "{verified:?}");
    let reverse = Api::<Job>::namespaced(client.clone(), ns)
        .get(&labels::reverse_job_name("cut", 1))
        .await
        .expect("the reverse validation Job");
    let env: BTreeSet<String> = reverse
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| format!("{}={}", e.name, e.value.clone().unwrap_or_default()))
        .collect();
    assert!(env.contains("FERRY_REVERSE=true"), "{env:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_stage("targetPrimary").await;
    confirmed("targetPrimary").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // done waits for the application to leave the proxies.
    set_stage("done").await;
    let refusal = eventually(
        30,
        "done refused while the application is connected",
        || async {
            let cm = api.get("cut").await.ok()?;
            let c = condition_of(&cm, "Cutover")?;
            (c.1 == "ClientsConnected").then_some(c)
        },
    )
    .await;
    assert_eq!(refusal.0, "False", "{refusal:?}");
    assert_eq!(phase_of(&api, "cut").await, Some(Phase::Ready));
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("application task");
    drop(app);
    eventually(180, "phase Complete", || async {
        (phase_of(&api, "cut").await == Some(Phase::Complete)).then_some(())
    })
    .await;
    assert!(
        source_pods(client, ns)
            .await
            .iter()
            .all(|p| !sidecar::has_sidecar(p)),
        "the proxies are gone"
    );
    let history: Vec<String> = api
        .get("cut")
        .await
        .expect("migration")
        .status
        .and_then(|s| s.cutover)
        .map(|c| c.history.iter().map(|t| t.stage.to_string()).collect())
        .unwrap_or_default();
    assert_eq!(
        history,
        [
            "mirror",
            "shadowReads",
            "targetPrimary",
            "mirror",
            "targetPrimary",
            "done"
        ]
    );
    // The API server refuses to go back from done.
    let back = api
        .patch(
            "cut",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cutover": {"stage": "mirror"}}})),
        )
        .await;
    assert!(
        back.as_ref()
            .is_err_and(|e| e.to_string().contains("cannot leave done")),
        "{back:?}"
    );

    // What the application was told succeeded is on both clusters.
    let errors = tally.errors.lock().expect("tally").clone();
    assert!(errors.is_empty(), "the application saw errors: {errors:?}");
    let acknowledged = tally.acknowledged.lock().expect("tally").clone();
    assert!(
        acknowledged.len() > 100,
        "only {} writes",
        acknowledged.len()
    );
    assert!(tally.reads.load(Ordering::SeqCst) > 100);
    for (side, session) in ["source", "target"].iter().zip(&direct) {
        let keys = || async {
            let rows = session
                .query_unpaged(format!("SELECT k FROM {ks}.t"), &[])
                .await
                .expect("read back")
                .into_rows_result()
                .expect("rows");
            rows.rows::<(i32,)>()
                .expect("typed rows")
                .map(|r| r.expect("row").0)
                .collect::<BTreeSet<i32>>()
        };
        // Async copies in flight when the writer stopped land within
        // moments; a write missing after that is lost.
        let landed = poll::until(Duration::from_secs(30), Duration::from_millis(500), || {
            let on_side = keys();
            let acknowledged = &acknowledged;
            async move {
                let on_side = on_side.await;
                let missing: Vec<i32> = acknowledged
                    .iter()
                    .filter(|k| !on_side.contains(k))
                    .copied()
                    .collect();
                Ok(if missing.is_empty() {
                    Look::Done(())
                } else {
                    Look::NotYet(missing)
                })
            }
        })
        .await
        .expect("these looks cannot fail");
        if let Err(missing) = landed {
            panic!("{side} lacks acknowledged writes {missing:?}");
        }
    }
    syncer.abort();
    operator.abort();
    drop(proxies);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One leader-election replica in its own process, its output collected.
struct LeaseHolder {
    child: tokio::process::Child,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl LeaseHolder {
    fn start(kubeconfig: &std::path::Path, ns: &str, identity: &str, lease_ms: u64) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-lease-holder"))
            .arg(kubeconfig)
            .args([ns, identity, &lease_ms.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start ferry-lease-holder");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().expect("lines").push(line);
            }
        });
        Self { child, lines }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// The times (unix ms) it said it acted.
    fn acted(&self) -> Vec<i64> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| l.strip_prefix("acting ")?.parse().ok())
            .collect()
    }

    fn said(&self, prefix: &str) -> bool {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.starts_with(prefix))
    }
}

/// Issue 14 §3: a leader that stalls (here: SIGSTOP, as a frozen node or a
/// long GC pause) must stop acting before another replica takes over, and
/// must not act again when it resumes. Two real processes; the stopped
/// leader's clock keeps running, so on SIGCONT its renew deadline has passed
/// and it stops at once. Before the fix, the contender compared its own
/// clock with the leader's renewTime, and the leader acted until its `hold`
/// loop noticed (up to 20 s with a 15 s lease).
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_leader_stops_acting_before_another_takes_over() {
    let tb = testbed::kubernetes().expect("test bed");
    let client = kube_client::client(&tb.kubeconfig).await.expect("client");
    let ns = TestNamespace::create(&client, "ferry-pause")
        .await
        .expect("namespace");
    const LEASE_MS: u64 = 3000;
    let a = LeaseHolder::start(&tb.kubeconfig, &ns.name, "replica-a", LEASE_MS);
    eventually(30, "replica-a leading", || async {
        (!a.acted().is_empty()).then_some(())
    })
    .await;
    let b = LeaseHolder::start(&tb.kubeconfig, &ns.name, "replica-b", LEASE_MS);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        b.acted().is_empty(),
        "two replicas act while the leader renews"
    );

    a.signal("-STOP");
    eventually(30, "replica-b taking over", || async {
        (!b.acted().is_empty()).then_some(())
    })
    .await;
    // Let b lead a while, then wake a up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.signal("-CONT");
    eventually(30, "replica-a giving up", || async {
        a.said("lost ").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (a_acts, b_acts) = (a.acted(), b.acted());
    let a_last = *a_acts.iter().max().expect("a acted");
    let b_first = *b_acts.iter().min().expect("b acted");
    assert!(
        a_last < b_first,
        "replica-a acted at {a_last}, after replica-b began at {b_first}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        b.acted().len() > b_acts.len() && !b.said("lost "),
        "replica-b keeps leading after replica-a woke up"
    );
}

/// Issue 14 §2: a source pod found without its proxy after mirroring began
/// (recreated while the webhook could not be reached; `failurePolicy:
/// Ignore` lets it start bare) may have taken writes the target never saw.
/// The migration leaves `Ready`, the pod is rolled again, and only a new
/// validation round brings it back to `Ready`.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_that_ran_without_its_proxy_is_validated_again() {
    let bed = bed("ferry-revalidate").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    let operator = start_controller(ns);
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &migration("reval"))
        .await
        .expect("create migration");
    wait_for_phase(&api, "reval", Phase::Ready, 120).await;

    // The webhook becomes unreachable; a source pod is recreated bare.
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = format!("ferry-test-{ns}");
    let config = webhooks.get(&name).await.expect("webhook config");
    let url = config
        .webhooks
        .as_ref()
        .and_then(|w| w[0].client_config.url.clone())
        .expect("url");
    let set_url = |url: String| {
        let webhooks = webhooks.clone();
        let name = name.clone();
        async move {
            let mut config = webhooks.get(&name).await.expect("webhook config");
            if let Some(w) = config.webhooks.as_mut() {
                w[0].client_config.url = Some(url);
            }
            webhooks
                .replace(&name, &PostParams::default(), &config)
                .await
                .expect("replace webhook config");
        }
    };
    set_url("https://127.0.0.1:1/mutate".to_owned()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.delete(&format!("{STS}-1"), &DeleteParams::default())
        .await
        .expect("delete cassandra-1");
    let why = eventually(60, "the migration noticing the bare pod", || async {
        let status = api.get("reval").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False").then_some(status.revalidate.clone()?)
    })
    .await;
    assert!(why.contains(&format!("{STS}-1")), "{why}");
    set_url(url).await;

    eventually(120, "Ready again after a new validation", || async {
        let status = api.get("reval").await.ok()?.status?;
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (status.phase == Phase::Ready && ready && status.revalidate.is_none()).then_some(())
    })
    .await;
    let status = api
        .get("reval")
        .await
        .expect("migration")
        .status
        .expect("status");
    let phases: Vec<Phase> = status.phase_history.iter().map(|t| t.phase).collect();
    assert_eq!(
        phases[phases.len() - 3..],
        [Phase::Ready, Phase::Validating, Phase::Ready],
        "{phases:?}"
    );
    assert_eq!(
        status.validation.and_then(|v| v.job_name).as_deref(),
        Some(labels::validate_job_name("reval", 2).as_str()),
        "a second validation ran"
    );
    assert!(
        source_pods(client, ns)
            .await
            .iter()
            .all(sidecar::has_sidecar),
        "cassandra-1 was rolled again with its proxy"
    );
    operator.abort();
}

/// Restarts the source pods so the fake kubelet gives them the real source
/// nodes' addresses (`source_node_ips`).
async fn pods_on_source_nodes(bed: &Bed) {
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    bed.script.source_node_ips.store(true, Ordering::SeqCst);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for n in 0..REPLICAS {
        let _ = pods
            .delete(&format!("{STS}-{n}"), &DeleteParams::default())
            .await;
    }
    eventually(60, "source pods on the source nodes' addresses", || async {
        let pods = source_pods(client, ns).await;
        (pods.len() == REPLICAS
            && pods.iter().all(|p| {
                sidecar::pod_ready(p)
                    && p.status
                        .as_ref()
                        .and_then(|s| s.pod_ip.as_deref())
                        .is_some_and(|ip| ip.starts_with("127.0.0.1") && ip != "127.0.0.1")
            }))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    bed.script.max_unavailable.store(0, Ordering::SeqCst);
}

/// The objects of `DESCRIBE KEYSPACE ks` on one cluster: (kind, name) →
/// statement, the keyspace's own statement left out (its replication is the
/// target's by design).
async fn describe(
    session: &scylla::client::session::Session,
    ks: &str,
) -> BTreeMap<(String, String), String> {
    session
        .query_unpaged(format!("DESCRIBE KEYSPACE {ks}"), &[])
        .await
        .expect("DESCRIBE")
        .into_rows_result()
        .expect("rows")
        .rows::<(String, String, String, String)>()
        .expect("typed rows")
        .map(|r| r.expect("row"))
        .filter(|(_, kind, _, _)| kind != "keyspace")
        .map(|(_, kind, name, create)| ((kind, name), create))
        .collect()
}

/// Issue 17: the operator makes the target's schema before the roll. A
/// source keyspace with a UDT nested in a frozen collection, a counter
/// table, static columns, a DESC clustering order, a default TTL and a
/// non-default gc_grace_seconds, an SAI index and a secondary index; the
/// target has none of it. After `SchemaMatches=True` the target describes
/// every object exactly as the source does. A second migration, into a
/// target whose table has another column type, fails before the roll with
/// the difference named and no pod evicted.
#[tokio::test(flavor = "multi_thread")]
async fn the_targets_schema_is_copied_before_the_roll_and_a_difference_stops_it() {
    let cassandra = testbed::cassandra(3).expect("Cassandra test bed");
    let connect = |node: String| async move {
        scylla::client::session_builder::SessionBuilder::new()
            .known_node(node)
            .build()
            .await
            .expect("session")
    };
    let source = connect(cassandra.source_contact_points[0].clone()).await;
    let target = connect(cassandra.target_contact_points[0].clone()).await;
    let pid = std::process::id();
    let ks = format!("schema_copy_{pid}");
    for cql in [
        format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', '{}': 3}}", cassandra.source_datacenter),
        format!("CREATE TYPE {ks}.address (street text, zip int)"),
        format!("CREATE TYPE {ks}.customer (name text, addresses frozen<list<frozen<address>>>)"),
        format!(
            "CREATE TABLE {ks}.orders (shop int, id timeuuid, owner text static, who frozen<customer>, \
             places map<text, frozen<address>>, total decimal, PRIMARY KEY (shop, id)) \
             WITH CLUSTERING ORDER BY (id DESC) AND default_time_to_live = 3600 AND gc_grace_seconds = 7200"
        ),
        format!("CREATE TABLE {ks}.hits (page text PRIMARY KEY, n counter)"),
        format!("CREATE INDEX orders_total_sai ON {ks}.orders (total) USING 'sai'"),
        format!("CREATE INDEX orders_owner ON {ks}.orders (owner)"),
    ] {
        source.query_unpaged(cql.as_str(), &[]).await.unwrap_or_else(|e| panic!("{cql}: {e}"));
    }
    source.await_schema_agreement().await.expect("agreement");

    let bed = bed("ferry-schema").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    pods_on_source_nodes(&bed).await;
    let operator = start_controller_with(ns, |s| {
        s.schema_step = true;
        s.schema_recheck = Duration::from_secs(2);
    });
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    let mut copy = migration("copy");
    copy.spec.keyspaces.include = vec![ks.clone()];
    api.create(&PostParams::default(), &copy)
        .await
        .expect("create migration");
    let matches = eventually(120, "SchemaMatches=True", || async {
        let cm = api.get("copy").await.ok()?;
        let c = condition_of(&cm, "SchemaMatches")?;
        (c.0 == "True").then_some(c)
    })
    .await;
    assert_eq!(matches.1, "Copied", "{matches:?}");
    let on_source = describe(&source, &ks).await;
    let on_target = describe(&target, &ks).await;
    assert!(on_source.len() >= 6, "{on_source:#?}");
    assert_eq!(
        on_target, on_source,
        "the target describes every object as the source does"
    );
    let (repl,): (BTreeMap<String, String>,) = target
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (ks.as_str(),),
        )
        .await
        .expect("replication")
        .into_rows_result()
        .expect("rows")
        .single_row()
        .expect("row");
    assert_eq!(
        repl.get(&cassandra.target_datacenter).map(String::as_str),
        Some("1"),
        "the target's own data center, RF = min(3, nodes): {repl:?}"
    );
    assert!(!repl.contains_key(&cassandra.source_datacenter), "{repl:?}");
    wait_for_phase(&api, "copy", Phase::Ready, 120).await;
    // The proxies are told to follow schema changes, with the target's
    // replication for a new keyspace.
    let runtime: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let runtime = runtime
        .get(&labels::peer_map_name("copy"))
        .await
        .expect("runtime ConfigMap");
    let runtime: serde_json::Value =
        serde_json::from_str(&runtime.data.expect("data")[labels::PEER_MAP_KEY])
            .expect("runtime JSON");
    assert_eq!(runtime["mirrorDdl"], serde_json::json!(true), "{runtime}");
    assert!(
        runtime["targetReplication"]
            .as_str()
            .is_some_and(|r| r.contains(&cassandra.target_datacenter)),
        "{runtime}"
    );
    // A table created on the source around the proxies after the roll is
    // created on the target too, and said so.
    let late = format!("CREATE TABLE {ks}.late (k int PRIMARY KEY, v text) WITH comment = 'late'");
    source
        .query_unpaged(late.as_str(), &[])
        .await
        .expect("late table");
    source.await_schema_agreement().await.expect("agreement");
    let followed = eventually(60, "the late table followed", || async {
        let cm = api.get("copy").await.ok()?;
        let schema = cm.status?.schema?;
        schema
            .followed
            .iter()
            .any(|f| f.contains(&format!("{ks}.late")))
            .then_some(schema.followed)
    })
    .await;
    assert_eq!(
        describe(&target, &ks).await,
        describe(&source, &ks).await,
        "the target describes the late table as the source does: {followed:?}"
    );
    api.delete("copy", &DeleteParams::default())
        .await
        .expect("delete");
    migration_gone(client, ns, "copy", 180).await;

    // A target table that differs: the roll never starts.
    let diff = format!("schema_diff_{pid}");
    for (session, v) in [(&source, "text"), (&target, "int")] {
        for cql in [
            format!("CREATE KEYSPACE {diff} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            format!("CREATE TABLE {diff}.t (k int PRIMARY KEY, v {v})"),
        ] {
            session.query_unpaged(cql.as_str(), &[]).await.unwrap_or_else(|e| panic!("{cql}: {e}"));
        }
    }
    let uids = |pods: Vec<Pod>| pods.iter().filter_map(|p| p.uid()).collect::<BTreeSet<_>>();
    let before = uids(source_pods(client, ns).await);
    let mut refused = migration("diff");
    refused.spec.keyspaces.include = vec![diff.clone()];
    api.create(&PostParams::default(), &refused)
        .await
        .expect("create migration");
    let failed = eventually(120, "Failed for SchemaMismatch", || async {
        let cm = api.get("diff").await.ok()?;
        let c = condition_of(&cm, "Failed")?;
        (c.0 == "True").then_some(c)
    })
    .await;
    assert_eq!(failed.1, "SchemaMismatch", "{failed:?}");
    assert!(
        failed.2.contains(&format!("{diff}.t")) && failed.2.contains("`v`"),
        "{failed:?}"
    );
    assert_eq!(
        uids(source_pods(client, ns).await),
        before,
        "no pod was evicted"
    );
    operator.abort();
}

/// The cass-operator (and K8ssandra) layout: one StatefulSet per rack,
/// here two racks in dc1 and one in dc2, with its labels, its headless and
/// seed Services. The migration names the cluster by label
/// (`source.selector`); the roll takes one pod down at a time across all
/// three StatefulSets, the budget spans the racks, the peer map covers every
/// pod, and a StatefulSet of another cluster in the namespace is never
/// touched. Deleting the migration takes every proxy out again.
#[tokio::test(flavor = "multi_thread")]
async fn a_cass_operator_cluster_rolls_across_its_racks_and_data_centers() {
    const CLUSTER: &str = "cassandra.datastax.com/cluster";
    const DC: &str = "cassandra.datastax.com/datacenter";
    const RACK: &str = "cassandra.datastax.com/rack";
    let bed = bare_bed("ferry-racks").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    // (StatefulSet, cluster, dc, rack, its pod's IP)
    let layout = [
        ("demo-dc1-r1-sts", "demo", "dc1", "r1", "127.0.0.64"),
        ("demo-dc1-r2-sts", "demo", "dc1", "r2", "127.0.0.65"),
        ("demo-dc2-r1-sts", "demo", "dc2", "r1", "127.0.0.66"),
        ("other-dc1-r1-sts", "other", "dc1", "r1", "127.0.0.68"),
    ];
    bed.script
        .expected_pods
        .store(layout.len(), Ordering::SeqCst);
    for (sts, ..) in &layout {
        let pod = format!("{sts}-0");
        let ip = layout
            .iter()
            .find(|l| l.0 == *sts)
            .map(|l| l.4)
            .unwrap_or_default();
        bed.script
            .ip_of
            .lock()
            .expect("ip map")
            .insert(pod, ip.to_owned());
    }
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), ns);
    for (name, selector) in [
        (
            "demo-dc1-all-pods-service",
            json!({CLUSTER: "demo", DC: "dc1"}),
        ),
        (
            "demo-dc2-all-pods-service",
            json!({CLUSTER: "demo", DC: "dc2"}),
        ),
        (
            "demo-seed-service",
            json!({CLUSTER: "demo", "cassandra.datastax.com/seed-node": "true"}),
        ),
    ] {
        let svc = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {CLUSTER: "demo"}},
            "spec": {"clusterIP": "None", "selector": selector,
                     "ports": [{"name": "native", "port": 9042}]},
        }))
        .expect("service");
        services
            .create(&PostParams::default(), &svc)
            .await
            .expect("create service");
    }
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    for (name, cluster, dc, rack, _) in &layout {
        let labels = json!({CLUSTER: cluster, DC: dc, RACK: rack,
                            "app.kubernetes.io/managed-by": "cass-operator"});
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 1, "serviceName": format!("{cluster}-{dc}-all-pods-service"),
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {CLUSTER: cluster, DC: dc, RACK: rack}},
                "template": {"metadata": {"labels": labels},
                             "spec": {"nodeSelector": {NO_NODE_LABEL: "true"},
                                      "containers": [{"name": "cassandra", "image": "cassandra:test"}]}},
            },
        }))
        .expect("sts");
        sts_api
            .create(&PostParams::default(), &sts)
            .await
            .expect("create sts");
    }
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let cluster_pods = |cluster: &'static str| {
        let pods_api = pods_api.clone();
        async move {
            pods_api
                .list(&ListParams::default().labels(&format!("{CLUSTER}={cluster}")))
                .await
                .expect("list pods")
                .items
        }
    };
    eventually(60, "4 Ready pods", || async {
        let pods = pods_api.list(&ListParams::default()).await.ok()?.items;
        (pods.len() == layout.len() && pods.iter().all(sidecar::pod_ready)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    bed.script.max_unavailable.store(0, Ordering::SeqCst);

    let operator = start_controller(ns);
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    let mut mig = migration("racks");
    mig.spec.source.stateful_set = String::new();
    mig.spec.source.selector = Some(BTreeMap::from([(CLUSTER.to_owned(), "demo".to_owned())]));
    api.create(&PostParams::default(), &mig)
        .await
        .expect("create migration");
    wait_for_phase(&api, "racks", Phase::Ready, 180).await;

    let status = api
        .get("racks")
        .await
        .expect("migration")
        .status
        .expect("status");
    assert_eq!(
        status.source_stateful_sets,
        vec!["demo-dc1-r1-sts", "demo-dc1-r2-sts", "demo-dc2-r1-sts"]
    );
    assert_eq!(status.sidecars.len(), 3, "{:?}", status.sidecars);
    assert!(
        bed.script.max_unavailable.load(Ordering::SeqCst) <= 1,
        "more than one pod down at once across the racks: {:?}",
        bed.script.trace.lock().map(|t| t.clone())
    );
    let demo = cluster_pods("demo").await;
    assert_eq!(demo.len(), 3);
    for pod in &demo {
        assert!(
            sidecar::has_sidecar(pod),
            "{} lacks the proxy",
            pod.name_any()
        );
    }
    for pod in cluster_pods("other").await {
        assert!(
            !sidecar::has_sidecar(&pod),
            "{} is another cluster's and got the proxy",
            pod.name_any()
        );
    }
    // Every pod of every rack is in the peer map.
    let runtime = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&labels::peer_map_name("racks"))
        .await
        .expect("runtime ConfigMap");
    let runtime: serde_json::Value =
        serde_json::from_str(&runtime.data.expect("data")[labels::PEER_MAP_KEY]).expect("JSON");
    let mapped: BTreeSet<String> = runtime["peers"]
        .as_object()
        .expect("peers")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        mapped,
        BTreeSet::from(["127.0.0.64", "127.0.0.65", "127.0.0.66"].map(String::from)),
        "{runtime}"
    );
    // One budget over the whole cluster (what its racks share).
    let pdb =
        Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(client.clone(), ns)
            .get("racks-source-ferry")
            .await
            .expect("the migration's budget");
    let spec = pdb.spec.expect("pdb spec");
    assert_eq!(
        spec.selector.and_then(|s| s.match_labels),
        Some(BTreeMap::from([(CLUSTER.to_owned(), "demo".to_owned())]))
    );
    assert_eq!(
        spec.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    // cass-operator makes a budget per data center (`<dc>-pdb`, minAvailable
    // size - 1, the data center's labels). With Ferry's over the cluster as
    // well, every pod would have two budgets and the Eviction API refuse it
    // for good (a 500): Ferry's gives way, and the removal below goes on
    // under cass-operator's.
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    for (dc, min_available) in [("dc1", 1), ("dc2", 0)] {
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": format!("{dc}-pdb"), "labels": {
                CLUSTER: "demo", DC: dc, "app.kubernetes.io/managed-by": "cass-operator"}},
            "spec": {"minAvailable": min_available,
                     "selector": {"matchLabels": {CLUSTER: "demo", DC: dc}}},
        }))
        .expect("pdb");
        budgets
            .create(&PostParams::default(), &pdb)
            .await
            .expect("create cass-operator's budget");
    }
    only_budgets(client, ns, &["dc1-pdb", "dc2-pdb"], 60).await;

    // Deleting it takes every proxy out, one pod at a time.
    bed.script.max_unavailable.store(0, Ordering::SeqCst);
    api.delete("racks", &DeleteParams::default())
        .await
        .expect("delete");
    migration_gone(client, ns, "racks", 180).await;
    assert!(cluster_pods("demo")
        .await
        .iter()
        .all(|p| !sidecar::has_sidecar(p)));
    assert!(bed.script.max_unavailable.load(Ordering::SeqCst) <= 1);
    operator.abort();
}

/// Issue 14 §2: validation goes on after `Ready`. Scheduled checks (a
/// sample, no repair) run every `validation.scheduleMinutes` (a minute is
/// 300 ms here); a clean one keeps `Validated=True`; one that finds
/// differences sends the migration back to `Validating` (`Ready=False`,
/// the examples in `status.scheduledValidation.lastResult`), and the full
/// validation that follows brings it back to `Ready`.
#[tokio::test(flavor = "multi_thread")]
async fn a_difference_found_after_ready_sends_the_migration_back_to_validation() {
    let bed = bed("ferry-check").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    let operator = start_controller_with(ns, |s| {
        s.schedule_minute = Duration::from_millis(300);
    });
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    let mut mig = migration("chk");
    mig.spec.validation.schedule_minutes = 2;
    api.create(&PostParams::default(), &mig)
        .await
        .expect("create migration");
    wait_for_phase(&api, "chk", Phase::Ready, 120).await;
    // Clean checks: Ready stays, Validated says so.
    let clean = eventually(60, "two clean scheduled checks", || async {
        let status = api.get("chk").await.ok()?.status?;
        let checks = status.scheduled_validation.clone()?;
        let validated = status.conditions.iter().find(|c| c.type_ == "Validated")?;
        (checks.runs >= 2
            && checks.job.is_none()
            && validated.reason == "ScheduledCheckClean"
            && status.phase == Phase::Ready)
            .then_some(checks)
    })
    .await;
    assert_eq!(clean.last_result.as_ref().map(|r| r.mismatched), Some(0));
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    assert!(
        jobs.get_opt(&labels::check_job_name("chk", 1))
            .await
            .expect("get")
            .is_none()
            || jobs
                .get("chk-check-1")
                .await
                .map(|j| j.metadata.deletion_timestamp.is_some())
                .unwrap_or(true),
        "an old check's Job is removed when the next starts"
    );
    // Checks start every 600 ms here and each removes the one before, so
    // read whichever check Job exists now (they are all built alike).
    let check = eventually(30, "a check Job", || async {
        let listed = jobs.list(&ListParams::default()).await.ok()?;
        listed.items.into_iter().find(|j| {
            j.metadata.deletion_timestamp.is_none()
                && j.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("chk-check-"))
        })
    })
    .await;
    let env: BTreeSet<String> = check
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| format!("{}={}", e.name, e.value.clone().unwrap_or_default()))
        .collect();
    for want in ["FERRY_VALIDATE_MODE=sample", "FERRY_SAMPLE_PERCENT=10"] {
        assert!(env.contains(want), "check Job env lacks {want}: {env:?}");
    }
    assert!(
        !env.iter().any(|e| e.starts_with("FERRY_REPAIR")),
        "checks never repair: {env:?}"
    );

    // A check finds differences: back to Validating, then Ready again
    // once the full validation passes.
    bed.script.check_differences.store(true, Ordering::SeqCst);
    let found = eventually(60, "the migration back in Validating", || async {
        let status = api.get("chk").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (status.phase == Phase::Validating && ready.status == "False").then_some(status)
    })
    .await;
    bed.script.check_differences.store(false, Ordering::SeqCst);
    let last = found
        .scheduled_validation
        .and_then(|c| c.last_result)
        .expect("the check's result");
    // Summed over the check Job's two pods (backfill.parallelism).
    assert_eq!((last.missing, last.mismatched), (2, 4));
    assert!(
        last.examples
            .get("mismatched")
            .is_some_and(|e| e.iter().any(|k| k.contains("id=7"))),
        "{last:?}"
    );
    eventually(60, "Ready again after the full validation", || async {
        let status = api.get("chk").await.ok()?.status?;
        let validated = status.conditions.iter().find(|c| c.type_ == "Validated")?;
        (status.phase == Phase::Ready && validated.status == "True").then_some(())
    })
    .await;
    let phases: Vec<Phase> = api
        .get("chk")
        .await
        .expect("migration")
        .status
        .expect("status")
        .phase_history
        .iter()
        .map(|t| t.phase)
        .collect();
    assert_eq!(
        &phases[phases.len() - 3..],
        [Phase::Ready, Phase::Validating, Phase::Ready],
        "{phases:?}"
    );
    operator.abort();
}

/// Issue 14 §4: a migration in a namespace that enforces the `restricted`
/// Pod Security Standard (with `proxy.redirect: port`, as the docs say):
/// the API server admits every pod the webhook injected and every Job pod,
/// so the roll and the Jobs run and the migration reaches `Ready`. The
/// namespace's enforcement is checked first: a pod without a seccomp
/// profile is refused there.
#[tokio::test(flavor = "multi_thread")]
async fn a_migration_runs_in_a_namespace_that_enforces_the_restricted_standard() {
    let bed = bare_bed("ferry-restricted").await;
    let (client, ns) = (&bed.client, bed.ns.name.as_str());
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}})),
        )
        .await
        .expect("label the namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lax: Pod = serde_json::from_value(json!({
        "metadata": {"name": "lax"},
        "spec": {"nodeSelector": {NO_NODE_LABEL: "true"},
                 "containers": [{"name": "c", "image": "x"}]},
    }))
    .expect("pod");
    let refused = pods
        .create(&PostParams::default(), &lax)
        .await
        .expect_err("the namespace enforces restricted");
    assert!(refused.to_string().contains("restricted"), "{refused}");

    // The source, itself as restricted asks.
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": STS},
        "spec": {
            "replicas": REPLICAS, "serviceName": STS, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": STS}},
            "template": {"metadata": {"labels": {"app": STS}},
                         "spec": {"nodeSelector": {NO_NODE_LABEL: "true"},
                                  "securityContext": {"runAsNonRoot": true, "runAsUser": 999,
                                                      "seccompProfile": {"type": "RuntimeDefault"}},
                                  "containers": [{"name": "cassandra", "image": "cassandra:test",
                                                  "securityContext": {"allowPrivilegeEscalation": false,
                                                                      "capabilities": {"drop": ["ALL"]}}}]}},
        },
    }))
    .expect("sts");
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sts)
        .await
        .expect("create sts");
    eventually(60, "3 Ready source pods", || async {
        let pods = source_pods(client, ns).await;
        (pods.len() == REPLICAS && pods.iter().all(sidecar::pod_ready)).then_some(())
    })
    .await;

    let operator = start_controller(ns);
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), ns);
    let mig = migration("strict");
    assert_eq!(
        mig.spec.proxy.redirect,
        ferry_operator::crd::TrafficRedirect::Port
    );
    api.create(&PostParams::default(), &mig)
        .await
        .expect("create migration");
    wait_for_phase(&api, "strict", Phase::Ready, 180).await;
    for pod in source_pods(client, ns).await {
        assert!(
            sidecar::has_sidecar(&pod),
            "{} admitted with its proxy",
            pod.name_any()
        );
    }
    // The Jobs' pods were admitted too (the fake kubelet finished them).
    let job_pods = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name"))
        .await
        .expect("job pods")
        .items;
    assert!(
        job_pods.len() >= 2,
        "backfill and validation pods ran: {}",
        job_pods.len()
    );
    operator.abort();
}
