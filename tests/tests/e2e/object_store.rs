//! The whole pipeline with its lake on a real S3-compatible server (Ceph's
//! RADOS Gateway, started per test by `medallion_tests::s3`): `medallion
//! check`, bronze exactly once through kill -9 and a gateway outage,
//! `optimize` while the sidecar runs, then silver and gold.

use super::refine::{gold_examples, load_odoo, odoo_workload};
use super::*;

pub(super) fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_lake_gets_every_change_once_through_kill_9_and_a_gateway_outage() {
    let env = Env::on_s3();
    let s3 = env.s3.as_ref().expect("S3 server");

    load_odoo(&env, 0.1, 31);
    env.sql("SELECT medallion.add_sources('public')");
    env.sql(&gold_examples());

    // check: the bucket is writable, honours If-None-Match, and no secret is printed.
    let out = env
        .sidecar(&["check"], &[])
        .output()
        .expect("medallion check");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("s3://medallion/lake/ is writable") && text.contains("conditional put"),
        "{text}"
    );
    assert!(
        !text.contains(s3.secret()),
        "the secret key was printed: {text}"
    );
    let wrong = "not-the-secret-0042";
    let out = env
        .sidecar(&["check"], &[("AWS_SECRET_ACCESS_KEY", wrong)])
        .output()
        .expect("medallion check");
    let text = output_text(&out);
    assert!(
        !out.status.success() && text.contains("cannot write") && text.contains("credentials"),
        "a wrong key is reported with what to check: {text}"
    );
    assert!(!text.contains(wrong), "the secret key was printed: {text}");

    use medallion::fault::AFTER_BRONZE_COMMIT;
    // kill -9 after a bronze commit and before its acknowledgement: during
    // the initial copy, then while streaming.
    env.run_to_fault(&format!("{AFTER_BRONZE_COMMIT}:2"), "200");
    env.catch_up().await;
    odoo_workload(&env, 0.1, 32, 100);
    env.run_to_fault(&format!("{AFTER_BRONZE_COMMIT}:3"), "200");
    env.catch_up().await;

    // The gateway goes away for a while as the sidecar streams, then comes
    // back; `optimize` compacts concurrently with the sidecar's appends.
    let mut cfg = env.cfg();
    cfg.flush_interval_ms = 50;
    let running = InProcess::start(&cfg);
    odoo_workload(&env, 0.1, 33, 60);
    tokio::time::sleep(Duration::from_secs(1)).await;
    s3.set_gateway(false).expect("stop RGW");
    odoo_workload(&env, 0.1, 34, 60);
    tokio::time::sleep(Duration::from_secs(5)).await;
    s3.set_gateway(true).expect("restart RGW");
    odoo_workload(&env, 0.1, 35, 60);
    let opts = medallion::optimize::OptimizeOptions {
        target_bytes: 64 << 20,
        retain_hours: 1,
        vacuum: true,
    };
    let reports = medallion::optimize::optimize(&cfg, opts)
        .await
        .expect("optimize an S3 lake while the sidecar runs");
    assert!(
        reports.len() >= medallion_tests::odoo::schema().len()
            && reports.iter().any(|r| r.files_compacted > 0),
        "optimize found the bronze tables on S3 and compacted: {reports:#?}"
    );
    running.stop().await;
    env.catch_up().await;
    for (t, _) in medallion_tests::odoo::schema() {
        env.assert_bronze_matches("public", t).await;
    }

    // Silver and gold on S3, through the CLI as an operator runs them.
    let out = env
        .sidecar(&["refine"], &[])
        .output()
        .expect("medallion refine");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    // Silver took the workload's updates as deletion vectors on S3 (their
    // files and the data files are read back through the bucket above).
    let mut marked = 0;
    for (t, _) in medallion_tests::odoo::schema() {
        let table = super::refine::open_refined(&env, "silver", t).await;
        marked += table
            .snapshot()
            .expect("snapshot")
            .log_data()
            .iter()
            .filter(|f| f.deletion_vector_descriptor().is_some())
            .count();
    }
    assert!(marked > 0, "no silver file on S3 has a deletion vector");
    for (t, _) in medallion_tests::odoo::schema() {
        env.assert_silver_matches("public", t, t).await;
    }
    for m in ["monthly_revenue", "open_receivables", "general_ledger"] {
        env.assert_gold_matches(m).await;
    }
}
