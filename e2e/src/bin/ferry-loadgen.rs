//! `ferry-loadgen`: the example application. It writes rows with sequential
//! ids and reads earlier ones back, continuously, at a consistency level
//! (QUORUM by default), and counts exactly what it was told was written, so a
//! migration can be checked against it: every acknowledged id must be on the
//! target, and no request may fail while pods are rolled.
//!
//! Every `--report-secs` it prints one JSON line of counters to stdout (the
//! last line is the final tally after SIGTERM/SIGINT or `--duration-secs`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, RequestAttemptError};
use scylla::policies::retry::{
    DefaultRetrySession, RequestInfo, RetryDecision, RetryPolicy, RetrySession,
};
use scylla::statement::Consistency;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-loadgen",
    about = "Writes and reads continuously, counting every acknowledged write"
)]
struct Args {
    /// Contact points, `host:port`, comma-separated.
    #[arg(
        long,
        env = "LOADGEN_CONTACT_POINTS",
        value_delimiter = ',',
        required = true
    )]
    contact_points: Vec<String>,
    /// Keyspace (created with `--replication` if missing).
    #[arg(long, env = "LOADGEN_KEYSPACE", default_value = "ferry_demo")]
    keyspace: String,
    /// Replication map of the keyspace, as CQL.
    #[arg(
        long,
        env = "LOADGEN_REPLICATION",
        default_value = "{'class': 'SimpleStrategy', 'replication_factor': 3}"
    )]
    replication: String,
    /// Writes per second (reads are half as many).
    #[arg(long, env = "LOADGEN_RATE", default_value_t = 50)]
    rate: u64,
    /// Stop after this many seconds (0: run until SIGTERM).
    #[arg(long, env = "LOADGEN_DURATION_SECS", default_value_t = 0)]
    duration_secs: u64,
    /// Seconds between counter lines.
    #[arg(long, env = "LOADGEN_REPORT_SECS", default_value_t = 5)]
    report_secs: u64,
    /// Only create the keyspace and table (e.g. on the target), then exit.
    #[arg(long)]
    schema_only: bool,
    /// Instead of writing: check that ids 0..N (less `--skip-ids`) are all
    /// present, print `{"checked":..,"missing":..}` and exit non-zero if any is missing.
    #[arg(long, value_name = "N")]
    verify_upto: Option<u64>,
    /// Ids whose write failed (not owed), with `--verify-upto`.
    #[arg(long, value_delimiter = ',')]
    skip_ids: Vec<u64>,
    /// `quorum`, `local_quorum`, `one` or `all`.
    #[arg(long, env = "LOADGEN_CONSISTENCY", default_value = "quorum")]
    consistency: String,
}

#[derive(Default)]
struct Counters {
    next_id: AtomicU64,
    acked: AtomicU64,
    write_failures: AtomicU64,
    reads: AtomicU64,
    read_failures: AtomicU64,
    read_missing: AtomicU64,
    /// Ids whose write failed (bounded): the only ones not owed to the target.
    failed_ids: Mutex<BTreeSet<u64>>,
    /// Ids whose write has not been answered yet (a write retried through a
    /// node restart can take seconds): reading one back proves nothing.
    pending_ids: Mutex<BTreeSet<u64>>,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn report(&self, started: Instant, last: bool) -> String {
        let failed: Vec<u64> = self
            .failed_ids
            .lock()
            .map(|f| f.iter().copied().take(100).collect())
            .unwrap_or_default();
        json!({
            "final": last,
            "seconds": started.elapsed().as_secs(),
            "issued": self.next_id.load(Ordering::SeqCst),
            "acked": self.acked.load(Ordering::SeqCst),
            "writeFailures": self.write_failures.load(Ordering::SeqCst),
            "reads": self.reads.load(Ordering::SeqCst),
            "readFailures": self.read_failures.load(Ordering::SeqCst),
            "readMissing": self.read_missing.load(Ordering::SeqCst),
            "failedIds": failed,
            "lastError": self.last_error.lock().ok().and_then(|e| e.clone()),
        })
        .to_string()
    }
}

