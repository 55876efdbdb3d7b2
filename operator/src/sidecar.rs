//! The proxy sidecar the webhook injects into each source pod: what it looks
//! like (pure functions, unit tested) and how to tell whether a pod has it.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod,
    Probe, ResourceRequirements, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use crate::crd::{CassandraMigration, TrafficRedirect, WriteMode};
use crate::labels;
use crate::pod_security;
use crate::tls_mount::{TlsMount, TlsUse};

/// Settings of the injection that do not come from the CR.
#[derive(Debug, Clone)]
pub struct InjectionSettings {
    /// Default proxy image (the CR's `proxy.image` wins).
    pub sidecar_image: String,
    /// Image of the iptables redirect init container.
    pub redirect_image: String,
    /// Use a native sidecar (init container with `restartPolicy: Always`,
    /// Kubernetes 1.29+); otherwise a plain container.
    pub native_sidecar: bool,
    /// The keyspace of the operator's probe write, mirrored even when the
    /// migration names the keyspaces to mirror (`None`: no probe).
    pub probe_keyspace: Option<String>,
}

/// The proxy's arguments for a migration.
pub fn proxy_args(cm: &CassandraMigration, probe_keyspace: Option<&str>) -> Vec<String> {
    let spec = &cm.spec;
    let mode = match spec.proxy.write_mode {
        WriteMode::Sync => "sync",
        WriteMode::Async => "async",
    };
    let mut args = vec![
        "proxy".to_owned(),
        "127.0.0.1".to_owned(),
        // Every contact point (each has its port, by the CRD's rule): the
        // proxy spreads its target links over them and goes around one
        // that is down.
        spec.target.contact_points.join(","),
        format!("--source-port={}", spec.source.cql_port),
        format!("--proxy-port={}", spec.proxy.listen_port),
        format!("--mode={mode}"),
        format!("--admin-port={}", labels::PROXY_ADMIN_PORT),
        format!(
            "--peer-map={}/{}",
            labels::PEER_MAP_DIR,
            labels::PEER_MAP_KEY
        ),
        "--advertise-address=$(POD_IP)".to_owned(),
        "--spool-dir=/var/lib/ferry/spool".to_owned(),
        format!("--spool-max-bytes={}", spool_max_bytes(spec)),
    ];
    if let Some(v) = spec.proxy.protocol_version {
        args.push(format!("--protocol-version={v}"));
    }
    if let Some(ms) = spec.proxy.target_timeout_millis {
        args.push(format!("--target-timeout-ms={ms}"));
    }
    // The proxies mirror what the backfill copies: the same include lists.
    if !spec.keyspaces.include.is_empty() || !spec.tables.include.is_empty() {
        let mut include = spec.keyspaces.include.clone();
        // The probe row must reach the target whatever the migration copies.
        if let Some(ks) = probe_keyspace {
            if !include.iter().any(|k| k == ks) {
                include.push(ks.to_owned());
            }
        }
        if !include.is_empty() {
            args.push(format!("--include-keyspaces={}", include.join(",")));
        }
        if !spec.tables.include.is_empty() {
            args.push(format!(
                "--include-tables={}",
                spec.tables.include.join(",")
            ));
        }
    }
    if !spec.keyspaces.exclude.is_empty() {
        args.push(format!(
            "--exclude-keyspaces={}",
            spec.keyspaces.exclude.join(",")
        ));
    }
    if !spec.tables.exclude.is_empty() {
        args.push(format!(
            "--exclude-tables={}",
            spec.tables.exclude.join(",")
        ));
    }
    for mount in TlsMount::proxy(spec) {
        match mount.tls_use {
            // The proxy reaches its own node over loopback: no name a node
            // certificate carries, so the chain alone is checked.
            TlsUse::Source => args.extend([
                format!("--source-tls-ca={}", mount.file("ca.crt")),
                "--source-tls-skip-hostname-verification".to_owned(),
            ]),
            TlsUse::Target => {
                args.push(format!("--target-tls-ca={}", mount.file("ca.crt")));
                if mount.skip_hostname_verification {
                    args.push("--target-tls-skip-hostname-verification".to_owned());
                }
            }
            TlsUse::Proxy => {
                args.push(format!("--proxy-tls-cert={}", mount.file("tls.crt")));
                args.push(format!("--proxy-tls-key={}", mount.file("tls.key")));
                if mount.keys.contains(&"ca.crt") {
                    args.push(format!("--proxy-tls-client-ca={}", mount.file("ca.crt")));
                }
            }
        }
    }
    args
}

