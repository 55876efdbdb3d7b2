//! The two ways to install and the way to upgrade, as the docs write them,
//! against the local node. Both tests use `ferry-system`, so they take turns.
//!
//! `kubectl apply --server-side -f manifests/install.yaml`, as the README
//! writes it, from a kubeconfig whose namespace is `default` (issue 14 §4):
//! the operator comes up in `ferry-system` under its own ServiceAccount and
//! rights, reconciles a migration in another namespace, and its webhook,
//! reached through the manifest's Service with the `caBundle` the operator
//! publishes, puts the proxy into a source pod. No Helm.
//!
//! The manifest names the published images
//! (`ghcr.io/ferry-dev/ferry-*:<appVersion>`); the test gives the images
//! `e2e/images/build.sh` made those names in the node's containerd, as a
//! user with a registry mirror would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_e2e::kube_client::{self, TestNamespace};
use ferry_e2e::migration::Cluster;
use ferry_e2e::testbed;
use ferry_operator::crd::CassandraMigration;
use ferry_operator::sidecar;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde::Deserialize;
use serde_json::json;

/// One install in `ferry-system` at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kubectl(cluster: &Cluster, args: &[&str]) -> (bool, String) {
    let out = Command::new(&cluster.kubectl)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `kubectl apply --server-side` of a file, taking over fields another
/// manager (Helm, an earlier apply) set.
fn apply_file(cluster: &Cluster, file: &Path) -> (bool, String) {
    let file = file.to_string_lossy().into_owned();
    kubectl(
        cluster,
        &["apply", "--server-side", "--force-conflicts", "-f", &file],
    )
}

/// The images the manifest names, in order of appearance.
fn published_images(install: &str) -> Vec<String> {
    let mut found = Vec::new();
    for part in install.split('"').skip(1).step_by(2) {
        if part.starts_with("ghcr.io/ferry-dev/ferry-") && !found.iter().any(|f| f == part) {
            found.push(part.to_owned());
        }
    }
    found
}

/// Gives the locally built image (`ferry.dev/ferry-operator:dev`) the
/// published name the manifest uses.
fn tag_local_image(published: &str) {
    let local_tag = std::env::var("FERRY_IMAGE_TAG").unwrap_or_else(|_| "dev".into());
    let component = published
        .rsplit('/')
        .next()
        .and_then(|n| n.split(':').next())
        .expect("image name");
    let local = format!("ferry.dev/{component}:{local_tag}");
    let sock = testbed::run_dir().join("node/containerd/containerd.sock");
    let status = Command::new("ctr")
        .arg("--address")
        .arg(&sock)
        .args([
            "-n", "k8s.io", "images", "tag", "--force", &local, published,
        ])
        .status()
        .expect("run ctr");
    assert!(status.success(), "ctr images tag {local} {published}");
}

/// The manifest without its Namespace and CRD: what the test removes at the
/// end (the CRD stays, since other tests' migrations use it, and
/// `ferry-system` stays for the next Helm install).
fn removable(install: &str) -> String {
    let mut keep = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(install) {
        let value = serde_yaml::Value::deserialize(doc).expect("YAML");
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind.is_empty() || kind == "Namespace" || kind == "CustomResourceDefinition" {
            continue;
        }
        keep.push(serde_yaml::to_string(&value).expect("YAML"));
    }
    keep.join("---\n")
}

/// At the end, pass or fail: the operator and its objects go first (so no
/// clean-up of its own runs against a namespace being deleted), then the
/// migration's finalizer is released and the namespace deleted.
struct Uninstall {
    cluster: Cluster,
    objects: PathBuf,
}

impl Drop for Uninstall {
    fn drop(&mut self) {
        let objects = self.objects.to_string_lossy().into_owned();
        let _ = kubectl(
            &self.cluster,
            &[
                "delete",
                "-f",
                &objects,
                "--ignore-not-found",
                "--wait=true",
            ],
        );
    }
}

fn pod_spec() -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "cassandra"},
        "spec": {
            "serviceName": "cassandra", "replicas": 1,
            "selector": {"matchLabels": {"app": "install-yaml"}},
            "template": {
                "metadata": {"labels": {"app": "install-yaml"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "cassandra", "image": "ferry.dev/pause:dev",
                                    "imagePullPolicy": "Never"}],
                },
            },
        },
    })
}

