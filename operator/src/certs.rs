//! The webhook's TLS: a private CA and a serving certificate the operator
//! makes itself, keeps in a Secret (so every replica serves the same one),
//! rotates before it expires, and publishes as the webhook's `caBundle`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;

/// A serving certificate and the CA that signed it, PEM-encoded.
#[derive(Clone, Debug)]
pub struct WebhookCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// When the serving certificate expires (seconds since the epoch).
    pub not_after: i64,
    /// The names it is valid for.
    pub sans: Vec<String>,
}

/// Why the certificate could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("reading PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("date: {0}")]
    Date(#[from] jiff::Error),
}

/// Valid for a year; renewed when less than 30 days are left.
const VALIDITY_DAYS: i64 = 365;
const RENEW_BEFORE_SECS: i64 = 30 * 24 * 3600;

fn ymd_after(days: i64) -> Result<(i64, jiff::Timestamp), CertError> {
    let t = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(24 * days))?;
    Ok((t.as_second(), t))
}

/// Makes a fresh CA and a serving certificate for `sans` (DNS names or IPs).
pub fn generate(sans: &[String]) -> Result<WebhookCert, CertError> {
    let (not_after, until) = ymd_after(VALIDITY_DAYS)?;
    let date = until.to_zoned(jiff::tz::TimeZone::UTC).date();
    let expiry = rcgen::date_time_ymd(i32::from(date.year()), date.month() as u8, date.day() as u8);
    let (_, ca_until) = ymd_after(VALIDITY_DAYS * 5)?;
    let ca_date = ca_until.to_zoned(jiff::tz::TimeZone::UTC).date();

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ferry-webhook-ca");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_after = rcgen::date_time_ymd(
        i32::from(ca_date.year()),
        ca_date.month() as u8,
        ca_date.day() as u8,
    );
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().cloned().unwrap_or_default(),
    );
    params.not_after = expiry;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(WebhookCert {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
        sans: sans.to_vec(),
    })
}

fn certified_key(cert: &WebhookCert) -> Result<Arc<CertifiedKey>, CertError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider)?))
}

/// The serving certificate, swappable while the server runs, so a rotated
/// certificate is served without a restart.
#[derive(Debug)]
pub struct RotatingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl RotatingCert {
    pub fn new(cert: &WebhookCert) -> Result<Arc<Self>, CertError> {
        Ok(Arc::new(Self {
            current: RwLock::new(certified_key(cert)?),
        }))
    }

    /// Serves `cert` from now on.
    pub fn replace(&self, cert: &WebhookCert) -> Result<(), CertError> {
        let key = certified_key(cert)?;
        if let Ok(mut current) = self.current.write() {
            *current = key;
        }
        Ok(())
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| k.clone())
    }
}

/// The rustls server configuration serving whatever `cert` holds.
pub fn rotating_server_config(
    cert: Arc<RotatingCert>,
) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    Ok(Arc::new(config))
}

/// The rustls server configuration for a fixed certificate.
pub fn server_config(cert: &WebhookCert) -> Result<Arc<rustls::ServerConfig>, CertError> {
    rotating_server_config(RotatingCert::new(cert)?)
}

fn get(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// Loads the certificate from `secret` in `namespace`, or makes (and stores)
/// a new one when it is missing, for other names, or expires within 30 days.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    secret: &str,
    sans: &[String],
) -> Result<WebhookCert, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(existing) = api.get_opt(secret).await? {
        let not_after = existing
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("ferry.dev/not-after"))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        let stored_sans: Vec<String> = get(&existing, "sans")
            .map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let fresh = not_after - jiff::Timestamp::now().as_second() > RENEW_BEFORE_SECS;
        if let (true, true, Some(ca_pem), Some(cert_pem), Some(key_pem)) = (
            fresh,
            stored_sans == sans,
            get(&existing, "ca.crt"),
            get(&existing, "tls.crt"),
            get(&existing, "tls.key"),
        ) {
            return Ok(WebhookCert {
                ca_pem,
                cert_pem,
                key_pem,
                not_after,
                sans: sans.to_vec(),
            });
        }
    }
    let cert = generate(sans)?;
    let data: BTreeMap<String, ByteString> = [
        ("ca.crt", &cert.ca_pem),
        ("tls.crt", &cert.cert_pem),
        ("tls.key", &cert.key_pem),
        ("sans", &sans.join(",")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let body = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": secret, "annotations": {"ferry.dev/not-after": cert.not_after.to_string()}},
        "data": data,
    });
    api.patch(
        secret,
        &PatchParams::apply(crate::controller::MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(cert)
}

/// Sets the `caBundle` of every webhook in the named configuration.
pub async fn publish_ca_bundle(
    client: &Client,
    config_name: &str,
    ca_pem: &str,
) -> Result<(), CertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(config) = api.get_opt(config_name).await? else {
        return Ok(());
    };
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let webhooks: Vec<serde_json::Value> = config
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|mut w| {
            w.client_config.ca_bundle = Some(bundle.clone());
            serde_json::to_value(w).unwrap_or_default()
        })
        .collect();
    let patch = json!({"webhooks": webhooks});
    api.patch(config_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_serves_tls() {
        let cert = generate(&[
            "ferry-webhook.ferry-system.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        assert!(cert.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(cert.ca_pem, cert.cert_pem);
        assert!(cert.not_after > jiff::Timestamp::now().as_second() + 300 * 24 * 3600);
        server_config(&cert).unwrap();
    }

    #[test]
    fn rotation_swaps_the_served_certificate() {
        let first = generate(&["a.example".to_owned()]).unwrap();
        let second = generate(&["a.example".to_owned()]).unwrap();
        let rotating = RotatingCert::new(&first).unwrap();
        let served = |r: &RotatingCert| r.current.read().unwrap().cert[0].to_vec();
        let before = served(&rotating);
        rotating.replace(&second).unwrap();
        assert_ne!(before, served(&rotating));
    }
}
