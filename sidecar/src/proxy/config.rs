//! The proxy's command line (every flag also from a `FERRY_PROXY_*`
//! environment variable) and the run-time mode.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};

use clap::{Args, ValueEnum};

use crate::SYSTEM_KEYSPACES;

/// How writes are mirrored and which side serves reads. Changed at run
/// time through the watched runtime file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Forward to the source only; nothing is mirrored.
    SourceOnly,
    /// Writes go to both; the client's answer waits for both, and a target
    /// failure is returned to the client.
    Sync,
    /// Writes go to both; the client gets the source's answer at once, the
    /// target write is retried and spooled on failure.
    Async,
    /// Reads served by the target; writes to both, waiting for both, the
    /// target's answer returned (the source is now the mirror).
    TargetPrimary,
    /// Reads served by the target; writes to the target, whose answer the
    /// client gets at once; the source's copy follows, retried, then
    /// spooled toward the source (`async` with the sides swapped).
    TargetPrimaryAsync,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Self> {
        <Self as ValueEnum>::from_str(s.trim(), true).ok()
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Self::SourceOnly => 0,
            Self::Sync => 1,
            Self::Async => 2,
            Self::TargetPrimary => 3,
            Self::TargetPrimaryAsync => 4,
        }
    }

    /// The target serves reads and answers writes.
    pub fn target_primary(self) -> bool {
        matches!(self, Self::TargetPrimary | Self::TargetPrimaryAsync)
    }

    /// A write's copy follows the primary's answer.
    pub fn asynchronous(self) -> bool {
        matches!(self, Self::Async | Self::TargetPrimaryAsync)
    }

    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::SourceOnly,
            1 => Self::Sync,
            3 => Self::TargetPrimary,
            4 => Self::TargetPrimaryAsync,
            _ => Self::Async,
        }
    }
}

/// The current mode, readable on the hot path without a lock.
#[derive(Debug)]
pub struct ModeCell(AtomicU8);

impl ModeCell {
    pub fn new(m: Mode) -> Self {
        Self(AtomicU8::new(m.as_u8()))
    }
    pub fn get(&self) -> Mode {
        Mode::from_u8(self.0.load(Ordering::Relaxed))
    }
    pub fn set(&self, m: Mode) {
        self.0.store(m.as_u8(), Ordering::Relaxed);
    }
}

/// What to do with target writes when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpoolFullPolicy {
    /// Refuse new mirrored writes (the client gets an Overloaded error,
    /// nothing reaches the source) until the spool drains: no divergence.
    RejectWrites,
    /// Keep serving; target writes that do not fit are dropped and counted
    /// (the validator must repair them later).
    DropTargetWrites,
}

