//! The bulk modes the operator's Jobs run: `backfill` and `validate`.
//!
//! See docs/bulk.md for the design, the flags and the summary format.

pub mod backfill;
pub mod cells;
pub mod checkpoint;
pub mod conn;
pub mod job;
pub mod progress;
pub mod ratelimit;
pub mod ring;
pub mod scan;
pub mod schema;
pub mod validate;
pub mod write;

pub use backfill::{backfill, BackfillArgs};
pub use validate::{validate, ValidateArgs};
