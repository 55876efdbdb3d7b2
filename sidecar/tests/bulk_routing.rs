//! Range reads go to a replica of the range: the driver's default policy
//! does not route `token(pk) > ? AND token(pk) <= ?` (no partition key is
//! bound), ours does. Needs a source of 3 nodes with RF 1, so that most
//! nodes are *not* replicas of a given range.

mod bulk_support;

use std::collections::HashSet;

use bulk_support::*;
use ferry_sidecar::bulk::ring::{ranges_of, replicas_of};
use ferry_sidecar::bulk::scan::{range_query, TableScan};
use ferry_sidecar::bulk::schema::read_table;
use scylla::response::PagingState;
use scylla::statement::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_are_served_by_replicas() {
    let bed = bed_with(3).await;
    let ks = unique("routing");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int PRIMARY KEY, v int)"],
    )
    .await;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"),
        (0..300).map(|k| (k, k)),
    )
    .await;
    bed.source.refresh_metadata().await.expect("metadata");
    let state = bed.source.get_cluster_state();
    let nodes: HashSet<_> = state.get_nodes_info().iter().map(|n| n.host_id).collect();
    assert!(
        nodes.len() >= 3,
        "needs 3 source nodes, has {}",
        nodes.len()
    );

    let schema = read_table(&bed.source, "source", &ks, "t")
        .await
        .expect("schema");
    let ranges = ranges_of(&bed.source, 64);

    // The driver's default routing: a plain prepared range query.
    let plain = bed
        .source
        .prepare(range_query(&schema))
        .await
        .expect("prepare");
    let mut off_replica = 0;
    for range in &ranges {
        let replicas: Vec<_> = replicas_of(&state, &ks, "t", *range, None)
            .iter()
            .map(|n| n.host_id)
            .collect();
        assert_eq!(replicas.len(), 1, "RF 1");
        let (result, _) = bed
            .source
            .execute_single_page(&plain, (range.start, range.end), PagingState::start())
            .await
            .expect("read");
        if !replicas.contains(&result.request_coordinator().node().host_id) {
            off_replica += 1;
        }
    }
    assert!(
        off_replica > 0,
        "the default policy should send some range reads to non-replicas"
    );

    // Ours: every page of every range is served by a replica.
    let scan = TableScan::prepare(
        "source",
        bed.source.clone(),
        &schema,
        Consistency::One,
        50,
        0,
        None,
    )
    .await
    .expect("scan");
    let (mut pages, mut rows) = (0, 0);
    for range in &ranges {
        let mut rx = scan.spawn(*range);
        while let Some(page) = rx.recv().await {
            let page = page.expect("page");
            assert!(page.on_replica, "range {range} read from a non-replica");
            pages += 1;
            rows += page.rows.len();
        }
    }
    assert_eq!(rows, 300);
    assert!(pages >= ranges.len());
    eprintln!("default policy: {off_replica}/{} range reads off-replica; replica routing: 0/{pages} pages", ranges.len());
}
