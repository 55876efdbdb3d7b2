//! The `CassandraMigration` custom resource (`ferry.dev/v1alpha1`).
//!
//! This file is the one definition of Ferry's API: the CRD YAML in `crds/`
//! and the chart is generated from these types (`ferry-operator crd`), and a
//! test fails when the committed YAML is stale. Validation lives here too, as
//! OpenAPI bounds (schemars attributes) and CEL rules (`x_kube(validation)`),
//! so the API server refuses a bad spec before the operator ever sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Keyspaces that hold each cluster's own state. They are never migrated:
/// each cluster owns its own, and copying them would corrupt the target.
/// The data plane's list, so that what the API refuses in
/// `keyspaces.include` is exactly what the proxy never mirrors and the Jobs
/// never copy; the CEL rule on `keyspaces.include` is built from it.
pub use ferry_sidecar::SYSTEM_KEYSPACES;

const SELECTION_IS_IMMUTABLE: &str = "keyspaces and tables are immutable: the proxies mirror the selection the migration started with; create a new CassandraMigration to migrate another one";

/// The CEL rule that refuses a system keyspace in `keyspaces.include`.
fn no_system_keyspace_rule() -> Rule {
    let list = SYSTEM_KEYSPACES
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(", ");
    Rule::new(format!("self.include.all(k, !(k in [{list}]))"))
        .message("system keyspaces are never migrated; remove them from keyspaces.include")
}

/// A live, zero-downtime migration of one Cassandra cluster (running as a
/// StatefulSet in this namespace) to another Cassandra cluster.
// Several printer columns share `type_ = "string"`; clippy reads that as a
// duplicated attribute, but each belongs to its own `printcolumn(...)`.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "CassandraMigration",
    plural = "cassandramigrations",
    shortname = "cmig",
    category = "ferry",
    namespaced,
    status = "CassandraMigrationStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress",
        description = "What the current phase has done so far"
    ),
    printcolumn(
        name = "Mismatches",
        type_ = "integer",
        json_path = ".status.validation.unresolved",
        description = "Rows that differ between source and target and were not repaired"
    ),
    printcolumn(
        name = "Stage",
        type_ = "string",
        json_path = ".status.cutover.stage",
        description = "The cut-over stage every proxy serves (mirror, shadowReads, targetPrimary, done)"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.proxy.writeMode",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.source.tlsSecret) || (has(self.proxy) && (has(self.proxy.tlsSecret) || (has(self.proxy.redirect) && self.proxy.redirect == 'port')))").message("source.tlsSecret with proxy.redirect iptables needs proxy.tlsSecret: clients that reach a source node's CQL port reach the proxy, which must then serve TLS as the node does"))]
pub struct CassandraMigrationSpec {
    /// The cluster to migrate from. It cannot change once the migration exists.
    #[x_kube(validation = Rule::new("self == oldSelf").message("source is immutable: create a new CassandraMigration to migrate another cluster"))]
    pub source: SourceCluster,

    /// The cluster to migrate to. It cannot change once the migration exists.
    #[x_kube(validation = Rule::new("self == oldSelf").message("target is immutable: create a new CassandraMigration to migrate to another cluster"))]
    pub target: TargetCluster,

    /// Which keyspaces to migrate. Empty `include` means every non-system
    /// keyspace. It cannot change once the migration exists: the proxies
    /// mirror the selection they were started with, and a Job copying
    /// another one would leave live writes unmirrored.
    #[serde(default)]
    #[x_kube(validation = no_system_keyspace_rule())]
    #[x_kube(validation = Rule::new("self == oldSelf").message(SELECTION_IS_IMMUTABLE))]
    pub keyspaces: KeyspaceSelector,

    /// Which tables to migrate, as `keyspace.table`, besides the included
    /// keyspaces' tables. It cannot change once the migration exists.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message(SELECTION_IS_IMMUTABLE))]
    pub tables: TableSelector,

