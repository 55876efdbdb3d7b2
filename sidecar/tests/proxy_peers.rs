//! Peer substitution against a 3-node source: three proxies, one per
//! source node; a driver given one proxy discovers the other two and never
//! a Cassandra node.

mod proxy_support;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use proxy_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_given_one_proxy_discovers_only_proxies() {
    let tb = testbed(3);
    assert!(
        tb.source_contact_points.len() >= 3,
        "{:?}",
        tb.source_contact_points
    );
    let target = tb.target_contact_points[0].clone();
    let proxy_ips = ["127.0.0.31", "127.0.0.32", "127.0.0.33"];
    let map_path = std::env::temp_dir().join(format!("ferry-peer-map-{}.txt", std::process::id()));
    let mut map = String::from("# source node -> proxy\n");
    for (node, ip) in tb.source_contact_points.iter().zip(proxy_ips) {
        let node_ip = node.rsplit_once(':').map(|(h, _)| h).unwrap_or(node);
        map.push_str(&format!("{node_ip} {ip}:29042\n"));
    }
    std::fs::write(&map_path, &map).expect("write peer map");
    let map_arg = map_path.display().to_string();
    let mut proxies = Vec::new();
    for (node, ip) in tb.source_contact_points.iter().zip(proxy_ips) {
        proxies.push(
            start_proxy(
                ip,
                node,
                &target,
                &["--peer-map", &map_arg, "--mode", "async"],
            )
            .await,
        );
    }

    let session = connect("127.0.0.31:29042").await;
    // Give the driver time to open its pools to every node it learned of.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nodes: BTreeSet<SocketAddr> = session
        .get_cluster_state()
        .get_nodes_info()
        .iter()
        .map(|n| SocketAddr::new(n.address.ip(), n.address.port()))
        .collect();
    let expected: BTreeSet<SocketAddr> = proxy_ips
        .iter()
        .map(|ip| format!("{ip}:29042").parse().unwrap())
        .collect();
    assert_eq!(
        nodes, expected,
        "the driver must know exactly the three proxies"
    );
    for p in &proxies {
        let open = p.metric("ferry_proxy_client_connections").await;
        assert!(open >= 1.0, "the driver opened no connection to {}", p.addr);
    }
    // Real topology is kept: three distinct host ids and the real datacenter.
    let info = session.get_cluster_state();
    let dcs: BTreeSet<String> = info
        .get_nodes_info()
        .iter()
        .filter_map(|n| n.datacenter.clone())
        .collect();
    assert_eq!(dcs, BTreeSet::from([tb.source_datacenter.clone()]));

    // Prepared statements against system tables are rewritten too, and so
    // is peers_v2 (native_address and native_port).
    let prepared = session
        .prepare("SELECT rpc_address FROM system.peers")
        .await
        .expect("prepare");
    let rows = session
        .execute_unpaged(&prepared, ())
        .await
        .expect("execute")
        .into_rows_result()
        .expect("rows");
    let addrs: BTreeSet<IpAddr> = rows
        .rows::<(IpAddr,)>()
        .expect("typed")
        .map(|r| r.expect("row").0)
        .collect();
    assert_eq!(addrs.len(), 2);
    assert!(
        addrs
            .iter()
            .all(|a| proxy_ips.contains(&a.to_string().as_str())),
        "{addrs:?}"
    );
    let v2 = session
        .query_unpaged(
            "SELECT native_address, native_port FROM system.peers_v2",
            &[],
        )
        .await
        .expect("peers_v2")
        .into_rows_result()
        .expect("rows");
    for row in v2.rows::<(IpAddr, i32)>().expect("typed") {
        let (addr, port) = row.expect("row");
        assert!(proxy_ips.contains(&addr.to_string().as_str()), "{addr}");
        assert_eq!(port, 29042);
    }

    // The map is re-read when it changes.
    std::fs::write(
        &map_path,
        map.replace("127.0.0.32:29042", "127.0.0.32:29999"),
    )
    .expect("rewrite map");
    let mut seen_new_port = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let v2 = session
            .query_unpaged("SELECT peer, native_port FROM system.peers_v2", &[])
            .await
            .expect("peers_v2")
            .into_rows_result()
            .expect("rows");
        if v2
            .rows::<(IpAddr, i32)>()
            .expect("typed")
            .any(|r| r.map(|r| r.1 == 29999).unwrap_or(false))
        {
            seen_new_port = true;
            break;
        }
    }
    assert!(seen_new_port, "peer map change not applied");
    drop(session);
    for p in proxies {
        p.stop().await.expect("stop");
    }
    let _ = std::fs::remove_file(&map_path);
}
