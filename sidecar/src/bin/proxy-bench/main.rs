//! `proxy-bench`: the same CQL load with the scylla driver, direct to the
//! source Cassandra node and through `ferry-sidecar proxy` (mirroring on),
//! in one run, alternating, and the ratio of the two.
//!
//! Closed loop at a fixed client concurrency gives throughput; an open loop
//! at half of the direct saturation rate gives p50/p99 latency (measured
//! from each request's scheduled start, so queueing is not hidden). The
//! proxy runs as a child process so its CPU time and RSS come from /proc.
//!
//! ```text
//! cargo build --release -p ferry-sidecar --bins
//! target/release/proxy-bench --source 127.0.0.11:9042 --target 127.0.0.21:9042
//! ```

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ferry_sidecar::procstat::{PerRequest, ProcessCounters, Resident};
use futures::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::client::PoolSize;
use scylla::policies::host_filter::AllowListHostFilter;
use scylla::statement::prepared::PreparedStatement;

mod instructions;
mod peers;
mod relay;

use instructions::Callgrind;
use peers::{Peer, PeerSpec};

#[derive(Parser, Debug)]
#[command(
    about = "Direct vs through-the-proxy CQL benchmark",
    // A wrapper's defaults (e2e/bench/peers.sh) can be overridden by
    // options given after them.
    args_override_self = true
)]
struct Args {
    /// Source node, ip:port.
    #[arg(long, default_value = "127.0.0.11:9042")]
    source: String,
    /// Target node, ip:port.
    #[arg(long, default_value = "127.0.0.21:9042")]
    target: String,
    /// Address the proxy listens on (port 29042, admin 28000).
    #[arg(long, default_value = "127.0.0.49")]
    proxy_ip: String,
    /// The `ferry-sidecar` binary (default: next to this one).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Proxy write mode.
    #[arg(long, default_value = "async")]
    mode: String,
    /// Requests in flight at once (closed loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of unmeasured load on each path before the first round, so a
    /// freshly started JVM has compiled its hot paths.
    #[arg(long, default_value_t = 10)]
    warmup_seconds: u64,
    /// Alternating direct/proxy rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Percentage of writes (the rest are reads by primary key).
    #[arg(long, default_value_t = 50)]
    write_percent: u64,
    /// Threads of the proxy's runtime (`FERRY_WORKER_THREADS`; 1 is the
    /// current-thread runtime); 0 leaves the proxy's default.
    #[arg(long, default_value_t = 0)]
    proxy_threads: usize,
    /// The open loop's rate, as a fraction of the saturation of the same
    /// work (0.25: the quarter rate issue 16's aims are set at).
    #[arg(long, default_value_t = 0.5)]
    open_fraction: f64,
    /// Writes spooled during a simulated target outage, then replayed one at
    /// a time and with the default window, to time the drain (0: skip).
    #[arg(long, default_value_t = 20_000)]
    drain_records: u64,
    /// Driver connections for the memory measurement.
    #[arg(long, default_value_t = 100)]
    rss_connections: usize,
    /// A command run (by `sh -c`) beside each measured phase of the proxy
    /// and of the byte relay, with `{who}` (`proxy` or `relay`), `{phase}`
    /// (`closed` or `open`), `{pid}` (the measured process's), `{seconds}`
    /// and `{round}` filled in: a profiler or a system-call count of
    /// exactly that phase, e.g. `perf record -e cpu-clock -g -p {pid} -o
    /// {who}.{phase}.{round}.perf -- sleep {seconds}`. It costs the
    /// measured process CPU, so a probed run's figures are not the
    /// unprobed ones.
    #[arg(long, alias = "open-loop-probe")]
    probe: Option<String>,
    /// Also measure a byte-copying relay (port 29043 on `--proxy-ip`) in
    /// front of the same source node, at the same rates: the floor that
    /// any event-driven proxy pays on this machine to be woken, to read and
    /// to write.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    relay_baseline: bool,
    /// Run the proxy and the relay under valgrind's callgrind and report
    /// their user-space instructions per request in each phase
    /// (deterministic, unlike CPU time on a shared machine; the CPU
    /// figures of such a run are valgrind's). Use a low `--open-fraction`
    /// (0.02): the proxy runs some 20x slower.
    #[arg(long)]
    callgrind: bool,
    /// After the rounds, keep the open loop's rate going over the
    /// `--rss-connections` session for this many minutes, and print the
    /// proxy's RSS and CPU per request minute by minute (0: skip).
    #[arg(long, default_value_t = 0)]
    soak_minutes: u64,
    /// Another proxy measured beside Ferry in the same rounds, as
    /// `NAME=COMMAND` (repeatable; each adds one): the command (run by `sh
    /// -c`, with `exec` before it, so it must start the proxy itself; set
    /// its environment with `env VAR=value ...`) gets `{ip}` and
    /// `{port}` to listen on (`--proxy-ip`, ports 29044 and up),
    /// `{admin_port}` for its metrics (30044 and up), and `{source_ip}`,
    /// `{source_port}`, `{target_ip}`, `{target_port}`.
    /// `e2e/bench/peers.sh` runs ZDM proxy and Azure's cassandra-proxy so.
    #[arg(long = "peer")]
    peers: Vec<PeerSpec>,
}

