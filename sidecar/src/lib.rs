//! Ferry's data plane, one binary with three modes.
//!
//! - [`proxy`]: the dual-write CQL proxy injected next to each source node.
//! - [`bulk`]: the `backfill` and `validate` modes the operator's Jobs run.

pub mod bulk;
pub mod procstat;
pub mod proxy;

/// The error a mode returns until its issue lands: never a fake success.
#[derive(Debug, thiserror::Error)]
#[error("`ferry-sidecar {0}` is not implemented yet")]
pub struct NotImplemented(pub &'static str);
