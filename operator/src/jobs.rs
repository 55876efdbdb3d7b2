//! The backfill and validation Jobs: their spec (pure, unit tested), their
//! state, and the figures their pods leave in their termination messages.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, LocalObjectReference, Pod, PodSpec, PodTemplateSpec,
    SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::Deserialize;

use crate::crd::{
    BackfillProgress, CassandraMigration, TimestampMode, ValidationMode, ValidationResults,
};
use crate::labels;
use crate::pod_security;
use crate::tls_mount::{TlsMount, TlsUse};

/// Which of Ferry's two Jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Backfill,
    Validate,
    /// A validation scheduled once Ready: a sample, no repair.
    Check,
    /// After a roll-back from `targetPrimary`: the source checked against
    /// the target (`--reverse`), no repair.
    Reverse,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backfill => "backfill",
            JobKind::Validate => "validate",
            JobKind::Check => "check",
            JobKind::Reverse => "reverse",
        }
    }

    /// The sidecar binary's mode that runs it.
    pub fn mode(self) -> &'static str {
        match self {
            JobKind::Backfill => "backfill",
            JobKind::Validate | JobKind::Check | JobKind::Reverse => "validate",
        }
    }
}

/// What the Job needs that the CR does not say.
#[derive(Debug, Clone)]
pub struct JobInputs {
    pub name: String,
    pub image: String,
    /// Source contact points (`ip:port`), the source pods' addresses.
    pub source_contact_points: Vec<String>,
    /// The source datacenter, if known.
    pub source_datacenter: Option<String>,
    /// Backfill start timestamp (micros), for `backdate` and for the record.
    pub start_timestamp_micros: i64,
    /// When the first proxy may have started mirroring (micros): the
    /// migration's start. The backfill's gc_grace_seconds check counts from it.
    pub mirroring_since_micros: Option<i64>,
    /// Secrets to pull the image with (the chart's `imagePullSecrets`; each
    /// must exist in the migration's namespace).
    pub image_pull_secrets: Vec<String>,
}

fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The Job's environment: the sidecar's bulk modes read every flag from env.
pub fn job_env(cm: &CassandraMigration, kind: JobKind, inputs: &JobInputs) -> Vec<EnvVar> {
    let spec = &cm.spec;
    let mut env_vars = vec![
        env(
            "FERRY_SOURCE_CONTACT_POINTS",
            inputs.source_contact_points.join(","),
        ),
        env(
            "FERRY_TARGET_CONTACT_POINTS",
            spec.target.contact_points.join(","),
        ),
        env("FERRY_TARGET_LOCAL_DC", &spec.target.local_datacenter),
        env("FERRY_SPLITS", spec.backfill.splits),
        env("FERRY_SPLIT_COUNT", spec.backfill.parallelism),
        env("FERRY_CONCURRENCY", spec.backfill.concurrency),
        env("FERRY_COMPRESSION", spec.backfill.compression.as_flag()),
        env("FERRY_SUMMARY_FILE", "/dev/termination-log"),
        env("FERRY_JOB_ID", &inputs.name),
    ];
    if let Some(dc) = &inputs.source_datacenter {
        env_vars.push(env("FERRY_SOURCE_LOCAL_DC", dc));
    }
    if let Some(s) = &spec.source.credentials_secret {
        env_vars.push(secret_env(
            "FERRY_SOURCE_USERNAME",
            &s.name,
            &s.username_key,
        ));
        env_vars.push(secret_env(
            "FERRY_SOURCE_PASSWORD",
            &s.name,
            &s.password_key,
        ));
    }
    if let Some(s) = &spec.target.credentials_secret {
        env_vars.push(secret_env(
            "FERRY_TARGET_USERNAME",
            &s.name,
            &s.username_key,
        ));
        env_vars.push(secret_env(
            "FERRY_TARGET_PASSWORD",
            &s.name,
            &s.password_key,
        ));
    }
    for mount in TlsMount::clusters(spec) {
        let prefix = match mount.tls_use {
            TlsUse::Source => "FERRY_SOURCE",
            _ => "FERRY_TARGET",
        };
        env_vars.push(env(&format!("{prefix}_TLS_CA_FILE"), mount.file("ca.crt")));
        if mount.skip_hostname_verification {
            env_vars.push(env(
                &format!("{prefix}_TLS_SKIP_HOSTNAME_VERIFICATION"),
                "true",
            ));
        }
    }
    let lists = [
        ("FERRY_KEYSPACES", &spec.keyspaces.include),
        ("FERRY_EXCLUDE_KEYSPACES", &spec.keyspaces.exclude),
        ("FERRY_TABLES", &spec.tables.include),
        ("FERRY_EXCLUDE_TABLES", &spec.tables.exclude),
    ];
    for (name, list) in lists {
        if !list.is_empty() {
            env_vars.push(env(name, list.join(",")));
        }
    }
    match kind {
        JobKind::Backfill => {
            let mode = match spec.backfill.timestamp_mode {
                TimestampMode::Preserve => "preserve",
                TimestampMode::Backdate => "backdate",
            };
            env_vars.push(env("FERRY_TIMESTAMP_MODE", mode));
            env_vars.push(env("FERRY_START_TIMESTAMP", inputs.start_timestamp_micros));
            if let Some(since) = inputs.mirroring_since_micros {
                env_vars.push(env("FERRY_MIRRORING_SINCE", since));
            }
            if let Some(rate) = spec.backfill.rows_per_second {
                // The limit is for the whole migration: each pod takes its share.
                let per_pod = (rate / i64::from(spec.backfill.parallelism.max(1))).max(1);
                env_vars.push(env("FERRY_ROWS_PER_SECOND", per_pod));
            }
        }
        JobKind::Validate | JobKind::Reverse => {
            let mode = match spec.validation.mode {
                ValidationMode::Full => "full",
                ValidationMode::Sample => "sample",
            };
            env_vars.push(env("FERRY_VALIDATE_MODE", mode));
            if let Some(p) = spec.validation.sample_percent {
                env_vars.push(env("FERRY_SAMPLE_PERCENT", p));
            }
            if kind == JobKind::Reverse {
                // Reports only: a repair would write into the source.
                env_vars.push(env("FERRY_REVERSE", "true"));
            } else if spec.validation.repair {
                env_vars.push(env("FERRY_REPAIR", "true"));
            }
        }
        JobKind::Check => {
            // Reports only: a difference sends the migration back to the
            // Validating phase, which repairs as the spec says.
            env_vars.push(env("FERRY_VALIDATE_MODE", "sample"));
            env_vars.push(env(
                "FERRY_SAMPLE_PERCENT",
                spec.validation.schedule_sample_percent.clamp(1, 100),
            ));
        }
    }
    env_vars
}