fn parse_bool_flag(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// Command-line arguments of the proxy mode.
#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Source Cassandra node (host or IP) this proxy fronts.
    #[arg(env = "FERRY_PROXY_SOURCE")]
    pub source: String,
    /// Target cluster contact points writes are mirrored to, comma-separated
    /// (`host`, `host:port`, `[v6]:port`). Each link to the target goes to
    /// the next one in turn; one that refuses is tried last for a while.
    #[arg(env = "FERRY_PROXY_TARGET")]
    pub target: String,
    /// Config file: `flag-name = value` (or `flag-name: value`) lines, any
    /// flag of this command. Command-line flags and environment variables
    /// take precedence over it.
    #[arg(long, env = "FERRY_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "FERRY_PROXY_SOURCE_PORT", default_value_t = 9042)]
    pub source_port: u16,
    #[arg(long, env = "FERRY_PROXY_TARGET_PORT", default_value_t = 9042)]
    pub target_port: u16,
    /// Port clients connect to.
    #[arg(long, env = "FERRY_PROXY_PORT", default_value_t = 29042)]
    pub proxy_port: u16,
    /// Address clients connect to.
    #[arg(long, env = "FERRY_PROXY_ADDRESS", default_value = "0.0.0.0")]
    pub proxy_address: String,
    /// Address drivers should use to reach this proxy, advertised in
    /// place of the source node's address (default: --proxy-address when it
    /// is not a wildcard).
    #[arg(long, env = "FERRY_PROXY_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// Highest protocol version offered to clients (3, 4 or 5); clients
    /// asking for more get the protocol error that makes them step down.
    #[arg(long, env = "FERRY_PROXY_PROTOCOL_VERSION", default_value_t = 5, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub protocol_version: u8,
    /// Force this CQL_VERSION in STARTUP (both sides) and SUPPORTED.
    #[arg(long, env = "FERRY_PROXY_CQL_VERSION")]
    pub cql_version: Option<String>,
    /// Write mode at start (changed later through `--peer-map`'s `mode`).
    #[arg(long, env = "FERRY_PROXY_MODE", value_enum, default_value_t = Mode::Async)]
    pub mode: Mode,
    /// Runtime file: peer map (source node → proxy address) and optional
    /// mode, re-read when it changes. See docs/proxy.md for the format.
    #[arg(long, env = "FERRY_PROXY_PEER_MAP")]
    pub peer_map: Option<PathBuf>,
    /// Username for the target (default: the client's own credentials).
    #[arg(long, env = "FERRY_PROXY_TARGET_USERNAME")]
    pub target_username: Option<String>,
    /// File holding the target username (first line), read again at each
    /// new login to the target, like --target-password-file.
    #[arg(long, env = "FERRY_PROXY_TARGET_USERNAME_FILE")]
    pub target_username_file: Option<PathBuf>,
    /// Password for the target. Prefer the file or the environment variable.
    #[arg(long, env = "FERRY_PROXY_TARGET_PASSWORD", hide_env_values = true)]
    pub target_password: Option<String>,
    /// File holding the target password (first line), read again at each
    /// new login to the target: a rotated Secret mounted there takes effect
    /// without a restart.
    #[arg(long, env = "FERRY_PROXY_TARGET_PASSWORD_FILE")]
    pub target_password_file: Option<PathBuf>,
    /// Follow schema changes on the target: a CREATE or ALTER a client
    /// makes reaches the target before the client hears the source's
    /// answer (retried, spooled if the target is down); DROPs, keyspace
    /// replication, roles, views and triggers stay on the source. Also
    /// set at run time by the runtime file's `mirrorDdl`.
    #[arg(long, env = "FERRY_PROXY_MIRROR_DDL")]
    pub mirror_ddl: bool,
    /// The replication a keyspace created through the proxy gets on the
    /// target (a CQL map literal, e.g. `{'class':
    /// 'NetworkTopologyStrategy', 'dc1': 3}`); without it the client's
    /// own. Also the runtime file's `targetReplication`.
    #[arg(long, env = "FERRY_PROXY_TARGET_REPLICATION")]
    pub target_replication: Option<String>,
    /// Mirror only writes to these keyspaces (comma-separated; default all),
    /// and to the tables of --include-tables.
    #[arg(long, env = "FERRY_PROXY_INCLUDE_KEYSPACES", value_delimiter = ',')]
    pub include_keyspaces: Vec<String>,
    /// Mirror only writes to these tables (`keyspace.table`, comma-separated),
    /// and to the keyspaces of --include-keyspaces: the selection the backfill
    /// makes of the same two lists.
    #[arg(long, env = "FERRY_PROXY_INCLUDE_TABLES", value_delimiter = ',')]
    pub include_tables: Vec<String>,
    /// Never mirror writes to these keyspaces.
    #[arg(long, env = "FERRY_PROXY_EXCLUDE_KEYSPACES", value_delimiter = ',')]
    pub exclude_keyspaces: Vec<String>,
    /// Never mirror writes to these tables (`keyspace.table`, comma-separated).
    #[arg(long, env = "FERRY_PROXY_EXCLUDE_TABLES", value_delimiter = ',')]
    pub exclude_tables: Vec<String>,
    /// Percentage of reads (0-100) also sent to the target and compared
    /// (live validation); the client always gets the source's answer.
    #[arg(long, env = "FERRY_PROXY_SHADOW_READ_PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub shadow_read_percent: u64,
    /// Timeout of one target request, in milliseconds.
    #[arg(long, env = "FERRY_PROXY_TARGET_TIMEOUT_MS", default_value_t = 2000)]
    pub target_timeout_ms: u64,
    /// Async mode: attempts before a target write goes to the spool.
    #[arg(long, env = "FERRY_PROXY_ASYNC_RETRIES", default_value_t = 3)]
    pub async_retries: u32,
    /// Async mode: first retry delay (doubles each time), milliseconds.
    #[arg(long, env = "FERRY_PROXY_RETRY_BACKOFF_MS", default_value_t = 50)]
    pub retry_backoff_ms: u64,
    /// Async mode: writes on their way to the target at once, over all
    /// client connections. A client write beyond it waits (back-pressure):
    /// without a bound a target slower than the source would let the
    /// backlog, the proxy's memory and the target's lag grow without end.
    #[arg(long, env = "FERRY_PROXY_MIRROR_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub mirror_max_in_flight: u32,
    /// Seconds between heartbeats (OPTIONS) on each link to the target; a
    /// link that does not answer within --target-timeout-ms is replaced.
    /// 0 turns them off.
    #[arg(long, env = "FERRY_PROXY_HEARTBEAT_SECS", default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// Spooled writes replayed to the target at once (1 replays them one at a
    /// time, strictly in order).
    #[arg(long, env = "FERRY_PROXY_REPLAY_WINDOW", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub replay_window: u32,
    /// Directory of the on-disk spool.
    #[arg(
        long,
        env = "FERRY_PROXY_SPOOL_DIR",
        default_value = "/var/lib/ferry/spool"
    )]
    pub spool_dir: PathBuf,
    /// Spool size limit in bytes.
    #[arg(long, env = "FERRY_PROXY_SPOOL_MAX_BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    #[arg(long, env = "FERRY_PROXY_SPOOL_FULL_POLICY", value_enum, default_value_t = SpoolFullPolicy::RejectWrites)]
    pub spool_full_policy: SpoolFullPolicy,
    /// Entries of the prepared-statement map.
    #[arg(
        long,
        env = "FERRY_PROXY_PREPARED_CACHE_SIZE",
        default_value_t = 10_000
    )]
    pub prepared_cache_size: usize,
    /// Largest frame accepted, bytes.
    #[arg(long, env = "FERRY_PROXY_MAX_FRAME_BYTES", default_value_t = 256 << 20)]
    pub max_frame_bytes: usize,
    /// Port of /metrics, /livez and /readyz.
    #[arg(long, env = "FERRY_PROXY_ADMIN_PORT", default_value_t = 28000)]
    pub admin_port: u16,
    #[arg(long, env = "FERRY_PROXY_ADMIN_ADDRESS", default_value = "0.0.0.0")]
    pub admin_address: String,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "FERRY_PROXY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Client-facing TLS: certificate chain (PEM). TLS is on when set.
    #[arg(long, env = "FERRY_PROXY_TLS_CERT", requires = "proxy_tls_key")]
    pub proxy_tls_cert: Option<PathBuf>,
    /// Client-facing TLS: private key (PEM).
    #[arg(long, env = "FERRY_PROXY_TLS_KEY")]
    pub proxy_tls_key: Option<PathBuf>,
    /// Client-facing TLS: require client certificates signed by this CA.
    #[arg(long, env = "FERRY_PROXY_TLS_CLIENT_CA")]
    pub proxy_tls_client_ca: Option<PathBuf>,
    /// Source TLS: CA bundle (PEM) to verify the source; TLS is on when set.
    #[arg(long, env = "FERRY_PROXY_SOURCE_TLS_CA")]
    pub source_tls_ca: Option<PathBuf>,
    #[arg(long, env = "FERRY_PROXY_SOURCE_TLS_CERT")]
    pub source_tls_cert: Option<PathBuf>,
    #[arg(long, env = "FERRY_PROXY_SOURCE_TLS_KEY")]
    pub source_tls_key: Option<PathBuf>,
    /// Name to verify in the source certificate (default: SOURCE).
    #[arg(long, env = "FERRY_PROXY_SOURCE_TLS_SERVER_NAME")]
    pub source_tls_server_name: Option<String>,
    /// Verify the source certificate's chain only, not its name (the
    /// proxy reaches its own node over loopback, a name certificates
    /// rarely carry).
    #[arg(long, env = "FERRY_PROXY_SOURCE_TLS_SKIP_HOSTNAME_VERIFICATION", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool_flag)]
    pub source_tls_skip_hostname_verification: bool,
    /// Target TLS: CA bundle (PEM) to verify the target; TLS is on when set.
    #[arg(long, env = "FERRY_PROXY_TARGET_TLS_CA")]
    pub target_tls_ca: Option<PathBuf>,
    #[arg(long, env = "FERRY_PROXY_TARGET_TLS_CERT")]
    pub target_tls_cert: Option<PathBuf>,
    #[arg(long, env = "FERRY_PROXY_TARGET_TLS_KEY")]
    pub target_tls_key: Option<PathBuf>,
    #[arg(long, env = "FERRY_PROXY_TARGET_TLS_SERVER_NAME")]
    pub target_tls_server_name: Option<String>,
    /// Verify the target certificate's chain only, not its name.
    #[arg(long, env = "FERRY_PROXY_TARGET_TLS_SKIP_HOSTNAME_VERIFICATION", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool_flag)]
    pub target_tls_skip_hostname_verification: bool,
    /// Plain TCP to the source even when TLS settings are present.
    #[arg(long, env = "FERRY_PROXY_DISABLE_SOURCE_TLS", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool_flag)]
    pub disable_source_tls: bool,
    /// Plain TCP to the target even when TLS settings are present.
    #[arg(long, env = "FERRY_PROXY_DISABLE_TARGET_TLS", num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool_flag)]
    pub disable_target_tls: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: expected `name = value`")]
    Syntax { path: PathBuf, line: usize },
    #[error("{path} line {line}: unknown setting {name:?}")]
    Unknown {
        path: PathBuf,
        line: usize,
        name: String,
    },
}

