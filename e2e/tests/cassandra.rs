//! The test bed's Cassandra clusters are real: a real driver writes and reads
//! a row on each, and the two clusters are independent.

use std::time::{SystemTime, UNIX_EPOCH};

use ferry_e2e::testbed;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

async fn connect(contact_points: &[String]) -> Session {
    SessionBuilder::new()
        .known_nodes(contact_points)
        .build()
        .await
        .unwrap_or_else(|e| panic!("connecting to {contact_points:?}: {e}"))
}

async fn write_and_read(session: &Session, keyspace: &str, value: &str) -> String {
    session
        .query_unpaged(
            format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            &[],
        )
        .await
        .expect("create keyspace");
    session
        .query_unpaged(
            format!("CREATE TABLE IF NOT EXISTS {keyspace}.kv (k text PRIMARY KEY, v text)"),
            &[],
        )
        .await
        .expect("create table");
    session
        .query_unpaged(
            format!("INSERT INTO {keyspace}.kv (k, v) VALUES (?, ?)"),
            ("probe", value),
        )
        .await
        .expect("insert");
    let rows = session
        .query_unpaged(
            format!("SELECT v FROM {keyspace}.kv WHERE k = ?"),
            ("probe",),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let (v,): (String,) = rows.single_row().expect("one row");
    v
}

async fn cluster_name(session: &Session) -> String {
    let rows = session
        .query_unpaged("SELECT cluster_name FROM system.local", &[])
        .await
        .expect("system.local")
        .into_rows_result()
        .expect("rows");
    let (name,): (String,) = rows.single_row().expect("one row");
    name
}

#[tokio::test(flavor = "multi_thread")]
async fn driver_writes_and_reads_on_source_and_target() {
    let bed = testbed::cassandra(1).expect("test bed");
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
        .to_string();
    let source = connect(&bed.source_contact_points).await;
    let target = connect(&bed.target_contact_points).await;

    let keyspace = "ferry_testbed_probe";
    let on_source = write_and_read(&source, keyspace, &format!("source-{nonce}")).await;
    let on_target = write_and_read(&target, keyspace, &format!("target-{nonce}")).await;
    assert_eq!(on_source, format!("source-{nonce}"));
    assert_eq!(on_target, format!("target-{nonce}"));

    // Two independent clusters: each has its own cluster name, and the same
    // key holds different values on each.
    assert_eq!(cluster_name(&source).await, "ferry-source");
    assert_eq!(cluster_name(&target).await, "ferry-target");
}
