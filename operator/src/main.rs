//! `ferry-operator`: the CassandraMigration controller and sidecar webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use futures::FutureExt;
use hyper::{Method, StatusCode};
use tracing::{error, info};

use ferry_operator::controller::{self, Context, Settings};
use ferry_operator::sidecar::InjectionSettings;
use ferry_operator::webhook::Webhook;
use ferry_operator::{certs, crdgen, http, leader, metrics};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-operator",
    version,
    about = "Ferry: live Cassandra migrations on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CassandraMigration CRD as YAML, or write every committed copy.
    Crd {
        /// Write the CRD into crds/ and charts/ferry/crds/ under this repository root.
        #[arg(long, value_name = "REPO_ROOT")]
        write: Option<PathBuf>,
    },
    /// Run the controller and the sidecar-injection webhook.
    Run(Box<RunArgs>),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Namespace the operator runs in (its Lease and webhook Secret live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferry-system")]
    namespace: String,
    /// Reconcile migrations of this namespace only (default: every namespace).
    #[arg(long, env = "FERRY_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// This replica's name, for the Lease and Events.
    #[arg(long, env = "POD_NAME", default_value = "ferry-operator")]
    pod_name: String,
    /// Image of the proxy sidecar and the bulk Jobs.
    #[arg(
        long,
        env = "FERRY_SIDECAR_IMAGE",
        default_value = "ferry.dev/ferry-sidecar:dev"
    )]
    sidecar_image: String,
    /// Image of the iptables redirect init container (needs `sh` and `iptables`).
    #[arg(
        long,
        env = "FERRY_REDIRECT_IMAGE",
        default_value = "ferry.dev/ferry-redirect:dev"
    )]
    redirect_image: String,
    /// Inject a plain container instead of a native sidecar (Kubernetes < 1.29).
    #[arg(long, env = "FERRY_LEGACY_SIDECAR")]
    legacy_sidecar: bool,
    /// Metrics and health: /metrics, /healthz, /readyz.
    #[arg(long, env = "FERRY_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// The webhook's HTTPS address.
    #[arg(long, env = "FERRY_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    webhook_addr: SocketAddr,
    /// DNS names (or IPs) of the webhook's certificate; default the Service's names.
    #[arg(long, env = "FERRY_WEBHOOK_SANS", value_delimiter = ',')]
    webhook_sans: Vec<String>,
    /// The webhook Service's name (for the default certificate names).
    #[arg(long, env = "FERRY_WEBHOOK_SERVICE", default_value = "ferry-webhook")]
    webhook_service: String,
    /// Secret holding the webhook certificate (made by the operator).
    #[arg(
        long,
        env = "FERRY_WEBHOOK_SECRET",
        default_value = "ferry-webhook-tls"
    )]
    webhook_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(
        long,
        env = "FERRY_WEBHOOK_CONFIG",
        default_value = "ferry-sidecar-injector"
    )]
    webhook_config: String,
    /// Use certificates mounted here (tls.crt, tls.key; e.g. from cert-manager)
    /// instead of making them.
    #[arg(long, env = "FERRY_WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<PathBuf>,
    /// Take part in leader election (turn off only for a single replica).
    #[arg(long, env = "FERRY_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// How long a rolled pod may take to come back, in seconds.
    #[arg(long, env = "FERRY_ROLL_TIMEOUT_SECS", default_value_t = 600)]
    roll_timeout_secs: u64,
    /// Before each eviction, check over CQL that every source node sees every
    /// other one Up/Normal (needs the operator to reach the pods' CQL port).
    #[arg(long, env = "FERRY_RING_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    ring_check: bool,
    /// Before Mirroring, write a row through a proxy and wait for it on the
    /// target (needs the operator to reach the proxies and the target).
    #[arg(long, env = "FERRY_PROBE_WRITE", default_value_t = true, action = clap::ArgAction::Set)]
    probe_write: bool,
    /// Keyspace of the probe row, created on both clusters.
    #[arg(long, env = "FERRY_PROBE_KEYSPACE", default_value = "ferry")]
    probe_keyspace: String,
    /// Read each proxy's `/state` on its admin port: no pod is evicted while
    /// its proxy owes the target writes, and a stalled spool sets
    /// `MirroringBehind` (needs the operator to reach the pods' admin port).
    #[arg(long, env = "FERRY_PROXY_CHECKS", default_value_t = true, action = clap::ArgAction::Set)]
    proxy_checks: bool,
    /// Seconds a proxy's spool may hold writes without draining any before
    /// the migration is `MirroringBehind`.
    #[arg(long, env = "FERRY_MIRRORING_BEHIND_AFTER_SECS", default_value_t = 120)]
    mirroring_behind_after_secs: u64,
    /// After the roll, how often the source's schema is compared with the
    /// target's again (`spec.schema: copy`), to create on the target what
    /// appeared on the source.
    #[arg(long, env = "FERRY_SCHEMA_RECHECK_SECS", default_value_t = 60)]
    schema_recheck_secs: u64,
    /// Secrets (comma-separated names) the backfill and validation Job pods
    /// pull their image with; each must exist in the migration's namespace.
    #[arg(long, env = "FERRY_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    image_pull_secrets: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { write: None } => {
            print!("{}", crdgen::render()?);
            Ok(())
        }
        Command::Crd { write: Some(root) } => {
            let yaml = crdgen::render()?;
            for rel in crdgen::CRD_PATHS {
                let path = root.join(rel);
                std::fs::write(&path, &yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Run(args) => {
            init_tracing();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run(*args))
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .json()
        .init();
}

/// Hourly: renew the webhook certificate when it nears expiry (or another
/// replica renewed it), serve the new one, and re-publish the caBundle (a
/// `helm upgrade` may have reset it).
async fn keep_certificate_fresh(
    client: kube::Client,
    namespace: String,
    secret: String,
    config: String,
    mut current: certs::WebhookCert,
    rotating: Arc<certs::RotatingCert>,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let sans = current.sans.clone();
        match certs::ensure(&client, &namespace, &secret, &sans).await {
            Ok(fresh) => {
                if fresh.cert_pem != current.cert_pem {
                    match rotating.replace(&fresh) {
                        Ok(()) => info!("webhook certificate rotated"),
                        Err(err) => error!(error = %err, "cannot use the rotated certificate"),
                    }
                }
                if let Err(err) = certs::publish_ca_bundle(&client, &config, &fresh.ca_pem).await {
                    error!(error = %err, "cannot publish the webhook caBundle");
                }
                // What this replica served until now must still be trusted:
                // another replica may not have picked the new one up yet.
                if let Some(name) = sans.first() {
                    for (what, pem) in [("new", &fresh.cert_pem), ("previous", &current.cert_pem)] {
                        if let Err(err) = certs::trusted_by(&fresh.ca_pem, pem, name) {
                            error!(error = %err, certificate = what, "the published caBundle does not trust a webhook certificate");
                        }
                    }
                }
                current = fresh;
            }
            Err(err) => error!(error = %err, "cannot renew the webhook certificate"),
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // In a workspace build another crate may also turn on rustls'
    // aws-lc-rs; choose ring (what kube and the webhook use) explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API")?;
    // The webhook, the certificates and the leader election keep kube's
    // retry of 429/503/504; the controller acts through a client without it
    // (`controller::api_client` says why).
    let controller_client =
        controller::api_client(config.clone()).context("connecting to the Kubernetes API")?;
    let client = kube::Client::try_from(config).context("connecting to the Kubernetes API")?;
    let metrics = metrics::Metrics::new().context("registering metrics")?;

    // Metrics and health, on every replica.
    let m = metrics.clone();
    let health: http::Handler = Arc::new(move |method, path, _body| {
        let m = m.clone();
        async move {
            match (method, path.as_str()) {
                (Method::GET, "/metrics") => (
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    m.render().into_bytes(),
                ),
                (Method::GET, "/healthz" | "/readyz" | "/livez") => {
                    (StatusCode::OK, "text/plain", b"ok\n".to_vec())
                }
                _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
            }
        }
        .boxed()
    });
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tokio::spawn(http::serve(listener, None, health));

    // The webhook, on every replica (the API server may call any of them).
    let cert = match &args.webhook_cert_dir {
        Some(dir) => certs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?,
        None => {
            let sans = if args.webhook_sans.is_empty() {
                let (svc, ns) = (&args.webhook_service, &args.namespace);
                vec![
                    format!("{svc}.{ns}.svc"),
                    format!("{svc}.{ns}.svc.cluster.local"),
                    format!("{svc}.{ns}"),
                ]
            } else {
                args.webhook_sans.clone()
            };
            let cert = certs::ensure(&client, &args.namespace, &args.webhook_secret, &sans)
                .await
                .context("making the webhook certificate")?;
            certs::publish_ca_bundle(&client, &args.webhook_config, &cert.ca_pem)
                .await
                .context("publishing the webhook caBundle")?;
            cert
        }
    };
    let webhook = Arc::new(Webhook {
        client: client.clone(),
        settings: InjectionSettings {
            sidecar_image: args.sidecar_image.clone(),
            redirect_image: args.redirect_image.clone(),
            native_sidecar: !args.legacy_sidecar,
            probe_keyspace: args.probe_write.then(|| args.probe_keyspace.clone()),
        },
    });
    let listener = tokio::net::TcpListener::bind(args.webhook_addr)
        .await
        .with_context(|| format!("binding {}", args.webhook_addr))?;
    let rotating = certs::RotatingCert::new(&cert).context("webhook TLS")?;
    let tls = certs::rotating_server_config(rotating.clone()).context("webhook TLS")?;
    tokio::spawn(http::serve(listener, Some(tls), webhook.handler()));
    if let Some(dir) = &args.webhook_cert_dir {
        // cert-manager renews the files in place (a Secret volume swaps a
        // symlink): serve the new ones without a restart.
        tokio::spawn(certs::follow_dir(
            dir.clone(),
            cert.cert_pem.clone(),
            rotating.clone(),
        ));
    } else {
        tokio::spawn(keep_certificate_fresh(
            client.clone(),
            args.namespace.clone(),
            args.webhook_secret.clone(),
            args.webhook_config.clone(),
            cert.clone(),
            rotating,
        ));
    }
    info!(addr = %args.webhook_addr, "webhook serving");

    let settings = Settings {
        sidecar_image: args.sidecar_image.clone(),
        roll_timeout: Duration::from_secs(args.roll_timeout_secs),
        ring_check: args.ring_check,
        probe_write: args.probe_write,
        probe_keyspace: args.probe_keyspace.clone(),
        proxy_checks: args.proxy_checks,
        mirroring_behind_after: Duration::from_secs(args.mirroring_behind_after_secs),
        schema_recheck: Duration::from_secs(args.schema_recheck_secs.max(1)),
        image_pull_secrets: args
            .image_pull_secrets
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
        namespace: args.watch_namespace.clone().filter(|n| !n.is_empty()),
        ..Settings::default()
    };
    let ctx = Context::new(
        controller_client,
        settings,
        metrics,
        Some(args.pod_name.clone()),
    );
    if !args.leader_election {
        controller::run(Arc::new(ctx)).await;
        return Ok(());
    }
    let election = leader::LeaderElection::new(
        client,
        &args.namespace,
        "ferry-operator-leader",
        &args.pod_name,
        leader::Timing::default(),
    );
    let ctx = Arc::new(ctx.with_leadership(election.leadership()));
    election.acquire().await.context("leader election")?;
    tokio::select! {
        () = controller::run(ctx) => Ok(()),
        why = election.hold() => {
            error!(%why, "lost leadership; stopping");
            anyhow::bail!("lost leadership: {why}")
        }
    }
}
