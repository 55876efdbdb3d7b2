//! The operator's own CQL checks, made with the scylla driver:
//!
//! - [`ring_health`]: before each eviction of the roll, every source node must
//!   be Up/Normal *as the other nodes see it*. Pod readiness only says a node
//!   answers CQL; its peers mark it Up when its gossip reaches them, and
//!   evicting the next pod before that would leave them seeing two nodes down.
//! - [`probe_write`]: before `Mirroring`, a row written through a proxy must
//!   be readable on the target, which proves the whole dual-write path
//!   (client protocol, proxy, target credentials, target schema) end to end.
//!
//! Pure parts (reading the gossip views) are functions of plain data, tested
//! below; the rest is tested against the test bed's real clusters and a real
//! proxy in `e2e/tests/cql_checks.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use scylla::value::CqlValue;

use crate::crd::{CredentialsSecretRef, TlsSecretRef};

/// Why a check could not be made (as opposed to a check that found a problem).
#[derive(Debug, thiserror::Error)]
pub enum CqlError {
    #[error("reading Secret {name}: {source}")]
    Secret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {name} has no key {key}")]
    SecretKey { name: String, key: String },
    #[error("TLS from Secret {name}: {reason}")]
    Tls { name: String, reason: String },
    #[error("bad address among {addresses}: {reason}")]
    Address { addresses: String, reason: String },
    #[error("cannot connect to {contact}: {source}")]
    Connect {
        contact: String,
        #[source]
        source: Box<scylla::errors::NewSessionError>,
    },
    #[error("{what}: {source}")]
    Query {
        what: String,
        #[source]
        source: Box<scylla::errors::ExecutionError>,
    },
    #[error("reading the answer of {what}: {reason}")]
    Rows { what: String, reason: String },
}

/// How to log in to one cluster: what its Secrets say.
#[derive(Clone, Default)]
pub struct Access {
    credentials: Option<(String, String)>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

// Hand-written so that a password never reaches a log line.
impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Access {
    /// Plain CQL, no login (what a cluster without authentication takes).
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Username and password.
    pub fn with_password(username: &str, password: &str) -> Self {
        Self {
            credentials: Some((username.to_owned(), password.to_owned())),
            tls: None,
        }
    }

    /// TLS, trusting the CAs of `ca_pem` (`name` says where they came from,
    /// for errors); `skip_hostname` forgives a certificate for another name.
    pub fn with_tls_ca(
        mut self,
        name: &str,
        ca_pem: &[u8],
        skip_hostname: bool,
    ) -> Result<Self, CqlError> {
        self.tls = Some(tls_config(name, ca_pem, skip_hostname)?);
        Ok(self)
    }

    /// Reads the credentials and TLS Secrets a cluster's spec names.
    pub async fn from_secrets(
        client: &Client,
        ns: &str,
        credentials: Option<&CredentialsSecretRef>,
        tls: Option<&TlsSecretRef>,
    ) -> Result<Self, CqlError> {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let mut access = Self::default();
        if let Some(c) = credentials {
            let secret = get_secret(&api, &c.name).await?;
            let username = secret_text(&secret, &c.name, &c.username_key)?;
            let password = secret_text(&secret, &c.name, &c.password_key)?;
            access.credentials = Some((username, password));
        }
        if let Some(t) = tls {
            let secret = get_secret(&api, &t.name).await?;
            let ca = secret_bytes(&secret, &t.name, "ca.crt")?;
            access = access.with_tls_ca(&t.name, ca, t.insecure_skip_hostname_verification)?;
        }
        Ok(access)
    }
}

async fn get_secret(api: &Api<Secret>, name: &str) -> Result<Secret, CqlError> {
    api.get(name).await.map_err(|source| CqlError::Secret {
        name: name.to_owned(),
        source,
    })
}

fn secret_bytes<'a>(secret: &'a Secret, name: &str, key: &str) -> Result<&'a [u8], CqlError> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .ok_or_else(|| CqlError::SecretKey {
            name: name.to_owned(),
            key: key.to_owned(),
        })
}

fn secret_text(secret: &Secret, name: &str, key: &str) -> Result<String, CqlError> {
    let bytes = secret_bytes(secret, name, key)?;
    Ok(String::from_utf8_lossy(bytes)
        .trim_end_matches(['\n', '\r'])
        .to_owned())
}