fn consistency(name: &str) -> anyhow::Result<Consistency> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "quorum" => Consistency::Quorum,
        "local_quorum" => Consistency::LocalQuorum,
        "all" => Consistency::All,
        other => anyhow::bail!("unknown consistency {other}"),
    })
}

/// Retries an idempotent request that timed out, was refused or lost its
/// connection, on the next node, up to three times; everything else as the
/// driver's default policy does. This is how an application should treat
/// idempotent writes while a cluster restarts node by node: with one node
/// down, a QUORUM write needs both others, and one slow answer is a timeout.
#[derive(Debug)]
struct RetryIdempotent;

struct RetryIdempotentSession {
    retries: u32,
    default: DefaultRetrySession,
}

impl RetryPolicy for RetryIdempotent {
    fn new_session(&self) -> Box<dyn RetrySession> {
        Box::new(RetryIdempotentSession {
            retries: 0,
            default: DefaultRetrySession::new(),
        })
    }
}

impl RetrySession for RetryIdempotentSession {
    fn decide_should_retry(&mut self, info: RequestInfo) -> RetryDecision {
        let transient = matches!(
            info.error,
            RequestAttemptError::BrokenConnectionError(_)
                | RequestAttemptError::DbError(
                    DbError::WriteTimeout { .. }
                        | DbError::ReadTimeout { .. }
                        | DbError::Unavailable { .. }
                        | DbError::Overloaded
                        | DbError::IsBootstrapping,
                    _
                )
        );
        if info.is_idempotent && transient && self.retries < 3 {
            self.retries += 1;
            return RetryDecision::RetryNextTarget(None);
        }
        self.default.decide_should_retry(info)
    }

    fn reset(&mut self) {
        self.retries = 0;
        self.default.reset();
    }
}

async fn connect(args: &Args) -> anyhow::Result<Session> {
    let profile = ExecutionProfile::builder()
        .retry_policy(Arc::new(RetryIdempotent))
        .build();
    // Cassandra may still be starting: retry for a while.
    let mut last = None;
    for _ in 0..60 {
        match SessionBuilder::new()
            .known_nodes(&args.contact_points)
            .default_execution_profile_handle(profile.clone().into_handle())
            .build()
            .await
        {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    anyhow::bail!(
        "cannot connect to {:?}: {}",
        args.contact_points,
        last.unwrap_or_default()
    )
}

/// Reads every owed id back, in parallel batches, and reports what is missing.
async fn verify(
    session: &Session,
    ks: &str,
    upto: u64,
    skip: &[u64],
    cl: Consistency,
) -> anyhow::Result<()> {
    let mut select = session
        .prepare(format!("SELECT id FROM {ks}.events WHERE id = ?"))
        .await?;
    select.set_consistency(cl);
    let skip: BTreeSet<u64> = skip.iter().copied().collect();
    let ids: Vec<u64> = (0..upto).filter(|i| !skip.contains(i)).collect();
    let mut missing = Vec::new();
    for chunk in ids.chunks(256) {
        let lookups = chunk.iter().map(|&id| {
            let select = select.clone();
            async move { (id, session.execute_unpaged(&select, (id as i64,)).await) }
        });
        for (id, result) in futures::future::join_all(lookups).await {
            let found = result?
                .into_rows_result()
                .map(|r| r.rows_num() > 0)
                .unwrap_or(false);
            if !found {
                missing.push(id);
            }
        }
    }
    println!(
        "{}",
        json!({"checked": ids.len(), "missing": missing.len(), "missingIds": missing.iter().take(50).collect::<Vec<_>>()})
    );
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {} acknowledged ids are missing",
            missing.len(),
            ids.len()
        )
    }
}