/// The Indexed Job: one pod per share of the token ranges.
pub fn build_job(cm: &CassandraMigration, kind: JobKind, inputs: &JobInputs) -> Job {
    let spec = &cm.spec;
    let name = cm.metadata.name.clone().unwrap_or_default();
    let labels = BTreeMap::from([
        (labels::MIGRATION_LABEL.to_owned(), name),
        (labels::JOB_KIND_LABEL.to_owned(), kind.as_str().to_owned()),
    ]);
    let tls = TlsMount::clusters(spec);
    let container = Container {
        name: kind.as_str().to_owned(),
        image: Some(inputs.image.clone()),
        args: Some(vec![kind.mode().to_owned()]),
        env: Some(job_env(cm, kind, inputs)),
        termination_message_policy: Some("File".to_owned()),
        // What the `restricted` Pod Security Standard asks of a container.
        security_context: Some(pod_security::restricted()),
        volume_mounts: (!tls.is_empty()).then(|| tls.iter().map(TlsMount::volume_mount).collect()),
        resources: spec.backfill.resources.clone(),
        ..Container::default()
    };
    let on_exit_codes = PodFailurePolicyOnExitCodesRequirement {
        container_name: Some(kind.as_str().to_owned()),
        operator: "In".to_owned(),
        values: vec![2, 3],
    };
    Job {
        metadata: ObjectMeta {
            name: Some(inputs.name.clone()),
            labels: Some(labels.clone()),
            owner_references: cm.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".to_owned()),
            completions: Some(spec.backfill.parallelism),
            parallelism: Some(spec.backfill.parallelism),
            backoff_limit_per_index: Some(3),
            max_failed_indexes: Some(0),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![
                    // A pod deleted, evicted or preempted is not the work's
                    // fault: its replacement redoes only the unfinished ranges.
                    PodFailurePolicyRule {
                        action: "Ignore".to_owned(),
                        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                            type_: "DisruptionTarget".to_owned(),
                            status: Some("True".to_owned()),
                        }]),
                        ..PodFailurePolicyRule::default()
                    },
                    // Exit 2 is bad input and 3 differences found (sidecar
                    // bulk::exit): retrying cannot help. Anything else (a
                    // cluster down, a signal) is retried.
                    PodFailurePolicyRule {
                        action: "FailJob".to_owned(),
                        on_exit_codes: Some(on_exit_codes),
                        ..PodFailurePolicyRule::default()
                    },
                ],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    // The Jobs talk CQL only: no Kubernetes API token.
                    automount_service_account_token: Some(false),
                    image_pull_secrets: (!inputs.image_pull_secrets.is_empty()).then(|| {
                        inputs
                            .image_pull_secrets
                            .iter()
                            .map(|n| LocalObjectReference { name: n.clone() })
                            .collect()
                    }),
                    containers: vec![container],
                    volumes: (!tls.is_empty()).then(|| tls.iter().map(TlsMount::volume).collect()),
                    node_selector: (!spec.backfill.node_selector.is_empty())
                        .then(|| spec.backfill.node_selector.clone()),
                    tolerations: (!spec.backfill.tolerations.is_empty())
                        .then(|| spec.backfill.tolerations.clone()),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// Up to `total` example keys of a validation's differences, at most
/// `per_kind` of each kind, as `kind key` (for a condition's message).
pub fn example_keys(results: &ValidationResults, per_kind: usize, total: usize) -> Vec<String> {
    results
        .examples
        .iter()
        .flat_map(|(kind, keys)| {
            keys.iter()
                .take(per_kind)
                .map(move |k| format!("{kind} {k}"))
        })
        .take(total)
        .collect()
}

/// Where a Job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Complete,
    Failed(String),
}

/// Reads the Job's conditions.
pub fn job_state(job: &Job) -> JobState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for c in &conditions {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return JobState::Complete,
            "Failed" => {
                return JobState::Failed(format!(
                    "{}: {}",
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                ))
            }
            _ => {}
        }
    }
    JobState::Running
}

/// The JSON one bulk pod writes to its termination message.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Summary {
    pub mode: String,
    pub ranges_done: i64,
    pub ranges_total: i64,
    pub rows_copied: i64,
    pub bytes_copied: i64,
    pub rows_per_second: f64,
    pub rows_compared: i64,
    pub missing: i64,
    pub extra: i64,
    pub mismatched: i64,
    pub in_flight: i64,
    pub repaired: i64,
    pub examples: std::collections::BTreeMap<String, Vec<String>>,
}

/// The summaries of the Job's succeeded pods, one per completion index (the
/// newest pod of an index wins: a retried index must not count twice).
pub fn summaries(pods: &[Pod]) -> Vec<Summary> {
    let mut by_index: std::collections::BTreeMap<String, (String, Summary)> = Default::default();
    for pod in pods {
        let Some(status) = &pod.status else { continue };
        if status.phase.as_deref() != Some("Succeeded") {
            continue;
        }
        let index = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("batch.kubernetes.io/job-completion-index").cloned())
            .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
        let created = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let message = status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
            .next();
        let Some(summary) = message.and_then(|m| serde_json::from_str::<Summary>(m.trim()).ok())
        else {
            continue;
        };
        match by_index.get(&index) {
            Some((seen, _)) if *seen >= created => {}
            _ => {
                by_index.insert(index, (created, summary));
            }
        }
    }
    by_index.into_values().map(|(_, s)| s).collect()
}