/// A hash of everything the injected proxy is configured with from the
/// migration: its arguments, image, resources, target credentials and TLS
/// Secrets. The write mode is left out (it changes at run time through the
/// peer map, without a restart), and so is the operator's default image
/// (an operator upgrade does not restart every source node). FNV-1a, so the
/// value stays the same across builds.
pub fn proxy_config_hash(cm: &CassandraMigration, probe_keyspace: Option<&str>) -> String {
    let spec = &cm.spec;
    let args: Vec<String> = proxy_args(cm, probe_keyspace)
        .into_iter()
        .filter(|a| !a.starts_with("--mode="))
        .collect();
    let tls: Vec<(String, Vec<&str>)> = TlsMount::proxy(spec)
        .into_iter()
        .map(|m| (m.secret, m.keys))
        .collect();
    let config = json!({
        "args": args,
        "image": spec.proxy.image,
        "resources": spec.proxy.resources,
        "credentials": spec.target.credentials_secret,
        "tls": tls,
    });
    let hash = config
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// Whether the pod's proxy was injected with `expected` (its
/// [`labels::PROXY_CONFIG_ANNOTATION`]).
pub fn proxy_config_is(pod: &Pod, expected: &str) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::PROXY_CONFIG_ANNOTATION))
        .is_some_and(|h| h == expected)
}

/// Splits `host:port` (IPv6 as `[addr]:port`).
pub fn split_host_port(cp: &str) -> Option<(String, u16)> {
    let (host, port) = cp.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port))
}

/// Where the proxy finds the target credentials Secret's username and
/// password, as files.
const TARGET_CREDENTIALS_DIR: &str = "/etc/ferry/target-credentials";
const TARGET_CREDENTIALS_VOLUME: &str = "ferry-target-credentials";

/// The sidecar container.
pub fn sidecar_container(cm: &CassandraMigration, settings: &InjectionSettings) -> Container {
    let spec = &cm.spec;
    let image = spec
        .proxy
        .image
        .clone()
        .unwrap_or_else(|| settings.sidecar_image.clone());
    let mut args = proxy_args(cm, settings.probe_keyspace.as_deref());
    if spec.target.credentials_secret.is_some() {
        // Files from the Secret, read at each login: a rotated password
        // takes effect without a roll (an env var would need a restart).
        args.push(format!(
            "--target-username-file={TARGET_CREDENTIALS_DIR}/username"
        ));
        args.push(format!(
            "--target-password-file={TARGET_CREDENTIALS_DIR}/password"
        ));
    }
    let mut mounts = vec![
        mount("ferry-peers", labels::PEER_MAP_DIR, true),
        mount("ferry-spool", "/var/lib/ferry/spool", false),
    ];
    mounts.extend(TlsMount::proxy(spec).iter().map(TlsMount::volume_mount));
    if spec.target.credentials_secret.is_some() {
        mounts.push(mount(
            TARGET_CREDENTIALS_VOLUME,
            TARGET_CREDENTIALS_DIR,
            true,
        ));
    }
    let admin_probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(labels::PROXY_ADMIN_PORT),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    };
    let resources = spec
        .proxy
        .resources
        .clone()
        .unwrap_or_else(default_proxy_resources);
    let mut env = vec![EnvVar {
        name: "POD_IP".to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }];
    if let Some(threads) = worker_threads_for(&resources) {
        env.push(EnvVar {
            name: "FERRY_WORKER_THREADS".to_owned(),
            value: Some(threads.to_string()),
            ..EnvVar::default()
        });
    }
    Container {
        name: labels::SIDECAR_CONTAINER.to_owned(),
        image: Some(image),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![
            port("ferry-cql", spec.proxy.listen_port),
            port("ferry-admin", labels::PROXY_ADMIN_PORT),
        ]),
        readiness_probe: Some(Probe {
            period_seconds: Some(5),
            ..admin_probe("/readyz")
        }),
        liveness_probe: Some(Probe {
            period_seconds: Some(10),
            failure_threshold: Some(6),
            ..admin_probe("/livez")
        }),
        volume_mounts: Some(mounts),
        // What the `restricted` Pod Security Standard asks of a container.
        security_context: Some(pod_security::restricted()),
        resources: Some(resources),
        restart_policy: settings.native_sidecar.then(|| "Always".to_owned()),
        ..Container::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        ..ContainerPort::default()
    }
}

