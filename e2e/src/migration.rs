//! The whole migration, end to end, as a user runs it: `helm install` Ferry,
//! start the example source (3 nodes) and target clusters and the example
//! application, `kubectl apply` the example `CassandraMigration`, follow it to
//! `Ready`, then check what the user relies on.
//!
//! It only needs a kubeconfig, `kubectl`, `helm` and the images loaded into
//! the cluster, so the same code runs on the local real node (`make demo`,
//! `e2e/tests/migration.rs`) and on kind (`e2e/kind.sh`). It drives the
//! cluster through kubectl and helm, as the README tells users to, and reads
//! the migration's status with the typed client.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ferry_operator::crd::{CassandraMigration, Phase, SidecarState};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::poll::{self, Look};
use crate::testbed;

/// Where the cluster is and the tools that drive it.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
}

impl Cluster {
    /// The local test bed's node (`e2e/testbed/up.sh --node`).
    pub fn local() -> Self {
        let bin = testbed::cache_dir().join("bin");
        Cluster {
            kubeconfig: testbed::run_dir().join("kubeconfig"),
            kubectl: bin.join("kubectl"),
            helm: bin.join("helm"),
        }
    }

    /// From `KUBECONFIG` (default `~/.kube/config`), with `kubectl` and `helm`
    /// from the `PATH`: kind, or any cluster.
    pub fn from_env() -> Self {
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".kube/config")
            });
        Cluster {
            kubeconfig,
            kubectl: "kubectl".into(),
            helm: "helm".into(),
        }
    }
}

/// The images the run uses. They must be loaded in the cluster already.
#[derive(Debug, Clone)]
pub struct Images {
    pub operator: String,
    pub sidecar: String,
    pub redirect: String,
    pub loadgen: String,
    /// Cassandra for the example clusters; `None` keeps the examples' own
    /// (the official `cassandra` image).
    pub cassandra: Option<String>,
    /// Cassandra for the source cluster alone, when it differs from the
    /// target's (a migration across versions); `None` uses `cassandra`.
    pub source_cassandra: Option<String>,
    /// Pull policy of the example pods and of Ferry's own.
    pub pull_policy: String,
}

impl Images {
    /// What `e2e/images/build.sh` imports into the local node's containerd.
    pub fn local() -> Self {
        let (repo, tag) = local_repo_and_tag();
        Images {
            operator: format!("{repo}/ferry-operator:{tag}"),
            sidecar: format!("{repo}/ferry-sidecar:{tag}"),
            redirect: format!("{repo}/ferry-redirect:{tag}"),
            loadgen: format!("{repo}/ferry-loadgen:{tag}"),
            cassandra: Some(format!("{repo}/cassandra:{tag}")),
            source_cassandra: None,
            pull_policy: "Never".into(),
        }
    }

    /// [`Images::local`] with the source on an older Cassandra: `series`
    /// `4.1` or `3.11`, the images `e2e/images/build.sh cassandra-4.1` and
    /// `cassandra-3.11` build.
    pub fn local_with_older_source(series: &str) -> Self {
        let (repo, tag) = local_repo_and_tag();
        Images {
            source_cassandra: Some(format!("{repo}/cassandra:{series}-{tag}")),
            ..Images::local()
        }
    }

    /// `$FERRY_E2E_IMAGE_PREFIX/ferry-*:$FERRY_E2E_IMAGE_TAG` (defaults
    /// `ghcr.io/ferry-dev` and `dev`), as `e2e/kind.sh` builds and loads them;
    /// `FERRY_E2E_CASSANDRA_IMAGE` overrides the examples' Cassandra image,
    /// `FERRY_E2E_SOURCE_CASSANDRA_IMAGE` the source cluster's alone.
    pub fn from_env() -> Self {
        let prefix =
            std::env::var("FERRY_E2E_IMAGE_PREFIX").unwrap_or_else(|_| "ghcr.io/ferry-dev".into());
        let tag = std::env::var("FERRY_E2E_IMAGE_TAG").unwrap_or_else(|_| "dev".into());
        Images {
            operator: format!("{prefix}/ferry-operator:{tag}"),
            sidecar: format!("{prefix}/ferry-sidecar:{tag}"),
            redirect: format!("{prefix}/ferry-redirect:{tag}"),
            loadgen: format!("{prefix}/ferry-loadgen:{tag}"),
            cassandra: std::env::var("FERRY_E2E_CASSANDRA_IMAGE").ok(),
            source_cassandra: std::env::var("FERRY_E2E_SOURCE_CASSANDRA_IMAGE").ok(),
            pull_policy: "IfNotPresent".into(),
        }
    }
}

/// The repository and tag `e2e/images/build.sh` gives its images
/// (`FERRY_IMAGE_REPO`, `FERRY_IMAGE_TAG`; `ferry.dev` and `dev`).
fn local_repo_and_tag() -> (String, String) {
    (
        std::env::var("FERRY_IMAGE_REPO").unwrap_or_else(|_| "ferry.dev".into()),
        std::env::var("FERRY_IMAGE_TAG").unwrap_or_else(|_| "dev".into()),
    )
}

/// "Cassandra 4.1.10 on the source, 5.0.9 on the target" (`?`: not read).
fn release_versions_line(source: Option<&str>, target: Option<&str>) -> String {
    format!(
        "Cassandra {} on the source, {} on the target",
        source.unwrap_or("?"),
        target.unwrap_or("?")
    )
}

/// A failure injected during the run; the migration must still end `Ready`
/// with every acknowledged write on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Delete the operator's pod while a source pod is being rolled.
    OperatorKilledDuringRoll,
    /// Delete the operator's pod while the backfill Job runs.
    OperatorKilledDuringBackfill,
    /// Delete one pod of the backfill Job while it copies.
    BackfillPodKilled,
    /// Scale the target to zero for this long once the backfill runs.
    TargetDown(Duration),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace of the example clusters, the application and the migration.
    pub namespace: String,
    /// Whether to create the namespace labelled as a test namespace
    /// (deleted by later runs when stale).
    pub test_namespace: bool,
    /// How long the migration may take to reach `Ready`.
    pub timeout: Duration,
    pub faults: Vec<Fault>,
    /// Start Cassandra with the JVM options that skip gossip settling
    /// (seconds instead of a minute per node; fine for test clusters).
    pub fast_cassandra: bool,
    /// Cassandra's `write_request_timeout` on both clusters (the test bed's
    /// images read it; the official image ignores it), and the proxies'
    /// target timeout 2 s above it (`spec.proxy.targetTimeoutMillis`).
    /// For a machine where four Cassandra JVMs, Kubernetes and the
    /// application share two cores: a node rejoining after its restart
    /// starves the others for seconds, and at Cassandra's 2 s a QUORUM
    /// write then times out on every live coordinator, proxied or not
    /// (the application's failure traces show it). None: Cassandra's own.
    pub cassandra_write_timeout_ms: Option<u32>,
    /// Rows the application writes before the migration starts (history for
    /// the backfill), at its normal rate plus a burst.
    pub history_rows: u64,
    /// After `Ready`, with the application writing: cut over through
    /// `shadowReads`, `targetPrimary`, back to `mirror`, `targetPrimary`
    /// again, and, once the application stopped, `done` (to `Complete`).
    pub cutover: bool,
    /// After `Ready`: delete the migration and check that the sidecars go
    /// and the data stays.
    pub check_teardown: bool,
    /// Print phase changes and steps as they happen.
    pub verbose: bool,
    /// How the source cluster is laid out in Kubernetes.
    pub layout: SourceLayout,
}