/// This client's clock as a CQL timestamp.
fn now_millis() -> scylla::value::CqlTimestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    scylla::value::CqlTimestamp(millis)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cl = consistency(&args.consistency)?;
    let session = Arc::new(connect(&args).await?);
    let ks = &args.keyspace;
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                args.replication
            ),
            &[],
        )
        .await
        .context("creating the keyspace")?;
    session
        .query_unpaged(format!("CREATE TABLE IF NOT EXISTS {ks}.events (id bigint PRIMARY KEY, payload text, written_at timestamp)"), &[])
        .await
        .context("creating the table")?;
    session
        .await_schema_agreement()
        .await
        .context("schema agreement")?;
    if args.schema_only {
        println!("{}", json!({"schema": format!("{ks}.events")}));
        return Ok(());
    }
    if let Some(upto) = args.verify_upto {
        return verify(&session, ks, upto, &args.skip_ids, cl).await;
    }
    let mut insert = session
        .prepare(format!(
            // The time comes from this client, not from `toTimestamp(now())`:
            // a prepared now() is evaluated by each cluster on its own, so
            // the proxy's mirrored copy would differ (docs/proxy.md).
            "INSERT INTO {ks}.events (id, payload, written_at) VALUES (?, ?, ?)"
        ))
        .await?;
    insert.set_consistency(cl);
    // Both statements are idempotent (an insert of fixed values, a read), and
    // saying so lets the driver retry them on another node when one is
    // restarting, as it is during any rolling restart (Ferry's roll included).
    insert.set_is_idempotent(true);
    let mut select = session
        .prepare(format!("SELECT payload FROM {ks}.events WHERE id = ?"))
        .await?;
    select.set_consistency(cl);
    select.set_is_idempotent(true);

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    {
        let (counters, stop) = (counters.clone(), stop.clone());
        let every = Duration::from_secs(args.report_secs.max(1));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(every).await;
                println!("{}", counters.report(started, false));
            }
        });
    }
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    let deadline =
        (args.duration_secs > 0).then(|| started + Duration::from_secs(args.duration_secs));
    let mut inflight = tokio::task::JoinSet::new();
    while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        ticker.tick().await;
        let id = counters.next_id.fetch_add(1, Ordering::SeqCst);
        let (session, insert, select, counters) = (
            session.clone(),
            insert.clone(),
            select.clone(),
            counters.clone(),
        );
        if let Ok(mut p) = counters.pending_ids.lock() {
            p.insert(id);
        }
        inflight.spawn(async move {
            let written = session
                .execute_unpaged(&insert, (id as i64, format!("event-{id}"), now_millis()))
                .await;
            if let Ok(mut p) = counters.pending_ids.lock() {
                p.remove(&id);
            }
            match written {
                Ok(_) => {
                    counters.acked.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    counters.write_failures.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut f) = counters.failed_ids.lock() {
                        f.insert(id);
                    }
                    if let Ok(mut l) = counters.last_error.lock() {
                        *l = Some(e.to_string());
                    }
                }
            }
            if id % 2 == 0 && id > 0 {
                let earlier = id / 2;
                counters.reads.fetch_add(1, Ordering::SeqCst);
                // Still unanswered when the read starts: the read may run
                // before the write, so a miss would prove nothing.
                let unanswered = counters
                    .pending_ids
                    .lock()
                    .map(|p| p.contains(&earlier))
                    .unwrap_or(false);
                match session.execute_unpaged(&select, (earlier as i64,)).await {
                    Ok(r) => {
                        let found = r
                            .into_rows_result()
                            .map(|rows| rows.rows_num() > 0)
                            .unwrap_or(false);
                        let failed_write = counters
                            .failed_ids
                            .lock()
                            .map(|f| f.contains(&earlier))
                            .unwrap_or(false);
                        if !found && !failed_write && !unanswered {
                            counters.read_missing.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(e) => {
                        counters.read_failures.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut l) = counters.last_error.lock() {
                            *l = Some(e.to_string());
                        }
                    }
                }
            }
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    println!("{}", counters.report(started, true));
    Ok(())
}
