//! The generated CRD on the real API server: a valid example is accepted and
//! every kind of bad spec is refused with a message that says what is wrong.

use ferry_e2e::kube_client::{self, TestNamespace};
use ferry_e2e::testbed;
use ferry_operator::crd::CassandraMigration;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

fn example() -> Value {
    let path = testbed::repo_root().join("manifests/examples/cassandramigration.yaml");
    let text = std::fs::read_to_string(&path).expect("example manifest");
    serde_yaml::from_str(&text).expect("example is YAML")
}

/// Sets `pointer` (JSON pointer) in a copy of the example to `value`.
fn with(pointer: &str, value: Value) -> Value {
    let mut doc = example();
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let slot = doc
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("example lacks {parent}"));
    if value.is_null() {
        slot.remove(key);
    } else {
        slot.insert(key.to_owned(), value);
    }
    doc
}

async fn setup() -> (kube::Client, TestNamespace) {
    let bed = testbed::kubernetes().expect("test bed");
    let client = kube_client::client(&bed.kubeconfig)
        .await
        .expect("kube client");
    kube_client::install_crd(
        &client,
        &testbed::repo_root().join("crds/cassandramigrations.ferry.dev.yaml"),
    )
    .await
    .expect("install CRD");
    let ns = TestNamespace::create(&client, "ferry-crd")
        .await
        .expect("namespace");
    (client, ns)
}

