//! Ferry's data plane, one binary with three modes.
//!
//! - [`proxy`]: the dual-write CQL proxy injected next to each source node.
//! - [`bulk`]: the `backfill` and `validate` modes the operator's Jobs run.
//! - [`tls`]: the TLS client configuration all of them (and the operator)
//!   use to reach a cluster.

pub mod bulk;
pub mod procstat;
pub mod proxy;
pub mod tls;

/// Keyspaces that hold each cluster's own state (Cassandra's, and DSE's):
/// never mirrored by the proxy, never copied nor validated by the Jobs, and
/// refused in a migration's `keyspaces.include` (the operator's CRD builds
/// its CEL rule from this list).
pub const SYSTEM_KEYSPACES: &[&str] = &[
    "system",
    "system_auth",
    "system_distributed",
    "system_schema",
    "system_traces",
    "system_views",
    "system_virtual_schema",
    "dse_system",
    "dse_system_local",
    "dse_security",
    "dse_auth",
    "dse_perf",
    "dse_leases",
    "dse_insights",
    "dse_insights_local",
    "solr_admin",
];