/// How the example source cluster is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceLayout {
    /// One StatefulSet of 3 pods (`manifests/examples/source-cluster.yaml`),
    /// named by the migration's `source.statefulSet`.
    #[default]
    OneStatefulSet,
    /// As cass-operator and K8ssandra lay it out: one StatefulSet per rack
    /// (`demo-dc1-r{1,2,3}-sts`, one pod each) with their
    /// `cassandra.datastax.com/*` labels, found by the migration's
    /// `source.selector`.
    Racks,
}

/// The racks layout's StatefulSets, in the order they start.
const RACK_STATEFULSETS: [&str; 3] = ["demo-dc1-r1-sts", "demo-dc1-r2-sts", "demo-dc1-r3-sts"];

impl Options {
    /// The proxies' target timeout with `cassandra_write_timeout_ms`: 2 s
    /// above the target's own, so a slow target answers for itself before
    /// the proxy gives up on it.
    pub fn proxy_target_timeout_ms(&self) -> Option<u32> {
        self.cassandra_write_timeout_ms.map(|ms| ms + 2000)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: "ferry-demo".into(),
            test_namespace: false,
            timeout: Duration::from_secs(1500),
            faults: Vec::new(),
            fast_cassandra: false,
            cassandra_write_timeout_ms: None,
            history_rows: 2000,
            cutover: true,
            check_teardown: true,
            verbose: true,
            layout: SourceLayout::default(),
        }
    }
}

/// The application's final tally (its last JSON line).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppTally {
    pub issued: u64,
    pub acked: u64,
    pub write_failures: u64,
    pub reads: u64,
    pub read_failures: u64,
    pub read_missing: u64,
    #[serde(default)]
    pub failed_ids: Vec<u64>,
    /// More writes failed than the tally lists: the ids not listed would
    /// read as acknowledged writes missing, so those are not checked.
    #[serde(default)]
    pub failed_ids_truncated: bool,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The first failed requests, each with every node the driver tried and
    /// what it answered, and the nodes the driver knew when it gave up.
    #[serde(default)]
    pub failure_traces: Vec<Value>,
    /// Ledger operations issued, acknowledged, and of unknown outcome
    /// (failed or timed out; `crate::ledger`).
    #[serde(default)]
    pub ledger_ops: u64,
    #[serde(default)]
    pub ledger_acked: u64,
    /// Whether the schedule included LWT inserts (`--ledger-lwt`).
    #[serde(default = "yes")]
    pub ledger_lwt: bool,
    #[serde(default)]
    pub ledger_uncertain: u64,
    #[serde(default)]
    pub ledger_uncertain_ops: Vec<u64>,
    /// More uncertain operations than the tally lists: no ledger check.
    #[serde(default)]
    pub ledger_uncertain_truncated: bool,
    /// LWT inserts of new keys that were not applied.
    #[serde(default)]
    pub ledger_lwt_not_applied: u64,
    /// Acknowledged operations by kind.
    #[serde(default)]
    pub ledger_by_kind: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub ledger_last_error: Option<String>,
}

fn yes() -> bool {
    true
}

/// What the run saw; [`Outcome::problems`] lists what is wrong with it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Phases in the order the status recorded them, with seconds since the
    /// migration was applied.
    pub phases: Vec<(Phase, f64)>,
    /// The final status.
    pub status: Value,
    /// The application's tally once it was stopped.
    pub app: AppTally,
    /// The most source pods seen not Ready at the same time during the roll.
    pub max_source_pods_down: usize,
    /// Acknowledged ids checked on the target, and how many were missing.
    pub target_checked: u64,
    pub target_missing: u64,
    /// The ledger compared cell by cell with the source and the target at
    /// `Ready` (None: not checked).
    pub ledger: Option<crate::ledger::Report>,
    /// After teardown: acknowledged ids missing on the source (None: not checked).
    pub source_missing_after_teardown: Option<u64>,
    /// After teardown: source pods still carrying Ferry containers.
    pub sidecars_left: Option<usize>,
    /// Faults injected, with the phase they hit.
    pub faults_injected: Vec<(Fault, Phase)>,
    /// Each cut-over stage confirmed on every proxy, with the seconds from
    /// the request to the confirmation (`done`: to `Complete`).
    pub cutover: Vec<(String, f64)>,
    /// The operator's check of the roll-back from `targetPrimary` to
    /// `mirror` (`RollBackVerified`): its reason and message (None: no
    /// cut-over in this run).
    pub roll_back_check: Option<(String, String)>,
    /// Seconds from `kubectl apply` of the migration to `Ready`.
    pub seconds_to_ready: f64,
    /// Seconds for the whole run (clusters included).
    pub seconds_total: f64,
    /// What the operator process cost over the run, read from `/proc` at
    /// the end (None where its process is not on this machine: kind).
    pub operator_usage: Option<ProcessUsage>,
    /// Cassandra's version on a source and on a target pod, as `nodetool
    /// version` gave it once the clusters were up (None: not read).
    pub source_release_version: Option<String>,
    pub target_release_version: Option<String>,
}

/// CPU and memory of one process, from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessUsage {
    /// User and system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Seconds since the process started.
    pub age_seconds: f64,
    /// Resident set now, and its peak (`VmHWM`), in KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

/// The operator's process on this machine (the local node runs its
/// containers as host processes), found by its command line.
pub fn operator_process_usage() -> Option<ProcessUsage> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_operator = args.first().is_some_and(|a| a.ends_with(b"ferry-operator"))
            && args.get(1).is_some_and(|a| *a == b"run");
        if is_operator {
            return process_usage(&dir);
        }
    }
    None
}

/// The kernel's USER_HZ, the unit of `/proc`'s times: 100 on every Linux
/// this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// One process's usage from its `/proc/<pid>` folder.
pub fn process_usage(dir: &std::path::Path) -> Option<ProcessUsage> {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The fields after the command (which may hold spaces) and its ')':
    // field 3 (state) is the first.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcessUsage {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        age_seconds: uptime - start / TICKS_PER_SECOND,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    })
}

