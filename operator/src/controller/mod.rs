//! The CassandraMigration controller: fetch → validate → act → status.
//!
//! Each reconcile reads the world (the migration, its source StatefulSet and
//! pods, its Jobs), takes at most one step (evict one pod, create one Job,
//! move one phase) and writes the whole status with server-side apply. Every
//! decision is recomputed from what the API server says, so a restarted
//! operator picks up mid-roll or mid-backfill where the last one stopped.
//!
//! This file is the wiring (the `Controller`, `reconcile`, `error_policy`)
//! and the [`Step`] a reconcile carries; each step has its own file:
//! `phases` (the phase machine), `rollout`, `gates`, `proxies`,
//! `job_steps`, `cutover_step`, `owned`, `cleanup`, `schema_step`,
//! `scheduled_check`, `reverse_check`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use crate::cql::{self, RingHealth};
use crate::crd::{
    CassandraMigration, CassandraMigrationStatus, CutoverStage, Phase, SchemaMode,
    SidecarPodStatus, SidecarState, TlsSecretRef,
};
use crate::cutover;
use crate::jobs::{self, JobInputs, JobKind, JobState};
use crate::labels;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::proxy_state;
use crate::roll::{self, Direction, PodView, RollStep};
use crate::sidecar;
use crate::source;
use crate::status::{self, condition};
use ferry_sidecar::proxy::state::ProxyState;

mod cleanup;
mod cutover_step;
mod gates;
mod job_steps;
mod owned;
mod phases;
mod proxies;
mod reverse_check;
mod rollout;
mod scheduled_check;
mod schema_step;
use cleanup::cleanup;
use cutover_step::{follow_cutover, metrics_stage};
use gates::{pod_ips, probe_gate, ring_gate};
use job_steps::{delete_failed_jobs, follow_backfill, follow_validation, revalidate, start_job};
use owned::{delete_if_present, ensure_pdb, write_peer_map};
use phases::{apply, mirroring_since_micros, set_ready};
use proxies::{check_mirroring, mirroring_behind, read_proxies, spool_hold};
use reverse_check::reverse_check;
use rollout::{check_sidecars, proxies_out, roll_sidecars, sidecar_states, take_proxies_out};
use scheduled_check::scheduled_check;
use schema_step::{schema_gate, schema_recheck};

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "ferry-operator";

/// Settings of the controller that do not come from the CR.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image of the bulk Jobs (and the default sidecar image).
    pub sidecar_image: String,
    /// How long a rolled pod may take to come back Ready with its sidecar.
    pub roll_timeout: Duration,
    /// How often to look again while waiting on pods or Jobs.
    pub poll: Duration,
    /// Watch only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Before each eviction, ask every source node over CQL how it sees the
    /// others and evict only when all see all Up/Normal ([`cql::ring_health`]).
    pub ring_check: bool,
    /// Before `Mirroring`, write a row through a proxy and wait for it on the
    /// target ([`cql::probe_write`]).
    pub probe_write: bool,
    /// The keyspace of that probe row, created on both clusters.
    pub probe_keyspace: String,
    /// Before the roll, make the target's schema match the source's
    /// (`spec.schema`: copy what it lacks, or verify) over CQL to the
    /// source pods and the target ([`schema_copy`]).
    pub schema_step: bool,
    /// After the roll, how often the schemas are compared again.
    pub schema_recheck: Duration,
    /// Secrets the Job pods pull their image with (`--image-pull-secrets`).
    pub image_pull_secrets: Vec<String>,
    /// How long a minute of `validation.scheduleMinutes` lasts (the tests
    /// shorten it to see checks in seconds).
    pub schedule_minute: Duration,
    /// Read each proxy's `/state`: never evict a pod whose proxy owes the
    /// target writes, and report a stalled spool as `MirroringBehind`
    /// ([`proxy_state`]).
    pub proxy_checks: bool,
    /// How long a spool may hold writes without draining any before the
    /// migration is `MirroringBehind`.
    pub mirroring_behind_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sidecar_image: "ferry.dev/ferry-sidecar:dev".to_owned(),
            roll_timeout: Duration::from_secs(600),
            poll: Duration::from_secs(3),
            namespace: None,
            ring_check: true,
            probe_write: true,
            probe_keyspace: "ferry".to_owned(),
            proxy_checks: true,
            mirroring_behind_after: Duration::from_secs(120),
            schema_step: true,
            schema_recheck: Duration::from_secs(60),
            schedule_minute: Duration::from_secs(60),
            image_pull_secrets: Vec::new(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Consecutive failures per migration, for the error backoff.
    failures: ErrorBackoff,
    /// Whether this replica may act (leader election; always without it).
    leadership: Leadership,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            failures: ErrorBackoff::default(),
            leadership: Leadership::always(),
        }
    }

    /// Acts only while `leadership` is held: a replica that lost it (a
    /// renewal missed its deadline, the process was paused) stops at once,
    /// before its `hold` loop notices.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building an object: {0}")]
    Build(#[from] serde_json::Error),
    #[error("migration has no namespace")]
    NoNamespace,
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// Cleanup is under way (a pod is being rolled back). Not a failure: the
    /// finalizer helper only keeps the finalizer while cleanup returns an error.
    #[error("cleanup in progress: {0}")]
    CleanupInProgress(String),
}

