//! Connecting to the source and target clusters.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::client::PoolSize;
use scylla::frame::Compression;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::Consistency;

/// Why a cluster could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no {0} contact point given")]
    NoContactPoints(&'static str),
    #[error("reading the {cluster} password file {path}: {source}")]
    PasswordFile {
        cluster: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting up TLS for the {cluster}: {reason}")]
    Tls {
        cluster: &'static str,
        reason: String,
    },
    #[error("cannot connect to the {cluster} cluster at {contact_points}: {source}")]
    Connect {
        cluster: &'static str,
        contact_points: String,
        #[source]
        source: Box<scylla::errors::NewSessionError>,
    },
    /// The cluster refused the username or password: retrying cannot help.
    #[error("the {cluster} cluster at {contact_points} refused the credentials (check the username and password{hint}): {reason}")]
    BadCredentials {
        cluster: &'static str,
        contact_points: String,
        hint: &'static str,
        reason: String,
    },
    #[error("unknown consistency level `{0}`")]
    Consistency(String),
}

/// Whether a session error is the server refusing the login (an
/// AuthenticationError, or a server that wants a login none was given).
fn is_auth_failure(err: &scylla::errors::NewSessionError) -> bool {
    let text = format!("{err} {err:?}").to_ascii_lowercase();
    text.contains("authentication")
        || text.contains("bad credentials")
        || text.contains("authenticator")
}

/// Connection flags of both clusters.
#[derive(Args, Clone)]
pub struct ConnectionArgs {
    /// Source contact points, `host[:port]`, comma-separated.
    #[arg(
        long,
        env = "FERRY_SOURCE_CONTACT_POINTS",
        value_delimiter = ',',
        required = true
    )]
    pub source_contact_points: Vec<String>,
    /// The source datacenter to read from (reads go to its replicas).
    #[arg(long, env = "FERRY_SOURCE_LOCAL_DC")]
    pub source_local_dc: Option<String>,
    #[arg(long, env = "FERRY_SOURCE_USERNAME")]
    pub source_username: Option<String>,
    /// Source password (prefer --source-password-file or the env var).
    #[arg(long, env = "FERRY_SOURCE_PASSWORD", hide_env_values = true)]
    pub source_password: Option<String>,
    #[arg(long, env = "FERRY_SOURCE_PASSWORD_FILE")]
    pub source_password_file: Option<PathBuf>,
    /// Connect to the source with TLS.
    #[arg(long, env = "FERRY_SOURCE_TLS")]
    pub source_tls: bool,
    /// PEM CA bundle to verify the source's certificates (implies --source-tls).
    #[arg(long, env = "FERRY_SOURCE_TLS_CA_FILE")]
    pub source_tls_ca_file: Option<PathBuf>,
    /// Verify the source certificates' chain only, not their names (the
    /// driver reaches nodes at the IP addresses the ring lists).
    #[arg(long, env = "FERRY_SOURCE_TLS_SKIP_HOSTNAME_VERIFICATION")]
    pub source_tls_skip_hostname_verification: bool,

    /// Target contact points, `host[:port]`, comma-separated.
    #[arg(
        long,
        env = "FERRY_TARGET_CONTACT_POINTS",
        value_delimiter = ',',
        required = true
    )]
    pub target_contact_points: Vec<String>,
    /// The target datacenter to write to.
    #[arg(long, env = "FERRY_TARGET_LOCAL_DC")]
    pub target_local_dc: Option<String>,
    #[arg(long, env = "FERRY_TARGET_USERNAME")]
    pub target_username: Option<String>,
    /// Target password (prefer --target-password-file or the env var).
    #[arg(long, env = "FERRY_TARGET_PASSWORD", hide_env_values = true)]
    pub target_password: Option<String>,
    #[arg(long, env = "FERRY_TARGET_PASSWORD_FILE")]
    pub target_password_file: Option<PathBuf>,
    #[arg(long, env = "FERRY_TARGET_TLS")]
    pub target_tls: bool,
    #[arg(long, env = "FERRY_TARGET_TLS_CA_FILE")]
    pub target_tls_ca_file: Option<PathBuf>,
    /// Verify the target certificates' chain only, not their names.
    #[arg(long, env = "FERRY_TARGET_TLS_SKIP_HOSTNAME_VERIFICATION")]
    pub target_tls_skip_hostname_verification: bool,

    /// Consistency of reads (both clusters).
    #[arg(long, env = "FERRY_READ_CONSISTENCY", default_value = "LOCAL_QUORUM")]
    pub read_consistency: String,
    /// Consistency of writes to the target.
    #[arg(long, env = "FERRY_WRITE_CONSISTENCY", default_value = "LOCAL_QUORUM")]
    pub write_consistency: String,
    /// Connections per node.
    #[arg(long, env = "FERRY_CONNECTIONS_PER_NODE", default_value_t = 2)]
    pub connections_per_node: usize,
    /// How long to keep trying to reach a cluster that does not answer (a
    /// node restarting, a target briefly down) before giving up, in seconds.
    #[arg(long, env = "FERRY_CONNECT_WAIT_SECS", default_value_t = 180)]
    pub connect_wait_secs: u64,
    /// Compression of the CQL connections to both clusters: `none` (the
    /// default) or `lz4`. LZ4 costs CPU on every node read from or written
    /// to, and on the Job, for bytes a network inside one site carries
    /// easily; it pays where the clusters are far apart.
    #[arg(long, env = "FERRY_COMPRESSION", value_enum, default_value_t = WireCompression::None)]
    pub compression: WireCompression,
}