/// Which process and phase a [`measured`] phase is, for `--probe`.
struct ProbeTarget<'a> {
    who: &'a str,
    phase: &'a str,
    round: usize,
}

/// Starts `--probe` for one phase, if given.
fn start_probe(args: &Args, pid: u32, at: &ProbeTarget) -> anyhow::Result<Option<Child>> {
    let Some(template) = &args.probe else {
        return Ok(None);
    };
    let command = template
        .replace("{who}", at.who)
        .replace("{phase}", at.phase)
        .replace("{pid}", &pid.to_string())
        .replace("{seconds}", &args.seconds.to_string())
        .replace("{round}", &at.round.to_string());
    let child = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .spawn()
        .with_context(|| format!("starting the probe {command:?}"))?;
    Ok(Some(child))
}

#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    requests: u64,
}

impl Phase {
    /// The figures of a phase that began at `start` and has just ended,
    /// from its requests' latencies (µs) and its error count.
    fn from_latencies(lat: &Mutex<Vec<u32>>, errors: &AtomicU64, start: Instant) -> Self {
        let elapsed = start.elapsed().as_secs_f64();
        let mut l = std::mem::take(&mut *lat.lock().unwrap_or_else(|p| p.into_inner()));
        l.sort_unstable();
        Phase {
            ops_per_sec: l.len() as f64 / elapsed,
            p50_us: percentile(&l, 0.50),
            p99_us: percentile(&l, 0.99),
            errors: errors.load(Ordering::Relaxed),
            requests: l.len() as u64,
        }
    }
}

struct Workload {
    insert: PreparedStatement,
    select: PreparedStatement,
    write_percent: u64,
    /// The client's own dual write, without a proxy: each write also goes
    /// to this session (the target) and the request ends when both answer.
    also: Option<(Arc<Session>, PreparedStatement)>,
}

