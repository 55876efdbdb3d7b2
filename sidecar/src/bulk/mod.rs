//! The bulk modes the operator's Jobs run: `backfill` and `validate`.
//!
//! See docs/bulk.md for the design, the flags and the summary format.

pub mod backfill;
pub mod batching;
pub mod cells;
pub mod checkpoint;
pub mod conn;
pub mod job;
pub mod page_sizing;
pub mod pairing;
pub mod progress;
pub mod ratelimit;
pub mod ring;
pub mod scan;
pub mod schema;
pub mod validate;
pub mod write;

pub use backfill::{backfill, BackfillArgs};
pub use validate::{validate, ValidateArgs};

/// Exit codes of `ferry-sidecar`, which the operator's Jobs act on
/// (operator/src/jobs.rs: a Job fails at once on the first two; anything
/// else is retried by the Job).
pub mod exit {
    /// Retrying cannot help: a schema difference, an unknown keyspace or
    /// table, a counter table, a migration older than gc_grace_seconds, a
    /// bad flag.
    pub const BAD_INPUT: u8 = 2;
    /// The validation found differences it did not repair.
    pub const DIFFERENCES: u8 = 3;
    /// Anything else (a cluster down, ranges that failed, a signal): a
    /// re-run continues from the checkpoints.
    pub const RETRY: u8 = 1;
}

/// The exit code for a run that ended with `err` (see [`exit`]).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<validate::DifferencesFound>().is_some() {
            return exit::DIFFERENCES;
        }
        let bad_input = match () {
            _ if cause.downcast_ref::<ring::SplitParseError>().is_some() => true,
            _ if cause
                .downcast_ref::<validate::ReverseRepairRefused>()
                .is_some() =>
            {
                true
            }
            _ => {
                matches!(cause.downcast_ref::<schema::SchemaError>(), Some(e) if !matches!(e, schema::SchemaError::Query { .. }))
                    || matches!(cause.downcast_ref::<backfill::BackfillError>(), Some(e) if !matches!(e, backfill::BackfillError::RangesFailed { .. }))
                    || matches!(cause.downcast_ref::<conn::ConnectError>(), Some(e) if !matches!(e, conn::ConnectError::Connect { .. }))
            }
        };
        if bad_input {
            return exit::BAD_INPUT;
        }
    }
    exit::RETRY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_and_differences_have_their_own_exit_codes() {
        let schema: anyhow::Error = schema::SchemaError::NothingSelected.into();
        assert_eq!(exit_code(&schema), exit::BAD_INPUT);
        let wrapped = anyhow::Error::from(schema::SchemaError::SystemKeyspace("system".into()))
            .context("preparing the backfill");
        assert_eq!(exit_code(&wrapped), exit::BAD_INPUT);
        let ranges: anyhow::Error = backfill::BackfillError::RangesFailed {
            failed: 1,
            total: 2,
            first: "timeout".into(),
        }
        .into();
        assert_eq!(exit_code(&ranges), exit::RETRY);
        assert_eq!(
            exit_code(&anyhow::anyhow!("stopped by SIGTERM")),
            exit::RETRY
        );
        let differences: anyhow::Error = validate::DifferencesFound {
            unresolved: 1,
            missing: 1,
            extra: 0,
            mismatched: 0,
            repaired: 0,
        }
        .into();
        assert_eq!(exit_code(&differences), exit::DIFFERENCES);
        let refused: anyhow::Error = conn::ConnectError::BadCredentials {
            cluster: "target",
            contact_points: "t:9042".into(),
            hint: "",
            reason: "Authentication failed".into(),
        }
        .into();
        assert_eq!(
            exit_code(&refused.context("connecting")),
            exit::BAD_INPUT,
            "a refused login is not retried"
        );
    }
}
