//! Other dual-write proxies measured beside Ferry in the same run
//! (`--peer NAME=COMMAND`): DataStax's ZDM proxy, Azure's cassandra-proxy,
//! or any CQL proxy in front of the same source node, writing to the same
//! target. Each gets the same driver, the same workload, the same closed
//! and open loops and the same `/proc` accounting as Ferry, in the same
//! rounds, so that their CPU time per request and their memory stand next
//! to Ferry's under one machine's conditions (`e2e/bench/peers.sh` builds
//! the two named above and runs them).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_sidecar::procstat::Resident;
use scylla::client::session::Session;

use crate::{
    closed_loop, measured, open_loop, proxied_session, workload, Args, Callgrind, CostLog, Phase,
    ProbeTarget, ProxyChild, Workload,
};

/// The first port the peers listen on (on `--proxy-ip`), one each in
/// order; Ferry has 29042 and the byte relay 29043.
const FIRST_PEER_PORT: u16 = 29044;

/// A peer's metrics port, `{admin_port}`, is its CQL port plus this (30044
/// and up), away from Ferry's admin port 28000.
const ADMIN_PORT_OFFSET: u16 = 1000;

/// How long a peer may take to listen: a JVM proxy starts in seconds, and
/// ZDM connects to both clusters first.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One `--peer NAME=COMMAND`.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    name: String,
    command: String,
}

impl std::str::FromStr for PeerSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        match spec.split_once('=') {
            Some((name, command)) if !name.is_empty() && !command.trim().is_empty() => {
                Ok(PeerSpec {
                    name: name.to_owned(),
                    command: command.to_owned(),
                })
            }
            _ => Err(format!("expected NAME=COMMAND, got {spec:?}")),
        }
    }
}

impl PeerSpec {
    /// The command with its placeholders filled in.
    fn expanded(&self, listen: &str, port: u16, source: &str, target: &str) -> String {
        let (source_ip, source_port) = split(source);
        let (target_ip, target_port) = split(target);
        self.command
            .replace("{ip}", listen)
            .replace("{port}", &port.to_string())
            .replace("{admin_port}", &(port + ADMIN_PORT_OFFSET).to_string())
            .replace("{source_ip}", source_ip)
            .replace("{source_port}", source_port)
            .replace("{target_ip}", target_ip)
            .replace("{target_port}", target_port)
    }
}

fn split(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').unwrap_or((addr, "9042"))
}

/// A running peer (or the byte relay, measured the same way), its session
/// and what each round measured of it.
pub struct Peer {
    /// As the report names it.
    pub name: String,
    /// As `--probe`'s `{who}` names it.
    probe_name: String,
    child: ProxyChild,
    session: Arc<Session>,
    workload: Arc<Workload>,
    addr: String,
    source: String,
    throughput: Vec<f64>,
    ratio: Vec<f64>,
    errors: u64,
    pub closed: CostLog,
    pub open: CostLog,
    rss: Option<Resident>,
}

