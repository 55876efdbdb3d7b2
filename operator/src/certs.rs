//! The webhook's TLS: a private CA and a serving certificate the operator
//! makes itself, keeps in a Secret (so every replica serves the same one),
//! rotates before it expires, and publishes as the webhook's `caBundle`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;

/// A serving certificate and the CAs that make it trusted, PEM-encoded.
#[derive(Clone, Debug)]
pub struct WebhookCert {
    /// The `caBundle`: the signing CA, and while a CA rotation is under
    /// way the previous one too, so a replica still serving a certificate
    /// of the old CA stays trusted.
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// When the serving certificate expires (seconds since the epoch).
    pub not_after: i64,
    /// The names it is valid for.
    pub sans: Vec<String>,
    /// The CA that signs the serving certificates (none for certificates
    /// made elsewhere, e.g. by cert-manager).
    pub signing: Option<SigningCa>,
}

/// The long-lived CA the serving certificates are signed by. Renewing a
/// serving certificate under it leaves the `caBundle` as it is: a replica
/// that still serves the previous certificate stays trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningCa {
    pub cert_pem: String,
    pub key_pem: String,
    /// When it expires (seconds since the epoch).
    pub not_after: i64,
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
    #[error("the certificate is not trusted by the bundle: {0}")]
    Untrusted(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("date: {0}")]
    Date(#[from] jiff::Error),
}

/// Serving certificates: valid for a year; renewed when less than 30 days
/// are left.
const VALIDITY_DAYS: i64 = 365;
const RENEW_BEFORE_SECS: i64 = 30 * 24 * 3600;
/// The CA: valid for ten years; replaced when less than a year is left
/// (longer than any serving certificate it signed), the old one staying in
/// the bundle until then.
const CA_VALIDITY_DAYS: i64 = 3650;
const CA_RENEW_BEFORE_SECS: i64 = 365 * 24 * 3600;
const CA_NAME: &str = "ferry-webhook-ca";

fn ymd_after(days: i64) -> Result<(i64, jiff::Timestamp), CertError> {
    let t = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(24 * days))?;
    Ok((t.as_second(), t))
}

fn expire_on(params: &mut CertificateParams, t: jiff::Timestamp) {
    let date = t.to_zoned(jiff::tz::TimeZone::UTC).date();
    params.not_after =
        rcgen::date_time_ymd(i32::from(date.year()), date.month() as u8, date.day() as u8);
}

/// The CA's parameters: the same every time, so an issuer rebuilt from
/// them and the stored key signs as the CA certificate says.
fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// A new CA.
pub fn new_ca() -> Result<SigningCa, CertError> {
    let (not_after, until) = ymd_after(CA_VALIDITY_DAYS)?;
    let mut params = ca_params()?;
    expire_on(&mut params, until);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(SigningCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// A serving certificate for `sans`, signed by `ca`.
fn serving(ca: &SigningCa, sans: &[String]) -> Result<(String, String, i64), CertError> {
    let (not_after, until) = ymd_after(VALIDITY_DAYS)?;
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca.key_pem)?);
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().cloned().unwrap_or_default(),
    );
    expire_on(&mut params, until);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// Makes a fresh CA and a serving certificate for `sans` (DNS names or IPs).
pub fn generate(sans: &[String]) -> Result<WebhookCert, CertError> {
    let ca = new_ca()?;
    let (cert_pem, key_pem, not_after) = serving(&ca, sans)?;
    Ok(WebhookCert {
        ca_pem: ca.cert_pem.clone(),
        cert_pem,
        key_pem,
        not_after,
        sans: sans.to_vec(),
        signing: Some(ca),
    })
}

/// What a stored certificate needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// It serves as it is.
    Keep,
    /// A new serving certificate from the same CA: the bundle stays.
    NewServing,
    /// A new CA (none to sign with, or it nears its end); the bundle keeps
    /// `previous` (the CAs trusted so far) beside it, so certificates still
    /// served by other replicas stay trusted.
    NewCa { previous: Option<String> },
}

