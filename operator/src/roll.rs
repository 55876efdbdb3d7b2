//! The sidecar roll: which source pod to evict next, if any. Pure, so the
//! one-pod-at-a-time rule is unit tested on its own.
//!
//! The rule (as cass-operator rolls Cassandra): never touch a pod while any
//! pod of the StatefulSet is missing, terminating or not Ready, so at most one
//! Cassandra node is ever down and quorum holds for any RF >= 3. A pod that
//! has just become Ready is given [`SETTLE_SECS`] before the next eviction:
//! it answers CQL at once, but the other nodes mark it Up only when gossip
//! reaches them, and evicting the next node before that would leave them
//! seeing two nodes down.

use k8s_openapi::api::core::v1::Pod;

use crate::sidecar;

/// What the planner needs to know of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub ready: bool,
    pub terminating: bool,
    pub has_sidecar: bool,
    pub sidecar_ready: bool,
    /// Ready for less than [`SETTLE_SECS`]: the ring may not know it is Up.
    pub settling: bool,
    /// Its proxy was injected with a configuration the migration no longer
    /// has (a new image, resources, TLS Secret...): rolled again.
    pub outdated: bool,
}

/// Seconds a pod must have been Ready before the next pod is evicted.
pub const SETTLE_SECS: i64 = 10;

impl PodView {
    pub fn of(pod: &Pod) -> Self {
        let ready = sidecar::pod_ready(pod);
        let ready_since = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.as_second());
        let now = jiff::Timestamp::now().as_second();
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            has_sidecar: sidecar::has_sidecar(pod),
            sidecar_ready: sidecar::sidecar_ready(pod),
            settling: ready && ready_since.is_some_and(|since| now - since < SETTLE_SECS),
            outdated: false,
        }
    }

    /// The view of a pod whose proxy should have the configuration hash
    /// `expected` ([`sidecar::proxy_config_hash`]).
    pub fn expecting(pod: &Pod, expected: &str) -> Self {
        let mut view = Self::of(pod);
        view.outdated = view.has_sidecar && !sidecar::proxy_config_is(pod, expected);
        view
    }
}

/// Which way the roll goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Every pod must end up with the sidecar.
    Inject,
    /// Every pod must end up without it (the migration is being deleted).
    Remove,
}

/// The next step of the roll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollStep {
    /// Nothing may be touched now; the reason says what we wait for.
    Wait { pod: Option<String>, reason: String },
    /// Evict this pod so it comes back with (or without) the sidecar.
    Evict(String),
    /// Every pod is as it should be.
    Done,
}

