//! The local node is real: pods scheduled by kube-scheduler are started by
//! the kubelet through containerd and runc, get an address on the CNI bridge,
//! resolve each other through the cluster DNS, reach Services through
//! kube-proxy, and a Cassandra StatefulSet built from the locally built image
//! answers CQL from the host at its pod IP.

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_e2e::kube_client::{self, TestNamespace};
use ferry_e2e::testbed::{self, Testbed};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use scylla::client::session_builder::SessionBuilder;
use serde_json::json;

/// The node's pod network (node.sh).
const POD_NETWORK_PREFIX: &str = "10.244.0.";

/// Creates an object, retrying while the new namespace's default
/// ServiceAccount does not exist yet (pods are refused until it does).
async fn create<K>(api: &Api<K>, object: serde_json::Value) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let object: K = serde_json::from_value(object).expect("valid object");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match api.create(&PostParams::default(), &object).await {
            Ok(created) => return created,
            Err(e) if Instant::now() < deadline && e.to_string().contains("serviceaccount") => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("creating {object:?}: {e}"),
        }
    }
}

/// Polls the pod until `ok` holds; on timeout, panics with its status and
/// the namespace's events.
async fn wait_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&Pod) -> bool,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < timeout {
        if let Ok(Some(pod)) = pods.get_opt(name).await {
            if ok(&pod) {
                eprintln!(
                    "pod {namespace}/{name} {what} after {:?}",
                    started.elapsed()
                );
                return pod;
            }
            last = Some(pod);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), namespace);
    let events = events
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|e| {
                    format!(
                        "{} {}: {}",
                        e.involved_object.name.clone().unwrap_or_default(),
                        e.reason.clone().unwrap_or_default(),
                        e.message.clone().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    panic!(
        "pod {namespace}/{name} not {what} after {timeout:?}; status: {:?}\nevents:\n{events}",
        last.and_then(|p| p.status)
    );
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a running pod has an IP")
}

/// `kubectl exec` in a pod; returns (success, stdout + stderr).
fn exec(bed: &Testbed, namespace: &str, pod: &str, command: &[&str]) -> (bool, String) {
    let out = Command::new(bed.bin_dir.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&bed.kubeconfig)
        .args(["-n", namespace, "exec", pod, "--"])
        .args(command)
        .output()
        .expect("running kubectl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Deletes namespaces this file's tests left behind (a failed run, or a
/// drop that did not finish) once they are older than ten minutes: their
/// pods would otherwise keep running on the node.
async fn delete_stale_namespaces(client: &Client, prefix: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let Ok(list) = api.list(&ListParams::default()).await else {
        return;
    };
    let now = std::time::SystemTime::now();
    for ns in list.items {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let old = ns
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| now.duration_since(std::time::SystemTime::from(t.0)).ok())
            .is_some_and(|age| age > Duration::from_secs(600));
        if name.starts_with(prefix) && old {
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
    }
}

/// Deletes the namespace now and waits for the request (the drop of
/// `TestNamespace` is best effort when the runtime is shutting down).
async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_from_a_local_image_runs_on_the_node() {
    let bed = testbed::node().expect("test bed with a node");
    let client = kube_client::client(&bed.kubeconfig).await.expect("client");
    delete_stale_namespaces(&client, "ferry-node-pod-").await;
    let ns = TestNamespace::create(&client, "ferry-node-pod")
        .await
        .expect("namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    create(
        &pods,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "pause"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "pause", "image": "ferry.dev/pause:dev", "imagePullPolicy": "Never",
                    "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}
                }]
            }
        }),
    )
    .await;
    let pod = wait_pod(
        &client,
        &ns.name,
        "pause",
        Duration::from_secs(120),
        "Running",
        is_running,
    )
    .await;
    let ip = pod_ip(&pod);
    assert!(
        ip.starts_with(POD_NETWORK_PREFIX),
        "pod IP {ip} outside the node's pod network"
    );
    assert!(pod.spec.and_then(|s| s.node_name).is_some());
    delete_namespace(&client, &ns.name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cassandra_statefulset_becomes_ready_and_answers_cql() {
    let bed = testbed::node().expect("test bed with a node");
    let client = kube_client::client(&bed.kubeconfig).await.expect("client");
    delete_stale_namespaces(&client, "ferry-node-cass-").await;
    let ns = TestNamespace::create(&client, "ferry-node-cass")
        .await
        .expect("namespace");
    let namespace = ns.name.clone();
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let labels = json!({"app": "cass"});
    // The headless Service gives each pod a DNS name (seeds use it); the
    // ClusterIP Service goes through kube-proxy.
    create(
        &services,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "cass"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true, "selector": labels,
                "ports": [{"name": "cql", "port": 9042}, {"name": "gossip", "port": 7000}]}
        }),
    )
    .await;
    create(
        &services,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "cass-cql"},
            "spec": {"selector": labels, "ports": [{"name": "cql", "port": 9042}]}
        }),
    )
    .await;
    let seed = format!("cass-0.cass.{namespace}.svc.cluster.local");
    create(
        &sets,
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "cass"},
            "spec": {
                "serviceName": "cass", "replicas": 1, "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 10,
                        "containers": [{
                            "name": "cassandra", "image": "ferry.dev/cassandra:dev",
                            "imagePullPolicy": "Never",
                            "env": [
                                {"name": "CASSANDRA_CLUSTER_NAME", "value": "ferry-node-test"},
                                {"name": "CASSANDRA_SEEDS", "value": seed},
                                {"name": "CASSANDRA_DC", "value": "node-dc"},
                                {"name": "CASSANDRA_RACK", "value": "rack1"},
                                {"name": "CASSANDRA_NUM_TOKENS", "value": "8"},
                                {"name": "MAX_HEAP_SIZE", "value": "512M"},
                                {"name": "HEAP_NEWSIZE", "value": "128M"},
                                {"name": "JVM_EXTRA_OPTS", "value": "-XX:ActiveProcessorCount=2 -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=2000 -Dcassandra.superuser_setup_delay_ms=0"},
                                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                            ],
                            "ports": [{"containerPort": 9042, "name": "cql"}, {"containerPort": 7000, "name": "gossip"}],
                            "readinessProbe": {"tcpSocket": {"port": 9042}, "periodSeconds": 3},
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/cassandra"}]
                        }],
                        "volumes": [{"name": "data", "emptyDir": {}}]
                    }
                }
            }
        }),
    )
    .await;

    let pod = wait_pod(
        &client,
        &namespace,
        "cass-0",
        Duration::from_secs(360),
        "Ready",
        is_ready,
    )
    .await;
    let ip = pod_ip(&pod);
    assert!(
        ip.starts_with(POD_NETWORK_PREFIX),
        "pod IP {ip} outside the node's pod network"
    );

    // From the host, through the bridge, at the pod IP.
    let session = SessionBuilder::new()
        .known_node(format!("{ip}:9042"))
        .build()
        .await
        .unwrap_or_else(|e| panic!("connecting to {ip}:9042: {e}"));
    let rows = session
        .query_unpaged("SELECT cluster_name, data_center FROM system.local", &[])
        .await
        .expect("system.local")
        .into_rows_result()
        .expect("rows");
    let (cluster, dc): (String, String) = rows.single_row().expect("one row");
    assert_eq!(
        (cluster.as_str(), dc.as_str()),
        ("ferry-node-test", "node-dc")
    );
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS node_probe WITH replication = {'class': 'NetworkTopologyStrategy', 'node-dc': 1}",
            &[],
        )
        .await
        .expect("create keyspace");
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS node_probe.kv (k text PRIMARY KEY, v text)",
            &[],
        )
        .await
        .expect("create table");
    session
        .query_unpaged(
            "INSERT INTO node_probe.kv (k, v) VALUES (?, ?)",
            ("k", &namespace),
        )
        .await
        .expect("insert");
    let rows = session
        .query_unpaged("SELECT v FROM node_probe.kv WHERE k = ?", ("k",))
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let (v,): (String,) = rows.single_row().expect("one row");
    assert_eq!(v, namespace);

    // From the host to a ClusterIP (what the API server does to call a
    // webhook Service): kube-proxy's OUTPUT rules, the route to the bridge.
    let cluster_ip = services
        .get("cass-cql")
        .await
        .expect("service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((cluster_ip.as_str(), 9042)),
    )
    .await
    .unwrap_or_else(|_| panic!("connecting to Service cass-cql at {cluster_ip}:9042 timed out"))
    .unwrap_or_else(|e| panic!("connecting to Service cass-cql at {cluster_ip}:9042: {e}"));

    // Inside the pod network: cluster DNS names and Services (kube-proxy),
    // including the API server's `kubernetes` Service.
    let (ok, out) = exec(&bed, &namespace, "cass-0", &["nslookup", &seed]);
    assert!(ok && out.contains(&ip), "nslookup {seed}: {out}");
    for (host, port) in [
        (format!("cass-cql.{namespace}.svc.cluster.local"), "9042"),
        ("kubernetes.default.svc.cluster.local".to_owned(), "443"),
    ] {
        connect_from_pod(&bed, &namespace, "cass-0", &host, port);
    }
    delete_namespace(&client, &namespace).await;
}