/// Creates the document as it is, untyped, so the API server (not serde) is
/// what judges it.
async fn create(api: &Api<CassandraMigration>, doc: Value, name: &str) -> Result<(), String> {
    let mut doc = doc;
    doc["metadata"]["name"] = json!(name);
    let namespace = api.namespace().unwrap_or("default").to_owned();
    let resource = ApiResource::erase::<CassandraMigration>(&());
    let dynamic: Api<DynamicObject> =
        Api::namespaced_with(api.clone().into_client(), &namespace, &resource);
    let object: DynamicObject = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    dynamic
        .create(&PostParams::default(), &object)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_example_is_accepted_and_defaults_are_filled() {
    let (client, ns) = setup().await;
    let api: Api<CassandraMigration> = Api::namespaced(client, &ns.name);
    create(&api, example(), "valid")
        .await
        .expect("valid example accepted");
    let stored = api.get("valid").await.expect("read back");
    assert_eq!(stored.spec.source.stateful_set, "cassandra");
    assert_eq!(stored.spec.backfill.splits, 64);
    // A minimal spec gets the documented defaults from the API server.
    let minimal = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "CassandraMigration",
        "metadata": {"name": "minimal"},
        "spec": {"source": {"statefulSet": "cassandra"},
                 "target": {"contactPoints": ["10.0.0.1:9042"], "localDatacenter": "dc1"}}
    });
    create(&api, minimal, "minimal")
        .await
        .expect("minimal spec accepted");
    let stored = api.get("minimal").await.expect("read back");
    assert_eq!(stored.spec.proxy.listen_port, 29042);
    assert_eq!(stored.spec.source.cql_port, 9042);
    assert_eq!(stored.spec.backfill.splits, 256);
    // A source of several StatefulSets (cass-operator: one per rack), by
    // name or by label.
    for (name, source) in [
        (
            "racks",
            json!({"statefulSets": ["demo-dc1-r1-sts", "demo-dc1-r2-sts"]}),
        ),
        (
            "labelled",
            json!({"selector": {"cassandra.datastax.com/cluster": "demo"}}),
        ),
    ] {
        let spec = json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "CassandraMigration",
            "metadata": {"name": name},
            "spec": {"source": source,
                     "target": {"contactPoints": ["10.0.0.1:9042"], "localDatacenter": "dc1"}}
        });
        create(&api, spec, name)
            .await
            .unwrap_or_else(|e| panic!("{name} refused: {e}"));
    }
    // A TLS source is accepted when the proxy serves TLS too, or when
    // clients connect to the proxy's own port.
    for (name, proxy) in [
        ("tls-proxy", json!({"tlsSecret": {"name": "node-tls"}})),
        ("tls-port", json!({"redirect": "port"})),
    ] {
        let spec = json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "CassandraMigration",
            "metadata": {"name": name},
            "spec": {"source": {"statefulSet": "cassandra", "tlsSecret": {"name": "source-ca"}},
                     "target": {"contactPoints": ["10.0.0.1:9042"], "localDatacenter": "dc1"},
                     "proxy": proxy}
        });
        create(&api, spec, name)
            .await
            .unwrap_or_else(|e| panic!("{name} refused: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_specs_are_refused_with_clear_messages() {
    let (client, ns) = setup().await;
    let api: Api<CassandraMigration> = Api::namespaced(client, &ns.name);
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "empty-target",
            with("/spec/target/contactPoints", json!([])),
            &["spec.target.contactPoints", "at least 1"],
        ),
        (
            "negative-rate",
            with("/spec/backfill/rowsPerSecond", json!(-5)),
            &["spec.backfill.rowsPerSecond", "greater than or equal to 1"],
        ),
        (
            "sample-over-100",
            with(
                "/spec/validation",
                json!({"mode": "sample", "samplePercent": 101}),
            ),
            &["spec.validation.samplePercent", "less than or equal to 100"],
        ),
        (
            "sample-without-percent",
            with("/spec/validation", json!({"mode": "sample"})),
            &["samplePercent is required when validation.mode is sample"],
        ),
        (
            "system-keyspace",
            with("/spec/keyspaces/include", json!(["orders", "system_auth"])),
            &["system keyspaces are never migrated"],
        ),
        (
            "source-tls-without-proxy-tls",
            with("/spec/source/tlsSecret", json!({"name": "source-ca"})),
            &["source.tlsSecret with proxy.redirect iptables needs proxy.tlsSecret"],
        ),
        (
            "dse-keyspace",
            with("/spec/keyspaces/include", json!(["solr_admin"])),
            &["system keyspaces are never migrated"],
        ),
        (
            "splits-below-parallelism",
            with("/spec/backfill", json!({"parallelism": 8, "splits": 4})),
            &["backfill.splits must be at least backfill.parallelism"],
        ),
        (
            "contact-point-port-out-of-range",
            with("/spec/target/contactPoints", json!(["10.0.0.1:70000"])),
            &["port between 1 and 65535"],
        ),
        (
            "contact-point-without-port",
            with("/spec/target/contactPoints", json!(["cassandra-target"])),
            &["spec.target.contactPoints[0]", "should match"],
        ),
        (
            "bad-write-mode",
            with("/spec/proxy/writeMode", json!("eventually")),
            &["spec.proxy.writeMode", "Unsupported value"],
        ),
        (
            "missing-statefulset",
            with("/spec/source/statefulSet", Value::Null),
            &["exactly one of statefulSet, statefulSets or selector"],
        ),
        (
            "two-source-forms",
            with(
                "/spec/source/selector",
                json!({"cassandra.datastax.com/cluster": "demo"}),
            ),
            &["exactly one of statefulSet, statefulSets or selector"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, doc, wanted) in cases {
        match create(&api, doc, name).await {
            Ok(()) => failures.push(format!("{name}: accepted, should be refused")),
            Err(message) => {
                for w in wanted {
                    if !message.contains(w) {
                        failures.push(format!("{name}: message lacks `{w}`: {message}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn source_and_target_are_immutable() {
    let (client, ns) = setup().await;
    let api: Api<CassandraMigration> = Api::namespaced(client, &ns.name);
    create(&api, example(), "immutable").await.expect("created");
    let patch = json!({"spec": {"source": {"statefulSet": "other"}}});
    let err = api
        .patch("immutable", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("changing the source must be refused");
    assert!(err.to_string().contains("source is immutable"), "{err}");
    let patch = json!({"spec": {"target": {"localDatacenter": "dc2"}}});
    let err = api
        .patch("immutable", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("changing the target must be refused");
    assert!(err.to_string().contains("target is immutable"), "{err}");
    // The selection and the way clients reach the proxies are fixed too.
    for (patch, message) in [
        (
            json!({"spec": {"keyspaces": {"include": ["ferry_demo", "more"]}}}),
            "keyspaces and tables are immutable",
        ),
        (
            json!({"spec": {"tables": {"exclude": ["ferry_demo.audit"]}}}),
            "keyspaces and tables are immutable",
        ),
        (
            json!({"spec": {"proxy": {"listenPort": 29043}}}),
            "proxy.listenPort is immutable",
        ),
        (
            json!({"spec": {"proxy": {"redirect": "port"}}}),
            "proxy.redirect is immutable",
        ),
    ] {
        let err = api
            .patch("immutable", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("must be refused");
        assert!(err.to_string().contains(message), "{patch}: {err}");
    }
    // What may change does: the write mode (at run time), and the proxy's
    // image and resources (the operator rolls the proxies again).
    let patch =
        json!({"spec": {"proxy": {"writeMode": "async", "image": "ferry.dev/ferry-sidecar:v2"}}});
    api.patch("immutable", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("write mode and image may change");
}

/// A test that ends while its migration still carries Ferry's finalizer
/// leaves a namespace that never finishes terminating: no operator is left
/// to run the clean-up. Every such namespace stays in the bed's etcd, and the
/// next operator that `helm install` starts (make e2e, make demo, CI)
/// reconciles it for ever. The sweep of stale test namespaces must let them
/// go.
#[tokio::test(flavor = "multi_thread")]
async fn a_test_namespace_stuck_on_a_finalizer_is_released() {
    let (client, ns) = setup().await;
    let api: Api<CassandraMigration> = Api::namespaced(client.clone(), &ns.name);
    let mut doc = example();
    doc["metadata"]["finalizers"] = json!(["ferry.dev/cleanup"]);
    create(&api, doc, "orphan")
        .await
        .expect("migration created");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns.name, &Default::default())
        .await
        .expect("namespace deleted");
    // With no operator running, the finalizer holds the namespace: the
    // namespace controller marks the migration deleted and waits.
    let mut marked = false;
    for _ in 0..60 {
        let stuck = api
            .get("orphan")
            .await
            .expect("the migration is still there");
        if stuck.metadata.deletion_timestamp.is_some() {
            marked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    assert!(marked, "the namespace's deletion reached the migration");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        namespaces
            .get_opt(&ns.name)
            .await
            .expect("read namespace")
            .is_some(),
        "the finalizer holds the namespace"
    );

    kube_client::release_stuck(&client, &ns.name).await;

    for _ in 0..60 {
        if namespaces
            .get_opt(&ns.name)
            .await
            .expect("read namespace")
            .is_none()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    panic!(
        "namespace {} still there 60 s after its migrations were released",
        ns.name
    );
}