/// CPU and memory requests and limits.
fn resources(requests: (&str, &str), limits: (&str, &str)) -> ResourceRequirements {
    let pair = |(cpu, memory): (&str, &str)| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(pair(requests)),
        limits: Some(pair(limits)),
        ..ResourceRequirements::default()
    }
}

/// The spool's limit in bytes (`proxy.spoolMaxMiB`).
fn spool_max_bytes(spec: &crate::crd::CassandraMigrationSpec) -> u64 {
    u64::from(spec.proxy.spool_max_mib.max(16).unsigned_abs()) << 20
}

/// The spool volume: an `emptyDir` that the kubelet lets grow to the
/// proxy's own limit and a margin (its segment files and head record),
/// never past it.
fn spool_volume(spec: &crate::crd::CassandraMigrationSpec) -> Volume {
    let mib = spec.proxy.spool_max_mib.max(16) + 64;
    Volume {
        name: "ferry-spool".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(format!("{mib}Mi"))),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The proxy runtime's worker threads for the container's CPU limit: the
/// limit in whole cores, rounded up (the default 500m gives 1, tokio's
/// current-thread runtime). Without a limit, none: the proxy then runs one
/// worker per core of the node. One thread per core the container may use
/// avoids both CFS throttling of idle workers and the cross-thread wake-ups
/// that cost a third of the CPU per request at a modest rate
/// (docs/benchmarks.md, "The runtime's threads").
fn worker_threads_for(resources: &ResourceRequirements) -> Option<u32> {
    let limit = resources.limits.as_ref()?.get("cpu")?;
    let millicores = cpu_millicores(&limit.0)?;
    Some(millicores.div_ceil(1000).clamp(1, 64) as u32)
}

/// A CPU quantity in millicores: `500m`, `2`, `1.5`; `None` when unreadable.
fn cpu_millicores(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let millis = match q.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok()?,
        None => q.parse::<f64>().ok()? * 1000.0,
    };
    (millis.is_finite() && millis > 0.0).then(|| millis.ceil() as u64)
}

/// The proxy's resources when `proxy.resources` says none.
fn default_proxy_resources() -> ResourceRequirements {
    resources(("100m", "64Mi"), ("500m", "256Mi"))
}

/// The redirect init container's resources: small, and requests equal to
/// limits so it never lowers a pod's QoS class.
fn redirect_resources() -> ResourceRequirements {
    resources(("50m", "32Mi"), ("50m", "32Mi"))
}

/// Whether every container of the pod has CPU and memory requests equal to
/// its limits: Kubernetes' QoS class Guaranteed, which the injected
/// containers must not lose it.
pub fn guaranteed(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    !spec.containers.is_empty()
        && all.iter().all(|c| {
            let Some(r) = c.resources.as_ref() else {
                return false;
            };
            let limits = r.limits.clone().unwrap_or_default();
            // Requests default to limits when only limits are set.
            let requests = r.requests.clone().unwrap_or_else(|| limits.clone());
            ["cpu", "memory"].iter().all(|k| {
                limits.contains_key(*k) && requests.get(*k).or(limits.get(*k)) == limits.get(*k)
            })
        })
}

/// Requests raised to the limits (for a Guaranteed pod).
fn as_guaranteed(resources: Option<ResourceRequirements>) -> Option<ResourceRequirements> {
    resources.map(|mut r| {
        if r.limits.is_some() {
            r.requests.clone_from(&r.limits);
        }
        r
    })
}

