//! The reverse validation (issue 15): before a roll-back from the
//! cut-over's `targetPrimary` is called safe, the source is checked against
//! the target, the target being the reference. Real source and target of
//! the test bed.

mod bulk_support;

use bulk_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverse_validation_finds_what_the_source_lacks_and_never_repairs() {
    let bed = bed().await;
    let ks = unique("reverse");
    create_on_both(
        &bed,
        &ks,
        &["CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)"],
    )
    .await;
    // Both have 0..50; the target alone has 100 (written there while it
    // was primary, say), the source alone has 200, and 7 differs.
    for session in [&bed.source, &bed.target] {
        for k in 0..50 {
            exec(
                session,
                &format!("INSERT INTO {ks}.t (k, v) VALUES ({k}, 'same') USING TIMESTAMP 1000"),
            )
            .await;
        }
    }
    exec(
        &bed.target,
        &format!("INSERT INTO {ks}.t (k, v) VALUES (100, 'target only')"),
    )
    .await;
    exec(
        &bed.source,
        &format!("INSERT INTO {ks}.t (k, v) VALUES (200, 'source only')"),
    )
    .await;
    exec(
        &bed.target,
        &format!("UPDATE {ks}.t USING TIMESTAMP 2000 SET v = 'newer on the target' WHERE k = 7"),
    )
    .await;

    let forward = run_validate(&bed, &["--keyspaces", &ks, "--recheck-limit", "0"]).await;
    assert_eq!(
        (forward.missing, forward.extra, forward.mismatched),
        (1, 1, 1),
        "forward: 200 missing on the target, 100 extra there, 7 differs: {forward:?}"
    );
    let reverse = run_validate(
        &bed,
        &["--keyspaces", &ks, "--recheck-limit", "0", "--reverse"],
    )
    .await;
    assert_eq!(
        (reverse.missing, reverse.extra, reverse.mismatched),
        (1, 1, 1),
        "reverse: 100 missing on the source, 200 extra there, 7 differs: {reverse:?}"
    );
    assert_eq!(reverse.repaired, 0);

    // Repairing in reverse would write into the source: refused as bad
    // input (exit 2), the source untouched.
    let (code, stderr) = run_cli(
        &bed,
        "validate",
        &[],
        &["--keyspaces", &ks, "--reverse", "--repair"],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot be combined with --repair"),
        "{stderr}"
    );
    let on_source: Option<i64> = scalar(
        &bed.source,
        &format!("SELECT count(*) FROM {ks}.t WHERE k = 100"),
    )
    .await;
    assert_eq!(on_source, Some(0), "the source was not written");
}

/// The target's copy of a cell may carry a newer WRITETIME than the
/// source's with the same value: a re-copied non-frozen list is written
/// 1 µs later per attempt, a repair writes at the validation's start. The
/// forward validation accepts that; the reverse one, where the target is
/// the reference, must too, or a roll-back is reported unsafe when the
/// source lacks nothing (seen in the e2e migration run of 2026-12-03: 14
/// list rows of `ferry_demo.ledger_coll`). A source newer than the target
/// with the same value still means the target missed a write: a difference
/// both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverse_validation_accepts_the_targets_newer_copies_of_the_same_values() {
    let bed = bed().await;
    let ks = unique("reverse_newer");
    create_on_both(
        &bed,
        &ks,
        &[
            "CREATE TABLE {ks}.newer_on_target (k int PRIMARY KEY, l list<int>, v text)",
            "CREATE TABLE {ks}.newer_on_source (k int PRIMARY KEY, l list<int>, v text)",
        ],
    )
    .await;
    // newer_on_target: the list re-copied 1 µs later, the text repaired
    // later still. newer_on_source: the target missed the newer writes.
    for (table, on_source, on_target) in [
        ("newer_on_target", (1000, 1000), (1001, 5000)),
        ("newer_on_source", (3000, 3000), (1000, 1000)),
    ] {
        for (session, (list_ts, text_ts)) in [(&bed.source, on_source), (&bed.target, on_target)] {
            exec(
                session,
                &format!(
                    "UPDATE {ks}.{table} USING TIMESTAMP {list_ts} SET l = [1, 2] WHERE k = 1"
                ),
            )
            .await;
            exec(
                session,
                &format!(
                    "UPDATE {ks}.{table} USING TIMESTAMP {text_ts} SET v = 'same' WHERE k = 1"
                ),
            )
            .await;
        }
    }

    for (table, expected) in [("newer_on_target", 0), ("newer_on_source", 1)] {
        let tables = format!("{ks}.{table}");
        for direction in [&[][..], &["--reverse"][..]] {
            let flags = [
                &["--tables", &tables, "--recheck-limit", "0"][..],
                direction,
            ]
            .concat();
            let report = run_validate(&bed, &flags).await;
            assert_eq!(
                (report.missing, report.extra, report.mismatched),
                (0, 0, expected),
                "{table} {direction:?}: {report:?}"
            );
        }
    }
}
