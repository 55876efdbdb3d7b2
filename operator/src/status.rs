//! Status bookkeeping: phases, their history, standard conditions and the
//! one-line progress `kubectl get` shows. Pure functions over the status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{CassandraMigrationStatus, Phase, PhaseTransition, SidecarState};

/// Condition types Ferry writes.
pub mod condition {
    pub const SIDECARS_READY: &str = "SidecarsReady";
    pub const BACKFILL_COMPLETE: &str = "BackfillComplete";
    pub const VALIDATED: &str = "Validated";
    pub const READY: &str = "Ready";
    pub const DEGRADED: &str = "Degraded";
    /// A proxy's spool holds writes and none has reached the target for a
    /// while (`--mirroring-behind-after-secs`).
    pub const MIRRORING_BEHIND: &str = "MirroringBehind";
    /// Every proxy serves the requested cut-over stage (False: refused, with
    /// the reason, or still switching).
    pub const CUTOVER: &str = "Cutover";
    /// The target has every selected table, matching the source's (made
    /// before the roll, `spec.schema`).
    pub const SCHEMA_MATCHES: &str = "SchemaMatches";
    /// The proxies' shadow reads: whether the target answered them as the
    /// source did (set once some were compared).
    pub const SHADOW_READS_MATCH: &str = "ShadowReadsMatch";
    /// After a roll-back from `targetPrimary`: whether the source holds
    /// what the target does (a reverse validation).
    pub const ROLL_BACK_VERIFIED: &str = "RollBackVerified";
    pub const FAILED: &str = "Failed";
}