/// The proxy's preStop hook: `/drain` waits until the spool is empty and no
/// write is on its way to the target, for at most the pod's termination
/// grace less a margin for the proxy's own shutdown.
pub fn drain_hook(grace_seconds: i64) -> Lifecycle {
    let wait = (grace_seconds - 5).max(1);
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some(format!("/drain?timeout={wait}")),
                port: IntOrString::Int(labels::PROXY_ADMIN_PORT),
                ..HTTPGetAction::default()
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// The init container that redirects inbound CQL traffic to the proxy. It
/// needs NET_ADMIN (and NET_RAW for iptables) in this container only; the
/// proxy's own connection to Cassandra goes over loopback (OUTPUT chain), so
/// it is not redirected.
pub fn redirect_container(cm: &CassandraMigration, settings: &InjectionSettings) -> Container {
    let spec = &cm.spec;
    let rule = format!(
        "iptables -t nat -C PREROUTING -p tcp --dport {src} -j REDIRECT --to-ports {proxy} 2>/dev/null || iptables -t nat -A PREROUTING -p tcp --dport {src} -j REDIRECT --to-ports {proxy}",
        src = spec.source.cql_port,
        proxy = spec.proxy.listen_port
    );
    Container {
        name: labels::REDIRECT_CONTAINER.to_owned(),
        image: Some(settings.redirect_image.clone()),
        command: Some(vec!["sh".to_owned(), "-c".to_owned(), rule]),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
            }),
            seccomp_profile: Some(pod_security::runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        resources: Some(redirect_resources()),
        ..Container::default()
    }
}

/// A typed object as the value of a JSON patch operation.
fn to_patch_value<T: serde::Serialize>(object: &T) -> Value {
    // Serializing a k8s-openapi object cannot fail: no map has a
    // non-string key.
    serde_json::to_value(object).unwrap_or(Value::Null)
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

/// The JSON patch that injects the sidecar into `pod`.
pub fn injection_patch(pod: &Pod, cm: &CassandraMigration, settings: &InjectionSettings) -> Patch {
    let mut ops = Vec::new();
    let name = cm.metadata.name.clone().unwrap_or_default();
    if pod.metadata.annotations.is_none() {
        ops.push(add(&["metadata", "annotations"], json!({})));
    }
    ops.push(add(
        &["metadata", "annotations", labels::MIGRATION_ANNOTATION],
        json!(name),
    ));
    ops.push(add(
        &["metadata", "annotations", labels::PROXY_CONFIG_ANNOTATION],
        json!(proxy_config_hash(cm, settings.probe_keyspace.as_deref())),
    ));
    let spec = pod.spec.as_ref();
    let mut init: Vec<Container> = Vec::new();
    if cm.spec.proxy.redirect == TrafficRedirect::Iptables {
        init.push(redirect_container(cm, settings));
    }
    let mut sidecar = sidecar_container(cm, settings);
    // A Guaranteed pod stays Guaranteed: the proxy's requests are its limits.
    if guaranteed(pod) {
        sidecar.resources = as_guaranteed(sidecar.resources);
    }
    // Before the pod goes, its proxy hands the target what it still owes it
    // (the spool is in the pod and goes with it), within the pod's grace.
    let grace = spec
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    sidecar.lifecycle = Some(drain_hook(grace));
    if settings.native_sidecar {
        init.push(sidecar);
    } else {
        let has_containers = spec.is_some_and(|s| !s.containers.is_empty());
        if has_containers {
            ops.push(add(&["spec", "containers", "-"], to_patch_value(&sidecar)));
        } else {
            ops.push(add(&["spec", "containers"], to_patch_value(&[sidecar])));
        }
    }
    let has_init = spec.is_some_and(|s| s.init_containers.is_some());
    if has_init {
        for c in &init {
            ops.push(add(&["spec", "initContainers", "-"], to_patch_value(c)));
        }
    } else if !init.is_empty() {
        ops.push(add(&["spec", "initContainers"], to_patch_value(&init)));
    }
    let mut volumes = vec![
        Volume {
            name: "ferry-peers".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: labels::peer_map_name(&name),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        spool_volume(&cm.spec),
    ];
    volumes.extend(TlsMount::proxy(&cm.spec).iter().map(TlsMount::volume));
    if let Some(secret) = &cm.spec.target.credentials_secret {
        let item = |key: &str, path: &str| KeyToPath {
            key: key.to_owned(),
            path: path.to_owned(),
            ..KeyToPath::default()
        };
        volumes.push(Volume {
            name: TARGET_CREDENTIALS_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![
                    item(&secret.username_key, "username"),
                    item(&secret.password_key, "password"),
                ]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if spec.is_some_and(|s| s.volumes.is_some()) {
        for v in &volumes {
            ops.push(add(&["spec", "volumes", "-"], to_patch_value(v)));
        }
    } else {
        ops.push(add(&["spec", "volumes"], to_patch_value(&volumes)));
    }
    Patch(ops)
}

/// Whether the pod carries Ferry's proxy (as init or plain container).
pub fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == labels::SIDECAR_CONTAINER)
    })
}

/// Whether the pod's proxy container reports ready.
pub fn sidecar_ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
            .any(|c| c.name == labels::SIDECAR_CONTAINER && c.ready)
    })
}

