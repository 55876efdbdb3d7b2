//! Ferry's control plane.
//!
//! - [`crd`]: the `CassandraMigration` API, the single source of the CRD YAML.
//! - [`crdgen`]: renders that YAML for `crds/` and the Helm chart.
//!
//! The controller and the sidecar-injection webhook arrive with their issues.

pub mod crd;
pub mod crdgen;