/// A session that only ever talks to `addr`: the other nodes of a ring
/// (which a driver discovers through `system.peers`, and which a proxy
/// without a peer map does not hide) would otherwise take part of one path's
/// load and not the other's.
async fn session(addr: &str, pool: usize) -> anyhow::Result<Session> {
    let only = AllowListHostFilter::new([addr])
        .with_context(|| format!("resolving {addr} for the host filter"))?;
    SessionBuilder::new()
        .known_node(addr)
        .host_filter(Arc::new(only))
        .pool_size(PoolSize::PerHost(
            NonZeroUsize::new(pool.max(1)).unwrap_or(NonZeroUsize::MIN),
        ))
        .build()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// A session that only ever talks to the proxy (or byte relay) at
/// `proxy_addr` in front of the node `source`. A proxy that rewrites
/// `system.local` (Ferry, ZDM) is learned at its own address; one that
/// passes the node's through (the relay, Azure's proxy) is learned at the
/// node's IP with the port the driver connected to, and must be told to
/// reach it at the proxy. The other nodes of the ring, which such a proxy
/// lets the driver discover, are filtered out.
async fn proxied_session(proxy_addr: &str, source: &str, pool: usize) -> anyhow::Result<Session> {
    let parse = |a: &str| {
        a.parse::<std::net::SocketAddr>()
            .with_context(|| format!("address {a:?}"))
    };
    let proxy = parse(proxy_addr)?;
    let learned = std::net::SocketAddr::new(parse(source)?.ip(), proxy.port());
    let to_proxy = std::collections::HashMap::from([(learned, proxy), (proxy, proxy)]);
    let only = AllowListHostFilter::new([learned, proxy])
        .with_context(|| format!("the host filter for {proxy_addr}"))?;
    SessionBuilder::new()
        .known_node(proxy_addr)
        .address_translator(Arc::new(to_proxy))
        .host_filter(Arc::new(only))
        .pool_size(PoolSize::PerHost(
            NonZeroUsize::new(pool.max(1)).unwrap_or(NonZeroUsize::MIN),
        ))
        .build()
        .await
        .with_context(|| format!("connecting to {source} through {proxy_addr}"))
}

async fn setup(source: &Session, target: &Session, ks: &str) -> anyhow::Result<()> {
    for s in [source, target] {
        s.query_unpaged(
            format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
            &[],
        )
        .await?;
        s.query_unpaged(
            format!("CREATE TABLE IF NOT EXISTS {ks}.kv (k bigint PRIMARY KEY, v text)"),
            &[],
        )
        .await?;
        s.await_schema_agreement().await?;
    }
    Ok(())
}

async fn workload(s: &Session, ks: &str, write_percent: u64) -> anyhow::Result<Workload> {
    Ok(Workload {
        insert: s
            .prepare(format!("INSERT INTO {ks}.kv (k, v) VALUES (?, ?)"))
            .await?,
        select: s
            .prepare(format!("SELECT v FROM {ks}.kv WHERE k = ?"))
            .await?,
        write_percent,
        also: None,
    })
}

fn key_for(i: u64) -> i64 {
    // Spread over partitions, bounded so reads find data.
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 100_000) as i64
}