/// Whether the pod is Ready (its Ready condition is True).
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::CassandraMigrationSpec;

    fn migration(redirect: TrafficRedirect) -> CassandraMigration {
        let spec: CassandraMigrationSpec = serde_json::from_value(json!({
            "source": {"statefulSet": "cassandra"},
            "target": {"contactPoints": ["[fd00::1]:9142", "10.0.0.2:9042"], "localDatacenter": "dc1",
                       "credentialsSecret": {"name": "target-creds"}},
            "keyspaces": {"include": ["shop"]},
            "proxy": {"redirect": redirect, "writeMode": "async", "protocolVersion": 4},
        }))
        .unwrap();
        CassandraMigration::new("mig", spec)
    }

    fn settings(native: bool) -> InjectionSettings {
        InjectionSettings {
            sidecar_image: "ferry-sidecar:dev".into(),
            redirect_image: "ferry-redirect:dev".into(),
            native_sidecar: native,
            probe_keyspace: Some("ferry".into()),
        }
    }

    fn apply(pod: &Pod, patch: &Patch) -> Pod {
        let mut doc = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut doc, patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    fn bare_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "cassandra-0"},
            "spec": {"containers": [{"name": "cassandra", "image": "cassandra:5"}]}
        }))
        .unwrap()
    }

    #[test]
    fn native_sidecar_with_redirect_is_injected() {
        let cm = migration(TrafficRedirect::Iptables);
        let pod = apply(
            &bare_pod(),
            &injection_patch(&bare_pod(), &cm, &settings(true)),
        );
        assert!(has_sidecar(&pod));
        let spec = pod.spec.unwrap();
        let init = spec.init_containers.unwrap();
        assert_eq!(init[0].name, labels::REDIRECT_CONTAINER);
        assert_eq!(init[1].name, labels::SIDECAR_CONTAINER);
        assert_eq!(init[1].restart_policy.as_deref(), Some("Always"));
        let args = init[1].args.clone().unwrap();
        assert_eq!(
            &args[..3],
            &["proxy", "127.0.0.1", "[fd00::1]:9142,10.0.0.2:9042"]
        );
        assert!(args.contains(&"--mode=async".to_owned()));
        assert!(args.contains(&"--protocol-version=4".to_owned()));
        // The probe keyspace is mirrored too, or the probe could never pass.
        assert!(args.contains(&"--include-keyspaces=shop,ferry".to_owned()));
        assert_eq!(spec.containers.len(), 1, "the app container is untouched");
        // The peer map, the spool and the target credentials.
        assert_eq!(spec.volumes.unwrap().len(), 3);
        let ann = pod.metadata.annotations.unwrap();
        assert_eq!(
            ann.get(labels::MIGRATION_ANNOTATION).map(String::as_str),
            Some("mig")
        );
    }

    fn env_of(c: &Container, name: &str) -> Option<String> {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    /// The proxy's runtime gets one worker thread per core of its CPU
    /// limit, rounded up: one (the current-thread runtime) under the
    /// default 500m limit; the node's core count only without a limit.
    #[test]
    fn the_proxy_runs_one_worker_thread_per_core_of_its_cpu_limit() {
        let mut cm = migration(TrafficRedirect::Port);
        let threads = |cm: &CassandraMigration| {
            env_of(
                &sidecar_container(cm, &settings(true)),
                "FERRY_WORKER_THREADS",
            )
        };
        assert_eq!(threads(&cm).as_deref(), Some("1"), "default 500m limit");
        for (limit, want) in [("2500m", Some("3")), ("2", Some("2")), ("1.5", Some("2"))] {
            cm.spec.proxy.resources = Some(resources(("100m", "64Mi"), (limit, "256Mi")));
            assert_eq!(threads(&cm).as_deref(), want, "limit {limit}");
        }
        cm.spec.proxy.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".to_owned(), Quantity("1".into()))])),
            ..ResourceRequirements::default()
        });
        assert_eq!(threads(&cm), None, "no limit: one worker per core");
        assert_eq!(cpu_millicores("bogus"), None);
    }

    /// What the `restricted` Pod Security Standard checks, for the proxy
    /// with `redirect: port` (the iptables init container needs NET_ADMIN,
    /// which `restricted` never allows).
    #[test]
    fn the_injected_proxy_meets_the_restricted_pod_security_standard() {
        let cm = migration(TrafficRedirect::Port);
        let pod = apply(
            &bare_pod(),
            &injection_patch(&bare_pod(), &cm, &settings(true)),
        );
        let spec = pod.spec.unwrap();
        let proxy = &spec.init_containers.as_ref().unwrap()[0];
        let sc = proxy.security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(
            sc.seccomp_profile.map(|p| p.type_),
            Some("RuntimeDefault".to_owned())
        );
        assert!(sc.privileged.is_none_or(|p| !p));
        // Volumes of the allowed kinds only, the spool bounded.
        for v in spec.volumes.as_ref().unwrap() {
            assert!(
                v.config_map.is_some() || v.secret.is_some() || v.empty_dir.is_some(),
                "{v:?}"
            );
            assert!(v.host_path.is_none());
        }
        let spool = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "ferry-spool")
            .unwrap();
        assert_eq!(
            spool.empty_dir.unwrap().size_limit.map(|q| q.0),
            Some("1088Mi".to_owned())
        );
        let args = proxy.args.clone().unwrap();
        assert!(args.contains(&format!("--spool-max-bytes={}", 1024u64 << 20)));
        // Requests and limits by default.
        let r = proxy.resources.clone().unwrap();
        assert!(r.requests.is_some() && r.limits.is_some());
    }

    #[test]
    fn a_guaranteed_pod_stays_guaranteed() {
        let cm = migration(TrafficRedirect::Iptables);
        let mut pod = bare_pod();
        pod.spec.as_mut().unwrap().containers[0].resources =
            Some(serde_json::from_value(json!({"limits": {"cpu": "2", "memory": "4Gi"}})).unwrap());
        assert!(guaranteed(&pod), "limits alone: requests default to them");
        let injected = apply(&pod, &injection_patch(&pod, &cm, &settings(true)));
        assert!(guaranteed(&injected), "{:?}", injected.spec);
        // A Burstable pod keeps the proxy's smaller requests.
        let burstable = apply(
            &bare_pod(),
            &injection_patch(&bare_pod(), &cm, &settings(true)),
        );
        assert!(!guaranteed(&burstable));
        let proxy = &burstable.spec.unwrap().init_containers.unwrap()[1];
        let r = proxy.resources.clone().unwrap();
        assert_ne!(r.requests, r.limits);
    }

    #[test]
    fn plain_container_without_redirect_on_old_clusters() {
        let cm = migration(TrafficRedirect::Port);
        let pod = apply(
            &bare_pod(),
            &injection_patch(&bare_pod(), &cm, &settings(false)),
        );
        let spec = pod.spec.unwrap();
        assert!(spec.init_containers.is_none());
        assert_eq!(spec.containers[1].name, labels::SIDECAR_CONTAINER);
        assert!(spec.containers[1].restart_policy.is_none());
    }

    #[test]
    fn the_proxy_drains_its_spool_before_the_pod_goes() {
        let cm = migration(TrafficRedirect::Port);
        let mut pod = bare_pod();
        pod.spec.as_mut().unwrap().termination_grace_period_seconds = Some(120);
        let injected = apply(&pod, &injection_patch(&pod, &cm, &settings(false)));
        let proxy = &injected.spec.unwrap().containers[1];
        let hook = proxy
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.http_get.as_ref())
            .expect("a preStop httpGet hook");
        assert_eq!(hook.path.as_deref(), Some("/drain?timeout=115"));
        // The default grace of 30 s, and one too short for a margin.
        let path = |grace| {
            drain_hook(grace)
                .pre_stop
                .and_then(|h| h.http_get)
                .and_then(|g| g.path)
        };
        assert_eq!(path(30).as_deref(), Some("/drain?timeout=25"));
        assert_eq!(path(2).as_deref(), Some("/drain?timeout=1"));
    }

    #[test]
    fn target_credentials_come_from_the_secret_as_files_read_at_each_login() {
        let cm = migration(TrafficRedirect::Port);
        let c = to_patch_value(&sidecar_container(&cm, &settings(true)));
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(args.contains(&"--target-password-file=/etc/ferry/target-credentials/password"));
        assert!(args.contains(&"--target-username-file=/etc/ferry/target-credentials/username"));
        // No environment variable: it would keep the old password until a
        // restart.
        assert!(
            !c["env"].to_string().contains("secretKeyRef"),
            "{}",
            c["env"]
        );
        assert!(c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/etc/ferry/target-credentials" && m["readOnly"] == true));
        let injected = apply(
            &bare_pod(),
            &injection_patch(&bare_pod(), &cm, &settings(true)),
        );
        let volume = injected
            .spec
            .and_then(|s| s.volumes)
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "ferry-target-credentials")
            .and_then(|v| v.secret)
            .expect("the credentials volume");
        assert_eq!(volume.secret_name.as_deref(), Some("target-creds"));
        let items = volume.items.unwrap_or_default();
        assert_eq!(
            items
                .iter()
                .map(|i| (i.key.as_str(), i.path.as_str()))
                .collect::<Vec<_>>(),
            [("username", "username"), ("password", "password")]
        );
        assert!(
            !c.to_string().contains("\"value\":\"cassandra\""),
            "no literal secret"
        );
    }

    #[test]
    fn tls_secrets_reach_the_proxy_as_mounted_files() {
        let mut cm = migration(TrafficRedirect::Iptables);
        let tls = |v| serde_json::from_value(v).unwrap();
        cm.spec.source.tls_secret = Some(tls(json!({"name": "src-ca"})));
        cm.spec.target.tls_secret = Some(tls(json!({"name": "tgt-ca"})));
        cm.spec.proxy.tls_secret =
            Some(serde_json::from_value(json!({"name": "node-cert"})).unwrap());
        let pod = apply(
            &bare_pod(),
            &injection_patch(&bare_pod(), &cm, &settings(true)),
        );
        let spec = pod.spec.unwrap();
        let proxy = &spec.init_containers.unwrap()[1];
        let args = proxy.args.clone().unwrap();
        for expected in [
            "--source-tls-ca=/etc/ferry/tls/source/ca.crt",
            "--source-tls-skip-hostname-verification",
            "--target-tls-ca=/etc/ferry/tls/target/ca.crt",
            "--proxy-tls-cert=/etc/ferry/tls/proxy/tls.crt",
            "--proxy-tls-key=/etc/ferry/tls/proxy/tls.key",
        ] {
            assert!(
                args.contains(&expected.to_owned()),
                "{expected} in {args:?}"
            );
        }
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("--target-tls-skip")
                    || a.starts_with("--proxy-tls-client-ca")),
            "names are checked on the target, client certificates not required: {args:?}"
        );
        let mounts: Vec<_> = proxy
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| m.mount_path)
            .collect();
        assert!(mounts.contains(&"/etc/ferry/tls/proxy".to_owned()));
        let volumes: Vec<_> = spec.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(
            volumes,
            [
                "ferry-peers",
                "ferry-spool",
                "ferry-source-tls",
                "ferry-target-tls",
                "ferry-proxy-tls",
                "ferry-target-credentials"
            ]
        );
    }

    #[test]
    fn the_proxies_mirror_the_tables_the_backfill_copies() {
        let mut cm = migration(TrafficRedirect::Port);
        cm.spec.keyspaces.include.clear();
        cm.spec.tables.include = vec!["shop.orders".into(), "crm.people".into()];
        let args = proxy_args(&cm, Some("ferry"));
        assert!(args.contains(&"--include-tables=shop.orders,crm.people".to_owned()));
        // The probe keyspace still reaches the target.
        assert!(args.contains(&"--include-keyspaces=ferry".to_owned()));
        cm.spec.tables.include.clear();
        let args = proxy_args(&cm, Some("ferry"));
        assert!(
            !args.iter().any(|a| a.starts_with("--include-")),
            "{args:?}"
        );
    }

    #[test]
    fn the_config_hash_follows_what_needs_a_restart_and_not_the_write_mode() {
        let cm = migration(TrafficRedirect::Iptables);
        let base = proxy_config_hash(&cm, Some("ferry"));
        assert_eq!(base.len(), 16);
        assert_eq!(base, proxy_config_hash(&cm.clone(), Some("ferry")));
        let pod = apply(
            &bare_pod(),
            &injection_patch(&bare_pod(), &cm, &settings(true)),
        );
        assert!(proxy_config_is(&pod, &base), "the webhook stamps the hash");
        assert!(!proxy_config_is(&bare_pod(), &base));
        let mut mode = cm.clone();
        mode.spec.proxy.write_mode = WriteMode::Sync;
        assert_eq!(proxy_config_hash(&mode, Some("ferry")), base);
        let mut image = cm.clone();
        image.spec.proxy.image = Some("ferry-sidecar:v2".into());
        assert_ne!(proxy_config_hash(&image, Some("ferry")), base);
        let mut tls = cm.clone();
        tls.spec.target.tls_secret =
            Some(serde_json::from_value(json!({"name": "tgt-ca"})).unwrap());
        assert_ne!(proxy_config_hash(&tls, Some("ferry")), base);
        assert_ne!(
            proxy_config_hash(&cm, None),
            base,
            "the probe keyspace is mirrored"
        );
    }

    #[test]
    fn the_target_timeout_reaches_the_proxy_and_rolls_it() {
        let cm = migration(TrafficRedirect::Iptables);
        let args = proxy_args(&cm, Some("ferry"));
        assert!(
            !args.iter().any(|a| a.starts_with("--target-timeout-ms")),
            "unset, the proxy keeps its own default: {args:?}"
        );
        let mut slow: CassandraMigration = cm.clone();
        slow.spec = serde_json::from_value(json!({
            "source": {"statefulSet": "cassandra"},
            "target": {"contactPoints": ["10.0.0.2:9042"], "localDatacenter": "dc1"},
            "proxy": {"targetTimeoutMillis": 9000},
        }))
        .unwrap();
        let args = proxy_args(&slow, Some("ferry"));
        assert!(
            args.contains(&"--target-timeout-ms=9000".to_owned()),
            "{args:?}"
        );
        let mut faster = slow.clone();
        faster.spec.proxy.target_timeout_millis = Some(3000);
        assert_ne!(
            proxy_config_hash(&slow, Some("ferry")),
            proxy_config_hash(&faster, Some("ferry")),
            "a running proxy reads it at start: a change rolls the proxies"
        );
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(split_host_port("a.b:9042"), Some(("a.b".into(), 9042)));
        assert_eq!(split_host_port("[::1]:9042"), Some(("::1".into(), 9042)));
        assert_eq!(split_host_port("nohost"), None);
    }
}
