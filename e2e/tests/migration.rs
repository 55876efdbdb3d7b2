//! The whole migration on the local real node, as `make demo` runs it and
//! as `e2e/kind.sh` runs it on kind: Helm install, the example clusters and
//! application, the example migration to `Ready`, then the checks of
//! `ferry_e2e::migration::Outcome::problems` (phases in order, at most one
//! source pod down at once, no failed request at QUORUM, every acknowledged
//! write on the target, the ledger of acknowledged operations equal cell by
//! cell on source and target, zero unresolved differences, the roll-back
//! from `targetPrimary` verified by the operator (`RollBackVerified`,
//! `SourceHasEverything`), sidecars gone and the data kept after the
//! migration is deleted).
//!
//! The runs are long (a 3-node Cassandra StatefulSet is started and rolled
//! twice), so they share one test process and run one after the other.

use std::time::Duration;

use ferry_e2e::kube_client;
use ferry_e2e::migration::{self, Cluster, Fault, Images, Options, SourceLayout};
use ferry_e2e::testbed;

/// Builds the images (a no-op when cached) and brings the node up; `extra`
/// names images beyond the default set (`cassandra-4.1`).
fn prepare_with(extra: &[&str]) {
    testbed::node().expect("the local node comes up");
    let build = testbed::repo_root().join("e2e/images/build.sh");
    let mut names = vec!["all"];
    names.extend_from_slice(extra);
    let status = std::process::Command::new("bash")
        .arg(build)
        .args(&names)
        .status()
        .expect("running e2e/images/build.sh");
    assert!(status.success(), "building the images {names:?} failed");
}

fn prepare() {
    prepare_with(&[]);
}

/// One run at a time: each installs the same Helm release and starts four
/// Cassandra JVMs.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// At the end of a run, pass or fail: deletes the run's namespace (its four
/// Cassandra pods would slow every later test) and removes the Helm release
/// (a Ferry left watching every namespace would reconcile the migrations of
/// the operator tests, which run their own controller). Synchronous, since
/// the test's runtime is shutting down by then.
struct CleanUp {
    cluster: Cluster,
    namespace: String,
}

impl Drop for CleanUp {
    fn drop(&mut self) {
        let kubeconfig = self.cluster.kubeconfig.clone();
        let _ = std::process::Command::new(&self.cluster.kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["delete", "namespace", &self.namespace, "--wait=false"])
            .status();
        let _ = std::process::Command::new(&self.cluster.helm)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["uninstall", "ferry", "-n", "ferry-system", "--wait"])
            .status();
    }
}

async fn migrate(prefix: &str, faults: Vec<Fault>, layout: SourceLayout) {
    migrate_with(prefix, faults, layout, Images::local()).await;
}

async fn migrate_with(
    prefix: &str,
    faults: Vec<Fault>,
    layout: SourceLayout,
    images: Images,
) -> migration::Outcome {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::local();
    let client = kube_client::client(&cluster.kubeconfig)
        .await
        .expect("client");
    // A fresh, labelled namespace: stale ones are deleted by later runs.
    let ns = kube_client::TestNamespace::create(&client, prefix)
        .await
        .expect("namespace");
    let _clean_up = CleanUp {
        cluster: cluster.clone(),
        namespace: ns.name.clone(),
    };
    let opts = Options {
        namespace: ns.name.clone(),
        test_namespace: true,
        timeout: Duration::from_secs(1500),
        faults,
        fast_cassandra: true,
        // Four JVMs on this machine's two cores: see the option's comment.
        cassandra_write_timeout_ms: Some(8000),
        history_rows: 1000,
        // Past Ready: the operator cuts over and back with the application
        // writing, then to done (Complete).
        cutover: true,
        check_teardown: true,
        verbose: true,
        layout,
    };
    let outcome = migration::run(&cluster, &images, &opts)
        .await
        .unwrap_or_else(|e| panic!("the migration in {} did not complete: {e:#}", ns.name));
    eprintln!("{}", outcome.summary());
    let problems = outcome.problems();
    assert!(problems.is_empty(), "problems: {problems:#?}");
    let stages: Vec<&str> = outcome.cutover.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        stages,
        [
            "shadowReads",
            "targetPrimary",
            "mirror",
            "targetPrimary",
            "done"
        ],
        "every cut-over stage confirmed, ending Complete"
    );
    for fault in &opts.faults {
        assert!(
            outcome.faults_injected.iter().any(|(f, _)| f == fault),
            "fault {fault:?} was never injected: {:?}",
            outcome.faults_injected
        );
    }
    outcome
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_migration_reaches_ready_with_every_write_on_the_target() {
    prepare();
    migrate("ferry-mig", Vec::new(), SourceLayout::OneStatefulSet).await;
}