    /// The dual-write proxy sidecar injected into each source pod.
    #[serde(default)]
    pub proxy: ProxySpec,

    /// The bulk copy of historical data.
    #[serde(default)]
    pub backfill: BackfillSpec,

    /// The comparison of source and target after the backfill.
    #[serde(default)]
    pub validation: ValidationSpec,

    /// The target's schema: `copy` (the default) creates on the target,
    /// before the roll, every selected keyspace, user-defined type,
    /// function, aggregate, table and index it lacks (never altering or
    /// dropping what it has, which must match); `verify` only checks that
    /// the target has them, matching.
    #[serde(default)]
    pub schema: SchemaMode,

    /// Cut-over and roll-back: which cluster serves the applications. Moved
    /// forward (or back) by changing `cutover.stage`; the proxies switch at
    /// run time, without a restart or a client reconnect.
    #[serde(default)]
    #[x_kube(validation = Rule::new("oldSelf.stage != 'done' || self.stage == 'done'").message("cutover.stage cannot leave done: the proxies are gone and the applications use the target"))]
    pub cutover: CutoverSpec,
}

/// How the target's schema is made.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SchemaMode {
    #[default]
    Copy,
    Verify,
}

/// Where the migration stands between the clusters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CutoverSpec {
    /// `mirror` (the default: the source serves, every write is mirrored to
    /// the target), `shadowReads` (as mirror, and `shadowReadPercent` of
    /// reads are also sent to the target and compared), `targetPrimary`
    /// (the target serves reads and writes; writes are mirrored to the
    /// source, so going back loses nothing; only from `Ready` with a clean
    /// validation) or `done` (the applications use the target directly; the
    /// proxies are taken out one pod at a time and the migration is
    /// `Complete`; refused while clients still connect through a proxy,
    /// unless `force`). Any stage may go back to an earlier one, except
    /// from `done`.
    #[serde(default)]
    pub stage: CutoverStage,

    /// Percentage of reads compared with the target in `shadowReads`.
    #[serde(default = "default_shadow_read_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub shadow_read_percent: i32,

    /// Move to `done` even while clients still connect through the proxies
    /// (their connections close as each pod is rolled).
    #[serde(default)]
    pub force: bool,
}

impl Default for CutoverSpec {
    fn default() -> Self {
        Self {
            stage: CutoverStage::default(),
            shadow_read_percent: default_shadow_read_percent(),
            force: false,
        }
    }
}

fn default_shadow_read_percent() -> i32 {
    10
}

/// A cut-over stage (see `spec.cutover.stage`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum CutoverStage {
    #[default]
    Mirror,
    ShadowReads,
    TargetPrimary,
    Done,
}

impl std::fmt::Display for CutoverStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            CutoverStage::Mirror => "mirror",
            CutoverStage::ShadowReads => "shadowReads",
            CutoverStage::TargetPrimary => "targetPrimary",
            CutoverStage::Done => "done",
        })
    }
}

/// What the cut-over has reached.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CutoverStatus {
    /// The stage the operator applied (written to the proxies' runtime
    /// ConfigMap).
    pub stage: CutoverStage,
    /// Whether every proxy reported that it serves `stage`.
    pub confirmed: bool,
    /// Pods whose proxy does not serve `stage` yet, with what it serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lagging: Vec<String>,
    /// Reads compared with the target so far (all proxies), and how many
    /// differed: the target answers like the source when this stays 0.
    #[serde(default)]
    pub shadow_reads: i64,
    #[serde(default)]
    pub shadow_read_mismatches: i64,
    /// The differing shadow reads per `keyspace.table` (all proxies).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shadow_read_mismatches_by_table: BTreeMap<String, i64>,
    /// When each stage was confirmed on every proxy, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<CutoverTransition>,
    /// After a roll-back from `targetPrimary`: the reverse validation that
    /// checks the source against the target (condition `RollBackVerified`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_check: Option<ScheduledValidation>,
}

/// The moment every proxy served a stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CutoverTransition {
    pub stage: CutoverStage,
    pub at: Time,
}