impl Outcome {
    /// Every way this run falls short of a correct zero-downtime migration.
    /// Empty means it passed.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let order: Vec<Phase> = self.phases.iter().map(|(p, _)| *p).collect();
        let wanted = [
            Phase::Pending,
            Phase::Mirroring,
            Phase::Backfilling,
            Phase::Validating,
            Phase::Ready,
        ];
        let mut next = 0;
        for phase in &order {
            if next < wanted.len() && *phase == wanted[next] {
                next += 1;
            }
        }
        if next < wanted.len() {
            problems.push(format!(
                "phases {order:?} do not go Pending → Mirroring → Backfilling → Validating → Ready"
            ));
        }
        if order.contains(&Phase::Failed) {
            problems.push(format!("the migration went through Failed: {order:?}"));
        }
        if let Some((reason, message)) = &self.roll_back_check {
            if reason != "SourceHasEverything" {
                problems.push(format!(
                    "the roll-back to mirror was not verified: {reason}: {message}"
                ));
            }
        }
        if self.max_source_pods_down > 1 {
            problems.push(format!(
                "{} source pods were down at once during the roll (quorum needs at most 1)",
                self.max_source_pods_down
            ));
        }
        let target_fault = self
            .faults_injected
            .iter()
            .any(|(f, _)| matches!(f, Fault::TargetDown(_)));
        // With the target down, a sync-mode proxy refuses writes it cannot
        // mirror: those fail at the client and are not owed. Otherwise the
        // application must not have seen a single failure.
        if !target_fault && (self.app.write_failures > 0 || self.app.read_failures > 0) {
            problems.push(format!(
                "the application saw {} failed writes and {} failed reads at QUORUM (last error: {:?})",
                self.app.write_failures, self.app.read_failures, self.app.last_error
            ));
            for trace in self.app.failure_traces.iter().take(5) {
                problems.push(format!("  a failed request: {trace}"));
            }
        }
        if self.app.read_missing > 0 {
            problems.push(format!(
                "the application read {} acknowledged rows back as missing",
                self.app.read_missing
            ));
        }
        if self.app.acked == 0 {
            problems.push("the application acknowledged no write".into());
        }
        match &self.ledger {
            None => problems.push("the ledger was not checked".into()),
            Some(l) => {
                if l.differences > 0 {
                    problems.push(format!(
                        "{} differences between the ledger of acknowledged operations and the clusters ({} source, {} target, {} source vs target), e.g. {:?}",
                        l.differences,
                        l.source_differences,
                        l.target_differences,
                        l.source_vs_target_differences,
                        l.examples
                    ));
                }
                if l.keys_checked == 0 {
                    problems.push(format!(
                        "the ledger check compared no key ({} operations, {} uncertain)",
                        l.ops, l.uncertain_ops
                    ));
                }
            }
        }
        if self.app.failed_ids_truncated {
            problems.push(format!(
                "more writes failed than the tally lists ({} listed): the check of acknowledged ids could not tell them from lost ones",
                self.app.failed_ids.len()
            ));
        }
        if self.target_missing > 0 || self.target_checked < self.app.acked {
            problems.push(format!(
                "{} of {} acknowledged writes are missing on the target (checked {})",
                self.target_missing, self.app.acked, self.target_checked
            ));
        }
        let validation = &self.status["validation"];
        let unresolved = validation["unresolved"].as_i64().unwrap_or(-1);
        if unresolved != 0 {
            problems.push(format!(
                "validation left {unresolved} unresolved differences: {validation}"
            ));
        }
        if validation["rowsCompared"].as_i64().unwrap_or(0) == 0 {
            problems.push("validation compared no row".into());
        }
        if self.status["backfill"]["rowsCopied"].as_i64().unwrap_or(0) == 0 {
            problems.push("the backfill copied no row".into());
        }
        if let Some(missing) = self.source_missing_after_teardown {
            if missing > 0 {
                problems.push(format!(
                    "{missing} acknowledged writes are missing on the source after teardown"
                ));
            }
        }
        if let Some(left) = self.sidecars_left {
            if left > 0 {
                problems.push(format!(
                    "{left} source pods still run Ferry containers after the migration was deleted"
                ));
            }
        }
        problems
    }

    /// A few lines for people: phases with their durations, figures.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "migration Ready {:.0}s after kubectl apply ({:.0}s in all, clusters included)\n",
            self.seconds_to_ready, self.seconds_total
        ));
        out.push_str(&release_versions_line(
            self.source_release_version.as_deref(),
            self.target_release_version.as_deref(),
        ));
        out.push('\n');
        for (i, (phase, at)) in self.phases.iter().enumerate() {
            let took = self
                .phases
                .get(i + 1)
                .map(|(_, next)| format!("{:.0}s", next - at))
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!("  {phase:<12} at {at:>5.0}s  took {took}\n"));
        }
        let b = &self.status["backfill"];
        out.push_str(&format!(
            "backfill: {} rows, {} bytes, {} ranges, {} rows/s\n",
            b["rowsCopied"], b["bytesCopied"], b["rangesDone"], b["rowsPerSecond"]
        ));
        let v = &self.status["validation"];
        out.push_str(&format!(
            "validation: {} rows compared, {} missing, {} extra, {} mismatched, {} repaired, {} unresolved\n",
            v["rowsCompared"], v["missing"], v["extra"], v["mismatched"], v["repaired"], v["unresolved"]
        ));
        if !self.cutover.is_empty() {
            let stages: Vec<String> = self
                .cutover
                .iter()
                .map(|(stage, took)| format!("{stage} {took:.0}s"))
                .collect();
            out.push_str(&format!(
                "cut-over (each confirmed on every proxy, the application writing): {}\n",
                stages.join(" → ")
            ));
        }
        out.push_str(&format!(
            "application: {} writes acknowledged, {} failed; {} reads, {} failed, {} missing\n",
            self.app.acked,
            self.app.write_failures,
            self.app.reads,
            self.app.read_failures,
            self.app.read_missing
        ));
        out.push_str(&format!(
            "target: {} acknowledged ids checked, {} missing; at most {} source pod down at once\n",
            self.target_checked, self.target_missing, self.max_source_pods_down
        ));
        if let Some(u) = &self.operator_usage {
            out.push_str(&format!(
                "operator: {:.1} CPU seconds over its {:.0} s ({:.2} % of a core), RSS {} MiB now, peak {} MiB\n",
                u.cpu_seconds,
                u.age_seconds,
                100.0 * u.cpu_seconds / u.age_seconds.max(1.0),
                u.rss_kib / 1024,
                u.peak_rss_kib / 1024
            ));
        }
        let kinds = self.app.ledger_by_kind.len();
        out.push_str(&format!(
            "ledger: {} operations acknowledged ({kinds} kinds), {} uncertain, {} LWT not applied\n",
            self.app.ledger_by_kind.values().sum::<u64>(),
            self.app.ledger_uncertain,
            self.app.ledger_lwt_not_applied
        ));
        if let Some(l) = &self.ledger {
            out.push_str(&format!(
                "ledger check at Ready: {} keys, {} cells on source and target, {} differences ({} source, {} target, {} source vs target), {} uncertain keys skipped\n",
                l.keys_checked,
                l.cells_checked,
                l.differences,
                l.source_differences,
                l.target_differences,
                l.source_vs_target_differences,
                l.uncertain_keys
            ));
            for example in l.examples.iter().take(5) {
                out.push_str(&format!("  difference: {example}\n"));
            }
        }
        if let Some(missing) = self.source_missing_after_teardown {
            out.push_str(&format!(
                "teardown: sidecars left {}, acknowledged ids missing on the source {missing}\n",
                self.sidecars_left.unwrap_or(0)
            ));
        }
        for (fault, phase) in &self.faults_injected {
            out.push_str(&format!("fault injected: {fault:?} during {phase}\n"));
        }
        out
    }
}

/// Runs the migration. `Err` when a step could not be carried out at all;
/// `Ok` with [`Outcome::problems`] to judge the result.
pub async fn run(cluster: &Cluster, images: &Images, opts: &Options) -> anyhow::Result<Outcome> {
    let run = Run {
        cluster,
        images,
        opts,
        client: crate::kube_client::client(&cluster.kubeconfig).await?,
        started: Instant::now(),
    };
    let result = run.go().await;
    if result.is_err() {
        // Whichever step failed (the roll, a cut-over, the teardown).
        run.report_pods(&opts.namespace).await;
        run.report_pods("ferry-system").await;
    }
    result
}

struct Run<'a> {
    cluster: &'a Cluster,
    images: &'a Images,
    opts: &'a Options,
    client: Client,
    started: Instant,
}

