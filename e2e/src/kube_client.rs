//! A `kube::Client` for the test bed's API server, and small helpers the
//! tests share.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Picks rustls' ring provider for the process. The scylla driver turns on
/// rustls' aws-lc-rs default while kube uses ring; with both compiled in,
/// rustls refuses to guess, so every process that talks to Kubernetes
/// chooses once. A second call is a no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client authenticated as the test bed's admin.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    Ok(Client::try_from(admin_config(kubeconfig).await?)?)
}

/// The client a controller run in-process acts through: built as the
/// operator builds its own (`controller::api_client`).
pub async fn controller_client(kubeconfig: &Path) -> anyhow::Result<Client> {
    Ok(ferry_operator::controller::api_client(
        admin_config(kubeconfig).await?,
    )?)
}

async fn admin_config(kubeconfig: &Path) -> anyhow::Result<Config> {
    install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// Server-side applies the committed CRD file and waits until it is Established.
pub async fn install_crd(client: &Client, crd_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(crd_file)?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text)?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply("ferry-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    for _ in 0..60 {
        let current = api.get(&name).await?;
        let established = current
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("CRD {name} not Established after 15s")
}

/// Lets a terminating test namespace go: removes the finalizers of the
/// migrations in it, whose operator (the test's own) is gone, so nothing
/// would ever run their clean-up. Read as untyped objects: a migration
/// stored by an older test may not match today's types.
pub async fn release_stuck(client: &Client, namespace: &str) {
    let resource = ApiResource::erase::<ferry_operator::crd::CassandraMigration>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let Ok(list) = api.list(&kube::api::ListParams::default()).await else {
        return;
    };
    let patch = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    for migration in list.items {
        if let Some(name) = migration.metadata.name.as_deref() {
            let _ = api.patch(name, &PatchParams::default(), &patch).await;
        }
    }
}

/// Label on every namespace a test makes.
pub const TEST_NAMESPACE_LABEL: &str = "ferry.dev/test-namespace";

/// Deletes test namespaces older than half an hour: a test process that
/// ended before its namespace's deletion ran (the drop below is best effort)
/// must not leave pods on the bed's node for ever. One that is already
/// terminating is held by its migrations' finalizers: those are released.
async fn delete_stale(client: &Client) {
    let api: Api<Namespace> = Api::all(client.clone());
    let Ok(list) = api
        .list(&kube::api::ListParams::default().labels(TEST_NAMESPACE_LABEL))
        .await
    else {
        return;
    };
    let now = jiff::Timestamp::now();
    for ns in list.items {
        let old = ns
            .metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| now.as_second() - t.0.as_second() > 1800);
        let Some(name) = ns.metadata.name.as_deref() else {
            continue;
        };
        if !old {
            continue;
        }
        if ns.metadata.deletion_timestamp.is_none() {
            let _ = api.delete(name, &DeleteParams::default()).await;
        } else {
            release_stuck(client, name).await;
        }
    }
}

/// A namespace that is deleted (with everything in it) when dropped.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates a fresh namespace named after `prefix` and the current time.
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let name = format!("{prefix}-{}", nanos % 1_000_000_000);
        let api: Api<Namespace> = Api::all(client.clone());
        delete_stale(client).await;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {TEST_NAMESPACE_LABEL: "true"}}
        }))?;
        api.create(&PostParams::default(), &ns).await?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.name.clone();
        // Best effort, in the background: the namespace controller finishes it.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            });
        }
    }
}