impl Peer {
    /// Starts the `index`th peer (`--peer`) and opens its session and
    /// workload on keyspace `ks` (already made on both clusters).
    pub async fn start(
        args: &Args,
        spec: &PeerSpec,
        index: usize,
        ks: &str,
    ) -> anyhow::Result<Self> {
        let port = FIRST_PEER_PORT + u16::try_from(index).context("too many peers")?;
        let command = spec.expanded(&args.proxy_ip, port, &args.source, &args.target);
        let addr = format!("{}:{port}", args.proxy_ip);
        // A proxy left over from an interrupted run would answer in this
        // one's place.
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            bail!(
                "something already listens on {addr}, where the peer {} is to listen",
                spec.name
            );
        }
        println!("peer {}: {command}", spec.name);
        // `exec`, so that the measured pid is the proxy's own, not a shell's.
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting the peer {}", spec.name))?;
        let mut child = ProxyChild(child);
        wait_for(&spec.name, &mut child.0, &addr).await?;
        Peer::running(&spec.name, &spec.name, child, addr, args, ks).await
    }

    /// A peer whose process (`child`) listens at `addr` already: opens its
    /// session and workload on keyspace `ks` (made on both clusters).
    pub async fn running(
        name: &str,
        probe_name: &str,
        child: ProxyChild,
        addr: String,
        args: &Args,
        ks: &str,
    ) -> anyhow::Result<Self> {
        let session = Arc::new(proxied_session(&addr, &args.source, 1).await?);
        let workload = Arc::new(workload(&session, ks, args.write_percent).await?);
        Ok(Peer {
            name: name.to_owned(),
            probe_name: probe_name.to_owned(),
            child,
            session,
            workload,
            addr,
            source: args.source.clone(),
            throughput: vec![],
            ratio: vec![],
            errors: 0,
            closed: CostLog::default(),
            open: CostLog::default(),
            rss: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Fails if the peer has exited: its `/proc` would then read as a
    /// process that costs nothing.
    fn alive(&mut self) -> anyhow::Result<()> {
        match self.child.0.try_wait().context("polling a peer")? {
            Some(status) => bail!("the peer {} exited during the run: {status}", self.name),
            None => Ok(()),
        }
    }

    /// Unmeasured load, as every path gets before the first round.
    pub async fn warm_up(&self, args: &Args) {
        closed_loop(
            self.session.clone(),
            self.workload.clone(),
            args.concurrency,
            args.warmup_seconds,
        )
        .await;
    }

    /// One round: the closed loop (its throughput against `direct`'s of
    /// the same round) and the open loop at `rate`, under `callgrind`'s
    /// counts when the process runs under it (the relay of a
    /// `--callgrind` run).
    pub async fn round(
        &mut self,
        args: &Args,
        callgrind: Option<&Callgrind>,
        round: usize,
        direct: &Phase,
        rate: f64,
    ) -> anyhow::Result<()> {
        let pid = self.pid();
        let closed = measured(
            args,
            callgrind,
            pid,
            ProbeTarget {
                who: &self.probe_name,
                phase: "closed",
                round,
            },
            closed_loop(
                self.session.clone(),
                self.workload.clone(),
                args.concurrency,
                args.seconds,
            ),
        )
        .await?;
        let open = measured(
            args,
            callgrind,
            pid,
            ProbeTarget {
                who: &self.probe_name,
                phase: "open",
                round,
            },
            open_loop(
                self.session.clone(),
                self.workload.clone(),
                rate,
                args.seconds,
            ),
        )
        .await?;
        self.alive()?;
        println!(
            "round {round}: {}: closed loop c={} {:.0} ops/s ({} errors), per request: {}; open loop at {rate:.0} ops/s ({} errors) p50 {:.0} p99 {:.0} us, per request: {}",
            self.name,
            args.concurrency,
            closed.phase.ops_per_sec,
            closed.phase.errors,
            closed.cost,
            open.phase.errors,
            open.phase.p50_us,
            open.phase.p99_us,
            open.cost
        );
        self.throughput.push(closed.phase.ops_per_sec);
        self.ratio
            .push(closed.phase.ops_per_sec / direct.ops_per_sec);
        self.errors += closed.phase.errors + open.phase.errors;
        self.closed.push(&closed);
        self.open.push(&open);
        Ok(())
    }

    /// The peer's RSS after a closed loop over `connections` driver
    /// connections (the same measurement as Ferry's).
    pub async fn measure_memory(&mut self, args: &Args, ks: &str) -> anyhow::Result<()> {
        let many = Arc::new(proxied_session(&self.addr, &self.source, args.rss_connections).await?);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let w = Arc::new(workload(&many, ks, args.write_percent).await?);
        closed_loop(many.clone(), w, args.concurrency, 3).await;
        self.alive()?;
        // Read while the connections are still open, as Ferry's is.
        self.rss = Some(Resident::of(self.pid()));
        drop(many);
        Ok(())
    }

    /// The peer's rows of the report's table (the cost rows are printed
    /// with Ferry's, from [`Peer::closed`] and [`Peer::open`]).
    pub fn report(&self, args: &Args) {
        println!(
            "| throughput, closed loop, {} in flight, through {} | | {:.0} ops/s (ratio to direct {:.3}; {} errors in all its phases) |",
            args.concurrency,
            self.name,
            crate::median(self.throughput.clone()),
            crate::median(self.ratio.clone()),
            self.errors
        );
        if let Some(rss) = &self.rss {
            println!(
                "| {} RSS with {} driver connections | | {rss} |",
                self.name, args.rss_connections
            );
        }
    }
}

/// Waits until the peer listens at `addr`, or fails if it exits first.
async fn wait_for(name: &str, child: &mut Child, addr: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < START_TIMEOUT {
        if let Some(status) = child.try_wait().context("polling a peer")? {
            bail!("the peer {name} exited before it listened on {addr}: {status}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the peer {name} did not listen on {addr} within {START_TIMEOUT:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_spec_fills_in_its_addresses() {
        let spec: PeerSpec = "zdm=env ZDM_PROXY_LISTEN_ADDRESS={ip} ZDM_PROXY_LISTEN_PORT={port} \
             ZDM_ORIGIN_CONTACT_POINTS={source_ip} ZDM_ORIGIN_PORT={source_port} \
             ZDM_TARGET_CONTACT_POINTS={target_ip} ZDM_TARGET_PORT={target_port} \
             ZDM_METRICS_PORT={admin_port} zdm-proxy"
            .parse()
            .expect("a valid spec");
        assert_eq!(spec.name, "zdm");
        assert_eq!(
            spec.expanded("127.0.0.49", 29044, "127.0.0.11:9042", "127.0.0.21:9043"),
            "env ZDM_PROXY_LISTEN_ADDRESS=127.0.0.49 ZDM_PROXY_LISTEN_PORT=29044 \
             ZDM_ORIGIN_CONTACT_POINTS=127.0.0.11 ZDM_ORIGIN_PORT=9042 \
             ZDM_TARGET_CONTACT_POINTS=127.0.0.21 ZDM_TARGET_PORT=9043 \
             ZDM_METRICS_PORT=30044 zdm-proxy"
        );
    }

    #[test]
    fn a_peer_spec_needs_a_name_and_a_command() {
        for bad in ["zdm", "=zdm-proxy", "zdm=", "zdm=  "] {
            assert!(bad.parse::<PeerSpec>().is_err(), "{bad:?} was accepted");
        }
    }
}