/// The source cluster: its StatefulSets in the migration's namespace, given
/// as one name (`statefulSet`), a list (`statefulSets`), or the labels they
/// carry (`selector`; cass-operator and K8ssandra make one StatefulSet per
/// rack, labelled `cassandra.datastax.com/cluster`, `.../datacenter` and
/// `.../rack`). Exactly one of the three.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.statefulSet) && self.statefulSet != '' ? 1 : 0) + (has(self.statefulSets) && size(self.statefulSets) > 0 ? 1 : 0) + (has(self.selector) && size(self.selector) > 0 ? 1 : 0) == 1").message("give the source as exactly one of statefulSet, statefulSets or selector"))]
pub struct SourceCluster {
    /// Name of the source Cassandra StatefulSet, in the same namespace (the
    /// short form for a cluster of one StatefulSet).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub stateful_set: String,

    /// Names of the source's StatefulSets (one per rack or data center),
    /// in the same namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
        )
    )]
    pub stateful_sets: Vec<String>,

    /// Labels every source StatefulSet carries, e.g.
    /// `{cassandra.datastax.com/cluster: demo}` for a cass-operator cluster
    /// (all its racks and data centers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub selector: Option<BTreeMap<String, String>>,

    /// The CQL native port Cassandra listens on inside each pod.
    #[serde(default = "default_cql_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub cql_port: i32,

    /// Secret with the credentials clients use on the source (keys `username`
    /// and `password` unless overridden). Omit when the source has no auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecretRef>,

    /// Secret with the source's client TLS material (`ca.crt`, and `tls.crt` /
    /// `tls.key` for mutual TLS). Omit when the source speaks plain CQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<TlsSecretRef>,
}

/// The target cluster, reached by contact points (it may live anywhere).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetCluster {
    /// Contact points as `host:port` (IPv6 as `[addr]:port`). At least one.
    #[schemars(
        length(min = 1, max = 64),
        inner(
            length(min = 3, max = 261),
            regex(
                pattern = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):[0-9]{1,5}$"
            )
        )
    )]
    #[x_kube(validation = Rule::new("self.all(cp, int(cp.substring(cp.lastIndexOf(':') + 1)) >= 1 && int(cp.substring(cp.lastIndexOf(':') + 1)) <= 65535)").message("every target contact point needs a port between 1 and 65535"))]
    pub contact_points: Vec<String>,

    /// The target datacenter the proxy and the Jobs write to (driver load balancing).
    #[schemars(length(min = 1, max = 128))]
    pub local_datacenter: String,

    /// Secret with the target's credentials. Omit when the target has no auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecretRef>,

    /// Replication of the keyspaces Ferry creates on the target, as
    /// replication factor per target data center (`{dc1: 3}`). Default:
    /// `NetworkTopologyStrategy` over the target's own data centers with
    /// RF = min(3, nodes in the data center). The source's data-center
    /// names are never copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(dc, self[dc] >= 1 && self[dc] <= 32)").message("target.replication: each data center's replication factor is between 1 and 32"))]
    pub replication: Option<BTreeMap<String, i32>>,

    /// Secret with the target's client TLS material. Omit for plain CQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<TlsSecretRef>,
}

/// A Secret holding a username and a password.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the migration's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the username in the Secret.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1))]
    pub username_key: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1))]
    pub password_key: String,
}

/// A Secret holding PEM TLS material (`ca.crt`, optional `tls.crt`/`tls.key`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSecretRef {
    /// Name of the Secret, in the migration's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Skip hostname verification (the certificate chain is still checked).
    #[serde(default)]
    pub insecure_skip_hostname_verification: bool,
}

/// Include and exclude lists of keyspace names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyspaceSelector {
    /// Keyspaces to migrate. Empty means all non-system keyspaces.
    #[serde(default)]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 48), regex(pattern = r"^[A-Za-z0-9_]{1,48}$"))
    )]
    pub include: Vec<String>,
    /// Keyspaces never to migrate, even if included.
    #[serde(default)]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 48), regex(pattern = r"^[A-Za-z0-9_]{1,48}$"))
    )]
    pub exclude: Vec<String>,
}