/// Decides what the stored certificate (if any) needs at `now`, for `sans`.
/// Pure: the whole rotation policy, unit tested.
pub fn plan(stored: Option<&WebhookCert>, sans: &[String], now: i64) -> Renewal {
    let Some(stored) = stored else {
        return Renewal::NewCa { previous: None };
    };
    let ca_usable = stored
        .signing
        .as_ref()
        .is_some_and(|ca| ca.not_after - now > CA_RENEW_BEFORE_SECS);
    if !ca_usable {
        // The previous signing CA while it is valid; a Secret from before
        // the CA was kept (no key stored) trusted its whole bundle.
        let previous = match &stored.signing {
            Some(ca) if ca.not_after > now => Some(ca.cert_pem.clone()),
            Some(_) => None,
            None => Some(stored.ca_pem.clone()).filter(|p| !p.trim().is_empty()),
        };
        return Renewal::NewCa { previous };
    }
    if stored.sans != sans || stored.not_after - now <= RENEW_BEFORE_SECS {
        return Renewal::NewServing;
    }
    Renewal::Keep
}

/// A `caBundle` of the new CA and the previous ones.
fn bundle(new_ca_pem: &str, previous: Option<&str>) -> String {
    match previous.map(str::trim).filter(|p| !p.is_empty()) {
        Some(previous) if !new_ca_pem.contains(previous) => {
            format!("{}\n{previous}\n", new_ca_pem.trim_end())
        }
        _ => new_ca_pem.to_owned(),
    }
}

