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