/// Adds up backfill summaries.
pub fn backfill_progress(
    job_name: &str,
    start: i64,
    ranges_total: i64,
    sums: &[Summary],
) -> BackfillProgress {
    let mut p = BackfillProgress {
        job_name: Some(job_name.to_owned()),
        start_timestamp_micros: Some(start),
        ranges_total,
        ..Default::default()
    };
    let mut reported_total = 0;
    for s in sums {
        p.ranges_done += s.ranges_done;
        reported_total += s.ranges_total;
        p.rows_copied += s.rows_copied;
        p.bytes_copied += s.bytes_copied;
        p.rows_per_second += s.rows_per_second.round() as i64;
    }
    if reported_total > p.ranges_total {
        p.ranges_total = reported_total;
    }
    p
}

/// At most this many example keys per kind in the status.
const MAX_EXAMPLES: usize = 10;

/// Adds up validation summaries.
pub fn validation_results(job_name: &str, sums: &[Summary]) -> ValidationResults {
    let mut r = ValidationResults {
        job_name: Some(job_name.to_owned()),
        ..Default::default()
    };
    for s in sums {
        r.rows_compared += s.rows_compared;
        r.missing += s.missing;
        r.extra += s.extra;
        r.mismatched += s.mismatched;
        r.in_flight += s.in_flight;
        r.repaired += s.repaired;
        for (kind, keys) in &s.examples {
            let slot = r.examples.entry(kind.clone()).or_default();
            for k in keys {
                if slot.len() < MAX_EXAMPLES {
                    slot.push(k.clone());
                }
            }
        }
    }
    r.unresolved = (r.missing + r.extra + r.mismatched - r.repaired).max(0);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::CassandraMigrationSpec;
    use serde_json::json;

    fn migration() -> CassandraMigration {
        let spec: CassandraMigrationSpec = serde_json::from_value(json!({
            "source": {"statefulSet": "cassandra", "credentialsSecret": {"name": "src"}},
            "target": {"contactPoints": ["t0:9042", "t1:9042"], "localDatacenter": "dc1"},
            "keyspaces": {"include": ["shop", "users"]},
            "backfill": {"parallelism": 4, "splits": 64, "rowsPerSecond": 1000, "timestampMode": "backdate"},
            "validation": {"mode": "sample", "samplePercent": 10, "repair": true},
        }))
        .unwrap();
        let mut cm = CassandraMigration::new("mig", spec);
        cm.metadata.uid = Some("uid-1".into());
        cm
    }

    fn inputs() -> JobInputs {
        JobInputs {
            name: "mig-backfill".into(),
            image: "ferry-sidecar:dev".into(),
            source_contact_points: vec!["10.0.0.1:9042".into(), "10.0.0.2:9042".into()],
            source_datacenter: Some("dc0".into()),
            start_timestamp_micros: 1_700_000_000_000_000,
            mirroring_since_micros: Some(1_699_999_000_000_000),
            image_pull_secrets: vec!["regcred".to_owned()],
        }
    }

    fn env_of(job: &Job) -> std::collections::BTreeMap<String, String> {
        let c = &job
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    #[test]
    fn backfill_job_is_indexed_and_carries_the_spec() {
        let job = build_job(&migration(), JobKind::Backfill, &inputs());
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!(spec.completions, Some(4));
        assert_eq!(spec.parallelism, Some(4));
        let env = env_of(&job);
        assert_eq!(env["FERRY_SPLITS"], "64");
        assert_eq!(env["FERRY_SPLIT_COUNT"], "4");
        assert_eq!(
            env["FERRY_COMPRESSION"], "none",
            "no compression unless asked"
        );
        assert_eq!(env["FERRY_TIMESTAMP_MODE"], "backdate");
        assert_eq!(env["FERRY_START_TIMESTAMP"], "1700000000000000");
        assert_eq!(env["FERRY_MIRRORING_SINCE"], "1699999000000000");
        assert_eq!(
            env["FERRY_ROWS_PER_SECOND"], "250",
            "the rate is shared by the pods"
        );
        assert_eq!(env["FERRY_KEYSPACES"], "shop,users");
        assert_eq!(
            env["FERRY_SOURCE_CONTACT_POINTS"],
            "10.0.0.1:9042,10.0.0.2:9042"
        );
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn lz4_compression_reaches_both_kinds_of_job() {
        let mut cm = migration();
        cm.spec.backfill.compression = crate::crd::JobCompression::Lz4;
        for kind in [JobKind::Backfill, JobKind::Validate] {
            let env = env_of(&build_job(&cm, kind, &inputs()));
            assert_eq!(env["FERRY_COMPRESSION"], "lz4", "{kind:?}");
        }
    }

    #[test]
    fn tls_secrets_are_mounted_and_named_to_the_bulk_modes() {
        let mut cm = migration();
        cm.spec.source.tls_secret =
            Some(serde_json::from_value(json!({"name": "src-ca"})).unwrap());
        cm.spec.target.tls_secret = Some(
            serde_json::from_value(
                json!({"name": "tgt-ca", "insecureSkipHostnameVerification": true}),
            )
            .unwrap(),
        );
        let job = build_job(&cm, JobKind::Backfill, &inputs());
        let env = env_of(&job);
        assert_eq!(
            env["FERRY_SOURCE_TLS_CA_FILE"],
            "/etc/ferry/tls/source/ca.crt"
        );
        assert!(!env.contains_key("FERRY_SOURCE_TLS_SKIP_HOSTNAME_VERIFICATION"));
        assert_eq!(
            env["FERRY_TARGET_TLS_CA_FILE"],
            "/etc/ferry/tls/target/ca.crt"
        );
        assert_eq!(env["FERRY_TARGET_TLS_SKIP_HOSTNAME_VERIFICATION"], "true");
        let pod = job.spec.unwrap().template.spec.unwrap();
        let volumes: Vec<_> = pod
            .volumes
            .unwrap()
            .into_iter()
            .map(|v| (v.name, v.secret.unwrap().secret_name.unwrap()))
            .collect();
        assert_eq!(
            volumes,
            [
                ("ferry-source-tls".to_owned(), "src-ca".to_owned()),
                ("ferry-target-tls".to_owned(), "tgt-ca".to_owned())
            ]
        );
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert_eq!(mounts[1].mount_path, "/etc/ferry/tls/target");
        // Without TLS the Job has no volumes at all.
        let plain = build_job(&migration(), JobKind::Backfill, &inputs());
        let plain = plain.spec.unwrap().template.spec.unwrap();
        assert!(plain.volumes.is_none() && plain.containers[0].volume_mounts.is_none());
    }

    #[test]
    fn validate_job_carries_the_validation_settings() {
        let job = build_job(&migration(), JobKind::Validate, &inputs());
        let env = env_of(&job);
        assert_eq!(env["FERRY_VALIDATE_MODE"], "sample");
        assert_eq!(env["FERRY_SAMPLE_PERCENT"], "10");
        assert_eq!(env["FERRY_REPAIR"], "true");
        assert!(!env.contains_key("FERRY_TIMESTAMP_MODE"));
    }

    #[test]
    fn job_pods_meet_the_restricted_pod_security_standard_without_an_api_token() {
        let job = build_job(&migration(), JobKind::Backfill, &inputs());
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(
            pod.image_pull_secrets
                .map(|s| s.into_iter().map(|r| r.name).collect::<Vec<_>>()),
            Some(vec!["regcred".to_owned()])
        );
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.seccomp_profile.map(|p| p.type_),
            Some("RuntimeDefault".to_owned())
        );
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()])
        );
    }

    #[test]
    fn a_reverse_check_reads_the_target_as_the_reference_and_never_repairs() {
        let job = build_job(&migration(), JobKind::Reverse, &inputs());
        let env = env_of(&job);
        assert_eq!(env["FERRY_REVERSE"], "true");
        assert_eq!(env["FERRY_VALIDATE_MODE"], "sample");
        assert!(
            !env.contains_key("FERRY_REPAIR"),
            "it would write into the source"
        );
        let container = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(
            container.args.as_deref(),
            Some(&["validate".to_owned()][..])
        );
    }

    #[test]
    fn a_scheduled_check_samples_without_repairing_and_runs_the_validate_mode() {
        let mut cm = migration();
        cm.spec.validation.schedule_sample_percent = 3;
        let job = build_job(&cm, JobKind::Check, &inputs());
        let env = env_of(&job);
        assert_eq!(env["FERRY_VALIDATE_MODE"], "sample");
        assert_eq!(env["FERRY_SAMPLE_PERCENT"], "3");
        assert!(!env.contains_key("FERRY_REPAIR"), "a check only reports");
        let container = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(
            container.args.as_deref(),
            Some(&["validate".to_owned()][..])
        );
        assert_eq!(container.name, "check");
    }

    fn pod(index: &str, created: &str, phase: &str, message: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("p-{index}-{created}"), "creationTimestamp": created,
                         "annotations": {"batch.kubernetes.io/job-completion-index": index}},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "backfill", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "message": message}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn summaries_count_each_index_once_and_add_up() {
        let pods = [
            pod(
                "0",
                "2026-01-01T00:00:00Z",
                "Succeeded",
                r#"{"mode":"backfill","rangesDone":10,"rangesTotal":32,"rowsCopied":100,"bytesCopied":1000,"rowsPerSecond":50.4}"#,
            ),
            pod(
                "0",
                "2026-01-01T00:05:00Z",
                "Succeeded",
                r#"{"mode":"backfill","rangesDone":32,"rangesTotal":32,"rowsCopied":300,"bytesCopied":3000,"rowsPerSecond":60}"#,
            ),
            pod(
                "1",
                "2026-01-01T00:00:00Z",
                "Succeeded",
                r#"{"mode":"backfill","rangesDone":32,"rangesTotal":32,"rowsCopied":200,"bytesCopied":2000,"rowsPerSecond":40}"#,
            ),
            pod(
                "2",
                "2026-01-01T00:00:00Z",
                "Failed",
                r#"{"mode":"backfill","rowsCopied":999}"#,
            ),
            pod("3", "2026-01-01T00:00:00Z", "Succeeded", "not json"),
        ];
        let sums = summaries(&pods);
        assert_eq!(sums.len(), 2);
        let p = backfill_progress("j", 1, 64, &sums);
        assert_eq!(
            (
                p.ranges_done,
                p.ranges_total,
                p.rows_copied,
                p.bytes_copied,
                p.rows_per_second
            ),
            (64, 64, 500, 5000, 100)
        );
    }

    #[test]
    fn validation_results_add_up_and_bound_examples() {
        let many: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
        let sums = vec![
            Summary {
                rows_compared: 10,
                missing: 2,
                mismatched: 1,
                repaired: 3,
                examples: [("missing".to_owned(), many.clone())].into(),
                ..Default::default()
            },
            Summary {
                rows_compared: 5,
                extra: 1,
                ..Default::default()
            },
        ];
        let r = validation_results("v", &sums);
        assert_eq!(
            (
                r.rows_compared,
                r.missing,
                r.extra,
                r.mismatched,
                r.repaired,
                r.unresolved
            ),
            (15, 2, 1, 1, 3, 1)
        );
        assert_eq!(r.examples["missing"].len(), MAX_EXAMPLES);
    }

    #[test]
    fn job_state_reads_conditions() {
        let job: Job = serde_json::from_value(json!({"status": {"conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}]}})).unwrap();
        assert_eq!(
            job_state(&job),
            JobState::Failed("BackoffLimitExceeded: too many".into())
        );
        let job: Job = serde_json::from_value(
            json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}),
        )
        .unwrap();
        assert_eq!(job_state(&job), JobState::Complete);
        assert_eq!(job_state(&Job::default()), JobState::Running);
    }
}
