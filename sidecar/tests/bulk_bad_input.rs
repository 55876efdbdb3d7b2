//! Bad input: a clear error naming the problem, a non-zero exit, nothing
//! written.

mod bulk_support;

use bulk_support::*;

/// Runs the CLI, optionally against another target; returns (code, stderr).
async fn cli(
    bed: &Bed,
    mode: &str,
    extra: &[&str],
    replace_target: Option<&str>,
) -> (Option<i32>, String) {
    match replace_target {
        Some(target) => run_cli(bed, mode, &[("--target-contact-points", target)], extra).await,
        None => run_cli(bed, mode, &[], extra).await,
    }
}

async fn checkpoint_rows(bed: &Bed, job: &str) -> usize {
    match bed
        .target
        .query_unpaged(
            "SELECT range_start FROM ferry_meta.backfill_ranges WHERE job = ?",
            (job,),
        )
        .await
    {
        Ok(result) => result.into_rows_result().map(|r| r.rows_num()).unwrap_or(0),
        // The checkpoint table does not exist yet: nothing was written.
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_clearly_and_writes_nothing() {
    let bed = bed().await;
    let ks = unique("bad");
    create_on_both(
        &bed,
        &ks,
        &[
            "CREATE TABLE {ks}.ok (k int PRIMARY KEY, v text)",
            "CREATE TABLE {ks}.counts (k int PRIMARY KEY, n counter)",
        ],
    )
    .await;
    // Same name, different schema.
    exec(
        &bed.source,
        &format!("CREATE TABLE {ks}.drift (k int PRIMARY KEY, v text)"),
    )
    .await;
    exec(
        &bed.target,
        &format!("CREATE TABLE {ks}.drift (k int PRIMARY KEY, v int)"),
    )
    .await;
    exec(
        &bed.source,
        &format!("INSERT INTO {ks}.drift (k, v) VALUES (1, 'x')"),
    )
    .await;
    // Only on the source.
    exec(
        &bed.source,
        &format!("CREATE TABLE {ks}.only_source (k int PRIMARY KEY)"),
    )
    .await;
    // A short gc_grace_seconds on the target.
    exec(
        &bed.source,
        &format!("CREATE TABLE {ks}.short_grace (k int PRIMARY KEY)"),
    )
    .await;
    exec(
        &bed.target,
        &format!("CREATE TABLE {ks}.short_grace (k int PRIMARY KEY) WITH gc_grace_seconds = 10"),
    )
    .await;
    bed.source
        .await_schema_agreement()
        .await
        .expect("agreement");
    bed.target
        .await_schema_agreement()
        .await
        .expect("agreement");
    let job = |name: &str| format!("{ks}-{name}");

    let cases: Vec<(&str, Vec<String>, Option<&str>, &str)> = vec![
        (
            "unknown keyspace",
            vec!["--keyspaces".into(), format!("{ks}_nope")],
            None,
            "does not exist on the source",
        ),
        (
            "unknown table",
            vec!["--tables".into(), format!("{ks}.nope")],
            None,
            "does not exist on the source",
        ),
        (
            "system keyspace",
            vec!["--keyspaces".into(), "system".into()],
            None,
            "system keyspace",
        ),
        (
            "schema drift",
            vec!["--tables".into(), format!("{ks}.drift")],
            None,
            "differs between source and target: column `v`",
        ),
        (
            "missing on target",
            vec!["--tables".into(), format!("{ks}.only_source")],
            None,
            "does not exist on the target",
        ),
        (
            "counters",
            vec!["--tables".into(), format!("{ks}.counts")],
            None,
            "counter columns",
        ),
        (
            "unreachable target",
            vec![
                "--tables".into(),
                format!("{ks}.ok"),
                "--connect-wait-secs".into(),
                "0".into(),
            ],
            Some("127.0.0.99:9042"),
            "cannot connect to the target cluster at 127.0.0.99:9042",
        ),
        (
            "gc grace",
            vec![
                "--tables".into(),
                format!("{ks}.short_grace"),
                "--start-timestamp".into(),
                (now_micros() - 60_000_000).to_string(),
            ],
            None,
            "gc_grace_seconds (10)",
        ),
        (
            "bad split",
            vec![
                "--tables".into(),
                format!("{ks}.ok"),
                "--split".into(),
                "3/3".into(),
            ],
            None,
            "invalid split",
        ),
    ];
    for (name, flags, target, expected) in &cases {
        let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
        let job_id = job(&name.replace(' ', "_"));
        extra.extend(["--job-id", &job_id]);
        let (code, stderr) = cli(&bed, "backfill", &extra, *target).await;
        // Bad input exits 2, so the Job fails at once; a cluster that cannot
        // be reached may come back, so that exits 1 and the Job retries.
        let wanted = if *name == "unreachable target" { 1 } else { 2 };
        assert_eq!(code, Some(wanted), "{name}: exit code; stderr:\n{stderr}");
        assert!(
            stderr.contains(expected),
            "{name}: expected `{expected}` in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert_eq!(
            checkpoint_rows(&bed, &job_id).await,
            0,
            "{name}: nothing may be written"
        );
    }
    // The unknown table is named.
    let (_, stderr) = cli(&bed, "validate", &["--tables", &format!("{ks}.nope")], None).await;
    assert!(
        stderr.contains(&format!("table `{ks}.nope` does not exist on the source")),
        "{stderr}"
    );
    // Nothing of the drifting table reached the target.
    assert_eq!(
        scalar::<i32>(
            &bed.target,
            &format!("SELECT v FROM {ks}.drift WHERE k = 1")
        )
        .await,
        None
    );
    // Counter tables can be skipped explicitly.
    let skip_job = job("skip");
    let (ok, stderr) = cli(
        &bed,
        "backfill",
        &[
            "--keyspaces",
            &ks,
            "--exclude-tables",
            &format!("{ks}.drift,{ks}.only_source,{ks}.short_grace"),
            "--counters",
            "skip",
            "--job-id",
            &skip_job,
        ],
        None,
    )
    .await;
    assert_eq!(ok, Some(0), "{stderr}");

    // The backfill's summary (termination message).
    let summary = std::env::temp_dir().join(format!("{ks}-backfill.json"));
    let summary_flag = summary.display().to_string();
    let (ok, stderr) = cli(
        &bed,
        "backfill",
        &[
            "--tables",
            &format!("{ks}.ok"),
            "--job-id",
            &job("summary"),
            "--summary-file",
            &summary_flag,
        ],
        None,
    )
    .await;
    assert_eq!(ok, Some(0), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("json");
    assert_eq!(json["mode"], "backfill", "{json}");
    assert_eq!(json["rowsCopied"], 0, "{json}");
    assert_eq!(json["rangesDone"], json["rangesTotal"], "{json}");
    assert!(
        json["rangesTotal"].as_u64().is_some_and(|n| n >= 256),
        "{json}"
    );
    // A failed run writes its summary too.
    let (ok, _) = cli(
        &bed,
        "backfill",
        &[
            "--tables",
            &format!("{ks}.counts"),
            "--job-id",
            &job("summary2"),
            "--summary-file",
            &summary_flag,
        ],
        None,
    )
    .await;
    assert_eq!(ok, Some(2), "a counter table is bad input");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("json");
    assert_eq!(json["rangesDone"], 0, "{json}");
}

/// A backfill whose ETA crosses the migration start + gc_grace_seconds of a
/// target table warns while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_outliving_gc_grace_warns() {
    let bed = bed().await;
    let ks = unique("grace");
    exec(
        &bed.source,
        &format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', '{}': 1}}", bed.testbed.source_datacenter),
    )
    .await;
    exec(
        &bed.target,
        &format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', '{}': 1}}", bed.testbed.target_datacenter),
    )
    .await;
    exec(
        &bed.source,
        &format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)"),
    )
    .await;
    exec(
        &bed.target,
        &format!("CREATE TABLE {ks}.t (k int PRIMARY KEY, v text) WITH gc_grace_seconds = 20"),
    )
    .await;
    bed.source
        .await_schema_agreement()
        .await
        .expect("agreement");
    bed.target
        .await_schema_agreement()
        .await
        .expect("agreement");
    insert_on_source(
        &bed,
        &format!("INSERT INTO {ks}.t (k, v) VALUES (?, ?)"),
        (0..1000).map(|k| (k, "v")),
    )
    .await;
    let start = (now_micros() - 14_000_000).to_string();
    let job = format!("{ks}-grace");
    let mut argv = vec!["backfill".to_owned()];
    argv.extend(connection_flags(&bed));
    for flag in [
        "--keyspaces",
        &ks,
        "--job-id",
        &job,
        "--start-timestamp",
        &start,
        "--rows-per-second",
        "100",
    ] {
        argv.push(flag.to_owned());
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-sidecar"))
        .args(&argv)
        .env("FERRY_LOG", "warn")
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gc_grace_seconds of a target table"),
        "{stderr}"
    );
}