impl Error {
    /// A stable, low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Build(_) => "build",
            Error::NoNamespace => "no_namespace",
            Error::Finalizer(_) => "finalizer",
            Error::CleanupInProgress(_) => "cleanup_in_progress",
        }
    }

    /// Whether this only means "look again soon".
    fn is_waiting(&self) -> bool {
        matches!(self, Error::Finalizer(e) if matches!(**e, finalizer::Error::CleanupFailed(Error::CleanupInProgress(_))))
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// The client the controller acts through (its reconciles, status and
/// events; the webhook, certificates and leader election keep kube's
/// default client), with kube's blanket retry of 429, 503 and 504 turned
/// off. A PodDisruptionBudget refuses an eviction
/// with a 429; retried inside the client (15 times, the waits doubling to
/// minutes) the refusal would hold the reconcile, with nothing in its status
/// or log, for as long as the budget refuses, and let a replica that lost
/// its lease meanwhile evict long after. Without it the refusal reaches
/// `rollout::evict`, and any other refusal the error policy, which both
/// requeue on the controller's own terms.
pub fn api_client(mut config: kube::Config) -> std::result::Result<Client, kube::Error> {
    config.default_retry = false;
    Client::try_from(config)
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (migrations, jobs, pods): (Api<CassandraMigration>, Api<Job>, Api<Pod>) =
        match &ctx.settings.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let controller = Controller::new(migrations, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(
            jobs,
            watcher::Config::default().labels(labels::MIGRATION_LABEL),
        )
        .watches(
            pods,
            watcher::Config::default().labels(labels::STS_POD_NAME_LABEL),
            move |pod: Pod| {
                // A source pod changed: wake the migrations of its StatefulSet
                // (by name, or, for a source given by labels, the ones that
                // found it among theirs).
                let ns = pod.namespace();
                let sts = pod
                    .owner_references()
                    .iter()
                    .find(|o| o.kind == "StatefulSet")
                    .map(|o| o.name.clone());
                store
                    .state()
                    .into_iter()
                    .filter(move |cm| {
                        let Some(sts) = sts.as_ref() else {
                            return false;
                        };
                        let found_it = cm
                            .status
                            .as_ref()
                            .is_some_and(|s| s.source_stateful_sets.contains(sts));
                        cm.namespace() == ns
                            && (source::covers(&cm.spec.source, sts, &BTreeMap::new())
                                || (source::by_labels(&cm.spec.source) && found_it))
                    })
                    .map(|cm| ObjectRef::from_obj(&*cm))
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Err(kube::runtime::controller::Error::ReconcilerFailed(err, _))
                    if err.is_waiting() => {}
                Err(err) => warn!(error = %err, "reconcile failed"),
                Ok(_) => {}
            }
        })
        .await;
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

#[instrument(skip(cm, ctx), fields(migration = %cm.name_any(), namespace = cm.namespace().unwrap_or_default()))]
async fn reconcile(cm: Arc<CassandraMigration>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.leadership.is_leading() {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let started = Instant::now();
    let ns = cm.namespace().ok_or(Error::NoNamespace)?;
    let name = cm.name_any();
    let api: Api<CassandraMigration> = Api::namespaced(ctx.client.clone(), &ns);
    // The watch cache may lag: not have seen our last status write (acting
    // on a stale phase would repeat a step) or the deletion itself (apply
    // would go on with a migration that is being deleted). One GET makes
    // every step idempotent and routes a deleted migration to its cleanup
    // at the next look, whatever the watch has delivered.
    let Some(fresh) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let result = finalizer(&api, labels::FINALIZER, Arc::new(fresh), |event| async {
        match event {
            finalizer::Event::Apply(cm) => apply(cm, ctx.clone()).await,
            finalizer::Event::Cleanup(cm) => cleanup(cm, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(started.elapsed());
    if result.is_ok() {
        ctx.failures.succeeded(&backoff_key(&ns, &name));
    }
    result
}

fn error_policy(cm: Arc<CassandraMigration>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_waiting() {
        return Action::requeue(ctx.settings.poll);
    }
    ctx.metrics.reconcile_error(error.metric_label());
    let key = backoff_key(&cm.namespace().unwrap_or_default(), &cm.name_any());
    let delay = ctx.failures.failed(&key);
    warn!(error = %error, ?delay, "reconcile error; retrying");
    Action::requeue(delay)
}

/// The one key a migration's failures are counted under: `namespace/name`.
/// (A success used to clear `namespace` while errors counted under
/// `namespace/name`, so the backoff never reset: after 8 errors every retry
/// waited 5 minutes for good.)
fn backoff_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Consecutive reconcile failures per migration and the wait they earn.
#[derive(Default)]
struct ErrorBackoff(Mutex<HashMap<String, u32>>);

impl ErrorBackoff {
    /// One more failure: 2 s, 4 s, 8 s ... capped at 5 minutes.
    fn failed(&self, key: &str) -> Duration {
        let failures = self
            .0
            .lock()
            .map(|mut f| {
                let n = f.entry(key.to_owned()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1);
        Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
    }

    /// A success: the next failure starts the backoff again.
    fn succeeded(&self, key: &str) {
        if let Ok(mut f) = self.0.lock() {
            f.remove(key);
        }
    }
}

/// One reconcile's view of the world and its pending status.
struct Step<'a> {
    cm: &'a CassandraMigration,
    ctx: &'a Context,
    ns: String,
    name: String,
    status: CassandraMigrationStatus,
    now: Time,
}

impl Step<'_> {
    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(err) = self
            .ctx
            .recorder
            .publish(&ev, &self.cm.object_ref(&()))
            .await
        {
            warn!(error = %err, reason, "could not publish an event");
        }
    }

    /// The proxy configuration hash every injected pod should carry.
    fn proxy_config(&self) -> String {
        let settings = &self.ctx.settings;
        sidecar::proxy_config_hash(
            self.cm,
            settings
                .probe_write
                .then_some(settings.probe_keyspace.as_str()),
        )
    }

    async fn enter(&mut self, phase: Phase) {
        let from = self.status.phase;
        if status::enter_phase(&mut self.status, phase, &self.now) {
            info!(%from, to = %phase, "phase");
            self.event(
                EventType::Normal,
                &phase.to_string(),
                "Phase",
                format!("{from} → {phase}"),
            )
            .await;
        }
    }

    async fn fail(&mut self, reason: &str, message: String) {
        let generation = self.cm.metadata.generation;
        status::set_condition(
            &mut self.status,
            condition::FAILED,
            true,
            reason,
            message.clone(),
            generation,
            &self.now,
        );
        status::set_condition(
            &mut self.status,
            condition::READY,
            false,
            reason,
            message.clone(),
            generation,
            &self.now,
        );
        self.event(EventType::Warning, reason, "Fail", message)
            .await;
        self.enter(Phase::Failed).await;
    }

    async fn write_status(&mut self) -> Result<()> {
        if !self.ctx.leadership.is_leading() {
            warn!("not writing status: this replica no longer holds the leader lease");
            return Ok(());
        }
        self.status.observed_generation = self.cm.metadata.generation;
        self.status.progress = Some(status::progress_text(&self.status));
        let api: Api<CassandraMigration> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "CassandraMigration",
            "status": self.status,
        });
        api.patch_status(
            &self.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::job_steps::source_contact_points;
    use super::owned::advertised_port;
    use super::*;

    #[test]
    fn a_success_resets_the_error_backoff_of_its_migration() {
        let backoff = ErrorBackoff::default();
        let key = backoff_key("ns", "mig");
        for _ in 0..10 {
            backoff.failed(&key);
        }
        assert_eq!(backoff.failed(&key), Duration::from_secs(256));
        backoff.succeeded(&backoff_key("ns", "mig"));
        assert_eq!(backoff.failed(&key), Duration::from_secs(2));
        // Another migration's success does not reset it.
        backoff.succeeded(&backoff_key("ns", "other"));
        assert_eq!(backoff.failed(&key), Duration::from_secs(4));
    }

    #[test]
    fn drivers_are_told_the_cql_port_with_iptables_and_the_proxy_port_otherwise() {
        let spec = |redirect: &str| -> crate::crd::CassandraMigrationSpec {
            serde_json::from_value(json!({
                "source": {"statefulSet": "c"},
                "target": {"contactPoints": ["t:9042"], "localDatacenter": "dc1"},
                "proxy": {"redirect": redirect, "listenPort": 29042},
            }))
            .expect("spec")
        };
        assert_eq!(advertised_port(&spec("iptables")), 9042);
        assert_eq!(advertised_port(&spec("port")), 29042);
    }

    fn pod(name: &str, ready: bool, sidecar: bool, ip: &str) -> Pod {
        let mut init = vec![];
        if sidecar {
            init.push(json!({"name": labels::SIDECAR_CONTAINER, "image": "x"}));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "cassandra", "image": "c"}], "initContainers": init},
            "status": {"podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
                "initContainerStatuses": if sidecar {json!([{"name": labels::SIDECAR_CONTAINER, "ready": ready, "restartCount": 0, "image": "x", "imageID": ""}])} else {json!([])}}
        }))
        .unwrap()
    }

    #[test]
    fn sidecar_states_follow_the_roll() {
        let t0 = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let t1 = Time("2026-01-01T00:01:00Z".parse().unwrap());
        let pods = [
            pod("c-0", true, true, "10.0.0.1"),
            pod("c-1", true, false, "10.0.0.2"),
        ];
        let s = sidecar_states(&[], &pods, &t0, Direction::Inject, "m");
        assert_eq!(s[0].state, SidecarState::Ready);
        assert_eq!(s[0].proxy_address.as_deref(), Some("10.0.0.1"));
        assert_eq!(s[1].state, SidecarState::Waiting);
        // c-1 evicted and gone: still Rolling, since kept.
        let mut rolling = s.clone();
        rolling[1].state = SidecarState::Rolling;
        rolling[1].since = Some(t0.clone());
        let s2 = sidecar_states(&rolling, &pods[..1], &t1, Direction::Inject, "m");
        assert_eq!(s2[1].state, SidecarState::Rolling);
        assert_eq!(s2[1].since, Some(t0.clone()));
        // Back and Ready without the sidecar: Failed, visible.
        let s3 = sidecar_states(&rolling, &pods, &t1, Direction::Inject, "m");
        assert_eq!(s3[1].state, SidecarState::Failed);
    }

    /// Taking the proxies out (deleted, or cut over): a pod with this
    /// migration's proxy waits its turn (`Removing`), an evicted one is
    /// `Rolling` until it is back, and back without the proxy it is
    /// `Removed`, not `Failed`; a pod whose proxy serves another migration
    /// is not this one's to take out.
    #[test]
    fn sidecar_states_follow_the_removal() {
        let t0 = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let t1 = Time("2026-01-01T00:01:00Z".parse().unwrap());
        let mut other = pod("c-2", true, true, "10.0.0.3");
        other
            .annotations_mut()
            .insert(labels::MIGRATION_ANNOTATION.to_owned(), "other".to_owned());
        let pods = [
            pod("c-0", true, false, "10.0.0.1"),
            pod("c-1", true, true, "10.0.0.2"),
            other,
        ];
        let s = sidecar_states(&[], &pods, &t0, Direction::Remove, "m");
        let states: Vec<_> = s.iter().map(|p| p.state).collect();
        assert_eq!(
            states,
            [
                SidecarState::Removed,
                SidecarState::Removing,
                SidecarState::Removed
            ]
        );
        // c-1 evicted: Rolling while gone and while back but not Ready.
        let mut rolling = s.clone();
        rolling[1].state = SidecarState::Rolling;
        let gone = sidecar_states(
            &rolling,
            &[pods[0].clone(), pods[2].clone()],
            &t1,
            Direction::Remove,
            "m",
        );
        assert_eq!(gone[1].state, SidecarState::Rolling);
        let starting = [
            pods[0].clone(),
            pod("c-1", false, false, "10.0.0.2"),
            pods[2].clone(),
        ];
        let back = sidecar_states(&rolling, &starting, &t1, Direction::Remove, "m");
        assert_eq!(back[1].state, SidecarState::Rolling);
        let ready = [
            pods[0].clone(),
            pod("c-1", true, false, "10.0.0.2"),
            pods[2].clone(),
        ];
        let done = sidecar_states(&rolling, &ready, &t1, Direction::Remove, "m");
        assert_eq!(done[1].state, SidecarState::Removed);
        assert!(super::rollout::proxies_out(&ready, 3, "m"));
        assert!(!super::rollout::proxies_out(&pods, 3, "m"));
    }

    #[test]
    fn contact_points_prefer_pod_ips() {
        let cm = CassandraMigration::new(
            "m",
            serde_json::from_value(json!({"source": {"statefulSet": "c", "cqlPort": 9142},
                "target": {"contactPoints": ["t:9042"], "localDatacenter": "dc"}}))
            .unwrap(),
        );
        let pods = [
            pod("c-0", true, true, "10.0.0.1"),
            pod("c-1", true, true, ""),
            pod("c-2", true, true, "fd00::2"),
        ];
        assert_eq!(
            source_contact_points(&cm, &pods, "ns", Some("c-svc")),
            vec!["10.0.0.1:9142", "c-1.c-svc.ns.svc:9142", "[fd00::2]:9142"]
        );
    }
}