fn tls_config(
    name: &str,
    ca_pem: &[u8],
    skip_hostname: bool,
) -> Result<Arc<rustls::ClientConfig>, CqlError> {
    let err = |reason: String| CqlError::Tls {
        name: name.to_owned(),
        reason,
    };
    let roots =
        ferry_sidecar::tls::roots_from_pem(ca_pem).map_err(|e| err(format!("ca.crt: {e}")))?;
    let config = ferry_sidecar::tls::client_config(roots, None, skip_hostname)
        .map_err(|e| err(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Which nodes a check's session may use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every node the cluster's metadata lists.
    Ring,
    /// Only the contact points (the proxies a probe must go through, even
    /// where the metadata still lists a node without one).
    ContactPointsOnly,
}

/// A short-lived session for one check: small pool, short timeouts (the
/// reconcile that waits on it must not hang on a dead node).
pub async fn session(
    contact: &[String],
    access: &Access,
    reach: Reach,
) -> Result<Session, CqlError> {
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::Quorum)
        .request_timeout(Some(Duration::from_secs(10)))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(contact)
        .default_execution_profile_handle(profile.into_handle())
        // The checks name their tables; fetching every column of every
        // keyspace at each check would load the clusters for nothing.
        .fetch_full_schema_metadata(false)
        .connection_timeout(Duration::from_secs(5))
        .pool_size(scylla::client::PoolSize::PerHost(
            std::num::NonZeroUsize::MIN,
        ));
    if let Some((user, password)) = &access.credentials {
        builder = builder.user(user, password);
    }
    if let Some(tls) = &access.tls {
        builder = builder.tls_context(Some(tls.clone()));
    }
    if reach == Reach::ContactPointsOnly {
        let listed = scylla::policies::host_filter::AllowListHostFilter::new(
            contact.iter().map(String::as_str),
        )
        .map_err(|e| CqlError::Address {
            addresses: contact.join(","),
            reason: e.to_string(),
        })?;
        // A session held to one node takes that node however it names
        // itself: the filter sees the address before translation.
        let single = match contact {
            [one] => one.parse::<SocketAddr>().ok(),
            _ => None,
        };
        if let Some(at) = single {
            builder = builder.address_translator(Arc::new(UnspecifiedIsContact(at)));
        }
        builder = builder.host_filter(Arc::new(ContactPointFilter {
            listed,
            single: single.is_some(),
        }));
    }
    builder.build().await.map_err(|source| CqlError::Connect {
        contact: contact.join(","),
        source: Box::new(source),
    })
}

/// The address a node that reports itself at `reported` is reached at,
/// when the session was opened to `contact`: Cassandra 3.x gives its
/// configured `rpc_address` in `system.local`, which is `0.0.0.0` wherever
/// the native port listens on every interface (the usual container setup),
/// and the driver would look for the node there. Such a node is the one the
/// session connected to; any other address is kept.
pub fn reachable_address(reported: SocketAddr, contact: SocketAddr) -> SocketAddr {
    if reported.ip().is_unspecified() {
        SocketAddr::new(contact.ip(), reported.port())
    } else {
        reported
    }
}

/// [`reachable_address`] as the driver's address translator, for a session
/// held to one node.
struct UnspecifiedIsContact(SocketAddr);

#[async_trait::async_trait]
impl scylla::policies::address_translator::AddressTranslator for UnspecifiedIsContact {
    async fn translate_address(
        &self,
        peer: &scylla::policies::address_translator::UntranslatedPeer,
    ) -> Result<SocketAddr, scylla::errors::TranslationError> {
        Ok(reachable_address(peer.untranslated_address(), self.0))
    }
}

/// The contact points, and with a single one a node at the unspecified
/// address too (that node, [`reachable_address`]).
struct ContactPointFilter {
    listed: scylla::policies::host_filter::AllowListHostFilter,
    single: bool,
}

impl scylla::policies::host_filter::HostFilter for ContactPointFilter {
    fn accept(&self, peer: &scylla::cluster::metadata::Peer) -> bool {
        let unspecified = matches!(peer.address,
            scylla::cluster::NodeAddr::Translatable(addr) if addr.ip().is_unspecified());
        self.listed.accept(peer) || (self.single && unspecified)
    }
}

/// What one node says, in `system_views.gossip_info`, about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipEntry {
    pub address: IpAddr,
    /// Bumped each time the node starts: a peer that holds the current one
    /// has heard from the node since its restart.
    pub generation: i32,
    /// `STATUS_WITH_PORT` (or `STATUS` on older nodes), e.g. `NORMAL,-42`.
    pub status: String,
}

