//! The TLS Secrets a migration names, as the proxy sidecar and the bulk
//! Jobs see them: each a read-only volume of just the keys Ferry reads,
//! mounted at `/etc/ferry/tls/<use>`.
//!
//! - `source.tlsSecret` / `target.tlsSecret`: `ca.crt`, the CA that signs
//!   the cluster's node certificates (the proxy's links, the Jobs' sessions).
//! - `proxy.tlsSecret`: `tls.crt`/`tls.key` the proxy serves to clients,
//!   and `ca.crt` when it requires client certificates.
//!
//! A key missing from its Secret keeps the pod from starting, with an event
//! that names it: better than a proxy or Job that quietly speaks plain CQL.

use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource, Volume, VolumeMount};

use crate::crd::CassandraMigrationSpec;

/// What a mounted Secret is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsUse {
    /// Verifying the source cluster's certificates.
    Source,
    /// Verifying the target cluster's certificates.
    Target,
    /// The proxy's own client-facing certificate.
    Proxy,
}

impl TlsUse {
    fn as_str(self) -> &'static str {
        match self {
            TlsUse::Source => "source",
            TlsUse::Target => "target",
            TlsUse::Proxy => "proxy",
        }
    }
}

/// One TLS Secret mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMount {
    pub tls_use: TlsUse,
    pub secret: String,
    /// The Secret's keys projected into the volume.
    pub keys: Vec<&'static str>,
    /// The CR's `insecureSkipHostnameVerification` for this cluster.
    pub skip_hostname_verification: bool,
}

impl TlsMount {
    /// The mounts of the source and target Secrets (what the Jobs need).
    pub fn clusters(spec: &CassandraMigrationSpec) -> Vec<TlsMount> {
        [
            (TlsUse::Source, &spec.source.tls_secret),
            (TlsUse::Target, &spec.target.tls_secret),
        ]
        .into_iter()
        .filter_map(|(tls_use, secret)| {
            secret.as_ref().map(|s| TlsMount {
                tls_use,
                secret: s.name.clone(),
                keys: vec!["ca.crt"],
                skip_hostname_verification: s.insecure_skip_hostname_verification,
            })
        })
        .collect()
    }

    /// Every mount the proxy sidecar needs: the clusters' and its own.
    pub fn proxy(spec: &CassandraMigrationSpec) -> Vec<TlsMount> {
        let mut mounts = Self::clusters(spec);
        if let Some(s) = &spec.proxy.tls_secret {
            let mut keys = vec!["tls.crt", "tls.key"];
            if s.require_client_certificates {
                keys.push("ca.crt");
            }
            mounts.push(TlsMount {
                tls_use: TlsUse::Proxy,
                secret: s.name.clone(),
                keys,
                skip_hostname_verification: false,
            });
        }
        mounts
    }

    fn volume_name(&self) -> String {
        format!("ferry-{}-tls", self.tls_use.as_str())
    }

    /// The path of one of the Secret's keys inside the container.
    pub fn file(&self, key: &str) -> String {
        format!("/etc/ferry/tls/{}/{key}", self.tls_use.as_str())
    }

    /// The pod volume.
    pub fn volume(&self) -> Volume {
        Volume {
            name: self.volume_name(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(self.secret.clone()),
                items: Some(
                    self.keys
                        .iter()
                        .map(|k| KeyToPath {
                            key: (*k).to_owned(),
                            path: (*k).to_owned(),
                            ..KeyToPath::default()
                        })
                        .collect(),
                ),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        }
    }

    /// The container's mount of the volume.
    pub fn volume_mount(&self) -> VolumeMount {
        VolumeMount {
            name: self.volume_name(),
            mount_path: format!("/etc/ferry/tls/{}", self.tls_use.as_str()),
            read_only: Some(true),
            ..VolumeMount::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_secret_gets_its_own_volume_of_the_keys_ferry_reads() {
        let spec: CassandraMigrationSpec = serde_json::from_value(json!({
            "source": {"statefulSet": "cassandra", "tlsSecret": {"name": "source-ca"}},
            "target": {"contactPoints": ["10.0.0.2:9042"], "localDatacenter": "dc1",
                       "tlsSecret": {"name": "target-ca", "insecureSkipHostnameVerification": true}},
            "proxy": {"tlsSecret": {"name": "proxy-cert", "requireClientCertificates": true}},
        }))
        .unwrap();
        let jobs = TlsMount::clusters(&spec);
        assert_eq!(
            jobs.iter().map(|m| m.tls_use).collect::<Vec<_>>(),
            [TlsUse::Source, TlsUse::Target]
        );
        assert_eq!(jobs[1].file("ca.crt"), "/etc/ferry/tls/target/ca.crt");
        assert_eq!(
            serde_json::to_value(jobs[1].volume()).unwrap(),
            json!({"name": "ferry-target-tls", "secret": {"secretName": "target-ca",
                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}})
        );
        assert_eq!(
            serde_json::to_value(jobs[1].volume_mount()).unwrap(),
            json!({"name": "ferry-target-tls", "mountPath": "/etc/ferry/tls/target", "readOnly": true})
        );
        let proxy = TlsMount::proxy(&spec);
        assert_eq!(proxy.len(), 3);
        assert_eq!(proxy[2].keys, ["tls.crt", "tls.key", "ca.crt"]);
        assert_eq!(proxy[2].secret, "proxy-cert");
        // No Secret named, nothing mounted.
        let plain: CassandraMigrationSpec = serde_json::from_value(json!({
            "source": {"statefulSet": "cassandra"},
            "target": {"contactPoints": ["10.0.0.2:9042"], "localDatacenter": "dc1"},
        }))
        .unwrap();
        assert!(TlsMount::proxy(&plain).is_empty());
    }
}