/// Whether `bundle_pem` (a `caBundle`) trusts `cert_pem` for `server_name`
/// now: what the API server checks when it calls the webhook.
pub fn trusted_by(bundle_pem: &str, cert_pem: &str, server_name: &str) -> Result<(), CertError> {
    use rustls::client::danger::ServerCertVerifier;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots
            .add(ca?)
            .map_err(|e| CertError::Untrusted(e.to_string()))?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(CertError::Untrusted("no certificate".into()));
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| CertError::Untrusted(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| CertError::Untrusted(e.to_string()))?;
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map_err(|e| CertError::Untrusted(e.to_string()))?;
    Ok(())
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

const NOT_AFTER: &str = "ferry.dev/not-after";
const CA_NOT_AFTER: &str = "ferry.dev/ca-not-after";

/// The certificate a Secret holds, if it holds a whole one.
fn stored(secret: &Secret) -> Option<WebhookCert> {
    let annotation = |key: &str| {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let signing = match (get(secret, "ca-signing.crt"), get(secret, "ca.key")) {
        (Some(cert_pem), Some(key_pem)) => Some(SigningCa {
            cert_pem,
            key_pem,
            not_after: annotation(CA_NOT_AFTER),
        }),
        _ => None,
    };
    Some(WebhookCert {
        ca_pem: get(secret, "ca.crt")?,
        cert_pem: get(secret, "tls.crt")?,
        key_pem: get(secret, "tls.key")?,
        not_after: annotation(NOT_AFTER),
        sans: get(secret, "sans")
            .map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        signing,
    })
}

/// The Secret that holds `cert`.
fn secret_of(name: &str, cert: &WebhookCert, resource_version: Option<String>) -> Secret {
    let mut data: BTreeMap<String, ByteString> = [
        ("ca.crt", &cert.ca_pem),
        ("tls.crt", &cert.cert_pem),
        ("tls.key", &cert.key_pem),
        ("sans", &cert.sans.join(",")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let mut annotations = BTreeMap::from([(NOT_AFTER.to_owned(), cert.not_after.to_string())]);
    if let Some(ca) = &cert.signing {
        data.insert(
            "ca-signing.crt".into(),
            ByteString(ca.cert_pem.as_bytes().to_vec()),
        );
        data.insert("ca.key".into(), ByteString(ca.key_pem.as_bytes().to_vec()));
        annotations.insert(CA_NOT_AFTER.to_owned(), ca.not_after.to_string());
    }
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            annotations: Some(annotations),
            resource_version,
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

/// Loads the certificate from `secret` in `namespace`, or renews (and
/// stores) what [`plan`] says: usually a new serving certificate from the
/// same CA, so the `caBundle` stays and every replica stays trusted
/// whichever certificate it serves. Two replicas renewing at once do not
/// both win: the write is conditional on the Secret's version, and the
/// loser takes what the winner stored.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    secret: &str,
    sans: &[String],
) -> Result<WebhookCert, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        let existing = api.get_opt(secret).await?;
        let current = existing.as_ref().and_then(stored);
        let now = jiff::Timestamp::now().as_second();
        let cert = match (plan(current.as_ref(), sans, now), current) {
            (Renewal::Keep, Some(current)) => return Ok(current),
            (
                Renewal::NewServing,
                Some(WebhookCert {
                    ca_pem,
                    signing: Some(ca),
                    ..
                }),
            ) => {
                let (cert_pem, key_pem, not_after) = serving(&ca, sans)?;
                WebhookCert {
                    ca_pem,
                    cert_pem,
                    key_pem,
                    not_after,
                    sans: sans.to_vec(),
                    signing: Some(ca),
                }
            }
            (Renewal::NewCa { previous }, _) => {
                let mut cert = generate(sans)?;
                cert.ca_pem = bundle(&cert.ca_pem, previous.as_deref());
                cert
            }
            // `plan` keeps or reuses only a stored certificate with its CA.
            _ => generate(sans)?,
        };
        let version = existing
            .as_ref()
            .and_then(|s| s.metadata.resource_version.clone());
        let body = secret_of(secret, &cert, version.clone());
        let written = match version {
            Some(_) => api.replace(secret, &PostParams::default(), &body).await,
            None => api.create(&PostParams::default(), &body).await,
        };
        match written {
            Ok(_) => return Ok(cert),
            // Another replica renewed first: take its certificate.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let current = api.get_opt(secret).await?.as_ref().and_then(stored);
    current.ok_or_else(|| CertError::Untrusted("the webhook Secret kept changing".into()))
}

/// The certificate in a directory of mounted files (`tls.crt`, `tls.key`,
/// and `ca.crt` when the issuer puts it there), as cert-manager writes them.
pub fn read_dir(dir: &std::path::Path) -> std::io::Result<WebhookCert> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    Ok(WebhookCert {
        ca_pem: read("ca.crt").unwrap_or_default(),
        cert_pem: read("tls.crt")?,
        key_pem: read("tls.key")?,
        not_after: 0,
        sans: Vec::new(),
        signing: None,
    })
}

/// Serves the files in `dir` again whenever they change (checked every 30
/// seconds), until the process ends. `served` is the certificate served now.
pub async fn follow_dir(dir: std::path::PathBuf, mut served: String, rotating: Arc<RotatingCert>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        match read_dir(&dir) {
            Ok(cert) if cert.cert_pem != served => match rotating.replace(&cert) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "webhook certificate reloaded from its files");
                    served = cert.cert_pem;
                }
                // A half-written pair (the key not yet swapped): next time.
                Err(err) => {
                    tracing::warn!(error = %err, "the webhook certificate files do not load yet")
                }
            },
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, dir = %dir.display(), "cannot read the webhook certificate files")
            }
        }
    }
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

    const NAME: &str = "ferry-webhook.ferry-system.svc";

    fn sans() -> Vec<String> {
        vec![NAME.to_owned()]
    }

    #[test]
    fn the_rotation_plan_renews_the_serving_certificate_under_the_same_ca() {
        let now = jiff::Timestamp::now().as_second();
        let cert = generate(&sans()).unwrap();
        assert_eq!(plan(Some(&cert), &sans(), now), Renewal::Keep);
        assert_eq!(plan(None, &sans(), now), Renewal::NewCa { previous: None });
        // Near its end, or for other names: a new one from the same CA.
        let near = cert.not_after - RENEW_BEFORE_SECS + 60;
        assert_eq!(plan(Some(&cert), &sans(), near), Renewal::NewServing);
        assert_eq!(
            plan(Some(&cert), &["other.svc".to_owned()], now),
            Renewal::NewServing
        );
        // The CA near its end: a new CA, the old one still trusted.
        let ca = cert.signing.clone().unwrap();
        let ca_near = ca.not_after - CA_RENEW_BEFORE_SECS + 60;
        assert_eq!(
            plan(Some(&cert), &sans(), ca_near),
            Renewal::NewCa {
                previous: Some(ca.cert_pem.clone())
            }
        );
        assert_eq!(
            plan(Some(&cert), &sans(), ca.not_after + 1),
            Renewal::NewCa { previous: None }
        );
        // A Secret written before the CA was kept: its bundle stays trusted.
        let legacy = WebhookCert {
            signing: None,
            ..cert.clone()
        };
        assert_eq!(
            plan(Some(&legacy), &sans(), now),
            Renewal::NewCa {
                previous: Some(cert.ca_pem.clone())
            }
        );
    }

    #[test]
    fn a_renewed_certificate_leaves_the_bundle_and_keeps_the_old_one_trusted() {
        let first = generate(&sans()).unwrap();
        let ca = first.signing.clone().unwrap();
        let (cert_pem, _, _) = serving(&ca, &sans()).unwrap();
        assert_ne!(cert_pem, first.cert_pem);
        // One bundle trusts both: the replica still serving the first
        // certificate and the one serving the new.
        trusted_by(&first.ca_pem, &first.cert_pem, NAME).unwrap();
        trusted_by(&first.ca_pem, &cert_pem, NAME).unwrap();
        assert!(trusted_by(&first.ca_pem, &cert_pem, "someone-else.svc").is_err());
        // A new CA's bundle carries the old CA while it lasts.
        let next = generate(&sans()).unwrap();
        assert!(trusted_by(&next.ca_pem, &first.cert_pem, NAME).is_err());
        let both = bundle(&next.ca_pem, Some(&ca.cert_pem));
        trusted_by(&both, &first.cert_pem, NAME).unwrap();
        trusted_by(&both, &next.cert_pem, NAME).unwrap();
        assert_eq!(bundle(&both, Some(&ca.cert_pem)), both, "never twice");
    }

    #[tokio::test]
    async fn files_renewed_in_place_are_served_without_a_restart() {
        let dir = std::env::temp_dir().join(format!("ferry-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |c: &WebhookCert| {
            std::fs::write(dir.join("tls.crt"), &c.cert_pem).unwrap();
            std::fs::write(dir.join("tls.key"), &c.key_pem).unwrap();
        };
        let first = generate(&sans()).unwrap();
        write(&first);
        let loaded = read_dir(&dir).unwrap();
        assert_eq!(loaded.cert_pem, first.cert_pem);
        let rotating = RotatingCert::new(&loaded).unwrap();
        tokio::time::pause();
        let task = tokio::spawn(follow_dir(dir.clone(), loaded.cert_pem, rotating.clone()));
        let second = generate(&sans()).unwrap();
        write(&second);
        let served = |r: &RotatingCert| r.current.read().unwrap().cert[0].to_vec();
        let want: Vec<u8> = CertificateDer::pem_slice_iter(second.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec();
        for _ in 0..10 {
            tokio::time::advance(std::time::Duration::from_secs(31)).await;
            tokio::task::yield_now().await;
            if served(&rotating) == want {
                break;
            }
        }
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(served(&rotating), want, "the renewed files are served");
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