/// Include and exclude lists of `keyspace.table` names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableSelector {
    /// Tables to migrate. Empty means every table of the selected keyspaces.
    #[serde(default)]
    #[schemars(
        length(max = 1024),
        inner(
            length(min = 3, max = 97),
            regex(pattern = r"^[A-Za-z0-9_]{1,48}\.[A-Za-z0-9_]{1,48}$")
        )
    )]
    pub include: Vec<String>,
    /// Tables never to migrate.
    #[serde(default)]
    #[schemars(
        length(max = 1024),
        inner(
            length(min = 3, max = 97),
            regex(pattern = r"^[A-Za-z0-9_]{1,48}\.[A-Za-z0-9_]{1,48}$")
        )
    )]
    pub exclude: Vec<String>,
}

/// How the proxy's writes reach the target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WriteMode {
    /// The client's write succeeds only once both clusters took it; a target
    /// failure is returned to the client.
    #[default]
    Sync,
    /// The client gets the source's answer at once; the target write follows,
    /// retried and spooled to disk until the target takes it.
    Async,
}

/// How client traffic reaches the proxy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TrafficRedirect {
    /// An init container redirects inbound CQL traffic to the proxy with
    /// iptables (needs NET_ADMIN in that init container only). Applications
    /// and Cassandra's configuration do not change.
    #[default]
    Iptables,
    /// The proxy listens on its own port; applications connect to it.
    Port,
}

/// The dual-write proxy sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Sidecar image. Defaults to the `ferry-sidecar` image the operator was
    /// installed with. Changing it (like `resources`, `protocolVersion` or
    /// `tlsSecret`) rolls the proxies again, one pod at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Port the proxy listens on inside each source pod. Immutable: drivers
    /// learn it from the rewritten peer tables.
    #[serde(default = "default_proxy_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("proxy.listenPort is immutable: drivers learned it from the proxies"))]
    pub listen_port: i32,

    /// `sync` (default) or `async`. May change during a migration.
    #[serde(default)]
    pub write_mode: WriteMode,

    /// How client traffic reaches the proxy: `iptables` (default) or `port`.
    /// Immutable: clients connect one way or the other.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("proxy.redirect is immutable: clients already connect the way it set"))]
    pub redirect: TrafficRedirect,

    /// Highest CQL native protocol version the proxy offers clients (3 to 5).
    /// Lower it when the target speaks an older protocol than the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3, max = 5))]
    pub protocol_version: Option<i32>,

    /// CPU and memory for the sidecar container. Default: requests of 100m
    /// CPU and 64Mi, limits of 500m and 256Mi; in a pod whose containers
    /// all have requests equal to limits (QoS Guaranteed, as Cassandra pods
    /// often are) the requests are raised to the limits, so the pod stays
    /// Guaranteed. The proxy runs one worker thread per core of its CPU
    /// limit, rounded up (one under the default limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The most the proxy's spool (writes the target could not take yet,
    /// in async mode) holds on disk, in MiB. Its `emptyDir` volume gets
    /// this plus 64Mi as `sizeLimit`; when full, the proxy refuses writes
    /// rather than lose them (it never grows past it).
    #[serde(default = "default_spool_max_mib")]
    #[schemars(range(min = 16, max = 1048576))]
    pub spool_max_mib: i32,

    /// TLS the proxy serves to clients, for a source whose clients speak
    /// TLS: a Secret with `tls.crt` and `tls.key` (a `kubernetes.io/tls`
    /// Secret, typically holding the source nodes' own certificate). Without
    /// it the proxy speaks plain CQL to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<ProxyTlsSecretRef>,

    /// How long the proxy waits for the target to answer one request, in
    /// milliseconds (default 2000). Set it above the target's
    /// `write_request_timeout`, so that a slow target answers with its own
    /// timeout (which says how many replicas took the write) before the
    /// proxy gives up with an unknown outcome. In `sync` mode a client's
    /// write waits up to this long for the target; in `async` mode a target
    /// write is retried, then spooled. Changing it rolls the proxies again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 120000))]
    pub target_timeout_millis: Option<i32>,
}

