//! Helpers shared by the bulk integration tests (real test bed).
#![allow(dead_code)]

use std::sync::Arc;

use clap::Parser;
use ferry_e2e::testbed::Testbed;
use ferry_sidecar::bulk::{BackfillArgs, ValidateArgs};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

pub struct Bed {
    pub testbed: Testbed,
    pub source: Arc<Session>,
    pub target: Arc<Session>,
}

pub async fn bed() -> Bed {
    bed_with(1).await
}

/// The bed with at least `source_nodes` source nodes.
pub async fn bed_with(source_nodes: u8) -> Bed {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let testbed = tokio::task::spawn_blocking(move || ferry_e2e::testbed::cassandra(source_nodes))
        .await
        .expect("join")
        .expect("test bed");
    let source = SessionBuilder::new()
        .known_nodes(&testbed.source_contact_points)
        .build()
        .await
        .expect("source session");
    let target = SessionBuilder::new()
        .known_nodes(&testbed.target_contact_points)
        .build()
        .await
        .expect("target session");
    Bed {
        testbed,
        source: Arc::new(source),
        target: Arc::new(target),
    }
}

/// A keyspace name no other test uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "bulk_{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000
    )
}

pub async fn exec(session: &Session, cql: &str) {
    session
        .query_unpaged(cql, ())
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"));
}

/// Inserts one row per item of `rows` into the source, one prepared
/// statement `cql` executed in turn.
pub async fn insert_on_source<V>(bed: &Bed, cql: &str, rows: impl IntoIterator<Item = V>)
where
    V: scylla::serialize::row::SerializeRow,
{
    let insert = bed
        .source
        .prepare(cql)
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"));
    for row in rows {
        bed.source
            .execute_unpaged(&insert, row)
            .await
            .unwrap_or_else(|e| panic!("{cql}: {e}"));
    }
}

/// Creates `keyspace` on both clusters and runs `ddl` (with `{ks}`
/// replaced) on both.
pub async fn create_on_both(bed: &Bed, keyspace: &str, ddl: &[&str]) {
    for (session, dc) in [
        (&bed.source, &bed.testbed.source_datacenter),
        (&bed.target, &bed.testbed.target_datacenter),
    ] {
        exec(
            session,
            &format!(
                "CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'NetworkTopologyStrategy', '{dc}': 1}}"
            ),
        )
        .await;
        for statement in ddl {
            exec(session, &statement.replace("{ks}", keyspace)).await;
        }
        session
            .await_schema_agreement()
            .await
            .expect("schema agreement");
    }
}

pub fn connection_flags(bed: &Bed) -> Vec<String> {
    vec![
        "--source-contact-points".into(),
        bed.testbed.source_contact_points.join(","),
        "--source-local-dc".into(),
        bed.testbed.source_datacenter.clone(),
        "--target-contact-points".into(),
        bed.testbed.target_contact_points.join(","),
        "--target-local-dc".into(),
        bed.testbed.target_datacenter.clone(),
        "--progress-interval".into(),
        "2".into(),
    ]
}

/// Runs `ferry-sidecar MODE` as a child process with the bed's connection
/// flags, each flag of `replace` given its new value, then `extra`.
/// Returns (exit code, stderr).
pub async fn run_cli(
    bed: &Bed,
    mode: &str,
    replace: &[(&str, &str)],
    extra: &[&str],
) -> (Option<i32>, String) {
    let mut flags = connection_flags(bed);
    for (name, value) in replace {
        let i = flags
            .iter()
            .position(|f| f == name)
            .unwrap_or_else(|| panic!("no flag {name}"));
        flags[i + 1] = (*value).to_owned();
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-sidecar"))
        .arg(mode)
        .args(&flags)
        .args(extra)
        .env("FERRY_LOG", "error")
        .output()
        .await
        .expect("run ferry-sidecar");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[derive(Parser)]
struct BackfillCli {
    #[command(flatten)]
    args: BackfillArgs,
}

#[derive(Parser)]
struct ValidateCli {
    #[command(flatten)]
    args: ValidateArgs,
}

pub fn backfill_args(bed: &Bed, extra: &[&str]) -> BackfillArgs {
    let mut argv = vec!["backfill".to_owned()];
    argv.extend(connection_flags(bed));
    argv.extend(extra.iter().map(|s| s.to_string()));
    BackfillCli::parse_from(argv).args
}

pub fn validate_args(bed: &Bed, extra: &[&str]) -> ValidateArgs {
    let mut argv = vec!["validate".to_owned()];
    argv.extend(connection_flags(bed));
    argv.extend(extra.iter().map(|s| s.to_string()));
    ValidateCli::parse_from(argv).args
}

pub async fn run_backfill(
    bed: &Bed,
    extra: &[&str],
) -> ferry_sidecar::bulk::backfill::BackfillReport {
    let args = backfill_args(bed, extra);
    let stats = ferry_sidecar::bulk::progress::Stats::new("backfill");
    ferry_sidecar::bulk::backfill::run(&args, stats)
        .await
        .expect("backfill")
}

pub async fn run_validate(
    bed: &Bed,
    extra: &[&str],
) -> ferry_sidecar::bulk::validate::ValidationReport {
    let args = validate_args(bed, extra);
    let stats = ferry_sidecar::bulk::progress::Stats::new("validate");
    ferry_sidecar::bulk::validate::run(&args, stats)
        .await
        .expect("validate")
}

/// One row's single value, e.g. `SELECT WRITETIME(v) FROM ...`.
pub async fn scalar<T>(session: &Session, cql: &str) -> Option<T>
where
    T: for<'f, 'm> scylla::deserialize::value::DeserializeValue<'f, 'm>,
{
    let result = session
        .query_unpaged(cql, ())
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"))
        .into_rows_result()
        .expect("rows");
    result
        .maybe_first_row::<(Option<T>,)>()
        .expect("row type")
        .and_then(|(v,)| v)
}

/// Every row of a two-column query, first column to second, e.g.
/// `SELECT c, TTL(v) FROM ...`.
pub async fn pairs<K, V>(session: &Session, cql: &str) -> std::collections::BTreeMap<K, V>
where
    K: Ord + for<'f, 'm> scylla::deserialize::value::DeserializeValue<'f, 'm>,
    V: for<'f, 'm> scylla::deserialize::value::DeserializeValue<'f, 'm>,
{
    session
        .query_unpaged(cql, ())
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"))
        .into_rows_result()
        .expect("rows")
        .rows::<(K, V)>()
        .expect("row type")
        .map(|r| r.expect("row"))
        .collect()
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