/// The node up and Ferry's images in its containerd.
fn prepare() {
    testbed::node().expect("the local node comes up");
    let build = testbed::repo_root().join("e2e/images/build.sh");
    let status = Command::new("bash")
        .arg(&build)
        .args(["pause", "operator", "sidecar", "redirect"])
        .status()
        .expect("run e2e/images/build.sh");
    assert!(status.success(), "building the images failed");
}

async fn eventually<T, F, Fut>(secs: u64, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..secs {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("{what}: not within {secs}s");
}

#[tokio::test(flavor = "multi_thread")]
async fn install_yaml_as_written_runs_the_operator_and_injects_the_proxy() {
    let _turn = ONE_AT_A_TIME.lock().await;
    prepare();

    let cluster = Cluster::local();
    let manifest = testbed::repo_root().join("manifests/install.yaml");
    let install = std::fs::read_to_string(&manifest).expect("manifests/install.yaml");
    let images = published_images(&install);
    assert_eq!(
        images.len(),
        3,
        "the operator, sidecar and redirect images: {images:?}"
    );
    for image in &images {
        tag_local_image(image);
    }
    let objects = std::env::temp_dir().join(format!("ferry-install-{}.yaml", std::process::id()));
    std::fs::write(&objects, removable(&install)).expect("write the removable objects");
    let _uninstall = Uninstall {
        cluster: cluster.clone(),
        objects: objects.clone(),
    };

    // The bed's kubeconfig has no namespace: kubectl's is `default`.
    let (ok, out) = apply_file(&cluster, &manifest);
    assert!(ok, "kubectl apply -f manifests/install.yaml: {out}");
    let (ok, out) = kubectl(
        &cluster,
        &[
            "-n",
            "ferry-system",
            "rollout",
            "status",
            "deployment/ferry",
            "--timeout=240s",
        ],
    );
    assert!(ok, "the operator's Deployment is not ready: {out}");
    let (_, stray) = kubectl(
        &cluster,
        &[
            "-n",
            "default",
            "get",
            "deployment,serviceaccount,service",
            "-l",
            "app.kubernetes.io/name=ferry",
            "-o",
            "name",
        ],
    );
    assert!(
        stray.trim().is_empty() || stray.contains("No resources"),
        "objects of the install landed in the caller's namespace: {stray}"
    );

    let client = kube_client::client(&cluster.kubeconfig)
        .await
        .expect("client");
    let ns = TestNamespace::create(&client, "ferry-install")
        .await
        .expect("namespace");
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    statefulsets
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod_spec()).expect("StatefulSet"),
        )
        .await
        .expect("create the StatefulSet");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let first = eventually(120, "cassandra-0 running", || async {
        let pod = pods.get_opt("cassandra-0").await.ok()??;
        (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(pod)
    })
    .await;
    assert!(
        !sidecar::has_sidecar(&first),
        "a pod with no migration got the proxy"
    );

    let migrations: Api<CassandraMigration> = Api::namespaced(client.clone(), &ns.name);
    let migration: CassandraMigration = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "CassandraMigration",
        "metadata": {"name": "install-yaml"},
        "spec": {
            "source": {"statefulSet": "cassandra"},
            "target": {"contactPoints": ["127.0.0.1:9042"], "localDatacenter": "dc1"},
        },
    }))
    .expect("migration");
    migrations
        .create(&PostParams::default(), &migration)
        .await
        .expect("create the migration");
    // The operator reads it and writes its status: its rights on
    // migrations and their status hold in another namespace.
    eventually(90, "the operator writes the migration's status", || async {
        let m = migrations.get_opt("install-yaml").await.ok()??;
        m.status.filter(|s| !s.phase_history.is_empty())
    })
    .await;

    // A pod of the source created now comes up with the proxy: the API
    // server reached the webhook through the manifest's Service and trusted
    // the certificate the operator published.
    // (The operator may have evicted it already, to roll it.)
    match pods.delete("cassandra-0", &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("delete cassandra-0: {e}"),
    }
    let uid = first.metadata.uid.clone();
    let injected = eventually(120, "cassandra-0 recreated", || async {
        let pod = pods.get_opt("cassandra-0").await.ok()??;
        (pod.metadata.uid != uid && pod.metadata.deletion_timestamp.is_none()).then_some(pod)
    })
    .await;
    assert!(
        sidecar::has_sidecar(&injected),
        "the recreated source pod has no proxy: the install's webhook did not inject it"
    );
    let images_in_pod: Vec<String> = injected
        .spec
        .iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .filter_map(|c| c.image.clone())
        .collect();
    let sidecar_image = images
        .iter()
        .find(|i| i.contains("/ferry-sidecar:"))
        .expect("the manifest names the sidecar image");
    assert!(
        images_in_pod.contains(sidecar_image),
        "the proxy is not the manifest's sidecar image {sidecar_image}: {images_in_pod:?}"
    );
    drop(_uninstall);
    kube_client::release_stuck(&client, &ns.name).await;
    let _ = std::fs::remove_file(Path::new(&objects));
}

