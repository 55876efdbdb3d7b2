//! The operator's Prometheus metrics.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::crd::{CutoverStage, Phase};

/// Reconciles, errors, their duration, and migrations by phase.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    phase: IntGaugeVec,
    cutover_stage: IntGaugeVec,
}

const STAGES: [CutoverStage; 4] = [
    CutoverStage::Mirror,
    CutoverStage::ShadowReads,
    CutoverStage::TargetPrimary,
    CutoverStage::Done,
];

const PHASES: [Phase; 8] = [
    Phase::Pending,
    Phase::Mirroring,
    Phase::Backfilling,
    Phase::Validating,
    Phase::Ready,
    Phase::Failed,
    Phase::Complete,
    Phase::Removing,
];

/// The `error` label's values (`controller::Error::metric_label`).
pub const ERROR_KINDS: [&str; 5] = [
    "kube",
    "build",
    "no_namespace",
    "finalizer",
    "cleanup_in_progress",
];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("ferry_operator".to_owned()), None)?;
        let reconciles = IntCounterVec::new(Opts::new("reconciles_total", "Reconciles run"), &[])?;
        let errors = IntCounterVec::new(
            Opts::new(
                "reconcile_errors_total",
                "Reconciles that failed, by error kind",
            ),
            &["error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time one reconcile took")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        )?;
        let phase = IntGaugeVec::new(
            Opts::new("migration_phase", "1 for the phase each migration is in"),
            &["namespace", "migration", "phase"],
        )?;
        // The series the dashboard draws exist from the start, at 0.
        reconciles.with_label_values::<&str>(&[]);
        duration.with_label_values::<&str>(&[]);
        for kind in ERROR_KINDS {
            errors.with_label_values(&[kind]);
        }
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let cutover_stage = IntGaugeVec::new(
            Opts::new(
                "migration_cutover_stage",
                "1 for the cut-over stage each migration has applied",
            ),
            &["namespace", "migration", "stage"],
        )?;
        registry.register(Box::new(phase.clone()))?;
        registry.register(Box::new(cutover_stage.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            phase,
            cutover_stage,
        })
    }

    pub fn observe_reconcile(&self, took: Duration) {
        self.reconciles.with_label_values::<&str>(&[]).inc();
        self.duration
            .with_label_values::<&str>(&[])
            .observe(took.as_secs_f64());
    }

    pub fn reconcile_error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    pub fn set_phase(&self, namespace: &str, migration: &str, current: Phase) {
        for p in PHASES {
            let name = p.to_string();
            self.phase
                .with_label_values(&[namespace, migration, name.as_str()])
                .set(i64::from(p == current));
        }
    }

    pub fn set_cutover_stage(&self, namespace: &str, migration: &str, current: CutoverStage) {
        for s in STAGES {
            let name = s.to_string();
            self.cutover_stage
                .with_label_values(&[namespace, migration, name.as_str()])
                .set(i64::from(s == current));
        }
    }

    pub fn forget(&self, namespace: &str, migration: &str) {
        for p in PHASES {
            let name = p.to_string();
            let _ = self
                .phase
                .remove_label_values(&[namespace, migration, name.as_str()]);
        }
        for s in STAGES {
            let name = s.to_string();
            let _ = self
                .cutover_stage
                .remove_label_values(&[namespace, migration, name.as_str()]);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder
            .encode_utf8(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_gauge_has_one_phase_set() {
        let m = Metrics::new().unwrap();
        m.set_phase("ns", "mig", Phase::Backfilling);
        m.observe_reconcile(Duration::from_millis(20));
        m.reconcile_error("kube");
        let text = m.render();
        assert!(text.contains(r#"ferry_operator_migration_phase{migration="mig",namespace="ns",phase="Backfilling"} 1"#), "{text}");
        assert!(text.contains(
            r#"ferry_operator_migration_phase{migration="mig",namespace="ns",phase="Pending"} 0"#
        ));
        assert!(text.contains("ferry_operator_reconciles_total 1"));
        assert!(text.contains(r#"ferry_operator_reconcile_errors_total{error="kube"} 1"#));
        m.forget("ns", "mig");
        assert!(!m.render().contains("mig"));
    }
}
