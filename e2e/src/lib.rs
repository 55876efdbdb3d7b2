//! Ferry's end-to-end tests and the Rust side of the local test bed.
//!
//! Tests anywhere in the workspace call [`testbed::cassandra`] or
//! [`testbed::kubernetes`]: each brings the real test bed up (through
//! `e2e/testbed/up.sh`, which is idempotent and serialised by a lock) when it
//! is not running yet, and returns where its parts listen.

pub mod compare;
pub mod kube_client;
pub mod ledger;
pub mod migration;
pub mod poll;
pub mod testbed;