/// Asserts that `host:port` answers a TCP connection from inside the pod
/// within a minute. One attempt is not enough on this 2-core machine: a CI
/// run saw a single `nc -w 5` time out right after a long test had loaded
/// it, and the failure could not tell a slow DNS answer from a missing
/// kube-proxy rule. So attempts repeat until the deadline, and a failure
/// reports the name's resolution and the node's logs, which do tell.
fn connect_from_pod(bed: &Testbed, namespace: &str, pod: &str, host: &str, port: &str) {
    // busybox nc: connects, sends nothing, exits 0 when the port answered;
    // -w bounds the name lookup and the connect together.
    let probe = format!("nc -w 10 {host} {port} </dev/null");
    let started = Instant::now();
    let mut failures = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        let (ok, out) = exec(bed, namespace, pod, &["sh", "-c", &probe]);
        if ok {
            if !failures.is_empty() {
                eprintln!(
                    "{probe} in {pod} answered after {:?}; earlier attempts: {failures:?}",
                    started.elapsed()
                );
            }
            return;
        }
        failures.push(format!("at {:?}: {}", started.elapsed(), out.trim()));
        std::thread::sleep(Duration::from_secs(2));
    }
    let (_, lookup) = exec(bed, namespace, pod, &["nslookup", host]);
    let node_logs = testbed::run_dir().join("node");
    let tail = |log: &str| {
        let text = std::fs::read_to_string(node_logs.join(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    panic!(
        "{probe} in {pod} failed for {:?}: {failures:#?}\nnslookup {host}:\n{lookup}\n\
         coredns.log:\n{}\nproxy.log:\n{}",
        started.elapsed(),
        tail("coredns.log"),
        tail("proxy.log"),
    );
}