/// The ring as each node sees it: observer → its gossip entries.
pub type GossipViews = BTreeMap<IpAddr, Vec<GossipEntry>>;

/// The outcome of [`ring_health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingHealth {
    /// Every node answers and every node sees every other one Normal, at
    /// its current generation.
    Healthy,
    /// What is wrong, one line per problem.
    Unhealthy(Vec<String>),
    /// The nodes have no `system_views.gossip_info` (Cassandra before 4.1):
    /// the roll falls back to readiness and a settle time.
    Unsupported(String),
}

/// Judges the gossip views of `nodes` (every source node's address). Pure.
pub fn judge_ring(nodes: &[IpAddr], views: &GossipViews, unreachable: &[String]) -> RingHealth {
    let mut problems: Vec<String> = unreachable.to_vec();
    // Each node's current generation, as it reports itself.
    let own: BTreeMap<IpAddr, i32> = views
        .iter()
        .filter_map(|(observer, entries)| {
            entries
                .iter()
                .find(|e| e.address == *observer)
                .map(|e| (*observer, e.generation))
        })
        .collect();
    for (observer, entries) in views {
        for subject in nodes.iter().filter(|n| *n != observer) {
            match entries.iter().find(|e| e.address == *subject) {
                None => problems.push(format!("{observer} does not know {subject}")),
                Some(e) if !e.status.starts_with("NORMAL") => problems.push(format!(
                    "{observer} sees {subject} as {}",
                    if e.status.is_empty() {
                        "unknown"
                    } else {
                        &e.status
                    }
                )),
                Some(e) => {
                    if let Some(current) = own.get(subject) {
                        if e.generation != *current {
                            problems.push(format!(
                                "{observer} has not heard from {subject} since it restarted (generation {} < {current})",
                                e.generation
                            ));
                        }
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        RingHealth::Healthy
    } else {
        RingHealth::Unhealthy(problems)
    }
}

/// Asks every node in `nodes` (addresses of the source pods, reached on
/// `port`) for its gossip view and judges it with [`judge_ring`].
pub async fn ring_health(
    nodes: &[IpAddr],
    port: u16,
    access: &Access,
) -> Result<RingHealth, CqlError> {
    let mut views = GossipViews::new();
    let mut unreachable = Vec::new();
    for ip in nodes {
        // One session per node, held to that node: through a proxy the
        // driver would otherwise learn the other nodes' advertised
        // addresses, and a node whose address answers nothing yet (a pod
        // mid-roll) must read as that node down, not as the ring unknown.
        let contact = [socket(*ip, port)];
        let session = match session(&contact, access, Reach::ContactPointsOnly).await {
            Ok(s) => s,
            Err(e) => {
                unreachable.push(format!("{ip} does not answer: {e}"));
                continue;
            }
        };
        // `SELECT *`: the columns differ between versions (STATUS_WITH_PORT
        // appeared in 4.0), and a missing one must not read as a dead node.
        let mut stmt = Statement::new("SELECT * FROM system_views.gossip_info");
        stmt.set_consistency(Consistency::One);
        let result = match session.query_unpaged(stmt, ()).await {
            Ok(r) => r,
            Err(e) => {
                let text = e.to_string();
                if text.contains("gossip_info") || text.contains("system_views") {
                    return Ok(RingHealth::Unsupported(format!(
                        "{ip} has no system_views.gossip_info (Cassandra before 4.1?): {text}"
                    )));
                }
                unreachable.push(format!("{ip} does not answer: {text}"));
                continue;
            }
        };
        let rows_error = |reason: String| CqlError::Rows {
            what: format!("the gossip view of {ip}"),
            reason,
        };
        let rows = result
            .into_rows_result()
            .map_err(|e| rows_error(e.to_string()))?;
        let column = |name: &str| rows.column_specs().iter().position(|c| c.name() == name);
        let Some(address_at) = column("address") else {
            return Err(rows_error("no address column".to_owned()));
        };
        let (generation_at, status_at, status_with_port_at) = (
            column("generation"),
            column("status"),
            column("status_with_port"),
        );
        let mut entries = Vec::new();
        for row in rows
            .rows::<scylla::value::Row>()
            .map_err(|e| rows_error(e.to_string()))?
        {
            let row = row.map_err(|e| rows_error(e.to_string()))?;
            let at = |i: Option<usize>| i.and_then(|i| row.columns.get(i)).and_then(Option::as_ref);
            let Some(CqlValue::Inet(address)) = at(Some(address_at)) else {
                continue;
            };
            let text = |i| match at(i) {
                Some(CqlValue::Text(s) | CqlValue::Ascii(s)) => Some(s.clone()),
                _ => None,
            };
            entries.push(GossipEntry {
                address: *address,
                generation: match at(generation_at) {
                    Some(CqlValue::Int(g)) => *g,
                    _ => 0,
                },
                status: text(status_with_port_at)
                    .or_else(|| text(status_at))
                    .unwrap_or_default(),
            });
        }
        views.insert(*ip, entries);
    }
    Ok(judge_ring(nodes, &views, &unreachable))
}

/// Contact points as the operator must give them to the driver. A host name
/// in a migration is written as the migration's pods see it, so a short
/// in-cluster name (`cassandra-target-0.cassandra-target:9042`) resolves
/// there through the pod's DNS search list but not from the operator's own
/// namespace: each name also gets its `<name>.<namespace>.svc` form. The
/// driver uses whichever resolves and ignores the other.
pub fn contact_points_in(namespace: &str, contact_points: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for cp in contact_points {
        out.push(cp.clone());
        // The CRD requires a port on every contact point.
        let Some((host, port)) = crate::sidecar::split_host_port(cp) else {
            continue;
        };
        let is_ip = host.parse::<IpAddr>().is_ok();
        let qualified = host.ends_with(".svc")
            || host.contains(".svc.")
            || host.ends_with('.')
            || host.ends_with(".cluster.local");
        if !is_ip && !qualified && !host.is_empty() {
            out.push(format!("{host}.{namespace}.svc:{port}"));
        }
    }
    out
}

fn socket(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// Where [`probe_write`] writes: a keyspace Ferry owns on both clusters.
pub const PROBE_TABLE: &str = "probe";

/// Writes one row through the proxies at `proxies` and waits up to `wait`
/// for it on the target. Creates `keyspace.probe` on both clusters first
/// (`IF NOT EXISTS`; SimpleStrategy, RF = min(3, nodes) on each side).
/// Returns how long the row took to show up on the target.
pub async fn probe_write(
    proxies: &[String],
    source_access: &Access,
    target: &[String],
    target_access: &Access,
    keyspace: &str,
    probe_id: &str,
    wait: Duration,
) -> Result<Option<Duration>, CqlError> {
    let through_proxy = session(proxies, source_access, Reach::ContactPointsOnly).await?;
    let on_target = session(target, target_access, Reach::Ring).await?;
    // The target first: the proxy may forward schema changes (--mirror-ddl),
    // and then the target's own RF must already be in place.
    for (s, side) in [(&on_target, "target"), (&through_proxy, "source")] {
        let nodes = s.get_cluster_state().get_nodes_info().len().clamp(1, 3);
        let ddl = [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {nodes}}}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.{PROBE_TABLE} (id text PRIMARY KEY, written_at timestamp)"
            ),
        ];
        for cql in ddl {
            s.query_unpaged(cql.as_str(), ())
                .await
                .map_err(|source| CqlError::Query {
                    what: format!("creating the probe table on the {side}"),
                    source: Box::new(source),
                })?;
        }
        s.await_schema_agreement()
            .await
            .map_err(|source| CqlError::Query {
                what: format!("waiting for schema agreement on the {side}"),
                source: Box::new(scylla::errors::ExecutionError::SchemaAgreementError(source)),
            })?;
    }
    let started = Instant::now();
    let written_at = scylla::value::CqlTimestamp(jiff::Timestamp::now().as_millisecond());
    through_proxy
        .query_unpaged(
            format!("INSERT INTO {keyspace}.{PROBE_TABLE} (id, written_at) VALUES (?, ?)"),
            (probe_id, written_at),
        )
        .await
        .map_err(|source| CqlError::Query {
            what: "the probe write through the proxy".to_owned(),
            source: Box::new(source),
        })?;
    let read = format!("SELECT written_at FROM {keyspace}.{PROBE_TABLE} WHERE id = ?");
    loop {
        let seen = on_target
            .query_unpaged(read.as_str(), (probe_id,))
            .await
            .map_err(|source| CqlError::Query {
                what: "reading the probe row on the target".to_owned(),
                source: Box::new(source),
            })?
            .into_rows_result()
            .map(|r| r.rows_num() > 0)
            .unwrap_or(false);
        if seen {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() >= wait {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cassandra 3.11 with `rpc_address: 0.0.0.0` says so in `system.local`;
    /// the ring check's session, held to that one node, found no node to
    /// ask ("Load balancing policy returned an empty plan") and the roll of
    /// a 3.11 source waited forever (`a_cassandra_3_11_source_migrates_to_a_5_0_target`).
    #[test]
    fn a_node_reporting_the_unspecified_address_is_reached_at_the_contact_point() {
        let contact: SocketAddr = "10.244.0.25:9042".parse().unwrap();
        let unspecified: SocketAddr = "0.0.0.0:9042".parse().unwrap();
        assert_eq!(reachable_address(unspecified, contact), contact);
        let other: SocketAddr = "10.244.0.26:9042".parse().unwrap();
        assert_eq!(reachable_address(other, contact), other);
        let v6: SocketAddr = "[::]:9042".parse().unwrap();
        assert_eq!(reachable_address(v6, contact), contact);
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn entry(last: u8, generation: i32, status: &str) -> GossipEntry {
        GossipEntry {
            address: ip(last),
            generation,
            status: status.to_owned(),
        }
    }

    fn healthy_views() -> GossipViews {
        let all = || {
            vec![
                entry(1, 100, "NORMAL,1"),
                entry(2, 200, "NORMAL,2"),
                entry(3, 300, "NORMAL,3"),
            ]
        };
        [(ip(1), all()), (ip(2), all()), (ip(3), all())]
            .into_iter()
            .collect()
    }

    #[test]
    fn short_in_cluster_names_also_get_their_namespace_qualified_form() {
        let cps = [
            "cassandra-target-0.cassandra-target:9042".to_owned(),
            "10.0.0.7:9042".to_owned(),
            "[fd00::7]:9042".to_owned(),
            "target.other.svc:9142".to_owned(),
            "target.other.svc.cluster.local:9042".to_owned(),
        ];
        assert_eq!(
            contact_points_in("shop", &cps),
            vec![
                "cassandra-target-0.cassandra-target:9042",
                "cassandra-target-0.cassandra-target.shop.svc:9042",
                "10.0.0.7:9042",
                "[fd00::7]:9042",
                "target.other.svc:9142",
                "target.other.svc.cluster.local:9042",
            ]
        );
    }

    #[test]
    fn a_ring_where_everyone_sees_everyone_normal_is_healthy() {
        assert_eq!(
            judge_ring(&[ip(1), ip(2), ip(3)], &healthy_views(), &[]),
            RingHealth::Healthy
        );
    }

    #[test]
    fn a_restarted_node_is_not_up_until_its_peers_have_its_new_generation() {
        let mut views = healthy_views();
        // Node 2 restarted (generation 250); node 3 has not heard from it yet.
        for e in views.get_mut(&ip(2)).into_iter().flatten() {
            if e.address == ip(2) {
                e.generation = 250;
            }
        }
        for e in views.get_mut(&ip(1)).into_iter().flatten() {
            if e.address == ip(2) {
                e.generation = 250;
            }
        }
        let RingHealth::Unhealthy(problems) = judge_ring(&[ip(1), ip(2), ip(3)], &views, &[])
        else {
            panic!("expected unhealthy");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("10.0.0.3 has not heard from 10.0.0.2"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_node_seen_leaving_or_missing_or_unreachable_is_reported() {
        let mut views = healthy_views();
        views.get_mut(&ip(1)).into_iter().flatten().for_each(|e| {
            if e.address == ip(3) {
                e.status = "LEAVING,3".into();
            }
        });
        if let Some(v) = views.get_mut(&ip(2)) {
            v.retain(|e| e.address != ip(3));
        }
        let RingHealth::Unhealthy(problems) = judge_ring(
            &[ip(1), ip(2), ip(3)],
            &views,
            &["10.0.0.4 does not answer".into()],
        ) else {
            panic!("expected unhealthy");
        };
        assert!(problems.contains(&"10.0.0.4 does not answer".to_owned()));
        assert!(problems.contains(&"10.0.0.1 sees 10.0.0.3 as LEAVING,3".to_owned()));
        assert!(problems.contains(&"10.0.0.2 does not know 10.0.0.3".to_owned()));
    }
}
