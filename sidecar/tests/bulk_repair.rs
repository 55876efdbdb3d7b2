//! Injected differences (a deleted target row, a changed value, an extra
//! row, a row never copied, a dropped cell) are found, repaired, and a
//! second validation finds none; sampling is reproducible.

mod bulk_support;

use bulk_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_differences_are_found_and_repaired() {
    let bed = bed().await;
    let ks = unique("repair");
    create_on_both(&bed, &ks, &[
        "CREATE TABLE {ks}.t (k int, c int, v text, w int, l list<int>, s int static, PRIMARY KEY (k, c))",
    ]).await;
    let insert = bed.source
        .prepare(format!("INSERT INTO {ks}.t (k, c, v, w, l) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP 1700000000000000"))
        .await
        .expect("prepare");
    for i in 0..500i32 {
        bed.source
            .execute_unpaged(&insert, (i % 50, i, format!("v{i}"), i, vec![i]))
            .await
            .expect("insert");
    }
    exec(
        &bed.source,
        &format!("INSERT INTO {ks}.t (k, s) VALUES (777, 1) USING TIMESTAMP 1700000000000000"),
    )
    .await;
    let report = run_backfill(&bed, &["--keyspaces", &ks, "--job-id", &ks]).await;
    assert_eq!(report.rows, 501);
    assert_eq!(
        run_validate(&bed, &["--keyspaces", &ks])
            .await
            .differences(),
        0
    );

    let t = &bed.target;
    // A deleted target row (its tombstone is newer than the source data).
    exec(t, &format!("DELETE FROM {ks}.t WHERE k = 1 AND c = 1")).await;
    // A changed value, newer on the target.
    exec(
        t,
        &format!("UPDATE {ks}.t SET v = 'changed' WHERE k = 2 AND c = 2"),
    )
    .await;
    // A changed value, older on the target (a stale copy).
    exec(
        &bed.source,
        &format!(
            "INSERT INTO {ks}.t (k, c, w) VALUES (6000, 1, 1) USING TIMESTAMP 1700000000000000"
        ),
    )
    .await;
    exec(
        t,
        &format!(
            "INSERT INTO {ks}.t (k, c, w) VALUES (6000, 1, -1) USING TIMESTAMP 1600000000000000"
        ),
    )
    .await;
    // A cell only the target has.
    exec(
        t,
        &format!("UPDATE {ks}.t USING TIMESTAMP 1700000000000000 SET s = 5 WHERE k = 4"),
    )
    .await;
    // An extra row.
    exec(
        t,
        &format!("INSERT INTO {ks}.t (k, c, v) VALUES (9999, 1, 'extra')"),
    )
    .await;
    // A row the backfill never saw, and a static-only partition lost.
    exec(&bed.source, &format!("INSERT INTO {ks}.t (k, c, v) VALUES (5000, 1, 'late') USING TIMESTAMP 1700000000000000")).await;
    exec(
        t,
        &format!("DELETE s FROM {ks}.t USING TIMESTAMP 1700000000000000 WHERE k = 777"),
    )
    .await;

    // Found, not repaired: the CLI exits non-zero and the summary says why.
    let summary = std::env::temp_dir().join(format!("{ks}-summary.json"));
    let mut argv = vec!["validate".to_owned()];
    argv.extend(connection_flags(&bed));
    argv.extend([
        "--keyspaces".to_owned(),
        ks.clone(),
        "--summary-file".to_owned(),
        summary.display().to_string(),
    ]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-sidecar"))
        .args(&argv)
        .output()
        .await
        .expect("run ferry-sidecar");
    assert!(!out.status.success(), "differences must fail the run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unresolved differences"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("json");
    assert_eq!(json["mode"], "validate");
    // Missing: (1,1), (5000,1), the static row of 777. Mismatched: (2,2),
    // (6000,1) and every row of partition 4 (its static cell). Extra: (9999,1).
    assert_eq!(json["missing"], 3, "{json}");
    assert_eq!(json["extra"], 1, "{json}");
    let rows_in_4 = 10;
    assert_eq!(json["mismatched"], 2 + rows_in_4, "{json}");
    assert_eq!(json["rowsCompared"], 501 + 2 + 1, "{json}");
    assert!(
        json["examples"]["extra"][0]
            .as_str()
            .is_some_and(|e| e.contains("k=9999")),
        "{json}"
    );
    assert!(json.to_string().len() < 4096);
    let per_table = &json["tables"][format!("{ks}.t")];
    assert_eq!(per_table["missing"], 3, "{json}");
    assert_eq!(per_table["extra"], 1, "{json}");
    assert_eq!(per_table["rowsCompared"], 504, "{json}");

    // Sampling: the same seed picks the same ranges, and only some.
    let a = run_validate(
        &bed,
        &[
            "--keyspaces",
            &ks,
            "--mode",
            "sample",
            "--sample-percent",
            "25",
            "--seed",
            "7",
        ],
    )
    .await;
    let b = run_validate(
        &bed,
        &[
            "--keyspaces",
            &ks,
            "--mode",
            "sample",
            "--sample-percent",
            "25",
            "--seed",
            "7",
        ],
    )
    .await;
    assert_eq!(a, b);
    assert!(a.ranges > 0 && a.ranges < 256 / 2, "{a:?}");

    let repaired = run_validate(&bed, &["--keyspaces", &ks, "--repair"]).await;
    assert_eq!(repaired.missing, 3, "{repaired:?}");
    assert_eq!(repaired.extra, 1, "{repaired:?}");
    assert_eq!(repaired.repaired, repaired.differences(), "{repaired:?}");

    let after = run_validate(&bed, &["--keyspaces", &ks]).await;
    assert_eq!(after.differences(), 0, "{after:?}");
    assert_eq!(after.compared, 503, "{after:?}");
    assert_eq!(
        scalar::<String>(t, &format!("SELECT v FROM {ks}.t WHERE k = 2 AND c = 2"))
            .await
            .as_deref(),
        Some("v2")
    );
    assert_eq!(
        scalar::<i32>(t, &format!("SELECT w FROM {ks}.t WHERE k = 6000 AND c = 1")).await,
        Some(1)
    );
    assert_eq!(
        scalar::<i64>(
            t,
            &format!("SELECT WRITETIME(w) FROM {ks}.t WHERE k = 6000 AND c = 1")
        )
        .await,
        Some(1700000000000000)
    );
    assert_eq!(
        scalar::<i32>(t, &format!("SELECT s FROM {ks}.t WHERE k = 4 LIMIT 1")).await,
        None
    );
    assert_eq!(
        scalar::<String>(t, &format!("SELECT v FROM {ks}.t WHERE k = 9999 AND c = 1")).await,
        None
    );
}

/// A difference whose WRITETIME is after the validation's start (here a
/// source write not yet mirrored, stamped in the future so that it is
/// certainly "during" the run) is re-checked and counted as in flight,
/// never as a difference, and never repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_during_validation_are_in_flight() {
    let bed = bed().await;
    let ks = unique("inflight");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int, c int, v text, PRIMARY KEY (k, c))"],
    )
    .await;
    for i in 0..20 {
        exec(
            &bed.source,
            &format!("INSERT INTO {ks}.t (k, c, v) VALUES ({i}, 0, 'v') USING TIMESTAMP 1700000000000000"),
        )
        .await;
    }
    run_backfill(&bed, &["--keyspaces", &ks, "--job-id", &ks]).await;
    let future = now_micros() + 3_600_000_000;
    exec(
        &bed.source,
        &format!("INSERT INTO {ks}.t (k, c, v) VALUES (100, 0, 'new') USING TIMESTAMP {future}"),
    )
    .await;
    exec(
        &bed.source,
        &format!("UPDATE {ks}.t USING TIMESTAMP {future} SET v = 'changed' WHERE k = 1 AND c = 0"),
    )
    .await;
    exec(
        &bed.target,
        &format!(
            "INSERT INTO {ks}.t (k, c, v) VALUES (200, 0, 'only target') USING TIMESTAMP {future}"
        ),
    )
    .await;
    // And one real difference, for contrast.
    exec(
        &bed.target,
        &format!("DELETE FROM {ks}.t USING TIMESTAMP 1700000000000000 WHERE k = 2 AND c = 0"),
    )
    .await;

    let report = run_validate(&bed, &["--keyspaces", &ks, "--repair"]).await;
    assert_eq!(report.in_flight, 3, "{report:?}");
    assert_eq!(report.missing, 1, "{report:?}");
    assert_eq!(report.differences(), 1, "{report:?}");
    assert_eq!(report.repaired, 1, "{report:?}");
    // In-flight rows are left alone.
    assert_eq!(
        scalar::<String>(
            &bed.target,
            &format!("SELECT v FROM {ks}.t WHERE k = 100 AND c = 0")
        )
        .await,
        None
    );
}
