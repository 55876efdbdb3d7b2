//! `ferry-sidecar proxy`: the dual-write CQL proxy.
//!
//! It sits in front of one source Cassandra node, forwards every request to
//! it, mirrors writes to the target cluster, and rewrites the cluster's
//! self-description so drivers only ever see proxies. See `docs/proxy.md`.
//!
//! Layout: `frame`/`segment`/`compression`/`codec` are the wire format,
//! `wire` the primitive types, `request` and `classify` read requests,
//! `connection` serves one client connection (its `route` decides where each
//! request goes), `mirror` talks to the target
//! (with `spool` for async mode), `peers` rewrites topology, `prepared`
//! maps statement ids, `admin`/`metrics` are for operators.

pub mod admin;
pub mod bound;
pub mod classify;
pub mod codec;
pub mod compression;
pub mod config;
pub mod connection;
pub mod cql_tokens;
pub mod credentials;
pub mod frame;
pub mod link;
pub mod metrics;
pub mod mirror;
pub mod peers;
pub mod policy;
pub mod prepared;
pub mod request;
pub mod result;
pub mod schema_follow;
pub mod segment;
pub mod spool;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod uuids;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

pub use config::{Mode, ProxyArgs};
use credentials::TargetCredentials;
use mirror::ProxyContext;
use peers::{PeerMap, RuntimeFile};
use upstream::Endpoint;

/// One upstream link's TLS flags.
struct UpstreamTlsArgs<'a> {
    disabled: bool,
    ca: &'a Option<PathBuf>,
    cert: &'a Option<PathBuf>,
    key: &'a Option<PathBuf>,
    server_name: &'a Option<String>,
    skip_hostname_verification: bool,
}

fn upstream_tls(args: UpstreamTlsArgs<'_>) -> anyhow::Result<Option<tls::Connector>> {
    if args.disabled {
        return Ok(None);
    }
    let Some(ca) = args.ca else {
        return Ok(None);
    };
    let cfg = tls::UpstreamTls {
        ca: ca.clone(),
        client_cert: args.cert.clone(),
        client_key: args.key.clone(),
        server_name: args.server_name.clone(),
        skip_hostname_verification: args.skip_hostname_verification,
    };
    Ok(Some(tls::Connector::new(&cfg)?))
}

fn target_credentials(args: &ProxyArgs) -> anyhow::Result<Option<TargetCredentials>> {
    use credentials::CredentialValue;
    let username = match (&args.target_username, &args.target_username_file) {
        (Some(u), _) => CredentialValue::Literal(u.clone()),
        (None, Some(file)) => CredentialValue::File(file.clone()),
        (None, None) => return Ok(None),
    };
    let password = match (&args.target_password, &args.target_password_file) {
        (Some(p), _) => CredentialValue::Literal(p.clone()),
        (None, Some(file)) => CredentialValue::File(file.clone()),
        (None, None) => {
            anyhow::bail!("a target username needs --target-password or --target-password-file")
        }
    };
    let creds = TargetCredentials { username, password };
    creds.check().context("reading the target credentials")?;
    Ok(Some(creds))
}

