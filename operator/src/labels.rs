//! Names Ferry puts on Kubernetes objects: one place, so the webhook, the
//! controller, the chart and the tests agree.

/// Finalizer on every CassandraMigration: the sidecars come out before it goes.
pub const FINALIZER: &str = "ferry.dev/cleanup";

/// Annotation on an injected pod: the name of the migration it serves.
pub const MIGRATION_ANNOTATION: &str = "ferry.dev/migration";
/// Annotation on an injected pod: a hash of the proxy configuration it got
/// (`sidecar::proxy_config_hash`); a pod whose hash is not the migration's
/// current one is rolled again.
pub const PROXY_CONFIG_ANNOTATION: &str = "ferry.dev/proxy-config";

/// Label on the objects Ferry creates (Jobs, ConfigMaps, PDBs): the migration's name.
pub const MIGRATION_LABEL: &str = "ferry.dev/migration";
/// Label on Ferry's Jobs: `backfill` or `validate`.
pub const JOB_KIND_LABEL: &str = "ferry.dev/job";

/// The proxy sidecar container.
pub const SIDECAR_CONTAINER: &str = "ferry-proxy";
/// The init container that installs the iptables redirect.
pub const REDIRECT_CONTAINER: &str = "ferry-redirect";
/// The proxy's admin port (metrics, /livez, /readyz).
pub const PROXY_ADMIN_PORT: i32 = 28000;
/// Where the peer map ConfigMap is mounted in the sidecar.
pub const PEER_MAP_DIR: &str = "/etc/ferry/peers";
/// Key of the peer map in its ConfigMap.
pub const PEER_MAP_KEY: &str = "peers.json";

/// The label the StatefulSet controller puts on each of its pods.
pub const STS_POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";

/// Name of the peer map ConfigMap of a migration.
pub fn peer_map_name(migration: &str) -> String {
    format!("{migration}-ferry-peers")
}

/// Name of the backfill Job of a migration.
pub fn backfill_job_name(migration: &str) -> String {
    format!("{migration}-backfill")
}

/// Name of the `attempt`-th validation Job of a migration.
pub fn validate_job_name(migration: &str, attempt: u32) -> String {
    format!("{migration}-validate-{attempt}")
}

/// The Job of the `run`th reverse validation (after a roll-back).
pub fn reverse_job_name(migration: &str, run: u32) -> String {
    format!("{migration}-reverse-{run}")
}

/// The Job of the `run`th scheduled validation check.
pub fn check_job_name(migration: &str, run: u32) -> String {
    format!("{migration}-check-{run}")
}
