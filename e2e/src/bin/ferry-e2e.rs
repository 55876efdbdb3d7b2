//! `ferry-e2e migrate`: the whole migration on a cluster whose images are
//! loaded (see `ferry_e2e::migration`). `make demo` runs it on the local real
//! node, `e2e/kind.sh` on kind. Exits non-zero when the migration fails or
//! falls short (a lost write, a skipped phase, two source pods down at once).

use std::time::Duration;

use clap::{Parser, ValueEnum};
use ferry_e2e::migration::{self, Cluster, Fault, Images, Options};

#[derive(Parser, Debug)]
#[command(name = "ferry-e2e", about = "Ferry's end-to-end migration run")]
enum Cli {
    /// helm install Ferry, start the example clusters and application, apply
    /// the example migration, follow it to Ready and check the result.
    Migrate(MigrateArgs),
}

#[derive(clap::Args, Debug)]
struct MigrateArgs {
    /// Which cluster and images: the local test bed's node (kubeconfig and
    /// tools from ~/.cache/ferry, images ferry.dev/*:dev), or the current
    /// KUBECONFIG with kubectl/helm from the PATH (kind: images
    /// $FERRY_E2E_IMAGE_PREFIX/ferry-*:$FERRY_E2E_IMAGE_TAG).
    #[arg(long, value_enum, default_value = "local")]
    cluster: Target,
    /// Namespace of the example clusters and the migration.
    #[arg(long, default_value = "ferry-demo")]
    namespace: String,
    /// Seconds the migration may take to reach Ready.
    #[arg(long, default_value_t = 1500)]
    timeout_secs: u64,
    /// Rows of history the application writes before the migration starts.
    #[arg(long, default_value_t = 2000)]
    history_rows: u64,
    /// Faults to inject (repeatable).
    #[arg(long, value_enum)]
    fault: Vec<FaultArg>,
    /// Seconds the target stays down with `--fault target-down`.
    #[arg(long, default_value_t = 60)]
    target_down_secs: u64,
    /// Leave the migration in place (skip the teardown checks).
    #[arg(long)]
    keep: bool,
    /// Stop at Ready: no cut-over (by default the run goes on through
    /// shadowReads, targetPrimary, back to mirror, targetPrimary and done).
    #[arg(long)]
    stop_at_ready: bool,
    /// The source as cass-operator lays it out: one StatefulSet per rack,
    /// found by the migration's `source.selector`.
    #[arg(long)]
    racks: bool,
    /// Start Cassandra without waiting for gossip to settle (seconds instead
    /// of a minute per node): always on the local node, asked for on kind.
    #[arg(long)]
    fast_cassandra: bool,
    /// Cassandra's write_request_timeout on both clusters (test bed images),
    /// the proxies' target timeout 2 s above it. Default: 8000 on the local
    /// node, where four JVMs share two cores; Cassandra's own (2000) on kind.
    #[arg(long)]
    cassandra_write_timeout_ms: Option<u32>,
    /// The source cluster's Cassandra image, when it differs from the
    /// target's: e.g. ferry.dev/cassandra:4.1-dev (`e2e/images/build.sh
    /// cassandra-4.1`) for a 4.1 to 5.0 migration.
    #[arg(long)]
    source_cassandra_image: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Target {
    Local,
    Kubeconfig,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FaultArg {
    OperatorDuringRoll,
    OperatorDuringBackfill,
    BackfillPod,
    TargetDown,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli::Migrate(args) = Cli::parse();
    let (cluster, mut images) = match args.cluster {
        Target::Local => (Cluster::local(), Images::local()),
        Target::Kubeconfig => (Cluster::from_env(), Images::from_env()),
    };
    if let Some(image) = args.source_cassandra_image {
        images.source_cassandra = Some(image);
    }
    let faults = args
        .fault
        .iter()
        .map(|f| match f {
            FaultArg::OperatorDuringRoll => Fault::OperatorKilledDuringRoll,
            FaultArg::OperatorDuringBackfill => Fault::OperatorKilledDuringBackfill,
            FaultArg::BackfillPod => Fault::BackfillPodKilled,
            FaultArg::TargetDown => Fault::TargetDown(Duration::from_secs(args.target_down_secs)),
        })
        .collect();
    let opts = Options {
        namespace: args.namespace,
        timeout: Duration::from_secs(args.timeout_secs),
        faults,
        fast_cassandra: args.fast_cassandra || matches!(args.cluster, Target::Local),
        cassandra_write_timeout_ms: args.cassandra_write_timeout_ms.or(match args.cluster {
            Target::Local => Some(8000),
            _ => None,
        }),
        history_rows: args.history_rows,
        check_teardown: !args.keep,
        cutover: !args.stop_at_ready,
        layout: if args.racks {
            migration::SourceLayout::Racks
        } else {
            migration::SourceLayout::OneStatefulSet
        },
        ..Options::default()
    };
    let outcome = migration::run(&cluster, &images, &opts).await?;
    println!("\n== Ferry end-to-end migration ==\n{}", outcome.summary());
    let problems = outcome.problems();
    if problems.is_empty() {
        println!("result: PASS");
        Ok(())
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        anyhow::bail!("{} problems", problems.len())
    }
}