/// Builds the shared state from the command line.
pub fn build_context(args: &ProxyArgs) -> anyhow::Result<Arc<ProxyContext>> {
    let metrics = metrics::Metrics::new().context("registering metrics")?;
    let spool = spool::Spool::open(&args.spool_dir, args.spool_max_bytes)
        .with_context(|| format!("opening the spool in {}", args.spool_dir.display()))?;
    // Writes owed to the source (target-primary-async) keep a spool of
    // their own beside it, with the same bound.
    let source_spool_dir = args.spool_dir.join("to-source");
    let source_spool =
        spool::Spool::open(&source_spool_dir, args.spool_max_bytes).with_context(|| {
            format!(
                "opening the source's spool in {}",
                source_spool_dir.display()
            )
        })?;
    let connect_timeout = Duration::from_millis(args.target_timeout_ms.max(100));
    let source_node = upstream::parse_hosts(&args.source, args.source_port).context("SOURCE")?;
    anyhow::ensure!(
        source_node.len() == 1,
        "SOURCE is the one node this proxy fronts, not a list: {}",
        args.source
    );
    let source = Endpoint::new(
        source_node,
        upstream_tls(UpstreamTlsArgs {
            disabled: args.disable_source_tls,
            ca: &args.source_tls_ca,
            cert: &args.source_tls_cert,
            key: &args.source_tls_key,
            server_name: &args.source_tls_server_name,
            skip_hostname_verification: args.source_tls_skip_hostname_verification,
        })
        .context("source TLS")?,
        connect_timeout,
    );
    let target = Endpoint::new(
        upstream::parse_hosts(&args.target, args.target_port).context("TARGET")?,
        upstream_tls(UpstreamTlsArgs {
            disabled: args.disable_target_tls,
            ca: &args.target_tls_ca,
            cert: &args.target_tls_cert,
            key: &args.target_tls_key,
            server_name: &args.target_tls_server_name,
            skip_hostname_verification: args.target_tls_skip_hostname_verification,
        })
        .context("target TLS")?,
        connect_timeout,
    );
    metrics.mode.set(i64::from(args.mode.as_u8()));
    Ok(Arc::new(ProxyContext {
        metrics,
        prepared: prepared::PreparedCache::new(args.prepared_cache_size),
        mode: config::ModeCell::new(args.mode),
        peers: RwLock::new(Arc::new(PeerMap::default())),
        filter: config::MirrorFilter::from_args(args),
        spool: Arc::new(spool),
        source_spool: Arc::new(source_spool),
        spool_full_policy: args.spool_full_policy,
        source,
        target,
        target_credentials: target_credentials(args)?,
        last_handshake: Mutex::new(None),
        last_source_handshake: Mutex::new(None),
        target_timeout: Duration::from_millis(args.target_timeout_ms.max(1)),
        async_retries: args.async_retries,
        retry_backoff: Duration::from_millis(args.retry_backoff_ms),
        max_frame_bytes: args.max_frame_bytes,
        protocol_version_cap: args.protocol_version,
        cql_version: args.cql_version.clone(),
        mirror_ddl: AtomicBool::new(args.mirror_ddl),
        target_replication: RwLock::new(args.target_replication.as_deref().map(Arc::from)),
        shadow_read_percent: std::sync::atomic::AtomicU64::new(args.shadow_read_percent.min(100)),
        read_counter: std::sync::atomic::AtomicU64::new(0),
        shutting_down: AtomicBool::new(false),
        mirrors_inflight: AtomicUsize::new(0),
        replay_progress: mirror::ReplayProgress::default(),
        source_replay_progress: mirror::ReplayProgress::default(),
        replay_window: args.replay_window as usize,
        heartbeat: (args.heartbeat_secs > 0).then(|| Duration::from_secs(args.heartbeat_secs)),
        mirror_permits: Arc::new(tokio::sync::Semaphore::new(
            args.mirror_max_in_flight as usize,
        )),
        source_reachable: AtomicBool::new(false),
        target_reachable: AtomicBool::new(false),
        self_peer: None,
    }))
}

/// This proxy's own entry of the peer map: the source node it fronts →
/// the address it advertises.
async fn self_peer_entry(args: &ProxyArgs) -> Option<(std::net::IpAddr, SocketAddr)> {
    let advertise = args.advertise_address.clone().or_else(|| {
        let ip: std::net::IpAddr = args.proxy_address.parse().ok()?;
        (!ip.is_unspecified()).then(|| args.proxy_address.clone())
    })?;
    let advertise: std::net::IpAddr = match advertise.parse() {
        Ok(ip) => ip,
        Err(_) => tokio::net::lookup_host((advertise.as_str(), 0))
            .await
            .ok()?
            .next()?
            .ip(),
    };
    let source = tokio::net::lookup_host((args.source.as_str(), args.source_port))
        .await
        .ok()?
        .next()?
        .ip();
    Some((source, SocketAddr::new(advertise, args.proxy_port)))
}

