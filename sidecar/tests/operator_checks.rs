//! The operator's own CQL checks (`ferry_operator::cql`) against the real
//! pieces they judge: the test bed's 3-node source ring, and a real proxy
//! dual-writing to the bed's target. They live with the proxy tests because
//! the probe needs a running proxy.

mod proxy_support;

use std::net::IpAddr;
use std::time::Duration;

use ferry_operator::cql::{self, Access, RingHealth};
use proxy_support::{keyspace, start_proxy, testbed};

fn ips(contact_points: &[String]) -> Vec<IpAddr> {
    contact_points
        .iter()
        .map(|c| {
            c.rsplit_once(':')
                .map_or(c.as_str(), |(h, _)| h)
                .parse()
                .expect("contact points are IP:port")
        })
        .collect()
}

#[tokio::test]
async fn the_source_ring_is_healthy_as_its_own_nodes_see_it() {
    let bed = testbed(3);
    let nodes = ips(&bed.source_contact_points);
    assert_eq!(nodes.len(), 3, "the bed runs three source nodes");
    let health = cql::ring_health(&nodes, 9042, &Access::anonymous())
        .await
        .expect("the bed's source answers CQL");
    assert_eq!(health, RingHealth::Healthy);
}

#[tokio::test]
async fn a_node_the_ring_does_not_know_makes_it_unhealthy() {
    let bed = testbed(3);
    let mut nodes = ips(&bed.source_contact_points);
    // Nothing listens there: as a pod whose Cassandra never joined.
    let stranger: IpAddr = "127.0.0.69".parse().expect("ip");
    nodes.push(stranger);
    let health = cql::ring_health(&nodes, 9042, &Access::anonymous())
        .await
        .expect("the other nodes answer");
    let RingHealth::Unhealthy(problems) = health else {
        panic!("a node missing from the ring must not pass: {health:?}");
    };
    assert!(
        problems.iter().any(|p| p.contains("127.0.0.69")),
        "{problems:?}"
    );
    // Every real node is asked, and none knows the stranger.
    let unknown = problems
        .iter()
        .filter(|p| p.ends_with("does not know 127.0.0.69"))
        .count();
    assert_eq!(unknown, 3, "{problems:?}");
}

/// `probe_write`, retried on an error (not on a row that stays missing) as
/// the operator retries it every 10 s: a bed that has just started may still
/// be settling its schema.
async fn probe(
    proxies: &[String],
    target: &[String],
    ks: &str,
    id: &str,
    wait: Duration,
) -> Option<Duration> {
    let mut last = None;
    for _ in 0..5 {
        match cql::probe_write(
            proxies,
            &Access::anonymous(),
            target,
            &Access::anonymous(),
            ks,
            id,
            wait,
        )
        .await
        {
            Ok(seen) => return seen,
            Err(e) => {
                eprintln!("probe failed, retrying: {e}");
                last = Some(e);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    panic!("the probe never ran: {last:?}");
}

#[tokio::test]
async fn a_row_written_through_the_proxy_is_seen_on_the_target() {
    let bed = testbed(1);
    let proxy = start_proxy(
        "127.0.0.67",
        &bed.source_contact_points[0],
        &bed.target_contact_points[0],
        &[],
    )
    .await;
    let ks = keyspace("ferry_probe");
    let took = probe(
        &[proxy.addr.to_string()],
        &bed.target_contact_points,
        &ks,
        "probe-through-proxy",
        Duration::from_secs(20),
    )
    .await;
    assert!(took.is_some(), "the probe row never reached the target");
    proxy.stop().await.expect("proxy stops");
}

#[tokio::test]
async fn a_row_written_to_the_source_alone_is_not_seen_on_the_target() {
    let bed = testbed(1);
    let ks = keyspace("ferry_probe");
    // No proxy in the path: what a pod whose redirect is missing looks like.
    let took = probe(
        &bed.source_contact_points[..1],
        &bed.target_contact_points,
        &ks,
        "probe-direct",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        took, None,
        "a row that bypassed the proxy cannot be on the target"
    );
}