/// Compression of the Jobs' CQL connections (`--compression`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireCompression {
    /// Frames as they are.
    #[default]
    None,
    /// LZ4 frame bodies (protocol v4) or segments (v5).
    Lz4,
}

impl WireCompression {
    fn driver_setting(self) -> Option<Compression> {
        match self {
            Self::None => None,
            Self::Lz4 => Some(Compression::Lz4),
        }
    }
}

// Hand-written so that passwords never reach a log line.
impl std::fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("source_contact_points", &self.source_contact_points)
            .field("source_local_dc", &self.source_local_dc)
            .field("source_username", &self.source_username)
            .field("source_tls", &self.source_tls)
            .field("target_contact_points", &self.target_contact_points)
            .field("target_local_dc", &self.target_local_dc)
            .field("target_username", &self.target_username)
            .field("target_tls", &self.target_tls)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

/// One cluster's connection settings.
pub struct ClusterConfig<'a> {
    pub name: &'static str,
    pub contact_points: &'a [String],
    pub local_dc: Option<&'a str>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub password_file: Option<&'a PathBuf>,
    pub tls: bool,
    pub tls_ca_file: Option<&'a PathBuf>,
    pub tls_skip_hostname_verification: bool,
    pub connections_per_node: usize,
    /// How long to keep trying an unreachable cluster.
    pub connect_wait: Duration,
    pub compression: WireCompression,
}

impl ConnectionArgs {
    /// The same settings with source and target swapped (a reverse
    /// validation reads the target as the reference).
    pub fn swapped(&self) -> Self {
        let mut out = self.clone();
        std::mem::swap(
            &mut out.source_contact_points,
            &mut out.target_contact_points,
        );
        std::mem::swap(&mut out.source_local_dc, &mut out.target_local_dc);
        std::mem::swap(&mut out.source_username, &mut out.target_username);
        std::mem::swap(&mut out.source_password, &mut out.target_password);
        std::mem::swap(&mut out.source_password_file, &mut out.target_password_file);
        std::mem::swap(&mut out.source_tls, &mut out.target_tls);
        std::mem::swap(&mut out.source_tls_ca_file, &mut out.target_tls_ca_file);
        std::mem::swap(
            &mut out.source_tls_skip_hostname_verification,
            &mut out.target_tls_skip_hostname_verification,
        );
        out
    }

    pub fn source(&self) -> ClusterConfig<'_> {
        ClusterConfig {
            name: "source",
            contact_points: &self.source_contact_points,
            local_dc: self.source_local_dc.as_deref(),
            username: self.source_username.as_deref(),
            password: self.source_password.as_deref(),
            password_file: self.source_password_file.as_ref(),
            tls: self.source_tls,
            tls_ca_file: self.source_tls_ca_file.as_ref(),
            tls_skip_hostname_verification: self.source_tls_skip_hostname_verification,
            connections_per_node: self.connections_per_node,
            connect_wait: Duration::from_secs(self.connect_wait_secs),
            compression: self.compression,
        }
    }

    pub fn target(&self) -> ClusterConfig<'_> {
        ClusterConfig {
            name: "target",
            contact_points: &self.target_contact_points,
            local_dc: self.target_local_dc.as_deref(),
            username: self.target_username.as_deref(),
            password: self.target_password.as_deref(),
            password_file: self.target_password_file.as_ref(),
            tls: self.target_tls,
            tls_ca_file: self.target_tls_ca_file.as_ref(),
            tls_skip_hostname_verification: self.target_tls_skip_hostname_verification,
            connections_per_node: self.connections_per_node,
            connect_wait: Duration::from_secs(self.connect_wait_secs),
            compression: self.compression,
        }
    }

    pub fn read_consistency(&self) -> Result<Consistency, ConnectError> {
        parse_consistency(&self.read_consistency)
    }

    pub fn write_consistency(&self) -> Result<Consistency, ConnectError> {
        parse_consistency(&self.write_consistency)
    }
}

