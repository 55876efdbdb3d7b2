//! The CassandraMigration controller: fetch → validate → act → status.
//!
//! Each reconcile reads the world (the migration, its source StatefulSet and
//! pods, its Jobs), takes at most one step (evict one pod, create one Job,
//! move one phase) and writes the whole status with server-side apply. Every
//! decision is recomputed from what the API server says, so a restarted
//! operator picks up mid-roll or mid-backfill where the last one stopped.

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
use tracing::{info, instrument, warn};

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

mod reverse_check;
mod scheduled_check;
mod schema_step;
use reverse_check::reverse_check;
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
    let result = finalizer(&api, labels::FINALIZER, cm, |event| async {
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

async fn apply(cached: Arc<CassandraMigration>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cached.namespace().ok_or(Error::NoNamespace)?;
    // The watch cache may not have seen our last status write yet; acting on
    // a stale phase would repeat a step. One GET makes every step idempotent.
    let api: Api<CassandraMigration> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(cm) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let mut step = Step {
        cm: &cm,
        ctx: &ctx,
        name: cm.name_any(),
        ns: ns.clone(),
        status: cm.status.clone().unwrap_or_default(),
        now: now(),
    };
    if step.status.phase_history.is_empty() {
        step.enter(Phase::Pending).await;
    }

    // Fetch the source: every StatefulSet of it, and their pods.
    let found = match source::fetch(&ctx.client, &ns, &cm.spec.source).await {
        Ok(found) => found,
        Err(source::SourceError::NotFound(msg)) => {
            if step.status.phase != Phase::Failed {
                step.fail("SourceNotFound", msg).await;
            }
            step.write_status().await?;
            ctx.metrics.set_phase(&ns, &step.name, step.status.phase);
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        Err(source::SourceError::Kube(e)) => return Err(e.into()),
    };
    let replicas = found.replicas();
    step.status.source_stateful_sets = found.names();
    let pods = found.pods.clone();
    write_peer_map(&step, &pods).await?;
    ensure_pdb(&step, &found).await?;
    step.status.sidecars = sidecar_states(&step.status.sidecars, &pods, &step.now);

    // A failed migration resumes once its spec changed (or its source is back).
    if step.status.phase == Phase::Failed {
        let spec_changed = step.status.observed_generation < cm.metadata.generation;
        let source_back = step.status.conditions.iter().any(|c| {
            c.type_ == condition::FAILED && c.status == "True" && c.reason == "SourceNotFound"
        });
        if spec_changed || source_back {
            let resume = status::resume_phase(&step.status);
            let generation = cm.metadata.generation;
            // A failed Job stays failed: remove it so the phase makes a new
            // one (the backfill's checkpoints keep finished ranges done).
            delete_failed_jobs(&ctx.client, &ns, &step.name).await?;
            status::set_condition(
                &mut step.status,
                condition::FAILED,
                false,
                "Resumed",
                format!("resumed in {resume}"),
                generation,
                &step.now,
            );
            step.enter(resume).await;
        } else {
            step.write_status().await?;
            ctx.metrics.set_phase(&ns, &step.name, Phase::Failed);
            return Ok(Action::requeue(Duration::from_secs(120)));
        }
    }

    let poll = ctx.settings.poll;
    // Once the proxies run, the source's schema is followed on the target
    // (the proxies follow what clients change through them; this catches
    // the rest), until the cut-over ends the migration.
    if matches!(
        step.status.phase,
        Phase::Mirroring | Phase::Backfilling | Phase::Validating | Phase::Ready
    ) && cutover::applied(Some(&step.status)) != CutoverStage::Done
    {
        schema_recheck(&mut step, &pods).await;
    }
    let action = match step.status.phase {
        Phase::Pending => {
            if schema_gate(&mut step, &pods).await {
                roll_sidecars(&mut step, &pods, replicas, Direction::Inject).await?
            } else {
                Action::requeue(Duration::from_secs(10))
            }
        }
        Phase::Mirroring => {
            check_mirroring(&mut step, &pods).await;
            if check_sidecars(&mut step, &pods, replicas).await? {
                // The validation after the backfill covers what went by.
                step.status.revalidate = None;
                start_job(&mut step, &pods, JobKind::Backfill, 1).await?;
                step.enter(Phase::Backfilling).await;
            }
            Action::requeue(poll)
        }
        Phase::Backfilling => {
            if check_sidecars(&mut step, &pods, replicas).await? {
                step.status.revalidate = None;
            }
            check_mirroring(&mut step, &pods).await;
            follow_backfill(&mut step).await?
        }
        Phase::Validating => {
            let proxied = check_sidecars(&mut step, &pods, replicas).await?;
            check_mirroring(&mut step, &pods).await;
            if proxied && step.status.revalidate.is_some() {
                revalidate(&mut step, &pods).await?
            } else {
                follow_validation(&mut step, &pods).await?
            }
        }
        Phase::Ready if cutover::applied(Some(&step.status)) == CutoverStage::Done => {
            take_proxies_out(&mut step, &pods, replicas).await?
        }
        Phase::Ready => {
            let proxied = check_sidecars(&mut step, &pods, replicas).await?;
            // One reading of every proxy serves both checks.
            let readings = read_proxies(&pods).await;
            let behind = ctx.settings.proxy_checks && mirroring_behind(&mut step, &readings).await;
            set_ready(&mut step);
            if proxied && step.status.revalidate.is_some() {
                revalidate(&mut step, &pods).await?
            } else {
                let switching = follow_cutover(&mut step, &pods, readings).await?;
                // Checks run when no stage switch is asked for (a proxy
                // whose /state cannot be read keeps `switching` set, and
                // must not stop the checks of the data).
                let stage_settled = step
                    .status
                    .cutover
                    .as_ref()
                    .is_none_or(|c| c.stage == step.cm.spec.cutover.stage);
                if proxied && !behind && stage_settled {
                    reverse_check(&mut step, &pods).await?;
                    scheduled_check(&mut step, &pods).await?;
                }
                // A re-roll in progress waits on settle times no pod event
                // marks, a spool is read again soon, and a stage switch is
                // confirmed as soon as the proxies report it: look again soon.
                if proxied && !behind && !switching {
                    Action::requeue(Duration::from_secs(30))
                } else {
                    Action::requeue(poll)
                }
            }
        }
        Phase::Complete => Action::requeue(Duration::from_secs(600)),
        Phase::Failed => Action::requeue(Duration::from_secs(120)),
    };
    step.write_status().await?;
    ctx.metrics.set_phase(&ns, &step.name, step.status.phase);
    Ok(action)
}

/// When the first proxy may have started mirroring: the migration's first
/// phase (Pending, when the roll starts), else its creation.
fn mirroring_since_micros(cm: &CassandraMigration) -> Option<i64> {
    let first_phase = cm
        .status
        .as_ref()
        .and_then(|s| s.phase_history.first())
        .map(|t| t.started_at.0);
    first_phase
        .or_else(|| cm.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map(|t| t.as_microsecond())
}

/// The per-pod roll state, carrying `since` over from the last status.
fn sidecar_states(
    previous: &[SidecarPodStatus],
    pods: &[Pod],
    now: &Time,
) -> Vec<SidecarPodStatus> {
    let prev: BTreeMap<&str, &SidecarPodStatus> =
        previous.iter().map(|s| (s.pod.as_str(), s)).collect();
    let mut names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    // A pod that was being rolled and is gone right now is still Rolling.
    for s in previous {
        if s.state == SidecarState::Rolling && !names.contains(&s.pod) {
            names.push(s.pod.clone());
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let pod = pods.iter().find(|p| p.name_any() == name);
            let before = prev.get(name.as_str()).copied();
            let (state, message, address) = match pod {
                None => (
                    SidecarState::Rolling,
                    Some("pod is gone; waiting for it to come back".to_owned()),
                    None,
                ),
                Some(p) => {
                    let view = PodView::of(p);
                    let address = p
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_ip.clone())
                        .filter(|ip| !ip.is_empty());
                    if view.has_sidecar && view.sidecar_ready && view.ready {
                        (SidecarState::Ready, None, address)
                    } else if view.terminating
                        || (before.is_some_and(|b| b.state == SidecarState::Rolling) && !view.ready)
                    {
                        (
                            SidecarState::Rolling,
                            Some("evicted; coming back".to_owned()),
                            address,
                        )
                    } else if view.has_sidecar {
                        (
                            SidecarState::Rolling,
                            Some("proxy not ready yet".to_owned()),
                            address,
                        )
                    } else if before.is_some_and(|b| b.state == SidecarState::Rolling) {
                        (
                            SidecarState::Failed,
                            Some(
                                "came back without the sidecar: is the webhook reachable?"
                                    .to_owned(),
                            ),
                            address,
                        )
                    } else {
                        (SidecarState::Waiting, None, address)
                    }
                }
            };
            let since = match before {
                Some(b) if b.state == state => b.since.clone(),
                _ => Some(now.clone()),
            };
            SidecarPodStatus {
                pod: name,
                state,
                proxy_address: address,
                message,
                since,
            }
        })
        .collect()
}

async fn roll_sidecars(
    step: &mut Step<'_>,
    pods: &[Pod],
    replicas: usize,
    direction: Direction,
) -> Result<Action> {
    let views: Vec<PodView> = match direction {
        Direction::Inject => {
            let expected = step.proxy_config();
            pods.iter()
                .map(|p| PodView::expecting(p, &expected))
                .collect()
        }
        Direction::Remove => pods.iter().map(PodView::of).collect(),
    };
    let generation = step.cm.metadata.generation;
    let poll = step.ctx.settings.poll;
    match roll::plan(&views, replicas, direction) {
        RollStep::Done => {
            if direction == Direction::Inject {
                status::set_condition(
                    &mut step.status,
                    condition::SIDECARS_READY,
                    true,
                    "AllPodsProxied",
                    format!("{replicas} pods run a ready proxy"),
                    generation,
                    &step.now,
                );
                if !probe_gate(step, pods).await {
                    return Ok(Action::requeue(Duration::from_secs(10)));
                }
                step.enter(Phase::Mirroring).await;
            }
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        RollStep::Wait { pod, reason } => {
            status::set_condition(
                &mut step.status,
                condition::SIDECARS_READY,
                false,
                "Rolling",
                reason.clone(),
                generation,
                &step.now,
            );
            // A pod that does not come back stops the roll: never take down another.
            let timeout = step.ctx.settings.roll_timeout;
            let stuck = step.status.sidecars.iter().find(|s| {
                s.state == SidecarState::Rolling
                    && pod.as_ref().is_none_or(|p| *p == s.pod)
                    && s.since.as_ref().is_some_and(|t| {
                        let elapsed = step.now.0.duration_since(t.0);
                        elapsed.as_secs() > timeout.as_secs() as i64
                    })
            });
            if let Some(s) = stuck {
                let msg = format!("pod {} did not come back Ready with its proxy within {}s ({reason}); the roll is stopped", s.pod, timeout.as_secs());
                step.fail("PodNotBack", msg).await;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            Ok(Action::requeue(poll))
        }
        RollStep::Evict(name) => {
            if let Some(reason) = ring_gate(step.ctx, &step.ns, step.cm, pods).await {
                status::set_condition(
                    &mut step.status,
                    condition::SIDECARS_READY,
                    false,
                    "WaitingForRing",
                    format!("not evicting {name} yet: {reason}"),
                    generation,
                    &step.now,
                );
                return Ok(Action::requeue(poll));
            }
            if let Some(reason) = spool_hold(step.ctx, pods, &name).await {
                status::set_condition(
                    &mut step.status,
                    condition::SIDECARS_READY,
                    false,
                    "WaitingForSpool",
                    format!("not evicting {name} yet: {reason}"),
                    generation,
                    &step.now,
                );
                return Ok(Action::requeue(poll));
            }
            if evict(step.ctx, &step.ns, &name).await? {
                info!(pod = %name, ?direction, "evicted");
                if let Some(s) = step.status.sidecars.iter_mut().find(|s| s.pod == name) {
                    s.state = SidecarState::Rolling;
                    s.since = Some(step.now.clone());
                    s.message = Some("evicted; coming back".to_owned());
                }
                let what = if direction == Direction::Inject {
                    "inject"
                } else {
                    "remove"
                };
                step.event(
                    EventType::Normal,
                    "EvictedPod",
                    "Roll",
                    format!("evicted {name} to {what} the proxy sidecar"),
                )
                .await;
            } else {
                // A PodDisruptionBudget says not now (or the pod is gone).
                info!(pod = %name, "eviction not possible now; waiting");
            }
            Ok(Action::requeue(poll))
        }
    }
}

/// After the roll: every pod must still carry a ready sidecar (pods replaced
/// by someone else come back through the webhook) with the migration's
/// current proxy settings. Re-rolls a pod that lacks it or has older
/// settings, one at a time, and reports `Degraded` meanwhile. Returns
/// whether all is well.
async fn check_sidecars(step: &mut Step<'_>, pods: &[Pod], replicas: usize) -> Result<bool> {
    let generation = step.cm.metadata.generation;
    let expected = step.proxy_config();
    let views: Vec<PodView> = pods
        .iter()
        .map(|p| PodView::expecting(p, &expected))
        .collect();
    let names = |keep: fn(&PodView) -> bool| -> Vec<&str> {
        views
            .iter()
            .filter(|v| keep(v))
            .map(|v| v.name.as_str())
            .collect()
    };
    let missing = names(|v| !v.has_sidecar);
    let outdated = names(|v| v.outdated);
    if !missing.is_empty() && step.status.revalidate.is_none() {
        // Mirroring began: writes that reached these pods went to the
        // source alone. Validate again (with repair) once they are back.
        let why = format!(
            "{} ran without the proxy after mirroring began (seen {}); writes may have reached the source alone",
            missing.join(", "),
            step.now.0
        );
        warn!(%why, "validating again after the re-roll");
        step.event(EventType::Warning, "UnmirroredWrites", "Roll", why.clone())
            .await;
        step.status.revalidate = Some(why);
    }
    if missing.is_empty() && outdated.is_empty() && views.len() >= replicas {
        status::set_condition(
            &mut step.status,
            condition::DEGRADED,
            false,
            "AllPodsProxied",
            "every source pod runs the proxy",
            generation,
            &step.now,
        );
        return Ok(true);
    }
    let (reason, msg) = if !missing.is_empty() {
        (
            "SidecarMissing",
            format!(
                "pods without the proxy: {}; re-rolling them",
                missing.join(", ")
            ),
        )
    } else if !outdated.is_empty() {
        // The spec's proxy settings changed (image, resources, TLS...): each
        // pod is rolled again, one at a time, as in the first roll.
        (
            "SidecarOutdated",
            format!(
                "pods whose proxy predates the migration's proxy settings: {}; re-rolling them",
                outdated.join(", ")
            ),
        )
    } else {
        (
            "SidecarMissing",
            format!("{} of {replicas} source pods exist", views.len()),
        )
    };
    status::set_condition(
        &mut step.status,
        condition::DEGRADED,
        true,
        reason,
        msg,
        generation,
        &step.now,
    );
    roll_sidecars_quiet(step, pods, &views, replicas).await?;
    Ok(false)
}

/// The roll without phase changes (used to heal after the roll is done).
async fn roll_sidecars_quiet(
    step: &mut Step<'_>,
    pods: &[Pod],
    views: &[PodView],
    replicas: usize,
) -> Result<()> {
    if let RollStep::Evict(name) = roll::plan(views, replicas, Direction::Inject) {
        // The same gate as the first roll: never evict while a node does
        // not see the ring whole.
        if let Some(reason) = ring_gate(step.ctx, &step.ns, step.cm, pods).await {
            info!(pod = %name, %reason, "not re-rolling yet");
            return Ok(());
        }
        if let Some(reason) = spool_hold(step.ctx, pods, &name).await {
            info!(pod = %name, %reason, "not re-rolling yet");
            let generation = step.cm.metadata.generation;
            status::set_condition(
                &mut step.status,
                condition::DEGRADED,
                true,
                "WaitingForSpool",
                format!("re-rolling {name} waits: {reason}"),
                generation,
                &step.now,
            );
            return Ok(());
        }
        if evict(step.ctx, &step.ns, &name).await? {
            let why = if views.iter().any(|v| v.name == name && v.outdated) {
                "ran a proxy with outdated settings"
            } else {
                "ran without the proxy"
            };
            step.event(
                EventType::Warning,
                "ReRolledPod",
                "Roll",
                format!("{name} {why}; evicted it"),
            )
            .await;
        }
    }
    Ok(())
}

/// The `Ready` condition of a migration in the `Ready` phase: true only
/// while every source pod runs its proxy and every spool drains.
fn set_ready(step: &mut Step<'_>) {
    let generation = step.cm.metadata.generation;
    let (ready, reason, message) = match status::unsafe_reason(&step.status) {
        None => (
            true,
            "InSync",
            "the target holds everything; mirroring goes on until you cut the applications over"
                .to_owned(),
        ),
        Some((reason, message)) => (false, reason, message),
    };
    status::set_condition(
        &mut step.status,
        condition::READY,
        ready,
        reason,
        message,
        generation,
        &step.now,
    );
}

/// The address of a pod's proxy admin port, once the pod has an IP.
fn proxy_admin_address(pod: &Pod) -> Option<std::net::SocketAddr> {
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    Some(std::net::SocketAddr::new(
        ip,
        u16::try_from(labels::PROXY_ADMIN_PORT).ok()?,
    ))
}

/// Why pod `name` must not be evicted yet for what its proxy still owes
/// the target ([`proxy_state::eviction_hold`]); `None` when it may go.
async fn spool_hold(ctx: &Context, pods: &[Pod], name: &str) -> Option<String> {
    if !ctx.settings.proxy_checks {
        return None;
    }
    let pod = pods.iter().find(|p| p.name_any() == name)?;
    if !sidecar::has_sidecar(pod) {
        return None;
    }
    let reading = match proxy_admin_address(pod) {
        Some(admin) => proxy_state::read(admin).await,
        None => return None,
    };
    proxy_state::eviction_hold(name, sidecar::sidecar_ready(pod), &reading)
}

/// Every proxy's `/state`, by pod (pods that run one and have an IP).
async fn read_proxies(pods: &[Pod]) -> Vec<(String, Result<ProxyState, proxy_state::ReadError>)> {
    futures::future::join_all(
        pods.iter()
            .filter(|p| sidecar::has_sidecar(p))
            .filter_map(|p| Some((p.name_any(), proxy_admin_address(p)?)))
            .map(|(name, admin)| async move { (name, proxy_state::read(admin).await) }),
    )
    .await
}

/// Applies the requested cut-over stage when [`cutover::decide`] allows it
/// (writing it to the proxies' runtime ConfigMap), and confirms it once
/// every proxy serves it. Returns whether a switch is under way (or
/// refused), so the caller looks again soon.
async fn follow_cutover(
    step: &mut Step<'_>,
    pods: &[Pod],
    mut readings: Vec<(String, Result<ProxyState, proxy_state::ReadError>)>,
) -> Result<bool> {
    let generation = step.cm.metadata.generation;
    let spec = &step.cm.spec.cutover;
    let requested = spec.stage;
    let mut cut = step.status.cutover.clone().unwrap_or_default();
    let clients: Option<u64> = readings
        .iter()
        .map(|(_, r)| r.as_ref().ok().map(|s| s.client_connections))
        .sum();
    if requested != cut.stage {
        let facts = cutover::Facts {
            phase: step.status.phase,
            validated: status::is_true(&step.status, condition::VALIDATED),
            unsafe_reason: status::unsafe_reason(&step.status).map(|(r, m)| format!("{r}: {m}")),
            client_connections: clients,
            force: spec.force,
        };
        match cutover::decide(requested, cut.stage, &facts) {
            Err(refusal) => {
                let was_refused = step.status.conditions.iter().any(|c| {
                    c.type_ == condition::CUTOVER
                        && c.status == "False"
                        && c.reason == refusal.reason
                });
                status::set_condition(
                    &mut step.status,
                    condition::CUTOVER,
                    false,
                    refusal.reason,
                    refusal.message.clone(),
                    generation,
                    &step.now,
                );
                if !was_refused {
                    warn!(stage = %requested, reason = refusal.reason, message = %refusal.message, "cut-over stage refused");
                    step.event(
                        EventType::Warning,
                        "CutoverRefused",
                        "Cutover",
                        refusal.message,
                    )
                    .await;
                }
                step.status.cutover = Some(cut);
                return Ok(true);
            }
            Ok(stage) => {
                info!(from = %cut.stage, to = %stage, "applying cut-over stage");
                cut.stage = stage;
                cut.confirmed = false;
                step.status.cutover = Some(cut.clone());
                write_peer_map(step, pods).await?;
                step.event(
                    EventType::Normal,
                    "CutoverStage",
                    "Cutover",
                    format!("switching every proxy to stage {stage}"),
                )
                .await;
                if stage == CutoverStage::Done {
                    // The proxies are taken out from the next reconcile on.
                    status::set_condition(
                        &mut step.status,
                        condition::CUTOVER,
                        false,
                        "TakingProxiesOut",
                        "cut over: taking the proxies out, one pod at a time",
                        generation,
                        &step.now,
                    );
                    return Ok(true);
                }
                // The readings above predate the switch.
                readings = read_proxies(pods).await;
            }
        }
    }
    cut.shadow_reads = readings
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|s| s.shadow_reads as i64)
        .sum();
    cut.shadow_read_mismatches = readings
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|s| s.shadow_read_mismatches as i64)
        .sum();
    cut.shadow_read_mismatches_by_table = BTreeMap::new();
    for state in readings.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        for (table, n) in &state.shadow_read_mismatches_by_table {
            *cut.shadow_read_mismatches_by_table
                .entry(table.clone())
                .or_insert(0) += *n as i64;
        }
    }
    if cut.shadow_reads > 0 {
        let (matches, reason, message) = if cut.shadow_read_mismatches == 0 {
            (
                true,
                "NoMismatch",
                format!(
                    "{} reads compared with the target, none differed",
                    cut.shadow_reads
                ),
            )
        } else {
            let tables: Vec<String> = cut
                .shadow_read_mismatches_by_table
                .iter()
                .map(|(t, n)| format!("{t} ({n})"))
                .collect();
            (
                false,
                "Mismatches",
                format!(
                    "{} of {} reads compared with the target differed: {} (a read racing a write can differ once; a count that grows is a difference, which the next validation finds)",
                    cut.shadow_read_mismatches,
                    cut.shadow_reads,
                    tables.join(", ")
                ),
            )
        };
        status::set_condition(
            &mut step.status,
            condition::SHADOW_READS_MATCH,
            matches,
            reason,
            message,
            step.cm.metadata.generation,
            &step.now,
        );
    }
    let want = cutover::proxy_setting(cut.stage, step.cm);
    cut.lagging = cutover::lagging(&readings, want);
    let switching = !cut.lagging.is_empty();
    if switching {
        status::set_condition(
            &mut step.status,
            condition::CUTOVER,
            false,
            "Switching",
            format!(
                "stage {} not served by every proxy yet: {}",
                cut.stage,
                cut.lagging.join("; ")
            ),
            generation,
            &step.now,
        );
    } else {
        if !cut.confirmed {
            cut.confirmed = true;
            cut.history.push(crate::crd::CutoverTransition {
                stage: cut.stage,
                at: step.now.clone(),
            });
            let message = format!("every proxy serves stage {}", cut.stage);
            info!(%message, "cut-over stage confirmed");
            step.event(EventType::Normal, "CutoverConfirmed", "Cutover", message)
                .await;
        }
        status::set_condition(
            &mut step.status,
            condition::CUTOVER,
            true,
            "Confirmed",
            format!("every proxy serves stage {}", cut.stage),
            generation,
            &step.now,
        );
    }
    step.status.cutover = Some(cut);
    metrics_stage(step);
    Ok(switching)
}

/// Records the cut-over stage in the operator's metrics.
fn metrics_stage(step: &Step<'_>) {
    let stage = cutover::applied(Some(&step.status));
    step.ctx
        .metrics
        .set_cutover_stage(&step.ns, &step.name, stage);
}

/// Cut-over `done`: takes the proxies out one pod at a time, with the
/// roll's gates (ready, settled, the ring whole, nothing owed to the
/// target), then the migration is `Complete`.
async fn take_proxies_out(step: &mut Step<'_>, pods: &[Pod], replicas: usize) -> Result<Action> {
    let views: Vec<PodView> = pods.iter().map(PodView::of).collect();
    if roll::plan(&views, replicas, Direction::Remove) != RollStep::Done {
        return roll_sidecars(step, pods, replicas, Direction::Remove).await;
    }
    let generation = step.cm.metadata.generation;
    if let Some(cut) = step.status.cutover.as_mut() {
        cut.confirmed = true;
        cut.lagging.clear();
        cut.history.push(crate::crd::CutoverTransition {
            stage: CutoverStage::Done,
            at: step.now.clone(),
        });
    }
    status::set_condition(
        &mut step.status,
        condition::CUTOVER,
        true,
        "Complete",
        "the applications use the target; every proxy is gone",
        generation,
        &step.now,
    );
    status::set_condition(
        &mut step.status,
        condition::READY,
        false,
        "CutOver",
        "mirroring has ended: the target is the applications' cluster now",
        generation,
        &step.now,
    );
    step.enter(Phase::Complete).await;
    metrics_stage(step);
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Reads every proxy's state and sets `MirroringBehind` when a spool has
/// stopped draining; returns whether mirroring is behind.
async fn check_mirroring(step: &mut Step<'_>, pods: &[Pod]) -> bool {
    if !step.ctx.settings.proxy_checks {
        return false;
    }
    let readings = read_proxies(pods).await;
    mirroring_behind(step, &readings).await
}

/// `MirroringBehind` from readings already taken (the `Ready` phase reads
/// the proxies once for this and for the cut-over).
async fn mirroring_behind(
    step: &mut Step<'_>,
    readings: &[(String, Result<ProxyState, proxy_state::ReadError>)],
) -> bool {
    let behind = proxy_state::behind(readings, step.ctx.settings.mirroring_behind_after);
    let generation = step.cm.metadata.generation;
    let was_behind = status::is_true(&step.status, condition::MIRRORING_BEHIND);
    if behind.is_empty() {
        status::set_condition(
            &mut step.status,
            condition::MIRRORING_BEHIND,
            false,
            "SpoolsDrain",
            "no proxy's spool has stopped draining",
            generation,
            &step.now,
        );
        return false;
    }
    let message = format!(
        "writes the applications were told succeeded are not on the target yet: {}",
        behind.join("; ")
    );
    status::set_condition(
        &mut step.status,
        condition::MIRRORING_BEHIND,
        true,
        "SpoolStalled",
        message.clone(),
        generation,
        &step.now,
    );
    if !was_behind {
        warn!(%message, "mirroring is behind");
        step.event(EventType::Warning, "MirroringBehind", "Mirror", message)
            .await;
    }
    true
}

/// Evicts a pod through the Eviction API. `Ok(false)` when a
/// PodDisruptionBudget refuses for now (429) or the pod is already gone.
async fn evict(ctx: &Context, ns: &str, pod: &str) -> Result<bool> {
    // The one step that takes a node down: never from a replica that may
    // have lost the lease while this reconcile ran.
    if !ctx.leadership.is_leading() {
        warn!(%pod, "not evicting: this replica no longer holds the leader lease");
        return Ok(false);
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match api.evict(pod, &EvictParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 429 || s.code == 404 => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Deletes an object, treating "already gone" as done.
async fn delete_if_present<K>(api: &Api<K>, name: &str, dp: &DeleteParams) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Source contact points for the Jobs: each pod's IP (or its stable DNS name).
fn source_contact_points(
    cm: &CassandraMigration,
    pods: &[Pod],
    ns: &str,
    service: Option<&str>,
) -> Vec<String> {
    let port = cm.spec.source.cql_port;
    pods.iter()
        .filter_map(|p| {
            let ip = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty());
            let host = match (ip, service) {
                (Some(ip), _) if ip.contains(':') => format!("[{ip}]"),
                (Some(ip), _) => ip,
                (None, Some(svc)) => format!("{}.{svc}.{ns}.svc", p.name_any()),
                (None, None) => return None,
            };
            Some(format!("{host}:{port}"))
        })
        .collect()
}

async fn start_job(
    step: &mut Step<'_>,
    pods: &[Pod],
    kind: JobKind,
    attempt: u32,
) -> Result<String> {
    let name = match kind {
        JobKind::Backfill => labels::backfill_job_name(&step.name),
        JobKind::Validate => labels::validate_job_name(&step.name, attempt),
        JobKind::Check => labels::check_job_name(&step.name, attempt),
        JobKind::Reverse => labels::reverse_job_name(&step.name, attempt),
    };
    let start = match kind {
        JobKind::Backfill => {
            let existing = step
                .status
                .backfill
                .as_ref()
                .and_then(|b| b.start_timestamp_micros);
            existing.unwrap_or_else(|| jiff::Timestamp::now().as_microsecond())
        }
        JobKind::Validate | JobKind::Check | JobKind::Reverse => step
            .status
            .backfill
            .as_ref()
            .and_then(|b| b.start_timestamp_micros)
            .unwrap_or_else(|| jiff::Timestamp::now().as_microsecond()),
    };
    let service = match source::fetch(&step.ctx.client, &step.ns, &step.cm.spec.source).await {
        Ok(found) => found.service(),
        Err(source::SourceError::NotFound(_)) => None,
        Err(source::SourceError::Kube(e)) => return Err(e.into()),
    };
    let inputs = JobInputs {
        name: name.clone(),
        image: step
            .cm
            .spec
            .proxy
            .image
            .clone()
            .unwrap_or_else(|| step.ctx.settings.sidecar_image.clone()),
        source_contact_points: source_contact_points(step.cm, pods, &step.ns, service.as_deref()),
        source_datacenter: None,
        start_timestamp_micros: start,
        mirroring_since_micros: mirroring_since_micros(step.cm),
        image_pull_secrets: step.ctx.settings.image_pull_secrets.clone(),
    };
    let job = jobs::build_job(step.cm, kind, &inputs)?;
    let api: Api<Job> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    match api.create(&PostParams::default(), &job).await {
        Ok(_) => {
            step.event(
                EventType::Normal,
                "CreatedJob",
                "CreateJob",
                format!("created {} Job {name}", kind.as_str()),
            )
            .await;
        }
        // Already there: an earlier reconcile (or operator) made it.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(err) => return Err(err.into()),
    }
    match kind {
        JobKind::Backfill => {
            let mut progress = step.status.backfill.clone().unwrap_or_default();
            progress.job_name = Some(name.clone());
            progress.start_timestamp_micros = Some(start);
            progress.ranges_total = i64::from(step.cm.spec.backfill.splits);
            step.status.backfill = Some(progress);
        }
        JobKind::Validate => {
            step.status.validation = Some(crate::crd::ValidationResults {
                job_name: Some(name.clone()),
                ..Default::default()
            });
        }
        JobKind::Reverse => {
            if let Some(cut) = step.status.cutover.as_mut() {
                let check = cut.reverse_check.get_or_insert_with(Default::default);
                check.runs = attempt;
                check.job = Some(name.clone());
                check.last_started = Some(step.now.clone());
            }
        }
        JobKind::Check => {
            let checks = step
                .status
                .scheduled_validation
                .get_or_insert_with(Default::default);
            checks.runs = attempt;
            checks.job = Some(name.clone());
            checks.last_started = Some(step.now.clone());
        }
    }
    Ok(name)
}

async fn job_pods(client: &Client, ns: &str, job: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await?
        .items)
}

async fn follow_backfill(step: &mut Step<'_>) -> Result<Action> {
    let name = labels::backfill_job_name(&step.name);
    let api: Api<Job> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    let Some(job) = api.get_opt(&name).await? else {
        // Deleted by hand, or lost: make it again (finished ranges are checkpointed).
        let pods = Vec::new();
        start_job(step, &pods, JobKind::Backfill, 1).await?;
        return Ok(Action::requeue(step.ctx.settings.poll));
    };
    let sums = jobs::summaries(&job_pods(&step.ctx.client, &step.ns, &name).await?);
    let start = step
        .status
        .backfill
        .as_ref()
        .and_then(|b| b.start_timestamp_micros)
        .unwrap_or_default();
    step.status.backfill = Some(jobs::backfill_progress(
        &name,
        start,
        i64::from(step.cm.spec.backfill.splits),
        &sums,
    ));
    let generation = step.cm.metadata.generation;
    match jobs::job_state(&job) {
        JobState::Running => Ok(Action::requeue(step.ctx.settings.poll)),
        JobState::Complete => {
            let rows = step
                .status
                .backfill
                .as_ref()
                .map(|b| b.rows_copied)
                .unwrap_or_default();
            status::set_condition(
                &mut step.status,
                condition::BACKFILL_COMPLETE,
                true,
                "Copied",
                format!("{rows} rows copied"),
                generation,
                &step.now,
            );
            step.enter(Phase::Validating).await;
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        JobState::Failed(why) => {
            step.fail(
                "BackfillFailed",
                format!("backfill Job {name} failed: {why}"),
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(60)))
        }
    }
}

/// A new validation round (repairing when `validation.repair`), after a
/// source pod ran without its proxy: the migration goes back to
/// `Validating` and is `Ready` again only after a clean pass.
async fn revalidate(step: &mut Step<'_>, pods: &[Pod]) -> Result<Action> {
    let why = step.status.revalidate.clone().unwrap_or_default();
    let attempt = validation_attempt(&step.status).unwrap_or(0) + 1;
    start_job(step, pods, JobKind::Validate, attempt).await?;
    step.status.validation_round_start = Some(attempt);
    step.status.revalidate = None;
    let generation = step.cm.metadata.generation;
    status::set_condition(
        &mut step.status,
        condition::VALIDATED,
        false,
        "Revalidating",
        format!("validation {attempt} runs again: {why}"),
        generation,
        &step.now,
    );
    status::set_condition(
        &mut step.status,
        condition::READY,
        false,
        "Revalidating",
        format!("validating again: {why}"),
        generation,
        &step.now,
    );
    step.event(
        EventType::Normal,
        "Revalidating",
        "Validate",
        format!("every pod runs its proxy again; validation {attempt} checks what may have gone unmirrored"),
    )
    .await;
    step.enter(Phase::Validating).await;
    Ok(Action::requeue(step.ctx.settings.poll))
}

fn validation_attempt(status: &CassandraMigrationStatus) -> Option<u32> {
    status
        .validation
        .as_ref()?
        .job_name
        .as_ref()?
        .rsplit('-')
        .next()?
        .parse()
        .ok()
}

/// How many validations (the first plus re-validations after repair) may run.
const MAX_VALIDATIONS: u32 = 3;

async fn follow_validation(step: &mut Step<'_>, pods: &[Pod]) -> Result<Action> {
    let Some(attempt) = validation_attempt(&step.status) else {
        start_job(step, pods, JobKind::Validate, 1).await?;
        return Ok(Action::requeue(step.ctx.settings.poll));
    };
    let name = labels::validate_job_name(&step.name, attempt);
    let api: Api<Job> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    let Some(job) = api.get_opt(&name).await? else {
        start_job(step, pods, JobKind::Validate, attempt).await?;
        return Ok(Action::requeue(step.ctx.settings.poll));
    };
    let sums = jobs::summaries(&job_pods(&step.ctx.client, &step.ns, &name).await?);
    let results = jobs::validation_results(&name, &sums);
    let generation = step.cm.metadata.generation;
    match jobs::job_state(&job) {
        JobState::Running => {
            step.status.validation = Some(results);
            Ok(Action::requeue(step.ctx.settings.poll))
        }
        JobState::Failed(why) => {
            step.status.validation = Some(results);
            step.fail(
                "ValidationFailed",
                format!("validation Job {name} failed: {why}"),
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(60)))
        }
        JobState::Complete => {
            let differences = results.missing + results.extra + results.mismatched;
            let repaired = results.repaired;
            step.status.validation = Some(results);
            if differences == 0 {
                status::set_condition(
                    &mut step.status,
                    condition::VALIDATED,
                    true,
                    "NoDifferences",
                    format!("validation {attempt} found no difference"),
                    generation,
                    &step.now,
                );
                if let Some((reason, why)) = status::unsafe_reason(&step.status) {
                    // Clean, but writes may be missing from the target
                    // right now: not Ready until that clears.
                    info!(reason, %why, "validation passed; waiting before Ready");
                    return Ok(Action::requeue(step.ctx.settings.poll));
                }
                step.enter(Phase::Ready).await;
                set_ready(step);
                Ok(Action::requeue(Duration::from_secs(30)))
            } else if step.cm.spec.validation.repair
                && repaired > 0
                && attempt + 1 - step.status.validation_round_start.unwrap_or(1) < MAX_VALIDATIONS
            {
                // Repaired: validate again; only a clean pass is Ready.
                step.event(
                    EventType::Normal,
                    "Repaired",
                    "Validate",
                    format!("repaired {repaired} rows; validating again"),
                )
                .await;
                start_job(step, pods, JobKind::Validate, attempt + 1).await?;
                Ok(Action::requeue(step.ctx.settings.poll))
            } else {
                status::set_condition(
                    &mut step.status,
                    condition::VALIDATED,
                    false,
                    "Differences",
                    format!("{differences} rows differ"),
                    generation,
                    &step.now,
                );
                // Say what the user can do: turn repair on, or find out why
                // repaired rows keep differing (the examples name them).
                let why = if step.cm.spec.validation.repair {
                    format!(
                        "validation {attempt} still found {differences} differing rows after repairing; \
                         they keep diverging (status.validation.examples names some; a non-deterministic \
                         function in a prepared write is one cause, see docs/proxy.md)"
                    )
                } else {
                    format!(
                        "validation found {differences} differing rows; set validation.repair: true \
                         to repair them, or fix them and re-run"
                    )
                };
                step.fail("Mismatches", why).await;
                Ok(Action::requeue(Duration::from_secs(120)))
            }
        }
    }
}

async fn delete_failed_jobs(client: &Client, ns: &str, migration: &str) -> Result<()> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let owned = api
        .list(&ListParams::default().labels(&format!("{}={migration}", labels::MIGRATION_LABEL)))
        .await?;
    for job in owned.items {
        if matches!(jobs::job_state(&job), JobState::Failed(_)) {
            delete_if_present(&api, &job.name_any(), &DeleteParams::background()).await?;
            info!(job = %job.name_any(), "deleted the failed Job to retry it");
        }
    }
    Ok(())
}

/// The IPs of the pods that have one.
fn pod_ips(pods: &[Pod]) -> Vec<std::net::IpAddr> {
    pods.iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
        .collect()
}

/// Whether the roll may evict a pod now, as the source nodes see their ring:
/// `None` when every node sees every other one Up/Normal (or the check is
/// off, or the nodes are too old to tell), else why not.
async fn ring_gate(
    ctx: &Context,
    ns: &str,
    cm: &CassandraMigration,
    pods: &[Pod],
) -> Option<String> {
    if !ctx.settings.ring_check {
        return None;
    }
    let ips = pod_ips(pods);
    if ips.len() < pods.len() {
        return Some("a source pod has no IP yet".to_owned());
    }
    let source = &cm.spec.source;
    let access = match cql::Access::from_secrets(
        &ctx.client,
        ns,
        source.credentials_secret.as_ref(),
        source.tls_secret.as_ref(),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return Some(format!("cannot log in to the source: {e}")),
    };
    let port = u16::try_from(source.cql_port).unwrap_or(9042);
    match cql::ring_health(&ips, port, &access).await {
        Ok(RingHealth::Healthy) => None,
        Ok(RingHealth::Unsupported(why)) => {
            info!(%why, "no gossip view over CQL; the roll relies on readiness and the settle time");
            None
        }
        Ok(RingHealth::Unhealthy(problems)) => Some(format!(
            "the source nodes do not all see each other Up/Normal: {}",
            problems.join("; ")
        )),
        Err(e) => Some(format!(
            "cannot ask the source nodes how they see the ring: {e}"
        )),
    }
}

/// Condition type of the probe write.
const PROBE_WRITE: &str = "ProbeWrite";
/// How long one probe waits for its row on the target.
const PROBE_WAIT: Duration = Duration::from_secs(20);

/// The last gate before `Mirroring`: a row written through a proxy is read
/// back from the target. Returns whether it was; sets the `ProbeWrite`
/// condition either way, and fails the migration when the probe has not
/// passed for longer than the roll timeout.
async fn probe_gate(step: &mut Step<'_>, pods: &[Pod]) -> bool {
    if !step.ctx.settings.probe_write {
        return true;
    }
    let generation = step.cm.metadata.generation;
    let spec = &step.cm.spec;
    let port = spec.proxy.listen_port;
    let proxies: Vec<String> = pod_ips(pods)
        .into_iter()
        .map(|ip| std::net::SocketAddr::new(ip, port as u16).to_string())
        .collect();
    // Clients of the proxies speak TLS only when the proxies serve it
    // (`proxy.tlsSecret`), whatever the source itself speaks. The proxies
    // serve the source nodes' certificate, so the source's CA verifies it
    // (the proxy Secret's own `ca.crt` without one); pod IPs are not names
    // a certificate carries.
    let proxy_tls = spec.proxy.tls_secret.as_ref().map(|proxy| TlsSecretRef {
        name: spec
            .source
            .tls_secret
            .as_ref()
            .map_or_else(|| proxy.name.clone(), |s| s.name.clone()),
        insecure_skip_hostname_verification: true,
    });
    let accesses = futures::future::try_join(
        cql::Access::from_secrets(
            &step.ctx.client,
            &step.ns,
            spec.source.credentials_secret.as_ref(),
            proxy_tls.as_ref(),
        ),
        cql::Access::from_secrets(
            &step.ctx.client,
            &step.ns,
            spec.target.credentials_secret.as_ref(),
            spec.target.tls_secret.as_ref(),
        ),
    )
    .await;
    let probe_id = format!("{}/{}/{}", step.ns, step.name, step.now.0.as_millisecond());
    let outcome = match accesses {
        Err(e) => Err(e.to_string()),
        Ok((source, target)) => cql::probe_write(
            &proxies,
            &source,
            &cql::contact_points_in(&step.ns, &spec.target.contact_points),
            &target,
            &step.ctx.settings.probe_keyspace,
            &probe_id,
            PROBE_WAIT,
        )
        .await
        .map_err(|e| e.to_string()),
    };
    let (passed, reason, message) = match outcome {
        Ok(Some(took)) => (
            true,
            "SeenOnTarget",
            format!(
                "a row written through the proxies was on the target after {} ms",
                took.as_millis()
            ),
        ),
        Ok(None) => (
            false,
            "NotSeenOnTarget",
            format!(
                "a row written through the proxies was not on the target after {}s: do the proxies reach the target?",
                PROBE_WAIT.as_secs()
            ),
        ),
        Err(e) => (false, "ProbeFailed", format!("the probe write failed: {e}")),
    };
    status::set_condition(
        &mut step.status,
        PROBE_WRITE,
        passed,
        reason,
        message.clone(),
        generation,
        &step.now,
    );
    if passed {
        info!(%message, "probe write seen on the target");
        step.event(EventType::Normal, "ProbeWriteSeen", "Probe", message)
            .await;
        return true;
    }
    warn!(%message, "probe write not seen on the target");
    let failing_for = step
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == PROBE_WRITE)
        .map(|c| {
            step.now
                .0
                .duration_since(c.last_transition_time.0)
                .as_secs()
        })
        .unwrap_or(0);
    if failing_for > step.ctx.settings.roll_timeout.as_secs() as i64 {
        step.fail(reason, format!("{message} (for {failing_for}s)"))
            .await;
    }
    false
}

/// The port drivers are told to use for a source node: with the iptables
/// redirect, the CQL port itself (it reaches the proxy once the pod has one
/// and Cassandra before, so a node not rolled yet stays reachable); with
/// `redirect: port`, the proxy's own port.
fn advertised_port(spec: &crate::crd::CassandraMigrationSpec) -> i32 {
    match spec.proxy.redirect {
        crate::crd::TrafficRedirect::Iptables => spec.source.cql_port,
        crate::crd::TrafficRedirect::Port => spec.proxy.listen_port,
    }
}

/// Keeps the peer map ConfigMap current: source node address → its proxy.
async fn write_peer_map(step: &Step<'_>, pods: &[Pod]) -> Result<()> {
    let port = advertised_port(&step.cm.spec);
    // Only pods that run a proxy: a node without one (not rolled yet, or
    // taken out at cut-over) keeps its own address and port in the peer
    // tables, where drivers then reach it directly.
    let peers: BTreeMap<String, String> = pods
        .iter()
        .filter(|p| sidecar::has_sidecar(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .filter(|ip| !ip.is_empty())
        .map(|ip| {
            let proxy = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            (ip, proxy)
        })
        .collect();
    // The cut-over stage applied decides the mode and the shadow reads.
    let setting = cutover::proxy_setting(cutover::applied(Some(&step.status)), step.cm);
    // With `spec.schema: copy` the proxies follow the schema changes
    // clients make through them, and a keyspace gets the target's
    // replication (known once the schema step ran).
    let target_replication = step
        .status
        .schema
        .as_ref()
        .and_then(|s| s.target_replication.clone());
    let body = serde_json::to_string_pretty(&json!({
        "peers": peers,
        "mode": setting.mode,
        "shadowReadPercent": setting.shadow_read_percent,
        "mirrorDdl": step.cm.spec.schema == SchemaMode::Copy,
        "targetReplication": target_replication,
    }))?;
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": labels::peer_map_name(&step.name),
            "labels": {labels::MIGRATION_LABEL: step.name},
            "ownerReferences": [owner_ref(step.cm)],
        },
        "data": {labels::PEER_MAP_KEY: body},
    });
    let api: Api<ConfigMap> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    api.patch(
        &labels::peer_map_name(&step.name),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

fn owner_ref(cm: &CassandraMigration) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "CassandraMigration",
        "name": cm.name_any(), "uid": cm.metadata.uid.clone().unwrap_or_default(),
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// Makes sure a PodDisruptionBudget guards the source pods: the roll evicts
/// through the Eviction API, so a budget is what makes "one at a time" hold
/// even against other actors. Ferry makes one (maxUnavailable 1) only when
/// none selects the pods already.
///
/// With several StatefulSets (one per rack) it selects the labels all their
/// pods share, so the budget spans racks: two racks down at once is what
/// would break quorum.
async fn ensure_pdb(step: &Step<'_>, found: &source::Source) -> Result<()> {
    let Some(selector) = found.common_pod_labels() else {
        return Ok(());
    };
    let api: Api<PodDisruptionBudget> = Api::namespaced(step.ctx.client.clone(), &step.ns);
    let name = match found.statefulsets.as_slice() {
        [one] => format!("{}-ferry", one.name_any()),
        _ => format!("{}-source-ferry", step.name),
    };
    let existing = api.list(&ListParams::default()).await?;
    let covered = existing.items.iter().any(|pdb| {
        pdb.name_any() != name
            && pdb
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.match_labels.as_ref())
                .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| selector.get(k) == Some(v)))
    });
    if covered {
        return Ok(());
    }
    let pdb = json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": {labels::MIGRATION_LABEL: step.name}, "ownerReferences": [owner_ref(step.cm)]},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    });
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&pdb),
    )
    .await?;
    Ok(())
}