/// Sets a condition; `lastTransitionTime` moves only when its status changes.
pub fn set_condition(
    status: &mut CassandraMigrationStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let value = if value { "True" } else { "False" }.to_owned();
    let message = message.into();
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = now.clone();
            }
            c.status = value;
            c.reason = reason.to_owned();
            c.message = message;
            c.observed_generation = generation;
        }
        None => status.conditions.push(Condition {
            type_: type_.to_owned(),
            status: value,
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// Why writes the applications were told succeeded may be missing from
/// the target now (a source pod without its proxy, a spool that stopped
/// draining), as a condition reason and message; `None` when nothing says
/// so. A migration is never `Ready` while this is `Some`.
pub fn unsafe_reason(status: &CassandraMigrationStatus) -> Option<(&'static str, String)> {
    let true_condition = |type_: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    if let Some(c) = true_condition(condition::DEGRADED) {
        return Some(("Degraded", c.message.clone()));
    }
    if let Some(why) = &status.revalidate {
        return Some(("Revalidating", why.clone()));
    }
    if let Some(c) = true_condition(condition::MIRRORING_BEHIND) {
        return Some(("MirroringBehind", c.message.clone()));
    }
    // A schema difference found after the roll (the gate before it fails
    // the migration instead): copies into that table may be wrong.
    status
        .conditions
        .iter()
        .find(|c| {
            c.type_ == condition::SCHEMA_MATCHES
                && c.status == "False"
                && c.reason == "SchemaMismatch"
        })
        .map(|c| ("SchemaMismatch", c.message.clone()))
}

/// Whether a condition is True.
pub fn is_true(status: &CassandraMigrationStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Moves to `phase`, recording when (only on a real change).
pub fn enter_phase(status: &mut CassandraMigrationStatus, phase: Phase, now: &Time) -> bool {
    let first = status.phase_history.is_empty();
    if status.phase == phase && !first {
        return false;
    }
    status.phase = phase;
    status.phase_history.push(PhaseTransition {
        phase,
        started_at: now.clone(),
    });
    // A long-lived migration that fails and resumes often must not grow its
    // status without bound.
    if status.phase_history.len() > 32 {
        status.phase_history.remove(0);
    }
    true
}

/// The phase a failed migration resumes in once its spec is fixed: the last
/// phase it was in before failing (never earlier: nothing is started over).
pub fn resume_phase(status: &CassandraMigrationStatus) -> Phase {
    status
        .phase_history
        .iter()
        .rev()
        .map(|t| t.phase)
        .find(|p| *p != Phase::Failed)
        .unwrap_or(Phase::Pending)
}

/// The PROGRESS column.
pub fn progress_text(status: &CassandraMigrationStatus) -> String {
    match status.phase {
        Phase::Pending => {
            let ready = status
                .sidecars
                .iter()
                .filter(|s| s.state == crate::crd::SidecarState::Ready)
                .count();
            format!("{ready}/{} sidecars", status.sidecars.len())
        }
        Phase::Mirroring => "mirroring; starting backfill".to_owned(),
        Phase::Backfilling => match &status.backfill {
            Some(b) if b.ranges_total > 0 => format!(
                "{}% ({} rows)",
                b.ranges_done * 100 / b.ranges_total,
                b.rows_copied
            ),
            _ => "copying".to_owned(),
        },
        Phase::Validating => match &status.validation {
            Some(v) => format!("{} rows compared", v.rows_compared),
            None => "comparing".to_owned(),
        },
        Phase::Ready => match unsafe_reason(status) {
            None => "in sync; mirroring until cut-over".to_owned(),
            Some((reason, _)) => format!("not Ready: {reason}"),
        },
        Phase::Complete => "cut over: the applications use the target".to_owned(),
        Phase::Removing => {
            let left = status
                .sidecars
                .iter()
                .filter(|s| s.state != SidecarState::Removed)
                .count();
            format!(
                "removing the proxies: {left} of {} pods left",
                status.sidecars.len()
            )
        }
        Phase::Failed => status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::FAILED && c.status == "True")
            .map(|c| c.reason.clone())
            .unwrap_or_else(|| "failed".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn condition_transition_time_moves_only_on_change() {
        let mut st = CassandraMigrationStatus::default();
        set_condition(
            &mut st,
            condition::READY,
            false,
            "Rolling",
            "a",
            Some(1),
            &t("2026-01-01T00:00:00Z"),
        );
        set_condition(
            &mut st,
            condition::READY,
            false,
            "Rolling",
            "b",
            Some(2),
            &t("2026-01-01T00:01:00Z"),
        );
        assert_eq!(
            st.conditions[0].last_transition_time,
            t("2026-01-01T00:00:00Z")
        );
        assert_eq!(st.conditions[0].message, "b");
        set_condition(
            &mut st,
            condition::READY,
            true,
            "InSync",
            "c",
            Some(2),
            &t("2026-01-01T00:02:00Z"),
        );
        assert_eq!(
            st.conditions[0].last_transition_time,
            t("2026-01-01T00:02:00Z")
        );
        assert!(is_true(&st, condition::READY));
        assert_eq!(st.conditions.len(), 1);
    }

    #[test]
    fn failed_resumes_where_it_stopped() {
        let mut st = CassandraMigrationStatus::default();
        let now = t("2026-01-01T00:00:00Z");
        assert!(enter_phase(&mut st, Phase::Pending, &now));
        assert!(enter_phase(&mut st, Phase::Mirroring, &now));
        assert!(enter_phase(&mut st, Phase::Backfilling, &now));
        assert!(!enter_phase(&mut st, Phase::Backfilling, &now));
        assert!(enter_phase(&mut st, Phase::Failed, &now));
        assert_eq!(resume_phase(&st), Phase::Backfilling);
        assert_eq!(
            resume_phase(&CassandraMigrationStatus::default()),
            Phase::Pending
        );
    }

    #[test]
    fn progress_column() {
        let mut st = CassandraMigrationStatus {
            phase: Phase::Backfilling,
            backfill: Some(crate::crd::BackfillProgress {
                ranges_done: 16,
                ranges_total: 64,
                rows_copied: 1000,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(progress_text(&st), "25% (1000 rows)");
        st.phase = Phase::Ready;
        assert!(progress_text(&st).contains("in sync"));
    }

    #[test]
    fn a_missing_proxy_or_a_stalled_spool_makes_it_unsafe() {
        let now = t("2026-01-01T00:00:00Z");
        let mut st = CassandraMigrationStatus {
            phase: Phase::Ready,
            ..Default::default()
        };
        assert_eq!(unsafe_reason(&st), None);
        set_condition(
            &mut st,
            condition::DEGRADED,
            false,
            "AllPodsProxied",
            "",
            None,
            &now,
        );
        set_condition(
            &mut st,
            condition::MIRRORING_BEHIND,
            true,
            "SpoolStalled",
            "c-1: 5 spooled writes",
            None,
            &now,
        );
        assert_eq!(
            unsafe_reason(&st),
            Some(("MirroringBehind", "c-1: 5 spooled writes".to_owned()))
        );
        assert_eq!(progress_text(&st), "not Ready: MirroringBehind");
        set_condition(
            &mut st,
            condition::DEGRADED,
            true,
            "SidecarMissing",
            "pods without the proxy: c-2",
            None,
            &now,
        );
        assert_eq!(unsafe_reason(&st).map(|r| r.0), Some("Degraded"));
        set_condition(
            &mut st,
            condition::DEGRADED,
            false,
            "AllPodsProxied",
            "",
            None,
            &now,
        );
        set_condition(
            &mut st,
            condition::MIRRORING_BEHIND,
            false,
            "SpoolsDrain",
            "",
            None,
            &now,
        );
        assert_eq!(unsafe_reason(&st), None);
    }
}