impl Default for ProxySpec {
    fn default() -> Self {
        Self {
            image: None,
            listen_port: default_proxy_port(),
            write_mode: WriteMode::default(),
            redirect: TrafficRedirect::default(),
            protocol_version: None,
            resources: None,
            spool_max_mib: default_spool_max_mib(),
            tls_secret: None,
            target_timeout_millis: None,
        }
    }
}

fn default_spool_max_mib() -> i32 {
    1024
}

/// The proxy's client-facing certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTlsSecretRef {
    /// Name of the Secret (`tls.crt`, `tls.key`), in the migration's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Require clients to present a certificate signed by the Secret's `ca.crt`.
    #[serde(default)]
    pub require_client_certificates: bool,
}

/// Which WRITETIME the backfill gives the cells it copies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TimestampMode {
    /// Keep each cell's WRITETIME and remaining TTL (exact copy).
    #[default]
    Preserve,
    /// Write every row with the migration's start timestamp, so any live write
    /// mirrored after the start wins (the method of the Spark migrator).
    Backdate,
}

/// Compression of the Jobs' CQL connections.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JobCompression {
    /// No compression.
    #[default]
    None,
    /// LZ4.
    Lz4,
}

impl JobCompression {
    /// The value of the Jobs' `--compression` (`FERRY_COMPRESSION`).
    pub fn as_flag(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
        }
    }
}

/// The bulk copy of historical data, run as an Indexed Job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.splits >= self.parallelism").message("backfill.splits must be at least backfill.parallelism: every Job pod needs a token range"))]
pub struct BackfillSpec {
    /// Number of Job pods copying in parallel.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 1024))]
    pub parallelism: i32,

    /// Number of token ranges the ring is split into (at least one per pod;
    /// more gives finer checkpoints and better balance).
    #[serde(default = "default_splits")]
    #[schemars(range(min = 1, max = 1048576))]
    pub splits: i32,

    /// Concurrent requests per Job pod.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 4096))]
    pub concurrency: i32,

    /// Upper bound on rows copied per second, across all pods. Omit for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rows_per_second: Option<i64>,

    /// `preserve` (default) or `backdate`.
    #[serde(default)]
    pub timestamp_mode: TimestampMode,

    /// Compression of the backfill's and validation's CQL connections to
    /// both clusters: `none` (default) or `lz4`. LZ4 costs CPU on every node
    /// the Jobs read from or write to; choose it when the clusters are far
    /// apart and the network, not CPU, is what is short.
    #[serde(default)]
    pub compression: JobCompression,

    /// CPU and memory for each Job pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the backfill and validation pods must run on (e.g. nodes
    /// close to the clusters, away from the Cassandra nodes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the backfill and validation pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

impl Default for BackfillSpec {
    fn default() -> Self {
        Self {
            parallelism: default_parallelism(),
            splits: default_splits(),
            concurrency: default_concurrency(),
            rows_per_second: None,
            timestamp_mode: TimestampMode::default(),
            compression: JobCompression::default(),
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
        }
    }
}

/// How much of the data the validation compares.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ValidationMode {
    /// Every token range.
    #[default]
    Full,
    /// `samplePercent` of the token ranges, chosen at random.
    Sample,
}

/// The comparison of source and target after the backfill.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'sample' || has(self.samplePercent)").message("validation.samplePercent is required when validation.mode is sample"))]
#[x_kube(validation = Rule::new("self.mode == 'sample' || !has(self.samplePercent)").message("validation.samplePercent only applies when validation.mode is sample"))]
pub struct ValidationSpec {
    /// `full` (default) or `sample`.
    #[serde(default)]
    pub mode: ValidationMode,

