//! Leader election on a `coordination.k8s.io` Lease, so that with two
//! replicas only one reconciles (and so only one ever rolls pods).
//!
//! Times are only ever compared on one clock, the local monotonic one, as
//! client-go's leader election does:
//! - the leader counts from the start of its last successful renewal and
//!   stops acting once `renew_deadline` has passed without another
//!   ([`Leadership::is_leading`], checked before each reconcile and each
//!   eviction; a process that was paused finds it false the moment it
//!   resumes);
//! - a contender never reads the leader's `renewTime` against its own
//!   clock: it notes when it first saw the current lease record (holder,
//!   renew time, resource version) and takes over only when that record has
//!   not changed for the lease duration.
//!
//! The leader's last successful renewal started before the contender could
//! see it, so the contender takes over at least `lease` after the leader's
//! deadline began, while the leader stopped `renew_deadline` (< `lease`)
//! after it. The gap is `lease − renew_deadline` (5 s with the defaults,
//! 15 s / 10 s / 2 s as in client-go).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use tokio::time::Instant;
use tracing::info;

/// The election's timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a lease record must stay unchanged before another replica
    /// takes it.
    pub lease: Duration,
    /// How long the leader keeps acting after the start of its last
    /// successful renewal. Shorter than `lease`.
    pub renew_deadline: Duration,
    /// How often the leader renews and a contender looks.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// `lease`, with the deadline and retry period in client-go's ratios.
    pub fn for_lease(lease: Duration) -> Self {
        Self {
            lease,
            renew_deadline: lease * 2 / 3,
            retry: lease / 7,
        }
    }
}

/// Whether this replica may act now: shared with the controller.
#[derive(Debug, Clone)]
pub struct Leadership {
    renewed: Arc<Mutex<Option<Instant>>>,
    deadline: Duration,
}

impl Leadership {
    /// Leadership that is always held (leader election turned off).
    pub fn always() -> Self {
        Self {
            renewed: Arc::new(Mutex::new(None)),
            deadline: Duration::MAX,
        }
    }

    /// True while the start of the last successful renewal is less than
    /// the renew deadline ago.
    pub fn is_leading(&self) -> bool {
        if self.deadline == Duration::MAX {
            return true;
        }
        let renewed = *self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        renewed.is_some_and(|t| t.elapsed() < self.deadline)
    }

    fn renewed_at(&self, at: Instant) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    fn forget(&self) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A lease record as a contender last saw it, and when it first saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    renew_time: Option<String>,
    resource_version: Option<String>,
}

/// One replica's view of the election.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    leadership: Leadership,
    observed: Mutex<Option<(Record, Instant)>>,
}

impl LeaderElection {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            leadership: Leadership {
                renewed: Arc::new(Mutex::new(None)),
                deadline: timing.renew_deadline,
            },
            observed: Mutex::new(None),
        }
    }

    /// The handle the controller checks before it acts.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Takes the lease if it is free, ours, or unchanged for the lease
    /// duration as this replica has watched it. `Ok(true)` when we hold it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        // Counted from before the read: the renewal lands later than this,
        // so the leader's deadline never runs past what a contender sees.
        let attempt = Instant::now();
        let now = jiff::Timestamp::now();
        let secs = self.timing.lease.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let fresh: Lease = serde_json::from_value(json!({
                "metadata": {"name": self.name},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": secs,
                         "acquireTime": MicroTime(now), "renewTime": MicroTime(now), "leaseTransitions": 0},
            }))
            .map_err(kube::Error::SerdeError)?;
            return match self.api.create(&PostParams::default(), &fresh).await {
                Ok(_) => {
                    self.leadership.renewed_at(attempt);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != self.identity && !holder.is_empty() {
            let record = Record {
                holder: holder.clone(),
                renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
                resource_version: lease.metadata.resource_version.clone(),
            };
            let duration = spec
                .lease_duration_seconds
                .map_or(self.timing.lease, |s| Duration::from_secs(s.max(1) as u64));
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            let unchanged_for = match observed.as_ref() {
                Some((seen, since)) if *seen == record => since.elapsed(),
                _ => {
                    *observed = Some((record, attempt));
                    Duration::ZERO
                }
            };
            if unchanged_for < duration {
                self.leadership.forget();
                return Ok(false);
            }
        }
        if holder != self.identity {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            info!(previous = %holder, "taking over the leader lease");
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(MicroTime(now));
        // replace carries the resourceVersion: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.leadership.renewed_at(attempt);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) -> Result<(), kube::Error> {
        loop {
            if self.try_acquire().await? {
                info!(identity = %self.identity, lease = %self.name, "leading");
                return Ok(());
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Renews every retry period until leadership is lost (another replica
    /// holds the lease, or no renewal succeeded within the renew deadline);
    /// then returns why, and the caller must stop. The controller stops
    /// acting on its own at the deadline ([`Leadership::is_leading`]).
    pub async fn hold(&self) -> String {
        loop {
            tokio::time::sleep(self.timing.retry).await;
            if !self.leadership.is_leading() {
                return format!(
                    "no renewal of the lease succeeded within {}s",
                    self.timing.renew_deadline.as_secs()
                );
            }
            match self.try_acquire().await {
                Ok(true) => {}
                Ok(false) => {
                    self.leadership.forget();
                    return "another replica holds the lease".to_owned();
                }
                Err(err) if !self.leadership.is_leading() => {
                    return format!("could not renew the lease: {err}")
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leadership_ends_at_the_renew_deadline_counted_locally() {
        let l = Leadership {
            renewed: Arc::new(Mutex::new(None)),
            deadline: Duration::from_secs(10),
        };
        assert!(!l.is_leading(), "never renewed");
        l.renewed_at(Instant::now());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(l.is_leading());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!l.is_leading(), "past the deadline");
        assert!(Leadership::always().is_leading());
    }

    #[test]
    fn the_default_timing_leaves_a_gap_between_the_leader_and_a_contender() {
        for t in [Timing::default(), Timing::for_lease(Duration::from_secs(3))] {
            assert!(t.renew_deadline < t.lease);
            assert!(t.retry < t.renew_deadline / 2);
        }
    }
}