/// The fault cases of the real-node issue in one run: the operator killed
/// mid-roll and mid-backfill, a backfill pod killed, the target down for a
/// minute. Long; `make e2e` runs it (`cargo test -- --ignored`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "about 20 minutes; run by make e2e"]
async fn a_migration_survives_operator_backfill_and_target_failures() {
    prepare();
    migrate(
        "ferry-mig-faults",
        vec![
            Fault::OperatorKilledDuringRoll,
            Fault::OperatorKilledDuringBackfill,
            Fault::BackfillPodKilled,
            Fault::TargetDown(Duration::from_secs(60)),
        ],
        SourceLayout::OneStatefulSet,
    )
    .await;
}

/// The source as cass-operator and K8ssandra lay it out (issue 14 §1): one
/// StatefulSet per rack, their labels, the migration finding them by the
/// cluster's label. The same scenario and checks as the first run: the roll
/// crosses the three StatefulSets one pod at a time, every acknowledged
/// write is on the target, cut-over to Complete. Long; `make e2e` runs it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "about 20 minutes; run by make e2e"]
async fn a_cass_operator_shaped_source_migrates_with_every_write_on_the_target() {
    prepare();
    migrate("ferry-mig-racks", Vec::new(), SourceLayout::Racks).await;
}

/// Runs the 5.0 to 5.0 scenario with the source on an older Cassandra
/// (`series` 4.1 or 3.11, the image `e2e/images/build.sh cassandra-<series>`
/// builds) and asserts the run really was from that series to 5.0. The
/// scenario's own checks (every acknowledged write and the ledger on the
/// target, validation clean, cut-over to Complete) are in `migrate_with`.
async fn an_older_source_migrates_to_5_0(series: &str, namespace: &str) {
    prepare_with(&[&format!("cassandra-{series}")]);
    let outcome = migrate_with(
        namespace,
        Vec::new(),
        SourceLayout::OneStatefulSet,
        Images::local_with_older_source(series),
    )
    .await;
    let (source, target) = (
        outcome.source_release_version.unwrap_or_default(),
        outcome.target_release_version.unwrap_or_default(),
    );
    assert!(
        source.starts_with(&format!("{series}.")) && target.starts_with("5.0."),
        "the run was not {series} to 5.0: source {source:?}, target {target:?}"
    );
}

/// Issue 17: a source on Cassandra 4.1 (`ferry.dev/cassandra:4.1-dev`, on
/// Java 11) migrated to a 5.0 target: the schema copied from the 4.1
/// source's `DESCRIBE`, the backfill reading a 4.1 node (collections copied
/// without their 5.0-only stamps, docs/bulk.md). Long; `make e2e` runs it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "about 20 minutes; run by make e2e"]
async fn a_cassandra_4_1_source_migrates_to_a_5_0_target() {
    an_older_source_migrates_to_5_0("4.1", "ferry-mig-41").await;
}

/// Issue 17: a source on Cassandra 3.11 (`ferry.dev/cassandra:3.11-dev`, on
/// Debian sid's OpenJDK 8) migrated to a 5.0 target: no server-side
/// `DESCRIBE`, so the schema is built from `system_schema`; no
/// `system.peers_v2` and no `system_views`, so the drivers read
/// `system.peers` through the proxies and the roll waits on readiness and
/// its settle time. Long; `make e2e` runs it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "about 20 minutes; run by make e2e"]
async fn a_cassandra_3_11_source_migrates_to_a_5_0_target() {
    an_older_source_migrates_to_5_0("3.11", "ferry-mig-311").await;
}