    /// Percentage of token ranges compared in `sample` mode (1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub sample_percent: Option<i32>,

    /// Copy the source's version of every missing or mismatched row to the
    /// target, then validate again.
    #[serde(default)]
    pub repair: bool,

    /// Once `Ready`, check again every this many minutes (a `sample` of
    /// `scheduleSamplePercent` of the token ranges, no repair) while the
    /// migration mirrors; a difference found sends it back to validating
    /// (with `repair` as set above). 0 turns the checks off.
    #[serde(default = "default_schedule_minutes")]
    #[schemars(range(min = 0, max = 10080))]
    pub schedule_minutes: i32,

    /// Percentage of token ranges each scheduled check compares.
    #[serde(default = "default_schedule_sample_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub schedule_sample_percent: i32,
}

impl Default for ValidationSpec {
    fn default() -> Self {
        Self {
            mode: ValidationMode::default(),
            sample_percent: None,
            repair: false,
            schedule_minutes: default_schedule_minutes(),
            schedule_sample_percent: default_schedule_sample_percent(),
        }
    }
}

fn default_schedule_minutes() -> i32 {
    60
}

fn default_schedule_sample_percent() -> i32 {
    10
}

/// Where a migration stands.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum Phase {
    /// Accepted; sidecars are being rolled into the source pods.
    #[default]
    Pending,
    /// Every source pod runs a ready proxy; live writes reach both clusters.
    Mirroring,
    /// Historical data is being copied.
    Backfilling,
    /// Source and target are being compared.
    Validating,
    /// The target holds everything; mirroring goes on until cut-over.
    Ready,
    /// A step cannot go on; see the conditions. Fixing the spec resumes.
    Failed,
    /// Cut over (`cutover.stage: done`): the applications use the target
    /// and the proxies are gone. Deleting the migration removes what is left.
    Complete,
    /// Deleted: the proxies are taken out one pod at a time, with the
    /// roll's gates. Writes through a pod already without its proxy no
    /// longer reach the target, so this is never `Ready`. Data is untouched.
    Removing,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Phase::Pending => "Pending",
            Phase::Mirroring => "Mirroring",
            Phase::Backfilling => "Backfilling",
            Phase::Validating => "Validating",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
            Phase::Complete => "Complete",
            Phase::Removing => "Removing",
        };
        // pad, not write_str: honours widths such as {:<12}
        f.pad(name)
    }
}

/// What the operator observed and did. Written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CassandraMigrationStatus {
    /// Current phase.
    #[serde(default)]
    pub phase: Phase,

    /// Human-readable progress of the current phase, e.g. `2/3 pods` or `41%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: `SchemaMatches`, `SidecarsReady`, `ProbeWrite`,
    /// `BackfillComplete`, `Validated`, `Ready`, `Degraded`,
    /// `MirroringBehind`, `Cutover`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// When each phase began, in order (a phase entered again appears again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_history: Vec<PhaseTransition>,

    /// Sidecar rollout state of each source pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<SidecarPodStatus>,

    /// Backfill progress, summed over the Job's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillProgress>,

    /// Validation results, summed over the Job's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationResults>,

    /// Why a validation must run again once every source pod runs its
    /// proxy: a pod was found without it after mirroring began, so writes
    /// may have reached the source alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revalidate: Option<String>,

    /// The first validation attempt of the current round (a round ends
    /// Ready or Failed; re-validation starts a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_round_start: Option<u32>,

    /// The cut-over: the stage applied, whether every proxy serves it, and
    /// the shadow reads' figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutover: Option<CutoverStatus>,

    /// The checks that run every `validation.scheduleMinutes` once Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_validation: Option<ScheduledValidation>,

    /// The source's StatefulSets as last found (from `source.statefulSet`,
    /// `statefulSets` or `selector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_stateful_sets: Vec<String>,

    /// The schema step: the replication the target's keyspaces get, and
    /// when the source's schema was last compared with the target's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaStatus>,
}

