//! TLS on all three sides. Two proxies are chained: the driver talks plain
//! CQL to proxy B, whose source and target links are TLS (with a client
//! certificate) to proxy A, whose listener requires mTLS; A talks to the
//! real clusters. Data must flow end to end, and plain TCP to A must fail.
//! B's source link verifies A's name; its target link asks for another name
//! and checks the chain only.

mod proxy_support;

use std::path::Path;
use std::time::Duration;

use proxy_support::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn write_pki(dir: &Path, server_ip: &str) {
    std::fs::create_dir_all(dir).expect("pki dir");
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec![server_ip.to_owned()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("client key");
    let client = CertificateParams::new(vec!["ferry-proxy-client".to_owned()])
        .expect("client params")
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    for (name, pem) in [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server.pem()),
        ("server-key.pem", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client-key.pem", client_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).expect("write pem");
    }
}

async fn count(s: &scylla::client::session::Session, ks: &str) -> usize {
    s.query_unpaged(format!("SELECT k FROM {ks}.t"), &[])
        .await
        .expect("read")
        .into_rows_result()
        .expect("rows")
        .rows_num()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_client_source_and_target_sides() {
    let tb = testbed(1);
    let (src, tgt) = (
        tb.source_contact_points[0].clone(),
        tb.target_contact_points[0].clone(),
    );
    let pki = std::env::temp_dir().join(format!("ferry-proxy-pki-{}", std::process::id()));
    write_pki(&pki, "127.0.0.50");
    let p = |n: &str| pki.join(n).display().to_string();

    let front = start_proxy(
        "127.0.0.50",
        &src,
        &tgt,
        &[
            "--mode",
            "sync",
            "--proxy-tls-cert",
            &p("server.pem"),
            "--proxy-tls-key",
            &p("server-key.pem"),
            "--proxy-tls-client-ca",
            &p("ca.pem"),
        ],
    )
    .await;
    let chained = start_proxy(
        "127.0.0.51",
        "127.0.0.50:29042",
        "127.0.0.50:29042",
        &[
            "--mode",
            "sync",
            "--source-port",
            "29042",
            "--target-port",
            "29042",
            "--source-tls-ca",
            &p("ca.pem"),
            "--source-tls-cert",
            &p("client.pem"),
            "--source-tls-key",
            &p("client-key.pem"),
            "--target-tls-ca",
            &p("ca.pem"),
            "--target-tls-cert",
            &p("client.pem"),
            "--target-tls-key",
            &p("client-key.pem"),
            // The target link checks the chain only: the name it asks for
            // is not the certificate's (what the operator sets for
            // `insecureSkipHostnameVerification`).
            "--target-tls-server-name",
            "not-the-node.example",
            "--target-tls-skip-hostname-verification",
            "--admin-port",
            "28001",
        ],
    )
    .await;

    let source = connect(&src).await;
    let target = connect(&tgt).await;
    let ks = keyspace("px_tls");
    create_keyspace(&source, &ks).await;
    create_keyspace(&target, &ks).await;
    ddl_both(
        &source,
        &target,
        &[format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")],
    )
    .await;

    let client = connect(&chained.addr.to_string()).await;
    let insert = client
        .prepare(format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"))
        .await
        .expect("prepare through two TLS hops");
    for k in 0..20 {
        client
            .execute_unpaged(&insert, (k, "over tls"))
            .await
            .expect("write");
    }
    assert_eq!(count(&source, &ks).await, 20);
    assert_eq!(count(&target, &ks).await, 20);
    assert_eq!(count(&client, &ks).await, 20);

    // Plain CQL to the TLS listener gets no CQL answer.
    let mut plain = tokio::net::TcpStream::connect("127.0.0.50:29042")
        .await
        .expect("tcp");
    plain
        .write_all(&[0x04, 0, 0, 0, 0x05, 0, 0, 0, 0])
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let answer = tokio::time::timeout(Duration::from_secs(3), plain.read(&mut buf)).await;
    let got_cql = matches!(answer, Ok(Ok(n)) if n >= 9 && buf[0] == 0x84);
    assert!(
        !got_cql,
        "a plain client must not be served by a TLS listener"
    );
    drop(client);
    chained.stop().await.expect("stop");
    front.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(&pki);
}
