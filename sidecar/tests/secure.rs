//! Credentials and TLS, against the test bed's secure node (`up.sh
//! --secure`: password authentication, user cassandra/cassandra, client TLS
//! with a test CA): the backfill and validation with a password over TLS, a
//! refused password, an untrusted certificate, and the operator's CQL checks
//! logging in the same way.

mod bulk_support;
mod proxy_support;

use std::time::Duration;

use bulk_support::*;
use ferry_e2e::testbed::SecureNode;
use ferry_operator::cql::{self, Access, RingHealth};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

const USER: &str = "cassandra";
const PASSWORD: &str = "cassandra";

async fn secure_node() -> SecureNode {
    tokio::task::spawn_blocking(ferry_e2e::testbed::secure)
        .await
        .expect("join")
        .expect("the secure node must start")
        .secure
        .expect("up.sh --secure describes the secure node")
}

fn tls(ca_file: &std::path::Path) -> std::sync::Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca_file).expect("CA file");
    let roots = ferry_sidecar::tls::roots_from_pem(&pem).expect("CA certificates");
    std::sync::Arc::new(ferry_sidecar::tls::client_config(roots, None, false).expect("TLS config"))
}

/// A session to the secure node over TLS, retrying while the node sets up
/// its default superuser (a few seconds after it starts answering).
async fn secure_session(node: &SecureNode) -> Session {
    let mut last = String::new();
    for _ in 0..60 {
        match SessionBuilder::new()
            .known_node(&node.contact_point)
            .user(USER, PASSWORD)
            .tls_context(Some(tls(&node.ca_file)))
            .build()
            .await
        {
            Ok(s) => return s,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("cannot log in to the secure node over TLS: {last}");
}

/// `ferry-sidecar MODE` from the bed's source into the secure node.
async fn cli(bed: &Bed, node: &SecureNode, mode: &str, extra: &[&str]) -> (Option<i32>, String) {
    let target = [
        ("--target-contact-points", node.contact_point.as_str()),
        ("--target-local-dc", node.datacenter.as_str()),
    ];
    run_cli(bed, mode, &target, extra).await
}

async fn table_on_both(bed: &Bed, secure: &Session, ks: &str) {
    for session in [&*bed.source, secure] {
        exec(
            session,
            &format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
        )
        .await;
        exec(
            session,
            &format!("CREATE TABLE IF NOT EXISTS {ks}.t (k int PRIMARY KEY, v text)"),
        )
        .await;
        session
            .await_schema_agreement()
            .await
            .expect("schema agreement");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_into_a_tls_target_with_a_password_copies_and_validates() {
    let bed = bed().await;
    let node = secure_node().await;
    let secure = secure_session(&node).await;
    let ks = unique("secure");
    table_on_both(&bed, &secure, &ks).await;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"),
        (0..500).map(|k| (k, format!("row {k}"))),
    )
    .await;
    let ca = node.ca_file.display().to_string();
    let login = [
        "--target-username",
        USER,
        "--target-password",
        PASSWORD,
        "--target-tls-ca-file",
        &ca,
        "--keyspaces",
        &ks,
    ];
    let (code, stderr) = cli(&bed, &node, "backfill", &login).await;
    assert_eq!(code, Some(0), "backfill failed: {stderr}");
    let copied: Option<i64> = scalar(&secure, &format!("SELECT COUNT(*) FROM {ks}.t")).await;
    assert_eq!(copied, Some(500));
    let (code, stderr) = cli(&bed, &node, "validate", &login).await;
    assert_eq!(
        code,
        Some(0),
        "validation found differences or failed: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_fails_at_once_naming_the_credentials() {
    let bed = bed().await;
    let node = secure_node().await;
    // Make sure the node's roles are set up, so a refusal is a real one.
    drop(secure_session(&node).await);
    let ca = node.ca_file.display().to_string();
    let flags = [
        "--target-username",
        USER,
        "--target-password",
        "not-the-password",
        "--target-tls-ca-file",
        &ca,
        "--keyspaces",
        "system_auth_does_not_matter",
        // A refused login must not wait this out.
        "--connect-wait-secs",
        "600",
    ];
    let run = cli(&bed, &node, "backfill", &flags);
    let (code, stderr) = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("a refused password is not retried for ten minutes");
    assert_eq!(code, Some(2), "bad input, not a retry: {stderr}");
    assert!(
        stderr.contains("refused the credentials"),
        "the error names the credentials: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_untrusted_ca_is_refused() {
    let bed = bed().await;
    let node = secure_node().await;
    drop(secure_session(&node).await);
    // The system's public CAs did not sign the test node's certificate.
    let (code, stderr) = cli(
        &bed,
        &node,
        "backfill",
        &[
            "--target-username",
            USER,
            "--target-password",
            PASSWORD,
            "--target-tls-ca-file",
            "/etc/ssl/certs/ca-certificates.crt",
            "--keyspaces",
            "any",
            "--connect-wait-secs",
            "0",
        ],
    )
    .await;
    assert_ne!(code, Some(0), "an untrusted certificate must not connect");
    let lower = stderr.to_ascii_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("tls"),
        "the error says why: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_checks_log_in_with_a_password_over_tls() {
    let node = secure_node().await;
    drop(secure_session(&node).await);
    let ca = std::fs::read(&node.ca_file).expect("CA file");
    let ip: std::net::IpAddr = node
        .contact_point
        .rsplit_once(':')
        .map_or(node.contact_point.as_str(), |(h, _)| h)
        .parse()
        .expect("ip");
    let good = Access::with_password(USER, PASSWORD)
        .with_tls_ca("test", &ca, false)
        .expect("TLS from the CA");
    assert_eq!(
        cql::ring_health(&[ip], 9042, &good)
            .await
            .expect("check runs"),
        RingHealth::Healthy
    );
    let refused = Access::with_password(USER, "wrong")
        .with_tls_ca("test", &ca, false)
        .expect("TLS from the CA");
    let RingHealth::Unhealthy(problems) = cql::ring_health(&[ip], 9042, &refused)
        .await
        .expect("check runs")
    else {
        panic!("a refused login must not pass the ring check");
    };
    assert!(
        problems[0].to_ascii_lowercase().contains("authentication"),
        "{problems:?}"
    );
}

/// Issue 14 §3: target credentials reach the proxy as files mounted from
/// the Secret and are read at each new login, so a rotated password takes
/// effect without restarting the proxy. A proxy in sync mode into the
/// secure node starts with a wrong password in its file: the application's
/// write fails. The file is rewritten, as the kubelet does when the Secret
/// changes; the next connection's write reaches both clusters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_target_password_file_takes_effect_without_a_restart() {
    let bed = bed().await;
    let node = secure_node().await;
    let secure = secure_session(&node).await;
    let ks = unique("rotate");
    table_on_both(&bed, &secure, &ks).await;
    let dir = std::env::temp_dir().join(format!("ferry-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (user_file, password_file) = (dir.join("username"), dir.join("password"));
    std::fs::write(&user_file, format!("{USER}\n")).expect("username");
    std::fs::write(&password_file, "not-the-password\n").expect("password");
    let (host, port) = node
        .contact_point
        .rsplit_once(':')
        .expect("secure node host:port");
    let proxy = proxy_support::start_proxy(
        "127.0.0.60",
        &bed.testbed.source_contact_points[0],
        host,
        &[
            "--mode",
            "sync",
            "--target-port",
            port,
            "--target-tls-ca",
            &node.ca_file.display().to_string(),
            "--target-username-file",
            &user_file.display().to_string(),
            "--target-password-file",
            &password_file.display().to_string(),
        ],
    )
    .await;
    let write = |k: i32| {
        let addr = proxy.addr.to_string();
        let ks = ks.clone();
        async move {
            let client = proxy_support::connect(&addr).await;
            client
                .query_unpaged(format!("INSERT INTO {ks}.t (k, v) VALUES ({k}, 'x')"), &[])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let refused = write(1).await;
    assert!(refused.is_err(), "the target took a wrong password");

    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("rotate");
    write(2)
        .await
        .expect("the new password is used at the next login");
    let on_target: Option<i64> =
        scalar(&secure, &format!("SELECT COUNT(*) FROM {ks}.t WHERE k = 2")).await;
    assert_eq!(on_target, Some(1));
    proxy.stop().await.expect("proxy stops");
    let _ = std::fs::remove_dir_all(&dir);
}