/// Reads a config file into the environment variables of the flags it
/// names, leaving variables that are already set alone (so the command line
/// beats the environment, which beats the file). Returns how many it set.
/// Call before other threads read the environment.
pub fn apply_config_file(path: &std::path::Path) -> Result<usize, ConfigFileError> {
    use clap::CommandFactory;
    #[derive(clap::Parser)]
    struct Probe {
        #[command(flatten)]
        args: ProxyArgs,
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let cmd = Probe::command();
    // Check every line before setting anything.
    let mut pairs = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            return Err(ConfigFileError::Syntax {
                path: path.to_owned(),
                line: i + 1,
            });
        };
        let name = name
            .trim()
            .trim_start_matches("--")
            .replace('_', "-")
            .to_ascii_lowercase();
        let value = value.trim().trim_matches('"');
        let env = cmd
            .get_arguments()
            .find(|a| {
                a.get_long() == Some(name.as_str()) || a.get_id().as_str().replace('_', "-") == name
            })
            .and_then(|a| a.get_env())
            .ok_or_else(|| ConfigFileError::Unknown {
                path: path.to_owned(),
                line: i + 1,
                name: name.clone(),
            })?;
        pairs.push((env.to_owned(), value.to_owned()));
    }
    let mut set = 0;
    for (env, value) in pairs {
        if std::env::var_os(&env).is_none() {
            // Edition 2021: set_var is safe; called at start-up, before the
            // proxy spawns anything that reads the environment.
            std::env::set_var(&env, value);
            set += 1;
        }
    }
    Ok(set)
}