/// Where the scheduled validation checks stand.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledValidation {
    /// Checks started so far.
    #[serde(default)]
    pub runs: u32,
    /// The check's Job while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When the last check started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_started: Option<Time>,
    /// When the last check finished, and what it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_finished: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<ValidationResults>,
}

/// The target's schema as the operator keeps it in step with the source's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaStatus {
    /// The replication (a CQL map) of keyspaces created on the target, by
    /// the operator or by the proxies when a client creates one during
    /// the migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_replication: Option<String>,
    /// When the schemas were last compared (every minute after the roll,
    /// by default, to create on the target what appeared on the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<Time>,
    /// Objects the operator created on the target after the roll (the
    /// last 20), as `kind keyspace.name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followed: Vec<String>,
}

/// The moment a phase began.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransition {
    /// The phase entered.
    pub phase: Phase,
    /// When it was entered.
    pub started_at: Time,
}

/// Where one source pod stands in the sidecar roll.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SidecarState {
    /// Not rolled yet.
    #[default]
    Waiting,
    /// Evicted; waiting for it to come back with the sidecar (without it,
    /// when the proxies are being taken out).
    Rolling,
    /// Back, Ready, sidecar ready, Cassandra node Up/Normal.
    Ready,
    /// Came back without the sidecar, or not at all.
    Failed,
    /// Still runs this migration's proxy, which is being taken out (the
    /// migration deleted, or cut over): evicted in its turn.
    Removing,
    /// Back without the proxy: the migration no longer touches it.
    Removed,
}

/// The sidecar state of one source pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPodStatus {
    /// Pod name.
    pub pod: String,
    /// Roll state.
    pub state: SidecarState,
    /// Address clients reach this pod's proxy at (`ip:port`), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_address: Option<String>,
    /// Why the pod is in this state, when it is not `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the pod entered this state (the roll's timeout counts from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// Backfill figures, summed over the Job's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillProgress {
    /// Name of the backfill Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// WRITETIME (microseconds since the epoch) recorded when the backfill
    /// began; `backdate` mode writes every row with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp_micros: Option<i64>,
    /// Token ranges copied.
    #[serde(default)]
    pub ranges_done: i64,
    /// Token ranges in all.
    #[serde(default)]
    pub ranges_total: i64,
    /// Rows copied.
    #[serde(default)]
    pub rows_copied: i64,
    /// Bytes copied.
    #[serde(default)]
    pub bytes_copied: i64,
    /// Recent copy rate, rows per second.
    #[serde(default)]
    pub rows_per_second: i64,
}

/// Validation figures, summed over the Job's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationResults {
    /// Name of the validation Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Rows compared.
    #[serde(default)]
    pub rows_compared: i64,
    /// Rows on the source missing on the target.
    #[serde(default)]
    pub missing: i64,
    /// Rows on the target that the source does not have.
    #[serde(default)]
    pub extra: i64,
    /// Rows on both sides whose values (or WRITETIME/TTL) differ.
    #[serde(default)]
    pub mismatched: i64,
    /// Rows written while the validation ran, re-checked and left to mirroring.
    #[serde(default)]
    pub in_flight: i64,
    /// Rows repaired (`validation.repair`).
    #[serde(default)]
    pub repaired: i64,
    /// Differences still standing: missing + extra + mismatched − repaired.
    #[serde(default)]
    pub unresolved: i64,
    /// A bounded list of example primary keys per kind of difference.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub examples: BTreeMap<String, Vec<String>>,
}

fn default_cql_port() -> i32 {
    9042
}
fn default_proxy_port() -> i32 {
    29042
}
fn default_username_key() -> String {
    "username".to_owned()
}
fn default_password_key() -> String {
    "password".to_owned()
}
fn default_parallelism() -> i32 {
    1
}
fn default_splits() -> i32 {
    256
}
fn default_concurrency() -> i32 {
    64
}
