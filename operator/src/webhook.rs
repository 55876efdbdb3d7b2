//! The mutating admission webhook: injects the proxy sidecar into each new
//! pod of a StatefulSet that a live CassandraMigration targets.
//!
//! Injecting at pod creation, not by editing the StatefulSet, is what lets
//! Ferry work when the StatefulSet belongs to another operator (such as
//! cass-operator) that would revert an edit. The webhook never blocks a pod:
//! any error is logged and the pod is admitted unchanged (and the
//! controller's check re-rolls it), matching the configuration's
//! `failurePolicy: Ignore`.

use std::sync::Arc;

use futures::FutureExt;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::crd::CassandraMigration;
use crate::http::{Handler, Reply};
use crate::sidecar::{self, InjectionSettings};

/// What the webhook needs.
pub struct Webhook {
    pub client: Client,
    pub settings: InjectionSettings,
}

impl Webhook {
    /// The HTTP handler: `POST /mutate`, and `/healthz`.
    pub fn handler(self: Arc<Self>) -> Handler {
        Arc::new(move |method, path, body| {
            let this = self.clone();
            async move { this.route(method, &path, body).await }.boxed()
        })
    }

    async fn route(&self, method: Method, path: &str, body: Bytes) -> Reply {
        match (method, path) {
            (Method::POST, "/mutate") => {
                let review = self.mutate(&body).await;
                match serde_json::to_vec(&review) {
                    Ok(json) => (StatusCode::OK, "application/json", json),
                    Err(err) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        err.to_string().into_bytes(),
                    ),
                }
            }
            (Method::GET, "/healthz") => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }

    /// Answers one AdmissionReview.
    pub async fn mutate(&self, body: &[u8]) -> AdmissionReview<kube::core::DynamicObject> {
        let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(err) => {
                return AdmissionResponse::invalid(format!("not an AdmissionReview: {err}"))
                    .into_review()
            }
        };
        let req: AdmissionRequest<Pod> = match review.try_into() {
            Ok(r) => r,
            Err(err) => {
                return AdmissionResponse::invalid(format!("bad AdmissionReview: {err}"))
                    .into_review()
            }
        };
        let resp = AdmissionResponse::from(&req);
        let Some(pod) = req.object.as_ref() else {
            return resp.into_review();
        };
        let namespace = req
            .namespace
            .clone()
            .or_else(|| pod.namespace())
            .unwrap_or_default();
        match self.decide(&namespace, pod).await {
            Ok(Some(patch)) => match resp.clone().with_patch(patch) {
                Ok(patched) => {
                    info!(pod = %pod.name_any(), %namespace, "injected the proxy sidecar");
                    patched.into_review()
                }
                Err(err) => {
                    warn!(error = %err, "could not serialise the patch; admitting unchanged");
                    resp.into_review()
                }
            },
            Ok(None) => resp.into_review(),
            Err(err) => {
                warn!(error = %err, pod = %pod.name_any(), %namespace, "could not look up migrations; admitting unchanged");
                resp.into_review()
            }
        }
    }

    /// The patch for this pod, if a live migration targets its StatefulSet.
    async fn decide(
        &self,
        namespace: &str,
        pod: &Pod,
    ) -> Result<Option<json_patch::Patch>, kube::Error> {
        if sidecar::has_sidecar(pod) {
            return Ok(None);
        }
        let Some(sts) = pod
            .owner_references()
            .iter()
            .find(|o| o.kind == "StatefulSet")
            .map(|o| o.name.clone())
        else {
            return Ok(None);
        };
        let api: Api<CassandraMigration> = Api::namespaced(self.client.clone(), namespace);
        let migrations = api.list(&ListParams::default()).await?;
        // A source given by labels needs the StatefulSet's own (read only
        // then: most pods belong to a source named outright).
        let sts_labels = if migrations
            .items
            .iter()
            .any(|m| crate::source::by_labels(&m.spec.source))
        {
            Api::<StatefulSet>::namespaced(self.client.clone(), namespace)
                .get_opt(&sts)
                .await?
                .map(|s| s.labels().clone())
                .unwrap_or_default()
        } else {
            Default::default()
        };
        let live = migrations.items.into_iter().find(|m| {
            crate::source::covers(&m.spec.source, &sts, &sts_labels)
                    && m.metadata.deletion_timestamp.is_none()
                    // Cut over: the proxies are being taken out for good.
                    && !crate::cutover::proxies_leaving(m)
        });
        Ok(live.map(|cm| sidecar::injection_patch(pod, &cm, &self.settings)))
    }
}