fn helm(cluster: &Cluster, args: &[&str]) -> (bool, String) {
    let out = Command::new(&cluster.helm)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(args)
        .current_dir(testbed::repo_root())
        .output()
        .expect("run helm");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The chart's CRD as an older Ferry shipped it: without
/// `validation.scheduleMinutes` (added with the scheduled checks).
fn older_crd(current: &str) -> String {
    let mut crd: serde_yaml::Value = serde_yaml::from_str(current).expect("CRD YAML");
    let validation = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
        ["spec"]["properties"]["validation"];
    let props = validation["properties"]
        .as_mapping_mut()
        .expect("validation's properties");
    assert!(
        props.remove("scheduleMinutes").is_some(),
        "the current CRD has validation.scheduleMinutes"
    );
    if let Some(default) = validation["default"].as_mapping_mut() {
        default.remove("scheduleMinutes");
    }
    serde_yaml::to_string(&crd).expect("CRD YAML")
}

/// Removes the release whatever happened, and puts the current CRD back.
struct HelmUninstall {
    cluster: Cluster,
    crd: PathBuf,
}

impl Drop for HelmUninstall {
    fn drop(&mut self) {
        let _ = helm(
            &self.cluster,
            &["uninstall", "ferry", "-n", "ferry-system", "--wait"],
        );
        let _ = apply_file(&self.cluster, &self.crd);
    }
}

/// The upgrade path of docs/operator.md (issue 14 §4): Helm installs
/// `crds/` once and never upgrades it, so `helm upgrade` alone leaves the
/// older CRD, which refuses a field the new version added; the documented
/// `kubectl apply --server-side` of the chart's CRD first, then `helm
/// upgrade`, gives the new field, with its default, on a migration stored
/// before, and the upgraded operator goes on reconciling it.
#[tokio::test(flavor = "multi_thread")]
async fn helm_upgrade_after_the_crd_changed_follows_the_documented_path() {
    let _turn = ONE_AT_A_TIME.lock().await;
    prepare();
    let cluster = Cluster::local();
    let root = testbed::repo_root();
    let crd_file = root.join("charts/ferry/crds/cassandramigrations.ferry.dev.yaml");
    let current = std::fs::read_to_string(&crd_file).expect("the chart's CRD");
    let older = std::env::temp_dir().join(format!("ferry-older-crd-{}.yaml", std::process::id()));
    std::fs::write(&older, older_crd(&current)).expect("write the older CRD");
    let _uninstall = HelmUninstall {
        cluster: cluster.clone(),
        crd: crd_file.clone(),
    };
    let (ok, out) = apply_file(&cluster, &older);
    assert!(ok, "apply the older CRD: {out}");

    let client = kube_client::client(&cluster.kubeconfig)
        .await
        .expect("client");
    let ns = TestNamespace::create(&client, "ferry-upgrade")
        .await
        .expect("namespace");
    let images = ferry_e2e::migration::Images::local();
    let (op_repo, op_tag) = ferry_e2e::migration::split_image(&images.operator);
    let (sc_repo, sc_tag) = ferry_e2e::migration::split_image(&images.sidecar);
    // `helm install|upgrade` of the release with the local images, at a
    // log level (changing it makes the upgrade roll the operator).
    let release = |verb: &str, extra: &[&str], log: &str| {
        let values = format!(
            "image.registry=,image.repository={op_repo},image.tag={op_tag},image.pullPolicy=Never,\
             sidecarImage.registry=,sidecarImage.repository={sc_repo},sidecarImage.tag={sc_tag},\
             redirectImage.reference={},watchNamespace={},logLevel={log}",
            images.redirect, ns.name
        );
        let mut args = vec![verb, "ferry", "charts/ferry", "-n", "ferry-system"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--wait", "--timeout", "4m", "--set", &values]);
        helm(&cluster, &args)
    };
    let (ok, out) = release("install", &["--create-namespace", "--skip-crds"], "info");
    assert!(ok, "helm install with the older CRD: {out}");

    // A migration stored under the older CRD (its source is absent: the
    // operator records SourceNotFound, which is all this test needs of it).
    let migrations: Api<CassandraMigration> = Api::namespaced(client.clone(), &ns.name);
    let doc = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "CassandraMigration",
        "metadata": {"name": "stored-before"},
        "spec": {
            "source": {"statefulSet": "not-here"},
            "target": {"contactPoints": ["127.0.0.1:9042"], "localDatacenter": "dc1"},
        },
    });
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::api::ApiResource::erase::<CassandraMigration>(&()),
    );
    dynamic
        .create(
            &PostParams::default(),
            &serde_json::from_value(doc).expect("object"),
        )
        .await
        .expect("create the migration under the older CRD");
    eventually(
        90,
        "the operator reconciles the stored migration",
        || async {
            let m = dynamic.get_opt("stored-before").await.ok()??;
            m.data["status"]["phaseHistory"]
                .as_array()
                .filter(|h| !h.is_empty())
                .cloned()
        },
    )
    .await;
    let new_field = json!({"spec": {"validation": {"scheduleMinutes": 5}}});
    let strict = kube::api::PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..Default::default()
    };
    let refused = dynamic
        .patch(
            "stored-before",
            &strict,
            &kube::api::Patch::Merge(&new_field),
        )
        .await;
    assert!(
        refused.is_err(),
        "the older CRD took validation.scheduleMinutes: this test's older CRD is not older"
    );

    // helm upgrade alone: Helm leaves crds/ as it was.
    let (ok, out) = release("upgrade", &[], "debug");
    assert!(ok, "helm upgrade: {out}");
    assert!(
        dynamic
            .patch("stored-before", &strict, &kube::api::Patch::Merge(&new_field))
            .await
            .is_err(),
        "helm upgrade changed the CRD, which Helm never does: the docs' first step would be needless"
    );

    // The documented path: the CRD first, then helm upgrade.
    let (ok, out) = apply_file(&cluster, &crd_file);
    assert!(ok, "apply the chart's CRD: {out}");
    let (ok, out) = release("upgrade", &[], "info");
    assert!(ok, "helm upgrade after the CRD: {out}");
    let stored = migrations
        .get("stored-before")
        .await
        .expect("the stored migration reads as today's type");
    assert_eq!(
        stored.spec.validation.schedule_minutes, 60,
        "the new field's default on a migration stored before"
    );
    eventually(60, "the new field accepted", || async {
        dynamic
            .patch(
                "stored-before",
                &strict,
                &kube::api::Patch::Merge(&new_field),
            )
            .await
            .ok()
    })
    .await;
    let updated = migrations.get("stored-before").await.expect("read back");
    assert_eq!(updated.spec.validation.schedule_minutes, 5);
    // The upgraded operator still reconciles it: the spec change is seen
    // (observedGeneration follows the new generation).
    let generation = updated.metadata.generation;
    eventually(
        90,
        "the upgraded operator reconciles the changed spec",
        || async {
            let m = migrations.get_opt("stored-before").await.ok()??;
            (m.status?.observed_generation == generation).then_some(())
        },
    )
    .await;
    drop(_uninstall);
    kube_client::release_stuck(&client, &ns.name).await;
    let _ = std::fs::remove_file(&older);
}