/// Applies the runtime file (peer map and mode).
fn apply_runtime_file(ctx: &ProxyContext, path: &std::path::Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let file = RuntimeFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(m) = &file.mode {
        match Mode::parse(m) {
            Some(mode) => {
                if mode != ctx.mode() {
                    info!(?mode, "mode changed");
                }
                ctx.mode.set(mode);
                ctx.metrics.mode.set(i64::from(mode.as_u8()));
            }
            None => return Err(format!("{}: unknown mode {m:?}", path.display())),
        }
    }
    if let Some(percent) = file.shadow_read_percent {
        let percent = percent.min(100);
        if ctx.shadow_read_percent.swap(percent, Ordering::AcqRel) != percent {
            info!(percent, "shadow-read percentage changed");
        }
    }
    if let Some(follow) = file.mirror_ddl {
        if ctx.mirror_ddl.swap(follow, Ordering::AcqRel) != follow {
            info!(follow, "following schema changes on the target changed");
        }
    }
    if let Some(replication) = &file.target_replication {
        let mut current = ctx
            .target_replication
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if current.as_deref() != Some(replication.as_str()) {
            info!(%replication, "target replication for new keyspaces changed");
            *current = Some(Arc::from(replication.as_str()));
        }
    }
    let mut peers = file.peers;
    if let Some((node, proxy)) = ctx.self_peer {
        peers = peers.with_default(node, proxy);
    }
    let peers = Arc::new(peers);
    let mut current = ctx.peers.write().unwrap_or_else(|p| p.into_inner());
    if **current != *peers {
        info!(entries = peers.len(), "peer map loaded");
        *current = peers;
    }
    Ok(())
}

/// Re-reads the runtime file when its modification time or size changes
/// (a ConfigMap update swaps a symlink; polling sees that too).
async fn watch_runtime_file(ctx: Arc<ProxyContext>, path: PathBuf) {
    let mut last: Option<(std::time::SystemTime, u64, String)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let content = std::fs::read_to_string(&path).unwrap_or_default();
        let stamp = (
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            meta.len(),
            content,
        );
        if last.as_ref() == Some(&stamp) {
            continue;
        }
        last = Some(stamp);
        if let Err(e) = apply_runtime_file(&ctx, &path) {
            error!(error = %e, "runtime file rejected; keeping the previous settings");
        }
    }
}

/// Re-reads the command line after a config file filled the environment.
fn reparse_with_config(args: ProxyArgs) -> anyhow::Result<ProxyArgs> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let n = config::apply_config_file(&path)?;
    info!(file = %path.display(), settings = n, "config file applied");
    #[derive(clap::Parser)]
    struct Reparse {
        #[command(flatten)]
        args: ProxyArgs,
    }
    // argv is `ferry-sidecar proxy ...`: keep what follows the subcommand.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let rest = argv
        .iter()
        .position(|a| a == "proxy")
        .map(|i| argv[i + 1..].to_vec())
        .unwrap_or_default();
    let parsed =
        <Reparse as clap::Parser>::try_parse_from(std::iter::once("proxy".into()).chain(rest))
            .context("command line with the config file applied")?;
    Ok(parsed.args)
}

/// Runs the proxy until SIGTERM (or SIGINT).
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let args = reparse_with_config(args)?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let signal = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    run_until(args, signal).await
}