/// Include/exclude rules deciding which writes are mirrored. They select
/// what the backfill's `--keyspaces`/`--tables` select of the same lists
/// (`bulk::schema::select_tables`): the included keyspaces' tables and the
/// included tables (everything when both are empty), less the exclusions.
#[derive(Debug, Clone, Default)]
pub struct MirrorFilter {
    pub include_keyspaces: Vec<String>,
    pub include_tables: Vec<(String, String)>,
    pub exclude_keyspaces: Vec<String>,
    pub exclude_tables: Vec<(String, String)>,
}

impl MirrorFilter {
    pub fn from_args(args: &ProxyArgs) -> Self {
        let norm = |v: &[String]| {
            v.iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let qualified = |v: &[String]| {
            v.iter()
                .filter_map(|t| t.trim().split_once('.'))
                .map(|(k, t)| (k.to_owned(), t.to_owned()))
                .collect()
        };
        Self {
            include_keyspaces: norm(&args.include_keyspaces),
            include_tables: qualified(&args.include_tables),
            exclude_keyspaces: norm(&args.exclude_keyspaces),
            exclude_tables: qualified(&args.exclude_tables),
        }
    }

    /// Whether a write to `keyspace.table` is mirrored. With no include
    /// list, a write whose keyspace the proxy could not tell is mirrored
    /// (refusing would silently lose writes); with one, it is not (it
    /// cannot be shown to be selected).
    pub fn mirrors(&self, keyspace: Option<&str>, table: Option<&str>) -> bool {
        let everything = self.include_keyspaces.is_empty() && self.include_tables.is_empty();
        let Some(ks) = keyspace else {
            return everything;
        };
        if SYSTEM_KEYSPACES.contains(&ks) || self.exclude_keyspaces.iter().any(|k| k == ks) {
            return false;
        }
        let listed =
            |list: &[(String, String)], t: &str| list.iter().any(|(k, tt)| k == ks && tt == t);
        if table.is_some_and(|t| listed(&self.exclude_tables, t)) {
            return false;
        }
        everything
            || self.include_keyspaces.iter().any(|k| k == ks)
            || table.is_some_and(|t| listed(&self.include_tables, t))
    }

    /// Whether `keyspace` may hold a mirrored table: where a keyspace's
    /// own objects (the keyspace, its types and functions) go too.
    pub fn mirrors_in(&self, keyspace: &str) -> bool {
        if SYSTEM_KEYSPACES.contains(&keyspace)
            || self.exclude_keyspaces.iter().any(|k| k == keyspace)
        {
            return false;
        }
        (self.include_keyspaces.is_empty() && self.include_tables.is_empty())
            || self.include_keyspaces.iter().any(|k| k == keyspace)
            || self.include_tables.iter().any(|(k, _)| k == keyspace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_fills_unset_flags_only() {
        let path =
            std::env::temp_dir().join(format!("ferry-proxy-config-{}.conf", std::process::id()));
        std::fs::write(
            &path,
            "# comment\ntarget-timeout-ms = 1234\nshadow_read_percent: 7\nFERRY-unknown = 1\n",
        )
        .unwrap();
        assert!(matches!(
            apply_config_file(&path),
            Err(ConfigFileError::Unknown { line: 4, .. })
        ));
        std::fs::write(&path, "target-timeout-ms = 1234\nsource: 10.0.0.1\n").unwrap();
        std::env::set_var("FERRY_PROXY_SOURCE", "from-env");
        assert_eq!(apply_config_file(&path).unwrap(), 1);
        assert_eq!(
            std::env::var("FERRY_PROXY_TARGET_TIMEOUT_MS").unwrap(),
            "1234"
        );
        assert_eq!(std::env::var("FERRY_PROXY_SOURCE").unwrap(), "from-env");
        std::env::remove_var("FERRY_PROXY_TARGET_TIMEOUT_MS");
        std::env::remove_var("FERRY_PROXY_SOURCE");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn filters() {
        let f = MirrorFilter {
            exclude_keyspaces: vec!["skip".into()],
            exclude_tables: vec![("ks".into(), "audit".into())],
            ..Default::default()
        };
        assert!(f.mirrors(Some("ks"), Some("t")));
        assert!(!f.mirrors(Some("ks"), Some("audit")));
        assert!(!f.mirrors(Some("skip"), Some("t")));
        assert!(!f.mirrors(Some("system"), Some("local")));
        assert!(f.mirrors(None, Some("t")));
        let only = MirrorFilter {
            include_keyspaces: vec!["a".into()],
            ..Default::default()
        };
        assert!(only.mirrors(Some("a"), None));
        assert!(!only.mirrors(Some("b"), None));
        assert!(!only.mirrors(None, Some("t")));
        // Included tables add to included keyspaces, as in the backfill.
        let tables = MirrorFilter {
            include_keyspaces: vec!["a".into()],
            include_tables: vec![("b".into(), "t".into())],
            exclude_tables: vec![("a".into(), "audit".into())],
            ..Default::default()
        };
        assert!(tables.mirrors(Some("a"), Some("x")));
        assert!(tables.mirrors(Some("b"), Some("t")));
        assert!(!tables.mirrors(Some("b"), Some("other")));
        assert!(!tables.mirrors(Some("b"), None));
        assert!(!tables.mirrors(Some("a"), Some("audit")));
        assert!(!tables.mirrors(None, Some("t")));
        assert_eq!(Mode::parse("target-primary"), Some(Mode::TargetPrimary));
        assert_eq!(
            Mode::parse("target-primary-async"),
            Some(Mode::TargetPrimaryAsync)
        );
        for m in [
            Mode::SourceOnly,
            Mode::Sync,
            Mode::Async,
            Mode::TargetPrimary,
            Mode::TargetPrimaryAsync,
        ] {
            assert_eq!(Mode::from_u8(m.as_u8()), m);
        }
        assert_eq!(Mode::parse("SYNC"), Some(Mode::Sync));
    }
}
