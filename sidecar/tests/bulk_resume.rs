//! A backfill killed halfway resumes without copying finished ranges again.

mod bulk_support;

use std::time::Duration;

use bulk_support::*;
use futures::StreamExt;

const ROWS: i32 = 20_000;

async fn checkpointed(bed: &Bed, job: &str) -> (i64, i64) {
    let rows = bed
        .target
        .query_unpaged(
            "SELECT status, rows FROM ferry_meta.backfill_ranges WHERE job = ?",
            (job,),
        )
        .await
        .expect("checkpoints")
        .into_rows_result()
        .expect("rows");
    let mut done = 0;
    let mut done_rows = 0;
    for row in rows.rows::<(Option<String>, Option<i64>)>().expect("typed") {
        let (status, n) = row.expect("row");
        if status.as_deref() == Some("done") {
            done += 1;
            done_rows += n.unwrap_or(0);
        }
    }
    (done, done_rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_without_recopying_finished_ranges() {
    let bed = bed().await;
    let ks = unique("resume");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int, c int, v text, PRIMARY KEY (k, c))"],
    )
    .await;
    let insert = bed
        .source
        .prepare(format!("INSERT INTO {ks}.t (k, c, v) VALUES (?, ?, ?)"))
        .await
        .expect("prepare");
    futures::stream::iter(0..ROWS)
        .map(|i| {
            let (session, insert) = (bed.source.clone(), insert.clone());
            async move {
                session
                    .execute_unpaged(&insert, (i / 4, i % 4, format!("value {i}")))
                    .await
                    .expect("insert")
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;

    let mut argv = vec!["backfill".to_owned()];
    argv.extend(connection_flags(&bed));
    for flag in [
        "--keyspaces",
        &ks,
        "--job-id",
        &ks,
        "--splits",
        "64",
        "--concurrency",
        "2",
        "--rows-per-second",
        "2500",
    ] {
        argv.push(flag.to_owned());
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-sidecar"))
        .args(&argv)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn backfill");
    // Kill it (SIGKILL: no chance to clean up) once some ranges are done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if checkpointed(&bed, &ks).await.0 >= 8 || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    child.kill().await.expect("kill");
    let (done, done_rows) = checkpointed(&bed, &ks).await;
    assert!(done >= 8, "killed after {done} ranges");

    let resumed = run_backfill(
        &bed,
        &["--keyspaces", &ks, "--job-id", &ks, "--splits", "64"],
    )
    .await;
    assert_eq!(resumed.ranges_skipped as i64, done, "{resumed:?}");
    assert_eq!(
        resumed.rows as i64,
        i64::from(ROWS) - done_rows,
        "finished ranges must not be copied again: {resumed:?}"
    );
    // Killed before the end: some ranges were left to the second run.
    assert!(done < resumed.ranges_total as i64, "{done} {resumed:?}");
    assert_eq!(
        checkpointed(&bed, &ks).await,
        (resumed.ranges_total as i64, i64::from(ROWS))
    );

    let validation = run_validate(&bed, &["--keyspaces", &ks]).await;
    assert_eq!(validation.differences(), 0, "{validation:?}");
    assert_eq!(validation.compared, ROWS as u64);
}

/// The pods of an Indexed Job (`--split i/N`, or `JOB_COMPLETION_INDEX`
/// with `--split-count`) copy disjoint shares that add up to the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_pods_share_the_ranges() {
    let bed = bed().await;
    let ks = unique("split");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)"],
    )
    .await;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"),
        (0..2000).map(|k| (k, "v")),
    )
    .await;
    let first = run_backfill(
        &bed,
        &["--keyspaces", &ks, "--job-id", &ks, "--split", "0/2"],
    )
    .await;
    let half = run_validate(&bed, &["--keyspaces", &ks]).await;
    assert_eq!(half.missing, 2000 - first.rows, "{half:?}");
    let second = run_backfill(
        &bed,
        &[
            "--keyspaces",
            &ks,
            "--job-id",
            &ks,
            "--job-completion-index",
            "1",
            "--split-count",
            "2",
        ],
    )
    .await;
    assert!(first.rows > 0 && second.rows > 0, "{first:?} {second:?}");
    assert_eq!(first.rows + second.rows, 2000);
    assert_eq!(second.ranges_skipped, 0, "the shares are disjoint");
    let validation = run_validate(&bed, &["--keyspaces", &ks]).await;
    assert_eq!(validation.differences(), 0, "{validation:?}");
}

/// A running backfill serves Prometheus metrics, and on SIGTERM (a pod
/// being deleted) exits non-zero with its summary written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_sigterm_writes_the_summary() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let bed = bed().await;
    let ks = unique("sigterm");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)"],
    )
    .await;
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"),
        (0..3000).map(|k| (k, "v")),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let summary = std::env::temp_dir().join(format!("{ks}-summary.json"));
    let mut argv = vec!["backfill".to_owned()];
    argv.extend(connection_flags(&bed));
    for flag in [
        "--keyspaces",
        &ks,
        "--job-id",
        &ks,
        "--rows-per-second",
        "300",
        "--metrics-port",
        &port.to_string(),
    ] {
        argv.push(flag.to_owned());
    }
    argv.push("--summary-file".to_owned());
    argv.push(summary.display().to_string());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-sidecar"))
        .args(&argv)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn backfill");
    let mut metrics = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            continue;
        };
        socket
            .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .expect("request");
        metrics.clear();
        socket.read_to_string(&mut metrics).await.expect("response");
        let rows = metrics
            .lines()
            .find(|l| l.starts_with("ferry_bulk_rows{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if rows > 0 {
            break;
        }
    }
    assert!(metrics.starts_with("HTTP/1.0 200 OK"), "{metrics}");
    assert!(
        metrics.contains("ferry_bulk_ranges_total{mode=\"backfill\"}"),
        "{metrics}"
    );
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(
        !exit.success(),
        "an interrupted backfill must not report success"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary written"))
            .expect("json");
    assert_eq!(json["mode"], "backfill");
    assert!(
        json["rowsCopied"]
            .as_u64()
            .is_some_and(|n| n > 0 && n < 3000),
        "{json}"
    );
    assert!(
        json["rangesDone"].as_u64() < json["rangesTotal"].as_u64(),
        "{json}"
    );
}