/// Runs the proxy until `shutdown` completes, then drains gracefully.
pub async fn run_until(
    args: ProxyArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut ctx = build_context(&args)?;
    if let Some(c) = Arc::get_mut(&mut ctx) {
        c.self_peer = self_peer_entry(&args).await;
        if let Some((node, proxy)) = c.self_peer {
            info!(%node, %proxy, "advertising this proxy in place of its source node");
            *c.peers.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new(PeerMap::default().with_default(node, proxy));
        }
    }
    // Tasks that live as long as the proxy; aborted when it stops.
    let mut background = Vec::new();
    if let Some(path) = &args.peer_map {
        apply_runtime_file(&ctx, path).map_err(anyhow::Error::msg)?;
        background.push(tokio::spawn(watch_runtime_file(ctx.clone(), path.clone())));
    }
    let acceptor = match (&args.proxy_tls_cert, &args.proxy_tls_key) {
        (Some(cert), Some(key)) => Some(
            tls::Acceptor::new(&tls::ListenerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.proxy_tls_client_ca.clone(),
            })
            .context("client-facing TLS")?,
        ),
        _ => None,
    };
    let bind = format!("{}:{}", bracket(&args.proxy_address), args.proxy_port);
    let listener = TcpListener::bind(&bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let admin_bind = format!("{}:{}", bracket(&args.admin_address), args.admin_port);
    let admin = TcpListener::bind(&admin_bind)
        .await
        .with_context(|| format!("binding the admin port {admin_bind}"))?;
    info!(listen = %bind, admin = %admin_bind, source = ?ctx.source, target = ?ctx.target, mode = ?ctx.mode(), "ferry proxy started");
    background.push(tokio::spawn(admin::serve(admin, ctx.clone())));
    background.push(tokio::spawn(admin::probe_upstreams(ctx.clone())));
    let replayers = [mirror::Toward::Target, mirror::Toward::Source]
        .map(|toward| tokio::spawn(mirror::run_replayer(ctx.clone(), toward)));
    // Spooled writes reach the disk within 100 ms, whatever the replayer does.
    let flusher_ctx = ctx.clone();
    background.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for spool in [&flusher_ctx.spool, &flusher_ctx.source_spool] {
                if let Err(e) = spool.sync() {
                    error!(error = %e, "syncing the spool");
                }
            }
        }
    }));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                spawn_client(ctx.clone(), tcp, peer, acceptor.clone(), shutdown_rx.clone(), open.clone());
            }
            _ = &mut shutdown => break,
        }
    }
    info!("shutting down: no new connections, finishing in-flight requests");
    drop(listener);
    ctx.shutting_down.store(true, Ordering::Release);
    let _ = shutdown_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(args.shutdown_grace_secs);
    while (open.load(Ordering::Acquire) > 0 || ctx.mirrors_inflight.load(Ordering::Acquire) > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for replayer in replayers {
        replayer.abort();
        let _ = replayer.await;
    }
    // Awaited, not only aborted: the admin listener goes with its task,
    // and a proxy started again at once on the same address (a restart in
    // the same process) must find the port free.
    for task in background {
        task.abort();
        let _ = task.await;
    }
    ctx.spool.sync().context("syncing the spool")?;
    ctx.source_spool
        .sync()
        .context("syncing the source's spool")?;
    info!(
        spooled = ctx.spool.records(),
        spooled_for_the_source = ctx.source_spool.records(),
        unfinished_mirrors = ctx.mirrors_inflight.load(Ordering::Acquire),
        "stopped"
    );
    Ok(())
}

fn bracket(addr: &str) -> String {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

fn spawn_client(
    ctx: Arc<ProxyContext>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<tls::Acceptor>,
    shutdown: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) {
    open.fetch_add(1, Ordering::AcqRel);
    ctx.metrics.open_connections.inc();
    tokio::spawn(async move {
        let halves = match &acceptor {
            Some(a) => a.accept(tcp).await.map_err(|e| e.to_string()),
            None => Ok(tls::plain(tcp)),
        };
        match halves {
            Ok(h) => connection::serve(ctx.clone(), h, peer, shutdown).await,
            Err(e) => warn!(%peer, error = %e, "client TLS handshake failed"),
        }
        ctx.metrics.open_connections.dec();
        open.fetch_sub(1, Ordering::AcqRel);
    });
}