async fn one_request(s: &Session, w: &Workload, i: u64) -> bool {
    let k = key_for(i);
    if i % 100 < w.write_percent {
        let value = (k, "benchmark value of a modest size, 64 bytes or so......");
        let source = s.execute_unpaged(&w.insert, value);
        match &w.also {
            None => source.await.is_ok(),
            Some((target, insert)) => {
                let (a, b) = tokio::join!(source, target.execute_unpaged(insert, value));
                a.is_ok() && b.is_ok()
            }
        }
    } else {
        s.execute_unpaged(&w.select, (k,)).await.is_ok()
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

/// Closed loop: `concurrency` workers, as fast as answers come.
async fn closed_loop(s: Arc<Session>, w: Arc<Workload>, concurrency: usize, secs: u64) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::<u32>::with_capacity(1 << 20)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (s, w, stop, counter, errors, lat) = (
            s.clone(),
            w.clone(),
            stop.clone(),
            counter.clone(),
            errors.clone(),
            lat.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(1 << 14);
            while !stop.load(Ordering::Relaxed) {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if !one_request(&s, &w, i).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                mine.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            lat.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Phase::from_latencies(&lat, &errors, start)
}

/// Open loop at `rate` requests/s; latency from the scheduled start.
async fn open_loop(s: Arc<Session>, w: Arc<Workload>, rate: f64, secs: u64) -> Phase {
    let lat = Arc::new(Mutex::new(Vec::<u32>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now();
    let total = (rate * secs as f64) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (s, w, lat, errors) = (s.clone(), w.clone(), lat.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            if !one_request(&s, &w, i).await {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            let us = scheduled.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            lat.lock().unwrap_or_else(|p| p.into_inner()).push(us);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Phase::from_latencies(&lat, &errors, start)
}

/// Starts `ferry-sidecar proxy` in front of the source, mirroring to
/// `target_host`, and waits until it listens.
async fn spawn_proxy(
    args: &Args,
    proxy_bin: &Path,
    target_host: &str,
    spool: &Path,
    extra: &[&str],
    callgrind: Option<&Callgrind>,
) -> anyhow::Result<ProxyChild> {
    let mut command = match callgrind {
        Some(c) => c.command(proxy_bin),
        None => Command::new(proxy_bin),
    };
    if args.proxy_threads > 0 {
        command.env("FERRY_WORKER_THREADS", args.proxy_threads.to_string());
    }
    let child = command
        .args(["proxy", host(&args.source), target_host])
        .args([
            "--proxy-address",
            &args.proxy_ip,
            "--admin-address",
            &args.proxy_ip,
        ])
        .arg("--spool-dir")
        .arg(spool)
        .args(extra)
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", proxy_bin.display()))?;
    let proxy = ProxyChild(child);
    wait_listening(&format!("{}:29042", args.proxy_ip)).await;
    Ok(proxy)
}

/// How fast a spool of `records` writes drains into the target with
/// `--replay-window window`: the writes are made while the proxy mirrors
/// to an address where nothing listens, so they all go to the spool; then a
/// proxy on the same spool, mirroring to the real target, replays them.
/// Returns records/s, after checking they are all on the target.
async fn spool_drain(
    args: &Args,
    proxy_bin: &Path,
    ks: &str,
    records: u64,
    window: usize,
) -> anyhow::Result<f64> {
    let spool =
        std::env::temp_dir().join(format!("ferry-bench-drain-{}-{window}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let table = format!("{ks}.drain_{window}");
    let create = format!("CREATE TABLE IF NOT EXISTS {table} (k bigint PRIMARY KEY, v text)");
    let source = session(&args.source, 1).await?;
    let target = session(&args.target, 1).await?;
    for s in [&source, &target] {
        s.query_unpaged(create.as_str(), &[]).await?;
        s.await_schema_agreement().await?;
    }
    let window_arg = window.to_string();
    let flags = ["--mode", "async", "--replay-window", &window_arg];
    let proxy_addr = format!("{}:29042", args.proxy_ip);
    let metric = |name: &'static str| reqwest_metric(&args.proxy_ip, name);
    {
        let _down = spawn_proxy(args, proxy_bin, UNREACHABLE_TARGET, &spool, &flags, None).await?;
        let client = session(&proxy_addr, 1).await?;
        let insert = client
            .prepare(format!("INSERT INTO {table} (k, v) VALUES (?, ?)"))
            .await?;
        let results: Vec<_> = futures::stream::iter(0..records)
            .map(|k| {
                let (client, insert) = (&client, &insert);
                async move {
                    client
                        .execute_unpaged(insert, (k as i64, "spooled while the target was away"))
                        .await
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for r in results {
            r.context("a write through the proxy while the target was away")?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while metric("ferry_proxy_spool_records").await < records as f64 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the writes did not all reach the spool"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The spool is synced every 100 ms.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _up = spawn_proxy(args, proxy_bin, host(&args.target), &spool, &flags, None).await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while metric("ferry_proxy_mirrored_writes_total{outcome=\"replayed\"}").await < records as f64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the spool did not drain in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let count = target
        .query_unpaged(format!("SELECT COUNT(*) FROM {table}"), &[])
        .await?
        .into_rows_result()?
        .single_row::<(i64,)>()?
        .0;
    anyhow::ensure!(
        count == records as i64,
        "{count} of {records} replayed rows on the target"
    );
    let _ = std::fs::remove_dir_all(&spool);
    Ok(records as f64 / secs)
}

/// Where nothing listens: the proxy's target while its spool fills.
const UNREACHABLE_TARGET: &str = "127.0.0.98";

/// The host of an `ip:port` address (the proxy takes ports as flags).
fn host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

struct ProxyChild(Child);

impl Drop for ProxyChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn main() -> anyhow::Result<()> {
    if let Some((listen, upstream)) = relay::requested() {
        return relay::run(&listen, &upstream);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the bench's runtime")?
        .block_on(bench(Args::parse()))
}

/// Waits until something accepts connections at `addr` (5 s at most).
async fn wait_listening(addr: &str) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one measured phase gave: the load's figures, what each request
/// cost the measured process, and (`--callgrind`) its user-space
/// instructions per request.
struct Measured {
    phase: Phase,
    cost: PerRequest,
    instructions: Option<f64>,
}

/// A phase run while process `pid`'s counters are read before and after
/// (and `--probe` runs beside it; `--callgrind` zeroes and dumps its
/// instruction counts around it).
async fn measured(
    args: &Args,
    callgrind: Option<&Callgrind>,
    pid: u32,
    at: ProbeTarget<'_>,
    phase: impl std::future::Future<Output = Phase>,
) -> anyhow::Result<Measured> {
    let probe = start_probe(args, pid, &at)?;
    if let Some(c) = callgrind {
        c.zero(pid)?;
    }
    let before = ProcessCounters::read(Some(pid));
    let p = phase.await;
    let cost = ProcessCounters::read(Some(pid)).per_request_since(&before, p.requests);
    let instructions = match callgrind {
        Some(c) => {
            let label = format!("{}.{}.{}", at.who, at.phase, at.round);
            Some(c.dump(pid, &label)? as f64 / p.requests.max(1) as f64)
        }
        None => None,
    };
    if let Some(mut probe) = probe {
        let status = probe.wait().context("waiting for the probe")?;
        println!(
            "round {}: probe of the {} {} loop ended: {status}",
            at.round, at.who, at.phase
        );
    }
    if let Some(i) = instructions {
        println!(
            "round {}: {} {} loop: {i:.0} user-space instructions per request",
            at.round, at.who, at.phase
        );
    }
    Ok(Measured {
        phase: p,
        cost,
        instructions,
    })
}

/// `--soak-minutes`: the open loop at `rate` over `session`, minute by
/// minute (each a [`measured`] phase, `soak` in `--probe`'s `{phase}`),
/// printing the proxy's RSS and CPU per request after each; returns the
/// RSS after the first minute, after the last, and the highest (MiB).
async fn soak(
    args: &Args,
    callgrind: Option<&Callgrind>,
    pid: u32,
    session: Arc<Session>,
    w: Arc<Workload>,
    rate: f64,
) -> anyhow::Result<Option<(f64, f64, f64)>> {
    let mut curve = Vec::new();
    for minute in 1..=args.soak_minutes {
        let at = ProbeTarget {
            who: "proxy",
            phase: "soak",
            round: minute as usize,
        };
        let m = measured(
            args,
            callgrind,
            pid,
            at,
            open_loop(session.clone(), w.clone(), rate, 60),
        )
        .await?;
        let rss = Resident::of(pid);
        println!(
            "soak minute {minute}: {} requests ({} errors), p50 {:.0} p99 {:.0} us, proxy RSS {rss}, per request: {}",
            m.phase.requests, m.phase.errors, m.phase.p50_us, m.phase.p99_us, m.cost
        );
        curve.push(rss.total_mib);
    }
    let max = curve.iter().copied().fold(f64::MIN, f64::max);
    Ok(curve.first().zip(curve.last()).map(|(f, l)| (*f, *l, max)))
}

/// The per-request costs of one kind of measured phase, over the rounds.
#[derive(Default)]
struct CostLog {
    costs: Vec<PerRequest>,
    instructions: Vec<f64>,
}

impl CostLog {
    fn push(&mut self, m: &Measured) {
        self.costs.push(m.cost);
        self.instructions.extend(m.instructions);
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let proxy_bin = match &args.proxy_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("ferry-sidecar"),
    };
    let spool = std::env::temp_dir().join(format!("ferry-bench-spool-{}", std::process::id()));
    if args.callgrind && !args.peers.is_empty() {
        anyhow::bail!("--peer runs the peers outside valgrind: measure them without --callgrind");
    }
    let callgrind = if args.callgrind {
        let dir =
            std::env::temp_dir().join(format!("ferry-bench-callgrind-{}", std::process::id()));
        println!("callgrind dumps in {}", dir.display());
        Some(Callgrind::new(dir)?)
    } else {
        None
    };
    let proxy = spawn_proxy(
        &args,
        &proxy_bin,
        host(&args.target),
        &spool,
        &["--mode", &args.mode],
        callgrind.as_ref(),
    )
    .await?;
    let pid = proxy.0.id();
    let proxy_addr = format!("{}:29042", args.proxy_ip);

    let ks = format!("ferry_bench_{}", std::process::id());
    let source_admin = session(&args.source, 1).await?;
    let target_admin = session(&args.target, 1).await?;
    setup(&source_admin, &target_admin, &ks).await?;
    let direct = Arc::new(session(&args.source, 1).await?);
    let proxied = Arc::new(session(&proxy_addr, 1).await?);
    let wd = Arc::new(workload(&direct, &ks, args.write_percent).await?);
    let wp = Arc::new(workload(&proxied, &ks, args.write_percent).await?);
    // The relay, its session and its workload (`--relay-baseline`).
    // The byte relay, measured as the peers are (`--relay-baseline`).
    let mut relay = if args.relay_baseline {
        let relay_addr = format!("{}:29043", args.proxy_ip);
        let bench_bin = std::env::current_exe()?;
        let command = match &callgrind {
            Some(c) => c.command(&bench_bin),
            None => Command::new(&bench_bin),
        };
        let child = ProxyChild(relay::spawn(command, &relay_addr, &args.source)?);
        wait_listening(&relay_addr).await;
        Some(Peer::running("byte relay", "relay", child, relay_addr, &args, &ks).await?)
    } else {
        None
    };
    // The same writes to both clusters by the client itself: the work the
    // proxy's mirroring adds, without the proxy. Not in source-only mode,
    // which mirrors nothing.
    let wdual = if args.mode == "source-only" {
        None
    } else {
        let target = Arc::new(session(&args.target, 1).await?);
        let mut dual = workload(&direct, &ks, args.write_percent).await?;
        dual.also = Some((target.clone(), workload(&target, &ks, 100).await?.insert));
        Some(Arc::new(dual))
    };

    let mut peers = Vec::with_capacity(args.peers.len());
    for (index, spec) in args.peers.iter().enumerate() {
        peers.push(Peer::start(&args, spec, index, &ks).await?);
    }

    // Warm up both paths (JIT on Cassandra, pools, prepared maps).
    closed_loop(
        direct.clone(),
        wd.clone(),
        args.concurrency,
        args.warmup_seconds,
    )
    .await;
    if let Some(wdual) = &wdual {
        closed_loop(
            direct.clone(),
            wdual.clone(),
            args.concurrency,
            args.warmup_seconds,
        )
        .await;
    }
    closed_loop(
        proxied.clone(),
        wp.clone(),
        args.concurrency,
        args.warmup_seconds,
    )
    .await;
    for other in relay.iter().chain(&peers) {
        other.warm_up(&args).await;
    }

    let (mut dual_tput, mut dual_ratio) = (vec![], vec![]);
    let (mut dual50, mut dual99, mut dual_added99) = (vec![], vec![], vec![]);
    let (mut d_tput, mut p_tput, mut ratio) = (vec![], vec![], vec![]);
    let (mut closed_costs, mut open_costs) = (CostLog::default(), CostLog::default());
    let (mut d50, mut d99, mut p50, mut p99, mut added99) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut open_rate = 0.0;
    for round in 0..args.rounds {
        let d = closed_loop(direct.clone(), wd.clone(), args.concurrency, args.seconds).await;
        let dd = match &wdual {
            Some(w) => {
                Some(closed_loop(direct.clone(), w.clone(), args.concurrency, args.seconds).await)
            }
            None => None,
        };
        let closed = measured(
            &args,
            callgrind.as_ref(),
            pid,
            ProbeTarget {
                who: "proxy",
                phase: "closed",
                round,
            },
            closed_loop(proxied.clone(), wp.clone(), args.concurrency, args.seconds),
        )
        .await?;
        let (p, closed_cost) = (closed.phase, closed.cost);
        println!(
            "round {round}: closed loop c={}: {} requests, proxy per request: {closed_cost}",
            args.concurrency, p.requests
        );
        closed_costs.push(&closed);
        // Half of the saturation of the same work: with mirroring, that of
        // the client's own dual write (the target's writes share this box).
        let half = dd.map_or(d.ops_per_sec, |x| x.ops_per_sec.min(d.ops_per_sec))
            * args.open_fraction.clamp(0.01, 1.0);
        open_rate = half;
        let dl = open_loop(direct.clone(), wd.clone(), half, args.seconds).await;
        let open = measured(
            &args,
            callgrind.as_ref(),
            pid,
            ProbeTarget {
                who: "proxy",
                phase: "open",
                round,
            },
            open_loop(proxied.clone(), wp.clone(), half, args.seconds),
        )
        .await?;
        let (pl, open_cost) = (open.phase, open.cost);
        println!(
            "round {round}: open loop at {half:.0} ops/s: {} requests, proxy per request: {open_cost}",
            pl.requests
        );
        open_costs.push(&open);
        let ddl = match &wdual {
            Some(w) => Some(open_loop(direct.clone(), w.clone(), half, args.seconds).await),
            None => None,
        };
        println!(
            "round {round}: closed loop c={}: direct {:.0} ops/s (p99 {:.0} us, {} errors), proxy {:.0} ops/s (p99 {:.0} us, {} errors), ratio {:.3}, proxy CPU {:.1} us/request; open loop at {:.0} ops/s: direct p50 {:.0} p99 {:.0} us, proxy p50 {:.0} p99 {:.0} us",
            args.concurrency, d.ops_per_sec, d.p99_us, d.errors, p.ops_per_sec, p.p99_us, p.errors,
            p.ops_per_sec / d.ops_per_sec, closed_cost.cpu_us(), half, dl.p50_us, dl.p99_us, pl.p50_us, pl.p99_us
        );
        if let Some(dd) = dd {
            println!(
                "round {round}: closed loop c={}: client writing to both clusters itself {:.0} ops/s ({} errors), proxy/that {:.3}",
                args.concurrency, dd.ops_per_sec, dd.errors, p.ops_per_sec / dd.ops_per_sec
            );
            dual_tput.push(dd.ops_per_sec);
            dual_ratio.push(p.ops_per_sec / dd.ops_per_sec);
        }
        if let Some(ddl) = ddl {
            println!(
                "round {round}: open loop at {half:.0} ops/s: client writing to both itself p50 {:.0} p99 {:.0} us",
                ddl.p50_us, ddl.p99_us
            );
            dual50.push(ddl.p50_us);
            dual99.push(ddl.p99_us);
            dual_added99.push(pl.p99_us - ddl.p99_us);
        }
        if let Some(relay) = &mut relay {
            relay
                .round(&args, callgrind.as_ref(), round, &d, half)
                .await?;
        }
        for peer in &mut peers {
            peer.round(&args, None, round, &d, half).await?;
        }
        d_tput.push(d.ops_per_sec);
        p_tput.push(p.ops_per_sec);
        ratio.push(p.ops_per_sec / d.ops_per_sec);
        d50.push(dl.p50_us);
        d99.push(dl.p99_us);
        p50.push(pl.p50_us);
        p99.push(pl.p99_us);
        added99.push(pl.p99_us - dl.p99_us);
    }
    // Memory with many client connections.
    let many = session(&proxy_addr, args.rss_connections).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wm = Arc::new(workload(&many, &ks, args.write_percent).await?);
    let many = Arc::new(many);
    closed_loop(many.clone(), wm.clone(), args.concurrency, 3).await;
    let rss = Resident::of(pid);
    for peer in &mut peers {
        peer.measure_memory(&args, &ks).await?;
    }
    let soak = soak(&args, callgrind.as_ref(), pid, many.clone(), wm, open_rate).await?;
    let mirrored = reqwest_metric(&args.proxy_ip, "ferry_proxy_mirrored_writes_total").await;
    let spooled = reqwest_metric(
        &args.proxy_ip,
        "ferry_proxy_mirrored_writes_total{outcome=\"spooled\"}",
    )
    .await;
    let waits = reqwest_metric(&args.proxy_ip, "ferry_proxy_mirror_waits_total").await;
    println!();
    println!(
        "| metric (median of {} rounds) | direct | through proxy |",
        args.rounds
    );
    println!("|---|---|---|");
    println!(
        "| throughput, closed loop, {} in flight | {:.0} ops/s | {:.0} ops/s (ratio {:.3}) |",
        args.concurrency,
        median(d_tput),
        median(p_tput),
        median(ratio)
    );
    if !dual_tput.is_empty() {
        println!(
            "| throughput, closed loop, {} in flight, the client writing to both clusters itself | {:.0} ops/s | ratio {:.3} |",
            args.concurrency,
            median(dual_tput),
            median(dual_ratio)
        );
    }
    for peer in &peers {
        peer.report(&args);
    }
    println!(
        "| p50 at half saturation (open loop) | {:.0} us | {:.0} us |",
        median(d50),
        median(p50)
    );
    println!(
        "| p99 at half saturation (open loop) | {:.0} us | {:.0} us (added {:.0} us) |",
        median(d99),
        median(p99),
        median(added99)
    );
    if !dual99.is_empty() {
        println!(
            "| p50 / p99 at the same rate, the client writing to both clusters itself | {:.0} / {:.0} us | added to p99 by the proxy: {:.0} us |",
            median(dual50),
            median(dual99),
            median(dual_added99)
        );
    }
    println!(
        "| proxy CPU time per request | | {:.1} us |",
        median(closed_costs.costs.iter().map(PerRequest::cpu_us).collect())
    );
    println!(
        "| proxy CPU time per request, open loop at {:.0} % of saturation | | {:.1} us |",
        args.open_fraction * 100.0,
        median(open_costs.costs.iter().map(PerRequest::cpu_us).collect())
    );
    let closed_kind = format!("closed loop, {} in flight", args.concurrency);
    let open_kind = format!("open loop at {:.0} %", args.open_fraction * 100.0);
    let mut cost_rows = vec![
        ("proxy", &closed_kind, &closed_costs),
        ("proxy", &open_kind, &open_costs),
    ];
    for other in relay.iter().chain(&peers) {
        cost_rows.push((&other.name, &closed_kind, &other.closed));
        cost_rows.push((&other.name, &open_kind, &other.open));
    }
    for (who, loop_kind, costs) in cost_rows {
        if costs.costs.is_empty() {
            continue;
        }
        let of = |f: fn(&PerRequest) -> f64| median(costs.costs.iter().map(f).collect());
        println!(
            "| {who} per request, {loop_kind}: CPU (user / kernel), wake-ups | | {:.1} us ({:.1} / {:.1}), {:.2} |",
            of(PerRequest::cpu_us),
            of(|c| c.user_us),
            of(|c| c.system_us),
            of(|c| c.sleeps),
        );
        if !costs.instructions.is_empty() {
            println!(
                "| {who} per request, {loop_kind}: user-space instructions (callgrind) | | {:.0} |",
                median(costs.instructions.clone())
            );
        }
    }
    println!(
        "| proxy RSS with {} driver connections | | {} |",
        args.rss_connections, rss
    );
    if let Some((first, last, max)) = soak {
        println!(
            "| proxy RSS over a {}-minute open loop at {open_rate:.0} ops/s, {} connections: first minute, last, highest | | {first:.1}, {last:.1}, {max:.1} MiB |",
            args.soak_minutes, args.rss_connections
        );
    }
    println!("| writes mirrored to the target (all phases) | | {mirrored:.0} |");
    println!("| of which spooled (target too slow or down) | | {spooled:.0} |");
    println!("| client writes held back by --mirror-max-in-flight | | {waits:.0} |");
    if args.drain_records > 0 {
        drop(proxy);
        let one = spool_drain(&args, &proxy_bin, &ks, args.drain_records, 1).await?;
        let many = spool_drain(&args, &proxy_bin, &ks, args.drain_records, 128).await?;
        println!(
            "| spool replay after an outage, {} records: one at a time | | {one:.0} records/s |",
            args.drain_records
        );
        println!(
            "| spool replay after an outage, {} records: --replay-window 128 | | {many:.0} records/s ({:.1}x) |",
            args.drain_records,
            many / one
        );
    }
    let _ = source_admin
        .query_unpaged(format!("DROP KEYSPACE {ks}"), &[])
        .await;
    let _ = target_admin
        .query_unpaged(format!("DROP KEYSPACE {ks}"), &[])
        .await;
    let _ = std::fs::remove_dir_all(&spool);
    Ok(())
}

/// Reads one metric (summed over labels) from the proxy's admin port.
async fn reqwest_metric(ip: &str, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(format!("{ip}:28000")).await else {
        return 0.0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
