//! Ferry's control plane.
//!
//! - [`crd`]: the `CassandraMigration` API, the single source of the CRD YAML.
//! - [`crdgen`]: renders that YAML for `crds/` and the Helm chart.
//! - [`controller`]: the reconcile loop (phases, roll, Jobs, status).
//! - [`cutover`]: which cut-over stage may be applied and whether every proxy serves it.
//! - [`roll`], [`sidecar`], [`jobs`], [`status`]: the pure decisions it makes.
//! - [`webhook`] and [`certs`]: the sidecar-injection admission webhook and its TLS.
//! - [`schema_plan`], [`schema_copy`], [`system_schema`]: the target's schema made from the source's before the roll (its `DESCRIBE`, or before 4.0 its `system_schema`).
//! - [`cql`]: the operator's own CQL checks (ring health before evictions, the probe write).
//! - [`proxy_state`]: what each proxy still owes the target (read before an eviction, and for `MirroringBehind`).
//! - [`leader`]: Lease-based leader election so two replicas never roll at once.
//! - [`pod_security`]: the `restricted` security context of every container Ferry makes.
//! - [`tls_mount`]: the TLS Secrets a migration names, mounted into the proxy and the Jobs.

pub mod certs;
pub mod controller;
pub mod cql;
pub mod crd;
pub mod crdgen;
pub mod cutover;
pub mod http;
pub mod jobs;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod pod_security;
pub mod proxy_state;
pub mod roll;
pub mod schema_copy;
pub mod schema_plan;
pub mod sidecar;
pub mod source;
pub mod status;
pub mod system_schema;
pub mod tls_mount;
pub mod webhook;