fn ordinal(name: &str) -> u64 {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Plans the next step for a StatefulSet of `replicas` pods.
pub fn plan(pods: &[PodView], replicas: usize, direction: Direction) -> RollStep {
    let mut pods: Vec<&PodView> = pods.iter().collect();
    pods.sort_by_key(|p| (ordinal(&p.name), p.name.clone()));
    if pods.len() < replicas {
        return RollStep::Wait {
            pod: None,
            reason: format!("{} of {replicas} pods exist", pods.len()),
        };
    }
    if let Some(p) = pods.iter().find(|p| p.terminating) {
        return RollStep::Wait {
            pod: Some(p.name.clone()),
            reason: format!("pod {} is terminating", p.name),
        };
    }
    if let Some(p) = pods.iter().find(|p| !p.ready) {
        return RollStep::Wait {
            pod: Some(p.name.clone()),
            reason: format!("pod {} is not Ready", p.name),
        };
    }
    if let Some(p) = pods.iter().find(|p| p.settling) {
        return RollStep::Wait {
            pod: Some(p.name.clone()),
            reason: format!(
                "pod {} became Ready less than {SETTLE_SECS}s ago; letting the other nodes see it Up",
                p.name
            ),
        };
    }
    match direction {
        Direction::Inject => {
            if let Some(p) = pods.iter().find(|p| p.has_sidecar && !p.sidecar_ready) {
                return RollStep::Wait {
                    pod: Some(p.name.clone()),
                    reason: format!("the proxy of pod {} is not ready", p.name),
                };
            }
            match pods.iter().find(|p| !p.has_sidecar || p.outdated) {
                Some(p) => RollStep::Evict(p.name.clone()),
                None => RollStep::Done,
            }
        }
        Direction::Remove => match pods.iter().find(|p| p.has_sidecar) {
            Some(p) => RollStep::Evict(p.name.clone()),
            None => RollStep::Done,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, has: bool) -> PodView {
        PodView {
            name: name.into(),
            ready,
            terminating: false,
            has_sidecar: has,
            sidecar_ready: has && ready,
            settling: false,
            outdated: false,
        }
    }

    #[test]
    fn an_outdated_proxy_is_rolled_again_one_pod_at_a_time() {
        let mut pods = [
            pod("c-0", true, true),
            pod("c-1", true, true),
            pod("c-2", true, true),
        ];
        pods[1].outdated = true;
        pods[2].outdated = true;
        assert_eq!(
            plan(&pods, 3, Direction::Inject),
            RollStep::Evict("c-1".into())
        );
        pods[1].ready = false;
        assert!(matches!(
            plan(&pods, 3, Direction::Inject),
            RollStep::Wait { pod: Some(p), .. } if p == "c-1"
        ));
    }

    #[test]
    fn waits_for_a_pod_that_just_became_ready() {
        let mut pods = [pod("c-0", true, true), pod("c-1", true, false)];
        pods[0].settling = true;
        assert!(matches!(
            plan(&pods, 2, Direction::Inject),
            RollStep::Wait { pod: Some(p), .. } if p == "c-0"
        ));
        pods[0].settling = false;
        assert_eq!(
            plan(&pods, 2, Direction::Inject),
            RollStep::Evict("c-1".into())
        );
    }

    #[test]
    fn evicts_one_pod_at_a_time_in_ordinal_order() {
        let pods = [
            pod("c-10", true, false),
            pod("c-2", true, false),
            pod("c-1", true, true),
        ];
        assert_eq!(
            plan(&pods, 3, Direction::Inject),
            RollStep::Evict("c-2".into())
        );
    }

    #[test]
    fn never_touches_a_pod_while_another_is_down() {
        let pods = [
            pod("c-0", true, true),
            pod("c-1", false, true),
            pod("c-2", true, false),
        ];
        assert!(
            matches!(plan(&pods, 3, Direction::Inject), RollStep::Wait { pod: Some(p), .. } if p == "c-1")
        );
        let missing = [pod("c-0", true, true), pod("c-2", true, false)];
        assert!(matches!(
            plan(&missing, 3, Direction::Inject),
            RollStep::Wait { pod: None, .. }
        ));
        let mut terminating = pod("c-0", true, false);
        terminating.terminating = true;
        assert!(matches!(
            plan(
                &[terminating, pod("c-1", true, false)],
                2,
                Direction::Inject
            ),
            RollStep::Wait { .. }
        ));
    }

    #[test]
    fn waits_for_the_proxy_to_be_ready() {
        let mut p = pod("c-0", true, true);
        p.sidecar_ready = false;
        assert!(matches!(
            plan(&[p, pod("c-1", true, false)], 2, Direction::Inject),
            RollStep::Wait { .. }
        ));
    }

    #[test]
    fn done_when_all_have_it_and_removal_goes_the_other_way() {
        let pods = [pod("c-0", true, true), pod("c-1", true, true)];
        assert_eq!(plan(&pods, 2, Direction::Inject), RollStep::Done);
        assert_eq!(
            plan(&pods, 2, Direction::Remove),
            RollStep::Evict("c-0".into())
        );
        let bare = [pod("c-0", true, false)];
        assert_eq!(plan(&bare, 1, Direction::Remove), RollStep::Done);
    }
}