/// Parses a consistency level name such as `LOCAL_QUORUM`.
pub fn parse_consistency(name: &str) -> Result<Consistency, ConnectError> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => return Err(ConnectError::Consistency(name.to_owned())),
    })
}

fn tls_config(cfg: &ClusterConfig<'_>) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    let tls_error = |reason: String| ConnectError::Tls {
        cluster: cfg.name,
        reason,
    };
    let Some(path) = cfg.tls_ca_file else {
        return Err(tls_error(
            "TLS needs a CA bundle (--source-tls-ca-file / --target-tls-ca-file)".to_owned(),
        ));
    };
    let pem =
        std::fs::read(path).map_err(|e| tls_error(format!("reading {}: {e}", path.display())))?;
    let roots = crate::tls::roots_from_pem(&pem)
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
    let config = crate::tls::client_config(roots, None, cfg.tls_skip_hostname_verification)
        .map_err(|e| tls_error(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Opens a session to one cluster: token-aware, preferring the local DC,
/// compressed as `--compression` says, with `connections_per_node`
/// connections per node.
pub async fn connect(
    cfg: &ClusterConfig<'_>,
    consistency: Consistency,
) -> Result<Arc<Session>, ConnectError> {
    if cfg.contact_points.is_empty() {
        return Err(ConnectError::NoContactPoints(cfg.name));
    }
    let mut policy = DefaultPolicy::builder();
    if let Some(dc) = cfg.local_dc {
        policy = policy.prefer_datacenter(dc.to_owned());
    }
    let profile = ExecutionProfile::builder()
        .consistency(consistency)
        .load_balancing_policy(policy.build())
        .request_timeout(Some(Duration::from_secs(30)))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(cfg.contact_points)
        .default_execution_profile_handle(profile.into_handle())
        .compression(cfg.compression.driver_setting())
        // Keyspace strategies and table partitioners only (enough for
        // token-aware routing): the jobs read the schemas they need from
        // system_schema themselves, and the driver's full fetch (every
        // column and type of every keyspace, at connect and again after
        // each schema change, such as creating the checkpoint table) cost
        // the clusters' CPU for nothing.
        .fetch_full_schema_metadata(false)
        .connection_timeout(Duration::from_secs(10))
        .pool_size(PoolSize::PerHost(
            std::num::NonZeroUsize::new(cfg.connections_per_node.max(1))
                .unwrap_or(std::num::NonZeroUsize::MIN),
        ));
    let password = match (cfg.password, cfg.password_file) {
        (Some(p), _) => Some(p.to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| ConnectError::PasswordFile {
                    cluster: cfg.name,
                    path: path.clone(),
                    source,
                })?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    if let Some(user) = cfg.username {
        builder = builder.user(user, password.unwrap_or_default());
    }
    if cfg.tls || cfg.tls_ca_file.is_some() {
        builder = builder.tls_context(Some(tls_config(cfg)?));
    }
    // A cluster that does not answer may be restarting: keep trying for
    // `connect_wait` before giving up, so a Job outlives a short outage.
    let deadline = std::time::Instant::now() + cfg.connect_wait;
    loop {
        match builder.build().await {
            Ok(session) => return Ok(Arc::new(session)),
            Err(source) if is_auth_failure(&source) => {
                return Err(ConnectError::BadCredentials {
                    cluster: cfg.name,
                    contact_points: cfg.contact_points.join(","),
                    hint: if cfg.username.is_none() {
                        ": none was given, and the cluster requires a login"
                    } else {
                        ""
                    },
                    reason: source.to_string(),
                })
            }
            Err(source) if std::time::Instant::now() < deadline => {
                tracing::warn!(cluster = cfg.name, error = %source, "cannot connect yet; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(source) => {
                return Err(ConnectError::Connect {
                    cluster: cfg.name,
                    contact_points: cfg.contact_points.join(","),
                    source: Box::new(source),
                })
            }
        }
    }
}