const MIGRATION: &str = "demo";
/// The example's source contact points (one StatefulSet).
const ONE_STS_CONTACT: &str = "cassandra-0.cassandra:9042,cassandra-1.cassandra:9042";
const TARGET_CONTACT: &str = "cassandra-target-0.cassandra-target:9042";
const KEYSPACE: &str = "ferry_demo";
const SOURCE_REPLICATION: &str = "{'class': 'NetworkTopologyStrategy', 'dc1': 3}";
const TARGET_REPLICATION: &str = "{'class': 'NetworkTopologyStrategy', 'dc1': 1}";
/// The ledger's counter table, which the example migration excludes.
const COUNTER_TABLE: &str = "ferry_demo.ledger_counts";

impl Run<'_> {
    fn say(&self, what: impl std::fmt::Display) {
        if self.opts.verbose {
            eprintln!(
                "[e2e {:>5.0}s] {what}",
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    async fn go(&self) -> anyhow::Result<Outcome> {
        let ns = &self.opts.namespace;
        self.install_ferry().await?;
        self.create_namespace().await?;
        self.say(format!(
            "starting the source (3 nodes, {:?}) and target clusters",
            self.opts.layout
        ));
        let target = self.example("target-cluster.yaml")?;
        self.apply(&target).await?;
        match self.opts.layout {
            SourceLayout::OneStatefulSet => {
                let source = self.example("source-cluster.yaml")?;
                self.apply(&source).await?;
                self.kubectl(&[
                    "rollout",
                    "status",
                    "statefulset/cassandra",
                    "--timeout=900s",
                ])
                .await?;
            }
            SourceLayout::Racks => {
                // Nodes join one at a time, as Cassandra requires: one
                // rack's StatefulSet after the other.
                for doc in self.racks_source()? {
                    let name = doc["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    self.apply(&serde_json::to_string(&doc)?).await?;
                    if doc["kind"] == "StatefulSet" {
                        self.kubectl(&[
                            "rollout",
                            "status",
                            &format!("statefulset/{name}"),
                            "--timeout=900s",
                        ])
                        .await?;
                    }
                }
            }
        }
        self.kubectl(&[
            "rollout",
            "status",
            "statefulset/cassandra-target",
            "--timeout=600s",
        ])
        .await?;

        let source_pod = match self.opts.layout {
            SourceLayout::OneStatefulSet => "cassandra-0".to_owned(),
            SourceLayout::Racks => format!("{}-0", RACK_STATEFULSETS[0]),
        };
        let source_release_version = self.release_version(&source_pod).await;
        let target_release_version = self.release_version("cassandra-target-0").await;
        self.say(release_versions_line(
            source_release_version.as_deref(),
            target_release_version.as_deref(),
        ));

        if let (Some(ms), Some(proxy_ms)) = (
            self.opts.cassandra_write_timeout_ms,
            self.opts.proxy_target_timeout_ms(),
        ) {
            self.say(format!(
                "write_request_timeout {ms} ms on both clusters (this machine's allowance), the proxies' target timeout {proxy_ms} ms"
            ));
        }

        // The target starts empty: the operator copies the schema before
        // the roll (spec.schema: copy).
        self.say("starting the application (the target is empty: the operator copies the schema)");
        let app = self
            .example("load-app.yaml")?
            .replace(ONE_STS_CONTACT, &self.source_contact());
        self.apply(&app).await?;
        self.kubectl(&["rollout", "status", "deployment/load-app", "--timeout=300s"])
            .await?;
        self.wait_for_history().await?;

        self.say("applying the migration");
        let mut migration: Value = serde_yaml::from_str(&std::fs::read_to_string(
            examples_dir().join("cassandramigration.yaml"),
        )?)?;
        if let Some(ms) = self.opts.proxy_target_timeout_ms() {
            migration["spec"]["proxy"]["targetTimeoutMillis"] = json!(ms);
        }
        if self.opts.layout == SourceLayout::Racks {
            let source = &mut migration["spec"]["source"];
            source.as_object_mut().map(|s| s.remove("statefulSet"));
            source["selector"] = json!({"cassandra.datastax.com/cluster": "demo"});
        }
        self.apply(&serde_json::to_string(&migration)?).await?;
        let applied = Instant::now();
        let watch = match self.follow(applied).await {
            Ok(watch) => watch,
            Err(e) => {
                // Best effort, to tell which writes differ: what the ledger
                // check finds on both clusters as they are.
                self.say(format!("{e:#}"));
                let ledger = match self.stop_app().await {
                    Ok(app) => match self.check_ledger(&app).await {
                        Ok(report) => serde_json::to_string(&report)?,
                        Err(e) => format!("{e:#}"),
                    },
                    Err(e) => format!("{e:#}"),
                };
                return Err(e.context(format!("the ledger check after it: {ledger}")));
            }
        };
        let seconds_to_ready = applied.elapsed().as_secs_f64();

        let mut cutover = Vec::new();
        let mut roll_back_check = None;
        if self.opts.cutover {
            // The application goes on writing and reading through every
            // switch: no restart, no reconnect.
            for stage in ["shadowReads", "targetPrimary", "mirror", "targetPrimary"] {
                let took = self.cut_over_to(stage).await?;
                cutover.push((stage.to_owned(), took));
                if stage == "mirror" && roll_back_check.is_none() {
                    // Back from targetPrimary: the operator checks the
                    // source against the target before calling it safe.
                    roll_back_check = Some(self.roll_back_verified().await?);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }

        self.say("stopping the application and checking its acknowledged writes on the target");
        let app = self.stop_app().await?;
        let ledger = self.check_ledger(&app).await?;
        let (target_checked, target_missing) = self
            .verify(
                "verify-target",
                TARGET_CONTACT,
                TARGET_REPLICATION,
                "one",
                &app,
            )
            .await?;

        let api: Api<CassandraMigration> = Api::namespaced(self.client.clone(), ns);
        let status = serde_json::to_value(
            api.get(MIGRATION)
                .await?
                .status
                .context("the migration has no status")?,
        )?;

        let (mut sidecars_left, mut source_missing) = (None, None);
        if self.opts.cutover {
            // The application has left the proxies (it would now connect to
            // the target): done takes the proxies out.
            let took = self.cut_over_to("done").await?;
            cutover.push(("done".to_owned(), took));
            sidecars_left = Some(self.wait_sidecars_gone().await?);
        }
        if self.opts.check_teardown {
            self.say("deleting the migration: the sidecars must go, the data must stay");
            self.kubectl(&[
                "delete",
                "cassandramigration",
                MIGRATION,
                "--wait=true",
                "--timeout=900s",
            ])
            .await?;
            sidecars_left = Some(self.wait_sidecars_gone().await?);
            let (_, missing) = self
                .verify(
                    "verify-source",
                    &self.source_contact(),
                    SOURCE_REPLICATION,
                    "quorum",
                    &app,
                )
                .await?;
            source_missing = Some(missing);
        }

        Ok(Outcome {
            phases: watch.phases,
            status,
            app,
            max_source_pods_down: watch.max_down,
            target_checked,
            target_missing,
            ledger: Some(ledger),
            source_missing_after_teardown: source_missing,
            sidecars_left,
            faults_injected: watch.faults,
            cutover,
            roll_back_check,
            seconds_to_ready,
            seconds_total: self.started.elapsed().as_secs_f64(),
            operator_usage: operator_process_usage(),
            source_release_version,
            target_release_version,
        })
    }

    async fn install_ferry(&self) -> anyhow::Result<()> {
        self.say("installing Ferry with Helm");
        let chart = testbed::repo_root().join("charts/ferry");
        // Helm installs a chart's CRD on the first install only: on a bed
        // that ran an older Ferry, the documented upgrade path applies this
        // tree's CRD first (docs/operator.md, "Upgrading").
        let crd = chart.join("crds/cassandramigrations.ferry.dev.yaml");
        let mut cmd = self.kubectl_cmd();
        cmd.args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(&crd);
        output(cmd, "kubectl apply --server-side (the CRD)").await?;
        let (op_repo, op_tag) = split_image(&self.images.operator);
        let (sc_repo, sc_tag) = split_image(&self.images.sidecar);
        let mut sets = vec![
            "image.registry=".to_string(),
            format!("image.repository={op_repo}"),
            format!("image.tag={op_tag}"),
            format!("image.pullPolicy={}", self.images.pull_policy),
            "sidecarImage.registry=".to_string(),
            format!("sidecarImage.repository={sc_repo}"),
            format!("sidecarImage.tag={sc_tag}"),
            format!("redirectImage.reference={}", self.images.redirect),
        ];
        if self.opts.test_namespace {
            // A test's Ferry leaves the CRs of other tests (which run their
            // own controllers) alone.
            sets.push(format!("watchNamespace={}", self.opts.namespace));
        }
        let mut args: Vec<String> = [
            "upgrade",
            "--install",
            "ferry",
            &chart.to_string_lossy(),
            "--namespace",
            "ferry-system",
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for set in sets {
            args.push("--set".into());
            args.push(set);
        }
        let mut cmd = Command::new(&self.cluster.helm);
        cmd.arg("--kubeconfig")
            .arg(&self.cluster.kubeconfig)
            .args(&args);
        output(cmd, "helm upgrade --install ferry").await?;
        Ok(())
    }

    async fn create_namespace(&self) -> anyhow::Result<()> {
        let mut labels = json!({});
        if self.opts.test_namespace {
            labels[crate::kube_client::TEST_NAMESPACE_LABEL] = json!("true");
        }
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": self.opts.namespace, "labels": labels}});
        self.apply_global(&serde_json::to_string(&ns)?).await
    }

    /// Where clients reach the source: two of its nodes.
    fn source_contact(&self) -> String {
        match self.opts.layout {
            SourceLayout::OneStatefulSet => ONE_STS_CONTACT.to_owned(),
            SourceLayout::Racks => RACK_STATEFULSETS[..2]
                .iter()
                .map(|s| format!("{s}-0.cassandra:9042"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The example source as cass-operator lays a cluster out: the same
    /// headless Service, and one StatefulSet of one pod per rack with
    /// cass-operator's labels (its selector takes the rack's), each node in
    /// its rack, the first rack's pod the seed.
    fn racks_source(&self) -> anyhow::Result<Vec<Value>> {
        let docs: Vec<Value> = self
            .example("source-cluster.yaml")?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for doc in docs {
            if doc["kind"] != "StatefulSet" {
                out.push(doc);
                continue;
            }
            for (i, name) in RACK_STATEFULSETS.iter().enumerate() {
                let rack = format!("r{}", i + 1);
                let labels = json!({
                    "app": "cassandra",
                    "cassandra.datastax.com/cluster": "demo",
                    "cassandra.datastax.com/datacenter": "dc1",
                    "cassandra.datastax.com/rack": rack,
                    "app.kubernetes.io/managed-by": "cass-operator",
                });
                let mut sts = doc.clone();
                sts["metadata"] = json!({"name": name, "labels": labels});
                sts["spec"]["replicas"] = json!(1);
                sts["spec"]["selector"] = json!({"matchLabels": {
                    "cassandra.datastax.com/cluster": "demo",
                    "cassandra.datastax.com/datacenter": "dc1",
                    "cassandra.datastax.com/rack": rack,
                }});
                sts["spec"]["template"]["metadata"]["labels"] = labels;
                if let Some(env) = sts
                    .pointer_mut("/spec/template/spec/containers/0/env")
                    .and_then(Value::as_array_mut)
                {
                    for e in env.iter_mut() {
                        match e["name"].as_str() {
                            Some("CASSANDRA_RACK") => e["value"] = json!(rack),
                            Some("CASSANDRA_SEEDS") => {
                                e["value"] = json!(format!("{}-0.cassandra", RACK_STATEFULSETS[0]))
                            }
                            _ => {}
                        }
                    }
                }
                out.push(sts);
            }
        }
        Ok(out)
    }

    /// An example manifest with the images and options of this run.
    fn example(&self, file: &str) -> anyhow::Result<String> {
        let path = examples_dir().join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut out = String::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut value: Value = serde::Deserialize::deserialize(doc)
                .with_context(|| format!("parsing {}", path.display()))?;
            if let Some(containers) = value
                .pointer_mut("/spec/template/spec/containers")
                .and_then(Value::as_array_mut)
            {
                let source = file == "source-cluster.yaml";
                for c in containers {
                    self.localise_container(c, source);
                }
            }
            out.push_str(&serde_json::to_string(&value)?);
            out.push('\n');
        }
        Ok(out)
    }

    fn localise_container(&self, c: &mut Value, source: bool) {
        let image = c["image"].as_str().unwrap_or_default().to_string();
        let replacement = if image.starts_with("cassandra:") {
            match &self.images.source_cassandra {
                Some(own) if source => Some(own.clone()),
                _ => self.images.cassandra.clone(),
            }
        } else if image.contains("ferry-loadgen") {
            Some(self.images.loadgen.clone())
        } else {
            None
        };
        if let Some(new) = replacement {
            c["image"] = json!(new);
            c["imagePullPolicy"] = json!(self.images.pull_policy);
        }
        if !image.starts_with("cassandra:") {
            return;
        }
        let Some(env) = c["env"].as_array_mut() else {
            return;
        };
        if self.opts.fast_cassandra {
            env.push(json!({"name": "JVM_EXTRA_OPTS", "value":
                "-Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=2000"}));
        }
        if let Some(ms) = self.opts.cassandra_write_timeout_ms {
            env.push(
                json!({"name": "CASSANDRA_WRITE_REQUEST_TIMEOUT_MS", "value": ms.to_string()}),
            );
        }
    }

    /// `ReleaseVersion` from `nodetool version` in a Cassandra pod; None
    /// where the image has no `nodetool` (the official image has one too).
    async fn release_version(&self, pod: &str) -> Option<String> {
        let out = self
            .kubectl(&["exec", pod, "-c", "cassandra", "--", "nodetool", "version"])
            .await
            .ok()?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("ReleaseVersion:"))
            .map(|v| v.trim().to_owned())
    }

    async fn apply(&self, manifests: &str) -> anyhow::Result<()> {
        self.kubectl_stdin(&["apply", "-f", "-"], manifests).await
    }

    async fn apply_global(&self, manifests: &str) -> anyhow::Result<()> {
        let mut cmd = self.kubectl_cmd();
        cmd.args(["apply", "-f", "-"]);
        with_stdin(cmd, manifests, "kubectl apply").await
    }

    fn kubectl_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.cluster.kubectl);
        cmd.arg("--kubeconfig").arg(&self.cluster.kubeconfig);
        cmd
    }

    /// kubectl in the run's namespace; its stdout.
    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_in(&self.opts.namespace, args).await
    }

    /// kubectl in `namespace`; its stdout.
    async fn kubectl_in(&self, namespace: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.kubectl_cmd();
        cmd.args(["-n", namespace]).args(args);
        output(cmd, &format!("kubectl -n {namespace} {}", args.join(" "))).await
    }

    async fn kubectl_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<()> {
        let mut cmd = self.kubectl_cmd();
        cmd.args(["-n", &self.opts.namespace]).args(args);
        with_stdin(cmd, input, &format!("kubectl {}", args.join(" "))).await
    }

    /// On a failed run, best effort: every pod of the namespace, and for
    /// each one that is not Ready its description (conditions, container
    /// states, events) and the last lines of each container's log, the
    /// previous instance's too, so a failure in CI can be told apart
    /// (Cassandra not starting, the proxy not ready, the pod not scheduled).
    async fn report_pods(&self, namespace: &str) {
        if let Ok(pods) = self
            .kubectl_in(namespace, &["get", "pods", "-o", "wide"])
            .await
        {
            self.say(format!("pods in {namespace}:\n{pods}"));
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let Ok(pods) = api.list(&Default::default()).await else {
            return;
        };
        for pod in pods {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let succeeded =
                pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
            if ready || succeeded {
                continue;
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            if let Ok(text) = self
                .kubectl_in(namespace, &["describe", "pod", &name])
                .await
            {
                self.say(format!("kubectl describe pod {name}:\n{text}"));
            }
            let containers = pod.spec.iter().flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
                    .map(|c| c.name.clone())
            });
            for container in containers.collect::<Vec<_>>() {
                for previous in ["--previous=false", "--previous=true"] {
                    if let Ok(log) = self
                        .kubectl_in(
                            namespace,
                            &["logs", &name, "-c", &container, "--tail=60", previous],
                        )
                        .await
                    {
                        self.say(format!("logs of {name}/{container} ({previous}):\n{log}"));
                    }
                }
            }
        }
    }

    /// Runs the load generator once as a pod (schema, verify) and returns
    /// whether it succeeded and its last output line.
    async fn run_loadgen(&self, name: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let _ = self
            .kubectl(&["delete", "pod", name, "--ignore-not-found", "--wait=true"])
            .await;
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "ferry-e2e"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "loadgen", "image": self.images.loadgen,
                    "imagePullPolicy": self.images.pull_policy, "args": args,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]}}
                }]
            }
        });
        self.apply(&serde_json::to_string(&pod)?).await?;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.opts.namespace);
        let api = &api;
        let phase = poll::until(
            Duration::from_secs(300),
            Duration::from_secs(1),
            || async move {
                let phase = api
                    .get(name)
                    .await?
                    .status
                    .and_then(|s| s.phase)
                    .unwrap_or_default();
                Ok(if phase == "Succeeded" || phase == "Failed" {
                    Look::Done(phase)
                } else {
                    Look::NotYet(phase)
                })
            },
        )
        .await?
        .map_err(|phase| anyhow!("pod {name} still {phase} after 300s"))?;
        let logs = self.kubectl(&["logs", name]).await.unwrap_or_default();
        let last = logs.lines().last().unwrap_or_default().to_string();
        Ok((phase == "Succeeded", last))
    }

    /// Checks with a pod that every id the application acknowledged is in
    /// a cluster; returns (ids checked, ids missing).
    async fn verify(
        &self,
        pod: &str,
        contact_points: &str,
        replication: &str,
        consistency: &str,
        app: &AppTally,
    ) -> anyhow::Result<(u64, u64)> {
        let skip = join_ids(&app.failed_ids);
        let upto = app.issued.to_string();
        let mut args = vec![
            "--contact-points",
            contact_points,
            "--keyspace",
            KEYSPACE,
            "--replication",
            replication,
            "--consistency",
            consistency,
            "--verify-upto",
            &upto,
        ];
        if !skip.is_empty() {
            args.extend(["--skip-ids", &skip]);
        }
        let (_, line) = self.run_loadgen(pod, &args).await?;
        parse_verify(&line)
    }

    /// Compares the ledger of the application's acknowledged operations
    /// with the source and the target, cell by cell, with a pod.
    async fn check_ledger(&self, app: &AppTally) -> anyhow::Result<crate::ledger::Report> {
        if app.ledger_uncertain_truncated {
            bail!(
                "the application had {} ledger operations of unknown outcome, too many to list: no ledger check",
                app.ledger_uncertain
            );
        }
        self.say(format!(
            "checking {} ledger operations ({} uncertain) cell by cell on the source and the target",
            app.ledger_ops, app.ledger_uncertain
        ));
        let ops = app.ledger_ops.to_string();
        let source_contact = self.source_contact();
        let uncertain = join_ids(&app.ledger_uncertain_ops);
        let lwt = app.ledger_lwt.to_string();
        let mut args = vec![
            "--contact-points",
            &source_contact,
            "--keyspace",
            KEYSPACE,
            "--replication",
            SOURCE_REPLICATION,
            "--consistency",
            "quorum",
            "--target-contact-points",
            TARGET_CONTACT,
            "--target-consistency",
            "one",
            // Not migrated: the example excludes it (counters cannot be
            // backfilled, docs/bulk.md).
            "--source-only-tables",
            COUNTER_TABLE,
            "--ledger-lwt",
            &lwt,
            "--check-ledger",
            &ops,
        ];
        if !uncertain.is_empty() {
            args.extend(["--uncertain-ops", &uncertain]);
        }
        let (_, line) = self.run_loadgen("check-ledger", &args).await?;
        parse_ledger(&line)
    }

    /// Waits until the application has written `history_rows` rows, so the
    /// backfill has history to copy.
    async fn wait_for_history(&self) -> anyhow::Result<()> {
        self.say(format!(
            "letting the application write {} rows of history",
            self.opts.history_rows
        ));
        poll::until(Duration::from_secs(600), Duration::from_secs(5), || async {
            let logs = self
                .kubectl(&["logs", "deployment/load-app", "--tail=1"])
                .await
                .unwrap_or_default();
            let acked = logs
                .lines()
                .last()
                .and_then(|l| serde_json::from_str::<AppTally>(l).ok())
                .map(|t| t.acked)
                .unwrap_or(0);
            Ok(if acked >= self.opts.history_rows {
                Look::Done(())
            } else {
                Look::NotYet(acked)
            })
        })
        .await?
        .map_err(|acked| anyhow!("the application acknowledged only {acked} writes in 600s"))
    }

    /// Follows the migration until `Ready` (or `Failed`, or the timeout),
    /// watching the source pods and injecting the faults.
    async fn follow(&self, applied: Instant) -> anyhow::Result<Watched> {
        let ns = &self.opts.namespace;
        let api: Api<CassandraMigration> = Api::namespaced(self.client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let operator_pods: Api<Pod> = Api::namespaced(self.client.clone(), "ferry-system");
        let mut watched = Watched::default();
        let mut pending_faults = self.opts.faults.clone();
        let mut target_back_at: Option<Instant> = None;
        let mut last_line = String::new();
        let deadline = applied + self.opts.timeout;
        loop {
            let cm = api.get(MIGRATION).await?;
            let status = cm.status.clone().unwrap_or_default();
            let line = format!(
                "{} {}",
                status.phase,
                status.progress.clone().unwrap_or_default()
            );
            if line != last_line {
                self.say(format!("migration: {line}"));
                last_line = line;
            }
            // Source pods down at once: of the StatefulSet's 3, how many are
            // missing or not Ready right now.
            let list = pods
                .list(&ListParams::default().labels("app=cassandra"))
                .await?;
            let ready = list.items.iter().filter(|p| pod_ready(p)).count();
            watched.max_down = watched.max_down.max(3usize.saturating_sub(ready));

            let rolling = status
                .sidecars
                .iter()
                .any(|s| s.state == SidecarState::Rolling);
            let mut fired = Vec::new();
            for (i, fault) in pending_faults.iter().enumerate() {
                let due = match fault {
                    Fault::OperatorKilledDuringRoll => status.phase == Phase::Pending && rolling,
                    Fault::OperatorKilledDuringBackfill
                    | Fault::BackfillPodKilled
                    | Fault::TargetDown(_) => status.phase == Phase::Backfilling,
                };
                if !due {
                    continue;
                }
                let done = match fault {
                    Fault::OperatorKilledDuringRoll | Fault::OperatorKilledDuringBackfill => {
                        let ops = operator_pods
                            .list(&ListParams::default().labels("app.kubernetes.io/name=ferry"))
                            .await?;
                        for p in &ops.items {
                            let name = p.metadata.name.clone().unwrap_or_default();
                            self.say(format!("fault: deleting operator pod {name}"));
                            let mut cmd = self.kubectl_cmd();
                            cmd.args([
                                "-n",
                                "ferry-system",
                                "delete",
                                "pod",
                                &name,
                                "--wait=false",
                            ]);
                            output(cmd, "kubectl delete pod").await?;
                        }
                        !ops.items.is_empty()
                    }
                    Fault::BackfillPodKilled => {
                        let job = status
                            .backfill
                            .as_ref()
                            .and_then(|b| b.job_name.clone())
                            .unwrap_or_default();
                        let running = pods
                            .list(&ListParams::default().labels(&format!("job-name={job}")))
                            .await?
                            .items
                            .into_iter()
                            .find(|p| {
                                p.status.as_ref().and_then(|s| s.phase.as_deref())
                                    == Some("Running")
                            });
                        match running.and_then(|p| p.metadata.name) {
                            Some(name) if !job.is_empty() => {
                                self.say(format!("fault: deleting backfill pod {name}"));
                                self.kubectl(&["delete", "pod", &name, "--wait=false"])
                                    .await?;
                                true
                            }
                            _ => false,
                        }
                    }
                    Fault::TargetDown(for_how_long) => {
                        self.say(format!(
                            "fault: target down for {}s",
                            for_how_long.as_secs()
                        ));
                        self.kubectl(&["scale", "statefulset/cassandra-target", "--replicas=0"])
                            .await?;
                        target_back_at = Some(Instant::now() + *for_how_long);
                        true
                    }
                };
                if done {
                    fired.push(i);
                    watched.faults.push((*fault, status.phase));
                }
            }
            for i in fired.into_iter().rev() {
                pending_faults.remove(i);
            }
            if target_back_at.is_some_and(|t| Instant::now() >= t) {
                self.say("fault over: target scaled back to 1");
                self.kubectl(&["scale", "statefulset/cassandra-target", "--replicas=1"])
                    .await?;
                target_back_at = None;
            }

            let ended = matches!(status.phase, Phase::Ready | Phase::Failed);
            if ended || Instant::now() > deadline {
                let base = status
                    .phase_history
                    .first()
                    .map(|t| t.started_at.0.as_second() as f64)
                    .unwrap_or(0.0);
                watched.phases = status
                    .phase_history
                    .iter()
                    .map(|t| (t.phase, t.started_at.0.as_second() as f64 - base))
                    .collect();
                if status.phase == Phase::Failed {
                    let conditions = serde_json::to_string(&status.conditions)?;
                    let validation = serde_json::to_string(&status.validation)?;
                    bail!("the migration failed: {conditions}; validation: {validation}");
                }
                if !ended {
                    bail!(
                        "the migration is still {} after {}s; phases so far {:?}",
                        status.phase,
                        self.opts.timeout.as_secs(),
                        watched.phases
                    );
                }
                if target_back_at.is_some() {
                    self.kubectl(&["scale", "statefulset/cassandra-target", "--replicas=1"])
                        .await?;
                }
                return Ok(watched);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Stops the application (SIGTERM through a scale to zero) and reads
    /// the final tally it prints on the way out.
    async fn stop_app(&self) -> anyhow::Result<AppTally> {
        let pod = self
            .kubectl(&[
                "get",
                "pods",
                "-l",
                "app=load-app",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .await?;
        let mut follow = self.kubectl_cmd();
        follow
            .args(["-n", &self.opts.namespace, "logs", "-f", pod.trim()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let follower = follow.spawn().context("kubectl logs -f")?;
        self.kubectl(&["scale", "deployment/load-app", "--replicas=0"])
            .await?;
        let out = tokio::time::timeout(Duration::from_secs(120), follower.wait_with_output())
            .await
            .context("the application did not stop within 120s")??;
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text
            .lines()
            .rev()
            .find(|l| l.contains("\"final\":true"))
            .context("the application printed no final tally")?;
        serde_json::from_str(last).with_context(|| format!("parsing the final tally {last}"))
    }

    /// Asks for cut-over `stage` and waits until every proxy serves it
    /// (`done`: until the migration is `Complete`); the seconds it took.
    async fn cut_over_to(&self, stage: &str) -> anyhow::Result<f64> {
        self.say(format!("cut-over: stage {stage}"));
        let api: Api<CassandraMigration> =
            Api::namespaced(self.client.clone(), &self.opts.namespace);
        let asked = Instant::now();
        api.patch(
            MIGRATION,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cutover": {"stage": stage}}})),
        )
        .await
        .with_context(|| format!("asking for stage {stage}"))?;
        let within = Duration::from_secs(if stage == "done" { 900 } else { 120 });
        let api = &api;
        poll::until(within, Duration::from_secs(1), || async move {
            let status = api.get(MIGRATION).await?.status.unwrap_or_default();
            let reached = match (&status.cutover, stage) {
                (_, "done") => status.phase == Phase::Complete,
                (Some(cut), _) => cut.stage.to_string() == stage && cut.confirmed,
                (None, _) => false,
            };
            if reached {
                return Ok(Look::Done(asked.elapsed().as_secs_f64()));
            }
            let why = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Cutover")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_default();
            Ok(Look::NotYet(why))
        })
        .await?
        .map_err(|why| anyhow!("stage {stage} not reached: {why}"))
    }

    /// Waits (at most 600 s) for the operator's verdict on the roll-back
    /// (`RollBackVerified` True or False); its reason and message.
    async fn roll_back_verified(&self) -> anyhow::Result<(String, String)> {
        self.say("waiting for the operator's check of the roll-back (RollBackVerified)");
        let api: Api<CassandraMigration> =
            Api::namespaced(self.client.clone(), &self.opts.namespace);
        let api = &api;
        let (reason, message) = poll::until(
            Duration::from_secs(600),
            Duration::from_secs(2),
            || async move {
                let status = api.get(MIGRATION).await?.status.unwrap_or_default();
                let verdict = status
                    .conditions
                    .iter()
                    // "Checking" (False) while the reverse validation runs.
                    .find(|c| c.type_ == "RollBackVerified" && c.reason != "Checking");
                Ok(match verdict {
                    Some(c) => Look::Done((c.reason.clone(), c.message.clone())),
                    None => Look::NotYet(()),
                })
            },
        )
        .await?
        .map_err(|()| anyhow!("no RollBackVerified verdict 600 s after the roll-back to mirror"))?;
        self.say(format!("roll-back check: {reason} ({message})"));
        Ok((reason, message))
    }

    /// Waits until every source pod runs without Ferry's containers and is
    /// Ready; returns how many still had them when the wait ended.
    async fn wait_sidecars_gone(&self) -> anyhow::Result<usize> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.opts.namespace);
        let pods = &pods;
        let waited = poll::until(
            Duration::from_secs(900),
            Duration::from_secs(2),
            || async move {
                let list = pods
                    .list(&ListParams::default().labels("app=cassandra"))
                    .await?;
                let with_ferry = list.items.iter().filter(|p| has_ferry_container(p)).count();
                let ready = list.items.iter().filter(|p| pod_ready(p)).count();
                Ok(if with_ferry == 0 && ready == 3 {
                    Look::Done(0)
                } else {
                    Look::NotYet(with_ferry)
                })
            },
        )
        .await?;
        // Pods still carrying Ferry's containers are reported, not an error.
        Ok(waited.unwrap_or_else(|with_ferry| with_ferry))
    }
}

#[derive(Default)]
struct Watched {
    phases: Vec<(Phase, f64)>,
    max_down: usize,
    faults: Vec<(Fault, Phase)>,
}

fn examples_dir() -> PathBuf {
    testbed::repo_root().join("manifests/examples")
}

/// `registry/path:tag` → (`registry/path`, `tag`); a reference without a
/// tag gets `latest`.
/// `repo:tag` → (`repo`, `tag`); no tag is `latest`.
pub fn split_image(reference: &str) -> (String, String) {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (reference.to_string(), "latest".to_string()),
    }
}

fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// `{"checked":N,"missing":M,...}`, the verify mode's last line.
fn parse_verify(line: &str) -> anyhow::Result<(u64, u64)> {
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("the verify pod printed {line:?}, not its JSON result"))?;
    Ok((
        v["checked"].as_u64().unwrap_or(0),
        v["missing"].as_u64().unwrap_or(u64::MAX),
    ))
}

/// `{"ledger":{...}}`, the ledger check's last line.
fn parse_ledger(line: &str) -> anyhow::Result<crate::ledger::Report> {
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("the ledger check printed {line:?}, not its JSON result"))?;
    serde_json::from_value(v["ledger"].clone())
        .with_context(|| format!("the ledger check printed {line:?}"))
}

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn has_ferry_container(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name.starts_with("ferry"))
}

async fn output(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn with_stdin(mut cmd: Command, input: &str, what: &str) -> anyhow::Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {what}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ledger_check_and_the_tally() {
        let r = parse_ledger(
            r#"{"ledger":{"ops":9,"keysChecked":4,"differences":1,"examples":["x"]}}"#,
        )
        .unwrap();
        assert_eq!((r.ops, r.keys_checked, r.differences), (9, 4, 1));
        assert!(parse_ledger("Error: no").is_err());
        // A tally from before the ledger still parses.
        let t: AppTally = serde_json::from_str(
            r#"{"issued":3,"acked":3,"writeFailures":0,"reads":1,"readFailures":0,"readMissing":0}"#,
        )
        .unwrap();
        assert_eq!(t.ledger_ops, 0);
        let t: AppTally = serde_json::from_str(
            r#"{"issued":3,"acked":3,"writeFailures":0,"reads":1,"readFailures":0,"readMissing":0,
                "ledgerOps":30,"ledgerUncertainOps":[4,7],"ledgerByKind":{"lwt":2}}"#,
        )
        .unwrap();
        assert_eq!((t.ledger_ops, t.ledger_uncertain_ops.len()), (30, 2));
        assert_eq!(t.ledger_by_kind["lwt"], 2);
    }

    #[test]
    fn a_process_usage_reads_from_proc() {
        // Burn a little CPU so the figure cannot be zero by accident.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert_ne!(x, 1);
        let me = process_usage(std::path::Path::new("/proc/self")).expect("own usage");
        // The loop had the CPU for part of its 300 ms at least (the
        // machine may be busy); a test process is neither older than a day
        // nor has it used more CPU than two cores could give it.
        assert!(me.cpu_seconds > 0.0, "{me:?}");
        // /proc gives the start time and the uptime in ticks, so the age
        // can read one tick short of the loop's 300 ms.
        let tick = 1.0 / TICKS_PER_SECOND;
        assert!(
            me.age_seconds >= 0.3 - tick && me.age_seconds < 86_400.0,
            "{me:?}"
        );
        assert!(me.cpu_seconds <= 2.0 * me.age_seconds + 0.1, "{me:?}");
        assert!(me.rss_kib > 1024 && me.peak_rss_kib >= me.rss_kib, "{me:?}");
    }

    #[test]
    fn splits_image_references() {
        assert_eq!(
            split_image("ferry.dev/ferry-operator:dev"),
            ("ferry.dev/ferry-operator".into(), "dev".into())
        );
        assert_eq!(
            split_image("localhost:5000/ferry-sidecar"),
            ("localhost:5000/ferry-sidecar".into(), "latest".into())
        );
    }

    #[test]
    fn an_outcome_with_a_missing_write_or_a_skipped_phase_has_problems() {
        let good = Outcome {
            phases: vec![
                (Phase::Pending, 0.0),
                (Phase::Mirroring, 60.0),
                (Phase::Backfilling, 65.0),
                (Phase::Validating, 90.0),
                (Phase::Ready, 120.0),
            ],
            status: json!({"validation": {"unresolved": 0, "rowsCompared": 10},
                           "backfill": {"rowsCopied": 10}}),
            app: AppTally {
                issued: 10,
                acked: 10,
                ..Default::default()
            },
            max_source_pods_down: 1,
            target_checked: 10,
            target_missing: 0,
            ledger: Some(crate::ledger::Report {
                ops: 30,
                keys_checked: 20,
                cells_checked: 100,
                ..Default::default()
            }),
            source_missing_after_teardown: Some(0),
            sidecars_left: Some(0),
            faults_injected: vec![],
            cutover: Vec::new(),
            roll_back_check: Some(("SourceHasEverything".into(), "0 differences".into())),
            seconds_to_ready: 120.0,
            seconds_total: 300.0,
            operator_usage: None,
            source_release_version: Some("4.1.10".into()),
            target_release_version: Some("5.0.9".into()),
        };
        assert!(good.problems().is_empty(), "{:?}", good.problems());
        let mut missing = good.clone();
        missing.target_missing = 1;
        assert_eq!(missing.problems().len(), 1);
        let mut unverified = good.clone();
        unverified.roll_back_check = Some(("SourceDiffers".into(), "14 mismatched".into()));
        assert_eq!(
            unverified.problems().len(),
            1,
            "{:?}",
            unverified.problems()
        );
        let mut skipped = good.clone();
        skipped.phases.remove(2);
        assert_eq!(skipped.problems().len(), 1);
        let mut ledger_difference = good.clone();
        if let Some(l) = &mut ledger_difference.ledger {
            l.add(&[crate::ledger::Difference {
                side: crate::ledger::Side::Target,
                key: crate::ledger::Key {
                    table: crate::ledger::Table::Coll,
                    k: 3,
                },
                column: "l",
                what: "expected [1], found [1, 1]".into(),
            }]);
        }
        assert_eq!(ledger_difference.problems().len(), 1);
        assert!(ledger_difference
            .summary()
            .contains("1 differences (0 source, 1 target, 0 source vs target)"));
        let mut unchecked = good.clone();
        unchecked.ledger = None;
        assert_eq!(unchecked.problems().len(), 1);
        let mut two_down = good.clone();
        two_down.max_source_pods_down = 2;
        assert_eq!(two_down.problems().len(), 1);
        let mut failures = good;
        failures.app.write_failures = 3;
        assert_eq!(failures.problems().len(), 1);
    }
}