/// Deleting a migration: take the sidecars out with the same one-at-a-time
/// roll, delete the Jobs and what else Ferry made, never touch data.
async fn cleanup(cm: Arc<CassandraMigration>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cm.namespace().ok_or(Error::NoNamespace)?;
    let name = cm.name_any();
    let step = Step {
        cm: &cm,
        ctx: &ctx,
        name: name.clone(),
        ns: ns.clone(),
        status: cm.status.clone().unwrap_or_default(),
        now: now(),
    };
    // Jobs first: no copy may go on while the proxies go away.
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let dp = DeleteParams::background();
    let owned = jobs_api
        .list(&ListParams::default().labels(&format!("{}={name}", labels::MIGRATION_LABEL)))
        .await?;
    for job in owned.items {
        delete_if_present(&jobs_api, &job.name_any(), &dp).await?;
    }
    let found = match source::fetch(&ctx.client, &ns, &cm.spec.source).await {
        Ok(found) => Some(found),
        Err(source::SourceError::NotFound(_)) => None,
        Err(source::SourceError::Kube(e)) => return Err(e.into()),
    };
    if let Some(found) = found {
        let replicas = found.replicas();
        let pods = found.pods;
        // Only pods that serve this migration.
        let ours: Vec<Pod> = pods
            .iter()
            .filter(|p| {
                p.annotations()
                    .get(labels::MIGRATION_ANNOTATION)
                    .is_none_or(|m| *m == name)
            })
            .cloned()
            .collect();
        let views: Vec<PodView> = ours.iter().map(PodView::of).collect();
        match roll::plan(&views, replicas, Direction::Remove) {
            RollStep::Done => {}
            RollStep::Wait { reason, .. } => {
                return Err(Error::CleanupInProgress(reason));
            }
            RollStep::Evict(pod) => {
                // The whole ring, not only this migration's pods.
                if let Some(reason) = ring_gate(&ctx, &ns, &cm, &pods).await {
                    return Err(Error::CleanupInProgress(format!(
                        "not evicting {pod} yet: {reason}"
                    )));
                }
                // Removing the proxy with writes in its spool would lose
                // them: the spool is in the pod.
                if let Some(reason) = spool_hold(&ctx, &pods, &pod).await {
                    return Err(Error::CleanupInProgress(format!(
                        "not evicting {pod} yet: {reason}"
                    )));
                }
                if evict(&ctx, &ns, &pod).await? {
                    step.event(
                        EventType::Normal,
                        "EvictedPod",
                        "RemoveSidecar",
                        format!("evicted {pod} to remove the proxy sidecar"),
                    )
                    .await;
                }
                return Err(Error::CleanupInProgress(format!(
                    "removing the sidecar of {pod}"
                )));
            }
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    delete_if_present(
        &cms,
        &labels::peer_map_name(&name),
        &DeleteParams::default(),
    )
    .await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    let ours = pdbs
        .list(&ListParams::default().labels(&format!("{}={name}", labels::MIGRATION_LABEL)))
        .await?;
    for pdb in ours.items {
        delete_if_present(&pdbs, &pdb.name_any(), &DeleteParams::default()).await?;
    }
    step.event(
        EventType::Normal,
        "Removed",
        "Cleanup",
        "sidecars removed, Jobs deleted; data untouched".to_owned(),
    )
    .await;
    ctx.metrics.forget(&ns, &name);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
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
        let s = sidecar_states(&[], &pods, &t0);
        assert_eq!(s[0].state, SidecarState::Ready);
        assert_eq!(s[0].proxy_address.as_deref(), Some("10.0.0.1"));
        assert_eq!(s[1].state, SidecarState::Waiting);
        // c-1 evicted and gone: still Rolling, since kept.
        let mut rolling = s.clone();
        rolling[1].state = SidecarState::Rolling;
        rolling[1].since = Some(t0.clone());
        let s2 = sidecar_states(&rolling, &pods[..1], &t1);
        assert_eq!(s2[1].state, SidecarState::Rolling);
        assert_eq!(s2[1].since, Some(t0.clone()));
        // Back and Ready without the sidecar: Failed, visible.
        let s3 = sidecar_states(&rolling, &pods, &t1);
        assert_eq!(s3[1].state, SidecarState::Failed);
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
