//! Leader election on a `coordination.k8s.io` Lease, so that with two
//! replicas only one reconciles (and so only one ever rolls pods). The
//! others wait; a leader that cannot renew in time stops (and its pod is
//! restarted), as controller-runtime does.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use tracing::info;

/// One replica's view of the election.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease: Duration,
}

impl LeaderElection {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease,
        }
    }

    /// Takes the lease if it is free, ours, or expired. `Ok(true)` when we hold it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = jiff::Timestamp::now();
        let secs = self.lease.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let fresh: Lease = serde_json::from_value(json!({
                "metadata": {"name": self.name},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": secs,
                         "acquireTime": MicroTime(now), "renewTime": MicroTime(now), "leaseTransitions": 0},
            }))
            .map_err(kube::Error::SerdeError)?;
            return match self.api.create(&PostParams::default(), &fresh).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(secs));
            now.as_second() - t.0.as_second() > duration
        });
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(false);
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
            Ok(_) => Ok(true),
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
            tokio::time::sleep(self.lease / 3).await;
        }
    }

    /// Renews until renewal fails for longer than the lease; then returns,
    /// and the caller must stop reconciling.
    pub async fn hold(&self) -> String {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.lease / 3).await;
            match self.try_acquire().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => return "another replica holds the lease".to_owned(),
                Err(err) if last_ok.elapsed() > self.lease => {
                    return format!("could not renew the lease: {err}")
                }
                Err(_) => {}
            }
        }
    }
}
